"""rspamd's verdict on a message and its Bayes learning, over a minimal HTTP/1.1 client on asyncio streams.

`check()` posts the message to the normal worker's /checkv2 (the `rspamd.url` setting) with the envelope in
request headers, as rspamd's protocol documents them (https://rspamd.com/doc/developers/protocol.html):
IP (the client's address), Helo, From (MAIL FROM, "<>" for the null sender), one Rcpt per recipient, User
(the authenticated user), Queue-Id, Hostname (the client's verified reverse name) and Settings-ID (a
settings rule by id).  The reply is one JSON object; `SpamResult` keeps the action, the score and the
required score, each symbol's score, the milter block's headers to add and remove, the rewritten subject
and the messages (e.g. "smtp_message", the text rspamd suggests for a rejection).

`learn()` posts to the controller's /learnspam or /learnham (the `rspamd.controller_url` setting), with the
Password header when the controller has a password.

The HTTP/1.1 subset (RFC 9112): one request per connection ("Connection: close"; rspamd's normal worker
closes after each answer anyway, asked to keep the connection or not), the body sized by Content-Length,
written whole; the response read by status line and fields (§4, §5), its body sized by chunked transfer
coding, Content-Length or the end of the connection, in that order (§6.3), by an asyncio protocol rather
than streams (issue #7: ~130 µs less CPU per check).  No redirects, no TLS (rspamd
has none; a URL scheme other than http is a ValueError), no compression (none is asked for).

Failures that leave no verdict — no connection, no reply within `timeout`, a 5xx, a reply that is not HTTP
or not rspamd's JSON — raise FilterUnavailable (from .filters); `check()` also raises it for a 4xx, as
there is no verdict either.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from fastmail import log

from .filters import FilterUnavailable, deadline, describe

# rspamd's actions, from the mildest (https://rspamd.com/doc/faq.html#what-are-rspamd-actions)
ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")
MAX_HEAD = 64 * 1024  # status line and header fields of a response
MAX_BODY = 16 * 1024 * 1024  # a /checkv2 reply is a few KiB; this bounds a broken peer


@dataclass(frozen=True)
class SpamResult:
    action: str  # one of ACTIONS (a custom action of rspamd's configuration as it is named there)
    score: float
    required_score: float  # the score of the "reject" action
    symbols: Mapping[str, float]  # every symbol that matched -> its score (0.0 for informational ones)
    messages: Mapping[str, str] = field(default_factory=dict)  # e.g. "smtp_message" -> "Gtube pattern"
    subject: str | None = None  # the new Subject of "rewrite subject"
    add_headers: Mapping[str, str] = field(default_factory=dict)  # name -> value to add (see _added_headers)
    remove_headers: Mapping[str, int] = field(default_factory=dict)  # name -> instance: 0 all, n the nth, -n from the end


@dataclass(frozen=True)
class _Response:
    status: int
    reason: str
    fields: Mapping[str, str]  # lower-case names; a repeated field's values joined by ", " (RFC 9110 §5.3)
    body: bytes


async def check(url: str, message: bytes, *, timeout: float, ip: str | None = None, helo: str | None = None,
                mail_from: str | None = None, rcpts: Sequence[str] = (), user: str | None = None,
                queue_id: str | None = None, hostname: str | None = None,
                settings_id: str | None = None) -> SpamResult:
    """rspamd's verdict on `message` (RFC 5322 bytes, as received) from the normal worker at `url`.

    `mail_from` "" is the null reverse-path (sent as "<>"); None leaves a header out.  ValueError for a
    value that cannot be a header field value (CR, LF, NUL) and for a URL that is not http://HOST[:PORT].
    """
    envelope = [("IP", ip), ("Helo", helo), ("From", "<>" if mail_from == "" else mail_from),
                *(("Rcpt", r) for r in rcpts), ("User", user), ("Queue-Id", queue_id),
                ("Hostname", hostname), ("Settings-ID", settings_id)]
    headers = [(name, value) for name, value in envelope if value is not None]
    response = await _post(url, "checkv2", headers, message, timeout)
    if response.status != 200:
        raise FilterUnavailable(f"rspamd at {url}: {_status_text(response)}")
    return parse_result(response.body, f"rspamd at {url}")


async def learn(controller_url: str, message: bytes, *, spam: bool, password: str = "", timeout: float) -> bool:
    """Teach rspamd's Bayes classifier that `message` is spam (or ham); True when it learned it or had
    already learned it, False when the controller refused (wrong password, too few tokens, ...: logged)."""
    headers = [("Password", password)] if password else []
    response = await _post(controller_url, f"learn{_what(spam)}", headers, message, timeout)
    text = _status_text(response)
    if response.status >= 500:
        raise FilterUnavailable(f"rspamd controller at {controller_url}: {text}")
    if response.status == 208 or (response.status < 300 and _json(response.body).get("success") is True):
        return True
    if "already learned" in text:  # rspamd 3.4 says so with a 404 (later versions with 208)
        return True
    log.event("rspamd_learn_refused", logging.WARNING, controller=controller_url, learn_as=_what(spam),
              error=text)
    return False


def _what(spam: bool) -> str:
    return "spam" if spam else "ham"


def parse_result(body: bytes, what: str = "rspamd") -> SpamResult:
    """A /checkv2 reply's JSON as a SpamResult; FilterUnavailable for anything else."""
    reply = _json(body)
    try:
        milter = reply.get("milter") or {}
        return SpamResult(
            action=str(reply["action"]),
            score=float(reply["score"]),
            required_score=float(reply["required_score"]),
            symbols={str(name): float(sym.get("score", 0.0)) for name, sym in (reply.get("symbols") or {}).items()},
            messages={str(k): str(v) for k, v in (reply.get("messages") or {}).items()},
            subject=str(reply["subject"]) if "subject" in reply else None,
            add_headers=_added_headers(milter.get("add_headers") or {}),
            remove_headers={str(k): int(v) for k, v in (milter.get("remove_headers") or {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        error = reply.get("error")
        raise FilterUnavailable(f"{what}: {error or f'not a verdict ({type(e).__name__}: {e})'}") from None


def _added_headers(add: Mapping[str, Any]) -> dict[str, str]:
    """milter.add_headers: name -> "value", {"value": ..., "order": n} or a list of these (a field rspamd adds
    more than once: its values joined by ", ").  A value is as rspamd wrote it, possibly folded (CRLF TAB,
    e.g. X-Spamd-Result)."""
    out: dict[str, str] = {}
    for name, spec in add.items():
        values = [str(one["value"] if isinstance(one, dict) else one) for one in
                  (spec if isinstance(spec, list) else [spec])]
        out[str(name)] = ", ".join(values)
    return out


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {}


def _status_text(response: _Response) -> str:
    error = _json(response.body).get("error")
    return f"HTTP {response.status} {response.reason}" + (f": {error}" if error else "")


# -- HTTP/1.1 ------------------------------------------------------------------------------------------


def split_url(url: str) -> tuple[str, int, str]:
    """http://HOST[:PORT][/PREFIX] -> (host, port, "/PREFIX/"); ValueError for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"rspamd URL {url!r}: not http://HOST[:PORT]")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/") + "/"


def request_head(host: str, port: int, path: str, headers: Sequence[tuple[str, str]], length: int) -> bytes:
    """A POST request's head (RFC 9112 §3, §5): request line, Host, Connection: close, Content-Length."""
    host_field = f"[{host}]" if ":" in host else host
    lines = [f"POST {path} HTTP/1.1", f"Host: {host_field}:{port}", "Connection: close",
             f"Content-Length: {length}"]
    for name, value in headers:
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"{name} header value {value!r}: CR, LF and NUL cannot be sent")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Status line (RFC 9112 §4) and header fields (§5) of a response head ending in CRLF CRLF; ValueError
    when it is not one."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"not a header field: {line[:100]!r}")
        key = name.lower()
        fields[key] = f"{fields[key]}, {value.strip()}" if key in fields else value.strip()
    return int(code), reason, fields


async def _post(url: str, endpoint: str, headers: Sequence[tuple[str, str]], body: bytes,
                timeout: float) -> _Response:
    host, port, prefix = split_url(url)
    request = request_head(host, port, prefix + endpoint, headers, len(body)) + body
    what = f"rspamd at {url}"
    loop = asyncio.get_running_loop()
    async with deadline(timeout, what):
        done: asyncio.Future[_Response] = loop.create_future()
        try:
            transport, _ = await loop.create_connection(lambda: _Exchange(request, done), host, port)
        except OSError as e:
            raise FilterUnavailable(f"{what}: {describe(e)}") from None
        try:
            return await done
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            raise FilterUnavailable(f"{what}: not an HTTP response ({type(e).__name__}: {e})") from None
        except OSError as e:
            raise FilterUnavailable(f"{what}: {describe(e)}") from None
        finally:
            transport.abort()  # the response is read (or will not be): nothing left to flush


class _Exchange(asyncio.Protocol):
    """One request written whole, one response read by parse_response() as it comes in: an asyncio protocol
    rather than streams (StreamReader/StreamWriter add a layer of Python per read and write; rspamd answers
    one request per connection, "Connection: close" — its normal worker does not keep connections alive)."""

    def __init__(self, request: bytes, done: asyncio.Future[_Response]) -> None:
        self._request = request
        self._done = done
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses: no isinstance check here)
        cast(asyncio.WriteTransport, transport).write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._answer(eof=False)

    def eof_received(self) -> bool:
        self._answer(eof=True)
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            if exc is not None:
                self._done.set_exception(exc)
            else:
                self._answer(eof=True)

    def _answer(self, eof: bool) -> None:
        if self._done.done():
            return
        try:
            response = parse_response(self._buffer, eof=eof)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            self._done.set_exception(e)
            return
        if response is not None:
            self._done.set_result(response)


def parse_response(data: bytes | bytearray, *, eof: bool) -> _Response | None:
    """The response in `data` (RFC 9112): status line and fields (§4, §5), the body sized by chunked
    transfer coding, Content-Length or the end of the connection, in that order (§6.3).  None: more is
    needed; at `eof`, a response cut short raises IncompleteReadError.  ValueError (LimitOverrunError for a
    head over MAX_HEAD) for what is not a response."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise asyncio.LimitOverrunError("no end of the response head within the limit", len(data))
        if eof:
            raise asyncio.IncompleteReadError(bytes(data), None)
        return None
    if end + 4 > MAX_HEAD:
        raise asyncio.LimitOverrunError("no end of the response head within the limit", end)
    status, reason, fields = parse_head(bytes(data[:end + 4]))
    start = end + 4
    if "transfer-encoding" in fields:
        if fields["transfer-encoding"].lower().rpartition(",")[2].strip() != "chunked":
            raise ValueError(f"transfer coding {fields['transfer-encoding']!r}")
        body = _chunked(data, start, eof)
    elif "content-length" in fields:
        length = int(fields["content-length"])
        if not 0 <= length <= MAX_BODY:
            raise ValueError(f"Content-Length {length}")
        if len(data) - start < length:
            if eof:
                raise asyncio.IncompleteReadError(bytes(data[start:]), length)
            return None
        body = bytes(data[start:start + length])
    else:  # up to the end of the connection
        if len(data) - start > MAX_BODY:
            raise ValueError(f"a body over {MAX_BODY} bytes")
        body = bytes(data[start:]) if eof else None
    return None if body is None else _Response(status, reason, fields, body)


def _chunked(data: bytes | bytearray, i: int, eof: bool) -> bytes | None:
    """chunked-body (RFC 9112 §7.1) from offset `i`: chunk-size [chunk-ext] CRLF chunk-data CRLF ...
    last-chunk trailer-section CRLF; None when it is not all there yet."""
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n", i)
        if line_end < 0:
            _more(data, i, eof)
            return None
        size = int(bytes(data[i:line_end]).split(b";", 1)[0].strip(), 16)  # extensions ignored (§7.1.1)
        i = line_end + 2
        if size == 0:
            break
        if size < 0 or len(body) + size > MAX_BODY:
            raise ValueError(f"chunk of {size} bytes")
        if len(data) < i + size + 2:
            _more(data, i, eof, size + 2)
            return None
        body += data[i:i + size]
        if data[i + size:i + size + 2] != b"\r\n":
            raise ValueError("chunk-data not followed by CRLF")
        i += size + 2
    while True:  # trailer fields (§7.1.2), not needed here, up to the empty line
        line_end = data.find(b"\r\n", i)
        if line_end < 0:
            _more(data, i, eof)
            return None
        if line_end == i:
            return bytes(body)
        i = line_end + 2


def _more(data: bytes | bytearray, i: int, eof: bool, expected: int | None = None) -> None:
    """More is needed: at the end of the connection, that is a response cut short."""
    if eof:
        raise asyncio.IncompleteReadError(bytes(data[i:]), expected)
    return None
