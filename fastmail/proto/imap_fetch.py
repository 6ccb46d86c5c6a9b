"""FETCH: parsing the item list and rendering one message's FETCH response (RFC 9051 §6.4.5, §7.5.2;
RFC 3516 BINARY; RFC 7162 MODSEQ).

ENVELOPE, BODY and BODYSTRUCTURE come from the index computed at delivery (fastmail.store.mime.analyze via
msgmeta); the message bytes are read only when an item needs them (BODY[...], RFC822*, BINARY*), and a
section is cut out with the stored section map, never by parsing again.
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable
from typing import Any

from fastmail._core import imap as core
from fastmail.store import mime
from fastmail.store.mailboxes import Mailboxes, Message
from fastmail.store.store import StoreError

_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
SIMPLE = frozenset({
    "FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822",
    "RFC822.HEADER", "RFC822.TEXT", "MODSEQ",
})
_SETS_SEEN = frozenset({"RFC822", "RFC822.TEXT"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class UnknownCTE(Exception):
    """BINARY of a part whose Content-Transfer-Encoding we cannot decode ([UNKNOWN-CTE], RFC 3516 §4.3)."""


def parse_items(token: Any) -> list[Any]:
    """The FETCH item list: a macro, one item or a parenthesized list; items upper-cased str or FetchAtt.
    IMAPSyntaxError for anything else."""
    if type(token) is str:
        upper = token.upper()
        if upper in _MACROS:
            return list(_MACROS[upper])
        token = [token]
    if type(token) is core.FetchAtt:
        return [token]
    if type(token) is not list or not token:
        raise core.IMAPSyntaxError("Invalid fetch items")
    out: list[Any] = []
    for item in token:
        if type(item) is core.FetchAtt:
            if item.name.startswith("BINARY") and item.text is not None:
                raise core.IMAPSyntaxError("BINARY takes part numbers only")
            out.append(item)
        elif type(item) is str and item.upper() in SIMPLE:
            out.append(item.upper())
        else:
            raise core.IMAPSyntaxError("Invalid fetch item")
    return out


def sets_seen(items: list[Any]) -> bool:
    """Fetching these items sets \\Seen (RFC 9051 §6.4.5: BODY[...] and BINARY[...] without .PEEK, RFC822,
    RFC822.TEXT)."""
    for item in items:
        if type(item) is str:
            if item in _SETS_SEEN:
                return True
        elif item.name in ("BODY", "BINARY"):
            return True
    return False


def needs_body(items: list[Any]) -> bool:
    return any(type(i) is not str or i in ("RFC822", "RFC822.HEADER", "RFC822.TEXT") for i in items)


def needs_meta(items: list[Any]) -> bool:
    """An item needs the index entry: ENVELOPE, BODY, BODYSTRUCTURE, or a section other than the whole
    message (BODY[] and BINARY[] are the stored bytes as they are)."""
    return any(i in ("ENVELOPE", "BODY", "BODYSTRUCTURE") if type(i) is str else bool(i.section)
               for i in items)


def internaldate(seconds: int) -> bytes:
    """date-time (RFC 9051 §9) in UTC: "17-Jul-1996 02:44:25 +0000"."""
    t = time.gmtime(seconds)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def parse_date_time(value: bytes) -> int | None:
    """APPEND's date-time "dd-Mon-yyyy hh:mm:ss +zzzz" (day may be " d") -> epoch seconds, or None."""
    try:
        text = value.decode("ascii").strip()
        day_s, mon_s, rest = text.split("-", 2)
        year_s, clock, zone = rest.split(" ")
        mon = _MONTHS.index(mon_s.capitalize()) + 1
        hh, mm, ss = (int(x) for x in clock.split(":"))
        day, year = int(day_s), int(year_s)
        if len(zone) != 5 or zone[0] not in "+-" or not zone[1:].isdigit() or len(clock) != 8:
            return None
        offset = (int(zone[1:3]) * 60 + int(zone[3:5])) * 60 * (1 if zone[0] == "+" else -1)
        if not (1 <= day <= 31 and 0 <= hh < 24 and 0 <= mm < 60 and 0 <= ss < 61 and 1900 < year < 10000):
            return None
        import calendar

        return calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0)) - offset
    except (ValueError, UnicodeDecodeError):
        return None


def flag_list(flags: list[str]) -> bytes:
    return b"(" + " ".join(flags).encode() + b")"


def _bs_node(bs: list, part: tuple) -> list | None:
    """The BODYSTRUCTURE node of part numbers `part` (same rules as mime._find)."""
    cur = bs
    last = len(part) - 1
    for k, num in enumerate(part):
        if cur and type(cur[0]) is list:
            kids = [x for x in cur if type(x) is list]
            if num > len(kids):
                return None
            cur = kids[num - 1]
        elif num != 1:
            return None
        if k < last and type(cur[0]) is str and str(cur[0]).lower() == "message" and len(cur) > 8 \
                and type(cur[8]) is list:
            cur = cur[8]
    return cur


def decode_cte(data: bytes, encoding: str) -> bytes:
    enc = encoding.lower()
    if enc in ("7bit", "8bit", "binary"):
        return data
    if enc == "base64":
        clean = data.translate(None, _NOT_B64)  # line breaks and stray bytes out, at C speed
        clean = clean[: len(clean) - len(clean) % 4]
        try:
            return binascii.a2b_base64(clean)
        except binascii.Error:
            return b""
    if enc == "quoted-printable":
        return binascii.a2b_qp(data)
    raise UnknownCTE(encoding)


_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_NOT_B64 = bytes(c for c in range(256) if c not in _B64)


def binary_section(raw: bytes, meta: dict[str, Any], part: tuple) -> bytes | None:
    """BINARY[part]: the part's body with its Content-Transfer-Encoding removed (RFC 3516 §4.2)."""
    if not part:
        return raw
    data = mime.section_bytes(raw, meta["parts"], ".".join(str(p) for p in part))
    node = _bs_node(meta["bodystructure"], part)
    if data is None or node is None:
        return None
    if type(node[0]) is list:
        return data  # a multipart has no encoding of its own
    enc = node[5] if len(node) > 5 and type(node[5]) is str else "7bit"
    return decode_cte(data, enc)


_META_KEYS = {"ENVELOPE": "envelope", "BODY": "body", "BODYSTRUCTURE": "bodystructure"}


class _Loaded:
    """One message's bytes and index entry, each read at most once and only when an item needs it."""

    __slots__ = ("_msg", "_body", "_meta_of", "_raw", "_meta")

    def __init__(self, msg: Message, body: Callable[[bytes], bytes],
                 meta: Callable[[bytes], dict[str, Any] | None]) -> None:
        self._msg = msg
        self._body = body
        self._meta_of = meta
        self._raw: bytes | None = None
        self._meta: dict[str, Any] | None = None

    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self._body(self._msg.blob)
        return self._raw

    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = self._meta_of(self._msg.blob)
            if self._meta is None:  # stored before the index held it: derive it now
                self._meta = mime.analyze(self.raw())
        return self._meta


class Fetcher:
    """Renders FETCH responses for one command: items parsed once, message data loaded lazily."""

    def __init__(self, items: list[Any], body: Callable[[bytes], bytes],
                 meta: Callable[[bytes], dict[str, Any] | None], uid: bool, modseq: bool) -> None:
        self.items = list(items)
        if uid and "UID" not in self.items:
            self.items.insert(0, "UID")
        if modseq and "MODSEQ" not in self.items:
            self.items.append("MODSEQ")
        self._body = body
        self._meta = meta

    def render(self, seq: int, msg: Message, flags_changed: bool = False) -> bytes:
        """"* seq FETCH (...)\r\n" for one message.  flags_changed: \\Seen was just set by this fetch,
        so FLAGS goes in even when not asked (RFC 9051 §6.4.5)."""
        return b"".join(self.render_parts(seq, msg, flags_changed))

    def render_parts(self, seq: int, msg: Message, flags_changed: bool = False) -> list[bytes]:
        """render() as the pieces it is made of: the message bytes of a literal are a piece of their own,
        not copied (BODY[] is the stored message object itself)."""
        loaded = _Loaded(msg, self._body, self._meta)
        items = self.items
        if flags_changed and "FLAGS" not in items:
            items = items + ["FLAGS"]
        out: list[bytes] = []
        text = [b"* %d FETCH (" % seq]  # small pieces, joined before each literal's data
        for k, item in enumerate(items):
            if k:
                text.append(b" ")
            if type(item) is not str:
                head, data = self._section(item, loaded)
                text.append(head)
                if data is not None:
                    out.append(b"".join(text))
                    out.append(data)
                    text = []
            elif item == "FLAGS":
                text.append(b"FLAGS " + flag_list(msg.flags))
            elif item == "UID":
                text.append(b"UID %d" % msg.uid)
            elif item == "INTERNALDATE":
                text.append(b"INTERNALDATE " + internaldate(msg.internaldate))
            elif item == "RFC822.SIZE":
                text.append(b"RFC822.SIZE %d" % msg.size)
            elif item == "MODSEQ":
                text.append(b"MODSEQ (%d)" % msg.modseq)
            elif item in _META_KEYS:
                text.append(item.encode() + b" " + mime.render(loaded.meta()[_META_KEYS[item]]))
            else:
                raw = loaded.raw()
                if item == "RFC822":
                    data = raw
                elif item == "RFC822.HEADER":
                    data = raw[: loaded.meta()["parts"][1]]
                else:  # RFC822.TEXT
                    data = raw[loaded.meta()["parts"][1]:]
                text.append(item.encode() + b" {%d}\r\n" % len(data))
                out.append(b"".join(text))
                out.append(data)
                text = []
        text.append(b")\r\n")
        out.append(b"".join(text))
        return out

    def _section(self, att: Any, loaded: _Loaded) -> tuple[bytes, bytes | None]:
        """BODY[...] / BINARY[...] / BINARY.SIZE[...]: (its label and the literal's "{n}\r\n" or "NIL",
        the literal's data or None)."""
        name = att.name
        raw = loaded.raw()
        if name == "BINARY.SIZE":
            data = raw if not att.part else binary_section(raw, loaded.meta(), att.part)
            return b"BINARY.SIZE[%s] " % att.section.encode() + (b"NIL" if data is None else b"%d" % len(data)), None
        if name.startswith("BINARY"):
            data = raw if not att.part else binary_section(raw, loaded.meta(), att.part)
            label = b"BINARY[" + att.section.encode() + b"]"
        else:
            data = raw if not att.section else mime.section_bytes(raw, loaded.meta()["parts"], att.section)
            label = b"BODY[" + att.section.encode() + b"]"
        if att.partial is not None:
            start, count = att.partial
            label += b"<%d>" % start
            if data is not None:
                data = data[start: start + count]
        if data is None:
            return label + b" NIL", None
        if name.startswith("BINARY") and b"\0" in data:
            return label + b" ~{%d}\r\n" % len(data), data
        return label + b" {%d}\r\n" % len(data), data


BATCH = 256  # messages whose index entries and locations are read in one transaction


class Batch:
    """Reads the index entries and blob locations of a run of messages in one read transaction each
    (instead of one per message and item), then serves them to FETCH / SEARCH."""

    def __init__(self, boxes: Mailboxes, meta: bool, body: bool) -> None:
        self.boxes = boxes
        self.want_meta = meta
        self.want_body = body
        self._metas: dict[bytes, bytes] = {}
        self._locs: dict[bytes, bytes] = {}

    def load(self, msgs: list[Message]) -> None:
        blobs = [m.blob for m in msgs]
        self._metas = self.boxes.metas(blobs) if self.want_meta else {}
        self._locs = self.boxes.locations(blobs) if self.want_body else {}

    def meta(self, blob: bytes) -> dict[str, Any] | None:
        found = self._metas.get(blob)
        return self.boxes.parse_meta(found) if found is not None else self.boxes.meta(blob)

    def body(self, blob: bytes) -> bytes:
        loc = self._locs.get(blob)
        return self.boxes.read_at(loc) if loc is not None else self.boxes.body(blob)

    def safe_body(self, blob: bytes) -> bytes:
        """The bytes, or b"" when the message was expunged (and its blob released) meanwhile."""
        try:
            return self.body(blob)
        except StoreError:
            return b""
