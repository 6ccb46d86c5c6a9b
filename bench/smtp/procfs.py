"""/proc accounting for a server's process tree: CPU (exact, and broken down by process/thread name), memory,
machine-wide CPU, TCP counters."""

from __future__ import annotations

import os
import threading
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: str) -> tuple[str, list[str]] | None:
    """(comm, fields from field 3 (state) on) of a /proc/.../stat file: the name may hold spaces and parens."""
    try:
        with open(path) as f:
            raw = f.read()
    except OSError:
        return None
    close = raw.rindex(")")
    return raw[raw.index("(") + 1:close], raw[close + 2:].split()


_HAS_CHILDREN_FILE = os.path.exists(f"/proc/self/task/{os.getpid()}/children")  # CONFIG_PROC_CHILDREN


def _children(pid: int) -> list[int]:
    """A process's children, from /proc/PID/task/TID/children (each thread lists what it forked)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def process_tree(roots: list[int]) -> list[int]:
    """The roots and all their live descendants: walked down from the roots through the `children` files
    (cost proportional to the tree), or else found by ppid in one scan of /proc."""
    out, todo = [], [p for p in roots if os.path.exists(f"/proc/{p}")]
    if _HAS_CHILDREN_FILE:
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(_children(pid))
        return out
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat_fields(f"/proc/{entry.name}/stat")
            if st is not None:
                children.setdefault(int(st[1][1]), []).append(int(entry.name))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def all_process_ticks() -> dict[int, tuple[str, int]]:
    """{pid: (name, utime+stime+cutime+cstime)} of every process on the machine (take differences)."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat_fields(f"/proc/{entry.name}/stat")
            if st is not None:
                out[int(entry.name)] = (st[0], sum(int(v) for v in st[1][11:15]))
    return out


def elsewhere_by_name(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]],
                      exclude: set[int]) -> dict[str, float]:
    """CPU seconds between two all_process_ticks() readings of the processes not in `exclude` (the
    server's tree, this driver, the kernel's threads), summed by name, largest first.  A process that
    started and ended in between counts through its parent's cutime (init's for orphans)."""
    by: dict[str, float] = {}
    for pid, (name, ticks) in after.items():
        if pid in exclude:
            continue
        prev = before.get(pid)
        delta = ticks - prev[1] if prev is not None and prev[0] == name else ticks
        if delta > 0:
            by[name] = by.get(name, 0.0) + delta / CLK_TCK
    return {k: round(v, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])}


def kernel_thread_pids() -> set[int]:
    out = {2}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat_fields(f"/proc/{entry.name}/stat")
            if st is not None and st[1][1] == "2":
                out.add(int(entry.name))
    return out


def tree_cpu_seconds(roots: list[int]) -> float:
    """utime+stime of every live process of the tree, plus cutime+cstime (children it has reaped).

    Each process is counted once: alive, by its own times; exited and reaped by a member of the tree, in
    that member's cutime/cstime.  Take the difference of two readings."""
    ticks = 0
    for pid in process_tree(roots):
        st = _stat_fields(f"/proc/{pid}/stat")
        if st is not None:  # utime, stime, cutime, cstime are fields 14-17
            ticks += sum(int(v) for v in st[1][11:15])
    return ticks / CLK_TCK


def thread_times(pid: int) -> dict[str, int]:
    """{"<process name>" (main thread) or "<process name>/<thread name>": utime+stime ticks} of one process's
    threads; threads that carry the process's own name are summed as "<process name>/threads"."""
    out: dict[str, int] = {}
    pst = _stat_fields(f"/proc/{pid}/stat")
    if pst is None:
        return out
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        st = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
        if st is not None:
            if tid == str(pid):
                key = pst[0]  # the main thread
            else:  # Python does not name its OS threads: they all carry the process's name
                key = f"{pst[0]}/{'threads' if st[0] == pst[0] else st[0]}"
            out[key] = out.get(key, 0) + int(st[1][11]) + int(st[1][12])
    return out


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


PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class TreeSampler(threading.Thread):
    """Samples the server tree while it runs, cheaply enough not to take the server's CPUs (the sampler
    is this process's CPU, which the report subtracts from "elsewhere").

    Every `interval` s (0.1 s, longer for a big tree: 2 ms per process, at most 1 s), from each process's
    /proc/PID/stat: the summed RSS (shared pages counted in every process) and the CPU ticks; per thread
    only for processes that have several.  Every 5th sample also the summed Pss (shared pages split) and
    each process's VmHWM (exact per process between samples too, once reset_peaks() has run).
    CPU by name: each process's (or thread's) utime+stime at its first and last sample, summed by name
    ("smtpd", "python (root)", "python/threads") -- approximate: a process that lives less than one
    interval, or its last interval, is missed; the exact total is tree_cpu_seconds()."""

    def __init__(self, roots: list[int], interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="tree-sampler")
        self.roots, self.base_interval = roots, interval
        self.interval = interval
        self._done = threading.Event()
        self.samples = 0
        self.peak_rss_sum_kib = self.peak_pss_sum_kib = self.peak_hwm_kib = self.processes = 0
        self.hwm_reset = False
        self._first: dict[tuple[int, str], int] = {}
        self._last: dict[tuple[int, str], int] = {}
        self.seen_pids: set[int] = set()

    def reset_peaks(self) -> None:
        """Reset each process's VmHWM to its current RSS (writing 5 to /proc/PID/clear_refs, Linux >= 4.0),
        so the high-water mark covers the run, not the start-up (a master peaks while it boots)."""
        self.hwm_reset = True
        for pid in process_tree(self.roots):
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.hwm_reset = False

    def _label(self, pid: int, comm: str) -> str:
        return f"{comm} (root)" if pid in self.roots else comm

    def sample(self, full: bool = False) -> None:
        full = full or self.samples % 5 == 0
        rss_sum = pss_sum = 0
        pids = process_tree(self.roots)
        for pid in pids:
            st = _stat_fields(f"/proc/{pid}/stat")
            if st is None:
                continue
            comm, fields = st
            rss_sum += int(fields[21]) * PAGE_KIB  # field 24: rss in pages
            if int(fields[17]) > 1:  # field 20: num_threads
                ticks = thread_times(pid)
                times = {self._label(pid, comm) if k == comm else f"{self._label(pid, comm)}/{k.split('/', 1)[-1]}": v
                         for k, v in ticks.items()}
            else:
                times = {self._label(pid, comm): int(fields[11]) + int(fields[12])}
            for name, t in times.items():
                key = (pid, name)
                # a process first seen after the start was forked during the run: it began at 0 ticks
                self._first.setdefault(key, t if self.samples == 0 else 0)
                self._last[key] = t
            if full:
                self.peak_hwm_kib = max(self.peak_hwm_kib, _status_kib(pid, ("VmHWM",)).get("VmHWM", 0))
                pss_sum += _pss_kib(pid)
        self.seen_pids.update(pids)
        self.samples += 1
        self.processes = max(self.processes, len(pids))
        self.interval = min(1.0, max(self.base_interval, 0.002 * len(pids)))
        self.peak_rss_sum_kib = max(self.peak_rss_sum_kib, rss_sum)
        if full:
            self.peak_pss_sum_kib = max(self.peak_pss_sum_kib, pss_sum)

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def finish(self) -> dict[str, Any]:
        self._done.set()
        self.join()
        self.sample(full=True)  # VmHWM at the end covers peaks between samples, per process
        by_name: dict[str, float] = {}
        counts: dict[str, set[int]] = {}
        for (pid, name), ticks in self._last.items():
            by_name[name] = by_name.get(name, 0.0) + (ticks - self._first[(pid, name)]) / CLK_TCK
            counts.setdefault(name.split("/")[0], set()).add(pid)
        return {
            "peak_rss_sum_mib": round(self.peak_rss_sum_kib / 1024, 1),
            "peak_pss_sum_mib": round(self.peak_pss_sum_kib / 1024, 1),
            "peak_hwm_max_mib": round(self.peak_hwm_kib / 1024, 1),
            "hwm_reset_at_start": self.hwm_reset,
            "processes": self.processes,
            "processes_seen": len(self.seen_pids),
            "processes_by_name": {k: len(v) for k, v in sorted(counts.items())},
            "cpu_s_by_name": {k: round(v, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v > 0},
            "samples": self.samples,
            "last_interval_s": self.interval,
            "seen": self.seen_pids,  # popped by the caller (not JSON)
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
            "iowait": iowait / CLK_TCK, "steal": steal / CLK_TCK, "softirq": softirq / CLK_TCK}


def own_cpu_seconds() -> float:
    """This process's CPU, its threads (the sampler) included."""
    t = os.times()
    return t.user + t.system


def reaped_children_cpu_seconds() -> float:
    """CPU of this process's reaped children (the fastmail CLI runs of count_stored(), for instance)."""
    t = os.times()
    return t.children_user + t.children_system


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])

