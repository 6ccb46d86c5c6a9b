"""Moving from Dovecot (issue #9): `fastmail import maildir|mbox` and `fastmail export maildir`, checked with
imaplib against the running server, and the exported tree read by a real (private) Dovecot instance."""

from __future__ import annotations

import datetime
import imaplib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from bench.imap import mailgen
from fastmail._core.imap import mutf7_decode, mutf7_encode

from .conftest import PASSWORDS, Server, make_server

SEED = 9
TIMEOUT = 60
KEYWORDS = ["$label1", "Projekt-X"]  # the source's dovecot-keywords: a, b


@dataclass
class Expected:
    data: bytes  # as IMAP must serve it (CRLF)
    flags: frozenset[str]
    date: int


def info_for(i: int) -> tuple[str, set[str]]:
    """Maildir info letters of source message i and the IMAP flags they mean (c: a letter without keyword)."""
    table = [(3, "S", "\\Seen"), (5, "F", "\\Flagged"), (7, "R", "\\Answered"), (11, "T", "\\Deleted"),
             (13, "D", "\\Draft"), (4, "P", "$Forwarded"), (6, "a", "$label1"), (9, "b", "Projekt-X"), (10, "c", None)]
    letters, flags = "", set()
    for mod, letter, flag in table:
        if i % mod == 0:
            letters += letter
            if flag:
                flags.add(flag)
    return "".join(sorted(letters)), flags


def write_source(root: Path) -> dict[str, list[Expected]]:
    """A Dovecot Maildir++ tree: INBOX (a dovecot-uidlist whose order differs from the files' times, two
    unlisted messages in new/, one file with LF line ends), Arbeit, Arbeit/Bücher, Ελλάδα; keywords,
    subscriptions (Ελλάδα not subscribed)."""
    msgs = list(mailgen.generate(90, SEED))
    plan = {"INBOX": (root, msgs[:60]), "Arbeit": (root / ".Arbeit", msgs[60:75]),
            "Arbeit/Bücher": (root / f".Arbeit.{mutf7_encode('Bücher').decode()}", msgs[75:85]),
            "Ελλάδα": (root / f".{mutf7_encode('Ελλάδα').decode()}", msgs[85:90])}
    out: dict[str, list[Expected]] = {}
    for name, (path, box) in plan.items():
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        if path != root:
            (path / "maildirfolder").write_bytes(b"")
        (path / "dovecot-keywords").write_text("".join(f"{k} {w}\n" for k, w in enumerate(KEYWORDS)))
        expect = []
        bases = []
        for k, m in enumerate(box):
            base = f"{m.internaldate}.M{m.index:06d}P{SEED}.src,S={m.size},W={m.size}"
            data = m.data
            if name == "INBOX" and k == 5:  # as Dovecot keeps files: LF line ends (served with CRLF)
                data = m.data.replace(b"\r\n", b"\n")
            if name == "INBOX" and k >= 58:  # delivered, never seen by a client: new/, no info
                f, flags = path / "new" / base, set()
            else:
                letters, flags = info_for(m.index)
                f = path / "cur" / f"{base}:2,{letters}"
            f.write_bytes(data)
            os.utime(f, (m.internaldate, m.internaldate))
            bases.append(base)
            expect.append(Expected(m.data, frozenset(flags), m.internaldate))
        if name == "INBOX":  # Dovecot's UIDs put message 1 before message 0; new/ is not listed yet
            order = [1, 0] + list(range(2, 58))
            lines = ["3 V1700000000 N59 G0123456789abcdef0123456789abcdef"]
            lines += [f"{uid} W{box[k].size} :{bases[k]}" for uid, k in enumerate(order, 1)]
            (path / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
            expect = [expect[k] for k in order] + expect[58:]
        out[name] = expect
    # Dovecot 2.3's subscriptions file: a version line, an empty line, names with TAB between levels
    (root / "subscriptions").write_bytes(b"V\t2\n\nINBOX\nArbeit\nArbeit\t" + mutf7_encode("Bücher") + b"\nGone\n")
    return out


# -- IMAP helpers ------------------------------------------------------------------------------------------

FETCH_META = re.compile(rb"UID (\d+)|FLAGS \(([^)]*)\)|INTERNALDATE \"([^\"]+)\"")


def imap_login(port: int, user: str, password: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
    m.login(user, password)
    return m


def folders(m: imaplib.IMAP4, subscribed: bool = False) -> dict[str, str]:
    """Decoded name (levels joined with "/") -> the name as the server spells it (modified UTF-7)."""
    typ, data = m.lsub() if subscribed else m.list()
    assert typ == "OK", data
    out = {}
    for line in data:
        assert isinstance(line, bytes)
        mt = re.match(rb'\(([^)]*)\) (?:"(.)"|NIL) (.*)$', line)
        assert mt, line
        if b"\\Noselect" in mt.group(1) or b"\\NonExistent" in mt.group(1):
            continue
        raw = mt.group(3).strip(b'"')
        delim = mt.group(2) or b"/"
        out["/".join(mutf7_decode(level) for level in raw.split(delim))] = raw.decode()
    return out


def parse_date(text: bytes) -> int:
    return int(datetime.datetime.strptime(text.decode().strip(), "%d-%b-%Y %H:%M:%S %z").timestamp())


def fetch_box(m: imaplib.IMAP4, raw_name: str) -> list[tuple[int, Expected]]:
    """(UID, what the server serves) of every message, in UID order; \\Recent left out."""
    typ, data = m.select(f'"{raw_name}"', readonly=True)
    assert typ == "OK", data
    if int(data[0]) == 0:
        return []
    typ, meta = m.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE)")
    assert typ == "OK"
    info: dict[int, tuple[frozenset[str], int]] = {}
    for line in meta:
        assert isinstance(line, bytes)
        uid = flags = date = None
        for g in FETCH_META.finditer(line):
            if g.group(1):
                uid = int(g.group(1))
            elif g.group(3):
                date = parse_date(g.group(3))
            else:
                flags = frozenset(f for f in g.group(2).decode().split() if f != "\\Recent")
        assert uid is not None and flags is not None and date is not None, line
        info[uid] = (flags, date)
    typ, bodies = m.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
    assert typ == "OK"
    out = []
    for part in bodies:
        if isinstance(part, tuple):
            uid = int(re.search(rb"UID (\d+)", part[0]).group(1))  # type: ignore[union-attr]
            out.append((uid, Expected(part[1], *info[uid])))
    assert len(out) == len(info)
    return sorted(out, key=lambda x: x[0])


def cli_json(srv: Server, *args: str) -> dict:
    return orjson.loads(srv.cli(*args, "--json").stdout)


def same(got: list[tuple[int, Expected]], want: list[Expected], where: str) -> None:
    assert len(got) == len(want), (where, len(got), len(want))
    for k, ((uid, g), w) in enumerate(zip(got, want, strict=True)):
        assert g.data == w.data, (where, k, uid, "body differs")
        assert g.flags == w.flags, (where, k, uid, g.flags, w.flags)
        assert g.date == w.date, (where, k, uid, g.date, w.date)


# -- the tests ---------------------------------------------------------------------------------------------


def test_maildir_import_export_roundtrip_and_dovecot(tmp_path: Path, server: Server) -> None:
    src = tmp_path / "Maildir"
    expected = write_source(src)
    alice = imap_login(server.ports["imap"], "alice@example.org", PASSWORDS["alice@example.org"])
    alice.select("INBOX")  # a session open during the import learns of the new messages
    server.cli("user", "quota", "alice@example.org", "100000")  # an import is never refused for the quota

    report = cli_json(server, "import", "maildir", "alice@example.org", str(src))
    total = sum(len(v) for v in expected.values())
    assert report["imported"] == total and report["skipped"] == 0 and report["over_quota"] is True
    assert {f["name"]: f["created"] for f in report["folders"]} == {
        "INBOX": False, "Arbeit": True, "Arbeit/Bücher": True, "Ελλάδα": True}

    typ, data = alice.noop()
    assert typ == "OK" and alice.untagged_responses["EXISTS"][-1] == str(len(expected["INBOX"])).encode()
    alice.logout()

    m = imap_login(server.ports["imap"], "alice@example.org", PASSWORDS["alice@example.org"])
    names = folders(m)
    assert {"INBOX", "Arbeit", "Arbeit/Bücher", "Ελλάδα"} <= set(names)
    subscribed = folders(m, subscribed=True)
    assert {"Arbeit", "Arbeit/Bücher", "INBOX"} <= set(subscribed) and "Ελλάδα" not in subscribed
    for name, want in expected.items():
        same(fetch_box(m, names[name]), want, f"import {name}")
    m.logout()

    # again: nothing new; one more message arrives in the source (a final sync at cut-over) and only it comes
    again = cli_json(server, "import", "maildir", "alice@example.org", str(src))
    assert again["imported"] == 0 and again["skipped"] == total
    late = mailgen.make_message(SEED, 500)
    f = src / ".Arbeit" / "new" / f"{late.internaldate}.M1P1.src"
    f.write_bytes(late.data)
    os.utime(f, (late.internaldate, late.internaldate))
    expected["Arbeit"].append(Expected(late.data, frozenset(), late.internaldate))
    again = cli_json(server, "import", "maildir", "alice@example.org", str(src))
    assert again["imported"] == 1 and again["skipped"] == total

    # export, and the export imported into another user (below a folder) gives the same messages
    out = tmp_path / "export"
    exported = cli_json(server, "export", "maildir", "alice@example.org", str(out))
    assert exported["imported"] == total + 1
    assert (out / "cur").is_dir() and (out / f".Arbeit.{mutf7_encode('Bücher').decode()}" / "cur").is_dir()
    assert not list((out / "tmp").iterdir())
    back = cli_json(server, "import", "maildir", "bob@example.org", str(out), "--folder", "Old")
    assert back["imported"] == total + 1
    m = imap_login(server.ports["imap"], "bob@example.org", PASSWORDS["bob@example.org"])
    names = folders(m)
    for name, want in expected.items():
        target = "Old" if name == "INBOX" else f"Old/{name}"
        same(fetch_box(m, names[target]), want, f"re-import {target}")
    assert "Old/Ελλάδα" not in folders(m, subscribed=True) and "Old/Arbeit" in folders(m, subscribed=True)
    m.logout()
    server.cli("fsck")  # exit 0: index, counters, usage and segments agree after all of it

    validity = {b["name"]: b["uidvalidity"] for b in orjson.loads(
        server.cli("mailbox", "list", "alice@example.org", "--json").stdout)}
    dovecot_reads(out, expected, validity)


def dovecot_reads(maildir: Path, expected: dict[str, list[Expected]], validity: dict[str, int]) -> None:
    """A private Dovecot (bench/imap/target_dovecot.py's configuration) serves the exported tree: the same
    bytes, flags, dates, UIDs and UIDVALIDITY (from our dovecot-uidlist) and subscriptions."""
    if shutil.which("dovecot") is None or shutil.which("doveadm") is None or os.geteuid() != 0:
        pytest.skip("a private Dovecot needs dovecot installed and root")
    from bench.imap.target_dovecot import CONF
    from bench.smtp.target import free_port, wait_for_greeting
    from bench.smtp.target_postfix import ensure_mail_user

    # Dovecot's processes run as the mail user: its folder must be reachable by it (pytest's is root's, 0700)
    d = Path(tempfile.mkdtemp(prefix="fastmail-migrate-dovecot-"))
    os.chmod(d, 0o755)
    uid, gid = ensure_mail_user()
    for sub in ("run", "state", "home"):
        (d / sub).mkdir(parents=True)
    home = d / "home" / "u"
    shutil.copytree(maildir, home / "Maildir", copy_function=shutil.copy2)  # copy2: keeps the mtimes
    for p in [home, *home.rglob("*")]:
        os.chown(p, uid, gid)
    port = free_port()
    (d / "passwd").write_text(f"u@example.org:{{PLAIN}}pw:{uid}:{gid}::{home}::\n")
    conf = d / "dovecot.conf"
    conf.write_text(CONF.format(dir=d, port=port, uid=uid, limit=20, client_limit=1000))
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_greeting("127.0.0.1", port, lambda: proc.poll() is None, expect=b"* OK")
        m = imap_login(port, "u@example.org", "pw")
        names = folders(m)
        assert {"INBOX", "Arbeit", "Arbeit/Bücher", "Ελλάδα"} <= set(names), names
        subscribed = folders(m, subscribed=True)
        assert {"Arbeit", "Arbeit/Bücher"} <= set(subscribed) and "Ελλάδα" not in subscribed
        for name, want in expected.items():
            got = fetch_box(m, names[name])
            same(got, want, f"dovecot {name}")
            assert m.response("UIDVALIDITY")[1] == [str(validity[name]).encode()], name
            assert [u for u, _ in got] == list(range(1, len(want) + 1))  # fastmail's UIDs, kept
        m.logout()
        log = (d / "dovecot.log").read_text(errors="replace") if (d / "dovecot.log").exists() else ""
        assert not re.search(r"\b(Error|Panic|Fatal)\b", log), log[-2000:]
    finally:
        subprocess.run(["doveadm", "-c", str(conf), "stop"], capture_output=True, timeout=60)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def _mbox_date(ts: int) -> bytes:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(ts)).encode()


def test_mbox_import(tmp_path: Path) -> None:
    srv = make_server(tmp_path, workers=1)  # on a stopped server; checked through IMAP after the start
    msgs = list(mailgen.generate(40, SEED))
    big = tmp_path / "mailgen.mbox"
    mailgen.write_mbox(iter(msgs), big)

    # A Unix mbox (LF line ends) with what needs care: body lines "From ..." (escaped ">From ...", one after
    # an empty line, which must not start a message), ">From ..." (mboxrd: ">>From ..."), Dovecot's state
    # headers (their flags read, the headers gone), a From_ line with a zone, two identical messages.
    tricky = [
        (b"Subject: escapes\nStatus: RO\nX-Status: AF\nX-Keywords: $label1 Projekt-X\nX-UID: 7\n\n"
         b"From here on, quoted.\n\nFrom the top again\n>From already quoted\n>>From twice\nend\n",
         b"Subject: escapes\r\n\r\nFrom here on, quoted.\r\n\r\nFrom the top again\r\n>From already quoted\r\n"
         b">>From twice\r\nend\r\n", {"\\Seen", "\\Answered", "\\Flagged", "$label1", "Projekt-X"}, 1700000000),
        (b"Subject: plain\nStatus: O\nX-Status: TD\n\nbody\n\n\n",
         b"Subject: plain\r\n\r\nbody\r\n\r\n\r\n", {"\\Draft", "\\Deleted"}, 1700003600),
        (b"Subject: twin\n\nsame\n", b"Subject: twin\r\n\r\nsame\r\n", set(), 1700007200),
        (b"Subject: twin\n\nsame\n", b"Subject: twin\r\n\r\nsame\r\n", set(), 1700007200),
    ]
    unix = bytearray()
    for stored_lf, _, _, ts in tricky:
        body = b"\n".join(b">" + ln if ln.lstrip(b">").startswith(b"From ") else ln
                          for ln in stored_lf.split(b"\n")[:-1])
        when = _mbox_date(ts)
        if ts == 1700003600:  # a zone after the year, as some writers add
            when = _mbox_date(ts + 3600) + b" +0100"
        unix += b"From someone@example.net " + when + b"\n" + body + b"\n\n"
    small = tmp_path / "unix.mbox"
    small.write_bytes(bytes(unix))

    r1 = cli_json(srv, "import", "mbox", "carol@example.org", str(big), "--folder", "Archiv/2025")
    assert r1["imported"] == 40 and r1["folders"][0]["created"] is True
    r2 = cli_json(srv, "import", "mbox", "carol@example.org", str(small))
    assert r2["imported"] == 4
    again = cli_json(srv, "import", "mbox", "carol@example.org", str(small))
    assert again["imported"] == 0 and again["skipped"] == 4
    bad = srv.cli("import", "mbox", "carol@example.org", str(tmp_path / "fastmail.toml"), check=False)
    assert bad.returncode == 1 and b"not an mbox" in bad.stderr
    missing = srv.cli("import", "maildir", "nobody@example.org", str(tmp_path), check=False)
    assert missing.returncode == 1 and b"no user" in missing.stderr

    srv.start()
    try:
        m = imap_login(srv.ports["imap"], "carol@example.org", PASSWORDS["carol@example.org"])
        names = folders(m)
        same(fetch_box(m, names["Archiv/2025"]), [Expected(x.data, frozenset(), x.internaldate) for x in msgs],
             "mailgen mbox")
        same(fetch_box(m, "INBOX"), [Expected(s, frozenset(f), ts) for _, s, f, ts in tricky], "unix mbox")
        m.logout()
        srv.cli("fsck")
    finally:
        srv.stop()
        srv.kill_tree()


def test_mbox_escaping_variants() -> None:
    """mboxrd takes one ">" off every ^>+From_ line, mboxo only off ^>From_, none leaves them; a "From " line
    that does not follow an empty line or has no date is message text; a message may start with ">From"."""
    from fastmail.migrate import MigrateError, mbox_messages

    box = (b"From a Mon Jan  1 00:00:00 2024\nSubject: a\n\n>From x\n>>From y\nFrom z no date\n\n"
           b"From bogus line\n\nFrom b@x Mon Jan  1 00:00:01 2024\r\n>From first\r\n\r\nb\r\n\r\n")
    tail = b"From z no date\r\n\r\nFrom bogus line\r\n"
    want = {"mboxrd": (b"From x\r\n>From y\r\n", b"From first"), "mboxo": (b"From x\r\n>>From y\r\n", b"From first"),
            "none": (b">From x\r\n>>From y\r\n", b">From first")}
    for mode, (quoted, first) in want.items():
        got = list(mbox_messages(box, mode))
        assert got == [(b"Subject: a\r\n\r\n" + quoted + tail, [], 1704067200),
                       (first + b"\r\n\r\nb\r\n", [], 1704067201)], mode
    with pytest.raises(MigrateError):
        list(mbox_messages(b"Subject: not an mbox\n\nx\n"))
