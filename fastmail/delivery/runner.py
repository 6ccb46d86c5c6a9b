"""The delivery process (ARCHITECTURE §1: `delivery × 1..M`): runs the outbound queue.

Forked and supervised by the master like a worker; opens LMDB itself after the fork.  Its loop:

  * look at the schedule (`queue.due_entries`): every entry whose next attempt is due and that is not
    already being tried starts an attempt; then sleep until the next one is due or a wake-up datagram
    arrives (fastmail.delivery.wake: workers send one after committing queue entries, so new mail goes at
    once).  A scan reads the schedule from a little before where the last one stopped (keys are times,
    and what is in flight stays in the schedule until its result is written), so it costs what is new,
    not what is in flight; a full scan runs when a cooldown ends and every FULL_SCAN seconds;
  * an attempt groups the pending recipients of an entry by domain and routes each group: the domain's
    MX hosts (dns.py) and the TLS they must be reached with (per-domain policy, MTA-STS).  A *destination*
    is such a route — the MX hosts with their preferences, port and TLS demands — so domains served by
    the same mail exchangers share it, its sessions and its limit, like Postfix's connection cache by
    next hop.  A destination keeps up to `delivery.max_connections_per_domain` sessions, each taking job
    after job (connection reuse) and closing after `delivery.connection_reuse_time` idle, or at once when
    another destination waits for one of the `delivery.max_connections` slots of the process;
  * a session reads a message's body when it takes the job (so memory holds the bodies being sent, not
    those waiting): inline when small (a read from the page cache is cheaper than a thread hop), in a
    thread otherwise;
  * results (per recipient: sent, deferred, failed) go through one committer thread that applies many of
    them in one synced transaction (`queue.apply`: retry schedule with backoff, expiry after the queue
    lifetime, bounces, removal).

A restart (or kill -9) loses nothing: an entry leaves the queue only in the transaction that records the
remote 250s (or stores its bounce), so whatever was in flight is simply due again when the process starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import ssl
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import uvloop

from fastmail import log, metrics
from fastmail.cluster import Cluster
from fastmail.config import Config, split_hostport
from fastmail.delivery import queue as Q
from fastmail.delivery import srs, wake
from fastmail.delivery.dns import DNSError, DNSPermanent, Resolver, order
from fastmail.delivery.mtasts import STS
from fastmail.delivery.outbound import Session, SessionError, client_tls_context, open_session
from fastmail.master.errors import BootError
from fastmail.master.worker import WorkerContext, install_worker_signals, start_heartbeat
from fastmail.proto import smtp_client as C
from fastmail.store.store import Store, StoreError

RELAY = "[relayhost]"  # the one MX host when delivery.relayhost is set
NODE = "[node:"  # "[node:NAME]": the destination of users whose mailbox is on cluster node NAME (LMTP)
MAX_INFLIGHT = 5000  # queue entries being tried at once by one process (refilled when half are done)
SCAN_BATCH = 1000  # entries one scan starts at most
BATCH_PAUSE = 0.05  # seconds before the scan after one that started SCAN_BATCH (those get going first)
SCAN_MARGIN_MS = 2000  # a scan starts this long before where the last one stopped (commits land late)
FULL_SCAN = 30.0  # seconds between two scans of the whole schedule
ERROR_COOLDOWN = 60.0  # seconds an entry whose attempt hit an internal error waits
INLINE_READ = 256 * 1024  # bodies up to this size are read on the event loop


@dataclass
class Route:
    """Where mail for a domain goes and how: the destination's key and what a session needs."""

    key: tuple[Any, ...]  # (mx, port, require_tls, verified, auth): equal keys share sessions
    mx: tuple[tuple[int, str], ...]  # (preference, host), sorted; filtered by an enforced MTA-STS policy
    port: int
    require_tls: bool
    tls: ssl.SSLContext | None
    auth: tuple[str, str] | None
    sts: str  # the MTA-STS mode ("" when none)
    implicit: str  # the domain, when it has no MX record (it is its own mail exchanger), else ""
    lmtp: bool = False  # a mailbox node of the cluster (docs/scaling.md), spoken to over LMTP


@dataclass
class Job:
    qid: bytes
    domain: str
    indexes: list[int]  # recipients of the entry in this job
    message: C.Message  # its body is read when a session takes the job
    size: int
    location: bytes | None  # of the body, when known
    attempt: int
    sts: str
    done: asyncio.Future[dict[int, Q.RcptResult]]


@dataclass(eq=False)
class Destination:
    route: Route
    jobs: deque[Job] = field(default_factory=deque)
    active: int = 0  # connection tasks
    limit: int = 0  # connections it may have: delivery.max_connections_per_domain, or fewer once the
    # server refused one more than those it had (a server limiting connections per client)
    live: int = 0  # of which with an open session
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
            m = metrics.current()
            for (update, fut), effect in zip(batch, effects, strict=True):
                for result in update.results.values():  # recorded: one attempt per recipient (fastmail.metrics)
                    m.delivered(result.state)
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
        self.dests: dict[tuple[Any, ...], Destination] = {}
        self.connections: asyncio.Semaphore | None = None
        self.wanting = 0  # connection tasks waiting for a slot: idle sessions give theirs up
        self.wakeup = asyncio.Event()
        self.wake_at = 0.0  # when the loop looks at the schedule next on its own
        self.last_scanned: int | None = None  # schedule time (ms) where the last scan stopped
        self.more = False  # the last scan stopped for want of room: more may be due
        self.next_full = 0.0
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
        self._mine = (lambda q: wake.owner(q, self.processes) == self.index) if processes > 1 else None
        self.cluster = Cluster(cfg)  # users whose mailbox is on another node go there over LMTP
        self.nodes: dict[str, tuple[str, int]] = {}  # "[node:NAME]" -> (address, LMTP port), as last routed

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
        stop_waiter = loop.create_task(stopped.wait())
        stop_waiter.add_done_callback(lambda _: self.wakeup.set())
        try:
            while not stopped.is_set():
                self.wakeup.clear()
                next_due = self.scan()
                delay = 30.0 if next_due is None else min(30.0, max(0.0, next_due - time.time()))
                self.wake_at = time.time() + delay
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), delay)
        finally:
            stop_waiter.cancel()
            loop.remove_reader(sock.fileno())
            sock.close()

    def scan(self) -> float | None:
        now = time.time()
        room = MAX_INFLIGHT - len(self.inflight)
        if room <= 0:
            self.more = True
            return None  # attempts that end wake the loop again
        full = self.last_scanned is None or now >= self.next_full
        if self.cooldown:
            before = len(self.cooldown)
            self.cooldown = {q: t for q, t in self.cooldown.items() if t > now}
            full = full or len(self.cooldown) < before  # what cooled down lies behind the last scan
        skip = self.inflight | set(self.cooldown) if self.cooldown else self.inflight
        start = 0 if full else max(0, self.last_scanned - SCAN_MARGIN_MS)  # type: ignore[operator]
        found = Q.due_entries(self.store, now, skip, min(room, SCAN_BATCH), self._mine, start)
        self.more = len(found.entries) >= room
        if full:
            self.next_full = now + FULL_SCAN
        if found.last is not None and (full or self.last_scanned is None or found.last > self.last_scanned):
            self.last_scanned = found.last
        elif full:
            self.last_scanned = int(now * 1000)
        next_due = found.next_due
        if len(found.entries) >= SCAN_BATCH and not self.more:
            next_due = now + BATCH_PAUSE  # more are due: after these have routed and found their sessions
        if self.cooldown:
            soonest = min(self.cooldown.values())
            next_due = soonest if next_due is None else min(next_due, soonest)
        for e in found.entries:
            self.inflight.add(e.qid)
            self._spawn(self.attempt(e.qid, e.rec, e.location))
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

    async def attempt(self, qid: bytes, rec: dict[str, Any], location: bytes | None = None) -> None:
        try:
            await self._attempt(qid, rec, location)
        except Exception as e:
            # e.g. the queue write failed: leave the entry alone for a while rather than try it (and perhaps
            # deliver it again) in a tight loop
            self.cooldown[qid] = time.time() + ERROR_COOLDOWN
            log.event("attempt_error", level=logging.ERROR, qid=qid.hex(), error=repr(e), retry_in=ERROR_COOLDOWN)
            self.wakeup.set()
        finally:
            self.inflight.discard(qid)
            if self.more and len(self.inflight) < MAX_INFLIGHT // 2:
                self.more = False
                self.wakeup.set()  # room for what the last scan left

    async def _attempt(self, qid: bytes, rec: dict[str, Any], location: bytes | None) -> None:
        todo = Q.pending(rec)
        if not todo:  # only failed recipients (a DSN is due) or nothing left: one update does it
            self._effect(rec, await self.committer.submit(Q.Update(qid, {}, finish=False, now=time.time())))
            return
        groups: dict[tuple[str, str], list[int]] = {}
        rcpts = rec["rcpts"]
        for i in todo:
            # one transaction per recipient domain (or the smarthost, or the cluster node) and envelope sender
            node = self._node_of(rcpts[i]["to"])
            if node is not None:
                groups.setdefault((node, rec["sender"]), []).append(i)
                continue
            domain = RELAY if self.relay else Q.domain_of(rcpts[i]["to"])
            groups.setdefault((domain, self._sender_for(rec, rcpts[i])), []).append(i)
        params = rec.get("params") or {}
        self.attempts += 1
        jobs = []
        loop = asyncio.get_running_loop()
        for (domain, sender), indexes in groups.items():
            recipients = [C.Recipient(rcpts[i]["to"], rcpts[i].get("notify"), rcpts[i].get("orcpt")) for i in indexes]
            smtputf8 = bool(params.get("smtputf8")) or not sender.isascii() or \
                any(not r.address.isascii() for r in recipients)
            msg = C.Message(sender, recipients, b"", ret=params.get("ret"), envid=params.get("envid"),
                            eight_bit=(params.get("body") or "").upper() == "8BITMIME", smtputf8=smtputf8)
            jobs.append(Job(qid, domain, indexes, msg, int(rec.get("size") or 0), location, rec.get("attempts", 0) + 1,
                            "", loop.create_future()))
        if len(jobs) == 1:
            await self._dispatch(jobs[0])
            results = await jobs[0].done
            self._effect(rec, await self.committer.submit(Q.Update(qid, results, finish=True, now=time.time())))
            return
        # several destinations: routed at the same time; each one's results recorded as soon as it has them
        async def record(job: Job) -> None:
            await self._dispatch(job)
            self._effect(rec, await self.committer.submit(Q.Update(qid, await job.done, now=time.time())))

        await asyncio.gather(*(record(j) for j in jobs))
        self._effect(rec, await self.committer.submit(Q.Update(qid, {}, finish=True, now=time.time())))

    def _node_of(self, address: str) -> str | None:
        """"[node:NAME]" when `address` is a user whose mailbox is on another node of the cluster."""
        if not self.cluster.active:
            return None
        route = self.cluster.lmtp_route(self.store, address)
        if route is None:
            return None
        name, ip, port = route
        key = f"{NODE}{name}]"
        self.nodes[key] = (ip, port)
        return key

    def _sender_for(self, rec: dict[str, Any], r: dict[str, Any]) -> str:
        """MAIL FROM for recipient `r`: the envelope sender, or its SRS0 form when `r` is a forward (reached
        through a local alias) of mail from another domain."""
        sender: str = rec["sender"]
        alias = r.get("rcpt") or ""
        if (self.srs_key is None or not sender or not alias or alias.lower() == r["to"].lower()
                or self.store.is_local_domain(Q.domain_of(sender))
                or not self.store.is_local_domain(Q.domain_of(alias))):
            return sender
        return srs.forward(self.srs_key, sender, Q.domain_of(alias))

    def _effect(self, rec: dict[str, Any], effect: Q.Effect) -> None:
        if effect.bounce:
            log.event("dsn", qid=rec["id"], dsn=effect.bounce, to=rec["sender"], via=effect.dsn_to)
            if effect.dsn_to == "remote":
                if self.processes > 1:
                    wake.notify(self.cfg.data_dir, self.processes)  # the bounce's queue id may be another's
                self.wakeup.set()
        if effect.removed:
            log.event("queue_done", qid=rec["id"])
        elif effect.next_attempt is not None:
            log.event("queue_deferred", qid=rec["id"], next_in=f"{max(0.0, effect.next_attempt - time.time()):.1f}")
            if effect.next_attempt < self.wake_at:
                self.wakeup.set()  # due before the loop would look again

    # -- routes, destinations and their connections --------------------------------------------------------

    async def _dispatch(self, job: Job) -> None:
        """Route `job` and queue it at its destination; a domain that cannot be routed ends the job here."""
        try:
            route = await self._route(job.domain)
        except DNSError as e:
            permanent = isinstance(e, DNSPermanent)
            self._finish(job, "failed" if permanent else "deferred", f"{550 if permanent else 451} {e.enhanced} {e.text}",
                         e.enhanced)
            return
        except SessionError as e:
            self._finish(job, "deferred", str(e.reply), e.reply.status())
            return
        job.sts = route.sts
        dest = self.dests.get(route.key)
        if dest is None:
            dest = self.dests[route.key] = Destination(route, limit=self.cfg.delivery_max_connections_per_domain)
        else:
            dest.route = route  # the latest answer (same hosts and demands; fresher TLS context)
        dest.jobs.append(job)
        if dest.idle:
            dest.arrived.set()
        # a backlog larger than the sessions there are opens more, up to the per-destination limit
        if dest.active < dest.limit and dest.active < len(dest.jobs):
            dest.active += 1
            self._spawn(self._connection(dest))

    async def _route(self, domain: str) -> Route:
        """The route of `domain`: its MX hosts (or the smarthost), filtered and made to require verified
        TLS by an enforced MTA-STS policy (RFC 8461 §5).  Raises DNSError, or SessionError when no MX
        host is allowed by the policy."""
        if domain.startswith(NODE) and domain in self.nodes:
            ip, port = self.nodes[domain]
            node_mx: tuple[tuple[int, str], ...] = ((0, f"[{ip}]"),)
            return Route((node_mx, port, False, False, "lmtp", ""), node_mx, port, False, None, None, "", "",
                         lmtp=True)
        if self.relay is not None:
            relay, port = self.relay
            host = f"[{relay}]" if _is_ip(relay) else relay  # A/AAAA only: no MX lookup for a smarthost
            auth = self.relay_auth
            require = auth is not None
            relay_mx: tuple[tuple[int, str], ...] = ((0, host),)
            return Route((relay_mx, port, require, False, "", ""), relay_mx, port, require, self.tls_context, auth,
                         "", "")
        assert self.resolver is not None
        looking = self.sts.lookup(domain) if self.sts is not None else None  # asked at the same time as the MX
        mx = await self.resolver.mx(domain)
        implicit = domain if mx == ((0, domain),) and not domain.startswith("[") else ""
        require = domain in self.require_tls
        context = self.tls_context
        verified = False
        sts = await asyncio.shield(looking) if looking is not None else None
        mode = sts.mode if sts is not None else ""
        if sts is not None and mode in ("enforce", "testing"):
            outside = [h for _, h in mx if not sts.allows(h)]
            if outside:
                log.event("mta_sts_mismatch", domain=domain, mode=mode, mx=",".join(outside))
            if mode == "enforce":
                # RFC 8461 §5: only listed MX hosts, STARTTLS required, the certificate valid for the MX name
                mx = tuple(m for m in mx if sts.allows(m[1]))
                if not mx:
                    raise SessionError(C.local_reply(451, "4.7.5", f"no MX of {domain} matches its MTA-STS policy"))
                require = verified = True
                context = self.verified_tls
        key = (mx, self.port, require, verified, mode, implicit)
        return Route(key, mx, self.port, require, context, None, mode, implicit)

    def _finish(self, job: Job, state: str, reply: str, status: str, mx: str = "none") -> None:
        """`job` ends without a transaction: every recipient gets the same result."""
        for rcpt in job.message.rcpts:
            log.event("delivery", qid=job.qid.hex(), rcpt=rcpt.address, mx=mx, result=state, reply=reply,
                      attempt=job.attempt)
        if not job.done.done():
            job.done.set_result({i: Q.RcptResult(state, reply, status) for i in job.indexes})

    async def _connection(self, dest: Destination) -> None:
        sem = self.connections
        assert sem is not None
        try:
            if sem.locked():
                self.wanting += 1
                for other in self.dests.values():
                    if other.idle:
                        other.arrived.set()  # an idle session elsewhere gives its slot up
                try:
                    await sem.acquire()
                finally:
                    self.wanting -= 1
            else:
                await sem.acquire()
            try:
                while dest.jobs and not self.stopping:
                    try:
                        session = await self._open(dest.route, dest.jobs[0].domain)
                    except (DNSError, SessionError) as e:
                        if dest.live:
                            # the sessions open take the jobs (a server limiting our connections says 421)
                            dest.limit = max(1, dest.live)
                            log.event("connect_given_up", mx=dest.route.mx[0][1], live=dest.live, reply=str(e))
                            return
                        if isinstance(e, DNSError):
                            permanent = isinstance(e, DNSPermanent)
                            state = "failed" if permanent else "deferred"
                            reply, status = f"{550 if permanent else 451} {e.enhanced} {e.text}", e.enhanced
                        else:
                            # only our own verdicts are final here (a loop); a remote refusal is retried
                            state = "failed" if e.reply.local and e.reply.permanent else "deferred"
                            reply, status = str(e.reply), e.reply.status()
                        while dest.jobs:
                            self._finish(dest.jobs.popleft(), state, reply, status)
                        return
                    dest.live += 1
                    try:
                        await self._serve(dest, session)
                    finally:
                        dest.live -= 1
                        await session.close()
            finally:
                sem.release()
        finally:
            dest.active -= 1
            if not dest.active and not dest.jobs and self.dests.get(dest.route.key) is dest:
                del self.dests[dest.route.key]

    async def _serve(self, dest: Destination, session: Session) -> None:
        """Jobs of `dest` over `session`, one after the other; each next one pipelined behind the data of
        the one before when the server allows it (RFC 2920 §3.1), so a message costs one write and one
        read.  Results are taken in the order the transactions were sent."""
        sent: deque[tuple[Job, asyncio.Future[list[C.Reply]]]] = deque()

        def feed() -> None:  # called by the session as the data of the transaction before goes out
            if self.stopping or not dest.jobs:
                return
            job = dest.jobs[0]
            if job.size > INLINE_READ or job.location is None:
                return  # its body is read in a thread: it waits for the session to be free
            dest.jobs.popleft()
            try:
                job.message.body = self._read_at(job.location)
            except Exception as e:
                self._unreadable(job, e)
                return
            sent.append((job, session.send(job.message)))

        session.pipeline(feed)
        try:
            while True:
                if not sent:
                    if not session.usable or self.stopping:
                        return
                    if not dest.jobs:
                        if self.wanting:
                            return  # another destination waits for a connection slot: give this one up
                        dest.idle += 1
                        dest.arrived.clear()
                        try:
                            await asyncio.wait_for(dest.arrived.wait(), self.cfg.delivery_connection_reuse_time)
                        except TimeoutError:
                            return
                        finally:
                            dest.idle -= 1
                        continue
                    job = dest.jobs.popleft()
                    try:
                        body = await self._read(job)
                    except Exception as e:
                        self._unreadable(job, e)
                        continue
                    if not session.usable:  # it closed while the body was read
                        dest.jobs.appendleft(job)
                        return
                    job.message.body = body
                    sent.append((job, session.send(job.message)))
                job, fut = sent[0]
                try:
                    replies = await fut
                except Exception as e:
                    replies = [C.local_reply(451, "4.3.0", f"local error: {e!r}")] * len(job.indexes)
                sent.popleft()
                self._record(job, session, replies)
        finally:
            session.pipeline(None)

    def _record(self, job: Job, session: Session, replies: list[C.Reply]) -> None:
        msg = job.message
        msg.body = b""
        results: dict[int, Q.RcptResult] = {}
        qid = job.qid.hex()
        tls = session.tls_version or "none"
        no_dsn = "DSN" not in session.extensions
        for i, rcpt, reply in zip(job.indexes, msg.rcpts, replies, strict=True):
            state = "sent" if reply.ok else "failed" if reply.permanent else "deferred"
            text = str(reply)
            results[i] = Q.RcptResult(state, text, reply.status(), session.host, relayed=no_dsn and reply.ok)
            log.event("delivery", qid=qid, rcpt=rcpt.address, mx=session.host, ip=session.ip, tls=tls,
                      sts=job.sts or None, result=state, reply=text, attempt=job.attempt)
        if not job.done.done():
            job.done.set_result(results)

    def _unreadable(self, job: Job, e: Exception) -> None:
        log.event("blob_unreadable", level=logging.ERROR, qid=job.qid.hex(), error=repr(e))
        self._finish(job, "deferred", f"451 4.3.0 message body unreadable: {e}", "4.3.0")

    async def _read(self, job: Job) -> bytes:
        if job.size > INLINE_READ:
            return await asyncio.get_running_loop().run_in_executor(None, self.store.read_blob, job.qid)
        if job.location is not None:
            return self._read_at(job.location)
        return self.store.read_blob(job.qid)

    def _read_at(self, location: bytes) -> bytes:
        """The body at `location` (read with the record when the attempt began: blobs never move).  Its
        range is released only when the entry is deleted — by an operator, while the attempt was on its
        way — and then reads as zeros, which no stored message starts with (our Received field comes
        first): that is an unreadable body, not a message to send."""
        data = self.store.segments.read(location)
        if data[:1] == b"\0":
            raise StoreError("message body released (queue entry deleted)")
        return data

    async def _open(self, route: Route, domain: str) -> Session:
        """A session with the best reachable mail exchanger of `route` (RFC 5321 §5.1: MX by preference,
        random among equals, each of its addresses; on to the next when one cannot be reached or will not
        talk).  `domain`: the recipient domain of the first job waiting, for the log."""
        assert self.resolver is not None
        hosts = order(route.mx)
        require = route.require_tls
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
                    ctx = route.tls if tls else None
                    if ctx is None and tls and not require:
                        continue
                    try:
                        session = await open_session(host, ip, route.port, hostname=self.hostname, tls_context=ctx,
                                                     require_tls=require, auth=route.auth,
                                                     connect_timeout=self.cfg.delivery_connect_timeout,
                                                     timeout_scale=self.timeout_scale, lmtp=route.lmtp)
                        session.sts = route.sts
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
        if route.implicit:
            raise DNSPermanent("5.1.2", f"domain {route.implicit} has no MX and no address")
        raise SessionError(C.local_reply(451, "4.4.4", f"no address for any mail exchanger ({', '.join(hosts)})"))


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
    """Before privileges are dropped: open the store (after fork); the smarthost password as the master read it."""
    cfg = ctx.config
    assert isinstance(cfg, Config)
    try:
        password = cfg.relay_password()  # read by the master (fastmail.cli): here only when it was not
    except OSError as e:
        raise BootError(f"delivery.relayhost_password_file: {e.strerror}: {e.filename}") from e
    metrics.setup(cfg)  # this process's metrics files (fastmail.metrics)
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
    # What exists now (modules, the configuration, the store) lives as long as the process: out of the
    # collector's sight, its full collections walk only the objects of the attempts in flight.  Young
    # collections every 10,000 allocations rather than 700: the attempts' objects live for seconds, and
    # collecting them that often was half the time the collector took here (bench/README.md, outbound).
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
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
