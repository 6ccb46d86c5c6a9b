"""The cross-process change signal: which mailboxes changed since a worker last looked.

Every write transaction that changes a mailbox (delivery, APPEND, flags, expunge, copy, move, rename,
delete) calls `record(txn, dbs, mailbox_id)`: it bumps the global change number (meta `change_seq`) and
writes `change number -> mailbox id` into the `changes` database, which keeps only the last WINDOW entries
(the oldest is deleted as each new one is written, so the log never grows).

Each worker polls with `poll(txn, dbs, since)` a few times a second in one short read transaction: one
get when nothing changed, a short cursor walk otherwise.  It then wakes only the sessions that watch the
changed mailboxes, so thousands of idle sessions cost one read per poll per worker, not one per session.
A worker that fell more than WINDOW changes behind gets None ("anything may have changed") and wakes all
its sessions, which is always safe: a woken session re-reads its mailbox and finds what differs.

The second index here, `modseqs` (mailbox id, mod-sequence, uid), lists each mailbox's messages by the
mod-sequence of their last change, expunges included: a session that knows its mailbox up to mod-sequence
N reads only what changed after N (`since`), instead of every message of the mailbox.  Every writer of a
message record keeps it (`note`): delivery, APPEND, STORE, COPY/MOVE, EXPUNGE (IMAP and POP3).

Why a log in LMDB rather than a pipe or a socket between workers: LMDB is already shared by every
process (workers, the delivery runner, the CLI), it survives a worker being replaced, and the writer
needs no knowledge of who listens.

Expunges are not remembered forever (RFC 7162 §3.2.5.2 lets a server forget them): a mailbox keeps at most
EXPUNGE_MEMORY (Store.expunge_memory) of them, its `expunged` records and their `modseqs` entries.  The
expunge that goes past it forgets the oldest (`forget_oldest`, in its own write transaction) and raises the
mailbox record's `expunge_floor`: expunges at or below that mod-sequence are forgotten, every one above it
is remembered (no record is left at or below it).  `expunges` in the record counts those remembered.  A
reader whose mod-sequence is below the floor compares UIDs instead (fastmail.store.mailboxes).  A record
without these fields (older than the rule) has floor 0 and its count is taken by a walk at its next expunge.
"""

from __future__ import annotations

from typing import Any

import lmdb

from fastmail.store import records as R

SEQ_KEY = b"change_seq"
WINDOW = 8192
EXPUNGE_MEMORY = 10_000  # expunges remembered per mailbox (Store.expunge_memory; the oldest are forgotten)


def current(txn: lmdb.Transaction, dbs: dict[str, Any]) -> int:
    raw = txn.get(SEQ_KEY, db=dbs["meta"])
    return R.U64.unpack(raw)[0] if raw else 0


def record(txn: lmdb.Transaction, dbs: dict[str, Any], mailbox_id: int) -> None:
    """Note in this write transaction that mailbox `mailbox_id` changed."""
    seq = current(txn, dbs) + 1
    txn.put(SEQ_KEY, R.U64.pack(seq), db=dbs["meta"])
    txn.put(R.U64.pack(seq), R.U64.pack(mailbox_id), db=dbs["changes"])
    if seq > WINDOW:
        txn.delete(R.U64.pack(seq - WINDOW), db=dbs["changes"])


def poll(txn: lmdb.Transaction, dbs: dict[str, Any], since: int) -> tuple[int, set[int] | None]:
    """(the current change number, the mailbox ids changed after `since`); None for the ids when the log
    no longer reaches back to `since` (treat every mailbox as changed)."""
    seq = current(txn, dbs)
    if seq <= since:
        return seq, set()
    if seq - since > WINDOW - 1:
        return seq, None
    out: set[int] = set()
    cur = txn.cursor(db=dbs["changes"])
    if not cur.set_key(R.U64.pack(since + 1)):
        return seq, None
    for key, value in cur:
        if R.U64.unpack(key)[0] > seq:
            break
        out.add(R.U64.unpack(value)[0])
    return seq, out


EXPUNGED = b"x"


def note(txn: lmdb.Transaction, dbs: dict[str, Any], mailbox_id: int, uid: int, modseq: int,
         old_modseq: int | None = None, expunged: bool = False) -> None:
    """Index message `uid` of `mailbox_id` under its new mod-sequence (dropping its entry under the old
    one): changed (or new) when present, EXPUNGED when it was removed."""
    db = dbs["modseqs"]
    if old_modseq is not None:
        txn.delete(R.MODSEQ_KEY.pack(mailbox_id, old_modseq, uid), db=db)
    txn.put(R.MODSEQ_KEY.pack(mailbox_id, modseq, uid), EXPUNGED if expunged else b"", db=db)


def since(txn: lmdb.Transaction, dbs: dict[str, Any], mailbox_id: int, modseq: int) -> list[tuple[int, bool]]:
    """(uid, expunged) of every message of the mailbox changed, added or expunged after `modseq`, in
    mod-sequence order."""
    out: list[tuple[int, bool]] = []
    cur = txn.cursor(db=dbs["modseqs"])
    if not cur.set_range(R.MODSEQ_KEY.pack(mailbox_id, modseq + 1, 0)):
        return out
    prefix = R.U64.pack(mailbox_id)
    for key, value in cur:
        if key[:8] != prefix:
            break
        out.append((R.MODSEQ_KEY.unpack(key)[2], value == EXPUNGED))
    return out


def drop(txn: lmdb.Transaction, dbs: dict[str, Any], mailbox_id: int) -> None:
    """Forget a deleted mailbox's entries."""
    cur = txn.cursor(db=dbs["modseqs"])
    prefix = R.U64.pack(mailbox_id)
    if cur.set_range(prefix):
        while cur.key()[:8] == prefix:
            if not cur.delete():
                break


def count_expunged(txn: lmdb.Transaction, dbs: dict[str, Any], mailbox_id: int) -> int:
    """How many expunges of the mailbox are remembered (a walk of its `expunged` records: for a mailbox
    record older than its `expunges` counter)."""
    prefix = R.U64.pack(mailbox_id)
    cur = txn.cursor(db=dbs["expunged"])
    n = 0
    if cur.set_range(prefix):
        for key in cur.iternext(values=False):
            if key[:8] != prefix:
                break
            n += 1
    return n


def forget_oldest(txn: lmdb.Transaction, dbs: dict[str, Any], mailbox_id: int, floor: int,
                  count: int) -> tuple[int, int]:
    """Forget at least `count` of the mailbox's oldest remembered expunges (RFC 7162 §3.2.5.2): drop their
    `expunged` records and `modseqs` entries, lowest mod-sequence first and a whole mod-sequence at a time
    (an expunge removes all its messages at one mod-sequence, and no expunge at or below the floor may be
    left).  The walk starts above `floor`, the mailbox's current floor, where the oldest remembered expunge
    is: what it passes (messages changed meanwhile) is below the new floor afterwards and never walked
    again.  Returns (the new floor, how many were forgotten)."""
    prefix = R.U64.pack(mailbox_id)
    cur = txn.cursor(db=dbs["modseqs"])
    dropped = 0
    if count <= 0 or not cur.set_range(R.MODSEQ_KEY.pack(mailbox_id, floor + 1, 0)):
        return floor, 0
    while True:
        key = cur.key()
        if key[:8] != prefix:
            break
        _, modseq, uid = R.MODSEQ_KEY.unpack(key)
        if dropped >= count and modseq > floor:
            break
        if cur.value() == EXPUNGED:
            txn.delete(R.msg_key(mailbox_id, uid), db=dbs["expunged"])
            dropped += 1
            floor = modseq
            if not cur.delete():  # moves to the next entry
                break
        elif not cur.next():
            break
    return floor, dropped
