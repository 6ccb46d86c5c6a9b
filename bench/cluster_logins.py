"""IMAP logins through the proxy tier vs straight to the mailbox node (issue #9, docs/scaling.md).

    python -m bench.cluster_logins [--logins 40] [--clients 1,4] [--rounds 3] [--ticket]

One fastmail node (cluster of one: node mb1 = 127.0.0.1, its auth_http endpoint on) and a private nginx with
its mail module in front of it (auth_http → fastmail, IMAP proxied to the node), both on loopback.  Each
measured op is LOGIN + SELECT INBOX + LOGOUT with imaplib, CLIENTS threads at once, LOGINS in all; every
login is checked (SELECT must answer OK).  With --ticket the node has cluster.ticket_key_file: auth_http
hands nginx a login ticket, and the node checks its HMAC instead of the password's argon2id a second time.  Per target and round: logins/s, and the CPU seconds per login of
fastmail's process tree and of nginx's (from /proc).  Needs root only for nothing; nginx and
libnginx-mod-mail from `make system-deps`.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.smtp.procfs import tree_cpu_seconds
from bench.smtp.report import git_info
from tests.integration.conftest import Server, free_port

USER, PASSWORD = "bench@example.org", "bench-password"
NGINX = "/usr/sbin/nginx"
MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
RESULTS = Path(__file__).resolve().parent / "results"


def start_node(tmp: Path, ticket: bool) -> tuple[Server, int]:
    ports: dict[str, int] = {}
    for name in ("smtp", "submission", "submissions", "lmtp", "imap", "imaps", "pop3", "pop3s", "auth_http"):
        while (port := free_port()) in ports.values():
            pass
        ports[name] = port
    extra = (f'[cluster]\nimap_port = {ports["imap"]}\nproxies = ["127.0.0.1/32"]\n'
             f'auth_http_listen = ["127.0.0.1:{ports["auth_http"]}"]\n')
    if ticket:
        (tmp / "cluster.key").write_bytes(os.urandom(32).hex().encode())
        extra += f'ticket_key_file = "{tmp / "cluster.key"}"\n'
    extra += '[cluster.nodes]\nmb1 = "127.0.0.1"\n'
    srv = Server(tmp, ports, workers=2, extra=extra)
    srv.cli("domain", "add", "example.org")
    srv.cli("user", "add", USER, "--password-stdin", input=PASSWORD.encode() + b"\n")
    srv.start()
    return srv, ports["auth_http"]


def start_nginx(tmp: Path, auth_port: int) -> tuple[subprocess.Popen[bytes], int]:
    prefix = tmp / "nginx"
    prefix.mkdir()
    port = free_port()
    (prefix / "nginx.conf").write_text(f"""
load_module {MAIL_MODULE};
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
mail {{
    auth_http 127.0.0.1:{auth_port}/auth;
    server {{ listen 127.0.0.1:{port}; protocol imap; imap_auth plain login; }}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(200):
        try:
            imaplib.IMAP4("127.0.0.1", port, timeout=2).shutdown()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nginx did not start")


def one_login(port: int) -> None:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        m.login(USER, PASSWORD)
        typ, _ = m.select("INBOX", readonly=True)
        if typ != "OK":
            raise AssertionError(f"SELECT answered {typ}")
    except BaseException:
        m.shutdown()
        raise
    m.logout()  # closes the socket


def run(port: int, logins: int, clients: int) -> float:
    """Seconds for LOGINS logins by CLIENTS threads."""
    per = [logins // clients + (1 if i < logins % clients else 0) for i in range(clients)]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for _ in range(n):
                one_login(port)
        except BaseException as e:  # noqa: BLE001 - reported after the join
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in per]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logins", type=int, default=40)
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ticket", action="store_true", help="login tickets (cluster.ticket_key_file)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fastmail-cluster-bench-"))
    srv, auth_port = start_node(tmp, args.ticket)
    nginx: subprocess.Popen[bytes] | None = None
    rows = []
    try:
        nginx, proxy_port = start_nginx(tmp, auth_port)
        assert srv.proc is not None
        targets = {"direct": srv.ports["imap"], "proxy+ticket" if args.ticket else "proxy": proxy_port}
        for port in targets.values():
            one_login(port)  # warm-up, and the check that both paths work
        for clients in (int(c) for c in args.clients.split(",")):
            for rnd in range(args.rounds):
                for name, port in targets.items():  # A B A B
                    f0, n0 = tree_cpu_seconds([srv.proc.pid]), tree_cpu_seconds([nginx.pid])
                    wall = run(port, args.logins, clients)
                    f1, n1 = tree_cpu_seconds([srv.proc.pid]), tree_cpu_seconds([nginx.pid])
                    rows.append({"target": name, "clients": clients, "round": rnd, "logins": args.logins,
                                 "wall_s": round(wall, 3), "logins_per_s": round(args.logins / wall, 2),
                                 "fastmail_cpu_ms_per_login": round((f1 - f0) * 1000 / args.logins, 1),
                                 "nginx_cpu_ms_per_login": round((n1 - n0) * 1000 / args.logins, 2)})
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        if nginx is not None:
            os.killpg(nginx.pid, signal.SIGTERM)
            nginx.wait(timeout=10)
        srv.stop()
        srv.kill_tree()
    print(f"\nIMAP LOGIN+SELECT+LOGOUT, {args.logins} logins per round, medians of {args.rounds} rounds; "
          f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
          f"commit {git_info()['commit'][:7]}{' (dirty)' if git_info()['dirty'] else ''}")
    print("| target | clients | logins/s | fastmail CPU ms/login | nginx CPU ms/login |\n|---|---:|---:|---:|---:|")
    for clients in sorted({r["clients"] for r in rows}):
        for name in ("direct", "proxy+ticket" if args.ticket else "proxy"):
            rs = [r for r in rows if r["target"] == name and r["clients"] == clients]
            print(f"| {name} | {clients} | {statistics.median(r['logins_per_s'] for r in rs):.1f} | "
                  f"{statistics.median(r['fastmail_cpu_ms_per_login'] for r in rs):.0f} | "
                  f"{statistics.median(r['nginx_cpu_ms_per_login'] for r in rs):.2f} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cluster_logins-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"rows": rows, "ticket": args.ticket, "git": git_info()}, indent=1))
    print(f"rows in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
