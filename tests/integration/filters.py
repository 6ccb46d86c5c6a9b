"""The real external filters for the integration tests: Debian's clamd and rspamd, each a private instance
in the foreground, on its own config in a temp dir, never the system's (no init script, no freshclam, no
/etc/rspamd/local.d, no /var/lib).  `make system-deps` installs both packages; a missing one is a failure.

`Clamd`: clamd with one local signature database, `test.ndb`, whose body signature matches the 68-byte EICAR
test string anywhere in a scanned file, so also in a base64 attachment that clamd's mail parser decodes
(clamd reports it as "Fastmail.Test.EICAR.UNOFFICIAL": the suffix marks a signature not from ClamAV's own
databases).  It listens on a unix socket in the temp dir and on a free 127.0.0.1 port; StreamMaxLength is
`stream_max` (1 MiB by default, so a test can pass it cheaply).

`Rspamd`: rspamd with a normal worker (`normal_workers` processes, 1 by default) and a controller on free
127.0.0.1 ports; the stock rules of /usr/share/rspamd and the stock module settings of /etc/rspamd/modules.d,
but its own top-level config (options — plus `options`, empty by default —, actions, workers, logging, a
sqlite3 Bayes classifier: no redis), its own LOCAL_CONFDIR (the modules that would reach the Internet are
disabled there: rbl/surbl/emails, asn, fuzzy_check, phishing, the maps fetched from maps.rspamd.com), its own
DBDIR/RUNDIR/LOGDIR, and DNS sent only to the given test server.
Actions: greylist 4, add header 6, reject 15 (rspamd's defaults, and fastmail's spam.junk_score and
spam.reject_score); GTUBE forces "reject" whatever the score.  The controller has the password
CONTROLLER_PASSWORD and no secure_ip, so learning without it is refused.  Settings ID "fastmail-test-rewrite"
moves every threshold out of reach but "rewrite subject" (-100), for tests of Settings-ID and of subject.

rspamd compiles its hyperscan databases at the first start (about 10 s of CPU: the 9,600 TLD suffixes of
the URL matcher and its regexps); they are kept in HS_CACHE (under the system temp dir, per rspamd version)
so later starts take under a second.  rspamd validates what it loads from there and recompiles a stale file.

Tests use the fixtures at the end with `pytest_plugins = ("tests.integration.filters",)`; they may import
names from here too, which is why pytest must not rewrite this module (it has no asserts):
PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.dnsserver import LocalDNS

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Fastmail.Test.EICAR"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CONTROLLER_PASSWORD = "learn-secret"
REWRITE_SETTINGS_ID = "fastmail-test-rewrite"
HS_CACHE = Path(tempfile.gettempdir()) / "fastmail-test-cache"

# Modules whose checks leave the machine other than by DNS: DNS lists (rbl; surbl and emails are converted
# into rbl rules), asn.rspamd.com, the fuzzy storage at rspamd.com, and maps fetched from maps.rspamd.com or
# openphish.com (phishing, whitelist, multimap, mime_types, mid, rspamd_update, url_redirector).
_OFFLINE = ("rbl", "surbl", "emails", "asn", "fuzzy_check", "phishing", "whitelist", "multimap", "mime_types",
            "mid", "rspamd_update", "url_redirector")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed: run `make system-deps` (or `make test`, which runs it)")
    return path


def _stop(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM, then SIGKILL to the process group (the service's own workers) after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _wait(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, name: str,
          log: Callable[[], str]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()}")
        if ready():
            return
        time.sleep(0.05)
    _stop(proc, 5)
    raise RuntimeError(f"{name} did not answer within {timeout:g} s:\n{log()}")


# -- clamd ---------------------------------------------------------------------------------------------


@dataclass
class Clamd:
    tmp: Path
    stream_max: int = 1024 * 1024
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0  # seconds from exec to the first PONG

    def __post_init__(self) -> None:
        self.socket = self.tmp / "clamd.sock"
        self.config = self.tmp / "clamd.conf"
        self.log = self.tmp / "clamd.log"
        self.output = self.tmp / "clamd.out"
        db = self.tmp / "db"
        db.mkdir(parents=True, exist_ok=True)
        # An extended signature (signatures.md, "Extended signature format"): Name:TargetType:Offset:HexSignature,
        # target 0 = any file, offset * = anywhere.
        (db / "test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")
        self.config.write_text(
            f"Foreground yes\n"
            f"LocalSocket {self.socket}\n"
            f"LocalSocketMode 600\n"
            f"TCPSocket {self.port}\n"
            f"TCPAddr 127.0.0.1\n"
            f"DatabaseDirectory {db}\n"
            f"PidFile {self.tmp / 'clamd.pid'}\n"
            f"LogFile {self.log}\n"
            f"LogTime yes\n"
            f"StreamMaxLength {self.stream_max}\n"
            f"MaxThreads 4\n"
        )

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket}"

    @property
    def tcp_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Clamd:
        t0 = time.monotonic()
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen([require("clamd"), f"--config-file={self.config}"], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait(self.proc, self.ping, timeout, "clamd", self.logs)
        self.started_in = time.monotonic() - t0
        return self

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"zPING\0")
                return s.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.proc, 10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.output, self.log) if p.exists())


# -- rspamd --------------------------------------------------------------------------------------------


@dataclass
class Rspamd:
    tmp: Path
    nameserver: str  # "127.0.0.1:PORT" of the test DNS server
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0  # seconds from exec to both workers answering /ping
    normal_workers: int = 1  # processes of the normal worker (the one that scans); the benchmark sets CPU count
    options: str = ""  # more settings for the options block (e.g. "check_local = true;" for the benchmark)

    def __post_init__(self) -> None:
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.dirs = {name: self.tmp / name for name in ("local", "db", "run", "log")}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.hs_cache = HS_CACHE / f"rspamd-{_rspamd_version()}-hs"
        self.hs_cache.mkdir(parents=True, exist_ok=True)
        self.config = self.tmp / "rspamd.conf"
        self.log = self.dirs["log"] / "rspamd.log"
        self.output = self.tmp / "rspamd.out"
        self.config.write_text(self._config())
        override = self.dirs["local"] / "override.d"
        local = self.dirs["local"] / "local.d"
        override.mkdir(exist_ok=True)
        local.mkdir(exist_ok=True)
        for module in _OFFLINE:
            (override / f"{module}.conf").write_text("enabled = false;\n")
        (local / "milter_headers.conf").write_text('use = ["x-spamd-result", "x-spam-status"];\n')
        (local / "settings.conf").write_text(
            f'rewrite {{\n  id = "{REWRITE_SETTINGS_ID}";\n'
            '  apply { actions { reject = 100.0; "add header" = 90.0; greylist = 80.0; '
            '"rewrite subject" = -100.0; } }\n}\n'
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def _config(self) -> str:
        return f"""
lua = "$RULESDIR/rspamd.lua";
.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/groups.conf"
.include "$CONFDIR/composites.conf"
.include "$CONFDIR/modules.conf"
.include "$CONFDIR/settings.conf"
modules {{ path = "$PLUGINSDIR"; }}

actions {{
  greylist = 4;
  add_header = 6;
  reject = 15;
  subject = "***SPAM*** %s";
}}

classifier "bayes" {{
  tokenizer {{ name = "osb"; }}
  backend = "sqlite3";
  min_tokens = 11;
  min_learns = 200;
  statfile {{ symbol = "BAYES_HAM"; spam = false; path = "$DBDIR/bayes.ham.sqlite"; }}
  statfile {{ symbol = "BAYES_SPAM"; spam = true; path = "$DBDIR/bayes.spam.sqlite"; }}
  learn_condition = 'return require("lua_bayes_learn").can_learn';
}}

options {{
  pidfile = "$RUNDIR/rspamd.pid";
  filters = "chartable,dkim,regexp";
  cache_file = "$DBDIR/symbols.cache";
  dynamic_conf = "$DBDIR/rspamd_dynamic";
  history_file = "$DBDIR/rspamd.history";
  control_socket = "$RUNDIR/rspamd.sock mode=0600";
  tempdir = "$DBDIR";
  url_tld = "$SHAREDIR/effective_tld_names.dat";
  hs_cache_dir = "{self.hs_cache}";
  allow_raw_input = true;
  task_timeout = 8s;
  explicit_modules = ["settings"];
  {self.options}
  dns {{
    nameserver = ["{self.nameserver}"];
    timeout = 1s;
    retransmits = 1;
  }}
}}

logging {{
  type = "file";
  filename = "$LOGDIR/rspamd.log";
  level = "info";
}}

worker "normal" {{
  bind_socket = "127.0.0.1:{self.port}";
  mime = true;
  count = {self.normal_workers};
}}

worker "controller" {{
  bind_socket = "127.0.0.1:{self.controller_port}";
  count = 1;
  password = "{CONTROLLER_PASSWORD}";
  secure_ip = "192.0.2.255";
  static_dir = "$WWWDIR";
}}
"""

    def start(self, timeout: float = 180.0) -> Rspamd:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        cmd = [require("rspamd"), "-f", "-u", user, "-g", group, "-c", str(self.config),
               "--var", f"LOCAL_CONFDIR={self.dirs['local']}", "--var", f"DBDIR={self.dirs['db']}",
               "--var", f"RUNDIR={self.dirs['run']}", "--var", f"LOGDIR={self.dirs['log']}"]
        t0 = time.monotonic()
        # On a first start rspamd's controller and normal worker create the sqlite statfiles at the same
        # time, and one of them may lose the race ("cannot init backend sqlite3 for statfile ...": learning
        # then answers 404 for the life of the process). Once the files exist there is no race: start again.
        for _ in range(3):
            offset = self.log.stat().st_size if self.log.exists() else 0
            with open(self.output, "ab") as out:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
            _wait(self.proc, lambda: self.ping(self.url) and self.ping(self.controller_url), timeout, "rspamd",
                  self.logs)
            with open(self.log, "rb") as f:
                f.seek(offset)
                if b"cannot init backend" not in f.read():
                    break
            self.stop()
        self.started_in = time.monotonic() - t0
        return self

    @staticmethod
    def ping(url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                return bool(r.read().strip() == b"pong")
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.proc, 15)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-20000:] for p in (self.output, self.log) if p.exists())


def _rspamd_version() -> str:
    out = subprocess.run([require("rspamd"), "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.split()[-1] if out.split() else "unknown"


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clamd_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    c = Clamd(tmp_path_factory.mktemp("clamd")).start()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def filter_dns() -> Iterator[LocalDNS]:
    """The DNS server rspamd asks (and nothing else): tests add the records they need."""
    d = LocalDNS().start()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def rspamd_service(tmp_path_factory: pytest.TempPathFactory, filter_dns: LocalDNS) -> Iterator[Rspamd]:
    r = Rspamd(tmp_path_factory.mktemp("rspamd"), filter_dns.address).start()
    yield r
    r.stop()
