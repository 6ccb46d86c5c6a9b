"""The checks of one incoming message, run at the end of DATA, and what they decide.

`Inbound.check` runs, concurrently and under one deadline (`checks.timeout`):

- the authentication checks when `checks.enabled`: SPF for MAIL FROM (or HELO for the null sender,
  RFC 7208 §2.4), DKIM, ARC, the client's reverse DNS (iprev, RFC 8601 §3) and the DNSBL/DNSWL zones; then
  DMARC (RFC 7489) from the SPF and DKIM results;
- the virus scan (clamd, `clamav.address`) and the spam filter (rspamd, `rspamd.url`).

It returns a `Verdict`: a refusal (the reply to give, nothing stored) or the header fields to add — one
`Authentication-Results` field (RFC 8601) with our authserv-id, `X-Spam-*` when the filter ran — and the
folder (INBOX, or Junk for DMARC quarantine and spam above `spam.junk_score`).  Incoming
Authentication-Results fields that claim our authserv-id are removed (RFC 8601 §5): nobody upstream may
speak for us.

A check that cannot answer (DNS temperror, timeout, a filter down) is recorded as temperror; with
`checks.fail_open` false (or `clamav.fail_open` / `rspamd.fail_open` false for the filters) the message gets
451 4.7.0 and the sender retries.  Reply texts say what kind of policy refused, never which list or score.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import re
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import CoroutineType
from typing import Any

from fastmail import log
from fastmail.delivery.dns import DNSTemporary
from fastmail.hygiene import arc, dkim, dmarc, dnsq, message, spf
from fastmail.hygiene.authfail import AuthFailures
from fastmail.hygiene.clamd import TooBig
from fastmail.hygiene.deadline import Resumed, within
from fastmail.hygiene.filters import FilterUnavailable
from fastmail.hygiene.greylist import Greylist
from fastmail.hygiene.headers import edit_headers, merge_spam_fields, strip_authres
from fastmail.hygiene.headers import field as header_field
from fastmail.hygiene.ratelimit import RateLimiter
from fastmail.hygiene.state import HygieneState, open_state

# Replies (RFC 3463 / RFC 7372 enhanced codes).
VIRUS = (554, "5.7.1", "Message refused: it carries a virus")
BLOCKED = (554, "5.7.1", "Service unavailable: client host is on a block list")
SPAM = (550, "5.7.1", "Message refused as spam")
DMARC_REJECT = (550, "5.7.1", "Message refused by the author domain's DMARC policy")
SPF_FAIL = (550, "5.7.23", "Message refused: SPF validation failed")
IPREV_FAIL = (550, "5.7.25", "Message refused: reverse DNS validation failed")
TEMP = (451, "4.7.0", "Temporary failure of a message check, try again later")
SOFT_SPAM = (451, "4.7.1", "Message deferred by the spam filter, try again later")

Reply = tuple[int, str, str]


@dataclass
class Verdict:
    reply: Reply | None = None  # refuse with this; None: accept
    headers: bytes = b""  # header fields to put at the top of the message (after our Received:)
    folder: str | None = None  # None: INBOX
    subject: str | None = None  # rspamd's rewritten Subject
    remove: dict[str, int] = field(default_factory=dict)  # fields to remove: name -> instance (headers.edit_headers)
    log: dict[str, Any] = field(default_factory=dict)  # results, for the "accepted"/"refused" log line


@dataclass
class Transaction:
    ip: str
    helo: str
    mail_from: str  # "" for the null sender
    rcpts: list[str]
    qid: str
    user: str | None = None
    client: ClientChecks | None = None  # the session's (Inbound.client_checks); None: made for this message


# -- header fields -------------------------------------------------------------------------------------

def _fold(name: str, items: list[str]) -> bytes:
    """`name: item1;\\r\\n\\titem2; ...` — one clause per line (RFC 8601 §2.2 layout, RFC 5322 folding)."""
    return header_field(name, ";\r\n\t".join(items))


_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+")


def _quote(value: str) -> str:
    """A value as an RFC 8601 pvalue: a token when it is one, else a quoted-string."""
    if value and _TOKEN.fullmatch(value) and "@" not in value[:1]:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the checks ----------------------------------------------------------------------------------------


class Inbound:
    def __init__(self, config: Any, hostname: str) -> None:
        self.config = config
        self.auth = bool(config.checks_enabled)
        self.clamav = str(config.clamav_address)
        self.rspamd = str(config.rspamd_url)
        self.authserv_id = str(config.checks_authserv_id or hostname)
        self.hostname = hostname
        self._resolver: dnsq.Resolver | None = None
        self._spf_kept: spf.KeptResults | None = None
        self._state: HygieneState | None = None
        self._state_failed = False
        self._greylist: Greylist | None = None
        self._ratelimit: RateLimiter | None = None
        self._authfail: AuthFailures | None = None

    @property
    def active(self) -> bool:
        return self.auth or bool(self.clamav) or bool(self.rspamd)

    # -- greylisting and rate limits: state shared by the workers (fastmail.hygiene.state) ---------------

    @property
    def greylist(self) -> Greylist | None:
        """The greylist when greylist.enabled and its state opens; made on first use, in the worker."""
        if self._greylist is None and self.config.greylist_enabled and self._open_state() is not None:
            cfg = self.config
            assert self._state is not None
            self._greylist = Greylist(
                self._state, delay=float(cfg.greylist_delay), expire=float(cfg.greylist_expire),
                retain=float(cfg.greylist_retain), auto_whitelist=int(cfg.greylist_auto_whitelist),
                whitelist=cfg.greylist_whitelist, whitelist_domains=cfg.greylist_whitelist_domains)
        return self._greylist

    @property
    def ratelimit(self) -> RateLimiter | None:
        """The rate limiter when a ratelimit.* limit is set and the state opens; made on first use."""
        cfg = self.config
        wanted = cfg.ratelimit_connections_per_ip or cfg.ratelimit_messages_per_ip or cfg.ratelimit_messages_per_user
        if self._ratelimit is None and wanted and self._open_state() is not None:
            assert self._state is not None
            self._ratelimit = RateLimiter(self._state)
        return self._ratelimit

    @property
    def auth_failures(self) -> AuthFailures | None:
        """The failed-login throttle (fastmail.hygiene.authfail) when auth.throttle_delay is set and the state
        opens; made on first use."""
        cfg = self.config
        if self._authfail is None and cfg.auth_throttle_delay > 0 and self._open_state() is not None:
            assert self._state is not None
            self._authfail = AuthFailures(self._state, float(cfg.auth_throttle_delay),
                                          float(cfg.auth_throttle_max_delay), float(cfg.auth_throttle_window))
        return self._authfail

    def _open_state(self) -> HygieneState | None:
        if self._state is None and not self._state_failed:
            self._state = open_state(self.config.data_dir)
            self._state_failed = self._state is None  # logged; greylisting and limits are off (fail open)
        return self._state

    @property
    def resolver(self) -> dnsq.Resolver:
        if self._resolver is None:  # made on first use: aiodns binds to the running loop
            self._resolver = dnsq.Resolver(self.config.checks_nameserver, timeout=self.config.checks_dns_timeout)
        return self._resolver

    async def check(self, raw: bytes, tx: Transaction, *, authenticate: bool = True) -> tuple[bytes, Verdict]:
        """The message as it is to be stored (our A-R removed, the filter's edits applied) and the verdict.
        `authenticate`: run the authentication checks (not for mail that a trusted client relays)."""
        cfg = self.config
        verdict = Verdict()
        raw, removed = strip_authres(raw, self.authserv_id)
        if removed:
            verdict.log["authres_removed"] = removed
        client = tx.client
        if client is None and self.auth and authenticate:
            client = self.client_checks(tx.ip, start=False)  # a message on its own (tests, no session)
        jobs: dict[str, Awaitable[Any]] = {}
        if self.clamav:
            jobs["virus"] = self._virus(raw)
        if client is not None and authenticate:
            jobs["auth"] = self._authenticate(raw, tx, client)
        if self.rspamd:
            jobs["spam"] = self._spam(raw, tx, client if authenticate else None)
        try:
            results = await _gather_within(jobs, float(cfg.checks_timeout))
        finally:
            if client is not None and client is not tx.client:
                client.close()

        virus = results.get("virus")
        if virus is not None:
            if isinstance(virus, TooBig):
                # over clamd's StreamMaxLength: no retry would change that, so it goes on unscanned
                verdict.log["virus"] = "too_big"
            elif isinstance(virus, BaseException):
                if _unavailable(verdict, "virus", cfg.clamav_fail_open):
                    return raw, verdict
            elif virus.infected:
                verdict.log["virus"] = virus.signature or "found"
                verdict.reply = VIRUS
                return raw, verdict
            else:
                verdict.log["virus"] = "clean"

        clauses: list[str] = []
        allowed = False  # the client is on a DNSWL: the spam filter's reject becomes Junk
        auth = results.get("auth")
        if auth is not None:
            if isinstance(auth, BaseException):
                auth = _Auth.timed_out()
            clauses, reply, junk = self._judge_auth(auth, tx, verdict)
            allowed = auth.dnsbl is not None and auth.dnsbl[0] == "allowed"
            if reply is not None:
                verdict.reply = reply
                return raw, verdict
            if junk:
                verdict.folder = str(cfg.spam_junk_folder)

        spam = results.get("spam")
        spam_headers = b""
        if spam is not None:
            if isinstance(spam, BaseException):
                if _unavailable(verdict, "spam", cfg.rspamd_fail_open):
                    return raw, verdict
            else:
                reply, spam_headers = self._judge_spam(spam, verdict, allowed=allowed)
                if reply is not None:
                    verdict.reply = reply
                    return raw, verdict

        header = b""
        if clauses:
            header = _fold("Authentication-Results", [self.authserv_id, *clauses])
        verdict.headers = header + spam_headers
        raw = edit_headers(raw, verdict.remove, verdict.subject)
        return raw, verdict

    # -- virus -----------------------------------------------------------------------------------------

    async def _virus(self, raw: bytes) -> Any:
        from fastmail.hygiene import clamd

        limit = int(self.config.clamav_max_size)
        return await clamd.scan(self.clamav, raw, timeout=float(self.config.clamav_timeout),
                                max_length=limit or None)

    # -- spam ------------------------------------------------------------------------------------------

    async def _spam(self, raw: bytes, tx: Transaction, client: ClientChecks | None) -> Any:
        from fastmail.hygiene import rspamd

        # rspamd's Hostname is the client's verified reverse name (its protocol: "resolved hostname of the
        # client"; without it rspamd takes the client as having none); left out when the iprev check is
        # off or did not pass.  The lookup started at connect, so it is normally answered by now.
        hostname = await client.verified_name(float(self.config.checks_dns_timeout)) if client is not None else None
        return await rspamd.check(
            self.rspamd, raw, ip=tx.ip, helo=tx.helo, mail_from=tx.mail_from, rcpts=tx.rcpts, user=tx.user,
            queue_id=tx.qid, hostname=hostname, timeout=float(self.config.rspamd_timeout),
        )

    def _judge_spam(self, res: Any, verdict: Verdict, allowed: bool = False) -> tuple[Reply | None, bytes]:
        """rspamd's verdict as ours: a refusal, or the X-Spam-* fields (merged with the ones rspamd asks
        for, headers.merge_spam_fields), the fields to remove, the rewritten Subject and the folder.
        `allowed` (a DNSWL client): what would be refused goes to Junk instead."""
        cfg = self.config
        score = float(res.score)
        action = str(res.action)
        required = float(cfg.spam_junk_score)
        verdict.log["spam"] = f"{score:.2f}"
        verdict.log["spam_action"] = action.replace(" ", "_")
        reject = action == "reject" or score >= float(cfg.spam_reject_score)
        if reject and cfg.spam_reject_action == "reject" and not allowed:
            return SPAM, b""
        if action == "soft reject" and not reject and not allowed:
            return SOFT_SPAM, b""
        junk = reject or score >= required or action in ("add header", "rewrite subject")
        if action == "rewrite subject" and res.subject:
            verdict.subject = str(res.subject)
        tests = f" tests=[{', '.join(sorted(res.symbols))}]" if res.symbols else ""
        ours = [("X-Spam-Flag", "YES" if junk else "NO"),
                ("X-Spam-Score", f"{score:.2f} / {required:.2f}"),
                ("X-Spam-Status", f"{'Yes' if junk else 'No'}, score={score:.2f} required={required:.2f}{tests}")]
        block, names = merge_spam_fields(ours, res.add_headers or {})
        for name, instance in (res.remove_headers or {}).items():
            verdict.remove.setdefault(name.lower(), int(instance))
        for name in names:  # the fields we write replace every one the message came with
            verdict.remove[name] = 0
        if junk:
            verdict.folder = str(cfg.spam_junk_folder)
        return None, block

    # -- authentication --------------------------------------------------------------------------------

    async def _authenticate(self, raw: bytes, tx: Transaction, client: ClientChecks) -> _Auth:
        cfg = self.config
        budget = float(cfg.checks_timeout)
        loop = asyncio.get_running_loop()
        msg = message.parse(raw)  # one parse of the header section for DKIM, ARC and DMARC
        # The records SPF and DMARC start from — the sender domain's TXT (RFC 7208 §4.4) and _dmarc.<From
        # domain> (RFC 7489 §6.6.3) — are asked at once, side by side with DKIM's key, and read from this
        # message's own view of the answers (dnsq.Lookups: no task per check, and a TTL of 0 still serves
        # the message that asked).  The checks then run one after the other in this coroutine, until one
        # has to wait (_settle: the ones after it then run meanwhile in tasks).
        look = dnsq.Lookups(self.resolver)
        spf_domain = tx.mail_from.rpartition("@")[2] if tx.mail_from else tx.helo
        if self._spf_kept is None:
            self._spf_kept = spf.KeptResults(self.resolver, self.hostname)
        # SPF's result for this client, sender and HELO name, while the answers it came from are kept
        spf_known = self._spf_kept.get(tx.ip, tx.mail_from, tx.helo)
        if spf_domain and spf_known is None:
            look.start("TXT", spf_domain)
        from_domains = dmarc.message_domains(msg)
        if not isinstance(from_domains, dmarc.AuthorDomainError):
            for d in from_domains:
                look.start("TXT", f"_dmarc.{d}")

        async def txt(name: str) -> list[bytes]:
            return await _txt_over(look, name)

        # SPF, DKIM, ARC and DMARC set no timer of their own (timeout=None): _settle's deadline, and DMARC's
        # below, bound them, and a timer costs ~5 µs when a question has to wait.
        inline: dict[str, Awaitable[Any]] = {"dkim": dkim.verify(msg, txt_lookup=txt, timeout=None)}
        tasks: dict[str, Awaitable[Any]] = {}
        known: dict[str, Any] = {}  # what is answered already: no task to wait for it
        if spf_known is not None:
            known["spf"] = spf_known
        else:
            inline["spf"] = self._spf_kept.check_mail_from(tx.ip, tx.mail_from, tx.helo, resolver=look, timeout=None)
        arc_result = arc.without_lookups(msg)
        if arc_result is None:
            tasks["arc"] = arc.verify(msg, txt_lookup=txt, timeout=None)
        else:
            known["arc"] = arc_result
        if client.iprev_wanted:
            if (kept := client.kept_iprev()) is not None:
                known["iprev"] = kept
            else:
                tasks["iprev"] = client.iprev()
        if client.lists_wanted:
            if (kept := client.kept_lists()) is not None:
                known["dnsbl"] = kept
            else:
                tasks["dnsbl"] = client.lists()
        done = {**await _settle(inline, tasks, budget), **known}
        out = _Auth()
        s = done["spf"]
        out.spf = s if not isinstance(s, BaseException) else spf.SPFResult("temperror")
        d = done["dkim"]
        out.dkim = d if not isinstance(d, BaseException) else None
        a = done["arc"]
        out.arc = a if not isinstance(a, BaseException) else arc.ARCResult("temperror")
        if "iprev" in done:
            i = done["iprev"]
            out.iprev = i if not isinstance(i, BaseException) else ("temperror", "")
        if "dnsbl" in done:
            b = done["dnsbl"]
            out.dnsbl = b if not isinstance(b, BaseException) else ("temperror", "")
        try:
            out.dmarc = await within(dmarc.evaluate_message(
                msg, spf_result=out.spf.result, spf_domain=spf_domain, dkim_results=out.dkim or [],
                txt_lookup=txt, timeout=None, domains=from_domains), loop.time() + budget)
        except (TimeoutError, DNSTemporary):
            out.dmarc = dmarc.DMARCResult(result="temperror", policy="none", from_domain="")
        return out

    async def _iprev(self, ip: str) -> tuple[str, str]:
        """RFC 8601 §3 iprev: a PTR name whose A/AAAA records include the client address."""
        addr = ipaddress.ip_address(ip)
        try:
            names = await self.resolver.ptr(addr.reverse_pointer)
        except dnsq.NXDomain:
            return "fail", ""
        except dnsq.DNSTempError:
            return "temperror", ""
        for name in names[:10]:
            try:
                addrs = await (self.resolver.a(name) if addr.version == 4 else self.resolver.aaaa(name))
            except dnsq.NXDomain:
                continue
            except dnsq.DNSTempError:
                return "temperror", name
            if any(ipaddress.ip_address(x) == addr for x in addrs):
                return "pass", name.rstrip(".")
        return "fail", names[0].rstrip(".") if names else ""

    async def _dnsbl(self, ip: str) -> tuple[str, str]:
        """("listed" | "allowed" | "clean" | "temperror", zone).  A DNSWL listing wins over a DNSBL one, an
        earlier zone of a list over a later one.  The zones are asked at the same time and their answers
        read in that order, as if asked one by one: the first listing decides, a DNS failure before it only
        counts when nothing lists the client, and any other error is raised where it comes in that order."""
        zones = [("allowed", z) for z in self.config.checks_dnswl] + [("listed", z) for z in self.config.checks_dnsbl]
        answers = await asyncio.gather(*(self._listed(ip, zone) for _, zone in zones), return_exceptions=True)
        temp = False
        for (kind, zone), answer in zip(zones, answers, strict=True):
            if isinstance(answer, dnsq.DNSTempError):
                temp = True
            elif isinstance(answer, BaseException):
                raise answer
            elif answer:
                return kind, zone
        return ("temperror" if temp else "clean"), ""

    async def dnswl(self, ip: str) -> str | None:
        """The first checks.dnswl zone that lists the client, or None (not listed, or no answer)."""
        for zone in self.config.checks_dnswl:
            try:
                if await self._listed(ip, zone):
                    return str(zone)
            except (dnsq.DNSTempError, OSError, ValueError, TimeoutError):
                continue
        return None

    async def _listed(self, ip: str, zone: str) -> bool:
        """RFC 5782 §2.1: the address's reversed labels under the zone have an A record in 127.0.0.0/8."""
        addr = ipaddress.ip_address(ip)  # RFC 5782 §5: 127.0.0.1 is never listed, 127.0.0.2 always
        base = addr.reverse_pointer.rsplit(".", 2)[0]  # "4.3.2.1" of "4.3.2.1.in-addr.arpa", nibbles for v6
        try:
            answers = await self.resolver.a(f"{base}.{zone}")
        except dnsq.NXDomain:
            return False
        # 127.0.0.0/8 answers are listings; 127.255.255.0/24 are a list's error codes (refused query)
        return any(x.startswith("127.") and not x.startswith("127.255.255.") for x in answers)

    def client_checks(self, ip: str, *, start: bool = True) -> ClientChecks:
        """The checks of the client's address for a session on the SMTP listener (see ClientChecks); `start`:
        ask DNS now (at connect), so that the answers are in by the end of DATA."""
        checks = ClientChecks(self, ip)
        if start:
            checks.start()
        return checks

    def _judge_auth(self, auth: _Auth, tx: Transaction, verdict: Verdict) -> tuple[list[str], Reply | None, bool]:
        cfg = self.config
        clauses: list[str] = []
        s = auth.spf
        if tx.mail_from:
            clauses.append(f"spf={s.result} smtp.mailfrom={_quote(tx.mail_from.rpartition('@')[2])}")
        else:
            clauses.append(f"spf={s.result} smtp.helo={_quote(tx.helo)}")
        if auth.dkim is None:
            clauses.append("dkim=temperror")
        elif not auth.dkim:
            clauses.append("dkim=none")
        for r in auth.dkim or []:
            clauses.append(f"dkim={r.result} header.d={_quote(r.domain)} header.s={_quote(r.selector)} "
                           f"header.b={_quote(r.header_b)}")
        dm = auth.dmarc
        if dm is not None:
            pol = f" (p={dm.record.p})" if dm.record is not None else ""
            clauses.append(f"dmarc={dm.result}{pol} header.from={_quote(dm.from_domain or 'unknown')}")
        clauses.append(f"arc={auth.arc.result}")
        if auth.iprev is not None:
            res, name = auth.iprev
            clauses.append(f"iprev={res} policy.iprev={tx.ip}" + (f" ({name})" if name else ""))
        verdict.log.update(spf=s.result, dkim=",".join(r.result for r in auth.dkim or []) or "none",
                           dmarc=dm.result if dm else None, arc=auth.arc.result,
                           iprev=auth.iprev[0] if auth.iprev else None,
                           dnsbl=auth.dnsbl[0] if auth.dnsbl else None)

        temp = s.result == "temperror" or auth.dkim is None or any(r.result == "temperror" for r in auth.dkim) \
            or (dm is not None and dm.result == "temperror")
        if auth.dnsbl is not None:
            kind, _zone = auth.dnsbl
            if kind == "listed":
                return clauses, BLOCKED, False
            temp = temp or kind == "temperror"
        if auth.iprev is not None:
            if auth.iprev[0] == "fail" and cfg.checks_fcrdns == "reject":
                return clauses, IPREV_FAIL, False
            temp = temp or (auth.iprev[0] == "temperror" and cfg.checks_fcrdns in ("reject", "junk"))
        if temp and not cfg.checks_fail_open:
            return clauses, TEMP, False
        if s.result == "fail" and cfg.checks_spf_reject:
            return clauses, SPF_FAIL, False
        junk = False
        if dm is not None and dm.result == "fail" and cfg.checks_dmarc_enforce:
            if dm.policy == "reject":
                return clauses, DMARC_REJECT, False
            junk = dm.policy == "quarantine"
        if auth.iprev is not None and auth.iprev[0] == "fail" and cfg.checks_fcrdns == "junk":
            junk = True
        return clauses, None, junk


class ClientChecks:
    """The checks of the client's address — iprev (RFC 8601 §3, FCrDNS) and the DNSBL/DNSWL zones (RFC 5782)
    — made once per connection and shared by its messages: they depend on the address alone (Postfix's
    postscreen looks a client up at connect too).  A client sending 40 messages over one connection costs
    the 2 + zones questions once, not 40 times.  An answer that was temperror (or an error, or a lookup cut
    short by a message's deadline) is not kept: the next message asks again."""

    def __init__(self, inbound: Inbound, ip: str) -> None:
        cfg = inbound.config
        self._inbound = inbound
        self.ip = ip
        self.iprev_wanted = cfg.checks_fcrdns != "off"
        self.lists_wanted = bool(cfg.checks_dnsbl or cfg.checks_dnswl)
        self._iprev: asyncio.Task[tuple[str, str]] | None = None
        self._lists: asyncio.Task[tuple[str, str]] | None = None

    def start(self) -> None:
        if self.iprev_wanted:
            self._iprev_task()
        if self.lists_wanted:
            self._lists_task()

    def _iprev_task(self) -> asyncio.Task[tuple[str, str]]:
        if self._iprev is None or _spent(self._iprev):
            self._iprev = asyncio.get_running_loop().create_task(self._inbound._iprev(self.ip))
        return self._iprev

    def _lists_task(self) -> asyncio.Task[tuple[str, str]]:
        if self._lists is None or _spent(self._lists):
            self._lists = asyncio.get_running_loop().create_task(self._inbound._dnsbl(self.ip))
        return self._lists

    def kept_iprev(self) -> tuple[str, str] | None:
        """The iprev answer when it is in and kept (see the class doc), else None."""
        return _kept(self._iprev)

    def kept_lists(self) -> tuple[str, str] | None:
        return _kept(self._lists)

    async def iprev(self) -> tuple[str, str]:
        """("pass" | "fail" | "temperror", the PTR name); see Inbound._iprev."""
        return await self._iprev_task()

    async def lists(self) -> tuple[str, str]:
        """See Inbound._dnsbl."""
        return await self._lists_task()

    async def verified_name(self, wait: float) -> str | None:
        """The client's forward-confirmed reverse name, waiting at most `wait` seconds for it; None when the
        iprev check is off, did not pass or has no answer yet."""
        if not self.iprev_wanted:
            return None
        try:  # shielded: a caller that gives up does not cut the lookup short for the authentication checks
            result, name = await asyncio.wait_for(asyncio.shield(self._iprev_task()), wait)
        except Exception:  # TimeoutError, or whatever the lookup raised (the iprev check reports it)
            return None
        return name if result == "pass" and name else None

    def close(self) -> None:
        """The session ended: stop what is still asking."""
        for task in (self._iprev, self._lists):
            if task is not None and not task.done():
                task.cancel()


def _kept(task: asyncio.Task[tuple[str, str]] | None) -> tuple[str, str] | None:
    return task.result() if task is not None and task.done() and not _spent(task) else None


def _spent(task: asyncio.Task[tuple[str, str]]) -> bool:
    """A finished lookup whose answer is not to be reused: cancelled, failed, or temperror."""
    if not task.done():
        return False
    if task.cancelled() or task.exception() is not None:
        return True
    return task.result()[0] == "temperror"


@dataclass
class _Auth:
    spf: spf.SPFResult = field(default_factory=lambda: spf.SPFResult("none"))
    dkim: list[dkim.DKIMResult] | None = field(default_factory=list)  # None: temperror (timeout)
    arc: arc.ARCResult = field(default_factory=lambda: arc.ARCResult("none"))
    dmarc: dmarc.DMARCResult | None = None
    iprev: tuple[str, str] | None = None
    dnsbl: tuple[str, str] | None = None

    @classmethod
    def timed_out(cls) -> _Auth:
        return cls(spf=spf.SPFResult("temperror"), dkim=None, arc=arc.ARCResult("temperror"),
                   dmarc=dmarc.DMARCResult(result="temperror", policy="none", from_domain=""))


async def _txt_over(resolver: Any, name: str) -> list[bytes]:
    """The TXT lookup of dkim/dmarc/arc through a dnsq resolver: [] for NXDOMAIN and NODATA, DNSTemporary for
    the rest."""
    try:
        return await resolver.txt(name)  # type: ignore[no-any-return]
    except dnsq.NXDomain:
        return []
    except dnsq.DNSTempError as e:
        raise DNSTemporary("4.4.3", str(e)) from None


def _unavailable(verdict: Verdict, check: str, fail_open: bool) -> bool:
    """A filter gave no verdict: record temperror; True when the message must wait (451 4.7.0)."""
    verdict.log[check] = "temperror"
    if fail_open:
        return False
    verdict.reply = TEMP
    return True


async def _gather_within(jobs: dict[str, Awaitable[Any]], timeout: float) -> dict[str, Any]:
    """Run the jobs concurrently; each result, or the exception it raised (TimeoutError past `timeout`).
    One job (the usual check with no filter) is awaited here, not in a task of its own."""
    if len(jobs) <= 1:
        return await _settle(jobs, {}, timeout)
    return await _settle({}, jobs, timeout)


async def _settle(inline: dict[str, Awaitable[Any]], tasks: dict[str, Awaitable[Any]],
                  timeout: float) -> dict[str, Any]:
    """Each job's result, or the exception it raised, or TimeoutError once `timeout` passed (one deadline for
    all).  The `tasks` each run in a task of their own from the start.  The `inline` jobs run one after the
    other in this coroutine as long as none has to wait (a job answered from kept DNS answers never does,
    and a task costs ~10 µs); once one waits, the ones after it are put in tasks, so that they run while it
    waits, with the whole deadline.  One timer serves them all, set only when something waits
    (deadline.within)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    running = {name: asyncio.ensure_future(job) for name, job in tasks.items()} if tasks else {}
    out: dict[str, Any] = {}
    jobs = list(inline.items())
    waiting_on: list[str] = []  # the inline job being waited for

    async def run() -> None:
        for k, (name, job) in enumerate(jobs):
            try:
                if type(job) is not CoroutineType:
                    out[name] = await job
                    continue
                step = job.send(None)  # type: ignore[attr-defined]
            except StopIteration as done:
                out[name] = done.value
                continue
            except Exception as e:
                out[name] = e
                _unexpected(name, e)
                continue
            # it waits: the jobs after it run meanwhile, in tasks
            for later, other in jobs[k + 1:]:
                running[later] = asyncio.ensure_future(other)
            waiting_on.append(name)
            try:
                out[name] = await Resumed(job, step)  # type: ignore[arg-type]
            except Exception as e:
                out[name] = e
                _unexpected(name, e)
            waiting_on.clear()
            break
        for task in running.values():
            if not task.done():
                try:
                    await task  # past the deadline the task is cancelled with this wait (it would be below)
                except Exception:  # noqa: S110 — the task's outcome is read below
                    pass

    try:
        try:
            await within(run(), deadline)
        except TimeoutError:  # the deadline (the jobs' own exceptions stay in `out`)
            for name in waiting_on:
                out[name] = TimeoutError(f"{name}: no answer within {timeout:g} s")
        for name, task in running.items():
            if name in out:
                continue
            if not task.done() or task.cancelled():
                out[name] = TimeoutError(f"{name}: no answer within {timeout:g} s")
            elif (exc := task.exception()) is not None:
                _unexpected(name, exc)
                out[name] = exc
            else:
                out[name] = task.result()
    except BaseException:  # cancelled from outside: the inline jobs never started (nor given to a task) closed
        for name, job in jobs:
            if name not in running and inspect.iscoroutine(job) \
                    and inspect.getcoroutinestate(job) == inspect.CORO_CREATED:
                job.close()
        raise
    finally:
        for task in running.values():
            task.cancel()
    return out


def _unexpected(name: str, exc: BaseException) -> None:
    """Log what a check raised that is not one of the failures it is expected to meet."""
    if not isinstance(exc, (TimeoutError, DNSTemporary, dnsq.DNSTempError, OSError, FilterUnavailable)):
        log.event("check_failed", check=name, error=repr(exc))


