"""fastmail.proto.smtp_client: the outbound SMTP state machine, without sockets.  Each test plays the server:
it feeds reply bytes and checks the exact commands the client writes and the events it reports."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail._core import variants
from fastmail.proto import smtp_client as C

EHLO_FULL = (b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n"
             b"250 ENHANCEDSTATUSCODES\r\n")


def msg(*rcpts: str, body: bytes = b"Subject: x\r\n\r\nhi\r\n", **kw) -> C.Message:
    return C.Message("a@here.test", [C.Recipient(r) for r in rcpts], body, **kw)


def ready(ehlo: bytes = EHLO_FULL, tls: bool = False) -> C.Client:
    c = C.Client("me.test", tls=tls)
    assert c.receive(b"220 mx.test ESMTP\r\n") == []
    assert c.take_output() == b"EHLO me.test\r\n"
    events = c.receive(ehlo)
    assert isinstance(events[-1], C.Ready)
    return c


def test_reply_line_parser_both_builds():
    for mod in variants("smtp").values():
        assert mod.parse_reply_line(b"250-PIPELINING") == (250, False, b"PIPELINING")
        assert mod.parse_reply_line(b"250 ok") == (250, True, b"ok")
        assert mod.parse_reply_line(b"421") == (421, True, b"")
        for bad in (b"", b"25", b"2500", b"abc ok", b"650 x", b"199 x", b"25x ok", b"250_ok"):
            with pytest.raises(mod.ReplySyntaxError):
                mod.parse_reply_line(bad)
        assert mod.split_enhanced(b"5.1.1 no such user", 550) == ("5.1.1", b"no such user")
        assert mod.split_enhanced(b"2.0.0", 250) == ("2.0.0", b"")
        assert mod.split_enhanced(b"4.1.1 class mismatch", 550) == ("", b"4.1.1 class mismatch")
        assert mod.split_enhanced(b"5.1234.1 x", 550) == ("", b"5.1234.1 x")
        assert mod.split_enhanced(b"5.1.1x", 550) == ("", b"5.1.1x")
        assert mod.split_enhanced(b"Ok", 250) == ("", b"Ok")


@given(st.binary(max_size=40), st.integers(200, 599))
@settings(max_examples=300, deadline=None)
def test_reply_parsers_agree(line, code):
    v = variants("smtp")

    def run(mod):
        try:
            return mod.parse_reply_line(line), mod.split_enhanced(line, code)
        except mod.ReplySyntaxError:
            return "error", mod.split_enhanced(line, code)

    assert run(v["compiled"]) == run(v["pure"])


def test_pipelined_transaction_with_extensions_and_dsn_parameters():
    c = ready()
    assert c.extensions["SIZE"] == "1000" and "PIPELINING" in c.extensions
    m = C.Message("a@here.test", [C.Recipient("b@there.test", "FAILURE,DELAY", "rfc822;b+2Bx@there.test"),
                                  C.Recipient("c@there.test")],
                  b"Subject: x\r\n\r\n.dot\r\nend", ret="HDRS", envid="e+2B1", eight_bit=True)
    assert c.send(m) == []
    size = len(m.body)
    assert c.take_output() == (
        f"MAIL FROM:<a@here.test> SIZE={size} BODY=8BITMIME RET=HDRS ENVID=e+2B1\r\n".encode()
        + b"RCPT TO:<b@there.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b+2Bx@there.test\r\n"
        + b"RCPT TO:<c@there.test>\r\nDATA\r\n")
    assert c.timeout == C.TIMEOUT_MAIL
    assert c.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such\r\n354 go\r\n") == []
    # dot-stuffed, CRLF added at the end, then the end mark
    assert c.take_output() == b"Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n"
    assert c.timeout == C.TIMEOUT_DATA_END
    events = c.receive(b"250 2.0.0 queued as X\r\n")
    done, again = events
    assert isinstance(done, C.Done) and isinstance(again, C.Ready)
    assert [str(r) for r in done.results] == ["250 2.0.0 queued as X", "550 5.1.1 no such"]
    assert done.results[1].permanent and done.results[1].status() == "5.1.1"


def test_without_pipelining_one_command_at_a_time_and_no_dsn_parameters():
    c = ready(b"250-mx.test\r\n250 8BITMIME\r\n")
    c.send(C.Message("a@here.test", [C.Recipient("b@x.test", "NEVER", "rfc822;b@x.test")], b"x\r\n", ret="FULL"))
    assert c.take_output() == b"MAIL FROM:<a@here.test>\r\n"
    c.receive(b"250 ok\r\n")
    assert c.take_output() == b"RCPT TO:<b@x.test>\r\n"
    c.receive(b"250 ok\r\n")
    assert c.take_output() == b"DATA\r\n"
    c.receive(b"354 go\r\n")
    assert c.take_output() == b"x\r\n.\r\n"
    events = c.receive(b"250 done\r\n")
    assert [str(r) for r in events[0].results] == ["250 done"]


def test_every_recipient_refused_ends_with_rset_and_no_data():
    c = ready(b"250-mx.test\r\n250 SIZE\r\n")
    c.send(msg("b@x.test", "c@x.test"))
    c.take_output()
    c.receive(b"250 ok\r\n")
    c.take_output()
    c.receive(b"450 4.2.1 later\r\n")
    assert c.take_output() == b"RCPT TO:<c@x.test>\r\n"
    assert c.receive(b"550 5.1.1 unknown\r\n") == []
    assert c.take_output() == b"RSET\r\n"
    done, again = c.receive(b"250 ok\r\n")
    assert [r.code for r in done.results] == [450, 550] and isinstance(again, C.Ready)


def test_mail_refused_pipelined_gives_the_mail_reply_to_everyone():
    c = ready()
    c.send(msg("b@x.test", "c@x.test"))
    c.take_output()
    assert c.receive(b"553 5.7.1 sender refused\r\n503 5.5.1 no mail\r\n503 5.5.1 no mail\r\n554 5.5.1 no rcpt\r\n") == []
    assert c.take_output() == b"RSET\r\n"
    done, _ = c.receive(b"250 ok\r\n")
    assert [str(r) for r in done.results] == ["553 5.7.1 sender refused"] * 2


def test_354_without_any_accepted_recipient_sends_an_empty_message():
    c = ready()
    c.send(msg("b@x.test"))
    c.take_output()
    c.receive(b"250 ok\r\n550 no\r\n354 go\r\n")
    assert c.take_output() == b".\r\n"
    c.receive(b"554 no valid recipients\r\n")
    assert c.take_output() == b"RSET\r\n"
    done, _ = c.receive(b"250 ok\r\n")
    assert [r.code for r in done.results] == [550]


def test_smtputf8_needed_and_size_limit_are_decided_before_any_command():
    c = ready(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n")
    (done,) = c.send(msg("b@x.test", smtputf8=True))
    assert [(r.code, r.enhanced, r.local) for r in done.results] == [(553, "5.6.7", True)]
    (done,) = c.send(msg("b@x.test", body=b"x" * 11))
    assert [(r.code, r.enhanced) for r in done.results] == [(552, "5.3.4")]
    assert c.take_output() == b"" and c.phase is C.Phase.READY
    c2 = ready()
    c2.send(msg("b@x.test", smtputf8=True))
    assert b" SMTPUTF8" in c2.take_output().split(b"\r\n")[0]


def test_starttls_then_ehlo_again_forgetting_the_first_extensions():
    c = C.Client("me.test", tls=True)
    c.receive(b"220 mx\r\n")
    c.take_output()
    assert c.receive(b"250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n") == []
    assert c.take_output() == b"STARTTLS\r\n"
    assert c.receive(b"220 go ahead\r\n") == [C.StartTLS()]
    assert c.extensions  # until the handshake
    c.tls_done()
    assert c.take_output() == b"EHLO me.test\r\n" and c.extensions == {}
    events = c.receive(b"250-mx\r\n250 SIZE 5\r\n")
    assert events == [C.Ready({"SIZE": "5"})] and c.tls_active


def test_starttls_response_injection_is_refused():
    c = C.Client("me.test", tls=True)
    c.receive(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n")
    c.take_output()
    events = c.receive(b"220 go\r\n250 injected\r\n")
    assert events[0] == C.StartTLS() and isinstance(events[1], C.Failed) and c.closed


def test_require_tls_without_starttls_fails_temporarily():
    c = C.Client("me.test", tls=True, require_tls=True)
    c.receive(b"220 mx\r\n")
    (failed,) = c.receive(b"250 mx\r\n")
    assert isinstance(failed, C.Failed) and failed.reply.code == 450 and failed.reply.enhanced == "4.7.4"
    assert c.take_output().endswith(b"QUIT\r\n") and c.closed


def test_ehlo_refused_falls_back_to_helo():
    c = C.Client("me.test")
    c.receive(b"220 old mx\r\n")
    c.take_output()
    assert c.receive(b"502 what\r\n") == []
    assert c.take_output() == b"HELO me.test\r\n"
    assert c.receive(b"250 hi\r\n") == [C.Ready({})]


@pytest.mark.parametrize("greeting", [b"554 5.3.2 go away\r\n", b"421 4.3.2 busy\r\n"])
def test_refused_greeting_fails_the_session(greeting):
    c = C.Client("me.test")
    (failed,) = c.receive(greeting)
    assert isinstance(failed, C.Failed) and failed.reply.code == int(greeting[:3])


def test_421_mid_transaction_and_connection_loss_defer_what_is_open():
    c = ready()
    c.send(msg("b@x.test", "c@x.test"))
    c.take_output()
    done, failed = c.receive(b"250 ok\r\n550 5.1.1 no\r\n421 4.3.2 shutting down\r\n")
    assert [r.code for r in done.results] == [550, 421] and isinstance(failed, C.Failed)
    c = ready()
    c.send(msg("b@x.test"))
    c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    done, failed = c.connection_lost()
    assert [(r.code, r.enhanced) for r in done.results] == [(421, "4.4.2")]


def test_malformed_and_mixed_code_replies_fail_the_session():
    c = C.Client("me.test")
    (failed,) = c.receive(b"hello there\r\n")
    assert isinstance(failed, C.Failed) and failed.reply.local
    c = C.Client("me.test")
    (failed,) = c.receive(b"220-a\r\n250 b\r\n")
    assert isinstance(failed, C.Failed)


def test_multiline_reply_text_and_chunking_independence():
    script = b"250 2.1.0 ok\r\n250-2.1.5 first\r\n250 2.1.5 second\r\n354 go\r\n250-2.0.0 done\r\n250 2.0.0 really\r\n"
    outcomes = []
    for split in (None, 1, 7, "random"):
        c = C.Client("me.test")
        rng = random.Random(5)
        events: list = []
        for part in (b"220-mx\r\n220 ESMTP\r\n" + EHLO_FULL, script):
            data = part
            while data:
                n = len(data) if split is None else split if isinstance(split, int) else rng.randint(1, 9)
                chunk, data = data[:n], data[n:]
                events += c.receive(chunk)
            if part is not script:
                assert isinstance(events[-1], C.Ready)
                c.send(msg("b@x.test"))
        outcomes.append([e for e in events if isinstance(e, C.Done)])
    assert all(o == outcomes[0] for o in outcomes)
    assert [str(r) for r in outcomes[0][0].results] == ["250 2.0.0 done really"]


def test_quit_after_ready():
    c = ready()
    c.quit()
    assert c.take_output() == b"QUIT\r\n"
    assert c.receive(b"221 bye\r\n") == [] and c.closed


@given(st.lists(st.binary(max_size=30), max_size=12))
@settings(max_examples=300, deadline=None)
def test_fuzz_never_raises(chunks):
    """Whatever the server sends, the machine answers with events, never an exception."""
    c = C.Client("me.test", tls=True)
    for chunk in chunks:
        for event in c.receive(chunk):
            if isinstance(event, C.Ready) and c.phase is C.Phase.READY:
                c.send(msg("b@x.test", "c@x.test"))
            elif isinstance(event, C.StartTLS):
                c.tls_done()
        if c.can_send_next:
            c.send(msg("d@x.test"))
        c.take_output()
    c.connection_lost()


def _tls_then(c: C.Client, ehlo_after: bytes) -> list:
    c.receive(b"220 relay\r\n")
    c.take_output()
    c.receive(b"250-relay\r\n250 STARTTLS\r\n")
    assert c.take_output() == b"STARTTLS\r\n"
    c.receive(b"220 go\r\n")
    c.tls_done()
    c.take_output()
    return c.receive(ehlo_after)


def test_smarthost_auth_plain_after_tls():
    c = C.Client("me.test", auth=("u", "p"))
    assert _tls_then(c, b"250-relay\r\n250 AUTH LOGIN PLAIN\r\n") == []
    assert c.take_output() == b"AUTH PLAIN AHUAcA==\r\n"
    events = c.receive(b"235 2.7.0 ok\r\n")
    assert isinstance(events[0], C.Ready) and c.authenticated


def test_smarthost_auth_login_and_refusal():
    c = C.Client("me.test", auth=("u", "p"))
    _tls_then(c, b"250-relay\r\n250 AUTH LOGIN\r\n")
    assert c.take_output() == b"AUTH LOGIN\r\n"
    c.receive(b"334 VXNlcm5hbWU6\r\n")
    assert c.take_output() == b"dQ==\r\n"
    c.receive(b"334 UGFzc3dvcmQ6\r\n")
    assert c.take_output() == b"cA==\r\n"
    (failed,) = c.receive(b"535 5.7.8 no\r\n")
    assert isinstance(failed, C.Failed) and failed.reply.code == 535


def test_smarthost_credentials_never_in_plain_text():
    c = C.Client("me.test", auth=("u", "p"))
    c.receive(b"220 relay\r\n")
    c.take_output()
    (failed,) = c.receive(b"250-relay\r\n250 AUTH PLAIN\r\n")
    assert isinstance(failed, C.Failed) and failed.reply.enhanced == "4.7.4"
    assert b"AUTH" not in c.take_output()


def test_chunking_sends_the_message_in_one_bdat_last_without_dot_stuffing():
    c = ready(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    body = b"Subject: x\r\n\r\n.dot\r\n"
    c.send(msg("b@x.test", "c@x.test", body=body))
    assert c.take_output() == (b"MAIL FROM:<a@here.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\n"
                               + b"BDAT %d LAST\r\n" % len(body) + body)
    assert c.timeout == C.TIMEOUT_MAIL
    done, again = c.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 2.0.0 stored\r\n")
    assert [str(r) for r in done.results] == ["250 2.0.0 stored", "550 5.1.1 no"] and isinstance(again, C.Ready)


def test_chunking_refused_or_without_recipients_ends_with_rset():
    c = ready(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    c.send(msg("b@x.test"))
    c.take_output()
    assert c.receive(b"250 ok\r\n550 5.1.1 no\r\n503 5.5.1 no valid recipients\r\n") == []
    assert c.take_output() == b"RSET\r\n"
    (done, _) = c.receive(b"250 ok\r\n")
    assert [r.code for r in done.results] == [550]
    c.send(msg("b@x.test"))
    c.take_output()
    c.receive(b"250 ok\r\n250 ok\r\n452 4.3.1 out of space\r\n")
    assert c.take_output() == b"RSET\r\n"
    (done, _) = c.receive(b"250 ok\r\n")
    assert [str(r) for r in done.results] == ["452 4.3.1 out of space"]
    # without PIPELINING: one command at a time, BDAT only once a recipient is accepted
    c = ready(b"250-mx\r\n250 CHUNKING\r\n")
    c.send(msg("b@x.test", body=b"x\r\n"))
    assert c.take_output() == b"MAIL FROM:<a@here.test>\r\n"
    c.receive(b"250 ok\r\n")
    assert c.take_output() == b"RCPT TO:<b@x.test>\r\n"
    c.receive(b"250 ok\r\n")
    assert c.take_output() == b"BDAT 3 LAST\r\nx\r\n"
    (done, _) = c.receive(b"250 ok\r\n")
    assert [r.code for r in done.results] == [250]


def test_the_next_message_is_pipelined_behind_the_data_of_the_one_before():
    """RFC 2920 §3.1: the message content may be the first "command" of a group: the next MAIL, RCPT and
    DATA go in the same write, and their replies come back with the end-of-data one."""
    c = ready()
    assert not c.can_send_next
    c.send(msg("b@x.test", body=b"one\r\n"))
    assert c.take_output().endswith(b"DATA\r\n") and not c.can_send_next
    assert c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n") == []
    assert c.can_send_next
    assert c.send(msg("c@x.test", body=b"two\r\n")) == []
    assert not c.can_send_next  # two transactions open at most
    size = len(b"two\r\n")
    assert c.take_output() == (b"one\r\n.\r\n" + f"MAIL FROM:<a@here.test> SIZE={size}\r\n".encode()
                               + b"RCPT TO:<c@x.test>\r\nDATA\r\n")
    assert c.timeout == C.TIMEOUT_DATA_END
    (done,) = c.receive(b"250 2.0.0 first\r\n250 ok\r\n")  # the first is over; no Ready: the next is open
    assert [str(r) for r in done.results] == ["250 2.0.0 first"] and c.phase is C.Phase.TRANSACTION
    assert c.receive(b"250 ok\r\n354 go\r\n") == [] and c.take_output() == b"two\r\n.\r\n"
    done, again = c.receive(b"550 5.7.1 second refused\r\n")
    assert [str(r) for r in done.results] == ["550 5.7.1 second refused"] and isinstance(again, C.Ready)


def test_a_pipelined_message_is_deferred_when_the_server_closes_before_it():
    c = ready()
    c.send(msg("b@x.test"))
    c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    c.send(msg("c@x.test", "d@x.test"))
    c.take_output()
    first, second, failed = c.receive(b"421 4.3.2 shutting down\r\n")
    assert [r.code for r in first.results] == [421] and [r.code for r in second.results] == [421, 421]
    assert isinstance(failed, C.Failed) and c.closed
    # and when the connection drops instead
    c = ready()
    c.send(msg("b@x.test"))
    c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    c.send(msg("c@x.test"))
    first, second, _ = c.connection_lost()
    assert [(r.code, r.enhanced) for r in first.results + second.results] == [(421, "4.4.2")] * 2
    # and when the driver gives up waiting
    c = ready()
    c.send(msg("b@x.test"))
    first, failed = c.abort(C.local_reply(421, "4.4.2", "timeout"))
    assert [str(r) for r in first.results] == ["421 4.4.2 timeout"] and c.closed


def test_no_pipelining_of_the_next_message_after_bdat_or_without_pipelining():
    c = ready(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    c.send(msg("b@x.test"))
    assert not c.can_send_next  # a refused BDAT LAST wants its RSET before the next MAIL
    c = ready(b"250-mx\r\n250 SIZE 1000\r\n")
    c.send(msg("b@x.test"))
    c.receive(b"250 ok\r\n")
    c.receive(b"250 ok\r\n")
    c.receive(b"354 go\r\n")
    assert not c.can_send_next


def test_8bit_data_for_a_server_without_8bitmime_is_returned_with_5_6_3():
    c = ready(b"250-mx\r\n250 PIPELINING\r\n")
    (done,) = c.send(msg("b@x.test", body="Grüße\r\n".encode(), eight_bit=True))
    assert [(r.code, r.enhanced, r.local) for r in done.results] == [(554, "5.6.3", True)]
    assert c.take_output() == b"" and c.phase is C.Phase.READY
    # declared 8BITMIME but 7-bit in fact: it goes as it is
    assert c.send(msg("b@x.test", body=b"plain\r\n", eight_bit=True)) == []
    assert c.take_output().startswith(b"MAIL FROM:<a@here.test>\r\n")
