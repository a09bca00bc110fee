"""Compatibility module: the feature-contract code lives in ``steadyserve.features``.

``features.stats`` (stats files, fitting reference statistics), ``features.transform``
(contract + stats -> native FeatureTransform / output monitor), ``features.drift``
(PSI, drift report) and ``features.fit`` (offline fit of a model directory). This
module re-exports their public names so ``steadyserve.contract.<name>`` (e.g.
``steadyserve.contract.stats_from_sklearn``) keeps working; import from
``steadyserve.features`` in new code.
"""

from __future__ import annotations

from . import features as _features
from .features import *  # noqa: F403  (the compatibility surface is features' own)
from .features.transform import _sub_window

__all__ = [*_features.__all__, "_sub_window"]
