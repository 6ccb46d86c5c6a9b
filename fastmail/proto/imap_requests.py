"""Requests the IMAP state machine (fastmail.proto.imap) hands to its driver, and what each expects back.

    StartTLS()          upgrade the transport, then resolve(None)
    Authenticate(...)   verify the password, then resolve((ok, user id)), or resolve(Status) to refuse
    Call(fn, args)      run a store write (it syncs to disk) off the loop, then resolve(result) or fail(exc)
    Commit(item)        APPEND: hand the message to the group committer, then resolve(Outcome) or fail(exc)
    CommitAll(items)    MULTIAPPEND: store all or none (Mailboxes.append_all) on the thread that writes the
                        segments (the group committer's), then resolve((uidvalidity, uids)) or fail(exc)
    Flush()             write out what is pending and resume once the client has read enough (back-pressure)
    Close()             flush the output and close
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastmail.store.store import Incoming


@dataclass
class StartTLS:
    pass


@dataclass
class Authenticate:
    mechanism: str
    username: str
    password: str = field(repr=False)


@dataclass
class Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass
class Commit:
    item: Incoming


@dataclass
class CommitAll:
    items: list[Incoming]


@dataclass
class Flush:
    pass


@dataclass
class Close:
    pass


Request = StartTLS | Authenticate | Call | Commit | CommitAll | Flush | Close
