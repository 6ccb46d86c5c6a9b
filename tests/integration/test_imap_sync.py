"""Offline sync tools against the real server: mbsync (isync) and offlineimap3 each fetch an account with
several folders into a local Maildir, push local flag changes, deletions and new local mail back, and a
second client (imaplib) sees the result; changes made on the server come down on the next run."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest

from .conftest import Server
from .wire import HOST, TIMEOUT, module_server

PASSWORD = "sync-secret"
USERS = ["mbsync@example.org", "offlineimap@example.org"]


def _setup(s: Server) -> None:
    for u in USERS:
        s.cli("user", "add", u, "--password-stdin", input=PASSWORD.encode() + b"\n")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    yield from module_server(tmp_path_factory, "imapsync", _setup)


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is a test dependency (make system-deps)"
    return path


def _seed(srv: Server, user: str) -> None:
    """INBOX with three messages, Work/Reports with one (made over IMAP), Sent empty."""
    for i in range(3):
        raw = f"From: x@remote.test\r\nTo: {user}\r\nSubject: inbox {i}\r\nMessage-ID: <i{i}.{user}>\r\n\r\nbody {i}\r\n"
        with smtplib.SMTP(HOST, srv.ports["smtp"], timeout=TIMEOUT) as s:
            s.sendmail("x@remote.test", [user], raw.encode())
    m = _imap(srv, user)
    assert m.create("Work/Reports")[0] == "OK"
    assert m.append("Work/Reports", "(\\Flagged)", None, b"Subject: report\r\nMessage-ID: <r.1>\r\n\r\nQ1\r\n")[0] == "OK"
    m.logout()


def _imap(srv: Server, user: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4(HOST, srv.ports["imap"], timeout=TIMEOUT)
    m.login(user, PASSWORD)
    return m


def _maildir_files(folder: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (folder / sub).glob("*") if p.is_file())


def _subject(path: Path) -> bytes:
    """The Subject of a local message (Maildir files may have LF line ends: offlineimap writes them so)."""
    m = re.search(rb"^Subject: (.*?)\r?$", path.read_bytes(), re.M)
    assert m, path
    return m.group(1)


def _flags_of(path: Path) -> str:
    return path.name.rsplit(":2,", 1)[1] if ":2," in path.name else ""


def _server_state(srv: Server, user: str, folder: str) -> list[tuple[bytes, bytes]]:
    """(Subject header line, FLAGS) of every message in a server folder."""
    m = _imap(srv, user)
    typ, data = m.select(f'"{folder}"')
    assert typ == "OK", data
    out = []
    if data[0] != b"0":
        typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in data:
            if isinstance(item, tuple):
                flags = item[0].split(b"FLAGS (", 1)[1].split(b")", 1)[0]
                out.append((item[1].strip(), flags))
    m.logout()
    return sorted(out)


def _new_local_message(folder: Path, name: str, body: bytes) -> None:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "new" / name).write_bytes(body)


def test_mbsync_two_way(srv, tmp_path):
    user = USERS[0]
    _seed(srv, user)
    mail = tmp_path / "mail"
    mail.mkdir()
    conf = tmp_path / "mbsyncrc"
    conf.write_text(f"""IMAPAccount fm
Host {HOST}
Port {srv.ports['imap']}
User {user}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account fm

MaildirStore local
Path {mail}/
Inbox {mail}/INBOX
SubFolders Verbatim

Channel fm
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")

    def sync() -> None:
        res = subprocess.run([_tool("mbsync"), "-c", str(conf), "-a"], capture_output=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr

    sync()
    inbox = _maildir_files(mail / "INBOX")
    assert len(inbox) == 3
    reports = _maildir_files(mail / "Work" / "Reports")
    assert len(reports) == 1 and "F" in _flags_of(reports[0])
    assert (mail / "Sent").is_dir() and (mail / "Trash").is_dir()

    # local changes: read one, delete one (T + expunge), new mail in a new local folder
    by_subject = {_subject(p): p for p in inbox}
    seen = by_subject[b"inbox 0"]
    seen.rename(mail / "INBOX" / "cur" / (seen.name.split(":2,")[0] + ":2,S"))
    gone = by_subject[b"inbox 1"]
    gone.rename(mail / "INBOX" / "cur" / (gone.name.split(":2,")[0] + ":2,T"))
    _new_local_message(mail / "Projects", "1700000000.local.host:2,S", b"Subject: local\r\nMessage-ID: <l.1>\r\n\r\nhi\r\n")
    sync()

    assert _server_state(srv, user, "INBOX") == [(b"Subject: inbox 0", b"\\Seen"), (b"Subject: inbox 2", b"")]
    assert _server_state(srv, user, "Projects") == [(b"Subject: local", b"\\Seen")]

    # a change on the server comes down on the next run
    m = _imap(srv, user)
    m.select("INBOX")
    m.store("2", "+FLAGS", "(\\Flagged)")
    m.logout()
    sync()
    flags = {_subject(p): _flags_of(p) for p in _maildir_files(mail / "INBOX")}
    assert flags == {b"inbox 0": "S", b"inbox 2": "F"}


def test_offlineimap_two_way(srv, tmp_path):
    user = USERS[1]
    _seed(srv, user)
    mail = tmp_path / "mail"
    conf = tmp_path / "offlineimaprc"
    conf.write_text(f"""[general]
accounts = fm
metadata = {tmp_path}/meta

[Account fm]
localrepository = Local
remoterepository = Remote

[Repository Local]
type = Maildir
localfolders = {mail}

[Repository Remote]
type = IMAP
remotehost = {HOST}
remoteport = {srv.ports['imap']}
remoteuser = {user}
remotepass = {PASSWORD}
ssl = no
starttls = no
""")

    def sync() -> None:
        env = dict(os.environ, HOME=str(tmp_path))
        res = subprocess.run([_tool("offlineimap"), "-c", str(conf), "-o", "-u", "basic"], capture_output=True,
                             timeout=180, env=env)
        assert res.returncode == 0 and b"ERROR" not in res.stdout + res.stderr, res.stdout + res.stderr

    sync()
    inbox = _maildir_files(mail / "INBOX")
    assert len(inbox) == 3
    assert len(_maildir_files(mail / "Work.Reports")) == 1  # offlineimap's local separator is "."

    by_subject = {_subject(p): p for p in inbox}
    seen = by_subject[b"inbox 0"]
    seen.rename(mail / "INBOX" / "cur" / (seen.name.split(":2,")[0] + ":2,S"))
    by_subject[b"inbox 1"].unlink()  # offlineimap pushes a deletion as \Deleted + EXPUNGE
    sync()
    assert _server_state(srv, user, "INBOX") == [(b"Subject: inbox 0", b"\\Seen"), (b"Subject: inbox 2", b"")]

    m = _imap(srv, user)
    m.select("Work/Reports")
    m.store("1", "-FLAGS", "(\\Flagged)")
    m.logout()
    sync()
    (report,) = _maildir_files(mail / "Work.Reports")
    assert "F" not in _flags_of(report)
