"""POP3 (RFC 1939, 2449, 2595, 5034) against the real server with real clients: Python's poplib, raw
pipelined sockets, curl and fetchmail; the maildrop lock across workers; POP3 next to IMAP."""

from __future__ import annotations

import base64
import imaplib
import os
import poplib
import shutil
import smtplib
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Server, make_server
from .wire import HOST, OPEN, TIMEOUT, insecure_tls_context, module_server

pytestmark = pytest.mark.integration
PASSWORD = "pop-secret"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from module_server(tmp_path_factory, "pop3")


def new_user(srv: Server, count: int) -> tuple[str, list[bytes]]:
    """A fresh user with `count` messages delivered over SMTP; (address, stored raw messages)."""
    user = f"p{uuid.uuid4().hex[:10]}@example.org"
    srv.cli("user", "add", user, "--password-stdin", input=PASSWORD.encode() + b"\n")
    with smtplib.SMTP(HOST, srv.ports["smtp"], timeout=TIMEOUT) as s:
        for i in range(count):
            body = f"Subject: m{i}\r\nFrom: a@remote.test\r\n\r\nline one {i}\r\n.leading dot\r\nlast\r\n"
            s.sendmail("a@remote.test", [user], body.encode())
    return user, srv.messages(user)


def pop(srv: Server, user: str | None = None) -> poplib.POP3:
    p = poplib.POP3(HOST, srv.ports["pop3"], timeout=TIMEOUT)
    OPEN.append(p.sock)
    if user is not None:
        p.user(user)
        p.pass_(PASSWORD)
    return p


def pop_retrying(srv: Server, user: str) -> poplib.POP3:
    """Log in right after another session of the user dropped: the server may not have seen that
    connection's end yet ([IN-USE] for a moment); bounded retries."""
    for _ in range(50):
        p = pop(srv)
        p.user(user)
        try:
            p.pass_(PASSWORD)
            return p
        except poplib.error_proto as e:
            assert b"[IN-USE]" in e.args[0], e
            p.quit()
    raise AssertionError("the maildrop stayed locked after the session holding it was gone")


def retr(p: poplib.POP3, n: int) -> bytes:
    _, lines, octets = p.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


def test_every_transaction_command(srv: Server) -> None:
    user, raws = new_user(srv, 3)
    p = pop(srv)
    caps = p.capa()
    for cap in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "SASL", "STLS", "IMPLEMENTATION"):
        assert cap in caps, caps
    assert p.user(user).startswith(b"+OK")
    assert p.pass_(PASSWORD).startswith(b"+OK Logged in, 3 messages")
    assert p.stat() == (3, sum(len(r) for r in raws))
    _, listing, _ = p.list()
    assert listing == [f"{i} {len(r)}".encode() for i, r in enumerate(raws, 1)]
    assert p.list(2) == f"+OK 2 {len(raws[1])}".encode()
    for i, raw in enumerate(raws, 1):
        assert retr(p, i) == raw  # byte for byte, the leading dot un-stuffed by poplib
    _, top, _ = p.top(1, 1)
    head = raws[0].split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert top == head + [b"", b"line one 0"]
    _, uidl, _ = p.uidl()
    ids = [line.split()[1] for line in uidl]
    assert len(set(ids)) == 3 and p.uidl(3).split()[2] == ids[2]
    assert p.noop().startswith(b"+OK")
    assert p.dele(2).startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match="deleted"):
        p.retr(2)
    assert p.stat()[0] == 2
    assert p.rset().startswith(b"+OK") and p.stat()[0] == 3
    p.dele(1)
    p.dele(3)
    assert b"2 messages deleted" in p.quit()
    assert srv.messages(user) == [raws[1]]
    # The unique id of the message that stayed is the same in the next session (RFC 1939 §7).
    p = pop(srv, user)
    assert p.uidl(1).split()[2] == ids[1]
    p.quit()


def test_dropped_session_deletes_nothing(srv: Server) -> None:
    user, raws = new_user(srv, 2)
    p = pop(srv, user)
    p.dele(1)
    p.dele(2)
    p.close()  # abrupt disconnect (no QUIT): no UPDATE state
    p = pop_retrying(srv, user)  # the lock went with the connection
    assert p.stat()[0] == 2
    p.quit()
    assert srv.messages(user) == raws


def test_second_session_is_refused_in_use(srv: Server) -> None:
    user, _ = new_user(srv, 1)
    first = pop(srv, user)
    # Several tries: the kernel spreads connections over both workers, and the lock holds across them.
    for _ in range(6):
        second = pop(srv)
        second.user(user)
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_(PASSWORD)
        second.quit()
    first.quit()
    again = pop(srv, user)
    assert again.stat()[0] == 1
    again.quit()


def test_stls_and_pop3s(srv: Server) -> None:
    user, raws = new_user(srv, 1)
    p = pop(srv)
    p.stls(insecure_tls_context())
    assert "STLS" not in p.capa()
    p.user(user)
    p.pass_(PASSWORD)
    assert retr(p, 1) == raws[0]
    p.quit()
    s = poplib.POP3_SSL(HOST, srv.ports["pop3s"], context=insecure_tls_context(), timeout=TIMEOUT)
    OPEN.append(s.sock)
    assert "STLS" not in s.capa() and "USER" in s.capa()
    s.user(user)
    s.pass_(PASSWORD)
    assert s.stat()[0] == 1
    s.quit()


class Raw:
    """A raw POP3 client: send bytes, read single- and multi-line responses."""

    def __init__(self, srv: Server) -> None:
        self.sock = socket.create_connection((HOST, srv.ports["pop3"]), timeout=TIMEOUT)
        OPEN.append(self.sock)
        self.f = self.sock.makefile("rb")
        assert self.line().startswith(b"+OK")

    def line(self) -> bytes:
        return self.f.readline()

    def multi(self) -> list[bytes]:
        first = self.line()
        assert first.startswith(b"+OK"), first
        out = []
        while (line := self.line()) != b".\r\n":
            assert line, "connection closed inside a multi-line response"
            out.append(line)
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def test_pipelined_commands_in_one_packet(srv: Server) -> None:
    user, raws = new_user(srv, 2)
    c = Raw(srv)
    c.send(f"USER {user}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST\r\nRETR 1\r\nRETR 2\r\nUIDL\r\nDELE 1\r\nQUIT\r\n".encode())
    assert c.line().startswith(b"+OK")
    assert c.line().startswith(b"+OK Logged in")
    assert c.line() == f"+OK 2 {len(raws[0]) + len(raws[1])}\r\n".encode()
    assert len(c.multi()) == 2
    assert b"".join(c.multi()) == raws[0].replace(b"\r\n.", b"\r\n..")  # still stuffed on the wire
    assert b"".join(c.multi()) == raws[1].replace(b"\r\n.", b"\r\n..")
    assert len(c.multi()) == 2
    assert c.line() == b"+OK Message 1 deleted\r\n"
    assert c.line().startswith(b"+OK") and c.line() == b""
    assert srv.messages(user) == [raws[1]]


def test_auth_plain_and_login(srv: Server) -> None:
    user, _ = new_user(srv, 1)
    c = Raw(srv)
    c.send(b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{PASSWORD}".encode()) + b"\r\nSTAT\r\nQUIT\r\n")
    assert c.line().startswith(b"+OK Logged in, 1 messages")
    assert c.line().startswith(b"+OK 1 ")
    c = Raw(srv)
    c.send(b"AUTH LOGIN\r\n")
    assert c.line() == b"+ VXNlcm5hbWU6\r\n"
    c.send(base64.b64encode(user.encode()) + b"\r\n")
    assert c.line() == b"+ UGFzc3dvcmQ6\r\n"
    c.send(base64.b64encode(PASSWORD.encode()) + b"\r\n")
    assert c.line().startswith(b"+OK Logged in")
    c.send(b"QUIT\r\n")
    assert c.line().startswith(b"+OK")


def test_bad_input_gets_err_and_the_session_continues(srv: Server) -> None:
    user, raws = new_user(srv, 1)
    c = Raw(srv)
    for line, reply in [
        (b"STAT", b"-ERR Command not valid in this state"),
        (b"FOO bar", b"-ERR Unknown command"),
        (b"PASS x", b"-ERR USER first"),
        (b"A" * 5000, b"-ERR Line too long"),
        (b"\xff\x00\xfe", b"-ERR Command is not UTF-8"),
    ]:
        c.send(line + b"\r\n")
        assert c.line().startswith(reply), line
    c.send(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
    c.line()
    assert c.line().startswith(b"+OK Logged in")
    for line, reply in [
        (b"RETR 0", b"-ERR No such message 0"),
        (b"RETR 2", b"-ERR No such message 2"),
        (b"RETR one", b"-ERR Invalid message number"),
        (b"TOP 1", b"-ERR Usage: TOP message lines"),
        (b"DELE 99999999999", b"-ERR Invalid message number"),
        (b"USER other", b"-ERR Command not valid in this state"),
    ]:
        c.send(line + b"\r\n")
        assert c.line().startswith(reply), line
    c.send(b"NOOP\r\n")
    assert c.line() == b"+OK\r\n"
    c.sock.close()
    assert srv.messages(user) == raws  # nothing was touched


def test_failed_logins_are_answered_auth_and_closed(srv: Server) -> None:
    user, _ = new_user(srv, 0)
    c = Raw(srv)
    for i in range(3):
        c.send(f"USER {user}\r\nPASS wrong{i}\r\n".encode())
        assert c.line().startswith(b"+OK")
        assert c.line() == b"-ERR [AUTH] Authentication failed\r\n"
    assert c.line() == b""  # closed after the third failure


def test_imap_expunge_while_pop3_session_is_open(srv: Server) -> None:
    user, raws = new_user(srv, 3)
    p = pop(srv, user)
    assert p.stat()[0] == 3
    im = imaplib.IMAP4(HOST, srv.ports["imap"], timeout=TIMEOUT)
    OPEN.append(im.sock)
    im.login(user, PASSWORD)
    im.select("INBOX")
    im.store("1", "+FLAGS", "(\\Deleted)")
    assert im.expunge()[1] == [b"1"]
    # POP3's maildrop was listed at login: message 1 is still listed, but its bytes are gone.
    assert p.stat()[0] == 3
    with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\].*removed by another session"):
        p.retr(1)
    assert retr(p, 2) == raws[1]
    p.dele(1)  # already gone: removing it again is harmless
    p.dele(3)
    p.quit()
    im.noop()
    typ, data = im.search(None, "ALL")
    assert data == [b"1"]  # only the second message is left, and IMAP sees POP3's removal
    im.logout()
    assert srv.messages(user) == [raws[1]]


def test_curl_lists_and_retrieves(srv: Server) -> None:
    user, raws = new_user(srv, 2)
    url = f"pop3://{HOST}:{srv.ports['pop3']}/"
    auth = ["--user", f"{user}:{PASSWORD}", "--max-time", "30", "--silent", "--show-error"]
    listing = subprocess.run(["curl", *auth, url], capture_output=True, timeout=60, check=True).stdout
    assert listing == f"1 {len(raws[0])}\r\n2 {len(raws[1])}\r\n".encode()
    got = subprocess.run(["curl", *auth, url + "2"], capture_output=True, timeout=60, check=True).stdout
    assert got == raws[1]


def fetchmail(srv: Server, tmp: Path, user: str, keep: bool) -> subprocess.CompletedProcess[str]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    rc = tmp / "fetchmailrc"
    rc.write_text(
        f'poll {HOST} service {srv.ports["pop3"]} protocol POP3 auth password\n'
        f'  user "{user}" password "{PASSWORD}" {"keep" if keep else "nokeep"} fetchall\n'
        f'  sslproto "" \n'
        f'  mda "/bin/sh -c \'cat > {out}/msg.$$$$.$(date +%s%N)\'"\n'
    )
    rc.chmod(stat.S_IRUSR | stat.S_IWUSR)  # fetchmail refuses a readable rc file
    env = dict(os.environ, HOME=str(tmp), FETCHMAILHOME=str(tmp))
    return subprocess.run(["fetchmail", "--nodetach", "--nosyslog", "-f", str(rc), "--pidfile", str(tmp / "pid")],
                          capture_output=True, text=True, timeout=120, env=env)


def test_fetchmail_keep_then_delete(srv: Server, tmp_path: Path) -> None:
    if shutil.which("fetchmail") is None:
        pytest.fail("fetchmail is not installed: run the tests with `make test`, which installs it")
    user, raws = new_user(srv, 4)
    res = fetchmail(srv, tmp_path, user, keep=True)
    assert res.returncode == 0, res.stderr
    got = sorted(f.read_bytes() for f in (tmp_path / "out").iterdir())
    assert len(got) == 4 and srv.messages(user) == raws  # kept on the server
    for raw in raws:  # fetchmail adds its own Received: line on top, the message follows unchanged
        assert any(g.endswith(raw.replace(b"\r\n", b"\n")) or g.endswith(raw) for g in got), raw[:60]
    shutil.rmtree(tmp_path / "out")
    res = fetchmail(srv, tmp_path, user, keep=False)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "out").iterdir())) == 4
    assert srv.messages(user) == []
    assert sum(len(r) for r in raws) > 0


def test_autologout_removes_nothing(tmp_path: Path) -> None:
    srv = make_server(tmp_path, workers=1, extra="[pop3]\nidle_timeout = 1.0\nmax_login_failures = 2\n")
    srv.start()
    try:
        user, raws = new_user(srv, 2)
        c = Raw(srv)
        c.send(f"USER {user}\r\nPASS {PASSWORD}\r\nDELE 1\r\n".encode())
        assert c.line().startswith(b"+OK") and c.line().startswith(b"+OK Logged in") and c.line().startswith(b"+OK")
        assert c.line() == b"-ERR Autologout; idle for too long\r\n"  # read blocks until the server speaks
        assert c.line() == b""
        assert srv.messages(user) == raws
        # max_login_failures = 2 per address: the third login is refused without a password check.
        for i in range(2):
            c = Raw(srv)
            c.send(f"USER {user}\r\nPASS bad{i}\r\n".encode())
            c.line()
            assert c.line() == b"-ERR [AUTH] Authentication failed\r\n"
        c = Raw(srv)
        c.send(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        c.line()
        assert c.line().startswith(b"-ERR [SYS/TEMP] Too many failed logins")
        assert c.line() == b""
    finally:
        srv.stop()


def test_login_delay_is_advertised_and_kept_across_workers(tmp_path: Path) -> None:
    """RFC 2449 §6.5: with pop3.login_delay CAPA says LOGIN-DELAY n and a login sooner than n seconds after
    the user's last one gets -ERR [LOGIN-DELAY] — on either worker (the time lives in the maildrop lock file)."""
    srv = make_server(tmp_path, workers=2, extra="[pop3]\nlogin_delay = 60\n")
    srv.start()
    try:
        user, _ = new_user(srv, 1)
        p = pop(srv)
        assert p.capa()["LOGIN-DELAY"] == ["60"]
        p.user(user)
        p.pass_(PASSWORD)
        assert p.stat()[0] == 1
        p.quit()
        delayed = 0
        for _ in range(60):  # several connections, spread over both workers by SO_REUSEPORT
            p = pop(srv)
            p.user(user)
            try:
                p.pass_(PASSWORD)
            except poplib.error_proto as e:
                if b"[IN-USE]" in e.args[0]:  # the first session's end not seen yet: ask again
                    p.quit()
                    continue
                assert e.args[0].startswith(b"-ERR [LOGIN-DELAY]"), e
                delayed += 1
            else:
                raise AssertionError("a login within the delay was let in")
            p.quit()
            if delayed == 6:
                break
        assert delayed == 6
        [lock] = (srv.data / "locks").glob("pop3-*")
        past = time.time() - 61
        os.utime(lock, (past, past))  # the last login is now 61 s ago
        p = pop_retrying(srv, user)
        assert p.stat()[0] == 1
        p.quit()
        assert time.time() - lock.stat().st_mtime < 30  # this login was recorded
    finally:
        srv.stop()
        srv.kill_tree()
