"""Configuration: one TOML file, every setting declared once.

Each `Setting` carries its TOML key ("section.name"), type, default, validator and one line of doc; loading,
validation, `fastmail check-config` and docs/config.md all come from the SETTINGS table.  A bad value stops
the start with "FILE: key: reason", one line per problem: every problem of the file is listed, not only the
first.  With no file at all, the defaults form the embedded dev server: high ports on 127.0.0.1, data in
./fastmail-data, a self-signed certificate made on first start.

Validation has three stages, all in `load()`:

1. each value: its type, then its validator (a range, a choice, a format: host names, addresses, URLs);
2. values together (`_check_together`): no two listeners on one address, tls.key only with tls.cert, ...;
3. what the host must provide (`fastmail.master.preflight`): server.user and server.group exist and can be switched
   to, the data folder can be made and reached by the workers' user, the certificate and key files load
   and belong together, the files that are read exist.

`fastmail serve` (at start and on every HUP) and `fastmail check-config` both load with ``serve=True``, which
runs all three: one code path, one verdict.  The other commands (users, domains, queue, DKIM keys) run
stage 1 only, so an operator can still manage accounts while a listener or certificate problem is fixed.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import ssl
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from fastmail.master.listeners import ListenerSpec


class ConfigError(Exception):
    """Configuration problems, worded for the operator: one 'FILE: key: reason' line each (`errors`)."""

    def __init__(self, *errors: str) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


class ConfigWarning(NamedTuple):
    """Allowed, but worth a line in the log (and in check-config's output)."""

    key: str
    reason: str
    event: str = "config_warning"
    fields: dict[str, Any] = {}


# -- validators of one value: raise ValueError(reason) ------------------------------------------------------


def _positive(v: Any) -> None:
    if v <= 0:
        raise ValueError("must be > 0")


def _at_least(n: int | float, why: str = "") -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if v < n:
            raise ValueError(f"must be at least {n}{' (' + why + ')' if why else ''}")

    return check


def _one_of(*choices: str) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")

    return check


def _addresses(v: Any) -> None:
    for item in v:
        parse_listen(item)


def in_networks(ip: str, networks: Any) -> bool:
    """Whether the address `ip` (text) lies in one of `networks` (ipaddress networks); not an address: False."""
    if not networks:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def _networks(v: Any) -> None:
    for item in v:
        ipaddress.ip_network(item, strict=False)


def _trusted_networks(v: Any) -> None:
    _networks(v)
    for item in v:
        if ipaddress.ip_network(item, strict=False).prefixlen == 0:
            raise ValueError(f"{item!r} is every address: that is an open relay")


def _port(v: Any) -> None:
    if not 0 < v < 65536:
        raise ValueError("must be a TCP port (1-65535)")


def short_repr(v: str) -> str:
    """repr() of a value quoted in a reason, cut to 40 characters."""
    return repr(v if len(v) <= 40 else v[:37] + "...")


_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


def check_hostname(name: str) -> None:
    """A host name as SMTP wants it in EHLO and Received: (RFC 5321 4.1.2 Domain, RFC 1123 2.1): dot-separated
    labels of letters, digits and inner hyphens, 1-63 characters each, 253 in all, no trailing dot, not an
    address.  Raises ValueError(reason), the reason worded to follow the name ("'x_y' has '_' ...")."""
    if not name:
        raise ValueError("is empty")
    if not name.isascii():
        raise ValueError("is not ASCII: write an internationalized name as its A-labels (xn--...)")
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        raise ValueError("is an IP address, not a host name (EHLO and Received: need a name)")
    if len(name) > 253:
        raise ValueError(f"is {len(name)} characters long (at most 253)")
    if name.endswith("."):
        raise ValueError("ends with '.'")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ValueError("has an empty label")
        if len(label) > 63:
            raise ValueError(f"has a label of {len(label)} characters (at most 63)")
        if "_" in label:
            raise ValueError(f"has '_' in label {label!r} (a host name has letters, digits and '-')")
        if not _LDH_LABEL.fullmatch(label):
            raise ValueError(f"has label {label!r}: a label is letters, digits and inner '-'")
    if labels[-1].isdigit():
        raise ValueError("ends with an all-digit label (an IP address is not a host name)")


def _hostname(v: Any) -> None:
    if v:
        try:
            check_hostname(v)
        except ValueError as e:
            raise ValueError(f"{short_repr(v)} {e}") from None


def _domains(leading_dot: bool = False) -> Callable[[Any], None]:
    """A list of domain names; with `leading_dot`, ".example.org" is allowed too."""

    def check(v: Any) -> None:
        for item in v:
            if not item:
                raise ValueError("an empty name in the list")
            _hostname(item[1:] if leading_dot and item.startswith(".") else item)

    return check


def _path(v: Any) -> None:
    if "\0" in v:
        raise ValueError("contains a NUL character")


def _required_path(v: Any) -> None:
    if not v:
        raise ValueError("must not be empty")
    _path(v)


def _account(v: Any) -> None:
    """A user or group name (or number) as the passwd and group files allow them."""
    if v and (v != v.strip() or any(c in v for c in ":/\0\n") or not v.isprintable()):
        raise ValueError(f"{v!r} cannot be a user or group name")


def _header_safe(v: Any) -> None:
    """A value sent in a protocol line or header field: no CR, LF or NUL."""
    if any(c in v for c in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL")


_TOKEN_SPECIALS = set('()<>@,;:\\"/[]?=')


def _token(v: Any) -> None:
    """An RFC 2045 token (the authserv-id of Authentication-Results, RFC 8601 2.5, in its plain form)."""
    if v and any(c in _TOKEN_SPECIALS or not c.isascii() or not c.isprintable() or c == " " for c in v):
        raise ValueError(f"{short_repr(v)}: no spaces, controls or ()<>@,;:\\\"/[]?= (a host name is usual)")


def _http_url(v: Any) -> None:
    if v:
        from fastmail.hygiene.rspamd import split_url  # not at the top: it imports this module's users

        try:
            split_url(v)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("rspamd URL ")) from None


def _clamd_address(v: Any) -> None:
    if v:
        from fastmail.hygiene.clamd import parse_address  # clamd imports split_hostport from here

        try:
            parse_address(v)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("clamd address ")) from None


def _mailbox_name(v: Any) -> None:
    from fastmail.store.mailboxes import MailboxError, check_name

    try:
        name = check_name(v)
    except MailboxError:
        raise ValueError(f"{v!r} cannot be a mailbox name (empty, an empty level, a control character, "
                         "'%' or '*', or too long)") from None
    if name == "INBOX":
        raise ValueError("must not be INBOX")


def _metrics_listen(v: Any) -> None:
    if v.startswith("unix:"):
        raise ValueError(f"{short_repr(v)}: the metrics endpoint is HOST:PORT (TCP)")
    if v:
        parse_listen(v)


def _cluster_node_name(v: Any) -> None:
    if v and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", v):
        raise ValueError(f"{short_repr(v)}: a node name is letters, digits, '-' and '_'")


def _cluster_nodes(v: Any) -> None:
    for name, address in v.items():
        _cluster_node_name(name)
        if not isinstance(address, str):
            raise ValueError(f"node {name}: the value is its IP address, a string")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"node {name}: {short_repr(address)} is not an IP address") from None


def _finite(v: Any) -> None:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")


def _all(*checks: Callable[[Any], None]) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        for c in checks:
            c(v)

    return check


def split_hostport(v: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port', '[v6]' -> (host, port)."""
    host, port = v, ""
    if v.startswith("["):
        host, _, port = v[1:].partition("]")
        port = port.removeprefix(":")
    elif v.count(":") == 1:
        host, _, port = v.partition(":")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"{v!r}: expected HOST[:PORT]")
    return host, int(port) if port else default_port


def _relayhost(v: Any) -> None:
    if v:
        host, _ = split_hostport(v, 25)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            _hostname(host)


def _nameserver(v: Any) -> None:
    if not v:
        return
    host, port = v, ""
    if v.startswith("["):
        host, _, port = v[1:].partition("]")
        port = port.removeprefix(":")
    elif v.count(":") == 1:
        host, _, port = v.partition(":")
    ipaddress.ip_address(host)
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{v!r}: bad port")


# sun_path of struct sockaddr_un holds 108 bytes on Linux, the terminating NUL included.
UNIX_PATH_MAX = 107


def parse_listen(item: str) -> tuple[str, int] | str:
    """'127.0.0.1:25', '[::1]:25', ':25' or 'unix:/path'.

    ':25' (host "") is every address, IPv4 and IPv6: one dual-stack socket on '::' with IPV6_V6ONLY off
    (0.0.0.0 on a host without IPv6).  '[::]:25' is every IPv6 address only (IPV6_V6ONLY on), so that it
    goes with '0.0.0.0:25' as two listeners (fastmail.master.listeners)."""
    if item.startswith("unix:"):
        path = item[5:]
        if not path:
            raise ValueError(f"{item!r}: empty unix socket path")
        if "\0" in path:
            raise ValueError(f"{item!r}: NUL in the unix socket path")
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise ValueError(f"{item!r}: a unix socket path is at most {UNIX_PATH_MAX} bytes")
        return path
    host, sep, port_s = item.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ValueError(f"{item!r}: expected HOST:PORT or unix:PATH")
    port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"{item!r}: port out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"{item!r}: empty IPv6 address (':PORT' is every address, '[::]:PORT' every IPv6 one)")
    if host == "":
        return ("", port)
    if host not in ("localhost",):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r}: host must be an IP address") from None
    return (host, port)


@dataclass(frozen=True)
class Setting:
    key: str
    type: type | tuple[type, ...]
    default: Any
    doc: str
    validate: Callable[[Any], None] | None = None
    path: bool = False  # a file or folder: relative to the config file's folder


# The TLS 1.2 cipher policy (tls.ciphers; docs/operations.md "TLS policy"): forward secrecy (ECDHE) and AEAD
# only (AES-GCM, ChaCha20-Poly1305) — no RSA key exchange, no CBC, no SHA-1 MACs, no anonymous or null
# suites: what Mozilla's "intermediate" profile keeps for TLS 1.2 (RFC 9325 §4.2).  TLS 1.3's suites are
# all AEAD with forward secrecy and are not touched by it.
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1"


def _tls_ciphers(v: Any) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
    except ssl.SSLError:
        raise ValueError("OpenSSL selects no cipher from it") from None


_CPUS = os.cpu_count() or 1
MiB = 1024 * 1024

SETTINGS: tuple[Setting, ...] = (
    # server
    Setting("server.hostname", str, "", "Name announced in greetings, EHLO and Received: headers: a host name, not an IP address (default: the FQDN).", _hostname),
    Setting("server.data_dir", str, "./fastmail-data", "Folder holding the LMDB index, message segments, queue and TLS files (made on first start; the workers' user must reach it).", _required_path, path=True),
    Setting("server.workers", int, _CPUS, "Number of worker processes (default: CPU count).", _positive),
    Setting("server.user", str, "", "User (name or uid) the workers become after binding; switching needs a master started as root (empty: stay who started fastmail, a warning when that is root).", _account),
    Setting("server.group", str, "", "Group (name or gid) of the workers, with server.user (default: that user's primary group).", _account),
    Setting("server.grace_period", float, 10.0, "Seconds sessions get to finish on TERM or HUP.", _positive),
    Setting("server.worker_timeout", float, 30.0, "Seconds without heartbeat before a worker is killed and replaced.", _at_least(2)),
    Setting("server.pid_file", str, "", "Write the master's pid here; its folder must exist (empty: none).", _path, path=True),
    Setting("server.backlog", int, 1024, "Listen backlog of every socket (connections waiting for accept).", _at_least(16)),
    Setting("server.max_connections", int, 0, "Connections one worker holds at once, all listeners together (more get 421 4.3.2, BYE [UNAVAILABLE] or -ERR [SYS/TEMP] and are closed); 0: as many as its file-descriptor limit allows (the soft RLIMIT_NOFILE, which the master raises to the hard limit, less 256).", _at_least(0)),
    Setting("server.map_size_mb", int, 1024, "Initial LMDB map size in MiB (grown on demand).", _at_least(16)),
    Setting("server.demo", bool, False, "Create a demo domain and user on first start (on by default without a config file)."),
    # listeners
    Setting("listen.smtp", list, ["127.0.0.1:2525"], "SMTP (MTA, port 25 in production) addresses.", _addresses),
    Setting("listen.submission", list, ["127.0.0.1:2587"], "Submission with STARTTLS (587 in production).", _addresses),
    Setting("listen.submissions", list, ["127.0.0.1:2465"], "Submission over implicit TLS (465 in production).", _addresses),
    Setting("listen.lmtp", list, ["127.0.0.1:2424"], "LMTP addresses (TCP HOST:PORT or unix:PATH).", _addresses),
    Setting("listen.imap", list, ["127.0.0.1:1143"], "IMAP with STARTTLS (143 in production).", _addresses),
    Setting("listen.imaps", list, ["127.0.0.1:1993"], "IMAP over implicit TLS (993 in production).", _addresses),
    Setting("listen.pop3", list, ["127.0.0.1:1110"], "POP3 with STLS (110 in production).", _addresses),
    Setting("listen.pop3s", list, ["127.0.0.1:1995"], "POP3 over implicit TLS (995 in production).", _addresses),
    # tls
    Setting("tls.cert", str, "", "PEM certificate chain, checked at start with its key (empty: a self-signed one in DATA_DIR/tls, made on first start).", _path, path=True),
    Setting("tls.key", str, "", "PEM private key of tls.cert, without passphrase (empty: the key is in tls.cert's file).", _path, path=True),
    Setting("tls.min_version", str, "1.2", "Oldest TLS version the listeners accept: '1.2' or '1.3' (TLS 1.0 and 1.1 never, RFC 8996).", _one_of("1.2", "1.3")),
    Setting("tls.ciphers", str, TLS_CIPHERS, "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are all AEAD with forward secrecy); the default is ECDHE with AES-GCM or ChaCha20-Poly1305 only.", _tls_ciphers),
    # smtp
    Setting("smtp.max_line_length", int, 4096, "Longest command line accepted, in bytes.", _at_least(512, "RFC 5321 4.5.3.1.4")),
    Setting("smtp.max_recipients", int, 100, "Recipients per message.", _at_least(100, "RFC 5321 4.5.3.1.8")),
    Setting("smtp.max_message_size", int, 50 * MiB, "Largest message accepted, in bytes (advertised as SIZE).", _at_least(64 * 1024)),
    Setting("smtp.max_errors", int, 10, "Protocol errors before the session is closed.", _positive),
    Setting("smtp.command_timeout", float, 300.0, "Seconds to wait for a command (RFC 5321 4.5.3.2.7: 5 minutes).", _positive),
    Setting("smtp.data_timeout", float, 180.0, "Seconds to wait for each block of DATA (RFC 5321 4.5.3.2.5: 3 minutes).", _positive),
    Setting("smtp.bare_lf", str, "normalize", "Bare LF in DATA: 'normalize' (store as CRLF; never ends DATA) or 'reject' (554 5.6.0).", _one_of("normalize", "reject")),
    Setting("smtp.trusted_networks", list, [], "Client networks allowed to relay without AUTH (CIDR list; never all of 0.0.0.0/0 or ::/0).", _trusted_networks),
    Setting("smtp.sender_login_match", bool, True, "Authenticated senders may only use their own addresses and aliases in MAIL FROM."),
    Setting("smtp.auth_plaintext_without_tls", bool, False, "Allow AUTH on a connection without TLS (tests/loopback only)."),
    Setting("smtp.max_connections_per_ip", int, 200, "SMTP and submission connections one client address may hold at once in one worker (more get 421 4.7.0); not LMTP, smtp.trusted_networks or cluster.proxies; 0: no limit.", _at_least(0)),
    Setting("smtp.greeting_delay", float, 0.0, "Seconds the SMTP listener waits before its greeting (not submission, LMTP, trusted networks); a client that talks first gets 554 5.5.1 and is disconnected.", _at_least(0)),
    # imap
    Setting("imap.max_line_length", int, 64 * 1024, "Longest IMAP command line (literals excluded), in bytes.", _at_least(8192, "RFC 7162 4")),
    Setting("imap.max_message_size", int, 50 * MiB, "Largest APPEND, in bytes (advertised as APPENDLIMIT; larger literals are refused before they are sent).", _at_least(64 * 1024)),
    Setting("imap.idle_timeout", float, 1800.0, "Seconds without a command (or in IDLE) before autologout (RFC 9051 5.4: at least 30 minutes).", _positive),
    Setting("imap.command_timeout", float, 300.0, "Seconds to finish a command once its first bytes came (a literal in progress).", _positive),
    Setting("imap.plaintext_auth_loopback", bool, True, "Allow LOGIN / AUTHENTICATE PLAIN without TLS from loopback clients (elsewhere TLS is required: LOGINDISABLED)."),
    Setting("imap.max_bad_commands", int, 20, "Invalid commands (BAD) before the session is closed.", _positive),
    Setting("imap.max_login_failures", int, 10, "Failed logins from one client address within 10 minutes before a worker refuses its logins (NO [UNAVAILABLE]); 0: no limit.", _at_least(0)),
    Setting("imap.max_connections_per_ip", int, 200, "IMAP connections one client address may hold in one worker (more get BYE [UNAVAILABLE]); 0: no limit.", _at_least(0)),
    Setting("imap.max_sessions_per_user", int, 100, "Logged-in IMAP sessions one user may hold in one worker (more get NO [LIMIT]); 0: no limit.", _at_least(0)),
    Setting("imap.change_poll_interval", float, 0.25, "Seconds between a worker's looks at the change log (IDLE sessions hear of changes this fast).", _positive),
    # pop3
    Setting("pop3.idle_timeout", float, 600.0, "Seconds without a command before autologout, removing nothing (RFC 1939 3: at least 10 minutes).", _positive),
    Setting("pop3.plaintext_auth_loopback", bool, True, "Allow USER/PASS and AUTH without TLS from loopback clients (elsewhere STLS or POP3S is required)."),
    Setting("pop3.max_errors", int, 20, "Failed commands (-ERR) before the session is closed.", _positive),
    Setting("pop3.login_delay", int, 0, "Seconds a user must wait between two POP3 logins (RFC 2449 LOGIN-DELAY, advertised in CAPA; earlier logins get -ERR [LOGIN-DELAY]); 0: none.", _at_least(0)),
    Setting("pop3.max_connections_per_ip", int, 200, "POP3 connections one client address may hold at once in one worker (more get -ERR [SYS/TEMP]); not cluster.proxies; 0: no limit.", _at_least(0)),
    Setting("pop3.max_login_failures", int, 10, "Failed logins from one client address within 10 minutes before a worker refuses its logins ([SYS/TEMP]); 0: no limit.", _at_least(0)),
    # metrics (docs/operations.md "Metrics")
    Setting("metrics.listen", str, "", "HOST:PORT where the metrics process answers GET /metrics (Prometheus text format; plain HTTP, no authentication: keep it on a private address); empty: no metrics (the embedded dev server: 127.0.0.1:9525).", _metrics_listen),
    # delivery (outbound queue)
    Setting("delivery.processes", int, 1, "Delivery processes running the outbound queue (each owns a share of the queue ids); 0: none (mail for other hosts waits in the queue).", _at_least(0)),
    Setting("delivery.resolver", str, "", "DNS server for MX/A/AAAA lookups, ADDRESS[:PORT] ('[v6]:PORT' for IPv6); empty: the system resolver.", _nameserver),
    Setting("delivery.dns_timeout", float, 5.0, "Seconds to wait for one DNS answer (two tries).", _positive),
    Setting("delivery.port", int, 25, "TCP port of the remote mail exchangers (25; other values are for tests).", _port),
    Setting("delivery.retry_base", float, 300.0, "Seconds before the first retry after a temporary failure; doubled after each failed attempt.", _positive),
    Setting("delivery.retry_max", float, 3600.0, "Longest delay between two attempts, in seconds (at least delivery.retry_base).", _positive),
    Setting("delivery.lifetime", float, 5 * 86400.0, "Seconds a message may stay in the queue; then what is still undelivered is bounced (RFC 5321 4.5.4.1: 4-5 days).", _positive),
    Setting("delivery.delay_warning", float, 4 * 3600.0, "Seconds after arrival when a sender whose message is still being retried gets one 'delayed' notice (RFC 3464; NOTIFY without DELAY: none); 0: never.", _at_least(0)),
    Setting("delivery.max_connections", int, 100, "Outbound SMTP connections of one delivery process, all destinations together.", _positive),
    Setting("delivery.max_connections_per_domain", int, 10, "Outbound SMTP connections to one destination domain at once.", _positive),
    Setting("delivery.connection_reuse_time", float, 2.0, "Seconds an idle outbound connection stays open for the next message to the same destination.", _at_least(0)),
    Setting("delivery.connect_timeout", float, 30.0, "Seconds to wait for a TCP connection to a mail exchanger.", _positive),
    Setting("delivery.timeout_scale", float, 1.0, "Factor applied to the RFC 5321 4.5.3.2 reply timeouts (5 min for MAIL/RCPT, 10 min after the data...).", _positive),
    Setting("delivery.starttls", bool, True, "Use STARTTLS when the remote server offers it (opportunistic, unauthenticated: RFC 7435)."),
    Setting("delivery.require_tls_domains", list, [], "Destination domains that get mail only over STARTTLS (not offered: retry later, then bounce).", _domains()),
    Setting("delivery.mta_sts", bool, True, "Honour destinations' MTA-STS policies (RFC 8461): under 'enforce', only listed MX hosts, over STARTTLS with a valid certificate."),
    Setting("delivery.mta_sts_port", int, 443, "HTTPS port of mta-sts.DOMAIN policy hosts (443; other values are for tests).", _port),
    Setting("delivery.tls_ca_file", str, "", "CA certificates (PEM) that authenticate MTA-STS policy hosts and MX hosts under an enforced policy (empty: the system's).", _path, path=True),
    Setting("delivery.srs", bool, True, "Forwarded mail (alias to an external address) leaves with an SRS0 envelope sender at the alias's domain; mail to such addresses goes back to the original sender."),
    Setting("delivery.relayhost", str, "", "Smarthost: send all outbound mail to HOST[:PORT] ('[v6]:PORT') instead of the recipients' MX (port 25 by default); empty: MX routing.", _relayhost),
    Setting("delivery.relayhost_user", str, "", "User name for AUTH at the smarthost, with delivery.relayhost_password_file (then STARTTLS is required: credentials never go in plain text).", _header_safe),
    Setting("delivery.relayhost_password_file", str, "", "File whose first line is the smarthost password (read before privileges are dropped).", _path, path=True),
    # checks of incoming mail (issue #7): on the SMTP listener only, never for submission, LMTP or trusted networks
    Setting("checks.enabled", bool, False, "Check mail received on the SMTP listener: SPF, DKIM, DMARC, ARC, FCrDNS and the DNSBL zones; results go in one Authentication-Results header."),
    Setting("checks.resolver", str, "", "DNS server for the checks, ADDRESS[:PORT]; empty: delivery.resolver (or the system resolver).", _nameserver),
    Setting("checks.dns_timeout", float, 5.0, "Seconds to wait for one DNS answer of a check.", _positive),
    Setting("checks.timeout", float, 20.0, "Seconds all checks of one message may take together; what has not answered by then is temperror.", _positive),
    Setting("checks.fail_open", bool, True, "A check that cannot answer (DNS temperror, timeout): accept the message with the temperror recorded; false: 451 4.7.0 (the sender retries)."),
    Setting("checks.authserv_id", str, "", "The authserv-id of our Authentication-Results header, a token (default: server.hostname); incoming A-R headers claiming it are removed.", _token),
    Setting("checks.dmarc_enforce", bool, True, "Honour DMARC policies: p=reject gets 550 5.7.1, p=quarantine goes to the Junk folder; false: only record the result."),
    Setting("checks.spf_reject", bool, False, "Refuse SPF 'fail' with 550 5.7.23 (otherwise it only counts towards DMARC and the header)."),
    Setting("checks.fcrdns", str, "tag", "Forward-confirmed reverse DNS of the client: 'tag' (recorded), 'junk' (failures go to Junk), 'reject' (550 5.7.25) or 'off'.", _one_of("tag", "junk", "reject", "off")),
    Setting("checks.dnsbl", list, [], "DNS block list zones for the client address (e.g. zen.spamhaus.org): a listed client gets 554 5.7.1.", _domains()),
    Setting("checks.dnswl", list, [], "DNS allow list zones: a listed client skips the DNSBL, greylisting and the spam filter's reject.", _domains()),
    Setting("greylist.enabled", bool, False, "Greylisting: the first message of an unknown (client /24, sender, recipient) triplet gets 451 4.7.1 at RCPT."),
    Setting("greylist.delay", float, 300.0, "Seconds before a retry of a greylisted triplet is accepted.", _at_least(0)),
    Setting("greylist.expire", float, 4 * 3600.0, "Seconds a greylisted triplet waits for its retry before it is forgotten (longer than greylist.delay).", _positive),
    Setting("greylist.auto_whitelist", int, 5, "Messages accepted after greylisting before a client network is no longer greylisted; 0: never.", _at_least(0)),
    Setting("greylist.whitelist", list, [], "Client networks (CIDR) never greylisted.", _networks),
    Setting("greylist.whitelist_domains", list, [], "Envelope sender domains (and their subdomains) never greylisted.", _domains(leading_dot=True)),
    Setting("greylist.retain", float, 36 * 86400.0, "Seconds a triplet that passed, or an auto-whitelisted client network, is remembered after its last message (RFC 6647 4.2.2: about a month).", _positive),
    Setting("rspamd.url", str, "", "rspamd's normal worker, e.g. http://127.0.0.1:11333 (its /checkv2 protocol); empty: no spam filter.", _http_url),
    Setting("rspamd.timeout", float, 15.0, "Seconds to wait for rspamd's verdict.", _positive),
    Setting("rspamd.fail_open", bool, True, "rspamd unreachable or slow: accept unfiltered; false: 451 4.7.0."),
    Setting("rspamd.learn", bool, False, "Moving a message into / out of Junk over IMAP teaches rspamd spam / ham (needs its controller, rspamd.controller_url)."),
    Setting("rspamd.controller_url", str, "", "rspamd's controller worker for learning, e.g. http://127.0.0.1:11334.", _http_url),
    Setting("rspamd.password", str, "", "The controller's password (Password header), if it has one.", _header_safe),
    Setting("spam.reject_score", float, 15.0, "A spam score at or above this: 550 5.7.1 at DATA (nothing stored).", _finite),
    Setting("spam.reject_action", str, "reject", "What happens to mail rspamd wants rejected (or at spam.reject_score): 'reject' (550 5.7.1, nothing stored) or 'junk' (delivered to the Junk folder).", _one_of("reject", "junk")),
    Setting("spam.junk_score", float, 6.0, "A spam score at or above this (and below spam.reject_score): delivered to the Junk folder with X-Spam-* headers.", _finite),
    Setting("spam.junk_folder", str, "Junk", "Folder that gets junk mail (created with \\Junk when missing).", _mailbox_name),
    Setting("clamav.address", str, "", "clamd: unix:/PATH or HOST:PORT (INSTREAM); empty: no virus scan.", _clamd_address),
    Setting("clamav.timeout", float, 30.0, "Seconds to wait for clamd's verdict.", _positive),
    Setting("clamav.max_size", int, 25 * MiB, "Messages larger than this are not sent to clamd and go on unscanned (logged virus=too_big), as do those clamd refuses as over its StreamMaxLength (Debian's clamd.conf: 25M); 0: send every message.", _at_least(0)),
    Setting("clamav.fail_open", bool, False, "clamd unreachable or slow: accept unscanned; false (default): 451 4.7.0."),
    Setting("dkim.sign", bool, True, "Sign mail from authenticated senders with the From domain's keys in dkim.key_dir (ed25519 and rsa-sha256), when it has any."),
    Setting("dkim.key_dir", str, "", "Folder of DKIM private keys, DOMAIN/SELECTOR.pem (`fastmail dkim keygen`); empty: DATA_DIR/dkim.", _path, path=True),
    Setting("ratelimit.connections_per_ip", int, 0, "Connections one client address (an IPv6 /64) may open per ratelimit.connection_window on the SMTP and submission listeners (more get 421 4.7.0); 0: no limit.", _at_least(0)),
    Setting("ratelimit.connection_window", float, 60.0, "Seconds over which ratelimit.connections_per_ip counts (a sliding window).", _positive),
    Setting("ratelimit.messages_per_ip", int, 0, "Messages one client address (an IPv6 /64) may send without AUTH per ratelimit.message_window (more get 451 4.7.1 at MAIL); 0: no limit.", _at_least(0)),
    Setting("ratelimit.messages_per_user", int, 0, "Messages one authenticated user may submit per ratelimit.message_window (more get 451 4.7.1 at MAIL); 0: no limit.", _at_least(0)),
    Setting("ratelimit.message_window", float, 3600.0, "Seconds over which the message limits count (a sliding window).", _positive),
    # cluster (docs/scaling.md): one file shared by every node; each node finds its own name
    Setting("cluster.nodes", dict, {}, "Mailbox nodes, name = \"IP address\" (a [cluster.nodes] table); users are placed on one with `fastmail user move`; empty: no cluster.", _cluster_nodes),
    Setting("cluster.node", str, "", "This node's name in cluster.nodes (empty: the node whose address is on this host; none: an MX or proxy-only node).", _cluster_node_name),
    Setting("cluster.lmtp_port", int, 24, "LMTP port of every mailbox node (MX nodes deliver there).", _port),
    Setting("cluster.imap_port", int, 143, "IMAP port of every mailbox node (the proxy connects there).", _port),
    Setting("cluster.pop3_port", int, 110, "POP3 port of every mailbox node (the proxy connects there).", _port),
    Setting("cluster.submission_port", int, 587, "Submission port of every mailbox node (the proxy connects there with XCLIENT).", _port),
    Setting("cluster.proxies", list, [], "Networks (CIDR) of the mail proxies (nginx): only they may use XCLIENT and the auth_http endpoint.", _networks),
    Setting("cluster.auth_http_listen", list, [], "Addresses of the nginx auth_http endpoint (HOST:PORT); empty: none.", _addresses),
    Setting("cluster.ticket_key_file", str, "", "File with a secret shared by every node (at least 32 bytes, e.g. from /dev/urandom, base64): auth_http then gives nginx a one-minute login ticket for the node, which checks its HMAC instead of the password's argon2id again; empty: the node checks the password again.", _path, path=True),
    # failed logins (fastmail.hygiene.authfail): SMTP AUTH, IMAP LOGIN/AUTHENTICATE, POP3 USER/PASS and AUTH
    Setting("auth.failure_delay", float, 1.0, "Seconds a failed login waits for its answer.", _at_least(0)),
    Setting("auth.throttle_delay", float, 1.0, "After a failed login, every login from that client address (an IPv6 /64) or for that account waits this long before its password is checked, doubled with each further failure (up to auth.throttle_max_delay); 0: no throttle.", _at_least(0)),
    Setting("auth.throttle_max_delay", float, 15.0, "Longest wait of auth.throttle_delay, in seconds.", _at_least(0)),
    Setting("auth.throttle_window", float, 900.0, "Seconds after the last failure when the failures of an address or account are forgotten (a successful login forgets them at once).", _positive),
)


_BY_KEY = {s.key: s for s in SETTINGS}
_ORDER = {s.key: i for i, s in enumerate(SETTINGS)}
LISTENERS = ("smtp", "submission", "submissions", "lmtp", "imap", "imaps", "pop3", "pop3s")


class Config:
    """Settings as attributes: config.smtp_max_line_length for 'smtp.max_line_length'."""

    source: str
    warnings: list[ConfigWarning]

    if TYPE_CHECKING:  # the attributes come from SETTINGS; check-config and the tests catch a wrong name

        def __getattr__(self, name: str) -> Any: ...

    def __init__(self, values: dict[str, Any], source: str = "<defaults>") -> None:
        self.source = source
        self.warnings = []
        self._tls: tuple[ssl.SSLContext | None] | None = None  # server_tls(), once loaded
        self._relay_password: tuple[str | None] | None = None  # relay_password(), once read
        for key, value in values.items():
            setattr(self, key.replace(".", "_"), value)

    def server_tls(self) -> ssl.SSLContext | None:
        """The server's TLS context made from ``tls_files``, loaded once per Config object: the master loads
        it at start and at each reload (fastmail.cli), and every child it forks with this Config inherits
        that context instead of reading the files again.  So a worker respawned after a reload that failed
        (the files on disk broken) serves the certificate of the last good load.  None when no certificate
        is configured and the self-signed one does not exist.  Raises fastmail.tlsfiles.TLSLoadError (the
        file and the reason); a failed load is tried again on the next call."""
        if self._tls is None:
            from fastmail.tlsfiles import server_context

            cert, key = self.tls_files
            if not self.tls_cert and not cert.exists():
                self._tls = (None,)
            else:
                self._tls = (server_context(cert, key, self.tls_min_version, self.tls_ciphers),)
        return self._tls[0]

    def relay_password(self) -> str | None:
        """The smarthost password: the first line of ``delivery.relayhost_password_file``, read once per
        Config object like ``server_tls`` (the master reads it at start and at each reload), so a delivery
        process respawned after a reload that failed uses the password of the last good load and never
        depends on the file as it is now.  None when no file is configured.  Raises OSError."""
        if self._relay_password is None:
            password = None
            if self.delivery_relayhost_password_file:
                with open(self.delivery_relayhost_password_file) as f:
                    password = f.readline().rstrip("\r\n")
            self._relay_password = (password,)
        return self._relay_password[0]

    # -- the master's view (fastmail.master.arbiter duck-types these) --
    @property
    def workers(self) -> int:
        return int(self.server_workers)

    @property
    def user(self) -> str:
        return str(self.server_user)

    @property
    def group(self) -> str:
        return str(self.server_group)

    @property
    def grace_period(self) -> float:
        return float(self.server_grace_period)

    @property
    def worker_timeout(self) -> float:
        return float(self.server_worker_timeout)

    @property
    def backlog(self) -> int:
        return int(self.server_backlog)

    @property
    def pid_file(self) -> str:
        return str(self.server_pid_file)

    @property
    def extra_counts(self) -> dict[str, int]:
        """Processes per extra kind (the arbiter's duck-typed view)."""
        return {"delivery": int(self.delivery_processes), "metrics": 1 if self.metrics_listen else 0}

    @property
    def hostname(self) -> str:
        return self.server_hostname or socket.getfqdn()

    @property
    def data_dir(self) -> Path:
        return Path(self.server_data_dir).resolve()

    @property
    def listeners(self) -> list[ListenerSpec]:
        specs = []
        for name in LISTENERS:
            for i, item in enumerate(getattr(self, f"listen_{name}")):
                address = parse_listen(item)
                specs.append(ListenerSpec(name if i == 0 else f"{name}#{i}", address))
        for i, item in enumerate(self.cluster_auth_http_listen):  # nginx's auth_http (fastmail.cluster)
            specs.append(ListenerSpec("auth_http" if i == 0 else f"auth_http#{i}", parse_listen(item)))
        return specs

    @property
    def dkim_keys(self) -> Path:
        return Path(self.dkim_key_dir) if self.dkim_key_dir else self.data_dir / "dkim"

    @property
    def checks_nameserver(self) -> str:
        return str(self.checks_resolver or self.delivery_resolver)

    @property
    def tls_files(self) -> tuple[Path, Path]:
        if self.tls_cert:
            return Path(self.tls_cert), Path(self.tls_key or self.tls_cert)
        tls = self.data_dir / "tls"
        return tls / "cert.pem", tls / "key.pem"


def _check_type(setting: Setting, value: Any) -> Any:
    if setting.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if setting.type is int and isinstance(value, bool):
        raise ValueError("must be an integer")
    if not isinstance(value, setting.type):
        want = setting.type.__name__ if isinstance(setting.type, type) else "/".join(t.__name__ for t in setting.type)
        raise ValueError(f"must be of type {want}, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):  # TOML has inf and nan
        raise ValueError("must be a finite number")
    if isinstance(value, list) and not all(isinstance(x, str) for x in value):
        raise ValueError("must be a list of strings")
    return value


# -- stage 2: values together ------------------------------------------------------------------------------

Problems = list[tuple[str, str]]  # (key, reason)


def _ips(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if host == "localhost":
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    if host == "":  # ":PORT": both wildcards (one dual-stack socket)
        return [ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")]
    return [ipaddress.ip_address(host)]


def _overlap(a: tuple[str, int] | str, b: tuple[str, int] | str) -> bool:
    """Would the two listeners take the same connections?  A wildcard address takes its port on every
    address of its family (an IPv6 listener such as "[::]:25" is IPv6-only: fastmail.master.listeners sets
    IPV6_V6ONLY); ":25" takes it on every address of both."""
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and os.path.abspath(a) == os.path.abspath(b)
    if a[1] != b[1]:
        return False
    return any(x.version == y.version and (x == y or x.is_unspecified or y.is_unspecified)
               for x in _ips(a[0]) for y in _ips(b[0]))


def _check_listeners(values: dict[str, Any], bad: set[str]) -> Problems:
    """No two listeners take the same connections (with SO_REUSEPORT the kernel would let both bind and
    spread one port's clients over two protocols)."""
    problems: Problems = []
    seen: list[tuple[str, str, tuple[str, int] | str]] = []
    for name in LISTENERS:
        key = f"listen.{name}"
        if key in bad:
            continue
        for item in values[key]:
            address = parse_listen(item)
            for other_key, other_item, other in seen:
                if _overlap(address, other):
                    if other_key == key and other_item == item:
                        reason = f"{item!r} is listed twice"
                    elif other_item == item:
                        reason = f"{item!r} is also in {other_key}"
                    else:
                        reason = f"{item!r} overlaps {other_item!r} of {other_key} (the same port)"
                    problems.append((key, reason))
                    break
            else:
                seen.append((key, item, address))
    metrics = values.get("metrics.listen")
    if metrics and "metrics.listen" not in bad:
        address = parse_listen(metrics)
        for other_key, other_item, other in seen:
            if _overlap(address, other):
                problems.append(("metrics.listen", f"{metrics!r} overlaps {other_item!r} of {other_key} (the same port)"))
                break
    return problems


# (key reported, the other keys it is checked with, reason or None): one rule each, run only when none of
# its keys has a problem of its own.
_RULES: tuple[tuple[str, tuple[str, ...], Callable[[dict[str, Any]], str | None]], ...] = (
    ("server.group", ("server.user",), lambda v: "is set but server.user is not (the group is for the user "
     "the workers become)" if v["server.group"] and not v["server.user"] else None),
    ("tls.key", ("tls.cert",), lambda v: "is set but tls.cert is not (set both, or neither for the "
     "self-signed certificate)" if v["tls.key"] and not v["tls.cert"] else None),
    ("delivery.relayhost_user", ("delivery.relayhost",), lambda v: "is set but delivery.relayhost is not"
     if v["delivery.relayhost_user"] and not v["delivery.relayhost"] else None),
    ("delivery.relayhost_user", ("delivery.relayhost_password_file",), lambda v: "needs "
     "delivery.relayhost_password_file (the password)"
     if v["delivery.relayhost_user"] and not v["delivery.relayhost_password_file"] else None),
    ("delivery.relayhost_password_file", ("delivery.relayhost_user",), lambda v: "is set but "
     "delivery.relayhost_user is not" if v["delivery.relayhost_password_file"] and not v["delivery.relayhost_user"]
     else None),
    ("delivery.retry_max", ("delivery.retry_base",), lambda v: f"{v['delivery.retry_max']} is less than "
     f"delivery.retry_base ({v['delivery.retry_base']})" if v["delivery.retry_max"] < v["delivery.retry_base"]
     else None),
    ("greylist.expire", ("greylist.delay",), lambda v: f"must be longer than greylist.delay "
     f"({v['greylist.delay']} s): no retry could pass" if v["greylist.expire"] <= v["greylist.delay"] else None),
    ("spam.junk_score", ("spam.reject_score",), lambda v: f"{v['spam.junk_score']} is above spam.reject_score "
     f"({v['spam.reject_score']}): nothing would go to Junk" if v["spam.junk_score"] > v["spam.reject_score"]
     else None),
    ("cluster.auth_http_listen", tuple(f"listen.{n}" for n in LISTENERS), lambda v: next(
        (f"{a!r} overlaps {b!r} of listen.{n} (the same port)" for a in v["cluster.auth_http_listen"] for n in LISTENERS
         for b in v[f"listen.{n}"] if _overlap(parse_listen(a), parse_listen(b))), None)),
    ("cluster.node", ("cluster.nodes",), lambda v: f"{short_repr(v['cluster.node'])} is not in cluster.nodes"
     if v["cluster.node"] and v["cluster.node"] not in v["cluster.nodes"] else None),
    ("rspamd.learn", ("rspamd.controller_url",), lambda v: "needs rspamd.controller_url"
     if v["rspamd.learn"] and not v["rspamd.controller_url"] else None),
)


def _check_together(values: dict[str, Any], bad: set[str]) -> Problems:
    """Stage 2: settings that only make sense with others."""
    problems = _check_listeners(values, bad)
    for key, others, rule in _RULES:
        if key not in bad and not bad.intersection(others):
            reason = rule(values)
            if reason:
                problems.append((key, reason))
    return problems


# Allowed (Postfix, too, shortens its timeouts under stress), but below what the RFC asks.
_RFC_FLOORS = (
    ("smtp.command_timeout", 300.0, "RFC 5321 4.5.3.2.7"),
    ("smtp.data_timeout", 180.0, "RFC 5321 4.5.3.2.5"),
    ("imap.idle_timeout", 1800.0, "RFC 9051 5.4"),
)


def _static_warnings(values: dict[str, Any]) -> list[ConfigWarning]:
    return [ConfigWarning(key, f"{values[key]} s is below the {floor} s of {rfc}", "config_below_rfc",
                          {"value": values[key], "rfc_minimum": floor})
            for key, floor, rfc in _RFC_FLOORS if values[key] < floor]


# -- loading -----------------------------------------------------------------------------------------------


def load(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None, *,
         serve: bool = False) -> Config:
    """Read, validate and return the configuration.  No path: the embedded dev defaults (demo on).

    Every problem found is reported at once: ConfigError.errors holds one "FILE: key: reason" line each.
    ``serve``: check the values together and the host too (users, files, certificates: stages 2 and 3), as
    `serve` and `check-config` do.
    """
    values = {s.key: s.default for s in SETTINGS}
    source = "<defaults>"
    raw: dict[str, Any] = {}
    if path is None:
        values["server.demo"] = True
        values["metrics.listen"] = "127.0.0.1:9525"  # the embedded dev server has its metrics on
    else:
        source = str(path)
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a folder, not a file") from None
        except PermissionError:
            raise ConfigError(f"{source}: permission denied") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: TOML syntax: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not UTF-8 text") from None
    problems: Problems = []
    flat: dict[str, Any] = {}
    for section, table in raw.items():
        if not isinstance(table, dict):
            problems.append((section, "expected a [section] table"))
            continue
        for name, value in table.items():
            flat[f"{section}.{name}"] = value
    flat.update(overrides or {})
    bad: set[str] = set()
    for key, value in flat.items():
        setting = _BY_KEY.get(key)
        if setting is None:
            problems.append((key, "unknown setting"))
            continue
        try:
            value = _check_type(setting, value)
            if setting.validate:
                setting.validate(value)
        except ValueError as e:
            problems.append((key, str(e)))
            bad.add(key)
            continue
        values[key] = value
    if path is not None:
        # A relative path in a file is relative to that file, not to wherever fastmail was started.
        base = Path(path).resolve().parent
        for s in SETTINGS:
            if s.path and values[s.key] and not os.path.isabs(values[s.key]):
                values[s.key] = str(base / values[s.key])
    cfg = Config(values, source)
    cfg.warnings = _static_warnings(values)
    if serve:
        found = _check_together(values, bad)
        problems += found
        bad.update(k for k, _ in found)
        from fastmail.master.preflight import SystemChecks  # fork, pwd, TLS: only for serve

        found, warnings = SystemChecks(cfg, bad).run()
        problems += found
        cfg.warnings += warnings
    if problems:
        problems.sort(key=lambda p: _ORDER.get(p[0], -1))  # stable: a key's problems stay in their order
        raise ConfigError(*(f"{source}: {key}: {reason}" for key, reason in problems))
    return cfg


def describe() -> str:
    """The settings reference (docs/config.md and `fastmail check-config --list`)."""
    lines = [
        "# fastmail settings",
        "",
        "Every value is checked when `fastmail serve` starts or reloads (HUP), and `fastmail check-config` runs",
        "the very same checks: the type, the range or format of each value, the values together (no two",
        "listeners on one address and port, no tls.key without tls.cert, ...), then what the host must provide",
        "(server.user and server.group exist and can be switched to, the data folder can be made and reached",
        "by the workers' user, the certificate and key load and belong together, the files read exist).  Every",
        "problem is reported, one `FILE: key: reason` line each, and nothing starts.  A relative path in a",
        "config file is relative to that file's folder.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for s in SETTINGS:
        default = "CPU count" if s.key == "server.workers" else repr(s.default)
        tname = s.type.__name__ if isinstance(s.type, type) else "/".join(t.__name__ for t in s.type)
        lines.append(f"| `{s.key}` | {tname} | `{default}` | {s.doc} |")
    return "\n".join(lines) + "\n"
