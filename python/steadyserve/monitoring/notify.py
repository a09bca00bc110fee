"""Alert receivers: Alertmanager (API v2) and a JSON webhook, each on its own thread.

Why threads with ``http.client`` rather than aiohttp on the server's loop: the rules are
evaluated on a thread (``alerts.AlertEvaluator``) so that reading the core's counters and
computing drift never runs on the event loop, and the senders follow it there. A receiver
that is down, slow, or accepts and never answers then costs one blocked thread of its
own, never the loop that bridges RPCs and serves the HTTP port, and nothing hops between
threads and the loop. Each receiver has its own thread, so one hung receiver does not
delay the other. A request in flight is bounded by ``timeout_s`` and ``stop()`` shuts
its socket down, so shutdown does not wait for a receiver that never answers.

- ``AlertmanagerSender`` keeps the latest version of each alert (by its labels) still to
  send: a new evaluation's copy replaces an undelivered older one, so a down Alertmanager
  gets one up-to-date POST when it is back, and what waits is bounded by the number of
  distinct alerts (``capacity``; beyond it the oldest is dropped, counted).
- ``WebhookSender`` sends each change (``{"status": "firing"|"resolved", "alerts":
  [...]}``) in order from a bounded queue (full: the oldest message is dropped, counted);
  a message is given up (dropped) after ``max_attempts`` failed POSTs.

Both retry with exponential back-off (``backoff_s``: 0.5 s doubling up to 30 s; a success
resets it) and count alerts: ``sent`` (delivered), ``failed`` (in a POST that failed;
they are retried), ``dropped`` (given up). Failures are logged at most once a minute per
receiver, with how many there were since the last line.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import datetime as _dt
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("steadyserve.alerts")

TIMEOUT_S = 5.0  # one POST, connect included
BACKOFF_S = (0.5, 30.0)  # first retry delay, largest delay
LOG_EVERY_S = 60.0  # at most one "unreachable" line per receiver per minute
JOIN_S = 2.0  # how long stop() waits for a sender thread


def rfc3339(wall_s: float) -> str:
    """``wall_s`` (seconds since the epoch) as RFC 3339 in UTC, milliseconds: what
    Alertmanager's startsAt / endsAt take."""
    when = _dt.datetime.fromtimestamp(wall_s, tz=_dt.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_object(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    starts_wall: float,
    ends_wall: float,
    generator_url: str,
) -> dict[str, Any]:
    """One alert in Alertmanager's API v2 form (``postableAlert``)."""
    return {
        "labels": dict(labels),
        "annotations": dict(annotations),
        "startsAt": rfc3339(starts_wall),
        "endsAt": rfc3339(ends_wall),
        "generatorURL": generator_url,
    }


def fingerprint(alert: Mapping[str, Any]) -> tuple:
    """What identifies an alert to Alertmanager: its label set."""
    return tuple(sorted(alert["labels"].items()))


class ReceiverError(Exception):
    """A receiver answered, but not with 2xx."""


class _Sender(abc.ABC):
    """A receiver's thread: takes what there is to send, POSTs it, backs off on failure.

    Subclasses keep what waits (``_take`` / ``_settle``); ``post`` is injectable (tests)."""

    receiver = ""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = TIMEOUT_S,
        backoff_s: tuple[float, float] = BACKOFF_S,
        post: Callable[[bytes], None] | None = None,
    ):
        self.url = url
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._post = post if post is not None else self._http_post
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._conn: http.client.HTTPConnection | None = None
        self.counts = {"sent": 0, "failed": 0, "dropped": 0}
        self.last_error: str | None = None
        self._failures_unlogged = 0
        self._last_log = -float("inf")
        self._failing = False

    # -- the evaluator's side (never blocks, never raises) --------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"steadyserve-alerts-{self.receiver}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = JOIN_S) -> None:
        """Stop sending: what waits is discarded; a POST in flight is cut off."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            conn = self._conn
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # wakes a thread blocked reading the answer
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "alert sender still busy at shutdown; leaving it",
                    extra={"receiver": self.receiver, "url": self.url},
                )

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "receiver": self.receiver,
                "url": self.url,
                **self.counts,
                "waiting": self._waiting(),
                "last_error": self.last_error,
            }

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        while True:
            with self._lock:
                while not self._stopping and not self._waiting():
                    self._wake.wait()
                if self._stopping:
                    return
                body, token, n = self._take()
            try:
                self._post(body)
            except Exception as exc:  # any failure to deliver is the same: retry later
                error = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if self._stopping:
                        return
                    self.counts["failed"] += n
                    self.last_error = error
                    self._settle(token, ok=False)
                self._log_failure(error)
                delay = min(self.backoff_s[1], delay * 2 if delay else self.backoff_s[0])
                with self._lock:  # back off; stop() cuts it short
                    deadline = time.monotonic() + delay
                    while not self._stopping and time.monotonic() < deadline:
                        self._wake.wait(max(0.0, deadline - time.monotonic()))
                continue
            delay = 0.0
            with self._lock:
                self.counts["sent"] += n
                self._settle(token, ok=True)
            self._log_recovery()

    def _http_post(self, body: bytes) -> None:
        parts = urlsplit(self.target_url())
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.timeout_s)
        with self._lock:
            if self._stopping:
                raise ReceiverError("stopping")
            self._conn = conn
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request(
                "POST",
                path,
                body=body,
                headers={"Content-Type": "application/json", "User-Agent": "steadyserve"},
            )
            response = conn.getresponse()
            text = response.read(2048)
            if not 200 <= response.status < 300:
                raise ReceiverError(
                    f"HTTP {response.status} {response.reason}: "
                    f"{text.decode('utf-8', 'replace')[:200].strip()}"
                )
        finally:
            with self._lock:
                self._conn = None
            conn.close()

    def _log_failure(self, error: str) -> None:
        with self._lock:
            self._failing = True
            self._failures_unlogged += 1
            now = time.monotonic()
            if now - self._last_log < LOG_EVERY_S:
                return
            self._last_log, failures, self._failures_unlogged = now, self._failures_unlogged, 0
        log.warning(
            "alert receiver unreachable; retrying with back-off",
            extra={
                "receiver": self.receiver,
                "url": self.target_url(),
                "error": error,
                "failures": failures,
            },
        )

    def _log_recovery(self) -> None:
        with self._lock:
            if not self._failing:
                return
            self._failing = False
            self._last_log = -float("inf")  # the next outage is logged at once
            self._failures_unlogged = 0
        log.info(
            "alert receiver reachable again",
            extra={"receiver": self.receiver, "url": self.target_url()},
        )

    # -- what subclasses keep (called with the lock held) ---------------------------------

    def target_url(self) -> str:
        return self.url

    @abc.abstractmethod
    def _waiting(self) -> int:
        """How many items wait to be sent."""

    @abc.abstractmethod
    def _take(self) -> tuple[bytes, Any, int]:
        """(body, token, items) of the next POST."""

    @abc.abstractmethod
    def _settle(self, token: Any, ok: bool) -> None:
        """The POST of ``token`` succeeded or failed: drop or keep what it sent."""


class AlertmanagerSender(_Sender):
    """POST {url}/api/v2/alerts with every alert that changed or is due again."""

    receiver = "alertmanager"

    def __init__(self, url: str, *, capacity: int = 1024, **kwargs):
        super().__init__(url, **kwargs)
        self.capacity = capacity
        self._pending: collections.OrderedDict[tuple, dict] = collections.OrderedDict()

    def target_url(self) -> str:
        return self.url.rstrip("/") + "/api/v2/alerts"

    def submit(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        if not alerts:
            return
        with self._lock:
            if self._stopping:
                return
            for alert in alerts:
                key = fingerprint(alert)
                self._pending.pop(key, None)  # the newer copy replaces it, at the end
                self._pending[key] = dict(alert)
            while len(self._pending) > self.capacity:
                self._pending.popitem(last=False)
                self.counts["dropped"] += 1
            self._wake.notify()

    def _waiting(self) -> int:
        return len(self._pending)

    def _take(self) -> tuple[bytes, Any, int]:
        batch = list(self._pending.items())
        self._pending.clear()
        return json.dumps([a for _, a in batch]).encode(), batch, len(batch)

    def _settle(self, token: Any, ok: bool) -> None:
        if ok:
            return
        # Failed: put back what no newer evaluation has replaced since, ahead of it.
        merged = collections.OrderedDict((k, a) for k, a in token if k not in self._pending)
        merged.update(self._pending)
        dropped = max(0, len(merged) - self.capacity)
        for _ in range(dropped):
            merged.popitem(last=False)
        self.counts["dropped"] += dropped
        self._pending = merged


class WebhookSender(_Sender):
    """POST {"status": "firing"|"resolved", "alerts": [...]} to the URL, change by change."""

    receiver = "webhook"

    def __init__(self, url: str, *, capacity: int = 256, max_attempts: int = 8, **kwargs):
        super().__init__(url, **kwargs)
        self.capacity = capacity
        self.max_attempts = max_attempts
        self._queue: collections.deque[list] = collections.deque()  # [status, alerts, attempts]

    def submit(self, status: str, alerts: Sequence[Mapping[str, Any]]) -> None:
        if not alerts:
            return
        with self._lock:
            if self._stopping:
                return
            self._queue.append([status, [dict(a) for a in alerts], 0])
            while len(self._queue) > self.capacity:
                self.counts["dropped"] += len(self._queue.popleft()[1])
            self._wake.notify()

    def _waiting(self) -> int:
        return len(self._queue)

    def _take(self) -> tuple[bytes, Any, int]:
        message = self._queue.popleft()
        status, alerts, _ = message
        return json.dumps({"status": status, "alerts": alerts}).encode(), message, len(alerts)

    def _settle(self, token: Any, ok: bool) -> None:
        if ok:
            return
        token[2] += 1
        if token[2] >= self.max_attempts:
            self.counts["dropped"] += len(token[1])
            return
        self._queue.appendleft(token)  # first again, in order
        while len(self._queue) > self.capacity:
            self.counts["dropped"] += len(self._queue.popleft()[1])


__all__ = [
    "AlertmanagerSender",
    "ReceiverError",
    "WebhookSender",
    "alert_object",
    "fingerprint",
    "rfc3339",
]
