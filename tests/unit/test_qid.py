"""Queue ids: unique within a process and across forked workers (whose `random` state is reseeded)."""

from __future__ import annotations

import os

from fastmail.store.store import new_qid


def test_qids_unique_in_process() -> None:
    ids = [new_qid() for _ in range(20_000)]
    assert len(set(ids)) == len(ids) and all(len(q) == 12 for q in ids)


def test_qids_differ_across_forks() -> None:
    r, w = os.pipe()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # child: write 1,000 ids and leave without running the parent's atexit handlers
            os.close(r)
            os.write(w, b"".join(new_qid() for _ in range(1000)))
            os._exit(0)
        children.append(pid)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    ids = [data[i:i + 12] for i in range(0, len(data), 12)]
    ids += [new_qid() for _ in range(1000)]
    assert len(ids) == 3000 and len(set(ids)) == 3000
