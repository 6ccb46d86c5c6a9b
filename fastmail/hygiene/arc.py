"""ARC (RFC 8617) chain validation over dkimpy's `arc_verify`.

dkimpy has no async ARC verifier (its async support covers DKIM only), and its `arc_verify` asks a
synchronous dnsfunc for every key.  What this module chose: read the ARC sets first, fetch every key the
chain names (ARC-Message-Signature and ARC-Seal s=/d=) concurrently through the caller's async
`txt_lookup`, then run the synchronous `arc_verify` with a dnsfunc that answers from those pre-fetched
records.  The event loop never blocks on DNS and no thread is needed; what runs synchronously is only
hashing and a few signature checks.  (The alternative — `arc_verify` in a thread, its dnsfunc hopping back
onto the loop per key — costs a thread per message and serial lookups.)

Results are those of the "arc" method of Authentication-Results (RFC 8617 §10.1): none, pass, fail; and
temperror when the chain failed only where a key lookup failed temporarily, so a DNS outage does not read
as a broken chain.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import dkim
import dkim.util

from fastmail.delivery.dns import DNSTemporary
from fastmail.hygiene.deadline import within
from fastmail.hygiene.dkim import MIN_RSA_BITS, TXTLookup, key_record
from fastmail.hygiene.message import Message
from fastmail.hygiene.message import parse as parse_message

Status = Literal["none", "pass", "fail", "temperror"]

MAX_INSTANCE = 50  # RFC 8617 §4.2.1: i= is 1..50
_LOOKUP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ARCResult:
    """`cv` is the cv= of the newest ARC-Seal (what the last sealer found: none/pass/fail, "" without a
    chain); `result` is this validation's Chain Validation Status (RFC 8617 §5.2), the cv= we would seal
    with.  `domain` is the newest sealer's d= (for a local list of trusted sealers), `aar` its
    ARC-Authentication-Results, `reason` is for logs."""

    result: Status
    cv: str = ""
    instance: int = 0  # the newest i=, 0 without a chain
    domain: str = ""
    aar: str = ""
    reason: str = ""


async def verify(message: bytes | Message, *, txt_lookup: TXTLookup, minkey: int = MIN_RSA_BITS,
                 timeout: float | None = _LOOKUP_TIMEOUT) -> ARCResult:
    """Validate the ARC chain of `message` (RFC 8617 §5.2).  `message` may come parsed
    (fastmail.hygiene.message), as the inbound checks share one parse.  `timeout` bounds each key lookup;
    None sets no timer (the caller bounds the validation)."""
    msg = parse_message(message)
    known = without_lookups(msg)
    if known is not None:
        return known
    message = msg.raw
    try:
        signer = dkim.ARC(message)
        newest, sets = signer.sorted_arc_headers()
    except dkim.DKIMException as e:
        return ARCResult(result="fail", reason=f"unparsable message: {e}")
    if newest == 0:
        return ARCResult(result="none", reason="no ARC sets")
    seal = _newest_seal(sets, newest)
    described = ARCResult(result="fail", cv=seal.get(b"cv", b"").decode("ascii", "replace"), instance=newest,
                          domain=seal.get(b"d", b"").decode("ascii", "replace").lower(),
                          aar=_newest_aar(sets, newest))
    if newest > MAX_INSTANCE:
        return _with(described, "fail", f"i={newest} is above {MAX_INSTANCE} (RFC 8617 §4.2.1)")

    names = _key_names(sets)
    fetched = await asyncio.gather(*(_fetch(name, txt_lookup, timeout) for name in names))
    records = dict(zip(names, fetched, strict=True))
    temporary = {name for name, record in records.items() if isinstance(record, _Temporary)}
    consulted: set[bytes] = set()

    def dnsfunc(name: bytes, timeout: float | None = timeout) -> bytes | None:
        key = _norm(name)
        consulted.add(key)
        record = records.get(key)
        return record if isinstance(record, bytes) else None

    cv, _, reason = dkim.arc_verify(message, dnsfunc=dnsfunc, minkey=minkey)
    if cv == dkim.CV_Pass:
        return _with(described, "pass", reason)
    if cv == dkim.CV_None:
        return _with(described, "none", reason)
    # CV_Fail, or None for a chain an earlier sealer already marked cv=fail (§5.2 step 2): fail.
    if temporary & consulted:
        return _with(described, "temperror", f"key lookup failed: {b', '.join(sorted(temporary & consulted)).decode()}")
    return _with(described, "fail", reason)


def without_lookups(msg: Message) -> ARCResult | None:
    """The result of verify() when it needs no key: an unparsable message (fail), one without any field of an
    ARC set (none: what dkimpy's sorted_arc_headers() finds after canonicalizing every field of the message,
    known here from the field names alone); None otherwise."""
    if msg.error:
        return ARCResult(result="fail", reason=f"unparsable message: {msg.error}")
    if not msg.has_arc:
        return ARCResult(result="none", reason="no ARC sets")
    return None


def _with(result: ARCResult, status: Status, reason: str) -> ARCResult:
    return ARCResult(result=status, cv=result.cv, instance=result.instance, domain=result.domain,
                     aar=result.aar, reason=reason)


class _Temporary:
    """Marks a key whose lookup failed for now."""


def _norm(name: bytes) -> bytes:
    return name.lower().rstrip(b".")


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(value)
    except Exception:  # dkimpy's InvalidTagValueList, or ValueError on odd bytes: dkimpy will fail the set
        return {}
    return tags


def _key_names(sets: list[tuple[int, tuple[bytes, bytes]]]) -> list[bytes]:
    """Every SELECTOR._domainkey.DOMAIN of the ARC-Message-Signature and ARC-Seal fields (RFC 8617 §4.1.2,
    §4.1.3: their keys are published like DKIM keys, RFC 6376 §3.6.2.1), once each."""
    names: list[bytes] = []
    for _, (field, value) in sets:
        if field.lower() not in (b"arc-seal", b"arc-message-signature"):
            continue
        tags = _tags(value)
        if b"s" in tags and b"d" in tags:
            name = _norm(tags[b"s"] + b"._domainkey." + tags[b"d"])
            if name not in names:
                names.append(name)
    return names


async def _fetch(name: bytes, txt_lookup: TXTLookup, timeout: float | None) -> bytes | _Temporary | None:
    """The key record at `name` (RFC 6376 §3.6.2.2, see dkim.key_record), None without one."""
    try:
        end = None if timeout is None else asyncio.get_running_loop().time() + timeout
        records = await within(txt_lookup(name.decode("ascii", "replace")), end)
    except (DNSTemporary, TimeoutError):
        return _Temporary()
    return key_record(records)


def _newest_seal(sets: list[tuple[int, tuple[bytes, bytes]]], newest: int) -> dict[bytes, bytes]:
    for i, (field, value) in sets:
        if i == newest and field.lower() == b"arc-seal":
            return _tags(value)
    return {}


def _newest_aar(sets: list[tuple[int, tuple[bytes, bytes]]], newest: int) -> str:
    for i, (field, value) in sets:
        if i == newest and field.lower() == b"arc-authentication-results":
            return value.decode("utf-8", "replace").strip()
    return ""
