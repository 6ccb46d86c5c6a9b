"""deploy/ and docs/operations.md stay true to the code (issue #2).

- deploy/fastmail.toml passes `fastmail check-config` — with the machine-dependent values (data folder,
  user, certificate files, the LMTP socket's folder) swapped for temporary ones — uses only known settings,
  commented alternatives included, and keeps the production shape the unit and the guide rely on;
- deploy/fastmail.service passes `systemd-analyze verify` (when systemd is installed), carries the
  hardening directives, and its ExecStart/ExecReload are real `fastmail` commands;
- every `fastmail ...` command in the guide and in deploy/ is one the CLI accepts.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fastmail import cli
from fastmail import config as configmod
from fastmail.tlsfiles import ensure_self_signed

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "fastmail.toml"
UNIT = DEPLOY / "fastmail.service"
GUIDE = ROOT / "docs" / "operations.md"

PRODUCTION_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993,
                    "pop3": 110, "pop3s": 995}


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastmail", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


# -- the example configuration --------------------------------------------------------------------------


def _example() -> dict[str, Any]:
    with open(EXAMPLE, "rb") as f:
        return tomllib.load(f)


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected {old!r} exactly once in {EXAMPLE.name}"
    return text.replace(old, new)


def _machine_independent_copy(tmp_path: Path) -> Path:
    """The example with what depends on this machine swapped: the data folder, the user, the certificate
    pair (a real self-signed one, made by fastmail's own helper) and the folder of the LMTP unix socket."""
    raw = _example()
    text = EXAMPLE.read_text()
    data = tmp_path / "data"
    data.mkdir()
    text = _replace_once(text, f'data_dir = "{raw["server"]["data_dir"]}"', f'data_dir = "{data}"')
    me = pwd.getpwuid(os.geteuid()).pw_name
    text = _replace_once(text, f'user = "{raw["server"]["user"]}"', f'user = "{me}"')
    cert, key = tmp_path / "tls" / "fullchain.pem", tmp_path / "tls" / "privkey.pem"
    assert ensure_self_signed(cert, key, raw["server"]["hostname"])
    text = _replace_once(text, f'cert = "{raw["tls"]["cert"]}"', f'cert = "{cert}"')
    text = _replace_once(text, f'key = "{raw["tls"]["key"]}"', f'key = "{key}"')
    run = tmp_path / "run"
    run.mkdir()
    sockets = [item for items in raw["listen"].values() for item in items if item.startswith("unix:")]
    assert sockets, "the example puts LMTP on a unix socket"
    for item in sockets:
        text = _replace_once(text, f'"{item}"', f'"unix:{run / Path(item[5:]).name}"')
    copy = tmp_path / "fastmail.toml"
    copy.write_text(text)
    return copy


def test_example_config_passes_check_config(tmp_path):
    copy = _machine_independent_copy(tmp_path)
    r = _run_cli("check-config", "-c", str(copy))
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"{re.escape(str(copy))}: OK \(\d+ listeners, \d+ workers, data in .*\)\n", r.stdout)
    # Warnings are allowed only about the swapped user (e.g. "workers would run as root" when tests run as
    # root); anything else is the example's own problem.
    others = [line for line in r.stderr.splitlines() if ": server.user: " not in line]
    assert others == []


def test_check_config_of_the_copy_can_fail(tmp_path):
    """The check above is not vacuous: the same copy with one bad value is refused."""
    copy = _machine_independent_copy(tmp_path)
    text = copy.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("max_recipients = 100", "max_recipients = 5"))
    r = _run_cli("check-config", "-c", str(bad))
    assert r.returncode == 1 and "smtp.max_recipients" in r.stderr


def test_example_config_loads_as_it_is():
    """The first stage of validation (each value) needs nothing from the machine: the file loads as
    shipped, and has the production shape that the unit and docs/operations.md describe."""
    cfg = configmod.load(EXAMPLE)
    assert cfg.server_demo is False
    assert str(cfg.data_dir) == "/var/lib/fastmail"
    assert cfg.user == "fastmail"
    assert cfg.hostname == "mx.example.org"
    assert cfg.tls_cert and cfg.tls_key
    assert cfg.smtp_auth_plaintext_without_tls is False
    assert cfg.smtp_trusted_networks == []
    assert cfg.smtp_sender_login_match is True
    ports: dict[str, set[tuple[str, int]]] = {}
    lmtp = []
    for spec in cfg.listeners:
        base = spec.name.split("#", 1)[0]
        if base == "lmtp":
            lmtp.append(spec.address)
        else:
            assert not isinstance(spec.address, str)
            ports.setdefault(base, set()).add(spec.address)
    assert {base: {port for _, port in addrs} for base, addrs in ports.items()} == {
        base: {port} for base, port in PRODUCTION_PORTS.items()}
    # IPv6 listeners are IPv6-only (IPV6_V6ONLY): IPv4 must be listed on its own.
    assert all({"0.0.0.0", "::"} <= {host for host, _ in addrs} for addrs in ports.values())
    # LMTP takes mail for local users without any check: never on a public address.
    assert lmtp and all(isinstance(a, str) or a[0] in ("127.0.0.1", "::1", "localhost") for a in lmtp)


def _commented_settings() -> list[tuple[str, str, int]]:
    """The optional settings shown as "#key = value" lines: (section.key, TOML value, line number)."""
    found = []
    section = ""
    for n, line in enumerate(EXAMPLE.read_text().splitlines(), 1):
        if m := re.fullmatch(r"\[([a-z0-9_]+)\]\s*", line):
            section = m.group(1)
        elif m := re.fullmatch(r"#([a-z0-9_]+) = (.+?)(\s+#.*)?", line):
            found.append((f"{section}.{m.group(1)}", m.group(2), n))
    return found


def test_every_key_of_the_example_is_a_setting():
    known = {s.key for s in configmod.SETTINGS}
    raw = _example()
    keys = [f"{section}.{name}" for section, table in raw.items() for name in table]
    assert len(keys) >= 30
    assert sorted(set(keys) - known) == []
    commented = _commented_settings()
    assert len(commented) >= 10
    assert sorted({key for key, _, _ in commented} - known) == []


@pytest.mark.parametrize("key, value", [pytest.param(k, v, id=f"{k}={v}") for k, v, _ in _commented_settings()])
def test_commented_alternatives_are_valid_values(key, value):
    """Uncommenting any "#key = value" line of the example gives a file that still loads."""
    parsed = tomllib.loads(f"v = {value}")["v"]
    cfg = configmod.load(EXAMPLE, overrides={key: parsed})
    assert getattr(cfg, key.replace(".", "_")) == parsed


# -- the systemd unit -------------------------------------------------------------------------------------


def _unit() -> list[tuple[str, str, str]]:
    """(section, key, value) of every directive, in order, duplicates kept (ExecReload= appears twice)."""
    entries = []
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        assert not line.endswith("\\"), "no continuation lines"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def _service(key: str) -> list[str]:
    return [v for s, k, v in _unit() if s == "Service" and k == key]


def _one(key: str) -> str:
    values = _service(key)
    assert len(values) == 1, f"{key}= {values}"
    return values[0]


def test_unit_sections_and_hardening():
    assert {s for s, _, _ in _unit()} == {"Unit", "Service", "Install"}
    required = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes",
        "RestrictSUIDSGID": "yes", "RestrictRealtime": "yes", "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native", "SystemCallFilter": "@system-service",
        "LimitNOFILE": "65536", "KillMode": "mixed", "Type": "exec",
    }
    assert {k: _one(k) for k in required} == required
    assert set(_one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # Exactly what the root master uses (see the unit's comments and docs/operations.md).
    assert set(_one("CapabilityBoundingSet").split()) == {
        "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL"}
    assert _service("AmbientCapabilities") == [""]
    # Root: the master binds ports below 1024 and the workers drop to server.user themselves.
    assert _service("User") == [] and _service("DynamicUser") == []
    assert [("Install", "WantedBy", "multi-user.target")] == [e for e in _unit() if e[0] == "Install"]


def test_unit_matches_the_example_config():
    cfg = configmod.load(EXAMPLE)
    # The only writable place is the data folder (not StateDirectory=, which would chown it back to root)
    # and the runtime folder that holds the LMTP socket.
    assert _one("ReadWritePaths").split() == [str(cfg.data_dir)]
    assert _service("StateDirectory") == []
    runtime = Path("/run") / _one("RuntimeDirectory")
    for spec in cfg.listeners:
        if isinstance(spec.address, str):
            assert Path(spec.address).parent == runtime
    # systemd's SIGKILL must come after the master's own grace period for the sessions.
    stop = _one("TimeoutStopSec")
    seconds = float(stop.removesuffix("s")) if re.fullmatch(r"\d+(\.\d+)?s?", stop) else None
    assert seconds is not None and seconds > cfg.grace_period + 5


def test_unit_commands_are_real_cli_commands():
    parser = cli.build_parser()
    start = shlex.split(_one("ExecStart"))
    assert start[0] == "/usr/local/bin/fastmail"
    args = parser.parse_args(start[1:])
    assert args.func is cli.cmd_serve and args.config == "/etc/fastmail/fastmail.toml"
    check, hup = _service("ExecReload")
    args = parser.parse_args(shlex.split(check)[1:])
    assert args.func is cli.cmd_check_config and args.config == "/etc/fastmail/fastmail.toml"
    assert shlex.split(hup) == ["/bin/kill", "-HUP", "$MAINPID"]


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def _verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of the unit text, with /usr/local/bin/fastmail pointed at this checkout's
    fastmail script (verify insists that the binaries exist and are executable)."""
    script = Path(sys.executable).with_name("fastmail")
    assert os.access(script, os.X_OK), f"no fastmail script next to {sys.executable}"
    unit = tmp_path / "fastmail.service"
    unit.write_text(text.replace("/usr/local/bin/fastmail", str(script)))
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          env=env, timeout=60)


@needs_systemd
def test_unit_passes_systemd_analyze_verify(tmp_path):
    r = _verify(tmp_path, UNIT.read_text())
    # verify exits 0 even for unknown keys or bad values ("ignoring"): its warnings count as failures.
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr + r.stdout


@needs_systemd
@pytest.mark.parametrize("old, new", [("ProtectSystem=strict", "ProtectSytem=strict"),
                                      ("KillMode=mixed", "KillMode=mixd")])
def test_systemd_analyze_verify_catches_a_typo(tmp_path, old, new):
    text = UNIT.read_text()
    assert text.count(old) == 1
    r = _verify(tmp_path, text.replace(old, new))
    assert new.split("=")[0] in r.stderr or new.split("=")[1] in r.stderr


def _syscall_group(group: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    assert SYSTEMD_ANALYZE is not None
    out = subprocess.run([SYSTEMD_ANALYZE, "syscall-filter", group], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            if line not in seen:
                seen.add(line)
                names |= _syscall_group(line, seen)
        else:
            names.add(line)
    return names


@needs_systemd
def test_syscall_filter_allows_the_privilege_drop():
    """What fastmail/master/privileges.py and the arbiter call must be inside @system-service."""
    allowed = _syscall_group(_one("SystemCallFilter"))
    needed = {"setresuid", "setresgid", "setgroups", "setuid", "prctl", "chown", "fchownat", "kill",
              "fork", "clone", "wait4", "socket", "bind", "listen", "setsockopt", "mmap", "fdatasync",
              "fallocate", "epoll_wait"}
    assert needed - allowed == set()


# -- fastmail commands in the guide and in deploy/ --------------------------------------------------------


def _cli_choices(*words: str) -> set[str]:
    r = _run_cli(*words, "--help")
    assert r.returncode == 0, r.stderr
    m = re.search(r"\{([a-z,-]+)\}", r.stdout)
    assert m, r.stdout
    return set(m.group(1).split(","))


DOC_FILES = [GUIDE, DEPLOY / "README.md", EXAMPLE, UNIT]
_FASTMAIL = re.compile(r"(?:^|/)fastmail$")


def _code_block_commands(path: Path) -> list[tuple[int, list[str]]]:
    """Arguments of each `fastmail` command line in the fenced code blocks of a Markdown file."""
    commands = []
    fenced = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        line = re.split(r"\s#\s", line, maxsplit=1)[0]  # a trailing shell comment
        for part in re.split(r"\|\||&&|[|;]", line):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            if words and _FASTMAIL.search(words[0]):
                commands.append((n, words[1:]))
    return commands


def _inline_commands(path: Path) -> list[tuple[int, list[str]]]:
    """The leading words of each `fastmail ...` code span (`fastmail user add`, `fastmail check-config`)."""
    found = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        for m in re.finditer(r"`(?:/usr/local/bin/)?fastmail (?:(?:-c|--config|--data-dir) \S+ )*([^`]*)`", line):
            words = re.match(r"[a-z][a-z-]*(?: [a-z][a-z-]*)?", m.group(1))
            found.append((n, words.group(0).split() if words else [m.group(1)]))
    return found


def _comment_commands(path: Path) -> list[tuple[int, list[str]]]:
    """Command lines in the comments of the example config and the unit ("#     fastmail check-config -c
    FILE"), and the unit's Exec lines."""
    found = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = re.sub(r"^#\s{2,}|^Exec\w+=", "", line.strip())
        if re.match(r"(?:/usr/local/bin/)?fastmail ", text):
            found.append((n, shlex.split(text)[1:]))
    return found


def test_guide_and_deploy_commands_parse():
    parser = cli.build_parser()
    bad = []
    count = 0
    for path in [GUIDE, DEPLOY / "README.md"]:
        for n, argv in _code_block_commands(path):
            count += 1
            try:
                parser.parse_args(argv)
            except SystemExit:
                bad.append(f"{path.name}:{n}: fastmail {' '.join(argv)}")
    assert count >= 10
    assert bad == []


def test_the_command_check_can_fail():
    """A line like the ones checked above, with an action that does not exist, is refused by the parser."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["-c", "/etc/fastmail/fastmail.toml", "domain", "show"])


def test_named_subcommands_exist():
    """Every `fastmail SUBCOMMAND [ACTION]` named in the guide, deploy/README.md, the example config and the
    unit is one that `fastmail --help` (and `fastmail SUBCOMMAND --help`) lists."""
    commands = _cli_choices()
    assert {"serve", "check-config", "domain", "user", "dkim", "queue"} <= commands
    actions: dict[str, set[str]] = {}
    bad = []
    seen = 0
    for path in DOC_FILES:
        for n, words in _inline_commands(path):
            seen += 1
            if words[0] not in commands:
                bad.append(f"{path.name}:{n}: fastmail {' '.join(words)}")
            elif len(words) > 1 and words[0] not in ("serve", "check-config"):
                if words[0] not in actions:
                    actions[words[0]] = _cli_choices(words[0])
                if words[1] not in actions[words[0]]:
                    bad.append(f"{path.name}:{n}: fastmail {words[0]} {words[1]}")
    assert seen >= 10
    assert bad == []


def test_commands_in_config_and_unit_comments_parse():
    parser = cli.build_parser()
    found = [(path, n, argv) for path in (EXAMPLE, UNIT) for n, argv in _comment_commands(path)]
    assert len(found) >= 3  # check-config in the example's header, ExecStart, ExecReload
    bad = []
    for path, n, argv in found:
        try:
            parser.parse_args(argv)
        except SystemExit:
            bad.append(f"{path.name}:{n}: fastmail {' '.join(argv)}")
    assert bad == []
