"""`fastmail serve` with no config file, started in an empty folder: the embedded dev server (ARCHITECTURE §6).

First start: data in ./fastmail-data, a self-signed certificate there (served on the TLS ports), the demo
domain and user made and the password printed once; mail to the demo user is delivered and read back over
POP3 (STLS, checked against that certificate) with the printed credentials; TERM to the master's pid stops
everything.  Second start in the same folder: the same data, certificate and password, no new credentials.

The embedded default listens on fixed ports (listen.* defaults: 2525, 2587, 2465, 2424, 1143, 1993, 1110,
1995 on 127.0.0.1).  If another process holds one of them (a `make serve` left running...), the test fails
and says which port -- it does not skip."""

from __future__ import annotations

import os
import poplib
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fastmail import config as configmod
from fastmail.cli import DEMO_USER

from .wire import TIMEOUT

pytestmark = pytest.mark.integration

DEFAULTS = configmod.load(None)  # what `fastmail serve` without -c runs on
LISTENERS = {spec.name: spec.address for spec in DEFAULTS.listeners}


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _who_listens(port: int) -> str:
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return ""
    return out.strip()


def _require_free_ports() -> None:
    busy = [(name, addr) for name, addr in LISTENERS.items() if _port_in_use(*addr)]
    if busy:
        detail = "\n".join(f"  {name} {host}:{port} {_who_listens(port)}" for name, (host, port) in busy)
        pytest.fail("the embedded default's fixed ports must be free for this test; in use now:\n" + detail
                    + "\nstop that process (a dev server from `make serve`?) and run the test again", pytrace=False)


class Embedded:
    """`python -m fastmail serve` (no options) with cwd = an empty folder; output to a log outside it."""

    def __init__(self, cwd: Path, log: Path) -> None:
        self.cwd = cwd
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self) -> str:
        """Start and wait until every worker is ready and SMTP greets; return what this start printed."""
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "fastmail", "serve"], cwd=self.cwd,
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self.output()
            if self.proc.poll() is not None:
                raise AssertionError(f"fastmail serve exited {self.proc.returncode}:\n{out}")
            if out.count("event=worker_ready kind=worker ") >= DEFAULTS.workers:
                try:
                    with socket.create_connection(LISTENERS["smtp"], timeout=2) as s:
                        if s.recv(100).startswith(b"220"):
                            return self.output()
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"fastmail serve did not start:\n{self.output()}")

    def output(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def term(self) -> int:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)  # the master, by its pid
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _verified_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the server's self-signed certificate (SAN 127.0.0.1)."""
    ctx = ssl.create_default_context(cafile=str(cert))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def _pop3_inbox(password: str, cert: Path) -> list[bytes]:
    host, port = LISTENERS["pop3"]
    p = poplib.POP3(host, port, timeout=TIMEOUT)
    try:
        p.stls(context=_verified_context(cert))
        p.user(DEMO_USER)
        p.pass_(password)
        count, _ = p.stat()
        return [b"\r\n".join(p.retr(i)[1]) + b"\r\n" for i in range(1, count + 1)]
    finally:
        p.quit()


def test_first_start_makes_the_dev_server_and_the_second_reuses_it(tmp_path):
    assert {name: port for name, (_host, port) in LISTENERS.items()} == {
        "smtp": 2525, "submission": 2587, "submissions": 2465, "lmtp": 2424,
        "imap": 1143, "imaps": 1993, "pop3": 1110, "pop3s": 1995}
    assert {host for host, _port in LISTENERS.values()} == {"127.0.0.1"}
    _require_free_ports()

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    data = cwd / "fastmail-data"  # server.data_dir "./fastmail-data": relative to where serve starts
    cert, key = data / "tls" / "cert.pem", data / "tls" / "key.pem"
    creds = data / "demo-credentials.txt"
    srv = Embedded(cwd, tmp_path / "serve.log")
    try:
        # -- first start ----------------------------------------------------------------------------------
        out = srv.start()
        assert os.listdir(cwd) == ["fastmail-data"]
        assert f"event=tls_self_signed cert={cert} key={key}" in out
        assert "fastmail: demo domain and user ready" in out
        assert f"  user: {DEMO_USER}\n" in out and f"  data: {data}\n" in out
        for name, (host, port) in LISTENERS.items():
            assert f"{name} {host}:{port}" in out
        (password,) = re.findall(r"^  password: (\S+)$", out, re.M)
        assert creds.read_text() == f"user: {DEMO_USER}\npassword: {password}\n"
        assert (creds.stat().st_mode & 0o777, key.stat().st_mode & 0o777) == (0o600, 0o600)
        cert_pem = cert.read_bytes()

        # the certificate made is the one served (implicit TLS on submissions)
        with socket.create_connection(LISTENERS["submissions"], timeout=TIMEOUT) as raw:
            with _verified_context(cert).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True)).encode() == cert_pem

        token = uuid.uuid4().hex
        msg = f"From: <x@remote.test>\r\nTo: <{DEMO_USER}>\r\nSubject: {token}\r\n\r\nhello {token}\r\n".encode()
        with smtplib.SMTP(*LISTENERS["smtp"], timeout=TIMEOUT) as s:
            s.sendmail("x@remote.test", [DEMO_USER], msg)
        (got,) = _pop3_inbox(password, cert)
        assert got.startswith(b"Received: ") and got.endswith(msg)

        assert srv.term() == 0
        busy = [port for _name, (host, port) in LISTENERS.items() if _port_in_use(host, port)]
        assert busy == [], f"ports still held after TERM: {busy}"

        # -- second start: same folder ---------------------------------------------------------------------
        out = srv.start()
        assert "tls_self_signed" not in out and password not in out
        assert re.findall(r"^  password: (.*)$", out, re.M) == [f"see {creds}"]  # no new credentials
        assert cert.read_bytes() == cert_pem
        assert creds.read_text() == f"user: {DEMO_USER}\npassword: {password}\n"
        (again,) = _pop3_inbox(password, cert)  # same password, same mailbox
        assert again == got
        assert srv.term() == 0
    finally:
        srv.kill()
