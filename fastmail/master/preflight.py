"""Before the master binds and forks: does this host give what the configuration asks for?

Stage 3 of the configuration's validation (fastmail.config.load with ``serve=True``, run by `fastmail serve`
at start and on HUP, and by `fastmail check-config`): server.user and server.group exist and can be switched
to, the data folder can be made and reached by the workers' user, the pid file and unix sockets can be
written, low ports can be bound, the certificate and key load and belong together, the files that are read
(smarthost password, CA file, DKIM keys) are there for the process that reads them.  Problems come back as
(key, reason) pairs; fastmail.config turns them into "FILE: key: reason" lines.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from fastmail.config import LISTENERS, ConfigWarning, Problems, check_hostname, parse_listen, short_repr
from fastmail.master.errors import BootError
from fastmail.master.privileges import Credentials, access_as, lookup_group, lookup_user

if TYPE_CHECKING:
    from fastmail.config import Config

__all__ = ["SystemChecks"]


def _user_label(uid: int, note: str = "") -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid}{note})"
    except KeyError:
        return f"uid {uid}{' (' + note.removeprefix(', ') + ')' if note else ''}"


def _perm(path: Path) -> str:
    """'mode 0700, owner root:root' (or why it cannot be told)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return e.strerror or "cannot stat"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"mode {st.st_mode & 0o7777:04o}, owner {owner}:{group}"


def _abs(path: str) -> Path:
    return Path(os.path.abspath(path))


def _can_bind_low_ports() -> bool:
    """CAP_NET_BIND_SERVICE (bit 10) in this process's effective set; True when it cannot be told."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 10 & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


class SystemChecks:
    """Paths are checked with access(2) for the process that uses them: the master (this process:
    it binds, writes the pid file, makes the data folder, reads the TLS files and the smarthost password
    before a child drops privileges) or the workers' user (who must reach the data folder and read the DKIM
    keys and the CA file) — as that user, in a forked child, when the master is root and server.user is set,
    so that group memberships and ACLs count as they will."""

    def __init__(self, cfg: Config, bad: set[str]) -> None:
        self.cfg = cfg
        self.bad = bad
        self.problems: Problems = []
        self.warnings: list[ConfigWarning] = []
        self.euid = os.geteuid()
        self.me = _user_label(self.euid)
        self.creds: Credentials | None = None  # the workers' credentials, when they are not this process's
        self.worker = self.me
        self._master: list[tuple[str, Path, int, str]] = []
        self._workers: list[tuple[str, Path, int, str]] = []

    def ok(self, *keys: str) -> bool:
        return not self.bad.intersection(keys)

    def problem(self, key: str, reason: str) -> None:
        self.problems.append((key, reason))
        self.bad.add(key)

    def master_can(self, key: str, path: Path, mode: int, reason: str) -> None:
        """`reason`, a format string with {who} and {path}, when this process cannot `mode` `path`."""
        self._master.append((key, path, mode, reason))

    def workers_can(self, key: str, path: Path, mode: int, reason: str) -> None:
        if self.creds is not None:
            self._workers.append((key, path, mode, reason))
        elif self.euid != 0:  # the workers are this process's user
            self._master.append((key, path, mode, reason))

    def run(self) -> tuple[Problems, list[ConfigWarning]]:
        for check in (self.identity, self.hostname, self.data_dir, self.pid_file, self.listeners, self.tls,
                      self.relay_password, self.ca_file, self.dkim):
            check()
        self._access(self._master, None, self.me)
        if self._workers:
            self._access(self._workers, self.creds, self.worker)
        return self.problems, self.warnings

    def _access(self, checks: list[tuple[str, Path, int, str]], creds: Credentials | None, who: str) -> None:
        """Every folder on the way must be searchable, then `path` must allow `mode`; the first refusal of
        each path is reported."""
        groups = [[(p, os.X_OK) for p in reversed(path.parents)] + [(path, mode)] for _, path, mode, _ in checks]
        flat = [c for g in groups for c in g]
        if creds is None:
            results = [os.access(p, m) for p, m in flat]
        else:
            try:
                results = access_as(creds, flat)
            except BootError as e:
                self.problem("server.user", f"cannot check files as {who}: {e}")
                return
        i = 0
        for (key, path, _mode, reason), group in zip(checks, groups, strict=True):
            for (p, _m), good in zip(group, results[i:i + len(group)], strict=True):
                if good:
                    continue
                if p == path:
                    self.problem(key, reason.format(who=who, path=path) + f" ({_perm(p)})")
                else:
                    self.problem(key, f"{who} cannot reach {path}: {p} is closed to it ({_perm(p)})")
                break
            i += len(group)

    # -- the checks --

    def identity(self) -> None:
        cfg = self.cfg
        if not cfg.server_user or not self.ok("server.user", "server.group"):
            return
        try:
            uid, gid, name = lookup_user(cfg.server_user)
        except BootError as e:
            self.problem("server.user", str(e))
        if cfg.server_group:
            try:
                gid = lookup_group(cfg.server_group)
            except BootError as e:
                self.problem("server.group", str(e))
        if not self.ok("server.user", "server.group"):
            return
        if self.euid != 0:
            if uid != self.euid:
                self.problem("server.user", f"cannot switch to {cfg.server_user!r}: fastmail runs as {self.me}, "
                                            "not root (start it as root, or leave server.user empty)")
            elif cfg.server_group and gid != os.getegid():
                self.problem("server.group", f"cannot switch to group {cfg.server_group!r}: fastmail runs as "
                                             f"{self.me}, not root")
            return
        if uid != 0:
            self.creds = Credentials(uid=uid, gid=gid, user=name)
            self.worker = _user_label(uid, ", server.user")

    def hostname(self) -> None:
        if self.cfg.server_hostname:
            return
        fqdn = socket.getfqdn()
        try:
            check_hostname(fqdn)
        except ValueError as e:
            self.warnings.append(ConfigWarning("server.hostname", f"not set, and this host's name {short_repr(fqdn)} "
                                                                  f"{e}: set server.hostname"))

    def data_dir(self) -> None:
        key = "server.data_dir"
        if not self.ok(key):
            return
        d = self.cfg.data_dir
        if d.exists():
            if not d.is_dir():
                self.problem(key, f"{d} is not a folder")
                return
            self.master_can(key, d, os.W_OK | os.X_OK, "{who} cannot write to {path}")
            if self.creds is not None:  # the master gives the folder to server.user on start
                self.workers_can(key, d.parent, os.X_OK, "{who} cannot reach {path}")
            return
        existing = next(p for p in d.parents if p.exists())
        if not existing.is_dir():
            self.problem(key, f"cannot make {d}: {existing} is not a folder")
            return
        self.master_can(key, existing, os.W_OK | os.X_OK, f"{{who}} cannot make {d} in {{path}}")
        self.workers_can(key, existing, os.X_OK, "{who} cannot reach {path}")

    def pid_file(self) -> None:
        key = "server.pid_file"
        if not self.cfg.server_pid_file or not self.ok(key):
            return
        p = _abs(self.cfg.server_pid_file)
        if p.is_dir():
            self.problem(key, f"{p} is a folder")
        elif not p.parent.is_dir():
            self.problem(key, f"folder {p.parent} does not exist")
        else:
            self.master_can(key, p.parent, os.W_OK | os.X_OK, "{who} cannot write to {path}")

    def listeners(self) -> None:
        low_start = _unprivileged_port_start() if self.euid != 0 and not _can_bind_low_ports() else 0
        for name in LISTENERS:
            key = f"listen.{name}"
            if not self.ok(key):
                continue
            for item in getattr(self.cfg, f"listen_{name}"):
                address = parse_listen(item)
                if isinstance(address, tuple):
                    if address[1] < low_start:
                        self.problem(key, f"{item!r}: a port below {low_start} needs root or CAP_NET_BIND_SERVICE; "
                                          f"fastmail runs as {self.me}")
                    continue
                p = _abs(address)
                if not p.parent.is_dir():
                    self.problem(key, f"{item!r}: folder {p.parent} does not exist")
                elif p.is_dir() or (p.exists() and not p.is_socket()):
                    self.problem(key, f"{item!r}: {p} exists and is not a socket")
                else:
                    self.master_can(key, p.parent, os.W_OK | os.X_OK, "{who} cannot make a socket in {path}")

    def tls(self) -> None:
        from fastmail.tlsfiles import check_pair

        cfg = self.cfg
        if cfg.tls_cert:
            if not self.ok("tls.cert", "tls.key"):
                return
            cert, key = cfg.tls_files
            names = {"cert": "tls.cert", "key": "tls.key" if cfg.tls_key else "tls.cert"}
            hint = ""
        else:
            if not self.ok("server.data_dir", "tls.key"):
                return
            cert, key = cfg.tls_files
            if not (cert.exists() and key.exists()):
                return  # made on start (fastmail.cli.bootstrap)
            names = {"cert": "tls.cert", "key": "tls.cert"}
            hint = " (the self-signed certificate of an earlier start: remove it and its key to have new ones made)"
        problems, warnings = check_pair(_abs(str(cert)), _abs(str(key)))
        for which, reason in problems:
            self.problem(names[which], reason + hint)
        self.warnings += [ConfigWarning(names["cert"], w) for w in warnings]

    def relay_password(self) -> None:
        key = "delivery.relayhost_password_file"
        if not self.cfg.delivery_relayhost_password_file or not self.ok(key):
            return
        p = _abs(self.cfg.delivery_relayhost_password_file)
        try:
            with open(p) as f:
                first = f.readline()
        except OSError as e:
            self.problem(key, f"{p}: {e.strerror}")
        except ValueError:
            self.problem(key, f"{p}: not text")
        else:
            if not first.rstrip("\r\n"):
                self.problem(key, f"{p}: the first line (the password) is empty")

    def ca_file(self) -> None:
        key = "delivery.tls_ca_file"
        if not self.cfg.delivery_tls_ca_file or not self.ok(key):
            return
        p = _abs(self.cfg.delivery_tls_ca_file)
        try:
            ssl.create_default_context(cafile=str(p))
        except ssl.SSLError as e:
            self.problem(key, f"{p}: no usable CA certificate in it ({e.reason or e})")
        except OSError as e:
            self.problem(key, f"{p}: {e.strerror}")
        else:
            self.workers_can(key, p, os.R_OK, "{who} cannot read {path}")

    def dkim(self) -> None:
        key = "dkim.key_dir"
        if not self.cfg.dkim_sign or not self.ok(key, "server.data_dir"):
            return
        p = _abs(str(self.cfg.dkim_keys))
        if p.exists():
            if not p.is_dir():
                self.problem(key, f"{p} is not a folder")
            else:
                self.workers_can(key, p, os.R_OK | os.X_OK, "{who} cannot read {path}")
        elif self.cfg.dkim_key_dir:
            self.warnings.append(ConfigWarning(key, f"folder {p} does not exist: nothing is signed until "
                                                    "`fastmail dkim keygen` makes keys there"))
