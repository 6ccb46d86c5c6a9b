"""Line framing for command-mode protocols (SMTP, LMTP, POP3): bytes in, lines out.

RFC 5321 §2.3.8 ends every command line with CRLF; a bare LF is tolerated as a terminator of *command*
lines (never of DATA content, see data.py).  RFC 5321 §4.5.3.1.4 bounds the line length; the bound comes
in as a number, terminator excluded.

An over-long line raises LineTooLong once, as soon as the buffered part of it is known to exceed the limit
(so a huge line is never buffered whole); the rest of it, up to and including its LF, is then dropped as it
arrives, and reading goes on normally with the next line.

Cost: every byte is scanned for LF once (``_scan`` remembers how far the buffer is known to hold no LF);
a chunk fed while nothing is buffered is kept as it is (no copy), and lines are sliced out of it.
"""

from __future__ import annotations

import cython


class LineTooLong(Exception):
    """A line exceeded the configured length limit; it is dropped, the reader carries on."""


class LineReader:
    """Split a byte stream into lines ending in CRLF (or a bare LF), with a length limit."""

    def __init__(self, max_length: int) -> None:
        # bytes (a chunk fed into an empty reader, kept as it is) or a bytearray (accumulating)
        self._buf: bytes | bytearray = b""
        self._pos = 0  # start of the first line not yet returned
        self._scan = 0  # _buf[_pos:_scan] is known to hold no LF
        self._max = max_length
        self._discard = False  # dropping the rest of an over-long line, up to its LF

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._discard:
            i = data.find(b"\n")
            if i < 0:
                return
            self._discard = False
            data = data[i + 1 :]
        if not data:
            return
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            # Common case: everything before was consumed; keep the chunk itself.
            self._buf = data
            self._pos = 0
            self._scan = 0
        elif type(buf) is bytes:
            # Start accumulating: copy only the unconsumed tail.
            acc = bytearray(buf[pos:])
            acc += data
            self._buf = acc
            self._scan -= pos
            self._pos = 0
        else:
            acc = cython.cast(bytearray, buf)
            if pos:
                del acc[:pos]  # O(1) for a bytearray: CPython advances its logical start
                self._scan -= pos
                self._pos = 0
            acc += data

    def readline(self) -> bytes | None:
        """The next complete line without its terminator, or None.  Raises LineTooLong (once per line)."""
        buf = self._buf
        pos = self._pos
        n = len(buf)
        if pos >= n:
            return None
        scan = self._scan
        if cython.compiled:
            # memchr and one PyBytes for the line, straight from the buffer (bytes or bytearray).
            if type(buf) is bytes:
                s: cython.p_const_char = cython.cast(bytes, buf)
            else:
                s = cython.cast(bytearray, buf)
            q: cython.p_const_char = cython.cast(
                cython.p_const_char, memchr(s + scan, 10, n - scan)  # type: ignore[name-defined]  # noqa: F821
            )
            i = -1 if q == cython.NULL else q - s
        else:
            i = buf.find(b"\n", scan)
        if i < 0:
            self._scan = n
            # A partial line of max+1 bytes may still be max bytes + the CR of its CRLF.
            size = n - pos
            if size > self._max + 1 or (size == self._max + 1 and buf[n - 1] != 13):
                self._buf = b""
                self._pos = 0
                self._scan = 0
                self._discard = True
                raise LineTooLong(f"line longer than {self._max} bytes")
            return None
        end = i
        # CRLF; otherwise a bare LF, accepted for command lines.
        if end > pos and (s[end - 1] if cython.compiled else buf[end - 1]) == 13:
            end -= 1
        self._pos = i + 1
        self._scan = i + 1
        if end - pos > self._max:
            raise LineTooLong(f"line longer than {self._max} bytes")
        if cython.compiled:
            return PyBytes_FromStringAndSize(s + pos, end - pos)  # type: ignore[name-defined]  # noqa: F821
        elif type(buf) is bytes:
            return buf[pos:end]
        else:
            return bytes(buf[pos:end])

    def take_buffer(self) -> bytes:
        """Remove and return every buffered byte not yet returned as a line (for DATA, BDAT, STARTTLS)."""
        buf = self._buf
        pos = self._pos
        if type(buf) is bytes:
            rest = buf[pos:] if pos else buf
        else:
            rest = bytes(buf[pos:])
        self._buf = b""
        self._pos = 0
        self._scan = 0
        self._discard = False
        return rest

    @property
    def buffered(self) -> int:
        """Bytes currently buffered (not yet returned as lines)."""
        return len(self._buf) - self._pos

    @property
    def max_length(self) -> int:
        return self._max
