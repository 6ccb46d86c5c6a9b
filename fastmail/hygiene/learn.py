"""Teaching rspamd from what users do over IMAP: a message moved (or copied) into the Junk folder is spam,
one moved out of Junk into any folder but Trash is ham (the convention of Dovecot's IMAPSieve "report
spam/ham" scripts: deleting junk via Trash says nothing about it).  A folder is "Junk" by its special-use
attribute (\\Junk, RFC 6154), so a renamed Junk folder keeps working.

The IMAP command never waits for rspamd: `Learner.submit()` only queues the blob ids, and a few background
tasks per worker (`CONCURRENCY`) read each message off the event loop and post it to the controller
(`fastmail.hygiene.rspamd.learn`).  The queue is bounded (`MAX_PENDING` messages): a user who moves 100,000
messages at once gets the first ones learned and one `learn_dropped` log line for the rest, instead of a
worker's memory and the controller's CPU going to it.  A message expunged before its turn is skipped.
Every learned message is logged (`event=learned`), every failure too (`learn_failed`); failures are not
retried — learning is advice to the classifier, not a promise.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from fastmail import log

from . import rspamd
from .filters import FilterUnavailable

JUNK = "\\Junk"
TRASH = "\\Trash"
MAX_PENDING = 1000  # queued messages per worker
CONCURRENCY = 2  # messages posted to the controller at once per worker


def verdict(source_special: str | None, dest_special: str | None) -> bool | None:
    """What a transfer from a folder to another teaches: True spam, False ham, None nothing."""
    if dest_special == JUNK and source_special != JUNK:
        return True
    if source_special == JUNK and dest_special not in (JUNK, TRASH):
        return False
    return None


class Learner:
    """Posts messages moved into / out of Junk to rspamd's controller, in the background."""

    def __init__(self, controller_url: str, password: str, timeout: float, read: Callable[[bytes], bytes],
                 executor: Executor | None = None, *, max_pending: int = MAX_PENDING,
                 concurrency: int = CONCURRENCY) -> None:
        self.url = controller_url
        self.password = password
        self.timeout = timeout
        self.read = read  # blob id -> the message's bytes (raises when the blob is gone)
        self.executor = executor
        self.max_pending = max_pending
        self.concurrency = concurrency
        self._queue: deque[tuple[bool, bytes, str]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.learned = 0
        self.failed = 0
        self.dropped = 0

    def submit(self, spam: bool, blobs: list[bytes], sid: str = "") -> None:
        """Queue `blobs` to be learned as spam (or ham); returns at once.  Call on the event loop."""
        room = self.max_pending - len(self._queue)
        if len(blobs) > room:
            dropped = len(blobs) - max(room, 0)
            self.dropped += dropped
            log.event("learn_dropped", logging.WARNING, sid=sid, count=dropped, pending=len(self._queue))
            blobs = blobs[:max(room, 0)]
        self._queue.extend((spam, blob, sid) for blob in blobs)
        loop = asyncio.get_running_loop()
        while self._queue and len(self._tasks) < self.concurrency:
            task = loop.create_task(self._work())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for what is queued: a worker's graceful stop."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            spam, blob, sid = self._queue.popleft()
            what = "spam" if spam else "ham"
            try:
                raw = await loop.run_in_executor(self.executor, self.read, blob)
            except Exception as e:  # expunged (and released) before its turn
                log.event("learn_skipped", sid=sid, blob=blob.hex(), learn_as=what, reason=repr(e))
                continue
            try:
                ok = await rspamd.learn(self.url, raw, spam=spam, password=self.password, timeout=self.timeout)
            except (FilterUnavailable, ValueError) as e:
                self.failed += 1
                log.event("learn_failed", logging.WARNING, sid=sid, blob=blob.hex(), learn_as=what, error=str(e))
                continue
            if ok:
                self.learned += 1
                log.event("learned", sid=sid, blob=blob.hex(), learn_as=what, size=len(raw))
            else:
                self.failed += 1  # refused: rspamd.learn logged why
