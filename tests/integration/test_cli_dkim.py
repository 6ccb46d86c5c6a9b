"""`fastmail dkim keygen/list/show` as an operator runs them (the real command, a config file): keys land
in dkim.key_dir with private modes, the printed TXT record is the one that verifies the server's signatures,
an existing selector is refused without --force, errors exit 1 with a clear message."""

from __future__ import annotations

import os
import pwd
import stat
import time
from collections.abc import Callable
from pathlib import Path

import dkim as dkimpy
import orjson
import pytest

from fastmail.hygiene.dkimkeys import DKIMKeys

from .conftest import Server

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
PORTS = {name: 1 for name in ("smtp", "submission", "submissions", "lmtp", "imap", "imaps", "pop3", "pop3s")}
MONTH = time.strftime("%Y%m", time.gmtime())


def configured(tmp_path: Path, extra: str = "") -> Server:
    """A config file only: these commands need no running server and no store."""
    return Server(tmp_path, dict(PORTS), workers=1, extra=extra)


def record_of(output: bytes) -> str:
    (line,) = [ln for ln in output.decode().splitlines() if " IN TXT " in ln]
    return line


def dnsfunc_for(*records: str) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy serving zone-file lines as keygen prints them (the strings of a record joined)."""
    served: dict[bytes, bytes] = {}
    for record in records:
        name, _, strings = record.partition(". IN TXT ")
        served[name.encode()] = "".join(s for s in strings.split('"')[1::2]).encode()
    return lambda name, timeout=5: served.get(name.rstrip(b"."))


def fails(srv: Server, *args: str, text: bytes) -> None:
    res = srv.cli(*args, check=False)
    assert res.returncode == 1, (args, res)
    assert res.stderr.startswith(b"fastmail: error: ") and text in res.stderr, (args, res.stderr)


def test_keygen_show_list_and_the_record_verifies(tmp_path):
    srv = configured(tmp_path)
    key_dir = srv.data / "dkim"
    out = srv.cli("dkim", "keygen", "Example.ORG").stdout
    ed_path = key_dir / "example.org" / f"ed{MONTH}.pem"
    assert str(ed_path).encode() in out
    ed_record = record_of(out)
    assert ed_record.startswith(f'ed{MONTH}._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=')
    assert stat.S_IMODE(ed_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ed_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700

    made = orjson.loads(srv.cli("dkim", "keygen", "example.org", "--algorithm", "rsa", "--json").stdout)
    assert made["selector"] == f"rsa{MONTH}" and made["algorithm"] == "rsa" and made["domain"] == "example.org"
    assert made["path"] == str(key_dir / "example.org" / f"rsa{MONTH}.pem")
    rsa_record = made["record"]
    assert rsa_record.count('" "') == 1  # 2048 bits: two strings of one TXT record

    # show prints the same records again, from the private keys
    assert srv.cli("dkim", "show", "example.org", f"ed{MONTH}").stdout.decode().strip() == ed_record
    shown = orjson.loads(srv.cli("dkim", "show", "example.org", f"rsa{MONTH}", "--json").stdout)
    assert shown["record"] == rsa_record and shown["algorithm"] == "rsa"

    # what the server signs with these files verifies against what was printed
    dnsfunc = dnsfunc_for(ed_record, rsa_record)
    signed = DKIMKeys(key_dir).sign(MESSAGE, "example.org") + MESSAGE
    for idx in (0, 1):
        assert dkimpy.DKIM(signed).verify(idx=idx, dnsfunc=dnsfunc) is True

    srv.cli("dkim", "keygen", "other.example", "--selector", "mail2024")
    listing = orjson.loads(srv.cli("dkim", "list", "--json").stdout)
    assert [(r["domain"], r["selector"], r["algorithm"], r["error"]) for r in listing] == [
        ("example.org", f"rsa{MONTH}", "rsa", None), ("example.org", f"ed{MONTH}", "ed25519", None),
        ("other.example", "mail2024", "ed25519", None)]
    assert listing[2]["path"] == str(key_dir / "other.example" / "mail2024.pem")
    text = srv.cli("dkim", "list", "other.example").stdout.decode()
    assert text == f"other.example\tmail2024\ted25519\t{key_dir / 'other.example' / 'mail2024.pem'}\n"
    assert orjson.loads(srv.cli("dkim", "list", "nothing.example", "--json").stdout) == []
    assert b"no DKIM keys in " in srv.cli("dkim", "list", "nothing.example").stdout

    (key_dir / "other.example" / "junk.pem").write_bytes(b"junk")
    (junk,) = [r for r in orjson.loads(srv.cli("dkim", "list", "--json").stdout) if r["selector"] == "junk"]
    assert junk["algorithm"] is None and "not a PEM private key" in junk["error"]
    assert b"junk\tunusable: not a PEM private key" in srv.cli("dkim", "list").stdout


def test_existing_selector_needs_force(tmp_path):
    srv = configured(tmp_path)
    first = record_of(srv.cli("dkim", "keygen", "example.org", "--selector", "s1").stdout)
    path = srv.data / "dkim" / "example.org" / "s1.pem"
    pem = path.read_bytes()
    fails(srv, "dkim", "keygen", "example.org", "--selector", "s1", text=b"already has a key with selector s1")
    fails(srv, "dkim", "keygen", "example.org", "--selector", "s1", "--algorithm", "rsa", text=b"--force")
    assert path.read_bytes() == pem
    second = record_of(srv.cli("dkim", "keygen", "example.org", "--selector", "s1", "--force").stdout)
    assert second != first and path.read_bytes() != pem
    assert srv.cli("dkim", "show", "example.org", "s1").stdout.decode().strip() == second
    assert os.listdir(path.parent) == ["s1.pem"]


def test_errors(tmp_path):
    srv = configured(tmp_path)
    fails(srv, "dkim", "keygen", "../etc", text=b"not a domain name")
    fails(srv, "dkim", "keygen", "example.org", "--selector", "a/b", text=b"not a valid selector")
    fails(srv, "dkim", "keygen", "example.org", "--bits", "1024", text=b"--bits is for rsa keys")
    fails(srv, "dkim", "keygen", "example.org", "--algorithm", "rsa", "--bits", "512", text=b"1024 to 4096")
    fails(srv, "dkim", "show", "example.org", "nope", text=b"no DKIM key nope for example.org")
    fails(srv, "dkim", "list", "bad..domain", text=b"not a domain name")
    assert srv.cli("dkim", "keygen", "example.org", "--algorithm", "dsa", check=False).returncode == 2
    assert srv.cli("dkim", "show", "example.org", check=False).returncode == 2
    assert not (srv.data / "dkim").exists() or os.listdir(srv.data / "dkim") == []


def test_key_dir_setting(tmp_path):
    keys = tmp_path / "keys"
    srv = configured(tmp_path, extra=f'[dkim]\nkey_dir = "{keys}"\n')
    srv.cli("dkim", "keygen", "example.org", "--selector", "s1")
    assert (keys / "example.org" / "s1.pem").is_file()
    assert not (srv.data / "dkim").exists()
    assert [r["path"] for r in orjson.loads(srv.cli("dkim", "list", "--json").stdout)] == [
        str(keys / "example.org" / "s1.pem")]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_root_gives_the_keys_to_the_server_user(tmp_path):
    srv = configured(tmp_path)
    srv.config.write_text(srv.config.read_text().replace("[server]\n", '[server]\nuser = "nobody"\n', 1))
    path = Path(orjson.loads(srv.cli("dkim", "keygen", "example.org", "--json").stdout)["path"])
    nobody = pwd.getpwnam("nobody")
    for p in (path, path.parent, srv.data / "dkim"):
        assert (p.stat().st_uid, p.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid), p
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
