"""Moving mail in and out (issue #9): `fastmail import maildir|mbox`, `fastmail export maildir`.

Import reads a Dovecot Maildir++ tree or an mbox file and stores each message the way IMAP APPEND does:
the bytes into this process's segment file (one fdatasync per batch), the records with one synced LMDB
commit per batch, ENVELOPE/BODYSTRUCTURE analysed once (fastmail.store.mime).  A batch is at most
BATCH_MESSAGES messages or BATCH_BYTES bytes.  The store is multi-process safe, so this runs while the
server serves: sessions see the new messages through the change log like any delivery.

Decisions (docs/operations.md, "Moving from Dovecot"):

- Quota: an import is the operator's act, so it is never refused for the user's quota; the report gives
  the usage afterwards (and whether it is over the quota).
- Idempotence: each imported message leaves a marker in the index, written in the same LMDB transaction
  as the message itself (so a crash leaves both or neither): key MARK | mailbox id | what identifies the
  source message.  For a Maildir that is the file's base name (the part before ":2,", which Dovecot keeps
  when flags change and which is unique in its folder); for an mbox, the SHA-256 of the stored bytes and
  how many identical messages came before it in the file.  Re-running an import skips what is marked, so
  a first import can be followed by a final one at cut-over that brings only what arrived in between.
  Flag changes made in the source after a message was imported are not carried over.
- Line ends: Dovecot keeps Maildir files with LF line ends and serves them with CRLF; fastmail stores what
  IMAP serves, so a bare LF becomes CRLF on import (a file already in CRLF form is stored as it is).
  Export writes the stored bytes (CRLF), with S= the file size and W= the CRLF size in the name.

Maildir++ as Dovecot keeps it: PATH/{cur,new,tmp} is INBOX, PATH/.A.B is the folder "A/B" (Dovecot's
separator "." becomes fastmail's "/", each level in modified UTF-7, RFC 3501 §5.1.3); the info suffix
":2,FLAGS" carries D F P R S T and the letters a-z of the folder's `dovecot-keywords`; the file's mtime is
the INTERNALDATE; `dovecot-uidlist` gives the order (UIDs ascending), files it does not list follow by mtime
then name; `subscriptions` (Dovecot's version 2 file: names with TAB between levels) the subscriptions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import itertools
import mmap
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from fastmail._core.imap import mutf7_decode, mutf7_encode
from fastmail.store import mime
from fastmail.store import records as R
from fastmail.store.mailboxes import DELIMITER, MailboxError, Mailboxes, check_name
from fastmail.store.store import Incoming, Store, new_qid

BATCH_MESSAGES = 256
BATCH_BYTES = 32 << 20
MARK = b"import\0"  # meta database: MARK | U64 mailbox id | b"m" base name / b"h" digest | -> {"v", "uid"}

# Maildir info flags (cr.yp.to/proto/maildir.html) and Dovecot's reading of them.  P ("passed") has no IMAP
# system flag: it becomes the keyword $Forwarded (RFC 5788), which clients set when they forward.
FLAG_OF_LETTER = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered", "S": "\\Seen",
                  "T": "\\Deleted"}
LETTER_OF_FLAG = {flag: letter for letter, flag in FLAG_OF_LETTER.items()}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")

# mbox: the headers Dovecot's mbox storage keeps its state in and hides from clients; their flags are read
# (Status: R seen, O old; X-Status: A answered, F flagged, T draft, D deleted; X-Keywords) and they go.
MBOX_STATE_HEADERS = frozenset((b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imap", b"x-imapbase",
                                b"content-length"))
STATUS_FLAGS = {"R": "\\Seen"}
XSTATUS_FLAGS = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}
MONTHS = {m: i for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}
# The date of an mbox From_ line (RFC 4155: asctime form, UTC), with the variants seen in the wild: no
# seconds, a zone name or offset before or after the year.
FROM_DATE = re.compile(
    rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(\d{1,2}) +(\d{1,2}):(\d\d)(?::(\d\d))?"
    rb"(?: +([A-Z]{1,5}|[+-]\d{4}))? +(\d{4})(?: +([+-]\d{4}))?")
BARE_LF = re.compile(rb"(?<!\r)\n")


class MigrateError(Exception):
    """A source or target the command cannot use; the text is for the operator."""


@dataclass
class FolderReport:
    name: str
    source: str
    found: int = 0  # messages in the source
    imported: int = 0
    skipped: int = 0  # imported before (marked)
    vanished: int = 0  # listed, then gone before they could be read (a Dovecot still running)
    bytes: int = 0
    created: bool = False
    subscribed: bool | None = None  # set from the source's subscriptions; None: left as it was


@dataclass
class Report:
    user: str
    folders: list[FolderReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    used: int = 0
    quota: int = 0
    messages: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["imported"] = sum(f.imported for f in self.folders)
        out["skipped"] = sum(f.skipped for f in self.folders)
        out["bytes"] = sum(f.bytes for f in self.folders)
        out["over_quota"] = bool(self.quota and self.used > self.quota)
        return out

    def text(self) -> str:
        lines = [f"{f.name}\tfound={f.found}\timported={f.imported}\tskipped={f.skipped}\tbytes={f.bytes}"
                 + ("\tcreated" if f.created else "") + (f"\tvanished={f.vanished}" if f.vanished else "")
                 for f in self.folders]
        lines += [f"warning: {w}" for w in self.warnings]
        d = self.as_dict()
        lines.append(f"{self.user}: {d['imported']} message(s) imported, {d['skipped']} already there; "
                     f"usage {self.used} bytes in {self.messages} message(s)"
                     + (f", quota {self.quota}" + (" (OVER QUOTA)" if d["over_quota"] else "") if self.quota else ""))
        return "\n".join(lines)


@dataclass
class Source:
    """One message to import: `key` identifies it for idempotence, load() gives (bytes, flags, date)."""

    key: bytes
    load: Callable[[], tuple[bytes, list[str], int] | None]  # None: gone


def to_crlf(data: bytes) -> bytes:
    """Every bare LF as CRLF (what IMAP serves; Dovecot's Maildir files have LF line ends)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return BARE_LF.sub(b"\r\n", data)


def order_flags(flags: Iterable[str]) -> list[str]:
    """System flags first (in RFC order), then keywords as met; each once."""
    seen = list(dict.fromkeys(flags))
    return [f for f in SYSTEM_FLAGS if f in seen] + [f for f in seen if f not in SYSTEM_FLAGS]


# -- importing into the store --------------------------------------------------------------------------


class Importer:
    """Stores Sources into one user's folders, in batches, marked for idempotence."""

    def __init__(self, store: Store, address: str, owner: tuple[int, int] | None = None) -> None:
        self.store = store
        self.owner = owner  # (uid, gid) the server's processes run as, when we are root: see _commit
        self._given: set[int] = set()
        self.boxes = Mailboxes(store)
        rec = store.get_user(address)
        if rec is None:
            raise MigrateError(f"no user {address}")
        self.user_id = int(rec["id"])
        self.address = rec["address"]
        self.report = Report(self.address)

    def folder(self, name: str, source: str) -> tuple[int, FolderReport]:
        """The mailbox `name` (created with its parents when missing) and its report line."""
        try:
            name = check_name(name)
        except MailboxError:
            raise MigrateError(f"{source}: {name!r} cannot be a mailbox name") from None
        rec = self.boxes.get(self.user_id, name)
        created = False
        if rec is None:
            try:
                mid = self.boxes.create(self.user_id, name)
                created = True
            except MailboxError as e:
                if e.code != "ALREADYEXISTS":  # made meanwhile by a client: use it
                    raise MigrateError(f"cannot create {name}: {e.text}") from None
                rec = self.boxes.get(self.user_id, name)
                assert rec is not None
                mid = rec["id"]
        else:
            mid = rec["id"]
        fr = FolderReport(name, source, created=created)
        self.report.folders.append(fr)
        return mid, fr

    def run(self, mailbox_id: int, sources: list[Source], fr: FolderReport) -> None:
        fr.found += len(sources)
        with self.store.read() as txn:
            meta = self.store.db["meta"]
            todo = [s for s in sources if txn.get(mark_key(mailbox_id, s.key), db=meta) is None]
        fr.skipped += len(sources) - len(todo)
        batch: list[tuple[bytes, Incoming]] = []
        size = 0
        for src in todo:
            loaded = src.load()
            if loaded is None:
                fr.vanished += 1
                continue
            raw, flags, date = loaded
            item = Incoming(qid=new_qid(), raw=raw, sender="", local=[self.user_id], mailbox_id=mailbox_id,
                            flags=order_flags(flags), internaldate=max(int(date), 0) or None)
            batch.append((src.key, item))
            size += len(raw)
            if len(batch) >= BATCH_MESSAGES or size >= BATCH_BYTES:
                self._commit(mailbox_id, batch, fr)
                batch, size = [], 0
        if batch:
            self._commit(mailbox_id, batch, fr)

    def _commit(self, mailbox_id: int, batch: list[tuple[bytes, Incoming]], fr: FolderReport) -> None:
        """One batch: bodies with one fdatasync, records and markers in one synced LMDB transaction (the
        durable path of APPEND: Mailboxes.append_all, without its quota refusal)."""
        for _, item in batch:
            try:
                item.meta = mime.analyze(item.raw)
            except Exception:  # as the group committer: never refuse a message over its index entry
                item.meta = None
        store = self.store
        locations = store.segments.append_batch([item.raw for _, item in batch])
        if self.owner is not None:
            # Run as root while the server serves: the workers (server.user) must be able to read the segment
            # file this process made, before any committed record points into it.
            for seg in {int.from_bytes(loc[:8], "big") for loc in locations} - self._given:
                os.chown(store.segments.path(seg), *self.owner)
                self._given.add(seg)
        now = int(time.time())
        unused: list[bytes] = []

        def op(txn: lmdb.Transaction) -> int:
            unused.clear()
            db = store.db
            ukey = self.address.encode()
            user_raw = txn.get(ukey, db=db["users"])
            if user_raw is None:
                raise MigrateError(f"user {self.address} was deleted")
            user = R.loads(user_raw)
            if user.get("quota"):  # lifted for this transaction only: no other process ever sees it
                txn.put(ukey, R.dumps(dict(user, quota=0)), db=db["users"])
            done = 0
            for (key, item), loc in zip(batch, locations, strict=True):
                mkey = mark_key(mailbox_id, key)
                if txn.get(mkey, db=db["meta"]) is not None:  # a concurrent import of the same source
                    unused.append(loc)
                    continue
                outcome = store._deliver(txn, item, loc, now)
                if outcome.no_mailbox:
                    raise MigrateError(f"mailbox {fr.name} was deleted during the import")
                txn.put(mkey, R.dumps({"v": 1, "uid": outcome.uids[self.user_id]}), db=db["meta"])
                done += 1
            if user.get("quota"):
                txn.put(ukey, user_raw, db=db["users"])
            return done

        try:
            done = int(store._writing(op))
        except BaseException as e:
            if store._uncommitted(e):  # never referenced: the next batch reuses (or fsck reclaims) the space
                store.segments.discard(locations)
            raise
        for loc in unused:
            store.segments.release(loc)
        fr.imported += done
        fr.skipped += len(batch) - done
        fr.bytes += sum(len(item.raw) for _, item in batch) - sum(_location_len(loc) for loc in unused)

    def subscribe(self, name: str, subscribed: bool) -> None:
        try:
            self.boxes.set_subscribed(self.user_id, name, subscribed)
        except MailboxError as e:
            self.report.warnings.append(f"subscription of {name!r} not set: {e.text}")

    def finish(self) -> Report:
        quota, used, count = self.boxes.quota(self.user_id)
        self.report.quota, self.report.used, self.report.messages = quota, used, count
        return self.report


def mark_key(mailbox_id: int, key: bytes) -> bytes:
    return MARK + R.U64.pack(mailbox_id) + key


def _location_len(loc: bytes) -> int:
    return int.from_bytes(loc[16:24], "big")  # segments.LOCATION: segment id, offset, length


# -- Maildir in --------------------------------------------------------------------------------------------


def split_filename(filename: str) -> tuple[str, str]:
    """(base name, the flag letters of the ":2," info; "" without one)."""
    base, sep, info = filename.rpartition(":")
    if not sep:
        return filename, ""
    return base, info[2:] if info.startswith("2,") else ""


def read_keywords(folder: Path) -> dict[str, str]:
    """Dovecot's `dovecot-keywords`: lines "N keyword", N the index of the letter a-z."""
    out: dict[str, str] = {}
    try:
        text = (folder / "dovecot-keywords").read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        num, _, word = line.partition(" ")
        if num.isdigit() and int(num) < 26 and word.strip():
            out[chr(ord("a") + int(num))] = word.strip()
    return out


def read_uidlist(folder: Path) -> dict[str, int]:
    """Base name -> UID from Dovecot's `dovecot-uidlist` (version 3: "UID [fields] :NAME"; version 1:
    "UID NAME"); empty without one."""
    out: dict[str, int] = {}
    try:
        lines = (folder / "dovecot-uidlist").read_bytes().decode("utf-8", "surrogateescape").splitlines()
    except FileNotFoundError:
        return out
    for line in lines[1:]:
        uid, _, rest = line.partition(" ")
        if not uid.isdigit():
            continue
        colon = rest.find(":")
        if colon >= 0 and (colon == 0 or rest[colon - 1] == " "):
            name = rest[colon + 1:]
        else:
            name = rest.split(" ")[-1] if rest else ""
        if name:
            out[split_filename(name)[0]] = int(uid)
    return out


def maildir_folders(root: Path, top: str | None, report: Report) -> list[tuple[str, Path]]:
    """(fastmail name, directory) of the Maildir++ tree at `root`: root itself is `top` (INBOX by default),
    root/.A.B is "A/B" (under `top` when given)."""
    if not root.is_dir():
        raise MigrateError(f"{root}: not a directory")
    if not any((root / sub).is_dir() for sub in ("cur", "new")):
        raise MigrateError(f"{root}: not a Maildir (no cur/ or new/)")
    out = [(top or "INBOX", root)]
    for entry in sorted(os.listdir(root)):
        path = root / entry
        if not entry.startswith(".") or entry in (".", "..") or not path.is_dir():
            continue
        if not any((path / sub).is_dir() for sub in ("cur", "new")):
            continue
        try:
            levels = [mutf7_decode(level.encode("ascii")) for level in entry[1:].split(".")]
        except Exception:  # not modified UTF-7 (IMAPSyntaxError): Dovecot with the UTF-8 option
            levels = [os.fsdecode(level) for level in entry[1:].split(".")]
        if any(not level for level in levels):
            report.warnings.append(f"{path}: skipped, an empty name level")
            continue
        name = DELIMITER.join(levels)
        out.append((f"{top}{DELIMITER}{name}" if top else name, path))
    return out


def maildir_sources(folder: Path) -> list[Source]:
    """The messages of one Maildir folder in the order to store them: Dovecot's UIDs, then mtime, name."""
    keywords = read_keywords(folder)
    uids = read_uidlist(folder)
    found: list[tuple[int, float, str, str, str]] = []  # (uid or big, mtime, name, sub, base)
    for sub in ("cur", "new"):
        try:
            entries = list(os.scandir(folder / sub))
        except FileNotFoundError:
            continue
        for e in entries:
            if e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                continue
            try:
                mtime = e.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            base, _ = split_filename(e.name)
            found.append((uids.get(base, 1 << 62), mtime, e.name, sub, base))
    found.sort()
    out = []
    for _, _, name, sub, base in found:
        bkey = base.encode("utf-8", "surrogateescape")
        key = b"m" + bkey if len(bkey) <= 400 else b"M" + hashlib.sha256(bkey).digest()
        out.append(Source(key, _maildir_loader(folder, sub, name, base, keywords)))
    return out


def _maildir_loader(folder: Path, sub: str, name: str,
                    base: str, keywords: dict[str, str]) -> Callable[[], tuple[bytes, list[str], int] | None]:
    def load() -> tuple[bytes, list[str], int] | None:
        path = folder / sub / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # renamed meanwhile (its flags changed): look for it by its base name
            path = next((p for s in ("cur", "new") if (folder / s).is_dir()
                         for p in (folder / s).iterdir() if split_filename(p.name)[0] == base), None)  # type: ignore[assignment]
            if path is None:
                return None
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        with os.fdopen(fd, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime
            data = f.read()
        letters = split_filename(path.name)[1]
        flags = [FLAG_OF_LETTER[c] if c in FLAG_OF_LETTER else keywords[c] for c in letters
                 if c in FLAG_OF_LETTER or c in keywords]
        return to_crlf(data), flags, int(mtime)

    return load


def read_subscriptions(root: Path) -> list[str] | None:
    """Names subscribed in Dovecot's `subscriptions` file ("/" between levels), or None without one.
    Version 2 (Dovecot 2.2+): a "V\\t2" line, an empty line, then names with TAB between levels; version 1:
    one name a line with the namespace separator "."."""
    try:
        lines = (root / "subscriptions").read_bytes().split(b"\n")
    except FileNotFoundError:
        return None
    sep = b"."
    if lines and lines[0].startswith(b"V\t"):
        sep = b"\t"
        lines = lines[1:]
    out = []
    for line in lines:
        if not line:
            continue
        levels = []
        for level in line.split(sep):
            try:
                levels.append(mutf7_decode(level))
            except Exception:
                levels.append(level.decode("utf-8", "replace"))
        out.append(DELIMITER.join(levels))
    return out


def import_maildir(store: Store, address: str, root: Path, folder: str | None = None,
                   owner: tuple[int, int] | None = None) -> Report:
    """`fastmail import maildir USER PATH [--folder NAME]`; `owner`: see Importer."""
    imp = Importer(store, address, owner)
    top = None
    if folder:
        try:
            top = check_name(folder)
        except MailboxError:
            raise MigrateError(f"{folder!r} cannot be a mailbox name") from None
    folders = maildir_folders(root, top, imp.report)
    subscribed = read_subscriptions(root)
    for name, path in folders:
        try:
            mid, fr = imp.folder(name, str(path))
        except MigrateError as e:
            if path == root:
                raise
            imp.report.warnings.append(f"{e}: folder skipped")  # e.g. a name that is not UTF-8
            continue
        imp.run(mid, maildir_sources(path), fr)
    if subscribed is not None:
        def under_top(n: str) -> str:
            if n.upper() == "INBOX":
                return top or "INBOX"
            return _norm(f"{top}{DELIMITER}{n}" if top else n)

        wanted = {under_top(n) for n in subscribed}
        names = {fr.name for fr in imp.report.folders}
        for fr in imp.report.folders:
            if fr.name != "INBOX":  # INBOX stays as it is (subscribed when the account was made)
                fr.subscribed = fr.name in wanted
                imp.subscribe(fr.name, fr.subscribed)
        for name in sorted(wanted - names - {"INBOX"}):
            imp.subscribe(name, True)  # a subscription without a folder (RFC 9051 §6.3.7 allows it)
    return imp.finish()


def _norm(name: str) -> str:
    try:
        return check_name(name)
    except MailboxError:
        return name


# -- mbox in -----------------------------------------------------------------------------------------------


def from_line_date(line: bytes) -> int | None:
    """Unix time of an mbox From_ line's date (RFC 4155: UTC unless an offset is given), or None."""
    m = FROM_DATE.search(line)
    if m is None:
        return None
    mon, day, hh, mm, ss, zone1, year, zone2 = m.groups()
    try:
        t = time.struct_time((int(year), MONTHS[mon.decode()], int(day), int(hh), int(mm), int(ss or 0), 0, 0, 0))
        ts = int(_timegm(t))
    except (ValueError, OverflowError):
        return None
    for zone in (zone1, zone2):
        if zone and zone[:1] in (b"+", b"-"):
            offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
            ts -= offset if zone[:1] == b"+" else -offset
    return ts


def _timegm(t: time.struct_time) -> float:
    import calendar

    return calendar.timegm(t)


# A quoted "From " line; the pattern starts with a literal, which Python's re scans for quickly (a "^" in
# MULTILINE mode made it try every byte: 7 s for 360 MB).  The message's first line is matched apart.
UNESCAPE = {"mboxrd": re.compile(rb"\n>(>*From )"), "mboxo": re.compile(rb"\n>(From )")}
STATE_HEADER = re.compile(rb"^(?:" + b"|".join(MBOX_STATE_HEADERS) + rb")[ \t]*:", re.M | re.I)


def is_from_line(line: bytes) -> bool:
    return line.startswith(b"From ") and FROM_DATE.search(line) is not None


def mbox_messages(data: bytes | mmap.mmap, unescape: str = "mboxrd") -> Iterator[tuple[bytes, list[str], int | None]]:
    """(message as stored, flags, date) of each message of an mbox: bare LF made CRLF, "From " lines
    unescaped, Dovecot's state headers read and taken out.  A message starts at a From_ line (RFC 4155: one
    with a date) at the start of the file or after an empty line; that empty line ends the previous message
    and is not part of it.  `unescape`: "mboxrd" takes one ">" off every line ^>+From_ (the writer added
    it), "mboxo" only off ^>From_ (an mboxo writer quotes "From " alone), "none" leaves lines alone.  The
    work is done by regular expressions over the whole (mapped) file: a line loop in Python cost 1.5 s per
    10,000 messages of 36 KB."""
    if data[:5] != b"From ":
        raise MigrateError('not an mbox file: it does not begin with a "From " line')
    pattern = UNESCAPE.get(unescape)
    start = 0  # of the current From_ line
    n = len(data)
    while start < n:
        eol = data.find(b"\n", start)
        head_end = n if eol < 0 else eol + 1
        date = from_line_date(bytes(data[start:head_end]))
        pos = head_end - 1
        while True:  # the next "\nFrom " that ends an empty line (LF or CRLF) and starts a dated From_ line
            k = data.find(b"\nFrom ", pos)
            if k < 0:
                end = nxt = n
                break
            blank = 1 if data[k - 1:k] == b"\n" else 2 if data[k - 2:k] == b"\n\r" else 0
            line_end = data.find(b"\n", k + 1)
            if blank and k - blank >= head_end - 1 and is_from_line(bytes(data[k + 1:n if line_end < 0 else line_end])):
                end, nxt = k - blank + 1, k + 1
                break
            pos = k + 1  # "From " not after an empty line, or without a date: part of the message
        body = bytes(data[head_end:end])
        if nxt == n:  # the last message: the empty line mbox writers add after it is no part of it
            body = body[:-2] if body.endswith(b"\n\r\n") else body[:-1] if body.endswith(b"\n\n") else body
        start = nxt
        if not body:
            continue
        body = to_crlf(body)
        if pattern is not None:
            if b"\n>" in body:
                body = pattern.sub(rb"\n\1", body)
            if body[:1] == b">" and pattern.match(b"\n" + body[:body.find(b"\n") + 1]):
                body = body[1:]
        flags: list[str] = []
        hend = body.find(b"\r\n\r\n")
        header = body if hend < 0 else body[:hend + 2]
        if STATE_HEADER.search(header):
            kept, flags, _ = mbox_flags(header.split(b"\r\n")[:-1])
            body = b"".join(line + b"\r\n" for line in kept) + (b"" if hend < 0 else body[hend + 2:])
        if date is None:
            date = mbox_flags(header.split(b"\r\n")[:-1])[2]
        yield body, flags, date


def mbox_flags(lines: list[bytes]) -> tuple[list[bytes], list[str], int | None]:
    """Dovecot's state headers out of the header lines: (the lines left, flags, Date: header time)."""
    flags: list[str] = []
    out: list[bytes] = []
    date: int | None = None
    i = 0
    n = len(lines)
    while i < n and lines[i]:
        j = i + 1
        while j < n and lines[j][:1] in (b" ", b"\t"):
            j += 1
        name, colon, value = lines[i].partition(b":")
        lname = name.strip().lower()
        text = b" ".join([value] + [c.strip() for c in lines[i + 1:j]]).decode("latin-1").strip()
        if colon and lname in MBOX_STATE_HEADERS:
            if lname == b"status":
                flags += [STATUS_FLAGS[c] for c in text if c in STATUS_FLAGS]
            elif lname == b"x-status":
                flags += [XSTATUS_FLAGS[c] for c in text if c in XSTATUS_FLAGS]
            elif lname == b"x-keywords":
                flags += [w for w in re.split(r"[\s,]+", text) if w]
        else:
            if colon and lname == b"date" and date is None:
                date = _header_date(text)
            out.extend(lines[i:j])
        i = j
    out.extend(lines[i:])
    return out, flags, date


def _header_date(text: str) -> int | None:
    from email.utils import parsedate_to_datetime

    try:
        return int(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def import_mbox(store: Store, address: str, path: Path, folder: str = "INBOX", unescape: str = "mboxrd",
                owner: tuple[int, int] | None = None) -> Report:
    """`fastmail import mbox USER FILE --folder NAME`; `owner`: see Importer.  The file is mapped, not read:
    an mbox may be larger than memory."""
    imp = Importer(store, address, owner)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise MigrateError(f"{path}: {e.strerror}") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise MigrateError(f"{path}: empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            messages = mbox_messages(data, unescape)
            first = next(messages, None)  # "not an mbox" before any folder is made
            mid, fr = imp.folder(folder, str(path))
            seen: dict[bytes, int] = {}
            chunk: list[Source] = []
            for raw, flags, date in itertools.chain([first] if first else [], messages):
                digest = hashlib.sha256(raw).digest()[:20]
                k = seen.get(digest, 0)
                seen[digest] = k + 1
                chunk.append(Source(b"h" + digest + k.to_bytes(4, "big"),
                                    lambda r=raw, fl=flags, d=date or 0: (r, fl, d)))  # type: ignore[misc]
                if len(chunk) >= BATCH_MESSAGES:  # never the whole file in memory
                    imp.run(mid, chunk, fr)
                    chunk = []
            if chunk:
                imp.run(mid, chunk, fr)
    return imp.finish()


# -- Maildir out -------------------------------------------------------------------------------------------


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_libc() -> Any:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.syncfs.argtypes = [ctypes.c_int]
        return lib
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


def _host() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "fastmail"


def folder_dirname(name: str) -> str:
    """The Maildir++ directory of a fastmail folder (INBOX: "", "A/B": ".A.B", levels in modified UTF-7)."""
    if name == "INBOX":
        return ""
    return "." + ".".join(mutf7_encode(level).decode("ascii") for level in name.split(DELIMITER))


def export_maildir(store: Store, address: str, root: Path) -> Report:
    """`fastmail export maildir USER PATH`: the user's folders as a Maildir++ tree Dovecot reads.  PATH must
    be missing or empty.  Every file is written in tmp/, fsynced, renamed into cur/ with its flags, and the
    directories fsynced; `dovecot-uidlist` keeps fastmail's UIDs and UIDVALIDITY, `dovecot-keywords` the
    keywords (26 per folder at most: Maildir has the letters a-z), `subscriptions` the subscriptions."""
    rec = store.get_user(address)
    if rec is None:
        raise MigrateError(f"no user {address}")
    user_id = int(rec["id"])
    report = Report(rec["address"])
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise MigrateError(f"{root}: exists and is not an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    boxes = Mailboxes(store)
    host, pid = _host(), os.getpid()
    used_dirs: dict[str, str] = {}
    subscribed: list[str] = []
    for mbox in boxes.list_all(user_id):
        name = mbox["name"]
        dirname = folder_dirname(name)
        if dirname in used_dirs:  # "a.b" and "a/b" are both .a.b in Maildir++
            k = 1
            while f"{dirname}_{k}" in used_dirs:
                k += 1
            report.warnings.append(f"{name!r} exported as {dirname}_{k}: {dirname} is {used_dirs[dirname]!r}")
            dirname = f"{dirname}_{k}"
        used_dirs[dirname] = name
        if mbox.get("subscribed"):
            subscribed.append(dirname)
        fr = FolderReport(name, str(root / dirname))
        report.folders.append(fr)
        _export_folder(boxes, mbox, root / dirname if dirname else root, bool(dirname), host, pid, fr, report)
    for mark_name, mark in boxes.marks(user_id):
        if mark.get("subscribed"):
            subscribed.append(folder_dirname(mark_name))
    lines = [b"V\t2", b""] + [("INBOX" if not d else d[1:].replace(".", "\t")).encode("ascii") for d in subscribed]
    _write_file(root / "subscriptions", b"\n".join(lines) + b"\n")
    _fsync_path(root, directory=True)
    quota, used, count = boxes.quota(user_id)
    report.quota, report.used, report.messages = quota, used, count
    return report


def _sync_files(directory: Path, files: list[Path]) -> None:
    """Make `files` (in `directory`) durable: one syncfs(2) of their file system, else an fsync each."""
    if not files:
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc is not None and _libc.syncfs(fd) == 0:
            return
    finally:
        os.close(fd)
    for f in files:
        _fsync_path(f)


def _write_file(path: Path, data: bytes, mtime: int | None = None, sync: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _export_folder(boxes: Mailboxes, mbox: dict[str, Any], path: Path, sub: bool, host: str, pid: int,
                   fr: FolderReport, report: Report) -> None:
    for d in (path, path / "tmp", path / "new", path / "cur"):
        d.mkdir(exist_ok=True)
    if sub:
        _write_file(path / "maildirfolder", b"")
    msgs = boxes.messages(mbox["id"])
    keywords: dict[str, str] = {}  # keyword -> letter
    for m in msgs:
        for f in m.flags:
            if f.startswith("\\") or f in keywords:
                continue
            if len(keywords) < 26:
                keywords[f] = chr(ord("a") + len(keywords))
            else:
                report.warnings.append(f"{mbox['name']}: keyword {f!r} dropped (Maildir has 26 keyword letters)")
                keywords[f] = ""
    if any(keywords.values()):
        _write_file(path / "dovecot-keywords",
                    "".join(f"{ord(letter) - ord('a')} {kw}\n" for kw, letter in keywords.items() if letter).encode())
    uidlist = [f"3 V{mbox['uidvalidity']} N{mbox['uidnext']}".encode()]
    fr.found = len(msgs)
    moves: list[tuple[Path, Path]] = []
    for start in range(0, len(msgs), BATCH_MESSAGES):
        part = msgs[start:start + BATCH_MESSAGES]
        where = boxes.locations([m.blob for m in part])
        for m in part:
            loc = where.get(m.blob)
            if loc is None:
                report.warnings.append(f"{mbox['name']}: message {m.uid} has no body (see fastmail fsck)")
                fr.vanished += 1
                continue
            data = boxes.read_at(loc)
            virtual = len(data) + data.count(b"\n") - data.count(b"\r\n")
            base = f"{m.internaldate}.M{m.uid}P{pid}.{host},S={len(data)},W={virtual}"
            letters = sorted({LETTER_OF_FLAG[f] for f in m.flags if f in LETTER_OF_FLAG}) \
                + sorted({keywords[f] for f in m.flags if keywords.get(f)})
            tmp = path / "tmp" / base
            _write_file(tmp, data, m.internaldate, sync=False)
            moves.append((tmp, path / "cur" / f"{base}:2,{''.join(letters)}"))
            uidlist.append(f"{m.uid} :{base}".encode())
            fr.imported += 1
            fr.bytes += len(data)
        # The batch's files durable with one syncfs (one fsync each cost ~3 ms: 10,000 messages took 35 s),
        # and only then renamed into cur/: a file in cur/ is never shorter than its message.
        _sync_files(path / "tmp", [t for t, _ in moves])
        for tmp, final in moves:
            os.rename(tmp, final)
        moves.clear()
    _write_file(path / "dovecot-uidlist", b"\n".join(uidlist) + b"\n")
    for d in (path / "cur", path / "tmp", path):
        _fsync_path(d, directory=True)

