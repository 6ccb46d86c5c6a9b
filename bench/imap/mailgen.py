"""A seeded, deterministic generator of a realistic mailbox for the IMAP benchmark (issue #4).

    from bench.imap.mailgen import generate, expected_hits
    for m in generate(10_000, seed=1): m.data, m.internaldate ...
    python -m bench.imap.mailgen --count 10000 --out DIR [--format maildir|mbox] [--seed 1]

Message i depends only on (seed, i): the first 100 messages of a 10,000-message mailbox are the 100-message
mailbox.  The bytes are built by hand (not by the `email` package, whose output changes between Python
versions), CRLF line ends, no line longer than 998 octets, headers folded under 78.

What a mailbox of the default size looks like (seed 1, 10,000 messages, 343 MiB, median 11.9 KB):

- single text/plain (60%), in us-ascii, utf-8 or iso-8859-1, as 7bit, 8bit, quoted-printable or base64;
- multipart/alternative text + HTML (21%), and 3% with multipart/related (HTML + inline image) inside;
- multipart/mixed with a body (text or alternative) and 1-3 small attachments of 5-40 KiB (12%), or one
  large attachment of 100 KiB - 2 MiB (1.5%), base64 in 76-character lines;
- multipart/mixed forwarding a message/rfc822 (2%);
- text bodies mostly 2-20 KiB (log-uniform), some short notes and some 20-60 KiB;
- From/To/Cc with display names, a fifth of them RFC 2047 encoded words (UTF-8 B and Q, ISO-8859-1 Q), and
  non-ASCII subjects the same way; Date in varied time zones; Message-ID; In-Reply-To/References on replies;
  one or two Received lines.

Planted words, at fixed positions (so the answers are known for any count, see expected_hits()):

- SUBJECT_WORD in the top-level Subject of every message with i % 50 == 7, in varied case, often inside a
  B- or Q-encoded word (so only a server that decodes RFC 2047 finds it), never elsewhere;
- TEXT_WORD in the first text part's body of every message with i % 20 == 11 (that part may be
  quoted-printable or base64: only a server that decodes the transfer encoding finds every one);
- RARE_WORD in the body of every message with i % 2500 == 1234.

The vocabulary holds none of the three words, and random binary attachments hold them with a probability
far below 1e-9, so `SEARCH SUBJECT` / `SEARCH TEXT` with them have exactly the counts of expected_hits().
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUBJECT_WORD = "Kumquatrix"
TEXT_WORD = "zanzibarite"
RARE_WORD = "quillographic"
BASE_TIME = 1735689600  # 2025-01-01T00:00:00Z: the first message's INTERNALDATE
SPACING = 1800  # mean seconds between two messages' arrival
CRLF = b"\r\n"


def subject_planted(i: int) -> bool:
    return i % 50 == 7


def text_planted(i: int) -> bool:
    return i % 20 == 11


def rare_planted(i: int) -> bool:
    return i % 2500 == 1234


def expected_hits(count: int) -> dict[str, int]:
    """How many of the first `count` messages hold each planted word (case-insensitive substring, decoded)."""
    return {
        SUBJECT_WORD: sum(1 for i in range(count) if subject_planted(i)),
        TEXT_WORD: sum(1 for i in range(count) if text_planted(i)),
        RARE_WORD: sum(1 for i in range(count) if rare_planted(i)),
    }


# -- vocabulary -------------------------------------------------------------------------------------------

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will can more other its who "
    "about into them some could time these two may then do first any my now such like our over man me even "
    "most made after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see men work long "
    "get here between both life being under never day same another know while last might us great old year "
    "off come since against go came right used take three meeting report budget quarter invoice schedule "
    "project review draft release server mailbox account update please thanks regards attached document "
    "deadline customer contract proposal figures summary agenda notes travel booking flight hotel dinner "
    "lunch weekend holiday family photos birthday party garden kitchen library museum concert ticket order "
    "delivery shipment payment receipt balance transfer support request issue ticket change rollback deploy "
    "database index cache latency throughput memory network storage backup restore config version branch"
).split()
WORDS_LATIN1 = "café naïve déjà façade résumé Grüße Straße Zürich Köln München señor jalapeño garçon crème brûlée smørrebrød".split()
WORDS_UTF8 = "Ελλάδα Москва 東京 привет Ωμέγα naïveté Łódź Kraków Dvořák 北京 ありがとう €uro".split()
FIRST = "Anna Bob Carla David Eva Frank Greta Hans Ines Jack Karl Lena Marc Nina Otto Paula Quinn Rita Sven Tara".split()
FIRST_NA = "José Zoë Jürgen Müller Françoise Søren Björk Anaïs Ståle Renée Łukasz Dvořák Ζωή Алексей 美咲".split()
LAST = "Smith Jones Miller Weber Schulz Martin Bernard Rossi Garcia Novak Olsen Berg Kowalski Dubois Fischer".split()
DOMAINS = "example.com example.net mail.example.org corp.example lists.example.net partner.example".split()
ZONES = ((0, "+0000"), (60, "+0100"), (120, "+0200"), (-300, "-0500"), (-420, "-0700"), (330, "+0530"), (540, "+0900"))
DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
ATTACH_TYPES = (("application", "pdf", "pdf"), ("image", "jpeg", "jpg"), ("image", "png", "png"),
                ("application", "zip", "zip"), ("application", "octet-stream", "bin"),
                ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"))
MAILERS = ("Mozilla Thunderbird 115.6", "Apple Mail (2.3774)", "K-9 Mail 6.7", "Microsoft Outlook 16.0",
           "Roundcube Webmail/1.6.5", "mutt/2.2.12")

for _w in (SUBJECT_WORD, TEXT_WORD, RARE_WORD):  # the planted words must not occur by chance
    assert not any(_w.lower() in w.lower() for w in WORDS + WORDS_LATIN1 + WORDS_UTF8 + FIRST + LAST)


def _line_pool(rng: random.Random, extra: list[str], n: int) -> list[str]:
    """Lines of 40-72 characters of words (text wrapped as a mail client would)."""
    pool = []
    for _ in range(n):
        target = rng.randint(40, 72)
        words: list[str] = []
        length = 0
        while length < target:
            w = rng.choice(extra) if extra and rng.random() < 0.06 else rng.choice(WORDS)
            words.append(w)
            length += len(w) + 1
        line = " ".join(words)
        pool.append(line[0].upper() + line[1:] + ("." if rng.random() < 0.3 else ""))
    return pool


@dataclass
class _Pools:
    ascii: list[str]
    latin1: list[str]
    utf8: list[str]


_POOLS: dict[int, _Pools] = {}


def _pools(seed: int) -> _Pools:
    if seed not in _POOLS:
        rng = random.Random(f"pools:{seed}")
        _POOLS[seed] = _Pools(_line_pool(rng, [], 1500), _line_pool(rng, WORDS_LATIN1, 800),
                              _line_pool(rng, WORDS_LATIN1 + WORDS_UTF8, 800))
    return _POOLS[seed]


# -- encodings --------------------------------------------------------------------------------------------

_Q_SAFE = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")


def encoded_words(text: str, charset: str, enc: str, first: int = 66) -> list[str]:
    """RFC 2047 encoded words for `text`, each at most 75 characters (the first at most `first`, so that it
    fits on the header's first line after "Subject: "), split between characters."""
    out: list[str] = []
    chunk = ""
    prefix = f"=?{charset}?{enc}?"

    def enc_one(s: str) -> str:
        raw = s.encode(charset)
        if enc == "B":
            body = base64.b64encode(raw).decode()
        else:
            body = "".join(chr(b) if b in _Q_SAFE else "_" if b == 32 else f"={b:02X}" for b in raw)
        return f"{prefix}{body}?="

    for ch in text:
        if chunk and len(enc_one(chunk + ch)) > (75 if out else first):
            out.append(enc_one(chunk))
            chunk = ""
        chunk += ch
    if chunk:
        out.append(enc_one(chunk))
    return out


def fold(name: str, tokens: list[str], sep: str = " ") -> bytes:
    """A header line `name: tokens...` folded before a token where the line would pass 78 characters."""
    lines = [f"{name}:"]
    for i, tok in enumerate(tokens):
        piece = (" " if i == 0 else sep) + tok
        if len(lines[-1]) + len(piece) > 78 and i > 0:
            lines[-1] += sep.rstrip()
            lines.append(" " + tok)
        else:
            lines[-1] += piece
    return "\r\n".join(lines).encode("ascii")


def qp_encode(text: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7) of CRLF text: soft line breaks at 76 characters, CRLF kept."""
    return binascii.b2a_qp(text, istext=True)


def b64_lines(raw: bytes) -> bytes:
    return base64.encodebytes(raw).replace(b"\n", CRLF)


# -- one message ------------------------------------------------------------------------------------------


@dataclass
class Message:
    index: int  # 0-based; UID index + 1 once stored in order
    data: bytes  # the whole message, CRLF line ends
    internaldate: int  # Unix time of arrival (APPEND date-time, Maildir file mtime)
    message_id: str
    kind: str  # "plain", "alternative", "related", "mixed", "large", "forward"
    planted: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)


def _message_id(seed: int, i: int) -> str:
    h = random.Random(f"mid:{seed}:{i}").getrandbits(64)
    return f"<{h:016x}.{i}@{DOMAINS[i % len(DOMAINS)]}>"


def _internaldate(seed: int, i: int) -> int:
    # strictly increasing with i (Maildir UIDs follow file-name time order), jitter under the spacing
    return BASE_TIME + i * SPACING + random.Random(f"t:{seed}:{i}").randrange(SPACING // 2)


def _date_header(ts: int, rng: random.Random) -> str:
    minutes, zone = rng.choice(ZONES)
    t = time.gmtime(ts + minutes * 60)
    return f"{DAYS[t.tm_wday]}, {t.tm_mday} {MONTHS[t.tm_mon - 1]} {t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {zone}"


def _display_name(rng: random.Random) -> tuple[list[str], str]:
    """(tokens for the header, the decoded name)."""
    if rng.random() < 0.2:
        name = f"{rng.choice(FIRST_NA)} {rng.choice(LAST)}"
        try:
            name.encode("latin-1")
            charset, enc = rng.choice((("ISO-8859-1", "Q"), ("UTF-8", "B"), ("UTF-8", "Q")))
        except UnicodeEncodeError:
            charset, enc = "UTF-8", rng.choice("BQ")
        return encoded_words(name, charset, enc), name
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    if rng.random() < 0.15:
        return [f'"{name.split()[1]}, {name.split()[0]}"'], name
    return name.split(), name


def _address(rng: random.Random, with_name: bool = True) -> list[str]:
    tokens, name = _display_name(rng)
    local = name.split()[-1].lower().encode("ascii", "ignore").decode() or "user"
    addr = f"{local}.{rng.randrange(100)}@{rng.choice(DOMAINS)}"
    return [*tokens, f"<{addr}>"] if with_name and rng.random() < 0.85 else [addr]


def _address_list(rng: random.Random, n: int, first: list[str] | None = None) -> list[str]:
    addrs = [first] if first else []
    addrs += [_address(rng) for _ in range(n - len(addrs))]
    tokens: list[str] = []
    for k, a in enumerate(addrs):
        tokens += a[:-1] + [a[-1] + ("," if k < len(addrs) - 1 else "")]
    return tokens


def _subject(rng: random.Random, planted: bool) -> tuple[list[str], str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 9))]
    nonascii = rng.random() < 0.18
    if nonascii:
        words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS_LATIN1 + WORDS_UTF8))
    if planted:
        form = rng.choice((SUBJECT_WORD, SUBJECT_WORD.lower(), SUBJECT_WORD.upper()))
        words.insert(rng.randrange(len(words) + 1), form)
    text = " ".join(words)
    text = text[0].upper() + text[1:]
    if rng.random() < 0.25:
        text = rng.choice(("Re: ", "RE: ", "Fwd: ", "AW: ", "Re: Re: ")) + text
    if nonascii or (planted and rng.random() < 0.6):
        try:
            text.encode("latin-1")
            charset, enc = rng.choice((("ISO-8859-1", "Q"), ("UTF-8", "B"), ("UTF-8", "Q")))
        except UnicodeEncodeError:
            charset, enc = "UTF-8", rng.choice("BQ")
        return encoded_words(text, charset, enc), text
    return text.split(), text


def _text_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.10:
        return rng.randint(200, 1500)  # short notes
    if r < 0.95:
        return int(2048 * (10 ** rng.random()))  # 2-20 KiB, log-uniform
    return rng.randint(20 * 1024, 60 * 1024)


def _text_lines(rng: random.Random, pool: list[str], size: int, plant: list[str]) -> list[str]:
    lines: list[str] = []
    total = 0
    while total < size:
        if lines and rng.random() < 0.12:
            lines.append("")
            total += 2
            continue
        line = rng.choice(pool)
        lines.append(line)
        total += len(line) + 2
    for w in plant:  # into a line of text (not a blank one), between two words
        k = rng.randrange(len(lines))
        while not lines[k]:
            k = (k + 1) % len(lines)
        parts = lines[k].split(" ")
        parts.insert(rng.randrange(len(parts) + 1), w)
        lines[k] = " ".join(parts)
    return lines


def _text_part(rng: random.Random, seed: int, size: int, plant: list[str], html: bool = False) -> tuple[list[bytes], bytes]:
    """(MIME header lines, encoded body) of one text/plain or text/html part."""
    pools = _pools(seed)
    charset = rng.choices(("us-ascii", "utf-8", "iso-8859-1"), (0.45, 0.4, 0.15))[0]
    pool = {"us-ascii": pools.ascii, "utf-8": pools.utf8, "iso-8859-1": pools.latin1}[charset]
    lines = _text_lines(rng, pool, size, plant)
    if html:
        paras, cur = [], []
        for ln in lines:
            if ln:
                cur.append(ln)
            elif cur:
                paras.append(cur)
                cur = []
        if cur:
            paras.append(cur)
        out = ["<html><head><meta charset=\"" + charset + "\"></head><body>"]
        for p in paras:
            out.append("<p>")
            out += p
            out.append("</p>")
        out.append("</body></html>")
        lines = out
    raw = "\r\n".join(lines).encode(charset) + CRLF
    if charset == "us-ascii":
        cte = rng.choices(("7bit", "quoted-printable", "base64"), (0.8, 0.15, 0.05))[0]
    else:
        cte = rng.choices(("8bit", "quoted-printable", "base64"), (0.4, 0.45, 0.15))[0]
    body = qp_encode(raw) if cte == "quoted-printable" else b64_lines(raw) if cte == "base64" else raw
    ctype = f"text/{'html' if html else 'plain'}; charset={charset}"
    if not html and rng.random() < 0.3:
        ctype += "; format=flowed"
    return [f"Content-Type: {ctype}".encode(), f"Content-Transfer-Encoding: {cte}".encode()], body


def _boundary(rng: random.Random, depth: int) -> str:
    return f"=_{depth}_{rng.getrandbits(96):024x}"


def _multipart(subtype: str, rng: random.Random, depth: int, parts: list[tuple[list[bytes], bytes]]) -> tuple[list[bytes], bytes]:
    b = _boundary(rng, depth)
    body = bytearray(b"This is a multi-part message in MIME format.\r\n") if depth == 0 else bytearray()
    for hdrs, content in parts:
        body += b"\r\n--" + b.encode() + CRLF + CRLF.join(hdrs) + CRLF + CRLF + content
        if not content.endswith(CRLF):
            body += CRLF
    body += b"\r\n--" + b.encode() + b"--\r\n"
    return [f'Content-Type: multipart/{subtype};\r\n boundary="{b}"'.encode()], bytes(body)


def _attachment(rng: random.Random, size: int, inline: bool = False) -> tuple[list[bytes], bytes]:
    major, minor, ext = rng.choice(ATTACH_TYPES[1:3] if inline else ATTACH_TYPES)
    name = f"{rng.choice(WORDS)}-{rng.randrange(1000)}.{ext}"
    hdrs = [f'Content-Type: {major}/{minor}; name="{name}"'.encode(), b"Content-Transfer-Encoding: base64"]
    if inline:
        hdrs += [f"Content-ID: <img{rng.getrandbits(48):012x}@bench>".encode(),
                 f'Content-Disposition: inline; filename="{name}"'.encode()]
    elif rng.random() < 0.3:  # a non-ASCII file name, RFC 2231
        hdrs.append(f"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9-{rng.randrange(100)}.{ext}".encode())
    else:
        hdrs.append(f'Content-Disposition: attachment; filename="{name}"'.encode())
    return hdrs, b64_lines(rng.randbytes(size))


def _body_part(rng: random.Random, seed: int, plant: list[str], kind: str) -> tuple[list[bytes], bytes]:
    size = _text_size(rng)
    if kind == "plain":
        return _text_part(rng, seed, size, plant)
    text = _text_part(rng, seed, size, plant)
    html = _text_part(rng, seed, int(size * 1.4), [], html=True)
    if kind == "related":
        html = _multipart("related", rng, 2, [html, _attachment(rng, rng.randint(2048, 30_000), inline=True)])
    return _multipart("alternative", rng, 1, [text, html])


def _headers(rng: random.Random, seed: int, i: int, ts: int, top: bool = True) -> tuple[list[bytes], str]:
    """Header lines (without MIME ones) and the decoded subject; `top`: of the mailbox's message i (which
    may carry the planted subject word), else of a forwarded one."""
    h: list[bytes] = []
    for hop in range(rng.randint(1, 2)):
        relay = f"mx{rng.randrange(1, 9)}.{rng.choice(DOMAINS)}"
        h.append(fold("Received", ["from", relay, f"(relay{hop}.example [192.0.2.{rng.randrange(1, 255)}])",
                                   "by", "mx.example.org", "with", "ESMTPS", "id", f"{rng.getrandbits(40):010x}",
                                   "for", "<bench@example.org>;", _date_header(ts - hop, rng)]))
    h.append(f"Date: {_date_header(ts - rng.randint(2, 600), rng)}".encode())
    h.append(fold("From", _address(rng)))
    to = _address_list(rng, rng.choices((1, 2, 3), (0.7, 0.2, 0.1))[0], first=["Bench", "User", "<bench@example.org>"])
    h.append(fold("To", to))
    if rng.random() < 0.3:
        h.append(fold("Cc", _address_list(rng, rng.randint(1, 4))))
    subj_tokens, subject = _subject(rng, top and subject_planted(i))
    h.append(fold("Subject", subj_tokens))
    h.append(f"Message-ID: {_message_id(seed, i)}".encode())
    if i > 0 and rng.random() < 0.3:
        refs = sorted({rng.randrange(max(0, i - 200), i) for _ in range(rng.randint(1, 4))})
        h.append(f"In-Reply-To: {_message_id(seed, refs[-1])}".encode())
        h.append(fold("References", [_message_id(seed, j) for j in refs]))
    if rng.random() < 0.5:
        h.append(f"X-Mailer: {rng.choice(MAILERS)}".encode())
    h.append(b"MIME-Version: 1.0")
    return h, subject


def _forwarded(rng: random.Random, seed: int, i: int, ts: int) -> bytes:
    """A small whole message to attach as message/rfc822 (no planted words: those are top-level only)."""
    inner = random.Random(f"fwd:{seed}:{i}")
    h, _ = _headers(inner, seed + 7919, i, ts - 86400 * inner.randint(1, 30), top=False)
    mh, body = _body_part(inner, seed, [], inner.choice(("plain", "alternative")))
    return CRLF.join(h + mh) + CRLF + CRLF + body


def make_message(seed: int, i: int) -> Message:
    """Message number i (0-based) of the mailbox of `seed`."""
    rng = random.Random(f"msg:{seed}:{i}")
    ts = _internaldate(seed, i)
    plant = ([TEXT_WORD] if text_planted(i) else []) + ([RARE_WORD] if rare_planted(i) else [])
    r = rng.random()
    kind = ("plain" if r < 0.55 else "alternative" if r < 0.76 else "related" if r < 0.79 else
            "mixed" if r < 0.91 else "large" if r < 0.925 else "forward" if r < 0.945 else "plain")
    headers, _ = _headers(rng, seed, i, ts)
    if kind in ("plain", "alternative", "related"):
        mime, body = _body_part(rng, seed, plant, kind)
    else:
        first = _body_part(rng, seed, plant, rng.choice(("plain", "plain", "alternative")))
        parts = [first]
        if kind == "mixed":
            parts += [_attachment(rng, rng.randint(5 * 1024, 40 * 1024)) for _ in range(rng.choice((1, 1, 2, 3)))]
        elif kind == "large":
            parts.append(_attachment(rng, int(100 * 1024 * (20.48 ** rng.random()))))  # 100 KiB - 2 MiB
        else:
            fwd = _forwarded(rng, seed, i, ts)
            parts.append(([b"Content-Type: message/rfc822", b'Content-Disposition: inline; filename="forwarded.eml"'],
                          fwd))
        mime, body = _multipart("mixed", rng, 0, parts)
    data = CRLF.join(headers + mime) + CRLF + CRLF + body
    planted = ([SUBJECT_WORD] if subject_planted(i) else []) + plant
    return Message(i, data, ts, _message_id(seed, i), kind, planted)


def generate(count: int = 10_000, seed: int = 1) -> Iterator[Message]:
    """The mailbox: messages 0 .. count-1, oldest first."""
    for i in range(count):
        yield make_message(seed, i)


# -- writers ----------------------------------------------------------------------------------------------


def maildir_name(m: Message, seed: int) -> str:
    """Dovecot's form: <time>.M<usec>P<pid>.<host>,S=<size>,W=<virtual size>:2,<flags>.  Dovecot gives new
    files UIDs in the order of the time in the name (then the M part), i.e. generation order; S= and W= are
    the same because the file already has CRLF line ends."""
    return f"{m.internaldate}.M{m.index:06d}P{seed}.bench,S={m.size},W={m.size}:2,"


def write_maildir(messages: Iterator[Message], path: Path, seed: int, uid: int = -1, gid: int = -1) -> dict[str, int]:
    """Each message a file in cur/ (not \\Recent, no flags), mtime = INTERNALDATE."""
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    n = total = 0
    for m in messages:
        f = path / "cur" / maildir_name(m, seed)
        f.write_bytes(m.data)
        os.utime(f, (m.internaldate, m.internaldate))
        if uid >= 0:
            os.chown(f, uid, gid)
        n += 1
        total += m.size
    if uid >= 0:
        for p in (path, path / "tmp", path / "new", path / "cur"):
            os.chown(p, uid, gid)
    return {"messages": n, "bytes": total}


def write_mbox(messages: Iterator[Message], path: Path) -> dict[str, int]:
    """mboxrd: a From_ line before each message, body lines matching ^>*From  quoted with one more '>'.
    The messages keep their CRLF line ends."""
    n = total = 0
    with open(path, "wb") as f:
        for m in messages:
            t = time.gmtime(m.internaldate)
            f.write(f"From MAILER-DAEMON {time.strftime('%a %b %d %H:%M:%S %Y', t)}\r\n".encode())
            for line in m.data.split(CRLF)[:-1]:
                if line.lstrip(b">").startswith(b"From "):
                    line = b">" + line
                f.write(line + CRLF)
            f.write(CRLF)
            n += 1
            total += m.size
    return {"messages": n, "bytes": total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.imap.mailgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10_000, help="messages (default: 10000)")
    p.add_argument("--seed", type=int, default=1, help="seed (default: 1)")
    p.add_argument("--out", type=Path, required=True, help="a Maildir directory, or the mbox file")
    p.add_argument("--format", choices=("maildir", "mbox"), default="maildir")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    msgs = generate(args.count, args.seed)
    stats = write_maildir(msgs, args.out, args.seed) if args.format == "maildir" else write_mbox(msgs, args.out)
    print(json.dumps({**stats, "seed": args.seed, "format": args.format, "out": str(args.out),
                      "seconds": round(time.perf_counter() - t0, 1), "expected_hits": expected_hits(args.count)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
