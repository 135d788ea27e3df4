"""Debug overlay: what the tracking stage saw and solved, drawn over the frame it came from.

``draw_overlay(image, tracked)`` returns a new RGB image with, each layer optional:

- face landmarks (dots), the contours of eyes, brows, lips and face oval, the irises;
- a head-axes gizmo from the face solver's ``head_rotation`` (contract frame, projected
  orthographically): X red = the person's left (image right when frontal), Y green = up,
  Z blue = out of the face towards the camera;
- the upper-body skeleton from the pose landmarks (segments whose ends are visible);
- bars of the main (smoothed) expression weights in a semi-transparent panel;
- a status block: time, frame index, face/body state, head yaw/pitch/roll, tracking time;
- a "NO FACE" marker when the face tracker lost the face.

Pure drawing on a copy with OpenCV; sizes follow the frame so that 480-1280 px frames read alike.
Colours are RGB, like the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from puppet.contract import ARKIT_NAMES
from puppet.rotations import yaw_pitch_roll
from trackers import face_landmarks as fl
from trackers.pose_landmarks import PoseLandmark as P

if TYPE_CHECKING:  # only the type: drawing needs no MediaPipe
    from puppet.tracking import TrackedFrame

RGB = tuple[int, int, int]

DEFAULT_BARS: tuple[str, ...] = (
    "jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthSmileRight",
    "browInnerUp", "mouthPucker", "mouthFunnel",
)

# Upper-body segments, drawn where both ends are visible (the neck line is drawn separately).
SKELETON_SEGMENTS: tuple[tuple[P, P], ...] = (
    (P.LEFT_SHOULDER, P.RIGHT_SHOULDER),
    (P.LEFT_SHOULDER, P.LEFT_ELBOW),
    (P.RIGHT_SHOULDER, P.RIGHT_ELBOW),
    (P.LEFT_ELBOW, P.LEFT_WRIST),
    (P.RIGHT_ELBOW, P.RIGHT_WRIST),
    (P.LEFT_SHOULDER, P.LEFT_HIP),
    (P.RIGHT_SHOULDER, P.RIGHT_HIP),
    (P.LEFT_HIP, P.RIGHT_HIP),
)
SKELETON_JOINTS: tuple[P, ...] = (
    P.LEFT_SHOULDER, P.RIGHT_SHOULDER, P.LEFT_ELBOW, P.RIGHT_ELBOW, P.LEFT_WRIST, P.RIGHT_WRIST,
    P.LEFT_HIP, P.RIGHT_HIP,
)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SHIFT = 4  # fixed-point bits for sub-pixel line drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class OverlayOptions:
    """What the overlay draws and how.

    landmarks / contours / irises / head_axes / skeleton / bars / status: the layers.
    bar_names: expression weights shown as bars (``ARKIT_NAMES`` spellings), top to bottom.
    visibility: pose landmarks at or below this visibility are not drawn.
    axis_length_m: length of each gizmo axis in metres of face (times the solver's px/m scale).
    axes_at: where the gizmo stands: "nose" = the nose-tip landmark (reads best); "origin" = the
        face model's origin (``FaceSolution.head_translation``), which for anny's head lies at the
        neck, some 10 cm below and 13 cm behind the face.
    panel_opacity: how dark the panels behind bars and text are (0 = invisible, 1 = opaque).
    """

    landmarks: bool = True
    contours: bool = True
    irises: bool = True
    head_axes: bool = True
    skeleton: bool = True
    bars: bool = True
    status: bool = True
    bar_names: tuple[str, ...] = DEFAULT_BARS
    visibility: float = 0.5
    axis_length_m: float = 0.08
    axes_at: Literal["nose", "origin"] = "nose"
    panel_opacity: float = 0.6
    landmark_colour: RGB = (255, 255, 255)
    contour_colour: RGB = (0, 230, 255)
    iris_colour: RGB = (255, 210, 0)
    axis_colours: tuple[RGB, RGB, RGB] = ((255, 40, 40), (40, 220, 40), (60, 110, 255))
    skeleton_colour: RGB = (255, 170, 0)
    bar_colour: RGB = (80, 200, 255)
    text_colour: RGB = (240, 240, 240)
    ok_colour: RGB = (90, 230, 90)
    lost_colour: RGB = (255, 50, 50)

    def __post_init__(self) -> None:
        unknown = [n for n in self.bar_names if n not in ARKIT_NAMES]
        if unknown:
            raise ValueError(f"unknown expression names in bar_names: {unknown}")
        if self.axes_at not in ("nose", "origin"):
            raise ValueError(f"axes_at must be 'nose' or 'origin', got {self.axes_at!r}")
        if not 0.0 <= self.panel_opacity <= 1.0:
            raise ValueError(f"panel_opacity must be in [0, 1], got {self.panel_opacity}")


def draw_overlay(image: np.ndarray, tracked: TrackedFrame, options: OverlayOptions = OverlayOptions()) -> np.ndarray:
    """Draw what ``tracked`` knows over ``image``. ``(H, W, 3) uint8 RGB -> (H, W, 3) uint8 RGB`` (a new array)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    out = np.array(image, dtype=np.uint8, order="C", copy=True)
    u = _unit(out.shape)
    obs = tracked.observation
    if options.skeleton and obs.body is not None:
        _draw_skeleton(out, obs.body.image_landmarks, obs.body.visibility, options, u)
    if obs.face is not None:
        lm = obs.face.landmarks
        if options.landmarks:  # single pixels on small faces, or the dots bury the contours
            _stamp_dots(out, lm[:, :2], options.landmark_colour, int(np.clip(obs.face.size // 300, 0, 2)))
        if options.contours:
            _draw_contours(out, lm, options.contour_colour, u)
        if options.irises:
            _draw_irises(out, lm, options.iris_colour, u)
    if options.head_axes and tracked.face is not None:
        if options.axes_at == "nose" and obs.face is not None:
            anchor = obs.face.landmarks[fl.FaceLandmark.NOSE_TIP, :2]
        else:
            anchor = head_origin_px(tracked.face.head_translation)
        _draw_axes(out, anchor, tracked.face.head_rotation, options.axis_length_m * tracked.face.scale,
                   options.axis_colours, u)
    if options.bars:
        _draw_bars(out, tracked.params.expression, options, u)
    if options.status:
        _draw_status(out, tracked, options, u)
    if tracked.face is None:
        _draw_no_face(out, options, u)
    return out


# ----------------------------------------------------------------------------- geometry

def head_origin_px(head_translation: np.ndarray) -> np.ndarray:
    """The face model's origin in image pixels (x right, y down). ``(3,) -> (2,)``.

    ``FaceSolution.head_translation`` holds (x, y) in pixels with y down, then the scale.
    """
    return np.asarray(head_translation[:2], dtype=np.float64)


def project_axes(rotation: np.ndarray, length_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic image offsets of a rotation's three axes. ``3 x 3 -> (3 x 2 pixels, 3 depths)``.

    ``rotation``'s columns are the head's X, Y, Z in the contract frame (X image-right, Y up,
    Z towards the camera); image y points down, so the Y component flips. Depth > 0: the axis
    points towards the camera.
    """
    if rotation.shape != (3, 3):
        raise ValueError(f"rotation must be 3 x 3, got {rotation.shape}")
    offsets = np.stack([rotation[0], -rotation[1]], axis=1) * length_px
    return offsets, rotation[2].copy()


def _unit(shape: tuple[int, ...]) -> float:
    """Size unit: 1 at 1000 px on the longer side, never under 0.6."""
    return max(0.6, max(shape[0], shape[1]) / 1000.0)


def _fixed(xy: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> int32 fixed point for ``shift=_SHIFT``."""
    return np.rint(np.asarray(xy) * _ONE).astype(np.int32)


def _point(xy: np.ndarray) -> tuple[int, int]:
    """One pixel position -> a fixed-point point for OpenCV's scalar arguments."""
    x, y = _fixed(xy).tolist()
    return x, y


@lru_cache(maxsize=1)
def _contour_loops() -> tuple[np.ndarray, ...]:
    """Closed index loops: eyes, brows, outer and inner lips, face oval."""
    def loop(top: tuple[int, ...], bottom: tuple[int, ...]) -> np.ndarray:
        return np.array(top + bottom[-2:0:-1], dtype=np.intp)

    return (
        loop(fl.RIGHT_EYE_UPPER_LID, fl.RIGHT_EYE_LOWER_LID),
        loop(fl.LEFT_EYE_UPPER_LID, fl.LEFT_EYE_LOWER_LID),
        np.array(fl.RIGHT_BROW_UPPER + fl.RIGHT_BROW_LOWER[::-1], dtype=np.intp),
        np.array(fl.LEFT_BROW_UPPER + fl.LEFT_BROW_LOWER[::-1], dtype=np.intp),
        loop(fl.OUTER_LIP_UPPER, fl.OUTER_LIP_LOWER),
        loop(fl.INNER_LIP_UPPER, fl.INNER_LIP_LOWER),
        np.array(fl.FACE_OVAL, dtype=np.intp),
    )


@lru_cache(maxsize=8)
def _disk(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets (dy, dx) of a small filled disk."""
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    keep = dy**2 + dx**2 <= radius * radius + radius
    return dy[keep], dx[keep]


@lru_cache(maxsize=16)
def _bar_layout(names: tuple[str, ...], font_scale: float, thickness: int) -> tuple[np.ndarray, int, int]:
    """Expression indices of the bars, widest label width and text height (pixels)."""
    index = np.array([ARKIT_NAMES.index(n) for n in names], dtype=np.intp)
    sizes = [cv2.getTextSize(n, _FONT, font_scale, thickness)[0] for n in names]
    return index, max((w for w, _ in sizes), default=0), max((h for _, h in sizes), default=0)


# ----------------------------------------------------------------------------- layers

def _stamp_dots(out: np.ndarray, xy: np.ndarray, colour: RGB, radius: int) -> None:
    """Small dots at ``N x 2`` pixel positions, written straight into the array (no per-dot call)."""
    h, w = out.shape[:2]
    dy, dx = _disk(radius)
    p = np.rint(xy).astype(np.intp)
    ys = (p[:, 1:2] + dy).ravel()
    xs = (p[:, 0:1] + dx).ravel()
    keep = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    out[ys[keep], xs[keep]] = colour


def _draw_contours(out: np.ndarray, lm: np.ndarray, colour: RGB, u: float) -> None:
    pts = [_fixed(lm[idx, :2]).reshape(-1, 1, 2) for idx in _contour_loops()]
    cv2.polylines(out, pts, True, colour, max(1, round(1.2 * u)), cv2.LINE_AA, _SHIFT)


def _draw_irises(out: np.ndarray, lm: np.ndarray, colour: RGB, u: float) -> None:
    for ring in (fl.RIGHT_IRIS, fl.LEFT_IRIS):
        pts = lm[list(ring), :2]
        centre = pts[0]
        radius = float(np.linalg.norm(pts[1:] - centre, axis=1).mean())
        if radius >= 1.0:
            cv2.circle(out, _point(centre), int(round(radius * _ONE)), colour,
                       max(1, round(1.2 * u)), cv2.LINE_AA, _SHIFT)


def _draw_axes(out: np.ndarray, anchor: np.ndarray, rotation: np.ndarray, length_px: float,
               colours: tuple[RGB, RGB, RGB], u: float) -> None:
    offsets, depth = project_axes(np.asarray(rotation, dtype=np.float64), length_px)
    thickness = max(2, round(3 * u))
    start = _point(anchor)
    for k in np.argsort(depth):  # farthest first, so the axis towards the viewer ends on top
        if np.hypot(*offsets[k]) < 0.25 * length_px:
            # Nearly along the line of sight: a filled dot points at the viewer, a ring away.
            fill = -1 if depth[k] > 0 else max(1, round(2 * u))
            cv2.circle(out, start, int(round(0.12 * length_px * _ONE)), colours[k], fill, cv2.LINE_AA, _SHIFT)
        end = _point(anchor + offsets[k])
        cv2.arrowedLine(out, start, end, colours[k], thickness, cv2.LINE_AA, _SHIFT, 0.2)


def _draw_skeleton(out: np.ndarray, xyz: np.ndarray, visibility: np.ndarray, options: OverlayOptions,
                   u: float) -> None:
    seen = visibility > options.visibility
    xy = xyz[:, :2]
    thickness = max(2, round(3 * u))
    lines = [_fixed(xy[[a, b]]).reshape(-1, 1, 2) for a, b in SKELETON_SEGMENTS if seen[a] and seen[b]]
    if seen[P.NOSE] and seen[P.LEFT_SHOULDER] and seen[P.RIGHT_SHOULDER]:
        centre = 0.5 * (xy[P.LEFT_SHOULDER] + xy[P.RIGHT_SHOULDER])
        lines.append(_fixed(np.stack([xy[P.NOSE], centre])).reshape(-1, 1, 2))
    if lines:
        cv2.polylines(out, lines, False, options.skeleton_colour, thickness, cv2.LINE_AA, _SHIFT)
    radius = int(round(2.5 * thickness * _ONE))
    for j in SKELETON_JOINTS:
        if seen[j]:
            cv2.circle(out, _point(xy[j]), radius, options.skeleton_colour, -1, cv2.LINE_AA, _SHIFT)


def _darken(out: np.ndarray, x0: int, y0: int, x1: int, y1: int, opacity: float) -> None:
    """Blend a rectangle towards black (the panels behind bars and text)."""
    h, w = out.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 > x0 and y1 > y0:
        roi = out[y0:y1, x0:x1]
        cv2.convertScaleAbs(roi, roi, 1.0 - opacity, 0.0)


def _text_style(u: float) -> tuple[float, int]:
    """Font scale and thickness: Hershey text under 0.42 is no longer readable."""
    return max(0.42, 0.5 * u), max(1, round(1.1 * u))


def _draw_bars(out: np.ndarray, expression: np.ndarray, options: OverlayOptions, u: float) -> None:
    if not options.bar_names:
        return
    font_scale, thick = _text_style(u)
    index, label_w, text_h = _bar_layout(options.bar_names, font_scale, thick)
    values = np.clip(np.asarray(expression, dtype=np.float64)[index], 0.0, 1.0)
    pad = max(5, round(8 * u))
    row = text_h + max(6, round(10 * u))
    bar_w = max(90, round(150 * u))
    bar_h = max(3, text_h)
    x0 = y0 = round(10 * u)
    bar_x = x0 + pad + label_w + pad
    panel_w = bar_x - x0 + bar_w + pad
    panel_h = 2 * pad + (len(index) - 1) * row + bar_h
    _darken(out, x0, y0, x0 + panel_w, y0 + panel_h, options.panel_opacity)
    for i, (name, v) in enumerate(zip(options.bar_names, values)):
        top = y0 + pad + i * row
        cv2.putText(out, name, (x0 + pad, top + bar_h), _FONT, font_scale, options.text_colour, thick, cv2.LINE_AA)
        cv2.rectangle(out, (bar_x, top), (bar_x + bar_w, top + bar_h), (90, 90, 90), 1)
        fill = round(v * bar_w)
        if fill > 0:
            cv2.rectangle(out, (bar_x, top), (bar_x + fill, top + bar_h), options.bar_colour, -1)


def _draw_status(out: np.ndarray, tracked: TrackedFrame, options: OverlayOptions, u: float) -> None:
    """Bottom-left block. The ms is the sum of the stage timings (an upper bound on the stage's
    wall time when face and body ran in parallel)."""
    font_scale, thick = _text_style(u)
    total_ms = sum(tracked.timings_ms.values())
    if tracked.face is not None:
        yaw, pitch, roll = np.round(np.degrees(yaw_pitch_roll(tracked.face.head_rotation)), 1) + 0.0  # no "-0.0"
        angles = f"yaw {yaw:+.1f}  pitch {pitch:+.1f}  roll {roll:+.1f}"
    else:
        angles = "yaw --  pitch --  roll --"
    face_ok, body_ok = tracked.params.face_ok, tracked.params.body_ok
    lines: list[list[tuple[str, RGB]]] = [
        [(f"t {tracked.t:.2f} s   #{tracked.index}   {total_ms:.1f} ms", options.text_colour)],
        [("face ok" if face_ok else "face LOST", options.ok_colour if face_ok else options.lost_colour),
         ("   ", options.text_colour),
         ("body ok" if body_ok else "body LOST", options.ok_colour if body_ok else options.lost_colour)],
        [(angles, options.text_colour)],
    ]
    (_, text_h), base = cv2.getTextSize("Ag", _FONT, font_scale, thick)
    pad = max(5, round(8 * u))
    row = text_h + base + max(4, round(6 * u))
    widths = [sum(cv2.getTextSize(s, _FONT, font_scale, thick)[0][0] for s, _ in line) for line in lines]
    h = out.shape[0]
    x0 = round(10 * u)
    y1 = h - round(10 * u)
    y0 = y1 - 2 * pad - row * len(lines) + (row - text_h - base)
    _darken(out, x0, y0, x0 + 2 * pad + max(widths), y1, options.panel_opacity)
    for i, line in enumerate(lines):
        x = x0 + pad
        y = y0 + pad + text_h + i * row
        for text, colour in line:
            cv2.putText(out, text, (x, y), _FONT, font_scale, colour, thick, cv2.LINE_AA)
            x += cv2.getTextSize(text, _FONT, font_scale, thick)[0][0]


def _draw_no_face(out: np.ndarray, options: OverlayOptions, u: float) -> None:
    """A red frame border and a "NO FACE" label at the top centre."""
    h, w = out.shape[:2]
    border = max(3, round(5 * u))
    cv2.rectangle(out, (0, 0), (w - 1, h - 1), options.lost_colour, border)
    font_scale, thick = 1.0 * u, max(2, round(2.5 * u))
    (tw, th), base = cv2.getTextSize("NO FACE", _FONT, font_scale, thick)
    pad = round(10 * u)
    x0 = (w - tw) // 2 - pad
    y0 = border + round(10 * u)
    cv2.rectangle(out, (x0, y0), (x0 + tw + 2 * pad, y0 + th + base + 2 * pad), options.lost_colour, -1)
    cv2.putText(out, "NO FACE", (x0 + pad, y0 + pad + th), _FONT, font_scale, (255, 255, 255), thick, cv2.LINE_AA)
