"""Group commit in the real server: many SMTP sessions that end their DATA at the same moment are answered
after fewer commits than messages (the worker's committer counters, logged at worker_stop), and every
message got its 250 only once it was stored: all are in the mailbox, readable, after the server stopped."""

from __future__ import annotations

import re
import uuid

import pytest

from fastmail.store.store import Store

from .conftest import make_server
from .wire import Client

pytestmark = pytest.mark.integration

N = 40


def test_sessions_ending_data_together_share_commits(tmp_path):
    srv = make_server(tmp_path, workers=1)  # one worker: one committer sees every message
    srv.start()
    tokens = [uuid.uuid4().hex for _ in range(N)]
    try:
        clients = []
        for tok in tokens:
            c = Client(srv.ports["smtp"])
            c.ehlo()
            assert c.cmd("MAIL FROM:<x@remote.test>").code == 250
            assert c.cmd("RCPT TO:<alice@example.org>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(f"Subject: {tok}\r\nMessage-ID: <{tok}@remote.test>\r\n\r\nbody {tok}\r\n".encode())
            clients.append(c)
        for c in clients:  # every session ends its DATA now, back to back
            c.send_once(b".\r\n")
        for c in clients:
            assert c.reply().status == "250 2.0.0"
        for c in clients:
            assert c.cmd("QUIT").code == 221
    finally:
        assert srv.stop() == 0
        srv.kill_tree()

    log = srv.log.read_text()
    (stop,) = re.findall(r"event=worker_stop index=0 commit_batches=(\d+) commit_messages=(\d+) largest_batch=(\d+)", log)
    batches, messages, largest = map(int, stop)
    assert messages == N
    assert batches < N and largest > 1, f"{N} messages took {batches} commits (largest batch {largest})"

    store = Store(srv.data)
    try:
        user = store.get_user("alice@example.org")["id"]
        inbox = store.mailbox_id(user, "INBOX")
        listed = store.list_messages(inbox)
        assert [m["uid"] for m in listed] == list(range(1, N + 1))
        bodies = [store.read_message(inbox, m["uid"]) for m in listed]
    finally:
        store.close()
    for tok in tokens:
        (raw,) = [b for b in bodies if f"Subject: {tok}\r\n".encode() in b]
        assert raw.startswith(b"Received: ") and raw.endswith(f"\r\n\r\nbody {tok}\r\n".encode())
