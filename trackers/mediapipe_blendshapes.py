"""MediaPipe's blendshape model output -> the contract's 52 expression weights.

MediaPipe's face blendshape model scores 52 categories: ``_neutral`` followed by 51 ARKit names.
The contract (``puppet.contract.ARKIT_NAMES``) drops ``_neutral`` and appends ``tongueOut``, which
MediaPipe does not estimate (set to 0). Categories are matched by NAME, never by position, so a
bundle whose categories come in another order still maps correctly and a foreign one is refused.
Left/Right in the names are the subject's sides, the same as ``trackers.face_landmarks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from puppet.contract import ARKIT_NAMES, MEDIAPIPE_BLENDSHAPE_NAMES, NUM_EXPRESSIONS
from puppet.errors import AssetError

NEUTRAL = "_neutral"
_CONTRACT_INDEX: dict[str, int] = {name: i for i, name in enumerate(ARKIT_NAMES)}


class Category(Protocol):
    """What MediaPipe's ``mediapipe.tasks...Category`` offers (only these two fields are read)."""

    category_name: str | None
    score: float


def scores_by_name(categories: Iterable[Category]) -> dict[str, float]:
    """``{category_name: score}`` of one face's blendshape categories."""
    out: dict[str, float] = {}
    for c in categories:
        if not c.category_name:
            raise AssetError("blendshape category without a name: the model bundle has no labels")
        out[c.category_name] = float(c.score)
    return out


def contract_expression(scores: Mapping[str, float]) -> np.ndarray:
    """Blendshape scores by MediaPipe category name -> float32 (52,) in contract order.

    ``_neutral`` is dropped, ``tongueOut`` (not estimated by MediaPipe) is 0, values are clipped
    to [0, 1]. Raises AssetError when a name is unknown or one of MediaPipe's 51 is missing.
    """
    unknown = sorted(set(scores) - set(_CONTRACT_INDEX) - {NEUTRAL})
    if unknown:
        raise AssetError(f"unknown blendshape categories {unknown}: not MediaPipe's blendshape model")
    missing = [n for n in MEDIAPIPE_BLENDSHAPE_NAMES if n != NEUTRAL and n not in scores]
    if missing:
        raise AssetError(f"blendshape model lacks categories {missing}")
    out = np.zeros(NUM_EXPRESSIONS, np.float32)
    for name, value in scores.items():
        if name != NEUTRAL:
            out[_CONTRACT_INDEX[name]] = value
    return np.clip(out, 0.0, 1.0)


def expression_from_categories(categories: Iterable[Category]) -> np.ndarray:
    """One face of a ``FaceLandmarkerResult.face_blendshapes`` -> float32 (52,) contract vector."""
    return contract_expression(scores_by_name(categories))


# Which of the 478 landmarks MediaPipe's blendshape model reads, in its input order: the
# ``kLandmarksSubsetIdxs`` table of MediaPipe's face_blendshapes_graph.cc (Apache-2.0). The graph
# feeds their (x, y) in pixels of the frame, which is how ``FaceObservation`` stores landmarks.
BLENDSHAPE_MODEL_LANDMARKS: tuple[int, ...] = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65,
    66, 67, 70, 78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136, 144,
    145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172, 173,
    176, 178, 181, 185, 191, 195, 197, 234, 246, 249, 251, 263, 267, 269, 270, 276, 282, 283, 284,
    285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324, 332,
    334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382, 384, 385, 386,
    387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454, 466, 468, 469, 470, 471, 472, 473,
    474, 475, 476, 477,
)
BLENDSHAPE_MODEL_FILE = "face_blendshapes.tflite"


class BlendshapeModel:
    """MediaPipe's blendshape model, run on landmarks we already have.

    The FaceLandmarker task runs its own detector and landmark model before this ~0.6 ms network;
    FaceMesh already gives the same 478-point attention-mesh landmarks, so puppet runs only the
    blendshape network (from the user's ``face_landmarker.task`` bundle) on them: MediaPipe's
    expression estimate at FaceMesh's cost. LiteRT (``ai-edge-litert``) runs the TFLite file.
    """

    def __init__(self, bundle: str | Path) -> None:
        import zipfile

        from ai_edge_litert.interpreter import Interpreter

        try:
            with zipfile.ZipFile(bundle) as z:
                content = z.read(BLENDSHAPE_MODEL_FILE)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise AssetError(f"{bundle} is not a MediaPipe face landmarker bundle ({exc})") from None
        try:
            self._interpreter = Interpreter(model_content=content, num_threads=1)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise AssetError(f"cannot load the blendshape model in {bundle}: {exc}") from None
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        n = len(BLENDSHAPE_MODEL_LANDMARKS)
        if tuple(inp["shape"]) != (1, n, 2) or tuple(out["shape"]) != (len(MEDIAPIPE_BLENDSHAPE_NAMES),):
            raise AssetError(f"{bundle}: unexpected blendshape model shapes {tuple(inp['shape'])} -> "
                             f"{tuple(out['shape'])}")
        self._input, self._output = inp["index"], out["index"]
        self._subset = np.array(BLENDSHAPE_MODEL_LANDMARKS)

    def predict(self, landmarks_px: np.ndarray) -> np.ndarray:
        """``(478, 3)`` pixel landmarks -> float32 (52,) in contract order."""
        points = np.ascontiguousarray(landmarks_px[self._subset, :2], dtype=np.float32)[None]
        self._interpreter.set_tensor(self._input, points)
        self._interpreter.invoke()
        scores = self._interpreter.get_tensor(self._output)
        return contract_expression(dict(zip(MEDIAPIPE_BLENDSHAPE_NAMES, scores.tolist())))
