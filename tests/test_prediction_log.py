"""The prediction log (predictions.writer / reader): real files, the real writer thread.

Waits are bounded polls or the log's own flush(); nothing asserts on timings."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from steadyserve.errors import ConfigError
from steadyserve.monitoring import prediction_log as log_metrics
from steadyserve.predictions.capture import LoggedBatch
from steadyserve.predictions.reader import prediction_files, read_predictions
from steadyserve.predictions.writer import PredictionLog

FORMATS = ["parquet", "jsonl"]
WAIT_S = 10.0
SPECIAL = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4028235e38, 0.1], np.float32)


def batch(rows, asked=None, *, model="m", ids=None, time_s=1764601200.125, seed=0):
    """A batch of requests of ``rows`` rows each: float32 x [r, 3] (NaN, inf, -0 and a
    denormal among the values), int64 n [r], bool flag [r, 2], strings s [r]; x scaled
    to float64; outputs y float32 [r, 2] and cls int64 [r]."""
    rng = np.random.default_rng(seed)
    total = sum(rows)
    x = rng.standard_normal((total, 3)).astype(np.float32)
    x.flat[: min(x.size, len(SPECIAL))] = SPECIAL[: x.size]
    strings = np.array([f"s{seed}-{i}".encode() for i in range(total)], dtype=object)
    if total:
        strings[0] = "é\x00"  # str and NUL: logged as UTF-8 bytes
    return LoggedBatch(
        model=model,
        version="3",
        time=time_s,
        request_ids=ids or [f"r{seed}-{i}" for i in range(len(rows))],
        asked=asked or [model] * len(rows),
        rows=np.array(rows, dtype=np.int64),
        inputs={
            "x": x,
            "n": rng.integers(-(2**62), 2**62, total),
            "flag": rng.random((total, 2)) > 0.5,
            "s": strings,
        },
        scaled={"x": x.astype(np.float64) * 2},
        outputs={"y": rng.random((total, 2)).astype(np.float32), "cls": np.arange(total)},
    )


def expected(b: LoggedBatch) -> dict[str, dict]:
    """request id -> what the reader must give back for it."""
    out = {}
    for i, (rid, start, rows) in enumerate(zip(b.request_ids, b.starts(), b.rows, strict=True)):
        part = slice(int(start), int(start + rows))
        out[rid] = {
            "model": b.asked[i],
            "answered_by": b.model,
            "rows": int(rows),
            "inputs": {n: a[part] for n, a in b.inputs.items()},
            "scaled": {n: a[part] for n, a in b.scaled.items()},
            "outputs": {n: a[part] for n, a in b.outputs.items()},
        }
    return out


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    want = np.asarray(want)
    if want.dtype == object:
        want = np.array([v.encode() if isinstance(v, str) else v for v in want.flat], object)
        want = want.reshape(got.shape)
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype.kind == "f":  # bit for bit: NaN, -0.0 and the denormal included
        assert got.tobytes() == want.tobytes()
    else:
        assert got.tolist() == want.tolist()


def records(root, model) -> dict[str, dict]:
    return {r["request_id"]: r for r in read_predictions(root, model)}


def wait_until(predicate) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.mark.parametrize("fmt", FORMATS)
def test_records_round_trip_exactly_into_the_asked_models_directories(tmp_path, fmt):
    seen = []
    log = PredictionLog(tmp_path, format=fmt, on_batch=seen.append)
    one = batch([1, 3, 2], asked=["m", "backed", "m"], model="m")
    two = batch([2], model="backed", seed=1)  # the backup answering for itself
    assert log.offer(one) and log.offer(two)
    assert log.close()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["backed", "m"]
    want = {**expected(one), **expected(two)}
    got = {**records(tmp_path, "m"), **records(tmp_path, "backed")}
    assert set(got) == set(want)
    for rid, record in got.items():
        w = want[rid]
        assert record["time"] == 1764601200.125
        assert (record["model"], record["answered_by"]) == (w["model"], w["answered_by"])
        assert record["version"] == "3" and record["rows"] == w["rows"]
        assert record["failover"] is (w["model"] != w["answered_by"])
        for key in ("inputs", "scaled", "outputs"):
            assert set(record[key]) == set(w[key])
            for name, array in record[key].items():
                assert_same(array, w[key][name])
    assert got["r0-1"]["failover"] and not got["r0-0"]["failover"]
    assert seen == [one, two]
    stats = log.stats()
    assert stats["written"] == {"m": 2, "backed": 2} and stats["dropped"] == {}
    assert stats["files"] == {"m": 1, "backed": 1} and stats["format"] == fmt
    assert stats["queued_bytes"] == 0 and stats["bytes_written"] > 0
    assert all(p.suffix == f".{fmt}" for p in prediction_files(tmp_path, "m"))


def test_a_new_tensor_layout_starts_a_new_file(tmp_path):
    log = PredictionLog(tmp_path, format="parquet")
    first, second = batch([1]), batch([1], seed=1)
    del second.outputs["cls"]  # a new version without that output
    log.offer(first)
    log.offer(second)
    log.close()
    assert len(prediction_files(tmp_path, "m")) == 2
    got = records(tmp_path, "m")
    assert set(got["r0-0"]["outputs"]) == {"y", "cls"} and set(got["r1-0"]["outputs"]) == {"y"}


def test_reading_since_opens_no_file_last_written_before_it(tmp_path):
    log = PredictionLog(tmp_path, format="jsonl")
    now = time.time()
    log.offer(batch([1], time_s=now - 7200, seed=1))  # its file: last written 2 h ago
    log.flush()
    log.offer(batch([1], time_s=now, seed=2))
    log.close()
    old, new = prediction_files(tmp_path, "m")
    os.utime(old, (now - 7200, now - 7200))
    assert [r["request_id"] for r in read_predictions(tmp_path, "m")] == ["r1-0", "r2-0"]
    assert [r["request_id"] for r in read_predictions(tmp_path, "m", since=now - 3600)] == ["r2-0"]
    # Newest first (a restart's restore: it stops at what the index holds).
    got = read_predictions(tmp_path, "m", since=now - 3 * 3600, newest_first=True)
    assert [r["request_id"] for r in got] == ["r2-0", "r1-0"]
    # The skip is by the file's modification time, not its records: a file whose last
    # write was before ``since`` is not opened even if a record in it claims later.
    os.utime(new, (now - 7200, now - 7200))
    assert list(read_predictions(tmp_path, "m", since=now - 3600)) == []


def test_a_parquet_read_of_some_kinds_reads_only_their_columns(tmp_path):
    log = PredictionLog(tmp_path, format="parquet")
    b = batch([2, 1])
    log.offer(b)
    log.close()
    got = {r["request_id"]: r for r in read_predictions(tmp_path, "m", kinds=("output",))}
    want = expected(b)
    for rid, record in got.items():
        assert record["inputs"] == {} and record["scaled"] == {}
        assert record["rows"] == want[rid]["rows"]
        for name, array in want[rid]["outputs"].items():
            assert_same(record["outputs"][name], array)


def test_open_files_are_hidden_until_flushed(tmp_path):
    log = PredictionLog(tmp_path, format="parquet", rotate_s=3600)
    log.offer(batch([2]))
    wait_until(lambda: log.stats()["written"].get("m") == 1)
    assert prediction_files(tmp_path, "m") == []
    assert [p.name.endswith(".parquet.partial") for p in (tmp_path / "m").iterdir()] == [True]
    assert list(read_predictions(tmp_path, "m")) == []
    assert log.flush(WAIT_S)
    assert len(prediction_files(tmp_path, "m")) == 1 and len(records(tmp_path, "m")) == 1
    log.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_rotate_by_size(tmp_path, fmt):
    log = PredictionLog(tmp_path, format=fmt, rotate_bytes=1)  # every write passes it
    for seed in range(3):
        log.offer(batch([1, 2], seed=seed, time_s=1000.0 + seed))
        wait_until(lambda s=seed: log.stats()["files"].get("m") == s + 1)
    log.close()
    files = prediction_files(tmp_path, "m")
    assert len(files) == 3 and log.stats()["files"] == {"m": 3}
    times = [r["time"] for r in read_predictions(tmp_path, "m")]
    assert times == [1000.0, 1000.0, 1001.0, 1001.0, 1002.0, 1002.0]
    between = read_predictions(tmp_path, "m", since=1001.0, until=1002.0)
    assert [r["time"] for r in between] == [1001.0, 1001.0]


def test_a_quiet_models_file_is_closed_by_age(tmp_path):
    log = PredictionLog(tmp_path, format="jsonl", rotate_s=0.05)
    log.offer(batch([1, 1]))
    # No flush, no new batch: the file is closed because it got old (published, then counted).
    wait_until(lambda: log.stats()["files"] == {"m": 1})
    assert len(prediction_files(tmp_path, "m")) == 1 and len(records(tmp_path, "m")) == 2
    log.offer(batch([1], seed=1))
    wait_until(lambda: log.stats()["files"] == {"m": 2})
    assert len(records(tmp_path, "m")) == 3
    log.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_skips_a_truncated_file(tmp_path, fmt, caplog):
    log = PredictionLog(tmp_path, format=fmt)
    log.offer(batch([1, 1, 1], seed=0))
    log.flush()
    log.offer(batch([1, 1], seed=1))
    log.close()
    first, second = prediction_files(tmp_path, "m")
    size = first.stat().st_size
    with open(first, "r+b") as f:
        f.truncate(size - 10)  # a torn footer, or a torn last line
    with caplog.at_level(logging.WARNING, logger="steadyserve.predictions"):
        got = records(tmp_path, "m")
    kept_from_first = 2 if fmt == "jsonl" else 0  # JSON lines: the intact lines stay
    assert set(got) == {f"r0-{i}" for i in range(kept_from_first)} | {"r1-0", "r1-1"}
    assert str(first) in caplog.text and str(second) not in caplog.text


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    entered, release = threading.Event(), threading.Event()

    def stuck_writer(_batch):
        entered.set()
        release.wait(WAIT_S)

    log = PredictionLog(tmp_path, format="jsonl", queue_bytes=1, on_batch=stuck_writer)
    assert log.offer(batch([1]))  # the queue was empty: taken
    assert entered.wait(WAIT_S)  # the writer is stuck on it; its bytes still count
    assert not log.offer(batch([1, 2], asked=["m", "other"], seed=1))
    assert not log.offer(batch([4], seed=2))
    assert not release.is_set()  # offer() returned while the writer could not move
    stats = log.stats()
    assert stats["dropped"] == {("m", "queue_full"): 2, ("other", "queue_full"): 1}
    assert stats["queued_batches"] == 1 and stats["queued_bytes"] == batch([1]).nbytes
    release.set()
    assert log.close(WAIT_S)
    assert not log.offer(batch([1], seed=3))
    assert log.stats()["dropped"][("m", "closed")] == 1
    assert set(records(tmp_path, "m")) == {"r0-0"}


def test_offers_from_many_threads_are_all_written(tmp_path):
    log = PredictionLog(tmp_path, format="parquet")
    per_thread = 40

    def executor(k):
        for i in range(per_thread):
            assert log.offer(batch([1, 2], ids=[f"t{k}-{i}-a", f"t{k}-{i}-b"], seed=i))

    threads = [threading.Thread(target=executor, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.close(WAIT_S)
    got = [r["request_id"] for r in read_predictions(tmp_path, "m")]
    assert len(got) == len(set(got)) == 4 * per_thread * 2
    assert log.stats()["written"] == {"m": 4 * per_thread * 2}


def test_a_write_error_is_counted_and_the_writer_goes_on(tmp_path, caplog):
    seen = []
    log = PredictionLog(tmp_path, format="parquet", on_batch=seen.append)
    (tmp_path / "m").write_text("not a directory")  # where m's files would go
    broken = batch([1, 2])
    with caplog.at_level(logging.ERROR, logger="steadyserve.predictions"):
        log.offer(broken)
        log.offer(batch([1], model="n", seed=1))  # another model is not held up
        assert log.flush(WAIT_S)
    assert log.stats()["dropped"] == {("m", "write_error"): 2}
    assert str(tmp_path / "m") in caplog.text
    assert set(records(tmp_path, "n")) == {"r1-0"}
    (tmp_path / "m").unlink()  # the cause removed: the next batch is written
    log.offer(batch([3], seed=2))
    log.close()
    assert set(records(tmp_path, "m")) == {"r2-0"}
    assert log.stats()["written"] == {"m": 1, "n": 1}
    assert broken not in seen and len(seen) == 2


def test_an_on_batch_error_is_logged_not_fatal(tmp_path, caplog):
    def failing(_batch):
        raise RuntimeError("index full")

    log = PredictionLog(tmp_path, format="jsonl", on_batch=failing)
    with caplog.at_level(logging.ERROR, logger="steadyserve.predictions"):
        log.offer(batch([1]))
        log.flush(WAIT_S)
        log.offer(batch([1], seed=1))
        log.close()
    assert "index full" in caplog.text
    assert set(records(tmp_path, "m")) == {"r0-0", "r1-0"}


FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
sys.path[:0] = {path!r}
import numpy as np
from test_prediction_log import batch
from steadyserve.predictions.writer import PredictionLog

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
log = PredictionLog(Path({root!r}), format={fmt!r})
log.offer(batch([1]))
log.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the disk fills up
big = batch([1])
big.inputs["x"] = np.random.default_rng(0).random((1, 100_000)).astype(np.float32)
big.request_ids = ["big"]
log.offer(big)
log.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
log.offer(batch([2], seed=1))
log.close()
stats = log.stats()
print(json.dumps({{"written": stats["written"], "dropped": list(stats["dropped"].items())}}))
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_full_disk_drops_that_batch_and_later_ones_are_written(tmp_path, fmt):
    here = [os.path.dirname(os.path.abspath(__file__))]
    script = FULL_DISK.format(path=here, root=str(tmp_path), fmt=fmt)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.splitlines()[-1])
    assert stats["dropped"] == [[["m", "write_error"], 1]] and stats["written"] == {"m": 2}
    assert "File too large" in done.stderr
    assert set(records(tmp_path, "m")) == {"r0-0", "r1-0"}
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"rotate_bytes": 0}, "rotate_bytes"),
        ({"queue_bytes": -1}, "queue_bytes"),
        ({"queue_bytes": 1.5}, "queue_bytes"),
        ({"rotate_s": 0}, "rotate_s"),
        ({"rotate_s": float("nan")}, "rotate_s"),
        ({"format": "csv"}, "format"),
        ({"on_batch": 3}, "on_batch"),
    ],
)
def test_bad_arguments_are_refused_by_name(tmp_path, kwargs, named):
    with pytest.raises(ConfigError, match=named):
        PredictionLog(tmp_path, **kwargs)


def test_a_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "log").write_text("")
    with pytest.raises(ConfigError, match="root"):
        PredictionLog(tmp_path / "log")


def test_metrics_read_the_logs_counts(tmp_path):
    registry = CollectorRegistry()
    log = PredictionLog(tmp_path, format="jsonl")
    log_metrics.register(registry, log)
    log.offer(batch([1, 2], asked=["m", "n"]))
    log.close()
    log.offer(batch([1]))
    text = generate_latest(registry).decode()
    assert 'steadyserve_prediction_log_records_total{model="m"} 1.0' in text
    assert 'steadyserve_prediction_log_records_total{model="n"} 1.0' in text
    assert 'steadyserve_prediction_log_dropped_total{model="m",reason="closed"} 1.0' in text
    assert 'steadyserve_prediction_log_files_total{model="n"} 1.0' in text
    assert "steadyserve_prediction_log_queued_bytes 0.0" in text
    written = log.stats()["bytes_written"]
    assert f"steadyserve_prediction_log_written_bytes_total {float(written)}" in text
