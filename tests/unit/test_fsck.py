"""fsck (fastmail.store.fsck) on a real store: each kind of damage is reported exactly, repaired, and a second
run is clean; every message that survives reads back byte-identical."""

from __future__ import annotations

import ctypes
import os
import random

import pytest

from fastmail.store import fsck
from fastmail.store import records as R
from fastmail.store.segments import LOCATION, Segments
from fastmail.store.store import Incoming, Store, new_qid


def _raw(i: int) -> bytes:
    rng = random.Random(i)
    body = "".join(f"line {n} {rng.getrandbits(64):x}\r\n" for n in range(500))  # ~12 KB: whole blocks inside
    return f"From: s{i}@remote.test\r\nSubject: m{i}\r\n\r\n{body}".encode()


@pytest.fixture
def built(tmp_path):
    """A store with messages for alice (some also for bob: shared blobs), one queued for a remote recipient,
    delivered in several batches, then closed (no live writer): (data dir, {(user, uid): raw})."""
    data = tmp_path / "data"
    s = Store(data, map_size=1 << 24)
    s.add_domain("example.org")
    alice = s.add_user("alice@example.org", "h")
    bob = s.add_user("bob@example.org", "h")
    i = 0
    for batch in range(4):
        items = []
        for _ in range(3):
            users = [alice, bob] if i % 3 == 0 else [alice]
            items.append(Incoming(qid=new_qid(), raw=_raw(i), sender="s@remote.test", local=users))
            i += 1
        if batch == 2:
            items.append(Incoming(qid=new_qid(), raw=_raw(100), sender="s@example.org", local=[],
                                  remote=[{"to": "x@remote.test", "rcpt": "x@remote.test"}]))
        s.commit_batch(items)
    s.close()
    return data


def _open(data) -> Store:
    return Store(data, map_size=1 << 24)


def _all_messages(s: Store) -> dict[tuple[int, int], bytes]:
    out = {}
    for user in s.list_users():
        mid = s.mailbox_id(user["id"], "INBOX")
        for m in s.list_messages(mid):
            out[mid, m["uid"]] = s.read_message(mid, m["uid"])
    return out


def _kinds(report: fsck.Report) -> list[str]:
    return sorted(p.kind for p in report.problems)


def _repair_and_recheck(s: Store, before: dict[tuple[int, int], bytes]) -> fsck.Report:
    report = fsck.repair(s)
    assert report.repaired and all(p.repaired for p in report.problems), report.as_dict()
    again = fsck.check(s)
    assert again.clean and not again.notes, again.as_dict()
    assert fsck.repair(s).clean  # idempotent
    after = _all_messages(s)
    for key, raw in after.items():
        assert before[key] == raw  # byte-identical
    return report


def _first_message(s: Store) -> tuple[int, int, bytes]:
    alice = s.get_user("alice@example.org")["id"]
    mid = s.mailbox_id(alice, "INBOX")
    msgs = s.list_messages(mid)
    m = [m for m in msgs if m["uid"] == 2][0]  # alice only, in the middle of the first segment
    return mid, m["uid"], m["blob"]


def test_healthy_store_is_clean(built):
    s = _open(built)
    report = fsck.check(s)
    assert report.clean and not report.notes, report.as_dict()
    assert fsck.repair(s).clean
    s.close()


def test_deleted_blob_record(built):
    s = _open(built)
    before = _all_messages(s)
    mid, uid, blob = _first_message(s)
    with s.write() as txn:
        txn.delete(blob, db=s.db["blobs"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.MISSING_BLOB, fsck.ORPHAN_RANGE], report.as_dict()
    assert report.problems[0].detail["uid"] == uid
    _repair_and_recheck(s, before)
    assert s.read_message(mid, uid) is None
    box = [b for b in s.list_mailboxes(s.get_user("alice@example.org")["id"]) if b["name"] == "INBOX"][0]
    assert box["exists"] == len(s.list_messages(mid)) == 11
    s.close()


def test_truncated_segment(built):
    s = _open(built)
    before = _all_messages(s)
    (seg_file,) = list((built / "segments").iterdir())
    size = seg_file.stat().st_size
    os.truncate(seg_file, size - 5000)  # the last message of the last batch loses its end
    report = fsck.check(s)
    assert _kinds(report) == [fsck.MISSING_BLOB], report.as_dict()
    assert report.problems[0].detail["why"] == "segment short"
    report = _repair_and_recheck(s, before)
    assert len(_all_messages(s)) == len(before) - 1
    s.close()


def test_punched_segment(built):
    s = _open(built)
    before = _all_messages(s)
    mid, uid, blob = _first_message(s)
    seg, off, length = LOCATION.unpack(s.blob_location(blob))
    fd = os.open(s.segments.path(seg), os.O_WRONLY)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    assert libc.fallocate(fd, 3, off, length) == 0  # PUNCH_HOLE | KEEP_SIZE
    os.close(fd)
    report = fsck.check(s)
    assert _kinds(report) == [fsck.MISSING_BLOB] and report.problems[0].detail["why"] == "hole in range"
    _repair_and_recheck(s, before)
    assert s.read_message(mid, uid) is None and len(_all_messages(s)) == len(before) - 1
    s.close()


def test_bumped_refcount(built):
    s = _open(built)
    before = _all_messages(s)
    _, _, blob = _first_message(s)
    with s.write() as txn:
        seg, off, length, refs = R.BLOB.unpack(txn.get(blob, db=s.db["blobs"]))
        txn.put(blob, R.BLOB.pack(seg, off, length, refs + 2), db=s.db["blobs"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.REFCOUNT] and report.problems[0].detail["found"] == refs
    _repair_and_recheck(s, before)
    with s.read() as txn:
        assert R.BLOB.unpack(txn.get(blob, db=s.db["blobs"]))[3] == refs
    assert _all_messages(s) == before
    s.close()


def test_zeroed_counters_and_usage(built):
    s = _open(built)
    before = _all_messages(s)
    alice = s.get_user("alice@example.org")["id"]
    mid = s.mailbox_id(alice, "INBOX")
    with s.write() as txn:
        rec = R.loads(txn.get(R.U64.pack(mid), db=s.db["mbox"]))
        want = rec["exists"], rec["unseen"], rec["size"], rec["uidnext"]
        rec.update(exists=0, unseen=0, size=0, uidnext=1)
        txn.put(R.U64.pack(mid), R.dumps(rec), db=s.db["mbox"])
        used = R.USAGE.unpack(txn.get(R.U64.pack(alice), db=s.db["usage"]))
        txn.put(R.U64.pack(alice), R.USAGE.pack(0, 0), db=s.db["usage"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.MAILBOX_COUNTERS, fsck.USAGE], report.as_dict()
    _repair_and_recheck(s, before)
    rec = [b for b in s.list_mailboxes(alice) if b["id"] == mid][0]
    assert (rec["exists"], rec["unseen"], rec["size"], rec["uidnext"]) == want
    assert s.quota_state(alice)[1] == used[0]
    assert _all_messages(s) == before
    s.close()


def test_orphan_range_between_batches(built):
    s = _open(built)
    s.segments.append_batch([b"x" * 20000])  # written, never committed (a failed LMDB commit)...
    s.commit_batch([Incoming(qid=new_qid(), raw=_raw(50), sender="", local=[s.get_user("bob@example.org")["id"]])])
    s.close()  # ...with a committed batch after it
    s = _open(built)
    before = _all_messages(s)
    report = fsck.check(s)
    assert _kinds(report) == [fsck.ORPHAN_RANGE] and report.problems[0].detail["length"] == 20000
    _repair_and_recheck(s, before)
    assert _all_messages(s) == before
    s.close()


def test_orphan_blob_record_and_broken_queue_entry(built):
    s = _open(built)
    before = _all_messages(s)
    (entry,) = s.queue_list()
    qid = bytes.fromhex(entry["id"])
    with s.write() as txn:  # the queue entry gone, its blob reference left behind
        txn.delete(qid, db=s.db["queue"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.ORPHAN_BLOB], report.as_dict()
    _repair_and_recheck(s, before)
    assert s.blob_location(qid) is None
    s.close()

    s = _open(built)
    with s.write() as txn:  # a queue entry whose blob is gone
        txn.put(qid, R.dumps(entry), db=s.db["queue"])
        txn.put(R.SCHEDULE_KEY.pack(0, qid), b"", db=s.db["schedule"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.QUEUE_MISSING_BLOB] and report.problems[0].detail["sender"] == "s@example.org"
    _repair_and_recheck(s, before)
    assert s.queue_list() == []
    with s.read() as txn:
        assert list(txn.cursor(db=s.db["schedule"]).iternext(values=False)) == []
    s.close()


def test_stale_segment_file_and_live_writer(built):
    stale = built / "segments" / f"{0x1234:016x}.seg"
    stale.write_bytes(b"garbage" * 1000)
    s = _open(built)
    before = _all_messages(s)
    # a live writer's segment (this Store holds its lock) is never judged by its tail or emptiness
    writer = Segments(built / "segments")  # another process's writer, as far as locks go
    writer.append_batch([b"in flight, not committed yet"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.DEAD_SEGMENT] and report.problems[0].detail["segment"] == f"{0x1234:016x}"
    _repair_and_recheck(s, before)
    assert not stale.exists()
    assert os.path.exists(writer.path(writer._seg))
    seg = writer._seg
    writer.close()  # gone without ever committing into its segment: now a dead one
    report = fsck.check(s)
    assert _kinds(report) == [fsck.DEAD_SEGMENT] and report.problems[0].detail["segment"] == f"{seg:016x}"
    _repair_and_recheck(s, before)
    s.close()


def test_torn_tail_is_no_problem_and_repair_truncates_it(built):
    s = _open(built)
    s.commit_batch([Incoming(qid=new_qid(), raw=_raw(7), sender="", local=[s.get_user("bob@example.org")["id"]])])
    segs = s.segments
    segs.append_batch([b"torn " * 1000])  # appended, the process "died" before its commit
    segs._fd, fd = -1, segs._fd
    os.close(fd)  # no clean close: the runway zeros stay too (and the writer's lock goes, as at a kill)
    before = _all_messages(s)
    report = fsck.check(s)
    assert report.clean and [n.kind for n in report.notes] == [fsck.TORN_TAIL]
    report = fsck.repair(s)
    assert report.clean and report.notes[0].repaired
    assert not fsck.check(s).notes
    assert _all_messages(s) == before
    s.close()


def test_disk_full_batch_is_cut_and_retried(tmp_path, monkeypatch):
    """ENOSPC while writing a batch: the segment is cut back and kept, nothing is referenced, and the next
    batch (space back) lands where the failed one began; the failed bytes are no garbage for fsck."""
    import errno

    from fastmail.store import segments as S
    from fastmail.store.store import storage_full

    s = Store(tmp_path / "d", map_size=1 << 24)
    s.add_domain("example.org")
    u = s.add_user("a@example.org", "h")
    s.commit_batch([Incoming(qid=new_qid(), raw=_raw(1), sender="", local=[u])])
    seg, size = s.segments._seg, s.segments._size
    real = os.pwrite
    calls = []

    def full(fd, data, off):
        calls.append(off)
        n = real(fd, bytes(data)[:100], off)  # a short write, then the disk is full
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return n

    monkeypatch.setattr(S.os, "pwrite", full)
    with pytest.raises(OSError) as exc:
        s.commit_batch([Incoming(qid=new_qid(), raw=_raw(2) * 400, sender="", local=[u])])
    assert storage_full(exc.value)
    monkeypatch.setattr(S.os, "pwrite", real)
    assert s.segments._seg == seg and s.segments._size == size
    s.commit_batch([Incoming(qid=new_qid(), raw=_raw(3), sender="", local=[u])])
    mid = s.mailbox_id(u, "INBOX")
    assert [s.read_message(mid, m["uid"]) for m in s.list_messages(mid)] == [_raw(1), _raw(3)]
    assert LOCATION.unpack(s.blob_location(s.list_messages(mid)[1]["blob"]))[:2] == (seg, size)
    s.close()
    s = Store(tmp_path / "d", map_size=1 << 24)
    assert fsck.check(s).clean
    s.close()


def test_failed_lmdb_commit_gives_the_space_back(tmp_path, monkeypatch):
    """The LMDB commit fails (disk full) after the bodies were written: the next batch reuses their space."""
    import lmdb

    s = Store(tmp_path / "d", map_size=1 << 24)
    s.add_domain("example.org")
    u = s.add_user("a@example.org", "h")
    s.commit_batch([Incoming(qid=new_qid(), raw=_raw(1), sender="", local=[u])])
    size = s.segments._size

    def op_fails(fn, *args):
        raise lmdb.DiskError("mdb_txn_commit: No space left on device", 28)

    monkeypatch.setattr(s, "_writing", op_fails)
    with pytest.raises(lmdb.DiskError):
        s.commit_batch([Incoming(qid=new_qid(), raw=_raw(2), sender="", local=[u])])
    assert s.segments._size == size
    monkeypatch.undo()
    s.commit_batch([Incoming(qid=new_qid(), raw=_raw(3), sender="", local=[u])])
    s.close()
    s = Store(tmp_path / "d", map_size=1 << 24)
    assert fsck.check(s).clean
    s.close()


def test_expunged_neighbours_free_the_block_where_they_meet(built):
    """Messages of one batch expunged together are punched as one range: no zeroed block is left where two
    of them met (Segments.release_all), and fsck stays clean."""
    from fastmail.store.mailboxes import Mailboxes

    s = _open(built)
    boxes = Mailboxes(s)
    mid = s.mailbox_id(s.get_user("alice@example.org")["id"], "INBOX")
    victims = [m for m in s.list_messages(mid) if m["uid"] in (5, 6)]  # one batch, next to each other, alice's only
    locs = [LOCATION.unpack(s.blob_location(m["blob"])) for m in victims]
    assert locs[0][0] == locs[1][0] and locs[0][1] + locs[0][2] == locs[1][1]
    boxes.store_flags(mid, [5, 6], "+", ["\\Deleted"])
    assert boxes.expunge(mid) == [5, 6]
    seg, start, end = locs[0][0], locs[0][1], locs[1][1] + locs[1][2]
    fd = os.open(s.segments.path(seg), os.O_RDONLY)
    try:
        block = os.fstat(fd).st_blksize
        lo, hi = -(-start // block) * block, end // block * block
        try:
            assert os.lseek(fd, lo, os.SEEK_DATA) >= hi
        except OSError:
            pass  # ENXIO: nothing but holes after lo
    finally:
        os.close(fd)
    assert fsck.check(s).clean
    s.close()
