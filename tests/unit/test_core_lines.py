"""fastmail._core.lines: command-line framing with a length limit (RFC 5321 §2.3.8, §4.5.3.1.4)."""

from __future__ import annotations

import random
import time

import pytest

from fastmail._core import is_compiled, variants


@pytest.fixture(params=["compiled", "pure"])
def lines(request):
    return variants("lines")[request.param]


def drain(reader, lines_mod) -> list:
    """Every line now available; an over-long line shows up as the string "TOO LONG"."""
    out: list = []
    while True:
        try:
            line = reader.readline()
        except lines_mod.LineTooLong:
            out.append("TOO LONG")
            continue
        if line is None:
            return out
        out.append(line)


def test_compiled_is_compiled():
    assert is_compiled(variants("lines")["compiled"])


def test_crlf_and_bare_lf(lines):
    r = lines.LineReader(100)
    r.feed(b"EHLO a\r\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\r\n")
    assert drain(r, lines) == [b"EHLO a", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>"]
    assert r.readline() is None
    assert r.buffered == 0


def test_empty_lines_and_stray_cr(lines):
    r = lines.LineReader(100)
    r.feed(b"\r\n\n\r\r\na\rb\r\n")
    assert drain(r, lines) == [b"", b"", b"\r", b"a\rb"]


def test_partial_line_across_feeds(lines):
    r = lines.LineReader(100)
    r.feed(b"NO")
    assert r.readline() is None
    assert r.buffered == 2
    r.feed(b"OP\r")
    assert r.readline() is None
    r.feed(b"\nQU")
    assert r.readline() == b"NOOP"
    assert r.readline() is None
    r.feed(b"IT\r\n")
    assert r.readline() == b"QUIT"
    assert r.buffered == 0


def test_take_buffer(lines):
    r = lines.LineReader(100)
    r.feed(b"DATA\r\nSubject: x\r\n\r\nbody")
    assert r.readline() == b"DATA"
    assert r.buffered == len(b"Subject: x\r\n\r\nbody")
    assert r.take_buffer() == b"Subject: x\r\n\r\nbody"
    assert r.buffered == 0
    assert r.take_buffer() == b""
    r.feed(b"QUIT\r\n")
    assert r.readline() == b"QUIT"


def test_take_buffer_after_accumulating(lines):
    r = lines.LineReader(100)
    r.feed(b"BDAT 5\r\nab")
    assert r.readline() == b"BDAT 5"
    r.feed(b"cde")  # joins the leftover (accumulating buffer)
    assert r.take_buffer() == b"abcde"


def test_max_length_boundaries(lines):
    r = lines.LineReader(10)
    r.feed(b"x" * 10 + b"\r\n" + b"y" * 10 + b"\n")
    assert drain(r, lines) == [b"x" * 10, b"y" * 10]
    r.feed(b"z" * 11 + b"\r\nok\r\n")
    assert drain(r, lines) == ["TOO LONG", b"ok"]


def test_partial_long_line_raises_before_its_lf(lines):
    r = lines.LineReader(10)
    r.feed(b"x" * 10 + b"\r")  # 10 bytes + the CR of a CRLF: still fine
    assert r.readline() is None
    r.feed(b"x")  # now 12 bytes and no LF: too long
    with pytest.raises(lines.LineTooLong):
        r.readline()
    assert r.buffered == 0
    for _ in range(1000):  # the rest is dropped as it arrives, without a second error
        r.feed(b"x" * 1000)
        assert r.readline() is None
        assert r.buffered == 0
    r.feed(b"xxx\r\nNOOP\r\n")
    assert drain(r, lines) == [b"NOOP"]


def test_partial_long_line_after_complete_lines(lines):
    r = lines.LineReader(5)
    r.feed(b"a\r\nb\r\n" + b"c" * 20)
    assert drain(r, lines) == [b"a", b"b", "TOO LONG"]
    r.feed(b"c\nd\r\n")
    assert drain(r, lines) == [b"d"]


def test_long_line_ending_in_cr_cr(lines):
    r = lines.LineReader(3)
    r.feed(b"abc\r\r\n")  # content "abc\r": 4 bytes
    assert drain(r, lines) == ["TOO LONG"]


def test_take_buffer_ends_discarding(lines):
    r = lines.LineReader(4)
    r.feed(b"toolong")
    assert drain(r, lines) == ["TOO LONG"]
    assert r.take_buffer() == b""
    r.feed(b"abc\r\n")
    assert drain(r, lines) == [b"abc"]


def test_many_small_feeds_linear(lines):
    """One long (allowed) line in 100k small pieces: each byte is scanned once, so this is quick."""
    r = lines.LineReader(20_000_000)
    piece = b"a" * 99 + b" "
    start = time.perf_counter()
    for _ in range(100_000):
        r.feed(piece)
        assert r.readline() is None
    r.feed(b"\r\n")
    line = r.readline()
    elapsed = time.perf_counter() - start
    assert line is not None and len(line) == 10_000_000
    assert elapsed < 30, f"{elapsed:.1f}s: quadratic rescanning?"


def test_random_chunking_matches_whole(lines):
    rnd = random.Random(3)
    stream = b"".join(
        bytes(rnd.choice(b"ab\r ") for _ in range(rnd.randint(0, 30))) + rnd.choice([b"\r\n", b"\n"])
        for _ in range(300)
    )
    whole = lines.LineReader(20)
    whole.feed(stream)
    expected = drain(whole, lines)
    for seed in range(5):
        rnd = random.Random(seed)
        r = lines.LineReader(20)
        got: list = []
        i = 0
        while i < len(stream):
            k = rnd.randint(1, 40)
            r.feed(stream[i : i + k])
            got += drain(r, lines)
            i += k
        assert got == expected
