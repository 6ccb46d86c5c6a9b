"""nginx's mail auth_http endpoint (ngx_mail_auth_http_module): the proxy tier asks us who a user is and
which mailbox node to connect them to (docs/scaling.md).

nginx sends one HTTP/1.0 GET per login attempt, its answer is in the headers only:

    GET /auth HTTP/1.0                      HTTP/1.0 200 OK
    Auth-Method: plain                      Auth-Status: OK
    Auth-User: alice%40example.org          Auth-Server: 10.0.0.11
    Auth-Pass: secret                       Auth-Port: 143
    Auth-Protocol: imap
    Auth-Login-Attempt: 1                   (or: Auth-Status: Invalid login or password
    Client-IP: 192.0.2.42                        Auth-Wait: 3)

Auth-User and Auth-Pass come %-escaped (nginx's NGX_ESCAPE_MAIL_AUTH).  The password is checked as every
login is (fastmail.auth, argon2id, same cost for unknown users), behind the same failed-login throttle
(fastmail.hygiene.authfail: growing delays by Client-IP and by account); failures are also counted per
Client-IP in the worker (imap.max_login_failures in 10 minutes), past which the proxy is told to close the
connection.  Without Auth-Wait nginx closes the client's connection; it is left out after
MAX_ATTEMPTS attempts in one session, as the nginx documentation asks.  Only the proxies
(cluster.proxies, or loopback when none is set) may ask: anyone else gets 403, so the endpoint is no
password oracle.  With cluster.ticket_key_file the answer carries `Auth-Pass`, a one-minute ticket nginx logs
in at the node with, so that the node checks an HMAC instead of the argon2id hash a second time.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastmail import log
from fastmail.cluster import make_ticket
from fastmail.server.session import is_loopback, peer_address

if TYPE_CHECKING:
    from fastmail.server.worker import Services

MAX_REQUEST = 8192  # bytes of request head
REQUEST_TIMEOUT = 30.0  # seconds for the whole request head
FAILURE_WAIT = 3  # Auth-Wait: seconds nginx waits before the client may try again
MAX_ATTEMPTS = 10  # Auth-Login-Attempt from which a failure ends the session (no Auth-Wait)
INVALID = "Invalid login or password"
TEMPORARY = "Temporary server problem, try again later"


def _response(status: str, extra: Mapping[str, object] | None = None, code: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.0 {code}"]
    if status:
        lines.append(f"Auth-Status: {status}")
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def parse_request(head: bytes) -> dict[str, str] | None:
    """The header fields of a request head (names lower-cased), or None when it is no GET request."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    lines = text.split("\r\n")
    request = lines[0].split(" ")
    if len(request) != 3 or request[0] != "GET" or not request[2].startswith("HTTP/1."):
        return None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        fields[name.lower()] = value.strip()
    return fields


class AuthHTTPProtocol(asyncio.Protocol):
    def __init__(self, services: Services, listener: str) -> None:
        self.services = services
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buf = b""
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None  # the answer being worked out (a reference keeps it alive)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = peer_address(transport)
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def _allowed(self) -> bool:
        services = self.services
        if services.cluster.proxies:
            return services.is_proxy(self.peer)
        return is_loopback(self.peer)

    def data_received(self, data: bytes) -> None:
        if self.busy:
            return  # one request per connection (HTTP/1.0): what follows it is ignored
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_REQUEST:
                self._send(_response("", code="431 Request Header Fields Too Large"))
            return
        self.busy = True
        if not self._allowed():
            log.event("auth_http_refused", peer=self.peer, reason="not_a_proxy")
            self._send(_response("", code="403 Forbidden"))
            return
        fields = parse_request(self.buf[:end])
        if fields is None:
            self._send(_response("", code="400 Bad Request"))
            return
        self.task = asyncio.get_running_loop().create_task(self._answer_safely(fields))

    async def _answer_safely(self, f: dict[str, str]) -> None:
        try:
            await self._answer(f)
        except Exception as e:  # e.g. the store failed: the login is refused for now, not left hanging
            log.event("auth_http_failed", level=logging.ERROR, peer=self.peer, error=repr(e))
            self._send(_response(TEMPORARY))

    async def _answer(self, f: dict[str, str]) -> None:
        services = self.services
        user = urllib.parse.unquote(f.get("auth-user", ""), errors="replace")
        password = urllib.parse.unquote(f.get("auth-pass", ""), errors="replace")
        protocol = f.get("auth-protocol", "").lower()
        client = f.get("client-ip", "") or self.peer
        try:
            attempt = int(f.get("auth-login-attempt", "1"))
        except ValueError:
            attempt = 1
        wait = {"Auth-Wait": FAILURE_WAIT} if attempt < MAX_ATTEMPTS else {}
        throttle = services.auth_http_throttle
        fields: dict[str, Any] = {"peer": self.peer, "client": client, "user": user, "protocol": protocol, "attempt": attempt}
        if f.get("auth-method", "").lower() not in ("plain", "login") or protocol not in services.cluster.ports:
            # apop and cram-md5 need the clear password on our side; we keep argon2id hashes only
            log.event("auth_http", ok=0, reason="method", method=f.get("auth-method"), **fields)
            self._send(_response(INVALID))
            return
        if throttle.blocked(client):
            log.event("auth_http", ok=0, reason="throttled", **fields)
            self._send(_response(TEMPORARY))  # no Auth-Wait: nginx closes the client's connection
            return
        # the failed-login throttle of every login (fastmail.hygiene.authfail) by the client's own address
        ok, _ = await services.authenticate(user, password, client)
        record = services.store.get_user(user) if ok else None
        if not ok or record is None:
            throttle.failed(client)
            log.event("auth_http", ok=0, reason="password", **fields)
            self._send(_response(INVALID, wait))
            return
        backend = services.cluster.backend(record, protocol)
        if backend is None:
            log.event("auth_http", ok=0, reason="no_node", node=record.get("node") or None, **fields)
            self._send(_response(TEMPORARY, wait))
            return
        address, port = backend
        log.event("auth_http", ok=1, node=services.cluster.home(record), server=address, port=port, **fields)
        answer: dict[str, object] = {"Auth-Server": address, "Auth-Port": port}
        if services.cluster.ticket_key:  # nginx logs in at the node with this instead of the password
            answer["Auth-Pass"] = make_ticket(services.cluster.ticket_key, str(record["address"]))
        self._send(_response("OK", answer))

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
