"""fastmail: `python -m fastmail serve -c FILE` with its IMAP listener on a loopback port.

Default settings except data_dir, every listener on a free loopback port (`listen.imap` and the others,
which the server starts anyway; SMTP is the fallback way to seed) and `workers`; extra settings from
--fastmail-set.  LOGIN in plaintext from loopback is fastmail's default (`imap.plaintext_auth_loopback`).  The
domain and bench@example.org are added with the CLI, as in the SMTP bench.

Seeding: APPEND over IMAP on one connection with each message's INTERNALDATE (the default, the same bytes
as Dovecot's files), or `--fastmail-seed smtp`: each message sent to the SMTP listener (then INTERNALDATE
is the arrival time and the server may add trace headers, so sizes are not compared).
"""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.imap.mailgen import Message
from bench.imap.target import PASSWORD, USER, ImapTarget
from bench.smtp.target import DOMAIN, free_port, stop_process, wait_for_greeting
from bench.smtp.target_fastmail import FastmailTarget as SmtpFastmail
from bench.smtp.target_fastmail import scan_fastmail_log

ROOT = Path(__file__).resolve().parents[2]


def _toml_settings(settings: list[str]) -> dict[str, list[str]]:
    """["imap.x=1", "server.y=\"a\""] -> {"imap": ["x = 1"], "server": ['y = "a"']} (values are TOML)."""
    out: dict[str, list[str]] = {}
    for s in settings:
        key, _, value = s.partition("=")
        section, _, name = key.strip().rpartition(".")
        out.setdefault(section, []).append(f"{name} = {value.strip()}")
    return out


class FastmailImapTarget(ImapTarget):
    name = "fastmail"

    def __init__(self, workers: int, extra: list[str] | None = None, seed_method: str = "imap-append",
                 python: str = sys.executable) -> None:
        self.workers, self.extra, self.python = workers, extra or [], python
        self.seed_method = seed_method
        self.proc: subprocess.Popen[bytes] | None = None
        self._smtp = SmtpFastmail(workers, python)  # its CLI helper and versions()

    def _listener_names(self) -> list[str]:
        """Every listener fastmail knows (listen.*): each gets a free loopback port, so no default port
        (1143, 2525 ...) of another instance on the machine gets in the way."""
        res = subprocess.run([self.python, "-c", "from fastmail.config import SETTINGS; print(' '.join("
                              "s.key.split('.', 1)[1] for s in SETTINGS if s.key.startswith('listen.')))"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        return res.stdout.split() if res.returncode == 0 else ["smtp", "submission", "submissions", "lmtp"]

    # The IDLE op logs in thousands of sessions of one user from one address: the per-worker limits
    # (imap.max_sessions_per_user 100, imap.max_connections_per_ip 200 by default) are opened, as the Dovecot
    # target opens mail_max_userip_connections; --fastmail-set overrides them.
    OPEN_LIMITS = ("imap.max_sessions_per_user=0", "imap.max_connections_per_ip=0")

    def _config_text(self, data_dir: Path | str, ports: dict[str, int]) -> str:
        given = {s.partition("=")[0].strip() for s in self.extra}
        sections = _toml_settings([s for s in self.OPEN_LIMITS if s.partition("=")[0] not in given] + self.extra)
        listen = sections.pop("listen", [])
        server = sections.pop("server", [])
        text = f"""\
[server]
hostname = "imap.bench.test"
data_dir = "{data_dir}"
workers = {self.workers}
{chr(10).join(server)}

[listen]
{chr(10).join(f'{k} = ["127.0.0.1:{v}"]' for k, v in ports.items())}
{chr(10).join(listen)}
"""
        for section, lines in sections.items():
            text += f"\n[{section}]\n" + "\n".join(lines) + "\n"
        return text

    def check_installed(self) -> str | None:
        missing = self._smtp.check_installed()
        if missing:
            return missing
        names = self._listener_names()
        if "imap" not in names:
            return "fastmail has no IMAP listener yet (no `listen.imap` in fastmail/config.py)"
        with tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "fastmail.toml"
            cfg.write_text(self._config_text(Path(d) / "data", {k: 20000 + i for i, k in enumerate(names)}))
            res = subprocess.run([self.python, "-m", "fastmail", "check-config", "-c", str(cfg)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=60)
        if res.returncode != 0:
            return f"fastmail refuses the benchmark's config: {(res.stderr or res.stdout).strip()[-300:]}"
        return None

    def start(self, workdir: Path, messages: list[Message], seed: int) -> None:
        self.workdir = workdir / "fastmail"
        self.workdir.mkdir(parents=True)
        self.config = self.workdir / "fastmail.toml"
        self.log = self.workdir / "server.log"
        self.ports = {name: free_port() for name in self._listener_names()}
        self.port, self.smtp_port = self.ports["imap"], self.ports.get("smtp", 0)
        self.config.write_text(self._config_text(self.workdir / "data", self.ports))
        self._smtp.config = self.config
        self._smtp._cli("domain", "add", DOMAIN)
        for user in self.users():
            self._smtp._cli("user", "add", user, "--password-stdin", input=PASSWORD.encode() + b"\n")
        self._spawn()

    def restart(self) -> None:
        code = stop_process(self.proc)
        if code != 0:
            raise RuntimeError(f"fastmail exited with {code} on the restart's stop\n{self.log.read_text()[-2000:]}")
        self._spawn()

    def _spawn(self) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([self.python, "-m", "fastmail", "serve", "-c", str(self.config)],
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        proc = self.proc
        try:
            wait_for_greeting(self.host, self.port, lambda: proc.poll() is None, expect=b"* OK")
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"fastmail did not start: {e}\n{self.log.read_text()[-2000:]}") from e

    def users(self) -> list[str]:
        """The accounts added before the start (here USER alone; the POP3 bench adds its parallel users)."""
        return [USER]

    async def seed(self, messages: list[Message], seed: int, user: str = USER) -> dict[str, Any]:
        if self.seed_method != "smtp" or user != USER:
            return await super().seed(messages, seed, user)
        return await asyncio.to_thread(self._seed_smtp, messages)

    def _seed_smtp(self, messages: list[Message]) -> dict[str, Any]:
        total = 0
        with smtplib.SMTP(self.host, self.smtp_port, timeout=120) as s:
            s.ehlo("seed.bench.test")
            for m in messages:
                s.sendmail("seed@remote.test", [USER], m.data)
                total += m.size
        return {"messages": len(messages), "bytes": total}

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def stop(self) -> dict[str, Any]:
        code = stop_process(self.proc)
        self.proc = None
        return {"exit_code": code, "log": scan_fastmail_log(self.log)}

    def versions(self) -> dict[str, str]:
        return self._smtp.versions()

    def settings(self) -> dict[str, Any]:
        return {"workers": self.workers, "python": self.python, "seed_method": self.seed_method,
                "config": self._config_text("DIR", {k: 0 for k in self._listener_names()}).replace(":0\"", ":PORT\"")}
