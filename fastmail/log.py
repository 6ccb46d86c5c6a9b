"""Structured logs: one key=value line per event, with the queue id where there is one.

    ts=2026-11-28T13:01:31.716 level=info pid=12283 logger=fastmail event=accepted qid=01a2… size=419

Session events are written by `event()` without the logging module's per-record machinery, and a worker
buffers them (`buffer()`): they leave in one write() per flush interval instead of one per line, which
under load was a fifth of a worker's time.  Everything else goes through `logging` with the same format.

Values are a client's strings as often as ours: quoted when they need it, with every control character
escaped inside the quotes, and (in event lines) cut at MAX_VALUE characters — a line is always one line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error",
           logging.CRITICAL: "critical"}
# sd-daemon(3) priority prefixes, which journald reads off the start of each line of a service's stderr.
_PRIORITY = {logging.DEBUG: "<7>", logging.INFO: "<6>", logging.WARNING: "<4>", logging.ERROR: "<3>",
             logging.CRITICAL: "<2>"}


def _stderr_is_journal() -> bool:
    """True when stderr is journald's stream: systemd sets JOURNAL_STREAM to that stream's ``device:inode``
    (systemd.exec(5)); a redirect or pipe in between has another inode, and then the lines stay plain."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


# Characters that make a value need quotes: white space, quotes, "=", backslash, and every control character
# (C0, DEL, C1 and the Unicode line and paragraph separators).  Inside quotes, the controls are escaped, so a
# client's string (a HELO name, an address, a parameter) can never end a line or forge one: not for grep, and
# not for readers that split lines on \v, \f, \x1c-\x1e, \x85 or U+2028 (Python's str.splitlines does).
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord('"'): '\\"', ord("\\"): "\\\\",
                 0x2028: "\\u2028", 0x2029: "\\u2029"})

# The longest value an event line carries (characters): a client's string longer than this (a 4 KiB HELO
# name, say) is cut, and the cut says how much is missing.
MAX_VALUE = 512


def _kv_value(value: object, limit: int = 0) -> str:
    if type(value) is int:
        return str(value)
    text = value if type(value) is str else str(value)
    if limit and len(text) > limit:
        text = f"{text[:limit]}...[{len(text) - limit} more]"
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + text.translate(_ESCAPES) + '"'


def kv(**fields: object) -> str:
    """``event=worker_start kind=worker pid=12``: values with spaces, quotes, ``=`` or control characters are
    quoted, with the controls escaped (``"a\\x0bb"``)."""
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
        self.journal = False  # setup(): lines start with their journal priority (<6> ...)

    def stamp(self, now: float) -> str:
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(sec))
        return f"{self._stamp}.{int((now - sec) * 1000):03d}"

    def write(self, level: int, text: str) -> None:
        line = f"ts={self.stamp(time.time())} level={_LEVELS.get(level, 'info')} pid={self.pid} logger=fastmail {text}\n"
        if self.journal:
            line = _PRIORITY.get(level, "<6>") + line
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
    """One ``event=NAME key=value ...`` line; a None value is left out, each value bounded by MAX_VALUE."""
    if level >= _sink.level:
        values = (f"{k}={_kv_value(v, MAX_VALUE)}" for k, v in fields.items() if v is not None)
        _sink.write(level, " ".join([f"event={name}", *values]))


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
        if _sink.journal:
            line = _PRIORITY.get(record.levelno, "<6>") + line
        return line


def setup(level: int | str = logging.INFO) -> None:
    """Key=value lines on stderr (replacing any handler set before); under systemd, with each line's journal
    priority in front, so ``journalctl -p warning`` selects by level."""
    _sink.journal = _stderr_is_journal()
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
