"""Golden transcript: the MIME corpus (tests/corpus/mime/*.eml: nested multiparts, encoded words, RFC 2231
attachments, message/rfc822 and message/global, 8-bit and broken headers) delivered into one mailbox, then
FETCH ENVELOPE / BODY / BODYSTRUCTURE through the IMAP state machine, compared byte for byte with
tests/corpus/imap/fetch-structure.golden.

The expected file is the reviewed analyze() output of each message (tests/corpus/mime/*.json) in wire form;
regenerate with FASTMAIL_REGEN_GOLDEN=1 and read the diff before committing it."""

from __future__ import annotations

import os
from pathlib import Path

from fastmail.store import mime
from fastmail.store.store import Incoming, Store, new_qid

from .imap_driver import PASSWORD, Driver

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
GOLDEN = CORPUS / "imap" / "fetch-structure.golden"


def test_fetch_structure_matches_the_golden_transcript(tmp_path):
    store = Store(tmp_path / "data", map_size=1 << 26)
    try:
        store.add_domain("example.org")
        user = store.add_user("g@example.org", "h")
        for path in sorted((CORPUS / "mime").glob("*.eml")):
            raw = path.read_bytes()
            store.commit_batch([Incoming(qid=new_qid(), raw=raw, sender="", local=[user], meta=mime.analyze(raw),
                                         internaldate=1_700_000_000)])
        d = Driver(store, {"g@example.org": user})
        d.cmd(f"l LOGIN g@example.org {PASSWORD}")
        d.cmd("s EXAMINE INBOX")
        got = d.send(b"f FETCH 1:* (UID RFC822.SIZE INTERNALDATE ENVELOPE BODY BODYSTRUCTURE)\r\n")
        names = "".join(f"{i} {p.name}\n" for i, p in enumerate(sorted((CORPUS / "mime").glob("*.eml")), 1))
        got = names.encode() + b"\n" + got
        if os.environ.get("FASTMAIL_REGEN_GOLDEN"):
            GOLDEN.write_bytes(got)
        assert got == GOLDEN.read_bytes()
    finally:
        store.close()
