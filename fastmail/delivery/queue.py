"""The outbound queue's state changes: attempt results, retry schedule, expiry, bounces, operator actions.

A queue entry (database `queue`, written at acceptance by `Store._deliver`) is

    {"v": 1, "id", "sender", "size", "arrived", "attempts", "next_attempt", "params", "held"?,
     "rcpts": [{"to", "rcpt", "notify", "orcpt", "state", "reply"?, "status"?, "mx"?, "at"?}, ...]}

with one schedule key (`SCHEDULE_KEY`: next attempt in ms, queue id) while it waits and is not held.
Recipient states:

    queued    not tried yet                       } pending: the next attempt tries them
    deferred  the last attempt failed temporarily }
    failed    failed for good; its DSN is not made yet
    sent      the remote server said 250
    bounced   its DSN is stored (or none was due: NOTIFY=NEVER, sender <>)

Every change is one synced LMDB transaction (batched: `apply` takes many updates at once).  A bounce is made
in the same transaction that marks its recipients bounced — its body appended and fdatasynced to a segment
first, then stored through the normal delivery path (`Store._deliver`: the sender's INBOX when local, a new
queue entry from <> otherwise) — so a DSN is never lost and never made twice.  An entry with nothing pending
or failed leaves the queue and drops its blob reference in that same transaction (ARCHITECTURE §3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lmdb

from fastmail import log
from fastmail.delivery import dsn
from fastmail.store import mime
from fastmail.store import records as R
from fastmail.store.segments import LOCATION
from fastmail.store.store import Incoming, Store, StoreError, new_qid

PENDING = ("queued", "deferred")
STATES = ("queued", "deferred", "failed", "sent", "bounced")


@dataclass
class RcptResult:
    state: str  # "sent", "deferred" or "failed"
    reply: str  # "550 5.1.1 no such user" (remote) or our own reason
    status: str  # RFC 3463 code: "5.1.1"
    mx: str = ""
    relayed: bool = False  # sent to a server that does not offer DSN (RFC 3461 §5.2.2: it sends no notices)


@dataclass
class Update:
    qid: bytes
    results: dict[int, RcptResult] = field(default_factory=dict)  # recipient index -> result
    finish: bool = False  # the attempt is over: count it; reschedule, or expire what is still pending
    now: float = 0.0


@dataclass
class Policy:
    hostname: str
    retry_base: float = 300.0
    retry_max: float = 3600.0
    lifetime: float = 5 * 86400.0
    delay_warning: float = 0.0  # seconds after arrival for a "delayed" DSN (0: none)

    def backoff(self, attempts: int) -> float:
        """Delay after the `attempts`-th failed attempt: base, doubling, capped."""
        return float(min(self.retry_max, self.retry_base * (2 ** max(0, min(attempts - 1, 40)))))


@dataclass
class Effect:
    qid: str
    removed: bool = False
    next_attempt: float | None = None
    bounce: str | None = None  # queue id of the DSN made
    dsn_to: str = ""  # "local" / "remote" / "" (none)


def schedule_key(qid: bytes, next_attempt: float) -> bytes:
    return R.SCHEDULE_KEY.pack(int(next_attempt * 1000), qid)


def pending(rec: dict[str, Any]) -> list[int]:
    return [i for i, r in enumerate(rec["rcpts"]) if r["state"] in PENDING]


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


# -- reading -----------------------------------------------------------------------------------------------

def due(store: Store, now: float, skip: set[bytes], limit: int = 1000,
        mine: Callable[[bytes], bool] | None = None) -> tuple[list[bytes], float | None]:
    """Queue ids whose attempt is due (not in `skip`, and `mine` when given), and the time of the next one
    not yet due (of any owner: an early wake-up costs one read)."""
    found = due_entries(store, now, skip, limit, mine, held=True)
    return [e.qid for e in found.entries], found.next_due


@dataclass
class Entry:
    qid: bytes
    rec: dict[str, Any]
    location: bytes | None  # of its blob (segments.LOCATION), None when it has none


@dataclass
class Due:
    entries: list[Entry]
    next_due: float | None  # when the first entry not yet due is (`now` when the limit cut the scan short)
    last: int | None  # schedule time (ms) of the last due key looked at: a later scan may start near it


def due_entries(store: Store, now: float, skip: set[bytes], limit: int = 1000,
                mine: Callable[[bytes], bool] | None = None, start: int = 0, held: bool = False) -> Due:
    """The entries due at `now` (in schedule order, not in `skip`, `mine` when given, held ones left out
    unless `held`): records and blob locations read in one transaction, looking only at schedule keys from
    time `start` (ms) on."""
    out: list[Entry] = []
    horizon = int(now * 1000)
    last = None
    unpack = R.SCHEDULE_KEY.unpack
    with store.read() as txn:
        cursor = txn.cursor(db=store.db["schedule"])
        if not (cursor.set_range(R.SCHEDULE_KEY.pack(start, bytes(12))) if start else cursor.first()):
            return Due(out, None, last)
        queue = store.db["queue"]
        blobs = store.db["blobs"]
        for key in cursor.iternext(values=False):
            at, qid = unpack(key)
            if at > horizon:
                return Due(out, at / 1000, last)
            last = at
            if qid in skip or (mine is not None and not mine(qid)):
                continue
            raw = txn.get(qid, db=queue)
            if raw is None:
                continue
            rec = R.loads(raw)
            if rec.get("held") and not held:
                continue
            blob = txn.get(qid, db=blobs)
            out.append(Entry(qid, rec, bytes(blob[:24]) if blob else None))
            if len(out) >= limit:
                return Due(out, now, last)
    return Due(out, None, last)


def load(store: Store, qid: bytes) -> dict[str, Any] | None:
    with store.read() as txn:
        raw = txn.get(qid, db=store.db["queue"])
    return R.loads(raw) if raw else None


# -- attempt results ---------------------------------------------------------------------------------------

def _apply(rec: dict[str, Any], up: Update, policy: Policy) -> tuple[list[int], list[int]]:
    """Apply `up` to `rec` (in place); return the indexes of the recipients failed for good (their DSN is
    due) and of those that get a notice: delayed long enough for a warning (RFC 3464 Action: delayed, once
    per recipient), or relayed with NOTIFY=SUCCESS to a server without DSN (Action: relayed, RFC 3461
    §5.2.2: it sends none itself)."""
    delayed: list[int] = []
    for i, res in up.results.items():
        if i >= len(rec["rcpts"]):
            continue
        r = rec["rcpts"][i]
        if r["state"] not in PENDING:
            continue  # an operator bounced it meanwhile
        r.update(state=res.state, reply=res.reply, status=res.status, at=up.now)
        if res.mx:
            r["mx"] = res.mx
        if res.state == "sent" and res.relayed and "SUCCESS" in (r.get("notify") or "").upper().split(","):
            delayed.append(i)
    for i, r in enumerate(rec["rcpts"]):
        if r.pop("notice", False):  # delivered to a local mailbox with NOTIFY=SUCCESS (fastmail.store.store)
            delayed.append(i)
    if up.finish:
        rec["attempts"] = rec.get("attempts", 0) + 1
        left = pending(rec)
        if left and up.now >= rec["arrived"] + policy.lifetime:
            for i in left:  # RFC 3464 Action failed, 4.4.7: delivery time expired
                r = rec["rcpts"][i]
                last = r.get("reply") or "no attempt succeeded"
                r.update(state="failed", status="4.4.7", at=up.now,
                         reply=f"{last} (delivery time expired after {policy.lifetime:g} s)")
        elif left:
            rec["next_attempt"] = up.now + policy.backoff(rec["attempts"])
            if policy.delay_warning and up.now - rec["arrived"] >= policy.delay_warning:
                for i in left:
                    if not rec["rcpts"][i].get("warned"):
                        rec["rcpts"][i]["warned"] = True
                        delayed.append(i)
    return [i for i, r in enumerate(rec["rcpts"]) if r["state"] == "failed"], delayed


def _wants_dsn(rec: dict[str, Any], r: dict[str, Any], kind: str = "FAILURE") -> bool:
    if not rec["sender"]:
        return False  # never to <> (RFC 5321 §4.5.5, §6.1): no bounce loops
    notify = (r.get("notify") or "").upper()
    return not notify or kind in notify.split(",")  # RFC 3461 §4.1 (NEVER: none)


def _dsn_for(rec: dict[str, Any], failed: list[int], notices: list[int]) -> list[int]:
    """The recipients the DSN of this change is about: failed ones, then delayed or relayed ones."""
    return ([i for i in failed if _wants_dsn(rec, rec["rcpts"][i])]
            + [i for i in notices if _wants_dsn(rec, rec["rcpts"][i],
                                                "SUCCESS" if rec["rcpts"][i]["state"] == "sent" else "DELAY")])


def _failure(rec: dict[str, Any], r: dict[str, Any], policy: Policy) -> dsn.Failure:
    orcpt = r.get("orcpt")
    original = orcpt if orcpt else (r.get("rcpt") if r.get("rcpt") and r.get("rcpt") != r["to"] else None)
    delayed = r["state"] in PENDING
    action = ("delayed" if delayed else "delivered" if r["state"] == "sent" and r.get("delivered")
              else "relayed" if r["state"] == "sent" else "failed")
    return dsn.Failure(recipient=r["to"], original=original, status=r.get("status") or "5.0.0",
                       action=action, diagnostic=r.get("reply") or "",
                       remote_mta=r.get("mx", ""), last_attempt=r.get("at", 0.0),
                       retry_until=rec["arrived"] + policy.lifetime if delayed else 0.0)


@dataclass
class _Applied:
    """One update applied to the record as read before the write transaction (phase 1 of `apply`)."""

    raw: bytes  # the record it was applied to
    rec: dict[str, Any]  # the record after it
    failed: list[int]
    delayed: list[int]
    old_key: bytes | None  # its schedule key before


def apply(store: Store, updates: list[Update], policy: Policy) -> list[Effect]:
    """Apply attempt results (and expiry, rescheduling, bounces, removal) in one synced transaction."""
    # 1. The updates applied to the records as they are now, and what the bounces will be (a read of the
    #    current records and of the originals).  The write transaction reuses each result whose record has
    #    not changed meanwhile (it rarely has: no second decode and apply).
    bounces: dict[bytes, tuple[bytes, list[int]]] = {}
    applied: list[_Applied | None] = []
    with store.read() as txn:
        raws = [txn.get(up.qid, db=store.db["queue"]) for up in updates]
    for up, raw_rec in zip(updates, raws, strict=True):
        if raw_rec is None:
            applied.append(None)
            continue
        rec = R.loads(raw_rec)
        old_key = None if rec.get("held") else schedule_key(up.qid, rec["next_attempt"])
        failed, delayed = _apply(rec, up, policy)
        applied.append(_Applied(bytes(raw_rec), rec, failed, delayed, old_key))
        dsn_for = _dsn_for(rec, failed, delayed)
        if dsn_for:
            try:
                original = store.read_blob(up.qid)
            except StoreError:
                original = b""
            body = dsn.build(qid=rec["id"], hostname=policy.hostname, sender=rec["sender"], original=original,
                             failures=[_failure(rec, rec["rcpts"][i], policy) for i in dsn_for],
                             arrived=rec["arrived"],
                             envid=rec["params"].get("envid"), ret=rec["params"].get("ret"), now=up.now)
            bounces[up.qid] = (body, dsn_for)
    # 2. Their bodies, durable before the transaction that references them.
    order = list(bounces)
    locations = store.segments.append_batch([bounces[q][0] for q in order]) if order else []
    loc_of = dict(zip(order, locations, strict=True))
    metas: dict[bytes, Any] = {}
    for q in order:
        try:
            metas[q] = mime.analyze(bounces[q][0])
        except Exception:
            metas[q] = None
    released: list[bytes] = []

    def op(txn: lmdb.Transaction) -> list[Effect]:
        released.clear()
        return [_write(store, txn, up, policy, bounces, loc_of, metas, released, before)
                for up, before in zip(updates, applied, strict=True)]

    effects: list[Effect] = store._writing(op)
    for loc in _contiguous(released):
        store.segments.release(loc)
    return effects


def _contiguous(locations: list[bytes]) -> list[bytes]:
    """Released blob locations with the adjacent ones of a segment joined: one hole punched for a run of
    messages stored one after the other (the usual case: they were written in one batch)."""
    if len(locations) < 2:
        return locations
    ranges = sorted(LOCATION.unpack(loc) for loc in locations)
    out = []
    seg, start, length = ranges[0]
    for s, o, n in ranges[1:]:
        if s == seg and o == start + length:
            length += n
        else:
            out.append(LOCATION.pack(seg, start, length))
            seg, start, length = s, o, n
    out.append(LOCATION.pack(seg, start, length))
    return out


def _write(store: Store, txn: lmdb.Transaction, up: Update, policy: Policy,
           bounces: dict[bytes, tuple[bytes, list[int]]], loc_of: dict[bytes, bytes],
           metas: dict[bytes, Any], released: list[bytes], before: _Applied | None) -> Effect:
    db = store.db
    effect = Effect(up.qid.hex())
    raw = txn.get(up.qid, db=db["queue"])
    if raw is None:
        return effect  # deleted by an operator meanwhile
    if before is not None and before.raw == raw:
        rec, failed, delayed, old_key = before.rec, before.failed, before.delayed, before.old_key
    else:
        rec = R.loads(raw)
        old_key = None if rec.get("held") else schedule_key(up.qid, rec["next_attempt"])
        failed, delayed = _apply(rec, up, policy)
    prepared = bounces.get(up.qid)
    dsn_for = _dsn_for(rec, failed, delayed)
    if dsn_for and (prepared is None or prepared[1] != dsn_for):
        # the record changed since the DSN was built: leave them failed (or unwarned) for the next pass
        failed = []
        for i in delayed:
            rec["rcpts"][i].pop("warned", None)
            if rec["rcpts"][i].get("delivered"):
                rec["rcpts"][i]["notice"] = True
    elif dsn_for:
        assert prepared is not None
        effect.bounce, effect.dsn_to = _store_bounce(store, txn, rec, prepared[0], loc_of[up.qid],
                                                     metas.get(up.qid), up.now)
    for i in failed:
        rec["rcpts"][i]["state"] = "bounced"
    if old_key is not None:
        txn.delete(old_key, db=db["schedule"])
    live = [r for r in rec["rcpts"] if r["state"] in ("queued", "deferred", "failed") or r.get("notice")]
    if not live:
        txn.delete(up.qid, db=db["queue"])
        loc = store._unref_blob(txn, up.qid)
        if loc:
            released.append(loc)
        effect.removed = True
        return effect
    txn.put(up.qid, R.dumps(rec), db=db["queue"])
    if not rec.get("held"):
        txn.put(schedule_key(up.qid, rec["next_attempt"]), b"", db=db["schedule"])
        effect.next_attempt = rec["next_attempt"]
    return effect


def _store_bounce(store: Store, txn: lmdb.Transaction, rec: dict[str, Any], body: bytes, loc: bytes,
                  meta: Any, now: float) -> tuple[str | None, str]:
    """Deliver the DSN: into the sender's INBOX when the sender is local, else queued from <>."""
    sender = rec["sender"]
    qid = new_qid()
    if store.is_local_domain(domain_of(sender), txn):
        found = store.resolve(sender, txn)
        users = found[0] if found else []
        if not users:
            log.event("dsn_dropped", qid=rec["id"], sender=sender, reason="local sender has no mailbox")
            return None, ""
        item = Incoming(qid=qid, raw=body, sender="", local=users, meta=meta)
        where = "local"
    else:
        item = Incoming(qid=qid, raw=body, sender="", local=[], meta=meta,
                        remote=[{"to": sender, "rcpt": sender, "notify": None, "orcpt": None}],
                        params={"ret": None, "envid": None, "body": "8BITMIME", "smtputf8": False, "dsn_of": rec["id"]})
        where = "remote"
    outcome = store._deliver(txn, item, loc, int(now))
    if outcome.over_quota:
        log.event("dsn_dropped", qid=rec["id"], sender=sender, reason="over quota")
        if len(outcome.over_quota) == len(item.local):
            return None, ""
    return qid.hex(), where


# -- operator actions (fastmail queue ...) ----------------------------------------------------------------

def _modify(store: Store, qid: str, fn: Any) -> dict[str, Any]:
    try:
        key = bytes.fromhex(qid)
    except ValueError:
        raise StoreError(f"no queue entry {qid}") from None

    def op(txn: lmdb.Transaction) -> dict[str, Any]:
        raw = txn.get(key, db=store.db["queue"])
        if raw is None:
            raise StoreError(f"no queue entry {qid}")
        rec = R.loads(raw)
        if not rec.get("held"):
            txn.delete(schedule_key(key, rec["next_attempt"]), db=store.db["schedule"])
        fn(rec)
        txn.put(key, R.dumps(rec), db=store.db["queue"])
        if not rec.get("held"):
            txn.put(schedule_key(key, rec["next_attempt"]), b"", db=store.db["schedule"])
        return rec

    result: dict[str, Any] = store._writing(op)
    return result


def retry_now(store: Store, qid: str) -> dict[str, Any]:
    def fn(rec: dict[str, Any]) -> None:
        if rec.get("held"):
            raise StoreError(f"queue entry {qid} is held: release it")
        rec["next_attempt"] = time.time()

    return _modify(store, qid, fn)


def hold(store: Store, qid: str) -> dict[str, Any]:
    return _modify(store, qid, lambda rec: rec.update(held=True))


def release(store: Store, qid: str) -> dict[str, Any]:
    return _modify(store, qid, lambda rec: rec.update(held=False, next_attempt=time.time()))


def bounce(store: Store, qid: str) -> dict[str, Any]:
    """Fail every pending recipient now; the delivery process makes the DSN at once."""
    def fn(rec: dict[str, Any]) -> None:
        now = time.time()
        for r in rec["rcpts"]:
            if r["state"] in PENDING:
                r.update(state="failed", status="5.0.0", at=now,
                         reply=f"{r.get('reply') + '; ' if r.get('reply') else ''}returned by the postmaster")
        rec["held"] = False
        rec["next_attempt"] = now

    return _modify(store, qid, fn)


def hold_all(store: Store, match: Callable[[dict[str, Any]], bool] | None = None,
             on_commit: Callable[[int], None] | None = None) -> int:
    """Hold every entry (that `match`es); how many were held."""
    return _modify_all(store, lambda rec: not rec.get("held") and (match is None or match(rec)),
                       lambda rec, now: rec.update(held=True), on_commit)


def release_all(store: Store, match: Callable[[dict[str, Any]], bool] | None = None,
                on_commit: Callable[[int], None] | None = None) -> int:
    """End the hold of every held entry (that `match`es), each due at once; how many were released."""
    return _modify_all(store, lambda rec: bool(rec.get("held")) and (match is None or match(rec)),
                       lambda rec, now: rec.update(held=False, next_attempt=now), on_commit)


BULK = 1000  # entries changed per transaction by the bulk operator actions (write transactions stay short)


def _modify_all(store: Store, select: Callable[[dict[str, Any]], bool],
                change: Callable[[dict[str, Any], float], None], on_commit: Callable[[int], None] | None) -> int:
    """Apply `change` to every entry `select` picks, BULK entries per synced transaction, in queue order;
    `on_commit(n)` after each (e.g. to wake the delivery processes: the first released entries go while the
    rest is being released)."""
    done = 0
    after = b""
    while True:
        with store.read() as txn:  # the next BULK entries to change, from where the last chunk ended
            cursor = txn.cursor(db=store.db["queue"])
            chunk: list[bytes] = []
            if cursor.set_range(after):
                for k, v in cursor:
                    if k == after:
                        continue
                    if select(R.loads(v)):
                        chunk.append(bytes(k))
                        if len(chunk) >= BULK:
                            break
                    after = bytes(k)
        if not chunk:
            return done
        after = chunk[-1]

        def op(txn: lmdb.Transaction, chunk: list[bytes] = chunk) -> int:
            changed = 0
            now = time.time()
            for key in chunk:
                raw = txn.get(key, db=store.db["queue"])
                if raw is None:
                    continue  # gone meanwhile
                rec = R.loads(raw)
                if not select(rec):
                    continue  # changed meanwhile
                if not rec.get("held"):
                    txn.delete(schedule_key(key, rec["next_attempt"]), db=store.db["schedule"])
                change(rec, now)
                txn.put(key, R.dumps(rec), db=store.db["queue"])
                if not rec.get("held"):
                    txn.put(schedule_key(key, rec["next_attempt"]), b"", db=store.db["schedule"])
                changed += 1
            return changed

        n: int = store._writing(op)
        done += n
        if on_commit is not None and n:
            on_commit(n)


def summary_state(rec: dict[str, Any]) -> str:
    """One word for the entry: held, failed (a DSN is due), deferred (tried, waiting), queued (not tried)."""
    if rec.get("held"):
        return "held"
    states = {r["state"] for r in rec["rcpts"]}
    for s in ("failed", "deferred", "queued"):
        if s in states:
            return s
    return "done"
