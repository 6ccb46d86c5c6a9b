"""SEARCH: the search-key grammar (RFC 9051 §6.4.4, §9 search-key; RFC 7162 MODSEQ; RFC 5182 "$") turned
into a predicate over one message, and the ESEARCH return options (RFC 4731, RFC 9051 §7.3.4).

Header keys (FROM TO CC BCC SUBJECT HEADER) match a case-insensitive substring of the field value with
RFC 2047 encoded-words decoded; BODY and TEXT match the decoded text of the message's text/* parts
(Content-Transfer-Encoding and charset removed), TEXT also its header.  BEFORE/ON/SINCE compare the
internal date's day (UTC); SENT* the Date: field's day.  Message bytes are read only when a key needs
them, once per message.
"""

from __future__ import annotations

import binascii
import calendar
import email.utils
import re
from array import array
from collections.abc import Callable
from functools import partial
from typing import Any

from fastmail._core import imap as core
from fastmail._core import search as core_search
from fastmail.proto.imap_fetch import BATCH, Batch, decode_cte
from fastmail.store import mime
from fastmail.store.mailboxes import Mailboxes, Message

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}

SYNTAX = core.IMAPSyntaxError


class BadCharset(Exception):
    """CHARSET other than UTF-8 / US-ASCII: NO [BADCHARSET] (RFC 9051 §6.4.4)."""


class Item:
    """What a predicate sees of one message: its record and sequence number, with the bytes, the index
    entry, the decoded header and text loaded on first use."""

    __slots__ = ("msg", "seq", "_body", "_meta_of", "_raw", "_meta", "_headers", "_text", "_folded")

    def __init__(self, msg: Message, seq: int, body: Callable[[bytes], bytes],
                 meta: Callable[[bytes], dict[str, Any] | None]) -> None:
        self.msg = msg
        self.seq = seq
        self._body = body
        self._meta_of = meta
        self._raw: bytes | None = None
        self._meta: dict[str, Any] | None = None
        self._headers: list[tuple[str, str]] | None = None
        self._text: str | None = None
        self._folded: bytes | None = None

    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self._body(self.msg.blob)
        return self._raw

    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = self._meta_of(self.msg.blob) or mime.analyze(self.raw())
        return self._meta

    def headers(self) -> list[tuple[str, str]]:
        """(lower-cased name, decoded value) of every header field, in order."""
        if self._headers is None:
            head = self.raw()[: self.meta()["parts"][1]]
            self._headers = parse_header(head)
        return self._headers

    def text(self) -> str:
        """The decoded text of the text/* parts, case-folded."""
        if self._text is None:
            self._text = body_text(self.raw(), self.meta()).casefold()
        return self._text

    def text_folded(self) -> bytes:
        """text() as UTF-8 bytes, made without decoding the ASCII parts (for ASCII needles)."""
        if self._folded is None:
            self._folded = body_text_folded(self.raw(), self.meta())
        return self._folded


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)\s+(=\?)")


def _decode_word(m: re.Match[str]) -> str:
    charset, enc, text = m.group(1), m.group(2), m.group(3)
    charset = charset.split("*", 1)[0]  # RFC 2231 language suffix
    try:
        if enc in "bB":
            data = binascii.a2b_base64(text + "=" * (-len(text) % 4))
        else:
            data = binascii.a2b_qp(text.replace("_", " ").encode("ascii", "replace"), header=True)
        return data.decode(charset, "replace")
    except (LookupError, binascii.Error, ValueError):
        return m.group(0)


def decode_words(value: str) -> str:
    """RFC 2047 encoded-words decoded (white space between two adjacent words dropped, §6.2); a broken
    word stays as written."""
    if "=?" not in value:
        return value
    return _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub(r"\1\2", value))


def parse_header(head: bytes) -> list[tuple[str, str]]:
    text = head.decode("utf-8", "replace")
    out: list[tuple[str, str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line[0] in " \t" and out:
            name, value = out[-1]
            out[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if colon:
            out.append((name.strip().lower(), value.strip()))
    return [(n, decode_words(v)) for n, v in out]


def _charset_decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset or "us-ascii", "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def body_text(raw: bytes, meta: dict[str, Any]) -> str:
    """Every text/* leaf part, transfer-decoded and charset-decoded, joined by newlines."""
    return "\n".join(_charset_decode(data, charset) for data, charset in _text_parts(raw, meta))


# Charsets in which an ASCII byte always stands for that ASCII character (not UTF-16/32, UTF-7, EBCDIC...).
_ASCII_SAFE = re.compile(r"(?i)(|us-ascii|ascii|utf-?8|iso-?8859-\d+|latin-?\d|windows-125\d|cp125\d|koi8-[ru]"
                         r"|gb2312|gbk|gb18030|big5|euc-[a-z]+|shift_jis)")  # not ISO-2022: 7-bit, escapes make ASCII bytes kanji


def body_text_folded(raw: bytes, meta: dict[str, Any]) -> bytes:
    """body_text(...).casefold() as UTF-8, for an ASCII needle: a part of only ASCII bytes in an
    ASCII-compatible charset is lower-cased as bytes (for ASCII, lower() is casefold()), without decoding;
    other parts go through str.casefold().  An ASCII needle is found in these bytes exactly where it is found
    in the case-folded text (UTF-8 never puts an ASCII byte inside a multi-byte character)."""
    out: list[bytes] = []
    for data, charset in _text_parts(raw, meta):
        if data.isascii() and _ASCII_SAFE.fullmatch(charset):
            out.append(data.lower())
        elif _UTF8.fullmatch(charset) and _no_ascii_folding(data):
            out.append(data.lower())
        else:
            out.append(_charset_decode(data, charset).casefold().encode("utf-8", "surrogatepass"))
    return b"\n".join(out)


_UTF8 = re.compile(r"(?i)utf-?8")
_ASCII_BYTES = bytes(range(128))
# The only non-ASCII characters whose case folding yields ASCII letters (sharp s -> "ss", dotted I, the long s,
# the Kelvin sign -> "k", the Latin ligatures...); tests/unit/test_imap_search_text.py recomputes the set from
# the running Python's Unicode tables (a full scan takes a second: not at import).
_FOLDS_TO_ASCII = frozenset("\u00df\u0130\u0149\u017f\u01f0\u1e96\u1e97\u1e98\u1e99\u1e9a\u1e9e\u212a"
                            "\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06")


def _no_ascii_folding(data: bytes) -> bool:
    """UTF-8 `data` holds none of _FOLDS_TO_ASCII.  Then, for an ASCII needle, data.lower() finds what the
    case-folded text finds: every other non-ASCII character folds to non-ASCII bytes, and an ASCII byte is
    the same character before and after decoding (even next to invalid bytes).  Only the non-ASCII bytes
    are looked at (a multi-byte character is all non-ASCII bytes, so none is split by the deletion)."""
    rest = data.translate(None, _ASCII_BYTES)
    return not rest or _FOLDS_TO_ASCII.isdisjoint(rest.decode("utf-8", "replace"))


def _text_parts(raw: bytes, meta: dict[str, Any]) -> list[tuple[bytes, str]]:
    """(transfer-decoded bytes, charset) of every text/* leaf part."""
    out: list[tuple[bytes, str]] = []

    def walk(bs: list, path: tuple, entity: bool) -> None:
        # entity: bs is a whole message (top level or encapsulated): a single part is its part "path.1"
        if bs and type(bs[0]) is list:
            kids = [x for x in bs if type(x) is list]
            for i, kid in enumerate(kids, 1):
                walk(kid, path + (i,), False)
            return
        typ = str(bs[0]).lower() if bs and type(bs[0]) is str else ""
        sub = str(bs[1]).lower() if len(bs) > 1 and type(bs[1]) is str else ""
        if typ == "message" and sub in ("rfc822", "global") and len(bs) > 8 and type(bs[8]) is list:
            walk(bs[8], path, True)
            return
        if typ != "text":
            return
        section = ".".join(str(p) for p in (path + (1,) if entity else path))
        data = mime.section_bytes(raw, meta["parts"], section)
        if data is None:
            return
        params = bs[2] if type(bs[2]) is list else []
        charset = ""
        for k in range(0, len(params) - 1, 2):
            if str(params[k]).lower() == "charset":
                charset = str(params[k + 1])
        try:
            data = decode_cte(data, str(bs[5]) if len(bs) > 5 and bs[5] else "7bit")
        except Exception:
            pass
        out.append((data, charset))

    walk(meta["bodystructure"], (), True)
    return out


def _string(token: Any) -> str:
    return core.astring(token).decode("utf-8", "replace")


def _date(token: Any) -> int:
    """search date "1-Feb-1994" -> epoch seconds of that day's start (UTC)."""
    try:
        text = core.astring(token).decode("ascii")
        d, m, y = text.split("-")
        return calendar.timegm((int(y), _MONTHS.index(m.lower()) + 1, int(d), 0, 0, 0, 0, 0, 0))
    except (ValueError, UnicodeDecodeError, OverflowError):  # OverflowError: a year past C's long
        raise SYNTAX("Invalid date") from None


def _day(seconds: int) -> int:
    return seconds - seconds % 86400


def _sent_day(item: Item) -> int | None:
    value = item.meta()["envelope"][0] if item.meta().get("envelope") else None
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a year or zone past C's int
        return None
    if dt is None:
        return None
    # RFC 9051 §6.4.4: the date, disregarding time and timezone
    return calendar.timegm((dt.year, dt.month, dt.day, 0, 0, 0, 0, 0, 0))


Pred = Callable[[Item], bool]


class Parser:
    """Turns search keys into one predicate.  `resolve(seqset_token, uid)` gives the UIDs a sequence set
    (or "$") stands for in the session's view."""

    def __init__(self, args: list[Any], resolve: Callable[[Any, bool], set[int]]) -> None:
        self.args = args
        self.i = 0
        self.resolve = resolve
        self.modseq = False  # a MODSEQ key was used: the response carries (MODSEQ n)
        self.needs_meta = False  # some key reads the index entry (envelope, section map)
        self.needs_body = False  # some key reads the message bytes
        # (envelope index, casefolded needle) of each top-level key while all of them are SUBJECT / FROM /
        # TO / CC / BCC (None once another key comes): such a search runs on the stored ENVELOPE bytes
        self.envelope_tests: list[tuple[int, str]] | None = []

    def parse(self) -> Pred:
        if self.i < len(self.args) and type(self.args[self.i]) is str and self.args[self.i].upper() == "CHARSET":
            if self.i + 1 >= len(self.args):
                raise SYNTAX("Missing charset")
            charset = core.astring(self.args[self.i + 1]).decode("ascii", "replace").upper()
            if charset not in ("UTF-8", "US-ASCII"):
                raise BadCharset(charset)
            self.i += 2
        preds = []
        while self.i < len(self.args):
            tok = self.args[self.i]
            preds.append(self.key())
            if self.envelope_tests is not None:
                k = tok.upper() if type(tok) is str else ""
                if k in _HEADER_KEYS:
                    needle = _string(self.args[self.i - 1])
                    self.envelope_tests.append((_ENVELOPE_INDEX[_HEADER_KEYS[k]], needle.casefold()))
                else:
                    self.envelope_tests = None
        if not preds:
            raise SYNTAX("Missing search key")
        return _all(preds)

    def _take(self) -> Any:
        if self.i >= len(self.args):
            raise SYNTAX("Missing search argument")
        tok = self.args[self.i]
        self.i += 1
        return tok

    def key(self) -> Pred:
        tok = self._take()
        if type(tok) is list:
            sub = Parser(tok, self.resolve)
            preds = []
            while sub.i < len(tok):
                preds.append(sub.key())
            self.modseq |= sub.modseq
            self.needs_meta |= sub.needs_meta
            self.needs_body |= sub.needs_body
            if not preds:
                raise SYNTAX("Empty parenthesized search key")
            return _all(preds)
        if type(tok) is not str:
            raise SYNTAX("Invalid search key")
        k = tok.upper()
        if k == "ALL":
            return lambda it: True
        if k in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[k]
            return lambda it: (flag in it.msg.flags) == present
        if k in ("NEW", "RECENT"):  # no \Recent in this server (RFC 9051 removed it)
            return lambda it: False
        if k == "OLD":
            return lambda it: True
        if k in ("KEYWORD", "UNKEYWORD"):
            word = core.astring(self._take()).decode("utf-8", "replace").lower()
            want = k == "KEYWORD"
            return lambda it: any(f.lower() == word for f in it.msg.flags) == want
        if k in _HEADER_KEYS:
            self.needs_meta = True  # answered from the envelope computed at delivery
            return _envelope_pred(_HEADER_KEYS[k], _string(self._take()))
        if k == "HEADER":
            self.needs_meta = self.needs_body = True
            field = _string(self._take()).lower()
            return _header_pred(field, _string(self._take()))
        if k in ("BODY", "TEXT"):
            self.needs_meta = self.needs_body = True
            needle = _string(self._take()).casefold()
            if needle.isascii():
                nb = needle.encode()
                body: Pred = lambda it: nb in it.text_folded()  # noqa: E731
            else:
                body = lambda it: needle in it.text()  # noqa: E731
            if k == "BODY":
                return body
            return lambda it: body(it) or any(needle in f"{n}: {v}".casefold() for n, v in it.headers())
        if k in _DATE_KEYS:
            day = _date(self._take())
            if k.startswith("SENT"):
                self.needs_meta = True
                return _sent_pred(k[4:], day)
            return _date_pred(k, day, lambda it: _day(it.msg.internaldate))
        if k in ("LARGER", "SMALLER"):
            n = core.number(self._take())
            if k == "LARGER":
                return lambda it: it.msg.size > n
            return lambda it: it.msg.size < n
        if k == "NOT":
            inner = self.key()
            return lambda it: not inner(it)
        if k == "OR":
            a = self.key()
            b = self.key()
            return lambda it: a(it) or b(it)
        if k == "UID":
            uids = self.resolve(self._take(), True)
            return lambda it: it.msg.uid in uids
        if k == "MODSEQ":
            tok2 = self._take()
            if type(tok2) is bytes or (type(tok2) is core.Literal):  # entry name and type (RFC 7162 §3.1.5)
                kind = self._take()
                if type(kind) is not str or kind.lower() not in ("priv", "shared", "all"):
                    raise SYNTAX("Invalid MODSEQ entry type")
                tok2 = self._take()
            n = core.number(tok2)
            self.modseq = True
            return lambda it: it.msg.modseq >= n
        if k in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE", "OLDER", "YOUNGER"):
            raise SYNTAX("Unsupported search key")
        # a sequence set (or "$")
        try:
            seqs = self.resolve(tok, False)
        except core.IMAPSyntaxError:
            raise SYNTAX("Invalid search key") from None
        return lambda it: it.msg.uid in seqs


def _all(preds: list[Pred]) -> Pred:
    if len(preds) == 1:
        return preds[0]
    return lambda it: all(p(it) for p in preds)


def _header_pred(field: str, needle: str) -> Pred:
    folded = needle.casefold()

    def pred(it: Item) -> bool:
        return any(n == field and folded in v.casefold() for n, v in it.headers())

    return pred


_ENVELOPE_INDEX = {"subject": 1, "from": 2, "to": 5, "cc": 6, "bcc": 7}


def _address_text(addrs: Any) -> str:
    """An envelope address list as text to search in: 'Name <mailbox@host>, ...' with the name's
    encoded-words decoded (group markers give the group's name)."""
    if not addrs:
        return ""
    out = []
    for name, _adl, mailbox, host in addrs:
        addr = f"{mailbox}@{host}" if mailbox and host else (mailbox or "")
        if name:
            out.append(f"{decode_words(name)} <{addr}>" if addr else decode_words(name))
        elif addr:
            out.append(addr)
    return ", ".join(out)


def envelope_match(env: list[Any], index: int, folded: str) -> bool:
    """Whether envelope field `index` (1 subject, 2 from, 5 to, 6 cc, 7 bcc) holds the casefolded needle
    (fastmail._core.search decides the plain-ASCII cases the same way from the stored bytes)."""
    return _field_match(env[index], index, folded)


def _field_match(value: Any, index: int, folded: str) -> bool:
    if value is None:
        return False
    text = decode_words(value) if index == 1 else _address_text(value)
    return folded in text.casefold()


def _envelope_pred(field: str, needle: str) -> Pred:
    """SUBJECT / FROM / TO / CC / BCC: a case-insensitive substring of the field as the envelope holds it
    (RFC 2047 decoded), without reading the message."""
    folded = needle.casefold()
    index = _ENVELOPE_INDEX[field]

    def pred(it: Item) -> bool:
        return envelope_match(it.meta().get("envelope") or [None] * 10, index, folded)

    return pred


def _date_pred(kind: str, day: int, get: Callable[[Item], int | None]) -> Pred:
    def pred(it: Item) -> bool:
        d = get(it)
        if d is None:
            return False
        if kind == "BEFORE":
            return d < day
        if kind == "ON":
            return d == day
        return d >= day

    return pred


def _sent_pred(kind: str, day: int) -> Pred:
    return _date_pred(kind, day, _sent_day)


# -- results ------------------------------------------------------------------------------------------------


def compress(numbers: list[int]) -> str:
    """Sorted numbers as a sequence set: [1, 2, 3, 7] -> "1:3,7"."""
    out: list[str] = []
    nums = sorted(set(numbers))
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}:{nums[j]}")
        i = j + 1
    return ",".join(out)


RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


def parse_return(args: list[Any]) -> tuple[set[str] | None, list[Any]]:
    """(the RETURN options, or None without RETURN; the remaining arguments).  RETURN () means ALL."""
    if args and type(args[0]) is str and args[0].upper() == "RETURN":
        if len(args) < 2 or type(args[1]) is not list:
            raise SYNTAX("Invalid RETURN options")
        opts = set()
        for o in args[1]:
            if type(o) is not str or o.upper() not in RETURN_OPTIONS:
                raise SYNTAX("Invalid RETURN option")
            opts.add(o.upper())
        return (opts or {"ALL"}), args[2:]
    return None, args


def esearch(tag: bytes, uid: bool, opts: set[str], numbers: list[int], modseq: int | None) -> bytes:
    """"* ESEARCH (TAG "t") [UID] MIN .. MAX .. COUNT .. ALL .. [MODSEQ n]" (RFC 4731 §3.1)."""
    out = [b'* ESEARCH (TAG ' + core.quote(tag) + b")"]
    if uid:
        out.append(b"UID")
    if numbers:
        if "MIN" in opts:
            out.append(b"MIN %d" % min(numbers))
        if "MAX" in opts:
            out.append(b"MAX %d" % max(numbers))
    if "COUNT" in opts:
        out.append(b"COUNT %d" % len(numbers))
    if "ALL" in opts and numbers:
        out.append(b"ALL " + compress(numbers).encode())
    if modseq is not None and numbers:
        out.append(b"MODSEQ %d" % modseq)
    return b" ".join(out) + b"\r\n"


def run_search(mailbox_id: int, uids: list[int] | array[int], pred: Pred, boxes: Mailboxes, meta: bool,
               body: bool, envelope_tests: list[tuple[int, str]] | None = None) -> list[tuple[int, int, int]]:
    """Evaluate a search predicate over the session's messages, `uids` being its view in sequence order
    (run off the loop: it may read bodies): the (sequence number, uid, modseq) of those that match.
    Messages expunged meanwhile do not match.  With `envelope_tests` (the predicate is exactly these
    SUBJECT/FROM/TO/CC/BCC tests, Parser.envelope_tests), a batch is answered from the stored ENVELOPE
    bytes (fastmail._core.search); a batch with a message stored without them goes the general way."""
    loader = Batch(boxes, meta, body)
    out: list[tuple[int, int, int]] = []
    tests = [(i, n.encode("utf-8", "surrogatepass")) for i, n in envelope_tests] if envelope_tests else None
    view = uids if isinstance(uids, array) else array("I", uids)
    for start in range(0, len(uids), BATCH):
        want = list(uids[start: start + BATCH])
        if tests is not None:
            done = boxes.render_records(mailbox_id, want, True, partial(
                core_search.search_batch, want=want, view=view, tests=tests))
            if done is not None:
                hits, unsure, _ = done
                assert envelope_tests is not None
                hits.extend((seq, uid, modseq) for seq, uid, modseq, values in unsure
                            if all(_field_match(v, i, n) for v, (i, n) in zip(values, envelope_tests, strict=True)))
                hits.sort()
                out.extend(hits)
                continue
        found = boxes.records(mailbox_id, want)
        chunk = [(seq, found[u]) for seq, u in enumerate(want, start + 1) if u in found]
        loader.load([m for _, m in chunk])
        out.extend((seq, m.uid, m.modseq) for seq, m in chunk if pred(Item(m, seq, loader.safe_body, loader.meta)))
    return out
