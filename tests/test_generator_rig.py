"""The neural generator's rig: identity codes, the rig's frame, torch kinematics against the mesh
engine's numpy ones, inverse skinning, the nearest-vertex lookup, D_P and the rig cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.mesh import MeshEngineOptions, orbit_camera, portrait_framing
from puppet.avatar import Appearance, Avatar, list_avatars, load_avatar, random_avatar
from puppet.avatar_model import DRIVEN_BONES, build_avatar_model, driven_rotations
from puppet.contract import NUM_EXPRESSIONS, Blendshape
from puppet.errors import AssetError
from puppet.generator import rig as rig_module
from puppet.generator.identity import IDENTITY_DIM, IDENTITY_LAYOUT, identity_code
from puppet.generator.rig import (APG_VISIBLE_HEIGHT, NUM_RIG_BONES, RigTensors, camera_to_generator,
                                  canonical_pose, farthest_point_sample, load_rig, portrait_cam2world, rig_for_avatar,
                                  rig_from_model, save_rig)
from puppet.generator.skinning import (LbsSmoother, PoseDeformer, apply_affine, apply_volume,
                                       axis_angle_to_matrix_torch, bone_transforms, driven_rotations_torch,
                                       expression_offsets, half_resolution, inverse_skinning_volume, invert_affine,
                                       nearest_vertex, posed_skin, smoothness_target)

SKIN, FACE = 512, 256
OPTIONS = MeshEngineOptions()


@pytest.fixture(scope="module")
def ada():
    """(model, framing, rig) of a built-in avatar with hair down to the shoulders."""
    model = build_avatar_model(load_avatar("ada"), OPTIONS.bake)
    framing = portrait_framing(model, OPTIONS.fov_deg, OPTIONS.frame_heights, OPTIONS.top_margin)
    return model, framing, rig_from_model(model, framing, OPTIONS.fov_deg, SKIN, FACE)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("rigs")


@pytest.fixture(scope="module")
def farouk(cache):
    """A second (bald) avatar's rig, baked through the cache."""
    return rig_for_avatar(load_avatar("farouk"), SKIN, FACE, cache_dir=cache)


def _poses(rng: np.random.Generator, n: int, scale: float = 0.6) -> np.ndarray:
    poses = rng.normal(0.0, scale, (n, 6, 3))
    poses[0] = 0.0
    poses[1, 4] = [0.0, 0.0, 2.9]  # a shoulder turned almost half a turn
    return poses


# ----------------------------------------------------------------------------- identity

def test_identity_codes_of_the_builtin_avatars_are_distinct_and_in_range():
    codes = np.stack([identity_code(load_avatar(n)) for n in list_avatars()])
    assert codes.shape == (len(list_avatars()), IDENTITY_DIM) and codes.dtype == np.float32
    assert codes.min() >= -1.0 and codes.max() <= 1.0
    assert len({c.tobytes() for c in codes}) == len(codes)
    assert np.array_equal(identity_code(load_avatar("ada")), identity_code(load_avatar("ada")))
    assert identity_code(random_avatar(3)).shape == (IDENTITY_DIM,)


def test_identity_code_layout():
    base = Avatar("x", appearance=Appearance(hair_style="bob", neckline="v", clothing=(0.2, 0.4, 0.6)))
    code = identity_code(base)
    assert IDENTITY_DIM == 36
    assert np.allclose(code[IDENTITY_LAYOUT["trim"]], code[IDENTITY_LAYOUT["clothing"]])  # no trim: clothing
    assert np.allclose(code[IDENTITY_LAYOUT["clothing"]], [-0.6, -0.2, 0.2])
    assert np.array_equal(code[IDENTITY_LAYOUT["hair_style"]], [-1, -1, -1, 1, -1, -1])  # none buzz short BOB
    assert np.array_equal(code[IDENTITY_LAYOUT["neckline"]], [-1, 1, -1])
    trimmed = Avatar("x", appearance=Appearance(hair_style="bob", neckline="v", clothing=(0.2, 0.4, 0.6),
                                                clothing_trim=(1.0, 1.0, 1.0)))
    diff = np.nonzero(identity_code(trimmed) != code)[0]
    assert set(diff) == set(range(IDENTITY_LAYOUT["trim"].start, IDENTITY_LAYOUT["trim"].stop))
    renamed = Avatar("y", appearance=base.appearance)
    assert np.array_equal(identity_code(renamed), code)


# ----------------------------------------------------------------------------- the rig

@pytest.mark.slow  # bakes an avatar (module fixture)
def test_rig_frame_and_sizes(ada):
    model, framing, rig = ada
    assert rig.num_skin_vertices == SKIN and rig.num_face_vertices == FACE and rig.num_bones == NUM_RIG_BONES
    assert np.allclose(rig.to_generator(framing.target), 0.0)
    height = 2 * framing.distance * np.tan(np.radians(OPTIONS.fov_deg) / 2)
    assert rig.unit == pytest.approx(height / APG_VISIBLE_HEIGHT)
    # the portrait shows 0.398 generator units at the target, as APG's camera does
    assert 2 * rig.portrait_distance * np.tan(np.radians(rig.fov_deg) / 2) == pytest.approx(APG_VISIBLE_HEIGHT)
    assert np.allclose(rig.portrait_pivot, rig.to_generator(framing.pivot), atol=1e-6)
    assert np.allclose(rig.skin_rest, rig.to_generator(model.rest[rig.skin_vertex_ids]), atol=1e-6)
    assert np.allclose(rig.to_contract(rig.skin_rest), model.rest[rig.skin_vertex_ids], atol=1e-6)
    assert np.allclose(rig.skin_weights.sum(1), 1.0, atol=1e-5) and rig.skin_weights.min() >= 0
    assert set(rig.face_vertex_ids) <= set(model.expression_index)
    assert rig.bone_names[rig.head_bone] == "head"
    assert [rig.bone_names[d] for d in rig.driven] == list(DRIVEN_BONES)
    # hair is skinned too: some sampled hair vertices follow the head
    hair = model.regions["hair"][rig.skin_vertex_ids]
    assert hair.any() and (rig.skin_weights[hair, rig.head_bone] > 0.99).any()


def test_farthest_point_sample_is_deterministic_and_spread():
    pts = np.random.default_rng(0).uniform(size=(2000, 3))
    a = farthest_point_sample(pts, 100, seed=1)
    assert np.array_equal(a, farthest_point_sample(pts, 100, seed=1)) and len(set(a)) == 100
    assert np.array_equal(farthest_point_sample(pts, 300, seed=1)[:100], a)  # prefixes are samples too
    # spread: the nearest pair of an FPS sample is far apart compared with a random one
    def min_gap(p):
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)
        return d[np.triu_indices(len(p), 1)].min()
    assert min_gap(pts[a]) > 3 * min_gap(pts[:100])
    with pytest.raises(ValueError):
        farthest_point_sample(pts, 2001)


@pytest.mark.slow  # bakes an avatar (module fixture)
def test_torch_driven_rotations_match_numpy(ada):
    model, _, rig = ada
    poses = _poses(np.random.default_rng(1), 6, scale=1.0)
    c = torch.tensor(rig.corrections)
    got = driven_rotations_torch(torch.tensor(poses), c, rig.shoulder_share).numpy()
    want = np.stack([driven_rotations(p, rig.corrections, rig.shoulder_share) for p in poses])
    assert np.abs(got - want).max() < 1e-9
    # a per-sample share works too
    share = torch.tensor([0.0, 0.3, 1.0, 0.5, 0.2, 0.7], dtype=torch.float64)
    got = driven_rotations_torch(torch.tensor(poses), c, share).numpy()
    want = np.stack([driven_rotations(p, rig.corrections, float(s)) for p, s in zip(poses, share)])
    assert np.abs(got - want).max() < 1e-9


@pytest.mark.slow  # bakes an avatar (module fixture)
def test_bone_transforms_and_posed_skin_match_the_mesh_engine(ada):
    model, _, rig = ada
    rt = RigTensors.stack([rig])
    poses = _poses(np.random.default_rng(2), 4)
    for pose in poses:
        g = bone_transforms(rt, torch.tensor(pose[None], dtype=torch.float32))[0].double().numpy()
        rot, trans = model.bone_transforms(pose)
        for k, name in enumerate(rig.bone_names):
            b = model.skeleton.index(name)
            assert np.abs(g[k, :3, :3] - rot[b]).max() < 1e-5
            t_gen = (rot[b] @ rig.origin + trans[b] - rig.origin) / rig.unit  # the same map, generator frame
            assert np.abs(g[k, :3, 3] - t_gen).max() < 1e-5
        want = rig.to_generator(model.pose(np.zeros(NUM_EXPRESSIONS, np.float32), pose)[rig.skin_vertex_ids])
        got = posed_skin(rt, torch.tensor(pose[None], dtype=torch.float32))[0].numpy()
        assert np.abs(got - want).max() < 1e-4


@pytest.mark.slow  # bakes an avatar (module fixture)
def test_expression_offsets_match_the_mesh_engine(ada):
    model, _, rig = ada
    e = np.random.default_rng(3).uniform(0, 1, NUM_EXPRESSIONS).astype(np.float32)
    e[[Blendshape[n] for n in Blendshape.__members__ if n.startswith("eyeLook")]] = 0.0  # no gaze
    rest = canonical_pose(rig)  # (the zero pose is SMPL's T-pose: it raises anny's arms)
    want = rig.to_generator(model.pose(e, rest)[rig.face_vertex_ids]) - rig.face_rest
    got = expression_offsets(RigTensors.stack([rig]), torch.tensor(e[None]))[0].numpy()
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(want).max() > 1e-3  # the faceunits do move these vertices


@pytest.mark.slow  # bakes an avatar (module fixture)
def test_canonical_pose_leaves_the_rig_at_rest(ada):
    rig = ada[2]
    rt = RigTensors.stack([rig])
    g = bone_transforms(rt, torch.tensor(canonical_pose(rig)[None], dtype=torch.float32))
    assert torch.allclose(g, torch.eye(4).expand_as(g), atol=1e-6)
    zero = bone_transforms(rt, torch.zeros(1, 6, 3))  # the T-pose: the arms go up
    assert (zero[0, rig.driven[-1], :3, :3] - torch.eye(3)).abs().max() > 0.3


@pytest.mark.slow  # bakes an avatar (module fixture)
def test_gradients_are_finite_at_the_rest_pose(ada):
    rt = RigTensors.stack([ada[2]])
    pose = torch.zeros(1, 6, 3, requires_grad=True)
    posed_skin(rt, pose).sum().backward()
    assert torch.isfinite(pose.grad).all()
    aa = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix_torch(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()


# ----------------------------------------------------------------------------- inverse skinning

def test_invert_affine_matches_linalg_inv():
    g = torch.Generator().manual_seed(0)
    m = torch.eye(4, dtype=torch.float64).repeat(64, 1, 1)
    m[:, :3, :] += 0.5 * torch.randn(64, 3, 4, generator=g, dtype=torch.float64)  # general affine
    assert torch.allclose(invert_affine(m), torch.linalg.inv(m), atol=1e-9)
    r = axis_angle_to_matrix_torch(torch.randn(64, 2, 3, generator=g, dtype=torch.float64))
    blend = 0.3 * r[:, 0] + 0.7 * r[:, 1]  # a blended (not rigid) skinning matrix
    m[:, :3, :3] = blend
    assert torch.allclose(invert_affine(m), torch.linalg.inv(m), atol=1e-9)


@pytest.mark.slow  # bakes an avatar (module fixture)
def test_raw_inverse_takes_posed_skin_vertices_back_to_rest(ada):
    """Each 2x2x2 block of the grid holds one posed skin vertex: its nearest vertex is itself,
    so its raw inverse matrix maps it exactly back to its rest position (every bone, blends too)."""
    rig = ada[2]
    rt = RigTensors.stack([rig])
    pose = torch.tensor(_poses(np.random.default_rng(4), 2)[1:], dtype=torch.float32)
    posed = posed_skin(rt, pose)  # 1 x 512 x 3
    half = posed.reshape(1, 8, 8, 8, 3)
    grid = half[:, :, None, :, None, :, None].expand(1, 8, 2, 8, 2, 8, 2, 3).reshape(1, 16, 16, 16, 3)
    assert torch.allclose(half_resolution(grid), half)
    raw = inverse_skinning_volume(rt, pose, grid, chunk_size=100)
    assert raw.shape == (1, 16, 8, 8, 8)
    back = apply_volume(raw, half).reshape(1, -1, 3)
    assert (back - torch.tensor(rig.skin_rest)).abs().max() < 1e-4


@pytest.mark.slow  # bakes an avatar (module fixture)
def test_pose_deformer_undoes_a_head_turn(ada):
    """A box of points inside the turned head goes back to where it was at rest."""
    model, _, rig = ada
    rt = RigTensors.stack([rig])
    pose = np.zeros((1, 6, 3), np.float32)
    pose[0, 3] = [0.1, 0.6, 0.0]  # the head: a nod and a turn
    pose = torch.tensor(pose)
    centre = rig.to_generator(model.landmarks.head_pivot + np.array([0.0, 0.09, 0.01]))  # the middle of the skull
    axes = [torch.linspace(-0.03, 0.03, n) for n in (12, 12, 8)]
    rest = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)[None] + torch.tensor(centre, dtype=torch.float32)
    g_head = bone_transforms(rt, pose)[0, rig.head_bone]
    posed = apply_affine(g_head, rest)
    assert (posed - rest).norm(dim=-1).mean() > 0.01  # the turn moves the points
    out = PoseDeformer(chunk_size=97)(rt, pose, posed)
    assert out.canonical.shape == (1, 12, 12, 8, 3)
    assert out.raw.shape == (1, 16, 4, 6, 6) and out.smoothed.shape == (1, 16, 8, 12, 12)
    assert (out.canonical - rest).abs().max() < 1e-4


def test_nearest_vertex_chunks_match_brute_force():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 1000, 3, generator=g)
    v = torch.randn(2, 300, 3, generator=g)
    brute = torch.cdist(q, v)
    for chunk in (1000, 333, 64):
        idx = nearest_vertex(q, v, chunk_size=chunk)
        assert idx.shape == (2, 1000)
        picked = torch.gather(brute, 2, idx[..., None])[..., 0]
        assert torch.allclose(picked, brute.min(-1).values, atol=1e-5)


# ----------------------------------------------------------------------------- D_P

def test_lbs_smoother_keeps_constants_and_normalises_its_weights():
    smoother = LbsSmoother()
    assert smoother.weight1.shape == (16, 1, 5, 9, 9)
    constant = torch.arange(16.0).reshape(1, 16, 1, 1, 1).expand(2, 16, 4, 6, 7).contiguous()
    out = smoother(constant)
    assert out.shape == (2, 16, 8, 12, 14)
    assert torch.allclose(out, constant[:, :, :1, :1, :1].expand_as(out), atol=1e-5)
    with torch.no_grad():  # any positive weights: still an average
        smoother.weight1.mul_(torch.rand_like(smoother.weight1) * 3 + 0.1)
        smoother.weight2.mul_(torch.rand_like(smoother.weight2) * 3 + 0.1)
    for w in smoother.normalized_weights():
        assert torch.allclose(w.sum(dim=(1, 2, 3, 4)), torch.ones(16), atol=1e-6)
    assert torch.allclose(smoother(constant), constant[:, :, :1, :1, :1].expand_as(out), atol=1e-4)


def test_smoothness_target_is_the_smoother_at_initialisation():
    raw = torch.randn(1, 16, 4, 6, 6, generator=torch.Generator().manual_seed(6))
    smoother = LbsSmoother()
    assert torch.allclose(smoother(raw), smoothness_target(raw), atol=1e-5)
    with torch.no_grad():
        smoother.weight1[:, :, 2, 4, 4] += 1.0
    loss = (smoother(raw) - smoothness_target(raw)).square().mean()
    assert loss > 1e-4
    loss.backward()
    assert smoother.weight1.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- batches, cache, cameras

@pytest.mark.slow  # bakes an avatar (module fixture)
def test_rig_tensors_stack_two_avatars(ada, farouk):
    rig = ada[2]
    rt = RigTensors.stack([rig, farouk])
    assert rt.batch_size == 2 and rt.skin_rest.shape == (2, SKIN, 3)
    assert rt.skin_weights.shape == (2, SKIN, NUM_RIG_BONES)
    assert rt.face_basis.shape == (2, FACE, NUM_EXPRESSIONS, 3) and rt.skin_rest.dtype == torch.float32
    assert rt.parents == tuple(rig.parents) and rt.head_bone == rig.head_bone
    poses = torch.tensor(_poses(np.random.default_rng(7), 2), dtype=torch.float32)
    both = posed_skin(rt, poses)
    for i, one in enumerate((rig, farouk)):
        assert torch.allclose(both[i], posed_skin(RigTensors.stack([one]), poses[i:i + 1])[0], atol=1e-6)
    picked = rt.take([1, 1, 0])
    assert picked.batch_size == 3 and torch.equal(picked.skin_rest[2], rt.skin_rest[0])
    assert rt.to(dtype=torch.float64).heads.dtype == torch.float64
    with pytest.raises(ValueError):
        RigTensors.stack([rig, rig_from_model(ada[0], ada[1], OPTIONS.fov_deg, 256, FACE)])


@pytest.mark.slow  # bakes an avatar (module fixture)
def test_rig_cache_round_trip(farouk, cache, tmp_path, monkeypatch):
    def no_bake(*_args, **_kwargs):
        raise AssertionError("the cached rig should have been used")

    monkeypatch.setattr(rig_module, "build_avatar_model", no_bake)
    again = rig_for_avatar(load_avatar("farouk"), SKIN, FACE, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1
    for name in ("skin_rest", "skin_weights", "heads", "parents", "face_basis", "corrections", "portrait_pivot"):
        assert np.array_equal(getattr(again, name), getattr(farouk, name))
    assert again.bone_names == farouk.bone_names and again.unit == farouk.unit and again.name == "farouk"
    path = save_rig(farouk, tmp_path / "r.npz")
    assert np.array_equal(load_rig(path).face_rest, farouk.face_rest)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    for bad in ("bad.npz", "foreign.npz", "missing.npz"):
        with pytest.raises(AssetError):
            load_rig(tmp_path / bad)


@pytest.mark.slow  # bakes an avatar (module fixture)
def test_cameras_in_the_generator_frame(ada):
    model, framing, rig = ada
    frontal = portrait_cam2world(rig, 0.0, 0.0)
    assert np.allclose(frontal[:3, 3], [0.0, 0.0, rig.portrait_distance], atol=1e-6)
    assert np.allclose(frontal[:3, :3], np.eye(3), atol=1e-9)  # right +X, up +Y, looking down -Z
    view = orbit_camera(framing, 0.3, -0.2, OPTIONS.fov_deg)[0].view  # contract frame
    assert np.allclose(camera_to_generator(rig, np.linalg.inv(view)), portrait_cam2world(rig, 0.3, -0.2), atol=1e-6)


@pytest.mark.slow  # bakes an avatar (module fixture)
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # the exporter's (tracing) notes
def test_pose_deformer_exports_to_onnx(ada, tmp_path):
    """Static shapes, no inverse or scatter ops: the TorchScript ONNX exporter takes the deformer
    and onnxruntime gives the same points, also for inputs other than the traced ones."""
    ort = pytest.importorskip("onnxruntime")
    import dataclasses

    rig = ada[2]
    rt = RigTensors.stack([rig])

    class Deform(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.deformer = PoseDeformer(chunk_size=300)

        def forward(self, skin_rest, skin_weights, heads, shoulder_share, pose, points):
            r = dataclasses.replace(rt, skin_rest=skin_rest, skin_weights=skin_weights, heads=heads,
                                    shoulder_share=shoulder_share)
            return self.deformer(r, pose, points).canonical

    module = Deform().eval()
    with torch.no_grad():
        module.deformer.smoother.weight1.mul_(torch.rand_like(module.deformer.smoother.weight1) + 0.5)
    g = torch.Generator().manual_seed(8)
    pose = torch.tensor(canonical_pose(rig)[None] + 0.3, dtype=torch.float32)
    points = torch.randn(1, 12, 12, 8, 3, generator=g) * 0.15
    args = (rt.skin_rest, rt.skin_weights, rt.heads, rt.shoulder_share, pose, points)
    path = tmp_path / "deformer.onnx"
    torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Inverse", "ScatterND", "ScatterElements", "Loop", "If"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = (rt.skin_rest, rt.skin_weights, rt.heads, torch.tensor([0.8]),
             pose + 0.4 * torch.randn(1, 6, 3, generator=g), points * 1.1)
    for inputs in (args, other):
        got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), inputs)})[0]
        with torch.no_grad():
            want = module(*inputs).numpy()
        assert np.abs(got - want).max() < 1e-4
