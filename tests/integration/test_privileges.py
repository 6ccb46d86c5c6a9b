"""Started as root with server.user set: the master binds (and keeps root to rebind on HUP), the workers
open the store and TLS key, then run as that user (ARCHITECTURE §1)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import tempfile
from pathlib import Path

import pytest

from .conftest import make_server
from .wire import insecure_tls_context

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges (CI runs as root)")


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_workers_run_as_configured_user_and_serve(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="fastmail-priv-"))
    base.chmod(0o755)  # the unprivileged worker must reach its data folder
    try:
        srv = make_server(base, workers=2)
        srv.config.write_text(srv.config.read_text().replace("[server]\n", '[server]\nuser = "nobody"\n', 1))
        srv.start()
        try:
            nobody = pwd.getpwnam("nobody").pw_uid
            assert _uid(srv.proc.pid) == 0
            workers = srv.worker_pids()
            assert len(workers) == 2 and all(_uid(p) == nobody for p in workers)
            assert "workers_as_root" not in srv.log.read_text()
            assert os.stat(srv.data / "index" / "data.mdb").st_uid == nobody
            with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
                s.starttls(context=insecure_tls_context())
                s.login("alice@example.org", "alice-secret")
                s.sendmail("alice@example.org", ["bob@example.org"], b"Subject: as nobody\r\n\r\nhi\r\n")
            with smtplib.LMTP(str(srv.lmtp_sock), timeout=30) as s:
                s.sendmail("x@remote.test", ["bob@example.org"], b"Subject: via unix lmtp\r\n\r\nhi\r\n")
            bodies = srv.messages("bob@example.org")
            assert [b.split(b"Subject: ")[1].split(b"\r\n")[0] for b in bodies] == [b"as nobody", b"via unix lmtp"]
        finally:
            srv.stop()
            srv.kill_tree()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_root_without_user_warns_and_serves(tmp_path):
    """Started as root with server.user unset, the workers stay root: the embedded default and containers do
    that, so it works, but it says so in the log (and check-config says it too)."""
    srv = make_server(tmp_path, workers=1)
    res = srv.cli("check-config")
    assert f"{srv.config}: server.user: warning: running workers as root; set server.user".encode() in res.stderr
    srv.start()
    try:
        (warning,) = [line for line in srv.log.read_text().splitlines() if "event=workers_as_root" in line]
        assert "level=warning" in warning and 'reason="running workers as root; set server.user"' in warning
        assert [_uid(p) for p in srv.worker_pids()] == [0]  # the one worker (no delivery process here)
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            assert s.noop()[0] == 250
        pid = srv.proc.pid
        os.kill(pid, signal.SIGTERM)
        assert srv.proc.wait(timeout=20) == 0
    finally:
        srv.kill_tree()
