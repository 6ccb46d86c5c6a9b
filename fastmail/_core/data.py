"""SMTP DATA content: end-of-data detection, dot-unstuffing, bare CR/LF accounting.

RFC 5321 §4.1.1.4: the mail data ends with the sequence CRLF "." CRLF, whose first CRLF ends the last
line of the message.  RFC 5321 §4.5.2: a line that begins with "." has had one "." prepended by the
sender (dot-stuffing); the receiver deletes it.  RFC 5321 §2.3.8: lines end in CRLF only, never a bare
CR or LF.

Exactness is the security core here (SMTP smuggling, CVE-2023-51764/51765/51766): only a *real*
CRLF "." CRLF ends the data.  ``\\n.\\n``, ``\\n.\\r\\n``, ``\\r\\n.\\n`` and ``\\r.\\r\\n`` are content.
A "." is deleted only at the start of a line that began after a real CRLF (or at the start of the
content); after a bare LF a leading "." is ordinary content, kept verbatim.  With normalize_bare_lf
every bare LF is stored as CRLF, so the stored message never holds a line end that a later hop could
read differently; a bare CR is kept as it is.  Every rule holds however the stream is chunked.

Decoder states, between two bytes of the stream:
    0 BOL     at the start of a line that began after a real CRLF (or at the start of the content)
    1 MID     inside a line; the previous byte is not a CR still waiting for its LF
    2 CR      the previous byte is a CR (already stored) whose LF may follow
    3 DOT     a BOL line began with "." (not stored: a stuffed dot, or the end mark)
    4 DOT_CR  a BOL line began with ".\\r"  -> LF ends the data
The MID state is the fast path: the run up to the next CRLF "." is found (compiled: memchr line by
line; interpreted: one bytes.find, and bytes.count for the bare-LF and bare-CR accounting) and stored in
one step, without a copy when it is the whole chunk.
"""

from __future__ import annotations

import cython

END_MARK = b".\r\n"
"""What follows the (dot-stuffed, CRLF-terminated) content to end the DATA command."""


class DataDecoder:
    """Decode one DATA stream (after the 354 reply) up to and including the end mark.

    Attributes (read-only): done (the end mark was seen), too_big (the decoded size passed max_size:
    nothing more is stored, the scan for the end goes on), bare_lf / bare_cr (a LF without its CR / a CR
    without its LF was seen), size (decoded size so far, also beyond max_size).
    """

    def __init__(self, max_size: int, normalize_bare_lf: bool = True) -> None:
        self.max_size = max_size
        self.normalize_bare_lf = normalize_bare_lf
        self.reset()

    def reset(self) -> None:
        """Forget everything: ready for a new DATA stream."""
        self._parts: list[bytes] = []
        self._state = 0  # BOL: the content starts as if after a CRLF
        self._nbare = 0
        self.done = False
        self.too_big = False
        self.bare_lf = False
        self.bare_cr = False
        self.size = 0

    def feed(self, data: bytes) -> int:
        """Consume content; return how many bytes of `data` were consumed.

        Fewer than len(data) only when the end mark was found: the rest belongs to the next command
        (RFC 2920 pipelining).  After the end, feed() consumes nothing.
        """
        if self.done:
            return 0
        n = len(data)
        p = 0
        state = self._state
        while p < n:
            if state == 1:  # MID: store everything up to the next CRLF "." in one step
                e = self._scan_run(data, p, n)
                state = self._state
                self._store(data, p, e)
                p = e + 1 if state == 3 else e  # DOT: the "." after the CRLF is consumed
            elif state == 0:  # BOL
                if data[p] == 46:  # "."
                    state = 3
                    p += 1
                else:
                    state = 1
            elif state == 2:  # CR
                if data[p] == 10:
                    self._append(b"\n")
                    state = 0
                    p += 1
                else:
                    self.bare_cr = True
                    state = 1
            elif state == 3:  # DOT
                if data[p] == 13:
                    state = 4
                    p += 1
                else:
                    # RFC 5321 §4.5.2: a "." followed by other characters was stuffed: delete it.
                    state = 1
            else:  # DOT_CR
                if data[p] == 10:
                    # CRLF "." CRLF: the end of the mail data (RFC 5321 §4.1.1.4).
                    self.done = True
                    self._state = state
                    return p + 1
                # ".\r" and not LF: the "." was stuffed, the CR is bare.
                self.bare_cr = True
                self._append(b"\r")
                state = 1
        self._state = state
        return n

    def _scan_run(self, data: bytes, p: cython.Py_ssize_t, n: cython.Py_ssize_t) -> cython.Py_ssize_t:
        """In state MID at data[p]: find the end e of the run to store as it is (up to and including the
        CRLF before a CRLF ".", or the end of the chunk).  Sets the state after the run, the number of
        bare LFs in it (self._nbare) and the bare_cr flag.  A LF at data[p] is bare (in MID the byte
        before p is not a CR waiting for its LF)."""
        if cython.compiled:
            # One memchr per line for its LF, one for a stray CR (until a bare CR has been seen).
            s: cython.p_const_char = data
            start = p  # start of the current line
            nbare = 0
            while True:
                q: cython.p_const_char = cython.cast(
                    cython.p_const_char, memchr(s + start, 10, n - start)  # type: ignore[name-defined]  # noqa: F821
                )
                if q == cython.NULL:
                    break
                k = q - s
                crlf = k > p and s[k - 1] == 13
                if not crlf:
                    nbare += 1
                if not self.bare_cr and k - crlf > start and memchr(  # type: ignore[name-defined]  # noqa: F821
                    s + start, 13, k - crlf - start
                ) != cython.NULL:
                    self.bare_cr = True
                start = k + 1
                if crlf:
                    if start == n:
                        self._state = 0  # BOL: the chunk ends in CRLF
                        self._nbare = nbare
                        return n
                    if s[start] == 46:
                        self._state = 3  # DOT
                        self._nbare = nbare
                        return start
            end = n
            if start < n and s[n - 1] == 13:
                end = n - 1
                self._state = 2  # CR, waiting for its LF in the next chunk
            else:
                self._state = 1
            if not self.bare_cr and end > start and memchr(  # type: ignore[name-defined]  # noqa: F821
                s + start, 13, end - start
            ) != cython.NULL:
                self.bare_cr = True
            self._nbare = nbare
            return n
        else:
            # bytes.find for the next CRLF ".", bytes.count for the bare LF / bare CR accounting.
            j = data.find(b"\r\n.", p)
            trail_cr = 0
            if j >= 0:
                e = j + 2
                self._state = 3  # DOT
            else:
                e = n
                if data[n - 1] == 13:
                    self._state = 2  # CR, waiting for its LF in the next chunk
                    trail_cr = 1
                elif n - p >= 2 and data[n - 1] == 10 and data[n - 2] == 13:
                    self._state = 0  # BOL: the chunk ends in CRLF
                else:
                    self._state = 1
            nbare = 0
            need_lf = self.normalize_bare_lf or not self.bare_lf
            if need_lf or not self.bare_cr:
                crlf = data.count(b"\r\n", p, e)
                if need_lf:
                    nbare = data.count(b"\n", p, e) - crlf
                if not self.bare_cr and data.count(b"\r", p, e) - crlf - trail_cr:
                    self.bare_cr = True
            self._nbare = nbare
            return e

    def _store(self, data: bytes, p: cython.Py_ssize_t, e: cython.Py_ssize_t) -> None:
        """Store data[p:e], a run holding no CRLF "." with self._nbare bare LFs."""
        nbare = self._nbare
        if nbare:
            self.bare_lf = True
        if not self.normalize_bare_lf:
            nbare = 0
        if self.too_big:
            self.size += e - p + nbare
            return
        seg = data if p == 0 and e == len(data) else data[p:e]
        if nbare:
            # RFC 5321 §2.3.8: store every line end as CRLF.  CRLF -> LF first, so no CRLF doubles.
            seg = seg.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self._append(seg)

    def _append(self, seg: bytes) -> None:
        size = self.size + len(seg)
        if not self.too_big:
            if size > self.max_size:
                # RFC 5321 §4.5.3.1.10 / §4.2.5: keep scanning for the end, store nothing beyond the limit.
                self.too_big = True
                keep = self.max_size - self.size
                if keep > 0:
                    self._parts.append(seg[:keep])
            else:
                self._parts.append(seg)
        self.size = size

    def getvalue(self) -> bytes:
        """The decoded message (ends in CRLF unless empty; truncated to max_size when too_big)."""
        parts = self._parts
        if len(parts) == 1:
            return parts[0]
        value = b"".join(parts)
        self._parts = [value]
        return value


def dot_stuff(body: bytes) -> bytes:
    """RFC 5321 §4.5.2, sender side: prepend a "." to every line that starts with ".".

    A line starts at the beginning of `body` and after *every* LF (bare or not), so that no receiver,
    however it splits lines, can read a stuffed body as ending early.  The caller makes `body` end in
    CRLF and appends END_MARK.
    """
    if _find_nl_dot(body, 0) >= 0:
        body = body.replace(b"\n.", b"\n..")
    if body[:1] == b".":
        body = b"." + body
    return body


MAX_STUFF_PARTS = 256  # past this many stuffed lines, one copy is cheaper than that many buffers


def _find_nl_dot(body: bytes, start: cython.Py_ssize_t) -> cython.Py_ssize_t:
    """body.find(b"\\n.", start).  Compiled: memchr for the ".", then a look at the byte before it.  A
    "." is rarer than a line end in text and absent from base64, where this runs at memchr's speed;
    bytes.find of the two-byte needle stops at every LF (about 1 GB/s on text, a third of a RETR's CPU)."""
    if cython.compiled:
        s: cython.p_const_char = body
        n: cython.Py_ssize_t = len(body)
        k: cython.Py_ssize_t = start + 1
        while k < n:
            q: cython.p_const_char = cython.cast(
                cython.p_const_char, memchr(s + k, 46, n - k)  # type: ignore[name-defined]  # noqa: F821
            )
            if q == cython.NULL:
                return -1
            k = q - s
            if s[k - 1] == 10:
                return k - 1
            k += 1
        return -1
    return body.find(b"\n.", start)


def dot_stuff_parts(body: bytes) -> list:
    """dot_stuff(body) as a list of buffers (bytes and memoryview slices of `body`) whose concatenation
    is the stuffed body, without copying `body`: for writing a large message with writelines.  A body
    with very many lines starting with "." comes back as one stuffed copy instead."""
    i: cython.Py_ssize_t = _find_nl_dot(body, 0)
    lead = body[:1] == b"."
    if i < 0 and not lead:
        return [body]
    parts: list = [b"."] if lead else []
    view = memoryview(body)
    start: cython.Py_ssize_t = 0
    while i >= 0:
        if len(parts) >= MAX_STUFF_PARTS:
            return [dot_stuff(body)]
        parts.append(view[start:i + 1])
        parts.append(b".")
        start = i + 1
        i = _find_nl_dot(body, i + 2)
    parts.append(view[start:])
    return parts


def crlf_normalize(data: bytes, after_cr: bool = False) -> tuple[bytes, bool]:
    """Store every bare LF as CRLF (RFC 5321 §2.3.8); return (data, whether a bare LF was found).

    For BDAT chunks (RFC 3030), which carry no dot-stuffing.  `after_cr`: the previous chunk ended in
    CR, so a LF at the start of `data` completes a CRLF and is not bare.
    """
    nl = data.count(b"\n")
    if not nl:
        return data, False
    bare = nl - data.count(b"\r\n")
    if after_cr and data[:1] == b"\n":
        bare -= 1
        if not bare:
            return data, False
        return b"\n" + data[1:].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), True
    if not bare:
        return data, False
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), True
