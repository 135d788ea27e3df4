"""Avatars: who the mesh engine draws. An avatar is a name, an anny phenotype and an appearance.

An ``Avatar`` is a description only (no geometry): ``puppet.avatar_model`` turns it into a posable
mesh. Avatars are saved as small versioned JSON files::

    {"format": "puppet.avatar", "version": 1, "name": "ada",
     "phenotype": {"gender": 1.0, "age": 0.72, ...},
     "appearance": {"skin": "#c68a6a", "iris": "#4a3020", ..., "hair_style": "bob", ...}}

Colours are sRGB hex strings in the file and (r, g, b) floats in [0, 1] in memory. Phenotype
values are anny's, in [0, 1]: gender 0 = male, 1 = female; age 0.5 = teenager, 2/3 = young adult
(about 25), 1 = old; the others 0.5 = average.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from puppet.errors import AssetError, OutputError

log = logging.getLogger(__name__)

FORMAT_NAME = "puppet.avatar"
FORMAT_VERSION = 1

RGB = tuple[float, float, float]
HairStyle = Literal["none", "buzz", "short", "bob", "long", "bun"]
Neckline = Literal["crew", "v", "scoop"]
HAIR_STYLES: tuple[str, ...] = get_args(HairStyle)
NECKLINES: tuple[str, ...] = get_args(Neckline)


def hex_to_rgb(text: str) -> RGB:
    """``"#rrggbb" -> (r, g, b)`` floats in [0, 1]. Raises ``ValueError`` on anything else."""
    if not isinstance(text, str) or len(text) != 7 or text[0] != "#":
        raise ValueError(f"colours are '#rrggbb' strings, got {text!r}")
    try:
        value = int(text[1:], 16)
    except ValueError:
        raise ValueError(f"colours are '#rrggbb' strings, got {text!r}") from None
    return ((value >> 16 & 255) / 255.0, (value >> 8 & 255) / 255.0, (value & 255) / 255.0)


def rgb_to_hex(rgb: RGB) -> str:
    """``(r, g, b)`` floats in [0, 1] -> ``"#rrggbb"``."""
    r, g, b = (int(round(float(np.clip(c, 0.0, 1.0)) * 255)) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _check_rgb(name: str, rgb: Any) -> RGB:
    values = tuple(float(c) for c in rgb)
    if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
        raise ValueError(f"{name} must be 3 floats in [0, 1], got {rgb!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Phenotype:
    """anny's phenotype parameters, each in [0, 1] (see the module docstring)."""

    gender: float = 0.5
    age: float = 0.7
    muscle: float = 0.5
    weight: float = 0.5
    height: float = 0.5
    proportions: float = 0.5

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = float(getattr(self, f.name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"phenotype {f.name} must be in [0, 1], got {value}")
            object.__setattr__(self, f.name, value)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Appearance:
    """What is painted and added on the phenotype's body.

    skin, iris, brows, lips, hair, clothing: sRGB colours (r, g, b) in [0, 1].
    hair_style: procedural hair geometry ("none" = bald).
    clothing_trim: colour of the neckline band, or None for the clothing colour.
    neckline: shape of the top's neckline.
    """

    skin: RGB = (0.80, 0.60, 0.48)
    iris: RGB = (0.30, 0.20, 0.12)
    brows: RGB = (0.22, 0.15, 0.10)
    lips: RGB = (0.66, 0.36, 0.34)
    hair_style: HairStyle = "short"
    hair: RGB = (0.20, 0.13, 0.08)
    clothing: RGB = (0.20, 0.30, 0.45)
    clothing_trim: RGB | None = None
    neckline: Neckline = "crew"

    def __post_init__(self) -> None:
        for name in ("skin", "iris", "brows", "lips", "hair", "clothing"):
            object.__setattr__(self, name, _check_rgb(name, getattr(self, name)))
        if self.clothing_trim is not None:
            object.__setattr__(self, "clothing_trim", _check_rgb("clothing_trim", self.clothing_trim))
        if self.hair_style not in HAIR_STYLES:
            raise ValueError(f"hair_style must be one of {HAIR_STYLES}, got {self.hair_style!r}")
        if self.neckline not in NECKLINES:
            raise ValueError(f"neckline must be one of {NECKLINES}, got {self.neckline!r}")


@dataclass(frozen=True)
class Avatar:
    """A named identity for the mesh engine."""

    name: str
    phenotype: Phenotype = Phenotype()
    appearance: Appearance = Appearance()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("an avatar needs a non-empty name")


# ----------------------------------------------------------------------------- JSON

_COLOR_FIELDS = ("skin", "iris", "brows", "lips", "hair", "clothing", "clothing_trim")


def avatar_to_dict(avatar: Avatar) -> dict[str, Any]:
    """The JSON document of ``avatar`` (format header included)."""
    appearance: dict[str, Any] = {}
    for f in dataclasses.fields(Appearance):
        value = getattr(avatar.appearance, f.name)
        appearance[f.name] = (None if value is None else rgb_to_hex(value)) if f.name in _COLOR_FIELDS else value
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": avatar.name,
        "phenotype": avatar.phenotype.as_dict(),
        "appearance": appearance,
    }


def avatar_from_dict(doc: Any, where: str = "avatar") -> Avatar:
    """Parse and validate a JSON document; ``AssetError`` (naming ``where``) when it is not a
    version-1 ``puppet.avatar`` document or a value is out of range. Unknown keys are errors
    (typos must not pass silently); missing phenotype/appearance keys take the defaults."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise AssetError(f"{where} is not a puppet avatar file (no \"format\": \"{FORMAT_NAME}\")")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise AssetError(f"{where}: bad avatar format version {version!r}")
    if version > FORMAT_VERSION:
        raise AssetError(f"{where} was written by a newer puppet (avatar format {version})")
    unknown = set(doc) - {"format", "version", "name", "phenotype", "appearance"}
    if unknown:
        raise AssetError(f"{where}: unknown avatar keys {sorted(unknown)}")
    try:
        pheno = doc.get("phenotype", {})
        look = doc.get("appearance", {})
        if not isinstance(pheno, dict) or not isinstance(look, dict):
            raise ValueError("phenotype and appearance must be objects")
        known_pheno = {f.name for f in dataclasses.fields(Phenotype)}
        known_look = {f.name for f in dataclasses.fields(Appearance)}
        if set(pheno) - known_pheno:
            raise ValueError(f"unknown phenotype keys {sorted(set(pheno) - known_pheno)}")
        if set(look) - known_look:
            raise ValueError(f"unknown appearance keys {sorted(set(look) - known_look)}")
        for key, value in pheno.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"phenotype {key} must be a number, got {value!r}")
        look = {k: (None if v is None else hex_to_rgb(v)) if k in _COLOR_FIELDS else v for k, v in look.items()}
        return Avatar(name=doc.get("name"), phenotype=Phenotype(**pheno), appearance=Appearance(**look))
    except (TypeError, ValueError) as exc:
        raise AssetError(f"{where}: invalid avatar ({exc})") from None


def save_avatar(avatar: Avatar, path: str | os.PathLike) -> Path:
    """Write ``avatar`` as JSON (atomically: temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(json.dumps(avatar_to_dict(avatar), indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def load_avatar(name_or_path: str | os.PathLike) -> Avatar:
    """A built-in avatar by name (``list_avatars()``) or an avatar JSON file."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_AVATARS:
        return BUILTIN_AVATARS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise AssetError(f"no built-in avatar or avatar file named {str(name_or_path)!r} "
                         f"(built-in: {', '.join(list_avatars())})")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AssetError(f"cannot read avatar file {path}: {exc}") from None
    avatar = avatar_from_dict(doc, where=str(path))
    log.debug("loaded avatar %r from %s", avatar.name, path)
    return avatar


# ----------------------------------------------------------------------------- built-ins

def _avatar(name: str, pheno: tuple[float, float, float, float, float, float], skin: str, iris: str,
            brows: str, lips: str, hair_style: HairStyle, hair: str, clothing: str,
            trim: str | None = None, neckline: Neckline = "crew") -> Avatar:
    g, a, m, w, h, p = pheno
    return Avatar(
        name=name,
        phenotype=Phenotype(gender=g, age=a, muscle=m, weight=w, height=h, proportions=p),
        appearance=Appearance(
            skin=hex_to_rgb(skin), iris=hex_to_rgb(iris), brows=hex_to_rgb(brows), lips=hex_to_rgb(lips),
            hair_style=hair_style, hair=hex_to_rgb(hair), clothing=hex_to_rgb(clothing),
            clothing_trim=None if trim is None else hex_to_rgb(trim), neckline=neckline,
        ),
    )


# name: (gender, age, muscle, weight, height, proportions), skin, iris, brows, lips, hair style,
# hair, clothing, trim, neckline. Skin tones run from light to deep; ages from teen to old.
BUILTIN_AVATARS: dict[str, Avatar] = {a.name: a for a in (
    _avatar("ada", (1.0, 0.70, 0.45, 0.45, 0.5, 0.6), "#f1c7ae", "#4f7a9a", "#6b4a32", "#c46a6a",
            "bob", "#7a4a2a", "#2f5d8a", "#f2f2f2", "scoop"),
    _avatar("bruno", (0.0, 0.78, 0.65, 0.55, 0.6, 0.5), "#d9a37f", "#3b2a1e", "#2e2119", "#a8625a",
            "short", "#2b1f17", "#5a6b3a", None, "crew"),
    _avatar("chidi", (0.0, 0.70, 0.55, 0.45, 0.6, 0.5), "#6b4330", "#24170f", "#140d0a", "#6e3e36",
            "buzz", "#120c0a", "#d8c9a8", "#8a6a3a", "v"),
    _avatar("dalia", (1.0, 0.74, 0.45, 0.55, 0.45, 0.5), "#a8714f", "#3a2415", "#231812", "#8c4a45",
            "long", "#1c130e", "#8a2f3f", None, "v"),
    _avatar("emiko", (1.0, 0.66, 0.40, 0.40, 0.4, 0.55), "#eac3a0", "#2a1c14", "#1a1410", "#c0676a",
            "bun", "#15110f", "#e8e4da", "#3a4a6a", "crew"),
    _avatar("farouk", (0.0, 0.92, 0.45, 0.60, 0.5, 0.45), "#c08a64", "#4a3524", "#bdb6ae", "#9c5e55",
            "none", "#c8c2ba", "#3a3f48", "#b89a6a", "crew"),
    _avatar("grace", (1.0, 0.95, 0.40, 0.55, 0.4, 0.45), "#ecc9b3", "#6d8a6a", "#a69a8e", "#b77a78",
            "short", "#dcd8d2", "#7a5a8a", "#ede6f0", "scoop"),
    _avatar("hamza", (0.0, 0.60, 0.50, 0.40, 0.55, 0.5), "#8d5a3b", "#2a1a10", "#1b120c", "#7c4a40",
            "short", "#17110d", "#c7542e", None, "crew"),
    _avatar("ines", (1.0, 0.64, 0.45, 0.45, 0.5, 0.6), "#4a2c20", "#1e120b", "#0f0a08", "#5c2e2a",
            "bun", "#0d0908", "#e0b020", "#2a2a2a", "scoop"),
    _avatar("jonas", (0.0, 0.72, 0.50, 0.50, 0.65, 0.5), "#f0c9ad", "#5a86b0", "#a06a3a", "#c07870",
            "bob", "#c8843a", "#2a2f3a", "#d0d0d0", "v"),
    _avatar("kaia", (0.75, 0.68, 0.45, 0.45, 0.5, 0.5), "#c58c65", "#3a6a5a", "#2a1e16", "#a05a58",
            "long", "#6a3420", "#3a7a6a", "#f0e8d8", "crew"),
)}


def list_avatars() -> tuple[str, ...]:
    """Names of the built-in avatars, sorted."""
    return tuple(sorted(BUILTIN_AVATARS))


# ----------------------------------------------------------------------------- random

# Skin tones from light to deep (sRGB); a random avatar interpolates between neighbours.
_SKIN_RAMP = ("#f6d5c2", "#efc1a0", "#d9a37f", "#c08a64", "#a8714f", "#8d5a3b", "#6b4330", "#4a2c20")
_HAIR_COLORS = ("#0f0b09", "#2b1f17", "#4a3020", "#7a4a2a", "#a0683a", "#c8a060", "#dcd8d2",
                "#8a2a1a", "#b04a20")
_IRIS_COLORS = ("#24170f", "#3b2a1e", "#5a3a20", "#4f7a9a", "#5a86b0", "#6d8a6a", "#7a6a40")
_LIP_BASE = np.array([0.75, 0.42, 0.42])


def random_avatar(seed: int, name: str | None = None) -> Avatar:
    """A plausible random adult avatar, the same for the same ``seed``."""
    rng = np.random.default_rng(seed)
    gender = float(rng.choice([0.0, 1.0, rng.uniform(0.0, 1.0)], p=[0.45, 0.45, 0.1]))
    age = float(rng.uniform(0.62, 0.98))
    ramp = np.array([hex_to_rgb(c) for c in _SKIN_RAMP])
    s = rng.uniform(0, len(ramp) - 1)
    i = min(int(s), len(ramp) - 2)
    skin = ramp[i] * (1 - (s - i)) + ramp[i + 1] * (s - i)
    hair = np.array(hex_to_rgb(str(rng.choice(_HAIR_COLORS))))
    if age > 0.9 and rng.uniform() < 0.7:
        hair = np.array(hex_to_rgb("#d0ccc6"))
    styles = ("short", "buzz", "none") if gender < 0.5 else ("bob", "long", "bun", "short")
    weights = (0.6, 0.25, 0.15) if gender < 0.5 else (0.3, 0.35, 0.2, 0.15)
    clothing = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.7), rng.uniform(0.25, 0.85))
    trim = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.7, 0.95)) if rng.uniform() < 0.4 else None
    lips = np.clip(skin * 0.55 + _LIP_BASE * 0.45 * (0.6 + 0.4 * skin.mean()), 0, 1)
    return Avatar(
        name=name or f"random-{seed}",
        phenotype=Phenotype(gender=gender, age=age, muscle=float(rng.uniform(0.3, 0.7)),
                            weight=float(rng.uniform(0.3, 0.7)), height=float(rng.uniform(0.3, 0.7)),
                            proportions=float(rng.uniform(0.35, 0.65))),
        appearance=Appearance(
            skin=tuple(skin), iris=hex_to_rgb(str(rng.choice(_IRIS_COLORS))),
            brows=tuple(np.clip(hair * 0.8, 0, 1)), lips=tuple(lips),
            hair_style=str(rng.choice(styles, p=weights)), hair=tuple(hair),
            clothing=clothing, clothing_trim=trim, neckline=str(rng.choice(NECKLINES)),
        ),
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> RGB:
    import colorsys

    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]
