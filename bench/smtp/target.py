"""What every server under test provides, and helpers shared by the targets (ports, greeting, Maildir)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

SENDER = "sender@remote.test"
DOMAIN = "example.org"
RECIPIENT = f"bench@{DOMAIN}"
CLIENT_NAME = "client.remote.test"  # smtp-source -M: the HELO name


class Target(ABC):
    """One server under test.  A round is: start(workdir) on an empty dir, smtp-source against
    (host, port), count_stored(), stop(), count_stored() again."""

    name: str
    # True when the server replies 250 only once the message is in the recipient's mailbox: then the
    # end-to-end time is the smtp-source time.  Otherwise (a queueing MTA) the driver polls count_stored().
    stored_on_accept: bool = True
    # False for a sink that keeps nothing: its "stored" is what it accepted (and the table says n/a).
    stores_mail: bool = True
    # True when stored messages end lines in LF instead of the CRLF they came with (one byte less a line).
    stores_lf: bool = False
    host = "127.0.0.1"
    port = 0
    # The run's shared services (bench/smtp/services.py: "dns", "rspamd", "clamd") this target calls: their
    # CPU is reported with its rounds.
    uses: tuple[str, ...] = ()

    @abstractmethod
    def start(self, workdir: Path) -> None:
        """Fresh state under workdir, RECIPIENT able to receive; return once the SMTP port answers 220."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Root processes of the server; their whole process tree is accounted (CPU, memory)."""

    @abstractmethod
    def count_stored(self, detail: bool = True) -> dict[str, Any]:
        """{"stored": messages in RECIPIENT's mailbox, ...cross-checks}; works running or stopped.
        detail=False: only "stored", as cheaply as possible (polled while a queue drains)."""

    @abstractmethod
    def stop(self) -> dict[str, Any]:
        """Stop gracefully; return what is worth keeping: {"exit_code": ..., "log": {...}}."""

    def check_log(self, log: dict[str, Any], accepted: int) -> list[str]:
        """Problems in what stop() returned as "log" beyond the stored count (e.g. a check that did not run)."""
        return []

    def versions(self) -> dict[str, str]:
        return {}

    def settings(self) -> dict[str, Any]:
        return {}

    def check_installed(self) -> str | None:
        """None, or what is missing and how to install it."""
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_greeting(host: str, port: int, alive: Any, timeout: float = 60.0, expect: bytes = b"220") -> None:
    """Until a connection to host:port is greeted with `expect` (SMTP's 220, IMAP's b"* OK"); `alive()`
    false means the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited before it answered")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                if s.recv(100).startswith(expect):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no {expect.decode()} greeting on {host}:{port} within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
    """Send `sig`, wait up to `timeout` s for the exit status; past that kill its process group (None)."""
    if proc is None:
        return None
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return None


def make_maildir(path: Path, uid: int = -1, gid: int = -1) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    if uid >= 0:
        for p in (path, path / "tmp", path / "new", path / "cur"):
            os.chown(p, uid, gid)


def count_maildir(path: Path, detail: bool = True) -> dict[str, Any]:
    """Messages delivered to a Maildir: the files in new/ and cur/ (tmp/ holds deliveries in progress).
    detail: also the smallest message, the newest file's mtime (when the last delivery was written) and
    what is left in tmp/."""
    names = 0
    smallest = -1
    newest = 0.0
    for sub in ("new", "cur"):
        try:
            with os.scandir(path / sub) as it:
                for e in it:
                    names += 1
                    if detail:
                        st = e.stat()
                        smallest = st.st_size if smallest < 0 else min(smallest, st.st_size)
                        newest = max(newest, st.st_mtime)
        except FileNotFoundError:
            pass
    if not detail:
        return {"stored": names}
    try:
        in_tmp = len(os.listdir(path / "tmp"))
    except FileNotFoundError:
        in_tmp = 0
    return {"stored": names, "min_size": max(smallest, 0), "in_tmp": in_tmp, "last_mtime": newest}
