"""fastmail.hygiene.headers: fields written folded and valid, rspamd's fields merged with ours, removal by
instance, the Subject rewritten."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail.hygiene import headers as H

MSG = (b"Received: from a\r\n\tby b\r\nX-Spam-Status: No, score=-100\r\nSubject: hi\r\n"
       b"X-Spam: yes\r\nX-Spam: maybe\r\nX-Spam: no\r\n\r\nbody\r\nX-Spam: not a header\r\n")


def lines_of(block: bytes) -> list[bytes]:
    assert block.endswith(b"\r\n")
    return block[:-2].split(b"\r\n")


def assert_valid(block: bytes) -> None:
    """One or more fields: CRLF only, continuations start with WSP, no empty or blank line, <= 998 octets."""
    assert b"\r" not in block.replace(b"\r\n", b"") and b"\n" not in block.replace(b"\r\n", b"")
    for i, line in enumerate(lines_of(block)):
        assert len(line) <= H.LIMIT
        assert line.strip(), block
        if i == 0:
            assert H.valid_name(line.split(b":", 1)[0].decode())


def test_short_field_is_one_line() -> None:
    assert H.field("X-Spam-Flag", "YES") == b"X-Spam-Flag: YES\r\n"
    assert H.field("X-Empty", "") == b"X-Empty:\r\n"


def test_rspamd_folds_are_kept() -> None:
    value = "default: False [1.20 / 15.00];\r\n\tR_SPF_ALLOW(-0.20)[+ip4:192.0.2.25];\r\n\tMIME_GOOD(-0.10)[text/plain]"
    assert H.field("X-Spamd-Result", value) == (
        b"X-Spamd-Result: default: False [1.20 / 15.00];\r\n\tR_SPF_ALLOW(-0.20)[+ip4:192.0.2.25];\r\n"
        b"\tMIME_GOOD(-0.10)[text/plain]\r\n")


def test_bare_breaks_cannot_start_a_field_or_end_the_header() -> None:
    block = H.field("X-Test", "one\nBcc: victim@example.org\r\n\r\nbody\rtwo")
    assert_valid(block)
    assert lines_of(block) == [b"X-Test: one", b" Bcc: victim@example.org", b" body", b" two"]
    msg = email.message_from_bytes(block + b"\r\n", policy=email.policy.compat32)
    assert msg.keys() == ["X-Test"]


def test_long_values_fold_at_white_space() -> None:
    symbols = ", ".join(f"SYMBOL_NUMBER_{i}" for i in range(60))
    block = H.field("X-Spam-Status", f"Yes, score=20.00 required=6.00 tests=[{symbols}]")
    assert_valid(block)
    assert all(len(line) <= H.WIDTH for line in lines_of(block))
    assert b" ".join(line.strip() for line in lines_of(block)).decode() == \
        f"X-Spam-Status: Yes, score=20.00 required=6.00 tests=[{symbols}]"


def test_a_run_without_white_space_is_long_but_never_past_998() -> None:
    block = H.field("X-Long", "start " + "x" * 500 + " end")
    assert_valid(block)
    assert lines_of(block) == [b"X-Long: start", b" " + b"x" * 500, b" end"]
    block = H.field("X-Huge", "y" * 3000)
    assert_valid(block)
    assert b"".join(line.strip() for line in lines_of(block)) == b"X-Huge: " + b"y" * 3000


def test_utf8_counts_octets() -> None:
    block = H.field("Subject", "é" * 600)  # 1,200 octets, no white space
    assert_valid(block)
    assert block.decode("utf-8").replace("\r\n ", "").startswith("Subject: " + "é" * 600)


@given(st.text(alphabet=st.sampled_from("ab é\t\r\n:;x"), max_size=3000))
def test_any_value_gives_valid_lines(value: str) -> None:
    assert_valid(H.field("X-Any", value))


def _fold_point_by_scan(line: str, width: int, start: int = 0) -> int | None:
    """_fold_point as it was written first (a scan down from the limit): the reference for the rfind one."""
    limit = H._char_index(line, width)
    start = max(start, len(line) - len(line.lstrip(" \t")))
    for i in range(min(limit, len(line) - 1), start, -1):
        if line[i] in " \t" and line[:i].strip():
            return i
    return None


@given(st.text(alphabet=st.sampled_from("ab é\t \x0c\x1f\u2003:;x"), max_size=300),
       st.integers(min_value=0, max_value=120), st.integers(min_value=0, max_value=20))
@settings(max_examples=3000, deadline=None)
def test_fold_point_is_the_scan(line: str, width: int, start: int) -> None:
    assert H._fold_point(line, width, start) == _fold_point_by_scan(line, width, start)


def test_merge_keeps_ours_and_one_field_per_name() -> None:
    ours = [("X-Spam-Flag", "NO"), ("X-Spam-Status", "No, score=1.00 required=6.00")]
    theirs = {"X-Spam-Status": "No, score=1.00", "X-Spamd-Result": "default: False [1.00 / 15.00];\r\n\tA(1.00)",
              "x-spam-flag": "NO", "Authentication-Results": "rspamd; spf=pass", "Bad Name": "x", "X-Spam": "no"}
    block, names = H.merge_spam_fields(ours, theirs)
    assert_valid(block)
    assert block == (b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=1.00 required=6.00\r\n"
                     b"X-Spamd-Result: default: False [1.00 / 15.00];\r\n\tA(1.00)\r\nX-Spam: no\r\n")
    assert names == {"x-spam-flag", "x-spam-status", "x-spamd-result", "x-spam"}


@pytest.mark.parametrize("remove, kept", [
    ({"x-spam": 0}, [b"no such"]),
    ({"X-Spam": 1}, [b"maybe", b"no"]),
    ({"X-Spam": 2}, [b"yes", b"no"]),
    ({"X-Spam": -1}, [b"yes", b"maybe"]),
    ({"X-Spam": 4}, [b"yes", b"maybe", b"no"]),
])
def test_edit_headers_removes_by_instance(remove: dict[str, int], kept: list[bytes]) -> None:
    out = H.edit_headers(MSG, remove, None)
    head, body = H.split_message(out)
    assert body == b"\r\nbody\r\nX-Spam: not a header\r\n"
    values = [f.split(b":", 1)[1].strip() for f in H.header_fields(head) if H.field_name(f) == b"x-spam"]
    assert values == ([] if kept == [b"no such"] else kept)
    assert b"Received: from a\r\n\tby b\r\n" in head


def test_subject_rewritten_or_added() -> None:
    out = H.edit_headers(MSG, {"X-Spam-Status": 0}, "***SPAM*** hi")
    assert b"Subject: ***SPAM*** hi\r\n" in out and b"Subject: hi\r\n" not in out
    assert b"X-Spam-Status" not in H.split_message(out)[0]
    out = H.edit_headers(b"From: a@b\r\n\r\nx", {}, "new\r\nBcc: x")
    assert out == b"From: a@b\r\nSubject: new\r\n Bcc: x\r\n\r\nx"


def test_strip_authres_only_ours() -> None:
    raw = (b"Authentication-Results: mx.example.org; spf=pass\r\n"
           b"Authentication-Results: (comment) MX.example.org; dkim=pass\r\n"
           b"Authentication-Results: other.example; spf=fail\r\n\r\nx")
    out, removed = H.strip_authres(raw, "mx.example.org")
    assert removed == 2 and out == b"Authentication-Results: other.example; spf=fail\r\n\r\nx"


@pytest.mark.parametrize("value", [b" ((nested) comment) mx.example.org; spf=pass", b' "mx.example.org"; spf=pass',
                                   b' "mx\\.example\\.org" (c); dkim=pass', b"\r\n\t(a \\) b) MX.EXAMPLE.ORG;spf=pass"])
def test_strip_authres_finds_our_id_as_a_reader_does(value) -> None:
    """Found by tests/fuzz: an id in quotes or behind a comment in a comment hid from the stripping."""
    raw = b"Authentication-Results:" + value + b"\r\nSubject: x\r\n\r\nbody"
    assert H.strip_authres(raw, "mx.example.org") == (b"Subject: x\r\n\r\nbody", 1)
    other = raw.replace(b"mx", b"my").replace(b"MX", b"MY")
    assert H.strip_authres(other, "mx.example.org") == (other, 0)


def test_edit_headers_of_an_empty_or_odd_header_section() -> None:
    """Found by tests/fuzz: an empty message crashed header_fields(); a first line starting with white space
    was lost."""
    assert H.edit_headers(b"", {"Subject": 0}, None) == b""
    raw = b" odd first line\r\nSubject: a\r\nX: b\r\n\r\nbody"
    assert H.edit_headers(raw, {"X": 0}, None) == b" odd first line\r\nSubject: a\r\n\r\nbody"
