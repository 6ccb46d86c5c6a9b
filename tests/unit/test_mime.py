"""fastmail.store.mime: ENVELOPE, BODY, BODYSTRUCTURE and sections, computed once, rendered later.

Expected strings come from RFC 3501 (§7.4.2 and its examples), from Dovecot's own tests
(src/lib-imap/test-imap-bodystructure.c, test-imap-envelope.c, which copy imaptest's) and from imaptest's
section tests (fetch-body-message-rfc822*), converted to CRLF; the rest are reasoned out by hand, with
sizes taken from the literal pieces the messages are built from.  Every test runs with both
implementations of fastmail._core.mime.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
from pathlib import Path

import orjson
import pytest

from fastmail._core import variants
from fastmail.store import mime as store_mime

VARIANTS = variants("mime")
CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "mime"


@pytest.fixture(params=sorted(VARIANTS))
def mime(request, monkeypatch):
    """fastmail.store.mime running on one implementation of fastmail._core.mime."""
    monkeypatch.setattr(store_mime, "_m", VARIANTS[request.param])
    return store_mime


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def rendered(mime, raw: bytes) -> dict:
    result = mime._analyze(raw)  # the real walk, without analyze()'s safety net
    return {k: mime.render(result[k]).decode() for k in ("envelope", "body", "bodystructure")}


# --- RFC 3501 examples ---------------------------------------------------------------------------------

RFC3501_HEADER = crlf(
    "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
    "From: Terry Gray <gray@cac.washington.edu>\n"
    "Subject: IMAP4rev1 WG mtg summary and minutes\n"
    "To: imap@cac.washington.edu\n"
    "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
    "Message-Id: <B27397-0100000@cac.washington.edu>\n"
    "MIME-Version: 1.0\n"
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n"
    "Content-Transfer-Encoding: 7BIT\n"
    "\n"
)


def lines_of(count: int, total: int, fill: bytes = b"x") -> bytes:
    """count CRLF-terminated lines of `total` bytes in all."""
    width, extra = divmod(total - 2 * count, count)
    return b"".join(fill * (width + (1 if i < extra else 0)) + b"\r\n" for i in range(count))


def test_rfc3501_envelope_and_body(mime):
    body = lines_of(92, 3028)
    out = rendered(mime, RFC3501_HEADER + body)
    # RFC 3501 §8 sample; the RFC writes "(...) (...)" between the cc addresses, its own grammar
    # (env-cc = "(" 1*address ")") and every server write them with no space.
    assert out["envelope"] == (
        '("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        '(("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) '
        '(("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu")) '
        '((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
        '"<B27397-0100000@cac.washington.edu>")'
    )
    assert out["body"] == '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'
    assert out["bodystructure"] == '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92 NIL NIL NIL NIL)'


def test_rfc3501_multipart_body(mime):
    # RFC 3501 §7.4.2 BODYSTRUCTURE example, rebuilt: 1152 octets / 23 lines, 4554 octets / 73 lines.
    part1 = lines_of(23, 1152)
    part2 = lines_of(73, 4554, b"A")
    raw = (
        crlf("MIME-Version: 1.0\nContent-Type: MULTIPART/MIXED; BOUNDARY=\"b\"\n\n--b\n")
        + crlf("Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\nContent-Transfer-Encoding: 7BIT\n\n")
        + part1
        + crlf("\n--b\n")
        + crlf('Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME="cc.diff"\n')
        + crlf("Content-ID: <960723163407.20117h@cac.washington.edu>\nContent-Description: Compiler diff\n")
        + crlf("Content-Transfer-Encoding: BASE64\n\n")
        + part2
        + crlf("\n--b--\n")
    )
    out = rendered(mime, raw)
    assert out["body"] == (
        '(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        '("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") "<960723163407.20117h@cac.washington.edu>" '
        '"Compiler diff" "BASE64" 4554 73) "MIXED")'
    )
    r = mime._analyze(raw)
    assert mime.section_bytes(raw, r["parts"], "1") == part1
    assert mime.section_bytes(raw, r["parts"], "2") == part2


# --- Dovecot's golden message --------------------------------------------------------------------------

DOVECOT_MSG = (CORPUS / "dovecot-testmsg.eml").read_bytes()

DOVECOT_BODYSTRUCTURE = (
    '(("text" "x-myown" ("charset" "us-ascii" "foo" "quoted\\"string") "<foo@example.com>" "hellodescription" '
    '"7bit" 7 1 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("inline" ("foo" "bar")) ("en" "fi" "se") '
    '"http://example.com/test.txt")("message" "rfc822" NIL NIL NIL "7bit" 412 ("Sun, 12 Aug 2012 12:34:56 +0300" '
    '"submsg" ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org")) '
    '((NIL NIL "sub-to1" "domain.org")(NIL NIL "sub-to2" "domain.org")) NIL NIL NIL NIL) (("text" "html" '
    '("charset" "us-ascii") NIL NIL "8bit" 20 1 NIL NIL NIL NIL)("text" "plain" ("charset" "us-ascii") NIL NIL '
    '"7bit" 21 1 NIL NIL NIL NIL) "alternative" ("boundary" "sub1") NIL NIL NIL) 21 NIL NIL NIL NIL) "mixed" '
    '("boundary" "foo bar") NIL NIL NIL)'
)
DOVECOT_BODY = (
    '(("text" "x-myown" ("charset" "us-ascii" "foo" "quoted\\"string") "<foo@example.com>" "hellodescription" '
    '"7bit" 7 1)("message" "rfc822" NIL NIL NIL "7bit" 412 ("Sun, 12 Aug 2012 12:34:56 +0300" "submsg" '
    '((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org")) '
    '((NIL NIL "sub-to1" "domain.org")(NIL NIL "sub-to2" "domain.org")) NIL NIL NIL NIL) (("text" "html" '
    '("charset" "us-ascii") NIL NIL "8bit" 20 1)("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 21 1) '
    '"alternative") 21) "mixed")'
)


def test_dovecot_bodystructure(mime):
    # Dovecot's test message (its sizes are CRLF "virtual" sizes, so the CRLF form matches them exactly):
    # folded boundary, quoted-pair in a parameter, every extension field, an invalid transfer encoding
    # ("?invalid" -> "7bit"), prologue/epilogue, message/rfc822 holding a multipart.
    out = rendered(mime, DOVECOT_MSG)
    assert out["bodystructure"] == DOVECOT_BODYSTRUCTURE
    assert out["body"] == DOVECOT_BODY


def test_dovecot_bodystructure_bare_lf(mime):
    raw = DOVECOT_MSG.replace(b"\r\n", b"\n")  # LF only: the sizes become the physical ones
    out = rendered(mime, raw)
    assert out["bodystructure"] == DOVECOT_BODYSTRUCTURE.replace('"7bit" 7 1', '"7bit" 6 1').replace(
        '"7bit" 412', '"7bit" 391'
    ).replace('"8bit" 20 1', '"8bit" 19 1').replace('"7bit" 21 1', '"7bit" 20 1')


# imaptest's fetch-envelope cases, as in Dovecot's test-imap-envelope.c
ENVELOPE_CASES = [
    (
        "Message-ID: <msg@id>\nIn-Reply-To: <reply@to.id>\nDate: Thu, 15 Feb 2007 01:02:03 +0200\n"
        "Subject: subject header\nFrom: From Real <fromuser@fromdomain.org>\nTo: To Real <touser@todomain.org>\n"
        "Cc: Cc Real <ccuser@ccdomain.org>\nBcc: Bcc Real <bccuser@bccdomain.org>\n"
        "Sender: Sender Real <senderuser@senderdomain.org>\nReply-To: ReplyTo Real <replytouser@replytodomain.org>\n"
        "\nbody\n",
        '("Thu, 15 Feb 2007 01:02:03 +0200" "subject header" (("From Real" NIL "fromuser" "fromdomain.org")) '
        '(("Sender Real" NIL "senderuser" "senderdomain.org")) (("ReplyTo Real" NIL "replytouser" '
        '"replytodomain.org")) (("To Real" NIL "touser" "todomain.org")) (("Cc Real" NIL "ccuser" "ccdomain.org")) '
        '(("Bcc Real" NIL "bccuser" "bccdomain.org")) "<reply@to.id>" "<msg@id>")',
    ),
    (
        "Date: Thu, 15 Feb 2007 01:02:03 +0200\nFrom: user@domain\n\nbody\n",
        '("Thu, 15 Feb 2007 01:02:03 +0200" NIL ((NIL NIL "user" "domain")) ((NIL NIL "user" "domain")) '
        '((NIL NIL "user" "domain")) NIL NIL NIL NIL NIL)',
    ),
    (
        "Date: Thu, 15 Feb 2007 01:02:03 +0200\nFrom: user@domain (Real Name)\n"
        "To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\nCc: group:;, group2: (foo) ;\n\nbody\n",
        '("Thu, 15 Feb 2007 01:02:03 +0200" NIL (("Real Name" NIL "user" "domain")) '
        '(("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) ((NIL NIL "group" NIL)'
        '(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")'
        '(NIL NIL NIL NIL)) ((NIL NIL "group" NIL)(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL NIL NIL)) '
        "NIL NIL NIL)",
    ),
    (
        "Date: Thu, 15 Feb 2007 01:02:03 +0200\nFrom: user@domain (Real Name)\nSender: \nReply-To: \n\nbody\n",
        '("Thu, 15 Feb 2007 01:02:03 +0200" NIL (("Real Name" NIL "user" "domain")) '
        '(("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) NIL NIL NIL NIL NIL)',
    ),
    (
        "Date: Thu, 15 Feb 2007 01:02:03 +0200\nFrom: <@route:user@domain>\n\nbody\n",
        '("Thu, 15 Feb 2007 01:02:03 +0200" NIL ((NIL "@route" "user" "domain")) ((NIL "@route" "user" "domain")) '
        '((NIL "@route" "user" "domain")) NIL NIL NIL NIL NIL)',
    ),
]


@pytest.mark.parametrize("message, expected", ENVELOPE_CASES)
def test_imaptest_envelopes(mime, message, expected):
    assert rendered(mime, crlf(message))["envelope"] == expected


# --- structures, reasoned out --------------------------------------------------------------------------

ALT_PLAIN = b"Hello=20world\r\nbye\r\n"
ALT_HTML = b"<p>Hello world</p>"
ALT_PLAIN_MIME = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
ALT_HTML_MIME = b"Content-Type: text/html; charset=utf-8\r\n\r\n"
ALT_HEADER = crlf(
    "From: a@example.com\nTo: b@example.com\nSubject: alt\nMIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary="XX"\n\n'
)
ALT_TEXT = (
    b"preamble\r\n--XX\r\n"
    + ALT_PLAIN_MIME
    + ALT_PLAIN
    + b"\r\n--XX\r\n"
    + ALT_HTML_MIME
    + ALT_HTML
    + b"\r\n--XX--\r\nepilogue\r\n"
)
ALT = ALT_HEADER + ALT_TEXT


def test_multipart_alternative(mime):
    out = rendered(mime, ALT)
    plain = f'"text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" {len(ALT_PLAIN)} 2'
    html = f'"text" "html" ("charset" "utf-8") NIL NIL "7bit" {len(ALT_HTML)} 0'
    assert out["body"] == f'(({plain})({html}) "alternative")'
    assert out["bodystructure"] == (
        f'(({plain} NIL NIL NIL NIL)({html} NIL NIL NIL NIL) "alternative" ("boundary" "XX") NIL NIL NIL)'
    )
    assert out["envelope"] == (
        '(NIL "alt" ((NIL NIL "a" "example.com")) ((NIL NIL "a" "example.com")) ((NIL NIL "a" "example.com")) '
        '((NIL NIL "b" "example.com")) NIL NIL NIL NIL)'
    )


@pytest.mark.parametrize(
    "section, expected",
    [
        ("", ALT),
        ("HEADER", ALT_HEADER),
        ("header", ALT_HEADER),
        ("TEXT", ALT_TEXT),
        ("1", ALT_PLAIN),
        ("2", ALT_HTML),
        ("1.MIME", ALT_PLAIN_MIME),
        ("2.mime", ALT_HTML_MIME),
        ("2.1", ALT_HTML),  # a non-multipart part is its own part 1 (Dovecot)
        ("HEADER.FIELDS (Subject to)", b"To: b@example.com\r\nSubject: alt\r\n\r\n"),
        ("HEADER.FIELDS (X-None)", b"\r\n"),
        ("HEADER.FIELDS.NOT (From To Subject Content-Type)", b"MIME-Version: 1.0\r\n\r\n"),
        ('HEADER.FIELDS ("SUBJECT")', b"Subject: alt\r\n\r\n"),
        ("3", None),
        ("2.2", None),
        ("0", None),
        ("01", None),
        ("1.", None),
        ("1..2", None),
        ("1.HEADER", None),  # HEADER and TEXT need a message/rfc822 part
        ("1.TEXT", None),
        ("MIME", None),  # MIME needs a part number
        ("BOGUS", None),
        ("1.2.3MIME", None),
    ],
)
def test_sections_multipart(mime, section, expected):
    result = mime._analyze(ALT)
    assert mime.section_bytes(ALT, result["parts"], section) == expected


def test_multipart_mixed_with_attachment(mime):
    note = b"See attached."
    pdf = base64.encodebytes(b"%PDF-1.4\n" + bytes(range(200))).replace(b"\n", b"\r\n")
    raw = (
        crlf('From: Carol <carol@example.com>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="----=_P1"\n\n')
        + crlf("------=_P1\nContent-Type: text/plain; charset=us-ascii\n\n")
        + note
        + crlf(
            "\n------=_P1\n"
            'Content-Type: application/pdf; name="report.pdf"\n'
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="report.pdf"; size=1234\n'
            "Content-ID: <part2@example.com>\n"
            "Content-Description: Quarterly report\n\n"
        )
        + pdf  # its last CRLF belongs to the close delimiter
        + crlf("------=_P1--\n")
    )
    out = rendered(mime, raw)
    text = f'"text" "plain" ("charset" "us-ascii") NIL NIL "7bit" {len(note)} 0'
    att = (
        f'"application" "pdf" ("name" "report.pdf") "<part2@example.com>" "Quarterly report" "base64" {len(pdf) - 2}'
    )
    assert out["bodystructure"] == (
        f'(({text} NIL NIL NIL NIL)({att} NIL ("attachment" ("filename" "report.pdf" "size" "1234")) NIL NIL) '
        '"mixed" ("boundary" "----=_P1") NIL NIL NIL)'
    )
    assert out["body"] == f'(({text})({att}) "mixed")'
    parts = mime._analyze(raw)["parts"]
    assert base64.decodebytes(mime.section_bytes(raw, parts, "2")) == b"%PDF-1.4\n" + bytes(range(200))
    # the same reading as Python's email package
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    attachment = msg.get_payload()[1]
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_payload() == mime.section_bytes(raw, parts, "2").decode()


NESTED_P = b"Plain."
NESTED_H = b"<p>HTML</p>"
NESTED_IMG = b"iVBORw0KGgo="
NESTED_ALT_MIME = b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
NESTED_ALT_BODY = crlf("--inner\nContent-Type: text/plain\n\n") + NESTED_P + crlf(
    "\n--inner\nContent-Type: text/html\n\n"
) + NESTED_H + b"\r\n--inner--"
NESTED = (
    crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=outer\n\n--outer\n")
    + NESTED_ALT_MIME
    + NESTED_ALT_BODY
    + crlf(
        "\n--outer\nContent-Type: image/png\nContent-Transfer-Encoding: base64\nContent-Disposition: inline\n"
        "Content-Language: en, de\nContent-Location: logo.png\n\n"
    )
    + NESTED_IMG
    + crlf("\n--outer--\n")
)


def test_nested_multipart(mime):
    out = rendered(mime, NESTED)
    assert out["bodystructure"] == (
        '((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0 NIL NIL NIL NIL)'
        '("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 11 0 NIL NIL NIL NIL) "alternative" '
        '("boundary" "inner") NIL NIL NIL)("image" "png" NIL NIL NIL "base64" 12 NIL ("inline" NIL) ("en" "de") '
        '"logo.png") "mixed" ("boundary" "outer") NIL NIL NIL)'
    )
    assert out["body"] == (
        '((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0)("text" "html" ("charset" "us-ascii") NIL NIL '
        '"7bit" 11 0) "alternative")("image" "png" NIL NIL NIL "base64" 12) "mixed")'
    )
    parts = mime._analyze(NESTED)["parts"]
    # The line break after a close delimiter stays with the multipart when the parent's boundary follows at
    # once (an empty epilogue); Dovecot counts it the same way.
    assert mime.section_bytes(NESTED, parts, "1") == NESTED_ALT_BODY + b"\r\n"
    assert mime.section_bytes(NESTED, parts, "1.MIME") == NESTED_ALT_MIME
    assert mime.section_bytes(NESTED, parts, "1.1") == NESTED_P
    assert mime.section_bytes(NESTED, parts, "1.2") == NESTED_H
    assert mime.section_bytes(NESTED, parts, "1.2.MIME") == b"Content-Type: text/html\r\n\r\n"
    assert mime.section_bytes(NESTED, parts, "2") == NESTED_IMG
    assert mime.section_bytes(NESTED, parts, "1.3") is None


INNER_BODY = b"1. Budget approved.\r\n2. Next meeting Friday.\r\n"
INNER_HEADER = crlf(
    "From: Ivan <ivan@example.com>\nTo: judy@example.org\nSubject: Minutes\n"
    "Date: Tue, 5 Mar 2024 10:00:00 +0000\nMessage-ID: <m1@example.com>\n\n"
)
INNER = INNER_HEADER + INNER_BODY
FWD_MIME = b'Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename="fwd.eml"\r\n\r\n'
FWD = (
    crlf("From: grace@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b1\n\n")
    + crlf("--b1\nContent-Type: text/plain\n\nForwarded.\n--b1\n")
    + FWD_MIME
    + INNER
    + crlf("\n--b1--\n")
)


def test_message_rfc822_attachment(mime):
    out = rendered(mime, FWD)
    env = (
        '("Tue, 5 Mar 2024 10:00:00 +0000" "Minutes" (("Ivan" NIL "ivan" "example.com")) '
        '(("Ivan" NIL "ivan" "example.com")) (("Ivan" NIL "ivan" "example.com")) ((NIL NIL "judy" "example.org")) '
        'NIL NIL NIL "<m1@example.com>")'
    )
    inner = f'"text" "plain" ("charset" "us-ascii") NIL NIL "7bit" {len(INNER_BODY)} 2'
    msg = f'"message" "rfc822" NIL NIL NIL "7bit" {len(INNER)}'
    lines = INNER.count(b"\n")
    assert out["bodystructure"] == (
        '(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL)'
        f'({msg} {env} ({inner} NIL NIL NIL NIL) {lines} NIL ("attachment" ("filename" "fwd.eml")) NIL NIL) '
        '"mixed" ("boundary" "b1") NIL NIL NIL)'
    )
    assert out["body"] == (
        f'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0)({msg} {env} ({inner}) {lines}) "mixed")'
    )


@pytest.mark.parametrize(
    "section, expected",
    [
        ("2", INNER),
        ("2.MIME", FWD_MIME),
        ("2.HEADER", INNER_HEADER),
        ("2.TEXT", INNER_BODY),
        ("2.1", INNER_BODY),  # the encapsulated message is not multipart: its part 1 is its body
        ("2.1.MIME", INNER_HEADER),
        ("2.HEADER.FIELDS (SUBJECT)", b"Subject: Minutes\r\n\r\n"),
        ("2.HEADER.FIELDS.NOT (from to date message-id)", b"Subject: Minutes\r\n\r\n"),
        ("2.2", None),
        ("1.HEADER", None),
        ("1.1", b"Forwarded."),
    ],
)
def test_sections_message_rfc822(mime, section, expected):
    assert mime.section_bytes(FWD, mime._analyze(FWD)["parts"], section) == expected


# imaptest src/tests/fetch-body-message-rfc822-x2 and fetch-body-message-rfc822-mime, in CRLF
X2_SUB = crlf("From: sub@domain.org\nDate: Sun, 12 Aug 2012 12:34:56 +0300\nSubject: submsg\n\nHello world\n")
X2_MID = (
    crlf("From: user2@domain.org\nDate: Fri, 23 Mar 2007 11:22:33 +0200\nMime-Version: 1.0\n")
    + crlf("Content-Type: message/rfc822\n\n")
    + X2_SUB
)
X2 = (
    crlf("From: user@domain.org\nDate: Sat, 24 Mar 2007 23:00:00 +0200\nMime-Version: 1.0\n")
    + crlf("Content-Type: message/rfc822\n\n")
    + X2_MID
)


@pytest.mark.parametrize(
    "section, expected",
    [
        ("", X2),
        ("TEXT", X2_MID),
        ("1", X2_MID),
        ("1.1", X2_SUB),
        ("1.HEADER", X2_MID[: X2_MID.index(b"\r\n\r\n") + 4]),
        ("1.TEXT", X2_SUB),
        ("1.1.1", b"Hello world\r\n"),
        ("1.1.HEADER", X2_SUB[: X2_SUB.index(b"\r\n\r\n") + 4]),
        ("1.1.TEXT", b"Hello world\r\n"),
        ("2", None),
    ],
)
def test_sections_top_level_message_rfc822(mime, section, expected):
    assert mime.section_bytes(X2, mime._analyze(X2)["parts"], section) == expected


DIGEST_SUB = crlf(
    "From: sub@domain.org\nDate: Sun, 12 Aug 2012 12:34:56 +0300\nSubject: submsg\n"
    'Content-Type: multipart/digest; boundary="foo"\n\nprologue\n\n--foo \n\n'
    "From: m1@example.com\nSubject: m1\n\nm1 body\n\n--foo \nX-Mime: m2 header\n\n"
    "From: m2@example.com\nSubject: m2\n\nm2 body\n\n--foo--\n\nepilogue\n"
)
DIGEST = (
    crlf("From: user@domain.org\nDate: Sat, 24 Mar 2007 23:00:00 +0200\nMime-Version: 1.0\n")
    + crlf("Content-Type: message/rfc822\n\n")
    + DIGEST_SUB
)


@pytest.mark.parametrize(
    "section, expected",
    [
        ("1", DIGEST_SUB),
        ("1.HEADER", DIGEST_SUB[: DIGEST_SUB.index(b"\r\n\r\n") + 4]),
        ("1.1", crlf("From: m1@example.com\nSubject: m1\n\nm1 body\n")),
        ("1.1.MIME", b"\r\n"),
        ("1.1.HEADER", crlf("From: m1@example.com\nSubject: m1\n\n")),
        ("1.1.TEXT", crlf("m1 body\n")),
        ("1.2", crlf("From: m2@example.com\nSubject: m2\n\nm2 body\n")),
        ("1.2.MIME", crlf("X-Mime: m2 header\n\n")),
        ("1.2.HEADER", crlf("From: m2@example.com\nSubject: m2\n\n")),
        ("1.2.TEXT", crlf("m2 body\n")),
        ("1.3", None),
    ],
)
def test_sections_digest(mime, section, expected):
    assert mime.section_bytes(DIGEST, mime._analyze(DIGEST)["parts"], section) == expected


def test_digest_parts_default_to_message_rfc822(mime):
    out = rendered(mime, DIGEST)
    m1 = (
        '("message" "rfc822" NIL NIL NIL "7bit" 46 (NIL "m1" ((NIL NIL "m1" "example.com")) '
        '((NIL NIL "m1" "example.com")) ((NIL NIL "m1" "example.com")) NIL NIL NIL NIL NIL) '
        '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 9 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL)'
    )
    assert m1 in out["bodystructure"]
    assert out["bodystructure"].startswith(f'("message" "rfc822" NIL NIL NIL "7bit" {len(DIGEST_SUB)} ')
    lines = DIGEST_SUB.count(b"\n")
    assert out["bodystructure"].endswith(f'"digest" ("boundary" "foo") NIL NIL NIL) {lines} NIL NIL NIL NIL)')


# --- envelope details ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        ("X-Foo: bar\n", "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
        ("Date:\nSubject: \n", '("" "" NIL NIL NIL NIL NIL NIL NIL NIL)'),  # present but empty: ""
        ("Subject: one\n two\n\tthree\n", '(NIL "one two\tthree" NIL NIL NIL NIL NIL NIL NIL NIL)'),  # unfolded
        ("Subject: first\nSubject: second\n", '(NIL "first" NIL NIL NIL NIL NIL NIL NIL NIL)'),
        (
            "Subject: =?UTF-8?Q?Caf=C3=A9?= =?UTF-8?B?w6k=?=\n",  # encoded-words stay raw
            '(NIL "=?UTF-8?Q?Caf=C3=A9?= =?UTF-8?B?w6k=?=" NIL NIL NIL NIL NIL NIL NIL NIL)',
        ),
        ('Subject: say "hi" \\o/\n', '(NIL "say \\"hi\\" \\\\o/" NIL NIL NIL NIL NIL NIL NIL NIL)'),
        ("Subject: caf\u00e9\n", '(NIL {5}\r\ncaf\u00e9 NIL NIL NIL NIL NIL NIL NIL NIL)'),  # 8-bit: a literal
        (
            "In-Reply-To: <a@b>\n (comment)\nMessage-ID:   <c@d>  \n",
            '(NIL NIL NIL NIL NIL NIL NIL NIL "<a@b> (comment)" "<c@d>")',
        ),
        (
            "From: undisclosed:;\n",
            "(NIL NIL ((NIL NIL \"undisclosed\" NIL)(NIL NIL NIL NIL)) ((NIL NIL \"undisclosed\" NIL)(NIL NIL NIL NIL)) "
            "((NIL NIL \"undisclosed\" NIL)(NIL NIL NIL NIL)) NIL NIL NIL NIL NIL)",
        ),
        (
            "From: a@b\nSender: (nobody)\nReply-To: c@d\nTo:\nCc: ,\n",  # empty address lists: NIL
            '(NIL NIL ((NIL NIL "a" "b")) ((NIL NIL "a" "b")) ((NIL NIL "c" "d")) NIL NIL NIL NIL NIL)',
        ),
        (
            "FROM: \"Doe, John\" <john@example.com>\nbcc: x@y\n",  # names are case-insensitive
            '(NIL NIL (("Doe, John" NIL "john" "example.com")) (("Doe, John" NIL "john" "example.com")) '
            '(("Doe, John" NIL "john" "example.com")) NIL NIL ((NIL NIL "x" "y")) NIL NIL)',
        ),
    ],
)
def test_envelope_fields(mime, header, expected):
    assert rendered(mime, crlf(header + "\n"))["envelope"] == expected


def test_envelope_8bit_headers(mime):
    utf8 = "From: J\u00f6rg <j@example.de>\r\nSubject: Gr\u00fc\u00dfe\r\n\r\n".encode()
    latin1 = "From: J\u00f6rg <j@example.de>\r\nSubject: Gr\u00fc\u00dfe\r\n\r\n".encode("latin-1")
    # valid UTF-8 is taken as UTF-8, anything else as Latin-1: both give the same text here
    assert mime._analyze(utf8)["envelope"] == mime._analyze(latin1)["envelope"]
    env = mime._analyze(latin1)["envelope"]
    assert env[1] == "Gr\u00fc\u00dfe" and env[2] == [["J\u00f6rg", None, "j", "example.de"]]
    assert mime.render(env[1]) == b"{7}\r\nGr\xc3\xbc\xc3\x9fe"
    nul = mime._analyze(b"Subject: a\x00b\r\n\r\n")["envelope"][1]
    assert nul == "a\ufffdb"


# --- MIME field details --------------------------------------------------------------------------------


def bs_of(mime, header: str, body: bytes = b"x") -> str:
    return rendered(mime, crlf((header + "\n" if header else "") + "\n") + body)["bodystructure"]


@pytest.mark.parametrize(
    "header, expected",
    [
        ("", '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)'),
        ("Content-Type: text/html", '("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)'),
        (
            "Content-Type: text/plain; format=flowed",  # the default charset goes after the others
            '("text" "plain" ("format" "flowed" "charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)',
        ),
        (
            "MIME-Version: 1.0\nContent-Transfer-Encoding: BASE64",
            '("text" "plain" ("charset" "us-ascii") NIL NIL "BASE64" 1 0 NIL NIL NIL NIL)',
        ),
        (
            "Content-Transfer-Encoding: base64",  # no MIME-Version, no Content-Type: not MIME (RFC 2045 §4)
            '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)',
        ),
        (
            "Content-Type: application/octet-stream\nContent-Transfer-Encoding: ?invalid",
            '("application" "octet-stream" NIL NIL NIL "7bit" 1 NIL NIL NIL NIL)',
        ),
        (
            "Content-Type: text",  # invalid: taken as absent (RFC 2045 §5.2)
            '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)',
        ),
        (
            "Content-Type: image; name=x.gif",
            '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)',
        ),
        (
            "Content-Type: multipart/mixed",  # no boundary: invalid
            '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)',
        ),
        (
            'Content-Type: multipart/mixed; boundary=""',
            '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)',
        ),
        (
            "Content-Type: text/plain\nContent-Type: text/html",  # the first one counts
            '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)',
        ),
        (
            "Content-Type: application/x-stuff;\n title*0*=us-ascii'en'This%20is%20even%20more%20;\n"
            " title*1*=%2A%2A%2Afun%2A%2A%2A%20;\n title*2=\"isn't it!\"\n"
            "Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20rates.pdf",
            "(\"application\" \"x-stuff\" (\"title*0*\" \"us-ascii'en'This%20is%20even%20more%20\" \"title*1*\" "
            "\"%2A%2A%2Afun%2A%2A%2A%20\" \"title*2\" \"isn't it!\") NIL NIL \"7bit\" 1 NIL (\"attachment\" "
            "(\"filename*\" \"UTF-8''%E2%82%AC%20rates.pdf\")) NIL NIL)",
        ),
        (
            "Content-Type: text/plain; name==?utf-8?B?w6kudHh0?=\nContent-Disposition: INLINE;filename=a b.txt",
            '("text" "plain" ("name" "=?utf-8?B?w6kudHh0?=" "charset" "us-ascii") NIL NIL "7bit" 1 0 NIL '
            '("INLINE" ("filename" "a b.txt")) NIL NIL)',
        ),
        (
            "Content-Type: audio/basic\nContent-ID: <id@x>\nContent-Description: =?utf-8?q?d=C3=A9?=\n"
            "Content-MD5: Q2hlY2s=\nContent-Language: en-US (English), de\nContent-Location:\n http://x/y",
            '("audio" "basic" NIL "<id@x>" "=?utf-8?q?d=C3=A9?=" "7bit" 1 "Q2hlY2s=" NIL ("en-US" "de") '
            '"http://x/y")',
        ),
        (
            "Content-Type: text/plain\nContent-Disposition: ;",
            '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL)',
        ),
        (
            "Content-Type: text/plain; charset=\"ISO-8859-1\"; name=\"d\u00e9j\u00e0.txt\"",
            '("text" "plain" ("charset" "ISO-8859-1" "name" {10}\r\nd\u00e9j\u00e0.txt) NIL NIL "7bit" 1 0 NIL NIL NIL NIL)',
        ),
    ],
)
def test_mime_fields(mime, header, expected):
    assert bs_of(mime, header) == expected


def test_message_global_and_digest_default(mime):
    inner = "From: =?utf-8?q?=C3=B6?= <o@example.com>\r\nSubject: \u00fcber\r\n\r\nGr\u00fc\u00dfe\r\n".encode()
    raw = b"Content-Type: message/global\r\n\r\n" + inner
    result = mime._analyze(raw)
    bs = result["bodystructure"]
    assert bs[:7] == ["message", "global", None, None, None, "7bit", len(inner)]
    assert bs[7][1] == "\u00fcber"
    assert bs[9] == 4
    assert mime.section_bytes(raw, result["parts"], "1.HEADER") == inner[: inner.index(b"\r\n\r\n") + 4]


# --- broken input --------------------------------------------------------------------------------------

TEXT_0 = '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'


def test_empty_message(mime):
    result = mime._analyze(b"")
    assert mime.render(result["bodystructure"]).decode() == TEXT_0
    assert result["envelope"] == [None] * 10
    assert result["parts"] == [0, 0, 0]
    for section in ("", "HEADER", "TEXT", "1", "1.MIME"):
        assert mime.section_bytes(b"", result["parts"], section) == b""


def test_no_empty_line(mime):
    raw = b"From: a@b\r\nSubject: header only"
    result = mime._analyze(raw)
    assert result["parts"] == [0, len(raw), len(raw)]
    assert result["envelope"][1] == "header only"
    assert mime.render(result["bodystructure"]).decode() == TEXT_0
    assert mime.section_bytes(raw, result["parts"], "HEADER") == raw
    assert mime.section_bytes(raw, result["parts"], "TEXT") == b""


def test_unterminated_multiparts(mime):
    raw = crlf(
        'Content-Type: multipart/mixed; boundary="a"\n\n--a\n'
        'Content-Type: multipart/alternative; boundary="b"\n\n--b\n\ninner, never closed\n'
        "--a\nContent-Type: text/html\n\n<p>never closed</p>\n"
    )
    result = mime._analyze(raw)
    assert mime.render(result["body"]).decode() == (
        '((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 19 0) "alternative")'
        '("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 21 1) "mixed")'
    )
    assert mime.section_bytes(raw, result["parts"], "1.1") == b"inner, never closed"
    assert mime.section_bytes(raw, result["parts"], "2") == b"<p>never closed</p>\r\n"


def test_multipart_without_parts(mime):
    for raw in (
        crlf("Content-Type: multipart/mixed; boundary=b\n\nno parts at all\n"),
        crlf("Content-Type: multipart/mixed; boundary=b\n\npreamble\n--b--\nepilogue\n"),
    ):
        result = mime._analyze(raw)
        # the grammar wants 1*body: one empty text/plain, as Dovecot writes; it has no section
        assert mime.render(result["bodystructure"]).decode() == (
            f'({TEXT_0} "mixed" ("boundary" "b") NIL NIL NIL)'
        )
        assert mime.render(result["body"]).decode() == (
            '(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'
        )
        assert mime.section_bytes(raw, result["parts"], "1") is None


def test_boundary_cuts_header(mime):
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=cut\n\n--cut\nContent-Type: text/plain\n"
        "--cut\nContent-Type: message/rfc822\n--cut\nContent-Type: image/gif\n\nGIF89a\n--cut--\n"
    )
    result = mime._analyze(raw)
    assert mime.render(result["body"]).decode() == (
        '(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)("message" "rfc822" NIL NIL NIL "7bit" 0 '
        '(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) 0)'
        '("image" "gif" NIL NIL NIL "7bit" 6) "mixed")'
    )
    assert mime.section_bytes(raw, result["parts"], "1.MIME") == b"Content-Type: text/plain"
    assert mime.section_bytes(raw, result["parts"], "1") == b""
    assert mime.section_bytes(raw, result["parts"], "2.HEADER") == b""


def test_prefix_boundaries(mime):
    # RFC 2046 §5.1.1 asks for a prefix match; the longest active boundary wins, so an inner boundary
    # that extends the outer one still works (Dovecot's rule).
    raw = crlf(
        'Content-Type: multipart/mixed; boundary="abc"\n\n--abc\n'
        'Content-Type: multipart/alternative; boundary="abc-1"\n\n--abc-1\n\na\n--abc-1\n\nb\n--abc-1--\n'
        "--abc\n\nc\n--abc--\n"
    )
    result = mime._analyze(raw)
    assert [mime.section_bytes(raw, result["parts"], s) for s in ("1.1", "1.2", "2")] == [b"a", b"b", b"c"]


def test_garbage_never_raises(mime):
    for raw in (
        bytes(range(256)) * 4,
        b"\x00" * 100,
        b"--\r\n--\r\n\r\n--",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\n" * 50,
        b"Content-Type: message/rfc822\r\n\r\n" * 30,
        b"From: (((((((\r\nTo: \"\"\"\"\r\nCc: <<<<>>>@@@,,;;::\r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=\"\\\r\n\r\n--\\\r\n\r\nx",
        b"\n\n\n",
        b"\r",
    ):
        result = mime.analyze(raw)
        for key in ("envelope", "body", "bodystructure"):
            mime.render(result[key])


def test_nesting_limit(mime, monkeypatch):
    monkeypatch.setattr(mime, "MAX_DEPTH", 3)
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(6))
    raw += b"\r\ninnermost\r\n"
    result = mime._analyze(raw)
    body = result["body"]
    # depth 0, 1, 2 are split; the multipart at depth 3 is not: it becomes an opaque leaf
    assert body[0][0][0][:2] == ["application", "octet-stream"]
    assert result["parts"][4][0][4][0][4][0][3:] == []


def test_deep_nesting_does_not_recurse_forever(mime):
    depth = 3 * mime.MAX_DEPTH
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=x%05dx\r\n\r\n--x%05dx\r\n" % (i, i) for i in range(depth))
    result = mime._analyze(raw + b"\r\nx\r\n")
    assert mime.render(result["bodystructure"]).count(b'"application" "octet-stream"') == 1
    result = mime._analyze(b"Content-Type: message/rfc822\r\n\r\n" * depth + b"\r\nx")
    assert mime.render(result["bodystructure"]).count(b'"application" "octet-stream"') == 1


def test_part_limit(mime, monkeypatch):
    monkeypatch.setattr(mime, "MAX_PARTS", 5)
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(
        b"--b\r\n\r\npart %d\r\n" % i for i in range(20)
    ) + b"--b--\r\n"
    result = mime._analyze(raw)
    assert len(result["parts"][4]) == 4  # the root and 4 parts; the rest is not split
    assert mime.section_bytes(raw, result["parts"], "4") == b"part 3"


def test_analyze_copies_non_bytes_once(mime):
    raw = bytearray(ALT)
    assert mime.analyze(raw) == mime.analyze(memoryview(ALT)) == mime._analyze(ALT)


# --- the stored form -----------------------------------------------------------------------------------


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.eml"))


def expected_of(mime, raw: bytes) -> dict:
    result = mime._analyze(raw)
    out = {k: mime.render(result[k]).decode("utf-8") for k in ("envelope", "body", "bodystructure")}
    out["parts"] = result["parts"]
    return out


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_corpus(mime, path):
    """Golden corpus: raw message + expected ENVELOPE/BODY/BODYSTRUCTURE (wire form) and section map.
    FASTMAIL_REGEN_CORPUS=1 rewrites the .json files (review the diff before committing it)."""
    raw = path.read_bytes()
    got = expected_of(mime, raw)
    golden = path.with_suffix(".json")
    if os.environ.get("FASTMAIL_REGEN_CORPUS") == "1":
        items = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in got.items()]
        golden.write_text("{\n" + ",\n".join(items) + "\n}\n", encoding="utf-8")
    assert got == json.loads(golden.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_corpus_invariants(mime, path):
    raw = path.read_bytes()
    result = mime.analyze(raw)
    assert result["v"] == 1
    # orjson stores it as it is
    assert orjson.loads(orjson.dumps(result)) == result
    # BODY is BODYSTRUCTURE without the extension data
    assert mime.to_body(result["bodystructure"]) == result["body"]
    # every node of the section map is consistent, and section_bytes() finds every part
    parts = result["parts"]
    assert parts[0] == 0 and parts[2] == len(raw)
    assert mime.section_bytes(raw, parts, "") == raw

    def walk(node, path, lo, hi):
        """Check the part `node` numbered `path` and everything below it (RFC 3501 §6.4.5 numbering)."""
        hs, bs, end = node[:3]
        assert lo <= hs <= bs <= end <= hi
        assert mime.section_bytes(raw, parts, path) == raw[bs:end]
        assert mime.section_bytes(raw, parts, path + ".MIME") == raw[hs:bs]
        if len(node) > 3 and node[3] == mime.MULTIPART:
            for i, child in enumerate(node[4], 1):
                walk(child, f"{path}.{i}", bs, end)
        elif len(node) > 3 and node[3] == mime.MESSAGE:
            inner = node[4]
            assert inner[0] == bs and inner[2] == end
            assert mime.section_bytes(raw, parts, path + ".HEADER") == raw[inner[0] : inner[1]]
            assert mime.section_bytes(raw, parts, path + ".TEXT") == raw[inner[1] : inner[2]]
            enter(inner, path, bs, end)

    def enter(message, path, lo, hi):
        """The parts of an encapsulated (or the top-level) message: a multipart's children, else itself
        as part 1."""
        prefix = path + "." if path else ""
        if len(message) > 3 and message[3] == mime.MULTIPART:
            for i, child in enumerate(message[4], 1):
                walk(child, f"{prefix}{i}", message[1], message[2])
        else:
            walk(message, prefix + "1", lo, hi)

    enter(parts, "", 0, len(raw))


def test_corpus_variants_agree():
    for path in corpus_files():
        raw = path.read_bytes()
        results = []
        for core in VARIANTS.values():
            store_mime._m, saved = core, store_mime._m
            try:
                results.append(store_mime._analyze(raw))
            finally:
                store_mime._m = saved
        assert results[0] == results[1], path.name


def _types(bs: list, out: list) -> None:
    """(content type, parameters) in email.Message.walk() order."""
    if isinstance(bs[0], list):
        i = 0
        while isinstance(bs[i], list):
            i += 1
        out.append((("multipart/" + bs[i]).lower(), bs[i + 1]))
        for child in bs[:i]:
            _types(child, out)
    else:
        out.append((f"{bs[0]}/{bs[1]}".lower(), bs[2]))
        if bs[0].lower() == "message" and isinstance(bs[8], list):
            _types(bs[8], out)


# Where Python's email package reads a corpus message differently, and why.
EMAIL_DIFFERS = {
    "broken-no-boundary": "it keeps a multipart without boundary as multipart (RFC 2045 §5.2: text/plain)",
    "dovecot-testmsg": "it does not unfold the folded boundary parameter",
}


@pytest.mark.parametrize("path", [p for p in corpus_files() if p.stem not in EMAIL_DIFFERS], ids=lambda p: p.stem)
def test_corpus_against_python_email(mime, path):
    """Content types and parameters agree with Python's email package (compat32)."""
    raw = path.read_bytes()
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    ours: list = []
    _types(mime._analyze(raw)["bodystructure"], ours)
    theirs = list(msg.walk())
    assert [t for t, _ in ours] == [p.get_content_type() for p in theirs]
    for (_t, params), part in zip(ours, theirs, strict=True):
        mine = dict(zip([n.lower() for n in (params or [])[0::2]], (params or [])[1::2], strict=True))
        for name, value in (part.get_params() or [])[1:]:
            # compat32 leaves comments in values ("flowed (comment)") and 8-bit as surrogates: skip those
            if isinstance(value, str) and value.isascii() and "(" not in value:
                assert mine.get(name.lower()) == value, name
