"""Synthetic performances with known parameters: anny's head rendered with known expression and
head rotation. They drive the offline demo (no footage can ship with puppet) and close the loop in
tests: render known parameters -> track -> compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from puppet.contract import NUM_EXPRESSIONS, Blendshape
from puppet.rotations import euler_xyz_to_matrix

HEAD_PIVOT = np.array([0.0, 0.02, 0.0])  # contract frame: top of anny's neck, the head turns about it
FRAME_CENTER = np.array([0.0, 0.12, 0.04])


@dataclass(frozen=True)
class Performance:
    """Ground truth of a synthetic clip.

    t: T capture times (s); expression: T x 52; head: T x 3 (yaw, pitch, roll) radians, with
    ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` in the contract frame (positive yaw = the head turns to its
    left, positive pitch = looks down).
    """

    t: np.ndarray
    expression: np.ndarray
    head: np.ndarray

    def rotation(self, i: int) -> np.ndarray:
        yaw, pitch, roll = self.head[i]
        return head_rotation(yaw, pitch, roll)


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``Ry(yaw) @ Rx(pitch) @ Rz(roll)``: the inverse of ``puppet.rotations.yaw_pitch_roll``."""
    ry = euler_xyz_to_matrix(np.array([0.0, yaw, 0.0]))
    rx = euler_xyz_to_matrix(np.array([pitch, 0.0, 0.0]))
    rz = euler_xyz_to_matrix(np.array([0.0, 0.0, roll]))
    return ry @ rx @ rz


def _pulses(t: np.ndarray, starts: list[float], width: float, height: float) -> np.ndarray:
    """Smooth bumps (raised cosine) of ``width`` seconds starting at ``starts``."""
    out = np.zeros_like(t)
    for s in starts:
        u = (t - s) / width
        inside = (u >= 0) & (u <= 1)
        out[inside] = np.maximum(out[inside], height * 0.5 * (1 - np.cos(2 * np.pi * u[inside])))
    return out


def demo_performance(seconds: float = 6.0, fps: float = 30.0, seed: int = 0) -> Performance:
    """A lively, repeatable performance: head turns and nods, talking, blinks, smiles, brows."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * fps))) / fps
    e = np.zeros((len(t), NUM_EXPRESSIONS))
    talk = 0.5 * (1 + np.sin(2 * np.pi * 1.7 * t + rng.uniform(0, 6))) * _pulses(t, [0.8, 3.6], 2.0, 1.0)
    e[:, Blendshape.jawOpen] = 0.45 * talk
    blink = _pulses(t, list(np.arange(0.5, seconds, 1.9) + rng.uniform(0, 0.3)), 0.25, 1.0)
    e[:, Blendshape.eyeBlinkLeft] = blink
    e[:, Blendshape.eyeBlinkRight] = blink
    smile = _pulses(t, [2.4, 5.0], 1.2, 0.8)
    e[:, Blendshape.mouthSmileLeft] = smile
    e[:, Blendshape.mouthSmileRight] = smile
    e[:, Blendshape.browInnerUp] = _pulses(t, [1.5, 4.4], 0.9, 0.8)
    look = 0.6 * np.sin(2 * np.pi * 0.3 * t)
    e[:, Blendshape.eyeLookOutLeft] = np.clip(look, 0, 1)
    e[:, Blendshape.eyeLookInRight] = np.clip(look, 0, 1)
    e[:, Blendshape.eyeLookInLeft] = np.clip(-look, 0, 1)
    e[:, Blendshape.eyeLookOutRight] = np.clip(-look, 0, 1)
    head = np.stack([
        np.radians(22) * np.sin(2 * np.pi * 0.23 * t),
        np.radians(10) * np.sin(2 * np.pi * 0.37 * t + 1.0),
        np.radians(6) * np.sin(2 * np.pi * 0.19 * t + 2.0),
    ], axis=1)
    return Performance(t=t, expression=e, head=head)


def render_performance(performance: Performance, path: str | Path, size: int = 512,
                       phenotype: dict[str, float] | None = None, progress: bool = False) -> Path:
    """Render ``performance`` with anny's head to an H.264 video at ``path`` (real timestamps)."""
    from tqdm import tqdm

    from engines.raster import Camera, MeshRasterizer, look_at
    from puppet.face_model import eyeball_directions, head_colors, head_mesh
    from puppet.video_writer import VideoWriter

    head = head_mesh(phenotype)
    fps = 1.0 / float(np.median(np.diff(performance.t))) if len(performance.t) > 1 else 30.0
    camera = Camera(look_at(FRAME_CENTER + np.array([0.0, 0.0, 1.6]), FRAME_CENTER), fov_y_deg=14.0)
    with MeshRasterizer(size, size) as raster, VideoWriter(path, (size, size), fps) as writer:
        raster.set_mesh(head.faces, head_colors(head), eyeball_directions(head))
        for i in tqdm(range(len(performance.t)), disable=None if progress else True, desc="rendering", leave=False):
            verts = head.vertices(performance.expression[i])
            verts = (verts - HEAD_PIVOT) @ performance.rotation(i).T + HEAD_PIVOT
            image = raster.render(verts, camera, background=(0.32, 0.38, 0.45, 1.0))
            writer.write(np.ascontiguousarray(image[..., :3]), float(performance.t[i]))
    return Path(path)


# ----------------------------------------------------------------------------- avatar performances

@dataclass(frozen=True)
class AvatarPerformance:
    """Ground truth for the mesh engine: per-frame contract parameters.

    t: T; expression: T x 52; pose: T x 6 x 3 (SMPL joints 12-17 axis-angle); camera: T x 2.
    """

    t: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    camera: np.ndarray

    def params(self, i: int):
        from puppet.params import AvatarParams

        return AvatarParams(t=float(self.t[i]), expression=self.expression[i].astype(np.float32),
                            pose=self.pose[i].astype(np.float32), camera=self.camera[i].astype(np.float32),
                            face_ok=True, body_ok=True)


# Units a performer uses most, with the largest weight each reaches (the rest stay at 0).
_PERFORMED_UNITS: dict[str, float] = {
    "jawOpen": 0.7, "eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0, "mouthSmileLeft": 0.8,
    "mouthSmileRight": 0.8, "browInnerUp": 0.8, "browDownLeft": 0.6, "browDownRight": 0.6,
    "mouthPucker": 0.7, "mouthFunnel": 0.6, "eyeLookInLeft": 0.6, "eyeLookOutLeft": 0.6,
    "eyeLookInRight": 0.6, "eyeLookOutRight": 0.6, "eyeLookUpLeft": 0.5, "eyeLookUpRight": 0.5,
    "eyeLookDownLeft": 0.5, "eyeLookDownRight": 0.5, "mouthClose": 0.3, "cheekSquintLeft": 0.4,
    "cheekSquintRight": 0.4,
}


def _smooth_curve(rng: np.random.Generator, t: np.ndarray, low: float, high: float) -> np.ndarray:
    """A random smooth signal in [low, high]: three sinusoids of 0.1-0.7 Hz."""
    x = np.zeros_like(t)
    for _ in range(3):
        x += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(0.1, 0.7) * t + rng.uniform(0, 2 * np.pi))
    x = (x - x.min()) / max(np.ptp(x), 1e-9)
    return low + (high - low) * x


def random_avatar_performance(seconds: float = 8.0, fps: float = 30.0, seed: int = 0,
                              neutral_s: float = 1.0, head_deg: tuple[float, float, float] = (25.0, 15.0, 8.0),
                              body: bool = True) -> AvatarPerformance:
    """A repeatable random performance: ``neutral_s`` of rest (for calibration), then smooth random
    expressions (opposite units never together), head motion split between neck and head as the
    body solver does, and small collar and arm motion around the rest arm."""
    from puppet.contract import ARKIT_NAMES, SmplJoint, pose_row
    from puppet.rotations import matrix_to_axis_angle
    from trackers.body_solver import BodySolverOptions, RestSkeleton, split_neck_head

    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * fps))) / fps
    live = np.clip((t - neutral_s) / 0.5, 0.0, 1.0)  # fades in after the neutral second
    e = np.zeros((len(t), NUM_EXPRESSIONS))
    for name, top in _PERFORMED_UNITS.items():
        e[:, ARKIT_NAMES.index(name)] = _smooth_curve(rng, t, -0.6 * top, top).clip(0.0, 1.0) * live
    for a, b in (("eyeLookInLeft", "eyeLookOutLeft"), ("eyeLookInRight", "eyeLookOutRight"),
                 ("eyeLookUpLeft", "eyeLookDownLeft"), ("eyeLookUpRight", "eyeLookDownRight")):
        ia, ib = ARKIT_NAMES.index(a), ARKIT_NAMES.index(b)
        weaker = np.where(e[:, ia] < e[:, ib], ia, ib)
        e[np.arange(len(t)), weaker] = 0.0
    head = np.stack([np.radians(d) * _smooth_curve(rng, t, -1.0, 1.0) * live for d in head_deg], axis=1)
    pose = np.zeros((len(t), 6, 3))
    skeleton = RestSkeleton()
    share = BodySolverOptions().neck_share
    for i in range(len(t)):
        neck, head_r = split_neck_head(head_rotation(*head[i]), share)
        pose[i, pose_row(SmplJoint.NECK)] = matrix_to_axis_angle(neck)
        pose[i, pose_row(SmplJoint.HEAD)] = matrix_to_axis_angle(head_r)
    for joint, left in ((SmplJoint.LEFT_SHOULDER, True), (SmplJoint.RIGHT_SHOULDER, False)):
        pose[:, pose_row(joint)] = matrix_to_axis_angle(skeleton.rest_arm(left))
    if body:
        for joint in (SmplJoint.LEFT_COLLAR, SmplJoint.RIGHT_COLLAR):
            lift = np.radians(8.0) * _smooth_curve(rng, t, -1.0, 1.0) * live
            sign = 1.0 if joint == SmplJoint.LEFT_COLLAR else -1.0
            pose[:, pose_row(joint), 2] = sign * lift  # shrugs: about the forward axis
    return AvatarPerformance(t=t, expression=e, pose=pose, camera=np.zeros((len(t), 2)))


def render_avatar_performance(performance: AvatarPerformance, avatar, path: str | Path, size: int = 512,
                              progress: bool = False) -> Path:
    """Render ``performance`` with the mesh engine and ``avatar`` to an H.264 video (real timestamps)."""
    from tqdm import tqdm

    import engines
    from puppet.video_writer import VideoWriter

    fps = 1.0 / float(np.median(np.diff(performance.t))) if len(performance.t) > 1 else 30.0
    with engines.create("mesh", size=size) as engine, VideoWriter(path, (size, size), fps) as writer:
        baked = engine.bake(avatar)
        for i in tqdm(range(len(performance.t)), disable=None if progress else True, desc="rendering", leave=False):
            image = engine.render(baked, performance.params(i)).image
            writer.write(np.ascontiguousarray(image[..., :3]), float(performance.t[i]))
    return Path(path)
