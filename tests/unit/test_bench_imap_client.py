"""bench/imap/client.py's framing: the same Response whether the server's bytes come whole, byte by byte
or in random chunks, with untagged lines, literals (also empty ones and ones holding CRLF and "* "), lines
ending in "}" that are no literal, a continuation and the tagged reply."""

from __future__ import annotations

import asyncio
import random

from bench.imap.client import Response, _Protocol

TRANSCRIPT = [
    b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n",
    b"* 2 FETCH (UID 2 BODY[] {15}\r\nab\r\n* 9 FETCH\r\n)\r\n",
    b"* 3 FETCH (UID 3 BODY[] {0}\r\n)\r\n",
    b"* 4 FETCH (ENVELOPE (\"x {brace}\"))\r\n",
    b"* 5 FETCH (X {abc}\r\n",
    b"garbage that is no response\r\n",
    b"* 6 FETCH (UID 6)\r\n",
] + [b"* %d FETCH (UID %d FLAGS ())\r\n" % (i, i) for i in range(7, 300)]


def frame(chunks: list[bytes]) -> Response:
    async def main() -> Response:
        p = _Protocol()
        p.greeting.set_result(b"* OK")
        p.tag = b"A1"
        p.current = Response()
        p.done = asyncio.get_running_loop().create_future()
        for c in chunks:
            p.data_received(c)
        assert p.done.done()
        return p.done.result()
    return asyncio.run(main())


def test_framing_does_not_depend_on_chunking() -> None:
    whole = b"".join(TRANSCRIPT) + b"A1 OK done\r\n"
    expected = frame([whole])
    assert expected.status == "OK" and expected.text == "done"
    assert expected.count(b"FETCH") == 299  # not the one inside the literal, nor the garbage line
    assert expected.literal_bytes == 15
    assert expected.untagged[1] == b"* 2 FETCH (UID 2 BODY[] {15})"  # the literal cut out
    assert expected.untagged[3] == b'* 4 FETCH (ENVELOPE ("x {brace}"))'
    assert expected.untagged[4] == b"* 5 FETCH (X {abc}"
    rng = random.Random(3)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(whole)), rng.randint(1, 200)))
        chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
        got = frame(chunks)
        assert (got.untagged, got.literal_bytes, got.status) == (expected.untagged, expected.literal_bytes, "OK")
    small = frame([whole[i:i + 1] for i in range(len(whole))])
    assert small.untagged == expected.untagged
