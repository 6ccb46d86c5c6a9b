"""Certificates across reloads (docs/operations.md "Certificates"): the master loads tls.cert and tls.key once
per successful start or reload and its children inherit that; a reload whose files cannot be loaded changes
nothing, and a worker that dies afterwards is replaced with the certificate that was loaded last."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import smtplib
import socket
import ssl

from fastmail.tlsfiles import ensure_self_signed

from .conftest import PASSWORDS, make_server, poll
from .wire import insecure_tls_context


def _served_cert(port: int) -> bytes:
    """The DER certificate the implicit-TLS listener on `port` presents, after a full handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with insecure_tls_context().wrap_socket(raw, server_hostname="mx.example.org") as s:
            assert s.recv(100).startswith(b"220 ")
            der = s.getpeercert(binary_form=True)
            s.sendall(b"QUIT\r\n")
    assert der
    return der


def _connect_pids(text: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"pid=(\d+) logger=\S+ event=connect ", text)}


def test_worker_replaced_after_a_failed_reload_keeps_the_loaded_certificate(tmp_path):
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    ensure_self_signed(cert, key, "mx.example.org")
    good = ssl.PEM_cert_to_DER_cert(cert.read_text())
    srv = make_server(tmp_path, workers=2, extra=f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    srv.start()
    try:
        port = srv.ports["submissions"]
        assert _served_cert(port) == good
        cert.write_text("not a certificate\n")  # a renewal gone wrong
        srv.proc.send_signal(signal.SIGHUP)
        assert poll(lambda: "event=reload_failed" in srv.log.read_text())
        (failed,) = [x for x in srv.log.read_text().splitlines() if "event=reload_failed" in x]
        assert str(cert) in failed and "kept=" in failed
        old = srv.worker_pids()
        assert len(old) == 2
        victim = old[0]
        os.kill(victim, signal.SIGKILL)

        def replacement() -> int | None:
            ready = {int(p) for p in re.findall(r"event=worker_ready kind=worker index=\d+ pid=(\d+) ",
                                                 srv.log.read_text())}
            fresh = (ready & set(srv.worker_pids())) - set(old)
            return fresh.pop() if fresh else None

        assert poll(replacement), srv.log.read_text()[-3000:]
        new = replacement()
        assert sorted(srv.worker_pids()) == sorted([old[1], new])
        # every worker, the replacement included, serves the certificate loaded before the failed reload
        for _ in range(300):
            assert _served_cert(port) == good
            if new in _connect_pids(srv.log.read_text()):
                break
        assert new in _connect_pids(srv.log.read_text())
        assert srv.proc.poll() is None and "event=boot_error" not in srv.log.read_text()
        # fixed files and a reload: the new workers load them
        ensure_self_signed(cert.with_name("new.pem"), key.with_name("new.key"), "mx.example.org")
        os.replace(cert.with_name("new.key"), key)
        os.replace(cert.with_name("new.pem"), cert)
        srv.proc.send_signal(signal.SIGHUP)
        assert poll(lambda: "event=reload_done" in srv.log.read_text())
        assert _served_cert(port) == ssl.PEM_cert_to_DER_cert(cert.read_text()) != good
        assert srv.stop() == 0
    finally:
        srv.kill_tree()


def test_hup_with_a_new_certificate_keeps_open_sessions_and_serves_the_new_one(tmp_path):
    """A renewal: new files and a HUP.  Sessions opened before it (implicit TLS and after STARTTLS, SMTP and
    IMAP) go on working with the certificate they negotiated; every new connection gets the new one."""
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    ensure_self_signed(cert, key, "mx.example.org")
    old_der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    srv = make_server(tmp_path, workers=1, extra=f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    # long enough that the old worker's sessions outlive the reload however slow the machine is
    srv.config.write_text(srv.config.read_text().replace("grace_period = 5.0", "grace_period = 120.0"))
    srv.start()
    try:
        ctx = insecure_tls_context()
        implicit = smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], timeout=15, context=ctx)
        upgraded = smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=15)
        upgraded.starttls(context=ctx)
        imap = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=ctx, timeout=15)
        imap.login("alice@example.org", PASSWORDS["alice@example.org"])
        for sock in (implicit.sock, upgraded.sock, imap.sock):
            assert sock.getpeercert(binary_form=True) == old_der

        ensure_self_signed(cert.with_name("new.pem"), key.with_name("new.key"), "mx.example.org")
        os.replace(cert.with_name("new.key"), key)
        os.replace(cert.with_name("new.pem"), cert)
        new_der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        assert new_der != old_der
        srv.proc.send_signal(signal.SIGHUP)
        assert poll(lambda: "event=reload_done" in srv.log.read_text()), srv.log.read_text()[-3000:]

        assert _served_cert(srv.ports["submissions"]) == new_der
        with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=15) as fresh:
            fresh.starttls(context=ctx)
            assert fresh.sock.getpeercert(binary_form=True) == new_der
        with imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=ctx, timeout=15) as fresh_imap:
            assert fresh_imap.sock.getpeercert(binary_form=True) == new_der

        # the sessions of before the HUP still answer, over the TLS session they had
        assert implicit.noop()[0] == 250 and upgraded.noop()[0] == 250
        assert imap.noop()[0] == "OK" and imap.select("INBOX")[0] == "OK"
        for sock in (implicit.sock, upgraded.sock, imap.sock):
            assert sock.getpeercert(binary_form=True) == old_der
        assert implicit.quit()[0] == 221 and upgraded.quit()[0] == 221
        imap.logout()
        assert srv.stop() == 0
    finally:
        srv.kill_tree()
