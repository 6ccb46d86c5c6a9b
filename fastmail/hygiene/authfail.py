"""Failed logins per client address and per account, shared by the workers of a node (fastmail.hygiene.state):
the growing delay of password guessing (docs/hardening.md "Relay, TLS and authentication").

Every login — SMTP AUTH, IMAP LOGIN/AUTHENTICATE, POP3 USER/PASS and AUTH — waits, before its password is
checked, `delay = min(base * 2 ** (n - 1), cap)` seconds, where n is the larger of the recent failures of
its client address and of the account it names (0: no wait).  So the delay doubles with each failure, up to
`auth.throttle_max`, whether the guesses come from one address at many accounts or from many addresses at
one account; it applies to the right password as much as to a wrong one (a client that gives up early
learns nothing), and to an account that does not exist as much as to one that does (no enumeration).
A success forgets the failures of its address and account; so does a quiet `auth.throttle_window` after
the last failure.

Keys: an IPv4 address as it is, an IPv6 address by its /64 (fastmail.hygiene.ratelimit.ip_key); an account
by its lower-case login as typed (known or not).  Record (version 1): failures (u32), time of the last
failure (float64).  A state that cannot be read or written lets the login go on at once (logged): the
throttle is a defence, not a reason to lock users out.
"""

from __future__ import annotations

import logging
import struct

import lmdb

from fastmail import log
from fastmail.hygiene.ratelimit import ip_key
from fastmail.hygiene.state import HygieneState

VERSION = 1
_RECORD = struct.Struct(">BId")
DB = "authfail"
IP = b"i"
ACCOUNT = b"u"


def delay_for(failures: int, base: float, cap: float) -> float:
    """Seconds a login waits after `failures` recent failures: 0, base, 2 base, 4 base ... at most cap."""
    if failures <= 0 or base <= 0:
        return 0.0
    return min(base * 2.0 ** min(failures - 1, 62), cap)


class AuthFailures:
    def __init__(self, state: HygieneState, base: float, cap: float, window: float) -> None:
        self.state = state
        self.base = base
        self.cap = cap
        self.window = window
        self._resume = b""
        state.on_purge(self._purge)

    def _keys(self, ip: str | None, account: str) -> list[bytes]:
        keys = [ACCOUNT + b"\0" + account.lower().encode("utf-8", "surrogateescape")[:512]]
        if ip:
            try:
                keys.append(IP + b"\0" + ip_key(ip).encode())
            except ValueError:
                pass
        return keys

    def _count(self, value: bytes | memoryview | None, now: float) -> int:
        if value is None or len(value) != _RECORD.size or value[0] != VERSION:
            return 0
        _, failures, last = _RECORD.unpack(value)
        return failures if now - last < self.window else 0

    def failures(self, ip: str | None, account: str) -> int:
        """The larger of the recent failures of the address and of the account."""
        try:
            with self.state.read() as txn:
                now = self.state.clock()
                db = self.state.db[DB]
                return max(self._count(txn.get(k, db=db), now) for k in self._keys(ip, account))
        except lmdb.Error as e:
            log.event("authfail_unavailable", level=logging.WARNING, error=repr(e))
            return 0

    def delay(self, ip: str | None, account: str) -> float:
        """Seconds this login waits before its password is checked."""
        return delay_for(self.failures(ip, account), self.base, self.cap)

    def failed(self, ip: str | None, account: str) -> None:
        try:
            with self.state.write() as txn:
                now = self.state.clock()
                db = self.state.db[DB]
                for k in self._keys(ip, account):
                    n = self._count(txn.get(k, db=db), now)
                    txn.put(k, _RECORD.pack(VERSION, min(n + 1, 0xFFFFFFFF), now), db=db)
        except lmdb.Error as e:
            log.event("authfail_unavailable", level=logging.WARNING, error=repr(e))
            return
        self.state.maybe_purge()

    def succeeded(self, ip: str | None, account: str) -> None:
        try:
            with self.state.write() as txn:
                db = self.state.db[DB]
                for k in self._keys(ip, account):
                    txn.delete(k, db=db)
        except lmdb.Error as e:
            log.event("authfail_unavailable", level=logging.WARNING, error=repr(e))

    def _purge(self, txn: lmdb.Transaction, now: float, budget: int) -> int:
        """Delete records older than the window (up to `budget` looked at, from where the last purge
        stopped)."""
        cursor = txn.cursor(db=self.state.db[DB])
        found = cursor.set_range(self._resume) if self._resume else cursor.first()
        seen = 0
        while found and seen < budget:
            seen += 1
            if self._count(cursor.value(), now) == 0:
                found = cursor.delete() and bool(cursor.key())
            else:
                found = cursor.next()
        self._resume = bytes(cursor.key()) if found else b""
        return seen
