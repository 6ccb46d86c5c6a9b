"""Submission with a real third-party client, swaks (Debian's): STARTTLS + AUTH PLAIN/LOGIN on the
submission port, AUTH over implicit TLS (port 465 style), local and remote recipients, and the refusals."""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from .conftest import PASSWORDS, Server
from .wire import HOST, module_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # `make test` installs swaks (Makefile: system-deps); a missing client is a failure, not a skip.
    if shutil.which("swaks") is None:
        pytest.fail("swaks is not installed: run the tests with `make test`, which installs it")
    yield from module_server(tmp_path_factory, "swaks")


def swaks(srv: Server, port: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["swaks", "--server", HOST, "--port", str(srv.ports[port]), "--helo", "client.test",
           "--timeout", "20", *args]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def auth(user: str, password: str | None = None, mech: str = "PLAIN") -> list[str]:
    return ["--auth", mech, "--auth-user", user, "--auth-password", password or PASSWORDS[user]]


def message(tok: str) -> list[str]:
    return ["--header", f"Subject: {tok}", "--body", f"body {tok}\n"]


def inbox_with(srv: Server, user: str, tok: str) -> list[bytes]:
    listing = json.loads(srv.cli("message", "list", user, "INBOX", "--json").stdout)
    raws = [srv.cli("message", "show", user, "INBOX", str(m["uid"])).stdout for m in listing]
    return [r for r in raws if tok.encode() in r]


def inbox_count(srv: Server, user: str) -> int:
    return len(json.loads(srv.cli("message", "list", user, "INBOX", "--json").stdout))


def queued(srv: Server, qid: str) -> dict:
    [entry] = [e for e in json.loads(srv.cli("queue", "list", "--json").stdout) if e["id"] == qid]
    return entry


def qid_from(transcript: str) -> str:
    lines = [line for line in transcript.splitlines() if "queued as " in line]
    assert len(lines) == 1, transcript
    assert "250 2.0.0 Ok: queued as " in lines[0], lines[0]
    return lines[0].rsplit(" ", 1)[1]


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


# -- successful submission ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_starttls_auth_local_and_remote(srv, mech):
    tok = uuid.uuid4().hex
    out = ok(swaks(srv, "submission", "--tls", *auth("alice@example.org", mech=mech),
                   "--from", "alice@example.org", "--to", "bob@example.org,far@remote.test", *message(tok)))
    # swaks marks the lines sent and received over TLS with "~"
    assert " -> STARTTLS" in out and "<-  220 2.0.0 Ready to start TLS" in out
    assert f" ~> AUTH {mech}" in out and "<~  235 2.7.0 Authentication successful" in out
    qid = qid_from(out)
    [raw] = inbox_with(srv, "bob@example.org", tok)
    assert f" with ESMTPSA id {qid}".encode() in raw
    entry = queued(srv, qid)
    assert entry["sender"] == "alice@example.org" and entry["params"]["auth"] == "alice@example.org"
    assert [r["to"] for r in entry["rcpts"]] == ["far@remote.test"]


def test_implicit_tls_auth_local_and_remote(srv):
    tok = uuid.uuid4().hex
    out = ok(swaks(srv, "submissions", "--tls-on-connect", *auth("carol@example.org"),
                   "--from", "carol@example.org", "--to", "alice@example.org,x@remote.test",
                   *message(tok)))
    assert "<~  220 mx.example.org ESMTP fastmail" in out  # the greeting already came over TLS
    assert "STARTTLS" not in out.split("<~  250 HELP")[0].split("EHLO")[1]  # not offered again
    qid = qid_from(out)
    [raw] = inbox_with(srv, "alice@example.org", tok)
    assert f" with ESMTPSA id {qid}".encode() in raw
    assert [r["to"] for r in queued(srv, qid)["rcpts"]] == ["x@remote.test"]


def test_alias_owned_by_the_user_may_be_the_sender(srv):
    """postmaster@ is an alias of alice: sender_login_match lets alice use it, but not bob."""
    tok = uuid.uuid4().hex
    out = ok(swaks(srv, "submissions", "--tls-on-connect", *auth("alice@example.org"),
                   "--from", "postmaster@example.org", "--to", "carol@example.org", *message(tok)))
    assert "<~  250 2.1.0 Sender OK" in out
    assert len(inbox_with(srv, "carol@example.org", tok)) == 1


# -- refusals ------------------------------------------------------------------------------------------------


def test_wrong_password_is_refused(srv):
    before = inbox_count(srv, "bob@example.org")
    res = swaks(srv, "submission", "--tls", *auth("alice@example.org", "not-the-password"),
                "--from", "alice@example.org", "--to", "bob@example.org")
    assert res.returncode != 0
    assert "<~* 535 5.7.8 Authentication credentials invalid" in res.stdout
    assert "MAIL FROM" not in res.stdout
    # Unknown user: the same answer (no user enumeration).
    res = swaks(srv, "submissions", "--tls-on-connect", *auth("nobody@example.org", "x"),
                "--from", "nobody@example.org", "--to", "bob@example.org")
    assert res.returncode != 0 and "<~* 535 5.7.8 Authentication credentials invalid" in res.stdout
    assert inbox_count(srv, "bob@example.org") == before


def test_sender_not_owned_is_refused(srv):
    before = inbox_count(srv, "carol@example.org")
    res = swaks(srv, "submission", "--tls", *auth("bob@example.org", mech="LOGIN"),
                "--from", "alice@example.org", "--to", "carol@example.org")
    assert res.returncode != 0
    assert "<~  235 2.7.0 Authentication successful" in res.stdout
    assert "<~* 553 5.7.1 Sender address not owned by authenticated user" in res.stdout
    res = swaks(srv, "submissions", "--tls-on-connect", *auth("bob@example.org"),
                "--from", "someone@remote.test", "--to", "far@remote.test")
    assert res.returncode != 0 and "<~* 553 5.7.1 " in res.stdout
    assert inbox_count(srv, "carol@example.org") == before


def test_auth_before_starttls_on_submission(srv):
    # swaks only authenticates when AUTH is advertised, and it is not before TLS ...
    res = swaks(srv, "submission", *auth("alice@example.org"), "--from", "alice@example.org",
                "--to", "bob@example.org")
    assert res.returncode != 0
    ehlo = res.stdout.split(" -> EHLO client.test")[1]
    assert "250-STARTTLS" in ehlo and "AUTH" not in ehlo.split(" -> ")[0]
    # ... so without --auth it gets to MAIL, which is refused until STARTTLS;
    res = swaks(srv, "submission", "--from", "alice@example.org", "--to", "bob@example.org")
    assert res.returncode != 0
    assert "<** 530 5.7.0 Must issue a STARTTLS command first" in res.stdout
    # and an AUTH sent anyway gets the same 530 5.7.0 (with smtplib, which sends what it is told to).
    with smtplib.SMTP(HOST, srv.ports["submission"], local_hostname="client.test", timeout=15) as s:
        s.ehlo()
        assert not s.has_extn("auth")
        assert s.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUub3JnAGFsaWNlLXNlY3JldA==") == (
            530, b"5.7.0 Must issue a STARTTLS command first")
        assert s.docmd("AUTH", "LOGIN")[0] == 530
        assert s.mail("alice@example.org")[0] == 530


def test_mail_before_auth_over_tls_is_refused(srv):
    res = swaks(srv, "submissions", "--tls-on-connect", "--from", "alice@example.org", "--to", "bob@example.org")
    assert res.returncode != 0
    assert "<~* 530 5.7.0 Authentication required" in res.stdout


def test_port_25_does_not_relay_for_swaks(srv):
    res = swaks(srv, "smtp", "--from", "alice@example.org", "--to", "far@remote.test")
    assert res.returncode != 0
    assert "<** 554 5.7.1 Relay access denied" in res.stdout
    # and AUTH is not offered there, even after STARTTLS
    res = swaks(srv, "smtp", "--tls", *auth("alice@example.org"), "--from", "alice@example.org",
                "--to", "far@remote.test")
    assert res.returncode != 0 and "AUTH" not in res.stdout.split("<~  250 HELP")[0].split(" ~> EHLO")[1]
    # Whatever is queued came from an authenticated session.
    assert all(e["params"]["auth"] for e in json.loads(srv.cli("queue", "list", "--json").stdout))
