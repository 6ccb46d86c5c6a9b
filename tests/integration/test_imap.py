"""IMAP against the real server (two workers) with Python's imaplib and a raw client: login, mailboxes,
SELECT/EXAMINE, every FETCH item, STORE, SEARCH, COPY/MOVE/EXPUNGE, APPEND, UID variants, IDLE hearing of
SMTP deliveries and of other sessions, STARTTLS and implicit TLS, rev1/rev2 differences, CONDSTORE/QRESYNC,
and bad input answered BAD/NO with the session going on."""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
import re
import smtplib
import time

import pytest

from .conftest import Server
from .imapwire import RawIMAP
from .wire import HOST, TIMEOUT, insecure_tls_context, module_server

PASSWORD = "imap-secret"
USERS = [f"u{i}@example.org" for i in range(1, 41)]


def _setup(s: Server) -> None:
    for u in USERS:
        s.cli("user", "add", u, "--password-stdin", input=PASSWORD.encode() + b"\n")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    yield from module_server(tmp_path_factory, "imap", _setup)


_free = list(USERS)


@pytest.fixture
def user() -> str:
    """A user of its own for each test (the server is shared by the module)."""
    return _free.pop(0)


def deliver(srv: Server, to: str, raw: bytes, sender: str = "x@remote.test") -> None:
    with smtplib.SMTP(HOST, srv.ports["smtp"], timeout=TIMEOUT) as s:
        s.sendmail(sender, [to], raw)


def login(srv: Server, user: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4(HOST, srv.ports["imap"], timeout=TIMEOUT)
    assert m.login(user, PASSWORD)[0] == "OK"
    return m


def raw_login(srv: Server, user: str, tls: bool = False) -> RawIMAP:
    c = RawIMAP(srv.ports["imaps" if tls else "imap"], tls=tls)
    _, done = c.cmd("L", f"LOGIN {user} {PASSWORD}")
    assert done.startswith(b"L OK"), done
    return c


def simple(subject: str, body: str = "hello\r\n", date: str = "Mon, 01 Jan 2024 10:00:00 +0000",
           **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (f"From: Sender <x@remote.test>\r\nTo: someone@example.org\r\nSubject: {subject}\r\n"
            f"Date: {date}\r\nMessage-ID: <{subject.replace(' ', '.')}@remote.test>\r\n"
            f"{extra}\r\n{body}").encode()


NESTED = (
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@remote.test>\r\n"
    b"To: a@example.org, \"B, C\" <bc@example.org>\r\n"
    b"Cc: cc@example.org\r\n"
    b"Subject: =?utf-8?b?R3LDvMOfZQ==?= nested\r\n"
    b"Date: Tue, 02 Jan 2024 11:00:00 +0100\r\n"
    b"Message-ID: <nested@remote.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln, findme-qp\r\n"
    b"--outer\r\n"
    b"Content-Type: application/octet-stream; name=\"bin.dat\"\r\n"
    b"Content-Disposition: attachment; filename=\"bin.dat\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECA/8=\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: inner@remote.test\r\n"
    b"Subject: inner subject\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--outer--\r\n"
)


def fetch_one(m: imaplib.IMAP4, what: str, seq: str = "1", uid: bool = False) -> bytes:
    """The whole FETCH response for one message as bytes (literals inline)."""
    typ, data = m.uid("FETCH", seq, what) if uid else m.fetch(seq, what)
    assert typ == "OK", data
    out = b""
    for part in data:
        out += (part[0] + b"\r\n" + part[1]) if isinstance(part, tuple) else part
    return out


# -- login ---------------------------------------------------------------------------------------------


def test_login_authenticate_and_failures(srv, user):
    m = imaplib.IMAP4(HOST, srv.ports["imap"], timeout=TIMEOUT)
    assert {"IMAP4REV1", "IMAP4REV2", "STARTTLS", "AUTH=PLAIN", "SASL-IR", "ID"} <= set(m.capabilities)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(user, "wrong")
    assert m.login(user, PASSWORD)[0] == "OK"
    assert {"UIDPLUS", "MOVE", "CONDSTORE", "QRESYNC", "SPECIAL-USE", "ESEARCH"} <= set(m.capabilities) or \
        "MOVE" in m.capability()[1][0].decode()
    assert m.logout()[0] == "BYE"

    m = imaplib.IMAP4(HOST, srv.ports["imap"], timeout=TIMEOUT)
    typ, _ = m.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
    assert typ == "OK" and m.state == "AUTH"
    m.logout()

    c = RawIMAP(srv.ports["imap"])
    assert c.greeting.startswith(b"* OK [CAPABILITY ")
    ir = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    _, done = c.cmd("a", f"AUTHENTICATE PLAIN {ir}")  # SASL-IR: no continuation round trip
    assert re.match(rb"a OK \[CAPABILITY [^]]*UIDPLUS", done), done
    _, done = c.cmd("b", "LOGIN x y")
    assert done.startswith(b"b BAD"), done  # already authenticated: wrong state
    untagged, done = c.cmd("c", "LOGOUT")
    assert untagged == [b"* BYE Logging out"] and done.startswith(b"c OK")

    c = RawIMAP(srv.ports["imap"])
    c.send(b"a AUTHENTICATE PLAIN\r\n")
    assert c.response() == b"+ "
    c.send(b"*\r\n")
    assert c.response().startswith(b"a BAD")
    _, done = c.cmd("b", "NOOP")
    assert done.startswith(b"b OK")


def test_authenticate_login_mechanism(srv, user):
    m = imaplib.IMAP4(HOST, srv.ports["imap"], timeout=TIMEOUT)
    assert "AUTH=LOGIN" in m.capabilities
    answers = iter([user, PASSWORD])
    typ, _ = m.authenticate("LOGIN", lambda challenge: next(answers).encode())
    assert typ == "OK" and m.state == "AUTH"
    m.logout()

    c = RawIMAP(srv.ports["imap"])
    b64 = lambda s: base64.b64encode(s.encode())  # noqa: E731
    c.send(b"a AUTHENTICATE LOGIN " + b64(user) + b"\r\n")  # SASL-IR: the user name
    assert c.response() == b"+ UGFzc3dvcmQ6"  # "Password:"
    c.send(b64("wrong") + b"\r\n")
    assert c.response() == b"a NO [AUTHENTICATIONFAILED] Authentication failed"
    c.send(b"b AUTHENTICATE LOGIN\r\n")
    assert c.response() == b"+ VXNlcm5hbWU6"  # "Username:"
    c.send(b"*\r\n")
    assert c.response() == b"b BAD Authentication cancelled"
    c.send(b"c AUTHENTICATE LOGIN\r\n")
    assert c.response() == b"+ VXNlcm5hbWU6"
    c.send(b"%%%\r\n")
    assert c.response() == b"c BAD Invalid base64"
    _, done = c.cmd("d", "AUTHENTICATE DIGEST-MD5")
    assert done == b"d NO Unsupported authentication mechanism"
    c.send(b"e AUTHENTICATE LOGIN\r\n")
    assert c.response() == b"+ VXNlcm5hbWU6"
    c.send(b64(user) + b"\r\n")
    assert c.response() == b"+ UGFzc3dvcmQ6"
    c.send(b64(PASSWORD) + b"\r\n")
    assert re.match(rb"e OK \[CAPABILITY [^]]*MULTIAPPEND", c.response())


def test_starttls_and_implicit_tls(srv, user):
    m = imaplib.IMAP4(HOST, srv.ports["imap"], timeout=TIMEOUT)
    assert m.starttls(ssl_context=insecure_tls_context())[0] == "OK"
    assert "STARTTLS" not in m.capabilities
    assert m.login(user, PASSWORD)[0] == "OK"
    assert m.select("INBOX")[0] == "OK"
    m.logout()

    m = imaplib.IMAP4_SSL(HOST, srv.ports["imaps"], ssl_context=insecure_tls_context(), timeout=TIMEOUT)
    assert "STARTTLS" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
    assert m.login(user, PASSWORD)[0] == "OK"
    assert m.list()[0] == "OK"
    m.logout()


def test_starttls_discards_plaintext_injection(srv, user):
    c = RawIMAP(srv.ports["imap"])
    c.send(b"a STARTTLS\r\nb LOGIN injected x\r\n")
    assert c.response().startswith(b"a OK")
    c.starttls()
    _, done = c.cmd("c", "CAPABILITY")  # the injected LOGIN was dropped: no "b" response comes first
    assert done.startswith(b"c OK")
    _, done = c.cmd("d", f"LOGIN {user} {PASSWORD}")
    assert done.startswith(b"d OK")


# -- mailboxes -----------------------------------------------------------------------------------------


def test_list_create_rename_delete_subscribe(srv, user):
    m = login(srv, user)
    typ, data = m.list()
    listing = {line.rsplit(b' "/" ', 1)[1].strip(b'"'): line for line in data}
    assert set(listing) == {b"INBOX", b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive"}
    assert b"\\Sent" in listing[b"Sent"] and b"\\HasNoChildren" in listing[b"INBOX"]

    assert m.create("Projects/2024/Q1")[0] == "OK"
    typ, data = m.create("Projects/2024/Q1")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    typ, data = m.list('""', "Projects/%")
    assert data == [b'(\\HasChildren) "/" "Projects/2024"']
    typ, data = m.list("Projects/", "*")
    assert [d.rsplit(b" ", 1)[1] for d in data] == [b'"Projects/2024"', b'"Projects/2024/Q1"']

    assert m.rename("Projects", "Work")[0] == "OK"
    typ, data = m.list('""', "Work*")
    assert len(data) == 3 and m.list('""', "Projects*")[1] == [None]
    typ, data = m.rename("Nope", "Other")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    assert m.delete("Work/2024/Q1")[0] == "OK"
    typ, data = m.delete("INBOX")
    assert typ == "NO" and b"[CANNOT]" in data[0]

    assert m.unsubscribe("Junk")[0] == "OK"
    typ, data = m.lsub()
    assert b'"Junk"' not in b"".join(data) and b'"Sent"' in b"".join(data)
    assert m.subscribe("Junk")[0] == "OK"

    typ, data = m._simple_command("LIST", "(SPECIAL-USE)", '""', "*")
    assert typ == "OK"
    specials = m.untagged_responses.pop("LIST")
    assert len(specials) == 5 and all(re.search(rb"\\(Sent|Drafts|Trash|Junk|Archive)", s) for s in specials)

    typ, _ = m._simple_command("LIST", '""', "%", "RETURN", "(SUBSCRIBED STATUS (MESSAGES UIDNEXT SIZE))")
    assert typ == "OK"
    statuses = m.untagged_responses.pop("STATUS")
    assert b'"INBOX" (MESSAGES 0 UIDNEXT 1 SIZE 0)' in statuses
    assert all(b"\\Subscribed" in line for line in m.untagged_responses.pop("LIST"))

    typ, data = m.status("INBOX", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY DELETED SIZE HIGHESTMODSEQ)")
    assert typ == "OK" and re.match(rb'"INBOX" \(MESSAGES 0 UNSEEN 0 UIDNEXT 1 UIDVALIDITY \d+ DELETED 0 '
                                    rb"SIZE 0 HIGHESTMODSEQ \d+\)", data[0]), data
    m.logout()


def test_delete_with_children_leaves_a_noselect_name(srv, user):
    """RFC 9051 §6.3.4: DELETE of a mailbox with children removes its messages and leaves a \\Noselect name
    while children exist; DELETE of a \\Noselect name with children is NO [INUSE], without them it goes."""
    deliver(srv, user, simple("in parent"))
    c = raw_login(srv, user)
    assert c.cmd("a", "CREATE Parent/Kid")[1] == b"a OK Completed"
    c.cmd("b", "SELECT INBOX")
    assert c.cmd("c", "COPY 1 Parent")[1].startswith(b"c OK [COPYUID ")
    c.cmd("d", "UNSELECT")
    watcher = raw_login(srv, user)
    watcher.cmd("s", "SELECT Parent")
    assert c.cmd("e", "DELETE Parent")[1] == b"e OK Completed"
    untagged, _ = watcher.cmd("n", "NOOP")  # the other session learns its mailbox is gone
    assert b"* 1 EXPUNGE" in untagged or any(line.startswith(b"* BYE") for line in untagged), untagged
    untagged, done = c.cmd("f", 'LIST "" "Parent*"')
    assert untagged == [b'* LIST (\\Noselect \\HasChildren) "/" "Parent"',
                        b'* LIST (\\HasNoChildren) "/" "Parent/Kid"']
    assert c.cmd("g", "SELECT Parent")[1] == b"g NO [NONEXISTENT] No such mailbox"
    assert c.cmd("h", "STATUS Parent (MESSAGES)")[1] == b"h NO [NONEXISTENT] No such mailbox"
    assert c.cmd("i", b"APPEND Parent {3+}\r\nabc")[1] == b"i NO [TRYCREATE] No such mailbox"
    assert c.cmd("j", "DELETE Parent")[1] == b"j NO [INUSE] Mailbox has children"
    assert c.cmd("k", "DELETE Parent/Kid")[1] == b"k OK Completed"
    untagged, _ = c.cmd("l", 'LIST "" "Parent*"')
    assert untagged == [b'* LIST (\\Noselect \\HasNoChildren) "/" "Parent"']
    assert c.cmd("m", "DELETE Parent")[1] == b"m OK Completed"
    assert c.cmd("n", 'LIST "" "Parent*"')[0] == []
    assert c.cmd("o", "DELETE Parent")[1] == b"o NO [NONEXISTENT] No such mailbox"
    # CREATE over a \\Noselect name makes it a mailbox again (a new one)
    c.cmd("p", "CREATE Old/Kid")
    validity = re.search(rb"UIDVALIDITY (\d+)", b" ".join(c.cmd("q", "STATUS Old (UIDVALIDITY)")[0])).group(1)
    c.cmd("r", "DELETE Old")
    assert c.cmd("s", "CREATE Old")[1] == b"s OK Completed"
    untagged, _ = c.cmd("t", "STATUS Old (UIDVALIDITY MESSAGES)")
    assert untagged[0].endswith(b" MESSAGES 0)") and b"UIDVALIDITY %s " % validity not in untagged[0]
    untagged, _ = c.cmd("u", "STATUS INBOX (MESSAGES)")
    assert untagged == [b'* STATUS "INBOX" (MESSAGES 1)']


def test_subscribe_names_that_are_not_mailboxes(srv, user):
    """SUBSCRIBE of a name with no mailbox is allowed and a subscription outlives its mailbox (RFC 9051
    §6.3.7); LIST (SUBSCRIBED) shows such names \\NonExistent, LSUB \\Noselect; RECURSIVEMATCH gives
    CHILDINFO (RFC 5258 §3.5)."""
    m = login(srv, user)
    assert m.subscribe("lists/ietf")[0] == "OK"
    typ, data = m.lsub('""', "lists*")
    assert data == [b'(\\Noselect) "/" "lists/ietf"']
    typ, data = m.lsub('""', "%")
    assert b'(\\Noselect) "/" "lists"' in data
    assert m.list('""', "lists*")[1] == [None]
    typ, _ = m._simple_command("LIST", "(SUBSCRIBED RECURSIVEMATCH)", '""', "%")
    assert typ == "OK"
    listing = m.untagged_responses.pop("LIST")
    assert b'(\\NonExistent) "/" "lists" ("CHILDINFO" ("SUBSCRIBED"))' in listing
    assert b'(\\HasNoChildren \\Subscribed) "/" "INBOX"' in listing
    assert m.create("Gone")[0] == "OK" and m.delete("Gone")[0] == "OK"
    typ, _ = m._simple_command("LIST", "(SUBSCRIBED)", '""', "Gone")
    assert m.untagged_responses.pop("LIST") == [b'(\\NonExistent \\Subscribed) "/" "Gone"']
    assert m.unsubscribe("Gone")[0] == "OK" and m.unsubscribe("Gone")[0] == "OK"
    assert m.lsub('""', "Gone")[1] == [None]
    typ, data = m.subscribe('"bad//name"')
    assert typ == "NO" and b"[CANNOT]" in data[0]
    with pytest.raises(imaplib.IMAP4.error, match="Unknown LIST selection option"):
        m._simple_command("LIST", "(BOGUS)", '""', "*")
    m.logout()


def test_rename_inbox_moves_its_messages(srv, user):
    for i in range(2):
        deliver(srv, user, simple(f"r{i}"))
    m = login(srv, user)
    assert m.rename("INBOX", "Saved")[0] == "OK"
    assert m.select("INBOX")[1] == [b"0"]
    assert m.select("Saved")[1] == [b"2"]
    m.logout()


def test_select_examine_counts(srv, user):
    for i in range(3):
        deliver(srv, user, simple(f"count {i}"))
    m = login(srv, user)
    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"3"]
    assert m.untagged_responses["UIDNEXT"] == [b"4"]
    assert m.untagged_responses["UNSEEN"] == [b"1"]
    assert m.untagged_responses["READ-WRITE"] == [b""]
    assert m.store("2", "+FLAGS", "(\\Seen)")[0] == "OK"
    m.close()
    typ, data = m.select("inbox", readonly=True)  # INBOX in any case
    assert typ == "OK" and data == [b"3"] and "READ-ONLY" in m.untagged_responses
    typ, data = m.store("1", "+FLAGS", "(\\Seen)")
    assert typ == "NO" and b"READ-ONLY" in data[0]
    assert fetch_one(m, "(FLAGS)", "1:3") == b"1 (FLAGS ())2 (FLAGS (\\Seen))3 (FLAGS ())"
    assert fetch_one(m, "(BODY[TEXT])", "1").endswith(b"hello\r\n)")
    assert fetch_one(m, "(FLAGS)", "1") == b"1 (FLAGS ())"  # EXAMINE: no implicit \Seen
    typ, data = m.status("INBOX", "(MESSAGES UNSEEN)")
    assert data == [b'"INBOX" (MESSAGES 3 UNSEEN 2)']
    m.logout()


# -- FETCH ---------------------------------------------------------------------------------------------


def test_fetch_every_item(srv, user):
    deliver(srv, user, NESTED)
    m = login(srv, user)
    m.select("INBOX")
    whole = fetch_one(m, "(BODY.PEEK[])")
    raw = whole.split(b"\r\n", 1)[1][:-1]  # the literal, without the closing ")"
    assert raw.endswith(NESTED) and raw.startswith(b"Received: ")  # our trace header, then the message
    assert fetch_one(m, "(RFC822.SIZE)") == b"1 (RFC822.SIZE %d)" % len(raw)
    assert fetch_one(m, "(FLAGS)") == b"1 (FLAGS ())"  # PEEK left it unseen

    env = fetch_one(m, "(ENVELOPE)")
    assert env == (b'1 (ENVELOPE ("Tue, 02 Jan 2024 11:00:00 +0100" "=?utf-8?b?R3LDvMOfZQ==?= nested" '
                   b'(("=?utf-8?q?J=C3=B6rg?=" NIL "jorg" "remote.test")) '
                   b'(("=?utf-8?q?J=C3=B6rg?=" NIL "jorg" "remote.test")) '
                   b'(("=?utf-8?q?J=C3=B6rg?=" NIL "jorg" "remote.test")) '
                   b'((NIL NIL "a" "example.org")("B, C" NIL "bc" "example.org")) '
                   b'((NIL NIL "cc" "example.org")) NIL NIL "<nested@remote.test>"))')
    bs = fetch_one(m, "(BODYSTRUCTURE)")
    assert bs.startswith(b'1 (BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" ')
    assert b'("application" "octet-stream" ("name" "bin.dat") NIL NIL "base64" 8 NIL ("attachment" ' in bs
    assert b'("message" "rfc822" NIL NIL NIL "7bit" ' in bs and b'"inner subject"' in bs
    assert b' "mixed" ("boundary" "outer") NIL NIL NIL))' in bs
    body = fetch_one(m, "(BODY)")
    assert body.startswith(b'1 (BODY (("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" ')
    assert b"attachment" not in body  # BODY has no extension data

    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    head, text = raw.split(b"\r\n\r\n", 1)
    assert fetch_one(m, "(BODY.PEEK[HEADER])") == b"1 (BODY[HEADER] {%d}\r\n%s\r\n\r\n)" % (len(head) + 4, head)
    assert fetch_one(m, "(BODY.PEEK[TEXT])") == b"1 (BODY[TEXT] {%d}\r\n%s)" % (len(text), text)
    fields = b"Cc: cc@example.org\r\nSubject: =?utf-8?b?R3LDvMOfZQ==?= nested\r\n\r\n"
    assert fetch_one(m, "(BODY.PEEK[HEADER.FIELDS (Subject cc)])") == (
        b"1 (BODY[HEADER.FIELDS (Subject cc)] {%d}\r\n%s)" % (len(fields), fields))
    notfields = fetch_one(m, "(BODY.PEEK[HEADER.FIELDS.NOT (Received Subject)])")
    assert b"Subject:" not in notfields and b"\r\nFrom: " in notfields and b"Received" not in notfields.split(b"]", 1)[1]
    part1 = b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln, findme-qp"
    assert fetch_one(m, "(BODY.PEEK[1])") == b"1 (BODY[1] {%d}\r\n%s)" % (len(part1), part1)
    mime1 = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    assert fetch_one(m, "(BODY.PEEK[1.MIME])") == b"1 (BODY[1.MIME] {%d}\r\n%s)" % (len(mime1), mime1)
    assert fetch_one(m, "(BODY.PEEK[2])") == b"1 (BODY[2] {8}\r\nAAECA/8=)"
    assert fetch_one(m, "(BODY.PEEK[3.HEADER.FIELDS (SUBJECT)])") == (
        b"1 (BODY[3.HEADER.FIELDS (SUBJECT)] {26}\r\nSubject: inner subject\r\n\r\n)")
    assert fetch_one(m, "(BODY.PEEK[3.TEXT])") == b"1 (BODY[3.TEXT] {10}\r\ninner body)"
    assert fetch_one(m, "(BODY.PEEK[3.1])") == b"1 (BODY[3.1] {10}\r\ninner body)"
    assert fetch_one(m, "(BODY.PEEK[9])") == b"1 (BODY[9] NIL)"
    assert fetch_one(m, "(BODY.PEEK[TEXT]<0.8>)") == b"1 (BODY[TEXT]<0> {8}\r\npreamble)"
    assert fetch_one(m, "(BODY.PEEK[]<5.4>)") == b"1 (BODY[]<5> {4}\r\n%s)" % raw[5:9]
    assert fetch_one(m, "(BINARY.PEEK[2])") == b"1 (BINARY[2] ~{5}\r\n\x00\x01\x02\x03\xff)"  # NUL: literal8
    assert fetch_one(m, "(BINARY.SIZE[1])") == b"1 (BINARY.SIZE[1] %d)" % len("Grüße aus Köln, findme-qp".encode())
    assert fetch_one(m, "(BINARY.PEEK[1])").endswith("Grüße aus Köln, findme-qp)".encode())
    assert fetch_one(m, "(RFC822.HEADER)") == b"1 (RFC822.HEADER {%d}\r\n%s\r\n\r\n)" % (len(head) + 4, head)
    modseq = fetch_one(m, "(MODSEQ)")
    assert re.fullmatch(rb"1 \(MODSEQ \(\d+\)\)", modseq)
    assert re.fullmatch(rb'1 \(INTERNALDATE "\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d \+0000"\)',
                        fetch_one(m, "(INTERNALDATE)"))
    assert fetch_one(m, "(UID)") == b"1 (UID 1)"
    fast = fetch_one(m, "FAST")
    assert b"FLAGS ()" in fast and b"RFC822.SIZE" in fast and b"INTERNALDATE" in fast

    # implicit \Seen: RFC822.TEXT sets it and FLAGS comes along
    out = fetch_one(m, "(RFC822.TEXT)")
    assert out.startswith(b"1 (RFC822.TEXT {%d}\r\n%s" % (len(text), text)) and b"FLAGS (\\Seen)" in out
    assert fetch_one(m, "(FLAGS)") == b"1 (FLAGS (\\Seen))"
    assert fetch_one(m, "(RFC822)") == b"1 (RFC822 {%d}\r\n%s)" % (len(raw), raw)
    assert msg["Message-ID"] == "<nested@remote.test>"
    assert fetch_one(m, "(UID FLAGS)", "1", uid=True) == b"1 (UID 1 FLAGS (\\Seen))"
    m.logout()


# -- STORE, SEARCH -------------------------------------------------------------------------------------


def test_store_and_search(srv, user):
    deliver(srv, user, simple("alpha report", "the quick brown fox\r\n", Cc="carol@remote.test"))
    deliver(srv, user, simple("beta", "lazy dog\r\n"))
    deliver(srv, user, NESTED)
    deliver(srv, user, simple("gamma", "x" * 5000 + "\r\n", date="Fri, 05 Jul 2024 10:00:00 +0000"))
    m = login(srv, user)
    m.select("INBOX")
    assert m.store("1", "+FLAGS", "(\\Flagged $Work)")[1] == [b"1 (FLAGS (\\Flagged $Work))"]
    assert m.store("1", "-FLAGS", "($Work)")[1] == [b"1 (FLAGS (\\Flagged))"]
    assert m.store("2", "FLAGS", "(\\Seen \\Answered)")[1] == [b"2 (FLAGS (\\Seen \\Answered))"]
    typ, data = m.store("3", "+FLAGS.SILENT", "(\\Deleted)")
    assert typ == "OK" and data == [None]
    with pytest.raises(imaplib.IMAP4.error, match="Invalid system flag"):
        m.store("1", "+FLAGS", "(\\Recent)")

    def search(*keys: str) -> list[int]:
        typ, data = m.search(None, *keys)
        assert typ == "OK", data
        return [int(x) for x in data[0].split()]

    assert search("ALL") == [1, 2, 3, 4]
    assert search("FLAGGED") == [1]
    assert search("UNSEEN") == [1, 3, 4]
    assert search("SEEN", "ANSWERED") == [2]
    assert search("DELETED") == [3] and search("UNDELETED") == [1, 2, 4]
    assert search("SUBJECT", "ALPHA") == [1]
    assert search("FROM", "x@remote") == [1, 2, 4]
    assert search("CC", "carol") == [1] and search("TO", "bc@example") == [3]
    assert search("HEADER", "Message-ID", "beta@") == [2]
    assert search("BODY", "brown") == [1] and search("BODY", "findme-qp") == [3]
    assert search("TEXT", "lazy") == [2] and search("TEXT", "gamma") == [4]
    assert search("LARGER", "3000") == [4] and search("SMALLER", "3000") == [1, 2, 3]
    assert search("NOT", "FLAGGED") == [2, 3, 4]
    assert search("OR", "FLAGGED", "ANSWERED") == [1, 2]
    assert search("(OR FLAGGED ANSWERED)", "SEEN") == [2]
    assert search("2:3") == [2, 3] and search("UID", "4:*") == [4]
    assert search("SENTBEFORE", "1-Feb-2024") == [1, 2, 3] and search("SENTON", "5-Jul-2024") == [4]
    assert search("SENTSINCE", "3-Jan-2024") == [4]
    today = time.strftime("%d-%b-%Y", time.gmtime())
    assert search("SINCE", today) == [1, 2, 3, 4] and search("BEFORE", "1-Jan-2000") == []
    assert search("KEYWORD", "$Work") == [] and search("UNKEYWORD", "$Work") == [1, 2, 3, 4]

    # CHARSET UTF-8 with a literal: decoded header and body text, case-insensitive
    c = raw_login(srv, user)
    c.cmd("s", "SELECT INBOX")
    c.send(b"t SEARCH CHARSET UTF-8 SUBJECT {%d}\r\n" % len("grüße".encode()))
    assert c.response().startswith(b"+ ")
    c.send("grüße".encode() + b"\r\n")
    untagged, done = c.until("t")
    assert untagged == [b"* SEARCH 3"] and done.startswith(b"t OK")
    _, done = c.cmd("u", b"SEARCH CHARSET KOI8-R ALL")
    assert b"[BADCHARSET" in done
    untagged, done = c.cmd("v", "SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
    assert untagged == [b'* ESEARCH (TAG "v") MIN 1 MAX 4 COUNT 3 ALL 1,3:4'], untagged
    untagged, done = c.cmd("w", "UID SEARCH RETURN (SAVE) FLAGGED")
    assert untagged == [] and done.startswith(b"w OK")
    untagged, _ = c.cmd("x", "FETCH $ (UID)")
    assert untagged == [b"* 1 FETCH (UID 1)"]
    untagged, _ = c.cmd("y", "SEARCH BODY KOLN")
    assert untagged == [b"* SEARCH"]  # "Köln" is not "KOLN"
    m.logout()


# -- COPY, MOVE, EXPUNGE -------------------------------------------------------------------------------


def test_copy_move_expunge(srv, user):
    for i in range(5):
        deliver(srv, user, simple(f"cm {i}"))
    m = login(srv, user)
    m.create("Keep")
    m.select("INBOX")
    typ, data = m.copy("2:3", "Keep")
    assert typ == "OK" and re.search(rb"\[COPYUID \d+ 2:3 1:2\]", data[0]), data
    typ, data = m.copy("1", "Nope")
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    typ, data = m._simple_command("MOVE", "4", "Keep")
    assert typ == "OK"
    assert m.untagged_responses.pop("EXPUNGE") == [b"4"]
    assert m.select("INBOX")[1] == [b"4"]
    m.store("1,3", "+FLAGS", "(\\Deleted)")
    typ, data = m.expunge()
    assert typ == "OK" and data == [b"3", b"1"]  # highest first: each number right when it is read
    assert m.select("INBOX")[1] == [b"2"]
    assert fetch_one(m, "(UID)", "1:*") == b"1 (UID 2)2 (UID 5)"
    m.store("1:2", "+FLAGS", "(\\Deleted)")
    typ, data = m.uid("EXPUNGE", "5")
    assert typ == "OK" and m.untagged_responses.pop("EXPUNGE") == [b"2"]
    typ, data = m.uid("MOVE", "2", "Keep")
    assert typ == "OK" and re.search(rb"\[COPYUID \d+ 2 4\]", b" ".join(m.untagged_responses.pop("OK", [])))
    assert m.select("Keep")[1] == [b"4"]
    assert fetch_one(m, "(FLAGS)", "4") == b"4 (FLAGS (\\Deleted))"  # flags travel with a move
    assert m.uid("COPY", "1:2", "INBOX")[0] == "OK"
    m.close()  # CLOSE expunges \Deleted silently
    assert m.select("Keep")[1] == [b"3"]
    m.logout()


def test_append_then_fetch_identical(srv, user):
    m = login(srv, user)
    body = ("From: me@example.org\r\nSubject: draft ü\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Entwurf mit Umlauten: äöü\r\n" + "line\r\n" * 2000).encode()
    date = imaplib.Time2Internaldate(1_700_000_000)
    typ, data = m.append("Drafts", "(\\Draft \\Seen $Pending)", date, body)
    assert typ == "OK" and re.match(rb"\[APPENDUID (\d+) 1\]", data[0]), data
    validity = re.match(rb"\[APPENDUID (\d+) 1\]", data[0]).group(1)
    typ, data = m.append("Nope", None, None, body)
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    m.select("Drafts")
    assert m.untagged_responses["UIDVALIDITY"] == [validity]
    got = fetch_one(m, "(UID FLAGS INTERNALDATE BODY.PEEK[])", "1", uid=True)
    assert got == (b'1 (UID 1 FLAGS (\\Draft \\Seen $Pending) INTERNALDATE "14-Nov-2023 22:13:20 +0000" '
                   b"BODY[] {%d}\r\n%s)" % (len(body), body))
    typ, data = m.status("Drafts", "(MESSAGES UNSEEN SIZE)")
    assert data == [b'"Drafts" (MESSAGES 1 UNSEEN 0 SIZE %d)' % len(body)]
    m.logout()


def test_multiappend_all_or_nothing(srv, user):
    """MULTIAPPEND (RFC 3502): several messages in one APPEND, synchronizing literals and LITERAL+, one
    APPENDUID with a UID set; an IDLE session sees them arrive together; a refusal stores none of them."""
    watcher = raw_login(srv, user)
    untagged, _ = watcher.cmd("c", "CAPABILITY")
    assert b" MULTIAPPEND " in untagged[0]
    watcher.cmd("s", "SELECT INBOX")
    watcher.send(b"i IDLE\r\n")
    assert watcher.response() == b"+ idling"
    c = raw_login(srv, user)
    one, two, three = simple("ma one"), simple("ma two"), simple("ma three")
    c.send(b"a APPEND INBOX (\\Seen) {%d}\r\n" % len(one))
    assert c.response().startswith(b"+ ")
    c.send(one + b' (\\Flagged) "05-Mar-2024 01:02:03 +0100" {%d}\r\n' % len(two))
    assert c.response().startswith(b"+ ")
    c.send(two + b" {%d+}\r\n%s\r\n" % (len(three), three))
    _, done = c.until("a")
    assert re.match(rb"a OK \[APPENDUID \d+ 1:3\]", done), done
    assert watcher.response() == b"* 3 EXISTS"  # one transaction: never 1 or 2 first
    watcher.send(b"DONE\r\n")
    watcher.until("i")
    m = login(srv, user)
    m.select("INBOX", readonly=True)
    typ, data = m.fetch("1:3", "(FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    flat = b"".join(p[0] + p[1] if isinstance(p, tuple) else p for p in data)
    assert flat.count(b"Subject: ma ") == 3 and b"\\Seen" in flat and b"\\Flagged" in flat
    assert b'INTERNALDATE "05-Mar-2024 00:02:03 +0000"' in flat

    # a bad date-time in the second message: BAD, nothing stored
    _, done = c.cmd("b", b"APPEND INBOX {3+}\r\nabc \"not a date\" {3+}\r\nabc")
    assert done == b"b BAD Invalid date-time"
    # an empty second message: NO [CANNOT], nothing stored
    _, done = c.cmd("e", b"APPEND INBOX {3+}\r\nabc {0+}\r\n")
    assert done == b"e NO [CANNOT] Empty message"
    _, done = c.cmd("t", b"APPEND Nope {3+}\r\nabc {3+}\r\nabc")
    assert done == b"t NO [TRYCREATE] No such mailbox"
    # over quota with the second message: NO [OVERQUOTA], the first is not kept either
    used = sum(len(x) for x in (one, two, three))
    srv.cli("user", "quota", user, str(used + 1000))
    try:
        _, done = c.cmd("q", b"APPEND INBOX {600+}\r\n" + b"x" * 600 + b" {600+}\r\n" + b"y" * 600)
        assert done == b"q NO [OVERQUOTA] Quota exceeded"
    finally:
        srv.cli("user", "quota", user, "0")
    untagged, done = c.cmd("s", "STATUS INBOX (MESSAGES UIDNEXT SIZE)")
    assert untagged == [b'* STATUS "INBOX" (MESSAGES 3 UIDNEXT 4 SIZE %d)' % used], untagged
    m.logout()


# -- IDLE and other sessions ---------------------------------------------------------------------------


def _session_pids(srv: Server, kind: str) -> list[int]:
    """Worker pids of the sessions logged so far, in order (kind "imap" or "smtp" listener)."""
    text = srv.log.read_text()
    return [int(p) for p in re.findall(rf"pid=(\d+) logger=\S+ event=connect sid=\S+ listener={kind} ", text)]


def test_idle_hears_smtp_deliveries_from_any_worker(srv, user):
    c = raw_login(srv, user)
    untagged, _ = c.cmd("s", "SELECT INBOX")
    assert b"* 0 EXISTS" in untagged
    imap_pid = None
    c.send(b"i IDLE\r\n")
    assert c.response() == b"+ idling"
    other_worker = False
    for n in range(1, 41):
        deliver(srv, user, simple(f"idle {n}"))
        assert c.response() == b"* %d EXISTS" % n  # pushed while idling, no command needed
        for _ in range(50):  # the log is flushed every 0.2 s
            imap_pids = _session_pids(srv, "imap")
            if imap_pids and len(_session_pids(srv, "smtp")) >= n:
                break
            time.sleep(0.1)
        if imap_pid is None:
            imap_pid = _session_pids(srv, "imap")[-1]
        if _session_pids(srv, "smtp")[-1] != imap_pid:
            other_worker = True
            break
    assert other_worker, "every delivery landed on the IMAP session's worker"
    c.send(b"DONE\r\n")
    untagged, done = c.until("i")
    assert done == b"i OK Idle completed"


def test_idle_hears_flags_and_expunges_of_another_session(srv, user):
    for i in range(3):
        deliver(srv, user, simple(f"other {i}"))
    watcher = raw_login(srv, user)
    watcher.cmd("s", "SELECT INBOX")
    watcher.send(b"i IDLE\r\n")
    assert watcher.response() == b"+ idling"
    m = login(srv, user)
    m.select("INBOX")
    m.store("2", "+FLAGS.SILENT", "(\\Flagged)")
    assert watcher.response() == b"* 2 FETCH (UID 2 FLAGS (\\Flagged))"
    m.store("1", "+FLAGS.SILENT", "(\\Deleted)")
    assert watcher.response() == b"* 1 FETCH (UID 1 FLAGS (\\Deleted))"
    m.expunge()
    assert watcher.response() == b"* 1 EXPUNGE"
    m.logout()
    watcher.send(b"DONE\r\n")
    _, done = watcher.until("i")
    assert done.startswith(b"i OK")
    untagged, _ = watcher.cmd("f", "FETCH 1:* (UID)")
    assert untagged == [b"* 1 FETCH (UID 2)", b"* 2 FETCH (UID 3)"]


def test_no_expunge_during_fetch_store_search(srv, user):
    for i in range(3):
        deliver(srv, user, simple(f"pending {i}"))
    a = raw_login(srv, user)
    a.cmd("s", "SELECT INBOX")
    m = login(srv, user)
    m.select("INBOX")
    m.store("1", "+FLAGS.SILENT", "(\\Deleted)")
    m.expunge()
    untagged, done = a.cmd("f", "FETCH 1:* (UID)")  # expunge pending: numbers stay, no EXPUNGE now
    assert not any(b"EXPUNGE" in u for u in untagged) and done.startswith(b"f NO [EXPUNGEISSUED]")
    assert b"* 2 FETCH (UID 2)" in untagged and b"* 3 FETCH (UID 3)" in untagged
    untagged, _ = a.cmd("g", "SEARCH ALL")  # still numbered as before, the expunged one left out
    assert untagged[-1] == b"* SEARCH 2 3" and not any(b"EXPUNGE" in u for u in untagged)
    untagged, _ = a.cmd("h", "NOOP")
    assert untagged == [b"* 1 EXPUNGE"]
    untagged, _ = a.cmd("i", "FETCH 1:* (UID)")
    assert untagged == [b"* 1 FETCH (UID 2)", b"* 2 FETCH (UID 3)"]
    m.logout()


# -- extensions ----------------------------------------------------------------------------------------


def test_rev2_and_utf8_names(srv, user):
    m = login(srv, user)
    assert m.create("Entw&APw-rfe")[0] == "OK"  # modified UTF-7 from a rev1 client
    typ, data = m.list('""', "Entw*")
    assert data == [b'(\\HasNoChildren) "/" "Entw&APw-rfe"']
    m.logout()
    c = raw_login(srv, user)
    untagged, _ = c.cmd("e", "ENABLE IMAP4rev2")
    assert untagged == [b"* ENABLED IMAP4rev2"]
    untagged, _ = c.cmd("l", 'LIST "" "Entw*"')
    assert untagged == ['* LIST (\\HasNoChildren) "/" "Entwürfe"'.encode()]
    _, done = c.cmd("c", 'CREATE "Größe"'.encode())
    assert done.startswith(b"c OK")
    untagged, _ = c.cmd("s", 'SELECT "Größe"'.encode())
    assert '* LIST () "/" "Größe"'.encode() in untagged and not any(b"RECENT" in u for u in untagged)
    untagged, _ = c.cmd("q", "SEARCH ALL")
    assert untagged == [b'* ESEARCH (TAG "q")']  # rev2: ESEARCH; nothing matched, no ALL
    m = login(srv, user)
    typ, data = m.list('""', "Gr*")
    assert data == [b'(\\HasNoChildren) "/" "Gr&APYA3w-e"']
    m.logout()


def test_condstore_and_qresync(srv, user):
    for i in range(4):
        deliver(srv, user, simple(f"cs {i}"))
    c = raw_login(srv, user)
    untagged, _ = c.cmd("e", "ENABLE QRESYNC")
    assert untagged == [b"* ENABLED QRESYNC"]
    untagged, _ = c.cmd("s", "SELECT INBOX")
    validity = int(next(re.search(rb"UIDVALIDITY (\d+)", u).group(1) for u in untagged if b"UIDVALIDITY" in u))
    modseq = int(next(re.search(rb"HIGHESTMODSEQ (\d+)", u).group(1) for u in untagged if b"HIGHESTMODSEQ" in u))
    untagged, done = c.cmd("a", f"STORE 1 +FLAGS (\\Seen) (UNCHANGEDSINCE {modseq})")
    assert done.startswith(b"a BAD")  # the modifier goes before the item
    untagged, done = c.cmd("b", f"STORE 1,2 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Seen)")
    assert done.startswith(b"b OK") and len(untagged) == 2 and all(b"MODSEQ (" in u for u in untagged)
    untagged, done = c.cmd("d", f"STORE 1,3 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Flagged)")
    assert done.startswith(b"d OK [MODIFIED 1]") and len(untagged) == 1
    assert untagged[0].startswith(b"* 3 FETCH (FLAGS (\\Flagged) MODSEQ (")
    untagged, _ = c.cmd("f", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq})")
    assert [u.split(b" (")[0] for u in untagged] == [b"* 1 FETCH", b"* 2 FETCH", b"* 3 FETCH"]
    c.cmd("g", "STORE 4 +FLAGS.SILENT (\\Deleted)")
    untagged, _ = c.cmd("h", "EXPUNGE")
    assert untagged == [b"* VANISHED 4"]  # QRESYNC: VANISHED instead of EXPUNGE
    c.cmd("u", "UNSELECT")

    # a client that was at `modseq` resynchronises in one SELECT
    untagged, done = c.cmd("q", f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:4))")
    assert done.startswith(b"q OK")
    assert b"* VANISHED (EARLIER) 4" in untagged
    changed = [u for u in untagged if b"FETCH" in u]
    assert [u.split(b" FETCH")[0] for u in changed] == [b"* 1", b"* 2", b"* 3"]
    assert all(re.search(rb"UID \d FLAGS \(.*\) MODSEQ \(\d+\)", u) for u in changed)
    untagged, _ = c.cmd("v", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert untagged[0] == b"* VANISHED (EARLIER) 4" and len(untagged) == 4


def test_id_namespace_enable_unselect_check(srv, user):
    c = raw_login(srv, user)
    untagged, _ = c.cmd("i", 'ID ("name" "test")')
    assert untagged == [b'* ID ("name" "fastmail")']
    untagged, _ = c.cmd("n", "NAMESPACE")
    assert untagged == [b'* NAMESPACE (("" "/")) NIL NIL']
    c.cmd("s", "SELECT INBOX")
    _, done = c.cmd("c", "CHECK")
    assert done.startswith(b"c OK")
    _, done = c.cmd("u", "UNSELECT")
    assert done.startswith(b"u OK")
    _, done = c.cmd("f", "FETCH 1 FLAGS")
    assert done.startswith(b"f BAD")


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_input_is_answered_and_the_session_continues(srv, user):
    c = RawIMAP(srv.ports["imap"])
    checks = [
        (b"a1 FROBNICATE\r\n", b"a1 BAD"),
        (b"a2 SELECT INBOX\r\n", b"a2 BAD"),  # not authenticated yet
        (b"+bad NOOP\r\n", b"* BAD"),  # invalid tag
        (b"a3 LOGIN\r\n", b"a3 BAD"),
    ]
    for data, expect in checks:
        c.send(data)
        assert c.response().startswith(expect), data
    _, done = c.cmd("a4", f"LOGIN {user} {PASSWORD}")
    assert done.startswith(b"a4 OK")
    checks = [
        (b"b1 FETCH 1 FLAGS\r\n", b"b1 BAD"),  # no mailbox selected
        (b"b2 SELECT INBOX\r\n", None),
        (b"b3 FETCH 1:3 (FLAGS\r\n", b"b3 BAD"),  # unbalanced parenthesis
        (b"b4 FETCH 1) FLAGS\r\n", b"b4 BAD"),
        (b"b5 FETCH 0 FLAGS\r\n", b"b5 BAD"),  # invalid sequence set
        (b"b6 FETCH 1:x FLAGS\r\n", b"b6 BAD"),
        (b"b7 FETCH 99 FLAGS\r\n", b"b7 BAD"),  # past the end of an empty mailbox
        (b"b8 STORE 1 +FLAGS (\\Bogus)\r\n", b"b8 BAD"),
        (b"b9 SEARCH FROB\r\n", b"b9 BAD"),
        (b"b10 UID FROB 1\r\n", b"b10 BAD"),
        (b"b11 STATUS INBOX (BOGUS)\r\n", b"b11 BAD"),
        (b"b12 CREATE \"a//b\"\r\n", b"b12 NO [CANNOT]"),
        (b"b13 SELECT Nope\r\n", b"b13 NO [NONEXISTENT]"),
    ]
    for data, expect in checks:
        untagged, done = c.cmd(data.split(b" ", 1)[0].decode(), data.split(b" ", 1)[1][:-2])
        if expect is not None:
            assert done.startswith(expect), (data, done)
    # a literal over the limit is refused before the client sends it: no "+", a tagged NO [TOOBIG]
    c.send(b"c1 APPEND INBOX {99999999999}\r\n")
    assert c.response() == b"c1 NO [TOOBIG] Message too big"
    # a non-synchronizing one is skipped, then the session goes on
    c.send(b"c2 APPEND INBOX {70000+}\r\n" + b"x" * 70000 + b"\r\nc3 NOOP\r\n")
    assert c.response().startswith(b"c2 ")
    assert c.response().startswith(b"c3 OK")
    c.send(b"c4 NOOP " + b"x" * 70000 + b"\r\n")
    assert c.response().startswith(b"c4 BAD [TOOBIG]")
    _, done = c.cmd("c5", "NOOP")
    assert done.startswith(b"c5 OK")


def test_too_many_bad_commands_close_the_session(srv):
    c = RawIMAP(srv.ports["imap"])
    for i in range(19):
        c.send(b"x%d BOGUS\r\n" % i)
        assert c.response().startswith(b"x%d BAD" % i)
    c.send(b"last BOGUS\r\n")
    assert c.response().startswith(b"last BAD")
    assert c.response().startswith(b"* BYE")
    with pytest.raises(EOFError):
        c.response()


def test_tls_required_and_limits(tmp_path):
    """One worker with plaintext logins off, 3 connections per address, 1 session per user, 2 failures."""
    from .conftest import make_server

    s = make_server(tmp_path, workers=1, extra=(
        "[imap]\nplaintext_auth_loopback = false\nmax_connections_per_ip = 3\nmax_sessions_per_user = 1\n"
        "max_login_failures = 2\n"))
    s.start()
    try:
        c = RawIMAP(s.ports["imap"])
        assert b"LOGINDISABLED" in c.greeting and b"AUTH=PLAIN" not in c.greeting
        _, done = c.cmd("a", "LOGIN alice@example.org alice-secret")
        assert done.startswith(b"a NO [PRIVACYREQUIRED]")
        _, done = c.cmd("b", "AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice@example.org\0alice-secret").decode())
        assert done.startswith(b"b NO [PRIVACYREQUIRED]")
        m = imaplib.IMAP4(HOST, s.ports["imap"], timeout=TIMEOUT)
        m.starttls(ssl_context=insecure_tls_context())
        assert "AUTH=PLAIN" in m.capabilities and "LOGINDISABLED" not in m.capabilities
        assert m.login("alice@example.org", "alice-secret")[0] == "OK"
        # a second session of the same user in this worker: [LIMIT]
        m2 = imaplib.IMAP4_SSL(HOST, s.ports["imaps"], ssl_context=insecure_tls_context(), timeout=TIMEOUT)
        with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\]"):
            m2.login("alice@example.org", "alice-secret")
        # a fourth connection from this address: BYE at once
        c4 = RawIMAP(s.ports["imaps"], tls=True)
        assert c4.greeting.startswith(b"* BYE [UNAVAILABLE]")
        with pytest.raises(EOFError):
            c4.response()
        m.logout()
        # two failed logins, then even the right password is refused for a while
        for _ in range(2):
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                m2.login("bob@example.org", "wrong")
        with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
            m2.login("bob@example.org", "bob-secret")
        m2.logout()
    finally:
        s.stop()
        s.kill_tree()


def test_autologout_after_the_idle_timeout(tmp_path):
    """imap.idle_timeout (1 s here; RFC 9051 §5.4 wants at least 30 min in production): an idle session and
    one in IDLE both get BYE and are closed."""
    from .conftest import make_server

    s = make_server(tmp_path, workers=1, extra="[imap]\nidle_timeout = 1.0\n")
    s.start()
    try:
        quiet = RawIMAP(s.ports["imap"])
        c = RawIMAP(s.ports["imap"])
        _, done = c.cmd("l", "LOGIN alice@example.org alice-secret")
        assert done.startswith(b"l OK")
        c.cmd("s", "SELECT INBOX")
        c.send(b"i IDLE\r\n")
        assert c.response() == b"+ idling"
        for conn in (quiet, c):
            assert conn.response() == b"* BYE Autologout; idle for too long"
            with pytest.raises(EOFError):
                conn.response()
        assert "config_below_rfc" in s.log.read_text() and "imap.idle_timeout" in s.log.read_text()
    finally:
        s.stop()
        s.kill_tree()
