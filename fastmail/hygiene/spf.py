"""SPF, RFC 7208: may this IP address send mail for this domain?

`check_host()` is the function of RFC 7208 §4; `check_mail_from()` and `check_helo()` pick its arguments for
the two identities of §2.3 and §2.4.  The result is an `SPFResult`: one of the seven results of §2.6, the
explanation of a "fail" (§6.2), the directive that matched and the number of DNS-querying terms evaluated.

A record is parsed whole before any of it is evaluated (§4.6: a syntax error anywhere is "permerror").
Evaluation follows §4.6.2 term by term, sharing across include= and redirect= one counter of the terms that
query DNS (at most 10), one counter of void lookups (at most 2) and one deadline (`timeout`, §4.6.4: "at
least 20 seconds").  DNS goes through an `SPFResolver` (fastmail.hygiene.dnsq): NXDOMAIN and NODATA are
"void", anything else that is not an answer is "temperror".

Not covered by the RFC and decided here:
- a target name that is not a valid DNS name (a label over 63 octets, an empty label; §4.8 leaves it
  undefined) does not exist: the mechanism does not match, and it is not counted as a void lookup;
- c-ares will not put into a question a name with octets other than letters, digits and "-_./*"; such
  names (a %{l} of "a+b", an upper-case macro's %-escapes) are treated the same way;
- the reverse lookup of "ptr" and "%{p}" is not counted as a void lookup: the sender's policy does not
  control the client's PTR records;
- more than 10 MX records is "permerror" (§4.6.4), checked before any address is looked up.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .deadline import within
from .dnsq import BadName, DNSTempError, NXDomain, SPFResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")  # §2.6
MAX_TERMS = 10  # §4.6.4: include, a, mx, ptr, exists and redirect
MAX_VOIDS = 2  # §4.6.4: lookups answered NODATA or NXDOMAIN
MAX_NAMES = 10  # §4.6.4: MX names per "mx", PTR names per "ptr" and %{p}
MAX_DOMAIN = 253  # §7.3: longer expansions lose labels on the left

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}  # §4.6.2
_DOMAIN_LETTERS = "slodipvh"  # §7.1
_EXP_LETTERS = _DOMAIN_LETTERS + "crt"  # §7.1: c, r and t only in explanation text
_ALL_LETTERS = _EXP_LETTERS  # an unknown modifier's macro-string: any letter, as long as it parses


@dataclass(frozen=True)
class SPFResult:
    result: str  # one of RESULTS
    explanation: str | None = None  # a "fail" whose record has a usable exp= (§6.2)
    mechanism: str | None = None  # the directive that matched, as written
    lookups: int = 0  # DNS-querying terms evaluated (§4.6.4)


class PermError(Exception):
    """check_host() ends in "permerror" (§2.6.7): the published records cannot be interpreted."""


class TempError(Exception):
    """check_host() ends in "temperror" (§2.6.6): a DNS question got no usable answer."""


# --- record syntax (§4.5, §4.6.1, §5, §6, ABNF of §12) -------------------------------------------------

@dataclass(frozen=True)
class Macro:
    """macro-expand (§7.1): %{letter digits r delimiters}; "%%", "%_" and "%-" have letter "%", "_", "-"."""

    letter: str  # lower case
    digits: int = 0  # 0: all parts
    reverse: bool = False
    delimiters: str = ""
    escape: bool = False  # an upper-case letter: URL-escape the value (§7.3)


MacroString = tuple[str | Macro, ...]


@dataclass(frozen=True)
class Directive:
    """directive = [ qualifier ] mechanism (§4.6.1)."""

    result: str  # the qualifier's result (§4.6.2)
    mechanism: str  # all, include, a, mx, ptr, ip4, ip6, exists (lower case)
    text: str  # as written
    domain_spec: MacroString | None = None
    network: IPNetwork | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class Record:
    directives: tuple[Directive, ...]
    redirect: MacroString | None = None  # §6.1
    exp: MacroString | None = None  # §6.2


_EXPAND = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")  # macro-expand, §7.1
_ESCAPES = {"%": "%", "_": " ", "-": "%20"}  # §7.1: "%%", "%_", "%-"
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9._-]*)=(.*)", re.S)  # name "=" macro-string, §4.6.1
_MECHANISM = re.compile(r"([+?~-]?)([A-Za-z][A-Za-z0-9]*)(.*)", re.S)
_TOPLABEL = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")  # §7.1
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]|[0-9])"
_IP4 = re.compile(rf":({_QNUM}(?:\.{_QNUM}){{3}})(?:/(0|[1-9][0-9]?))?")  # §5.6 ip4-network, ip4-cidr-length
_IP6 = re.compile(r":([0-9A-Fa-f:.]+)(?:/(0|[1-9][0-9]{0,2}))?")  # §5.6 ip6-network, ip6-cidr-length
_DUAL_CIDR = re.compile(r"(?:/(0|[1-9][0-9]?))?(?://(0|[1-9][0-9]{0,2}))?")  # §5.6 dual-cidr-length
_SPEC_AND_CIDR = re.compile(r"(.*?)((?:/[0-9]+)?(?://[0-9]+)?)", re.S)


def macro_string(text: str, letters: str = _ALL_LETTERS, *, spaces: bool = False) -> MacroString:
    """macro-string = *( macro-expand / macro-literal ) (§7.1); `spaces` for explain-string (§6.2).
    Raises PermError."""
    out: list[str | Macro] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%":
            macro, i = _macro_expand(text, i, letters)
            if literal:
                out.append("".join(literal))
                literal = []
            out.append(macro)
            continue
        if not ("\x21" <= c <= "\x7e" or (spaces and c == " ")):  # macro-literal = %x21-24 / %x26-7E
            raise PermError(f"character {c!r} in {text!r}")
        literal.append(c)
        i += 1
    if literal:
        out.append("".join(literal))
    return tuple(out)


def _macro_expand(text: str, i: int, letters: str) -> tuple[Macro, int]:
    nxt = text[i + 1:i + 2]
    if nxt in _ESCAPES:
        return Macro(nxt), i + 2
    m = _EXPAND.match(text, i)
    if m is None:
        raise PermError(f"bad macro in {text!r}")  # §7.1: "%" not followed by "{", "%", "-" or "_"
    letter, digits, reverse, delimiters = m.groups()
    if letter.lower() not in letters:
        raise PermError(f"macro letter {letter!r} not allowed here")
    if digits and int(digits) == 0:
        raise PermError("macro transformer 0")  # §7.3: "the value MUST be nonzero"
    return Macro(letter.lower(), int(digits or 0), bool(reverse), delimiters, letter.isupper()), m.end()


def domain_spec(text: str, letters: str = _DOMAIN_LETTERS) -> MacroString:
    """domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) / macro-expand (§7.1)."""
    spec = macro_string(text, letters)
    if not spec:
        raise PermError("empty domain-spec")
    last = spec[-1]
    if isinstance(last, str):
        tail = last[:-1] if last.endswith(".") else last
        if "." not in tail or not _TOPLABEL.fullmatch(tail.rsplit(".", 1)[1]):
            raise PermError(f"domain-spec {text!r} does not end in a top label")
    return spec


def parse_record(text: str) -> Record:
    """record = version terms *SP (§4.5, §4.6.1), for a record already selected by its version.
    Raises PermError on any syntax error anywhere (§4.6)."""
    if text[:6].lower() != "v=spf1" or text[6:7] not in ("", " "):
        raise PermError("not an SPF record")
    directives: list[Directive] = []
    modifiers: dict[str, MacroString] = {}
    for term in text[6:].split(" "):  # terms = *( 1*SP ( directive / modifier ) ): SP only
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier is None:
            directives.append(_directive(term))
            continue
        name, value = modifier.group(1).lower(), modifier.group(2)
        if name in ("redirect", "exp"):
            if name in modifiers:
                raise PermError(f"{name}= twice")  # §6
            modifiers[name] = domain_spec(value)
        else:
            macro_string(value)  # unknown-modifier: ignored, but its macro-string must parse (§6)
    return Record(tuple(directives), modifiers.get("redirect"), modifiers.get("exp"))


# A record's parse (immutable) per text: the domains that send to us publish the same few records again and
# again.  A PermError is not kept (lru_cache keeps only results): it is raised again each time.
_parsed_record = functools.lru_cache(maxsize=1024)(parse_record)


def _directive(term: str) -> Directive:
    m = _MECHANISM.fullmatch(term)
    if m is None:
        raise PermError(f"unknown term {term!r}")
    qualifier, name, rest = m.group(1), m.group(2).lower(), m.group(3)
    result = _QUALIFIERS[qualifier or "+"]
    if name == "all":  # §5.1
        if rest:
            raise PermError(f"bad all: {term!r}")
        return Directive(result, name, term)
    if name in ("include", "exists"):  # §5.2, §5.7: ":" domain-spec
        if not rest.startswith(":"):
            raise PermError(f"{name} needs a domain: {term!r}")
        return Directive(result, name, term, domain_spec(rest[1:]))
    if name in ("a", "mx"):  # §5.3, §5.4
        return _a_or_mx(result, name, term, rest)
    if name == "ptr":  # §5.5
        if not rest:
            return Directive(result, name, term)
        if not rest.startswith(":"):
            raise PermError(f"bad ptr: {term!r}")
        return Directive(result, name, term, domain_spec(rest[1:]))
    if name in ("ip4", "ip6"):  # §5.6
        return Directive(result, name, term, network=_ip_network(name, rest))
    raise PermError(f"unknown mechanism {term!r}")


def _a_or_mx(result: str, name: str, term: str, rest: str) -> Directive:
    """"a" / "mx" [ ":" domain-spec ] [ dual-cidr-length ] (§5.3, §5.4)."""
    spec: MacroString | None = None
    cidr = rest
    if rest.startswith(":"):
        split = _SPEC_AND_CIDR.fullmatch(rest[1:])
        assert split is not None  # (.*?) and an optional suffix match anything
        spec, cidr = domain_spec(split.group(1)), split.group(2)
    lengths = _DUAL_CIDR.fullmatch(cidr)
    if lengths is None:
        raise PermError(f"bad CIDR length in {term!r}")
    cidr4 = int(lengths.group(1) or 32)
    cidr6 = int(lengths.group(2) or 128)
    if cidr4 > 32 or cidr6 > 128:
        raise PermError(f"bad CIDR length in {term!r}")
    return Directive(result, name, term, spec, cidr4=cidr4, cidr6=cidr6)


def _ip_network(name: str, rest: str) -> IPNetwork:
    """"ip4" ":" ip4-network [ ip4-cidr-length ] / "ip6" ":" ip6-network [ ip6-cidr-length ] (§5.6)."""
    m = (_IP4 if name == "ip4" else _IP6).fullmatch(rest)
    if m is None:
        raise PermError(f"bad {name}{rest}")
    address, length = m.group(1), m.group(2)
    try:
        if name == "ip4":
            return ipaddress.IPv4Network(f"{address}/{length or 32}", strict=False)
        return ipaddress.IPv6Network(f"{address}/{length or 128}", strict=False)
    except ValueError:  # e.g. ":CAFE::BABE"
        raise PermError(f"bad {name}{rest}") from None


def select_record(txts: list[bytes]) -> str | None:
    """The SPF record among a name's TXT records (§4.5): those starting with "v=spf1" then SP or the end
    (case-insensitive); none: None; more than one: PermError; non-ASCII: PermError (§3.1)."""
    spf = [t for t in txts if t[:6].lower() == b"v=spf1" and t[6:7] in (b"", b" ")]
    if not spf:
        return None
    if len(spf) > 1:
        raise PermError("more than one SPF record")
    try:
        return spf[0].decode("ascii")
    except UnicodeDecodeError:
        raise PermError("SPF record not ASCII") from None


# --- names and addresses ----------------------------------------------------------------------------

def valid_domain(domain: str) -> str | None:
    """<domain> without its trailing dot, or None when malformed (§4.3: a label over 63 octets, an empty
    label, a single label, a non-alphabetic top label as in an address literal)."""
    name = domain[:-1] if domain.endswith(".") else domain
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if len(name) > MAX_DOMAIN or len(labels) < 2 or not all(0 < len(label) <= 63 for label in labels):
        return None
    return name if _TOPLABEL.fullmatch(labels[-1]) else None


def target_name(expanded: str) -> str:
    """An expanded domain-spec as a name to query: without a trailing dot, and with labels taken off the
    left while it is longer than 253 characters (§7.3)."""
    name = expanded[:-1] if expanded.endswith(".") else expanded
    while len(name) > MAX_DOMAIN and "." in name:
        name = name.split(".", 1)[1]
    return name


@functools.lru_cache(maxsize=4096)  # an address of an a/mx answer: the same for every message of its sender
def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)  # (~3 µs a parse; the same clients send again and again)
def client_address(ip: str) -> IPAddress:
    """<ip>; an IPv4-mapped IPv6 address is the IPv4 address (§5, §5.6)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _in_prefix(ip: IPAddress, other: str, length: int) -> bool:
    address = _address(other)
    if address is None or address.version != ip.version:
        return False
    shift = ip.max_prefixlen - length
    return int(address) >> shift == int(ip) >> shift


def _subdomain(name: str, parent: str) -> bool:
    name, parent = name.rstrip(".").lower(), parent.rstrip(".").lower()
    return name == parent or name.endswith("." + parent)


# --- evaluation (§4.6, §5, §6) ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Outcome:
    result: str
    mechanism: str | None = None
    exp: tuple[MacroString, str] | None = None  # the exp= of the record that failed, and its <domain>


class _Check:
    """The state of one check_host() evaluation, shared by its include= and redirect= recursions."""

    def __init__(self, ip: IPAddress, sender: str, helo: str, receiver: str, dns: SPFResolver) -> None:
        self.ip = ip
        local, at, domain = sender.rpartition("@")
        self.sender_domain = domain
        self.local = local if at and local else "postmaster"  # §4.3: no local-part: "postmaster"
        self.sender = f"{self.local}@{domain}"
        self.helo = helo
        self.receiver = receiver
        self.dns = dns
        self.lookups = 0
        self.voids = 0
        self._ptr_names: list[str] | None = None
        self._validated: dict[str, bool] = {}

    # counters (§4.6.4)

    def count_term(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_TERMS:
            raise PermError(f"more than {MAX_TERMS} DNS-querying terms")

    async def lookup(self, query: Callable[[str], Awaitable[list[_T]]], name: str, *, void: bool) -> list[_T]:
        """The records, [] for a name that does not exist or has none (counted as a void lookup when
        `void`); TempError when DNS gave no answer."""
        try:
            records = await query(name)
        except BadName:
            return []
        except NXDomain:
            records = []
        except DNSTempError as e:
            raise TempError(str(e)) from None
        if not records and void:
            self.voids += 1
            if self.voids > MAX_VOIDS:
                raise PermError(f"more than {MAX_VOIDS} void lookups")
        return records

    def addresses(self, name: str) -> Awaitable[list[str]]:
        return self.dns.a(name) if self.ip.version == 4 else self.dns.aaaa(name)

    # check_host() (§4)

    async def check_host(self, domain: str) -> _Outcome:
        name = valid_domain(domain)
        if name is None:
            return _Outcome("none")  # §4.3
        record = await self.record(name)
        if record is None:
            return _Outcome("none")  # §4.5
        for directive in record.directives:  # §4.6.2: the first match decides
            if await self.matches(directive, name):
                exp = (record.exp, name) if directive.result == "fail" and record.exp else None
                return _Outcome(directive.result, directive.text, exp)
        if record.redirect is not None:
            return await self.redirect(record.redirect, name)
        return _Outcome("neutral")  # §4.7

    async def record(self, name: str) -> Record | None:
        """§4.4 record lookup, §4.5 selection, §4.6 parsing."""
        try:
            txts = await self.dns.txt(name)
        except NXDomain:
            return None
        except DNSTempError as e:
            raise TempError(str(e)) from None
        text = select_record(txts)
        return None if text is None else _parsed_record(text)

    async def redirect(self, spec: MacroString, domain: str) -> _Outcome:
        """§6.1: the result of check_host() for the target; "none" there is "permerror" here."""
        self.count_term()
        target = target_name(await self.expand(spec, domain))
        outcome = await self.check_host(target)
        if outcome.result == "none":
            raise PermError(f"redirect={target}: no SPF record")
        return outcome

    async def matches(self, d: Directive, domain: str) -> bool:
        if d.mechanism == "all":  # §5.1
            return True
        if d.network is not None:  # §5.6
            return self.ip.version == d.network.version and self.ip in d.network
        self.count_term()
        target = domain if d.domain_spec is None else target_name(await self.expand(d.domain_spec, domain))
        if d.mechanism == "include":
            return await self.include(target)
        if d.mechanism == "a":
            return self._any_in(await self.lookup(self.addresses, target, void=True), d)
        if d.mechanism == "mx":
            return await self.mx(target, d)
        if d.mechanism == "ptr":
            return await self.ptr(target)
        return bool(await self.lookup(self.dns.a, target, void=True))  # exists, §5.7: always A

    def _any_in(self, addresses: list[str], d: Directive) -> bool:
        length = d.cidr4 if self.ip.version == 4 else d.cidr6
        return any(_in_prefix(self.ip, a, length) for a in addresses)

    async def include(self, target: str) -> bool:
        """§5.2: pass matches; fail, softfail, neutral do not; none is permerror; errors propagate."""
        outcome = await self.check_host(target)
        if outcome.result == "none":
            raise PermError(f"include:{target}: no SPF record")
        return outcome.result == "pass"

    async def mx(self, target: str, d: Directive) -> bool:
        """§5.4: the addresses of each MX host of the target; at most 10 MX names (§4.6.4)."""
        exchanges = await self.lookup(self.dns.mx, target, void=True)
        if len(exchanges) > MAX_NAMES:
            raise PermError(f"mx:{target}: more than {MAX_NAMES} MX records")
        for _, host in sorted(exchanges):
            if host and self._any_in(await self.lookup(self.addresses, host, void=False), d):
                return True  # an empty host is a null MX (RFC 7505): no addresses
        return False

    async def ptr(self, target: str) -> bool:
        """§5.5: a validated name of <ip> that is the target or below it."""
        for name in await self.ptr_names():
            if _subdomain(name, target) and await self.validated(name):
                return True
        return False

    async def ptr_names(self) -> list[str]:
        """The first 10 names of <ip>'s PTR records (§4.6.4); a DNS error: none (§5.5)."""
        if self._ptr_names is None:
            try:
                names = await self.dns.ptr(self.ip.reverse_pointer)
            except (NXDomain, DNSTempError):
                names = []
            self._ptr_names = names[:MAX_NAMES]
        return self._ptr_names

    async def validated(self, name: str) -> bool:
        """Is <ip> among the addresses of `name`?  A DNS error skips the name (§5.5)."""
        key = name.lower()
        if key not in self._validated:
            try:
                addresses = await self.addresses(name)
            except (NXDomain, DNSTempError):
                addresses = []
            self._validated[key] = any(_in_prefix(self.ip, a, self.ip.max_prefixlen) for a in addresses)
        return self._validated[key]

    # macros (§7)

    async def expand(self, spec: MacroString, domain: str) -> str:
        out: list[str] = []
        for item in spec:
            out.append(item if isinstance(item, str) else await self._macro(item, domain))
        return "".join(out)

    async def _macro(self, m: Macro, domain: str) -> str:
        if m.letter in _ESCAPES:
            return _ESCAPES[m.letter]
        value = await self._letter(m.letter, domain)
        if m.digits or m.reverse or m.delimiters:  # §7.3: split, reverse, keep the right-hand parts
            parts = re.split("[" + re.escape(m.delimiters or ".") + "]", value)
            if m.reverse:
                parts.reverse()
            value = ".".join(parts[-m.digits:] if m.digits else parts)
        return urllib.parse.quote(value, safe="") if m.escape else value

    async def _letter(self, letter: str, domain: str) -> str:
        """The value of a macro letter (§7.2)."""
        simple = {"s": self.sender, "l": self.local, "o": self.sender_domain, "d": domain, "h": self.helo,
                  "r": self.receiver, "v": "in-addr" if self.ip.version == 4 else "ip6"}
        if letter in simple:
            return simple[letter]
        if letter == "i":
            if self.ip.version == 4:
                return str(self.ip)
            return ".".join(self.ip.exploded.replace(":", "").upper())  # nibbles, as in §7.4's example
        if letter == "c":
            return str(self.ip)  # RFC 5952 form for IPv6
        if letter == "t":
            return str(int(time.time()))
        return await self.validated_domain(domain)  # "p"

    async def validated_domain(self, domain: str) -> str:
        """%{p} (§7.3): a validated name of <ip>, <domain> itself or one below it if there is one,
        else "unknown"."""
        names = [n for n in await self.ptr_names() if await self.validated(n)]
        for wanted in (lambda n: n.lower() == domain.lower(), lambda n: _subdomain(n, domain), bool):
            for name in names:
                if wanted(name):
                    return name
        return "unknown"

    async def explain(self, spec: MacroString, domain: str) -> str | None:
        """§6.2: the exp= TXT record's text, macro-expanded; any trouble: no explanation.  Neither the term
        nor a void answer counts against the limits (§4.6.4)."""
        try:
            txts = await self.dns.txt(target_name(await self.expand(spec, domain)))
        except (NXDomain, DNSTempError):
            return None
        if len(txts) != 1:
            return None
        try:
            text = macro_string(txts[0].decode("ascii"), _EXP_LETTERS, spaces=True)
        except (UnicodeDecodeError, PermError):
            return None
        return await self.expand(text, domain)


# --- the API ------------------------------------------------------------------------------------------

async def check_host(ip: str, domain: str, sender: str, helo: str, *, resolver: SPFResolver,
                     timeout: float | None = 20.0, receiver: str = "unknown") -> SPFResult:
    """check_host(<ip>, <domain>, <sender>) of RFC 7208 §4.  `helo` is for %{h}, `receiver` (this host's
    name) for %{r}.  `timeout` bounds the whole evaluation (§4.6.4), then "temperror"; the explanation of a
    "fail" gets what is left of it, and is dropped when that runs out; None sets no timer (the caller
    bounds the evaluation, as the inbound checks do).  ValueError: `ip` is no address."""
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    check = _Check(client_address(ip), sender, helo, receiver, resolver)
    try:
        outcome = await within(check.check_host(domain), deadline)
    except PermError:
        return SPFResult("permerror", lookups=check.lookups)
    except (TempError, TimeoutError):
        return SPFResult("temperror", lookups=check.lookups)
    explanation = None
    if outcome.exp is not None:
        try:
            explanation = await within(check.explain(*outcome.exp), deadline)
        except TimeoutError:
            pass
    return SPFResult(outcome.result, explanation, outcome.mechanism, check.lookups)


async def check_mail_from(ip: str, mail_from: str, helo: str, *, resolver: SPFResolver,
                          timeout: float | None = 20.0, receiver: str = "unknown") -> SPFResult:
    """The "MAIL FROM" identity (§2.4): the reverse-path's domain; a null reverse-path is
    postmaster@<HELO identity>; an address without "@" is taken as a domain."""
    if mail_from in ("", "<>"):
        return await check_helo(ip, helo, resolver=resolver, timeout=timeout, receiver=receiver)
    _, at, domain = mail_from.rpartition("@")
    sender = mail_from if at else f"postmaster@{mail_from}"
    return await check_host(ip, domain if at else mail_from, sender, helo, resolver=resolver, timeout=timeout,
                            receiver=receiver)


async def check_helo(ip: str, helo: str, *, resolver: SPFResolver, timeout: float | None = 20.0,
                     receiver: str = "unknown") -> SPFResult:
    """The "HELO" identity (§2.3): <domain> is the HELO/EHLO name, <sender> postmaster@ it; an address
    literal or a single-label name is "none" (§4.3)."""
    return await check_host(ip, helo, f"postmaster@{helo}", helo, resolver=resolver, timeout=timeout,
                            receiver=receiver)


# --- results kept while their answers are ---------------------------------------------------------------

KEPT_RESULTS = 4096  # results kept at most; the oldest goes first


class KeptResults:
    """check_mail_from() results, each kept while every DNS answer its evaluation read is still the answer
    `resolver` keeps (fastmail.hygiene.dnsq.Resolver.kept_entry: the same entry, not expired).

    A result is a function of the client address, the sender, the HELO name, the receiver's name and the DNS
    answers the evaluation read (RFC 7208 §4: check_host() has no other input), so while those answers are
    the kept ones, evaluating again gives the same result.  Mail from one sender arrives in runs (a list, a
    notification service), and its record, its includes and its addresses are kept for their TTL anyway;
    this saves the evaluation, not just the questions.  Not kept: a result that read an answer the resolver
    did not keep (NXDOMAIN, NODATA, a TTL of 0, an answer read from a question started for this message that
    has expired since), a temperror, and a result with an explanation (its %{t} macro is the time).  The
    key holds everything else the evaluation reads: `receiver` is fixed per instance."""

    def __init__(self, resolver: Any, receiver: str, size: int = KEPT_RESULTS) -> None:
        self._resolver = resolver
        self._receiver = receiver
        self._size = size
        self._results: dict[tuple[str, str, str], tuple[SPFResult, list[tuple[str, str, Any]]]] = {}
        self.hits = 0

    def get(self, ip: str, mail_from: str, helo: str) -> SPFResult | None:
        """The kept result for this client, sender and HELO name, None when there is none (or it no longer
        holds)."""
        key = (ip, mail_from, helo)
        found = self._results.get(key)
        if found is None:
            return None
        kept = self._resolver.kept_entry
        for qtype, name, entry in found[1]:
            if kept(qtype, name) is not entry:
                del self._results[key]
                return None
        self.hits += 1
        return found[0]

    async def check_mail_from(self, ip: str, mail_from: str, helo: str, *, resolver: SPFResolver,
                              timeout: float | None = 20.0) -> SPFResult:
        """check_mail_from() through `resolver` (a view of this instance's resolver, such as dnsq.Lookups),
        its result kept when it may be."""
        recording = _Recording(resolver, self._resolver)
        result = await check_mail_from(ip, mail_from, helo, resolver=recording,  # type: ignore[arg-type]
                                       timeout=timeout, receiver=self._receiver)
        if recording.complete and result.result != "temperror" and result.explanation is None:
            if len(self._results) >= self._size:
                del self._results[next(iter(self._results))]
            self._results[(ip, mail_from, helo)] = (result, recording.read)
        return result


class _Recording:
    """An SPFResolver over `dns` noting the kept entry (of `kept`, the resolver behind `dns`) of each answer
    read; `complete` turns False at the first answer that is not a kept one (or a question that failed)."""

    __slots__ = ("_dns", "_kept", "read", "complete")

    def __init__(self, dns: SPFResolver, kept: Any) -> None:
        self._dns = dns
        self._kept = kept
        self.read: list[tuple[str, str, Any]] = []
        self.complete = True

    async def _ask(self, qtype: str, name: str, answer: Awaitable[list[_T]]) -> list[_T]:
        try:
            records = await answer
        except BaseException:
            self.complete = False
            raise
        entry = self._kept.kept_entry(qtype, name)
        if entry is None or entry[1] is not records:
            self.complete = False
        else:
            self.read.append((qtype, name, entry))
        return records

    def txt(self, name: str) -> Awaitable[list[bytes]]:
        return self._ask("TXT", name, self._dns.txt(name))

    def a(self, name: str) -> Awaitable[list[str]]:
        return self._ask("A", name, self._dns.a(name))

    def aaaa(self, name: str) -> Awaitable[list[str]]:
        return self._ask("AAAA", name, self._dns.aaaa(name))

    def mx(self, name: str) -> Awaitable[list[tuple[int, str]]]:
        return self._ask("MX", name, self._dns.mx(name))

    def ptr(self, name: str) -> Awaitable[list[str]]:
        return self._ask("PTR", name, self._dns.ptr(name))
