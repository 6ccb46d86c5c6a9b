"""A full disk: new mail gets 452 4.3.1 (SMTP, LMTP) and NO [UNAVAILABLE] (IMAP APPEND), nothing accepted
is lost, and mail flows again by itself once space is back — no restart.  The data directory is a small
tmpfs (needs root to mount; skipped otherwise)."""

from __future__ import annotations

import imaplib
import os
import smtplib
import subprocess
from pathlib import Path

import pytest

from fastmail.store import fsck
from fastmail.store.store import Store

from .conftest import PASSWORDS, Server, make_server, poll


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "data"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Write until the filesystem refuses: the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1 << 9):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)


def _msg(i: int, size: int) -> bytes:
    line = (f"message {i} " + "x" * 70 + "\r\n").encode()
    return f"Subject: full {i}\r\nMessage-ID: <full-{i}@remote.test>\r\n\r\n".encode() + line * (size // len(line))



def _send_until_refused(srv: Server, numbers: range, accepted: list[bytes]) -> smtplib.SMTPDataError | None:
    """900 kB messages over one session until one is refused (returned); the accepted ones are appended.
    The size is not declared: the writes must find the disk full (a SIZE= beyond the free space is refused
    at MAIL already: test_size_beyond_the_free_space_gets_452_at_mail)."""
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.ehlo()
        s.esmtp_features.pop("size", None)
        for i in numbers:
            msg = _msg(i, 900_000)
            try:
                s.sendmail("a@remote.test", ["alice@example.org"], msg)
            except smtplib.SMTPDataError as e:
                return e
            accepted.append(msg)
    return None

def test_disk_full_answers_452_keeps_what_was_accepted_and_recovers(small_disk, tmp_path):
    srv = make_server(tmp_path, workers=1)
    assert srv.data == small_disk
    srv.start()
    try:
        accepted: list[bytes] = []
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            s.sendmail("a@remote.test", ["alice@example.org"], _msg(0, 2000))
            accepted.append(_msg(0, 2000))
        filler = small_disk / "filler"
        _fill(filler)

        # Full: messages are refused with 452 4.3.1 once the worker's preallocated runway is used up too.
        refused = _send_until_refused(srv, range(1, 40), accepted)
        assert refused is not None, "the disk never filled"
        assert refused.smtp_code == 452 and refused.smtp_error.startswith(b"4.3.1 "), refused

        # LMTP says the same, per recipient; IMAP APPEND says NO [UNAVAILABLE] (not OVERQUOTA: no quota here)
        with smtplib.LMTP("127.0.0.1", srv.ports["lmtp"], timeout=30) as lm:
            lm.ehlo_or_helo_if_needed()
            lm.esmtp_features.pop("size", None)  # undeclared, as above
            with pytest.raises(smtplib.SMTPDataError) as exc:
                lm.sendmail("a@remote.test", ["bob@example.org"], _msg(100, 900_000))
            assert exc.value.smtp_code == 452 and exc.value.smtp_error.startswith(b"4.3.1 ")
        with imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30) as m:
            m.login("alice@example.org", PASSWORDS["alice@example.org"])
            typ, data = m.append("INBOX", None, None, _msg(101, 900_000))
            assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data

        # A little space back (less than the messages need): some fit, then 452 again — whichever write
        # runs out first, the segment's or LMDB's.
        os.truncate(filler, filler.stat().st_size - 3 * 1024 * 1024)
        refused = _send_until_refused(srv, range(300, 340), accepted)
        assert refused is not None and refused.smtp_code == 452, refused

        # Nothing accepted is lost: every 250 reads back.
        stored = [m.split(b"\r\n", 1)[1] if m.startswith(b"Received: ") else m for m in _bodies(srv)]
        assert len(stored) == len(accepted)
        for raw, msg in zip(stored, accepted, strict=True):
            assert raw.endswith(msg)

        # Space back: the same worker accepts again, no restart.
        filler.unlink()
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            s.sendmail("a@remote.test", ["alice@example.org"], _msg(200, 900_000))
        with imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30) as m:
            m.login("alice@example.org", PASSWORDS["alice@example.org"])
            typ, data = m.append("INBOX", None, None, _msg(201, 1000))
            assert typ == "OK", data
        assert len(_bodies(srv)) == len(accepted) + 2
        code = srv.cli("fsck", check=False).returncode
        assert code == 0  # the refused attempts left no garbage that counts
    finally:
        srv.stop()
        srv.kill_tree()


def _bodies(srv) -> list[bytes]:
    s = Store(srv.data, map_size=1 << 30)
    try:
        mid = s.mailbox_id(s.get_user("alice@example.org")["id"], "INBOX")
        return [s.read_message(mid, m["uid"]) for m in s.list_messages(mid)]
    finally:
        s.close()


def test_map_full_grows_the_map_under_commit_batch(tmp_path):
    """LMDB's map full is not a full disk: the store grows the map and the batch goes through."""
    from fastmail.store.store import Incoming, new_qid

    s = Store(tmp_path / "d", map_size=1 << 20)
    s.add_domain("example.org")
    u = s.add_user("a@example.org", "h")
    for i in range(30):
        s.commit_batch([Incoming(qid=new_qid(), raw=_msg(i, 500), sender="", local=[u],
                                 meta={"v": 1, "pad": "y" * 20_000}) for _ in range(5)])
    assert s.env.info()["map_size"] > 1 << 20
    assert len(s.list_messages(s.mailbox_id(u, "INBOX"))) == 150
    s.close()
    s = Store(tmp_path / "d", map_size=1 << 20)
    assert fsck.check(s).clean
    s.close()


def test_size_beyond_the_free_space_gets_452_at_mail(small_disk, tmp_path):
    """RFC 1870 §6.1: a declared SIZE larger than the data folder's free space is refused at MAIL with
    452 4.3.1 (SMTP and LMTP), before any data is sent; a SIZE that fits is taken, and so is the large one
    once the space is back."""
    srv = make_server(tmp_path, workers=1)
    assert srv.data == small_disk
    srv.start()
    try:
        def mail(port: int, size: int, lmtp: bool = False) -> tuple[int, bytes]:
            cls = smtplib.LMTP if lmtp else smtplib.SMTP
            with cls("127.0.0.1", port, timeout=30) as s:
                s.ehlo_or_helo_if_needed()
                return s.mail("a@remote.test", [f"SIZE={size}"])

        assert mail(srv.ports["smtp"], 900_000)[0] == 250
        filler = small_disk / "filler"
        _fill(filler)
        os.truncate(filler, filler.stat().st_size - 512 * 1024)  # about 512 KiB free
        st = os.statvfs(small_disk)
        free = st.f_bavail * st.f_frsize
        assert 256 * 1024 < free < 900_000, free
        for port, lmtp in ((srv.ports["smtp"], False), (srv.ports["lmtp"], True)):
            assert mail(port, 900_000, lmtp) == (452, b"4.3.1 Insufficient system storage")
            assert mail(port, free + 1, lmtp)[0] == 452
            assert mail(port, 100_000, lmtp)[0] == 250  # what fits is taken
        with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
            s.starttls()
            s.login("alice@example.org", PASSWORDS["alice@example.org"])
            assert s.mail("alice@example.org", ["SIZE=900000"]) == (452, b"4.3.1 Insufficient system storage")
        def refused() -> list[str]:
            return [x for x in srv.log.read_text().splitlines() if "event=refused" in x and " cmd=MAIL " in x]

        assert poll(lambda: len(refused()) >= 5)  # the worker writes its log lines every 0.2 s
        assert len(refused()) == 5
        assert all('reply="452 4.3.1" reason=insufficient_storage' in x for x in refused())
        filler.unlink()
        assert mail(srv.ports["smtp"], 900_000)[0] == 250
        assert mail(srv.ports["lmtp"], 900_000, True)[0] == 250
    finally:
        srv.stop()
        srv.kill_tree()
