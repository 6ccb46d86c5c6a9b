"""Micro-benchmarks of the IMAP tokenizer (fastmail._core.imap), compiled vs pure-Python twin (same source).

Run: pytest bench/test_bench_imap.py --benchmark-only     (throughput is printed at the end of the run)
"""

from __future__ import annotations

import random

import pytest

from fastmail._core import variants

IMPLS = ["compiled", "pure"]

# What a mail client sends while syncing: mostly FETCH (flags, headers for the list view, bodies), some STORE,
# SEARCH and IDLE, pipelined.
FETCH_MIX = [
    b"A1 UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)",
    b"A2 UID FETCH 4711:4800 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
    b"Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])",
    b"A3 UID FETCH 4711 (UID BODYSTRUCTURE)",
    b"A4 UID FETCH 4711 (BODY.PEEK[1.2]<0.65536>)",
    b"A5 FETCH 1:100 (ENVELOPE)",
    b"A6 UID FETCH 4712 BINARY.PEEK[2]",
    b"A7 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 620162338)",
    b"A8 UID STORE 4711 +FLAGS.SILENT (\\Seen)",
    b'A9 UID SEARCH CHARSET UTF-8 SUBJECT "quarterly report" SINCE 1-Jan-2024',
    b"A10 NOOP",
    b"A11 IDLE",
]


@pytest.mark.parametrize("impl", IMPLS)
def test_imap_fetch_mix(benchmark, record_rate, impl):
    imap = variants("imap")[impl]
    stream = b"".join(line + b"\r\n" for line in FETCH_MIX) * 50
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    count = len(FETCH_MIX) * 50

    def run():
        reader = imap.CommandReader(65536, 1 << 20)
        n = 0
        for chunk in chunks:
            reader.feed(chunk)
            while reader.next() is not None:
                n += 1
        assert n == count

    benchmark.group = "imap: CommandReader, FETCH-heavy pipelined command mix in 4 KiB reads"
    benchmark(run)
    record_rate(count, "commands/s")


@pytest.mark.parametrize("impl", IMPLS)
def test_imap_append_literal(benchmark, record_rate, impl):
    imap = variants("imap")[impl]
    message = random.Random(1).randbytes(262144).replace(b"\0", b"\1")
    stream = b'A1 APPEND INBOX (\\Seen) "01-Jan-2024 00:00:00 +0000" {262144+}\r\n' + message + b"\r\n"
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]

    def run():
        reader = imap.CommandReader(65536, 1 << 20)
        for chunk in chunks:
            reader.feed(chunk)
            cmd = reader.next()
        assert cmd.args[3].data == message

    benchmark.group = "imap: CommandReader, APPEND of a 256 KiB literal in 64 KiB reads"
    benchmark(run)
    record_rate(len(stream) / 1e6, "MB/s")
