"""The master (arbiter) with real processes, real signals and real sockets on 127.0.0.1.

This file is also the master program the tests start: ``python test_arbiter.py CONFIG.json`` runs an
Arbiter whose workers serve a tiny line protocol with uvloop.  On connect a worker sends
``pid generation uid euid gid egid index``; then ``slow N`` makes it sleep N s and answer ``done``,
``hang`` blocks its event loop for good (no more heartbeats).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop  # imported before the fork: after the drop to "nobody" the Python install may be unreadable

from fastmail.master import (
    Arbiter,
    BootError,
    ListenerSpec,
    WorkerContext,
    install_worker_signals,
    start_heartbeat,
)

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------------------
# The program under test (runs in the subprocess)


@dataclass
class DummyConfig:
    workers: int = 2
    listeners: list[ListenerSpec] = field(default_factory=list)
    user: str = ""
    group: str = ""
    grace_period: float = 5.0
    pid_file: str = ""
    worker_timeout: float = 30.0
    mode: str = "serve"  # "serve" | "boot_error" | "crash_on_boot"


def load_config_file(path: str) -> Callable[[], DummyConfig]:
    def load() -> DummyConfig:
        data = json.loads(Path(path).read_text())
        specs = []
        for item in data.pop("listeners"):
            address = item["address"]
            specs.append(ListenerSpec(item["name"], address if isinstance(address, str) else tuple(address)))
        return DummyConfig(listeners=specs, **data)

    return load


def _run_uvloop(main: Callable[[], Any]) -> None:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def dummy_worker(ctx: WorkerContext) -> None:
    config = ctx.config
    assert isinstance(config, DummyConfig)
    if config.mode == "boot_error":
        raise BootError("store cannot open: /nonexistent/index.mdb: No such file or directory")
    if config.mode == "crash_on_boot":
        raise RuntimeError("bug in worker boot")
    ident = f"{os.getpid()} {ctx.generation} {os.getuid()} {os.geteuid()} {os.getgid()} {os.getegid()} {ctx.index}\n"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        install_worker_signals(loop, stop.set)
        sessions: set[asyncio.Task[Any]] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            sessions.add(task)
            try:
                writer.write(ident.encode())
                await writer.drain()
                line = await reader.readline()
                if line.startswith(b"slow"):
                    await asyncio.sleep(float(line.split()[1]))
                    writer.write(b"done\n")
                    await writer.drain()
                elif line.startswith(b"hang"):
                    time.sleep(3600)  # blocks the loop: heartbeats stop
            except ConnectionError:
                pass
            finally:
                writer.close()
                sessions.discard(task)

        servers = [await asyncio.start_server(handle, sock=s) for s in ctx.sockets.values()]
        beat = start_heartbeat(ctx)
        await stop.wait()
        for server in servers:
            server.close()  # stop accepting; the master keeps its copy for the next worker
        await asyncio.sleep(0.05)  # let connections accepted just now start their session
        while sessions:
            await asyncio.sleep(0.01)
        beat.cancel()

    _run_uvloop(serve)


def dummy_delivery(ctx: WorkerContext) -> None:
    assert not ctx.sockets

    async def run() -> None:
        stop = asyncio.Event()
        install_worker_signals(asyncio.get_running_loop(), stop.set)
        beat = start_heartbeat(ctx)
        await stop.wait()
        beat.cancel()

    _run_uvloop(run)


def main(argv: list[str]) -> int:
    extra = {"delivery": dummy_delivery} if os.environ.get("ARBITER_TEST_DELIVERY") else {}
    return Arbiter(load_config_file(argv[1]), dummy_worker, extra).run()


# ---------------------------------------------------------------------------------------------------
# Test helpers (run in pytest)

_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_kv(line: str) -> dict[str, str]:
    out = {}
    for key, value in _KV.findall(line):
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[key] = value
    return out


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.02
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what() if callable(what) else what}"
            )
        time.sleep(interval)


class Master:
    def __init__(self, tmp_path: Path, delivery: bool = False, **config: Any) -> None:
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "config.json"
        self.log_path = tmp_path / "master.log"
        self.config: dict[str, Any] = {
            "workers": 2,
            "listeners": [{"name": "smtp", "address": ["127.0.0.1", 0]}],
        }
        self.write_config(**config)
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        if delivery:
            env["ARBITER_TEST_DELIVERY"] = "1"
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE), str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                cwd=ROOT,
                env=env,
                start_new_session=True,  # its own process group: cleanup kills exactly this tree
            )
        self.started = time.monotonic()

    def write_config(self, **changes: Any) -> None:
        self.config.update(changes)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config))
        tmp.replace(self.config_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, event: str | None = None, **match: object) -> list[dict[str, str]]:
        out = []
        for line in self.log().splitlines():
            fields = parse_kv(line)
            if event is not None and fields.get("event") != event:
                continue
            if all(fields.get(k) == str(v) for k, v in match.items()):
                out.append(fields)
        return out

    def wait_event(
        self, event: str, timeout: float = 10.0, count: int = 1, **match: object
    ) -> list[dict[str, str]]:
        def found() -> list[dict[str, str]] | None:
            if self.proc.poll() is not None and len(self.events(event, **match)) < count:
                raise AssertionError(
                    f"master exited ({self.proc.returncode}) while waiting for {event}:\n{self.log()}"
                )
            got = self.events(event, **match)
            return got if len(got) >= count else None

        return wait_until(found, timeout, lambda: f"{count} x event={event} {match}\n{self.log()}")

    def port(self, name: str = "smtp") -> int:
        listen = self.wait_event("listen", name=name)[-1]
        return int(listen["address"].rsplit(":", 1)[1])

    def live_pids(self, kind: str = "worker") -> dict[int, int]:
        """index -> pid of the live processes of ``kind``, from the log."""
        exited = {e["pid"] for e in self.events("worker_exit")}
        out = {}
        for e in self.events("worker_start", kind=kind):
            if e["pid"] not in exited:
                out[int(e["index"])] = int(e["pid"])
        return out

    def wait_ready(
        self, workers: int, kind: str = "worker", generation: int = 1, timeout: float = 10.0
    ) -> None:
        self.wait_event("worker_ready", timeout=timeout, count=workers, kind=kind, generation=generation)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"master still running after {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


@pytest.fixture
def start_master(tmp_path: Path) -> Iterator[Callable[..., Master]]:
    masters: list[Master] = []

    def start(**kwargs: Any) -> Master:
        m = Master(tmp_path, **kwargs)
        masters.append(m)
        return m

    yield start
    for m in masters:
        m.kill()
        # workers left behind (they get SIGTERM from PDEATHSIG anyway): kill the group by its id
        try:
            os.killpg(m.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ask(port: int | str, payload: bytes | None = None, timeout: float = 10.0) -> list[str]:
    """Connect, read the worker's identity line (pid gen uid euid gid egid index)."""
    family = socket.AF_UNIX if isinstance(port, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(port if isinstance(port, str) else ("127.0.0.1", port))
        f = s.makefile("rb")
        line = f.readline()
        if not line:
            raise ConnectionResetError("closed before the greeting")
        if payload:
            s.sendall(payload)
        return line.decode().split()


class Hammer(threading.Thread):
    """Opens short connections in a loop and records (pid, generation) or the error."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.results: list[tuple[float, int, int]] = []
        self.errors: list[tuple[float, str]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                fields = ask(self.port, timeout=10.0)
                self.results.append((time.monotonic(), int(fields[0]), int(fields[1])))
            except OSError as e:
                self.errors.append((time.monotonic(), repr(e)))
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(20)

    def __enter__(self) -> Hammer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


# ---------------------------------------------------------------------------------------------------
# Tests


def test_two_workers_both_receive_connections(start_master: Callable[..., Master]) -> None:
    m = start_master(workers=2)
    port = m.port()
    m.wait_ready(2)
    pids = {int(ask(port)[0]) for _ in range(200)}
    assert pids == set(m.live_pids().values())
    assert len(pids) == 2
    assert len(m.events("listen")) == 1
    assert m.events("listen")[0]["sockets"] == "2"


def test_killed_worker_is_replaced_on_the_same_sockets(start_master: Callable[..., Master]) -> None:
    m = start_master(workers=2)
    port = m.port()
    m.wait_ready(2)
    before = m.live_pids()
    with Hammer(port) as hammer:
        time.sleep(0.3)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        m.wait_event("worker_start", index=0, count=2, kind="worker")
        new = m.live_pids()[0]
        assert new != victim
        wait_until(lambda: any(pid == new for _, pid, _ in hammer.results), 10, "the replacement to answer")
        time.sleep(0.3)
    refused = [e for e in hammer.errors if "ConnectionRefused" in e[1]]
    assert not refused, hammer.errors
    # A session cut by the SIGKILL is lost (reset); nothing else may fail.
    assert len(hammer.errors) <= 2, hammer.errors
    assert len(hammer.results) > 50
    assert len(m.events("listen")) == 1  # no rebind: same sockets
    assert m.events("worker_respawn", index=0)[0]["delay"] == "0.1"


def test_connection_waiting_in_dead_workers_backlog_is_served(start_master: Callable[..., Master]) -> None:
    m = start_master(workers=1)
    port = m.port()
    m.wait_ready(1)
    victim = m.live_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: pid_gone(victim), 5, "the worker to die")
    # Nobody accepts right now: the kernel queues the connection on the socket the master kept open.
    fields = ask(port, timeout=10)
    assert int(fields[0]) != victim
    wait_until(lambda: m.live_pids().get(0) == int(fields[0]), 5, "the replacement's worker_start line")


def test_hup_replaces_workers_one_by_one_without_refusing(start_master: Callable[..., Master]) -> None:
    m = start_master(workers=2, delivery=True)
    port = m.port()
    m.wait_ready(2)
    m.wait_ready(1, kind="delivery")
    old = set(m.live_pids().values())
    old_delivery = m.live_pids("delivery")[0]
    with Hammer(port) as hammer:
        time.sleep(0.3)
        m.signal(signal.SIGHUP)
        m.wait_event("reload_done", generation=2)
        done_at = time.monotonic()
        wait_until(
            lambda: sum(1 for t, _, gen in hammer.results if t > done_at + 0.5) > 20,
            10,
            "generation 2 answers",
        )
    assert hammer.errors == []
    late = {(pid, gen) for t, pid, gen in hammer.results if t > done_at + 0.5}
    assert late and all(gen == 2 for _, gen in late)
    new = set(m.live_pids().values())
    assert len(new) == 2 and not new & old
    assert {pid for pid, _ in late} <= new
    assert m.live_pids("delivery")[0] != old_delivery
    # one by one: each old process is stopped only after its successor reported ready
    replaced = m.events("worker_replaced", generation=2)
    assert [(e["kind"], e["index"]) for e in replaced] == [
        ("worker", "0"),
        ("worker", "1"),
        ("delivery", "0"),
    ]
    lines = m.log().splitlines()
    for e in replaced:
        ready_at = next(
            i for i, line in enumerate(lines) if "event=worker_ready" in line and f"pid={e['pid']} " in line
        )
        exit_at = next(
            i
            for i, line in enumerate(lines)
            if "event=worker_exit" in line and f"pid={e['old_pid']} " in line
        )
        assert ready_at < exit_at
    assert len(m.events("listen")) == 1  # sockets reused
    m.wait_event("worker_exit", count=3, generation=1)


def test_hup_rebinds_changed_listeners_and_worker_count(start_master: Callable[..., Master]) -> None:
    m = start_master(
        workers=2,
        listeners=[
            {"name": "smtp", "address": ["127.0.0.1", 0]},
            {"name": "lmtp", "address": ["127.0.0.1", 0]},
        ],
    )
    smtp, lmtp = m.port("smtp"), m.port("lmtp")
    m.wait_ready(2)
    m.write_config(
        workers=3,
        listeners=[
            {"name": "smtp", "address": ["127.0.0.1", 0]},
            {"name": "submission", "address": ["127.0.0.1", 0]},
        ],
    )
    m.signal(signal.SIGHUP)
    m.wait_event("reload_done", generation=2)
    submission = m.port("submission")
    assert ask(submission)[1] == "2"
    assert m.events("listen", name="smtp")[-1]["address"].endswith(f":{smtp}")
    pids = {int(ask(smtp)[0]) for _ in range(300)}
    assert pids == set(m.live_pids().values()) and len(pids) == 3
    # the removed listener is closed once its old workers have stopped
    wait_until(lambda: len(m.events("worker_exit", generation=1)) == 2, 10, "old workers to exit")
    with pytest.raises(ConnectionRefusedError):
        ask(lmtp)


def test_hup_with_bad_config_or_failing_boot_keeps_old_workers(start_master: Callable[..., Master]) -> None:
    m = start_master(workers=2)
    port = m.port()
    m.wait_ready(2)
    old = m.live_pids()
    m.config_path.write_text("{not json")
    m.signal(signal.SIGHUP)
    failed = m.wait_event("reload_failed")
    assert "cannot" in failed[0]["reason"] or "Expecting" in failed[0]["reason"]
    m.write_config(mode="boot_error")
    m.signal(signal.SIGHUP)
    failed = m.wait_event("reload_failed", count=2)[-1]
    assert "store cannot open" in failed["reason"]
    assert failed["replaced"] == "0/2"
    time.sleep(0.3)
    assert m.proc.poll() is None
    assert m.live_pids() == old
    assert {int(ask(port)[0]) for _ in range(50)} <= set(old.values())
    assert all(ask(port)[1] == "1" for _ in range(10))
    # A worker that dies now is replaced with the configuration that is running (the last good one), not
    # with the one that failed, and the master goes on.
    os.kill(old[0], signal.SIGKILL)
    m.wait_event("worker_start", index=0, count=2, kind="worker", generation=1)
    m.wait_ready(3, generation=1)
    new = m.live_pids()
    assert new[1] == old[1] and new[0] != old[0]
    assert m.proc.poll() is None and not m.events("boot_error")
    wait_until(lambda: new[0] in {int(ask(port)[0]) for _ in range(20)}, 10, "the replacement to answer")


def test_term_lets_sessions_finish_and_exits_0(start_master: Callable[..., Master], tmp_path: Path) -> None:
    pid_file = tmp_path / "fastmail.pid"
    m = start_master(workers=2, grace_period=5.0, pid_file=str(pid_file))
    port = m.port()
    m.wait_ready(2)
    assert int(pid_file.read_text()) == m.proc.pid
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline()
        s.sendall(b"slow 1.5\n")
        time.sleep(0.1)
        t0 = time.monotonic()
        m.signal(signal.SIGTERM)
        # stop accepting: new clients are refused once the workers closed their listeners
        wait_until(lambda: _refused(port), 3, "the listener to close")
        assert f.readline() == b"done\n"
    code = m.wait_exit(5)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert 1.0 < elapsed < 5.0
    assert not m.events("worker_kill")
    assert not pid_file.exists()


def _refused(port: int) -> bool:
    try:
        ask(port, timeout=2)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def test_term_kills_sessions_after_grace_and_second_term_is_immediate(
    start_master: Callable[..., Master],
) -> None:
    m = start_master(workers=1, grace_period=1.0)
    port = m.port()
    m.wait_ready(1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.makefile("rb").readline()
        s.sendall(b"slow 60\n")
        time.sleep(0.1)
        t0 = time.monotonic()
        m.signal(signal.SIGTERM)
        assert m.wait_exit(5) == 0
        assert 0.9 < time.monotonic() - t0 < 3
    assert m.events("worker_kill", reason="grace_period_expired")

    m2 = start_master(workers=1, grace_period=60.0)
    port = m2.port()
    m2.wait_ready(1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.makefile("rb").readline()
        s.sendall(b"slow 60\n")
        time.sleep(0.1)
        t0 = time.monotonic()
        m2.signal(signal.SIGINT)
        m2.wait_event("stop", mode="graceful")
        m2.signal(signal.SIGTERM)
        assert m2.wait_exit(5) == 0
        assert time.monotonic() - t0 < 3
    assert m2.events("stop", mode="immediate")


def test_worker_boot_error_stops_master_without_respawn(start_master: Callable[..., Master]) -> None:
    m = start_master(workers=2, mode="boot_error", delivery=True)
    t0 = time.monotonic()
    assert m.wait_exit(10) == 1
    assert time.monotonic() - t0 < 5
    log = m.log()
    assert "store cannot open: /nonexistent/index.mdb" in log
    err = m.events("boot_error")
    assert err and err[0]["level"] == "error" and err[0]["reason"].startswith("store cannot open")
    # one fork per slot (2 workers + delivery), no respawn storm
    assert len(m.events("worker_start")) <= 3
    assert not m.events("worker_respawn")


def test_worker_crashing_before_ready_stops_master_after_backoff(start_master: Callable[..., Master]) -> None:
    m = start_master(workers=1, mode="crash_on_boot")
    assert m.wait_exit(15) == 1
    starts = m.events("worker_start")
    assert len(starts) == 5  # MAX_BOOT_FAILURES, with backoff in between
    assert [e["delay"] for e in m.events("worker_respawn")] == ["0.1", "0.2", "0.4", "0.8"]
    err = m.events("boot_error")[0]
    assert "5 times in a row before it was ready" in err["reason"]
    assert "RuntimeError: bug in worker boot" in err["reason"]


def test_bind_failure_names_listener_and_address(start_master: Callable[..., Master]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody can join it
        squatter.listen()
        port = squatter.getsockname()[1]
        m = start_master(listeners=[{"name": "submission", "address": ["127.0.0.1", port]}])
        assert m.wait_exit(10) == 1
    err = m.events("boot_error")
    assert err, m.log()
    assert err[0]["reason"] == (
        f"cannot bind listener 'submission' to 127.0.0.1:{port}: address already in use "
        "(another server is listening there)"
    )
    assert not m.events("worker_start")


def _free_low_port() -> int:
    for port in range(960, 1020):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
def test_privileges_dropped_after_binding(start_master: Callable[..., Master], tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    port = _free_low_port()  # only root can bind it: proves the bind happened before the drop
    unix_path = str(tmp_path / "lmtp.sock")
    m = start_master(
        workers=2,
        user="nobody",
        delivery=True,
        listeners=[
            {"name": "smtp", "address": ["127.0.0.1", port]},
            {"name": "lmtp_unix", "address": unix_path},
        ],
    )
    assert m.port() == port
    m.wait_ready(2)
    m.wait_ready(1, kind="delivery")
    fields = ask(port)
    assert [int(x) for x in fields[2:6]] == [nobody.pw_uid, nobody.pw_uid, nobody.pw_gid, nobody.pw_gid]
    via_unix = ask(unix_path)
    assert int(via_unix[2]) == nobody.pw_uid
    st = os.stat(unix_path)
    assert st.st_mode & 0o777 == 0o660
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    for pid in [*m.live_pids().values(), m.live_pids("delivery")[0]]:
        status = proc_status(pid)
        # real, effective, saved and filesystem ids: no way back to root
        assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert "0" not in status["Groups"].split()
        assert status["NoNewPrivs"].strip() == "1"
    assert proc_status(m.proc.pid)["Uid"].split()[0] == "0"  # the master stays root to rebind on HUP
    m.signal(signal.SIGTERM)
    assert m.wait_exit(10) == 0
    assert not os.path.exists(unix_path)


def test_stuck_worker_is_killed_and_replaced(start_master: Callable[..., Master]) -> None:
    m = start_master(workers=2, worker_timeout=1.5)
    port = m.port()
    m.wait_ready(2)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        stuck = int(f.readline().split()[0])
        s.sendall(b"hang\n")
        t0 = time.monotonic()
        timeout_event = m.wait_event("worker_timeout", timeout=10, pid=stuck)[0]
        assert 1.5 <= time.monotonic() - t0 + 0.2 < 4
        assert f.readline() == b""  # the stuck session dies with its worker
    assert m.wait_event("worker_exit", pid=stuck)[0]["signal"] == "SIGKILL"
    index = int(timeout_event["index"])
    wait_until(lambda: m.live_pids().get(index, stuck) != stuck, 10, "a replacement")
    replacement = m.live_pids()[index]
    m.wait_event("worker_ready", pid=replacement)
    seen = {int(ask(port)[0]) for _ in range(100)}
    assert replacement in seen and stuck not in seen


if __name__ == "__main__":
    sys.exit(main(sys.argv))
