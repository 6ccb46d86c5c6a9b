"""The small shared state of greylisting and rate limiting: one LMDB environment of its own in
DATA_DIR/hygiene, opened by each worker after fork (on first use, never inherited), shared by all workers of
the node through LMDB's lock file, and kept across restarts.

Why not the index (fastmail.store): these writes come with connections and RCPT commands, not with
deliveries.  In the index they would queue behind the group commit's synced transactions (LMDB has one
writer for the whole environment) and each would pay a sync of its own.  Here a write transaction is a few
microseconds: no sync at commit (`sync=False`).  A crash of a process loses nothing (the pages are in the
kernel's page cache); a crash of the machine may lose the last seconds or, at worst, leave the file
unreadable — then it is set aside and started afresh (`open_state`).  What is lost is harmless: some
senders are greylisted once more, some counters start again at zero.

Records (big-endian, fixed layouts, each with a version byte first so that a later layout can be told apart):
see fastmail.hygiene.greylist and fastmail.hygiene.ratelimit.  Old records are purged a bounded number at a
time, at most once a minute per process, inside the writes that come anyway (`maybe_purge`).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from fastmail import log

MAP_SIZE = 256 * 1024 * 1024  # address space only: the file grows as records come (~100 bytes each)
PURGE_EVERY = 60.0  # seconds between two purges by one process
PURGE_BATCH = 2000  # records looked at per purge (a short write transaction)
DBS = (b"greylist", b"clients", b"rate", b"authfail")

Clock = Callable[[], float]


class HygieneState:
    """The environment and its tables; `clock` is wall-clock seconds (time.time), replaceable in tests."""

    def __init__(self, path: Path, clock: Clock = time.time, map_size: int = MAP_SIZE) -> None:
        path.mkdir(parents=True, exist_ok=True)
        _reserve_lock_file(path)
        self.path = path
        self.clock = clock
        self.env = lmdb.open(str(path), map_size=map_size, max_dbs=len(DBS), max_readers=1024, sync=False,
                             metasync=False, readahead=False, lock=True)
        self.db = {name.decode(): self.env.open_db(name) for name in DBS}
        self._purged = 0.0
        self._purgers: list[Callable[[lmdb.Transaction, float, int], int]] = []

    def close(self) -> None:
        self.env.close()

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A short write transaction, committed when the block ends without an exception.  A full map is
        purged of everything expired and the block is not retried: the caller fails open."""
        try:
            with self.env.begin(write=True) as txn:
                yield txn
        except lmdb.MapFullError:
            self.maybe_purge(force=True)
            raise

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        with self.env.begin() as txn:
            yield txn

    def on_purge(self, purger: Callable[[lmdb.Transaction, float, int], int]) -> None:
        """Register `purger(txn, now, budget) -> records looked at`, run by maybe_purge."""
        self._purgers.append(purger)

    def maybe_purge(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._purged < PURGE_EVERY:
            return
        self._purged = now
        removed = 0
        try:
            with self.env.begin(write=True) as txn:
                for purger in self._purgers:
                    removed += purger(txn, now, PURGE_BATCH)
        except lmdb.Error as e:
            log.event("hygiene_purge_failed", level=logging.WARNING, error=repr(e))


LOCK_RESERVE = 256 * 1024  # bytes: more than LMDB's lock table for 1,024 readers (~66 KiB)


def _reserve_lock_file(path: Path) -> None:
    """Allocate LMDB's lock file before LMDB maps it.  LMDB ftruncates the file to its reader table's size and
    writes to it through a shared mapping: on a full filesystem (a tmpfs) touching a page that cannot be
    allocated kills the process with SIGBUS.  Allocated here, a full disk is an OSError (ENOSPC) instead,
    and the callers fail open.  A file already allocated (an earlier start) is left as it is."""
    fd = os.open(path / "lock.mdb", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_blocks * 512 < LOCK_RESERVE:
            try:
                os.posix_fallocate(fd, 0, LOCK_RESERVE)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise  # ENOSPC above all; a filesystem without fallocate keeps LMDB's own way
    finally:
        os.close(fd)


def open_state(data_dir: Path, clock: Clock = time.time) -> HygieneState | None:
    """The state at DATA_DIR/hygiene; a file LMDB cannot read is renamed aside (…/hygiene.broken-<time>) and
    started afresh; None (logged) when even that fails: the callers then fail open."""
    path = data_dir / "hygiene"
    try:
        return HygieneState(path, clock)
    except lmdb.Error as e:
        log.event("hygiene_state_broken", level=logging.ERROR, path=path, error=repr(e))
        try:
            os.rename(path, path.with_name(f"hygiene.broken-{int(time.time())}"))
            return HygieneState(path, clock)
        except (OSError, lmdb.Error) as e2:
            log.event("hygiene_state_unavailable", level=logging.ERROR, path=path, error=repr(e2))
            return None
    except OSError as e:
        log.event("hygiene_state_unavailable", level=logging.ERROR, path=path, error=repr(e))
        return None
