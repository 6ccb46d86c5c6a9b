"""The POP3 maildrop over the mailbox store: one user's INBOX, locked for one POP3 session at a time.

- `MaildropLock`: RFC 1939 §8 lets a server refuse a second session on a maildrop; we do ([IN-USE],
  RFC 2449).  The lock is an exclusive `flock` on `<data_dir>/locks/pop3-<user id>`, so it holds across
  worker processes and the kernel drops it when the holder dies (`kill -9` leaves no stale lock).  IMAP
  sessions do not take it: they see POP3's removals as ordinary expunges.
- `open_inbox`: the INBOX's UIDVALIDITY and (uid, size, blob) list, read in one transaction.
- `remove`: the UPDATE state (RFC 1939 §6): the given UIDs removed in one write transaction — all or
  none — whatever their flags, with counters, quota usage, the QRESYNC expunge record and the change
  signal kept exactly as an IMAP EXPUNGE keeps them.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import lmdb

from fastmail.store import changes
from fastmail.store import records as R
from fastmail.store.mailboxes import Mailboxes, Message, parse_record
from fastmail.store.store import Store


class MaildropLock:
    def __init__(self, data_dir: str | os.PathLike[str], user_id: int) -> None:
        self.path = Path(data_dir) / "locks" / f"pop3-{user_id}"
        self._fd: int | None = None
        self.previous_login: float | None = None  # when the last session logged in (the file's mtime)

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another session holds it."""
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        st = os.fstat(fd)
        self.previous_login = st.st_mtime if st.st_size else None  # a new lock file is empty: no login yet
        return True

    def mark_login(self) -> None:
        """Record this login's time (RFC 2449 LOGIN-DELAY is measured from it, across workers)."""
        if self._fd is not None:
            os.pwrite(self._fd, b"1", 0)  # non-empty from the first login on
            os.utime(self._fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def open_inbox(store: Store, user_id: int) -> tuple[int, int, list[Message]] | None:
    """(mailbox id, UIDVALIDITY, messages in UID order) of the user's INBOX, or None if it has none."""
    boxes = Mailboxes(store)
    with store.read() as txn:
        rec = boxes.get(user_id, "INBOX", txn)
        if rec is None:
            return None
        return rec["id"], rec["uidvalidity"], boxes.messages(rec["id"], txn)


def read_message(store: Store, mailbox_id: int, uid: int) -> bytes | None:
    """The message's bytes, or None when it is no longer in the mailbox (removed by another session)."""
    return store.read_message(mailbox_id, uid)


def remove(store: Store, mailbox_id: int, uids: list[int]) -> list[int]:
    """Remove the messages `uids` (those still present) in one transaction; the UIDs removed."""
    boxes = Mailboxes(store)
    released: list[bytes] = []

    def op(txn: lmdb.Transaction) -> list[int]:
        released.clear()
        mkey = R.U64.pack(mailbox_id)
        raw = txn.get(mkey, db=store.db["mbox"])
        if raw is None:
            return []
        rec = R.loads(raw)
        victims = []
        for uid in sorted(set(uids)):
            key = R.msg_key(mailbox_id, uid)
            value = txn.get(key, db=store.db["msgs"])
            if value is not None:
                victims.append(parse_record(key, bytes(value)))
        if not victims:
            return []
        released.extend(boxes._remove(txn, rec, victims))
        txn.put(mkey, R.dumps(rec), db=store.db["mbox"])
        changes.record(txn, store.db, mailbox_id)
        return [m.uid for m in victims]

    out: list[int] = store._writing(op)
    # after the commit, never inside it (a crash must not leave a record pointing at a hole)
    store.segments.release_all(released)
    return out
