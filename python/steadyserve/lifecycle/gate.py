"""The evaluation gate: a candidate version is scored on the model's holdout set
and refused when a rule fails (a minimum, a maximum, or a regression against the
live version's score on the same data).

Scoring runs the candidate through the serving path (its feature contract, its
batching) on a private core: the live core's figures and drift windows never see
the holdout rows.
"""

from __future__ import annotations

from ..config import METRICS, ModelConfig
from ..errors import FailedPreconditionError
from ..model import ServableModel
from ..serving.dispatch import Dispatcher
from .generation import Generation, file_print

# Requests in flight at once on the private core (the holdout's chunks).
EVAL_MAX_REQUESTS = 256


class Gate:
    """Scores versions and applies the rules of their config's ``gate``."""

    def __init__(self) -> None:
        self._private: Dispatcher | None = None

    def check(self, candidate: Generation, live: Generation | None) -> None:
        """Score the candidate on the holdout set; refuse it if a rule fails."""
        rules = candidate.config.gate.rules
        if not rules:
            return
        scores = self.score(candidate, candidate.latest)
        candidate.evaluation = scores
        baseline = None
        if live is not None and any(r.max_regression is not None for r in rules):
            baseline = live.evaluation
            if baseline is None or baseline.get("data") != scores["data"]:
                baseline = live.evaluation = self.score(live, live.latest, config=live.config)
        failures = gate_failures(rules, scores["metrics"], baseline and baseline["metrics"])
        if failures:
            version = candidate.latest.version
            raise FailedPreconditionError(
                f"model '{candidate.name}' version {version} not promoted: the gate "
                f"refused it on {scores['data']}: " + "; ".join(failures)
            )

    def score(
        self, generation: Generation, model: ServableModel, config: ModelConfig | None = None
    ) -> dict:
        """Scores of ``model`` on its config's holdout set, run on a private core (the
        live core's figures and drift windows never see the holdout)."""
        from .. import evaluation

        config = config or generation.config
        path = generation.source.directory / str(config.evaluation.data)
        holdout = evaluation.load_holdout(path, model.inputs, config.evaluation.label)
        dispatcher = self._dispatcher()
        copy = ServableModel(
            model.name,
            model.version,
            config,
            model.backend,
            dispatcher,
            stats_cache=dict(model.stats_cache),
        )
        try:
            copy.start(warmup=config.onnxruntime.warmup, allow_inline=False, threads_only=True)
            dispatcher.core.add_model(copy.core_model)

            def infer(feeds):
                return dispatcher.infer(model.name, model.version, feeds).outputs

            result = evaluation.evaluate(
                infer,
                holdout,
                output=config.evaluation.output,
                task=config.evaluation.task,
                max_rows=copy.max_batch_size,
            )
        finally:
            dispatcher.core.remove_model(copy.core_model)
            copy.close(keep_backend=True)
        result["data"] = f"{path} ({file_print(path)})"
        result["version"] = model.version
        return result

    def _dispatcher(self) -> Dispatcher:
        if self._private is None:
            self._private = Dispatcher(EVAL_MAX_REQUESTS)
        return self._private


def gate_failures(rules, metrics: dict, baseline: dict | None) -> list[str]:
    """What each failed rule says; empty when the candidate passes."""
    failures = []
    for rule in rules:
        value = metrics.get(rule.metric)
        if value is None:
            failures.append(f"{rule.metric} cannot be computed here (scores: {sorted(metrics)})")
            continue
        if rule.min is not None and value < rule.min:
            failures.append(f"{rule.metric} {value:.4f} < min {rule.min:g}")
        if rule.max is not None and value > rule.max:
            failures.append(f"{rule.metric} {value:.4f} > max {rule.max:g}")
        if rule.max_regression is not None and baseline is not None:
            before = baseline.get(rule.metric)
            if before is None:
                continue
            worse = (before - value) if METRICS[rule.metric] else (value - before)
            if worse > rule.max_regression:
                failures.append(
                    f"{rule.metric} {value:.4f} is {worse:.4f} worse than the live version's "
                    f"{before:.4f} (max_regression {rule.max_regression:g})"
                )
    return failures


__all__ = ["EVAL_MAX_REQUESTS", "Gate", "gate_failures"]
