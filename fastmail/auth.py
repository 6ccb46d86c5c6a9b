"""Passwords: argon2id hashes (argon2-cffi), verified in constant work whether or not the user exists."""

from __future__ import annotations

import functools

import argon2

_hasher = argon2.PasswordHasher()  # argon2id, RFC 9106 low-memory defaults of argon2-cffi


@functools.cache
def _dummy() -> str:
    """Verifying against this when the user does not exist costs the same as a real check: no user
    enumeration through timing.  Made on first use, not at import (it costs 64 MiB and ~0.1 s)."""
    return _hasher.hash("fastmail-dummy-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _dummy(), password) and password_hash is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
