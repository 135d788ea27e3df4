"""Frame sources: video files (timestamps, rotation, damage), cameras, stills, the factory."""

from __future__ import annotations

import gc
import logging
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from puppet.errors import InputError
from puppet.sources import (
    CameraSource,
    ImageOptions,
    ImageSource,
    Source,
    VideoFileOptions,
    VideoFileSource,
    apply_display_matrix,
    natural_key,
    open_source,
)


def quadrants(width: int = 64, height: int = 32) -> np.ndarray:
    """RGB test card: red top-left, green top-right, blue bottom-left, white bottom-right."""
    img = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    img[:h, :w] = (255, 0, 0)
    img[:h, w:] = (0, 255, 0)
    img[h:, :w] = (0, 0, 255)
    img[h:, w:] = (255, 255, 255)
    return img


def quadrant_colours(img: np.ndarray) -> np.ndarray:
    """(2, 2, 3) mean colour of each quadrant (robust to compression)."""
    h, w = img.shape[0] // 2, img.shape[1] // 2
    return np.array([[img[:h, :w].mean((0, 1)), img[:h, w:].mean((0, 1))],
                     [img[h:, :w].mean((0, 1)), img[h:, w:].mean((0, 1))]])


def write_video(path: Path, images: list[np.ndarray], pts: list[int], time_base: Fraction,
                fmt: str | None = None, rotation: tuple[int, bool] | None = None,
                movflags: str | None = None) -> Path:
    """Encode `images` at the given integer pts with libx264 (no B-frames)."""
    options = {"movflags": movflags} if movflags else {}
    with av.open(str(path), "w", format=fmt, options=options) as out:
        stream = out.add_stream("libx264", rate=30)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.codec_context.max_b_frames = 0
        if rotation is not None:
            stream.set_display_rotation(rotation[0], hflip=rotation[1])
        for image, p in zip(images, pts):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = p
            frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def moving(n: int, width: int = 64, height: int = 64) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    return [np.stack([(xx * 3 + 5 * i) % 256, yy * 3 % 256, np.full_like(xx, 7 * i % 256)],
                     -1).astype(np.uint8) for i in range(n)]


# --------------------------------------------------------------------------------------------------
# Video files


def test_face_video_frames_carry_real_pts(face_video: Path) -> None:
    with av.open(str(face_video)) as c:  # reference: the packets' own pts (no decoding)
        stream = c.streams.video[0]
        tb, declared = stream.time_base, stream.frames
        pts = sorted(p.pts for p in c.demux(stream) if p.pts is not None)
    with VideoFileSource(face_video) as source:
        assert isinstance(source, Source)
        info = source.info
        assert (info.size, info.fps, info.frame_count) == ((512, 512), 30.0, declared)
        assert info.has_audio and info.time_base == tb and info.path == face_video
        assert not source.is_live
        frames = list(source)
    assert len(frames) == declared == len(pts)
    t = np.array([f.t for f in frames])
    expected = np.array([float((p - pts[0]) * tb) for p in pts])
    np.testing.assert_allclose(t, expected, atol=1e-9)
    assert np.all(np.diff(t) > 0)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert frames[0].image.shape == (512, 512, 3) and frames[0].image.dtype == np.uint8


def test_variable_frame_rate_survives_decoding(tmp_path: Path) -> None:
    pts_ms = [0, 40, 50, 100, 180, 190, 250, 333, 400, 401, 500]
    path = write_video(tmp_path / "vfr.mp4", moving(len(pts_ms)), pts_ms, Fraction(1, 1000))
    with VideoFileSource(path) as source:
        t = [f.t for f in source]
    np.testing.assert_allclose(t, np.array(pts_ms) / 1000.0, atol=1e-9)


def test_stream_that_does_not_start_at_zero_is_relative_to_its_start(tmp_path: Path) -> None:
    pts = [9000, 12000, 15000, 24000]  # video from 0.1 s (plus the muxer delay)
    path = write_video(tmp_path / "late.ts", moving(4), pts, Fraction(1, 90000), fmt="mpegts")
    with VideoFileSource(path) as source:
        origin = source.info.origin
        t = [f.t for f in source]
    assert origin >= 0.1
    np.testing.assert_allclose(t, [0, 1 / 30, 2 / 30, 1 / 6], atol=1e-6)


def test_frames_without_pts_continue_at_one_over_fps(tmp_path: Path, caplog) -> None:
    # A raw H.264 elementary stream has no timestamps at all.
    path = write_video(tmp_path / "raw.h264", moving(6), list(range(6)), Fraction(1, 25),
                       fmt="h264")
    with caplog.at_level(logging.WARNING, logger="puppet.sources"):
        with VideoFileSource(path) as source:
            fps = source.fps
            t = [f.t for f in source]
    assert fps > 0
    np.testing.assert_allclose(t, np.arange(6) / fps, atol=1e-9)
    assert "has no pts" in caplog.text


@pytest.mark.parametrize(
    ("degrees", "hflip", "upright"),
    [
        (90, False, lambda im: np.rot90(im, 1)),  # PyAV/FFmpeg: counter-clockwise degrees
        (-90, False, lambda im: np.rot90(im, -1)),
        (180, False, lambda im: im[::-1, ::-1]),
        (0, True, lambda im: im[:, ::-1]),
        (90, True, lambda im: np.rot90(im, 1)[:, ::-1]),  # mirrored after the rotation
    ],
)
def test_rotation_metadata_is_applied(tmp_path: Path, degrees, hflip, upright) -> None:
    card = quadrants(64, 32)
    path = write_video(tmp_path / "rot.mp4", [card] * 3, [0, 1, 2], Fraction(1, 30),
                       rotation=(degrees, hflip))
    expected = upright(card)
    with VideoFileSource(path) as source:
        assert source.size == (expected.shape[1], expected.shape[0])
        frames = list(source)
    assert len(frames) == 3
    for frame in frames:  # the first frame is decoded while opening, the others while iterating
        assert frame.image.shape == expected.shape
        np.testing.assert_allclose(quadrant_colours(frame.image), quadrant_colours(expected), atol=30)


def test_decoding_leaves_no_reference_cycles(tmp_path: Path) -> None:
    # A frame whose side data was read sits in a cycle that holds its picture buffers until the
    # cycle collector runs: a long live session grew by megabytes that way. The display matrix is
    # read once per stream instead.
    path = write_video(tmp_path / "rot.mp4", moving(40), list(range(40)), Fraction(1, 30),
                       rotation=(90, False))
    gc.collect()
    gc.disable()
    try:
        with VideoFileSource(path) as source:
            assert len([frame.index for frame in source]) == 40
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable < 20, f"{unreachable} objects were only freed by the cycle collector"


def test_display_matrix_without_rotation_is_identity() -> None:
    card = quadrants()
    identity = np.array([65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30], np.int32)
    assert apply_display_matrix(card, None) is card
    np.testing.assert_array_equal(apply_display_matrix(card, identity), card)
    vflip = identity.copy()
    vflip[4] = -65536
    np.testing.assert_array_equal(apply_display_matrix(card, vflip), card[::-1])


def test_realtime_pacing_follows_media_time(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", moving(10), list(range(10)), Fraction(1, 30))
    with VideoFileSource(path, VideoFileOptions(realtime=True)) as source:
        assert source.is_live
        start = time.monotonic()
        frames = list(source)
        elapsed = time.monotonic() - start
    assert frames[-1].t == pytest.approx(9 / 30)
    assert elapsed >= 9 / 30 - 0.02


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        VideoFileSource(tmp_path / "nothing.mp4")
    with pytest.raises(InputError, match="no such file"):
        open_source(str(tmp_path / "nothing.mp4"))


def test_random_bytes_are_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="not a media file") as info:
        open_source(path)
    assert "\n" not in str(info.value)


def test_mp4_cut_before_its_moov_is_an_input_error(tmp_path: Path, face_video: Path) -> None:
    data = face_video.read_bytes()  # lp_d3 keeps its moov atom at the end
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(InputError, match="corrupt or truncated"):
        open_source(path)


def test_truncated_file_keeps_the_frames_decoded_so_far(tmp_path: Path, caplog) -> None:
    whole = write_video(tmp_path / "whole.mp4", moving(60), list(range(60)), Fraction(1, 30),
                        movflags="faststart")  # moov first, so a cut leaves a readable header
    data = whole.read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="puppet.sources"):
        with VideoFileSource(path) as source:
            assert source.frame_count == 60
            frames = list(source)
    assert 0 < len(frames) < 60
    assert all(b.t > a.t for a, b in zip(frames, frames[1:]))
    assert "ended after" in caplog.text


def test_file_whose_first_frame_does_not_decode_is_an_input_error(tmp_path: Path) -> None:
    path = write_video(tmp_path / "garbage.mp4", moving(5), list(range(5)), Fraction(1, 30),
                       movflags="faststart")
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") + 4  # keep the header, scramble every coded picture
    data[start:] = np.random.default_rng(2).integers(0, 256, len(data) - start,
                                                     dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="cannot decode the first video frame"):
        VideoFileSource(path)


def test_audio_only_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(InputError, match="no video stream"):
        open_source(path)


def test_a_source_is_iterated_once(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", moving(3), [0, 1, 2], Fraction(1, 30))
    with VideoFileSource(path) as source:
        assert len(list(source)) == 3
        with pytest.raises(RuntimeError, match="only once"):
            iter(source)


# --------------------------------------------------------------------------------------------------
# Cameras


def test_absent_camera_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no camera at 99"):
        CameraSource(99)
    with pytest.raises(InputError, match="no camera at 99"):
        open_source("99")
    with pytest.raises(InputError, match="no camera at /dev/video99"):
        open_source("/dev/video99")


def test_camera_capture_loop_gives_rgb_and_clock_times(tmp_path: Path) -> None:
    # No camera here: OpenCV's capture also opens a video file, which exercises the same loop.
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 220
    path = write_video(tmp_path / "red.mp4", [red] * 8, list(range(8)), Fraction(1, 30))
    with CameraSource(str(path)) as camera:
        assert camera.is_live and camera.frame_count is None and camera.size == (64, 48)
        frames = list(camera)
    assert len(frames) == 8
    assert frames[0].t == 0.0 and all(b.t > a.t for a, b in zip(frames, frames[1:]))
    r, g, b = frames[3].image.reshape(-1, 3).mean(0)
    assert r > 180 and g < 40 and b < 40  # RGB, not OpenCV's BGR


# --------------------------------------------------------------------------------------------------
# Stills


def write_png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:] = rgb[::-1]  # OpenCV writes BGR
    assert cv2.imwrite(str(path), img)
    return path


def test_still_image_repeated(tmp_path: Path) -> None:
    path = write_png(tmp_path / "still.png", (200, 10, 20))
    with ImageSource(path, ImageOptions(fps=10, repeat=3)) as source:
        assert source.frame_count == 3 and source.size == (40, 30) and not source.is_live
        frames = list(source)
    assert [f.t for f in frames] == [0.0, 0.1, 0.2]
    np.testing.assert_array_equal(frames[0].image[0, 0], (200, 10, 20))


def test_shared_still_opens(face_image: Path) -> None:
    with open_source(face_image) as source:
        assert isinstance(source, ImageSource)
        (frame,) = list(source)
    assert frame.image.shape[2] == 3 and frame.size == source.size


def test_image_folder_in_natural_order_skipping_other_files(tmp_path: Path) -> None:
    write_png(tmp_path / "img10.png", (0, 0, 250))
    write_png(tmp_path / "img2.png", (0, 250, 0))
    write_png(tmp_path / "img1.png", (250, 0, 0))
    (tmp_path / "notes.txt").write_text("not an image")
    with open_source(tmp_path, image=ImageOptions(fps=5)) as source:
        assert isinstance(source, ImageSource) and source.frame_count == 3
        frames = list(source)
    assert [f.image[0, 0].argmax() for f in frames] == [0, 1, 2]
    assert [f.t for f in frames] == [0.0, 0.2, 0.4]


def test_image_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="cannot read image"):
        open_source(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        open_source(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_png(mixed / "a.png", (1, 2, 3), (40, 30))
    write_png(mixed / "b.png", (1, 2, 3), (20, 30))
    with open_source(mixed) as source, pytest.raises(InputError, match="one size"):
        list(source)


def test_natural_key() -> None:
    names = ["f10.png", "f2.png", "F1.png", "f1b.png", "g.png"]
    assert sorted(names, key=natural_key) == ["F1.png", "f1b.png", "f2.png", "f10.png", "g.png"]


def test_open_source_picks_the_kind(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mkv", moving(2), [0, 1], Fraction(1, 30), fmt="matroska")
    with open_source(str(clip)) as source:
        assert isinstance(source, VideoFileSource)
    with open_source(write_png(tmp_path / "x.JPG", (1, 2, 3))) as source:
        assert isinstance(source, ImageSource)


def test_one_line_drops_errno_and_file_name_and_line_breaks() -> None:
    from puppet.errors import one_line

    assert one_line(FileNotFoundError(2, "No such file or directory", "/x/y.mp4")) == "No such file or directory"
    assert one_line(ValueError("bad\n  header\tat 3")) == "bad header at 3"
