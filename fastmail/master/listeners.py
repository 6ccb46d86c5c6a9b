"""Listening sockets, bound by the master before it forks (ARCHITECTURE §1 "Listeners").

Every TCP listener gets one ``SO_REUSEPORT`` socket *per worker*: the kernel spreads new connections
over the group, and each worker accepts only on its own socket.  A unix listener is a single socket
shared by all workers.  Sockets are bound by the master, before any privilege drop, so ports below
1024 work when the master runs as root.

Sockets are created non-blocking and stay close-on-exec: the master forks without exec, so a child
inherits them anyway, and a worker that later execs a helper (e.g. a pipe delivery) does not leak
listeners into it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fastmail.master.errors import BootError

__all__ = [
    "DEFAULT_BACKLOG",
    "ListenerSpec",
    "bind_socket_sets",
    "bind_tcp",
    "bind_unix",
    "bind_worker_sockets",
    "close_sockets",
    "format_address",
    "socket_key",
]

DEFAULT_BACKLOG = 1024
UNIX_SOCKET_MODE = 0o660


@dataclass(frozen=True)
class ListenerSpec:
    """One configured listener.

    ``name`` is the protocol role ("smtp", "submission", "submissions", "lmtp", "lmtp_unix", "imap",
    ...) and the key of the socket in ``WorkerContext.sockets``.  ``address`` is ``(host, port)`` for
    TCP — host an IPv4 or IPv6 literal without brackets ("::1"), a name resolved once at bind time, or
    "" for every address of both families; port 0 picks a free port once and binds every worker's socket
    to that same port — or a ``str``: the path of a unix socket.

    Which connections a TCP listener takes: "" — every address, IPv4 and IPv6, through one dual-stack
    socket on "::" with IPV6_V6ONLY off, or "0.0.0.0" on a host without IPv6; "::" (or any other IPv6
    address) — IPv6 only (IPV6_V6ONLY on), so that "0.0.0.0" and "::" on one port are two listeners
    that do not collide.
    """

    name: str
    address: tuple[str, int] | str

    @property
    def is_unix(self) -> bool:
        return isinstance(self.address, str)


def format_address(address: tuple[str, int] | str) -> str:
    """``127.0.0.1:25``, ``[::1]:25`` or ``unix:/run/fastmail/lmtp.sock``."""
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def socket_key(spec: ListenerSpec, index: int) -> tuple[object, ...]:
    """Identity of a bound socket, independent of the listener's name: TCP sockets are per worker
    index, a unix socket is one per path.  The master reuses a socket across reloads when its key is
    unchanged."""
    if isinstance(spec.address, str):
        return ("unix", spec.address)
    host, port = spec.address
    if int(port) == 0:  # "any free port": each such listener is its own, told apart by name
        return ("tcp", _strip_brackets(host), 0, index, spec.name)
    return ("tcp", _strip_brackets(host), int(port), index)


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _resolve(spec: ListenerSpec, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    assert not isinstance(spec.address, str)
    host = _strip_brackets(spec.address[0])
    assert host, "the dual-stack listener is bound by bind_tcp"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise BootError(
                f"cannot bind listener {spec.name!r} to {format_address(spec.address)}: "
                f"cannot resolve host {host!r}: {e.strerror}"
            ) from None
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr
    if ip.version == 6:
        return socket.AF_INET6, (host, port, 0, 0)
    return socket.AF_INET, (host, port)


def _bind_error(spec: ListenerSpec, address: tuple[str, int] | str, e: OSError) -> BootError:
    reason = e.strerror or str(e)
    if e.errno == errno.EADDRINUSE:
        reason = "address already in use (another server is listening there)"
    elif e.errno == errno.EACCES and not isinstance(address, str) and 0 < address[1] < 1024:
        reason = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif e.errno == errno.EADDRNOTAVAIL:
        reason = "address not available on this host"
    return BootError(f"cannot bind listener {spec.name!r} to {format_address(address)}: {reason}")


def bind_tcp(spec: ListenerSpec, *, backlog: int = DEFAULT_BACKLOG, port: int | None = None) -> socket.socket:
    """One listening, non-blocking ``SO_REUSEPORT`` socket for ``spec``; ``port`` overrides the spec's
    (used to bind the other workers' sockets to the port that port 0 picked)."""
    if isinstance(spec.address, str):
        raise TypeError("bind_tcp needs a (host, port) listener")
    real_port = int(spec.address[1]) if port is None else port
    shown = (_strip_brackets(spec.address[0]), real_port)
    if not shown[0]:
        # ":PORT": every address, IPv4 and IPv6, through one dual-stack socket; IPv4 only where this host
        # has no IPv6 (no AF_INET6 sockets, or "::" cannot be bound).
        if socket.has_ipv6:
            try:
                return _listen(spec, shown, socket.AF_INET6, ("::", real_port, 0, 0), backlog, v6only=False)
            except _NoIPv6:
                pass
        return _listen(spec, shown, socket.AF_INET, ("0.0.0.0", real_port), backlog)
    family, sockaddr = _resolve(spec, real_port)
    # Any other IPv6 address, "::" included, is IPv6-only: "[::]:25" must not swallow IPv4, so that an
    # operator can list "0.0.0.0:25" and "[::]:25" as two listeners.
    return _listen(spec, shown, family, sockaddr, backlog, v6only=True)


class _NoIPv6(Exception):
    """The host cannot bind an IPv6 socket at all (the dual-stack listener then takes IPv4 only)."""


_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL)


def _listen(spec: ListenerSpec, shown: tuple[str, int], family: socket.AddressFamily, sockaddr: tuple[object, ...],
            backlog: int, *, v6only: bool = True) -> socket.socket:
    dual = family == socket.AF_INET6 and not v6only
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        if dual and e.errno in _NO_IPV6:
            raise _NoIPv6 from None
        raise _bind_error(spec, shown, e) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if dual and e.errno in _NO_IPV6:
            raise _NoIPv6 from None
        raise _bind_error(spec, shown, e) from None
    return sock


def _clear_stale_unix_path(spec: ListenerSpec, path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BootError(
            f"cannot bind listener {spec.name!r} to {format_address(path)}: the path exists and is not a socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        pass  # nobody listens: a leftover of a previous run
    else:
        raise BootError(
            f"cannot bind listener {spec.name!r} to {format_address(path)}: "
            "address already in use (another server is listening there)"
        )
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def bind_unix(
    spec: ListenerSpec, *, backlog: int = DEFAULT_BACKLOG, owner: tuple[int, int] | None = None
) -> socket.socket:
    """The unix listener of ``spec``: a stale socket file is removed (a live one is an error), the new
    one gets mode 0660 and, when ``owner`` (uid, gid) is given, that owner."""
    path = spec.address
    if not isinstance(path, str):
        raise TypeError("bind_unix needs a path listener")
    _clear_stale_unix_path(spec, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, UNIX_SOCKET_MODE)
        if owner is not None:
            os.chown(path, owner[0], owner[1])
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise _bind_error(spec, path, e) from None
    return sock


def _check_specs(specs: Sequence[ListenerSpec]) -> None:
    names: set[str] = set()
    addresses: dict[object, str] = {}
    for spec in specs:
        if spec.name in names:
            raise BootError(f"listener {spec.name!r} is configured twice")
        names.add(spec.name)
        key = socket_key(spec, 0)
        if key in addresses:
            raise BootError(
                f"listeners {addresses[key]!r} and {spec.name!r} both use {format_address(spec.address)}"
            )
        addresses[key] = spec.name


def bind_socket_sets(
    specs: Sequence[ListenerSpec],
    workers: int,
    *,
    backlog: int = DEFAULT_BACKLOG,
    owner: tuple[int, int] | None = None,
    reuse: Mapping[tuple[object, ...], socket.socket] | None = None,
) -> tuple[list[dict[str, socket.socket]], dict[tuple[object, ...], socket.socket]]:
    """Socket sets for ``workers`` workers, reusing sockets of ``reuse`` (keyed by :func:`socket_key`).

    Returns ``(sets, new)``: ``sets[i]`` maps listener name to worker i's socket, ``new`` holds the
    sockets bound by this call.  On error everything bound by this call is closed and BootError raised.
    """
    if workers < 1:
        raise BootError(f"workers must be at least 1, not {workers}")
    _check_specs(specs)
    reuse = reuse or {}
    sets: list[dict[str, socket.socket]] = [{} for _ in range(workers)]
    new: dict[tuple[object, ...], socket.socket] = {}
    try:
        for spec in specs:
            if spec.is_unix:
                key = socket_key(spec, 0)
                sock = reuse.get(key)
                if sock is None:
                    sock = new[key] = bind_unix(spec, backlog=backlog, owner=owner)
                for s in sets:
                    s[spec.name] = sock
                continue
            assert not isinstance(spec.address, str)
            port: int | None = None
            for i in range(workers):
                key = socket_key(spec, i)
                sock = reuse.get(key)
                if sock is None:
                    sock = new[key] = bind_tcp(spec, backlog=backlog, port=port)
                if int(spec.address[1]) == 0 and port is None:
                    port = sock.getsockname()[1]
                sets[i][spec.name] = sock
    except BaseException:
        close_sockets(new.values())
        raise
    return sets, new


def close_sockets(socks: Iterable[socket.socket], *, unlink: bool = True) -> None:
    """Close sockets; the path of a unix listener is removed too when ``unlink``."""
    for sock in socks:
        path = None
        if unlink and sock.family == socket.AF_UNIX and sock.fileno() >= 0:
            with contextlib.suppress(OSError):
                path = sock.getsockname()
        sock.close()
        if isinstance(path, str) and path:
            with contextlib.suppress(OSError):
                os.unlink(path)


def bind_worker_sockets(
    specs: Sequence[ListenerSpec],
    workers: int,
    *,
    backlog: int = DEFAULT_BACKLOG,
    owner: tuple[int, int] | None = None,
) -> list[dict[str, socket.socket]]:
    """``result[i][name]`` is worker i's socket for listener ``name``: one SO_REUSEPORT socket per
    worker per TCP listener, one shared socket per unix listener.  Bind errors raise BootError naming
    the listener and the address."""
    sets, _ = bind_socket_sets(specs, workers, backlog=backlog, owner=owner)
    return sets
