"""DKIM canonicalization (RFC 6376 §3.4) with bytes operations, the same output as dkimpy's.

dkimpy (dkim.canonicalization) canonicalizes with regular expressions over every header field of the
message (two `re.sub` per field, for every signature, whether signed or not) and three over the body.  These
functions give the same bytes (tests/unit/test_hygiene_canon.py checks them against dkimpy's on generated
input) and do the regular-expression work only where a value has something for it to change: a tab or a run
of spaces, white space before a line end.  A body as most mail has it — single spaces, no trailing white
space — is left as it is and only its trailing empty lines are looked at.

The header functions take dkimpy's (name, value) pairs (dkim.rfc822_parse: the value with its folding and its
CRLF) and give the canonical pair; the caller canonicalizes only the fields a signature selects, where dkimpy
canonicalizes them all.
"""

from __future__ import annotations

import re

from dkim.canonicalization import correct_empty_body, strip_trailing_lines

# dkimpy's regular expression that empties b= in the signature field being verified (dkim.RE_BTAG), written
# without its nested optional groups: its FWS, (?:(?:\s*\r?\n)?\s+)?, matches exactly the strings of white
# space (\s includes CR and LF), so "FWS =" is \s*= and "(?:FWS base64-char)*" — greedy, each step ending in a
# base64 character — is the longest run of white space and base64 characters cut after its last base64
# character.  dkimpy's takes ~45 µs on a 2048-bit signature, backtracking at every character.
_BTAG = re.compile(rb"([;\s]b\s*=)(?:[\sa-zA-Z0-9+/=]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")

RELAXED = b"relaxed"
SIMPLE = b"simple"


def relaxed_header(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """§3.4.2: name in lower case; the value unfolded (CRLF, or a bare LF, removed), runs of WSP made one
    space, WSP at its ends removed; then CRLF."""
    if b"\n" in value:
        # dkimpy: re.sub(b"\r?\n", b"", value).  Removing every CRLF, then every LF left, is the same: each
        # LF goes, with the CR right before it in the original (a CR that only becomes adjacent to an LF
        # by the first removal is followed by that LF's removal in the second).
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return name.lower().rstrip(), compress_wsp(value).strip() + b"\r\n"


def header(algorithm: bytes, name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """One field canonicalized by `algorithm` (b"relaxed" or b"simple": unchanged, §3.4.1)."""
    if algorithm == RELAXED:
        return relaxed_header(name, value)
    return name, value


def relaxed_body(body: bytes) -> bytes:
    """§3.4.4: WSP before a line end removed, runs of WSP made one space, empty lines at the end removed,
    and an empty body stays empty (RFC 6376 errata 3133, as dkimpy does).  `body` has CRLF line ends."""
    if b" \r\n" in body or b"\t\r\n" in body:
        # dkimpy: re.sub(b"[\t ]+\r\n", b"\r\n", body), i.e. each line that a CRLF ends loses its trailing
        # WSP (a run of WSP cannot hold a CR, so every match is the whole run before a CRLF)
        lines = body.split(b"\r\n")
        body = b"\r\n".join([line.rstrip(b" \t") for line in lines[:-1]] + lines[-1:])
    return correct_empty_body(strip_trailing_lines(compress_wsp(body)))


def compress_wsp(data: bytes) -> bytes:
    """dkimpy's compress_whitespace, re.sub(b"[\t ]+", b" ", data): every run of spaces and tabs one space."""
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while b"  " in data:  # each pass at least halves every run
        data = data.replace(b"  ", b" ")
    return data


def without_b(value: bytes) -> bytes:
    """dkimpy's RE_BTAG.sub(b"\\1", value): the signature field's value with b= emptied (RFC 6376 §3.7)."""
    return _BTAG.sub(b"\\1", value)


def without_wsp(value: bytes) -> bytes:
    r"""re.sub(rb"\s+", b"", value), as dkimpy strips b= and bh= before base64 decoding: bytes.split() splits
    at the same six ASCII white-space octets."""
    return b"".join(value.split())


def simple_body(body: bytes) -> bytes:
    """§3.4.3: empty lines at the end removed (a body ends in exactly one CRLF)."""
    return strip_trailing_lines(body)


def body(algorithm: bytes, data: bytes) -> bytes:
    return relaxed_body(data) if algorithm == RELAXED else simple_body(data)
