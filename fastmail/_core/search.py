"""SEARCH SUBJECT / FROM / TO / CC / BCC answered from the stored ENVELOPE bytes (the `msgwire` database,
fastmail._core.fetch.wire_value), a batch at a time, without decoding records or index entries.

The match is the one of fastmail.proto.imap_search (a case-insensitive substring of the subject, RFC 2047
decoded, or of the address list as text: 'Name <mailbox@host>, ...'), decided here only where that is
plain ASCII work: a field whose strings are all quoted (printable ASCII, hence casefold() == ASCII lower
case) and whose subject or display names hold no "=?" (no encoded-word to decode).  Any other message is
"unsure": it is handed back with its ENVELOPE decoded (envelope()) for the caller's Python predicate.

`tests` is a list of (envelope index, needle) pairs that must all match: the index is 1 (subject), 2 (from),
5 (to), 6 (cc) or 7 (bcc); the needle is the search string casefold()-ed, UTF-8 encoded (a needle with
non-ASCII bytes never matches ASCII text, which is right: the casefold of ASCII text is ASCII).

One source, two builds (Cython pure-Python mode, typed by search.pxd), like fastmail._core.fetch.
"""

from __future__ import annotations

MALFORMED = -1
UNSURE = -2


def _value_end(wire: bytes, j, n) -> int:
    """The index after the IMAP value at wire[j:] (NIL, quoted string, literal or list), or -1."""
    s = wire
    if j >= n:
        return -1
    c = s[j]
    if c == 34:  # quoted
        j += 1
        while j < n and s[j] != 34:
            j += 2 if s[j] == 92 else 1
        return j + 1 if j < n else -1
    if c == 123:  # {n}\r\n + n bytes
        k = 0
        j += 1
        d = 0
        while j < n and 48 <= s[j] <= 57 and d < 12:
            k = k * 10 + (s[j] - 48)
            j += 1
            d += 1
        if d == 0 or j + 3 > n or s[j] != 125 or s[j + 1] != 13 or s[j + 2] != 10:
            return -1
        j += 3 + k
        return j if j <= n else -1
    if c == 40:  # list
        j += 1
        while j < n and s[j] != 41:
            if s[j] == 32:
                j += 1
                continue
            j = _value_end(wire, j, n)
            if j < 0:
                return -1
        return j + 1 if j < n else -1
    if c == 78 and j + 3 <= n and s[j + 1] == 73 and s[j + 2] == 76:  # NIL
        return j + 3
    return -1


def _lower_copy(out: bytearray, pos, wire: bytes, a, b, unescape) -> int:
    """wire[a:b] (a quoted string's contents, unescaped when `unescape`; a literal's bytes) with A-Z
    lowered into out at pos; the new pos."""
    s = wire
    o = out
    j = a
    while j < b:
        c = s[j]
        if c == 92 and unescape and j + 1 < b:
            j += 1
            c = s[j]
        elif 65 <= c <= 90:
            c += 32
        o[pos] = c
        pos += 1
        j += 1
    return pos


def _has_word(wire: bytes, a, b) -> bool:
    """An "=?" in wire[a:b] (a possible RFC 2047 encoded-word)."""
    s = wire
    j = a
    while j + 1 < b:
        if s[j] == 61 and s[j + 1] == 63:
            return True
        j += 1
    return False


def _has_byte(wire: bytes, a, b, c) -> bool:
    s = wire
    j = a
    while j < b:
        if s[j] == c:
            return True
        j += 1
    return False


def _charset(wire: bytes, a, b) -> int:
    """1 UTF-8, 2 ISO-8859-1, 3 US-ASCII for the charset name wire[a:b] (any case), else 0."""
    s = wire
    n = b - a
    if n > 10:
        return 0
    name = bytearray(n)
    for k in range(n):
        c = s[a + k]
        name[k] = c + 32 if 65 <= c <= 90 else c
    if name == b"utf-8" or name == b"utf8":
        return 1
    if name == b"iso-8859-1" or name == b"latin1" or name == b"latin-1" or name == b"iso8859-1":
        return 2
    if name == b"us-ascii" or name == b"ascii":
        return 3
    return 0


def _b64(v) -> int:
    if 65 <= v <= 90:
        return v - 65
    if 97 <= v <= 122:
        return v - 71
    if 48 <= v <= 57:
        return v + 4
    if v == 43:
        return 62
    if v == 47:
        return 63
    return -1


def _hex(v) -> int:
    if 48 <= v <= 57:
        return v - 48
    if 65 <= v <= 70:
        return v - 55
    if 97 <= v <= 102:
        return v - 87
    return -1


def _decode_copy(out: bytearray, pos, wire: bytes, a, b) -> int:
    """wire[a:b] (no backslash escapes) with its RFC 2047 encoded-words decoded as
    fastmail.proto.imap_search.decode_words does, A-Z lowered, bytes of non-ASCII characters kept (UTF-8) or
    written as 0x80 (other charsets); the new pos, or UNSURE wherever decode_words might do anything
    else (a charset other than UTF-8 / ISO-8859-1 / US-ASCII, a word that is not strictly well formed,
    a "?=" outside a word, unusual space between words, the ISO-8859-1 sharp s that casefolds to "ss")."""
    s = wire
    o = out
    j = a
    while j < b:
        c = s[j]
        if c == 63 and j + 1 < b and s[j + 1] == 61:
            return UNSURE
        if c != 61 or j + 1 >= b or s[j + 1] != 63:
            if 65 <= c <= 90:
                c += 32
            o[pos] = c
            pos += 1
            j += 1
            continue
        # =?charset?enc?payload?=
        k = j + 2
        while k < b and s[k] != 63:
            if s[k] <= 32 or s[k] >= 127 or s[k] == 42:
                return UNSURE
            k += 1
        if k >= b or k == j + 2:
            return UNSURE
        cs = _charset(wire, j + 2, k)
        if cs == 0 or k + 2 >= b or s[k + 2] != 63:
            return UNSURE
        enc = s[k + 1] | 32
        k += 3
        pa = k
        while k < b and s[k] != 63:
            if s[k] <= 32 or s[k] >= 127:
                return UNSURE
            k += 1
        if k + 1 >= b or s[k + 1] != 61:
            return UNSURE
        pb = k
        start = pos
        if enc == 98:  # B: canonical padding only, as binascii decodes it after decode_words pads it
            m = pb
            while m > pa and s[m - 1] == 61:
                m -= 1
            size = m - pa
            total = (pb - pa) + (-(pb - pa)) % 4
            if size % 4 == 1 or total - size != (-size) % 4:
                return UNSURE
            acc = 0
            bits = 0
            for q in range(pa, m):
                v = _b64(s[q])
                if v < 0:
                    return UNSURE
                acc = ((acc << 6) | v) & 0xFFFFFF
                bits += 6
                if bits >= 8:
                    bits -= 8
                    o[pos] = (acc >> bits) & 0xFF
                    pos += 1
        elif enc == 113:  # Q
            q = pa
            while q < pb:
                v = s[q]
                if v == 95:
                    v = 32
                elif v == 61:
                    if q + 2 >= pb:
                        return UNSURE
                    hi = _hex(s[q + 1])
                    lo = _hex(s[q + 2])
                    if hi < 0 or lo < 0:
                        return UNSURE
                    v = hi * 16 + lo
                    q += 2
                o[pos] = v
                pos += 1
                q += 1
        else:
            return UNSURE
        for q in range(start, pos):
            v = o[q]
            if 65 <= v <= 90:
                o[q] = v + 32
            elif v >= 128 and cs != 1:
                if cs == 2 and v == 0xDF:
                    return UNSURE
                o[q] = 128
        j = pb + 2
        # white space between two words goes (RFC 2047 §6.2): spaces and tabs only here
        m = j
        while m < b and (s[m] == 32 or s[m] == 9):
            m += 1
        if m < b and (s[m] < 32 or s[m] >= 127):
            return UNSURE
        if m > j and m + 1 < b and s[m] == 61 and s[m + 1] == 63:
            j = m
    return pos


def _string(out: bytearray, pos, wire: bytes, j, e, words) -> int:
    """The string value wire[j:e] (quoted or literal) as search text into out at pos: lowered, with
    encoded-words decoded when `words`; the new pos, or UNSURE."""
    s = wire
    if s[j] == 34:
        if _has_byte(wire, j + 1, e - 1, 92):
            if words and _has_word(wire, j + 1, e - 1):
                return UNSURE
            return _lower_copy(out, pos, wire, j + 1, e - 1, True)
        a = j + 1
        b = e - 1
    else:
        a = j + 1
        while s[a] != 10:
            a += 1
        a += 1
        b = e
    if words and _has_word(wire, a, b):
        return _decode_copy(out, pos, wire, a, b)
    return _lower_copy(out, pos, wire, a, b, False)


def _nonempty(wire: bytes, j, e) -> bool:
    """The string value wire[j:e] (quoted or literal) is not empty."""
    s = wire
    if s[j] == 34:
        return e - j > 2
    k = j + 1
    while s[k] != 10:
        k += 1
    return e > k + 1


def _contains(out: bytearray, n, needle: bytes) -> bool:
    o = out
    t = needle
    m = len(needle)
    if m == 0:
        return True
    i = 0
    while i + m <= n:
        if o[i] == t[0]:
            k = 1
            while k < m and o[i + k] == t[k]:
                k += 1
            if k == m:
                return True
        i += 1
    return False


def _address_text(out: bytearray, wire: bytes, j, n) -> int:
    """The address list at wire[j:] as the lowered text 'name <mailbox@host>, ...' in out; its length,
    MALFORMED, or UNSURE."""
    s = wire
    o = out
    pos = 0
    items = 0
    if j >= n or s[j] != 40:
        return MALFORMED
    j += 1
    while j < n and s[j] != 41:
        if s[j] == 32:
            j += 1
            continue
        if s[j] != 40:
            return MALFORMED
        j += 1
        # (name adl mailbox host): where each string value starts and ends, -1 for NIL
        na = nb = ma = mb = ha = hb = -1
        for f in range(4):
            while j < n and s[j] == 32:
                j += 1
            if j >= n:
                return MALFORMED
            e = _value_end(wire, j, n)
            if e < 0:
                return MALFORMED
            if s[j] == 34 or s[j] == 123:
                if f == 0:
                    na = j
                    nb = e
                elif f == 2:
                    ma = j
                    mb = e
                elif f == 3:
                    ha = j
                    hb = e
            elif s[j] != 78:
                return MALFORMED
            j = e
        while j < n and s[j] == 32:
            j += 1
        if j >= n or s[j] != 41:
            return MALFORMED
        j += 1
        if pos + 6 + (nb - na) + (mb - ma) + (hb - ha) > len(out):
            return MALFORMED  # cannot happen: the text is shorter than the value
        # the strings written where they go, then dropped again when empty (Python's truth test)
        mark = pos
        if items:
            o[pos] = 44
            o[pos + 1] = 32
            pos += 2
        if na >= 0:
            pos = _string(out, pos, wire, na, nb, True)
            if pos < 0:
                return pos
        has_name = na >= 0 and _nonempty(wire, na, nb)  # the name as written, before decoding
        if has_name:
            o[pos] = 32
            o[pos + 1] = 60
            pos += 2
        addr_at = pos
        if ma >= 0:
            pos = _string(out, pos, wire, ma, mb, False)
            if pos < 0:
                return pos
        has_addr = pos > addr_at
        if has_addr and ha >= 0:
            o[pos] = 64
            host_at = pos + 1
            pos = _string(out, host_at, wire, ha, hb, False)
            if pos < 0:
                return pos
            if pos == host_at:
                pos -= 1  # an empty host: the mailbox alone
        if has_name and has_addr:
            o[pos] = 62
            pos += 1
        elif has_name:
            pos -= 2  # no address: the name alone
        elif not has_addr:
            pos = mark  # nothing from this address
        if has_name or has_addr:
            items += 1
    if j >= n:
        return MALFORMED
    return pos


def _envelope_bounds(wire: bytes) -> tuple:
    """(start, end) of the ENVELOPE inside a wire value, or (-1, -1) for another layout."""
    s = wire
    n = len(wire)
    if n < 9 or s[0] != 1:
        return -1, -1
    le = (s[1] << 24) | (s[2] << 16) | (s[3] << 8) | s[4]
    lb = (s[5] << 24) | (s[6] << 16) | (s[7] << 8) | s[8]
    if 9 + le + lb > n or le < 2 or s[9] != 40:
        return -1, -1
    return 9, 9 + le


def _special(out: bytearray, n) -> bool:
    """A character whose casefold() holds ASCII letters (U+00DF, U+0130, U+0149, U+017F, U+01F0,
    U+1E96-U+1E9E, U+212A, U+FB00-U+FB06; found by a scan of every code point) may be in the UTF-8 text
    (checked by its first two bytes, more often than needed)."""
    o = out
    for i in range(n - 1):
        c = o[i]
        if c >= 0xC3:
            d = o[i + 1]
            if ((c == 0xC3 and d == 0x9F) or (c == 0xC4 and d == 0xB0) or (c == 0xC5 and (d == 0x89 or d == 0xBF))
                    or (c == 0xC7 and d == 0xB0) or (c == 0xE1 and d == 0xBA) or (c == 0xE2 and d == 0x84)
                    or (c == 0xEF and d == 0xAC)):
                return True
    return False


def match(out: bytearray, wire: bytes, field, needle: bytes) -> int:
    """1 or 0: whether envelope field `field` of the wire value holds `needle`; UNSURE when the Python
    predicate must decide, MALFORMED for a wire value not in this layout.  `out`: scratch of at least
    len(wire) bytes."""
    a, b = _envelope_bounds(wire)
    if a < 0 or len(out) < b - a:
        return MALFORMED
    s = wire
    j = a + 1
    for _ in range(field):
        j = _value_end(wire, j, b)
        if j < 0 or j >= b or s[j] != 32:
            return MALFORMED
        j += 1
    e = _value_end(wire, j, b)
    if e < 0:
        return MALFORMED
    if s[j] == 78:
        return 0  # NIL: no field matches nothing
    if field == 1:
        if s[j] != 34 and s[j] != 123:
            return MALFORMED
        n = _string(out, 0, wire, j, e, True)
    else:
        n = _address_text(out, wire, j, e)
    if n < 0:
        return n
    # Non-ASCII text: an ASCII needle is found in its ASCII runs (lowered), unless a character of it
    # casefolds to ASCII letters; a non-ASCII needle is left to Python's casefold().
    o = out
    for i in range(n):
        if o[i] >= 128:
            if not _ascii(needle) or _special(out, n):
                return UNSURE
            break
    return 1 if _contains(out, n, needle) else 0


def _ascii(data: bytes) -> bool:
    t = data
    for i in range(len(data)):
        if t[i] >= 128:
            return False
    return True


def _py_value(wire: bytes, j, n) -> tuple:
    """(the Python value of the IMAP value at wire[j:], the index after it); as mime.analyze() has it."""
    s = wire
    c = s[j]
    if c == 34:
        e = _value_end(wire, j, n)
        out = bytearray(e - j)
        k = j + 1
        p = 0
        while k < e - 1:
            if s[k] == 92:
                k += 1
            out[p] = s[k]
            p += 1
            k += 1
        return out[:p].decode("ascii"), e
    if c == 123:
        e = _value_end(wire, j, n)
        k = j + 1
        while s[k] != 125:
            k += 1
        return wire[k + 3: e].decode("utf-8"), e
    if c == 40:
        items = []
        j += 1
        while s[j] != 41:
            if s[j] == 32:
                j += 1
                continue
            v, j = _py_value(wire, j, n)
            items.append(v)
        return items, j + 1
    return None, j + 3


def field(wire: bytes, index) -> object:
    """Envelope field `index` of a wire value as mime.analyze() has it (a str, a list of addresses, None);
    MALFORMED (an int) for another layout."""
    a, b = _envelope_bounds(wire)
    if a < 0:
        return MALFORMED
    s = wire
    j = a + 1
    for _ in range(index):
        j = _value_end(wire, j, b)
        if j < 0 or j >= b or s[j] != 32:
            return MALFORMED
        j += 1
    e = _value_end(wire, j, b)
    if e < 0:
        return MALFORMED
    try:
        v = _py_value(wire, j, e)
    except UnicodeDecodeError:
        return MALFORMED
    return v[0]


def envelope(wire: bytes) -> list | None:
    """The ENVELOPE of a wire value as mime.analyze()'s "envelope" list, or None for another layout."""
    a, b = _envelope_bounds(wire)
    if a < 0 or _value_end(wire, a, b) != b:
        return None
    try:
        v, _ = _py_value(wire, a, b)
    except (UnicodeDecodeError, IndexError):
        return None
    if type(v) is not list or len(v) != 10:
        return None
    return v


def search_batch(pairs, wire_get, want: list, view, tests: list) -> tuple | None:
    """The messages of `pairs` in `want` whose ENVELOPE passes every test.

    pairs, wire_get, want, view: as fastmail._core.fetch.render_batch.  Returns (hits, unsure, found):
    hits, the (sequence number, uid, modseq) of messages decided here to match; unsure, the (sequence
    number, uid, modseq, values) of those the caller must decide (no test failed here), values holding
    each test's envelope field (field()); found, how many wanted UIDs have a record.  None when a record or wire value is not in a layout handled here."""
    nwant = len(want)
    nview = len(view)
    ntests = len(tests)
    if not nwant or wire_get is None:
        return None
    last = want[nwant - 1]
    prefix = b""
    hits = []
    unsure = []
    cap = 1024
    buf = bytearray(cap)
    wi = 0
    vi = 0
    found = 0
    for pair in pairs:
        key = pair[0]
        value = pair[1]
        if len(key) != 12:
            return None
        if not prefix:
            prefix = key[:8]
        elif key[:8] != prefix:
            break
        s = key
        uid = (s[8] << 24) | (s[9] << 16) | (s[10] << 8) | s[11]
        if uid > last:
            break
        wu = want[wi]
        while wu < uid:
            wi += 1
            wu = want[wi]
        if wu != uid:
            continue
        found += 1
        while vi < nview and view[vi] < uid:
            vi += 1
        if vi >= nview or view[vi] != uid:
            return None
        # the record: [1,"<hex>",size,date,[flags],modseq]: the blob id and the modseq at the end
        s = value
        n = len(value)
        if n < 16 or s[0] != 91 or s[1] != 49 or s[2] != 44 or s[3] != 34 or s[n - 1] != 93:
            return None
        j = 4
        while j < n and s[j] != 34:
            j += 1
        if j >= n or (j - 4) % 2:
            return None
        try:
            blob = bytes.fromhex(value[4:j].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return None
        k = n - 2
        modseq = 0
        mult = 1
        while k > j and 48 <= s[k] <= 57 and n - 2 - k < 18:
            modseq += (s[k] - 48) * mult
            mult *= 10
            k -= 1
        if k == n - 2 or s[k] != 44:
            return None
        w = wire_get(blob)
        if w is None:
            return None
        w = bytes(w)
        if len(w) > cap:
            cap = 2 * len(w)
            buf = bytearray(cap)
        verdict = 1
        for t in range(ntests):
            test = tests[t]
            r = match(buf, w, test[0], test[1])
            if r == MALFORMED:
                return None
            if r == 0:
                verdict = 0
                break
            if r == UNSURE:
                verdict = UNSURE
        if verdict == 1:
            hits.append((vi + 1, uid, modseq))
        elif verdict == UNSURE:
            values = []
            for t in range(ntests):
                v = field(w, tests[t][0])
                if type(v) is int:
                    return None
                values.append(v)
            unsure.append((vi + 1, uid, modseq, values))
    return hits, unsure, found
