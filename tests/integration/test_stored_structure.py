"""ENVELOPE / BODY / BODYSTRUCTURE are computed once, at delivery, and kept in the index (the `msgmeta` and
`msgwire` records of the message's blob id); IMAP FETCH sends the stored wire bytes as they are.

The expected values below are written out by hand from RFC 3501 §7.4.2 (RFC 9051 §7.5.2), not produced
by fastmail's own functions, with the choices fastmail.store.mime documents: encoded-words stay as written
(clients decode them), a display name loses its quotes (a quoted-pair keeps its character, re-escaped on
the wire), Sender and Reply-To default to From, a group is (NIL NIL "name" NIL) ... (NIL NIL NIL NIL), the
CRLF before a boundary line belongs to the boundary (RFC 2046 §5.1.1), and a part's line count is the
number of LF bytes in its body (Dovecot's count)."""

from __future__ import annotations

import smtplib

import orjson
import pytest

from fastmail.store.store import Store

from .conftest import PASSWORDS, make_server
from .imapwire import RawIMAP
from .wire import HOST, TIMEOUT

pytestmark = pytest.mark.integration

SUBJECT = "=?UTF-8?B?w4RwZmVs?= und =?iso-8859-1?q?Birnen?="
MESSAGE = (
    "From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@remote.test>\r\n"
    'To: "Alice \\"Al\\" A." <alice@example.org>, bob@example.org\r\n'
    "Cc: team: carol@example.org;\r\n"
    f"Subject: {SUBJECT}\r\n"
    "Date: Wed, 03 Jan 2024 09:30:00 +0100\r\n"
    "Message-ID: <multi.1@remote.test>\r\n"
    "In-Reply-To: <parent@remote.test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="=_outer"\r\n'
    "\r\n"
    "This is a multi-part message in MIME format.\r\n"
    "--=_outer\r\n"
    "Content-Type: multipart/alternative; boundary=inner\r\n"
    "\r\n"
    "--inner\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Gr=C3=BC=C3=9Fe\r\n"  # 15 + 2
    "zweite Zeile\r\n"  # 12 (this CRLF is the boundary's)
    "--inner\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "\r\n"
    "<p>Gr&uuml;&szlig;e</p>\r\n"  # 23
    "--inner--\r\n"
    "--=_outer\r\n"
    'Content-Type: application/pdf; name="=?utf-8?q?R=C3=A9sum=C3=A9?=.pdf"\r\n'
    'Content-Disposition: attachment; filename="resume.pdf"; size=12\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    "Content-ID: <att1@remote.test>\r\n"
    "Content-Description: the CV\r\n"
    "Content-Language: de, en\r\n"
    "\r\n"
    "JVBERi0xLjQKJeLj\r\n"  # 16
    "--=_outer--\r\n"
).encode()

JOERG = b'(("=?utf-8?q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" "remote.test"))'
ENVELOPE = (
    b'("Wed, 03 Jan 2024 09:30:00 +0100" "=?UTF-8?B?w4RwZmVs?= und =?iso-8859-1?q?Birnen?=" '
    + JOERG + b" " + JOERG + b" " + JOERG + b" "  # from, sender, reply-to
    + b'(("Alice \\"Al\\" A." NIL "alice" "example.org")(NIL NIL "bob" "example.org")) '  # to
    + b'((NIL NIL "team" NIL)(NIL NIL "carol" "example.org")(NIL NIL NIL NIL)) '  # cc: a group
    + b'NIL "<parent@remote.test>" "<multi.1@remote.test>")'  # bcc, in-reply-to, message-id
)
PLAIN = b'"text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 29 1'
HTML = b'"text" "html" ("charset" "utf-8") NIL NIL "7bit" 23 0'
PDF = b'"application" "pdf" ("name" "=?utf-8?q?R=C3=A9sum=C3=A9?=.pdf") "<att1@remote.test>" "the CV" "base64" 16'
BODY = b"(((" + PLAIN + b")(" + HTML + b') "alternative")(' + PDF + b') "mixed")'
BODYSTRUCTURE = (
    b"(((" + PLAIN + b" NIL NIL NIL NIL)(" + HTML + b" NIL NIL NIL NIL)"
    b' "alternative" ("boundary" "inner") NIL NIL NIL)'
    b"(" + PDF + b' NIL ("attachment" ("filename" "resume.pdf" "size" "12")) ("de" "en") NIL)'
    b' "mixed" ("boundary" "=_outer") NIL NIL NIL)'
)


def _stored(data_dir) -> tuple[bytes, dict, bytes]:
    """(blob id, msgmeta record, msgwire record) of alice's INBOX message 1, read from the index."""
    store = Store(data_dir)
    try:
        user = store.get_user("alice@example.org")["id"]
        (msg,) = store.list_messages(store.mailbox_id(user, "INBOX"))
        with store.read() as txn:
            meta = txn.get(msg["blob"], db=store.db["msgmeta"])
            wire = txn.get(msg["blob"], db=store.db["msgwire"])
        return msg["blob"], orjson.loads(meta), wire
    finally:
        store.close()


def _split_wire(wire: bytes) -> tuple[bytes, bytes, bytes]:
    """The wire record: version 1, U32 BE lengths of ENVELOPE and BODY, then the three values back to back."""
    assert wire[0] == 1
    env_len = int.from_bytes(wire[1:5], "big")
    body_len = int.from_bytes(wire[5:9], "big")
    rest = wire[9:]
    return rest[:env_len], rest[env_len:env_len + body_len], rest[env_len + body_len:]


def _fetch(srv, items: str) -> bytes:
    c = RawIMAP(srv.ports["imap"])
    try:
        _, done = c.cmd("L", f"LOGIN alice@example.org {PASSWORDS['alice@example.org']}")
        assert done.startswith(b"L OK"), done
        _, done = c.cmd("S", "EXAMINE INBOX")
        assert done.startswith(b"S OK"), done
        untagged, done = c.cmd("F", f"FETCH 1 ({items})")
        assert done.startswith(b"F OK"), done
        (line,) = untagged
        return line
    finally:
        c.close()


def test_structure_is_stored_at_delivery_and_fetch_sends_it(tmp_path):
    srv = make_server(tmp_path, workers=1)
    srv.start()
    try:
        with smtplib.SMTP(HOST, srv.ports["smtp"], timeout=TIMEOUT) as s:
            s.sendmail("joerg@remote.test", ["alice@example.org"], MESSAGE)

        blob, meta, wire = _stored(srv.data)
        assert meta["v"] == 1 and meta["envelope"][1] == SUBJECT  # the parsed values, kept as JSON
        assert _split_wire(wire) == (ENVELOPE, BODY, BODYSTRUCTURE)  # and their wire form

        assert _fetch(srv, "ENVELOPE") == b"* 1 FETCH (ENVELOPE " + ENVELOPE + b")"
        assert _fetch(srv, "BODY") == b"* 1 FETCH (BODY " + BODY + b")"
        assert _fetch(srv, "BODYSTRUCTURE") == b"* 1 FETCH (BODYSTRUCTURE " + BODYSTRUCTURE + b")"
        assert _fetch(srv, "UID ENVELOPE BODYSTRUCTURE") == (
            b"* 1 FETCH (UID 1 ENVELOPE " + ENVELOPE + b" BODYSTRUCTURE " + BODYSTRUCTURE + b")")

        # FETCH copies the stored record, it does not parse the message again: change the stored bytes
        # (same lengths) and the next FETCH sends the change.
        changed = wire.replace(b" und ", b" UND ")
        assert changed.count(b" UND ") == 1  # in the ENVELOPE only
        store = Store(srv.data)
        try:
            with store.write() as txn:
                txn.put(blob, changed, db=store.db["msgwire"])
        finally:
            store.close()
        assert _fetch(srv, "ENVELOPE") == b"* 1 FETCH (ENVELOPE " + ENVELOPE.replace(b" und ", b" UND ") + b")"
        assert _fetch(srv, "BODYSTRUCTURE") == b"* 1 FETCH (BODYSTRUCTURE " + BODYSTRUCTURE + b")"
    finally:
        srv.stop()
        srv.kill_tree()

