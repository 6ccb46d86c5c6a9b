"""Fuzzing fastmail.store.mime / fastmail._core.mime with hypothesis (bounded: a few hundred examples each).

Contracts: analyze() never raises, whatever the bytes; its values render to balanced IMAP s-expressions that
read back to the same values; the section map stays inside the message; the compiled core and its pure
twin give identical results; and a generated MIME tree comes back part for part.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fastmail._core import variants
from fastmail.store import mime as store_mime
from tests.fuzz.fuzzing import fuzz

VARIANTS = variants("mime")
CORPUS = sorted((Path(__file__).resolve().parent.parent / "corpus" / "mime").glob("*.eml"))
SEEDS = [p.read_bytes() for p in CORPUS]

FUZZ = fuzz(500)


def analyze_with(core, raw: bytes) -> dict:
    """store.mime._analyze (no safety net) on one implementation of the core."""
    saved = store_mime._m
    store_mime._m = core
    try:
        return store_mime._analyze(raw)
    finally:
        store_mime._m = saved


# --- a reader for the rendered form ----------------------------------------------------------------------

_ATOM = re.compile(rb"NIL|[0-9]+")


def read_sexp(data: bytes) -> object:
    """Parse one rendered value (RFC 3501 §4: NIL, number, quoted, literal, parenthesized list)."""
    value, pos = _read(data, 0)
    assert pos == len(data), f"trailing bytes at {pos}"
    return value


def _read(data: bytes, pos: int) -> tuple[object, int]:
    c = data[pos : pos + 1]
    if c == b"(":
        items: list = []
        pos += 1
        while data[pos : pos + 1] != b")":
            assert pos < len(data), "unbalanced list"
            if items and data[pos : pos + 1] == b" ":
                pos += 1  # one space between items, none required after a list
            else:
                assert not items or type(items[-1]) is list, "missing separator"
            item, pos = _read(data, pos)
            items.append(item)
        return items, pos + 1
    if c == b'"':
        out = bytearray()
        pos += 1
        while data[pos : pos + 1] != b'"':
            b = data[pos]
            assert b not in (0, 10, 13) and b < 128, "not a quotable byte"
            if b == 92:
                assert data[pos + 1 : pos + 2] in (b'"', b"\\"), "bad escape"
                pos += 1
            out.append(data[pos])
            pos += 1
        return out.decode("ascii"), pos + 1
    if c == b"{":
        end = data.index(b"}\r\n", pos)
        size = int(data[pos + 1 : end])
        start = end + 3
        literal = data[start : start + size]
        assert len(literal) == size and b"\x00" not in literal
        return literal.decode("utf-8"), start + size
    m = _ATOM.match(data, pos)
    assert m is not None, f"unexpected {data[pos:pos + 10]!r}"
    return (None if m.group() == b"NIL" else int(m.group())), m.end()


# --- checks ----------------------------------------------------------------------------------------------


def check(raw: bytes) -> None:
    results = [analyze_with(core, raw) for core in VARIANTS.values()]
    assert results[0] == results[1], "compiled and pure disagree"
    result = results[0]
    for key in ("envelope", "body", "bodystructure"):
        wire = store_mime.render(result[key])
        assert read_sexp(wire) == result[key]
        assert VARIANTS["pure"].render(result[key]) == wire
    assert store_mime.to_body(result["bodystructure"]) == result["body"]
    check_parts(raw, result["parts"], result["parts"], 0, len(raw))


def check_parts(raw: bytes, root: list, node: list, lo: int, hi: int) -> None:
    hs, bs, end = node[:3]
    assert lo <= hs <= bs <= end <= hi
    if len(node) > 3:
        assert node[3] in (store_mime.MULTIPART, store_mime.MESSAGE)
        children = node[4] if node[3] == store_mime.MULTIPART else [node[4]]
        for child in children:
            check_parts(raw, root, child, bs, end)


@FUZZ
@given(st.binary(max_size=3000))
def test_arbitrary_bytes(raw):
    check(raw)
    store_mime.analyze(raw)


TOKENS = [
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"--",
    b"--b",
    b"--b--",
    b"--==outer==",
    b"--inner--",
    b":",
    b";",
    b"=",
    b'"',
    b"\\",
    b"(",
    b")",
    b"<",
    b">",
    b"@",
    b",",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/digest; boundary=inner\r\n",
    b"Content-Type: text/plain; charset*0*=utf-8''%41\r\n",
    b"MIME-Version: 1.0\r\n",
    b"From: a:b,c;<d@e>\r\n",
    b"=?utf-8?q?x?=",
]

mutation = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(0, 64)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from(TOKENS)),
    st.tuples(st.just("bytes"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("copy"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
)


def mutate(raw: bytes, ops: list) -> bytes:
    data = bytearray(raw)
    for op, a, b in ops:
        at = a % (len(data) + 1)
        if op == "delete":
            del data[at : at + b]
        elif op == "insert" or op == "bytes":
            data[at:at] = b
        elif op == "copy" and data:
            src = b % len(data)
            data[at:at] = data[src : src + 40]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(mutation, min_size=1, max_size=8))
def test_mutated_messages(seed, ops):
    check(mutate(seed, ops))


@FUZZ
@given(st.sampled_from(SEEDS))
def test_line_endings(seed):
    check(seed.replace(b"\r\n", b"\n"))
    check(seed.replace(b"\r\n", b"\r"))


# --- generated MIME trees --------------------------------------------------------------------------------

BODY_LINE = st.text(alphabet="abcdefghij XYZ=.:-", max_size=30).filter(lambda s: not s.startswith("-"))
LEAF = st.tuples(
    st.sampled_from(["text/plain", "text/html", "application/octet-stream", "image/png"]),
    st.lists(BODY_LINE, max_size=5).map(lambda lines: "\r\n".join(lines).encode()),
)
TREE = st.recursive(
    LEAF,
    lambda children: st.tuples(
        st.sampled_from(["mixed", "alternative", "related"]), st.lists(children, min_size=1, max_size=4)
    ),
    max_leaves=12,
)


def build(tree, counter: list[int]) -> bytes:
    """Header + body of a generated entity (tree: (type, body) leaf or (subtype, [children]))."""
    if isinstance(tree[1], bytes):
        return b"Content-Type: " + tree[0].encode() + b"\r\n\r\n" + tree[1]
    counter[0] += 1
    boundary = b"=_b%d_=" % counter[0]  # no boundary is a prefix of another
    out = [b"Content-Type: multipart/" + tree[0].encode() + b'; boundary="' + boundary + b'"\r\n\r\npreamble']
    for child in tree[1]:
        out.append(b"\r\n--" + boundary + b"\r\n" + build(child, counter))
    out.append(b"\r\n--" + boundary + b"--\r\nepilogue")
    return b"".join(out)


def leaves(tree, path: str):
    if isinstance(tree[1], bytes):
        yield (path or "1"), tree
        return
    for i, child in enumerate(tree[1], 1):
        yield from leaves(child, f"{path}.{i}" if path else str(i))


@fuzz(300)
@given(TREE)
def test_generated_trees(tree):
    raw = b"From: gen@example.com\r\nMIME-Version: 1.0\r\n" + build(tree, [0])
    check(raw)
    result = store_mime._analyze(raw)
    for path, (ctype, body) in leaves(tree, ""):
        assert store_mime.section_bytes(raw, result["parts"], path) == body, path
        mime_header = store_mime.section_bytes(raw, result["parts"], path + ".MIME")
        assert mime_header.endswith(b"Content-Type: " + ctype.encode() + b"\r\n\r\n"), path
