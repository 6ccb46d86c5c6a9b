"""fastmail._core.mime: the MIME scanners, against both implementations (compiled and pure twin)."""

from __future__ import annotations

import pytest

from fastmail._core import variants

VARIANTS = variants("mime")


@pytest.fixture(params=sorted(VARIANTS))
def core(request):
    return VARIANTS[request.param]


def test_both_variants_are_what_they_claim():
    from fastmail._core import is_compiled

    assert is_compiled(VARIANTS["compiled"])
    assert not is_compiled(VARIANTS["pure"])


# --- scan_header ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, bounds, expected",
    [
        # (fields_end, body_start, bidx, bclose, bnext)
        (b"A: 1\r\nB: 2\r\n\r\nbody", [], (12, 14, -1, 0, 14)),
        (b"A: 1\nB: 2\n\nbody", [], (10, 11, -1, 0, 11)),  # bare LF
        (b"\r\nbody", [], (0, 2, -1, 0, 2)),  # empty header
        (b"\nbody", [], (0, 1, -1, 0, 1)),
        (b"A: 1\r\nB: 2", [], (10, 10, -1, 0, 10)),  # no empty line: all header
        (b"A: 1\r\nB: 2\r\n", [], (12, 12, -1, 0, 12)),
        (b"", [], (0, 0, -1, 0, 0)),
        (b"A: 1\r\n \r\nB: 2\r\n\r\nx", [], (15, 17, -1, 0, 17)),  # a white-space line is not empty
        (b"A: 1\r\n\rx\r\n\r\n", [], (10, 12, -1, 0, 12)),  # a bare CR is no line end
        # a boundary line cuts the header short; the CRLF before it belongs to the boundary
        (b"A: 1\r\n--b\r\nrest", [b"b"], (4, 4, 0, 0, 11)),
        (b"A: 1\r\n--b--\r\nrest", [b"b"], (4, 4, 0, 1, 13)),
        (b"--b\r\nrest", [b"b"], (0, 0, 0, 0, 5)),
        (b"A: 1\r\n--c\r\n\r\n", [b"b"], (11, 13, -1, 0, 13)),  # not one of ours
        (b"A: 1\r\n--b\r\n", [], (11, 11, -1, 0, 11)),  # no boundaries active: an ordinary line
    ],
)
def test_scan_header(core, raw, bounds, expected):
    assert core.scan_header(raw, 0, len(raw), bounds) == expected


def test_scan_header_window(core):
    raw = b"junk\r\nA: 1\r\n\r\nbody\r\ntrailer"
    assert core.scan_header(raw, 6, len(raw), []) == (12, 14, -1, 0, 14)
    assert core.scan_header(raw, 6, 10, []) == (10, 10, -1, 0, 10)
    assert core.scan_header(raw, 0, 10**9, []) == (12, 14, -1, 0, 14)  # end clamped


# --- find_boundary -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, bounds, expected",
    [
        # (part_end, bidx, bclose, bnext)
        (b"text\r\n--b\r\nnext", [b"b"], (4, 0, 0, 11)),
        (b"text\r\n\r\n--b\r\n", [b"b"], (6, 0, 0, 13)),  # only the last CRLF belongs to the boundary
        (b"text\n--b\nnext", [b"b"], (4, 0, 0, 9)),
        (b"--b\r\nx", [b"b"], (0, 0, 0, 5)),  # at the very start
        (b"text\r\n--b--\r\nepilogue", [b"b"], (4, 0, 1, 13)),
        (b"text\r\n--b--", [b"b"], (4, 0, 1, 11)),
        (b"text\r\n--b  \t\r\nx", [b"b"], (4, 0, 0, 14)),  # transport padding
        (b"text\r\n--bx\r\n", [b"b"], (4, 0, 0, 12)),  # RFC 2046 §5.1.1: a prefix match is enough
        (b"text\r\n-- b\r\n--c\r\n", [b"b"], (17, -1, 0, 17)),
        (b"a --b\r\n", [b"b"], (7, -1, 0, 7)),  # not at a line start
        (b"text\r--b\r\n", [b"b"], (10, -1, 0, 10)),  # a bare CR does not start a line
        (b"x\r\n--abc-1\r\n", [b"abc", b"abc-1"], (1, 1, 0, 12)),  # longest match wins
        (b"x\r\n--abc-1--\r\n", [b"abc", b"abc-1"], (1, 1, 1, 14)),
        (b"x\r\n--abc--\r\n", [b"abc", b"abc-1"], (1, 0, 1, 12)),
        (b"x\r\n--abc-2\r\n", [b"abc", b"abc-1"], (1, 0, 0, 12)),
        (b"x\r\n--same\r\n", [b"same", b"same"], (1, 1, 0, 11)),  # a tie goes to the innermost
        (b"x\r\n---\r\n--\r\n----\r\n", [b"b"], (18, -1, 0, 18)),
        (b"", [b"b"], (0, -1, 0, 0)),
        (b"x\r\n--b\r\n", [], (8, -1, 0, 8)),
        (b"x\r\n--", [b"b"], (5, -1, 0, 5)),
    ],
)
def test_find_boundary(core, raw, bounds, expected):
    assert core.find_boundary(raw, 0, len(raw), bounds) == expected


def test_find_boundary_window(core):
    raw = b"--b\r\npart one\r\n--b\r\npart two\r\n--b--\r\n"
    first = core.find_boundary(raw, 0, len(raw), [b"b"])
    assert first == (0, 0, 0, 5)
    second = core.find_boundary(raw, first[3], len(raw), [b"b"])
    assert second == (13, 0, 0, 20) and raw[5:13] == b"part one"
    third = core.find_boundary(raw, second[3], len(raw), [b"b"])
    assert third == (28, 0, 1, 37) and raw[20:28] == b"part two"
    assert core.find_boundary(raw, 5, 12, [b"b"]) == (12, -1, 0, 12)


def test_find_boundary_in_base64(core):
    body = b"QUJD" * 19 + b"\r\n"
    raw = b"\r\n" + body * 500 + b"--==b==\r\n"
    assert core.find_boundary(raw, 2, len(raw), [b"==b=="]) == (len(raw) - 11, 0, 0, len(raw))


# --- fields --------------------------------------------------------------------------------------------


def test_fields(core):
    raw = (
        b"From foo@bar Mon Jan  1 00:00:00 2024\r\n"  # mbox line: not a field
        b" stray continuation\r\n"
        b"Subject: Hello\r\n"
        b"\tworld \r\n"
        b"To : a@b\r\n"  # obs: white space before the colon
        b"X-Empty:\r\n"
        b"no colon here\r\n"
        b"  and its continuation: x\r\n"
        b"X-8bit: caf\xe9\r\n"
        b"Subject: second\r\n"
        b": no name\r\n"
        b"Content-Type:\r\n multipart/mixed;\r\n boundary=x\r\n"
        b"\r\n"
    )
    end = len(raw) - 2
    assert core.fields(raw, 0, end, None) == [
        (b"subject", b"Hello\tworld"),
        (b"to", b"a@b"),
        (b"x-empty", b""),
        (b"x-8bit", b"caf\xe9"),
        (b"subject", b"second"),
        (b"content-type", b"multipart/mixed; boundary=x"),
    ]
    assert core.fields(raw, 0, end, {b"subject"}) == [(b"subject", b"Hello\tworld"), (b"subject", b"second")]
    assert core.fields(raw, 0, end, frozenset()) == []


def test_fields_bare_lf_and_no_final_newline(core):
    raw = b"A: 1\nB: two\n  lines\nC: last"
    assert core.fields(raw, 0, len(raw), None) == [(b"a", b"1"), (b"b", b"two  lines"), (b"c", b"last")]


def test_field_spans(core):
    raw = b"From: a@b\r\nX-Long: one\r\n two\r\nbogus\r\nTo: c@d\r\n\r\n"
    spans = core.field_spans(raw, 0, len(raw))
    assert [(n, raw[s:e]) for n, s, e in spans] == [
        (b"from", b"From: a@b\r\n"),
        (b"x-long", b"X-Long: one\r\n two\r\n"),
        (b"to", b"To: c@d\r\n"),
    ]


def test_count_lines(core):
    assert core.count_lines(b"a\nb\r\nc", 0, 6) == 2
    assert core.count_lines(b"a\nb\r\nc", 2, 2) == 0
    assert core.count_lines(b"abc", 0, 3) == 0
    assert core.count_lines(b"a\n", 3, 1) == 0


# --- structured fields ---------------------------------------------------------------------------------


def test_lex_address(core):
    A, Q, C, L, S = core.ATOM, core.QUOTED, core.COMMENT, core.LITERAL, core.SPECIAL
    assert core.lex_address(b'"Doe, \\"J\\"" <j.d@x.org> (c (nested) \\) x), [1.2.3.4]:;') == [
        (Q, b'Doe, "J"'),
        (S, b"<"),
        (A, b"j.d"),
        (S, b"@"),
        (A, b"x.org"),
        (S, b">"),
        (C, b"c (nested) ) x"),
        (S, b","),
        (L, b"[1.2.3.4]"),
        (S, b":"),
        (S, b";"),
    ]
    assert core.lex_address(b'"unterminated') == [(Q, b"unterminated")]
    assert core.lex_address(b"(unterminated") == [(C, b"unterminated")]
    assert core.lex_address(b"[1.2") == [(L, b"[1.2")]
    assert core.lex_address(b"\xc3\xa9t\xc3\xa9 a)b]") == [(A, b"\xc3\xa9t\xc3\xa9"), (A, b"a"), (S, b")"), (A, b"b"), (S, b"]")]
    assert core.lex_address(b"") == []


MM, MD = b"MISSING_MAILBOX", b"MISSING_DOMAIN"
G_END = [None, None, None, None]


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"user@example.com", [[None, None, b"user", b"example.com"]]),
        (b"Terry Gray <gray@cac.washington.edu>", [[b"Terry Gray", None, b"gray", b"cac.washington.edu"]]),
        (b'"Doe, John" <john@example.com>', [[b"Doe, John", None, b"john", b"example.com"]]),
        (b"john@example.com (John Doe)", [[b"John Doe", None, b"john", b"example.com"]]),
        (b"John Q. Public <jqp@example.com>", [[b"John Q. Public", None, b"jqp", b"example.com"]]),
        (b'"Giant; \\"Big\\" Box" <sysservices@example.net>', [[b'Giant; "Big" Box', None, b"sysservices", b"example.net"]]),
        (
            b"Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",  # RFC 5322 A.5
            [[b"Pete", None, b"pete", b"silly.test"]],
        ),
        (b"<@route1,@route2:user@example.com>", [[None, b"@route1,@route2", b"user", b"example.com"]]),
        (b"Mary Smith <@node.test:mary@example.net>", [[b"Mary Smith", b"@node.test", b"mary", b"example.net"]]),
        (b"=?UTF-8?B?w6l0w6k=?= <e@example.com>", [[b"=?UTF-8?B?w6l0w6k=?=", None, b"e", b"example.com"]]),
        (b'"=?utf-8?q?Ren=C3=A9?=" <r@x>', [[b"=?utf-8?q?Ren=C3=A9?=", None, b"r", b"x"]]),
        (b'"john doe"@example.com', [[None, None, b"john doe", b"example.com"]]),
        (b"john . q . public @ example . com", [[None, None, b"john.q.public", b"example.com"]]),
        (b"user@[192.0.2.1]", [[None, None, b"user", b"[192.0.2.1]"]]),
        (b"a@b, , c@d,", [[None, None, b"a", b"b"], [None, None, b"c", b"d"]]),
        (b"undisclosed-recipients:;", [[None, None, b"undisclosed-recipients", None], G_END]),
        (
            b"A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",  # RFC 5322 A.1.3
            [
                [None, None, b"A Group", None],
                [b"Ed Jones", None, b"c", b"a.test"],
                [None, None, b"joe", b"where.test"],
                [b"John", None, b"jdoe", b"one.test"],
                G_END,
            ],
        ),
        (
            b"group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;",
            [
                [None, None, b"group", None],
                [None, None, b"g1", b"d1.org"],
                [None, None, b"g2", b"d2.org"],
                G_END,
                [None, None, b"group2", None],
                [None, None, b"g3", b"d3.org"],
                G_END,
            ],
        ),
        (b"group:;, group2: (foo) ;", [[None, None, b"group", None], G_END, [None, None, b"group2", None], G_END]),
        (b"open group: a@b", [[None, None, b"open group", None], [None, None, b"a", b"b"], G_END]),  # no ";"
        (b"root", [[None, None, b"root", MD]]),
        (b"root (Super User)", [[b"Super User", None, b"root", MD]]),
        (b"Mail Delivery System", [[b"Mail Delivery System", None, MM, MD]]),
        (b'"Only A Name"', [[b"Only A Name", None, MM, MD]]),
        (b"<>", [[None, None, MM, MD]]),
        (b"Name <user>", [[b"Name", None, b"user", MD]]),
        (b"@example.com", [[None, None, MM, b"example.com"]]),
        (b"Foo <a@b", [[b"Foo", None, b"a", b"b"]]),  # unterminated angle-addr
        (b"Foo <a@b, c@d", [[b"Foo", None, b"a", b"b"], [None, None, b"c", b"d"]]),
        (b"a@b@c", [[None, None, b"a", b"b"]]),
        (b"\xc3\x89lodie <e@example.fr>", [[b"\xc3\x89lodie", None, b"e", b"example.fr"]]),
        (b"(just a comment)", []),
        (b"", []),
        (b" , ;; > ", []),
    ],
)
def test_parse_addresses(core, value, expected):
    assert core.parse_addresses(value) == expected


@pytest.mark.parametrize(
    "value, slash, expected",
    [
        (b"text/plain", True, (b"text", b"plain", [])),
        (b"TEXT/PLAIN; CHARSET=US-ASCII", True, (b"TEXT", b"PLAIN", [(b"CHARSET", b"US-ASCII")])),
        (b'multipart/mixed; boundary="foo bar"', True, (b"multipart", b"mixed", [(b"boundary", b"foo bar")])),
        (b"text / plain ; charset = utf-8", True, (b"text", b"plain", [(b"charset", b"utf-8")])),
        (b"text/plain; charset=us-ascii (Plain text)", True, (b"text", b"plain", [(b"charset", b"us-ascii")])),
        (b"(c) text/(c)plain(c);(c)a(c)=(c)b(c)", True, (b"text", b"plain", [(b"a", b"b")])),
        (b'text/x; foo="quoted\\"string"', True, (b"text", b"x", [(b"foo", b'quoted"string')])),
        (b"text/plain; name==?utf-8?B?w6k=?=", True, (b"text", b"plain", [(b"name", b"=?utf-8?B?w6k=?=")])),
        (b"a/b; boundary=----=_Part_1; x=y", True, (b"a", b"b", [(b"boundary", b"----=_Part_1"), (b"x", b"y")])),
        (b"a/b; name=two words.txt ;x=y", True, (b"a", b"b", [(b"name", b"two words.txt"), (b"x", b"y")])),
        (
            b"application/x-stuff; title*0*=us-ascii'en'This%20is; title*1=\" fun\"",
            True,
            (b"application", b"x-stuff", [(b"title*0*", b"us-ascii'en'This%20is"), (b"title*1", b" fun")]),
        ),
        (b"a/b; empty=; =novalue; noequals; k=v", True, (b"a", b"b", [(b"empty", b""), (b"k", b"v")])),
        (b"a/b junk; k=v", True, (b"a", b"b", [(b"k", b"v")])),
        (b"text", True, (b"text", None, [])),
        (b"text/", True, (b"text", b"", [])),
        (b"/plain", True, (b"", b"plain", [])),
        (b"", True, (b"", None, [])),
        (b'a/b; k="unterminated', True, (b"a", b"b", [(b"k", b"unterminated")])),
        (b"attachment; filename=\"a b.pdf\"", False, (b"attachment", None, [(b"filename", b"a b.pdf")])),
        (b"inline", False, (b"inline", None, [])),
        (b"base64", False, (b"base64", None, [])),
        (b"?invalid", False, (b"", None, [])),
        (b"text/plain; charset=\xe9", True, (b"text", b"plain", [(b"charset", b"\xe9")])),
    ],
)
def test_content_value(core, value, slash, expected):
    assert core.content_value(value, slash) == expected


# --- render --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, b"NIL"),
        (0, b"0"),
        (12345, b"12345"),
        ("", b'""'),
        ("plain", b'"plain"'),
        ('a"b\\c', b'"a\\"b\\\\c"'),
        ("tab\there", b'"tab\there"'),
        ("caf\xe9", b"{5}\r\ncaf\xc3\xa9"),
        ("line\r\nbreak", b"{11}\r\nline\r\nbreak"),
        ("bell\x07", b"{5}\r\nbell\x07"),
        ("del\x7f", b"{4}\r\ndel\x7f"),
        ("nul\x00", b"{6}\r\nnul\xef\xbf\xbd"),  # CHAR8 has no NUL
        ("\udcff", b"{1}\r\n?"),  # a lone surrogate never makes render fail
        (b"raw", b'"raw"'),
        (b'q"', b'"q\\""'),
        (b"\xff\x00", b"{4}\r\n\xff\xef\xbf\xbd"),
        (bytearray(b"ba"), b'"ba"'),
        ([], b"()"),
        (["a", None, 1], b'("a" NIL 1)'),
        ([[None, None, "a", "b"], [None, None, "c", "d"]], b'((NIL NIL "a" "b")(NIL NIL "c" "d"))'),
        ([["x"], ["y"], "mixed", ["k", "v"], None, ["z"]], b'(("x")("y") "mixed" ("k" "v") NIL ("z"))'),
        (["d", "s", [["n"]], [["m"]]], b'("d" "s" (("n")) (("m")))'),
        ((("a",), "b"), b'(("a") "b")'),
    ],
)
def test_render(core, value, expected):
    assert core.render(value) == expected


@pytest.mark.parametrize("value", [1.5, True, {"a": 1}, object()])
def test_render_rejects_other_types(core, value):
    with pytest.raises(TypeError):
        core.render(value)
