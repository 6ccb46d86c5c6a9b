"""Waking the delivery processes: one unix datagram socket each, DATA_DIR/delivery-<i>.sock.

A worker that has just committed queue entries (and the CLI after `queue retry/release/bounce`) sends one
empty datagram to every delivery process; the process then looks at the schedule at once, so new mail
starts its delivery with no polling delay.  Sending never blocks and never fails the sender: a delivery
process that is not running (or busy, its socket buffer full) will read the schedule when it starts or
when it next looks.  Partitioning: with M processes, process i handles the queue ids for which
`owner(qid, M) == i`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

_sock: socket.socket | None = None


def socket_path(data_dir: str | os.PathLike[str], index: int) -> Path:
    return Path(data_dir) / f"delivery-{index}.sock"


def owner(qid: bytes, processes: int) -> int:
    return int.from_bytes(qid[-2:], "big") % processes if processes > 1 else 0


def notify(data_dir: str | os.PathLike[str], processes: int = 1) -> None:
    global _sock
    if _sock is None:
        _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sock.setblocking(False)
    for i in range(processes):
        with contextlib.suppress(OSError):
            _sock.sendto(b"", str(socket_path(data_dir, i)))


def bind(data_dir: str | os.PathLike[str], index: int) -> socket.socket:
    path = socket_path(data_dir, index)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


os.register_at_fork(after_in_child=lambda: globals().__setitem__("_sock", None))
