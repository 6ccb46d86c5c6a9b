"""fastmail.metrics without a server: the reason labels, the metrics.listen setting, the IMAP command hook of the
state machine, the group commit's histograms, and the multiprocess semantics (a SIGKILLed process keeps its
counts, loses its live gauges once the master marks it dead) with real forked processes and real files."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from fastmail import config, metrics
from fastmail.proto import replies as R
from fastmail.server.commit import Committer
from fastmail.store import mime
from fastmail.store.store import Incoming, Store, new_qid

from .imap_driver import PASSWORD, Driver


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    v = registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


@pytest.mark.parametrize(("reply", "reason"), [
    (R.USER_UNKNOWN, "user_unknown"), (R.RELAY_DENIED, "relay_denied"), (R.NEED_AUTH, "policy"),
    (R.SENDER_NOT_OWNED, "policy"), (R.NEED_TLS, "policy"), (R.TOO_BIG, "too_big"), (R.MAILBOX_FULL, "mailbox_full"),
    (R.MAILBOX_FULL_TEMP, "mailbox_full"), (R.INSUFFICIENT_STORAGE, "storage"), (R.LOCAL_ERROR, "storage"),
    (R.NEED_MAIL, "protocol"), (R.SYNTAX_PARAMS, "protocol"), (R.BARE_LF, "protocol"), (R.TOO_MANY_RCPTS, "protocol"),
    (R.Reply(550, "5.9.9", "anything else"), "protocol"),
])
def test_reject_reasons_are_a_fixed_set(reply, reason):
    assert metrics.reject_reason(R.reason(reply)) == reason
    assert reason in metrics.REJECT_REASONS


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "f.toml"
    p.write_text(text)
    return p


def test_metrics_listen_setting(tmp_path):
    assert config.load().metrics_listen == "127.0.0.1:9525"  # the embedded dev server: on
    assert config.load().extra_counts["metrics"] == 1
    cfg = config.load(_write(tmp_path, "[server]\nworkers = 1\n"))
    assert cfg.metrics_listen == "" and cfg.extra_counts["metrics"] == 0  # a config file: off unless set
    assert config.load(_write(tmp_path, '[metrics]\nlisten = "[::1]:9100"\n')).metrics_listen == "[::1]:9100"
    for text, reason in [('listen = "unix:/tmp/m.sock"', "the metrics endpoint is HOST:PORT"),
                         ('listen = "127.0.0.1"', "expected HOST:PORT"),
                         ('listen = "127.0.0.1:70000"', "port out of range")]:
        with pytest.raises(config.ConfigError) as e:
            config.load(_write(tmp_path, f"[metrics]\n{text}\n"))
        assert "metrics.listen" in str(e.value) and reason in str(e.value), e.value


def test_metrics_listen_must_not_take_a_mail_listener(tmp_path, monkeypatch):
    from fastmail.master import preflight

    monkeypatch.setattr(preflight.SystemChecks, "run", lambda self: ([], []))  # stage 2 only
    p = _write(tmp_path, '[listen]\nsmtp = ["127.0.0.1:9100"]\n[metrics]\nlisten = ":9100"\n')
    with pytest.raises(config.ConfigError) as e:
        config.load(p, serve=True)
    assert "metrics.listen: ':9100' overlaps '127.0.0.1:9100' of listen.smtp" in str(e.value)
    ok = _write(tmp_path, '[listen]\nsmtp = ["127.0.0.1:9100"]\n[metrics]\nlisten = "127.0.0.1:9101"\n')
    assert config.load(ok, serve=True).metrics_listen == "127.0.0.1:9101"


def test_imap_command_latency_hook(tmp_path):
    store = Store(tmp_path / "data", map_size=1 << 24)
    try:
        store.add_domain("example.org")
        user = store.add_user("a@example.org", "h")
        raw = b"Subject: x\r\n\r\nbody\r\n"
        store.commit_batch([Incoming(qid=new_qid(), raw=raw, sender="", local=[user], meta=mime.analyze(raw))])
        seen: list[tuple[str, float]] = []
        d = Driver(store, {"a@example.org": user}, on_command=lambda name, secs: seen.append((name, secs)))
        assert d.cmd(f"a LOGIN a@example.org {PASSWORD}")[-1].startswith(b"a OK")
        assert d.cmd("b SELECT INBOX")[-1].startswith(b"b OK")
        assert d.cmd("c UID FETCH 1:* (FLAGS)")[-1].startswith(b"c OK")
        assert d.cmd("d FROB")[-1].startswith(b"d BAD")  # unknown: never started, not a label
        assert d.cmd("e IDLE") == [b"+ idling"]
        assert d.cmd("DONE")[-1].startswith(b"e OK")  # IDLE lasts as long as the client wants: not timed
        assert d.cmd("f NOOP")[-1].startswith(b"f OK")
        assert [name for name, _ in seen] == ["LOGIN", "SELECT", "UID FETCH", "NOOP"]
        assert all(0 <= secs < 60 for _, secs in seen)
        m = metrics.Metrics(CollectorRegistry())
        for name, secs in seen:
            m.imap_command_done(name, secs)
        assert _value(m.registry, "fastmail_imap_command_seconds_count", command="UID FETCH") == 1
    finally:
        store.close()


def test_group_commit_histograms(tmp_path):
    store = Store(tmp_path / "data", map_size=1 << 24)
    try:
        store.add_domain("example.org")
        user = store.add_user("a@example.org", "h")
        m = metrics.Metrics(CollectorRegistry())

        async def main() -> None:
            committer = Committer(store, m)
            items = [Incoming(qid=new_qid(), raw=b"Subject: %d\r\n\r\nx\r\n" % i, sender="", local=[user])
                     for i in range(10)]
            await asyncio.gather(*(committer.commit(i) for i in items))
            assert committer.messages == 10
            assert _value(m.registry, "fastmail_commit_batch_messages_count") == committer.batches
            assert _value(m.registry, "fastmail_commit_seconds_count") == committer.batches

        asyncio.run(main())
        assert _value(m.registry, "fastmail_commit_batch_messages_sum") == 10
        assert _value(m.registry, "fastmail_commit_seconds_sum") > 0
    finally:
        store.close()


def _child(cfg: SimpleNamespace, w: int, connections: int) -> None:
    """In a forked process: count like a worker, report, then wait to be killed."""
    code = 1
    try:
        m = metrics.setup(cfg)
        svc = m.service("smtp#1")
        for _ in range(connections):
            svc.connections.inc()
        svc.open.inc()
        svc.accepted.inc(3)
        m.delivered("sent")
        os.write(w, b"x")
        time.sleep(30)
        code = 0
    finally:
        os._exit(code)


def test_a_killed_process_keeps_its_counters_and_loses_its_live_gauges(tmp_path):
    data = tmp_path / "data"
    path = metrics.reset_dir(data)
    (path / "stale_1.db").write_bytes(b"")
    assert list(metrics.reset_dir(data).iterdir()) == []  # wiped at master start
    cfg = SimpleNamespace(metrics_listen="127.0.0.1:1", data_dir=data)
    pids = []
    for n in (2, 5):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child(cfg, w, n)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            assert f.read(1) == b"x"
        pids.append(pid)

    def read() -> CollectorRegistry:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(path))
        return registry

    reg = read()
    assert _value(reg, "fastmail_connections_total", service="smtp") == 7
    assert _value(reg, "fastmail_connections_open", service="smtp") == 2
    assert _value(reg, "fastmail_messages_accepted_total", service="smtp") == 6
    assert _value(reg, "fastmail_delivery_attempts_total", result="delivered") == 2
    assert _value(reg, "fastmail_auth_total", service="imap", result="failure") == 0  # every series from 0
    os.kill(pids[0], signal.SIGKILL)
    assert os.waitpid(pids[0], 0)[0] == pids[0]
    metrics.process_dead(data, pids[0])  # what the master's on_exit does
    reg = read()
    assert _value(reg, "fastmail_connections_total", service="smtp") == 7  # kept
    assert _value(reg, "fastmail_messages_accepted_total", service="smtp") == 6
    assert _value(reg, "fastmail_connections_open", service="smtp") == 1  # the dead one's gone
    os.kill(pids[1], signal.SIGKILL)
    os.waitpid(pids[1], 0)
    metrics.process_dead(data, pids[1])
    metrics.process_dead(data, pids[1])  # twice, or a pid that never counted: nothing to do
    reg = read()
    assert _value(reg, "fastmail_connections_open", service="smtp") == 0
    assert _value(reg, "fastmail_connections_total", service="smtp") == 7


def test_exporter_serves_get_metrics_only(tmp_path):
    from fastmail.metrics.exporter import Exporter, QueueCollector

    store = Store(tmp_path / "data", map_size=1 << 24)
    try:
        registry = CollectorRegistry()
        registry.register(QueueCollector(store))

        async def main() -> list[bytes]:
            exporter = Exporter(registry)
            server = await asyncio.start_server(exporter.handle, "127.0.0.1", 0, limit=8192)
            port = server.sockets[0].getsockname()[1]
            answers = []
            for request in (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
                            b"HEAD /metrics HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                await writer.drain()
                try:
                    answers.append(await asyncio.wait_for(reader.read(), 10))
                except ConnectionResetError:  # closed with our request unread
                    answers.append(b"")
                writer.close()
            server.close()
            exporter.pool.shutdown()
            return answers

        ok, root, head, huge = asyncio.run(main())
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/plain; version=0.0.4" in ok
        assert b'fastmail_queue_entries{state="queued"} 0.0' in ok
        assert root.startswith(b"HTTP/1.1 404 ") and head.startswith(b"HTTP/1.1 404 ")
        assert huge == b""  # a request head over 8 KiB: closed without an answer
    finally:
        store.close()


def test_unknown_listener_kind_gets_its_own_series():
    m = metrics.Metrics(CollectorRegistry())
    m.service("auth_http#2").connections.inc()
    assert _value(m.registry, "fastmail_connections_total", service="auth_http") == 1
    assert m.service("smtp#3") is m.service("smtp")
