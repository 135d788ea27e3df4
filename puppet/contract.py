"""Names and indices of the parameter contract (DESIGN.md), in one module, and the one relation
between its fields (gaze <-> the eyeLook* weights).

Expression weights follow anny's ``facial_action_labels``: MediaPipe's blendshape order without its
leading ``_neutral``, then ``tongueOut``. Pose rows are SMPL joints 12-17.
"""

from enum import IntEnum

import numpy as np

ARKIT_NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft",
    "noseSneerRight", "tongueOut",
)
NUM_EXPRESSIONS = len(ARKIT_NAMES)  # 52

Blendshape = IntEnum("Blendshape", {name: i for i, name in enumerate(ARKIT_NAMES)})
"""``Blendshape.jawOpen == 24``: index into the expression vector by name."""

# MediaPipe's 52 blendshape categories start with "_neutral" and have no tongueOut.
MEDIAPIPE_BLENDSHAPE_NAMES: tuple[str, ...] = ("_neutral",) + ARKIT_NAMES[:-1]


class SmplJoint(IntEnum):
    """SMPL joint indices of the six joints the contract drives (AniPortraitGAN's z_pose)."""

    NECK = 12
    LEFT_COLLAR = 13
    RIGHT_COLLAR = 14
    HEAD = 15
    LEFT_SHOULDER = 16
    RIGHT_SHOULDER = 17


POSE_JOINTS: tuple[SmplJoint, ...] = tuple(SmplJoint)
NUM_POSE_JOINTS = len(POSE_JOINTS)  # 6


def pose_row(joint: SmplJoint) -> int:
    """Row of ``joint`` in a ``pose[6, 3]`` array."""
    return POSE_JOINTS.index(joint)


# Gaze: the eyeLook* weights at 1 correspond to these angles; ``gaze`` and the eyeLook* weights of
# ``expression`` express the same eye rotation (DESIGN.md).
EYE_LOOK_MAX_YAW = float(np.radians(35.0))
EYE_LOOK_MAX_PITCH = float(np.radians(30.0))


def gaze_from_expression(expression: np.ndarray, max_yaw: float = EYE_LOOK_MAX_YAW,
                         max_pitch: float = EYE_LOOK_MAX_PITCH) -> np.ndarray:
    """Per-eye (left, right) yaw and pitch (radians) from the eyeLook* weights. ``52 -> 2 x 2``.

    Positive yaw looks towards the person's left (+X), positive pitch looks down (SMPL signs):
    the left eye looks left when it looks out, the right eye when it looks in.
    """
    e = np.asarray(expression, dtype=np.float64)
    b = Blendshape
    yaw_left = e[b.eyeLookOutLeft] - e[b.eyeLookInLeft]
    yaw_right = e[b.eyeLookInRight] - e[b.eyeLookOutRight]
    pitch_left = e[b.eyeLookDownLeft] - e[b.eyeLookUpLeft]
    pitch_right = e[b.eyeLookDownRight] - e[b.eyeLookUpRight]
    return np.array([[yaw_left * max_yaw, pitch_left * max_pitch],
                     [yaw_right * max_yaw, pitch_right * max_pitch]])
