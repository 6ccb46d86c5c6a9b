"""fastmail.delivery.runner.Runner.scan on a real store: what it starts, what it leaves (in flight, cooling
down after an internal error, another process's share, held)."""

from __future__ import annotations

import asyncio
import time

import pytest

from fastmail import config
from fastmail.delivery import queue as Q
from fastmail.delivery import wake
from fastmail.delivery.runner import Runner
from fastmail.store import records as R
from fastmail.store.store import Incoming, Store, StoreError, new_qid


def _queued(store: Store) -> bytes:
    item = Incoming(qid=new_qid(), raw=b"Subject: x\r\n\r\nx\r\n", sender="a@example.org", local=[],
                    remote=[{"to": "b@remote.test", "rcpt": "b@remote.test", "notify": None, "orcpt": None}])
    store.commit_batch([item])
    return item.qid


def test_scan_starts_only_what_is_due_and_free(tmp_path):
    cfg = config.load(None, {"server.data_dir": str(tmp_path), "delivery.processes": 2})
    store = Store(cfg.data_dir, map_size=1 << 24)
    try:
        qids = [_queued(store) for _ in range(40)]
        runner = Runner(cfg, store, index=0, processes=2)
        started: list[bytes] = []

        async def fake_attempt(qid: bytes, rec: dict, location: bytes | None = None) -> None:
            started.append(qid)

        runner.attempt = fake_attempt  # type: ignore[method-assign]
        mine = [q for q in qids if wake.owner(q, 2) == 0]
        busy, cooling, held = mine[0], mine[1], mine[2]
        runner.inflight.add(busy)
        runner.cooldown[cooling] = time.time() + 60
        Q.hold(store, held.hex())

        async def main() -> float | None:
            next_due = runner.scan()
            await asyncio.sleep(0)
            return next_due

        next_due = asyncio.run(main())
        assert sorted(started) == sorted(set(mine) - {busy, cooling, held})
        assert next_due is not None and next_due == runner.cooldown[cooling]  # it wakes when the cooldown ends
    finally:
        store.close()


def _reschedule(store: Store, qid: bytes, at: float) -> None:
    """Give `qid` the schedule key of time `at` (as a commit landing late would)."""
    def op(txn):
        rec = R.loads(txn.get(qid, db=store.db["queue"]))
        txn.delete(Q.schedule_key(qid, rec["next_attempt"]), db=store.db["schedule"])
        rec["next_attempt"] = at
        txn.put(qid, R.dumps(rec), db=store.db["queue"])
        txn.put(Q.schedule_key(qid, at), b"", db=store.db["schedule"])

    store._writing(op)


def test_scans_after_the_first_start_near_where_the_last_one_stopped(tmp_path):
    cfg = config.load(None, {"server.data_dir": str(tmp_path)})
    store = Store(cfg.data_dir, map_size=1 << 24)
    try:
        runner = Runner(cfg, store)
        started: list[bytes] = []

        async def fake_attempt(qid: bytes, rec: dict, location: bytes | None = None) -> None:
            started.append(qid)  # and stays in flight

        runner.attempt = fake_attempt  # type: ignore[method-assign]

        async def scan() -> list[bytes]:
            started.clear()
            runner.scan()
            await asyncio.sleep(0)
            return list(started)

        now = time.time()
        first = [_queued(store) for _ in range(5)]
        assert sorted(asyncio.run(scan())) == sorted(first)  # a full scan
        late = _queued(store)
        _reschedule(store, late, now - 1.0)  # committed after the scan, stamped before its end: within the margin
        old = _queued(store)
        _reschedule(store, old, now - 60.0)  # far behind: left to the next full scan
        assert asyncio.run(scan()) == [late]  # the in-flight five are not started again
        assert asyncio.run(scan()) == []
        runner.next_full = 0.0
        assert asyncio.run(scan()) == [old]
    finally:
        store.close()


def test_a_body_released_while_its_attempt_waited_is_not_sent(tmp_path):
    """An operator deletes an entry whose job waits for a session: its blob's range is punched out and
    reads as zeros — an unreadable body, never a message of NULs."""
    cfg = config.load(None, {"server.data_dir": str(tmp_path)})
    store = Store(cfg.data_dir, map_size=1 << 24)
    try:
        runner = Runner(cfg, store)
        qid = _queued(store)
        (entry,) = Q.due_entries(store, time.time() + 1, set()).entries
        assert entry.location is not None and runner._read_at(entry.location).startswith(b"Subject: x")
        store.queue_delete(qid.hex())
        if store.segments.read(entry.location)[:1] != b"\0":
            pytest.skip("this file system cannot punch holes")
        with pytest.raises(StoreError):
            runner._read_at(entry.location)
    finally:
        store.close()
