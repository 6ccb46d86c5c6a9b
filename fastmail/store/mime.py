"""IMAP ENVELOPE, BODY, BODYSTRUCTURE and the section map of a message, computed once at delivery.

analyze(raw) parses the message once (with the scanners of fastmail._core.mime) and returns plain lists,
ints, strs and Nones that orjson stores as they are; render(value) writes any of them as IMAP wire bytes
later; section_bytes(raw, parts, section) cuts a BODY[section] out of the stored message with the section
map, without parsing it again.

    analyze(raw) -> {"v": 1, "envelope": ENV, "body": BODY, "bodystructure": BS, "parts": PARTS}

ENV, BODY and BS mirror the IMAP s-expressions of RFC 3501 §7.4.2 / RFC 9051 §7.5.2 item for item: None is
NIL, an int a number, a str a string, a list a parenthesized list.  BODY is the non-extensible form (FETCH
BODY), BS the extensible one (FETCH BODYSTRUCTURE); to_body(BS) == BODY.

PARTS is the section map, one node per MIME entity, offsets into raw:

    [header_start, body_start, end]                          a leaf part
    [header_start, body_start, end, MULTIPART, [child, ...]]  a multipart (children in order)
    [header_start, body_start, end, MESSAGE, inner]           message/rfc822 or message/global:
                                                               inner is the node of the encapsulated message
                                                               (inner starts at body_start, ends at end)

raw[header_start:body_start] is the entity's header including the empty line that ends it (the MIME
header of a part, RFC 3501 §6.4.5 "MIME"); raw[body_start:end] its body (the line break before a
boundary line belongs to the boundary).  The root node is the whole message: [0, body_start, len(raw), ...].

Choices, where the RFCs leave room (most follow Dovecot, which the brief names as the model):
- Header bytes become str as UTF-8 when they are valid UTF-8, else as Latin-1 (every byte one char), per
  field value; NUL becomes U+FFFD.  Values are unfolded (CR and LF removed, RFC 5322 §2.2.3) and stripped.
- A field that occurs more than once counts by its first occurrence (envelope and Content-* alike).
- Encoded-words (RFC 2047) and RFC 2231 parameters are returned raw: clients decode them.
- Types, subtypes, parameter names and values are returned as written; defaults are Dovecot's spelling:
  "text" "plain" ("charset" "us-ascii"), "7bit".  A text/* part without a charset parameter gets
  ("charset" "us-ascii") appended (RFC 2046 §4.1.2 default made explicit).
- Content-* fields count only in a MIME entity: a part of a multipart, or a message with MIME-Version or
  Content-Type (RFC 2045 §4; Dovecot's non-strict rule).
- A syntactically invalid Content-Type (no type/subtype, or a multipart without a boundary) is treated as
  absent (RFC 2045 §5.2): text/plain; charset=us-ascii, or message/rfc822 inside multipart/digest
  (RFC 2046 §5.1.5).
- A multipart with no body parts gets one empty text/plain part in BODY/BODYSTRUCTURE (the grammar wants
  1*body); the section map has no child for it.
- Addresses: groups give (NIL NIL "name" NIL) ... (NIL NIL NIL NIL) (RFC 3501 §7.4.2); a display name is
  the phrase with quotes removed and words joined by one space, or else the last comment of the addr-spec;
  the local part comes unquoted; a missing local part or domain is "MISSING_MAILBOX" / "MISSING_DOMAIN"
  (Dovecot; a NIL host would read as a group marker).  Sender and Reply-To default to From.
- Nesting deeper than MAX_DEPTH, and parts beyond MAX_PARTS, are not split further: such a multipart or
  message part is described as application/octet-stream.

Nothing here raises on bad input: a header with no empty line runs to the end of its part, an unterminated
multipart ends at the end of its parent, a boundary line cuts a part's header short.
"""

from __future__ import annotations

import re
from typing import Any

from fastmail._core import fetch as _fetch
from fastmail._core import mime as _m

VERSION = 1

MULTIPART = 1
MESSAGE = 2

MAX_DEPTH = 100  # nested multipart / message levels that are split (Dovecot: max_nested_mime_parts)
MAX_PARTS = 10000  # MIME entities per message that are split (Dovecot: max_total_mime_parts)

_ATOM = _m.ATOM
_QUOTED = _m.QUOTED

_MIME_FIELDS = frozenset(
    {
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"content-id",
        b"content-description",
        b"content-disposition",
        b"content-language",
        b"content-location",
        b"content-md5",
    }
)
_MESSAGE_FIELDS = _MIME_FIELDS | {
    b"date",
    b"subject",
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"bcc",
    b"in-reply-to",
    b"message-id",
}

_DEFAULT_CHARSET = ("charset", "us-ascii")


def _empty_body() -> list:
    """The 0-length text/plain body written for a multipart that has no parts (Dovecot's EMPTY_BODY)."""
    return ["text", "plain", list(_DEFAULT_CHARSET), None, None, "7bit", 0, 0]


def _s(b: bytes) -> str:
    """Header bytes as str: UTF-8 when valid, else Latin-1; NUL (not allowed on the wire) as U+FFFD."""
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        s = b.decode("latin-1")
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    return s


def _ns(b: bytes | None) -> str | None:
    return None if b is None else _s(b)


# --- addresses (RFC 5322 §3.4, obs-syntax of §4.4; parsed by fastmail._core.mime.parse_addresses) ----------


def addresses(value: bytes | None) -> list | None:
    """An address-list field value as IMAP address structures, or None (NIL) when it holds none."""
    if value is None:
        return None
    out = _m.parse_addresses(value)
    if not out:
        return None
    for addr in out:
        for i in range(4):
            b = addr[i]
            if b is not None:
                addr[i] = _s(b)
    return out


def envelope(h: dict) -> list:
    """The ENVELOPE of a message from its header fields (lowercase name -> unfolded value)."""
    frm = addresses(h.get(b"from"))
    return [
        _ns(h.get(b"date")),
        _ns(h.get(b"subject")),
        frm,
        addresses(h.get(b"sender")) or frm,  # RFC 3501 §7.4.2: absent or empty -> From
        addresses(h.get(b"reply-to")) or frm,
        addresses(h.get(b"to")),
        addresses(h.get(b"cc")),
        addresses(h.get(b"bcc")),
        _ns(h.get(b"in-reply-to")),
        _ns(h.get(b"message-id")),
    ]


# --- MIME fields (RFC 2045, 2183, 3282, 2557, 1864) ------------------------------------------------------


def _params(params: list) -> list:
    out = []
    for name, value in params:
        out.append(_s(name))
        out.append(_s(value))
    return out


def _disposition(value: bytes | None) -> list | None:
    if value is None:
        return None
    typ, _sub, params = _m.content_value(value, False)
    if not typ:
        return None
    return [_s(typ), _params(params) or None]


def _language(value: bytes | None) -> list | None:
    if value is None:
        return None
    langs = [_s(t) for k, t in _m.lex_address(value) if k == _ATOM or k == _QUOTED]
    return langs or None


def _encoding(value: bytes | None) -> str:
    if value is not None:
        token = _m.content_value(value, False)[0]
        if token:
            return _s(token)
    return "7bit"


# --- the walk ------------------------------------------------------------------------------------------


class _Walk:
    """One pass over a message: each entity is parsed where it starts, its body scanned to the next line
    that matches an active boundary (Dovecot's algorithm: boundaries of every enclosing multipart count, so
    an unterminated inner multipart ends at its parent's next boundary)."""

    __slots__ = ("raw", "end", "count")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.end = len(raw)
        self.count = 0

    def entity(self, start: int, bounds: list, context: int, depth: int) -> tuple:
        """Parse the entity at raw[start].  context: 0 a message (top level or encapsulated), 1 a part of a
        multipart, 2 a part of a multipart/digest.

        Returns (bs, body, node, envelope, part_end, bidx, bclose, bnext): the last four describe the
        boundary line that ended it (bidx -1: the end of the message)."""
        raw = self.raw
        end = self.end
        self.count += 1
        fields_end, body_start, bidx, bclose, bnext = _m.scan_header(raw, start, end, bounds)
        h: dict = {}
        for name, value in _m.fields(raw, start, fields_end, _MIME_FIELDS if context else _MESSAGE_FIELDS):
            if name not in h:
                h[name] = value
        env = envelope(h) if context == 0 else None
        cut = bidx >= 0  # a boundary line came before the end of the header: no body

        is_mime = context != 0 or b"mime-version" in h or b"content-type" in h
        kind = 0  # 0 basic, 1 multipart, 2 message, 3 text
        typ = sub = ""
        params: list = []
        boundary = b""
        if is_mime and b"content-type" in h:
            t, st, plist = _m.content_value(h[b"content-type"], True)
            if t and st:
                tl = t.lower()
                stl = st.lower()
                if tl == b"multipart":
                    for pname, pvalue in plist:
                        if pname.lower() == b"boundary":
                            boundary = pvalue
                            break
                    if boundary:
                        kind = MULTIPART
                elif tl == b"message" and (stl == b"rfc822" or stl == b"global"):
                    kind = MESSAGE
                elif tl == b"text":
                    kind = 3
                if kind or tl != b"multipart":
                    typ = _s(t)
                    sub = _s(st)
                    params = _params(plist)
        if not typ:  # absent or invalid: RFC 2045 §5.2, RFC 2046 §5.1.5
            if context == 2:
                kind, typ, sub = MESSAGE, "message", "rfc822"
            else:
                kind, typ, sub = 3, "text", "plain"
        if (kind == MULTIPART or kind == MESSAGE) and (depth >= MAX_DEPTH or self.count >= MAX_PARTS):
            kind, typ, sub, params = 0, "application", "octet-stream", []

        if is_mime:
            cid = _ns(h.get(b"content-id"))
            desc = _ns(h.get(b"content-description"))
            enc = _encoding(h.get(b"content-transfer-encoding"))
            ext = [
                _ns(h.get(b"content-md5")),
                _disposition(h.get(b"content-disposition")),
                _language(h.get(b"content-language")),
                _ns(h.get(b"content-location")),
            ]
        else:
            cid = desc = None
            enc = "7bit"
            ext = [None, None, None, None]

        if kind == MULTIPART:
            kids_bs: list = []
            kids_body: list = []
            kids_node: list = []
            if cut:
                part_end = body_start
            else:
                inner = bounds + [boundary]
                me = len(bounds)
                part_end, bidx, bclose, bnext = _m.find_boundary(raw, body_start, end, inner)  # preamble
                child_context = 2 if sub.lower() == "digest" else 1
                while bidx == me and not bclose:
                    if self.count >= MAX_PARTS:  # stop splitting: skip to the close or an outer boundary
                        part_end, bidx, bclose, bnext = _m.find_boundary(raw, bnext, end, inner)
                        continue
                    cbs, cbody, cnode, _env, part_end, bidx, bclose, bnext = self.entity(
                        bnext, inner, child_context, depth + 1
                    )
                    kids_bs.append(cbs)
                    kids_body.append(cbody)
                    kids_node.append(cnode)
                if bidx == me:  # close delimiter: the epilogue runs to an outer boundary or the end
                    part_end, bidx, bclose, bnext = _m.find_boundary(raw, bnext, end, bounds)
            if not kids_bs:
                kids_body.append(_empty_body())
                kids_bs.append(kids_body[0] + [None, None, None, None])
            bs = kids_bs
            bs.append(sub)
            bs.append(params or None)
            bs.extend(ext[1:])
            body = kids_body
            body.append(sub)
            node = [start, body_start, part_end, MULTIPART, kids_node]
            return (bs, body, node, env, part_end, bidx, bclose, bnext)

        if kind == MESSAGE:
            if cut:
                part_end = body_start
                ibody = _empty_body()
                ibs = ibody + [None, None, None, None]
                inode = [body_start, body_start, body_start]
                ienv = [None] * 10
            else:
                ibs, ibody, inode, ienv, part_end, bidx, bclose, bnext = self.entity(
                    body_start, bounds, 0, depth + 1
                )
            size = part_end - body_start
            lines = _m.count_lines(raw, body_start, part_end)
            pv = params or None
            body = [typ, sub, pv, cid, desc, enc, size, ienv, ibody, lines]
            bs = [typ, sub, pv, cid, desc, enc, size, ienv, ibs, lines]
            bs.extend(ext)
            node = [start, body_start, part_end, MESSAGE, inode]
            return (bs, body, node, env, part_end, bidx, bclose, bnext)

        if cut:
            part_end = body_start
        else:
            part_end, bidx, bclose, bnext = _m.find_boundary(raw, body_start, end, bounds)
        size = part_end - body_start
        if kind == 3:
            for i in range(0, len(params), 2):
                if params[i].lower() == "charset":
                    break
            else:
                params.extend(_DEFAULT_CHARSET)
            body = [typ, sub, params, cid, desc, enc, size, _m.count_lines(raw, body_start, part_end)]
        else:
            body = [typ, sub, params or None, cid, desc, enc, size]
        bs = body + ext
        return (bs, body, [start, body_start, part_end], env, part_end, bidx, bclose, bnext)


def _analyze(raw: bytes) -> dict[str, Any]:
    bs, body, node, env, *_ = _Walk(raw).entity(0, [], 0, 0)
    return {"v": VERSION, "envelope": env, "body": body, "bodystructure": bs, "parts": node}


def analyze(raw: bytes) -> dict[str, Any]:
    """ENVELOPE, BODY, BODYSTRUCTURE and section map of the message `raw` (see the module docstring).

    Never raises on any input.  The body is scanned in place, never copied (a bytearray or memoryview is
    copied once into bytes first)."""
    if type(raw) is not bytes:
        raw = bytes(raw)
    try:
        return _analyze(raw)
    except Exception:  # pragma: no cover - a bug here must not cost a delivery; the tests call _analyze
        hdr = _m.scan_header(raw, 0, len(raw), [])
        size = len(raw) - hdr[1]
        body = ["text", "plain", list(_DEFAULT_CHARSET), None, None, "7bit", size]
        body.append(_m.count_lines(raw, hdr[1], len(raw)))
        return {
            "v": VERSION,
            "envelope": [None] * 10,
            "body": body,
            "bodystructure": body + [None, None, None, None],
            "parts": [0, hdr[1], len(raw)],
        }


def to_body(bs: list) -> list:
    """The non-extensible BODY form of a BODYSTRUCTURE value (drops the extension data)."""
    if bs and type(bs[0]) is list:  # multipart: 1*body subtype [ext]
        out = []
        i = 0
        while type(bs[i]) is list:
            out.append(to_body(bs[i]))
            i += 1
        out.append(bs[i])
        return out
    typ = bs[0].lower() if type(bs[0]) is str else ""
    sub = bs[1].lower() if type(bs[1]) is str else ""
    if typ == "text":
        return bs[:8]
    if typ == "message" and (sub == "rfc822" or sub == "global") and len(bs) >= 10 and type(bs[8]) is list:
        out = bs[:10]
        out[8] = to_body(bs[8])
        return out
    return bs[:7]


# --- rendering -------------------------------------------------------------------------------------------


def render(value: Any) -> bytes:
    """IMAP wire form of a value from analyze() (fastmail._core.mime.render): None -> NIL, int -> digits,
    str -> a quoted string when it is printable ASCII (tab allowed; \\ and " escaped), else a literal
    {n}CRLF of its UTF-8 bytes (NUL as U+FFFD); list -> "(" items ")" separated by one space, except that
    a leading run of lists (the bodies of a multipart, the addresses of an address list) is written with no
    separator, as RFC 3501's 1*body and 1*address require."""
    return _m.render(value)


def wire(meta: dict[str, Any]) -> bytes:
    """The stored wire form (the `msgwire` database) of an analyze() result: its ENVELOPE, BODY and
    BODYSTRUCTURE rendered once, at delivery, so that FETCH copies them (fastmail._core.fetch)."""
    return _fetch.wire_value(render(meta["envelope"]), render(meta["body"]), render(meta["bodystructure"]))


# --- sections (RFC 3501 §6.4.5) ------------------------------------------------------------------------

_PART_NUMBER = re.compile(r"([0-9]+)(\.|\Z)")
_HEADER_FIELDS = re.compile(r"HEADER\.FIELDS(\.NOT)?\s*\((.*)\)\s*$", re.S)


def header_fields(header: bytes, names: Any, not_: bool = False) -> bytes:
    """HEADER.FIELDS (not_ false) / HEADER.FIELDS.NOT (not_ true): the fields of the header block `header`
    whose names are (are not) in `names` (str or bytes, any case), as written, followed by the empty line."""
    wanted = {(n.encode("utf-8", "replace") if isinstance(n, str) else bytes(n)).lower() for n in names}
    out = [header[s:e] for name, s, e in _m.field_spans(header, 0, len(header)) if (name in wanted) != not_]
    if out and not out[-1].endswith(b"\n"):
        out.append(b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def _find(parts: list, nums: list) -> list | None:
    """The node for the part numbers `nums` (Dovecot's rules: a non-multipart entity is its own part 1;
    a message/rfc822 part is entered when more numbers follow it)."""
    cur = parts
    last = len(nums) - 1
    for k, num in enumerate(nums):
        if len(cur) > 3 and cur[3] == MULTIPART:
            kids = cur[4]
            if num > len(kids):
                return None
            cur = kids[num - 1]
        elif num != 1:
            return None
        if k < last and len(cur) > 3 and cur[3] == MESSAGE:
            cur = cur[4]
    return cur


def section_bytes(raw: bytes, parts: list, section: str) -> bytes | None:
    """The bytes of BODY[section] (RFC 3501 §6.4.5), or None when the section does not exist or is not
    valid for that part.  section: "", "HEADER", "TEXT", "1", "1.2", "1.2.HEADER", "1.MIME", "2.TEXT",
    "HEADER.FIELDS (A B)", "3.HEADER.FIELDS.NOT (A)" (keywords in any case)."""
    nums: list[int] = []
    rest = section
    while True:
        m = _PART_NUMBER.match(rest)
        if m is None:
            break
        digits = m.group(1)
        if digits[0] == "0":
            return None  # section-part = nz-number *("." nz-number)
        nums.append(int(digits))
        rest = rest[m.end() :]
        if m.group(2) == "." and not rest:
            return None
    spec = rest.upper()
    node = parts
    if nums:
        found = _find(parts, nums)
        if found is None:
            return None
        node = found
    if not spec:
        return raw[node[1] : node[2]] if nums else raw
    if spec == "MIME":
        return raw[node[0] : node[1]] if nums else None
    if nums:
        if not (len(node) > 3 and node[3] == MESSAGE):
            return None
        node = node[4]
    if spec == "HEADER":
        return raw[node[0] : node[1]]
    if spec == "TEXT":
        return raw[node[1] : node[2]]
    m = _HEADER_FIELDS.match(spec)
    if m is not None:
        names = [n.strip('"') for n in m.group(2).split()]
        return header_fields(raw[node[0] : node[1]], names, m.group(1) is not None)
    return None
