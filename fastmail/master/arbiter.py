"""The master process: binds listeners, forks workers and supervises them (ARCHITECTURE §1).

Shaped after gunicorn's arbiter:

* Signal handlers only enqueue the signal number; ``signal.set_wakeup_fd`` wakes the main loop's
  ``select``; the loop dispatches ``handle_<signal>``.
* Every process is forked (never exec'd) from the master.  Worker *i* gets socket set *i* (one
  SO_REUSEPORT socket per TCP listener, the shared unix sockets); the child closes every other socket
  it inherited, drops privileges, then runs ``worker_main(ctx)``.  The master keeps all sockets open,
  so a replacement worker gets the very same sockets and connections waiting in a dead worker's
  backlog are served by its successor.
* Each child shares one anonymous page with the master: the child writes its heartbeat there
  (``ctx.notify()``) and, on BootError, its reason.  The first heartbeat marks the child "ready".
  A child silent for longer than ``worker_timeout`` is SIGKILLed and replaced.
* A child that cannot boot (BootError, or exit status WORKER_BOOT_ERROR, or MAX_BOOT_FAILURES exits
  in a row before its first heartbeat, whatever the cause) stops the whole master with exit status 1
  and the child's reason; any other death is answered by a respawn on the same sockets, after a
  backoff (0.1 s doubling to 10 s) when the slot keeps dying within 30 s of its start.
* TERM/INT/QUIT: close the master's copies of the listeners, TERM every child, SIGKILL what is left
  after ``grace_period``, exit 0.  A second one: SIGKILL now.
* HUP: reload the config (on any error: log and keep everything as it is), bind the listeners that are
  new, then replace the processes one at a time — start the new one, wait for its first heartbeat,
  then retire the old one (RETIRE_SIGNAL: it stops accepting and serves its open sessions, idle ones
  included, until they end or ``grace_period`` nears) — so every socket always has a live acceptor and
  no connection is dropped by the reload.  If a new process fails to boot
  the reload stops there and the remaining old processes keep running.
* Every slot keeps the config object it was started with, and a respawn forks with that object: after a
  reload that failed, a worker that dies is replaced with the last configuration that booted, never with
  the one that failed.  What ``load_config`` loaded into that object in the master (fastmail's TLS
  context: ``Config.server_tls``) is inherited through fork, so a respawn does not depend on files that
  may have changed on disk since.

The master stays root when started as root: a HUP may bring a listener on a port below 1024 or a new
unix socket path.  Only forked children drop privileges, before they run any session code.  Started as
root with no ``user``, the children stay root: allowed (a dev server, a container), with a WARNING
``event=workers_as_root`` at start and on each reload.

Config, duck-typed: ``workers``, ``listeners`` (ListenerSpec list), ``user``, ``group``,
``grace_period``, ``pid_file``; optional ``worker_timeout`` (default 30 s, 0 disables heartbeats)
and ``backlog`` (default 1024).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fastmail.log import configure_logging, kv
from fastmail.master.errors import WORKER_BOOT_ERROR, BootError
from fastmail.master.listeners import (
    DEFAULT_BACKLOG,
    ListenerSpec,
    bind_socket_sets,
    close_sockets,
    format_address,
)
from fastmail.master.privileges import (
    ROOT_WORKERS,
    Credentials,
    drop_privileges,
    prctl,
    resolve_credentials,
    workers_run_as_root,
)
from fastmail.master.rlimits import raise_nofile
from fastmail.master.worker import (
    RETIRE_SIGNAL,
    SHM_SIZE,
    WorkerContext,
    read_beat,
    read_reason,
    write_reason,
)

__all__ = [
    "WORKER",
    "WORKER_BOOT_ERROR",
    "Arbiter",
    "BootError",
    "ListenerSpec",
    "WorkerContext",
    "configure_logging",
    "kv",
]

log = logging.getLogger("fastmail.master")

WORKER = "worker"
DEFAULT_WORKER_TIMEOUT = 30.0
BACKOFF_MIN = 0.1  # first delay when a process dies soon after it started
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0  # a process up that long resets its slot's backoff
READY_WITHOUT_HEARTBEAT = 1.0  # with worker_timeout = 0, "booted" means "alive for this long"
MAX_BOOT_FAILURES = 5  # exits in a row before ready (any cause) count as a boot error
_PR_SET_PDEATHSIG = 1

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
_HANDLED_SIGNALS = (*_STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD)
_SIGNAL_QUEUE_MAX = 32


# -- logging ---------------------------------------------------------------------------------------


def _flush_logs() -> None:
    for h in logging.getLogger().handlers + log.handlers:
        with contextlib.suppress(Exception):
            h.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# -- state -----------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    """A place for one process: worker i, or one extra kind.  The current slot of a key is respawned
    when its process dies; a slot being replaced by a reload is not."""

    kind: str
    index: int
    generation: int
    config: Any
    creds: Credentials | None
    sockets: dict[str, socket.socket]
    pid: int | None = None
    delay: float = 0.0
    respawn_at: float | None = None
    boot_failures: int = 0  # exits in a row before the first heartbeat

    @property
    def key(self) -> tuple[str, int]:
        return (self.kind, self.index)


@dataclass(eq=False)
class _Proc:
    slot: _Slot
    pid: int
    shm: mmap.mmap
    started: float
    ready: bool = False
    stopping: bool = False
    retiring: bool = False  # stopped by a reload: its open sessions go on until the grace period ends
    deadline: float = 0.0
    killed: bool = False

    def fields(self) -> dict[str, object]:
        return {
            "kind": self.slot.kind,
            "index": self.slot.index,
            "pid": self.pid,
            "generation": self.slot.generation,
        }


@dataclass(eq=False)
class _Reload:
    config: Any
    generation: int
    pending: list[_Slot]
    keys: set[tuple[str, int]]
    candidate: _Proc | None = None
    replaced: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)


# -- the arbiter -----------------------------------------------------------------------------------


class Arbiter:
    """Pre-fork master.  ``run()`` blocks until the server stops and returns the exit status:
    0 after TERM/INT/QUIT, 1 when the server could not boot (the reason is logged)."""

    def __init__(
        self,
        load_config: Callable[[], Any],
        worker_main: Callable[[WorkerContext], None],
        extra_kinds: Mapping[str, Callable[[WorkerContext], None]] | None = None,
        prepare: Mapping[str, Callable[[WorkerContext], object]] | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        """``prepare[kind](ctx)``, when given, runs in the child before privileges are dropped; its result
        is ``ctx.prepared`` for the main function, which runs after the drop.  ``on_exit(pid)``, when given,
        runs in the master's loop for every child it reaps (fastmail.metrics drops the dead pid's live gauges)."""
        self.on_exit = on_exit
        self.load_config = load_config
        self.worker_main = worker_main
        self.extra_kinds = dict(extra_kinds or {})
        self.prepare = dict(prepare or {})
        if WORKER in self.extra_kinds:
            raise ValueError(f"{WORKER!r} is the kind of the socket workers; name the extra kind otherwise")
        self.config: Any = None
        self.generation = 0
        self.forks = 0
        self.slots: dict[tuple[str, int], _Slot] = {}
        self.procs: dict[int, _Proc] = {}
        self.sockets: dict[tuple[object, ...], socket.socket] = {}
        self._signals: list[int] = []
        self._wake_r = -1
        self._wake_w = -1
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd = -1
        self._stopping = False
        self._exit_code = 0
        self._reload: _Reload | None = None
        self._reload_again = False
        self._pid_file = ""
        self._master_pid = os.getpid()

    # ---- config accessors (duck-typed config) ----

    def _timeout(self, config: Any = None) -> float:
        return float(
            getattr(config if config is not None else self.config, "worker_timeout", DEFAULT_WORKER_TIMEOUT)
        )

    def _grace(self) -> float:
        return max(0.0, float(getattr(self.config, "grace_period", 30.0)))

    @staticmethod
    def _backlog(config: Any) -> int:
        return int(getattr(config, "backlog", DEFAULT_BACKLOG))

    # ---- run ----

    def run(self) -> int:
        configure_logging()
        self._master_pid = os.getpid()
        try:
            try:
                self._boot()
            except BootError as e:
                log.error(kv(event="boot_error", reason=str(e)))
                self._exit_code = 1
                self._begin_stop()
            try:
                code = self._loop()
            except Exception:
                log.exception(kv(event="master_error"))
                self._kill_all()
                code = 1
        finally:
            self._cleanup()
        log.info(kv(event="master_exit", code=code))
        _flush_logs()
        return code

    def _boot(self) -> None:
        try:
            config = self.load_config()
        except BootError:
            raise
        except Exception as e:
            raise BootError(f"cannot load configuration: {e}") from e
        self._install_signals()
        log.info(kv(event="nofile", **raise_nofile()))  # the children inherit it (fastmail.master.rlimits)
        self._write_pid_file(str(getattr(config, "pid_file", "") or ""))
        creds = resolve_credentials(str(config.user or ""), str(getattr(config, "group", "") or ""))
        sets, new = bind_socket_sets(
            list(config.listeners),
            int(config.workers),
            backlog=self._backlog(config),
            owner=(creds.uid, creds.gid) if creds else None,
        )
        self.sockets.update(new)
        self._log_listeners(config, sets)
        self.config = config
        self.generation = 1
        self._warn_root(creds)
        log.info(
            kv(
                event="master_start",
                pid=os.getpid(),
                workers=config.workers,
                extra=",".join(self.extra_kinds) or None,
                user=creds.user if creds else None,
                timeout=self._timeout(),
                grace=self._grace(),
            )
        )
        for slot in self._make_slots(config, creds, sets, self.generation):
            self.slots[slot.key] = slot
            if self._spawn(slot) is None:
                self._schedule_respawn(slot, time.monotonic())

    @staticmethod
    def _warn_root(creds: Credentials | None) -> None:
        """Started as root without server.user, every session would run as root: allowed (the embedded dev
        server, a container), but never silently."""
        if workers_run_as_root(creds):
            log.warning(kv(event="workers_as_root", reason=ROOT_WORKERS))

    def _make_slots(
        self, config: Any, creds: Credentials | None, sets: list[dict[str, socket.socket]], generation: int
    ) -> list[_Slot]:
        slots = [_Slot(WORKER, i, generation, config, creds, dict(s)) for i, s in enumerate(sets)]
        counts = getattr(config, "extra_counts", None) or {}
        slots += [_Slot(kind, i, generation, config, creds, {})
                  for kind in self.extra_kinds for i in range(int(counts.get(kind, 1)))]
        return slots

    def _log_listeners(self, config: Any, sets: list[dict[str, socket.socket]]) -> None:
        for spec in config.listeners:
            sock = sets[0][spec.name]
            dual = None
            if sock.family == socket.AF_UNIX:
                address = format_address(spec.address)
                count = 1
            else:
                host, port = sock.getsockname()[:2]
                address = format_address((host, port))
                count = len({id(s[spec.name]) for s in sets})
                if sock.family == socket.AF_INET6 and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                    dual = "yes"  # ":PORT": IPv4 too
            log.info(kv(event="listen", name=spec.name, address=address, dual_stack=dual, sockets=count))

    # ---- signals ----

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in _HANDLED_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._enqueue_signal)

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        # Only enqueue: the main loop acts (STYLE "the master does nothing inside a signal handler").
        if len(self._signals) < _SIGNAL_QUEUE_MAX:
            self._signals.append(signum)

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, handler)
        self._old_handlers.clear()
        if self._wake_w >= 0:
            with contextlib.suppress(Exception):
                signal.set_wakeup_fd(self._old_wakeup_fd)
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def _dispatch(self, signum: int) -> None:
        handler = {
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_int,
            signal.SIGQUIT: self.handle_quit,
            signal.SIGHUP: self.handle_hup,
            signal.SIGCHLD: self.handle_chld,
        }.get(signal.Signals(signum))
        if handler is not None:
            handler()

    def handle_term(self) -> None:
        self._stop_signal("TERM")

    def handle_int(self) -> None:
        self._stop_signal("INT")

    def handle_quit(self) -> None:
        self._stop_signal("QUIT")

    def handle_chld(self) -> None:
        self._reap()

    def _stop_signal(self, name: str) -> None:
        if self._stopping:
            log.info(kv(event="stop", signal=name, mode="immediate", workers=len(self.procs)))
            self._kill_all()
            return
        log.info(kv(event="stop", signal=name, mode="graceful", grace=self._grace(), workers=len(self.procs)))
        self._begin_stop()

    def handle_hup(self) -> None:
        if self._stopping:
            return
        if self._reload is not None:
            self._reload_again = True
            log.info(kv(event="reload_queued", generation=self._reload.generation))
            return
        log.info(kv(event="reload_start", generation=self.generation))
        try:
            config = self.load_config()
            creds = resolve_credentials(str(config.user or ""), str(getattr(config, "group", "") or ""))
            sets, new = bind_socket_sets(
                list(config.listeners),
                int(config.workers),
                backlog=self._backlog(config),
                owner=(creds.uid, creds.gid) if creds else None,
                reuse=self.sockets,
            )
        except Exception as e:  # a bad config must never take the running server down
            log.error(
                kv(
                    event="reload_failed",
                    generation=self.generation,
                    reason=str(e) or repr(e),
                    kept="old config and workers",
                )
            )
            return
        self.sockets.update(new)
        if new:
            self._log_listeners(config, sets)
        self._warn_root(creds)
        self.generation += 1
        targets = self._make_slots(config, creds, sets, self.generation)
        self._reload = _Reload(
            config=config,
            generation=self.generation,
            pending=targets,
            keys={s.key for s in targets},
            total=len(targets),
        )

    # ---- main loop ----

    def _loop(self) -> int:
        while True:
            if self._stopping and not self.procs:
                return self._exit_code
            self._sleep()
            while self._signals:
                self._dispatch(self._signals.pop(0))
            self._reap()
            now = time.monotonic()
            self._check_procs(now)
            if self._stopping:
                if not self.procs:
                    return self._exit_code
                continue
            self._progress_reload(now)
            self._respawn_due(now)

    def _next_timeout(self) -> float:
        if self._signals:
            return 0.0
        now = time.monotonic()
        wait = 1.0
        timeout = self._timeout()
        if timeout > 0:
            wait = min(wait, max(0.05, timeout / 10))
        if self._reload is not None or any(not p.ready and not p.stopping for p in self.procs.values()):
            wait = min(wait, 0.05)  # a booting process: notice its first heartbeat soon
        for slot in self.slots.values():
            if slot.respawn_at is not None:
                wait = min(wait, slot.respawn_at - now)
        for p in self.procs.values():
            if p.stopping and not p.killed:
                wait = min(wait, p.deadline - now)
        return max(0.0, wait)

    def _sleep(self) -> None:
        timeout = self._next_timeout()
        if self._wake_r < 0:
            time.sleep(min(timeout, 0.05))
            return
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_r], [], [], timeout)
        while True:  # the bytes are signal numbers; the queue holds them already
            try:
                if not os.read(self._wake_r, 4096):
                    break
            except (BlockingIOError, InterruptedError):
                break

    # ---- processes ----

    def _spawn(self, slot: _Slot) -> _Proc | None:
        shm = mmap.mmap(-1, SHM_SIZE)
        _flush_logs()
        # Block our signals across fork: a TERM sent to the new child before it reset its handlers would
        # otherwise run the master's handler in the child and be lost there.  The child unblocks once
        # its handlers are the defaults, so such a signal is then acted on.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
            shm.close()
            log.error(kv(event="fork_failed", kind=slot.kind, index=slot.index, reason=e.strerror))
            return None
        if pid == 0:
            self._child(slot, shm)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        self.forks += 1
        now = time.monotonic()
        proc = _Proc(slot=slot, pid=pid, shm=shm, started=now)
        self.procs[pid] = proc
        slot.pid = pid
        slot.respawn_at = None
        log.info(kv(event="worker_start", **proc.fields()))
        return proc

    def _child(self, slot: _Slot, shm: mmap.mmap) -> NoReturn:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (*_STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)  # worker_main installs its own
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the master's business
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            own = {id(s) for s in slot.sockets.values()}
            for sock in self.sockets.values():
                if id(sock) not in own:
                    sock.close()  # only this process's copy: the kernel spreads over the others
            for proc in self.procs.values():
                proc.shm.close()
            self.procs = {}
            ctx = WorkerContext(
                index=slot.index,
                generation=slot.generation,
                sockets=dict(slot.sockets),
                config=slot.config,
                kind=slot.kind,
                timeout=self._timeout(slot.config),
                _shm=shm,
            )
            prepare = self.prepare.get(slot.kind)
            if prepare is not None:
                # Still privileged: open what needs it (store, TLS key) and import what opening imports.
                ctx.prepared = prepare(ctx)
            if slot.creds is not None:
                drop_privileges(slot.creds)
            # After the drop (a credential change clears it): die with the master, never orphaned.
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != self._master_pid:
                os._exit(0)
            main = self.worker_main if slot.kind == WORKER else self.extra_kinds[slot.kind]
            main(ctx)
            code = 0
        except BootError as e:
            write_reason(shm, str(e) or type(e).__name__)
            code = WORKER_BOOT_ERROR
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                write_reason(shm, str(e.code))
                code = 1
        except BaseException as e:
            traceback.print_exc()
            write_reason(shm, f"{type(e).__name__}: {e}")
            code = 1
        finally:
            _flush_logs()
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.procs.pop(pid, None)
            if self.on_exit is not None:
                try:
                    self.on_exit(pid)
                except Exception:
                    log.exception(kv(event="on_exit_failed", pid=pid))
            if proc is not None:
                self._on_exit(proc, os.waitstatus_to_exitcode(status))

    def _on_exit(self, proc: _Proc, code: int) -> None:
        reason = read_reason(proc.shm)
        proc.shm.close()
        now = time.monotonic()
        how: dict[str, object] = {"signal": signal.Signals(-code).name} if code < 0 else {"code": code}
        expected = proc.stopping or self._stopping
        (log.info if expected else log.warning)(
            kv(
                event="worker_exit",
                **proc.fields(),
                **how,
                uptime=f"{now - proc.started:.3f}",
                reason=reason or None,
            )
        )
        if self._stopping or proc.stopping:
            return
        slot = proc.slot
        what = f"{slot.kind} {slot.index}"
        reload = self._reload
        is_candidate = reload is not None and reload.candidate is proc
        if code == WORKER_BOOT_ERROR:
            reason = reason or f"{slot.kind} exited with status {WORKER_BOOT_ERROR} (boot error)"
            if is_candidate:
                self._abort_reload(f"new {what} cannot boot: {reason}")
            else:
                self._halt(proc, reason)
            return
        if is_candidate:
            self._abort_reload(
                f"new {what} exited before it was ready ({kv(**how)}): {reason or 'no reason given'}"
            )
            return
        if self.slots.get(slot.key) is not slot or slot.pid != proc.pid:
            return
        slot.pid = None
        if proc.ready:
            slot.boot_failures = 0
        else:
            slot.boot_failures += 1
            if slot.boot_failures >= MAX_BOOT_FAILURES:
                self._halt(
                    proc,
                    f"{what} exited {slot.boot_failures} times in a row before it was ready; "
                    f"last: {kv(**how)} {reason or '(see its output above)'}",
                )
                return
        if now - proc.started >= STABLE_AFTER:
            slot.delay = 0.0
        else:
            slot.delay = min(BACKOFF_MAX, max(BACKOFF_MIN, slot.delay * 2))
        self._schedule_respawn(slot, now)

    def _halt(self, proc: _Proc, reason: str) -> None:
        """A process cannot boot: stop everything, exit 1 (no respawn storm)."""
        log.error(kv(event="boot_error", **proc.fields(), reason=reason))
        self._exit_code = 1
        self._begin_stop()

    def _schedule_respawn(self, slot: _Slot, now: float) -> None:
        slot.respawn_at = now + slot.delay
        log.info(kv(event="worker_respawn", kind=slot.kind, index=slot.index, delay=f"{slot.delay:.1f}"))

    def _respawn_due(self, now: float) -> None:
        for slot in list(self.slots.values()):
            if slot.pid is None and slot.respawn_at is not None and now >= slot.respawn_at:
                if self._spawn(slot) is None:
                    slot.delay = min(BACKOFF_MAX, max(BACKOFF_MIN, slot.delay * 2))
                    self._schedule_respawn(slot, now)

    def _check_procs(self, now: float) -> None:
        """Readiness (first heartbeat), heartbeat timeouts, and the grace deadline of stopping ones."""
        timeout = self._timeout()
        for proc in list(self.procs.values()):
            if proc.killed:
                continue
            if proc.stopping:
                if now >= proc.deadline:
                    log.warning(kv(event="worker_kill", **proc.fields(), reason="grace_period_expired"))
                    self._kill(proc)
                continue
            beat = read_beat(proc.shm)
            if not proc.ready and (
                beat > 0 or (timeout <= 0 and now - proc.started >= READY_WITHOUT_HEARTBEAT)
            ):
                proc.ready = True
                log.info(kv(event="worker_ready", **proc.fields(), boot=f"{now - proc.started:.3f}"))
            if timeout > 0:
                silent = now - (beat if beat > 0 else proc.started)
                if silent > timeout:
                    log.warning(
                        kv(
                            event="worker_timeout",
                            **proc.fields(),
                            silent=f"{silent:.1f}",
                            timeout=timeout,
                            booted=proc.ready,
                        )
                    )
                    self._kill(proc)

    def _kill(self, proc: _Proc) -> None:
        proc.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)

    def _kill_all(self) -> None:
        for proc in list(self.procs.values()):
            self._kill(proc)

    def _stop_proc(self, proc: _Proc, deadline: float, retire: bool = False) -> None:
        """SIGTERM: stop accepting, close idle sessions at once, let the others finish by `deadline`.
        `retire` (a reload replaced it): RETIRE_SIGNAL instead, every open session (idle ones too) goes on
        being served until it ends or the deadline nears, so a reload drops no connection that finishes
        within the grace period.  A stop that comes while it retires hurries it (SIGTERM)."""
        if proc.stopping:
            proc.deadline = min(proc.deadline, deadline)
            if proc.retiring and not retire:
                proc.retiring = False
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
            return
        proc.stopping = True
        proc.retiring = retire
        proc.deadline = deadline
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, RETIRE_SIGNAL if retire else signal.SIGTERM)

    def _begin_stop(self) -> None:
        """Graceful stop of everything: no new connections, sessions finish within the grace period."""
        self._stopping = True
        self._reload = None
        self.slots.clear()
        # Closing the master's copies means a socket dies as soon as its worker stops accepting, so
        # new clients are refused instead of waiting in a backlog that nobody will ever accept from.
        close_sockets(self.sockets.values())
        self.sockets.clear()
        deadline = time.monotonic() + self._grace()
        for proc in list(self.procs.values()):
            self._stop_proc(proc, deadline)

    # ---- reload ----

    def _progress_reload(self, now: float) -> None:
        reload = self._reload
        if reload is None:
            return
        while True:
            cand = reload.candidate
            if cand is not None:
                if not cand.ready:
                    return
                old = self.slots.get(cand.slot.key)
                self.slots[cand.slot.key] = cand.slot
                old_pid = old.pid if old is not None else None
                if old_pid is not None and old_pid in self.procs:
                    self._stop_proc(self.procs[old_pid], now + self._grace(), retire=True)
                log.info(
                    kv(
                        event="worker_replaced",
                        kind=cand.slot.kind,
                        index=cand.slot.index,
                        old_pid=old_pid,
                        pid=cand.pid,
                        generation=reload.generation,
                    )
                )
                reload.replaced += 1
                reload.candidate = None
            if not reload.pending:
                break
            slot = reload.pending.pop(0)
            proc = self._spawn(slot)
            if proc is None:
                self._abort_reload(f"cannot fork a new {slot.kind}")
                return
            reload.candidate = proc
            return
        for key in list(self.slots):
            if key not in reload.keys:  # fewer workers than before
                gone = self.slots.pop(key)
                if gone.pid is not None and gone.pid in self.procs:
                    self._stop_proc(self.procs[gone.pid], now + self._grace(), retire=True)
        self.config = reload.config
        self._reload = None
        self._gc_sockets()
        log.info(
            kv(
                event="reload_done",
                generation=reload.generation,
                replaced=reload.replaced,
                seconds=f"{now - reload.started:.3f}",
            )
        )
        if self._reload_again:
            self._reload_again = False
            self.handle_hup()

    def _abort_reload(self, reason: str) -> None:
        reload = self._reload
        if reload is None:
            return
        self._reload = None
        cand = reload.candidate
        if cand is not None and cand.pid in self.procs:
            self._stop_proc(cand, time.monotonic() + self._grace())
        if reload.replaced:
            self.config = reload.config  # partly applied: the processes already replaced stay new
        log.error(
            kv(
                event="reload_failed",
                generation=reload.generation,
                reason=reason,
                replaced=f"{reload.replaced}/{reload.total}",
                kept="old workers" if reload.replaced == 0 else "mixed generations",
            )
        )
        self._gc_sockets()
        self._reload_again = False

    def _gc_sockets(self) -> None:
        """Close the master's sockets that no current (or pending) slot uses any more."""
        used: set[int] = set()
        slots = list(self.slots.values())
        if self._reload is not None:
            slots += self._reload.pending
            if self._reload.candidate is not None:
                slots.append(self._reload.candidate.slot)
        for slot in slots:
            used.update(id(s) for s in slot.sockets.values())
        for key, sock in list(self.sockets.items()):
            if id(sock) not in used:
                del self.sockets[key]
                log.info(kv(event="unlisten", socket=":".join(map(str, key))))
                close_sockets([sock])

    # ---- pid file and cleanup ----

    def _write_pid_file(self, path: str) -> None:
        if not path:
            return
        try:
            with open(path) as f:
                old = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            old = 0
        except OSError as e:
            raise BootError(f"cannot read pid file {path}: {e.strerror}") from None
        if old > 0 and old != os.getpid():
            alive = True
            try:
                os.kill(old, 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:
                pass
            if alive:
                raise BootError(f"pid file {path} names running process {old}: is fastmail already running?")
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise BootError(f"cannot write pid file {path}: {e.strerror}") from None
        self._pid_file = path

    def _remove_pid_file(self) -> None:
        if not self._pid_file:
            return
        with contextlib.suppress(OSError, ValueError):
            with open(self._pid_file) as f:
                if int(f.read().strip()) == os.getpid():
                    os.unlink(self._pid_file)
        self._pid_file = ""

    def _cleanup(self) -> None:
        if self.procs:  # only after an internal error: never leave orphans behind
            self._kill_all()
            deadline = time.monotonic() + 5.0
            while self.procs and time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    proc = self.procs.pop(pid, None)
                    if proc is not None:
                        proc.shm.close()
                else:
                    time.sleep(0.01)
        close_sockets(self.sockets.values())
        self.sockets.clear()
        self._remove_pid_file()
        self._restore_signals()
