"""MIME scanning for the message store: bytes in, offsets and tokens out.

The primitives that fastmail/store/mime.py builds ENVELOPE, BODYSTRUCTURE and the section map from:

- scan_header: where a header block ends (RFC 5322 §2.1: at the first empty line), or where a MIME
  boundary line cuts it short (RFC 2046 §5.1.1).
- find_boundary: the next line that starts with "--" + one of the active boundaries.
- fields / field_spans: the header fields of a block (RFC 5322 §2.2), unfolded (§2.2.3) or as raw spans.
- lex_address: the lexical tokens of a structured address field (RFC 5322 §3.2: atoms, quoted strings,
  comments, domain literals, specials).
- content_value: "type/subtype; name=value; ..." of Content-Type (RFC 2045 §5.1) and Content-Disposition
  (RFC 2183 §2); RFC 2231 parameters come out as written (name*0*, charset'lang'%XX...).
- count_lines: LF count of a span (the body-fld-lines of RFC 3501 §7.4.2).

Everything is offsets into one bytes object; no function copies a body.  Nothing here raises on bad input:
broken input gives a best-effort answer (a header with no empty line runs to the end; an unterminated
quoted string or comment runs to the end of the value; a field line with no colon is skipped).

Boundary lines follow RFC 2046 §5.1.1 and Dovecot: a line matches when it starts with "--" followed by a
boundary (the rest of the line is not checked: the RFC's note to implementors asks for a prefix match);
when several active boundaries match, the longest wins, and among equal ones the innermost.  The line is
a close delimiter when "--" follows the boundary.  The line break before a boundary line belongs to the
boundary, not to the part before it.

Lines end in LF (CRLF or a bare LF); a bare CR is not a line end.
"""

from __future__ import annotations

import cython

# Token kinds of lex_address.
ATOM = 0  # run of atext (dots included, so a dot-atom is one token; 8-bit bytes count as atext)
QUOTED = 1  # quoted-string content, quotes removed, quoted-pairs resolved
COMMENT = 2  # comment content, outer parentheses removed, quoted-pairs resolved, nested ones kept
LITERAL = 3  # domain literal, brackets kept
SPECIAL = 4  # one of < > @ , ; : ) ]


def _next_line(buf: bytes, pos, end):
    """Offset of the line after the one at pos (end when that line has no LF)."""
    lf = buf.find(b"\n", pos, end)
    return end if lf < 0 else lf + 1


def _strip_nl(buf: bytes, lo, pos):
    """pos, moved back over the line break (LF or CRLF) that ends just before it, not below lo."""
    p = buf
    if pos > lo and p[pos - 1] == 10:
        pos -= 1
        if pos > lo and p[pos - 1] == 13:
            pos -= 1
    return pos


def _boundary_at(buf: bytes, pos, end, bounds: list):
    """If the line at pos is a boundary line for one of bounds: index * 2 + (1 if close delimiter); else -1."""
    p = buf
    if pos + 2 > end or p[pos] != 45 or p[pos + 1] != 45:
        return -1
    s = pos + 2
    le = buf.find(b"\n", s, end)
    if le < 0:
        le = end
    if le > s and p[le - 1] == 13:
        le -= 1
    ce = le
    if ce - s > 2 and p[ce - 1] == 45 and p[ce - 2] == 45:
        ce -= 2  # "--boundary--": compare without the closing dashes
    best = -1
    best_len = -1
    k = len(bounds) - 1
    while k >= 0:  # innermost first: it wins a tie
        b = bounds[k]
        bl = len(b)
        if best_len < bl <= ce - s and buf.startswith(b, s):
            best = k
            best_len = bl
            if bl == ce - s:
                break
        k -= 1
    if best < 0:
        return -1
    q = s + best_len
    if le - q >= 2 and p[q] == 45 and p[q + 1] == 45:
        return best * 2 + 1
    return best * 2


def scan_header(buf: bytes, start, end, bounds: list) -> tuple:
    """Find the end of the header block that starts at buf[start] and runs at most to end.

    Returns (fields_end, body_start, bidx, bclose, bnext):
    - normally the block ends with an empty line: fields_end is where that line starts, body_start where
      the body starts (after it), bidx = -1;
    - when a line matching one of bounds comes first, the part ends there with no body: fields_end and
      body_start are both where the part ends (before the line break preceding the boundary line), bidx is
      the index of the matched boundary, bclose 1 for a close delimiter, bnext the offset after that line;
    - with neither, the whole rest is header: fields_end = body_start = end, bidx = -1.
    """
    p = buf
    n = len(buf)
    if end > n:
        end = n
    if start < 0:
        start = 0
    pos = start
    nb = len(bounds)
    while pos < end:
        c = p[pos]
        if c == 10:
            return (pos, pos + 1, -1, 0, pos + 1)
        if c == 13 and pos + 1 < end and p[pos + 1] == 10:
            return (pos, pos + 2, -1, 0, pos + 2)
        if c == 45 and nb > 0:
            r = _boundary_at(buf, pos, end, bounds)
            if r >= 0:
                pe = _strip_nl(buf, start, pos)
                return (pe, pe, r >> 1, r & 1, _next_line(buf, pos, end))
        lf = buf.find(b"\n", pos, end)
        if lf < 0:
            break
        pos = lf + 1
    if start > end:
        end = start
    return (end, end, -1, 0, end)


def find_boundary(buf: bytes, pos, end, bounds: list) -> tuple:
    """Find the first line at or after pos (a line start) that matches one of bounds.

    Returns (part_end, bidx, bclose, bnext): part_end is where the part before the line ends (the line
    break before the boundary line belongs to the boundary), bidx the index in bounds of the matched
    boundary, bclose 1 for a close delimiter ("--boundary--"), bnext the offset after the boundary line.
    With no match: (end, -1, 0, end).
    """
    n = len(buf)
    if end > n:
        end = n
    if pos < 0:
        pos = 0
    if pos > end:
        pos = end
    if len(bounds) == 0:
        return (end, -1, 0, end)
    start = pos
    r = _boundary_at(buf, pos, end, bounds)
    if r >= 0:
        return (pos, r >> 1, r & 1, _next_line(buf, pos, end))
    i = pos
    while True:
        j = buf.find(b"\n--", i, end)
        if j < 0:
            return (end, -1, 0, end)
        ls = j + 1
        r = _boundary_at(buf, ls, end, bounds)
        if r >= 0:
            return (_strip_nl(buf, start, ls), r >> 1, r & 1, _next_line(buf, ls, end))
        i = ls


def count_lines(buf: bytes, start, end):
    """Number of LF bytes in buf[start:end]: the line count IMAP reports for text and message parts."""
    if end <= start:
        return 0
    return buf.count(b"\n", start, end)


def _field_at(buf: bytes, pos, end, out: list):
    """Parse the field whose first line starts at pos (not a continuation line).

    Appends [name_end, colon, field_end, next] to out (name_end = -1 when the line is not a field: no
    colon, an empty name, or a name with a space or a control byte inside) and returns next, the offset
    of the line after the field's last continuation line.  field_end is where that last line's line break
    starts (or end).
    """
    p = buf
    i = pos
    name_end = -1
    bad = False
    while i < end:
        c = p[i]
        if c == 58:  # ":"
            break
        if c == 10 or c == 13:
            bad = True
            break
        if c == 32 or c == 9:
            if name_end < 0:
                name_end = i
        elif name_end >= 0 or c < 32 or c == 127:
            bad = True  # "From foo@bar Mon Jan 1 00:00:00" (mbox line) and binary junk
            break
        i += 1
    if i >= end:
        bad = True
    if not bad:
        if name_end < 0:
            name_end = i
        if name_end == pos:
            bad = True
    colon = i
    # The field runs over its continuation lines (RFC 5322 §2.2.3).
    q = pos if bad else colon
    while True:
        lf = buf.find(b"\n", q, end)
        if lf < 0:
            fe = end
            nxt = end
            break
        nxt = lf + 1
        if nxt < end and (p[nxt] == 32 or p[nxt] == 9):
            q = nxt
            continue
        fe = lf
        break
    out.append(-1 if bad else name_end)
    out.append(colon)
    out.append(fe)
    out.append(nxt)
    return nxt


def fields(buf: bytes, start, end, wanted) -> list:
    """The header fields in buf[start:end] as a list of (name, value).

    name is lowercased bytes; value is unfolded (every CR and LF removed, RFC 5322 §2.2.3) and stripped of
    surrounding spaces and tabs.  Lines that are not fields are skipped with their continuation lines.
    wanted: a set (or dict) of lowercase names to keep, or None for all; the order is the header's.
    """
    p = buf
    n = len(buf)
    if end > n:
        end = n
    if start < 0:
        start = 0
    res = []
    tmp = []
    pos = start
    while pos < end:
        c = p[pos]
        if c == 32 or c == 9:  # a continuation line with no field before it
            pos = _next_line(buf, pos, end)
            continue
        del tmp[:]
        nxt = _field_at(buf, pos, end, tmp)
        name_end = tmp[0]
        if name_end >= 0:
            name = buf[pos:name_end].lower()
            if wanted is None or name in wanted:
                colon = tmp[1]
                fe = tmp[2]
                value = buf[colon + 1 : fe]
                if buf.find(b"\n", colon, fe) >= 0 or buf.find(b"\r", colon, fe) >= 0:
                    value = value.translate(None, b"\r\n")
                res.append((name, value.strip(b" \t")))
        pos = nxt
    return res


def field_spans(buf: bytes, start, end) -> list:
    """The header fields in buf[start:end] as (name, field_start, field_next): name lowercased bytes, and
    buf[field_start:field_next] the field as written, continuation lines and final line break included."""
    p = buf
    n = len(buf)
    if end > n:
        end = n
    if start < 0:
        start = 0
    res = []
    tmp = []
    pos = start
    while pos < end:
        c = p[pos]
        if c == 32 or c == 9:
            pos = _next_line(buf, pos, end)
            continue
        del tmp[:]
        nxt = _field_at(buf, pos, end, tmp)
        name_end = tmp[0]
        if name_end >= 0:
            res.append((buf[pos:name_end].lower(), pos, nxt))
        pos = nxt
    return res


def _unescape(raw: bytes) -> bytes:
    """Resolve quoted-pairs: backslash + any byte -> that byte (a final lone backslash is dropped)."""
    p = raw
    n = len(raw)
    out = bytearray()
    k = 0
    while k < n:
        c = p[k]
        if c == 92:
            if k + 1 < n:
                out.append(p[k + 1])
            k += 2
        else:
            out.append(c)
            k += 1
    return bytes(out)


def _quoted(v: bytes, i, n, out: list):
    """Quoted string opening at v[i] == '"': append its content to out, return the offset after it."""
    p = v
    j = i + 1
    esc = False
    while j < n:
        c = p[j]
        if c == 92:
            esc = True
            j += 2
            continue
        if c == 34:
            break
        j += 1
    if j > n:
        j = n
    text = v[i + 1 : j]
    out.append(_unescape(text) if esc else text)
    return j + 1 if j < n else n


def _comment(v: bytes, i, n, out: list):
    """Comment opening at v[i] == '(' (nesting allowed): append its content, return the offset after it."""
    p = v
    j = i + 1
    depth = 1
    esc = False
    while j < n:
        c = p[j]
        if c == 92:
            esc = True
            j += 2
            continue
        if c == 40:
            depth += 1
        elif c == 41:
            depth -= 1
            if depth == 0:
                break
        j += 1
    if j > n:
        j = n
    text = v[i + 1 : j]
    out.append(_unescape(text) if esc else text)
    return j + 1 if j < n else n


def _skip_cfws(v: bytes, i, n):
    """Skip folding white space and comments (RFC 5322 §3.2.2)."""
    p = v
    while i < n:
        c = p[i]
        if c == 32 or c == 9 or c == 13 or c == 10:
            i += 1
        elif c == 40:
            depth = 1
            i += 1
            while i < n and depth > 0:
                c = p[i]
                if c == 92:
                    i += 1
                elif c == 40:
                    depth += 1
                elif c == 41:
                    depth -= 1
                i += 1
            if i > n:
                i = n
        else:
            break
    return i


def _token_end(v: bytes, i, n):
    """End of the RFC 2045 token at v[i]: bytes other than space, controls and tspecials (8-bit allowed)."""
    p = v
    while i < n:
        c = p[i]
        if c <= 32 or c == 127:
            break
        # tspecials: ( ) < > @ , ; : \ " / [ ] ? =
        if (
            c == 40 or c == 41 or c == 60 or c == 62 or c == 64 or c == 44 or c == 59 or c == 58
            or c == 92 or c == 34 or c == 47 or c == 91 or c == 93 or c == 63 or c == 61
        ):
            break
        i += 1
    return i


def lex_address(v: bytes) -> list:
    """Lexical tokens of a structured field value (RFC 5322 §3.2), as (kind, bytes) pairs.

    ATOM runs include dots and 8-bit bytes (RFC 6532), QUOTED and COMMENT give the content (quoted-pairs
    resolved), LITERAL the "[...]" domain literal, SPECIAL one of < > @ , ; : ) ].  Whitespace separates
    tokens and is dropped.  Unterminated quoted strings, comments and literals run to the end.
    """
    p = v
    n = len(v)
    res = []
    tmp = []
    i = 0
    while i < n:
        c = p[i]
        if c == 32 or c == 9 or c == 13 or c == 10:
            i += 1
        elif c == 34:
            del tmp[:]
            i = _quoted(v, i, n, tmp)
            res.append((1, tmp[0]))
        elif c == 40:
            del tmp[:]
            i = _comment(v, i, n, tmp)
            res.append((2, tmp[0]))
        elif c == 91:
            j = i + 1
            while j < n and p[j] != 93:
                if p[j] == 92:
                    j += 1
                j += 1
            if j >= n:
                j = n - 1
            res.append((3, v[i : j + 1]))
            i = j + 1
        elif c == 60 or c == 62 or c == 64 or c == 44 or c == 59 or c == 58 or c == 41 or c == 93:
            res.append((4, v[i : i + 1]))
            i += 1
        else:
            j = i + 1
            while j < n:
                c = p[j]
                if (
                    c == 32 or c == 9 or c == 13 or c == 10 or c == 34 or c == 40 or c == 41 or c == 60
                    or c == 62 or c == 64 or c == 44 or c == 59 or c == 58 or c == 91 or c == 93
                ):
                    break
                j += 1
            res.append((0, v[i:j]))
            i = j
    return res


def content_value(v: bytes, slash) -> tuple:
    """Parse a Content-Type (slash true: "type/subtype") or Content-Disposition ("type") value.

    Returns (type, subtype, params): type as written (b"" when missing), subtype as written or None when
    there is no "/", params a list of (name, value) in order, as written: a quoted value comes unquoted,
    RFC 2231 names keep their "*0*" suffixes and values their charset'language' prefix.  Lenient like the
    mail clients it has to read: an unquoted value that is not a single token (an encoded-word, a file
    name with spaces, "boundary=--=_x") runs to the next ";"; junk between parameters is skipped.
    """
    p = v
    n = len(v)
    tmp = []
    i = _skip_cfws(v, 0, n)
    j = _token_end(v, i, n)
    typ = v[i:j]
    sub = None
    i = _skip_cfws(v, j, n)
    if slash and i < n and p[i] == 47:
        i = _skip_cfws(v, i + 1, n)
        j = _token_end(v, i, n)
        sub = v[i:j]
        i = _skip_cfws(v, j, n)
    params = []
    while i < n:
        if p[i] != 59:
            j = v.find(b";", i)
            if j < 0:
                break
            i = j
        i = _skip_cfws(v, i + 1, n)
        j = _token_end(v, i, n)
        if j == i:
            continue
        name = v[i:j]
        i = _skip_cfws(v, j, n)
        if i >= n or p[i] != 61:
            continue
        i = _skip_cfws(v, i + 1, n)
        if i < n and p[i] == 34:
            del tmp[:]
            i = _quoted(v, i, n, tmp)
            params.append((name, tmp[0]))
            continue
        j = _token_end(v, i, n)
        k = _skip_cfws(v, j, n)
        if k < n and p[k] != 59:
            e = v.find(b";", k)
            if e < 0:
                e = n
            params.append((name, v[i:e].rstrip(b" \t")))
            i = e
        else:
            params.append((name, v[i:j]))
            i = k
    return (typ, sub, params)
