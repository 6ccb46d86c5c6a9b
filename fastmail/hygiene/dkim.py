"""DKIM (RFC 6376) verification and signing, ed25519-sha256 (RFC 8463) and rsa-sha256, over dkimpy.

The cryptography, canonicalization and tag parsing are dkimpy's; this module adds what a server needs around
them: an async key lookup through the caller's resolver (`txt_lookup`), one typed result per signature in the
terms of an Authentication-Results header (RFC 8601 §2.7.1), a signer with a fixed header policy, and key
generation with the TXT record to publish.

Verification uses dkimpy's split of a verification into its non-DNS parts (`DKIM.verify_headerprep`,
`DKIM.verify_sig_process`) around the key lookup of its async support (`load_pk_from_dns_async` with a
custom dnsfunc), the same steps as `dkim.asyncsupport.DKIM.verify_sig`, which however turns every key
problem and every DNS failure into a bare False; doing the steps here lets each outcome map to its own result.

`txt_lookup` is an async callable `name -> list[bytes]`: every TXT record of the name, the strings of a
multi-string record concatenated (RFC 6376 §3.6.2.2), `[]` for NXDOMAIN and NODATA; a temporary failure
raises `fastmail.delivery.dns.DNSTemporary`.  `Resolver.txt` of fastmail.delivery.dns (cached) and
`txt_over_aiodns` below both fit.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import aiodns
import dkim
import dkim.asyncsupport
import dkim.util
import pycares
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from fastmail.delivery.dns import DNSTemporary

TXTLookup = Callable[[str], Awaitable[list[bytes]]]
Algorithm = Literal["ed25519", "rsa-sha256"]
# RFC 8601 §2.7.1.  "none" is what an Authentication-Results header says for a message without any
# signature, i.e. for an empty list from verify(); verify() itself never gives it.
Status = Literal["pass", "fail", "neutral", "temperror", "permerror", "none"]

# RFC 6376 §6.1: a verifier MAY limit the number of signatures it tries, to bound the DNS work per message.
MAX_SIGNATURES = 10
# RFC 6008 §4: header.b carries enough of b= to tell the signatures of a message apart (at least 8).
HEADER_B_LEN = 12
MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers MUST accept 1024-4096 bits; signers MUST NOT use fewer than 1024
TXT_STRING_MAX = 255  # RFC 1035 §3.3.14: a <character-string> is at most 255 octets

# Signed once per occurrence (RFC 6376 §5.4.1's recommended list, trimmed to fields that do not change in
# transit) ...
SIGNED_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc", "mime-version",
    "content-type", "content-transfer-encoding", "content-id", "content-description", "in-reply-to",
    "references", "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
    "list-post", "list-owner", "list-archive", "resent-date", "resent-from", "resent-sender", "resent-to",
    "resent-cc", "resent-message-id",
)
# ... and these once more (RFC 6376 §8.15 "over-signing"): an instance added in transit, or a field absent
# at signing added later, breaks the signature, so a second From cannot be slipped in above ours.
OVERSIGNED_HEADERS = ("from", "reply-to", "subject", "to", "cc")

_DKIM_ALGORITHM = {"ed25519": b"ed25519-sha256", "rsa-sha256": b"rsa-sha256"}
_KEY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class DKIMResult:
    """The outcome of one DKIM-Signature.  `header_b` is the start of b= for `header.b` (RFC 6008); it may
    contain "/" and "+", so an Authentication-Results writer quotes it.  `reason` is for logs and an A-R
    comment, not for an SMTP reply."""

    result: Status
    domain: str  # d=, the signing domain (DMARC aligns it with the From domain)
    selector: str  # s=
    header_b: str
    identity: str = ""  # i=, "" when the signature has none
    algorithm: str = ""  # a=
    reason: str = ""


class _KeyLookupTemporary(Exception):
    """The key lookup failed for now (SERVFAIL, timeout): the signature's result is temperror."""


# -- verification -------------------------------------------------------------------------------------


async def verify(message: bytes, *, txt_lookup: TXTLookup, minkey: int = MIN_RSA_BITS,
                 timeout: float = _KEY_TIMEOUT, max_signatures: int = MAX_SIGNATURES) -> list[DKIMResult]:
    """One result per DKIM-Signature field of `message` (top first; at most `max_signatures`, the rest are
    not evaluated); [] when it has none.  The signatures are verified concurrently (RFC 6376 §6.1: each on
    its own, any one passing is enough for a consumer like DMARC)."""
    try:
        count = len(_signature_fields(message))
    except dkim.MessageFormatError:
        return []  # no header section dkimpy can parse: there is no signature to evaluate
    count = min(count, max_signatures)
    return list(await asyncio.gather(*(_verify_one(message, i, txt_lookup, minkey, timeout) for i in range(count))))


def _signature_fields(message: bytes) -> list[bytes]:
    headers, _ = dkim.rfc822_parse(message)
    return [value for name, value in headers if name.lower() == b"dkim-signature"]


async def _verify_one(message: bytes, idx: int, txt_lookup: TXTLookup, minkey: int, timeout: float) -> DKIMResult:
    verifier = dkim.DKIM(message, minkey=minkey, timeout=timeout)
    raw = _signature_fields(message)[idx]
    tags = _loose_tags(raw)

    def result(status: Status, reason: str) -> DKIMResult:
        return DKIMResult(
            result=status, domain=tags.get("d", "").lower(), selector=tags.get("s", ""),
            header_b=re.sub(r"\s+", "", tags.get("b", ""))[:HEADER_B_LEN], identity=tags.get("i", ""),
            algorithm=tags.get("a", ""), reason=reason)

    # RFC 6376 §6.1.1: the signature's own syntax and semantics (tags present, i= within d=, not expired).
    # RFC 8601 §2.7.1: a signature with syntax errors, or one that cannot otherwise be processed, is neutral.
    try:
        sig, include_headers, sigheaders = verifier.verify_headerprep(idx)
    except dkim.DKIMException as e:
        return result("neutral", f"signature not usable: {_text(e)}")

    # RFC 6376 §6.1.2: the key at SELECTOR._domainkey.DOMAIN.
    name = sig[b"s"] + b"._domainkey." + sig[b"d"]

    async def dnsfunc(qname: bytes, timeout: float = timeout) -> bytes | None:
        return await _key_record(qname, txt_lookup, timeout)

    try:
        key = await dkim.asyncsupport.load_pk_from_dns_async(name, dnsfunc, timeout=timeout)
    except _KeyLookupTemporary as e:
        return result("temperror", str(e))  # §6.1.2 step 2: TEMPFAIL (key unavailable)
    except (dkim.DKIMException, ValueError) as e:  # ValueError: binascii.Error of a bad p= (base64)
        # §6.1.2 steps 3-6: no key record, or a revoked/unparsable/unsuitable key: PERMFAIL; reported as
        # permerror (RFC 8601 §2.7.1: "an error that is unrecoverable").
        return result("permerror", f"key {_text(name)}: {_text(e)}")
    verifier.pk, verifier.keysize, verifier.ktag, verifier.seqtlsrpt = key

    # RFC 6376 §6.1.3: body hash, then the header hash against b=.
    try:
        ok = verifier.verify_sig_process(sig, include_headers, sigheaders[idx], dnsfunc)
    except dkim.ValidationError as e:
        return result("fail", _text(e))  # body hash mismatch
    except (dkim.KeyFormatError, dkim.UnknownKeyTypeError) as e:
        return result("permerror", _text(e))  # key too small (RFC 8301 §3.2), digest too large for the key
    except dkim.DKIMException as e:
        return result("neutral", _text(e))  # e.g. an unknown c= (§3.4)
    if not ok:
        return result("fail", "signature did not verify")
    return result("pass", "")


async def _key_record(name: bytes, txt_lookup: TXTLookup, timeout: float) -> bytes | None:
    """The key record at `name` (see key_record), or None when there is none."""
    qname = name.decode("ascii", "replace").rstrip(".")
    try:
        async with asyncio.timeout(timeout):
            records = await txt_lookup(qname)
    except (DNSTemporary, TimeoutError) as e:
        raise _KeyLookupTemporary(f"key lookup for {qname} failed: {str(e) or 'timeout'}") from None
    return key_record(records)


def key_record(records: list[bytes]) -> bytes | None:
    """The key record among the TXT records of a key name, None when there is none.  RFC 6376 §3.6.2.2:
    with several records a verifier may pick one; the first that starts with v=DKIM1 wins, else the first."""
    for record in records:
        if re.match(rb"\s*v\s*=\s*DKIM1\s*(;|$)", record):
            return record
    return records[0] if records else None


def _loose_tags(raw: bytes) -> dict[str, str]:
    """The tags of a signature field for reporting, tolerating what the verifier would refuse."""
    try:
        parsed = dkim.util.parse_tag_value(raw)
    except Exception:  # dkimpy raises InvalidTagValueList and, on odd bytes, plain ValueErrors
        return {}
    return {_text(k): _text(v) for k, v in parsed.items()}


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, BaseException) and value.args and isinstance(value.args[0], bytes):
        return value.args[0].decode("utf-8", "replace")
    return str(value)


async def txt_over_aiodns(resolver: aiodns.DNSResolver, name: str) -> list[bytes]:
    """Every TXT record of `name` through `resolver` (pycares joins the strings of a multi-string record),
    [] for NXDOMAIN or NODATA; raises DNSTemporary for SERVFAIL, REFUSED, timeouts.  Uncached: prefer
    `fastmail.delivery.dns.Resolver.txt` where a cache is wanted."""
    try:
        answer = await resolver.query_dns(name, "TXT")
    except aiodns.error.DNSError as e:
        code = e.args[0] if e.args else None
        if code in (pycares.errno.ARES_ENODATA, pycares.errno.ARES_ENOTFOUND):
            return []
        reason = e.args[1] if len(e.args) > 1 else str(e)
        raise DNSTemporary("4.4.3", f"DNS TXT lookup for {name} failed: {reason}") from None
    out: list[bytes] = []
    for record in answer.answer:
        if not isinstance(record.data, pycares.TXTRecordData):
            continue  # a CNAME on the way
        data = record.data.data
        out.append(data if isinstance(data, bytes) else str(data).encode())
    return out


# -- signing -------------------------------------------------------------------------------------------


def sign(message: bytes, *, domain: str, selector: str, private_key_pem: bytes, algorithm: Algorithm = "ed25519",
         headers: Sequence[str] | None = None, identity: str | None = None) -> bytes:
    """The DKIM-Signature field to prepend to `message`, folded, CRLF-terminated.

    Canonicalization relaxed/relaxed (RFC 6376 §3.4.2, §3.4.4).  `headers` is the h= list as given (it must
    include From, §5.4); by default every present field of SIGNED_HEADERS, with OVERSIGNED_HEADERS signed
    once more than present (§8.15).  `algorithm` must match the key: "ed25519" (RFC 8463 §3, a=ed25519-sha256,
    key as a PEM PKCS#8 Ed25519 private key) or "rsa-sha256" (at least 1024 bits, RFC 8301 §3.2).  Raises
    ValueError for a key, algorithm or header list that cannot be used.
    """
    privkey = _dkimpy_private_key(private_key_pem, algorithm)
    try:
        signer = dkim.DKIM(message, signature_algorithm=_DKIM_ALGORITHM[algorithm], linesep=b"\r\n")
        include = list(headers) if headers is not None else default_signed_headers(signer.headers)
        if "from" not in (h.lower() for h in include):
            raise ValueError("the h= list must include From (RFC 6376 §5.4)")
        field: bytes = signer.sign(
            selector.encode("ascii"), domain.encode("ascii"), privkey,
            identity=identity.encode("ascii") if identity is not None else None,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=[h.lower().encode("ascii") for h in include])
    except dkim.DKIMException as e:
        raise ValueError(_text(e)) from None
    except UnicodeEncodeError:
        raise ValueError("domain, selector, identity and header names must be ASCII (use A-labels)") from None
    return field


def default_signed_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The h= list for a message with `headers` (name, value) pairs: see sign()."""
    present: dict[str, int] = {}
    for field, _ in headers:
        key = field.decode("ascii", "replace").lower()
        present[key] = present.get(key, 0) + 1
    out: list[str] = []
    for name in SIGNED_HEADERS:
        out += [name] * (present.get(name, 0) + (1 if name in OVERSIGNED_HEADERS else 0))
    return out


@functools.lru_cache(maxsize=64)
def _dkimpy_private_key(pem: bytes, algorithm: Algorithm) -> bytes:
    """(cached: loading an RSA key checks it, ~50 ms) dkimpy's form of the key: PKCS#1 PEM for RSA, the base64 32-byte seed for Ed25519 (RFC 8032 §5.1.5)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"unusable private key: {e}") from None
    if algorithm == "ed25519":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("algorithm ed25519 needs an Ed25519 private key")
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return base64.b64encode(raw)
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("algorithm rsa-sha256 needs an RSA private key")
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits; RFC 8301 §3.2 requires at least {MIN_RSA_BITS}")
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    raise ValueError(f"unknown algorithm {algorithm!r}")


# -- keys ----------------------------------------------------------------------------------------------


def keygen(domain: str, selector: str, algorithm: Algorithm = "ed25519", *, rsa_bits: int = 2048) -> tuple[bytes, str]:
    """A new key pair: (the private key as PEM PKCS#8, the zone-file line to publish), e.g.
    `sel._domainkey.example.com. IN TXT "v=DKIM1; k=ed25519; p=..."`.  An RSA record longer than 255 bytes is
    written as several strings of one TXT record, which verifiers join (RFC 6376 §3.6.2.2)."""
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if algorithm == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "rsa-sha256":
        if rsa_bits < MIN_RSA_BITS:
            raise ValueError(f"RFC 8301 §3.2: RSA keys of at least {MIN_RSA_BITS} bits")
        private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    strings = " ".join(f'"{s}"' for s in txt_strings(public_record(pem)))
    return pem, f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT {strings}"


def public_record(private_key_pem: bytes) -> str:
    """The key record (RFC 6376 §3.6.1) for a private key: `v=DKIM1; k=ed25519; p=<base64 of the 32-byte
    public key>` (RFC 8463 §4.2) or `v=DKIM1; k=rsa; p=<base64 DER SubjectPublicKeyInfo>`."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raise ValueError("DKIM keys are Ed25519 or RSA")


def txt_strings(value: str) -> list[str]:
    """`value` cut into the <character-string>s of one TXT record (RFC 1035 §3.3.14: 255 octets each)."""
    return [value[i:i + TXT_STRING_MAX] for i in range(0, len(value), TXT_STRING_MAX)] or [""]
