"""fastmail.hygiene.dkimkeys: the on-disk layout and modes, atomic no-overwrite writes, the server's cached
view reloading when a folder changes, dual signing checked by dkimpy's own synchronous verifier against the
TXT records as keygen prints them, and unusable keys logged and skipped."""

from __future__ import annotations

import os
import pwd
import re
import stat
from collections.abc import Callable
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fastmail.hygiene import dkim, dkimkeys
from fastmail.hygiene.dkimkeys import DKIMKeys, KeyExists

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: keys\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <k1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def zone(records: list[str]) -> dict[bytes, bytes]:
    """The TXT data a resolver would give for zone-file lines as keygen prints them: `NAME. IN TXT "a" "b"`
    -> {NAME: b"ab"} (the strings of one record are joined, RFC 6376 §3.6.2.2)."""
    out: dict[bytes, bytes] = {}
    for record in records:
        m = re.fullmatch(r'(\S+)\. IN TXT ((?:"[^"]*" ?)+)', record)
        assert m, record
        out[m.group(1).encode()] = "".join(re.findall(r'"([^"]*)"', m.group(2))).encode()
    return out


def dnsfunc_for(records: list[str]) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy serving `records`."""
    served = zone(records)

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return served.get(name.rstrip(b"."))

    return dnsfunc


def fields(signatures: bytes) -> list[bytes]:
    return [f for f in re.split(rb"(?=^DKIM-Signature:)", signatures, flags=re.M) if f]


# -- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "folder"), [
    ("Example.COM", "example.com"), ("example.com.", "example.com"), ("bücher.example", "xn--bcher-kva.example"),
    ("mail-1.example.org", "mail-1.example.org"),
])
def test_domain_folder_names(given: str, folder: str) -> None:
    assert dkimkeys.normalize_domain(given) == folder


@pytest.mark.parametrize("bad", ["", ".", "..", "../etc", "a/b", "-a.example", "a..example", "a_b.example", "x" * 64])
def test_not_a_domain(bad: str) -> None:
    with pytest.raises(ValueError):
        dkimkeys.normalize_domain(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".hidden", "sel ector", "sel_1", "ä"])
def test_bad_selectors(bad: str) -> None:
    with pytest.raises(ValueError):
        dkimkeys.check_selector(bad)
    assert dkimkeys.check_selector("ed202401.mail") == "ed202401.mail"


# -- writing -------------------------------------------------------------------------------------------


def test_layout_and_modes(tmp_path: Path) -> None:
    key_dir = tmp_path / "dkim"
    path, record = dkimkeys.keygen(key_dir, "Bücher.Example", "ed1", "ed25519")
    assert path == key_dir / "xn--bcher-kva.example" / "ed1.pem"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["ed1.pem"]  # no temporary file left behind
    assert record.startswith('ed1._domainkey.xn--bcher-kva.example. IN TXT "v=DKIM1; k=ed25519; p=')
    key = dkimkeys.load_key(path, "xn--bcher-kva.example")
    assert (key.domain, key.selector, key.algorithm, key.sign_algorithm) == (
        "xn--bcher-kva.example", "ed1", "ed25519", "ed25519")
    assert dkimkeys.txt_record(key.domain, key.selector, key.private_pem) == record
    assert "PRIVATE" not in repr(key)

    rsa_path, rsa_record = dkimkeys.keygen(key_dir, "bücher.example", "rsa1", "rsa", rsa_bits=1024)
    rsa_key = dkimkeys.load_key(rsa_path, "bücher.example")
    assert (rsa_key.algorithm, rsa_key.sign_algorithm) == ("rsa", "rsa-sha256")
    assert dkimkeys.txt_record("bücher.example", "rsa1", rsa_key.private_pem) == rsa_record
    assert dkimkeys.list_domains(key_dir) == ["xn--bcher-kva.example"]


def test_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    key_dir = tmp_path / "dkim"
    key_dir.mkdir(mode=0o750)
    key_dir.chmod(0o750)
    dkimkeys.keygen(key_dir, "example.com", "s1", "ed25519")
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o750


def test_existing_selector_is_not_overwritten_unless_forced(tmp_path: Path) -> None:
    path, record = dkimkeys.keygen(tmp_path, "example.com", "s1", "ed25519")
    before = path.read_bytes()
    with pytest.raises(KeyExists):
        dkimkeys.keygen(tmp_path, "example.com", "s1", "ed25519")
    with pytest.raises(KeyExists):
        dkimkeys.keygen(tmp_path, "EXAMPLE.com.", "s1", "rsa", rsa_bits=1024)
    assert path.read_bytes() == before
    path2, record2 = dkimkeys.keygen(tmp_path, "example.com", "s1", "ed25519", force=True)
    assert path2 == path and path.read_bytes() != before and record2 != record
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["s1.pem"]


def test_link_refuses_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    """Two keygens racing past the exists() check: the second link() fails, the first key stays."""
    target = tmp_path / "s1.pem"
    target.write_bytes(b"first")
    with pytest.raises(KeyExists):
        dkimkeys._write_atomically(target, b"second", False, None)
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["s1.pem"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        dkimkeys.keygen(tmp_path, "example.com", "s1", "ed25519")
    assert os.listdir(tmp_path / "example.com") == []


def test_bad_arguments(tmp_path: Path) -> None:
    for args, kwargs in [(("../x", "s1", "ed25519"), {}), (("example.com", "a/b", "ed25519"), {}),
                         (("example.com", "s1", "dsa"), {}), (("example.com", "s1", "rsa"), {"rsa_bits": 512}),
                         (("example.com", "s1", "rsa"), {"rsa_bits": 8192})]:
        with pytest.raises(ValueError):
            dkimkeys.keygen(tmp_path, *args, **kwargs)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    path, _ = dkimkeys.keygen(tmp_path / "dkim", "example.com", "s1", "ed25519",
                              owner=(nobody.pw_uid, nobody.pw_gid))
    for p in (tmp_path / "dkim", path.parent, path):
        assert (p.stat().st_uid, p.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid), p


# -- the server's view ---------------------------------------------------------------------------------


def test_dual_signing_verifies_against_the_printed_records(tmp_path: Path) -> None:
    _, ed_record = dkimkeys.keygen(tmp_path, "example.com", "ed1", "ed25519")
    _, rsa_record = dkimkeys.keygen(tmp_path, "example.com", "rsa1", "rsa")
    dnsfunc = dnsfunc_for([ed_record, rsa_record])
    signatures = DKIMKeys(tmp_path).sign(MESSAGE, "Example.com")
    signed = signatures + MESSAGE

    both = fields(signatures)
    assert len(both) == 2
    assert b"a=rsa-sha256" in both[0] and b"s=rsa1;" in both[0]  # RSA on top, for verifiers that stop there
    assert b"a=ed25519-sha256" in both[1] and b"s=ed1;" in both[1]
    assert dkimpy.verify(signed, dnsfunc=dnsfunc) is True
    for field in both:  # each signature verifies on its own
        assert dkimpy.verify(field + MESSAGE, dnsfunc=dnsfunc) is True
    for idx in (0, 1):
        assert dkimpy.DKIM(signed).verify(idx=idx, dnsfunc=dnsfunc) is True
    tampered = signed.replace(b"Hello Bob.", b"Hello Eve.")
    for idx in (0, 1):
        with pytest.raises(dkimpy.ValidationError, match="body hash mismatch"):
            dkimpy.DKIM(tampered).verify(idx=idx, dnsfunc=dnsfunc)
    # a record of another key for the same selector does not verify
    _, other = dkim.keygen("example.com", "ed1", "ed25519")
    assert dkimpy.verify(both[1] + MESSAGE, dnsfunc=dnsfunc_for([other])) is False


def test_unknown_or_bad_domain_signs_nothing(tmp_path: Path) -> None:
    dkimkeys.keygen(tmp_path, "example.com", "s1", "ed25519")
    keys = DKIMKeys(tmp_path)
    for domain in ("example.net", "", "../example.com", "sub.example.com", "exa mple.com"):
        assert keys.keys_for(domain) == []
        assert keys.sign(MESSAGE, domain) == b""
    assert DKIMKeys(tmp_path / "missing").sign(MESSAGE, "example.com") == b""


def test_new_keys_are_used_after_the_check_interval(tmp_path: Path) -> None:
    clock = Clock()
    keys = DKIMKeys(tmp_path / "dkim", clock=clock)
    assert keys.keys_for("example.com") == []  # no key folder yet
    dkimkeys.keygen(tmp_path / "dkim", "example.com", "s1", "ed25519")
    assert keys.keys_for("example.com") == []  # within the interval: the cached answer
    clock.now += 1.0
    assert [k.selector for k in keys.keys_for("example.com")] == ["s1"]

    dkimkeys.keygen(tmp_path / "dkim", "example.com", "s2", "rsa", rsa_bits=1024)  # same folder, new file
    clock.now += 0.5
    assert [k.selector for k in keys.keys_for("example.com")] == ["s1"]
    clock.now += 0.5
    assert [k.selector for k in keys.keys_for("example.com")] == ["s2", "s1"]
    assert len(fields(keys.sign(MESSAGE, "example.com"))) == 2

    old = (tmp_path / "dkim" / "example.com" / "s1.pem").read_bytes()
    dkimkeys.keygen(tmp_path / "dkim", "example.com", "s1", "ed25519", force=True)  # rotated in place
    (tmp_path / "dkim" / "example.com" / "s2.pem").unlink()
    clock.now += 1.0
    (key,) = keys.keys_for("example.com")
    assert key.selector == "s1" and key.private_pem != old


def test_unchanged_folders_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dkimkeys.keygen(tmp_path, "example.com", "s1", "ed25519")
    monkeypatch.setattr(dkimkeys, "_RACY_NS", 0)  # trust even a fresh mtime, so that caching shows
    reads: list[str] = []
    real_scan = dkimkeys.scan_domain

    def counting_scan(key_dir: Path, domain: str) -> tuple[list[dkimkeys.Key], list[dkimkeys.KeyProblem]]:
        reads.append(domain)
        return real_scan(key_dir, domain)

    monkeypatch.setattr(dkimkeys, "scan_domain", counting_scan)
    clock = Clock()
    keys = DKIMKeys(tmp_path, clock=clock)
    for _ in range(5):
        assert len(keys.keys_for("example.com")) == 1
        clock.now += 1.0
    assert reads == ["example.com"]


def test_a_fresh_change_is_read_again_at_the_next_check(tmp_path: Path) -> None:
    """A folder changed within the racy window is read again even if its mtime looks the same (two
    changes in one timestamp tick)."""
    path, _ = dkimkeys.keygen(tmp_path, "example.com", "s1", "ed25519")
    clock = Clock()
    keys = DKIMKeys(tmp_path, clock=clock)
    assert len(keys.keys_for("example.com")) == 1
    mtime = path.parent.stat().st_mtime_ns
    dkimkeys.keygen(tmp_path, "example.com", "s2", "ed25519")
    os.utime(path.parent, ns=(mtime, mtime))  # as if both changes fell into the same tick
    clock.now += 1.0
    assert len(keys.keys_for("example.com")) == 2


def test_broken_key_files_are_logged_and_skipped(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _, record = dkimkeys.keygen(tmp_path, "example.com", "good", "ed25519")
    folder = tmp_path / "example.com"
    (folder / "junk.pem").write_bytes(b"not a key\n")
    encrypted = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    (folder / "locked.pem").write_bytes(encrypted)
    (folder / "bad_name.pem").write_bytes((folder / "good.pem").read_bytes())  # "_" is no selector
    (folder / ".good.pem.x1.tmp").write_bytes(b"half a key")  # keygen's temporary file: ignored
    (folder / "notes.txt").write_text("ignored")
    capfd.readouterr()

    keys = DKIMKeys(tmp_path)
    assert [k.selector for k in keys.keys_for("example.com")] == ["good"]
    signatures = keys.sign(MESSAGE, "example.com")
    assert len(fields(signatures)) == 1
    assert dkimpy.verify(signatures + MESSAGE, dnsfunc=dnsfunc_for([record])) is True
    err = capfd.readouterr().err
    assert err.count("event=dkim_key_broken") == 3, err  # once per change, not per message
    assert "junk.pem" in err and "locked.pem" in err and "bad_name.pem" in err and "encrypted" in err

    _, problems = dkimkeys.scan_domain(tmp_path, "example.com")
    assert sorted(p.path.name for p in problems) == ["bad_name.pem", "junk.pem", "locked.pem"]


def test_a_key_that_fails_to_sign_is_logged_not_raised(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    dkimkeys.keygen(tmp_path, "example.com", "s1", "ed25519")
    capfd.readouterr()
    assert DKIMKeys(tmp_path).sign(b"\x00 not a message", "example.com") == b""
    assert "event=dkim_sign_failed" in capfd.readouterr().err


def test_an_unreadable_folder_signs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    dkimkeys.keygen(tmp_path, "example.com", "s1", "ed25519")

    def denied(path: object) -> list[str]:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(dkimkeys.os, "listdir", denied)
    assert DKIMKeys(tmp_path).sign(MESSAGE, "example.com") == b""
    assert "event=dkim_keys_unreadable" in capfd.readouterr().err
