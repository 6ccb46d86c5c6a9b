"""fastmail.hygiene.spf (RFC 7208) against a real DNS server on 127.0.0.1 (dnslib): the openspf.org RFC 7208
test suite (tests/data/spf/rfc7208-tests.yml), then the limits, DNS errors, timeouts and §7.4's macro
examples by hand.

The suite's zone data is served as its own driver (pyspf's testspf.py) serves it: a name's "SPF" records
are also its TXT records unless it has TXT records of its own ("TXT: NONE" meaning none at all); the SPF
records themselves are served as type 99, which RFC 7208 no longer asks for; "TIMEOUT" leaves unanswered
every question about the name that its records do not answer.  The driver expects "DEFAULT" as the
explanation of a "fail" without a usable exp=: here that is an explanation of None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastmail.hygiene import spf
from fastmail.hygiene.dnsq import Resolver
from tests.integration.dnsserver import LocalDNS

SUITE = Path(__file__).resolve().parents[1] / "data" / "spf" / "rfc7208-tests.yml"

# The cases that cannot pass here, and why.
XFAIL = {
    "null-text": "a TXT RR of no character-strings is malformed (RFC 1035 §3.3.14): c-ares rejects the whole "
                 "reply, so the record lookup is temperror",
    "a-colon-domain": "c-ares refuses ':' in a question name; the target is treated as nonexistent",
    "a-colon-domain-ip4mapped": "c-ares refuses ':' in a question name; the target is treated as nonexistent",
    "mx-colon-domain": "c-ares refuses ':' in a question name; the target is treated as nonexistent",
    "mx-colon-domain-ip4mapped": "c-ares refuses ':' in a question name; the target is treated as nonexistent",
    "macro-mania-in-domain": "c-ares refuses '%' and ' ' in a question name; the target is treated as nonexistent",
}


# --- the suite --------------------------------------------------------------------------------------------

def _strings(value: Any) -> list[bytes]:
    values = value if isinstance(value, list) else [value]
    return [str(v).encode("utf-8") for v in values]


def _zone(zonedata: dict[str, list[Any]]) -> tuple[dict[str, list[tuple[str, Any]]], set[str]]:
    """The scenario's zone for LocalDNS, and its names that time out (as testspf.py's getrdata())."""
    zone: dict[str, list[tuple[str, Any]]] = {}
    timeout: set[str] = set()
    for name, entries in zonedata.items():
        records: list[tuple[str, Any]] = []
        spf_txt: list[tuple[str, Any]] = []
        own_txt = False
        for entry in entries:
            if entry == "TIMEOUT":
                timeout.add(name.lower())
                continue
            ((rtype, value),) = entry.items()
            if rtype == "TXT":
                own_txt = True
                if value != "NONE":
                    records.append(("TXT", _strings(value)))
            elif rtype == "SPF":
                records.append(("SPF", _strings(value)))
                spf_txt.append(("TXT", _strings(value)))
            elif rtype == "MX":
                records.append(("MX", (value[0], value[1])))
            elif rtype in ("A", "AAAA", "PTR", "CNAME"):
                records.append((rtype, value))
            else:
                raise AssertionError(f"zone data {entry!r} of {name}")
        zone[name.lower()] = records + ([] if own_txt else spf_txt)
    return zone, timeout


def _cases() -> Iterator[Any]:
    with SUITE.open("rb") as f:
        scenarios = list(yaml.safe_load_all(f))
    seen: set[str] = set()
    for scenario in scenarios:
        zone = _zone(scenario["zonedata"])
        for name, case in scenario["tests"].items():
            assert name not in seen
            seen.add(name)
            marks = [pytest.mark.xfail(reason=XFAIL[name], strict=True)] if name in XFAIL else []
            yield pytest.param(zone, case, id=name, marks=marks)


CASES = list(_cases())


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    d = LocalDNS().start()
    yield d
    d.stop()


def serve(dns: LocalDNS, zone: dict[str, list[tuple[str, Any]]], timeout: Collection[str] = ()) -> None:
    with dns.lock:
        dns.zone = {name: list(records) for name, records in zone.items()}
        dns.timeout = set(timeout)
        dns.servfail = set()
        dns.asked.clear()


def run(dns: LocalDNS, check: Callable[[Resolver], Awaitable[spf.SPFResult]], *,
        query_timeout: float = 0.3) -> spf.SPFResult:
    async def main() -> spf.SPFResult:
        r = Resolver(dns.address, timeout=query_timeout, tries=1)
        try:
            return await check(r)
        finally:
            r.close()

    return asyncio.run(main())


def test_every_case_is_run() -> None:
    assert len(CASES) == 203
    assert {p.id for p in CASES} >= set(XFAIL)


@pytest.mark.parametrize("zone, case", CASES)
def test_rfc7208_suite(dns: LocalDNS, zone: Any, case: dict[str, Any]) -> None:
    serve(dns, *zone)
    res = run(dns, lambda r: spf.check_mail_from(case["host"], case["mailfrom"], case["helo"], resolver=r,
                                                 receiver="receiver.example.net"))
    wanted = case["result"] if isinstance(case["result"], list) else [case["result"]]
    assert res.result in wanted, case.get("description")
    if "explanation" in case:
        assert res.explanation == (None if case["explanation"] == "DEFAULT" else case["explanation"])


# --- by hand ----------------------------------------------------------------------------------------------

def check(dns: LocalDNS, ip: str, mail_from: str, helo: str = "mail.example.org", **kw: Any) -> spf.SPFResult:
    return run(dns, lambda r: spf.check_mail_from(ip, mail_from, helo, resolver=r, **kw))


def test_pass_names_the_mechanism_and_counts_lookups(dns: LocalDNS) -> None:
    serve(dns, {"example.org": [("TXT", "v=spf1 a:a.example.org mx include:inc.example.org -all")],
                "a.example.org": [("A", "192.0.2.1")],
                "inc.example.org": [("TXT", "v=spf1 ip4:192.0.2.77/32 -all")]})
    assert check(dns, "192.0.2.77", "someone@example.org") == spf.SPFResult(
        "pass", None, "include:inc.example.org", 3)
    assert check(dns, "192.0.2.1", "someone@example.org") == spf.SPFResult("pass", None, "a:a.example.org", 1)
    res = check(dns, "192.0.2.9", "someone@example.org")
    assert (res.result, res.mechanism) == ("fail", "-all")


def _chain(n: int) -> dict[str, list[tuple[str, Any]]]:
    """example.org includes i1, i1 includes i2 ... up to i<n>, which passes 192.0.2.1."""
    zone: dict[str, list[tuple[str, Any]]] = {"example.org": [("TXT", "v=spf1 include:i1.example.org -all")]}
    for i in range(1, n):
        zone[f"i{i}.example.org"] = [("TXT", f"v=spf1 include:i{i + 1}.example.org -all")]
    zone[f"i{n}.example.org"] = [("TXT", "v=spf1 ip4:192.0.2.1 -all")]
    return zone


def test_ten_lookups_pass_the_eleventh_is_permerror(dns: LocalDNS) -> None:
    serve(dns, _chain(10))  # §4.6.4
    assert check(dns, "192.0.2.1", "x@example.org") == spf.SPFResult("pass", None, "include:i1.example.org", 10)
    serve(dns, _chain(11))
    assert check(dns, "192.0.2.1", "x@example.org") == spf.SPFResult("permerror", lookups=11)


def test_redirect_loop_is_permerror(dns: LocalDNS) -> None:
    serve(dns, {"example.org": [("TXT", "v=spf1 redirect=example.org")]})
    assert check(dns, "192.0.2.1", "x@example.org").result == "permerror"


def test_void_lookups(dns: LocalDNS) -> None:
    zone = {"example.org": [("TXT", "v=spf1 a:nx1.example.org mx:nodata.example.org ip4:192.0.2.1 -all")],
            "nodata.example.org": [("TXT", "not spf")]}  # NXDOMAIN, then NODATA
    serve(dns, zone)
    assert check(dns, "192.0.2.1", "x@example.org") == spf.SPFResult("pass", None, "ip4:192.0.2.1", 2)
    zone["example.org"] = [("TXT", "v=spf1 a:nx1.example.org mx:nodata.example.org exists:nx2.example.org "
                                   "ip4:192.0.2.1 -all")]
    serve(dns, zone)
    assert check(dns, "192.0.2.1", "x@example.org") == spf.SPFResult("permerror", lookups=3)  # the third


def test_servfail_is_temperror(dns: LocalDNS) -> None:
    serve(dns, {"example.org": [("TXT", "v=spf1 a:broken.example.org ip4:192.0.2.1 -all")]})
    dns.servfail.add("broken.example.org")
    assert check(dns, "192.0.2.1", "x@example.org").result == "temperror"
    dns.servfail.add("example.org")
    assert check(dns, "192.0.2.1", "x@example.org").result == "temperror"  # §4.4: the record lookup too


def test_query_timeout_is_temperror(dns: LocalDNS) -> None:
    serve(dns, {"example.org": [("TXT", "v=spf1 exists:slow.example.org -all")], "slow.example.org": []},
          timeout={"slow.example.org"})
    assert check(dns, "192.0.2.1", "x@example.org").result == "temperror"


def test_overall_timeout_is_temperror(dns: LocalDNS) -> None:
    """The deadline of the whole check (§4.6.4) ends it even while DNS still has time to answer."""
    serve(dns, {"example.org": [("TXT", "v=spf1 exists:slow.example.org -all")], "slow.example.org": []},
          timeout={"slow.example.org"})
    loop_time: list[float] = []

    async def main(r: Resolver) -> spf.SPFResult:
        start = asyncio.get_running_loop().time()
        res = await spf.check_mail_from("192.0.2.1", "x@example.org", "h.example.org", resolver=r, timeout=0.3)
        loop_time.append(asyncio.get_running_loop().time() - start)
        return res

    assert run(dns, main, query_timeout=30.0) == spf.SPFResult("temperror", lookups=1)
    assert loop_time[0] < 5.0


def test_no_record_nxdomain_and_malformed_are_none(dns: LocalDNS) -> None:
    serve(dns, {"example.org": [("TXT", "some other text")]})
    assert check(dns, "192.0.2.1", "x@example.org").result == "none"  # §4.5
    assert check(dns, "192.0.2.1", "x@nowhere.example.org").result == "none"  # §4.3 NXDOMAIN
    assert check(dns, "192.0.2.1", "x@" + "a" * 64 + ".example.org").result == "none"  # §4.3 malformed
    assert check(dns, "192.0.2.1", "x@localhost").result == "none"  # §4.3: not multi-label
    assert dns.asked == [("example.org", "TXT"), ("nowhere.example.org", "TXT")]


def test_empty_mail_from_checks_helo_and_helo_identity(dns: LocalDNS) -> None:
    serve(dns, {"mail.example.org": [("TXT", "v=spf1 -all exp=why.example.org")],
                "why.example.org": [("TXT", "%{s} via %{h}")]})
    for res in (check(dns, "192.0.2.1", "", "mail.example.org"),
                run(dns, lambda r: spf.check_helo("192.0.2.1", "mail.example.org", resolver=r))):
        assert res == spf.SPFResult("fail", "postmaster@mail.example.org via mail.example.org", "-all", 0)
    assert run(dns, lambda r: spf.check_helo("192.0.2.1", "[192.0.2.1]", resolver=r)).result == "none"


def test_ipv4_mapped_address_is_ipv4(dns: LocalDNS) -> None:
    serve(dns, {"example.org": [("TXT", "v=spf1 ip6:::ffff:0:0/96 a -all"), ("A", "192.0.2.1")]})
    res = check(dns, "::ffff:192.0.2.1", "x@example.org")
    assert (res.result, res.mechanism) == ("pass", "a")  # not the ip6 mechanism (§5.6)


def test_ptr_at_most_ten_names(dns: LocalDNS) -> None:
    names = [f"h{i}.example.org" for i in range(11)]
    zone: dict[str, list[tuple[str, Any]]] = {
        "example.org": [("TXT", "v=spf1 ptr:example.org -all")],
        "1.2.0.192.in-addr.arpa": [("PTR", n + ".") for n in names],
        names[10]: [("A", "192.0.2.1")],
    }
    serve(dns, zone)
    assert check(dns, "192.0.2.1", "x@example.org").result == "fail"  # the 11th name is not looked at
    zone[names[9]] = [("A", "192.0.2.1")]
    serve(dns, zone)
    assert check(dns, "192.0.2.1", "x@example.org").result == "pass"


# --- parsing and macros without DNS -----------------------------------------------------------------------

class NoDNS:
    async def txt(self, name: str) -> list[bytes]:
        raise AssertionError(name)

    a = aaaa = mx = ptr = txt


def expand(text: str, ip: str = "192.0.2.3", *, exp: bool = False) -> str:
    """RFC 7208 §7.4's setting: sender strong-bad@email.example.com, <domain> email.example.com, the
    client's validated PTR name mx.example.org."""

    async def main() -> str:
        c = spf._Check(spf.client_address(ip), "strong-bad@email.example.com", "mx.example.org", "unknown",
                       NoDNS())
        c._ptr_names = ["mx.example.org"]
        c._validated = {"mx.example.org": True}
        letters = "slodipvhcrt" if exp else "slodipvh"
        return await c.expand(spf.macro_string(text, letters, spaces=exp), "email.example.com")

    return asyncio.run(main())


@pytest.mark.parametrize("macro, expansion", [  # RFC 7208 §7.4
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%{p}.%{h}", "mx.example.org.mx.example.org"),
    ("%%%_%-", "% %20"),
    ("%{L}=%{S}", "strong-bad=strong-bad%40email.example.com"),
])
def test_macro_examples_of_7_4(macro: str, expansion: str) -> None:
    assert expand(macro) == expansion


def test_macro_example_of_7_4_ipv6() -> None:
    assert expand("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01") == (
        "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com")
    assert expand("%{c} %{i}", "192.0.2.3", exp=True) == "192.0.2.3 192.0.2.3"
    assert expand("%{c} from %{r}", "2001:DB8::CB01", exp=True) == "2001:db8::cb01 from unknown"


@pytest.mark.parametrize("text", ["%{c}", "%{r}", "%{t}", "%{x}", "%{d0}", "%(d)", "%", "a%b", "%{d", "a b",
                                  "\x00"])
def test_bad_domain_macros(text: str) -> None:
    with pytest.raises(spf.PermError):
        spf.macro_string(text, "slodipvh")


@pytest.mark.parametrize("record", [
    "v=spf1 -all moo", "v=spf1 ip4:1.2.3.4/33", "v=spf1 ip4:01.2.3.4", "v=spf1 ip6:::1/129", "v=spf1 a/24/64",
    "v=spf1 a:example", "v=spf1 include:", "v=spf1 exp=a.example exp=b.example", "v=spf1 redirect=",
    "v=spf1 1up=x", "v=spf1 foo=%x", "v=spf1 ptr/0", "v=spf1 all:x", "v=spf1 a:foo.example.com\r",
])
def test_syntax_errors(record: str) -> None:
    with pytest.raises(spf.PermError):
        spf.parse_record(record)


def test_parse_record() -> None:
    r = spf.parse_record("V=SPF1  +a/24//64  ~MX:%{d2}  ip6:2001:DB8::/32 foo-bar=baz exp=e.%{d}  ?all ")
    assert [(d.result, d.mechanism, d.text) for d in r.directives] == [
        ("pass", "a", "+a/24//64"), ("softfail", "mx", "~MX:%{d2}"), ("pass", "ip6", "ip6:2001:DB8::/32"),
        ("neutral", "all", "?all")]
    assert (r.directives[0].cidr4, r.directives[0].cidr6) == (24, 64)
    assert r.exp == ("e.", spf.Macro("d")) and r.redirect is None


def test_select_record() -> None:
    assert spf.select_record([b"v=spf10", b"other", b"v=spf1"]) == "v=spf1"
    assert spf.select_record([b"v=spf1x -all"]) is None
    with pytest.raises(spf.PermError):
        spf.select_record([b"v=spf1 -all", b"V=SPF1 +all"])
    with pytest.raises(spf.PermError):
        spf.select_record([b"v=spf1 a:\xc3\xa9.example -all"])


def test_target_name_truncates_on_the_left() -> None:
    long = ".".join([f"label{i:02d}" for i in range(40)]) + ".example.com."
    name = spf.target_name(long)
    assert len(name) <= 253 and long.rstrip(".").endswith(name) and name.startswith("label")
