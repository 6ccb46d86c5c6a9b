"""What every IMAP server under test provides."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bench.imap.client import Client, imap_date
from bench.imap.mailgen import Message

USER = "bench@example.org"
PASSWORD = "bench-secret"
APPEND_MAILBOX = "BenchAppend"  # where the APPEND ops write, so INBOX keeps the seeded messages only


class ImapTarget(ABC):
    """One server under test, running for the whole benchmark: start(workdir) on an empty dir, seed()
    the same generated mailbox into USER's INBOX, the ops, stop()."""

    name: str
    host = "127.0.0.1"
    port = 0
    seed_method = "imap-append"  # how seed() fills the INBOX (into the JSON)

    @abstractmethod
    def start(self, workdir: Path, messages: list[Message], seed: int) -> None:
        """Fresh state under workdir, USER able to log in with PASSWORD; return once the IMAP port greets.
        A target that seeds from files (Dovecot's Maildir) writes `messages` before it starts."""

    async def seed(self, messages: list[Message], seed: int, user: str = USER) -> dict[str, Any]:
        """Fill `user`'s INBOX with `messages`, each with its INTERNALDATE.  Default: APPEND over IMAP on one
        connection (LITERAL+ when offered), one after the other, so that UIDs follow the generator's order."""
        c = await Client.connect(self.host, self.port)
        await c.login(user, PASSWORD)
        total = 0
        for m in messages:
            await c.append("INBOX", m.data, date=imap_date(m.internaldate))
            total += m.size
        await c.logout()
        return {"messages": len(messages), "bytes": total}

    @abstractmethod
    def pids(self) -> list[int]:
        """Root processes of the server; their whole process tree is accounted (CPU, memory)."""

    @abstractmethod
    def stop(self) -> dict[str, Any]:
        """Stop gracefully; return {"exit_code": ..., "log": {"problems": [...], ...}}."""

    def restart(self) -> None:
        """Stop the server and start it again on the same data (no reseeding): the IDLE op measures the
        memory of sessions on a fresh server, not what earlier ops left in its heap."""
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        return {}

    def settings(self) -> dict[str, Any]:
        return {}

    def check_installed(self) -> str | None:
        """None, or what is missing and how to install it."""
        return None

