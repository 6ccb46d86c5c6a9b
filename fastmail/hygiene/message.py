"""A received message's header section, parsed once and shared by the checks (DKIM, ARC, DMARC).

`parse()` splits a message the way dkimpy's `rfc822_parse` does — header fields as (name, value) pairs, the
value with its folding and CRLF, and the body with every line ending made CRLF — but reads the body only by
its offset: dkimpy's own `rfc822_parse` runs on the header section alone (a few hundred bytes instead of the
whole message, split line by line with a regular expression), and the body's line endings are normalized
with two `bytes.replace` calls only when it has a bare LF.  The result is dkimpy's to the byte: its parser
stops at the first empty line, and the header section is cut right after that line
(tests/unit/test_hygiene_message.py compares the two on generated messages).

Where the header section cannot be parsed (dkimpy's MessageFormatError: a line that is neither a field nor
a continuation) `error` says why and `fields` is empty; DKIM then has no signature to evaluate and ARC
reports the message as unparsable.  A message whose first line is a continuation (starts with white space)
counts as unparsable too: dkimpy's parser fails there with an IndexError.
"""

from __future__ import annotations

import dkim

from fastmail._core import canon as core

# The header fields an ARC set is made of (RFC 8617 §4.1); dkimpy's dkim.ARC.ARC_HEADERS.
ARC_FIELDS = frozenset({b"arc-seal", b"arc-message-signature", b"arc-authentication-results"})


class Message:
    """A message split as dkimpy splits it (see the module doc).  `fields`: [name, value] lists as dkimpy
    gives them (treat them as read-only: the verifiers share them)."""

    __slots__ = ("raw", "fields", "error", "body_start", "_body", "_lower")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.body_start = header_end(raw)
        self.error = ""
        self._body: bytes | None = None
        self._lower: list[bytes] | None = None
        try:
            fields = header_fields(raw[:self.body_start])
        except dkim.MessageFormatError as e:
            self.error, fields = str(e), []
        except IndexError:  # dkimpy's parser on a first line that is a continuation
            self.error, fields = "Unexpected continuation line before the first header field", []
        self.fields: list[list[bytes]] = fields

    @property
    def body(self) -> bytes:
        """The body as dkimpy's rfc822_parse gives it: every CRLF or bare LF made CRLF."""
        if self._body is None:
            self._body = crlf(self.raw[self.body_start:])
        return self._body

    @property
    def header_section(self) -> bytes:
        """The header section with the empty line that ends it (all of the message when it has none)."""
        return self.raw[:self.body_start]

    @property
    def lower_names(self) -> list[bytes]:
        """The name of each field, lower case."""
        if self._lower is None:
            self._lower = [name.lower() for name, _ in self.fields]
        return self._lower

    def values(self, name: bytes) -> list[bytes]:
        """The values of every field called `name` (lower case), top first."""
        return [value for field, value in self.fields if field.lower() == name]

    @property
    def has_arc(self) -> bool:
        """Some field of an ARC set is present (without one, there is no chain to validate)."""
        return not ARC_FIELDS.isdisjoint(self.lower_names)


def parse(message: bytes | Message) -> Message:
    return message if isinstance(message, Message) else Message(message)


def header_end(raw: bytes) -> int:
    """Where the body starts: the offset right after the first empty line (dkimpy's rfc822_parse splits
    lines at CRLF or LF: an empty line is an LF followed by CRLF or LF, or either at the very start);
    len(raw) when there is no empty line."""
    if raw.startswith(b"\n"):
        return 1
    if raw.startswith(b"\r\n"):
        return 2
    # The CRLF form first: in a message as SMTP delivers it that search stops at the end of the header
    # section, and a bare-LF empty line can only come first if it is before that point (a search for it
    # over the whole message would read the whole body).
    crlf_ = raw.find(b"\n\r\n")
    lf = raw.find(b"\n\n", 0, crlf_ + 1) if crlf_ >= 0 else raw.find(b"\n\n")
    if lf >= 0:
        return lf + 2
    return crlf_ + 3 if crlf_ >= 0 else len(raw)


def header_fields(head: bytes) -> list[list[bytes]]:
    """The fields of a header section as dkimpy's rfc822_parse gives them, and its MessageFormatError (or
    IndexError) where it raises one, without its regular expressions (fastmail._core.canon.header_fields:
    one pass for a section of CRLF lines, each value a slice of it)."""
    try:
        return core.header_fields(head)  # type: ignore[no-any-return]
    except ValueError as e:
        raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {e.args[0]!r}") from None


def crlf(data: bytes) -> bytes:
    """Every line ending CRLF: what b"\\r\\n".join(re.split(b"\\r?\\n", data)) gives, without splitting
    into lines (a bare LF becomes CRLF, a bare CR stays)."""
    if not core.bare_lf(data):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
