"""``puppet synth`` and its reader: shapes, ranges, determinism, resume, the face camera, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from puppet.cli import main
from puppet.errors import AssetError, InputError, OutputError
from puppet.synth import (FIELDS, BankOptions, SamplingOptions, SynthOptions, draw_sample, face_camera,
                          identity_of, random_expression, synth_identity, synthesize)

N, SIZE, IDENTITIES, SHARD = 6, 64, 2, 4
SEED = 5


def options(output: Path, **changes) -> SynthOptions:
    base = dict(output=output, samples=N, size=SIZE, seed=SEED, identities=IDENTITIES, shard_size=SHARD,
                bank=BankOptions(use="off"), progress=False)
    return SynthOptions(**(base | changes))


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = synthesize(options(out))
    assert summary.rendered == N and summary.shards_written == 2 and not summary.interrupted
    return out


def project(cam2world: np.ndarray, fov_deg: float, points: np.ndarray, size: int) -> np.ndarray:
    """Contract points (N, 3) -> pixels (N, 2) (x right, y down) of a square image, from the labels."""
    world2cam = np.linalg.inv(cam2world.astype(np.float64))
    p = points @ world2cam[:3, :3].T + world2cam[:3, 3]
    f = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    return np.stack([size / 2 + f * p[:, 0] / -p[:, 2], size / 2 - f * p[:, 1] / -p[:, 2]], axis=1)


# ----------------------------------------------------------------------------- what is written

def test_shards_have_the_documented_arrays(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["format"] == "puppet.synth" and manifest["complete"] is True
    assert manifest["samples"] == N and manifest["size"] == SIZE and manifest["face_size"] == SIZE // 2
    assert len(manifest["identities"]) == IDENTITIES
    assert manifest["expression_bank"]["used"] is False and "random" in manifest["expression_bank"]["reason"]
    assert [s["count"] for s in manifest["shards"]] == [4, 2]
    for entry in manifest["shards"]:
        arrays = load(dataset / entry["file"])
        k = entry["count"]
        assert arrays["portrait"].shape == (k, SIZE, SIZE, 4) and arrays["portrait"].dtype == np.uint8
        assert arrays["face"].shape == (k, SIZE // 2, SIZE // 2, 4) and arrays["face"].dtype == np.uint8
        for name, (shape, dtype) in FIELDS.items():
            assert arrays[name].shape == (k, *shape) and arrays[name].dtype == np.dtype(dtype), name
        assert np.array_equal(arrays["index"], np.arange(entry["start"], entry["start"] + k))
        assert np.all((arrays["expression"] >= 0) & (arrays["expression"] <= 1))
        assert np.all(np.abs(arrays["camera"][:, 0]) <= 0.6) and np.all(np.abs(arrays["camera"][:, 1]) <= 0.35)
        assert np.all(arrays["expression_source"] == -1) and np.all(arrays["pose_source"] == -1)
        for image in ("portrait", "face"):
            img = arrays[image]
            c = img.shape[1] // 2
            assert np.all(img[:, c - 2:c + 2, c - 2:c + 2, 3] == 255), f"{image}: the avatar covers the centre"
            assert np.all((img[:, 0, :, 3] < 255).any(axis=1)), f"{image}: background at the top edge"
            # RGB premultiplied by alpha (black background): never brighter than the coverage.
            assert np.all(img[..., :3].max(-1).astype(int) <= img[..., 3].astype(int) + 1)
        for cam in ("portrait_cam2world", "face_cam2world"):
            r = arrays[cam][:, :3, :3].astype(np.float64)
            np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-5)
            assert np.all(arrays[cam][:, 3] == [0, 0, 0, 1])


def test_face_image_shows_the_head(dataset: Path) -> None:
    """The face camera looks at the head: the head fills its image; its target also lies on the
    avatar in the portrait (both cameras' labels agree with both images)."""
    for entry in json.loads((dataset / "manifest.json").read_text())["shards"]:
        a = load(dataset / entry["file"])
        face_alpha = a["face"][..., 3] > 127
        assert np.all(face_alpha.mean(axis=(1, 2)) > 0.3)
        for k in range(entry["count"]):
            size = SIZE // 2
            centre = project(a["face_cam2world"][k], float(a["face_fov"][k]), a["face_center"][k][None], size)[0]
            np.testing.assert_allclose(centre, [size / 2, size / 2], atol=0.5)
            ys = np.nonzero(face_alpha[k].any(axis=1))[0]
            assert ys.min() <= 0.15 * size and ys.max() == size - 1  # the crown near the top, the neck below
            p = project(a["portrait_cam2world"][k], float(a["portrait_fov"][k]), a["face_center"][k][None], SIZE)[0]
            x, y = np.round(p).astype(int)
            assert 0.25 * SIZE < x < 0.75 * SIZE and 0.1 * SIZE < y < 0.6 * SIZE, "head in the portrait's upper middle"
            assert a["portrait"][k, y, x, 3] == 255


@pytest.fixture(scope="module")
def engine_and_bake():
    """A mesh engine and its bake of identity 0 (a few seconds)."""
    from engines.mesh import MeshEngine, MeshEngineOptions

    with MeshEngine(MeshEngineOptions(size=SIZE, background=(0.0, 0.0, 0.0))) as engine:
        yield engine, engine.bake(synth_identity(SEED, 0))


@pytest.fixture(scope="module")
def model(engine_and_bake):
    return engine_and_bake[1].model


def test_render_view_through_the_orbit_camera_is_render(engine_and_bake) -> None:
    """``render_view`` shares ``render``'s drawing, lights included (they turn with the camera)."""
    from puppet.params import AvatarParams

    engine, baked = engine_and_bake
    params = AvatarParams(t=0.0, expression=np.zeros(52, np.float32), pose=np.zeros((6, 3), np.float32),
                          camera=np.array([0.4, -0.2], np.float32))
    a = engine.render(baked, params).image.astype(int)
    b = engine.render_view(baked, params, engine.camera(baked, params.camera)).image.astype(int)
    assert np.abs(a - b).max() <= 1
    frontal = engine.render_view(baked, params, engine.camera(baked, np.zeros(2))).image.astype(int)
    assert np.abs(a - frontal).max() > 50  # the camera argument, not params.camera, decides


def test_face_camera_follows_the_head(model) -> None:
    from engines.mesh import orbit_rotation
    from puppet.contract import SmplJoint, pose_row

    rest, rest_centre = face_camera(model, np.zeros((6, 3)), np.zeros(2))
    np.testing.assert_allclose(rest[:3, :3], np.eye(3), atol=1e-9)  # frontal, upright
    for yaw in (0.5, -0.3):
        pose = np.zeros((6, 3))
        pose[pose_row(SmplJoint.HEAD)] = (0.0, yaw, 0.0)  # the head turns to its left (+X) for yaw > 0
        cam, centre = face_camera(model, pose, np.zeros(2))
        direction = (cam[:3, 3] - centre) / np.linalg.norm(cam[:3, 3] - centre)
        np.testing.assert_allclose(direction, [np.sin(yaw), 0.0, np.cos(yaw)], atol=1e-9)
        np.testing.assert_allclose(cam[:3, 2], direction, atol=1e-9)  # looking at the head centre
        np.testing.assert_allclose(np.linalg.norm(cam[:3, 3] - centre), np.linalg.norm(rest[:3, 3] - rest_centre))
        # A view relative to the head composes with the head's turn.
        view_cam, _ = face_camera(model, pose, np.array([0.2, 0.1]))
        ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        np.testing.assert_allclose(view_cam[:3, :3], ry @ orbit_rotation(0.2, 0.1), atol=1e-9)
    # The visible height at the head centre is 1.15 head heights.
    lm = model.landmarks
    distance = np.linalg.norm(rest[:3, 3] - rest_centre)
    np.testing.assert_allclose(2 * distance * np.tan(np.radians(6.0)), 1.15 * (lm.head_top - lm.chin_y))


def test_face_image_centres_the_eyes(dataset: Path, model) -> None:
    """Eyes of the posed mesh (identity 0, its samples' labels) project near the face image's
    centre line, above the middle, on covered pixels."""
    a = load(dataset / "shard-00000.npz")
    size = SIZE // 2
    for k in np.nonzero(a["identity"] == 0)[0]:
        v = model.pose(a["expression"][k], a["pose"][k])
        eyes = np.stack([v[idx].mean(axis=0) for idx in model.eye_index])
        px = project(a["face_cam2world"][k], float(a["face_fov"][k]), eyes, size)
        assert np.all(np.abs(px.mean(axis=0) - [size / 2, size / 2]) < [0.2 * size, 0.2 * size])
        assert np.all(a["face"][k, np.round(px[:, 1]).astype(int), np.round(px[:, 0]).astype(int), 3] > 200)


# ----------------------------------------------------------------------------- determinism and resume

def test_sampling_is_deterministic_per_sample() -> None:
    s = SamplingOptions()
    a = [draw_sample(i, SEED, 100, 4, s) for i in range(20)]
    b = [draw_sample(i, SEED, 100, 4, s) for i in reversed(range(20))][::-1]
    c = [draw_sample(i, SEED + 1, 100, 4, s) for i in range(20)]
    for x, y, z in zip(a, b, c):
        for name in ("expression", "pose", "camera", "face_view"):
            assert getattr(x, name).tobytes() == getattr(y, name).tobytes()
        assert not np.array_equal(x.pose, z.pose) and not np.array_equal(x.camera, z.camera)
    assert synth_identity(SEED, 1) == synth_identity(SEED, 1) != synth_identity(SEED + 1, 1)
    assert [identity_of(i, 10, 3) for i in range(10)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_halve_averages_premultiplied_blocks() -> None:
    from puppet.synth import halve

    img = np.zeros((4, 4, 4), np.uint8)
    img[0:2, 0:2] = (200, 100, 0, 255)  # covered
    img[0:2, 2:4] = [[(200, 100, 0, 255), (0, 0, 0, 0)], [(0, 0, 0, 0), (0, 0, 0, 0)]]  # a quarter covered
    out = halve(img)
    assert out.shape == (2, 2, 4)
    assert tuple(out[0, 0]) == (200, 100, 0, 255) and tuple(out[0, 1]) == (50, 25, 0, 64)
    assert not out[1].any()


def test_random_expressions_are_sparse_and_in_range() -> None:
    rng = np.random.default_rng(0)
    e = np.stack([random_expression(rng) for _ in range(300)])
    assert np.all((e >= 0) & (e <= 1))
    active = (e > 0).sum(axis=1)
    assert np.median(active) <= 6 and active.max() <= 20 and (active == 0).any()
    assert (e > 0).any(axis=0).sum() > 35  # most units appear somewhere


def test_same_seed_same_dataset(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synthesize(options(again))
    for name in ("shard-00000.npz", "shard-00001.npz"):
        a, b = load(dataset / name), load(again / name)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].tobytes() == b[key].tobytes(), f"{name}: {key}"


def test_resume_renders_only_missing_shards(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    (copy / "shard-00001.npz").unlink()
    (copy / "shard-00001.npz.partial").write_bytes(b"half a shard")  # an interrupted write
    first = (copy / "shard-00000.npz").stat().st_mtime_ns
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["complete"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    summary = synthesize(options(copy))
    assert summary.shards_written == 1 and summary.shards_skipped == 1 and summary.rendered == 2
    assert (copy / "shard-00000.npz").stat().st_mtime_ns == first
    assert json.loads((copy / "manifest.json").read_text())["complete"] is True
    a, b = load(dataset / "shard-00001.npz"), load(copy / "shard-00001.npz")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    with pytest.raises(OutputError, match="different dataset"):
        synthesize(options(copy, seed=SEED + 1))


def test_ctrl_c_keeps_the_finished_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import puppet.synth as synth

    real = synth._render_shard
    calls = []

    def render_then_interrupt(*args, **kwargs):
        calls.append(args[4])
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second shard renders
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "_render_shard", render_then_interrupt)
    out = tmp_path / "ds"
    summary = synthesize(options(out))
    assert summary.interrupted and summary.shards_written == 1 and summary.rendered == 4
    assert "interrupted" in summary.describe()
    assert (out / "shard-00000.npz").is_file() and not (out / "shard-00001.npz").exists()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False


# ----------------------------------------------------------------------------- the expression bank

class _Bank:
    """A stand-in bank: 3 rows, the second with a tracked body."""

    def __init__(self) -> None:
        self.expression = np.zeros((3, 52), np.float32)
        self.expression[:, 24] = (0.1, 0.2, 0.3)
        self.pose = np.full((3, 6, 3), 0.05, np.float32)
        self.body_ok = np.array([False, True, False])

    def __len__(self) -> int:
        return 3


def test_bank_rows_are_drawn_with_their_fraction() -> None:
    bank = _Bank()
    always = SamplingOptions(bank_fraction=1.0, pose_bank_fraction=1.0)
    for i in range(30):
        s = draw_sample(i, 0, 30, 1, always, bank)
        assert s.expression_source in (0, 1, 2) and s.pose_source in (0, 1, 2)
        np.testing.assert_array_equal(s.expression, bank.expression[s.expression_source])
        np.testing.assert_array_equal(s.pose[[0, 3]], bank.pose[s.pose_source][[0, 3]])  # neck, head
        assert np.array_equal(s.pose, bank.pose[s.pose_source]) == bool(bank.body_ok[s.pose_source])
    half = SamplingOptions(bank_fraction=0.5, pose_bank_fraction=0.0)
    sources = np.array([draw_sample(i, 0, 200, 1, half, bank).expression_source for i in range(200)])
    assert 0.38 < np.mean(sources >= 0) < 0.62
    assert all(draw_sample(i, 0, 200, 1, half, bank).pose_source == -1 for i in range(20))
    # Without a bank every expression is random, whatever the fraction.
    assert draw_sample(0, 0, 1, 1, always, None).expression_source == -1


def test_bank_from_real_footage(media_dir: Path, tmp_path: Path) -> None:
    from puppet.expression_bank import build_bank, default_face_landmarker, load_bank, save_bank

    clip = media_dir / "video" / "lp_d0.mp4"  # a 3-second close-up
    bank = build_bank([clip], step=6, face_landmarker=default_face_landmarker())
    assert 8 <= len(bank) <= 13 and not bank.body_ok.any()
    assert np.all((bank.expression >= 0) & (bank.expression <= 1)) and bank.expression.max() > 0.05
    assert np.abs(bank.pose).max() > 0
    again = load_bank(save_bank(bank, tmp_path / "bank.npz"))
    assert again.sha256() == bank.sha256() and again.videos == ("lp_d0.mp4",)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(AssetError):
        load_bank(tmp_path / "junk.npz")


# ----------------------------------------------------------------------------- the reader

def test_reader_streams_every_sample_in_order(dataset: Path) -> None:
    from puppet.dataset import SynthDataset

    data = SynthDataset(dataset)
    assert len(data) == N and data.num_shards == 2 and data.size == SIZE
    assert [a.name for a in data.identities] == [f"synth-{SEED}-0", f"synth-{SEED}-1"]
    samples = list(data)
    assert [int(s["index"]) for s in samples] == list(range(N))
    assert [int(s["identity"]) for s in samples] == [0, 0, 0, 1, 1, 1]
    assert samples[0]["portrait"].shape == (SIZE, SIZE, 4)
    assert data.shard(1).start == 4 and data.shard(1).count == 2
    assert data.expression_bank() is None


def test_reader_refuses_missing_foreign_and_incomplete(dataset: Path, tmp_path: Path) -> None:
    from puppet.dataset import SynthDataset

    with pytest.raises(InputError):
        SynthDataset(tmp_path / "nothing")
    with pytest.raises(AssetError, match="not a puppet synth dataset"):
        SynthDataset(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something.else"}')
    with pytest.raises(AssetError, match="not a puppet synth manifest"):
        SynthDataset(tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(dataset, partial)
    (partial / "shard-00001.npz").unlink()
    with pytest.raises(AssetError, match="incomplete"):
        SynthDataset(partial)
    assert len(SynthDataset(partial, allow_incomplete=True)) == 4


def test_torch_wrapper_batches_shuffled_samples(dataset: Path) -> None:
    import torch
    from torch.utils.data import DataLoader

    from puppet.dataset import TorchSynthDataset

    data = TorchSynthDataset(dataset, shuffle=True, buffer_size=3, seed=1)
    batches = list(DataLoader(data, batch_size=4))
    assert [len(b["index"]) for b in batches] == [4, 2]
    b = batches[0]
    assert b["portrait"].shape == (4, 4, SIZE, SIZE) and b["portrait"].dtype == torch.float32
    assert b["face"].shape == (4, 4, SIZE // 2, SIZE // 2)
    assert 0.0 <= float(b["portrait"].min()) and float(b["portrait"].max()) <= 1.0
    assert b["expression"].shape == (4, 52) and b["pose"].shape == (4, 6, 3) and b["identity"].dtype == torch.int64
    order = torch.cat([b["index"] for b in batches]).tolist()
    assert sorted(order) == list(range(N))
    data.set_epoch(1)
    assert sorted(torch.cat([b["index"] for b in DataLoader(data, batch_size=4)]).tolist()) == list(range(N))
    plain = [int(s["index"]) for s in TorchSynthDataset(dataset, shuffle=False)]
    assert plain == list(range(N))
    ranks = [TorchSynthDataset(dataset, rank=r, world_size=2).shards_for() for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == [0, 1] and not set(ranks[0]) & set(ranks[1])


# ----------------------------------------------------------------------------- the command line

def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def test_cli_unwritable_output_is_one_error_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code, err = run_main(["synth", "-o", str(blocker / "ds"), "--n", "4", "--no-progress"])
    assert code == 2 and err.startswith("puppet: error:") and err.count("\n") == 1
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, err = run_main(["synth", "-o", str(tmp_path / "busy"), "--n", "4", "--expression-bank", "off",
                          "--no-progress"])
    assert code == 2 and "not empty" in err


@pytest.mark.parametrize("args", [["--n", "0"], ["--n", "4", "--size", "300"], ["--n", "4", "--bank-fraction", "2"]])
def test_cli_bad_values_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        main(["synth", "-o", str(tmp_path / "ds"), *args])
    assert exc.value.code == 2
