"""MTA-STS (RFC 8461): a destination's published demand for authenticated TLS to its listed MX hosts.

`STS.policy(domain)` looks up `_mta-sts.<domain>` TXT (`v=STSv1; id=...`, §3.1); when it names an id not
cached yet (or the cached policy expired) it fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt`
over verified TLS (§3.3: HTTP 200, no redirects, at most 64 KiB, text/plain), parses it (§3.2) and caches
it for its max_age.  A failed lookup or fetch keeps using an unexpired cached policy (§5.1); with none, the
domain has no policy (plain opportunistic TLS).  That a domain publishes no `_mta-sts` record at all is
remembered for NO_POLICY_TTL seconds (most domains publish none: without this, every session to them would
cost a TXT question), and one lookup per domain runs at a time (the others wait for its answer).

Enforcement is the runner's (§5): in mode `enforce` only MX hosts matching a pattern are used, STARTTLS is
required and the server certificate must verify for the MX host name (else: deferred, never sent in
plain text); in mode `testing` the same checks are only logged; `none` does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass

from fastmail.delivery.dns import DNSError, Resolver

MAX_POLICY = 64 * 1024
MAX_AGE_LIMIT = 31_557_600  # §3.2: at most one year
NO_POLICY_TTL = 300.0  # seconds a domain found without a TXT record is taken to have no policy


@dataclass(frozen=True)
class Policy:
    id: str
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: int
    fetched: float = 0.0

    def expired(self, now: float) -> bool:
        return now >= self.fetched + self.max_age

    def allows(self, host: str) -> bool:
        return any(mx_matches(p, host) for p in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: a pattern is a host name, or "*." and a domain matching exactly one more leftmost label."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first and dot) and rest == pattern[2:]
    return host == pattern


def parse_txt(records: list[bytes]) -> str | None:
    """The policy id of the one `v=STSv1` TXT record (§3.1); None when there is not exactly one valid."""
    found = []
    for raw in records:
        text = raw.decode("ascii", "replace").strip()
        if not text.startswith("v=STSv1"):
            continue
        fields = dict(f.strip().partition("=")[::2] for f in text.split(";") if f.strip())
        ident = fields.get("id", "")
        if fields.get("v") == "STSv1" and ident and len(ident) <= 32 and ident.isalnum():
            found.append(ident)
    return found[0] if len(found) == 1 else None


def parse_policy(text: str, ident: str, now: float) -> Policy | None:
    """§3.2: "key: value" lines; version STSv1, a mode, max_age, and mx lines unless mode is none."""
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    mode = (fields.get("mode") or [""])[0]
    age = (fields.get("max_age") or [""])[0]
    mx = tuple(fields.get("mx", []))
    if (fields.get("version") or [""])[0] != "STSv1" or mode not in ("enforce", "testing", "none"):
        return None
    # ASCII digits only ("²" is a str digit int() refuses); a longer number than max_age's 1*10DIGIT (§3.2) is
    # the limit, without an int() of it (Python refuses over 4,300 digits)
    if not (age.isascii() and age.isdigit()) or (mode != "none" and not mx):
        return None
    return Policy(ident, mode, mx, min(int(age), MAX_AGE_LIMIT) if len(age) <= 10 else MAX_AGE_LIMIT, now)


class STS:
    def __init__(self, resolver: Resolver, tls: ssl.SSLContext, port: int = 443, timeout: float = 60.0) -> None:
        self.resolver = resolver
        self.tls = tls
        self.port = port
        self.timeout = timeout
        self.cache: dict[str, Policy] = {}
        self.none_until: dict[str, float] = {}  # domain -> when to look for a record again
        self._looking: dict[str, asyncio.Task[Policy | None]] = {}
        self.fetches = 0

    def lookup(self, domain: str) -> asyncio.Future[Policy | None] | None:
        """The lookup of `domain`'s policy, under way (shared by everyone asking meanwhile), or None when the
        domain is known to publish none (for now)."""
        until = self.none_until.get(domain)
        if until is not None:
            if until > time.monotonic():
                return None
            del self.none_until[domain]
        task = self._looking.get(domain)
        if task is None:
            task = self._looking[domain] = asyncio.ensure_future(self._policy(domain))
            task.add_done_callback(lambda t: self._looking.pop(domain, None) if self._looking.get(domain) is t else None)
        return task

    async def policy(self, domain: str) -> Policy | None:
        task = self.lookup(domain)
        # shielded: a caller that is cancelled leaves the lookup to the others waiting for it
        return None if task is None else await asyncio.shield(task)

    async def _policy(self, domain: str) -> Policy | None:
        now = time.time()
        cached = self.cache.get(domain)
        if cached is not None and cached.expired(now):
            cached = None
            self.cache.pop(domain, None)
        try:
            ident = parse_txt(await self.resolver.txt(f"_mta-sts.{domain}"))
        except DNSError:
            return cached
        if ident is None:
            if cached is None:
                if len(self.none_until) >= 10_000:
                    self.none_until.clear()
                self.none_until[domain] = time.monotonic() + NO_POLICY_TTL
            return cached  # §5.1: no record: an unexpired cached policy still holds
        if cached is not None and cached.id == ident:
            return cached
        try:
            text = await asyncio.wait_for(self._fetch(domain), self.timeout)
        except (OSError, ssl.SSLError, TimeoutError, ValueError, DNSError):
            return cached
        policy = parse_policy(text, ident, now)
        if policy is None:
            return cached
        self.cache[domain] = policy
        return policy

    async def _fetch(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        addresses = await self.resolver.addresses(host)
        if not addresses:
            raise ValueError(f"{host} has no address")
        self.fetches += 1
        reader, writer = await asyncio.open_connection(addresses[0], self.port, ssl=self.tls, server_hostname=host)
        try:
            writer.write(f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                         "User-Agent: fastmail\r\n\r\n".encode())
            data = await reader.read(MAX_POLICY + 4096)
            while len(data) <= MAX_POLICY + 4096:
                more = await reader.read(MAX_POLICY + 4096 - len(data) + 1)
                if not more:
                    break
                data += more
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        head, sep, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not sep or len(lines[0].split()) < 2 or lines[0].split()[1] != "200":
            raise ValueError(f"policy fetch: {lines[0][:80]!r}")  # §3.3: no redirects either
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        if not headers.get("content-type", "").lower().startswith("text/plain"):
            raise ValueError("policy fetch: not text/plain")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = _unchunk(body)
        if len(body) > MAX_POLICY:
            raise ValueError("policy too large")
        return body.decode("utf-8")


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out
