"""fastmail._core.canon, both builds, against dkimpy's own code on generated input:

- header_fields: dkimpy's rfc822_parse of a header section (fields, and where it fails); sections of CRLF
  lines take the one-pass path, others the general loop, and both are generated;
- relaxed_value: dkimpy's relaxed canonicalization of a field's value;
- relaxed_body: dkimpy's relaxed canonicalization of a body;
- signed_fields: dkimpy's select_headers, then its canonicalization of each selected field, joined.
"""

from __future__ import annotations

import re

import dkim as dkimpy
import dkim.canonicalization as dc
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastmail._core import is_compiled, variants


@pytest.fixture(params=["compiled", "pure"], scope="module")
def core(request):
    return variants("canon")[request.param]


def test_compiled_is_compiled():
    assert is_compiled(variants("canon")["compiled"])


def _dkimpy_fields(head: bytes) -> list[list[bytes]] | str:
    try:
        fields, _ = dkimpy.rfc822_parse(head)
    except dkimpy.MessageFormatError as e:
        return f"ValueError {e}"
    except IndexError:
        return "IndexError"
    return fields


def _fields(core, head: bytes) -> list[list[bytes]] | str:
    try:
        return core.header_fields(head)
    except ValueError as e:
        return f"ValueError Unexpected characters in RFC822 header: {e.args[0]!r}"
    except IndexError:
        return "IndexError"


# Lines as SMTP delivers them (every one ending in CRLF: the one-pass path) ...
_CRLF_LINES = [b"Subject: hi", b"From: a <a@b.example>", b" folded", b"\tfolded", b"x-y:z", b"DKIM-Signature: v=1;",
               b"a:b:c", b":x", b"no colon", b"From mbox line", b"bad name: x", b"n\x00me: x", b"\xc3\xa9: x",
               b"ok:\r", b"", b"Caf\xc3\xa9: v", b" ", b"To:"]
crlf_sections = st.lists(st.sampled_from(_CRLF_LINES), max_size=12).map(lambda ls: b"".join(x + b"\r\n" for x in ls))
# ... and anything at all (bare LF and CR, a last line without its end).
_PIECES = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"From ", b"a", b"B", b"x-y", b"\xc3\xa9", b"\x00", b"\r\n\r\n"]
any_sections = st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join)


@given(crlf_sections)
@example(b"")
@example(b"a: b\r\n c\r\n\r\n")
@example(b"a: b\r\r\nc: d\r\n")
@example(b" first\r\n")
@example(b"From x\r\nTo: y\r\n")
@settings(max_examples=1500, deadline=None)
def test_header_fields_of_crlf_sections_are_dkimpys(core, head):
    assert _fields(core, head) == _dkimpy_fields(head)


@given(any_sections)
@example(b"a: b\nc: d\n\n")
@example(b"a: b\r\nc: d")
@example(b"a: b\r\nc: d\r")
@settings(max_examples=1500, deadline=None)
def test_header_fields_of_any_section_are_dkimpys(core, head):
    assert _fields(core, head) == _dkimpy_fields(head)


def test_header_values_of_crlf_sections_are_slices(core):
    head = b"A: 1\r\n 2\r\nB:3\r\n\r\nbody"
    fields = core.header_fields(head)
    assert fields == [[b"A", b" 1\r\n 2\r\n"], [b"B", b"3\r\n"]]


_TEXT = [b" ", b"  ", b"\t", b"\r\n", b"\n", b"\r", b"a", b"bc", b"\x0b", b"\x0c", b"\r\n ", b"\r\n\t", b"\xff", b";"]
texts = st.lists(st.sampled_from(_TEXT), max_size=40).map(b"".join)


@given(texts)
@example(b"")
@example(b"\r\r\n\n")
@example(b" \x0b a \x0c ")
@settings(max_examples=2000, deadline=None)
def test_relaxed_value_is_dkimpys(core, value):
    [(_, expected)] = dc.Relaxed.canonicalize_headers([(b"x", value)])
    assert core.relaxed_value(value) == expected


@given(texts)
@example(b"")
@example(b"\r\n")
@example(b"\r\n\r\n")
@example(b"a \r\n\t\r\n  \r\n")
@example(b"a\r\n\r\n \r\n")
@example(b"a  b\t\tc \r")
@settings(max_examples=2000, deadline=None)
def test_relaxed_body_is_dkimpys(core, body):
    # the body as message.crlf() hands it over: every line end CRLF (a bare CR stays)
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert core.relaxed_body(body) == dc.Relaxed.canonicalize_body(body)


def test_relaxed_body_of_a_long_body(core):
    lines = [b"line %d with  spaces\t and a trailing one " % i for i in range(500)]
    body = b"\r\n".join(lines) + b"\r\n\r\n\r\n"
    assert core.relaxed_body(body) == dc.Relaxed.canonicalize_body(body)


_NAMES = [b"From", b"TO", b"subject", b"Date", b"x", b"y", b"DKIM-Signature", b"Subject "]
_VALUES = [b" a\r\n", b"\tb  c \r\n", b" folded\r\n  line \r\n", b"\r\n", b" x\ty\r\n"]


@given(st.lists(st.sampled_from([b"from", b"to", b"subject", b"date", b"x", b"dkim-signature", b"subject "]),
                max_size=14),
       st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=12),
       st.booleans())
@example([b"from", b"from", b"from"], [(b"From", b" a\r\n"), (b"FROM", b" b\r\n")], True)
@settings(max_examples=1500, deadline=None)
def test_signed_fields_are_dkimpys(core, selected, fields, relaxed):
    fields = [[n, v] for n, v in fields]
    algorithm = dc.Relaxed if relaxed else dc.Simple
    expected = b"".join(n + b":" + v for n, v in algorithm.canonicalize_headers(
        dkimpy.select_headers(fields, list(selected))))
    assert core.signed_fields(fields, [n.lower() for n, _ in fields], list(selected), relaxed) == expected


_BTAG_PIECES = [b"b", b"=", b";", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\x0b", b"a", b"Z", b"0", b"+", b"/", b"bh",
                b"v=1", b"-", b"\xff", b"b=abc", b"; b =", b"\r\n\t"]


@given(st.lists(st.sampled_from(_BTAG_PIECES), max_size=60).map(b"".join))
@example(b"v=1; b=abc\r\n")
@example(b"v=1; b=\r\n")
@example(b" b=AA==  \r\n")
@example(b";b= a b c ;b=x\n")
@settings(max_examples=3000, deadline=None)
def test_without_b_is_dkimpys_re_btag(core, value):
    assert core.without_b(value) == dkimpy.RE_BTAG.sub(b"\\1", value)


@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"a", b"\r\r\n", b"\n\r", b"\x00"]), max_size=40).map(b"".join))
@example(b"\n")
@example(b"a\r\nb\n")
@example(b"\r\n" * 50)
@settings(max_examples=1000, deadline=None)
def test_bare_lf_finds_an_lf_without_its_cr(core, data):
    assert core.bare_lf(data) == (re.search(rb"(?<!\r)\n", data) is not None)


@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"a", b"\r\r\n", b"\n\r", b"\x00"]), max_size=40).map(b"".join))
@example(b"")
@example(b"\r")
@example(b"a\r\nb\r\n")
@settings(max_examples=1000, deadline=None)
def test_crlf_only_means_every_cr_and_lf_is_a_crlf(core, data):
    assert core.crlf_only(data) == (re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None)
