import threading
import time

import pytest

from puppet.prefetch import Prefetcher


def test_keeps_order_and_every_item():
    with Prefetcher(range(1000), depth=3) as it:
        assert list(it) == list(range(1000))


def test_reraises_producer_errors_in_the_consumer():
    def broken():
        yield 1
        raise ValueError("decoder broke")

    it = Prefetcher(broken())
    assert next(it) == 1
    with pytest.raises(ValueError, match="decoder broke"):
        next(it)


def test_stays_bounded_and_close_stops_the_producer():
    produced = []

    def slow_consumer_source():
        for i in range(10_000):
            produced.append(i)
            yield i

    it = Prefetcher(slow_consumer_source(), depth=4)
    time.sleep(0.2)
    assert len(produced) <= 4 + 2  # queue depth + the item being put + the one being produced
    it.close()
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
