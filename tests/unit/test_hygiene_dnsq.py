"""fastmail.hygiene.dnsq's kept answers and shared questions, against a real DNS server on 127.0.0.1:
an answer is kept for its TTL and no longer, a TTL of 0 keeps nothing, NXDOMAIN is not kept, questions
asked while the same one is on its way share its answer, and a caller that gives up does not take the
answer from the others."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from fastmail.hygiene import dnsq
from tests.integration.dnsserver import LocalDNS


@pytest.fixture
def dns(request: pytest.FixtureRequest) -> Iterator[LocalDNS]:
    d = LocalDNS(ttl=getattr(request, "param", 300)).start()
    d.set("sender.test", ("TXT", "v=spf1 -all"), ("A", "192.0.2.1"))
    yield d
    d.stop()


def run(dns: LocalDNS, fn: Any) -> Any:
    async def main() -> Any:
        r = dnsq.Resolver(dns.address, timeout=2.0, tries=1)
        try:
            return await fn(r)
        finally:
            r.close()
    return asyncio.run(main())


def asked(dns: LocalDNS, qtype: str, name: str) -> int:
    return sum(1 for q in dns.asked if q == (name, qtype))


def test_an_answer_is_kept_for_its_ttl(dns: LocalDNS, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(dnsq, "_now", lambda: now[0])

    async def fn(r: dnsq.Resolver) -> list[Any]:
        out = [await r.txt("sender.test"), await r.txt("SENDER.test."[:-1]), await r.a("sender.test")]
        sent = r.queries
        now[0] += 299.0
        out.append(await r.txt("sender.test"))
        kept = r.queries
        now[0] += 2.0  # past the TTL of 300 s
        out.append(await r.txt("sender.test"))
        return [out, sent, kept, r.queries]

    out, sent, kept, after = run(dns, fn)
    assert out == [[b"v=spf1 -all"], [b"v=spf1 -all"], ["192.0.2.1"], [b"v=spf1 -all"], [b"v=spf1 -all"]]
    assert sent == 2  # TXT once (the name's case does not matter), A once
    assert kept == 2
    assert after == 3  # asked again once the TTL ran out


@pytest.mark.parametrize("dns", [0], indirect=True)
def test_a_ttl_of_zero_keeps_nothing(dns: LocalDNS) -> None:
    async def fn(r: dnsq.Resolver) -> int:
        for _ in range(3):
            assert await r.txt("sender.test") == [b"v=spf1 -all"]
        return r.queries

    assert run(dns, fn) == 3
    assert asked(dns, "TXT", "sender.test") == 3


def test_negative_answers_and_failures_are_not_kept(dns: LocalDNS) -> None:
    dns.servfail.add("broken.test")

    async def fn(r: dnsq.Resolver) -> int:
        for _ in range(2):
            with pytest.raises(dnsq.NXDomain):
                await r.txt("nowhere.test")
            assert await r.aaaa("sender.test") == []  # NODATA
            with pytest.raises(dnsq.DNSTempError):
                await r.txt("broken.test")
        return r.queries

    assert run(dns, fn) == 6


@pytest.mark.parametrize("dns", [0], indirect=True)
def test_questions_in_flight_are_shared(dns: LocalDNS) -> None:
    async def fn(r: dnsq.Resolver) -> tuple[list[Any], int]:
        answers = await asyncio.gather(*(r.txt("sender.test") for _ in range(20)), r.a("sender.test"))
        return answers, r.queries

    answers, queries = run(dns, fn)
    assert answers == [[b"v=spf1 -all"]] * 20 + [["192.0.2.1"]]
    assert queries == 2 and asked(dns, "TXT", "sender.test") == 1


@pytest.mark.parametrize("dns", [0], indirect=True)
def test_a_caller_giving_up_leaves_the_answer_to_the_others(dns: LocalDNS) -> None:
    async def fn(r: dnsq.Resolver) -> tuple[bool, list[bytes], int]:
        first = asyncio.ensure_future(r.txt("sender.test"))
        second = asyncio.ensure_future(r.txt("sender.test"))
        await asyncio.sleep(0)  # both are waiting for the one question
        first.cancel()
        answer = await second
        try:
            await first
        except asyncio.CancelledError:
            cancelled = True
        else:
            cancelled = False
        return cancelled, answer, r.queries

    assert run(dns, fn) == (True, [b"v=spf1 -all"], 1)


def test_a_bad_name_is_refused_before_any_question(dns: LocalDNS) -> None:
    async def fn(r: dnsq.Resolver) -> int:
        with pytest.raises(dnsq.BadName):
            await r.txt("a" * 64 + ".test")
        return r.queries

    assert run(dns, fn) == 0


@pytest.mark.parametrize("dns", [0], indirect=True)
def test_a_started_question_serves_its_message_even_with_ttl_zero(dns: LocalDNS) -> None:
    """Lookups: asked at start(), read later — after its answer came — without asking again; the next
    message's view asks again (a TTL of 0 keeps nothing between messages)."""
    async def fn(r: dnsq.Resolver) -> tuple[list[Any], int, int]:
        first = dnsq.Lookups(r)
        first.start("TXT", "sender.test")
        first.start("TXT", "sender.test")  # once is enough
        first.start("TXT", "nowhere.test")
        await asyncio.sleep(0.2)  # the answers are in
        out: list[Any] = [await first.txt("Sender.Test."), await first.txt("sender.test")]
        with pytest.raises(dnsq.NXDomain):
            await first.txt("nowhere.test")
        out.append(await first.a("sender.test"))  # not started: asked now
        before_next = r.queries
        second = dnsq.Lookups(r)
        second.start("TXT", "sender.test")
        out.append(await second.txt("sender.test"))
        return out, before_next, r.queries

    out, before_next, queries = run(dns, fn)
    assert out == [[b"v=spf1 -all"], [b"v=spf1 -all"], ["192.0.2.1"], [b"v=spf1 -all"]]
    assert before_next == 3 and queries == 4
    assert asked(dns, "TXT", "sender.test") == 2 and asked(dns, "TXT", "nowhere.test") == 1


def test_a_kept_answer_is_not_asked_again_by_start(dns: LocalDNS) -> None:
    async def fn(r: dnsq.Resolver) -> tuple[list[bytes], int, bool]:
        await r.txt("sender.test")
        look = dnsq.Lookups(r)
        look.start("TXT", "sender.test")
        look.start("TXT", "a" * 64 + ".test")  # no question can carry it: left to the lookup, which says so
        with pytest.raises(dnsq.BadName):
            await look.txt("a" * 64 + ".test")
        return await look.txt("sender.test"), r.queries, look.is_kept("TXT", "sender.test")

    assert run(dns, fn) == ([b"v=spf1 -all"], 1, True)


@pytest.mark.parametrize("dns", [0], indirect=True)
def test_giving_up_on_a_started_question_leaves_it_to_others(dns: LocalDNS) -> None:
    async def fn(r: dnsq.Resolver) -> list[bytes]:
        look = dnsq.Lookups(r)
        look.start("TXT", "sender.test")
        waiting = asyncio.ensure_future(look.txt("sender.test"))
        await asyncio.sleep(0)
        waiting.cancel()
        return await r.txt("sender.test")  # the same question, still on its way

    assert run(dns, fn) == [b"v=spf1 -all"]
    assert asked(dns, "TXT", "sender.test") == 1


# -- spf.KeptResults: an SPF result kept while the answers it read are ------------------------------------


def _kept_spf(dns: LocalDNS, steps: Any) -> Any:
    """Run `steps(check, resolver)` where check(mail_from, ip="192.0.2.1") evaluates through one KeptResults
    ((result, whether it was the kept one))."""
    from fastmail.hygiene import spf

    async def fn(r: dnsq.Resolver) -> Any:
        kept = spf.KeptResults(r, "mx.example.org")

        async def check(mail_from: str, ip: str = "192.0.2.1", helo: str = "client.test") -> tuple[str, bool]:
            found = kept.get(ip, mail_from, helo)
            if found is not None:
                return found.result, True
            res = await kept.check_mail_from(ip, mail_from, helo, resolver=dnsq.Lookups(r), timeout=None)
            return res.result, False

        return await steps(check, r), r.queries, kept.hits
    return run(dns, fn)


def test_an_spf_result_is_kept_while_its_answers_are(dns: LocalDNS, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(dnsq, "_now", lambda: now[0])
    dns.set("list.test", ("TXT", "v=spf1 include:esp.test -all"))
    dns.set("esp.test", ("TXT", "v=spf1 a:out.esp.test ~all"))
    dns.set("out.esp.test", ("A", "192.0.2.1"))

    async def steps(check: Any, r: dnsq.Resolver) -> list[Any]:
        out = [await check("a@list.test"), await check("a@list.test")]
        out.append(await check("a@list.test", ip="192.0.2.9"))  # another client: its own evaluation
        out.append(await check("b@list.test"))  # another sender too (%{l} may be in a record)
        asked = r.queries
        now[0] += 301.0  # every answer expired: evaluated again, the questions asked again
        out.append(await check("a@list.test"))
        out.append(r.queries - asked)
        # A new answer for one name (c-ares keeps answers for their TTL itself, so the server cannot be made
        # to give another one here: the resolver's kept entry is replaced as a new answer would replace it)
        expiry, _ = r.kept_entry("A", "out.esp.test")
        r._kept[("A", "out.esp.test")] = (expiry, ["192.0.2.77"])
        out.append(await check("a@list.test"))
        out.append(await check("a@list.test"))
        return out

    out, _queries, hits = _kept_spf(dns, steps)
    assert out == [("pass", False), ("pass", True), ("fail", False), ("pass", False),
                   ("pass", False), 3, ("fail", False), ("fail", True)]
    assert hits == 2


def test_an_spf_result_is_evaluated_again_once_any_of_its_answers_expired(
        dns: LocalDNS, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(dnsq, "_now", lambda: now[0])
    dns.set("list.test", ("TXT", "v=spf1 a:out.list.test -all"))
    dns.set("out.list.test", ("A", "192.0.2.1"))

    async def steps(check: Any, r: dnsq.Resolver) -> list[Any]:
        await check("a@other.test")  # nothing there (NXDOMAIN): a "none" that is not kept
        return [await check("a@other.test")]

    assert _kept_spf(dns, steps)[0] == [("none", False)]

    async def fn(r: dnsq.Resolver) -> list[Any]:
        from fastmail.hygiene import spf

        kept = spf.KeptResults(r, "mx.example.org")
        await r.a("out.list.test")  # the A answer is kept from t=1000 (to 1300) ...
        now[0] = 1100.0
        first = await kept.check_mail_from("192.0.2.1", "a@list.test", "h.test", resolver=r)  # TXT to 1400
        held = kept.get("192.0.2.1", "a@list.test", "h.test")
        now[0] = 1350.0  # ... so it expired while the TXT answer is still kept
        gone = kept.get("192.0.2.1", "a@list.test", "h.test")
        asked = r.queries
        second = await kept.check_mail_from("192.0.2.1", "a@list.test", "h.test", resolver=r)
        return [first.result, held, gone, second.result, r.queries - asked,
                kept.get("192.0.2.1", "a@list.test", "h.test")]

    first, held, gone, second, asked, again = run(dns, fn)
    assert (first, gone, second, asked) == ("pass", None, "pass", 1)  # only the A question asked again
    assert held is not None and held.result == "pass"
    assert again is not None and again.result == "pass"


def test_temperror_and_an_explanation_are_not_kept(dns: LocalDNS) -> None:
    dns.set("exp.test", ("TXT", "v=spf1 -all exp=why.exp.test"))
    dns.set("why.exp.test", ("TXT", "%{i} is not one of ours at %{t}"))
    dns.set("broken.test", ("TXT", "v=spf1 a:down.test -all"))
    dns.servfail.add("down.test")

    async def steps(check: Any, r: dnsq.Resolver) -> list[Any]:
        return [await check("a@exp.test"), await check("a@exp.test"),
                await check("a@broken.test"), await check("a@broken.test")]

    out, _queries, hits = _kept_spf(dns, steps)
    assert out == [("fail", False), ("fail", False), ("temperror", False), ("temperror", False)]
    assert hits == 0
