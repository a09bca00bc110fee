"""The in-process API: a Runtime serves a model repository inside this process.

Same batching, checks and errors as the server, no network: the gRPC server is
a thin transport over a Runtime.

    with steadyserve.Runtime("models/") as rt:
        probs = rt.infer("tabular", {"features": rows})["probabilities"]
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import (
    ConfigError,
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    SteadyServeError,
    UnavailableError,
)
from .faults import Fault, FaultInjector
from .lifecycle.manager import ModelManager
from .model import InferResult, ServableModel
from .monitoring.drift import DriftCollector
from .monitoring.metrics import CoreCollector, Metrics, SloCollector
from .repository import scan_repository, validate_model_name
from .routing import Router
from .serving.dispatch import Dispatcher

# Requests in flight at once across every model (the core's request pool; memory is
# taken as requests arrive, not up front).
MAX_REQUESTS = 16384

log = logging.getLogger("steadyserve.runtime")

MODEL_CONTROL_MODES = ("none", "explicit", "poll")
# The index's reason for a model on disk that nobody asked to load (explicit mode).
NOT_LOADED = "not loaded"


@dataclass(frozen=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str  # READY | UNAVAILABLE | LOADING
    reason: str = ""


class Runtime:
    """Loads every model of a repository (or the named ones) and serves them."""

    def __init__(
        self,
        repository: str | os.PathLike,
        *,
        models: Iterable[str] | None = None,
        metrics: Metrics | None = None,
        warmup: bool = True,
        allow_fault_injection: bool = False,
        allow_inline: bool = True,
        all_versions: bool = False,
        model_control: str = "none",
        poll_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        prediction_log=None,
    ):
        """``clock`` (seconds, monotonic) drives the circuit breakers' windows and
        cool-downs; tests pass a clock they advance instead of sleeping.

        ``allow_inline`` False runs every model on executor threads, ``execution:
        inline`` ones on their one instance's thread: for callers that run no Python
        per request (the native gRPC frontend), which therefore cannot drive inline
        execution.

        ``all_versions`` serves every version found on disk, whatever a model's
        ``versions`` says (``steadyserve evaluate`` scores them all).

        ``model_control`` is Triton's model control mode: "none" (the repository is
        read once; load_model and unload_model are refused), "explicit" (they are
        allowed; ``models`` names what loads at start), "poll" (the repository is
        re-read every ``poll_s`` seconds: new, changed and removed models are loaded,
        reloaded and unloaded; load_model and unload_model are refused).

        ``prediction_log``: a directory (or a ``predictions.writer.PredictionLog``) to log
        sampled requests to (each model's ``prediction_log`` config says how many); it
        enables ``feedback`` and the live quality KPIs (``quality`` config)."""
        if model_control not in MODEL_CONTROL_MODES:
            raise ConfigError(
                f"model control mode {model_control!r}: expected one of "
                + ", ".join(MODEL_CONTROL_MODES)
            )
        if not poll_s > 0:
            raise ConfigError(f"poll_s must be > 0 seconds, got {poll_s!r}")
        self.model_control = model_control
        self.repository = Path(repository)
        self.metrics = metrics if metrics is not None else Metrics()
        DriftCollector.register(self)  # drift gauges, read from the models at scrape time
        SloCollector.register(self)  # SLO figures (refusals, estimates), read at scrape time
        CoreCollector.register(self)  # request and batch figures, read from the core
        self._lock = threading.Lock()
        self._models: dict[str, dict[str, ServableModel]] = {}
        self._index: dict[tuple[str, str], ModelIndexEntry] = {}
        self._closed = False
        self.allow_fault_injection = allow_fault_injection
        self.allow_inline = allow_inline
        self.all_versions = all_versions
        sources = scan_repository(self.repository)
        wanted = None if models is None or "*" in models else list(models)
        if wanted is not None:
            missing = [m for m in wanted if m not in sources]
            if missing:
                raise ConfigError(
                    f"repository {self.repository}: no model named {', '.join(missing)} "
                    f"(found: {', '.join(sorted(sources)) or 'none'})"
                )
        self.warmup = warmup
        self.dispatcher = Dispatcher(MAX_REQUESTS)
        self.core = self.dispatcher.core
        self.router = Router(
            self, self.core, on_change=self._circuit_changed, metrics=self.metrics, clock=clock
        )
        self.feedback_loop = None
        if prediction_log is not None:
            from .predictions.loop import FeedbackLoop

            self.feedback_loop = FeedbackLoop(self, prediction_log)
        self.lifecycle = ModelManager(self)
        for name in sorted(sources):
            if wanted is None or name in wanted:
                self._load_at_start(sources[name])
            else:
                self._index[(name, "")] = ModelIndexEntry(name, "", "UNAVAILABLE", NOT_LOADED)
        self._check_backups(sources)
        if self.feedback_loop is not None:
            self.feedback_loop.restore()
        if model_control == "poll":
            self.lifecycle.start_polling(poll_s)

    def _load_at_start(self, source) -> None:
        if source.config is not None:
            # Before loading: a model that fails to load (bad file, no version) still
            # has its backup answer for it.
            self.router.configure(source.name, source.config)
        # A failure is logged and in the index with its reason; the other models load.
        with contextlib.suppress(SteadyServeError):
            self.lifecycle.load(source.name, startup=True)

    def _check_backups(self, sources) -> None:
        """Refuse (mark UNAVAILABLE) a model whose backup chain is broken: an unknown
        backup, a cycle, or a backup whose inputs/outputs differ from the model's."""
        for name in sorted(self._models):
            source = sources[name]
            backup = source.config.backup
            if not backup and not source.config.failover.default_output:
                continue
            problem = None
            seen = [name]
            link = backup
            while link and problem is None:
                if link in seen:
                    problem = "backup chain has a cycle: " + " -> ".join([*seen, link])
                elif link not in sources:
                    problem = f"backup '{link}' is not a model in the repository"
                else:
                    seen.append(link)
                    link = sources[link].config.backup if sources[link].config else None
            if problem is None and backup in self._models:
                problem = _signature_mismatch(self._latest(name), self._latest(backup))
            if problem is not None:
                problem = f"backup: {problem}"
            else:
                problem = _default_output_mismatch(self._latest(name))
            if problem is not None:
                path = getattr(source, "config_path", None) or source.directory / "config.yaml"
                reason = f"{path}: {problem}"
                log.error("failover configuration refused", extra={"model": name, "reason": reason})
                self.lifecycle.refuse(name, reason)

    @property
    def prediction_log(self):
        """The PredictionLog, or None."""
        return None if self.feedback_loop is None else self.feedback_loop.log

    @property
    def quality(self):
        """The QualityMonitor (labels joined, live KPIs), or None without a prediction log."""
        return None if self.feedback_loop is None else self.feedback_loop.monitor

    def config_of(self, name: str):
        """The config the model serves with now, or None when it is not loaded."""
        live = self.lifecycle.live.get(name)
        return None if live is None else live.config

    def feedback(self, model: str, items) -> dict:
        """Ground-truth labels for logged requests: a list of {"id": request id, "label":
        value}. Joined with the prediction log (now, or when the prediction is written);
        the answer counts accepted, joined, pending and rejected items."""
        if self.feedback_loop is None:
            from .predictions.loop import no_log_error

            raise no_log_error()
        self.require_known(model)
        return self.feedback_loop.monitor.feedback(model, items)

    def _latest(self, name: str) -> ServableModel:
        versions = self._models[name]
        return versions[max(versions, key=int)]

    def _circuit_changed(self, model: str, previous: str, state: str, why: str) -> None:
        self.metrics.circuit_changed(model, state)
        self.lifecycle.probation.circuit_changed(model, state, why)

    def failover_report(self) -> dict:
        """Circuit states, backup chains and failover counts."""
        return self.router.report()

    # ----------------------------------------------------------------- lookup

    def get_model(self, name: str, version: str | None = None) -> ServableModel:
        """The ready model version (latest when ``version`` is empty or None)."""
        versions = self._models.get(name)  # a loaded name is valid: it came from the scan
        if not versions:
            validate_model_name(name)
            failed = [e for (n, _), e in self._index.items() if n == name]
            if failed:
                raise UnavailableError(f"model '{name}' is not ready: {failed[0].reason}")
            known = ", ".join(self.model_names()) or "none"
            raise NotFoundError(f"model '{name}' not found (models: {known})")
        if version:
            model = versions.get(str(version))
            if model is None:
                entry = self._index.get((name, str(version)))
                if entry is not None:
                    raise UnavailableError(
                        f"model '{name}' version {version} is not ready: {entry.reason}"
                    )
                known = ", ".join(sorted(versions, key=int))
                raise NotFoundError(
                    f"model '{name}' has no version '{version}' (versions: {known})"
                )
        else:
            model = versions[max(versions, key=int)]
        if not model.ready:
            raise UnavailableError(f"model '{name}' version {model.version} is not ready")
        return model

    def model_names(self) -> list[str]:
        return sorted({name for name, _ in self._index})

    def model_versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=int)

    def model_index(self) -> list[ModelIndexEntry]:
        return [self._index[k] for k in sorted(self._index)]

    def models(self) -> list[ServableModel]:
        return [m for name in sorted(self._models) for _, m in sorted(self._models[name].items())]

    def ready(self) -> bool:
        """True when every required model asked for (all of the repository, or those
        named or loaded since; config ``required: false`` excepted) is serving."""
        return not self._closed and not self.not_ready()

    def not_ready(self) -> dict[str, str]:
        """The required models asked for that do not serve, with why (empty: ready)."""
        lifecycle = self.lifecycle
        wanted = lifecycle.wanted
        if not wanted and self.model_control != "explicit":
            return {"": "the repository has no models"}
        missing = {}
        for name in sorted(wanted - lifecycle.optional):
            versions = self._models.get(name)
            if not versions:
                reasons = [e.reason for (n, _), e in self._index.items() if n == name]
                missing[name] = next((r for r in reasons if r), "not loaded")
            elif not all(m.ready for m in versions.values()):
                missing[name] = "not ready (draining or stopped)"
        return missing

    # ----------------------------------------------------------------- lifecycle

    def _allow(self, operation: str, modes: tuple[str, ...] = ("explicit",)) -> None:
        if self.model_control not in modes:
            raise FailedPreconditionError(
                f"{operation} is refused in model control mode '{self.model_control}': "
                f"it needs mode {' or '.join(repr(m) for m in modes)} (steadyserve serve "
                f"--model-control-mode {modes[0]})"
            )

    def load_model(self, name: str, *, config: str | None = None) -> None:
        """Load a model, or reload it if it serves (explicit mode). ``config`` replaces
        its config file for this load: the config as JSON, in config.yaml's schema.
        Returns when the new version serves; raises, changing nothing that serves,
        when it cannot (a bad file, a failed warm-up, a broken backup chain, the gate)."""
        self._allow("loading a model")
        self.lifecycle.load(name, config_override=config)

    def unload_model(self, name: str) -> None:
        """Stop serving a model (explicit mode): what it admitted is still answered."""
        self._allow("unloading a model")
        self.lifecycle.unload(name)

    def rollback(self, name: str) -> dict:
        """Serve the versions the last promotion replaced again (kept loaded for this)."""
        self._allow("a rollback", ("explicit", "poll"))
        restored = self.lifecycle.rollback(name, "command", "requested")
        return {"model": name, "versions": sorted(restored.models, key=int)}

    def lifecycle_report(self, name: str) -> dict:
        """What serves, what is kept for rollback, probation, the gate's last scores."""
        return self.lifecycle.report(name)

    def shadow_report(self, name: str) -> dict:
        """Agreement of the shadow version with the live one (config: shadow)."""
        return self.lifecycle.shadow_report(name)

    # ----------------------------------------------------------------- inference

    def require_known(self, name: str) -> None:
        """NotFoundError (or InvalidArgumentError for a malformed name) unless the
        repository has a model of this name, loaded or not."""
        if name in self._models:  # the common case, without a scan or a name check
            return
        validate_model_name(name)
        if not any(n == name for n, _ in self._index):
            known = ", ".join(self.model_names()) or "none"
            raise NotFoundError(f"model '{name}' not found (models: {known})")

    @staticmethod
    def _deadline_ns(timeout: float | None, deadline_ns: int | None = None) -> int | None:
        if deadline_ns is not None:
            if timeout is not None:
                raise ValueError("give timeout or deadline_ns, not both")
            return int(deadline_ns) or None
        if timeout is None:
            return None
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        return time.monotonic_ns() + int(timeout * 1e9)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        deadline_ns: int | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        """Run one request; blocks this thread only.

        ``timeout`` in seconds, or ``deadline_ns`` as absolute ``time.monotonic_ns()``;
        ``priority`` as Triton reads it (0 = the model's default level, 1 = highest).
        ``request_id``: what the prediction log keys this request by (feedback names it);
        when None and the log keeps it, one is made up (``InferResult.request_id``).
        """
        deadline = self._deadline_ns(timeout, deadline_ns)
        try:
            return self.dispatcher.infer(
                model,
                version,
                inputs,
                deadline_ns=deadline,
                priority=priority,
                outputs=outputs,
                request_id=request_id,
            )
        except NotFoundError:
            self.require_known(model)  # a malformed name gets its own message
            raise

    async def infer_async(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        outputs: Sequence[str] | None = None,
        deadline_ns: int | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        """Run one request from asyncio (same arguments as ``infer``)."""
        deadline = self._deadline_ns(timeout, deadline_ns)
        try:
            return await self.dispatcher.infer_async(
                model,
                version,
                inputs,
                deadline_ns=deadline,
                priority=priority,
                outputs=outputs,
                request_id=request_id,
            )
        except NotFoundError:
            self.require_known(model)
            raise

    # ----------------------------------------------------------------- fault injection

    def inject_fault(
        self, model: str, kind: str, *, delay_ms: float = 0.0, version: str | None = None
    ) -> Fault:
        """Make a model fail on purpose (see steadyserve.faults); needs allow_fault_injection."""
        return self._fault_target(model, version).inject(kind, delay_ms)

    def clear_fault(self, model: str, *, version: str | None = None) -> None:
        self._fault_target(model, version).clear()

    def _fault_target(self, model: str, version: str | None) -> FaultInjector:
        if not self.allow_fault_injection:
            raise PermissionDeniedError(
                "fault injection is off: start the server with --allow-fault-injection "
                "(or Runtime(..., allow_fault_injection=True)) to use it"
            )
        validate_model_name(model)
        versions = self._models.get(model)
        if not versions:
            raise NotFoundError(f"model '{model}' not found or not loaded")
        target = versions.get(str(version)) if version else versions[max(versions, key=int)]
        if target is None:
            raise NotFoundError(f"model '{model}' has no loaded version '{version}'")
        return target.faults

    # ----------------------------------------------------------------- shutdown

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop accepting and drain: everything accepted is answered."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.lifecycle.close()
        for model in self.models():
            model.close(timeout)
            self.metrics.model_ready.labels(model.name, model.version).set(0)
        if self.feedback_loop is not None:  # after the executors: all they logged is written
            self.feedback_loop.close(timeout)
        self.router.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _default_output_mismatch(model: ServableModel) -> str | None:
    """Why ``failover.default_output`` cannot stand in for ``model``'s answer (None when it can)."""
    default = model.config.failover.default_output or {}
    outputs = {s.name: s for s in model.outputs}
    for name, row in default.items():
        spec = outputs.get(name)
        if spec is None:
            return (
                f"failover.default_output names output '{name}', which model '{model.name}' "
                f"does not have (outputs: {', '.join(outputs)})"
            )
        if spec.datatype != "FP32":
            return (
                f"failover.default_output['{name}']: output '{name}' of model '{model.name}' is "
                f"{spec.datatype}; a default output can only stand in for FP32 outputs"
            )
        dims = spec.shape[1:] if model.max_batch_size > 0 else spec.shape
        width = 1
        for d in dims:
            width *= d
        if len(dims) != 1 or width < 0 or width != len(row):
            return (
                f"failover.default_output['{name}'] has {len(row)} values, but output "
                f"'{name}' has rows of shape {list(dims)}; give one row of that many values"
            )
    return None


def _signature_mismatch(model: ServableModel, backup: ServableModel) -> str | None:
    """Why ``backup`` cannot answer for ``model`` (None when it can)."""

    def describe(specs):
        return {s.name: (s.datatype, s.shape) for s in specs}

    if describe(model.inputs) != describe(backup.inputs):
        return (
            f"backup '{backup.name}' has inputs {describe(backup.inputs)}, but '{model.name}' "
            f"has {describe(model.inputs)}"
        )
    missing = set(describe(model.outputs)) - set(describe(backup.outputs))
    if missing:
        return f"backup '{backup.name}' lacks outputs {sorted(missing)} of '{model.name}'"
    for name, spec in describe(model.outputs).items():
        theirs = describe(backup.outputs)[name]
        if theirs[0] != spec[0]:
            return (
                f"backup '{backup.name}' output '{name}' is {theirs[0]}, "
                f"'{model.name}' gives {spec[0]}"
            )
        same_shape = len(theirs[1]) == len(spec[1]) and all(
            a == b or a < 0 or b < 0 for a, b in zip(theirs[1], spec[1], strict=True)
        )
        if not same_shape:
            return (
                f"backup '{backup.name}' output '{name}' has shape {list(theirs[1])}, "
                f"'{model.name}' gives {list(spec[1])}"
            )
    if backup.max_batch_size < model.max_batch_size:
        return (
            f"backup '{backup.name}' takes at most {backup.max_batch_size} rows per request "
            f"(max_batch_size), '{model.name}' takes {model.max_batch_size}: it could not answer "
            f"every request for it"
        )
    return None
