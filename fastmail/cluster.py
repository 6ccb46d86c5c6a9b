"""Scale-out (docs/scaling.md): which mailbox node holds a user, and what follows from it.

A cluster is named in the one config file every node shares: `[cluster.nodes]` maps node names to
addresses; the ports (`cluster.lmtp_port`, `imap_port`, `pop3_port`, `submission_port`) are the same on
every node.  Each user record may carry a `node` (set by `fastmail user move USER NODE`); a user without
one lives on the node that has their account — a single server is a cluster of one.

A node finds its own name itself: `cluster.node` when set, else the node whose address is one of this
host's (a bind() to it succeeds), else none (an MX or proxy-only node, which holds no mailboxes of
cluster users).  From there:

* `ClusterPolicy` (SMTP, submission, LMTP): a recipient whose user lives on another node is not stored
  here but queued, addressed to that user; the delivery process (fastmail.delivery.runner) sends it over
  LMTP to the node (`lmtp_route`), with the queue's retries, so mail for a node that is down waits;
* the nginx auth_http endpoint (fastmail.server.auth_http) names the user's node to the proxy;
* XCLIENT (fastmail.proto.smtp) and plaintext IMAP/POP3 logins are allowed to `cluster.proxies` only;
* with `cluster.ticket_key_file`, auth_http gives nginx a login ticket for the node (`Auth-Pass`): the node
  checks its HMAC instead of the password's argon2id a second time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
import time
from typing import Any

from fastmail.config import in_networks
from fastmail.store.store import Store

TICKET_PREFIX = "fmt1."
TICKET_TTL = 60  # seconds a login ticket is good for (the nodes' clocks agree to well within this: NTP)
MIN_KEY = 32  # bytes of cluster.ticket_key_file


def _mac(key: bytes, address: str, expiry: int) -> str:
    digest = hmac.new(key, f"{address}\0{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_ticket(key: bytes, address: str, now: float | None = None) -> str:
    """A login ticket for `address`: "fmt1.EXPIRY.MAC", MAC an HMAC-SHA256 of the address and the expiry."""
    expiry = int(now if now is not None else time.time()) + TICKET_TTL
    return f"{TICKET_PREFIX}{expiry}.{_mac(key, address, expiry)}"


def check_ticket(key: bytes, address: str, ticket: str, now: float | None = None) -> bool:
    """Is `ticket` one of make_ticket's for `address`, not expired (nor dated implausibly far ahead)?"""
    if not ticket.startswith(TICKET_PREFIX):
        return False
    expiry_s, _, mac = ticket[len(TICKET_PREFIX):].partition(".")
    if not expiry_s.isdigit() or len(expiry_s) > 12:
        return False
    expiry = int(expiry_s)
    t = now if now is not None else time.time()
    if not t <= expiry <= t + 2 * TICKET_TTL:
        return False
    return hmac.compare_digest(mac, _mac(key, address, expiry))


PROTOCOL_PORTS = {"imap": "cluster_imap_port", "pop3": "cluster_pop3_port", "smtp": "cluster_submission_port"}


class ClusterError(Exception):
    """The node cannot tell which node it is (worded for the operator)."""


def _is_local_address(address: str) -> bool:
    """Is `address` one of this host's (in this network namespace)?  A bind() to it tells."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
    except OSError:
        return False
    return True


def find_self(nodes: dict[str, str], configured: str = "") -> str:
    """This node's name: `configured`, else the one node whose address is on this host, else ""."""
    if configured:
        return configured
    mine = [name for name, address in nodes.items() if _is_local_address(address)]
    if len(mine) > 1:
        raise ClusterError(f"cluster.node: the addresses of nodes {', '.join(sorted(mine))} are all on this host; "
                           "set cluster.node")
    return mine[0] if mine else ""


class Cluster:
    """The cluster as this node sees it."""

    def __init__(self, cfg: Any, name: str | None = None, tickets: bool = False) -> None:
        """`tickets`: read cluster.ticket_key_file (workers do, before privileges are dropped)."""
        self.nodes: dict[str, str] = dict(cfg.cluster_nodes)
        self.name = find_self(self.nodes, cfg.cluster_node) if name is None else name
        self.lmtp_port = int(cfg.cluster_lmtp_port)
        self.ports = {proto: int(getattr(cfg, key)) for proto, key in PROTOCOL_PORTS.items()}
        self.proxies = [ipaddress.ip_network(n, strict=False) for n in cfg.cluster_proxies]
        self.ticket_key = b""
        path = getattr(cfg, "cluster_ticket_key_file", "")
        if tickets and path:
            try:
                with open(path, "rb") as f:
                    self.ticket_key = f.read().strip()
            except OSError as e:
                raise ClusterError(f"cluster.ticket_key_file: {e.strerror}: {path}") from None
            if len(self.ticket_key) < MIN_KEY:
                raise ClusterError(f"cluster.ticket_key_file: {path} holds {len(self.ticket_key)} bytes, "
                                   f"fewer than {MIN_KEY}")

    @property
    def active(self) -> bool:
        return bool(self.nodes)

    def is_proxy(self, ip: str) -> bool:
        """A configured mail proxy (XCLIENT, auth_http, plaintext logins behind it)."""
        return in_networks(ip, self.proxies)

    def ticket_ok(self, peer: str | None, address: str, password: str) -> bool:
        """A login from a proxy with a ticket our auth_http endpoint made for `address`."""
        return bool(self.ticket_key) and peer is not None and password.startswith(TICKET_PREFIX) \
            and self.is_proxy(peer) and check_ticket(self.ticket_key, address, password)

    def home(self, user: dict[str, Any]) -> str:
        """The node holding `user`'s mailbox: its `node`, or this node when it has none ("" when this node
        has no name: a single server, or an MX node holding such users itself)."""
        return str(user.get("node") or self.name)

    def elsewhere(self, user: dict[str, Any]) -> str | None:
        """The other node that holds `user`, or None when the mailbox is here."""
        node = user.get("node") or ""
        if not self.nodes or not node or node == self.name:
            return None
        return str(node)

    def lmtp_route(self, store: Store, address: str) -> tuple[str, str, int] | None:
        """(node, address, LMTP port) for mail to `address` when that user's mailbox is on another node."""
        if not self.nodes:
            return None
        try:
            user = store.get_user(address)
        except Exception:  # a malformed address: not a user of ours
            return None
        node = self.elsewhere(user) if user else None
        if node is None or node not in self.nodes:
            return None
        return node, self.nodes[node], self.lmtp_port

    def backend(self, user: dict[str, Any], protocol: str) -> tuple[str, int] | None:
        """(address, port) the proxy connects to for `user` speaking `protocol` (imap, pop3, smtp)."""
        node = self.home(user)
        port = self.ports.get(protocol)
        if not node or node not in self.nodes or port is None:
            return None
        return self.nodes[node], port


class ClusterPolicy:
    """fastmail.proto.smtp.Policy around another one: local users whose mailbox is on another node are
    answered as external addresses (their own address), so the message is queued for that node instead of
    stored here.  Quota is the mailbox node's business: it says 452/552 at its LMTP RCPT."""

    def __init__(self, inner: Any, store: Store, cluster: Cluster) -> None:
        self.inner = inner
        self.store = store
        self.cluster = cluster

    def resolve(self, local: str, domain: str) -> tuple[list[int], list[str]] | None:
        found = self.inner.resolve(local, domain)
        if found is None:
            return None
        users, external = found
        here: list[int] = []
        moved = list(external)
        for uid in users:
            address = self.store.user_address(uid)
            user = self.store.get_user(address) if address else None
            if user is not None and self.cluster.elsewhere(user) is not None:
                if address not in moved:
                    moved.append(str(address))
            else:
                here.append(uid)
        return here, moved

    def is_local_domain(self, domain: str) -> bool:
        return bool(self.inner.is_local_domain(domain))

    def over_quota(self, user_id: int, size: int) -> bool:
        return bool(self.inner.over_quota(user_id, size))

    def sender_owned(self, user_id: int, local: str, domain: str) -> bool:
        return bool(self.inner.sender_owned(user_id, local, domain))
