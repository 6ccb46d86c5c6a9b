"""The worker side of the master/worker contract.

A forked process receives a :class:`WorkerContext` and runs ``worker_main(ctx)`` (or the main of an
extra kind, such as the delivery runner).  Its duties towards the master:

* **Heartbeat.**  Call ``ctx.notify()`` as soon as it accepts work (the first call tells the master
  it booted: during a HUP the old worker is stopped only then) and then at least every
  ``ctx.timeout / 2`` seconds — :func:`start_heartbeat` does it from a task in the event loop, so a
  loop blocked for longer than ``ctx.timeout`` gets the process SIGKILLed and replaced.
  ``ctx.heartbeat_interval`` is the suggested period.  ``ctx.timeout == 0`` means heartbeats are off.
* **Stop.**  On SIGTERM/SIGINT/SIGQUIT stop accepting (close the listening sockets: the master keeps
  its own copies open for the replacement), let sessions finish, return.  The master SIGKILLs it after
  the grace period.  :func:`install_worker_signals` maps those signals to a callback.
* **Retire.**  On RETIRE_SIGNAL (SIGUSR2: a reload replaced it) the same, except that sessions, idle ones
  too, are served until they end or the grace period nears (a reload drops no connection); a process
  without sessions to keep treats it as a stop.
* **Boot failure.**  Raise :class:`~fastmail.master.errors.BootError` (or exit with
  ``WORKER_BOOT_ERROR``) when it cannot start: the master then stops instead of respawning.
* **LMDB** (ARCHITECTURE §1): open the environment inside ``worker_main``, never before the fork.

Privileges are already dropped and the other workers' sockets closed when ``worker_main`` runs.
"""

from __future__ import annotations

import asyncio
import mmap
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "RETIRE_SIGNAL",
    "STOP_SIGNALS",
    "WorkerContext",
    "heartbeat",
    "install_worker_signals",
    "start_heartbeat",
]

#: Layout of the page shared between the master and one child (an anonymous MAP_SHARED mapping made
#: before fork): a double, the child's last ``time.monotonic()`` (0.0 = not booted yet), then the
#: length and UTF-8 bytes of a boot-failure reason.  No syscalls per heartbeat, no file to chown.
SHM_SIZE = 4096
_BEAT = struct.Struct("d")
_REASON_LEN = struct.Struct("I")
_REASON_AT = _BEAT.size
_REASON_MAX = SHM_SIZE - _REASON_AT - _REASON_LEN.size

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
RETIRE_SIGNAL = signal.SIGUSR2


def read_beat(shm: mmap.mmap) -> float:
    return _BEAT.unpack_from(shm, 0)[0]


def write_reason(shm: mmap.mmap, reason: str) -> None:
    data = reason.encode("utf-8", "replace")[:_REASON_MAX]
    shm[_REASON_AT + _REASON_LEN.size : _REASON_AT + _REASON_LEN.size + len(data)] = data
    _REASON_LEN.pack_into(shm, _REASON_AT, len(data))


def read_reason(shm: mmap.mmap) -> str:
    (n,) = _REASON_LEN.unpack_from(shm, _REASON_AT)
    n = min(n, _REASON_MAX)
    start = _REASON_AT + _REASON_LEN.size
    return shm[start : start + n].decode("utf-8", "replace")


@dataclass
class WorkerContext:
    """What a forked process gets.

    ``kind`` is "worker" or the name of an extra kind; ``index`` its number within the kind;
    ``generation`` counts reloads (1 at start, +1 per HUP); ``sockets`` maps listener name to this
    worker's listening socket (empty for extra kinds); ``config`` is the object ``load_config``
    returned; ``timeout`` the heartbeat timeout in seconds (0 = none).
    """

    index: int
    generation: int
    sockets: dict[str, socket.socket]
    config: object
    kind: str
    timeout: float = 30.0
    _shm: mmap.mmap | None = field(default=None, repr=False, compare=False)
    prepared: object = None  # what the kind's prepare hook returned (before privileges were dropped)

    @property
    def heartbeat_interval(self) -> float:
        """How often to call :meth:`notify`: a quarter of the timeout, between 0.05 s and 5 s."""
        if self.timeout <= 0:
            return 5.0
        return min(5.0, max(0.05, self.timeout / 4))

    def notify(self) -> None:
        """Tell the master this process is alive (and, the first time, that it has booted)."""
        if self._shm is not None:
            _BEAT.pack_into(self._shm, 0, time.monotonic())


def install_worker_signals(loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None],
                           on_retire: Callable[[], None] | None = None) -> None:
    """Call ``on_stop()`` from ``loop`` on SIGTERM, SIGINT and SIGQUIT (each time one arrives; a
    second one may mean "hurry"), and ``on_retire()`` (default: ``on_stop``) on RETIRE_SIGNAL.  SIGHUP
    stays ignored in workers: the master coordinates reloads."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(RETIRE_SIGNAL, on_retire or on_stop)


async def heartbeat(ctx: WorkerContext, interval: float | None = None) -> None:
    """Call ``ctx.notify()`` every ``interval`` seconds (default ``ctx.heartbeat_interval``) forever."""
    period = ctx.heartbeat_interval if interval is None else interval
    while True:
        ctx.notify()
        await asyncio.sleep(period)


def start_heartbeat(
    ctx: WorkerContext, loop: asyncio.AbstractEventLoop | None = None, interval: float | None = None
) -> asyncio.Task[None]:
    """Run :func:`heartbeat` as a task of ``loop`` (default: the running loop).  Start it once the
    listeners accept: its first beat marks the worker as booted.  Cancel it when stopping, or leave it
    running while sessions drain (the master does not time out a stopping worker; grace applies)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    return loop.create_task(heartbeat(ctx, interval), name=f"heartbeat-{ctx.kind}-{ctx.index}")
