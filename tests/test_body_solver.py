"""Body solver: synthetic round trips through a posed SMPL-like upper body, axis conventions, and
MediaPipe Pose on a real upper-body video."""

from __future__ import annotations

import numpy as np
import pytest

from puppet.contract import SmplJoint, pose_row
from puppet.errors import PuppetError
from puppet.rotations import axis_angle_to_matrix, matrix_to_axis_angle, yaw_pitch_roll
from trackers.body import BodyTrackerOptions
from trackers.body_solver import (
    BodySolver,
    BodySolverOptions,
    RestSkeleton,
    camera_direction,
    camera_from_torso,
    person_from_mediapipe,
    split_neck_head,
)
from trackers.observation import BodyObservation
from trackers.pose_landmarks import PoseLandmark as L

SK = RestSkeleton()
HIP_HALF_WIDTH = 0.12
HEAD_CENTRE = np.array([0.0, 0.62, 0.06])  # torso frame
LANDMARK_HEAD_PITCH = np.deg2rad(BodySolverOptions().landmark_head_pitch_deg)
ROW = {j: pose_row(j) for j in SmplJoint}


def rot(aa) -> np.ndarray:
    return axis_angle_to_matrix(np.asarray(aa, dtype=np.float64))


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    c = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def rot_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Geodesic distance between rotations (stable near zero, unlike arccos of the trace)."""
    return float(np.degrees(np.linalg.norm(matrix_to_axis_angle(np.asarray(a, dtype=np.float64).T @ b))))


def elevation(left: bool, angle: float) -> np.ndarray:
    """Collar swing that lifts the shoulder by ``angle`` radians (in the bone-Y plane)."""
    _, bone, _ = SK.side(left)
    n = np.cross(bone, [0.0, 1.0, 0.0])
    return rot(n / np.linalg.norm(n) * angle)


def make_body(r_torso=np.eye(3), collars=(np.eye(3), np.eye(3)), arms=(None, None),
              head=np.eye(3), shoulder_visibility=1.0) -> tuple[BodyObservation, dict]:
    """A posed rigid upper body as MediaPipe would report it.

    r_torso: torso axes in the person frame; collars: local collar rotations (parent spine3);
    arms: upper-arm unit directions in the torso frame, None = elbow out of frame (visibility
    0.1, pointing somewhere wrong); head: head rotation relative to the torso.
    """
    p = np.zeros((33, 3))
    vis = np.ones(33)
    p[L.LEFT_HIP], p[L.RIGHT_HIP] = (HIP_HALF_WIDTH, 0, 0), (-HIP_HALF_WIDTH, 0, 0)
    truth = {"collar_dir": [], "arm_dir": []}
    for i, (left, sh, el) in enumerate(((True, L.LEFT_SHOULDER, L.LEFT_ELBOW),
                                        (False, L.RIGHT_SHOULDER, L.RIGHT_ELBOW))):
        shoulder, bone, _ = SK.side(left)
        p[sh] = shoulder - bone + collars[i] @ bone
        arm = arms[i]
        if arm is None:
            arm, vis[el] = np.array([0.3 if left else -0.3, 0.2, 0.9]), 0.1
        p[el] = p[sh] + 0.26 * arm / np.linalg.norm(arm)
        truth["collar_dir"].append(r_torso @ collars[i] @ bone)
        truth["arm_dir"].append(r_torso @ arm)
    # Ears and eyes whose ear->eye line rises by the landmark head pitch at rest.
    forward = 0.1 * np.array([0.0, np.sin(LANDMARK_HEAD_PITCH), np.cos(LANDMARK_HEAD_PITCH)])
    for lm, offset in ((L.LEFT_EAR, (0.075, 0, 0)), (L.RIGHT_EAR, (-0.075, 0, 0)),
                       (L.LEFT_EYE, forward + (0.03, 0, 0)), (L.RIGHT_EYE, forward - (0.03, 0, 0)),
                       (L.NOSE, (0.0, -0.03, 0.1))):
        p[lm] = HEAD_CENTRE + head @ np.asarray(offset, dtype=np.float64)
    vis[[L.LEFT_SHOULDER, L.RIGHT_SHOULDER]] = shoulder_visibility
    world = person_from_mediapipe(p @ r_torso.T)  # person frame -> MediaPipe axes (self-inverse)
    image = world[:, :2] * 500.0 + 300.0
    body = BodyObservation(
        image_landmarks=np.concatenate([image, world[:, 2:] * 500.0], axis=1).astype(np.float32),
        world_landmarks=world.astype(np.float32),
        visibility=vis.astype(np.float32),
    )
    truth["head_global"] = r_torso @ head
    return body, truth


def matrices(sol) -> dict[SmplJoint, np.ndarray]:
    return {j: rot(sol.pose[ROW[j]]) for j in SmplJoint}


def random_rotation(rng, max_angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    return rot(axis / np.linalg.norm(axis) * rng.uniform(0.0, max_angle))


# --- conventions -------------------------------------------------------------------------------


def test_mediapipe_to_person_is_a_proper_rotation():
    m = person_from_mediapipe(np.eye(3))
    assert np.isclose(np.linalg.det(m), 1.0)
    # image right -> person's left (+X), up in the image (-y) -> +Y, toward the camera (-z) -> +Z
    np.testing.assert_allclose(person_from_mediapipe([[1.0, -1.0, -1.0]]), [[1.0, 1.0, 1.0]])


def test_camera_signs_follow_aniportraitgan_sphere():
    left_turn = rot([0.0, np.deg2rad(20), 0.0])  # torso turned 20 deg to its left (+yaw)
    np.testing.assert_allclose(camera_from_torso(left_turn), [np.deg2rad(20), 0.0], atol=1e-9)
    assert np.isclose(yaw_pitch_roll(left_turn)[0], np.deg2rad(20))  # same sign as a head yaw
    lean_in = rot([np.deg2rad(10), 0.0, 0.0])  # upper body tilted toward the camera
    np.testing.assert_allclose(camera_from_torso(lean_in), [0.0, -np.deg2rad(10)], atol=1e-9)
    # The camera sits at +Z of the person frame; seen from the torso that is R^T e_z, which
    # must be AniPortraitGAN's camera position for theta = pi/2 + yaw, phi = pi/2 + pitch.
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = random_rotation(rng, 0.8)
        np.testing.assert_allclose(camera_direction(camera_from_torso(r)), r.T @ [0, 0, 1], atol=1e-9)
    # yaw > 0 puts the camera on the avatar's right (-X), pitch > 0 below (-Y).
    assert camera_direction(np.array([0.3, 0.0]))[0] < 0 and camera_direction(np.array([0.0, 0.3]))[1] < 0


def test_split_neck_head_composes_exactly():
    rng = np.random.default_rng(1)
    for share in (0.0, 0.4, 1.0):
        for _ in range(10):
            r_rel = random_rotation(rng, 2.5)
            neck, head = split_neck_head(r_rel, share)
            np.testing.assert_allclose(neck @ head, r_rel, atol=1e-12)
            total = rot_angle_deg(np.eye(3), r_rel)
            assert rot_angle_deg(np.eye(3), neck) == pytest.approx(share * total, abs=1e-6)


def test_options_are_validated():
    with pytest.raises(ValueError):
        BodySolverOptions(neck_share=1.5)
    with pytest.raises(ValueError):
        BodySolverOptions(arm_visibility=(0.8, 0.5))
    with pytest.raises(PuppetError, match="complexity"):
        BodyTrackerOptions(model_complexity=2)
    with pytest.raises(PuppetError, match="complexity"):
        BodyTrackerOptions(model_complexity=0)


# --- synthetic round trips ---------------------------------------------------------------------


def test_frontal_upright_person_is_at_rest():
    body, _ = make_body()
    sol = BodySolver().solve(body)
    assert sol.ok and sol.head_source == "landmarks" and sol.arms_tracked == (False, False)
    np.testing.assert_allclose(sol.camera, 0.0, atol=1e-6)
    np.testing.assert_allclose(sol.torso, np.eye(3), atol=1e-6)
    m = matrices(sol)
    for j in (SmplJoint.LEFT_COLLAR, SmplJoint.RIGHT_COLLAR, SmplJoint.NECK, SmplJoint.HEAD):
        assert rot_angle_deg(np.eye(3), m[j]) < 0.01, j
    # Elbows out of frame: the rest arm (AniPortraitGAN's mean pose), about 63 deg below horizontal.
    np.testing.assert_allclose(m[SmplJoint.LEFT_SHOULDER], SK.rest_arm(True), atol=1e-6)
    np.testing.assert_allclose(m[SmplJoint.RIGHT_SHOULDER], SK.rest_arm(False), atol=1e-6)
    for left, j in ((True, SmplJoint.LEFT_SHOULDER), (False, SmplJoint.RIGHT_SHOULDER)):
        d = m[j] @ SK.side(left)[2]
        assert np.degrees(np.arctan2(-d[1], abs(d[0]))) == pytest.approx(63.5, abs=1.0)


@pytest.mark.parametrize("left", [True, False])
def test_shrug_rotates_that_collar_up_about_forward_axis(left):
    angle = np.deg2rad(15)
    collars = (elevation(True, angle), np.eye(3)) if left else (np.eye(3), elevation(False, angle))
    body, _ = make_body(collars=collars)
    rest_body, _ = make_body()
    lm = L.LEFT_SHOULDER if left else L.RIGHT_SHOULDER
    # the shoulder point moves up in the person frame (MediaPipe's y goes down)
    lift = person_from_mediapipe(body.world_landmarks[lm] - rest_body.world_landmarks[lm])
    assert lift[1] > 0.02
    sol = BodySolver().solve(body)
    raised, other = SmplJoint.LEFT_COLLAR, SmplJoint.RIGHT_COLLAR
    if not left:
        raised, other = other, raised
    aa = sol.pose[ROW[raised]]
    # left collar lifts its +X bone toward +Y: rotation about +Z; the right one about -Z
    assert aa[2] == pytest.approx(angle if left else -angle, abs=np.deg2rad(0.5))
    assert np.linalg.norm(aa) == pytest.approx(angle, abs=np.deg2rad(0.5))
    assert np.linalg.norm(sol.pose[ROW[other]]) < np.deg2rad(0.2)
    # a one-sided shrug neither rolls nor turns the torso
    np.testing.assert_allclose(sol.camera, 0.0, atol=1e-4)
    assert rot_angle_deg(np.eye(3), sol.torso.astype(np.float64)) < 0.05


def test_both_shoulders_shrug_lifts_both_collars():
    a = np.deg2rad(12)
    body, _ = make_body(collars=(elevation(True, a), elevation(False, a)))
    sol = BodySolver().solve(body)
    assert sol.pose[ROW[SmplJoint.LEFT_COLLAR], 2] == pytest.approx(a, abs=np.deg2rad(0.5))
    assert sol.pose[ROW[SmplJoint.RIGHT_COLLAR], 2] == pytest.approx(-a, abs=np.deg2rad(0.5))


def test_random_round_trips_recover_bones_camera_and_head():
    rng = np.random.default_rng(7)
    solver = BodySolver()
    for _ in range(25):
        r_torso = (rot([0, rng.uniform(-0.7, 0.7), 0]) @ rot([rng.uniform(-0.25, 0.25), 0, 0])
                   @ rot([0, 0, rng.uniform(-0.15, 0.15)]))
        collars = (elevation(True, rng.uniform(-0.25, 0.45)), elevation(False, rng.uniform(-0.25, 0.45)))
        arms = []
        for left in (True, False):
            rest_dir = SK.rest_arm(left) @ SK.side(left)[2]
            arms.append(random_rotation(rng, 1.2) @ rest_dir / np.linalg.norm(rest_dir))
        head_rel = random_rotation(rng, 0.7)
        body, truth = make_body(r_torso, collars, tuple(arms), head_rel)
        head_global = truth["head_global"]
        sol = solver.solve(body, head_rotation=head_global)
        assert sol.ok and sol.arms_tracked == (True, True) and sol.head_source == "face"
        torso = sol.torso.astype(np.float64)
        assert rot_angle_deg(torso, r_torso) < 0.01
        np.testing.assert_allclose(camera_direction(sol.camera), r_torso.T @ [0, 0, 1], atol=1e-4)
        m = matrices(sol)
        for i, (left, collar_j, shoulder_j) in enumerate((
                (True, SmplJoint.LEFT_COLLAR, SmplJoint.LEFT_SHOULDER),
                (False, SmplJoint.RIGHT_COLLAR, SmplJoint.RIGHT_SHOULDER))):
            _, collar_bone, arm_bone = SK.side(left)
            assert angle_deg(torso @ m[collar_j] @ collar_bone, truth["collar_dir"][i]) < 1.0
            assert angle_deg(torso @ m[collar_j] @ m[shoulder_j] @ arm_bone, truth["arm_dir"][i]) < 1.0
            # collars are swings from rest (no twist about the bone)
            assert abs(np.dot(sol.pose[ROW[collar_j]], collar_bone)) < 1e-5
        # neck @ head is exactly the head relative to the solved torso, and close to the truth
        rel = m[SmplJoint.NECK] @ m[SmplJoint.HEAD]
        np.testing.assert_allclose(rel, torso.T @ head_global, atol=1e-5)
        assert rot_angle_deg(rel, head_rel) < 0.05
        neck_angle = rot_angle_deg(np.eye(3), m[SmplJoint.NECK])
        assert neck_angle == pytest.approx(0.4 * rot_angle_deg(np.eye(3), head_rel), abs=0.05)


def test_head_from_pose_landmarks_without_face():
    rng = np.random.default_rng(3)
    head_rel = random_rotation(rng, 0.5)
    r_torso = rot([0.0, 0.3, 0.0])
    body, _ = make_body(r_torso, head=head_rel)
    sol = BodySolver().solve(body)  # no face rotation
    assert sol.head_source == "landmarks"
    m = matrices(sol)
    assert rot_angle_deg(m[SmplJoint.NECK] @ m[SmplJoint.HEAD], head_rel) < 0.05
    # ear line not square to the ear->eye line: still a proper rotation
    world = body.world_landmarks.copy()
    world[L.LEFT_EAR, 2] -= 0.03
    skewed = BodySolver().solve(BodyObservation(body.image_landmarks, world, body.visibility))
    m = matrices(skewed)
    rel = m[SmplJoint.NECK] @ m[SmplJoint.HEAD]
    np.testing.assert_allclose(rel.T @ rel, np.eye(3), atol=1e-6)
    assert 5.0 < rot_angle_deg(rel, head_rel) < 20.0
    # ears and eyes hidden: rest head
    vis = body.visibility.copy()
    vis[[L.LEFT_EAR, L.RIGHT_EAR]] = 0.1
    hidden = BodyObservation(body.image_landmarks, body.world_landmarks, vis)
    sol = BodySolver().solve(hidden)
    assert sol.head_source == "rest"
    assert np.abs(sol.pose[[ROW[SmplJoint.NECK], ROW[SmplJoint.HEAD]]]).max() < 1e-6


def test_face_only_and_lost_shoulders():
    head = rot([0.2, -0.4, 0.1])
    for body in (None, make_body(rot([0, 0.5, 0]), shoulder_visibility=0.2)[0]):
        sol = BodySolver().solve(body, head_rotation=head)
        assert not sol.ok and sol.head_source == "face"
        np.testing.assert_allclose(sol.camera, 0.0)
        m = matrices(sol)
        np.testing.assert_allclose(m[SmplJoint.NECK] @ m[SmplJoint.HEAD], head, atol=1e-6)
        assert np.abs(sol.pose[[ROW[SmplJoint.LEFT_COLLAR], ROW[SmplJoint.RIGHT_COLLAR]]]).max() < 1e-6
        np.testing.assert_allclose(m[SmplJoint.LEFT_SHOULDER], SK.rest_arm(True), atol=1e-6)
    sol = BodySolver().solve(None)
    assert sol.head_source == "rest" and np.isfinite(sol.pose).all()


def test_camera_torso_up_ignores_lean():
    body, _ = make_body(rot([0.0, 0.4, 0.0]) @ rot([0.2, 0.0, 0.0]))
    sol = BodySolver(BodySolverOptions(torso_up="camera")).solve(body)
    assert sol.camera[1] == 0.0 and abs(sol.camera[0]) > 0.3


def test_partly_visible_elbow_blends_toward_rest():
    arm = np.array([0.0, -1.0, 0.0])  # straight down
    body, _ = make_body(arms=(arm, arm))
    vis = body.visibility.copy()
    vis[L.LEFT_ELBOW] = 0.65  # halfway through the default (0.5, 0.8) ramp
    sol = BodySolver().solve(BodyObservation(body.image_landmarks, body.world_landmarks, vis))
    m = matrices(sol)
    tracked = angle_deg(m[SmplJoint.RIGHT_SHOULDER] @ SK.side(False)[2], arm)
    blended = angle_deg(m[SmplJoint.LEFT_SHOULDER] @ SK.side(True)[2], arm)
    rest = angle_deg(SK.rest_arm(True) @ SK.side(True)[2], arm)
    assert tracked < 0.1 and blended == pytest.approx(rest / 2, abs=0.5)


# --- real media --------------------------------------------------------------------------------


def test_real_video_upper_body(body_video):
    av = pytest.importorskip("av")
    from puppet.frame import Frame
    from trackers.body import BodyTracker

    solver = BodySolver()
    found, solutions = 0, []
    with BodyTracker() as tracker, av.open(str(body_video)) as container:
        for i, vf in enumerate(container.decode(video=0)):
            if i >= 20:
                break
            frame = Frame(vf.to_ndarray(format="rgb24"), float(vf.time), i)
            body = tracker.process(frame)
            if body is None:
                continue
            found += 1
            if i == 10:
                tracker.reset()  # forget the region: the next frame runs detection again
            h, w = frame.image.shape[:2]
            p = person_from_mediapipe(body.world_landmarks)
            # axis conventions on a real frontal person: left shoulder at image right and +X,
            # shoulders above the hips (+Y), nose in front of the ears (+Z)
            assert body.image_landmarks[L.LEFT_SHOULDER, 0] > body.image_landmarks[L.RIGHT_SHOULDER, 0]
            assert p[L.LEFT_SHOULDER, 0] > p[L.RIGHT_SHOULDER, 0]
            assert p[L.LEFT_SHOULDER, 1] > p[L.LEFT_HIP, 1] + 0.2
            assert p[L.NOSE, 2] > 0.5 * (p[L.LEFT_EAR, 2] + p[L.RIGHT_EAR, 2])
            nose = body.image_landmarks[L.NOSE]
            assert 0 < nose[0] < w and 0 < nose[1] < h
            solutions.append(solver.solve(body))
    assert found >= 16
    assert all(s.ok and np.isfinite(s.pose).all() and np.isfinite(s.camera).all() for s in solutions)
    cams = np.array([s.camera for s in solutions])
    # roughly frontal; MediaPipe leans upright people ~10 deg toward the camera (pitch < 0)
    assert np.abs(cams[:, 0]).max() < 0.35 and np.abs(cams[:, 1]).max() < 0.35
    # shoulders roughly level: the two collar elevations agree within 10 degrees
    lift = np.array([(s.pose[ROW[SmplJoint.LEFT_COLLAR], 2], -s.pose[ROW[SmplJoint.RIGHT_COLLAR], 2])
                     for s in solutions])
    assert np.abs(lift[:, 0] - lift[:, 1]).max() < np.deg2rad(10)
    # elbows are out of frame in this portrait: the rest arm
    assert not any(any(s.arms_tracked) for s in solutions)
