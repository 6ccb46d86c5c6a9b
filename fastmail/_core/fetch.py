"""FETCH responses for the common item lists, a batch at a time: message records in, response bytes out.

The items a mail client asks for when it syncs a mailbox (RFC 9051 §6.4.5, §7.5.2) -- UID, FLAGS,
INTERNALDATE, RFC822.SIZE, MODSEQ (RFC 7162) and ENVELOPE, BODY, BODYSTRUCTURE -- come straight from the
stored records: the message record (the JSON list of fastmail.store.records.message_record, read as
bytes) and, for the last three, the wire form rendered at delivery (fastmail.store.mime.wire).  Nothing
is decoded into Python objects; each response line is written into one buffer.

`render_batch()` returns None when a record is not in the layout it knows (another version, an escape it
does not handle, a date outside years 0-9999, a missing wire form): the caller then renders that batch
the general way (fastmail.proto.imap_fetch.Fetcher), which gives the same bytes.

One source, two builds (Cython pure-Python mode, typed by fetch.pxd): `s` and `o` are the bytes and
bytearray objects in the pure twin and pointers to their data when compiled.  No asyncio, no store.
"""

from __future__ import annotations

import cython

if cython.compiled:
    from cython.cimports.cpython.buffer import PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
    from cython.cimports.cpython.bytearray import PyByteArray_FromStringAndSize, PyByteArray_Resize
    from cython.cimports.cpython.bytes import PyBytes_FromStringAndSize
    from cython.cimports.libc.string import memcpy

# Item codes of the `order` argument (one byte each, in the client's order).
UID = 1
FLAGS = 2
INTERNALDATE = 3
RFC822_SIZE = 4
MODSEQ = 5
ENVELOPE = 6
BODY = 7
BODYSTRUCTURE = 8
CODES = {"UID": UID, "FLAGS": FLAGS, "INTERNALDATE": INTERNALDATE, "RFC822.SIZE": RFC822_SIZE, "MODSEQ": MODSEQ,
         "ENVELOPE": ENVELOPE, "BODY": BODY, "BODYSTRUCTURE": BODYSTRUCTURE}
WIRE_ITEMS = frozenset({ENVELOPE, BODY, BODYSTRUCTURE})

WIRE_VERSION = 1  # first byte of a wire value: version, then U32 BE lengths of ENVELOPE and BODY, then
# the three rendered values (ENVELOPE, BODY, BODYSTRUCTURE) back to back

_MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"
_LINE = 32  # "* <seq> FETCH (" and ")\r\n"
_ITEM = 48  # an item's name, number or date, and its separator


def wire_value(envelope: bytes, body: bytes, bodystructure: bytes) -> bytes:
    """The stored wire form of a message's ENVELOPE, BODY and BODYSTRUCTURE (rendered IMAP values)."""
    return (bytes((WIRE_VERSION,)) + len(envelope).to_bytes(4, "big") + len(body).to_bytes(4, "big")
            + envelope + body + bodystructure)


def item_order(items: list) -> bytes | None:
    """The codes of a FETCH item list (upper-cased str items), or None when one is not handled here."""
    out = bytearray()
    for item in items:
        if type(item) is not str or item not in CODES:
            return None
        out.append(CODES[item])
    return bytes(out)


def record_blob(value: bytes) -> bytes | None:
    """The blob id of a version-1 message record (hex digits, an even number of them), or None for another
    layout."""
    key = bytearray(12)
    return bytes(key) if _blob_into(value, key) >= 0 else None


# hex digit (either case) -> its value; 255 for any other byte
_UNHEX = bytes(c - 48 if 48 <= c <= 57 else c - 87 if 97 <= c <= 102 else c - 55 if 65 <= c <= 70 else 255
               for c in range(256))


def _blob_into(value: bytes, key: bytearray) -> int:
    """record_blob() into `key` (resized only when the id's length differs), decoded here byte by byte: no
    slice, str, bytes.fromhex or new object per message.  The id's length, or -1 for another layout."""
    s = value
    n = len(value)
    if n < 6 or s[0] != 91 or s[1] != 49 or s[2] != 44 or s[3] != 34:  # [1,"<blob hex>",size,date,[flags],modseq]
        return -1
    j = 4
    while j < n and s[j] != 34:
        j += 1
    if j >= n or (j - 4) % 2:
        return -1
    m = (j - 4) // 2
    if len(key) != m:
        if cython.compiled:
            PyByteArray_Resize(key, m)  # type: ignore[name-defined]  # noqa: F821
        else:
            key[:] = bytes(m)
    b = key
    table = _UNHEX  # held while its data is read
    t = table
    for k in range(m):
        hi = t[s[4 + 2 * k]]
        lo = t[s[5 + 2 * k]]
        if (hi | lo) > 15:
            return -1
        b[k] = hi * 16 + lo
    return m


def _copy(out: bytearray, pos, data: bytes, a, b) -> int:
    """data[a:b] into out at pos; the position after it."""
    if cython.compiled:
        o: cython.p_uchar = cython.cast(bytearray, out)
        s: cython.p_const_uchar = cython.cast(bytes, data)
        memcpy(o + pos, s + a, b - a)  # type: ignore[name-defined]  # noqa: F821
    else:
        out[pos: pos + b - a] = data[a:b]
    return pos + b - a


def _put(out: bytearray, pos, data, a, b) -> int:
    """_copy() from a wire value: its data pointer when compiled, the bytes-like object in the twin."""
    if cython.compiled:
        o: cython.p_uchar = cython.cast(bytearray, out)
        memcpy(o + pos, data + a, b - a)  # type: ignore[name-defined]  # noqa: F821
    else:
        out[pos: pos + b - a] = data[a:b]
    return pos + b - a


def _digits(out: bytearray, pos, value) -> int:
    """The decimal digits of value (>= 0) at pos; the position after them."""
    o = out
    k = 0
    v = value
    while True:
        k += 1
        v //= 10
        if v == 0:
            break
    end = pos + k
    v = value
    while k > 0:
        k -= 1
        o[pos + k] = 48 + v % 10
        v //= 10
    return end


def _two(out: bytearray, pos, value) -> int:
    o = out
    o[pos] = 48 + value // 10
    o[pos + 1] = 48 + value % 10
    return pos + 2


def _number(value: bytes, j, n) -> tuple:
    """The non-negative integer at value[j:] ended by "," or "]": (value, index of the end), or (-1, j)."""
    s = value
    v = 0
    k = j
    while k < n and 48 <= s[k] <= 57 and k - j < 18:
        v = v * 10 + (s[k] - 48)
        k += 1
    if k == j or k >= n or (s[k] != 44 and s[k] != 93):
        return -1, j
    return v, k


def _date(out: bytearray, pos, seconds) -> int:
    """date-time (RFC 9051 §9) of epoch seconds in UTC, quoted: "17-Jul-1996 02:44:25 +0000"; -1 for a
    year outside 0-9999.  Days to civil date: H. Hinnant's algorithm (proleptic Gregorian, as gmtime)."""
    o = out
    days = seconds // 86400
    secs = seconds - days * 86400
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    year = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    if month <= 2:
        year += 1
    if year < 0 or year > 9999:
        return -1
    o[pos] = 34
    pos = _two(out, pos + 1, day)
    o[pos] = 45
    m = (month - 1) * 3
    o[pos + 1] = _MONTHS[m]
    o[pos + 2] = _MONTHS[m + 1]
    o[pos + 3] = _MONTHS[m + 2]
    o[pos + 4] = 45
    pos = _two(out, pos + 5, year // 100)
    pos = _two(out, pos, year % 100)
    o[pos] = 32
    pos = _two(out, pos + 1, secs // 3600)
    o[pos] = 58
    pos = _two(out, pos + 1, secs // 60 % 60)
    o[pos] = 58
    pos = _two(out, pos + 1, secs % 60)
    return _copy(out, pos, b' +0000"', 0, 7)


def render_batch(pairs, wire_get, want: list, view, order: bytes, changedsince) -> tuple[bytes, int] | None:
    """FETCH responses for the messages of `pairs` that are in `want`.

    pairs: an iterable of (key, value), message records of one mailbox in key order (key: mailbox id U64 BE
    + uid U32 BE; a cursor placed on want[0]'s key will do: the walk stops after want[-1] or at another
    mailbox); wire_get: blob id -> stored wire value or None, when `order` has ENVELOPE/BODY/BODYSTRUCTURE
    (else None) -- bytes, or any object with the buffer protocol whose memory stays put while it lives (an
    LMDB buffers=True value inside its transaction: then only the value's header and the items asked for
    are read, straight into the output); want: the UIDs asked for (ascending, not empty); view: the
    session's UIDs (ascending, index + 1 is the sequence number; every wanted UID is in it); order: item
    codes; changedsince: only records with a greater MODSEQ are rendered (-1: all).  Returns (response bytes, how many wanted UIDs have a
    record), or None when a record or wire value is not in a layout handled here."""
    nwant = len(want)
    nview = len(view)
    norder = len(order)
    nflags = 0
    nwire = 0
    for k in range(norder):
        if order[k] == 2:  # FLAGS
            nflags += 1
        elif order[k] >= 6:  # ENVELOPE, BODY, BODYSTRUCTURE
            nwire += 1
    if nwire and wire_get is None or not nwant:
        return None
    wn = 0
    blob = bytearray(12)  # the blob id of the message at hand, decoded from its record (the msgwire key)
    last = want[nwant - 1]
    if not cython.compiled:
        prefix = bytearray(8)  # the mailbox id of the first key: the walk ends at another
    have_prefix = False
    if cython.compiled:
        w = cython.NULL  # the wire value's data
    else:
        w = b""  # the wire value
    cap = 4096
    if cython.compiled:
        out = PyByteArray_FromStringAndSize(cython.NULL, cap)  # type: ignore[name-defined]  # noqa: F821
    else:
        out = bytearray(cap)
    o = out
    pos = 0
    wi = 0
    vi = 0
    found = 0
    for pair in pairs:
        key = pair[0]
        value = pair[1]
        if len(key) != 12:
            return None
        s = key
        if not have_prefix:
            for k in range(8):
                prefix[k] = s[k]
            have_prefix = True
        else:
            same = True
            for k in range(8):
                if s[k] != prefix[k]:
                    same = False
            if not same:
                break
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
        if nwire:
            got = wire_get(blob) if _blob_into(value, blob) >= 0 else None
            if got is None:
                return None
            if cython.compiled:
                # the data pointer: `got` (kept until the next message) keeps it valid, so the view is
                # given back at once (no release to miss on the early returns below).  Not bytes-like:
                # TypeError, as len() raises in the twin.
                PyObject_GetBuffer(got, cython.address(wb), PyBUF_SIMPLE)  # type: ignore[name-defined]  # noqa: F821
                w = cython.cast(cython.p_const_uchar, wb.buf)  # type: ignore[name-defined]  # noqa: F821
                wn = wb.len  # type: ignore[name-defined]  # noqa: F821
                PyBuffer_Release(cython.address(wb))  # type: ignore[name-defined]  # noqa: F821
            else:
                w = got
                wn = len(got)
        # Room for the line: the fixed part, 48 bytes an item for its name, a number or a date and the
        # separator, the flags (shorter than the record) and the wire values (shorter than the stored one)
        # as many times as they are asked for.
        need = _LINE + norder * _ITEM + nflags * len(value) + nwire * wn
        if pos + need > cap:
            cap = 2 * (pos + need)
            if cython.compiled:
                PyByteArray_Resize(out, cap)  # type: ignore[name-defined]  # noqa: F821
            else:
                out += bytearray(cap - len(out))
            o = out
        # the record: [1,"<hex>",size,date,[flags],modseq]
        s = value
        n = len(value)
        if n < 16 or s[0] != 91 or s[1] != 49 or s[2] != 44 or s[3] != 34:
            return None
        j = 4
        while j < n and s[j] != 34:
            j += 1
        j += 1
        if j >= n or s[j] != 44:
            return None
        size, j = _number(value, j + 1, n)
        if size < 0 or s[j] != 44:
            return None
        date, j = _number(value, j + 1, n)
        if date < 0 or s[j] != 44 or j + 2 >= n or s[j + 1] != 91:
            return None
        flags_at = j + 2
        j = flags_at
        while j < n and s[j] != 93:  # strings up to the "]" ending the list; checked again when copied
            if s[j] == 34:
                j += 1
                while j < n and s[j] != 34:
                    j += 2 if s[j] == 92 else 1
            j += 1
        flags_end = j
        if j + 1 >= n or s[j + 1] != 44:
            return None
        modseq, j = _number(value, j + 2, n)
        if modseq < 0 or s[j] != 93 or j + 1 != n:
            return None
        if changedsince >= 0 and modseq <= changedsince:
            continue
        pos = _copy(out, pos, b"* ", 0, 2)
        pos = _digits(out, pos, vi + 1)
        pos = _copy(out, pos, b" FETCH (", 0, 8)
        for k in range(norder):
            if k:
                o[pos] = 32
                pos += 1
            code = order[k]
            if code == 1:  # UID
                pos = _copy(out, pos, b"UID ", 0, 4)
                pos = _digits(out, pos, uid)
            elif code == 2:  # FLAGS
                pos = _copy(out, pos, b"FLAGS (", 0, 7)
                pos = _flags(out, pos, value, flags_at, flags_end)
                if pos < 0:
                    return None
                o[pos] = 41
                pos += 1
            elif code == 3:  # INTERNALDATE
                pos = _copy(out, pos, b"INTERNALDATE ", 0, 13)
                pos = _date(out, pos, date)
                if pos < 0:
                    return None
            elif code == 4:  # RFC822_SIZE
                pos = _copy(out, pos, b"RFC822.SIZE ", 0, 12)
                pos = _digits(out, pos, size)
            elif code == 5:  # MODSEQ
                pos = _copy(out, pos, b"MODSEQ (", 0, 8)
                pos = _digits(out, pos, modseq)
                o[pos] = 41
                pos += 1
            else:
                pos = _wire(out, pos, w, wn, code)
                if pos < 0:
                    return None
        pos = _copy(out, pos, b")\r\n", 0, 3)
    if cython.compiled:
        return PyBytes_FromStringAndSize(cython.cast(cython.p_char, o), pos), found  # type: ignore[name-defined]  # noqa: F821
    return bytes(out[:pos]), found


def _flags(out: bytearray, pos, value: bytes, a, b) -> int:
    """The flags of a record's JSON list value[a:b] ('"\\\\Seen","$x"') as an IMAP list body ('\\Seen $x'),
    or -1 for anything but plain strings with "\\\\" escapes."""
    s = value
    o = out
    j = a
    first = True
    while j < b:
        if s[j] != 34:
            return -1
        if not first:
            o[pos] = 32
            pos += 1
        first = False
        j += 1
        while j < b and s[j] != 34:
            c = s[j]
            if c == 92:
                if j + 1 >= b or s[j + 1] != 92:
                    return -1
                j += 1
            o[pos] = c
            pos += 1
            j += 1
        if j >= b:
            return -1
        j += 1
        if j < b:
            if s[j] != 44:
                return -1
            j += 1
            if j >= b:
                return -1
    return pos


def _wire(out: bytearray, pos, wire, n, code) -> int:
    """The label and rendered value of ENVELOPE, BODY or BODYSTRUCTURE from a wire value (its n bytes at
    `wire`: a pointer when compiled, the bytes-like object in the twin); -1 when it is not a version this
    module reads."""
    s = wire
    if n < 9 or s[0] != 1:
        return -1
    le = (s[1] << 24) | (s[2] << 16) | (s[3] << 8) | s[4]
    lb = (s[5] << 24) | (s[6] << 16) | (s[7] << 8) | s[8]
    if 9 + le + lb > n:
        return -1
    if code == 6:  # ENVELOPE
        pos = _copy(out, pos, b"ENVELOPE ", 0, 9)
        return _put(out, pos, wire, 9, 9 + le)
    if code == 7:  # BODY
        pos = _copy(out, pos, b"BODY ", 0, 5)
        return _put(out, pos, wire, 9 + le, 9 + le + lb)
    pos = _copy(out, pos, b"BODYSTRUCTURE ", 0, 14)
    return _put(out, pos, wire, 9 + le + lb, n)
