"""Settings: declared once, validated with 'FILE: key: reason', documented from the same table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastmail import config
from fastmail.config import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "f.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_dev_server():
    cfg = config.load()
    assert cfg.server_demo is True
    assert [(s.name, s.address) for s in cfg.listeners] == [
        ("smtp", ("127.0.0.1", 2525)), ("submission", ("127.0.0.1", 2587)),
        ("submissions", ("127.0.0.1", 2465)), ("lmtp", ("127.0.0.1", 2424)),
        ("imap", ("127.0.0.1", 1143)), ("imaps", ("127.0.0.1", 1993)),
        ("pop3", ("127.0.0.1", 1110)), ("pop3s", ("127.0.0.1", 1995))]
    assert cfg.smtp_max_recipients == 100 and cfg.workers >= 1


def test_file_values_and_relative_data_dir(tmp_path):
    p = _write(tmp_path, '[server]\ndata_dir = "d"\nworkers = 3\n[listen]\nlmtp = ["[::1]:24", "unix:/tmp/x.sock"]\n')
    cfg = config.load(p)
    assert cfg.data_dir == (tmp_path / "d").resolve() and cfg.workers == 3 and cfg.server_demo is False
    assert [s.address for s in cfg.listeners if s.name.startswith("lmtp")] == [("::1", 24), "/tmp/x.sock"]


@pytest.mark.parametrize("text, key, reason", [
    ("[smtp]\nmax_recipients = 5\n", "smtp.max_recipients", "must be at least 100"),
    ("[smtp]\nmax_line_length = 100\n", "smtp.max_line_length", "must be at least 512"),
    ("[smtp]\nbare_lf = \"maybe\"\n", "smtp.bare_lf", "must be one of normalize, reject"),
    ("[server]\nworkers = \"two\"\n", "server.workers", "must be of type int"),
    ("[server]\nworkers = 0\n", "server.workers", "must be > 0"),
    ("[server]\nworkers = true\n", "server.workers", "must be an integer"),
    ("[server]\ncolour = 1\n", "server.colour", "unknown setting"),
    ("[listen]\nsmtp = [\"nowhere\"]\n", "listen.smtp", "expected HOST:PORT"),
    ("[listen]\nsmtp = [\"example.org:25\"]\n", "listen.smtp", "host must be an IP address"),
    ("[listen]\nsmtp = [\"127.0.0.1:70000\"]\n", "listen.smtp", "port out of range"),
    ("[smtp]\ntrusted_networks = [\"10.0.0.0/33\"]\n", "smtp.trusted_networks", "10.0.0.0/33"),
])
def test_bad_values_name_file_key_and_reason(tmp_path, text, key, reason):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(e.value).startswith(f"{p}: {key}: ") and reason in str(e.value)


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="TOML syntax"):
        config.load(_write(tmp_path, "[server\n"))
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


def test_docs_match_settings():
    doc = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    assert doc == config.describe(), "regenerate docs/config.md from fastmail.config.describe()"


# -- every setting is checked (issue #2) -------------------------------------------------------------------


def test_every_setting_has_a_validator():
    unchecked = [s.key for s in config.SETTINGS if s.validate is None and s.type is not bool]
    assert unchecked == [], "give these settings a validator (a range, a choice, a format)"


def _problems(p: Path, serve: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config.load(p, serve=serve)
    assert str(e.value) == "\n".join(e.value.errors)
    return e.value.errors


@pytest.mark.parametrize("name, reason", [
    ("192.0.2.1", "is an IP address, not a host name"),
    ("[192.0.2.1]", "is an IP address"),
    ("2001:db8::1", "is an IP address"),
    ("mail_1.example.org", "has '_' in label 'mail_1'"),
    ("mx..example.org", "has an empty label"),
    (".example.org", "has an empty label"),
    ("mx.example.org.", "ends with '.'"),
    ("mx.example.org extra", "label 'org extra'"),
    ("-mx.example.org", "label '-mx'"),
    ("a" * 64 + ".example.org", "has a label of 64 characters"),
    (".".join(["abcdefghi"] * 26), "is 259 characters long (at most 253)"),
    ("mx.exämple.org", "is not ASCII"),
    ("mx.example.123", "ends with an all-digit label"),
])
def test_bad_hostnames(tmp_path, name, reason):
    p = _write(tmp_path, f'[server]\nhostname = "{name}"\n')
    (problem,) = _problems(p, serve=False)
    assert problem.startswith(f"{p}: server.hostname: ") and reason in problem


@pytest.mark.parametrize("name", ["mx.example.org", "localhost", "MX1.Example.ORG", "xn--bcher-kva.example",
                                  "a" * 63 + ".example.org", "123.example.org"])
def test_good_hostnames(tmp_path, name):
    assert config.load(_write(tmp_path, f'[server]\nhostname = "{name}"\n')).server_hostname == name


@pytest.mark.parametrize("text, key, reason", [
    ('[checks]\ndnsbl = ["zen.spamhaus.org", "bl_x.test"]\n', "checks.dnsbl", "'_' in label 'bl_x'"),
    ('[checks]\ndnswl = [""]\n', "checks.dnswl", "an empty name"),
    ('[delivery]\nrequire_tls_domains = ["192.0.2.1"]\n', "delivery.require_tls_domains", "IP address"),
    ('[greylist]\nwhitelist_domains = ["a..b"]\n', "greylist.whitelist_domains", "empty label"),
    ('[delivery]\nrelayhost = "smtp_relay.example:587"\n', "delivery.relayhost", "'_' in label"),
    ('[rspamd]\nurl = "https://127.0.0.1:11333"\n', "rspamd.url", "not http://HOST[:PORT]"),
    ('[rspamd]\ncontroller_url = "127.0.0.1:11334"\n', "rspamd.controller_url", "not http://HOST[:PORT]"),
    ('[rspamd]\npassword = "a\\r\\nX-Evil: 1"\n', "rspamd.password", "CR, LF or NUL"),
    ('[clamav]\naddress = "clamd"\n', "clamav.address", "neither unix:/PATH nor HOST:PORT"),
    ('[spam]\njunk_folder = "Junk/*"\n', "spam.junk_folder", "cannot be a mailbox name"),
    ('[spam]\njunk_folder = "inbox"\n', "spam.junk_folder", "must not be INBOX"),
    ('[spam]\nreject_score = nan\n', "spam.reject_score", "must be a finite number"),
    ('[smtp]\ncommand_timeout = inf\n', "smtp.command_timeout", "must be a finite number"),
    ('[smtp]\ntrusted_networks = ["::/0"]\n', "smtp.trusted_networks", "open relay"),
    ('[checks]\nauthserv_id = "mx example"\n', "checks.authserv_id", "no spaces"),
    ('[server]\nuser = "a:b"\n', "server.user", "cannot be a user or group name"),
    ('[server]\ndata_dir = ""\n', "server.data_dir", "must not be empty"),
    (f'[listen]\nlmtp = ["unix:/{"x" * 120}"]\n', "listen.lmtp", "at most 107 bytes"),
    ('[delivery]\nport = 0\n', "delivery.port", "must be a TCP port"),
])
def test_formats(tmp_path, text, key, reason):
    p = _write(tmp_path, text)
    (problem,) = _problems(p, serve=False)
    assert problem.startswith(f"{p}: {key}: ") and reason in problem


@pytest.mark.parametrize("listen, key, reason", [
    ('smtp = ["127.0.0.1:2525"]\nsubmission = ["127.0.0.1:2525"]', "listen.submission", "is also in listen.smtp"),
    ('smtp = ["127.0.0.1:2525", "127.0.0.1:2525"]', "listen.smtp", "is listed twice"),
    ('smtp = ["0.0.0.0:2525"]\nlmtp = ["127.0.0.1:2525"]', "listen.lmtp", "overlaps '0.0.0.0:2525' of listen.smtp"),
    ('imap = ["[::1]:1143"]\nimaps = ["[::]:1143"]', "listen.imaps", "overlaps '[::1]:1143' of listen.imap"),
    ('smtp = ["localhost:2525"]\nsubmission = ["[::1]:2525"]', "listen.submission", "overlaps"),
    ('lmtp = ["unix:/tmp/x.sock"]\nsmtp = ["unix:/tmp/../tmp/x.sock"]', "listen.lmtp", "overlaps"),
    # ":PORT" is every address of both families (one dual-stack socket): it overlaps all of them
    ('smtp = [":2525"]\nsubmission = ["0.0.0.0:2525"]', "listen.submission", "overlaps ':2525' of listen.smtp"),
    ('smtp = [":2525"]\nsubmission = ["[::]:2525"]', "listen.submission", "overlaps ':2525' of listen.smtp"),
    ('smtp = ["0.0.0.0:2525", "[::]:2525"]\nsubmission = [":2525"]', "listen.submission",
     "overlaps '0.0.0.0:2525' of listen.smtp"),
    ('smtp = [":2525"]\nsubmission = ["[::1]:2525"]', "listen.submission", "overlaps ':2525' of listen.smtp"),
    ('smtp = ["127.0.0.1:2525"]\nsubmission = [":2525"]', "listen.submission", "overlaps '127.0.0.1:2525'"),
    ('smtp = [":2525", ":2525"]', "listen.smtp", "is listed twice"),
])
def test_two_listeners_on_one_address(tmp_path, listen, key, reason):
    p = _write(tmp_path, f"[listen]\n{listen}\n")
    problems = [x for x in _problems(p) if ": listen." in x]
    assert len(problems) == 1 and problems[0].startswith(f"{p}: {key}: ") and reason in problems[0], problems


def test_listeners_that_do_not_overlap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # IPv6 listeners are IPv6-only: 0.0.0.0 and :: on one port are two listeners, as on a dual-stack host
    p = _write(tmp_path, '[listen]\nsmtp = ["0.0.0.0:2525", "[::]:2525"]\nsubmission = ["127.0.0.2:2525"]\n'
                         'lmtp = []\n')
    with pytest.raises(ConfigError) as e:
        config.load(p, serve=True)
    assert [x for x in e.value.errors if ": listen." in x] == [f"{p}: listen.submission: '127.0.0.2:2525' overlaps "
                                                               "'0.0.0.0:2525' of listen.smtp (the same port)"]
    p.write_text('[listen]\nsmtp = ["0.0.0.0:2525", "[::]:2525"]\nsubmission = ["127.0.0.1:2587"]\n')
    assert len(config.load(p, serve=True).listeners) == 9
    p.write_text('[listen]\nsmtp = [":2525"]\nsubmission = ["127.0.0.1:2587", ":2588"]\n')
    assert [s.address for s in config.load(p, serve=True).listeners][:3] == [
        ("", 2525), ("127.0.0.1", 2587), ("", 2588)]


@pytest.mark.parametrize("item, address", [
    (":25", ("", 25)),  # every address, IPv4 and IPv6: fastmail.master.listeners binds one dual-stack socket
    ("[::]:25", ("::", 25)),  # IPv6 only (IPV6_V6ONLY), to be combined with 0.0.0.0:25
    ("0.0.0.0:25", ("0.0.0.0", 25)),
    ("[::1]:24", ("::1", 24)),
    ("127.0.0.1:2525", ("127.0.0.1", 2525)),
    ("unix:/run/fastmail/lmtp.sock", "/run/fastmail/lmtp.sock"),
])
def test_parse_listen(item, address):
    assert config.parse_listen(item) == address


@pytest.mark.parametrize("text, key, reason", [
    ('[server]\ngroup = "root"\n', "server.group", "server.user is not"),
    ('[tls]\nkey = "k.pem"\n', "tls.key", "tls.cert is not"),
    ('[delivery]\nrelayhost_user = "u"\nrelayhost_password_file = "/dev/null"\n', "delivery.relayhost_user",
     "delivery.relayhost is not"),
    ('[delivery]\nrelayhost = "relay.example"\nrelayhost_user = "u"\n', "delivery.relayhost_user",
     "needs delivery.relayhost_password_file"),
    ('[delivery]\nretry_base = 600\nretry_max = 60\n', "delivery.retry_max", "less than delivery.retry_base"),
    ('[greylist]\ndelay = 600\nexpire = 300\n', "greylist.expire", "longer than greylist.delay"),
    ('[spam]\njunk_score = 20\n', "spam.junk_score", "above spam.reject_score"),
    ('[rspamd]\nlearn = true\n', "rspamd.learn", "needs rspamd.controller_url"),
])
def test_values_together(tmp_path, monkeypatch, text, key, reason):
    monkeypatch.chdir(tmp_path)
    p = _write(tmp_path, text)
    config.load(p)  # each value alone is fine: the commands that do not serve take it
    (problem,) = [x for x in _problems(p) if f": {key}: " in x]
    assert problem.startswith(f"{p}: {key}: ") and reason in problem


def test_defaults_pass_every_check(tmp_path, monkeypatch):
    """The embedded dev server: no file, data in ./fastmail-data (not there yet), a self-signed certificate
    made on first start."""
    monkeypatch.chdir(tmp_path)
    cfg = config.load(serve=True)
    assert cfg.data_dir == tmp_path / "fastmail-data" and not cfg.data_dir.exists()
    assert [w for w in cfg.warnings if w.key != "server.hostname"] == []


# -- what the host must provide ----------------------------------------------------------------------------


def _server(tmp_path: Path, text: str = "") -> Path:
    """A config whose data folder is ready, plus `text`."""
    (tmp_path / "data").mkdir(exist_ok=True)
    return _write(tmp_path, f'[server]\ndata_dir = "data"\n{text}')


def _pair(tmp_path: Path, name: str, hostname: str = "mx.example.org") -> tuple[Path, Path]:
    from fastmail.tlsfiles import ensure_self_signed

    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    ensure_self_signed(cert, key, hostname)
    return cert, key


def test_user_and_group_must_exist(tmp_path):
    p = _server(tmp_path, 'user = "fastmail-no-such-user"\ngroup = "fastmail-no-such-group"\n')
    assert _problems(p) == [f"{p}: server.user: user 'fastmail-no-such-user' does not exist",
                            f"{p}: server.group: group 'fastmail-no-such-group' does not exist"]
    config.load(p)  # the commands that do not serve do not care


def test_user_needs_root_unless_it_is_us(tmp_path, monkeypatch):
    import pwd

    nobody = pwd.getpwnam("nobody")
    p = _server(tmp_path, 'user = "root"\n')
    monkeypatch.setattr(os, "geteuid", lambda: nobody.pw_uid)
    (problem,) = _problems(p)
    assert problem.startswith(f"{p}: server.user: cannot switch to 'root': fastmail runs as user 'nobody' "
                              f"(uid {nobody.pw_uid}), not root")
    p = _server(tmp_path, 'user = "nobody"\n')  # already that user: nothing to switch
    monkeypatch.setattr(os, "getegid", lambda: nobody.pw_gid)
    assert config.load(p, serve=True).server_user == "nobody"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_data_dir_out_of_the_users_reach(tmp_path):
    """Checked as server.user itself (a forked child that drops to it), not by reading mode bits."""
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody").pw_uid
    base = Path(tempfile.mkdtemp(prefix="fastmail-config-"))  # pytest's tmp_path is private to root
    try:
        base.chmod(0o755)
        closed = base / "closed"
        closed.mkdir(mode=0o700)
        p = _write(tmp_path, f'[server]\nuser = "nobody"\ndata_dir = "{closed}/data"\n')
        assert _problems(p) == [f"{p}: server.data_dir: user 'nobody' (uid {nobody}, server.user) cannot reach "
                                f"{closed} (mode 0700, owner root:root)"]
        (closed / "data").mkdir()  # the master gives the data folder itself to the user; its parents it cannot
        assert _problems(p) == [f"{p}: server.data_dir: user 'nobody' (uid {nobody}, server.user) cannot reach "
                                f"{closed} (mode 0700, owner root:root)"]
        closed.chmod(0o711)
        assert config.load(p, serve=True).data_dir == closed / "data"
        p.write_text(p.read_text() + f'[delivery]\ntls_ca_file = "{closed}/ca.pem"\n')
        from fastmail.tlsfiles import ensure_self_signed

        ensure_self_signed(closed / "ca.pem", closed / "ca.key", "ca.test")
        (closed / "ca.pem").chmod(0o600)
        assert _problems(p) == [f"{p}: delivery.tls_ca_file: user 'nobody' (uid {nobody}, server.user) cannot "
                                f"read {closed / 'ca.pem'} (mode 0600, owner root:root)"]
    finally:
        shutil.rmtree(base)


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    p = _write(tmp_path, '[server]\ndata_dir = "plain"\n')
    assert _problems(p) == [f"{p}: server.data_dir: {tmp_path / 'plain'} is not a folder"]
    p.write_text('[server]\ndata_dir = "plain/data"\n')
    assert _problems(p) == [f"{p}: server.data_dir: cannot make {tmp_path / 'plain' / 'data'}: "
                            f"{tmp_path / 'plain'} is not a folder"]


def test_files_that_are_written(tmp_path):
    p = _server(tmp_path, 'pid_file = "run/fastmail.pid"\n[listen]\nlmtp = ["unix:sock/lmtp.sock"]\n')
    problems = _problems(p)
    assert problems[0] == f"{p}: server.pid_file: folder {tmp_path / 'run'} does not exist"
    # a unix socket path is taken as written (relative: to where fastmail starts)
    assert problems[1].startswith(f"{p}: listen.lmtp: 'unix:sock/lmtp.sock': folder ") and len(problems) == 2
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "fastmail.pid").mkdir()
    assert _problems(p)[0] == f"{p}: server.pid_file: {tmp_path / 'run' / 'fastmail.pid'} is a folder"


def test_missing_and_garbage_certificates(tmp_path):
    cert, key = _pair(tmp_path, "good")
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cases = [
        ('cert = "missing.pem"\nkey = "good.key"', "tls.cert", f"{tmp_path / 'missing.pem'} does not exist"),
        ('cert = "good.pem"\nkey = "missing.key"', "tls.key", f"{tmp_path / 'missing.key'} does not exist"),
        ('cert = "garbage.pem"\nkey = "good.key"', "tls.cert", "garbage.pem: no PEM certificate in it"),
        ('cert = "good.pem"\nkey = "garbage.pem"', "tls.key", "garbage.pem: no PEM private key in it"),
        ('cert = "good.pem"', "tls.cert", "good.pem: no PEM private key in it (set tls.key to the key's file)"),
        ('cert = "good.key"\nkey = "good.key"', "tls.cert", "good.key: no PEM certificate in it"),
        (f'cert = "{tmp_path}"\nkey = "good.key"', "tls.cert", f"{tmp_path} is a folder"),
    ]
    for tls, key_name, reason in cases:
        p = _server(tmp_path, f"[tls]\n{tls}\n")
        (problem,) = _problems(p)
        assert problem.startswith(f"{p}: {key_name}: ") and reason in problem, (tls, problem)


def test_unreadable_certificate(tmp_path):
    """As root (CI), checked by a forked child that switches to nobody: root reads every file."""
    import json
    import pwd
    import shutil
    import tempfile

    if os.geteuid() != 0:
        base = tmp_path
    else:
        base = Path(tempfile.mkdtemp(prefix="fastmail-config-"))  # pytest's tmp_path is private to root
        base.chmod(0o755)
    try:
        cert, key = _pair(base, "good")
        p = _server(base, f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
        config.load(p, serve=True)  # readable: no problem (and every module the check imports is loaded)
        cert.chmod(0)
        if os.geteuid() != 0:
            problems = _problems(p)
        else:
            nobody = pwd.getpwnam("nobody")
            os.chown(base / "data", nobody.pw_uid, nobody.pw_gid)
            key.chmod(0o644)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: nobody, then the same check, its problems back through the pipe
                try:
                    os.setgroups([])
                    os.setgid(nobody.pw_gid)
                    os.setuid(nobody.pw_uid)
                    try:
                        config.load(p, serve=True)
                        out: list[str] = []
                    except ConfigError as e:
                        out = e.errors
                    except Exception as e:  # noqa: BLE001 - reported to the parent
                        out = [repr(e)]
                    os.write(w, json.dumps(out).encode())
                finally:
                    os._exit(0)
            os.close(w)
            with os.fdopen(r, "rb") as f:
                problems = json.loads(f.read() or b"null")
            os.waitpid(pid, 0)
        assert problems is not None and len(problems) == 1, problems
        assert problems[0] == f"{p}: tls.cert: {cert}: Permission denied"
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def test_key_must_match_the_certificate(tmp_path):
    _pair(tmp_path, "one")
    _pair(tmp_path, "two")
    p = _server(tmp_path, '[tls]\ncert = "one.pem"\nkey = "two.key"\n')
    assert _problems(p) == [f"{p}: tls.key: does not match tls.cert: {tmp_path / 'two.key'} is not the key of "
                            f"{tmp_path / 'one.pem'}"]
    p = _server(tmp_path, '[tls]\ncert = "one.pem"\nkey = "one.key"\n')
    assert config.load(p, serve=True).tls_files == (tmp_path / "one.pem", tmp_path / "one.key")
    # both in one file (key first or last) is fine too
    (tmp_path / "both.pem").write_bytes((tmp_path / "one.key").read_bytes() + (tmp_path / "one.pem").read_bytes())
    config.load(_server(tmp_path, '[tls]\ncert = "both.pem"\n'), serve=True)


def test_key_with_a_passphrase(tmp_path):
    from cryptography.hazmat.primitives import serialization

    cert, key = _pair(tmp_path, "one")
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"secret")))
    (problem,) = _problems(_server(tmp_path, '[tls]\ncert = "one.pem"\nkey = "one.key"\n'))
    assert problem.endswith("tls.key: " + f"{key}: the key is encrypted with a passphrase (store it without one)")


def test_broken_self_signed_files_of_an_earlier_start(tmp_path):
    p = _server(tmp_path)
    (tmp_path / "data" / "tls").mkdir()
    (tmp_path / "data" / "tls" / "cert.pem").write_text("junk")
    (tmp_path / "data" / "tls" / "key.pem").write_text("junk")
    (problem,) = _problems(p)
    assert problem.startswith(f"{p}: tls.cert: ") and "remove it and its key to have new ones made" in problem


def test_certificate_validity_is_a_warning(tmp_path):
    import datetime

    from fastmail.tlsfiles import check_pair

    cert, key = _pair(tmp_path, "one")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=4000)
    assert check_pair(cert, key) == ([], [])
    problems, warnings = check_pair(cert, key, now=later)
    assert problems == [] and len(warnings) == 1 and "the certificate expired on" in warnings[0]


def test_files_that_are_read(tmp_path):
    (tmp_path / "empty.pw").write_text("\n")
    (tmp_path / "junk-ca.pem").write_text("junk")
    p = _server(tmp_path, '[delivery]\nrelayhost = "relay.example"\nrelayhost_user = "u"\n'
                          'relayhost_password_file = "missing.pw"\ntls_ca_file = "junk-ca.pem"\n')
    assert _problems(p) == [
        f"{p}: delivery.tls_ca_file: {tmp_path / 'junk-ca.pem'}: no usable CA certificate in it "
        "(NO_CERTIFICATE_OR_CRL_FOUND)",
        f"{p}: delivery.relayhost_password_file: {tmp_path / 'missing.pw'}: No such file or directory"]
    p.write_text(p.read_text().replace("missing.pw", "empty.pw").replace("junk-ca.pem", "ca.pem"))
    cert, _ = _pair(tmp_path, "ca")
    assert _problems(p) == [f"{p}: delivery.relayhost_password_file: {tmp_path / 'empty.pw'}: the first line "
                            "(the password) is empty"]
    (tmp_path / "empty.pw").write_text("s3cret\n")
    cfg = config.load(p, serve=True)
    assert cfg.delivery_tls_ca_file == str(cert)  # relative to the config file


def test_every_problem_at_once_in_setting_order(tmp_path):
    (tmp_path / "plain").write_text("x")
    p = _write(tmp_path, '[smtp]\nmax_recipients = 5\n[server]\nuser = "fastmail-no-such-user"\n'
                         'hostname = "mail_host"\ndata_dir = "plain"\ncolour = 1\n'
                         '[listen]\nsmtp = ["127.0.0.1:2525"]\nsubmission = ["127.0.0.1:2525"]\n'
                         '[tls]\ncert = "missing.pem"\n')
    problems = _problems(p)
    assert [x.split(": ")[1] for x in problems] == [
        "server.colour", "server.hostname", "server.data_dir", "server.user", "listen.submission", "tls.cert",
        "smtp.max_recipients"]
    assert all(x.startswith(f"{p}: ") for x in problems)
    # without serve: only the values alone
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert [x.split(": ")[1] for x in e.value.errors] == ["server.colour", "server.hostname", "smtp.max_recipients"]


def test_relative_paths_are_relative_to_the_file(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    p = _write(sub, '[server]\npid_file = "fm.pid"\n[tls]\ncert = "c.pem"\nkey = "/abs/k.pem"\n'
                    '[dkim]\nkey_dir = "dkim"\n')
    cfg = config.load(p)
    assert (cfg.server_pid_file, cfg.tls_cert, cfg.tls_key, cfg.dkim_key_dir) == (
        str(sub / "fm.pid"), str(sub / "c.pem"), "/abs/k.pem", str(sub / "dkim"))


def test_warnings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load(_write(tmp_path, "[imap]\nidle_timeout = 60\n[dkim]\nkey_dir = \"keys\"\n"), serve=True)
    by_key = {w.key: w for w in cfg.warnings}
    assert by_key["imap.idle_timeout"].event == "config_below_rfc"
    assert by_key["imap.idle_timeout"].fields == {"value": 60.0, "rfc_minimum": 1800.0}
    assert "nothing is signed until" in by_key["dkim.key_dir"].reason
