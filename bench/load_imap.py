"""IMAP load benchmark: the same generated mailbox and the same client load against fastmail and Dovecot
(issue #4).

    python -m bench.load_imap [--target fastmail,dovecot] [--rounds 3] [--quick] [--messages N] [--idle N]

Each target runs for the whole benchmark on its own directory and loopback port, seeded with the same
mailbox (bench/imap/mailgen.py, one seed), verified once (every size, date and body byte, every planted
search word) and warmed (each FETCH kind once, so Dovecot's cache holds what clients ask for).  Then, per
round, every op runs against every target in turn (interleaved A B A B, so drift hits both alike), each
in a measured window: wall time, the server's CPU (utime+stime over its process tree, reaped children
included), this driver's CPU (the client), peak memory of the tree, and the CPU other processes took.  A
wrong answer (message count, search hits, appended count) fails the round.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.imap import mailgen
from bench.imap.client import Client, ImapError, parse_imap_date
from bench.imap.target import APPEND_MAILBOX, PASSWORD, USER, ImapTarget
from bench.imap.target_dovecot import DovecotTarget
from bench.imap.target_fastmail import FastmailImapTarget
from bench.load_smtp import settle
from bench.smtp.procfs import (
    PAGE_KIB,
    TreeSampler,
    _stat_fields,
    all_process_ticks,
    elsewhere_by_name,
    kernel_thread_pids,
    own_cpu_seconds,
    process_tree,
    system_cpu,
    tree_cpu_seconds,
)
from bench.smtp.report import git_info, machine_info, markdown

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS: dict[str, type[ImapTarget]] = {"fastmail": FastmailImapTarget, "dovecot": DovecotTarget}
APPEND_SIZE = 4096


# -- measuring -------------------------------------------------------------------------------------------


def tree_memory(roots: list[int]) -> dict[str, float]:
    """Summed RSS (shared pages in every process) and PSS (shared pages split) of the tree, in KiB."""
    rss = pss = 0
    pids = process_tree(roots)
    for pid in pids:
        st = _stat_fields(f"/proc/{pid}/stat")
        if st is not None:
            rss += int(st[1][21]) * PAGE_KIB
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
        except OSError:
            pass
    return {"rss_kib": rss, "pss_kib": pss, "processes": len(pids)}


class Meter:
    """One measured window over a target's process tree: `with meter:` around the timed part of an op."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.figures: dict[str, Any] = {}

    def __enter__(self) -> Meter:
        self.figures["settle_s"] = round(settle(self.roots), 2)
        self.sampler = TreeSampler(self.roots)
        self.sampler.reset_peaks()
        self.sampler.sample()
        self.kthreads, self.procs0 = kernel_thread_pids(), all_process_ticks()
        self.sys0, self.own0, self.cpu0 = system_cpu(), own_cpu_seconds(), tree_cpu_seconds(self.roots)
        self.sampler.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        cpu = tree_cpu_seconds(self.roots)
        sys1, own1, procs1 = system_cpu(), own_cpu_seconds(), all_process_ticks()
        mem = self.sampler.finish()
        elsewhere = elsewhere_by_name(self.procs0, procs1, mem.pop("seen") | self.kthreads | {os.getpid()})
        others = sum(elsewhere.values())
        ncpu = os.cpu_count() or 1
        self.figures.update({
            "wall_s": round(wall, 4), "server_cpu_s": round(cpu - self.cpu0, 3),
            "client_cpu_s": round(own1 - self.own0, 3),
            "machine_busy_s": round(sys1["busy"] - self.sys0["busy"], 2),
            "steal_s": round(sys1["steal"] - self.sys0["steal"], 2),
            "others_s": round(others, 2), "others_share": round(others / (ncpu * max(wall, 1e-6)), 3),
            # under 50 ms (5 ticks) of others' CPU is tick noise, not a disturbance, however short the window
            "disturbed_share": 0.0 if others + max(0.0, sys1["steal"] - self.sys0["steal"]) < 0.05 else
            round((others + max(0.0, sys1["steal"] - self.sys0["steal"])) / (ncpu * max(wall, 1e-6)), 3),
            "others_by_name": dict(list(elsewhere.items())[:5]), "memory": mem,
        })


# -- the mailbox and what the answers must be ----------------------------------------------------------


@dataclass
class Mailbox:
    seed: int
    messages: list[mailgen.Message]
    sizes: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    total: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    planted: dict[str, set[int]] = field(default_factory=dict)  # word -> 1-based sequence numbers

    def __post_init__(self) -> None:
        self.sizes = [m.size for m in self.messages]
        self.digests = [hashlib.sha256(m.data).hexdigest() for m in self.messages]
        self.total = sum(self.sizes)
        self.hits = mailgen.expected_hits(len(self.messages))
        self.planted = {w: {m.index + 1 for m in self.messages if w in m.planted}
                        for w in (mailgen.SUBJECT_WORD, mailgen.TEXT_WORD, mailgen.RARE_WORD)}

    def describe(self) -> dict[str, Any]:
        kinds = collections.Counter(m.kind for m in self.messages)
        s = sorted(self.sizes)
        return {"messages": len(s), "seed": self.seed, "bytes": self.total, "mib": round(self.total / 2**20, 1),
                "size_median": s[len(s) // 2] if s else 0, "size_p90": s[int(len(s) * 0.9)] if s else 0,
                "size_max": s[-1] if s else 0, "kinds": dict(kinds), "expected_hits": self.hits}


def append_message(n: int, who: str) -> bytes:
    """A 4 KiB (exactly APPEND_SIZE bytes) plain message, unique per (n, who)."""
    head = (f"From: Load Client <load@remote.test>\r\nTo: <{USER}>\r\nSubject: append {who} {n}\r\n"
            f"Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <append.{who}.{n}@bench.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = bytearray()
    while len(head) + len(body) + len(line) <= APPEND_SIZE - 2:
        body += line
    body += b"y" * (APPEND_SIZE - 2 - len(head) - len(body)) + b"\r\n"
    return head + bytes(body)


# -- per-target state, the warm-up ---------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    box: Mailbox
    uids: dict[str, list[int]] = field(default_factory=dict)  # target -> UID of message i
    comparable: dict[str, bool] = field(default_factory=dict)  # target -> sizes/bytes equal to the generator's


async def session(t: ImapTarget, select: bool = True) -> Client:
    c = await Client.connect(t.host, t.port)
    await c.login(USER, PASSWORD)
    if select:
        await c.select("INBOX")
    return c


async def warm_up(ctx: Ctx, t: ImapTarget) -> dict[str, Any]:
    """Untimed except for the record: first SELECT (Dovecot indexes the Maildir), then the checks that
    need the whole answer (sizes, dates, every body's bytes, every planted word), each FETCH kind once."""
    box, problems = ctx.box, []
    out: dict[str, Any] = {}
    n = len(box.messages)
    c = await session(t, select=False)
    t0 = time.perf_counter()
    exists = await c.select("INBOX")
    out["first_select_s"] = round(time.perf_counter() - t0, 3)
    if exists != n:
        problems.append(f"INBOX has {exists} messages, not {n}")
    r = await c.command("UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)")
    out["first_fetch_flags_s"] = round(r.seconds, 3)
    uids = [int(x) for x in r.fetch_items(b"UID")]
    sizes = [int(x) for x in r.fetch_items(b"RFC822.SIZE")]
    dates = [parse_imap_date(x) for x in r.fetch_items(b"INTERNALDATE")]
    ctx.uids[t.name] = uids
    if uids != sorted(set(uids)) or len(uids) != n:
        problems.append(f"UIDs not {n} ascending")
    comparable = t.seed_method != "smtp"
    ctx.comparable[t.name] = comparable
    if comparable:
        bad = [i for i, (a, b) in enumerate(zip(sizes, box.sizes, strict=False)) if a != b]
        if bad or len(sizes) != n:
            problems.append(f"{len(bad)} RFC822.SIZE differ from the generator's (first at index {bad[:1]})")
        bad = [i for i, (a, m) in enumerate(zip(dates, box.messages, strict=False)) if a != m.internaldate]
        if bad:
            problems.append(f"{len(bad)} INTERNALDATE differ from the generator's (first at index {bad[:1]})")
    for cmd in ("FETCH 1:* (ENVELOPE)", "FETCH 1:* BODYSTRUCTURE"):
        r = await c.command(cmd)
        out[f"first {cmd}"] = round(r.seconds, 3)
        if r.count(b"FETCH") != n:
            problems.append(f"{cmd}: {r.count(b'FETCH')} responses, not {n}")
    r = await c.command("FETCH 1:* BODY.PEEK[]", digests=True)
    out["first_fetch_bodies_s"] = round(r.seconds, 3)
    if comparable:
        bad = [i for i, (a, b) in enumerate(zip(r.digests, box.digests, strict=False)) if a != b]
        if bad or len(r.digests) != n:
            problems.append(f"{len(bad)} bodies differ from the generated bytes, {len(r.digests)} returned "
                            f"(first at index {bad[:1]})")
    hits: dict[str, int] = {}
    for key in ("SUBJECT", "TEXT"):
        for word, seqs in box.planted.items():
            r = await c.command(f"SEARCH {key} {word}")
            got = set(r.search_hits())
            want = seqs if key == "TEXT" or word == mailgen.SUBJECT_WORD else set()
            hits[f"{key} {word}"] = len(got)
            out[f"first SEARCH {key} {word} s"] = round(r.seconds, 3)
            if got != want:
                problems.append(f"SEARCH {key} {word}: {len(got)} hits, expected {len(want)} "
                                f"(missing {sorted(want - got)[:5]}, extra {sorted(got - want)[:5]})")
    r = await c.command(f'CREATE "{APPEND_MAILBOX}"', check=False)
    if r.status != "OK" and "ALREADYEXISTS" not in r.text.upper():
        problems.append(f"CREATE {APPEND_MAILBOX}: {r.status} {r.text}")
    await c.logout()
    out["answers"] = {"exists": exists, "search_hits": hits}
    out["problems"] = problems
    return out


# -- the ops -------------------------------------------------------------------------------------------

# Each op: (name, what its figure is, unit, higher is better, the unit of work for CPU figures).
Op = Callable[[Ctx, ImapTarget, Meter], Awaitable[dict[str, Any]]]


async def op_login_select(ctx: Ctx, t: ImapTarget, meter: Meter) -> dict[str, Any]:
    """`--logins` sessions one after the other: connect, greeting, LOGIN, SELECT INBOX (timed), LOGOUT."""
    lat, login_only, problems = [], [], []
    n = len(ctx.box.messages)
    with meter:
        for _ in range(ctx.args.logins):
            t0 = time.perf_counter()
            c = await Client.connect(t.host, t.port)
            t1 = time.perf_counter()
            await c.login(USER, PASSWORD)
            exists = await c.select("INBOX")
            t2 = time.perf_counter()
            lat.append(t2 - t0)
            login_only.append(t2 - t1)
            if exists != n:
                problems.append(f"SELECT: {exists} messages, not {n}")
            await c.logout()
    return {"value": statistics.median(lat) * 1000, "work": len(lat), "problems": problems[:3],
            "p90_ms": round(sorted(lat)[int(len(lat) * 0.9)] * 1000, 2),
            "login_select_only_ms_median": round(statistics.median(login_only) * 1000, 2)}


def _fetch_op(cmd: str, check_bytes: bool = False) -> Op:
    """`cmd` --repeat times on one selected session; the figure is from the median time."""
    async def op(ctx: Ctx, t: ImapTarget, meter: Meter) -> dict[str, Any]:
        n = len(ctx.box.messages)
        c = await session(t)
        rs = []
        with meter:
            for _ in range(ctx.args.repeat):
                rs.append(await c.command(cmd))
        await c.logout()
        problems = []
        for r in rs:
            if r.count(b"FETCH") != n:
                problems.append(f"{r.count(b'FETCH')} FETCH responses, not {n}")
            if check_bytes and ctx.comparable.get(t.name) and r.literal_bytes != ctx.box.total:
                problems.append(f"{r.literal_bytes} body bytes, not {ctx.box.total}")
        times = [r.seconds for r in rs]
        med = statistics.median(times)
        r = rs[0]
        return {"work": n * len(rs), "seconds_median": round(med, 4), "times_s": [round(x, 4) for x in times],
                "response_bytes_excl_literals": sum(len(u) for u in r.untagged), "literal_bytes": r.literal_bytes,
                "value": r.literal_bytes / med / 1e6 if check_bytes else n / med, "problems": problems[:2]}
    return op


def _search_op(cmd: str, word: str) -> Op:
    async def op(ctx: Ctx, t: ImapTarget, meter: Meter) -> dict[str, Any]:
        want = ctx.box.planted[word]
        uids = ctx.uids.get(t.name, [])
        if cmd.startswith("UID"):
            want = {uids[s - 1] for s in want if s - 1 < len(uids)}
        c = await session(t)
        times, problems = [], []
        with meter:
            for _ in range(ctx.args.repeat):
                r = await c.command(f"{cmd} {word}")
                times.append(r.seconds)
                got = set(r.search_hits())
                if got != want:
                    problems.append(f"{len(got)} hits, expected {len(want)}")
        await c.logout()
        return {"value": statistics.median(times) * 1000, "work": len(times), "hits": len(got),
                "times_ms": [round(x * 1000, 2) for x in times], "problems": problems[:1]}
    return op


async def op_store_seen(ctx: Ctx, t: ImapTarget, meter: Meter) -> dict[str, Any]:
    """STORE 1:* +FLAGS (\\Seen) (timed), then STORE 1:* -FLAGS.SILENT (\\Seen) to undo it (not timed, but
    in the CPU window: the CPU figure covers both), --repeat times."""
    n = len(ctx.box.messages)
    c = await session(t)
    times, problems = [], []
    with meter:
        for _ in range(ctx.args.repeat):
            r = await c.command("STORE 1:* +FLAGS (\\Seen)")
            times.append(r.seconds)
            if r.count(b"FETCH") != n:
                problems.append(f"{r.count(b'FETCH')} FETCH responses, not {n}")
            await c.command("STORE 1:* -FLAGS.SILENT (\\Seen)")
    await c.logout()
    med = statistics.median(times)
    return {"value": n / med, "work": n * len(times), "seconds_median": round(med, 4),
            "times_s": [round(x, 4) for x in times], "problems": problems[:2]}


def _append_op(clients: int) -> Op:
    async def op(ctx: Ctx, t: ImapTarget, meter: Meter) -> dict[str, Any]:
        total = ctx.args.appends_20 if clients > 1 else ctx.args.appends_1
        per = [total // clients + (1 if k < total % clients else 0) for k in range(clients)]
        sessions = [await session(t, select=False) for _ in range(clients)]
        probe = sessions[0]
        before = await _status_messages(probe)
        stamp = f"{t.name}{time.monotonic_ns()}"
        msgs = [[append_message(i, f"{stamp}.{k}") for i in range(per[k])] for k in range(clients)]

        async def one(k: int) -> None:
            for m in msgs[k]:
                await sessions[k].append(APPEND_MAILBOX, m)

        with meter:
            t0 = time.perf_counter()
            await asyncio.gather(*(one(k) for k in range(clients)))
            wall = time.perf_counter() - t0
        after = await _status_messages(probe)
        emptied = await _empty_append_mailbox(probe)
        for s in sessions:
            await s.logout()
        problems = [] if after - before == total else [f"{APPEND_MAILBOX} grew by {after - before}, not {total}"]
        return {"value": total / wall, "work": total, "seconds": round(wall, 4), "literal_plus":
                "LITERAL+" in probe.capabilities, "mailbox_before": before, "emptied_after": emptied,
                "problems": problems}
    return op


async def _empty_append_mailbox(c: Client) -> str:
    """Every append op starts on an empty mailbox (Dovecot's Maildir appends slow down as it grows: 446 ->
    192 msgs/s over three runs of 2,000 in one test): DELETE + CREATE, else \\Deleted + EXPUNGE."""
    r = await c.command(f'DELETE "{APPEND_MAILBOX}"', check=False)
    if r.status == "OK":
        r = await c.command(f'CREATE "{APPEND_MAILBOX}"', check=False)
        if r.status == "OK":
            return "deleted and created"
    try:
        await c.select(APPEND_MAILBOX)
        await c.command("STORE 1:* +FLAGS.SILENT (\\Deleted)")
        await c.command("EXPUNGE")
        await c.command("CLOSE", check=False)
        return "expunged"
    except ImapError as e:
        return f"not emptied: {e}"


async def _status_messages(c: Client) -> int:
    r = await c.command(f'STATUS "{APPEND_MAILBOX}" (MESSAGES)')
    for u in r.untagged:
        if u.startswith(b"* STATUS"):
            return int(u.rsplit(b"MESSAGES ", 1)[1].split(b")")[0])
    raise ImapError("STATUS: no answer")


async def op_idle(ctx: Ctx, t: ImapTarget, meter: Meter) -> dict[str, Any]:
    """--idle sessions: connect, LOGIN, SELECT INBOX, IDLE (50 connecting at a time); the tree's memory
    once they all idle (and the server is quiet) against its memory before, per session; DONE, LOGOUT.
    The server is restarted first (same data): in a long-running process the earlier ops leave freed
    memory in its heap that new sessions would reuse unseen (a per-session figure of 0–3 KiB), so both
    servers are measured fresh, and their baseline is a fresh server's."""
    n = ctx.args.idle
    t.restart()
    roots = meter.roots = t.pids()
    settle(roots)
    base = tree_memory(roots)
    sem = asyncio.Semaphore(50)
    clients: list[Client] = []
    failures: list[str] = []

    async def one() -> None:
        async with sem:
            try:
                c = await session(t)
                await c.idle()
                clients.append(c)
            except (ImapError, OSError, TimeoutError) as e:
                failures.append(str(e)[:200])

    with meter:
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        setup = time.perf_counter() - t0
    settle(roots)
    loaded = tree_memory(roots)

    async def leave(c: Client) -> None:
        async with sem:
            try:
                await c.done()
                await c.logout()
            except (ImapError, OSError, TimeoutError):
                c.close()

    await asyncio.gather(*(leave(c) for c in clients))
    per_pss = (loaded["pss_kib"] - base["pss_kib"]) / max(len(clients), 1)
    per_rss = (loaded["rss_kib"] - base["rss_kib"]) / max(len(clients), 1)
    problems = [f"{len(failures)} of {n} sessions did not reach IDLE: {failures[:2]}"] if failures else []
    return {"value": per_pss, "work": len(clients), "problems": problems, "sessions": len(clients),
            "setup_s": round(setup, 2), "per_session_rss_kib": round(per_rss, 1),
            "base": base, "loaded": loaded, "total_pss_mib": round(loaded["pss_kib"] / 1024, 1),
            "total_rss_mib": round(loaded["rss_kib"] / 1024, 1)}


@dataclass(frozen=True)
class OpSpec:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    per: str  # the unit of work in the CPU figure
    fn: Op
    least_advantage: float = 1.0  # issue #4: fastmail's advantage (x) at least this


S, T = mailgen.SUBJECT_WORD, mailgen.TEXT_WORD
OPS = [
    OpSpec("login", "connect + LOGIN + SELECT INBOX", "ms", False, "login", op_login_select),
    OpSpec("fetch-flags", "UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)", "msgs/s", True, "1k msgs",
           _fetch_op("UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)"), 2.0),
    OpSpec("fetch-envelope", "FETCH 1:* (ENVELOPE)", "msgs/s", True, "1k msgs", _fetch_op("FETCH 1:* (ENVELOPE)"), 2.0),
    OpSpec("fetch-bodystructure", "FETCH 1:* BODYSTRUCTURE", "msgs/s", True, "1k msgs",
           _fetch_op("FETCH 1:* BODYSTRUCTURE")),
    OpSpec("fetch-bodies", "FETCH 1:* BODY.PEEK[]", "MB/s", True, "1k msgs",
           _fetch_op("FETCH 1:* BODY.PEEK[]", check_bytes=True)),
    OpSpec("search-subject", f"UID SEARCH SUBJECT {S}", "ms", False, "search", _search_op("UID SEARCH SUBJECT", S)),
    OpSpec("search-text", f"SEARCH TEXT {T}", "ms", False, "search", _search_op("SEARCH TEXT", T)),
    OpSpec("store-seen", "STORE 1:* +FLAGS (\\Seen)", "msgs/s", True, "1k msgs", op_store_seen),
    OpSpec("append-1", "APPEND 4 KiB, 1 client", "msgs/s", True, "1k msgs", _append_op(1)),
    OpSpec("append-20", "APPEND 4 KiB, 20 clients", "msgs/s", True, "1k msgs", _append_op(20), 2.0),
    OpSpec("idle", "IDLE sessions: PSS per session", "KiB", False, "session", op_idle, 2.0),
]
OPS_BY_KEY = {o.key: o for o in OPS}


async def run_op(ctx: Ctx, spec: OpSpec, t: ImapTarget, rnd: int) -> dict[str, Any]:
    meter = Meter(t.pids())
    try:
        res = await asyncio.wait_for(spec.fn(ctx, t, meter), ctx.args.timeout)
    except (ImapError, OSError, TimeoutError) as e:
        res = {"value": None, "work": 0, "problems": [f"{type(e).__name__}: {e}"[:400]]}
    f = meter.figures
    work = max(res.get("work") or 0, 1)
    # CPU per unit of work: s per 1,000 messages, or ms per login/search/session (both CPU s / work x 1000)
    row = {"op": spec.key, "target": t.name, "round": rnd, **{k: v for k, v in res.items() if k != "problems"},
           "unit": spec.unit, "problems": res.get("problems", []),
           "ok": not res.get("problems") and res.get("value") is not None,
           "server_cpu_per": round(f.get("server_cpu_s", 0) / work * 1000, 3),
           "client_cpu_per": round(f.get("client_cpu_s", 0) / work * 1000, 3),
           "cpu_unit": ("s per " if spec.per == "1k msgs" else "ms per ") + spec.per, "meter": f}
    return row


def round_line(r: dict[str, Any]) -> str:
    m = r["meter"]
    v = "FAILED" if r["value"] is None else f"{r['value']:,.2f} {r['unit']}"
    mem = m.get("memory", {})
    return (f"{r['op']} {r['target']} round {r['round']}: {v}, server CPU {m.get('server_cpu_s', 0):.2f} s "
            f"({r['server_cpu_per']} {r['cpu_unit']}), client CPU {m.get('client_cpu_s', 0):.2f} s, "
            f"peak RSS sum {mem.get('peak_rss_sum_mib', 0):.0f} MiB, elsewhere {m.get('others_share', 0):.0%}"
            + (f", steal {m['steal_s']:.2f} s" if m.get("steal_s", 0) >= 0.1 else "")
            + (f", total PSS {r['total_pss_mib']} MiB (RSS {r['total_rss_mib']}) for {r['sessions']} sessions"
               if "total_pss_mib" in r else "")
            + ("" if r["ok"] else "  FAIL: " + "; ".join(r["problems"])))


# -- summary -------------------------------------------------------------------------------------------


def summarize(rounds: list[dict[str, Any]], targets: list[str]) -> list[dict[str, Any]]:
    rows = []
    for spec in OPS:
        for tname in targets:
            rs = [r for r in rounds if r["op"] == spec.key and r["target"] == tname]
            vals = [r["value"] for r in rs if r["value"] is not None]
            if not rs:
                continue
            row: dict[str, Any] = {
                "op": spec.key, "title": spec.title, "target": tname, "unit": spec.unit, "rounds": len(rs),
                "median": statistics.median(vals) if vals else None, "min": min(vals, default=None),
                "max": max(vals, default=None), "cpu_unit": rs[0]["cpu_unit"],
                "disturbed_max": max(r["meter"].get("disturbed_share", 0) for r in rs),
                "server_cpu_per_median": statistics.median(r["server_cpu_per"] for r in rs),
                "client_cpu_per_median": statistics.median(r["client_cpu_per"] for r in rs),
                "peak_rss_sum_mib": max(r["meter"].get("memory", {}).get("peak_rss_sum_mib", 0) for r in rs),
                "peak_pss_sum_mib": max(r["meter"].get("memory", {}).get("peak_pss_sum_mib", 0) for r in rs),
                "others_share_max": max(r["meter"].get("others_share", 0) for r in rs),
                "ok": all(r["ok"] for r in rs),
            }
            if spec.key == "idle":
                row["total_pss_mib"] = statistics.median(r.get("total_pss_mib", 0) for r in rs)
                row["total_rss_mib"] = statistics.median(r.get("total_rss_mib", 0) for r in rs)
                row["per_session_rss_kib"] = statistics.median(r.get("per_session_rss_kib", 0) for r in rs)
            rows.append(row)
    by = {(r["op"], r["target"]): r for r in rows}
    for r in rows:
        f, d = by.get((r["op"], "fastmail")), by.get((r["op"], "dovecot"))
        if r["target"] == "dovecot" and f and d and f["median"] and d["median"]:
            spec = OPS_BY_KEY[r["op"]]
            adv = f["median"] / d["median"] if spec.higher_is_better else d["median"] / f["median"]
            r["fastmail_advantage"] = round(adv, 2)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["op", "target", "median", "min–max", "fastmail advantage (×)", "issue #4 target", "server CPU",
            "client CPU", "peak RSS MiB (tree)", "ok"]
    body = []
    for r in rows:
        spec = OPS_BY_KEY[r["op"]]
        fmt = "{:,.1f}" if r["unit"] in ("ms", "MB/s") else "{:,.0f}"
        med = "FAILED" if r["median"] is None else fmt.format(r["median"]) + " " + r["unit"]
        rng = "" if r["min"] is None else f"{fmt.format(r['min'])}–{fmt.format(r['max'])}"
        if r["op"] == "idle" and r["median"] is not None:
            med += f" (RSS {r['per_session_rss_kib']:,.0f}; total PSS {r['total_pss_mib']:,.0f} MiB)"
        adv = r.get("fastmail_advantage")
        body.append([spec.title, r["target"], med, rng,
                     "" if adv is None else f"{adv:.2f}",
                     f"≥ {spec.least_advantage:g}" + (" (≤ half the memory)" if spec.key == "idle" else ""),
                     f"{r['server_cpu_per_median']:g} {r['cpu_unit']}", f"{r['client_cpu_per_median']:g}",
                     f"{r['peak_rss_sum_mib']:.0f}", "yes" if r["ok"] else "FAIL"])
    return markdown(head, body)


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if "fastmail_advantage" in r:
            spec = OPS_BY_KEY[r["op"]]
            out.append({"op": r["op"], "target": f"fastmail ≥ {spec.least_advantage:g}× Dovecot"
                        + (" (memory per idle session ≤ 1/2)" if spec.key == "idle" else ""),
                        "measured": f"{r['fastmail_advantage']:.2f}×", "met": r["fastmail_advantage"] >= spec.least_advantage})
    return out


def compare_answers(warm: dict[str, dict[str, Any]]) -> list[str]:
    """Both servers must have given the same answers (message count, search hits)."""
    answers = {t: w.get("answers") for t, w in warm.items() if w.get("answers")}
    if len({json.dumps(a, sort_keys=True) for a in answers.values()}) > 1:
        return [f"the servers answered differently: {answers}"]
    return []


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load_imap", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="ops:\n" + "\n".join(f"  {o.key}: {o.title}" for o in OPS))
    p.add_argument("--target", "--targets", dest="target", default=",".join(TARGETS),
                   help=f"comma list of {', '.join(TARGETS)} (default: both)")
    p.add_argument("--op", "--ops", dest="op", default="all", help="comma list of ops (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per op and target (default: 3)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1,000 messages, 200 idle sessions, 10x fewer appends and logins")
    p.add_argument("--messages", type=int, default=None, help="messages in the mailbox (default: 10000)")
    p.add_argument("--seed", type=int, default=1, help="the mailbox generator's seed (default: 1)")
    p.add_argument("--idle", type=int, default=None, help="IDLE sessions (default: 2000)")
    p.add_argument("--logins", type=int, default=None, help="sessions of the login op (default: 200)")
    p.add_argument("--appends-1", type=int, default=None, help="messages appended by 1 client (default: 2000)")
    p.add_argument("--appends-20", type=int, default=None, help="messages appended by 20 clients (default: 10000)")
    p.add_argument("--repeat", type=int, default=5,
                   help="FETCH, SEARCH and STORE commands per op and round; the median counts (default: 5)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="fastmail workers (default: CPU count)")
    p.add_argument("--fastmail-set", action="append", default=[], metavar="KEY=TOML",
                   help="an extra fastmail setting, e.g. --fastmail-set 'imap.x=true' (repeatable)")
    p.add_argument("--fastmail-seed", choices=("imap-append", "smtp"), default="imap-append",
                   help="how fastmail's INBOX is filled (default: APPEND over IMAP)")
    p.add_argument("--dovecot-seed", choices=("maildir-files", "imap-append"), default="maildir-files",
                   help="how Dovecot's INBOX is filled (default: files in the Maildir)")
    p.add_argument("--dovecot-password", choices=("argon2id", "plain"), default="argon2id",
                   help="Dovecot's passdb scheme: the same argon2id hash parameters as fastmail's (default), "
                        "or {PLAIN}")
    add_run_options(p, "imap")
    a = p.parse_args(argv)
    q = a.quick
    a.messages = a.messages if a.messages is not None else 1000 if q else 10_000
    a.idle = a.idle if a.idle is not None else 200 if q else 2000
    a.logins = a.logins if a.logins is not None else 20 if q else 200
    a.appends_1 = a.appends_1 if a.appends_1 is not None else 200 if q else 2000
    a.appends_20 = a.appends_20 if a.appends_20 is not None else 1000 if q else 10_000
    pick_targets_and_ops(p, a, list(TARGETS), OPS, OPS_BY_KEY)
    if a.rounds < 1 or a.messages < 1 or a.idle < 0 or a.appends_20 < 20 or a.repeat < 1 or a.logins < 1:
        p.error("--rounds, --messages, --repeat, --logins must be at least 1, --appends-20 at least 20")
    return a


def add_run_options(p: argparse.ArgumentParser, kind: str) -> None:
    """The options every load driver of bench/imap (IMAP, POP3) takes for running and recording."""
    p.add_argument("--max-elsewhere", type=float, default=0.10,
                   help="an op during which other processes and steal took more than this share of the machine's "
                        "CPU is run again (default: 0.10)")
    p.add_argument("--retries", type=int, default=2, help="reruns of a disturbed op (default: 2)")
    p.add_argument("--timeout", type=float, default=900.0, help="limit on each op, seconds (default: 900)")
    p.add_argument("--tmpdir", type=Path, default=None, help="where the targets' directories go")
    p.add_argument("--keep", action="store_true", help="keep the targets' directories: data, configs, logs")
    p.add_argument("--output", type=Path, default=None, help=f"JSON file (default: bench/results/{kind}-STAMP.json)")


def pick_targets_and_ops(p: argparse.ArgumentParser, a: argparse.Namespace, targets: list[str], ops: list[Any],
                         by_key: dict[str, Any]) -> None:
    """a.target / a.op ("x,y" or "all") -> a.targets and a.ops, or a usage error naming what is unknown."""
    a.targets = [t.strip() for t in a.target.split(",") if t.strip()]
    if not a.targets or any(t not in targets for t in a.targets):
        p.error(f"unknown target in {a.target}; choose from {','.join(targets)}")
    a.ops = ops if a.op == "all" else [by_key[k] for k in a.op.split(",") if k in by_key]
    if not a.ops or (a.op != "all" and len(a.ops) != len(a.op.split(","))):
        p.error(f"unknown op in {a.op}; choose from {','.join(by_key)}")


def make_target(name: str, args: argparse.Namespace) -> ImapTarget:
    if name == "fastmail":
        return FastmailImapTarget(args.workers, args.fastmail_set, args.fastmail_seed)
    return DovecotTarget(sessions=max(args.idle, args.logins), seed_by_append=args.dovecot_seed == "imap-append",
                         password_scheme=args.dovecot_password)


def raise_fd_limit(need: int) -> dict[str, int]:
    """Open files: this driver holds one socket per idle session, and the servers inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return {"nofile_soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "nofile_hard": hard, "needed": need}


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


async def run(args: argparse.Namespace, targets: list[ImapTarget], base: Path, meta: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    box = Mailbox(args.seed, list(mailgen.generate(args.messages, args.seed)))
    meta["mailbox"] = {**box.describe(), "generate_s": round(time.perf_counter() - t0, 1)}
    mb = meta["mailbox"]
    print(f"# mailbox: {mb['messages']:,} messages, {mb['mib']} MiB (median {mb['size_median']:,} B, p90 "
          f"{mb['size_p90']:,} B, max {mb['size_max']:,} B), seed {args.seed}, kinds {mb['kinds']}; "
          f"expected hits {mb['expected_hits']}", flush=True)
    ctx = Ctx(args, box)

    def describe(t: ImapTarget, seeded: dict[str, Any], w: dict[str, Any]) -> str:
        return (f"# {t.name}: port {t.port}, seeded by {t.seed_method} in {seeded['start_and_seed_s']} s; "
                f"first SELECT {w['first_select_s']} s, first fetch flags {w['first_fetch_flags_s']} s, "
                f"first bodies {w['first_fetch_bodies_s']} s; answers {w['answers']}")

    return await drive(args, ctx, targets, base, box.messages, warm_up, run_op, round_line, describe)


async def drive(args: argparse.Namespace, ctx: Any, targets: list[Any], base: Path, messages: list[mailgen.Message],
                warm: Callable[[Any, Any], Awaitable[dict[str, Any]]],
                run_one: Callable[[Any, Any, Any, int], Awaitable[dict[str, Any]]],
                line: Callable[[dict[str, Any]], str],
                describe: Callable[[Any, dict[str, Any], dict[str, Any]], str]) -> dict[str, Any]:
    """Shared by the IMAP and POP3 benchmarks: start and seed every target, warm it up (verifying the
    answers), then the rounds — every op against every target in turn (A B A B), a disturbed op run again
    up to args.retries times — and stop every target that started, whatever happened."""
    warmed: dict[str, dict[str, Any]] = {}
    rounds: list[dict[str, Any]] = []
    disturbed: list[dict[str, Any]] = []
    started: list[Any] = []
    stops: dict[str, Any] = {}
    try:
        for t in targets:
            t1 = time.perf_counter()
            t.start(base / t.name, messages, args.seed)
            started.append(t)
            seeded: dict[str, Any] = {"method": t.seed_method}
            if t.seed_method != "maildir-files":
                seeded.update(await t.seed(messages, args.seed))
            seeded["start_and_seed_s"] = round(time.perf_counter() - t1, 1)
            w = await warm(ctx, t)
            w["seed"] = seeded
            warmed[t.name] = w
            print(describe(t, seeded, w) + (f"; PROBLEMS: {w['problems']}" if w["problems"] else "; verified"),
                  flush=True)
        for rnd in range(1, args.rounds + 1):
            for spec in args.ops:
                for t in targets:  # interleaved: A B A B
                    for attempt in range(args.retries + 1):
                        r = await run_one(ctx, spec, t, rnd)
                        r["attempt"] = attempt
                        share = r["meter"].get("disturbed_share", 0)
                        if share <= args.max_elsewhere or attempt == args.retries:
                            break
                        print(line(r) + f"  -- disturbed ({share:.0%} elsewhere or stolen): run again", flush=True)
                        disturbed.append(r)
                    rounds.append(r)
                    print(line(r), flush=True)
    finally:
        for t in started:
            stops[t.name] = t.stop()
    return {"warm_up": warmed, "rounds": rounds, "disturbed_rounds": disturbed, "stops": stops}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    targets = [make_target(t, args) for t in args.targets]
    missing = [f"{t.name}: {m}" for t in targets if (m := t.check_installed())]
    if missing:
        print("bench: cannot run " + "; ".join(missing), file=sys.stderr)
        return 2
    limits = raise_fd_limit(args.idle + 500)
    base = Path(tempfile.mkdtemp(prefix="fastmail-imap-", dir=args.tmpdir))
    base.chmod(0o755)  # Dovecot's users (dovenull, dovecot, fmbench) must reach their directories
    started = time.strftime("%Y%m%d-%H%M%S")
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uvloop, uv = None, "not installed"  # type: ignore[assignment]
    meta: dict[str, Any] = {
        "benchmark": "bench.load_imap: " + ", ".join(t.name for t in targets),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "rounds": args.rounds,
        "ops": {o.key: o.title for o in args.ops}, "machine": machine_info(base), "git": git_info(),
        "versions": {"python": platform.python_version(), "client event loop": f"uvloop {uv}",
                     **{t.name: t.versions() for t in targets}},
        "targets": {t.name: t.settings() for t in targets}, "limits": limits,
        "load": {"messages": args.messages, "idle_sessions": args.idle, "logins": args.logins,
                 "appends_1": args.appends_1, "appends_20": args.appends_20, "append_size": APPEND_SIZE,
                 "repeat": args.repeat},
    }
    m, g = meta["machine"], meta["git"]
    print(f"# {meta['benchmark']}")
    print(f"# machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['memory_gib']} GiB, {m['kernel']}; data on {m['data_fs']}")
    print(f"# versions: {json.dumps(meta['versions'])}")
    print(f"# commit {g['commit']}{' (dirty tree)' if g['dirty'] else ''}; load {json.dumps(meta['load'])}", flush=True)

    result: dict[str, Any] = {}
    try:
        result = uvloop.run(run(args, targets, base, meta)) if uvloop else asyncio.run(run(args, targets, base, meta))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        rounds = result.get("rounds", [])
        rows = summarize(rounds, args.targets)
        checks = check_targets(rows)
        problems = compare_answers(result.get("warm_up", {}))
        for name, w in result.get("warm_up", {}).items():
            problems += [f"{name} warm-up: {p}" for p in w.get("problems", [])]
        for name, s in result.get("stops", {}).items():
            if s.get("exit_code") != 0:
                problems.append(f"{name}: exit status {s.get('exit_code')} on stop")
            logged = s.get("log", {}).get("problems", [])
            if logged:  # reported, not failed: the JSON has the first 20
                print(f"# {name} logged {len(logged)}{'+' if len(logged) >= 20 else ''} warnings/errors, e.g. "
                      f"{logged[0][:200]}", file=sys.stderr)
        out = args.output or RESULTS / f"imap-{started}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": rows,
                                   "targets_check": checks, "problems": problems, **result}, indent=2, default=str) + "\n")
        if rows:
            print()
            print(format_table(rows))
        if checks:
            print()
            print(markdown(["op", "issue #4 target", "measured", "met"],
                           [[c["op"], c["target"], c["measured"], "yes" if c["met"] else "NO"] for c in checks]))
        for pr in problems:
            print(f"PROBLEM: {pr}", file=sys.stderr)
        print(f"\nraw figures: {out}" + (f"; directories kept in {base}" if args.keep else ""))
    failed = [r for r in result.get("rounds", []) if not r["ok"]]
    for r in failed:
        print(f"FAILED {r['op']} {r['target']} round {r['round']}: {'; '.join(r['problems'])}", file=sys.stderr)
    return 1 if failed or problems or not result else 0


if __name__ == "__main__":
    sys.exit(main())
