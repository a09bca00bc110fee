"""``steadyserve export`` (predictions.export): a training dataset from a real log, with
labels from real label files."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from steadyserve.errors import ConfigError
from steadyserve.predictions.capture import LoggedBatch
from steadyserve.predictions.export import export, parse_since
from steadyserve.predictions.labels import LabelFile
from steadyserve.predictions.writer import PredictionLog

T0 = 1764601200.5
# Requests: a (1 row, scalar label), b (3 rows, a label per row), c (2 rows, a label of
# the wrong length: unlabelled), d (1 row, no label), then e (1 row, labelled) later.
ROWS = {"a": 1, "b": 3, "c": 2, "d": 1}
LABELS = {"a": 7, "b": [0, 1, 2], "c": [5], "e": 9}


def logged(ids, rows, time_s, seed):
    rng = np.random.default_rng(seed)
    total = sum(rows)
    x = rng.standard_normal((total, 3)).astype(np.float32)
    x[0, 1] = np.nan
    return LoggedBatch(
        model="m",
        version="2",
        time=time_s,
        request_ids=ids,
        asked=["m"] * len(ids),
        rows=np.array(rows, dtype=np.int64),
        inputs={"x": x, "age": rng.integers(0, 100, (total, 1))},
        scaled={"x": x * 2},
        outputs={"score": rng.random((total, 2)).astype(np.float32), "cls": np.arange(total)},
    )


@pytest.fixture
def log_root(tmp_path):
    """A log of model m: the first batch at T0, e alone an hour later; labels for them
    (a's first label replaced by a later one)."""
    root = tmp_path / "log"
    first = logged(list(ROWS), list(ROWS.values()), T0, seed=0)
    later = logged(["e"], [1], T0 + 3600, seed=1)
    log = PredictionLog(root, format="parquet")
    log.offer(first)
    log.offer(later)
    log.close()
    labels = LabelFile(root, "m")
    labels.append([("a", 3, T0 + 1)])
    labels.append([(rid, label, T0 + 2) for rid, label in LABELS.items()])
    labels.close()
    return root, first, later


def expected_rows(*batches):
    """(request id, x row, age, score row, cls, label) of every example row."""
    out = []
    for b in batches:
        for rid, start, rows in zip(b.request_ids, b.starts(), b.rows, strict=True):
            label = LABELS.get(rid)
            for i in range(int(rows)):
                r = int(start) + i
                if isinstance(label, list):
                    row_label = label[i] if len(label) == rows else None
                else:
                    row_label = label if rows == 1 else None
                out.append(
                    (
                        rid,
                        b.inputs["x"][r],
                        int(b.inputs["age"][r, 0]),
                        b.outputs["score"][r],
                        int(b.outputs["cls"][r]),
                        row_label,
                    )
                )
    return out


def read_back(path, fmt) -> list[dict]:
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same_float32(cell, want: np.float32) -> bool:
    if cell is None or cell == "":  # JSON and CSV: NaN has no value of its own
        return bool(np.isnan(want))
    return np.float32(cell).tobytes() == np.float32(want).tobytes()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_reproduces_the_logged_rows_with_their_labels(log_root, tmp_path, fmt):
    root, first, later = log_root
    out = tmp_path / "out" / f"train.{fmt}"
    summary = export(root, "m", out, since=None, labelled=False)
    assert (summary.rows, summary.requests, summary.labelled, summary.path) == (8, 5, 5, out)

    got = read_back(out, fmt)
    assert list(got[0]) == [
        "request_id", "time", "model_version", "answered_by", "x[0]", "x[1]", "x[2]", "age",
        "output.score[0]", "output.score[1]", "output.cls", "label",
    ]  # fmt: skip
    want = expected_rows(first, later)
    assert len(got) == len(want)
    for row, (rid, x, age, score, cls, label) in zip(got, want, strict=True):
        assert row["request_id"] == rid
        assert str(row["model_version"]) == "2" and row["answered_by"] == "m"
        assert float(row["time"]) == (T0 + 3600 if rid == "e" else T0)
        assert all(same_float32(row[f"x[{i}]"], x[i]) for i in range(3))
        assert all(same_float32(row[f"output.score[{i}]"], score[i]) for i in range(2))
        assert int(row["age"]) == age and int(row["output.cls"]) == cls
        if label is None:
            assert row["label"] in (None, "")
        else:
            assert int(row["label"]) == label


def test_a_later_label_replaces_an_earlier_one(log_root, tmp_path):
    root, _, _ = log_root
    export(root, "m", tmp_path / "all.parquet")
    assert pq.read_table(tmp_path / "all.parquet").column("label")[0].as_py() == 7


def test_labelled_keeps_only_the_rows_with_a_label(log_root, tmp_path):
    root, _, _ = log_root
    summary = export(root, "m", tmp_path / "l.parquet", labelled=True)
    assert (summary.rows, summary.requests, summary.labelled) == (5, 3, 5)
    table = pq.read_table(tmp_path / "l.parquet")
    assert table.column("request_id").to_pylist() == ["a", "b", "b", "b", "e"]
    assert table.column("label").to_pylist() == [7, 0, 1, 2, 9]


def test_since_keeps_the_later_requests(log_root, tmp_path):
    root, _, later = log_root
    summary = export(root, "m", tmp_path / "s.jsonl", since=T0 + 60)
    assert (summary.rows, summary.requests) == (1, 1)
    (row,) = read_back(tmp_path / "s.jsonl", "jsonl")
    assert row["request_id"] == "e" and row["label"] == 9
    assert same_float32(row["x[0]"], later.inputs["x"][0, 0])


def test_an_empty_export_writes_the_header(tmp_path):
    PredictionLog(tmp_path / "log", format="jsonl").close()
    summary = export(tmp_path / "log", "m", tmp_path / "e.csv")
    assert (summary.rows, summary.requests, summary.labelled) == (0, 0, 0)
    assert (tmp_path / "e.csv").read_text().strip().split(",")[0] == "request_id"


def test_the_format_comes_from_the_suffix_or_is_refused(log_root, tmp_path):
    root, _, _ = log_root
    with pytest.raises(ConfigError, match="suffix"):
        export(root, "m", tmp_path / "out.txt")
    with pytest.raises(ConfigError, match="format"):
        export(root, "m", tmp_path / "out.txt", format="xlsx")
    assert export(root, "m", tmp_path / "out.txt", format="csv").rows == 8
    assert not (tmp_path / ".out.txt.partial").exists()


NOW = 1764601200.0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("90m", NOW - 5400),
        ("24h", NOW - 86400),
        ("7d", NOW - 7 * 86400),
        ("3600s", NOW - 3600),
        ("1.5h", NOW - 5400),
        ("2w", NOW - 14 * 86400),
        ("2025-12-01", datetime(2025, 12, 1, tzinfo=timezone.utc).timestamp()),
        ("2025-12-01T08:30:00", datetime(2025, 12, 1, 8, 30, tzinfo=timezone.utc).timestamp()),
        ("2025-12-01T08:30:00Z", datetime(2025, 12, 1, 8, 30, tzinfo=timezone.utc).timestamp()),
        (
            "2025-12-01T09:30:00+01:00",
            datetime(2025, 12, 1, 8, 30, tzinfo=timezone.utc).timestamp(),
        ),
    ],
)
def test_parse_since(text, want):
    assert math.isclose(parse_since(text, NOW), want, abs_tol=1e-6)


@pytest.mark.parametrize("text", ["yesterday", "3600", "", "-5m", "5 minutes", "2025-13-01"])
def test_parse_since_refuses_what_it_cannot_read(text):
    with pytest.raises(ConfigError, match="ISO 8601") as caught:
        parse_since(text, NOW)
    assert isinstance(caught.value, ValueError)
