"""A session's view of its selected mailbox: the sequence-number <-> UID map, the flags it has told the
client, and the untagged updates that bring the client up to date (RFC 9051 §5.2, §7.4-7.5; RFC 7162).

The view changes only through `sync()`, and `sync()` reads the store only when the mailbox's highest
mod-sequence moved (every change bumps it: delivery, flags, expunge, copy in), so a command on an unchanged
mailbox costs one record read; when it moved, it reads only the messages changed since (the `modseqs`
index of fastmail.store.changes), whatever the size of the mailbox.  Expunges found while EXPUNGE responses are not allowed (during FETCH, STORE,
SEARCH: RFC 9051 §7.5.1) stay in the view as `gone` until a command that allows them.
"""

from __future__ import annotations

import bisect
from typing import Any

from fastmail._core import imap as core
from fastmail.proto.imap_fetch import flag_list
from fastmail.proto.imap_search import compress
from fastmail.store.mailboxes import Mailboxes, Message


class View:
    def __init__(self, boxes: Mailboxes, rec: dict[str, Any], messages: list[Message], readonly: bool) -> None:
        self.boxes = boxes
        self.id: int = rec["id"]
        self.name: str = rec["name"]
        self.readonly = readonly
        self.uidvalidity: int = rec["uidvalidity"]
        self.uidnext: int = rec["uidnext"]
        self.modseq: int = rec["modseq"]
        self.uids: list[int] = [m.uid for m in messages]
        self.msgs: dict[int, Message] = {m.uid: m for m in messages}
        self.exists_sent = len(self.uids)
        self.gone: set[int] = set()  # expunged in the store, not yet announced
        self.deleted = False  # the mailbox itself was deleted
        self.flags: list[str] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]  # FLAGS told

    # -- numbers -----------------------------------------------------------------------------------------

    def seq(self, uid: int) -> int:
        """Sequence number of a UID in the view (0 when absent)."""
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def resolve(self, ranges: list[tuple[int, int]], uid: bool) -> list[int]:
        """The UIDs (ascending) a parsed sequence set names.  Sequence numbers past the end raise
        IMAPSyntaxError (RFC 9051 §9: an invalid sequence number is a BAD); UID sets just select what
        exists.  "*" is the last message; on an empty mailbox a set with "*" is empty."""
        uids = self.uids
        n = len(uids)
        out: set[int] = set()
        for lo, hi in ranges:
            if uid:
                top = uids[-1] if uids else 0
                a = top if lo == core.STAR else lo
                b = top if hi == core.STAR else hi
                if a > b:
                    a, b = b, a
                if b == 0:
                    continue
                out.update(uids[bisect.bisect_left(uids, a): bisect.bisect_right(uids, b)])
            else:
                if hi == core.STAR and n == 0:
                    continue
                a = n if lo == core.STAR else lo
                b = n if hi == core.STAR else hi
                if a > b:
                    a, b = b, a
                if b > n or a < 1:
                    raise core.IMAPSyntaxError("Invalid message sequence number")
                out.update(uids[a - 1: b])
        return sorted(out)

    # -- updates -----------------------------------------------------------------------------------------

    def sync(self, allow_expunge: bool, condstore: bool, qresync: bool) -> list[bytes]:
        """Bring the view up to date with the store; the untagged responses that tell the client."""
        out: list[bytes] = []
        rec = self.boxes.by_id(self.id)
        if rec is None:
            self.deleted = True
            self.gone.update(self.uids)
        elif rec["modseq"] != self.modseq:
            found = self.boxes.changes_since(self.id, self.modseq)
            if found is None:
                self.deleted = True
                self.gone.update(self.uids)
            else:
                rec, changed, expunged = found
                for u in expunged:
                    if u in self.msgs:
                        self.gone.add(u)
                top = self.uids[-1] if self.uids else 0
                added = []
                for m in changed:
                    old = self.msgs.get(m.uid)
                    if old is None:
                        if m.uid > top:  # UIDs only grow: anything else was expunged before we saw it
                            added.append(m)
                    elif old.modseq != m.modseq:
                        flags_differ = old.flags != m.flags
                        self.msgs[m.uid] = m
                        if (flags_differ or condstore) and m.uid not in self.gone:
                            out.append(self.fetch_flags(m, True, condstore))
                added.sort(key=lambda m: m.uid)
                for m in added:
                    self.uids.append(m.uid)
                    self.msgs[m.uid] = m
                self.modseq = rec["modseq"]
                self.uidnext = rec["uidnext"]
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
                uid = self.uids.pop(s - 1)
                self.msgs.pop(uid, None)
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
        """Messages this session just changed (STORE, implicit \\Seen): take their new flags and
        mod-sequences, so sync() does not announce them again."""
        for m in messages:
            if m.uid in self.msgs:
                self.msgs[m.uid] = m
