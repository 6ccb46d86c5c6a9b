"""fastmail.hygiene.inbound with an in-memory resolver (issue #7's work on the checks' cost):

- the client's address is checked once per connection (iprev, DNSBL/DNSWL: ClientChecks) and the results
  are those of a message checked on its own; a temperror is asked again by the next message;
- the DNSBL/DNSWL zones, asked at the same time, decide in their configured order;
- the _dmarc record is asked once, started with the other checks;
- rspamd's Hostname header is the client's verified reverse name, or absent — never our own name.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import pytest

from fastmail import config
from fastmail.hygiene import dnsq
from fastmail.hygiene.inbound import Inbound, Transaction

CLIENT = "192.0.2.25"
REVERSE = "25.2.0.192.in-addr.arpa"
MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHello.\r\n")


class Resolver:
    """dnsq.Resolver's interface over a dict {(type, name): answer}; an answer that is an exception class is
    raised; every question is counted."""

    def __init__(self, zone: dict[tuple[str, str], Any]) -> None:
        self.zone = zone
        self.asked: Counter[tuple[str, str]] = Counter()

    async def _q(self, qtype: str, name: str) -> Any:
        self.asked[(qtype, name)] += 1
        await asyncio.sleep(0)
        answer = self.zone.get((qtype, name.rstrip(".")))
        if answer is None:
            raise dnsq.NXDomain(name)
        if isinstance(answer, type) and issubclass(answer, Exception):
            raise answer(name)
        if answer == "hang":  # never answered
            await asyncio.Event().wait()
        return list(answer)

    def is_kept(self, qtype: str, name: str) -> bool:
        return False  # nothing is kept: every question is asked (and counted)

    def kept_entry(self, qtype: str, name: str) -> None:
        return None  # nothing is kept (dnsq.Resolver.kept_entry)

    def start(self, qtype: str, name: str) -> asyncio.Future[Any]:
        """The question asked now (dnsq.Resolver.start), its answer read later."""
        fut = asyncio.ensure_future(self._q(qtype, name))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        return fut

    async def txt(self, name: str) -> list[bytes]:
        return await self._q("TXT", name)  # type: ignore[no-any-return]

    async def a(self, name: str) -> list[str]:
        return await self._q("A", name)  # type: ignore[no-any-return]

    async def aaaa(self, name: str) -> list[str]:
        return await self._q("AAAA", name)  # type: ignore[no-any-return]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return await self._q("MX", name)  # type: ignore[no-any-return]

    async def ptr(self, name: str) -> list[str]:
        return await self._q("PTR", name)  # type: ignore[no-any-return]


def zone() -> dict[tuple[str, str], Any]:
    return {
        ("TXT", "sender.test"): [b"v=spf1 ip4:192.0.2.0/24 -all"],
        ("TXT", "_dmarc.sender.test"): [b"v=DMARC1; p=none"],
        ("PTR", REVERSE): ["mail.sender.test"],
        ("A", "mail.sender.test"): [CLIENT],
    }


def inbound(tmp_path, resolver: Resolver, **settings: Any) -> Inbound:
    cfg = config.load(overrides={"server.data_dir": str(tmp_path), "checks.enabled": True, **settings})
    inb = Inbound(cfg, "mx.example.org")
    inb._resolver = resolver  # type: ignore[assignment]
    return inb


def tx(client: Any = None, qid: str = "q1") -> Transaction:
    return Transaction(ip=CLIENT, helo="mail.sender.test", mail_from="alice@sender.test",
                       rcpts=["bob@example.org"], qid=qid, client=client)


def test_client_checks_are_asked_once_per_connection(tmp_path) -> None:
    r = Resolver(zone())
    inb = inbound(tmp_path, r, **{"checks.dnsbl": ["bl.test"], "checks.dnswl": ["wl.test"]})

    async def main() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        client = inb.client_checks(CLIENT)
        seen = [(await inb.check(MESSAGE, tx(client, f"q{i}")))[1].log for i in range(3)]
        client.close()
        alone = (await inb.check(MESSAGE, tx()))[1].log
        return seen, alone

    seen, alone = asyncio.run(main())
    assert seen == [alone] * 3
    assert alone["iprev"] == "pass" and alone["dnsbl"] == "clean" and alone["dmarc"] == "pass"
    # three messages on one connection and one on its own: the client's address was looked up twice
    assert r.asked[("PTR", REVERSE)] == 2 and r.asked[("A", "mail.sender.test")] == 2
    assert r.asked[("A", "25.2.0.192.bl.test")] == 2 and r.asked[("A", "25.2.0.192.wl.test")] == 2
    assert r.asked[("TXT", "sender.test")] == 4  # SPF: per message
    assert r.asked[("TXT", "_dmarc.sender.test")] == 4  # once per message, though started early


def test_a_temperror_of_the_client_checks_is_asked_again(tmp_path) -> None:
    r = Resolver(zone())
    r.zone[("PTR", REVERSE)] = dnsq.DNSTempError
    inb = inbound(tmp_path, r)

    async def main() -> list[Any]:
        client = inb.client_checks(CLIENT)
        await asyncio.sleep(0.01)  # the lookup started at connect is answered (temperror) before DATA
        first = (await inb.check(MESSAGE, tx(client)))[1].log["iprev"]
        r.zone[("PTR", REVERSE)] = ["mail.sender.test"]
        second = (await inb.check(MESSAGE, tx(client)))[1].log["iprev"]
        third = (await inb.check(MESSAGE, tx(client)))[1].log["iprev"]
        client.close()
        return [first, second, third]

    assert asyncio.run(main()) == ["temperror", "pass", "pass"]
    # at connect (temperror), again for the first message (temperror), for the second (pass), kept for the third
    assert r.asked[("PTR", REVERSE)] == 3


@pytest.mark.parametrize(("answers", "expected"), [
    ({"wl1": dnsq.DNSTempError, "wl2": ["127.0.0.2"], "bl1": ["127.0.0.2"]}, ("allowed", "wl2.test")),
    ({"bl1": ["127.0.0.2"], "bl2": ["127.0.0.3"]}, ("listed", "bl1.test")),
    ({"bl1": dnsq.DNSTempError, "bl2": ["127.0.0.3"]}, ("listed", "bl2.test")),
    ({"bl1": dnsq.DNSTempError}, ("temperror", "")),
    ({"bl1": ["127.255.255.254"]}, ("clean", "")),  # a list's error code is no listing
    ({}, ("clean", "")),
])
def test_dnsbl_zones_decide_in_their_order(tmp_path, answers, expected) -> None:
    z = zone()
    for name, answer in answers.items():
        z[("A", f"25.2.0.192.{name}.test")] = answer
    inb = inbound(tmp_path, Resolver(z), **{"checks.dnsbl": ["bl1.test", "bl2.test"],
                                            "checks.dnswl": ["wl1.test", "wl2.test"]})
    assert asyncio.run(inb._dnsbl(CLIENT)) == expected


def test_dnsbl_zones_raise_what_the_first_answer_in_order_raises(tmp_path) -> None:
    z = zone()
    z[("A", "25.2.0.192.wl1.test")] = RuntimeError
    z[("A", "25.2.0.192.bl1.test")] = ["127.0.0.2"]
    inb = inbound(tmp_path, Resolver(z), **{"checks.dnsbl": ["bl1.test"], "checks.dnswl": ["wl1.test"]})
    with pytest.raises(RuntimeError):
        asyncio.run(inb._dnsbl(CLIENT))


# -- rspamd's Hostname -----------------------------------------------------------------------------------

def _rspamd_requests(tmp_path, resolver: Resolver, **settings: Any) -> list[bytes]:
    """The request heads a fake rspamd received for one message checked by Inbound."""
    heads: list[bytes] = []

    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            heads.append(head)
            body = b'{"action": "no action", "score": 0.5, "required_score": 15, "symbols": {}}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        inb = inbound(tmp_path, resolver, **{"rspamd.url": f"http://127.0.0.1:{port}", **settings})
        client = inb.client_checks(CLIENT) if inb.auth else None
        _, verdict = await inb.check(MESSAGE, tx(client))
        assert verdict.reply is None, verdict
        if client is not None:
            client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    return heads


def test_rspamd_hostname_is_the_verified_client_name(tmp_path) -> None:
    [head] = _rspamd_requests(tmp_path, Resolver(zone()))
    assert b"\r\nHostname: mail.sender.test\r\n" in head
    assert b"mx.example.org" not in head
    assert b"\r\nIP: 192.0.2.25\r\n" in head


@pytest.mark.parametrize("case", ["not confirmed", "no PTR", "temperror", "fcrdns off", "checks off"])
def test_rspamd_hostname_is_left_out_unless_verified(tmp_path, case) -> None:
    z = zone()
    settings: dict[str, Any] = {}
    if case == "not confirmed":
        z[("A", "mail.sender.test")] = ["192.0.2.99"]
    elif case == "no PTR":
        del z[("PTR", REVERSE)]
    elif case == "temperror":
        z[("PTR", REVERSE)] = dnsq.DNSTempError
    elif case == "fcrdns off":
        settings["checks.fcrdns"] = "off"
    else:
        settings["checks.enabled"] = False
    [head] = _rspamd_requests(tmp_path, Resolver(z), **settings)
    assert b"\r\nHostname:" not in head
    assert b"mx.example.org" not in head  # our own name was sent before


def test_settle_answers_as_gather_within() -> None:
    """The authentication checks' runner: jobs awaited in the coroutine and jobs in tasks, each with its
    result, its exception or TimeoutError once the shared deadline passed; the inline jobs run in the
    caller's task until one has to wait, and the ones after it then run meanwhile in tasks of their own,
    with the whole deadline; nothing left running or unawaited."""
    import gc
    import warnings

    from fastmail.hygiene.inbound import _settle

    started: list[str] = []
    ran_in: dict[str, Any] = {}

    async def job(name: str, delay: float | None, fail: bool = False) -> str:
        started.append(name)
        ran_in[name] = asyncio.current_task()
        if delay is not None:
            await asyncio.sleep(delay)
        if fail:
            raise OSError(name)
        return name

    async def main() -> tuple[dict[str, Any], list[asyncio.Task[Any]], Any]:
        # "a" needs no wait: answered inline; "slow" waits past the deadline, so "late" and "later" run
        # beside it in tasks and answer
        out = await _settle({"a": job("a", None), "slow": job("slow", 5), "late": job("late", None),
                             "later": job("later", 0.01)},
                            {"t": job("t", 0.01), "bad": job("bad", 0, fail=True), "never": job("never", 5)},
                            0.2)
        await asyncio.sleep(0)  # the cancelled tasks finish
        return out, [t for t in asyncio.all_tasks() if t is not asyncio.current_task()], asyncio.current_task()

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a coroutine never awaited would warn
        out, left, caller = asyncio.run(main())
        gc.collect()
    assert out["a"] == "a" and out["t"] == "t" and out["late"] == "late" and out["later"] == "later"
    assert isinstance(out["bad"], OSError)
    for name in ("slow", "never"):
        assert isinstance(out[name], TimeoutError)
    assert left == []
    assert sorted(started) == ["a", "bad", "late", "later", "never", "slow", "t"]
    assert ran_in["a"] is caller and ran_in["slow"] is caller
    assert ran_in["late"] is not caller and ran_in["later"] is not caller


def test_settle_runs_every_inline_job_inline_when_none_waits() -> None:
    from fastmail.hygiene.inbound import _settle

    async def job(name: str) -> Any:
        return name, asyncio.current_task()

    async def main() -> tuple[dict[str, Any], Any, int]:
        before = len(asyncio.all_tasks())
        out = await _settle({"x": job("x"), "y": job("y"), "z": job("z")}, {}, 1.0)
        return out, asyncio.current_task(), len(asyncio.all_tasks()) - before

    out, caller, extra = asyncio.run(main())
    assert {k: v[0] for k, v in out.items()} == {"x": "x", "y": "y", "z": "z"}
    assert all(v[1] is caller for v in out.values()) and extra == 0


def test_settle_cancelled_closes_what_it_did_not_start() -> None:
    import warnings

    from fastmail.hygiene.inbound import _settle

    async def job() -> None:
        await asyncio.sleep(5)

    async def main() -> bool:
        runner = asyncio.ensure_future(_settle({"first": job(), "second": job()}, {"t": job()}, 10))
        await asyncio.sleep(0.01)
        runner.cancel()
        try:
            await runner
        except asyncio.CancelledError:
            return True
        return False

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert asyncio.run(main())


SIGNED = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.test; s=sel; h=from;\r\n"
          b" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n" + MESSAGE)


@pytest.mark.parametrize("hanging, clause", [
    (("TXT", "sel._domainkey.sender.test"), b"dkim=temperror"),
    (("TXT", "_dmarc.sender.test"), b"dmarc=temperror"),
    (("TXT", "sender.test"), b"spf=temperror"),
])
def test_a_lookup_never_answered_ends_at_the_checks_deadline(tmp_path, hanging, clause) -> None:
    """SPF's, DKIM's and DMARC's lookups set no timer of their own: the checks' deadline (checks.timeout)
    ends them, and what did not answer is temperror."""
    z = zone()
    z[hanging] = "hang"
    z.setdefault(("TXT", "sel._domainkey.sender.test"), [b"v=DKIM1; k=rsa; p="])  # revoked key: no RSA needed
    inb = inbound(tmp_path, Resolver(z), **{"checks.timeout": 0.3})

    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        _, verdict = await inb.check(SIGNED, tx())
        return verdict.headers, loop.time() - start

    headers, elapsed = asyncio.run(main())
    assert clause in headers
    assert 0.3 <= elapsed < 5
