"""fastmail._core.smtp: command lines, MAIL/RCPT arguments, addresses, xtext (RFC 5321 §4.1, RFC 6531,
RFC 3461).  The corpus runs against the compiled and the pure implementation."""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path

import pytest

from fastmail._core import is_compiled, variants

CORPUS = json.loads((Path(__file__).parent.parent / "corpus" / "smtp_commands.json").read_text())["cases"]


@pytest.fixture(params=["compiled", "pure"])
def smtp(request):
    return variants("smtp")[request.param]


def raw(case: dict) -> bytes:
    return case["in"].encode(case.get("enc", "utf-8"))


def outcome(mod, fn, *args):
    """The result, or ("error", code, enhanced) for SMTPSyntaxError."""
    try:
        return fn(*args)
    except mod.SMTPSyntaxError as e:
        return ("error", e.code, e.enhanced)


def expected(case: dict):
    if "error" in case:
        return ("error", *case["error"])
    if case["kind"] in ("mail", "rcpt"):
        addr = case["addr"]
        return (tuple(addr) if addr is not None else None, case["params"])
    if case["kind"] == "command":
        return (case["verb"], case["args"].encode(case.get("enc", "utf-8")))
    return case["out"]


def run(mod, case: dict):
    kind = case["kind"]
    if kind == "command":
        return outcome(mod, mod.parse_command, raw(case))
    if kind == "mail":
        return outcome(mod, mod.parse_mail_from, raw(case))
    if kind == "rcpt":
        return outcome(mod, mod.parse_rcpt_to, raw(case), case["utf8"])
    if kind == "xtext_decode":
        return outcome(mod, mod.xtext_decode, case["in"])
    return outcome(mod, mod.xtext_encode, case["in"])


def case_id(case: dict) -> str:
    return f"{case['kind']}:{case['in'][:50]!r}"


@pytest.mark.parametrize("case", CORPUS, ids=[case_id(c) for c in CORPUS])
def test_corpus(smtp, case):
    assert run(smtp, case) == expected(case), case.get("note", "")


def test_compiled_is_compiled():
    assert is_compiled(variants("smtp")["compiled"])


def test_command_corpus_through_line_reader(smtp):
    """The command lines as one stream, framed by LineReader in random chunks, then parsed."""
    cases = [c for c in CORPUS if c["kind"] == "command" and "\r" not in c["in"] and "\n" not in c["in"]]
    stream = b"".join(raw(c) + b"\r\n" for c in cases)
    lines_mod = variants("lines")["compiled" if is_compiled(smtp) else "pure"]
    for seed in range(3):
        rnd = random.Random(seed)
        reader = lines_mod.LineReader(1000)
        got = []
        i = 0
        while i < len(stream):
            k = rnd.choice([1, 2, 3, 7, 64, 4096])
            reader.feed(stream[i : i + k])
            i += k
            while (line := reader.readline()) is not None:
                got.append(smtp.parse_command(line))
        assert got == [expected(c) for c in cases]


# -- the relay tricks: the parse must be what a relay policy can judge by the domain alone ----------------

LOCAL = "local.example"


@pytest.mark.parametrize(
    ("rcpt", "local_part", "domain"),
    [
        (b"TO:<user%remote.example@local.example>", "user%remote.example", LOCAL),
        (b'TO:<"user@remote.example"@local.example>', "user@remote.example", LOCAL),
        (b"TO:<@local.example:user@remote.example>", "user", "remote.example"),
        (b"TO:<@local.example,@other.example:user@remote.example>", "user", "remote.example"),
        (b"TO:<remote.example!user@local.example>", "remote.example!user", LOCAL),
        (b"TO:<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
        (b"TO:<User@LOCAL.Example>", "User", LOCAL),
        (b'TO:<"user%remote.example"@local.example>', "user%remote.example", LOCAL),
    ],
)
def test_relay_tricks(smtp, rcpt, local_part, domain):
    (lp, dom), params = smtp.parse_rcpt_to(rcpt)
    assert (lp, dom) == (local_part, domain)
    assert params == {}
    # What makes it safe: the domain is exact (lower case, no dot at the end, no "@" or "%" or route in
    # it), so "is it ours?" is a plain comparison, and anything in the local part stays local.
    assert dom == dom.lower() and not dom.endswith(".")
    assert "@" not in dom and "%" not in dom and "!" not in dom and ":" not in dom.strip("[]").replace("ipv6:", "")


@pytest.mark.parametrize(
    "rcpt",
    [
        b"TO:<user@local.example.>",  # trailing dot: would dodge a string compare
        b"TO:<user@remote.example@local.example>",
        b"TO:<user@local.example,@remote.example>",
        b"TO:<user@192.0.2.1>",  # an IP is written as a literal
        b"TO:<user@[192.0.2.01]>",
        b"TO:<user@[IPv6:::1%lo]>",
        b"TO:<user@local..example>",
        b"TO:<user@local.example\\>",
        b"TO:<user@local.example >",
        b"TO:<user@ local.example>",
        b"TO:<user>",
        b"TO:<@local.example:user>",
    ],
)
def test_relay_tricks_refused(smtp, rcpt):
    with pytest.raises(smtp.SMTPSyntaxError) as info:
        smtp.parse_rcpt_to(rcpt)
    assert (info.value.code, info.value.enhanced) in ((501, "5.1.3"), (501, "5.5.4"))


def test_ipv6_literal_canonical(smtp):
    for text in ("::ffff:192.0.2.1", "2001:DB8:0:0:1:0:0:1", "::1", "2001:db8::192.0.2.33"):
        (_, dom), _ = smtp.parse_rcpt_to(b"TO:<u@[IPv6:" + text.encode() + b"]>")
        assert dom == f"[ipv6:{ipaddress.IPv6Address(text)}]"
        assert dom == dom.lower()


def test_error_carries_reply(smtp):
    with pytest.raises(ValueError) as info:
        smtp.parse_mail_from(b"FROM:nobrackets@example.com")
    err = info.value
    assert isinstance(err, smtp.SMTPSyntaxError)
    assert (err.code, err.enhanced, err.text) == (501, "5.5.4", "Syntax error in parameters")
    assert str(err) == "501 5.5.4 Syntax error in parameters"
    with pytest.raises(smtp.SMTPSyntaxError) as info:
        smtp.parse_rcpt_to(b"TO:<j\xc3\xb6@example.com>")
    assert (info.value.code, info.value.enhanced, info.value.text) == (553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
    with pytest.raises(smtp.SMTPSyntaxError) as info:
        smtp.parse_rcpt_to(b"TO:<a..b@example.com>")
    assert (info.value.code, info.value.enhanced, info.value.text) == (501, "5.1.3", "Bad address syntax")


def test_parse_path(smtp):
    assert smtp.parse_path(b"", False) is None
    assert smtp.parse_path(b"a@B.example", False) == ("a", "b.example")
    assert smtp.parse_path(b"@x.example:a@b.example", False) == ("a", "b.example")
    assert smtp.parse_path("ü@ü.example".encode(), True) == ("ü", "ü.example")
    with pytest.raises(smtp.SMTPSyntaxError):
        smtp.parse_path("ü@ü.example".encode(), False)


def test_result_types(smtp):
    verb, args = smtp.parse_command(b"ehlo x")
    assert type(verb) is str and type(args) is bytes and verb == "EHLO"
    (lp, dom), params = smtp.parse_mail_from(b"FROM:<a@b.example> size=10 SMTPUTF8 x-Y=z")
    assert type(lp) is str and type(dom) is str
    assert params == {"SIZE": "10", "SMTPUTF8": None, "X-Y": "z"}
    assert all(type(k) is str for k in params)
    assert list(params) == ["SIZE", "SMTPUTF8", "X-Y"]  # in the order sent


def test_postmaster_any_case(smtp):
    for spelling in (b"Postmaster", b"postmaster", b"POSTMASTER", b"PoStMaStEr"):
        assert smtp.parse_rcpt_to(b"TO:<" + spelling + b">") == (("postmaster", ""), {})
    with pytest.raises(smtp.SMTPSyntaxError):
        smtp.parse_mail_from(b"FROM:<Postmaster>")  # only RCPT has the special form


@pytest.mark.parametrize("text", ["", "plain", "a+b=c", "spaces and\ttabs", "ünïcödé", "+2B", "\x00\x7f", "🙂"])
def test_xtext_round_trip(smtp, text):
    encoded = smtp.xtext_encode(text)
    assert encoded.isascii() and " " not in encoded and "=" not in encoded
    assert smtp.xtext_decode(encoded) == text
