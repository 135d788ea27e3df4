"""The headless rasteriser: geometry, lighting, the triangle-id pass and the procedural iris."""

import numpy as np
import pytest

from engines.raster import Camera, EyeStyle, MeshRasterizer, look_at, vertex_normals

SIZE = 128


def _quad(z=0.0):
    verts = np.array([[-0.5, -0.5, z], [0.5, -0.5, z], [0.5, 0.5, z], [-0.5, 0.5, z]], np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    return verts, faces


def _sphere(n=24, radius=0.5):
    lat, lon = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False), indexing="ij")
    verts = radius * np.stack([np.sin(lat) * np.sin(lon), np.cos(lat), np.sin(lat) * np.cos(lon)], -1).reshape(-1, 3)
    faces = []
    for i in range(n - 1):
        for j in range(2 * n):
            a, b = i * 2 * n + j, i * 2 * n + (j + 1) % (2 * n)
            c, d = a + 2 * n, b + 2 * n
            faces += [[a, c, b], [b, c, d]]
    return verts, np.array(faces, np.int32)


@pytest.fixture(scope="module")
def raster():
    with MeshRasterizer(SIZE, SIZE) as r:
        yield r


def _front_camera(distance=3.0, fov=30.0):
    return Camera(look_at(np.array([0, 0, distance]), np.zeros(3)), fov_y_deg=fov)


def test_quad_coverage_matches_projection(raster):
    verts, faces = _quad()
    raster.set_mesh(faces, np.full((4, 3), 0.8))
    camera = _front_camera()
    img = raster.render(verts, camera, background=(0, 0, 0, 0))
    assert img.shape == (SIZE, SIZE, 4) and img.dtype == np.uint8
    covered = img[..., 3] > 127
    corners = camera.project(verts, (SIZE, SIZE))
    lo, hi = corners.min(0), corners.max(0)
    ys, xs = np.nonzero(covered)
    assert abs(xs.min() - lo[0]) <= 1.5 and abs(xs.max() + 1 - hi[0]) <= 1.5
    assert abs(ys.min() - lo[1]) <= 1.5 and abs(ys.max() + 1 - hi[1]) <= 1.5
    assert img[0, 0, 3] == 0  # background stays transparent


def test_person_left_is_image_right(raster):
    """Contract frame seen from the front camera: +X (the person's left) shows on image right."""
    verts, faces = _quad()
    verts = verts * 0.2 + np.array([0.4, 0.3, 0.0])
    raster.set_mesh(faces, np.full((4, 3), 0.8))
    img = raster.render(verts, _front_camera())
    ys, xs = np.nonzero(img[..., 3] > 127)
    assert xs.mean() > SIZE / 2 and ys.mean() < SIZE / 2


def test_lighting_follows_the_key_light(raster):
    verts, faces = _sphere()
    raster.set_mesh(faces, np.full((len(verts), 3), 0.7))
    img = raster.render(verts, _front_camera()).astype(float)
    left = img[SIZE // 2, SIZE // 2 - 20, :3].mean()
    right = img[SIZE // 2, SIZE // 2 + 20, :3].mean()
    assert right > left + 5  # the default key light comes from +X, the upper front


def test_triangle_ids_and_barycentrics_reconstruct_pixels(raster):
    verts, faces = _quad()
    raster.set_mesh(faces, np.full((4, 3), 0.5))
    camera = _front_camera()
    tri, bary = raster.render_triangle_ids(verts, camera)
    covered = tri >= 0
    assert set(np.unique(tri[covered])) == {0, 1}
    assert tri[0, 0] == -1
    np.testing.assert_allclose(bary[covered].sum(-1), 1.0, atol=1e-5)
    corners = camera.project(verts, (SIZE, SIZE))
    ys, xs = np.nonzero(covered)
    pick = np.random.default_rng(0).choice(len(xs), 200, replace=False)
    for y, x in zip(ys[pick], xs[pick]):
        p = bary[y, x] @ corners[faces[tri[y, x]]]
        assert np.hypot(p[0] - (x + 0.5), p[1] - (y + 0.5)) < 0.6


def test_procedural_iris_is_dark_at_the_front_pole(raster):
    verts, faces = _sphere()
    eye = np.zeros((len(verts), 4), np.float32)
    eye[:, :3] = verts / np.linalg.norm(verts, axis=1, keepdims=True)
    eye[:, 3] = 1
    raster.set_mesh(faces, np.full((len(verts), 3), 0.95), eye)
    img = raster.render(verts, _front_camera(), eyes=EyeStyle(iris_color=(0.1, 0.4, 0.8))).astype(float)
    c = SIZE // 2
    pupil, iris, sclera = img[c, c, :3], img[c, c + 9, :3], img[c, c + 24, :3]
    assert pupil.mean() < 40
    assert iris[2] > iris[0] + 20  # blue iris
    assert sclera.mean() > iris.mean()


def test_vertex_normals_of_a_sphere_point_outwards():
    verts, faces = _sphere()
    n = vertex_normals(verts, faces)
    inner = np.einsum("ij,ij->i", n, verts / np.linalg.norm(verts, axis=1, keepdims=True))
    assert np.median(inner) > 0.99


def test_bad_inputs_are_rejected(raster):
    verts, faces = _quad()
    with pytest.raises(ValueError):
        raster.set_mesh(faces[:, :2], np.zeros((4, 3)))
    raster.set_mesh(faces, np.zeros((4, 3)))
    with pytest.raises(ValueError):
        raster.render(verts[:3], _front_camera())
