"""fastmail.delivery.mtasts: the TXT record, the policy file and MX patterns (RFC 8461 §3.1, §3.2, §4.1); a
domain without a record is remembered."""

from __future__ import annotations

import asyncio
import ssl
import time

from fastmail.delivery import mtasts
from fastmail.delivery.mtasts import STS, mx_matches, parse_policy, parse_txt


def test_txt_record():
    assert parse_txt([b"v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt([b"v=STSv1;id=abc"]) == "abc"
    assert parse_txt([b"v=spf1 -all", b"v=STSv1; id=x1"]) == "x1"
    assert parse_txt([b"v=STSv1; id=a", b"v=STSv1; id=b"]) is None  # two: none (§3.1)
    assert parse_txt([b"v=STSv1;"]) is None and parse_txt([]) is None
    assert parse_txt([b"v=STSv1; id=not-alnum"]) is None


def test_policy_file():
    text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"
    p = parse_policy(text, "id1", 1000.0)
    assert p is not None and p.mode == "enforce" and p.mx == ("mail.example.com", "*.example.net")
    assert p.max_age == 604800 and not p.expired(1000.0 + 604799) and p.expired(1000.0 + 604800)
    assert parse_policy(text.replace("\r\n", "\n"), "id1", 0) == parse_policy(text, "id1", 0)  # LF accepted
    assert parse_policy(text.replace("STSv1", "STSv2"), "id1", 0) is None
    assert parse_policy(text.replace("enforce", "strict"), "id1", 0) is None
    assert parse_policy("version: STSv1\nmode: enforce\nmax_age: 10\n", "i", 0) is None  # enforce needs mx
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 10\n", "i", 0) is not None
    assert parse_policy(text.replace("604800", "99999999999"), "i", 0).max_age == 31557600  # type: ignore[union-attr]
    # found by tests/fuzz: "²" passed str.isdigit() and int() raised; int() of 5,000 digits raises too
    assert parse_policy(text.replace("604800", "\u00b2"), "i", 0) is None
    assert parse_policy(text.replace("604800", "9" * 5000), "i", 0).max_age == 31557600  # type: ignore[union-attr]


def test_mx_patterns():
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert mx_matches("*.example.net", "mx1.example.net")
    assert not mx_matches("*.example.net", "a.b.example.net")  # one label only
    assert not mx_matches("*.example.net", "example.net")
    assert not mx_matches("mail.example.com", "mail.example.com.evil.test")


class FakeResolver:
    def __init__(self, records: list[bytes]) -> None:
        self.records = records
        self.asked = 0

    async def txt(self, name: str) -> list[bytes]:
        self.asked += 1
        await asyncio.sleep(0.01)
        return self.records


def test_a_domain_without_a_record_is_not_asked_again_for_a_while():
    resolver = FakeResolver([])
    sts = STS(resolver, ssl.create_default_context())  # type: ignore[arg-type]

    async def main() -> list[object]:
        first = await asyncio.gather(*(sts.policy("plain.test") for _ in range(10)))  # one lookup for all
        again = await sts.policy("plain.test")
        return [*first, again]

    assert asyncio.run(main()) == [None] * 11
    assert resolver.asked == 1
    until = sts.none_until["plain.test"]
    assert time.monotonic() + mtasts.NO_POLICY_TTL - 5 < until <= time.monotonic() + mtasts.NO_POLICY_TTL
    # once that time has passed the record is looked for again (a domain may start publishing one)
    sts.none_until["plain.test"] = time.monotonic() - 1
    assert asyncio.run(sts.policy("plain.test")) is None
    assert resolver.asked == 2
