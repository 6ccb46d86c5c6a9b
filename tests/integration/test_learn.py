"""Issue #7, learning from IMAP moves (fastmail.hygiene.learn): `fastmail serve` with `rspamd.learn` on and
the real rspamd controller of tests/integration/filters.py; imaplib moves and copies messages; rspamd's own
log says what it learned ("learned message as spam: <Message-ID>").

- MOVE and COPY into Junk teach spam; MOVE out of Junk into INBOX teaches ham; out of Junk into Trash, and
  between ordinary folders, teach nothing;
- the IMAP command does not wait for rspamd: a controller that is down, or refuses the password, leaves
  every MOVE answered OK and the failure logged.
"""

from __future__ import annotations

import email.utils
import imaplib
import random
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.filters import CONTROLLER_PASSWORD, Rspamd, free_port

from .conftest import PASSWORDS, Server, make_server

pytest_plugins = ("tests.integration.filters",)
pytestmark = pytest.mark.integration

WORDS = (b"Dear friend, your parcel delivery was suspended because of unpaid customs duties and storage fees. "
         b"Confirm your address and pay the small release charge with your card details today, otherwise the "
         b"package returns to the sender and the fees are doubled next week.\r\n")


def start(tmp: Path, **rspamd_settings: object) -> Server:
    table = "".join(f"{k} = {v!r}\n".replace("'", '"').replace("True", "true") for k, v in rspamd_settings.items())
    srv = make_server(tmp, workers=1, extra="\n[rspamd]\n" + table)
    srv.start()
    return srv


@pytest.fixture
def learning(tmp_path: Path, rspamd_service: Rspamd) -> Iterator[Server]:
    srv = start(tmp_path, learn=True, controller_url=rspamd_service.controller_url, password=CONTROLLER_PASSWORD,
                timeout=120.0)  # a loaded machine: rspamd may take long, but it answers
    yield srv
    srv.stop()
    srv.kill_tree()


def deliver(srv: Server, subject: str) -> str:
    """A message with enough words for the classifier to alice's INBOX; its Message-ID."""
    mid = f"{time.monotonic_ns()}.{subject.replace(' ', '-')}@sender.test"
    raw = (f"From: Bob <bob@sender.test>\r\nTo: Alice <alice@example.org>\r\nSubject: {subject}\r\n"
           f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{mid}>\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\n").encode() + WORDS + unique_words(mid)
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as c:
        c.sendmail("bob@sender.test", ["alice@example.org"], raw)
    return mid


def unique_words(seed: str) -> bytes:
    """A sentence only this message has: rspamd refuses to learn a text it has learned ("already learned")."""
    rng = random.Random(seed)
    return (" ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
                     for _ in range(30)) + ".\r\n").encode()


def login(srv: Server) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30)
    m.login("alice@example.org", PASSWORDS["alice@example.org"])
    return m


def uid_of(m: imaplib.IMAP4, mid: str) -> bytes:
    typ, data = m.uid("SEARCH", "HEADER", "Message-ID", mid)
    assert typ == "OK", data
    [uid] = data[0].split()
    return bytes(uid)


def transfer(m: imaplib.IMAP4, verb: str, source: str, mid: str, dest: str) -> None:
    typ, _ = m.select(source)
    assert typ == "OK"
    typ, data = m.uid(verb, uid_of(m, mid).decode(), dest)
    assert typ == "OK", data


def learned(rspamd_service: Rspamd, what: str, mid: str) -> bool:
    return f"learned message as {what}: {mid}" in rspamd_service.log.read_text()


def wait_for(check: object, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def events(srv: Server, event: str) -> list[str]:
    return [line for line in srv.log.read_text().splitlines() if f" event={event} " in line + " "]


def test_moves_into_and_out_of_junk_teach_rspamd(learning: Server, rspamd_service: Rspamd) -> None:
    moved, copied, trashed, filed = (deliver(learning, s) for s in ("moved", "copied", "trashed", "filed"))
    with login(learning) as m:
        transfer(m, "MOVE", "INBOX", moved, "Junk")
        transfer(m, "COPY", "INBOX", copied, "Junk")
        transfer(m, "MOVE", "INBOX", trashed, "Junk")
        transfer(m, "MOVE", "INBOX", filed, "Archive")  # between ordinary folders: nothing
        assert wait_for(lambda: all(learned(rspamd_service, "spam", x) for x in (moved, copied, trashed)))
        transfer(m, "MOVE", "Junk", trashed, "Trash")  # junk deleted: says nothing about it
        transfer(m, "MOVE", "Junk", moved, "INBOX")  # a false positive: ham
        assert wait_for(lambda: learned(rspamd_service, "ham", moved))
    assert wait_for(lambda: len(events(learning, "learned")) == 4)  # workers flush their log on a timer
    time.sleep(0.5)  # anything else would have been queued before the ham above
    lines = events(learning, "learned")
    assert sorted(re.search(r"learn_as=(\w+)", line).group(1) for line in lines) == [  # type: ignore[union-attr]
        "ham", "spam", "spam", "spam"]
    assert not learned(rspamd_service, "ham", trashed)
    assert not any(learned(rspamd_service, what, filed) for what in ("spam", "ham"))


def test_a_controller_that_is_down_does_not_hold_up_imap(tmp_path: Path) -> None:
    srv = start(tmp_path, learn=True, controller_url=f"http://127.0.0.1:{free_port()}", password="x")
    try:
        mid = deliver(srv, "unreachable")
        with login(srv) as m:
            transfer(m, "MOVE", "INBOX", mid, "Junk")
            typ, data = m.select("Junk")
            assert (typ, data) == ("OK", [b"1"])
        assert wait_for(lambda: events(srv, "learn_failed"))
        [line] = events(srv, "learn_failed")
        assert "learn_as=spam" in line and "Connection refused" in line
    finally:
        srv.stop()
        srv.kill_tree()


def test_a_refused_password_is_logged(tmp_path: Path, rspamd_service: Rspamd) -> None:
    srv = start(tmp_path, learn=True, controller_url=rspamd_service.controller_url, password="wrong")
    try:
        mid = deliver(srv, "wrong password")
        with login(srv) as m:
            transfer(m, "MOVE", "INBOX", mid, "Junk")
        assert wait_for(lambda: any("event=rspamd_learn_refused" in line
                                    for line in srv.log.read_text().splitlines()))
        assert not learned(rspamd_service, "spam", mid)
    finally:
        srv.stop()
        srv.kill_tree()


def test_learning_is_off_by_default(tmp_path: Path, rspamd_service: Rspamd) -> None:
    srv = start(tmp_path, controller_url=rspamd_service.controller_url, password=CONTROLLER_PASSWORD)
    try:
        mid = deliver(srv, "not learned")
        with login(srv) as m:
            transfer(m, "MOVE", "INBOX", mid, "Junk")
        time.sleep(1.0)
        assert not learned(rspamd_service, "spam", mid)
        assert not events(srv, "learned") and not events(srv, "learn_failed")
    finally:
        srv.stop()
        srv.kill_tree()
