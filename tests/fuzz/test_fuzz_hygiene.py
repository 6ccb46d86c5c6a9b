"""The parsers of untrusted input in the mail checks and delivery (fastmail.hygiene, fastmail.delivery):
DNS records (SPF, DMARC, DKIM key records, MTA-STS), Authentication-Results stripping, header editing,
the message header parse, rspamd's HTTP/JSON and clamd's replies, MTA-STS policies, SRS addresses.

Contracts: each returns what it documents or raises the one exception it documents, never another; and
what it returns keeps its promise (a parsed SPF record's terms come from the text, a DMARC pct in 0-100, no
Authentication-Results field with our authserv-id survives stripping however it is written, a header field
we write is one field, an SRS address reverses to what was forwarded).
"""

from __future__ import annotations

import asyncio
import re

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from fastmail.delivery import mtasts, srs
from fastmail.hygiene import arc, clamd, dkim, dmarc, headers, message, rspamd, spf
from fastmail.hygiene.filters import FilterUnavailable
from tests.fuzz.fuzzing import fuzz


def soup(pieces: list[str], max_size: int = 16) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.sampled_from(pieces), st.text(max_size=3)), max_size=max_size).map("".join)


# -- SPF (RFC 7208) -------------------------------------------------------------------------------------------

SPF_PIECES = ["v=spf1", " ", "  ", "+", "-", "~", "?", "all", "a", "mx", "ptr", "include:", "exists:", "ip4:",
              "ip6:", "redirect=", "exp=", "x-foo=", ":", "/", "//", "24", "0", "33", "128", "129", "192.0.2.1",
              "::1", "2001:db8::", "CAFE::BABE", "example.com", ".", "%{i}", "%{ir}", "%{d2}", "%{l-}", "%{h}",
              "%{p}", "%{c}", "%{v}", "%{o0}", "%%", "%_", "%-", "%", "%{", "}", "_spf", "=", "\u00e9", "\x00", "\t"]


@fuzz(600)
@given(soup(SPF_PIECES, 20))
@example("v=spf1 ip4:192.0.2.1/33 a:%{d2}.example.com//129 -all")
def test_spf_record(text):
    try:
        record = spf.parse_record(text)
    except spf.PermError:
        return
    assert text[:6].lower() == "v=spf1"
    terms = [t for t in text[6:].split(" ") if t]
    assert all(d.term in terms for d in record.directives)
    for d in record.directives:
        assert 0 <= d.cidr4 <= 32 and 0 <= d.cidr6 <= 128


@fuzz(300)
@given(st.lists(st.one_of(soup(SPF_PIECES, 6).map(str.encode), st.binary(max_size=12)), max_size=4))
def test_spf_select_record(txts):
    try:
        selected = spf.select_record(txts)
    except spf.PermError:
        return
    assert selected is None or (selected.isascii() and selected.encode() in txts)


@fuzz(300)
@given(soup(["a", "b", ".", "-", "xn--", "1", "\u00e9", "\u3002", "\x00", "a" * 64, "com"], 12))
def test_spf_domain_names(name):
    valid = spf.valid_domain(name)
    assert valid is None or (valid.isascii() and "." in valid and not valid.endswith("."))
    target = spf.target_name(name)
    assert len(target) <= 253 or "." not in target


# -- DMARC (RFC 7489) ------------------------------------------------------------------------------------------

DMARC_PIECES = ["v=DMARC1", "v = DMARC1", "V=DMARC1", ";", " ", "p=", "sp=", "pct=", "adkim=", "aspf=", "rua=",
                "none", "quarantine", "reject", "REJECT", "s", "r", "0", "50", "100", "101", "-1", "\u00b2",
                "\u0663", "\uff11", "mailto:a@b", "\t", "=", "\ufffd"]


DMARC_TAGS = st.lists(st.tuples(st.sampled_from(["p", "sp", "pct", "adkim", "aspf", "rua", "x", "P", " pct "]),
                                st.sampled_from(["none", "quarantine", "reject", "REJECT", "s", "r", "0", "50", "100",
                                                 "101", "-1", "\u00b2", "\u0663", "\uff11", "9" * 5000, "",
                                                 "mailto:a@b", "\ufffd"])).map("=".join),
                      max_size=6).map(lambda tags: "v=DMARC1; " + "; ".join(tags))


@fuzz(600)
@given(st.one_of(soup(DMARC_PIECES, 14), DMARC_TAGS))
@example("v=DMARC1; p=none; pct=\u00b2")
@example("v=DMARC1; p=none; pct=" + "9" * 5000)
def test_dmarc_record(txt):
    record = dmarc.parse_record(txt)
    assert dmarc.is_dmarc_record(txt) or record is None
    if record is not None:
        assert record.p in ("none", "quarantine", "reject") and record.sp in (None, "none", "quarantine", "reject")
        assert 0 <= record.pct <= 100 and record.adkim in "rs" and record.aspf in "rs"


FROM_PIECES = [b"From: ", b"from:", b"a@example.org", b"<a@example.org>", b"\"x\" ", b",", b" ", b"(c)", b"@",
               b"\r\n", b"\n", b"\r\n ", b"Subject: x\r\n", b"=?utf-8?q?x?=", b"\xc3\xa9", b"\xff", b"[1.2.3.4]",
               b"b\xc3\xbccher.de", b"group:", b";", b"From foo\r\n"]


@fuzz(400)
@given(st.lists(st.sampled_from(FROM_PIECES), max_size=16).map(b"".join), st.sampled_from([b"\r\n\r\nbody", b""]))
def test_dmarc_author_domains(head, tail):
    result = dmarc.message_domains(head + tail)
    if not isinstance(result, dmarc.AuthorDomainError):
        assert result and all(d == dmarc.normalize_domain(d) for d in result)


@fuzz(300)
@given(soup(["a", "B", ".", "co.uk", "example", "\u00e9", "-", "xn--", " ", "\x00", "..", "com."], 10), st.sampled_from("rs"))
def test_dmarc_domains(name, mode):
    org = dmarc.organizational_domain(name)
    assert isinstance(org, str)
    assert isinstance(dmarc.aligned(name, "example.com", mode), bool)


# -- DKIM / ARC key records and tag lists --------------------------------------------------------------------------

@fuzz(300)
@given(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from([b"v=DKIM1; k=rsa; p=", b" v = DKIM1 ;",
                                                                  b"v=DKIM1", b"p=", b"k=ed25519"])), max_size=4))
def test_dkim_key_record(records):
    chosen = dkim.key_record(records)
    assert chosen is None if not records else chosen in records


@fuzz(300)
@given(st.lists(st.sampled_from([b"i=1", b"a=rsa-sha256", b";", b" ", b"=", b"b=", b"\r\n ", b"d=x", b"\xff",
                                 b"cv=pass", b"i=1; i=2", b"\x00"]), max_size=12).map(b"".join))
def test_arc_tag_lists(value):
    tags = arc._tags(value)
    assert isinstance(tags, dict)


# -- the message's header section -------------------------------------------------------------------------------------

HEAD_PIECES = [b"From: a@example.org", b"Subject: x", b"DKIM-Signature: v=1; d=x", b"ARC-Seal: i=1",
               b"Authentication-Results: ", b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"X", b"\xff", b"\x00",
               b"From ", b"\r\n\r\n", b"body"]


@fuzz(400)
@given(st.lists(st.sampled_from(HEAD_PIECES), max_size=20).map(b"".join))
def test_message_parse(raw):
    msg = message.parse(raw)
    end = message.header_end(raw)
    assert 0 <= end <= len(raw)
    assert msg.header_section == raw[: len(msg.header_section)]
    assert isinstance(msg.has_arc, bool) and isinstance(msg.body, bytes)
    arc.without_lookups(msg)


# -- Authentication-Results (RFC 8601) -----------------------------------------------------------------------------

OURS = "mx.example.org"
AR_PIECES = [b"Authentication-Results:", b"authentication-results :", b"AUTHENTICATION-RESULTS:", b" ", b"\t",
             b"\r\n ", b"mx.example.org", b"MX.Example.ORG", b"other.example", b"\"mx.example.org\"", b"\"mx\\.example.org\"",
             b"(", b")", b"(comment)", b"((nested) comment)", b"\\)", b"\\(", b"\"", b";", b" spf=pass", b"\r\n",
             b"Subject: x\r\n", b"mx.example.org.", b"1 ", b"\xff"]


def _cfws(v: bytes, i: int) -> int:
    """Skip CFWS (RFC 5322 §3.2.2: nested comments, quoted-pairs) from i."""
    depth = 0
    while i < len(v):
        c = v[i:i + 1]
        if c == b"\\" and depth:
            i += 2
        elif c == b"(":
            depth += 1
            i += 1
        elif c == b")" and depth:
            depth -= 1
            i += 1
        elif depth or c in b" \t\r\n":
            i += 1
        else:
            break
    return i


def authserv_id(value: bytes) -> bytes | None:
    """RFC 8601 §2.2 authserv-id (a value: token or quoted-string, RFC 2045 §5.1) after CFWS, unquoted."""
    i = _cfws(value, 0)
    if value[i:i + 1] == b'"':
        out = bytearray()
        i += 1
        while i < len(value) and value[i:i + 1] != b'"':
            if value[i:i + 1] == b"\\":
                i += 1
            out += value[i:i + 1]
            i += 1
        return bytes(out) if i < len(value) else None
    m = re.match(rb"[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]+", value[i:])
    return m.group() if m else None


@fuzz(600)
@given(st.lists(st.sampled_from(AR_PIECES), max_size=16).map(b"".join),
       st.sampled_from([b"\r\n\r\nbody", b"\r\n", b""]))
@example(b"Authentication-Results: ((x)) mx.example.org; spf=pass", b"\r\n\r\nbody")
@example(b"Authentication-Results: \"mx.example.org\"; spf=pass", b"\r\n\r\nbody")
def test_strip_authres(head, tail):
    raw = b"Received: x\r\n" + head + tail
    out, removed = headers.strip_authres(raw, OURS)
    assert removed >= 0 and (removed > 0) == (out != raw)
    head_out, _ = headers.split_message(out)
    for f in headers.header_fields(head_out):
        if headers.field_name(f) == b"authentication-results" and b":" in f:
            ident = authserv_id(f.split(b":", 1)[1])
            assert ident is None or ident.lower() != OURS.encode(), f


@fuzz(300)
@given(st.sampled_from(["Subject", "X-Spam-Status", "X-Spamd-Result"]),
       st.lists(st.sampled_from(list("ab \t\r\n:;,=()\u00e9x") + ["\r\n\t", "x" * 30]), max_size=60).map("".join),
       st.integers(20, 100))
def test_written_fields_are_one_field(name, value, width):
    f = headers.field(name, value, width)
    assert f.startswith(name.encode() + b":") and f.endswith(b"\r\n")
    inner = f[:-2]
    assert b"\r" not in inner.replace(b"\r\n", b"") and b"\n" not in inner.replace(b"\r\n", b"")
    assert all(line[:1] in (b" ", b"\t") for line in inner.split(b"\r\n")[1:]), f


@fuzz(300)
@given(st.lists(st.sampled_from(HEAD_PIECES + [b"Subject: a\r\n", b"X-Spam: y\r\n"]), max_size=14).map(b"".join),
       st.dictionaries(st.sampled_from(["Subject", "X-Spam", "From", "x-spam"]), st.integers(-3, 3), max_size=3),
       st.one_of(st.none(), st.text(max_size=20)))
@example(b"", {"Subject": 0}, None)
@example(b" folded first line\r\nSubject: a\r\n\r\nbody", {"X": 0}, None)
def test_edit_headers(raw, remove, subject):
    out = headers.edit_headers(raw, remove, subject)
    head, rest = headers.split_message(raw)
    assert out.endswith(rest)
    assert b"".join(headers.header_fields(head)) == head  # the fields are the whole header section
    if subject is None:  # the header section is its fields, some of them removed, the others in order
        kept = out[: len(out) - len(rest)]
        for f in headers.header_fields(head):
            if kept.startswith(f):
                kept = kept[len(f):]
        assert kept == b"", kept


# -- rspamd's HTTP response and JSON verdict, clamd's reply ---------------------------------------------------------------

HTTP_PIECES = [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 500 x\r\n", b"HTTP/2 200\r\n", b"Content-Length: 5\r\n",
               b"Content-Length: -1\r\n", b"Content-Length: \xc2\xb2\r\n", b"Content-Length: 99999999999\r\n",
               b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding: x\r\n",
               b"X: y\r\n", b" bad: fold\r\n", b"\r\n", b"5\r\n", b"hello", b"0\r\n", b"-1\r\n", b"ffffffffff\r\n",
               b"5;ext=1\r\n", b"zz\r\n", b"{}", b"\r\n\r\n", b":\r\n", b"\xff"]


@fuzz(600)
@given(st.lists(st.sampled_from(HTTP_PIECES), max_size=12).map(b"".join), st.booleans())
def test_rspamd_http_response(data, eof):
    try:
        response = rspamd.parse_response(data, eof=eof)
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return
    if response is not None:
        assert 100 <= response.status <= 999 and isinstance(response.body, bytes)


_JSON_KEYS = st.sampled_from(["action", "score", "required_score", "symbols", "messages", "subject", "milter",
                               "add_headers", "remove_headers", "value", "order", "error", "x"])


def _json_level(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(inner, st.lists(inner, max_size=4), st.dictionaries(_JSON_KEYS, inner, max_size=6))


# JSON values three containers deep (built level by level: st.recursive warns about this extend in some runs)
JSON = _json_level(_json_level(_json_level(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8)))))


@fuzz(600)
@given(JSON)
@example({"action": "reject", "score": 1, "required_score": 2, "milter": {"add_headers": {"X": [{"value": 1}, "y"]},
                                                                            "remove_headers": {"X": "\u00b2"}}})
def test_rspamd_verdict(value):
    try:
        body = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        result = rspamd.parse_result(body)
    except FilterUnavailable:
        return
    assert isinstance(result.score, float) and all(type(v) is int for v in result.remove_headers.values())


@fuzz(300)
@given(st.lists(st.sampled_from([b"stream: ", b"OK", b"FOUND", b" ", b"ERROR", b"Eicar", b"\0", b"\xff",
                                 b"INSTREAM size limit exceeded.", b"\n"]), max_size=8).map(b"".join))
def test_clamd_reply(reply):
    try:
        result = clamd.parse_reply(reply)
    except FilterUnavailable:
        return
    assert result.infected == (result.signature is not None)


# -- MTA-STS (RFC 8461) ------------------------------------------------------------------------------------------------------

STS_PIECES = ["version: STSv1\n", "version:STSv1\r\n", "mode: enforce\n", "mode: testing\n", "mode: none\n",
              "mode: x\n", "mx: mx.example.org\n", "mx: *.example.org\n", "max_age: 86400\n", "max_age: \u00b2\n",
              "max_age: \u0663\u0663\n", "max_age: -1\n", "max_age: 99999999999999999999\n", ":", "\n", "\r\n", " "]


@fuzz(600)
@given(soup(STS_PIECES, 10))
@example("version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: \u00b2\n")
@example("version: STSv1\nmode: none\nmax_age: " + "9" * 5000 + "\n")
def test_mtasts_policy(text):
    policy = mtasts.parse_policy(text, "id1", 0.0)
    if policy is not None:
        assert policy.mode in ("enforce", "testing", "none") and policy.max_age >= 0
        assert policy.mx or policy.mode == "none"
        assert isinstance(policy.allows("mx.example.org"), bool)


@fuzz(300)
@given(st.lists(st.lists(st.sampled_from([b"v=STSv1", b";", b" ", b"id=", b"abc123", b"\xc2\xb2", b"=", b"x" * 33,
                                          b"\xff"]), max_size=8).map(b"".join), max_size=3))
def test_mtasts_txt(records):
    ident = mtasts.parse_txt(records)
    assert ident is None or (ident.isalnum() and len(ident) <= 32)


@fuzz(300)
@given(st.lists(st.sampled_from([b"5\r\n", b"hello\r\n", b"0\r\n", b"\r\n", b"zz\r\n", b"5;x\r\n", b"-5\r\n",
                                 b"ab"]), max_size=8).map(b"".join))
def test_mtasts_unchunk(body):
    try:
        out = mtasts._unchunk(body)
    except ValueError:
        return
    assert len(out) <= len(body)


# -- SRS ---------------------------------------------------------------------------------------------------------------------

KEY = b"k" * 32


@fuzz(300)
@given(st.text(max_size=12), st.text(min_size=1, max_size=12), st.integers(0, 10**10))
def test_srs_round_trip(local, domain, now):
    sender = f"{local}@{domain}"
    address = srs.forward(KEY, sender, "fwd.example", now)
    srs_local = address.rpartition("@")[0]
    if local and "=" not in domain and "@" not in domain:  # (a parsed sender's domain has neither)
        assert srs.reverse(KEY, srs_local, now) == sender


@fuzz(300)
@given(st.lists(st.sampled_from(["SRS0=", "srs0=", "=", "AB", "ab", "xx", "example.org", "u", "+", "\u00e9", "\x00"]),
                max_size=10).map("".join), st.integers(0, 10**10))
def test_srs_reverse_garbage(local, now):
    original = srs.reverse(KEY, local, now)
    assert original is None or "@" in original
