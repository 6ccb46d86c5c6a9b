"""Mailbox operations for IMAP over the LMDB index: names, subscriptions, status, flags, expunge, copy, move.

Every operation is one short write (or read) transaction through `Store._writing`, keeps the mailbox
counters (`exists`, `unseen`, `size`, `modseq`, `uidnext`) and the user's quota usage exact, and records the
change (fastmail.store.changes) so sessions in other processes learn of it.  Segment ranges whose last
reference went away are released after the commit, never inside it.

Names: str, hierarchy delimiter "/" (DELIMITER).  "INBOX" is case-insensitive, as a whole name and as the
first level of a hierarchy ("inbox/x" is "INBOX/x").  A mailbox keeps its id (hence its UIDVALIDITY and
UIDs) across RENAME.  APPEND goes through the worker's group committer instead (Incoming.mailbox_id), so
its OK shares the durable commit of deliveries (ARCHITECTURE §3).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb

from fastmail.store import changes, mime
from fastmail.store import records as R
from fastmail.store.store import Incoming, Store

T = TypeVar("T")

DELIMITER = "/"
MARK_PREFIX = R.NAME_MARK  # keys of the name markers in the "meta" database (see Mailboxes, names)
MAX_NAME = 1000  # bytes of a mailbox name (UTF-8)
MAX_DEPTH = 32  # hierarchy levels

SEEN = "\\Seen"
DELETED = "\\Deleted"


class MailboxError(Exception):
    """A refused mailbox operation.  .code names the IMAP response code the session answers with
    (RFC 9051 §7.1): one of the constants below."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


NONEXISTENT = "NONEXISTENT"
ALREADYEXISTS = "ALREADYEXISTS"
CANNOT = "CANNOT"
TRYCREATE = "TRYCREATE"
OVERQUOTA = "OVERQUOTA"
INUSE = "INUSE"


@dataclass(slots=True)
class Message:
    """One message as a session sees it: its UID and the parts of the record that change or are fetched."""

    uid: int
    blob: bytes
    size: int
    internaldate: int
    flags: list[str]
    modseq: int


def normalize(name: str) -> str:
    """INBOX in any case (alone or as the first level) becomes "INBOX"; other names are kept as given."""
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def check_name(name: str) -> str:
    """The normalized name, or MailboxError [CANNOT] for one that cannot be a mailbox: empty, an empty
    level ("a//b", "/a"), a control character, a wildcard, too long or too deep."""
    if name.endswith(DELIMITER):
        name = name.rstrip(DELIMITER)  # RFC 9051 §6.3.4: a trailing delimiter declares intent only
    levels = name.split(DELIMITER)
    if (
        not name
        or any(not level for level in levels)
        or len(levels) > MAX_DEPTH
        or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME
        or any(ord(c) < 0x20 or c == "\x7f" or c in "%*" for c in name)
    ):
        raise MailboxError(CANNOT, "Invalid mailbox name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise MailboxError(CANNOT, "Invalid mailbox name") from None
    return normalize(name)


def parent_names(name: str) -> list[str]:
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


def _gets(txn: lmdb.Transaction, db: Any, mailbox_id: int, uids: list[int]) -> Iterator[tuple[bytes, bytes]]:
    for uid in uids:
        key = R.msg_key(mailbox_id, uid)
        value = txn.get(key, db=db)
        if value is not None:
            yield key, bytes(value)  # bytes already (buffers=False): no copy


_SEEN_JSON = b'"\\\\Seen"'  # \Seen in a record's JSON
_SYSTEM_FLAG_JSON = b'"\\\\'  # the start of a system flag there


def parse_record(key: bytes, value: bytes) -> Message:
    v, blob, size, date, flags, modseq = R.loads(value)
    return Message(R.MSG_KEY.unpack(key)[1], bytes.fromhex(blob), size, date, flags, modseq)


class Mailboxes:
    """IMAP's view of one Store (shared by the sessions of a worker)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # -- reading ---------------------------------------------------------------------------------------

    def get(self, user_id: int, name: str, txn: lmdb.Transaction | None = None) -> dict[str, Any] | None:
        """The mailbox record for a (normalized) name, or None."""
        if txn is None:
            with self.store.read() as txn:
                return self.get(user_id, name, txn)
        raw = txn.get(R.mailbox_key(user_id, normalize(name)), db=self.db["mailboxes"])
        if raw is None:
            return None
        rec = txn.get(raw, db=self.db["mbox"])
        return R.loads(rec) if rec else None

    def by_id(self, mailbox_id: int, txn: lmdb.Transaction | None = None) -> dict[str, Any] | None:
        if txn is None:
            with self.store.read() as txn:
                return self.by_id(mailbox_id, txn)
        raw = txn.get(R.U64.pack(mailbox_id), db=self.db["mbox"])
        return R.loads(raw) if raw else None

    def list_all(self, user_id: int) -> list[dict[str, Any]]:
        """Every mailbox record of the user, ordered by name (bytewise)."""
        return self.store.list_mailboxes(user_id)

    def messages(self, mailbox_id: int, txn: lmdb.Transaction | None = None) -> list[Message]:
        """Every message of the mailbox in UID order."""
        if txn is None:
            with self.store.read() as txn:
                return self.messages(mailbox_id, txn)
        lo = R.msg_key(mailbox_id, 0)
        out = []
        cur = txn.cursor(db=self.db["msgs"])
        if cur.set_range(lo):
            for k, v in cur:
                if k[:8] != lo[:8]:
                    break
                out.append(parse_record(k, v))
        return out

    def records(self, mailbox_id: int, uids: list[int]) -> dict[int, Message]:
        """The messages `uids` of the mailbox that still exist, read in one transaction."""
        out: dict[int, Message] = {}
        db = self.db["msgs"]
        with self.store.read() as txn:
            for uid in uids:
                key = R.msg_key(mailbox_id, uid)
                value = txn.get(key, db=db)
                if value is not None:
                    out[uid] = parse_record(key, value)
        return out

    def render_records(self, mailbox_id: int, uids: list[int], wires: bool, render: Callable[[Iterable[tuple[bytes, bytes]], Callable[[bytes], Any] | None], T], buffers: bool = False) -> T:
        """render(pairs, wire_get) inside one read transaction: pairs iterates the message records (key,
        value) of the mailbox from uids[0] on, still encoded (a cursor walk when the UIDs are dense, as for
        a FETCH 1:*: render stops it after uids[-1]; a get per UID for a sparse set); with `wires`,
        wire_get(blob id) is the stored wire form (bytes) or None.  For fastmail._core.fetch.render_batch.

        With `buffers` too, a wire form is a memoryview of the map (no copy of the whole value per
        message: render reads only the item it wants), valid until render returns.  Those come from a
        second read transaction begun right after the first: a wire form never changes once stored (blob
        ids are not reused), so the newer snapshot holds the same value or none, and none sends the batch
        the general way as a missing wire form always has."""
        db = self.db["msgs"]
        with self.store.read() as txn:
            pairs: Iterable[tuple[bytes, bytes]]
            if uids and uids[-1] - uids[0] < 2 * len(uids):
                cur = txn.cursor(db=db)
                pairs = cur.iternext() if cur.set_range(R.msg_key(mailbox_id, uids[0])) else ()  # type: ignore[assignment]
            else:
                pairs = _gets(txn, db, mailbox_id, uids)
            if not wires:
                return render(pairs, None)
            if buffers:
                try:  # inside the first one's gate entry: no resize of the map until both end
                    btxn = self.store.env.begin(buffers=True)
                except lmdb.Error:  # the map grew in another process just now, no reader slot: copies, then
                    pass
                else:
                    try:
                        return render(pairs, btxn.cursor(db=self.db["msgwire"]).get)
                    finally:
                        btxn.abort()
            # a cursor's get: one positional argument (a partial with db= copied its keywords per call)
            return render(pairs, txn.cursor(db=self.db["msgwire"]).get)

    def snapshot(self, mailbox_id: int) -> tuple[dict[str, Any], list[Message]] | None:
        """The mailbox record and its messages, read in one transaction (consistent with each other)."""
        with self.store.read() as txn:
            rec = self.by_id(mailbox_id, txn)
            if rec is None:
                return None
            return rec, self.messages(mailbox_id, txn)

    def select_summary(self, mailbox_id: int) -> tuple[dict[str, Any], array[int], list[str], int] | None:
        """What SELECT tells, read in one transaction without decoding a record per message: (the mailbox
        record, the UIDs ascending, the keywords in use in order of first use, the sequence number of the
        first message without \\Seen or 0).  A record is decoded only when it has a flag that is not a
        system flag: in its JSON every string but the blob id is a flag, and a system flag's starts with
        an escaped backslash."""
        with self.store.read() as txn:
            rec = self.by_id(mailbox_id, txn)
            if rec is None:
                return None
            lo = R.msg_key(mailbox_id, 0)
            prefix = lo[:8]
            uids: array[int] = array("I")
            keywords: dict[str, None] = {}
            first_unseen = 0
            cur = txn.cursor(db=self.db["msgs"])
            if cur.set_range(lo):
                for k, value in cur:
                    v: bytes = value  # type: ignore[assignment]  # buffers=False: bytes
                    if k[:8] != prefix:
                        break
                    uids.append(int.from_bytes(k[8:], "big"))
                    if not first_unseen and _SEEN_JSON not in v:
                        first_unseen = len(uids)
                    if v.count(b'"') != 2 + 2 * v.count(_SYSTEM_FLAG_JSON):
                        for flag in R.loads(v)[4]:
                            if not flag.startswith("\\"):
                                keywords.setdefault(flag, None)
            return rec, uids, list(keywords), first_unseen

    def changes_since(self, mailbox_id: int, modseq: int, known: Sequence[int] = ()
                      ) -> tuple[dict[str, Any], list[Message], list[int]] | None:
        """What happened to the mailbox after mod-sequence `modseq`, read in one transaction: (its record,
        the messages added or changed since, the UIDs expunged since); None when the mailbox is gone.
        Costs what changed, not the size of the mailbox (the `modseqs` index, fastmail.store.changes).
        When `modseq` is below the mailbox's expunge floor (expunges after it may be forgotten), the UIDs
        expunged are those of `known` (the caller's UIDs, ascending) that no message holds now: a walk of
        the mailbox's UIDs, the rare case of a session that slept through more than Store.expunge_memory
        expunges."""
        with self.store.read() as txn:
            rec = self.by_id(mailbox_id, txn)
            if rec is None:
                return None
            forgotten = modseq < rec.get("expunge_floor", 0)
            changed: list[Message] = []
            expunged: list[int] = []
            for uid, gone in changes.since(txn, self.db, mailbox_id, modseq):
                if gone:
                    if not forgotten:
                        expunged.append(uid)
                    continue
                key = R.msg_key(mailbox_id, uid)
                value = txn.get(key, db=self.db["msgs"])
                if value is not None:
                    changed.append(parse_record(key, value))
            if forgotten:
                present = set(self._uids(txn, mailbox_id))
                expunged = [u for u in known if u not in present]
            return rec, changed, expunged

    def _uids(self, txn: lmdb.Transaction, mailbox_id: int) -> Iterator[int]:
        """The UIDs of the mailbox, ascending (its message keys only, no record decoded)."""
        prefix = R.U64.pack(mailbox_id)
        cur = txn.cursor(db=self.db["msgs"])
        if cur.set_range(prefix):
            for k in cur.iternext(values=False):
                if k[:8] != prefix:
                    break
                yield int.from_bytes(k[8:], "big")

    def expunged_since(self, mailbox_id: int, modseq: int) -> list[int] | None:
        """UIDs expunged from the mailbox with a mod-sequence above `modseq`, ascending (QRESYNC VANISHED,
        RFC 7162 §3.2.10): the expunge entries of the `modseqs` index after `modseq`, so it costs what
        changed since.  None when `modseq` is below the mailbox's expunge floor: some of those expunges are
        forgotten, and the caller reports every UID of the client's range that does not exist now instead
        (RFC 7162 §3.2.5.2, §3.2.6)."""
        with self.store.read() as txn:
            rec = self.by_id(mailbox_id, txn)
            if rec is None:
                return []
            if modseq < rec.get("expunge_floor", 0):
                return None
            return sorted(uid for uid, gone in changes.since(txn, self.db, mailbox_id, modseq) if gone)

    def status(self, mailbox_id: int, deleted: bool = False) -> dict[str, Any] | None:
        """The mailbox record, plus "deleted" (messages flagged \\Deleted, a scan) when asked."""
        with self.store.read() as txn:
            rec = self.by_id(mailbox_id, txn)
            if rec is not None and deleted:
                rec["deleted"] = sum(1 for m in self.messages(mailbox_id, txn) if DELETED in m.flags)
            return rec

    def metas(self, blobs: list[bytes]) -> dict[bytes, bytes]:
        """Index entries (msgmeta) of many messages read in one transaction (FETCH/SEARCH batches), still
        encoded: parse each with parse_meta() when it is used, so that a batch of parsed entries does not
        sit in memory (and in the garbage collector's way) at once."""
        out: dict[bytes, bytes] = {}
        db = self.db["msgmeta"]
        with self.store.read() as txn:
            for blob in blobs:
                raw = txn.get(blob, db=db)
                if raw is not None:
                    out[blob] = bytes(raw)
        return out

    @staticmethod
    def parse_meta(raw: bytes) -> dict[str, Any]:
        return R.loads(raw)  # type: ignore[no-any-return]

    def locations(self, blobs: list[bytes]) -> dict[bytes, bytes]:
        """Segment locations of many blobs read in one transaction; read them with read_at()."""
        out = {}
        db = self.db["blobs"]
        with self.store.read() as txn:
            for blob in blobs:
                raw = txn.get(blob, db=db)
                if raw is not None:
                    out[blob] = bytes(raw[:24])
        return out

    def read_at(self, location: bytes) -> bytes:
        return self.store.segments.read(location)

    def body(self, blob: bytes) -> bytes:
        return self.store.read_blob(blob)

    def meta(self, blob: bytes) -> dict[str, Any] | None:
        return self.store.message_meta(blob)

    def quota(self, user_id: int) -> tuple[int, int, int]:
        """(quota bytes or 0, bytes used, messages) of the user (RFC 9208 STORAGE and MESSAGE)."""
        with self.store.read() as txn:
            quota, used = self.store.quota_state(user_id, txn)
            raw = txn.get(R.U64.pack(user_id), db=self.db["usage"])
            count = R.USAGE.unpack(raw)[1] if raw else 0
        return quota, used, count

    # -- names -----------------------------------------------------------------------------------------
    #
    # Besides the mailboxes, a user's names can carry a marker (in the "meta" database, MARK_PREFIX | user
    # id | name -> {"v", "noselect", "subscribed"}), for the two kinds of name that are not a mailbox:
    #   noselect    a deleted mailbox that still has children stays as a \Noselect name (RFC 9051 §6.3.4)
    #               until it has none and is deleted itself, or until CREATE makes it a mailbox again;
    #   subscribed  a subscription outlives its mailbox, and a name can be subscribed before it exists
    #               (RFC 9051 §6.3.7: the server SHOULD NOT remove a subscription by itself).
    # A mailbox of the same name wins over a marker (delivery can create Junk while a marker is left).
    # Markers live outside "mailboxes" so that delivery and every mailbox walk never meet one.

    def _mark_key(self, user_id: int, name: str) -> bytes:
        return MARK_PREFIX + R.mailbox_key(user_id, name)

    def _mark(self, txn: lmdb.Transaction, user_id: int, name: str) -> dict[str, Any] | None:
        raw = txn.get(self._mark_key(user_id, name), db=self.db["meta"])
        return R.loads(raw) if raw else None

    def _set_mark(self, txn: lmdb.Transaction, user_id: int, name: str, noselect: bool, subscribed: bool) -> None:
        key = self._mark_key(user_id, name)
        if noselect or subscribed:
            txn.put(key, R.dumps({"v": 1, "noselect": noselect, "subscribed": subscribed}), db=self.db["meta"])
        else:
            txn.delete(key, db=self.db["meta"])

    def _marks(self, txn: lmdb.Transaction, user_id: int, under: str = "") -> list[tuple[str, dict[str, Any]]]:
        """The markers of the user (those whose name starts with `under`), ordered by name."""
        prefix = self._mark_key(user_id, under)
        skip = len(self._mark_key(user_id, ""))
        out = []
        cur = txn.cursor(db=self.db["meta"])
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                out.append((k[skip:].decode(), R.loads(v)))
        return out

    def marks(self, user_id: int) -> list[tuple[str, dict[str, Any]]]:
        """(name, {"noselect", "subscribed"}) of the user's names that are not mailboxes, for LIST."""
        with self.store.read() as txn:
            mdb = self.db["mailboxes"]
            return [(n, m) for n, m in self._marks(txn, user_id)
                    if txn.get(R.mailbox_key(user_id, n), db=mdb) is None]

    def _exists(self, txn: lmdb.Transaction, user_id: int, name: str) -> bool:
        """A mailbox or a \\Noselect name."""
        if txn.get(R.mailbox_key(user_id, name), db=self.db["mailboxes"]) is not None:
            return True
        mark = self._mark(txn, user_id, name)
        return bool(mark and mark["noselect"])

    def _has_children(self, txn: lmdb.Transaction, user_id: int, name: str) -> bool:
        return bool(self._children(txn, user_id, name)) or any(
            m["noselect"] for _, m in self._marks(txn, user_id, name + DELIMITER))

    def create(self, user_id: int, name: str) -> int:
        """Create the mailbox and any missing parents (RFC 9051 §6.3.4); its id.  [ALREADYEXISTS].  A
        \\Noselect name becomes a mailbox (a new one: new UIDVALIDITY); a \\Noselect parent stays one."""
        name = check_name(name)

        def op(txn: lmdb.Transaction) -> int:
            if txn.get(R.mailbox_key(user_id, name), db=self.db["mailboxes"]) is not None:
                raise MailboxError(ALREADYEXISTS, "Mailbox already exists")
            for parent in parent_names(name):
                if not self._exists(txn, user_id, parent):
                    self._set_mark(txn, user_id, parent, False, False)
                    self.store._create_mailbox(txn, user_id, parent, None)
            self._set_mark(txn, user_id, name, False, False)  # a mailbox now: subscribed as created
            mid = self.store._create_mailbox(txn, user_id, name, None)
            changes.record(txn, self.db, mid)
            return mid

        return int(self.store._writing(op))

    def _children(self, txn: lmdb.Transaction, user_id: int, name: str) -> list[tuple[str, int]]:
        prefix = R.mailbox_key(user_id, name + DELIMITER)
        out = []
        cur = txn.cursor(db=self.db["mailboxes"])
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                out.append((k[8:].decode(), R.U64.unpack(v)[0]))
        return out

    def delete(self, user_id: int, name: str) -> None:
        """Delete the mailbox with its messages (RFC 9051 §6.3.4).  One that has children becomes a
        \\Noselect name; a \\Noselect name goes once it has no children ([INUSE] before).  INBOX cannot be
        deleted [CANNOT]; [NONEXISTENT].  The subscription stays (RFC 9051 §6.3.7)."""
        name = normalize(name)
        released: list[bytes] = []

        def op(txn: lmdb.Transaction) -> None:
            released.clear()
            if name == "INBOX":
                raise MailboxError(CANNOT, "INBOX cannot be deleted")
            key = R.mailbox_key(user_id, name)
            raw = txn.get(key, db=self.db["mailboxes"])
            kids = self._has_children(txn, user_id, name)
            if raw is None:
                mark = self._mark(txn, user_id, name)
                if not mark or not mark["noselect"]:
                    raise MailboxError(NONEXISTENT, "No such mailbox")
                if kids:
                    raise MailboxError(INUSE, "Mailbox has children")
                self._set_mark(txn, user_id, name, False, mark["subscribed"])
                return
            mid = R.U64.unpack(raw)[0]
            rec = R.loads(txn.get(raw, db=self.db["mbox"]))
            released.extend(self.store._drop_messages(txn, mid))
            self._add_usage(txn, user_id, -rec["size"], -rec["exists"])
            txn.delete(key, db=self.db["mailboxes"])
            txn.delete(raw, db=self.db["mbox"])
            self._set_mark(txn, user_id, name, kids, bool(rec.get("subscribed")))
            self.store._forget_mailbox(txn, mid)

        self.store._writing(op)
        self.store.segments.release_all(released)

    def rename(self, user_id: int, old: str, new: str) -> None:
        """RFC 9051 §6.3.6: rename the mailbox (or \\Noselect name) and its children (ids, UIDs and
        UIDVALIDITY kept), creating missing parents of the new name.  Renaming INBOX moves its messages
        into a new mailbox of the new name and leaves INBOX empty (its children stay)."""
        old = normalize(old)
        new = check_name(new)
        if old == "INBOX":
            self._rename_inbox(user_id, new)
            return

        def op(txn: lmdb.Transaction) -> None:
            mdb = self.db["mailboxes"]
            raw = txn.get(R.mailbox_key(user_id, old), db=mdb)
            if raw is None and not self._exists(txn, user_id, old):
                raise MailboxError(NONEXISTENT, "No such mailbox")
            if self._exists(txn, user_id, new):
                raise MailboxError(ALREADYEXISTS, "Mailbox already exists")
            if new == old or new.startswith(old + DELIMITER) or new == "INBOX":
                raise MailboxError(CANNOT, "Cannot rename a mailbox into itself")
            moves = ([(old, R.U64.unpack(raw)[0])] if raw is not None else []) + self._children(txn, user_id, old)
            noselect = [(n, m) for n, m in [(old, self._mark(txn, user_id, old))]
                        + self._marks(txn, user_id, old + DELIMITER)
                        if m and m["noselect"] and txn.get(R.mailbox_key(user_id, n), db=mdb) is None]
            for name, _ in moves + noselect:
                if self._exists(txn, user_id, new + name[len(old):]):
                    raise MailboxError(ALREADYEXISTS, "Mailbox already exists")
            for name, mid in moves:
                target = new + name[len(old):]
                txn.delete(R.mailbox_key(user_id, name), db=mdb)
                txn.put(R.mailbox_key(user_id, target), R.U64.pack(mid), db=mdb)
                self._set_mark(txn, user_id, target, False, False)
                rec = R.loads(txn.get(R.U64.pack(mid), db=self.db["mbox"]))
                rec["name"] = target
                txn.put(R.U64.pack(mid), R.dumps(rec), db=self.db["mbox"])
                changes.record(txn, self.db, mid)
            for name, mark in noselect:  # the \Noselect names move; their subscriptions stay with the name
                self._set_mark(txn, user_id, name, False, mark["subscribed"])
                there = self._mark(txn, user_id, new + name[len(old):])
                self._set_mark(txn, user_id, new + name[len(old):], True, bool(there and there["subscribed"]))
            for parent in parent_names(new):
                if not self._exists(txn, user_id, parent):
                    self._set_mark(txn, user_id, parent, False, False)
                    self.store._create_mailbox(txn, user_id, parent, None)

        self.store._writing(op)

    def _rename_inbox(self, user_id: int, new: str) -> None:
        def op(txn: lmdb.Transaction) -> None:
            mdb = self.db["mailboxes"]
            if self._exists(txn, user_id, new):
                raise MailboxError(ALREADYEXISTS, "Mailbox already exists")
            if new.startswith("INBOX" + DELIMITER):
                raise MailboxError(CANNOT, "Cannot rename INBOX into itself")
            for parent in parent_names(new):
                if not self._exists(txn, user_id, parent):
                    self._set_mark(txn, user_id, parent, False, False)
                    self.store._create_mailbox(txn, user_id, parent, None)
            self._set_mark(txn, user_id, new, False, False)
            dst = self.store._create_mailbox(txn, user_id, new, None)
            src = R.U64.unpack(txn.get(R.mailbox_key(user_id, "INBOX"), db=mdb))[0]
            uids = [m.uid for m in self.messages(src, txn)]
            self._transfer(txn, user_id, src, dst, uids, move=True)

        self.store._writing(op)

    def set_subscribed(self, user_id: int, name: str, subscribed: bool) -> None:
        """SUBSCRIBE / UNSUBSCRIBE (RFC 9051 §6.3.7, §6.3.8): a flag on the mailbox record, or a marker for
        a name that is not a mailbox: a name may be subscribed before it exists, and stays subscribed
        after its mailbox is deleted.  Unsubscribing a name not subscribed is no error."""
        try:
            name = check_name(name)
        except MailboxError:
            if subscribed:
                raise
            return  # a name that cannot be a mailbox was never subscribed

        def op(txn: lmdb.Transaction) -> None:
            raw = txn.get(R.mailbox_key(user_id, name), db=self.db["mailboxes"])
            if raw is None:
                mark = self._mark(txn, user_id, name)
                self._set_mark(txn, user_id, name, bool(mark and mark["noselect"]), subscribed)
                return
            rec = R.loads(txn.get(raw, db=self.db["mbox"]))
            rec["subscribed"] = subscribed
            txn.put(raw, R.dumps(rec), db=self.db["mbox"])

        self.store._writing(op)

    # -- messages --------------------------------------------------------------------------------------

    def append_all(self, items: list[Incoming]) -> tuple[int, list[int]]:
        """MULTIAPPEND (RFC 3502 §3): store every message (each an Incoming for one user and one mailbox, as
        APPEND makes them) or none: the bodies with one fdatasync, the records in one synced LMDB
        transaction that a refusal aborts as a whole.  Returns (UIDVALIDITY, the new UIDs in order);
        [TRYCREATE] when the mailbox is gone, [OVERQUOTA] when they do not all fit.

        It writes the segment file, so it must run on the thread that does (the group committer's)."""
        user_id, mailbox_id = items[0].local[0], items[0].mailbox_id
        assert mailbox_id is not None and all(i.local == [user_id] and i.mailbox_id == mailbox_id for i in items)
        for item in items:
            if item.meta is None:
                try:
                    item.meta = mime.analyze(item.raw)
                except Exception:  # as the group committer: never refuse a message over its index entry
                    item.meta = None
        locations = self.store.segments.append_batch([item.raw for item in items])
        now = int(time.time())

        def op(txn: lmdb.Transaction) -> tuple[int, list[int]]:
            quota, used = self.store.quota_state(user_id, txn)
            if quota and used + sum(len(i.raw) for i in items) > quota:
                raise MailboxError(OVERQUOTA, "Quota exceeded")
            validity, uids = 0, []
            for item, loc in zip(items, locations, strict=True):
                outcome = self.store._deliver(txn, item, loc, now)
                if outcome.no_mailbox:
                    raise MailboxError(TRYCREATE, "No such mailbox")
                if user_id not in outcome.uids:
                    raise MailboxError(OVERQUOTA, "Quota exceeded")
                validity = outcome.uidvalidity
                uids.append(outcome.uids[user_id])
            return validity, uids

        try:
            out: tuple[int, list[int]] = self.store._writing(op)
        except BaseException as e:
            self.store._write_failed(e, locations)  # written, never referenced: the space is reused
            raise
        return out


    def _add_usage(self, txn: lmdb.Transaction, user_id: int, size: int, count: int) -> None:
        key = R.U64.pack(user_id)
        raw = txn.get(key, db=self.db["usage"])
        used, n = R.USAGE.unpack(raw) if raw else (0, 0)
        txn.put(key, R.USAGE.pack(max(used + size, 0), max(n + count, 0)), db=self.db["usage"])

    def store_flags(
        self, mailbox_id: int, uids: list[int], mode: str, flags: list[str], unchangedsince: int | None = None
    ) -> tuple[list[Message], list[int]]:
        """STORE (RFC 9051 §6.4.6, RFC 7162 §3.1.3): mode "+" adds, "-" removes, "" replaces the flags
        of the messages `uids`.  Each message whose flags change gets a new mod-sequence.  With
        `unchangedsince`, a message whose mod-sequence is above it is left alone and its UID returned in
        the second list (the MODIFIED response code).  Returns (messages changed, uids refused)."""
        want = list(dict.fromkeys(flags))

        def op(txn: lmdb.Transaction) -> tuple[list[Message], list[int]]:
            mkey = R.U64.pack(mailbox_id)
            raw = txn.get(mkey, db=self.db["mbox"])
            if raw is None:
                raise MailboxError(NONEXISTENT, "No such mailbox")
            rec = R.loads(raw)
            changed: list[Message] = []
            refused: list[int] = []
            msgs = self.db["msgs"]
            get, put, key_of, loads, dumps = txn.get, txn.put, R.MSG_KEY.pack, R.loads, R.dumps
            modseq = rec["modseq"]
            for uid in uids:
                key = key_of(mailbox_id, uid)
                value = get(key, db=msgs)
                if value is None:
                    continue  # expunged meanwhile
                # the record as its JSON list (no Message unless it changes): [v, blob hex, size, date, flags, modseq]
                v, blob, size, date, old, old_modseq = fields = loads(value)
                if unchangedsince is not None and old_modseq > unchangedsince:
                    refused.append(uid)
                    continue
                if mode == "+":
                    add = [f for f in want if f not in old]
                    if not add:
                        continue
                    new = old + add
                elif mode == "-":
                    new = [f for f in old if f not in want]
                    if len(new) == len(old):
                        continue
                else:
                    new = want
                    if set(new) == set(old):
                        continue
                if (SEEN in new) != (SEEN in old):
                    rec["unseen"] += -1 if SEEN in new else 1
                modseq += 1
                changes.note(txn, self.db, mailbox_id, uid, modseq, old_modseq)
                fields[4] = new
                fields[5] = modseq
                put(key, dumps(fields), db=msgs)  # message_record()'s bytes: the same list, re-encoded
                changed.append(Message(uid, bytes.fromhex(blob), size, date, new, modseq))
            if changed:
                rec["modseq"] = modseq
                txn.put(mkey, R.dumps(rec), db=self.db["mbox"])
                changes.record(txn, self.db, mailbox_id)
            return changed, refused

        out: tuple[list[Message], list[int]] = self.store._writing(op)
        return out

    def expunge(self, mailbox_id: int, uids: list[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only those among `uids` when given: UID EXPUNGE,
        RFC 4315 §2.1); their UIDs in order.  Blob references, counters and quota usage go down; each UID
        is remembered with the expunge's mod-sequence for QRESYNC (RFC 7162 §3.2.10), up to
        Store.expunge_memory per mailbox: past that the oldest are forgotten (_remove)."""
        released: list[bytes] = []

        def op(txn: lmdb.Transaction) -> list[int]:
            released.clear()
            mkey = R.U64.pack(mailbox_id)
            raw = txn.get(mkey, db=self.db["mbox"])
            if raw is None:
                raise MailboxError(NONEXISTENT, "No such mailbox")
            rec = R.loads(raw)
            if uids is None:
                victims = [m for m in self.messages(mailbox_id, txn) if DELETED in m.flags]
            else:
                victims = []
                for uid in uids:
                    key = R.msg_key(mailbox_id, uid)
                    value = txn.get(key, db=self.db["msgs"])
                    if value is not None:
                        msg = parse_record(key, value)
                        if DELETED in msg.flags:
                            victims.append(msg)
            if not victims:
                return []
            released.extend(self._remove(txn, rec, victims))
            txn.put(mkey, R.dumps(rec), db=self.db["mbox"])
            changes.record(txn, self.db, mailbox_id)
            return [m.uid for m in victims]

        out: list[int] = self.store._writing(op)
        self.store.segments.release_all(released)
        return out

    def _remove(self, txn: lmdb.Transaction, rec: dict[str, Any], victims: list[Message],
                unref: bool = True) -> list[bytes]:
        """Delete `victims` from the mailbox `rec` (updated in place, not written); the freed ranges.  Each
        expunge is remembered (`expunged` record, `modseqs` entry); when that takes the mailbox past
        Store.expunge_memory, the oldest are forgotten in this transaction and `expunge_floor` rises."""
        released = []
        rec["modseq"] += 1
        size = 0
        kept = rec.get("expunges")
        if kept is None:  # a record older than the counter
            kept = changes.count_expunged(txn, self.db, rec["id"])
        for m in victims:
            key = R.msg_key(rec["id"], m.uid)
            txn.delete(key, db=self.db["msgs"])
            txn.put(key, R.U64.pack(rec["modseq"]), db=self.db["expunged"])
            changes.note(txn, self.db, rec["id"], m.uid, rec["modseq"], m.modseq, expunged=True)
            if unref:
                loc = self.store._unref_blob(txn, m.blob)
                if loc:
                    released.append(loc)
            rec["exists"] -= 1
            rec["size"] -= m.size
            size += m.size
            if SEEN not in m.flags:
                rec["unseen"] -= 1
        kept += len(victims)
        if kept > self.store.expunge_memory:  # forget the oldest (RFC 7162 §3.2.5.2; fastmail.store.changes)
            floor, dropped = changes.forget_oldest(txn, self.db, rec["id"], rec.get("expunge_floor", 0),
                                                   kept - self.store.expunge_memory)
            rec["expunge_floor"] = floor
            kept -= dropped
        rec["expunges"] = kept
        if unref:
            self._add_usage(txn, rec["user"], -size, -len(victims))
        return released

    def copy(self, src: int, dst: int, uids: list[int], move: bool = False) -> tuple[int, list[tuple[int, int]]]:
        """COPY / MOVE (RFC 9051 §6.4.7, §6.4.8; RFC 6851) of the messages `uids` of mailbox `src` into
        `dst`, in UID order, with their flags and internal dates (the blob is shared, its reference count
        goes up).  Returns (UIDVALIDITY of dst, [(source uid, new uid)]) for COPYUID (RFC 4315).
        [TRYCREATE] when dst is gone, [OVERQUOTA] when a copy would pass the user's quota."""

        def op(txn: lmdb.Transaction) -> tuple[int, list[tuple[int, int]]]:
            rec = self.by_id(src, txn)
            if rec is None:
                raise MailboxError(NONEXISTENT, "No such mailbox")
            return self._transfer(txn, rec["user"], src, dst, uids, move)

        out: tuple[int, list[tuple[int, int]]] = self.store._writing(op)
        return out

    def _transfer(self, txn: lmdb.Transaction, user_id: int, src: int, dst: int, uids: list[int],
                  move: bool) -> tuple[int, list[tuple[int, int]]]:
        srec = self.by_id(src, txn)
        drec = self.by_id(dst, txn)
        if srec is None:
            raise MailboxError(NONEXISTENT, "No such mailbox")
        if drec is None:
            raise MailboxError(TRYCREATE, "No such mailbox")
        msgs = []
        for uid in sorted(set(uids)):
            key = R.msg_key(src, uid)
            value = txn.get(key, db=self.db["msgs"])
            if value is not None:
                msgs.append(parse_record(key, value))
        if not msgs:
            return drec["uidvalidity"], []
        same = src == dst
        if not move:
            total = sum(m.size for m in msgs)
            quota, used = self.store.quota_state(user_id, txn)
            if quota and used + total > quota:
                raise MailboxError(OVERQUOTA, "Quota exceeded")
            self._add_usage(txn, user_id, total, len(msgs))
        pairs = []
        if same:
            drec = srec
        for m in msgs:
            uid = drec["uidnext"]
            drec["uidnext"] = uid + 1
            drec["modseq"] += 1
            drec["exists"] += 1
            drec["size"] += m.size
            if SEEN not in m.flags:
                drec["unseen"] += 1
            txn.put(R.msg_key(dst, uid), R.message_record(m.blob, m.size, m.internaldate, m.flags, drec["modseq"]),
                    db=self.db["msgs"])
            changes.note(txn, self.db, dst, uid, drec["modseq"])
            if not move:
                raw = txn.get(m.blob, db=self.db["blobs"])
                if raw is not None:
                    seg, off, length, refs = R.BLOB.unpack(raw)
                    txn.put(m.blob, R.BLOB.pack(seg, off, length, refs + 1), db=self.db["blobs"])
            pairs.append((m.uid, uid))
        if move:
            self._remove(txn, srec, msgs, unref=False)
        if not same:
            txn.put(R.U64.pack(dst), R.dumps(drec), db=self.db["mbox"])
            changes.record(txn, self.db, dst)
        txn.put(R.U64.pack(src), R.dumps(srec), db=self.db["mbox"])
        if move or same:
            changes.record(txn, self.db, src)
        return drec["uidvalidity"], pairs
