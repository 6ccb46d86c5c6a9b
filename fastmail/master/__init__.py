"""The pre-fork master (arbiter), the worker side of its contract, listeners and privileges.

``fastmail.master.arbiter.Arbiter(load_config, worker_main, extra_kinds).run()`` is the whole server
process tree; see that module for the behaviour and ``fastmail.master.worker`` for what a worker owes
the master (heartbeat, stop on TERM, BootError).
"""

from fastmail.master.arbiter import WORKER, Arbiter
from fastmail.master.errors import WORKER_BOOT_ERROR, BootError
from fastmail.master.listeners import ListenerSpec, bind_worker_sockets
from fastmail.master.worker import WorkerContext, install_worker_signals, start_heartbeat

__all__ = [
    "WORKER",
    "WORKER_BOOT_ERROR",
    "Arbiter",
    "BootError",
    "ListenerSpec",
    "WorkerContext",
    "bind_worker_sockets",
    "install_worker_signals",
    "start_heartbeat",
]
