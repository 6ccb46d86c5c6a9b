"""Started as root with server.user set: the master binds (and keeps root to rebind on HUP), the workers
open the store and TLS key, then run as that user (ARCHITECTURE §1)."""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import signal
import smtplib
import tempfile
from pathlib import Path

import pytest

from .conftest import Server, free_port, make_server
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


@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty"])
def test_first_start_on_empty_data_dir_gives_everything_to_the_user(made):
    """The production first start: nothing in the data folder yet (or no folder at all), no CLI run before,
    master as root, server.user set.  Everything the master makes there (index/, segments/, the demo
    account's file, the self-signed certificate) must be the user's, or the first message gets 451 4.3.0
    (the workers cannot make a segment) until the next start."""
    base = Path(tempfile.mkdtemp(prefix="fastmail-first-"))
    base.chmod(0o755)
    try:
        ports: dict[str, int] = {}
        for name in ("smtp", "submission", "submissions", "lmtp", "imap", "imaps", "pop3", "pop3s"):
            while (port := free_port()) in ports.values():
                pass
            ports[name] = port
        srv = Server(base, ports, workers=1)
        srv.config.write_text(srv.config.read_text().replace(
            "[server]\n", '[server]\nuser = "nobody"\ndemo = true\n', 1))
        if made:
            srv.data.mkdir()
        assert not srv.data.exists() or not any(srv.data.iterdir())
        srv.start()
        try:
            password = (srv.data / "demo-credentials.txt").read_text().split("password: ")[1].strip()
            with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
                refused = s.sendmail("x@remote.test", ["demo@fastmail.test"], b"Subject: first start\r\n\r\nhi\r\n")
            assert refused == {}
            with imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30) as m:
                m.login("demo@fastmail.test", password)
                m.select("INBOX")
                typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                assert typ == "OK" and b"Subject: first start" in data[0][1]
            assert srv.stop() == 0
        finally:
            srv.kill_tree()
        nobody = pwd.getpwnam("nobody")
        wrong = []
        for root, dirs, files in os.walk(srv.data):
            for path in [root, *(os.path.join(root, n) for n in dirs + files)]:
                st = os.lstat(path)
                if (st.st_uid, st.st_gid) != (nobody.pw_uid, nobody.pw_gid):
                    wrong.append(f"{path} {st.st_uid}:{st.st_gid}")
        assert sorted(set(wrong)) == []
        assert (srv.data / "segments").is_dir() and (srv.data / "index" / "data.mdb").is_file()
        assert b"Subject: first start" in srv.messages("demo@fastmail.test")[0]
    finally:
        shutil.rmtree(base, ignore_errors=True)
