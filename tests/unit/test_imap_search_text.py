"""fastmail.proto.imap_search: the ASCII fast path of BODY/TEXT (bytes lower-cased without decoding) finds an
ASCII needle exactly where the decoded, case-folded text has it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.imap import mailgen
from fastmail.proto import imap_search as S
from fastmail.proto.imap_fetch import decode_cte
from fastmail.store import mime
from fastmail.store.mailboxes import Message


def folded_reference(raw: bytes) -> bytes:
    meta = mime.analyze(raw)
    return S.body_text(raw, meta).casefold().encode("utf-8", "surrogatepass")


def ascii_runs(folded: bytes) -> list[bytes]:
    """The ASCII stretches between non-ASCII bytes, in order: two texts with the same runs contain the same
    ASCII needles (a needle cannot span a non-ASCII character; what a non-ASCII letter folds to, as long as
    it stays non-ASCII, does not matter)."""
    return re.split(rb"[\x80-\xff]+", folded)


def same_for_ascii_needles(raw: bytes) -> bool:
    return ascii_runs(S.body_text_folded(raw, mime.analyze(raw))) == ascii_runs(folded_reference(raw))


BOX = [m.data for m in mailgen.generate(300, seed=5)]  # every kind of message the IMAP bench stores


@pytest.mark.parametrize("raw", BOX, ids=range(len(BOX)))
def test_generated_mailbox_folds_the_same_both_ways(raw):
    assert same_for_ascii_needles(raw)


def _message(body: bytes, charset: str, cte: str) -> bytes:
    return (f"From: a@b.test\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + body


@pytest.mark.parametrize(("body", "charset", "cte", "needle", "found"), [
    (b"The FILE is here\r\n", "us-ascii", "7bit", "file", True),
    ("the \ufb01le (a ligature)\r\n".encode(), "utf-8", "8bit", "file", True),  # casefold: U+FB01 -> "fi"
    ("Stra\u00dfe\r\n".encode("latin-1"), "iso-8859-1", "8bit", "strasse", True),  # casefold: sharp s -> "ss"
    (b"VGhlIEZJTEUgaXMgaGVyZQ==\r\n", "utf-8", "base64", "file is", True),
    (b"the =46ILE is here\r\n", "utf-8", "quoted-printable", "file", True),
    # ISO-2022-JP is 7-bit: its ASCII bytes after ESC $ B are kanji, never the letters they look like
    (b"\x1b$BF|K\\8l\x1b(B\r\n", "iso-2022-jp", "7bit", "f|k", False),
    ("\u4669".encode("utf-16-le"), "utf-16-le", "binary", "if", False),  # its two bytes are "iF" in ASCII
])
def test_ascii_needle_edge_cases(body, charset, cte, needle, found):
    raw = _message(body, charset, cte)
    meta = mime.analyze(raw)
    folded = S.body_text_folded(raw, meta)
    assert same_for_ascii_needles(raw)
    assert (needle.encode() in folded) is found
    assert (needle in S.body_text(raw, meta).casefold()) is found


@given(st.binary(max_size=200), st.sampled_from(["utf-8", "us-ascii", "iso-8859-1", "iso-2022-jp", "utf-16",
                                                  "x-unknown", ""]),
       st.sampled_from(["7bit", "8bit", "base64", "quoted-printable"]))
@settings(max_examples=300, deadline=None)
def test_any_part_folds_the_same_both_ways(body, charset, cte):
    raw = _message(body.replace(b"\r", b"").replace(b"\n", b"\r\n"), charset or "us-ascii", cte)
    assert same_for_ascii_needles(raw)


def test_base64_decoding_ignores_line_breaks_and_stray_bytes():
    assert decode_cte(b"aGVs\r\nbG8g\r\n!d29y bGQ=\r\n", "base64") == b"hello world"
    assert decode_cte(b"aGVsbG8", "base64") == b"hel"  # a truncated last quantum is dropped


def test_the_characters_folding_to_ascii_are_all_listed():
    computed = {chr(c) for c in range(0x80, 0x110000)
                if not 0xD800 <= c < 0xE000 and any(ord(x) < 0x80 for x in chr(c).casefold())}
    assert computed == S._FOLDS_TO_ASCII


@pytest.mark.parametrize("text", ["Gr\u00fc\u00dfe", "\ufb01le", "\u212aelvin", "\u0130stanbul", "caf\u00e9 file",
                                  "\u017fs", "na\u00efve \ud55c\uad6d\uc5b4 file"])
def test_utf8_parts_with_and_without_folding_characters(text):
    raw = _message((text + "\r\n").encode(), "utf-8", "8bit")
    assert same_for_ascii_needles(raw)


@pytest.mark.parametrize("date", ["1-Jan-99999999999999999999", "1-Jan-" + "9" * 5000, "1-Jan-\u00b2"])
def test_search_date_past_any_calendar_is_a_syntax_error(date):
    """Found by tests/fuzz: a year past C's long raised OverflowError (NO [SERVERBUG]) instead of BAD."""
    with pytest.raises(S.SYNTAX):
        S.Parser(["BEFORE", date], lambda tok, uid: set()).parse()


@pytest.mark.parametrize("value", ["1 Feb 99999999999999999999 10:00 +0000", "1 Feb 1994 10:00 +99999999999999999999"])
def test_sent_date_past_any_calendar_matches_nothing(value):
    """Found by tests/fuzz: one message with such a Date: field made every SENT* search of its mailbox fail."""
    raw = f"Date: {value}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    msg = Message(1, raw, len(raw), 0, [], 1)
    pred = S.Parser(["SENTSINCE", "1-Jan-1970"], lambda tok, uid: set()).parse()
    assert pred(S.Item(msg, 1, lambda blob: raw, lambda blob: None)) is False
