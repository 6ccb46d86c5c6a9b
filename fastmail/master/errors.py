"""Errors and exit codes shared by the master and the processes it forks."""

from __future__ import annotations

__all__ = ["WORKER_BOOT_ERROR", "BootError"]

#: Exit status of a forked process that cannot boot (bad config, store cannot open, cannot drop
#: privileges).  The master does not respawn it: it stops every process and exits 1 with the reason
#: (gunicorn's WORKER_BOOT_ERROR idea).  A worker may exit with it directly (``sys.exit(3)``) or,
#: better, raise :class:`BootError` so that its message reaches the master's log.
WORKER_BOOT_ERROR = 3


class BootError(Exception):
    """The server cannot start; the message is shown to the operator as it is.

    Raised by the master (config, bind, pid file, user) and by a worker during boot.  The master
    exits 1 after logging ``event=boot_error reason=...``.
    """
