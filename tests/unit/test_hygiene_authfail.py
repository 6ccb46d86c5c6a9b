"""fastmail.hygiene.authfail on a real LMDB state in a temp dir, with a clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fastmail.hygiene import authfail as AF
from fastmail.hygiene.state import HygieneState

from .test_hygiene_ratelimit import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(tmp_path: Path, clock: Clock) -> Iterator[HygieneState]:
    s = HygieneState(tmp_path / "hygiene", clock)
    yield s
    s.close()


@pytest.fixture
def throttle(state: HygieneState) -> AF.AuthFailures:
    return AF.AuthFailures(state, base=1.0, cap=15.0, window=900.0)


def test_delay_doubles_per_failure_up_to_the_cap() -> None:
    assert [AF.delay_for(n, 1.0, 15.0) for n in range(7)] == [0, 1, 2, 4, 8, 15, 15]
    assert AF.delay_for(10**6, 0.5, 60.0) == 60.0  # no overflow however many
    assert AF.delay_for(3, 0.0, 15.0) == 0.0  # off


def test_per_address_and_per_account(throttle: AF.AuthFailures) -> None:
    for _ in range(3):
        throttle.failed("192.0.2.1", "alice@example.org")
    assert throttle.delay("192.0.2.1", "alice@example.org") == 4.0
    # the same address at another account: the address's failures count
    assert throttle.delay("192.0.2.1", "bob@example.org") == 4.0
    # another address at the same account (any case): the account's failures count
    assert throttle.delay("198.51.100.7", "ALICE@example.org") == 4.0
    # neither
    assert throttle.delay("198.51.100.7", "bob@example.org") == 0.0
    # an IPv6 client is known by its /64
    throttle.failed("2001:db8::1", "nobody@example.org")
    assert throttle.delay("2001:db8::ffff", "carol@example.org") == 1.0
    # the larger of the two counts
    throttle.failed("198.51.100.7", "carol@example.org")
    assert throttle.delay("198.51.100.7", "alice@example.org") == 4.0


def test_success_and_the_window_forget(throttle: AF.AuthFailures, clock: Clock) -> None:
    for _ in range(2):
        throttle.failed("192.0.2.1", "alice@example.org")
    throttle.failed("192.0.2.9", "alice@example.org")
    assert throttle.failures("192.0.2.9", "nobody") == 1
    throttle.succeeded("192.0.2.1", "alice@example.org")
    assert throttle.delay("192.0.2.1", "alice@example.org") == 0.0
    assert throttle.failures("192.0.2.9", "nobody") == 1  # another address: not forgotten by alice's success
    clock.now += 899
    assert throttle.failures("192.0.2.9", "nobody") == 1
    throttle.failed("192.0.2.9", "x")  # a failure inside the window counts on from there
    assert throttle.failures("192.0.2.9", "nobody") == 2
    clock.now += 900
    assert throttle.failures("192.0.2.9", "x") == 0


def test_purge_removes_old_records(throttle: AF.AuthFailures, state: HygieneState, clock: Clock) -> None:
    for i in range(50):
        throttle.failed(f"192.0.2.{i}", f"u{i}@example.org")
    clock.now += 1000
    throttle.failed("203.0.113.1", "fresh@example.org")
    state.maybe_purge(force=True)
    with state.read() as txn:
        assert txn.stat(state.db[AF.DB])["entries"] == 2  # the fresh address and account


def test_shared_by_two_handles_of_the_state(tmp_path: Path, clock: Clock) -> None:
    """Workers share the counts: what one process records, another reads (one LMDB environment)."""
    one = HygieneState(tmp_path / "h", clock)
    AF.AuthFailures(one, 1.0, 15.0, 900.0).failed("192.0.2.1", "alice@example.org")
    one.close()
    two = HygieneState(tmp_path / "h", clock)
    assert AF.AuthFailures(two, 1.0, 15.0, 900.0).delay("192.0.2.1", "x") == 1.0
    two.close()


def test_a_state_that_cannot_reserve_its_lock_file_fails_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full disk LMDB would die of SIGBUS writing its mapped lock file (tests/integration/test_disk_full);
    the lock file is allocated first, so a full disk is ENOSPC there and open_state says None (fail open)."""
    import errno
    import os

    from fastmail.hygiene import state as S

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert S.open_state(tmp_path) is None
    monkeypatch.undo()
    opened = S.open_state(tmp_path)  # space back: it opens
    assert opened is not None
    assert (tmp_path / "hygiene" / "lock.mdb").stat().st_blocks * 512 >= S.LOCK_RESERVE
    opened.close()
