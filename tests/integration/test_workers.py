"""Pre-forked workers with SO_REUSEPORT: both serve, a killed one is replaced on the same sockets, HUP and
TERM behave (ARCHITECTURE §1)."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import threading
import time

from fastmail.store.store import Store

from .conftest import make_server, poll


def _connect_pids(log_text: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"pid=(\d+) logger=\S+ event=connect ", log_text, re.M)}


def test_both_workers_receive_connections(server):
    workers = set(server.worker_pids())
    assert len(workers) == 2
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10) as s:
            assert s.recv(100).startswith(b"220")
            s.sendall(b"QUIT\r\n")
            s.recv(100)
        if len(_connect_pids(server.log.read_text()) & workers) == 2:
            break
    assert poll(lambda: _connect_pids(server.log.read_text()) & workers == workers)


def test_killed_worker_is_replaced_and_load_completes(tmp_path):
    srv = make_server(tmp_path, workers=2)
    srv.start()
    try:
        ok: list[str] = []
        failed: list[BaseException] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + 60

        def client(ci: int) -> None:
            n = 0
            while n < 30 and time.monotonic() < stop_at:
                msgid = f"<w-{ci}-{n}@remote.test>"
                try:
                    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=20) as s:
                        s.sendmail("x@remote.test", ["bob@example.org"], f"Message-ID: {msgid}\r\n\r\nhi\r\n".encode())
                    with lock:
                        ok.append(msgid)
                except (smtplib.SMTPException, OSError) as e:
                    with lock:
                        failed.append(e)  # only sessions on the killed worker may fail
                n += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        assert poll(lambda: len(ok) >= 40, 30)
        victim = srv.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        for t in threads:
            t.join(timeout=90)
        assert poll(lambda: len(srv.worker_pids()) == 2 and victim not in srv.worker_pids())
        assert len(ok) + len(failed) == 8 * 30
        assert len(failed) <= 8  # at most the sessions in flight on the killed worker
        # every 250 is stored
        store = Store(srv.data, map_size=1 << 30)
        try:
            uid = store.get_user("bob@example.org")["id"]
            mid = store.mailbox_id(uid, "INBOX")
            stored = {store.read_message(mid, m["uid"]).split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
                      for m in store.list_messages(mid)}
        finally:
            store.close()
        assert set(ok) <= stored
        # the replacement serves on the same sockets
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=20) as s:
            assert s.noop()[0] == 250
    finally:
        srv.stop()
        srv.kill_tree()


def test_hup_replaces_workers_and_term_stops_cleanly(tmp_path):
    srv = make_server(tmp_path, workers=2)
    srv.start()
    try:
        before = set(srv.worker_pids())
        # a session open across the reload keeps working until it finishes
        s = smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=20)
        s.ehlo("x")
        srv.proc.send_signal(signal.SIGHUP)
        assert poll(lambda: not (set(srv.worker_pids()) & before) and len(srv.worker_pids()) == 2)
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=20) as s2:
            s2.sendmail("x@remote.test", ["alice@example.org"], b"Subject: after hup\r\n\r\n.\r\n")
        try:
            s.sendmail("x@remote.test", ["alice@example.org"], b"Subject: across hup\r\n\r\nx\r\n")
            s.quit()
        except smtplib.SMTPServerDisconnected:
            pass  # an idle session may be closed by the old worker when it stops...
        except smtplib.SMTPResponseException as e:
            assert e.smtp_code == 421  # ...after telling it 421 4.3.2 (RFC 5321 §3.8)
        assert srv.stop() == 0
        assert "event=master_exit code=0" in srv.log.read_text()
    finally:
        srv.kill_tree()


def test_bad_config_stops_start_with_clear_error(tmp_path):
    srv = make_server(tmp_path, workers=1)
    srv.config.write_text(srv.config.read_text() + "max_recipients = 5\n")  # in [smtp], the last table
    res = srv.cli("check-config", check=False)
    assert res.returncode == 1
    assert re.search(rb"fastmail\.toml: smtp\.max_recipients: must be at least 100", res.stderr)
    import subprocess

    from .conftest import fastmail_cmd

    res = subprocess.run(fastmail_cmd("serve", "-c", str(srv.config)), capture_output=True, timeout=30)
    assert res.returncode == 1 and b"smtp.max_recipients" in res.stderr


def test_port_in_use_is_a_boot_error(tmp_path):
    import subprocess

    from .conftest import fastmail_cmd

    srv = make_server(tmp_path, workers=1)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", srv.ports["smtp"]))
    blocker.listen()
    try:
        res = subprocess.run(fastmail_cmd("serve", "-c", str(srv.config)), capture_output=True, timeout=30)
    finally:
        blocker.close()
    assert res.returncode == 1
    assert str(srv.ports["smtp"]).encode() in res.stderr and b"smtp" in res.stderr
