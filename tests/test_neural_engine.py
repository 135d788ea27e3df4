"""The neural engine (``engines.neural``), ``--engine neural`` on the command line and ``puppet eval``.

The generator is the tiny config, freshly initialised and saved as a checkpoint: these tests check
the engine's plumbing (bake, cameras, compositing, determinism, errors), not image quality. The
rig of "ada" is baked for real (``rig_for_avatar``, cached in ``$PUPPET_CACHE_DIR``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import engines
from engines.mesh import composite_over
from engines.neural import NeuralBaked, NeuralEngine, NeuralEngineOptions, name_noise, to_rgba8
from puppet.avatar import load_avatar
from puppet.contract import Blendshape, SmplJoint, pose_row
from puppet.errors import AssetError
from puppet.evaluate import (EXPRESSION_GROUPS, _Reading, colour_error, control_metrics, gaussian_window,
                             identity_spread, mask_iou, psnr, ssim)
from puppet.generator.checkpoint import save_checkpoint
from puppet.generator.config import GeneratorConfig
from puppet.generator.model import Generator
from puppet.generator.rig import portrait_cam2world
from puppet.params import DriverParams, ParamSequence, head_rotation, make_header, save_params
from puppet.rotations import axis_angle_to_matrix
from test_cli import assert_one_error_line, run_main

SIZE = 24  # the ray grid is min(ray_resolution, size): small sizes render fast


def params(camera=(0.0, 0.0), expression: dict[str, float] | None = None, head=(0.0, 0.0, 0.0), t: float = 0.0):
    e = np.zeros(52, np.float32)
    for name, v in (expression or {}).items():
        e[Blendshape[name]] = v
    pose = np.zeros((6, 3), np.float32)
    pose[pose_row(SmplJoint.HEAD)] = head
    return DriverParams(t=t, expression=e, pose=pose, camera=np.asarray(camera, np.float32))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", Generator(GeneratorConfig.tiny()),
                           {"note": "freshly initialised"})


@pytest.fixture(scope="module")
def engine(checkpoint: Path):
    with engines.create("neural", checkpoint=checkpoint, size=SIZE, device="cpu") as e:
        yield e


@pytest.fixture(scope="module")
def ada(engine: NeuralEngine) -> NeuralBaked:
    return engine.bake(load_avatar("ada"))


# ------------------------------------------------------------------------------------- engine

def test_options_are_checked(checkpoint: Path) -> None:
    with pytest.raises(TypeError):
        NeuralEngineOptions()  # the checkpoint is required
    for bad in ({"precision": "float16", "device": "cpu"}, {"runtime": "tensorflow"}, {"size": 8},
                {"device": "tpu"}, {"background": (2.0, 0.0, 0.0)}, {"noise": "random"}, {"path": "fast"}):
        with pytest.raises(ValueError):
            NeuralEngineOptions(checkpoint=checkpoint, **bad)


def test_bake_and_render_give_rgba_frames(engine: NeuralEngine, ada: NeuralBaked) -> None:
    frame = engine.render(ada, params(t=1.25))
    assert frame.image.shape == (SIZE, SIZE, 4) and frame.image.dtype == np.uint8
    assert frame.t == 1.25
    assert frame.alpha.max() > 0  # the untrained manifolds cover the middle of the frame
    frames = engine.render(ada, [params(t=0.0), params(t=0.1)])
    assert isinstance(frames, tuple) and len(frames) == 2
    info = engine.info()
    assert info.backend == "torch" and info.device.startswith("cpu") and info.precision == "float32"
    assert info.resolution == (SIZE, SIZE)
    assert ada.identity.hr_maps.shape[0] == 1 and engine.path == "baked"


def test_render_is_deterministic_for_an_identity(engine: NeuralEngine, ada: NeuralBaked, checkpoint: Path) -> None:
    p = params(camera=(0.2, -0.1), expression={"jawOpen": 0.5})
    first = engine.render(ada, p).image
    assert np.array_equal(first, engine.render(ada, p).image)
    assert np.array_equal(first, engine.render(engine.bake(load_avatar("ada")), p).image)
    with engines.create("neural", checkpoint=checkpoint, size=SIZE, device="cpu") as again:
        assert np.array_equal(first, again.render(again.bake(load_avatar("ada")), p).image)


def test_the_camera_is_the_mesh_engines_orbit_in_the_generator_frame(engine: NeuralEngine, ada: NeuralBaked) -> None:
    for yaw, pitch in ((0.0, 0.0), (0.3, -0.2), (-0.5, 0.25)):
        cam = engine.camera(ada, np.array([yaw, pitch]))
        np.testing.assert_allclose(cam.cam2world[0].numpy(), portrait_cam2world(ada.rig, yaw, pitch), atol=1e-5)
        assert cam.fov_deg == pytest.approx(ada.rig.fov_deg)
        d = ada.rig.portrait_distance
        half = engine.config.ray_half_depth
        np.testing.assert_allclose([cam.near.item(), cam.far.item()], [d - half, d + half], rtol=1e-6)


def test_render_responds_to_the_parameters(engine: NeuralEngine, ada: NeuralBaked) -> None:
    rest = engine.render(ada, params()).image
    assert mad(rest, engine.render(ada, params(camera=(0.5, 0.0))).image) > 1.0
    assert mad(rest, engine.render(ada, params(camera=(0.0, 0.3))).image) > 1.0
    assert mad(rest, engine.render(ada, params(head=(0.0, 0.6, 0.0))).image) > 0.1


def test_identities_and_noise_change_the_image(engine: NeuralEngine, ada: NeuralBaked, checkpoint: Path) -> None:
    p = params()
    other = engine.bake(load_avatar("farouk"), rig=ada.rig)  # same rig: only the identity code differs
    assert not torch.equal(other.z_id, ada.z_id)
    assert mad(engine.render(ada, p).image, engine.render(other, p).image) > 0.5
    with engines.create("neural", checkpoint=checkpoint, size=SIZE, device="cpu", noise="name") as named:
        baked = named.bake(load_avatar("ada"), rig=ada.rig)
        np.testing.assert_array_equal(baked.noise[0].numpy(), name_noise("ada", engine.config.noise_dim))
        assert mad(engine.render(ada, p).image, named.render(baked, p).image) > 0.1


def test_compositing_is_the_mesh_engines_formula() -> None:
    rng = np.random.default_rng(0)
    alpha = rng.uniform(0, 1, (1, 9, 7)).astype(np.float32)
    alpha[:, 0, :] = 0.0
    alpha[:, 1, :] = 1.0
    rgb = rng.uniform(0, 1, (3, 9, 7)).astype(np.float32) * alpha
    for bg in (np.array([87, 102, 120], np.uint8), rng.integers(0, 256, (9, 7, 3)).astype(np.uint8)):
        out = to_rgba8(torch.from_numpy(rgb), torch.from_numpy(alpha), torch.from_numpy(bg.astype(np.int32))).numpy()
        a = np.round(alpha[0] * 255).astype(np.uint8)
        premultiplied = np.concatenate([np.minimum(np.round(rgb.transpose(1, 2, 0) * 255), a[..., None]),
                                        a[..., None]], axis=-1).astype(np.uint8)
        expected = composite_over(premultiplied, np.broadcast_to(bg, (9, 7, 3)))
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(out[0, :, :3], np.broadcast_to(bg, (9, 7, 3))[0])  # no coverage: background


def test_an_image_background_of_one_colour_equals_that_colour(checkpoint: Path, ada: NeuralBaked,
                                                              engine: NeuralEngine, tmp_path: Path) -> None:
    from PIL import Image

    from engines.neural import DEFAULT_BACKGROUND

    colour = np.round(np.array(DEFAULT_BACKGROUND[:3]) * 255).astype(np.uint8)  # the module engine's background
    path = tmp_path / "bg.png"
    Image.fromarray(np.broadcast_to(colour, (20, 30, 3)).copy()).save(path)
    p = params(camera=(0.1, 0.0))
    with engines.create("neural", checkpoint=checkpoint, size=SIZE, device="cpu", background=path) as e:
        image = e.render(e.bake(load_avatar("ada"), rig=ada.rig), p).image
    np.testing.assert_array_equal(image, engine.render(ada, p).image)


def test_stage_one_checkpoints_render_directly(tmp_path: Path, ada: NeuralBaked, engine: NeuralEngine) -> None:
    torch.manual_seed(0)  # the weights of the ``checkpoint`` fixture, saved as a stage-1 generator
    path = save_checkpoint(tmp_path / "stage1.safetensors", Generator(GeneratorConfig.tiny()), {"stage": 1})
    with engines.create("neural", checkpoint=path, size=SIZE, device="cpu") as e:
        assert e.path == "direct"
        baked = e.bake(load_avatar("ada"), rig=ada.rig)
        assert baked.identity is None  # no maps baked on the direct path
        direct = e.render(baked, params()).image
    assert direct.shape == (SIZE, SIZE, 4)
    assert mad(direct, engine.render(ada, params()).image) > 0.5  # the radiance net, not the (random) SR maps


def test_missing_or_foreign_checkpoints_are_asset_errors(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    for path in (tmp_path / "missing.safetensors", foreign, text):
        with pytest.raises(AssetError) as info:
            engines.create("neural", checkpoint=path, device="cpu")
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------- command line

def test_cli_neural_engine_errors_are_one_line(checkpoint: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out.mp4")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    cases = [([], "needs --checkpoint"), (["--checkpoint", str(tmp_path / "none.safetensors")], "does not exist"),
             (["--checkpoint", str(text)], "not a puppet generator checkpoint")]
    for extra, message in cases:
        assert_one_error_line(run_main(["render", str(tmp_path / "p.npz"), "-o", out, "--engine", "neural", *extra]),
                              message)
    assert_one_error_line(run_main(["render", str(tmp_path / "p.npz"), "-o", out, "--checkpoint", str(checkpoint)]),
                          "--checkpoint is for --engine neural")


def test_render_params_with_the_neural_engine(checkpoint: Path, tmp_path: Path, ada: NeuralBaked) -> None:
    frames = [params(camera=(0.1 * i, 0.0), expression={"jawOpen": 0.3 * i}, t=i / 25) for i in range(3)]
    path = save_params(tmp_path / "p.npz", ParamSequence.from_frames(frames, make_header(25.0, "test")))
    out = tmp_path / "neural.mp4"
    run = run_main(["render", str(path), "-o", str(out), "--engine", "neural", "--checkpoint", str(checkpoint),
                    "--size", "64", "--no-calibrate", "--no-progress"])
    assert run.code == 0, run
    with av.open(str(out)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (64, 64, 3)


def test_convert_with_the_neural_engine_keeps_every_frame(face_video: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "neural.mp4"
    run = run_main(["convert", str(face_video), "-o", str(out), "--engine", "neural", "--checkpoint", str(checkpoint),
                    "--size", "64", "--max-frames", "3", "--mode", "face", "--no-progress"])
    assert run.code == 0, run
    assert "converted 3 frames" in run.out
    with av.open(str(out)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (64, 64, 3)


# ------------------------------------------------------------------------------------- metrics

def test_ssim_of_identical_images_is_one_and_noise_lowers_it() -> None:
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(128, 40, (40, 36, 3)), 0, 255)
    x = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1)) / 3  # some structure
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    light = np.clip(x + rng.normal(0, 5, x.shape), 0, 255)
    heavy = np.clip(x + rng.normal(0, 30, x.shape), 0, 255)
    s_light, s_heavy = ssim(x, light), ssim(x, heavy)
    assert 1.0 > s_light > s_heavy > 0.0
    assert ssim(light, x) == pytest.approx(s_light, abs=1e-12)  # symmetric
    assert ssim(x, 255 - x) < 0  # anti-correlated structure


def test_ssim_of_flat_images_is_the_luminance_term() -> None:
    c1 = (0.01 * 255) ** 2
    a, b = 100.0, 140.0
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # no variance: contrast-structure term is 1
    assert ssim(np.full((16, 16), a), np.full((16, 16), b)) == pytest.approx(expected, rel=1e-12)
    w = gaussian_window()
    assert len(w) == 11 and w.sum() == pytest.approx(1.0) and w.argmax() == 5
    with pytest.raises(ValueError):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))  # smaller than the window


def test_psnr_and_mask_iou() -> None:
    a = np.zeros((10, 10, 3))
    b = a + 1.0
    assert psnr(a, b) == pytest.approx(20 * math.log10(255), rel=1e-12)  # mse 1: 48.13 dB
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 10) < psnr(a, b)
    m1 = np.zeros((4, 4), np.uint8)
    m2 = m1.copy()
    m1[:2] = 255
    m2[1:3] = 200
    assert mask_iou(m1, m2) == pytest.approx(4 / 12)
    assert mask_iou(m1, m1) == 1.0 and mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_identity_spread_and_colour_error() -> None:
    stable = np.array([[[100, 80, 60]] * 4, [[200, 150, 120]] * 4], np.float64)
    s = identity_spread(stable)
    assert s["within"] == 0.0 and s["between"] > 50 and s["ratio"] == 0.0
    wobbly = stable + np.array([0, 10, 0, -10], np.float64)[None, :, None]
    assert identity_spread(wobbly)["ratio"] > 0.05
    assert colour_error(stable, stable) == 0.0
    assert colour_error(stable + [3.0, 4.0, 0.0], stable) == pytest.approx(5.0)


def test_control_metrics_use_the_camera_and_the_neutral_reading() -> None:
    """A tracker that reads the head exactly as the camera sees it, with a constant bias, has no error."""
    from engines.mesh import orbit_rotation

    bias = axis_angle_to_matrix(np.array([0.05, -0.03, 0.02]))
    samples, rows = [], []
    for i, (yaw, pitch) in enumerate(((0.0, 0.0), (0.3, -0.1), (-0.4, 0.2))):
        pose = np.zeros((6, 3), np.float32)
        pose[pose_row(SmplJoint.HEAD)] = (0.1 * i, 0.2, -0.1)
        pose[pose_row(SmplJoint.NECK)] = (0.0, 0.1 * i, 0.0)
        expression = np.zeros(52, np.float32)
        expression[Blendshape.jawOpen] = 0.5
        s = {"camera": np.array([yaw, pitch], np.float32), "pose": pose, "expression": expression}
        seen = orbit_rotation(yaw, pitch).T @ head_rotation(pose)
        read = expression.copy()
        read[Blendshape.jawOpen] = 0.4
        samples.append(s)
        rows.append(_Reading(face_ok=True, head=bias @ seen, expression=read))
    neutral = _Reading(face_ok=True, head=bias, expression=np.zeros(52))
    m = control_metrics([(neutral, rows)], [samples], head=True)
    assert m["face_rate"] == 1.0
    assert m["head_error_deg"]["geodesic"] == pytest.approx(0.0, abs=1e-6)
    assert m["expression_mae"]["jawOpen"] == pytest.approx(0.1, abs=1e-6)
    assert m["expression_mae"]["eyeBlink"] == 0.0 and set(m["expression_mae"]) == set(EXPRESSION_GROUPS)
    turned = [_Reading(True, axis_angle_to_matrix(np.array([0.0, math.radians(10), 0.0])) @ r.head, r.expression)
              for r in rows]
    assert control_metrics([(neutral, turned)], [samples], head=True)["head_error_deg"]["geodesic"] == \
        pytest.approx(10.0, abs=1e-3)
    lost = [_Reading(False, r.head, r.expression) for r in rows]
    assert control_metrics([(neutral, lost)], [samples], head=True)["face_rate"] == 0.0


# ------------------------------------------------------------------------------------- puppet eval

@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from puppet.synth import BankOptions, SynthOptions, synthesize

    out = tmp_path_factory.mktemp("synth") / "ds"
    synthesize(SynthOptions(output=out, samples=3, size=64, identities=1, shard_size=2, bank=BankOptions(use="off"),
                            progress=False))
    return out


def test_eval_writes_the_table_and_json(synth_set: Path, checkpoint: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import puppet.evaluate

    monkeypatch.setattr(puppet.evaluate, "NEUTRAL_FRAMES", 2)  # the tracker's warm-up costs time, not coverage
    out = tmp_path / "eval.json"
    run = run_main(["eval", "--checkpoint", str(checkpoint), "--data", str(synth_set), "--samples", "2", "--untrained",
                    "--stability-identities", "1", "--device", "cpu", "--json", str(out), "--no-progress"])
    assert run.code == 0, run
    assert "SSIM" in run.out and "untrained" in run.out and "[builtin] head yaw error" in run.out
    doc = json.loads(out.read_text())
    assert doc["format"] == "puppet.eval" and doc["samples"] == 2 and doc["size"] == 64 and doc["held_out"] is None
    assert set(doc["results"]) == {"trained", "untrained", "mesh"}
    image = doc["results"]["trained"]["image"]
    assert math.isfinite(image["psnr_mean"]) and 0 < image["psnr_mean"] < 60
    assert -1 <= image["ssim_mean"] <= 1 and 0 <= image["mask_iou_mean"] <= 1
    # the untrained baseline (seed 0) is the very generator the checkpoint fixture saved
    assert doc["results"]["untrained"]["image"] == image
    for model in ("trained", "mesh"):
        assert doc["results"][model]["identity"]["identities"] == 1
        control = doc["results"][model]["control"]["builtin"]
        assert set(control["expression_mae"]) == set(EXPRESSION_GROUPS)
        assert control["face_rate"] is None or 0 <= control["face_rate"] <= 1
    assert doc["results"]["trained"]["identity"]["colour_error"] >= 0
    assert_one_error_line(run_main(["eval", "--checkpoint", str(tmp_path / "none.safetensors"), "--data",
                                    str(synth_set)]), "does not exist")
