"""fastmail._core.search: SEARCH SUBJECT/FROM/TO/CC/BCC from the stored ENVELOPE bytes.

Its contract is "the same answer as the Python predicate (fastmail.proto.imap_search.envelope_match on
mime.analyze()'s envelope), or UNSURE": seeded random headers (encoded-words, non-ASCII, quotes and
backslashes, groups, empty names, missing fields) and needles (substrings in varied case, non-ASCII,
empty) are checked with both builds; envelope() gives back analyze()'s envelope exactly."""

from __future__ import annotations

import random
from array import array

import pytest

from fastmail._core import is_compiled, variants
from fastmail.proto.imap_search import envelope_match
from fastmail.store import mime
from fastmail.store import records as R


@pytest.fixture(params=["compiled", "pure"])
def search(request):
    return variants("search")[request.param]


def test_compiled_is_compiled():
    assert is_compiled(variants("search")["compiled"])


WORDS = ["Kumquatrix", "hello", "Re:", "caf\u00e9", "Stra\u00dfe", "\"quoted\"", "back\\slash", "=?x", "K\u212a",
         "tab\there", "MiXeD", "=?utf-8?q?J=C3=B6rg?=", "=?UTF-8?B?S3VtcXVhdHJpeA==?=", "=?iso-8859-1?q?caf=E9?=",
         "=?utf-8?b?S3VtcXVhdHJpeA?=", "=?utf-8?q?a=?=", "=?koi8-r?b?8NLJ18XU?=", "a?=", "=?utf-8?q?=C3=9F_ss?=",
         "=?iso-8859-1?q?Stra=DFe?=", "=?utf-8?b?4oSq?=", "=?UTF-8*en?q?x?=", "=?utf-8?q?bad=ZZ?=",
         "=?us-ascii?q?=FFok?=", "=?utf-8?q??=", "=?Latin1?Q?R=E9sum=E9?=", "=?utf-8?B?w6k=?=", "=?utf-8?b?YWJjZA=?=",
         "=?utf-8?q?x?=\t=?utf-8?q?y?=", "=?utf-8?b?/w==?=", "=?utf-8?q?=e2=84?="]
NAMES = ["", "Alice Example", "\"Bob, Jr.\"", "=?utf-8?q?J=C3=B6rg?=", "J\u00f6rg", "x\\\\y", "\"a \\\" b\"",
         "=?utf-8?q??=", "=?ISO-8859-1?Q?Andr=E9?= Pirard", "=?utf-8?b?S3VtcXVhdHJpeA==?= =?utf-8?q?_Jr?="]
LOCALS = ["a", "Bob.Smith", "k\u00f6", "\"q u\""]
HOSTS = ["example.org", "EXAMPLE.test", "b\u00fccher.de"]


def _address(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    addr = f"{rng.choice(LOCALS)}@{rng.choice(HOSTS)}" if rng.random() < 0.9 else rng.choice(LOCALS)
    if not name:
        return addr
    return f"{name} <{addr}>"


def _addresses(rng: random.Random) -> str:
    parts = [_address(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.15:
        parts = [f"Team: {', '.join(parts)};"]
    if rng.random() < 0.05:
        parts = ["undisclosed-recipients:;"]
    return ", ".join(parts)


def _message(rng: random.Random) -> bytes:
    lines = []
    if rng.random() < 0.9:
        lines.append("Subject: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 5))))
    for field in ("From", "To", "Cc", "Bcc"):
        if rng.random() < 0.8:
            lines.append(f"{field}: {_addresses(rng)}")
    head = "\r\n".join(lines).encode("utf-8")
    if rng.random() < 0.1:
        head = head.replace(b"\xc3\xb6", b"\xf6")  # Latin-1 bytes in the header
    return head + b"\r\n\r\nbody\r\n"


def _needles(rng: random.Random, env: list) -> list[str]:
    out = ["", "kumquatrix", "K", "\u00e9", "SS", "\"", "\\", "=?", "<", ", ", "@example"]
    for value in env[1:8]:
        text = str(value)
        if len(text) > 2:
            a = rng.randrange(len(text))
            piece = text[a: a + rng.randint(1, 8)]
            out.append(piece.upper() if rng.random() < 0.5 else piece)
    return out


def test_match_agrees_with_the_python_predicate(search):
    rng = random.Random(5)
    out = bytearray(4096)
    decided = unsure = 0
    for _ in range(400):
        meta = mime.analyze(_message(rng))
        wire = mime.wire(meta)
        env = meta["envelope"]
        assert search.envelope(wire) == env
        assert [search.field(wire, i) for i in range(10)] == env
        for needle in _needles(rng, env):
            folded = needle.casefold()
            for index in (1, 2, 5, 6, 7):
                got = search.match(out, wire, index, folded.encode("utf-8", "surrogatepass"))
                assert got != search.MALFORMED
                if got == search.UNSURE:
                    unsure += 1
                    continue
                decided += 1
                assert bool(got) == envelope_match(env, index, folded), (env[index], needle)
    assert decided > 5000 and unsure  # both kinds occur (the data is mostly non-ASCII on purpose)


def test_search_batch_hits_and_unsure(search):
    rng = random.Random(9)
    metas = [mime.analyze(_message(rng)) for _ in range(60)]
    uids = sorted(rng.sample(range(1, 200), 60))
    pairs, wires = [], {}
    for k, (u, meta) in enumerate(zip(uids, metas, strict=True)):
        blob = bytes([k]) * 12
        pairs.append((R.msg_key(7, u), R.message_record(blob, 10, 0, ["\\Seen"], 1000 + u)))
        wires[blob] = mime.wire(meta)
    pairs.append((R.msg_key(8, 1), pairs[0][1]))  # the next mailbox: not reached
    view = array("I", uids)
    for tests in ([(1, "kumquatrix")], [(2, "a"), (1, "re:")], [(5, "")], [(6, "\u00f6")]):
        want = uids[3:50]
        done = search.search_batch(iter(pairs), wires.get, want, view,
                                   [(i, n.encode("utf-8")) for i, n in tests])
        assert done is not None
        hits, unsure, found = done
        assert found == len(want)
        expect = [(view.index(u) + 1, u, 1000 + u) for u, meta in zip(uids, metas, strict=True) if u in want
                  and all(envelope_match(meta["envelope"], i, n) for i, n in tests)]
        got = sorted(hits + [(s, u, m) for s, u, m, values in unsure
                             if all(envelope_match([v if k == i else None for k in range(10)], i, n)
                                    for v, (i, n) in zip(values, tests, strict=True))])
        assert got == expect
        assert all(s == view.index(u) + 1 and len(values) == len(tests) for s, u, m, values in unsure)
    # a message stored without its wire form, or another record layout: the batch goes the general way
    assert search.search_batch(iter(pairs), {}.get, uids, view, [(1, b"x")]) is None
    odd = [(pairs[0][0], b'[2,"00",1,2,[],3]')]
    assert search.search_batch(iter(odd), wires.get, uids[:1], view, [(1, b"x")]) is None
