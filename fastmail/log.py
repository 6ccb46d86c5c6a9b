"""Structured logs: one key=value line per event, with the queue id where there is one."""

from __future__ import annotations

import logging
import sys

_log = logging.getLogger("fastmail")


def _quote(value: object) -> str:
    s = str(value)
    if not s or any(c in s for c in ' ="\\\n\r\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'
    return s


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    if _log.isEnabledFor(level):
        _log.log(level, "event=%s %s", name, " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None))


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
