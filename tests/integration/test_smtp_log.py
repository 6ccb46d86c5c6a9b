"""The SMTP/LMTP session log (issue #2): what an operator following a message or a client sees.

Against the real server (its workers' stderr goes to `server.log`, see conftest.Server): one connection is
found by its client port on the `event=connect` line, and its session id then ties every other line to it.
Checked: the accepted message with its queue id, sender, recipient count and size; refusals at MAIL, RCPT
and DATA with the reply, the reason, the client and the address; the queue id given at MAIL, on the refused
RCPT of a transaction as on its acceptance; the end of the session with its counts; a client's control
characters never making or forging a line; AUTH credentials never written.  A few unit tests of the parts
(the log's quoting, the state machine's refusal notices) come first.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator

import pytest

from fastmail import log
from fastmail.proto import replies as R
from fastmail.proto import smtp as P
from tests.fakes import FakePolicy

from .conftest import PASSWORDS, Server
from .wire import Client, module_server

pytestmark = pytest.mark.integration

MAX_ERRORS = 5
COMMAND_TIMEOUT = 2.0
SMTP_EXTRA = f"""max_errors = {MAX_ERRORS}
command_timeout = {COMMAND_TIMEOUT}
auth_plaintext_without_tls = true
"""

# -- reading the log ------------------------------------------------------------------------------------------

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse(line: str) -> dict[str, str]:
    """One key=value log line as a dict; quoted values unquoted (escapes left as written)."""
    out = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"'):
            value = re.sub(r'\\(["\\])', r"\1", value[1:-1])
        out[key] = value
    return out


def log_lines(srv: Server) -> list[str]:
    return srv.log.read_text(errors="replace").splitlines()


def session_events(srv: Server, port: int, until: str = "disconnect", limit: float = 10.0) -> list[dict[str, str]]:
    """The events of the session whose client port was PORT, once its UNTIL event is written (workers flush
    their lines every 0.2 s)."""
    deadline = time.monotonic() + limit
    while True:
        events = [parse(line) for line in log_lines(srv) if " event=" in line]
        sid = next((e["sid"] for e in events if e.get("event") == "connect" and e.get("port") == str(port)), None)
        mine = [e for e in events if sid is not None and e.get("sid") == sid]
        if any(e["event"] == until for e in mine):
            return mine
        assert time.monotonic() < deadline, f"no {until} for port {port}:\n" + "\n".join(log_lines(srv)[-30:])
        time.sleep(0.05)


def one(events: list[dict[str, str]], **want: str) -> dict[str, str]:
    found = [e for e in events if all(e.get(k) == v for k, v in want.items())]
    assert len(found) == 1, (want, events)
    return found[0]


def local_port(c: Client) -> int:
    return c.sock.getsockname()[1]


def queued_as(reply_line: str) -> str:
    m = re.search(r"queued as ([0-9a-f]+)", reply_line)
    assert m, reply_line
    return m.group(1)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    def setup(s: Server) -> None:
        s.config.write_text(s.config.read_text().replace("max_message_size = 1048576\n",
                                                         "max_message_size = 1048576\n" + SMTP_EXTRA))
        s.cli("user", "add", "full@example.org", "--password-stdin", "--quota", "1", input=b"full-secret\n")

    yield from module_server(tmp_path_factory, "smtplog", setup=setup)


# -- the parts, without a server ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a\x0bb", "a\x0cb", "a\x1cb", "a\x1db", "a\x1eb", "a\x85b", "a\u2028b", "a\u2029b",
                                  "a\nb", "a\rb", "a\x00b", "a\x1bb", "a\x7fb", "a\tb"])
def test_log_value_never_breaks_a_line(text):
    value = log._kv_value(text, log.MAX_VALUE)
    assert value.startswith('"') and value.endswith('"')
    assert len(value.splitlines()) == 1 and value.isprintable()
    line = log.kv(event="x", helo=text + ' ts=1 event=accepted qid=forged"')
    assert len(line.splitlines()) == 1
    assert parse(line) == {"event": "x", "helo": parse(line)["helo"]}  # the forged keys stay inside the value


def test_log_value_bounded():
    value = log._kv_value("h" * 5000, log.MAX_VALUE)
    assert len(value) < log.MAX_VALUE + 40 and value.endswith('...[4488 more]"')
    assert log._kv_value("plain@example.org", log.MAX_VALUE) == "plain@example.org"
    assert log._kv_value(42) == "42" and log._kv_value("") == '""'


def test_refusal_reasons():
    assert R.reason(R.RELAY_DENIED) == "relay_denied" and R.reason(R.USER_UNKNOWN) == "user_unknown"
    assert R.reason(R.TOO_BIG) == "too_big" and R.reason(R.MAILBOX_FULL.with_text("x")) == "mailbox_full"
    assert R.reason(R.Reply(501, "5.1.3", "Bad address syntax")) == "bad_address"
    assert R.reason(R.Reply(599, "5.9.9", "?")) == "599_5.9.9"


def test_state_machine_tells_each_refusal():
    seen: list[P.Refusal] = []
    qids = iter(["q1", "q2"])
    conn = P.SMTPConnection(P.Session("192.0.2.1", P.Mode.SUBMISSION), FakePolicy(frozenset({"alice"})), "mx.test", P.Limits(max_errors=50),
                            auth_without_tls=True, refused_hook=seen.append, new_qid=lambda: next(qids))
    secret = base64.b64encode(b"\0alice@example.org\0Sekr1t").decode()
    conn.receive(f"EHLO x\r\nAUTH PLAIN {secret}\r\n".encode())
    assert isinstance(conn.next_request(), P.Authenticate)
    conn.auth_done("alice@example.org", 1)
    conn.receive(b"AUTH PLAIN !!!notbase64\r\nMAIL FROM:<a@b.example> SIZE=99999999999\r\nMAIL FROM:<a@b..example>\r\n"
                 b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<x@y..z>\r\nBOGUS\r\nDATA\r\n")
    assert [(r.verb, r.reply.code, r.address, r.arg) for r in seen] == [
        ("AUTH", 503, None, None),  # already authenticated: nothing of the argument
        ("MAIL", 552, "a@b.example", None),
        ("MAIL", 501, None, "FROM:<a@b..example>"),
        ("RCPT", 550, "bob@example.org", None),
        ("RCPT", 501, None, "TO:<x@y..z>"),
        ("BOGUS", 500, None, None),
        ("DATA", 554, None, None),
    ]
    assert seen[3].envelope is not None and seen[3].envelope.qid == "q1" and seen[3].envelope.sender == "alice@example.org"
    assert conn.commands == 10 and conn.refusals == 7
    conn.receive(b"QUIT\r\n")
    assert conn.end == "quit" and conn.end_reply is None


def test_state_machine_keeps_the_transaction_of_a_refused_message():
    seen: list[P.Refusal] = []
    conn = P.SMTPConnection(P.Session("192.0.2.1", P.Mode.SMTP), FakePolicy(frozenset({"alice"})), "mx.test", P.Limits(max_message_size=10),
                            refused_hook=seen.append, new_qid=lambda: "q9")
    conn.receive(b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n" + b"x" * 50 + b"\r\n.\r\n")
    assert [(r.verb, r.reply) for r in seen] == [("DATA", R.TOO_BIG)]
    assert seen[0].envelope is not None and seen[0].envelope.qid == "q9" and len(seen[0].envelope.rcpts) == 1
    assert conn.envelope is None


def test_state_machine_says_why_it_closed():
    conn = P.SMTPConnection(P.Session("192.0.2.1", P.Mode.SMTP), FakePolicy(frozenset({"alice"})), "mx.test", P.Limits(max_errors=2))
    conn.receive(b"X\r\nY\r\n")
    assert conn.closed and conn.end == "too_many_errors" and conn.end_reply == R.TOO_MANY_ERRORS
    conn = P.SMTPConnection(P.Session("192.0.2.1", P.Mode.SMTP), FakePolicy(frozenset({"alice"})), "mx.test")
    conn.receive(b"EHLO x\r\nMAIL FROM:<>\r\n")
    assert conn.last_command == "MAIL"
    conn.timed_out()
    assert conn.end == "timeout" and conn.end_reply == R.TIMEOUT


# -- against the server ---------------------------------------------------------------------------------------


def test_accepted_message_and_refused_recipients_share_the_queue_id(srv):
    c = Client(srv.ports["smtp"])
    port = local_port(c)
    c.ehlo()
    assert c.cmd("MAIL FROM:<sender@remote.test> SIZE=300").status == "250 2.1.0"
    assert c.cmd("RCPT TO:<alice@example.org>").status == "250 2.1.5"
    assert c.cmd("RCPT TO:<nobody@example.org>").status == "550 5.1.1"
    assert c.cmd("RCPT TO:<victim@remote.test>").status == "554 5.7.1"
    assert c.cmd("RCPT TO:<team@example.org>").status == "250 2.1.5"
    assert c.cmd("DATA").code == 354
    body = b"Subject: log\r\n\r\n" + b"x" * 200 + b"\r\n"
    c.send(body + b".\r\n")
    qid = queued_as(c.reply().last)
    assert c.cmd("QUIT").code == 221
    c.close()

    ev = session_events(srv, port)
    connect = one(ev, event="connect")
    assert connect["listener"] == "smtp" and connect["peer"] == "127.0.0.1" and connect["port"] == str(port)
    accepted = one(ev, event="accepted")
    assert accepted["qid"] == qid and accepted["sender"] == "sender@remote.test"
    assert accepted["rcpts"] == "2" and int(accepted["size"]) > len(body) and accepted["mode"] == "smtp"
    unknown = one(ev, event="refused", cmd="RCPT", rcpt="nobody@example.org")
    assert (unknown["reply"], unknown["reason"], unknown["qid"]) == ("550 5.1.1", "user_unknown", qid)
    assert unknown["peer"] == "127.0.0.1" and unknown["sender"] == "sender@remote.test" and unknown["helo"] == "client.test"
    relay = one(ev, event="refused", cmd="RCPT", rcpt="victim@remote.test")
    assert (relay["reply"], relay["reason"], relay["qid"], relay["peer"]) == ("554 5.7.1", "relay_denied", qid, "127.0.0.1")
    end = one(ev, event="disconnect")
    assert (end["commands"], end["refused"], end["messages"], end["end"]) == ("8", "2", "1", "quit")
    assert float(end["secs"]) >= 0 and end["helo"] == "client.test"
    # "grep qid" follows the message: every line of it is of this session
    assert [e["event"] for e in ev if e.get("qid") == qid] == ["refused", "refused", "accepted"]


def test_size_refusals_at_mail_and_at_end_of_data(srv):
    c = Client(srv.ports["smtp"])
    port = local_port(c)
    c.ehlo()
    assert c.cmd("MAIL FROM:<big@remote.test> SIZE=2000000").status == "552 5.3.4"
    assert c.cmd("MAIL FROM:<big@remote.test>").status == "250 2.1.0"
    assert c.cmd("RCPT TO:<bob@example.org>").status == "250 2.1.5"
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1100 + b".\r\n")
    assert c.reply().status == "552 5.3.4"
    assert c.cmd("QUIT").code == 221
    ev = session_events(srv, port)
    at_mail = one(ev, event="refused", cmd="MAIL")
    assert (at_mail["reply"], at_mail["reason"], at_mail["sender"]) == ("552 5.3.4", "too_big", "big@remote.test")
    assert "qid" not in at_mail  # no transaction yet (Postfix's NOQUEUE)
    at_data = one(ev, event="refused", cmd="DATA")
    assert (at_data["reply"], at_data["reason"], at_data["sender"], at_data["rcpts"]) == (
        "552 5.3.4", "too_big", "big@remote.test", "1")
    assert re.fullmatch(r"[0-9a-f]{24}", at_data["qid"])
    assert not [e for e in ev if e["event"] == "accepted"]
    assert one(ev, event="disconnect")["messages"] == "0"


def test_all_recipients_over_quota_is_a_refusal_not_an_acceptance(srv):
    c = Client(srv.ports["smtp"])
    port = local_port(c)
    c.ehlo()
    for cmd, status in [("MAIL FROM:<q@remote.test>", "250 2.1.0"), ("RCPT TO:<full@example.org>", "250 2.1.5")]:
        assert c.cmd(cmd).status == status
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: q\r\n\r\nover quota\r\n.\r\n")
    assert c.reply().status == "552 5.2.2"
    assert c.cmd("QUIT").code == 221
    ev = session_events(srv, port)
    refused = one(ev, event="refused", cmd="DATA")
    assert (refused["reply"], refused["reason"], refused["sender"], refused["helo"]) == (
        "552 5.2.2", "mailbox_full", "q@remote.test", "client.test")
    assert not [e for e in ev if e["event"] == "accepted"]
    assert (one(ev, event="disconnect")["messages"], one(ev, event="disconnect")["refused"]) == ("0", "1")


def test_client_strings_cannot_forge_or_break_lines(srv):
    forged = "ts=2026-01-01T00:00:00.000 level=info pid=1 logger=fastmail event=accepted qid=FORGED0"
    tabbed = forged.replace(" ", "\t")  # HELO keeps its first word: tabs for a forgery that survives it
    breaks = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00", "\r", "\x1b[2J"]
    c = Client(srv.ports["smtp"])
    port = local_port(c)
    assert c.cmd(("HELO evil" + "".join(b + tabbed for b in breaks)).encode()).code == 250
    # a bare LF ends a command line (it cannot be inside one); a bare CR can
    assert c.cmd(b"MAIL FROM:<a@b.example> ENVID=x\r" + forged.encode()).status == "501 5.5.4"
    assert c.cmd(b"MAIL FROM:<a@b.example\x0c" + forged.encode() + b">").status == "501 5.1.3"
    assert c.cmd(b"NOOP " + b"z" * 3000).status == "250 2.0.0"
    assert c.cmd(b"HELO " + b"L" * 3000).code == 250  # a long client string is cut in the log
    assert c.cmd(b"MAIL FROM:<a@b.example>").status == "250 2.1.0"
    assert c.cmd(b"RCPT TO:<x\x0b" + forged.encode() + b"@example.org>").status == "501 5.1.3"
    assert c.cmd("QUIT").code == 221
    ev = session_events(srv, port)
    lines = log_lines(srv)
    marked = [line for line in lines if "FORGED0" in line]
    assert marked, "the client's strings are logged"
    sid = ev[0]["sid"]
    for line in marked:  # each is a whole line of this session, the forgery inside a quoted value
        assert line.startswith("ts=") and f" sid={sid} " in line, line
        assert parse(line)["event"] in ("refused", "disconnect") and parse(line).get("qid") != "FORGED0", line
    assert not [e for e in (parse(line) for line in lines) if e.get("qid") == "FORGED0"]
    assert all(line.isprintable() for line in marked)
    end = one(ev, event="disconnect")
    assert end["helo"] == "L" * log.MAX_VALUE + "...[2488 more]"
    assert len(max(lines, key=len)) < 4000


def test_auth_credentials_never_logged(srv):
    secrets = []
    c = Client(srv.ports["submission"])
    port = local_port(c)
    c.ehlo()
    wrong = "Wr0ng-pass-7f3a"
    plain_bad = base64.b64encode(f"\0alice@example.org\0{wrong}".encode()).decode()
    secrets += [wrong, plain_bad]
    assert c.cmd(f"AUTH PLAIN {plain_bad}").status == "535 5.7.8"
    assert c.cmd("AUTH PLAIN").code == 334
    bad_b64 = "!!" + base64.b64encode(b"\0alice@example.org\0Leak3d-secret").decode()
    secrets += ["Leak3d-secret", bad_b64]
    assert c.cmd(bad_b64).status == "501 5.5.2"
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(base64.b64encode(b"alice@example.org").decode()).code == 334
    login_bad = base64.b64encode(b"L0gin-wrong-99").decode()
    secrets += ["L0gin-wrong-99", login_bad]
    assert c.cmd(login_bad).status == "535 5.7.8"
    good = base64.b64encode(f"\0alice@example.org\0{PASSWORDS['alice@example.org']}".encode()).decode()
    secrets += [PASSWORDS["alice@example.org"], good]
    assert c.cmd(f"AUTH PLAIN {good}").status == "235 2.7.0"
    assert c.cmd("AUTH PLAIN AGJvYgBib2Itc2VjcmV0").status == "503 5.5.1"  # again: bob's, refused unread
    secrets += ["bob-secret", "AGJvYgBib2Itc2VjcmV0"]
    assert c.cmd("MAIL FROM:<alice@example.org>").status == "250 2.1.0"
    assert c.cmd("RCPT TO:<someone@remote.test>").status == "250 2.1.5"
    assert c.cmd("QUIT").code == 221
    ev = session_events(srv, port)
    assert [e["ok"] for e in ev if e["event"] == "auth"] == ["0", "0", "1"]
    assert one(ev, event="disconnect")["user"] == "alice@example.org"
    refused = [(e["cmd"], e["reply"]) for e in ev if e["event"] == "refused"]
    assert refused == [("AUTH", "535 5.7.8"), ("AUTH", "501 5.5.2"), ("AUTH", "535 5.7.8"), ("AUTH", "503 5.5.1")]
    text = srv.log.read_text(errors="replace")
    for secret in secrets:
        assert secret not in text, secret


def test_flood_of_bad_commands_ends_with_421(srv):
    c = Client(srv.ports["smtp"])
    port = local_port(c)
    verbs = [f"JUNK{chr(65 + i)}" for i in range(MAX_ERRORS - 1)]
    # a line that is no command (the verb is 1 to 12 letters) is refused without a cmd= of the client's bytes
    c.send("".join(f"{v} x\r\n" for v in verbs).encode() + b"9\x0bjunk\r\n" * 20)
    replies = c.until_eof(leftover_ok=True)
    assert [r.status for r in replies] == ["500 5.5.2"] * MAX_ERRORS + ["421 4.7.0"]
    ev = session_events(srv, port)
    assert [e.get("cmd") for e in ev if e["event"] == "refused"] == [*verbs, None]
    assert {e["reason"] for e in ev if e["event"] == "refused"} == {"unrecognized"}
    end = one(ev, event="disconnect")
    assert (end["end"], end["reply"], end["refused"], end["commands"]) == (
        "too_many_errors", "421 4.7.0", str(MAX_ERRORS), str(MAX_ERRORS))


def test_timeout_and_lost_connection(srv):
    c = Client(srv.ports["smtp"])
    port = local_port(c)
    c.ehlo()
    assert c.cmd("MAIL FROM:<slow@remote.test>").status == "250 2.1.0"
    assert c.reply().status == "421 4.4.2"  # after command_timeout
    ev = session_events(srv, port)
    end = one(ev, event="disconnect")
    assert (end["end"], end["reply"], end["commands"]) == ("timeout", "421 4.4.2", "2")

    c = Client(srv.ports["smtp"])
    port = local_port(c)
    c.ehlo()
    assert c.cmd("RCPT TO:<alice@example.org>").status == "503 5.5.1"
    c.close()
    end = one(session_events(srv, port), event="disconnect")
    assert (end["end"], end["after"], end["refused"]) == ("lost", "RCPT", "1")
    assert "reply" not in end


def test_lmtp_session_logged(srv):
    c = Client(srv.ports["lmtp"])
    port = local_port(c)
    assert c.cmd("LHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<l@remote.test>").status == "250 2.1.0"
    assert c.cmd("RCPT TO:<carol@example.org>").status == "250 2.1.5"
    assert c.cmd("RCPT TO:<ghost@example.org>").status == "550 5.1.1"
    assert c.cmd("RCPT TO:<far@remote.test>").status == "554 5.7.1"
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: lmtp\r\n\r\nhi\r\n.\r\n")
    qid = re.search(r"delivered as ([0-9a-f]+)", c.reply().last).group(1)
    assert c.cmd("QUIT").code == 221
    ev = session_events(srv, port)
    assert one(ev, event="connect")["listener"] == "lmtp"
    accepted = one(ev, event="accepted")
    assert (accepted["qid"], accepted["mode"], accepted["rcpts"], accepted["sender"]) == (qid, "lmtp", "1", "l@remote.test")
    assert one(ev, event="refused", rcpt="ghost@example.org")["qid"] == qid
    assert one(ev, event="refused", rcpt="far@remote.test")["reason"] == "relay_denied"


def test_refusal_lines_per_session_bounded(srv):
    """452 4.5.3 past max_recipients is no client error (the session goes on): a client repeating it gets
    one line per refusal up to MAX_REFUSAL_LINES, then only the count on the disconnect line."""
    from fastmail.server.smtp import MAX_REFUSAL_LINES

    extra = MAX_REFUSAL_LINES + 30
    c = Client(srv.ports["smtp"])
    port = local_port(c)
    c.ehlo()
    c.send(b"MAIL FROM:<many@remote.test>\r\n" + b"RCPT TO:<alice@example.org>\r\n" * (100 + extra) + b"QUIT\r\n")
    statuses = [r.status for r in c.until_eof()]
    assert statuses == ["250 2.1.0"] + ["250 2.1.5"] * 100 + ["452 4.5.3"] * extra + ["221 2.0.0"]
    ev = session_events(srv, port)
    refused = [e for e in ev if e["event"] == "refused"]
    assert len(refused) == MAX_REFUSAL_LINES and {e["reason"] for e in refused} == {"too_many_rcpts"}
    assert refused[0]["arg"] == "TO:<alice@example.org>" and refused[0]["qid"]  # refused before it is parsed
    end = one(ev, event="disconnect")
    assert (end["refused"], end["commands"], end["end"]) == (str(extra), str(2 + 100 + extra + 1), "quit")
