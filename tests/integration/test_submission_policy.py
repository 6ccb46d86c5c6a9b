"""smtp.sender_login_match on the submission port (STARTTLS, smtplib): on (the default) an authenticated
user's MAIL FROM must be one of their addresses (553 5.7.1 otherwise); off, any MAIL FROM is taken."""

from __future__ import annotations

import smtplib
import uuid

import pytest

from .conftest import PASSWORDS, Server, make_server
from .wire import HOST, TIMEOUT, insecure_tls_context

pytestmark = pytest.mark.integration


def _server(tmp_path_factory: pytest.TempPathFactory, name: str, extra: str = ""):
    srv = make_server(tmp_path_factory.mktemp(name), workers=1, extra=extra)
    srv.start()
    yield srv
    srv.stop()
    srv.kill_tree()


@pytest.fixture(scope="module")
def match_on(tmp_path_factory):
    yield from _server(tmp_path_factory, "login-match-on")


@pytest.fixture(scope="module")
def match_off(tmp_path_factory):
    # `extra` goes into the [smtp] table of the test config (conftest.Server)
    yield from _server(tmp_path_factory, "login-match-off", "sender_login_match = false\n")


def _submit(srv: Server, user: str, mail_from: str, to: str, token: str) -> dict:
    msg = f"From: <{mail_from}>\r\nTo: <{to}>\r\nSubject: {token}\r\n\r\nbody {token}\r\n".encode()
    with smtplib.SMTP(HOST, srv.ports["submission"], timeout=TIMEOUT) as s:
        s.starttls(context=insecure_tls_context())
        s.login(user, PASSWORDS[user])
        return s.sendmail(mail_from, [to], msg)


def _inbox_with(srv: Server, user: str, token: str) -> list[bytes]:
    return [m for m in srv.messages(user) if token.encode() in m]


FOREIGN_SENDERS = ["alice@example.org", "someone@remote.test"]  # another local user's address; a remote one


@pytest.mark.parametrize("mail_from", FOREIGN_SENDERS)
def test_on_by_default_a_foreign_mail_from_is_refused(match_on, mail_from):
    token = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPSenderRefused) as exc:
        _submit(match_on, "bob@example.org", mail_from, "carol@example.org", token)
    assert exc.value.smtp_code == 553
    assert exc.value.smtp_error == b"5.7.1 Sender address not owned by authenticated user"
    assert _inbox_with(match_on, "carol@example.org", token) == []


def test_on_the_users_own_address_is_taken(match_on):
    token = uuid.uuid4().hex
    assert _submit(match_on, "bob@example.org", "bob@example.org", "carol@example.org", token) == {}
    assert len(_inbox_with(match_on, "carol@example.org", token)) == 1


@pytest.mark.parametrize("mail_from", FOREIGN_SENDERS)
def test_off_a_foreign_mail_from_is_taken_and_delivered(match_off, mail_from):
    token = uuid.uuid4().hex
    assert _submit(match_off, "bob@example.org", mail_from, "carol@example.org", token) == {}
    (raw,) = _inbox_with(match_off, "carol@example.org", token)
    assert b" with ESMTPSA id " in raw  # it came in authenticated, over the submission port
    assert raw.endswith(f"Subject: {token}\r\n\r\nbody {token}\r\n".encode())


def test_off_authentication_is_still_required_to_relay(match_off):
    """The switch only lifts the MAIL FROM check: without AUTH, submission still refuses."""
    with smtplib.SMTP(HOST, match_off.ports["submission"], timeout=TIMEOUT) as s:
        s.starttls(context=insecure_tls_context())
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            s.sendmail("alice@example.org", ["carol@example.org"], b"Subject: x\r\n\r\nx\r\n")
    assert (exc.value.smtp_code, exc.value.smtp_error) == (530, b"5.7.0 Authentication required")
