"""Structured logs: one key=value line per event, with the queue id where there is one.

    ts=2026-11-28T13:01:31.716 level=info pid=12283 logger=fastmail event=accepted qid=01a2… size=419
"""

from __future__ import annotations

import logging
import sys

_log = logging.getLogger("fastmail")


def _kv_value(value: object) -> str:
    text = str(value)
    if text and not any(c.isspace() or c in '"=\\' for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def kv(**fields: object) -> str:
    """``event=worker_start kind=worker pid=12``: values with spaces, quotes or ``=`` are quoted."""
    return " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items() if v is not None)


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    if _log.isEnabledFor(level):
        _log.log(level, "%s", kv(event=name, **fields))


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info pid=... logger=fastmail.master event=...``"""

    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        line = f"ts={ts}.{int(record.msecs):03d} level={record.levelname.lower()} pid={record.process} logger={record.name} "
        line += record.getMessage()
        if record.exc_info:
            line += " exc=" + _kv_value(self.formatException(record.exc_info))
        return line


def setup(level: int | str = logging.INFO) -> None:
    """Key=value lines on stderr (replacing any handler set before)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def configure_logging(level: int = logging.INFO) -> None:
    """Like setup(), unless the application configured logging already."""
    if not logging.getLogger().handlers:
        setup(level)
