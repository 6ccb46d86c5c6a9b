"""Group commit (ARCHITECTURE §3): messages that arrive together from many sessions are made durable together.

Sessions hand their message to `commit()` and wait.  One thread stores a batch (one segment fdatasync, one
synced LMDB commit) while the loop keeps receiving; whatever arrived meanwhile forms the next batch.  So the
batch grows with the load by itself, with no timer adding latency to a lone message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastmail import metrics as M
from fastmail.store import mime
from fastmail.store.store import Incoming, Outcome, Store


class Committer:
    def __init__(self, store: Store, metrics: M.Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or M.current()
        self._seconds = 0.0  # how long the last batch's commit_batch took (written by the commit thread)
        self._pending: list[tuple[Incoming, asyncio.Future[Outcome]]] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.messages = 0
        self.largest_batch = 0
        self.on_queued: Callable[[], None] | None = None  # wakes the delivery processes (fastmail.delivery.wake)

    async def commit(self, item: Incoming) -> Outcome:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        self._pending.append((item, fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await fut

    def _store(self, batch: list[Incoming]) -> list[Outcome]:
        for item in batch:
            if item.meta is None:
                try:
                    item.meta = mime.analyze(item.raw)
                except Exception:  # never lose a message over its index entry; IMAP re-derives it
                    item.meta = None
        t0 = time.perf_counter()
        outcomes = self.store.commit_batch(batch)
        self._seconds = time.perf_counter() - t0
        return outcomes

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            items = [item for item, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._executor, self._store, items)
            except Exception as e:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.messages += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            self.metrics.commit_batch.observe(len(batch))
            self.metrics.commit_seconds.observe(self._seconds)
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(outcome)
            if self.on_queued is not None and any(i.remote or i.notices or (i.bounce_over_quota and o.over_quota)
                                                  for i, o in zip(items, outcomes, strict=True)):
                self.on_queued()

    async def drain(self) -> None:
        """Wait until nothing is pending (used when stopping)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})
