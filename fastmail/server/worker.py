"""A worker process: one uvloop loop serving every listener socket the master handed it.

Opens the store itself (after fork), runs the group committer, and stops gracefully on TERM: it stops
accepting, lets sessions finish up to the grace period, then says 421 to what is left.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import uvloop

from fastmail import auth, log, metrics
from fastmail.cluster import Cluster, ClusterError, ClusterPolicy
from fastmail.config import Config, in_networks
from fastmail.delivery import srs, wake
from fastmail.hygiene.dkimkeys import DKIMKeys
from fastmail.hygiene.inbound import Inbound
from fastmail.hygiene.learn import Learner
from fastmail.master.errors import BootError
from fastmail.master.worker import WorkerContext, install_worker_signals, start_heartbeat
from fastmail.proto import imap as IP
from fastmail.proto import smtp as P
from fastmail.server.auth_http import AuthHTTPProtocol
from fastmail.server.commit import Committer
from fastmail.server.imap import IMAPProtocol, watch_changes
from fastmail.server.pop3 import POP3Protocol
from fastmail.server.session import LoginThrottle, connection_cap
from fastmail.server.smtp import SMTPProtocol
from fastmail.store import mime
from fastmail.store.mailboxes import Mailboxes
from fastmail.store.store import Store, normalize_address
from fastmail.tlsfiles import TLSLoadError

_MODES = {"smtp": P.Mode.SMTP, "submission": P.Mode.SUBMISSION, "submissions": P.Mode.SUBMISSION, "lmtp": P.Mode.LMTP}


class StorePolicy:
    """fastmail.proto.smtp.Policy answered from the LMDB index."""

    def __init__(self, store: Store, srs_data_dir: Path | None = None) -> None:
        self.store = store
        self.srs_data_dir = srs_data_dir

    def resolve(self, local: str, domain: str) -> tuple[list[int], list[str]] | None:
        if srs.is_srs(local) and self.srs_data_dir is not None and self.store.is_local_domain(domain):
            # a reply or bounce to a forward's SRS0 sender goes on to the original sender (fastmail.delivery.srs)
            original = srs.reverse(srs.key(self.srs_data_dir), local)
            return ([], [original]) if original else None
        return self.store.resolve(f"{local}@{domain}")

    def is_local_domain(self, domain: str) -> bool:
        return self.store.is_local_domain(domain)

    def over_quota(self, user_id: int, size: int) -> bool:
        quota, used = self.store.quota_state(user_id)
        return bool(quota) and used + size > quota

    def sender_owned(self, user_id: int, local: str, domain: str) -> bool:
        found = self.store.resolve(f"{local}@{domain}", catch_all=False)
        return found is not None and user_id in found[0]


def make_tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The context the master loaded for this configuration (inherited through fork), or loaded now when this
    process was not forked by a master that did (tests).  TLSLoadError when it cannot load."""
    return cfg.server_tls()


class Services:
    """What every session of this worker shares."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.config = cfg
        self.store = store
        self.hostname = cfg.hostname
        self.policy: Any = StorePolicy(store, cfg.data_dir if cfg.delivery_srs else None)
        self.cluster = Cluster(cfg, tickets=True)  # docs/scaling.md: users on other nodes are queued for them
        if self.cluster.active:
            self.policy = ClusterPolicy(self.policy, store, self.cluster)
        self.limits = P.Limits(
            max_line_length=cfg.smtp_max_line_length,
            max_recipients=cfg.smtp_max_recipients,
            max_message_size=cfg.smtp_max_message_size,
            max_errors=cfg.smtp_max_errors,
            normalize_bare_lf=cfg.smtp_bare_lf == "normalize",
        )
        self.tls_context = make_tls_context(cfg)
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in cfg.smtp_trusted_networks]
        self.metrics = metrics.current()  # fastmail.metrics: this process's instruments
        self.committer = Committer(store, self.metrics)
        self.committer.on_queued = partial(wake.notify, cfg.data_dir, cfg.delivery_processes)
        self.sessions: set[Any] = set()  # SMTPProtocol and IMAPProtocol: .idle, .shutdown()
        self.mailboxes = Mailboxes(store)
        self.imap_limits = IP.Limits(
            max_line=cfg.imap_max_line_length,
            max_message=cfg.imap_max_message_size,
            max_bad=cfg.imap_max_bad_commands,
        )
        self.imap_sessions: set[IMAPProtocol] = set()
        self.imap_pool = ThreadPoolExecutor(4, thread_name_prefix="imap")  # store writes (synced commits)
        self.imap_throttle = LoginThrottle(cfg.imap_max_login_failures)
        self.imap_per_ip: dict[str, int] = {}  # connections per client address in this worker
        self.imap_per_user: dict[int, int] = {}  # logged-in sessions per user id in this worker
        self.max_connections = connection_cap(cfg.server_max_connections)  # sessions at once, all listeners
        self.smtp_per_ip: dict[str, int] = {}  # SMTP and submission connections per client address
        self.pop3_per_ip: dict[str, int] = {}  # POP3 connections per client address
        self.pop3_throttle = LoginThrottle(cfg.pop3_max_login_failures)
        self.auth_http_throttle = LoginThrottle(cfg.imap_max_login_failures)  # nginx's logins, by Client-IP
        self.inbound = Inbound(cfg, self.hostname)  # #7: checks at the end of DATA on the SMTP listener
        self.learner: Learner | None = None  # IMAP moves into / out of Junk teach rspamd (rspamd.learn)
        if cfg.rspamd_learn and cfg.rspamd_controller_url:
            self.learner = Learner(cfg.rspamd_controller_url, cfg.rspamd_password, cfg.rspamd_timeout,
                                   self.mailboxes.body, self.imap_pool)
        self.dkim = DKIMKeys(cfg.dkim_keys) if cfg.dkim_sign else None  # signs authenticated senders' mail
        self.auth_failure_delay = float(cfg.auth_failure_delay)
        self._auth_pool = ThreadPoolExecutor(2, thread_name_prefix="auth")  # threads start after the drop

    def room_for(self, size: int) -> bool:
        """Is there room on the data folder's filesystem for a message of `size` bytes (SIZE=, RFC 1870)?
        The free space an unprivileged user may use, one statvfs; a folder it cannot look at says yes (the
        write then answers for itself)."""
        try:
            st = os.statvfs(self.config.data_dir)
        except OSError:
            return True
        return size <= st.f_bavail * st.f_frsize

    def is_proxy(self, ip: str) -> bool:
        """A configured mail proxy (cluster.proxies): may use XCLIENT, auth_http and plaintext logins."""
        return self.cluster.is_proxy(ip)

    def is_trusted(self, ip: str) -> bool:
        return in_networks(ip, self.trusted)

    async def authenticate(self, username: str, password: str, peer: str | None = None) -> tuple[bool, int | None]:
        """Check a password off the loop (argon2id costs ~100 ms of CPU); same work for unknown users.  With
        the client's address `peer`, the failed-login throttle first (fastmail.hygiene.authfail): the login
        waits as long as the recent failures of that address or of that account say, whether the password
        is right or not, the account known or not; the outcome is counted."""
        throttle = self.inbound.auth_failures if peer is not None else None
        delay = throttle.delay(peer, username) if throttle is not None else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            record = self.store.get_user(username)
        except Exception as e:  # e.g. a malformed address: same reply and cost as an unknown user
            log.event("auth_lookup_failed", error=repr(e))
            record = None
        loop = asyncio.get_running_loop()
        if record is not None and self.cluster.ticket_ok(peer, record["address"], password):
            ok, hashed = True, False  # the proxy's ticket from auth_http (docs/scaling.md): an HMAC, no argon2id
            log.event("auth_ticket", peer=peer, user=record["address"])
        else:
            ok, hashed = await loop.run_in_executor(
                self._auth_pool, auth.check_password, record["hash"] if record else None, password
            )
        ok = ok and record is not None
        if throttle is not None:
            if ok:
                throttle.succeeded(peer, username)
            else:
                throttle.failed(peer, username)
        log.event("auth_check", peer=peer, user=username, known=int(record is not None), hashed=int(hashed),
                  ok=int(ok), delay=f"{delay:.3f}")
        return (ok, record["id"]) if ok and record else (False, None)


def worker_prepare(ctx: WorkerContext) -> Services:
    """In the new worker, before privileges are dropped: open the store (after fork, never inherited) and
    read the TLS key, which may be readable by root only."""
    cfg = ctx.config
    assert isinstance(cfg, Config)
    try:
        store = Store(cfg.data_dir, map_size=cfg.server_map_size_mb * 1024 * 1024)
    except Exception as e:
        raise BootError(f"store cannot open at {cfg.data_dir}: {e}") from e
    metrics.setup(cfg)  # this process's metrics files (fastmail.metrics), before any session counts
    try:
        services = Services(cfg, store)
    except TLSLoadError as e:
        raise BootError(f"TLS certificate or key cannot be loaded: {e}") from e
    except ClusterError as e:
        raise BootError(str(e)) from e
    _warm_up()
    return services


_SAMPLE = b"From: a@example.org\r\nSubject: =?utf-8?q?x?=\r\nContent-Type: text/plain\r\n\r\nx\r\n"


def _warm_up() -> None:
    """Run once what the first session will run, while the Python installation is surely readable:
    after the drop, a module or codec imported on first use (idna, email helpers) could fail to load."""
    normalize_address("warm-up@xn--bcher-kva.example")
    mime.analyze(_SAMPLE)
    env = P.Envelope("a@example.org", rcpts=[P.Recipient("b@example.org", {}, [], [])])
    P.received_header(P.Session("127.0.0.1", P.Mode.SMTP), env, "0", "localhost")


def worker_main(ctx: WorkerContext) -> None:
    services = ctx.prepared if isinstance(ctx.prepared, Services) else worker_prepare(ctx)
    uvloop.run(_serve(ctx, services))
    services.store.close()


def implicit_tls_context(services: Services, name: str) -> ssl.SSLContext:
    """The context of an implicit-TLS listener.  A certificate that is configured but cannot be loaded never
    gets here (worker_prepare fails first, naming the file and the reason): None means none exists."""
    if services.tls_context is None:
        cert, _ = services.config.tls_files
        raise BootError(f"listener {name}: implicit TLS needs a certificate, and there is none: tls.cert is not "
                        f"set and the self-signed one ({cert}) does not exist")
    return services.tls_context


async def _serve(ctx: WorkerContext, services: Services) -> None:
    loop = asyncio.get_running_loop()
    loop.run_in_executor(services._auth_pool, auth.verify_password, None, "")  # dummy hash before first login
    servers = []
    for name, sock in ctx.sockets.items():
        base = name.split("#", 1)[0]
        mode = _MODES.get(base)
        factory: Callable[[], Any]
        if base in ("imap", "imaps"):
            implicit = base == "imaps"
            factory = partial(IMAPProtocol, services, name, implicit)
        elif base in ("pop3", "pop3s"):
            implicit = base == "pop3s"
            factory = partial(POP3Protocol, services, name, implicit)
        elif base == "auth_http":
            implicit = False
            factory = partial(AuthHTTPProtocol, services, name)
        elif mode is None:
            continue
        else:
            implicit = base == "submissions"
            factory = partial(SMTPProtocol, services, mode, name, implicit)
        ssl_ctx = implicit_tls_context(services, name) if implicit else None
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(factory, sock=sock, ssl=ssl_ctx, backlog=services.config.backlog)
        else:
            # create_server listen()s again: without the backlog it would shrink to the loop's default of 100
            server = await loop.create_server(factory, sock=sock, ssl=ssl_ctx, backlog=services.config.backlog,
                                              ssl_handshake_timeout=30 if ssl_ctx else None)
        servers.append(server)
    stopping = asyncio.Event()
    retiring = False  # a reload replaced this worker: its sessions, idle ones too, go on (grace period)

    def stop() -> None:
        nonlocal retiring
        retiring = False
        stopping.set()

    def retire() -> None:
        nonlocal retiring
        retiring = not stopping.is_set()
        stopping.set()

    install_worker_signals(loop, stop, retire)
    beat = start_heartbeat(ctx, loop)
    log.buffer()
    flusher = loop.create_task(_flush_logs())
    watcher = loop.create_task(watch_changes(services))
    log.event("worker_ready", index=ctx.index, generation=ctx.generation, listeners=len(servers))
    await stopping.wait()
    # Graceful stop: no new connections; sessions finish up to the grace period; then 421 to the rest.
    # Idle sessions are closed at once, except when retiring (a reload): then they go on being served, and
    # get their 421 / BYE a little before the master's deadline (it SIGKILLs at the grace period's end).
    for server in servers:
        server.close()
    await asyncio.sleep(0.05)  # connections accepted just before the close get their protocol first
    grace = services.config.grace_period
    deadline = time.monotonic() + (grace - min(1.0, grace / 10) if retiring else grace)
    log.event("worker_stopping", index=ctx.index, retiring=int(retiring), sessions=len(services.sessions))
    while services.sessions and time.monotonic() < deadline:
        if not retiring:
            for s in list(services.sessions):
                if s.idle:
                    s.shutdown()
        await asyncio.sleep(0.05)
    for s in list(services.sessions):
        s.shutdown()
    await services.committer.drain()
    if services.learner is not None:
        await services.learner.drain(min(5.0, services.config.grace_period))
    await asyncio.sleep(0.05)
    beat.cancel()
    flusher.cancel()
    watcher.cancel()
    c = services.committer
    log.event("worker_stop", index=ctx.index, commit_batches=c.batches, commit_messages=c.messages,
              largest_batch=c.largest_batch)
    log.buffer(False)


async def _flush_logs(interval: float = 0.2) -> None:
    while True:
        await asyncio.sleep(interval)
        log.flush()
