"""IMAP mailbox operations over the store: names (hierarchy, INBOX rules), subscriptions, flags with
MODSEQ, expunge, copy/move, APPEND-style delivery, exact counters and quota usage, and the change log."""

from __future__ import annotations

import lmdb
import pytest

from fastmail.store import changes
from fastmail.store import records as R
from fastmail.store.mailboxes import (
    ALREADYEXISTS,
    CANNOT,
    INUSE,
    NONEXISTENT,
    OVERQUOTA,
    TRYCREATE,
    MailboxError,
    Mailboxes,
    check_name,
)
from fastmail.store.store import Incoming, Store, new_qid

RAW = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data", map_size=1 << 24)
    s.add_domain("example.org")
    yield s
    s.close()


@pytest.fixture
def boxes(store):
    return Mailboxes(store)


def deliver(store: Store, user: int, raw: bytes = RAW, **kw) -> int:
    out = store.commit_batch([Incoming(qid=new_qid(), raw=raw, sender="s@x.test", local=[user], **kw)])
    return out[0].uids[user]


def names(boxes: Mailboxes, user: int) -> list[str]:
    return [b["name"] for b in boxes.list_all(user)]


def usage(store: Store, user: int) -> tuple[int, int]:
    with store.read() as txn:
        return R.USAGE.unpack(txn.get(R.U64.pack(user), db=store.db["usage"]))


def check_counters(boxes: Mailboxes, mid: int) -> None:
    rec, msgs = boxes.snapshot(mid)
    assert rec["exists"] == len(msgs)
    assert rec["unseen"] == sum(1 for m in msgs if "\\Seen" not in m.flags)
    assert rec["size"] == sum(m.size for m in msgs)
    assert all(m.uid < rec["uidnext"] and m.modseq <= rec["modseq"] for m in msgs)


def test_names_are_checked_and_inbox_is_case_insensitive():
    assert check_name("inbox") == "INBOX"
    assert check_name("Inbox/Sub") == "INBOX/Sub"
    assert check_name("a/b/") == "a/b"
    assert check_name("Ünïcödé") == "Ünïcödé"
    for bad in ["", "/a", "a//b", "a\x01", "a*", "a%b", "x" * 1001]:
        with pytest.raises(MailboxError) as e:
            check_name(bad)
        assert e.value.code == CANNOT


def test_create_makes_parents_and_refuses_duplicates(store, boxes):
    u = store.add_user("a@example.org", "h")
    boxes.create(u, "Work/2024/Q1")
    assert {"Work", "Work/2024", "Work/2024/Q1"} <= set(names(boxes, u))
    with pytest.raises(MailboxError) as e:
        boxes.create(u, "work/2024/Q1".replace("work", "Work"))
    assert e.value.code == ALREADYEXISTS
    with pytest.raises(MailboxError) as e:
        boxes.create(u, "inbox")
    assert e.value.code == ALREADYEXISTS


def test_delete_rules(store, boxes):
    """RFC 9051 §6.3.4: a mailbox with children becomes a \\Noselect name (its messages go); a \\Noselect
    name with children cannot be deleted [INUSE], without them it goes."""
    u = store.add_user("a@example.org", "h")
    boxes.create(u, "P/C")
    for name, code in [("INBOX", CANNOT), ("nope", NONEXISTENT)]:
        with pytest.raises(MailboxError) as e:
            boxes.delete(u, name)
        assert e.value.code == code
    pid = boxes.get(u, "P")["id"]
    store.commit_batch([Incoming(qid=new_qid(), raw=RAW, sender="", local=[u], mailbox_id=pid)])
    mid = boxes.get(u, "P/C")["id"]
    store.commit_batch([Incoming(qid=new_qid(), raw=RAW, sender="", local=[u], mailbox_id=mid)])
    assert usage(store, u) == (2 * len(RAW), 2)
    boxes.delete(u, "P")
    assert boxes.get(u, "P") is None and "P" not in names(boxes, u) and usage(store, u) == (len(RAW), 1)
    assert boxes.marks(u) == [("P", {"v": 1, "noselect": True, "subscribed": True})]
    with pytest.raises(MailboxError) as e:
        boxes.delete(u, "P")
    assert e.value.code == INUSE
    boxes.delete(u, "P/C")
    assert usage(store, u) == (0, 0)
    assert boxes.marks(u) == [("P", {"v": 1, "noselect": True, "subscribed": True}),
                              ("P/C", {"v": 1, "noselect": False, "subscribed": True})]
    boxes.delete(u, "P")  # \\Noselect without children: gone (its subscription stays)
    assert boxes.marks(u) == [("P", {"v": 1, "noselect": False, "subscribed": True}),
                              ("P/C", {"v": 1, "noselect": False, "subscribed": True})]
    with pytest.raises(MailboxError) as e:
        boxes.delete(u, "P")
    assert e.value.code == NONEXISTENT


def test_noselect_names_with_create_and_rename(store, boxes):
    u = store.add_user("a@example.org", "h")
    boxes.create(u, "A/B/C")
    old = boxes.get(u, "A")
    boxes.delete(u, "A")
    boxes.create(u, "A/D")  # a \\Noselect parent stays one
    assert boxes.get(u, "A") is None and [n for n, m in boxes.marks(u) if m["noselect"]] == ["A"]
    boxes.rename(u, "A", "X")  # the \\Noselect name moves with its children
    assert [n for n, m in boxes.marks(u) if m["noselect"]] == ["X"]
    assert boxes.get(u, "X/B/C") is not None and boxes.get(u, "X/D") is not None and boxes.get(u, "A/D") is None
    with pytest.raises(MailboxError) as e:
        boxes.create(u, "X/B")
    assert e.value.code == ALREADYEXISTS
    with pytest.raises(MailboxError) as e:
        boxes.rename(u, "Sent", "X")  # taken by the \\Noselect name
    assert e.value.code == ALREADYEXISTS
    boxes.create(u, "X")  # a mailbox again: a new one
    new = boxes.get(u, "X")
    assert new["id"] != old["id"] and not [n for n, m in boxes.marks(u) if m["noselect"]]


def test_rename_keeps_ids_and_moves_children(store, boxes):
    u = store.add_user("a@example.org", "h")
    boxes.create(u, "A/B")
    a, b = boxes.get(u, "A"), boxes.get(u, "A/B")
    boxes.rename(u, "A", "X/Y")
    assert boxes.get(u, "X/Y")["id"] == a["id"] and boxes.get(u, "X/Y/B")["id"] == b["id"]
    assert boxes.get(u, "X/Y")["uidvalidity"] == a["uidvalidity"]
    assert boxes.get(u, "X") is not None and boxes.get(u, "A") is None
    for old, new, code in [("nope", "Z", NONEXISTENT), ("X", "Sent", ALREADYEXISTS), ("X", "X/Y/Z", CANNOT)]:
        with pytest.raises(MailboxError) as e:
            boxes.rename(u, old, new)
        assert e.value.code == code


def test_rename_inbox_moves_messages(store, boxes):
    u = store.add_user("a@example.org", "h")
    boxes.create(u, "INBOX/kid")
    for _ in range(3):
        deliver(store, u)
    inbox = boxes.get(u, "INBOX")
    boxes.rename(u, "inbox", "Old")
    old = boxes.get(u, "Old")
    assert old["id"] != inbox["id"] and old["exists"] == 3
    assert boxes.get(u, "INBOX")["exists"] == 0 and boxes.get(u, "INBOX/kid") is not None
    assert [m.uid for m in boxes.messages(old["id"])] == [1, 2, 3]
    assert store.read_message(old["id"], 1) == RAW
    assert usage(store, u) == (3 * len(RAW), 3)
    check_counters(boxes, old["id"])
    check_counters(boxes, inbox["id"])


def test_subscriptions(store, boxes):
    """RFC 9051 §6.3.7: a name can be subscribed before its mailbox exists, and stays subscribed after the
    mailbox is deleted; CREATE of a subscribed name keeps it subscribed."""
    u = store.add_user("a@example.org", "h")
    boxes.set_subscribed(u, "Sent", False)
    assert boxes.get(u, "Sent")["subscribed"] is False
    boxes.set_subscribed(u, "Sent", True)
    assert boxes.get(u, "Sent")["subscribed"] is True
    boxes.set_subscribed(u, "later/box", True)
    assert boxes.marks(u) == [("later/box", {"v": 1, "noselect": False, "subscribed": True})]
    boxes.create(u, "later/box")
    assert boxes.marks(u) == [] and boxes.get(u, "later/box")["subscribed"] is True
    boxes.delete(u, "later/box")
    assert boxes.marks(u) == [("later/box", {"v": 1, "noselect": False, "subscribed": True})]
    boxes.set_subscribed(u, "later/box", False)
    boxes.set_subscribed(u, "never", False)  # not subscribed: no error
    boxes.set_subscribed(u, "a//b", False)
    assert boxes.marks(u) == []
    with pytest.raises(MailboxError) as e:
        boxes.set_subscribed(u, "a//b", True)
    assert e.value.code == CANNOT


def test_flags_modseq_and_unchangedsince(store, boxes):
    u = store.add_user("a@example.org", "h")
    mid = boxes.get(u, "INBOX")["id"]
    for _ in range(3):
        deliver(store, u)
    base = boxes.get(u, "INBOX")["modseq"]
    changed, refused = boxes.store_flags(mid, [1, 2], "+", ["\\Seen", "$Work"])
    assert [m.uid for m in changed] == [1, 2] and not refused
    assert [m.modseq for m in changed] == [base + 1, base + 2]
    assert boxes.get(u, "INBOX")["unseen"] == 1
    changed, _ = boxes.store_flags(mid, [1], "+", ["\\Seen"])
    assert changed == []  # no change, no new modseq
    changed, refused = boxes.store_flags(mid, [1, 3], "-", ["\\Seen"], unchangedsince=base + 1)
    assert [m.uid for m in changed] == [1] and refused == [] and changed[0].flags == ["$Work"]
    changed, refused = boxes.store_flags(mid, [2, 3], "", ["\\Flagged"], unchangedsince=base)
    assert [m.uid for m in changed] == [3] and refused == [2]
    check_counters(boxes, mid)


def test_expunge_releases_and_remembers(store, boxes):
    u = store.add_user("a@example.org", "h")
    mid = boxes.get(u, "INBOX")["id"]
    for _ in range(4):
        deliver(store, u)
    boxes.store_flags(mid, [1, 2, 4], "+", ["\\Deleted"])
    before = boxes.get(u, "INBOX")["modseq"]
    assert boxes.expunge(mid, [2, 3, 4]) == [2, 4]
    assert boxes.expunge(mid) == [1]
    assert boxes.expunge(mid) == []
    assert [m.uid for m in boxes.messages(mid)] == [3]
    assert usage(store, u) == (len(RAW), 1)
    assert boxes.expunged_since(mid, before) == [1, 2, 4]
    assert boxes.expunged_since(mid, boxes.get(u, "INBOX")["modseq"]) == []
    check_counters(boxes, mid)


def test_copy_and_move(store, boxes):
    u = store.add_user("a@example.org", "h")
    src = boxes.get(u, "INBOX")["id"]
    dst = boxes.create(u, "Dest")
    for _ in range(3):
        deliver(store, u)
    boxes.store_flags(src, [2], "+", ["\\Seen"])
    validity, pairs = boxes.copy(src, dst, [3, 2, 9])
    assert validity == boxes.get(u, "Dest")["uidvalidity"] and pairs == [(2, 1), (3, 2)]
    assert usage(store, u) == (5 * len(RAW), 5)
    assert [m.flags for m in boxes.messages(dst)] == [["\\Seen"], []]
    _, pairs = boxes.copy(src, dst, [1], move=True)
    assert pairs == [(1, 3)]
    assert [m.uid for m in boxes.messages(src)] == [2, 3]
    assert usage(store, u) == (5 * len(RAW), 5)
    # the shared blob outlives the expunge of one copy
    boxes.store_flags(src, [2, 3], "+", ["\\Deleted"])
    boxes.expunge(src)
    assert store.read_message(dst, 1) == RAW and store.read_message(dst, 3) == RAW
    for mid in (src, dst):
        check_counters(boxes, mid)
    with pytest.raises(MailboxError) as e:
        boxes.copy(dst, 999, [1])
    assert e.value.code == TRYCREATE


def test_copy_respects_quota(store, boxes):
    u = store.add_user("a@example.org", "h", quota=len(RAW) * 2)
    src = boxes.get(u, "INBOX")["id"]
    deliver(store, u)
    deliver(store, u)
    with pytest.raises(MailboxError) as e:
        boxes.copy(src, boxes.get(u, "Sent")["id"], [1])
    assert e.value.code == OVERQUOTA
    boxes.copy(src, boxes.get(u, "Sent")["id"], [1], move=True)  # a move adds nothing


def test_append_with_flags_and_date_into_a_mailbox(store, boxes):
    u = store.add_user("a@example.org", "h")
    mid = boxes.get(u, "Drafts")["id"]
    item = Incoming(qid=new_qid(), raw=RAW, sender="", local=[u], mailbox_id=mid, flags=["\\Seen", "\\Draft"],
                    internaldate=1_000_000_000)
    out = store.commit_batch([item])[0]
    assert out.uids == {u: 1} and out.uidvalidity == boxes.get(u, "Drafts")["uidvalidity"]
    (m,) = boxes.messages(mid)
    assert m.flags == ["\\Seen", "\\Draft"] and m.internaldate == 1_000_000_000
    assert boxes.get(u, "Drafts")["unseen"] == 0
    boxes.delete(u, "Drafts")
    out = store.commit_batch([Incoming(qid=new_qid(), raw=RAW, sender="", local=[u], mailbox_id=mid)])[0]
    assert out.no_mailbox and not out.uids


def test_change_log_names_changed_mailboxes(store, boxes):
    u = store.add_user("a@example.org", "h")
    inbox = boxes.get(u, "INBOX")["id"]
    with store.read() as txn:
        start, _ = changes.poll(txn, store.db, 0)
        assert changes.poll(txn, store.db, start) == (start, set())
    deliver(store, u)
    other = boxes.create(u, "Other")
    with store.read() as txn:
        seq, changed = changes.poll(txn, store.db, start)
    assert seq == start + 2 and changed == {inbox, other}
    with store.read() as txn:
        assert changes.poll(txn, store.db, seq - 1) == (seq, {other})


def test_change_log_window(store, boxes, monkeypatch):
    monkeypatch.setattr(changes, "WINDOW", 4)
    u = store.add_user("a@example.org", "h")
    inbox = boxes.get(u, "INBOX")["id"]
    with store.read() as txn:
        start = changes.current(txn, store.db)
    for _ in range(6):
        deliver(store, u)
    with store.read() as txn:
        assert changes.poll(txn, store.db, start)[1] is None  # fell behind: everything may have changed
        seq = changes.current(txn, store.db)
        assert changes.poll(txn, store.db, seq - 3) == (seq, {inbox})
        assert txn.stat(store.db["changes"])["entries"] == 4


def test_changes_since_reads_only_what_changed(store, boxes):
    u = store.add_user("a@example.org", "h")
    mid = boxes.get(u, "INBOX")["id"]
    for _ in range(5):
        deliver(store, u)
    base = boxes.get(u, "INBOX")["modseq"]
    boxes.store_flags(mid, [2], "+", ["\\Seen"])
    boxes.store_flags(mid, [4], "+", ["\\Deleted"])
    boxes.expunge(mid)
    deliver(store, u)
    other = boxes.create(u, "Other")
    boxes.copy(mid, other, [1], move=True)
    rec, changed, expunged = boxes.changes_since(mid, base)
    assert rec["modseq"] > base
    assert [m.uid for m in changed] == [2, 6] and changed[0].flags == ["\\Seen"]
    assert expunged == [4, 1]  # in mod-sequence order
    _, moved_in, _ = boxes.changes_since(other, 0)
    assert [m.uid for m in moved_in] == [1]
    with store.read() as txn:  # one entry per message, under its latest mod-sequence
        assert sorted(uid for uid, _ in changes.since(txn, store.db, mid, 0)) == [1, 2, 3, 4, 5, 6]
    assert boxes.changes_since(mid, rec["modseq"]) == (rec, [], [])
    boxes.delete(u, "Other")
    assert boxes.changes_since(other, 0) is None
    with store.read() as txn:
        assert changes.since(txn, store.db, other, 0) == []


def test_render_records_and_wire_forms(store, boxes):
    """FETCH's fast path reads the encoded records (a cursor walk for a dense UID run, gets for a sparse one)
    and the wire form stored at delivery, which goes away with the blob's last reference."""
    from fastmail.store import mime

    u = store.add_user("a@example.org", "h")
    mid = boxes.get(u, "INBOX")["id"]
    for _ in range(6):
        deliver(store, u, meta=mime.analyze(RAW))

    def seen(uids, wires, buffers=False):
        def render(pairs, wire_get):
            out = []
            for k, v in pairs:
                w = wire_get(R.parse_message_record(v)["blob"]) if wire_get else None
                if buffers and w is not None:
                    assert type(w) is memoryview  # of the map, read inside the render call
                    w = bytes(w)
                out.append((R.MSG_KEY.unpack(k)[1], w))
            return out
        return boxes.render_records(mid, uids, wires, render, buffers=buffers)

    wire = mime.wire(mime.analyze(RAW))
    assert seen([2, 3, 4], True)[:3] == [(2, wire), (3, wire), (4, wire)]  # a walk from 2 on
    assert seen([2, 3, 4], True, buffers=True)[:3] == [(2, wire), (3, wire), (4, wire)]
    assert seen([1, 6], True, buffers=True) == [(1, wire), (6, wire)]

    class Env:  # no second transaction now (the map grew in another process): copies instead
        def __init__(self, env):
            self.env = env

        def begin(self, **kw):
            if kw.get("buffers"):
                raise lmdb.MapResizedError("grown")
            return self.env.begin(**kw)

    env, store.env = store.env, Env(store.env)
    try:
        assert boxes.render_records(mid, [2], True, lambda pairs, get: [get(R.parse_message_record(v)["blob"])
                                                                        for _, v in pairs], buffers=True)[0] == wire
    finally:
        store.env = env
    assert seen([1, 6], False) == [(1, None), (6, None)]  # sparse: one get each
    blob = boxes.records(mid, [5])[5].blob
    boxes.store_flags(mid, [5], "+", ["\\Deleted"])
    assert boxes.expunge(mid) == [5]
    with store.read() as txn:
        assert txn.get(blob, db=store.db["msgwire"]) is None
    assert [uid for uid, _ in seen([4, 5, 6], True)] == [4, 6]
    assert seen([4, 5, 6], True, buffers=True) == [(4, wire), (6, wire)]


def _index_counts(store: Store, mid: int) -> tuple[int, int]:
    """(expunged records, modseqs expunge entries) of the mailbox."""
    with store.read() as txn:
        records = changes.count_expunged(txn, store.db, mid)
        entries = sum(1 for _, gone in changes.since(txn, store.db, mid, 0) if gone)
    return records, entries


def test_expunge_memory_forgets_the_oldest_and_keeps_a_floor(store, boxes):
    """Past Store.expunge_memory remembered expunges, an expunge forgets the oldest (lowest mod-sequence,
    whole mod-sequences) from both indexes in its own transaction, and the mailbox record keeps the floor:
    expunges at or below it are forgotten, every one above it remembered."""
    store.expunge_memory = 4
    u = store.add_user("a@example.org", "h")
    mid = boxes.get(u, "INBOX")["id"]
    for _ in range(12):
        deliver(store, u)
    boxes.store_flags(mid, list(range(1, 13)), "+", ["\\Deleted"])
    modseqs = {}
    for uid in (3, 1, 2):  # one at a time: three mod-sequences
        assert boxes.expunge(mid, [uid]) == [uid]
        modseqs[uid] = boxes.get(u, "INBOX")["modseq"]
    assert boxes.expunge(mid, [5, 6]) == [5, 6]  # two at one mod-sequence
    modseqs[5] = modseqs[6] = boxes.get(u, "INBOX")["modseq"]
    rec = boxes.get(u, "INBOX")
    assert rec["expunges"] == 5 - 1 and rec["expunge_floor"] == modseqs[3]  # 3, the oldest, forgotten
    assert _index_counts(store, mid) == (4, 4)
    assert boxes.expunged_since(mid, modseqs[3]) == [1, 2, 5, 6]
    assert boxes.expunged_since(mid, modseqs[3] - 1) is None  # below the floor: forgotten
    assert boxes.expunge(mid, [7]) == [7]  # 5 remembered: 1 goes
    assert boxes.expunge(mid, [8]) == [8]  # 2 goes
    rec = boxes.get(u, "INBOX")
    assert rec["expunge_floor"] == modseqs[2] and rec["expunges"] == 4
    assert boxes.expunge(mid, [9]) == [9]  # 5 and 6 share a mod-sequence: both go, never one of them
    rec = boxes.get(u, "INBOX")
    assert rec["expunge_floor"] == modseqs[6] and rec["expunges"] == 3
    assert boxes.expunged_since(mid, modseqs[6]) == [7, 8, 9]
    assert _index_counts(store, mid) == (3, 3)
    assert boxes.expunge(mid) == [4, 10, 11, 12]  # just the memory: everything before it goes
    rec = boxes.get(u, "INBOX")
    assert rec["expunge_floor"] == rec["modseq"] - 1 and rec["expunges"] == 4
    assert boxes.expunged_since(mid, rec["expunge_floor"]) == [4, 10, 11, 12]
    store.expunge_memory = 2  # (lowered) one expunge bigger than the memory: all of it forgotten too
    for _ in range(3):
        deliver(store, u)
    boxes.store_flags(mid, [13, 14, 15], "+", ["\\Deleted"])
    assert boxes.expunge(mid) == [13, 14, 15]
    rec = boxes.get(u, "INBOX")
    assert rec["expunge_floor"] == rec["modseq"] and rec["expunges"] == 0
    assert _index_counts(store, mid) == (0, 0)
    assert boxes.expunged_since(mid, rec["modseq"]) == []
    assert boxes.expunged_since(mid, rec["modseq"] - 1) is None
    check_counters(boxes, mid)


def test_expunge_memory_bounds_the_indexes_of_a_busy_mailbox(store, boxes):
    """Deliver-and-expunge many times over (the soak's pattern): both indexes stay at the memory, messages
    changed meanwhile are never forgotten, and a reader above the floor still gets every expunge."""
    store.expunge_memory = 10
    u = store.add_user("a@example.org", "h")
    mid = boxes.get(u, "INBOX")["id"]
    keep = deliver(store, u)
    for i in range(40):
        uid = deliver(store, u)
        boxes.store_flags(mid, [uid], "+", ["\\Deleted"])
        if i == 20:
            boxes.store_flags(mid, [keep], "+", ["\\Seen"])  # a live message between the expunges
        assert boxes.expunge(mid) == [uid]
        assert _index_counts(store, mid) == (min(i + 1, 10),) * 2
    rec = boxes.get(u, "INBOX")
    assert rec["expunges"] == 10
    assert boxes.expunged_since(mid, rec["expunge_floor"]) == list(range(32, 42))
    found = boxes.changes_since(mid, rec["expunge_floor"])
    assert found is not None and found[2] == list(range(32, 42))
    with store.read() as txn:
        assert any(uid == keep and not gone for uid, gone in changes.since(txn, store.db, mid, 0))
    check_counters(boxes, mid)


def test_changes_since_below_the_floor_compares_uids(store, boxes):
    """A reader below the floor gets, as the expunged, the UIDs it knows that no message holds now."""
    store.expunge_memory = 2
    u = store.add_user("a@example.org", "h")
    mid = boxes.get(u, "INBOX")["id"]
    for _ in range(8):
        deliver(store, u)
    base = boxes.get(u, "INBOX")["modseq"]
    boxes.store_flags(mid, [2, 3, 4, 6], "+", ["\\Deleted"])
    for uid in (2, 3, 4):
        boxes.expunge(mid, [uid])
    deliver(store, u)
    assert boxes.get(u, "INBOX")["expunge_floor"] > base
    rec, changed, expunged = boxes.changes_since(mid, base, [1, 2, 3, 4, 5, 6, 7, 8])
    assert expunged == [2, 3, 4]  # 2 forgotten, still found
    assert [m.uid for m in changed] == [6, 9]  # flagged, new
    assert boxes.changes_since(mid, base)[2] == []  # nothing known, nothing to tell


def test_old_mailbox_record_without_the_new_fields(store, boxes):
    """A mailbox record from before the rule (no `expunges`, no `expunge_floor`): floor 0, and its first
    expunge counts what it remembers before it applies the memory."""
    store.expunge_memory = 3
    u = store.add_user("a@example.org", "h")
    mid = boxes.get(u, "INBOX")["id"]
    for _ in range(6):
        deliver(store, u)
    boxes.store_flags(mid, list(range(1, 7)), "+", ["\\Deleted"])
    for uid in (1, 2, 3):
        boxes.expunge(mid, [uid])
    with store.write() as txn:
        rec = R.loads(txn.get(R.U64.pack(mid), db=store.db["mbox"]))
        del rec["expunges"]
        rec.pop("expunge_floor", None)
        txn.put(R.U64.pack(mid), R.dumps(rec), db=store.db["mbox"])
    assert boxes.expunged_since(mid, 0) == [1, 2, 3]
    boxes.expunge(mid, [4])
    rec = boxes.get(u, "INBOX")
    assert rec["expunges"] == 3 and rec["expunge_floor"] > 0
    assert boxes.expunged_since(mid, rec["expunge_floor"]) == [2, 3, 4]
    assert _index_counts(store, mid) == (3, 3)
