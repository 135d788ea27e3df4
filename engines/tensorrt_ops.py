"""What TensorRT 10's ONNX parser accepts, and a check of an ONNX graph against it.

Source: onnx-tensorrt's operator support matrix,
https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md. The table below is the matrix
of TensorRT 8.5 (onnx-tensorrt commit 6d0ab7be, the newest revision that could be read from this
environment) plus three operators TensorRT 8.6-10 added (LayerNormalization, GroupNormalization,
IsInf; none in our graphs), with the restrictions TensorRT 10 documents for the operators our
graphs contain. It is deliberately conservative: an operator missing here only makes our own
check fail, never a TensorRT build. TensorRT itself cannot be installed in this environment, so
this check is the closest the tests get to "the parser accepts it" (docs/performance.md).

Restrictions that matter to the neural generator's per-frame graph:

- ONNX domain only: no ``com.microsoft`` (ONNX Runtime contrib) or other custom-domain operators,
  so no ``Inverse``: inverses are written in closed form (``skinning.invert_affine``);
- opset 9 to 20 (TensorRT 10.0's range; later 10.x releases read up to 22); we export 17;
- ``GridSample``: 4-D input and grid only (N, C, H, W); 5-D (volumetric) sampling is rejected by
  the parser;
- ``Conv`` / ``ConvTranspose`` / pooling: 2-D or 3-D; conv weights an initializer;
- ``TopK``: ``K`` an initializer and at most 3840 (what ``torch.sort`` exports to);
- ``Slice`` axes, ``Squeeze`` / ``Unsqueeze`` axes, ``Pad`` pads, ``CumSum`` axis: initializers;
- ``Resize``: modes nearest / linear / cubic; coordinate transformations half_pixel,
  pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, align_corners;
- ``Pad``: modes constant, reflect, edge;
- ``Einsum``: no ellipsis, no diagonal (an index repeated within one operand);
- ``Range`` with floating inputs only when they are initializers;
- shapes static (every input dimension a positive number), unless the engine is built with an
  optimisation profile; our export is static.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

OPERATORS_URL = "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md"

MIN_OPSET = 9
MAX_OPSET = 20
"""TensorRT 10.0 reads the default ONNX domain from opset 9 to opset 20 (inclusive)."""

TOPK_MAX_K = 3840

SUPPORTED_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization
IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization
LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
"""ONNX operators (default domain) TensorRT 10's parser imports (module docstring)."""

UNSUPPORTED_OPS: dict[str, str] = {
    "Inverse": "a com.microsoft contrib op; TensorRT has no matrix inverse (write it in closed form)",
    "Det": "not supported by TensorRT",
    "Unique": "not supported by TensorRT",
    "Compress": "not supported by TensorRT",
    "Hardmax": "not supported by TensorRT",
    "MaxUnpool": "not supported by TensorRT",
    "Multinomial": "not supported by TensorRT",
    "DFT": "not supported by TensorRT's parser (10.0)",
    "STFT": "not supported by TensorRT's parser (10.0)",
    "ConcatFromSequence": "sequence ops are not supported by TensorRT",
    "SequenceAt": "sequence ops are not supported by TensorRT",
    "SequenceConstruct": "sequence ops are not supported by TensorRT",
    "SplitToSequence": "sequence ops are not supported by TensorRT",
    "Optional": "optional ops are not supported by TensorRT",
    "StringNormalizer": "string ops are not supported by TensorRT",
}
"""Operators known to fail, with the reason (reported instead of a bare "not on the list")."""

RESIZE_MODES = frozenset({"nearest", "linear", "cubic"})
RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                     "align_corners"})
PAD_MODES = frozenset({"constant", "reflect", "edge"})
GRID_SAMPLE_MODES = frozenset({"bilinear", "linear", "nearest", "bicubic", "cubic"})


@dataclass(frozen=True)
class OpProblem:
    """One reason TensorRT would reject a node (or the graph: ``node`` empty)."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.op_type} node {self.node!r}" if self.node else "graph"
        return f"{where}: {self.reason}"


def tensorrt_problems(model: "onnx.ModelProto") -> list[OpProblem]:
    """Everything in ``model`` that TensorRT 10's ONNX parser would reject (module docstring);
    empty when the graph passes. Shapes are inferred here (ranks for GridSample / Conv)."""
    import onnx
    from onnx import numpy_helper

    problems: list[OpProblem] = []
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    if version is None or not MIN_OPSET <= version <= MAX_OPSET:
        problems.append(OpProblem("", "", f"default-domain opset {version} outside TensorRT 10's {MIN_OPSET}..{MAX_OPSET}"))
    foreign = sorted(d for d in opsets if d not in ("ai.onnx", ""))
    if foreign:
        problems.append(OpProblem("", "", f"imports non-ONNX domains {foreign}"))

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    initializers = {t.name: t for t in g.initializer}
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    init_names = set(initializers)
    ranks: dict[str, int] = {}
    for v in list(g.value_info) + list(g.input) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    for t in g.initializer:
        ranks[t.name] = len(t.dims)

    for v in g.input:
        if v.name in init_names:
            continue
        dims = v.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            problems.append(OpProblem("", "", f"input {v.name!r} has a dynamic shape "
                                              f"({[d.dim_param or d.dim_value for d in dims]}); export static shapes"))

    def is_const(name: str) -> bool:
        return name in init_names or name in constants

    def const_value(name: str):
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        if name in constants:
            for a in constants[name].attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def attr(node, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                v = onnx.helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    for node in g.node:
        op, name = node.op_type, node.name or (node.output[0] if node.output else "?")

        def bad(reason: str) -> None:
            problems.append(OpProblem(name, op, reason))

        if node.domain not in ("", "ai.onnx"):
            bad(f"domain {node.domain!r} is not ONNX's (TensorRT imports only standard ONNX operators)")
            continue
        if op in UNSUPPORTED_OPS:
            bad(UNSUPPORTED_OPS[op])
            continue
        if op not in SUPPORTED_OPS:
            bad(f"not in TensorRT 10's supported operators ({OPERATORS_URL})")
            continue
        if op == "GridSample":
            for i in node.input[:2]:
                if ranks.get(i) != 4:
                    bad(f"input {i!r} has rank {ranks.get(i)}: TensorRT's GridSample is 4-D only")
            if attr(node, "mode", "bilinear") not in GRID_SAMPLE_MODES:
                bad(f"mode {attr(node, 'mode')!r} unsupported")
        elif op in ("Conv", "ConvTranspose"):
            r = ranks.get(node.input[1])
            if r not in (4, 5):
                bad(f"weights of rank {r}: TensorRT convolutions are 2-D or 3-D only")
            if not is_const(node.input[1]):
                bad("weights are computed in the graph, not an initializer")
        elif op in ("AveragePool", "MaxPool", "LpPool"):
            if ranks.get(node.input[0]) not in (4, 5):
                bad(f"input of rank {ranks.get(node.input[0])}: 2-D or 3-D pooling only")
            if op == "MaxPool" and len([o for o in node.output if o]) > 1:
                bad("the Indices output is unsupported")
        elif op == "TopK":
            k = const_value(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                bad("K is computed in the graph: it must be an initializer")
            elif int(k.reshape(-1)[0]) > TOPK_MAX_K:
                bad(f"K = {int(k.reshape(-1)[0])} exceeds TensorRT's {TOPK_MAX_K}")
        elif op in ("Slice", "Squeeze", "Unsqueeze", "Pad", "CumSum"):
            index = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 1, "CumSum": 1}[op]
            what = {"Slice": "axes", "Squeeze": "axes", "Unsqueeze": "axes", "Pad": "pads", "CumSum": "axis"}[op]
            if len(node.input) > index and node.input[index] and not is_const(node.input[index]):
                bad(f"{what} are computed in the graph: they must be an initializer")
            if op == "Pad" and attr(node, "mode", "constant") not in PAD_MODES:
                bad(f"pad mode {attr(node, 'mode')!r} unsupported")
        elif op == "Resize":
            if attr(node, "mode", "nearest") not in RESIZE_MODES:
                bad(f"resize mode {attr(node, 'mode')!r} unsupported")
            ctm = attr(node, "coordinate_transformation_mode", "half_pixel")
            if ctm not in RESIZE_COORDINATE_MODES:
                bad(f"coordinate transformation {ctm!r} unsupported")
        elif op == "Einsum":
            eq = str(attr(node, "equation", ""))
            if "..." in eq:
                bad("Einsum with an ellipsis is unsupported")
            if any(len(set(term.strip())) != len(term.strip()) for term in eq.split("->")[0].split(",")):
                bad("Einsum diagonals (an index repeated within one operand) are unsupported")
        elif op == "Range":
            floating = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
            if any(not is_const(i) and _elem_type(g, i) in floating for i in node.input):
                bad("floating Range inputs must be initializers")
    return problems


def _elem_type(graph, name: str) -> int | None:
    for v in list(graph.value_info) + list(graph.input) + list(graph.output):
        if v.name == name:
            return v.type.tensor_type.elem_type
    return None


def check_tensorrt_compatible(model: "onnx.ModelProto", what: str = "the ONNX graph") -> None:
    """Raise ``ValueError`` listing (up to five of) the problems ``tensorrt_problems`` finds."""
    problems = tensorrt_problems(model)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{what} would not build with TensorRT 10: "
                         + "; ".join(str(p) for p in problems[:5]) + more)
