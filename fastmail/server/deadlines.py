"""Session timeouts without a timer per command.

Re-arming a `call_later` handle on every command (cancel, allocate, heap insert) showed in the profile under
load.  Instead a session keeps a `deadline` (time.monotonic() seconds, or None while no timeout runs) and one
sweep per worker, every `TICK` seconds, times out the sessions past theirs.  A timeout so fires up to `TICK`
late, which is nothing against the minutes RFC 5321 asks for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

TICK = 0.25


class Timed(Protocol):
    deadline: float | None

    def on_timeout(self) -> None: ...


class Deadlines:
    def __init__(self, tick: float = TICK) -> None:
        self.tick = tick
        self._watched: set[Timed] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, session: Timed) -> None:
        self._watched.add(session)
        loop = asyncio.get_running_loop()
        if self._handle is None or self._loop is not loop:
            self._loop = loop
            self._handle = loop.call_later(self.tick, self._sweep)

    def forget(self, session: Timed) -> None:
        self._watched.discard(session)

    def _sweep(self) -> None:
        now = time.monotonic()
        due = [s for s in self._watched if s.deadline is not None and s.deadline <= now]
        for s in due:
            s.deadline = None
            s.on_timeout()
        if self._watched and self._loop is not None and not self._loop.is_closed():
            self._handle = self._loop.call_later(self.tick, self._sweep)
        else:
            self._handle = None


sessions = Deadlines()  # one loop per worker process: one sweep for all its sessions
