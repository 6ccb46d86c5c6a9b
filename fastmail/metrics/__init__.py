"""Prometheus metrics (issue #9): what the workers and the delivery processes count, and the files they count in.

Design — prometheus-client in multiprocess mode (docs/operations.md, "Metrics"):

* Every process that counts (each worker, each delivery process) calls :func:`setup` after fork, in its
  prepare hook: from then on each ``inc()``/``observe()`` writes a double into a file of its own,
  ``DATA_DIR/metrics/<kind>_<pid>.db`` (an mmap: no syscall per update, and what was written survives the
  process, even a SIGKILL).  The master never counts anything: it only wipes the folder at start
  (:func:`reset_dir`) and, when it reaps a child, drops that pid's *live* gauge files (:func:`process_dead`),
  so the open-connection gauges of a dead worker vanish while its counters and histograms stay in the sums.
* The ``metrics`` process (fastmail.metrics.exporter) answers ``GET /metrics`` on ``metrics.listen`` by
  merging every file (prometheus_client's MultiProcessCollector) and reading the queue's size by state from
  the store.

So the totals are monotonic over worker deaths and restarts, for as long as the master runs; a master
restart starts them again from zero (a counter reset, which Prometheus' rate() handles).

Label sets are fixed and small: ``service`` is one of SERVICES (a listener's base name, "smtp#1" is
"smtp"), ``reason`` one of REJECT_REASONS, ``result`` one of AUTH_RESULTS or DELIVERY_RESULTS, ``command``
one of the IMAP command names the server implements.

Without :func:`setup` (tests that build a worker's objects in-process, the CLI) the same objects count in
memory, in ``current().registry``; :func:`setup` with metrics off (no ``metrics.listen``) does the same.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

__all__ = [
    "AUTH_RESULTS",
    "DELIVERY_RESULTS",
    "DIR_NAME",
    "REJECT_REASONS",
    "SERVICES",
    "Metrics",
    "ServiceMetrics",
    "current",
    "process_dead",
    "reject_reason",
    "reset_dir",
    "service",
    "setup",
]

DIR_NAME = "metrics"  # under server.data_dir
SERVICES = ("smtp", "submission", "submissions", "lmtp", "imap", "imaps", "pop3", "pop3s")
AUTH_RESULTS = ("success", "failure", "throttled")
DELIVERY_RESULTS = ("delivered", "deferred", "bounced")
# Why a MAIL, RCPT or DATA/BDAT was refused: a short fixed set (fastmail.proto.replies names folded into it).
REJECT_REASONS = ("user_unknown", "relay_denied", "policy", "too_big", "mailbox_full", "greylisted", "ratelimit",
                  "checks", "storage", "protocol")
_REPLY_REASONS = {
    "user_unknown": "user_unknown",
    "relay_denied": "relay_denied",
    "need_auth": "policy",
    "need_tls": "policy",
    "sender_not_owned": "policy",
    "too_big": "too_big",
    "mailbox_full": "mailbox_full",
    "mailbox_full_temp": "mailbox_full",
    "insufficient_storage": "storage",
    "local_error": "storage",
}
_DELIVERY_RESULT = {"sent": "delivered", "deferred": "deferred", "failed": "bounced"}

COMMIT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
IMAP_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5, 5.0, 10.0)


def reject_reason(name: str) -> str:
    """The REJECT_REASONS label of a refusal whose reply is named `name` (fastmail.proto.replies.reason)."""
    return _REPLY_REASONS.get(name, "protocol")


class ServiceMetrics:
    """The children of one service's labels, resolved once: a session's updates are one call each."""

    def __init__(self, m: Metrics, name: str) -> None:
        self.name = name
        self.connections = m.connections.labels(name)
        self.open = m.connections_open.labels(name)
        self.sessions = m.sessions.labels(name)
        self.auth = {r: m.auth.labels(name, r) for r in AUTH_RESULTS}
        self.accepted = m.accepted.labels(name)
        self.rejected = {r: m.rejected.labels(name, r) for r in REJECT_REASONS}


class Metrics:
    """Every instrument of the server.  ``registry`` is None in multiprocess mode (the files are the registry)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry
        r: Any = registry
        self.connections = Counter("fastmail_connections", "Connections accepted, per service.", ["service"],
                                   registry=r)
        self.connections_open = Gauge("fastmail_connections_open", "Connections open now, per service.",
                                      ["service"], registry=r, multiprocess_mode="livesum")
        self.sessions = Counter("fastmail_sessions", "Sessions started (greeting sent: not refused at connect by a "
                                "connection limit or a client that talked first), per service.", ["service"],
                                registry=r)
        self.auth = Counter("fastmail_auth", "Authentication attempts per service and result (success, failure, "
                            "throttled: refused without a password check).", ["service", "result"], registry=r)
        self.accepted = Counter("fastmail_messages_accepted", "Messages accepted (250 after the data) over SMTP, "
                                "submission and LMTP.", ["service"], registry=r)
        self.rejected = Counter("fastmail_messages_rejected", "Refused MAIL, RCPT and DATA/BDAT commands and "
                                "messages refused after their data, per service and reason.", ["service", "reason"],
                                registry=r)
        self.delivery = Counter("fastmail_delivery_attempts", "Outbound delivery attempts per recipient and result "
                                "(delivered: the remote 250; deferred: a temporary failure; bounced: a permanent one).",
                                ["result"], registry=r)
        self.commit_batch = Histogram("fastmail_commit_batch_messages", "Messages made durable by one group commit "
                                      "(one segment fdatasync and one synced LMDB commit).", registry=r,
                                      buckets=COMMIT_BATCH_BUCKETS)
        self.commit_seconds = Histogram("fastmail_commit_seconds", "Duration of one group commit: writing the "
                                        "batch, fdatasync and the synced LMDB commit.", registry=r,
                                        buckets=COMMIT_SECONDS_BUCKETS)
        self.imap_command = Histogram("fastmail_imap_command_seconds", "IMAP command latency, from the command "
                                      "read in full to its tagged response (IDLE excluded), per command.",
                                      ["command"], registry=r, buckets=IMAP_SECONDS_BUCKETS)
        self.services = {name: ServiceMetrics(self, name) for name in SERVICES}  # every series exists from 0
        self.delivery_results = {state: self.delivery.labels(result) for state, result in _DELIVERY_RESULT.items()}
        self._imap: dict[str, Any] = {}

    def service(self, listener: str) -> ServiceMetrics:
        """The ServiceMetrics of a listener ("smtp", "lmtp#1", ...)."""
        name = listener.split("#", 1)[0]
        found = self.services.get(name)
        if found is None:  # a listener kind of a later issue: its own series, still one per configured kind
            found = self.services[name] = ServiceMetrics(self, name)
        return found

    def delivered(self, state: str) -> None:
        """One recipient's attempt ended with queue state `state` ("sent", "deferred" or "failed")."""
        child = self.delivery_results.get(state)
        if child is not None:
            child.inc()

    def imap_command_done(self, command: str, seconds: float) -> None:
        child = self._imap.get(command)
        if child is None:
            child = self._imap[command] = self.imap_command.labels(command)
        child.observe(seconds)


_current: Metrics | None = None


def current() -> Metrics:
    """This process's instruments (counting in memory until :func:`setup` says otherwise)."""
    global _current
    if _current is None:
        _current = Metrics(CollectorRegistry())
    return _current


def service(listener: str) -> ServiceMetrics:
    return current().service(listener)


def directory(data_dir: Path) -> Path:
    return Path(data_dir) / DIR_NAME


def setup(cfg: Any) -> Metrics:
    """In a freshly forked worker or delivery process (its prepare hook, before any session): count into this
    process's files under DATA_DIR/metrics when metrics.listen is set, else in memory."""
    global _current
    if not cfg.metrics_listen:
        _current = Metrics(CollectorRegistry())
        return _current
    path = str(directory(cfg.data_dir))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # read by prometheus_client whenever it opens a file
    values.ValueClass = values.MultiProcessValue()  # chosen explicitly: not whatever the import-time env said
    _current = Metrics(None)
    return _current


def reset_dir(data_dir: Path) -> Path:
    """The master, at start: an empty DATA_DIR/metrics (the files of a previous run would add to the sums)."""
    path = directory(data_dir)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    return path


def process_dead(data_dir: Path, pid: int) -> None:
    """The master reaped child `pid`: its live gauges (open connections) go; its counters stay in the sums."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, str(directory(data_dir)))
    except OSError:
        pass
