"""Micro-benchmarks of the Cython core parsers, compiled vs pure-Python twin (same source).

Run: pytest bench/ --benchmark-only     (throughput is printed at the end of the run)
"""

from __future__ import annotations

import base64
import random

import pytest

from fastmail._core import variants

IMPLS = ["compiled", "pure"]

# A day's worth of an MX's command mix (the DATA content itself is benchmarked separately).
COMMANDS = [
    b"EHLO mail.sender.example",
    b"MAIL FROM:<john.smith@sender.example> SIZE=12345 BODY=8BITMIME",
    b"RCPT TO:<jane.doe@receiver.example>",
    b"RCPT TO:<info@receiver.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;info@receiver.example",
    b"RCPT TO:<Postmaster>",
    b"DATA",
    b"MAIL FROM:<>",
    b"RCPT TO:<user+tag@sub.receiver.example>",
    b"RSET",
    b"NOOP",
    b"QUIT",
]


def _message(size: int) -> bytes:
    """A plausible message: headers, a text part, a base64 part, a few dot-stuffed lines; CRLF lines."""
    rnd = random.Random(size)
    head = (
        b"Received: from mail.sender.example (mail.sender.example [192.0.2.1])\r\n"
        b"\tby mx.receiver.example with ESMTPS id 4F3x; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"From: John <john.smith@sender.example>\r\nTo: jane.doe@receiver.example\r\n"
        b"Subject: benchmark\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\n"
    )
    text = b"".join(
        (b"." if i % 40 == 0 else b"") + b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\r\n"
        for i in range(20)
    )
    body = head + text + b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    raw = base64.encodebytes(rnd.randbytes(size)).replace(b"\n", b"\r\n")
    return (body + raw)[: size - 2] + b"\r\n"


@pytest.mark.parametrize("impl", IMPLS)
def test_smtp_commands(benchmark, record_rate, impl):
    smtp = variants("smtp")[impl]
    parse_command, parse_mail_from, parse_rcpt_to = smtp.parse_command, smtp.parse_mail_from, smtp.parse_rcpt_to
    lines = COMMANDS * 10

    def run():
        for line in lines:
            verb, args = parse_command(line)
            if verb == "MAIL":
                parse_mail_from(args)
            elif verb == "RCPT":
                parse_rcpt_to(args)

    benchmark.group = "smtp: parse_command + parse_mail_from/parse_rcpt_to, command mix"
    benchmark(run)
    record_rate(len(lines), "lines/s")


@pytest.mark.parametrize("impl", IMPLS)
def test_smtp_rcpt_only(benchmark, record_rate, impl):
    smtp = variants("smtp")[impl]
    parse_rcpt_to = smtp.parse_rcpt_to
    args = [b"TO:<jane.doe@receiver.example>", b'TO:<"odd local"@receiver.example>', b"TO:<u@[192.0.2.1]>",
            b"TO:<@relay.example:user@receiver.example>"] * 25

    def run():
        for a in args:
            parse_rcpt_to(a)

    benchmark.group = "smtp: parse_rcpt_to (plain, quoted, literal, source route)"
    benchmark(run)
    record_rate(len(args), "addresses/s")


@pytest.mark.parametrize("size", [4096, 262144], ids=["4KiB", "256KiB"])
@pytest.mark.parametrize("impl", IMPLS)
def test_data_decoder(benchmark, record_rate, impl, size):
    data = variants("data")[impl]
    stream = data.dot_stuff(_message(size)) + data.END_MARK
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]

    def run():
        decoder = data.DataDecoder(1 << 30)
        for chunk in chunks:
            decoder.feed(chunk)
        assert decoder.done
        return decoder.getvalue()

    benchmark.group = f"data: DataDecoder, {size // 1024} KiB message in 64 KiB chunks"
    benchmark(run)
    record_rate(len(stream) / 1e6, "MB/s")


@pytest.mark.parametrize("impl", IMPLS)
def test_dot_stuff(benchmark, record_rate, impl):
    data = variants("data")[impl]
    message = _message(262144)
    benchmark.group = "data: dot_stuff, 256 KiB message"
    benchmark(data.dot_stuff, message)
    record_rate(len(message) / 1e6, "MB/s")


@pytest.mark.parametrize("impl", IMPLS)
def test_line_reader(benchmark, record_rate, impl):
    lines_mod = variants("lines")[impl]
    stream = b"".join(line + b"\r\n" for line in COMMANDS) * 100
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    count = len(COMMANDS) * 100

    def run():
        reader = lines_mod.LineReader(1000)
        readline = reader.readline
        n = 0
        for chunk in chunks:
            reader.feed(chunk)
            while readline() is not None:
                n += 1
        assert n == count

    benchmark.group = "lines: LineReader, pipelined commands in 4 KiB reads"
    benchmark(run)
    record_rate(count, "lines/s")
