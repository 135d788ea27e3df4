"""MediaPipe's blendshape model output -> the contract's 52 expression weights.

MediaPipe's face blendshape model scores 52 categories: ``_neutral`` followed by 51 ARKit names.
The contract (``puppet.contract.ARKIT_NAMES``) drops ``_neutral`` and appends ``tongueOut``, which
MediaPipe does not estimate (set to 0). Categories are matched by NAME, never by position, so a
bundle whose categories come in another order still maps correctly and a foreign one is refused.
Left/Right in the names are the subject's sides, the same as ``trackers.face_landmarks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
