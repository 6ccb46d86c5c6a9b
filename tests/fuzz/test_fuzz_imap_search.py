"""IMAP SEARCH (fastmail.proto.imap_search) under random search keys and random messages.

Contracts: a search-key list, as the tokenizer gives it for any bytes, parses into a predicate or raises
IMAPSyntaxError / BadCharset (NO [BADCHARSET]), nothing else; RETURN options likewise; the predicate answers
True or False for any message (broken MIME, odd encodings, missing fields) and never raises; NOT and OR
mean what they say; and where a search is answered from the stored ENVELOPE bytes (fastmail._core.search,
both builds), the answer is the predicate's (or "unsure", then decided by the predicate).
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import event, example, given
from hypothesis import strategies as st

from fastmail._core import imap as core
from fastmail._core import variants
from fastmail.proto import imap_search as S
from fastmail.store import mime
from fastmail.store.mailboxes import Message
from tests.fuzz.fuzzing import fuzz

SEARCH = variants("search")
CORPUS = sorted((Path(__file__).resolve().parent.parent / "corpus" / "mime").glob("*.eml"))
SEEDS = [p.read_bytes() for p in CORPUS]

KEYS = [b"ALL", b"SEEN", b"UNSEEN", b"FLAGGED", b"DELETED", b"DRAFT", b"ANSWERED", b"NEW", b"OLD", b"RECENT",
        b"KEYWORD", b"UNKEYWORD", b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT", b"HEADER", b"BODY", b"TEXT",
        b"BEFORE", b"ON", b"SINCE", b"SENTBEFORE", b"SENTON", b"SENTSINCE", b"LARGER", b"SMALLER", b"NOT", b"OR",
        b"UID", b"MODSEQ", b"CHARSET", b"UTF-8", b"ISO-8859-1", b"YOUNGER", b"RETURN", b"(MIN MAX COUNT ALL SAVE)",
        b"()", b"(", b")", b"1", b"2:*", b"*", b"$", b"1,3:4", b"0", b"4294967296", b"1-Feb-1994", b"31-Dec-9999",
        b"1-Jan-99999999999999999999", b"0-Foo-2000", b"\"\"", b"\"x\"", b"\"caf\xc3\xa9\"", b"{3}\r\nabc",
        b"{2+}\r\n\xc3\xa9", b"~{1}\r\n\x00", b"hello", b"Subject", b"\"/priv/flags\" all", b"$Junk", b"\\Seen",
        b"K", b"ss", b"\xc3\x9f", b"=?", b"@", b"<"]
KEY_SOUP = st.lists(st.sampled_from(KEYS), min_size=0, max_size=10).map(lambda ks: b" ".join(ks))

# Search keys after the grammar (RFC 9051 §9 search-key), their arguments drawn from good and bad values.
def _mostly(good: list[bytes], bad: list[bytes]) -> st.SearchStrategy[bytes]:
    """A value that is usually good: one bad argument refuses the whole key list."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad))


STRINGS = _mostly([b"\"\"", b"x", b"\"caf\xc3\xa9\"", b"{3}\r\nabc", b"{2+}\r\n\xc3\xa9", b"K", b"ss", b"example",
                   b"\"J\xc3\xb6rg\"", b"\"a b\"", b"=?"], [b"NIL", b"(", b"\\x"])
DATES = _mostly([b"1-Feb-1994", b"01-feb-1994", b"31-Dec-9999", b"1-Jan-1970", b"\"1-Feb-1994\""],
                [b"1-Jan-99999999999999999999", b"0-Jan-2000", b"99-Jan-2000", b"1-Foo-2000", b"1-Jan-0", b"x",
                 b"1-Jan--1", b"1-Jan-\xc2\xb2", b"1-Jan-" + b"9" * 5000])
NUMBERS = _mostly([b"0", b"1", b"4294967295", b"99"], [b"4294967296", b"99999999999999999999", b"-1", b"x"])
SEQS = _mostly([b"1", b"2:*", b"*", b"$", b"1,3:4"], [b"0", b"4294967296", b"1:", b"x"])
SIMPLE = [b"ALL", b"SEEN", b"UNSEEN", b"FLAGGED", b"DELETED", b"UNDELETED", b"DRAFT", b"ANSWERED", b"NEW", b"OLD",
          b"RECENT", b"YOUNGER"]


def _key(inner):
    one = st.one_of(
        st.sampled_from(SIMPLE).map(lambda k: [k]),
        st.tuples(st.sampled_from([b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT", b"BODY", b"TEXT", b"KEYWORD",
                                   b"UNKEYWORD"]), STRINGS).map(list),
        st.tuples(st.just(b"HEADER"), STRINGS, STRINGS).map(list),
        st.tuples(st.sampled_from([b"BEFORE", b"ON", b"SINCE", b"SENTBEFORE", b"SENTON", b"SENTSINCE"]), DATES).map(list),
        st.tuples(st.sampled_from([b"LARGER", b"SMALLER"]), NUMBERS).map(list),
        st.tuples(st.just(b"MODSEQ"), st.sampled_from([b"", b"\"/flags/\\\\seen\" all ", b"\"/x\" bad "]), NUMBERS)
        .map(lambda t: [t[0], t[1] + t[2]]),
        SEQS.map(lambda s: [s]), st.tuples(st.just(b"UID"), SEQS).map(list),
    )
    if inner is None:
        return one
    return st.one_of(one, inner.map(lambda k: [b"NOT", *k]),
                     st.tuples(inner, inner).map(lambda ab: [b"OR", *ab[0], *ab[1]]),
                     st.lists(inner, max_size=3).map(lambda ks: [b"(" + b" ".join(b" ".join(k) for k in ks) + b")"]))


SEARCH_KEYS = st.recursive(_key(None), _key, max_leaves=8)
GRAMMAR = st.tuples(st.sampled_from([b"", b"CHARSET UTF-8 ", b"CHARSET x ", b"RETURN (MIN COUNT) ", b"RETURN () "]),
                    st.lists(SEARCH_KEYS, min_size=1, max_size=4),
                    st.lists(st.tuples(st.integers(0, 100), st.sampled_from(KEYS)), max_size=1)).map(
    lambda t: _noisy(t[0] + b" ".join(b" ".join(k) for k in t[1]), t[2]))


def _noisy(wire: bytes, noise: list) -> bytes:
    words = wire.split(b" ")
    for at, word in noise:
        words.insert(at % (len(words) + 1), word)
    return b" ".join(words)


def tokens(wire: bytes) -> list | None:
    """The arguments of "T SEARCH <wire>" as the command reader gives them, or None when it refuses them."""
    reader = core.CommandReader(1 << 16, 1 << 16)
    reader.feed(b"T SEARCH " + wire + b"\r\n")
    try:
        for _ in range(20):
            ev = reader.next()
            if ev is None:
                return None
            if type(ev) is core.Command:
                return list(ev.args)
    except core.IMAPSyntaxError:
        return None
    return None


HEADER = [b"From: ", b"To: ", b"Cc: ", b"Bcc: ", b"Subject: ", b"Date: ", b"Content-Type: ", b"a@example.org",
          b"\"Name, Jr.\" <b@example.org>", b"=?utf-8?q?J=C3=B6rg?=", b"=?utf-8?b?4oSq?=", b"=?x-unknown?q?a?=",
          b"group: c@d.example;", b"\xc3\x9f", b"\xff", b"Mon, 1 Feb 1994 10:00:00 +0000", b"31 Dec 9999 99:99",
          b"1 Feb 99999999999999999999 10:00 +0000", b"1 Feb 1994 10:00 +99999999999999999999",
          b"text/plain; charset=utf-16", b"multipart/mixed; boundary=b", b"\r\n", b"\r\n ", b"\r\n\r\n", b"--b\r\n",
          b"hello Kumquat", b"=E9", b"\n"]


@st.composite
def message(draw) -> Message:
    if draw(st.booleans()):
        raw = draw(st.sampled_from(SEEDS))
        if draw(st.booleans()):
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(st.sampled_from(HEADER)) + raw[at:]
    else:
        raw = draw(st.lists(st.sampled_from(HEADER), max_size=16).map(b"".join))
    flags = draw(st.lists(st.sampled_from(["\\Seen", "\\Flagged", "\\Deleted", "$Junk", "caf\u00e9"]), max_size=3))
    uid = draw(st.integers(1, 6))
    return Message(uid, raw, len(raw), draw(st.integers(0, 4102444800)), flags, draw(st.integers(1, 10)))


def resolve(token, as_uid: bool) -> set[int]:
    if type(token) is not str:
        raise core.IMAPSyntaxError("Invalid sequence set")
    ranges = core.parse_sequence_set(token)
    if ranges == core.SEARCHRES:
        return {2}
    assert isinstance(ranges, list)
    out = set()
    for lo, hi in ranges:
        lo, hi = lo or 6, hi or 6
        out.update(range(min(lo, hi), min(max(lo, hi), 6) + 1))
    return out


def parse(args: list):
    try:
        opts, rest = S.parse_return(args)
    except core.IMAPSyntaxError:
        return None
    assert opts is None or opts <= S.RETURN_OPTIONS
    parser = S.Parser(rest, resolve)
    try:
        return parser, parser.parse()
    except (core.IMAPSyntaxError, S.BadCharset):
        return None


def item(msg: Message) -> S.Item:
    return S.Item(msg, msg.uid, lambda blob: msg.blob, lambda blob: None)


@fuzz(600)
@given(st.one_of(KEY_SOUP, GRAMMAR), st.lists(message(), min_size=1, max_size=3))
@example(b"BEFORE 1-Jan-99999999999999999999", [Message(1, b"x", 1, 0, [], 1)])
@example(b"SENTON 1-Feb-1994", [Message(1, b"Date: 1 Feb 1994 10:00 +99999999999999999999\r\n\r\n", 1, 0, [], 1)])
def test_search_keys(wire, messages):
    args = tokens(wire)
    if args is None:
        return
    parsed = parse(args)
    event("parsed" if parsed else "refused")
    if parsed is None:
        return
    parser, pred = parsed
    for msg in messages:
        answer = pred(item(msg))
        assert type(answer) is bool
        not_answer = parse(["NOT", args])
        if not_answer is not None and args:
            assert not_answer[1](item(msg)) is (not answer)


NEEDLES = st.one_of(st.sampled_from(["", "a", "example", "J\u00f6rg", "K", "\u212a", "ss", "\u00df", "\"", "<", ",",
                                     "@example.org", "kumquat", "=?", "Name, Jr."]), st.text(max_size=4))


@fuzz(400)
@given(st.lists(st.tuples(st.sampled_from(["SUBJECT", "FROM", "TO", "CC", "BCC"]), NEEDLES), min_size=1, max_size=3),
       message())
def test_envelope_fast_path_agrees(tests, msg):
    """SUBJECT/FROM/TO/CC/BCC keys answered from the stored ENVELOPE bytes say what the predicate says."""
    args: list = []
    for key, needle in tests:
        args += [key, needle.encode("utf-8")]
    parser = S.Parser(args, resolve)
    pred = parser.parse()
    assert parser.envelope_tests is not None and len(parser.envelope_tests) == len(tests)
    meta = mime.analyze(msg.blob)
    wire = mime.wire(meta)
    expected = pred(S.Item(msg, 1, lambda blob: msg.blob, lambda blob: meta))
    out = bytearray(len(wire))  # the scratch match() documents: len(wire) bytes, no more
    for name, mod in SEARCH.items():
        decided = True
        for index, folded in parser.envelope_tests:
            got = mod.match(out, wire, index, folded.encode("utf-8", "surrogatepass"))
            assert got != mod.MALFORMED, name
            if got == mod.UNSURE:
                got = S.envelope_match(meta["envelope"], index, folded)
            decided = decided and bool(got)
        assert decided == expected, name


WIRE_PIECES = [b"(", b")", b" ", b"NIL", b'"', b'"x"', b'"a\\"b"', b"{3}\r\nabc", b"{9}\r\n", b'"=?utf-8?q?x?="',
               b'("n" NIL "a" "b")', b"(NIL NIL \"g\" NIL)", b'"\xc3\x9f"', b"\xff", b"0", b"\\", b"=?"]


@fuzz(400)
@given(st.one_of(message().map(lambda m: mime.wire(mime.analyze(m.blob))),
                 st.lists(st.sampled_from(WIRE_PIECES), max_size=30).map(b"".join)),
       st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(WIRE_PIECES)), max_size=3),
       st.sampled_from([0, 1, 2, 5, 6, 7, 9]), st.sampled_from([b"", b"a", b"ss", b"\xc3\xa9", b"x@y"]))
def test_stored_envelope_bytes_both_builds(wire, edits, index, needle):
    """Any bytes where the ENVELOPE is stored: match(), field() and envelope() return the same in both builds
    (the compiled one runs without bounds checks: the pure twin would raise where it overran)."""
    data = bytearray(wire)
    for at, piece in edits:
        at %= len(data) + 1
        data[at:at] = piece
    wire = bytes(data)
    results = []
    for mod in SEARCH.values():
        got = []
        for size in (len(wire), len(wire) // 2):
            got.append(mod.match(bytearray(size), wire, index, needle))
        for fn, arg in ((mod.field, index), (mod.envelope, None)):
            try:
                got.append(fn(wire, arg) if arg is not None else fn(wire))
            except Exception as e:  # noqa: BLE001 - compared between builds
                got.append(type(e).__name__)
        results.append(got)
    assert results[0] == results[1]
