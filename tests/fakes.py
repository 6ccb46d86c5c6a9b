"""Stand-ins shared by tests that drive the SMTP state machine without a store."""

from __future__ import annotations


class FakePolicy:
    """fastmail.proto.smtp's policy for one local domain, example.org: `users` (lower-case local parts) are
    its mailboxes, or every local part when None; nobody is over quota; every sender is owned."""

    def __init__(self, users: frozenset[str] | None = None) -> None:
        self.users = users

    def resolve(self, local: str, domain: str) -> tuple[list[int], list[str]] | None:
        return ([1], []) if self.users is None or local.lower() in self.users else None

    def is_local_domain(self, domain: str) -> bool:
        return domain == "example.org"

    def over_quota(self, user_id: int, size: int) -> bool:
        return False

    def sender_owned(self, user_id: int, local: str, domain: str) -> bool:
        return True
