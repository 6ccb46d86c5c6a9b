"""A synchronous driver for fastmail.proto.imap in unit tests: requests are fulfilled at once, in-process."""

from __future__ import annotations

from fastmail.proto import imap as P
from fastmail.store import mime
from fastmail.store.mailboxes import Mailboxes
from fastmail.store.store import Store

PASSWORD = "secret"


class Driver:
    def __init__(self, store: Store, users: dict[str, int], **kw) -> None:
        self.store = store
        self.users = users
        self.conn = P.IMAPConnection(Mailboxes(store), kw.pop("limits", P.Limits()), **kw)
        self.closed = False
        self.tls_started = 0
        self.flushes = 0
        self.written = b""  # output taken by a Flush, as the real driver writes it then
        self.greeting = self.conn.take_output()

    def pump(self) -> None:
        conn = self.conn
        for _ in range(100_000):
            req = conn.next_request()
            if req is None:
                return
            if isinstance(req, P.Authenticate):
                uid = self.users.get(req.username.lower())
                conn.resolve((uid is not None and req.password == PASSWORD, uid))
            elif isinstance(req, P.Call):
                try:
                    result = req.fn(*req.args)
                except Exception as e:
                    conn.fail(e)
                else:
                    conn.resolve(result)
            elif isinstance(req, P.Commit):
                req.item.meta = mime.analyze(req.item.raw)
                conn.resolve(self.store.commit_batch([req.item])[0])
            elif isinstance(req, P.CommitAll):
                try:
                    result = Mailboxes(self.store).append_all(req.items)
                except Exception as e:
                    conn.fail(e)
                else:
                    conn.resolve(result)
            elif isinstance(req, P.Flush):
                self.flushes += 1
                self.written += conn.take_output()
                conn.resolve(None)
            elif isinstance(req, P.StartTLS):
                self.tls_started += 1
                conn.resolve(None)
            elif isinstance(req, P.Close):
                self.closed = True
                return
        raise AssertionError("request loop did not end")

    def send(self, data: bytes | str) -> bytes:
        if isinstance(data, str):
            data = data.encode()
        self.conn.receive(data)
        self.pump()
        out = self.written + self.conn.take_output()
        self.written = b""
        return out

    def cmd(self, line: str | bytes) -> list[bytes]:
        """Send one command line; the response lines (CRLF-split, literals inline)."""
        raw = line.encode() if isinstance(line, str) else line
        return self.send(raw + b"\r\n").split(b"\r\n")[:-1]
