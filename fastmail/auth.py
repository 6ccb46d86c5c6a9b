"""Passwords: argon2id hashes, verified in constant work whether or not the user exists.

libsodium (through PyNaCl) does the hashing and the checks: its SIMD Argon2 takes about half the CPU of
argon2-cffi's portable build for the same parameters (measured: 130 vs 250 ms a check), and a check is
the largest cost of every login.  New hashes use RFC 9106's second recommended setting's memory and
passes (m = 64 MiB, t = 3) with one lane (libsodium's only); stored hashes with more lanes (p=4, as
argon2-cffi wrote them) verify all the same.
"""

from __future__ import annotations

import functools

import nacl.exceptions
import nacl.pwhash

OPSLIMIT = 3  # passes (t)
MEMLIMIT = 64 * 1024 * 1024  # bytes (m = 65536 KiB)


@functools.cache
def _dummy() -> bytes:
    """Verifying against this when the user does not exist costs the same as a real check: no user
    enumeration through timing.  Made on first use, not at import (it costs 64 MiB and ~0.1 s)."""
    return nacl.pwhash.argon2id.str(b"fastmail-dummy-password", opslimit=OPSLIMIT, memlimit=MEMLIMIT)


def hash_password(password: str) -> str:
    return nacl.pwhash.argon2id.str(password.encode(), opslimit=OPSLIMIT, memlimit=MEMLIMIT).decode("ascii")


def check_password(password_hash: str | None, password: str) -> tuple[bool, bool]:
    """(the password is right, an argon2id verification ran).  Without a hash (no such user) the password
    is verified against the dummy hash all the same, so the second is true for an unknown user too: the
    log shows it (event=auth_check hashed=1) and the tests count on it."""
    hashed = False
    try:
        stored = password_hash.encode("ascii") if password_hash else _dummy()
        hashed = True
        return nacl.pwhash.argon2id.verify(stored, password.encode()) and password_hash is not None, hashed
    except (nacl.exceptions.CryptoError, ValueError, TypeError, UnicodeError):
        return False, hashed  # a wrong password, or a stored value that is no argon2id hash


def verify_password(password_hash: str | None, password: str) -> bool:
    return check_password(password_hash, password)[0]
