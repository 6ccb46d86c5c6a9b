"""fastmail.hygiene.learn: which transfers teach what, and the Learner's bounded background queue against a
minimal controller on a real loopback socket (the real rspamd is in tests/integration/test_learn.py)."""

from __future__ import annotations

import asyncio

import pytest

from fastmail.hygiene import learn
from fastmail.hygiene.learn import Learner, verdict


@pytest.mark.parametrize(("source", "dest", "expected"), [
    (None, "\\Junk", True),  # INBOX -> Junk
    ("\\Sent", "\\Junk", True),
    ("\\Junk", None, False),  # Junk -> INBOX or a folder of the user's
    ("\\Junk", "\\Archive", False),
    ("\\Junk", "\\Trash", None),  # deleting junk says nothing
    ("\\Junk", "\\Junk", None),  # a second Junk folder
    (None, None, None),
    (None, "\\Trash", None),
    ("\\Trash", None, None),
])
def test_verdict(source: str | None, dest: str | None, expected: bool | None) -> None:
    assert verdict(source, dest) is expected


class Controller:
    """Answers /learnspam and /learnham like rspamd's controller: 200 {"success":true}; records each body."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[tuple[str, bytes]] = []
        self.active = 0
        self.most_active = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        body = await reader.readexactly(length)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        await asyncio.sleep(self.delay)
        self.active -= 1
        self.seen.append((path, body))
        payload = b'{"success":true}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload))
        await writer.drain()
        writer.close()


async def _serve(controller: Controller) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(controller.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def test_learner_posts_in_the_background_and_bounds_its_queue() -> None:
    bodies = {b"%03d" % i: b"message %d" % i for i in range(12)}

    async def main() -> tuple[Controller, Learner]:
        controller = Controller(delay=0.02)
        server, url = await _serve(controller)
        learner = Learner(url, "pw", 5.0, bodies.__getitem__, max_pending=8, concurrency=2)
        learner.submit(True, [b"%03d" % i for i in range(10)], sid="s1")  # 2 over the bound: dropped
        assert learner.pending >= 8  # submit returned before anything was posted
        learner.submit(False, [b"%03d" % 11], sid="s2")  # no room until a task has taken some: dropped
        await learner.drain(10)
        while learner.pending:
            await learner.drain(10)
        server.close()
        await server.wait_closed()
        return controller, learner

    controller, learner = asyncio.run(main())
    spam = sorted(body for path, body in controller.seen if path == "/learnspam")
    assert len(spam) == 8 and all(b in bodies.values() for b in spam)
    assert learner.dropped == 3 and not any(path == "/learnham" for path, _ in controller.seen)
    assert learner.learned == len(controller.seen)
    assert controller.most_active <= 2


def test_learner_skips_a_message_gone_before_its_turn_and_counts_failures() -> None:
    async def main() -> tuple[Controller, Learner, Learner]:
        controller = Controller()
        server, url = await _serve(controller)

        def read(blob: bytes) -> bytes:
            if blob == b"gone":
                raise KeyError(blob)
            return b"body of " + blob

        learner = Learner(url, "", 5.0, read)
        learner.submit(True, [b"gone", b"kept"])
        await learner.drain(10)
        server.close()
        await server.wait_closed()
        down = Learner(url, "", 5.0, read)  # the controller is gone now: connection refused
        down.submit(False, [b"kept"])
        await down.drain(10)
        return controller, learner, down

    controller, learner, down = asyncio.run(main())
    assert controller.seen == [("/learnspam", b"body of kept")]
    assert (learner.learned, learner.failed) == (1, 0)
    assert (down.learned, down.failed) == (0, 1)


def test_defaults_are_small() -> None:
    assert learn.MAX_PENDING <= 10_000 and 1 <= learn.CONCURRENCY <= 8
