"""The per-worker timeout sweep: due sessions time out once, others and forgotten ones do not."""

from __future__ import annotations

import asyncio
import time

from fastmail.server.deadlines import Deadlines


class Session:
    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.timeouts = 0

    def on_timeout(self) -> None:
        self.timeouts += 1


def test_sweep_times_out_only_due_sessions() -> None:
    async def scenario() -> tuple[Session, Session, Session, Session]:
        d = Deadlines(tick=0.01)
        now = time.monotonic()
        due, later, idle, gone = Session(now), Session(now + 3600), Session(None), Session(now)
        for s in (due, later, idle, gone):
            d.watch(s)
        d.forget(gone)
        for _ in range(200):  # bounded: the sweep runs every 10 ms
            await asyncio.sleep(0.01)
            if due.timeouts:
                break
        await asyncio.sleep(0.05)  # more sweeps: a timed-out session must not fire again
        return due, later, idle, gone

    due, later, idle, gone = asyncio.run(scenario())
    assert due.timeouts == 1 and due.deadline is None
    assert later.timeouts == 0 and idle.timeouts == 0 and gone.timeouts == 0


def test_sweep_follows_a_new_loop() -> None:
    d = Deadlines(tick=0.01)

    async def one() -> Session:
        s = Session(time.monotonic())
        d.watch(s)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if s.timeouts:
                break
        return s

    assert asyncio.run(one()).timeouts == 1
    assert asyncio.run(one()).timeouts == 1  # the first loop is closed; the sweep moves to the second
