"""Sources of `Frame`s: video files (PyAV), cameras (OpenCV), still images and image folders.

Every source has the same small lifecycle: it is opened by its constructor (which fails early, with
an `InputError`, on a user mistake), iterated once (each item is a `Frame` with a real, strictly
increasing timestamp `t`), and closed (`close()` or a `with` block)::

    with open_source("clip.mp4") as source:
        for frame in source:
            ...

Time: a video file's `t` is the frame's own `pts * time_base` relative to the stream start (variable
frame rate is kept); a camera's `t` is `time.monotonic()` at capture relative to the first frame;
stills have no capture time, so an image source's `t` is `index / fps`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import av
import av.error
import cv2
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from puppet.errors import InputError, one_line
from puppet.frame import Frame

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
"""File name endings (lower case) that `open_source` and `ImageSource` treat as still images."""

DEFAULT_FPS = 30.0
"""Nominal rate used when a source does not say (a camera reporting 0, a stream without a rate)."""

_MAX_CONSECUTIVE_DECODE_ERRORS = 10


# --------------------------------------------------------------------------------------------------
# The interface


@dataclass(frozen=True)
class SourceInfo:
    """What a source is, as far as the rest of the pipeline (and the video writer) needs to know.

    description: a human-readable name ("camera 0", the file path).
    path: the input file or folder; None for a camera. The writer copies audio from it.
    fps: nominal (average) frame rate; timestamps, not this number, are the truth.
    size: (width, height) of the upright frames.
    frame_count: number of frames if known in advance, else None.
    is_live: frames arrive in real time (camera, or a file paced with `realtime=True`).
    has_audio: the input file has an audio stream.
    time_base: the video stream's time base (files only): `t` values are multiples of it.
    origin: media time (seconds, container timeline) that t = 0 corresponds to; the writer
        shifts the copied audio by the same amount so that it stays in sync.
    rotation: counter-clockwise degrees applied to make decoded frames upright (files only).
    """

    description: str
    path: Path | None
    fps: float
    size: tuple[int, int]
    frame_count: int | None
    is_live: bool
    has_audio: bool = False
    time_base: Fraction | None = None
    origin: float = 0.0
    rotation: int = 0


@runtime_checkable
class Source(Protocol):
    """A single-pass stream of upright RGB `Frame`s with increasing timestamps."""

    @property
    def info(self) -> SourceInfo: ...

    @property
    def fps(self) -> float: ...

    @property
    def size(self) -> tuple[int, int]: ...

    @property
    def frame_count(self) -> int | None: ...

    @property
    def path(self) -> Path | None: ...

    @property
    def description(self) -> str: ...

    @property
    def is_live(self) -> bool: ...

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _SourceBase:
    """Shared plumbing: the properties read from `info`, single-pass iteration, `with` support."""

    _info: SourceInfo

    def __init__(self) -> None:
        self._iterated = False
        self._closed = False

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def fps(self) -> float:
        return self._info.fps

    @property
    def size(self) -> tuple[int, int]:
        return self._info.size

    @property
    def frame_count(self) -> int | None:
        return self._info.frame_count

    @property
    def path(self) -> Path | None:
        return self._info.path

    @property
    def description(self) -> str:
        return self._info.description

    @property
    def is_live(self) -> bool:
        return self._info.is_live

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise RuntimeError(f"{self._info.description}: source is closed")
        if self._iterated:
            raise RuntimeError(f"{self._info.description}: a source can be iterated only once")
        self._iterated = True
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._info.description!r})"


# --------------------------------------------------------------------------------------------------
# Orientation (pure functions)


def display_matrix_from_bytes(data: bytes) -> np.ndarray:
    """FFmpeg's display matrix side data (9 little-endian int32, fixed point) -> int32[9]."""
    if len(data) != 36:
        raise ValueError(f"a display matrix has 36 bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i4").astype(np.int32)


def display_rotation(matrix: np.ndarray) -> float:
    """Counter-clockwise rotation (degrees, in [-180, 180]) of a display matrix.

    Same as FFmpeg's `av_display_rotation_get` and PyAV's `VideoFrame.rotation`.
    matrix: int32[9], FFmpeg layout.
    """
    m = np.asarray(matrix, dtype=np.float64) / 65536.0
    scale0 = np.hypot(m[0], m[3])
    scale1 = np.hypot(m[1], m[4])
    if scale0 == 0.0 or scale1 == 0.0:
        return 0.0
    return float(-np.degrees(np.arctan2(m[1] / scale1, m[0] / scale0)))


def apply_display_matrix(image: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """Turn a decoded frame upright the way FFmpeg's own tools do (`autorotate`).

    image: (H, W, C) array as decoded; matrix: int32[9] display matrix or None.
    Returns (H', W', C), C-contiguous: rotated by a multiple of 90 degrees, flipped where the
    matrix mirrors. Rotations that are not a multiple of 90 degrees are rounded to the nearest one.
    """
    if matrix is None:
        return image
    m = np.asarray(matrix)
    # fftools/ffmpeg_filter.c: theta = -round(av_display_rotation_get(m)), brought into [0, 360).
    theta = -round(display_rotation(m))
    theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
    quarter = int(round(theta / 90.0)) % 4
    if abs(theta - 90 * round(theta / 90.0)) > 1.0:
        log.warning("rotation of %.1f degrees is not a multiple of 90: rounded", theta)
    if quarter == 1:  # 90 clockwise
        out = np.transpose(image, (1, 0, 2)) if m[3] > 0 else np.rot90(image, -1)
    elif quarter == 2:
        out = image
        if m[0] < 0:
            out = out[:, ::-1]
        if m[4] < 0:
            out = out[::-1]
    elif quarter == 3:  # 90 counter-clockwise
        out = np.rot90(image, -1)[::-1] if m[3] < 0 else np.rot90(image, 1)
    else:
        out = image[::-1] if m[4] < 0 else image
    return np.ascontiguousarray(out)


def _frame_display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    for side_data in frame.side_data:
        if side_data.type == SideDataType.DISPLAYMATRIX:
            return display_matrix_from_bytes(bytes(side_data))
    return None


# --------------------------------------------------------------------------------------------------
# Video files


@dataclass(frozen=True)
class VideoFileOptions:
    """How to read a video file.

    realtime: pace frames at their media time against the wall clock (a clip standing in for a
        webcam); the source is then live, and `t` stays the media time.
    threaded_decode: let FFmpeg decode with several threads (`thread_type = "AUTO"`).
    """

    realtime: bool = False
    threaded_decode: bool = True


class VideoFileSource(_SourceBase):
    """Frames of the first video stream of anything FFmpeg reads, upright RGB uint8.

    Damage part-way through never raises: a file cut short (or a read error) ends the stream with a
    logged warning, keeping the frames decoded so far; a packet that does not decode is skipped
    with a warning (ten in a row end the stream). A file whose first frame cannot be decoded is an
    `InputError`. A frame without pts gets the previous `t` + 1/fps (logged); so does a frame whose
    pts does not increase, so that `t` is always strictly increasing.
    """

    def __init__(self, path: str | Path, options: VideoFileOptions = VideoFileOptions()) -> None:
        super().__init__()
        self.options = options
        path = Path(path)
        if not path.exists():
            raise InputError(f"no such file: {path}")
        if path.is_dir():
            raise InputError(f"{path} is a folder, not a video file")
        try:
            self._container = av.open(str(path), mode="r")
        except av.error.FFmpegError as e:
            raise InputError(
                f"cannot read {path}: not a media file, or its header is corrupt or truncated "
                f"({one_line(e)})"
            ) from None
        try:
            self._setup(path)
        except BaseException:
            self._container.close()
            raise

    def _setup(self, path: Path) -> None:
        container = self._container
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise InputError(f"{path} has no video stream (it holds {kinds})")
        stream = container.streams.video[0]
        if self.options.threaded_decode:
            stream.thread_type = "AUTO"
        self._stream = stream
        self._time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else DEFAULT_FPS
        self._packets = container.demux(stream)
        self._pending: list[av.VideoFrame] = []
        self._errors = 0
        self._warned_pts = False
        self._ended = False
        first = self._next_decoded()
        if first is None:
            raise InputError(
                f"cannot decode the first video frame of {path}: the file is corrupt or truncated"
            )
        self._pending.insert(0, first)
        # Read once per stream: the matrix is the track's (it does not change between frames), and
        # reading a frame's side data puts that frame in a reference cycle (VideoFrame <->
        # SideDataContainer) that only the cycle collector frees, with its picture buffers.
        matrix = _frame_display_matrix(first)
        self._display_matrix = matrix
        image = apply_display_matrix(first.to_ndarray(format="rgb24"), matrix)
        self._first_image = image
        rotation = int(round(display_rotation(matrix))) if matrix is not None else 0
        start = stream.start_time
        if first.pts is not None:
            start = first.pts if start is None else min(start, first.pts)
        self._start_pts = start or 0
        self._info = SourceInfo(
            description=str(path),
            path=path,
            fps=fps,
            size=(image.shape[1], image.shape[0]),
            frame_count=stream.frames if stream.frames > 0 else None,
            is_live=self.options.realtime,
            has_audio=bool(container.streams.audio),
            time_base=Fraction(self._time_base),
            origin=float(self._start_pts * self._time_base),
            rotation=rotation,
        )
        log.info(
            "opened %s: %dx%d, %.3f fps nominal, %s frames, rotation %d, audio %s",
            path, *self._info.size, fps, self._info.frame_count, rotation, self._info.has_audio,
        )

    def _next_decoded(self) -> av.VideoFrame | None:
        """The next decoded frame in presentation order; None at the end or after a fatal error."""
        if self._closed:
            return None
        while not self._pending:
            if self._ended:
                return None
            try:
                packet = next(self._packets)
            except StopIteration:
                self._ended = True
                return None
            except av.error.FFmpegError as e:
                log.warning(
                    "%s: reading stopped after a demux error (%s); keeping the frames so far",
                    self._container.name, one_line(e),
                )
                self._ended = True
                self._flush_decoder()
                continue
            try:
                self._pending.extend(self._stream.decode(packet))
                self._errors = 0
            except av.error.FFmpegError as e:
                self._errors += 1
                log.warning("%s: skipped a packet that does not decode (%s)",
                            self._container.name, one_line(e))
                if self._errors >= _MAX_CONSECUTIVE_DECODE_ERRORS:
                    log.warning("%s: %d decode errors in a row: stopping",
                                self._container.name, self._errors)
                    self._ended = True
        return self._pending.pop(0)

    def _flush_decoder(self) -> None:
        try:
            self._pending.extend(self._stream.decode(None))
        except av.error.FFmpegError as e:
            log.warning("%s: flushing the decoder failed (%s)", self._container.name, one_line(e))

    def _frames(self) -> Iterator[Frame]:
        tb = self._time_base
        fps = self._info.fps
        prev_t: float | None = None
        wall0: float | None = None
        index = 0
        image: np.ndarray | None = self._first_image
        self._first_image = None
        while (frame := self._next_decoded()) is not None:
            if frame.pts is None:
                t = 0.0 if prev_t is None else prev_t + 1.0 / fps
                if not self._warned_pts:
                    log.warning("%s: frame %d has no pts: using the previous time + 1/fps",
                                self._container.name, index)
                    self._warned_pts = True
            else:
                t = float((frame.pts - self._start_pts) * tb)
                if prev_t is not None and t <= prev_t:
                    log.warning("%s: frame %d has a non-increasing pts (%.6f s after %.6f s): "
                                "using the previous time + 1/fps",
                                self._container.name, index, t, prev_t)
                    t = prev_t + 1.0 / fps
            if image is None:
                image = apply_display_matrix(frame.to_ndarray(format="rgb24"), self._display_matrix)
            if self.options.realtime:
                now = time.monotonic()
                if wall0 is None:
                    wall0 = now - t
                delay = wall0 + t - now
                if delay > 0:
                    time.sleep(delay)
            yield Frame(image=image, t=t, index=index)
            image = None
            prev_t = t
            index += 1
        expected = self._info.frame_count
        if expected is not None and index < expected and not self._closed:
            log.warning("%s: the video ended after %d of its %d frames (truncated or damaged?)",
                        self._container.name, index, expected)

    def close(self) -> None:
        if not self._closed:
            self._container.close()
        super().close()


# --------------------------------------------------------------------------------------------------
# Cameras


@dataclass(frozen=True)
class CameraOptions:
    """What to ask of a camera (it may give something else: `size` and `fps` say what it gives).

    width, height: requested capture size in pixels (None: the camera's default).
    fps: requested frame rate (None: the camera's default).
    """

    width: int | None = None
    height: int | None = None
    fps: float | None = None


class CameraSource(_SourceBase):
    """Frames from a camera through OpenCV (`cv2.VideoCapture`): an index or a /dev/videoN path.

    `t` is `time.monotonic()` right after each capture, relative to the first frame.
    """

    def __init__(self, device: int | str, options: CameraOptions = CameraOptions()) -> None:
        super().__init__()
        self.options = options
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        self.device = device
        name = f"camera {device}"
        cap = cv2.VideoCapture(device)
        if not cap.isOpened():
            cap.release()
            raise InputError(f"no camera at {device}: it cannot be opened")
        if options.width is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, options.width)
        if options.height is not None:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, options.height)
        if options.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, options.fps)
        ok, bgr = cap.read()
        if not ok or bgr is None:
            cap.release()
            raise InputError(f"no camera at {device}: it opened but gave no image")
        self._t0 = time.monotonic()
        self._cap = cap
        self._first = _bgr_to_rgb(bgr)
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not fps or not np.isfinite(fps) or fps <= 0:
            fps = options.fps or DEFAULT_FPS
        self._info = SourceInfo(
            description=name,
            path=None,
            fps=float(fps),
            size=(self._first.shape[1], self._first.shape[0]),
            frame_count=None,
            is_live=True,
        )
        asked = (options.width or self._info.size[0], options.height or self._info.size[1])
        if asked != self._info.size:
            log.warning("%s gives %dx%d, not the %dx%d asked for", name, *self._info.size, *asked)
        log.info("opened %s: %dx%d at %.1f fps", name, *self._info.size, self._info.fps)

    def _frames(self) -> Iterator[Frame]:
        yield Frame(image=self._first, t=0.0, index=0)
        self._first = None
        index = 1
        prev_t = 0.0
        while not self._closed:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                log.info("%s: no more frames", self._info.description)
                return
            t = time.monotonic() - self._t0
            if t <= prev_t:  # two captures within one clock tick
                t = np.nextafter(prev_t, np.inf)
            yield Frame(image=_bgr_to_rgb(bgr), t=float(t), index=index)
            prev_t = t
            index += 1

    def close(self) -> None:
        if not self._closed:
            self._cap.release()
        super().close()


def _bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB))
    if bgr.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB))
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


# --------------------------------------------------------------------------------------------------
# Still images


@dataclass(frozen=True)
class ImageOptions:
    """How to play stills.

    fps: the rate at which the stills are stamped (`t = index / fps`: stills have no capture time).
    repeat: how many times the image (or the whole folder, in order) is played.
    """

    fps: float = DEFAULT_FPS
    repeat: int = 1

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {self.repeat}")


class ImageSource(_SourceBase):
    """A still image, or a folder of images in natural name order (non-images are skipped).

    Images are read with OpenCV (EXIF orientation applied). Every image of a folder must have the
    size of the first one.
    """

    def __init__(self, path: str | Path, options: ImageOptions = ImageOptions()) -> None:
        super().__init__()
        self.options = options
        path = Path(path)
        if not path.exists():
            raise InputError(f"no such file: {path}")
        if path.is_dir():
            files = sorted(
                (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                key=lambda p: natural_key(p.name),
            )
            if not files:
                raise InputError(f"no images in folder {path}")
        else:
            files = [path]
        self._files = files
        self._first = read_image(files[0])
        self._info = SourceInfo(
            description=str(path),
            path=path,
            fps=float(options.fps),
            size=(self._first.shape[1], self._first.shape[0]),
            frame_count=len(files) * options.repeat,
            is_live=False,
        )

    def _frames(self) -> Iterator[Frame]:
        size = self._info.size
        index = 0
        single = len(self._files) == 1
        for _ in range(self.options.repeat):
            for file in self._files:
                if self._closed:
                    return
                image = self._first if single or index == 0 else read_image(file)
                if (image.shape[1], image.shape[0]) != size:
                    raise InputError(
                        f"{file} is {image.shape[1]}x{image.shape[0]}, but the first image of the "
                        f"folder is {size[0]}x{size[1]}: all images must have one size"
                    )
                yield Frame(image=image, t=index / self.options.fps, index=index)
                index += 1


def read_image(path: Path) -> np.ndarray:
    """Read an image file as upright RGB uint8 (H, W, 3); `InputError` if it cannot be read."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read image {path}: not an image, or corrupt")
    return _bgr_to_rgb(bgr)


def natural_key(name: str) -> tuple:
    """Sort key that orders "img2" before "img10"."""
    return tuple(
        (0, int(part), part) if part.isdigit() else (1, 0, part.lower())
        for part in re.split(r"(\d+)", name)
        if part
    )


# --------------------------------------------------------------------------------------------------
# Factory


def open_source(
    spec: str | Path,
    *,
    video: VideoFileOptions = VideoFileOptions(),
    camera: CameraOptions = CameraOptions(),
    image: ImageOptions = ImageOptions(),
) -> Source:
    """Open what `spec` names.

    "0", "1"... or /dev/video* -> a camera; a folder -> its images; an image file -> that still;
    anything else -> a video file (whatever FFmpeg reads). A missing path is an `InputError`.
    """
    text = str(spec)
    if text.isdigit() or text.startswith("/dev/video"):
        return CameraSource(int(text) if text.isdigit() else text, camera)
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource(path, image)
    return VideoFileSource(path, video)
