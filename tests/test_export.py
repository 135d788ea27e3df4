"""Export and speed (issue 5), on the CPU with the tiny config: the exported per-frame graph is
valid, static and TensorRT-compatible; ONNX Runtime matches PyTorch; the TensorRT runtime fails
with one line where TensorRT is absent; cache keys; the neural render benchmark's report.

The rig is synthetic (no avatar bake) except where the engine or the CLI bakes one."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings

import numpy as np
import pytest
import torch

from engines.export import (DEFAULT_OPSET, RigTopology, all_input_names, cached_frame_onnx, example_inputs,
                            export_frame_onnx, fold_constants, frame_module, onnx_cache_key, read_export_metadata)
from engines.tensorrt_ops import SUPPORTED_OPS, tensorrt_problems
from engines.tensorrt_runtime import TensorRTUnavailableError, engine_cache_key
from puppet.errors import AssetError
from puppet.generator.config import GeneratorConfig
from puppet.generator.identity import IDENTITY_DIM
from puppet.generator.model import Generator
from puppet.generator.rig import RIG_BONES, Rig, RigTensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = GeneratorConfig.tiny()
SIZE = 32
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def tiny_rig(seed: int = 0) -> Rig:
    """A head ball on the head bone over a torso block: enough geometry for the render to trace."""
    rng = np.random.default_rng(seed)
    k = len(RIG_BONES)
    heads = np.zeros((k, 3), np.float32)
    heads[:, 1] = np.linspace(-0.25, 0.0, k)
    parents = np.array([-1] + list(range(k - 1)))
    n = TINY.skin_vertices
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    on_head = np.arange(n) < n // 2
    rest = np.where(on_head[:, None], [0, 0.06, 0] + 0.08 * d, [0, -0.2, 0] + 0.12 * d).astype(np.float32)
    weights = np.zeros((n, k), np.float32)
    weights[on_head, 4] = 1.0
    weights[~on_head, 0] = 1.0
    f = TINY.face_vertices
    return Rig(name=f"tiny{seed}", origin=np.zeros(3), unit=1.1, skin_rest=rest, skin_weights=weights,
               skin_vertex_ids=np.arange(n), bone_names=RIG_BONES, heads=heads, parents=parents,
               driven=np.arange(1, k), head_bone=4, corrections=np.tile(np.eye(3), (6, 1, 1)), shoulder_share=0.5,
               face_rest=(0.05 * rng.normal(size=(f, 3))).astype(np.float32),
               face_basis=(0.003 * rng.normal(size=(f, 52, 3))).astype(np.float32), face_vertex_ids=np.arange(f),
               portrait_target=np.zeros(3, np.float32), portrait_pivot=np.array([0, -0.01, -0.02], np.float32),
               portrait_distance=0.199 / math.tan(math.radians(7.0)), fov_deg=14.0)


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    return Generator(TINY).eval()


@pytest.fixture(scope="module")
def rig() -> RigTensors:
    return RigTensors.stack([tiny_rig(0)])


@pytest.fixture(scope="module")
def exported(generator, rig, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "frame.onnx"
    return export_frame_onnx(generator, path, SIZE, rig)


@pytest.fixture(scope="module")
def feeds(generator, rig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    z = torch.rand(1, IDENTITY_DIM, generator=g) * 2 - 1
    with torch.no_grad():
        baked = generator.bake(z, torch.randn(1, TINY.noise_dim, generator=g))
    out = example_inputs(generator, rig, baked.hr_maps, z)
    out["expression"] = torch.rand(1, 52, generator=g) * 0.5
    out["pose"] = torch.randn(1, 6, 3, generator=g) * 0.15
    return out


# ----------------------------------------------------------------------------- the exported graph

def test_export_is_valid_static_opset17_and_tensorrt_compatible(exported):
    import onnx

    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] >= 17
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") and d.dim_value > 0 for d in dims), v.name
    assert {n.op_type for n in model.graph.node} <= SUPPORTED_OPS
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert tensorrt_problems(model) == []
    # Identity as inputs: the HR maps and the rig are fed, not baked into the file.
    names = [i.name for i in model.graph.input]
    assert names[:2] == ["hr_maps", "z_id"] and {"skin_rest", "skin_weights", "pose", "cam2world"} <= set(names)
    assert [o.name for o in model.graph.output] == ["rgb", "alpha"]
    meta = read_export_metadata(exported.path)
    assert meta["size"] == str(SIZE) and int(meta["opset"]) == DEFAULT_OPSET
    assert json.loads(meta["topology"])["head_bone"] == 4


def test_grid_sample_is_4d(exported):
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported.path)))
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    samples = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert samples and all(ranks[n.input[0]] == 4 and ranks[n.input[1]] == 4 for n in samples)


def test_folding_makes_what_tensorrt_needs_initializers(generator, rig):
    """The raw TorchScript export computes conv weights and TopK's K in the graph (TensorRT
    rejects that); after ``fold_constants`` they are initializers and the graph is unchanged."""
    import io

    import onnx
    import onnxruntime as ort

    module = frame_module(generator, SIZE, rig)
    args = tuple(example_inputs(generator, rig)[n] for n in all_input_names())
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, opset_version=17, dynamo=False, input_names=list(all_input_names()),
                          output_names=["rgb", "alpha"])
    raw = onnx.load_from_string(buf.getvalue())
    reasons = " ".join(str(p) for p in tensorrt_problems(raw))
    assert "K is computed" in reasons and "weights are computed" in reasons
    folded = fold_constants(onnx.load_from_string(buf.getvalue()))
    assert tensorrt_problems(folded) == [] and len(folded.graph.node) < len(raw.graph.node)
    feeds = {i.name: args[list(all_input_names()).index(i.name)].numpy() for i in raw.graph.input}
    a = ort.InferenceSession(raw.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_per_frame_render_has_no_host_syncs_or_host_made_tensors(generator, rig, feeds):
    """What CUDA-graph capture forbids and what stalls the eager frame loop, seen on the CPU:
    no ``.item()``/``bool(tensor)`` (``_local_scalar_dense``), no tensor made from Python data
    (``lift_fresh``: ``torch.tensor(...)`` or indexing with a list, a host-to-device copy on CUDA),
    no data-dependent shapes (``nonzero``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[str] = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(str(func))
            return func(*args, **(kwargs or {}))

    module = frame_module(generator, SIZE, rig)
    with torch.inference_mode(), Record():
        module(*(feeds[n] for n in all_input_names()))
    assert "aten.grid_sampler.default" in seen or any("grid_sampler" in op for op in seen)
    forbidden = {op for op in seen if any(k in op for k in ("_local_scalar_dense", "lift_fresh", "nonzero", "item"))}
    assert not forbidden


def _graph(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    from onnx import helper

    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(g, opset_imports=opsets)


def test_operator_check_rejects_what_tensorrt_rejects():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    vol = _graph([helper.make_node("GridSample", ["x", "g"], ["y"])],
                 [helper.make_tensor_value_info("x", f, [1, 2, 4, 4, 4]),
                  helper.make_tensor_value_info("g", f, [1, 4, 4, 4, 3])],
                 [helper.make_tensor_value_info("y", f, [1, 2, 4, 4, 4])], opset=20)
    assert any("4-D only" in p.reason for p in tensorrt_problems(vol))
    inverse = _graph([helper.make_node("Inverse", ["m"], ["i"], domain="com.microsoft")],
                     [helper.make_tensor_value_info("m", f, [2, 3, 3])],
                     [helper.make_tensor_value_info("i", f, [2, 3, 3])], domains=("com.microsoft",))
    reasons = [str(p) for p in tensorrt_problems(inverse)]
    assert any("com.microsoft" in r for r in reasons)
    topk = _graph([helper.make_node("Shape", ["x"], ["s"]),
                   helper.make_node("Gather", ["s", "one"], ["k"], axis=0),
                   helper.make_node("TopK", ["x", "k"], ["v", "i"])],
                  [helper.make_tensor_value_info("x", f, [2, 5])],
                  [helper.make_tensor_value_info("v", f, [2, 5]), helper.make_tensor_value_info("i", TensorProto.INT64, [2, 5])],
                  [numpy_helper.from_array(np.array([1], np.int64), "one")])
    assert any("K is computed" in p.reason for p in tensorrt_problems(topk))
    assert tensorrt_problems(fold_constants(topk)) == []
    dynamic = _graph([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", f, ["n", 3])],
                     [helper.make_tensor_value_info("y", f, ["n", 3])])
    assert any("dynamic shape" in str(p) for p in tensorrt_problems(dynamic))
    unknown = _graph([helper.make_node("Unique", ["x"], ["y"])], [helper.make_tensor_value_info("x", f, [4])],
                     [helper.make_tensor_value_info("y", f, None)])
    assert any("not supported" in p.reason for p in tensorrt_problems(unknown))
    old = _graph([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", f, [3])],
                 [helper.make_tensor_value_info("y", f, [3])], opset=21)
    assert any("opset 21" in str(p) for p in tensorrt_problems(old))
    assert onnx.checker.check_model(old) is None


# ----------------------------------------------------------------------------- ONNX Runtime parity

def test_onnxruntime_matches_pytorch(generator, rig, exported, feeds):
    from engines.onnx_runtime import OnnxFrameRunner

    module = frame_module(generator, SIZE, rig)
    with torch.no_grad():
        ref_rgb, ref_alpha = module(*(feeds[n] for n in all_input_names()))
    assert 0.1 < float(ref_alpha.mean()) and float(ref_rgb.max()) > 0.05  # a real image, not all empty
    runner = OnnxFrameRunner(exported.path, "cpu", threads=1)
    identity = {n: feeds[n] for n in feeds if n not in ("expression", "pose", "cam2world", "near", "far")}
    frame = {n: feeds[n] for n in ("expression", "pose", "cam2world", "near", "far")}
    rgb, alpha = runner.render("a", identity, frame)
    assert rgb.shape == (1, 3, SIZE, SIZE) and alpha.shape == (1, 1, SIZE, SIZE)
    assert float((rgb - ref_rgb).abs().max()) <= 1e-3 and float((alpha - ref_alpha).abs().max()) <= 1e-3
    # A new frame reuses the identity; a new identity is picked up by its key.
    frame2 = {**frame, "pose": torch.zeros(1, 6, 3)}
    rgb2, _ = runner.render("a", identity, frame2)
    with torch.no_grad():
        ref2, _ = module(*({**feeds, **frame2}[n] for n in all_input_names()))
    assert float((rgb2 - ref2).abs().max()) <= 1e-3
    other = {**identity, "hr_maps": torch.zeros_like(identity["hr_maps"])}
    rgb3, _ = runner.render("b", other, frame2)
    assert float(rgb3.abs().max()) < 1e-6  # empty maps -> nothing drawn
    runner.close()


@pytest.mark.slow
def test_neural_engine_onnx_runtime_matches_torch_and_caches_the_export(generator, tmp_path):
    """Engine level: the same avatar and parameters through runtime torch and runtime onnx give the
    same uint8 frames (within one level); a second engine reuses the cached export."""
    from puppet.avatar import load_avatar
    from puppet.synthetic import random_avatar_performance

    perf = random_avatar_performance(seconds=1.0, neutral_s=0.0)
    avatar = load_avatar("ada")
    rig_np = tiny_rig(0)
    images = {}
    for runtime in ("torch", "onnx"):
        with _engine(generator, runtime, tmp_path) as e:
            baked = e.bake(avatar, rig=rig_np)
            images[runtime] = np.stack([e.render(baked, perf.params(i)).image for i in range(3)])
            assert e.info().backend == ("onnxruntime" if runtime == "onnx" else "torch")
    diff = np.abs(images["torch"].astype(int) - images["onnx"].astype(int))
    assert diff.max() <= 1 and images["torch"][..., 3].max() == 255
    cached = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    with _engine(generator, "onnx", tmp_path) as e:
        e.render(e.bake(avatar, rig=rig_np), perf.params(0))
    assert cached[0].stat().st_mtime_ns == stamp and len(list((tmp_path / "onnx").glob("*.onnx"))) == 1


def _engine(generator, runtime, cache, **options):
    from engines.neural import NeuralEngine, NeuralEngineOptions

    options = {"size": SIZE, **options}
    options = {"threads": 1, **options} if runtime == "onnx" else options
    return NeuralEngine(NeuralEngineOptions(checkpoint="(in memory)", device="cpu", runtime=runtime,
                                            export_cache=cache, **options), generator=generator)


def test_runtime_options_are_checked():
    from engines.neural import NeuralEngineOptions

    for bad, words in (({"runtime": "onnx", "cuda_graphs": True}, "options of the torch runtime"),
                       ({"compile": "fastest"}, "compile must be one of"),
                       ({"cuda_graphs": True, "device": "cpu"}, "needs a CUDA device"),
                       ({"runtime": "tensorrt", "precision": "bfloat16", "device": "cuda"}, "float32 or float16"),
                       ({"runtime": "onnx", "precision": "float16", "device": "cuda"}, "onnx runtime runs float32"),
                       ({"threads": 0}, "threads")):
        with pytest.raises(ValueError, match=words):
            NeuralEngineOptions(checkpoint="x", **bad)


def test_a_given_onnx_must_fit_the_engine(generator, exported, tmp_path):
    with pytest.raises(AssetError, match="renders 32x32"):
        _engine(generator, "onnx", tmp_path, onnx=exported.path, size=48)
    torch.manual_seed(5)
    other = Generator(TINY).eval()
    with pytest.raises(AssetError, match="other generator weights"):
        _engine(other, "onnx", tmp_path, onnx=exported.path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(AssetError) as info:
        _engine(generator, "onnx", tmp_path, onnx=tmp_path / "junk.onnx")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- TensorRT

@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the missing-TensorRT error cannot happen")
def test_tensorrt_runtime_fails_with_one_line_when_absent(generator, tmp_path):
    with pytest.raises(TensorRTUnavailableError) as info:
        _engine(generator, "tensorrt", tmp_path)
    message = str(info.value)
    assert "TensorRT is not installed" in message and "\n" not in message
    assert isinstance(info.value, AssetError) and info.value.exit_code == 2


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_cli_tensorrt_exits_2_with_one_line(tmp_path, capsys):
    from puppet.cli import main
    from puppet.generator.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "g.safetensors", Generator(TINY))
    assert main(["export", "--checkpoint", str(ckpt), "--format", "tensorrt", "-o", str(tmp_path / "g.engine")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("puppet: error: TensorRT is not installed") and "\n" not in err
    assert not (tmp_path / "g.engine").exists()
    assert main(["bench", "render", "--engine", "neural", "--backend", "tensorrt", "--checkpoint", str(ckpt),
                 "--size", "32", "--frames", "1"]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


def test_engine_cache_key_is_a_pure_function_of_its_four_inputs():
    onnx_hash = "ab" * 32
    key = engine_cache_key(onnx_hash, "NVIDIA H100 80GB HBM3", "10.3.0", "float16")
    assert key == engine_cache_key(onnx_hash, "NVIDIA H100 80GB HBM3", "10.3.0", "float16")
    assert key.startswith("nvidia-h100-80gb-hbm3_trt10.3.0_fp16_")
    variants = [engine_cache_key("cd" * 32, "NVIDIA H100 80GB HBM3", "10.3.0", "float16"),
                engine_cache_key(onnx_hash, "NVIDIA H200", "10.3.0", "float16"),
                engine_cache_key(onnx_hash, "NVIDIA H100 80GB HBM3", "10.4.0", "float16"),
                engine_cache_key(onnx_hash, "NVIDIA H100 80GB HBM3", "10.3.0", "float32")]
    assert len({key, *variants}) == 5
    with pytest.raises(ValueError, match="precision"):
        engine_cache_key(onnx_hash, "gpu", "10", "bfloat16")
    with pytest.raises(ValueError, match="sha256"):
        engine_cache_key("not-a-hash", "gpu", "10", "float16")


def test_onnx_cache_key_changes_with_everything_the_graph_depends_on():
    topo = RigTopology((-1, 0, 1), (1, 2), 2)
    base = onnx_cache_key("w" * 64, 512, 17, topo, "s")
    assert base == onnx_cache_key("w" * 64, 512, 17, topo, "s")
    others = {onnx_cache_key("x" * 64, 512, 17, topo, "s"), onnx_cache_key("w" * 64, 256, 17, topo, "s"),
              onnx_cache_key("w" * 64, 512, 18, topo, "s"), onnx_cache_key("w" * 64, 512, 17, RigTopology((-1, 0, 0), (1, 2), 2), "s"),
              onnx_cache_key("w" * 64, 512, 17, topo, "t")}
    assert base not in others and len(others) == 5


def test_tensorrt_builds_from_a_file_that_passes_the_operator_check(generator, rig, tmp_path):
    """What the TensorRT runtime would hand the parser: the cached export, checked here."""
    import onnx

    path = cached_frame_onnx(generator, SIZE, rig, tmp_path)
    assert tensorrt_problems(onnx.load(str(path))) == []
    assert cached_frame_onnx(generator, SIZE, rig, tmp_path) == path


# ----------------------------------------------------------------------------- CLI and bench

@pytest.mark.slow
def test_cli_export_onnx(tmp_path, capsys):
    import onnx

    from puppet.cli import main
    from puppet.generator.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "g.safetensors", Generator(TINY))
    out = tmp_path / "g.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--size", "32", "-o", str(out)]) == 0
    assert "TensorRT operator check passed" in capsys.readouterr().out
    assert tensorrt_problems(onnx.load(str(out))) == []
    assert main(["export", "--checkpoint", str(ckpt), "--fp16", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "--fp16 is for --format tensorrt" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_bench_render_neural_reports_json(backend, generator, tmp_path, capsys):
    from puppet.cli import main
    from puppet.generator.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "g.safetensors", generator)
    args = ["bench", "render", "--engine", "neural", "--backend", backend, "--checkpoint", str(ckpt), "--size", "32",
            "--frames", "3", "--warmup", "1", "--device", "cpu", "--json", str(tmp_path / "r.json")]
    if backend == "onnx":
        assert main(["export", "--checkpoint", str(ckpt), "--size", "32", "-o", str(tmp_path / "g.onnx")]) == 0
        args += ["--onnx", str(tmp_path / "g.onnx"), "--threads", "1"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "\ntotal " in table and "fps" in table
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["engine"] == "neural" and report["size"] == 32 and report["frames"] == 3
    assert report["backend"] == backend and report["checkpoint"] == str(ckpt) and report["note"] == ""
    assert report["engine_info"]["backend"] == {"torch": "torch", "onnx": "onnxruntime"}[backend]
    total = report["stages_ms"]["total"]
    assert 0 < total["p50"] <= total["p95"] and report["fps"] > 0
    assert report["peak_gpu_memory_mb"] is None and report["machine"]["gpu"] is None
    assert "onnxruntime" in report["machine"]["versions"] and "torch" in report["machine"]["versions"]


@pytest.mark.slow
def test_bench_pipeline_reports_fps_and_latency(face_video, tmp_path, capsys):
    from puppet.cli import main

    out = tmp_path / "p.json"
    assert main(["bench", "pipeline", str(face_video), "--frames", "6", "--size", "64", "--mode", "face",
                 "--json", str(out)]) == 0
    assert "capture-to-sink latency" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["frames"] == 6 and report["engine"] == "mesh" and report["live"] is False
    assert set(report["stages_ms"]) == {"track", "retarget", "render"} and report["fps"] > 0
    lat = report["latency_ms"]
    # Capture to sink covers at least the three stages of one frame.
    stages = sum(v["p50"] for v in report["stages_ms"].values())
    assert 0 < lat["p50"] <= lat["p95"] and lat["p95"] >= 0.5 * stages
    assert main(["bench", "pipeline", str(face_video), "--backend", "onnx"]) == 2
