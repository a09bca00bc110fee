"""A ``--workers`` worker's figures, and its siblings': one server's answers from N processes.

Each worker of ``steadyserve serve --workers N`` keeps its own counts (the native
core's atomics), circuit breakers and drift windows, and a connection reaches one
worker. So each worker also serves its OWN figures, as plain data, on a unix socket
in the supervisor's private directory (``DIR/worker-I.sock``, mode 0600 in a 0700
directory; ``WorkerEndpoint``):

- ``GET /metrics``: its Prometheus exposition (text, for people);
- ``GET /families``: what a merged scrape needs, in one call: the same families as
  JSON (``aggregate.plain_families``, without the drift ratios, which the merging
  worker recomputes) and the drift windows of every model (as ``/drift``);
- ``GET /statistics?name=&version=``: its ModelStatistics, as ``statistics_dict`` forms;
- ``GET /drift?name=&version=``: its drift windows' raw counts per model version and
  tensor (rows, counts per feature and bin, missing, out_of_range);
- ``GET /failover``: its failover report (``Runtime.failover_report``).

The worker that answers /metrics, ModelStatistics, a drift report or the failover
report asks every sibling (``Siblings``, ``TIMEOUT_S`` each, all at once) and merges
with ``monitoring/aggregate.py``: counts summed, states the worst, PSI recomputed
from the summed window counts (never an average of PSIs). A sibling that does not
answer in time is left out and said: in /metrics as
``steadyserve_workers{state="missing"}``, in JSON reports as ``"workers": {"answered":
[...], "missing": [...]}``, on ModelStatistics as the trailing metadata
``steadyserve-workers`` (the same JSON; with --frontend grpcio: the native frontend's
bridge carries no trailing metadata), and in a warning in the log. The endpoints only
ever return their own worker's figures, so two workers answering at once never wait
for each other.

The merged drift window of a model is the union of the workers' windows: with
``drift.window_rows`` R each worker holds up to R rows, the server up to N x R.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import SteadyServeError
from ..features.drift import drift_section
from ..monitoring import aggregate
from ..monitoring.drift import DriftCollector
from .grpc_service import model_statistics
from .ports import StartupError

log = logging.getLogger("steadyserve.server.siblings")

TIMEOUT_S = 2.0  # how long a sibling may take to answer before it is left out
SOCKET_NAME = "worker-{index}.sock"


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, SOCKET_NAME.format(index=index))


# -- a worker's own figures, as plain data ------------------------------------------------


def _selected_models(runtime, name: str = "", version: str = "") -> list:
    return [
        model
        for model in runtime.models()
        if model.ready
        and (not name or model.name == name)
        and (not version or str(model.version) == version)
    ]


def _reference_digest(stats) -> str:
    """Which reference a window is binned against: windows of different references
    (a refitted stats.json that one worker reloaded already) are not summed."""
    reference = {k: stats.get(k) for k in ("bin_edges", "reference_counts")}
    return hashlib.sha1(json.dumps(reference, sort_keys=True).encode()).hexdigest()[:16]


def own_drift_windows(runtime, name: str = "", version: str = "") -> list[dict[str, Any]]:
    """This worker's drift windows: per ready model version, per tensor, the raw counts
    (``aggregate.snapshot_dict``) and the digest of the reference they are binned by."""
    out = []
    for model in _selected_models(runtime, name, version):
        entry: dict[str, Any] = {"model": model.name, "version": str(model.version)}
        for section, tensors in model.drift_windows().items():
            entry[section] = {
                tensor: {
                    "window": aggregate.snapshot_dict(snapshot),
                    "reference": _reference_digest(stats),
                }
                for tensor, (snapshot, stats, _) in tensors.items()
            }
        out.append(entry)
    return out


def own_statistics(runtime, name: str = "", version: str = "") -> list[dict[str, Any]]:
    """This worker's ModelStatistics as plain data (nothing when ``name`` selects
    nothing here: the worker that answers names what is missing)."""
    try:
        reported = model_statistics(runtime, name, version)
    except SteadyServeError:
        return []
    return [
        {"name": n, "version": v, "statistics": aggregate.statistics_dict(stats)}
        for n, v, stats in reported
    ]


class WorkerEndpoint:
    """The internal aiohttp app of one worker on its unix socket: its own figures."""

    def __init__(self, runtime, path: str):
        self.runtime = runtime
        self.path = path
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/families", self._families)
        app.router.add_get("/statistics", self._statistics)
        app.router.add_get("/drift", self._drift)
        app.router.add_get("/failover", self._failover)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # a socket left by a worker of this index killed before
            sock.bind(self.path)
            os.chmod(self.path, 0o600)  # owner only (the directory is 0700 too)
            await web.SockSite(runner, sock).start()
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            raise StartupError(
                f"cannot serve the worker socket {self.path}: {exc.strerror or exc}"
            ) from None
        self._runner = runner

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.runtime.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _families(self, request: web.Request) -> web.Response:
        families = self.runtime.metrics.registry.collect()
        return web.json_response(
            {
                "families": aggregate.plain_families(families, skip_recomputed=True),
                "drift": own_drift_windows(self.runtime),
            }
        )

    async def _statistics(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response(
            own_statistics(self.runtime, q.get("name", ""), q.get("version", ""))
        )

    async def _drift(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response(
            own_drift_windows(self.runtime, q.get("name", ""), q.get("version", ""))
        )

    async def _failover(self, request: web.Request) -> web.Response:
        return web.json_response(self.runtime.failover_report())


# -- the siblings: ask each, merge ----------------------------------------------------------


class _ReportsAsRuntime:
    """What DriftCollector reads (``models()``, each with ``drift_report()``), over
    drift reports already merged: the whole server's drift gauges, computed by the
    same code as one worker's."""

    class _Model:
        def __init__(self, report: dict):
            self.name = report["model"]
            self._report = report

        def drift_report(self) -> dict:
            return self._report

    def __init__(self, reports: Iterable[dict]):
        self._models = [self._Model(r) for r in reports]

    def models(self) -> list:
        return self._models


class Siblings:
    """Worker ``index`` of ``count``: serves its own figures (``WorkerEndpoint``) and
    answers for the whole server by asking the others."""

    def __init__(self, runtime, *, index: int, count: int, directory: str, timeout_s=TIMEOUT_S):
        self.runtime = runtime
        self.index = index
        self.others = [i for i in range(count) if i != index]
        self.directory = directory
        self.timeout_s = timeout_s
        self.endpoint = WorkerEndpoint(runtime, socket_path(directory, index))
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    @classmethod
    def of(cls, runtime, settings) -> Siblings | None:
        """The Siblings of a --workers worker's settings; None for a single server."""
        if settings.worker_dir is None:
            return None
        return cls(
            runtime,
            index=settings.worker_index,
            count=settings.workers,
            directory=settings.worker_dir,
        )

    async def start(self) -> None:
        await self.endpoint.start()

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        await self.endpoint.close()
        with contextlib.suppress(OSError):  # the last worker out (a supervisor killed by
            os.rmdir(self.directory)  # SIGKILL removes nothing); fails while others serve

    # -- asking ----------------------------------------------------------------------------

    def _session(self, index: int) -> aiohttp.ClientSession:
        session = self._sessions.get(index)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=socket_path(self.directory, index)),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
            self._sessions[index] = session
        return session

    async def _ask_one(self, index: int, path: str, params: dict):
        try:
            async with self._session(index).get(f"http://worker{path}", params=params) as resp:
                resp.raise_for_status()
                return await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            log.warning(
                "a worker did not answer; its figures are left out",
                extra={"worker": index, "path": path, "error": repr(exc)},
            )
            return None

    async def ask(self, path: str, params: dict | None = None):
        """Each sibling's JSON answer to ``GET path`` ({index: answer}) and the indexes of
        those that did not answer within ``timeout_s``."""
        params = {k: v for k, v in (params or {}).items() if v}
        answers = await asyncio.gather(*(self._ask_one(i, path, params) for i in self.others))
        got = {i: a for i, a in zip(self.others, answers, strict=True) if a is not None}
        return got, [i for i in self.others if i not in got]

    # -- the whole server's figures ----------------------------------------------------------

    async def metrics(self) -> str:
        """The Prometheus exposition of every worker, merged (``aggregate.RULES``)."""
        own = list(self.runtime.metrics.registry.collect())
        answers, missing = await self.ask("/families")
        families = {self.index: own}
        families.update({i: aggregate.families_of_plain(a["families"]) for i, a in answers.items()})
        windows = {i: a["drift"] for i, a in answers.items()}
        reports = [self._merged_drift(m, windows)[0] for m in _selected_models(self.runtime)]
        collector = DriftCollector()
        source = _ReportsAsRuntime(reports)  # held here: the collector holds it weakly
        collector.add(source)
        merged = aggregate.merge_families(
            families, missing=missing, replacements=list(collector.collect())
        )
        return aggregate.render(merged)

    async def statistics(self, name: str, version: str, own: list) -> tuple[list, dict]:
        """ModelStatistics of every worker summed per model version (``own``: this
        worker's, from ``model_statistics``), and the ``workers`` field."""
        answers, missing = await self.ask("/statistics", {"name": name, "version": version})
        parts: dict[tuple[str, str], list[dict]] = {}
        for n, v, stats in own:
            parts[(n, v)] = [aggregate.statistics_dict(stats)]
        for index in sorted(answers):
            for entry in answers[index]:
                key = (entry["name"], str(entry["version"]))
                parts.setdefault(key, []).append(entry["statistics"])
        merged = [
            (n, v, aggregate.statistics_from_dict(aggregate.merge_statistics(p)))
            for (n, v), p in parts.items()
        ]
        return merged, aggregate.workers_field([self.index, *answers], missing)

    async def drift_report(self, model) -> dict:
        """``model.drift_report()`` over every worker's window (raw counts summed, PSI
        and rates computed from the sum), with the ``workers`` field."""
        answers, missing = await self.ask(
            "/drift", {"name": model.name, "version": str(model.version)}
        )
        report, other_reference = self._merged_drift(model, answers)
        report["workers"] = aggregate.workers_field([self.index, *answers], missing)
        if other_reference:
            report["workers"]["other_reference"] = sorted(other_reference)
        return report

    async def failover_report(self) -> dict:
        """The failover report of every worker: counts summed, each circuit per worker
        and the worst (``aggregate.merge_failover``), with the ``workers`` field."""
        answers, missing = await self.ask("/failover")
        reports = {self.index: self.runtime.failover_report(), **answers}
        merged = aggregate.merge_failover(reports)
        merged["workers"] = aggregate.workers_field(reports, missing)
        return merged

    def _merged_drift(self, model, windows: dict[int, list]) -> tuple[dict, set[int]]:
        """(the drift report of ``model`` over this worker's window and the siblings'
        ``windows`` {worker: their own_drift_windows}, the workers left out because
        their window is binned by another reference)."""
        report = model.drift_report()  # the header, and the sections replaced below
        tensors = model.drift_windows()
        other_reference: set[int] = set()
        for section in ("inputs", "outputs"):
            for tensor, (snapshot, stats, names) in tensors[section].items():
                digest = _reference_digest(stats)
                parts = [snapshot]
                for index, entries in windows.items():
                    for entry in entries:
                        if entry["model"] != model.name or entry["version"] != str(model.version):
                            continue
                        theirs = entry.get(section, {}).get(tensor)
                        if theirs is None:
                            continue
                        if theirs["reference"] != digest:
                            other_reference.add(index)
                        else:
                            parts.append(theirs["window"])
                try:
                    summed = aggregate.sum_snapshots(parts)
                except ValueError:  # a window of another shape: keep this worker's only
                    log.warning(
                        "drift windows of different shapes; reporting this worker's",
                        extra={"model": model.name, "tensor": tensor},
                    )
                    continue
                report[section][tensor] = drift_section(summed, stats, names, model.config.drift)
        return report, other_reference


__all__ = ["Siblings", "WorkerEndpoint", "socket_path"]
