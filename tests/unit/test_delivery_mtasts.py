"""fastmail.delivery.mtasts: the TXT record, the policy file and MX patterns (RFC 8461 §3.1, §3.2, §4.1)."""

from __future__ import annotations

from fastmail.delivery.mtasts import mx_matches, parse_policy, parse_txt


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


def test_mx_patterns():
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert mx_matches("*.example.net", "mx1.example.net")
    assert not mx_matches("*.example.net", "a.b.example.net")  # one label only
    assert not mx_matches("*.example.net", "example.net")
    assert not mx_matches("mail.example.com", "mail.example.com.evil.test")
