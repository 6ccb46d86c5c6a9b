"""The LMDB index + segments: accounts, resolution, batched durable delivery, queue, map growth."""

from __future__ import annotations

import os

import pytest

from fastmail.store import records as R
from fastmail.store import segments
from fastmail.store.segments import RUNWAY, Segments
from fastmail.store.store import Incoming, Store, StoreError, new_qid


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data", map_size=1 << 24)
    s.add_domain("example.org")
    yield s
    s.close()


def _incoming(raw: bytes, users: list[int], remote=None, **kw) -> Incoming:
    return Incoming(qid=new_qid(), raw=raw, sender="s@remote.test", local=users, remote=remote or [], **kw)


def test_user_gets_default_folders_with_special_use(store):
    uid = store.add_user("Alice@Example.org", "hash")
    boxes = {b["name"]: b for b in store.list_mailboxes(uid)}
    assert set(boxes) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert boxes["Sent"]["special"] == "\\Sent" and boxes["INBOX"]["special"] is None
    assert boxes["INBOX"]["uidnext"] == 1 and boxes["INBOX"]["uidvalidity"] > 0
    assert store.get_user("alice@example.org")["id"] == uid


def test_account_errors(store):
    store.add_user("a@example.org", "h")
    with pytest.raises(StoreError):
        store.add_user("a@example.org", "h")
    with pytest.raises(StoreError):
        store.add_user("b@elsewhere.test", "h")
    with pytest.raises(StoreError):
        store.add_domain("example.org")
    with pytest.raises(StoreError):
        store.add_domain("bad..domain")
    with pytest.raises(StoreError):
        store.del_domain("example.org")  # still has users
    with pytest.raises(StoreError):
        store.del_user("nobody@example.org")


def test_resolution_aliases_plus_catchall(store):
    a = store.add_user("a@example.org", "h")
    b = store.add_user("b@example.org", "h")
    store.add_alias("team@example.org", ["a@example.org", "b@example.org", "x@remote.test"])
    store.add_alias("nested@example.org", ["team@example.org"])
    assert store.resolve("a@example.org") == ([a], [])
    assert store.resolve("A+news@Example.org") == ([a], [])
    assert store.resolve("team@example.org") == ([a, b], ["x@remote.test"])
    assert store.resolve("nested@example.org") == ([a, b], ["x@remote.test"])
    assert store.resolve("nobody@example.org") is None
    assert store.resolve("a@remote.test") is None
    # relay tricks never resolve to anything local
    for trick in ("a%remote.test@example.org", "remote.test!a@example.org", "a@remote.test@example.org"):
        assert store.resolve(trick) is None
    store.add_alias("@example.org", ["b@example.org"])
    assert store.resolve("nobody@example.org") == ([b], [])
    assert store.resolve("nobody@example.org", catch_all=False) is None


def test_alias_loop_terminates(store):
    store.add_alias("x@example.org", ["y@example.org"])
    store.add_alias("y@example.org", ["x@example.org"])
    assert store.resolve("x@example.org") is None


def test_commit_batch_stores_once_for_many_recipients(store):
    users = [store.add_user(f"u{i}@example.org", "h") for i in range(5)]
    raw = b"Subject: hi\r\n\r\nbody\r\n"
    item = _incoming(raw, users)
    (outcome,) = store.commit_batch([item])
    assert outcome.over_quota == [] and sorted(outcome.uids) == sorted(users)
    with store.read() as txn:
        blob = txn.get(item.qid, db=store.db["blobs"])
    assert R.BLOB.unpack(blob)[3] == 5  # one blob, five references
    for u in users:
        mid = store.mailbox_id(u, "INBOX")
        assert store.read_message(mid, 1) == raw
        box = [b for b in store.list_mailboxes(u) if b["name"] == "INBOX"][0]
        assert (box["exists"], box["unseen"], box["uidnext"], box["size"]) == (1, 1, 2, len(raw))
    segs = os.listdir(store.dir / "segments")
    assert len(segs) == 1
    seg = store.dir / "segments" / segs[0]
    assert os.path.getsize(seg) == RUNWAY  # created zero-filled; the message overwrote its start
    store.segments.close()
    assert os.path.getsize(seg) == len(raw)  # and cut off when it is closed


def test_uids_ascend_and_modseq_grows(store):
    u = store.add_user("a@example.org", "h")
    batch = [_incoming(f"n: {i}\r\n\r\n".encode(), [u]) for i in range(10)]
    outcomes = store.commit_batch(batch)
    assert [o.uids[u] for o in outcomes] == list(range(1, 11))
    msgs = store.list_messages(store.mailbox_id(u, "INBOX"))
    assert [m["uid"] for m in msgs] == list(range(1, 11))
    assert [m["modseq"] for m in msgs] == sorted(m["modseq"] for m in msgs)
    assert len({m["modseq"] for m in msgs}) == 10


def test_quota_refuses_and_queues_bounce(store):
    a = store.add_user("a@example.org", "h", quota=100)
    b = store.add_user("b@example.org", "h")
    raw = b"x" * 150
    (o1,) = store.commit_batch([_incoming(raw, [a, b], bounce_over_quota=True)])
    assert o1.over_quota == [a]
    queued = store.queue_list()
    assert len(queued) == 1 and queued[0]["rcpts"][0]["state"] == "failed"
    assert queued[0]["rcpts"][0]["to"] == "a@example.org"
    # all recipients over quota: nothing stored, no bounce entry (the client gets 552 instead)
    (o2,) = store.commit_batch([_incoming(raw, [a], bounce_over_quota=True)])
    assert o2.over_quota == [a] and len(store.queue_list()) == 1
    assert store.quota_state(a) == (100, 0)


def test_remote_recipients_queue_and_delete_releases(store):
    raw = b"Subject: out\r\n\r\nhello\r\n"
    item = _incoming(raw, [], remote=[{"to": "x@remote.test", "rcpt": "x@remote.test", "notify": None, "orcpt": None}])
    store.commit_batch([item])
    (entry,) = store.queue_list()
    assert entry["id"] == item.qid.hex() and entry["rcpts"][0]["state"] == "queued"
    assert store.read_blob(item.qid) == raw
    store.queue_delete(entry["id"])
    assert store.queue_list() == [] and store.blob_location(item.qid) is None
    with store.read() as txn:
        assert txn.stat(store.db["schedule"])["entries"] == 0


def test_del_user_drops_messages_and_blobs(store):
    a = store.add_user("a@example.org", "h")
    item = _incoming(b"m\r\n", [a])
    store.commit_batch([item])
    store.del_user("a@example.org")
    assert store.get_user("a@example.org") is None and store.blob_location(item.qid) is None
    assert store.list_mailboxes(a) == []


def test_del_user_leaves_no_records_of_the_user(store):
    """Nothing of a deleted user stays in any database: name markers (a \\Noselect parent, a subscription of
    a name that does not exist), expunge records, change history."""
    from fastmail.store.mailboxes import Mailboxes

    a = store.add_user("a@example.org", "h")
    b = store.add_user("b@example.org", "h")
    boxes = Mailboxes(store)
    for user in (a, b):
        boxes.create(user, "Parent/Child")
        boxes.delete(user, "Parent")  # has a child: stays as a \\Noselect name (a marker)
        boxes.set_subscribed(user, "Later", True)  # a subscription of a name that is no mailbox
        store.commit_batch([_incoming(b"one\r\n", [user]), _incoming(b"two\r\n", [user])])
        inbox = boxes.get(user, "INBOX")["id"]
        boxes.expunge(inbox, [1])  # an expunge record and a change
    with store.read() as txn:
        before = {name: txn.stat(store.db[name])["entries"] for name in ("meta", "expunged", "modseqs")}
    store.del_user("a@example.org")
    with store.read() as txn:
        after = {name: txn.stat(store.db[name])["entries"] for name in ("meta", "expunged", "modseqs")}
        meta_keys = [k for k, _ in txn.cursor(db=store.db["meta"])]
    assert not [k for k in meta_keys if k.startswith(R.NAME_MARK + R.U64.pack(a))]
    assert [k for k in meta_keys if k.startswith(R.NAME_MARK + R.U64.pack(b))]  # b's are kept
    assert after["meta"] == before["meta"] - 2 and after["expunged"] == before["expunged"] / 2
    assert after["modseqs"] < before["modseqs"] and after["modseqs"] > 0  # b's history stays
    assert {"INBOX", "Parent/Child"} <= {m["name"] for m in boxes.list_all(b)}


def test_map_grows_when_full(tmp_path):
    s = Store(tmp_path / "d", map_size=1 << 20)  # 1 MiB: fills up quickly
    s.add_domain("example.org")
    u = s.add_user("a@example.org", "h")
    big_meta = {"v": 1, "pad": "x" * 50_000}
    for _ in range(40):
        s.commit_batch([Incoming(qid=new_qid(), raw=b"m\r\n", sender="", local=[u], meta=big_meta)])
    assert s.env.info()["map_size"] > 1 << 20
    assert len(s.list_messages(s.mailbox_id(u, "INBOX"))) == 40
    s.close()


def test_reopen_sees_committed_data(tmp_path):
    s = Store(tmp_path / "d", map_size=1 << 24)
    s.add_domain("example.org")
    u = s.add_user("a@example.org", "h")
    item = _incoming(b"persist\r\n", [u])
    s.commit_batch([item])
    s.close()
    s2 = Store(tmp_path / "d", map_size=1 << 24)
    assert s2.read_message(s2.mailbox_id(u, "INBOX"), 1) == b"persist\r\n"
    # a new process (or reopen) appends to a fresh segment, never after another's tail
    s2.commit_batch([_incoming(b"second\r\n", [u])])
    assert len(os.listdir(tmp_path / "d" / "segments")) == 2
    s2.close()


def test_segment_runway_stays_ahead_and_blobs_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(segments, "RUNWAY", 64 * 1024)
    segs = Segments(tmp_path / "s")
    bodies = [os.urandom(n) for n in (1, 5000, 17000, 3, 40000, 70000, 100, 9000)]
    locs = []
    for body in bodies:
        locs += segs.append_batch([body, body[::-1]])
        path = segs.path(segs._seg)
        used = sum(len(b) * 2 for b in bodies[:len(locs) // 2])
        # zeros beyond the used end, refilled before less than a quarter of the runway is left
        assert segments.RUNWAY // 4 <= os.path.getsize(path) - used <= segments.RUNWAY
    reread = [segs.read(loc) for loc in locs]
    assert reread == [x for b in bodies for x in (b, b[::-1])]
    segs.close()
    assert os.path.getsize(path) == sum(len(b) * 2 for b in bodies)


def test_segment_closed_in_a_forked_child_keeps_the_parents_tail(tmp_path):
    segs = Segments(tmp_path / "s")
    (loc,) = segs.append_batch([b"parent"])
    path = segs.path(segs._seg)
    size = os.path.getsize(path)
    pid = os.fork()
    if pid == 0:  # the child writes its own segment; closing must not cut the parent's file
        try:
            segs.append_batch([b"child"])
            segs.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.path.getsize(path) == size and len(os.listdir(tmp_path / "s")) == 2
    assert segs.append_batch([b"again"]) and segs.read(loc) == b"parent"
    segs.close()


def test_map_grown_by_another_process_is_adopted(tmp_path):
    import subprocess
    import sys

    s = Store(tmp_path / "d", map_size=1 << 20)
    s.add_domain("example.org")
    u = s.add_user("a@example.org", "h")
    s.commit_batch([_incoming(b"one\r\n", [u])])
    grow = f"""
from fastmail.store.store import Incoming, Store, new_qid
s = Store({str(tmp_path / "d")!r}, map_size=1 << 20)
for _ in range(40):
    s.commit_batch([Incoming(qid=new_qid(), raw=b"m\\r\\n", sender="", local=[{u}], meta={{"pad": "x" * 50000}})])
print(s.env.info()["map_size"])
"""
    res = subprocess.run([sys.executable, "-c", grow], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) > 1 << 20
    s.commit_batch([_incoming(b"two\r\n", [u], meta={"pad": "y" * 50000})])
    assert len(s.list_messages(s.mailbox_id(u, "INBOX"))) == 42
    s.close()
