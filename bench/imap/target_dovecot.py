"""Dovecot: a private instance (`dovecot -F -c FILE`) serving bench@example.org's Maildir on a loopback port.

Everything lives under the target's directory: the config file dovecot.conf, base_dir run/, state_dir
state/, the logs, the passwd-file, and the user's home with the Maildir.  Nothing in /etc/dovecot is read
(-c replaces the whole configuration; what the file does not set is Dovecot's built-in default).  A
system-wide Dovecot started by the Debian package is left alone: this one has its own base_dir, instance
name and port.

Mail storage: **Maildir** (`mail_location = maildir:~/Maildir`), Dovecot's most common setup and the one
it documents first; its index files (dovecot.index, .index.cache, .index.log) sit in the Maildir, so
FETCH ENVELOPE/BODYSTRUCTURE come from the cache once a client asked for them.  sdbox would be Dovecot's
fastest format, but a mailbox seeded as files in Maildir is what a migrated account typically is.
The generated messages are written into cur/ before the start (file mtime = INTERNALDATE; the S=/W= size
fields in the name, as Dovecot writes them), and Dovecot indexes them at the first SELECT.

Mail is served as the system user `fmbench` (created like the SMTP bench's, static uid/gid in the
passwd-file).  Process limits are opened for the idle test: Dovecot forks one `imap` process per logged-in
session (its default `client_limit = 1`), so `service imap { process_limit }`, the per-user/IP connection
limit (`mail_max_userip_connections`, default 10) and anvil's/auth's client limits grow with --idle.  An
IDLE session watches its Maildir with inotify, one instance per imap process, all as the one mail user:
the kernel's `fs.inotify.max_user_instances` (default 128) is raised for the run to sessions + 200 (and
put back at stop), as a Dovecot sized for 2,000 IDLE sessions of one user would have it; past the limit
Dovecot logs a warning per session and falls back to polling every `mailbox_idle_check_interval` (30 s).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.imap.mailgen import Message, write_maildir
from bench.imap.target import PASSWORD, USER, ImapTarget
from bench.smtp.procfs import process_tree
from bench.smtp.target import free_port, stop_process, wait_for_greeting
from bench.smtp.target_postfix import ensure_mail_user

# Dovecot 2.3 syntax (Debian 12).  {limit} >= the idle sessions + the other ops' connections.
CONF = """\
# fastmail IMAP benchmark: a private Dovecot instance (bench/imap/target_dovecot.py)
instance_name = fmbench-{port}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.info.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_location = maildir:~/Maildir
mail_max_userip_connections = {limit}
default_process_limit = {limit}
default_client_limit = {client_limit}
passdb {{
  driver = passwd-file
  args = username_format=%u {dir}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dir}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service imap {{
  process_limit = {limit}
}}
service anvil {{
  client_limit = {client_limit}
}}
service auth {{
  client_limit = {client_limit}
}}
"""


INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")


class DovecotTarget(ImapTarget):
    name = "dovecot"
    seed_method = "maildir-files"

    def __init__(self, sessions: int = 2000, seed_by_append: bool = False, password_scheme: str = "argon2id") -> None:
        self.password_scheme = password_scheme
        self.limit = sessions + 200  # the idle sessions, plus the other ops' and the seeding connections
        self.client_limit = max(1000, 3 * self.limit + 100)
        if seed_by_append:
            self.seed_method = "imap-append"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path()
        self.inotify_was: int | None = None

    def check_installed(self) -> str | None:
        if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
            return "dovecot not found (Debian: apt-get install dovecot-imapd; make bench-deps)"
        if os.geteuid() != 0:
            return "a private Dovecot instance needs root (its master forks as the mail user)"
        return None

    def users(self, messages: list[Message]) -> list[tuple[str, list[Message]]]:
        """Each user of the instance with what its INBOX is seeded with (here USER alone; the POP3 bench
        adds its parallel users)."""
        return [(USER, messages)]

    def _conf(self, dir: Path | str, uid: Any) -> str:
        return CONF.format(dir=dir, port=self.port or "PORT", uid=uid, limit=self.limit,
                           client_limit=self.client_limit)

    def start(self, workdir: Path, messages: list[Message], seed: int) -> None:
        self.dir = workdir / "dovecot"
        self.port = free_port()
        uid, gid = ensure_mail_user()
        try:
            now = int(INOTIFY.read_text())
            if now < self.limit:
                INOTIFY.write_text(str(self.limit))
                self.inotify_was = now
        except (OSError, ValueError):
            pass
        for sub in ("run", "state", "home"):
            (self.dir / sub).mkdir(parents=True)
        password = self._password()  # one hash for every user: the same password, the same cost per login
        passwd = []
        for user, msgs in self.users(messages):
            home = self.dir / "home" / user.split("@")[0]
            home.mkdir()
            os.chown(home, uid, gid)
            maildir = home / "Maildir"
            if user == USER:
                self.maildir = maildir
            if self.seed_method == "maildir-files":
                write_maildir(iter(msgs), maildir, seed, uid, gid)
            passwd.append(f"{user}:{password}:{uid}:{gid}::{home}::\n")
        (self.dir / "passwd").write_text("".join(passwd))
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(self._conf(self.dir, uid))
        self._spawn()

    def restart(self) -> None:
        code = self._stop_master()
        if code != 0:
            raise RuntimeError(f"dovecot exited with {code} on the restart's stop\n{self._log_tail()}")
        self._spawn()

    def _spawn(self) -> None:
        log = self.dir / "dovecot.stderr"
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)], stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        proc = self.proc
        try:
            wait_for_greeting(self.host, self.port, lambda: proc.poll() is None, expect=b"* OK")
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"dovecot did not start: {e}\n{log.read_text()[-1500:]}\n{self._log_tail()}") from e

    def _password(self) -> str:
        """The passdb entry.  argon2id (default): a hash made by fastmail's own hash_password (libsodium,
        t=3, m=64 MiB), which Dovecot's {ARGON2ID} scheme (libsodium too) verifies, so a LOGIN costs both
        servers the same hash; plain: {PLAIN}."""
        if self.password_scheme == "plain":
            return f"{{PLAIN}}{PASSWORD}"
        from fastmail.auth import hash_password
        return "{ARGON2ID}" + hash_password(PASSWORD)

    def _log_tail(self) -> str:
        try:
            return (self.dir / "dovecot.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        # The master forks every process (imap-login, auth, anvil, config, log, imap per session) and reaps
        # them: its tree (and its cutime) is the whole instance.
        return [self.proc.pid] if self.proc is not None else []

    def stop(self) -> dict[str, Any]:
        code = self._stop_master()
        if self.inotify_was is not None:
            try:
                INOTIFY.write_text(str(self.inotify_was))
            except OSError:
                pass
            self.inotify_was = None
        log = scan_dovecot_log(self.dir)
        log["problems"] = [p for p in log["problems"] if "master: Warning: Killed with signal 15" not in p]
        return {"exit_code": code, "log": log}

    def _stop_master(self) -> int | None:
        """`doveadm stop`, the master's exit status; no process of the instance may outlive it."""
        code: int | None = None
        if self.proc is not None:
            pid = self.proc.pid
            res = subprocess.run(["doveadm", "-c", str(self.conf), "stop"], capture_output=True, text=True,
                                 timeout=60, stdin=subprocess.DEVNULL)
            try:
                code = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                code = stop_process(self.proc, signal.SIGTERM, timeout=30)
            if res.returncode != 0:
                code = code if code else None
            left = process_tree([pid])
            deadline = time.monotonic() + 10
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = process_tree([pid])
            for p in left:  # no process of the instance may outlive the run
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc = None
        return code

    def versions(self) -> dict[str, str]:
        res = subprocess.run(["dovecot", "--version"], capture_output=True, text=True, timeout=30)
        return {"dovecot": res.stdout.strip() or "unknown"}

    def settings(self) -> dict[str, Any]:
        return {"dovecot.conf": self._conf("DIR", "UID"), "mail_storage": "Maildir (+ Dovecot's index files)",
                "seed_method": self.seed_method, "mail_user": "fmbench", "password_scheme": self.password_scheme
                + (" (fastmail.auth.hash_password: the same hash as fastmail's)" if self.password_scheme == "argon2id" else ""),
                "fs.inotify.max_user_instances": f"raised to {self.limit} for the run when lower"}


def scan_dovecot_log(dir: Path) -> dict[str, Any]:
    """Warnings, errors, fatals and panics (the first 20); logins counted from the info log."""
    out: dict[str, Any] = {"problems": [], "logins": 0}
    for name in ("dovecot.log", "dovecot.stderr"):
        try:
            for line in (dir / name).read_text(errors="replace").splitlines():
                if re.search(r"\b(Warning|Error|Fatal|Panic)\b", line) and len(out["problems"]) < 20:
                    out["problems"].append(line[:400])
        except OSError:
            pass
    try:
        with open(dir / "dovecot.info.log", errors="replace") as f:
            out["logins"] = sum(1 for line in f if "Login: user=" in line)
    except OSError:
        pass
    return out
