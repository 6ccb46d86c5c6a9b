"""The `fastmail` command as an operator uses it: clear errors, exit codes, --json."""

from __future__ import annotations

import smtplib

import orjson

from .conftest import make_server
from .wire import insecure_tls_context


def test_accounts_lifecycle_and_errors(tmp_path):
    srv = make_server(tmp_path, workers=1)
    assert orjson.loads(srv.cli("domain", "list", "--json").stdout) == ["example.org"]
    users = {u["address"]: u for u in orjson.loads(srv.cli("user", "list", "--json").stdout)}
    assert set(users) == {"alice@example.org", "bob@example.org", "carol@example.org"}
    assert all("hash" not in u for u in users.values())
    stored_hash = srv.cli("user", "list").stdout
    assert b"argon2" not in stored_hash

    # errors: message on stderr, exit 1, nothing changed
    for args, text in [
        (("domain", "add", "example.org"), b"exists"),
        (("user", "add", "x@elsewhere.test", "--password", "p"), b"not ours"),
        (("user", "del", "nobody@example.org"), b"no user"),
        (("domain", "del", "example.org"), b"still has users"),
        (("alias", "add", "x@elsewhere.test", "a@example.org"), b"not ours"),
        (("queue", "show", "0000"), b"no queue entry"),
        (("message", "show", "alice@example.org", "INBOX", "9"), b"no message 9"),
        (("mailbox", "list", "nobody@example.org"), b"no user"),
    ]:
        res = srv.cli(*args, check=False)
        assert res.returncode == 1 and res.stderr.startswith(b"fastmail: error: ") and text in res.stderr, (args, res)
    res = srv.cli("user", "frobnicate", check=False)
    assert res.returncode == 2

    # generated password is printed once; quota; passwd; alias and catch-all listing
    out = srv.cli("user", "add", "dave@example.org", "--quota", "1000").stdout
    assert b"password: " in out
    srv.cli("user", "passwd", "dave@example.org", "--password-stdin", input=b"new-pass\n")
    srv.cli("user", "quota", "dave@example.org", "2000")
    dave = [u for u in orjson.loads(srv.cli("user", "list", "--json").stdout) if u["address"] == "dave@example.org"][0]
    assert dave["quota"] == 2000
    srv.cli("alias", "add", "@example.org", "dave@example.org")
    aliases = orjson.loads(srv.cli("alias", "list", "--json").stdout)
    assert aliases["@example.org"] == ["dave@example.org"]
    assert aliases["team@example.org"] == ["alice@example.org", "bob@example.org"]
    srv.cli("alias", "del", "@example.org")
    srv.cli("user", "del", "dave@example.org")
    boxes = orjson.loads(srv.cli("mailbox", "list", "alice@example.org", "--json").stdout)
    assert {b["name"]: b["special"] for b in boxes} == {
        "INBOX": None, "Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
        "Archive": "\\Archive"}


def test_message_and_queue_inspection(server):
    msg = b"Subject: cli\r\n\r\nhello cli\r\n"
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail("x@remote.test", ["carol@example.org"], msg)
    listing = orjson.loads(server.cli("message", "list", "carol@example.org", "INBOX", "--json").stdout)
    assert [m["uid"] for m in listing] == [1]
    raw = server.cli("message", "show", "carol@example.org", "INBOX", "1").stdout
    assert raw.startswith(b"Received: from ") and raw.endswith(msg)
    assert orjson.loads(server.cli("queue", "list", "--json").stdout) == []
    assert b"queue is empty" in server.cli("queue", "list").stdout
    # submission to a remote address waits in the queue; show --raw gives the message; delete removes it
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=insecure_tls_context())
        s.login("carol@example.org", "carol-secret")
        s.sendmail("carol@example.org", ["far@remote.test"], msg, rcpt_options=["NOTIFY=FAILURE"])
    (entry,) = orjson.loads(server.cli("queue", "list", "--json").stdout)
    assert entry["sender"] == "carol@example.org" and entry["rcpts"][0]["to"] == "far@remote.test"
    assert entry["rcpts"][0]["notify"] == "FAILURE"
    assert server.cli("queue", "show", entry["id"], "--raw").stdout.endswith(msg)
    server.cli("queue", "delete", entry["id"])
    assert orjson.loads(server.cli("queue", "list", "--json").stdout) == []


def test_queue_hold_and_release_all(server):
    msg = b"Subject: cli\r\n\r\nhello cli\r\n"
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=insecure_tls_context())
        s.login("carol@example.org", "carol-secret")
        s.sendmail("carol@example.org", ["far@remote.test"], msg)
        s.sendmail("carol@example.org", ["near@other.test"], msg)

    def held() -> dict[str, bool]:
        entries = orjson.loads(server.cli("queue", "list", "--json").stdout)
        return {e["rcpts"][0]["to"]: e["state"] == "held" for e in entries}

    assert held() == {"far@remote.test": False, "near@other.test": False}
    out = orjson.loads(server.cli("queue", "hold", "--all", "--domain", "Remote.test", "--json").stdout)
    assert out["count"] == 1 and held() == {"far@remote.test": True, "near@other.test": False}
    assert b"1 queue entries" in server.cli("queue", "hold", "--all").stdout
    assert held() == {"far@remote.test": True, "near@other.test": True}
    assert orjson.loads(server.cli("queue", "hold", "--all", "--json").stdout)["count"] == 0
    out = orjson.loads(server.cli("queue", "release", "--all", "--domain", "other.test", "--json").stdout)
    assert out["count"] == 1 and held() == {"far@remote.test": True, "near@other.test": False}
    assert orjson.loads(server.cli("queue", "release", "--all", "--json").stdout)["count"] == 1
    assert held() == {"far@remote.test": False, "near@other.test": False}
    for args, text in [(("queue", "hold"), b"queue id"), (("queue", "release", "00", "--all"), b"not both"),
                       (("queue", "hold", "00", "--domain", "x.test"), b"--all")]:
        res = server.cli(*args, check=False)
        assert res.returncode == 1 and text in res.stderr, (args, res)
    for e in orjson.loads(server.cli("queue", "list", "--json").stdout):
        server.cli("queue", "delete", e["id"])


def test_check_config(tmp_path):
    srv = make_server(tmp_path, workers=1)
    assert b": OK (" in srv.cli("check-config").stdout
    listing = srv.cli("check-config", "--list").stdout
    assert b"smtp.max_recipients" in listing and b"server.data_dir" in listing


# -- the configuration checks of serve and check-config (issue #2) -----------------------------------------


def _break(srv, server: str, tail: str = "") -> None:
    """Add `server` lines to [server] and `tail` at the end of the test server's config."""
    srv.config.write_text(srv.config.read_text().replace("[server]\n", f"[server]\n{server}", 1) + tail)


def _errors(res) -> list[str]:
    lines = res.stderr.decode().splitlines()
    assert lines and all(line.startswith("fastmail: error: ") for line in lines), res.stderr
    return [line.removeprefix("fastmail: error: ") for line in lines]


def test_check_config_lists_every_problem(tmp_path):
    srv = make_server(tmp_path, workers=1)
    _break(srv, 'user = "fastmail-no-such-user"\ngroup = "fastmail-no-such-group"\n',
           f'\n[tls]\ncert = "{tmp_path / "missing.pem"}"\n')
    srv.config.write_text(srv.config.read_text().replace(
        f'submission = ["127.0.0.1:{srv.ports["submission"]}"]', f'submission = ["127.0.0.1:{srv.ports["smtp"]}"]'))
    res = srv.cli("check-config", check=False)
    assert res.returncode == 1 and res.stdout == b""
    c = srv.config
    assert _errors(res) == [
        f"{c}: server.user: user 'fastmail-no-such-user' does not exist",
        f"{c}: server.group: group 'fastmail-no-such-group' does not exist",
        f"{c}: listen.submission: '127.0.0.1:{srv.ports['smtp']}' is also in listen.smtp",
        f"{c}: tls.cert: {tmp_path / 'missing.pem'} does not exist",
    ]
    # the commands that do not serve still work: an operator can manage accounts meanwhile
    assert b"example.org" in srv.cli("domain", "list").stdout


def test_serve_with_a_bad_config_binds_nothing(tmp_path):
    import socket
    import subprocess

    from .conftest import fastmail_cmd

    srv = make_server(tmp_path, workers=1)
    cert, other_key = _cert_pair(tmp_path)
    _break(srv, 'user = "fastmail-no-such-user"\n', f'\n[tls]\ncert = "{cert}"\nkey = "{other_key}"\n')
    res = subprocess.run(fastmail_cmd("serve", "-c", str(srv.config)), capture_output=True, timeout=60)
    assert res.returncode == 1, res
    assert _errors(res) == [f"{srv.config}: server.user: user 'fastmail-no-such-user' does not exist",
                            f"{srv.config}: tls.key: does not match tls.cert: {other_key} is not the key of {cert}"]
    assert b"event=listen" not in res.stderr and b"master_start" not in res.stderr
    for port in srv.ports.values():  # nothing was left listening either
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


def _cert_pair(tmp_path):
    """A certificate and the key of another one."""
    from fastmail.tlsfiles import ensure_self_signed

    ensure_self_signed(tmp_path / "a.pem", tmp_path / "a.key", "mx.example.org")
    ensure_self_signed(tmp_path / "b.pem", tmp_path / "b.key", "mx.example.org")
    return tmp_path / "a.pem", tmp_path / "b.key"


def test_first_start_of_the_embedded_default(tmp_path, monkeypatch):
    """No config file: the checks pass, then the first start makes the data folder, a self-signed
    certificate (which the checks of the next start accept) and the demo user."""
    import subprocess

    from fastmail import config
    from fastmail.cli import DEMO_USER, bootstrap
    from fastmail.tlsfiles import check_pair

    from .conftest import fastmail_cmd

    monkeypatch.chdir(tmp_path)
    cfg = config.load(serve=True)
    bootstrap(cfg)
    cert, key = cfg.tls_files
    assert cert == tmp_path / "fastmail-data" / "tls" / "cert.pem" and check_pair(cert, key) == ([], [])
    assert (tmp_path / "fastmail-data" / "demo-credentials.txt").read_text().startswith(f"user: {DEMO_USER}\n")
    config.load(serve=True)
    res = subprocess.run(fastmail_cmd("user", "list", "--json"), capture_output=True, timeout=60, cwd=tmp_path)
    assert [u["address"] for u in orjson.loads(res.stdout)] == [DEMO_USER]
    res = subprocess.run(fastmail_cmd("check-config"), capture_output=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith(b"<defaults>: OK (8 listeners"), res


def test_config_option_before_or_after_the_subcommand(tmp_path):
    """`-c FILE` (and --data-dir) go before the subcommand, as docs/dkim.md writes them, or after it, as
    docs/operations.md does; given in both places, the later one counts."""
    import re
    import shlex
    import subprocess
    from pathlib import Path

    from .conftest import fastmail_cmd

    srv = make_server(tmp_path, workers=1)
    cfg = str(srv.config)

    def run(*argv: str) -> bytes:
        res = subprocess.run(fastmail_cmd(*argv), capture_output=True, timeout=60, cwd=tmp_path)
        assert res.returncode == 0, (argv, res.stderr)
        return res.stdout

    for argv in (["-c", cfg, "domain", "list", "--json"], ["domain", "list", "--json", "-c", cfg],
                 ["domain", "-c", cfg, "list", "--json"], ["-c", "/nonexistent.toml", "domain", "list", "--json",
                                                            "--config", cfg]):
        assert orjson.loads(run(*argv)) == ["example.org"], argv
    other = tmp_path / "other-data"
    run("--data-dir", str(other), "-c", cfg, "domain", "add", "other.test")
    assert orjson.loads(run("domain", "list", "--json", "-c", cfg, "--data-dir", str(other))) == ["other.test"]

    # the keygen lines of docs/dkim.md, as written there, with this server's file
    guide = (Path(__file__).resolve().parents[2] / "docs" / "dkim.md").read_text()
    lines = [line.split("#", 1)[0] for line in guide.splitlines() if re.match(r"fastmail -c \S+ dkim keygen ", line)]
    assert len(lines) == 2
    for line in lines:
        argv = shlex.split(line)[1:]
        argv[1] = cfg
        assert b"publish this TXT record" in run(*argv)
    keys = orjson.loads(run("dkim", "list", "--json", "-c", cfg))
    assert sorted(k["algorithm"] for k in keys) == ["ed25519", "rsa"]
    assert keys == orjson.loads(run("-c", cfg, "dkim", "list", "--json"))
    assert all(k["path"].startswith(str(srv.data / "dkim")) for k in keys)
