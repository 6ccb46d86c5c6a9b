"""The ``metrics`` process: ``GET /metrics`` in the Prometheus text format on ``metrics.listen``.

Forked and supervised by the master like the delivery processes (an extra kind, one process, only when
``metrics.listen`` is set).  Before privileges are dropped it binds its listening socket (SO_REUSEPORT, like
every listener: during a HUP the new process binds beside the old one, which closes its socket when TERMed)
and opens the store (after fork, never inherited).

A scrape merges the files every worker and delivery process counts in (DATA_DIR/metrics, prometheus_client's
MultiProcessCollector: counters and histograms summed over every process the master started since it
started, the dead included; open-connection gauges over the live ones) and counts the queue's entries by
state in one short read transaction.  The work runs on one thread, one scrape at a time, off the loop that
keeps the heartbeat.

HTTP: one request per connection (``Connection: close``); ``GET /metrics`` (any query string) is 200, any
other method or path 404; a request head larger than 8 KiB or slower than 10 s is dropped, and so is a client
that does not read the answer within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import uvloop
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from fastmail import log
from fastmail.config import Config, parse_listen
from fastmail.delivery import queue as Q
from fastmail.master.errors import BootError
from fastmail.master.listeners import ListenerSpec, bind_tcp
from fastmail.master.worker import WorkerContext, install_worker_signals, start_heartbeat
from fastmail.metrics import directory
from fastmail.store import records as R
from fastmail.store.store import Store

QUEUE_STATES = ("queued", "deferred", "failed", "held")
# The classic text format, which every Prometheus reads (generate_latest writes it: our names need no escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0


class QueueCollector:
    """``fastmail_queue_entries{state}``: the outbound queue's entries by fastmail.delivery.queue.summary_state,
    read from the store at each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(QUEUE_STATES, 0)
        store = self.store
        with store.read() as txn:
            for _key, raw in txn.cursor(db=store.db["queue"]):
                state = Q.summary_state(R.loads(raw))
                if state in counts:
                    counts[state] += 1
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("fastmail_queue_entries", "Outbound queue entries by state (held; failed: a DSN is "
                              "due; deferred: tried, waiting for a retry; queued: not tried yet), read at the scrape.",
                              labels=["state"])
        for state, n in self.counts().items():
            g.add_metric([state], n)
        yield g


def make_registry(cfg: Config, store: Store) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory(cfg.data_dir)))
    registry.register(QueueCollector(store))
    return registry


@dataclass
class Prepared:
    sock: socket.socket
    store: Store


def metrics_prepare(ctx: WorkerContext) -> Prepared:
    """Before privileges are dropped: bind metrics.listen (a port below 1024 works as root), open the store."""
    cfg = ctx.config
    assert isinstance(cfg, Config)
    address = parse_listen(cfg.metrics_listen)
    assert not isinstance(address, str)  # the config's validator allows HOST:PORT only
    sock = bind_tcp(ListenerSpec("metrics", address), backlog=64)
    try:
        store = Store(cfg.data_dir, map_size=cfg.server_map_size_mb * 1024 * 1024)
    except Exception as e:
        sock.close()
        raise BootError(f"store cannot open at {cfg.data_dir}: {e}") from e
    return Prepared(sock, store)


def metrics_main(ctx: WorkerContext) -> None:
    prepared = ctx.prepared if isinstance(ctx.prepared, Prepared) else metrics_prepare(ctx)
    try:
        uvloop.run(_serve(ctx, prepared))
    finally:
        prepared.store.close()


def _response(status: str, content_type: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class Exporter:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="scrape")  # one scrape at a time
        self.scrapes = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) == 3 and parts[0] == b"GET" and parts[1].split(b"?", 1)[0] == b"/metrics":
                loop = asyncio.get_running_loop()
                try:
                    body = await loop.run_in_executor(self.pool, generate_latest, self.registry)
                except Exception as e:
                    log.event("metrics_failed", level=logging.ERROR, error=repr(e))
                    writer.write(_response("500 Internal Server Error", "text/plain; charset=utf-8", b"error\n"))
                else:
                    self.scrapes += 1
                    writer.write(_response("200 OK", CONTENT_TYPE, body))
            else:
                writer.write(_response("404 Not Found", "text/plain; charset=utf-8", b"not found\n"))
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)  # a client that does not read: dropped
        finally:
            writer.close()


async def _serve(ctx: WorkerContext, prepared: Prepared) -> None:
    cfg = ctx.config
    assert isinstance(cfg, Config)
    loop = asyncio.get_running_loop()
    exporter = Exporter(make_registry(cfg, prepared.store))
    server = await asyncio.start_server(exporter.handle, sock=prepared.sock, limit=MAX_HEAD, backlog=64)
    stopping = asyncio.Event()
    install_worker_signals(loop, stopping.set)
    beat = start_heartbeat(ctx, loop)
    log.event("metrics_ready", index=ctx.index, generation=ctx.generation, listen=cfg.metrics_listen)
    await stopping.wait()
    server.close()
    beat.cancel()
    exporter.pool.shutdown(wait=True)
    log.event("metrics_stop", index=ctx.index, scrapes=exporter.scrapes)
    log.flush()
