"""fastmail.hygiene.greylist on a real LMDB state in a temp dir, with a clock the test moves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastmail.hygiene import greylist as G
from fastmail.hygiene.state import HygieneState, open_state


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(tmp_path: Path, clock: Clock) -> HygieneState:
    s = HygieneState(tmp_path / "hygiene", clock)
    yield s
    s.close()


def make(state: HygieneState, **kw: object) -> G.Greylist:
    args: dict = {"delay": 300.0, "expire": 4 * 3600.0, "retain": 36 * 86400.0, "auto_whitelist": 0, **kw}
    return G.Greylist(state, **args)


@pytest.mark.parametrize("ip, net", [
    ("192.0.2.77", "192.0.2.0/24"), ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.9", "198.51.100.0/24"),
])
def test_client_net(ip: str, net: str) -> None:
    assert G.client_net(ip) == net


@pytest.mark.parametrize("sender, normal", [
    ("", ""), ("Bob@Example.ORG", "bob@example.org"), ("bob+news@example.org", "bob@example.org"),
    ("prvs=1234abcd=bob@example.org", "bob@example.org"), ("bounce-4711-17@lists.example", "bounce-#-#@lists.example"),
    ("SRS0=HHH=TT=orig.example=bob@fwd.example", "srs@fwd.example"), ("postmaster", "postmaster"),
])
def test_normalize_sender(sender: str, normal: str) -> None:
    assert G.normalize_sender(sender) == normal


def test_first_seen_is_refused_then_retry_after_the_delay_passes(state: HygieneState, clock: Clock) -> None:
    g = make(state)
    d = g.check("192.0.2.1", "bob@sender.test", "alice@example.org")
    assert (d.outcome, d.wait) == ("greylisted", 300.0)
    assert d.reply is not None and (d.reply.code, d.reply.enhanced) == (451, "4.7.1")
    assert "300 seconds" in d.reply.text
    clock.now += 100
    d = g.check("192.0.2.1", "bob@sender.test", "alice@example.org")
    assert (d.outcome, d.wait) == ("greylisted", 200.0)  # the clock is not reset by an early retry
    clock.now += 200
    # another address of the same /24, a VERP variant of the sender: the same triplet
    assert g.check("192.0.2.200", "Bob+x@sender.test", "ALICE@example.org").outcome == "pass"
    clock.now += 20 * 86400
    assert g.check("192.0.2.1", "bob@sender.test", "alice@example.org").outcome == "pass"
    # other triplets are not affected
    assert g.check("192.0.2.1", "bob@sender.test", "carol@example.org").outcome == "greylisted"
    assert g.check("198.51.100.1", "bob@sender.test", "alice@example.org").outcome == "greylisted"


def test_a_retry_after_expire_starts_again(state: HygieneState, clock: Clock) -> None:
    g = make(state, expire=3600.0)
    assert g.check("192.0.2.1", "", "alice@example.org").outcome == "greylisted"
    clock.now += 3601
    assert g.check("192.0.2.1", "", "alice@example.org").outcome == "greylisted"
    clock.now += 300
    assert g.check("192.0.2.1", "", "alice@example.org").outcome == "pass"


def test_a_passed_triplet_is_forgotten_after_retain(state: HygieneState, clock: Clock) -> None:
    g = make(state, retain=86400.0)
    g.check("192.0.2.1", "a@b.test", "alice@example.org")
    clock.now += 300
    assert g.check("192.0.2.1", "a@b.test", "alice@example.org").outcome == "pass"
    clock.now += 86400 + 1
    assert g.check("192.0.2.1", "a@b.test", "alice@example.org").outcome == "greylisted"


def test_auto_whitelist_after_n_passes(state: HygieneState, clock: Clock) -> None:
    g = make(state, auto_whitelist=2)
    for rcpt in ("a@example.org", "b@example.org"):
        assert g.check("192.0.2.1", "x@s.test", rcpt).outcome == "greylisted"
    clock.now += 300
    assert g.check("192.0.2.1", "x@s.test", "a@example.org").outcome == "pass"
    assert g.check("192.0.2.1", "x@s.test", "b@example.org", count=False).outcome == "pass"  # same transaction
    assert g.check("192.0.2.9", "new@other.test", "c@example.org").outcome == "greylisted"  # 1 pass so far
    assert g.check("192.0.2.1", "x@s.test", "b@example.org").outcome == "pass"  # the second one
    assert g.check("192.0.2.9", "new@other.test", "c@example.org").outcome == "awl"
    assert g.check("198.51.100.1", "new@other.test", "c@example.org").outcome == "greylisted"  # another net
    clock.now += 36 * 86400 + 1  # quiet for longer than retain: greylisted again
    assert g.check("192.0.2.1", "another@s.test", "a@example.org").outcome == "greylisted"


def test_whitelists(state: HygieneState) -> None:
    g = make(state, whitelist=["192.0.2.0/28", "2001:db8::/32"], whitelist_domains=["friend.test"])
    assert g.check("192.0.2.5", "x@s.test", "a@example.org").outcome == "whitelisted"
    assert g.check("::ffff:192.0.2.5", "x@s.test", "a@example.org").outcome == "whitelisted"
    assert g.check("2001:db8::1", "x@s.test", "a@example.org").outcome == "whitelisted"
    assert g.check("192.0.2.17", "x@Mail.Friend.TEST", "a@example.org").outcome == "whitelisted"
    assert g.check("192.0.2.17", "x@notfriend.test", "a@example.org").outcome == "greylisted"
    assert g.check("192.0.2.17", "", "a@example.org").outcome == "greylisted"


def test_state_is_shared_and_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    one = HygieneState(tmp_path / "hygiene", clock)
    assert make(one).check("192.0.2.1", "a@s.test", "r@example.org").outcome == "greylisted"
    # another process (a worker) sees it at once, while this one keeps the environment open
    script = (
        "import sys\nfrom pathlib import Path\nfrom fastmail.hygiene import greylist as G\n"
        "from fastmail.hygiene.state import HygieneState\n"
        f"s = HygieneState(Path(sys.argv[1]), lambda: {clock.now + 300!r})\n"
        "g = G.Greylist(s, delay=300.0, expire=14400.0, retain=3110400.0, auto_whitelist=0)\n"
        "print(g.check('192.0.2.1', 'a@s.test', 'r@example.org').outcome)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "hygiene")], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "pass", out.stderr
    one.close()
    clock.now += 301
    again = open_state(tmp_path, clock)  # and after a restart
    assert again is not None
    assert make(again).check("192.0.2.1", "a@s.test", "r@example.org").outcome == "pass"
    again.close()


def test_purge_removes_what_expired(state: HygieneState, clock: Clock) -> None:
    g = make(state, expire=3600.0, retain=86400.0, auto_whitelist=1)
    for i in range(50):
        g.check("192.0.2.1", f"s{i}@x.test", "a@example.org")
    g.check("198.51.100.1", "p@x.test", "a@example.org")
    clock.now += 300
    assert g.check("198.51.100.1", "p@x.test", "a@example.org").outcome == "pass"
    clock.now += 3601
    state.maybe_purge(force=True)
    with state.read() as txn:
        assert txn.stat(state.db["greylist"])["entries"] == 1  # the passed one is kept
        assert txn.stat(state.db["clients"])["entries"] == 1
    clock.now += 86401
    state.maybe_purge(force=True)
    with state.read() as txn:
        assert txn.stat(state.db["greylist"])["entries"] == 0
        assert txn.stat(state.db["clients"])["entries"] == 0


def test_a_broken_state_is_set_aside(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "hygiene").mkdir()
    (tmp_path / "hygiene" / "data.mdb").write_bytes(b"not lmdb" * 1000)
    s = open_state(tmp_path, clock)
    assert s is not None
    assert make(s).check("192.0.2.1", "a@s.test", "r@example.org").outcome == "greylisted"
    s.close()
    assert [p.name.startswith("hygiene.broken-") for p in tmp_path.iterdir()].count(True) == 1
