"""Unit tests of the master's parts: listeners, the shared heartbeat page, log lines, worker signals."""

from __future__ import annotations

import asyncio
import mmap
import os
import signal
import socket
import stat
import time
from pathlib import Path

import pytest
import uvloop

from fastmail.master.arbiter import kv
from fastmail.master.errors import BootError
from fastmail.master.listeners import (
    ListenerSpec,
    bind_socket_sets,
    bind_worker_sockets,
    close_sockets,
    format_address,
)
from fastmail.master.privileges import resolve_credentials
from fastmail.master.worker import (
    SHM_SIZE,
    WorkerContext,
    install_worker_signals,
    read_beat,
    read_reason,
    write_reason,
)


def _close_all(sets: list[dict[str, socket.socket]]) -> None:
    close_sockets({id(s): s for d in sets for s in d.values()}.values())


def test_tcp_listener_gets_one_reuseport_socket_per_worker() -> None:
    sets = bind_worker_sockets([ListenerSpec("smtp", ("127.0.0.1", 0))], 3)
    try:
        socks = [d["smtp"] for d in sets]
        assert len({id(s) for s in socks}) == 3
        assert len({s.getsockname() for s in socks}) == 1  # port 0: picked once, shared by all
        for s in socks:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            assert s.getblocking() is False
        with socket.create_connection(socks[0].getsockname(), timeout=5):
            pass
    finally:
        _close_all(sets)


def test_ipv6_listener_is_v6only() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sets = bind_worker_sockets([ListenerSpec("imap", ("::1", 0))], 2)
    except BootError as e:
        pytest.skip(f"no ::1 here: {e}")
    try:
        s = sets[0]["imap"]
        assert s.family == socket.AF_INET6
        assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert format_address(s.getsockname()[:2]).startswith("[::1]:")
    finally:
        _close_all(sets)


def test_unix_listener_is_shared_with_mode_0660(tmp_path: Path) -> None:
    path = str(tmp_path / "lmtp.sock")
    sets = bind_worker_sockets([ListenerSpec("lmtp_unix", path)], 2)
    try:
        assert sets[0]["lmtp_unix"] is sets[1]["lmtp_unix"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with pytest.raises(BootError, match="already in use"):  # a live server owns it
            bind_worker_sockets([ListenerSpec("lmtp_unix", path)], 1)
    finally:
        _close_all(sets)
    assert not os.path.exists(path)


def test_stale_unix_socket_is_replaced_and_regular_file_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the path stays, nobody listens
    sets = bind_worker_sockets([ListenerSpec("lmtp_unix", path)], 1)
    _close_all(sets)
    file_path = tmp_path / "file"
    file_path.write_text("x")
    with pytest.raises(BootError, match="'lmtp_unix'.*not a socket"):
        bind_worker_sockets([ListenerSpec("lmtp_unix", str(file_path))], 1)
    assert file_path.exists()


def test_port_in_use_is_a_boot_error_naming_listener_and_address() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        specs = [ListenerSpec("smtp", ("127.0.0.1", 0)), ListenerSpec("submission", ("127.0.0.1", port))]
        with pytest.raises(BootError) as info:
            bind_worker_sockets(specs, 2)
    assert str(info.value) == (
        f"cannot bind listener 'submission' to 127.0.0.1:{port}: "
        "address already in use (another server is listening there)"
    )


def test_misconfigured_listeners_are_refused() -> None:
    with pytest.raises(BootError, match="configured twice"):
        bind_worker_sockets(
            [ListenerSpec("smtp", ("127.0.0.1", 0)), ListenerSpec("smtp", ("127.0.0.1", 0))], 1
        )
    with pytest.raises(BootError, match="both use 127.0.0.1:2525"):
        bind_worker_sockets(
            [ListenerSpec("smtp", ("127.0.0.1", 2525)), ListenerSpec("lmtp", ("127.0.0.1", 2525))], 1
        )
    with pytest.raises(BootError, match="workers must be at least 1"):
        bind_worker_sockets([], 0)
    with pytest.raises(BootError, match="cannot resolve host"):
        bind_worker_sockets([ListenerSpec("smtp", ("no-such-host.invalid", 0))], 1)


def test_rebinding_reuses_sockets_and_binds_only_new_ones() -> None:
    spec = ListenerSpec("smtp", ("127.0.0.1", 0))
    sets, new = bind_socket_sets([spec], 2)
    try:
        sets2, new2 = bind_socket_sets([spec, ListenerSpec("lmtp", ("127.0.0.1", 0))], 3, reuse=new)
        try:
            assert sets2[0]["smtp"] is sets[0]["smtp"] and sets2[1]["smtp"] is sets[1]["smtp"]
            assert sets2[2]["smtp"].getsockname() == sets[0]["smtp"].getsockname()  # same port
            assert len(new2) == 1 + 3  # the third smtp socket and three lmtp ones
        finally:
            close_sockets(new2.values())
    finally:
        close_sockets(new.values())


def test_heartbeat_page_and_reason() -> None:
    shm = mmap.mmap(-1, SHM_SIZE)
    ctx = WorkerContext(index=0, generation=1, sockets={}, config=None, kind="worker", timeout=8.0, _shm=shm)
    assert read_beat(shm) == 0.0
    ctx.notify()
    assert 0 <= time.monotonic() - read_beat(shm) < 1
    assert ctx.heartbeat_interval == 2.0
    write_reason(shm, "store cannot open: é" + "x" * 10000)
    assert read_reason(shm).startswith("store cannot open: é")
    assert len(read_reason(shm).encode()) < SHM_SIZE
    WorkerContext(index=0, generation=1, sockets={}, config=None, kind="worker").notify()  # no page: no-op


def test_kv_quotes_values_that_need_it() -> None:
    assert kv(event="listen", name="smtp", pid=3, skip=None) == "event=listen name=smtp pid=3"
    assert kv(reason='store "x" cannot open', empty="") == 'reason="store \\"x\\" cannot open" empty=""'


def test_resolve_credentials() -> None:
    assert resolve_credentials("") is None
    with pytest.raises(BootError, match="does not exist"):
        resolve_credentials("no-such-user-fastmail")
    if os.geteuid() == 0:
        creds = resolve_credentials("nobody")
        assert creds is not None and creds.user == "nobody" and creds.uid != 0


def test_install_worker_signals_maps_stop_signals() -> None:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    loop = uvloop.new_event_loop()
    try:
        for sig in saved:
            calls: list[int] = []
            install_worker_signals(loop, lambda c=calls: c.append(1))
            loop.call_later(0.01, os.kill, os.getpid(), sig)
            loop.run_until_complete(asyncio.sleep(0.2))
            assert calls == [1], signal.Signals(sig).name
    finally:
        for sig in saved:
            loop.remove_signal_handler(sig)
        loop.close()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
