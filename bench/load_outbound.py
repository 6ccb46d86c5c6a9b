"""Outbound delivery benchmark (issue #6): fastmail's delivery process vs Postfix's qmgr+smtp, same queue,
same receiver.

    python -m bench.load_outbound [--messages 10000] [--domains 100] [--size 4096] [--rounds 1]
                                  [--target fastmail,postfix] [--delivery-processes 1]

Both servers first get the same N messages of SIZE bytes, to recipients spread over D domains, with
delivery held back (fastmail: `delivery.processes = 0`; Postfix: `defer_transports = smtp`).  The measured
window is from releasing the queue (fastmail restarted with delivery processes; Postfix: defer_transports
cleared, `postfix reload`, `postqueue -f`) until the queue is empty.  Every message goes to one
`smtp-sink` on 127.0.0.30 (no TLS: it offers none).

Routing differs in one way, stated here: fastmail resolves the D domains' MX through a DNS server on
127.0.0.1 (dnslib, the tests' server; answers cached for their TTL), while Postfix, which can only ask the
resolver of /etc/resolv.conf on port 53, gets a transport_maps entry `smtp:[127.0.0.30]:PORT` per domain
(no MX lookup at all).  Needs root (Postfix's master, smtp-sink -u).
"""

from __future__ import annotations

import argparse
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


# -- fastmail ----------------------------------------------------------------------------------------------


def run_fastmail(work: Path, args: argparse.Namespace, dns: Any, sink_port: int) -> dict[str, Any]:
    from fastmail.store.store import Store
    from tests.integration.conftest import make_server

    (work / "fastmail").mkdir(parents=True)
    extra = (f'trusted_networks = ["127.0.0.1/32"]\n\n[delivery]\nresolver = "{dns.address}"\nport = {sink_port}\n'
             f"starttls = false\nmta_sts = false\nprocesses = 0\n")
    srv = make_server(work / "fastmail", workers=2, extra=extra)
    srv.start()
    try:
        injected = inject(srv.ports["smtp"], args.messages, args.domains, args.size)
        srv.stop()
        srv.config.write_text(srv.config.read_text().replace("processes = 0", f"processes = {args.delivery_processes}"))
        store = Store(srv.data)
        try:
            queued = len(store.queue_list())
            t0 = time.monotonic()
            srv.start()
            wait_until(lambda: store.queue_list() == [], 900, "fastmail queue empty")
            seconds = time.monotonic() - t0
        finally:
            store.close()
    finally:
        srv.stop()
        srv.kill_tree()
    sent = srv.log.read_text(errors="replace").count("result=sent")  # after the stop: every line flushed
    return {"target": "fastmail", "queued": queued, "sent": sent, "seconds": seconds, "inject_seconds": injected}


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


def _queued_files(spool: Path) -> int:
    total = 0
    for q in ("maildrop", "incoming", "active", "deferred"):
        for _, _, files in os.walk(spool / q):
            total += len(files)
    return total


def run_postfix(work: Path, args: argparse.Namespace, sink_port: int) -> dict[str, Any]:
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

    res = postfix("start")
    if res.returncode != 0:
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
        t0 = time.monotonic()
        postfix("reload")
        subprocess.run(["postqueue", "-c", str(d / "etc"), "-f"], check=True, timeout=60)
        wait_until(lambda: _queued_files(spool) == 0, 900, "postfix queue empty")
        seconds = time.monotonic() - t0
        sent = (d / "maillog").read_text(errors="replace").count("status=sent")
    finally:
        postfix("stop")
        shutil.rmtree(d, ignore_errors=True)
    return {"target": "postfix", "queued": queued, "sent": sent, "seconds": seconds, "inject_seconds": injected}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.load_outbound", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--domains", type=int, default=100)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--target", default="fastmail,postfix")
    p.add_argument("--delivery-processes", type=int, default=1)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (Postfix's master, smtp-sink -u)", file=sys.stderr)
        return 2
    from tests.integration.dnsserver import LocalDNS

    work = Path(tempfile.mkdtemp(prefix="fastmail-bench-outbound-"))
    dns = LocalDNS(ttl=3600).start()
    sink_port = free_port()
    for i in range(args.domains):
        dns.set(f"d{i}.test", ("MX", (10, "sink.bench.test.")))
    dns.set("sink.bench.test", ("A", SINK_IP))
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"{SINK_IP}:{sink_port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        for r in range(args.rounds):
            for target in args.target.split(","):
                if target == "fastmail":
                    res = run_fastmail(work / f"r{r}", args, dns, sink_port)
                else:
                    res = run_postfix(work / f"r{r}", args, sink_port)
                res["round"] = r + 1
                res["per_second"] = res["queued"] / res["seconds"]
                results.append(res)
                print(f"round {r + 1} {res['target']:9} {res['queued']:6} queued  {res['sent']:6} sent  "
                      f"{res['seconds']:7.2f} s  {res['per_second']:8.0f} msgs/s", flush=True)
    finally:
        sink.terminate()
        sink.wait(10)
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = Path(__file__).parent / "results" / f"outbound-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "results": results, "machine": machine_info(Path(tempfile.gettempdir())),
                               "git": git_info()}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
