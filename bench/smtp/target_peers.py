"""The peers that run as one process each: aiosmtpd (bench/peers/aiosmtpd_maildir.py) and smtp-sink."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.smtp.target import RECIPIENT, Target, count_maildir, free_port, stop_process, wait_for_greeting

ROOT = Path(__file__).resolve().parents[2]


class AiosmtpdTarget(Target):
    """aiosmtpd on uvloop, one process; 250 only after the Maildir file and its rename are fsync'ed."""

    name = "aiosmtpd"
    stored_on_accept = True

    def __init__(self, python: str = sys.executable, threads: int = 16) -> None:
        self.python, self.threads = python, threads
        self.proc: subprocess.Popen[bytes] | None = None

    def check_installed(self) -> str | None:
        res = subprocess.run([self.python, "-c", "import aiosmtpd, uvloop"], capture_output=True, timeout=60)
        return None if res.returncode == 0 else "aiosmtpd is not installed: pip install -e '.[bench]'"

    def start(self, workdir: Path) -> None:
        self.port = free_port()
        self.maildir = workdir / "Maildir"
        self.log = workdir / "aiosmtpd.log"
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [self.python, "-m", "bench.peers.aiosmtpd_maildir", "--port", str(self.port), "--maildir",
                 str(self.maildir), "--recipient", RECIPIENT, "--threads", str(self.threads)],
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        proc = self.proc
        try:
            wait_for_greeting(self.host, self.port, lambda: proc.poll() is None)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"aiosmtpd did not start: {e}\n{self.log.read_text()[-2000:]}") from e

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def count_stored(self, detail: bool = True) -> dict[str, Any]:
        return count_maildir(self.maildir, detail)

    def stop(self) -> dict[str, Any]:
        code = stop_process(self.proc)
        self.proc = None
        text = self.log.read_text(errors="replace")
        m = re.findall(r"^accepted=(\d+)$", text, re.M)
        log: dict[str, Any] = {"problems": [ln[:400] for ln in text.splitlines()
                                            if "Traceback" in ln or "Error" in ln][:20]}
        if m:
            log["accepted"] = int(m[-1])
        return {"exit_code": code, "log": log}

    def versions(self) -> dict[str, str]:
        code = "import aiosmtpd, uvloop; print(aiosmtpd.__version__, uvloop.__version__)"
        res = subprocess.run([self.python, "-c", code], capture_output=True, text=True, timeout=60)
        parts = res.stdout.split()
        return {"aiosmtpd": parts[0], "uvloop": parts[1]} if len(parts) == 2 else {"error": res.stderr[-300:]}

    def settings(self) -> dict[str, Any]:
        return {"python": self.python, "delivery_threads": self.threads, "processes": 1,
                "delivery": "Maildir: write tmp/, fsync, rename to new/, fsync new/, then 250"}


class SmtpSinkTarget(Target):
    """Postfix's smtp-sink: answers everything, keeps nothing -- the ceiling of smtp-source on this machine.
    Its "stored" is what it counted as received (-c: "mesg=N" after each "."); the table says n/a."""

    name = "smtp-sink"
    stored_on_accept = True
    stores_mail = False
    USER = "nobody"  # -u: required when started as root; it drops to this user after binding

    def __init__(self, max_sessions: int = 1024, backlog: int = 1024) -> None:
        self.max_sessions, self.backlog = max_sessions, backlog
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, port: int | str) -> list[str]:
        # -m: sessions handled at once (default 256, below scenario d's 500); the last argument is the
        # listen backlog.
        return ["smtp-sink", "-c", "-u", self.USER, "-m", str(self.max_sessions), f"127.0.0.1:{port}",
                str(self.backlog)]

    def check_installed(self) -> str | None:
        return None if shutil.which("smtp-sink") else "smtp-sink not found (Debian: apt-get install postfix)"

    def start(self, workdir: Path) -> None:
        self.port = free_port()
        self.out = workdir / "smtp-sink.out"
        with open(self.out, "ab") as f:
            self.proc = subprocess.Popen(self.argv(self.port), stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True, stdin=subprocess.DEVNULL)
        proc = self.proc
        try:
            wait_for_greeting(self.host, self.port, lambda: proc.poll() is None)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"smtp-sink did not start: {e}\n{self.out.read_text()[-2000:]}") from e

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def count_stored(self, detail: bool = True) -> dict[str, Any]:
        with open(self.out, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 200))
            tail = f.read().decode(errors="replace")
        counts = re.findall(r"mesg=(\d+)", tail)
        return {"stored": int(counts[-1]) if counts else 0}

    def stop(self) -> dict[str, Any]:
        code = stop_process(self.proc)
        self.proc = None
        # It has no graceful stop: SIGTERM ends it, which is its normal end here.
        return {"exit_code": 0 if code == -signal.SIGTERM else code, "raw_exit": code, "log": {}}

    def versions(self) -> dict[str, str]:
        res = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=30)
        return {"smtp-sink (postfix)": res.stdout.strip() or "unknown"}

    def settings(self) -> dict[str, Any]:
        return {"argv": " ".join(self.argv("PORT"))}
