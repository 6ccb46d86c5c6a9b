"""IMAP commands on mailbox names (RFC 9051 §6.3.4-6.3.11; LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819,
SPECIAL-USE RFC 6154, CHILDREN RFC 3348, NAMESPACE RFC 2342, QUOTA RFC 9208): CREATE DELETE RENAME
SUBSCRIBE UNSUBSCRIBE LIST LSUB NAMESPACE STATUS GETQUOTAROOT GETQUOTA SETQUOTA, and the mailbox-name
encoding (UTF-8 for IMAP4rev2 / UTF8=ACCEPT, modified UTF-7 otherwise).

A mixin of fastmail.proto.imap.IMAPConnection: none of these commands changes the session's state, so the
state transitions stay in imap.py.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NamedTuple

from fastmail._core import imap as core
from fastmail.proto import imap_responses as S
from fastmail.proto.imap_requests import Call
from fastmail.proto.imap_responses import Status
from fastmail.store import mailboxes as M
from fastmail.store.mailboxes import DELIMITER, MailboxError, Mailboxes

if TYPE_CHECKING:
    from fastmail.proto.imap import Limits
    from fastmail.proto.imap_view import View

SYNTAX = core.IMAPSyntaxError

_STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "HIGHESTMODSEQ", "RECENT",
                 "APPENDLIMIT")


class _Name(NamedTuple):
    mailbox_id: int | None  # None: not a mailbox (a \Noselect name or a subscription only)
    noselect: bool
    subscribed: bool
    special: str | None


class MailboxCommands:
    """Handlers and helpers for mailbox names; the attributes are IMAPConnection's."""

    boxes: Mailboxes
    limits: Limits
    user_id: int | None
    utf8: bool
    condstore: bool
    view: View | None

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _name_in(self, token: Any) -> str:
        """A mailbox argument as str: UTF-8 for IMAP4rev2 / UTF8=ACCEPT sessions, modified UTF-7 otherwise
        (8-bit UTF-8 from a rev1 client is taken as UTF-8, as Dovecot does)."""
        raw = core.astring(token)
        if not self.utf8 or raw.isascii():
            try:
                return core.mutf7_decode(raw) if not self.utf8 else raw.decode("ascii")
            except core.IMAPSyntaxError:
                if raw.isascii():
                    raise SYNTAX("Invalid mailbox name (modified UTF-7)") from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SYNTAX("Invalid mailbox name (UTF-8)") from None

    def _name_out(self, name: str) -> bytes:
        if self.utf8:
            return core.quote(name, utf8=True)
        return core.quote(core.mutf7_encode(name))

    def _mailbox(self, name: str) -> dict[str, Any]:
        assert self.user_id is not None
        rec = self.boxes.get(self.user_id, name)
        if rec is None:
            raise MailboxError(M.NONEXISTENT, "No such mailbox")
        return rec

    def cmd_create(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        if len(cmd.args) != 1:
            raise SYNTAX("CREATE takes a mailbox name")
        name = self._name_in(cmd.args[0])
        if M.normalize(name.rstrip(DELIMITER)) == "INBOX":
            return S.ALREADYEXISTS
        yield Call(self.boxes.create, (self.user_id, name))
        return S.OK

    def cmd_delete(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        if len(cmd.args) != 1:
            raise SYNTAX("DELETE takes a mailbox name")
        name = self._name_in(cmd.args[0])
        yield Call(self.boxes.delete, (self.user_id, name))
        return S.OK

    def cmd_rename(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        if len(cmd.args) != 2:
            raise SYNTAX("RENAME takes two mailbox names")
        old, new = self._name_in(cmd.args[0]), self._name_in(cmd.args[1])
        yield Call(self.boxes.rename, (self.user_id, old, new))
        if self.view is not None and M.normalize(old) != "INBOX":
            rec = self.boxes.by_id(self.view.id)
            if rec is not None:
                self.view.name = rec["name"]
        return S.OK

    def cmd_subscribe(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        if len(cmd.args) != 1:
            raise SYNTAX("SUBSCRIBE takes a mailbox name")
        yield Call(self.boxes.set_subscribed, (self.user_id, self._name_in(cmd.args[0]), cmd.name == "SUBSCRIBE"))
        return S.OK

    def cmd_namespace(self, cmd: core.Command) -> Status:
        self._write(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        return S.OK

    def cmd_list(self, cmd: core.Command) -> Status:
        """LIST [(selection)] reference pattern(s) [RETURN (options)] (RFC 9051 §6.3.9, RFC 5258, 5819,
        6154).  LSUB is LIST (SUBSCRIBED) with rev1's LSUB response."""
        args = list(cmd.args)
        select: set[str] = set()
        if args and type(args[0]) is list:
            select = {str(x).upper() for x in args.pop(0)}
            if not select <= {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}:
                raise SYNTAX("Unknown LIST selection option")
            if select == {"RECURSIVEMATCH"}:
                raise SYNTAX("RECURSIVEMATCH needs another selection option")
        if len(args) < 2:
            raise SYNTAX("LIST takes a reference and a pattern")
        reference = _decode_pattern(core.astring(args[0], wildcards=True), self.utf8)
        pats = args[1] if type(args[1]) is list else [args[1]]
        patterns = [_decode_pattern(core.astring(p, wildcards=True), self.utf8) for p in pats]
        returns: set[str] = set()
        status_items: list[str] = []
        rest = args[2:]
        if rest:
            if len(rest) != 2 or type(rest[0]) is not str or rest[0].upper() != "RETURN" or type(rest[1]) is not list:
                raise SYNTAX("Invalid LIST return options")
            opts = rest[1]
            i = 0
            while i < len(opts):
                o = str(opts[i]).upper() if type(opts[i]) is str else ""
                if o == "STATUS" and i + 1 < len(opts) and type(opts[i + 1]) is list:
                    status_items = _status_list(opts[i + 1])
                    i += 2
                    continue
                if o not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "MYRIGHTS"):
                    raise SYNTAX("Unknown LIST return option")
                returns.add(o)
                i += 1
        lsub = cmd.name == "LSUB"
        if lsub:
            select.add("SUBSCRIBED")
        if len(patterns) == 1 and patterns[0] == "" and not select:
            self._write(b'* LIST (\\Noselect) "/" ""\r\n')
            return S.OK
        assert self.user_id is not None
        names = self._names()
        regexes = [_pattern_regex(M.normalize(reference + p)) for p in patterns]
        subscribed = "SUBSCRIBED" in select
        # RFC 5258 §3.5: with RECURSIVEMATCH, a name that does not meet the selection but has a descendant
        # that does is returned with CHILDINFO; RFC 3501 §6.3.9: LSUB "%" returns the unsubscribed parent of
        # a subscribed name (flagged \Noselect) when the name itself does not match.
        recursive = "RECURSIVEMATCH" in select and subscribed
        parents: set[str] = set()  # names with children (mailboxes or \\Noselect names)
        subscribed_below: dict[str, list[str]] = {}  # name -> its subscribed descendants
        for n, e in names.items():
            for p in M.parent_names(n):
                if e.mailbox_id is not None or e.noselect:
                    parents.add(p)
                if e.subscribed:
                    subscribed_below.setdefault(p, []).append(n)
        candidates = set(names)
        if recursive or lsub:
            candidates.update(subscribed_below)
        word = b"LSUB" if lsub else b"LIST"
        for name in sorted(candidates, key=lambda n: n.encode()):
            if not any(r.match(name) for r in regexes):
                continue
            e = names.get(name) or _Name(None, False, False, None)
            extra = b""
            if subscribed and not e.subscribed:
                below = subscribed_below.get(name)
                if not below or not (recursive or lsub):
                    continue
                if lsub and all(any(r.match(n) for r in regexes) for n in below):
                    continue
                extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if recursive else b""
            if "SPECIAL-USE" in select and not e.special:
                continue
            if e.mailbox_id is None and not e.noselect and not subscribed:
                continue  # a subscription only: not a name of LIST without (SUBSCRIBED)
            attrs = []
            if lsub:
                if e.mailbox_id is None or not e.subscribed:
                    attrs.append("\\Noselect")
            else:
                if e.mailbox_id is None:
                    attrs.append("\\Noselect" if e.noselect else "\\NonExistent")  # RFC 5258 §3.4
                kids = name in parents
                if kids or e.mailbox_id is not None or e.noselect:
                    attrs.append("\\HasChildren" if kids else "\\HasNoChildren")  # RFC 3348
                if e.special:
                    attrs.append(e.special)
                if e.subscribed and (subscribed or "SUBSCRIBED" in returns):
                    attrs.append("\\Subscribed")
            self._write(b"* " + word + b" (" + " ".join(attrs).encode() + b') "/" ' + self._name_out(name)
                        + extra + b"\r\n")
            if status_items and e.mailbox_id is not None:
                self._write(self._status_line(name, e.mailbox_id, status_items))
        return S.OK

    def _names(self) -> dict[str, _Name]:
        """The user's mailboxes, \\Noselect names and subscriptions by name."""
        assert self.user_id is not None
        out = {}
        for name, mark in self.boxes.marks(self.user_id):
            out[name] = _Name(None, mark["noselect"], mark["subscribed"], None)
        for b in self.boxes.list_all(self.user_id):
            out[b["name"]] = _Name(b["id"], False, bool(b["subscribed"]), b["special"])
        return out

    def _status_line(self, name: str, mailbox_id: int, items: list[str]) -> bytes:
        rec = self.boxes.status(mailbox_id, deleted="DELETED" in items)
        if rec is None:
            return b""
        values = {
            "MESSAGES": rec["exists"], "UIDNEXT": rec["uidnext"], "UIDVALIDITY": rec["uidvalidity"],
            "UNSEEN": rec["unseen"], "DELETED": rec.get("deleted", 0), "SIZE": rec["size"],
            "HIGHESTMODSEQ": rec["modseq"], "RECENT": 0, "APPENDLIMIT": self.limits.max_message,
        }
        body = " ".join(f"{i} {values[i]}" for i in items)
        return b"* STATUS " + self._name_out(name) + b" (" + body.encode() + b")\r\n"

    def cmd_status(self, cmd: core.Command) -> Status:
        if len(cmd.args) != 2 or type(cmd.args[1]) is not list:
            raise SYNTAX("STATUS takes a mailbox and a list of items")
        items = _status_list(cmd.args[1])
        if "HIGHESTMODSEQ" in items:
            self.condstore = True  # RFC 7162 §3.1.1: a CONDSTORE-enabling command
        rec = self._mailbox(self._name_in(cmd.args[0]))
        self._write(self._status_line(rec["name"], rec["id"], items))
        return S.OK

    def _quota_line(self) -> bytes | None:
        """'* QUOTA "" (STORAGE used limit)' in KiB (RFC 9208 §5.1), or None when the user has no quota."""
        assert self.user_id is not None
        quota, used, _count = self.boxes.quota(self.user_id)
        if not quota:
            return None
        return b'* QUOTA "" (STORAGE %d %d)\r\n' % ((used + 1023) // 1024, quota // 1024)

    def cmd_getquotaroot(self, cmd: core.Command) -> Status:
        """GETQUOTAROOT (RFC 9208 §4.3.2): one quota root, "", holds every mailbox of the user."""
        if len(cmd.args) != 1:
            raise SYNTAX("GETQUOTAROOT takes a mailbox")
        rec = self._mailbox(self._name_in(cmd.args[0]))
        line = self._quota_line()
        self._write(b"* QUOTAROOT " + self._name_out(rec["name"]) + (b' ""' if line else b"") + b"\r\n")
        if line:
            self._write(line)
        return S.OK

    def cmd_getquota(self, cmd: core.Command) -> Status:
        if len(cmd.args) != 1:
            raise SYNTAX("GETQUOTA takes a quota root")
        line = self._quota_line()
        if core.astring(cmd.args[0]) != b"" or line is None:
            return S.NO_QUOTA_ROOT
        self._write(line)
        return S.OK

    def cmd_setquota(self, cmd: core.Command) -> Status:
        return S.CANNOT.with_text("Quotas are set by the administrator")


def _status_list(items: list[Any]) -> list[str]:
    out = []
    for i in items:
        if type(i) is not str or i.upper() not in _STATUS_ITEMS:
            raise SYNTAX("Invalid STATUS item")
        if i.upper() not in out:
            out.append(i.upper())
    if not out:
        raise SYNTAX("Empty STATUS item list")
    return out


def _decode_pattern(raw: bytes, utf8: bool) -> str:
    """A LIST pattern with wildcards: decoded like a name, the wildcards kept."""
    if utf8 or not raw.isascii():
        return raw.decode("utf-8", "replace")
    pieces = re.split(rb"([%*])", raw)
    out = []
    for p in pieces:
        if p in (b"%", b"*") or not p:
            out.append(p.decode())
        else:
            try:
                out.append(core.mutf7_decode(p))
            except core.IMAPSyntaxError:
                out.append(p.decode("ascii"))
    return "".join(out)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """"*" matches anything, "%" anything but the delimiter (RFC 9051 §6.3.9)."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.S)
