"""Property tests of the IMAP tokenizer (hypothesis, bounded).

Contracts:
    - CommandReader: any byte stream, cut anywhere, gives Commands / NeedContinuations or raises
      IMAPSyntaxError (nothing else), the same events however it is chunked, and the same in both builds;
      every token is one of the documented types.
    - Round trips: a random argument tree (words, quoted strings, literals of every form, nested lists)
      written on the wire comes back as it was; quote(v) tokenizes back to v; sequence sets and modified UTF-7
      survive rendering and parsing.  Compiled and pure agree throughout.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fastmail._core import variants
from tests.fuzz.fuzzing import fuzz

SETTINGS = fuzz(500)

IMAP = variants("imap")


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(stream[last:p])
        last = p
    pieces.append(stream[last:])
    return pieces


def check_token(mod, tok) -> None:
    if type(tok) is list:
        for t in tok:
            check_token(mod, t)
    elif type(tok) is mod.Literal:
        assert type(tok.data) is bytes
        assert tok.binary or b"\0" not in tok.data
    elif type(tok) is mod.FetchAtt:
        assert tok.name in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE")
        assert all(type(p) is int and p > 0 for p in tok.part)
    else:
        assert type(tok) in (str, bytes), tok
        if type(tok) is str:
            assert tok and tok.isascii() and " " not in tok


def events(mod, pieces: list[bytes], max_line: int, max_literal: int) -> list:
    """Every event as a comparable value (error: class name, tag, text)."""
    reader = mod.CommandReader(max_line, max_literal)
    out: list = []
    for piece in pieces:
        reader.feed(piece)
        while True:
            try:
                ev = reader.next()
            except mod.IMAPSyntaxError as e:
                assert e.tag is None or type(e.tag) is bytes
                out.append(("error", type(e).__name__, e.tag, e.text, getattr(e, "size", None)))
                continue
            if ev is None:
                break
            if type(ev) is mod.NeedContinuation:
                assert 0 <= ev.size <= max_literal
                out.append(("cont", ev.tag, ev.size))
            else:
                assert type(ev) is mod.Command and type(ev.tag) is bytes and ev.name == ev.name.upper()
                check_token(mod, ev.args)
                out.append(("cmd", ev.tag, ev.name, repr(ev.args)))
    return out


# Pieces that matter to the grammar, and some that never should appear.
FRAGMENTS = st.sampled_from([
    b"A1 ", b"a.2 ", b"* ", b"+ ", b"NOOP", b"FETCH ", b"UID ", b"LOGIN ", b"APPEND ", b"1:*", b"$", b"x", b"INBOX",
    b" ", b"  ", b"(", b")", b"[", b"]", b"<", b">", b"<0.5>", b".", b'"', b"\\", b'\\"', b"%", b"*", b"~",
    b"{", b"}", b"{0}", b"{1}", b"{2+}", b"~{1+}", b"{3}\r\n", b"{2+}\r\n", b"~{2}\r\n", b"{99999999999}",
    b"BODY[", b"BODY.PEEK[", b"BINARY[", b"HEADER.FIELDS (", b"1.2", b"TEXT", b"MIME", b"]<0.10>", b"\\Seen",
    b"NIL", b"DONE", b"\r\n", b"\n", b"\r", b"\x00", b"\x7f", b"\xc3\xa9", b"\xff", b"\t", b"0" * 25,
])
SOUP = st.lists(FRAGMENTS, max_size=40).map(b"".join)


@SETTINGS
@given(st.one_of(SOUP, st.binary(max_size=80)), st.lists(st.integers(0, 10_000), max_size=10),
       st.integers(0, 60), st.integers(0, 12))
def test_any_stream(stream, cuts, max_line, max_literal):
    """Commands or IMAPSyntaxError, never anything else; the same for any chunking and both builds."""
    results = []
    for mod in IMAP.values():
        whole = events(mod, [stream], max_line, max_literal)
        assert events(mod, chunked(stream, cuts), max_line, max_literal) == whole
        results.append(whole)
    assert results[0] == results[1]


# -- round trip of an argument tree -----------------------------------------------------------------------------

ATOM_CHARS = "".join(chr(c) for c in range(33, 127) if chr(c) not in '(){%*"\\]')
WORD = st.text(alphabet=ATOM_CHARS + "%*]", min_size=1, max_size=8)
FLAG = st.text(alphabet=ATOM_CHARS, min_size=1, max_size=6).map(lambda w: "\\" + w)
STRING = st.binary(max_size=12)
# How a string goes on the wire: quote()'s choice, or a literal of a given form.
FORMS = st.sampled_from(["quote", "quote-utf8", "{n}", "{n+}", "~{n}", "~{n+}"])


@st.composite
def leaves(draw):
    kind = draw(st.sampled_from(["word", "flag", "string"]))
    if kind == "word":
        return draw(WORD)
    if kind == "flag":
        return draw(FLAG)
    return (draw(STRING), draw(FORMS))


TREES = st.recursive(leaves(), lambda inner: st.lists(inner, max_size=4), max_leaves=12)
ARGS = st.lists(TREES, max_size=5)


def render(mod, node, out: list, expected: list, conts: list) -> None:
    """Append the wire form of `node` to out, the token it must come back as to `expected`, and one item to
    `conts` per synchronizing literal."""
    if type(node) is str:
        out.append(node.encode())
        expected.append(node)
    elif type(node) is list:
        out.append(b"(")
        sub: list = []
        for k, child in enumerate(node):
            if k:
                out.append(b" ")
            render(mod, child, out, sub, conts)
        out.append(b")")
        expected.append(sub)
    else:
        data, form = node
        if form.startswith("quote"):
            wire = mod.quote(data, utf8=form == "quote-utf8")
            if wire.startswith(b'"'):
                expected.append(data)
            else:
                expected.append(mod.Literal(data, wire.startswith(b"~")))
                conts.append(len(data))  # quote() writes synchronizing literals
            out.append(wire)
            return
        binary = form.startswith("~")
        if b"\0" in data and not binary:
            binary = True
            form = "~" + form
        out.append(form.replace("n", str(len(data))).encode() + b"\r\n" + data)
        expected.append(mod.Literal(data, binary))
        if "+" not in form:
            conts.append(len(data))


@SETTINGS
@given(ARGS, st.lists(st.integers(0, 10_000), max_size=6))
def test_argument_tree_round_trip(args, cuts):
    for mod in IMAP.values():
        out: list = [b"T1 X"]
        expected: list = []
        conts: list = []
        for node in args:
            out.append(b" ")
            render(mod, node, out, expected, conts)
        out.append(b"\r\n")
        stream = b"".join(out)
        reader = mod.CommandReader(len(stream), 1 << 20, 1 << 20)
        got = []
        for piece in chunked(stream, cuts):
            reader.feed(piece)
            while (ev := reader.next()) is not None:
                got.append(ev)
        assert got == [mod.NeedContinuation(b"T1", size) for size in conts] + [mod.Command(b"T1", "X", expected)]


@SETTINGS
@given(st.one_of(st.binary(max_size=1100), st.text(max_size=40)), st.booleans())
def test_quote_round_trip(value, utf8):
    results = []
    for mod in IMAP.values():
        wire = mod.quote(value, utf8=utf8)
        reader = mod.CommandReader(len(wire) + 10, 1 << 20)
        reader.feed(b"Q1 X " + wire + b"\r\n")
        ev = reader.next()
        if type(ev) is mod.NeedContinuation:
            ev = reader.next()
        (tok,) = ev.args
        data = value.encode() if isinstance(value, str) else value
        assert (tok if type(tok) is bytes else tok.data) == data
        results.append(wire)
    assert results[0] == results[1]


# -- sequence sets ---------------------------------------------------------------------------------------------------

SEQ = st.one_of(st.just(0), st.integers(1, (1 << 32) - 1))
RANGES = st.lists(st.tuples(SEQ, st.one_of(st.none(), SEQ)), min_size=1, max_size=6)


@SETTINGS
@given(RANGES)
def test_sequence_set_round_trip(ranges):
    def text(n: int) -> str:
        return "*" if n == 0 else str(n)

    wire = ",".join(text(a) if b is None else f"{text(a)}:{text(b)}" for a, b in ranges)
    expected = []
    for a, b in ranges:
        b = a if b is None else b
        if a == 0 or b == 0:
            expected.append((max(a, b), 0) if a != b else (0, 0))
        else:
            expected.append((min(a, b), max(a, b)))
    for mod in IMAP.values():
        assert mod.parse_sequence_set(wire) == expected
        assert mod.parse_sequence_set(wire.encode()) == expected


@SETTINGS
@given(st.one_of(st.text(alphabet="0123456789:,*$ -", max_size=12), st.binary(max_size=8)))
def test_sequence_set_any(text):
    results = []
    for mod in IMAP.values():
        try:
            results.append(mod.parse_sequence_set(text))
        except mod.IMAPSyntaxError:
            results.append("error")
    assert results[0] == results[1]


# -- modified UTF-7 -----------------------------------------------------------------------------------------------

@SETTINGS
@given(st.text(max_size=30))
def test_mutf7_round_trip(name):
    for mod in IMAP.values():
        wire = mod.mutf7_encode(name)
        assert wire.isascii()
        assert mod.mutf7_decode(wire) == name


@SETTINGS
@given(st.one_of(st.text(alphabet="&-+,/=ABCDOZaez019 ~\t", max_size=16).map(str.encode), st.binary(max_size=10)))
def test_mutf7_decode_strict(wire):
    """Whatever decodes is exactly what mutf7_encode writes for it; the rest raises IMAPSyntaxError."""
    results = []
    for mod in IMAP.values():
        try:
            name = mod.mutf7_decode(wire)
        except mod.IMAPSyntaxError:
            results.append("error")
            continue
        assert mod.mutf7_encode(name) == wire
        results.append(name)
    assert results[0] == results[1]
