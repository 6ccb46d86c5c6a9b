"""What the metrics (fastmail.metrics, issue #9) cost on the SMTP hot path, in CPU per message.

    python -m bench.metrics_cost [--messages N] [--repeats R]

The updates a worker makes for one message in the worst case — a connection per message: connection opened,
open gauge up, session started, message accepted, the group commit's batch size and duration observed (a
batch of one), open gauge down — run N times in a loop, measured with time.process_time (CPU of this
process, not wall time: the machine may be busy), best of R repeats:

- multiprocess: what a server with metrics.listen set does (prometheus_client's mmap files in a scratch folder);
- in memory: metrics.listen unset (the same calls, no files);
- empty: the loop alone (subtracted from both).

Also one IMAP command's latency observation (a histogram child of one command) and one counter increment
(a message accepted on a reused connection: one increment, plus a batch's 4 writes shared by its messages).
Prints JSON: the
figures in microseconds per message, the machine, the versions and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def _best(fn: Callable[[int], None], n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn(n)
        best = min(best, time.process_time() - t0)
    return best


def _per_message(m: Any) -> Callable[[int], None]:
    svc = m.service("smtp")

    def run(n: int) -> None:
        for _ in range(n):
            svc.connections.inc()
            svc.open.inc()
            svc.sessions.inc()
            svc.accepted.inc()
            m.commit_batch.observe(1)
            m.commit_seconds.observe(0.004)
            svc.open.dec()

    return run


def _imap(m: Any) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            m.imap_command_done("FETCH", 0.0002)

    return run


def _inc(m: Any) -> Callable[[int], None]:
    accepted = m.service("smtp").accepted

    def run(n: int) -> None:
        for _ in range(n):
            accepted.inc()

    return run


def _empty(n: int) -> None:
    for _ in range(n):
        pass


def measure(messages: int = 100_000, repeats: int = 5) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from fastmail import metrics

    scratch = Path(tempfile.mkdtemp(prefix="metrics-cost-"))
    try:
        empty = _best(_empty, messages, repeats)
        memory = metrics.Metrics(CollectorRegistry())
        mem = _best(_per_message(memory), messages, repeats)
        mem_imap = _best(_imap(memory), messages, repeats)
        mem_inc = _best(_inc(memory), messages, repeats)
        metrics.reset_dir(scratch)
        multi = metrics.setup(SimpleNamespace(metrics_listen="127.0.0.1:1", data_dir=scratch))
        mp = _best(_per_message(multi), messages, repeats)
        mp_imap = _best(_imap(multi), messages, repeats)
        mp_inc = _best(_inc(multi), messages, repeats)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def us(seconds: float) -> float:
        return round(max(0.0, seconds - empty) / messages * 1e6, 3)

    return {
        "messages": messages, "repeats": repeats,
        "us_per_message": {"multiprocess": us(mp), "in_memory": us(mem)},
        "us_per_imap_command": {"multiprocess": us(mp_imap), "in_memory": us(mem_imap)},
        "us_per_counter_inc": {"multiprocess": us(mp_inc), "in_memory": us(mem_inc)},
        "loop_us_per_iteration": round(empty / messages * 1e6, 4),
    }


def _context() -> dict[str, Any]:
    import prometheus_client

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    try:
        from importlib.metadata import version

        pc_version = version("prometheus-client")
    except Exception:
        pc_version = getattr(prometheus_client, "__version__", "?")
    return {"python": sys.version.split()[0], "prometheus_client": pc_version, "machine": platform.machine(),
            "cpus": os.cpu_count(), "kernel": platform.release(), "commit": commit,
            "load_1min": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(json.dumps({**_context(), **measure(args.messages, args.repeats)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
