"""Crash safety under load (issue #8), CI size: SMTP senders, 20 IMAP clients and outbound delivery to a sink
while the master, a worker and the delivery process are SIGKILLed in turn (6 kills, 2 of each, at random
moments of a seeded RNG); afterwards every message that got its 250 / APPEND OK is there exactly once and
byte-identical, fsck finds nothing wrong, every accepted remote recipient got its copy, and no client saw a
wrong answer.  The engine is tests/integration/crashload.py; `python -m bench.crash --kills 20` is the full
run."""

from __future__ import annotations

import os
import random

import pytest

from . import crashload

pytestmark = pytest.mark.integration


def test_sigkill_of_each_process_kind_under_load_loses_nothing(tmp_path):
    seed = int(os.environ.get("FASTMAIL_CRASH_SEED", "0")) or random.SystemRandom().randrange(1, 1 << 32)
    print(f"crash seed {seed} (FASTMAIL_CRASH_SEED={seed} reruns it)")
    res = crashload.run(tmp_path, kills=6, seed=seed, smtp_clients=3, imap_clients=20, pause=(1.0, 3.0))
    summary = {k: v for k, v in res.items() if k not in ("fsck", "fsck_after_repair")}
    print(summary)
    assert res["kills_by_kind"] == {"master": 2, "worker": 2, "delivery": 2}, summary
    assert res["wrong_answer_count"] == 0, res["wrong_answers"]
    assert res["fsck_exit"] == 0 and res["fsck"]["problems"] == [], res["fsck"]
    assert {n["kind"] for n in res["fsck"]["notes"]} <= {"torn-tail", "empty-segment"}, res["fsck"]
    assert res["fsck_after_repair"] == {"clean": True, "repaired": False, "problems": [], "notes": []}, res
    assert res["lost_count"] == 0 and res["duplicate_count"] == 0 and res["bad_stored_count"] == 0, summary
    assert res["queue_drained"] and res["outbound_missing_count"] == 0, summary
    # the load was real: messages accepted before and after every kill, by every kind of client
    assert res["counts"].get("smtp_accepted", 0) >= 100 and res["counts"].get("imap_append", 0) >= 10, summary
    assert res["counts"].get("imap_fetch_body", 0) >= 100 and res["outbound_accepted"] >= 20, summary
    assert all(k["kind"] != "master" or k["children_exit_s"] < 30 for k in res["kills"]), res["kills"]


def test_the_judge_flags_each_kind_of_wrong_answer():
    """The crash run's judge (crashload.Ledger) is no rubber stamp: changed bytes, a Message-ID at two UIDs, a
    UID with two Message-IDs, a UID not above those seen before the message was sent, a message in the wrong
    mailbox, a UIDVALIDITY that changes — each is a wrong answer."""
    led = crashload.Ledger(run="t")
    rng = random.Random(1)
    a, raw_a = led.new_message("smtp", ("alice@example.org",), (), rng)
    b, raw_b = led.new_message("append", ("alice@example.org",), (), rng)
    assert led.body_ok(a, b"Received: from x\r\n\tby y\r\nReturn-Path: <s@x>\r\n" + raw_a)
    assert not led.body_ok(a, b"Received: x\r\n" + raw_a[:-4] + b"xx\r\n")
    assert not led.body_ok(a, b"X-Added: 1\r\n" + raw_a)
    assert led.body_ok(b, raw_b) and not led.body_ok(b, b"Received: x\r\n" + raw_b)
    assert not led.body_ok("nobody@x", raw_a)
    led.seen("alice@example.org", 5, a)
    led.check_validity("alice@example.org", 1)
    assert led.wrong == []
    led.seen("alice@example.org", 6, a)  # the same message at two UIDs
    led.seen("alice@example.org", 5, b)  # a UID with two messages
    c, _ = led.new_message("smtp", ("alice@example.org",), (), rng)  # sent after UID 6 was seen...
    led.seen("alice@example.org", 4, c)  # ...stored under a lower UID
    led.seen("bob@example.org", 1, c)  # not sent to bob
    led.check_validity("alice@example.org", 2)
    assert len(led.wrong) == 5, led.wrong
