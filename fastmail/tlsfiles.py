"""TLS files: the embedded default's self-signed certificate, made on first start, the check of a
configured certificate and key (`check_pair`, run by `fastmail serve` and `fastmail check-config`), and the
server's context loaded from them (`server_context`, by the master at each start and reload)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fastmail.config import TLS_CIPHERS


def ensure_self_signed(cert_path: Path, key_path: Path, hostname: str) -> bool:
    """Create a key and a self-signed certificate for `hostname` when neither exists; True if made."""
    if cert_path.exists() and key_path.exists():
        return False
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(hostname), x509.DNSName("localhost"),
           x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def _read(path: Path) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        return path.read_bytes()
    except IsADirectoryError:
        return f"{path} is a folder"
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as e:
        return f"{path}: {e.strerror or e}"


def check_pair(cert_path: Path, key_path: Path,
               now: datetime.datetime | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """Can a server use this certificate chain and key?  Returns (problems, warnings): each problem is
    ("cert" or "key", reason); the warnings are about the certificate's validity period.

    Both files are read and parsed (PEM; a key without passphrase, since nobody is there to type one), then
    loaded together exactly as the workers will load them (``ssl.SSLContext.load_cert_chain``), which
    proves that the key is the certificate's.  `key_path` may be `cert_path` (both in one file)."""
    cert_data = _read(cert_path)
    if isinstance(cert_data, str):
        return [("cert", cert_data)], []
    try:
        certs = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        return [("cert", f"{cert_path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)")], []
    key_data = cert_data if key_path == cert_path else _read(key_path)
    if isinstance(key_data, str):
        return [("key", key_data)], []
    try:
        serialization.load_pem_private_key(key_data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        return [("key", f"{key_path}: the key is encrypted with a passphrase (store it without one)")], []
    except UnsupportedAlgorithm:
        return [("key", f"{key_path}: unsupported key type")], []
    except ValueError:
        where = " (set tls.key to the key's file)" if key_path == cert_path else ""
        return [("key", f"{key_path}: no PEM private key in it{where}")], []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # The password callback only stops OpenSSL from ever asking on a terminal.
        ctx.load_cert_chain(str(cert_path), str(key_path), password=lambda: b"")
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            return [("key", f"does not match tls.cert: {key_path} is not the key of {cert_path}")], []
        return [("cert", f"{cert_path}: cannot be used with its key: {e.reason or e}")], []
    except OSError as e:
        return [("cert", f"{cert_path}: {e.strerror or e}")], []
    now = now or datetime.datetime.now(datetime.UTC)
    leaf = certs[0]
    warnings = []
    if leaf.not_valid_after_utc < now:
        warnings.append(f"{cert_path}: the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    elif leaf.not_valid_before_utc > now:
        warnings.append(f"{cert_path}: the certificate is not valid before "
                        f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return [], warnings


class TLSLoadError(Exception):
    """The certificate or key cannot be loaded; the message names the file and the reason."""


MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(cert_path: Path, key_path: Path, min_version: str = "1.2",
                   ciphers: str = TLS_CIPHERS) -> ssl.SSLContext:
    """The server side TLS context of this certificate chain and key: TLS `min_version` at least (1.0 and
    1.1 never: RFC 8996), `ciphers` for TLS 1.2 (by default fastmail.config.TLS_CIPHERS: ECDHE with an AEAD
    cipher only), no renegotiation.  TLSLoadError, with the file and the reason, when they cannot be loaded
    together."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    ctx.set_ciphers(ciphers)
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    try:
        # The password callback only stops OpenSSL from ever asking on a terminal.
        ctx.load_cert_chain(str(cert_path), str(key_path), password=lambda: b"")
    except (ssl.SSLError, OSError) as e:
        problems, _ = check_pair(cert_path, key_path)  # says which file and why, where OpenSSL says "PEM lib"
        if problems:  # every reason names its file
            raise TLSLoadError("; ".join(reason for _, reason in problems)) from None
        detail = (e.reason if isinstance(e, ssl.SSLError) else e.strerror) or str(e)
        raise TLSLoadError(f"{cert_path} with key {key_path}: {detail}") from None
    return ctx
