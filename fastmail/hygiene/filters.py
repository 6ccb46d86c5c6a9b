"""What the clients of the external filters (clamd in `clamd`, rspamd in `rspamd`) share.

A filter that gives no verdict — not reachable, too slow, refusing the message, answering something that
cannot be read — raises `FilterUnavailable`; the caller decides by its `*.fail_open` setting whether the
message goes on unfiltered or gets a temporary failure.  Its text says what the filter said or what went
wrong, for the log; it is never meant for the SMTP client (it names the filter and its address).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator


class FilterUnavailable(Exception):
    """The filter gave no verdict; str() says why."""


@contextlib.asynccontextmanager
async def deadline(timeout: float, what: str) -> AsyncIterator[None]:
    """Run the block within `timeout` seconds, raising FilterUnavailable("<what>: no answer within ...") when
    it takes longer.  The whole exchange (connect, send, reply) shares the one deadline."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise FilterUnavailable(f"{what}: no answer within {timeout:g} s") from None


def describe(exc: BaseException) -> str:
    """An OSError as its reason ("Connection refused", without Python's "[Errno 111]"), else str()."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's sock_connect says "Connect call failed (...)" instead
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
