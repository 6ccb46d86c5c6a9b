"""Issue #7: the faster code paths of the inbound checks give what dkimpy's own give, on generated input.

- fastmail.hygiene.message: the header section split like dkimpy's rfc822_parse (fields, body, errors);
- fastmail.hygiene.canon: relaxed/simple canonicalization, b= emptying, white-space removal against
  dkimpy's regular expressions;
- fastmail.hygiene.dkim: rsa_verify (OpenSSL) against dkimpy's RSASSA_PKCS1_v1_5_verify,
  and whole verifications against dkimpy's own verifier (the steps this module ran before, kept below as
  the oracle) on signed messages that are then altered;
- fastmail.hygiene.dmarc: the From domains read from the header section only, against the whole message;
- fastmail.hygiene.arc: a message without ARC fields is "none" without dkimpy's parse, as with it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re

import dkim as dkimpy
import dkim.asyncsupport
import dkim.canonicalization as dc
import dkim.crypto  # noqa: F401  (dkimpy.crypto)
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastmail.hygiene import arc, canon, dkim, dmarc, message

# -- message parsing -----------------------------------------------------------------------------------

# Octets that decide how a message splits: line ends, folding white space, colons, the mbox "From " line.
_PIECES = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"From ", b"a", b"B", b"x-y", b"DKIM-Signature",
           b"ARC-Seal", b"\xc3\xa9", b";", b"=", b"\x00", b"\r\n\r\n", b"\n\n", b"\n\r\n"]
messages = st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join)


def _rfc822(raw: bytes) -> tuple[list[list[bytes]], bytes] | str:
    try:
        return dkimpy.rfc822_parse(raw)
    except (dkimpy.MessageFormatError, IndexError) as e:
        return type(e).__name__


def _ours(raw: bytes) -> tuple[list[list[bytes]], bytes] | str:
    msg = message.parse(raw)
    if msg.error:
        return "IndexError" if "continuation" in msg.error else "MessageFormatError"
    return msg.fields, msg.body


@given(messages)
@example(b"From: a\r\n b\r\n\tc\r\nTo: x\r\n\r\nbody\nline\r\n")
@example(b"\r\nonly a body\n")
@example(b" starts with a continuation\r\n\r\n")
@example(b"a:b\r\r\nc:d\n\r\nbody")
@settings(max_examples=1500, deadline=None)
def test_message_parse_is_dkimpys(raw):
    assert _ours(raw) == _rfc822(raw)


@given(messages)
@settings(max_examples=500, deadline=None)
def test_message_parse_errors_read_as_dkimpys(raw):
    msg = message.parse(raw)
    try:
        dkimpy.rfc822_parse(raw)
    except dkimpy.MessageFormatError as e:
        assert msg.error == str(e)
    except IndexError:
        assert msg.error


@given(st.binary(max_size=200), st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n", b""]))
@settings(max_examples=500, deadline=None)
def test_crlf_is_dkimpys_line_split_and_join(data, end):
    data += end
    assert message.crlf(data) == b"\r\n".join(re.split(b"\r?\n", data))


# -- canonicalization ----------------------------------------------------------------------------------

_WSP_PIECES = [b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"a", b"bc", b"\r\r\n",
               b"\n\n", b" \r\n", b"\t\r\n", b"\xff"]
texts = st.lists(st.sampled_from(_WSP_PIECES), max_size=50).map(b"".join)


@given(st.sampled_from([b"Subject", b"FROM", b"x-Y"]), texts)
@settings(max_examples=1500, deadline=None)
def test_relaxed_header_is_dkimpys(name, value):
    assert [canon.relaxed_header(name, value)] == dc.Relaxed.canonicalize_headers([(name, value)])


@given(texts)
@example(b"")
@example(b"\r\n")
@example(b"\r\n\r\n")
@example(b"a \r\n\t\r\n  \r\n")
@settings(max_examples=1500, deadline=None)
def test_body_canonicalization_is_dkimpys(body):
    assert canon.relaxed_body(body) == dc.Relaxed.canonicalize_body(body)
    assert canon.simple_body(body) == dc.Simple.canonicalize_body(body)


_BTAG_PIECES = [b"b", b"=", b";", b" ", b"\t", b"\r\n", b"\n", b"\r", b"A", b"z", b"9", b"+", b"/", b"h",
                b"bh=", b" b=", b";b=", b"\x0b", b"\x0c", b"-", b"b =", b"b\r\n =", b"\r\n "]


@given(st.lists(st.sampled_from(_BTAG_PIECES), max_size=60).map(b"".join))
@settings(max_examples=3000, deadline=None)
def test_without_b_is_dkimpys_re_btag(value):
    assert canon.without_b(value) == dkimpy.RE_BTAG.sub(b"\\1", value)


@given(st.binary(max_size=100))
@settings(max_examples=500, deadline=None)
def test_without_wsp_is_re_sub(value):
    assert canon.without_wsp(value) == re.sub(rb"\s+", b"", value)


# -- RSA through OpenSSL -------------------------------------------------------------------------------

def _small_rsa(bits: int, seed: int) -> rsa.RSAPrivateKey:
    """An RSA key below the 1024 bits cryptography will generate (dkimpy still verifies with one)."""
    rnd = random.Random(seed)

    def prime(n: int) -> int:
        while True:
            p = rnd.getrandbits(n) | (3 << (n - 2)) | 1
            if all(pow(a, p - 1, p) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
                return p

    e = 65537
    while True:
        p, q = prime(bits // 2), prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def _rsa_key(bits: int) -> tuple[rsa.RSAPrivateKey, dict[str, int]]:
    key = _small_rsa(bits, bits) if bits < 1024 else rsa.generate_private_key(public_exponent=65537, key_size=bits)
    numbers = key.public_key().public_numbers()
    return key, {"modulus": numbers.n, "publicExponent": numbers.e}


@pytest.fixture(scope="module")
def rsa_keys() -> dict[int, tuple[rsa.RSAPrivateKey, dict[str, int]]]:
    return {bits: _rsa_key(bits) for bits in (512, 1024, 2048)}


def _pkcs1_sign(key: rsa.RSAPrivateKey, digest: bytes, name: str) -> bytes:
    private = dkimpy.crypto.parse_pem_private_key(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return bytes(dkimpy.crypto.RSASSA_PKCS1_v1_5_sign(hashlib.new(name, digest), private))


def _digest_info_without_null(key_bits: int, h: hashlib._Hash) -> bytes:
    """EMSA-PKCS1-v1_5 with the DigestInfo's NULL parameters left out (an encoding RFC 8017 §9.2 note 2 says
    verifiers should refuse)."""
    oid = b"\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01"
    info = b"\x30" + bytes([len(oid) + 2 + 2 + 32]) + b"\x30" + bytes([len(oid)]) + oid + b"\x04\x20" + h.digest()
    k = (key_bits + 7) // 8
    return b"\x00\x01" + b"\xff" * (k - len(info) - 3) + b"\x00" + info


@pytest.mark.parametrize("bits", [512, 1024, 2048])
def test_rsa_verify_is_dkimpys(rsa_keys, bits):
    key, pk = rsa_keys[bits]
    n = pk["modulus"]
    k = (n.bit_length() + 7) // 8
    for data in (b"", b"message", b"x" * 1000):
        for name in ("sha256", "sha1"):
            h = hashlib.new(name, data)
            good = _pkcs1_sign(key, data, name)
            as_int = int.from_bytes(good, "big")
            raw = pow(int.from_bytes(_digest_info_without_null(bits, h), "big"), key.private_numbers().d, n)
            candidates = [
                good, good[:-1] + bytes([good[-1] ^ 1]), good[1:], b"\0" + good, b"", b"\0" * k,
                (as_int + n).to_bytes(k + 1, "big"),  # above the modulus: dkimpy reduces it, OpenSSL refuses
                (n - 1).to_bytes(k, "big"), n.to_bytes(k, "big"),
                raw.to_bytes(k, "big"),
                _pkcs1_sign(key, data + b".", name),
            ]
            if (as_int + n).bit_length() <= 8 * k:
                candidates.append((as_int + n).to_bytes(k, "big"))
            for signature in candidates:
                expected = dkimpy.crypto.RSASSA_PKCS1_v1_5_verify(hashlib.new(name, data), signature, pk)
                assert dkim.rsa_verify(hashlib.new(name, data), signature, pk) == expected, (name, signature)
            assert dkim.rsa_verify(hashlib.new(name, data), good, pk) is True


# -- whole DKIM verifications against dkimpy's own -----------------------------------------------------

async def _reference_verify_one(message_: bytes, idx: int, txt_lookup, minkey: int, timeout: float) -> dkim.DKIMResult:
    """What dkim._verify_one did before issue #7's work: dkimpy's DKIM object on the whole message."""
    verifier = dkimpy.DKIM(message_, minkey=minkey, timeout=timeout)
    headers, _ = dkimpy.rfc822_parse(message_)
    raw = [value for name, value in headers if name.lower() == b"dkim-signature"][idx]
    try:
        parsed = dkimpy.util.parse_tag_value(raw)
        tags = {dkim._text(k): dkim._text(v) for k, v in parsed.items()}
    except Exception:
        tags = {}

    def result(status, reason):
        return dkim.DKIMResult(
            result=status, domain=tags.get("d", "").lower(), selector=tags.get("s", ""),
            header_b=re.sub(r"\s+", "", tags.get("b", ""))[:dkim.HEADER_B_LEN], identity=tags.get("i", ""),
            algorithm=tags.get("a", ""), reason=reason)

    try:
        sig, include_headers, sigheaders = verifier.verify_headerprep(idx)
    except dkimpy.DKIMException as e:
        return result("neutral", f"signature not usable: {dkim._text(e)}")
    name = sig[b"s"] + b"._domainkey." + sig[b"d"]

    async def dnsfunc(qname, timeout=timeout):
        return await dkim._key_record(qname, txt_lookup, timeout)

    try:
        key = await dkimpy.asyncsupport.load_pk_from_dns_async(name, dnsfunc, timeout=timeout)
    except dkim._KeyLookupTemporary as e:
        return result("temperror", str(e))
    except (dkimpy.DKIMException, ValueError) as e:
        return result("permerror", f"key {dkim._text(name)}: {dkim._text(e)}")
    verifier.pk, verifier.keysize, verifier.ktag, verifier.seqtlsrpt = key
    try:
        ok = verifier.verify_sig_process(sig, include_headers, sigheaders[idx], dnsfunc)
    except dkimpy.ValidationError as e:
        return result("fail", dkim._text(e))
    except (dkimpy.KeyFormatError, dkimpy.UnknownKeyTypeError) as e:
        return result("permerror", dkim._text(e))
    except dkimpy.DKIMException as e:
        return result("neutral", dkim._text(e))
    if not ok:
        return result("fail", "signature did not verify")
    return result("pass", "")


async def _reference_verify(message_: bytes, txt_lookup, minkey: int = 1024, timeout: float = 5.0):
    try:
        headers, _ = dkimpy.rfc822_parse(message_)
    except dkimpy.MessageFormatError:
        return []
    count = min(sum(1 for n, _ in headers if n.lower() == b"dkim-signature"), dkim.MAX_SIGNATURES)
    return [await _reference_verify_one(message_, i, txt_lookup, minkey, timeout) for i in range(count)]


KEYS: dict[str, tuple[bytes, bytes]] = {}  # selector -> (dkimpy's private key form, the TXT record)


def _keys() -> dict[str, tuple[bytes, bytes]]:
    if not KEYS:
        for selector, algorithm, bits in (("ed", "ed25519", 0), ("rsa", "rsa-sha256", 1024),
                                          ("rsa2k", "rsa-sha256", 2048), ("small", "rsa-sha256", 768)):
            if bits and bits < 1024:
                key = _small_rsa(bits, 7)
                pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
                der = key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
                record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
            else:
                pem, _ = dkim.keygen("example.com", selector, algorithm, rsa_bits=bits or 2048)  # type: ignore[arg-type]
                record = dkim.public_record(pem)
            form = dkim._dkimpy_private_key.__wrapped__(pem, "ed25519" if algorithm == "ed25519" else "rsa-sha256") \
                if bits == 0 or bits >= 1024 else pem
            KEYS[selector] = (form, record.encode())
        KEYS["revoked"] = (b"", b"v=DKIM1; k=rsa; p=")
        KEYS["garbled"] = (b"", b"v=DKIM1; k=ed25519; p=not*base64")
    return KEYS


async def _lookup(name: str) -> list[bytes]:
    selector = name.split("._domainkey.")[0]
    if selector == "broken":
        from fastmail.delivery.dns import DNSTemporary
        raise DNSTemporary("4.4.3", "SERVFAIL")
    found = _keys().get(selector)
    return [found[1]] if found is not None else []


BASE = (b"From: Alice <alice@example.com>\r\nTo: Bob <bob@example.net>\r\nSubject: numbers  and\twords\r\n"
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <q1@example.com>\r\n\r\n"
        b"Hello Bob,  \r\nthe numbers\tare   fine.\r\n\r\n\r\n")


def _sign(msg: bytes, selector: str, c: tuple[bytes, bytes], headers: list[bytes], length: bool) -> bytes:
    form = _keys()[selector][0]
    algorithm = b"ed25519-sha256" if selector == "ed" else b"rsa-sha256"
    return dkimpy.DKIM(msg, signature_algorithm=algorithm).sign(
        selector.encode(), b"example.com", form, canonicalize=c, include_headers=headers, length=length) + msg


_MUTATIONS = [
    lambda m: m,
    lambda m: m.replace(b"fine", b"FINE"),
    lambda m: m.replace(b"numbers", b"numbers "),
    lambda m: m.replace(b"\r\n\r\nHello", b"\r\n\r\n Hello"),
    lambda m: m.replace(b"Bob,  \r\n", b"Bob,\r\n"),
    lambda m: m.replace(b"\r\n", b"\n"),
    lambda m: m + b"\r\n\r\n",
    lambda m: m + b"appended\r\n",
    lambda m: m.replace(b"Subject: numbers", b"Subject:  numbers"),
    lambda m: m.replace(b"Subject: numbers", b"subject: numbers"),
    lambda m: m.replace(b"To: Bob", b"To:\r\n Bob"),
    lambda m: b"From: Mallory <m@example.org>\r\n" + m,
    lambda m: m.replace(b"d=example.com", b"d=example.org", 1),
    lambda m: m.replace(b"a=rsa-sha256", b"a=rsa-sha1", 1),
    lambda m: m.replace(b"c=relaxed", b"c=strange", 1),
    lambda m: re.sub(rb"b=[A-Za-z0-9+/]", b"b=A", m, count=1),
    lambda m: re.sub(rb"bh=[A-Za-z0-9+/]{4}", b"bh=AAAA", m, count=1),
    lambda m: m.replace(b"; h=", b"; h= ", 1),
    lambda m: m.replace(b"DKIM-Signature:", b"dkim-signature:", 1),
    lambda m: m.replace(b"s=ed;", b"s=broken;", 1).replace(b"s=rsa;", b"s=broken;", 1),
    lambda m: m.replace(b"s=ed;", b"s=revoked;", 1).replace(b"s=rsa;", b"s=garbled;", 1),
    lambda m: m.replace(b"s=ed;", b"s=none;", 1).replace(b"s=rsa2k;", b"s=none;", 1),
    lambda m: m.replace(b"v=1;", b"v=2;", 1),
    lambda m: m.replace(b"; l=", b"; l=1", 1),
    lambda m: m.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; v=1;", 1),
    lambda m: m.replace(b"\r\n\r\nHello", b"\r\nbroken line\r\n\r\nHello"),
]


@given(selector=st.sampled_from(["ed", "rsa", "rsa2k", "small"]),
       c=st.sampled_from([(b"relaxed", b"relaxed"), (b"relaxed", b"simple"), (b"simple", b"simple"),
                          (b"simple", b"relaxed")]),
       headers=st.lists(st.sampled_from([b"from", b"to", b"subject", b"date", b"cc", b"message-id"]),
                        min_size=0, max_size=6).map(lambda h: [b"from", *h]),
       length=st.booleans(),
       extra=st.lists(st.sampled_from([b" ", b"\t", b"  x", b"\r\n", b"\n", b"y \r\n"]), max_size=8).map(b"".join),
       mutations=st.lists(st.sampled_from(range(len(_MUTATIONS))), max_size=3),
       twice=st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_verify_is_dkimpys(selector, c, headers, length, extra, mutations, twice):
    msg = _sign(BASE + extra, selector, c, headers, length)
    if twice:
        msg = _sign(msg, "ed" if selector != "ed" else "rsa", (b"relaxed", b"relaxed"), [b"from", b"subject"], False)
    for m in mutations:
        msg = _MUTATIONS[m](msg)

    async def both():
        return (await dkim.verify(msg, txt_lookup=_lookup, timeout=5.0),
                await _reference_verify(msg, _lookup, timeout=5.0))

    ours, reference = asyncio.run(both())
    assert ours == reference


# -- DMARC's From domains, ARC without a chain ---------------------------------------------------------

_FROM_PIECES = [b"From: a@example.com\r\n", b"From: <b@Sub.Example.ORG>, c@x.test\r\n", b"From:\r\n d@y.test\r\n",
                b"from: e@z.test\n", b"To: t@t.test\r\n", b"\r\n", b"\n", b"\r", b"body line\r\n",
                b"From: f@w.test\r", b" folded\r\n", b"From x@mbox.test Mon\r\n", b"X: \xc3\xa9\r\n",
                b"From: \"q\" <g@v.test>\r\n", b"bad line\r\n", b"From: nodomain\r\n"]


def _whole_message_domains(raw: bytes) -> list[str] | str:
    import email.parser
    import email.policy
    import email.utils

    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    fields = headers.get_all("From") or []
    if not fields:
        return "error"
    domains: list[str] = []
    for _, address in email.utils.getaddresses([str(f) for f in fields]):
        local, at, domain = address.rpartition("@")
        domain = dmarc.normalize_domain(domain)
        if not at or not local or not dmarc._is_domain(domain):
            return "error"
        if domain not in domains:
            domains.append(domain)
    return domains or "error"


@given(st.lists(st.sampled_from(_FROM_PIECES), max_size=12).map(b"".join))
@settings(max_examples=1500, deadline=None)
def test_author_domains_from_the_header_section_are_the_whole_messages(raw):
    found = dmarc.message_domains(raw)
    assert (found if not isinstance(found, dmarc.AuthorDomainError) else "error") == _whole_message_domains(raw)
    parsed = dmarc.message_domains(message.parse(raw))
    assert (parsed if not isinstance(parsed, dmarc.AuthorDomainError) else "error") == _whole_message_domains(raw)


# CRLF lines only: the header sections whose From fields are read from the shared parse
_CRLF_FROM_PIECES = [b"From: a@example.com\r\n", b"From: Name <b@Sub.Example.ORG>, \"x, y\" <c@x.test>\r\n",
                     b"From: undisclosed:;\r\n", b"From: (comment) e@f.test (c)\r\n", b"From: g@[127.0.0.1]\r\n",
                     b"From: h@i.test,\r\n\tj@k.test\r\n", b"FROM:l@m.test\r\n", b"From:\r\n", b"from:  \t \r\n",
                     b"From: =?utf-8?q?x?= <n@o.test>\r\n", b"To: t@t.test\r\n", b" p@q.test\r\n", b"\r\n",
                     b"From: r@s.test\r\n (trailing)\r\n", b"From: <>\r\n", b"From: u@\r\n", b"From: @v.test\r\n",
                     b"From: w@x.test\x00\r\n", b"X-From: y@z.test\r\n", b"From: \"q\\\" r\" <a@b.test>\r\n"]


@given(st.lists(st.sampled_from(_CRLF_FROM_PIECES), max_size=8).map(b"".join))
@settings(max_examples=1500, deadline=None)
def test_author_domains_of_crlf_messages_read_from_the_shared_parse(raw):
    found = dmarc.message_domains(raw)
    assert (found if not isinstance(found, dmarc.AuthorDomainError) else "error") == _whole_message_domains(raw)


@given(st.lists(st.sampled_from([*_PIECES, b"ARC-Seal: i=1; cv=none\r\n", b"arc-authentication-results: i=2\r\n",
                                 b"ARC-Message-Signature: x\r\n"]), max_size=30).map(b"".join))
@settings(max_examples=500, deadline=None)
def test_arc_without_a_chain_is_none_as_dkimpy_finds(raw):
    msg = message.parse(raw)
    if msg.error or msg.has_arc:
        return
    assert dkimpy.ARC(raw).sorted_arc_headers() == (0, [])

    async def nothing(name: str) -> list[bytes]:
        raise AssertionError("no key lookup without a chain")

    assert asyncio.run(arc.verify(raw, txt_lookup=nothing)) == arc.ARCResult(result="none", reason="no ARC sets")
