"""The cluster pieces without a network (docs/scaling.md): XCLIENT in the SMTP state machine, the LMTP mode of
the outbound client, the auth_http request parser, and the node bookkeeping of fastmail.cluster.  The whole
topology runs in tests/integration/test_cluster.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from fastmail import cluster
from fastmail import config as configmod
from fastmail.proto import smtp as P
from fastmail.proto import smtp_client as C
from fastmail.server.auth_http import parse_request
from tests.fakes import FakePolicy


def submission(xclient: bool) -> P.SMTPConnection:
    conn = P.SMTPConnection(P.Session(peer="10.0.0.2", mode=P.Mode.SUBMISSION), FakePolicy(), "mb1.example.org",
                            xclient=xclient)
    assert conn.take_output().startswith(b"220 ")
    return conn


def send(conn: P.SMTPConnection, line: bytes) -> bytes:
    conn.receive(line)
    return conn.take_output()


def test_xclient_refused_to_a_client_that_is_no_proxy():
    conn = submission(xclient=False)
    assert b"XCLIENT" not in send(conn, b"EHLO client.test\r\n")
    assert send(conn, b"XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.org\r\n").startswith(b"550 5.7.0 ")
    assert conn.next_request() is None
    assert send(conn, b"MAIL FROM:<alice@example.org>\r\n").startswith(b"530 5.7.0 ")  # still no user


def test_xclient_from_a_proxy_starts_over_as_the_client_and_its_login():
    conn = submission(xclient=True)
    assert b"250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN" in send(conn, b"EHLO proxy.test\r\n")
    # nginx's form: values as they are, NAME=[UNAVAILABLE]
    assert send(conn, b"XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.org NAME=[UNAVAILABLE]\r\n") == b""
    req = conn.next_request()
    assert req == P.XClient("192.0.2.7", None, "alice@example.org")
    conn.xclient_done("alice@example.org", 1, "192.0.2.7", False)
    assert conn.take_output() == b"220 mb1.example.org ESMTP fastmail\r\n"
    assert conn.session.peer == "192.0.2.7" and conn.session.user == "alice@example.org"
    assert send(conn, b"MAIL FROM:<alice@example.org>\r\n").startswith(b"503 5.5.1 ")  # EHLO again first
    assert send(conn, b"EHLO client.test\r\n").startswith(b"250-")
    assert send(conn, b"MAIL FROM:<alice@example.org>\r\n").startswith(b"250 2.1.0 ")


@pytest.mark.parametrize("line", [
    b"XCLIENT\r\n",  # nothing
    b"XCLIENT FOO=bar\r\n",  # no such attribute
    b"XCLIENT ADDR\r\n",  # no value
    b"XCLIENT ADDR=not-an-address\r\n",
    b"XCLIENT LOGIN=a+01b\r\n",  # xtext for a control character
])
def test_xclient_syntax_errors(line):
    conn = submission(xclient=True)
    send(conn, b"EHLO proxy.test\r\n")
    assert send(conn, line).startswith(b"501 5.5.4 ")
    assert conn.next_request() is None


def test_xclient_ipv6_unavailable_and_refused_login():
    conn = submission(xclient=True)
    assert send(conn, b"XCLIENT ADDR=192.0.2.7\r\n").startswith(b"503 5.5.1 ")  # EHLO first
    send(conn, b"EHLO proxy.test\r\n")
    send(conn, b"XCLIENT ADDR=IPV6:2001:db8::7 LOGIN=[UNAVAILABLE]\r\n")
    assert conn.next_request() == P.XClient("2001:db8::7", None, "")
    conn.xclient_done(None, None, "10.0.0.2", False, refused=P.R.XCLIENT_UNKNOWN_LOGIN)
    assert conn.take_output().startswith(b"550 5.7.8 ")
    assert conn.session.peer == "10.0.0.2" and conn.session.user is None
    assert send(conn, b"MAIL FROM:<a@example.org>\r\n").startswith(b"530 ")  # nothing changed


def test_xclient_never_on_lmtp():
    conn = P.SMTPConnection(P.Session(peer="10.0.0.2", mode=P.Mode.LMTP), FakePolicy(), "mb1", xclient=True)
    conn.take_output()
    assert b"XCLIENT" not in send(conn, b"LHLO mx\r\n")
    assert send(conn, b"XCLIENT ADDR=192.0.2.7\r\n").startswith(b"550 5.7.0 ")


def test_lmtp_client_says_lhlo_and_takes_a_reply_per_accepted_recipient():
    c = C.Client("node.example.org", tls=False, lmtp=True)
    assert c.receive(b"220 node.example.org LMTP fastmail\r\n") == []  # the same host name: no loop here
    assert c.take_output() == b"LHLO node.example.org\r\n"
    events = c.receive(b"250-node.example.org\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n")
    assert isinstance(events[-1], C.Ready)
    m = C.Message("s@remote.test", [C.Recipient("a@example.org"), C.Recipient("x@example.org"),
                                    C.Recipient("b@example.org")], b"Subject: x\r\n\r\nhi\r\n")
    assert c.send(m) == []
    assert c.take_output().endswith(b"RCPT TO:<b@example.org>\r\nDATA\r\n")  # DATA, not BDAT
    assert c.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n250 2.1.5 ok\r\n354 go\r\n") == []
    assert c.take_output() == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    assert c.timeout == C.TIMEOUT_DATA_END
    assert c.receive(b"250 2.1.5 <a@example.org> delivered\r\n") == []  # one of two: not done yet
    done, again = c.receive(b"452 4.2.2 <b@example.org> Mailbox full\r\n")
    assert isinstance(done, C.Done) and isinstance(again, C.Ready)
    assert [r.code for r in done.results] == [250, 550, 452]


def test_lmtp_client_does_not_fall_back_to_helo():
    c = C.Client("me", tls=False, lmtp=True)
    c.receive(b"220 node LMTP\r\n")
    c.take_output()
    events = c.receive(b"500 5.5.1 This is SMTP\r\n")
    assert isinstance(events[-1], C.Failed) and events[-1].reply.code == 500


def test_auth_http_request_parser():
    head = (b"GET /auth HTTP/1.0\r\nHost: 10.0.0.10\r\nAuth-Method: plain\r\nAuth-User: a%40example.org\r\n"
            b"Auth-Pass: p%20w\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 2\r\nClient-IP: 192.0.2.42")
    f = parse_request(head)
    assert f is not None and f["auth-user"] == "a%40example.org" and f["auth-login-attempt"] == "2"
    assert parse_request(b"POST /auth HTTP/1.0\r\n") is None
    assert parse_request(b"GET /auth\r\n") is None
    assert parse_request(b"GET /auth HTTP/1.0\r\nno colon here") is None


def cfg(**kw):
    base = {"cluster_nodes": {"mb1": "127.0.0.1", "mb2": "192.0.2.254"}, "cluster_node": "", "cluster_lmtp_port": 24,
            "cluster_imap_port": 143, "cluster_pop3_port": 110, "cluster_submission_port": 587,
            "cluster_proxies": ["10.0.0.2/32"]}
    base.update(kw)
    return SimpleNamespace(**base)


def test_a_node_finds_its_own_name_from_its_addresses():
    assert cluster.Cluster(cfg()).name == "mb1"  # 127.0.0.1 is on every host; 192.0.2.254 (TEST-NET-1) is not
    assert cluster.Cluster(cfg(cluster_node="mb2")).name == "mb2"
    assert cluster.Cluster(cfg(cluster_nodes={"mb2": "192.0.2.254"})).name == ""  # an MX-only node
    with pytest.raises(cluster.ClusterError):
        cluster.Cluster(cfg(cluster_nodes={"a": "127.0.0.1", "b": "127.0.0.2"}))


def test_homes_backends_and_proxies():
    c = cluster.Cluster(cfg())
    assert c.elsewhere({"node": "mb2"}) == "mb2"
    assert c.elsewhere({"node": "mb1"}) is None and c.elsewhere({}) is None
    assert c.backend({"node": "mb2"}, "imap") == ("192.0.2.254", 143)
    assert c.backend({}, "smtp") == ("127.0.0.1", 587)  # no node: the one answering
    assert c.backend({"node": "gone"}, "pop3") is None
    assert c.is_proxy("10.0.0.2") and not c.is_proxy("10.0.0.3") and not c.is_proxy("nonsense")
    assert not cluster.Cluster(cfg(cluster_nodes={})).active


def test_config_checks_the_cluster_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cluster]\nproxies = ["10.0.0.2/32"]\n[cluster.nodes]\nmb1 = "10.0.0.11"\nmb2 = "10.0.0.12"\n')
    assert configmod.load(path).cluster_nodes == {"mb1": "10.0.0.11", "mb2": "10.0.0.12"}
    path.write_text('[cluster.nodes]\nmb1 = "mb1.example.org"\n"bad name" = "10.0.0.1"\n')
    with pytest.raises(configmod.ConfigError) as e:
        configmod.load(path)
    assert "cluster.nodes" in str(e.value)


def test_hops_counts_received_fields_of_the_header_only():
    assert P.hops(b"Subject: x\r\n\r\nReceived: in the body\r\n") == 0
    assert P.hops(b"Received: a\r\n\tcontinued\r\nRECEIVED: b\r\nX-Received: no\r\n\r\nReceived: c\r\n") == 2
    assert P.hops(b"received: only a header, no body") == 1


def test_login_tickets():
    key = b"k" * 32
    t = cluster.make_ticket(key, "alice@example.org", now=1000)
    assert t.startswith("fmt1.1060.")
    assert cluster.check_ticket(key, "alice@example.org", t, now=1030)
    assert not cluster.check_ticket(key, "alice@example.org", t, now=1061)  # expired
    assert not cluster.check_ticket(key, "alice@example.org", t, now=900)  # dated too far ahead
    assert not cluster.check_ticket(key, "bob@example.org", t, now=1030)  # another user's
    assert not cluster.check_ticket(b"x" * 32, "alice@example.org", t, now=1030)  # another key
    assert not cluster.check_ticket(key, "alice@example.org", "fmt1.1060.", now=1030)
    assert not cluster.check_ticket(key, "alice@example.org", "alice-secret", now=1030)
    c = cluster.Cluster(cfg())
    c.ticket_key = key
    good = cluster.make_ticket(key, "alice@example.org")
    assert c.ticket_ok("10.0.0.2", "alice@example.org", good)
    assert not c.ticket_ok("10.0.0.3", "alice@example.org", good)  # only from a proxy
    assert not c.ticket_ok(None, "alice@example.org", good)


def test_ticket_key_file_is_read_and_checked(tmp_path):
    short = tmp_path / "short.key"
    short.write_bytes(b"too short\n")
    with pytest.raises(cluster.ClusterError):
        cluster.Cluster(cfg(cluster_ticket_key_file=str(short)), tickets=True)
    with pytest.raises(cluster.ClusterError):
        cluster.Cluster(cfg(cluster_ticket_key_file=str(tmp_path / "missing")), tickets=True)
    good = tmp_path / "good.key"
    good.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    assert cluster.Cluster(cfg(cluster_ticket_key_file=str(good)), tickets=True).ticket_key == good.read_bytes().strip()
    assert cluster.Cluster(cfg(cluster_ticket_key_file=str(good))).ticket_key == b""  # read by workers only


class _Transport:
    def __init__(self, peer: str) -> None:
        self.peer, self.out, self.closed = peer, b"", False

    def get_extra_info(self, name: str) -> object:
        return (self.peer, 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _ask(peer: str, authenticate, proxies=()) -> bytes:
    """One request through AuthHTTPProtocol with stand-in services; the bytes it answered."""
    from fastmail.server.auth_http import AuthHTTPProtocol
    from fastmail.server.session import LoginThrottle

    async def run() -> bytes:
        c = cluster.Cluster(cfg(cluster_proxies=list(proxies)))
        services = SimpleNamespace(cluster=c, is_proxy=c.is_proxy, auth_http_throttle=LoginThrottle(10),
                                   authenticate=authenticate,
                                   store=SimpleNamespace(get_user=lambda a: {"id": 1, "address": a, "node": "mb2"}))
        proto = AuthHTTPProtocol(services, "auth_http")  # type: ignore[arg-type]
        t = _Transport(peer)
        proto.connection_made(t)  # type: ignore[arg-type]
        proto.data_received(b"GET /auth HTTP/1.0\r\nAuth-Method: plain\r\nAuth-User: a%40example.org\r\n"
                            b"Auth-Pass: pw\r\nAuth-Protocol: imap\r\nClient-IP: 192.0.2.9\r\n\r\n")
        for _ in range(100):
            if t.closed:
                break
            await asyncio.sleep(0.01)
        proto.connection_lost(None)
        return t.out

    return asyncio.run(run())


def test_auth_http_protocol_answers_refuses_and_survives_a_failing_check():
    async def good(user, password, peer=None):
        return True, 1

    async def broken(user, password, peer=None):
        raise OSError("store gone")

    assert _ask("127.0.0.1", good).startswith(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 192.0.2.254\r\n")
    assert _ask("10.0.0.9", good).startswith(b"HTTP/1.0 403 ")  # no proxies configured: loopback only
    assert _ask("10.0.0.2", good, ["10.0.0.2/32"]).startswith(b"HTTP/1.0 200 OK")
    assert _ask("127.0.0.1", good, ["10.0.0.2/32"]).startswith(b"HTTP/1.0 403 ")  # proxies set: only they
    assert b"Auth-Status: Temporary server problem" in _ask("127.0.0.1", broken)


def test_auth_http_listener_may_not_share_a_port_with_another_listener():
    values = {s.key: s.default for s in configmod.SETTINGS}
    values.update({"cluster.nodes": {"mb1": "10.0.0.11"}, "cluster.node": "mb9",
                   "cluster.auth_http_listen": [":2525"]})  # listen.smtp is 127.0.0.1:2525
    problems = dict(configmod._check_together(values, set()))
    assert "overlaps '127.0.0.1:2525' of listen.smtp" in problems["cluster.auth_http_listen"]
    assert "is not in cluster.nodes" in problems["cluster.node"]
    values.update({"cluster.auth_http_listen": ["127.0.0.1:9143"], "cluster.node": "mb1"})
    assert configmod._check_together(values, set()) == []
