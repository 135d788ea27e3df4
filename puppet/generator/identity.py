"""The neural generator's identity code z_id: what a mesh avatar is, as a fixed-length vector.

AniPortraitGAN conditions on 80 BFM identity coefficients; our identities are mesh avatars
(``puppet.avatar.Avatar``), so z_id is the avatar's own description: its anny phenotype, its
colours and its categorical choices. The mesh renders the synthetic dataset is made of are a
deterministic function of exactly these values (and the per-frame parameters), so the generator
can learn z_id -> appearance without noise.

Layout (``IDENTITY_LAYOUT``, ``IDENTITY_DIM`` = 36), every entry ``2 x - 1`` of a value ``x`` in
[0, 1], so the code lies in [-1, 1]:

====================  =====  ====================================================================
field                 size   value x
====================  =====  ====================================================================
phenotype             6      gender, age, muscle, weight, height, proportions (``Phenotype``)
skin, iris, brows,    7 x 3  sRGB colours of the ``Appearance``; ``trim`` is the clothing trim or,
lips, hair,                  when it has none, the clothing colour (what the mesh paints there)
clothing, trim
hair_style            6      one-hot over ``HAIR_STYLES`` (in that order)
neckline              3      one-hot over ``NECKLINES`` (in that order)
====================  =====  ====================================================================

The name is not part of the code: two avatars that look the same are the same identity.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from puppet.avatar import HAIR_STYLES, NECKLINES, Avatar, Phenotype

PHENOTYPE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Phenotype))
COLOR_FIELDS: tuple[str, ...] = ("skin", "iris", "brows", "lips", "hair", "clothing", "trim")


def _layout() -> dict[str, slice]:
    sizes = [("phenotype", len(PHENOTYPE_FIELDS))] + [(c, 3) for c in COLOR_FIELDS] + [
        ("hair_style", len(HAIR_STYLES)), ("neckline", len(NECKLINES))]
    out, start = {}, 0
    for name, size in sizes:
        out[name] = slice(start, start + size)
        start += size
    return out


IDENTITY_LAYOUT: dict[str, slice] = _layout()
"""Field name -> its slice of the identity code (see the module docstring)."""

IDENTITY_DIM: int = max(s.stop for s in IDENTITY_LAYOUT.values())  # 36


def identity_code(avatar: Avatar) -> np.ndarray:
    """The identity code of ``avatar``: ``(IDENTITY_DIM,)`` float32 in [-1, 1] (module docstring)."""
    look = avatar.appearance
    unit = np.zeros(IDENTITY_DIM, np.float64)  # values in [0, 1] first
    unit[IDENTITY_LAYOUT["phenotype"]] = [getattr(avatar.phenotype, f) for f in PHENOTYPE_FIELDS]
    colors = {"skin": look.skin, "iris": look.iris, "brows": look.brows, "lips": look.lips, "hair": look.hair,
              "clothing": look.clothing,
              "trim": look.clothing if look.clothing_trim is None else look.clothing_trim}
    for name in COLOR_FIELDS:
        unit[IDENTITY_LAYOUT[name]] = colors[name]
    unit[IDENTITY_LAYOUT["hair_style"].start + HAIR_STYLES.index(look.hair_style)] = 1.0
    unit[IDENTITY_LAYOUT["neckline"].start + NECKLINES.index(look.neckline)] = 1.0
    return (2.0 * unit - 1.0).astype(np.float32)


def identity_codes(avatars: list[Avatar] | tuple[Avatar, ...]) -> np.ndarray:
    """``identity_code`` of each avatar, stacked: ``(N, IDENTITY_DIM)`` float32."""
    return np.stack([identity_code(a) for a in avatars]).reshape(len(avatars), IDENTITY_DIM)
