"""The outbound SMTP client (fastmail.proto.smtp_client) against a random server: replies of every code,
multi-line replies, EHLO keywords with odd parameters (PIPELINING, CHUNKING, SIZE, AUTH ...), replies
pipelined early or never, garbage bytes, cut anywhere.

Contracts: it never raises; each message it takes ends in exactly one Done, in the order the messages were
sent (or at once from send(), for a message refused before any command), with one result per recipient (a reply code 200-599, an enhanced code "c.s.d" or none); Failed comes
at most once, last, and leaves the client closed; Ready only when every message sent has its Done; what it writes is
CRLF-terminated commands (and message data after a 354 or in a BDAT); and nothing once the output
that went with the failure (its QUIT) was taken.
"""

from __future__ import annotations

import re

from hypothesis import event, example, given
from hypothesis import strategies as st

from fastmail._core import data as core_data
from fastmail.proto import smtp_client as C
from tests.fuzz.fuzzing import fuzz

CODES = [220, 221, 235, 250, 251, 252, 334, 354, 421, 450, 451, 452, 454, 500, 501, 502, 503, 504, 530,
         550, 552, 553, 554, 299, 399, 599]
KEYWORDS = [b"PIPELINING", b"CHUNKING", b"SIZE", b"SIZE 10", b"SIZE 0", b"SIZE x", b"SIZE \xc2\xb2",
            b"SIZE 99999999999999999999", b"8BITMIME", b"SMTPUTF8", b"DSN", b"STARTTLS", b"AUTH PLAIN",
            b"AUTH LOGIN", b"AUTH", b"ENHANCEDSTATUSCODES", b"", b" ", b"\xff\xfe", b"X-\x00"]
TEXTS = [b"", b"ok", b"2.0.0 ok", b"5.1.1 no such user", b"4.7.1 later", b"5.1234.1 x", b"mx.test ESMTP",
         b"me.test ESMTP", b"VXNlcm5hbWU6", b"\xc3\xa9t\xc3\xa9", b"\xff", b"5.5.5"]


@st.composite
def reply(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=30))
    code = b"%d" % draw(st.sampled_from(CODES))
    if kind == 1:  # EHLO-style: a greeting line then keywords
        lines = [draw(st.sampled_from(TEXTS))] + draw(st.lists(st.sampled_from(KEYWORDS), max_size=6))
    else:
        lines = draw(st.lists(st.sampled_from(TEXTS), min_size=1, max_size=3))
    out = [code + b"-" + text for text in lines[:-1]] + [code + (b" " + lines[-1] if lines[-1] else b"")]
    if draw(st.integers(0, 15)) == 0:  # a code that changes within the reply
        out.insert(0, b"250-x")
    return b"".join(line + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"])) for line in out)


BODIES = [b"Subject: x\r\n\r\nhi\r\n", b".\r\n.dot\r\n", b"no final newline", b"\xc3\xa9 8bit\r\n", b"x" * 40]
MESSAGES = st.builds(
    lambda sender, rcpts, body, ret, envid, eight, utf8: C.Message(
        sender, [C.Recipient(r, notify, orcpt) for r, notify, orcpt in rcpts], body, ret, envid, eight, utf8),
    st.sampled_from(["a@here.test", "", "\u00e9@here.test"]),
    st.lists(st.tuples(st.sampled_from(["b@x.test", "c@x.test", "d@y.test"]),
                       st.sampled_from([None, "SUCCESS,FAILURE", "NEVER"]),
                       st.sampled_from([None, "rfc822;b@x.test"])), min_size=1, max_size=3),
    st.sampled_from(BODIES), st.sampled_from([None, "FULL", "HDRS"]), st.sampled_from([None, "id+2B1"]),
    st.booleans(), st.booleans())

_COMMAND = re.compile(rb"^(EHLO|HELO) me\.test$|^(MAIL FROM|RCPT TO):<.*>( [A-Z0-9]+(=\S+)?)*$|^(DATA|RSET|QUIT|STARTTLS)$"
                      rb"|^AUTH (PLAIN \S+|LOGIN)$|^[A-Za-z0-9+/=]+$|^\*$|^BDAT \d+ LAST$", re.S)


class Server:
    """Drives one client: replies chunked as drawn, messages handed over whenever the client can take one."""

    def __init__(self, client: C.Client, messages: list[C.Message]) -> None:
        self.client = client
        self.waiting = list(messages)  # not yet handed to the client
        self.sent: list[C.Message] = []  # handed over, in order
        self.inflight: list[C.Message] = []  # sent, their Done still to come (in this order)
        self.done: list[C.Done] = []
        self.failed: list[C.Failed] = []
        self.ready_seen = False
        self.failed_taken = False  # the output was taken since the failure
        self.wrote = b""

    def events(self, events: list[C.Event]) -> None:
        client = self.client
        for ev in events:
            assert not self.failed, f"{ev!r} after Failed"
            if isinstance(ev, C.Done):
                assert self.inflight, "Done for a message never sent"
                self.finished(self.inflight.pop(0), ev)
            elif isinstance(ev, C.Failed):
                self.failed.append(ev)
                assert client.closed and 200 <= ev.reply.code <= 599
            elif isinstance(ev, C.Ready):
                assert len(self.done) == len(self.sent), "Ready with a transaction still open"
                self.ready_seen = True
            elif isinstance(ev, C.StartTLS):
                assert client.phase is C.Phase.TLS
                self.events(client.tls_done())
        if not client.closed and self.waiting and (client.phase is C.Phase.READY or client.can_send_next):
            msg = self.waiting.pop(0)
            self.sent.append(msg)
            refused = client.send(msg)
            if refused:  # decided before any command (SMTPUTF8, SIZE, 8BITMIME): this message's own Done
                assert len(refused) == 1 and isinstance(refused[0], C.Done) and refused[0].results[0].local
                self.finished(msg, refused[0])
                self.events([])
            else:
                self.inflight.append(msg)

    def finished(self, msg: C.Message, done: C.Done) -> None:
        self.done.append(done)
        assert len(done.results) == len(msg.rcpts), (done, msg)
        for r in done.results:
            assert 200 <= r.code <= 599, r
            assert r.enhanced == "" or re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", r.enhanced), r

    def take(self) -> None:
        out = self.client.take_output()
        if self.failed_taken:
            assert out == b"", f"{out!r} written after the failure"
        self.failed_taken = bool(self.failed)
        self.wrote += out

    def feed(self, data: bytes) -> None:
        self.events(self.client.receive(data))
        self.take()


def check_commands(wrote: bytes, messages: list[C.Message]) -> None:
    """What the client wrote reads, as a server reads it, as command lines, each message's data (dot-stuffed,
    ended by CRLF "." CRLF, after DATA) and BDAT chunks of the announced size."""
    blobs = [core_data.END_MARK]
    for msg in messages:
        body = msg.body if msg.body.endswith(b"\r\n") or not msg.body else msg.body + b"\r\n"
        blobs.append(core_data.dot_stuff(body) + core_data.END_MARK)
    pos = 0
    while pos < len(wrote):
        blob = next((b for b in blobs if wrote.startswith(b, pos)), None)
        if blob is not None:
            pos += len(blob)
            continue
        end = wrote.find(b"\r\n", pos)
        assert end >= 0, f"unterminated command {wrote[pos:pos + 80]!r}"
        line = wrote[pos:end]
        assert _COMMAND.match(line), line
        pos = end + 2
        if line.startswith(b"BDAT "):
            pos += int(line.split()[1])
    assert pos == len(wrote)


_RIGHT = {b"GREETING": b"220 mx.test ESMTP\r\n", b"EHLO": None, b"HELO": b"250 me\r\n", b"MAIL": b"250 2.1.0 ok\r\n", b"RCPT": b"250 2.1.5 ok\r\n",
          b"DATA": b"354 go on\r\n", b"RSET": b"250 ok\r\n", b"QUIT": b"221 bye\r\n", b"STARTTLS": b"220 go\r\n",
          b"AUTH": b"334 VXNlcm5hbWU6\r\n", b"BDAT": b"250 2.0.0 queued\r\n", b"END": b"250 2.0.0 queued\r\n",
          b"B64": b"334 UGFzc3dvcmQ6\r\n"}


def pending_commands(wrote: bytes, messages: list[C.Message]) -> list[bytes]:
    """The verbs of what the client wrote, in order ("END" for a message's data, "B64" for an AUTH line)."""
    blobs = [core_data.END_MARK]
    for msg in messages:
        body = msg.body if msg.body.endswith(b"\r\n") or not msg.body else msg.body + b"\r\n"
        blobs.append(core_data.dot_stuff(body) + core_data.END_MARK)
    verbs, pos = [], 0
    while pos < len(wrote):
        blob = next((b for b in blobs if wrote.startswith(b, pos)), None)
        if blob is not None:
            pos += len(blob)
            verbs.append(b"END")
            continue
        end = wrote.find(b"\r\n", pos)
        line = wrote[pos:end]
        pos = end + 2
        verb = line.split(b" ")[0].split(b":")[0]
        verbs.append(verb if verb in _RIGHT else b"B64")
        if verb == b"BDAT":
            pos += int(line.split()[1])
    return verbs


def end_session(server: Server, lost: bool = False) -> None:
    """The driver's end: QUIT when the session is idle (the transaction's replies are in), else the connection
    goes (a timeout): whatever is open ends then."""
    if lost or server.client.phase is not C.Phase.READY:
        server.events(server.client.connection_lost())
    else:
        server.client.quit()
    server.take()


@st.composite
def answer(draw, verb: bytes) -> bytes:
    """The reply a server gives to `verb`: mostly the expected one, else anything."""
    if draw(st.integers(0, 11)):
        if verb == b"EHLO":
            keywords = draw(st.lists(st.sampled_from(KEYWORDS), max_size=7))
            return b"".join(b"250-" + k + b"\r\n" for k in [b"mx.test", *keywords]) + b"250 HELP\r\n"
        if verb == b"AUTH" and draw(st.booleans()):
            return b"235 2.7.0 ok\r\n"
        return _RIGHT[verb] if verb in _RIGHT else b"250 ok\r\n"
    return draw(reply())


@fuzz(300)
@given(st.sampled_from([(True, False, None, True), (False, False, None, True), (True, True, None, False),
                        (True, False, ("user", "pw"), True), (False, False, None, False)]),
       st.lists(MESSAGES, min_size=1, max_size=3), st.data())
def test_a_server_that_answers(options, messages, data):
    """The server answers each command, mostly as expected, sometimes not (a refusal, garbage, a reply too
    many), its replies cut anywhere; the same contracts."""
    tls, require_tls, auth, chunking = options
    client = C.Client("me.test", tls=tls, require_tls=require_tls, auth=auth, chunking=chunking)
    server = Server(client, messages)
    answered = 0
    backlog = data.draw(answer(b"GREETING"), label="greeting")
    for _ in range(40):
        verbs = pending_commands(server.wrote, server.sent)
        for verb in verbs[answered:]:
            backlog += data.draw(answer(verb), label=verb.decode())
        answered = len(verbs)
        if not backlog or client.closed:
            break
        cut = data.draw(st.integers(0, len(backlog)))
        chunk, backlog = (backlog[:cut], backlog[cut:]) if cut else (backlog, b"")
        server.feed(chunk)
    end_session(server)
    if client.closed:
        assert len(server.done) == len(server.sent), "a message without its Done"
    assert len(server.failed) <= 1
    check_commands(server.wrote, server.sent)
    event(f"ended in {client.phase.name}, {len(server.done)} of {len(messages)} messages done")


@fuzz(500)
@given(st.sampled_from([(True, False, None, True), (False, False, None, True), (True, True, None, False),
                        (True, False, ("user", "pw"), True)]),
       st.lists(MESSAGES, min_size=1, max_size=3),
       st.lists(reply(), max_size=14), st.lists(st.integers(0, 400), max_size=6), st.booleans())
@example((True, False, None, True), [C.Message("a@here.test", [C.Recipient("b@x.test")], b"x")],
         [b"220 mx.test\r\n", b"250-mx.test\r\n250-SIZE \xc2\xb2\r\n250 PIPELINING\r\n", b"250 ok\r\n" * 3],
         [], False)
def test_any_server_never_breaks_the_client(options, messages, replies, cuts, lost):
    tls, require_tls, auth, chunking = options
    client = C.Client("me.test", tls=tls, require_tls=require_tls, auth=auth, chunking=chunking)
    server = Server(client, messages)
    stream = b"".join(replies)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        server.feed(stream[a:b])
        assert client.timeout > 0
    end_session(server, lost)
    # every message handed over got its Done unless the session is still open (no more replies came)
    if client.closed:
        assert len(server.done) == len(server.sent), "a message without its Done"
    assert len(server.failed) <= 1
    check_commands(server.wrote, server.sent)
    event(f"ended in {client.phase.name}, {len(server.done)} of {len(server.sent)} messages done")
