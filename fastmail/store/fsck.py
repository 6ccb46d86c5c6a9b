"""`fastmail fsck`: the LMDB index checked against the message segments, and repaired on request.

The invariants (docs/fsck.md says the same for operators):

1. Every message record's blob has a blob record, and the blob's bytes are in its segment: the file exists,
   is long enough, and has no hole inside the range (a punched or truncated segment).
2. A blob record's reference count is the number of message records naming it plus one for a queue entry
   of the same id; a blob with no reference at all has no record (and no msgmeta/msgwire entry).
3. A mailbox record's `exists`, `unseen` and `size` are those of its message records; its `uidnext` is
   above every UID and its `modseq` at least every message's.
4. A user's usage (bytes, messages) is the sum over the user's mailboxes.
5. Every queue entry's blob exists (as in 1).
6. The secondary indexes agree with the records they index (issue #8): every message record belongs to a
   mailbox record; the name index (`mailboxes`: user | name -> id) names each mailbox exactly once, by the
   user and name its record holds, and nothing else; each message has exactly one `modseqs` entry, at its
   own mod-sequence; each `expunged` record (mailbox | uid -> mod-sequence) has its `modseqs` expunge entry
   and the other way round, of a mailbox that exists and a UID no message holds, above the mailbox's
   `expunge_floor` (expunges at or below it are forgotten: fastmail.store.changes); the floor is a number
   no higher than the mailbox's `modseq`, and the record's `expunges` (when it has one) counts the
   mailbox's expunged records; a mailbox's `uidnext` and
   `modseq` are above every UID and at least every mod-sequence these indexes hold; msgmeta/msgwire
   entries have a blob record; a queue entry not held has exactly its one schedule key, a schedule key its
   queue entry.
7. Segment bytes referenced by no blob record are garbage: between two referenced ranges they are an
   orphan range (problem, punched); past the last referenced byte of a segment no process writes to any
   more they are a torn tail (by design no error: a batch whose LMDB commit never happened, or the
   zero-filled runway of a killed writer; truncated on repair); a segment without any referenced byte that
   no process writes to is empty when only holes and zeros are left (every message in it was released: no
   error, unlinked on repair), else dead (problem, unlinked).

Safe while the server runs.  The check is one read transaction (plus stat/lseek of segment files).  Index
repairs are one short write transaction that checks again, inside it, before it changes anything, so it
acts on what is true then, not on what the read saw.  Segment repairs come after it: a range is punched only
when it lies before a referenced range of its segment (a writer appends and commits in order, so bytes
before a committed range can never become referenced later); a tail is truncated and a dead segment
unlinked only under the segment's flock (fastmail.store.segments: a writer holds it while it appends), and
after a new read transaction has shown nothing referencing them.  Running it again finds nothing more.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lmdb

from fastmail.store import changes
from fastmail.store import records as R
from fastmail.store.segments import LOCATION
from fastmail.store.store import Store

SEEN = "\\Seen"

# Problem kinds (each one a line of the report; docs/fsck.md describes them)
MISSING_BLOB = "missing-blob"  # a message whose body is gone: removed on repair
QUEUE_MISSING_BLOB = "queue-missing-blob"  # a queue entry whose body is gone: removed on repair
ORPHAN_BLOB = "orphan-blob"  # a blob record nothing references: dropped, its range punched
REFCOUNT = "refcount"  # a blob record's reference count is wrong: set
MAILBOX_COUNTERS = "mailbox-counters"  # exists/unseen/size/uidnext/modseq wrong: recomputed
USAGE = "usage"  # a user's quota usage wrong: recomputed
ORPHAN_RANGE = "orphan-range"  # segment bytes between referenced ranges, referenced by none: punched
DEAD_SEGMENT = "dead-segment"  # a segment file nothing references, no writer: unlinked
ORPHAN_MESSAGE = "orphan-message"  # a message record whose mailbox record is gone: removed
MAILBOX_NAME = "mailbox-name"  # the name index and the mailbox records disagree: set from the records
MODSEQ_INDEX = "modseq-index"  # a `modseqs` entry missing, stale, or of no mailbox: added / dropped
EXPUNGED_INDEX = "expunged-index"  # an `expunged` record of no mailbox, of a live UID, without its entry, or
# at or below its mailbox's expunge floor (forgotten, yet left)
EXPUNGE_FLOOR = "expunge-floor"  # a mailbox's expunge floor not a number, or above its mod-sequence
ORPHAN_META = "orphan-meta"  # a msgmeta/msgwire entry without a blob record: dropped
QUEUE_SCHEDULE = "queue-schedule"  # a queue entry without its schedule key, or a stale key: set
# Not a problem: a torn tail (reported as a note; truncated on repair)
TORN_TAIL = "torn-tail"
# Not a problem either: a segment nobody writes to any more whose every message was released (expunged,
# deleted) — only holes and zeros are left; the store leaves it, `--repair` unlinks it
EMPTY_SEGMENT = "empty-segment"


@dataclass
class Finding:
    kind: str
    detail: dict[str, Any]
    repaired: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.detail, "repaired": self.repaired}

    def text(self) -> str:
        fields = " ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.kind} {fields}" + (" (repaired)" if self.repaired else "")


@dataclass
class Report:
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)  # torn tails: not errors
    repaired: bool = False

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "repaired": self.repaired,
                "problems": [p.as_dict() for p in self.problems], "notes": [n.as_dict() for n in self.notes]}


# -- segment files ---------------------------------------------------------------------------------------


def _segment_files(store: Store) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        names = os.listdir(store.segments.dir)
    except FileNotFoundError:
        return out
    for name in names:
        stem, dot, ext = name.partition(".")
        if ext == "seg" and len(stem) == 16:
            try:
                out[int(stem, 16)] = name
            except ValueError:
                continue
    return out


class _Files:
    """Read-only descriptors of the segment files, opened once per check."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._fds: dict[int, int | None] = {}

    def fd(self, seg: int) -> int | None:
        if seg not in self._fds:
            try:
                self._fds[seg] = os.open(self.store.segments.path(seg), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._fds[seg] = None
        return self._fds[seg]

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)
        self._fds.clear()

    def broken(self, seg: int, offset: int, length: int) -> str | None:
        """Why the range cannot be read back whole, or None when it can."""
        fd = self.fd(seg)
        if fd is None:
            return "segment missing"
        if offset + length > os.fstat(fd).st_size:
            return "segment short"
        if length and _has_hole(fd, offset, offset + length):
            return "hole in range"
        return None


def _has_hole(fd: int, start: int, end: int) -> bool:
    try:
        return os.lseek(fd, start, os.SEEK_HOLE) < end
    except OSError:
        return False  # no SEEK_HOLE here: the size check is all we can do


def _has_data(fd: int, start: int, end: int) -> bool:
    """Bytes other than zeros in whole blocks inside [start, end).  Punching frees whole blocks only: the
    partial blocks at a released range's edges stay allocated, zeroed — also the block where two ranges
    released one after the other meet — and are no sign of garbage; nor are blocks of zeros at all."""
    block = os.fstat(fd).st_blksize or 4096
    pos = -(-start // block) * block
    hi = end // block * block
    while pos < hi:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), hi)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return False  # nothing but holes after pos
            data, hole = pos, hi  # no SEEK_DATA here: read it all
        if data >= hi:
            return False
        while data < hole:
            chunk = os.pread(fd, min(hole - data, 1 << 20), data)
            if not chunk:
                return False
            if chunk.count(0) != len(chunk):
                return True
            data += len(chunk)
        pos = hole
    return False


# -- the index -------------------------------------------------------------------------------------------


@dataclass
class _Box:
    rec: dict[str, Any]
    exists: int = 0
    unseen: int = 0
    size: int = 0
    max_uid: int = 0
    max_modseq: int = 0
    broken: list[tuple[int, int]] = field(default_factory=list)  # (uid, modseq) of messages without a body
    lost: list[int] = field(default_factory=lambda: [0, 0, 0])  # their exists, unseen, size (removed on repair)
    expunges: int = 0  # expunges remembered (expunged records, after repair), for the record's `expunges`
    floor: int = 0  # the record's expunge floor (0 when it has none, or when it is not a number)
    new_floor: int | None = None  # the floor to write on repair (an invalid one replaced)


@dataclass
class _Index:
    """What the records say, and what they should say."""

    boxes: dict[int, _Box] = field(default_factory=dict)
    refs: dict[bytes, int] = field(default_factory=dict)  # blob id -> references found
    broken_refs: dict[bytes, int] = field(default_factory=dict)  # the same, of blobs without their bytes
    blobs: dict[bytes, tuple[int, int, int, int]] = field(default_factory=dict)  # blob id -> BLOB fields
    bad_blobs: dict[bytes, str] = field(default_factory=dict)  # blob id -> why its bytes are unreadable
    usage: dict[int, tuple[int, int]] = field(default_factory=dict)  # user id -> (bytes, messages) found
    stored_usage: dict[int, tuple[int, int]] = field(default_factory=dict)
    queue_broken: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    orphan_refs: dict[bytes, int] = field(default_factory=dict)  # blob id -> references by orphan messages
    fixes: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)  # (db, key, value or None: delete)
    findings: list[Finding] = field(default_factory=list)

    def fix(self, kind: str, detail: dict[str, Any], *changes: tuple[str, bytes, bytes | None]) -> None:
        self.findings.append(Finding(kind, detail))
        self.fixes.extend(changes)


def _scan(store: Store, txn: lmdb.Transaction, files: _Files) -> _Index:
    db = store.db
    ix = _Index()
    for k, raw in txn.cursor(db=db["blobs"]):
        blob = bytes(k)
        seg, off, length, refs = R.BLOB.unpack(raw)
        ix.blobs[blob] = (seg, off, length, refs)
        why = files.broken(seg, off, length)
        if why:
            ix.bad_blobs[blob] = why
    for k, raw in txn.cursor(db=db["mbox"]):
        rec = R.loads(raw)
        ix.boxes[R.U64.unpack(k)[0]] = _Box(rec)
    for k, raw in txn.cursor(db=db["usage"]):
        ix.stored_usage[R.U64.unpack(k)[0]] = R.USAGE.unpack(raw)
    for uid_key in txn.cursor(db=db["user_ids"]).iternext(values=False):
        ix.usage[R.U64.unpack(uid_key)[0]] = (0, 0)
    live: dict[tuple[int, int], int] = {}  # (mailbox, uid) -> modseq of every message of a mailbox
    for k, raw in txn.cursor(db=db["msgs"]):
        mid, uid = R.MSG_KEY.unpack(k)
        msg = R.parse_message_record(bytes(raw))
        box = ix.boxes.get(mid)
        blob = msg["blob"]
        if box is None:  # a message of no mailbox: nobody can see it; removed, its blob reference with it
            ix.orphan_refs[blob] = ix.orphan_refs.get(blob, 0) + 1
            ix.fix(ORPHAN_MESSAGE, {"mailbox": mid, "uid": uid, "blob": blob.hex()}, ("msgs", bytes(k), None))
            continue
        live[mid, uid] = msg["modseq"]
        box.max_uid = max(box.max_uid, uid)
        box.max_modseq = max(box.max_modseq, msg["modseq"])
        unseen = SEEN not in msg["flags"]
        box.exists += 1
        box.size += msg["size"]
        box.unseen += unseen
        if blob not in ix.blobs or blob in ix.bad_blobs:
            why = ix.bad_blobs.get(blob, "no blob record")
            ix.broken_refs[blob] = ix.broken_refs.get(blob, 0) + 1
            box.broken.append((uid, msg["modseq"]))
            box.lost[0] += 1
            box.lost[1] += unseen
            box.lost[2] += msg["size"]
            ix.findings.append(Finding(MISSING_BLOB, {"mailbox": mid, "uid": uid, "blob": blob.hex(), "why": why}))
            continue
        ix.refs[blob] = ix.refs.get(blob, 0) + 1
    for k, raw in txn.cursor(db=db["queue"]):
        qid = bytes(k)
        rec = R.loads(raw)
        try:
            blob = bytes.fromhex(rec["id"])
        except (KeyError, ValueError, TypeError):
            blob = qid
        if blob not in ix.blobs or blob in ix.bad_blobs:
            ix.broken_refs[blob] = ix.broken_refs.get(blob, 0) + 1
            ix.queue_broken.append((qid, rec))
            ix.findings.append(Finding(QUEUE_MISSING_BLOB, {
                "qid": qid.hex(), "blob": blob.hex(), "sender": rec.get("sender"),
                "rcpts": [r.get("to") for r in rec.get("rcpts", [])],
                "why": ix.bad_blobs.get(blob, "no blob record")}))
            continue
        ix.refs[blob] = ix.refs.get(blob, 0) + 1
    _scan_indexes(store, txn, ix, live)
    for blob, (seg, off, length, refs) in ix.blobs.items():
        found = ix.refs.get(blob, 0)
        if blob in ix.broken_refs:
            continue  # reported with what references it (missing-blob, queue-missing-blob)
        if found + ix.orphan_refs.get(blob, 0) == refs and blob in ix.orphan_refs:
            continue  # right but for the orphan messages (reported as such): their removal sets it
        if found == 0:
            ix.findings.append(Finding(ORPHAN_BLOB, {"blob": blob.hex(), "segment": f"{seg:016x}", "offset": off,
                                                     "length": length, "refs": refs}))
        elif found != refs:
            ix.findings.append(Finding(REFCOUNT, {"blob": blob.hex(), "stored": refs, "found": found}))
    for mid, box in ix.boxes.items():
        rec = box.rec
        user = rec.get("user")
        if user in ix.usage:
            b, n = ix.usage[user]
            ix.usage[user] = (b + box.size, n + box.exists)
        want = box.exists, box.unseen, box.size
        have = rec.get("exists"), rec.get("unseen"), rec.get("size")
        bad_next = rec.get("uidnext", 0) <= box.max_uid
        bad_modseq = rec.get("modseq", 0) < box.max_modseq
        bad_count = "expunges" in rec and rec["expunges"] != box.expunges  # (absent: counted at the next expunge)
        if want != have or bad_next or bad_modseq or bad_count or box.broken:
            detail: dict[str, Any] = {"mailbox": mid, "user": user, "name": rec.get("name")}
            for name, h, w in zip(("exists", "unseen", "size"), have, want, strict=True):
                if h != w:
                    detail[name] = f"{h}->{w}"
            if bad_next:
                detail["uidnext"] = f"{rec.get('uidnext')}->{box.max_uid + 1}"
            if bad_modseq:
                detail["modseq"] = f"{rec.get('modseq')}->{box.max_modseq}"
            if bad_count:
                detail["expunges"] = f"{rec.get('expunges')}->{box.expunges}"
            if want != have or bad_next or bad_modseq or bad_count:
                ix.findings.append(Finding(MAILBOX_COUNTERS, detail))
    for user, (b, n) in ix.usage.items():
        stored = ix.stored_usage.get(user)
        if stored != (b, n):  # (counting the messages without a body: their removal is no separate problem)
            ix.findings.append(Finding(USAGE, {"user": user, "stored": list(stored) if stored else None,
                                               "found": [b, n]}))
    return ix


def _scan_indexes(store: Store, txn: lmdb.Transaction, ix: _Index, live: dict[tuple[int, int], int]) -> None:
    """The secondary indexes against the records (invariant 6); what each fix changes goes to ix.fixes."""
    db = store.db
    # the name index: each mailbox named once, by its record's user and name
    names: dict[bytes, int] = {}
    for k, v in txn.cursor(db=db["mailboxes"]):
        names[bytes(k)] = R.U64.unpack(v)[0]
    taken = {k for k, mid in names.items() if mid in ix.boxes}
    for key, mid in names.items():
        box = ix.boxes.get(mid)
        rec = box.rec if box else None
        if rec is None or R.mailbox_key(rec.get("user", 0), rec.get("name", "")) != key:
            why = "no mailbox record" if rec is None else "names another user or name"
            taken.discard(key)
            ix.fix(MAILBOX_NAME, {"mailbox": mid, "user": R.U64.unpack(key[:8])[0],
                                  "name": key[8:].decode(errors="replace"), "why": why}, ("mailboxes", key, None))
    for mid, box in ix.boxes.items():
        rec = box.rec
        key = R.mailbox_key(rec.get("user", 0), rec.get("name", ""))
        if names.get(key) == mid:
            continue
        detail = {"mailbox": mid, "user": rec.get("user"), "name": rec.get("name"), "why": "not in the name index"}
        if key in taken:  # the name is another mailbox's: this one is kept under a name of its own
            rec["name"] = f"{rec.get('name')}.fsck-{mid}"
            key = R.mailbox_key(rec.get("user", 0), rec["name"])
            detail["renamed"] = rec["name"]
            ix.fixes.append(("mbox", R.U64.pack(mid), R.dumps(rec)))
        taken.add(key)
        ix.fix(MAILBOX_NAME, detail, ("mailboxes", key, R.U64.pack(mid)))
    # the expunge floors (fastmail.store.changes): expunges at or below one are forgotten
    invalid: list[int] = []
    for mid, box in ix.boxes.items():
        floor = box.rec.get("expunge_floor", 0)
        if type(floor) is not int or floor < 0:
            invalid.append(mid)  # replaced below, once the remembered expunges are known
            continue
        box.floor = floor
        box.max_modseq = max(box.max_modseq, floor)  # mod-sequences never go back: the floor was one
        if floor > box.rec.get("modseq", 0):
            ix.findings.append(Finding(EXPUNGE_FLOOR, {"mailbox": mid, "floor": floor,
                                                       "why": "above the mailbox's modseq"}))
    # expunged records: of a mailbox, of a UID no message holds, above the floor
    gone: dict[tuple[int, int], int] = {}
    for k, v in txn.cursor(db=db["expunged"]):
        mid, uid = R.MSG_KEY.unpack(k)
        modseq = R.U64.unpack(v)[0]
        bad = "no mailbox" if mid not in ix.boxes else "uid in use" if (mid, uid) in live else None
        if bad is None and modseq <= ix.boxes[mid].floor:
            bad = "at or below the floor"
            box = ix.boxes[mid]  # an expunged UID is never given again
            box.max_uid = max(box.max_uid, uid)
        if bad:
            ix.fix(EXPUNGED_INDEX, {"mailbox": mid, "uid": uid, "modseq": modseq, "why": bad},
                   ("expunged", bytes(k), None))
        else:
            gone[mid, uid] = modseq
    # the modseqs index: one entry per message at its mod-sequence, one per expunge at the expunge's
    seen: set[tuple[int, int]] = set()
    unrecorded: dict[tuple[int, int], int] = {}  # expunge entries without an expunged record: uid -> modseq
    for k, v in txn.cursor(db=db["modseqs"]):
        mid, modseq, uid = R.MODSEQ_KEY.unpack(k)
        msg = (mid, uid)
        if mid not in ix.boxes:
            why = "no mailbox"
        elif v == b"" and live.get(msg) == modseq:
            seen.add(msg)
            continue
        elif v == changes.EXPUNGED and modseq <= ix.boxes[mid].floor:
            why = "at or below the floor"
            box = ix.boxes[mid]
            box.max_uid = max(box.max_uid, uid)
        elif v == changes.EXPUNGED and msg not in live and gone.get(msg, modseq) == modseq:
            if msg in gone:
                seen.add(msg)
            else:
                unrecorded[msg] = max(unrecorded.get(msg, 0), modseq)
            continue
        else:
            why = "stale" if v in (b"", changes.EXPUNGED) else "bad value"
        ix.fix(MODSEQ_INDEX, {"mailbox": mid, "uid": uid, "modseq": modseq, "why": why}, ("modseqs", bytes(k), None))
    for (mid, uid), modseq in unrecorded.items():  # the only trace of an expunge: its record comes back
        gone[mid, uid] = modseq
        ix.fix(EXPUNGED_INDEX, {"mailbox": mid, "uid": uid, "modseq": modseq, "why": "no expunged record"},
               ("expunged", R.msg_key(mid, uid), R.U64.pack(modseq)))
        seen.add((mid, uid))
    for (mid, uid), modseq in live.items():
        if (mid, uid) not in seen:
            ix.fix(MODSEQ_INDEX, {"mailbox": mid, "uid": uid, "modseq": modseq, "why": "missing"},
                   ("modseqs", R.MODSEQ_KEY.pack(mid, modseq, uid), b""))
    for (mid, uid), modseq in gone.items():
        if (mid, uid) not in seen:
            ix.fix(MODSEQ_INDEX, {"mailbox": mid, "uid": uid, "modseq": modseq, "why": "missing expunge"},
                   ("modseqs", R.MODSEQ_KEY.pack(mid, modseq, uid), changes.EXPUNGED))
        box = ix.boxes[mid]  # an expunged UID is never given again, nor its mod-sequence
        box.max_uid = max(box.max_uid, uid)
        box.max_modseq = max(box.max_modseq, modseq)
        box.expunges += 1
    for mid in invalid:  # forgotten: at most what lies below the oldest expunge remembered (they go in order)
        box = ix.boxes[mid]
        oldest = min((m for (gmid, _), m in gone.items() if gmid == mid), default=None)
        box.new_floor = box.floor = oldest - 1 if oldest is not None else max(box.rec.get("modseq", 0), 0)
        ix.findings.append(Finding(EXPUNGE_FLOOR, {"mailbox": mid, "floor": str(box.rec.get("expunge_floor")),
                                                   "why": f"not a number: set to {box.new_floor}"}))
    # blob side tables
    for name in ("msgmeta", "msgwire"):
        for k in txn.cursor(db=db[name]).iternext(values=False):
            if bytes(k) in ix.broken_refs:  # of a missing blob, reported as such: dropped with it
                ix.fixes.append((name, bytes(k), None))
            elif bytes(k) not in ix.blobs:
                ix.fix(ORPHAN_META, {"db": name, "blob": bytes(k).hex()}, (name, bytes(k), None))
    # the queue's schedule: a key per entry not held, at its next attempt
    wanted: dict[bytes, bytes] = {}
    broken = {qid for qid, _ in ix.queue_broken}  # removed with their keys on repair
    for k, raw in txn.cursor(db=db["queue"]):
        rec = R.loads(raw)
        if not rec.get("held") and bytes(k) not in broken:
            wanted[R.SCHEDULE_KEY.pack(int(rec.get("next_attempt", 0) * 1000), bytes(k))] = bytes(k)
    for sk in txn.cursor(db=db["schedule"]).iternext(values=False):
        skey = bytes(sk)
        at, qid = R.SCHEDULE_KEY.unpack(skey)
        if wanted.pop(skey, None) is None and qid not in broken:
            ix.fix(QUEUE_SCHEDULE, {"qid": qid.hex(), "at": at, "why": "stale key"}, ("schedule", skey, None))
    for skey, qid in wanted.items():
        ix.fix(QUEUE_SCHEDULE, {"qid": qid.hex(), "at": R.SCHEDULE_KEY.unpack(skey)[0], "why": "no schedule key"},
               ("schedule", skey, b""))


def _fix_index(store: Store, txn: lmdb.Transaction, ix: _Index) -> None:
    """Make the records say what _scan found they should (inside the write transaction that scanned).
    Dropped blob records leave their bytes to the segment pass (an orphan range or a torn tail then): it
    punches only bytes no remaining record references, even if a corrupt record shared a range."""
    db = store.db
    for table, fkey, fvalue in sorted(ix.fixes, key=lambda f: f[2] is not None):  # drops first, then puts
        if fvalue is None:
            txn.delete(fkey, db=db[table])
        else:
            txn.put(fkey, fvalue, db=db[table])
    usage = dict(ix.usage)
    for box in ix.boxes.values():
        user = box.rec.get("user")
        if user in usage:
            b, n = usage[user]
            usage[user] = (b - box.lost[2], n - box.lost[0])
        box.exists -= box.lost[0]
        box.unseen -= box.lost[1]
        box.size -= box.lost[2]
    for mid, box in ix.boxes.items():
        rec = box.rec
        if box.broken:  # remove the messages without a body, as an expunge does (clients see them vanish)
            rec["modseq"] = max(rec.get("modseq", 0), box.max_modseq) + 1
            for uid, old_modseq in box.broken:
                key = R.msg_key(mid, uid)
                txn.delete(key, db=db["msgs"])
                txn.put(key, R.U64.pack(rec["modseq"]), db=db["expunged"])
                changes.note(txn, db, mid, uid, rec["modseq"], old_modseq, expunged=True)
            box.expunges += len(box.broken)  # (kept past Store.expunge_memory until the next expunge)
        changed = bool(box.broken)
        if box.new_floor is not None:
            rec["expunge_floor"] = box.new_floor
            changed = True
        if "expunges" in rec and rec["expunges"] != box.expunges:
            rec["expunges"] = box.expunges
            changed = True
        for name, value in (("exists", box.exists), ("unseen", box.unseen), ("size", box.size)):
            if rec.get(name) != value:
                rec[name] = value
                changed = True
        if rec.get("uidnext", 0) <= box.max_uid:
            rec["uidnext"] = box.max_uid + 1
            changed = True
        if rec.get("modseq", 0) < box.max_modseq:
            rec["modseq"] = box.max_modseq
            changed = True
        if changed:
            txn.put(R.U64.pack(mid), R.dumps(rec), db=db["mbox"])
            changes.record(txn, db, mid)
    for user, (b, n) in usage.items():
        if ix.stored_usage.get(user) != (b, n):
            txn.put(R.U64.pack(user), R.USAGE.pack(b, n), db=db["usage"])
    for qid, _rec in ix.queue_broken:
        txn.delete(qid, db=db["queue"])
        cur = txn.cursor(db=db["schedule"])
        for k in list(cur.iternext(values=False)):
            if k[8:] == qid:
                txn.delete(k, db=db["schedule"])
    for blob, (seg, off, length, refs) in ix.blobs.items():
        found = ix.refs.get(blob, 0)
        if found == 0 or blob in ix.bad_blobs:
            txn.delete(blob, db=db["blobs"])
            txn.delete(blob, db=db["msgmeta"])
            txn.delete(blob, db=db["msgwire"])
        elif found != refs:
            txn.put(blob, R.BLOB.pack(seg, off, length, found), db=db["blobs"])


# -- segment garbage -------------------------------------------------------------------------------------


def _live_ranges(store: Store, txn: lmdb.Transaction) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for _k, raw in txn.cursor(db=store.db["blobs"]):
        seg, off, length, _refs = R.BLOB.unpack(raw)
        out.setdefault(seg, []).append((off, off + length))
    for ranges in out.values():
        ranges.sort()
    return out


@contextmanager
def _segment_lock(store: Store, seg: int) -> Iterator[int | None]:
    """The segment's fd with its writer lock taken, or None when a live writer holds it (or it is gone)."""
    try:
        fd = os.open(store.segments.path(seg), os.O_RDONLY | os.O_CLOEXEC)  # flock needs no write access
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd if os.fstat(fd).st_nlink else None
    finally:
        os.close(fd)  # drops the lock


def _all_zero(fd: int, size: int) -> bool:
    """Nothing but holes and zero bytes in the file (every byte checked, partial blocks too)."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return True  # nothing but holes after pos
            data, hole = pos, size  # no SEEK_DATA here: read it all
        while data < hole:
            chunk = os.pread(fd, min(hole - data, 1 << 20), data)
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False
            data += len(chunk)
        pos = max(hole, pos + 1)
    return True


def _gaps(ranges: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """The unreferenced stretches before the last referenced byte."""
    pos = 0
    for start, end in ranges:
        if start > pos:
            yield pos, start
        pos = max(pos, end)


def _scan_segments(store: Store, live: dict[int, list[tuple[int, int]]]) -> tuple[list[Finding], list[Finding]]:
    problems: list[Finding] = []
    notes: list[Finding] = []
    for seg, _name in sorted(_segment_files(store).items()):
        ranges = live.get(seg, [])
        try:
            fd = os.open(store.segments.path(seg), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            for start, end in _gaps(ranges):
                if _has_data(fd, start, end):
                    problems.append(Finding(ORPHAN_RANGE, {"segment": f"{seg:016x}", "offset": start,
                                                           "length": end - start}))
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        with _segment_lock(store, seg) as locked:
            if locked is None:
                continue  # a live writer's segment: its tail may be a batch about to commit
            empty = not ranges and _all_zero(locked, size)
        last = max((end for _, end in ranges), default=0)
        if empty:
            notes.append(Finding(EMPTY_SEGMENT, {"segment": f"{seg:016x}", "size": size}))
        elif not ranges:
            problems.append(Finding(DEAD_SEGMENT, {"segment": f"{seg:016x}", "size": size}))
        elif size > last:
            notes.append(Finding(TORN_TAIL, {"segment": f"{seg:016x}", "offset": last, "length": size - last}))
    return _settled(store, problems), notes


SETTLE = (0.05, 0.1, 0.2, 0.4, 0.8)  # seconds between the looks at what may be a moment's state


def _settled(store: Store, problems: list[Finding]) -> list[Finding]:
    """The segment findings that last.  A range whose blob record a transaction dropped is punched just
    after that commit, so for a moment it looks orphaned; a writer creates its segment file just before
    it takes the file's lock.  Both pass by themselves: look again a few times over ~1.5 s."""
    pending = list(problems)
    for delay in SETTLE:
        if not pending:
            break
        time.sleep(delay)
        with store.read() as txn:
            live = _live_ranges(store, txn)
        pending = [f for f in pending if _still(store, f, live)]
    return pending


def _still(store: Store, f: Finding, live: dict[int, list[tuple[int, int]]]) -> bool:
    seg = int(f.detail["segment"], 16)
    if f.kind == DEAD_SEGMENT:
        if live.get(seg):
            return False
        with _segment_lock(store, seg) as fd:
            return fd is not None
    try:
        fd = os.open(store.segments.path(seg), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return _has_data(fd, f.detail["offset"], f.detail["offset"] + f.detail["length"])
    finally:
        os.close(fd)


def _repair_segments(store: Store, findings: list[Finding]) -> None:
    for f in findings:
        seg = int(f.detail["segment"], 16)
        if f.kind == ORPHAN_RANGE:
            # Bytes before a committed range of the segment: never referenced later (one writer per segment
            # appends and commits in order); punching again is harmless.
            store.segments.release(LOCATION.pack(seg, f.detail["offset"], f.detail["length"]))
            f.repaired = True
            continue
        with _segment_lock(store, seg) as fd:
            if fd is None:
                continue  # a writer took it meanwhile
            with store.read() as txn:  # check again, now that no writer can add a reference
                ranges = _live_ranges(store, txn).get(seg, [])
            last = max((end for _, end in ranges), default=0)
            if f.kind in (DEAD_SEGMENT, EMPTY_SEGMENT) and not ranges:
                os.unlink(store.segments.path(seg))
                f.repaired = True
            elif f.kind == TORN_TAIL and os.fstat(fd).st_size > last:
                os.truncate(store.segments.path(seg), last)
                f.repaired = True
    if any(f.kind in (DEAD_SEGMENT, EMPTY_SEGMENT) and f.repaired for f in findings):
        from fastmail.store.segments import fsync_dir

        fsync_dir(store.segments.dir)


# -- entry point -----------------------------------------------------------------------------------------


def check(store: Store) -> Report:
    """The read-only check: one read transaction for the index, then the segment files."""
    files = _Files(store)
    try:
        with store.read() as txn:
            ix = _scan(store, txn, files)
            live = _live_ranges(store, txn)
    finally:
        files.close()
    problems, notes = _scan_segments(store, live)
    return Report(_confirmed(store, ix) + problems, notes)


def _confirmed(store: Store, ix: _Index) -> list[Finding]:
    """The index findings, less the bodies found broken only because they were released meanwhile: an
    expunge committed after the read transaction began punches its range right after its commit, so the
    range looks holed although its record is already gone.  A new read transaction tells."""
    racing = {f.detail["blob"] for f in ix.findings
              if f.kind in (MISSING_BLOB, QUEUE_MISSING_BLOB) and f.detail["why"] != "no blob record"}
    if not racing:
        return ix.findings
    gone = set()
    with store.read() as txn:
        for blob_hex in racing:
            blob = bytes.fromhex(blob_hex)
            raw = txn.get(blob, db=store.db["blobs"])
            if raw is None or R.BLOB.unpack(raw)[:3] != ix.blobs[blob][:3]:
                gone.add(blob_hex)
    return [f for f in ix.findings if f.detail.get("blob") not in gone or f.kind not in (MISSING_BLOB, QUEUE_MISSING_BLOB)]


def repair(store: Store) -> Report:
    """Check, then repair what was found: the index in one write transaction that scans again first, the
    segments after it; then check again.  The report lists what the first check found (and garbage the
    repair itself left, such as a segment whose last blob it dropped), each marked repaired or not."""
    report = check(store)
    if report.clean and not report.notes:
        return report
    if any(f.kind not in (ORPHAN_RANGE, DEAD_SEGMENT) for f in report.problems):
        def op(txn: lmdb.Transaction) -> None:
            files = _Files(store)
            try:
                _fix_index(store, txn, _scan(store, txn, files))  # scanned again: act on what is true now
            finally:
                files.close()

        store._writing(op)
    with store.read() as txn:  # the segments as the index is now
        live = _live_ranges(store, txn)
    problems, notes = _scan_segments(store, live)
    _repair_segments(store, problems + notes)
    known = {(f.kind, _ident(f)) for f in report.problems}
    report.problems.extend(p for p in problems if (p.kind, _ident(p)) not in known)
    after = check(store)
    left = {(f.kind, _ident(f)) for f in after.problems}
    for f in report.problems:
        f.repaired = (f.kind, _ident(f)) not in left
    tails = {(f.kind, _ident(f)) for f in after.notes}
    for f in report.notes:
        f.repaired = (f.kind, _ident(f)) not in tails
    report.repaired = True
    return report


def _ident(f: Finding) -> tuple[Any, ...]:
    d = f.detail
    return (d.get("mailbox"), d.get("uid"), d.get("blob"), d.get("qid"), d.get("user"), d.get("segment"),
            d.get("offset"), d.get("modseq"), d.get("db"), d.get("name"), d.get("why"))
