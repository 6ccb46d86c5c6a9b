"""`fastmail fsck` against a real server's data: damage is reported and repaired while the server runs, and
IMAP and POP3 then serve every surviving message byte-identical; after kill -9 under load it finds nothing
wrong (a torn tail is no error)."""

from __future__ import annotations

import imaplib
import poplib
import random
import smtplib
import threading
import time

import orjson

from fastmail.store import fsck
from fastmail.store import records as R
from fastmail.store.store import Store

from .conftest import PASSWORDS, make_server


def _message(i: int) -> bytes:
    rng = random.Random(i)
    body = "".join(f"line {n} {rng.getrandbits(64):x}\r\n" for n in range(400))
    return f"From: s{i}@remote.test\r\nMessage-ID: <fsck-{i}@remote.test>\r\nSubject: fsck {i}\r\n\r\n{body}".encode()


def _stored(srv, user: str) -> dict[int, bytes]:
    s = Store(srv.data, map_size=1 << 30)
    try:
        mid = s.mailbox_id(s.get_user(user)["id"], "INBOX")
        return {m["uid"]: s.read_message(mid, m["uid"]) for m in s.list_messages(mid)}
    finally:
        s.close()


def _fsck(srv, *args: str) -> tuple[int, dict]:
    res = srv.cli("fsck", "--json", *args, check=False)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, orjson.loads(res.stdout)


def _imap_all(srv, user: str) -> dict[int, bytes]:
    with imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30) as m:
        m.login(user, PASSWORDS[user])
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK"
        if int(data[0]) == 0:
            return {}
        typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        assert typ == "OK"
        out = {}
        for part in data:
            if isinstance(part, tuple):
                uid = int(part[0].split(b"UID ")[1].split()[0])
                out[uid] = part[1]
        return out


def _pop_all(srv, user: str) -> list[bytes]:
    p = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=30)
    try:
        p.user(user)
        p.pass_(PASSWORDS[user])
        count, _ = p.stat()
        return [b"\r\n".join(p.retr(i)[1]) + b"\r\n" for i in range(1, count + 1)]
    finally:
        p.quit()


def test_fsck_repairs_while_serving_and_clients_get_every_survivor(tmp_path):
    srv = make_server(tmp_path, workers=1)
    srv.start()
    try:
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            for i in range(8):
                rcpts = ["team@example.org"] if i % 3 == 0 else ["alice@example.org"]
                s.sendmail(f"s{i}@remote.test", rcpts, _message(i))
        assert _fsck(srv) == (0, {"clean": True, "repaired": False, "problems": [], "notes": []})
        alice, bob = _stored(srv, "alice@example.org"), _stored(srv, "bob@example.org")
        assert len(alice) == 8 and len(bob) == 3

        # Damage, with the server running: a lost blob record, a wrong reference count, zeroed counters,
        # a stale segment file.
        s = Store(srv.data, map_size=1 << 30)
        a_id, b_id = s.get_user("alice@example.org")["id"], s.get_user("bob@example.org")["id"]
        a_box, b_box = s.mailbox_id(a_id, "INBOX"), s.mailbox_id(b_id, "INBOX")
        msgs = {m["uid"]: m for m in s.list_messages(a_box)}
        lost_uid = 3  # alice only
        with s.write() as txn:
            txn.delete(msgs[lost_uid]["blob"], db=s.db["blobs"])
            blob = msgs[5]["blob"]
            seg, off, length, refs = R.BLOB.unpack(txn.get(blob, db=s.db["blobs"]))
            txn.put(blob, R.BLOB.pack(seg, off, length, refs + 1), db=s.db["blobs"])
            rec = R.loads(txn.get(R.U64.pack(b_box), db=s.db["mbox"]))
            rec.update(exists=0, unseen=0, size=0)
            txn.put(R.U64.pack(b_box), R.dumps(rec), db=s.db["mbox"])
        s.close()
        stale = srv.data / "segments" / f"{0xabc:016x}.seg"
        stale.write_bytes(b"stale" * 2000)

        code, report = _fsck(srv)
        assert code == 1 and not report["clean"] and not report["repaired"]
        kinds = sorted(p["kind"] for p in report["problems"])
        assert kinds == sorted([fsck.MISSING_BLOB, fsck.ORPHAN_RANGE, fsck.REFCOUNT, fsck.MAILBOX_COUNTERS,
                                fsck.DEAD_SEGMENT]), report
        assert [p["uid"] for p in report["problems"] if p["kind"] == fsck.MISSING_BLOB] == [lost_uid]
        res = srv.cli("fsck", check=False)  # the text form says the same, a line each
        assert res.returncode == 1 and res.stdout.count(b"\n") == 6 and b"--repair" in res.stdout

        code, report = _fsck(srv, "--repair")
        assert code == 1 and report["repaired"] and all(p["repaired"] for p in report["problems"]), report
        assert _fsck(srv) == (0, {"clean": True, "repaired": False, "problems": [], "notes": []})
        assert _fsck(srv, "--repair")[0] == 0
        assert not stale.exists()

        # Every survivor served byte-identical, the broken one never served; new mail still flows.
        del alice[lost_uid]
        assert _imap_all(srv, "alice@example.org") == alice
        assert _imap_all(srv, "bob@example.org") == bob
        assert _pop_all(srv, "bob@example.org") == [bob[u] for u in sorted(bob)]
        assert sorted(_pop_all(srv, "alice@example.org")) == sorted(alice.values())
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            s.sendmail("x@remote.test", ["alice@example.org"], _message(99))
        assert _fsck(srv)[0] == 0
    finally:
        srv.stop()
        srv.kill_tree()


def test_fsck_after_kill_minus_nine_under_load_finds_nothing_wrong(tmp_path):
    srv = make_server(tmp_path, workers=2)
    srv.start()
    sent = [0]
    stop = threading.Event()

    def client(ci: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
                for n in range(1000):
                    if stop.is_set():
                        return
                    s.sendmail(f"c{ci}@remote.test", ["team@example.org"], _message(ci * 1000 + n))
                    sent[0] += 1
        except (OSError, smtplib.SMTPException):
            pass  # the server was killed under it

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sent[0] < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.kill_tree()  # mid-load: batches appended but not committed are torn tails
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert sent[0] >= 150

    code, report = _fsck(srv)
    assert code == 0 and report["clean"] and report["problems"] == [], report
    assert {n["kind"] for n in report["notes"]} <= {fsck.TORN_TAIL}
    code, report = _fsck(srv, "--repair")
    assert code == 0 and all(n["repaired"] for n in report["notes"])
    assert _fsck(srv) == (0, {"clean": True, "repaired": False, "problems": [], "notes": []})
    assert len(_stored(srv, "alice@example.org")) >= sent[0]


def test_fsck_repair_during_load_loses_nothing(tmp_path):
    """fsck --repair running again and again while two workers take mail: it finds nothing wrong, changes
    nothing that matters, and every message that got its 250 is there afterwards, byte-identical."""
    srv = make_server(tmp_path, workers=2)
    srv.start()
    sent: dict[str, bytes] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(ci: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=60) as s:
                for n in range(30):
                    msg = _message(ci * 1000 + n)
                    s.sendmail(f"c{ci}@remote.test", ["alice@example.org"], msg)
                    with lock:
                        sent[f"<fsck-{ci * 1000 + n}@remote.test>"] = msg
                    if n % 10 == 9:  # some expunged meanwhile: released ranges, changing counters
                        with imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30) as m:
                            m.login("alice@example.org", PASSWORDS["alice@example.org"])
                            m.select("INBOX")
                            typ, data = m.uid("SEARCH", "HEADER", "Message-ID", f"fsck-{ci * 1000 + n}@")
                            m.uid("STORE", data[0].decode(), "+FLAGS", "(\\Deleted)")
                            m.expunge()
                        with lock:
                            del sent[f"<fsck-{ci * 1000 + n}@remote.test>"]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        runs = []
        while any(t.is_alive() for t in threads):
            runs.append(_fsck(srv, *(("--repair",) if len(runs) % 2 else ())))
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert len(runs) >= 2
        for code, report in runs:
            assert code == 0 and report["problems"] == [], report
        assert _fsck(srv)[0] == 0
        stored = _imap_all(srv, "alice@example.org")
        by_id = {}
        for raw in stored.values():
            line = [ln for ln in raw.split(b"\r\n") if ln.startswith(b"Message-ID: ")][0]
            by_id[line[12:].decode()] = raw
        assert set(by_id) == set(sent)
        for key, msg in sent.items():
            assert by_id[key].endswith(msg)
    finally:
        srv.stop()
        srv.kill_tree()
