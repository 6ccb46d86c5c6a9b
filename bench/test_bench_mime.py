"""Micro-benchmarks: fastmail.store.mime.analyze() (ENVELOPE + BODY + BODYSTRUCTURE + section map) and
render(), on the compiled fastmail._core.mime and on its pure twin.

    python -m pytest bench/test_bench_mime.py -p no:cacheprovider

Groups: analyze-4k (a 4 KiB text/plain message with a realistic header), analyze-256k (a 256 KiB
multipart/mixed: alternative text+html and three base64 attachments), render-bodystructure (the 256 KiB
message's BODYSTRUCTURE to wire bytes).
"""

from __future__ import annotations

import base64
import os
import platform
import random
import subprocess
from pathlib import Path

import pytest

from fastmail._core import variants
from fastmail.store import mime as store_mime

VARIANTS = variants("mime")


def text_4k() -> bytes:
    header = (
        b"Return-Path: <alice@example.org>\r\n"
        b"Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n\tby mail.example.net with ESMTPS id 4Xyz123\r\n"
        b"\tfor <bob@example.net>; Tue, 5 Mar 2024 10:00:00 +0000\r\n"
        b"Received: from [10.0.0.5] (unknown [198.51.100.7])\r\n\tby mx.example.org with ESMTPSA id abc\r\n"
        b"\tfor <bob@example.net>; Tue, 5 Mar 2024 09:59:58 +0000\r\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel;\r\n"
        b"\th=from:to:subject:date:message-id; bh=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG=;\r\n"
        b"\tb=" + b"A" * 300 + b"\r\n"
        b"Message-ID: <20240305095958.12345@example.org>\r\n"
        b"Date: Tue, 5 Mar 2024 09:59:58 +0000\r\n"
        b'From: "Alice Example" <alice@example.org>\r\n'
        b"To: Bob Example <bob@example.net>, carol@example.net\r\n"
        b'Cc: "Dave, the Third" <dave@example.com>\r\n'
        b"Subject: Quarterly numbers and the plan for next week\r\n"
        b"In-Reply-To: <abc@example.net>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8; format=flowed\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * ((4096 - len(header)) // len(line))
    return header + body


def multipart_256k() -> bytes:
    rnd = random.Random(1)
    out = [
        b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: files\r\n"
        b"Date: Tue, 5 Mar 2024 09:59:58 +0000\r\nMessage-ID: <m@example.org>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="==outer=="\r\n\r\n'
        b"This is a multi-part message in MIME format.\r\n"
        b'--==outer==\r\nContent-Type: multipart/alternative; boundary="==alt=="\r\n\r\n'
        b"--==alt==\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"Hello Bob, see the attachments.\r\n" * 40
        + b"--==alt==\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"<p>Hello Bob, see the attachments.</p>\r\n" * 40
        + b"--==alt==--\r\n"
    ]
    for i, size in enumerate((120000, 60000, 12000)):
        data = base64.encodebytes(rnd.randbytes(size)).replace(b"\n", b"\r\n")
        out.append(
            b'--==outer==\r\nContent-Type: application/octet-stream; name="file%d.bin"\r\n'
            b'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="file%d.bin"\r\n\r\n'
            % (i, i)
            + data
        )
    out.append(b"--==outer==--\r\n")
    return b"".join(out)


MESSAGES = {"4k": text_4k(), "256k": multipart_256k()}


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@pytest.fixture(scope="module", autouse=True)
def describe(request):
    import Cython

    line = (
        f"bench mime: analyze() and render() on fastmail._core.mime compiled vs pure; "
        f"messages {', '.join(f'{k}={len(v)} bytes' for k, v in MESSAGES.items())}; "
        f"{platform.processor() or platform.machine()} {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}, Cython {Cython.__version__}; "
        f"commit {_commit()}"
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)


@pytest.fixture(params=sorted(VARIANTS))
def core(request, monkeypatch):
    monkeypatch.setattr(store_mime, "_m", VARIANTS[request.param])
    return request.param


@pytest.mark.parametrize("size", sorted(MESSAGES))
def test_analyze(benchmark, core, size):
    raw = MESSAGES[size]
    benchmark.group = f"analyze-{size}"
    benchmark.extra_info.update(core=core, message_bytes=len(raw), python=platform.python_version())
    result = benchmark(store_mime.analyze, raw)
    assert result["parts"][2] == len(raw)


def test_render_bodystructure(benchmark, core):
    bs = store_mime.analyze(MESSAGES["256k"])["bodystructure"]
    benchmark.group = "render-bodystructure"
    benchmark.extra_info.update(core=core)
    wire = benchmark(store_mime.render, bs)
    assert wire.startswith(b"(((")
