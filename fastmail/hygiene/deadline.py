"""`within(job, deadline)`: await a coroutine under a deadline, setting the timer only if it has to wait.

The checks bound every DNS wait (`asyncio.timeout_at`), but most of their waits are answered at once: a kept
answer (fastmail.hygiene.dnsq) returns without the coroutine ever suspending.  An `asyncio.timeout_at` costs
~5 µs of CPU all the same (a timer handle into the loop's heap and out again, the current task looked up),
and a message's checks set five or six of them, every one for an answer already there.

`within` runs the coroutine's first step itself.  A coroutine that finishes in it (or raises) gives its
answer with no timer set — as `async with asyncio.timeout_at(deadline)` would have, which also lets an
answer that needs no wait through after its deadline.  A coroutine that suspends is resumed under
`asyncio.timeout_at(deadline)` exactly where it stopped (`Resumed` passes what the task sends or throws
into it, as `await` does), so waits time out, and a cancellation reaches it, as under a plain `await`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from types import CoroutineType
from typing import Any, TypeVar

T = TypeVar("T")


async def within(job: Awaitable[T], deadline: float | None) -> T:
    """`job`'s answer, or TimeoutError once the loop's clock passes `deadline` while it waits; None: no
    deadline, no timer (the caller's own deadline bounds the wait).  `job` is normally a coroutine object;
    any other awaitable is awaited under the timer."""
    if type(job) is not CoroutineType:
        if deadline is None:
            return await job
        async with asyncio.timeout_at(deadline):
            return await job
    try:
        waiting = job.send(None)  # type: ignore[attr-defined]
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    if deadline is None:
        return await Resumed(job, waiting)  # type: ignore[arg-type]
    async with asyncio.timeout_at(deadline):
        return await Resumed(job, waiting)  # type: ignore[arg-type]


class Resumed:
    """A coroutine already started (its first `send(None)` done by the caller, which got `waiting`), awaited
    from where it suspended: `yield from` by hand, the first thing handed to the task being what the
    coroutine yielded.  within() and the checks' runner (inbound._settle) use it."""

    __slots__ = ("job", "waiting")

    def __init__(self, job: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self.job = job
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        job, waiting = self.job, self.waiting
        self.job = self.waiting = None  # type: ignore[assignment]
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                job.close()
                raise
            except BaseException as e:  # noqa: BLE001 — a cancellation (the timer's) goes to the job
                try:
                    waiting = job.throw(e)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting = job.send(sent)
                except StopIteration as done:
                    return done.value
