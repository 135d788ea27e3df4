"""The mesh engine: an avatar's anny body posed by the parameters and rasterised (moderngl).

Framing (AniPortraitGAN-like portraits): square, the head in the upper middle, the shoulders at
the bottom edge; the frame is sized from the avatar's own head (``frame_heights`` head heights,
crown to chin), so children and adults fill it alike.

Camera (``params.camera`` = yaw, pitch, radians; the body solver's convention): the camera orbits
the head joint. Its direction from the avatar, in the avatar's (torso) frame, is
``d = (-cos p sin y, -sin p, cos p cos y)``: yaw > 0 puts the camera on the avatar's right (-X),
as when the real person turned to THEIR left, so the image shows the avatar turned to its left
(its right side, right shoulder and right cheek come towards the viewer); pitch > 0 puts the
camera below the chest, looking up. The whole camera turns rigidly about the head joint, so the
head stays where it is in the frame while the shoulders swing. The lights turn with the camera
(studio lighting: the lit side faces the viewer whatever the angles).

Output: RGBA uint8, alpha = the avatar's coverage; RGB = the avatar composited over the
background colour (premultiplied by its alpha) or image.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from engines.base import Baked, EngineBase, EngineInfo, RenderedFrame
from engines.raster import Camera, EyeStyle, Lighting, MeshRasterizer, look_at
from puppet.avatar import Avatar
from puppet.avatar_model import AvatarModel, BakeOptions, build_avatar_model
from puppet.errors import AssetError
from puppet.params import DriverParams

log = logging.getLogger(__name__)

GazeSource = Literal["expression", "gaze"]

AUTO_MSAA_MAX_SIZE = 384

PORTRAIT_LIGHTING = Lighting(key=0.62, fill=0.24, ambient=0.30, wrap=0.4, specular=0.05, shininess=20.0)
"""Softer than the rasteriser's default, so light skin does not burn out."""


@dataclass(frozen=True)
class MeshEngineOptions:
    """How the mesh engine draws.

    size: output width = height in pixels (256 and 512 are typical).
    background: (r, g, b) or (r, g, b, a) in [0, 1], or the path of an image (scaled to cover).
    fov_deg: vertical field of view of the portrait camera.
    frame_heights: the frame's height in head heights (crown to chin).
    top_margin: space above the skull's top, in head heights (the hair goes there).
    samples: MSAA samples (0 = off), or None: 4 on a GPU; on Mesa's llvmpipe (software) 4 up to
        ``AUTO_MSAA_MAX_SIZE`` pixels and off above (MSAA doubles llvmpipe's cost: 512 px with it
        misses 30 fps on 2 cores).
    gaze_source: "expression" turns the eyes from the eyeLook* weights (35 / 30 degrees at
        weight 1, the face solver's scale); "gaze" from ``params.gaze``.
    lighting: the lights, in the camera's frame when the camera is frontal.
    bake: options of the avatar bake (crop, hair resolution, shoulder share).
    """

    size: int = 512
    background: tuple[float, ...] | str | Path = (0.34, 0.40, 0.47, 1.0)
    fov_deg: float = 14.0
    frame_heights: float = 1.95
    top_margin: float = 0.22
    samples: int | None = None
    gaze_source: GazeSource = "expression"
    lighting: Lighting = PORTRAIT_LIGHTING
    bake: BakeOptions = field(default_factory=BakeOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 16:
            raise ValueError(f"size must be an int >= 16, got {self.size!r}")
        if not 1.0 <= self.fov_deg <= 90.0:
            raise ValueError(f"fov_deg must be in [1, 90], got {self.fov_deg}")
        if self.gaze_source not in ("expression", "gaze"):
            raise ValueError(f"gaze_source must be 'expression' or 'gaze', got {self.gaze_source!r}")
        if isinstance(self.background, tuple):
            if len(self.background) not in (3, 4) or not all(0.0 <= float(c) <= 1.0 for c in self.background):
                raise ValueError(f"background must be 3 or 4 floats in [0, 1] or an image path, got {self.background}")


@dataclass(frozen=True)
class Framing:
    """Where the portrait camera looks: ``target`` (3,) the frame's centre, ``pivot`` (3,) what
    the camera orbits (the head joint), ``distance`` (m) from the target at frontal."""

    target: np.ndarray
    pivot: np.ndarray
    distance: float


@dataclass(frozen=True, eq=False)
class MeshBaked(Baked):
    """The mesh engine's bake: the posable model, its framing and iris style."""

    model: AvatarModel | None = None
    framing: Framing | None = None
    eyes: EyeStyle = EyeStyle()

    def __post_init__(self) -> None:
        if self.model is None or self.framing is None:
            raise ValueError("a MeshBaked needs its model and framing (MeshEngine.bake makes them)")


@dataclass(frozen=True)
class FrameTiming:
    """Milliseconds spent on the last frame: posing (vertices and normals), rasterising
    (upload, draw, read back) and compositing over an image background."""

    pose_ms: float
    raster_ms: float
    composite_ms: float


def portrait_framing(model: AvatarModel, fov_deg: float, frame_heights: float, top_margin: float) -> Framing:
    """Frame the head and shoulders of ``model``: frame height ``frame_heights`` head heights,
    ``top_margin`` head heights above the skull."""
    lm = model.landmarks
    head = lm.head_top - lm.chin_y
    top = lm.head_top + top_margin * head
    height = frame_heights * head
    target = np.array([0.0, top - 0.5 * height, float(lm.head_pivot[2])])
    distance = 0.5 * height / np.tan(np.radians(fov_deg) / 2.0)
    return Framing(target=target, pivot=np.asarray(lm.head_pivot, dtype=np.float64), distance=float(distance))


def orbit_rotation(yaw: float, pitch: float) -> np.ndarray:
    """``Ry(-yaw) @ Rx(pitch)``: takes +Z (the frontal camera's direction from the avatar) to
    ``(-cos p sin y, -sin p, cos p cos y)``. ``-> (3, 3)``."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    ry = np.array([[cy, 0.0, -sy], [0.0, 1.0, 0.0], [sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return ry @ rx


def orbit_camera(framing: Framing, yaw: float, pitch: float, fov_deg: float) -> tuple[Camera, np.ndarray]:
    """The portrait camera for ``camera = (yaw, pitch)`` and its orbit rotation (3, 3): the
    frontal camera turned rigidly about ``framing.pivot``."""
    r = orbit_rotation(yaw, pitch)
    p = framing.pivot
    eye0 = framing.target + np.array([0.0, 0.0, framing.distance])
    eye = p + r @ (eye0 - p)
    target = p + r @ (framing.target - p)
    return Camera(look_at(eye, target, r @ np.array([0.0, 1.0, 0.0])), fov_y_deg=fov_deg,
                  near=0.1 * framing.distance, far=4.0 * framing.distance), r


def composite_over(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Premultiplied RGBA ``image`` (H, W, 4) uint8 over an RGB ``background`` (H, W, 3) uint8:
    RGB = image + (1 - alpha) background, alpha kept (coverage)."""
    a = image[..., 3:4].astype(np.uint16)
    rgb = image[..., :3].astype(np.uint16) + ((255 - a) * background + 127) // 255
    out = image.copy()
    out[..., :3] = np.minimum(rgb, 255).astype(np.uint8)
    return out


def _load_background(path: str | Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise AssetError(f"cannot read background image {path}: {exc}") from None
    w, h = img.size
    side = min(w, h)  # scale to cover the square, centred
    img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


class MeshEngine(EngineBase):
    """anny posed and rasterised: ``bake(avatar)`` once (a few seconds: anny at the phenotype,
    hair, clothes, paint), then ``render(baked, params)`` per frame."""

    name = "mesh"

    def __init__(self, options: MeshEngineOptions | None = None) -> None:
        self.options = options or MeshEngineOptions()
        o = self.options
        self._background_image: np.ndarray | None = None
        if isinstance(o.background, tuple):
            r, g, b, *a = (float(c) for c in o.background)
            alpha = a[0] if a else 1.0
            self._clear = (r * alpha, g * alpha, b * alpha, 0.0)  # edges blend into it; alpha = coverage
        else:
            self._background_image = _load_background(o.background, o.size)
            self._clear = (0.0, 0.0, 0.0, 0.0)
        self._raster = MeshRasterizer(o.size, o.size, samples=4 if o.samples is None else o.samples)
        if o.samples is None and "llvmpipe" in self._raster.device and o.size > AUTO_MSAA_MAX_SIZE:
            self._raster.close()
            self._raster = MeshRasterizer(o.size, o.size, samples=0)
        self._uploaded: MeshBaked | None = None
        self.last_timing: FrameTiming | None = None
        log.info("mesh engine %dx%d on %s (MSAA %d)", o.size, o.size, self._raster.device, self._raster.samples)

    def bake(self, avatar: Avatar) -> MeshBaked:
        if self._closed:
            raise RuntimeError("MeshEngine is closed")
        o = self.options
        model = build_avatar_model(avatar, o.bake)
        framing = portrait_framing(model, o.fov_deg, o.frame_heights, o.top_margin)
        return MeshBaked(avatar=avatar, engine=self.name, model=model, framing=framing,
                         eyes=EyeStyle(iris_color=avatar.appearance.iris, iris_angle=0.47, pupil_angle=0.17))

    def camera(self, baked: MeshBaked, camera: np.ndarray) -> Camera:
        """The camera used for ``params.camera`` (e.g. to project points of the posed mesh)."""
        return orbit_camera(baked.framing, float(camera[0]), float(camera[1]), self.options.fov_deg)[0]

    def render_view(self, baked: MeshBaked, params: DriverParams, camera: Camera) -> RenderedFrame:
        """Render ``params`` through an explicit ``camera`` instead of the orbit camera of
        ``params.camera`` (which is ignored), e.g. the synthetic dataset's face camera. The lights
        turn with the camera as in ``render``: by the camera's rotation from the frontal camera
        (whose axes are the world's)."""
        if self._closed:
            raise RuntimeError("MeshEngine is closed")
        if not isinstance(baked, MeshBaked):
            raise TypeError(f"MeshEngine.render_view needs a mesh bake, got {type(baked).__name__}")
        return self._draw(baked, params, camera, np.asarray(camera.view, dtype=np.float64)[:3, :3].T)

    def _render_one(self, baked: MeshBaked, params: DriverParams) -> RenderedFrame:
        camera, r = orbit_camera(baked.framing, float(params.camera[0]), float(params.camera[1]),
                                 self.options.fov_deg)
        return self._draw(baked, params, camera, r)

    def _draw(self, baked: MeshBaked, params: DriverParams, camera: Camera, r: np.ndarray) -> RenderedFrame:
        """Pose, then rasterise through ``camera`` with the lights turned by ``r`` (3, 3)."""
        o = self.options
        model = baked.model
        t0 = time.perf_counter()
        gaze = np.asarray(params.gaze) if o.gaze_source == "gaze" else None
        vertices = model.pose(params.expression, params.pose, gaze)
        normals = model.normals(vertices)
        t1 = time.perf_counter()
        if self._uploaded is not baked:
            self._raster.set_mesh(model.faces, model.colors, model.eye_directions, model.decals)
            self._uploaded = baked
        light = o.lighting
        lighting = dataclasses.replace(
            light,
            key_direction=tuple(r @ np.asarray(light.key_direction, dtype=np.float64)),
            fill_direction=tuple(r @ np.asarray(light.fill_direction, dtype=np.float64)),
        )
        image = self._raster.render(vertices, camera, lighting, background=self._clear, normals=normals,
                                    eyes=baked.eyes, cull_back_faces=True)
        t2 = time.perf_counter()
        if self._background_image is not None:
            image = composite_over(image, self._background_image)
        t3 = time.perf_counter()
        self.last_timing = FrameTiming((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return RenderedFrame(image=image, t=params.t)

    @property
    def samples(self) -> int:
        """The MSAA samples in use (0 = none)."""
        return self._raster.samples

    def info(self) -> EngineInfo:
        return EngineInfo(backend="moderngl", device=self._raster.device, precision="float32",
                          resolution=(self.options.size, self.options.size))

    def _release(self) -> None:
        self._raster.close()
        self._uploaded = None
