"""The TLS policy of every TLS listener, checked with `openssl s_client` (docs/operations.md "TLS policy"):
TLS 1.0 and 1.1 refused (RFC 8996), TLS 1.2 and 1.3 accepted, on the implicit-TLS ports (submissions, imaps,
pop3s) and after STARTTLS / STLS (smtp, submission, imap, pop3); the cipher negotiated is an AEAD one with
forward secrecy (ECDHE), and a client that offers only CBC suites gets none.

The client is told to offer the old versions (`-cipher DEFAULT:@SECLEVEL=0`: Debian's OpenSSL would not
otherwise), and an `openssl s_server` that allows them proves that the same command does connect with TLS
1.0 and 1.1 when the server lets it: a refusal is the server's."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from fastmail.tlsfiles import ensure_self_signed

from .conftest import Server, free_port, poll
from .wire import HOST, module_server

pytestmark = pytest.mark.integration

OLD = ("-tls1", "-tls1_1")
CURRENT = ("-tls1_2", "-tls1_3")
IMPLICIT = ("submissions", "imaps", "pop3s")
STARTTLS = {"smtp": "smtp", "submission": "smtp", "imap": "imap", "pop3": "pop3"}
# TLS 1.2 names of the suites the policy allows (RFC 9325 §4.2): ECDHE key exchange, an AEAD cipher
AEAD_FS_12 = re.compile(r"ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)")
AEAD_13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from module_server(tmp_path_factory, "tls-policy", workers=1)


def s_client(port: int, *args: str, starttls: str | None = None) -> tuple[str, str] | None:
    """(protocol, cipher) that `openssl s_client` negotiated with 127.0.0.1:PORT, or None when the handshake
    failed; `starttls`: the protocol to upgrade first (s_client's -starttls)."""
    cmd = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", "mx.example.org",
           "-cipher", "DEFAULT:@SECLEVEL=0", *args]
    if starttls:
        cmd += ["-starttls", starttls]
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    out = res.stdout.decode(errors="replace")
    new = re.search(r"^New, (\S+), Cipher is (\S+)$", out, re.M)
    assert new, out + res.stderr.decode(errors="replace")
    if new.group(2) == "(NONE)":
        return None
    # "New, <the cipher's version>"; the session's "Protocol  :" line has the version negotiated
    protocol = re.search(r"^\s+Protocol\s+: (\S+)$", out, re.M)
    return (protocol.group(1) if protocol else new.group(1)), new.group(2)


def test_the_client_speaks_tls_1_0_and_1_1_to_a_server_that_allows_them(tmp_path):
    """The control: the s_client command of these tests connects with TLS 1.0 and 1.1 to an `openssl
    s_server` that allows them, so their refusal below is fastmail's doing."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    ensure_self_signed(cert, key, "mx.example.org")
    port = free_port()
    out = tmp_path / "s_server.out"
    with open(out, "wb") as f:
        server = subprocess.Popen(["openssl", "s_server", "-accept", f"{HOST}:{port}", "-cert", str(cert),
                                   "-key", str(key), "-cipher", "DEFAULT:@SECLEVEL=0", "-www"],
                                  stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    try:
        assert poll(lambda: b"ACCEPT" in out.read_bytes(), 15), out.read_text()
        assert s_client(port, "-tls1") == ("TLSv1", "ECDHE-ECDSA-AES256-SHA")
        assert s_client(port, "-tls1_1") == ("TLSv1.1", "ECDHE-ECDSA-AES256-SHA")
        # and CBC suites over TLS 1.2, which fastmail's policy leaves out
        assert s_client(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA") == (
            "TLSv1.2", "ECDHE-ECDSA-AES128-SHA256")
    finally:
        server.kill()
        server.wait(10)


def _check_versions(port: int, starttls: str | None = None) -> None:
    for version in OLD:
        assert s_client(port, version, starttls=starttls) is None, version
    protocol, cipher = s_client(port, "-tls1_2", starttls=starttls) or ("", "")
    assert protocol == "TLSv1.2" and AEAD_FS_12.fullmatch(cipher), (protocol, cipher)
    protocol, cipher = s_client(port, "-tls1_3", starttls=starttls) or ("", "")
    assert protocol == "TLSv1.3" and cipher in AEAD_13, (protocol, cipher)
    # a client offering only CBC suites (with and without forward secrecy) gets no TLS 1.2 session
    only_cbc = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA256:AES256-SHA"
    assert s_client(port, "-tls1_2", "-cipher", only_cbc, starttls=starttls) is None
    # nor one offering only RSA key exchange (no forward secrecy) with AES-GCM
    assert s_client(port, "-tls1_2", "-cipher", "AES128-GCM-SHA256:AES256-GCM-SHA384", starttls=starttls) is None


@pytest.mark.parametrize("listener", IMPLICIT)
def test_implicit_tls_ports_take_tls_1_2_and_1_3_only_with_aead_and_forward_secrecy(srv, listener):
    _check_versions(srv.ports[listener])


@pytest.mark.parametrize("listener", sorted(STARTTLS))
def test_starttls_ports_take_tls_1_2_and_1_3_only_with_aead_and_forward_secrecy(srv, listener):
    _check_versions(srv.ports[listener], starttls=STARTTLS[listener])
