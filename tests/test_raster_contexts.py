"""Two rasterisers in one process (e.g. a portrait and a face camera, or two engines): each must
draw into its own context, whichever was created last."""

from __future__ import annotations

import numpy as np

from engines.raster import Camera, Lighting, MeshRasterizer, look_at


def _triangle_image(raster: MeshRasterizer) -> np.ndarray:
    vertices = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]], dtype=np.float32)
    raster.set_mesh(np.array([[0, 1, 2]], dtype=np.int32), np.full((3, 3), 0.8, dtype=np.float32))
    camera = Camera(look_at(np.array([0.0, 0.0, 3.0]), np.zeros(3), np.array([0.0, 1.0, 0.0])),
                    fov_y_deg=40.0, near=0.1, far=10.0)
    return raster.render(vertices, camera, Lighting(), background=(0.0, 0.0, 0.0, 0.0))


def test_first_rasteriser_still_draws_after_a_second_is_created():
    first = MeshRasterizer(48, 48, samples=0)
    try:
        before = _triangle_image(first)
        assert before[..., 3].mean() > 20  # the triangle covers a good part of the frame
        second = MeshRasterizer(32, 32, samples=0)
        try:
            small = _triangle_image(second)
            again = _triangle_image(first)
            np.testing.assert_array_equal(again, before)
            assert small.shape == (32, 32, 4) and small[..., 3].mean() > 20
        finally:
            second.close()
        np.testing.assert_array_equal(_triangle_image(first), before)
    finally:
        first.close()
