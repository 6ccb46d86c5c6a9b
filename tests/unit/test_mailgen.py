"""The IMAP benchmark's mailbox generator (bench/imap/mailgen.py): deterministic, valid MIME, and the planted
search words where expected_hits() says they are."""

from __future__ import annotations

import email
import email.policy
import hashlib
import re

import pytest

from bench.imap import mailgen
from bench.imap.mailgen import RARE_WORD, SUBJECT_WORD, TEXT_WORD, expected_hits, generate

N = 400  # covers every kind of message and every planted word (RARE_WORD sits at i % 2500 == 1234: see below)


@pytest.fixture(scope="module")
def box() -> list[mailgen.Message]:
    return list(generate(N, seed=3))


def _digest(msgs: list[mailgen.Message]) -> str:
    h = hashlib.sha256()
    for m in msgs:
        h.update(m.data)
        h.update(str(m.internaldate).encode())
    return h.hexdigest()


def test_same_seed_same_bytes(box):
    again = list(generate(N, seed=3))
    assert _digest(again) == _digest(box)
    assert _digest(list(generate(N, seed=4))) != _digest(box)


def test_message_depends_on_seed_and_index_only(box):
    assert [m.data for m in generate(50, seed=3)] == [m.data for m in box[:50]]
    assert mailgen.make_message(3, 123).data == box[123].data


def test_every_kind_and_size_class(box):
    kinds = {m.kind for m in box}
    assert kinds == {"plain", "alternative", "related", "mixed", "large", "forward"}
    assert any(m.size > 100 * 1024 for m in box)
    assert all(m.size < 3 * 1024 * 1024 for m in box)
    assert [m.internaldate for m in box] == sorted({m.internaldate for m in box})  # strictly increasing


def test_wire_form(box):
    for m in box:
        assert b"\n" not in m.data.replace(b"\r\n", b""), m.index  # CRLF only
        assert b"\r" not in m.data.replace(b"\r\n", b""), m.index
        assert max(len(ln) for ln in m.data.split(b"\r\n")) <= 998, m.index
        head = m.data.split(b"\r\n\r\n", 1)[0]
        assert all(len(ln) <= 78 for ln in head.split(b"\r\n")), m.index  # folded headers
        assert re.fullmatch(rb"[\x20-\x7e\r\n\t]*", head), m.index  # 8-bit only in bodies


def _decoded_text(part: email.message.EmailMessage) -> str:
    payload = part.get_payload(decode=True)
    return payload.decode(part.get_content_charset() or "us-ascii")


def test_parses_and_planted_words_are_where_expected(box):
    found = {SUBJECT_WORD: 0, TEXT_WORD: 0}
    encoded_subjects = 0
    for m in box:
        msg = email.message_from_bytes(m.data, policy=email.policy.default)
        assert not msg.defects, (m.index, msg.defects)
        assert msg["Message-ID"] == m.message_id
        assert "bench@example.org" in str(msg["To"])
        subject = str(msg["Subject"])
        encoded_subjects += "=?" in m.data.split(b"\r\n\r\n", 1)[0].decode().split("Subject:", 1)[1][:200]
        texts = []
        for part in msg.walk():
            assert not part.defects, (m.index, part.defects)
            if part.get_content_maintype() == "text":
                texts.append(_decoded_text(part))
            if part.get_content_type() == "message/rfc822":
                inner = part.get_payload()[0]
                assert inner["Message-ID"] and inner["Subject"]
        assert texts, m.index
        has_subject = SUBJECT_WORD.lower() in subject.lower()
        has_text = TEXT_WORD in "\n".join(texts)
        assert has_subject == mailgen.subject_planted(m.index), m.index
        assert has_text == mailgen.text_planted(m.index), m.index
        assert (SUBJECT_WORD in m.planted) == has_subject
        found[SUBJECT_WORD] += has_subject
        found[TEXT_WORD] += has_text
    hits = expected_hits(N)
    assert found == {k: hits[k] for k in found}
    assert hits[SUBJECT_WORD] == 8 and hits[TEXT_WORD] == 20 and hits[RARE_WORD] == 0
    assert encoded_subjects > N // 20  # RFC 2047 words are common, not an exception


def test_rare_word_and_counts():
    m = mailgen.make_message(3, 1234)
    assert RARE_WORD in m.planted and TEXT_WORD not in m.planted
    msg = email.message_from_bytes(m.data, policy=email.policy.default)
    assert any(RARE_WORD in _decoded_text(p) for p in msg.walk() if p.get_content_maintype() == "text")
    assert expected_hits(10_000) == {SUBJECT_WORD: 200, TEXT_WORD: 500, RARE_WORD: 4}


def test_encoded_words_round_trip():
    from email.header import decode_header, make_header
    for text in ("Grüße aus Zürich " * 6, "東京 Москва Ελλάδα €uro", "plain ascii but long " * 8):
        for charset, enc in (("UTF-8", "B"), ("UTF-8", "Q"), ("ISO-8859-1", "Q")):
            try:
                text.encode(charset)
            except UnicodeEncodeError:
                continue
            words = mailgen.encoded_words(text, charset, enc)
            assert all(len(w) <= 75 for w in words)
            assert str(make_header(decode_header(" ".join(words)))) == text


def test_writers(tmp_path):
    stats = mailgen.write_maildir(generate(5, seed=3), tmp_path / "Maildir", seed=3)
    files = sorted((tmp_path / "Maildir" / "cur").iterdir())
    assert stats["messages"] == 5 and len(files) == 5
    assert sum(f.stat().st_size for f in files) == stats["bytes"]
    first = mailgen.make_message(3, 0)
    assert files[0].read_bytes() == first.data and int(files[0].stat().st_mtime) == first.internaldate
    mbox = mailgen.write_mbox(generate(5, seed=3), tmp_path / "box.mbox")
    assert mbox["messages"] == 5
    assert (tmp_path / "box.mbox").read_bytes().count(b"\r\nFrom MAILER-DAEMON ") == 4
