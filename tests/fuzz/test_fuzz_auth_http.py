"""The nginx mail proxy's auth_http request head (fastmail.server.auth_http.parse_request): header fields
with lower-cased names for a GET request, None for anything else, never an exception; and the values the
endpoint reads from them (the login attempt number, the percent-encoded user and password) never raise."""

from __future__ import annotations

import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from fastmail.server import auth_http
from tests.fuzz.fuzzing import fuzz

PIECES = [b"GET /auth HTTP/1.0", b"GET / HTTP/1.1", b"POST /auth HTTP/1.0", b"GET  HTTP/1.0", b"\r\n", b"\n",
          b"Auth-User: ", b"Auth-Pass: ", b"Auth-Protocol: imap", b"Auth-Method: plain", b"Auth-Login-Attempt: ",
          b"Client-IP: 192.0.2.1", b"alice%40example.org", b"%ZZ", b"%C3%A9", b"\xc3\xa9", b"\xff", b"\x00", b":",
          b" ", b" X: y", b"1", b"\xc2\xb2", b"9" * 5000, b"-1"]


@fuzz(400)
@given(st.lists(st.sampled_from(PIECES), max_size=16).map(b"".join))
def test_request_head(head):
    fields = auth_http.parse_request(head)
    if fields is None:
        return
    assert head.startswith(b"GET ")
    assert all(name == name.lower() and name for name in fields)
    for key in ("auth-user", "auth-pass"):
        assert isinstance(urllib.parse.unquote(fields.get(key, ""), errors="replace"), str)
    try:
        int(fields.get("auth-login-attempt", "1"))
    except ValueError:  # what the endpoint catches (an attempt of 1 then)
        pass
