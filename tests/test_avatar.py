"""Avatars: the description (JSON, built-ins, random) and the baked geometry (anny in the
contract frame, the SMPL -> anny joint map and its rest corrections, posing)."""

import json
import time

import numpy as np
import pytest

from puppet.avatar import (
    BUILTIN_AVATARS,
    Appearance,
    Avatar,
    Phenotype,
    avatar_from_dict,
    avatar_to_dict,
    hex_to_rgb,
    list_avatars,
    load_avatar,
    random_avatar,
    rgb_to_hex,
    save_avatar,
)
from puppet.avatar_model import (
    DRIVEN_BONES,
    SMPL_REST_BONES,
    driven_rotations,
    forward_kinematics,
    gaze_rotation,
    linear_blend_skinning,
    rest_corrections,
)
from puppet.contract import Blendshape, SmplJoint, gaze_from_expression, pose_row
from puppet.errors import AssetError
from puppet.face_model import ANNY_TO_CONTRACT, anny_to_contract
from puppet.rotations import axis_angle_to_matrix, fractional_rotation

# ----------------------------------------------------------------------------- description


def test_json_round_trip(tmp_path):
    for avatar in (BUILTIN_AVATARS["ada"], random_avatar(3)):
        path = save_avatar(avatar, tmp_path / f"{avatar.name}.json")
        doc = json.loads(path.read_text())
        assert doc["format"] == "puppet.avatar" and doc["version"] == 1
        back = load_avatar(path)
        assert back.name == avatar.name and back.phenotype == avatar.phenotype
        # Colours go through 8-bit hex: equal to 1/255.
        for field in ("skin", "iris", "brows", "lips", "hair", "clothing"):
            np.testing.assert_allclose(getattr(back.appearance, field), getattr(avatar.appearance, field), atol=0.5 / 255)
        assert back.appearance.hair_style == avatar.appearance.hair_style
        assert back.appearance.neckline == avatar.appearance.neckline
        assert save_avatar(back, tmp_path / "again.json").read_text() == path.read_text()


@pytest.mark.parametrize("content, message", [
    ("not json {", "cannot read"),
    ('{"format": "puppet.params", "version": 1}', "not a puppet avatar"),
    ('[1, 2, 3]', "not a puppet avatar"),
    ('{"format": "puppet.avatar", "version": 99, "name": "x"}', "newer puppet"),
    ('{"format": "puppet.avatar", "version": "1", "name": "x"}', "version"),
    ('{"format": "puppet.avatar", "version": 1, "name": "x", "colour": "#000000"}', "unknown avatar keys"),
    ('{"format": "puppet.avatar", "version": 1, "name": "x", "phenotype": {"age": 1.5}}', "age"),
    ('{"format": "puppet.avatar", "version": 1, "name": "x", "phenotype": {"gendre": 1}}', "unknown phenotype"),
    ('{"format": "puppet.avatar", "version": 1, "name": "x", "phenotype": {"age": "old"}}', "number"),
    ('{"format": "puppet.avatar", "version": 1, "name": "x", "appearance": {"skin": "red"}}', "#rrggbb"),
    ('{"format": "puppet.avatar", "version": 1, "name": "x", "appearance": {"hair_style": "mohawk"}}', "hair_style"),
    ('{"format": "puppet.avatar", "version": 1, "name": ""}', "name"),
])
def test_bad_or_foreign_files_are_asset_errors(tmp_path, content, message):
    path = tmp_path / "avatar.json"
    path.write_text(content)
    with pytest.raises(AssetError, match=message):
        load_avatar(path)


def test_unknown_name_lists_the_built_ins():
    with pytest.raises(AssetError, match="ada"):
        load_avatar("nobody-by-this-name")


def test_built_in_avatars_are_many_and_diverse():
    names = list_avatars()
    assert len(names) >= 8 and list(names) == sorted(names)
    avatars = [load_avatar(n) for n in names]
    assert all(load_avatar(a.name) is a for a in avatars)
    keys = {json.dumps({k: v for k, v in avatar_to_dict(a).items() if k != "name"}, sort_keys=True) for a in avatars}
    assert len(keys) == len(avatars)  # all different, not just renamed
    genders = [a.phenotype.gender for a in avatars]
    assert min(genders) == 0.0 and max(genders) == 1.0
    luminance = [0.2126 * a.appearance.skin[0] + 0.7152 * a.appearance.skin[1] + 0.0722 * a.appearance.skin[2]
                 for a in avatars]
    assert max(luminance) > 0.75 and min(luminance) < 0.25  # light to deep skin tones
    assert len({a.appearance.hair_style for a in avatars}) >= 5
    assert len({a.appearance.clothing for a in avatars}) == len(avatars)
    ages = [a.phenotype.age for a in avatars]
    assert max(ages) - min(ages) > 0.3


def test_random_avatars_are_deterministic_and_valid():
    assert random_avatar(7) == random_avatar(7)
    assert random_avatar(7) != random_avatar(8)
    for seed in range(30):
        a = random_avatar(seed)
        assert avatar_from_dict(avatar_to_dict(a)).phenotype == a.phenotype
    assert len({random_avatar(s).appearance.hair_style for s in range(30)}) >= 4


def test_description_validation_and_colours():
    with pytest.raises(ValueError):
        Phenotype(age=-0.1)
    with pytest.raises(ValueError):
        Appearance(skin=(1.2, 0.5, 0.5))
    with pytest.raises(ValueError):
        Avatar(name=" ")
    assert hex_to_rgb("#ff8000") == (1.0, 128 / 255, 0.0)
    assert rgb_to_hex(hex_to_rgb("#12abef")) == "#12abef"


# ----------------------------------------------------------------------------- pure maths (no anny)

_REST_ARM_L = axis_angle_to_matrix(np.array([0.0, 0.0, -1.05])) @ axis_angle_to_matrix(np.array([0.13, 0.0, 0.0]))
_REST_ARM_R = axis_angle_to_matrix(np.array([0.0, 0.0, 1.05])) @ axis_angle_to_matrix(np.array([0.13, 0.0, 0.0]))


def _aa(m: np.ndarray) -> np.ndarray:
    from puppet.rotations import matrix_to_axis_angle

    return matrix_to_axis_angle(m)


def _pose(**rows) -> np.ndarray:
    pose = np.zeros((6, 3))
    for name, value in rows.items():
        pose[pose_row(SmplJoint[name.upper()])] = value
    return pose


def test_change_of_basis_is_a_proper_rotation():
    np.testing.assert_allclose(ANNY_TO_CONTRACT @ ANNY_TO_CONTRACT.T, np.eye(3))
    assert np.isclose(np.linalg.det(ANNY_TO_CONTRACT), 1.0)
    np.testing.assert_allclose(anny_to_contract(np.array([0, 0, 1.0])), [0, 1, 0])  # anny up -> Y
    np.testing.assert_allclose(anny_to_contract(np.array([0, -1.0, 0])), [0, 0, 1])  # anny forward -> +Z
    np.testing.assert_allclose(anny_to_contract(np.array([1.0, 0, 0])), [1, 0, 0])  # the left stays +X


def test_joint_map_tables_agree():
    from puppet.avatar_model import SMPL_TO_ANNY

    assert sorted(DRIVEN_BONES) == sorted(b for bones in SMPL_TO_ANNY.values() for b in bones)
    assert set(SMPL_TO_ANNY) == set(SmplJoint)


def test_driven_rotations_compose_to_the_smpl_rotations():
    rng = np.random.default_rng(0)
    corrections = rest_corrections({SmplJoint.LEFT_SHOULDER: np.array([0.66, -0.75, 0.02]),
                                    SmplJoint.RIGHT_SHOULDER: np.array([-0.66, -0.75, 0.02])})
    for _ in range(10):
        pose = rng.normal(0, 0.4, (6, 3))
        out = dict(zip(DRIVEN_BONES, driven_rotations(pose, corrections, 0.3)))
        r = {j: axis_angle_to_matrix(pose[pose_row(j)]) for j in SmplJoint}
        np.testing.assert_allclose(out["neck01"] @ out["neck02"] @ out["neck03"], r[SmplJoint.NECK], atol=1e-9)
        np.testing.assert_allclose(out["neck01"], fractional_rotation(r[SmplJoint.NECK], 1 / 3), atol=1e-9)
        np.testing.assert_allclose(out["head"], r[SmplJoint.HEAD], atol=1e-9)
        for side, collar, shoulder in (("L", SmplJoint.LEFT_COLLAR, SmplJoint.LEFT_SHOULDER),
                                       ("R", SmplJoint.RIGHT_COLLAR, SmplJoint.RIGHT_SHOULDER)):
            c = corrections[pose_row(shoulder)]
            np.testing.assert_allclose(out[f"clavicle.{side}"], r[collar], atol=1e-9)
            whole = out[f"shoulder01.{side}"] @ out[f"upperarm01.{side}"]
            np.testing.assert_allclose(whole, r[shoulder] @ c.T, atol=1e-9)
            # The world arm points where SMPL's would: G_anny d_anny = G_smpl d_smpl.
            d_smpl = np.asarray(SMPL_REST_BONES[shoulder])
            np.testing.assert_allclose(r[collar] @ whole @ (c @ d_smpl), r[collar] @ r[shoulder] @ d_smpl, atol=1e-9)


def test_shoulder_share_splits_one_rotation():
    corrections = rest_corrections({SmplJoint.LEFT_SHOULDER: np.array([1.0, -1.0, 0.0]),
                                    SmplJoint.RIGHT_SHOULDER: np.array([-1.0, -1.0, 0.0])})
    out = dict(zip(DRIVEN_BONES, driven_rotations(np.zeros((6, 3)), corrections, 0.25)))
    whole = _aa(out["shoulder01.L"] @ out["upperarm01.L"])
    np.testing.assert_allclose(_aa(out["shoulder01.L"]), 0.25 * whole, atol=1e-9)
    assert np.degrees(np.linalg.norm(whole)) == pytest.approx(45.0 - np.degrees(np.arctan2(0.016, 0.258)), abs=1.0)


def test_forward_kinematics_and_skinning_on_a_chain():
    # A two-bone chain along +X: turning the root 90 degrees about Z swings the child's end to +Y.
    heads = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    local = np.stack([axis_angle_to_matrix(np.array([0, 0, np.pi / 2])), np.eye(3)])
    rot, trans = forward_kinematics(local, heads, np.array([-1, 0]))
    tip = rot[1] @ np.array([2.0, 0, 0]) + trans[1]
    np.testing.assert_allclose(tip, [0, 2, 0], atol=1e-12)
    verts = np.array([[2.0, 0, 0], [0.5, 0, 0]], np.float32)
    weights = np.array([[0.0, 1.0], [0.5, 0.5]], np.float32)
    out = linear_blend_skinning(verts, weights, rot, trans)
    np.testing.assert_allclose(out[0], [0, 2, 0], atol=1e-6)
    np.testing.assert_allclose(out[1], [0, 0.5, 0], atol=1e-6)
    from scipy import sparse

    np.testing.assert_allclose(linear_blend_skinning(verts, sparse.csr_matrix(weights), rot, trans), out)


def test_gaze_signs():
    np.testing.assert_allclose(gaze_rotation(0.3, 0.0) @ [0, 0, 1], [np.sin(0.3), 0, np.cos(0.3)], atol=1e-12)
    assert (gaze_rotation(0.0, 0.2) @ [0, 0, 1])[1] < 0  # positive pitch looks down
    e = np.zeros(52)
    e[Blendshape.eyeLookOutLeft] = e[Blendshape.eyeLookInRight] = 1.0
    g = gaze_from_expression(e)
    assert g[0, 0] > 0.5 and g[1, 0] > 0.5 and np.all(g[:, 1] == 0)  # both eyes to the person's left


# ----------------------------------------------------------------------------- baked geometry (anny)


@pytest.fixture(scope="module")
def model():
    from puppet.avatar_model import build_avatar_model

    return build_avatar_model(load_avatar("bruno"))


def _bone_end(model, pose, head: str, tail: str) -> np.ndarray:
    rot, trans = model.bone_transforms(pose)
    sk = model.skeleton
    a = rot[sk.index(head)] @ sk.heads[sk.index(head)] + trans[sk.index(head)]
    b = rot[sk.index(head)] @ sk.heads[sk.index(tail)] + trans[sk.index(head)]
    return b - a


def _below_horizontal(d: np.ndarray) -> float:
    return float(np.degrees(np.arcsin(-d[1] / np.linalg.norm(d))))


@pytest.mark.slow
def test_the_rig_has_the_mapped_bones(model):
    for name in DRIVEN_BONES + ("eye.L", "eye.R", "upperarm02.L", "lowerarm01.R"):
        assert name in model.skeleton.names, name
    sk = model.skeleton
    assert sk.names[0] == "torso" and sk.parents[0] == -1
    assert all(sk.parents[i] < i for i in range(1, len(sk.names)))  # parents first
    assert sk.names[sk.parents[sk.index("head")]] == "neck03"
    assert sk.parents[sk.index("neck01")] == -1 and sk.parents[sk.index("clavicle.L")] == -1  # on the torso


@pytest.mark.slow
def test_anny_body_is_in_the_contract_frame(model):
    lm = model.landmarks
    nose = model.rest[lm.nose_tip]
    left_eye, right_eye = lm.eye_centers
    assert left_eye[0] > 0.02 and right_eye[0] < -0.02  # the person's left is +X
    assert nose[2] > left_eye[2] and nose[1] < left_eye[1]  # faces +Z, nose below the eyes
    assert lm.head_top > lm.eye_centers[:, 1].mean() > lm.chin_y > lm.shoulder_y  # Y up
    assert abs(nose[0]) < 0.005


@pytest.mark.slow
def test_identity_pose_is_a_t_pose_and_the_rest_arm_hangs_63_degrees(model):
    for side, joint, sign in (("L", SmplJoint.LEFT_SHOULDER, 1), ("R", SmplJoint.RIGHT_SHOULDER, -1)):
        arm = _bone_end(model, np.zeros((6, 3)), f"upperarm01.{side}", f"lowerarm01.{side}")
        smpl = np.asarray(SMPL_REST_BONES[joint])
        angle = np.degrees(np.arccos(np.clip(arm @ smpl / np.linalg.norm(arm) / np.linalg.norm(smpl), -1, 1)))
        assert angle < 0.5 and sign * arm[0] > 0.9 * np.linalg.norm(arm)
        assert abs(_below_horizontal(arm)) < 4.0  # horizontal (SMPL's arm dips 3.5 degrees)
        rest_arm = _REST_ARM_L if side == "L" else _REST_ARM_R
        hanging = _bone_end(model, _pose(**{joint.name.lower(): _aa(rest_arm)}), f"upperarm01.{side}",
                            f"lowerarm01.{side}")
        assert _below_horizontal(hanging) == pytest.approx(63.0, abs=2.0)
        assert sign * hanging[0] > 0


@pytest.mark.slow
def test_anny_rests_in_an_a_pose(model):
    """The correction is real: anny's own rest arm is some 45 degrees below horizontal."""
    from puppet.avatar_model import ANNY_REST_BONES

    sk = model.skeleton
    a, b = ANNY_REST_BONES[SmplJoint.LEFT_SHOULDER]
    assert 35.0 < _below_horizontal(sk.heads[sk.index(b)] - sk.heads[sk.index(a)]) < 60.0
    c = model.corrections[pose_row(SmplJoint.LEFT_SHOULDER)]
    assert np.degrees(np.linalg.norm(_aa(c))) > 30.0
    np.testing.assert_allclose(model.corrections[pose_row(SmplJoint.NECK)], np.eye(3))


@pytest.mark.slow
def test_head_yaw_turns_the_nose_towards_the_persons_left(model):
    lm = model.landmarks
    rest_dir = model.rest[lm.nose_tip] - lm.head_pivot
    for yaw in (np.radians(30), np.radians(-20)):
        v = model.pose(np.zeros(52), _pose(head=[0, yaw, 0]))
        d = v[lm.nose_tip] - lm.head_pivot
        turned = np.arctan2(d[0], d[2]) - np.arctan2(rest_dir[0], rest_dir[2])
        assert np.degrees(turned) == pytest.approx(np.degrees(yaw), abs=1.0)


@pytest.mark.slow
def test_neck_and_head_compose_like_smpl(model):
    rng = np.random.default_rng(1)
    sk = model.skeleton
    for _ in range(5):
        neck, head = rng.normal(0, 0.3, 3), rng.normal(0, 0.3, 3)
        rot, _ = model.bone_transforms(_pose(neck=neck, head=head))
        np.testing.assert_allclose(rot[sk.index("head")], axis_angle_to_matrix(neck) @ axis_angle_to_matrix(head),
                                   atol=1e-9)
        np.testing.assert_allclose(rot[sk.index("neck03")], axis_angle_to_matrix(neck), atol=1e-9)
        np.testing.assert_allclose(rot[sk.index("neck01")], fractional_rotation(axis_angle_to_matrix(neck), 1 / 3),
                                   atol=1e-9)
    # The torso never moves.
    v = model.pose(np.zeros(52), rng.normal(0, 0.3, (6, 3)))
    static = model.skin_weights.shape[0] < len(model.rest)
    assert static
    fixed = np.setdiff1d(np.arange(len(model.rest)), model.skin_index)
    np.testing.assert_array_equal(v[fixed], model.rest[fixed])


@pytest.mark.slow
def test_collar_turns_the_clavicle_in_the_world(model):
    r = axis_angle_to_matrix(np.array([0.0, 0.0, 0.25]))  # shrug the left shoulder up
    rest = _bone_end(model, np.zeros((6, 3)), "clavicle.L", "shoulder01.L")
    moved = _bone_end(model, _pose(left_collar=_aa(r)), "clavicle.L", "shoulder01.L")
    np.testing.assert_allclose(moved, r @ rest, atol=1e-9)
    assert moved[1] > rest[1]


@pytest.mark.slow
def test_expression_gaze_and_hair_move_what_they_should(model):
    lm = model.landmarks
    e = np.zeros(52, np.float32)
    e[Blendshape.jawOpen] = 1.0
    v = model.pose(e, np.zeros((6, 3)))
    assert v[lm.chin, 1] < model.rest[lm.chin, 1] - 0.01
    # Gaze turns the eyeballs rigidly about their centres.
    left = model.eye_index[0]
    v = model.pose(np.zeros(52), np.zeros((6, 3)), gaze=np.array([[0.4, 0.0], [0.4, 0.0]]))
    front = left[np.argmax(model.rest[left, 2])]
    assert v[front, 0] > model.rest[front, 0] + 0.003
    np.testing.assert_allclose(np.linalg.norm(v[left] - model.eye_centers[0], axis=1),
                               np.linalg.norm(model.rest[left] - model.eye_centers[0], axis=1), atol=1e-5)
    # Hair on the crown turns with the head.
    hair = np.nonzero(model.regions["hair"])[0]
    crown = hair[np.argmax(model.rest[hair, 1])]
    r = axis_angle_to_matrix(np.array([0.0, 0.5, 0.0]))
    v = model.pose(np.zeros(52), _pose(head=[0, 0.5, 0]))
    expected = r @ (model.rest[crown] - lm.head_pivot) + lm.head_pivot
    np.testing.assert_allclose(v[crown], expected, atol=1e-4)


@pytest.mark.slow
def test_portrait_crop_and_parts(model):
    r = model.regions
    assert 6000 < model.num_vertices < 20000  # the portrait, not the whole body
    assert model.rest[:, 1].min() > model.landmarks.shoulder_y - 0.35
    for name in ("eyes", "mouth", "hair", "clothing", "lips", "brows", "features", "skin"):
        assert r[name].shape == (model.num_vertices,) and r[name].any(), name
    assert model.colors.shape == (model.num_vertices, 3) and model.decals.shape == (model.num_vertices, 8)
    assert 0.0 <= model.colors.min() and model.colors.max() <= 1.0
    assert model.eye_directions[:, 3].sum() == sum(len(i) for i in model.eye_index)


@pytest.mark.slow
def test_posing_is_fast(model):
    rng = np.random.default_rng(2)
    times = []
    for _ in range(30):
        e = rng.uniform(0, 0.5, 52).astype(np.float32)
        pose = rng.normal(0, 0.2, (6, 3))
        t0 = time.perf_counter()
        v = model.pose(e, pose)
        model.normals(v)
        times.append(time.perf_counter() - t0)
    p50 = 1e3 * float(np.median(times))
    print(f"\nposing {model.num_vertices} vertices + normals: p50 {p50:.2f} ms")
    assert p50 < 20.0  # budget 3 ms on 2 idle cores; generous for loaded CI machines
