"""The POP3 servers under test: the IMAP bench's two targets (bench/imap/target_*.py), each with its POP3
listener on a free loopback port and the parallel users added.

Both are seeded as in the IMAP bench — fastmail by IMAP APPEND (each user on its own connection), Dovecot
by Maildir files written before the start — so `bench@example.org` holds the main generated mailbox and
each parallel user (`pop01@example.org` ...) its own copy of the smaller one.  POP3 logins are USER/PASS in
plaintext over loopback (fastmail's default `pop3.plaintext_auth_loopback`; Dovecot's
`disable_plaintext_auth = no`), with the same argon2id password hash on both.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.imap.mailgen import Message
from bench.imap.target import USER
from bench.imap.target_dovecot import DovecotTarget
from bench.imap.target_fastmail import FastmailImapTarget
from bench.smtp.target import free_port, wait_for_greeting

# Appended to the IMAP bench's dovecot.conf (which has `protocols = imap`, replaced by `imap pop3`).
# Everything else of POP3 is Dovecot's default: one `pop3` process per session (client_limit 1),
# pop3-login in high-security mode, pop3_uidl_format = %08Xu%08Xv, no pop3_lock_session.
POP3_CONF = """\
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service pop3 {{
  process_limit = {limit}
}}
"""


def parallel_users(n: int) -> list[str]:
    return [f"pop{k:02d}@example.org" for k in range(1, n + 1)]


class DovecotPop3Target(DovecotTarget):
    """Dovecot 2.3 with `protocols = imap pop3`; the IMAP port only answers the start-up check."""

    def __init__(self, users: dict[str, list[Message]], sessions: int = 50, password_scheme: str = "argon2id") -> None:
        super().__init__(sessions=sessions, seed_by_append=False, password_scheme=password_scheme)
        self.extra = users
        self.pop3_port = 0

    def users(self, messages: list[Message]) -> list[tuple[str, list[Message]]]:
        return [(USER, messages), *self.extra.items()]

    def _conf(self, dir: Path | str, uid: Any) -> str:
        text = super()._conf(dir, uid).replace("\nprotocols = imap\n", "\nprotocols = imap pop3\n")
        return text + POP3_CONF.format(pop3_port=self.pop3_port or "POP3PORT", limit=self.limit)

    def check_installed(self) -> str | None:
        missing = super().check_installed()
        if missing:
            return missing
        if not Path("/usr/lib/dovecot/pop3").exists() and not Path("/usr/libexec/dovecot/pop3").exists():
            return "Dovecot's pop3 is not installed (Debian: apt-get install dovecot-pop3d; make bench-deps)"
        return None

    def start(self, workdir: Path, messages: list[Message], seed: int) -> None:
        self.pop3_port = free_port()
        super().start(workdir, messages, seed)
        proc = self.proc
        wait_for_greeting(self.host, self.pop3_port, lambda: proc is not None and proc.poll() is None, expect=b"+OK")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "pop3_users": len(self.extra) + 1}


class FastmailPop3Target(FastmailImapTarget):
    """fastmail with every listener on a free loopback port (listen.pop3 among them)."""

    def __init__(self, workers: int, extra: list[str] | None, users: dict[str, list[Message]]) -> None:
        super().__init__(workers, extra, "imap-append")
        self.extra_users = users
        self.pop3_port = 0

    def users(self) -> list[str]:
        return [USER, *self.extra_users]

    def check_installed(self) -> str | None:
        missing = super().check_installed()
        if missing is None and "pop3" not in self._listener_names():
            return "fastmail has no POP3 listener (no `listen.pop3` in fastmail/config.py)"
        return missing

    def start(self, workdir: Path, messages: list[Message], seed: int) -> None:
        super().start(workdir, messages, seed)
        self.pop3_port = self.ports["pop3"]
        proc = self.proc
        wait_for_greeting(self.host, self.pop3_port, lambda: proc is not None and proc.poll() is None, expect=b"+OK")

    async def seed(self, messages: list[Message], seed: int, user: str = USER) -> dict[str, Any]:
        """The main mailbox over one connection, then the parallel users' on one connection each, at once."""
        main = await super().seed(messages, seed)
        others = await asyncio.gather(*(super(FastmailPop3Target, self).seed(m, seed, u)
                                        for u, m in self.extra_users.items()))
        return {**main, "parallel_users": len(others), "parallel_messages": sum(o["messages"] for o in others)}
