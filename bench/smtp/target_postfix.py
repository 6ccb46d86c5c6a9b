"""Postfix: a private instance (`postfix -c DIR`) delivering bench@example.org to a Maildir via virtual(8).

Everything lives under the round's directory: config_directory etc/ (main.cf, master.cf, the texthash
mailbox map), queue_directory spool/, data_directory lib/, the Maildir base mail/ and the log maillog.  The
smtpd listener is on a free high port of 127.0.0.1; the instance shares nothing with a system-wide Postfix
(it may run on port 25 meanwhile).  As root, `postfix -c DIR` needs no `alternate_config_directories` entry
in /etc/postfix/main.cf (that check is for unprivileged callers), so the benchmark does not touch /etc.

Mail is delivered as a dedicated user (`fmbench`, created with useradd when missing).  Postfix fsyncs the
queue file before "250 queued" and the Maildir file before it reports delivery; end-to-end is the time
until every message is a file in new/.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.smtp.procfs import process_tree
from bench.smtp.target import (
    DOMAIN,
    RECIPIENT,
    Target,
    count_maildir,
    free_port,
    make_maildir,
    wait_for_greeting,
)

MAIL_USER = "fmbench"
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")

# Rate limits opened for loopback and a process limit (default 500) that lets smtpd take scenario d's 500
# concurrent sessions at once: with 200, 300 of them wait in the listen queue (whose length master sets
# to the process limit), it overflows (SYN retried after 1 s) and d falls from 569 to 261 msgs/s here.
# Everything else is Postfix's default (in_flow_delay 1s, virtual_destination_concurrency_limit 20, smtpd
# max_use 100 ...).
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/lib
mail_owner = postfix
setgid_group = postdrop
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
relay_domains =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
append_dot_mydomain = no
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {dir}/mail
virtual_mailbox_maps = texthash:{dir}/etc/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_event_limit_exceptions = 127.0.0.0/8
default_process_limit = {process_limit}
default_transport = error:outbound mail is disabled in the benchmark
"""

# No chroot (it would need copies of /etc files in the queue directory); no TLS, no pickup of local
# submissions beyond the default service, no content filters.
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
proxywrite unix  - - n -  1 proxymap
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
virtual    unix  - n n -  - virtual
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def ensure_mail_user() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(MAIL_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "--user-group", MAIL_USER], check=True, capture_output=True, timeout=60)
        pw = pwd.getpwnam(MAIL_USER)
    return pw.pw_uid, pw.pw_gid


class PostfixTarget(Target):
    name = "postfix"
    stored_on_accept = False  # 250 = queued; delivery to the Maildir follows
    stores_lf = True  # virtual(8) writes the Maildir file in Unix form

    def __init__(self, process_limit: int = 500) -> None:
        self.process_limit = process_limit
        self.dir = Path()
        self.master_pid = 0

    def check_installed(self) -> str | None:
        if shutil.which("postfix") is None:
            return "postfix not found (Debian: apt-get install postfix; make bench-deps)"
        if os.geteuid() != 0:
            return "a private Postfix instance needs root (its master runs as root)"
        return None

    def _postfix(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(self.dir / "etc"), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def _log_tail(self) -> str:
        try:
            return (self.dir / "maillog").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def start(self, workdir: Path) -> None:
        self.dir = workdir / "postfix"
        self.port = free_port()
        uid, gid = ensure_mail_user()
        for sub in ("etc", "spool", "lib", "mail"):
            (self.dir / sub).mkdir(parents=True)
        os.chown(self.dir / "lib", pwd.getpwnam("postfix").pw_uid, -1)
        os.chown(self.dir / "mail", uid, gid)
        (self.dir / "mail" / DOMAIN).mkdir()
        os.chown(self.dir / "mail" / DOMAIN, uid, gid)
        self.maildir = self.dir / "mail" / DOMAIN / "bench"
        make_maildir(self.maildir, uid, gid)
        (self.dir / "etc" / "main.cf").write_text(MAIN_CF.format(dir=self.dir, domain=DOMAIN, uid=uid, gid=gid,
                                                                 process_limit=self.process_limit))
        (self.dir / "etc" / "master.cf").write_text(MASTER_CF.format(port=self.port))
        (self.dir / "etc" / "vmailbox").write_text(f"{RECIPIENT} {DOMAIN}/bench/\n")
        res = self._postfix("start")
        pidfile = self.dir / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 30
        while res.returncode == 0 and time.monotonic() < deadline and not pidfile.exists():
            time.sleep(0.05)
        if res.returncode != 0 or not pidfile.exists():
            raise RuntimeError(f"postfix did not start (exit {res.returncode}): {res.stdout}{res.stderr}"
                               f"\n{self._log_tail()}")
        self.master_pid = int(pidfile.read_text().split()[0])
        try:
            wait_for_greeting(self.host, self.port, lambda: os.path.exists(f"/proc/{self.master_pid}"))
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"postfix did not answer: {e}\n{self._log_tail()}") from e

    def pids(self) -> list[int]:
        # The master forks every daemon and reaps them: its tree (and its cutime) is the whole instance.
        return [self.master_pid] if self.master_pid else []

    def count_stored(self, detail: bool = True) -> dict[str, Any]:
        counts = count_maildir(self.maildir, detail)
        if detail:
            queued = 0
            for q in QUEUES:
                for _, _, files in os.walk(self.dir / "spool" / q):
                    queued += len(files)
            counts["left_in_queue"] = queued
        return counts

    def stop(self) -> dict[str, Any]:
        code: int | None = None
        if self.master_pid:
            try:
                res = self._postfix("stop", timeout=90)
                code = res.returncode
            except subprocess.TimeoutExpired:
                code = None
            deadline = time.monotonic() + 60
            while os.path.exists(f"/proc/{self.master_pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
            left = process_tree([self.master_pid])
            if left:  # past the bound: no process of the instance may outlive the round
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                code = None
            self.master_pid = 0
        return {"exit_code": code, "log": scan_maillog(self.dir / "maillog")}

    def versions(self) -> dict[str, str]:
        res = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=30)
        return {"postfix": res.stdout.strip() or "unknown"}

    def settings(self) -> dict[str, Any]:
        return {"main.cf": MAIN_CF.format(dir="DIR", domain=DOMAIN, uid="UID", gid="GID",
                                          process_limit=self.process_limit),
                "master.cf": MASTER_CF.format(port="PORT"), "vmailbox": f"{RECIPIENT} {DOMAIN}/bench/",
                "mail_user": MAIL_USER}


def scan_maillog(path: Path) -> dict[str, Any]:
    """Deliveries by status, and every warning/error line (the first 20)."""
    out: dict[str, Any] = {"accepted": 0, "sent": 0, "deferred": 0, "bounced": 0, "problems": []}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if "status=sent" in line:
            out["sent"] += 1
        elif "status=deferred" in line:
            out["deferred"] += 1
        elif "status=bounced" in line:
            out["bounced"] += 1
        elif "/cleanup[" in line and "message-id=" in line:
            out["accepted"] += 1
        if any(w in line for w in (" warning: ", " error: ", " fatal: ", " panic: ")) and len(out["problems"]) < 20:
            out["problems"].append(line[:400])
    return out
