"""DMARC (RFC 7489): policy discovery, identifier alignment, and the disposition to apply.

`evaluate()` takes the results of the other checks — SPF's result and the domain it checked (the MAIL FROM
domain, or the HELO domain for a null reverse-path, RFC 7489 §3.1.2), the DKIM results — and the
RFC5322.From domain, finds the DMARC record (§6.6.3), checks alignment (§3.1) and gives the DMARC result
with the policy to apply (§6.3, §6.6.4).  `evaluate_message()` first takes the From domain out of the
message (§6.6.1).  Reporting (rua=, ruf=) is not done: those tags are read and ignored.

The Organizational Domain (§3.2) comes from the Public Suffix List shipped in the `publicsuffixlist`
package (ICANN and private sections, as §3.2 uses the whole list), loaded once per process.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import random as _random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from typing import Literal

from publicsuffixlist import PublicSuffixList

from fastmail._core import canon as core_canon
from fastmail.delivery.dns import DNSTemporary
from fastmail.hygiene.deadline import within
from fastmail.hygiene.dkim import DKIMResult, TXTLookup
from fastmail.hygiene.message import Message
from fastmail.hygiene.message import parse as parse_message

Result = Literal["pass", "fail", "none", "temperror", "permerror"]  # RFC 7489 §11.2 (A-R "dmarc")
Policy = Literal["none", "quarantine", "reject"]
Alignment = Literal["r", "s"]

_POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")
_STRICTNESS = {"none": 0, "quarantine": 1, "reject": 2}
_LOOKUP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class DMARCRecord:
    """The tags of a policy record (§6.3) this module acts on; rua/ruf/ri/fo/rf are ignored."""

    p: Policy
    sp: Policy | None = None  # None: subdomains follow p
    adkim: Alignment = "r"
    aspf: Alignment = "r"
    pct: int = 100
    raw: str = ""


@dataclass(frozen=True, slots=True)
class DMARCResult:
    """`policy` is what to do with the message: "none" unless the result is fail, then p= (or sp= for a
    subdomain), lowered one step when the message falls outside pct= (§6.6.4).  `requested` is the policy
    before pct=.  `reason` is for logs, not for an SMTP reply."""

    result: Result
    policy: Policy
    from_domain: str
    requested: Policy = "none"
    record_domain: str = ""  # the domain whose _dmarc record applied ("" when none)
    record: DMARCRecord | None = None
    dkim_aligned: bool = False
    spf_aligned: bool = False
    reason: str = ""


class AuthorDomainError(ValueError):
    """The message has no usable RFC5322.From domain (§6.6.1): the DMARC result is permerror."""


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def normalize_domain(domain: str) -> str:
    """Lower case, no trailing dot, A-labels (IDNA, RFC 5890) so names compare as DNS compares them."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix with the most labels that matches, plus one label of `domain`; a
    domain that is itself a public suffix is its own organizational domain."""
    return _organizational(normalize_domain(domain))


@lru_cache(maxsize=4096)
def _organizational(domain: str) -> str:
    # the public suffix list's walk costs ~10 µs a name, and a message asks it 4-5 times for the same few
    return _psl().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: Alignment) -> bool:
    """RFC 7489 §3.1.1/§3.1.2: strict mode needs the same name; relaxed the same Organizational Domain."""
    identifier, from_domain = normalize_domain(identifier), normalize_domain(from_domain)
    if not identifier or not from_domain:
        return False
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


# -- the record ----------------------------------------------------------------------------------------

# §6.4: dmarc-version = "v" *WSP "=" *WSP %x44 %x4d %x41 %x52 %x43 %x31: the tag name is a (case-insensitive)
# literal, "DMARC1" is spelled in octets, so upper case only.
_V_DMARC1 = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(;|$)")


def is_dmarc_record(txt: str) -> bool:
    """§6.6.3 step 2: only records beginning with v=DMARC1 count (§6.4: "v" MUST be the first tag)."""
    return _V_DMARC1.match(txt) is not None


@lru_cache(maxsize=1024)  # a record is read for every message of its domain; DMARCRecord is immutable
def parse_record(txt: str) -> DMARCRecord | None:
    """A v=DMARC1 record (§6.4 tag-list, §6.3 tags), or None when it has no usable policy.

    §6.3: unknown tags are ignored; the ABNF's literals are case-insensitive (RFC 5234 §2.3).  An invalid
    adkim/aspf/pct falls back to its default.  §6.6.3 step 6: with an invalid or missing p= (or an invalid
    sp=), a record with a rua= is taken as p=none, one without applies no DMARC (None here).
    """
    if not is_dmarc_record(txt):
        return None
    tags: dict[str, str] = {}
    for part in txt.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    p = _policy(tags.get("p"))
    sp = _policy(tags["sp"]) if "sp" in tags else None
    if p is None or ("sp" in tags and sp is None):
        if not tags.get("rua"):
            return None
        p, sp = "none", None
    return DMARCRecord(
        p=p, sp=sp, adkim=_alignment(tags.get("adkim")), aspf=_alignment(tags.get("aspf")),
        pct=_pct(tags.get("pct")), raw=txt)


def _policy(value: str | None) -> Policy | None:
    value = (value or "").lower()
    for policy in _POLICIES:
        if value == policy:
            return policy
    return None


def _alignment(value: str | None) -> Alignment:
    return "s" if (value or "").lower() == "s" else "r"


def _pct(value: str | None) -> int:
    # §6.3: pct is an integer 0-100, default 100.  ASCII digits only ("²" is a str digit int() refuses), and
    # no int() of a long string (Python refuses over 4,300 digits; a TXT record may be that long)
    if value is None or not (value.isascii() and value.isdigit()):
        return 100
    digits = value.lstrip("0") or "0"
    return 100 if len(digits) > 3 else min(int(digits), 100)


class _Temporary(Exception):
    pass


async def _record_at(domain: str, txt_lookup: TXTLookup,
                     timeout: float | None) -> tuple[tuple[str, ...], DMARCRecord | None]:
    """The v=DMARC1 records at _dmarc.DOMAIN and the parsed one when there is exactly one (§6.6.3 step 5:
    several records apply no DMARC, like none)."""
    name = f"_dmarc.{domain}"
    try:
        end = None if timeout is None else asyncio.get_running_loop().time() + timeout
        txts = await within(txt_lookup(name), end)
    except (DNSTemporary, TimeoutError) as e:
        raise _Temporary(f"lookup of {name} failed: {str(e) or 'timeout'}") from None
    return _records(tuple(txts))


@lru_cache(maxsize=1024)  # the same answer for every message of a domain; the result is never changed
def _records(txts: tuple[bytes, ...]) -> tuple[tuple[str, ...], DMARCRecord | None]:
    records = tuple(t for t in (b.decode("utf-8", "replace") for b in txts) if is_dmarc_record(t))
    if len(records) != 1:
        return records, None
    return records, parse_record(records[0])


# -- evaluation ----------------------------------------------------------------------------------------


async def evaluate(from_domain: str, *, spf_result: str, spf_domain: str, dkim_results: Sequence[DKIMResult],
                   txt_lookup: TXTLookup, rand: Callable[[], float] = _random.random,
                   timeout: float | None = _LOOKUP_TIMEOUT) -> DMARCResult:
    """The DMARC result for a message whose RFC5322.From domain is `from_domain`.

    `spf_result` is SPF's result ("pass" counts, RFC 7489 §4.2); `spf_domain` the domain SPF checked.
    `rand` returns a float in [0, 1): the message is inside pct= when rand() * 100 < pct (§6.6.4).
    `timeout` bounds each record lookup; None sets no timer (the caller bounds the evaluation).
    """
    from_domain = normalize_domain(from_domain)
    org = organizational_domain(from_domain)

    # §6.6.3: the record at the From domain, else at its Organizational Domain.
    record_domain = from_domain
    try:
        found, record = await _record_at(from_domain, txt_lookup, timeout)
        if not found and org != from_domain:
            record_domain = org
            found, record = await _record_at(org, txt_lookup, timeout)
    except _Temporary as e:
        return DMARCResult(result="temperror", policy="none", from_domain=from_domain, reason=str(e))
    if len(found) > 1:
        return DMARCResult(result="none", policy="none", from_domain=from_domain,
                           reason=f"{len(found)} DMARC records at _dmarc.{record_domain}: none applies")
    if not found:
        return DMARCResult(result="none", policy="none", from_domain=from_domain, reason="no DMARC record")
    if record is None:
        # §6.6.3 step 6 says to apply no DMARC; reported as permerror, RFC 8601's result for a record with
        # syntax errors, so the A-R header shows the publisher's mistake (the policy stays "none").
        return DMARCResult(result="permerror", policy="none", from_domain=from_domain, record_domain=record_domain,
                           reason=f"DMARC record at _dmarc.{record_domain} has no valid p=")

    # §4.2: DMARC passes when SPF or DKIM passes for an identifier aligned with the From domain.
    dkim_ok = any(r.result == "pass" and aligned(r.domain, from_domain, record.adkim) for r in dkim_results)
    spf_ok = spf_result.lower() == "pass" and aligned(spf_domain, from_domain, record.aspf)
    if dkim_ok or spf_ok:
        return DMARCResult(result="pass", policy="none", from_domain=from_domain, record_domain=record_domain,
                           record=record, dkim_aligned=dkim_ok, spf_aligned=spf_ok,
                           reason="aligned " + ("DKIM" if dkim_ok else "SPF"))

    # §6.3 sp=: the policy for subdomains, when the record was found at the Organizational Domain for a
    # From domain below it; without sp= (or with the record at the From domain itself) p= applies.
    requested = record.p
    if record_domain != from_domain and record.sp is not None:
        requested = record.sp
    policy = requested
    if requested != "none" and not rand() * 100 < record.pct:
        # §6.6.4: a message outside pct= gets the next policy down: reject -> quarantine -> none.
        policy = "quarantine" if requested == "reject" else "none"
    return DMARCResult(result="fail", policy=policy, from_domain=from_domain, requested=requested,
                       record_domain=record_domain, record=record, dkim_aligned=dkim_ok, spf_aligned=spf_ok,
                       reason=f"no aligned pass; pct={record.pct}" if policy != requested else "no aligned pass")


async def evaluate_message(message: bytes | Message, *, spf_result: str, spf_domain: str,
                           dkim_results: Sequence[DKIMResult], txt_lookup: TXTLookup,
                           rand: Callable[[], float] = _random.random, timeout: float | None = _LOOKUP_TIMEOUT,
                           domains: list[str] | AuthorDomainError | None = None) -> DMARCResult:
    """evaluate() for the From domain(s) of `message` (which may come parsed, fastmail.hygiene.message;
    `domains`: what message_domains() gave for it, when the caller has it already).

    §6.6.1, what this module chose: no From field, or one without a parseable address with a domain:
    result permerror, policy none (the message is broken, not forged; the SMTP layer may refuse it as not
    RFC 5322 conforming).  Several From addresses — in one field or in several fields — with one domain
    are evaluated as that domain; with several distinct domains each is evaluated and the strictest
    outcome wins (§6.6.1: "apply the most strict policy selected among the checks that fail"), so a second
    From cannot dodge a p=reject; the result is pass only when every domain passes.
    """
    if domains is None:
        domains = message_domains(message)
    if isinstance(domains, AuthorDomainError):
        return DMARCResult(result="permerror", policy="none", from_domain="", reason=str(domains))
    results = [await evaluate(d, spf_result=spf_result, spf_domain=spf_domain, dkim_results=dkim_results,
                              txt_lookup=txt_lookup, rand=rand, timeout=timeout) for d in domains]
    return _strictest(results)


def message_domains(message: bytes | Message) -> list[str] | AuthorDomainError:
    """author_domains() of a message, or the AuthorDomainError it raised."""
    try:
        return author_domains(message)
    except AuthorDomainError as e:
        return e


_RESULT_RANK = {"fail": 4, "temperror": 3, "permerror": 2, "none": 1, "pass": 0}


def _strictest(results: list[DMARCResult]) -> DMARCResult:
    if len(results) == 1:
        return results[0]
    # The strictest policy first, then the worst result: pass only when all pass; a pass and a none give
    # none (the message as a whole is not protected); a fail anywhere gives fail.
    worst = max(results, key=lambda r: (_STRICTNESS[r.policy], _RESULT_RANK[r.result]))
    return replace(worst, reason=f"{worst.reason} (From domains: {', '.join(r.from_domain for r in results)})")


def author_domains(message: bytes | Message) -> list[str]:
    """The distinct domains of the RFC5322.From addresses of `message` (RFC 5322 §3.6.2), in order.
    Raises AuthorDomainError when there is no From field or an address in it has no domain (§6.6.1).

    The addresses are the email package's reading (a compat32 parse of the header section, then
    email.utils.getaddresses).  A header section in CRLF lines that dkimpy's parser reads
    (fastmail.hygiene.message) and whose From fields are ASCII gives the email package the same fields
    with the same values — the field value as it stands after the colon, leading SP/HT and the final CRLF
    removed — so those are taken from the shared parse instead of a second parser's; any other message
    goes to the email package's parser, cut after the header section (header_end: at or after the email
    parser's own end of it, as every line end dkimpy knows is one of the email package's).
    tests/unit/test_hygiene_canon.py compares the two readings on generated messages."""
    msg = parse_message(message)
    values = _from_values(msg)
    if values is None:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(msg.header_section)
        values = [str(f) for f in headers.get_all("From") or []]
    if not values:
        raise AuthorDomainError("no From field")
    addresses = _simple_addresses(values)
    if addresses is None:
        addresses = email.utils.getaddresses(values)
    domains: list[str] = []
    for _, address in addresses:
        local, at, domain = address.rpartition("@")
        domain = normalize_domain(domain)
        if not at or not local or not _is_domain(domain):
            raise AuthorDomainError("a From address without a usable domain")
        if domain not in domains:
            domains.append(domain)
    if not domains:
        raise AuthorDomainError("no address in the From field")
    return domains


def _from_values(msg: Message) -> list[str] | None:
    """The From fields' values as the email package's compat32 parser gives them, or None where its
    reading could differ from dkimpy's: a header section dkimpy cannot parse, line ends other than CRLF
    (the email package also ends a line at a bare CR), an mbox "From " line (dkimpy skips it and joins a
    continuation after it to the field above; the email package ends that field there), a From value that
    is not ASCII."""
    head = msg.header_section
    if msg.error or not core_canon.crlf_only(head) or head.startswith(b"From ") or b"\nFrom " in head:
        return None
    values = []
    for name, value in msg.fields:
        if name.lower() == b"from":
            if not value.isascii():
                return None
            values.append(value.decode("ascii").lstrip(" \t").rstrip("\r\n"))
    return values


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# `Display Name <local@domain>` or `local@domain`: a phrase of atoms (no quotes, comments, dots, specials),
# a dot-atom local part and a domain of letters, digits, "-" and dots, on one line.  What email.utils
# reads in these shapes is the addr-spec as written (tests/unit/test_hygiene_dmarc.py compares the two).
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*(?:(?:{_ATEXT}+[ \t]*)*<({_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    rf"|({_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*))[ \t]*")


def _simple_addresses(values: list[str]) -> list[tuple[str, str]] | None:
    """The addresses of From values that are each one address in a simple shape (_SIMPLE_ADDRESS), as
    email.utils.getaddresses gives them but without its tokenizer (~50 µs a message); None when any value
    has another shape, which then goes to email.utils."""
    out = []
    for value in values:
        m = _SIMPLE_ADDRESS.fullmatch(value)
        if m is None:
            return None
        out.append(("", m.group(1) or m.group(2)))
    return out


_DOMAIN = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")


def _is_domain(domain: str) -> bool:
    """A dot-atom host name (no address literal: DMARC has nothing to look up for one)."""
    return _DOMAIN.fullmatch(domain) is not None
