"""The IMAP state machine's contract under arbitrary input: it never raises (a store or parser failure
becomes a NO/BAD, never an exception out of the machine), every output line is a well-formed response
(untagged "*", continuation "+", or a tag with OK/NO/BAD) and never NO [SERVERBUG] (an exception the
machine caught: a bug whatever the client sent), literals announced in the output are complete,
and the same input gives the same responses however it is chunked."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fastmail.store import mime
from fastmail.store.store import Incoming, Store, new_qid
from tests.fuzz.fuzzing import fuzz
from tests.unit.imap_driver import PASSWORD, Driver

_TOKENS = [
    b"a CAPABILITY\r\n", b"b NOOP\r\n", f"c LOGIN u@example.org {PASSWORD}\r\n".encode(), b"d SELECT INBOX\r\n",
    b"e EXAMINE Sent\r\n", b"f FETCH 1:* (FLAGS UID ENVELOPE BODYSTRUCTURE BODY.PEEK[1.MIME] BINARY[1])\r\n",
    b"g UID FETCH 1:* (BODY[HEADER.FIELDS (Subject)]<0.5> MODSEQ) (CHANGEDSINCE 1)\r\n",
    b"h STORE 1 +FLAGS (\\Deleted \\Seen)\r\n", b"i EXPUNGE\r\n", b"j SEARCH OR SEEN (TEXT hi) NOT 2:*\r\n",
    b"k UID SEARCH RETURN (MIN COUNT SAVE) ALL\r\n", b"l COPY $ Sent\r\n", b"m MOVE 1 Trash\r\n",
    b"n CREATE a/b\r\n", b"o RENAME a x\r\n", b"p DELETE x/b\r\n", b'q LIST "" *\r\n', b"r STATUS INBOX (SIZE)\r\n",
    b"s APPEND INBOX (\\Seen) {5}\r\n", b"hello\r\n", b"t APPEND INBOX {3+}\r\nabc\r\n", b"u IDLE\r\n", b"DONE\r\n",
    b"v ENABLE QRESYNC IMAP4rev2\r\n", b"w UNSELECT\r\n", b"x CLOSE\r\n", b"y AUTHENTICATE PLAIN\r\n", b"*\r\n",
    b"z LOGOUT\r\n", b"(\r\n", b")\r\n", b"{99999999}\r\n", b"a1 FETCH 0:* FLAGS\r\n", b"\r\n", b"\n", b"\r",
    b'"unterminated\r\n', b"a2 SELECT {3}\r\n", b"\x00\xff\r\n", b"a3 GETQUOTAROOT INBOX\r\n", b"a4 ID NIL\r\n",
    b"a5 SEARCH BEFORE 1-Jan-99999999999999999999\r\n", b"a6 SEARCH SENTSINCE 1-Feb-1994 HEADER Date 1\r\n",
    b"a7 UID SEARCH CHARSET ISO-8859-1 ALL\r\n", b"a8 SEARCH MODSEQ 99999999999999999999\r\n",
    b"a9 FETCH 1 (BODY[1.2.3.4.5.6.7.8.9.10]<4294967295.4294967295>)\r\n", b"b1 STORE 1:* FLAGS.SILENT (\xc3\xa9)\r\n",
    b"b2 SELECT INBOX (QRESYNC (1 1 1:5 (1:5 1:5)))\r\n", b'b3 LIST (SPECIAL-USE) "" % RETURN (STATUS (MESSAGES))\r\n',
    b'b4 APPEND INBOX (\\Seen) "1-Jan-99999 00:00:00 +0000" {1+}\r\nx\r\n', b"b5 COPY 1:* {7+}\r\n&AGkA-x\r\n",
    b"b6 STATUS INBOX (UIDNEXT HIGHESTMODSEQ DELETED)\r\n", b"b7 FETCH 1:* BINARY.SIZE[1]\r\n",
]

# a tag is 1*ASTRING-CHAR except "+" (RFC 9051 §9): ATOM-CHAR or "]"
_LINE = re.compile(rb"^(\* .*|\+( .*)?|[!#$&'+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+ (OK|NO|BAD)( .*)?)$", re.S)
_LITERAL = re.compile(rb"~?\{(\d+)\}$")

RAW = b"From: a@example.org\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("fuzz") / "data", map_size=1 << 26)
    s.add_domain("example.org")
    yield s
    s.close()


def _user(store: Store) -> int:
    """A fresh user with three messages: every example starts from the same mailbox contents."""
    uid = store.add_user(f"f{new_qid().hex()}@example.org", "h")
    for _ in range(3):
        store.commit_batch([Incoming(qid=new_qid(), raw=RAW, sender="", local=[uid], meta=mime.analyze(RAW))])
    return uid


def _run(store: Store, chunks: list[bytes]) -> bytes:
    uid = _user(store)
    d = Driver(store, {"u@example.org": uid})
    out = [d.greeting]
    for chunk in chunks:
        out.append(d.send(chunk))
        if d.closed:
            break
    return b"".join(out)


def _check(text: bytes) -> None:
    rest = text
    for _ in range(100_000):
        if not rest:
            return
        line, sep, rest = rest.partition(b"\r\n")
        assert sep, f"unterminated output {line!r}"
        first = line
        while True:  # a response line may carry literals: their octets follow the announcing line
            m = _LITERAL.search(line)
            if m is None:
                break
            n = int(m.group(1))
            assert len(rest) >= n, "literal shorter than announced"
            tail, sep, rest = rest[n:].partition(b"\r\n")
            assert sep
            line = tail
        assert _LINE.match(first), first
        # a NO [SERVERBUG] is an exception the machine caught: a bug, whatever the client sent
        assert b"[SERVERBUG]" not in first, first


@fuzz(250)
@given(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=25), st.integers(0, 2**32 - 1))
@example(tokens=[_TOKENS[2], _TOKENS[3], b"a5 SEARCH BEFORE 1-Jan-99999999999999999999\r\n"], seed=0)
def test_never_raises_and_answers_are_well_formed(store, tokens, seed):
    data = b"".join(tokens)
    text = _run(store, [data])
    _check(text)
    # chunking does not change the answers
    rnd = random.Random(seed)
    chunks = []
    i = 0
    while i < len(data):
        k = rnd.randint(1, 40)
        chunks.append(data[i: i + k])
        i += k
    assert _normal(_run(store, chunks)) == _normal(text)


_VARYING = re.compile(rb'(UIDVALIDITY|APPENDUID|COPYUID) \d+|INTERNALDATE "[^"]*"')


def _normal(text: bytes) -> bytes:
    """The answers without what differs between two fresh users: UIDVALIDITY and the time of delivery."""
    return _VARYING.sub(lambda m: m.group(0).split(b" ")[0] + b" X", text)


@fuzz(250)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_login(store, blob):
    text = _run(store, [f"c LOGIN u@example.org {PASSWORD}\r\nd SELECT INBOX\r\n".encode(), blob, b"\r\nz NOOP\r\n"])
    _check(text)
