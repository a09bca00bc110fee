"""A Prometheus histogram fed a whole batch of observations at once.

prometheus_client's Histogram takes one observation per call (a lock and a
bucket walk each); the executor answers a batch at a time, so it counts a
batch's durations with one numpy pass instead. Exposed exactly like a
prometheus_client histogram (``_bucket``/``_sum``/``_count``).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily

_SMALL = 32  # up to this many observations, plain Python is cheaper than numpy


class _Child:
    __slots__ = ("_bounds", "_bounds_list", "_counts", "_sum", "_lock")

    def __init__(self, bounds: np.ndarray):
        self._bounds = bounds
        self._bounds_list = bounds.tolist()
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        # 'le' buckets: a value equal to a bound belongs to that bound's bucket.
        index = bisect.bisect_left(self._bounds_list, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def observe_many(self, values) -> None:
        """A list or array of observations: plain Python for a few (numpy's per-call
        cost is larger than the work then), one numpy pass for many."""
        n = len(values)
        if n == 0:
            return
        if n <= _SMALL:
            bounds = self._bounds_list
            indexes = [bisect.bisect_left(bounds, v) for v in values]
            total = float(sum(values))
            with self._lock:
                for i in indexes:
                    self._counts[i] += 1
                self._sum += total
            return
        array = np.asarray(values, dtype=np.float64)
        counts = np.bincount(
            np.searchsorted(self._bounds, array, side="left"), minlength=len(self._bounds)
        ).tolist()
        total = float(array.sum())
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def snapshot(self) -> tuple[np.ndarray, float]:
        with self._lock:
            return np.asarray(self._counts, dtype=np.int64), self._sum


class BatchedHistogram:
    """A labelled histogram family; ``labels(...)`` gives the child to observe into."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ):
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = np.asarray(bounds)
        self._children: dict[tuple[str, ...], _Child] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _Child:
        key = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = _Child(self._bounds)
            return child

    def describe(self):
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self):
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            counts, total = child.snapshot()
            cumulative = np.cumsum(counts)
            buckets = [
                ("+Inf" if math.isinf(b) else repr(float(b)), float(c))
                for b, c in zip(self._bounds, cumulative, strict=True)
            ]
            family.add_metric(list(key), buckets, total)
        yield family
