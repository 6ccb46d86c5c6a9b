"""The POP3 state machine (fastmail.proto.pop3) under random command sequences and garbage bytes.

Contracts: it never raises; every response is "+OK ...", "-ERR ..." or a SASL continuation "+ ...", and a
multi-line response (CAPA, LIST, UIDL, RETR, TOP, AUTH without a mechanism) is dot-stuffed and ends with
"." alone; a retrieved message comes back byte for byte; the maildrop stays consistent (STAT counts the
messages not marked, an Update names exactly the marked ones, nothing is removed without QUIT); nothing
is answered after the session closed; and the same input gives the same output however it is chunked.
"""

from __future__ import annotations

import base64
import re

from hypothesis import example, given
from hypothesis import strategies as st

from fastmail.proto import pop3 as P
from tests.fuzz.fuzzing import fuzz

MESSAGES = [
    b"Subject: one\r\n\r\nline 1\r\n.dot line\r\n..two dots\r\n",
    b"Subject: two\r\n\r\n.\r\n",  # a body that is one dot
    b"no header, no end of line",
    b"",
]
PASSWORD = "pw"

_PLAIN_OK = base64.b64encode(b"\0u@example.org\0" + PASSWORD.encode())
_TOKENS = [
    b"CAPA\r\n", b"USER u@example.org\r\n", b"PASS pw\r\n", b"PASS wrong\r\n", b"USER \r\n", b"APOP u x\r\n",
    b"STLS\r\n", b"AUTH\r\n", b"AUTH PLAIN\r\n", b"AUTH PLAIN " + _PLAIN_OK + b"\r\n", _PLAIN_OK + b"\r\n",
    b"AUTH LOGIN\r\n", b"AUTH LOGIN dUBleGFtcGxlLm9yZw==\r\n", b"dUBleGFtcGxlLm9yZw==\r\n", b"cHc=\r\n",
    b"AUTH CRAM-MD5\r\n", b"AUTH PLAIN =\r\n", b"*\r\n", b"=\r\n", b"STAT\r\n", b"LIST\r\n", b"LIST 1\r\n",
    b"LIST 9\r\n", b"UIDL\r\n", b"UIDL 2\r\n", b"RETR 1\r\n", b"RETR 2\r\n", b"RETR 3\r\n", b"RETR 4\r\n",
    b"RETR 0\r\n", b"RETR \xd9\xa3\r\n", b"TOP 1 0\r\n", b"TOP 1 1\r\n", b"TOP 2 5\r\n", b"TOP 1 \xc2\xb2\r\n",
    b"TOP 1\r\n", b"DELE 1\r\n", b"DELE 2\r\n", b"DELE 1\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n",
    b"quit\r\n", b"retr 1\r\n", b"RETR 99999999999\r\n", b"\r\n", b"\n", b"\r", b"x" * 1100, b"\xff\xfe\r\n",
    b"LIST -1\r\n", b"USER " + b"a" * 330 + b"\r\n", b"\x00\r\n",
]

_STATUS = re.compile(rb"^(\+OK( .*)?|-ERR .*|\+ .*)$", re.S)


class Run:
    """One session driven to the end of its input, answering every request as the real driver would."""

    def __init__(self, tls: bool, plaintext_ok: bool, tls_available: bool, entries: list[int],
                 max_errors: int = 12) -> None:
        self.conn = P.POP3Connection(P.Session("192.0.2.1", tls=tls, plaintext_ok=plaintext_ok,
                                               tls_available=tls_available),
                                     "pop.test", P.Limits(max_errors=max_errors, max_auth_failures=3))
        self.entries = entries  # the maildrop's messages (indexes into MESSAGES), by message number
        self.out = [self.conn.take_output()]
        self.updates: list[list[int]] = []
        self.closed_seen = False
        self.expected_marks: set[int] = set()

    def feed(self, chunk: bytes) -> None:
        conn = self.conn
        was_closed = conn.closed
        conn.receive(chunk)
        for _ in range(1000):
            req = conn.next_request()
            if req is None:
                break
            assert not self.closed_seen, f"request {req!r} after Close"
            if isinstance(req, P.StartTLS):
                conn.tls_started()
            elif isinstance(req, P.Login):
                if req.username == "u@example.org" and req.password == PASSWORD:
                    drop = P.Maildrop(7, [P.Entry(uid, len(MESSAGES[k])) for uid, k in
                                          enumerate(self.entries, 1)])
                    conn.login_done(drop, req.username)
                else:
                    conn.login_done(P.LoginFailed.AUTH)
            elif isinstance(req, P.Fetch):
                assert conn.maildrop is not None and 1 <= req.number <= len(self.entries)
                assert req.uid == req.number  # the maildrop numbers messages 1..n with UIDs 1..n here
                assert not conn.maildrop.entries[req.number - 1].deleted
                conn.fetched(MESSAGES[self.entries[req.number - 1]])
            elif isinstance(req, P.Update):
                drop = conn.maildrop
                assert drop is not None
                assert req.uids == [e.uid for e in drop.entries if e.deleted] and req.uids
                self.updates.append(req.uids)
                conn.update_done(True, len(req.uids))
            elif isinstance(req, P.Close):
                self.closed_seen = True
        else:
            raise AssertionError("request loop did not end")
        out = conn.take_output()
        if was_closed:
            assert out == b"", "output after the session closed"
        self.out.append(out)
        if conn.maildrop is not None:
            live = [e for e in conn.maildrop.entries if not e.deleted]
            assert conn._stat() == (len(live), sum(e.size for e in live))

    def text(self) -> bytes:
        return b"".join(self.out)


def check_output(text: bytes) -> list[bytes]:
    """Split the output into responses, checking each; the bodies of multi-line responses, in order."""
    bodies = []
    rest = text
    for _ in range(100_000):
        if not rest:
            return bodies
        line, sep, rest = rest.partition(b"\r\n")
        assert sep, f"unterminated response {line!r}"
        assert _STATUS.match(line), line
        multi = line.startswith((b"+OK Capability", b"+OK Mechanisms", b"+OK Unique", b"+OK Top of message"))
        multi = multi or (line.startswith(b"+OK ") and line.endswith(b" octets") and line.count(b" ") == 2)
        multi = multi or bool(re.fullmatch(rb"\+OK \d+ messages \(\d+ octets\)", line))
        if not multi:
            continue
        if rest.startswith(b".\r\n"):
            body, rest = b"", rest[3:]
        else:
            end = rest.find(b"\r\n.\r\n")
            assert end >= 0, f"multi-line response without its end after {line!r}"
            body, rest = rest[: end + 2], rest[end + 5:]
        for body_line in body.split(b"\r\n")[:-1]:
            assert not body_line.startswith(b".") or body_line.startswith(b".."), body_line
        bodies.append(re.sub(rb"(^|\r\n)\.", rb"\1", body))
    raise AssertionError("output too long")


def session(tls: bool, plaintext_ok: bool, tls_available: bool, entries: list[int], chunks: list[bytes]) -> Run:
    run = Run(tls, plaintext_ok, tls_available, entries)
    for chunk in chunks:
        run.feed(chunk)
    return run


_SESSION = (st.booleans(), st.booleans(), st.booleans(),
            st.lists(st.integers(0, len(MESSAGES) - 1), max_size=4))


@fuzz(400)
@given(*_SESSION, st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=40)), max_size=30))
@example(False, True, False, [0, 1], [b"USER u@example.org\r\nPASS pw\r\n", b"RETR 1\r\nTOP 2 0\r\nDELE 1\r\nQUIT\r\n"])
@example(True, False, False, [0], [b"AUTH PLAIN\r\n", _PLAIN_OK + b"\r\n", b"RETR \xd9\xa3\r\nTOP 1 \xc2\xb2\r\n"])
def test_never_raises_and_responses_are_well_formed(tls, plaintext_ok, tls_available, entries, chunks):
    run = session(tls, plaintext_ok, tls_available, entries, chunks)
    check_output(run.text())
    conn = run.conn
    assert len(run.updates) <= 1 and conn.errors <= conn.limits.max_errors
    if run.updates:
        assert conn.closed  # UPDATE only after QUIT, and the session ends there
    if conn.closed:
        assert run.closed_seen


@fuzz(300)
@given(*_SESSION, st.lists(st.sampled_from(_TOKENS), max_size=30), st.lists(st.integers(0, 10_000), max_size=10))
def test_chunking_does_not_change_the_output(tls, plaintext_ok, tls_available, entries, tokens, cuts):
    """(Without STLS on offer: what follows STLS in the same read is dropped on purpose, RFC 2595 §4.)"""
    tls_available = False
    stream = b"".join(tokens)
    whole = session(tls, plaintext_ok, tls_available, entries, [stream])
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    split = session(tls, plaintext_ok, tls_available, entries, pieces)
    assert split.text() == whole.text()
    assert split.updates == whole.updates


@fuzz(300)
@given(st.lists(st.integers(0, len(MESSAGES) - 1), min_size=1, max_size=4),
       st.lists(st.tuples(st.sampled_from(["RETR", "TOP", "DELE", "LIST", "UIDL", "RSET"]), st.integers(0, 5),
                          st.integers(0, 4)), max_size=20))
def test_retrieval_and_deletion_are_exact(entries, ops):
    """Logged in: RETR gives each message byte for byte, TOP a prefix of it, and QUIT removes exactly the
    messages marked since the last RSET."""
    run = Run(True, False, False, entries, max_errors=100)
    run.feed(b"USER u@example.org\r\nPASS pw\r\n")
    marked: set[int] = set()
    for verb, n, lines in ops:
        line = f"{verb} {n} {lines}" if verb == "TOP" else (verb if verb == "RSET" else f"{verb} {n}")
        run.out.clear()
        run.feed(line.encode() + b"\r\n")
        text = run.text()
        bodies = check_output(text)
        live = 1 <= n <= len(entries) and n not in marked
        if verb == "RSET":
            marked.clear()
        elif verb == "DELE" and live:
            marked.add(n)
        assert text.startswith(b"+OK") == (live or verb == "RSET"), (line, text)
        if verb == "RETR" and live:
            raw = MESSAGES[entries[n - 1]]
            assert bodies == [raw if raw.endswith(b"\r\n") or not raw else raw + b"\r\n"]
        if verb == "TOP" and live:
            raw = MESSAGES[entries[n - 1]]
            assert len(bodies) == 1 and (raw + b"\r\n").startswith(bodies[0])
    run.feed(b"QUIT\r\n")
    assert run.updates == ([sorted(marked)] if marked else [])
    assert run.conn.closed
