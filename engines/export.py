"""Export of the neural generator's per-frame render to ONNX (for ONNX Runtime and TensorRT).

What the graph is. ``Generator.render`` for ONE frame (batch 1) at a fixed output ``size``, wrapped
by ``puppet.generator.model.FrameRenderModule``. The identity is a set of graph INPUTS, not
constants: the baked HR radiance maps, ``z_id`` and the rig's tensors (skin, weights, bone heads,
pose corrections). So one ONNX file serves every identity of a checkpoint (one per checkpoint x
size x opset), the file holds only the network weights (MBs, not the 100+ MB of a published
identity's HR maps), and switching identity costs nothing. The per-frame inputs are
``expression (1, 52)``, ``pose (1, 6, 3)``, ``cam2world (1, 4, 4)``, ``near``, ``far`` ``(1,)``; the
outputs ``rgb (1, 3, size, size)`` premultiplied and ``alpha (1, 1, size, size)``, in [0, 1].
Inputs the graph does not use (face basis, portrait framing...) are dropped by the exporter:
feed by name (``session inputs``), never by position.

Static: every shape (batch 1, size, config sizes), the camera's fov and the skeleton's topology
(parents, driven bones, head bone: the same for every anny avatar), which are recorded in the
file's metadata and checked when it is loaded.

After ``torch.onnx.export`` (TorchScript exporter, opset 17) the graph is constant-folded here
(``fold_constants``: shape arithmetic, the D_P kernels' normalisation, TopK's K...) because
TensorRT wants those as initializers, then checked with ``onnx.checker`` and against TensorRT
10's operator support (``engines.tensorrt_ops``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from puppet.errors import AssetError, OutputError
from puppet.paths import write_bytes_atomic

if TYPE_CHECKING:
    import onnx
    import torch

    from puppet.generator.model import Generator
    from puppet.generator.rig import RigTensors

log = logging.getLogger(__name__)

EXPORT_FORMAT = "puppet-frame-render"
EXPORT_VERSION = 1
"""Bump when the exported graph's interface changes (inputs, outputs, metadata)."""

DEFAULT_OPSET = 17
FRAME_INPUTS: tuple[str, ...] = ("expression", "pose", "cam2world", "near", "far")
IDENTITY_INPUTS: tuple[str, ...] = ("hr_maps", "z_id")
OUTPUTS: tuple[str, ...] = ("rgb", "alpha")
FOLD_MAX_ELEMENTS = 1 << 18
"""Largest constant ``fold_constants`` materialises (1 MB of float32): bigger ones stay computed."""

_SOURCE_FILES = ("model.py", "networks.py", "rays.py", "manifolds.py", "skinning.py", "rig.py", "config.py")


@dataclass(frozen=True)
class RigTopology:
    """The static part of a rig (``RigTensors.parents``, ``driven``, ``head_bone``)."""

    parents: tuple[int, ...]
    driven: tuple[int, ...]
    head_bone: int

    @staticmethod
    def of(rig: "RigTensors") -> "RigTopology":
        return RigTopology(tuple(int(p) for p in rig.parents), tuple(int(d) for d in rig.driven), int(rig.head_bone))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass(frozen=True)
class ExportedGraph:
    """An exported per-frame graph: ``path`` of the .onnx file, its ``sha256``, ``size``, ``opset``,
    ``inputs`` (names, in graph order), the identity ``weights`` hash it was made from, and the
    number of nodes and seconds the export took."""

    path: Path
    sha256: str
    size: int
    opset: int
    inputs: tuple[str, ...]
    weights: str
    nodes: int
    seconds: float


# ----------------------------------------------------------------------------- hashes and keys

def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(generator: "Generator") -> str:
    """sha256 of a generator's config and weights (float32 bytes, sorted by name): the identity of
    a checkpoint independent of how its file was written (float16 files hash as their float32
    upcast, which is what runs)."""
    h = hashlib.sha256(json.dumps(generator.config.to_dict(), sort_keys=True).encode())
    for name, t in sorted(generator.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def generator_source_sha256() -> str:
    """sha256 of the generator's source files: an edit to the renderer invalidates cached exports."""
    import puppet.generator as pkg

    h = hashlib.sha256()
    folder = Path(pkg.__file__).parent
    for name in _SOURCE_FILES:
        p = folder / name
        h.update(name.encode())
        h.update(p.read_bytes() if p.is_file() else b"")
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def onnx_cache_key(weights: str, size: int, opset: int, topology: RigTopology, source: str) -> str:
    """File name stem of a cached export: a pure function of everything the graph depends on
    (weights hash, output size, opset, rig topology, renderer source hash, export version)."""
    doc = {"weights": weights, "size": int(size), "opset": int(opset), "topology": topology.to_json(),
           "source": source, "version": EXPORT_VERSION}
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]
    return f"frame-{size}-op{opset}-{digest}"


def default_export_cache_dir() -> Path:
    """``$PUPPET_CACHE_DIR/onnx`` (or ``~/.cache/puppet/onnx``)."""
    from puppet.assets import cache_dir

    return cache_dir() / "onnx"


# ----------------------------------------------------------------------------- export

def frame_module(generator: "Generator", size: int, rig: "RigTensors"):
    """``FrameRenderModule`` for ``generator`` at ``size`` with ``rig``'s topology and the config's
    portrait fov (the mesh engine's camera)."""
    from puppet.generator.model import FrameRenderModule

    return FrameRenderModule(generator, size, generator.config.portrait_fov_deg, rig).eval()


def example_inputs(generator: "Generator", rig: "RigTensors", hr_maps: "torch.Tensor | None" = None,
                   z_id: "torch.Tensor | None" = None) -> dict[str, "torch.Tensor"]:
    """Inputs of batch 1 with the right shapes and plausible values (frontal camera, rest pose):
    for tracing, and for tests. ``hr_maps`` / ``z_id`` default to zeros."""
    import torch

    from puppet.generator.model import FrameRenderModule
    from puppet.generator.rays import portrait_camera

    c = generator.config
    rig1 = rig.take([0]) if rig.batch_size != 1 else rig
    dev = rig1.skin_rest.device
    cam = portrait_camera(rig1, torch.zeros(1, device=dev), torch.zeros(1, device=dev), c.portrait_fov_deg,
                          c.ray_half_depth)
    r = c.hr_map_resolution
    feeds = {
        "hr_maps": hr_maps if hr_maps is not None else torch.zeros(1, c.levels, 4, r, r, device=dev),
        "z_id": z_id if z_id is not None else torch.zeros(1, c.identity_dim, device=dev),
        "expression": torch.zeros(1, c.expression_dim, device=dev),
        "pose": torch.zeros(1, 6, 3, device=dev),
        "cam2world": cam.cam2world, "near": cam.near, "far": cam.far,
    }
    for name in FrameRenderModule.RIG_TENSOR_FIELDS:
        feeds[name] = getattr(rig1, name)
    return feeds


def all_input_names() -> tuple[str, ...]:
    """``FrameRenderModule.forward``'s inputs in order (the exported graph keeps those it uses)."""
    from puppet.generator.model import FrameRenderModule

    return IDENTITY_INPUTS + FRAME_INPUTS + FrameRenderModule.RIG_TENSOR_FIELDS


@contextlib.contextmanager
def _unchunked(generator: "Generator"):
    """Export the per-point networks over all points at once (one node each, not a chain of
    chunks); the chunk is a CPU-memory knob of eager runs."""
    chunk = generator.point_chunk
    generator.point_chunk = None
    try:
        yield
    finally:
        generator.point_chunk = chunk


def export_frame_onnx(generator: "Generator", path: str | os.PathLike, size: int, rig: "RigTensors",
                      opset: int = DEFAULT_OPSET, weights: str | None = None, check_tensorrt: bool = True
                      ) -> ExportedGraph:
    """Export ``generator``'s per-frame render at ``size`` to ``path`` (module docstring), fold
    constants, validate (``onnx.checker``, static shapes, TensorRT operators) and write atomically.
    ``rig``: any rig with the avatars' topology (its values are only tracing examples).
    ``weights``: the hash recorded in the metadata (default ``weights_sha256(generator)``)."""
    import onnx
    import torch

    from engines.tensorrt_ops import check_tensorrt_compatible

    if opset < 17:
        raise ValueError(f"opset must be >= 17 (GridSample, Trilu), got {opset}")
    path = Path(path)
    t0 = time.perf_counter()
    weights = weights or weights_sha256(generator)
    device = next(generator.parameters()).device
    rig = rig.to(device)
    module = frame_module(generator, size, rig)
    feeds = example_inputs(generator, rig)
    names = all_input_names()
    args = tuple(feeds[n] for n in names)
    buf = io.BytesIO()
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad(), _unchunked(generator), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks: shapes are static here
            torch.onnx.export(module, args, buf, opset_version=opset, dynamo=False, do_constant_folding=True,
                              input_names=list(names), output_names=list(OUTPUTS))
    finally:
        generator.train(was_training)
    model = fold_constants(onnx.load_from_string(buf.getvalue()))
    topology = RigTopology.of(rig)
    meta = {"format": EXPORT_FORMAT, "version": str(EXPORT_VERSION), "size": str(size), "opset": str(opset),
            "fov_deg": repr(generator.config.portrait_fov_deg), "topology": topology.to_json(),
            "weights": weights, "config": json.dumps(generator.config.to_dict(), sort_keys=True),
            "source": generator_source_sha256()}
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "puppet"
    onnx.checker.check_model(model, full_check=True)
    static_problems = static_shape_problems(model)
    if static_problems:
        raise RuntimeError("exported graph is not static: " + "; ".join(static_problems))
    if check_tensorrt:
        check_tensorrt_compatible(model, "the exported per-frame graph")
    data = model.SerializeToString()
    write_bytes_atomic(path, data)
    seconds = time.perf_counter() - t0
    log.info("exported %s (%d nodes, %.1f MB) in %.1f s", path, len(model.graph.node), len(data) / 1e6, seconds)
    return ExportedGraph(path=path, sha256=hashlib.sha256(data).hexdigest(), size=size, opset=opset,
                         inputs=tuple(i.name for i in model.graph.input), weights=weights,
                         nodes=len(model.graph.node), seconds=seconds)


def static_shape_problems(model: "onnx.ModelProto") -> list[str]:
    """Graph inputs and outputs whose shapes are not fully static (empty: all static)."""
    out = []
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            out.append(f"{v.name} {[d.dim_param or d.dim_value for d in dims]}")
    return out


# ----------------------------------------------------------------------------- metadata and cache

def read_export_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The puppet metadata of an exported .onnx (``AssetError`` with one line when the file is
    missing, not ONNX, or not a puppet per-frame export of this version)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise AssetError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have many types
        raise AssetError(f"{path} is not an ONNX file ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("format") != EXPORT_FORMAT:
        raise AssetError(f"{path} is not a puppet per-frame export (made with `puppet export`)")
    if meta.get("version") != str(EXPORT_VERSION):
        raise AssetError(f"{path}: export version {meta.get('version')!r}, this puppet reads {EXPORT_VERSION}: "
                         f"export it again")
    return meta


def check_export_matches(meta: dict[str, str], path: str | os.PathLike, size: int,
                         topology: RigTopology | None = None, weights: str | None = None) -> None:
    """``AssetError`` when an export does not fit the engine's size, the avatar's rig or the
    loaded checkpoint (``topology`` / ``weights`` None: not checked)."""
    if int(meta.get("size", -1)) != size:
        raise AssetError(f"{path} renders {meta.get('size')}x{meta.get('size')}, the engine needs {size}x{size}: "
                         f"export it with --size {size}")
    if topology is not None and meta.get("topology") != topology.to_json():
        raise AssetError(f"{path} was exported for another skeleton than this avatar's")
    if weights is not None and meta.get("weights") != weights:
        raise AssetError(f"{path} was exported from other generator weights than the checkpoint in use")


def cached_frame_onnx(generator: "Generator", size: int, rig: "RigTensors", cache_dir: str | os.PathLike | None = None,
                      opset: int = DEFAULT_OPSET, weights: str | None = None) -> Path:
    """The export of ``generator`` at ``size`` from the cache (``default_export_cache_dir()``),
    exported on the first use. Keyed by ``onnx_cache_key``; an unreadable cached file is
    exported again."""
    folder = Path(cache_dir) if cache_dir is not None else default_export_cache_dir()
    weights = weights or weights_sha256(generator)
    key = onnx_cache_key(weights, size, opset, RigTopology.of(rig), generator_source_sha256())
    path = folder / f"{key}.onnx"
    if path.is_file():
        try:
            read_export_metadata(path)
            return path
        except AssetError as exc:
            log.warning("exporting again: %s", exc)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the export cache {folder}: {exc.strerror or exc}") from None
    export_frame_onnx(generator, path, size, rig, opset=opset, weights=weights)
    return path


# ----------------------------------------------------------------------------- constant folding

_NO_FOLD = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                      "Bernoulli", "If", "Loop", "Scan"})


def fold_constants(model: "onnx.ModelProto", max_elements: int = FOLD_MAX_ELEMENTS) -> "onnx.ModelProto":
    """Evaluate every node whose inputs are all known (initializers, ``Constant`` outputs, and
    ``Shape`` of a statically shaped tensor) and whose outputs have at most ``max_elements``
    elements; replace them by initializers and drop what is left unused. Numerically the same
    graph; TensorRT needs e.g. conv weights, TopK's K, pads and axes as initializers."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    inferred = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    shapes: dict[str, list[int] | None] = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value for d in dims] if all(d.HasField("dim_value") for d in dims) else None
    known: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    opset_imports = list(model.opset_import)
    kept: list[Any] = []
    folded = 0
    for node in g.node:
        values = None
        if node.op_type == "Constant":
            values = _run_node(node, {}, opset_imports, ReferenceEvaluator, helper)
        elif node.op_type == "Shape" and shapes.get(node.input[0]) is not None and node.domain in ("", "ai.onnx"):
            shape = np.array(shapes[node.input[0]], dtype=np.int64)
            start = end = None
            for a in node.attribute:
                if a.name == "start":
                    start = a.i
                elif a.name == "end":
                    end = a.i
            values = [shape[start:end]]
        elif (node.op_type not in _NO_FOLD and node.domain in ("", "ai.onnx") and node.input
              and all(i == "" or i in known for i in node.input)):
            if all(shapes.get(o) is not None and int(np.prod(shapes[o])) <= max_elements for o in node.output if o):
                values = _run_node(node, known, opset_imports, ReferenceEvaluator, helper)
        if values is None or any(np.asarray(v).size > max_elements for v in values):
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            if name:
                known[name] = np.asarray(value)
        folded += 1
    # Initializers: what the kept nodes and the graph outputs still read.
    needed = {i for n in kept for i in n.input} | {o.name for o in g.output}
    graph_inputs = {i.name for i in g.input}
    new_inits = [numpy_helper.from_array(np.asarray(known[name]), name) for name in sorted(needed)
                 if name in known and name not in graph_inputs]
    del g.node[:]
    g.node.extend(kept)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    del g.value_info[:]
    log.debug("fold_constants: %d nodes folded, %d kept", folded, len(kept))
    return model


def _run_node(node, known: dict[str, np.ndarray], opset_imports, evaluator_cls, helper) -> list[np.ndarray] | None:
    """Evaluate one node with ONNX's reference evaluator (None when it cannot)."""
    try:
        inputs = [helper.make_tensor_value_info(i, 0, None) for i in node.input if i]
        outputs = [helper.make_tensor_value_info(o, 0, None) for o in node.output if o]
        graph = helper.make_graph([node], "fold", inputs, outputs)
        sub = helper.make_model(graph, opset_imports=opset_imports)
        feeds = {i: known[i] for i in node.input if i}
        return list(evaluator_cls(sub).run(None, feeds))
    except Exception:  # anything the reference evaluator cannot run simply stays in the graph
        return None


# ----------------------------------------------------------------------------- `puppet export`

@dataclass(frozen=True)
class ExportSummary:
    """What ``export_checkpoint`` wrote: the ``onnx`` graph (kept for ``--format onnx``) and, for
    TensorRT, the ``engine`` file."""

    checkpoint: Path
    format: str
    size: int
    opset: int
    onnx: ExportedGraph
    engine: Path | None
    seconds: float

    def describe(self) -> str:
        out = self.engine if self.engine is not None else self.onnx.path
        return (f"exported {self.checkpoint} ({self.size}x{self.size}, opset {self.opset}, {self.onnx.nodes} nodes, "
                f"TensorRT operator check passed) -> {out} in {self.seconds:.1f} s")


def default_export_path(checkpoint: str | os.PathLike, size: int, fmt: str, fp16: bool) -> Path:
    """``<checkpoint stem>-<size>.onnx`` or ``...-fp16.engine`` in the current folder."""
    stem = Path(checkpoint).name.removesuffix(".safetensors")
    if fmt == "onnx":
        return Path(f"{stem}-{size}.onnx")
    return Path(f"{stem}-{size}-{'fp16' if fp16 else 'fp32'}.engine")


def export_checkpoint(checkpoint: str | os.PathLike, fmt: str = "onnx", output: str | os.PathLike | None = None,
                      size: int | None = None, fp16: bool = False, opset: int = DEFAULT_OPSET,
                      avatar: str = "ada") -> ExportSummary:
    """``puppet export``: the per-frame graph of ``checkpoint`` at ``size`` (default the config's
    HR size) as ONNX, or built into a TensorRT engine (``fp16``: FP16 kernels) on this machine's GPU.
    ``avatar``'s rig gives the skeleton topology (every anny avatar has the same)."""
    import tempfile

    from puppet.avatar import load_avatar
    from puppet.generator.checkpoint import load_checkpoint
    from puppet.generator.rig import RigTensors, rig_for_avatar

    t0 = time.perf_counter()
    if fmt not in ("onnx", "tensorrt"):
        raise ValueError(f"format must be onnx or tensorrt, got {fmt!r}")
    if fmt == "onnx" and fp16:
        from puppet.errors import InputError

        raise InputError("--fp16 is for --format tensorrt (TensorRT builds FP16 kernels from the FP32 graph; "
                         "ONNX Runtime runs the FP32 graph)")
    from engines.tensorrt_ops import MAX_OPSET

    if not 17 <= opset <= MAX_OPSET:
        from puppet.errors import InputError

        raise InputError(f"--opset must be 17 to {MAX_OPSET} (GridSample needs 16+, Trilu 14+; TensorRT 10 reads "
                         f"up to {MAX_OPSET}), got {opset}")
    if fmt == "tensorrt":
        from engines.tensorrt_runtime import require_tensorrt

        require_tensorrt("cuda")  # before any work
    generator, _ = load_checkpoint(checkpoint)
    c = generator.config
    size = size if size is not None else c.ray_resolution * c.sr_scale
    out = Path(output) if output is not None else default_export_path(checkpoint, size, fmt, fp16)
    suffix = ".onnx" if fmt == "onnx" else ".engine"
    from puppet.paths import check_output_path

    check_output_path(out, (suffix,))
    rig = RigTensors.stack([rig_for_avatar(load_avatar(avatar), c.skin_vertices, c.face_vertices)])
    weights = weights_sha256(generator)
    if fmt == "onnx":
        graph = export_frame_onnx(generator, out, size, rig, opset=opset, weights=weights)
        return ExportSummary(checkpoint=Path(checkpoint), format=fmt, size=size, opset=opset, onnx=graph, engine=None,
                             seconds=time.perf_counter() - t0)
    from engines.tensorrt_runtime import build_engine

    with tempfile.TemporaryDirectory() as tmp:
        graph = export_frame_onnx(generator, Path(tmp) / "frame.onnx", size, rig, opset=opset, weights=weights)
        build_engine(graph.path, out, "float16" if fp16 else "float32", out.with_suffix(".timing"))
    return ExportSummary(checkpoint=Path(checkpoint), format=fmt, size=size, opset=opset, onnx=graph, engine=out,
                         seconds=time.perf_counter() - t0)
