"""Whole-server load benchmark: Postfix's `smtp-source` against a real server process tree.

    python -m bench.load_smtp [--scenario a,b,c,d] [--rounds 3] [--quick] [--target fastmail]

Each round starts the target on a fresh data dir and free loopback ports, runs one `smtp-source` against
it, and measures: smtp-source wall time (msgs/s), server CPU (utime+stime of every process of the server's
tree, exited children included through their parent's cutime/cstime), peak memory (VmRSS/VmHWM/Pss sampled
during the run), and the number of messages really in the recipient's mailbox afterwards.  A round where
stored != sent, or where smtp-source did not get a 2xx for everything, fails the run (exit status 1).

Targets (`Target`) share one interface -- start on a fresh dir, pids, count_stored, stop -- so peers
(a Postfix instance, aiosmtpd, smtp-sink) can be added next to `FastmailTarget`; rounds are interleaved
across targets (A B C A B C) so drift on the machine hits every target alike.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SENDER = "sender@remote.test"
DOMAIN = "example.org"
RECIPIENT = f"bench@{DOMAIN}"
CLIENT_NAME = "client.remote.test"  # smtp-source -M: the HELO name
MiB = 1024 * 1024


# -- scenarios -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    messages: int  # smtp-source -m: messages in all
    size: int  # smtp-source -l: payload bytes per message (smtp-source adds a few header lines)
    sessions: int  # smtp-source -s: sessions in parallel
    reuse: bool  # smtp-source -d: a session sends message after message over one connection

    def quick(self) -> Scenario:
        messages = max(1, self.messages // 10)
        return replace(self, messages=messages, sessions=min(self.sessions, messages))

    def describe(self) -> str:
        conn = "connections reused (-d)" if self.reuse else "one message per connection"
        return (f"{self.messages:,} x {self.size // 1024} KiB, {self.sessions} concurrent session(s), {conn}")


SCENARIOS = {
    "a": Scenario("a", "many small messages, 50 concurrent sessions", 20_000, 4 * 1024, 50, True),
    "b": Scenario("b", "large messages, 20 concurrent sessions", 2_000, 256 * 1024, 20, True),
    "c": Scenario("c", "many small messages over one session", 20_000, 4 * 1024, 1, True),
    "d": Scenario("d", "connection churn: one message per session, 500 concurrent", 5_000, 4 * 1024, 500, False),
}


def smtp_source_argv(sc: Scenario, host: str, port: int) -> list[str]:
    # No -c (a counter on stdout per message); no -N (it would prefix the recipient with a number);
    # no -A (any non-2xx reply must abort: smtp-source exits 1 with "fatal: ..." on stderr).
    argv = ["smtp-source", "-s", str(sc.sessions), "-m", str(sc.messages), "-l", str(sc.size),
            "-f", SENDER, "-t", RECIPIENT, "-M", CLIENT_NAME]
    if sc.reuse:
        argv.append("-d")
    return [*argv, f"{host}:{port}"]


# -- /proc accounting ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on: the command name may hold spaces and parens."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def process_tree(roots: list[int]) -> list[int]:
    """The roots and all their live descendants (by ppid), found in one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [p for p in roots if os.path.exists(f"/proc/{p}")]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(roots: list[int]) -> float:
    """utime+stime of every live process of the tree, plus cutime+cstime (children it has reaped).

    Each process is counted once: alive, by its own times; exited and reaped by a member of the tree, in
    that member's cutime/cstime.  Take the difference of two readings."""
    ticks = 0
    for pid in process_tree(roots):
        fields = _stat_fields(pid)
        if fields is not None:  # utime, stime, cutime, cstime are fields 14-17
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    out[name] = int(rest.split()[0])
    except OSError:
        pass
    return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Samples the server tree's memory every `interval` s: peak of the summed VmRSS (shared pages counted
    in every process), peak of the summed Pss (shared pages split), and the largest single VmHWM (exact per
    process, between samples too, once reset_peaks() has run)."""

    def __init__(self, roots: list[int], interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.roots, self.interval = roots, interval
        self._done = threading.Event()
        self.samples = 0
        self.peak_rss_sum_kib = self.peak_pss_sum_kib = self.peak_hwm_kib = self.processes = 0
        self.hwm_reset = False

    def reset_peaks(self) -> None:
        """Reset each process's VmHWM to its current RSS (writing 5 to /proc/PID/clear_refs, Linux >= 4.0),
        so the high-water mark covers the run, not the start-up (the master peaks while it boots)."""
        self.hwm_reset = True
        for pid in process_tree(self.roots):
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.hwm_reset = False

    def sample(self) -> None:
        rss_sum = pss_sum = 0
        pids = process_tree(self.roots)
        for pid in pids:
            st = _status_kib(pid, ("VmRSS", "VmHWM"))
            rss_sum += st.get("VmRSS", 0)
            self.peak_hwm_kib = max(self.peak_hwm_kib, st.get("VmHWM", 0))
            pss_sum += _pss_kib(pid)
        self.samples += 1
        self.processes = max(self.processes, len(pids))
        self.peak_rss_sum_kib = max(self.peak_rss_sum_kib, rss_sum)
        self.peak_pss_sum_kib = max(self.peak_pss_sum_kib, pss_sum)

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def finish(self) -> dict[str, Any]:
        self._done.set()
        self.join()
        self.sample()  # VmHWM at the end covers peaks between samples, per process
        return {
            "peak_rss_sum_mib": round(self.peak_rss_sum_kib / 1024, 1),
            "peak_pss_sum_mib": round(self.peak_pss_sum_kib / 1024, 1),
            "peak_hwm_max_mib": round(self.peak_hwm_kib / 1024, 1),
            "hwm_reset_at_start": self.hwm_reset,
            "processes": self.processes,
            "samples": self.samples,
            "interval_s": self.interval,
        }


TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPReqQFullDrop", "TCPReqQFullDoCookies",
                "TCPTimeouts", "TCPAbortOnClose", "TCPAbortOnData")

# Printed with each round: a connection that had to retry its SYN waited >= 1 s (the initial RTO).  The
# others stay in the JSON; smtp-source closes every connection with SO_LINGER 0 (a reset), which the kernel
# counts as TCPAbortOnData/TCPAbortOnClose once per session.
TCP_REFUSALS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPReqQFullDrop")


def tcp_counters() -> dict[str, int]:
    """System-wide TcpExt counters (/proc/net/netstat) that tell of refused or retried connections."""
    out: dict[str, int] = {}
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            for k, v in zip(names.split()[1:], values.split()[1:], strict=False):
                if k in TCP_COUNTERS:
                    out[k] = int(v)
    return out


def system_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds by kind, from the first line of /proc/stat (take differences)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return {"busy": (user + nice + system + irq + softirq) / CLK_TCK, "idle": idle / CLK_TCK,
            "iowait": iowait / CLK_TCK, "steal": steal / CLK_TCK}


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# -- targets ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_greeting(host: str, port: int, alive: Any, timeout: float = 60.0) -> None:
    """Until a connection to host:port is greeted with 220; `alive()` false means the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited before it answered")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no 220 greeting on {host}:{port} within {timeout:.0f} s")


class Target(ABC):
    """One server under test.  A round is: start(workdir) on an empty dir, smtp-source against
    (host, port), count_stored(), stop(), count_stored() again."""

    name: str
    # True when the server replies 250 only once the message is in the recipient's mailbox: then the
    # end-to-end time is the smtp-source time.  Otherwise (a queueing MTA) the driver polls count_stored().
    stored_on_accept: bool = True
    host = "127.0.0.1"
    port = 0

    @abstractmethod
    def start(self, workdir: Path) -> None:
        """Fresh state under workdir, RECIPIENT able to receive; return once the SMTP port answers 220."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Root processes of the server; their whole process tree is accounted (CPU, memory)."""

    @abstractmethod
    def count_stored(self) -> dict[str, int]:
        """{"stored": messages in RECIPIENT's mailbox, ...any cross-checks}; works running or stopped."""

    @abstractmethod
    def stop(self) -> dict[str, Any]:
        """Stop gracefully; return what is worth keeping (exit status, findings in the server's log)."""

    def versions(self) -> dict[str, str]:
        return {}

    def settings(self) -> dict[str, Any]:
        return {}


class FastmailTarget(Target):
    """`python -m fastmail serve -c FILE` with default settings except data dir, loopback ports, workers."""

    name = "fastmail"
    stored_on_accept = True  # "No 250 until durable": the message is in INBOX when 250 is sent

    def __init__(self, workers: int, python: str = sys.executable) -> None:
        self.workers = workers
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = Path()

    def _cli(self, *args: str, input: bytes | None = None) -> str:
        res = subprocess.run([self.python, "-m", "fastmail", *args, "-c", str(self.config)], input=input,
                             capture_output=True, timeout=120, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"fastmail {' '.join(args)}: {res.stderr.decode().strip()}")
        return res.stdout.decode()

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = workdir / "fastmail.toml"
        self.log = workdir / "server.log"
        self.port = free_port()
        others = [free_port() for _ in range(3)]
        # max_message_size keeps its default (50 MiB), far above the largest scenario (256 KiB).
        self.config.write_text(f"""\
[server]
hostname = "mx.bench.test"
data_dir = "{workdir / 'data'}"
workers = {self.workers}

[listen]
smtp = ["127.0.0.1:{self.port}"]
submission = ["127.0.0.1:{others[0]}"]
submissions = ["127.0.0.1:{others[1]}"]
lmtp = ["127.0.0.1:{others[2]}"]
""")
        self._cli("domain", "add", DOMAIN)
        self._cli("user", "add", RECIPIENT, "--password-stdin", input=b"bench-secret\n")
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([self.python, "-m", "fastmail", "serve", "-c", str(self.config)],
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        proc = self.proc
        try:
            wait_for_greeting(self.host, self.port, lambda: proc.poll() is None)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"fastmail did not start: {e}\n{self.log.read_text()[-2000:]}") from e

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def count_stored(self) -> dict[str, int]:
        boxes = json.loads(self._cli("mailbox", "list", RECIPIENT, "--json"))
        exists = next(b["exists"] for b in boxes if b["name"] == "INBOX")
        msgs = json.loads(self._cli("message", "list", RECIPIENT, "INBOX", "--json"))
        return {"stored": len(msgs), "inbox_exists": exists, "min_size": min((m["size"] for m in msgs), default=0)}

    def stop(self) -> dict[str, Any]:
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
                    code = None
            else:
                code = self.proc.returncode
            self.proc = None
        return {"exit_code": code, "log": scan_fastmail_log(self.log)}

    def versions(self) -> dict[str, str]:
        code = ("import fastmail, uvloop, lmdb, fastmail._core as c, fastmail._core.smtp as s, json;"
                "print(json.dumps({'fastmail': fastmail.__version__, 'uvloop': uvloop.__version__,"
                "'lmdb': lmdb.__version__, 'liblmdb': '.'.join(map(str, lmdb.version())),"
                "'fastmail_core': 'pure' if c.PURE else ('compiled' if c.is_compiled(s) else 'pure?')}))")
        res = subprocess.run([self.python, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
        return json.loads(res.stdout) if res.returncode == 0 else {"error": res.stderr.strip()[-300:]}

    def settings(self) -> dict[str, Any]:
        return {"workers": self.workers, "python": self.python, "config": "defaults except data_dir, "
                "loopback ports, workers (max_message_size default 50 MiB)"}


def scan_fastmail_log(path: Path) -> dict[str, Any]:
    """Levels, accepted messages, group-commit figures, abnormal worker exits; warnings/errors kept."""
    levels: dict[str, int] = {}
    out: dict[str, Any] = {"accepted": 0, "commit_batches": 0, "commit_messages": 0, "largest_batch": 0,
                           "worker_bad_exits": 0, "respawns": 0, "problems": [], "unstructured": []}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        level = fields.get("level", "other")
        levels[level] = levels.get(level, 0) + 1
        ev = fields.get("event")
        if ev == "accepted":
            out["accepted"] += 1
        elif ev == "worker_stop":
            out["commit_batches"] += int(fields.get("commit_batches", 0))
            out["commit_messages"] += int(fields.get("commit_messages", 0))
            out["largest_batch"] = max(out["largest_batch"], int(fields.get("largest_batch", 0)))
        elif ev == "worker_exit" and fields.get("code") != "0":
            out["worker_bad_exits"] += 1
        elif ev == "worker_respawn":
            out["respawns"] += 1
        if level == "other" and len(out["unstructured"]) < 5:
            out["unstructured"].append(line[:400])
        elif level not in ("info", "debug", "other") and len(out["problems"]) < 20:
            out["problems"].append(line[:400])
    out["levels"] = levels
    return out


TARGETS: dict[str, Any] = {"fastmail": FastmailTarget}


# -- one round -------------------------------------------------------------------------------------------


def run_smtp_source(argv: list[str], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run smtp-source; wall time from just before the spawn to its exit; its rusage via wait4."""
    out = workdir / "smtp-source.out"
    timed_out = threading.Event()
    with open(out, "wb") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def kill() -> None:
            timed_out.set()
            proc.kill()

        killer = threading.Timer(timeout, kill)
        killer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"argv": argv, "exit_code": proc.returncode, "timed_out": timed_out.is_set(), "wall_s": wall,
            "client_cpu_s": ru.ru_utime + ru.ru_stime, "output": out.read_text(errors="replace")[-2000:]}


def run_round(target: Target, sc: Scenario, rnd: int, workdir: Path, timeout: float) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    os.sync()  # the previous round's dirty pages are not this round's I/O
    problems: list[str] = []
    target.start(workdir)
    try:
        roots = target.pids()
        sampler = MemorySampler(roots)
        sampler.reset_peaks()
        sampler.sample()
        load = loadavg()
        tcp0 = tcp_counters()
        sys0, own0 = system_cpu(), own_cpu_seconds()
        cpu0 = tree_cpu_seconds(roots)
        sampler.start()
        src = run_smtp_source(smtp_source_argv(sc, target.host, target.port), workdir, timeout)
        cpu1 = tree_cpu_seconds(roots)
        sys1, own1 = system_cpu(), own_cpu_seconds()
        tcp1 = tcp_counters()
        mem = sampler.finish()
        sent = sc.messages if src["exit_code"] == 0 else None
        e2e = src["wall_s"]
        live = target.count_stored()
        if not target.stored_on_accept and sent is not None:
            deadline = time.monotonic() + timeout
            t0 = time.perf_counter() - src["wall_s"]
            while live["stored"] < sent and time.monotonic() < deadline:
                time.sleep(0.05)
                live = target.count_stored()
            e2e = time.perf_counter() - t0
    finally:
        stopped = target.stop()
    after = target.count_stored()

    if src["timed_out"]:
        problems.append(f"smtp-source timed out after {timeout:g} s")
    if src["exit_code"] != 0:
        problems.append(f"smtp-source exit {src['exit_code']}: {src['output'].strip()[-300:]}")
    expected = sent if sent is not None else sc.messages
    for when, counts in (("at end of run", live), ("after stop", after)):
        if counts["stored"] != expected:
            problems.append(f"stored {counts['stored']} != sent {expected} {when}")
        if "inbox_exists" in counts and counts["inbox_exists"] != counts["stored"]:
            problems.append(f"INBOX exists {counts['inbox_exists']} != message records {counts['stored']} {when}")
    if after.get("min_size", sc.size) < sc.size:
        problems.append(f"a stored message is shorter ({after['min_size']} B) than the payload ({sc.size} B)")
    log = stopped.get("log", {})
    if "accepted" in log and log["accepted"] != after["stored"]:
        problems.append(f"server logged {log['accepted']} accepted but {after['stored']} are stored")
    if stopped.get("exit_code") != 0:
        problems.append(f"server exit status {stopped.get('exit_code')} on TERM")

    cpu = cpu1 - cpu0
    n = sent if sent is not None else max(after["stored"], 1)  # a failed round: rate of what got through
    machine = {k: round(sys1[k] - sys0[k], 2) for k in sys0}
    # Whatever else ran on the machine meanwhile (other users, the kernel's own threads): if this is large
    # the round shared its CPUs and its figures are suspect.
    machine["others"] = round(machine["busy"] - cpu - src["client_cpu_s"] - (own1 - own0), 2)
    machine["others_share"] = round(max(0.0, machine["others"]) / ((os.cpu_count() or 1) * src["wall_s"]), 3)
    return {
        "scenario": sc.key, "target": target.name, "round": rnd,
        "messages": sc.messages, "size": sc.size, "sessions": sc.sessions, "reuse": sc.reuse,
        "sent": sent, "stored": after["stored"], "stored_live": live["stored"], "counts_live": live,
        "counts_after_stop": after,
        "wall_s": round(src["wall_s"], 4), "msgs_per_s": round(n / src["wall_s"], 1),
        "end_to_end_s": round(e2e, 4), "end_to_end_msgs_per_s": round(n / e2e, 1),
        "end_to_end_is_smtp_source_time": target.stored_on_accept,
        "server_cpu_s": round(cpu, 2), "server_cpu_s_per_1k": round(cpu / n * 1000, 3),
        "client_cpu_s": round(src["client_cpu_s"], 2),
        "memory": mem, "smtp_source": src, "server": stopped, "loadavg_1min_before": load,
        "machine_cpu_s": machine,
        "tcp_counters_delta": {k: tcp1[k] - tcp0.get(k, 0) for k in tcp1 if tcp1[k] != tcp0.get(k, 0)},
        "ok": not problems, "problems": problems,
    }


# -- report ----------------------------------------------------------------------------------------------


def _run(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def machine_info(data_root: Path) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    mem_kib = 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    fs, best = "?", ""
    with open("/proc/mounts") as f:  # the file system the data dirs are on (fsync speed matters here)
        for line in f:
            dev, mnt, kind = line.split()[:3]
            if str(data_root.resolve()).startswith(mnt) and len(mnt) > len(best):
                best, fs = mnt, f"{kind} on {dev} (mounted at {mnt})"
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": f"{platform.system()} {platform.release()}", "arch": platform.machine(),
            "hostname": platform.node(), "data_dir_root": str(data_root), "data_fs": fs}


def git_info() -> dict[str, Any]:
    commit = _run(["git", "rev-parse", "HEAD"]) or "unknown"
    dirty = bool(_run(["git", "status", "--porcelain"]))
    return {"commit": commit, "dirty": dirty}


def postfix_version() -> str:
    return _run(["postconf", "-d", "-h", "mail_version"]) or "unknown"


def summarize(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rounds:
        groups.setdefault((r["scenario"], r["target"]), []).append(r)
    rows = []
    for (sc, tgt), rs in groups.items():
        rates = [r["msgs_per_s"] for r in rs]
        rows.append({
            "scenario": sc, "target": tgt, "rounds": len(rs),
            "msgs_per_s_median": statistics.median(rates), "msgs_per_s_min": min(rates),
            "msgs_per_s_max": max(rates),
            "end_to_end_msgs_per_s_median": statistics.median(r["end_to_end_msgs_per_s"] for r in rs),
            "server_cpu_s_per_1k_median": statistics.median(r["server_cpu_s_per_1k"] for r in rs),
            "peak_rss_sum_mib": max(r["memory"]["peak_rss_sum_mib"] for r in rs),
            "peak_pss_sum_mib": max(r["memory"]["peak_pss_sum_mib"] for r in rs),
            "peak_hwm_max_mib": max(r["memory"]["peak_hwm_max_mib"] for r in rs),
            "others_share_median": statistics.median(r["machine_cpu_s"]["others_share"] for r in rs),
            "stored": sum(r["stored"] for r in rs), "sent": sum(r["sent"] or 0 for r in rs),
            "ok": all(r["ok"] for r in rs),
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["scenario", "target", "msgs/s (median)", "min–max", "e2e msgs/s", "CPU s / 1k msgs",
            "peak RSS MiB sum (max proc)", "stored/sent", "CPU used elsewhere"]
    body = [[
        r["scenario"], r["target"], f"{r['msgs_per_s_median']:,.0f}",
        f"{r['msgs_per_s_min']:,.0f}–{r['msgs_per_s_max']:,.0f}", f"{r['end_to_end_msgs_per_s_median']:,.0f}",
        f"{r['server_cpu_s_per_1k_median']:.2f}", f"{r['peak_rss_sum_mib']:.0f} ({r['peak_hwm_max_mib']:.0f})",
        f"{r['stored']}/{r['sent']}" + ("" if r["ok"] else " FAIL"), f"{r['others_share_median']:.0%}",
    ] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    rest = ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) + " |" for b in body]
    return "\n".join([line, sep, *rest])


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load_smtp", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="scenarios:\n" + "\n".join(
                                    f"  {k}: {s.title}: {s.describe()}" for k, s in SCENARIOS.items()))
    p.add_argument("--scenario", default="a", help="comma list of a,b,c,d or 'all' (default: a)")
    p.add_argument("--target", default="fastmail", help=f"comma list of {', '.join(TARGETS)} (default: fastmail)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per scenario and target (default: 3)")
    p.add_argument("--quick", action="store_true", help="10x fewer messages: a smoke run")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server workers (default: CPU count)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per smtp-source run (default: 600)")
    p.add_argument("--tmpdir", type=Path, default=None, help="where round data dirs go (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep each round's data dir and logs")
    p.add_argument("--output", type=Path, default=None, help="JSON file (default: bench/results/smtp-STAMP.json)")
    args = p.parse_args(argv)
    keys = list(SCENARIOS) if args.scenario == "all" else [k.strip() for k in args.scenario.split(",") if k.strip()]
    bad = [k for k in keys if k not in SCENARIOS]
    if bad or not keys:
        p.error(f"unknown scenario {','.join(bad)}; choose from {','.join(SCENARIOS)}")
    args.scenarios = [SCENARIOS[k].quick() if args.quick else SCENARIOS[k] for k in keys]
    args.targets = [t.strip() for t in args.target.split(",") if t.strip()]
    if not args.targets or any(t not in TARGETS for t in args.targets):
        p.error(f"unknown target in {args.target}; choose from {','.join(TARGETS)}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("smtp-source") is None:
        print("bench: smtp-source not found (Debian: apt-get install postfix; `make system-deps`)", file=sys.stderr)
        return 2
    targets: list[Target] = [TARGETS[t](workers=args.workers) for t in args.targets]
    base = Path(tempfile.mkdtemp(prefix="fastmail-load-", dir=args.tmpdir))
    started = time.strftime("%Y%m%d-%H%M%S")
    meta = {
        "benchmark": "bench.load_smtp: smtp-source -> " + ", ".join(t.name for t in targets),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "rounds": args.rounds,
        "timeout_s": args.timeout, "machine": machine_info(base), "git": git_info(),
        "versions": {"python": platform.python_version(), "postfix (smtp-source)": postfix_version(),
                     **{f"{t.name}": t.versions() for t in targets}},
        "targets": {t.name: t.settings() for t in targets},
        "scenarios": {sc.key: {**asdict(sc), "smtp_source": " ".join(smtp_source_argv(sc, "127.0.0.1", 0)).replace(":0", ":PORT")}
                      for sc in args.scenarios},
    }
    m, g = meta["machine"], meta["git"]
    print(f"# {meta['benchmark']}")
    print(f"# machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['memory_gib']} GiB, {m['kernel']}; "
          f"data on {m['data_fs']}")
    print(f"# versions: {json.dumps(meta['versions'])}")
    print(f"# commit {g['commit']}{' (dirty tree)' if g['dirty'] else ''}")
    for sc in args.scenarios:
        print(f"# scenario {sc.key}: {sc.describe()}: {meta['scenarios'][sc.key]['smtp_source']}")
    sys.stdout.flush()

    rounds: list[dict[str, Any]] = []
    try:
        for sc in args.scenarios:
            for rnd in range(1, args.rounds + 1):
                for target in targets:  # interleaved: A B C A B C
                    workdir = base / f"{sc.key}-{target.name}-{rnd}"
                    r = run_round(target, sc, rnd, workdir, args.timeout)
                    rounds.append(r)
                    lg = r["server"].get("log", {})
                    print(f"{sc.key} {target.name} round {rnd}: {r['msgs_per_s']:,.0f} msgs/s "
                          f"({r['wall_s']:.2f} s), server CPU {r['server_cpu_s']:.2f} s, client CPU "
                          f"{r['client_cpu_s']:.2f} s, RSS sum {r['memory']['peak_rss_sum_mib']:.0f} MiB, "
                          f"stored {r['stored']}/{r['sent']}, other CPU on the machine "
                          f"{r['machine_cpu_s']['others']:.2f} s"
                          + (f", commit batches {lg['commit_batches']} (largest {lg['largest_batch']})"
                             if "commit_batches" in lg else "")
                          + (f", tcp {refused}" if (refused := {k: v for k, v in r["tcp_counters_delta"].items()
                                                                if k in TCP_REFUSALS}) else "")
                          + ("" if r["ok"] else "  FAIL: " + "; ".join(r["problems"])), flush=True)
                    if not args.keep:
                        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        rows = summarize(rounds)
        result = {**meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": rows, "rounds": rounds}
        out = args.output or RESULTS / f"smtp-{started}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        if rows:
            print()
            print(format_table(rows))
        print(f"\nraw figures: {out}" + (f"; data dirs kept in {base}" if args.keep else ""))

    failed = [r for r in rounds if not r["ok"]]
    for r in failed:
        print(f"FAILED {r['scenario']} {r['target']} round {r['round']}: {'; '.join(r['problems'])}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
