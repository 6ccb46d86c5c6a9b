"""Record layouts of the LMDB index: keys are big-endian so one mailbox's messages form one ordered range.

Every value carries a version (first element or "v" key) so a later layout can read an older one.  The
`dump` helpers turn any record back into plain JSON for `fastmail` inspection commands.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")
MSG_KEY = struct.Struct(">QI")  # mailbox id, uid
USAGE = struct.Struct(">qq")  # bytes, messages (signed: never negative, but a bug must show, not wrap)
BLOB = struct.Struct(">QQQI")  # segment id, offset, length, references
SCHEDULE_KEY = struct.Struct(">Q12s")  # next attempt (ms), queue id
NAME_MARK = b"imap-name\0"  # + mailbox_key(user, name): a name marker in "meta" (fastmail.store.mailboxes)
MODSEQ_KEY = struct.Struct(">QQI")  # mailbox id, mod-sequence, uid: a mailbox's changes in modseq order

VERSION = 1

# Named databases inside the one LMDB environment.
DBS = (
    "meta",  # b"version", counters b"next_user", b"next_mailbox"
    "domains",  # domain -> {"v", "created"}
    "users",  # address -> {"v", "id", "address", "hash", "quota", "created"}
    "user_ids",  # user id -> address
    "aliases",  # address or "@domain" -> {"v", "targets": [...]}
    "mailboxes",  # user id | name -> mailbox id
    "mbox",  # mailbox id -> {"v", "user", "name", "uidvalidity", "uidnext", "modseq", "exists", "unseen", "size", "special", "subscribed", optional "expunges", "expunge_floor" (fastmail.store.changes: absent = not counted yet, floor 0)}
    "msgs",  # mailbox id | uid -> [v, blob id, size, internaldate, flags, modseq]
    "blobs",  # blob id -> BLOB
    "msgmeta",  # blob id -> {"v", "envelope", "body", "bodystructure", "parts"}
    "msgwire",  # blob id -> ENVELOPE, BODY, BODYSTRUCTURE as IMAP bytes (fastmail._core.fetch.wire_value)
    "usage",  # user id -> USAGE
    "queue",  # queue id -> {"v", ...envelope, per-recipient state}
    "schedule",  # SCHEDULE_KEY -> b""
    "expunged",  # mailbox id | uid -> U64 modseq of the expunge (QRESYNC VANISHED, RFC 7162 §3.2.10)
    "changes",  # U64 change number -> U64 mailbox id (fastmail.store.changes: the cross-process signal)
    "modseqs",  # MODSEQ_KEY (mailbox id, modseq, uid) -> b"" (message changed) / b"x" (expunged)
)

SPECIAL_FOLDERS = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | memoryview) -> Any:
    return orjson.loads(data)


def mailbox_key(user_id: int, name: str) -> bytes:
    return U64.pack(user_id) + name.encode()


def msg_key(mailbox_id: int, uid: int) -> bytes:
    return MSG_KEY.pack(mailbox_id, uid)


def message_record(blob_id: bytes, size: int, internaldate: int, flags: list[str], modseq: int) -> bytes:
    return orjson.dumps([VERSION, blob_id.hex(), size, internaldate, flags, modseq])


def parse_message_record(data: bytes) -> dict[str, Any]:
    v, blob, size, date, flags, modseq = orjson.loads(data)
    return {"blob": bytes.fromhex(blob), "size": size, "internaldate": date, "flags": flags, "modseq": modseq}
