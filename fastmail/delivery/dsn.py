"""Delivery status notifications (bounces): RFC 3464 multipart/report, RFC 3461 options, RFC 6522.

    multipart/report; report-type=delivery-status
      text/plain                    what happened, for a person
      message/delivery-status       per-message fields, then one block per failed recipient
      message/rfc822 | text/rfc822-headers   the original (RET=FULL, the default) or its header (RET=HDRS)

A bounce has the null reverse-path and `Auto-Submitted: auto-replied` (RFC 3834 §5), so it is never bounced
itself (the queue never makes a DSN for a message from <>): no loops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate

from fastmail._core import smtp as core_smtp

MAX_FULL = 1024 * 1024  # a larger original is returned as its header only


@dataclass
class Failure:
    recipient: str  # the address we tried (Final-Recipient)
    original: str | None  # RFC 3461 ORCPT ("rfc822;addr") or the address the client gave
    status: str  # "5.1.1"
    action: str  # "failed", "delayed", "relayed" or "delivered"
    diagnostic: str  # the remote reply ("550 5.1.1 no such user") or our own reason
    remote_mta: str = ""  # the MX host that said it
    last_attempt: float = 0.0
    retry_until: float = 0.0  # delayed: when the queue gives up (RFC 3464 §2.3.9 Will-Retry-Until)


def _header_of(raw: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = raw.find(sep)
        if i >= 0:
            return raw[: i + len(sep)]
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def _xtext(value: str) -> str:
    try:
        return core_smtp.xtext_decode(value)
    except ValueError:
        return value


def _field(value: str) -> str:
    """A header field value on one line: no CR/LF from a remote reply may start a new field."""
    return " ".join(value.replace("\r", " ").replace("\n", " ").split())


def build(
    *,
    qid: str,
    hostname: str,
    sender: str,
    original: bytes,
    failures: list[Failure],
    arrived: float,
    envid: str | None = None,
    ret: str | None = None,
    now: float | None = None,
) -> bytes:
    """The whole bounce message (CRLF lines) for `sender` about `failures` of message `qid`."""
    now = time.time() if now is None else now
    boundary = f"{qid}.{int(now)}/{hostname}"
    date = formatdate(now, localtime=False)
    delayed = all(f.action == "delayed" for f in failures)
    relayed = all(f.action in ("relayed", "delivered") for f in failures)
    delivered = all(f.action == "delivered" for f in failures)
    subject = ("Delayed Mail (still being retried)" if delayed else "Successful Mail Delivery Report" if relayed
               else "Undelivered Mail Returned to Sender")
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{qid}.{int(now * 1000)}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at host {hostname}.",
        "",
    ]
    if delayed:
        lines += ["Your message could not be delivered yet to the recipients below; it will be retried.", ""]
    elif delivered:
        lines += ["Your message was delivered to the mailboxes of the recipients below.", ""]
    elif relayed:
        lines += ["Your message was passed on to the recipients' mail servers below, which send no delivery",
                  "notifications: this is the last one you will get about it from here.", ""]
    else:
        lines += ["I'm sorry to have to inform you that your message could not be delivered to one or more",
                  "recipients. The details are below.", ""]
    for f in failures:
        where = f" (host {f.remote_mta})" if f.remote_mta else ""
        still = {"delayed": " (still trying)", "relayed": " (relayed)", "delivered": " (delivered)"}.get(f.action, "")
        lines.append(f"<{f.recipient}>{where}{still}: {_field(f.diagnostic)}")
    lines += ["", f"--{boundary}", "Content-Type: message/delivery-status", ""]
    # RFC 3464 §2.2: per-message fields
    lines.append(f"Reporting-MTA: dns; {hostname}")
    lines.append(f"X-Fastmail-Queue-ID: {qid}")
    if envid:
        lines.append(f"Original-Envelope-Id: {_field(_xtext(envid))}")  # RFC 3464 §2.2.1: decoded
    lines.append(f"Arrival-Date: {formatdate(arrived, localtime=False)}")
    for f in failures:
        # RFC 3464 §2.3: per-recipient fields, each block after an empty line
        lines.append("")
        if f.original:
            kind, sep, addr = f.original.partition(";")
            # RFC 3464 §2.3.1: ORCPT's address type and its address, xtext decoded
            lines.append(f"Original-Recipient: {kind.strip()};{_field(_xtext(addr.strip()))}" if sep
                         else f"Original-Recipient: rfc822;{f.original}")
        lines.append(f"Final-Recipient: rfc822; {f.recipient}")
        lines.append(f"Action: {f.action}")
        lines.append(f"Status: {f.status}")
        if f.remote_mta:
            lines.append(f"Remote-MTA: dns; {f.remote_mta}")
        lines.append(f"Diagnostic-Code: smtp; {_field(f.diagnostic)}")
        lines.append(f"Last-Attempt-Date: {formatdate(f.last_attempt or now, localtime=False)}")
        if f.retry_until:
            lines.append(f"Will-Retry-Until: {formatdate(f.retry_until, localtime=False)}")
    lines.append("")
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    # RFC 3461 §4.3: RET is about failure notices; a notice of success returns the header only, but for a
    # final delivery (Action: delivered) that the sender asked the full message back for (RET=FULL)
    full = ((ret or "FULL").upper() != "HDRS" and len(original) <= MAX_FULL
            and (not relayed or (delivered and (ret or "").upper() == "FULL")))
    if full:
        part = b"Content-Type: message/rfc822\r\n\r\n" + original
    else:
        part = b"Content-Type: text/rfc822-headers\r\n\r\n" + _header_of(original)
    if not part.endswith(b"\r\n"):
        part += b"\r\n"
    return head + f"--{boundary}\r\n".encode() + part + f"--{boundary}--\r\n".encode()
