"""Outbound delivery benchmark (issue #6): fastmail's delivery process vs Postfix's qmgr+smtp, same queue,
same receiver.

    python -m bench.load_outbound [--messages 10000] [--domains 100] [--size 4096] [--rounds 1]
                                  [--target fastmail,postfix] [--delivery-processes 1]
                                  [--release hold|restart] [--dns auto|dnsmasq|dnslib] [--no-mta-sts]

Both servers first get the same N messages of SIZE bytes, to recipients spread over D domains, with
delivery held back.  The measured window is from releasing the queue until it is empty:

  * Postfix: queued with `defer_transports = smtp`; released by clearing it, `postfix reload` (qmgr and the
    other daemons restart, the master and smtpd stay) and `postqueue -f`;
  * fastmail, `--release hold` (the default): queued with `delivery.processes = 0`, every entry then held
    (queue.hold_all) and the server restarted with its delivery processes, which find nothing due; the
    window opens once they are ready, with the release of every entry (queue.release_all: what
    `fastmail queue release` does entry by entry, 1,000 entries per synced transaction, the delivery
    processes woken after each) — the master, workers and delivery processes stay, like Postfix's master;
  * fastmail, `--release restart`: the server restarted with its delivery processes inside the window
    (interpreter start, imports, master, workers and delivery processes booting included).

Every message goes to one `smtp-sink` on 127.0.0.30 (no TLS: it offers none).  fastmail runs with its
defaults otherwise (STARTTLS when offered, MTA-STS lookups: a TXT question per domain, none published).

Routing differs in one way, stated here: fastmail resolves the D domains' MX through a DNS server on
127.0.0.1 — dnsmasq (Debian's dnsmasq-base) when installed, else the tests' dnslib server in this process;
answers cached for their TTL (3600 s) — while Postfix, which can only ask the resolver of
/etc/resolv.conf on port 53, gets a transport_maps entry `smtp:[127.0.0.30]:PORT` per domain (no MX lookup
at all: all D domains are one next hop for it).  Needs root (Postfix's master, smtp-sink -u).

The machine is shared, so besides the rate each run reports the CPU time its MTA's processes used in the
window (cgroup v1 cpuacct: the server's process tree is started inside a cgroup of its own; the release of
fastmail's held entries runs in it too), the sink's, and the load average when the window opened: CPU
seconds per message do not depend on how busy the other tenants keep the CPUs.  The end of the window is
seen cheaply — fastmail: the number of queue records (one LMDB stat); Postfix: the `removed` lines its
maillog has gained (read incrementally) — so that watching the queue costs the measured server no CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.smtp.report import git_info, machine_info

SINK_IP = "127.0.0.30"
CLIENTS = 20


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(i: int, size: int) -> bytes:
    head = f"From: <bench@example.org>\r\nTo: <u{i}@bench.test>\r\nSubject: outbound {i}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def inject(port: int, n: int, domains: int, size: int) -> float:
    """Send the N messages over CLIENTS parallel sessions; seconds taken."""
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
                for i in range(k, n, CLIENTS):
                    s.sendmail("bench@example.org", [f"u{i}@d{i % domains}.test"], message(i, size))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"injection failed: {errors[0]!r}")
    return time.monotonic() - t0


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(0.02)


class CPUGroup:
    """A cgroup (v1 cpuacct) for one process tree: processes started inside `spawning()` and their children
    are in it; `seconds()` is the CPU time they used.  Does nothing (seconds() is None) where cgroups cannot
    be made."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, name: str) -> None:
        self.path: Path | None = self.ROOT / f"fastmail-bench-{name}-{os.getpid()}"
        try:
            self.path.mkdir(exist_ok=True)
        except OSError:
            self.path = None

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        (self.path / "cgroup.procs").write_text(str(os.getpid()))
        try:
            yield
        finally:
            (self.ROOT / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float | None:
        if self.path is None:
            return None
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        if self.path is not None:
            for _ in range(50):  # the processes may take a moment to leave it
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


class Dnsmasq:
    """dnsmasq on 127.0.0.1 (a free port) serving the benchmark's zone: dN.test MX 10 sink.bench.test,
    sink.bench.test A SINK_IP, TTL 3600; anything else under .test NXDOMAIN (so no MTA-STS record)."""

    def __init__(self, folder: Path, domains: int) -> None:
        self.folder = folder
        self.domains = domains
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> Dnsmasq:
        self.folder.mkdir(parents=True, exist_ok=True)
        port = free_udp_tcp_port()
        conf = self.folder / "dnsmasq.conf"
        conf.write_text("\n".join([
            f"port={port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts", "local=/test/",
            "local-ttl=3600", f"host-record=sink.bench.test,{SINK_IP}",
            *(f"mx-host=d{i}.test,sink.bench.test,10" for i in range(self.domains)), ""]))
        self.proc = subprocess.Popen(["dnsmasq", f"--conf-file={conf}", "--keep-in-foreground", "--user=root",
                                      f"--pid-file={self.folder / 'pid'}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.address = f"127.0.0.1:{port}"

        def answers() -> bool:
            import socket

            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(answers, 10, "dnsmasq")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def free_udp_tcp_port() -> int:
    import socket

    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def _log_time(line: str) -> float:
    """The time of a fastmail log line (ts=2026-12-02T00:56:11.991, local time)."""
    ts = line.split(" ", 1)[0][3:]
    return time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000


# -- fastmail ----------------------------------------------------------------------------------------------


def run_fastmail(work: Path, args: argparse.Namespace, dns: Any, sink_port: int, sink: CPUGroup) -> dict[str, Any]:
    from fastmail.delivery import queue as Q
    from fastmail.delivery import wake
    from fastmail.store.store import Store
    from tests.integration.conftest import make_server

    (work / "fastmail").mkdir(parents=True)
    extra = (f'trusted_networks = ["127.0.0.1/32"]\n\n[delivery]\nresolver = "{dns.address}"\nport = {sink_port}\n'
             f"mta_sts = {'true' if args.mta_sts else 'false'}\nprocesses = 0\n")
    srv = make_server(work / "fastmail", workers=2, extra=extra)
    srv.start()
    group = CPUGroup("fastmail")
    processes = args.delivery_processes
    try:
        injected = inject(srv.ports["smtp"], args.messages, args.domains, args.size)
        srv.stop()
        srv.config.write_text(srv.config.read_text().replace("processes = 0", f"processes = {processes}"))
        store = Store(srv.data)

        def queued() -> int:
            with store.read() as txn:
                return int(txn.stat(store.db["queue"])["entries"])

        def log_lines() -> list[str]:
            with open(srv.log, errors="replace") as f:
                f.seek(log_from)
                return f.read().splitlines()

        try:
            count = queued()
            log_from = srv.log.stat().st_size
            if args.release == "hold":
                # held while the server boots, released in the window: what `fastmail queue release` of every
                # entry does, one transaction per 1,000 entries, the delivery processes woken after each
                Q.hold_all(store)
                with group.spawning():
                    srv.start()
                wait_until(lambda: sum(" event=delivery_ready " in line for line in log_lines()) >= processes, 60,
                           "delivery processes ready")
            load = os.getloadavg()[0]
            cpu0, sink0 = group.seconds(), sink.seconds()
            wall0 = time.time()
            t0 = time.monotonic()
            with group.spawning():  # the release's CPU is fastmail's
                if args.release == "hold":
                    Q.release_all(store, on_commit=lambda _: wake.notify(srv.data, processes))
                else:
                    srv.start()
            released = time.monotonic() - t0
            wait_until(lambda: queued() == 0, 900, "fastmail queue empty")
            seconds = time.monotonic() - t0
            cpu1, sink1 = group.seconds(), sink.seconds()
        finally:
            store.close()
    finally:
        srv.stop()
        srv.kill_tree()
        group.close()
    lines = log_lines()  # after the stop: every line flushed
    sent = sum(1 for line in lines if " event=delivery " in line and "result=sent" in line)
    first = next((_log_time(line) - wall0 for line in lines if " event=delivery " in line), None)
    return {"target": "fastmail", "queued": count, "sent": sent, "seconds": seconds, "inject_seconds": injected,
            "cpu_seconds": _diff(cpu0, cpu1), "sink_cpu_seconds": _diff(sink0, sink1), "load_average": load,
            "release": args.release, "release_seconds": released, "first_delivery_after": first}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


# -- Postfix -----------------------------------------------------------------------------------------------

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/lib
mail_owner = postfix
setgid_group = postdrop
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
transport_maps = texthash:{dir}/etc/transport
defer_transports = smtp
smtp_tls_security_level = none
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_event_limit_exceptions = 127.0.0.0/8
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class _LogTail:
    """Counts a pattern in the lines a growing log file gains, reading only what is new each time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""
        self.found = 0

    def count(self, pattern: bytes) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            new = f.read()
        self.offset += len(new)
        complete, _, self.partial = (self.partial + new).rpartition(b"\n")
        self.found += complete.count(pattern)
        return self.found


def _queued_files(spool: Path) -> int:
    total = 0
    for q in ("maildrop", "incoming", "active", "deferred"):
        for _, _, files in os.walk(spool / q):
            total += len(files)
    return total


def run_postfix(work: Path, args: argparse.Namespace, sink_port: int, sink: CPUGroup) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="fastmail-bench-postfix-"))
    os.chmod(d, 0o755)
    port = free_port()
    for sub in ("etc", "spool", "lib"):
        (d / sub).mkdir(mode=0o755)
    os.chown(d / "lib", pwd.getpwnam("postfix").pw_uid, -1)
    (d / "etc" / "main.cf").write_text(MAIN_CF.format(dir=d))
    (d / "etc" / "master.cf").write_text(MASTER_CF.format(port=port))
    (d / "etc" / "transport").write_text(
        "".join(f"d{i}.test smtp:[{SINK_IP}]:{sink_port}\n" for i in range(args.domains)))

    def postfix(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(d / "etc"), *a], capture_output=True, text=True, timeout=120)

    group = CPUGroup("postfix")
    with group.spawning():  # the master and every process it starts
        res = postfix("start")
    if res.returncode != 0:
        group.close()
        raise RuntimeError(f"postfix start: {res.stdout}{res.stderr}")
    try:
        import socket

        def greets() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    return s.recv(3) == b"220"
            except OSError:
                return False

        wait_until(greets, 30, "postfix smtpd")
        injected = inject(port, args.messages, args.domains, args.size)
        spool = d / "spool"
        # every message in the deferred queue (defer_transports) before the window opens
        wait_until(lambda: sum(len(f) for _, _, f in os.walk(spool / "deferred")) >= args.messages, 600,
                   "postfix deferred all")
        queued = _queued_files(spool)
        subprocess.run(["postconf", "-c", str(d / "etc"), "-e", "defer_transports ="], check=True, timeout=60)
        maillog = d / "maillog"
        tail = _LogTail(maillog)

        def all_removed() -> bool:
            # qmgr logs "QUEUEID: removed" once per message it is done with
            return tail.count(b": removed") >= queued

        load = os.getloadavg()[0]
        cpu0, sink0 = group.seconds(), sink.seconds()
        t0 = time.monotonic()
        postfix("reload")
        subprocess.run(["postqueue", "-c", str(d / "etc"), "-f"], check=True, timeout=60)
        wait_until(all_removed, 900, "postfix queue empty")
        seconds = time.monotonic() - t0
        cpu1, sink1 = group.seconds(), sink.seconds()
        if _queued_files(spool):
            raise RuntimeError("postfix logged every message removed, but its queue is not empty")
        sent = maillog.read_text(errors="replace").count("status=sent")
    finally:
        postfix("stop")
        shutil.rmtree(d, ignore_errors=True)
        group.close()
    return {"target": "postfix", "queued": queued, "sent": sent, "seconds": seconds, "inject_seconds": injected,
            "cpu_seconds": _diff(cpu0, cpu1), "sink_cpu_seconds": _diff(sink0, sink1), "load_average": load}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.load_outbound", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--domains", type=int, default=100)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--target", default="fastmail,postfix")
    p.add_argument("--delivery-processes", type=int, default=1)
    p.add_argument("--release", choices=["hold", "restart"], default="hold",
                   help="how fastmail's window opens: its held queue released while it runs (like Postfix's "
                        "reload + flush), or a restart with delivery processes (boot included)")
    p.add_argument("--dns", choices=["auto", "dnsmasq", "dnslib"], default="auto",
                   help="fastmail's DNS server: dnsmasq (Debian's dnsmasq-base; auto: when installed) or the "
                        "tests' dnslib server in this process")
    p.add_argument("--mta-sts", action=argparse.BooleanOptionalAction, default=True,
                   help="fastmail looks up MTA-STS policies (its default; TXT lookups on the test DNS)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (Postfix's master, smtp-sink -u)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fastmail-bench-outbound-"))
    dns: Any
    if args.dns == "dnsmasq" or (args.dns == "auto" and shutil.which("dnsmasq")):
        dns = Dnsmasq(work / "dnsmasq", args.domains).start()
        args.dns = "dnsmasq"
    else:
        from tests.integration.dnsserver import LocalDNS

        dns = LocalDNS(ttl=3600).start()
        for i in range(args.domains):
            dns.set(f"d{i}.test", ("MX", (10, "sink.bench.test.")))
        dns.set("sink.bench.test", ("A", SINK_IP))
        args.dns = "dnslib"
    sink_port = free_port()
    sink_cpu = CPUGroup("sink")
    with sink_cpu.spawning():
        sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"{SINK_IP}:{sink_port}", "1024"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        for r in range(args.rounds):
            for target in args.target.split(","):
                if target == "fastmail":
                    res = run_fastmail(work / f"r{r}", args, dns, sink_port, sink_cpu)
                else:
                    res = run_postfix(work / f"r{r}", args, sink_port, sink_cpu)
                res["round"] = r + 1
                res["per_second"] = res["queued"] / res["seconds"]
                results.append(res)
                cpu = "" if res["cpu_seconds"] is None else (
                    f"  cpu {res['cpu_seconds']:6.2f} s ({1000 * res['cpu_seconds'] / res['queued']:.2f} ms/msg)"
                    f"  sink {res['sink_cpu_seconds']:5.2f} s")
                boot = "" if res.get("first_delivery_after") is None else \
                    f"  {res['release']} {res['release_seconds']:.2f} s, first delivery after {res['first_delivery_after']:.2f} s"
                print(f"round {r + 1} {res['target']:9} {res['queued']:6} queued  {res['sent']:6} sent  "
                      f"{res['seconds']:7.2f} s  {res['per_second']:8.0f} msgs/s{cpu}  load {res['load_average']:.1f}"
                      f"{boot}", flush=True)
    finally:
        sink.terminate()
        sink.wait(10)
        sink_cpu.close()
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = Path(__file__).parent / "results" / f"outbound-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "results": results, "machine": machine_info(Path(tempfile.gettempdir())),
                               "git": git_info()}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
