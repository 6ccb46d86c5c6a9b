"""Start the real server (`fastmail serve`) as a process tree on free loopback ports, with a temp data dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .dnsserver import LocalDNS
from .receivers import Loop, Receiver

# Servers of tests that are not about outbound delivery keep what they queue (tests inspect it).
NO_DELIVERY = "[delivery]\nprocesses = 0\n"
# The failed-login throttle (fastmail.hygiene.authfail) of the test servers: on, but in tenths of a second
# (the defaults, 1 s doubling to 15 s, would make the tests that fail logins on purpose slow);
# test_auth_attacks sets its own.
AUTH_THROTTLE = "[auth]\nthrottle_delay = 0.05\nthrottle_max_delay = 0.4\n"
PASSWORDS = {"alice@example.org": "alice-secret", "bob@example.org": "bob-secret", "carol@example.org": "carol-secret"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fastmail_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastmail", *args]


@dataclass
class Server:
    tmp: Path
    ports: dict[str, int]
    workers: int = 2
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.tmp / "data"
        self.config = self.tmp / "fastmail.toml"
        self.log = self.tmp / "server.log"
        self.lmtp_sock = self.tmp / "lmtp.sock"
        self.config.write_text(
            f"""
[server]
hostname = "mx.example.org"
data_dir = "{self.data}"
workers = {self.workers}
grace_period = 5.0
worker_timeout = 10.0

[listen]
smtp = ["127.0.0.1:{self.ports['smtp']}"]
submission = ["127.0.0.1:{self.ports['submission']}"]
submissions = ["127.0.0.1:{self.ports['submissions']}"]
lmtp = ["127.0.0.1:{self.ports['lmtp']}", "unix:{self.lmtp_sock}"]
imap = ["127.0.0.1:{self.ports['imap']}"]
imaps = ["127.0.0.1:{self.ports['imaps']}"]
pop3 = ["127.0.0.1:{self.ports['pop3']}"]
pop3s = ["127.0.0.1:{self.ports['pop3s']}"]

{"" if "[delivery]" in self.extra else NO_DELIVERY}
{AUTH_THROTTLE}
[smtp]
max_message_size = 1048576
{self.extra}
"""
        )

    def cli(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        res = subprocess.run(fastmail_cmd(*args, "-c", str(self.config)), input=input, capture_output=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"fastmail {' '.join(args)} failed: {res.stderr.decode()}")
        return res

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0  # a restart appends to the same log
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                fastmail_cmd("serve", "-c", str(self.config)), stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
            # Ready when the master has seen every worker ready (they have dropped privileges and serve),
            # not merely when one answers: tests count on every worker.
            with open(self.log, "rb") as f:
                f.seek(offset)
                started = f.read().decode(errors="replace")
            if started.count("event=worker_ready kind=worker ") >= self.workers:
                try:
                    with socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=2) as s:
                        if s.recv(100).startswith(b"220"):
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            return None

    def kill_tree(self) -> None:
        """SIGKILL the master and every child at once (the process group)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def messages(self, user: str, mailbox: str = "INBOX") -> list[bytes]:
        import orjson

        listing = orjson.loads(self.cli("message", "list", user, mailbox, "--json").stdout)
        return [self.cli("message", "show", user, mailbox, str(m["uid"])).stdout for m in listing]

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


def poll(pred: Callable[[], object], timeout: float = 20.0) -> bool:
    """True as soon as pred() is true (checked every 50 ms), False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def make_server(tmp_path: Path, workers: int = 2, extra: str = "") -> Server:
    ports: dict[str, int] = {}
    for name in ("smtp", "submission", "submissions", "lmtp", "imap", "imaps", "pop3", "pop3s"):
        for _ in range(100):  # the kernel may hand out a port again once it is free: keep them distinct
            port = free_port()
            if port not in ports.values():
                ports[name] = port
                break
    srv = Server(tmp_path, ports, workers, extra)
    srv.cli("domain", "add", "example.org")
    for user, pw in PASSWORDS.items():
        srv.cli("user", "add", user, "--password-stdin", input=pw.encode() + b"\n")
    srv.cli("alias", "add", "team@example.org", "alice@example.org", "bob@example.org")
    srv.cli("alias", "add", "postmaster@example.org", "alice@example.org")
    return srv


@pytest.fixture
def server(tmp_path):
    srv = make_server(tmp_path)
    srv.start()
    yield srv
    srv.stop()
    srv.kill_tree()


@pytest.fixture(autouse=True)
def _close_raw_sockets() -> Iterator[None]:
    """Every raw client socket a test opened (wire.OPEN) is closed after it, even when it failed."""
    yield
    from .wire import close_open_sockets  # not at the top: wire.py imports this module

    close_open_sockets()


# A DNS server, a loop for receivers and a port for their MX, shared by a module's tests (test_delivery,
# test_metrics, ...); a module overrides `dns` when it needs records from the start.
@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    d = LocalDNS().start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def rloop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def mx_port() -> int:
    return free_port()


@pytest.fixture
def receivers(rloop: Loop, mx_port: int) -> Iterator[Callable[..., Receiver]]:
    """receivers(host, **kw): a scripted SMTP receiver (tests/integration/receivers.py) on host:mx_port,
    stopped after the test."""
    made: list[Receiver] = []

    def make(host: str, **kw: Any) -> Receiver:
        r = Receiver(rloop, host, mx_port, **kw).start()
        made.append(r)
        return r

    yield make

    async def stop(r: Receiver) -> None:
        r.stop()

    for r in made:
        rloop.run(stop(r))
