"""Soak (issue #8): a long mixed load at a steady pace — SMTP in, IMAP sync, POP3 download+delete, outbound
to a sink — with the RSS of every fastmail process sampled over time; reports errors (should be 0),
messages lost (should be 0) and RSS growth (the mean of the last quarter of the run against the first).

    python -m bench.soak [--minutes 30] [--interval 10] [--rate 10] [--remote 0.2] [--smtp-clients 2]
                         [--imap-clients 4] [--pop3-clients 1] [--workers 2] [--keep DIR]

`--minutes 1` is a smoke run.  The server is the real `fastmail serve` (tests/integration/conftest.py), with
the delivery process routing sink.test through a DNS server on 127.0.0.1 (dnsserver.LocalDNS) to a scripted
receiver (receivers.Receiver on 127.0.0.46, its record of messages emptied at every sample).  The load:

* SMTP in: `--rate` messages a second in all (paced, not as fast as possible), over `--smtp-clients`
  sessions of up to 50 messages each, to alice, bob, team@ (both), carol, or (a `--remote` share) a
  recipient at sink.test;
* IMAP sync (alice, bob; `--imap-clients` in all): every ~2 s log in, SELECT INBOX, UID FETCH the new
  messages whole, check each against what was sent (SHA-256 of the bytes, by Message-ID), flag them
  \\Seen \\Deleted and EXPUNGE — the mailboxes stay small, so memory has no reason to grow;
* POP3 (carol): every ~3 s log in, RETR every message (checked the same way), DELE, QUIT;
* outbound: every remote recipient accepted must reach the sink (checked at the end).

Every `--interval` seconds: the RSS (VmRSS) of the master and of each child, by kind, the queue length, and
what the load did since the last sample.  An error is anything a client did not expect (a refused or failed
command, a dropped connection, a message whose bytes differ); a message is lost when it got its 250 and no
client fetched it and it is not in its mailbox at the end.  Prints a table, writes
bench/results/soak-YYYYMMDD-HHMMSS.json.  Exit status 1 when an error, a loss or a missing outbound message
was seen.
"""

from __future__ import annotations

import argparse
import hashlib
import imaplib
import json
import poplib
import random
import shutil
import smtplib
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.smtp.procfs import process_tree
from bench.smtp.report import git_info, machine_info

RESULTS = Path(__file__).resolve().parent / "results"
SINK_IP = "127.0.0.46"


class Soak:
    def __init__(self, srv: Any, args: argparse.Namespace, seed: int) -> None:
        self.srv, self.args = srv, args
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent: dict[str, tuple[int, bytes]] = {}  # Message-ID -> (length, SHA-256) of the bytes sent
        self.users: dict[str, tuple[str, ...]] = {}
        self.remote: dict[str, str] = {}  # Message-ID -> the remote recipient
        self.accepted: set[str] = set()
        self.fetched: set[tuple[str, str]] = set()  # (user, Message-ID) fetched by IMAP or POP3
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.seq = 0

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def error(self, what: str) -> None:
        with self.lock:
            self.counts["errors"] += 1
            if len(self.errors) < 200:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {what}")

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def check(self, user: str, raw: bytes, where: str) -> None:
        from tests.integration.crashload import message_id

        mid = message_id(raw)
        with self.lock:
            known = self.sent.get(mid or "")
            if known is None or user not in self.users[mid or ""]:
                self.counts["errors"] += 1
                self.errors.append(f"{where} {user}: unexpected message {mid}")
                return
            self.fetched.add((user, mid or ""))
        size, digest = known
        if len(raw) < size or hashlib.sha256(raw[-size:]).digest() != digest:
            self.error(f"{where} {user}: {mid} differs from the bytes sent")

    def message(self, rng: random.Random) -> tuple[str, list[str], bytes]:
        with self.lock:
            self.seq += 1
            mid = f"soak-{self.seq}@load.test"
        pick = rng.random()
        remote = ""
        if pick < self.args.remote:
            remote = f"r{rng.randrange(100)}@sink.test"
            users: tuple[str, ...] = ()
            rcpts = [remote]
        elif pick < 0.5:
            users, rcpts = ("alice@example.org",), ["alice@example.org"]
        elif pick < 0.7:
            users, rcpts = ("bob@example.org",), ["bob@example.org"]
        elif pick < 0.8:
            users, rcpts = ("alice@example.org", "bob@example.org"), ["team@example.org"]
        else:
            users, rcpts = ("carol@example.org",), ["carol@example.org"]
        body = "".join(f"line {n} {rng.getrandbits(64):x}\r\n" for n in range(rng.randint(10, 200)))
        raw = (f"From: <soak@sink.test>\r\nTo: {', '.join(rcpts)}\r\nSubject: soak {mid}\r\nMessage-ID: <{mid}>\r\n"
               f"\r\n{body}").encode()
        with self.lock:
            self.sent[mid] = (len(raw), hashlib.sha256(raw).digest())
            self.users[mid] = users
            if remote:
                self.remote[mid] = remote
        return mid, rcpts, raw

    # -- clients -------------------------------------------------------------------------------------------

    def smtp(self, k: int) -> None:
        rng = random.Random(self.rng.random())
        per = self.args.rate / self.args.smtp_clients
        t0 = time.monotonic()
        n = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.srv.ports["smtp"], timeout=60) as s:
                    for _ in range(50):
                        wait = t0 + n / per - time.monotonic()
                        if wait > 0 and self.stop.wait(wait):
                            return
                        n += 1
                        mid, rcpts, raw = self.message(rng)
                        refused = s.sendmail("soak@sink.test", rcpts, raw)
                        if refused:
                            self.error(f"smtp {mid}: refused {refused}")
                        else:
                            with self.lock:
                                self.accepted.add(mid)
                                self.counts["smtp_accepted"] += 1
            except (OSError, smtplib.SMTPException) as e:
                self.error(f"smtp: {type(e).__name__}: {e}")
                self.stop.wait(1)

    def imap(self, user: str, k: int) -> None:
        from tests.integration.conftest import PASSWORDS

        rng = random.Random(self.rng.random())
        while not self.stop.wait(rng.uniform(1.0, 3.0)):
            try:
                with imaplib.IMAP4("127.0.0.1", self.srv.ports["imap"], timeout=60) as m:
                    m.login(user, PASSWORDS[user])
                    typ, data = m.select("INBOX")
                    if typ != "OK":
                        self.error(f"imap {user}: SELECT {typ} {data}")
                        continue
                    if int(data[0] or 0) == 0:
                        self.count("imap_syncs")
                        continue
                    typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
                    if typ != "OK":
                        self.error(f"imap {user}: FETCH {typ} {data}")
                        continue
                    uids = []
                    for part in data:
                        if isinstance(part, tuple):
                            uids.append(part[0].split(b"UID ")[1].split()[0].decode())
                            self.check(user, part[1], "imap")
                    if uids:
                        typ, data = m.uid("STORE", ",".join(uids), "+FLAGS.SILENT", "(\\Seen \\Deleted)")
                        if typ != "OK":
                            self.error(f"imap {user}: STORE {typ} {data}")
                            continue
                        typ, data = m.expunge()
                        if typ != "OK":
                            self.error(f"imap {user}: EXPUNGE {typ} {data}")
                    self.count("imap_syncs")
                    self.count("imap_fetched", len(uids))
            except (OSError, imaplib.IMAP4.error) as e:
                self.error(f"imap {user}: {type(e).__name__}: {e}")

    def pop3(self, user: str, k: int) -> None:
        from tests.integration.conftest import PASSWORDS

        rng = random.Random(self.rng.random())
        while not self.stop.wait(rng.uniform(2.0, 4.0)):
            try:
                p = poplib.POP3("127.0.0.1", self.srv.ports["pop3"], timeout=60)
                try:
                    p.user(user)
                    p.pass_(PASSWORDS[user])
                    count, _ = p.stat()
                    for i in range(1, count + 1):
                        raw = b"\r\n".join(p.retr(i)[1]) + b"\r\n"
                        self.check(user, raw, "pop3")
                        p.dele(i)
                    p.quit()
                    self.count("pop3_sessions")
                    self.count("pop3_retrieved", count)
                finally:
                    p.close()
            except poplib.error_proto as e:
                if b"[IN-USE]" in str(e).encode() and self.args.pop3_clients > 1:
                    self.count("pop3_in_use")  # another of our POP3 clients has the maildrop
                else:
                    self.error(f"pop3 {user}: {e}")
            except OSError as e:
                self.error(f"pop3 {user}: {type(e).__name__}: {e}")


# -- sampling ------------------------------------------------------------------------------------------------


def rss_by_process(srv: Any, log_from: int, field: str = "VmRSS") -> dict[str, int]:
    """VmRSS (KiB) of the master and each of its children, labelled master / worker-PID / delivery-PID; or
    another field of /proc/PID/status (RssAnon: the heap, without the LMDB map's and the libraries' file
    pages, which grow with the index and are the kernel's to drop)."""
    from tests.integration.crashload import READY

    assert srv.proc is not None
    master = srv.proc.pid
    with open(srv.log, errors="replace") as f:
        f.seek(log_from)
        kinds = {int(pid): kind for kind, pid in READY.findall(f.read())}
    out = {}
    for pid in process_tree([master]):
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
        except OSError:
            continue
        label = "master" if pid == master else f"{kinds.get(pid, 'child')}-{pid}"
        out[label] = rss
    return out


def _kind(label: str) -> str:
    return label.split("-")[0]


def growth(samples: list[dict[str, Any]], key: str = "rss_kib") -> dict[str, Any]:
    """Per kind (and in all): mean RSS of the first and of the last quarter of the samples, and the change."""
    q = max(1, len(samples) // 4)
    out = {}
    for kind in sorted({_kind(k) for s in samples for k in s[key]} | {"total"}):
        def at(s: dict[str, Any], kind: str = kind) -> int:
            return sum(v for k, v in s[key].items() if kind == "total" or _kind(k) == kind)

        first = sum(at(s) for s in samples[:q]) / q
        last = sum(at(s) for s in samples[-q:]) / q
        low0, low1 = min(at(s) for s in samples[:q]), min(at(s) for s in samples[-q:])
        out[kind] = {"first_quarter_mib": round(first / 1024, 1), "last_quarter_mib": round(last / 1024, 1),
                     "change_mib": round((last - first) / 1024, 1),
                     "change_pct": round(100 * (last - first) / first, 1) if first else None,
                     "first_quarter_min_mib": round(low0 / 1024, 1), "last_quarter_min_mib": round(low1 / 1024, 1),
                     "min_change_mib": round((low1 - low0) / 1024, 1),
                     "min_change_pct": round(100 * (low1 - low0) / low0, 1) if low0 else None}
    return out


def main(argv: list[str] | None = None) -> int:
    from tests.integration.conftest import make_server, poll
    from tests.integration.crashload import delivery_config, message_id, queue_size, stored
    from tests.integration.dnsserver import LocalDNS
    from tests.integration.receivers import Loop, Receiver

    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--rate", type=float, default=10.0, help="SMTP messages a second, in all")
    p.add_argument("--remote", type=float, default=0.2, help="share of the messages to a remote recipient")
    p.add_argument("--smtp-clients", type=int, default=2)
    p.add_argument("--imap-clients", type=int, default=4)
    p.add_argument("--pop3-clients", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", default="", help="run in this directory and keep it (default: a temp dir, removed)")
    args = p.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fastmail-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    dns = LocalDNS().start()
    rloop = Loop()
    from tests.integration.conftest import free_port

    sink_port = free_port()
    dns.set("sink.test", ("MX", (10, "mx.sink.test.")))
    dns.set("mx.sink.test", ("A", SINK_IP))
    sink = Receiver(rloop, SINK_IP, sink_port).start()
    srv = make_server(work, workers=args.workers, extra=delivery_config(dns, sink_port))
    soak = Soak(srv, args, args.seed)
    delivered: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    print(f"bench.soak: {args.minutes} min, {args.rate} msg/s in ({args.remote:.0%} remote), {args.imap_clients} IMAP, "
          f"{args.pop3_clients} POP3 clients, {args.workers} workers; sample every {args.interval} s; data in {work}",
          flush=True)

    def drain_sink() -> None:
        with sink.lock:
            got = list(sink.messages)
            sink.messages.clear()
            sink.transcript.clear()
            sink.ahead.clear()
            sink.ahead_of_end.clear()
        for x in got:
            mid = message_id(x.data)
            if mid is None or mid not in soak.remote:
                soak.error(f"sink: unexpected message {mid} from {x.mail!r}")
                continue
            size, digest = soak.sent[mid]
            if hashlib.sha256(x.data[-size:]).digest() != digest:
                soak.error(f"sink: {mid} differs from the bytes sent")
            delivered[mid] += 1

    t_start = time.monotonic()
    result: dict[str, Any] = {"args": vars(args)}
    try:
        srv.start()
        log_from = 0
        threads = [threading.Thread(target=soak.smtp, args=(k,), daemon=True) for k in range(args.smtp_clients)]
        threads += [threading.Thread(target=soak.imap, args=(("alice@example.org", "bob@example.org")[k % 2], k),
                                     daemon=True) for k in range(args.imap_clients)]
        threads += [threading.Thread(target=soak.pop3, args=("carol@example.org", k), daemon=True)
                    for k in range(args.pop3_clients)]
        for t in threads:
            t.start()
        end = t_start + args.minutes * 60
        last: Counter[str] = Counter()
        header = f"{'t (s)':>7} {'in/s':>6} {'out/s':>6} {'imap':>6} {'pop3':>6} {'queue':>6} {'errors':>6}  RSS MiB: master, workers, delivery, total"
        print(header, flush=True)
        while time.monotonic() < end:
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
            drain_sink()
            now = time.monotonic() - t_start
            with soak.lock:
                counts = Counter(soak.counts)
            rss = rss_by_process(srv, log_from)
            d = {k: counts[k] - last[k] for k in counts}
            span = now - (samples[-1]["t"] if samples else 0.0)
            out_total = sum(delivered.values())
            s = {"t": round(now, 1), "rss_kib": rss, "anon_kib": rss_by_process(srv, log_from, "RssAnon"),
                 "queue": queue_size(srv.data), "counts": dict(counts),
                 "delivered": out_total}
            out_rate = (out_total - (samples[-1]["delivered"] if samples else 0)) / span
            samples.append(s)
            last = counts
            by = {kind: sum(v for k, v in rss.items() if _kind(k) == kind) / 1024 for kind in ("master", "worker", "delivery")}
            print(f"{now:7.0f} {d.get('smtp_accepted', 0) / span:6.1f} {out_rate:6.1f} {d.get('imap_fetched', 0):6d} "
                  f"{d.get('pop3_retrieved', 0):6d} {s['queue']:6d} {counts['errors']:6d}  "
                  f"{by['master']:.1f}, {by['worker']:.1f}, {by['delivery']:.1f}, {sum(rss.values()) / 1024:.1f}",
                  flush=True)
        soak.stop.set()
        for t in threads:
            t.join(90)
        remote_accepted = {mid for mid in soak.accepted if mid in soak.remote}

        def outbound_done() -> bool:
            drain_sink()
            return queue_size(srv.data) == 0 and remote_accepted <= set(delivered)

        result["queue_drained"] = poll(outbound_done, 120)
        srv.stop()
        fsck_res = srv.cli("fsck", "--json", check=False)
        result["fsck"] = json.loads(fsck_res.stdout) if fsck_res.stdout else {"error": fsck_res.stderr.decode()}
        # lost: accepted for a user, fetched by no client, and not in the mailbox either
        still = {(u, message_id(raw) or "") for u in ("alice@example.org", "bob@example.org", "carol@example.org")
                 for _, raw in stored(srv.data, u)}
        lost = sorted(f"{u}: {mid}" for mid in soak.accepted for u in soak.users[mid]
                      if (u, mid) not in soak.fetched and (u, mid) not in still)
        result.update({
            "seconds": round(time.monotonic() - t_start, 1), "counts": dict(soak.counts),
            "errors": soak.errors, "error_count": soak.counts["errors"],
            "lost": lost[:50], "lost_count": len(lost),
            "outbound_accepted": len(remote_accepted), "outbound_delivered": sum(delivered.values()),
            "outbound_missing_count": len(remote_accepted - set(delivered)),
            "outbound_duplicates": sum(n - 1 for n in delivered.values() if n > 1),
            "samples": samples, "rss_growth": growth(samples), "anon_growth": growth(samples, "anon_kib"),
        })
    finally:
        soak.stop.set()
        srv.stop()
        srv.kill_tree()
        rloop.run(_stop(sink))
        rloop.close()
        dns.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result.update(machine=machine_info(Path(tempfile.gettempdir())), git=git_info(), python=sys.version.split()[0],
                  command=" ".join(["python -m bench.soak", *(argv if argv is not None else sys.argv[1:])]))
    c = result["counts"]
    print(f"\nran {result['seconds']} s: SMTP accepted {c.get('smtp_accepted', 0)}, IMAP syncs {c.get('imap_syncs', 0)} "
          f"({c.get('imap_fetched', 0)} messages fetched, checked, expunged), POP3 sessions {c.get('pop3_sessions', 0)} "
          f"({c.get('pop3_retrieved', 0)} retrieved, checked, deleted), outbound {result['outbound_delivered']} of "
          f"{result['outbound_accepted']} (missing {result['outbound_missing_count']}, duplicates "
          f"{result['outbound_duplicates']})")
    print(f"errors {result['error_count']}, lost {result['lost_count']}, fsck problems "
          f"{len(result['fsck'].get('problems', [1]))}")
    print("RSS, first vs last quarter of the samples: the mean, and the lowest (a login's argon2id check holds 64 MiB "
          "while it runs: the mean of the workers moves with how many were caught in one)")
    for kind, g in result["rss_growth"].items():
        print(f"  {kind:<9} mean {g['first_quarter_mib']:7.1f} -> {g['last_quarter_mib']:7.1f} MiB "
              f"({g['change_mib']:+.1f} MiB, {g['change_pct']:+.1f}%);  lowest {g['first_quarter_min_mib']:7.1f} -> "
              f"{g['last_quarter_min_mib']:7.1f} MiB ({g['min_change_mib']:+.1f} MiB, {g['min_change_pct']:+.1f}%)")
    print("RssAnon (heap only), first vs last quarter, lowest:")
    for kind, g in result["anon_growth"].items():
        print(f"  {kind:<9} {g['first_quarter_min_mib']:7.1f} -> {g['last_quarter_min_mib']:7.1f} MiB "
              f"({g['min_change_mib']:+.1f} MiB, {g['min_change_pct']:+.1f}%)")
    for e in result["errors"][:10]:
        print("  error:", e)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("soak-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")
    bad = result["error_count"] or result["lost_count"] or result["outbound_missing_count"] or \
        result["fsck"].get("problems", [1]) or not result["queue_drained"]
    return 1 if bad else 0


async def _stop(r: Any) -> None:
    r.stop()


if __name__ == "__main__":
    sys.exit(main())
