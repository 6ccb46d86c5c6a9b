"""fastmail.delivery.queue and .dsn on a real store: attempt results, retry schedule, expiry, bounces (local
INBOX or queued from <>), NOTIFY, loops, removal with the blob, operator actions."""

from __future__ import annotations

import email
import email.policy
import time

import pytest

from fastmail.delivery import dsn
from fastmail.delivery import queue as Q
from fastmail.store import records as R
from fastmail.store.segments import LOCATION
from fastmail.store.store import Incoming, Store, StoreError, new_qid

RAW = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody line\r\n"
POLICY = Q.Policy("mx.example.org", retry_base=300, retry_max=3600, lifetime=5 * 86400)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data", map_size=1 << 24)
    s.add_domain("example.org")
    s.add_user("a@example.org", "h")
    yield s
    s.close()


def queued(store: Store, sender: str = "a@example.org", rcpts=("x@remote.test",), notify=None, **params) -> bytes:
    remote = [{"to": r, "rcpt": r, "notify": notify, "orcpt": None} for r in rcpts]
    item = Incoming(qid=new_qid(), raw=RAW, sender=sender, local=[], remote=remote,
                    params={"ret": None, "envid": None, "body": None, "smtputf8": False, **params})
    store.commit_batch([item])
    return item.qid


def schedule(store: Store) -> list[tuple[int, bytes]]:
    with store.read() as txn:
        return [R.SCHEDULE_KEY.unpack(k) for k in txn.cursor(db=store.db["schedule"]).iternext(values=False)]


def inbox(store: Store, user: str = "a@example.org") -> list[bytes]:
    mid = store.mailbox_id(store.get_user(user)["id"], "INBOX")
    return [store.read_message(mid, m["uid"]) or b"" for m in store.list_messages(mid)]


def test_backoff_doubles_and_caps():
    assert [POLICY.backoff(n) for n in range(1, 7)] == [300, 600, 1200, 2400, 3600, 3600]
    assert POLICY.backoff(10_000) == 3600


def test_due_lists_what_is_due_and_when_the_next_one_is(store):
    qid = queued(store)
    rec = Q.load(store, qid)
    assert Q.due(store, rec["next_attempt"] - 1, set()) == ([], rec["next_attempt"])
    assert Q.due(store, rec["next_attempt"] + 1, set()) == ([qid], None)
    assert Q.due(store, rec["next_attempt"] + 1, {qid}) == ([], None)
    assert Q.due(store, rec["next_attempt"] + 1, set(), mine=lambda q: False) == ([], None)  # another's


def test_due_respects_the_limit_and_the_owner(store):
    qids = [queued(store) for _ in range(6)]
    later = max(Q.load(store, q)["next_attempt"] for q in qids) + 1
    first, _ = Q.due(store, later, set(), limit=4)
    assert len(first) == 4
    mine, _ = Q.due(store, later, set(), mine=lambda q: q in qids[:2])
    assert sorted(mine) == sorted(qids[:2])


def test_deferred_is_rescheduled_with_backoff_then_sent_removes_entry_and_blob(store):
    qid = queued(store)
    now = Q.load(store, qid)["arrived"] + 10
    (eff,) = Q.apply(store, [Q.Update(qid, {0: Q.RcptResult("deferred", "451 4.3.0 later", "4.3.0", "mx")},
                                      finish=True, now=now)], POLICY)
    assert eff.next_attempt == now + 300 and not eff.removed
    rec = Q.load(store, qid)
    assert rec["attempts"] == 1 and rec["rcpts"][0]["state"] == "deferred" and rec["rcpts"][0]["mx"] == "mx"
    assert schedule(store) == [(int((now + 300) * 1000), qid)]
    (eff,) = Q.apply(store, [Q.Update(qid, {0: Q.RcptResult("deferred", "451", "4.0.0")}, finish=True,
                                      now=now + 300)], POLICY)
    assert eff.next_attempt == now + 300 + 600
    (eff,) = Q.apply(store, [Q.Update(qid, {0: Q.RcptResult("sent", "250 ok", "2.0.0")}, finish=True,
                                      now=now + 900)], POLICY)
    assert eff.removed and Q.load(store, qid) is None
    assert schedule(store) == [] and store.blob_location(qid) is None


def test_updates_of_one_entry_in_one_batch_apply_in_order(store):
    """Several destinations of one entry report in the same batch: each update sees the one before."""
    qid = queued(store, rcpts=("x@one.test", "y@two.test"))
    now = Q.load(store, qid)["arrived"] + 1
    effects = Q.apply(store, [Q.Update(qid, {0: Q.RcptResult("sent", "250 ok", "2.0.0")}, now=now),
                              Q.Update(qid, {1: Q.RcptResult("deferred", "451 later", "4.0.0")}, now=now),
                              Q.Update(qid, {}, finish=True, now=now)], POLICY)
    assert [e.removed for e in effects] == [False, False, False] and effects[2].next_attempt == now + 300
    rec = Q.load(store, qid)
    assert [r["state"] for r in rec["rcpts"]] == ["sent", "deferred"] and rec["attempts"] == 1
    assert schedule(store) == [(int((now + 300) * 1000), qid)]


def test_blobs_released_together_are_punched_as_one_range_per_run(store, monkeypatch):
    qids = [queued(store) for _ in range(3)]
    fourth = queued(store)
    punched: list[tuple[int, int, int]] = []
    monkeypatch.setattr(store.segments, "release", lambda loc: punched.append(LOCATION.unpack(loc)))
    locs = [LOCATION.unpack(store.blob_location(q)) for q in [*qids, fourth]]
    sent = {0: Q.RcptResult("sent", "250 ok", "2.0.0")}
    now = Q.load(store, fourth)["arrived"] + 1
    # written one after the other: released together (in any order) they are one run
    Q.apply(store, [Q.Update(q, sent, finish=True, now=now) for q in [qids[2], fourth, qids[0], qids[1]]], POLICY)
    assert punched == [(locs[0][0], locs[0][1], sum(n for _, _, n in locs))]
    assert Q._contiguous([LOCATION.pack(1, 0, 10), LOCATION.pack(1, 20, 5), LOCATION.pack(2, 10, 5),
                          LOCATION.pack(1, 10, 10)]) == [LOCATION.pack(1, 0, 25), LOCATION.pack(2, 10, 5)]


def test_permanent_failure_bounces_into_the_local_senders_inbox(store):
    qid = queued(store, rcpts=("x@remote.test", "y@remote.test"), envid="id+2B1", ret="HDRS")
    now = Q.load(store, qid)["arrived"] + 1
    results = {0: Q.RcptResult("failed", "550 5.1.1 no such user", "5.1.1", "mx.remote.test"),
               1: Q.RcptResult("deferred", "421 4.4.2 lost", "4.4.2", "mx.remote.test")}
    (eff,) = Q.apply(store, [Q.Update(qid, results, finish=True, now=now)], POLICY)
    assert eff.dsn_to == "local" and eff.bounce and not eff.removed
    rec = Q.load(store, qid)
    assert [r["state"] for r in rec["rcpts"]] == ["bounced", "deferred"]
    (raw,) = inbox(store)
    b = email.message_from_bytes(raw, policy=email.policy.compat32)
    text, status, original = b.get_payload()
    blocks = status.get_payload()
    assert blocks[0]["Original-Envelope-Id"] == "id+1" and blocks[0]["X-Fastmail-Queue-ID"] == qid.hex()
    assert len(blocks) == 2 and blocks[1]["Final-Recipient"] == "rfc822; x@remote.test"
    assert blocks[1]["Status"] == "5.1.1" and blocks[1]["Remote-MTA"] == "dns; mx.remote.test"
    assert original.get_content_type() == "text/rfc822-headers"
    assert original.get_payload().rstrip("\r\n") == "From: a@example.org\r\nSubject: hi"  # no body
    assert "x@remote.test" in text.get_payload() and "y@remote.test" not in text.get_payload()
    # the bounce is a stored message like any other: its index entry is there for IMAP
    mid = store.mailbox_id(store.get_user("a@example.org")["id"], "INBOX")
    assert store.message_meta(store.list_messages(mid)[0]["blob"]) is not None


def test_bounce_for_a_remote_sender_is_queued_from_the_null_sender(store):
    qid = queued(store, sender="s@far.test")
    (eff,) = Q.apply(store, [Q.Update(qid, {0: Q.RcptResult("failed", "554 5.7.1 no", "5.7.1")}, finish=True,
                                      now=Q.load(store, qid)["arrived"])], POLICY)
    assert eff.removed and eff.dsn_to == "remote"
    (entry,) = store.queue_list()
    assert entry["id"] == eff.bounce and entry["sender"] == "" and entry["rcpts"][0]["to"] == "s@far.test"
    raw = store.read_blob(bytes.fromhex(entry["id"]))
    assert b"Final-Recipient: rfc822; x@remote.test" in raw and b"Content-Type: message/rfc822" in raw
    # the bounce itself fails: no DSN about a DSN (sender <>), the entry simply goes
    bqid = bytes.fromhex(entry["id"])
    (eff2,) = Q.apply(store, [Q.Update(bqid, {0: Q.RcptResult("failed", "550 no", "5.0.0")}, finish=True,
                                       now=entry["arrived"])], POLICY)
    assert eff2.removed and eff2.bounce is None and store.queue_list() == []


@pytest.mark.parametrize("notify,bounced", [(None, True), ("FAILURE", True), ("SUCCESS,FAILURE", True),
                                            ("NEVER", False), ("DELAY", False)])
def test_notify_decides_whether_a_dsn_is_sent(store, notify, bounced):
    qid = queued(store, notify=notify)
    (eff,) = Q.apply(store, [Q.Update(qid, {0: Q.RcptResult("failed", "550 no", "5.0.0")}, finish=True,
                                      now=Q.load(store, qid)["arrived"])], POLICY)
    assert eff.removed and bool(eff.bounce) is bounced and len(inbox(store)) == int(bounced)


@pytest.mark.parametrize(("notify", "relayed", "noticed"), [
    ("SUCCESS,FAILURE", True, True),  # RFC 3461 §5.2.2: the next hop sends no notices: we do
    ("SUCCESS", False, False),  # it offered DSN and got NOTIFY=SUCCESS: its notice, not ours
    (None, True, False),  # no NOTIFY: failures only
    ("FAILURE", True, False),
])
def test_relayed_notice_for_notify_success_to_a_server_without_dsn(store, notify, relayed, noticed):
    qid = queued(store, notify=notify)
    sent = Q.RcptResult("sent", "250 2.0.0 queued as X", "2.0.0", "mx.remote.test", relayed=relayed)
    (eff,) = Q.apply(store, [Q.Update(qid, {0: sent}, finish=True, now=Q.load(store, qid)["arrived"])], POLICY)
    assert eff.removed and bool(eff.bounce) is noticed
    if not noticed:
        assert inbox(store) == []
        return
    (raw,) = inbox(store)
    b = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert b["Subject"] == "Successful Mail Delivery Report"
    _, status, original = b.get_payload()
    per_rcpt = status.get_payload()[1]
    assert per_rcpt["Action"] == "relayed" and per_rcpt["Status"] == "2.0.0"
    assert per_rcpt["Remote-MTA"] == "dns; mx.remote.test"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 250 2.0.0 queued as X"
    assert original.get_content_type() == "text/rfc822-headers"  # RET is about failures (RFC 3461 §4.3)


def test_expiry_fails_what_is_pending_with_4_4_7(store):
    qid = queued(store)
    arrived = Q.load(store, qid)["arrived"]
    short = Q.Policy("mx.example.org", lifetime=60)
    (eff,) = Q.apply(store, [Q.Update(qid, {0: Q.RcptResult("deferred", "452 4.2.2 full", "4.2.2", "mx")},
                                      finish=True, now=arrived + 61)], short)
    assert eff.removed and eff.bounce
    (raw,) = inbox(store)
    assert b"Status: 4.4.7" in raw and b"Action: failed" in raw
    assert b"Diagnostic-Code: smtp; 452 4.2.2 full (delivery time expired" in raw


def test_over_quota_failed_entry_from_ingress_is_bounced_by_an_empty_update(store):
    small = store.add_user("small@example.org", "h", quota=10)
    item = Incoming(qid=new_qid(), raw=RAW, sender="s@far.test", local=[small, store.get_user("a@example.org")["id"]],
                    bounce_over_quota=True)
    store.commit_batch([item])
    (entry,) = store.queue_list()
    (eff,) = Q.apply(store, [Q.Update(item.qid, {}, now=entry["arrived"])], POLICY)
    assert eff.removed and eff.dsn_to == "remote"
    assert store.blob_location(item.qid) is not None  # still in a's INBOX: one reference left


def test_delivered_notice_is_queued_with_the_delivery_and_made_by_an_empty_update(store):
    """RFC 3461 §6.2.2.2: the notice recipient is written by the delivering transaction; one update makes the
    Action: delivered DSN and removes the record; over quota or from <> there is none."""
    b = store.add_user("b@example.org", "h")
    small = store.add_user("small@example.org", "h", quota=10)
    notices = [{"to": "b@example.org", "rcpt": "b@example.org", "notify": "SUCCESS", "orcpt": "rfc822;B@example.org",
                "users": [b]},
               {"to": "small@example.org", "rcpt": "small@example.org", "notify": "SUCCESS", "orcpt": None,
                "users": [small]}]
    item = Incoming(qid=new_qid(), raw=RAW, sender="a@example.org", local=[b, small], notices=notices,
                    params={"ret": "HDRS", "envid": "e1"})
    (outcome,) = store.commit_batch([item])
    assert outcome.over_quota == [small]
    (entry,) = store.queue_list()
    assert [(r["to"], r["state"], r.get("notice")) for r in entry["rcpts"]] == [("b@example.org", "sent", True)]
    assert Q.summary_state(entry) == "done"
    (eff,) = Q.apply(store, [Q.Update(item.qid, {}, now=entry["arrived"])], POLICY)
    assert eff.removed and eff.dsn_to == "local" and store.queue_list() == []
    (notice,) = [m for m in inbox(store) if b"multipart/report" in m]
    msg = email.message_from_bytes(notice, policy=email.policy.compat32)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    status = msg.get_payload()[1].get_payload()
    assert status[0]["Original-Envelope-Id"] == "e1"
    assert [(r["Final-Recipient"], r["Action"], r["Status"], r["Original-Recipient"]) for r in status[1:]] == [
        ("rfc822; b@example.org", "delivered", "2.0.0", "rfc822;B@example.org")]
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"
    # from <>: no notice recipient, no queue record
    null = Incoming(qid=new_qid(), raw=RAW, sender="", local=[b], notices=notices[:1])
    store.commit_batch([null])
    assert store.queue_list() == []


def test_operator_hold_release_retry_bounce(store):
    qid = queued(store)
    h = qid.hex()
    assert Q.hold(store, h)["held"] is True and schedule(store) == []
    assert Q.summary_state(Q.load(store, qid)) == "held"
    with pytest.raises(StoreError):
        Q.retry_now(store, h)
    rec = Q.release(store, h)
    assert schedule(store) == [(int(rec["next_attempt"] * 1000), qid)]
    rec = Q.retry_now(store, h)
    assert schedule(store) == [(int(rec["next_attempt"] * 1000), qid)]
    rec = Q.bounce(store, h)
    assert rec["rcpts"][0]["state"] == "failed" and Q.summary_state(rec) == "failed"
    (eff,) = Q.apply(store, [Q.Update(qid, {}, now=rec["next_attempt"])], POLICY)
    assert eff.removed and b"returned by the postmaster" in inbox(store)[0]
    with pytest.raises(StoreError):
        Q.hold(store, h)


def test_hold_and_release_all_in_short_transactions(store, monkeypatch):
    monkeypatch.setattr(Q, "BULK", 3)
    far = [queued(store, rcpts=("x@far.test",)) for _ in range(4)]
    near = queued(store, rcpts=("y@near.test",))
    commits: list[int] = []
    is_far = lambda rec: rec["rcpts"][0]["to"].endswith("@far.test")  # noqa: E731
    assert Q.hold_all(store, is_far, on_commit=commits.append) == 4 and commits == [3, 1]
    assert [q for _, q in schedule(store)] == [near]
    assert all(Q.load(store, q)["held"] for q in far) and not Q.load(store, near).get("held")
    assert Q.hold_all(store, is_far) == 0  # held already
    before = time.time()
    assert Q.release_all(store) == 4
    keys = schedule(store)
    assert sorted(q for _, q in keys) == sorted([*far, near])
    assert all(at >= int(before * 1000) for at, q in keys if q in far)  # due at once
    assert not any(Q.load(store, q).get("held") for q in far)


def test_results_for_an_entry_deleted_meanwhile_are_ignored(store):
    qid = queued(store)
    store.queue_delete(qid.hex())
    (eff,) = Q.apply(store, [Q.Update(qid, {0: Q.RcptResult("failed", "550", "5.0.0")}, finish=True, now=0)], POLICY)
    assert not eff.removed and eff.bounce is None and inbox(store) == []


def test_dsn_keeps_remote_text_on_one_line_and_returns_the_full_message():
    raw = dsn.build(qid="q1", hostname="h.test", sender="s@x.test", original=b"Subject: s\r\n\r\nbody\r\n",
                    failures=[dsn.Failure("r@y.test", "rfc822;R+2B1@y.test", "5.1.1", "failed",
                                          "550 5.1.1 evil\r\nInjected: header")], arrived=0, now=0)
    b = email.message_from_bytes(raw, policy=email.policy.compat32)
    _, status, original = b.get_payload()
    block = status.get_payload()[1]
    assert block["Original-Recipient"] == "rfc822;R+1@y.test"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 evil Injected: header" and block["Injected"] is None
    assert original.get_content_type() == "message/rfc822"
    assert original.get_payload()[0].get_payload() == "body"  # the CRLF before a boundary is the boundary's


@pytest.mark.parametrize("notify,warned", [(None, True), ("DELAY,FAILURE", True), ("FAILURE", False), ("NEVER", False)])
def test_delay_warning_once_and_only_when_asked_for(store, notify, warned):
    qid = queued(store, notify=notify)
    arrived = Q.load(store, qid)["arrived"]
    policy = Q.Policy("mx.example.org", lifetime=1000, delay_warning=100)
    deferred = {0: Q.RcptResult("deferred", "451 4.3.0 later", "4.3.0", "mx.remote.test")}
    (eff,) = Q.apply(store, [Q.Update(qid, deferred, finish=True, now=arrived + 50)], policy)
    assert eff.bounce is None  # too early
    (eff,) = Q.apply(store, [Q.Update(qid, deferred, finish=True, now=arrived + 150)], policy)
    assert bool(eff.bounce) is warned and not eff.removed
    assert Q.load(store, qid)["rcpts"][0]["state"] == "deferred"  # still being retried
    (eff,) = Q.apply(store, [Q.Update(qid, deferred, finish=True, now=arrived + 300)], policy)
    assert eff.bounce is None  # once
    if warned:
        (raw,) = inbox(store)
        b = email.message_from_bytes(raw, policy=email.policy.compat32)
        assert b["Subject"] == "Delayed Mail (still being retried)"
        block = b.get_payload()[1].get_payload()[1]
        assert block["Action"] == "delayed" and block["Status"] == "4.3.0"
        assert block["Will-Retry-Until"] and block["Diagnostic-Code"] == "smtp; 451 4.3.0 later"
    else:
        assert inbox(store) == []
