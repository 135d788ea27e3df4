"""``puppet`` on the command line, as a user meets it: files written, what is printed, exit codes.

Most runs call ``puppet.cli.main`` in-process (fast); runs that must be a real process (Ctrl-C,
stderr free of tracebacks, the console script itself) start ``puppet`` in a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from puppet import __version__
from puppet.cli import main
from puppet.contract import ARKIT_NAMES, NUM_POSE_JOINTS
from puppet.params import ParamSequence, load_params
from puppet.sources import VideoFileSource

FACE_CLIP_FRAMES = 45
_SCRIPT = Path(sys.executable).with_name("puppet")
PUPPET = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "puppet.cli"]


# ------------------------------------------------------------------------------------- helpers

@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str



def interrupt_once_written(command: list[str], watched: Path, timeout: float):
    """Start ``command``, send SIGINT once ``watched`` has data on disk (a fragmented MP4's first
    fragment lands after one GOP, so frames are done), and return (process, stdout, stderr)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not (watched.exists() and watched.stat().st_size > 0):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"nothing written to {watched} after {timeout:.0f} s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, out, err

def run_main(argv: list[str]) -> Run:
    """``main(argv)`` in this process, with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return Run(code, out.getvalue(), err.getvalue())


def run_puppet(args: list[str], timeout: float = 60) -> Run:
    """``puppet ARGS`` as a separate process."""
    p = subprocess.run([*PUPPET, *args], capture_output=True, text=True, timeout=timeout)
    return Run(p.returncode, p.stdout, p.stderr)


def source_times(path: Path, frames: int | None = None) -> np.ndarray:
    """Timestamps of the first ``frames`` frames (all when None) as puppet's own source reads them."""
    with VideoFileSource(path) as source:
        return np.array([f.t for _, f in zip(range(frames or 10**9), source)])


def video_times(path: Path) -> tuple[np.ndarray, bool]:
    """Decoded frame times (seconds) of a video file, and whether it has an audio stream."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        t = np.array([float(f.pts * stream.time_base) for f in c.decode(stream)])
        return t, bool(c.streams.audio)


def audio_end(path: Path) -> float:
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.audio[0]) if p.pts is not None]
    last = packets[-1]
    return float((last.pts + last.duration) * last.time_base)


def write_noise_video(path: Path, frames: int, size: tuple[int, int] = (160, 120)) -> Path:
    """A clip of random noise: no face, no body."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def write_audio_only(path: Path) -> Path:
    """Half a second of AAC silence, no video stream."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        stream.layout = "mono"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 44100
            frame.pts = i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def assert_one_error_line(run: Run, *fragments: str) -> None:
    assert run.code == 2, run
    assert "Traceback" not in run.err, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("puppet: error:"), run.err
    for fragment in fragments:
        assert fragment in lines[0], run.err
    assert run.out == ""


# ------------------------------------------------------------------------------------- fixtures

@dataclass(frozen=True)
class Tracked:
    input: Path
    params: ParamSequence
    overlay: Path
    run: Run


@pytest.fixture(scope="module")
def tracked_face(face_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    """``puppet track lp_d3.mp4 --overlay --max-frames 45``, run once for the tests below."""
    folder = tmp_path_factory.mktemp("track")
    output, overlay = folder / "params.npz", folder / "overlay.mp4"
    run = run_main(["track", str(face_video), "-o", str(output), "--overlay", str(overlay),
                    "--max-frames", str(FACE_CLIP_FRAMES), "--no-progress"])
    assert run.code == 0, run
    return Tracked(face_video, load_params(output), overlay, run)


@pytest.fixture(scope="module")
def noise_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_noise_video(tmp_path_factory.mktemp("noise") / "noise.mp4", frames=20)


# ------------------------------------------------------------------------------------- track

def test_track_writes_one_parameter_frame_per_input_frame(tracked_face: Tracked) -> None:
    seq = tracked_face.params
    t = source_times(tracked_face.input, FACE_CLIP_FRAMES)
    assert len(seq) == len(t) == FACE_CLIP_FRAMES
    np.testing.assert_array_equal(seq.arrays["t"], t)  # the input's own timestamps, not invented ones


def test_track_parameters_are_in_range(tracked_face: Tracked) -> None:
    a = tracked_face.params.arrays
    n = FACE_CLIP_FRAMES
    assert a["expression"].shape == (n, len(ARKIT_NAMES))
    assert a["expression"].min() >= 0.0 and a["expression"].max() <= 1.0
    assert a["pose"].shape == (n, NUM_POSE_JOINTS, 3)
    assert np.isfinite(a["pose"]).all() and np.isfinite(a["camera"]).all() and np.isfinite(a["gaze"]).all()
    assert a["face_ok"].mean() > 0.9  # a face close-up


def test_track_header_says_where_the_parameters_come_from(tracked_face: Tracked) -> None:
    header = tracked_face.params.header
    assert header["fps"] == pytest.approx(30.0)
    assert header["source"] == str(tracked_face.input)
    assert header["expression_names"] == list(ARKIT_NAMES)
    assert {"puppet", "mediapipe", "numpy", "av"} <= set(header["tool_versions"])
    assert header["interrupted"] is False
    assert header["frames"] == FACE_CLIP_FRAMES
    assert header["mode"] == "full"


def test_track_prints_a_summary(tracked_face: Tracked) -> None:
    out = tracked_face.run.out
    assert f"tracked {FACE_CLIP_FRAMES} frames" in out
    face_rate = 100 * tracked_face.params.arrays["face_ok"].mean()
    assert f"face found in {face_rate:.1f}% of frames" in out
    assert "parameters:" in out and "overlay:" in out


def test_overlay_has_the_input_frames_timestamps_and_audio(tracked_face: Tracked) -> None:
    t, has_audio = video_times(tracked_face.overlay)
    expected = source_times(tracked_face.input, FACE_CLIP_FRAMES)
    assert len(t) == len(expected)
    np.testing.assert_allclose(t, expected, atol=1e-3)
    assert has_audio  # lp_d3 has AAC
    frame = 1 / tracked_face.params.fps
    assert audio_end(tracked_face.overlay) == pytest.approx(expected[-1] + frame, abs=2 * frame)


def test_face_mode_leaves_the_body_at_rest(body_video: Path, tmp_path: Path) -> None:
    runs = {}
    for mode in ("full", "face"):
        output = tmp_path / f"{mode}.npz"
        run = run_main(["track", str(body_video), "-o", str(output), "--mode", mode, "--max-frames", "12",
                        "--no-progress"])
        assert run.code == 0, run
        runs[mode] = load_params(output)
    assert runs["full"].arrays["body_ok"].all()  # the body is visible: full mode finds it ...
    face = runs["face"].arrays
    assert not face["body_ok"].any()  # ... face mode does not look
    assert not face["camera"].any()
    assert face["face_ok"].all()
    assert runs["face"].header["mode"] == "face"


def test_frames_without_a_face_still_yield_parameters(noise_video: Path, tmp_path: Path) -> None:
    output = tmp_path / "noise.npz"
    run = run_main(["track", str(noise_video), "-o", str(output), "--no-progress"])
    assert run.code == 0, run
    seq = load_params(output)
    assert len(seq) == 20
    np.testing.assert_array_equal(seq.arrays["t"], source_times(noise_video))
    assert not seq.arrays["face_ok"].any()
    assert not seq.arrays["expression"].any()
    assert "face found in 0.0% of frames" in run.out


# ------------------------------------------------------------------------------------- user errors

@pytest.fixture(scope="module")
def bad_inputs(face_video: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    truncated = folder / "truncated.mp4"
    data = face_video.read_bytes()
    truncated.write_bytes(data[: int(0.3 * len(data))])
    return {
        "missing": folder / "missing.mp4",
        "corrupt": corrupt,
        "truncated": truncated,
        "no video": write_audio_only(folder / "audio.m4a"),
        "no camera": Path("9"),
    }


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("corrupt", "cannot read"),
    ("truncated", "cannot read"),
    ("no video", "has no video stream"),
    ("no camera", "no camera at 9"),
])
def test_bad_input_is_one_error_line(case: str, message: str, bad_inputs: dict[str, Path],
                                     tmp_path: Path) -> None:
    output, overlay = tmp_path / "p.npz", tmp_path / "o.mp4"
    run = run_puppet(["track", str(bad_inputs[case]), "-o", str(output), "--overlay", str(overlay),
                      "--no-progress"])
    assert_one_error_line(run, message)
    assert not output.exists() and not overlay.exists()


@pytest.mark.parametrize("output, overlay, message", [
    ("missing/p.npz", None, "does not exist"),
    ("folder.npz", None, "it is a folder"),
    ("p.txt", None, ".npz"),
    ("p.npz", "missing/o.mp4", "does not exist"),
    ("p.npz", "o.avi", ".mp4"),
])
def test_unwritable_output_is_one_error_line(output: str, overlay: str | None, message: str,
                                             body_video: Path, tmp_path: Path) -> None:
    (tmp_path / "folder.npz").mkdir()
    args = ["track", str(body_video), "-o", str(tmp_path / output), "--no-progress"]
    if overlay is not None:
        args += ["--overlay", str(tmp_path / overlay)]
    assert_one_error_line(run_puppet(args), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.npz"]  # nothing written


def test_overlay_onto_the_input_is_refused(body_video: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    shutil.copyfile(body_video, clip)
    run = run_main(["track", str(clip), "-o", str(tmp_path / "p.npz"), "--overlay", str(clip),
                    "--no-progress"])
    assert_one_error_line(run, "it is the input video")
    assert clip.read_bytes() == body_video.read_bytes()  # the user's video is untouched
    assert not (tmp_path / "p.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["track", "x.mp4", "-o", "p.npz", "--max-frames", "0"], "--max-frames: must be at least 1"),
    (["bench", "track", "x.mp4", "--frames", "0"], "--frames: must be at least 1"),
    (["bench", "track", "x.mp4", "--warmup", "-1"], "--warmup: must be at least 0"),
])
def test_bad_counts_are_usage_errors(args: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_keeps_what_was_tracked(tmp_path: Path, media_dir: Path) -> None:
    video = media_dir / "video" / "lp_d6.mp4"
    total = 1008
    output, overlay = tmp_path / "p.npz", tmp_path / "o.mp4"
    proc, out, err = interrupt_once_written(
        [*PUPPET, "track", str(video), "-o", str(output), "--overlay", str(overlay), "--no-progress"], overlay, 60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    seq = load_params(output)
    assert 30 <= len(seq) < total
    assert seq.header["interrupted"] is True
    assert f"interrupted after {len(seq)} frames" in out
    np.testing.assert_array_equal(seq.arrays["t"], source_times(video, len(seq)))
    # The overlay plays and holds exactly the frames of the parameter file, with the input's audio.
    t, has_audio = video_times(overlay)
    assert len(t) == len(seq)
    np.testing.assert_allclose(t, seq.arrays["t"], atol=1e-3)
    assert has_audio


# ------------------------------------------------------------------------------------- bench

def test_bench_track_reports_every_stage(face_video: Path, tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    run = run_main(["bench", "track", str(face_video), "--frames", "30", "--warmup", "5", "--json", str(report),
                    "--no-progress"])
    assert run.code == 0, run
    rows = {line.split()[0] for line in run.out.splitlines() if line.strip()}
    stages = ("decode", "face", "body", "solve", "smooth", "tracking")
    assert set(stages) <= rows
    data = json.loads(report.read_text())
    assert list(data["stages_ms"]) == list(stages)
    for name in stages:
        s = data["stages_ms"][name]
        assert 0 <= s["p50"] <= s["p95"], name
    assert data["frames"] == 30 and data["warmup"] == 5
    assert data["fps"] > 0
    machine = data["machine"]
    assert machine["cpu"] and machine["cores"] >= 1
    assert {"puppet", "mediapipe", "numpy"} <= set(machine["versions"])


def test_bench_track_face_mode_has_no_body_row(face_video: Path) -> None:
    run = run_main(["bench", "track", str(face_video), "--frames", "10", "--warmup", "2", "--mode", "face",
                    "--no-progress"])
    assert run.code == 0, run
    rows = {line.split()[0] for line in run.out.splitlines() if line.strip()}
    assert {"decode", "face", "solve", "smooth", "tracking"} <= rows
    assert "body" not in rows


def test_bench_track_on_a_clip_shorter_than_the_warmup(noise_video: Path) -> None:
    run = run_main(["bench", "track", str(noise_video), "--frames", "10", "--warmup", "25", "--mode", "face",
                    "--no-progress"])
    assert_one_error_line(run, "has only 20 frames")


# ------------------------------------------------------------------------------------- basics

def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"puppet {__version__}"


def test_console_script_runs() -> None:
    run = run_puppet(["--version"], timeout=30)
    assert run.code == 0 and run.out.strip() == f"puppet {__version__}"


def test_track_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["track", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--overlay" in out and "--mode" in out and "--max-frames" in out
