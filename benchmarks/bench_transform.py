"""The fused native feature pass vs the same work in numpy (pytest-benchmark).

The work, per request: refuse NaN/inf, clip to [-10, 10], standard-scale, and count every
value into its feature's 10-bin drift histogram (edges at the reference's deciles).

- ``fused``: ``_core.FeatureTransform.apply`` (what the batcher runs on every request; here
  called from Python, so a single row also pays the binding's ~0.5-1 us of call overhead);
- ``numpy_loop``: ``isfinite`` check + ``clip`` + scale + one ``searchsorted`` and
  ``bincount`` per feature (the natural numpy code);
- ``numpy_flat``: the same with the histogram vectorised over all features: edges and
  values shifted apart per feature in float64, one ``searchsorted`` and one ``bincount``
  (faster than the loop for wide inputs).

Both numpy variants are checked to give exactly the fused pass's output and counts first.

    python -m pytest benchmarks/bench_transform.py --benchmark-only -p no:cacheprovider \
        -o addopts=""
    python benchmarks/bench_transform.py --repeats 3     # 3 runs: median [min-max] table + JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

SHAPES = [(1, 32), (64, 32), (4096, 32), (4096, 512)]
BINS = 10
LO, HI = -10.0, 10.0


class Case:
    """A transform and its numpy twin for one [rows, features] shape."""

    def __init__(self, rows: int, n: int):
        from steadyserve import _core

        rng = np.random.default_rng(n)
        ref = rng.standard_normal((20_000, n)).astype(np.float32)
        self.x = rng.standard_normal((rows, n)).astype(np.float32)
        self.n = n
        mean, std = ref.mean(axis=0), ref.std(axis=0)
        self.offset = mean.astype(np.float32)
        self.scale = (1.0 / std).astype(np.float32)
        self.edges = np.quantile(ref, np.arange(1, BINS) / BINS, axis=0).T.astype(np.float32)
        self.lo = np.full(n, LO, np.float32)
        self.hi = np.full(n, HI, np.float32)
        self.counts = np.zeros((n, BINS), np.int64)
        # For the flat histogram: feature f's values and edges moved to [f * 100 +- 10].
        self.shift = (np.arange(n) * 100.0)[None, :]
        self.flat_edges = (self.edges.astype(np.float64) + self.shift.T).ravel()
        self.bin_base = (np.arange(n) * BINS)[None, :]
        self.feature_base = (np.arange(n) * (BINS - 1))[None, :]
        self.transform = _core.FeatureTransform(
            "bench", "x", [], self.lo.tolist(), self.hi.tolist(),
            [2] * n,  # range: clip
            [0] * n,  # NaN/inf: reject
            [0.0] * n, self.offset.tolist(), self.scale.tolist(),
            bins=BINS, edges=self.edges.ravel().tolist(), sub_windows=10,
            sub_window_rows=1_000_000,
        )  # fmt: skip

    def fused(self, x: np.ndarray) -> np.ndarray:
        return self.transform.apply(x)

    def _checked(self, x: np.ndarray) -> np.ndarray:
        if not np.isfinite(x).all():
            r, f = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"row {r}, feature {f}: value {x[r, f]} is not allowed")
        return np.clip(x, self.lo, self.hi)

    def numpy_loop(self, x: np.ndarray) -> np.ndarray:
        v = self._checked(x)
        y = (v - self.offset) * self.scale
        for f in range(self.n):
            self.counts[f] += np.bincount(
                np.searchsorted(self.edges[f], v[:, f], side="right"), minlength=BINS
            )
        return y

    def numpy_flat(self, x: np.ndarray) -> np.ndarray:
        v = self._checked(x)
        y = (v - self.offset) * self.scale
        idx = np.searchsorted(self.flat_edges, v + self.shift, side="right")
        bins = idx - self.feature_base + self.bin_base
        self.counts += np.bincount(bins.ravel(), minlength=self.n * BINS).reshape(self.n, BINS)
        return y


_CASES: dict[tuple[int, int], Case] = {}


def case(shape: tuple[int, int]) -> Case:
    if shape not in _CASES:
        _CASES[shape] = Case(*shape)
    return _CASES[shape]


def _ids(shape):
    return f"{shape[0]}x{shape[1]}"


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_numpy_twins_do_the_same_work(shape):
    c = Case(*shape)
    x = c.x.copy()
    x[0, 0] = 12.0  # clipped
    y = c.fused(x)
    counts = c.transform.snapshot()["counts"]
    for twin in (c.numpy_loop, c.numpy_flat):
        c.counts[:] = 0
        np.testing.assert_array_equal(twin(x), y)
        np.testing.assert_array_equal(c.counts, counts)
    x[-1, -1] = np.nan
    for fn in (c.fused, c.numpy_loop, c.numpy_flat):
        with pytest.raises(ValueError, match="is not allowed"):
            fn(x)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("impl", ["fused", "numpy_loop", "numpy_flat"])
def test_transform(benchmark, shape, impl):
    c = case(shape)
    benchmark.group = _ids(shape)
    benchmark.extra_info.update(rows=shape[0], features=shape[1], impl=impl)
    fn = getattr(c, impl)
    rounds = 2000 if shape[0] * shape[1] <= 4096 * 32 else 30
    benchmark.pedantic(fn, args=(c.x,), rounds=rounds, iterations=1, warmup_rounds=3)


# --------------------------------------------------------------------------- repeated runs


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args()
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from common import loadavg, machine_info, spread, stamp, write_json

    info = machine_info()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = Path(tmp) / f"run{r}.json"
            load_before = loadavg()
            cmd = [
                sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q",
                "--benchmark-only", "-p", "no:cacheprovider", "-o", "addopts=",
                f"--benchmark-json={out}", "-k", "test_transform",
            ]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=here.parent)
            if done.returncode != 0:
                sys.exit(f"benchmark run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            data = json.loads(out.read_text())
            medians = {
                (b["extra_info"]["impl"], b["group"]): b["stats"]["median"]
                for b in data["benchmarks"]
            }
            runs.append(
                {"medians": medians, "loadavg_before": load_before, "loadavg_after": loadavg()}
            )
            print(f"run {r + 1}/{args.repeats} done, load {loadavg()}", file=sys.stderr)

    table = []
    for shape in SHAPES:
        g = _ids(shape)
        row: dict = {"shape": g}
        for impl in ("fused", "numpy_loop", "numpy_flat"):
            row[f"{impl}_us"] = spread([run["medians"][(impl, g)] * 1e6 for run in runs])
        row["fused_ns_per_row"] = spread(
            [run["medians"][("fused", g)] * 1e9 / shape[0] for run in runs]
        )
        row["speedup_vs_best_numpy"] = spread(
            [
                min(run["medians"][("numpy_loop", g)], run["medians"][("numpy_flat", g)])
                / run["medians"][("fused", g)]
                for run in runs
            ]
        )
        table.append(row)
    result = {
        "benchmark": "transform",
        "machine": info,
        "repeats": args.repeats,
        "runs": [
            {**run, "medians": {f"{k[0]}/{k[1]}": v for k, v in run["medians"].items()}}
            for run in runs
        ],
        "table": table,
        "loadavg_at_end": loadavg(),
    }
    if not args.no_save:
        print(f"wrote {write_json(result, f'transform_{stamp()}.json')}", file=sys.stderr)

    def fmt(d, f=".2f"):
        return f"{d['median']:{f}} [{d['min']:{f}}-{d['max']:{f}}]"

    print(
        f"\n### Fused feature pass vs numpy ({args.repeats} runs, median [min-max] of each "
        f"run's median)\nnproc {info['nproc']}, load at start {info['loadavg_at_start']}, at end "
        f"{result['loadavg_at_end']}\n"
    )
    print(
        "| shape | fused µs | numpy loop µs | numpy flat µs | fused ns/row "
        "| speed-up vs best numpy |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        print(
            f"| {row['shape']} | {fmt(row['fused_us'])} | {fmt(row['numpy_loop_us'])} | "
            f"{fmt(row['numpy_flat_us'])} | {fmt(row['fused_ns_per_row'], '.0f')} | "
            f"{fmt(row['speedup_vs_best_numpy'], '.1f')}x |"
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
