"""Parameters -> image: the engine protocol, the mesh engine and the neural engine's runtimes.
Engines never import trackers.

``create("mesh", size=256)`` builds an engine from its options (implementations are imported
only when asked for, so importing ``engines`` costs nothing).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    from engines.base import Engine
    from engines.mesh import MeshEngine
    from engines.neural import NeuralEngine

EngineName = Literal["mesh", "neural"]

# name -> (module, engine class, options class)
ENGINES: dict[str, tuple[str, str, str]] = {
    "mesh": ("engines.mesh", "MeshEngine", "MeshEngineOptions"),
    "neural": ("engines.neural", "NeuralEngine", "NeuralEngineOptions"),
}


@overload
def create(name: Literal["mesh"], options: Any = None, **fields: Any) -> "MeshEngine": ...


@overload
def create(name: Literal["neural"], options: Any = None, **fields: Any) -> "NeuralEngine": ...


@overload
def create(name: str, options: Any = None, **fields: Any) -> "Engine": ...


def create(name: str, options: Any = None, **fields: Any) -> "Engine":
    """An engine by name, from an options object or the options' fields (a misspelt field is a
    ``TypeError``, as from the options dataclass itself)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    module_name, engine_cls, options_cls = ENGINES[name]
    module = import_module(module_name)
    if options is not None and fields:
        raise TypeError("give either an options object or its fields, not both")
    if options is None:
        options = getattr(module, options_cls)(**fields)
    return getattr(module, engine_cls)(options)
