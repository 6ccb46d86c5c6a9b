"""fastmail.hygiene.deadline.within: an answer given at once sets no timer; a wait times out and is cancelled
like one under `asyncio.timeout_at`; values, exceptions and cancellations pass through both ways."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fastmail.hygiene import deadline
from fastmail.hygiene.deadline import within


@pytest.fixture
def timers(monkeypatch) -> list[float | None]:
    """Every deadline given to asyncio.timeout_at by the module."""
    made: list[float | None] = []
    real = asyncio.timeout_at

    def counting(when: float | None) -> Any:
        made.append(when)
        return real(when)

    monkeypatch.setattr(deadline.asyncio, "timeout_at", counting)
    return made


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def at_once(value: Any) -> Any:
    return value


async def after(delay: float, value: Any, log: list[str] | None = None) -> Any:
    try:
        await asyncio.sleep(delay)
        await asyncio.sleep(0)  # a second wait: the job is resumed more than once
        return value
    except asyncio.CancelledError:
        if log is not None:
            log.append("cancelled")
        raise


def test_an_answer_given_at_once_sets_no_timer(timers) -> None:
    async def main() -> Any:
        now = asyncio.get_running_loop().time()
        return await within(at_once(7), now + 5), await within(at_once("late"), now - 1)

    assert run(main()) == (7, "late")  # past its deadline but needing no wait: answered, as timeout_at does
    assert timers == []


def test_a_wait_is_timed(timers) -> None:
    async def main() -> Any:
        return await within(after(0.01, "x"), asyncio.get_running_loop().time() + 5)

    assert run(main()) == "x"
    assert len(timers) == 1


def test_a_wait_past_the_deadline_is_cancelled_and_times_out(timers) -> None:
    log: list[str] = []

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await within(after(30, "never", log), start + 0.05)
        return loop.time() - start

    elapsed = run(main())
    assert log == ["cancelled"]
    assert elapsed < 10  # the 30 s wait did not run out


def test_exceptions_pass_through_before_and_after_a_wait(timers) -> None:
    async def fails_at_once() -> None:
        raise ValueError("at once")

    async def fails_later() -> None:
        await asyncio.sleep(0.001)
        raise KeyError("later")

    async def main() -> None:
        end = asyncio.get_running_loop().time() + 5
        with pytest.raises(ValueError, match="at once"):
            await within(fails_at_once(), end)
        with pytest.raises(KeyError, match="later"):
            await within(fails_later(), end)

    run(main())
    assert len(timers) == 1  # only the one that waited


def test_the_job_sees_what_the_task_sends_and_throws() -> None:
    """A job that catches an exception thrown into its wait (here a cancellation that is not the timer's)
    goes on; one that handles it and answers gives that answer."""
    seen: list[str] = []

    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("caught")
            await asyncio.sleep(0)  # still resumable after the throw
            return "recovered"
        return "slept"

    async def main() -> Any:
        task = asyncio.ensure_future(within(stubborn(), asyncio.get_running_loop().time() + 30))
        await asyncio.sleep(0.01)
        task.cancel()
        return await task

    assert run(main()) == "recovered"
    assert seen == ["caught"]


def test_an_outer_cancellation_reaches_the_job() -> None:
    log: list[str] = []

    async def main() -> None:
        task = asyncio.ensure_future(within(after(30, None, log), asyncio.get_running_loop().time() + 30))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not task.cancelling() or task.cancelled()

    run(main())
    assert log == ["cancelled"]


def test_other_awaitables_are_awaited_under_the_timer(timers) -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.01, fut.set_result, "future")
        got = await within(fut, loop.time() + 5)
        never = loop.create_future()
        with pytest.raises(TimeoutError):
            await within(never, loop.time() + 0.02)
        return got, never.cancelled()

    assert run(main()) == ("future", True)
    assert len(timers) == 2


def test_no_deadline_waits_as_long_as_it_takes() -> None:
    async def main() -> Any:
        return await within(after(0.02, "done"), None)

    assert run(main()) == "done"


def test_no_deadline_sets_no_timer(timers) -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.01, fut.set_result, "f")
        return await within(after(0.01, "c"), None), await within(fut, None)

    assert run(main()) == ("c", "f")
    assert timers == []
