"""The engine's read-ahead: order kept, failures per key, bounded look-ahead."""

from __future__ import annotations

import threading

import pytest

from hovernet.infer.engine import read_ahead


def test_read_ahead_keeps_order_and_reports_failures_per_key():
    def read(key: int) -> int:
        if key == 3:
            raise ValueError("bad 3")
        return key * 10

    got = []
    for key, future in read_ahead(range(6), read, workers=2):
        if key == 3:
            with pytest.raises(ValueError, match="bad 3"):
                future.result()
            got.append(None)
        else:
            got.append(future.result())
    assert got == [0, 10, 20, None, 40, 50]


def test_read_ahead_reads_at_most_workers_plus_one_ahead():
    started: list[int] = []
    lock = threading.Lock()

    def read(key: int) -> int:
        with lock:
            started.append(key)
        return key

    stream = read_ahead(iter(range(100)), read, workers=2)
    key, future = next(stream)
    future.result()
    assert key == 0
    # the consumer holds key 0: keys 0..2 were submitted, plus one more once 0 was taken
    assert len(started) <= 4
    assert [k for k, _ in stream][:3] == [1, 2, 3]
