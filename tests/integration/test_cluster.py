"""The scale-out topology of docs/scaling.md, built on one machine with network namespaces.

    root namespace (the test: clients, CLI)  10.77.N.1 on a bridge made here
      ├─ px   10.77.N.2   nginx with its mail module (IMAP 143, POP3 110, submission 587), auth_http → mx
      ├─ mx   10.77.N.10  fastmail: the MX (SMTP) for example.org, auth_http endpoint; no mailboxes
      ├─ mb1  10.77.N.11  fastmail: mailbox node of alice
      └─ mb2  10.77.N.12  fastmail: mailbox node of bob

Every fastmail node runs `fastmail serve` with the one shared cluster.toml (its data folder given with
--data-dir; each node finds its own name from the addresses it has); the accounts are provisioned on every
node with the CLI, as an operator would.  Mail comes in at the MX (smtplib), is routed over LMTP to the
user's node, read through nginx with imaplib and poplib, and submitted through nginx (XCLIENT to the
user's node).  Then mb2 stops: alice is unaffected, mail for bob waits in the MX's queue with the reason
shown by `fastmail queue list`, and arrives when mb2 is back and the queue is flushed.

Needs root (network namespaces, veth, a bridge): CI runs as root.  Everything made here (namespaces,
links, processes) is removed in the fixture's teardown, also when the test fails.
"""

from __future__ import annotations

import base64
import email
import imaplib
import os
import poplib
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from .conftest import fastmail_cmd, poll
from .tlsca import TestCA
from .wire import Client

pytestmark = pytest.mark.integration

PASSWORDS = {"alice@example.org": "alice-secret", "bob@example.org": "bob-secret"}
HOMES = {"alice@example.org": "mb1", "bob@example.org": "mb2"}
NGINX = "/usr/sbin/nginx"
MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
PORTS = {"smtp": 2525, "submission": 2587, "lmtp": 2424, "imap": 1143, "pop3": 1110, "auth_http": 9143}
TIMEOUT = 10.0  # seconds of every client socket


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def _free_subnet() -> int:
    """N of a 10.77.N.0/24 that no address or route of this host uses yet."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for i in range(250):
        n = (os.getpid() + i) % 250 + 1
        if f"10.77.{n}." not in used:
            return n
    raise AssertionError("no free 10.77.N.0/24")


@dataclass
class Net:
    """A bridge in the root namespace and one namespace per node, each with a veth into the bridge."""

    tag: str
    subnet: int
    namespaces: dict[str, str] = field(default_factory=dict)  # node -> namespace
    addresses: dict[str, str] = field(default_factory=dict)  # node -> its address

    @property
    def bridge(self) -> str:
        return f"fmb{self.tag}"

    def addr(self, last: int) -> str:
        return f"10.77.{self.subnet}.{last}"

    def up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.addr(1)}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, node: str, last: int) -> str:
        ns = f"fm{self.tag}-{node}"
        host_end, ns_end = f"fv{self.tag}{last}", f"fn{self.tag}{last}"
        ip("netns", "add", ns)
        self.namespaces[node] = ns
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", ns)
        ip("link", "set", host_end, "master", self.bridge)
        ip("link", "set", host_end, "up")
        ip("-n", ns, "addr", "add", f"{self.addr(last)}/24", "dev", ns_end)
        ip("-n", ns, "link", "set", ns_end, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        self.addresses[node] = self.addr(last)
        return ns

    def down(self) -> None:
        for ns in self.namespaces.values():  # its veth ends go with it, and their peers in the bridge
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=20)


@dataclass
class Node:
    """One `fastmail serve` in its namespace, with the shared config and its own data folder."""

    name: str
    ns: str
    address: str
    config: Path
    data: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        res = subprocess.run(fastmail_cmd(*args, "-c", str(self.config), "--data-dir", str(self.data)),
                             input=input, capture_output=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"fastmail {' '.join(args)} on {self.name} failed: {res.stderr.decode()}")
        return res

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns,
                 *fastmail_cmd("serve", "-c", str(self.config), "--data-dir", str(self.data))],
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        self.offset = offset

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log.read_text()}")
            with open(self.log, "rb") as f:
                f.seek(self.offset)
                started = f.read().decode(errors="replace")
            if "event=worker_ready kind=worker " in started:
                try:
                    with socket.create_connection((self.address, PORTS["smtp"]), timeout=2) as s:
                        if s.recv(100).startswith(b"220"):
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def inbox(self, user: str) -> list[bytes]:
        listing = orjson.loads(self.cli("message", "list", user, "INBOX", "--json").stdout)
        return [self.cli("message", "show", user, "INBOX", str(m["uid"])).stdout for m in listing]

    def queue(self) -> list[dict]:
        return list(orjson.loads(self.cli("queue", "list", "--json").stdout))


def cluster_config(net: Net, ticket_key: Path) -> str:
    listen = "\n".join(f'{name} = [":{port}"]' for name, port in PORTS.items() if name != "auth_http")
    return f"""
[server]
hostname = "node.example.org"
workers = 1
grace_period = 2.0
worker_timeout = 10.0

[listen]
{listen}
submissions = []
imaps = []
pop3s = []

[delivery]
retry_base = 600.0
retry_max = 600.0
connect_timeout = 5.0

[cluster]
lmtp_port = {PORTS['lmtp']}
imap_port = {PORTS['imap']}
pop3_port = {PORTS['pop3']}
submission_port = {PORTS['submission']}
proxies = ["{net.addresses['px']}/32"]
auth_http_listen = [":{PORTS['auth_http']}"]
ticket_key_file = "{ticket_key}"

[cluster.nodes]
mb1 = "{net.addresses['mb1']}"
mb2 = "{net.addresses['mb2']}"
"""


def nginx_config(net: Net, prefix: Path) -> str:
    """The proxy holds the clients' TLS (STARTTLS required before any login) and talks plain to the nodes."""
    px = net.addresses["px"]
    return f"""
load_module {MAIL_MODULE};
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
mail {{
    server_name proxy.example.org;
    auth_http {net.addresses['mx']}:{PORTS['auth_http']}/auth;
    proxy_pass_error_message on;
    xclient on;
    ssl_certificate {prefix}/proxy.example.crt;
    ssl_certificate_key {prefix}/proxy.example.key;
    starttls only;
    server {{ listen {px}:143; protocol imap; imap_auth plain login; }}
    server {{ listen {px}:110; protocol pop3; pop3_auth plain; }}
    server {{ listen {px}:587; protocol smtp; smtp_auth plain login; }}
}}
"""


@dataclass
class Cluster:
    net: Net
    nodes: dict[str, Node]
    proxy: str  # nginx's address
    nginx_log: Path
    tls: ssl.SSLContext  # clients' context: verifies nginx's certificate against the test CA

    def deliver(self, subject: str, *rcpts: str) -> None:
        msg = f"From: sender@remote.test\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n\r\n{subject} body\r\n"
        with smtplib.SMTP(self.nodes["mx"].address, PORTS["smtp"], timeout=TIMEOUT) as s:
            s.sendmail("sender@remote.test", list(rcpts), msg.encode())


def _start_nginx(net: Net, prefix: Path) -> subprocess.Popen[bytes]:
    conf = prefix / "nginx.conf"
    TestCA(prefix).server_context("proxy.example.org")  # writes proxy.example.crt and .key (with_suffix)
    conf.write_text(nginx_config(net, prefix))
    proc = subprocess.Popen(["ip", "netns", "exec", net.namespaces["px"], NGINX, "-p", str(prefix), "-c", str(conf),
                             "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited {proc.returncode}:\n{(prefix / 'error.log').read_text()}")
        try:
            with socket.create_connection((net.addresses["px"], 143), timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    raise AssertionError("nginx did not start")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert os.geteuid() == 0, "the cluster test builds network namespaces: it needs root (CI runs as root)"
    assert os.path.exists(NGINX) and os.path.exists(MAIL_MODULE), "nginx and libnginx-mod-mail: make system-deps"
    tmp = tmp_path_factory.mktemp("cluster")
    net = Net(uuid.uuid4().hex[:5], _free_subnet())
    nodes: dict[str, Node] = {}
    nginx: subprocess.Popen[bytes] | None = None
    try:
        net.up()
        for name, last in (("px", 2), ("mx", 10), ("mb1", 11), ("mb2", 12)):
            net.add(name, last)
        config = tmp / "cluster.toml"
        (tmp / "cluster.key").write_bytes(base64.b64encode(os.urandom(32)))
        config.write_text(cluster_config(net, tmp / "cluster.key"))
        for name in ("mx", "mb1", "mb2"):
            node = nodes[name] = Node(name, net.namespaces[name], net.addresses[name], config, tmp / name,
                                      tmp / f"{name}.log")
            # provisioning: every node holds the same accounts and placements (docs/scaling.md)
            node.cli("domain", "add", "example.org")
            for user, pw in PASSWORDS.items():
                node.cli("user", "add", user, "--password-stdin", input=pw.encode() + b"\n")
                node.cli("user", "move", user, HOMES[user])
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            node.wait_ready()
        (tmp / "nginx").mkdir()
        nginx = _start_nginx(net, tmp / "nginx")
        ca = (tmp / "nginx" / "proxy.example.crt").read_text().split("-----END CERTIFICATE-----\n", 1)[1]
        tls = ssl.create_default_context(cadata=ca)
        tls.check_hostname = False  # the clients dial the proxy's address; the chain is still verified
        yield Cluster(net, nodes, net.addresses["px"], tmp / "nginx" / "error.log", tls)
    finally:
        if nginx is not None:
            try:
                os.killpg(nginx.pid, signal.SIGTERM)
                nginx.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(nginx.pid, signal.SIGKILL)
                nginx.wait(timeout=10)
        for node in nodes.values():
            node.stop()
            node.kill()
        net.down()


def imap_subjects(cluster: Cluster, user: str) -> list[str]:
    with imaplib.IMAP4(cluster.proxy, 143, timeout=TIMEOUT) as m:
        m.starttls(ssl_context=cluster.tls)
        m.login(user, PASSWORDS[user])
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK"
        count = int(data[0])
        if not count:
            return []
        typ, data = m.fetch(f"1:{count}", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        return [email.message_from_bytes(part[1])["Subject"] for part in data if isinstance(part, tuple)]


def pop3_subjects(cluster: Cluster, user: str) -> list[str]:
    p = poplib.POP3(cluster.proxy, 110, timeout=TIMEOUT)
    try:
        p.stls(context=cluster.tls)
        p.user(user)
        p.pass_(PASSWORDS[user])
        count, _ = p.stat()
        out = []
        for i in range(1, count + 1):
            _, lines, _ = p.top(i, 0)
            out.append(email.message_from_bytes(b"\r\n".join(lines))["Subject"])
        return out
    finally:
        p.quit()


def subjects(raw: list[bytes]) -> list[str]:
    return [email.message_from_bytes(m)["Subject"] for m in raw]


def test_mail_flows_through_mx_proxy_and_survives_a_node_outage(cluster: Cluster) -> None:
    mx, mb1, mb2 = cluster.nodes["mx"], cluster.nodes["mb1"], cluster.nodes["mb2"]
    # 1. the MX accepts for both users and hands each message to the user's node over LMTP
    cluster.deliver("first", "alice@example.org", "bob@example.org")
    assert poll(lambda: subjects(mb1.inbox("alice@example.org")) == ["first"], 20), mb1.log.read_text()
    assert poll(lambda: subjects(mb2.inbox("bob@example.org")) == ["first"], 20), mb2.log.read_text()
    assert mb1.inbox("bob@example.org") == [] and mb2.inbox("alice@example.org") == []
    assert mx.inbox("alice@example.org") == [] and mx.inbox("bob@example.org") == []
    assert poll(lambda: mx.queue() == [], 10)
    assert "mx=[" + mb2.address + "]" in mx.log.read_text()

    # 2. read through the proxy: nginx asks the MX's auth_http endpoint, which names each user's node
    assert imap_subjects(cluster, "alice@example.org") == ["first"]
    assert imap_subjects(cluster, "bob@example.org") == ["first"]
    assert pop3_subjects(cluster, "bob@example.org") == ["first"]
    assert pop3_subjects(cluster, "alice@example.org") == ["first"]
    # nginx logged in at the nodes with auth_http's ticket (Auth-Pass): an HMAC there, not a second argon2id
    assert "event=auth_ticket" in mb1.log.read_text() and "event=auth_ticket" in mb2.log.read_text()
    log = mx.log.read_text()
    assert "event=auth_http" in log and f"server={mb2.address}" in log and f"server={mb1.address}" in log
    with imaplib.IMAP4(cluster.proxy, 143, timeout=TIMEOUT) as m:
        assert "LOGINDISABLED" in m.capabilities  # nginx: no login before STARTTLS
        m.starttls(ssl_context=cluster.tls)
        with pytest.raises(imaplib.IMAP4.error):
            m.login("alice@example.org", "wrong-password")

    # 3. submission through the proxy: XCLIENT LOGIN= to alice's node, which routes bob's copy to mb2
    with smtplib.SMTP(cluster.proxy, 587, timeout=TIMEOUT) as s:
        s.starttls(context=cluster.tls)
        s.login("alice@example.org", PASSWORDS["alice@example.org"])
        s.sendmail("alice@example.org", ["bob@example.org"],
                   b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: submitted\r\n\r\nhi\r\n")
    assert poll(lambda: subjects(mb2.inbox("bob@example.org")) == ["first", "submitted"], 20), mb1.log.read_text()
    node_log = mb1.log.read_text()
    assert "event=xclient" in node_log and "login=alice@example.org ok=1" in node_log
    with smtplib.SMTP(cluster.proxy, 587, timeout=TIMEOUT) as s:
        s.starttls(context=cluster.tls)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice@example.org", "wrong-password")

    # 4. mb2 stops: alice is not affected; bob's mail waits in the MX's queue, with the reason
    mb2.stop()
    cluster.deliver("during outage", "alice@example.org", "bob@example.org")
    assert poll(lambda: "during outage" in subjects(mb1.inbox("alice@example.org")), 20)
    assert imap_subjects(cluster, "alice@example.org") == ["first", "during outage"]

    def deferred() -> dict | None:
        for entry in mx.queue():
            for r in entry["rcpts"]:
                if r["to"] == "bob@example.org" and r["state"] == "deferred":
                    return entry
        return None

    assert poll(lambda: deferred() is not None, 20), mx.log.read_text()
    entry = deferred()
    assert entry is not None
    bob = next(r for r in entry["rcpts"] if r["to"] == "bob@example.org")
    assert mb2.address in bob["reply"] and bob["reply"].startswith("4"), bob
    assert [r["to"] for r in entry["rcpts"] if r["state"] != "sent"] == ["bob@example.org"]
    assert f"bob@example.org(deferred: {bob['reply']})" in mx.cli("queue", "list").stdout.decode()
    m = imaplib.IMAP4(cluster.proxy, 143, timeout=TIMEOUT)
    try:  # nginx authenticates bob, then cannot reach his node
        m.starttls(ssl_context=cluster.tls)
        with pytest.raises((imaplib.IMAP4.error, imaplib.IMAP4.abort, OSError)):
            m.login("bob@example.org", PASSWORDS["bob@example.org"])
    finally:
        m.shutdown()

    # 5. mb2 returns; a queue flush on the MX delivers what waited
    mb2.start()
    mb2.wait_ready()
    mx.cli("queue", "retry", entry["id"])
    assert poll(lambda: subjects(mb2.inbox("bob@example.org")) == ["first", "submitted", "during outage"], 20), \
        mx.log.read_text()
    assert poll(lambda: mx.queue() == [], 10)
    assert imap_subjects(cluster, "bob@example.org") == ["first", "submitted", "during outage"]


def test_only_proxies_may_use_xclient_and_auth_http(cluster: Cluster) -> None:
    mb1 = cluster.nodes["mb1"]
    # the test runs in the root namespace (10.77.N.1): a client, not a configured proxy
    c = Client(PORTS["submission"], host=mb1.address)
    ehlo = c.cmd("EHLO client.test")
    assert ehlo.code == 250 and "XCLIENT" not in ehlo.text
    assert c.cmd("XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.org").status == "550 5.7.0"
    assert c.cmd("MAIL FROM:<alice@example.org>").status.startswith("530 5.7.0")  # still not logged in
    with socket.create_connection((cluster.nodes["mx"].address, PORTS["auth_http"]), timeout=TIMEOUT) as s:
        s.sendall(b"GET /auth HTTP/1.0\r\nAuth-Method: plain\r\nAuth-User: alice%40example.org\r\n"
                  b"Auth-Pass: alice-secret\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\n"
                  b"Client-IP: 10.0.0.1\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.0 403") and b"Auth-Status: OK" not in answer


def test_a_mail_loop_is_cut_at_the_hop_limit(cluster: Cluster) -> None:
    """Two nodes whose account copies each place a user on the other would pass a message back and forth
    over LMTP; every hop adds a Received: field, and at 50 the message is refused (RFC 5321 §6.3)."""
    hops = "".join(f"Received: from hop{i}.example by node.example.org; Wed, 2 Dec 2026 07:00:00 +0000\r\n"
                   for i in range(50))
    msg = f"{hops}From: sender@remote.test\r\nSubject: loop\r\n\r\nround and round\r\n".encode()
    with smtplib.SMTP(cluster.nodes["mx"].address, PORTS["smtp"], timeout=TIMEOUT) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("sender@remote.test", ["alice@example.org"], msg)
        assert e.value.smtp_code == 554 and e.value.smtp_error.startswith(b"5.4.6")
        # 48 here, 49 with the MX's own at the node: delivered
        s.sendmail("sender@remote.test", ["alice@example.org"], msg.split(b"\r\n", 2)[2])
    assert poll(lambda: "loop" in subjects(cluster.nodes["mb1"].inbox("alice@example.org")), 20)


def auth_http(cluster: Cluster, user: str, password: str, protocol: str, method: str = "plain",
              attempt: int = 1) -> dict[str, str]:
    """One auth_http request as nginx sends it, made with curl from the proxy's namespace; the answer's
    status line and header fields."""
    headers = {"Auth-Method": method, "Auth-User": user.replace("@", "%40"), "Auth-Pass": password,
               "Auth-Protocol": protocol, "Auth-Login-Attempt": str(attempt), "Client-IP": "192.0.2.50"}
    args = [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
    res = subprocess.run(["ip", "netns", "exec", cluster.net.namespaces["px"], "curl", "-s", "-0", "-o", "/dev/null",
                          "-D", "-", "--max-time", "30", *args,
                          f"http://{cluster.nodes['mx'].address}:{PORTS['auth_http']}/auth"],
                         capture_output=True, text=True, timeout=60, check=True)
    lines = res.stdout.strip().splitlines()
    out = {"status": lines[0]}
    out.update(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return out


def test_auth_http_names_each_users_node_per_protocol(cluster: Cluster) -> None:
    mb1, mb2 = cluster.nodes["mb1"].address, cluster.nodes["mb2"].address
    a = auth_http(cluster, "bob@example.org", PASSWORDS["bob@example.org"], "imap")
    assert (a["status"], a["Auth-Status"], a["Auth-Server"], a["Auth-Port"]) == \
        ("HTTP/1.0 200 OK", "OK", mb2, str(PORTS["imap"]))
    assert a["Auth-Pass"].startswith("fmt1.")  # the login ticket nginx gives the node instead of the password
    a = auth_http(cluster, "alice@example.org", PASSWORDS["alice@example.org"], "smtp", method="login")
    assert (a["Auth-Status"], a["Auth-Server"], a["Auth-Port"]) == ("OK", mb1, str(PORTS["submission"]))
    a = auth_http(cluster, "alice@example.org", PASSWORDS["alice@example.org"], "pop3")
    assert (a["Auth-Server"], a["Auth-Port"]) == (mb1, str(PORTS["pop3"]))
    a = auth_http(cluster, "nobody@example.org", "guess", "imap")
    assert a["Auth-Status"] == "Invalid login or password" and a["Auth-Wait"] == "3" and "Auth-Server" not in a
    a = auth_http(cluster, "nobody@example.org", "guess", "imap", attempt=10)
    assert a["Auth-Status"] == "Invalid login or password" and "Auth-Wait" not in a  # nginx closes
    a = auth_http(cluster, "alice@example.org", "x", "imap", method="cram-md5")  # needs clear passwords
    assert a["Auth-Status"] == "Invalid login or password" and "Auth-Server" not in a


def test_user_placement_with_the_cli(cluster: Cluster) -> None:
    mx = cluster.nodes["mx"]
    users = {u["address"]: u["node"] for u in orjson.loads(mx.cli("user", "list", "--json").stdout)}
    assert users == HOMES
    assert "node=mb2" in mx.cli("user", "list").stdout.decode()
    res = mx.cli("user", "move", "alice@example.org", "mb9", check=False)
    assert res.returncode == 1 and b"no node mb9 in cluster.nodes (mb1, mb2)" in res.stderr
    res = mx.cli("user", "move", "nobody@example.org", "mb1", check=False)
    assert res.returncode == 1 and b"no user nobody@example.org" in res.stderr
