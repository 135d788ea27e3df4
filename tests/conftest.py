"""Shared fixtures: the test media live in ../shared (never in this repo)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MEDIA = SHARED / "media"
FACE_LANDMARKER = SHARED / "assets" / "face_landmarker.task"


def pytest_configure(config: pytest.Config) -> None:
    """The Ctrl-C tests need SIGINT to reach Python. A shell that starts the tests in the background
    (``make test &``, nohup, some CI runners) sets SIGINT to "ignore", which children inherit through
    exec, and then neither this process nor the commands the tests start could be interrupted.
    A Python handler here is reset to the default in every child, so Ctrl-C works again in all."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test asset {path} is absent (tests expect ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def media_dir() -> Path:
    return _require(MEDIA)


@pytest.fixture(scope="session")
def face_video() -> Path:
    """A face close-up with an AAC audio track."""
    return _require(MEDIA / "video" / "lp_d3.mp4")


@pytest.fixture(scope="session")
def body_video() -> Path:
    """Head and shoulders, 1280x720."""
    return _require(MEDIA / "video" / "lp_s32.mp4")


@pytest.fixture(scope="session")
def face_image() -> Path:
    return _require(MEDIA / "images" / "lp_s0.jpg")


@pytest.fixture(scope="session")
def face_landmarker_task() -> Path:
    return _require(FACE_LANDMARKER)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny torch graphs (``pytestmark = pytest.mark.usefixtures(...)``): on the
    shared 2-core machine two spinning OpenMP threads made them 5-10x slower than one (a 60 ms
    frame took over a second)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
