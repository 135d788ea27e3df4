"""H.264 writer: timestamps round-trip, audio copy and sync, interrupted runs, user errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from puppet.errors import InputError, OutputError
from puppet.sources import VideoFileSource
from puppet.video_writer import VideoWriter, VideoWriterOptions, even_size, pad_to_even

REPO = Path(__file__).resolve().parents[1]


def card(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([(xx * 3 + 5 * i) % 256, yy * 4 % 256, np.full_like(xx, 9 * i % 256)],
                    -1).astype(np.uint8)


def video_pts(path: Path) -> tuple[list[int], Fraction]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return [f.pts for f in c.decode(stream)], stream.time_base


def audio_packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        return [p for p in c.demux(c.streams.audio[0]) if p.pts is not None]


def packets_end(packets: list[av.Packet]) -> float:
    last = packets[-1]
    return float((last.pts + last.duration) * last.time_base)


def write_wav(path: Path, sample_rate: int, seconds: float, tone_from: float) -> Path:
    """A mono 440 Hz tone that starts at `tone_from` seconds (silence before)."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    samples = (np.sin(2 * np.pi * 440 * t) * 12000 * (t >= tone_from)).astype(np.int16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=sample_rate)
        stream.layout = "mono"
        for start in range(0, len(samples), 1600):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1600], format="s16",
                                               layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_timestamps_round_trip(tmp_path: Path, suffix: str) -> None:
    t = [0.0, 0.04, 0.05, 0.1, 0.18, 0.19, 0.25, 0.333, 0.4, 0.401, 0.5, 1.0]
    path = tmp_path / f"vfr{suffix}"
    with VideoWriter(path, (64, 48), 30) as writer:
        for i, ti in enumerate(t):
            writer.write(card(i), ti)
    assert writer.frames_written == len(t)
    pts, tb = video_pts(path)
    assert len(pts) == len(t)
    np.testing.assert_allclose([float(p * tb) for p in pts], t, atol=1e-3 if suffix == ".mkv"
                               else 1e-9)  # Matroska stores milliseconds
    with VideoFileSource(path) as source:  # and our own reader sees the same times
        np.testing.assert_allclose([f.t for f in source], t, atol=1e-3)


def test_first_frame_time_is_kept_when_it_is_not_zero(tmp_path: Path) -> None:
    path = tmp_path / "late.mp4"
    with VideoWriter(path, (64, 48), 25) as writer:
        for i in range(4):
            writer.write(card(i), 0.5 + i / 25)
    pts, tb = video_pts(path)
    np.testing.assert_allclose([float(p * tb) for p in pts], 0.5 + np.arange(4) / 25, atol=1e-9)


def test_input_time_base_keeps_timestamps_exact(tmp_path: Path) -> None:
    tb = Fraction(1, 15360)
    t = [float(k * tb) for k in (0, 512, 1024, 1537, 2048, 4100)]
    path = tmp_path / "exact.mp4"
    with VideoWriter(path, (64, 48), 30, time_base=tb) as writer:
        for i, ti in enumerate(t):
            writer.write(card(i), ti)
    pts, out_tb = video_pts(path)
    assert [p * out_tb for p in pts] == [k * tb for k in (0, 512, 1024, 1537, 2048, 4100)]


def test_bad_writes_are_value_errors(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "x.mp4", (64, 48), 30) as writer:
        writer.write(card(0), 0.1)
        with pytest.raises(ValueError, match="increase"):
            writer.write(card(1), 0.1)
        with pytest.raises(ValueError, match="increase"):
            writer.write(card(1), 0.05)
        with pytest.raises(ValueError, match="uint8"):
            writer.write(card(1, 32, 32), 0.2)
        with pytest.raises(ValueError, match="uint8"):
            writer.write(card(1).astype(np.float32), 0.2)
        writer.write(card(1), 0.2)
    assert len(video_pts(tmp_path / "x.mp4")[0]) == 2


def test_odd_size_is_padded_by_one_pixel(tmp_path: Path) -> None:
    assert even_size((65, 47)) == (66, 48) and even_size((64, 48)) == (64, 48)
    image = card(3, 65, 47)
    padded = pad_to_even(image)
    assert padded.shape == (48, 66, 3)
    np.testing.assert_array_equal(padded[:47, :65], image)
    np.testing.assert_array_equal(padded[:47, 65], image[:, 64])
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, (65, 47), 25) as writer:
        writer.write(image, 0.0)
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height) == (66, 48)
        decoded = frame.to_ndarray(format="rgb24")
    assert np.abs(decoded[:47, :65].astype(int) - image).mean() < 8


def test_audio_is_copied_through_in_sync(tmp_path: Path, face_video: Path) -> None:
    out = tmp_path / "with_audio.mp4"
    with VideoFileSource(face_video) as source:
        with VideoWriter.for_source(out, source.info) as writer:
            for frame in source:
                if frame.t > 1.5:
                    break
                writer.write(frame.image, frame.t)
                last_t = frame.t
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
    copied = audio_packets(out)
    original = {p.pts: bytes(p) for p in audio_packets(face_video)}
    # Remuxed, not re-encoded: each packet is byte for byte one of the input's, at its own time.
    for packet in copied[:20]:
        assert bytes(packet) == original[packet.pts]
    assert copied[0].pts == -1024  # AAC's priming packet, hidden by the edit list as in the input
    with av.open(str(out)) as c:
        assert next(c.decode(audio=0)).pts == 0
    video_end = last_t + 1 / 30
    assert abs(packets_end(copied) - video_end) < 0.05
    pts, tb = video_pts(out)
    assert len(pts) == 46 and float(pts[-1] * tb) == pytest.approx(last_t, abs=1e-9)


def test_audio_interleaved_as_video_advances(tmp_path: Path, face_video: Path) -> None:
    out = tmp_path / "interleaved.mp4"
    with VideoWriter(out, (64, 48), 30, audio_from=face_video) as writer:
        for i in range(60):
            writer.write(card(i), i / 30)
    with av.open(str(out)) as c:
        order = [p.stream.type for p in c.demux() if p.pts is not None]
    first_audio, last_video = order.index("audio"), len(order) - 1 - order[::-1].index("video")
    assert first_audio < last_video  # audio was not all appended at the end


def test_audio_is_transcoded_when_it_cannot_be_copied_and_follows_the_origin(
    tmp_path: Path,
) -> None:
    wav = write_wav(tmp_path / "tone.wav", 16000, 2.0, tone_from=0.5)  # PCM: not for MP4
    results = {}
    for origin in (0.0, 0.45, -0.2):  # -0.2: the audio starts 0.2 s after the first frame
        out = tmp_path / f"origin{origin}.mp4"
        with VideoWriter(out, (64, 48), 25, audio_from=wav, audio_origin=origin) as writer:
            for i in range(25):
                writer.write(card(i), i / 25)
        with av.open(str(out)) as c:
            assert c.streams.audio[0].codec_context.name == "aac"
            frames = list(c.decode(audio=0))
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        first = float(frames[0].pts * frames[0].time_base)
        assert abs(first + len(samples) / 16000 - 1.0) < 0.1  # ends with the video
        loud = np.abs(samples) > 0.1
        results[origin] = first + np.argmax(loud) / 16000  # when the tone starts in the output
    assert results[0.0] == pytest.approx(0.5, abs=0.01)
    assert results[0.45] == pytest.approx(0.05, abs=0.01)
    assert results[-0.2] == pytest.approx(0.7, abs=0.01)


def test_input_without_audio_gives_output_without_audio(tmp_path: Path) -> None:
    silent = tmp_path / "silent.mp4"
    with VideoWriter(silent, (64, 48), 30) as writer:
        writer.write(card(0), 0.0)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, (64, 48), 30, audio_from=silent) as writer:
        writer.write(card(0), 0.0)
    assert audio_packets(out) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_is_an_output_error_not_a_crash(tmp_path: Path, face_video: Path) -> None:
    full = tmp_path / "full.mp4"
    full.symlink_to("/dev/full")  # every write fails with ENOSPC
    writer = VideoWriter(full, (64, 48), 25, VideoWriterOptions(gop_seconds=0.2),
                         audio_from=face_video)
    with pytest.raises(OutputError, match="No space left") as info:
        for i in range(100):
            writer.write(card(i), i / 25)
    assert "\n" not in str(info.value)
    with pytest.raises(OutputError, match="earlier write failed"):
        writer.write(card(0), 10.0)
    writer.close()  # leaves the failed muxer alone instead of crashing in FFmpeg


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from puppet.video_writer import VideoWriter, VideoWriterOptions

    yy, xx = np.mgrid[0:64, 0:96]
    with VideoWriter(sys.argv[1], (96, 64), 30, VideoWriterOptions(gop_seconds=0.5)) as writer:
        for i in range(100000):
            image = np.stack([(xx * 2 + i) % 256, yy * 3, np.full_like(xx, i % 256)], -1)
            writer.write(image.astype(np.uint8), i / 30)
            print(i, flush=True)
            time.sleep(0.01)
    """
)


@pytest.mark.parametrize(("sig", "suffix"), [(signal.SIGINT, ".mp4"), (signal.SIGKILL, ".mp4"),
                                             (signal.SIGKILL, ".mkv")])
def test_interrupted_writer_leaves_a_playable_file(tmp_path: Path, sig, suffix: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / f"cut{suffix}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    written = -1
    try:
        for line in child.stdout:
            written = int(line)
            if written >= 60:
                break
        child.send_signal(sig)
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert written >= 60, "the child stopped before writing 60 frames"
    assert child.returncode == -sig
    with av.open(str(out)) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    assert len(times) > 0
    assert times == sorted(times) and times[0] == 0.0
    if sig == signal.SIGINT:  # the `with` block closed the file: nothing written is lost
        assert len(times) >= 61


def test_exception_inside_with_still_finishes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, (64, 48), 30) as writer:
            for i in range(5):
                writer.write(card(i), i / 30)
            raise RuntimeError("boom")
    assert len(video_pts(path)[0]) == 5


def test_unwritable_outputs_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "such" / "out.mp4", (64, 48), 30)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        VideoWriter(a_file / "out.mp4", (64, 48), 30)
    with pytest.raises(OutputError, match="unknown video file ending '.avi2'") as info:
        VideoWriter(tmp_path / "out.avi2", (64, 48), 30)
    assert "\n" not in str(info.value)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        VideoWriter(tmp_path / "dir.mp4", (64, 48), 30)
    with pytest.raises(InputError, match="no such file"):
        VideoWriter(tmp_path / "out.mp4", (64, 48), 30, audio_from=tmp_path / "missing.mp4")
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.avi2").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_an_output_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            VideoWriter(folder / "out.mp4", (64, 48), 30)
    finally:
        folder.chmod(0o700)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="crf"):
        VideoWriterOptions(crf=70)
    with pytest.raises(ValueError, match="gop_seconds"):
        VideoWriterOptions(gop_seconds=0)
