"""``puppet convert``, ``render``, ``webcam`` and ``avatars`` as a user meets them: the video written
(frame count, timestamps, audio, size, a moving and visible avatar), what is printed, exit codes.

Conversions that succeed run in-process (``main``: the avatar model is built once per process);
errors, Ctrl-C and the preview window run ``puppet`` as a real process, as a user would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from puppet.avatar import list_avatars, random_avatar, save_avatar
from puppet.contract import NUM_EXPRESSIONS, NUM_POSE_JOINTS, Blendshape
from puppet.params import DriverParams, ParamSequence, make_header, save_params
from puppet.sources import VideoFileSource
from test_cli import (PUPPET, Run, assert_one_error_line, audio_end, interrupt_once_written, run_main,
                      run_puppet, source_times, video_times)

CLIP_FRAMES = 40
SIZE = 256
STATS_LINE = re.compile(r"(\d+) frames in ([\d.]+) s \(([\d.]+) fps\); latency p50 (\d+) ms, "
                        r"p95 (\d+) ms; dropped (\d+)")


# ------------------------------------------------------------------------------------- helpers

def decode(path: Path) -> list[np.ndarray]:
    """Every frame of a video file as RGB uint8."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def convert_args(input: Path, output: Path, *extra: str) -> list[str]:
    return ["convert", str(input), "-o", str(output), *extra, "--no-progress"]


@dataclass(frozen=True)
class Converted:
    input: Path
    output: Path
    run: Run


@pytest.fixture(scope="module")
def converted(face_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """``puppet convert lp_d3.mp4 --max-frames 40 --size 256`` with the default avatar, run once."""
    output = tmp_path_factory.mktemp("convert") / "avatar.mp4"
    run = run_main(convert_args(face_video, output, "--max-frames", str(CLIP_FRAMES), "--size", str(SIZE)))
    assert run.code == 0, run
    return Converted(face_video, output, run)


# ------------------------------------------------------------------------------------- convert

def test_convert_keeps_every_frame_its_timestamp_and_the_audio(converted: Converted) -> None:
    t, has_audio = video_times(converted.output)
    expected = source_times(converted.input, CLIP_FRAMES)
    assert len(t) == len(expected) == CLIP_FRAMES  # one output frame per input frame, none added
    np.testing.assert_allclose(t, expected, atol=1e-3)  # the input's own times
    assert has_audio  # lp_d3 has AAC
    frame = 1 / 30
    assert audio_end(converted.output) == pytest.approx(expected[-1] + frame, abs=2 * frame)
    assert f"converted {CLIP_FRAMES} frames" in converted.run.out
    assert STATS_LINE.search(converted.run.out), converted.run.out


def test_convert_draws_a_moving_avatar(converted: Converted) -> None:
    frames = decode(converted.output)
    assert frames[0].shape == (SIZE, SIZE, 3)
    background = frames[0][2, 2].astype(np.int16)  # the top corner is background
    for image in (frames[0], frames[-1]):
        covered = (np.abs(image.astype(np.int16) - background).max(axis=-1) > 16).mean()
        assert 0.15 < covered < 0.9, covered  # a head and shoulders, not a blank (or full) image
    # The driver talks and turns: the avatar follows (a still avatar differs by coding noise only).
    assert mean_abs_diff(frames[0], frames[-1]) > 2.0
    steps = [mean_abs_diff(a, b) for a, b in zip(frames, frames[1:])]
    assert max(steps) > 0.5


def test_side_by_side_puts_the_driver_left_of_the_avatar(body_video: Path, tmp_path: Path) -> None:
    output, size, n = tmp_path / "sbs.mp4", 128, 6
    run = run_main(convert_args(body_video, output, "--side-by-side", "--size", str(size), "--max-frames", str(n)))
    assert run.code == 0, run
    with VideoFileSource(body_video) as source:
        w, h = source.size  # 1280 x 720: not square, so the scaling shows
        driver = next(iter(source)).image
    left_width = round(w * size / h)
    frames = decode(output)
    assert len(frames) == n
    assert frames[0].shape == (size, left_width + size, 3)
    np.testing.assert_allclose(video_times(output)[0], source_times(body_video, n), atol=1e-3)
    left = frames[0][:, :left_width].astype(np.float32)
    expected = cv2.resize(driver, (left_width, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.corrcoef(left.ravel(), expected.ravel())[0, 1] > 0.95
    assert mean_abs_diff(frames[0][:, :left_width], expected) < 8
    right = frames[0][:, left_width:]
    assert mean_abs_diff(right, cv2.resize(driver, (size, size), interpolation=cv2.INTER_AREA)) > 20


# ------------------------------------------------------------------------------------- avatars

@pytest.mark.parametrize("avatar", ["farouk", "json"])
def test_convert_with_another_avatar(avatar: str, converted: Converted, tmp_path: Path) -> None:
    if avatar == "json":
        avatar = str(save_avatar(random_avatar(7), tmp_path / "seven.json"))
    output = tmp_path / "other.mp4"
    run = run_main(convert_args(converted.input, output, "--avatar", avatar, "--size", str(SIZE),
                                "--max-frames", "3"))
    assert run.code == 0, run
    frames = decode(output)
    assert len(frames) == 3 and frames[0].shape == (SIZE, SIZE, 3)
    # Same driver frame, same size: only the avatar differs from the default avatar's video.
    assert mean_abs_diff(frames[0], decode(converted.output)[0]) > 8


def test_bad_avatar_is_one_error_line(face_video: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "puppet.avatar", "version": 1, "name": "x", "phenotype": {"age": 0.')
    for avatar, message in (("nobody", "no built-in avatar or avatar file named 'nobody'"),
                            (str(corrupt), "cannot read avatar file")):
        output = tmp_path / "out.mp4"
        run = run_puppet(convert_args(face_video, output, "--avatar", avatar, "--max-frames", "2"))
        assert_one_error_line(run, message)
        assert not output.exists()


def test_avatars_lists_the_built_in_avatars() -> None:
    run = run_main(["avatars"])
    assert run.code == 0, run
    names = [line.split()[0] for line in run.out.splitlines() if line.strip()]
    assert len(names) >= 8
    assert names == list(list_avatars())


# ------------------------------------------------------------------------------------- user errors

@pytest.fixture(scope="module")
def corrupt_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    return path


@pytest.mark.parametrize("input, output, message", [
    ("missing", "out.mp4", "no such file"),
    ("corrupt", "out.mp4", "cannot read"),
    ("clip", "missing/out.mp4", "does not exist"),
    ("clip", "out.txt", ".mp4"),
])
def test_bad_convert_is_one_error_line(input: str, output: str, message: str, face_video: Path,
                                       corrupt_video: Path, tmp_path: Path) -> None:
    inputs = {"missing": tmp_path / "missing.mp4", "corrupt": corrupt_video, "clip": face_video}
    run = run_puppet(convert_args(inputs[input], tmp_path / output))
    assert_one_error_line(run, message)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_convert_onto_the_input_is_refused(face_video: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    shutil.copyfile(face_video, clip)
    (tmp_path / "link.mp4").symlink_to(clip)
    for output in (clip, tmp_path / "." / "clip.mp4", tmp_path / "link.mp4"):
        run = run_puppet(convert_args(clip, output))
        assert_one_error_line(run, "it is the input video")
    assert clip.read_bytes() == face_video.read_bytes()  # the user's video is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "link.mp4"]


def test_too_small_size_is_a_usage_error(face_video: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    run = run_puppet(convert_args(face_video, output, "--size", "10"))
    assert run.code == 2 and "Traceback" not in run.err, run
    assert run.err.strip().splitlines()[-1].endswith("argument --size: must be at least 64, got 10")
    assert not output.exists()


# ------------------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_leaves_a_playable_video(media_dir: Path, tmp_path: Path) -> None:
    video = media_dir / "video" / "lp_d6.mp4"
    total = 1008
    output = tmp_path / "out.mp4"
    proc, out, err = interrupt_once_written([*PUPPET, *convert_args(video, output, "--size", "128")], output, 90)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    match = re.search(r"interrupted after (\d+) frames", out)
    assert match, out
    written = int(match.group(1))
    assert 30 <= written < total
    t, has_audio = video_times(output)  # plays: the header and every frame written are there
    assert len(t) == written
    assert np.all(np.diff(t) > 0)
    np.testing.assert_allclose(t, source_times(video, written), atol=1e-3)
    assert has_audio


# ------------------------------------------------------------------------------------- render

def jaw_params(n: int = 16) -> ParamSequence:
    """Irregular timestamps; a neutral face through the first second (the calibration), then the
    jaw opens fully by the last frame."""
    frames = []
    for i in range(n):
        expression = np.zeros(NUM_EXPRESSIONS, np.float32)
        expression[Blendshape.jawOpen] = np.clip((i - 10) / (n - 11), 0.0, 1.0)
        frames.append(DriverParams(t=0.1 * i + 0.013 * (i % 3), expression=expression,
                                   pose=np.zeros((NUM_POSE_JOINTS, 3), np.float32), face_ok=True, body_ok=True))
    return ParamSequence.from_frames(frames, make_header(10.0, "synthetic"))


def test_render_draws_every_parameter_frame_at_its_time(tmp_path: Path) -> None:
    seq = jaw_params()
    params, output, size = save_params(tmp_path / "p.npz", seq), tmp_path / "out.mp4", 128
    run = run_main(["render", str(params), "-o", str(output), "--size", str(size), "--no-progress"])
    assert run.code == 0, run
    assert f"rendered {len(seq)} frames" in run.out
    t, _ = video_times(output)
    assert len(t) == len(seq)
    np.testing.assert_allclose(t, seq.arrays["t"], atol=1e-3)
    frames = decode(output)
    assert frames[0].shape == (size, size, 3)
    # Only the jaw moved: the mouth region changes, the top of the head does not.
    diff = np.abs(frames[-1].astype(np.float32) - frames[0].astype(np.float32)).max(axis=-1)
    mouth = diff[int(0.45 * size):int(0.72 * size), int(0.33 * size):int(0.67 * size)]
    assert mouth.mean() > 6, mouth.mean()  # about 14; the top of the head about 0.2
    assert diff[: int(0.3 * size)].mean() < 1.0
    changed = np.argwhere(diff > 40)
    assert len(changed) > 0.004 * size * size  # the open mouth: about 1% of the image
    cy, cx = changed.mean(axis=0) / size
    assert 0.45 < cy < 0.72 and 0.4 < cx < 0.6, (cy, cx)


def test_bad_parameter_file_is_one_error_line(tmp_path: Path) -> None:
    data = save_params(tmp_path / "good.npz", jaw_params()).read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for name, message in (("missing.npz", "no such parameter file"),
                          ("truncated.npz", "not a puppet parameter file"),
                          ("noise.npz", "not a puppet parameter file")):
        output = tmp_path / "out.mp4"
        run = run_puppet(["render", str(tmp_path / name), "-o", str(output), "--no-progress"])
        assert_one_error_line(run, message)
        assert "pickle" not in run.err  # never a hint to unpickle an untrusted file
        assert not output.exists()


# ------------------------------------------------------------------------------------- webcam

@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed")
def test_webcam_shows_a_live_preview(face_video: Path) -> None:
    p = subprocess.run(["xvfb-run", "-a", *PUPPET, "webcam", "--camera", str(face_video), "--max-seconds", "4",
                        "--size", str(SIZE)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    match = STATS_LINE.search(p.stdout)
    assert match, p.stdout
    frames, seconds, fps = int(match.group(1)), float(match.group(2)), float(match.group(3))
    assert frames >= 5 and fps > 0  # not one frame after the models loaded: seconds of preview
    assert fps == pytest.approx((frames - 1) / seconds, rel=0.05)  # the figures agree
    # --max-seconds counts from the first frame shown; the printed time runs from the first frame
    # written to the last, so it ends within a frame interval of the deadline. The line prints
    # seconds to 0.1 s: allow its rounding (0.05 s), not more.
    assert seconds + 0.05 >= 4.0 - 2.0 / fps
    assert 0 < int(match.group(4)) <= int(match.group(5))  # latency p50 <= p95 (ms)


def test_preview_deadline_counts_from_the_first_frame_on_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first imshow opens the window and can take a tenth of a second or more: --max-seconds
    must count from when the frame is on screen, as the printed streaming time does."""
    import time
    from types import SimpleNamespace

    import cv2

    from puppet.frame import Frame
    from puppet.pipeline import Packet
    from puppet.webcam import WindowSink

    shown: list[float] = []

    def imshow(name, image) -> None:
        if not shown:
            time.sleep(0.3)
        shown.append(time.perf_counter())

    monkeypatch.setattr(cv2, "imshow", imshow)
    monkeypatch.setattr(cv2, "waitKey", lambda delay: -1)
    sink = WindowSink([SimpleNamespace(name="a")], 0, retarget=None, render=None, max_seconds=0.2)
    image = np.zeros((16, 16, 3), np.uint8)
    keep_going = True
    for i in range(100):
        keep_going = sink.write(Packet(Frame(image, i / 30, i), time.perf_counter(), rendered=image))
        if not keep_going:
            break
        time.sleep(0.02)
    assert not keep_going, "max_seconds never stopped the preview"
    assert 0.2 <= shown[-1] - shown[0] < 0.2 + 0.25, f"stopped {shown[-1] - shown[0]:.2f} s after the first frame"


def test_webcam_without_a_camera() -> None:
    assert_one_error_line(run_puppet(["webcam", "--camera", "9"]), "no camera at 9")


def test_webcam_without_a_display(face_video: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    p = subprocess.run([*PUPPET, "webcam", "--camera", str(face_video), "--max-seconds", "1"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert_one_error_line(Run(p.returncode, p.stdout, p.stderr), "no display")
