"""Floods against a real fastmail (issue #8, hardening): does it keep serving, and does its memory stay bounded?

    python -m bench.flood [--connections 10000] [--sources 50] [--workers 2] [--quick] [--output FILE]

One fastmail (`fastmail serve`, defaults except data dir, loopback ports and workers) takes, one phase after
the other:

1. **idle**: `--connections` TCP connections, half SMTP and half IMAP, opened from `--sources` loopback
   addresses (127.0.0.2, 127.0.0.3, ...; few enough per address that the per-address caps never refuse
   them) and held idle, each greeted; then, from one more address, more connections than the per-address
   caps allow (smtp/imap.max_connections_per_ip x workers + 100), which must be refused (421 4.7.0, * BYE
   [UNAVAILABLE]) past the cap;
2. **command flood**: one SMTP and one IMAP client sending NOOP as fast as they can, reading the replies,
   for `--commands` commands (or `--limit` seconds);
3. **pipelining flood**: clients that write pipelined commands without reading a reply (SMTP EHLO, IMAP
   CAPABILITY and POP3 CAPA: each reply is 10-25 times its command) until the server stops reading
   (their writes stall for --stall seconds: back-pressure) or `--pipeline-mib` MiB went out;
4. **100 MB line**: 100 MiB without a line end to the SMTP, IMAP and POP3 ports, then CRLF: the proper
   error reply (500 5.5.2 / BAD [TOOBIG] / -ERR), and the session goes on;

and while each phase holds its load, a normal client sends a message (smtplib) and reads it back (imaplib
LOGIN, SELECT, SEARCH, FETCH): the server keeps serving.  Every message so sent must be stored at the end
(`messages lost` = sent - stored).  A second fastmail with short timeouts (command and idle 5 s) takes

5. **slowloris**: clients (SMTP, IMAP, POP3) sending one byte every second, and clients that pipeline
   commands without ever reading: each must be timed out (421 4.4.2 / BYE / -ERR, or aborted).

The server's memory is the sum of Pss (/proc/PID/smaps_rollup: shared pages split between the processes) over
its whole process tree (master, workers, delivery), sampled every 0.25 s in a thread: before, peak and after
each phase.  Every loop is bounded in count and time.  Prints a table; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import os
import resource
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.smtp.procfs import _pss_kib, _status_kib, process_tree
from bench.smtp.report import git_info, machine_info, markdown
from bench.smtp.target import free_port, stop_process, wait_for_greeting

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
USER, PASSWORD = "alice@flood.test", "flood-secret"
LISTENERS = ("smtp", "submission", "lmtp", "imap", "pop3")
LINE = 100 * 1024 * 1024  # the long line: 100 MiB without a line end
CAP_SOURCE = "127.0.0.254"  # the address that goes past the per-address caps


# -- the server ---------------------------------------------------------------------------------------------


class Fastmail:
    """`fastmail serve` on free loopback ports with a temp data dir (implicit-TLS listeners off)."""

    def __init__(self, workdir: Path, workers: int, extra: str = "", nofile: int = 0) -> None:
        self.workdir, self.workers, self.nofile = workdir, workers, nofile
        self.config, self.log = workdir / "fastmail.toml", workdir / "server.log"
        self.ports: dict[str, int] = {}
        while len(self.ports) < len(LISTENERS):  # free_port may hand a port out twice: keep them distinct
            port = free_port()
            if port not in self.ports.values():
                self.ports[LISTENERS[len(self.ports)]] = port
        listen = "\n".join(f'{name} = ["{HOST}:{port}"]' for name, port in self.ports.items())
        self.config.write_text(f"""\
[server]
hostname = "mx.flood.test"
data_dir = "{workdir / 'data'}"
workers = {workers}

[listen]
{listen}
submissions = []
imaps = []
pop3s = []

[delivery]
processes = 0
{extra}""")
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, input: bytes | None = None) -> str:
        res = subprocess.run([sys.executable, "-m", "fastmail", *args, "-c", str(self.config)], input=input,
                             capture_output=True, timeout=120, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"fastmail {' '.join(args)}: {res.stderr.decode().strip()}")
        return res.stdout.decode()

    def start(self) -> None:
        self.cli("domain", "add", "flood.test")
        self.cli("user", "add", USER, "--password-stdin", input=PASSWORD.encode() + b"\n")
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "fastmail", "serve", "-c", str(self.config)],
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                                         preexec_fn=self._limit if self.nofile else None)
        proc = self.proc
        deadline = time.monotonic() + 60
        while self.log.read_text(errors="replace").count("event=worker_ready kind=worker ") < self.workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fastmail did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        wait_for_greeting(HOST, self.ports["smtp"], lambda: proc.poll() is None)

    def _limit(self) -> None:
        """In the child before exec: soft and hard descriptor limit NOFILE (the master cannot raise it)."""
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def pids(self) -> list[int]:
        return process_tree([self.proc.pid]) if self.proc is not None else []

    def memory(self) -> dict[str, int]:
        """Pss and RSS summed over the process tree, KiB; the open descriptors of the processes."""
        pss = rss = fds = 0
        for pid in self.pids():
            pss += _pss_kib(pid)
            rss += _status_kib(pid, ("VmRSS",)).get("VmRSS", 0)
            try:
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                pass
        return {"pss_kib": pss, "rss_kib": rss, "fds": fds}

    def stored(self) -> int:
        return len(json.loads(self.cli("message", "list", USER, "INBOX", "--json")))

    def stop(self) -> int | None:
        code = stop_process(self.proc, timeout=60)
        self.proc = None
        return code

    def nofile_line(self) -> dict[str, str]:
        """The master's event=nofile line: the descriptor limit it raised (fastmail.master.rlimits)."""
        for line in self.log.read_text(errors="replace").splitlines():
            if "event=nofile" in line:
                return dict(tok.split("=", 1) for tok in line.split() if tok.split("=", 1)[0] in
                            ("soft", "hard", "was", "error"))
        return {}

    def log_events(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            for tok in line.split():
                if tok.startswith("event="):
                    ev = tok[6:]
                    if ev in ("timeout", "connect_refused", "refused", "worker_exit", "worker_respawn", "nofile"):
                        out[ev] = out.get(ev, 0) + 1
                    if "level=error" in line or "Traceback" in line:
                        out["errors"] = out.get("errors", 0) + 1
        return out


class Sampler(threading.Thread):
    """The server's memory every `interval` s; `mark()` starts a phase's peak."""

    def __init__(self, server: Fastmail, interval: float = 0.25) -> None:
        super().__init__(daemon=True, name="flood-sampler")
        self.server, self.interval = server, interval
        self.peak: dict[str, int] = {"pss_kib": 0, "rss_kib": 0, "fds": 0}
        self._done = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            m = self.server.memory()
            with self._lock:
                for k, v in m.items():
                    self.peak[k] = max(self.peak[k], v)

    def mark(self) -> dict[str, int]:
        """The peak since the last mark (and a fresh reading counted in it), and start a new one."""
        m = self.server.memory()
        with self._lock:
            out = {k: max(self.peak[k], m[k]) for k in m}
            self.peak = dict(m)
        return out

    def stop(self) -> None:
        self._done.set()
        self.join(5)


# -- the normal client ----------------------------------------------------------------------------------------


def normal_client(server: Fastmail, label: str, login: bool = True) -> dict[str, Any]:
    """Send one message (smtplib) and read it back (imaplib LOGIN, SELECT, SEARCH, FETCH); the seconds each
    took.  Without LOGIN, IMAP only answers CAPABILITY and NOOP: a login costs one argon2id check (64 MiB
    for a moment), which would hide the flood's own memory.  Any failure is reported in "error"."""
    subject = f"flood {label} {uuid.uuid4().hex}"
    body = f"Subject: {subject}\r\nFrom: <probe@remote.test>\r\n\r\nsent during {label}\r\n".encode()
    out: dict[str, Any] = {"ok": False}
    t0 = time.perf_counter()
    try:
        with smtplib.SMTP(HOST, server.ports["smtp"], timeout=60, local_hostname="probe.test") as s:
            s.sendmail("probe@remote.test", [USER], body)
        out["smtp_s"] = round(time.perf_counter() - t0, 3)
        t1 = time.perf_counter()
        with imaplib.IMAP4(HOST, server.ports["imap"], timeout=60) as m:
            if not login:
                if m.capability()[0] != "OK" or m.noop()[0] != "OK":
                    raise AssertionError("CAPABILITY or NOOP not OK")
                out["imap_s"] = round(time.perf_counter() - t1, 3)
                out["ok"] = True
                return out
            m.login(USER, PASSWORD)
            m.select("INBOX", readonly=True)
            typ, found = m.uid("SEARCH", "SUBJECT", f'"{subject}"')
            uids = found[0].split() if typ == "OK" and found and found[0] else []
            if len(uids) != 1:
                raise AssertionError(f"SEARCH found {uids!r} for the message just sent")
            typ, data = m.uid("FETCH", uids[0], "(BODY.PEEK[])")
            raw = data[0][1] if typ == "OK" and data and isinstance(data[0], tuple) else b""
            if not raw.endswith(body.split(b"\r\n\r\n", 1)[1]):
                raise AssertionError(f"FETCH gave {raw[-200:]!r}")
        out["imap_s"] = round(time.perf_counter() - t1, 3)
        out["ok"] = True
    except (OSError, smtplib.SMTPException, imaplib.IMAP4.error, AssertionError) as e:
        out["error"] = repr(e)[:300]
    return out


# -- phase 1: idle connections ----------------------------------------------------------------------------------


async def open_one(port: int, source: str, timeout: float) -> tuple[asyncio.StreamWriter | None, bytes]:
    """Connect from SOURCE and read the first line: (writer, line); (None, b"error: ...") on failure."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, local_addr=(source, 0), limit=1 << 16), timeout)
    except (OSError, TimeoutError) as e:
        return None, f"error: {type(e).__name__}".encode()
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError, ValueError) as e:
        line = f"error: {type(e).__name__}".encode()
    return writer, line


def classify(line: bytes) -> str:
    if line.startswith(b"220 "):
        return "greeted"
    if line.startswith(b"* OK"):
        return "greeted"
    if line.startswith(b"421 4.7.0") or line.startswith(b"* BYE [UNAVAILABLE] Too many connections from"):
        return "refused_per_ip"
    if line.startswith(b"421 4.3.2") or line.startswith(b"* BYE [UNAVAILABLE]"):
        return "refused_busy"
    if not line:
        return "closed"
    return line[:40].decode("latin-1")


async def open_many(plan: list[tuple[int, str]], parallel: int, timeout: float, limit: float
                    ) -> tuple[list[asyncio.StreamWriter], list[bytes]]:
    """Open every (port, source) of PLAN, PARALLEL at a time, within LIMIT seconds in all."""
    sem = asyncio.Semaphore(parallel)
    deadline = time.monotonic() + limit

    async def one(port: int, source: str) -> tuple[asyncio.StreamWriter | None, bytes]:
        async with sem:
            if time.monotonic() > deadline:
                return None, b"error: not tried (time limit)"
            return await open_one(port, source, timeout)

    results = await asyncio.gather(*(one(p, s) for p, s in plan))
    return [w for w, _ in results if w is not None], [line for _, line in results]


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.transport.abort()


async def wait_fds(server: Fastmail, at_most: int, limit: float) -> float:
    """Until the server's open descriptors fall to AT_MOST (sessions gone), within LIMIT s; the seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit and server.memory()["fds"] > at_most:
        await asyncio.sleep(0.25)
    return round(time.monotonic() - t0, 2)


async def phase_idle(server: Fastmail, sampler: Sampler, args: argparse.Namespace, base: dict[str, int],
                     probes: list[dict[str, Any]]) -> dict[str, Any]:
    half = args.connections // 2
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    plan = [(server.ports["smtp" if i % 2 == 0 else "imap"], sources[(i // 2) % len(sources)])
            for i in range(2 * half)]
    per_source = -(-half // len(sources))
    t0 = time.perf_counter()
    writers, lines = await open_many(plan, args.parallel, 30.0, args.limit)
    opened_s = time.perf_counter() - t0
    kinds: dict[str, int] = {}
    for line in lines:
        k = classify(line)
        kinds[k] = kinds.get(k, 0) + 1
    held = server.memory()
    # past the per-address caps, from one address
    cap = int(args.per_ip_cap)
    cap_plan = [(server.ports[p], CAP_SOURCE) for p in ("smtp", "imap") for _ in range(cap * args.workers + 100)]
    cap_writers, cap_lines = await open_many(cap_plan, args.parallel, 30.0, args.limit)
    caps: dict[str, dict[str, int]] = {"smtp": {}, "imap": {}}
    examples: dict[str, str] = {}
    for (port, _), line in zip(cap_plan, cap_lines, strict=True):
        proto = "smtp" if port == server.ports["smtp"] else "imap"
        k = classify(line)
        caps[proto][k] = caps[proto].get(k, 0) + 1
        if k == "refused_per_ip":
            examples.setdefault(proto, line.decode("latin-1").strip())
    await asyncio.sleep(1.0)  # the refused ones are closed by the server; the rest stay
    held_all = server.memory()
    peak = sampler.mark()  # the connections' own peak, before the normal client's login
    probe = await asyncio.to_thread(normal_client, server, "idle")
    probes.append(probe)
    await asyncio.sleep(args.hold)
    at_end = server.memory()
    peak_with_login = sampler.mark()
    close_all(writers + cap_writers)
    drained_s = await wait_fds(server, base["fds"] + 8, 120.0)
    await asyncio.sleep(1.0)
    after = server.memory()
    greeted = kinds.get("greeted", 0)
    held_count = greeted + sum(c.get("greeted", 0) for c in caps.values())
    return {
        "connections_tried": len(plan), "sources": len(sources), "per_source_per_protocol": per_source,
        "outcomes": kinds, "greeted": greeted, "open_seconds": round(opened_s, 2),
        "server_fds_held": held["fds"] - base["fds"], "cap_per_worker": cap, "cap_tried_per_protocol":
        cap * args.workers + 100, "cap_outcomes": caps, "cap_refusal_examples": examples,
        "normal_client": probe, "held_seconds": args.hold, "connections_held": held_count,
        "memory_held": held_all, "memory_peak": peak, "memory_at_end_of_hold": at_end,
        "memory_peak_with_login": peak_with_login, "memory_after": after, "drain_seconds": drained_s,
        "per_connection_kib": round((held_all["pss_kib"] - base["pss_kib"]) / max(1, held_count), 2),
    }


# -- phase 2: command flood ---------------------------------------------------------------------------------------


async def command_flood(port: int, greeting_lines: int, command: bytes, ok: bytes, count: int, limit: float
                        ) -> dict[str, Any]:
    """COUNT commands written as fast as the connection takes them while the replies are read; the replies
    starting with OK counted.  Bounded by COUNT and LIMIT seconds."""
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    for _ in range(greeting_lines):
        await asyncio.wait_for(reader.readline(), 30)
    deadline = time.monotonic() + limit
    t0 = time.perf_counter()

    async def write() -> None:
        batch = command * 4096
        sent = 0
        while sent < count and time.monotonic() < deadline:
            n = min(4096, count - sent)
            writer.write(batch if n == 4096 else command * n)
            await writer.drain()
            sent += n

    task = asyncio.create_task(write())
    answered = other = 0
    try:
        while answered + other < count and time.monotonic() < deadline:
            line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - time.monotonic()))
            if not line:
                break
            if line.startswith(ok):
                answered += 1
            else:
                other += 1
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    task.cancel()
    writer.transport.abort()
    return {"commands": count, "answered": answered, "other_replies": other, "seconds": round(elapsed, 2),
            "per_second": round(answered / elapsed) if elapsed else 0}


async def phase_commands(server: Fastmail, sampler: Sampler, args: argparse.Namespace,
                         probes: list[dict[str, Any]]) -> dict[str, Any]:
    before = server.memory()
    sampler.mark()
    out: dict[str, Any] = {}
    probe_task = asyncio.create_task(asyncio.to_thread(normal_client, server, "command flood", False))
    out["smtp"] = await command_flood(server.ports["smtp"], 1, b"NOOP\r\n", b"250 ", args.commands, args.limit)
    out["imap"] = await command_flood(server.ports["imap"], 1, b"a NOOP\r\n", b"a OK", args.commands, args.limit)
    out["normal_client"] = await probe_task
    probes.append(out["normal_client"])
    out["memory_before"], out["memory_peak"] = before, sampler.mark()
    return out


# -- phase 3: pipelining flood without reading ----------------------------------------------------------------------


def pipeline_flood(port: int, command: bytes, most: int, stall: float, limit: float) -> dict[str, Any]:
    """Write COMMAND again and again without reading until MOST bytes went out or a write waited STALL
    seconds (the server stopped reading: back-pressure); LIMIT seconds in all.  The socket stays open (the
    caller closes it) so that the server's memory is measured while it is stalled."""
    s = socket.create_connection((HOST, port), timeout=30)
    s.setblocking(False)
    block = command * max(1, 65536 // len(command))
    sent, t0 = 0, time.monotonic()
    stalled = False
    while sent < most and time.monotonic() - t0 < limit:
        _, writable, _ = select.select([], [s], [], stall)
        if not writable:
            stalled = True
            break
        try:
            sent += s.send(block)
        except BlockingIOError:
            continue
        except OSError as e:
            return {"sock": s, "sent": sent, "stalled": False, "error": repr(e), "seconds": time.monotonic() - t0}
    return {"sock": s, "sent": sent, "stalled": stalled, "seconds": round(time.monotonic() - t0, 2)}


async def phase_pipelining(server: Fastmail, sampler: Sampler, args: argparse.Namespace,
                           probes: list[dict[str, Any]]) -> dict[str, Any]:
    before = server.memory()
    sampler.mark()
    out: dict[str, Any] = {}
    socks = []
    for proto, command in (("smtp", b"EHLO flood.test\r\n"), ("imap", b"a CAPABILITY\r\n"), ("pop3", b"CAPA\r\n")):
        floods = await asyncio.gather(*(asyncio.to_thread(pipeline_flood, server.ports[proto], command,
                                                          args.pipeline_mib << 20, args.stall, args.limit)
                                        for _ in range(args.pipeline_clients)))
        socks += [f.pop("sock") for f in floods]
        out[proto] = {"clients": len(floods), "command": command.decode().strip(),
                      "sent_mib": [round(f["sent"] / 1048576, 2) for f in floods],
                      "stalled": sum(f["stalled"] for f in floods), "errors": [f["error"] for f in floods if "error" in f]}
    stalled_memory = server.memory()  # every flood client still connected, none reading
    out["normal_client"] = await asyncio.to_thread(normal_client, server, "pipelining flood", False)
    probes.append(out["normal_client"])
    out["memory_before"], out["memory_stalled"], out["memory_peak"] = before, stalled_memory, sampler.mark()
    out["growth_kib"] = out["memory_peak"]["pss_kib"] - before["pss_kib"]
    for s in socks:
        s.close()
    await wait_fds(server, before["fds"] + 8, 60.0)
    out["memory_after"] = server.memory()
    return out


# -- phase 4: a 100 MB line ---------------------------------------------------------------------------------------


def long_line(port: int, greeting: bytes, after: bytes, size: int, limit: float) -> dict[str, Any]:
    """SIZE bytes without a line end, then CRLF; the reply; then AFTER (a command) and its reply, when the
    session goes on.  LIMIT seconds in all (the socket timeout bounds every call)."""
    t0 = time.monotonic()
    out: dict[str, Any] = {}
    with socket.create_connection((HOST, port), timeout=limit) as s:
        first = s.recv(4096)
        assert first.startswith(greeting), first
        chunk = b"x" * (1 << 20)
        sent = 0
        try:
            while sent < size and time.monotonic() - t0 < limit:
                s.sendall(chunk[: size - sent])
                sent += min(len(chunk), size - sent)
            s.sendall(b"\r\n")
        except OSError as e:
            out["send_error"] = repr(e)
        out["sent_mib"] = round(sent / 1048576, 1)
        out["seconds"] = round(time.monotonic() - t0, 2)
        buf = b""
        try:
            while b"\n" not in buf and len(buf) < 65536:
                more = s.recv(4096)
                if not more:
                    break
                buf += more
            out["reply"] = buf.split(b"\r\n")[0].decode("latin-1")
            s.sendall(after)
            nxt = s.recv(4096)
            out["then"] = nxt.split(b"\r\n")[0].decode("latin-1") if nxt else "(closed)"
        except OSError as e:
            out["then"] = f"(closed: {type(e).__name__})"
    return out


async def phase_long_line(server: Fastmail, sampler: Sampler, args: argparse.Namespace,
                          probes: list[dict[str, Any]]) -> dict[str, Any]:
    before = server.memory()
    sampler.mark()
    out: dict[str, Any] = {}
    lines = [asyncio.to_thread(long_line, server.ports[proto], greeting, after, args.line_bytes, args.limit)
             for proto, greeting, after in (("smtp", b"220 ", b"NOOP\r\n"), ("imap", b"* OK", b"a NOOP\r\n"),
                                            ("pop3", b"+OK", b"CAPA\r\n"))]
    probe = asyncio.to_thread(normal_client, server, "long line", False)
    out["smtp"], out["imap"], out["pop3"], out["normal_client"] = await asyncio.gather(*lines, probe)
    probes.append(out["normal_client"])
    out["memory_before"], out["memory_peak"] = before, sampler.mark()
    out["growth_kib"] = out["memory_peak"]["pss_kib"] - before["pss_kib"]
    return out


# -- phase 5: past the descriptor limit -------------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def phase_fd_limit(server: Fastmail, args: argparse.Namespace, tried: int) -> dict[str, Any]:
    """One worker whose descriptor limit is server.nofile (soft = hard): TRIED connections, more than it
    may hold (the limit less 256); those past its cap must get the refusal, the worker must neither die nor
    spin (its CPU while it holds them idle), and serve again once some leave."""
    master = server.proc.pid if server.proc is not None else 0
    [worker] = [p for p in server.pids() if p != master]
    sources = [f"127.0.1.{1 + i}" for i in range(-(-tried // 150))]
    plan = [(server.ports["smtp" if i % 2 == 0 else "imap"], sources[i // 150]) for i in range(tried)]
    writers, lines = await open_many(plan, args.parallel, 30.0, args.limit)
    kinds: dict[str, int] = {}
    examples: dict[str, str] = {}
    for line in lines:
        k = classify(line)
        kinds[k] = kinds.get(k, 0) + 1
        if k == "refused_busy":
            examples.setdefault(line[:1].decode(), line.decode("latin-1").strip())
    await asyncio.sleep(1.0)
    t0, c0 = time.monotonic(), cpu_ticks(worker)
    await asyncio.sleep(5.0)  # held at the cap, idle: an accept loop spinning on EMFILE would burn CPU here
    cpu_share = (cpu_ticks(worker) - c0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)
    refused_now = classify((await open_one(server.ports["smtp"], "127.0.1.200", 30.0))[1])
    close_all(writers[:50])
    await asyncio.sleep(1.0)
    probe = await asyncio.to_thread(normal_client, server, "fd limit")
    close_all(writers)
    alive = [p for p in server.pids() if p != master]
    return {"nofile": server.nofile, "tried": tried, "outcomes": kinds, "refusal_examples": examples,
            "worker_cpu_share_at_cap": round(cpu_share, 3), "one_more_at_cap": refused_now,
            "normal_client_after_50_left": probe, "worker_same": alive == [worker],
            "log": server.log_events()}


# -- phase 6: slowloris ---------------------------------------------------------------------------------------------


async def slow_client(port: int, every: float, limit: float) -> dict[str, Any]:
    """One byte every EVERY seconds (never a whole line) until the server answers and closes, or LIMIT s."""
    reader, writer = await asyncio.open_connection(HOST, port)
    await asyncio.wait_for(reader.readline(), 30)
    t0 = time.monotonic()
    got = b""
    while time.monotonic() - t0 < limit:
        try:
            writer.write(b"N")
            await writer.drain()
        except (OSError, ConnectionError):
            break
        try:
            more = await asyncio.wait_for(reader.read(4096), every)
        except TimeoutError:
            continue
        except (OSError, ConnectionError):
            break
        if not more:
            break
        got += more
    closed = reader.at_eof() or writer.transport.is_closing()
    writer.transport.abort()
    return {"seconds": round(time.monotonic() - t0, 1), "reply": got.split(b"\r\n")[0].decode("latin-1"),
            "closed": bool(closed) or bool(got)}


def slow_reader(port: int, command: bytes, limit: float) -> dict[str, Any]:
    """Pipelines COMMAND until the server stops reading, never reads, and waits (LIMIT s) for the server
    to drop it (a reset or a close)."""
    s = socket.create_connection((HOST, port), timeout=limit)
    s.setblocking(False)
    t0 = time.monotonic()
    block = command * 4096
    dropped = False
    while time.monotonic() - t0 < limit:
        _, w, x = select.select([], [s], [s], 0.5)
        if w:
            try:
                s.send(block)
            except BlockingIOError:
                pass
            except OSError:
                dropped = True
                break
        else:  # stalled: is the socket still open at the server's side?  poke it with one byte
            try:
                s.send(b"N")
            except BlockingIOError:
                pass
            except OSError:
                dropped = True
                break
    s.close()
    return {"dropped": dropped, "seconds": round(time.monotonic() - t0, 1)}


async def phase_slowloris(server: Fastmail, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {"timeout_s": timeout}
    for proto in ("smtp", "imap", "pop3"):
        rs = await asyncio.gather(*(slow_client(server.ports[proto], 1.0, timeout * 6)
                                    for _ in range(args.slow_clients)))
        out[proto] = {"clients": len(rs), "timed_out": sum(r["closed"] for r in rs),
                      "replies": sorted({r["reply"] for r in rs}),
                      "seconds_max": max(r["seconds"] for r in rs), "seconds_min": min(r["seconds"] for r in rs)}
    readers = await asyncio.gather(*(asyncio.to_thread(slow_reader, server.ports[p], c, timeout * 12)
                                     for p, c in (("smtp", b"NOOP\r\n"), ("imap", b"a NOOP\r\n"), ("pop3", b"CAPA\r\n"))))
    out["non_readers"] = {p: r for p, r in zip(("smtp", "imap", "pop3"), readers, strict=True)}
    return out


# -- the run --------------------------------------------------------------------------------------------------------


def raise_fd_limit(need: int) -> dict[str, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return {"nofile_soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "nofile_hard": hard, "needed": need}


def kib(n: int) -> str:
    return f"{n / 1024:,.1f} MiB"


def report(res: dict[str, Any]) -> str:
    idle, cmd, pipe, line, slow = (res.get(k, {}) for k in ("idle", "commands", "pipelining", "long_line", "slowloris"))
    rows = []
    if idle:
        rows.append(["idle connections", f"{idle['greeted']:,} of {idle['connections_tried']:,} greeted and held "
                     f"({idle['server_fds_held']:,} server fds) from {idle['sources']} addresses; past the cap: "
                     f"smtp {idle['cap_outcomes']['smtp']}, imap {idle['cap_outcomes']['imap']}",
                     f"{kib(idle['memory_peak']['pss_kib'])} ({idle['per_connection_kib']} KiB per connection held)",
                     "ok" if idle["normal_client"]["ok"] else idle["normal_client"].get("error", "")])
    if cmd:
        rows.append(["command flood", f"smtp {cmd['smtp']['answered']:,}/{cmd['smtp']['commands']:,} NOOP at "
                     f"{cmd['smtp']['per_second']:,}/s; imap {cmd['imap']['answered']:,}/{cmd['imap']['commands']:,} "
                     f"at {cmd['imap']['per_second']:,}/s", kib(cmd["memory_peak"]["pss_kib"]),
                     "ok" if cmd["normal_client"]["ok"] else cmd["normal_client"].get("error", "")])
    if pipe:
        rows.append(["pipelining flood", "; ".join(f"{p} {pipe[p]['command']}: {pipe[p]['stalled']}/{pipe[p]['clients']} "
                                                   f"stalled after {max(pipe[p]['sent_mib'])} MiB"
                                                   for p in ("smtp", "imap", "pop3")),
                     f"{kib(pipe['memory_peak']['pss_kib'])} (+{kib(pipe['growth_kib'])})",
                     "ok" if pipe["normal_client"]["ok"] else pipe["normal_client"].get("error", "")])
    if line:
        rows.append(["100 MiB line", "; ".join(f"{p}: {line[p].get('reply')!r} then {line[p].get('then')!r}"
                                               for p in ("smtp", "imap", "pop3")),
                     f"{kib(line['memory_peak']['pss_kib'])} (+{kib(line['growth_kib'])})",
                     "ok" if line["normal_client"]["ok"] else line["normal_client"].get("error", "")])
    fdl = res.get("fd_limit", {})
    if fdl:
        rows.append(["past the fd limit", f"1 worker, RLIMIT_NOFILE {fdl['nofile']}: {fdl['tried']:,} connections: "
                     f"{fdl['outcomes']}; one more at the cap: {fdl['one_more_at_cap']}; worker CPU while held "
                     f"{fdl['worker_cpu_share_at_cap']:.1%}, same worker: {fdl['worker_same']}", "",
                     "ok" if fdl["normal_client_after_50_left"]["ok"] else
                     fdl["normal_client_after_50_left"].get("error", "")])
    if slow:
        rows.append(["slowloris", "; ".join(f"{p}: {slow[p]['timed_out']}/{slow[p]['clients']} timed out in "
                                            f"{slow[p]['seconds_min']}-{slow[p]['seconds_max']} s {slow[p]['replies']}"
                                            for p in ("smtp", "imap", "pop3"))
                     + "; non-readers dropped: " + ", ".join(f"{p} {r['dropped']} ({r['seconds']} s)"
                                                             for p, r in slow["non_readers"].items()),
                     "", ""])
    table = markdown(["flood", "result", "server memory (Pss, peak)", "normal client"], rows)
    tail = (f"\nbaseline {kib(res['baseline']['pss_kib'])} Pss, after the floods {kib(res['final']['pss_kib'])}; "
            f"normal client served in every phase: {all(p['ok'] for p in res['probes'])}; messages it sent "
            f"{res['messages_sent']}, stored {res['messages_stored']}, lost {res['messages_lost']}; "
            f"server log: {res['server_log_events']}; server's descriptor limit {res.get('server_nofile')}")
    return table + tail


async def run(args: argparse.Namespace, base_dir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    (base_dir / "main").mkdir()
    server = Fastmail(base_dir / "main", args.workers)
    server.start()
    sampler = Sampler(server)
    probes: list[dict[str, Any]] = []
    res["probes"] = probes
    phases: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = []
    try:
        probes.append(await asyncio.to_thread(normal_client, server, "warm-up"))
        await asyncio.sleep(2.0)
        res["baseline"] = base = server.memory()
        sampler.start()
        phases = [
            ("idle", lambda: phase_idle(server, sampler, args, base, probes)),
            ("commands", lambda: phase_commands(server, sampler, args, probes)),
            ("pipelining", lambda: phase_pipelining(server, sampler, args, probes)),
            ("long_line", lambda: phase_long_line(server, sampler, args, probes)),
        ]
        for name, phase in phases:
            if name in args.skip:
                continue
            t0 = time.perf_counter()
            res[name] = await phase()
            res[name]["phase_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"  {name}: done in {res[name]['phase_seconds']} s", flush=True)
        probes.append(await asyncio.to_thread(normal_client, server, "after the floods"))
        res["final"] = server.memory()
        res["messages_sent"] = sum(1 for p in probes if "smtp_s" in p)
        res["messages_stored"] = server.stored()
        res["messages_lost"] = res["messages_sent"] - res["messages_stored"]
        res["server_log_events"] = server.log_events()
        res["server_nofile"] = server.nofile_line()
    finally:
        sampler.stop()
        res["exit_code"] = server.stop()
    if "fd_limit" not in args.skip:
        (base_dir / "fds").mkdir()
        fds = Fastmail(base_dir / "fds", 1, nofile=args.fd_limit)
        fds.start()
        try:
            res["fd_limit"] = await phase_fd_limit(fds, args, args.fd_limit + 200)
            res["fd_limit"]["server_nofile"] = fds.nofile_line()
        finally:
            res["fd_limit_exit_code"] = fds.stop()
        print("  fd_limit: done", flush=True)
    if "slowloris" not in args.skip:
        t = 5.0
        (base_dir / "slow").mkdir()
        slow = Fastmail(base_dir / "slow", args.workers, extra=(
            f"\n[smtp]\ncommand_timeout = {t}\n[imap]\ncommand_timeout = {t}\nidle_timeout = {t}\n"
            f"[pop3]\nidle_timeout = {t}\n"))
        slow.start()
        try:
            res["slowloris"] = await phase_slowloris(slow, args, t)
            res["slowloris"]["server_log_events"] = slow.log_events()
        finally:
            res["slowloris_exit_code"] = slow.stop()
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10_000, help="idle connections, half SMTP half IMAP")
    p.add_argument("--sources", type=int, default=50, help="loopback source addresses for them (127.0.0.2...)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--per-ip-cap", type=int, default=200, help="the server's smtp/imap.max_connections_per_ip")
    p.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    p.add_argument("--hold", type=float, default=10.0, help="seconds the idle connections are held after the probe")
    p.add_argument("--commands", type=int, default=200_000, help="commands of each command flood")
    p.add_argument("--pipeline-mib", type=int, default=64, help="most MiB one pipelining client writes")
    p.add_argument("--pipeline-clients", type=int, default=4, help="pipelining clients per protocol")
    p.add_argument("--stall", type=float, default=3.0, help="seconds a write may wait before the server is "
                   "taken to have stopped reading")
    p.add_argument("--line-bytes", type=int, default=LINE, help="bytes of the long line")
    p.add_argument("--fd-limit", type=int, default=1024, help="descriptor limit of the fd_limit phase's server")
    p.add_argument("--slow-clients", type=int, default=20, help="slowloris clients per protocol")
    p.add_argument("--limit", type=float, default=300.0, help="seconds any one flood may take at most")
    p.add_argument("--skip", default="", help="phases to leave out: idle,commands,pipelining,long_line,fd_limit,slowloris")
    p.add_argument("--quick", action="store_true", help="1,000 connections, 20,000 commands, 10 slow clients")
    p.add_argument("--output", type=Path, default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.connections, a.sources, a.commands, a.slow_clients, a.hold = 1000, 10, 20_000, 10, 2.0
    a.skip = {s for s in a.skip.split(",") if s}
    if -(-a.connections // 2 // a.sources) > a.per_ip_cap:
        p.error("more connections per source address than the per-address cap: raise --sources")
    return a


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    limits = raise_fd_limit(args.connections + 2 * (args.per_ip_cap * args.workers + 100) + 200)
    started = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(tempfile.mkdtemp(prefix="fastmail-flood-"))
    meta = {"started_utc": started, "machine": machine_info(base), "git": git_info(), "python": sys.version.split()[0],
            "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                     for k, v in vars(args).items()}, "driver_limits": limits}
    print(f"bench.flood: {args.connections:,} idle connections from {args.sources} addresses, {args.workers} workers, "
          f"commit {meta['git']['commit'][:10]}{' (dirty)' if meta['git']['dirty'] else ''}", flush=True)
    try:
        res = asyncio.run(run(args, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out = {"meta": meta, **res}
    print(report(res))
    path = args.output or RESULTS / f"flood-{started}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
