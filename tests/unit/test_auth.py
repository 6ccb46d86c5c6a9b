"""Password hashing and checking: argon2id, hashes from argon2-cffi (p=4) still verify, bad input is False."""

from __future__ import annotations

import pytest

from fastmail import auth

# Made by argon2-cffi's PasswordHasher() (fastmail's hasher before libsodium) for the password "pw".
ARGON2_CFFI_P4 = "$argon2id$v=19$m=65536,t=3,p=4$Uo8AjYXdcqSB8VpUopDXbg$gcUNAFJTqsxO/AIknofE2UZr1JtnYZOyS2E90Y2i1QI"


def test_hash_and_verify() -> None:
    h = auth.hash_password("correct horse")
    assert h.startswith("$argon2id$v=19$m=65536,t=3,p=1$")
    assert auth.verify_password(h, "correct horse")
    assert not auth.verify_password(h, "correct horsE")
    assert auth.hash_password("correct horse") != h  # salted


def test_existing_p4_hash_verifies() -> None:
    assert not auth.verify_password(ARGON2_CFFI_P4, "pw")  # that hash is for "bench-secret"
    assert auth.verify_password(ARGON2_CFFI_P4, "bench-secret")


@pytest.mark.parametrize("stored", [None, "", "garbage", "$argon2id$v=19$m=65536,t=3,p=4$bad", "$2b$12$abc"])
def test_no_or_malformed_hash_is_false(stored: str | None) -> None:
    assert auth.verify_password(stored, "pw") is False


def test_unencodable_password_is_false() -> None:
    assert auth.verify_password(auth.hash_password("pw"), "pw\udc80") is False


def test_check_password_runs_argon2id_for_an_unknown_user_too() -> None:
    h = auth.hash_password("pw")
    assert auth.check_password(h, "pw") == (True, True)
    assert auth.check_password(h, "wrong") == (False, True)
    assert auth.check_password(None, "pw") == (False, True)  # the dummy hash: the same work
    assert auth.check_password(None, "fastmail-dummy-password") == (False, True)  # never a login
