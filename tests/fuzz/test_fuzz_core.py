"""Property tests of the Cython core parsers (hypothesis, bounded).

Contracts:
    - smtp: every parser returns or raises SMTPSyntaxError, nothing else; compiled and pure agree.
    - data: dot_stuff(body) + END_MARK, fed in any chunks, decodes back to the (CRLF-normalized) body;
      any raw stream decodes like a byte-at-a-time reference; compiled and pure agree.
    - lines: LineReader gives the same lines (and LineTooLong events) as a simple reference, whatever
      the chunking; compiled and pure agree.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fastmail._core import variants
from tests.fuzz.fuzzing import fuzz

SETTINGS = fuzz(600)

SMTP = variants("smtp")
DATA = variants("data")
LINES = variants("lines")


# -- smtp ------------------------------------------------------------------------------------------------

# Bytes that matter to the address grammar, plus some that never should appear.
ADDR_BYTES = st.sampled_from(
    [b"a", b"Z", b"0", b"-", b".", b"@", b"<", b">", b'"', b"\\", b" ", b",", b":", b"[", b"]", b"%", b"!",
     b"+", b"=", b"IPv6:", b"::1", b"192.0.2.1", b"\x00", b"\x7f", b"\xc3\xa9", b"\xff", b"\r", b"example",
     b"SIZE=10", b"SMTPUTF8", b"Postmaster", b"xn--"]
)
ADDR_SOUP = st.lists(ADDR_BYTES, max_size=24).map(b"".join)


def outcome(mod, fn, *args):
    try:
        return ("ok", fn(*args))
    except mod.SMTPSyntaxError as e:
        assert isinstance(e, ValueError)
        assert (e.code, e.enhanced) in ((501, "5.5.4"), (501, "5.1.3"), (553, "5.6.7"))
        return ("error", e.code, e.enhanced, e.text)


def both(name, *args):
    results = [outcome(mod, getattr(mod, name), *args) for mod in SMTP.values()]
    assert results[0] == results[1], (name, args)
    return results[0]


@SETTINGS
@given(st.one_of(st.binary(max_size=40), ADDR_SOUP))
def test_parse_command(line):
    result = both("parse_command", line)
    assert result[0] == "ok"
    verb, args = result[1]
    if verb:
        assert verb.isalpha() and verb.isupper() and 1 <= len(verb) <= 12
        assert line.upper().startswith(verb.encode())
        assert not args.endswith(b" ")
    else:
        assert args == line


@SETTINGS
@given(st.sampled_from([b"FROM:<", b"from: <", b"FROM:", b"FROM:<@"]), ADDR_SOUP, st.sampled_from([b">", b""]),
       ADDR_SOUP)
def test_parse_mail_from(head, path, close, tail):
    result = both("parse_mail_from", head + path + close + tail)
    if result[0] == "ok":
        address, params = result[1]
        assert address is None or (isinstance(address[0], str) and isinstance(address[1], str))
        assert all(isinstance(k, str) and k == k.upper() for k in params)


@SETTINGS
@given(st.sampled_from([b"TO:<", b"to:<", b"TO: <", b"TO:<@"]), ADDR_SOUP, st.sampled_from([b">", b"> "]),
       ADDR_SOUP, st.booleans())
def test_parse_rcpt_to(head, path, close, tail, utf8):
    result = both("parse_rcpt_to", head + path + close + tail, utf8)
    if result[0] == "ok":
        (local_part, domain), _ = result[1]
        assert local_part  # never an empty local part
        if domain:
            # The domain a relay policy compares: already canonical.
            assert domain == domain.lower() and not domain.endswith(".") and "@" not in domain


@SETTINGS
@given(st.one_of(st.binary(max_size=30), ADDR_SOUP), st.booleans())
def test_parse_path(path, utf8):
    result = both("parse_path", path, utf8)
    if result[0] == "ok" and result[1] is not None:
        local_part, domain = result[1]
        # What came back parses again to the same thing when written as a plain address.
        if "@" not in local_part and '"' not in local_part and local_part.isascii() and local_part.isprintable():
            again = both("parse_path", f"{local_part}@{domain}".encode(), utf8)
            if " " not in local_part and "\\" not in local_part and "(" not in local_part:
                assert again[0] == "error" or again[1] == (local_part, domain)


@SETTINGS
@given(st.text(max_size=30))
def test_xtext(text):
    encoded = both("xtext_encode", text)
    assert encoded[0] == "ok"
    assert both("xtext_decode", encoded[1]) == ("ok", text)
    both("xtext_decode", text)  # returns or raises SMTPSyntaxError, both agree


# -- data ------------------------------------------------------------------------------------------------

STREAM_BYTES = st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b".\r\n", b"\r\n.\r\n", b"\n.", b"x" * 70])
BODY = st.lists(STREAM_BYTES, max_size=40).map(b"".join)


def reference_decode(stream: bytes, normalize: bool = True):
    """Byte-at-a-time reference: (message, consumed, bare_lf, bare_cr), or None when the end is not there."""
    out = bytearray()
    bare_lf = bare_cr = False
    i, n, bol = 0, len(stream), True
    while i < n:
        if bol and stream[i : i + 3] == b".\r\n":
            return bytes(out), i + 3, bare_lf, bare_cr
        if bol and stream[i : i + 1] == b".":
            if i + 3 > n and b".\r\n".startswith(stream[i:]):
                return None
            i += 1  # stuffed dot, deleted
            bol = False
            continue
        bol = False
        c = stream[i]
        if c == 13:
            if i + 1 >= n:
                return None
            if stream[i + 1] == 10:
                out += b"\r\n"
                i += 2
                bol = True
                continue
            bare_cr = True
        elif c == 10:
            bare_lf = True
            out += b"\r\n" if normalize else b"\n"
            i += 1
            continue
        out.append(c)
        i += 1
    return None


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(stream[last:p])
        last = p
    pieces.append(stream[last:])
    return pieces


def feed_all(mod, pieces, normalize=True, max_size=1 << 20):
    d = mod.DataDecoder(max_size, normalize)
    consumed = 0
    for piece in pieces:
        consumed += d.feed(piece)
        if d.done:
            break
    if not d.done:
        return None
    return d.getvalue(), consumed, d.bare_lf, d.bare_cr


@SETTINGS
@given(BODY, st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.binary(max_size=8))
def test_dot_stuff_round_trip(body, cuts, after):
    normalized, _ = DATA["pure"].crlf_normalize(body)
    if normalized and not normalized.endswith(b"\r\n"):
        normalized += b"\r\n"
    results = []
    for mod in DATA.values():
        stream = mod.dot_stuff(normalized) + mod.END_MARK + after
        results.append(feed_all(mod, chunked(stream, cuts)))
        assert results[-1] is not None
        message, consumed, bare_lf, bare_cr = results[-1]
        assert message == normalized
        assert consumed == len(stream) - len(after)
        assert not bare_lf
    assert results[0] == results[1]


@SETTINGS
@given(BODY, st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.booleans())
def test_raw_stream_matches_reference(stream, cuts, normalize):
    stream += b"\r\n.\r\nNEXT"
    expected = reference_decode(stream, normalize)
    for mod in DATA.values():
        assert feed_all(mod, chunked(stream, cuts), normalize) == expected


@SETTINGS
@given(BODY, st.lists(st.integers(min_value=0, max_value=10_000), max_size=6), st.integers(0, 200))
def test_size_limit(stream, cuts, max_size):
    stream += b"\r\n.\r\n"
    results = []
    for mod in DATA.values():
        d = mod.DataDecoder(max_size)
        for piece in chunked(stream, cuts):
            d.feed(piece)
        assert d.done
        full = reference_decode(stream)[0]
        assert d.size == len(full)
        assert d.too_big == (len(full) > max_size)
        assert d.getvalue() == full[:max_size]
        results.append((d.size, d.too_big, d.getvalue()))
    assert results[0] == results[1]


# -- lines -----------------------------------------------------------------------------------------------

def reference_lines(stream: bytes, max_length: int) -> list:
    """Each complete line (CR of CRLF stripped) or "TOO LONG"; an unfinished last line that already
    exceeds the limit also counts as "TOO LONG"."""
    *complete, tail = stream.split(b"\n")
    out: list = []
    for line in complete:
        if line.endswith(b"\r"):
            line = line[:-1]
        out.append("TOO LONG" if len(line) > max_length else line)
    if len(tail) > max_length + 1 or (len(tail) == max_length + 1 and not tail.endswith(b"\r")):
        out.append("TOO LONG")
    return out


@SETTINGS
@given(st.lists(st.sampled_from([b"a", b"bc", b"\r", b"\n", b"\r\n", b" ", b"x" * 9]), max_size=60).map(b"".join),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=15), st.integers(0, 12))
def test_line_reader_chunking(stream, cuts, max_length):
    expected = reference_lines(stream, max_length)
    for mod in LINES.values():
        reader = mod.LineReader(max_length)
        got: list = []
        for piece in chunked(stream, cuts):
            reader.feed(piece)
            while True:
                try:
                    line = reader.readline()
                except mod.LineTooLong:
                    got.append("TOO LONG")
                    continue
                if line is None:
                    break
                got.append(line)
        assert got == expected


# -- smtp replies (the outbound client's parser) -------------------------------------------------------------

REPLY_SOUP = st.lists(st.sampled_from([b"2", b"5", b"0", b"9", b"250", b"-", b" ", b"5.1.1", b"2.0.0", b".", b"x",
                                       b"1234", b"\xff", b"\r"]), max_size=10).map(b"".join)


@SETTINGS
@given(st.one_of(REPLY_SOUP, st.binary(max_size=20)), st.integers(0, 999))
def test_reply_line(line, code):
    """parse_reply_line returns (code, last, text) or raises ReplySyntaxError; split_enhanced never raises and
    gives back a suffix of the text; both builds agree."""
    results = []
    for mod in SMTP.values():
        try:
            parsed = mod.parse_reply_line(line)
        except mod.ReplySyntaxError:
            parsed = "error"
        else:
            assert 200 <= parsed[0] <= 599 and line.endswith(parsed[2])
        enhanced, rest = mod.split_enhanced(line, code)
        assert line.endswith(rest) and (not enhanced or line.startswith(enhanced.encode()))
        results.append((parsed, enhanced, rest))
    assert results[0] == results[1]


# -- data: dot-stuffing in parts, CRLF normalization ------------------------------------------------------------

@SETTINGS
@given(BODY, st.booleans())
def test_stuffing_parts_and_normalization(body, after_cr):
    results = []
    for mod in DATA.values():
        assert b"".join(bytes(p) for p in mod.dot_stuff_parts(body)) == mod.dot_stuff(body)
        normalized, bare = mod.crlf_normalize(body, after_cr)
        skip = 1 if after_cr and normalized[:1] == b"\n" else 0  # that LF ends the CR that ended the last chunk
        assert b"\n" not in normalized[skip:].replace(b"\r\n", b"")
        results.append((mod.dot_stuff(body), normalized, bare))
    assert results[0] == results[1]


# -- mime: the header-value parsers on their own ---------------------------------------------------------------

MIME = variants("mime")
VALUE_SOUP = st.lists(st.sampled_from([b"a", b"@", b"<", b">", b",", b";", b":", b'"', b"\\", b"(", b")", b" ",
                                       b"\t", b"\r\n ", b"=", b"/", b"*", b"'", b"text/plain", b"charset=utf-8",
                                       b"name*0*=utf-8''%41", b"=?utf-8?q?x?=", b"\xc3\xa9", b"\xff", b"\x00",
                                       b"example.org", b"group:", b"[1.2.3.4]"]), max_size=24).map(b"".join)


@SETTINGS
@given(st.one_of(VALUE_SOUP, st.binary(max_size=40)))
def test_mime_value_parsers(value):
    """parse_addresses, content_value (both forms), lex_address: never raise, both builds agree."""
    results = []
    for mod in MIME.values():
        results.append((mod.parse_addresses(value), mod.content_value(value, True), mod.content_value(value, False),
                        mod.lex_address(value)))
    assert results[0] == results[1]


@SETTINGS
@given(st.lists(st.sampled_from([b"Subject: x", b"From: a", b"\r\n", b"\n", b" cont", b"\tcont", b"no colon",
                                 b":", b"X-\xff: \xc3\xa9", b"\r", b"\r\n\r\n"]), max_size=16).map(b"".join),
       st.integers(0, 200), st.integers(0, 200))
def test_mime_header_fields(head, a, b):
    """fields() and field_spans() of any slice: both builds agree; spans are inside the slice, in order."""
    start, end = min(a, b, len(head)), min(max(a, b), len(head))
    results = []
    for mod in MIME.values():
        spans = mod.field_spans(head, start, end)
        last = start
        for _name, lo, hi in spans:
            assert last <= lo < hi <= end
            last = hi
        results.append((mod.fields(head, start, end, None), spans))
    assert results[0] == results[1]


# -- imap: the argument helpers ------------------------------------------------------------------------------------

IMAP = variants("imap")


@SETTINGS
@given(st.one_of(st.text(alphabet="0123456789*$:,xNIL%", min_size=1, max_size=12), st.binary(max_size=12),
                 st.lists(st.text(alphabet="ab1", min_size=1, max_size=3), max_size=2)), st.booleans())
def test_imap_argument_helpers(token, flag):
    """number, astring, nstring: a value or IMAPSyntaxError for any token the reader gives (an ASCII atom,
    a string, a list), the same in both builds."""
    results = []
    for mod in IMAP.values():
        got = []
        for fn, args in ((mod.number, (token, flag)), (mod.astring, (token, flag)), (mod.nstring, (token,))):
            try:
                got.append(fn(*args))
            except mod.IMAPSyntaxError as e:
                got.append(("error", e.text))
        results.append(got)
    assert results[0] == results[1]
