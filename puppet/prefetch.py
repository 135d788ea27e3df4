"""Run an iterator on a background thread, feeding a bounded queue (decode ahead of tracking)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


class Prefetcher(Iterator[T]):
    """Iterate ``source`` on a daemon thread, at most ``depth`` items ahead.

    Lossless (the producer blocks when the queue is full); an exception in the producer is re-raised
    in the consumer. ``close()`` stops the producer early.
    """

    def __init__(self, source: Iterable[T], depth: int = 4, name: str = "prefetch") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(source),), name=name, daemon=True)
        self._thread.start()

    def _run(self, it: Iterator[T]) -> None:
        try:
            for item in it:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put_end(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put_end(exc)

    def _put_end(self, marker: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(marker, timeout=0.1)
                return
            except queue.Full:
                continue

    def __next__(self) -> T:
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
