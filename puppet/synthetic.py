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
