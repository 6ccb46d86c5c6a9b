"""fastmail._core.data: DATA end detection, dot-unstuffing, bare CR/LF (RFC 5321 §4.1.1.4, §4.5.2).

Every corpus stream is fed whole, line by line, byte by byte and in seeded random chunks, to the compiled
and the pure implementation.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmail._core import is_compiled, variants

CORPUS = json.loads((Path(__file__).parent.parent / "corpus" / "data_streams.json").read_text())["cases"]


@pytest.fixture(params=["compiled", "pure"])
def data(request):
    return variants("data")[request.param]


def chunkings(stream: bytes) -> dict[str, list[bytes]]:
    """The same stream cut in several ways (including every CR, LF and "." on its own)."""
    out = {
        "whole": [stream],
        "bytes": [stream[i : i + 1] for i in range(len(stream))],
        "lines": [line for line in stream.splitlines(keepends=True)],
    }
    for seed in range(4):
        rnd = random.Random(seed)
        chunks, i = [], 0
        while i < len(stream):
            k = rnd.randint(1, 6)
            chunks.append(stream[i : i + k])
            i += k
        out[f"random{seed}"] = chunks
    return out


def decode(mod, chunks, max_size=1 << 20, normalize=True):
    """Feed chunks until done; return (decoder, bytes consumed)."""
    decoder = mod.DataDecoder(max_size, normalize)
    consumed = 0
    for chunk in chunks:
        used = decoder.feed(chunk)
        assert 0 <= used <= len(chunk)
        consumed += used
        if decoder.done:
            break
        assert used == len(chunk), "less than a whole chunk consumed before the end"
    return decoder, consumed


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_corpus(data, case):
    stream = case["stream"].encode("latin-1")
    for how, chunks in chunkings(stream).items():
        decoder, consumed = decode(data, chunks, case["max_size"], case["normalize_bare_lf"])
        got = {
            "done": decoder.done,
            "consumed": consumed,
            "bare_lf": decoder.bare_lf,
            "bare_cr": decoder.bare_cr,
            "too_big": decoder.too_big,
        }
        want = {k: case[k] for k in got}
        if case["done"]:
            got["message"] = decoder.getvalue()
            got["size"] = decoder.size
            want["message"] = case["message"].encode("latin-1")
            want["size"] = case["size"]
        assert got == want, how


def test_both_implementations_agree_on_every_split_point():
    """Cut each corpus stream in two at every position: compiled and pure give the same result."""
    mods = variants("data")
    for case in CORPUS:
        stream = case["stream"].encode("latin-1")
        for cut in range(len(stream) + 1):
            results = []
            for mod in mods.values():
                d, consumed = decode(mod, [stream[:cut], stream[cut:]], case["max_size"], case["normalize_bare_lf"])
                results.append((d.done, consumed, d.bare_lf, d.bare_cr, d.too_big, d.size, d.getvalue()))
            assert results[0] == results[1], (case["name"], cut)


def test_compiled_is_compiled():
    assert is_compiled(variants("data")["compiled"])
    assert not is_compiled(variants("data")["pure"])


def test_mark_split_anywhere(data):
    body = b"line one\r\n..stuffed\r\nlast\r\n"
    stream = body + b".\r\nNEXT"
    for cut in range(len(stream) + 1):
        for cut2 in range(cut, len(stream) + 1):
            d, consumed = decode(data, [stream[:cut], stream[cut:cut2], stream[cut2:]])
            assert d.done and consumed == len(stream) - 4
            assert d.getvalue() == b"line one\r\n.stuffed\r\nlast\r\n"


def test_feed_after_done_consumes_nothing(data):
    d = data.DataDecoder(100)
    assert d.feed(b"x\r\n.\r\nMAIL") == 6
    assert d.done
    assert d.feed(b"more\r\n.\r\n") == 0
    assert d.getvalue() == b"x\r\n"


def test_reset(data):
    d = data.DataDecoder(4)
    d.feed(b"toolong\n\r\n.\r\n")
    assert d.done and d.too_big and d.bare_lf
    d.reset()
    assert not (d.done or d.too_big or d.bare_lf or d.bare_cr) and d.size == 0
    assert d.feed(b"ok\r\n.\r\n") == 7
    assert d.getvalue() == b"ok\r\n"


def test_getvalue_twice_and_size(data):
    d = data.DataDecoder(1 << 20)
    for part in (b"a\r\n", b"b\nc", b"\r", b"\n", b".", b".\r\n.\r\n"):
        d.feed(part)
    assert d.done
    assert d.getvalue() == d.getvalue() == b"a\r\nb\r\nc\r\n.\r\n"
    assert d.size == len(d.getvalue())


def test_too_big_keeps_scanning_and_bounds_memory(data):
    d = data.DataDecoder(1000)
    chunk = b"x" * 998 + b"\r\n"
    for _ in range(100):
        assert d.feed(chunk) == len(chunk)
    assert d.too_big and not d.done
    assert d.feed(b".\r\nQUIT\r\n") == 3
    assert d.done
    assert d.size == 100_000
    assert len(d.getvalue()) == 1000


def test_large_message_in_64k_chunks(data):
    rnd = random.Random(7)
    lines = []
    for _ in range(20000):
        line = bytes(rnd.choice(b"abc .\t") for _ in range(rnd.randint(0, 90)))
        lines.append(line + b"\r\n")
    body = b"".join(lines)
    stream = data.dot_stuff(body) + data.END_MARK + b"QUIT\r\n"
    d = data.DataDecoder(len(body))
    consumed = 0
    for i in range(0, len(stream), 65536):
        consumed += d.feed(stream[i : i + 65536])
        if d.done:
            break
    assert d.done and not d.too_big and not d.bare_lf and not d.bare_cr
    assert consumed == len(stream) - 6
    assert d.getvalue() == body


def test_fast_path_chunk_is_stored_without_copy(data):
    # Not an API promise, just the fast path at work: a clean chunk is kept as it is.
    d = data.DataDecoder(1 << 20)
    chunk = b"Subject: hi\r\n\r\nno dots here\r\n"
    d.feed(chunk)
    d.feed(b".\r\n")
    assert d.getvalue() == chunk


@pytest.mark.parametrize(
    ("body", "stuffed"),
    [
        (b"", b""),
        (b"a\r\n", b"a\r\n"),
        (b".\r\n", b"..\r\n"),
        (b"..x\r\n", b"...x\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
        (b"a\n.\n", b"a\n..\n"),  # after a bare LF too: no receiver may see an early end
        (b"a\r.\r\n", b"a\r.\r\n"),
        (b"a.b\r\n", b"a.b\r\n"),
    ],
)
def test_dot_stuff(data, body, stuffed):
    assert data.dot_stuff(body) == stuffed
    assert data.END_MARK == b".\r\n"


@pytest.mark.parametrize(
    ("raw", "after_cr", "out", "bare"),
    [
        (b"", False, b"", False),
        (b"abc", False, b"abc", False),
        (b"a\r\nb\r\n", False, b"a\r\nb\r\n", False),
        (b"a\nb\n", False, b"a\r\nb\r\n", True),
        (b"a\r\nb\n", False, b"a\r\nb\r\n", True),
        (b"\r\r\n\n", False, b"\r\r\n\r\n", True),
        (b"a\rb", False, b"a\rb", False),
        (b"\nab\r\n", True, b"\nab\r\n", False),  # the LF completes the previous chunk's CR
        (b"\nab\n", True, b"\nab\r\n", True),
        (b"\nab\n", False, b"\r\nab\r\n", True),
    ],
)
def test_crlf_normalize(data, raw, after_cr, out, bare):
    assert data.crlf_normalize(raw, after_cr) == (out, bare)


@pytest.mark.parametrize("body", [
    b"", b"plain\r\n", b".lead\r\n", b"a\r\n.b\r\n..c\r\n", b"\n.\n.\n.", b"x\n." * 300, b".\r\n" * 1000,
])
def test_dot_stuff_parts_is_dot_stuff_without_copies(data, body):
    parts = data.dot_stuff_parts(body)
    assert b"".join(parts) == data.dot_stuff(body)
    assert len(parts) <= data.MAX_STUFF_PARTS + 1
    if body.count(b"\n.") < 100:  # few stuffed lines: the body's bytes are shared, not copied
        assert all(type(p) is memoryview or len(p) <= 1 or p is body for p in parts)


@given(st.binary(max_size=300) | st.lists(st.sampled_from([b"\r\n", b"\n", b".", b"a", b"\r", b".\r\n"]),
                                           max_size=120).map(b"".join))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_dot_stuff_matches_the_rule_on_any_bytes(data, body):
    """Every "." at the start of the body or after any LF gets one more "." — whatever the compiled scan
    (memchr for "." and a look back) or the pure one (bytes.find) does."""
    expected = (b"." if body[:1] == b"." else b"") + body.replace(b"\n.", b"\n..")
    assert data.dot_stuff(body) == expected
    assert b"".join(data.dot_stuff_parts(body)) == expected
