"""A private Postfix instance as a remote mail exchanger for the delivery tests (`postfix -c DIR`).

Everything lives under one temp folder: config_directory etc/ (main.cf, master.cf, the virtual mailbox
map), queue_directory spool/, data_directory lib/, Maildirs under mail/, the log in maillog.  smtpd
listens on ADDRESS:PORT with STARTTLS offered (a self-signed certificate) and the TLS details in its
Received: field; mail for DOMAIN goes to Maildirs via virtual(8) as user nobody.  Needs root (Postfix's
master); shares nothing with a system-wide Postfix.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fastmail.tlsfiles import ensure_self_signed

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/lib
mail_owner = postfix
setgid_group = postdrop
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = postfix.pf.test
mydomain = pf.test
mydestination =
local_recipient_maps =
relay_domains =
inet_interfaces = 127.0.0.1
# (the listener in master.cf names its own address: 127.0.0.x need not be an interface)
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
smtpd_tls_security_level = may
smtpd_tls_cert_file = {dir}/etc/cert.pem
smtpd_tls_key_file = {dir}/etc/key.pem
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
default_transport = error:no outbound mail from the test receiver
"""

MASTER_CF = """\
{address}:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
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
virtual    unix  - n n -  - virtual
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class Postfix:
    def __init__(self, address: str, port: int, domain: str, users: list[str]) -> None:
        # Its own folder under /tmp, traversable by the postfix user (pytest's tmp_path is root-only).
        self.dir = Path(tempfile.mkdtemp(prefix="fastmail-postfix-"))
        os.chmod(self.dir, 0o755)
        self.address = address
        self.port = port
        self.domain = domain
        self.users = users
        self.master_pid = 0

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(self.dir / "etc"), *args], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        try:
            return (self.dir / "maillog").read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> Postfix:
        uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        for sub in ("etc", "spool", "lib", "mail"):
            (self.dir / sub).mkdir(parents=True, mode=0o755)
        os.chown(self.dir / "lib", pwd.getpwnam("postfix").pw_uid, -1)
        for user in self.users:
            for sub in ("", "new", "cur", "tmp"):
                (self.dir / "mail" / self.domain / user / sub).mkdir(parents=True, exist_ok=True)
        for root, dirs, _ in os.walk(self.dir / "mail"):
            for d in dirs:
                os.chown(os.path.join(root, d), uid, gid)
        os.chown(self.dir / "mail", uid, gid)
        etc = self.dir / "etc"
        ensure_self_signed(etc / "cert.pem", etc / "key.pem", "postfix.pf.test")
        (etc / "main.cf").write_text(MAIN_CF.format(dir=self.dir, domain=self.domain, uid=uid, gid=gid,
                                                    address=self.address))
        (etc / "master.cf").write_text(MASTER_CF.format(address=self.address, port=self.port))
        (etc / "vmailbox").write_text("".join(f"{u}@{self.domain} {self.domain}/{u}/\n" for u in self.users))
        res = self._postfix("start")
        pidfile = self.dir / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 30
        while res.returncode == 0 and time.monotonic() < deadline and not pidfile.exists():
            time.sleep(0.05)
        if res.returncode != 0 or not pidfile.exists():
            raise RuntimeError(f"postfix did not start: {res.stdout}{res.stderr}\n{self.log()[-2000:]}")
        self.master_pid = int(pidfile.read_text().split()[0])
        return self

    def maildir(self, user: str) -> list[bytes]:
        new = self.dir / "mail" / self.domain / user / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def stop(self) -> None:
        if not self.master_pid:
            return
        try:
            self._postfix("stop")
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{self.master_pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.path.exists(f"/proc/{self.master_pid}"):
            os.kill(self.master_pid, 9)
        self.master_pid = 0
        shutil.rmtree(self.dir, ignore_errors=True)
