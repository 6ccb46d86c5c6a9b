"""The promise (ARCHITECTURE §3): every message that got its 250 survives kill -9 of the whole process tree,
exactly once, byte-identical, none partial."""

from __future__ import annotations

import os
import random
import smtplib
import threading

from fastmail.store.store import Store

from .conftest import make_server

CLIENTS = 20
PER_CLIENT = 25


def _message(client: int, n: int, rng: random.Random) -> bytes:
    body_lines = rng.randint(1, 200)
    body = "".join(f"line {i} {rng.getrandbits(64):x} .dot\r\n" if i % 7 else ".starts-with-dot\r\n" for i in range(body_lines))
    return (f"From: c{client}@remote.test\r\nTo: alice@example.org\r\nMessage-ID: <m-{client}-{n}@remote.test>\r\n"
            f"Subject: durability {client}/{n}\r\n\r\n{body}").encode()


def strip_received(raw: bytes) -> bytes:
    assert raw.startswith(b"Received: ")
    pos = 0
    while True:
        end = raw.index(b"\r\n", pos) + 2
        if raw[end:end + 1] not in (b" ", b"\t"):
            return raw[end:]
        pos = end


def test_kill_minus_nine_after_last_250_loses_nothing(tmp_path):
    srv = make_server(tmp_path, workers=2)
    srv.start()
    sent: dict[str, bytes] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(ci: int) -> None:
        rng = random.Random(ci)
        try:
            with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=60) as s:
                for n in range(PER_CLIENT):
                    msg = _message(ci, n, rng)
                    s.sendmail(f"c{ci}@remote.test", ["alice@example.org"], msg)  # raises unless 250
                    with lock:
                        sent[f"<m-{ci}-{n}@remote.test>"] = msg
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    # Right after the last 250: SIGKILL master and workers together, no chance to flush anything.
    srv.kill_tree()
    assert not errors, errors[:3]
    assert len(sent) == CLIENTS * PER_CLIENT

    srv.start()  # recovery needs no manual step
    try:
        store = Store(srv.data, map_size=1 << 30)
        try:
            uid = store.get_user("alice@example.org")["id"]
            mid = store.mailbox_id(uid, "INBOX")
            stored = [store.read_message(mid, m["uid"]) for m in store.list_messages(mid)]
        finally:
            store.close()
        by_id: dict[str, list[bytes]] = {}
        for raw in stored:
            body = strip_received(raw)
            mid_line = [ln for ln in body.split(b"\r\n") if ln.startswith(b"Message-ID: ")][0]
            by_id.setdefault(mid_line[12:].decode(), []).append(body)
        assert len(stored) == len(sent)
        assert set(by_id) == set(sent)
        for key, msg in sent.items():
            assert by_id[key] == [msg], key  # exactly once, byte-identical
        # and the restarted server still accepts mail
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            s.sendmail("x@remote.test", ["bob@example.org"], b"Subject: after\r\n\r\nok\r\n")
    finally:
        srv.stop()
        srv.kill_tree()
    assert os.path.isdir(srv.data / "segments")
