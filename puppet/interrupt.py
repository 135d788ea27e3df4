"""Ctrl-C as a request to stop between frames, not an exception in the middle of one."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def stop_on_interrupt(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """Turn the first Ctrl-C into an event (``stop``, or a new one) that frame loops check.

    A ``KeyboardInterrupt`` raised in the middle of a frame would leave that frame half-written
    (in the parameters but not the video, or encoded packets lost on their way to the file). The
    handler then steps aside: a second Ctrl-C raises as usual. Off the main thread, or when SIGINT
    has someone else's handler, nothing changes (``KeyboardInterrupt`` is raised as before).
    The yielded event has an ``interrupted`` attribute telling whether Ctrl-C set it.
    """
    event = stop if stop is not None else threading.Event()
    event.interrupted = False  # type: ignore[attr-defined]
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield event
        return

    def on_interrupt(signum: int, frame: object) -> None:
        event.interrupted = True  # type: ignore[attr-defined]
        event.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
