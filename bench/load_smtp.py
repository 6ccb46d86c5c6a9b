"""SMTP ingress load benchmark: the same `smtp-source` load against fastmail and its peers (issue #3).

    python -m bench.load_smtp [--scenario a,b,c,d] [--rounds 3] [--quick] [--target fastmail,postfix,...]

Targets (bench/smtp/target_*.py): fastmail (default settings, workers = CPU count); a private Postfix
instance delivering to a Maildir; aiosmtpd on uvloop writing a Maildir with fsync before 250; Postfix's
smtp-sink, which keeps nothing (the load generator's ceiling).  Issue #7's variants of fastmail with the
checks of incoming mail on: fastmail-checks (SPF, DKIM, ARC, DMARC, iprev, DNSBL/DNSWL against a local DNS
server), fastmail-rspamd, fastmail-clamd and fastmail-all (the checks plus the real rspamd and/or clamd);
those services run once per run (bench/smtp/services.py), their CPU is reported apart, and smtp-source then
sends a DKIM-signed message (-F) to every target.  Each round starts the target on a fresh
directory and a free loopback port, runs one `smtp-source` against it, waits until every message is in the
mailbox (end-to-end), and measures: smtp-source wall time (msgs/s), end-to-end time, server CPU (utime+stime
of every process of the server's tree, exited children included through their parent's cutime/cstime),
peak memory, and the messages really in the mailbox afterwards.  A round where stored != sent, or where
smtp-source did not get a 2xx for everything, fails the run (exit status 1).  Rounds are interleaved across
targets (A B C D A B C D) so drift on the machine hits every target alike; a round during which other
processes took more than --max-elsewhere of the machine is run again (--retries).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import fsync_rate
from bench.smtp.procfs import (
    CLK_TCK,
    TCP_REFUSALS,
    TreeSampler,
    all_process_ticks,
    elsewhere_by_name,
    kernel_thread_pids,
    loadavg,
    own_cpu_seconds,
    process_tree,
    reaped_children_cpu_seconds,
    system_cpu,
    tcp_counters,
    tree_cpu_seconds,
)
from bench.smtp.report import (
    check_targets,
    format_checks_table,
    format_cpu_breakdown,
    format_table,
    format_targets,
    git_info,
    machine_info,
    summarize,
)
from bench.smtp.services import (
    RSPAMD_OPTIONS,
    SELECTOR,
    SENDER_DOMAIN,
    Services,
    dkim_key,
    signed_message,
    write_for_smtp_source,
    zone,
)
from bench.smtp.target import CLIENT_NAME, RECIPIENT, SENDER, Target
from bench.smtp.target_fastmail import FEATURES, FastmailTarget
from bench.smtp.target_peers import AiosmtpdTarget, SmtpSinkTarget
from bench.smtp.target_postfix import PostfixTarget

RESULTS = Path(__file__).resolve().parent / "results"
STALL_S = 60.0  # a queue that delivers nothing for this long is stuck: stop waiting for end-to-end

TARGETS: dict[str, type[Target]] = {"fastmail": FastmailTarget, "postfix": PostfixTarget,
                                    "aiosmtpd": AiosmtpdTarget, "smtp-sink": SmtpSinkTarget}
DEFAULT_TARGETS = list(TARGETS)  # issue #3's comparison
TARGETS.update({name: FastmailTarget for name in FEATURES if name != "fastmail"})  # issue #7's variants


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


def smtp_source_argv(sc: Scenario, host: str, port: int, message_file: Path | None = None) -> list[str]:
    # No -c (a counter on stdout per message); no -N (it would prefix the recipient with a number);
    # no -A (any non-2xx reply must abort: smtp-source exits 1 with "fatal: ..." on stderr).
    # -F: a prepared message (the DKIM-signed one of the checks comparison) instead of -l's generated one.
    body = ["-F", str(message_file)] if message_file is not None else ["-l", str(sc.size)]
    argv = ["smtp-source", "-s", str(sc.sessions), "-m", str(sc.messages), *body,
            "-f", SENDER, "-t", RECIPIENT, "-M", CLIENT_NAME]
    if sc.reuse:
        argv.append("-d")
    return [*argv, f"{host}:{port}"]


# -- one round -------------------------------------------------------------------------------------------


def run_smtp_source(argv: list[str], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run smtp-source; wall time from just before the spawn to its exit; its rusage via wait4."""
    out = workdir / "smtp-source.out"
    timed_out = threading.Event()
    with open(out, "wb") as f:
        t0, t0_wall = time.perf_counter(), time.time()
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
            "t0": t0, "t0_wall": t0_wall, "client_cpu_s": ru.ru_utime + ru.ru_stime, "output": out.read_text(errors="replace")[-2000:]}


def wait_delivered(target: Target, sent: int, t0: float, timeout: float) -> tuple[dict[str, int], float]:
    """Poll the mailbox until `sent` messages are in it; bounded by `timeout` s from t0 and by STALL_S
    without progress.  Returns the last count and the time from t0 (the end-to-end time)."""
    live = target.count_stored(detail=False)
    last, last_change = live["stored"], time.perf_counter()
    while live["stored"] < sent:
        now = time.perf_counter()
        if now - t0 > timeout or now - last_change > STALL_S:
            break
        time.sleep(0.1)
        live = target.count_stored(detail=False)
        if live["stored"] != last:
            last, last_change = live["stored"], time.perf_counter()
    return live, time.perf_counter() - t0


def settle(roots: list[int], window: float = 0.25, idle_share: float = 0.02, limit: float = 15.0) -> float:
    """Wait until the server's tree uses under `idle_share` of one CPU over `window` s (start-up work done:
    fastmail's workers make their dummy argon2 hash after they already answer), at most `limit` s.
    Returns the time waited."""
    t0 = time.perf_counter()
    last = tree_cpu_seconds(roots)
    while time.perf_counter() - t0 < limit:
        time.sleep(window)
        now = tree_cpu_seconds(roots)
        if now - last < idle_share * window + 1e-9:
            break
        last = now
    return time.perf_counter() - t0


@dataclass(frozen=True)
class Message:
    """The prepared message smtp-source sends with -F (services.signed_message), or none (-l)."""
    path: Path | None = None
    size: int = 0  # bytes as sent (CRLF lines)


def run_round(target: Target, sc: Scenario, rnd: int, workdir: Path, timeout: float,
              services: Services | None = None, message: Message = Message()) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    os.sync()  # the previous round's dirty pages are not this round's I/O
    problems: list[str] = []
    if services is not None and (down := services.alive()):
        problems.append(f"service(s) not running at the start: {', '.join(down)}")
    target.start(workdir)
    try:
        roots = target.pids()
        settled = settle(roots)
        sampler = TreeSampler(roots)
        sampler.reset_peaks()
        sampler.sample()
        load = loadavg()
        # the run's services (rspamd, clamd, DNS): CPU of each tree, apart from the server's
        svc_roots = services.roots() if services is not None else {}
        svc_pids = set(process_tree([p for r in svc_roots.values() for p in r]))
        dns0 = services.dns_asked() if services is not None else {}
        tcp0, kthreads, procs0 = tcp_counters(), kernel_thread_pids(), all_process_ticks()
        t_sys0, sys0, own0, ch0 = time.perf_counter(), system_cpu(), own_cpu_seconds(), reaped_children_cpu_seconds()
        svc0 = {k: tree_cpu_seconds(v) for k, v in svc_roots.items()}
        cpu0 = tree_cpu_seconds(roots)
        sampler.start()
        src = run_smtp_source(smtp_source_argv(sc, target.host, target.port, message.path), workdir, timeout)
        sent = sc.messages if src["exit_code"] == 0 else None
        e2e = src["wall_s"]
        if not target.stored_on_accept and sent is not None:
            _, e2e = wait_delivered(target, sent, src["t0"], timeout)
        # CPU and memory until everything is in the mailbox: a queueing MTA still works after smtp-source
        cpu1 = tree_cpu_seconds(roots)
        svc1 = {k: tree_cpu_seconds(v) for k, v in svc_roots.items()}
        t_sys1, sys1, own1, ch1 = time.perf_counter(), system_cpu(), own_cpu_seconds(), reaped_children_cpu_seconds()
        svc_pids |= set(process_tree([p for r in svc_roots.values() for p in r]))
        dns1 = services.dns_asked() if services is not None else {}
        tcp1, procs1 = tcp_counters(), all_process_ticks()
        mem = sampler.finish()
        live = target.count_stored()
        if not target.stored_on_accept and "last_mtime" in live and live["stored"] == sent:
            # the polls see the last delivery up to 0.1 s late; the newest file's mtime is when it was written
            e2e = min(e2e, max(src["wall_s"], live.pop("last_mtime") - src["t0_wall"]))
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
        if "exists" in counts and counts["exists"] != counts["stored"]:
            problems.append(f"mailbox exists counters {counts['exists']} != message records {counts['stored']} {when}")
    # smtp-source's payload is lines of 78 characters + CRLF; a Maildir in Unix form (Postfix) has LF only
    size = message.size or sc.size
    least = size - (size // 80 + 1 if target.stores_lf else 0)
    if after.get("min_size", least) < least:
        problems.append(f"a stored message is shorter ({after['min_size']} B) than the payload ({least} B)")
    for key, what in (("left_in_queue", "messages left in the queue"), ("in_tmp", "files left in Maildir tmp/")):
        if after.get(key):
            problems.append(f"{after[key]} {what} after stop")
    log = stopped.get("log", {})
    if "accepted" in log and log["accepted"] != after["stored"]:
        problems.append(f"server logged {log['accepted']} accepted but {after['stored']} are stored")
    problems += target.check_log(log, after["stored"])
    if services is not None and (down := services.alive()):
        problems.append(f"service(s) not running at the end: {', '.join(down)}")
    for key in ("deferred", "bounced"):
        if log.get(key):
            problems.append(f"server log: {log[key]} deliveries {key}")
    if stopped.get("exit_code") != 0:
        problems.append(f"server exit status {stopped.get('exit_code')} on stop")

    cpu = cpu1 - cpu0
    n = sent if sent is not None else max(after["stored"], 1)  # a failed round: rate of what got through
    interval = t_sys1 - t_sys0
    machine: dict[str, Any] = {k: round(sys1[k] - sys0[k], 2) for k in sys0}
    driver = (own1 - own0) + (ch1 - ch0)  # this process and what it reaped: smtp-source, CLI calls
    machine["driver_and_client"] = round(driver, 2)
    machine["kernel_threads"] = round(sum(procs1[p][1] - procs0[p][1] for p in kthreads
                                          if p in procs0 and p in procs1) / CLK_TCK, 2)
    # Whatever other processes ran on the machine meanwhile (other users, other tests): if this is large
    # the round shared its CPUs and its figures are suspect.
    elsewhere = elsewhere_by_name(procs0, procs1, mem.pop("seen") | kthreads | svc_pids | {os.getpid()})
    machine["others"] = round(sum(elsewhere.values()), 2)
    machine["others_share"] = round(machine["others"] / ((os.cpu_count() or 1) * interval), 3)
    machine["others_by_name"] = dict(list(elsewhere.items())[:5])
    # What the round lost to other work: other processes, and the hypervisor running other guests (steal)
    machine["disturbed_share"] = round((machine["others"] + max(0.0, machine["steal"]))
                                       / ((os.cpu_count() or 1) * interval), 3)
    # Busy time that no process was charged with: /proc/stat counts ticks, a process's times are its exact
    # run time, and the difference is mostly the kernel switching between processes (large for Postfix's
    # many processes passing each message along) and softirq work on idle CPUs.
    svc_cpu = {k: round(svc1[k] - svc0[k], 2) for k in svc0}
    machine["services"] = round(sum(svc_cpu.values()), 2)
    machine["unattributed"] = round(machine["busy"] - cpu - driver - machine["kernel_threads"] - machine["others"]
                                    - machine["services"], 2)
    machine_cost = cpu + machine["kernel_threads"] + max(0.0, machine["unattributed"])
    src.pop("t0")
    src.pop("t0_wall")
    live.pop("last_mtime", None)
    after.pop("last_mtime", None)
    return {
        "scenario": sc.key, "target": target.name, "round": rnd, "stores_mail": target.stores_mail,
        "messages": sc.messages, "size": sc.size, "sessions": sc.sessions, "reuse": sc.reuse,
        "sent": sent, "stored": after["stored"], "stored_live": live["stored"], "counts_live": live,
        "counts_after_stop": after,
        "wall_s": round(src["wall_s"], 4), "msgs_per_s": round(n / src["wall_s"], 1),
        "end_to_end_s": round(e2e, 4), "end_to_end_msgs_per_s": round(n / e2e, 1),
        "end_to_end_is_smtp_source_time": target.stored_on_accept,
        "server_cpu_s": round(cpu, 2), "server_cpu_s_per_1k": round(cpu / n * 1000, 3),
        # the run's services: all that run ("services_cpu_s"), and per 1k messages those this target calls
        "uses": list(target.uses), "services_cpu_s": svc_cpu,
        "services_cpu_s_per_1k": {k: round(svc_cpu[k] / n * 1000, 3) for k in target.uses if k in svc_cpu},
        "dns_queries": {k: v - dns0.get(k, 0) for k, v in dns1.items() if v != dns0.get(k, 0)},
        "message": {"file": str(message.path), "bytes": message.size} if message.path else {"generated_payload": sc.size},
        "machine_cpu_s_per_1k": round(machine_cost / n * 1000, 3),
        "client_cpu_s": round(src["client_cpu_s"], 2),
        "memory": mem, "smtp_source": src, "server": stopped, "loadavg_1min_before": load,
        "measured_interval_s": round(interval, 3), "settle_s": round(settled, 2), "machine_cpu_s": machine,
        "tcp_counters_delta": {k: tcp1[k] - tcp0.get(k, 0) for k in tcp1 if tcp1[k] != tcp0.get(k, 0)},
        "ok": not problems, "problems": problems,
    }


def round_line(r: dict[str, Any]) -> str:
    lg = r["server"].get("log", {})
    m = r["machine_cpu_s"]
    e2e = "" if r["end_to_end_is_smtp_source_time"] else f", e2e {r['end_to_end_msgs_per_s']:,.0f} msgs/s"
    refused = {k: v for k, v in r["tcp_counters_delta"].items() if k in TCP_REFUSALS}
    return (f"{r['scenario']} {r['target']} round {r['round']}: {r['msgs_per_s']:,.0f} msgs/s "
            f"({r['wall_s']:.2f} s){e2e}, server CPU {r['server_cpu_s']:.2f} s, client CPU "
            f"{r['client_cpu_s']:.2f} s, RSS sum {r['memory']['peak_rss_sum_mib']:.0f} MiB, "
            f"stored {r['stored']}/{r['sent']}, kernel threads {m['kernel_threads']:.2f} s, unattributed "
            f"{m['unattributed']:.2f} s, elsewhere {m['others']:.2f} s ({m['others_share']:.0%})"
            + (f", steal {m['steal']:.2f} s" if m["steal"] >= 0.1 else "")
            + (f", commit batches {lg['commit_batches']} (largest {lg['largest_batch']})"
               if "commit_batches" in lg else "")
            + (f", tcp {refused}" if refused else "")
            + "".join(f", {k} CPU {v:.2f} s" for k, v in r["services_cpu_s"].items() if k in r["uses"])
            + (f", DNS queries {sum(r['dns_queries'].values()) / max(r['sent'] or r['stored'], 1):.1f}/msg"
               if "dns" in r["uses"] else "")
            + (f", not in INBOX {r['counts_after_stop']['by_mailbox']}"
               if r["counts_after_stop"].get("outside_inbox") else "")
            + (f", elsewhere by name {m['others_by_name']}" if m["others_share"] > 0.05 else "")
            + ("" if r["ok"] else "  FAIL: " + "; ".join(r["problems"])))


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load_smtp", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="scenarios:\n" + "\n".join(
                                    f"  {k}: {s.title}: {s.describe()}" for k, s in SCENARIOS.items()))
    p.add_argument("--scenario", default="all", help="comma list of a,b,c,d or 'all' (default: all)")
    p.add_argument("--target", "--targets", dest="target", default=",".join(DEFAULT_TARGETS),
                   help=f"comma list of {', '.join(TARGETS)} (default: {','.join(DEFAULT_TARGETS)})")
    p.add_argument("--rounds", type=int, default=3, help="rounds per scenario and target (default: 3)")
    p.add_argument("--quick", action="store_true", help="10x fewer messages: a smoke run")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="fastmail workers (default: CPU count)")
    p.add_argument("--postfix-process-limit", type=int, default=500,
                   help="Postfix default_process_limit: smtpd, cleanup, virtual processes each (default: 500)")
    p.add_argument("--aiosmtpd-threads", type=int, default=16,
                   help="aiosmtpd delivery threads; 0 = write and fsync inline in the loop (default: 16)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds allowed per smtp-source run and again for delivery (default: 600)")
    p.add_argument("--max-elsewhere", type=float, default=0.10,
                   help="a round in which other processes and steal took more than this share of the machine's "
                        "CPU is run again (default: 0.10)")
    p.add_argument("--retries", type=int, default=2, help="reruns of a disturbed round (default: 2)")
    p.add_argument("--fsync-seconds", type=float, default=1.0,
                   help="seconds per test of the fsync-rate header (0: skip it; default: 1)")
    p.add_argument("--message", choices=("auto", "generated", "signed"), default="auto",
                   help="what smtp-source sends to every target: 'generated' (its own, -l size), 'signed' (a "
                        "DKIM-signed message of the same payload size, -F), 'auto': signed when a fastmail "
                        "variant with checks runs (default: auto)")
    p.add_argument("--dns-ttl", type=int, default=0,
                   help="TTL of the bench DNS server's answers; 0: every lookup reaches it, as with many "
                        "different senders; more lets each worker's c-ares cache answer repeats (default: 0)")
    p.add_argument("--rspamd-workers", type=int, default=os.cpu_count() or 1,
                   help="rspamd normal worker processes (default: CPU count)")
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
    if args.rounds < 1 or args.retries < 0 or args.dns_ttl < 0 or args.rspamd_workers < 1:
        p.error("--rounds and --rspamd-workers must be at least 1, --retries and --dns-ttl at least 0")
    if args.message == "auto":
        args.message = "signed" if any("checks" in FEATURES.get(t, ()) for t in args.targets) else "generated"
    return args


def make_target(name: str, args: argparse.Namespace, services: Services | None = None) -> Target:
    if name in FEATURES:
        return FastmailTarget(args.workers, name=name, services=services, signed=args.message == "signed")
    if name == "postfix":
        return PostfixTarget(process_limit=args.postfix_process_limit)
    if name == "aiosmtpd":
        return AiosmtpdTarget(threads=args.aiosmtpd_threads)
    return TARGETS[name]()


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through run_round's finally: the target stops


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if shutil.which("smtp-source") is None:
        print("bench: smtp-source not found (Debian: apt-get install postfix; `make bench-deps`)", file=sys.stderr)
        return 2
    # issue #7's variants call services that run once for the whole run (started below, stopped at the end)
    want = {u for name in args.targets if name in FEATURES for u in FastmailTarget(1, name=name).uses}
    services = Services(want, dns_ttl=args.dns_ttl, rspamd_workers=args.rspamd_workers) if want else None
    targets = [make_target(t, args, services) for t in args.targets]
    missing = [f"{t.name}: {m}" for t in targets if (m := t.check_installed())]
    if services is not None and (m := services.check_installed()):
        missing.append(f"services: {m}")
    if missing:
        print("bench: cannot run " + "; ".join(missing), file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="fastmail-load-", dir=args.tmpdir))
    base.chmod(0o755)  # Postfix's daemons (user postfix) and its delivery user must reach their directories
    started = time.strftime("%Y%m%d-%H%M%S")
    messages: dict[str, Message] = {}
    dkim_record = None
    if args.message == "signed":  # one message per scenario (its payload size), the same for every target
        pem, dkim_record = dkim_key()
        for sc in args.scenarios:
            raw = signed_message(sc.size, pem)
            write_for_smtp_source(raw, base / f"message-{sc.key}.eml")
            messages[sc.key] = Message(base / f"message-{sc.key}.eml", len(raw))
    meta: dict[str, Any] = {
        "benchmark": "bench.load_smtp: smtp-source -> " + ", ".join(t.name for t in targets),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "rounds": args.rounds,
        "timeout_s": args.timeout, "max_elsewhere": args.max_elsewhere, "retries": args.retries,
        "machine": machine_info(base), "git": git_info(),
        "versions": {"python": platform.python_version(), "smtp-source (postfix)": PostfixTarget().versions()["postfix"],
                     **{t.name: t.versions() for t in targets}},
        "targets": {},  # each target's settings(), once the services they name are running
        "scenarios": {sc.key: {**asdict(sc), "smtp_source": " ".join(
            smtp_source_argv(sc, "127.0.0.1", 0, messages.get(sc.key, Message()).path)).replace(":0", ":PORT")}
            for sc in args.scenarios},
        "message": {"kind": args.message, **({
            "bytes": {k: m.size for k, m in messages.items()},
            "signature": f"DKIM rsa-sha256 2048 bits, relaxed/relaxed, d={SENDER_DOMAIN} s={SELECTOR}",
            "example": Path(str(messages[args.scenarios[0].key].path)).read_text()[:3000]}
            if args.message == "signed" else {})},
    }
    m, g = meta["machine"], meta["git"]
    print(f"# {meta['benchmark']}")
    print(f"# machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['memory_gib']} GiB, {m['kernel']}; "
          f"data on {m['data_fs']}")
    print(f"# versions: {json.dumps(meta['versions'])}")
    print(f"# commit {g['commit']}{' (dirty tree)' if g['dirty'] else ''}")
    for sc in args.scenarios:
        print(f"# scenario {sc.key}: {sc.describe()}: {meta['scenarios'][sc.key]['smtp_source']}")
    if messages:
        print(f"# message: {meta['message']['signature']}, From and MAIL FROM {SENDER}, the same for every "
              f"target; bytes {meta['message']['bytes']}")
    if args.fsync_seconds > 0:
        os.sync()  # earlier writes still in the page cache would slow the first test
        meta["fsync_rate"] = fsync_rate.measure(base, args.fsync_seconds)
        print(f"# disk: {fsync_rate.format_rates(meta['fsync_rate'])}")
    sys.stdout.flush()

    rounds: list[dict[str, Any]] = []
    disturbed: list[dict[str, Any]] = []
    try:
        if services is not None:
            services.start(base / "services", zone(dkim_record))
            meta["versions"]["services"] = services.versions()
            meta["services"] = services.settings()
            print("# services (once for the run, CPU reported apart): "
                  + ", ".join(f"{k} started in {v:.1f} s" for k, v in services.started_in.items())
                  + (f"; DNS {services.dns_address}, TTL {args.dns_ttl}" if services.dns_address else "")
                  + (f"; rspamd {args.rspamd_workers} normal workers, {RSPAMD_OPTIONS.rstrip(';')}" if "rspamd" in want else "")
                  + (f"; versions {json.dumps(meta['versions']['services'])}"), flush=True)
        meta["targets"] = {t.name: t.settings() for t in targets}
        for sc in args.scenarios:
            for rnd in range(1, args.rounds + 1):
                for target in targets:  # interleaved: A B C D A B C D
                    for attempt in range(args.retries + 1):
                        workdir = base / f"{sc.key}-{target.name}-{rnd}-{attempt}"
                        r = run_round(target, sc, rnd, workdir, args.timeout, services,
                                      messages.get(sc.key, Message()))
                        r["attempt"] = attempt
                        if not args.keep:
                            shutil.rmtree(workdir, ignore_errors=True)
                        share = r["machine_cpu_s"]["disturbed_share"]
                        if share <= args.max_elsewhere or attempt == args.retries:
                            break
                        print(round_line(r) + f"  -- disturbed ({share:.0%} elsewhere or stolen): run again",
                              flush=True)
                        disturbed.append(r)
                    rounds.append(r)
                    print(round_line(r), flush=True)
    finally:
        if services is not None:
            meta["services_stop"] = services.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        rows = summarize(rounds)
        checks = check_targets(rows)
        result = {**meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": rows, "targets_check": checks,
                  "rounds": rounds, "disturbed_rounds": disturbed}
        out = args.output or RESULTS / f"smtp-{started}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        if rows:
            print()
            print(format_table(rows))
            if any("checks" in FEATURES.get(r["target"], ()) for r in rows):
                print()
                print(format_checks_table(rows))
            print()
            print(format_cpu_breakdown(rounds))
        if checks:
            print()
            print(format_targets(checks))
        print(f"\nraw figures: {out}" + (f"; data dirs kept in {base}" if args.keep else ""))

    failed = [r for r in rounds if not r["ok"]]
    for r in failed:
        print(f"FAILED {r['scenario']} {r['target']} round {r['round']}: {'; '.join(r['problems'])}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
