"""aiosmtpd on uvloop, delivering each message to a Maildir durably before it answers 250.

    python -m bench.peers.aiosmtpd_maildir --port P --maildir DIR --recipient bench@example.org

One process, one event loop (aiosmtpd has no pre-fork or multi-process mode).  A message is delivered the
Maildir way: written to tmp/<unique>, fsync'ed, renamed into new/, and new/ fsync'ed -- only then is 250
sent.  The blocking file work runs in a thread pool (--threads, default 16) so the loop keeps serving other
sessions while a message waits for the disk, and concurrent fsyncs can share a journal commit; --threads 0
does it inline in the loop (every session then waits for every fsync).  Unknown recipients get 550.
SIGTERM/SIGINT: stop listening, let deliveries in flight finish, print "accepted=N", exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirHandler:
    def __init__(self, maildir: Path, recipients: set[str], threads: int) -> None:
        self.tmp, self.new = maildir / "tmp", maildir / "new"
        for d in (self.tmp, self.new, maildir / "cur"):
            d.mkdir(parents=True, exist_ok=True)
        self.new_fd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY)
        self.recipients = recipients
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="deliver") if threads > 0 else None
        self.seq = itertools.count()
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")
        self.accepted = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower() not in self.recipients:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _deliver(self, rcpt: str, sender: str, content: bytes) -> None:
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(self.seq)}.{self.host}"
        tmp = self.tmp / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            data = memoryview(f"Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n".encode() + content)
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.new / name)
        os.fsync(self.new_fd)  # the rename is durable too

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        sender = envelope.mail_from or ""
        try:
            for rcpt in envelope.rcpt_tos:
                if self.pool is None:
                    self._deliver(rcpt, sender, content)
                else:
                    await asyncio.get_running_loop().run_in_executor(self.pool, self._deliver, rcpt, sender, content)
        except OSError:
            return "451 4.3.0 Error writing the message"
        self.accepted += len(envelope.rcpt_tos)
        return "250 2.0.0 OK delivered"


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    handler = MaildirHandler(args.maildir, {r.lower() for r in args.recipient}, args.threads)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.bench.test", decode_data=False, ident="aiosmtpd-bench"),
        args.host, args.port, backlog=args.backlog, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {args.host}:{args.port} threads={args.threads}", flush=True)
    await stop.wait()
    server.close()
    if handler.pool is not None:
        await loop.run_in_executor(None, handler.pool.shutdown, True)
    print(f"accepted={handler.accepted}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.aiosmtpd_maildir", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--maildir", type=Path, required=True)
    p.add_argument("--recipient", action="append", required=True, help="an address that receives (repeatable)")
    p.add_argument("--threads", type=int, default=16, help="delivery threads; 0 = inline in the loop")
    p.add_argument("--backlog", type=int, default=1024)
    args = p.parse_args(argv)
    result: Any = uvloop.run(serve(args))
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
