"""fastmail.proto.imap without sockets: states, responses and their codes, the session view (EXISTS, EXPUNGE
held back during FETCH/STORE/SEARCH, VANISHED), IDLE wake-ups, literal limits and FETCH back-pressure.
Requests are fulfilled in-process by tests/unit/imap_driver.Driver."""

from __future__ import annotations

import pytest

from fastmail.proto import imap as P
from fastmail.store import mime
from fastmail.store.mailboxes import MailboxError, Mailboxes
from fastmail.store.store import Incoming, Store, new_qid

from .imap_driver import PASSWORD, Driver

RAW = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody text\r\n"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data", map_size=1 << 24)
    s.add_domain("example.org")
    yield s
    s.close()


@pytest.fixture
def user(store):
    return store.add_user("a@example.org", "h")


def deliver(store: Store, user: int, raw: bytes = RAW) -> None:
    store.commit_batch([Incoming(qid=new_qid(), raw=raw, sender="", local=[user], meta=mime.analyze(raw))])


def session(store: Store, user: int, **kw) -> Driver:
    d = Driver(store, {"a@example.org": user}, **kw)
    assert d.cmd(f"L LOGIN a@example.org {PASSWORD}")[-1].startswith(b"L OK")
    return d


def test_greeting_and_capabilities_depend_on_state_and_tls(store, user):
    d = Driver(store, {}, tls_available=True)
    assert d.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert b"STARTTLS" in d.greeting and b"AUTH=PLAIN" in d.greeting and b"UIDPLUS" not in d.greeting
    far = Driver(store, {}, peer="203.0.113.9", tls_available=True)
    assert b"LOGINDISABLED" in far.greeting and b"AUTH=PLAIN" not in far.greeting
    assert far.cmd("a LOGIN a@example.org secret") == [b"a NO [PRIVACYREQUIRED] LOGIN disabled without TLS; use STARTTLS"]
    assert far.cmd("b STARTTLS") == [b"b OK Begin TLS negotiation now"] and far.tls_started == 1
    assert b"LOGINDISABLED" not in far.cmd("c CAPABILITY")[0]
    assert far.cmd("d STARTTLS") == [b"d BAD TLS already active"]


def test_login_failure_and_state_errors(store, user):
    d = Driver(store, {"a@example.org": user})
    assert d.cmd("a LOGIN a@example.org wrong") == [b"a NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert d.cmd("b SELECT INBOX") == [b"b BAD Command not valid in this state"]
    assert d.cmd(f"c LOGIN a@example.org {PASSWORD}")[0].startswith(b"c OK [CAPABILITY ")
    assert d.cmd("d FETCH 1 FLAGS") == [b"d BAD No mailbox selected"]
    assert d.cmd("e AUTHENTICATE PLAIN") == [b"e BAD Command not valid in this state"]


def test_authenticate_plain_with_continuation(store, user):
    import base64

    d = Driver(store, {"a@example.org": user})
    assert d.cmd("a AUTHENTICATE PLAIN") == [b"+ "]
    out = d.cmd(base64.b64encode(f"\0a@example.org\0{PASSWORD}".encode()))
    assert out[-1].startswith(b"a OK [CAPABILITY ")
    d = Driver(store, {"a@example.org": user})
    assert d.cmd("a AUTHENTICATE PLAIN " + base64.b64encode(b"other\0a@example.org\0secret").decode()) == [
        b"a NO [AUTHENTICATIONFAILED] Authentication failed"]  # no proxy authorization
    assert d.cmd("b AUTHENTICATE CRAM-MD5") == [b"b NO Unsupported authentication mechanism"]
    assert d.cmd("c AUTHENTICATE PLAIN !!!") == [b"c BAD Invalid base64"]


def test_preauth_literal_limit_and_append_limit(store, user):
    d = Driver(store, {"a@example.org": user}, limits=P.Limits(max_literal_preauth=100, max_message=70_000))
    assert d.cmd("a LOGIN {1000}") == [b"a BAD [TOOBIG] Literal too big"]
    assert d.cmd("b LOGIN {13}") == [b"+ Ready for literal data"]
    assert d.cmd(f"a@example.org {PASSWORD}")[-1].startswith(b"b OK")
    assert b"APPENDLIMIT=70000" in d.cmd("c CAPABILITY")[0]
    assert d.cmd("d APPEND INBOX {70001}") == [b"d NO [TOOBIG] Message too big"]
    assert d.cmd("e APPEND INBOX {5}") == [b"+ Ready for literal data"]
    assert d.cmd(b"x: y\r\n")[-1].startswith(b"e OK [APPENDUID ")


def test_select_rev1_and_rev2_responses(store, user):
    deliver(store, user)
    deliver(store, user)
    d = session(store, user)
    out = d.cmd("s SELECT INBOX")
    assert b"* 2 EXISTS" in out and b"* 0 RECENT" in out and b"* OK [UNSEEN 1] First unseen" in out
    assert out[-1] == b"s OK [READ-WRITE] Select completed"
    assert d.cmd("e ENABLE IMAP4rev2 CONDSTORE") == [b"* ENABLED IMAP4rev2 CONDSTORE", b"e OK Completed"]
    out = d.cmd("x EXAMINE INBOX")
    assert out[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert not any(b"RECENT" in line or b"UNSEEN" in line for line in out)
    assert b'* LIST () "/" "INBOX"' in out and out[-1] == b"x OK [READ-ONLY] Examine completed"
    assert b"* OK [PERMANENTFLAGS ()] Flags permitted" in out


def test_new_mail_is_announced_at_the_next_command(store, user):
    d = session(store, user)
    d.cmd("s SELECT INBOX")
    deliver(store, user)
    assert d.cmd("n NOOP") == [b"* 1 EXISTS", b"n OK Completed"]
    assert d.cmd("m NOOP") == [b"m OK Completed"]


def test_expunge_is_held_back_during_fetch_store_search(store, user):
    for _ in range(3):
        deliver(store, user)
    a = session(store, user)
    b = session(store, user)
    a.cmd("s SELECT INBOX")
    b.cmd("s SELECT INBOX")
    b.cmd("f STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert b.cmd("e EXPUNGE") == [b"* 2 EXPUNGE", b"e OK Completed"]
    # the numbers stay as they were; the expunged message is left out (RFC 9051 §7.5.1 [EXPUNGEISSUED])
    issued = b"NO [EXPUNGEISSUED] Some messages were expunged by another session"
    assert a.cmd("f FETCH 1:3 (UID)") == [b"* 1 FETCH (UID 1)", b"* 3 FETCH (UID 3)", b"f " + issued]
    assert a.cmd("f2 FETCH 2 (BODY.PEEK[])") == [b"f2 " + issued]
    assert a.cmd("g STORE 3 +FLAGS (\\Seen)") == [b"* 3 FETCH (FLAGS (\\Seen))", b"g OK Completed"]
    assert a.cmd("h SEARCH ALL") == [b"* SEARCH 1 3", b"h OK Completed"]
    assert a.cmd("i UID SEARCH ALL") == [b"* 2 EXPUNGE", b"* SEARCH 1 3", b"i OK Completed"]
    assert b.cmd("n NOOP") == [b"* 2 FETCH (UID 3 FLAGS (\\Seen))", b"n OK Completed"]


def test_own_store_needs_no_change_scan(store, user, monkeypatch):
    """After its own STORE took the mod-sequences right after its view's, a session's next sync reads no
    changes (no scan of a STORE 1:*'s messages again); anything else in between still goes the usual way."""
    for _ in range(5):
        deliver(store, user)
    a = session(store, user)
    b = session(store, user)
    a.cmd("s ENABLE CONDSTORE")
    a.cmd("s SELECT INBOX")
    b.cmd("s SELECT INBOX")
    scans = []
    real = Mailboxes.changes_since
    monkeypatch.setattr(Mailboxes, "changes_since", lambda self, *args: scans.append(args) or real(self, *args))
    top = Mailboxes(store).get(user, "INBOX")["modseq"]
    out = a.cmd("a STORE 1:* +FLAGS (\\Seen)")
    assert out[-1] == b"a OK Completed" and len(out) == 6 and scans == []
    assert a.cmd("n NOOP") == [b"n OK Completed"] and scans == []
    assert a.cmd("f FETCH 5 (MODSEQ)") == [b"* 5 FETCH (MODSEQ (%d))" % (top + 5), b"f OK Completed"]
    # another session's change, then ours: both seen, the other's announced
    b.cmd("b STORE 2 +FLAGS.SILENT (\\Flagged)")
    scans.clear()  # b's own sync read a's changes
    assert a.cmd("c STORE 3 +FLAGS.SILENT (\\Answered)") == [
        b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Flagged) MODSEQ (%d))" % (top + 6), b"c OK Completed"]
    assert a.cmd("m NOOP") == [b"m OK Completed"] and len(scans) == 1
    assert a.cmd("d STORE 4 +FLAGS.SILENT (\\Draft)") == [b"d OK Completed"]
    assert a.cmd("o NOOP") == [b"o OK Completed"] and len(scans) == 1


def test_qresync_sessions_get_vanished(store, user):
    for _ in range(3):
        deliver(store, user)
    a = session(store, user)
    a.cmd("e ENABLE QRESYNC")
    a.cmd("s SELECT INBOX")
    b = session(store, user)
    b.cmd("s SELECT INBOX")
    b.cmd("f STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    b.cmd("e EXPUNGE")
    out = a.cmd("n NOOP")
    assert out[0] == b"* VANISHED 1,3" and out[-1] == b"n OK Completed"
    assert a.cmd("f FETCH 1:* (UID)") == [b"* 1 FETCH (UID 2)", b"f OK Completed"]


def test_idle_is_woken_by_changed(store, user):
    a = session(store, user)
    a.cmd("s SELECT INBOX")
    assert a.cmd("i IDLE") == [b"+ idling"]
    assert a.conn.idling and not a.conn.busy
    a.conn.changed()
    assert a.conn.take_output() == b""  # nothing changed
    deliver(store, user)
    a.conn.changed()
    assert a.conn.take_output() == b"* 1 EXISTS\r\n"
    assert a.cmd("DONE") == [b"i OK Idle completed"]
    assert not a.conn.idling
    assert a.cmd("j IDLE") == [b"+ idling"]
    assert a.cmd("nope") == [b"j BAD Expected DONE"]


def test_large_fetch_asks_for_flushes(store, user):
    big = b"Subject: big\r\n\r\n" + b"x" * 50_000 + b"\r\n"
    for _ in range(6):
        deliver(store, user, big)
    d = session(store, user, limits=P.Limits(flush_bytes=100_000))
    d.cmd("s SELECT INBOX")
    out = d.send(b"f FETCH 1:* (BODY.PEEK[])\r\n")
    assert out.count(b" FETCH (BODY[] {") == 6 and out.endswith(b"f OK Completed\r\n")
    assert d.flushes == 3  # every ~100 kB the driver is asked to wait for the client to read


def test_store_modes_keywords_and_bad_flags(store, user):
    deliver(store, user)
    d = session(store, user)
    d.cmd("s SELECT INBOX")
    # a new keyword: FLAGS and PERMANENTFLAGS again first (RFC 9051 §7.3.5)
    assert d.cmd("a STORE 1 FLAGS (\\seen $Label1)") == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 \\*)] Flags permitted",
        b"* 1 FETCH (FLAGS (\\Seen $Label1))", b"a OK Completed"]
    assert d.cmd("b STORE 1 -FLAGS \\Seen") == [b"* 1 FETCH (FLAGS ($Label1))", b"b OK Completed"]
    assert d.cmd("c STORE 1 +FLAGS.SILENT (\\Answered)") == [b"c OK Completed"]
    assert d.cmd("d STORE 1 +FLAGS (\\Recent)") == [b"d BAD Invalid system flag"]
    assert d.cmd("e STORE 1 BOGUS (\\Seen)") == [b"e BAD Invalid STORE item"]
    out = d.cmd("s2 SELECT INBOX")
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)" in out


def test_store_responses_over_many_messages(store, user):
    """STORE's untagged FETCH responses (rendered by the core from the records, in batches) are those of
    View.fetch_flags: with UID, with MODSEQ once CONDSTORE is on, only the changed ones for .SILENT with
    UNCHANGEDSINCE, none for the refused; flags of every kind."""
    for _ in range(600):
        deliver(store, user)
    d = session(store, user)
    d.cmd("s SELECT INBOX")
    d.cmd("k STORE 5:9 +FLAGS ($Work \\Flagged)")
    out = d.cmd("a STORE 1:* +FLAGS (\\Seen)")
    assert len(out) == 601 and out[-1] == b"a OK Completed"
    assert out[0] == b"* 1 FETCH (FLAGS (\\Seen))" and out[599] == b"* 600 FETCH (FLAGS (\\Seen))"
    assert out[6] == b"* 7 FETCH (FLAGS ($Work \\Flagged \\Seen))"
    boxes = Mailboxes(store)
    mid = boxes.get(user, "INBOX")["id"]
    msgs = {m.uid: m for m in boxes.messages(mid)}
    out = d.cmd("b UID STORE 3:300 -FLAGS ($Work)")
    assert out[:3] == [b"* 3 FETCH (UID 3 FLAGS (\\Seen))", b"* 4 FETCH (UID 4 FLAGS (\\Seen))",
                       b"* 5 FETCH (UID 5 FLAGS (\\Flagged \\Seen))"] and len(out) == 299
    d.cmd("e ENABLE CONDSTORE")
    top = boxes.get(user, "INBOX")["modseq"]
    msgs = {m.uid: m for m in boxes.messages(mid)}
    out = d.cmd(f"c STORE 1:10 (UNCHANGEDSINCE {msgs[5].modseq}) +FLAGS.SILENT (\\Answered)")
    changed = [u for u in range(1, 11) if msgs[u].modseq <= msgs[5].modseq]
    refused = [u for u in range(1, 11) if msgs[u].modseq > msgs[5].modseq]
    assert refused and changed
    assert out[:-1] == [b"* %d FETCH (FLAGS (%s) MODSEQ (%d))" % (
        u, " ".join(msgs[u].flags + ["\\Answered"]).encode(), top + k + 1) for k, u in enumerate(changed)]
    assert out[-1].startswith(b"c OK [MODIFIED ")
    out = d.cmd("f UID STORE 1,2 FLAGS (\\Draft)")
    assert out[:2] == [b"* 1 FETCH (UID 1 FLAGS (\\Draft) MODSEQ (%d))" % (top + len(changed) + 1),
                       b"* 2 FETCH (UID 2 FLAGS (\\Draft) MODSEQ (%d))" % (top + len(changed) + 2)]


def test_append_rules(store, user):
    d = session(store, user)
    assert d.cmd('a APPEND Nope {3+}\r\nabc') == [b"a NO [TRYCREATE] No such mailbox"]
    assert d.cmd('b APPEND INBOX "bad date" {3+}\r\nabc') == [b"b BAD Invalid date-time"]
    assert d.cmd("c APPEND INBOX {0+}\r\n") == [b"c NO [CANNOT] Empty message"]
    out = d.cmd('d APPEND INBOX (\\Seen) " 5-Mar-2024 01:02:03 +0100" {3+}\r\nabc')
    assert out[-1].startswith(b"d OK [APPENDUID ") and out[-1].endswith(b" 1] Completed")
    (m,) = Mailboxes(store).messages(Mailboxes(store).get(user, "INBOX")["id"])
    assert m.flags == ["\\Seen"] and m.internaldate == 1709596923


def test_list_patterns_and_mutf7(store, user):
    d = session(store, user)
    assert d.cmd('a CREATE "Caf&AOk-/Men&APw-"') == [b"a OK Completed"]
    assert d.cmd('b LIST "" "Caf&AOk-/%"') == [b'* LIST (\\HasNoChildren) "/" "Caf&AOk-/Men&APw-"', b"b OK Completed"]
    assert d.cmd('c LIST "" ""') == [b'* LIST (\\Noselect) "/" ""', b"c OK Completed"]
    assert d.cmd('d CREATE "R&D"') == [b"d BAD Invalid mailbox name (modified UTF-7)"]
    assert d.cmd("e CREATE inbox") == [b"e NO [ALREADYEXISTS] Mailbox already exists"]
    d.cmd("f ENABLE UTF8=ACCEPT")
    assert d.cmd('g LIST "" Caf%') == ['* LIST (\\HasChildren) "/" "Café"'.encode(), b"g OK Completed"]


def test_search_return_save_and_dollar(store, user):
    for _ in range(4):
        deliver(store, user)
    d = session(store, user)
    d.cmd("s SELECT INBOX")
    d.cmd("a STORE 2,4 +FLAGS (\\Flagged)")
    assert d.cmd("b SEARCH RETURN (SAVE) FLAGGED") == [b"b OK Completed"]
    assert d.cmd("c FETCH $ (UID)") == [b"* 2 FETCH (UID 2)", b"* 4 FETCH (UID 4)", b"c OK Completed"]
    assert d.cmd("d SEARCH RETURN () 1:3") == [b'* ESEARCH (TAG "d") ALL 1:3', b"d OK Completed"]
    assert d.cmd("e SEARCH RETURN (COUNT) UID 9") == [b'* ESEARCH (TAG "e") COUNT 0', b"e OK Completed"]
    top = Mailboxes(store).get(user, "INBOX")["modseq"]
    assert d.cmd("f SEARCH MODSEQ 1") == [b"* SEARCH 1 2 3 4 (MODSEQ %d)" % top, b"f OK Completed"]
    assert d.cmd(f"g SEARCH MODSEQ {top}") == [b"* SEARCH 4 (MODSEQ %d)" % top, b"g OK Completed"]


SEARCH_MESSAGES = [
    b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Kumquatrix report\r\n\r\nx\r\n",
    b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\nCc: Team: a@x.test, b@x.test;\r\n"
    b"Subject: =?UTF-8?B?S3VtcXVhdHJpeA==?= news\r\n\r\nx\r\n",
    b"From: carol@example.org\r\nTo: \"Bob, Jr.\" <BOB@example.org>\r\nSubject: caf\xc3\xa9 kumQUATrix\r\n\r\nx\r\n",
    b"To: dave@example.org\r\n\r\nno subject, no from\r\n",
    b"From: eve@example.org\r\nBcc: bob@example.org\r\nSubject: other \"quoted\" \\ thing\r\n\r\nx\r\n",
]
SEARCHES = [
    "SUBJECT kumquatrix", "CHARSET UTF-8 SUBJECT Kumquatrix", "SUBJECT \"caf\xc3\xa9\"", "FROM \"j\xc3\xb6rg\"", "FROM alice",
    "TO bob", "TO \"bob, jr\"", "CC team", "CC x.test", "BCC BOB", "SUBJECT \"\\\"quoted\\\"\"", "SUBJECT \"\"",
    "FROM \"\"", "FROM example SUBJECT report", "TO bob SUBJECT other", "SUBJECT news FROM \"<j@\"",
    "RETURN (COUNT) SUBJECT kumquatrix", "SUBJECT kumquatrix FLAGGED", "OR SUBJECT news TO dave",
]


def test_search_envelope_keys_with_and_without_stored_wire_forms(store, user):
    """SUBJECT/FROM/TO/CC/BCC answered from the stored ENVELOPE bytes (fastmail._core.search) give what
    the index entries give: messages stored before the wire forms existed (none in `msgwire`) and a
    mailbox with some of each answer alike."""
    for raw in SEARCH_MESSAGES * 3:
        deliver(store, user, raw)
    d = session(store, user)
    d.cmd("s SELECT INBOX")
    d.cmd("f STORE 2:4 +FLAGS (\\Flagged)")
    d.cmd("x STORE 5 +FLAGS (\\Deleted)")
    d.cmd("y EXPUNGE")  # a hole in the UIDs
    with_wires = [d.cmd(f"t{i} SEARCH {q}".encode("latin-1")) for i, q in enumerate(SEARCHES)]
    assert with_wires[0] == [b"* SEARCH 1 2 3 5 6 7 10 11 12", b"t0 OK Completed"]
    assert with_wires[11] == [b"* SEARCH 1 2 3 5 6 7 9 10 11 12 14", b"t11 OK Completed"]  # NIL matches nothing
    assert with_wires[12] == with_wires[11][:1] + [b"t12 OK Completed"]
    assert with_wires[10] == [b"* SEARCH 9 14", b"t10 OK Completed"]
    assert with_wires[5] == [b"* SEARCH 1 3 5 7 10 12", b"t5 OK Completed"]
    db = store.db["msgwire"]
    blobs = [m.blob for m in Mailboxes(store).messages(Mailboxes(store).get(user, "INBOX")["id"])]
    for drop in (blobs[::2], blobs):  # some, then all, stored without the wire forms
        with store.env.begin(write=True) as txn:
            for blob in drop:
                txn.delete(blob, db=db)
        assert [d.cmd(f"t{i} SEARCH {q}".encode("latin-1")) for i, q in enumerate(SEARCHES)] == with_wires


def test_quota(store, user):
    d = session(store, user)
    assert d.cmd("a GETQUOTAROOT INBOX") == [b'* QUOTAROOT "INBOX"', b"a OK Completed"]  # no quota set
    store.set_quota("a@example.org", 10 * 1024)
    deliver(store, user)
    assert d.cmd("b GETQUOTAROOT INBOX") == [b'* QUOTAROOT "INBOX" ""', b'* QUOTA "" (STORAGE 1 10)',
                                             b"b OK Completed"]
    assert d.cmd('c GETQUOTA ""') == [b'* QUOTA "" (STORAGE 1 10)', b"c OK Completed"]
    assert d.cmd('d GETQUOTA "other"') == [b"d NO [NONEXISTENT] No such quota root"]
    assert d.cmd('e SETQUOTA "" (STORAGE 1)')[0].startswith(b"e NO [CANNOT]")
    big = b"x" * (10 * 1024)
    out = d.send(b"f APPEND INBOX {%d+}\r\n%s\r\n" % (len(big), big))
    assert out == b"f NO [OVERQUOTA] Quota exceeded\r\n"


def test_refusal_from_the_driver(store, user):
    d = Driver(store, {"a@example.org": user})
    d.pump = lambda: _refuse(d)  # type: ignore[method-assign]
    assert d.cmd(f"a LOGIN a@example.org {PASSWORD}") == [b"a NO [LIMIT] Too many sessions for this user"]
    assert d.conn.state is P.State.NOT_AUTHENTICATED


def _refuse(d: Driver) -> None:
    from fastmail.proto import imap_responses as S

    req = d.conn.next_request()
    assert isinstance(req, P.Authenticate)
    d.conn.resolve(S.TOO_MANY_SESSIONS)
    assert d.conn.next_request() is None


def test_logout_closes(store, user):
    d = session(store, user)
    assert d.cmd("z LOGOUT") == [b"* BYE Logging out", b"z OK Logout completed"]
    assert d.closed


def test_authenticate_login_with_and_without_initial_response(store, user):
    import base64

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    d = Driver(store, {"a@example.org": user})
    assert b"AUTH=LOGIN" in d.greeting
    assert d.cmd("a AUTHENTICATE LOGIN") == [b"+ VXNlcm5hbWU6"]  # "Username:"
    assert d.cmd(b64("a@example.org")) == [b"+ UGFzc3dvcmQ6"]  # "Password:"
    assert d.cmd(b64(PASSWORD))[0].startswith(b"a OK [CAPABILITY ")
    d = Driver(store, {"a@example.org": user})
    assert d.cmd(f"b AUTHENTICATE LOGIN {b64('a@example.org')}") == [b"+ UGFzc3dvcmQ6"]  # SASL-IR
    assert d.cmd(b64("wrong")) == [b"b NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert d.cmd("c AUTHENTICATE LOGIN") == [b"+ VXNlcm5hbWU6"]
    assert d.cmd("*") == [b"c BAD Authentication cancelled"]
    assert d.cmd("d AUTHENTICATE LOGIN") == [b"+ VXNlcm5hbWU6"]
    assert d.cmd("not base64!") == [b"d BAD Invalid base64"]
    assert d.cmd("e AUTHENTICATE CRAM-MD5") == [b"e NO Unsupported authentication mechanism"]
    far = Driver(store, {}, peer="203.0.113.9", tls_available=True)
    assert far.cmd("f AUTHENTICATE LOGIN") == [b"f NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS"]


def test_multiappend_is_all_or_nothing(store, user):
    boxes = Mailboxes(store)
    inbox = boxes.get(user, "INBOX")["id"]
    d = session(store, user)
    out = d.send(b'a APPEND INBOX (\\Seen) {3+}\r\nabc (\\Flagged) " 5-Mar-2024 01:02:03 +0100" {4+}\r\ndefg'
                 b" UTF8 (~{2+}\r\nhi)\r\n")
    assert out.startswith(b"a OK [APPENDUID ") and out.endswith(b" 1:3] Completed\r\n")
    msgs = boxes.messages(inbox)
    assert [(m.uid, m.size, m.flags) for m in msgs] == [(1, 3, ["\\Seen"]), (2, 4, ["\\Flagged"]), (3, 2, [])]
    assert msgs[1].internaldate == 1709596923
    # one bad message refuses the whole command before anything is stored
    assert d.cmd(b'b APPEND INBOX {3+}\r\nabc "bad date" {3+}\r\nabc') == [b"b BAD Invalid date-time"]
    assert d.cmd(b"c APPEND INBOX {3+}\r\nabc {0+}\r\n") == [b"c NO [CANNOT] Empty message"]
    assert d.cmd(b"d APPEND INBOX {3+}\r\nabc abc") == [b"d BAD APPEND takes message literals"]
    assert d.cmd(b"e APPEND Nope {3+}\r\nabc {3+}\r\nabc") == [b"e NO [TRYCREATE] No such mailbox"]
    # over quota with the second message: neither is stored, counters and usage unchanged
    store.set_quota("a@example.org", 1024)
    before = boxes.status(inbox), boxes.quota(user)
    out = d.send(b"f APPEND INBOX {500+}\r\n" + b"x" * 500 + b" {600+}\r\n" + b"y" * 600 + b"\r\n")
    assert out == b"f NO [OVERQUOTA] Quota exceeded\r\n"
    assert (boxes.status(inbox), boxes.quota(user)) == before and len(boxes.messages(inbox)) == 3
    store.set_quota("a@example.org", 0)
    out = d.send(b"g APPEND INBOX {500+}\r\n" + b"x" * 500 + b" {600+}\r\n" + b"y" * 600 + b"\r\n")
    assert out.endswith(b" 4:5] Completed\r\n") and boxes.quota(user)[1] == 3 + 4 + 2 + 1100


def test_delete_with_children_noselect_and_list_attributes(store, user):
    d = session(store, user)
    assert d.cmd("a CREATE P/C/D") == [b"a OK Completed"]
    assert d.cmd("b DELETE P") == [b"b OK Completed"]
    assert d.cmd('c LIST "" P*') == [b'* LIST (\\Noselect \\HasChildren) "/" "P"',
                                     b'* LIST (\\HasChildren) "/" "P/C"',
                                     b'* LIST (\\HasNoChildren) "/" "P/C/D"', b"c OK Completed"]
    assert d.cmd("d DELETE P") == [b"d NO [INUSE] Mailbox has children"]
    assert d.cmd("e SELECT P") == [b"e NO [NONEXISTENT] No such mailbox"]
    assert d.cmd("f STATUS P (MESSAGES)") == [b"f NO [NONEXISTENT] No such mailbox"]
    assert d.cmd("g APPEND P {3+}\r\nabc") == [b"g NO [TRYCREATE] No such mailbox"]
    assert d.cmd('h LIST "" P RETURN (STATUS (MESSAGES))') == [b'* LIST (\\Noselect \\HasChildren) "/" "P"',
                                                                b"h OK Completed"]
    assert d.cmd("i DELETE P/C/D") == [b"i OK Completed"]
    assert d.cmd("j DELETE P/C") == [b"j OK Completed"]
    assert d.cmd('k LIST "" P*') == [b'* LIST (\\Noselect \\HasNoChildren) "/" "P"', b"k OK Completed"]
    assert d.cmd("l DELETE P") == [b"l OK Completed"]
    assert d.cmd('m LIST "" P*') == [b"m OK Completed"]
    assert d.cmd("n DELETE P") == [b"n NO [NONEXISTENT] No such mailbox"]


def test_subscriptions_of_names_that_are_not_mailboxes_and_childinfo(store, user):
    d = session(store, user)
    assert d.cmd("a SUBSCRIBE news/comp") == [b"a OK Completed"]  # no such mailbox: allowed
    assert d.cmd('b LIST "" news*') == [b"b OK Completed"]  # not a mailbox
    assert d.cmd('c LIST (SUBSCRIBED) "" news*') == [b'* LIST (\\NonExistent \\Subscribed) "/" "news/comp"',
                                                     b"c OK Completed"]
    assert d.cmd('d LSUB "" news*') == [b'* LSUB (\\Noselect) "/" "news/comp"', b"d OK Completed"]
    # LSUB "%": the unsubscribed parent, flagged \Noselect (RFC 3501 §6.3.9)
    assert d.cmd('e LSUB "" news/comp/%') == [b"e OK Completed"]
    assert d.cmd('e LSUB "" %')[-3:] == [b'* LSUB () "/" "Trash"', b'* LSUB (\\Noselect) "/" "news"',
                                         b"e OK Completed"]
    # RECURSIVEMATCH: a parent with a subscribed descendant gets CHILDINFO (RFC 5258 §3.5)
    assert d.cmd("f CREATE Work/Sub") == [b"f OK Completed"]
    assert d.cmd("g UNSUBSCRIBE Work") == [b"g OK Completed"]
    assert d.cmd('h LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)')[-3:] == [
        b'* LIST (\\HasChildren) "/" "Work" ("CHILDINFO" ("SUBSCRIBED"))',
        b'* LIST (\\NonExistent) "/" "news" ("CHILDINFO" ("SUBSCRIBED"))', b"h OK Completed"]
    assert d.cmd('i LIST (SUBSCRIBED) "" "Work*"') == [b'* LIST (\\HasNoChildren \\Subscribed) "/" "Work/Sub"',
                                                       b"i OK Completed"]
    assert d.cmd("j UNSUBSCRIBE never/was") == [b"j OK Completed"]
    assert d.cmd('k SUBSCRIBE "a//b"') == [b"k NO [CANNOT] Operation not permitted"]
    # a subscription outlives its mailbox; CREATE brings the mailbox back, still subscribed
    assert d.cmd("l DELETE Work/Sub") == [b"l OK Completed"]
    assert d.cmd('m LIST (SUBSCRIBED) "" "Work*"') == [b'* LIST (\\NonExistent \\Subscribed) "/" "Work/Sub"',
                                                       b"m OK Completed"]
    assert d.cmd("n CREATE Work/Sub") == [b"n OK Completed"]
    assert d.cmd('o LIST "" "Work/*" RETURN (SUBSCRIBED)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "Work/Sub"', b"o OK Completed"]
    assert d.cmd('p LIST (RECURSIVEMATCH) "" "*"') == [b"p BAD RECURSIVEMATCH needs another selection option"]
    assert d.cmd('q LIST "" "*" RETURN (BOGUS)') == [b"q BAD Unknown LIST return option"]


def test_multiappend_literals_together_bounded_by_the_append_limit(store, user):
    d = session(store, user, limits=P.Limits(max_message=100))
    assert d.send(b"a APPEND INBOX {60}\r\n") == b"+ Ready for literal data\r\n"
    # the second literal would pass the limit for the command: refused before its "+", nothing stored
    assert d.send(b"x" * 60 + b" {60}\r\n") == b"a NO [TOOBIG] Message too big\r\n"
    assert d.cmd("b NOOP") == [b"b OK Completed"]
    assert Mailboxes(store).status(Mailboxes(store).get(user, "INBOX")["id"])["exists"] == 0


def test_append_all_into_a_deleted_mailbox_stores_nothing(store, user):
    boxes = Mailboxes(store)
    mid = boxes.create(user, "Tmp")
    boxes.delete(user, "Tmp")
    items = [Incoming(qid=new_qid(), raw=RAW, sender="", local=[user], mailbox_id=mid) for _ in range(2)]
    with pytest.raises(MailboxError) as e:
        boxes.append_all(items)
    assert e.value.code == "TRYCREATE" and boxes.quota(user)[1:] == (0, 0)
    with store.read() as txn:
        assert all(txn.get(i.qid, db=store.db["blobs"]) is None for i in items)


def test_whole_message_fetch_is_the_general_rendering(store, user):
    """FETCH of BODY[] / BODY.PEEK[] alone (with or after UID) takes a shorter path: byte for byte what the
    general renderer gives with the items the other way round, or with the section spelled out."""
    bodies = [RAW, b"Subject: two\r\n\r\n" + b"x" * 70_000 + b"\r\n", b"Subject: three\r\n\r\nthree\r\n"]
    for raw in bodies:
        deliver(store, user, raw)
    d = session(store, user)
    d.cmd("s SELECT INBOX")
    fast = d.send(b"a FETCH 1:* BODY.PEEK[]\r\n")
    assert fast == b"".join(b"* %d FETCH (BODY[] {%d}\r\n%s)\r\n" % (i + 1, len(raw), raw)
                            for i, raw in enumerate(bodies)) + b"a OK Completed\r\n"
    uid_fast = d.send(b"b UID FETCH 1:* (BODY.PEEK[])\r\n")
    general = d.send(b"c FETCH 1:* (BODY.PEEK[] UID)\r\n")  # the other order: the general renderer
    assert uid_fast.endswith(b"b OK Completed\r\n") and general.endswith(b"c OK Completed\r\n")
    assert len(uid_fast) == len(general)  # the same pieces, the UID item moved
    for i, raw in enumerate(bodies):
        assert b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (i + 1, i + 1, len(raw), raw) in uid_fast
        assert b"* %d FETCH (BODY[] {%d}\r\n%s UID %d)\r\n" % (i + 1, len(raw), raw, i + 1) in general
    # BODY[] without PEEK sets \Seen: FLAGS goes in, by the general renderer
    seen = d.send(b"e FETCH 2 BODY[]\r\n")
    assert seen.startswith(b"* 2 FETCH (BODY[] {%d}\r\n" % len(bodies[1])) and b"FLAGS (\\Seen)" in seen
    # once seen, BODY[] changes nothing: the short path again
    assert d.send(b"f FETCH 2 BODY[]\r\n") == b"* 2 FETCH (BODY[] {%d}\r\n%s)\r\nf OK Completed\r\n" % (
        len(bodies[1]), bodies[1])
    # a partial or a section is not the whole message
    assert d.send(b"g FETCH 3 BODY.PEEK[]<0.4>\r\n") == b"* 3 FETCH (BODY[]<0> {4}\r\nSubj)\r\ng OK Completed\r\n"


def test_select_summary_agrees_with_the_decoded_records(store, user):
    """SELECT reads UIDs, keywords and the first unseen message without decoding every record
    (Mailboxes.select_summary): the same as decoding them all."""
    for _ in range(6):
        deliver(store, user)
    d = session(store, user)
    d.cmd("s SELECT INBOX")
    d.cmd("a STORE 1:2 +FLAGS (\\Seen)")
    assert d.cmd("b STORE 4 +FLAGS (\\Seen $Forwarded)")[-1].startswith(b"b OK")
    assert d.cmd("c STORE 5 +FLAGS (\\Flagged Junk \\Answered $Forwarded)")[-1].startswith(b"c OK")
    d.cmd("e STORE 6 +FLAGS (\\Deleted)")
    boxes = Mailboxes(store)
    rec = boxes.get(user, "INBOX")
    _, uids, keywords, first_unseen = boxes.select_summary(rec["id"])
    _, messages = boxes.snapshot(rec["id"])
    assert list(uids) == [m.uid for m in messages]
    decoded = [f for m in messages for f in m.flags if not f.startswith("\\")]
    assert keywords == list(dict.fromkeys(decoded)) and set(keywords) == {"$Forwarded", "Junk"}
    assert first_unseen == next(i for i, m in enumerate(messages, 1) if "\\Seen" not in m.flags) == 3
    out = d.cmd("f SELECT INBOX")
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft " + " ".join(keywords).encode() + b")" in out
    assert b"* OK [UNSEEN 3] First unseen" in out and b"* 6 EXISTS" in out
    d.cmd("g STORE 1:* +FLAGS.SILENT (\\Seen)")
    assert boxes.select_summary(rec["id"])[3] == 0


def _forget_expunges(store: Store, user: int, uids: list[int]) -> None:
    """Another session expunges `uids` one at a time (each its own mod-sequence)."""
    other = session(store, user)
    other.cmd("s SELECT INBOX")
    for uid in uids:
        other.cmd(f"f UID STORE {uid} +FLAGS.SILENT (\\Deleted)")
        assert other.cmd(f"x UID EXPUNGE {uid}")[-1] == b"x OK Completed"


def _modseq(out: list[bytes]) -> int:
    line = [x for x in out if x.startswith(b"* OK [HIGHESTMODSEQ ")][0]
    return int(line.split()[3].rstrip(b"]"))


def test_qresync_from_below_the_expunge_floor(store, user):
    """RFC 7162 §3.2.5.2: a client whose mod-sequence is older than the expunges the server remembers gets
    VANISHED (EARLIER) with every UID of its known range (or 1:UIDNEXT-1) that no longer exists, including
    UIDs it never knew; its FETCH changes are those after its mod-sequence as always.  A client above the
    floor still gets exactly what was expunged after its mod-sequence."""
    store.expunge_memory = 2
    for _ in range(10):
        deliver(store, user)
    a = session(store, user)
    a.cmd("e ENABLE QRESYNC")
    out = a.cmd("s SELECT INBOX")
    old = _modseq(out)
    validity = int([x for x in out if b"UIDVALIDITY" in x][0].split()[3].rstrip(b"]"))
    a.cmd("l LOGOUT")
    b = session(store, user)
    b.cmd("s SELECT INBOX")
    b.cmd("f UID STORE 9 +FLAGS.SILENT (\\Flagged)")
    _forget_expunges(store, user, [2, 3, 4, 5])
    deliver(store, user)  # UID 11, expunged before the client ever saw it
    _forget_expunges(store, user, [11])
    boxes = Mailboxes(store)
    rec = boxes.get(user, "INBOX")
    assert rec["expunge_floor"] > old
    c = session(store, user)
    c.cmd("e ENABLE QRESYNC")
    out = c.cmd(f"s SELECT INBOX (QRESYNC ({validity} {old} 1:10))")
    assert b"* VANISHED (EARLIER) 2:5" in out
    changes = [x for x in out if b"FETCH" in x]
    assert len(changes) == 1 and changes[0].startswith(b"* 5 FETCH (UID 9 FLAGS (\\Flagged) MODSEQ (")
    out = c.cmd(f"t SELECT INBOX (QRESYNC ({validity} {old}))")
    assert b"* VANISHED (EARLIER) 2:5,11" in out
    out = c.cmd(f"u UID FETCH 1:* (FLAGS) (CHANGEDSINCE {old} VANISHED)")
    assert out[0] == b"* VANISHED (EARLIER) 2:5,11" and out[-1] == b"u OK Completed"
    assert out[1:-1] == [changes[0]]  # the one change, with its MODSEQ (CHANGEDSINCE)
    out = c.cmd(f"v UID FETCH 3:8 (FLAGS) (CHANGEDSINCE {old} VANISHED)")
    assert out == [b"* VANISHED (EARLIER) 3:5", b"v OK Completed"]
    floor = rec["expunge_floor"]  # at the floor: what is remembered, exactly
    out = c.cmd(f"w SELECT INBOX (QRESYNC ({validity} {floor}))")
    assert b"* VANISHED (EARLIER) 5,11" in out


def test_session_that_slept_through_forgotten_expunges(store, user):
    """A selected session whose mod-sequence fell below the floor (more than the memory was expunged by
    another session meanwhile) still learns exactly which of its messages are gone: its EXPUNGE (or
    VANISHED) responses and sequence numbers stay right."""
    store.expunge_memory = 2
    for _ in range(10):
        deliver(store, user)
    a = session(store, user)
    a.cmd("s SELECT INBOX")
    q = session(store, user)
    q.cmd("e ENABLE QRESYNC")
    q.cmd("s SELECT INBOX")
    base = Mailboxes(store).get(user, "INBOX")["modseq"]
    _forget_expunges(store, user, [2, 3, 4, 5, 7])
    deliver(store, user)  # UID 11: new to them
    assert Mailboxes(store).get(user, "INBOX")["expunge_floor"] > base
    assert a.cmd("n NOOP") == [b"* 7 EXPUNGE", b"* 5 EXPUNGE", b"* 4 EXPUNGE", b"* 3 EXPUNGE", b"* 2 EXPUNGE",
                               b"* 6 EXISTS", b"n OK Completed"]
    assert a.cmd("f FETCH 1:* (UID)") == [b"* %d FETCH (UID %d)" % (i, u) for i, u in
                                          enumerate([1, 6, 8, 9, 10, 11], 1)] + [b"f OK Completed"]
    assert q.cmd("n NOOP") == [b"* VANISHED 2:5,7", b"* 6 EXISTS", b"n OK Completed"]
    assert q.cmd("f FETCH 2 (UID)") == [b"* 2 FETCH (UID 6)", b"f OK Completed"]
