"""SMTP command-line and address parsing: bytes in, tokens out (no policy, no state).

RFC 5321 §4.1.1 (commands), §4.1.2 (command argument syntax: Path, Mailbox, Local-part, Domain,
esmtp-param), §4.1.3 (address literals), §4.5.3.1 (size limits); RFC 6531 §3.3 (SMTPUTF8: UTF-8 in
addresses and esmtp-values); RFC 3461 §4 (xtext).

This is the foundation of the relay check, so it is exact and strict: whatever it returns is a mailbox
whose domain a policy can compare with its own, whatever trick the client tried.
    - a source route (@a,@b:user@d, RFC 5321 §4.1.1.3 / Appendix C) is validated and dropped;
    - the local part is returned unquoted ("user@remote"@local -> local part 'user@remote', domain
      'local'); % ! + are ordinary atext and are returned as they are (user%remote@local is local);
    - the domain is lower-cased; an address literal is validated (IPv4, IPv6 only) and returned in
      canonical form, "[192.0.2.1]" or "[ipv6:2001:db8::1]";
    - a trailing dot, an empty label, an all-numeric top-level label, over-long parts: syntax errors.

One source, two builds (Cython pure-Python mode): where ``cython.compiled`` is tested, the compiled
branch scans the bytes in C loops over a character-class table, and the interpreted branch does the same
check with a few bytes methods.  The test suite runs both and checks they agree.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import cython


class SMTPSyntaxError(ValueError):
    """A client's command argument is malformed; carries the reply to send (RFC 3463 enhanced code)."""

    def __init__(self, code: int = 501, enhanced: str = "5.5.4", text: str = "Syntax error in parameters"):
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text


def _param_error() -> SMTPSyntaxError:
    return SMTPSyntaxError(501, "5.5.4", "Syntax error in parameters")


def _address_error() -> SMTPSyntaxError:
    return SMTPSyntaxError(501, "5.1.3", "Bad address syntax")


def _utf8_error() -> SMTPSyntaxError:
    # RFC 6531 §3.2: non-ASCII addresses only in a transaction that asked for SMTPUTF8.
    return SMTPSyntaxError(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")


# -- character classes ------------------------------------------------------------------------------------
# As byte strings for bytes.translate(None, CLASS) (what is left is outside the class) ...

_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# RFC 5322 §3.2.3 atext, as used by RFC 5321 §4.1.2 Atom.
_ATEXT_DOT = _ALNUM + b"!#$%&'*+-/=?^_`{|}~."
# RFC 5321 §4.1.2 Let-dig / Ldh-str, and the dots between sub-domains.
_LDH_DOT = _ALNUM + b"-."
# RFC 5321 §4.1.2 qtextSMTP = %d32-33 / %d35-91 / %d93-126
_QTEXT = bytes(c for c in range(32, 127) if c not in (34, 92))
# RFC 5321 §4.1.2 esmtp-value = 1*(%d33-60 / %d62-126)
_VALUE = bytes(c for c in range(33, 127) if c != 61)
# RFC 3461 §4 xchar = "!" .. "~" except "+" and "="
_XCHAR = bytes(c for c in range(33, 127) if c not in (43, 61))
_HEX = b"0123456789ABCDEFabcdef"
_HIGH = bytes(range(128, 256))  # the bytes of UTF8-non-ascii (RFC 6531 §3.3)
_DIGITS_DOT = b"0123456789."
_IPV6_CHARS = b"0123456789ABCDEFabcdef:."
# RFC 5321 §4.1.2 Domain = sub-domain *("." sub-domain), with the limits of _domain() below.
_DOT_DOMAIN = re.compile(
    rb"(?:(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)*"  # sub-domain "."
    rb"(?!-)(?=[A-Za-z0-9-]*[A-Za-z-])[A-Za-z0-9-]{1,63}(?<!-)"  # top-level label: not all-numeric
)

# ... and as bits of a 256-entry table, for the compiled byte loops.
_C_ATEXT = 1  # atext, without "."
_C_LDH = 2  # letter, digit, hyphen
_C_DIGIT = 4
_C_ALPHA = 8
_C_VALUE = 16  # esmtp-value character


def _class_table() -> bytes:
    table = bytearray(256)
    for c in _ATEXT_DOT:
        if c != 46:
            table[c] |= _C_ATEXT
    for c in _LDH_DOT:
        if c != 46:
            table[c] |= _C_LDH
    for c in b"0123456789":
        table[c] |= _C_DIGIT
    for c in _ALNUM[:52]:
        table[c] |= _C_ALPHA
    for c in _VALUE:
        table[c] |= _C_VALUE
    return bytes(table)


_CLASS = _class_table()


def _spellings(*words: str) -> dict:
    """{b"WORD": "WORD", b"word": "WORD"}: the upper-cased str of the words we see all day, as sent."""
    table = {}
    for word in words:
        table[word.encode()] = word
        table[word.lower().encode()] = word
    return table


_VERBS = _spellings("HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY",
                    "EXPN", "HELP", "AUTH", "STARTTLS", "ETRN")
_KEYWORDS = _spellings("SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "NOTIFY", "ORCPT", "AUTH", "REQUIRETLS",
                       "MT-PRIORITY", "HOLDFOR", "HOLDUNTIL", "BY")


# -- command line (RFC 5321 §4.1.1) ----------------------------------------------------------------------

def parse_command(line: bytes) -> tuple[str, bytes]:
    """Split a command line into (VERB, argument bytes).

    The verb is 1..12 ASCII letters, upper-cased, ended by the line's end or one SP; the argument is
    everything after that SP with trailing spaces stripped.  Anything else is ("", line).
    """
    if cython.compiled:
        s: cython.p_const_uchar = line
        t: cython.p_const_uchar = _CLASS
        n = len(line)
        i = 0
        while i < n and i <= 12:
            c = s[i]
            if c == 32:
                break
            if not t[c] & 8:  # _C_ALPHA
                return "", line
            i += 1
        if i == 0 or i > 12:
            return "", line
        if i == n:
            verb = line
            i = -1
        else:
            verb = PyBytes_FromStringAndSize(  # type: ignore[name-defined]  # noqa: F821
                cython.cast(cython.p_const_char, s), i
            )
    else:
        i = line.find(b" ")
        verb = line if i < 0 else line[:i]
        n = len(verb)
        if n == 0 or n > 12 or not verb.isalpha():  # bytes.isalpha(): ASCII letters only
            return "", line
    name = _VERBS.get(verb)
    if name is None:
        name = verb.upper().decode("ascii")
    if i < 0:
        return name, b""
    args = line[i + 1 :]
    if args.endswith(b" "):
        args = args.rstrip(b" ")
    return name, args


# -- MAIL / RCPT arguments (RFC 5321 §4.1.1.2, §4.1.1.3, §4.1.2) ------------------------------------------

def parse_mail_from(args: bytes) -> tuple[tuple[str, str] | None, dict[str, str | None]]:
    """Parse the argument of MAIL: "FROM:" Reverse-path [SP Mail-parameters].

    Returns (address, params): address is None for the null path "<>", else (local_part, domain).
    Params: upper-cased keyword -> value (str) or None.  Non-ASCII in the path needs SMTPUTF8.
    """
    if not _prefix_ci(args, b"from:"):
        raise _param_error()
    a, b = _path_bounds(args, 5)
    params = _parse_params(args, b + 1)
    utf8 = "SMTPUTF8" in params  # RFC 6531 §3.4
    if params:
        _decode_values(params, utf8)
    return _path(args, a, b, utf8), params  # None: the null reverse-path (RFC 5321 §4.5.5)


def parse_rcpt_to(args: bytes, utf8: bool = False) -> tuple[tuple[str, str], dict[str, str | None]]:
    """Parse the argument of RCPT: "TO:" ( "<Postmaster>" / Forward-path ) [SP Rcpt-parameters].

    `utf8`: the transaction's MAIL carried SMTPUTF8.  "<Postmaster>" gives ("postmaster", "").
    """
    if not _prefix_ci(args, b"to:"):
        raise _param_error()
    a, b = _path_bounds(args, 3)
    params = _parse_params(args, b + 1)
    if params:
        _decode_values(params, utf8)
    if b - a == 10 and _prefix_ci(args[a:b], b"postmaster"):
        return ("postmaster", ""), params  # RFC 5321 §4.1.1.3: no domain, any case
    address = _path(args, a, b, utf8)
    if address is None:
        raise _address_error()  # a forward-path is never null
    return address, params


def parse_path(path: bytes, utf8: bool) -> tuple[str, str] | None:
    """Parse what is between "<" and ">": None for the null path, else (local_part, domain).

    Path = "<" [ A-d-l ":" ] Mailbox ">";  Mailbox = Local-part "@" ( Domain / address-literal ).
    The source route is validated and dropped; the local part is returned unquoted.
    """
    return _path(path, 0, len(path), utf8)


def _prefix_ci(s: bytes, prefix: bytes) -> bool:
    """s starts with `prefix` (given in lower case), letters compared without case."""
    m = len(prefix)
    if len(s) < m:
        return False
    if cython.compiled:
        p: cython.p_const_uchar = s
        q: cython.p_const_uchar = prefix
        for i in range(m):
            c = p[i]
            if c != q[i] and not (97 <= q[i] <= 122 and (c | 32) == q[i]):
                return False
        return True
    else:
        return s[:m].lower() == prefix


def _path_bounds(args: bytes, p: cython.Py_ssize_t) -> tuple[int, int]:
    """(a, b): the path between "<" and ">" is args[a:b]; args[b] is the ">".  One SP after the colon
    is tolerated; the angle brackets are required (RFC 5321 §4.1.2 Path)."""
    n = len(args)
    if p < n and args[p] == 32:
        p += 1
    if p >= n or args[p] != 60:  # "<"
        raise _param_error()
    a = p + 1
    if cython.compiled:
        s: cython.p_const_uchar = args
        b = a
        while b < n and s[b] != 62 and s[b] != 34:
            b += 1
        if b < n and s[b] == 34:
            # A Quoted-string local part may hold ">": skip it first.
            q = _quoted_end(args, b, n)
            if q < 0:
                raise _param_error()
            b = q + 1
            while b < n and s[b] != 62:
                b += 1
        if b >= n:
            raise _param_error()
    else:
        b = args.find(b">", a)
        if b < 0:
            raise _param_error()
        q = args.find(b'"', a, b)
        if q >= 0:
            # A Quoted-string local part may hold ">": skip it first.
            q = _quoted_end(args, q, n)
            if q < 0:
                raise _param_error()
            b = args.find(b">", q + 1)
            if b < 0:
                raise _param_error()
    return a, b


def _parse_params(args: bytes, p: cython.Py_ssize_t) -> dict:
    """esmtp-param *(SP esmtp-param) after the path (RFC 5321 §4.1.2); values are still bytes.

    esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");  a duplicate keyword is an error.  Runs of
    SP between parameters are tolerated.
    """
    params: dict = {}
    n = len(args)
    if p >= n:
        return params
    if args[p] != 32:
        raise _param_error()
    if cython.compiled:
        s: cython.p_const_uchar = args
        t: cython.p_const_uchar = _CLASS
        i = p + 1
        while True:
            while i < n and s[i] == 32:
                i += 1
            if i >= n:
                break
            k = i
            if s[i] == 45:  # a keyword starts with a letter or digit
                raise _param_error()
            while i < n and s[i] != 32 and s[i] != 61:
                if not t[s[i]] & 2:  # _C_LDH
                    raise _param_error()
                i += 1
            if i == k:
                raise _param_error()
            raw = PyBytes_FromStringAndSize(  # type: ignore[name-defined]  # noqa: F821
                cython.cast(cython.p_const_char, s + k), i - k
            )
            name = _KEYWORDS.get(raw)
            if name is None:
                name = raw.upper().decode("ascii")
            value = None
            if i < n and s[i] == 61:  # "="
                # esmtp-value: decoded here when ASCII; UTF-8 ones wait for _decode_values.
                i += 1
                v = i
                ascii = True
                while i < n and s[i] != 32:
                    if not t[s[i]] & 16:  # _C_VALUE
                        if s[i] < 128:
                            raise _param_error()
                        ascii = False
                    i += 1
                if i == v:
                    raise _param_error()
                if ascii:
                    value = PyUnicode_DecodeASCII(  # type: ignore[name-defined]  # noqa: F821
                        cython.cast(cython.p_const_char, s + v), i - v, cython.NULL
                    )
                else:
                    value = PyBytes_FromStringAndSize(  # type: ignore[name-defined]  # noqa: F821
                        cython.cast(cython.p_const_char, s + v), i - v
                    )
            if name in params:
                raise _param_error()
            params[name] = value
    else:
        for item in args[p + 1 :].split(b" "):
            if not item:
                continue
            eq = item.find(b"=")
            if eq < 0:
                key = item
                value = None
            else:
                key = item[:eq]
                value = item[eq + 1 :]
                if not value:
                    raise _param_error()
            if not key.isalnum() and (not key[:1].isalnum() or not key.replace(b"-", b"").isalnum()):
                raise _param_error()
            name = _KEYWORDS.get(key)
            if name is None:
                name = key.upper().decode("ascii")
            if name in params:
                raise _param_error()
            params[name] = value
    return params


def _decode_values(params: dict, utf8: bool) -> None:
    """esmtp-value = 1*(%d33-60 / %d62-126), plus UTF8-non-ascii under SMTPUTF8 (RFC 6531 §3.3).

    Decodes the values _parse_params left as bytes (the compiled build decodes ASCII ones itself)."""
    for name, value in params.items():
        if type(value) is not bytes:
            continue
        rest = value.translate(None, _VALUE)
        if not rest:
            params[name] = value.decode("ascii")
            continue
        if not utf8 or rest.translate(None, _HIGH):
            raise _param_error()
        try:
            params[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _param_error() from None


# -- Path / Mailbox (RFC 5321 §4.1.2) ---------------------------------------------------------------------

def _path(buf: bytes, a: cython.Py_ssize_t, b: cython.Py_ssize_t, utf8: bool) -> tuple[str, str] | None:
    """The path buf[a:b] (without its angle brackets): None if empty, else (local_part, domain)."""
    if a >= b:
        return None
    s: cython.p_const_uchar = buf
    if not utf8:
        if cython.compiled:
            for i in range(a, b):
                if s[i] >= 128:
                    raise _utf8_error()
        elif not buf[a:b].isascii():
            raise _utf8_error()
    p = a
    if buf[p] == 64:  # "@": A-d-l, RFC 5321 §4.1.1.3 "SHOULD accept and ignore"
        p = _skip_route(buf, a, b, utf8)
    if b - p > 254 or p >= b:  # RFC 5321 §4.5.3.1.3: Path <= 256 octets with the brackets
        raise _address_error()
    if buf[p] == 34:  # Quoted-string
        q = _quoted_end(buf, p, b)
        if q < 0:
            raise _address_error()
        at = q + 1
        if at >= b or buf[at] != 64:
            raise _address_error()
        local = _unquote(buf[p + 1 : q], utf8)
    else:  # Dot-string
        if cython.compiled:
            m: cython.p_const_uchar = cython.cast(
                cython.p_const_uchar, memchr(s + p, 64, b - p)  # type: ignore[name-defined]  # noqa: F821
            )
            at = -1 if m == cython.NULL else m - s
        else:
            at = buf.find(b"@", p, b)
        if at < 0:
            raise _address_error()
        local = _dot_string(buf, p, at, utf8)
    if at - p > 64:  # RFC 5321 §4.5.3.1.1: local-part <= 64 octets (as sent)
        raise _address_error()
    return local, _domain(buf, at + 1, b, utf8)


def _skip_route(buf: bytes, a: cython.Py_ssize_t, b: cython.Py_ssize_t, utf8: bool) -> cython.Py_ssize_t:
    """A-d-l = At-domain *( "," At-domain ) ":" at buf[a:]; return the index after the ":"."""
    p = a
    while True:
        if p >= b or buf[p] != 64:  # "@"
            raise _address_error()
        p += 1
        if p < b and buf[p] == 91:  # "[": an address literal may hold ":"
            e = buf.find(b"]", p, b)
            if e < 0:
                raise _address_error()
            e += 1
        else:
            e = buf.find(b":", p, b)
            c = buf.find(b",", p, e if e >= 0 else b)
            if c >= 0:
                e = c
            if e < 0:
                raise _address_error()
        _domain(buf, p, e, utf8)  # validated, then ignored
        if e >= b:
            raise _address_error()
        if buf[e] == 58:  # ":"
            return e + 1
        if buf[e] != 44:  # ","
            raise _address_error()
        p = e + 1


def _quoted_end(s: bytes, q: cython.Py_ssize_t, b: cython.Py_ssize_t) -> cython.Py_ssize_t:
    """Index (< b) of the DQUOTE closing the quoted string opened at s[q], or -1."""
    if cython.compiled:
        p: cython.p_const_uchar = s
        i = q + 1
        while i < b:
            c = p[i]
            if c == 34:
                return i
            i += 2 if c == 92 else 1  # quoted-pairSMTP: skip the escaped byte, which may be a DQUOTE
        return -1
    else:
        i = q + 1
        while True:
            j = s.find(b'"', i, b)
            if j < 0:
                return -1
            k = s.find(b"\\", i, j)
            if k < 0:
                return j
            i = k + 2  # quoted-pairSMTP: skip the escaped byte, which may be a DQUOTE


def _dot_string(buf: bytes, a: cython.Py_ssize_t, e: cython.Py_ssize_t, utf8: bool) -> str:
    """Dot-string = Atom *("." Atom); Atom = 1*atext (RFC 5321 §4.1.2; RFC 6531 §3.3 adds UTF-8)."""
    if cython.compiled:
        s: cython.p_const_uchar = buf
        t: cython.p_const_uchar = _CLASS
        dot = True  # at the start, or after a "."
        high = False
        for i in range(a, e):
            c = s[i]
            if c == 46:
                if dot:
                    raise _address_error()
                dot = True
            elif t[c] & 1:  # _C_ATEXT
                dot = False
            elif c >= 128 and utf8:
                dot = False
                high = True
            else:
                raise _address_error()
        if dot:  # empty, or a trailing "."
            raise _address_error()
        if not high:
            return PyUnicode_DecodeASCII(  # type: ignore[name-defined]  # noqa: F821
                cython.cast(cython.p_const_char, s + a), e - a, cython.NULL
            )
        local = buf[a:e]
    else:
        local = buf[a:e]
        if a == e or local[0] == 46 or local[e - a - 1] == 46 or local.find(b"..") >= 0:
            raise _address_error()
        rest = local.translate(None, _ATEXT_DOT)
        if not rest:
            return local.decode("ascii")
        if not utf8 or rest.translate(None, _HIGH):
            raise _address_error()
    try:
        return local.decode("utf-8")
    except UnicodeDecodeError:
        raise _address_error() from None


def _unquote(content: bytes, utf8: bool) -> str:
    """The value of a Quoted-string's content: *( qtextSMTP / quoted-pairSMTP ) (RFC 5321 §4.1.2)."""
    if not content:
        raise _address_error()  # strict: an empty local part names no one
    k = content.find(b"\\")
    if k < 0:
        raw = content
        if not _qtext_ok(raw, utf8):
            raise _address_error()
    else:
        out = bytearray()
        i = 0
        n = len(content)
        while k >= 0:
            seg = content[i:k]
            if not _qtext_ok(seg, utf8) or k + 1 >= n:
                raise _address_error()
            c = content[k + 1]
            if c < 32 or c > 126:  # quoted-pairSMTP = %d92 %d32-126
                raise _address_error()
            out += seg
            out.append(c)
            i = k + 2
            k = content.find(b"\\", i)
        seg = content[i:]
        if not _qtext_ok(seg, utf8):
            raise _address_error()
        out += seg
        raw = bytes(out)
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _address_error() from None


def _qtext_ok(seg: bytes, utf8: bool) -> bool:
    rest = seg.translate(None, _QTEXT)
    return not rest or (utf8 and not rest.translate(None, _HIGH))


def _domain(buf: bytes, a: cython.Py_ssize_t, e: cython.Py_ssize_t, utf8: bool) -> str:
    """Domain / address-literal at buf[a:e] (RFC 5321 §4.1.2, §4.1.3; RFC 6531 §3.3 U-labels).

    sub-domain = Let-dig [Ldh-str]: no empty label, no hyphen at either end of a label, <= 63 octets
    (RFC 1035 §2.3.4), <= 255 octets in all (RFC 5321 §4.5.3.1.2).  RFC 3696 §2: a top-level label is
    never all-numeric (so "1.2.3.4" is not a domain name: write "[1.2.3.4]").
    """
    n = e - a
    if n == 0 or n > 255:
        raise _address_error()
    if buf[a] == 91:  # "["
        return _address_literal(buf[a:e])
    if cython.compiled:
        s: cython.p_const_uchar = buf
        t: cython.p_const_uchar = _CLASS
        low = cython.declare(cython.char[256])  # the domain, lower-cased (n <= 255)
        label = 0
        digits = True
        c = 46
        for i in range(n):
            c = s[a + i]
            if c == 46:
                if label == 0 or low[i - 1] == 45:
                    raise _address_error()
                label = 0
                digits = True
            elif t[c] & 2:  # _C_LDH
                if label == 0 and c == 45:
                    raise _address_error()
                label += 1
                if label > 63:
                    raise _address_error()
                if not t[c] & 4:  # _C_DIGIT
                    digits = False
                if 65 <= c <= 90:
                    c += 32
            elif c >= 128:
                if not utf8:
                    raise _utf8_error()
                return _u_domain(buf[a:e])
            else:
                raise _address_error()
            low[i] = c
        if label == 0 or c == 45 or digits:
            raise _address_error()
        return PyUnicode_DecodeASCII(low, n, cython.NULL)  # type: ignore[name-defined]  # noqa: F821
    else:
        d = buf[a:e]
        if _DOT_DOMAIN.fullmatch(d) is None:
            if d.isascii():
                raise _address_error()
            if not utf8:
                raise _utf8_error()
            return _u_domain(d)
        return d.lower().decode("ascii")


def _u_domain(d: bytes) -> str:
    """A Domain holding U-labels (RFC 6531 §3.3, RFC 5890): returned lower-cased, as str.

    Limits apply to the A-label (punycode) form.  A non-ASCII character must be a letter, mark or digit
    (an approximation of IDNA2008 PVALID that keeps out spaces, dots like U+3002, symbols and controls),
    and each label must be in NFC.
    """
    try:
        s = d.decode("utf-8")
    except UnicodeDecodeError:
        raise _address_error() from None
    total = 0
    labels = s.split(".")
    for label in labels:
        if not label or label.startswith("-") or label.endswith("-"):
            raise _address_error()
        if label.isascii():
            if label.encode("ascii").translate(None, _LDH_DOT):
                raise _address_error()
            size = len(label)
        else:
            for ch in label:
                if ch < "\x80":
                    if not ch.isalnum() and ch != "-":
                        raise _address_error()
                elif unicodedata.category(ch)[0] not in "LMN":
                    raise _address_error()
            if not unicodedata.is_normalized("NFC", label):
                raise _address_error()
            size = 4 + len(label.encode("punycode"))  # "xn--" + punycode (RFC 3492)
        if size > 63:
            raise _address_error()
        total += size + 1
    if total - 1 > 255 or labels[len(labels) - 1].isdigit():
        raise _address_error()
    return s.lower()


def _address_literal(d: bytes) -> str:
    """address-literal = "[" ( IPv4-address-literal / IPv6-address-literal ) "]" (RFC 5321 §4.1.3).

    General-address-literal (other tags) is refused.  Returned in canonical form.
    """
    n = len(d)
    if n < 3 or d[n - 1] != 93:  # "]"
        raise _address_error()
    inner = d[1 : n - 1]
    if inner[:5].lower() == b"ipv6:":
        text = inner[5:]
        if not text or text.translate(None, _IPV6_CHARS):  # keeps out "%scope" and the like
            raise _address_error()
        try:
            ip6 = ipaddress.IPv6Address(text.decode("ascii"))
        except ValueError:
            raise _address_error() from None
        return f"[ipv6:{ip6}]"
    if inner.translate(None, _DIGITS_DOT):
        raise _address_error()
    try:
        ip4 = ipaddress.IPv4Address(inner.decode("ascii"))  # refuses leading zeros (no octal ambiguity)
    except ValueError:
        raise _address_error() from None
    return f"[{ip4}]"


# -- xtext (RFC 3461 §4) ----------------------------------------------------------------------------------

def xtext_decode(s: str) -> str:
    """Decode xtext ("+" 2HEXDIGIT escapes); malformed xtext raises SMTPSyntaxError 501 5.5.4.

    Lower-case hex digits are accepted too; the decoded octets must be UTF-8.
    """
    if not s.isascii():
        raise _param_error()
    b = s.encode("ascii")
    if b.translate(None, _XCHAR):
        # Only "+" may be left: "=", SP and controls are not xtext.
        if b.translate(None, _XCHAR + b"+"):
            raise _param_error()
    else:
        return s
    out = bytearray()
    i = 0
    k = b.find(b"+")
    while k >= 0:
        out += b[i:k]
        h = b[k + 1 : k + 3]
        if len(h) != 2 or h.translate(None, _HEX):
            raise _param_error()
        out.append(int(h, 16))
        i = k + 3
        k = b.find(b"+", i)
    out += b[i:]
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise _param_error() from None


def xtext_encode(s: str) -> str:
    """Encode as xtext: every octet of the UTF-8 form outside xchar becomes "+" 2HEXDIGIT (upper case)."""
    b = s.encode("utf-8")
    if not b.translate(None, _XCHAR):
        return s
    out = []
    for c in b:
        if 33 <= c <= 126 and c != 43 and c != 61:
            out.append(chr(c))
        else:
            out.append(f"+{c:02X}")
    return "".join(out)


# -- replies (the client side: RFC 5321 §4.2, RFC 3463 / RFC 2034 enhanced status codes) ----------------------

class ReplySyntaxError(ValueError):
    """A server's reply line is malformed (not 3 digits followed by SP, "-" or the end of the line)."""


def parse_reply_line(line: bytes) -> tuple[int, bool, bytes]:
    """One reply line, terminator removed: (code, last line of the reply?, text).

    RFC 5321 §4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF,
    Reply-code = %x32-35 %x30-35 %x30-39.  A bare code ("250") is a last line with no text.  The code's
    first digit must be 2..5; the second and third are any digit (servers do send x6x/x7x/x8x/x9x).
    """
    n = len(line)
    if n < 3:
        raise ReplySyntaxError(line[:64])
    c0 = line[0]
    c1 = line[1]
    c2 = line[2]
    if c0 < 50 or c0 > 53 or c1 < 48 or c1 > 57 or c2 < 48 or c2 > 57:
        raise ReplySyntaxError(line[:64])
    code = (c0 - 48) * 100 + (c1 - 48) * 10 + (c2 - 48)
    if n == 3:
        return code, True, b""
    sep = line[3]
    if sep == 45:  # "-"
        return code, False, line[4:]
    if sep == 32:  # " "
        return code, True, line[4:]
    raise ReplySyntaxError(line[:64])


def split_enhanced(text: bytes, code: cython.int) -> tuple[str, bytes]:
    """(enhanced status code, rest of the text) when `text` starts with one whose class matches the reply
    code's first digit (RFC 3463 §2: class "." subject "." detail, subject and detail 1-3 digits); else
    ("", text)."""
    n = len(text)
    if n < 5 or text[0] != 48 + code // 100 or text[1] != 46:
        return "", text
    i = 2
    digits = 0
    while i < n and 48 <= text[i] <= 57:
        i += 1
        digits += 1
    if digits < 1 or digits > 3 or i >= n or text[i] != 46:
        return "", text
    i += 1
    digits = 0
    while i < n and 48 <= text[i] <= 57:
        i += 1
        digits += 1
    if digits < 1 or digits > 3 or (i < n and text[i] != 32):
        return "", text
    return text[:i].decode("ascii"), text[i + 1:]
