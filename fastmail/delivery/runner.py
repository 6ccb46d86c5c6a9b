"""The delivery process (ARCHITECTURE §1: `delivery × 1..M`): runs the outbound queue.

Forked and supervised by the master like a worker; opens LMDB itself after the fork.  Its loop:

  * look at the schedule (`queue.due`): every entry whose next attempt is due and that is not already
    being tried starts an attempt; then sleep until the next one is due or a wake-up datagram arrives
    (fastmail.delivery.wake: workers send one after committing queue entries, so new mail goes at once);
  * an attempt groups the pending recipients of an entry by domain; each group is a job for that
    destination.  A destination keeps up to `delivery.max_connections_per_domain` sessions, each taking
    job after job (connection reuse) and closing after `delivery.connection_reuse_time` idle; all
    destinations together hold at most `delivery.max_connections`;
  * results (per recipient: sent, deferred, failed) go through one committer thread that applies many of
    them in one synced transaction (`queue.apply`: retry schedule with backoff, expiry after the queue
    lifetime, bounces, removal).

A restart (or kill -9) loses nothing: an entry leaves the queue only in the transaction that records the
remote 250s (or stores its bounce), so whatever was in flight is simply due again when the process starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import uvloop

from fastmail import log
from fastmail.config import Config, split_hostport
from fastmail.delivery import queue as Q
from fastmail.delivery import srs, wake
from fastmail.delivery.dns import DNSError, DNSPermanent, Resolver
from fastmail.delivery.mtasts import STS
from fastmail.delivery.outbound import Session, SessionError, client_tls_context, open_session
from fastmail.master.errors import BootError
from fastmail.master.worker import WorkerContext, install_worker_signals, start_heartbeat
from fastmail.proto import smtp_client as C
from fastmail.store.store import Store

RELAY = "[relayhost]"  # the one destination when delivery.relayhost is set
MAX_INFLIGHT = 10_000  # queue entries being tried at once by one process
ERROR_COOLDOWN = 60.0  # seconds an entry whose attempt hit an internal error waits


@dataclass
class Job:
    qid: bytes
    domain: str
    indexes: list[int]  # recipients of the entry in this job
    message: C.Message
    attempt: int
    done: asyncio.Future[dict[int, Q.RcptResult]]


@dataclass
class Destination:
    domain: str
    jobs: deque[Job] = field(default_factory=deque)
    active: int = 0  # connection tasks
    idle: int = 0  # of which waiting for a job
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class ResultCommitter:
    """Group commit of attempt results: what arrives while a transaction runs forms the next one."""

    def __init__(self, store: Store, policy: Q.Policy) -> None:
        self.store = store
        self.policy = policy
        self._pending: list[tuple[Q.Update, asyncio.Future[Q.Effect]]] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="queue")
        self._task: asyncio.Task[None] | None = None

    async def submit(self, update: Q.Update) -> Q.Effect:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Q.Effect] = loop.create_future()
        self._pending.append((update, fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                effects = await loop.run_in_executor(self._executor, Q.apply, self.store,
                                                     [u for u, _ in batch], self.policy)
            except Exception as e:
                log.event("queue_write_failed", level=logging.ERROR, error=repr(e))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), effect in zip(batch, effects, strict=True):
                if not fut.done():
                    fut.set_result(effect)


class Runner:
    def __init__(self, cfg: Config, store: Store, index: int = 0, processes: int = 1,
                 relay_password: str | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.index = index
        self.processes = processes
        self.hostname = cfg.hostname
        self.policy = Q.Policy(cfg.hostname, cfg.delivery_retry_base, cfg.delivery_retry_max, cfg.delivery_lifetime,
                               cfg.delivery_delay_warning)
        self.port = int(cfg.delivery_port)
        self.tls_context = client_tls_context() if cfg.delivery_starttls else None
        self.require_tls = {d.lower() for d in cfg.delivery_require_tls_domains}
        self.resolver: Resolver | None = None
        self.committer = ResultCommitter(store, self.policy)
        self.inflight: set[bytes] = set()
        self.cooldown: dict[bytes, float] = {}  # queue id -> not before (after an internal error)
        self.dests: dict[str, Destination] = {}
        self.connections: asyncio.Semaphore | None = None
        self.wakeup = asyncio.Event()
        self.stopping = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.attempts = 0
        self.timeout_scale = float(cfg.delivery_timeout_scale)
        # Smarthost: every destination is the relay host, one pool of sessions, AUTH when configured.
        self.relay = split_hostport(cfg.delivery_relayhost, 25) if cfg.delivery_relayhost else None
        self.relay_auth = (cfg.delivery_relayhost_user, relay_password or "") if cfg.delivery_relayhost_user else None
        self.srs_key = srs.key(cfg.data_dir) if cfg.delivery_srs else None
        # Authenticated TLS (MTA-STS policy fetches, MX hosts under an enforced policy)
        self.verified_tls = ssl.create_default_context(cafile=cfg.delivery_tls_ca_file or None)
        self.verified_tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.sts: STS | None = None

    # -- the loop -------------------------------------------------------------------------------------------

    async def run(self, stopped: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.resolver = Resolver(self.cfg.delivery_resolver, timeout=self.cfg.delivery_dns_timeout)
        if self.cfg.delivery_mta_sts:
            self.sts = STS(self.resolver, self.verified_tls, self.cfg.delivery_mta_sts_port)
        self.connections = asyncio.Semaphore(self.cfg.delivery_max_connections)
        sock = wake.bind(self.cfg.data_dir, self.index)

        def on_datagram() -> None:
            with contextlib.suppress(OSError):
                while True:
                    sock.recv(64)
            self.wakeup.set()

        loop.add_reader(sock.fileno(), on_datagram)
        try:
            while not stopped.is_set():
                self.wakeup.clear()
                next_due = self.scan()
                delay = 30.0 if next_due is None else min(30.0, max(0.0, next_due - time.time()))
                waiters = [asyncio.ensure_future(self.wakeup.wait()), asyncio.ensure_future(stopped.wait())]
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()

    def scan(self) -> float | None:
        now = time.time()
        room = MAX_INFLIGHT - len(self.inflight)
        if room <= 0:
            return None  # each attempt that ends wakes the loop again
        if self.cooldown:
            self.cooldown = {q: t for q, t in self.cooldown.items() if t > now}
        skip = self.inflight | set(self.cooldown) if self.cooldown else self.inflight
        qids, next_due = Q.due(self.store, now, skip, min(room, 1000),
                               lambda q: wake.owner(q, self.processes) == self.index)
        if self.cooldown:
            soonest = min(self.cooldown.values())
            next_due = soonest if next_due is None else min(next_due, soonest)
        for qid in qids:
            rec = Q.load(self.store, qid)
            if rec is None or rec.get("held"):
                continue
            self.inflight.add(qid)
            self._spawn(self.attempt(qid, rec))
        return next_due

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, grace: float) -> None:
        """Stopping: let attempts in progress finish for up to `grace` seconds (the rest stays queued)."""
        self.stopping = True
        for dest in self.dests.values():
            dest.arrived.set()  # idle sessions say QUIT now
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
        for t in list(self.tasks):
            t.cancel()
        if self.resolver is not None:
            self.resolver.close()

    # -- one attempt of one queue entry --------------------------------------------------------------------

    async def attempt(self, qid: bytes, rec: dict[str, Any]) -> None:
        try:
            await self._attempt(qid, rec)
        except Exception as e:
            # e.g. the queue write failed: leave the entry alone for a while rather than try it (and perhaps
            # deliver it again) in a tight loop
            self.cooldown[qid] = time.time() + ERROR_COOLDOWN
            log.event("attempt_error", level=logging.ERROR, qid=qid.hex(), error=repr(e), retry_in=ERROR_COOLDOWN)
        finally:
            self.inflight.discard(qid)
            self.wakeup.set()  # look at the schedule again: this entry's next attempt, a new bounce

    async def _attempt(self, qid: bytes, rec: dict[str, Any]) -> None:
        now = time.time()
        todo = Q.pending(rec)
        if not todo:  # only failed recipients (a DSN is due) or nothing left: one update does it
            self._effect(rec, await self.committer.submit(Q.Update(qid, {}, finish=False, now=now)))
            return
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, self.store.read_blob, qid)
        except Exception as e:
            log.event("blob_unreadable", level=logging.ERROR, qid=rec["id"], error=repr(e))
            results = {i: Q.RcptResult("deferred", f"451 4.3.0 message body unreadable: {e}", "4.3.0") for i in todo}
            self._effect(rec, await self.committer.submit(Q.Update(qid, results, finish=True, now=now)))
            return
        groups: dict[tuple[str, str], list[int]] = {}
        for i in todo:
            # one transaction per destination (recipient domain, or the smarthost) and envelope sender
            dest = RELAY if self.relay else Q.domain_of(rec["rcpts"][i]["to"])
            groups.setdefault((dest, self._sender_for(rec, rec["rcpts"][i])), []).append(i)
        params = rec.get("params") or {}
        self.attempts += 1
        jobs = []
        loop = asyncio.get_running_loop()
        for (domain, sender), indexes in groups.items():
            rcpts = [C.Recipient(rec["rcpts"][i]["to"], rec["rcpts"][i].get("notify"), rec["rcpts"][i].get("orcpt"))
                     for i in indexes]
            smtputf8 = bool(params.get("smtputf8")) or not sender.isascii() or \
                any(not r.address.isascii() for r in rcpts)
            msg = C.Message(sender, rcpts, body, ret=params.get("ret"), envid=params.get("envid"),
                            eight_bit=(params.get("body") or "").upper() == "8BITMIME", smtputf8=smtputf8)
            job = Job(qid, domain, indexes, msg, rec.get("attempts", 0) + 1, loop.create_future())
            jobs.append(job)
            self._enqueue(job)
        if len(jobs) == 1:
            results = await jobs[0].done
            self._effect(rec, await self.committer.submit(Q.Update(qid, results, finish=True, now=time.time())))
            return
        # several destinations: record each one's results as soon as it has them
        async def record(job: Job) -> None:
            self._effect(rec, await self.committer.submit(Q.Update(qid, await job.done, now=time.time())))

        await asyncio.gather(*(record(j) for j in jobs))
        self._effect(rec, await self.committer.submit(Q.Update(qid, {}, finish=True, now=time.time())))

    def _sender_for(self, rec: dict[str, Any], r: dict[str, Any]) -> str:
        """MAIL FROM for recipient `r`: the envelope sender, or its SRS0 form when `r` is a forward (reached
        through a local alias) of mail from another domain."""
        sender = rec["sender"]
        alias = r.get("rcpt") or ""
        if (self.srs_key is None or not sender or not alias or alias.lower() == r["to"].lower()
                or self.store.is_local_domain(Q.domain_of(sender))
                or not self.store.is_local_domain(Q.domain_of(alias))):
            return sender
        return srs.forward(self.srs_key, sender, Q.domain_of(alias))

    def _effect(self, rec: dict[str, Any], effect: Q.Effect) -> None:
        if effect.bounce:
            log.event("dsn", qid=rec["id"], dsn=effect.bounce, to=rec["sender"], via=effect.dsn_to)
            if effect.dsn_to == "remote" and self.processes > 1:
                wake.notify(self.cfg.data_dir, self.processes)  # the bounce's queue id may be another's
        if effect.removed:
            log.event("queue_done", qid=rec["id"])
        elif effect.next_attempt is not None:
            log.event("queue_deferred", qid=rec["id"], next_in=f"{max(0.0, effect.next_attempt - time.time()):.1f}")

    # -- destinations and their connections ----------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        key = RELAY if self.relay else job.domain
        dest = self.dests.get(key)
        if dest is None:
            dest = self.dests[key] = Destination(key)
        dest.jobs.append(job)
        if dest.idle:
            dest.arrived.set()
        # a backlog larger than the sessions there are opens more, up to the per-destination limit
        if dest.active < self.cfg.delivery_max_connections_per_domain and dest.active < len(dest.jobs):
            dest.active += 1
            self._spawn(self._connection(dest))

    async def _connection(self, dest: Destination) -> None:
        assert self.connections is not None
        try:
            async with self.connections:
                while dest.jobs and not self.stopping:
                    try:
                        session = await self._open(dest.domain)
                    except DNSError as e:
                        state = "failed" if isinstance(e, DNSPermanent) else "deferred"
                        code = 550 if isinstance(e, DNSPermanent) else 451
                        self._fail_all(dest, state, f"{code} {e.enhanced} {e.text}", e.enhanced)
                        return
                    except SessionError as e:
                        # only our own verdicts are final here (a loop); a remote refusal is retried
                        state = "failed" if e.reply.local and e.reply.permanent else "deferred"
                        self._fail_all(dest, state, str(e.reply), e.reply.status())
                        return
                    try:
                        await self._serve(dest, session)
                    finally:
                        await session.close()
        finally:
            dest.active -= 1
            if not dest.active and not dest.jobs:
                self.dests.pop(dest.domain, None)

    async def _serve(self, dest: Destination, session: Session) -> None:
        while session.usable and not self.stopping:
            if not dest.jobs:
                dest.idle += 1
                dest.arrived.clear()
                try:
                    await asyncio.wait_for(dest.arrived.wait(), self.cfg.delivery_connection_reuse_time)
                except TimeoutError:
                    return
                finally:
                    dest.idle -= 1
                if not dest.jobs:
                    continue
            job = dest.jobs.popleft()
            try:
                replies = await session.deliver(job.message)
            except Exception as e:
                replies = [C.local_reply(451, "4.3.0", f"local error: {e!r}")] * len(job.indexes)
            results: dict[int, Q.RcptResult] = {}
            for i, rcpt, reply in zip(job.indexes, job.message.rcpts, replies, strict=True):
                state = "sent" if reply.ok else "failed" if reply.permanent else "deferred"
                results[i] = Q.RcptResult(state, str(reply), reply.status(), session.host)
                log.event("delivery", qid=job.qid.hex(), rcpt=rcpt.address, mx=session.host, ip=session.ip,
                          tls=session.tls_version or "none", sts=session.sts or None, result=state,
                          reply=str(reply), attempt=job.attempt)
            if not job.done.done():
                job.done.set_result(results)

    def _fail_all(self, dest: Destination, state: str, reply: str, status: str) -> None:
        """No session could be had: every job waiting for this destination gets the same result."""
        while dest.jobs:
            job = dest.jobs.popleft()
            results = {i: Q.RcptResult(state, reply, status) for i in job.indexes}
            for rcpt in job.message.rcpts:
                log.event("delivery", qid=job.qid.hex(), rcpt=rcpt.address, mx="none", result=state, reply=reply,
                          attempt=job.attempt)
            if not job.done.done():
                job.done.set_result(results)

    async def _open(self, domain: str) -> Session:
        """A session with the best reachable mail exchanger of `domain` (RFC 5321 §5.1: MX by preference,
        each of its addresses; on to the next when one cannot be reached or will not talk)."""
        assert self.resolver is not None
        port = self.port
        auth = None
        if domain == RELAY and self.relay is not None:
            relay, port = self.relay
            hosts = [f"[{relay}]" if _is_ip(relay) else relay]  # A/AAAA only: no MX lookup for a smarthost
            auth = self.relay_auth
        else:
            hosts = await self.resolver.route(domain)
        require = domain in self.require_tls or auth is not None
        context = self.tls_context
        sts = await self.sts.policy(domain) if self.sts is not None and domain != RELAY else None
        if sts is not None and sts.mode in ("enforce", "testing"):
            outside = [h for h in hosts if not sts.allows(h)]
            if outside:
                log.event("mta_sts_mismatch", domain=domain, mode=sts.mode, mx=",".join(outside))
            if sts.mode == "enforce":
                # RFC 8461 §5: only listed MX hosts, STARTTLS required, the certificate valid for the MX name
                hosts = [h for h in hosts if sts.allows(h)]
                if not hosts:
                    raise SessionError(C.local_reply(451, "4.7.5", f"no MX of {domain} matches its MTA-STS policy"))
                require = True
                context = self.verified_tls
        last: SessionError | None = None
        dns_errors: list[DNSError] = []
        for host in hosts:
            try:
                addresses = await self.resolver.addresses(host)
            except DNSError as e:
                dns_errors.append(e)
                continue
            for ip in addresses:
                for tls in (True, False):
                    ctx = context if tls else None
                    if ctx is None and tls and not require:
                        continue
                    try:
                        session = await open_session(host, ip, port, hostname=self.hostname, tls_context=ctx,
                                                     require_tls=require, auth=auth,
                                                     connect_timeout=self.cfg.delivery_connect_timeout,
                                                     timeout_scale=self.timeout_scale)
                        session.sts = sts.mode if sts is not None else ""
                        return session
                    except SessionError as e:
                        last = e
                        log.event("connect_failed", domain=domain, mx=host, ip=ip, reply=str(e.reply))
                        if not (e.tls_failed and not require):
                            break  # else: opportunistic TLS failed: the same address once more, in plain text
        if last is not None:
            raise last
        if dns_errors:
            raise dns_errors[0]
        if hosts == [domain] and domain != RELAY:
            raise DNSPermanent("5.1.2", f"domain {domain} has no MX and no address")
        raise SessionError(C.local_reply(451, "4.4.4", f"no address for any mail exchanger of {domain}"))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- the process ------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    store: Store
    relay_password: str | None


def delivery_prepare(ctx: WorkerContext) -> Prepared:
    """Before privileges are dropped: open the store (after fork) and read the smarthost password."""
    cfg = ctx.config
    assert isinstance(cfg, Config)
    password = None
    if cfg.delivery_relayhost_password_file:
        try:
            with open(cfg.delivery_relayhost_password_file) as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise BootError(f"delivery.relayhost_password_file: {e.strerror}: {e.filename}") from e
    try:
        return Prepared(Store(cfg.data_dir, map_size=cfg.server_map_size_mb * 1024 * 1024), password)
    except Exception as e:
        raise BootError(f"store cannot open at {cfg.data_dir}: {e}") from e


def delivery_main(ctx: WorkerContext) -> None:
    prepared = ctx.prepared if isinstance(ctx.prepared, Prepared) else delivery_prepare(ctx)
    store = prepared.store
    cfg = ctx.config
    assert isinstance(cfg, Config)
    try:
        uvloop.run(_main(ctx, cfg, store, prepared.relay_password))
    finally:
        store.close()


async def _main(ctx: WorkerContext, cfg: Config, store: Store, relay_password: str | None) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    install_worker_signals(loop, stopped.set)
    runner = Runner(cfg, store, ctx.index, cfg.delivery_processes, relay_password)
    beat = start_heartbeat(ctx, loop)
    log.buffer()
    flusher = loop.create_task(_flush_logs())
    log.event("delivery_ready", index=ctx.index, generation=ctx.generation,
              resolver=cfg.delivery_resolver or "system", port=runner.port, relayhost=cfg.delivery_relayhost or None)
    try:
        await runner.run(stopped)
        await runner.drain(cfg.grace_period)
    finally:
        beat.cancel()
        flusher.cancel()
        log.event("delivery_stop", index=ctx.index, attempts=runner.attempts)
        log.buffer(False)


async def _flush_logs(interval: float = 0.2) -> None:
    while True:
        await asyncio.sleep(interval)
        log.flush()
