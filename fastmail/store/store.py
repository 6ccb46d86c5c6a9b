"""The mailbox store: one LMDB environment (the index) plus append-only message segments (the bodies).

Opened by each process itself after fork (never inherited, ARCHITECTURE §1).  Write transactions are short
and batched: `commit_batch` stores a whole group of accepted messages with one segment fdatasync and one
synced LMDB commit (ARCHITECTURE §3), and is what the workers' group committer calls from its thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from fastmail.store import changes, mime
from fastmail.store import records as R
from fastmail.store.segments import Segments, fsync_dir
from fastmail.store.segments import is_full as segments_full

MAP_NOT_GROWN = "LMDB map could not be grown enough"
FULL_MARGIN = 8 << 20  # free bytes under which a failed LMDB commit (EIO) is taken for a full disk


class StoreError(Exception):
    """An operator-facing store problem (unknown user, duplicate domain, ...)."""


@dataclass
class Incoming:
    """One accepted message and where it goes; built by a session, stored by commit_batch."""

    qid: bytes
    raw: bytes
    sender: str
    local: list[int]  # user ids, each once: delivered to that user's INBOX
    remote: list[dict[str, Any]] = field(default_factory=list)  # queue recipients {"to", "notify", "orcpt"}
    # RFC 3461 §6.2.2.2: local recipients (RCPT) with NOTIFY=SUCCESS, {"to", "rcpt", "notify", "orcpt",
    # "users"}: each one delivered to a mailbox here gets a "delivered" notice, kept in the message's queue
    # record written by the same transaction as the delivery (the delivery process makes it from there)
    notices: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # ret, envid, body, smtputf8, auth, client
    meta: dict[str, Any] | None = None  # fastmail.store.mime.analyze(raw)
    folder: str = "INBOX"
    folder_special: str | None = None  # a missing `folder` is created with this special-use (e.g. \\Junk)
    # SMTP answers once for all recipients: a recipient found over quota at commit time, while others got
    # the message, is kept in the queue as failed so that a bounce (DSN) reports it.  LMTP answers per
    # recipient instead, so there it is simply refused.
    bounce_over_quota: bool = False
    # IMAP APPEND (fastmail.store.mailboxes): the one mailbox to store into, with the client's flags and
    # internal date (seconds); a mailbox gone by commit time is reported in Outcome.no_mailbox.
    mailbox_id: int | None = None
    flags: list[str] = field(default_factory=list)
    internaldate: int | None = None


@dataclass
class Outcome:
    """Per-recipient results of storing one Incoming: user ids refused (over quota)."""

    over_quota: list[int] = field(default_factory=list)
    uids: dict[int, int] = field(default_factory=dict)  # user id -> uid in the folder
    no_mailbox: bool = False  # Incoming.mailbox_id no longer exists
    uidvalidity: int = 0  # of the mailbox the (last) copy went into, for APPENDUID


class _Gate:
    """Transactions may run in two threads of a worker; resizing the map needs none open in this process.
    enter/leave take a plain lock (a read transaction is a few microseconds: a Condition's RLock and a
    notify on every leave were most of it); only a resize waits on the condition."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._resizing = False

    def enter(self) -> None:
        with self._lock:
            while self._resizing:
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._resizing:
                self._cond.notify_all()  # exclusive() waits for the last one out

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._lock:
                self._resizing = False
                self._cond.notify_all()


class _Txn:
    """`with store.read() as txn` / `store.write()`: a transaction inside the gate; a write one commits
    when the block ends without an exception.  A class, not a generator context manager: reads are hot."""

    __slots__ = ("_store", "_write", "_txn")

    def __init__(self, store: Store, write: bool) -> None:
        self._store = store
        self._write = write

    def __enter__(self) -> lmdb.Transaction:
        store = self._store
        gate = store._gate
        for _ in range(8):
            gate.enter()
            try:
                self._txn = store.env.begin(write=self._write, buffers=False)
                return self._txn
            except lmdb.MapResizedError:
                gate.leave()  # another process grew the map: adopt its size, outside the gate, and retry
            except BaseException:
                gate.leave()
                raise
            store._adopt_map_size()
        raise StoreError("LMDB map size keeps changing")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        txn = self._txn
        del self._txn
        try:
            if kind is None and self._write:
                txn.commit()  # a failed commit aborts the transaction itself (LMDB) and raises
            else:
                txn.abort()
        finally:
            self._store._gate.leave()


def _now_ms() -> int:
    return int(time.time() * 1000)


def new_qid() -> bytes:
    """12 bytes: milliseconds since the epoch (6) and randomness (6); hex is the queue id in logs."""
    # random.getrandbits, not os.urandom: a queue id is no secret, and a getrandom() syscall per message
    # showed in the profile.  `random` reseeds itself in a forked child, so workers do not collide.
    return _now_ms().to_bytes(6, "big") + random.getrandbits(48).to_bytes(6, "big")


class Store:
    def __init__(self, data_dir: str | os.PathLike[str], map_size: int = 1 << 30, readonly: bool = False) -> None:
        self.dir = Path(data_dir)
        (self.dir / "index").mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(self.dir / "index"),
            map_size=map_size,
            max_dbs=len(R.DBS) + 4,
            max_readers=1024,
            sync=True,
            metasync=True,
            readahead=False,
            readonly=readonly,
        )
        self._gate = _Gate()
        self.db = {name: self.env.open_db(name.encode(), create=not readonly) for name in R.DBS}
        with self.read() as txn:
            version = txn.get(b"version", db=self.db["meta"])
        if version is None and not readonly:
            with self.write() as txn:
                txn.put(b"version", R.U32.pack(R.VERSION), db=self.db["meta"])
        elif version is not None and R.U32.unpack(version)[0] > R.VERSION:
            raise StoreError(f"index version {R.U32.unpack(version)[0]} is newer than this fastmail ({R.VERSION})")
        self.segments = Segments(self.dir / "segments")
        self.expunge_memory = changes.EXPUNGE_MEMORY  # expunges remembered per mailbox (fastmail.store.changes)

    def close(self) -> None:
        self.segments.close()
        self.env.close()

    # -- transactions ----------------------------------------------------------------------------------

    def read(self) -> contextlib.AbstractContextManager[lmdb.Transaction]:
        return _Txn(self, False)

    def write(self) -> contextlib.AbstractContextManager[lmdb.Transaction]:
        """A write transaction, committed on success; a full map raises MapFullError (see _writing)."""
        return _Txn(self, True)

    def _adopt_map_size(self) -> None:
        # Another process grew the map: adopt its size (LMDB: set_mapsize(0)).
        with self._gate.exclusive():
            self.env.set_mapsize(0)

    def _grow(self) -> None:
        with self._gate.exclusive():
            self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def _writing(self, fn: Any, *args: Any) -> Any:
        """Run fn(txn, *args) in a write transaction, growing the map and retrying when it is full."""
        for _ in range(16):
            try:
                with self.write() as txn:
                    return fn(txn, *args)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.MapResizedError:
                self._adopt_map_size()
            except lmdb.Error as e:
                # LMDB reports a short write (a full disk) as EIO ("short write, filesystem full?"): when the
                # transaction surely was not committed and the disk is all but full, say so (storage_full()).
                if not storage_full(e) and self._uncommitted(e) and self._nearly_full():
                    raise OSError(errno.ENOSPC, f"disk full: {e}") from e
                raise
        raise StoreError(MAP_NOT_GROWN)

    def _nearly_full(self) -> bool:
        try:
            st = os.statvfs(self.dir)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < FULL_MARGIN

    # -- counters --------------------------------------------------------------------------------------

    def _next(self, txn: lmdb.Transaction, name: bytes) -> int:
        meta = self.db["meta"]
        raw = txn.get(name, db=meta)
        value = R.U64.unpack(raw)[0] + 1 if raw else 1
        txn.put(name, R.U64.pack(value), db=meta)
        return value

    # -- domains ---------------------------------------------------------------------------------------

    def add_domain(self, domain: str) -> None:
        domain = normalize_domain(domain)

        def op(txn: lmdb.Transaction) -> None:
            if not txn.put(domain.encode(), R.dumps({"v": 1, "created": _now_ms()}), db=self.db["domains"], overwrite=False):
                raise StoreError(f"domain {domain} exists")

        self._writing(op)

    def del_domain(self, domain: str) -> None:
        domain = normalize_domain(domain)

        def op(txn: lmdb.Transaction) -> None:
            cur = txn.cursor(db=self.db["users"])
            for key in cur.iternext(values=False):
                if key.decode().rpartition("@")[2] == domain:
                    raise StoreError(f"domain {domain} still has users; delete them first")
            # Aliases are keyed by their address ("x@domain", "@domain"): left behind, they would come back to
            # life if the domain were added again.
            for key in txn.cursor(db=self.db["aliases"]).iternext(values=False):
                if key.decode().rpartition("@")[2] == domain:
                    raise StoreError(f"domain {domain} still has aliases; delete them first")
            if not txn.delete(domain.encode(), db=self.db["domains"]):
                raise StoreError(f"no domain {domain}")

        self._writing(op)

    def list_domains(self) -> list[str]:
        with self.read() as txn:
            return [k.decode() for k in txn.cursor(db=self.db["domains"]).iternext(values=False)]

    def is_local_domain(self, domain: str, txn: lmdb.Transaction | None = None) -> bool:
        if txn is None:
            with self.read() as txn:
                return txn.get(domain.encode(), db=self.db["domains"]) is not None
        return txn.get(domain.encode(), db=self.db["domains"]) is not None

    # -- users -----------------------------------------------------------------------------------------

    def add_user(self, address: str, password_hash: str, quota: int = 0) -> int:
        address = normalize_address(address)
        domain = address.rpartition("@")[2]

        def op(txn: lmdb.Transaction) -> int:
            if not self.is_local_domain(domain, txn):
                raise StoreError(f"domain {domain} is not ours; add it first")
            if txn.get(address.encode(), db=self.db["users"]) is not None:
                raise StoreError(f"user {address} exists")
            uid = self._next(txn, b"next_user")
            rec = {"v": 1, "id": uid, "address": address, "hash": password_hash, "quota": quota, "created": _now_ms()}
            txn.put(address.encode(), R.dumps(rec), db=self.db["users"])
            txn.put(R.U64.pack(uid), address.encode(), db=self.db["user_ids"])
            txn.put(R.U64.pack(uid), R.USAGE.pack(0, 0), db=self.db["usage"])
            for name, special in R.SPECIAL_FOLDERS:
                self._create_mailbox(txn, uid, name, special)
            return uid

        return int(self._writing(op))

    def _create_mailbox(self, txn: lmdb.Transaction, user_id: int, name: str, special: str | None) -> int:
        mid = self._next(txn, b"next_mailbox")
        key = R.mailbox_key(user_id, name)
        if not txn.put(key, R.U64.pack(mid), db=self.db["mailboxes"], overwrite=False):
            raise StoreError(f"mailbox {name} exists")
        rec = {
            "v": 1, "id": mid, "user": user_id, "name": name,
            "uidvalidity": (int(time.time()) + mid) & 0xFFFFFFFF or 1, "uidnext": 1, "modseq": 1,
            "exists": 0, "unseen": 0, "size": 0, "special": special, "subscribed": True,
        }
        txn.put(R.U64.pack(mid), R.dumps(rec), db=self.db["mbox"])
        return mid

    def get_user(self, address: str) -> dict[str, Any] | None:
        with self.read() as txn:
            raw = txn.get(normalize_address(address).encode(), db=self.db["users"])
            return R.loads(raw) if raw else None

    def user_address(self, user_id: int, txn: lmdb.Transaction | None = None) -> str | None:
        if txn is None:
            with self.read() as txn:
                return self.user_address(user_id, txn)
        raw = txn.get(R.U64.pack(user_id), db=self.db["user_ids"])
        return raw.decode() if raw else None

    def set_password(self, address: str, password_hash: str) -> None:
        self._update_user(address, {"hash": password_hash})

    def set_quota(self, address: str, quota: int) -> None:
        self._update_user(address, {"quota": quota})

    def set_node(self, address: str, node: str) -> None:
        """The cluster node that holds the user's mailbox ("" : this node); fastmail.cluster routes by it."""
        self._update_user(address, {"node": node})

    def _update_user(self, address: str, changes: dict[str, Any]) -> None:
        key = normalize_address(address).encode()

        def op(txn: lmdb.Transaction) -> None:
            raw = txn.get(key, db=self.db["users"])
            if raw is None:
                raise StoreError(f"no user {address}")
            rec = R.loads(raw)
            rec.update(changes)
            txn.put(key, R.dumps(rec), db=self.db["users"])

        self._writing(op)

    def del_user(self, address: str) -> None:
        key = normalize_address(address).encode()
        released: list[bytes] = []

        def op(txn: lmdb.Transaction) -> None:
            released.clear()
            raw = txn.get(key, db=self.db["users"])
            if raw is None:
                raise StoreError(f"no user {address}")
            uid = R.loads(raw)["id"]
            prefix = R.U64.pack(uid)
            cur = txn.cursor(db=self.db["mailboxes"])
            boxes = []
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    boxes.append((k, R.U64.unpack(v)[0]))
            for k, mid in boxes:
                released.extend(self._drop_messages(txn, mid))
                txn.delete(k, db=self.db["mailboxes"])
                txn.delete(R.U64.pack(mid), db=self.db["mbox"])
                self._forget_mailbox(txn, mid)
            self._drop_prefix(txn, "meta", R.NAME_MARK + prefix)  # the user's \Noselect names, subscriptions
            txn.delete(key, db=self.db["users"])
            txn.delete(prefix, db=self.db["user_ids"])
            txn.delete(prefix, db=self.db["usage"])

        self._writing(op)
        self.segments.release_all(released)

    def _forget_mailbox(self, txn: lmdb.Transaction, mid: int) -> None:
        """After a mailbox is deleted: drop its expunge records and change history, and note the change (the
        sessions that have it selected see it gone)."""
        self._drop_prefix(txn, "expunged", R.U64.pack(mid))
        changes.drop(txn, self.db, mid)
        changes.record(txn, self.db, mid)

    def _drop_prefix(self, txn: lmdb.Transaction, db: str, prefix: bytes) -> None:
        cur = txn.cursor(db=self.db[db])
        if cur.set_range(prefix):
            while cur.key()[:len(prefix)] == prefix:
                if not cur.delete():
                    break

    def _drop_messages(self, txn: lmdb.Transaction, mid: int) -> list[bytes]:
        """Delete every message of a mailbox; return the segment ranges now free."""
        lo = R.msg_key(mid, 0)
        cur = txn.cursor(db=self.db["msgs"])
        released = []
        keys = []
        if cur.set_range(lo):
            for k, v in cur:
                if k[:8] != lo[:8]:
                    break
                keys.append(k)
                loc = self._unref_blob(txn, R.parse_message_record(v)["blob"])
                if loc:
                    released.append(loc)
        for k in keys:
            txn.delete(k, db=self.db["msgs"])
        return released

    def _unref_blob(self, txn: lmdb.Transaction, blob_id: bytes) -> bytes | None:
        raw = txn.get(blob_id, db=self.db["blobs"])
        if raw is None:
            return None
        seg, off, length, refs = R.BLOB.unpack(raw)
        if refs > 1:
            txn.put(blob_id, R.BLOB.pack(seg, off, length, refs - 1), db=self.db["blobs"])
            return None
        txn.delete(blob_id, db=self.db["blobs"])
        txn.delete(blob_id, db=self.db["msgmeta"])
        txn.delete(blob_id, db=self.db["msgwire"])
        return R.BLOB.pack(seg, off, length, 0)[:24]

    def list_users(self) -> list[dict[str, Any]]:
        out = []
        with self.read() as txn:
            for _key, raw in txn.cursor(db=self.db["users"]):
                rec = R.loads(raw)
                used = txn.get(R.U64.pack(rec["id"]), db=self.db["usage"])
                rec["used_bytes"], rec["messages"] = R.USAGE.unpack(used) if used else (0, 0)
                rec.pop("hash", None)
                out.append(rec)
        return out

    def password_hash(self, address: str) -> str | None:
        rec = self.get_user(address)
        return rec["hash"] if rec else None

    # -- aliases ---------------------------------------------------------------------------------------

    def add_alias(self, address: str, targets: list[str]) -> None:
        address = address.strip().lower()
        if address.startswith("@"):
            domain = normalize_domain(address[1:])
            address = "@" + domain
        else:
            address = normalize_address(address)
            domain = address.rpartition("@")[2]
        targets = [normalize_address(t) for t in targets]
        if not targets:
            raise StoreError("an alias needs at least one target")

        def op(txn: lmdb.Transaction) -> None:
            if not self.is_local_domain(domain, txn):
                raise StoreError(f"domain {domain} is not ours; add it first")
            raw = txn.get(address.encode(), db=self.db["aliases"])
            old = R.loads(raw)["targets"] if raw else []
            merged = old + [t for t in targets if t not in old]
            txn.put(address.encode(), R.dumps({"v": 1, "targets": merged}), db=self.db["aliases"])

        self._writing(op)

    def del_alias(self, address: str) -> None:
        key = address.strip().lower().encode()

        def op(txn: lmdb.Transaction) -> None:
            if not txn.delete(key, db=self.db["aliases"]):
                raise StoreError(f"no alias {address}")

        self._writing(op)

    def list_aliases(self) -> dict[str, list[str]]:
        with self.read() as txn:
            return {k.decode(): R.loads(v)["targets"] for k, v in txn.cursor(db=self.db["aliases"])}

    # -- recipient resolution (ARCHITECTURE §5) ------------------------------------------------------

    def resolve(
        self, address: str, txn: lmdb.Transaction | None = None, catch_all: bool = True
    ) -> tuple[list[int], list[str]] | None:
        """Local users and external addresses that mail for `address` reaches; None: no such recipient.

        Order: alias for the exact address, user, the same two for user+tag with the tag removed, then the
        domain's catch-all alias.  Alias targets are resolved again (local ones), at most 8 levels deep.
        """
        if txn is None:
            with self.read() as txn:
                return self.resolve(address, txn, catch_all)
        users: list[int] = []
        external: list[str] = []
        if not self._resolve_into(txn, address.lower(), users, external, 0 if catch_all else -1):
            return None
        return users, external

    def _resolve_into(self, txn: lmdb.Transaction, address: str, users: list[int], external: list[str], depth: int) -> bool:
        local, _, domain = address.rpartition("@")
        if not self.is_local_domain(domain, txn):
            if depth <= 0:
                return False
            if address not in external:
                external.append(address)
            return True
        if depth > 8:
            return False
        catch_all = depth == 0
        depth = max(depth, 0)
        candidates = [address]
        base = local.split("+", 1)[0]
        if base != local and base:
            candidates.append(f"{base}@{domain}")
        for cand in candidates:
            raw = txn.get(cand.encode(), db=self.db["aliases"])
            if raw is not None:
                found = False
                for target in R.loads(raw)["targets"]:
                    found |= self._resolve_into(txn, target, users, external, depth + 1)
                return found
            raw = txn.get(cand.encode(), db=self.db["users"])
            if raw is not None:
                uid = R.loads(raw)["id"]
                if uid not in users:
                    users.append(uid)
                return True
        raw = txn.get(f"@{domain}".encode(), db=self.db["aliases"])
        if raw is not None and catch_all:
            found = False
            for target in R.loads(raw)["targets"]:
                found |= self._resolve_into(txn, target, users, external, depth + 1)
            return found
        return False

    def quota_state(self, user_id: int, txn: lmdb.Transaction | None = None) -> tuple[int, int]:
        """(quota bytes or 0 for none, bytes used)."""
        if txn is None:
            with self.read() as txn:
                return self.quota_state(user_id, txn)
        address = self.user_address(user_id, txn)
        rec = R.loads(txn.get(address.encode(), db=self.db["users"])) if address else {"quota": 0}
        used = txn.get(R.U64.pack(user_id), db=self.db["usage"])
        return rec.get("quota", 0), (R.USAGE.unpack(used)[0] if used else 0)

    # -- delivery: the durable half of "250 OK" --------------------------------------------------------

    def commit_batch(self, batch: list[Incoming]) -> list[Outcome]:
        """Store every message of the batch: bodies with one fdatasync, index with one synced commit.

        Returns one Outcome per Incoming.  Raises OSError/lmdb.Error when nothing of the batch could be made
        durable: the sessions then answer 451 4.3.0, or 452 4.3.1 when the disk is full (storage_full()),
        and the client retries.
        """
        bodies = [item.raw for item in batch]
        locations = self.segments.append_batch(bodies)
        now = int(time.time())

        def op(txn: lmdb.Transaction) -> list[Outcome]:
            outcomes = []
            for item, loc in zip(batch, locations, strict=True):
                outcomes.append(self._deliver(txn, item, loc, now))
            return outcomes

        try:
            return list(self._writing(op))
        except BaseException as e:
            self._write_failed(e, locations)
            raise

    def _write_failed(self, exc: BaseException, locations: list[bytes]) -> OSError | None:
        """The write transaction for freshly appended bodies failed with `exc`.  When LMDB surely did not
        commit it, the bodies will never be referenced: the next batch reuses their space.  Returns an error
        to raise instead of `exc`, or None (always, now: _writing already turns a full disk's EIO into
        ENOSPC; fastmail.migrate still asks)."""
        if self._uncommitted(exc):
            self.segments.discard(locations)
        return None

    def _uncommitted(self, exc: BaseException) -> bool:
        """After `exc` from a write transaction, LMDB surely did not commit it: raised before the commit,
        or a commit that failed before writing the meta page that publishes it — a failure there marks the
        environment fatal (MDB_PANIC from then on), so an environment still usable says the commit failed
        earlier (writing or syncing its pages)."""
        if not_committed(exc):
            return True
        if isinstance(exc, lmdb.PanicError):
            return False
        try:
            with self.env.begin():
                pass
        except lmdb.Error:
            return False
        return True

    def _deliver(self, txn: lmdb.Transaction, item: Incoming, loc: bytes, now: int) -> Outcome:
        db = self.db
        size = len(item.raw)
        outcome = Outcome()
        refs = 0
        for user_id in item.local:
            ukey = R.U64.pack(user_id)
            address = txn.get(ukey, db=db["user_ids"])
            if address is None:
                continue  # user deleted since RCPT: counted as over quota (refused), never silently dropped
            urec = R.loads(txn.get(address, db=db["users"]))
            used_raw = txn.get(ukey, db=db["usage"])
            used, count = R.USAGE.unpack(used_raw) if used_raw else (0, 0)
            if urec.get("quota", 0) and used + size > urec["quota"]:
                outcome.over_quota.append(user_id)
                continue
            mkey: bytes
            if item.mailbox_id is not None:
                mkey = R.U64.pack(item.mailbox_id)
                mbox_raw = txn.get(mkey, db=db["mbox"])
                if mbox_raw is None:
                    outcome.no_mailbox = True
                    continue
                mbox = R.loads(mbox_raw)
            else:
                mid_raw = txn.get(R.mailbox_key(user_id, item.folder), db=db["mailboxes"])
                if mid_raw is None and item.folder_special is not None:
                    mid_raw = R.U64.pack(self._create_mailbox(txn, user_id, item.folder, item.folder_special))
                if mid_raw is None:
                    mid_raw = txn.get(R.mailbox_key(user_id, "INBOX"), db=db["mailboxes"])
                mkey = bytes(mid_raw)
                mbox = R.loads(txn.get(mkey, db=db["mbox"]))
            uid = mbox["uidnext"]
            mbox["uidnext"] = uid + 1
            mbox["modseq"] += 1
            mbox["exists"] += 1
            if "\\Seen" not in item.flags:
                mbox["unseen"] += 1
            mbox["size"] += size
            txn.put(mkey, R.dumps(mbox), db=db["mbox"])
            txn.put(
                R.msg_key(mbox["id"], uid),
                R.message_record(item.qid, size, item.internaldate or now, item.flags, mbox["modseq"]),
                db=db["msgs"],
            )
            changes.record(txn, db, mbox["id"])
            changes.note(txn, db, mbox["id"], uid, mbox["modseq"])
            outcome.uidvalidity = mbox["uidvalidity"]
            txn.put(ukey, R.USAGE.pack(used + size, count + 1), db=db["usage"])
            outcome.uids[user_id] = uid
            refs += 1
        rcpts = [dict(r, state="queued") for r in item.remote]
        if item.bounce_over_quota and outcome.over_quota and (refs or item.remote):
            for user_id in outcome.over_quota:
                who = self.user_address(user_id, txn) or str(user_id)
                rcpts.append({"to": who, "rcpt": who, "state": "failed",
                              "reply": "552 5.2.2 Mailbox full"})
        if item.sender:  # never a notice to <> (RFC 3461 §6.2)
            for n in item.notices:
                if any(u in outcome.uids for u in n["users"]):
                    rcpts.append({"to": n["to"], "rcpt": n.get("rcpt") or n["to"], "notify": n.get("notify"),
                                  "orcpt": n.get("orcpt"), "state": "sent", "delivered": True, "notice": True,
                                  "status": "2.0.0", "reply": "250 2.0.0 delivered to mailbox", "at": now})
        if rcpts:
            qrec = {
                "v": 1, "id": item.qid.hex(), "sender": item.sender, "size": size, "arrived": now,
                "attempts": 0, "next_attempt": now, "params": item.params, "rcpts": rcpts,
            }
            txn.put(item.qid, R.dumps(qrec), db=db["queue"])
            txn.put(R.SCHEDULE_KEY.pack(now * 1000, item.qid), b"", db=db["schedule"])
            refs += 1
        if refs:
            seg, off, length = R.BLOB.unpack(loc + b"\0\0\0\0")[:3]
            txn.put(item.qid, R.BLOB.pack(seg, off, length, refs), db=db["blobs"])
            if item.meta is not None:
                txn.put(item.qid, R.dumps(item.meta), db=db["msgmeta"])
                try:
                    wire = mime.wire(item.meta)
                except Exception:  # pragma: no cover - never lose a message over it; FETCH renders the meta
                    pass
                else:
                    txn.put(item.qid, wire, db=db["msgwire"])
        return outcome

    # -- reading ---------------------------------------------------------------------------------------

    def mailbox_id(self, user_id: int, name: str, txn: lmdb.Transaction | None = None) -> int | None:
        if txn is None:
            with self.read() as txn:
                return self.mailbox_id(user_id, name, txn)
        raw = txn.get(R.mailbox_key(user_id, name), db=self.db["mailboxes"])
        return R.U64.unpack(raw)[0] if raw else None

    def list_mailboxes(self, user_id: int) -> list[dict[str, Any]]:
        prefix = R.U64.pack(user_id)
        out = []
        with self.read() as txn:
            cur = txn.cursor(db=self.db["mailboxes"])
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    out.append(R.loads(txn.get(v, db=self.db["mbox"])))
        return out

    def list_messages(self, mailbox_id: int) -> list[dict[str, Any]]:
        lo = R.msg_key(mailbox_id, 0)
        out = []
        with self.read() as txn:
            cur = txn.cursor(db=self.db["msgs"])
            if cur.set_range(lo):
                for k, v in cur:
                    if k[:8] != lo[:8]:
                        break
                    rec = R.parse_message_record(v)
                    rec["uid"] = R.MSG_KEY.unpack(k)[1]
                    out.append(rec)
        return out

    def blob_location(self, blob_id: bytes) -> bytes | None:
        with self.read() as txn:
            raw = txn.get(blob_id, db=self.db["blobs"])
        return bytes(raw[:24]) if raw else None

    def read_blob(self, blob_id: bytes) -> bytes:
        loc = self.blob_location(blob_id)
        if loc is None:
            raise StoreError(f"no blob {blob_id.hex()}")
        return self.segments.read(loc)

    def read_message(self, mailbox_id: int, uid: int) -> bytes | None:
        """The message's bytes, or None when it is not in the mailbox: record and blob location are read
        in one transaction (a RETR's whole index cost)."""
        with self.read() as txn:
            raw = txn.get(R.msg_key(mailbox_id, uid), db=self.db["msgs"])
            if raw is None:
                return None
            blob = R.parse_message_record(raw)["blob"]
            loc = txn.get(blob, db=self.db["blobs"])
        if loc is None:
            raise StoreError(f"no blob {blob.hex()}")
        return self.segments.read(loc[:24])

    def message_meta(self, blob_id: bytes) -> dict[str, Any] | None:
        with self.read() as txn:
            raw = txn.get(blob_id, db=self.db["msgmeta"])
        return R.loads(raw) if raw else None

    # -- queue -----------------------------------------------------------------------------------------

    def queue_list(self) -> list[dict[str, Any]]:
        with self.read() as txn:
            return [R.loads(v) for _k, v in txn.cursor(db=self.db["queue"])]

    def queue_get(self, qid: str) -> dict[str, Any] | None:
        try:
            key = bytes.fromhex(qid)
        except ValueError:
            return None
        with self.read() as txn:
            raw = txn.get(key, db=self.db["queue"])
        return R.loads(raw) if raw else None

    def queue_delete(self, qid: str) -> None:
        try:
            key = bytes.fromhex(qid)
        except ValueError:
            raise StoreError(f"no queue entry {qid}") from None
        released: list[bytes] = []

        def op(txn: lmdb.Transaction) -> None:
            released.clear()
            raw = txn.get(key, db=self.db["queue"])
            if raw is None:
                raise StoreError(f"no queue entry {qid}")
            rec = R.loads(raw)
            txn.delete(key, db=self.db["queue"])
            cur = txn.cursor(db=self.db["schedule"])
            for k in list(cur.iternext(values=False)):
                if k[8:] == key:
                    txn.delete(k, db=self.db["schedule"])
            loc = self._unref_blob(txn, bytes.fromhex(rec["id"]))
            if loc:
                released.append(loc)

        self._writing(op)
        for loc in released:
            self.segments.release(loc)


def storage_full(exc: BaseException) -> bool:
    """The error means the disk (or the LMDB map, which could not grow) is full: a temporary condition that
    ends by itself when space comes back (SMTP 452 4.3.1, RFC 3463 §3.4 X.3.1; IMAP NO [UNAVAILABLE])."""
    return segments_full(exc) or isinstance(exc, lmdb.DiskError) or (
        isinstance(exc, lmdb.Error) and bool(exc.args) and exc.args[-1] in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(exc, StoreError) and str(exc) == MAP_NOT_GROWN)


def not_committed(exc: BaseException) -> bool:
    """After this error from a write transaction, LMDB surely did not commit it: raised before the commit,
    or a commit that failed writing its pages (a full disk), before the meta page that would publish it."""
    return not isinstance(exc, lmdb.Error) or isinstance(exc, (lmdb.DiskError, lmdb.MapFullError)) or (
        bool(exc.args) and exc.args[-1] in (errno.ENOSPC, errno.EDQUOT))


def normalize_domain(domain: str) -> str:
    d = domain.strip().lower()
    if not d or d.endswith(".") or d.startswith(".") or ".." in d or "@" in d or " " in d:
        raise StoreError(f"invalid domain {domain!r}")
    try:
        d.encode("idna")
    except UnicodeError:
        raise StoreError(f"invalid domain {domain!r}") from None
    return d


def normalize_address(address: str) -> str:
    a = address.strip().lower()
    local, at, domain = a.rpartition("@")
    if not at or not local or any(c in local for c in ' <>()[]\\,;:"'):
        raise StoreError(f"invalid address {address!r}")
    return f"{local}@{normalize_domain(domain)}"


def init_data_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    fsync_dir(path)
