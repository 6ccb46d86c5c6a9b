"""fastmail: `python -m fastmail serve -c FILE` with default settings except data dir, loopback ports, workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.smtp.target import DOMAIN, RECIPIENT, Target, free_port, stop_process, wait_for_greeting

ROOT = Path(__file__).resolve().parents[2]


class FastmailTarget(Target):
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

    def check_installed(self) -> str | None:
        res = subprocess.run([self.python, "-c", "import fastmail, uvloop, lmdb"], capture_output=True,
                             cwd=ROOT, timeout=60)
        return None if res.returncode == 0 else "fastmail is not importable: make compile"

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = workdir / "fastmail.toml"
        self.log = workdir / "server.log"
        self.port = free_port()
        others = [free_port() for _ in range(3)]
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

    def count_stored(self, detail: bool = True) -> dict[str, Any]:
        boxes = json.loads(self._cli("mailbox", "list", RECIPIENT, "--json"))
        exists = next(b["exists"] for b in boxes if b["name"] == "INBOX")
        msgs = json.loads(self._cli("message", "list", RECIPIENT, "INBOX", "--json"))
        return {"stored": len(msgs), "inbox_exists": exists, "min_size": min((m["size"] for m in msgs), default=0)}

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
