"""The SMTP state machine's contract under arbitrary input: it never raises, every output line is a
well-formed reply, and replies come only in answer to input (no unsolicited chatter)."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmail.proto import smtp as P
from tests.fakes import FakePolicy

_REPLY = re.compile(rb"^[2-5]\d\d([ -].*)?$")

_TOKENS = [
    b"EHLO x\r\n", b"HELO x\r\n", b"LHLO x\r\n", b"MAIL FROM:<a@remote.test>\r\n", b"MAIL FROM:<>\r\n",
    b"RCPT TO:<alice@example.org>\r\n", b"RCPT TO:<x@remote.test>\r\n", b"RCPT TO:<Postmaster>\r\n",
    b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHB3\r\n", b"*\r\n",
    b"VRFY a\r\n", b"HELP\r\n", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"hello\r\n", b"\r\n", b"\n", b"\r",
    b"MAIL FROM:<a@b.test> SIZE=99999999999\r\n", b"RCPT TO:<\"q\"@example.org> NOTIFY=NEVER\r\n",
]


def _run(mode: P.Mode, chunks: list[bytes]) -> None:
    conn = P.SMTPConnection(P.Session("192.0.2.1", mode), FakePolicy(frozenset({"alice"})), "mx.test",
                            P.Limits(max_line_length=512, max_message_size=4096), tls_available=True)
    out = [conn.take_output()]
    for chunk in chunks:
        conn.receive(chunk)
        # answer whatever the machine asks, as the driver would
        for _ in range(100):
            req = conn.next_request()
            if req is None:
                break
            if isinstance(req, P.StartTLS):
                conn.tls_started()
            elif isinstance(req, P.Authenticate):
                conn.auth_done(None)
            elif isinstance(req, P.Deliver):
                assert req.envelope.rcpts
                conn.deliver_done("q")
        out.append(conn.take_output())
        if conn.closed:
            break
    text = b"".join(out)
    assert text.endswith(b"\r\n")
    for line in text.split(b"\r\n")[:-1]:
        assert _REPLY.match(line), line


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(P.Mode)), st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=64)), max_size=40))
def test_state_machine_never_raises(mode, chunks):
    _run(mode, chunks)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=30), st.data())
def test_chunking_does_not_change_replies(tokens, data):
    """The same byte stream gives the same replies however it is split into reads."""
    stream = b"EHLO x\r\n" + b"".join(tokens)

    def replies(chunks):
        conn = P.SMTPConnection(P.Session("192.0.2.1", P.Mode.SMTP), FakePolicy(frozenset({"alice"})), "mx.test",
                                P.Limits(max_line_length=512, max_message_size=4096))
        out = [conn.take_output()]
        for c in chunks:
            conn.receive(c)
            while (req := conn.next_request()) is not None:
                if isinstance(req, P.Deliver):
                    conn.deliver_done("q")
                elif isinstance(req, P.Authenticate):
                    conn.auth_done(None)
            out.append(conn.take_output())
        return b"".join(out)

    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces, last = [], 0
    for c in cuts:
        pieces.append(stream[last:c])
        last = c
    pieces.append(stream[last:])
    assert replies([stream]) == replies(pieces)
