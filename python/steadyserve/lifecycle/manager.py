"""Model lifecycle: load, reload, unload and roll back a model while it serves.

What serves one model is a *generation*: its config and, per version, a running
ServableModel over an ONNX Runtime session, with the stats files it was built
from. A (re)load builds the candidate generation beside the live one (sessions
loaded and warmed up, the backup chain checked, the evaluation gate passed),
then swaps it in: each new version is added to the core's table, which makes it
routable at once, and versions no longer served are taken out. The core admits
requests under its table lock, so once the swap returns no request reaches a
replaced version; what it admitted before, it still answers while it drains.
Any failure before the swap changes nothing that serves.

A version whose model file, stats files and config are unchanged is carried
over as it is (its session, figures and drift windows), not reloaded.

The generation a promotion replaced is kept (sessions open, executors stopped)
so that a rollback is a swap, not a load: by command, or automatically when the
new version fails within its probation window (``probation`` in config).

Every operation runs under one lock, on the caller's thread; automatic rollbacks
run on the probation watch's thread (probation.py); the gate scores candidates on
a private core (gate.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..backends.onnx import OnnxBackend
from ..config import ModelConfig
from ..errors import (
    ConfigError,
    FailedPreconditionError,
    NotFoundError,
    SteadyServeError,
)
from ..faults import FaultInjector
from ..model import ServableModel
from ..repository import ModelSource, scan_model, scan_repository, validate_model_name
from .gate import Gate
from .generation import (
    Generation,
    close_backends,
    config_path,
    directory_fingerprint,
    version_fingerprint,
)
from .probation import ProbationWatch

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("steadyserve.lifecycle")


class ModelManager:
    """Owns every model generation of a Runtime, and the swaps between them."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.root = runtime.repository
        self._lock = threading.RLock()
        self.live: dict[str, Generation] = {}
        self.previous: dict[str, Generation] = {}  # kept for rollback: stopped, sessions open
        self._shadows: dict[str, Any] = {}  # model -> ShadowMirror
        self.directory_seen: dict[str, str] = {}  # model -> fingerprint last acted on
        self.last_error: dict[str, str] = {}  # model -> why its last load failed
        self.wanted: set[str] = set()  # models the operator asked to serve
        self.optional: set[str] = set()  # ... of which config says required: false
        self.gate = Gate()
        self.probation = ProbationWatch(runtime.router, self._rollback_if_live)
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    # ----------------------------------------------------------------- operations

    def load(
        self, name: str, *, config_override: str | None = None, startup: bool = False
    ) -> Generation:
        """Load ``name``, or reload it if it serves: the candidate replaces the live
        generation only if it loads, warms up, keeps its backup chain and passes the
        gate. Raises (and leaves what serves as it was) otherwise."""
        validate_model_name(name)
        started = time.monotonic()
        with self._lock:
            self.wanted.add(name)
            live = self.live.get(name)
            source = None
            try:
                source = self._scan(name, config_override)
                if source.config is not None and not source.config.required:
                    self.optional.add(name)
                else:
                    self.optional.discard(name)
                self.directory_seen[name] = directory_fingerprint(source.directory)
                candidate = self._build(source, live)
            except SteadyServeError as error:
                self._load_failed(name, live, str(error), self._selected(source))
                raise
            try:
                if not startup:  # at start-up, Runtime checks every chain once all loaded
                    self._check_chain(candidate)
                self.gate.check(candidate, live)
                mirror = self._prepare_shadow(candidate)
            except SteadyServeError as error:
                self._discard(candidate, live)
                outcome = "rejected" if isinstance(error, FailedPreconditionError) else "failed"
                self._load_failed(name, live, str(error), list(candidate.models), outcome)
                raise
            self._stop_shadow(name)
            self._commit(candidate, live)
            self._attach_shadow(candidate, mirror)
            self.last_error.pop(name, None)
            if startup or live is None or name not in self.previous:
                self.probation.end(name)
            else:
                self.probation.begin(candidate, live)
        seconds = time.monotonic() - started
        self.runtime.metrics.model_loads.labels(name, "loaded").inc()
        self.runtime.metrics.model_load_seconds.labels(name).observe(seconds)
        log.info(
            "model reloaded" if live is not None else "model loaded",
            extra={
                "model": name,
                "versions": sorted(candidate.models, key=int),
                "load_s": round(seconds, 3),
            },
        )
        return candidate

    def unload(self, name: str) -> None:
        """Stop serving ``name``: out of routing at once, then drained."""
        validate_model_name(name)
        with self._lock:
            self.wanted.discard(name)
            self._take_down(name, "unloaded")
        log.info("model unloaded", extra={"model": name})

    def refuse(self, name: str, reason: str) -> None:
        """Take a model that cannot serve as configured out of service (the reason is
        in the index); it stays wanted, so readiness says it is missing."""
        with self._lock:
            self.last_error[name] = reason
            self._take_down(name, reason)

    def _take_down(self, name: str, reason: str) -> None:
        """Out of routing, drained, sessions closed; the index says ``reason``."""
        live = self.live.pop(name, None)
        if live is None and not any(n == name for n, _ in self.runtime._index):
            raise NotFoundError(
                f"model '{name}' not found (models: {', '.join(self.runtime.model_names())})"
            )
        self.probation.end(name)
        self._stop_shadow(name, live)
        self.runtime.core.set_unavailable(name, reason)
        self.runtime._models.pop(name, None)
        index = self.runtime._index
        for key in [k for k in index if k[0] == name]:
            del index[key]
        if live is not None:
            for version in live.models:
                index[(name, version)] = _entry(name, version, "UNAVAILABLE", reason)
                self.runtime.metrics.model_ready.labels(name, version).set(0)
            self._retire(live, keep=None)
        else:
            index[(name, "")] = _entry(name, "", "UNAVAILABLE", reason)
        previous = self.previous.pop(name, None)
        if previous is not None:
            close_backends(previous, keep=set())

    def rollback(self, name: str, trigger: str = "command", why: str = "") -> Generation:
        """Serve the generation the last promotion replaced again."""
        validate_model_name(name)
        with self._lock:
            live = self.live.get(name)
            previous = self.previous.get(name)
            if live is None:
                raise FailedPreconditionError(f"model '{name}' is not loaded: nothing to roll back")
            if previous is None:
                raise FailedPreconditionError(
                    f"model '{name}' has no previous version kept to roll back to (it serves "
                    f"versions {', '.join(sorted(live.models, key=int))} since it was loaded)"
                )
            self.probation.end(name)
            restored = self._rebuild(previous, live)
            self.previous.pop(name)
            self._stop_shadow(name)
            # Counted before the swap: whoever sees the old versions back sees it counted.
            self.runtime.metrics.model_rollbacks.labels(name, trigger).inc()
            self._commit(restored, live, keep_replaced=False)
            try:
                self._attach_shadow(restored, self._prepare_shadow(restored))
            except SteadyServeError as error:  # the rollback stands; the shadow does not
                log.error("shadow not restarted", extra={"model": name, "reason": str(error)})
            self.runtime.router.breaker(name).reset(f"rolled back ({trigger})")
        log.warning(
            "model rolled back",
            extra={
                "model": name,
                "trigger": trigger,
                "reason": why,
                "from_versions": sorted(live.models, key=int),
                "to_versions": sorted(restored.models, key=int),
            },
        )
        return restored

    # ----------------------------------------------------------------- building

    def _scan(self, name: str, config_override: str | None) -> ModelSource:
        source = scan_model(self.root, name)
        if source is None:
            found = sorted(scan_repository(self.root))
            raise NotFoundError(
                f"no model '{name}' in repository {self.root} (found: {', '.join(found) or 'none'})"
            )
        if config_override is not None:
            source = _with_config(source, config_override)
        if source.error is not None or source.config is None:
            raise ConfigError(source.error or f"model '{name}': no configuration")
        return source

    def _build(self, source: ModelSource, live: Generation | None) -> Generation:
        """Load, warm up and start every selected version (nothing routable yet)."""
        runtime = self.runtime
        config = source.config
        assert config is not None
        numbers = [int(v) for v in self._selected(source)]
        if not numbers:
            raise ConfigError(
                f"model '{source.name}': no version to serve in {source.directory} "
                f"(versions on disk: {sorted(source.versions) or 'none'})"
            )
        if not runtime.allow_inline and config.execution == "inline":
            log.info(
                "execution: inline runs on one executor thread here: no Python runs per "
                "request to drive it (allow_inline=False, as with the native gRPC frontend)",
                extra={"model": source.name},
            )
        generation = Generation(source.name, config, source, {}, {})
        try:
            for number in numbers:
                version = str(number)
                print_ = version_fingerprint(source, number)
                generation.fingerprints[version] = print_
                if live is not None and live.fingerprints.get(version) == print_:
                    generation.models[version] = live.models[version]  # unchanged: kept
                    continue
                backend = OnnxBackend.load(source.versions[number], config.onnxruntime)
                generation.models[version] = self._start(source.name, version, config, backend)
        except BaseException:
            self._discard(generation, live)
            raise
        return generation

    def _selected(self, source: ModelSource | None) -> list[str]:
        """The versions a load of ``source`` serves."""
        if source is None:
            return []
        numbers = sorted(source.versions) if self.runtime.all_versions else None
        return [str(n) for n in (numbers or source.selected_versions())]

    def _start(
        self, name: str, version: str, config: ModelConfig, backend, stats_cache=None
    ) -> ServableModel:
        runtime = self.runtime
        try:
            model = ServableModel(
                name,
                version,
                config,
                backend,
                runtime.dispatcher,
                faults=FaultInjector(name) if runtime.allow_fault_injection else None,
                stats_cache=stats_cache,
            )
            model.executor.on_batch = self.probation.batch_hook(version)
            model.start(
                warmup=runtime.warmup and config.onnxruntime.warmup,
                allow_inline=not runtime.allow_fault_injection,
                threads_only=not runtime.allow_inline,
            )
            loop = runtime.feedback_loop
            capture = None if loop is None else loop.capture(model)
            if capture is not None:  # after the warm-up: its batches are not traffic
                model.executor.capture = capture
                model.core_model.log_rate = config.prediction_log.sample_rate
        except BaseException:
            backend.close()
            raise
        return model

    def _rebuild(self, kept: Generation, live: Generation) -> Generation:
        """A kept generation running again on its own sessions and stats."""
        restored = Generation(
            kept.name,
            kept.config,
            kept.source,
            {},
            dict(kept.fingerprints),
            kept.directory_fingerprint,
            kept.evaluation,
        )
        for version, old in kept.models.items():
            current = live.models.get(version)
            if current is not None and current.backend is old.backend:
                restored.models[version] = current  # shared with the live one: kept running
                continue
            restored.models[version] = self._start(
                kept.name, version, kept.config, old.backend, dict(old.stats_cache)
            )
        return restored

    def _discard(self, candidate: Generation, live: Generation | None) -> None:
        """Close what a failed candidate started (never what it shares with ``live``)."""
        shared = live.models.values() if live is not None else ()
        for model in candidate.models.values():
            if not any(model is m for m in shared):
                model.close()

    # ----------------------------------------------------------------- checks

    def _check_chain(self, candidate: Generation) -> None:
        """The candidate must keep every failover chain it is part of serviceable."""
        from ..runtime import _signature_mismatch

        name = candidate.name
        backup = candidate.config.backup
        seen = [name]
        link = backup
        while link:
            if link in seen:
                raise ConfigError(
                    f"{config_path(candidate.source)}: backup chain has a cycle: "
                    + " -> ".join([*seen, link])
                )
            seen.append(link)
            following = self.live.get(link)
            link = following.config.backup if following is not None else None
        latest = candidate.latest
        if backup and backup in self.live:
            problem = _signature_mismatch(latest, self.live[backup].latest)
            if problem:
                raise ConfigError(f"{config_path(candidate.source)}: backup: {problem}")
        for other in self.live.values():
            if other.name != name and other.config.backup == name:
                problem = _signature_mismatch(other.latest, latest)
                if problem:
                    raise ConfigError(
                        f"model '{name}': the new version would break the failover of "
                        f"'{other.name}', whose backup it is: {problem}"
                    )

    # ----------------------------------------------------------------- the swap

    def _commit(self, candidate: Generation, live: Generation | None, keep_replaced=True) -> None:
        """Make ``candidate`` what serves; drain and retire what it replaced."""
        runtime = self.runtime
        name = candidate.name
        core = runtime.core
        runtime.router.configure(name, candidate.config)
        for version, model in sorted(candidate.models.items()):
            if live is None or live.models.get(version) is not model:
                core.add_model(model.core_model)  # routable now; replaces a same version
                runtime.metrics.model_ready.labels(name, version).set(1)
                if runtime.allow_inline and model.config.execution != "threads":
                    runtime.dispatcher.inline.append(model.executor)
        kept = set(candidate.models.values())
        if live is not None:
            for version, model in live.models.items():
                if model not in kept and version not in candidate.models:
                    core.remove_model(model.core_model)  # no longer selected
                    runtime.metrics.model_ready.labels(name, version).set(0)
        runtime._models[name] = dict(candidate.models)
        index = runtime._index
        for key in [k for k in index if k[0] == name]:
            del index[key]
        for version in candidate.models:
            index[(name, version)] = _entry(name, version, "READY")
        self.live[name] = candidate
        if live is None:
            return
        self._retire(live, keep=candidate)
        carried = set(candidate.models.values())
        replaced_any = any(m not in carried for m in live.models.values())
        if keep_replaced and replaced_any:
            # Kept for a rollback; the one kept before it goes (minus shared sessions).
            older = self.previous.pop(name, None)
            if older is not None:
                close_backends(older, keep=live.backends() | candidate.backends())
            self.previous[name] = live
        else:
            close_backends(live, keep=candidate.backends())

    def _retire(self, generation: Generation, keep: Generation | None) -> None:
        """Drain the versions of ``generation`` that ``keep`` does not carry on."""
        carried = set(keep.models.values()) if keep is not None else set()
        inline = self.runtime.dispatcher.inline
        for model in generation.models.values():
            if model in carried:
                continue
            if model.executor in inline:
                inline.remove(model.executor)
            model.close(keep_backend=True)  # sessions stay open for a rollback
        if keep is None:
            close_backends(generation, keep=set())

    def _load_failed(
        self,
        name: str,
        live: Generation | None,
        why: str,
        versions: list[str],
        outcome: str = "failed",
    ) -> None:
        self.last_error[name] = why
        self.runtime.metrics.model_loads.labels(name, outcome).inc()
        event = "model not promoted" if outcome == "rejected" else "model load failed"
        log.error(event, extra={"model": name, "reason": why})
        index = self.runtime._index
        if live is None:
            self.runtime.core.set_unavailable(name, why)
            for key in [k for k in index if k[0] == name]:
                del index[key]
            for version in versions or [""]:
                index[(name, version)] = _entry(name, version, "UNAVAILABLE", why)
            return
        for version in versions:
            if version in live.models:  # still served by the live one
                index[(name, version)] = _entry(name, version, "READY", f"candidate: {why}")
            else:
                index[(name, version)] = _entry(name, version, "UNAVAILABLE", why)

    def _rollback_if_live(self, model: str, generation: Generation, trigger: str, why: str):
        """A failed trial's rollback, unless ``generation`` was replaced meanwhile."""
        with self._lock:
            if self.live.get(model) is generation:
                self.rollback(model, trigger, why)

    # ----------------------------------------------------------------- shadow

    def _prepare_shadow(self, generation: Generation):
        """The mirror ``generation``'s config asks for, not attached yet (or None)."""
        from .shadow import ShadowMirror, check_compatible

        shadow = generation.config.shadow
        if shadow is None:
            return None
        number = shadow.version
        live = generation.latest
        source = generation.source
        where = f"{config_path(source)}: shadow.version {number}"
        if str(number) in generation.models:
            raise ConfigError(f"{where} is a version that serves; shadow another one")
        if number not in source.versions:
            raise ConfigError(f"{where}: no such version in {source.directory}")
        backend = OnnxBackend.load(source.versions[number], generation.config.onnxruntime)
        problem = check_compatible(live, backend, generation.config.evaluation.output)
        if problem:
            backend.close()
            raise ConfigError(f"{where}: {problem}")
        return ShadowMirror(
            live,
            backend,
            str(number),
            shadow,
            generation.config.evaluation.output,
            self.runtime.metrics,
        )

    def _attach_shadow(self, generation: Generation, mirror) -> None:
        if mirror is None:
            return
        self._shadows[generation.name] = mirror
        generation.latest.executor.shadow = mirror

    def _stop_shadow(self, name: str, generation: Generation | None = None) -> None:
        mirror = self._shadows.pop(name, None)
        if mirror is None:
            return
        generation = generation or self.live.get(name)
        for model in generation.models.values() if generation else ():
            if model.executor.shadow is mirror:
                model.executor.shadow = None
        mirror.close()
        mirror.candidate_backend.close()

    def shadow_report(self, name: str) -> dict:
        mirror = self._shadows.get(name)
        if mirror is None:
            raise NotFoundError(f"model '{name}' has no shadow version (config: shadow)")
        return mirror.report()

    # ----------------------------------------------------------------- polling

    def start_polling(self, interval_s: float) -> None:
        """Model control mode poll: re-read the repository every ``interval_s``."""
        self._poller = threading.Thread(
            target=self._poll_loop, args=(interval_s,), name="steadyserve-poll", daemon=True
        )
        self._poller.start()

    def _poll_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.poll()
            except Exception:
                log.exception("repository poll failed")

    def poll(self) -> list[str]:
        """Load new models, reload changed ones, unload removed ones; what changed."""
        changed = []
        on_disk = {}
        for directory in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            if directory.is_dir() and not directory.name.startswith("."):
                try:
                    validate_model_name(directory.name)
                except SteadyServeError:
                    continue
                on_disk[directory.name] = directory_fingerprint(directory)
        for name, print_ in on_disk.items():
            if self.directory_seen.get(name) == print_:
                continue
            changed.append(name)
            # A failure is logged, counted and in the index; the poll goes on.
            with contextlib.suppress(SteadyServeError):
                self.load(name)
        for name in sorted(set(self.live) - set(on_disk)):
            changed.append(name)
            self.directory_seen.pop(name, None)
            self.unload(name)
        return changed

    # ----------------------------------------------------------------- reports

    def report(self, name: str) -> dict:
        """Versions, the kept previous ones, probation, the last gate scores."""
        with self._lock:
            live = self.live.get(name)
            if live is None and name not in self.last_error:
                raise NotFoundError(f"model '{name}' is not loaded")
            previous = self.previous.get(name)
            return {
                "model": name,
                "versions": sorted(live.models, key=int) if live else [],
                "previous_versions": sorted(previous.models, key=int) if previous else [],
                "probation_s_left": self.probation.seconds_left(name),
                "evaluation": live.evaluation if live else None,
                "last_error": self.last_error.get(name),
            }

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        self.probation.close()
        for name in list(self._shadows):
            self._stop_shadow(name)
        for generation in self.previous.values():
            close_backends(generation, keep=set())
        self.previous.clear()


# --------------------------------------------------------------------- helpers


def _entry(name: str, version: str, state: str, reason: str = ""):
    from ..runtime import ModelIndexEntry

    return ModelIndexEntry(name, version, state, reason)


def _with_config(source: ModelSource, override: str) -> ModelSource:
    """The source with a config given by the load request (Triton's ``config``
    parameter: the whole config as JSON, in steadyserve's schema)."""
    from ..config import model_config_from_mapping

    where = f"model '{source.name}' load request: config"
    try:
        data = json.loads(override)
    except ValueError as exc:
        raise ConfigError(f"{where} is not JSON: {exc}") from None
    config = model_config_from_mapping(data, source=where)
    rescanned = ModelSource(source.name, source.directory, config, None, dict(source.versions))
    if hasattr(source, "config_path"):
        rescanned.config_path = source.config_path
    return rescanned


__all__ = ["ModelManager"]
