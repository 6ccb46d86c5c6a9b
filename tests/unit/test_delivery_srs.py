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
