"""The SMTP, submission and LMTP state machine (fastmail.proto.smtp) under random command sequences and
garbage bytes, with every driver answer (TLS, AUTH accepted or refused, delivery done, failed, refused, over
quota, a proxy's XCLIENT accepted or refused) and the policy hooks.

Contracts: it never raises; every output line is a well-formed reply (a code 2xx-5xx, "-" or SP or nothing
after it) and an enhanced code, where there is one, has the reply's class; nothing is written after the
session closed; the state stays consistent (a transaction exactly in MAIL/RCPT/DATA/BDAT, an authenticated
user only in submission, a Deliver only with recipients, and in submission only once authenticated; no
relaying without authentication); an LMTP delivery is answered once per recipient; a refusal told to the
driver's hook carries a 4xx/5xx reply; the trace header of every delivered message is a single header field
whatever the client said in HELO; the same input gives the same replies however it is chunked.
"""

from __future__ import annotations

import base64
import re

from hypothesis import event, example, given
from hypothesis import strategies as st

from fastmail.proto import replies as R
from fastmail.proto import smtp as P
from tests.fakes import FakePolicy
from tests.fuzz.fuzzing import fuzz

_REPLY = re.compile(rb"^([2-5])\d\d([ -](.*))?$", re.S)
_ENHANCED = re.compile(rb"^([245])\.\d{1,3}\.\d{1,3}( |$)")

_PLAIN = b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.org\0pw") + b"\r\n"
_TOKENS = [
    b"EHLO x\r\n", b"HELO x\r\n", b"LHLO x\r\n", b"EHLO \xc3\xa9)(\\\r\n", b"HELO a\rb\r\n", b"EHLO\r\n",
    b"MAIL FROM:<a@remote.test>\r\n", b"MAIL FROM:<>\r\n", b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\n",
    b"MAIL FROM:<a@b.test> SMTPUTF8 SIZE=100\r\n", b"MAIL FROM:<a@b.test> RET=HDRS ENVID=x+2By\r\n",
    b"RCPT TO:<alice@example.org>\r\n", b"RCPT TO:<x@remote.test>\r\n", b"RCPT TO:<Postmaster>\r\n",
    b"RCPT TO:<bob@example.org>\r\n", b"RCPT TO:<alice@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b\r\n",
    b"RCPT TO:<\xc3\xa9@example.org>\r\n", b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT 0 LAST\r\n",
    b"BDAT x\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n",
    _PLAIN, b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHB3\r\n", b"AGFsaWNlQGV4YW1wbGUub3JnAHB3\r\n",
    b"YWxpY2VAZXhhbXBsZS5vcmc=\r\n", b"cHc=\r\n", b"=\r\n", b"*\r\n", b"AUTH CRAM-MD5\r\n", b"VRFY a\r\n",
    b"EXPN a\r\n", b"HELP\r\n", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"hello\r\n", b"\r\n", b"\n", b"\r",
    b"MAIL FROM:<a@b.test> SIZE=99999999999\r\n", b"RCPT TO:<\"q\"@example.org> NOTIFY=NEVER\r\n",
    b"x" * 600 + b"\r\n", b"..\r\n", b"\x00\xff\r\n",
    # XCLIENT from a configured proxy (nginx's mail proxy, Postfix's XCLIENT_README)
    b"XCLIENT ADDR=192.0.2.9 LOGIN=alice@example.org\r\n", b"XCLIENT ADDR=IPV6:2001:db8::1 NAME=[UNAVAILABLE] HELO=y\r\n",
    b"XCLIENT LOGIN=[UNAVAILABLE]\r\n", b"XCLIENT ADDR=x\r\n", b"XCLIENT FOO=1\r\n", b"XCLIENT\r\n",
    b"XCLIENT ADDR=192.0.2.9 LOGIN=mallory+40example.org\r\n", b"XCLIENT LOGIN=\xc3\xa9\r\n", b"XCLIENT HELO=[x]\r\n",
]
# MAIL and RCPT with parameters put together from pieces of their grammar (RFC 1870, 3461, 4954, 6152, 6531)
_PARAM_KEYS = [b"SIZE", b"BODY", b"RET", b"ENVID", b"AUTH", b"NOTIFY", b"ORCPT", b"SMTPUTF8", b"X-Y", b"size"]
_PARAM_VALUES = [b"", b"=", b"=0", b"=12", b"=99999999999", b"=-1", b"=\xc2\xb2", b"=\xd9\xa3", b"=\xef\xbc\x91",
                 b"=7BIT", b"=8BITMIME", b"=FULL", b"=HDRS", b"=SUCCESS,FAILURE", b"=NEVER", b"=rfc822;a+40b",
                 b"=utf-8;\xc3\xa9", b"=x+2By", b"=+", b"=<>", b"=\xc3\xa9", b"=\x00", b"=\xff"]
_PARAMS = st.lists(st.one_of(st.just(b"SMTPUTF8"),  # (it lets UTF-8 into the other values)
                             st.tuples(st.sampled_from(_PARAM_KEYS), st.sampled_from(_PARAM_VALUES)).map(b"".join)),
                   max_size=4).map(b" ".join)
_MAIL_RCPT = st.builds(lambda verb, params: verb + params + b"\r\n",
                       st.sampled_from([b"MAIL FROM:<a@remote.test> ", b"MAIL FROM:<> ", b"RCPT TO:<alice@example.org> ",
                                        b"RCPT TO:<x@remote.test> "]), _PARAMS)
TOKENS = st.lists(st.one_of(st.sampled_from(_TOKENS), _MAIL_RCPT, st.binary(max_size=64)), max_size=40)
_BODY = st.lists(st.sampled_from([b"Subject: x\r\n", b"\r\n", b"..dot\r\n", b"line\n", b"a\rb\r\n", b"x" * 70,
                                  b"\xc3\xa9\r\n", b".\r\n"]), max_size=8).map(b"".join)


@st.composite
def scripted(draw) -> list[bytes]:
    """A plausible session (hello, maybe AUTH, transactions with DATA or BDAT) with noise in between."""
    noise = st.lists(st.one_of(st.sampled_from(_TOKENS), _MAIL_RCPT, st.binary(max_size=16)), max_size=2)
    out = [draw(st.sampled_from([b"EHLO x\r\n", b"LHLO x\r\n", b"HELO x\r\n"]))]
    if draw(st.integers(0, 3)) == 0:  # a proxy's XCLIENT (refused unless the listener is a proxy's), then EHLO again
        out += [draw(st.sampled_from([t for t in _TOKENS if t.startswith(b"XCLIENT")])), out[0]]
    if draw(st.booleans()):
        out.append(draw(st.sampled_from([_PLAIN, b"AUTH LOGIN\r\nYWxpY2VAZXhhbXBsZS5vcmc=\r\ncHc=\r\n"])))
    for _ in range(draw(st.integers(1, 3))):
        mail = draw(st.sampled_from([b"MAIL FROM:<a@remote.test>", b"MAIL FROM:<alice@example.org>",
                                     b"MAIL FROM:<grey@remote.test>", b"MAIL FROM:<>"]))
        out.append(mail + (b" " + draw(_PARAMS) if draw(st.booleans()) else b"") + b"\r\n")
        out += draw(st.lists(st.sampled_from([b"RCPT TO:<alice@example.org>\r\n", b"RCPT TO:<Postmaster>\r\n",
                                              b"RCPT TO:<x@remote.test>\r\n", b"RCPT TO:<nobody@example.org>\r\n",
                                              b"RCPT TO:<alice@example.org> NOTIFY=SUCCESS\r\n"]),
                             min_size=1, max_size=5))
        out += draw(noise)
        body = draw(_BODY)
        if draw(st.booleans()):
            out += [b"DATA\r\n", body, b"\r\n.\r\n"]
        else:
            cut = draw(st.integers(0, len(body)))
            out += [b"BDAT %d\r\n" % cut + body[:cut], b"BDAT %d LAST\r\n" % (len(body) - cut) + body[cut:]]
        out += draw(noise)
    return out


MODES = st.sampled_from(list(P.Mode))
OPTIONS = st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans())


def _mail_hook(session: P.Session, sender: str | None) -> R.Reply | None:
    return R.Reply(450, "4.7.1", "greylisted") if sender and sender.startswith("grey") else None


def _rcpt_hook(session: P.Session, env: P.Envelope, rcpt: str) -> R.Reply | None:
    return R.Reply(451, "4.7.1", "rate limited") if len(env.rcpts) >= 3 else None


class Run:
    def __init__(self, mode: P.Mode, options: tuple[bool, ...]) -> None:
        tls_available, tls, auth_without_tls, hooks, trusted, proxy = options
        self.refusals: list[P.Refusal] = []
        self.conn = P.SMTPConnection(
            P.Session("192.0.2.1", mode, tls=tls, trusted=trusted), FakePolicy(frozenset({"alice", "postmaster"})),
            "mx.example.org", P.Limits(max_line_length=512, max_message_size=4096, max_recipients=5),
            tls_available=tls_available, auth_without_tls=auth_without_tls,
            mail_hook=_mail_hook if hooks else None, rcpt_hook=_rcpt_hook if hooks else None,
            refused_hook=self.refusals.append, new_qid=lambda: "0f", xclient=proxy)
        self.mode = mode
        self.out = [self.conn.take_output()]
        self.delivered: list[P.Envelope] = []
        self.xclient_users = 0  # sessions a proxy's XCLIENT LOGIN= made authenticated

    def feed(self, chunk: bytes) -> None:
        conn = self.conn
        was_closed = conn.closed
        conn.receive(chunk)
        for _ in range(200):
            req = conn.next_request()
            if req is None:
                break
            if isinstance(req, P.StartTLS):
                conn.tls_started()
            elif isinstance(req, P.Authenticate):
                assert self.mode is P.Mode.SUBMISSION
                ok = req.username == "alice@example.org" and req.password == "pw"
                conn.auth_done(req.username if ok else None, 1 if ok else None, temporary=req.password == "")
            elif isinstance(req, P.Deliver):
                self.deliver(req.envelope)
            elif isinstance(req, P.XClient):
                assert conn.xclient and self.mode is not P.Mode.LMTP
                peer = req.addr or conn.session.peer
                if req.login in (None, ""):
                    conn.xclient_done(None, None, peer, False)
                elif req.login == "alice@example.org":
                    conn.xclient_done(req.login, 1, peer, False)
                    self.xclient_users += 1
                else:
                    conn.xclient_done(None, None, peer, False, refused=R.Reply(550, "5.7.1", "unknown login"))
        else:
            raise AssertionError("request loop did not end")
        out = conn.take_output()
        if was_closed:
            assert out == b"", "output after the session closed"
        self.out.append(out)
        self.consistent()

    def deliver(self, env: P.Envelope) -> None:
        conn = self.conn
        assert env.rcpts and env is conn.envelope and conn.waiting
        if self.mode is P.Mode.SUBMISSION:
            assert conn.session.user is not None
        if conn.session.user is None and not conn.session.trusted:
            assert all(not r.external for r in env.rcpts), "relayed without authentication"
        header = P.received_header(conn.session, env, "0f", "mx.example.org", now=0)
        assert header.startswith(b"Received: ") and header.endswith(b"\r\n")
        assert all(line.startswith(b"\t") for line in header.split(b"\r\n")[1:-1]), header
        assert b"\r" not in header.replace(b"\r\n", b"") and b"\n" not in header.replace(b"\r\n", b"")
        self.delivered.append(env)
        before = len(self.out)
        self.out.append(conn.take_output())
        outcome = len(env.content) % 4  # stored, failed, refused by a check, every user over quota
        if outcome == 0:
            conn.deliver_done("0f")
        elif outcome == 1:
            conn.deliver_done("0f", failed=True)
        elif outcome == 2:
            conn.deliver_done("0f", refused=R.Reply(554, "5.7.1", "rejected"))
        else:
            conn.deliver_done("0f", over_quota=frozenset({1}))
        answer = conn.take_output()
        finals = [line for line in answer.split(b"\r\n")[:-1] if line[3:4] != b"-"]
        # the answer to the data, then whatever was pipelined behind it
        if self.mode is P.Mode.LMTP:
            assert len(finals) >= len(env.rcpts)
            assert all(line[:1] in b"245" for line in finals[: len(env.rcpts)])
        else:
            assert finals
        self.out.insert(before + 1, answer)

    def consistent(self) -> None:
        conn = self.conn
        state, env = conn.state, conn.envelope
        if state in (P.State.MAIL, P.State.RCPT, P.State.DATA):
            assert env is not None, state
        if state is P.State.GREET:
            assert env is None
        if state is P.State.RCPT and env is not None and not env.bdat:
            assert env.rcpts or env.rcpt_tried
        if env is not None:
            assert len(env.rcpts) <= conn.limits.max_recipients
        if self.mode is not P.Mode.SUBMISSION and not self.xclient_users:
            assert conn.session.user is None  # only AUTH (submission) or a proxy's XCLIENT LOGIN= sets it
        assert conn.errors <= conn.limits.max_errors
        for refusal in self.refusals:
            assert refusal.reply.code >= 400

    def text(self) -> bytes:
        return b"".join(self.out)


def check_replies(text: bytes) -> None:
    assert text.endswith(b"\r\n")
    for line in text.split(b"\r\n")[:-1]:
        m = _REPLY.match(line)
        assert m, line
        enhanced = _ENHANCED.match(m.group(3) or b"")
        if enhanced:
            assert enhanced.group(1) == m.group(1), line


def session(mode: P.Mode, options: tuple[bool, ...], chunks: list[bytes]) -> Run:
    run = Run(mode, options)
    for chunk in chunks:
        run.feed(chunk)
        if run.conn.closed:
            break
    return run


@fuzz(600)
@given(MODES, OPTIONS, st.one_of(TOKENS, scripted()))
@example(P.Mode.SMTP, (False,) * 6, [b"EHLO x\r\n", b"MAIL FROM:<a@b.test> SMTPUTF8 SIZE=\xc2\xb2\r\n"])
def test_state_machine_never_raises(mode, options, chunks):
    run = session(mode, options, chunks)
    check_replies(run.text())
    event(f"{mode.name}: {min(len(run.delivered), 3)}{'+' if len(run.delivered) >= 3 else ''} deliveries")


@fuzz(300)
@given(MODES, OPTIONS, st.one_of(st.lists(st.sampled_from(_TOKENS), max_size=30), scripted()),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_chunking_does_not_change_replies(mode, options, tokens, cuts):
    """The same byte stream gives the same replies however it is split into reads (without STARTTLS on
    offer: what follows STARTTLS in the same read is dropped on purpose, RFC 3207 §4)."""
    options = (False, *options[1:])
    stream = b"EHLO x\r\nLHLO x\r\n" + b"".join(tokens)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    whole = session(mode, options, [stream])
    split = session(mode, options, pieces)
    assert split.text() == whole.text()
    assert [e.content for e in split.delivered] == [e.content for e in whole.delivered]
