"""fastmail.hygiene.clamd and fastmail.hygiene.rspamd against the real services (tests/integration/filters.py
starts private instances of Debian's clamd and rspamd), plus the failure modes a real service will not
produce on demand (a silent peer, a garbled reply, a chunked response, a 5xx) against small fake peers."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fastmail.hygiene import clamd, dkim, rspamd
from fastmail.hygiene.filters import FilterUnavailable
from tests.integration.dnsserver import LocalDNS
from tests.integration.filters import (
    CONTROLLER_PASSWORD,
    EICAR,
    EICAR_SIGNATURE,
    GTUBE,
    REWRITE_SETTINGS_ID,
    Clamd,
    Rspamd,
    free_port,
)

pytest_plugins = ("tests.integration.filters",)
pytestmark = pytest.mark.integration
T = TypeVar("T")

CLIENT_IP = "192.0.2.25"  # mx.example.com, the SPF-authorized sender of example.com in the test zone


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main(), debug=True)


def message(body: bytes = b"Hello Bob,\r\nshall we have lunch tomorrow at noon? The usual place is fine.\r\n",
            *, subject: str = "lunch tomorrow", extra: bytes = b"") -> bytes:
    return (
        b"From: Alice <alice@example.com>\r\n"
        b"To: Bob <bob@example.org>\r\n"
        + f"Subject: {subject}\r\n".encode()
        + f"Date: {email.utils.formatdate(localtime=False)}\r\n".encode()
        + f"Message-ID: <{time.monotonic_ns()}@example.com>\r\n".encode()
        + b"MIME-Version: 1.0\r\n"
        + extra
        + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + body
    )


def with_attachment(payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        b"From: Alice <alice@example.com>\r\nTo: Bob <bob@example.org>\r\nSubject: the file\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
        b"--b1\r\nContent-Type: application/octet-stream; name=\"tool.com\"\r\n"
        b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"tool.com\"\r\n\r\n"
        + encoded + b"--b1--\r\n"
    )


# -- clamd, real -----------------------------------------------------------------------------------------


@pytest.fixture(params=["unix", "tcp"])
def clamd_address(request: pytest.FixtureRequest, clamd_service: Clamd) -> str:
    return clamd_service.unix_address if request.param == "unix" else clamd_service.tcp_address


def test_eicar_attachment_is_infected(clamd_address: str) -> None:
    msg = with_attachment(EICAR)
    assert EICAR not in msg  # only clamd's MIME decoding can find it
    result = run(clamd.scan(clamd_address, msg, timeout=10))
    assert result.infected
    # clamd marks a signature from outside ClamAV's own databases with ".UNOFFICIAL"
    assert result.signature == f"{EICAR_SIGNATURE}.UNOFFICIAL"


def test_clean_message_is_ok(clamd_address: str) -> None:
    assert run(clamd.scan(clamd_address, with_attachment(b"just some bytes\x00\x01" * 100), timeout=10)) == \
        clamd.ScanResult(infected=False, signature=None)
    assert not run(clamd.scan(clamd_address, b"", timeout=10)).infected  # an empty stream: only the end chunk


def test_message_of_many_chunks(clamd_address: str, clamd_service: Clamd) -> None:
    # just under StreamMaxLength, in 4 KiB chunks, with EICAR at the end (base64 lines: 78 bytes per 57)
    payload = (clamd_service.stream_max - 1000) * 57 // 78 - len(EICAR)
    big = with_attachment(b"A" * payload + EICAR)
    assert clamd_service.stream_max - 1000 < len(big) <= clamd_service.stream_max
    result = run(clamd.scan(clamd_address, big, timeout=20, chunk_size=4096))
    assert result.infected and result.signature and result.signature.startswith(EICAR_SIGNATURE)


def test_over_stream_max_length(clamd_address: str, clamd_service: Clamd) -> None:
    for size in (clamd_service.stream_max + 1, 20 * clamd_service.stream_max):
        t0 = time.monotonic()
        with pytest.raises(FilterUnavailable, match=r"INSTREAM size limit exceeded"):
            run(clamd.scan(clamd_address, b"x" * size, timeout=20))
        # clamd's early answer ends the upload: 20 MiB are not all sent
        assert time.monotonic() - t0 < 5


def test_max_length_refuses_before_connecting() -> None:
    with pytest.raises(FilterUnavailable, match=r"message of 11 bytes is over its StreamMaxLength of 10"):
        run(clamd.scan("unix:/nonexistent/clamd.sock", b"x" * 11, timeout=5, max_length=10))


def test_clamd_down(tmp_path: Path) -> None:
    with pytest.raises(FilterUnavailable, match=r"clamd at unix:.*: No such file or directory"):
        run(clamd.scan(f"unix:{tmp_path}/clamd.sock", b"x", timeout=5))
    with pytest.raises(FilterUnavailable, match=r"clamd at 127\.0\.0\.1:\d+: Connection refused"):
        run(clamd.scan(f"127.0.0.1:{free_port()}", b"x", timeout=5))
    with pytest.raises(ValueError):
        clamd.parse_address("localhost")


def test_clamd_address_forms() -> None:
    assert clamd.parse_address("unix:/run/clamav/clamd.ctl") == "/run/clamav/clamd.ctl"
    assert clamd.parse_address("127.0.0.1:3310") == ("127.0.0.1", 3310)
    assert clamd.parse_address("[::1]:3310") == ("::1", 3310)
    for bad in ("unix:", "host", "host:", ":3310", "host:0", "host:65536", "host:x"):
        with pytest.raises(ValueError):
            clamd.parse_address(bad)


def test_clamd_replies() -> None:
    assert clamd.parse_reply(b"stream: OK\0") == clamd.ScanResult(False)
    assert clamd.parse_reply(b"stream: Win.Test.EICAR_HDB-1 FOUND\0") == \
        clamd.ScanResult(True, "Win.Test.EICAR_HDB-1")
    with pytest.raises(FilterUnavailable, match=r"^clamd: INSTREAM size limit exceeded\.$"):
        clamd.parse_reply(b"INSTREAM size limit exceeded. ERROR\0")
    for junk in (b"", b"PONG\0", b"stream: \0", b"stream: OK FOUND ERRORS\0"):
        with pytest.raises(FilterUnavailable, match="not a verdict"):
            clamd.parse_reply(junk)


# -- fake peers ------------------------------------------------------------------------------------------


def with_peer(answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
              client: Callable[[str], Awaitable[T]]) -> T:
    """Run `client("127.0.0.1:PORT")` against a one-shot TCP server whose connections `answer` handles."""

    async def main() -> T:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await answer(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await client(f"127.0.0.1:{port}")
        finally:
            server.close()

    return asyncio.run(main(), debug=True)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


def replying(data: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(data)
        await writer.drain()

    return answer


def test_clamd_silent_is_a_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(FilterUnavailable, match=r"clamd at 127\.0\.0\.1:\d+: no answer within 0\.3 s"):
        with_peer(silent, lambda a: clamd.scan(a, b"x" * 100_000, timeout=0.3))
    assert time.monotonic() - t0 < 3


def test_clamd_garbled_or_no_reply() -> None:
    with pytest.raises(FilterUnavailable, match=r"not a verdict: 'HTTP/1\.0 400 Bad request'"):
        with_peer(replying(b"HTTP/1.0 400 Bad request\r\n\r\n"), lambda a: clamd.scan(a, b"x", timeout=5))
    with pytest.raises(FilterUnavailable, match=r"connection closed without a verdict"):
        with_peer(replying(b""), lambda a: clamd.scan(a, b"x", timeout=5))


def test_rspamd_silent_is_a_timeout() -> None:
    with pytest.raises(FilterUnavailable, match=r"no answer within 0\.3 s"):
        with_peer(silent, lambda a: rspamd.check(f"http://{a}", b"x", timeout=0.3))


VERDICT = (b'{"action":"add header","score":7.5,"required_score":15.0,"symbols":{"A":{"name":"A","score":7.5}},'
           b'"messages":{},"milter":{"add_headers":{"X-Spam":{"value":"Yes","order":0},'
           b'"X-Two":[{"value":"1","order":0},{"value":"2","order":1}],"X-Plain":"p"},'
           b'"remove_headers":{"X-Old":1}}}')


def test_rspamd_chunked_response_and_request_transcript() -> None:
    seen: list[bytes] = []
    chunks = [VERDICT[:10], VERDICT[10:100], VERDICT[100:]]
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        seen.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
                     + chunked)
        await writer.drain()

    result = with_peer(answer, lambda a: rspamd.check(
        f"http://{a}/prefix/", b"the message", timeout=5, ip="192.0.2.1", helo="mx.example.com", mail_from="",
        rcpts=["a@example.org", "b@example.org"], user="alice", queue_id="Q1", hostname="mx.example.com",
        settings_id="s1"))
    assert result == rspamd.SpamResult(
        action="add header", score=7.5, required_score=15.0, symbols={"A": 7.5}, messages={}, subject=None,
        add_headers={"X-Spam": "Yes", "X-Two": "1, 2", "X-Plain": "p"},
        remove_headers={"X-Old": 1})
    port = re.search(rb"Host: 127\.0\.0\.1:(\d+)", seen[0]).group(1)  # type: ignore[union-attr]
    assert seen == [
        b"POST /prefix/checkv2 HTTP/1.1\r\nHost: 127.0.0.1:" + port + b"\r\nConnection: close\r\n"
        b"Content-Length: 11\r\nIP: 192.0.2.1\r\nHelo: mx.example.com\r\nFrom: <>\r\n"
        b"Rcpt: a@example.org\r\nRcpt: b@example.org\r\nUser: alice\r\nQueue-Id: Q1\r\n"
        b"Hostname: mx.example.com\r\nSettings-ID: s1\r\n\r\nthe message"
    ]


def test_rspamd_client_on_uvloop() -> None:
    """The server's loop is uvloop, whose transports are not asyncio's classes: the same exchange there."""
    import uvloop

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1)))  # type: ignore[union-attr]
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(VERDICT) + VERDICT)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> rspamd.SpamResult:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await rspamd.check(f"http://127.0.0.1:{port}", b"the message", timeout=5)
        finally:
            server.close()
            await server.wait_closed()

    assert uvloop.run(main()).action == "add header"


@pytest.mark.parametrize(("reply", "match"), [
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 22\r\n\r\n{\"error\":\"lua failed\"}",
     r"HTTP 500 Internal Server Error: lua failed"),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", r"HTTP 400 Bad Request$"),
    (b"HTTP/1.1 200 OK\r\n\r\n{\"error\":\"no action here\"}", r"no action here"),  # body up to EOF
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnope!", r"not a verdict"),
    (b"SMTP 220 hello\r\n\r\n", r"not an HTTP response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", r"not an HTTP response \(IncompleteReadError"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", r"transfer coding 'gzip'"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", r"not an HTTP response \(ValueError"),
])
def test_rspamd_bad_replies(reply: bytes, match: str) -> None:
    with pytest.raises(FilterUnavailable, match=match):
        with_peer(replying(reply), lambda a: rspamd.check(f"http://{a}", b"x", timeout=5))


def test_rspamd_refuses_what_it_cannot_send() -> None:
    with pytest.raises(ValueError, match="CR, LF and NUL"):
        run(rspamd.check("http://127.0.0.1:1", b"x", timeout=5, helo="a\r\nUser: admin"))
    for url in ("https://127.0.0.1:11333", "127.0.0.1:11333", "http://"):
        with pytest.raises(ValueError, match="not http://HOST"):
            run(rspamd.check(url, b"x", timeout=5))


# -- rspamd, real ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zone(filter_dns: LocalDNS) -> Iterator[LocalDNS]:
    """example.com as a well-kept sending domain: MX, SPF for CLIENT_IP, DMARC p=none."""
    filter_dns.set("example.com", ("MX", (10, "mx.example.com.")), ("A", CLIENT_IP),
                   ("TXT", f"v=spf1 ip4:{CLIENT_IP} -all"))
    filter_dns.set("mx.example.com", ("A", CLIENT_IP))
    filter_dns.set("25.2.0.192.in-addr.arpa", ("PTR", "mx.example.com."))
    filter_dns.set("_dmarc.example.com", ("TXT", "v=DMARC1; p=none"))
    filter_dns.set("example.org", ("MX", (10, "mx.example.org.")))
    filter_dns.set("mx.example.org", ("A", "192.0.2.26"))
    yield filter_dns


ENVELOPE: dict[str, Any] = {"ip": CLIENT_IP, "helo": "mx.example.com", "mail_from": "alice@example.com",
                            "rcpts": ["bob@example.org"], "hostname": "mx.example.com"}


def test_gtube_is_rejected(rspamd_service: Rspamd, zone: LocalDNS) -> None:
    result = run(rspamd.check(rspamd_service.url, message(b"Buy now!\r\n" + GTUBE + b"\r\n"), timeout=10,
                              **ENVELOPE))
    assert result.action == "reject"
    assert "GTUBE" in result.symbols
    assert result.score >= result.required_score == 15.0
    assert result.messages == {"smtp_message": "Gtube pattern"}


def test_clean_message(rspamd_service: Rspamd, zone: LocalDNS) -> None:
    result = run(rspamd.check(rspamd_service.url, message(), timeout=10, queue_id="4Qclean1", **ENVELOPE))
    assert result.action == "no action", result
    assert result.score < 4.0 and result.required_score == 15.0
    # the envelope arrived: SPF of MAIL FROM for IP passed, DMARC aligned, the header From matched MAIL FROM
    assert {"R_SPF_ALLOW", "DMARC_POLICY_ALLOW", "FROM_EQ_ENVFROM", "RCPT_COUNT_ONE"} <= set(result.symbols)
    assert result.symbols["R_SPF_ALLOW"] < 0
    assert result.add_headers["X-Spam-Status"] == f"No, score={result.score:.2f}"
    assert result.add_headers["X-Spamd-Result"].startswith(f"default: False [{result.score:.2f} / 15.00];\r\n\t")
    assert set(result.remove_headers) == {"X-Spam", "X-Spam-Status", "X-Spamd-Result"}
    assert "qid: <4Qclean1>" in rspamd_service.log.read_text()


def test_authenticated_user_and_recipients(rspamd_service: Rspamd, zone: LocalDNS) -> None:
    envelope = {**ENVELOPE, "rcpts": ["bob@example.org", "carol@example.org"]}
    result = run(rspamd.check(rspamd_service.url, message(), timeout=10, user="alice@example.com",
                              queue_id="4Qauth1", **envelope))
    assert result.action == "no action"
    assert "R_SPF_ALLOW" not in result.symbols  # rspamd skips SPF for an authenticated sender
    assert re.search(r"qid: <4Qauth1>, ip: 192\.0\.2\.25, user: alice@example\.com, from: <alice@example\.com>",
                     rspamd_service.log.read_text())
    assert "rcpts: <bob@example.org,carol@example.org>" in rspamd_service.log.read_text()


def test_settings_id_rewrites_subject(rspamd_service: Rspamd, zone: LocalDNS) -> None:
    result = run(rspamd.check(rspamd_service.url, message(), timeout=10, settings_id=REWRITE_SETTINGS_ID,
                              **ENVELOPE))
    assert result.action == "rewrite subject"
    assert result.subject == "***SPAM*** lunch tomorrow"


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa-sha256"])
def test_dkim_signature_verified_by_rspamd(rspamd_service: Rspamd, zone: LocalDNS, algorithm: str) -> None:
    selector = f"s{algorithm[:3]}{time.monotonic_ns()}"  # new every run: rspamd caches keys
    pem, record = dkim.keygen("example.com", selector, algorithm)  # type: ignore[arg-type]
    name, _, rest = record.partition(" IN TXT ")
    zone.set(name.rstrip("."), ("TXT", re.findall(r'"([^"]*)"', rest)))
    msg = message()
    signed = dkim.sign(msg, domain="example.com", selector=selector, private_key_pem=pem,
                       algorithm=algorithm) + msg  # type: ignore[arg-type]
    result = run(rspamd.check(rspamd_service.url, signed, timeout=10, **ENVELOPE))
    assert "R_DKIM_ALLOW" in result.symbols, result.symbols
    assert "R_DKIM_REJECT" not in result.symbols
    # and a body changed after signing is caught
    result = run(rspamd.check(rspamd_service.url, signed.replace(b"noon", b"one"), timeout=10, **ENVELOPE))
    assert "R_DKIM_REJECT" in result.symbols and "R_DKIM_ALLOW" not in result.symbols


def test_rspamd_down() -> None:
    with pytest.raises(FilterUnavailable, match=r"rspamd at http://127\.0\.0\.1:\d+: Connection refused"):
        run(rspamd.check(f"http://127.0.0.1:{free_port()}", message(), timeout=5))
    with pytest.raises(FilterUnavailable, match=r"Connection refused"):
        run(rspamd.learn(f"http://127.0.0.1:{free_port()}", message(), spam=True, timeout=5))


SPAM_WORDS = (b"Congratulations dear customer, you have been selected as the lucky winner of our grand "
              b"international lottery prize draw. Send your bank account details and a small processing fee "
              b"today to claim the money before the offer expires.\r\n")


def test_learn(rspamd_service: Rspamd) -> None:
    url = rspamd_service.controller_url
    spam = message(SPAM_WORDS, subject="You have won")
    assert run(rspamd.learn(url, spam, spam=True, password=CONTROLLER_PASSWORD, timeout=10)) is True
    # the same message again: rspamd 3.4 answers 404 "... has been already learned as spam, ignore it"
    assert run(rspamd.learn(url, spam, spam=True, password=CONTROLLER_PASSWORD, timeout=10)) is True
    # relearned as ham (the user took it out of Junk)
    assert run(rspamd.learn(url, spam, spam=False, password=CONTROLLER_PASSWORD, timeout=10)) is True
    # no password: 401 Unauthorized
    assert run(rspamd.learn(url, message(SPAM_WORDS), spam=True, timeout=10)) is False
    # too few words for the classifier (min_tokens): refused, not an outage
    assert run(rspamd.learn(url, message(b"hi\r\n"), spam=True, password=CONTROLLER_PASSWORD, timeout=10)) is False
    log = rspamd_service.log.read_text()
    mid = re.search(rb"Message-ID: <([^>]+)>", spam).group(1).decode()  # type: ignore[union-attr]
    assert f"learned message as spam: {mid}" in log and f"learned message as ham: {mid}" in log
    assert "contains less tokens than required for bayes classifier" in log


def test_services_start_fast_enough(clamd_service: Clamd, rspamd_service: Rspamd) -> None:
    """Not a benchmark: prints the fixtures' start-up times (pytest -s) and bounds them loosely."""
    print(f"\nclamd started in {clamd_service.started_in:.2f} s, rspamd in {rspamd_service.started_in:.2f} s")
    assert clamd_service.started_in < 60 and rspamd_service.started_in < 180

