"""The neural generator's networks and renderer (tiny config): config, networks, rays, intersections,
compositing, bake / render / render_direct, checkpoints and the ONNX export of the per-frame render.

The rig is synthetic (a made-up skeleton and skin with the rig's sizes) so these tests need no
avatar bake; tests/test_generator_rig.py checks the rig against real avatars."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.mesh import Framing, orbit_camera
from puppet.errors import AssetError, OutputError
from puppet.generator.checkpoint import load_checkpoint, save_checkpoint
from puppet.generator.config import GeneratorConfig
from puppet.generator.identity import IDENTITY_DIM
from puppet.generator.manifolds import composite, first_crossings
from puppet.generator.model import BakedIdentity, FrameRenderModule, Generator, texel_centers
from puppet.generator.networks import (ExpressionDeformNet, ManifoldPredictor, MappingNetwork, ModulatedConv2d,
                                       RadianceNet, StyleRRDBNet)
from puppet.generator.rays import (RayCamera, camera_rays, lattice_ndc, orbit_camera_generator, portrait_camera,
                                   sample_distances)
from puppet.generator.rig import RIG_BONES, Rig, RigTensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = GeneratorConfig.tiny()
B = 2


def synthetic_rig(seed: int, skin: int = TINY.skin_vertices, face: int = TINY.face_vertices) -> Rig:
    """A head-and-shoulders-like rig in the generator frame: a head ball skinned to the head bone,
    a neck, shoulder blobs on the collars and a torso block on the static bone."""
    rng = np.random.default_rng(seed)
    heads = np.array([[0, -0.25, 0], [0, -0.08, -0.02], [0, -0.06, -0.02], [0, -0.04, -0.02], [0, -0.01, -0.02],
                      [0.03, -0.12, 0], [-0.03, -0.12, 0], [0.1, -0.12, 0], [-0.1, -0.12, 0], [0.15, -0.14, 0],
                      [-0.15, -0.14, 0]], np.float32)
    parents = np.array([-1, 0, 1, 2, 3, 0, 0, 5, 6, 7, 8])
    parts = [(4, np.array([0, 0.06, 0.0]), 0.08), (2, np.array([0, -0.06, -0.01]), 0.04),
             (7, np.array([0.13, -0.14, 0]), 0.05), (8, np.array([-0.13, -0.14, 0]), 0.05),
             (0, np.array([0, -0.2, 0]), 0.12)]
    bone = rng.integers(0, len(parts), skin)
    rest = np.empty((skin, 3))
    weights = np.zeros((skin, len(RIG_BONES)), np.float32)
    for i, (b, c, r) in enumerate(parts):
        m = bone == i
        d = rng.normal(size=(m.sum(), 3))
        rest[m] = c + r * d / np.linalg.norm(d, axis=1, keepdims=True)
        weights[m, b] = 1.0
    face_rest = np.array([0, 0.06, 0.0]) + 0.08 * np.abs(rng.normal(size=(face, 3))) * [1, 1, 1] / 2
    return Rig(
        name=f"synthetic{seed}", origin=np.zeros(3), unit=1.1, skin_rest=rest.astype(np.float32),
        skin_weights=weights, skin_vertex_ids=np.arange(skin), bone_names=RIG_BONES, heads=heads, parents=parents,
        driven=np.arange(1, len(RIG_BONES)), head_bone=4, corrections=np.tile(np.eye(3), (6, 1, 1)),
        shoulder_share=0.5, face_rest=face_rest.astype(np.float32),
        face_basis=(0.003 * rng.normal(size=(face, 52, 3))).astype(np.float32), face_vertex_ids=np.arange(face),
        portrait_target=np.zeros(3, np.float32), portrait_pivot=np.array([0, -0.01, -0.02], np.float32),
        portrait_distance=0.199 / math.tan(math.radians(7.0)), fov_deg=14.0)


@pytest.fixture(scope="module")
def rig() -> RigTensors:
    return RigTensors.stack([synthetic_rig(0), synthetic_rig(1)])


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    return Generator(TINY)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(B, IDENTITY_DIM, generator=g) * 2 - 1
    noise = torch.randn(B, TINY.noise_dim, generator=g)
    expression = torch.rand(B, 52, generator=g) * 0.5
    pose = torch.randn(B, 6, 3, generator=g) * 0.15
    return z, noise, expression, pose


def _camera(rig: RigTensors, yaw=(0.0, 0.3), pitch=(0.0, -0.1)) -> RayCamera:
    return portrait_camera(rig, torch.tensor(yaw), torch.tensor(pitch), TINY.portrait_fov_deg, TINY.ray_half_depth)


# ----------------------------------------------------------------------------- config

def test_published_config_follows_the_facts():
    c = GeneratorConfig.published()
    assert c.identity_dim == IDENTITY_DIM and c.noise_dim == 80
    assert c.levels == 24 and c.level_values[0] == 23.0 and c.level_values[-1] == 8.0
    assert np.allclose(np.diff(c.level_values), -15 / 23)
    assert (c.ray_resolution, c.coarse_samples, c.fine_samples) == (128, 64, 256)
    assert (c.map_resolution, c.hr_map_resolution, c.map_channels) == (128, 512, 36)
    assert c.sr_style_dim == 192 and (c.sr_nf, c.sr_nb, c.sr_gc, c.sr_up_channels) == (64, 4, 32, (64, 32))
    assert (c.portrait_fov_deg, c.face_fov_deg, c.alpha_delta) == (14.0, 12.0, 0.04)
    assert RadianceNet(c.radiance_layers, c.radiance_width, c.feature_dim).modulation_dim == 4608


@pytest.mark.parametrize("config", [GeneratorConfig.published(), TINY])
def test_config_round_trips_through_json(config):
    again = GeneratorConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


@pytest.mark.parametrize("change, words", [
    ({"bogus": 1}, "unknown key"),
    ({"levels": "24"}, "levels must be int"),
    ({"levels": 24.0}, "levels must be int"),
    ({"use_pose_deformation": 1}, "use_pose_deformation must be bool"),
    ({"noise_dim": True}, "noise_dim must be int"),
    ({"manifold_center": [0.0, 0.0]}, "manifold_center"),
    ({"alpha_delta": float("nan")}, "alpha_delta"),
    ({"sr_up_channels": [16, 16]}, "one entry per x2 step"),
    ({"levels": 0}, "levels must be > 0"),
    ({"level_min": 30.0}, "must exceed"),
])
def test_config_rejects_bad_dicts(change, words):
    with pytest.raises(ValueError, match=words):
        GeneratorConfig.from_dict({**TINY.to_dict(), **change})


def test_config_rejects_missing_keys_and_non_objects():
    d = TINY.to_dict()
    del d["levels"]
    with pytest.raises(ValueError, match="missing key"):
        GeneratorConfig.from_dict(d)
    with pytest.raises(ValueError, match="JSON object"):
        GeneratorConfig.from_dict([1, 2])


# ----------------------------------------------------------------------------- networks

def test_network_shapes_and_ranges():
    torch.manual_seed(0)
    m = MappingNetwork(10, 16, 7, layers=4)
    assert m(torch.randn(3, 10)).shape == (3, 7)
    net = RadianceNet(layers=3, width=16, feature_dim=5)
    rgb, sigma, feat = net(torch.rand(2, 9, 3) * 0.4 - 0.2, F.normalize(torch.randn(2, 9, 3), dim=-1),
                           torch.randn(2, net.modulation_dim))
    assert rgb.shape == (2, 9, 3) and sigma.shape == (2, 9, 1) and feat.shape == (2, 9, 5)
    assert rgb.min() > 0 and rgb.max() < 1


def test_manifold_predictor_starts_as_nested_spheres():
    torch.manual_seed(0)
    m = ManifoldPredictor(width=16, hidden_layers=2, center=(0.0, 0.1, -0.6), radii=(0.5, 0.75), levels=(23.0, 8.0))
    d = F.normalize(torch.randn(100, 3), dim=-1)
    c = torch.tensor([0.0, 0.1, -0.6])
    for r, level in ((0.5, 8.0), (0.75, 23.0), (0.625, 15.5)):
        assert torch.allclose(m(c + r * d).squeeze(-1), torch.full((100,), level), atol=1e-4)


def test_expression_deformation_starts_at_zero_and_can_learn():
    torch.manual_seed(0)
    net = ExpressionDeformNet(condition_dim=IDENTITY_DIM + 52, input_dim=7, width=16, layers=2, mapping_width=16)
    pts = torch.rand(2, 50, 3) - 0.5
    d = net(pts, torch.randn(2, IDENTITY_DIM + 52))
    assert d.shape == (2, 50, 3) and torch.count_nonzero(d) == 0
    (d * torch.randn_like(d)).sum().backward()
    assert net.out.weight.grad.abs().sum() > 0 and net.out.bias.grad.abs().sum() > 0


def test_modulated_conv_equals_convolving_with_the_modulated_weight():
    torch.manual_seed(0)
    conv = ModulatedConv2d(5, 6, 3)
    x, style = torch.randn(2, 5, 8, 8), torch.randn(2, 5)
    out = conv(x, style)
    for i in range(2):
        w = conv.weight * style[i][None, :, None, None]
        w = w * torch.rsqrt(w.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        ref = F.conv2d(x[i:i + 1], w, conv.bias, padding=1)
        assert torch.allclose(out[i:i + 1], ref, atol=1e-5)


@pytest.mark.parametrize("up", [(8,), (8, 8)])
def test_style_rrdb_upscales_by_its_scale(up):
    torch.manual_seed(0)
    sr = StyleRRDBNet(in_ch=6, out_ch=4, nf=8, nb=1, gc=4, up_channels=up)
    assert sr.scale == 2 ** len(up) and sr.style_dim == 8 + sum(up) + up[-1]
    out = sr(torch.randn(3, 6, 5, 7), torch.randn(3, sr.style_dim))
    assert out.shape == (3, 4, 5 * sr.scale, 7 * sr.scale) and out.min() > 0 and out.max() < 1


# ----------------------------------------------------------------------------- rays

def test_orbit_camera_matches_the_mesh_engine():
    target, pivot, distance = np.array([0.0, 0.02, 0.01]), np.array([0.01, 0.05, -0.02]), 1.62
    framing = Framing(target=target, pivot=pivot, distance=distance)
    yaw, pitch = torch.tensor([0.0, 0.4, -0.7]), torch.tensor([0.0, -0.2, 0.3])
    cams = orbit_camera_generator(torch.tensor(target).expand(3, 3), torch.tensor(pivot).expand(3, 3),
                                  torch.full((3,), distance, dtype=torch.float64), yaw.double(), pitch.double(), 14.0, 0.22)
    for i in range(3):
        mesh_cam, _ = orbit_camera(framing, float(yaw[i]), float(pitch[i]), 14.0)
        assert np.allclose(cams.cam2world[i].numpy(), np.linalg.inv(mesh_cam.view), atol=1e-9)
    assert torch.allclose(cams.near, torch.full((3,), distance - 0.22, dtype=torch.float64))
    assert torch.allclose(cams.far, torch.full((3,), distance + 0.22, dtype=torch.float64))


@pytest.mark.parametrize("size, grid", [(16, 16), (64, 16)])
def test_rays_pass_through_pixel_centres(size, grid):
    framing = Framing(target=np.zeros(3), pivot=np.array([0.0, 0.05, 0.0]), distance=1.6)
    mesh_cam, _ = orbit_camera(framing, 0.3, 0.1, 14.0)
    cam = RayCamera(torch.tensor(np.linalg.inv(mesh_cam.view))[None], 14.0, torch.ones(1), torch.ones(1) * 2)
    origins, dirs = camera_rays(cam, size, grid)
    pix = mesh_cam.project((origins[:, None, None] + 1.3 * dirs)[0].reshape(-1, 3).numpy(), (size, size))
    centres = (lattice_ndc(size, grid).double().numpy() + 1) / 2 * size  # x right, y down
    assert np.allclose(pix.reshape(grid, grid, 2)[..., 0], centres[None, :], atol=1e-6)
    assert np.allclose(pix.reshape(grid, grid, 2)[..., 1], centres[:, None], atol=1e-6)
    if grid == size:
        assert np.allclose(centres, np.arange(size) + 0.5)


def test_sample_distances_uniform_and_jittered():
    near, far = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])
    t = sample_distances(near, far, 5, shape=(3,))
    assert t.shape == (2, 3, 5) and torch.allclose(t[1, 0], torch.tensor([2.0, 2.5, 3.0, 3.5, 4.0]))
    j = sample_distances(near, far, 5, torch.Generator().manual_seed(0), jitter=True, shape=(3,))
    assert not torch.equal(j, t) and (j.diff(dim=-1) >= 0).all()
    assert (j >= near[:, None, None]).all() and (j <= far[:, None, None]).all()
    assert ((j - t).abs() <= 0.5 * (far - near)[:, None, None] / 4 + 1e-6).all()


# ----------------------------------------------------------------------------- intersections and compositing

def test_first_crossings_on_a_sphere_field():
    """s = 50 |x - c| along rays down -z: level l is first met where the ray enters the sphere
    of radius l / 50 (front cap); rays that miss it get valid 0."""
    c = torch.tensor([0.0, 0.0, -0.5])
    rho = torch.tensor([0.0, 0.1, 0.25, 0.45])  # lateral offset of each ray
    z = torch.linspace(0.5, -1.5, 400)
    pts = torch.stack([rho[:, None].expand(4, 400), torch.zeros(4, 400), z.expand(4, 400)], dim=-1)
    s = 50 * torch.linalg.vector_norm(pts - c, dim=-1)  # s changes by > min_gap per sample
    levels = torch.tensor([20.0, 15.0, 10.0])
    cross = first_crossings(s[None], levels, (pts[None],), min_gap=0.05)
    inter, valid = cross.values[0][0], cross.valid[0]
    for i, r in enumerate(rho.tolist()):
        for j, lv in enumerate(levels.tolist()):
            radius = lv / 50
            if r < radius:
                assert valid[i, j] == 1
                expect = -0.5 + math.sqrt(radius ** 2 - r ** 2)
                assert abs(inter[i, j, 2].item() - expect) < 2e-4  # linear interpolation of a curved s
                assert abs(torch.linalg.vector_norm(inter[i, j] - c).item() - radius) < 1e-4
            else:
                assert valid[i, j] == 0


def test_first_crossings_take_the_nearest_and_fall_back_without_a_gap():
    s = torch.tensor([[5.0, 3.0, 1.0, 4.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    x = torch.arange(5.0).reshape(1, 5, 1).expand(2, 5, 1)
    cross = first_crossings(s, torch.tensor([2.0, 4.5, 2.01]), (x,), min_gap=0.05)
    # row 0: level 2 first crossed between samples 1 and 2 (3 -> 1): x = 1.5; 4.5 between 0 and 1: 0.25
    assert torch.allclose(cross.values[0][0, :2, 0], torch.tensor([1.5, 0.25]))
    assert cross.valid[0].tolist() == [1.0, 1.0, 1.0]
    # row 1: flat s = level 2 crosses (>= and <=) but the gap is below min_gap -> the far point
    assert cross.valid[1].tolist() == [1.0, 0.0, 0.0] and cross.values[0][1, 0, 0] == 1.0


def test_composite_sorts_by_depth_and_keeps_rgba():
    rgb = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    alpha = torch.tensor([[0.5, 0.25, 0.0]])
    depth = torch.tensor([[3.0, 1.0, 0.5]])  # order: green (alpha 0), red, blue
    out = composite(rgb, alpha, depth)
    t_blue = (1 - 0.25 + 1e-10) * (1 + 1e-10)
    assert torch.allclose(out.rgb[0], torch.tensor([0.25, 0.0, 0.5 * t_blue]), atol=1e-6)
    assert torch.allclose(out.alpha[0], torch.tensor(1 - 0.75 * 0.5), atol=1e-6)
    assert torch.allclose(out.depth[0], torch.tensor((0.25 * 1 + 0.375 * 3) / 0.625), atol=1e-5)
    empty = composite(rgb, torch.zeros(1, 3), depth)
    assert empty.alpha.item() == 0 and empty.rgb.abs().sum() == 0  # no background colour


# ----------------------------------------------------------------------------- the generator

def test_bake_render_and_render_direct_shapes(generator, rig):
    z, noise, expression, pose = _inputs()
    c = TINY
    with torch.no_grad():
        styles = generator.styles(z, noise)
        baked = generator.bake_styles(styles)
        assert baked.lr_maps.shape == (B, c.levels, c.map_channels, c.map_resolution, c.map_resolution)
        assert baked.hr_maps.shape == (B, c.levels, 4, c.hr_map_resolution, c.hr_map_resolution)
        for size in (32, 64):
            out = generator.render(baked, rig, expression, pose, _camera(rig), size)
            assert out.rgb.shape == (B, 3, size, size) and out.alpha.shape == (B, 1, size, size)
            assert out.depth.shape == (B, 1, size, size)
            assert out.alpha.min() >= 0 and out.alpha.max() <= 1 and (out.rgb <= out.alpha + 1e-6).all()
            assert out.alpha.mean() > 0.1  # the initial shells cover the view
        direct = generator.render_direct(styles, rig, expression, pose, _camera(rig), 64)
        g = c.ray_resolution
        assert direct.rgb.shape == (B, 3, 64, 64) and direct.alpha.shape == (B, 1, 64, 64)
        aux = direct.aux
        assert aux.neutral_points.shape == aux.displacement.shape == (B, g * g * c.fine_samples, 3)
        assert aux.intersections.shape == (B, g * g, c.levels, 3) and aux.valid.shape == (B, g * g, c.levels)
        assert aux.pose.raw.shape == (B, 16, c.coarse_samples // 2, g // 2, g // 2)
        assert aux.pose.smoothed.shape == (B, 16, c.coarse_samples, g, g)
        small = generator.render(baked, rig, expression, pose, _camera(rig), 20)  # fewer rays than configured
        assert small.rgb.shape == (B, 3, 20, 20)


def test_render_direct_gradients_reach_every_stage_one_part(rig):
    torch.manual_seed(1)
    gen = Generator(TINY)
    z, noise, expression, pose = _inputs(1)
    out = gen.render_direct(gen.styles(z, noise), rig, expression, pose, _camera(rig), 32)
    loss = (out.rgb * torch.rand_like(out.rgb)).sum() + out.alpha.sum()
    loss.backward()
    for name in ("radiance.trunk", "radiance.color", "radiance.sigma_heads", "radiance.rgb_heads", "radiance_mapping",
                 "manifold.out", "deform.out", "pose_deformer.smoother"):
        grads = [p.grad for n, p in gen.named_parameters() if n.startswith(name)]
        assert grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads), name
        assert sum(gr.abs().sum() for gr in grads) > 0, name
    # second step: with D_e's and M's output layers moved, their hidden layers get gradients too
    with torch.no_grad():
        gen.deform.out.weight.normal_(0, 0.01)
        gen.manifold.out.weight.normal_(0, 0.01)
    gen.zero_grad()
    out = gen.render_direct(gen.styles(z, noise), rig, expression, pose, _camera(rig), 32)
    (out.rgb.sum() + out.alpha.sum()).backward()
    for name in ("deform.mapping", "deform.film", "manifold.hidden"):
        assert sum(p.grad.abs().sum() for n, p in gen.named_parameters() if n.startswith(name)) > 0, name


def test_render_gradients_reach_the_super_resolution(generator, rig):
    z, noise, expression, pose = _inputs()
    generator.zero_grad()
    baked = generator.bake(z, noise)
    out = generator.render(baked, rig, expression, pose, _camera(rig), 32)
    (out.rgb.sum() + out.alpha.sum()).backward()
    for name in ("sr.", "sr_mapping", "radiance.feature_heads"):
        assert sum(p.grad.abs().sum() for n, p in generator.named_parameters() if n.startswith(name)) > 0, name
    generator.zero_grad()


def test_rendering_is_deterministic_for_a_fixed_identity(generator, rig):
    z, noise, expression, pose = _inputs()
    with torch.no_grad():
        baked = generator.bake(z, noise)
        a = generator.render(baked, rig, expression, pose, _camera(rig), 32)
        b = generator.render(generator.bake(z, noise), rig, expression, pose, _camera(rig), 32)
        assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha, b.alpha)
        other = generator.render(generator.bake(-z, noise), rig, expression, pose, _camera(rig), 32)
        assert not torch.allclose(a.rgb, other.rgb)
        turned = generator.render(baked, rig, expression, pose, _camera(rig, yaw=(0.5, 0.8)), 32)
        assert not torch.allclose(a.alpha, turned.alpha)


def test_bake_maps_cover_the_canonical_box(generator):
    coords = texel_centers(4, 0.22)
    assert torch.allclose(coords, torch.tensor([-0.165, -0.055, 0.055, 0.165]))
    z, noise, _, _ = _inputs()
    with torch.no_grad():
        baked = generator.bake(z, noise)
    alpha = baked.lr_maps[:, :, 3]
    assert (alpha > 0).float().mean() > 0.95  # every level's initial shell crosses (nearly) the whole box


def test_render_reads_each_level_map_at_its_canonical_intersection():
    """HR maps that encode their own texel coordinates (linear ramps, exact under bilinear
    lookup): a render that shows one level only must show the canonical (x, y) of that level's
    intersection at every valid pixel, with alpha 1 exactly there (row 0 of a map = lowest y)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, use_pose_deformation=False)
    gen = Generator(cfg)
    e, rh, lv, shown = cfg.map_extent, cfg.hr_map_resolution, cfg.levels, 5
    ramp = (texel_centers(rh, e) / e + 1) / 2
    maps = torch.zeros(1, lv, 4, rh, rh)
    maps[:, :, 0] = ramp[None, :]  # varies along columns: x
    maps[:, :, 1] = ramp[:, None]  # varies along rows: y
    maps[:, shown, 3] = 1.0
    baked = BakedIdentity(z_id=torch.zeros(1, IDENTITY_DIM), lr_maps=maps, hr_maps=maps)
    cam = orbit_camera_generator(torch.zeros(1, 3), torch.zeros(1, 3), torch.full((1,), 1.62), torch.tensor([0.3]),
                                 torch.tensor([0.2]), 14.0, 0.22)
    size = cfg.ray_resolution
    with torch.no_grad():
        out = gen.render(baked, None, torch.zeros(1, 52), torch.zeros(1, 6, 3), cam, size)
    inter = out.aux.intersections[0, :, shown]  # (size * size, 3), rows first
    valid = out.aux.valid[0, :, shown] > 0
    inside = valid & (inter[:, :2].abs() < e * (1 - 1 / rh)).all(-1)
    assert inside.float().mean() > 0.5
    rgb, alpha = out.rgb[0].reshape(3, -1), out.alpha[0].reshape(-1)
    assert torch.allclose(alpha[valid], torch.ones(int(valid.sum()))) and (alpha[~valid] == 0).all()
    expect = (inter[inside, :2] / e + 1) / 2
    assert torch.allclose(rgb[:2, inside].t(), expect, atol=1e-5)


def test_render_without_pose_deformation_needs_no_rig():
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, use_pose_deformation=False)
    gen = Generator(cfg)
    assert gen.pose_deformer is None
    z, noise, expression, pose = _inputs()
    cam = orbit_camera_generator(torch.zeros(B, 3), torch.zeros(B, 3), torch.full((B,), 1.62), torch.zeros(B),
                                 torch.zeros(B), 14.0, 0.22)
    with torch.no_grad():
        out = gen.render(gen.bake(z, noise), None, expression, pose, cam, 32)
    assert out.aux.pose is None and out.alpha.shape == (B, 1, 32, 32)


def test_bad_inputs_raise_value_errors(generator, rig):
    z, noise, expression, pose = _inputs()
    with pytest.raises(ValueError, match="noise"):
        generator.styles(z, noise[:, :3])
    styles = generator.styles(z, noise)
    with pytest.raises(ValueError, match="pose"):
        generator.render_direct(styles, rig, expression, pose[:, :5], _camera(rig), 32)
    with pytest.raises(ValueError, match="needs the rig"):
        generator.render_direct(styles, None, expression, pose, _camera(rig), 32)


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(generator, rig, tmp_path):
    z, noise, expression, pose = _inputs()
    path = save_checkpoint(tmp_path / "g.safetensors", generator, {"step": 12, "note": "tiny"})
    loaded, extra = load_checkpoint(path)
    assert extra == {"step": 12, "note": "tiny"} and loaded.config == generator.config
    with torch.no_grad():
        a = generator.render(generator.bake(z, noise), rig, expression, pose, _camera(rig), 32)
        b = loaded.render(loaded.bake(z, noise), rig, expression, pose, _camera(rig), 32)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha, b.alpha)
    half = save_checkpoint(tmp_path / "h.safetensors", generator, {}, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    loaded16, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded16.parameters())
    with torch.no_grad():
        c = loaded16.render(loaded16.bake(z, noise), rig, expression, pose, _camera(rig), 32)
    assert (c.rgb - a.rgb).abs().max() < 0.05


def test_checkpoint_rejects_missing_corrupt_and_foreign_files(generator, tmp_path):
    from safetensors.torch import save_file

    good = save_checkpoint(tmp_path / "good.safetensors", generator, {})
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01not a checkpoint at all" * 10)
    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    meta = {"format": "puppet-generator", "version": "1", "config": json.dumps({**TINY.to_dict(), "levels": "x"}),
            "extra": "{}"}
    save_file({"w": torch.zeros(3)}, str(tmp_path / "badconfig.safetensors"), metadata=meta)
    state = {k: v.contiguous() for k, v in generator.state_dict().items()}
    state["radiance.color.linear.weight"] = torch.zeros(3, 3)
    meta_ok = {**meta, "config": json.dumps(TINY.to_dict())}
    save_file(state, str(tmp_path / "badshape.safetensors"), metadata=meta_ok)
    del state["radiance.color.linear.weight"]
    save_file(state, str(tmp_path / "missingtensor.safetensors"), metadata=meta_ok)
    cases = {"absent.safetensors": "does not exist", "truncated.safetensors": "not a puppet generator checkpoint",
             "garbage.safetensors": "not a puppet generator checkpoint",
             "foreign.safetensors": "not a puppet generator checkpoint",
             "other.safetensors": "not a puppet generator checkpoint", "badconfig.safetensors": "invalid generator config",
             "badshape.safetensors": "has shape", "missingtensor.safetensors": "do not match"}
    for name, words in cases.items():
        with pytest.raises(AssetError, match=words) as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(OutputError, match="cannot write checkpoint"):
        save_checkpoint(tmp_path / "no" / "such" / "dir.safetensors", generator, {})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "x.safetensors", generator, {"bad": object()})


# ----------------------------------------------------------------------------- export

def test_per_frame_render_exports_to_onnx_with_4d_grid_sample(generator, rig):
    import onnx
    import onnxruntime as ort

    z, noise, expression, pose = _inputs()
    size = 32
    with torch.no_grad():
        baked = generator.bake(z, noise)
        cam = _camera(rig)
        module = FrameRenderModule(generator, size, cam.fov_deg, rig).eval()
        args = (baked.hr_maps, z, expression, pose, cam.cam2world, cam.near, cam.far) + module.rig_inputs(rig)
        ref_rgb, ref_alpha = module(*args)
        buf = io.BytesIO()
        names = ["hr_maps", "z_id", "expression", "pose", "cam2world", "near", "far", *module.RIG_TENSOR_FIELDS]
        torch.onnx.export(module, args, buf, opset_version=17, dynamo=False, input_names=names,
                          output_names=["rgb", "alpha"])
    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(buf.getvalue()))
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    grid_samples = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(grid_samples) == 1
    assert all(ranks[n.input[0]] == 4 and ranks[n.input[1]] == 4 for n in grid_samples)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    given = dict(zip(names, args))
    feeds = {i.name: given[i.name].numpy() for i in session.get_inputs()}  # unused rig fields are pruned
    rgb, alpha = session.run(None, feeds)
    assert np.abs(rgb - ref_rgb.numpy()).max() < 1e-3 and np.abs(alpha - ref_alpha.numpy()).max() < 1e-3
