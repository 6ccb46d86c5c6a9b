"""IMAP command tokenizer: bytes in, commands of tokens out (no session state, no policy).

RFC 9051 §4 (data formats) and §9 (formal syntax), RFC 3501 (IMAP4rev1), RFC 7888 (LITERAL+ / LITERAL-:
"{n+}"), RFC 3516 (BINARY: literal8 "~{n}"), RFC 5182 (SEARCHRES: "$"), RFC 3501 §5.1.3 (modified UTF-7).

Framing (CommandReader)
    A command is a line "tag SP name [SP args]" ending in CRLF, which literals may interrupt: a line that
    ends in "{n}", "{n+}", "~{n}" or "~{n+}" is followed by n octets of literal data, then by the rest of
    the command (again a line, that may end in another literal).  For a synchronizing literal "{n}"
    (RFC 9051 §4.3, §7.5) next() returns NeedContinuation(tag, n) once: the server then sends "+ ..." and
    calls next() again.  "{n+}" (RFC 7888) does not ask.  Literal data is taken by count, never scanned for
    CRLF; every other byte is looked at once, so reading is O(n) however the stream is chunked.

    Limits come in as numbers.  A literal over max_literal (or making the command's literals together pass
    max_literal_total) raises LiteralTooBig before a byte of it is read (RFC 9051 §7.1 [TOOBIG], RFC 7888
    §4).  A command line (literal data excluded, every line of the command counted, terminators not) over
    max_line raises CommandTooLong as soon as that is known, without buffering the rest.  After any error
    the rest of the command is discarded safely: for a synchronizing literal nothing follows (the client
    waits for "+"); the octets of a non-synchronizing one are skipped (the client sends them anyway) with
    the rest of that command, including its further "{n+}" literals; then reading resumes with the next
    command.  Errors carry the tag when it could be read, for the tagged BAD (for a line too long, when it
    is in the line's first max_line + 1 bytes, so the answer does not depend on how the bytes arrived).

    Line ends: CRLF.  A bare LF is accepted as a line end too (as in fastmail's SMTP command lines and in
    Dovecot); a CR not followed by LF is a control character, hence a syntax error.  A literal's data is
    counted exactly: a literal announced with a bare LF starts right after that LF.  Empty lines between
    commands are ignored; spaces at the end of a command are ignored.  Elsewhere arguments are separated by
    exactly one SP, as RFC 9051 §9 says.  NUL is invalid everywhere except in a literal8's data.

    IDLE's "DONE" (RFC 9051 §6.3.13) and AUTHENTICATE's client responses (§6.2.2) are bare lines, not
    commands: read them with next_line().  After STARTTLS, take_buffer() hands back (and forgets) what
    the client sent after the command in plaintext, to be discarded (RFC 9051 §11.1, CVE-2011-0411).

Tokens (Command.args), plain Python values:
    str         an unquoted word, exactly as sent (ASCII, case kept): an atom, a number ("42"), NIL, a flag
                ("\\Seen"), a sequence set ("1:3,7:*", "$"), a LIST pattern ("INBOX/%"), "+FLAGS.SILENT",
                "[Gmail]/Sent".  Any run of ATOM-CHAR plus the list-wildcards "%" "*" and the resp-special
                "]", optionally after one leading "\\".  The tokenizer does not guess the meaning: "007" may
                be a number or a mailbox, "nil" NIL or a mailbox.  number(), astring() and nstring()
                interpret a token where the grammar says which one is meant.
    bytes       a quoted string, unescaped (the only escapes are \\" and \\\\; UTF-8 is allowed, as in
                RFC 9051 and RFC 6855 UTF8=ACCEPT, and must be valid).
    Literal     a literal: Literal(data: bytes, binary: bool).  binary False for {n} / {n+} (then data
                holds no NUL: RFC 9051 CHAR8), True for a literal8 ~{n} / ~{n+} (RFC 3516: any octet;
                accepted wherever a literal is, only APPEND means anything by it).  A quoted string and a
                literal are the same string to IMAP; they differ here because APPEND's message must be a
                literal (and MULTIAPPEND's date-time a quoted string).
    list        a parenthesized list, nested as sent; "()" is [].
    FetchAtt    in FETCH and UID FETCH only: BODY[...], BODY.PEEK[...], BINARY[...], BINARY.PEEK[...] and
                BINARY.SIZE[...] with an optional partial <start.count>, one token however many spaces and
                parentheses the section holds (RFC 9051 §6.4.5, §9 section, section-binary, partial):
                    name     "BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK" or "BINARY.SIZE" (upper-cased)
                    section  the section spec in canonical form, for the response: "1.2.HEADER.FIELDS
                             (From To)", "" for []
                    part     the part numbers, (1, 2); () for the whole message
                    text     "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME" or None
                    fields   the header names of HEADER.FIELDS(.NOT), as sent (str), else None
                    partial  (start, count) or None
    Command.name is the upper-cased command name; UID commands are joined: "UID FETCH".

Also here: parse_sequence_set(), mutf7_encode() / mutf7_decode(), quote() (the way back: an IMAP string).

One source, two builds (Cython pure-Python mode, typed by imap.pxd): the byte loops index `s`, which is the
bytes object in the pure twin and a pointer to its data when compiled; `if cython.compiled` branches use
memchr and build objects straight from the buffer.  The test suite checks that both builds agree.
"""

from __future__ import annotations

import binascii
import re

import cython

if cython.compiled:
    from cython.cimports.cpython.bytes import PyBytes_FromStringAndSize
    from cython.cimports.cpython.unicode import PyUnicode_DecodeASCII
    from cython.cimports.libc.string import memchr


class IMAPSyntaxError(ValueError):
    """The client's input is malformed.  .text: what to say in the BAD response (never reveals a
    configured limit); .tag: the command's tag when it could be read, else None (answer "* BAD")."""

    def __init__(self, text: str, tag: bytes | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.tag = tag


class CommandTooLong(IMAPSyntaxError):
    """The command line (literal data excluded) passed max_line: RFC 9051 §7.1 [TOOBIG] fits."""


class LiteralTooBig(IMAPSyntaxError):
    """A literal was announced larger than allowed; refused before reading it (RFC 9051 §7.1 [TOOBIG],
    RFC 7888 §4).  .size: the announced size; .sync: it was a synchronizing literal (nothing of it was
    sent); .binary: a literal8."""

    def __init__(self, size: int, tag: bytes | None, sync: bool, binary: bool = False) -> None:
        super().__init__("Literal too big", tag)
        self.size = size
        self.sync = sync
        self.binary = binary


class Literal:
    """A string that came as a literal: .data (bytes), .binary (bool).  binary False for {n} / {n+} (then
    data holds no NUL, RFC 9051 CHAR8), True for a literal8 ~{n} / ~{n+} (RFC 3516: any octet).  A wrapper
    rather than a bytes subclass: making one costs no copy of a large APPEND's data."""

    __slots__ = ("data", "binary")

    def __init__(self, data: bytes, binary: bool = False) -> None:
        self.data = data
        self.binary = binary

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Literal):
            return NotImplemented
        return self.data == other.data and self.binary == other.binary

    def __repr__(self) -> str:
        return f"Literal({self.data!r}, binary={self.binary})"


class Command:
    """A complete command: .tag (bytes), .name (str, upper-cased, "UID FETCH"), .args (list of tokens)."""

    __slots__ = ("tag", "name", "args")

    def __init__(self, tag: bytes, name: str, args: list) -> None:
        self.tag = tag
        self.name = name
        self.args = args

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Command):
            return NotImplemented
        return self.tag == other.tag and self.name == other.name and self.args == other.args

    def __repr__(self) -> str:
        return f"Command({self.tag!r}, {self.name!r}, {self.args!r})"


class NeedContinuation:
    """The command waits for a synchronizing literal of .size octets: send "+ ..." and call next() again.
    .tag: the command's tag."""

    __slots__ = ("tag", "size")

    def __init__(self, tag: bytes, size: int) -> None:
        self.tag = tag
        self.size = size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeedContinuation):
            return NotImplemented
        return self.tag == other.tag and self.size == other.size

    def __repr__(self) -> str:
        return f"NeedContinuation({self.tag!r}, {self.size!r})"


class FetchAtt:
    """BODY[section]<partial> and friends: .name, .section, .part, .text, .fields, .partial (see the
    module docstring)."""

    __slots__ = ("name", "section", "part", "text", "fields", "partial")

    def __init__(self, name: str, section: str, part: tuple, text: str | None, fields: tuple | None,
                 partial: tuple | None) -> None:
        self.name = name
        self.section = section
        self.part = part
        self.text = text
        self.fields = fields
        self.partial = partial

    def _key(self) -> tuple:
        return (self.name, self.section, self.part, self.text, self.fields, self.partial)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FetchAtt):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        name, section, part, text, fields, partial = self._key()
        return f"FetchAtt({name!r}, {section!r}, part={part!r}, text={text!r}, fields={fields!r}, partial={partial!r})"


STAR = 0
"""'*' in a sequence set (parse_sequence_set): the largest number in use."""
SEARCHRES = "$"
"""What parse_sequence_set returns for "$", the saved search result (RFC 5182)."""

MAX_NUMBER64 = (1 << 63) - 1  # RFC 9051 §9 number64
MAX_NZ_NUMBER = (1 << 32) - 1  # RFC 9051 §9 nz-number: a non-zero unsigned 32-bit integer
_MAX63 = MAX_NUMBER64


# -- character classes (RFC 9051 §9) ---------------------------------------------------------------------

_C_ATOM = 1  # ATOM-CHAR: any CHAR except atom-specials ( ) { SP CTL % * " \ ]
_C_WORD = 2  # what an unquoted word may hold: ATOM-CHAR, the list-wildcards % *, the resp-special ]
_C_TAG = 4  # tag = 1*<any ASTRING-CHAR except "+">
_C_QTEXT = 8  # a QUOTED-CHAR as itself: CHAR (%x01-7F) except CR LF " \


def _class_table() -> bytes:
    table = bytearray(256)
    for c in range(1, 128):
        atom = c > 32 and c != 127 and c not in b'(){%*"\\]'
        if atom:
            table[c] |= _C_ATOM | _C_WORD
        if c in b"%*]":
            table[c] |= _C_WORD
        if (atom or c == 93) and c != 43:
            table[c] |= _C_TAG
        if c not in b'\r\n"\\':
            table[c] |= _C_QTEXT
    return bytes(table)


_CLASS = _class_table()


def _spellings(*words: str) -> dict:
    """{b"WORD": "WORD", b"word": "WORD"}: the names we see all day, as sent, to their upper-cased str."""
    table = {}
    for word in words:
        table[word.encode()] = word
        table[word.lower().encode()] = word
    return table


_NAMES = _spellings(
    "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ENABLE", "SELECT", "EXAMINE",
    "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND",
    "IDLE", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID", "ID",
    "GETQUOTA", "GETQUOTAROOT", "SETQUOTA",
)
_SECTION_NAMES = frozenset(("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"))
_SECTION_TEXTS = frozenset(("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"))
_UNESCAPE = re.compile(rb'\\(["\\])')

# Reader states.
_S_LINE = 0  # reading a line of a command
_S_LITERAL = 1  # reading a literal's data (self._remaining octets to go)
_S_SKIP = 2  # skipping a refused non-synchronizing literal's data, then _S_DISCARD
_S_DISCARD = 3  # dropping the rest of a line (and, for a command, of its "{n+}" literals)

# Tokenizer states, between two bytes of a command line.
_T_AFTER = 0  # after a token (or the command name): SP, ")", "]" or the end
_T_TOKEN = 1  # after SP: a token must start
_T_OPEN = 2  # after "(" or "[": a token or the closing bracket


# -- helpers on the buffer (bytes or bytearray) -----------------------------------------------------------

def _find_lf(buf, start, n) -> int:
    """Index of the first LF in buf[start:n], or -1."""
    if cython.compiled:
        if type(buf) is bytes:
            s: cython.p_const_char = cython.cast(bytes, buf)
        else:
            s = cython.cast(bytearray, buf)
        q: cython.p_const_char = cython.cast(
            cython.p_const_char, memchr(s + start, 10, n - start)  # type: ignore[name-defined]  # noqa: F821
        )
        return -1 if q == cython.NULL else q - s
    else:
        return buf.find(b"\n", start, n)


def _slice(buf, a, b) -> bytes:
    """buf[a:b] as bytes (buf itself when that is all of it)."""
    if type(buf) is bytes and a == 0 and b == len(buf):
        return cython.cast(bytes, buf)
    if cython.compiled:
        if type(buf) is bytes:
            s: cython.p_const_char = cython.cast(bytes, buf)
        else:
            s = cython.cast(bytearray, buf)
        return PyBytes_FromStringAndSize(s + a, b - a)  # type: ignore[name-defined]  # noqa: F821
    elif type(buf) is bytes:
        return buf[a:b]
    else:
        return bytes(buf[a:b])


def _byte(buf, i) -> int:
    """buf[i]."""
    if cython.compiled:
        if type(buf) is bytes:
            s: cython.p_const_uchar = cython.cast(bytes, buf)
        else:
            s = cython.cast(bytearray, buf)
        return s[i]
    else:
        return buf[i]


def _announcement(seg: bytes, lo, n) -> tuple[int, int, bool, bool]:
    """The literal announcement that ends seg[lo:n] (RFC 9051 §9 literal: "{" number64 ["+"] "}", RFC 3516
    literal8: "~{" ...): (its start, size, sync, binary); start -1 when there is none.  A size past
    number64 is clamped to it (and is refused as too big anyway)."""
    s = seg
    if n - lo < 3 or s[n - 1] != 125:  # "}"
        return -1, 0, False, False
    k = n - 2
    sync = True
    if s[k] == 43:  # "+": RFC 7888 non-synchronizing
        sync = False
        k -= 1
    e = k
    while k >= lo and 48 <= s[k] <= 57:
        k -= 1
    if e - k < 1 or e - k > 19 or k < lo or s[k] != 123:  # "{"
        return -1, 0, False, False
    size = 0
    for j in range(k + 1, e + 1):
        size = size * 10 + (s[j] - 48)
    if size > _MAX63:
        size = _MAX63
    binary = k > lo and s[k - 1] == 126  # "~"
    return (k - 1 if binary else k), size, sync, binary


def _peek_tag(seg: bytes, n) -> bytes | None:
    """The tag at the start of a command line, if one can be read there."""
    s = seg
    t = _CLASS
    i = 0
    while i < n and t[s[i]] & 4:  # _C_TAG
        i += 1
    if i and i < n and s[i] == 32:
        return _slice(seg, 0, i)
    return None


def _word(seg: bytes, a, b) -> str:
    """seg[a:b], known to be ASCII, as str."""
    if cython.compiled:
        s: cython.p_const_char = seg
        return PyUnicode_DecodeASCII(s + a, b - a, cython.NULL)  # type: ignore[name-defined]  # noqa: F821
    else:
        return seg[a:b].decode("ascii")


def _quoted(seg: bytes, i, n, out: list) -> int:
    """The quoted string starting at seg[i] (its DQUOTE), appended to `out` unescaped; the index after it.

    RFC 9051 §9: quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-CHAR = <any TEXT-CHAR except quoted-specials>
    / "\\" quoted-specials / UTF8-2 / UTF8-3 / UTF8-4."""
    s = seg
    t = _CLASS
    j = i + 1
    esc = False
    high = False
    while j < n:
        c = s[j]
        if c == 34:
            break
        if c == 92:
            if j + 1 >= n or (s[j + 1] != 34 and s[j + 1] != 92):
                raise IMAPSyntaxError("Invalid escape in quoted string")
            esc = True
            j += 2
            continue
        if c >= 128:
            high = True
        elif not t[c] & 8:  # _C_QTEXT
            raise IMAPSyntaxError("Invalid character in quoted string")
        j += 1
    if j >= n:
        raise IMAPSyntaxError("Unterminated quoted string")
    text = _slice(seg, i + 1, j)
    if esc:
        text = _UNESCAPE.sub(rb"\1", text)
    if high:
        try:
            text.decode("utf-8")
        except UnicodeDecodeError:
            raise IMAPSyntaxError("Invalid UTF-8 in quoted string") from None
    out.append(text)
    return j + 1


def _section_number(text: str) -> int:
    # RFC 9051 §9 section-part = nz-number *("." nz-number)
    if not text.isdigit() or not text.isascii() or text[0] == "0" or len(text) > 10 or int(text) > MAX_NZ_NUMBER:
        raise IMAPSyntaxError("Invalid section")
    return int(text)


def _fetch_att(name: str, items: list, partial) -> FetchAtt:
    """BODY[...] / BINARY[...]: check the section (RFC 9051 §9 section, section-binary) and build the token.

    `items` are the tokens between the brackets: [] or [spec] or [spec, header-list]."""
    uname = name.upper()
    part: tuple = ()
    text = None
    fields = None
    spec = None
    rendered: list = []
    if items:
        spec = items[0]
        if type(spec) is not str:
            raise IMAPSyntaxError("Invalid section")
        pieces = spec.split(".")
        k = 0
        numbers = []
        while k < len(pieces) and pieces[k][:1].isdigit():
            numbers.append(_section_number(pieces[k]))
            k += 1
        part = tuple(numbers)
        if k < len(pieces):
            text = ".".join(pieces[k:]).upper()
            if text not in _SECTION_TEXTS or (text == "MIME" and not part):
                raise IMAPSyntaxError("Invalid section")
            if uname.startswith("BINARY"):
                raise IMAPSyntaxError("Invalid section")  # section-binary = "[" [section-part] "]"
        if text is not None and text.startswith("HEADER.FIELDS"):
            if len(items) != 2 or type(items[1]) is not list or not items[1]:
                raise IMAPSyntaxError("Invalid section")
            names = []
            rendered = []
            for f in items[1]:
                # header-fld-name = astring; a field name is 1*ftext (RFC 5322 §3.6.8)
                if type(f) is Literal:
                    f = f.data
                if type(f) is bytes:
                    if not f or f.translate(None, _FTEXT):
                        raise IMAPSyntaxError("Invalid header field name")
                    name_str = f.decode("ascii")
                    names.append(name_str)
                    rendered.append(quote(f).decode("ascii") if f.translate(None, _ASTRING_SAFE) else name_str)
                elif type(f) is str and "%" not in f and "*" not in f and ":" not in f and f[0] != "\\":
                    names.append(f)
                    rendered.append(f)  # a word without wildcards is an astring as it is
                else:
                    raise IMAPSyntaxError("Invalid header field name")
            fields = tuple(names)
        elif len(items) != 1:
            raise IMAPSyntaxError("Invalid section")
    if uname == "BINARY.SIZE" and partial is not None:
        raise IMAPSyntaxError("Invalid partial")
    section = spec if type(spec) is str and text is None else ""  # digits and dots only: canonical
    if text is not None:
        section = ".".join([str(p) for p in part] + [text])
    if fields is not None:
        section += " (" + " ".join(rendered) + ")"
    return FetchAtt(uname, section, part, text, fields, partial)


_FTEXT = bytes(c for c in range(33, 127) if c != 58)
_ASTRING_SAFE = bytes(c for c in range(128) if _CLASS[c] & _C_ATOM or c == 93)


# -- the reader ------------------------------------------------------------------------------------------

class CommandReader:
    """Frame a client's byte stream into IMAP commands (see the module docstring).

    After each feed(), call next() until it returns None."""

    def __init__(self, max_line: int, max_literal: int, max_literal_total: int | None = None) -> None:
        """max_line: longest command line, literal data excluded; max_literal: largest literal;
        max_literal_total: all literals of one command together (default: max_literal), which bounds
        what one command (e.g. MULTIAPPEND) may hold in memory."""
        self._buf: bytes | bytearray = b""
        self._pos = 0  # start of what is not consumed yet
        self._scan = 0  # _buf[_pos:_scan] is known to hold no LF (line states only)
        self._max_line = max_line
        self._max_literal = max_literal
        self._max_total = max_literal if max_literal_total is None else max_literal_total
        self._state = _S_LINE
        self._remaining = 0  # octets of literal data still to read or skip
        self._parts: list = []  # the literal data read so far
        self._binary = False  # the literal being read is a literal8
        self._disc_lit = True  # _S_DISCARD: a "{n+}" at the end of the line announces data to skip
        self._reset()

    def _reset(self) -> None:
        """Forget the command being read (not the buffer)."""
        self._tag: bytes | None = None  # None: between commands
        self._name = ""
        self._stack: list = []  # the argument list, then each open list (and section)
        self._tstate = _T_AFTER
        self._fetch = False  # FETCH / UID FETCH: "name[" starts a section
        self._sec = 0  # index in _stack of the open section's item list; 0: none
        self._sec_name = ""
        self._linelen = 0  # length of the command's lines so far
        self._littotal = 0  # octets of the command's literals so far

    def _abort(self, skip, size) -> None:
        """Drop the command; with `skip`, its non-synchronizing literal of `size` octets comes next and
        is skipped, then the rest of the command."""
        self._reset()
        self._parts = []
        if skip:
            self._state = _S_SKIP
            self._remaining = size
        else:
            self._state = _S_LINE

    # -- input ---------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append received bytes.  Literal data goes straight where it belongs, without a copy."""
        n = len(data)
        if not n:
            return
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            state = self._state
            if (state == _S_LITERAL or state == _S_SKIP) and self._remaining:
                k = self._remaining if self._remaining < n else n
                if state == _S_LITERAL:
                    self._parts.append(data if k == n else data[:k])
                self._remaining -= k
                if k == n:
                    return
                data = data[k:]
            self._buf = data
            self._pos = 0
            self._scan = 0
        elif type(buf) is bytes:
            acc = bytearray(_slice(buf, pos, len(buf)))
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

    def take_buffer(self) -> bytes:
        """Remove and return every buffered byte not consumed yet, and forget any command in progress
        (after STARTTLS: what came in plaintext after the command, to be thrown away)."""
        buf = self._buf
        rest = _slice(buf, self._pos, len(buf))
        self._buf = b""
        self._pos = 0
        self._scan = 0
        self._state = _S_LINE
        self._remaining = 0
        self._parts = []
        self._reset()
        return rest

    @property
    def buffered(self) -> int:
        """Bytes held in the buffer, not consumed yet (literal data already taken aside not counted)."""
        return len(self._buf) - self._pos

    # -- output --------------------------------------------------------------------------------------------

    def next(self) -> Command | NeedContinuation | None:
        """The next complete Command, a NeedContinuation, or None when more bytes are needed.

        Raises IMAPSyntaxError (CommandTooLong, LiteralTooBig) for a bad command, which is then dropped;
        call next() again to go on with the following one."""
        while True:
            state = self._state
            if state == _S_LINE:
                buf = self._buf
                pos = self._pos
                n = len(buf)
                if pos >= n:
                    return None
                i = _find_lf(buf, self._scan, n)
                if i < 0:
                    self._scan = n
                    self._check_partial(buf, pos, n)
                    return None
                end = i
                if end > pos and _byte(buf, end - 1) == 13:
                    end -= 1
                seg = _slice(buf, pos, end)
                self._pos = i + 1
                self._scan = i + 1
                result = self._segment(seg)
                if result is not None:
                    return result
            elif state == _S_LITERAL:
                if not self._take_literal():
                    return None
                self._end_literal()
            elif state == _S_SKIP:
                if not self._skip():
                    return None
            elif not self._discard():
                return None

    def next_line(self) -> bytes | None:
        """The next line as it is, without its line end, or None: IDLE's "DONE", AUTHENTICATE's responses.
        Between commands only.  A line over max_line raises CommandTooLong and is dropped."""
        while self._state == _S_DISCARD:
            if not self._discard():
                return None
        if self._state != _S_LINE or self._tag is not None:
            raise RuntimeError("next_line() is for lines between commands")
        buf = self._buf
        pos = self._pos
        n = len(buf)
        if pos >= n:
            return None
        i = _find_lf(buf, self._scan, n)
        if i < 0:
            self._scan = n
            size = n - pos
            if size > self._max_line + 1 or (size == self._max_line + 1 and buf[n - 1] != 13):
                self._state = _S_DISCARD
                self._disc_lit = False
                raise CommandTooLong("Line too long")
            return None
        end = i
        if end > pos and buf[end - 1] == 13:
            end -= 1
        self._pos = i + 1
        self._scan = i + 1
        if end - pos > self._max_line:
            raise CommandTooLong("Line too long")
        return _slice(buf, pos, end)

    # -- states ----------------------------------------------------------------------------------------------

    def _check_partial(self, buf, pos, n) -> None:
        """An unfinished line: fail as soon as it is known to pass max_line (a line of max+1 bytes may
        still be max bytes and the CR of its CRLF)."""
        size = n - pos
        limit = self._max_line - self._linelen
        if size > limit + 1 or (size == limit + 1 and buf[n - 1] != 13):
            tag = self._tag
            if tag is None:
                # The tag is read in the first max_line + 1 bytes, however many have come yet.
                k = size if size <= self._max_line + 1 else self._max_line + 1
                tag = _peek_tag(_slice(buf, pos, pos + k), k)
            self._reset()
            self._state = _S_DISCARD
            self._disc_lit = True
            raise CommandTooLong("Command line too long", tag)

    def _segment(self, seg: bytes):
        """A complete line of a command: tokenize it; the Command, a NeedContinuation or None."""
        n = len(seg)
        first = self._tag is None
        if first and n == 0:
            return None  # an empty line between commands: ignored
        lit, size, sync, binary = _announcement(seg, 0, n)
        if self._linelen + n > self._max_line:
            # The tag is read in the first max_line + 1 bytes, as in _check_partial.
            tag = _peek_tag(seg, n if n <= self._max_line + 1 else self._max_line + 1) if first else self._tag
            self._abort(lit >= 0 and not sync, size)
            raise CommandTooLong("Command line too long", tag)
        self._linelen += n
        end = n
        if lit >= 0:
            end = lit
        else:
            while end > 0 and seg[end - 1] == 32:
                end -= 1  # spaces at the end of the command: ignored
        try:
            i = 0
            if first:
                i = self._head(seg, end)
            self._tokens(seg, i, end)
            if lit >= 0:
                if self._tstate == _T_AFTER:
                    raise IMAPSyntaxError("Missing space before literal")
            elif len(self._stack) > 1:
                raise IMAPSyntaxError("Unterminated section" if self._sec else "Unbalanced parentheses")
        except IMAPSyntaxError as e:
            e.tag = self._tag
            self._abort(lit >= 0 and not sync, size)
            raise
        tag = self._tag
        assert tag is not None
        if lit < 0:
            cmd = Command(tag, self._name, self._stack[0])
            self._reset()
            return cmd
        if size > self._max_literal or size > self._max_total - self._littotal:
            self._abort(not sync, size)
            raise LiteralTooBig(size, tag, sync, binary)
        self._littotal += size
        self._state = _S_LITERAL
        self._remaining = size
        self._binary = binary
        self._parts = []
        if sync:
            return NeedContinuation(tag, size)
        return None

    def _take_literal(self) -> bool:
        """Move buffered literal data aside; True when the literal is complete."""
        remaining = self._remaining
        if remaining:
            buf = self._buf
            pos = self._pos
            avail = len(buf) - pos
            if avail <= 0:
                return False
            k = remaining if remaining < avail else avail
            self._parts.append(_slice(buf, pos, pos + k))
            self._pos = pos + k
            if self._scan < pos + k:
                self._scan = pos + k
            self._remaining = remaining - k
        return self._remaining == 0

    def _end_literal(self) -> None:
        """The literal's data is all there: it becomes the next token."""
        parts = self._parts
        self._parts = []
        self._state = _S_LINE
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if not self._binary and b"\0" in data:
            tag = self._tag
            self._abort(False, 0)
            self._state = _S_DISCARD  # the rest of the command
            self._disc_lit = True
            raise IMAPSyntaxError("NUL in literal (use a literal8)", tag)
        stack = self._stack
        stack[len(stack) - 1].append(Literal(data, self._binary))
        self._tstate = _T_AFTER

    def _skip(self) -> bool:
        """Skip a refused literal's data; True when done (then the rest of its command is discarded)."""
        remaining = self._remaining
        if remaining:
            pos = self._pos
            avail = len(self._buf) - pos
            if avail <= 0:
                return False
            k = remaining if remaining < avail else avail
            self._pos = pos + k
            if self._scan < pos + k:
                self._scan = pos + k
            self._remaining = remaining - k
            if self._remaining:
                return False
        self._state = _S_DISCARD
        self._disc_lit = True
        return True

    def _discard(self) -> bool:
        """Drop the rest of a line; True when its end was reached.  For a command, a "{n+}" at the line's
        end means n octets of data follow, then more of the command: skip them too."""
        buf = self._buf
        pos = self._pos
        n = len(buf)
        i = _find_lf(buf, self._scan if self._scan > pos else pos, n)
        if i < 0:
            if n - pos > 32:
                # Keep only what may still be the start of a literal announcement at the line's end.
                self._buf = _slice(buf, n - 32, n)
                self._pos = 0
                self._scan = 32
            else:
                self._scan = n
            return False
        lo = i - 32 if i - 32 > pos else pos
        end = i
        if end > lo and buf[end - 1] == 13:
            end -= 1
        tail = _slice(buf, lo, end)
        self._pos = i + 1
        self._scan = i + 1
        self._state = _S_LINE
        if self._disc_lit:
            lit, size, sync, binary = _announcement(tail, 0, len(tail))
            if lit >= 0 and not sync:
                self._state = _S_SKIP
                self._remaining = size
        return True

    # -- tokenizer -------------------------------------------------------------------------------------------

    def _head(self, seg: bytes, n) -> int:
        """tag SP command-name (RFC 9051 §9 command, tag; "UID" SP name joined): the index after it."""
        s = seg
        t = _CLASS
        i = 0
        while i < n and t[s[i]] & 4:  # _C_TAG
            i += 1
        if i == 0 or (i < n and s[i] != 32):
            raise IMAPSyntaxError("Invalid tag")
        self._tag = _slice(seg, 0, i)
        self._stack = [[]]
        self._tstate = _T_AFTER
        if i >= n:
            raise IMAPSyntaxError("Missing command")
        i += 1
        a = i
        while i < n and t[s[i]] & 1:  # _C_ATOM
            i += 1
        if i == a:
            raise IMAPSyntaxError("Invalid command name")
        raw = _slice(seg, a, i)
        name = _NAMES.get(raw)
        if name is None:
            name = raw.upper().decode("ascii")
        if name == "UID":
            if i >= n or s[i] != 32:
                raise IMAPSyntaxError("Missing command after UID")
            i += 1
            a = i
            while i < n and t[s[i]] & 1:
                i += 1
            if i == a:
                raise IMAPSyntaxError("Invalid command name")
            raw = _slice(seg, a, i)
            sub = _NAMES.get(raw)
            if sub is None:
                sub = raw.upper().decode("ascii")
            name = "UID " + sub
        self._name = name
        self._fetch = name == "FETCH" or name == "UID FETCH"
        return i

    def _tokens(self, seg: bytes, i, n) -> None:
        """Tokenize seg[i:n] into the command under construction, from state self._tstate."""
        s = seg
        t = _CLASS
        stack = self._stack
        state = self._tstate
        while i < n:
            c = s[i]
            if state == _T_AFTER:
                if c == 32:
                    state = _T_TOKEN
                    i += 1
                elif c == 41:  # ")"
                    if len(stack) <= 1 or len(stack) - 1 == self._sec:
                        raise IMAPSyntaxError("Unbalanced parentheses")
                    stack.pop()
                    i += 1
                elif c == 93 and self._sec and len(stack) - 1 == self._sec:  # "]" ends the section
                    i = self._section_end(seg, i + 1, n)
                else:
                    raise IMAPSyntaxError("Missing space" if t[c] & 2 or c == 34 or c == 40 else "Invalid character")
                continue
            # A token starts here (after SP, "(" or "[").
            if c == 40:  # "("
                lst: list = []
                stack[len(stack) - 1].append(lst)
                stack.append(lst)
                state = _T_OPEN
                i += 1
                continue
            if state == _T_OPEN:
                if c == 41 and len(stack) - 1 != self._sec:  # "()"
                    stack.pop()
                    state = _T_AFTER
                    i += 1
                    continue
                if c == 93 and self._sec and len(stack) - 1 == self._sec:  # "[]"
                    i = self._section_end(seg, i + 1, n)
                    state = _T_AFTER
                    continue
            if c == 34:  # DQUOTE
                i = _quoted(seg, i, n, stack[len(stack) - 1])
                state = _T_AFTER
                continue
            if not (t[c] & 2 or c == 92):  # _C_WORD, or the "\" of a flag
                if c == 123 or c == 126 and i + 1 < n and s[i + 1] == 123:
                    raise IMAPSyntaxError("Invalid literal")
                raise IMAPSyntaxError("Unbalanced parentheses" if c == 41 else "Invalid character")
            start = i
            if c == 92:
                i += 1
            sec_top = self._sec != 0 and len(stack) - 1 == self._sec
            while i < n:
                c = s[i]
                if not t[c] & 2 or (c == 93 and sec_top) or (c == 91 and self._fetch and not self._sec):
                    break
                i += 1
            if i == start + (s[start] == 92):
                raise IMAPSyntaxError("Invalid character")
            word = _word(seg, start, i)
            if i < n and s[i] == 91 and self._fetch and not self._sec:
                # BODY[...], BINARY[...]: a section follows the name (RFC 9051 §9 fetch-att).
                if word.upper() not in _SECTION_NAMES:
                    raise IMAPSyntaxError("Invalid fetch attribute")
                items: list = []
                stack.append(items)
                self._sec = len(stack) - 1
                self._sec_name = word
                state = _T_OPEN
                i += 1
                continue
            stack[len(stack) - 1].append(word)
            state = _T_AFTER
        self._tstate = state

    def _section_end(self, seg: bytes, i, n) -> int:
        """The "]" of a section was just read (seg[i] follows it): read the partial, add the FetchAtt."""
        s = seg
        stack = self._stack
        items = stack.pop()
        self._sec = 0
        partial = None
        if i < n and s[i] == 60:  # "<": partial = "<" number64 "." nz-number64 ">"
            j = i + 1
            a = j
            while j < n and 48 <= s[j] <= 57:
                j += 1
            if j == a or j - a > 19 or j >= n or s[j] != 46:
                raise IMAPSyntaxError("Invalid partial")
            j += 1
            b = j
            while j < n and 48 <= s[j] <= 57:
                j += 1
            if j == b or s[b] == 48 or j - b > 19 or j >= n or s[j] != 62:
                raise IMAPSyntaxError("Invalid partial")
            start = int(seg[a : b - 1])
            count = int(seg[b:j])
            if start > MAX_NUMBER64 or count > MAX_NUMBER64:
                raise IMAPSyntaxError("Invalid partial")
            partial = (start, count)
            i = j + 1
        stack[len(stack) - 1].append(_fetch_att(self._sec_name, items, partial))
        return i


# -- interpreting tokens ---------------------------------------------------------------------------------

def number(token, nz: bool = False) -> int:
    """The token as a number64 (RFC 9051 §9: 1*DIGIT, at most 2^63-1) or, with nz, an nz-number64 (no
    leading zero, not 0).  IMAPSyntaxError for anything else."""
    if type(token) is str and 0 < len(token) <= 64 and token.isascii() and token.isdigit():
        value = int(token)
        if value <= MAX_NUMBER64 and (not nz or token[0] != "0"):
            return value
    raise IMAPSyntaxError("Invalid number")


def astring(token, wildcards: bool = False) -> bytes:
    """The token as an astring (RFC 9051 §9: 1*ASTRING-CHAR / string) in bytes; with wildcards, as a
    list-mailbox (the LIST pattern: "%" and "*" allowed unquoted).  IMAPSyntaxError for a list or a
    fetch attribute."""
    if type(token) is bytes:
        return token
    if type(token) is Literal:
        return token.data
    if type(token) is str and token[:1] != "\\" and (wildcards or ("%" not in token and "*" not in token)):
        return token.encode("ascii")
    raise IMAPSyntaxError("Invalid string")


def nstring(token) -> bytes | None:
    """The token as an nstring (RFC 9051 §9: string / nil): None for NIL (any case), else the string."""
    if type(token) is bytes:
        return token
    if type(token) is Literal:
        return token.data
    if type(token) is str and token.upper() == "NIL":
        return None
    raise IMAPSyntaxError("Invalid string")


# -- sequence sets (RFC 9051 §9 sequence-set, RFC 5182 seq-last-command) ----------------------------------

def _seq_number(text: str) -> int:
    # seq-number = nz-number / "*"
    if text == "*":
        return STAR
    if not text or len(text) > 10 or text[0] == "0" or not text.isdigit() or not text.isascii():
        raise IMAPSyntaxError("Invalid sequence set")
    value = int(text)
    if value > MAX_NZ_NUMBER:
        raise IMAPSyntaxError("Invalid sequence set")
    return value


def parse_sequence_set(s: bytes | str) -> list[tuple[int, int]] | str:
    """"1:3,5,7:*" -> [(1, 3), (5, 5), (7, STAR)].

    Each range is (low, high) with low <= high; STAR (0) stands for "*", the largest number in use, and
    is always the second of a pair: "*" -> (0, 0), "*:4" -> (4, 0) (RFC 9051 §9: "4:*" and "*:4" are the
    same range).  To resolve against a mailbox, put its largest number for STAR and order the pair again
    (so 559:* still includes the last message when 559 is past it).  "$" alone returns SEARCHRES.
    Numbers are nz-number (1..2^32-1, no leading zero); anything else raises IMAPSyntaxError."""
    if not isinstance(s, str):
        if not s.isascii():
            raise IMAPSyntaxError("Invalid sequence set")
        s = s.decode("ascii")
    if s == "$":
        return SEARCHRES
    out: list[tuple[int, int]] = []
    for item in s.split(","):
        a, colon, b = item.partition(":")
        x = _seq_number(a)
        if not colon:
            out.append((x, x))
            continue
        y = _seq_number(b)
        if x == STAR:
            out.append((y, STAR))
        elif y == STAR or x <= y:
            out.append((x, y))
        else:
            out.append((y, x))
    return out


# -- modified UTF-7 (RFC 3501 §5.1.3) ----------------------------------------------------------------------

def _b64_run(run: list) -> bytes:
    raw = "".join(run).encode("utf-16-be")
    return b"&" + binascii.b2a_base64(raw, newline=False).rstrip(b"=").replace(b"/", b",") + b"-"


def mutf7_encode(name: str) -> bytes:
    """A mailbox name in modified UTF-7: printable US-ASCII as itself ("&" as "&-"), the rest as
    modified BASE64 of UTF-16BE between "&" and "-".  ValueError for a lone surrogate."""
    out = bytearray()
    run: list[str] = []
    for ch in name:
        if " " <= ch <= "~":
            if run:
                out += _b64_run(run)
                run = []
            out += b"&-" if ch == "&" else ch.encode("ascii")
        else:
            run.append(ch)
    if run:
        out += _b64_run(run)
    return bytes(out)


_B64_CHARS = re.compile(rb"[A-Za-z0-9+,]+")


def mutf7_decode(data: bytes) -> str:
    """Strict modified UTF-7 to str: anything not exactly as mutf7_encode would write it (printable ASCII
    encoded, control characters or 8-bit bytes as themselves, a missing "-", padding, bits left over,
    two encoded runs in a row, broken UTF-16) raises IMAPSyntaxError."""
    if not data.isascii():
        raise IMAPSyntaxError("Invalid modified UTF-7")
    out: list[str] = []
    i = 0
    n = len(data)
    while i < n:
        j = data.find(b"&", i)
        if j < 0:
            j = n
        out.append(data[i:j].decode("ascii"))
        if j >= n:
            break
        k = data.find(b"-", j + 1)
        if k < 0:
            raise IMAPSyntaxError("Invalid modified UTF-7")
        if k == j + 1:
            out.append("&")
        else:
            b64 = data[j + 1 : k]
            if not _B64_CHARS.fullmatch(b64) or len(b64) % 4 == 1:
                raise IMAPSyntaxError("Invalid modified UTF-7")
            try:
                raw = binascii.a2b_base64(b64.replace(b",", b"/") + b"=" * (-len(b64) % 4))
                out.append(raw.decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError):
                raise IMAPSyntaxError("Invalid modified UTF-7") from None
        i = k + 1
    text = "".join(out)
    try:
        canonical = mutf7_encode(text)
    except UnicodeError:
        raise IMAPSyntaxError("Invalid modified UTF-7") from None
    if canonical != data:
        raise IMAPSyntaxError("Invalid modified UTF-7")
    return text


# -- the way back ------------------------------------------------------------------------------------------

_QSAFE = bytes(c for c in range(1, 128) if c not in (10, 13))
_QUOTE_MAX = 1024


def quote(value: bytes | str, utf8: bool = False) -> bytes:
    """value as an IMAP string (RFC 9051 §4.3): quoted ("\\" and DQUOTE escaped) when it is at most 1 KiB
    of US-ASCII without CR, LF and NUL -- or, with utf8 (UTF8=ACCEPT / IMAP4rev2), of valid UTF-8 --
    else a literal {n}CRLF followed by the octets; a literal8 ~{n} when it holds a NUL."""
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) <= _QUOTE_MAX:
        rest = raw.translate(None, _QSAFE)
        safe = not rest
        if not safe and utf8 and not rest.translate(None, _HIGH):
            try:
                raw.decode("utf-8")
                safe = True
            except UnicodeDecodeError:
                pass
        if safe:
            if b"\\" in raw or b'"' in raw:
                raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            return b'"' + raw + b'"'
    head = b"~{%d}\r\n" if b"\0" in raw else b"{%d}\r\n"
    return head % len(raw) + raw


_HIGH = bytes(range(128, 256))
