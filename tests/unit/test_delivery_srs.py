"""fastmail.delivery.srs: SRS0 addresses for forwarded mail and their reversal."""

from __future__ import annotations

from fastmail.delivery import srs

K = b"k" * 32
NOW = 1_800_000_000.0


def test_round_trip_and_shape():
    a = srs.forward(K, "Orig.Sender@Origin.test", "example.org", now=NOW)
    local, _, domain = a.rpartition("@")
    assert domain == "example.org" and local.startswith("SRS0=") and local.endswith("=Origin.test=Orig.Sender")
    assert srs.reverse(K, local, now=NOW) == "Orig.Sender@Origin.test"
    assert srs.reverse(K, local.lower(), now=NOW) == "orig.sender@origin.test"  # a receiver lower-cased it


def test_forged_expired_or_other_key_is_refused():
    local = srs.forward(K, "a@b.test", "example.org", now=NOW).rpartition("@")[0]
    assert srs.reverse(b"x" * 32, local, now=NOW) is None
    assert srs.reverse(K, local.replace("=b.test=", "=c.test="), now=NOW) is None
    assert srs.reverse(K, local, now=NOW + 21 * 86400) == "a@b.test"
    assert srs.reverse(K, local, now=NOW + 22 * 86400) is None
    for bad in ("SRS0=", "SRS0=abcd", "SRS0=abcd=AA=only", "SRS0=abcd=A1=d=l", "plain"):
        assert srs.reverse(K, bad, now=NOW) is None


def test_key_made_once_and_kept(tmp_path):
    k1 = srs.key(tmp_path)
    srs._keys.clear()
    assert srs.key(tmp_path) == k1 and len(k1) == 32
    assert oct((tmp_path / "srs.key").stat().st_mode & 0o777) == "0o600"


def _key_in_child(path: str, go, out) -> None:
    import os
    import time

    write = os.write

    def slow_write(fd: int, data: bytes) -> int:  # widen the window between creating and filling the file
        time.sleep(0.05)
        return write(fd, data)

    os.write = slow_write  # this child's copy of the module only
    go.wait()
    out.put(srs.key(path).hex())


def test_processes_racing_to_make_the_key_all_read_the_same_whole_key(tmp_path):
    """Two delivery processes boot together: none may read a half-written key (it once saw an empty file)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        d = tmp_path / str(round_)
        d.mkdir()
        go, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_key_in_child, args=(str(d), go, out)) for _ in range(6)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 6
        keys = {out.get(timeout=5) for _ in procs}
        assert len(keys) == 1 and len(bytes.fromhex(keys.pop())) == 32
        assert [x.name for x in d.iterdir()] == ["srs.key"]  # no temp file left behind
