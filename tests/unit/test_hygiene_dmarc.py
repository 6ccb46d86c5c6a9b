"""fastmail.hygiene.dmarc against a real DNS server on 127.0.0.1 (dnslib): record discovery at the From
domain then its Organizational Domain (Public Suffix List), strict and relaxed alignment, sp=, pct= with an
injected random, the results none/temperror/permerror, and the From domain of a message (RFC 7489 §6.6.1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastmail.delivery.dns import Resolver
from fastmail.hygiene import dkim, dmarc
from fastmail.hygiene.dkim import DKIMResult
from tests.integration.dnsserver import LocalDNS
from tests.integration.dnsserver import run_with_resolver as run


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    d = LocalDNS().start()
    d.set("_dmarc.example.com", ("TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"))
    d.set("_dmarc.relaxed.co.uk", ("TXT", "v=DMARC1; p=reject"))
    d.set("_dmarc.strict.co.uk", ("TXT", "v=DMARC1; p=reject; adkim=s; aspf=s"))
    d.set("_dmarc.subpolicy.example", ("TXT", "v=DMARC1; p=none; sp=reject"))
    d.set("_dmarc.own.subpolicy.example", ("TXT", "v=DMARC1; p=quarantine"))
    d.set("_dmarc.sampled.example", ("TXT", "v=DMARC1; p=reject; pct=50"))
    d.set("_dmarc.sampledq.example", ("TXT", "v=DMARC1; p=quarantine; pct=50"))
    d.set("_dmarc.twice.example", ("TXT", "v=DMARC1; p=reject"), ("TXT", "v=DMARC1; p=none"))
    d.set("_dmarc.nop.example", ("TXT", "v=DMARC1; adkim=s"))
    d.set("_dmarc.nopwithrua.example", ("TXT", "v=DMARC1; p=bogus; rua=mailto:r@nopwithrua.example"))
    d.set("_dmarc.other.example", ("TXT", "some unrelated text"), ("TXT", "v=dmarc1; p=reject"),
          ("TXT", "V=DMARC1;P=Quarantine;"))
    d.servfail.add("_dmarc.broken.example")
    yield d
    d.stop()


def passing(domain: str) -> DKIMResult:
    return DKIMResult(result="pass", domain=domain, selector="s", header_b="abcdefgh")


def evaluate(dns: LocalDNS, from_domain: str, *, spf: tuple[str, str] = ("fail", "attacker.example"),
             dkim_results: list[DKIMResult] | None = None, rand=lambda: 0.0) -> dmarc.DMARCResult:
    return run(dns, lambda r: dmarc.evaluate(
        from_domain, spf_result=spf[0], spf_domain=spf[1], dkim_results=dkim_results or [], txt_lookup=r.txt,
        rand=rand))


def test_organizational_domain_from_the_psl():
    assert dmarc.organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert dmarc.organizational_domain("a.b.Example.COM.") == "example.com"
    assert dmarc.organizational_domain("example.co.uk") == "example.co.uk"
    assert dmarc.organizational_domain("co.uk") == "co.uk"  # a public suffix is its own
    assert dmarc.organizational_domain("x.user.github.io") == "user.github.io"  # private section too
    assert dmarc.organizational_domain("mail.bücher.example") == "xn--bcher-kva.example"


def test_alignment_modes():
    assert dmarc.aligned("mail.example.co.uk", "example.co.uk", "r")
    assert not dmarc.aligned("mail.example.co.uk", "example.co.uk", "s")
    assert dmarc.aligned("EXAMPLE.co.uk.", "example.co.uk", "s")
    assert not dmarc.aligned("other.co.uk", "example.co.uk", "r")  # same public suffix is not enough
    assert not dmarc.aligned("", "example.co.uk", "r")


def test_pct_of_non_ascii_or_long_digits():
    """Found by tests/fuzz: "pct=²" passed str.isdigit() and int() raised; a pct of 5,000 digits too."""
    for pct, expected in (("\u00b2", 100), ("\u0663", 100), ("0" * 5000 + "7", 7), ("9" * 5000, 100), ("007", 7)):
        r = dmarc.parse_record(f"v=DMARC1; p=reject; pct={pct}")
        assert r is not None and r.pct == expected, pct


def test_parse_record():
    r = dmarc.parse_record("v=DMARC1; p=Quarantine; SP=reject; adkim=s; pct=20; rua=mailto:x@y; fo=1; x=1")
    assert r is not None and (r.p, r.sp, r.adkim, r.aspf, r.pct) == ("quarantine", "reject", "s", "r", 20)
    r = dmarc.parse_record("v=DMARC1;p=none;pct=250;aspf=q")
    assert r is not None and (r.pct, r.aspf, r.sp) == (100, "r", None)
    assert dmarc.parse_record("p=reject; v=DMARC1") is None  # v= must come first
    assert dmarc.parse_record("v=dmarc1; p=reject") is None  # RFC 7489 §6.4 spells DMARC1 in octets
    assert dmarc.parse_record("v=DMARC1; sp=reject") is None  # no p=, no rua=
    assert dmarc.parse_record("v=DMARC1; p=reject; sp=sometimes") is None
    r = dmarc.parse_record("v=DMARC1; p=sometimes; rua=mailto:r@x.example")
    assert r is not None and r.p == "none"  # RFC 7489 §6.6.3 step 6


def test_pass_via_aligned_dkim_only(dns):
    r = evaluate(dns, "example.com", dkim_results=[passing("example.com")])
    assert (r.result, r.policy, r.dkim_aligned, r.spf_aligned) == ("pass", "none", True, False)
    assert r.record_domain == "example.com"


def test_pass_via_aligned_spf_only(dns):
    r = evaluate(dns, "example.com", spf=("pass", "bounces.example.com"))
    assert (r.result, r.policy, r.dkim_aligned, r.spf_aligned) == ("pass", "none", False, True)


def test_unaligned_passes_fail_with_p_reject(dns):
    r = evaluate(dns, "example.com", spf=("pass", "example.net"),
                 dkim_results=[passing("example.net"), DKIMResult("fail", "example.com", "s", "x")])
    assert (r.result, r.policy, r.requested) == ("fail", "reject", "reject")


def test_relaxed_and_strict_alignment_with_subdomains(dns):
    # relaxed (default): mail.relaxed.co.uk and relaxed.co.uk share the Organizational Domain
    r = evaluate(dns, "relaxed.co.uk", dkim_results=[passing("mail.relaxed.co.uk")])
    assert r.result == "pass"
    r = evaluate(dns, "news.relaxed.co.uk", spf=("pass", "relaxed.co.uk"))
    assert (r.result, r.record_domain) == ("pass", "relaxed.co.uk")  # the record of the org domain
    # strict: only the exact name aligns
    r = evaluate(dns, "strict.co.uk", dkim_results=[passing("mail.strict.co.uk")], spf=("pass", "mail.strict.co.uk"))
    assert (r.result, r.policy) == ("fail", "reject")
    r = evaluate(dns, "strict.co.uk", dkim_results=[passing("strict.co.uk")])
    assert r.result == "pass"
    # a neighbour under the same public suffix never aligns
    r = evaluate(dns, "relaxed.co.uk", dkim_results=[passing("attacker.co.uk")])
    assert r.result == "fail"


def test_no_record_is_none_after_both_lookups(dns):
    r = evaluate(dns, "mail.nodmarc.co.uk")
    assert (r.result, r.policy, r.record) == ("none", "none", None)
    assert ("_dmarc.mail.nodmarc.co.uk", "TXT") in dns.asked and ("_dmarc.nodmarc.co.uk", "TXT") in dns.asked


def test_records_without_v_dmarc1_are_ignored_and_literals_case_insensitive(dns):
    r = evaluate(dns, "other.example")
    assert (r.result, r.policy) == ("fail", "quarantine")


def test_sp_for_subdomains(dns):
    assert evaluate(dns, "subpolicy.example").policy == "none"  # p= for the org domain itself
    r = evaluate(dns, "deep.sub.subpolicy.example")
    assert (r.result, r.policy, r.record_domain) == ("fail", "reject", "subpolicy.example")
    # a subdomain with its own record uses its own p=
    r = evaluate(dns, "own.subpolicy.example")
    assert (r.policy, r.record_domain) == ("quarantine", "own.subpolicy.example")
    # without sp=, subdomains follow p=
    assert evaluate(dns, "sub.example.com").policy == "reject"


def test_pct_with_injected_random(dns):
    inside = evaluate(dns, "sampled.example", rand=lambda: 0.49)
    assert (inside.result, inside.requested, inside.policy) == ("fail", "reject", "reject")
    outside = evaluate(dns, "sampled.example", rand=lambda: 0.5)
    assert (outside.result, outside.requested, outside.policy) == ("fail", "reject", "quarantine")
    assert evaluate(dns, "sampledq.example", rand=lambda: 0.99).policy == "none"
    assert evaluate(dns, "sampledq.example", rand=lambda: 0.01).policy == "quarantine"

    def never() -> float:
        raise AssertionError("rand() is only drawn for a failing message")

    assert evaluate(dns, "sampled.example", dkim_results=[passing("sampled.example")], rand=never).result == "pass"


def test_servfail_is_temperror(dns):
    r = evaluate(dns, "broken.example")
    assert (r.result, r.policy) == ("temperror", "none")


def test_several_records_apply_no_dmarc(dns):
    r = evaluate(dns, "twice.example")
    assert (r.result, r.policy) == ("none", "none")


def test_record_without_policy(dns):
    r = evaluate(dns, "nop.example")
    assert (r.result, r.policy) == ("permerror", "none")
    r = evaluate(dns, "nopwithrua.example")
    assert (r.result, r.policy) == ("fail", "none")  # taken as p=none


def test_author_domains():
    assert dmarc.author_domains(b"From: Alice <Alice@Mail.Example.COM>\r\n\r\nbody") == ["mail.example.com"]
    assert dmarc.author_domains(b"From: a@x.example, b@X.example\r\n\r\n") == ["x.example"]
    assert dmarc.author_domains(b"From: a@x.example\r\nFrom: b@y.example\r\n\r\n") == ["x.example", "y.example"]
    for broken in (b"To: a@x.example\r\n\r\n", b"From: undisclosed\r\n\r\n", b"From: a@[192.0.2.1]\r\n\r\n",
                   b"From: <>\r\n\r\n"):
        with pytest.raises(dmarc.AuthorDomainError):
            dmarc.author_domains(broken)


def message_eval(dns: LocalDNS, message: bytes, dkim_results: list[DKIMResult]) -> dmarc.DMARCResult:
    return run(dns, lambda r: dmarc.evaluate_message(
        message, spf_result="none", spf_domain="", dkim_results=dkim_results, txt_lookup=r.txt, rand=lambda: 0.0))


def test_evaluate_message_missing_from_is_permerror(dns):
    r = message_eval(dns, b"Subject: no author\r\n\r\nbody\r\n", [])
    assert (r.result, r.policy) == ("permerror", "none")


def test_evaluate_message_several_from_domains_takes_the_strictest(dns):
    # a second From for a domain without DMARC cannot dodge example.com's p=reject
    message = b"From: news@nodmarc.example\r\nFrom: ceo@example.com\r\n\r\nbody\r\n"
    r = message_eval(dns, message, [passing("nodmarc.example")])
    assert (r.result, r.policy, r.from_domain) == ("fail", "reject", "example.com")
    # every domain passing: pass
    message = b"From: a@example.com, b@mail.relaxed.co.uk\r\n\r\nbody\r\n"
    r = message_eval(dns, message, [passing("example.com"), passing("relaxed.co.uk")])
    assert r.result == "pass"
    # one passes, the other has no record: none
    message = b"From: a@example.com, b@nodmarc.example\r\n\r\nbody\r\n"
    assert message_eval(dns, message, [passing("example.com")]).result == "none"


def test_end_to_end_with_real_dkim(dns):
    pem, record = dkim.keygen("example.com", "e2e", "ed25519")
    dns.set("e2e._domainkey.example.com", ("TXT", record.split('"')[1]))
    message = b"From: Alice <alice@example.com>\r\nSubject: hi\r\n\r\nhello\r\n"
    message = dkim.sign(message, domain="example.com", selector="e2e", private_key_pem=pem) + message

    async def check(r: Resolver) -> tuple[dmarc.DMARCResult, dmarc.DMARCResult]:
        results = await dkim.verify(message, txt_lookup=r.txt)
        good = await dmarc.evaluate_message(message, spf_result="softfail", spf_domain="example.org",
                                            dkim_results=results, txt_lookup=r.txt)
        tampered = message.replace(b"hello", b"pay me")
        bad = await dmarc.evaluate_message(tampered, spf_result="softfail", spf_domain="example.org",
                                           dkim_results=await dkim.verify(tampered, txt_lookup=r.txt),
                                           txt_lookup=r.txt, rand=lambda: 0.0)
        return good, bad

    good, bad = run(dns, check)
    assert (good.result, good.dkim_aligned) == ("pass", True)
    assert (bad.result, bad.policy) == ("fail", "reject")


# -- the From addresses' fast reading ------------------------------------------------------------------

SIMPLE_FROM = [
    "Bench Sender <bench@remote.test>", "bench@remote.test", "  <a.b.c@Sub.Example.COM>  ",
    "=?utf-8?q?J=C3=B6rg?= <j@example.org>", "x <y+tag@a-b.example>", "A B C D\t<o'neil@example.org>",
    "first.last@example.org", "{weird}~=!#$%&*/?^`| <w@example.org>",
]
OTHER_FROM = [
    '"Quoted, Name" <q@example.org>', "Name (comment) <c@example.org>", "a@example.org, b@example.net",
    "Group: a@example.org;", "Dr. Who <who@example.org>", "<@route.example:r@example.org>",
    "name <user@[192.0.2.1]>", "a..b@example.org", "a@b@example.org", "Name <a@example.org", "",
    "Name\r\n <f@example.org>", "<a@example.org> trailing", ".a@example.org", "a.@example.org",
]


@pytest.mark.parametrize("value", SIMPLE_FROM)
def test_simple_from_values_read_as_the_email_package_reads_them(value: str) -> None:
    import email.utils

    fast = dmarc._simple_addresses([value])
    assert fast is not None, value
    assert [a for _, a in fast] == [a for _, a in email.utils.getaddresses([value])]


@pytest.mark.parametrize("value", OTHER_FROM)
def test_other_from_values_go_to_the_email_package(value: str) -> None:
    assert dmarc._simple_addresses([value]) is None
    assert dmarc._simple_addresses(["ok@example.org", value]) is None


def test_simple_from_values_generated_agree_with_the_email_package() -> None:
    """Random values built of the characters that matter; each one either reads as getaddresses reads
    it or is left to getaddresses."""
    import email.utils
    import random

    rng = random.Random(7)
    alphabet = "aZ0.@<> \t\"(),:;[]\\+-=?{}'_"
    fast_seen = 0
    for _ in range(20000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        if rng.random() < 0.5:
            value = f"{value} <{rng.choice(['a', 'a.b', 'x+y'])}@{rng.choice(['ex.org', 'a-b.c', 'X.Y'])}>"
        fast = dmarc._simple_addresses([value])
        if fast is not None:
            fast_seen += 1
            assert [a for _, a in fast] == [a for _, a in email.utils.getaddresses([value])], value
    assert fast_seen > 500  # the fast reading was exercised (730 of 20,000 with this seed)
