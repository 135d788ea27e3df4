"""anny's head in the contract frame, and the committed landmark correspondence.

These build anny's head model (about a minute the first time, then cached in $ANNY_CACHE_DIR).
"""

import numpy as np
import pytest

from puppet.contract import Blendshape
from puppet.face_model import ANNY_TO_CONTRACT, anny_to_contract, eyeball_directions, head_colors, head_mesh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head():
    return head_mesh()


def test_change_of_basis_is_a_proper_rotation():
    np.testing.assert_allclose(ANNY_TO_CONTRACT @ ANNY_TO_CONTRACT.T, np.eye(3))
    assert np.isclose(np.linalg.det(ANNY_TO_CONTRACT), 1.0)
    # anny: Z up, faces -Y; contract: Y up, faces +Z; anny's +X is the person's left in both.
    np.testing.assert_allclose(anny_to_contract(np.array([0, 0, 1.0])), [0, 1, 0])
    np.testing.assert_allclose(anny_to_contract(np.array([0, -1.0, 0])), [0, 0, 1])


def test_head_faces_forward_and_up(head):
    nose = head.rest[np.argmax(head.rest[:, 2])]  # the most forward point
    assert nose[1] > head.rest[:, 1].min() + 0.05  # above the neck
    assert abs(nose[0]) < 0.01  # on the midline
    assert head.rest[:, 1].max() - head.rest[:, 1].min() > 0.2  # ~25 cm tall, Y up


def test_jaw_open_moves_the_chin_down(head):
    chin = np.argmin(head.rest[:, 1] + 10 * np.abs(head.rest[:, 0]) - head.rest[:, 2])
    e = np.zeros(52)
    e[Blendshape.jawOpen] = 1.0
    assert head.vertices(e)[chin, 1] < head.rest[chin, 1] - 0.01


def test_eyes_are_marked_for_the_iris(head):
    eyes = eyeball_directions(head)
    marked = eyes[:, 3] > 0
    assert 60 <= marked.sum() <= 400
    np.testing.assert_allclose(np.linalg.norm(eyes[marked, :3], axis=1), 1, atol=1e-5)
    colors = head_colors(head)
    assert colors.shape == (len(head.rest), 3) and colors.min() >= 0 and colors.max() <= 1


def test_committed_correspondence_matches_this_anny(head):
    """The solver's basis file must describe the anny that is installed."""
    from trackers.face_solver import BASIS_FILE

    with np.load(BASIS_FILE) as data:
        tri, bary = data["triangle"], data["barycentric"].astype(np.float64)
        neutral, basis = data["neutral"], data["expression_basis"]
    points = np.einsum("nk,nkd->nd", bary, head.rest[head.faces[tri]])
    np.testing.assert_allclose(points, neutral, atol=1e-5)
    jaw = np.einsum("nk,nkd->nd", bary, head.expression_basis[Blendshape.jawOpen][head.faces[tri]])
    np.testing.assert_allclose(jaw, basis[Blendshape.jawOpen], atol=1e-5)


def test_facemesh_on_a_render_lands_on_the_stored_correspondence(head):
    """Render the head, track it, lift the landmarks onto the mesh: they must fall where the
    committed correspondence says (the derivation is reproducible)."""
    import mediapipe as mp

    from engines.raster import Camera, MeshRasterizer, lift_pixels, look_at
    from puppet.face_model import surface_points
    from trackers.face_solver import load_face_basis

    IMAGE_SIZE = 512
    center = np.array([0.0, 0.13, 0.05])
    camera = Camera(look_at(center + np.array([0.0, 0.0, 1.3]), center), fov_y_deg=14.0)
    with MeshRasterizer(IMAGE_SIZE, IMAGE_SIZE) as raster:
        raster.set_mesh(head.faces, head_colors(head), eyeball_directions(head))
        image = np.ascontiguousarray(raster.render(head.rest, camera, background=(0.3, 0.35, 0.4, 1))[..., :3])
        tri_map, bary_map = raster.render_triangle_ids(head.rest, camera)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as fm:
        result = fm.process(image)
    assert result.multi_face_landmarks, "FaceMesh must find anny's rendered head"
    px = np.array([[p.x * IMAGE_SIZE, p.y * IMAGE_SIZE] for p in result.multi_face_landmarks[0].landmark])
    tri, bary = lift_pixels(px, tri_map, bary_map)
    ok = tri >= 0
    lifted = surface_points(head.rest, head.faces, tri[ok], bary[ok])
    stored = load_face_basis().neutral[ok]
    err_mm = 1e3 * np.linalg.norm(lifted - stored, axis=1)
    assert ok.mean() > 0.9
    assert np.median(err_mm) < 2.5
