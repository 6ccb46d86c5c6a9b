"""SMTP command-line and address parsing: bytes in, tokens out (no policy, no state).

RFC 5321 §4.1.1 (commands), §4.1.2 (command argument syntax: Path, Mailbox, Local-part, Domain,
address literals), §4.1.3 (address literals), §4.5.3.1 (size limits), RFC 6531 §3.3 (SMTPUTF8: UTF-8 in
addresses and esmtp-values), RFC 3461 §4 (xtext).

This is the foundation of the relay check, so it is exact and strict: whatever it returns is a mailbox
whose domain a policy can compare with its own, whatever trick the client tried.
    - a source route (@a,@b:user@d, RFC 5321 §4.1.1.3 / Appendix C) is validated and dropped;
    - the local part is returned unquoted ("user@remote"@local -> local part 'user@remote', domain
      'local'); % ! + are ordinary atext and are returned as they are (user%remote@local is local);
    - the domain is lower-cased; an address literal is validated (IPv4, IPv6 only) and returned in
      canonical form, "[192.0.2.1]" or "[ipv6:2001:db8::1]";
    - a trailing dot, an empty label, an all-numeric top-level label, over-long parts: syntax errors.
"""

from __future__ import annotations

import ipaddress
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


# -- character classes (for bytes.translate(None, CLASS): what is left is outside the class) ------------

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
_HIGH = bytes(range(128, 256))  # bytes of UTF8-non-ascii (RFC 6531 §3.3)
_DIGITS_DOT = b"0123456789."
_IPV6_CHARS = b"0123456789ABCDEFabcdef:."

# The same classes as bits of a 256-entry table, for the compiled byte loops.
_C_ATEXT = 1  # atext, without "."
_C_LDH = 2  # letter, digit, hyphen
_C_DIGIT = 4
_C_ALPHA = 8


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
    return bytes(table)


_CLASS = _class_table()

# Upper-cased str for the verbs we see all day, as sent (saves upper() + decode()).
_VERBS = {}
for _v in ("HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY",
           "EXPN", "HELP", "AUTH", "STARTTLS", "ETRN"):
    _VERBS[_v.encode()] = _v
    _VERBS[_v.lower().encode()] = _v
del _v


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
        verb = line[:i] if i < n else line
        if i == n:
            i = -1
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
    """
    head = args[:5]
    if head != b"FROM:" and head.upper() != b"FROM:":
        raise _param_error()
    bounds = _path_bounds(args, 5)
    a: cython.Py_ssize_t = bounds[0]
    b: cython.Py_ssize_t = bounds[1]
    params = _parse_params(args, b + 1)
    utf8 = "SMTPUTF8" in params  # RFC 6531 §3.4
    if params:
        _decode_values(params, utf8)
    if a == b:
        return None, params  # RFC 5321 §4.5.5 null reverse-path
    return parse_path(args[a:b], utf8), params


def parse_rcpt_to(args: bytes, utf8: bool = False) -> tuple[tuple[str, str], dict[str, str | None]]:
    """Parse the argument of RCPT: "TO:" ( "<Postmaster>" / Forward-path ) [SP Rcpt-parameters].

    `utf8`: the transaction's MAIL carried SMTPUTF8.  "<Postmaster>" gives ("postmaster", "").
    """
    head = args[:3]
    if head != b"TO:" and head.upper() != b"TO:":
        raise _param_error()
    bounds = _path_bounds(args, 3)
    a: cython.Py_ssize_t = bounds[0]
    b: cython.Py_ssize_t = bounds[1]
    params = _parse_params(args, b + 1)
    if params:
        _decode_values(params, utf8)
    if b - a == 10 and args[a:b].lower() == b"postmaster":
        return ("postmaster", ""), params  # RFC 5321 §4.1.1.3: no domain, any case
    address = parse_path(args[a:b], utf8)
    if address is None:
        raise _address_error()  # a forward-path is never null
    return address, params


def _path_bounds(args: bytes, p: cython.Py_ssize_t) -> tuple[int, int]:
    """(a, b): the path between "<" and ">" is args[a:b]; args[b] is the ">".  One SP after the colon
    is tolerated; the angle brackets are required (RFC 5321 §4.1.2 Path)."""
    n = len(args)
    if p < n and args[p] == 32:
        p += 1
    if p >= n or args[p] != 60:  # "<"
        raise _param_error()
    a = p + 1
    b = args.find(b">", a)
    if b < 0:
        raise _param_error()
    q = args.find(b'"', a, b)
    if q >= 0:
        # A Quoted-string local part may hold ">": find its end first.
        q = _quoted_end(args, q)
        if q < 0:
            raise _param_error()
        b = args.find(b">", q + 1)
        if b < 0:
            raise _param_error()
    return a, b


def _parse_params(args: bytes, p: cython.Py_ssize_t) -> dict:
    """esmtp-param *(SP esmtp-param) after the path (RFC 5321 §4.1.2); values still bytes."""
    params: dict = {}
    n = len(args)
    if p >= n:
        return params
    if args[p] != 32:
        raise _param_error()
    for item in args[p + 1 :].split(b" "):
        if not item:
            continue  # tolerate runs of SP between parameters
        eq = item.find(b"=")
        if eq < 0:
            key = item
            value = None
        else:
            key = item[:eq]
            value = item[eq + 1 :]
            if not value:
                raise _param_error()
        # esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        if not key.isalnum() and (not key[:1].isalnum() or not key.replace(b"-", b"").isalnum()):
            raise _param_error()
        name = key.upper().decode("ascii")
        if name in params:
            raise _param_error()
        params[name] = value
    return params


def _decode_values(params: dict, utf8: bool) -> None:
    """esmtp-value = 1*(%d33-60 / %d62-126), plus UTF8-non-ascii under SMTPUTF8 (RFC 6531 §3.3)."""
    for name, value in params.items():
        if value is None:
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

def parse_path(path: bytes, utf8: bool) -> tuple[str, str] | None:
    """Parse what is between "<" and ">": None for the null path, else (local_part, domain).

    Path = "<" [ A-d-l ":" ] Mailbox ">";  Mailbox = Local-part "@" ( Domain / address-literal ).
    The source route is validated and dropped; the local part is returned unquoted.
    """
    n = len(path)
    if n == 0:
        return None
    if not utf8 and not path.isascii():
        raise _utf8_error()
    p: cython.Py_ssize_t = 0
    if path[0] == 64:  # "@": A-d-l, RFC 5321 §4.1.1.3 "SHOULD accept and ignore"
        p = _skip_route(path, utf8)
    if n - p > 254 or p >= n:  # RFC 5321 §4.5.3.1.3: Path <= 256 octets with the brackets
        raise _address_error()
    if path[p] == 34:  # Quoted-string
        q = _quoted_end(path, p)
        if q < 0:
            raise _address_error()
        at = q + 1
        if at >= n or path[at] != 64:
            raise _address_error()
        local = _unquote(path[p + 1 : q], utf8)
    else:  # Dot-string
        at = path.find(b"@", p)
        if at < 0:
            raise _address_error()
        local = _dot_string(path[p:at], utf8)
    if at - p > 64:  # RFC 5321 §4.5.3.1.1: local-part <= 64 octets (as sent)
        raise _address_error()
    return local, _domain(path[at + 1 :], utf8)


def _skip_route(path: bytes, utf8: bool) -> cython.Py_ssize_t:
    """A-d-l = At-domain *( "," At-domain ); return the index after the ":" that ends it."""
    n = len(path)
    p = 0
    while True:
        if p >= n or path[p] != 64:
            raise _address_error()
        p += 1
        if p < n and path[p] == 91:  # "[": an address literal may hold ":"
            e = path.find(b"]", p)
            if e < 0:
                raise _address_error()
            e += 1
        else:
            e = path.find(b":", p)
            c = path.find(b",", p, e if e >= 0 else n)
            if c >= 0:
                e = c
            if e < 0:
                raise _address_error()
        _domain(path[p:e], utf8)  # validated, then ignored
        if e >= n:
            raise _address_error()
        if path[e] == 58:  # ":"
            return e + 1
        if path[e] != 44:  # ","
            raise _address_error()
        p = e + 1


def _quoted_end(s: bytes, q: cython.Py_ssize_t) -> cython.Py_ssize_t:
    """Index of the DQUOTE closing the quoted string opened at s[q], or -1."""
    i = q + 1
    while True:
        j = s.find(b'"', i)
        if j < 0:
            return -1
        k = s.find(b"\\", i, j)
        if k < 0:
            return j
        i = k + 2  # quoted-pairSMTP: skip the escaped byte, which may be a DQUOTE


def _dot_string(b: bytes, utf8: bool) -> str:
    """Dot-string = Atom *("." Atom); Atom = 1*atext (RFC 5321 §4.1.2, RFC 6531 §3.3 for UTF-8)."""
    n = len(b)
    if cython.compiled:
        s: cython.p_const_uchar = b
        t: cython.p_const_uchar = _CLASS
        dot = True  # at the start, or after a "."
        high = False
        for i in range(n):
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
            return b.decode("ascii")
    else:
        if n == 0 or b[0] == 46 or b[n - 1] == 46 or b.find(b"..") >= 0:
            raise _address_error()
        rest = b.translate(None, _ATEXT_DOT)
        if not rest:
            return b.decode("ascii")
        if not utf8 or rest.translate(None, _HIGH):
            raise _address_error()
    try:
        return b.decode("utf-8")
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


def _domain(d: bytes, utf8: bool) -> str:
    """Domain / address-literal (RFC 5321 §4.1.2, §4.1.3; RFC 6531 §3.3 U-labels under SMTPUTF8)."""
    n = len(d)
    if n == 0 or n > 255:  # RFC 5321 §4.5.3.1.2
        raise _address_error()
    if d[0] == 91:  # "["
        return _address_literal(d)
    if not d.isascii():
        if not utf8:
            raise _utf8_error()
        return _u_domain(d)
    # sub-domain = Let-dig [Ldh-str]: no empty label, no hyphen at either end of a label, <= 63 octets.
    # RFC 3696 §2: a top-level label is never all-numeric (so "1.2.3.4" is not a domain name).
    if cython.compiled:
        s: cython.p_const_uchar = d
        t: cython.p_const_uchar = _CLASS
        label = 0
        digits = True
        c = 46
        for i in range(n):
            c = s[i]
            if c == 46:
                if label == 0 or s[i - 1] == 45:
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
            else:
                raise _address_error()
        if label == 0 or c == 45 or digits:
            raise _address_error()
    else:
        if (
            d.translate(None, _LDH_DOT)
            or d[0] == 46
            or d[0] == 45
            or d[n - 1] == 46
            or d[n - 1] == 45
            or d.find(b"..") >= 0
            or d.find(b"-.") >= 0
            or d.find(b".-") >= 0
        ):
            raise _address_error()
        dot = d.rfind(b".")
        if d[dot + 1 :].isdigit():
            raise _address_error()
        if n > 63:
            for label in d.split(b"."):
                if len(label) > 63:
                    raise _address_error()
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
