"""fastmail.hygiene.arc against a real DNS server on 127.0.0.1 (dnslib): chains sealed by dkimpy's
arc_sign (one hop, two hops) validate, tampered ones fail, a missing chain is none, an unreachable key is
temperror.  arc_sign needs the `authres` package (dkimpy's ARC extra); verification does not."""

from __future__ import annotations

import re
from collections.abc import Iterator

import authres  # noqa: F401  # dkimpy's arc_sign needs it (the test extra installs it): fail, never skip
import dkim as dkimpy
import pytest

from fastmail.hygiene import arc, dkim
from tests.integration.dnsserver import LocalDNS, run_with_resolver

ORIGINAL = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: list@lists.example.org\r\n"
    b"Subject: meeting\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"\r\n"
    b"See you at ten.\r\n"
)

KEYS: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    d = LocalDNS().start()
    for domain in ("lists.example.org", "relay.example.net"):
        pem, record = dkim.keygen(domain, "arc", "rsa-sha256")
        d.set(f"arc._domainkey.{domain}", ("TXT", re.findall(r'"([^"]*)"', record)))
        KEYS[domain] = pem
    d.servfail.add("arc._domainkey.broken.example")
    yield d
    d.stop()


def seal(message: bytes, domain: str, results: str) -> bytes:
    """What an ARC sealer does: its Authentication-Results, then an ARC set over the message."""
    srv_id = f"mx.{domain}"
    with_ar = f"Authentication-Results: {srv_id}; {results}\r\n".encode() + message
    arc_set = dkimpy.arc_sign(with_ar, b"arc", domain.encode(), KEYS[domain], srv_id.encode())
    assert len(arc_set) == 3
    return b"".join(arc_set) + with_ar


def one_hop() -> bytes:
    return seal(ORIGINAL, "lists.example.org", "spf=pass smtp.mailfrom=example.com; dkim=none")


def two_hops() -> bytes:
    return seal(one_hop(), "relay.example.net", "arc=pass; spf=fail smtp.mailfrom=lists.example.org")


def verify(dns: LocalDNS, message: bytes) -> arc.ARCResult:
    return run_with_resolver(dns, lambda r: arc.verify(message, txt_lookup=r.txt))


def test_no_chain_is_none(dns):
    r = verify(dns, ORIGINAL)
    assert (r.result, r.cv, r.instance) == ("none", "", 0)


def test_one_hop_chain_passes(dns):
    r = verify(dns, one_hop())
    assert (r.result, r.cv, r.instance, r.domain) == ("pass", "none", 1, "lists.example.org")
    assert "spf=pass" in r.aar


def test_two_hop_chain_passes(dns):
    dns.asked.clear()
    r = verify(dns, two_hops())
    assert (r.result, r.cv, r.instance, r.domain) == ("pass", "pass", 2, "relay.example.net")
    # the keys were fetched once each, up front
    keys = [q for q in dns.asked if q[0].endswith("._domainkey.lists.example.org")
            or q[0].endswith("._domainkey.relay.example.net")]
    assert sorted(keys) == [("arc._domainkey.lists.example.org", "TXT"), ("arc._domainkey.relay.example.net", "TXT")]


def test_tampered_body_fails(dns):
    r = verify(dns, two_hops().replace(b"at ten.", b"at eleven."))
    assert r.result == "fail"
    assert r.instance == 2


def test_tampered_seal_or_aar_fails(dns):
    message = two_hops()
    # the first hop's recorded results, rewritten: only its ARC-Seal covers them
    forged = message.replace(b"i=1; mx.lists.example.org;\r\n spf=pass", b"i=1; mx.lists.example.org;\r\n spf=fail")
    assert forged != message
    assert verify(dns, forged).result == "fail"
    # an Authentication-Results field is not part of the chain: changing one breaks nothing
    loose = message.replace(b"Authentication-Results: mx.lists.example.org; spf=pass",
                            b"Authentication-Results: mx.lists.example.org; spf=fail")
    assert loose != message
    assert verify(dns, loose).result == "pass"
    # a header signed by the newest AMS, changed
    assert verify(dns, message.replace(b"Subject: meeting", b"Subject: urgent")).result == "fail"


def test_missing_key_fails(dns):
    message = one_hop().replace(b"s=arc;", b"s=gone;")
    r = verify(dns, message)
    assert r.result == "fail"


def test_unreachable_key_is_temperror(dns):
    message = one_hop().replace(b"d=lists.example.org;", b"d=broken.example;")
    r = verify(dns, message)
    assert r.result == "temperror"
    assert "broken.example" in r.reason


def test_dkimpy_sync_verifier_agrees(dns):
    from dnslib import DNSRecord

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        reply = DNSRecord.parse(DNSRecord.question(name.decode(), "TXT").send("127.0.0.1", dns.port, timeout=2))
        return b"".join(b"".join(rr.rdata.data) for rr in reply.rr) or None

    assert dkimpy.arc_verify(two_hops(), dnsfunc=dnsfunc)[0] == dkimpy.CV_Pass


def test_chain_marked_failed_by_a_sealer_fails(dns):
    # the second hop found the chain broken and sealed with cv=fail (RFC 8617 §5.1.1): the chain has ended
    broken = one_hop().replace(b"at ten.", b"at eleven.")
    message = seal(broken, "relay.example.net", "arc=fail; spf=fail smtp.mailfrom=lists.example.org")
    r = verify(dns, message)
    assert (r.result, r.cv, r.instance) == ("fail", "fail", 2)
