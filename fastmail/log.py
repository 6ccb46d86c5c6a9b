"""Structured logs: one key=value line per event, with the queue id where there is one.

    ts=2026-11-28T13:01:31.716 level=info pid=12283 logger=fastmail event=accepted qid=01a2… size=419

Session events are written by `event()` without the logging module's per-record machinery, and a worker
buffers them (`buffer()`): they leave in one write() per flush interval instead of one per line, which
under load was a fifth of a worker's time.  Everything else goes through `logging` with the same format.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error",
           logging.CRITICAL: "critical"}


_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


def _kv_value(value: object) -> str:
    text = value if type(value) is str else str(value)
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def kv(**fields: object) -> str:
    """``event=worker_start kind=worker pid=12``: values with spaces, quotes or ``=`` are quoted."""
    return " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items() if v is not None)


class _Sink:
    """Formats event lines and writes them to stderr, at once or in batches."""

    def __init__(self) -> None:
        self.level = logging.INFO
        self.buffered = False
        self.lines: list[str] = []
        self.pid = os.getpid()
        self._sec = -1
        self._stamp = ""

    def stamp(self, now: float) -> str:
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(sec))
        return f"{self._stamp}.{int((now - sec) * 1000):03d}"

    def write(self, level: int, text: str) -> None:
        line = f"ts={self.stamp(time.time())} level={_LEVELS.get(level, 'info')} pid={self.pid} logger=fastmail {text}\n"
        if self.buffered:
            self.lines.append(line)
            if len(self.lines) >= 512:
                self.flush()
        else:
            _write_all(line)

    def flush(self) -> None:
        if self.lines:
            text = "".join(self.lines)
            self.lines.clear()
            _write_all(text)


def _write_all(text: str) -> None:
    data = text.encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(2, data):]
    except BlockingIOError:
        pass  # a stuck log reader must not stall mail: drop the rest of this batch
    except OSError:
        pass


_sink = _Sink()
os.register_at_fork(after_in_child=lambda: setattr(_sink, "pid", os.getpid()))


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    if level >= _sink.level:
        _sink.write(level, kv(event=name, **fields))


def buffer(enabled: bool = True) -> None:
    """Batch event lines until flush() (a worker flushes on a timer and when it stops)."""
    _sink.buffered = enabled
    if not enabled:
        _sink.flush()


def flush() -> None:
    _sink.flush()


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info pid=... logger=fastmail.master event=...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"ts={_sink.stamp(record.created)} level={record.levelname.lower()} pid={record.process} "
                f"logger={record.name} {record.getMessage()}")
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
    _sink.level = root.level


def configure_logging(level: int = logging.INFO) -> None:
    """Like setup(), unless the application configured logging already."""
    if not logging.getLogger().handlers:
        setup(level)
