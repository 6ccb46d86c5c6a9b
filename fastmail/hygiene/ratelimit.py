"""Rate limits per client address and per authenticated user, shared by the workers of a node
(fastmail.hygiene.state).

Each limit counts events in a sliding window, estimated from two fixed windows the way most rate limiters
do: the count of the current window plus the previous window's count weighted by how much of it still
overlaps the sliding one.  That needs one short record per key — version 1, start of the current window
(float64), window length (float64), current count (u32), previous count (u32) — and no list of timestamps.

- `hit()` counts an event if it stays within the limit and says whether it did, in one write transaction:
  for connections (a refused connection is not counted, so a client hammering a closed door gets in again
  once its rate falls).
- `over()` only looks and `add()` only counts: for messages, looked at MAIL and counted once accepted.

Keys: an IPv4 address as it is, an IPv6 address by its /64 (one host usually holds the whole /64);
an authenticated user by its lower-case login.  A state that cannot be read or written lets everything
through (logged): rate limits are a defence, not a reason to refuse mail when a disk is full.
"""

from __future__ import annotations

import ipaddress
import logging
import struct

import lmdb

from fastmail import log
from fastmail.hygiene.state import HygieneState
from fastmail.proto.replies import Reply

VERSION = 1
_RECORD = struct.Struct(">BddII")

TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address, try again later")
TOO_MANY_MESSAGES = Reply(451, "4.7.1", "Too many messages, try again later")

CONNECTIONS = b"c"  # per client address, at connect
MESSAGES_IP = b"m"  # per client address, unauthenticated messages
MESSAGES_USER = b"u"  # per authenticated user


def ip_key(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class RateLimiter:
    def __init__(self, state: HygieneState) -> None:
        self.state = state
        self._resume = b""
        state.on_purge(self._purge)

    def hit(self, kind: bytes, key: str, limit: int, window: float) -> bool:
        """Count one event unless it would pass `limit` events per `window` seconds; True when counted."""
        if limit <= 0:
            return True
        k = kind + b"\0" + key.encode("utf-8", "surrogateescape")
        try:
            with self.state.write() as txn:
                now = self.state.clock()
                start, cur, prev = _roll(txn.get(k, db=self.state.db["rate"]), now, window)
                if _estimate(start, cur, prev, now, window) + 1 > limit:
                    return False
                txn.put(k, _RECORD.pack(VERSION, start, window, cur + 1, prev), db=self.state.db["rate"])
        except lmdb.Error as e:
            log.event("ratelimit_unavailable", level=logging.WARNING, error=repr(e))
            return True
        self.state.maybe_purge()
        return True

    def over(self, kind: bytes, key: str, limit: int, window: float) -> bool:
        """True when `limit` events per `window` seconds have been counted already (the next one is one too
        many)."""
        if limit <= 0:
            return False
        k = kind + b"\0" + key.encode("utf-8", "surrogateescape")
        try:
            with self.state.read() as txn:
                now = self.state.clock()
                start, cur, prev = _roll(txn.get(k, db=self.state.db["rate"]), now, window)
        except lmdb.Error as e:
            log.event("ratelimit_unavailable", level=logging.WARNING, error=repr(e))
            return False
        return _estimate(start, cur, prev, now, window) + 1 > limit

    def add(self, kind: bytes, key: str, window: float, n: int = 1) -> None:
        k = kind + b"\0" + key.encode("utf-8", "surrogateescape")
        try:
            with self.state.write() as txn:
                now = self.state.clock()
                start, cur, prev = _roll(txn.get(k, db=self.state.db["rate"]), now, window)
                txn.put(k, _RECORD.pack(VERSION, start, window, min(cur + n, 0xFFFFFFFF), prev),
                        db=self.state.db["rate"])
        except lmdb.Error as e:
            log.event("ratelimit_unavailable", level=logging.WARNING, error=repr(e))
            return
        self.state.maybe_purge()

    def _purge(self, txn: lmdb.Transaction, now: float, budget: int) -> int:
        """Delete records whose both windows are over (up to `budget` looked at, from where the last
        purge stopped)."""
        cursor = txn.cursor(db=self.state.db["rate"])
        found = cursor.set_range(self._resume) if self._resume else cursor.first()
        seen = removed = 0
        while found and seen < budget:
            seen += 1
            value = cursor.value()
            stale = True
            if len(value) == _RECORD.size and value[0] == VERSION:
                _, start, window, _, _ = _RECORD.unpack(value)
                stale = now >= start + 2 * window
            if stale:
                found = cursor.delete() and bool(cursor.key())
                removed += 1
            else:
                found = cursor.next()
        self._resume = bytes(cursor.key()) if found else b""
        return removed


def _roll(value: bytes | memoryview | None, now: float, window: float) -> tuple[float, int, int]:
    """(start of the current fixed window, its count, the previous window's count) at `now`."""
    aligned = now - now % window
    if value is None or len(value) != _RECORD.size or value[0] != VERSION:
        return aligned, 0, 0
    _, start, old_window, cur, prev = _RECORD.unpack(value)
    if old_window != window:  # the setting changed: start again
        return aligned, 0, 0
    if now < start + window:
        return start, cur, prev
    if now < start + 2 * window:
        return start + window, 0, cur
    return aligned, 0, 0


def _estimate(start: float, cur: int, prev: int, now: float, window: float) -> float:
    """Events in the sliding window ending at `now`: the current count plus the overlapping share of the
    previous window's."""
    overlap = max(0.0, 1.0 - (now - start) / window)
    return cur + prev * overlap
