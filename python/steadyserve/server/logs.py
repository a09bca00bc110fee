"""Structured logs: one JSON object per line on stderr (or text, for people).

Each line has ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``msg`` and every field passed with ``extra={...}``; an exception adds ``exc``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people: time, level, logger, message, then the extra fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        when = _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc)
        fields = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        line = (
            f"{when.strftime('%H:%M:%S.%f')[:-3]} {record.levelname.lower():<7} "
            f"{record.name}: {record.getMessage()}"
        )
        if fields:
            line += f"  [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", stream=None, fmt: str = "json") -> None:
    """Route the root logger to ``stream`` (stderr) at ``level``: JSON lines (``fmt``
    "json") or plain text ("text")."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp logs one line per HTTP request at INFO; keep probes quiet unless debugging.
    logging.getLogger("aiohttp.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )
