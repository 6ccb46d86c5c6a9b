"""Every case of the SMTP command corpus (tests/corpus/smtp_commands.json) fed to the session state machine
whole, all at once, byte by byte and in random chunks, against the compiled and the pure-Python core.

test_core_smtp.py parses each case with the core functions, and streams the plain command lines through the
LineReader in chunks; here every case — MAIL/RCPT arguments and parameters, xtext values — becomes a line of
a real session (after EHLO, inside a transaction where it needs one), so the framing, the parsers and the
state machine's use of them are checked together.  However the bytes arrive, the replies, the refusals told
to the driver (fastmail.proto.smtp.Refusal) and the resulting transaction are the ones of line-by-line
feeding, and the MAIL/RCPT replies and envelopes agree with the corpus.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from fastmail._core import is_compiled, variants
from fastmail.proto import smtp as P
from tests.fakes import FakePolicy

CORPUS = json.loads((Path(__file__).parent.parent / "corpus" / "smtp_commands.json").read_text())["cases"]
SEEDS = range(3)  # random chunkings per case and implementation
CHUNK_SIZES = (1, 2, 3, 5, 8, 13, 64)

_CORE = ("lines", "smtp", "data")


@pytest.fixture(params=["compiled", "pure"])
def impl(request, monkeypatch):
    """The state machine running on one implementation of the core (its module globals swapped)."""
    for name in _CORE:
        module = variants(name)[request.param]
        assert is_compiled(module) == (request.param == "compiled")
        monkeypatch.setattr(P, f"core_{name}", module)
    return request.param


def raw(case: dict) -> bytes:
    return case["in"].encode(case.get("enc", "utf-8"))


def session_lines(case: dict) -> tuple[P.Mode, list[bytes], int]:
    """The session's lines for CASE, and the index of the line the case is (its reply to check)."""
    kind = case["kind"]
    ehlo = b"EHLO client.test\r\n"
    if kind == "command":
        return P.Mode.SMTP, [ehlo, raw(case) + b"\r\n", b"NOOP\r\n"], 1
    if kind == "mail":
        return P.Mode.SMTP, [ehlo, b"MAIL " + raw(case) + b"\r\n", b"RCPT TO:<alice@example.org>\r\n", b"NOOP\r\n"], 1
    if kind == "rcpt":
        mail = b"MAIL FROM:<s@remote.test>" + (b" SMTPUTF8" if case["utf8"] else b"") + b"\r\n"
        return P.Mode.SMTP, [ehlo, mail, b"RCPT " + raw(case) + b"\r\n", b"NOOP\r\n"], 2
    if kind == "xtext_decode":  # as a MAIL ENVID and a RCPT ORCPT value
        value = case["in"].encode()
        return P.Mode.SMTP, [ehlo, b"MAIL FROM:<s@remote.test> ENVID=" + value + b"\r\n",
                             b"RCPT TO:<alice@example.org> ORCPT=rfc822;" + value + b"\r\n", b"NOOP\r\n"], 1
    assert kind == "xtext_encode"  # what we encode, a peer sends back to us
    value = case["out"].encode()
    return P.Mode.SMTP, [ehlo, b"MAIL FROM:<s@remote.test> ENVID=" + value + b"\r\n",
                         b"RCPT TO:<alice@example.org> ORCPT=rfc822;a" + value + b"\r\n", b"NOOP\r\n"], 1


def run(mode: P.Mode, chunks: list[bytes]) -> dict[str, Any]:
    """Feed CHUNKS to a fresh session as reads, answering requests as the driver would; what it produced."""
    refusals: list[tuple] = []
    conn = P.SMTPConnection(
        P.Session("192.0.2.1", mode, trusted=True), FakePolicy(), "mx.example.org", P.Limits(max_line_length=1000),
        tls_available=False, auth_without_tls=True, refused_hook=lambda r: refusals.append(
            (r.verb, r.reply, r.address, r.arg, r.envelope.qid if r.envelope else None)),
        new_qid=iter(f"q{i}" for i in range(1000)).__next__,
    )
    out = [conn.take_output()]
    for chunk in chunks:
        conn.receive(chunk)
        while (req := conn.next_request()) is not None:
            if isinstance(req, P.Deliver):
                conn.deliver_done("q")
            elif isinstance(req, P.Authenticate):
                conn.auth_done(None)
            elif isinstance(req, P.StartTLS):
                conn.tls_started()
        out.append(conn.take_output())
    env = conn.envelope
    return {
        "output": b"".join(out),
        "refusals": refusals,
        "envelope": None if env is None else (env.sender, env.qid, env.mail_params, env.smtputf8,
                                              [(r.address, r.params) for r in env.rcpts]),
        "state": (conn.state, conn.closed, conn.errors, conn.commands, conn.refusals, conn.session.helo),
    }


def replies(output: bytes) -> list[str]:
    """Each reply as 'CODE ENHANCED' (its last line), in order; the greeting included."""
    return [" ".join(line.split(" ")[:2]) for line in output.decode("utf-8", "replace").split("\r\n")
            if re.match(r"^\d{3} ", line)]


def random_chunks(stream: bytes, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    chunks, i = [], 0
    while i < len(stream):
        k = rnd.choice(CHUNK_SIZES)
        chunks.append(stream[i : i + k])
        i += k
    return chunks


def case_id(case: dict) -> str:
    return f"{case['kind']}:{case['in'][:50]!r}"


@pytest.mark.parametrize("case", CORPUS, ids=[case_id(c) for c in CORPUS])
def test_case_fed_in_any_pieces(impl, case):
    mode, lines, at = session_lines(case)
    stream = b"".join(lines)
    whole = run(mode, lines)
    assert run(mode, [stream]) == whole, "all at once"
    assert run(mode, [stream[i : i + 1] for i in range(len(stream))]) == whole, "byte by byte"
    for seed in SEEDS:
        assert run(mode, random_chunks(stream, seed)) == whole, f"random chunks, seed {seed}"

    got = replies(whole["output"])
    if case["kind"] == "command":
        return  # the corpus gives the split, not a reply: chunking alone is checked
    # the case's own reply: the greeting and EHLO come first, one reply per line after them
    reply = got[at + 1] if len(got) > at + 1 else None
    if case["kind"] in ("mail", "rcpt"):
        if "error" in case:
            assert reply == "{} {}".format(*case["error"]), case.get("note", "")
            verb, refused, address, arg, _ = whole["refusals"][0]
            assert (verb, refused.code, refused.enhanced) == (case["kind"].upper(), *case["error"])
            assert address is None and arg == raw(case).rstrip(b" ").decode("utf-8", "replace")  # as sent
        elif reply in ("250 2.1.0", "250 2.1.5"):
            addr = case["addr"]
            want = None if addr is None else (f"{addr[0]}@{addr[1]}" if addr[1] else addr[0])
            env = whole["envelope"]
            if case["kind"] == "mail":
                assert (env[0], env[2]) == (want, case["params"])
            else:
                assert env[4][-1] == (want, case["params"])
        else:  # parsed, then refused by the session's own checks (an unknown parameter): not a parse error
            assert reply is not None and reply not in ("501 5.1.3", "553 5.6.7"), reply
    elif case["kind"] == "xtext_decode":
        if "error" in case:
            assert reply != "250 2.1.0"
        elif case["in"]:
            assert reply == "250 2.1.0" and whole["envelope"][2] == {"ENVID": case["in"]}
    elif case["out"]:
        assert got[at + 1 :] == ["250 2.1.0", "250 2.1.5", "250 2.0.0"], got
