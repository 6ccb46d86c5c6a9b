"""fastmail.hygiene.ratelimit on a real LMDB state in a temp dir, with a clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fastmail.hygiene import ratelimit as RL
from fastmail.hygiene.state import HygieneState


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:  # a multiple of 60 and 3600
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(tmp_path: Path, clock: Clock) -> Iterator[RL.RateLimiter]:
    s = HygieneState(tmp_path / "hygiene", clock)
    yield RL.RateLimiter(s)
    s.close()


def test_keys() -> None:
    assert RL.ip_key("192.0.2.1") == "192.0.2.1"
    assert RL.ip_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert RL.ip_key("2001:db8::1:2") == "2001:db8::/64"
    assert (RL.TOO_MANY_CONNECTIONS.code, RL.TOO_MANY_CONNECTIONS.enhanced) == (421, "4.7.0")
    assert (RL.TOO_MANY_MESSAGES.code, RL.TOO_MANY_MESSAGES.enhanced) == (451, "4.7.1")


def test_hit_counts_up_to_the_limit(limiter: RL.RateLimiter, clock: Clock) -> None:
    assert [limiter.hit(RL.CONNECTIONS, "192.0.2.1", 3, 60.0) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.hit(RL.CONNECTIONS, "192.0.2.2", 3, 60.0)  # another key
    assert limiter.hit(RL.MESSAGES_IP, "192.0.2.1", 3, 60.0)  # another kind
    assert limiter.hit(RL.CONNECTIONS, "192.0.2.1", 0, 60.0)  # 0: no limit


def test_the_window_slides(limiter: RL.RateLimiter, clock: Clock) -> None:
    key = "192.0.2.1"
    for _ in range(4):
        assert limiter.hit(RL.CONNECTIONS, key, 4, 60.0)
    assert not limiter.hit(RL.CONNECTIONS, key, 4, 60.0)
    clock.now += 60  # the next window: the 4 of the last one still count in full
    assert not limiter.hit(RL.CONNECTIONS, key, 4, 60.0)
    clock.now += 15  # a quarter in: 3 of them count
    assert limiter.hit(RL.CONNECTIONS, key, 4, 60.0)
    assert not limiter.hit(RL.CONNECTIONS, key, 4, 60.0)
    clock.now += 45 + 60  # two windows later: nothing counts
    assert [limiter.hit(RL.CONNECTIONS, key, 4, 60.0) for _ in range(5)] == [True] * 4 + [False]


def test_over_looks_and_add_counts(limiter: RL.RateLimiter, clock: Clock) -> None:
    user = "alice@example.org"
    assert not limiter.over(RL.MESSAGES_USER, user, 2, 3600.0)
    limiter.add(RL.MESSAGES_USER, user, 3600.0)
    assert not limiter.over(RL.MESSAGES_USER, user, 2, 3600.0)
    limiter.add(RL.MESSAGES_USER, user, 3600.0)
    assert limiter.over(RL.MESSAGES_USER, user, 2, 3600.0)
    assert not limiter.over(RL.MESSAGES_USER, user, 0, 3600.0)
    clock.now += 2 * 3600
    assert not limiter.over(RL.MESSAGES_USER, user, 2, 3600.0)


def test_a_changed_window_starts_again(limiter: RL.RateLimiter) -> None:
    for _ in range(2):
        limiter.add(RL.MESSAGES_IP, "192.0.2.1", 3600.0)
    assert limiter.over(RL.MESSAGES_IP, "192.0.2.1", 2, 3600.0)
    assert not limiter.over(RL.MESSAGES_IP, "192.0.2.1", 2, 60.0)


def test_purge(limiter: RL.RateLimiter, clock: Clock) -> None:
    for i in range(30):
        limiter.hit(RL.CONNECTIONS, f"192.0.2.{i}", 5, 60.0)
    limiter.add(RL.MESSAGES_USER, "alice@example.org", 3600.0)
    clock.now += 120
    limiter.state.maybe_purge(force=True)
    with limiter.state.read() as txn:
        assert txn.stat(limiter.state.db["rate"])["entries"] == 1  # the hour-long one stays
