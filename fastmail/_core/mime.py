"""MIME scanning for the message store: bytes in, offsets and tokens out.

The primitives that fastmail/store/mime.py builds ENVELOPE, BODYSTRUCTURE and the section map from:

- scan_header: where a header block ends (RFC 5322 §2.1: at the first empty line), or where a MIME
  boundary line cuts it short (RFC 2046 §5.1.1).
- find_boundary: the next line that starts with "--" + one of the active boundaries.
- fields / field_spans: the header fields of a block (RFC 5322 §2.2), unfolded (§2.2.3) or as raw spans.
- lex_address / parse_addresses: the lexical tokens of a structured field (RFC 5322 §3.2: atoms, quoted
  strings, comments, domain literals, specials), and an address list (§3.4) as IMAP address structures.
- content_value: "type/subtype; name=value; ..." of Content-Type (RFC 2045 §5.1) and Content-Disposition
  (RFC 2183 §2); RFC 2231 parameters come out as written (name*0*, charset'lang'%XX...).
- count_lines: LF count of a span (the body-fld-lines of RFC 3501 §7.4.2).
- render: the way back, the IMAP wire form (RFC 3501 §4) of the nested lists built from all this.

Everything is offsets into one bytes object; no function copies a body.  Nothing here raises on bad input:
broken input gives a best-effort answer (a header with no empty line runs to the end; an unterminated
quoted string or comment runs to the end of the value; a field line with no colon is skipped).

Boundary lines follow RFC 2046 §5.1.1 and Dovecot: a line matches when it starts with "--" followed by a
boundary (the rest of the line is not checked: the RFC's note to implementors asks for a prefix match);
when several active boundaries match, the longest wins, and among equal ones the innermost.  The line is
a close delimiter when "--" follows the boundary.  The line break before a boundary line belongs to the
boundary, not to the part before it.

Lines end in LF (CRLF or a bare LF); a bare CR is not a line end.

Compiled, the byte searches are memchr/memcmp on the bytes' buffer; the pure twin uses bytes.find and
bytes.startswith (the `if cython.compiled` branches).  Both give the same answers.
"""

from __future__ import annotations

import cython

# Token kinds of lex_address.
ATOM = 0  # run of atext (dots included, so a dot-atom is one token; 8-bit bytes count as atext)
QUOTED = 1  # quoted-string content, quotes removed, quoted-pairs resolved
COMMENT = 2  # comment content, outer parentheses removed, quoted-pairs resolved, nested ones kept
LITERAL = 3  # domain literal, brackets kept
SPECIAL = 4  # one of < > @ , ; : ) ]


if cython.compiled:
    from cython.cimports.libc.string import memchr, memcmp


def _char_classes() -> bytes:
    """Byte classes: 1 = RFC 2045 token byte (8-bit allowed), 2 = atom byte of the address lexer (anything
    but white space, CR, LF and the specials that end an atom)."""
    table = bytearray(256)
    for c in range(256):
        if c > 32 and c != 127 and c not in b'()<>@,;:\\"/[]?=':
            table[c] |= 1
        if c not in b' \t\r\n"()<>@,;:[]':
            table[c] |= 2
    return bytes(table)


_CHARS = _char_classes()


def _lf(buf: bytes, pos, end):
    """Offset of the first LF in buf[pos:end], or -1."""
    if pos >= end:
        return -1
    if cython.compiled:
        p = buf
        r = memchr(p + pos, 10, end - pos)
        if r == cython.NULL:
            return -1
        return cython.cast(cython.p_const_uchar, r) - p
    else:
        return buf.find(b"\n", pos, end)


def _next_line(buf: bytes, pos, end):
    """Offset of the line after the one at pos (end when that line has no LF)."""
    lf = _lf(buf, pos, end)
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
    le = _lf(buf, s, end)
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
        if best_len < bl <= ce - s:
            if cython.compiled:
                q = b
                same = memcmp(p + s, q, bl) == 0
            else:
                same = buf.startswith(b, s)
            if same:
                best = k
                best_len = bl
                if bl == ce - s:
                    break
        k -= 1
    if best < 0:
        return -1
    s += best_len
    if le - s >= 2 and p[s] == 45 and p[s + 1] == 45:
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
    if start > end:
        start = end
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
        lf = _lf(buf, pos, end)
        if lf < 0:
            break
        pos = lf + 1
    return (end, end, -1, 0, end)


def find_boundary(buf: bytes, pos, end, bounds: list) -> tuple:
    """Find the first line at or after pos (a line start) that matches one of bounds.

    Returns (part_end, bidx, bclose, bnext): part_end is where the part before the line ends (the line
    break before the boundary line belongs to the boundary), bidx the index in bounds of the matched
    boundary, bclose 1 for a close delimiter ("--boundary--"), bnext the offset after the boundary line.
    With no match: (end, -1, 0, end).
    """
    p = buf
    n = len(buf)
    if end > n:
        end = n
    if pos < 0:
        pos = 0
    if pos > end:
        pos = end
    if len(bounds) == 0:
        return (end, -1, 0, end)
    r = _boundary_at(buf, pos, end, bounds)
    if r >= 0:
        return (pos, r >> 1, r & 1, _next_line(buf, pos, end))
    i = pos + 1
    while i < end:
        if cython.compiled:
            # memchr for "-" (absent from base64, rare in text), then look for LF "-" "-" around it.
            q = memchr(p + i, 45, end - i)
            if q == cython.NULL:
                break
            j = cython.cast(cython.p_const_uchar, q) - p
            if p[j - 1] != 10 or j + 1 >= end or p[j + 1] != 45:
                i = j + 1
                continue
        else:
            j = buf.find(b"\n--", i - 1, end)
            if j < 0:
                break
            j += 1
        r = _boundary_at(buf, j, end, bounds)
        if r >= 0:
            return (_strip_nl(buf, pos, j), r >> 1, r & 1, _next_line(buf, j, end))
        i = j + 2
    return (end, -1, 0, end)


def count_lines(buf: bytes, start, end):
    """Number of LF bytes in buf[start:end]: the line count IMAP reports for text and message parts."""
    if end <= start:
        return 0
    return buf.count(b"\n", start, end)


def _scan_fields(buf: bytes, start, end, wanted, spans) -> list:
    p = buf
    n = len(buf)
    if end > n:
        end = n
    if start < 0:
        start = 0
    res: list = []
    pos = start
    while pos < end:
        c = p[pos]
        if c == 32 or c == 9:  # a continuation line with no field before it
            pos = _next_line(buf, pos, end)
            continue
        # field-name ":" -- obs-syntax allows white space before the colon (RFC 5322 §4.5)
        i = pos
        name_end = -1
        bad = False
        while i < end:
            c = p[i]
            if c == 58:
                break
            if c == 10 or c == 13:
                bad = True
                break
            if c == 32 or c == 9:
                if name_end < 0:
                    name_end = i
            elif name_end >= 0 or c < 32 or c == 127:
                bad = True  # "From foo@bar Mon Jan 1 00:00:00 2024" (an mbox line), binary junk
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
        multi = False
        q = pos if bad else colon
        while True:
            lf = _lf(buf, q, end)
            if lf < 0:
                fe = end
                nxt = end
                break
            nxt = lf + 1
            if nxt < end and (p[nxt] == 32 or p[nxt] == 9):
                q = nxt
                multi = True
                continue
            fe = lf
            break
        if not bad:
            name = buf[pos:name_end].lower()
            if spans:
                res.append((name, pos, nxt))
            elif wanted is None or name in wanted:
                value = buf[colon + 1 : fe]
                if multi or b"\r" in value:
                    value = value.translate(None, b"\r\n")
                res.append((name, value.strip(b" \t")))
        pos = nxt
    return res


def fields(buf: bytes, start, end, wanted) -> list:
    """The header fields in buf[start:end] as a list of (name, value).

    name is lowercased bytes; value is unfolded (every CR and LF removed, RFC 5322 §2.2.3) and stripped of
    surrounding spaces and tabs.  Lines that are not fields are skipped with their continuation lines.
    wanted: a set (or dict) of lowercase names to keep, or None for all; the order is the header's.
    """
    return _scan_fields(buf, start, end, wanted, False)


def field_spans(buf: bytes, start, end) -> list:
    """The header fields in buf[start:end] as (name, field_start, field_next): name lowercased bytes, and
    buf[field_start:field_next] the field as written, continuation lines and final line break included."""
    return _scan_fields(buf, start, end, None, True)


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
    t = _CHARS
    while i < n and t[p[i]] & 1:
        i += 1
    return i


def _lex(v: bytes, kinds: list, texts: list) -> None:
    """Tokenize a structured field value into kinds (0 atom, 1 quoted, 2 comment, 3 literal, or the byte
    value of a special) and texts."""
    p = v
    t = _CHARS
    n = len(v)
    tmp: list = []
    i = 0
    while i < n:
        c = p[i]
        if c == 32 or c == 9 or c == 13 or c == 10:
            i += 1
        elif c == 34:
            del tmp[:]
            i = _quoted(v, i, n, tmp)
            kinds.append(1)
            texts.append(tmp[0])
        elif c == 40:
            del tmp[:]
            i = _comment(v, i, n, tmp)
            kinds.append(2)
            texts.append(tmp[0])
        elif c == 91:
            j = i + 1
            while j < n and p[j] != 93:
                if p[j] == 92:
                    j += 1
                j += 1
            if j >= n:
                j = n - 1
            kinds.append(3)
            texts.append(v[i : j + 1])
            i = j + 1
        elif c == 60 or c == 62 or c == 64 or c == 44 or c == 59 or c == 58 or c == 41 or c == 93:
            kinds.append(c)
            texts.append(v[i : i + 1])
            i += 1
        else:
            j = i + 1
            while j < n and t[p[j]] & 2:
                j += 1
            kinds.append(0)
            texts.append(v[i:j])
            i = j


def lex_address(v: bytes) -> list:
    """Lexical tokens of a structured field value (RFC 5322 §3.2), as (kind, bytes) pairs.

    ATOM runs include dots and 8-bit bytes (RFC 6532), QUOTED and COMMENT give the content (quoted-pairs
    resolved), LITERAL the "[...]" domain literal, SPECIAL one of < > @ , ; : ) ].  Whitespace separates
    tokens and is dropped.  Unterminated quoted strings, comments and literals run to the end.
    """
    kinds: list = []
    texts: list = []
    _lex(v, kinds, texts)
    res = []
    for k in range(len(kinds)):
        kind = kinds[k]
        res.append((kind if kind < 4 else 4, texts[k]))
    return res


MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"


def _words(kinds: list, texts: list, a, b, sep: bytes):
    """The atoms, quoted strings and literals of tokens a..b joined by sep (comments, specials dropped)."""
    words = []
    for k in range(a, b):
        kind = kinds[k]
        if kind == 0 or kind == 1 or kind == 3:
            words.append(texts[k])
    return sep.join(words)


def _addr_spec(kinds: list, texts: list, a, b, out: list) -> None:
    """Append local-part and domain (None when missing) of the addr-spec in tokens a..b to out."""
    at = a
    while at < b and kinds[at] != 64:
        at += 1
    local = _words(kinds, texts, a, at, b"")
    out.append(local if local else None)
    if at >= b:
        out.append(None)
        return
    e = at + 1
    while e < b and kinds[e] < 4:  # the domain ends at the next special ("a@b@c" -> "b")
        e += 1
    domain = _words(kinds, texts, at + 1, e, b"")
    out.append(domain if domain else None)


def _mailbox(kinds: list, texts: list, i, n, out: list):
    """Parse the mailbox at token i, up to the next "," or ";" outside an obs-route, and append its
    (name, route, mailbox, host) to out (nothing for an empty one).  Returns the index of the separator."""
    j = i
    angle = -1
    route = False
    while j < n:
        kind = kinds[j]
        if kind == 60:  # "<"
            if angle < 0:
                angle = j
                route = j + 1 < n and kinds[j + 1] == 64  # obs-route: "<@a,@b:user@host>"
        elif kind == 58 or kind == 62:
            route = False
        elif (kind == 44 or kind == 59) and not route:
            break
        j += 1
    nxt = j if j > i else i + 1
    spec: list = []
    name = None
    route_text = None
    if angle >= 0:  # name-addr = [display-name] angle-addr
        name = _words(kinds, texts, i, angle, b" ")
        if not name:
            name = None
        a = angle + 1
        e = a
        while e < j and kinds[e] != 62:
            e += 1
        if a < e and kinds[a] == 64:
            r = a
            while r < e and kinds[r] != 58:
                r += 1
            if r < e:
                parts = []
                for k in range(a, r):
                    if kinds[k] != 2:
                        parts.append(texts[k])
                route_text = b"".join(parts)
                a = r + 1
        _addr_spec(kinds, texts, a, e, spec)
    else:  # addr-spec, or something broken
        nwords = 0
        first = -1
        last_comment = -1
        has_at = False
        for k in range(i, j):
            kind = kinds[k]
            if kind == 2:
                last_comment = k
            elif kind < 4:
                nwords += 1
                if first < 0:
                    first = k
            elif kind == 64:
                has_at = True
        if nwords == 0 and not has_at:
            return nxt
        if last_comment >= 0:
            name = texts[last_comment]  # "user@host (Real Name)"
        if has_at:
            _addr_spec(kinds, texts, i, j, spec)
        elif nwords == 1 and kinds[first] != 1:
            spec.append(texts[first])  # "user" with no domain
            spec.append(None)
        else:  # a bare phrase: "Mail Delivery System", a quoted "Name"
            name = _words(kinds, texts, i, j, b" ")
            spec.append(None)
            spec.append(None)
    local = spec[0]
    domain = spec[1]
    out.append([name, route_text, local if local else MISSING_MAILBOX, domain if domain else MISSING_DOMAIN])
    return nxt


def parse_addresses(v: bytes) -> list:
    """An address-list value (RFC 5322 §3.4, with the obs-syntax of §4.4) as IMAP address structures.

    Each address is [name, route, mailbox, host] of bytes or None (RFC 3501 §7.4.2): a group is a
    [None, None, group-name, None] marker, its members, then [None, None, None, None].  The display name is
    the phrase with quotes removed and words joined by one space, or else the last comment of a bare
    addr-spec; the local part comes unquoted; a missing local part or domain is MISSING_MAILBOX /
    MISSING_DOMAIN (as Dovecot does: a None host would read as a group marker).  Empty list: no addresses.
    """
    kinds: list = []
    texts: list = []
    _lex(v, kinds, texts)
    out = []
    n = len(kinds)
    i = 0
    while i < n:
        kind = kinds[i]
        if kind >= 4 and kind != 60 and kind != 64:  # stray separator or junk between addresses
            i += 1
            continue
        # group = display-name ":" [group-list] ";" -- the name is followed by ":" before any other special
        j = i
        while j < n and kinds[j] < 4:
            j += 1
        if j < n and kinds[j] == 58:
            out.append([None, None, _words(kinds, texts, i, j, b" "), None])
            i = j + 1
            while i < n:
                kind = kinds[i]
                if kind >= 4 and kind != 60 and kind != 64:
                    i += 1
                    if kind == 59:
                        break
                    continue
                i = _mailbox(kinds, texts, i, n, out)
            out.append([None, None, None, None])
        else:
            i = _mailbox(kinds, texts, i, n, out)
    return out


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
    tmp: list = []
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


def _render_text(v: str, out: list) -> None:
    """A quoted string when v is printable ASCII (tab allowed), else a literal {n} of its UTF-8 bytes."""
    esc = False
    safe = True
    for ch in v:
        c = ord(ch)
        if c == 34 or c == 92:
            esc = True
        elif (c < 32 and c != 9) or c > 126:
            safe = False
            break
    if safe:
        out.append('"')
        if esc:
            v = v.replace("\\", "\\\\").replace('"', '\\"')
        out.append(v)
        out.append('"')
        return
    if "\x00" in v:
        v = v.replace("\x00", "\ufffd")  # CHAR8 excludes NUL
    try:
        n = len(v.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates (never from the parser) become "?"
        v = v.encode("utf-8", "replace").decode("utf-8")
        n = len(v.encode("utf-8"))
    out.append(f"{{{n}}}\r\n")
    out.append(v)


def _render_bytes(v: bytes, out: list) -> None:
    """bytes as a quoted string when printable ASCII (tab allowed), else as a literal of the bytes."""
    p = v
    n = len(v)
    safe = True
    for i in range(n):
        c = p[i]
        if (c < 32 and c != 9) or c > 126:
            safe = False
            break
    if safe:
        _render_text(v.decode("ascii"), out)
        return
    if b"\x00" in v:
        v = v.replace(b"\x00", b"\xef\xbf\xbd")
    out.append(f"{{{len(v)}}}\r\n")
    out.append(v.decode("utf-8", "surrogateescape"))  # encoded back byte for byte by render()


def _render(v, out: list) -> None:
    if v is None:
        out.append("NIL")
    elif type(v) is str:
        _render_text(v, out)
    elif type(v) is list or type(v) is tuple:
        out.append("(")
        n = len(v)
        i = 0
        # RFC 3501 §9: body-type-mpart = 1*body SP media-subtype, env-from = "(" 1*address ")":
        # a leading run of lists is written with no separator.
        while i < n:
            x = v[i]
            if type(x) is not list and type(x) is not tuple:
                break
            _render(x, out)
            i += 1
        while i < n:
            if i > 0:
                out.append(" ")
            _render(v[i], out)
            i += 1
        out.append(")")
    elif type(v) is int:
        out.append(str(v))
    elif type(v) is bytes:
        _render_bytes(v, out)
    elif type(v) is bytearray:
        _render_bytes(bytes(v), out)
    else:
        raise TypeError(f"cannot render {type(v).__name__} as IMAP data")


def render(value) -> bytes:
    """IMAP wire form (RFC 3501 §4, §9) of nested lists of str, bytes, int and None.

    None -> NIL, int -> digits, str -> a quoted string when it is printable ASCII (tab allowed; backslash
    and double quote escaped), else a literal {n}CRLF of its UTF-8 bytes (NUL as U+FFFD: CHAR8 has no NUL);
    bytes likewise, 8-bit bytes as they are; list or tuple -> "(" items ")" separated by one space, except
    that a leading run of lists (the bodies of a multipart, the addresses of an address list) is written
    with no separator, as the grammar's 1*body and 1*address require.
    """
    out: list = []
    _render(value, out)
    return "".join(out).encode("utf-8", "surrogateescape")
