"""Sender Rewriting Scheme for forwarded mail (the SRS0 form of Shevek's SRS / postsrsd).

A message that reaches a local alias and is forwarded to an external address keeps its original
envelope sender in the queue, but leaves with

    SRS0=HHHH=TT=origin.domain=local@forwarding.domain

as MAIL FROM, so the destination's SPF check sees our domain, not the origin's.  HHHH is an HMAC-SHA1 of
TT, domain and local part under a secret key (4 base64 characters), TT the day (days since the epoch mod
1024, 2 base32 characters).  Mail to such an address (a bounce, usually) is accepted at the forwarding
domain only when the hash matches and the day is at most MAX_AGE_DAYS old, and goes on to the original
address.  The key lives in DATA_DIR/srs.key (32 random bytes, hex), made by whichever process needs it
first.  Forwarding an address that is itself SRS0 just wraps it again (no SRS1 shortcut).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

MAX_AGE_DAYS = 21
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_keys: dict[str, bytes] = {}


def key(data_dir: str | os.PathLike[str]) -> bytes:
    path = Path(data_dir) / "srs.key"
    cached = _keys.get(str(path))
    if cached is not None:
        return cached
    if not path.exists():
        _create_key(path)
    value = bytes.fromhex(path.read_text().strip())
    if len(value) < 16:
        raise ValueError(f"{path}: key too short")
    _keys[str(path)] = value
    return value


def _create_key(path: Path) -> None:
    """Write a fresh key to a private temp file, make it durable, then publish it with link(): a process
    racing us (two delivery processes boot together) sees either no key or the whole key, never an empty
    file, and the first link wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _day(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // 86400) % 1024


def _stamp(day: int) -> str:
    return _B32[day >> 5] + _B32[day & 31]


def _hash(k: bytes, stamp: str, domain: str, local: str) -> str:
    mac = hmac.new(k, (stamp + domain + local).lower().encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")[:4]


def forward(k: bytes, sender: str, via_domain: str, now: float | None = None) -> str:
    """The SRS0 address standing for `sender` at `via_domain`."""
    local, _, domain = sender.rpartition("@")
    stamp = _stamp(_day(now))
    return f"SRS0={_hash(k, stamp, domain, local)}={stamp}={domain}={local}@{via_domain}"


def is_srs(local: str) -> bool:
    return local[:5].upper() == "SRS0="


def reverse(k: bytes, local: str, now: float | None = None) -> str | None:
    """The original address of an SRS0 local part, or None when it is not one of ours or too old."""
    if not is_srs(local):
        return None
    parts = local[5:].split("=", 3)
    if len(parts) != 4:
        return None
    given, stamp, domain, orig_local = parts
    if len(stamp) != 2 or not domain or not orig_local or any(c not in _B32 for c in stamp.upper()):
        return None
    if not hmac.compare_digest(given.encode(), _hash(k, stamp.upper(), domain, orig_local).encode()):
        # base64 is case-sensitive, but some MTAs lower-case local parts: accept that too
        if not hmac.compare_digest(given.lower().encode(), _hash(k, stamp.upper(), domain, orig_local).lower().encode()):
            return None
    day = (_B32.index(stamp.upper()[0]) << 5) | _B32.index(stamp.upper()[1])
    if (_day(now) - day) % 1024 > MAX_AGE_DAYS:
        return None
    return f"{orig_local}@{domain}"
