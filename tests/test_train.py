"""Training of the neural generator: discriminators, losses, the training loop, checkpoints and resume.

Everything runs on CPU at a micro config (16 x 16 rays) on a 4-sample synthetic set rendered once per
module by ``puppet.synth`` (32 px portraits, one identity).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from puppet.errors import AssetError, InputError, OutputError
from puppet.generator import losses as L
from puppet.generator.config import GeneratorConfig
from puppet.generator.discriminators import (Discriminator, DiscriminatorConfig, PortraitDiscriminators,
                                             encoder_layout, torso_crop)
from puppet.generator.losses import LossWeights
from puppet.generator.train import TrainOptions, flatten_state, train, unflatten_state


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A 4-sample dataset (2 shards), a micro generator config and a rig cache, made once."""
    from puppet.synth import BankOptions, SynthOptions, synthesize

    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    synthesize(SynthOptions(output=data, samples=4, size=32, identities=1, shard_size=2,
                            bank=BankOptions(use="off"), progress=False))
    config = dataclasses.replace(GeneratorConfig.tiny(), ray_resolution=16, coarse_samples=8, fine_samples=16,
                                 map_resolution=16)
    config_path = root / "micro.json"
    config_path.write_text(json.dumps(config.to_dict()))
    return {"root": root, "data": data, "config": config_path, "rigs": root / "rigs"}


def _options(ws: dict[str, Path], out: Path, **kw) -> TrainOptions:
    base = dict(data=ws["data"], out=out, config=str(ws["config"]), batch=2, steps=2, log_every=1,
                checkpoint_every=100, grid_every=100, grid_samples=2, rig_cache=ws["rigs"], progress=False,
                deform_points=512, face_points=64, threads=1)
    base.update(kw)
    return TrainOptions(**base)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- discriminators

def test_discriminator_shapes_including_the_torso_crop():
    torch.manual_seed(0)
    d = PortraitDiscriminators(32, 16, DiscriminatorConfig.tiny())
    out = d(torch.rand(3, 4, 32, 32), torch.rand(3, 4, 16, 16))
    for view in ("whole", "face", "torso"):
        assert out[view].logit.shape == (3,)
        assert out[view].pose.shape == (3, 2)
    assert (d.torso.height, d.torso.width) == (8, 32)
    assert torso_crop(torch.arange(32.0).reshape(1, 1, 32, 1).expand(1, 1, 32, 4))[0, 0, :, 0].tolist() == list(
        range(24, 32))
    # GRAM's widths at 128 px: 64 channels after fromRGB, blocks down to 2x2 (torso 32x128 -> 2x8).
    pub = DiscriminatorConfig.published()
    assert encoder_layout(128, 128, pub) == (64, [128, 256, 400, 400, 400, 400], (2, 2))
    assert encoder_layout(32, 128, pub) == (64, [128, 256, 400, 400], (2, 8))
    assert encoder_layout(512, 512, pub)[0] == 16 and encoder_layout(256, 256, pub)[1][:2] == [64, 128]
    wide = Discriminator(8, 64, DiscriminatorConfig.tiny())  # non-square: the head averages 7 windows
    assert wide.final_size == (2, 16) and wide(torch.rand(2, 4, 8, 64)).logit.shape == (2,)
    rgb = Discriminator(16, 16, dataclasses.replace(DiscriminatorConfig.tiny(), in_channels=3, pose_outputs=False))
    assert rgb(torch.rand(2, 3, 16, 16)).pose is None
    with pytest.raises(ValueError, match="expects"):
        rgb(torch.rand(2, 4, 16, 16))


# ----------------------------------------------------------------------------- losses

def test_non_saturating_and_r1_on_known_inputs():
    zero = torch.zeros(4)
    assert L.ns_generator_loss(zero).item() == pytest.approx(math.log(2.0))
    assert L.ns_discriminator_loss(zero, zero).item() == pytest.approx(2.0 * math.log(2.0))
    assert L.ns_generator_loss(torch.full((2,), 3.0)).item() == pytest.approx(math.log1p(math.exp(-3.0)))
    assert L.ns_discriminator_loss(torch.full((2,), 2.0), torch.full((2,), -1.0)).item() == pytest.approx(
        math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))
    # A linear "discriminator" D(x) = <w, x>: grad = w for every sample, R1 = 0.5 gamma |w|^2.
    w = torch.randn(4, 8, 8)
    real = torch.rand(3, 4, 8, 8, requires_grad=True)
    logits = (real * w).flatten(1).sum(1)
    r1 = L.r1_penalty(logits, real, gamma=10.0)
    assert r1.item() == pytest.approx(0.5 * 10.0 * w.pow(2).sum().item(), rel=1e-5)
    # A quadratic one: D(x) = sum x^2 / 2, grad = x -> R1 = 0.5 gamma mean_b |x_b|^2; R1 must train D.
    scale = torch.tensor(1.0, requires_grad=True)
    logits = scale * real.pow(2).flatten(1).sum(1) / 2
    r1 = L.r1_penalty(logits, real, gamma=2.0)
    assert r1.item() == pytest.approx(real.detach().pow(2).flatten(1).sum(1).mean().item(), rel=1e-5)
    r1.backward()
    assert scale.grad is not None and scale.grad.item() > 0


def test_reconstruction_loss():
    rgb, alpha = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    assert L.reconstruction_loss(rgb, alpha, rgb, alpha).item() == 0.0
    shifted = L.reconstruction_loss(rgb + 0.1, alpha, rgb, alpha, gradient=0.0).item()
    assert shifted == pytest.approx(0.1 * 3 / 4, rel=1e-4)  # 3 of 4 channels off by 0.1, every level
    noisy = L.reconstruction_loss(rgb + 0.1 * torch.randn_like(rgb), alpha, rgb, alpha, gradient=0.5).item()
    assert noisy > L.reconstruction_loss(rgb + 0.1 * torch.randn_like(rgb), alpha, rgb, alpha, gradient=0.0).item()
    with pytest.raises(ValueError):
        L.reconstruction_loss(rgb, alpha, rgb[..., :8, :8], alpha[..., :8, :8])


@pytest.fixture(scope="module")
def rig(workspace):
    from puppet.dataset import SynthDataset
    from puppet.generator.rig import RigTensors, rig_for_avatar

    config = GeneratorConfig.from_dict(json.loads(workspace["config"].read_text()))
    avatar = SynthDataset(workspace["data"]).identities[0]
    return RigTensors.stack([rig_for_avatar(avatar, config.skin_vertices, config.face_vertices, workspace["rigs"])] * 2)


def test_imitation_and_landmark_losses_vanish_for_the_face_models_inverse_offsets(rig):
    from puppet.generator.skinning import expression_offsets

    expression = torch.zeros(2, 52)
    expression[:, 24] = 0.8  # jawOpen
    expression[1, 0] = 0.5  # browDownLeft
    offsets = expression_offsets(rig, expression)
    assert offsets.abs().max() > 1e-3
    expressed = rig.face_rest + offsets
    # Points a little off the expressed face vertices (well inside half the vertex spacing), D_e = the
    # inverse offset of their vertex: both losses are zero.
    spacing = torch.cdist(expressed, expressed) + 1e3 * torch.eye(expressed.shape[1])
    nudge = 0.2 * spacing.min().item()
    points = expressed + nudge * torch.nn.functional.normalize(torch.randn_like(expressed), dim=-1)
    radius = 0.03
    assert L.imitation_loss(points, -offsets, rig.face_rest, offsets, radius).item() == pytest.approx(0.0, abs=1e-7)
    assert L.landmark_loss(rig.face_rest, offsets, -offsets).item() == pytest.approx(0.0, abs=1e-7)
    # D_e = 0: the error is the mean offset length; a wrong sign doubles it.
    mean_offset = offsets.norm(dim=-1).mean().item()
    assert L.imitation_loss(points, torch.zeros_like(points), rig.face_rest, offsets, radius).item() == pytest.approx(
        mean_offset, rel=1e-4)
    assert L.imitation_loss(points, offsets, rig.face_rest, offsets, radius).item() == pytest.approx(
        2 * mean_offset, rel=1e-4)
    assert L.landmark_loss(rig.face_rest, offsets, torch.zeros_like(offsets)).item() == pytest.approx(
        mean_offset, rel=1e-4)
    # Points far from the face do not count.
    far = points + torch.tensor([0.0, 0.0, 1.0])
    assert L.imitation_loss(far, torch.ones_like(far), rig.face_rest, offsets, radius).item() == 0.0


def test_deformation_regularisers():
    from puppet.generator.skinning import LbsSmoother

    d = torch.randn(2, 50, 3)
    assert L.minimal_deformation(d).item() == pytest.approx(d.pow(2).sum(-1).mean().item())
    assert L.expression_smoothness(d, d).item() == 0.0
    assert L.expression_smoothness(d, d + 0.1).item() == pytest.approx(0.03, rel=1e-4)
    smoother = LbsSmoother(3)
    raw = torch.randn(1, 16, 4, 6, 6)
    assert L.pose_smoothness(raw, smoother(raw), 3).item() == pytest.approx(0.0, abs=1e-10)  # D_P at init = box
    with torch.no_grad():
        smoother.weight1.mul_(torch.rand_like(smoother.weight1))
    assert L.pose_smoothness(raw, smoother(raw), 3).item() > 1e-6


def test_loss_weights_round_trip_and_validation():
    w = LossWeights(imitation=3.0)
    assert LossWeights.from_dict(w.to_dict()) == w
    with pytest.raises(ValueError, match="unknown"):
        LossWeights.from_dict({"imitaton": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        LossWeights.from_dict({"gan": -1.0})


def test_state_flattening_keeps_optimizer_state_exactly():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.9))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(flatten_state(opt.state_dict(), "opt", tensors)))
    back = unflatten_state(skeleton, tensors)
    assert set(back["state"]) == {0, 1}  # int keys survive JSON
    fresh = torch.optim.Adam(net.parameters(), lr=1.0)
    fresh.load_state_dict(back)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg_sq"], opt.state_dict()["state"][0]["exp_avg_sq"])
    assert fresh.param_groups[0]["betas"] == (0.0, 0.9)


# ----------------------------------------------------------------------------- the training loop

def test_a_few_steps_lower_the_reconstruction_loss(workspace):
    # batch 4 = the whole set: the same four samples every step.
    run = workspace["root"] / "learn"
    result = train(_options(workspace, run, batch=4, steps=12, g_lr=2e-3, ema=0.0))
    rec = [row["reconstruction"] for row in _log(run)]
    assert len(rec) == 12 and all(math.isfinite(r) for r in rec)
    first, last = np.mean(rec[:3]), np.mean(rec[-3:])
    assert last < 0.95 * first, rec
    assert result.steps == 12 and result.checkpoint.is_file()
    for key in ("imitation", "landmark", "pose_smooth", "gan_g", "d_total", "r1"):
        assert key in result.losses_last


def test_checkpoint_and_resume_continue_identically(workspace):
    from safetensors.torch import load_file

    from puppet.generator.checkpoint import load_checkpoint

    straight, split = workspace["root"] / "straight", workspace["root"] / "split"
    train(_options(workspace, straight, steps=5))
    # 2 samples per batch, 4 samples: step 3 stops inside the second epoch.
    first = train(_options(workspace, split, steps=3, grid_every=3))
    assert first.steps == 3 and (split / "grids" / "step_000003.png").is_file()
    with pytest.raises(OutputError, match="--resume"):
        train(_options(workspace, split, steps=5))
    resumed = train(_options(workspace, split, steps=5, resume=True))
    assert resumed.start_step == 3 and resumed.steps == 5
    a, b = _log(straight), _log(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        for key in ra:
            if key not in ("time", "sec_per_step"):
                assert ra[key] == rb[key], (ra["step"], key)
    sa = load_file(str(straight / "checkpoint" / "training_state.safetensors"))
    sb = load_file(str(split / "checkpoint" / "training_state.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ga, extra = load_checkpoint(straight / "checkpoint" / "generator.safetensors")
    gb, _ = load_checkpoint(split / "checkpoint" / "generator.safetensors")
    assert extra["step"] == 5 and extra["ema"] is True
    assert all(torch.equal(x, y) for x, y in zip(ga.state_dict().values(), gb.state_dict().values()))


def test_stages_train_only_their_networks(workspace):
    from puppet.generator.checkpoint import load_checkpoint

    s1 = workspace["root"] / "stage1"
    train(_options(workspace, s1, steps=1, ema=0.0))
    init = s1 / "checkpoint" / "generator.safetensors"
    g0, _ = load_checkpoint(init)
    s2 = workspace["root"] / "stage2"
    with pytest.raises(InputError, match="--init"):
        train(_options(workspace, s2, stage=2))
    result = train(_options(workspace, s2, stage=2, init=init, steps=2, ema=0.0))
    assert "consistency" in result.losses_last
    run = json.loads((s2 / "run.json").read_text())
    assert (run["portrait_size"], run["face_size"]) == (32, 16)  # 16 rays x sr_scale 2, and half
    g2, _ = load_checkpoint(s2 / "checkpoint" / "generator.safetensors")
    before, after = g0.state_dict(), g2.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    changed_heads = any(not torch.equal(before[k], after[k]) for k in before if "feature_heads" in k)
    assert changed <= {"sr", "sr_mapping", "radiance"} and {"sr", "sr_mapping"} <= changed and changed_heads
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("radiance.")
               and "feature_heads" not in k)
    # Stage 1 (seed 0) left the SR net and the feature heads at their initial values.
    from puppet.generator.model import Generator

    torch.manual_seed(0)
    initial = Generator(g0.config).state_dict()
    untouched = [k for k in before if k.startswith("sr") or "feature_heads" in k]
    assert untouched and all(torch.equal(before[k], initial[k]) for k in untouched)
    assert not torch.equal(before["manifold.out.weight"], initial["manifold.out.weight"])


def test_user_mistakes_are_one_line_errors(workspace, tmp_path, capsys):
    from puppet.cli import main

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        train(_options(workspace, foreign))
    with pytest.raises(OutputError, match="no puppet training run"):
        train(_options(workspace, tmp_path / "nothing", resume=True))
    with pytest.raises((InputError, AssetError), match="not a puppet synth"):
        train(_options(workspace, tmp_path / "run", data=foreign))
    with pytest.raises(InputError):
        train(_options(workspace, tmp_path / "run", data=tmp_path / "missing"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"generator": {"identity_dim": 36}}))
    with pytest.raises(InputError, match="missing key"):
        train(_options(workspace, tmp_path / "run", config=str(bad)))
    assert not (tmp_path / "run").exists()  # nothing written before the checks pass
    assert main(["train", str(foreign), "-o", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("puppet: error:")
    assert main(["train", str(workspace["data"]), "-o", str(tmp_path / "run2"), "--config", "nope.json"]) == 2
    assert "neither tiny, published nor a JSON file" in capsys.readouterr().err
