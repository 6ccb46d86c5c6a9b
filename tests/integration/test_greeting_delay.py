"""smtp.greeting_delay (issue #7): on the SMTP listener the greeting waits; a client that talks before it
(RFC 5321 §3.1, §4.3.1: a client waits for the 220) gets 554 5.5.1 instead and is disconnected — the
"pregreet" test of Postfix's postscreen.  Submission, LMTP and trusted networks are greeted at once; a
server stopping during the wait says 421 4.3.2."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Server, make_server
from .wire import OPEN

pytestmark = pytest.mark.integration

DELAY = 2.0


def start(tmp: Path, extra: str = "") -> Server:
    srv = make_server(tmp, workers=1, extra=f"greeting_delay = {DELAY}\n{extra}")  # in [smtp]
    srv.start()
    return srv


@pytest.fixture(scope="module")
def delayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start(tmp_path_factory.mktemp("delayed"))
    yield srv
    srv.stop()
    srv.kill_tree()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    OPEN.append(s)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


def quiet_for(s: socket.socket, seconds: float) -> bool:
    """Nothing arrives within `seconds` (far less than DELAY)."""
    s.settimeout(seconds)
    try:
        return s.recv(4096) == b""  # closed without a word would be wrong too
    except TimeoutError:
        return True
    finally:
        s.settimeout(15)


def test_a_patient_client_is_greeted_after_the_delay(delayed: Server) -> None:
    s = connect(delayed.ports["smtp"])
    assert quiet_for(s, 0.3)  # still waiting
    s.settimeout(DELAY + 15)
    assert s.recv(4096).startswith(b"220 ")
    s.close()
    with smtplib.SMTP("127.0.0.1", delayed.ports["smtp"], timeout=DELAY + 15) as c:  # smtplib waits too
        c.ehlo("client.test")
        assert c.sendmail("bob@remote.test", ["alice@example.org"], b"Subject: x\r\n\r\nhi\r\n") == {}


def test_talking_before_the_greeting_is_refused(delayed: Server) -> None:
    s = connect(delayed.ports["smtp"])
    s.sendall(b"EHLO bot.test\r\nMAIL FROM:<spam@bot.test>\r\n")
    got = read_all(s)
    assert got == b"554 5.5.1 Protocol error: talked before the greeting\r\n"  # no 220, no 250: then closed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in delayed.log.read_text().splitlines() if "reason=pregreet" in line]
        if lines:
            break
        time.sleep(0.05)
    [line] = lines
    assert "event=refused" in line and 'reply="554 5.5.1"' in line and "peer=127.0.0.1" in line
    assert "EHLO bot.test" in line and "\\r\\n" in line  # what it sent, escaped


@pytest.mark.parametrize("listener", ["submission", "lmtp"])
def test_other_listeners_greet_at_once(delayed: Server, listener: str) -> None:
    s = connect(delayed.ports[listener])
    s.sendall(b"LHLO client.test\r\n" if listener == "lmtp" else b"EHLO client.test\r\n")  # pipelined early
    s.settimeout(DELAY / 2)  # well before the delay: greeted without it
    got = b""
    while b"\r\n250 " not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"220 ")


def test_trusted_networks_greet_at_once(tmp_path: Path) -> None:
    srv = start(tmp_path, 'trusted_networks = ["127.0.5.0/24"]\n')
    try:
        s = connect(srv.ports["smtp"], source="127.0.5.1")
        s.sendall(b"EHLO relay.test\r\n")
        s.settimeout(DELAY / 2)
        got = s.recv(4096)
        assert got.startswith(b"220 ")
        untrusted = connect(srv.ports["smtp"], source="127.0.6.1")
        untrusted.sendall(b"EHLO relay.test\r\n")
        assert read_all(untrusted).startswith(b"554 5.5.1")
    finally:
        srv.stop()
        srv.kill_tree()


def test_a_stop_during_the_delay_says_421(tmp_path: Path) -> None:
    srv = start(tmp_path)
    try:
        s = connect(srv.ports["smtp"])
        assert quiet_for(s, 0.2)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        try:
            assert read_all(s) == b"421 4.3.2 Service shutting down, try again later\r\n"
        finally:
            stopper.join()
        assert srv.proc is not None and srv.proc.returncode == 0
    finally:
        srv.kill_tree()
