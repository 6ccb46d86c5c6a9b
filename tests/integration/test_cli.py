"""The `fastmail` command as an operator uses it: clear errors, exit codes, --json."""

from __future__ import annotations

import smtplib

import orjson

from .conftest import make_server
from .wire import insecure_tls_context


def test_accounts_lifecycle_and_errors(tmp_path):
    srv = make_server(tmp_path, workers=1)
    assert orjson.loads(srv.cli("domain", "list", "--json").stdout) == ["example.org"]
    users = {u["address"]: u for u in orjson.loads(srv.cli("user", "list", "--json").stdout)}
    assert set(users) == {"alice@example.org", "bob@example.org", "carol@example.org"}
    assert all("hash" not in u for u in users.values())
    stored_hash = srv.cli("user", "list").stdout
    assert b"argon2" not in stored_hash

    # errors: message on stderr, exit 1, nothing changed
    for args, text in [
        (("domain", "add", "example.org"), b"exists"),
        (("user", "add", "x@elsewhere.test", "--password", "p"), b"not ours"),
        (("user", "del", "nobody@example.org"), b"no user"),
        (("domain", "del", "example.org"), b"still has users"),
        (("alias", "add", "x@elsewhere.test", "a@example.org"), b"not ours"),
        (("queue", "show", "0000"), b"no queue entry"),
        (("message", "show", "alice@example.org", "INBOX", "9"), b"no message 9"),
        (("mailbox", "list", "nobody@example.org"), b"no user"),
    ]:
        res = srv.cli(*args, check=False)
        assert res.returncode == 1 and res.stderr.startswith(b"fastmail: error: ") and text in res.stderr, (args, res)
    res = srv.cli("user", "frobnicate", check=False)
    assert res.returncode == 2

    # generated password is printed once; quota; passwd; alias and catch-all listing
    out = srv.cli("user", "add", "dave@example.org", "--quota", "1000").stdout
    assert b"password: " in out
    srv.cli("user", "passwd", "dave@example.org", "--password-stdin", input=b"new-pass\n")
    srv.cli("user", "quota", "dave@example.org", "2000")
    dave = [u for u in orjson.loads(srv.cli("user", "list", "--json").stdout) if u["address"] == "dave@example.org"][0]
    assert dave["quota"] == 2000
    srv.cli("alias", "add", "@example.org", "dave@example.org")
    aliases = orjson.loads(srv.cli("alias", "list", "--json").stdout)
    assert aliases["@example.org"] == ["dave@example.org"]
    assert aliases["team@example.org"] == ["alice@example.org", "bob@example.org"]
    srv.cli("alias", "del", "@example.org")
    srv.cli("user", "del", "dave@example.org")
    boxes = orjson.loads(srv.cli("mailbox", "list", "alice@example.org", "--json").stdout)
    assert {b["name"]: b["special"] for b in boxes} == {
        "INBOX": None, "Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
        "Archive": "\\Archive"}


def test_message_and_queue_inspection(server):
    msg = b"Subject: cli\r\n\r\nhello cli\r\n"
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail("x@remote.test", ["carol@example.org"], msg)
    listing = orjson.loads(server.cli("message", "list", "carol@example.org", "INBOX", "--json").stdout)
    assert [m["uid"] for m in listing] == [1]
    raw = server.cli("message", "show", "carol@example.org", "INBOX", "1").stdout
    assert raw.startswith(b"Received: from ") and raw.endswith(msg)
    assert orjson.loads(server.cli("queue", "list", "--json").stdout) == []
    assert b"queue is empty" in server.cli("queue", "list").stdout
    # submission to a remote address waits in the queue; show --raw gives the message; delete removes it
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=insecure_tls_context())
        s.login("carol@example.org", "carol-secret")
        s.sendmail("carol@example.org", ["far@remote.test"], msg, rcpt_options=["NOTIFY=FAILURE"])
    (entry,) = orjson.loads(server.cli("queue", "list", "--json").stdout)
    assert entry["sender"] == "carol@example.org" and entry["rcpts"][0]["to"] == "far@remote.test"
    assert entry["rcpts"][0]["notify"] == "FAILURE"
    assert server.cli("queue", "show", entry["id"], "--raw").stdout.endswith(msg)
    server.cli("queue", "delete", entry["id"])
    assert orjson.loads(server.cli("queue", "list", "--json").stdout) == []


def test_check_config(tmp_path):
    srv = make_server(tmp_path, workers=1)
    assert b": OK (" in srv.cli("check-config").stdout
    listing = srv.cli("check-config", "--list").stdout
    assert b"smtp.max_recipients" in listing and b"server.data_dir" in listing
