"""Bounded memory: what one model or request may make the core hold has a cap, and
going past it is refused with a message that names the cap.

Config bounds (max_batch_size, max_queue_size) are in test_config.py; rows beyond
max_batch_size and full queues in test_runtime.py and test_bad_input.py.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest

import steadyserve
import steadyserve.runtime
from onnx_models import make_repo, write_identity, write_linear
from steadyserve.errors import ResourceExhaustedError
from steadyserve.model import MAX_BATCH_BYTES, MAX_ROW_BYTES

# A window far longer than any test: queued requests stay queued until it closes.
LONG_WINDOW_US = 10_000_000


def _reason(rt, name: str) -> str:
    entry = next(e for e in rt.model_index() if e.name == name)
    assert entry.state == "UNAVAILABLE", entry
    return entry.reason


def test_rows_over_the_caps_are_refused_at_load(tmp_path):
    over = MAX_ROW_BYTES // 4 + 1  # FP32 elements: one more than a row may hold
    per_row = 1 << 18  # 1 MiB rows: 4096 of them would need a 4 GiB batch buffer
    root = make_repo(
        tmp_path,
        {
            "wide": functools.partial(write_identity, dims=(-1, over)),
            "overflow": functools.partial(write_identity, dims=(-1, 1 << 32, 1 << 32)),
            "big_batch": functools.partial(write_identity, dims=(-1, per_row)),
            "fits": functools.partial(write_identity, dims=(-1, per_row)),
        },
        configs={
            "wide": {"max_batch_size": 1},
            "overflow": {"max_batch_size": 1},
            "big_batch": {"max_batch_size": 4096},
            "fits": {"max_batch_size": 4},
        },
    )
    rt = steadyserve.Runtime(root, warmup=False)
    try:
        reason = _reason(rt, "wide")
        assert "input 'input'" in reason and f"{over * 4} bytes per row" in reason
        assert f"at most {MAX_ROW_BYTES} bytes" in reason and "MAX_ROW_BYTES" in reason
        # 2**64 elements: counted exactly, not wrapped around to a small (or zero) size
        reason = _reason(rt, "overflow")
        assert f"{(1 << 64) * 4} bytes per row" in reason and "MAX_ROW_BYTES" in reason
        reason = _reason(rt, "big_batch")
        assert "max_batch_size 4096" in reason and f"at most {MAX_BATCH_BYTES} bytes" in reason
        assert f"max_batch_size to {MAX_BATCH_BYTES // (per_row * 4)} or less" in reason
        x = np.ones((4, per_row), np.float32)
        np.testing.assert_array_equal(rt.infer("fits", {"input": x})["output"], x)
    finally:
        rt.close()


def test_requests_beyond_the_request_pool_are_refused(tmp_path, monkeypatch):
    """The core's request pool (Runtime's MAX_REQUESTS) bounds requests in flight across
    every model: one more is refused at once, naming the limit; once the held requests
    are answered, requests are accepted again."""
    monkeypatch.setattr(steadyserve.runtime, "MAX_REQUESTS", 4)
    root = make_repo(
        tmp_path,
        {"held": functools.partial(write_linear, n_in=4, n_out=2), "free": write_linear},
        configs={
            "held": {
                "max_batch_size": 8,
                "batching": {"max_queue_delay_us": LONG_WINDOW_US},
                # closes the batch well before the deadline, however late the thread wakes
                "slo": {"margin_ms": 200},
            },
            "free": {"max_batch_size": 8},
        },
    )
    rt = steadyserve.Runtime(root)
    x = np.ones((1, 4), np.float32)

    async def main():
        # Held in the queue by the window until deadline-aware batching runs them.
        held = [
            asyncio.ensure_future(rt.infer_async("held", {"x": x}, timeout=1.0)) for _ in range(4)
        ]
        while rt.get_model("held").queue_depth < 4:
            await asyncio.sleep(0.001)
        for model in ("held", "free"):  # the pool is shared by every model
            with pytest.raises(ResourceExhaustedError, match="limit of 4 requests in flight"):
                await rt.infer_async(model, {"x": x})
        for result in await asyncio.gather(*held):
            assert result["y"].shape == (1, 2)
        out = await rt.infer_async("free", {"x": x})
        assert out["y"].shape == (1, 3)

    try:
        asyncio.run(main())
    finally:
        rt.close()
