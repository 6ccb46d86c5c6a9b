"""fsck (fastmail.store.fsck) on a real store: each kind of damage is reported exactly, repaired, and a second
run is clean; every message that survives reads back byte-identical."""

from __future__ import annotations

import ctypes
import os
import random

import pytest

from fastmail.store import changes, fsck
from fastmail.store import records as R
from fastmail.store.mailboxes import Mailboxes
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
    with s.write() as txn:  # the queue entry gone, its blob reference and its schedule key left behind
        txn.delete(qid, db=s.db["queue"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.ORPHAN_BLOB, fsck.QUEUE_SCHEDULE], report.as_dict()
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


# -- the secondary indexes (issue #8): each corrupted on purpose ------------------------------------------


def _alice_inbox(s: Store) -> tuple[int, list[dict]]:
    mid = s.mailbox_id(s.get_user("alice@example.org")["id"], "INBOX")
    return mid, s.list_messages(mid)


def _expunge(s: Store, mid: int, uid: int) -> None:
    from fastmail.store.mailboxes import Mailboxes

    boxes = Mailboxes(s)
    boxes.store_flags(mid, [uid], "+", ["\\Deleted"])
    assert boxes.expunge(mid) == [uid]


def test_orphan_message_record(built):
    """A message record of a mailbox that does not exist (its blob counted in the refcount): removed, the
    blob's count goes back to the references that are left, its bytes stay for the others."""
    s = _open(built)
    before = _all_messages(s)
    _, msgs = _alice_inbox(s)
    m = msgs[0]  # alice and bob share it
    with s.write() as txn:
        seg, off, length, refs = R.BLOB.unpack(txn.get(m["blob"], db=s.db["blobs"]))
        txn.put(m["blob"], R.BLOB.pack(seg, off, length, refs + 1), db=s.db["blobs"])
        txn.put(R.msg_key(999, 7), R.message_record(m["blob"], m["size"], 0, [], 3), db=s.db["msgs"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.ORPHAN_MESSAGE], report.as_dict()
    assert (report.problems[0].detail["mailbox"], report.problems[0].detail["uid"]) == (999, 7)
    _repair_and_recheck(s, before)
    with s.read() as txn:
        assert txn.get(R.msg_key(999, 7), db=s.db["msgs"]) is None
        assert R.BLOB.unpack(txn.get(m["blob"], db=s.db["blobs"]))[3] == refs
    assert _all_messages(s) == before
    s.close()


def test_orphan_message_with_wrong_refcount_and_the_only_reference(built):
    """An orphan message that is a blob's only reference, the count not counting it: the blob goes too."""
    s = _open(built)
    before = _all_messages(s)
    mid, msgs = _alice_inbox(s)
    m = [m for m in msgs if m["uid"] == 2][0]  # alice only
    with s.write() as txn:  # the message moved under a mailbox id that does not exist
        txn.delete(R.msg_key(mid, 2), db=s.db["msgs"])
        txn.put(R.msg_key(998, 2), R.message_record(m["blob"], m["size"], 0, [], m["modseq"]), db=s.db["msgs"])
        txn.delete(R.MODSEQ_KEY.pack(mid, m["modseq"], 2), db=s.db["modseqs"])
        rec = R.loads(txn.get(R.U64.pack(mid), db=s.db["mbox"]))
        rec.update(exists=rec["exists"] - 1, unseen=rec["unseen"] - 1, size=rec["size"] - m["size"])
        txn.put(R.U64.pack(mid), R.dumps(rec), db=s.db["mbox"])
        a = s.get_user("alice@example.org")["id"]
        used, n = R.USAGE.unpack(txn.get(R.U64.pack(a), db=s.db["usage"]))
        txn.put(R.U64.pack(a), R.USAGE.pack(used - m["size"], n - 1), db=s.db["usage"])
    del before[mid, 2]
    report = fsck.check(s)
    assert _kinds(report) == [fsck.ORPHAN_MESSAGE], report.as_dict()
    _repair_and_recheck(s, before)
    assert s.blob_location(m["blob"]) is None  # dropped, its range punched (the recheck is clean)
    s.close()


def test_mailbox_name_index(built):
    """Name index entries: one lost (the mailbox unreachable by name), one naming a mailbox that does not
    exist, one naming the wrong mailbox (Sent's name pointing at INBOX): each set from the records."""
    s = _open(built)
    before = _all_messages(s)
    alice = s.get_user("alice@example.org")["id"]
    bob = s.get_user("bob@example.org")["id"]
    a_inbox, sent = s.mailbox_id(alice, "INBOX"), s.mailbox_id(bob, "Sent")
    b_inbox = s.mailbox_id(bob, "INBOX")
    with s.write() as txn:
        txn.delete(R.mailbox_key(alice, "INBOX"), db=s.db["mailboxes"])
        txn.put(R.mailbox_key(alice, "Ghost"), R.U64.pack(4242), db=s.db["mailboxes"])
        txn.put(R.mailbox_key(bob, "Sent"), R.U64.pack(b_inbox), db=s.db["mailboxes"])
    assert s.mailbox_id(alice, "INBOX") is None
    report = fsck.check(s)
    assert _kinds(report) == [fsck.MAILBOX_NAME] * 4, report.as_dict()
    assert {(p.detail["mailbox"], p.detail["why"]) for p in report.problems} == {
        (a_inbox, "not in the name index"), (4242, "no mailbox record"),
        (b_inbox, "names another user or name"), (sent, "not in the name index")}
    _repair_and_recheck(s, before)
    assert s.mailbox_id(alice, "INBOX") == a_inbox and s.mailbox_id(bob, "Sent") == sent
    assert s.mailbox_id(alice, "Ghost") is None
    assert _all_messages(s) == before
    s.close()


def test_mailbox_name_taken_by_another_keeps_both(built):
    """A mailbox whose name index entry now names another mailbox of the same name (two records say
    "Trash"): the unnamed one is kept under a name of its own, never dropped."""
    s = _open(built)
    alice = s.get_user("alice@example.org")["id"]
    trash, junk = s.mailbox_id(alice, "Trash"), s.mailbox_id(alice, "Junk")
    with s.write() as txn:
        rec = R.loads(txn.get(R.U64.pack(junk), db=s.db["mbox"]))
        rec["name"] = "Trash"
        txn.put(R.U64.pack(junk), R.dumps(rec), db=s.db["mbox"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.MAILBOX_NAME] * 2, report.as_dict()  # Junk's key stale; Junk unnamed
    fsck.repair(s)
    assert fsck.check(s).clean
    assert s.mailbox_id(alice, "Trash") == trash and s.mailbox_id(alice, f"Trash.fsck-{junk}") == junk
    s.close()


def test_modseq_index_missing_stale_and_of_no_mailbox(built):
    from fastmail.store import changes

    s = _open(built)
    before = _all_messages(s)
    mid, msgs = _alice_inbox(s)
    m = msgs[3]
    with s.write() as txn:
        assert txn.delete(R.MODSEQ_KEY.pack(mid, m["modseq"], m["uid"]), db=s.db["modseqs"])
        txn.put(R.MODSEQ_KEY.pack(mid, 1, msgs[4]["uid"]), b"", db=s.db["modseqs"])  # an old one left
        txn.put(R.MODSEQ_KEY.pack(777, 5, 1), b"", db=s.db["modseqs"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.MODSEQ_INDEX] * 3, report.as_dict()
    assert sorted(p.detail["why"] for p in report.problems) == ["missing", "no mailbox", "stale"]
    _repair_and_recheck(s, before)
    with s.read() as txn:
        since = changes.since(txn, s.db, mid, 0)
    assert sorted(uid for uid, _ in since) == sorted(x["uid"] for x in msgs)  # each once, none expunged
    assert not any(gone for _, gone in since)
    s.close()


def test_expunged_index_against_the_modseq_index(built):
    """An expunge leaves an `expunged` record and a `modseqs` expunge entry at one mod-sequence: either
    lost is written back from the other; an expunged record of a live UID, or of no mailbox, is dropped;
    an expunged UID at or above uidnext raises uidnext (a UID is never given twice)."""
    from fastmail.store import changes
    from fastmail.store.mailboxes import Mailboxes

    s = _open(built)
    mid, msgs = _alice_inbox(s)
    _expunge(s, mid, 4)
    _expunge(s, mid, 5)
    assert fsck.check(s).clean
    before = _all_messages(s)
    boxes = Mailboxes(s)
    with s.read() as txn:
        gone4 = R.U64.unpack(txn.get(R.msg_key(mid, 4), db=s.db["expunged"]))[0]
        gone5 = R.U64.unpack(txn.get(R.msg_key(mid, 5), db=s.db["expunged"]))[0]
        uidnext = R.loads(txn.get(R.U64.pack(mid), db=s.db["mbox"]))["uidnext"]
    with s.write() as txn:
        txn.delete(R.msg_key(mid, 4), db=s.db["expunged"])  # the record lost: the entry has it
        assert txn.delete(R.MODSEQ_KEY.pack(mid, gone5, 5), db=s.db["modseqs"])  # the entry lost
        txn.put(R.msg_key(mid, 6), R.U64.pack(gone5), db=s.db["expunged"])  # uid 6 is live
        txn.put(R.msg_key(555, 1), R.U64.pack(9), db=s.db["expunged"])
        txn.put(R.msg_key(mid, uidnext + 3), R.U64.pack(gone5), db=s.db["expunged"])  # beyond uidnext
    assert boxes.expunged_since(mid, 0) == [4]  # read from the modseqs index: only 4 has its entry there
    report = fsck.check(s)
    assert _kinds(report) == sorted([fsck.EXPUNGED_INDEX] * 3 + [fsck.MODSEQ_INDEX] * 2
                                    + [fsck.MAILBOX_COUNTERS]), report.as_dict()
    whys = sorted(p.detail["why"] for p in report.problems if "why" in p.detail)
    assert whys == ["missing expunge", "missing expunge", "no expunged record", "no mailbox", "uid in use"]
    counters = [p for p in report.problems if p.kind == fsck.MAILBOX_COUNTERS][0]
    assert counters.detail["uidnext"] == f"{uidnext}->{uidnext + 4}"
    assert counters.detail["expunges"] == "2->3"  # 4, 5 and uidnext + 3 remembered after the repair
    _repair_and_recheck(s, before)
    assert boxes.expunged_since(mid, 0) == [4, 5, uidnext + 3]
    with s.read() as txn:
        assert R.U64.unpack(txn.get(R.msg_key(mid, 4), db=s.db["expunged"]))[0] == gone4
        assert [uid for uid, gone in changes.since(txn, s.db, mid, 0) if gone] == [4, 5, uidnext + 3]
    assert boxes.by_id(mid)["uidnext"] == uidnext + 4
    assert _all_messages(s) == before
    s.close()


def test_orphan_meta_and_queue_schedule(built):
    """msgmeta/msgwire of no blob record; a queue entry that lost its schedule key (never attempted
    again), a stale key, a held entry with a key."""
    from fastmail.delivery import queue as Q

    s = _open(built)
    before = _all_messages(s)
    (entry,) = s.queue_list()
    qid = bytes.fromhex(entry["id"])
    key = Q.schedule_key(qid, entry["next_attempt"])
    with s.write() as txn:
        txn.put(b"\x01" * 12, R.dumps({"v": 1}), db=s.db["msgmeta"])
        txn.put(b"\x02" * 12, b"wire", db=s.db["msgwire"])
        assert txn.delete(key, db=s.db["schedule"])
        txn.put(Q.schedule_key(b"\x03" * 12, 5), b"", db=s.db["schedule"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.ORPHAN_META] * 2 + [fsck.QUEUE_SCHEDULE] * 2, report.as_dict()
    _repair_and_recheck(s, before)
    with s.read() as txn:
        assert list(txn.cursor(db=s.db["schedule"]).iternext(values=False)) == [key]
        assert txn.get(b"\x01" * 12, db=s.db["msgmeta"]) is None
    with s.write() as txn:  # held: no key
        txn.put(qid, R.dumps(dict(entry, held=True)), db=s.db["queue"])
    report = fsck.check(s)
    assert _kinds(report) == [fsck.QUEUE_SCHEDULE] and report.problems[0].detail["why"] == "stale key"
    _repair_and_recheck(s, before)
    s.close()


def test_deleting_a_user_leaves_no_index_entries(built):
    """`fastmail user del` drops the user's expunged records and modseqs entries with the mailboxes."""
    s = _open(built)
    alice = s.get_user("alice@example.org")["id"]
    mid = s.mailbox_id(alice, "INBOX")
    _expunge(s, mid, 2)
    s.del_user("alice@example.org")
    report = fsck.check(s)
    assert report.clean, report.as_dict()  # (a torn tail note: the released last blob of the segment)
    s.close()


def test_segment_whose_messages_were_all_released_is_no_problem(built):
    """Every message of a segment released (users deleted, the queue entry gone) after its writer left: only
    holes and zeros remain — an `empty-segment` note, unlinked on repair; one byte of data left in it makes
    it a `dead-segment` problem again."""
    s = _open(built)
    (entry,) = s.queue_list()
    s.queue_delete(entry["id"])
    s.del_user("alice@example.org")
    s.del_user("bob@example.org")
    s.close()
    (seg_file,) = list((built / "segments").iterdir())
    s = _open(built)
    report = fsck.check(s)
    assert report.clean and [n.kind for n in report.notes] == [fsck.EMPTY_SEGMENT], report.as_dict()
    with open(seg_file, "r+b") as f:  # a stray byte in it: no longer empty
        f.seek(100)
        f.write(b"x")
    report = fsck.check(s)
    assert _kinds(report) == [fsck.DEAD_SEGMENT] and not report.notes, report.as_dict()
    with open(seg_file, "r+b") as f:
        f.seek(100)
        f.write(b"\0")
    report = fsck.repair(s)
    assert report.clean and report.notes[0].repaired and not seg_file.exists()
    assert fsck.check(s).clean and not fsck.check(s).notes
    s.close()


def _mbox(s: Store, mid: int) -> dict:
    with s.read() as txn:
        return R.loads(txn.get(R.U64.pack(mid), db=s.db["mbox"]))


def _set_mbox(s: Store, mid: int, **fields) -> None:
    with s.write() as txn:
        rec = R.loads(txn.get(R.U64.pack(mid), db=s.db["mbox"]))
        rec.update(fields)
        txn.put(R.U64.pack(mid), R.dumps(rec), db=s.db["mbox"])


def test_mailbox_past_its_expunge_memory_is_clean(built):
    """Expunges past Store.expunge_memory forget the oldest: the floor, the counter and what is left of both
    indexes agree, and fsck finds nothing."""
    s = _open(built)
    s.expunge_memory = 2
    mid, msgs = _alice_inbox(s)
    for m in msgs[:5]:
        _expunge(s, mid, m["uid"])
    rec = _mbox(s, mid)
    assert rec["expunges"] == 2 and rec["expunge_floor"] > 0
    report = fsck.check(s)
    assert report.clean, report.as_dict()
    s.close()


def test_expunge_floor_and_counter_checked(built):
    """An expunge record (and its modseqs entry) left at or below the floor is dropped; a wrong `expunges`
    counter is set; a floor above the mailbox's mod-sequence raises the mod-sequence (mod-sequences never go
    back); a floor that is not a number is set just below the oldest expunge remembered."""
    s = _open(built)
    s.expunge_memory = 2
    before = _all_messages(s)
    mid, msgs = _alice_inbox(s)
    for m in msgs[:4]:
        _expunge(s, mid, m["uid"])
    rec = _mbox(s, mid)
    floor, uid0 = rec["expunge_floor"], msgs[0]["uid"]
    with s.write() as txn:  # a forgotten expunge left behind
        txn.put(R.msg_key(mid, uid0), R.U64.pack(floor), db=s.db["expunged"])
        txn.put(R.MODSEQ_KEY.pack(mid, floor, uid0), changes.EXPUNGED, db=s.db["modseqs"])
    _set_mbox(s, mid, expunges=7)
    report = fsck.check(s)
    assert _kinds(report) == [fsck.EXPUNGED_INDEX, fsck.MAILBOX_COUNTERS, fsck.MODSEQ_INDEX], report.as_dict()
    assert {p.detail.get("why") for p in report.problems} == {"at or below the floor", None}
    assert [p for p in report.problems if p.kind == fsck.MAILBOX_COUNTERS][0].detail["expunges"] == "7->2"
    _repair_and_recheck(s, before)
    assert Mailboxes(s).expunged_since(mid, floor) == [m["uid"] for m in msgs[2:4]]

    modseq = _mbox(s, mid)["modseq"]
    _set_mbox(s, mid, expunge_floor=modseq + 5)
    report = fsck.check(s)  # the floor above everything: the two expunges left are below it, dropped
    assert _kinds(report) == sorted([fsck.EXPUNGE_FLOOR, fsck.MAILBOX_COUNTERS] + [fsck.EXPUNGED_INDEX] * 2
                                    + [fsck.MODSEQ_INDEX] * 2), report.as_dict()
    counters = [p for p in report.problems if p.kind == fsck.MAILBOX_COUNTERS][0]
    assert counters.detail["modseq"] == f"{modseq}->{modseq + 5}" and counters.detail["expunges"] == "2->0"
    _repair_and_recheck(s, before)
    assert _mbox(s, mid)["modseq"] == modseq + 5
    assert Mailboxes(s).expunged_since(mid, modseq) is None
    _expunge(s, mid, msgs[4]["uid"])  # remembered again from here on
    _expunge(s, mid, msgs[5]["uid"])

    with s.read() as txn:
        oldest = min(R.U64.unpack(v)[0] for _, v in txn.cursor(db=s.db["expunged"]))
    _set_mbox(s, mid, expunge_floor="x")
    report = fsck.check(s)
    assert _kinds(report) == [fsck.EXPUNGE_FLOOR], report.as_dict()
    _repair_and_recheck(s, before)
    assert _mbox(s, mid)["expunge_floor"] == oldest - 1
    s.close()
