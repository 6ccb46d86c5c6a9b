"""`fastmail domain del` against a running server: a domain with nothing in it goes, and from the next
command on its mail is refused like any other domain's (the workers read the index live, no reload); a
domain that still has users or aliases stays, with the reason on stderr, and its mail keeps flowing."""

from __future__ import annotations

import orjson
import pytest

from .conftest import Server, make_server
from .wire import Client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = make_server(tmp_path_factory.mktemp("domain-del"), workers=1)
    s.start()
    yield s
    s.stop()
    s.kill_tree()


def domains(srv: Server) -> list[str]:
    return orjson.loads(srv.cli("domain", "list", "--json").stdout)


def rcpt(srv: Server, address: str, port: str = "smtp") -> str:
    """The status ("250 2.1.5", "550 5.1.1" ...) of RCPT TO:<address> from an unauthenticated client."""
    c = Client(srv.ports[port])
    try:
        assert c.cmd("LHLO client.test" if port == "lmtp" else "EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<x@remote.test>").code == 250
        return c.cmd(f"RCPT TO:<{address}>").status
    finally:
        c.close()


def test_an_empty_domain_is_deleted_and_its_mail_refused(srv):
    srv.cli("domain", "add", "empty.test")
    assert "empty.test" in domains(srv)
    assert rcpt(srv, "anyone@empty.test") == "550 5.1.1"  # ours, but no such user

    res = srv.cli("domain", "del", "Empty.TEST")  # names are case-insensitive
    assert (res.returncode, res.stdout, res.stderr) == (0, b"domain Empty.TEST deleted\n", b"")
    assert domains(srv) == ["example.org"]
    # no longer ours: mail to it is relaying now, refused without AUTH, on SMTP and LMTP alike
    assert rcpt(srv, "anyone@empty.test") == "554 5.7.1"
    assert rcpt(srv, "anyone@empty.test", "lmtp") == "554 5.7.1"
    assert rcpt(srv, "alice@example.org") == "250 2.1.5"  # the other domain is untouched

    again = srv.cli("domain", "del", "empty.test", check=False)
    assert again.returncode == 1 and again.stderr == b"fastmail: error: no domain empty.test\n"
    srv.cli("domain", "add", "empty.test")  # and it can come back
    assert rcpt(srv, "anyone@empty.test") == "550 5.1.1"
    srv.cli("domain", "del", "empty.test")


def test_a_domain_with_users_is_refused_until_they_are_gone(srv):
    srv.cli("domain", "add", "busy.test")
    srv.cli("user", "add", "dora@busy.test", "--password-stdin", input=b"dora-secret\n")
    res = srv.cli("domain", "del", "busy.test", check=False)
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr == b"fastmail: error: domain busy.test still has users; delete them first\n"
    assert "busy.test" in domains(srv)
    assert rcpt(srv, "dora@busy.test") == "250 2.1.5"  # nothing changed

    srv.cli("user", "del", "dora@busy.test")
    srv.cli("domain", "del", "busy.test")
    assert "busy.test" not in domains(srv)
    assert rcpt(srv, "dora@busy.test") == "554 5.7.1"


def test_a_domain_with_aliases_is_refused_until_they_are_gone(srv):
    """Aliases are keyed by their address; deleting the domain under them would leave them behind, to come
    back to life if the domain is ever added again (a catch-all, too)."""
    srv.cli("domain", "add", "alias.test")
    srv.cli("alias", "add", "@alias.test", "alice@example.org")
    srv.cli("alias", "add", "sales@alias.test", "bob@example.org")
    assert rcpt(srv, "whoever@alias.test") == "250 2.1.5"

    res = srv.cli("domain", "del", "alias.test", check=False)
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr == b"fastmail: error: domain alias.test still has aliases; delete them first\n"
    assert "alias.test" in domains(srv)
    assert rcpt(srv, "whoever@alias.test") == "250 2.1.5"

    srv.cli("alias", "del", "@alias.test")
    assert srv.cli("domain", "del", "alias.test", check=False).returncode == 1  # sales@ is still there
    srv.cli("alias", "del", "sales@alias.test")
    srv.cli("domain", "del", "alias.test")
    aliases = orjson.loads(srv.cli("alias", "list", "--json").stdout)
    assert not any(a.endswith("@alias.test") for a in aliases)
    assert rcpt(srv, "whoever@alias.test") == "554 5.7.1"
