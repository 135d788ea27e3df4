"""MediaPipe's blendshape network run on our own landmarks (path (a) at FaceMesh's cost)."""

import itertools
import zipfile

import numpy as np
import pytest

from puppet.contract import Blendshape
from puppet.errors import AssetError
from puppet.sources import VideoFileSource
from trackers.face import FaceTracker, FaceTrackerOptions
from trackers.mediapipe_blendshapes import BLENDSHAPE_MODEL_LANDMARKS, BlendshapeModel


def test_subset_is_146_distinct_landmarks_with_both_irises():
    assert len(BLENDSHAPE_MODEL_LANDMARKS) == 146 == len(set(BLENDSHAPE_MODEL_LANDMARKS))
    assert set(range(468, 478)) <= set(BLENDSHAPE_MODEL_LANDMARKS)
    assert list(BLENDSHAPE_MODEL_LANDMARKS) == sorted(BLENDSHAPE_MODEL_LANDMARKS)


def test_reproduces_the_landmarker_task_exactly(face_video, face_landmarker_task):
    """On the task's own landmarks, our call of its network gives the task's blendshapes: the
    landmark subset, its order, the pixel scaling and the output names are all right."""
    model = BlendshapeModel(face_landmarker_task)
    options = FaceTrackerOptions(backend="landmarker", face_landmarker=str(face_landmarker_task))
    with VideoFileSource(face_video) as source, FaceTracker(options) as tracker:
        checked = 0
        for frame in itertools.islice(source, 40):
            face = tracker.process(frame)
            if face is None:
                continue
            np.testing.assert_allclose(model.predict(face.landmarks), face.blendshapes, atol=1e-4)
            checked += 1
    assert checked >= 35


def test_facemesh_with_bundle_agrees_with_the_landmarker_task(media_dir, face_landmarker_task):
    """FaceMesh landmarks + the network track the whole FaceLandmarker task closely (the network was
    made for these attention-mesh landmarks; the two landmark models differ slightly)."""
    def jaw_series(options):
        # lp_d18 opens and closes its mouth widely within its first 4 seconds.
        with VideoFileSource(media_dir / "video" / "lp_d18.mp4") as source, FaceTracker(options) as tracker:
            faces = [tracker.process(fr) for fr in itertools.islice(source, 120)]
            return tracker, np.array([f.blendshapes[Blendshape.jawOpen] for f in faces])

    mesh, jaw_mesh = jaw_series(FaceTrackerOptions(backend="facemesh", face_landmarker=str(face_landmarker_task)))
    assert mesh.computes_blendshapes
    _, jaw_task = jaw_series(FaceTrackerOptions(backend="landmarker", face_landmarker=str(face_landmarker_task)))
    assert jaw_task.std() > 0.1  # there is something to agree on
    assert np.corrcoef(jaw_mesh, jaw_task)[0, 1] > 0.9
    off = FaceTrackerOptions(backend="facemesh", face_landmarker=str(face_landmarker_task), blendshapes="off")
    with FaceTracker(off) as tracker:
        assert not tracker.computes_blendshapes


def test_foreign_bundles_are_refused(tmp_path):
    (tmp_path / "junk.task").write_bytes(b"not a zip")
    with pytest.raises(AssetError, match="not a MediaPipe face landmarker bundle"):
        BlendshapeModel(tmp_path / "junk.task")
    with zipfile.ZipFile(tmp_path / "other.task", "w") as z:
        z.writestr("something_else.tflite", b"\x00" * 16)
    with pytest.raises(AssetError):
        BlendshapeModel(tmp_path / "other.task")
    with zipfile.ZipFile(tmp_path / "bad_model.task", "w") as z:
        z.writestr("face_blendshapes.tflite", b"\x00" * 64)
    with pytest.raises(AssetError):
        BlendshapeModel(tmp_path / "bad_model.task")
