"""fastmail.log under systemd: each line starts with its journal priority only when stderr is the journal."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import logging
from fastmail import log
log.setup()
log.event("one", qid="q1")
logging.getLogger("fastmail.master").warning("event=two")
log.event("three", level=logging.ERROR)
log.buffer()
log.event("four", level=logging.DEBUG)
log.event("five", level=logging.CRITICAL)
log.flush()
"""


def _run(journal_stream: str | None) -> tuple[list[str], str]:
    r, w = os.pipe()
    st = os.fstat(r)  # both ends of a pipe are one inode: what systemd would name for its stream socket
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream.format(dev=st.st_dev, ino=st.st_ino)
    with os.fdopen(r, "rb") as reader:
        proc = subprocess.Popen([sys.executable, "-c", CHILD], stderr=w, env=env)
        os.close(w)
        out = reader.read().decode()
    assert proc.wait(timeout=30) == 0, out
    return out.splitlines(), f"{st.st_dev}:{st.st_ino}"


def test_priority_prefixes_when_stderr_is_the_journal():
    lines, _ = _run("{dev}:{ino}")
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>", "<2>"]  # debug is below the level: not written
    assert lines[0][3:].startswith("ts=") and " level=info " in lines[0] and lines[0].endswith("event=one qid=q1")
    assert " level=warning " in lines[1] and lines[1].endswith("event=two")
    assert " level=critical " in lines[3]


def test_plain_lines_otherwise():
    for stream in (None, "1:1", "{dev}:0"):  # unset, another stream (stderr redirected to a file or pipe)
        lines, _ = _run(stream)
        assert len(lines) == 4 and all(line.startswith("ts=") for line in lines), (stream, lines)
