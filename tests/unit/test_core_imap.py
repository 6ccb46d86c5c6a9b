"""fastmail._core.imap: the IMAP command tokenizer (RFC 9051 §4, §9; RFC 7888; RFC 3516; RFC 5182), sequence
sets, modified UTF-7 (RFC 3501 §5.1.3) and quote().

Every corpus stream is fed whole, byte by byte, line by line and in seeded random chunks, to the compiled and
to the pure implementation; all must give the same events."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from fastmail._core import is_compiled, variants

CORPUS = json.loads((Path(__file__).parent.parent / "corpus" / "imap_commands.json").read_text())["cases"]


@pytest.fixture(params=["compiled", "pure"])
def imap(request):
    return variants("imap")[request.param]


def raw(case: dict) -> bytes:
    return case["in"].encode(case.get("enc", "utf-8"))


def token_json(mod, tok, enc: str = "utf-8"):
    """A token in the corpus' JSON form (see the corpus' "about")."""
    if type(tok) is str:
        return tok
    if type(tok) is bytes:
        return {"q": tok.decode(enc)}
    if type(tok) is list:
        return [token_json(mod, t, enc) for t in tok]
    if type(tok) is mod.Literal:
        assert type(tok.data) is bytes
        return {"lit8" if tok.binary else "lit": tok.data.decode(enc)}
    assert type(tok) is mod.FetchAtt, tok
    return {"att": tok.name, "section": tok.section, "part": list(tok.part), "text": tok.text,
            "fields": None if tok.fields is None else list(tok.fields),
            "partial": None if tok.partial is None else list(tok.partial)}


def drain(mod, reader, enc: str = "utf-8") -> list:
    """Every event now available, in the corpus' JSON form."""
    out: list = []
    while True:
        try:
            ev = reader.next()
        except mod.IMAPSyntaxError as e:
            assert isinstance(e, ValueError) and e.text
            err = {"error": type(e).__name__, "tag": None if e.tag is None else e.tag.decode(enc)}
            if isinstance(e, mod.LiteralTooBig):
                err["size"] = e.size
            out.append(err)
            continue
        if ev is None:
            return out
        if type(ev) is mod.NeedContinuation:
            out.append({"cont": [ev.tag.decode(enc), ev.size]})
        else:
            assert type(ev) is mod.Command
            out.append({"cmd": [ev.tag.decode(enc), ev.name, token_json(mod, ev.args, enc)]})


def reader_for(mod, case: dict):
    return mod.CommandReader(case.get("max_line", 1000), case.get("max_literal", 100000), case.get("max_total"))


def chunkings(stream: bytes) -> dict[str, list[bytes]]:
    out = {
        "whole": [stream],
        "bytes": [stream[i : i + 1] for i in range(len(stream))],
        "lines": stream.splitlines(keepends=True),
    }
    for seed in range(3):
        rnd = random.Random(seed)
        chunks, i = [], 0
        while i < len(stream):
            k = rnd.randint(1, 9)
            chunks.append(stream[i : i + k])
            i += k
        out[f"random{seed}"] = chunks
    return out


def run(mod, chunks: list[bytes], case: dict) -> list:
    reader = reader_for(mod, case)
    events: list = []
    for chunk in chunks:
        reader.feed(chunk)
        events += drain(mod, reader, case.get("enc", "utf-8"))
    return events


def case_id(case: dict) -> str:
    return repr(case["in"][:60])


@pytest.mark.parametrize("case", CORPUS, ids=[case_id(c) for c in CORPUS])
def test_corpus(imap, case):
    for how, chunks in chunkings(raw(case)).items():
        assert run(imap, chunks, case) == case["out"], (how, case.get("note", ""))


def test_corpus_as_one_stream(imap):
    """Every complete case with the default limits, one after the other on one connection."""
    cases = [c for c in CORPUS if not c.get("open") and not {"max_line", "max_literal", "max_total", "enc"} & set(c)]
    stream = b"".join(raw(c) for c in cases)
    expected = [ev for c in cases for ev in c["out"]]
    for seed in range(3):
        rnd = random.Random(seed)
        chunks, i = [], 0
        while i < len(stream):
            k = rnd.choice([1, 2, 3, 7, 64, 4096])
            chunks.append(stream[i : i + k])
            i += k
        assert run(imap, chunks, {}) == expected


def test_compiled_is_compiled():
    assert is_compiled(variants("imap")["compiled"])


# -- the reader ------------------------------------------------------------------------------------------------

def test_continuation_asked_once_and_literal_waits(imap):
    r = imap.CommandReader(1000, 1000)
    r.feed(b"A1 LOGIN {5}\r\n")
    assert r.next() == imap.NeedContinuation(b"A1", 5)
    assert r.next() is None
    assert r.next() is None  # asked once
    r.feed(b"ali")
    assert r.next() is None
    r.feed(b"ce {6}\r\nsec")
    assert r.next() == imap.NeedContinuation(b"A1", 6)
    assert r.next() is None
    r.feed(b"ret\r\n")
    cmd = r.next()
    assert cmd == imap.Command(b"A1", "LOGIN", [imap.Literal(b"alice"), imap.Literal(b"secret")])
    assert (cmd.tag, cmd.name) == (b"A1", "LOGIN")
    assert r.next() is None
    assert r.buffered == 0


def test_literal_data_goes_aside_unscanned(imap):
    """A large literal fed in pieces is not buffered or scanned: it goes to the literal as it comes."""
    r = imap.CommandReader(1000, 1 << 20)
    r.feed(b"A1 APPEND INBOX {300000+}\r\n")
    assert r.next() is None
    piece = b"line\r\n" * 5000
    for _ in range(10):
        r.feed(piece)
        assert r.buffered == 0
        assert r.next() is None
    r.feed(b"\r\n")
    cmd = r.next()
    assert cmd.args[1] == imap.Literal(piece * 10)
    assert not cmd.args[1].binary


def test_many_small_feeds_linear(imap):
    """A long line in 20k small pieces, then a command with 5,000 literals: each byte is looked at once."""
    r = imap.CommandReader(5_000_000, 100, max_literal_total=10_000)
    start = time.perf_counter()
    r.feed(b"A1 X")
    for _ in range(20_000):
        r.feed(b" " + b"a" * 98)
        assert r.next() is None
    r.feed(b"\r\n")
    assert len(r.next().args) == 20_000
    r.feed(b"A2 X" + b" {1+}\r\nx" * 5000 + b"\r\n")
    assert len(r.next().args) == 5000
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"{elapsed:.1f}s: quadratic rescanning?"


def test_errors_carry_tag_and_text(imap):
    r = imap.CommandReader(20, 10)
    r.feed(b"A1 APPEND X {11+}\r\n")
    with pytest.raises(imap.LiteralTooBig) as info:
        r.next()
    e = info.value
    assert isinstance(e, imap.IMAPSyntaxError) and isinstance(e, ValueError)
    assert (e.tag, e.size, e.sync, e.binary) == (b"A1", 11, False, False)
    assert "10" not in e.text  # a limit is not revealed
    r.feed(b"01234567890\r\nA2 X ~{99}\r\n")
    with pytest.raises(imap.LiteralTooBig) as info:
        r.next()
    assert (info.value.tag, info.value.size, info.value.sync, info.value.binary) == (b"A2", 99, True, True)
    r.feed(b"A3 X " + b"y" * 30 + b"\r\n")
    with pytest.raises(imap.CommandTooLong) as info2:
        r.next()
    assert info2.value.tag == b"A3" and isinstance(info2.value, imap.IMAPSyntaxError)
    r.feed(b"A4 NOOP\r\n")
    assert r.next() == imap.Command(b"A4", "NOOP", [])


def test_long_line_refused_before_its_end(imap):
    """An over-long line raises as soon as it is known to be too long, and is not kept."""
    r = imap.CommandReader(100, 10)
    r.feed(b"A1 X " + b"a" * 200)
    with pytest.raises(imap.CommandTooLong) as info:
        r.next()
    assert info.value.tag == b"A1"
    for _ in range(100):
        r.feed(b"b" * 1000)
        assert r.next() is None
        assert r.buffered <= 1032
    r.feed(b"\r\nA2 NOOP\r\n")
    assert r.next() == imap.Command(b"A2", "NOOP", [])


def test_idle_done_with_next_line(imap):
    r = imap.CommandReader(1000, 1000)
    r.feed(b"A1 IDLE\r\n")
    assert r.next() == imap.Command(b"A1", "IDLE", [])
    assert r.next_line() is None
    r.feed(b"DO")
    assert r.next_line() is None
    r.feed(b"NE\r\nA2 NOOP\r\n")
    assert r.next_line() == b"DONE"
    assert r.next() == imap.Command(b"A2", "NOOP", [])
    r.feed(b"A3 IDLE\r\ndone\n")
    assert r.next().name == "IDLE"
    assert r.next_line() == b"done"  # the caller compares without case (RFC 9051 §6.3.13)


def test_authenticate_responses_with_next_line(imap):
    r = imap.CommandReader(30, 1000)
    r.feed(b"A1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n*\r\n\r\n")
    assert r.next() == imap.Command(b"A1", "AUTHENTICATE", ["PLAIN"])
    assert r.next_line() == b"AGFsaWNlAHNlY3JldA=="
    assert r.next_line() == b"*"
    assert r.next_line() == b""
    r.feed(b"x" * 40)
    with pytest.raises(imap.CommandTooLong):
        r.next_line()
    r.feed(b"x" * 40 + b"{3+}\r\nA2 NOOP\r\n")
    assert r.next_line() == b"A2 NOOP"  # a line is a line: no literal announcement in it


def test_next_line_only_between_commands(imap):
    r = imap.CommandReader(1000, 1000)
    r.feed(b"A1 LOGIN {5}\r\n")
    assert r.next() == imap.NeedContinuation(b"A1", 5)
    with pytest.raises(RuntimeError):
        r.next_line()


def test_take_buffer_after_starttls(imap):
    """RFC 9051 §11.1: what the client sent after STARTTLS in plaintext is handed back, to be dropped."""
    r = imap.CommandReader(1000, 1000)
    r.feed(b"A1 STARTTLS\r\nA2 LOGIN x y\r\nA3 {5+}\r\n")
    assert r.next() == imap.Command(b"A1", "STARTTLS", [])
    assert r.take_buffer() == b"A2 LOGIN x y\r\nA3 {5+}\r\n"
    assert r.next() is None and r.buffered == 0
    r.feed(b"A4 NOOP\r\n")
    assert r.next() == imap.Command(b"A4", "NOOP", [])


def test_take_buffer_forgets_a_command_in_progress(imap):
    r = imap.CommandReader(1000, 1000)
    r.feed(b"A1 LOGIN {5+}\r\nal")
    assert r.next() is None
    assert r.take_buffer() == b""
    r.feed(b"A2 NOOP\r\n")
    assert r.next() == imap.Command(b"A2", "NOOP", [])


def test_token_types(imap):
    r = imap.CommandReader(1000, 1000)
    r.feed(b'A1 X atom "quoted" {3+}\r\nlit ~{2+}\r\n\x00\x01 (a ()) NIL 42\r\n')
    args = r.next().args
    assert [type(a) for a in args] == [str, bytes, imap.Literal, imap.Literal, list, str, str]
    assert args[2].binary is False and args[3].binary is True
    assert args[3] == imap.Literal(b"\x00\x01", True) != imap.Literal(b"\x00\x01")
    assert repr(args[3]) == "Literal(b'\\x00\\x01', binary=True)"


def test_fetch_att(imap):
    r = imap.CommandReader(1000, 1000)
    r.feed(b"A1 UID FETCH 1:* (UID BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.100>)\r\n")
    cmd = r.next()
    att = cmd.args[1][1]
    assert type(att) is imap.FetchAtt
    assert (att.name, att.section, att.part, att.text, att.fields, att.partial) == (
        "BODY.PEEK", "1.2.HEADER.FIELDS (From To)", (1, 2), "HEADER.FIELDS", ("From", "To"), (0, 100))
    same = imap.FetchAtt("BODY.PEEK", "1.2.HEADER.FIELDS (From To)", (1, 2), "HEADER.FIELDS", ("From", "To"),
                         (0, 100))
    assert att == same and hash(att) == hash(same) and len({att, same}) == 1
    assert "BODY.PEEK" in repr(att)


def test_fetch_att_in_fetch_only(imap):
    r = imap.CommandReader(1000, 1000)
    r.feed(b"A1 SEARCH BODY[TEXT]\r\nA2 FETCH 1 BODY[TEXT]\r\nA3 UID FETCH 1 BODY[TEXT]\r\n")
    assert r.next().args == ["BODY[TEXT]"]
    assert type(r.next().args[1]) is imap.FetchAtt
    assert type(r.next().args[1]) is imap.FetchAtt


# -- interpreting tokens ---------------------------------------------------------------------------------------

def test_number(imap):
    assert imap.number("0") == 0
    assert imap.number("007") == 7
    assert imap.number("9223372036854775807") == (1 << 63) - 1
    assert imap.number("12", nz=True) == 12
    for bad in ("9223372036854775808", "", "-1", "+1", "1.5", " 1", "\u0661", "\u00b2", b"1", ["1"], None):
        with pytest.raises(imap.IMAPSyntaxError):
            imap.number(bad)
    for bad in ("0", "01"):
        with pytest.raises(imap.IMAPSyntaxError):
            imap.number(bad, nz=True)


def test_astring_and_nstring(imap):
    assert imap.astring("INBOX") == b"INBOX"
    assert imap.astring("[Gmail]/Sent") == b"[Gmail]/Sent"
    assert imap.astring(b"a b") == b"a b"
    assert imap.astring(imap.Literal(b"x\r\ny")) == b"x\r\ny"
    assert imap.astring("a%*", wildcards=True) == b"a%*"
    for bad in ("a%", "*", "\\Seen", [], None):
        with pytest.raises(imap.IMAPSyntaxError):
            imap.astring(bad)
    assert imap.nstring("NIL") is None and imap.nstring("nil") is None
    assert imap.nstring(b"NIL") == b"NIL"
    assert imap.nstring(imap.Literal(b"")) == b""
    with pytest.raises(imap.IMAPSyntaxError):
        imap.nstring("foo")


# -- sequence sets -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "ranges"), [
    ("1", [(1, 1)]),
    ("1:3,5,7:*", [(1, 3), (5, 5), (7, 0)]),
    ("*", [(0, 0)]),
    ("*:4", [(4, 0)]),
    ("4:*", [(4, 0)]),
    ("*:*", [(0, 0)]),
    ("3:1", [(1, 3)]),
    ("4294967295", [(4294967295, 4294967295)]),
    ("2,2,1:2", [(2, 2), (2, 2), (1, 2)]),
    (b"1:2", [(1, 2)]),
])
def test_sequence_set(imap, text, ranges):
    assert imap.parse_sequence_set(text) == ranges
    assert imap.STAR == 0


def test_sequence_set_searchres(imap):
    assert imap.parse_sequence_set("$") == imap.SEARCHRES == "$"
    assert imap.parse_sequence_set(b"$") == imap.SEARCHRES


@pytest.mark.parametrize("text", [
    "", "0", "0:5", "01", "1:", ":1", "1,", ",1", "1,,2", "1:2:3", "4294967296", "1 2", "a", "1:$", "$,1", "$$",
    "-1", "+1", "1.5", "\u0661", b"\xff", "*1", "1*", "99999999999999999999",
])
def test_sequence_set_invalid(imap, text):
    with pytest.raises(imap.IMAPSyntaxError):
        imap.parse_sequence_set(text)


# -- modified UTF-7 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "wire"), [
    ("INBOX", b"INBOX"),
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
    ("&", b"&-"),
    ("Tom & Jerry", b"Tom &- Jerry"),
    ("\u00e9t\u00e9", b"&AOk-t&AOk-"),
    ("Entw\u00fcrfe", b"Entw&APw-rfe"),
    ("\U0001f600", b"&2D3eAA-"),
    ("a\tb", b"a&AAk-b"),
    ("", b""),
])
def test_mutf7(imap, name, wire):
    assert imap.mutf7_encode(name) == wire
    assert imap.mutf7_decode(wire) == name


@pytest.mark.parametrize("wire", [
    b"&U,BTFw-&ZeVnLIqe-",  # two encoded runs in a row: not how it is written
    b"&AGE-",  # "a", which represents itself
    b"&ACY-",  # "&", which is written "&-"
    b"&ZeVnLIqe",  # no "-"
    b"&AOk=-",  # padding
    b"&AOl-",  # bits left over
    b"&AO-",  # half a UTF-16 unit
    b"&2D0-",  # a lone surrogate
    b"&A-",
    b"&Jjo!-",
    b"a\tb",  # a control character as itself
    "\u00e9".encode(),  # 8-bit
    b"&AOk/-",  # "/" instead of ","
])
def test_mutf7_strict(imap, wire):
    with pytest.raises(imap.IMAPSyntaxError):
        imap.mutf7_decode(wire)


def test_mutf7_lone_surrogate_is_not_encoded(imap):
    with pytest.raises(ValueError):
        imap.mutf7_encode("\ud800")


# -- quote ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "utf8", "wire"), [
    (b"INBOX", False, b'"INBOX"'),
    ("", False, b'""'),
    (b'a"b\\c', False, b'"a\\"b\\\\c"'),
    (b"a\tb", False, b'"a\tb"'),
    ("\u00e9t\u00e9", False, b"{5}\r\n\xc3\xa9t\xc3\xa9"),
    ("\u00e9t\u00e9", True, b'"\xc3\xa9t\xc3\xa9"'),
    (b"\xff", True, b"{1}\r\n\xff"),
    (b"a\r\nb", False, b"{4}\r\na\r\nb"),
    (b"a\x00b", False, b"~{3}\r\na\x00b"),
    (b"x" * 1024, False, b'"' + b"x" * 1024 + b'"'),
    (b"x" * 1025, False, b"{1025}\r\n" + b"x" * 1025),
])
def test_quote(imap, value, utf8, wire):
    assert imap.quote(value, utf8=utf8) == wire
