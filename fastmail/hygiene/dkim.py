"""DKIM (RFC 6376) verification and signing, ed25519-sha256 (RFC 8463) and rsa-sha256, over dkimpy.

The tag parsing, key evaluation and signing are dkimpy's, and so is the verification's logic; this module adds
what a server needs around them: an async key lookup through the caller's resolver (`txt_lookup`), one typed result per signature in the
terms of an Authentication-Results header (RFC 8601 §2.7.1), a signer with a fixed header policy, and key
generation with the TXT record to publish.

Verification follows dkimpy's split of a verification into its non-DNS parts (`DKIM.verify_headerprep`,
`DKIM.verify_sig_process`) around the key lookup of its async support (`load_pk_from_dns_async`: await the
TXT record through the caller's resolver, then `evaluate_pk`), the same steps as
`dkim.asyncsupport.DKIM.verify_sig`, which however turns every key problem and every DNS failure into a bare
False; doing the steps here lets each outcome map to its own result.  The key evaluation (`evaluate_pk`),
the ed25519 verification (PyNaCl) and anything unusual (a=rsa-sha1, keys outside 1024-8192 bits) are
dkimpy's own calls; the tag parsing and the signature checks are dkimpy's `parse_tag_value` and
`validate_signature_fields` rewritten with precompiled patterns (`parse_tags`, `validate_signature`: the same
answers and messages, ~40 µs less per signature).  What a 4 KiB message
cost in dkimpy's code (about 1 ms of CPU, issue #7; ~0.25 ms now) is done with less work, giving the same
bytes and the same answers:

- the message is parsed once for all its signatures, ARC and DMARC (fastmail.hygiene.message), with dkimpy's
  parser run on the header section only;
- canonicalization by bytes operations (fastmail.hygiene.canon) of only the fields a signature selects,
  where dkimpy runs two regular expressions over every field of the message for every signature;
- the body hash computed once per message for each (c=, l=, a=);
- RSA through OpenSSL (`rsa_verify`: the same comparison, without dkimpy's pure-Python integer-to-bytes
  loop);
- a key record's evaluation (`evaluate_pk`: tag list, base64, ASN.1) remembered per record.

tests/unit/test_hygiene_canon.py checks each against dkimpy's own on generated messages and signatures, and
tests/unit/test_hygiene_dkim.py the tag parsing and the signature checks on generated signature fields.

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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiodns
import dkim
import dkim.util
import nacl.exceptions
import pycares
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import DigestTooLargeError, RSASSA_PKCS1_v1_5_verify

from fastmail._core import canon as core_canon
from fastmail.delivery.dns import DNSTemporary
from fastmail.hygiene import canon
from fastmail.hygiene.deadline import within
from fastmail.hygiene.message import Message
from fastmail.hygiene.message import parse as parse_message

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

_BodyHashes = dict[tuple[bytes, bytes | None, bytes], bytes]  # (c= body algorithm, l=, a=) -> digest
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


async def verify(message: bytes | Message, *, txt_lookup: TXTLookup, minkey: int = MIN_RSA_BITS,
                 timeout: float | None = _KEY_TIMEOUT, max_signatures: int = MAX_SIGNATURES) -> list[DKIMResult]:
    """One result per DKIM-Signature field of `message` (top first; at most `max_signatures`, the rest are
    not evaluated); [] when it has none.  The signatures are verified concurrently (RFC 6376 §6.1: each on
    its own, any one passing is enough for a consumer like DMARC).  `message` may come parsed
    (fastmail.hygiene.message), as the inbound checks share one parse.  `timeout` bounds each key lookup;
    None sets no timer (the caller bounds the whole verification, as the inbound checks do)."""
    msg = parse_message(message)
    if msg.error:
        return []  # no header section dkimpy can parse: there is no signature to evaluate
    # the fields as the message has them: the name's case matters to c=simple
    fields = [(f[0], f[1]) for f, lower in zip(msg.fields, msg.lower_names, strict=True)
              if lower == b"dkim-signature"][:max_signatures]
    body_hashes: _BodyHashes = {}  # shared by the signatures
    if len(fields) == 1:  # the usual case: no task to run it in
        return [await _verify_one(msg, fields[0], body_hashes, txt_lookup, minkey, timeout)]
    return list(await asyncio.gather(*(_verify_one(msg, field, body_hashes, txt_lookup, minkey, timeout)
                                       for field in fields)))


async def _verify_one(msg: Message, field: tuple[bytes, bytes], body_hashes: _BodyHashes, txt_lookup: TXTLookup,
                      minkey: int, timeout: float | None) -> DKIMResult:
    # dkimpy's DKIM.verify_headerprep, with the tag list parsed once for it and for the report
    raw = field[1]
    try:
        sig: dict[bytes, bytes] | None = parse_tags(raw)
        tag_error: Exception | None = None
    except dkim.util.InvalidTagValueList as e:
        sig, tag_error = None, e

    def result(status: Status, reason: str) -> DKIMResult:
        return _result(sig, status, reason)

    # RFC 6376 §6.1.1: the signature's own syntax and semantics (tags present, i= within d=, not expired).
    # RFC 8601 §2.7.1: a signature with syntax errors, or one that cannot otherwise be processed, is neutral.
    verifier = _Verifier(msg, body_hashes, minkey=minkey)
    try:
        if sig is None:
            raise dkim.MessageFormatError(tag_error)
        validate_signature(sig)
    except dkim.DKIMException as e:
        return result("neutral", f"signature not usable: {_text(e)}")
    include_headers = [x.lower() for x in _H_SEPARATOR.split(sig[b"h"])]

    # RFC 6376 §6.1.2: the key at SELECTOR._domainkey.DOMAIN.
    name = sig[b"s"] + b"._domainkey." + sig[b"d"]

    try:
        key = evaluate_key(name, await _key_record(name, txt_lookup, timeout))
    except _KeyLookupTemporary as e:
        return result("temperror", str(e))  # §6.1.2 step 2: TEMPFAIL (key unavailable)
    except (dkim.DKIMException, ValueError) as e:  # ValueError: binascii.Error of a bad p= (base64)
        # §6.1.2 steps 3-6: no key record, or a revoked/unparsable/unsuitable key: PERMFAIL; reported as
        # permerror (RFC 8601 §2.7.1: "an error that is unrecoverable").
        return result("permerror", f"key {_text(name)}: {_text(e)}")
    verifier.pk, verifier.keysize, verifier.ktag, verifier.seqtlsrpt = key

    # RFC 6376 §6.1.3: body hash, then the header hash against b=.
    try:
        ok = verifier.verify_sig_process(sig, include_headers, field)
    except dkim.ValidationError as e:
        return result("fail", _text(e))  # body hash mismatch
    except (dkim.KeyFormatError, dkim.UnknownKeyTypeError) as e:
        return result("permerror", _text(e))  # key too small (RFC 8301 §3.2), digest too large for the key
    except dkim.DKIMException as e:
        return result("neutral", _text(e))  # e.g. an unknown c= (§3.4)
    if not ok:
        return result("fail", "signature did not verify")
    return result("pass", "")


def _result(sig: dict[bytes, bytes] | None, status: Status, reason: str) -> DKIMResult:
    """The result of a signature whose tags are `sig` (None: its tag list did not parse)."""
    if sig is None:
        return DKIMResult(result=status, domain="", selector="", header_b="", reason=reason)
    get = sig.get
    return DKIMResult(
        result=status, domain=get(b"d", b"").decode("utf-8", "replace").lower(),
        selector=get(b"s", b"").decode("utf-8", "replace"),
        header_b="".join(get(b"b", b"").decode("utf-8", "replace").split())[:HEADER_B_LEN],
        identity=get(b"i", b"").decode("utf-8", "replace"), algorithm=get(b"a", b"").decode("utf-8", "replace"),
        reason=reason)


_H_SEPARATOR = re.compile(rb"\s*:\s*")
_DOMAIN_SPECIALS = re.compile(rb"[\(\)<>\[\]:;@\\,]")
_L_VALUE = re.compile(rb"\d{,76}\Z")
_DECIMAL = re.compile(rb"\d+\Z")
_CLOCK_SLOP = 36000  # dkimpy's 10 hours of leeway for t= and x=


_B64_OCTETS = b" \t\n\r\x0b\x0c0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/"
_PAD_OCTETS = b" \t\n\r\x0b\x0c="


def _is_base64(value: bytes) -> bool:
    r"""re.match(rb"[\s0-9A-Za-z+/]+[\s=]*\Z", value) is not None (dkimpy's check of b=), without the
    expression's octet-by-octet walk: base64 octets and white space, then white space and "=" (the first
    part is not empty: a value of white space and "=" only matches when it starts with white space)."""
    head = value.rstrip(_PAD_OCTETS)
    if not head:
        return value[:1] in (b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c")
    return not head.translate(None, _B64_OCTETS)


def parse_tags(tag_list: bytes) -> dict[bytes, bytes]:
    """dkimpy's `dkim.util.parse_tag_value` (RFC 6376 §3.2 tag-list), its answers and its exceptions, without
    a regular expression per tag: a tag name starts with an ASCII letter (dkimpy's `^[a-zA-Z](\\w)*` match
    looks no further)."""
    tags: dict[bytes, bytes] = {}
    specs = tag_list.strip().split(b";")
    if not specs[-1]:  # trailing semicolons are valid
        specs.pop()
    for spec in specs:
        key, eq, value = spec.partition(b"=")
        if not eq:
            raise dkim.util.InvalidTagSpec(spec)
        key = key.strip()
        if not key[:1].isalpha():  # bytes.isalpha(): ASCII letters only
            raise dkim.util.InvalidTagSpec(spec)
        if key in tags:
            raise dkim.util.DuplicateTag(key)
        tags[key] = value.strip()
    return tags


def validate_signature(sig: dict[bytes, bytes], now: int | None = None) -> None:
    """dkimpy's `validate_signature_fields(sig)` for a DKIM-Signature (RFC 6376 §6.1.1), check for check and
    message for message (its bh= check reads b='s pattern, as dkimpy's does), with the patterns compiled
    once rather than looked up in the re module's cache at every call."""
    for name in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s"):
        if name not in sig:
            raise dkim.ValidationError(f"missing {name!r}=")
    if sig[b"a"] not in dkim.HASH_ALGORITHMS:
        raise dkim.ValidationError(f"unknown signature algorithm: {sig[b'a']!r}")
    b_ok = _is_base64(sig[b"b"])
    if not b_ok or len(canon.without_wsp(sig[b"b"])) % 4:
        raise dkim.ValidationError(f"b= value is not valid base64 ({sig[b'b']!r})")
    if not b_ok or len(canon.without_wsp(sig[b"bh"])) % 4:
        raise dkim.ValidationError(f"bh= value is not valid base64 ({sig[b'bh']!r})")
    if b"cv" in sig and sig[b"cv"] not in (dkim.CV_Pass, dkim.CV_Fail, dkim.CV_None):
        raise dkim.ValidationError(f"cv= value is not valid ({sig[b'cv']!r})")
    d = sig[b"d"]
    if d.isascii() and _DOMAIN_SPECIALS.search(d):  # dkimpy checks ASCII domains only
        raise dkim.ValidationError(f"d= value is not valid ({d!r})")
    i = sig.get(b"i")
    # (dkimpy raises IndexError for an i= no longer than d=; that is a malformed i= too)
    if i is not None and (not i.lower().endswith(d.lower()) or len(i) <= len(d) or i[-len(d) - 1] not in (64, 46)):
        raise dkim.ValidationError(f"i= domain is not a subdomain of d= (i={i!r} d={d!r})")
    if b"l" in sig and _L_VALUE.match(sig[b"l"]) is None:
        raise dkim.ValidationError(f"l= value is not a decimal integer ({sig[b'l']!r})")
    if b"q" in sig and sig[b"q"] != b"dns/txt":
        raise dkim.ValidationError(f"q= value is not dns/txt ({sig[b'q']!r})")
    t_sign = None
    if b"t" in sig:
        if _DECIMAL.match(sig[b"t"]) is None:
            raise dkim.ValidationError(f"t= value is not a decimal integer ({sig[b't']!r})")
        now = int(time.time()) if now is None else now
        t_sign = int(sig[b"t"])
        if t_sign > now + _CLOCK_SLOP:
            raise dkim.ValidationError(f"t= value is in the future ({sig[b't']!r})")
    if sig[b"v"] != b"1":
        raise dkim.ValidationError(f"v= value is not 1 ({sig[b'v']!r})")
    if b"x" in sig:
        if _DECIMAL.match(sig[b"x"]) is None:
            raise dkim.ValidationError(f"x= value is not a decimal integer ({sig[b'x']!r})")
        x_sign = int(sig[b"x"])
        now = int(time.time()) if now is None else now
        if x_sign < now - _CLOCK_SLOP:
            raise dkim.ValidationError(f"x= value is past ({sig[b'x']!r})")
        if t_sign and x_sign < t_sign:
            raise dkim.ValidationError(f"x= value is less than t= value (x={sig[b'x']!r} t={sig[b't']!r})")


class _Verifier:
    """dkimpy's verifier (`dkim.DKIM`) on a message parsed once, its `verify_sig_process` doing the same steps
    with less work: see the module doc.  (dkimpy 1.1.8's DomainSigner.verify_sig_process, step for step.)
    No dkim.DKIM object is built: this method is the only part of one a verification uses."""

    tlsrpt = False  # RFC 8460 §3 as dkimpy: this verifier is not told a message is a TLS report
    pk: Any
    keysize: int
    ktag: bytes
    seqtlsrpt: bool

    def __init__(self, msg: Message, body_hashes: _BodyHashes, *, minkey: int) -> None:
        self.headers = msg.fields
        self._msg = msg
        self._body_hashes = body_hashes
        self.minkey = minkey

    def verify_sig_process(self, sig: dict[bytes, bytes], include_headers: list[bytes],
                           sig_header: tuple[bytes, bytes]) -> bool:
        # RFC 8460 §3 (tlsrpt) as dkimpy: this verifier is not told a message is a TLS report
        if self.tlsrpt == "strict" and not self.seqtlsrpt:
            raise dkim.ValidationError("Message is tlsrpt and Service Type is not tlsrpt")
        if not self.tlsrpt and self.seqtlsrpt:
            raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
        policy = _policy(sig.get(b"c", b"simple/simple"))
        hasher = dkim.HASH_ALGORITHMS[sig[b"a"]]

        if b"bh" in sig:  # RFC 6376 §3.7 body hash, computed once per message for each c=, l= and a=
            length = sig.get(b"l") if not self.tlsrpt else None
            key = (policy.body_algorithm.name, length, sig[b"a"])
            bodyhash = self._body_hashes.get(key)
            if bodyhash is None:
                body = canon.body(policy.body_algorithm.name, self._msg.body)
                if length is not None:
                    body = body[:int(length)]
                bodyhash = self._body_hashes[key] = hasher(body).digest()
            try:
                bh = base64.b64decode(canon.without_wsp(sig[b"bh"]))
            except TypeError as e:
                raise dkim.MessageFormatError(str(e)) from None
            if bodyhash != bh:
                raise dkim.ValidationError(
                    f"body hash mismatch (got {base64.b64encode(bodyhash)!s}, expected {sig[b'bh']!s})")

        # dkimpy's bug#644046: any additional From field is hashed too
        if b"from" in include_headers:
            include_headers.append(b"from")
        # RFC 6376 §3.7 header hash: the selected fields, canonicalized (dkimpy canonicalizes every field of
        # the message and then selects; the names carry no white space, so selecting first is the same),
        # then the signature field itself with b= emptied and without its CRLF.
        algorithm = policy.header_algorithm.name
        # (the core's one pass: dkimpy's select_headers and canon.header on each selected field)
        signed = core_canon.signed_fields(self.headers, self._msg.lower_names, include_headers,
                                          algorithm == canon.RELAXED)
        name, value = canon.header(algorithm, sig_header[0], canon.without_b(sig_header[1]))
        h = hasher(b"".join((signed, name, b":", value.rstrip())))
        signature = base64.b64decode(canon.without_wsp(sig[b"b"]))
        if self.ktag == b"rsa":
            try:
                res = rsa_verify(h, signature, self.pk)
                if res and self.keysize < self.minkey:
                    raise dkim.KeyFormatError(f"public key too small: {self.keysize}")
                return res
            except (TypeError, DigestTooLargeError) as e:
                raise dkim.KeyFormatError(f"digest too large for modulus: {e}") from None
        elif self.ktag == b"ed25519":
            try:
                self.pk.verify(h.digest(), signature)
                return True
            except nacl.exceptions.BadSignatureError:
                return False
        else:
            raise dkim.UnknownKeyTypeError(self.ktag)


@functools.lru_cache(maxsize=64)
def _policy(c: bytes) -> CanonicalizationPolicy:
    """dkimpy's CanonicalizationPolicy of a c= value (immutable: remembered), or its MessageFormatError."""
    try:
        return CanonicalizationPolicy.from_c_value(c)
    except InvalidCanonicalizationPolicyError as e:
        raise dkim.MessageFormatError(f"invalid c= value: {e.args[0]}") from None


# -- keys and RSA, the C way ---------------------------------------------------------------------------

_KEY_CACHE_SIZE = 512
_keys: dict[bytes, tuple[Any, int, bytes, bool]] = {}


def evaluate_key(name: bytes, record: bytes | None) -> tuple[Any, int, bytes, bool]:
    """dkimpy's `evaluate_pk(name, record)` — (key, bits, k=, s=tlsrpt) or its exception —, remembered per
    record: the tag list, base64 and ASN.1 parsing of a sender's key is done once, not per message."""
    if not record:
        return dkim.evaluate_pk(name, record)  # type: ignore[no-any-return]
    found = _keys.get(record)
    if found is None:
        found = dkim.evaluate_pk(name, record)
        if len(_keys) >= _KEY_CACHE_SIZE:
            del _keys[next(iter(_keys))]  # the oldest
        _keys[record] = found
    return found


_MIN_FAST_BITS, _MAX_FAST_BITS = 1024, 8192
# stateless, made once: building them costs more than the check of a small key's signature would suggest
_PKCS1V15 = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _openssl_key(modulus: int, exponent: int) -> rsa.RSAPublicKey | None:
    """The key as OpenSSL's (through cryptography), None for one outside what every OpenSSL verifies the
    same way as dkimpy's arithmetic: 1024 to 8192 bits, an odd exponent below 2**32."""
    if not (_MIN_FAST_BITS <= modulus.bit_length() <= _MAX_FAST_BITS and 3 <= exponent < 2**32 and exponent & 1):
        return None
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError:
        return None


def rsa_verify(h: Any, signature: bytes, pk: dict[str, int]) -> bool:
    """dkimpy's `RSASSA_PKCS1_v1_5_verify(h, signature, pk)` (RFC 8017 §8.2.2) through OpenSSL.

    dkimpy computes signature**e mod n in Python integers and turns the result into bytes one octet at a
    time (dkim.crypto.int2str: ~250 µs for a 2048-bit key), then compares it with the EMSA-PKCS1-v1_5
    encoding of the digest.  OpenSSL's verification is that same comparison (RFC 8017 §8.2.2 steps 2-4,
    OpenSSL re-encodes the DigestInfo and compares the bytes) once the signature is a `k`-octet integer below
    the modulus (§8.2.2 step 1, §5.2.2 step 1), which OpenSSL requires and dkimpy does not: such a signature
    — never one a signer makes — and a hash or key OpenSSL is not given (above) go through dkimpy's own
    code, so the answer is dkimpy's for every input."""
    modulus = pk["modulus"]
    key = _openssl_key(modulus, pk["publicExponent"]) if h.name == "sha256" else None
    if key is None or len(signature) != (modulus.bit_length() + 7) // 8 \
            or int.from_bytes(signature, "big") >= modulus:
        return bool(RSASSA_PKCS1_v1_5_verify(h, signature, pk))
    try:
        key.verify(signature, h.digest(), _PKCS1V15, _PREHASHED_SHA256)
    except InvalidSignature:
        return False
    return True


async def _key_record(name: bytes, txt_lookup: TXTLookup, timeout: float | None) -> bytes | None:
    """The key record at `name` (see key_record), or None when there is none."""
    qname = name.decode("ascii", "replace").rstrip(".")
    try:
        end = None if timeout is None else asyncio.get_running_loop().time() + timeout
        records = await within(txt_lookup(qname), end)
    except (DNSTemporary, TimeoutError) as e:
        raise _KeyLookupTemporary(f"key lookup for {qname} failed: {str(e) or 'timeout'}") from None
    return key_record(records)


_V_DKIM1 = re.compile(rb"\s*v\s*=\s*DKIM1\s*(;|$)")


def key_record(records: list[bytes]) -> bytes | None:
    """The key record among the TXT records of a key name, None when there is none.  RFC 6376 §3.6.2.2:
    with several records a verifier may pick one; the first that starts with v=DKIM1 wins, else the first."""
    for record in records:
        if _V_DKIM1.match(record):
            return record
    return records[0] if records else None


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
