"""The neural engine's runtimes side by side in one run (docs/performance.md): PyTorch, ONNX
Runtime, TensorRT, CUDA graphs, torch.compile, float32 / float16.

All engines wrap the SAME generator (random init, seed 0: speed does not depend on the weights)
and render the same moving performance of the same avatar; frames alternate between the
variants so that all see the same machine load. Per size: warm-up frames, then per-frame ms (p50,
p95, mean) of ``engine.render`` (parameters in, uint8 RGBA out), and the largest uint8 difference
of each variant's frames from the first variant's (the reference: put fp32 torch first).
Optionally the top ops of torch.profiler over a few frames of the first torch variant, and ONNX
Runtime's own per-op profile.

    # CPU (this machine):
    python scripts/bench_neural_runtimes.py --config cpu --sizes 128 512 --frames 5 --threads 1 \\
        --profile --json docs/figures/neural_runtimes_cpu.json
    # GPU:
    python scripts/bench_neural_runtimes.py --config published --device cuda --sizes 512 --frames 200 \\
        --warmup 20 --variants torch torch:float16 torch:graphs torch:float16:graphs \\
        torch:compile=max-autotune tensorrt tensorrt:float16 --json gpu.json

A variant is ``runtime[:float16|:bfloat16][:graphs][:compile=MODE]`` (runtime torch, onnx or
tensorrt; options as ``NeuralEngineOptions``).

``--config``: tiny | published | cpu (published networks, maps and levels; 64 x 64 rays with
32 -> 128 samples: 1/8 of the published per-frame point count) | a JSON config file.

The identity bake (mapping, map pass and super-resolution: ~1.6 TMAC at published sizes, many
minutes on a small CPU) is replaced by random HR maps of the right shape unless ``--real-bake``:
the per-frame graph does the same work whatever the maps hold.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.neural import NeuralEngine, NeuralEngineOptions  # noqa: E402
from puppet.avatar import load_avatar  # noqa: E402
from puppet.bench import machine_info  # noqa: E402
from puppet.generator.config import GeneratorConfig  # noqa: E402
from puppet.generator.model import Generator  # noqa: E402
from puppet.pipeline import Percentiles  # noqa: E402
from puppet.synthetic import random_avatar_performance  # noqa: E402


def config_named(name: str) -> GeneratorConfig:
    if name == "tiny":
        return GeneratorConfig.tiny()
    if name == "published":
        return GeneratorConfig.published()
    if name == "cpu":
        return dataclasses.replace(GeneratorConfig.published(), ray_resolution=64, coarse_samples=32, fine_samples=128)
    return GeneratorConfig.from_dict(json.loads(Path(name).read_text()))


def torch_top_ops(engine, baked, perf, frames: int, top: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(frames):
            engine.render(baked, perf.params(i))
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [{"op": e.key, "self_ms_per_frame": e.self_cpu_time_total / 1e3 / frames,
             "share": e.self_cpu_time_total / total, "calls_per_frame": e.count / frames} for e in rows[:top]]


def ort_top_ops(onnx_path: Path, engine, baked, perf, frames: int, threads: int, top: int = 12) -> list[dict]:
    """ONNX Runtime's own profiler over ``frames`` frames, summed by operator type."""
    import onnxruntime as ort

    from engines.runtimes import frame_feeds, identity_feeds

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    ident = {k: v.numpy() for k, v in identity_feeds(baked).items() if k in names}
    for i in range(frames + 1):
        p = perf.params(i)
        cam = engine.camera(baked, p.camera)
        fr = frame_feeds(torch.from_numpy(p.expression)[None], torch.from_numpy(p.pose)[None], cam)
        session.run(None, {**ident, **{k: v.numpy() for k, v in fr.items() if k in names}})
    trace = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"]
    total = sum(per_op.values())
    rows = sorted(per_op.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return [{"op": k, "ms_per_frame": v / 1e3 / (frames + 1), "share": v / total} for k, v in rows]


def parse_variant(text: str) -> dict:
    """``torch:float16:graphs`` -> NeuralEngineOptions fields."""
    runtime, *parts = text.split(":")
    out: dict = {"runtime": runtime}
    for part in parts:
        if part in ("float16", "bfloat16", "float32"):
            out["precision"] = part
        elif part == "graphs":
            out["cuda_graphs"] = True
        elif part.startswith("compile="):
            out["compile"] = part.split("=", 1)[1]
        else:
            raise SystemExit(f"unknown variant part {part!r} in {text!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (the same for both)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=["torch", "onnx"], help="first = reference (module docstring)")
    ap.add_argument("--avatar", default="ada")
    ap.add_argument("--profile", action="store_true", help="also torch.profiler / ORT profiler top ops")
    ap.add_argument("--real-bake", action="store_true", help="bake the identity for real (slow at published sizes)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/puppet-bench-runtimes"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    config = config_named(args.config)
    torch.manual_seed(0)
    generator = Generator(config).eval()
    if not args.real_bake:
        from puppet.generator.model import BakedIdentity

        def random_maps(styles):
            b, c = styles.z_id.shape[0], config
            gen = torch.Generator().manual_seed(1)
            hr = torch.sigmoid(torch.randn(b, c.levels, 4, c.hr_map_resolution, c.hr_map_resolution, generator=gen))
            lr = torch.zeros(b, c.levels, c.map_channels, c.map_resolution, c.map_resolution)
            return BakedIdentity(z_id=styles.z_id, lr_maps=lr, hr_maps=hr)

        generator.bake_styles = random_maps  # type: ignore[method-assign]
    avatar = load_avatar(args.avatar)
    perf = random_avatar_performance(seconds=(args.frames + args.warmup) / 30.0 + 1.0, neutral_s=0.0)
    result = {"config": args.config, "real_bake": args.real_bake, "device": args.device, "variants": args.variants, "config_dict": config.to_dict(), "threads": args.threads,
              "frames": args.frames, "warmup": args.warmup, "avatar": args.avatar, "machine": machine_info(),
              "date": time.strftime("%Y-%m-%d"), "sizes": {}}
    for size in args.sizes:
        engines = {}
        for variant in args.variants:
            extra = parse_variant(variant)
            if extra["runtime"] == "onnx":
                extra["threads"] = args.threads
            engines[variant] = NeuralEngine(NeuralEngineOptions(checkpoint="(random init, seed 0)", size=size,
                                                                device=args.device, export_cache=args.cache, **extra),
                                            generator=generator)
        bakes, bake_s = {}, {}
        for runtime, e in engines.items():
            t0 = time.perf_counter()
            bakes[runtime] = e.bake(avatar)
            bake_s[runtime] = time.perf_counter() - t0
        samples: dict[str, list[float]] = {r: [] for r in engines}
        first_ms: dict[str, float] = {}
        diffs: dict[str, int] = {r: 0 for r in engines}
        ref = args.variants[0]
        for i in range(args.frames + args.warmup):
            images = {}
            for runtime, e in engines.items():  # alternate: both runtimes see the same load
                t0 = time.perf_counter()
                images[runtime] = e.render(bakes[runtime], perf.params(i)).image
                ms = 1e3 * (time.perf_counter() - t0)
                if i == 0:
                    first_ms[runtime] = ms  # the onnx one includes the export (first use)
                if i >= args.warmup:
                    samples[runtime].append(ms)
            for r in engines:
                diffs[r] = max(diffs[r], int(np.abs(images[r].astype(int) - images[ref].astype(int)).max()))
            print(f"{size}px frame {i}: " + ", ".join(f"{r} {samples[r][-1] if samples[r] else first_ms[r]:.0f} ms"
                                                     for r in engines), flush=True)
        entry = {"ms": {r: dataclasses.asdict(Percentiles.of(v)) for r, v in samples.items()},
                 "samples_ms": samples, "first_frame_ms": first_ms, "bake_s": bake_s,
                 "max_uint8_difference_from_" + ref: diffs}
        if args.profile:
            torch_v = next((v for v in engines if v.split(":")[0] == "torch"), None)
            onnx_v = next((v for v in engines if v.split(":")[0] == "onnx"), None)
            if torch_v is not None:
                entry["torch_top_ops"] = torch_top_ops(engines[torch_v], bakes[torch_v], perf, 2)
            if onnx_v is not None:
                onnx_path = engines[onnx_v]._frames._onnx_for(bakes[onnx_v])
                entry["ort_top_ops"] = ort_top_ops(onnx_path, engines[onnx_v], bakes[onnx_v], perf, 2, args.threads)
        for e in engines.values():
            e.close()
        result["sizes"][str(size)] = entry
        m = entry["ms"]
        print(f"{size}px: " + " | ".join(f"{r} p50 {m[r]['p50']:.1f} p95 {m[r]['p95']:.1f} ms (max diff {diffs[r]})"
                                         for r in engines), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
