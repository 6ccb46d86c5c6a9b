"""A session's view of its selected mailbox: the sequence-number <-> UID map, the flags it has told the
client, and the untagged updates that bring the client up to date (RFC 9051 §5.2, §7.4-7.5; RFC 7162).

The view changes only through `sync()`, and `sync()` reads the store only when the mailbox's highest
mod-sequence moved (every change bumps it: delivery, flags, expunge, copy in), so a command on an unchanged
mailbox costs one record read; when it moved, it reads only the messages changed since (the `modseqs`
index of fastmail.store.changes), whatever the size of the mailbox.  Expunges found while EXPUNGE responses are not allowed (during FETCH, STORE,
SEARCH: RFC 9051 §7.5.1) stay in the view as `gone` until a command that allows them.  A session
asleep while more expunges than the store remembers happened (its mod-sequence is below the mailbox's
expunge floor, fastmail.store.changes) learns which of its UIDs are gone by comparison with the mailbox's
UIDs, so its sequence numbers stay right.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence
from typing import Any

from fastmail._core import imap as core
from fastmail.proto.imap_fetch import flag_list
from fastmail.proto.imap_search import compress
from fastmail.store.mailboxes import Mailboxes, Message


class View:
    """Holds the UIDs only (4 bytes a message, so an idle session on a 10,000-message mailbox costs 40 kB):
    flags, sizes and dates are read from the store when a command needs them."""

    def __init__(self, boxes: Mailboxes, rec: dict[str, Any], uids: list[int] | array[int], readonly: bool) -> None:
        self.boxes = boxes
        self.id: int = rec["id"]
        self.name: str = rec["name"]
        self.readonly = readonly
        self.uidvalidity: int = rec["uidvalidity"]
        self.uidnext: int = rec["uidnext"]
        self.modseq: int = rec["modseq"]
        self.uids = array("I", uids)  # ascending: index + 1 is the sequence number
        self.mine: dict[int, int] = {}  # uid -> mod-sequence this session gave it (not to announce back)
        self.exists_sent = len(self.uids)
        self.gone: set[int] = set()  # expunged in the store, not yet announced
        self.deleted = False  # the mailbox itself was deleted
        self.flags: list[str] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]  # FLAGS told

    # -- numbers -----------------------------------------------------------------------------------------

    def seq(self, uid: int) -> int:
        """Sequence number of a UID in the view (0 when absent)."""
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def has(self, uid: int) -> bool:
        return self.seq(uid) != 0

    def messages(self, uids: list[int]) -> list[Message]:
        """The current records of these messages (ascending UIDs), read in one transaction; messages
        expunged meanwhile are missing."""
        found = self.boxes.records(self.id, uids)
        return [found[u] for u in uids if u in found]

    def resolve(self, ranges: list[tuple[int, int]], uid: bool) -> list[int]:
        """The UIDs (ascending) a parsed sequence set names.  Sequence numbers past the end raise
        IMAPSyntaxError (RFC 9051 §9: an invalid sequence number is a BAD); UID sets just select what
        exists.  "*" is the last message; on an empty mailbox a set with "*" is empty."""
        uids = self.uids
        n = len(uids)
        spans: list[tuple[int, int]] = []  # index ranges into uids
        for lo, hi in ranges:
            if uid:
                top = uids[-1] if uids else 0
                a = top if lo == core.STAR else lo
                b = top if hi == core.STAR else hi
                if a > b:
                    a, b = b, a
                if b == 0:
                    continue
                spans.append((bisect.bisect_left(uids, a), bisect.bisect_right(uids, b)))
            else:
                if hi == core.STAR and n == 0:
                    continue
                a = n if lo == core.STAR else lo
                b = n if hi == core.STAR else hi
                if a > b:
                    a, b = b, a
                if b > n or a < 1:
                    raise core.IMAPSyntaxError("Invalid message sequence number")
                spans.append((a - 1, b))
        # Disjoint spans in order (1:*, 1:100,200:300 ...): slices of the ascending view, no set or sort.
        spans.sort()
        if all(spans[k][1] <= spans[k + 1][0] for k in range(len(spans) - 1)):
            if len(spans) == 1:
                return uids[spans[0][0]: spans[0][1]].tolist()
            out: list[int] = []
            for i, j in spans:
                out.extend(uids[i:j])
            return out
        merged: set[int] = set()
        for i, j in spans:
            merged.update(uids[i:j])
        return sorted(merged)

    # -- updates -----------------------------------------------------------------------------------------

    def sync(self, allow_expunge: bool, condstore: bool, qresync: bool) -> list[bytes]:
        """Bring the view up to date with the store; the untagged responses that tell the client."""
        out: list[bytes] = []
        rec = self.boxes.by_id(self.id)
        if rec is None:
            self.deleted = True
            self.gone.update(self.uids)
        elif rec["modseq"] != self.modseq:
            # below the mailbox's expunge floor the store compares our UIDs with its own instead
            found = self.boxes.changes_since(self.id, self.modseq, self.uids)
            if found is None:
                self.deleted = True
                self.gone.update(self.uids)
            else:
                rec, changed, expunged = found
                for u in expunged:
                    if self.has(u):
                        self.gone.add(u)
                top = self.uids[-1] if self.uids else 0
                added = []
                for m in changed:
                    if m.uid > top:  # UIDs only grow: anything else was expunged before we saw it
                        added.append(m.uid)
                    elif self.mine.get(m.uid) != m.modseq and m.uid not in self.gone and self.has(m.uid):
                        out.append(self.fetch_flags(m, True, condstore))
                self.uids.extend(sorted(set(added)))
                self.modseq = rec["modseq"]
                self.uidnext = rec["uidnext"]
                self.mine.clear()
        if allow_expunge and self.gone:
            out.extend(self.expunge_responses(qresync))
        if len(self.uids) != self.exists_sent:
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            self.exists_sent = len(self.uids)
        return out

    def expunge_responses(self, qresync: bool) -> list[bytes]:
        """Announce and drop the gone messages: EXPUNGE from the highest sequence number down (each stays
        right as the earlier ones apply), or one VANISHED with QRESYNC (RFC 7162 §3.2.10)."""
        gone = sorted(self.gone)
        self.gone.clear()
        out: list[bytes] = []
        if qresync:
            out.append(b"* VANISHED " + compress(gone).encode() + b"\r\n")
        seqs = sorted((self.seq(u) for u in gone), reverse=True)
        for s in seqs:
            if s:
                if not qresync:
                    out.append(b"* %d EXPUNGE\r\n" % s)
                self.uids.pop(s - 1)
        self.exists_sent -= len([s for s in seqs if s])
        return out

    def fetch_flags(self, m: Message, with_uid: bool, modseq: bool) -> bytes:
        parts = [b"* %d FETCH (" % self.seq(m.uid)]
        if with_uid:
            parts.append(b"UID %d " % m.uid)
        parts.append(b"FLAGS " + flag_list(m.flags))
        if modseq:
            parts.append(b" MODSEQ (%d)" % m.modseq)
        parts.append(b")\r\n")
        return b"".join(parts)

    def update(self, messages: list[Message]) -> None:
        """Messages this session just changed (STORE, implicit \\Seen): sync() does not announce these
        mod-sequences back to it.  When they took exactly the mod-sequences right after the view's (one
        transaction, nothing else changed the mailbox since the view's last sync), the view is at the
        newest of them already: the next sync() reads no changes at all, instead of every message of a
        STORE 1:* again."""
        if not messages:
            return
        top = self.modseq + len(messages)
        if messages[0].modseq == self.modseq + 1 and messages[-1].modseq == top and not self.mine and all(
                m.modseq == self.modseq + k for k, m in enumerate(messages, 1)):
            self.modseq = top
            return
        for m in messages:
            self.mine[m.uid] = m.modseq


def absent(ranges: list[tuple[int, int]], uids: Sequence[int], top: int) -> str:
    """The UIDs of the parsed UID set `ranges` from 1 to `top` (STAR is `top`) that are not among `uids`
    (ascending), as a sequence set ("" when none): the VANISHED (EARLIER) of a client whose mod-sequence
    is below the expunge floor (RFC 7162 §3.2.5.2, §3.2.6).  Costs the number of ranges and of UIDs
    inside them, not the width of the ranges (1:4294967295 is one gap between the UIDs)."""
    spans: list[tuple[int, int]] = []
    if top < 1:
        return ""
    for lo, hi in ranges:
        a = lo or top
        b = hi or top
        if a > b:
            a, b = b, a
        b = min(b, top)
        i = bisect.bisect_left(uids, a)
        j = bisect.bisect_right(uids, b)
        pos = a
        for k in range(i, j):
            if uids[k] > pos:
                spans.append((pos, uids[k] - 1))
            pos = uids[k] + 1
        if pos <= b:
            spans.append((pos, b))
    spans.sort()
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in merged)


def pick(uids: list[int], ranges: list[tuple[int, int]], top: int) -> list[int]:
    """The UIDs of `uids` (ascending) inside the parsed UID set `ranges` (STAR is `top`), ascending: a
    bisection per range, whatever the ranges' width."""
    out: set[int] = set()
    for lo, hi in ranges:
        a = lo or top
        b = hi or top
        if a > b:
            a, b = b, a
        out.update(uids[bisect.bisect_left(uids, a): bisect.bisect_right(uids, b)])
    return sorted(out)
