"""fastmail._core.fetch: FETCH responses for the common item lists straight from the encoded records.

Its contract is "the same bytes as the general renderer (fastmail.proto.imap_fetch.Fetcher), or None":
every case renders seeded random records (flags with escapes and UTF-8, dates over years 1970-9999, big
numbers, sparse and dense UID sets, repeated items, CHANGEDSINCE) with both builds and compares them with
Fetcher's output; records it does not know fall back (None), never render differently."""

from __future__ import annotations

import random
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail._core import is_compiled, variants
from fastmail.proto.imap_fetch import Fetcher, internaldate
from fastmail.store import mime
from fastmail.store import records as R
from fastmail.store.mailboxes import parse_record


@pytest.fixture(params=["compiled", "pure"])
def fetch(request):
    return variants("fetch")[request.param]


def test_compiled_is_compiled():
    assert is_compiled(variants("fetch")["compiled"])


FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Forwarded", "Junk", "ÄÖ", "a\\b", "x]y"]
ORDERS = [
    ["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE"], ["ENVELOPE"], ["BODYSTRUCTURE"], ["FLAGS", "FLAGS"],
    ["BODY", "UID", "ENVELOPE", "MODSEQ"], ["INTERNALDATE"], ["UID", "MODSEQ", "FLAGS"], ["BODY"] * 5,
]
MESSAGE = (b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\nTo: a@example.org, b@example.org\r\n"
           b"Subject: caf\xc3\xa9 \"quoted\" \\ back\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"\r\nhi\r\n--x\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n"
           b"\r\nAAAA\r\n--x--\r\n")
META = mime.analyze(MESSAGE)
WIRE = mime.wire(META)


def _reference(items, view, want, msgs, since):
    fetcher = Fetcher(items, lambda blob: MESSAGE, lambda blob: META, uid=False, modseq=False)
    wanted = set(want)
    return b"".join(fetcher.render(view.index(m.uid) + 1, m) for m in msgs
                    if m.uid in wanted and (since < 0 or m.modseq > since))


def _case(rng: random.Random):
    uids = sorted(rng.sample(range(1, 300), rng.randint(0, 60)))
    pairs, msgs = [], []
    for u in uids:
        date = rng.choice([0, 1, 86399, 86400, 951782400, 1700000000, 253402300799,
                           rng.randint(0, 253402300799), rng.randint(0, 4102444800)])
        value = R.message_record(rng.randbytes(12), rng.choice([0, 7, rng.randint(0, 10**12)]), date,
                                 rng.sample(FLAGS, rng.randint(0, 4)), rng.randint(1, 10**15))
        key = R.msg_key(rng.choice([1, 2**40]), u) if not pairs else pairs[0][0][:8] + R.U32.pack(u)
        pairs.append((key, value))
        msgs.append(parse_record(key, value))
    view = array("I", sorted(set(uids) | set(rng.sample(range(1, 400), 30))))
    want = sorted(rng.sample(uids, rng.randint(0, len(uids))))
    return pairs, msgs, view, want


@pytest.mark.parametrize("seed", range(60))
def test_same_bytes_as_the_general_renderer(fetch, seed):
    rng = random.Random(seed)
    pairs, msgs, view, want = _case(rng)
    for items in ORDERS:
        since = rng.choice([-1, -1, 10**14])
        order = fetch.item_order(items)
        wire_get = (lambda blob: WIRE) if any(c in fetch.WIRE_ITEMS for c in order) else None
        got = fetch.render_batch(iter(pairs), wire_get, want, view, order, since)
        if not want:
            assert got is None  # nothing to render: the caller does not ask
            continue
        assert got is not None
        data, found = got
        assert data == _reference(items, view, want, msgs, since)
        assert found == len(want)
        if wire_get is not None:  # a wire value as a buffer (LMDB buffers=True): the same bytes
            assert fetch.render_batch(iter(pairs), lambda blob: memoryview(WIRE), want, view, order, since) == got


def test_missing_records_are_counted(fetch):
    pairs = [(R.msg_key(3, u), R.message_record(b"\1" * 12, 10, 0, [], 1)) for u in (1, 3, 4)]
    pairs.append((R.msg_key(4, 1), pairs[0][1]))  # the next mailbox: the walk stops there
    view = array("I", [1, 2, 3, 4])
    data, found = fetch.render_batch(pairs, None, [1, 2, 3], view, fetch.item_order(["UID"]), -1)
    assert data == b"* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\n"
    assert found == 2
    data, found = fetch.render_batch(pairs, None, [1, 4, 9], view, fetch.item_order(["UID"]), -1)
    assert data == b"* 1 FETCH (UID 1)\r\n* 4 FETCH (UID 4)\r\n"
    assert found == 2


@pytest.mark.parametrize("value", [
    b'[2,"0101",1,2,[],3]',  # another version
    b'[1,"0101",1,-2,[],3]',  # a date before 1970
    b'[1,"0101",1,2,["a\\u0001"],3]',  # an escape other than \\\\
    b'[1,"0101",1,2,["\\\\Seen"],3,4]',  # a longer list
    b'[1,"0101",1,2,[1],3]',
    b'[1,"0101",1,2',
    b"",
])
def test_unknown_layouts_fall_back(fetch, value):
    pairs = [(R.msg_key(3, 1), value)]
    assert fetch.render_batch(pairs, None, [1], array("I", [1]), fetch.item_order(["UID", "FLAGS", "INTERNALDATE"]),
                              -1) is None


def test_missing_or_unknown_wire_falls_back(fetch):
    pairs = [(R.msg_key(3, 1), R.message_record(b"\1" * 12, 10, 0, [], 1))]
    order = fetch.item_order(["ENVELOPE"])
    assert fetch.render_batch(pairs, lambda blob: None, [1], array("I", [1]), order, -1) is None
    assert fetch.render_batch(pairs, lambda blob: b"\2" + WIRE[1:], [1], array("I", [1]), order, -1) is None
    assert fetch.render_batch(pairs, None, [1], array("I", [1]), order, -1) is None
    assert fetch.render_batch(pairs, lambda blob: WIRE, [1], array("I", [1]), order, -1) is not None
    assert fetch.render_batch(pairs, lambda blob: memoryview(b"\2" + WIRE[1:]), [1], array("I", [1]), order, -1) is None
    assert fetch.render_batch(pairs, lambda blob: memoryview(WIRE[:8]), [1], array("I", [1]), order, -1) is None
    ids = [b"\xab\x01", b"\1" * 12, bytes(range(16)), b"\xff"]  # the key buffer follows each id's length
    pairs = [(R.msg_key(3, u), R.message_record(blob, 10, 0, [], 1)) for u, blob in enumerate(ids, 1)]
    asked = []
    got = fetch.render_batch(pairs, lambda blob: asked.append(bytes(blob)) or WIRE, [1, 2, 3, 4],
                             array("I", [1, 2, 3, 4]), order, -1)
    assert asked == ids and got is not None and got[1] == 4
    with pytest.raises(TypeError):  # not bytes-like at all
        fetch.render_batch(pairs, lambda blob: 1, [1], array("I", [1]), order, -1)


def test_item_order_and_record_blob(fetch):
    assert fetch.item_order(["UID", "BODYSTRUCTURE"]) == bytes([fetch.UID, fetch.BODYSTRUCTURE])
    assert fetch.item_order(["UID", "RFC822"]) is None
    assert fetch.item_order(["UID", object()]) is None
    blob = bytes(range(12))
    assert fetch.record_blob(R.message_record(blob, 1, 2, [], 3)) == blob
    assert fetch.record_blob(b'[2,"00",1,2,[],3]') is None
    assert fetch.record_blob(b'[1,"0g",1,2,[],3]') is None
    assert fetch.record_blob(b'[1,"09afAF",1,2,[],3]') == b"\x09\xaf\xaf"
    assert fetch.record_blob(b'[1,"",1,2,[],3]') == b""
    for bad in (b'[1,"0 1",1,2,[],3]', b'[1,"01 ",1,2,[],3]', b'[1,"0/",1,2,[],3]', b'[1,"0:",1,2,[],3]',
                b'[1,"0@",1,2,[],3]', b'[1,"0G",1,2,[],3]', b'[1,"0`",1,2,[],3]', b'[1,"\xc3\xa9",1,2,[],3]',
                b'[1,"012,1,2,[],3]', b'[1,"0123'):
        assert fetch.record_blob(bad) is None, bad


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=253402300799))
def test_dates_as_gmtime(seconds):
    for mod in variants("fetch").values():
        pairs = [(R.msg_key(1, 5), R.message_record(b"\1" * 12, 1, seconds, [], 1))]
        data, _ = mod.render_batch(pairs, None, [5], array("I", [5]), mod.item_order(["INTERNALDATE"]), -1)
        assert data == b"* 1 FETCH (INTERNALDATE " + internaldate(seconds) + b")\r\n"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80), st.sampled_from(ORDERS))
def test_any_value_renders_like_the_general_renderer_or_falls_back(value, items):
    """Garbage records never crash either build; a record both can read renders the same."""
    for mod in variants("fetch").values():
        try:
            expected = _reference(items, array("I", [9]), [9], [parse_record(R.msg_key(1, 9), value)], -1)
        except Exception:
            expected = None
        order = mod.item_order(items)
        wire_get = (lambda blob: WIRE) if any(c in mod.WIRE_ITEMS for c in order) else None
        got = mod.render_batch([(R.msg_key(1, 9), value)], wire_get, [9], array("I", [9]), order, -1)
        if got is not None:
            assert got[0] == expected
