"""Crash safety under load (issue #8): the real server under SMTP in, IMAP and outbound delivery while its
processes are SIGKILLed in turn, then checked — shared by tests/integration/test_crash_load.py (CI size) and
`python -m bench.crash` (the full run).

The load, all against one `fastmail serve` (2 workers, 1 delivery process):

* SMTP senders (threads, smtplib): messages with unique Message-IDs to alice, bob, team@ (both), a remote
  recipient at sink.test, or a local and a remote one.  A message counts as *accepted* only when sendmail()
  returned (every recipient got its 250, the data its 250); the exact bytes sent are kept by Message-ID.
* IMAP clients (threads, imaplib) on alice's and bob's INBOX: SELECT, FETCH of the new messages' Message-ID,
  FETCH BODY.PEEK[] of known ones, UID STORE +FLAGS, APPEND (accepted on OK [APPENDUID]).
* The delivery process: every remote recipient is delivered to a sink (receivers.Receiver on 127.0.0.45)
  found through the MX of sink.test on a local DNS server (dnsserver.LocalDNS).

Faults: SIGKILL of the master, a worker, the delivery process, in turn, at random moments (a seeded RNG).
After a worker or delivery kill the master restarts it (we wait until the new one is ready); after a master
kill its children must notice (PR_SET_PDEATHSIG: a TERM, then their grace period) and exit, and the run
starts `fastmail serve` again on the same data directory.  Clients reconnect after a connection error.

What a client may see: a connection reset, EOF, a timeout-free BYE, SMTP 421 (a stopping worker).  Anything
else is a wrong answer: a NO/BAD, a reply other than 250, a FETCH whose bytes differ from what was accepted
under that Message-ID, a Message-ID at two UIDs or a UID with two Message-IDs, a UID seen once and gone
later (nothing is expunged here), a new message's UID not above every UID seen before it was sent, a
UIDVALIDITY that changes.

At the end (server stopped): `fastmail fsck --json` must report no problem (torn tails are notes: batches
whose commit never happened, by design), every accepted message is in each recipient's INBOX exactly once,
byte-identical; a message sent without its 250 may be there (at most once) or not; every accepted remote
recipient got the message at the sink at least once (at-least-once: duplicates are counted, not errors).
"""

from __future__ import annotations

import imaplib
import os
import random
import re
import signal
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .conftest import PASSWORDS, Server, free_port, make_server, poll
from .dnsserver import LocalDNS
from .receivers import Loop, Receiver

USERS = ("alice@example.org", "bob@example.org")
SINK_IP = "127.0.0.45"
KINDS = ("master", "worker", "delivery")
MSGID = re.compile(rb"^Message-ID: <([^>]+)>", re.M | re.I)
READY = re.compile(r"event=worker_ready kind=(\w+) index=\d+ pid=(\d+)")
# a connection the server dropped or that died with its process: the client reconnects
RESETS = (OSError, EOFError, imaplib.IMAP4.abort, smtplib.SMTPServerDisconnected)


def message_id(raw: bytes) -> str | None:
    head = raw.split(b"\r\n\r\n", 1)[0]
    m = MSGID.search(head)
    return m.group(1).decode() if m else None


@dataclass
class Ledger:
    """What every client sent and saw; the judge of "a wrong answer"."""

    run: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, bytes] = field(default_factory=dict)  # Message-ID -> the bytes sent (SMTP, APPEND)
    appended: set[str] = field(default_factory=set)  # of those, APPENDed (stored as sent, nothing added)
    users: dict[str, tuple[str, ...]] = field(default_factory=dict)  # Message-ID -> local recipients
    remote: dict[str, tuple[str, ...]] = field(default_factory=dict)  # Message-ID -> remote recipients
    accepted: set[str] = field(default_factory=set)  # got their 250 / OK [APPENDUID]
    floor: dict[tuple[str, str], int] = field(default_factory=dict)  # (user, Message-ID) -> max UID seen before
    max_uid: dict[str, int] = field(default_factory=dict)
    uid_of: dict[tuple[str, str], int] = field(default_factory=dict)  # (user, Message-ID) -> UID
    at_uid: dict[tuple[str, int], str] = field(default_factory=dict)  # (user, UID) -> Message-ID
    validity: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    seq: int = 0

    def new_message(self, kind: str, users: tuple[str, ...], remote: tuple[str, ...], rng: random.Random) -> tuple[str, bytes]:
        with self.lock:
            self.seq += 1
            mid = f"{kind}-{self.seq}.{self.run}@load.test"
        lines = [f"line {n} {rng.getrandbits(64):x}" + (" ." if n % 7 == 0 else "") for n in range(rng.randint(5, 300))]
        lines[rng.randrange(len(lines))] = "."  # a line that is only a dot: stuffed on the wire
        to = ", ".join(users + remote) or "undisclosed-recipients:;"
        raw = (f"From: <load@sink.test>\r\nTo: {to}\r\nSubject: crash load {mid}\r\nMessage-ID: <{mid}>\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()
        with self.lock:
            self.sent[mid] = raw
            if kind == "append":
                self.appended.add(mid)
            self.users[mid] = users
            self.remote[mid] = remote
            for u in users:
                self.floor[u, mid] = self.max_uid.get(u, 0)
        return mid, raw

    def accept(self, mid: str) -> None:
        with self.lock:
            self.accepted.add(mid)

    def bad(self, what: str) -> None:
        with self.lock:
            self.wrong.append(what)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def body_ok(self, mid: str | None, raw: bytes) -> bool:
        """The stored bytes are what was sent: exactly (APPEND), or after the trace fields the server adds."""
        if mid is None or mid not in self.sent:
            return False
        sent = self.sent[mid]
        if mid in self.appended:
            return raw == sent
        head = raw[: len(raw) - len(sent)]
        return raw.endswith(sent) and all(
            line[:1] in (b" ", b"\t") or line.split(b":", 1)[0].lower() in (b"received", b"return-path")
            for line in head.split(b"\r\n")[:-1])

    def seen(self, user: str, uid: int, mid: str | None) -> None:
        """An IMAP client saw message `mid` at `uid` in the user's INBOX."""
        with self.lock:
            if mid is None or mid not in self.sent:
                self.wrong.append(f"{user} uid {uid}: unknown message {mid}")
                return
            if user not in self.users[mid]:
                self.wrong.append(f"{user} uid {uid}: {mid} is not for this user")
            known = self.uid_of.setdefault((user, mid), uid)
            if known != uid:
                self.wrong.append(f"{user}: {mid} at uid {known} and at uid {uid}")
            other = self.at_uid.setdefault((user, uid), mid)
            if other != mid:
                self.wrong.append(f"{user} uid {uid}: {other} and {mid}")
            if uid <= self.floor.get((user, mid), 0):
                self.wrong.append(f"{user}: {mid} got uid {uid}, not above {self.floor[user, mid]} seen before it was sent")
            self.max_uid[user] = max(self.max_uid.get(user, 0), uid)

    def check_validity(self, user: str, validity: int) -> None:
        with self.lock:
            if self.validity.setdefault(user, validity) != validity:
                self.wrong.append(f"{user}: UIDVALIDITY {self.validity[user]} became {validity}")


# -- clients -----------------------------------------------------------------------------------------------


class Load:
    def __init__(self, srv: Server, ledger: Ledger, seed: int, smtp_clients: int, imap_clients: int) -> None:
        self.srv, self.ledger = srv, ledger
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._guard, args=(self._smtp, random.Random(f"{seed}-s{i}")),
                                         daemon=True) for i in range(smtp_clients)]
        self.threads += [threading.Thread(target=self._guard, args=(self._imap, random.Random(f"{seed}-i{i}"),
                                                                    USERS[i % len(USERS)]), daemon=True)
                         for i in range(imap_clients)]

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as e:  # a client that dies is a failure of the run, never silence
            self.ledger.bad(f"client thread died: {type(e).__name__}: {e}")

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self, timeout: float = 60.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = sum(t.is_alive() for t in self.threads)
        if alive:
            self.ledger.bad(f"{alive} client threads still running {timeout:.0f} s after the load stopped")

    def _smtp(self, rng: random.Random) -> None:
        led = self.ledger
        while not self.stop.is_set():
            try:
                s = smtplib.SMTP("127.0.0.1", self.srv.ports["smtp"], timeout=30)
            except (*RESETS, smtplib.SMTPConnectError) as e:
                if isinstance(e, smtplib.SMTPConnectError) and e.smtp_code != 421:
                    led.bad(f"smtp greeting: {e.smtp_code} {e.smtp_error!r}")
                led.count("smtp_connect_fail")
                self.stop.wait(0.05)
                continue
            try:
                s.ehlo("load.test")
                for _ in range(rng.randint(1, 40)):
                    if self.stop.is_set():
                        break
                    pick = rng.random()
                    users: tuple[str, ...] = ()
                    remote: tuple[str, ...] = ()
                    rcpts: list[str]
                    if pick < 0.3:
                        users, rcpts = (USERS[0],), [USERS[0]]
                    elif pick < 0.55:
                        users, rcpts = (USERS[1],), [USERS[1]]
                    elif pick < 0.7:
                        users, rcpts = USERS, ["team@example.org"]
                    elif pick < 0.9:
                        remote = (f"r{rng.randrange(50)}@sink.test",)
                        rcpts = list(remote)
                    else:
                        users, remote = (USERS[0],), (f"r{rng.randrange(50)}@sink.test",)
                        rcpts = [USERS[0], remote[0]]
                    mid, raw = led.new_message("smtp", users, remote, rng)
                    refused = s.sendmail("load@sink.test", rcpts, raw)
                    if refused:
                        led.bad(f"smtp {mid}: refused {refused}")
                    else:
                        led.accept(mid)
                        led.count("smtp_accepted")
                s.quit()
            except RESETS:
                led.count("smtp_reset")
            except smtplib.SMTPResponseException as e:
                if e.smtp_code == 421:  # a stopping worker says so
                    led.count("smtp_421")
                else:
                    led.bad(f"smtp: {e.smtp_code} {e.smtp_error!r}")
            except smtplib.SMTPRecipientsRefused as e:
                if all(code == 421 for code, _ in e.recipients.values()):
                    led.count("smtp_421")
                else:
                    led.bad(f"smtp: recipients refused {e.recipients}")
            finally:
                s.close()

    def _imap(self, rng: random.Random, user: str) -> None:
        led = self.ledger
        while not self.stop.is_set():
            try:
                m = imaplib.IMAP4("127.0.0.1", self.srv.ports["imap"], timeout=30)
            except (*RESETS, imaplib.IMAP4.error) as e:
                if isinstance(e, imaplib.IMAP4.error) and not isinstance(e, imaplib.IMAP4.abort) and "BYE" not in str(e):
                    led.bad(f"imap greeting: {e}")
                led.count("imap_connect_fail")
                self.stop.wait(0.05)
                continue
            try:
                self._imap_session(m, user, rng)
            except RESETS:
                led.count("imap_reset")
            except imaplib.IMAP4.error as e:
                led.bad(f"imap {user}: {e}")
            finally:
                try:
                    m.shutdown()
                except OSError:
                    pass
            self.stop.wait(rng.uniform(0, 0.2))

    def _imap_session(self, m: imaplib.IMAP4, user: str, rng: random.Random) -> None:
        led = self.ledger
        typ, data = m.login(user, PASSWORDS[user])
        typ, data = m.select("INBOX")
        if typ != "OK":
            led.bad(f"imap {user}: SELECT {typ} {data}")
            return
        typ, data = m.response("UIDVALIDITY")
        led.check_validity(user, int(data[0]))
        known: list[int] = []
        top = 0  # the highest UID this session knows
        for _ in range(rng.randint(10, 60)):
            if self.stop.is_set():
                break
            op = rng.random()
            if op < 0.35:  # what is new: UID and Message-ID of each
                typ, data = m.uid("FETCH", f"{top + 1}:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                self._expect(typ, data, user, "FETCH new")
                for uid, raw in _fetched(data):
                    if uid > top or uid not in known:
                        led.seen(user, uid, message_id(raw + b"\r\n"))
                        if uid not in known:
                            known.append(uid)
                        top = max(top, uid)
                led.count("imap_fetch_new")
            elif op < 0.7 and known:  # whole messages: the accepted bytes, and none gone
                uids = sorted(set(rng.choice(known) for _ in range(rng.randint(1, 4))))
                typ, data = m.uid("FETCH", ",".join(map(str, uids)), "(UID BODY.PEEK[])")
                self._expect(typ, data, user, "FETCH body")
                got = dict(_fetched(data))
                for uid in uids:
                    if uid not in got:
                        led.bad(f"{user} uid {uid}: seen before, gone now")
                        continue
                    mid = message_id(got[uid])
                    led.seen(user, uid, mid)
                    if not led.body_ok(mid, got[uid]):
                        led.bad(f"{user} uid {uid}: {mid}: bytes differ from those accepted")
                led.count("imap_fetch_body", len(uids))
            elif op < 0.85 and known:
                uid = rng.choice(known)
                flag = rng.choice(("\\Flagged", "\\Seen", "$crash"))
                typ, data = m.uid("STORE", str(uid), "+FLAGS", f"({flag})")
                self._expect(typ, data, user, "STORE")
                if not any(isinstance(d, bytes) and flag.encode() in d for d in data):
                    led.bad(f"{user} uid {uid}: STORE +FLAGS {flag} answered {data}")
                led.count("imap_store")
            else:
                mid, raw = led.new_message("append", (user,), (), rng)
                typ, data = m.append("INBOX", None, None, raw)  # type: ignore[arg-type]
                self._expect(typ, data, user, "APPEND")
                code = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0] or b"")
                if not code:
                    led.bad(f"{user}: APPEND {mid} without APPENDUID: {data}")
                    continue
                led.accept(mid)
                led.count("imap_append")
                led.check_validity(user, int(code.group(1)))
                led.seen(user, int(code.group(2)), mid)
            self.stop.wait(rng.uniform(0.01, 0.08))
        m.logout()

    def _expect(self, typ: str, data: Any, user: str, what: str) -> None:
        if typ != "OK":
            raise imaplib.IMAP4.error(f"{what}: {typ} {data}")


def _fetched(data: list[Any]) -> list[tuple[int, bytes]]:
    out = []
    for part in data:
        if isinstance(part, tuple):
            m = re.search(rb"UID (\d+)", part[0])
            if m:
                out.append((int(m.group(1)), part[1]))
    return out


# -- faults ------------------------------------------------------------------------------------------------


def _state(pid: int) -> tuple[str, int] | None:
    """(state letter, ppid) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _state(pid)
    return st is not None and st[0] not in ("Z", "X")


class Faults:
    """SIGKILL of each process kind in turn, with recovery: what happened is in .kills."""

    def __init__(self, srv: Server, rng: random.Random, workers: int) -> None:
        self.srv, self.rng, self.workers = srv, rng, workers
        self.kills: list[dict[str, Any]] = []
        self.log_from = 0

    def children(self) -> dict[str, list[int]]:
        """The current master's ready children, by kind."""
        assert self.srv.proc is not None
        master = self.srv.proc.pid
        with open(self.srv.log, errors="replace") as f:
            f.seek(self.log_from)
            text = f.read()
        out: dict[str, list[int]] = {}
        for kind, pid in READY.findall(text):
            st = _state(int(pid))
            if st is not None and st[1] == master and _alive(int(pid)):
                out.setdefault(kind, []).append(int(pid))
        return out

    def kill(self, n: int, kind: str) -> dict[str, Any]:
        srv = self.srv
        assert srv.proc is not None
        if kind == "master":
            pid = srv.proc.pid
            orphans = [p for pids in self.children().values() for p in pids]
        else:
            pids = self.children().get(kind, [])
            if not pids:
                raise AssertionError(f"no ready {kind} to kill: {self.children()}")
            pid = self.rng.choice(pids)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        rec: dict[str, Any] = {"n": n, "kind": kind, "pid": pid, "at": round(time.time(), 3)}
        if kind == "master":
            srv.proc.wait(10)
            # the children notice (PR_SET_PDEATHSIG: TERM) and stop within their grace period (5 s)
            if not poll(lambda: not any(_alive(p) for p in orphans), 30):
                left = [p for p in orphans if _alive(p)]
                raise AssertionError(f"children {left} of the killed master still alive after 30 s")
            rec["children_exit_s"] = round(time.monotonic() - t0, 2)
            self.log_from = srv.log.stat().st_size
            srv.start()
            if not poll(lambda: len(self.children().get("delivery", [])) >= 1, 30):
                raise AssertionError("no delivery process after the restart")
        else:
            def back() -> bool:
                now = self.children().get(kind, [])
                return pid not in now and len(now) >= (self.workers if kind == "worker" else 1)

            if not poll(back, 60):
                raise AssertionError(f"{kind} {pid} not replaced within 60 s: {self.children()}")
        rec["recovered_s"] = round(time.monotonic() - t0, 2)
        self.kills.append(rec)
        return rec


# -- one run -----------------------------------------------------------------------------------------------


def delivery_config(dns: LocalDNS, sink_port: int) -> str:
    return (f'trusted_networks = ["127.0.0.1/32"]\n\n[delivery]\nresolver = "{dns.address}"\nport = {sink_port}\n'
            "retry_base = 0.5\nretry_max = 2.0\nlifetime = 3600.0\nconnect_timeout = 5.0\nmta_sts = false\n")


def stored(data: Path, user: str) -> list[tuple[int, bytes]]:
    from fastmail.store.store import Store

    s = Store(data)
    try:
        mid = s.mailbox_id(s.get_user(user)["id"], "INBOX")
        return [(m["uid"], s.read_message(mid, m["uid"]) or b"") for m in s.list_messages(mid)]
    finally:
        s.close()


def queue_size(data: Path) -> int:
    from fastmail.store.store import Store

    s = Store(data)
    try:
        with s.read() as txn:
            return int(txn.stat(s.db["queue"])["entries"])
    finally:
        s.close()


def run(work: Path, kills: int, seed: int, *, smtp_clients: int = 3, imap_clients: int = 20,
        pause: tuple[float, float] = (1.0, 4.0), workers: int = 2, background: Any = None,
        log: Any = print) -> dict[str, Any]:
    """One crash run; returns what happened and what was found (the caller judges)."""
    rng = random.Random(seed)
    ledger = Ledger(run=f"{seed:x}")
    dns = LocalDNS().start()
    rloop = Loop()
    sink_port = free_port()
    dns.set("sink.test", ("MX", (10, "mx.sink.test.")))
    dns.set("mx.sink.test", ("A", SINK_IP))
    sink = Receiver(rloop, SINK_IP, sink_port).start()
    srv = make_server(work, workers=workers, extra=delivery_config(dns, sink_port))
    faults = Faults(srv, rng, workers)
    load = Load(srv, ledger, seed, smtp_clients, imap_clients)
    t_start = time.monotonic()
    result: dict[str, Any] = {"seed": seed, "kills_asked": kills, "smtp_clients": smtp_clients,
                              "imap_clients": imap_clients, "workers": workers}
    try:
        srv.start()
        poll(lambda: faults.children().get("delivery"), 30)
        load.start()
        if background is not None:
            background.start(srv)
        for n in range(kills):
            kind = KINDS[n % len(KINDS)]
            time.sleep(rng.uniform(*pause))
            rec = faults.kill(n, kind)
            log(f"kill {n + 1}/{kills}: {kind} pid {rec['pid']}, recovered in {rec['recovered_s']} s"
                + (f" (children gone in {rec['children_exit_s']} s)" if "children_exit_s" in rec else ""))
        time.sleep(rng.uniform(*pause))  # load on the last recovered server, too
        if background is not None:
            result["background"] = background.stop()
        load.finish()
        result["load_s"] = round(time.monotonic() - t_start, 1)
        remote_accepted = {(mid, r) for mid in ledger.accepted for r in ledger.remote[mid]}

        def delivered() -> set[tuple[str, str]]:
            with sink.lock:
                got = list(sink.messages)
            return {(message_id(x.data) or "", r) for x in got for r in x.accepted}

        drained = poll(lambda: queue_size(srv.data) == 0 and remote_accepted <= delivered(), 120)
        result["queue_drained"] = drained
        srv.stop()
        fsck_res = srv.cli("fsck", "--json", check=False)
        result["fsck"] = orjson.loads(fsck_res.stdout) if fsck_res.stdout else {"error": fsck_res.stderr.decode()}
        result["fsck_exit"] = fsck_res.returncode
        srv.cli("fsck", "--repair", check=False)  # the notes (torn tails) reclaimed: nothing left after it
        again = srv.cli("fsck", "--json", check=False)
        result["fsck_after_repair"] = orjson.loads(again.stdout) if again.stdout else {"error": again.stderr.decode()}
        result.update(_verify(srv, ledger, sink, remote_accepted))
    finally:
        load.stop.set()
        if background is not None:
            background.stop()
        srv.stop()
        srv.kill_tree()
        rloop.run(_stop(sink))
        rloop.close()
        dns.stop()
    result["kills"] = faults.kills
    result["kills_by_kind"] = dict(Counter(k["kind"] for k in faults.kills))
    result["counts"] = dict(ledger.counts)
    result["wrong_answers"] = ledger.wrong[:50]
    result["wrong_answer_count"] = len(ledger.wrong)
    result["seconds"] = round(time.monotonic() - t_start, 1)
    return result


async def _stop(r: Receiver) -> None:
    r.stop()


def _verify(srv: Server, ledger: Ledger, sink: Receiver, remote_accepted: set[tuple[str, str]]) -> dict[str, Any]:
    """Every accepted message once in each recipient's INBOX, byte-identical; nothing else but messages
    sent without their 250 (at most once each); every accepted remote recipient served by the sink."""
    out: dict[str, Any] = {"accepted": len(ledger.accepted), "sent": len(ledger.sent),
                           "accepted_append": len(ledger.accepted & ledger.appended)}
    lost: list[str] = []
    dups: list[str] = []
    bad: list[str] = []
    unacked_present = 0
    for user in USERS:
        found: Counter[str] = Counter()
        for uid, raw in stored(srv.data, user):
            mid = message_id(raw)
            if mid is None or mid not in ledger.sent or user not in ledger.users[mid]:
                bad.append(f"{user} uid {uid}: unexpected message {mid}")
                continue
            found[mid] += 1
            if not ledger.body_ok(mid, raw):
                bad.append(f"{user} uid {uid}: {mid} differs from the bytes sent")
            known = ledger.at_uid.get((user, uid))
            if known is not None and known != mid:
                bad.append(f"{user} uid {uid}: {mid} where a client saw {known}")
        expected = [mid for mid in ledger.accepted if user in ledger.users[mid]]
        lost += [f"{user}: {mid}" for mid in expected if found[mid] == 0]
        dups += [f"{user}: {mid} x{n}" for mid, n in found.items() if n > 1]
        unacked_present += sum(1 for mid in found if mid not in ledger.accepted)
        for (u, mid), uid in ledger.uid_of.items():  # whatever a client saw is still there, at its UID
            if u == user and found[mid] == 0:
                lost.append(f"{user}: {mid} (seen at uid {uid})")
    with sink.lock:
        got = list(sink.messages)
    per: Counter[tuple[str, str]] = Counter()
    for x in got:
        mid = message_id(x.data)
        if mid is None or mid not in ledger.sent:
            bad.append(f"sink: unexpected message {mid} from {x.mail!r}")
            continue
        if not ledger.body_ok(mid, x.data):
            bad.append(f"sink: {mid} differs from the bytes sent")
        for r in x.accepted:
            per[mid, r] += 1
    out.update({
        "lost": lost[:50], "lost_count": len(lost), "duplicates": dups[:50], "duplicate_count": len(dups),
        "bad_stored": bad[:50], "bad_stored_count": len(bad), "unacknowledged_present": unacked_present,
        "outbound_accepted": len(remote_accepted),
        "outbound_missing": sorted(f"{m} -> {r}" for m, r in remote_accepted - set(per))[:50],
        "outbound_missing_count": len(remote_accepted - set(per)),
        "outbound_delivered": sum(per.values()),
        "outbound_duplicates": sum(n - 1 for n in per.values() if n > 1),
        "outbound_unacknowledged_delivered": len(set(per) - remote_accepted),
    })
    return out
