"""fastmail: `python -m fastmail serve -c FILE` with default settings except data dir, loopback ports, workers.

The variants of issue #7 add the checks of incoming mail to that configuration (FEATURES):

- `fastmail-checks`: `checks.enabled` — SPF, DKIM, ARC, DMARC, iprev (FCrDNS, `checks.fcrdns = "tag"`), a
  DNSBL and a DNSWL zone — asking the run's DNS server (`checks.resolver`, bench/smtp/services.py);
- `fastmail-rspamd`: the checks and rspamd (`rspamd.url`); `fastmail-clamd`: the checks and clamd
  (`clamav.address`, its unix socket); `fastmail-all`: the checks, rspamd and clamd.

Issue #9's variant `fastmail-metrics` sets `metrics.listen` (no checks): the workers count into their
metrics files (fastmail.metrics) instead of in memory, and the metrics process runs (never scraped).

Greylisting stays off and the rate limits unset (both written out, as their defaults): smtp-source never
retries a 451.  `smtp.trusted_networks` stays empty: a trusted client skips the checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.smtp.services import DNSBL_ZONE, DNSWL_ZONE, Services
from bench.smtp.target import DOMAIN, RECIPIENT, Target, free_port, stop_process, wait_for_greeting

ROOT = Path(__file__).resolve().parents[2]

# name -> what is on besides the defaults: "checks" (SPF, DKIM, ARC, DMARC, iprev, DNSBL/DNSWL), "rspamd", "clamd"
FEATURES: dict[str, tuple[str, ...]] = {
    "fastmail": (),
    "fastmail-checks": ("checks",),
    "fastmail-rspamd": ("checks", "rspamd"),
    "fastmail-clamd": ("checks", "clamd"),
    "fastmail-all": ("checks", "rspamd", "clamd"),
    "fastmail-metrics": ("metrics",),
}
# What every message from smtp-source must get in the "checked" log line: anything else (a temperror, a
# missing result) means a check did not really run, and the round fails.  rspamd's action: any that delivers.
SPAM_ACTIONS = {"no_action", "greylist", "add_header", "rewrite_subject"}


def expected_results(features: tuple[str, ...], signed: bool) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    if "checks" in features:
        out.update(spf={"pass"}, dkim={"pass" if signed else "none"}, dmarc={"pass"}, arc={"none"},
                   iprev={"pass"}, dnsbl={"clean"})
    if "clamd" in features:
        out["virus"] = {"clean"}
    if "rspamd" in features:
        out["spam_action"] = SPAM_ACTIONS
    return out


class FastmailTarget(Target):
    name = "fastmail"
    stored_on_accept = True  # "No 250 until durable": the message is in its folder when 250 is sent

    def __init__(self, workers: int, python: str = sys.executable, *, name: str = "fastmail",
                 services: Services | None = None, signed: bool = False) -> None:
        self.workers = workers
        self.python = python
        self.name = name
        self.features = FEATURES[name]
        self.services = services
        self.signed = signed  # smtp-source sends the DKIM-signed message (-F)
        self.uses = (("dns",) if "checks" in self.features else ()) + tuple(f for f in ("rspamd", "clamd") if f in self.features)
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = Path()

    def _cli(self, *args: str, input: bytes | None = None) -> str:
        res = subprocess.run([self.python, "-m", "fastmail", *args, "-c", str(self.config)], input=input,
                             capture_output=True, timeout=120, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"fastmail {' '.join(args)}: {res.stderr.decode().strip()}")
        return res.stdout.decode()

    def check_installed(self) -> str | None:
        res = subprocess.run([self.python, "-c", "import fastmail, uvloop, lmdb"], capture_output=True,
                             cwd=ROOT, timeout=60)
        return None if res.returncode == 0 else "fastmail is not importable: make compile"

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = workdir / "fastmail.toml"
        self.log = workdir / "server.log"
        ports: list[int] = []
        while len(ports) < 4:  # the kernel may hand out a port again once it is free: keep them distinct
            port = free_port()
            if port not in ports:
                ports.append(port)
        self.port, others = ports[0], ports[1:]
        # SMTP only: the mailbox listeners (IMAP, POP3) are off so their default ports cannot collide.
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
imap = []
imaps = []
pop3 = []
pop3s = []

[smtp]
# smtp-source opens up to 500 sessions from 127.0.0.1 (scenario d): the per-address cap (200 per worker) off
max_connections_per_ip = 0
{self._checks_config()}""")
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

    def _checks_config(self) -> str:
        if "metrics" in self.features:
            return f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
        if not self.features:
            return ""
        svc = self.services
        assert svc is not None and svc.dns_address, "the run's services must be started before the target"
        out = f"""
[checks]
enabled = true
resolver = "{svc.dns_address}"
dnsbl = ["{DNSBL_ZONE}"]
dnswl = ["{DNSWL_ZONE}"]

[greylist]
enabled = false

[ratelimit]
connections_per_ip = 0
messages_per_ip = 0
"""
        if "rspamd" in self.features:
            assert svc.rspamd is not None
            out += f'\n[rspamd]\nurl = "{svc.rspamd.url}"\n'
        if "clamd" in self.features:
            assert svc.clamd is not None
            out += f'\n[clamav]\naddress = "{svc.clamd.unix_address}"\n'
        return out

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def count_stored(self, detail: bool = True) -> dict[str, Any]:
        """Every message of the recipient: INBOX and each other folder with messages (Junk, where rspamd's
        "add header" or DMARC quarantine would put one), cross-checked with the folders' `exists`."""
        boxes = json.loads(self._cli("mailbox", "list", RECIPIENT, "--json"))
        by_box: dict[str, int] = {}
        exists = smallest = 0
        for b in boxes:
            if b["name"] != "INBOX" and not b["exists"]:
                continue
            msgs = json.loads(self._cli("message", "list", RECIPIENT, b["name"], "--json"))
            by_box[b["name"]] = len(msgs)
            exists += b["exists"]
            if msgs:
                least = min(m["size"] for m in msgs)
                smallest = least if not smallest else min(smallest, least)
        stored = sum(by_box.values())
        return {"stored": stored, "exists": exists, "min_size": smallest, "by_mailbox": by_box,
                "outside_inbox": stored - by_box.get("INBOX", 0)}

    def check_log(self, log: dict[str, Any], accepted: int) -> list[str]:
        problems = []
        if log.get("refused"):
            problems.append(f"{log['refused']} messages refused by the checks: {log.get('refused_reasons')}")
        expected = expected_results(self.features, self.signed)
        if expected and log.get("checked", 0) != accepted:
            problems.append(f"{log.get('checked', 0)} 'checked' log lines for {accepted} accepted messages")
        results = log.get("results", {})
        for key, allowed in expected.items():
            got = results.get(key, {})
            wrong = {v: n for v, n in got.items() if v not in allowed}
            if wrong or sum(got.values()) != accepted:
                problems.append(f"{key} results {got} (expected {'/'.join(sorted(allowed))} for all {accepted})")
        return problems

    def stop(self) -> dict[str, Any]:
        code = stop_process(self.proc)
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
        out = {"workers": self.workers, "python": self.python, "config": "defaults except data_dir, "
               "loopback ports, workers (max_message_size default 50 MiB)"}
        if self.features:
            out["features"] = list(self.features)
            out["config_added"] = self._checks_config()
            out["expected_results"] = {k: sorted(v) for k, v in expected_results(self.features, self.signed).items()}
        return out


def scan_fastmail_log(path: Path) -> dict[str, Any]:
    """Levels, accepted messages, group-commit figures, abnormal worker exits; warnings/errors kept; the
    checks' results ("checked" lines: spf=pass ... folder=INBOX, counted per key and value; refusals)."""
    levels: dict[str, int] = {}
    out: dict[str, Any] = {"accepted": 0, "commit_batches": 0, "commit_messages": 0, "largest_batch": 0,
                           "worker_bad_exits": 0, "respawns": 0, "problems": [], "unstructured": []}
    results: dict[str, dict[str, int]] = {}
    refused: dict[str, int] = {}
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
        elif ev == "checked":
            out["checked"] = out.get("checked", 0) + 1
            for key in CHECK_KEYS:
                if key in fields:
                    counts = results.setdefault(key, {})
                    counts[fields[key]] = counts.get(fields[key], 0) + 1
        elif ev == "refused" and "qid" in fields:  # a message refused at DATA (not a refused connection)
            why = fields.get("reply", "?")
            refused[why] = refused.get(why, 0) + 1
        if level == "other" and len(out["unstructured"]) < 5:
            out["unstructured"].append(line[:400])
        elif level not in ("info", "debug", "other") and len(out["problems"]) < 20:
            out["problems"].append(line[:400])
    out["levels"] = levels
    if results:
        out["results"] = results
    if refused:
        out["refused"] = sum(refused.values())
        out["refused_reasons"] = refused
    return out


# the result fields of a "checked" line that are counted (the spam score is not: it is a number)
CHECK_KEYS = ("spf", "dkim", "dmarc", "arc", "iprev", "dnsbl", "virus", "spam_action", "folder")
