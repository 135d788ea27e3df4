"""Named indices of MediaPipe's 478-point face mesh (468 FaceMesh points + 10 iris points).

This is the one place where face landmark numbers live; solvers index with these names.

Sides: ``LEFT``/``RIGHT`` are the SUBJECT's left and right, as in MediaPipe's own tables
(``FACEMESH_LEFT_EYE`` holds 263/362, ``FACEMESH_LEFT_IRIS`` 474-477). In an unmirrored frontal
image the subject's left is on the IMAGE RIGHT: checked on the test stills (lp_s1: iris 468 at
x=454 px, iris 473 at x=607 px; outer eye corners 33 at x=427, 263 at x=635). MediaPipe's
blendshapes use the same convention (``eyeBlinkLeft`` is the eye of landmarks 263/362/473): on
lp_s1 the eye with the smaller 386-374 gap scores the higher ``eyeBlinkLeft``, and mirroring the
image swaps the Left/Right scores. A webcam preview that is mirrored for display does not change
this as long as the tracker sees the unmirrored image.

Contours run from the subject's right to left (``MOUTH_RIGHT`` -> ``MOUTH_LEFT``) or, for eyes and
brows, from the outer to the inner end; their vertex sets equal MediaPipe's
``face_mesh_connections`` tables (tested).

``RIGID`` lists points that barely move with expression, for head-pose fitting. Chosen by
measurement: per-landmark residual after a 3D similarity alignment over ~590 frames of six test
videos with speech and expressions (lp_d0/d3/d9/d11/d12/d18), in thousandths of the face size:
nose bridge and dorsum 2.5-3.7, infraorbital / nose-side points 1.7-2.7 (the most stable of the
mesh), inner eye corners 4-5, outer eye corners 5.4-6.3, forehead 6.4-8, upper cheeks 5.3-6;
versus lips 15-29, chin 19, eyelids 4-9, brows 8-10. The face-oval / temple points (127, 356,
234, 454: 11-12) are silhouette points that slide along the face with yaw, so they are named
(``TEMPLES``, ``FACE_OVAL``) but not in ``RIGID``.
"""

from __future__ import annotations

from enum import IntEnum

NUM_MESH_LANDMARKS = 468
NUM_IRIS_LANDMARKS = 10


class FaceLandmark(IntEnum):
    """Single landmarks of the 478-point topology; LEFT/RIGHT = the subject's sides."""

    # Midline, top to bottom.
    FOREHEAD_TOP = 10  # top of the face oval
    FOREHEAD = 151
    GLABELLA = 9  # between the brows
    NOSE_BRIDGE = 168  # between the eyes (sellion)
    NOSE_DORSUM = 6
    NOSE_TIP = 1
    NOSE_BOTTOM = 2  # subnasale
    UPPER_LIP_TOP = 0  # outer contour, upper lip centre
    UPPER_LIP_INNER = 13  # inner contour, upper lip centre
    LOWER_LIP_INNER = 14  # inner contour, lower lip centre
    LOWER_LIP_BOTTOM = 17  # outer contour, lower lip centre
    CHIN = 152

    # Eyes: corners, eyelid centres, iris centres.
    RIGHT_EYE_OUTER = 33
    RIGHT_EYE_INNER = 133
    RIGHT_EYE_UPPER = 159  # upper eyelid centre
    RIGHT_EYE_LOWER = 145  # lower eyelid centre
    RIGHT_IRIS_CENTER = 468
    LEFT_EYE_OUTER = 263
    LEFT_EYE_INNER = 362
    LEFT_EYE_UPPER = 386
    LEFT_EYE_LOWER = 374
    LEFT_IRIS_CENTER = 473

    # Brows (upper contour).
    RIGHT_BROW_OUTER = 70
    RIGHT_BROW_MIDDLE = 105
    RIGHT_BROW_INNER = 107
    LEFT_BROW_OUTER = 300
    LEFT_BROW_MIDDLE = 334
    LEFT_BROW_INNER = 336

    # Mouth corners, outer and inner contour.
    MOUTH_RIGHT = 61
    MOUTH_LEFT = 291
    MOUTH_INNER_RIGHT = 78
    MOUTH_INNER_LEFT = 308

    # Sides of the face.
    RIGHT_TEMPLE = 127
    LEFT_TEMPLE = 356
    RIGHT_FACE_SIDE = 234  # widest point of the oval, near the ear
    LEFT_FACE_SIDE = 454
    RIGHT_CHEEK = 117  # upper cheek, below the outer eye corner
    LEFT_CHEEK = 346
    RIGHT_NOSE_WING = 98
    LEFT_NOSE_WING = 327



# Eyelids, outer corner -> inner corner (both ends shared by the upper and lower lid).
RIGHT_EYE_UPPER_LID: tuple[int, ...] = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER_LID: tuple[int, ...] = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER_LID: tuple[int, ...] = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER_LID: tuple[int, ...] = (263, 249, 390, 373, 374, 380, 381, 382, 362)

# Irises: centre first, then the four ring points (refined landmarks only).
RIGHT_IRIS: tuple[int, ...] = (468, 469, 470, 471, 472)
LEFT_IRIS: tuple[int, ...] = (473, 474, 475, 476, 477)

# Brows, outer -> inner: upper and lower contour.
RIGHT_BROW_UPPER: tuple[int, ...] = (70, 63, 105, 66, 107)
RIGHT_BROW_LOWER: tuple[int, ...] = (46, 53, 52, 65, 55)
LEFT_BROW_UPPER: tuple[int, ...] = (300, 293, 334, 296, 336)
LEFT_BROW_LOWER: tuple[int, ...] = (276, 283, 282, 295, 285)

# Lips, subject's right corner -> left corner.
OUTER_LIP_UPPER: tuple[int, ...] = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LIP_LOWER: tuple[int, ...] = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
INNER_LIP_UPPER: tuple[int, ...] = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIP_LOWER: tuple[int, ...] = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)

# Face oval, closed loop from the forehead top over the subject's right side to the chin and back.
FACE_OVAL: tuple[int, ...] = (
    10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148,
    152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338,
)

TEMPLES: tuple[int, ...] = (127, 162, 356, 389)

# Nose bridge (top) down the dorsum to the tip.
NOSE_RIDGE: tuple[int, ...] = (168, 6, 197, 195, 5, 4, 1)

# Head-pose fitting: measured stable points spread over forehead, nose, eye corners and upper
# cheeks (see the module docstring for the residuals).
RIGID: tuple[int, ...] = (
    # forehead
    10, 151, 9, 108, 337, 69, 299,
    # nose bridge and dorsum
    168, 6, 197, 195, 5, 4,
    # beside the nose / below the eyes (right, left pairs)
    114, 343, 217, 437, 198, 420, 47, 277, 188, 412, 126, 355, 100, 329,
    # eye corners
    133, 362, 33, 263,
    # upper cheeks
    117, 346, 118, 347,
)

# (right, left) pairs of single landmarks: mirror partners.
MIRROR_PAIRS: tuple[tuple[FaceLandmark, FaceLandmark], ...] = (
    (FaceLandmark.RIGHT_EYE_OUTER, FaceLandmark.LEFT_EYE_OUTER),
    (FaceLandmark.RIGHT_EYE_INNER, FaceLandmark.LEFT_EYE_INNER),
    (FaceLandmark.RIGHT_EYE_UPPER, FaceLandmark.LEFT_EYE_UPPER),
    (FaceLandmark.RIGHT_EYE_LOWER, FaceLandmark.LEFT_EYE_LOWER),
    (FaceLandmark.RIGHT_IRIS_CENTER, FaceLandmark.LEFT_IRIS_CENTER),
    (FaceLandmark.RIGHT_BROW_OUTER, FaceLandmark.LEFT_BROW_OUTER),
    (FaceLandmark.RIGHT_BROW_MIDDLE, FaceLandmark.LEFT_BROW_MIDDLE),
    (FaceLandmark.RIGHT_BROW_INNER, FaceLandmark.LEFT_BROW_INNER),
    (FaceLandmark.MOUTH_RIGHT, FaceLandmark.MOUTH_LEFT),
    (FaceLandmark.MOUTH_INNER_RIGHT, FaceLandmark.MOUTH_INNER_LEFT),
    (FaceLandmark.RIGHT_TEMPLE, FaceLandmark.LEFT_TEMPLE),
    (FaceLandmark.RIGHT_FACE_SIDE, FaceLandmark.LEFT_FACE_SIDE),
    (FaceLandmark.RIGHT_CHEEK, FaceLandmark.LEFT_CHEEK),
    (FaceLandmark.RIGHT_NOSE_WING, FaceLandmark.LEFT_NOSE_WING),
)

