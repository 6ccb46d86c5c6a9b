"""fastmail.delivery.dns against a real DNS server on 127.0.0.1 (dnslib): MX order, implicit MX, null MX,
NXDOMAIN, SERVFAIL, CNAME, TTL cache, address literals, IPv6 before IPv4."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from fastmail.delivery.dns import DNSPermanent, DNSTemporary
from tests.integration.dnsserver import LocalDNS
from tests.integration.dnsserver import run_with_resolver as run


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    d = LocalDNS(ttl=300).start()
    d.set("multi.test", ("MX", (20, "c.multi.test.")), ("MX", (10, "a.multi.test.")), ("MX", (10, "b.multi.test.")),
          ("MX", (30, "a.multi.test.")))
    d.set("a.multi.test", ("A", "127.0.0.2"), ("AAAA", "::1"), ("AAAA", "::2"))
    d.set("v4only.test", ("A", "127.0.0.3"))
    d.set("null.test", ("MX", (0, ".")))
    d.set("alias.test", ("CNAME", "multi.test."))
    d.set("bare.test", ("TXT", "nothing here"))
    d.servfail.add("broken.test")
    yield d
    d.stop()


def test_mx_sorted_by_preference_random_among_equals(dns):
    async def many(r):
        return [tuple(await r.route("multi.test")) for _ in range(60)]

    orders = set(run(dns, many))
    # a.multi.test appears once (its best preference), equal preferences in both orders over 60 tries
    assert orders == {("a.multi.test", "b.multi.test", "c.multi.test"), ("b.multi.test", "a.multi.test", "c.multi.test")}


def test_cache_within_ttl(dns):
    async def twice(r):
        await r.route("multi.test")
        first = r.queries
        await r.route("multi.test")
        await r.addresses("a.multi.test")
        await r.addresses("a.multi.test")
        return first, r.queries

    assert run(dns, twice) == (1, 3)  # MX once; AAAA and A once each


def test_no_mx_is_the_domain_itself_and_cname_is_followed(dns):
    assert run(dns, lambda r: r.route("v4only.test")) == ["v4only.test"]
    assert run(dns, lambda r: r.route("bare.test")) == ["bare.test"]
    assert run(dns, lambda r: r.route("alias.test"))[-1] == "c.multi.test"


def test_addresses_ipv6_first(dns):
    assert run(dns, lambda r: r.addresses("a.multi.test")) == ["::1", "::2", "127.0.0.2"]
    assert run(dns, lambda r: r.addresses("v4only.test")) == ["127.0.0.3"]
    assert run(dns, lambda r: r.addresses("nowhere.test")) == []
    assert run(dns, lambda r: r.addresses("[192.0.2.1]")) == ["192.0.2.1"]
    assert run(dns, lambda r: r.addresses("[IPv6:2001:db8::1]")) == ["2001:db8::1"]
    assert run(dns, lambda r: r.route("[192.0.2.1]")) == ["[192.0.2.1]"]


def test_null_mx_and_nxdomain_are_permanent(dns):
    with pytest.raises(DNSPermanent) as e:
        run(dns, lambda r: r.route("null.test"))
    assert e.value.enhanced == "5.1.10"
    with pytest.raises(DNSPermanent) as e:
        run(dns, lambda r: r.route("nxdomain.test"))
    assert e.value.enhanced == "5.1.2"


def test_servfail_is_temporary(dns):
    with pytest.raises(DNSTemporary) as e:
        run(dns, lambda r: r.route("broken.test"))
    assert e.value.enhanced == "4.4.3"
    with pytest.raises(DNSTemporary):
        run(dns, lambda r: r.addresses("broken.test"))


def test_the_same_question_asked_at_once_goes_out_once(dns):
    async def together(r):
        answers = await asyncio.gather(*(r.mx("multi.test") for _ in range(20)),
                                       *(r.addresses("a.multi.test") for _ in range(20)))
        return answers, r.queries

    before = len(dns.asked)
    answers, queries = run(dns, together)
    assert queries == 3 and len(dns.asked) - before == 3  # MX, AAAA, A: once each
    assert len({a for a in answers[:20]}) == 1 and answers[0][0] == (10, "a.multi.test")
    assert all(a == ["::1", "::2", "127.0.0.2"] for a in answers[20:])


def test_errors_reach_every_waiter(dns):
    async def together(r):
        return await asyncio.gather(*(r.mx("broken.test") for _ in range(5)), return_exceptions=True)

    errors = run(dns, together)
    assert all(isinstance(e, DNSTemporary) for e in errors)


def test_no_answer_is_temporary(dns):
    dns.timeout.add("silent.test")
    with pytest.raises(DNSTemporary) as e:
        run(dns, lambda r: r.mx("silent.test"))
    assert e.value.enhanced == "4.4.3"
