"""fastmail.proto.imap_view.View.resolve: the UIDs a sequence set names, ascending and without repeats,
checked against a plain set-and-sort reference on random views and sets (sequence numbers and UIDs)."""

from __future__ import annotations

import random

import pytest

from fastmail._core import imap as core
from fastmail.proto.imap_view import View


def _reference(uids: list[int], ranges, uid: bool) -> list[int]:
    out: set[int] = set()
    top = uids[-1] if uids else 0
    for lo, hi in ranges:
        if uid:
            a, b = (top if lo == core.STAR else lo), (top if hi == core.STAR else hi)
            a, b = min(a, b), max(a, b)
            out.update(u for u in uids if a <= u <= b)
        else:
            if hi == core.STAR and not uids:
                continue
            a, b = (len(uids) if lo == core.STAR else lo), (len(uids) if hi == core.STAR else hi)
            a, b = min(a, b), max(a, b)
            if b > len(uids) or a < 1:
                raise core.IMAPSyntaxError("Invalid message sequence number")
            out.update(uids[a - 1: b])
    return sorted(out)


def test_resolve_matches_the_reference():
    rng = random.Random(3)
    for _ in range(2000):
        uids = sorted(rng.sample(range(1, 400), rng.randint(0, 50)))
        view = View(None, {"id": 1, "name": "INBOX", "uidvalidity": 1, "uidnext": 400, "modseq": 1}, uids, False)  # type: ignore[arg-type]
        parts = []
        for _ in range(rng.randint(1, 4)):
            a = rng.choice(["*", str(rng.randint(1, 60))])
            parts.append(a if rng.random() < 0.3 else f"{a}:{rng.choice(['*', str(rng.randint(1, 60))])}")
        ranges = core.parse_sequence_set(",".join(parts))
        for as_uid in (False, True):
            try:
                want = _reference(uids, ranges, as_uid)
            except core.IMAPSyntaxError:
                with pytest.raises(core.IMAPSyntaxError):
                    view.resolve(ranges, as_uid)
                continue
            assert view.resolve(ranges, as_uid) == want, (uids, parts, as_uid)


def test_absent_and_pick_against_a_reference():
    """absent(): the UIDs of a UID set up to `top` that are not in the view, as a sequence set, by gaps
    (a range as wide as 1:4294967295 costs the UIDs inside it); pick(): the UIDs of a list inside a set."""
    from fastmail.proto.imap_search import compress
    from fastmail.proto.imap_view import absent, pick

    assert absent([(1, 0)], [], 0) == ""
    assert absent([(1, 0)], [2, 3, 7], 9) == "1,4:6,8:9"
    assert absent([(1, 4294967295)], [1, 5], 6) == "2:4,6"
    assert absent([(4, 0)], [1, 2], 3) == "3"  # "*:4" past the top: the top only (RFC 9051 §9)
    assert pick([1, 5, 9, 4000000000], [(2, 9), (1, 1)], 10) == [1, 5, 9]
    rng = random.Random(7)
    for _ in range(300):
        top = rng.randint(0, 40)
        uids = sorted(rng.sample(range(1, top + 1), rng.randint(0, top)))
        text = ",".join(rng.choice(["*", f"{rng.randint(1, 45)}", f"{rng.randint(1, 45)}:*",
                                    f"{rng.randint(1, 45)}:{rng.randint(1, 45)}"]) for _ in range(rng.randint(1, 4)))
        ranges = core.parse_sequence_set(text)
        want: set[int] = set()
        for lo, hi in ranges:
            a, b = sorted((lo or top, hi or top))
            want.update(range(max(a, 1), min(b, top) + 1))
        assert absent(ranges, uids, top) == compress(sorted(want - set(uids))), (text, uids, top)
        assert pick(uids, ranges, top) == sorted(want & set(uids)), (text, uids, top)
