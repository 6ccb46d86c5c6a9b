"""Floods against the real server (issue #8), at a test's scale (bench/flood.py runs the 10,000-connection
version and measures): about 1,000 idle connections with low connection caps — the refusals are the right
replies (421 4.7.0 / 421 4.3.2, BYE [UNAVAILABLE], -ERR [SYS/TEMP]) and other clients are still served; a
100 MiB line to SMTP, IMAP and POP3 gets each protocol's error and the session goes on; clients that pipeline
commands without reading make the server stop reading, with its memory bounded (a resource bound, not a
time bound); command floods are answered to the last command; slowloris clients (a byte every 0.3 s) and
clients that never read are timed out.

Every loop is bounded in count, every read by a socket timeout."""

from __future__ import annotations

import imaplib
import resource
import select
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from .conftest import PASSWORDS, Server, make_server, poll
from .wire import HOST, OPEN

pytestmark = pytest.mark.integration

TIMEOUT = 20.0
PER_IP = 40  # smtp/imap/pop3.max_connections_per_ip of the module's server
MAX_CONNECTIONS = 1000  # its server.max_connections (one worker)
GREETINGS = {"smtp": b"220 ", "imap": b"* OK ", "pop3": b"+OK "}
PER_IP_REFUSALS = {
    "smtp": b"421 4.7.0 Too many connections from your address, try again later\r\n",
    "imap": b"* BYE [UNAVAILABLE] Too many connections from your address\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n",
}
BUSY_REFUSALS = {
    "smtp": b"421 4.3.2 Too many connections, try again later\r\n",
    "imap": b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
}
MiB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def _descriptors() -> None:
    """This process holds ~1,200 sockets at once: the soft descriptor limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("floods"), workers=1, extra=(
        f"max_connections_per_ip = {PER_IP}\n"  # [smtp] is open in the fixture's config
        f"[imap]\nmax_connections_per_ip = {PER_IP}\n[pop3]\nmax_connections_per_ip = {PER_IP}\n"))
    s.config.write_text(s.config.read_text().replace("[server]\n", f"[server]\nmax_connections = {MAX_CONNECTIONS}\n", 1))
    s.start()
    yield s
    s.stop()
    s.kill_tree()


def connect(srv: Server, proto: str, source: str = HOST) -> tuple[socket.socket, bytes]:
    """A raw connection from SOURCE and its first line (greeting or refusal)."""
    s = socket.create_connection((HOST, srv.ports[proto]), timeout=TIMEOUT, source_address=(source, 0))
    OPEN.append(s)
    first = b""
    for _ in range(100):
        if first.endswith(b"\r\n"):
            break
        more = s.recv(4096)
        if not more:
            break
        first += more
    return s, first


def served(srv: Server, label: str) -> None:
    """Another client is served in full: a message over SMTP, then read back over IMAP."""
    subject = f"{label} {uuid.uuid4().hex}"
    body = f"Subject: {subject}\r\n\r\n{label}\r\n"
    with smtplib.SMTP(HOST, srv.ports["smtp"], timeout=TIMEOUT) as c:
        c.sendmail("probe@remote.test", ["alice@example.org"], body)
    with imaplib.IMAP4(HOST, srv.ports["imap"], timeout=TIMEOUT) as m:
        m.login("alice@example.org", PASSWORDS["alice@example.org"])
        m.select("INBOX", readonly=True)
        typ, found = m.uid("SEARCH", "SUBJECT", f'"{subject}"')
        assert typ == "OK" and len(found[0].split()) == 1, found
        typ, data = m.uid("FETCH", found[0], "(BODY.PEEK[TEXT])")
        assert typ == "OK" and data[0][1] == f"{label}\r\n".encode(), data


def close(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def server_memory_kib(srv: Server) -> int:
    """Pss of the master and its children (shared pages split between them), KiB."""
    assert srv.proc is not None
    total = 0
    for pid in [srv.proc.pid, *srv.worker_pids()]:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    return total


def quiet_memory_kib(srv: Server) -> int:
    """The server's memory at rest: the least of ten readings over one second (a password check holds
    64 MiB of argon2id memory for a moment; the worker checks a dummy hash as it starts)."""
    least = server_memory_kib(srv)
    for _ in range(9):
        time.sleep(0.1)
        least = min(least, server_memory_kib(srv))
    return least


# -- idle connections and the caps --------------------------------------------------------------------------


def test_per_ip_caps_refuse_with_the_protocols_reply(srv):
    source = "127.0.3.1"
    held = []
    for proto in ("smtp", "imap", "pop3"):
        outcomes = [connect(srv, proto, source) for _ in range(PER_IP + 5)]
        held += [s for s, _ in outcomes]
        firsts = [first for _, first in outcomes]
        assert all(f.startswith(GREETINGS[proto]) for f in firsts[:PER_IP]), proto
        assert firsts[PER_IP:] == [PER_IP_REFUSALS[proto]] * 5
    # another address, and the same protocols, are served meanwhile
    served(srv, "per-ip cap")
    assert connect(srv, "pop3", "127.0.3.2")[1].startswith(b"+OK ")
    close(held)
    # the address's connections ended: it gets in again (the count went down, bounded wait)
    assert poll(lambda: connect(srv, "smtp", source)[1].startswith(b"220 "), 30)
    assert connect(srv, "imap", source)[1].startswith(b"* OK ")


def test_a_thousand_idle_connections_then_the_worker_cap(srv):
    """MAX_CONNECTIONS idle connections from 30 addresses (under the per-address caps) are all greeted and
    held while another client is served; one more gets the worker's refusal in each protocol."""
    sources = [f"127.0.4.{i}" for i in range(1, 31)]
    protos = ("smtp", "imap", "pop3")
    held = []
    for i in range(MAX_CONNECTIONS - 10):  # room for the served() client's two connections
        s, first = connect(srv, protos[i % 3], sources[(i // 3) % len(sources)])
        assert first.startswith(GREETINGS[protos[i % 3]]), (i, first)
        held.append(s)
    served(srv, "990 idle connections")
    for i in range(10):
        s, first = connect(srv, protos[i % 3], "127.0.4.100")
        assert first.startswith(GREETINGS[protos[i % 3]]), (i, first)
        held.append(s)
    # the worker holds MAX_CONNECTIONS sessions: the next one of every protocol is refused
    for proto in protos:
        s, first = connect(srv, proto, "127.0.4.101")
        assert first == BUSY_REFUSALS[proto], first
        assert s.recv(100) == b""  # and closed
    close(held[:10])
    assert poll(lambda: connect(srv, "smtp", "127.0.4.102")[1].startswith(b"220 "), 30)
    served(srv, "after the cap")
    close(held)


# -- a 100 MiB line -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("proto", "reply", "after", "after_reply"), [
    ("smtp", b"500 5.5.2 Line too long\r\n", b"NOOP\r\n", b"250 2.0.0 OK\r\n"),
    ("imap", b"* BAD [TOOBIG] Command line too long\r\n", b"a1 NOOP\r\n", b"a1 OK"),
    ("pop3", b"-ERR Line too long\r\n", b"CAPA\r\n", b"+OK"),
])
def test_a_100_mib_line(srv, proto, reply, after, after_reply):
    before = quiet_memory_kib(srv)
    s, first = connect(srv, proto)
    assert first.startswith(GREETINGS[proto])
    chunk = b"x" * MiB
    for _ in range(100):
        s.sendall(chunk)
    grown = server_memory_kib(srv) - before  # with the whole line sent: nothing of it is kept
    s.sendall(b"\r\n")
    got = b""
    for _ in range(100):
        if got.endswith(b"\r\n"):
            break
        got += s.recv(4096)
    assert got == reply
    s.sendall(after)
    assert s.recv(4096).startswith(after_reply)  # the session goes on
    assert grown < 64 * 1024, f"the server grew by {grown} KiB"
    served(srv, f"100 MiB line to {proto}")


# -- floods of commands -------------------------------------------------------------------------------------


def _write_until_stalled(s: socket.socket, block: bytes, most: int, stall: float) -> tuple[int, str]:
    """Write BLOCK again and again without reading until MOST bytes went out ("limit"), the socket took
    nothing for STALL seconds ("stalled": the server stopped reading) or it was reset ("reset")."""
    s.setblocking(False)
    sent = 0
    for _ in range(most // len(block) + 1):
        if sent >= most:
            break
        if not select.select([], [s], [], stall)[1]:
            return sent, "stalled"
        try:
            sent += s.send(block)
        except BlockingIOError:
            pass
        except OSError:
            return sent, "reset"
    return sent, "limit"


def test_pipelining_without_reading_is_held_back(srv):
    """16 clients per protocol pipeline commands whose replies are 10-25 times larger (in 1 MiB writes) and
    never read them: the server stops reading them (every write stalls long before 64 MiB went out) and holds
    a bounded part of their replies: its memory grows by less than 64 MiB (measured: 3-10 MiB; at most one
    read of 256 KiB kept uninterpreted, 16 KiB of it answered, 64 KiB of replies buffered, per client)."""
    before = quiet_memory_kib(srv)
    socks: list[socket.socket] = []
    results: list[tuple[int, str]] = []
    for proto in ("smtp", "imap", "pop3"):
        for _ in range(16):
            s, first = connect(srv, proto)
            assert first.startswith(GREETINGS[proto])
            socks.append(s)
    threads = [threading.Thread(target=lambda s=s: results.append(
        _write_until_stalled(s, _command_of(srv, s) * (MiB // 16), 64 * MiB, 2.0))) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == len(socks) and all(how == "stalled" for _, how in results), results
    grown = server_memory_kib(srv) - before
    served(srv, "pipelining clients stalled")  # others are served while they wait
    close(socks)
    assert grown < 64 * 1024, f"the server grew by {grown} KiB with {len(socks)} clients not reading"


def dropped_while_unread(s: socket.socket, tries: int = 100) -> bool:
    """Without reading anything, poke the server every 0.2 s (at most `tries` times): True once the
    connection is reset (the server aborted it), False if it never was."""
    s.setblocking(False)
    for _ in range(tries):
        select.select([], [], [s], 0.2)
        try:
            s.send(b"N")
        except BlockingIOError:
            continue
        except OSError:
            return True
    return False


def _command_of(srv: Server, s: socket.socket) -> bytes:
    port = s.getpeername()[1]
    return {srv.ports["smtp"]: b"EHLO flood.test\r\n", srv.ports["imap"]: b"a CAPABILITY\r\n",
            srv.ports["pop3"]: b"CAPA\r\n"}[port]


@pytest.mark.parametrize(("proto", "command", "ok"), [
    ("smtp", b"NOOP\r\n", b"250 2.0.0 OK"),
    ("imap", b"a NOOP\r\n", b"a OK "),
])
def test_command_flood_answered_to_the_last(srv, proto, command, ok):
    """20,000 commands written while the replies are read: every one answered, in order."""
    n = 20_000
    s, first = connect(srv, proto)
    assert first.startswith(GREETINGS[proto])
    writer = threading.Thread(target=s.sendall, args=(command * n,))
    writer.start()
    buf = b""
    for _ in range(n):  # at least one reply per recv
        if buf.count(b"\r\n") >= n:
            break
        more = s.recv(1 << 20)
        assert more, "closed"
        buf += more
    writer.join(TIMEOUT)
    assert not writer.is_alive()
    lines = buf.split(b"\r\n")[:-1]
    assert len(lines) == n
    assert len(set(lines)) == 1 and lines[0].startswith(ok), set(lines)


# -- slow clients -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("slow"), workers=1, extra=(
        "command_timeout = 1.0\n[imap]\ncommand_timeout = 1.0\nidle_timeout = 1.0\n[pop3]\nidle_timeout = 1.0\n"))
    s.start()
    yield s
    s.stop()
    s.kill_tree()


@pytest.mark.parametrize(("proto", "last"), [
    ("smtp", b"421 4.4.2 Timeout, closing connection\r\n"),
    ("imap", b"* BYE Autologout; idle for too long\r\n"),
    ("pop3", b"-ERR Autologout; idle for too long\r\n"),
])
def test_slowloris_is_timed_out(quick, proto, last):
    """One byte every 0.3 s, never a whole line: the timeout (1 s) is not moved by it; at most 100 bytes."""
    s, first = connect(quick, proto)
    assert first.startswith(GREETINGS[proto])
    got = b""
    for _ in range(100):
        if not select.select([s], [], [], 0.3)[0]:
            s.send(b"N")  # only when nothing came for 0.3 s: never into a connection the server closed
            continue
        more = s.recv(4096)
        if not more:
            break
        got += more
    assert got == last


@pytest.mark.parametrize("proto", ["smtp", "imap", "pop3"])
def test_a_client_that_never_reads_is_dropped(quick, proto):
    """Pipelined commands, replies never read: once the server stopped reading, the timeout drops it (with
    its unread replies) instead of waiting for it to read them."""
    s, first = connect(quick, proto)
    assert first.startswith(GREETINGS[proto])
    sent, how = _write_until_stalled(s, _command_of(quick, s) * 4096, 256 * MiB, 0.5)
    assert how != "limit", sent  # the server stopped reading long before 256 MiB
    assert how == "reset" or dropped_while_unread(s)  # reset while we still wrote (the timeout is 1 s), or later


def test_a_fetch_that_is_never_read_is_dropped(quick):
    """A large FETCH waits for the client to read what went out before it goes on (back-pressure); a client
    that never reads is dropped at the timeout (1 s) instead of holding its session forever."""
    user = "alice@example.org"
    with imaplib.IMAP4(HOST, quick.ports["imap"], timeout=TIMEOUT) as m:
        m.login(user, PASSWORDS[user])
        body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 2048  # 2 MiB
        assert m.append("INBOX", None, None, body)[0] == "OK"
    s, first = connect(quick, "imap")
    assert first.startswith(b"* OK ")
    s.sendall(f"a LOGIN {user} {PASSWORDS[user]}\r\nb SELECT INBOX\r\n".encode())
    got = b""
    for _ in range(100):
        if b"b OK" in got:
            break
        got += s.recv(4096)
    s.sendall(b"c FETCH 1:* BODY.PEEK[]\r\n" * 20)  # 40 MiB of answers, none read
    assert dropped_while_unread(s)


def test_pipelined_retr_never_read_is_held_back_and_dropped(quick):
    """100 pipelined RETR of a 2 MiB message, none read: the next message is read from the store only once the
    client took the last (the server held all 200 MiB before), and the client is dropped at the timeout."""
    user = "bob@example.org"
    with imaplib.IMAP4(HOST, quick.ports["imap"], timeout=TIMEOUT) as m:
        m.login(user, PASSWORDS[user])
        assert m.append("INBOX", None, None, b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 2048)[0] == "OK"
    before = quiet_memory_kib(quick)
    s, first = connect(quick, "pop3")
    assert first.startswith(b"+OK ")
    s.sendall(f"USER {user}\r\nPASS {PASSWORDS[user]}\r\n".encode())
    got = b""
    for _ in range(100):
        if got.count(b"\r\n") >= 2:
            break
        got += s.recv(4096)
    assert got.split(b"\r\n")[1].startswith(b"+OK"), got
    s.sendall(b"RETR 1\r\n" * 100)
    grown = max(server_memory_kib(quick) - before for _ in range(5) if time.sleep(0.1) is None)
    assert dropped_while_unread(s)
    assert grown < 64 * 1024, f"the server grew by {grown} KiB"
