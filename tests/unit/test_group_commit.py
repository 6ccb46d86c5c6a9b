"""Group commit (fastmail.server.commit.Committer over a real Store): messages handed in together are made
durable together -- one segment append (one fdatasync) and one synced LMDB commit per batch -- and every
session gets its own outcome; each message is stored and reads back, also after the store is reopened.

Commits are counted three ways: the calls of Store.commit_batch, the calls of Segments.append_batch, and
LMDB's own transaction id (env.info()["last_txnid"] grows by one per committed write transaction)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import uvloop

from fastmail.server.commit import Committer
from fastmail.store import segments as segments_mod
from fastmail.store.store import Incoming, Store, new_qid

N = 24


def _run(loop_kind: str, coro):
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory, debug=True) as runner:
        return runner.run(coro)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request) -> str:
    return request.param


class Counted:
    """A store with counters around its commits."""

    def __init__(self, tmp_path, monkeypatch) -> None:
        self.store = Store(tmp_path / "data", map_size=1 << 24)
        self.store.add_domain("example.org")
        self.alice = self.store.add_user("alice@example.org", "h")
        self.bob = self.store.add_user("bob@example.org", "h")
        self.batches: list[int] = []  # size of each commit_batch call
        self.appends: list[int] = []  # bodies per Segments.append_batch call
        self.fdatasyncs = 0
        self.gate: threading.Event | None = None  # when set: the first batch waits for it (in the thread)
        self.first_started = threading.Event()

        real_commit = self.store.commit_batch
        real_append = self.store.segments.append_batch
        real_fdatasync = os.fdatasync

        def commit_batch(batch):
            self.batches.append(len(batch))
            if len(self.batches) == 1 and self.gate is not None:
                self.first_started.set()
                assert self.gate.wait(30)
            return real_commit(batch)

        def append_batch(bodies):
            self.appends.append(len(bodies))
            return real_append(bodies)

        def fdatasync(fd):
            self.fdatasyncs += 1
            return real_fdatasync(fd)

        monkeypatch.setattr(self.store, "commit_batch", commit_batch)
        monkeypatch.setattr(self.store.segments, "append_batch", append_batch)
        monkeypatch.setattr(segments_mod.os, "fdatasync", fdatasync)
        self.txnid0 = self.lmdb_txnid()

    def lmdb_txnid(self) -> int:
        return int(self.store.env.info()["last_txnid"])


@pytest.fixture
def counted(tmp_path, monkeypatch):
    c = Counted(tmp_path, monkeypatch)
    yield c
    c.store.close()


def _messages(n: int) -> list[bytes]:
    return [
        (f"From: s{i}@remote.test\r\nTo: alice@example.org\r\nSubject: message {i}\r\n"
         f"Message-ID: <{i}@remote.test>\r\n\r\nbody of message {i}\r\n" + "x" * (i * 37) + "\r\n").encode()
        for i in range(n)
    ]


def _incoming(raw: bytes, users: list[int]) -> Incoming:
    return Incoming(qid=new_qid(), raw=raw, sender="s@remote.test", local=users)


def _check_stored(store: Store, user: int, items: list[Incoming], outcomes) -> None:
    """Every message is in the user's INBOX once, under the uid its session was told, with its bytes."""
    inbox = store.mailbox_id(user, "INBOX")
    uids = [o.uids[user] for o in outcomes]
    assert sorted(uids) == list(range(1, len(items) + 1))
    for item, uid in zip(items, uids, strict=True):
        assert store.read_message(inbox, uid) == item.raw
        assert store.message_meta(item.qid)["envelope"][1].startswith("message ")  # the index entry too
    box = next(b for b in store.list_mailboxes(user) if b["name"] == "INBOX")
    assert (box["exists"], box["uidnext"]) == (len(items), len(items) + 1)


def test_concurrent_sessions_share_one_commit(counted, loop_kind):
    """N sessions hand in their messages in the same loop turn: the committer stores them as one batch."""
    items = [_incoming(raw, [counted.alice]) for raw in _messages(N)]

    async def main():
        committer = Committer(counted.store)
        outcomes = await asyncio.gather(*(committer.commit(item) for item in items))
        return committer, outcomes

    committer, outcomes = _run(loop_kind, main())
    assert counted.batches == [N] and counted.appends == [N]
    assert counted.lmdb_txnid() - counted.txnid0 == 1  # one LMDB write transaction for N messages
    assert counted.fdatasyncs < N
    assert (committer.batches, committer.messages, committer.largest_batch) == (1, N, N)
    _check_stored(counted.store, counted.alice, items, outcomes)


def test_arrivals_during_a_commit_form_the_next_batch(counted, loop_kind):
    """While one batch is being made durable, the sessions that finish their DATA queue up; they are all
    stored by the next commit, not one commit each."""
    counted.gate = threading.Event()
    items = [_incoming(raw, [counted.alice, counted.bob]) for raw in _messages(N)]

    async def main():
        loop = asyncio.get_running_loop()
        committer = Committer(counted.store)
        first = loop.create_task(committer.commit(items[0]))
        assert await loop.run_in_executor(None, counted.first_started.wait, 30)  # batch 1 is in its thread
        rest = [loop.create_task(committer.commit(item)) for item in items[1:]]
        for _ in range(3):
            await asyncio.sleep(0)  # every session has queued its message
        assert not first.done() and not any(t.done() for t in rest)
        counted.gate.set()
        return committer, await asyncio.gather(first, *rest)

    committer, outcomes = _run(loop_kind, main())
    assert counted.batches == [1, N - 1] and counted.appends == [1, N - 1]
    assert counted.lmdb_txnid() - counted.txnid0 == 2
    assert counted.fdatasyncs < N
    assert (committer.batches, committer.messages, committer.largest_batch) == (2, N, N - 1)
    for user in (counted.alice, counted.bob):
        _check_stored(counted.store, user, items, outcomes)
    # each message is stored once for its two recipients (one blob, two references)
    assert len(os.listdir(counted.store.dir / "segments")) == 1

    # durable and readable by a fresh opening of the store (what another process would see)
    path = counted.store.dir
    counted.store.close()
    counted.store = Store(path, map_size=1 << 24)
    _check_stored(counted.store, counted.alice, items, outcomes)


def test_a_failed_batch_fails_its_sessions_and_the_next_batch_goes_on(counted, loop_kind):
    """A batch that cannot be made durable raises in every waiting session (they answer 451); the committer
    keeps going with what arrives next."""
    items = [_incoming(raw, [counted.alice]) for raw in _messages(6)]
    real = counted.store.segments.append_batch
    calls = []

    def flaky(bodies):
        calls.append(len(bodies))
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(bodies)

    counted.store.segments.append_batch = flaky

    async def main():
        committer = Committer(counted.store)
        failed = await asyncio.gather(*(committer.commit(i) for i in items[:3]), return_exceptions=True)
        done = await asyncio.gather(*(committer.commit(i) for i in items[3:]))
        return committer, failed, done

    committer, failed, done = _run(loop_kind, main())
    assert calls == [3, 3]
    assert all(isinstance(e, OSError) and e.errno == 28 for e in failed)
    assert (committer.batches, committer.messages) == (1, 3)  # only the stored batch counts
    inbox = counted.store.mailbox_id(counted.alice, "INBOX")
    assert [m["uid"] for m in counted.store.list_messages(inbox)] == [1, 2, 3]
    for item, outcome in zip(items[3:], done, strict=True):
        assert counted.store.read_message(inbox, outcome.uids[counted.alice]) == item.raw
