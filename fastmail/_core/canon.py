"""DKIM's view of a message (RFC 6376 §3.4): the header fields as dkimpy splits them, relaxed forms.

Bytes in, bytes out, each the same as dkimpy's own code gives (fastmail.hygiene.message, .canon and their
tests compare them with dkimpy on generated input):

- `header_fields(head)`: dkimpy's `rfc822_parse` of a header section: [name, value] pairs, the value with
  its folding and with CRLF after each of its lines.  Lines end at LF (a CR right before it is part of the
  line end), the first empty line ends the section, a line starting with SP or HT continues the field above,
  a line with a colon after one or more octets of %x21-7E starts a field (the name is everything before
  the first colon after the line's first octet), a line starting with "From " (an mbox separator) is
  skipped.  Any other line raises ValueError(the line); a continuation before any field, IndexError (as
  dkimpy's parser does).  A section whose every line ends in CRLF — as SMTP delivers it — is split in one
  pass with each value a slice of `head`; any other (bare LF line ends, a "From " line, a last line
  without its end) goes to the general loop.
- `relaxed_body(body)`: §3.4.4 on a body with CRLF line ends: white space before a CRLF removed, each
  other run of SP/HT one SP, the empty lines at the end removed (a non-empty body ends in one CRLF), and a
  body left as a lone CRLF is empty (RFC 6376 errata 3133, as dkimpy).
- `signed_fields(...)`: the fields a signature selects, canonicalized and joined for its header hash.
- `without_b(value)`: a DKIM-Signature's value with b= emptied, as dkimpy's regular expression does it.
- `bare_lf(data)`: whether some LF in `data` has no CR before it (a body that needs its line ends made CRLF).
- `crlf_only(data)`: whether every CR and every LF in `data` is part of a CRLF.
- `relaxed_value(value)`: §3.4.2 on a field value: unfolded (each CRLF, then each LF left, removed), each
  run of SP/HT one SP, the white space at both ends removed (what bytes.strip() removes), then CRLF.
"""

from __future__ import annotations

import cython

if cython.compiled:
    from cython.cimports.cpython.bytes import PyBytes_FromStringAndSize
    from cython.cimports.libc.string import memchr


def header_fields(head: bytes) -> list:
    n = len(head)
    s = head
    fields: list = []
    pos = 0
    vstart = -1  # where the open field's value starts; -1: no field yet
    name = b""
    while pos < n:
        e = _find(head, 10, pos, n)  # the line's LF
        if e < 0 or e == pos or s[e - 1] != 13:
            return _header_fields_general(head)  # a bare LF, or no line end: the general loop
        end = e - 1  # the line without its CR LF
        if end == pos:  # the empty line: the section ends
            break
        c = s[pos]
        if c == 9 or c == 32:
            if vstart < 0:
                raise IndexError("a continuation line before the first header field")
        else:
            colon = _find(head, 58, pos + 1, end)
            if colon > 0 and _name_octets(s, pos, colon):
                if vstart >= 0:
                    fields.append([name, head[vstart:pos]])
                name = head[pos:colon]
                vstart = colon + 1
            else:
                return _header_fields_general(head)  # a "From " line, or an error the general loop raises
        pos = e + 1
    if vstart >= 0:
        fields.append([name, head[vstart:pos]])
    return fields


def _header_fields_general(head: bytes) -> list:
    """header_fields() of any section: the lines as re.split(b"\\r?\\n") gives them."""
    fields: list = []
    parts = head.split(b"\n")
    last = len(parts) - 1
    for i, line in enumerate(parts):
        if i < last and line.endswith(b"\r"):
            line = line[:len(line) - 1]  # the CR of a CRLF (re.split(b"\r?\n"): an LF takes the CR right before it)
        if not line:
            break
        if line[0] in (0x09, 0x20):
            if not fields:
                raise IndexError("a continuation line before the first header field")
            # (no negative index: compiled without wraparound)
            fields[len(fields) - 1][1] += line + b"\r\n"
            continue
        colon = line.find(b":", 1)
        if colon > 0 and _name_octets(line, 0, colon):
            fields.append([line[:colon], line[colon + 1:] + b"\r\n"])
        elif line.startswith(b"From "):
            pass
        else:
            raise ValueError(line)
    return fields


def _name_octets(s, a, b):
    """Every octet of s[a:b] is %x21-7E (dkimpy's field-name pattern [\\x21-\\x7e]+?)."""
    for i in range(a, b):
        c = s[i]
        if c < 0x21 or c > 0x7E:
            return False
    return True


def _find(data: bytes, c, a, b):
    """The first index of octet c in data[a:b], -1 when there is none."""
    if cython.compiled:
        if a >= b:
            return -1
        s: cython.p_const_uchar = cython.cast(bytes, data)
        found = memchr(s + a, c, b - a)  # type: ignore[name-defined]  # noqa: F821
        p: cython.p_const_uchar = cython.cast(cython.p_const_uchar, found)
        return -1 if p == cython.NULL else p - s
    return data.find(bytes((c,)), a, b)


def signed_fields(fields: list, lower_names: list, selected: list, relaxed: bool) -> bytes:
    """The fields a signature's h= list selects (`selected`, lower case), canonicalized and joined as the
    header hash takes them (RFC 6376 §3.7, §5.4.2): each name takes the bottom-most field of that name not
    taken yet (dkimpy's select_headers), a name with none left adds nothing; relaxed (§3.4.2) or simple
    (§3.4.1, the field as it is).  `fields`: [name, value] pairs as header_fields() gives them,
    `lower_names`: their names in lower case."""
    parts: list = []
    last: dict = {}
    n = len(fields)
    for h in selected:
        i = last.get(h, n)
        while i > 0:
            i -= 1
            if lower_names[i] == h:
                field = fields[i]
                name = field[0]
                if relaxed:
                    parts.append(name.lower().rstrip())
                    parts.append(b":")
                    parts.append(relaxed_value(field[1]))
                else:
                    parts.append(name)
                    parts.append(b":")
                    parts.append(field[1])
                break
        last[h] = i
    return b"".join(parts)


def without_b(value: bytes) -> bytes:
    """dkimpy's RE_BTAG.sub(b"\\1", value): each b= tag of a signature field's value emptied (RFC 6376
    §3.7).  A tag starts after ";" or white space with "b", white space, "="; its value is the longest run
    of white space and base64 characters, cut after its last base64 character, and a line end that is all
    that follows it at the end of `value` goes with it.  (\\s of a bytes pattern: SP, HT, LF, VT, FF, CR.)"""
    n = len(value)
    s = value
    out = bytearray(n)
    o = out
    j = 0
    i = 0
    while i < n:
        c = s[i]
        if (c == 59 or c == 32 or 9 <= c <= 13) and i + 1 < n and s[i + 1] == 98:  # ";" or \s, then "b"
            k = i + 2
            while k < n and (s[k] == 32 or 9 <= s[k] <= 13):
                k += 1
            if k < n and s[k] == 61:  # "="
                k += 1
                end = k
                r = k
                while r < n:
                    c = s[r]
                    if _is_b64(c):
                        end = r + 1
                    elif not (c == 32 or 9 <= c <= 13):
                        break
                    r += 1
                if end == n - 1 and s[end] == 10:
                    end = n
                elif end == n - 2 and s[end] == 13 and s[end + 1] == 10:
                    end = n
                while i < k:  # the tag's name and "=" stay
                    o[j] = s[i]
                    j += 1
                    i += 1
                i = end
                continue
        o[j] = c
        j += 1
        i += 1
    return _bytes(out, j)


def bare_lf(data: bytes) -> bool:
    """Some LF in data is not preceded by a CR (one memchr pass; the pure twin counts)."""
    if cython.compiled:
        n = len(data)
        s = data
        e = _find(data, 10, 0, n)
        while e >= 0:
            if e == 0 or s[e - 1] != 13:
                return True
            e = _find(data, 10, e + 1, n)
        return False
    return data.count(b"\n") != data.count(b"\r\n")


def crlf_only(data: bytes) -> bool:
    """Every CR in data is followed by an LF and every LF preceded by a CR: its line ends are CRLF and
    nothing else (one pass; the pure twin counts)."""
    if cython.compiled:
        n = len(data)
        s = data
        i = 0
        while i < n:
            c = s[i]
            if c == 13:
                if i + 1 >= n or s[i + 1] != 10:
                    return False
                i += 2
                continue
            if c == 10:
                return False  # an LF not right after a CR (a CR's LF is skipped above)
            i += 1
        return True
    crs = data.count(b"\r")
    return crs == data.count(b"\n") == data.count(b"\r\n")


def _is_b64(c) -> bool:
    return (65 <= c <= 90) or (97 <= c <= 122) or (48 <= c <= 57) or c == 43 or c == 47 or c == 61


def relaxed_body(body: bytes) -> bytes:
    n = len(body)
    s = body
    out = bytearray(n + 2)
    o = out
    j = 0
    i = 0
    while i < n:
        c = s[i]
        if c == 32 or c == 9:
            k = i + 1
            while k < n and (s[k] == 32 or s[k] == 9):
                k += 1
            if not (k + 1 < n and s[k] == 13 and s[k + 1] == 10):  # WSP before a CRLF goes
                o[j] = 32
                j += 1
            i = k
        else:
            o[j] = c
            j += 1
            i += 1
    # the empty lines at the end: one CRLF kept, or added to a body not ending in one
    k = j
    while k >= 2 and o[k - 2] == 13 and o[k - 1] == 10:
        k -= 2
    if k == j:
        o[j] = 13
        o[j + 1] = 10
        j += 2
    else:
        j = k + 2
    if j == 2 and o[0] == 13 and o[1] == 10:
        return b""
    return _bytes(out, j)


def relaxed_value(value: bytes) -> bytes:
    n = len(value)
    s = value
    out = bytearray(n + 2)
    o = out
    j = 0
    i = 0
    while i < n:
        c = s[i]
        if c == 13 and i + 1 < n and s[i + 1] == 10:  # a CRLF: unfolded
            i += 2
            continue
        if c == 10:  # an LF without its CR
            i += 1
            continue
        if c == 32 or c == 9:
            if j == 0 or o[j - 1] != 32:
                o[j] = 32
                j += 1
        else:
            o[j] = c
            j += 1
        i += 1
    # bytes.strip(): SP, HT, LF, VT, FF, CR at both ends
    a = 0
    while a < j and (o[a] == 32 or (9 <= o[a] <= 13)):
        a += 1
    while j > a and (o[j - 1] == 32 or (9 <= o[j - 1] <= 13)):
        j -= 1
    o[j] = 13
    o[j + 1] = 10
    return _bytes(out, j + 2, a)


def _bytes(out: bytearray, n, a=0):
    """out[a:n] as bytes."""
    if cython.compiled:
        o = cython.cast(cython.p_char, cython.cast(bytearray, out))
        return PyBytes_FromStringAndSize(o + a, n - a)  # type: ignore[name-defined]  # noqa: F821
    return bytes(out[a:n])
