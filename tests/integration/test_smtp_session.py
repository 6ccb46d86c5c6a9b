"""SMTP sessions against the real server: every command and extension, with smtplib and with raw sockets.

One server for the module (2 workers); every test marks its messages with a unique token and looks only at
the messages it sent, so the tests do not depend on each other.
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import PASSWORDS, Server
from .wire import HOST, OPEN, TIMEOUT, Client, Reply, insecure_tls_context, module_server

pytestmark = pytest.mark.integration

UTF8_ALIAS = "jörg@example.org"  # -> carol


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from module_server(tmp_path_factory, "session",
                             setup=lambda s: s.cli("alias", "add", UTF8_ALIAS, "carol@example.org"))


# -- helpers ---------------------------------------------------------------------------------------------


def token() -> str:
    return uuid.uuid4().hex


def listing(srv: Server, user: str) -> list[dict]:
    return json.loads(srv.cli("message", "list", user, "INBOX", "--json").stdout)


_SEEN: dict[tuple[str, str, int], bytes] = {}  # (data dir, user, uid) -> message: stored messages never change


def show(srv: Server, user: str, uids: list[int]) -> list[bytes]:
    missing = [u for u in uids if (str(srv.data), user, u) not in _SEEN]
    with ThreadPoolExecutor(8) as pool:
        raws = pool.map(lambda uid: srv.cli("message", "show", user, "INBOX", str(uid)).stdout, missing)
        for uid, raw in zip(missing, raws, strict=True):
            _SEEN[str(srv.data), user, uid] = raw
    return [_SEEN[str(srv.data), user, u] for u in uids]


def with_token(srv: Server, user: str, tok: str) -> list[tuple[dict, bytes]]:
    """The messages in USER's INBOX that contain TOK (meta, raw)."""
    metas = listing(srv, user)
    raws = show(srv, user, [m["uid"] for m in metas])
    return [(m, r) for m, r in zip(metas, raws, strict=True) if tok.encode() in r]


def split_received(raw: bytes) -> tuple[bytes, bytes]:
    """(the prepended Received: header, the message as the client sent it)."""
    assert raw.startswith(b"Received: "), raw[:200]
    end = 0
    for _ in range(20):
        nl = raw.index(b"\r\n", end) + 2
        end = nl
        if raw[end : end + 1] not in (b" ", b"\t"):
            return raw[:end], raw[end:]
    raise AssertionError("Received: header does not end")


def qid_of(reply_text: bytes | str) -> str:
    text = reply_text.decode() if isinstance(reply_text, bytes) else reply_text
    m = re.search(r"queued as ([0-9a-f]{24})\b", text)
    assert m, text
    return m.group(1)


def smtp(srv: Server, port: str = "smtp") -> smtplib.SMTP:
    return smtplib.SMTP(HOST, srv.ports[port], local_hostname="client.test", timeout=TIMEOUT)


# -- EHLO / HELO -----------------------------------------------------------------------------------------


def test_ehlo_advertises_every_extension(srv):
    with smtp(srv) as s:
        code, text = s.ehlo()
        assert code == 250
        assert text.split(b"\n")[0] == b"mx.example.org"
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "starttls", "chunking",
                    "dsn"):
            assert s.has_extn(ext), (ext, text)
        assert s.esmtp_features["size"] == "1048576"  # smtp.max_message_size of the fixture
        assert not s.has_extn("auth")  # never on port 25
        assert s.quit()[0] == 221


def test_helo_then_a_plain_smtp_transaction(srv):
    tok = token()
    with smtp(srv) as s:
        code, text = s.helo()
        assert (code, text) == (250, b"mx.example.org")
        assert not s.does_esmtp
        assert s.sendmail("sender@remote.test", ["carol@example.org"], f"Subject: {tok}\r\n\r\nhelo\r\n") == {}
    [(_meta, raw)] = with_token(srv, "carol@example.org", tok)
    received, _ = split_received(raw)
    assert b"from client.test ([127.0.0.1])" in received
    assert b" with SMTP id " in received  # not ESMTP after HELO (RFC 3848)


# -- MAIL parameters, DATA -------------------------------------------------------------------------------


def test_mail_size_8bitmime_data_stored_byte_identical(srv):
    tok = token()
    body = (
        f"Subject: {tok}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Grüße aus Köln — 8 bit\r\n.a line with a leading dot\r\n..two dots\r\n.\r\nlast line\r\n"
    ).encode()
    with smtp(srv) as s:
        s.ehlo()
        assert s.mail("sender@remote.test", [f"SIZE={len(body)}", "BODY=8BITMIME"]) == (250, b"2.1.0 Sender OK")
        assert s.rcpt("carol@example.org") == (250, b"2.1.5 Recipient OK")
        code, text = s.data(body)  # smtplib dot-stuffs the lines that begin with "."
        assert code == 250 and text.startswith(b"2.0.0 "), text
        qid = qid_of(text)
    [(meta, raw)] = with_token(srv, "carol@example.org", tok)
    received, content = split_received(raw)
    assert content == body  # byte for byte, dots unstuffed
    assert f" id {qid}".encode() in received and b"for <carol@example.org>" in received
    assert meta["size"] == len(raw) and meta["blob"] == qid


def test_dot_stuffed_lines_are_unstuffed(srv):
    tok = token()
    c = Client(srv.ports["smtp"])
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd("RCPT TO:<carol@example.org>").status == "250 2.1.5"
    assert c.cmd("DATA").code == 354
    c.send(f"Subject: {tok}\r\n\r\n..leading\r\n...two\r\n..\r\n.\tdot-tab\r\nend\r\n.\r\n".encode())
    assert c.reply().status == "250 2.0.0"
    assert c.cmd("QUIT").status == "221 2.0.0"
    c.close()
    [(_m, raw)] = with_token(srv, "carol@example.org", tok)
    assert split_received(raw)[1] == f"Subject: {tok}\r\n\r\n.leading\r\n..two\r\n.\r\n\tdot-tab\r\nend\r\n".encode()


def test_smtputf8_utf8_addresses_delivered(srv):
    tok = token()
    with smtp(srv) as s:
        s.ehlo()
        # Without SMTPUTF8 a non-ASCII address is refused (RFC 6531 §3.2) ...
        s.send("MAIL FROM:<müller@exämple.de>\r\n".encode())
        assert s.getreply() == (553, b"5.6.7 Non-ASCII address needs SMTPUTF8")
        # ... with it, accepted, and the UTF-8 alias reaches carol.
        assert s.mail("müller@exämple.de", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert s.rcpt(UTF8_ALIAS) == (250, b"2.1.5 Recipient OK")
        code, text = s.data(f"From: müller@exämple.de\r\nTo: {UTF8_ALIAS}\r\nSubject: {tok}\r\n\r\nü\r\n".encode())
        assert code == 250, text
    [(_m, raw)] = with_token(srv, "carol@example.org", tok)
    received, content = split_received(raw)
    assert b" with UTF8SMTP id " in received  # RFC 6531 §4.3
    assert f"for <{UTF8_ALIAS}>".encode() in received
    assert content.startswith("From: müller@exämple.de\r\n".encode())


def test_dsn_parameters_are_kept_in_the_queue_entry(srv):
    """RET/ENVID (MAIL) and NOTIFY/ORCPT (RCPT) of an authenticated submission with local and remote recipients."""
    tok = token()
    with smtp(srv, "submission") as s:
        s.ehlo()
        assert s.has_extn("dsn")
        assert s.starttls(context=insecure_tls_context())[0] == 220
        s.ehlo()
        assert s.login("alice@example.org", PASSWORDS["alice@example.org"])[0] == 235
        assert s.mail("alice@example.org", ["RET=HDRS", f"ENVID={tok}"])[0] == 250
        assert s.rcpt("bob@example.org", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.org"])[0] == 250
        assert s.rcpt("far@remote.test", ["NOTIFY=DELAY,FAILURE", "ORCPT=rfc822;far@remote.test"])[0] == 250
        assert s.rcpt("other@remote.test")[0] == 250
        code, text = s.data(f"Subject: {tok}\r\n\r\ndsn\r\n".encode())
        assert code == 250, text
        qid = qid_of(text)
    entry = json.loads(srv.cli("queue", "show", qid, "--json").stdout)
    assert entry["id"] == qid and entry["sender"] == "alice@example.org"
    params = entry["params"]
    assert params["ret"] == "HDRS" and params["envid"] == tok and params["auth"] == "alice@example.org"
    assert params["dsn"] == {
        "bob@example.org": {"notify": "SUCCESS,FAILURE", "orcpt": "rfc822;bob@example.org"},
        "far@remote.test": {"notify": "DELAY,FAILURE", "orcpt": "rfc822;far@remote.test"},
    }
    rcpts = [{k: r[k] for k in ("to", "notify", "orcpt")} for r in entry["rcpts"] if r["state"] != "sent"]
    assert rcpts == [  # only the remote ones wait in the queue
        {"to": "far@remote.test", "notify": "DELAY,FAILURE", "orcpt": "rfc822;far@remote.test"},
        {"to": "other@remote.test", "notify": None, "orcpt": None},
    ]
    # bob, delivered here with NOTIFY=SUCCESS: his "delivered" notice is kept in the same record (RFC 3461 §6.2)
    assert [(r["to"], r.get("delivered")) for r in entry["rcpts"] if r["state"] == "sent"] == [("bob@example.org", True)]
    [(meta, raw)] = with_token(srv, "bob@example.org", tok)  # the local recipient has its copy
    assert meta["blob"] == qid
    assert b" with ESMTPSA id " in split_received(raw)[0]
    assert srv.cli("queue", "show", qid, "--raw").stdout == raw  # one blob for the mailbox and the queue


def test_bad_dsn_parameter_values_refused(srv):
    with smtp(srv) as s:
        s.ehlo()
        assert s.docmd("MAIL FROM:<s@remote.test> RET=EVERYTHING") == (501, b"5.5.4 Syntax error in parameters or arguments")
        assert s.mail("s@remote.test", ["RET=FULL"])[0] == 250
        assert s.rcpt("carol@example.org", ["NOTIFY=NEVER,SUCCESS"])[0] == 555
        assert s.rcpt("carol@example.org", ["NOTIFY=NEVER"])[0] == 250


# -- BDAT (RFC 3030) -------------------------------------------------------------------------------------


def test_bdat_chunks_stored_as_their_concatenation(srv):
    tok1, tok2 = token(), token()
    msg1 = f"Subject: {tok1}\r\n\r\n.a leading dot is not stuffing in BDAT\r\n".encode() + "8 bit: é\r\n".encode()
    chunks1 = [msg1[:7], msg1[7 : len(msg1) - 5], msg1[len(msg1) - 5 : -1], msg1[-1:]]  # split inside CRLF
    assert b"".join(chunks1) == msg1 and chunks1[2].endswith(b"\r") and chunks1[3] == b"\n"
    c = Client(srv.ports["smtp"])
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<s@remote.test> BODY=8BITMIME").status == "250 2.1.0"
    assert c.cmd("RCPT TO:<carol@example.org>").status == "250 2.1.5"
    total = 0
    for chunk in chunks1[:-1]:
        total += len(chunk)
        c.send(f"BDAT {len(chunk)}\r\n".encode() + chunk)
        r = c.reply()
        assert r.status == "250 2.0.0" and f"{total} octets" in r.text, r
    c.send(f"BDAT {len(chunks1[-1])} LAST\r\n".encode() + chunks1[-1])
    last = c.reply()
    assert last.status == "250 2.0.0" and "queued as" in last.text
    # Second transaction, every chunk pipelined in one send, ended by an empty LAST chunk.
    msg2 = f"Subject: {tok2}\r\n\r\n".encode() + b"x" * 70000 + b"\r\nend\r\n"
    parts = [msg2[:30000], msg2[30000:]]
    c.send(
        b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<carol@example.org>\r\n"
        + b"".join(f"BDAT {len(p)}\r\n".encode() + p for p in parts) + b"BDAT 0 LAST\r\nQUIT\r\n"
    )
    rs = c.until_eof()
    assert [r.status for r in rs] == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "250 2.0.0", "221 2.0.0"]
    assert "queued as" in rs[4].text and qid_of(rs[4].text) != qid_of(last.text)
    c.close()
    [(_m, raw1)] = with_token(srv, "carol@example.org", tok1)
    [(_m, raw2)] = with_token(srv, "carol@example.org", tok2)
    assert split_received(raw1)[1] == msg1
    assert split_received(raw2)[1] == msg2


def test_data_after_bdat_is_out_of_sequence(srv):
    c = Client(srv.ports["smtp"])
    c.send(b"EHLO x\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<carol@example.org>\r\nBDAT 3\r\nabcDATA\r\nQUIT\r\n")
    rs = c.until_eof()
    assert [r.status for r in rs][1:] == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1", "221 2.0.0"]
    c.close()


# -- RSET, NOOP, QUIT, VRFY, HELP --------------------------------------------------------------------------


def test_rset_noop_vrfy_help_quit(srv):
    with smtp(srv) as s:
        s.ehlo()
        assert s.noop() == (250, b"2.0.0 OK")
        code, text = s.verify("alice@example.org")
        assert code == 252 and text.startswith(b"2.5.0 ")  # never confirms or denies (RFC 5321 §3.5.3)
        assert s.verify("nobody@example.org")[0] == 252  # the same answer for an unknown address
        assert s.docmd("VRFY")[0] == 501
        assert s.docmd("EXPN", "team@example.org")[0] == 502
        help_text = s.help()
        assert help_text.startswith(b"2.0.0 Commands: ") and b"\n2.0.0 See RFC 5321" in help_text
        assert s.docmd("HELP")[0] == 214
        assert s.mail("s@remote.test")[0] == 250
        assert s.rcpt("carol@example.org")[0] == 250
        assert s.rset() == (250, b"2.0.0 OK")
        assert s.docmd("DATA") == (503, b"5.5.1 Need MAIL command first")  # the transaction is gone
        assert s.rcpt("carol@example.org") == (503, b"5.5.1 Need MAIL command first")
        assert s.mail("s@remote.test")[0] == 250  # not "nested MAIL"
        assert s.docmd("MAIL FROM:<s@remote.test>") == (503, b"5.5.1 Sender already specified")
        assert s.noop()[0] == 250
        code, text = s.quit()
        assert (code, text) == (221, b"2.0.0 mx.example.org closing connection")


def test_quit_closes_the_connection(srv):
    c = Client(srv.ports["smtp"])
    c.send(b"QUIT\r\nNOOP\r\n")
    rs = c.until_eof()  # the NOOP after QUIT is not answered
    assert [r.status for r in rs] == ["221 2.0.0"]
    c.close()


# -- STARTTLS ------------------------------------------------------------------------------------------------


def test_starttls_on_port_25_then_a_message_over_tls(srv):
    tok = token()
    with smtp(srv) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert s.starttls(context=insecure_tls_context()) == (220, b"2.0.0 Ready to start TLS")
        assert isinstance(s.sock, ssl.SSLSocket) and s.sock.version() in ("TLSv1.2", "TLSv1.3")
        s.ehlo()
        assert not s.has_extn("starttls")  # not again once TLS is on
        assert s.docmd("STARTTLS")[0] == 503
        assert s.sendmail("s@remote.test", ["carol@example.org"], f"Subject: {tok}\r\n\r\nover TLS\r\n") == {}
    [(_m, raw)] = with_token(srv, "carol@example.org", tok)
    assert b" with ESMTPS id " in split_received(raw)[0]


def test_starttls_discards_commands_pipelined_after_it(srv):
    """RFC 3207 §4: what follows STARTTLS in the same packet is never interpreted (CVE-2011-0411)."""
    c = Client(srv.ports["smtp"])
    assert c.cmd("EHLO client.test").code == 250
    c.send_once(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<injected@remote.test>\r\n")
    assert c.reply().status == "220 2.0.0"
    assert c.buf == b""
    tls = insecure_tls_context().wrap_socket(c.sock)
    OPEN.append(tls)
    c.sock = tls
    r = c.cmd("EHLO client.test")  # the first reply over TLS answers EHLO, not the injected NOOP
    assert r.code == 250 and r.lines[0] == "250-mx.example.org" and "250-STARTTLS" not in r.lines
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"  # no transaction was injected
    assert c.cmd("QUIT").status == "221 2.0.0"
    c.close()


# -- PIPELINING (RFC 2920) -------------------------------------------------------------------------------------


def test_pipelining_a_whole_transaction_in_one_send(srv):
    tok = token()
    c = Client(srv.ports["smtp"])
    assert c.cmd("EHLO client.test").code == 250
    c.send_once(
        b"MAIL FROM:<s@remote.test>\r\n"
        b"RCPT TO:<alice@example.org>\r\n"
        b"RCPT TO:<nobody@example.org>\r\n"
        b"RCPT TO:<bob+pipe@example.org>\r\n"
        b"DATA\r\n"
        + f"Subject: {tok}\r\n\r\npipelined\r\n.\r\n".encode()
        + b"QUIT\r\n"
    )
    rs = c.until_eof()
    assert [r.status for r in rs] == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354", "250 2.0.0",
                                      "221 2.0.0"]
    c.close()
    qid = qid_of(rs[5].text)
    for user in ("alice@example.org", "bob@example.org"):
        [(meta, _raw)] = with_token(srv, user, tok)
        assert meta["blob"] == qid


def test_pipelining_two_transactions_in_one_packet(srv):
    tok1, tok2 = token(), token()
    c = Client(srv.ports["smtp"])
    assert c.cmd("EHLO client.test").code == 250
    one = (
        b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n"
        + f"Subject: {tok1}\r\n\r\nfirst\r\n.\r\n".encode()
    )
    two = (
        b"MAIL FROM:<>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n"
        + f"Subject: {tok2}\r\n\r\nsecond\r\n.\r\n".encode()
    )
    c.send_once(one + b"RSET\r\n" + two + b"NOOP\r\nQUIT\r\n")
    rs = c.until_eof()
    assert [r.status for r in rs] == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "250 2.0.0",
                                      "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "250 2.0.0", "221 2.0.0"]
    q1, q2 = qid_of(rs[3].text), qid_of(rs[8].text)
    assert q1 != q2
    c.close()
    [(m1, raw1)] = with_token(srv, "carol@example.org", tok1)
    [(m2, raw2)] = with_token(srv, "carol@example.org", tok2)
    assert (m1["blob"], m2["blob"]) == (q1, q2) and m1["uid"] < m2["uid"]
    assert split_received(raw1)[1].endswith(b"\r\nfirst\r\n") and split_received(raw2)[1].endswith(b"\r\nsecond\r\n")


# -- recipients ----------------------------------------------------------------------------------------------


def test_multi_recipient_one_copy_per_user_one_blob(srv):
    tok = token()
    with smtp(srv) as s:
        refused = s.sendmail("s@remote.test", ["alice@example.org", "bob@example.org", "team@example.org"],
                             f"Subject: {tok}\r\n\r\nto three\r\n")
        assert refused == {}
    [(ma, raw_a)] = with_token(srv, "alice@example.org", tok)  # team@ -> alice+bob: still one copy each
    [(mb, raw_b)] = with_token(srv, "bob@example.org", tok)
    assert with_token(srv, "carol@example.org", tok) == []
    assert raw_a == raw_b
    assert ma["blob"] == mb["blob"]  # one stored blob, referenced twice
    assert b"\tfor <" not in split_received(raw_a)[0]  # several recipients: no "for" clause


def test_plus_addressing_reaches_the_user(srv):
    tok = token()
    with smtp(srv) as s:
        assert s.sendmail("s@remote.test", ["alice+tag@example.org"], f"Subject: {tok}\r\n\r\nplus\r\n") == {}
        s.ehlo()
        assert s.mail("s@remote.test")[0] == 250
        assert s.rcpt("nobody+tag@example.org") == (550, b"5.1.1 User unknown")  # the base must exist
    [(_m, raw)] = with_token(srv, "alice@example.org", tok)
    assert b"for <alice+tag@example.org>" in split_received(raw)[0]


def test_quoted_local_part_with_plus_tag(srv):
    tok = token()
    with smtp(srv) as s:
        s.ehlo()
        assert s.mail("s@remote.test")[0] == 250
        assert s.docmd('RCPT TO:<"alice+a tag; with spaces"@example.org>') == (250, b"2.1.5 Recipient OK")
        assert s.data(f"Subject: {tok}\r\n\r\nquoted\r\n".encode())[0] == 250
    [(_m, raw)] = with_token(srv, "alice@example.org", tok)
    # the trace header keeps it a valid Path (RFC 5321 §4.4): quoted again
    assert b'\tfor <"alice+a tag; with spaces"@example.org>;\r\n' in split_received(raw)[0]


# -- enhanced status codes (RFC 2034) ----------------------------------------------------------------------


def test_enhanced_status_codes_on_every_reply(srv):
    c = Client(srv.ports["smtp"])
    assert not re.match(r"220 \d\.", c.greeting.lines[0])  # none on the greeting
    ehlo = c.cmd("EHLO client.test")
    assert "250-ENHANCEDSTATUSCODES" in ehlo.lines
    seen: list[Reply] = []
    for line in [
        "NOOP", "HELP", "VRFY alice", "RSET", "BOGUS", "MAIL FROM:<bad", "RCPT TO:<carol@example.org>", "DATA",
        "MAIL FROM:<s@remote.test> SIZE=99999999", "MAIL FROM:<s@remote.test>", "MAIL FROM:<s@remote.test>",
        "RCPT TO:<nobody@example.org>", "RCPT TO:<x@remote.test>", "RCPT TO:<carol@example.org>",
    ]:  # 8 errors: under smtp.max_errors
        seen.append(c.cmd(line))
    assert c.cmd("DATA").code == 354  # an intermediate reply carries no status code
    c.send(b"Subject: esc\r\n\r\nx\r\n.\r\n")
    seen.append(c.reply())
    c.send(b"MAIL FROM:<>\r\nRCPT TO:<carol@example.org>\r\nBDAT 1 LAST\r\nx")
    seen += c.replies(3)
    c.send(b"QUIT\r\n")
    seen += c.until_eof()
    assert len(seen) == 19 and seen[-1].code == 221
    for r in seen:
        for line in r.lines:
            m = re.match(r"(\d)\d\d[ -]([245])\.\d{1,3}\.\d{1,3} ", line)
            assert m and m.group(1) == m.group(2), r
    c.close()
