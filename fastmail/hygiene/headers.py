"""Header surgery on a received message for the checks (fastmail.hygiene.inbound): splitting the header
section into fields, removing fields, replacing the Subject, and writing new fields folded validly.

New fields are written by `field()` (RFC 5322 §2.2, §2.2.3): a value that arrives with line breaks of its
own (rspamd folds X-Spamd-Result with CRLF TAB) keeps them as fold points, a bare CR or LF becomes one too,
every continuation line starts with white space (a line that did not would start a field of its own — a
header injection), lines of white space only are dropped (an empty one would end the header section), and
a line over `WIDTH` characters is folded at its last white space before it.  No line ever passes 998
octets (§2.1.1): a run without white space that long is cut (a space is inserted), which changes the value
but keeps the message valid.

`merge_spam_fields()` puts our X-Spam-* fields and the ones rspamd's milter block asks for (`add_headers`)
together: one field per name, ours first and winning a name both write, and it names every field to remove
from the message first, so that a sender's forged "X-Spam-Flag: NO" never survives next to our verdict.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

WIDTH = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
LIMIT = 998  # ... and MUST be at most 998 octets, CRLF excluded

_FIELD_START = re.compile(rb"(?m)^(?=[^ \t\r\n])")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 §3.6.8 ftext
_BREAK = re.compile(r"\r\n|\r|\n")

# Fields that only we may write: a filter's Authentication-Results would carry whatever authserv-id it likes.
NEVER_FROM_FILTER = frozenset({"authentication-results", "received"})


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(header section including its last CRLF, the rest from the empty line on)."""
    if raw.startswith(b"\r\n"):
        return b"", raw
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw, b""
    return raw[: end + 2], raw[end + 2:]


def header_fields(head: bytes) -> list[bytes]:
    """The header section as whole fields (folded lines kept with their field)."""
    starts = [m.start() for m in _FIELD_START.finditer(head)]
    if not head:
        return []
    if not starts or starts[0]:  # a first line that starts with white space: kept, as a "field" of its own
        starts.insert(0, 0)
    return [head[a:b] for a, b in zip(starts, [*starts[1:], len(head)], strict=True)]


def field_name(f: bytes) -> bytes:
    return f.split(b":", 1)[0].strip().lower()


def valid_name(name: str) -> bool:
    return bool(_FIELD_NAME.fullmatch(name))


def strip_authres(raw: bytes, authserv_id: str) -> tuple[bytes, int]:
    """Remove Authentication-Results fields whose authserv-id is ours (RFC 8601 §5); (message, removed)."""
    head, rest = split_message(raw)
    if b"authentication-results" not in head.lower():
        return raw, 0
    ours = authserv_id.lower().encode()
    kept, removed = [], 0
    for f in header_fields(head):
        if field_name(f) == b"authentication-results":
            ident = authserv_id_of(f.split(b":", 1)[1]) if b":" in f else None
            if ident is not None and ident.lower() == ours:
                removed += 1
                continue
        kept.append(f)
    return b"".join(kept) + rest, removed


def _skip_cfws(v: bytes, i: int) -> int:
    """The offset after the CFWS at `i` (RFC 5322 §3.2.2: comments nest and hold quoted-pairs)."""
    depth, n = 0, len(v)
    while i < n:
        c = v[i]
        if depth and c == 0x5C:  # "\\" quoted-pair
            i += 2
            continue
        if c == 0x28:  # "("
            depth += 1
        elif depth and c == 0x29:  # ")"
            depth -= 1
        elif not depth and c not in b" \t\r\n":
            break
        i += 1
    return i


_TOKEN = re.compile(rb"[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]+")  # RFC 2045 §5.1 token


def authserv_id_of(value: bytes) -> bytes | None:
    """The authserv-id an Authentication-Results field value starts with (RFC 8601 §2.2: [CFWS] value, a
    token or a quoted-string, RFC 2045 §5.1), unquoted; None when there is none.  As a reader of the field
    finds it: a comment in a comment, or the id in quotes, must not hide ours from the stripping."""
    i = _skip_cfws(value, 0)
    if value[i:i + 1] != b'"':
        m = _TOKEN.match(value, i)
        return m.group() if m else None
    out = bytearray()
    i += 1
    while i < len(value):
        c = value[i]
        if c == 0x22:  # the closing quote
            return bytes(out)
        if c == 0x5C:  # "\\" quoted-pair
            i += 1
            if i >= len(value):
                break
            c = value[i]
        if c not in b"\r\n":  # folding inside the quotes
            out.append(c)
        i += 1
    return None


def edit_headers(raw: bytes, remove: Mapping[str, int], subject: str | None) -> bytes:
    """Drop fields and, with `subject`, replace the Subject field's value (or add one).

    `remove`: name -> which instance, as rspamd's milter block says it: 0 every one, n > 0 the n-th,
    n < 0 the n-th from the end."""
    if not remove and subject is None:
        return raw
    head, rest = split_message(raw)
    fields = header_fields(head)
    names = [field_name(f) for f in fields]
    drop: set[int] = set()
    for name, instance in remove.items():
        key = name.lower().encode()
        where = [i for i, n in enumerate(names) if n == key]
        if instance == 0:
            drop.update(where)
        elif 0 < instance <= len(where):
            drop.add(where[instance - 1])
        elif 0 < -instance <= len(where):
            drop.add(where[instance])
    out: list[bytes] = []
    had_subject = False
    for i, f in enumerate(fields):
        if i in drop:
            continue
        if subject is not None and names[i] == b"subject":
            if had_subject:
                continue
            had_subject = True
            f = field("Subject", subject)
        out.append(f)
    if subject is not None and not had_subject:
        out.append(field("Subject", subject))
    return b"".join(out) + rest


def field(name: str, value: str, width: int = WIDTH) -> bytes:
    """`name: value` CRLF, folded: the value's own line breaks kept as folds, long lines folded at white
    space, no line over LIMIT octets (module doc).  UTF-8 as is (RFC 6532)."""
    lines: list[str] = []
    for i, line in enumerate(_BREAK.split(value)):
        if not line.strip():
            continue  # nothing but white space: dropped (an empty line would end the header section)
        if i and lines and line[0] not in " \t":
            line = " " + line  # a continuation must start with white space, or it starts a new field
        lines.append(line.rstrip())
    if not lines:
        lines = [""]
    first = f"{name}: {lines[0].lstrip()}" if lines[0].strip() else f"{name}:"
    out = _fold_line(first, width, len(name) + 2)  # never right after the colon: the value starts there
    for line in lines[1:]:
        out.extend(_fold_line(line, width))
    return ("\r\n".join(out) + "\r\n").encode("utf-8")


def _fold_line(line: str, width: int, start: int = 0) -> list[str]:
    """One logical line as physical lines: folded before white space past `width` (not before index
    `start`); cut past LIMIT."""
    out: list[str] = []
    while _octets(line) > width:
        cut = _fold_point(line, width, start)
        if cut is None:
            cut = _fold_point(line, LIMIT, start)  # no white space early enough: go long, not past the limit
        start = 0
        if cut is None:
            if _octets(line) <= LIMIT:
                break
            cut = _char_index(line, LIMIT - 1)  # one run longer than a line may be: cut it
            out.append(line[:cut])
            line = " " + line[cut:]
            continue
        out.append(line[:cut])
        line = line[cut:]
    out.append(line)
    return out


def _fold_point(line: str, width: int, start: int = 0) -> int | None:
    """The index (> `start`) of the last white space at which `line` can be folded so that its first part
    has at most `width` octets and is not only white space; None when there is none."""
    limit = _char_index(line, width)
    start = max(start, len(line) - len(line.lstrip(" \t")))
    # line[:i] is not only white space exactly when i is past the first character that is not (str.strip's
    # white space), so the fold point is the last SP or HT in (max(start, first), limit], found by rfind
    first = len(line) - len(line.lstrip())
    lo, hi = max(start, first) + 1, min(limit, len(line) - 1) + 1
    if lo >= hi:
        return None
    i = max(line.rfind(" ", lo, hi), line.rfind("\t", lo, hi))
    return i if i >= 0 else None


def _octets(s: str) -> int:
    return len(s.encode("utf-8"))


def _char_index(s: str, octets: int) -> int:
    """How many characters of `s` fit in `octets` UTF-8 octets."""
    if len(s) == _octets(s):
        return min(octets, len(s))
    total = 0
    for i, c in enumerate(s):
        total += len(c.encode("utf-8"))
        if total > octets:
            return i
    return len(s)


def merge_spam_fields(ours: Iterable[tuple[str, str]], theirs: Mapping[str, str]) -> tuple[bytes, set[str]]:
    """Our X-Spam-* fields and the filter's add_headers as one block of fields, one per name (ours first;
    a name both write keeps ours), and the lower-case names to remove from the message before it is stored.
    Fields the filter may not write (NEVER_FROM_FILTER) and names that are not field names are left out."""
    block: list[bytes] = []
    names: set[str] = set()
    for name, value in [*ours, *theirs.items()]:
        key = name.lower()
        if key in names or not valid_name(name) or (key in NEVER_FROM_FILTER):
            continue
        names.add(key)
        block.append(field(name, value))
    return b"".join(block), names
