"""The pybind11 module steadyserve._core on its own: batching, errors, GIL release."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from steadyserve import _core
from steadyserve.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)

FEATURES = 4
ROW_BYTES = FEATURES * 4


def make(max_batch_size=8, **kw) -> _core.Batcher:
    return _core.Batcher("m", [("x", ROW_BYTES, None)], max_batch_size=max_batch_size, **kw)


def rows(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, FEATURES), value, dtype=np.float32)


def test_clock_is_time_monotonic_ns():
    before = time.monotonic_ns()
    now = _core.now_ns()
    after = time.monotonic_ns()
    assert before <= now <= after


def test_batch_carries_each_request_rows_at_its_offset():
    b = make()
    b.submit(11, [rows(1.0, 2)], 2)
    b.submit(12, [rows(2.0, 3)], 3)
    buffer, n, tokens, offsets, counts, enqueue_ns, views, dropped, codes, stopped = b.next_batch(
        1.0
    )
    assert n == 5 and not stopped and len(dropped) == 0
    assert list(tokens) == [11, 12] and list(offsets) == [0, 2] and list(counts) == [2, 3]
    x = views[0].view(np.float32).reshape(n, FEATURES)
    np.testing.assert_array_equal(x[:2], rows(1.0, 2))
    np.testing.assert_array_equal(x[2:], rows(2.0, 3))
    assert all(e > 0 for e in enqueue_ns)
    b.complete(buffer, n, 1000)
    assert b.stats()["batches"] == 1 and b.stats()["rows_executed"] == 5


def test_caller_memory_is_free_after_submit():
    b = make()
    data = rows(3.0)
    b.submit(1, [data], 1)
    data[:] = -1  # the core copied it
    buffer, n, *_, views, _d, _c, _s = b.next_batch(1.0)
    np.testing.assert_array_equal(views[0].view(np.float32), rows(3.0).ravel())
    b.complete(buffer, n, 1)


def test_errors_map_to_steadyserve_exceptions():
    b = make(max_batch_size=2, max_queue_size=1)
    with pytest.raises(InvalidArgumentError, match="batch of 3 rows.*max_batch_size 2"):
        b.submit(1, [rows(0, 3)], 3)
    with pytest.raises(InvalidArgumentError, match="expected 32 contiguous bytes"):
        b.submit(1, [rows(0, 1)], 2)
    with pytest.raises(InvalidArgumentError, match="not contiguous"):
        b.submit(1, [np.zeros((2, 8), np.float32)[:, ::2]], 2)
    with pytest.raises(DeadlineExceededError, match="deadline already passed"):
        b.submit(1, [rows(0)], 1, deadline_ns=time.monotonic_ns() - 1)
    b.submit(1, [rows(0)], 1)
    with pytest.raises(ResourceExhaustedError, match="max_queue_size 1"):
        b.submit(2, [rows(0)], 1)
    b.stop()
    with pytest.raises(UnavailableError, match="stopping"):
        b.submit(3, [rows(0)], 1)


def test_bad_options_are_refused():
    with pytest.raises(InvalidArgumentError, match="preferred batch size 9"):
        make(max_batch_size=8, preferred_batch_sizes=[9])
    with pytest.raises(InvalidArgumentError, match="0 bytes per row"):
        _core.Batcher("m", [("x", 0, None)], max_batch_size=4)


def test_expired_request_reported_dropped_not_batched():
    b = make(max_queue_delay_us=60_000_000)
    b.submit(7, [rows(0)], 1, deadline_ns=time.monotonic_ns() + 5_000_000)
    result = b.next_batch(2.0)
    assert result is not None
    _buffer, n, tokens, *_rest, dropped, codes, stopped = result
    assert n == 0 and list(dropped) == [7] and list(codes) == [4]  # DEADLINE_EXCEEDED
    assert b.stats()["expired"] == 1


def test_cancel_withdraws_queued_request():
    b = make()
    h, _ = b.submit(1, [rows(1.0)], 1)
    b.submit(2, [rows(2.0)], 1)
    assert b.cancel(h) is True
    buffer, n, tokens, *_ = b.next_batch(1.0)
    assert list(tokens) == [2]
    b.complete(buffer, n, 1)


def test_next_batch_releases_the_gil():
    # If next_batch held the GIL while waiting, this thread could not submit
    # until the executor's 10 s timeout ran out, and the executor would get None.
    b = make()
    got = {}

    def executor():
        got["batch"] = b.next_batch(10.0)

    t = threading.Thread(target=executor)
    t.start()
    time.sleep(0.05)
    started = time.monotonic()
    b.submit(5, [rows(5.0)], 1)
    t.join(20)
    assert got["batch"] is not None and list(got["batch"][2]) == [5]
    assert time.monotonic() - started < 9.0
    b.complete(got["batch"][0], got["batch"][1], 1)


def test_stop_drains_then_reports_stopped():
    b = make(max_batch_size=2, max_queue_delay_us=60_000_000)
    for token in range(1, 6):
        b.submit(token, [rows(token)], 1)
    b.stop()
    seen = []
    while True:
        buffer, n, tokens, *_rest, stopped = b.next_batch(5.0)
        if stopped:
            break
        seen.extend(int(t) for t in tokens)
        b.complete(buffer, n, 1)
    assert seen == [1, 2, 3, 4, 5]


def test_latency_model_estimates_from_records():
    b = make(max_batch_size=64)
    assert b.estimate_ns(8) == 0
    b.record_latency(8, 800)
    b.record_latency(16, 1600)
    assert b.estimate_ns(12) == 1200
