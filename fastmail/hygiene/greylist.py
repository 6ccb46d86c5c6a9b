"""Greylisting (RFC 6647): the first message of an unknown (client network, envelope sender, recipient)
triplet gets a temporary failure at RCPT; a real MTA retries and passes, most spamware does not.

- The client is its network: the /24 of an IPv4 address, the /64 of an IPv6 one (RFC 6647 §4.2: large
  senders retry from another address of the same pool).
- The sender is normalized so that a per-message envelope sender (VERP, BATV, SRS, "+tag") still makes the
  same triplet (§4.5 lists these): lower case, a "prvs=TAG=" prefix and a "+tag" dropped, runs of digits
  replaced by "#".  The null sender is "".
- A triplet seen for the first time, or whose retry came after `expire`, is recorded and refused
  (451 4.7.1, with the seconds to wait).  A retry before `delay` is refused again without resetting the
  clock (§4.3).  A retry between `delay` and `expire` passes, and the triplet then passes for `retain`
  seconds after its last message (§4.2.2: about a month).
- Auto-whitelist (§4.4): once `auto_whitelist` messages of a client network have passed (counted once per
  SMTP transaction), the network is no longer greylisted, as long as it sends at least once per `retain`.
- Never greylisted (decided by the caller, fastmail.server.smtp): authenticated sessions, the submission
  and LMTP listeners, smtp.trusted_networks; and here: greylist.whitelist networks and the envelope sender
  domains (with their subdomains) of greylist.whitelist_domains.

Records (fastmail.hygiene.state): "greylist": NET \\0 SENDER \\0 RCPT -> version 1, first seen, last seen
(float64 seconds), passed (u8); "clients": NET -> version 1, passes (u32), last pass (float64).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import lmdb

from fastmail import log
from fastmail.hygiene.state import HygieneState
from fastmail.proto.replies import Reply

VERSION = 1
_TRIPLET = struct.Struct(">BddB")
_CLIENT = struct.Struct(">BId")
TOUCH = 60.0  # a passing triplet's "last seen" is rewritten at most this often (fewer writes)

_PRVS = re.compile(r"^(?:prvs|msprvs\d*|btv1)=[^=]*=", re.IGNORECASE)  # BATV (draft-levine-smtp-batv)
_DIGITS = re.compile(r"\d+")


def greylisted(wait: float) -> Reply:
    """451 4.7.1 with the retry hint (RFC 6647 §4.3: say it is temporary, and when to come back)."""
    seconds = max(1, int(wait + 0.999))
    return Reply(451, "4.7.1", f"Greylisted: please try again in {seconds} seconds")


def client_net(ip: str) -> str:
    """The client's network for the triplet: /24 of IPv4, /64 of IPv6 (IPv4-mapped IPv6 as IPv4)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def normalize_sender(sender: str) -> str:
    """The envelope sender as the triplet keeps it (module doc); "" for the null sender."""
    if not sender:
        return ""
    local, at, domain = sender.lower().rpartition("@")
    if not at:
        local, domain = domain, ""
    local = _PRVS.sub("", local)
    if local.startswith(("srs0=", "srs1=")):
        local = "srs"  # SRS rewrites per message; the forwarder's domain stays
    local = local.split("+", 1)[0] if not local.startswith("+") else local
    return _DIGITS.sub("#", local) + (f"@{domain}" if domain else "")


@dataclass(frozen=True)
class Decision:
    outcome: str  # "greylisted", "pass", "whitelisted" (config), "awl" (auto-whitelisted), "error"
    wait: float = 0.0  # seconds still to wait, for "greylisted"

    @property
    def reply(self) -> Reply | None:
        return greylisted(self.wait) if self.outcome == "greylisted" else None


class Greylist:
    def __init__(self, state: HygieneState, *, delay: float, expire: float, retain: float,
                 auto_whitelist: int, whitelist: Iterable[str] = (), whitelist_domains: Iterable[str] = ()) -> None:
        self.state = state
        self.delay = delay
        self.expire = expire
        self.retain = retain
        self.auto_whitelist = auto_whitelist
        self.networks = [ipaddress.ip_network(n, strict=False) for n in whitelist]
        self.domains = {d.lower().strip(".") for d in whitelist_domains}
        self._resume: dict[str, bytes] = {}  # purge position per table
        state.on_purge(self._purge)

    def whitelisted(self, ip: str, sender: str) -> bool:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.networks):
            return True
        domain = sender.rpartition("@")[2].lower() if "@" in sender else ""
        while domain:
            if domain in self.domains:
                return True
            domain = domain.partition(".")[2]
        return False

    def check(self, ip: str, sender: str, rcpt: str, *, count: bool = True) -> Decision:
        """The decision for one RCPT.  `count`: a pass counts towards the client's auto-whitelisting (the
        caller says True for the first passing recipient of a transaction only).  A state that cannot be
        read or written lets the message pass ("error", logged)."""
        if self.whitelisted(ip, sender):
            return Decision("whitelisted")
        net = client_net(ip)
        key = "\0".join((net, normalize_sender(sender), rcpt.lower())).encode("utf-8", "surrogateescape")
        try:
            decision = self._decide(net.encode(), key, count)
        except lmdb.Error as e:
            log.event("greylist_unavailable", level=logging.WARNING, error=repr(e))
            return Decision("error")
        self.state.maybe_purge()
        return decision

    def _decide(self, net: bytes, key: bytes, count: bool) -> Decision:
        state = self.state
        now = state.clock()
        grey, clients = state.db["greylist"], state.db["clients"]
        with state.write() as txn:
            client = txn.get(net, db=clients)
            passes, last_pass = _client(client)
            if self.auto_whitelist and passes >= self.auto_whitelist and now - last_pass <= self.retain:
                if count and now - last_pass > TOUCH:
                    txn.put(net, _CLIENT.pack(VERSION, passes, now), db=clients)
                return Decision("awl")
            record = txn.get(key, db=grey)
            first, last, passed = _triplet(record)
            fresh = record is None or (passed and now - last > self.retain) or \
                (not passed and now - first > self.expire)
            if fresh:
                txn.put(key, _TRIPLET.pack(VERSION, now, now, 0), db=grey)
                return Decision("greylisted", self.delay)
            if not passed:
                if now - first < self.delay:
                    return Decision("greylisted", self.delay - (now - first))
                txn.put(key, _TRIPLET.pack(VERSION, first, now, 1), db=grey)
            elif now - last > TOUCH:
                txn.put(key, _TRIPLET.pack(VERSION, first, now, 1), db=grey)
            if count:
                if now - last_pass > self.retain:
                    passes = 0  # a network that went quiet starts again
                txn.put(net, _CLIENT.pack(VERSION, passes + 1, now), db=clients)
            return Decision("pass")

    def _purge(self, txn: lmdb.Transaction, now: float, budget: int) -> int:
        """Delete expired triplets and forgotten clients, looking at up to `budget` records of each table
        from where the last purge stopped."""
        removed = 0
        for table, stale in (("greylist", self._stale_triplet), ("clients", self._stale_client)):
            cursor = txn.cursor(db=self.state.db[table])
            start = self._resume.get(table, b"")
            found = cursor.set_range(start) if start else cursor.first()
            seen = 0
            while found and seen < budget:
                seen += 1
                if stale(cursor.value(), now):
                    found = cursor.delete()  # moves to the next record
                    removed += 1
                    if found and not cursor.key():
                        found = False
                else:
                    found = cursor.next()
            self._resume[table] = bytes(cursor.key()) if found else b""
        return removed

    def _stale_triplet(self, value: bytes | memoryview, now: float) -> bool:
        first, last, passed = _triplet(value)
        return (now - last > self.retain) if passed else (now - first > self.expire)

    def _stale_client(self, value: bytes | memoryview, now: float) -> bool:
        return now - _client(value)[1] > self.retain


def _triplet(value: bytes | memoryview | None) -> tuple[float, float, bool]:
    if value is None or len(value) != _TRIPLET.size or value[0] != VERSION:
        return 0.0, 0.0, False
    _, first, last, passed = _TRIPLET.unpack(value)
    return first, last, bool(passed)


def _client(value: bytes | memoryview | None) -> tuple[int, float]:
    if value is None or len(value) != _CLIENT.size or value[0] != VERSION:
        return 0, 0.0
    _, passes, last = _CLIENT.unpack(value)
    return passes, last
