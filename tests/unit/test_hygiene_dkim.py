"""fastmail.hygiene.dkim against a real DNS server on 127.0.0.1 (dnslib): keys made by keygen and published
as keygen prints them, signatures by sign() checked by verify() (through fastmail.delivery.dns.Resolver and
through txt_over_aiodns) and by dkimpy's own synchronous dkim.verify; each failure mode maps to its
RFC 8601 result."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import aiodns
import dkim as dkimpy
import pytest
from dnslib import DNSRecord
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastmail.delivery.dns import DNSTemporary
from fastmail.hygiene import dkim
from tests.integration.dnsserver import LocalDNS
from tests.integration.dnsserver import run_with_resolver as run

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <q1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Received: from somewhere by mx.example.net\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"the numbers are   fine.\r\n"
    b"\r\n"
)

KEYS: dict[str, tuple[str, bytes]] = {}  # algorithm -> (selector, private PEM)


def _strings(record: str) -> list[str]:
    """The <character-string>s of a zone-file TXT line as keygen prints it."""
    return re.findall(r'"([^"]*)"', record)


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    d = LocalDNS().start()
    for algorithm, selector in (("ed25519", "ed"), ("rsa-sha256", "rsa")):
        pem, record = dkim.keygen("example.com", selector, algorithm)
        name, _, rest = record.partition(" IN TXT ")
        d.set(name.rstrip("."), ("TXT", _strings(rest)))  # RSA: a multi-string record, as published
        KEYS[algorithm] = (selector, pem)
    pem1024, record1024 = dkim.keygen("example.com", "small", "rsa-sha256", rsa_bits=1024)
    d.set("small._domainkey.example.com", ("TXT", _strings(record1024)))
    KEYS["rsa1024"] = ("small", pem1024)
    d.set("revoked._domainkey.example.com", ("TXT", "v=DKIM1; k=rsa; p="))
    d.set("garbled._domainkey.example.com", ("TXT", "v=DKIM1; k=ed25519; p=not*base64"))
    d.servfail.add("broken._domainkey.example.com")
    yield d
    d.stop()


def verify(dns: LocalDNS, message: bytes) -> list[dkim.DKIMResult]:
    return run(dns, lambda r: dkim.verify(message, txt_lookup=r.txt))


def signed(algorithm: str = "ed25519", message: bytes = MESSAGE, **kw) -> bytes:
    selector, pem = KEYS[algorithm]
    alg = "rsa-sha256" if algorithm.startswith("rsa") else "ed25519"
    return dkim.sign(message, domain="example.com", selector=selector, private_key_pem=pem, algorithm=alg,
                     **kw) + message


def test_keygen_records_are_publishable(dns):
    pem, record = dkim.keygen("example.org", "sel", "ed25519")
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert re.fullmatch(r'sel\._domainkey\.example\.org\. IN TXT "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="', record)
    assert _strings(record) == [dkim.public_record(pem)]

    pem, record = dkim.keygen("example.org.", "big", "rsa-sha256", rsa_bits=4096)
    assert record.startswith('big._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=MII')
    parts = _strings(record)
    assert len(parts) > 1 and all(len(p) <= 255 for p in parts)
    assert "".join(parts) == dkim.public_record(pem)
    with pytest.raises(ValueError):
        dkim.keygen("example.org", "weak", "rsa-sha256", rsa_bits=512)


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa-sha256", "rsa1024"])
def test_our_signature_verifies(dns, algorithm):
    message = signed(algorithm)
    header = message.split(b"\r\n\r\n")[0]
    assert re.search(rb"c=relaxed/relaxed", header)
    [result] = verify(dns, message)
    assert result.result == "pass", result.reason
    assert (result.domain, result.selector) == ("example.com", KEYS[algorithm][0])
    assert result.algorithm == ("ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256")
    b = re.search(rb"\bb=([^;]+)", header.replace(b"\r\n ", b"")).group(1).decode()
    assert result.header_b == b.replace(" ", "")[:12] and len(result.header_b) == 12


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa-sha256"])
def test_our_signature_verifies_with_dkimpy_sync_verify(dns, algorithm):
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        reply = DNSRecord.parse(DNSRecord.question(name.decode(), "TXT").send("127.0.0.1", dns.port, timeout=2))
        return b"".join(b"".join(rr.rdata.data) for rr in reply.rr) or None

    message = signed(algorithm)
    assert dkimpy.verify(message, dnsfunc=dnsfunc) is True
    assert dkimpy.verify(message.replace(b"fine.", b"great."), dnsfunc=dnsfunc) is False


def test_verify_over_aiodns_helper(dns):
    async def main():
        resolver = aiodns.DNSResolver(nameservers=[dns.address], timeout=2.0, tries=1)
        try:
            results = await dkim.verify(signed("rsa-sha256"), txt_lookup=lambda n: dkim.txt_over_aiodns(resolver, n))
            assert await dkim.txt_over_aiodns(resolver, "nothing.example.com") == []
            with pytest.raises(DNSTemporary):
                await dkim.txt_over_aiodns(resolver, "broken._domainkey.example.com")
            return results
        finally:
            resolver.cancel()

    assert [r.result for r in asyncio.run(main())] == ["pass"]


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa-sha256"])
def test_modified_body_fails(dns, algorithm):
    [result] = verify(dns, signed(algorithm).replace(b"fine.", b"great."))
    assert result.result == "fail"
    assert "body hash" in result.reason


def test_relaxed_canonicalization_tolerates_whitespace_and_folding(dns):
    message = signed().replace(b"are   fine.", b"are fine.").replace(b"Subject: quarterly", b"Subject:  quarterly")
    assert [r.result for r in verify(dns, message)] == ["pass"]


def test_modified_or_added_signed_header_fails(dns):
    message = signed()
    assert verify(dns, message.replace(b"quarterly numbers", b"yearly numbers"))[0].result == "fail"
    # From is over-signed: a second From added in transit breaks the signature
    body_at = message.index(b"\r\n\r\n")
    extra = message[:body_at] + b"\r\nFrom: Mallory <ceo@example.com>" + message[body_at:]
    assert verify(dns, extra)[0].result == "fail"
    # fields not signed (Received) may be added
    assert verify(dns, b"Received: by relay.example.org\r\n" + message)[0].result == "pass"


def test_default_signed_headers_oversign():
    headers = [(b"From", b"a"), (b"To", b"b"), (b"Received", b"x"), (b"Subject", b"s"), (b"X-Other", b"y")]
    h = dkim.default_signed_headers(headers)
    assert h.count("from") == 2 and h.count("to") == 2 and h.count("subject") == 2
    assert h.count("reply-to") == 1 and h.count("cc") == 1  # absent: signed as absent
    assert "received" not in h and "x-other" not in h


def test_explicit_header_list(dns):
    message = signed(headers=["From", "Subject"])
    assert re.search(rb"h=from : subject;", message)
    [result] = verify(dns, message)
    assert result.result == "pass"
    with pytest.raises(ValueError, match="From"):
        signed(headers=["Subject"])


def test_sign_rejects_mismatched_key():
    _, pem = KEYS["ed25519"]
    with pytest.raises(ValueError, match="RSA"):
        dkim.sign(MESSAGE, domain="example.com", selector="ed", private_key_pem=pem, algorithm="rsa-sha256")
    with pytest.raises(ValueError):
        dkim.sign(MESSAGE, domain="example.com", selector="ed", private_key_pem=b"not a key", algorithm="ed25519")


def _with_selector(message: bytes, selector: str) -> bytes:
    return re.sub(rb"s=(ed|rsa);", b"s=" + selector.encode() + b";", message, count=1)


def test_missing_key_is_permerror(dns):
    [result] = verify(dns, _with_selector(signed(), "absent"))
    assert result.result == "permerror"
    assert result.selector == "absent"
    assert "missing public key" in result.reason


def test_revoked_and_garbled_keys_are_permerror(dns):
    assert verify(dns, _with_selector(signed("rsa-sha256"), "revoked"))[0].result == "permerror"
    assert verify(dns, _with_selector(signed(), "garbled"))[0].result == "permerror"


def test_servfail_is_temperror(dns):
    [result] = verify(dns, _with_selector(signed(), "broken"))
    assert result.result == "temperror"
    assert ("broken._domainkey.example.com", "TXT") in dns.asked


def test_slow_lookup_is_temperror():
    async def slow(name: str) -> list[bytes]:
        await asyncio.sleep(5)
        return []

    [result] = asyncio.run(dkim.verify(signed(), txt_lookup=slow, timeout=0.05))
    assert result.result == "temperror"


def test_broken_signature_field_is_neutral(dns):
    message = re.sub(rb"bh=[^;]+;", b"", signed(), count=1)
    [result] = verify(dns, message)
    assert result.result == "neutral"
    assert result.domain == "example.com"


def test_no_signature_is_an_empty_list(dns):
    assert verify(dns, MESSAGE) == []


def test_one_result_per_signature_in_order(dns):
    twice = signed("rsa-sha256", signed("ed25519"))
    results = verify(dns, _with_selector(twice, "absent"))  # the top (rsa) signature now names no key
    assert [(r.selector, r.result) for r in results] == [("absent", "permerror"), ("ed", "pass")]


def test_lf_only_message_verifies(dns):
    lf = MESSAGE.replace(b"\r\n", b"\n")
    selector, pem = KEYS["ed25519"]
    field = dkim.sign(lf, domain="example.com", selector=selector, private_key_pem=pem, algorithm="ed25519")
    assert verify(dns, field.replace(b"\r\n", b"\n") + lf)[0].result == "pass"


# -- the tag list and the signature's own checks, as dkimpy's -------------------------------------------

def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args))
    except Exception as e:  # the exception's type and text are the answer
        return (type(e).__name__, str(e))


def _random_signature(rng) -> bytes:  # type: ignore[no-untyped-def]
    import time

    now = int(time.time())
    values = {
        b"v": [b"1", b"2", b""], b"a": [b"rsa-sha256", b"ed25519-sha256", b"rsa-sha1", b"hmac"],
        b"b": [b"dGVzdA==", b"dGVz dA= =", b"abc", b"!!", b"AAAA\r\n\tBBBB"],
        b"bh": [b"dGVzdA==", b"abc", b"AAAA", b"x y"], b"d": [b"example.com", b"Example.COM", b"ex;ample", b"\xc3\xa9.example"],
        b"h": [b"from:to", b"From : Subject"], b"s": [b"sel"],
        b"i": [b"@example.com", b"a@sub.example.com", b"example.com", b"a@badexample.com", b"a@other.org", b"m"],
        b"l": [b"12", b"x", b"1" * 80], b"q": [b"dns/txt", b"dns"], b"cv": [b"pass", b"bogus"],
        b"t": [str(now).encode(), str(now + 99999).encode(), b"t1"],
        b"x": [str(now + 100).encode(), str(now - 99999).encode(), str(now - 10).encode(), b"soon"],
        b"c": [b"relaxed/relaxed"],
    }
    tags = [k for k in values if rng.random() < (0.93 if k in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s") else 0.3)]
    rng.shuffle(tags)
    parts = [k + rng.choice([b"=", b" = ", b"=\r\n\t"]) + rng.choice(values[k]) for k in tags]
    if rng.random() < 0.05 and parts:
        parts.append(parts[0])  # a duplicate tag
    if rng.random() < 0.05:
        parts.append(rng.choice([b"novalue", b"1x=2", b" =y", b""]))
    return b" " + b";".join(parts) + rng.choice([b"", b";", b"; ", b"\r\n"])


def test_tag_parsing_and_signature_checks_answer_as_dkimpy() -> None:
    """parse_tags and validate_signature against dkimpy's parse_tag_value and validate_signature_fields on
    generated DKIM-Signature values: the same dict, or the same exception with the same text."""
    import random

    from dkim.util import parse_tag_value

    rng = random.Random(11)
    kinds = set()
    for _ in range(5000):
        raw = _random_signature(rng)
        ours, theirs = _outcome(dkim.parse_tags, raw), _outcome(parse_tag_value, raw)
        assert ours == theirs, raw
        if ours[0] != "ok":
            kinds.add(ours[0])
            continue
        sig = ours[1]
        theirs = _outcome(dkimpy.validate_signature_fields, dict(sig))
        if theirs[0] == "IndexError":  # dkimpy's crash on an i= no longer than d=: ours says why
            assert _outcome(dkim.validate_signature, sig)[0] == "ValidationError"
        else:
            assert _outcome(dkim.validate_signature, sig) == theirs, raw
        kinds.add(theirs[0] if theirs[0] != "ok" else theirs[1] or "valid")
    assert {"InvalidTagSpec", "DuplicateTag", "ValidationError", "valid"} <= kinds


_B64_PIECES = [b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"=", b"==", b"A", b"z", b"+", b"/", b"09", b"-", b".",
               b"\xff", b"_"]


@given(st.lists(st.sampled_from(_B64_PIECES), max_size=12).map(b"".join))
@example(b"")
@example(b" =")
@example(b"= ")
@example(b"AB==  ")
@settings(max_examples=2000, deadline=None)
def test_is_base64_is_the_expression_dkimpy_uses(value):
    # dkimpy's validate_signature_fields: re.match(rb"[\s0-9A-Za-z+/]+[\s=]*$", b=) ($ and \Z agree here:
    # a final LF is white space, which the expression's last part takes)
    assert dkim._is_base64(value) == (re.match(rb"[\s0-9A-Za-z+/]+[\s=]*\Z", value) is not None)
