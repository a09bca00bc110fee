"""Drift figures: the Population Stability Index of the live counts against the reference.

The live counts come from the native transform's sliding window (see ``transform``);
the reference counts from the stats file (see ``stats``), binned by the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

PSI_EPSILON = 1e-4  # floor for bin shares, so an empty bin does not make PSI infinite


# ----------------------------------------------------------------------------- drift


def psi(
    reference_counts: np.ndarray, live_counts: np.ndarray, eps: float = PSI_EPSILON
) -> np.ndarray:
    """Population Stability Index per feature: sum over bins of (q - p) * ln(q / p),
    p the reference share and q the live share of each bin, both floored at eps."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    p = ref / np.maximum(ref.sum(axis=-1, keepdims=True), 1.0)
    q = live / np.maximum(live.sum(axis=-1, keepdims=True), 1.0)
    p = np.maximum(p, eps)
    q = np.maximum(q, eps)
    return np.sum((q - p) * np.log(q / p), axis=-1)


def drift_section(snapshot: Mapping[str, Any], stats: Mapping[str, Any], names, drift) -> dict:
    """Drift and data-quality figures of one tensor from a live snapshot."""
    rows = int(snapshot["rows"])
    counts = np.asarray(snapshot["counts"])
    reference = np.asarray(stats.get("reference_counts")) if stats.get("bin_edges") else None
    n = counts.shape[0]
    names = list(names) if names else [str(f) for f in range(n)]
    missing = np.asarray(snapshot["missing"], dtype=np.float64)
    out_of_range = np.asarray(snapshot["out_of_range"], dtype=np.float64)
    values = rows if rows else 1
    psis = psi(reference, counts) if reference is not None and rows else np.full(n, np.nan)
    features = []
    for f in range(n):
        features.append(
            {
                "feature": names[f],
                "psi": None if math.isnan(psis[f]) else round(float(psis[f]), 6),
                "missing_rate": round(float(missing[f] / values), 6),
                "out_of_range_rate": round(float(out_of_range[f] / values), 6),
            }
        )
    meaningful = rows >= drift.min_rows and reference is not None
    worst = None
    if reference is not None and rows:
        i = int(np.nanargmax(psis))
        worst = {"feature": names[i], "psi": round(float(psis[i]), 6)}
    flagged = [
        f["feature"]
        for f in features
        if meaningful and f["psi"] is not None and f["psi"] > drift.psi_threshold
    ]
    return {
        "rows": rows,
        "min_rows": drift.min_rows,
        "enough_rows": meaningful,
        "worst": worst,
        "flagged": flagged,
        "features": features,
    }
