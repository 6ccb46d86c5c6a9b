"""What the fastmail variants with checks (issue #7) check against, started once per run and stopped at its end.

- **DNS**: the test suite's LocalDNS (tests/integration/dnsserver.py) in a process of its own, behind a
  UDP front that replays its replies (bench/smtp/dnszone.py: dnslib alone costs ~300 µs of CPU a query,
  the front ~15), answering for the sender's domain as a well-kept sending domain would: SPF
  `v=spf1 ip4:127.0.0.1 -all`, DMARC `p=none`, the DKIM key of the signed message, PTR of 127.0.0.1 →
  `client.remote.test` (smtp-source's HELO name) → A 127.0.0.1 (FCrDNS pass), and a DNSBL and a DNSWL zone
  that list only 127.0.0.2 (RFC 5782 §5's test entry), never the client.  fastmail's checks ask it
  (`checks.resolver`) and so does rspamd.
- **rspamd** and **clamd**: the test suite's (tests/integration/filters.py: a private config, the stock
  rules, the modules that would go on the Internet off, clamd with an EICAR-only signature database), rspamd
  with as many normal workers as CPUs and `check_local = true` (rspamd skips SPF, DMARC and its HELO/rDNS
  checks for a loopback client otherwise, and every benchmark client is 127.0.0.1).
- **The message**: smtp-source cannot sign, but it sends a prepared message with `-F FILE`; `signed_message`
  makes one of the scenario's payload size, DKIM-signed (rsa-sha256, 2048 bits, relaxed/relaxed) by
  remote.test, From aligned with the envelope sender, so SPF, DKIM and DMARC all pass.  The same message
  goes to every target of the run.

Their process trees are sampled apart from the server's (CPU per round, in load_smtp.run_round).
"""

from __future__ import annotations

import email.utils
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.smtp.target import CLIENT_NAME, RECIPIENT, SENDER, stop_process

if TYPE_CHECKING:
    from tests.integration.filters import Clamd, Rspamd

ROOT = Path(__file__).resolve().parents[2]
SENDER_DOMAIN = SENDER.rpartition("@")[2]  # remote.test
SELECTOR = "bench"
DNSBL_ZONE = "bl.bench.test"
DNSWL_ZONE = "wl.bench.test"
CLIENT_IP = "127.0.0.1"
RSPAMD_OPTIONS = "check_local = true;"


# -- the zone and the message --------------------------------------------------------------------------


def zone(dkim_record: str | None) -> dict[str, list[tuple[str, Any]]]:
    """The records the checks of a message from smtp-source find (LocalDNS.set's form, JSON-able)."""
    from fastmail.hygiene.dkim import txt_strings

    ptr = ".".join(reversed(CLIENT_IP.split("."))) + ".in-addr.arpa"
    z: dict[str, list[tuple[str, Any]]] = {
        SENDER_DOMAIN: [("TXT", f"v=spf1 ip4:{CLIENT_IP} -all"), ("MX", (10, f"{CLIENT_NAME}."))],
        f"_dmarc.{SENDER_DOMAIN}": [("TXT", "v=DMARC1; p=none")],
        CLIENT_NAME: [("A", CLIENT_IP)],
        ptr: [("PTR", f"{CLIENT_NAME}.")],
        # RFC 5782 §5: a list holds 127.0.0.2 (its test entry) and never 127.0.0.1
        f"2.0.0.127.{DNSBL_ZONE}": [("A", "127.0.0.2"), ("TXT", "listed for testing")],
        f"2.0.0.127.{DNSWL_ZONE}": [("A", "127.0.0.2")],
    }
    if dkim_record is not None:
        z[f"{SELECTOR}._domainkey.{SENDER_DOMAIN}"] = [("TXT", txt_strings(dkim_record))]
    return z


def dkim_key() -> tuple[bytes, str]:
    """A new rsa-sha256 key of 2048 bits (what most senders sign with): (private PEM, its DNS record)."""
    from fastmail.hygiene import dkim

    pem, _ = dkim.keygen(SENDER_DOMAIN, SELECTOR, "rsa-sha256")
    return pem, dkim.public_record(pem)


def signed_message(size: int, pem: bytes) -> bytes:
    """A message with `size` bytes of body in lines of 78 characters + CRLF, like smtp-source's `-l`
    payload, DKIM-signed (relaxed/relaxed) by SENDER_DOMAIN with the key `pem`."""
    from fastmail.hygiene import dkim

    words = ("the quick brown fox jumps over the lazy dog while the benchmark counts every message "
             "that the server stores durably before it answers ").split()
    lines: list[str] = []
    total = i = 0
    while total < size:
        line = f"{len(lines) + 1:05d}"
        while len(line) < 72:
            line += " " + words[i % len(words)]
            i += 1
        line = line[:78 if size - total >= 80 else max(0, size - total - 2)]
        lines.append(line)
        total += len(line) + 2
    body = "".join(f"{line}\r\n" for line in lines).encode()
    head = (f"From: Bench Sender <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: fastmail ingress benchmark\r\n"
            f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
            f"Message-ID: <bench.{int(time.time())}@{SENDER_DOMAIN}>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n").encode()
    message = head + body
    sig = dkim.sign(message, domain=SENDER_DOMAIN, selector=SELECTOR, private_key_pem=pem, algorithm="rsa-sha256")
    return sig + message


def write_for_smtp_source(message: bytes, path: Path) -> None:
    """smtp-source -F sends each line of the file with CRLF appended (and dot-stuffed): write LF lines."""
    path.write_bytes(message.replace(b"\r\n", b"\n"))


# -- the services --------------------------------------------------------------------------------------


class Services:
    """The DNS server, rspamd and clamd, each only when `want` names it ("dns", "rspamd", "clamd")."""

    def __init__(self, want: set[str], *, dns_ttl: int = 0, rspamd_workers: int = os.cpu_count() or 1) -> None:
        self.root, self.want, self.dns_ttl = Path(), set(want), dns_ttl
        self.records: dict[str, list[tuple[str, Any]]] = {}
        if "rspamd" in self.want:
            self.want.add("dns")  # rspamd asks only our DNS server
        self.rspamd_workers = rspamd_workers
        self.dns_proc: subprocess.Popen[bytes] | None = None
        self.dns_address = ""
        self.dns_stats = Path()
        self._dns_seq = 0
        self.rspamd: Rspamd | None = None
        self.clamd: Clamd | None = None
        self.started_in: dict[str, float] = {}

    def check_installed(self) -> str | None:
        missing = [p for p in ("rspamd", "clamd") if p in self.want and shutil.which(p) is None]
        if missing:
            return f"{', '.join(missing)} not installed: make system-deps (Debian: rspamd, clamav-daemon)"
        try:
            import dkim  # noqa: F401
            import dnslib  # noqa: F401
            import pytest  # noqa: F401  (tests.integration.filters uses it)
        except ImportError as e:
            return f"{e.name} is missing: pip install -e '.[test]'"
        return None

    def start(self, root: Path, records: dict[str, list[tuple[str, Any]]]) -> None:
        """Start what is wanted, its files under `root`; the DNS server with `records` (zone())."""
        self.root, self.records = root, records
        self.dns_stats = root / "dns-stats.json"
        self.root.mkdir(parents=True, exist_ok=True)
        if "dns" in self.want:
            self._start_dns()
        if "rspamd" in self.want:
            from tests.integration.filters import Rspamd

            t0 = time.monotonic()
            self.rspamd = Rspamd(self.root / "rspamd", self.dns_address, normal_workers=self.rspamd_workers,
                                 options=RSPAMD_OPTIONS).start()
            self.started_in["rspamd"] = round(time.monotonic() - t0, 2)
        if "clamd" in self.want:
            from tests.integration.filters import Clamd

            t0 = time.monotonic()
            self.clamd = Clamd(self.root / "clamd").start()
            self.started_in["clamd"] = round(time.monotonic() - t0, 2)

    def _start_dns(self, timeout: float = 30.0) -> None:
        zone_file = self.root / "zone.json"
        zone_file.write_text(json.dumps(self.records, indent=1))
        t0 = time.monotonic()
        with open(self.root / "dns.log", "wb") as err:
            self.dns_proc = subprocess.Popen(
                [sys.executable, "-m", "bench.smtp.dnszone", str(zone_file), str(self.dns_ttl), str(self.dns_stats)],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        assert self.dns_proc.stdout is not None
        ready, _, _ = select.select([self.dns_proc.stdout], [], [], timeout)
        line = self.dns_proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"the DNS server did not start: {(self.root / 'dns.log').read_text()[-2000:]}")
        self.dns_address = line
        self.started_in["dns"] = round(time.monotonic() - t0, 2)

    def roots(self) -> dict[str, list[int]]:
        """Root processes of each running service (their trees are sampled)."""
        out = {}
        for name, proc in (("rspamd", self.rspamd.proc if self.rspamd else None),
                           ("clamd", self.clamd.proc if self.clamd else None), ("dns", self.dns_proc)):
            if proc is not None and proc.poll() is None:
                out[name] = [proc.pid]
        return out

    def dns_asked(self, timeout: float = 5.0) -> dict[str, int]:
        """Questions the DNS server answered since it started, by type ({} without one)."""
        if self.dns_proc is None or self.dns_proc.poll() is not None:
            return {}
        self._dns_seq += 1
        self.dns_proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                stats = json.loads(self.dns_stats.read_text())
                if stats["seq"] >= self._dns_seq:
                    self._dns_seq = stats["seq"]
                    return {str(k): int(v) for k, v in stats["asked"].items()}
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        return {}

    def alive(self) -> list[str]:
        """The wanted services that are not running (a round with one down is not a fair round)."""
        running = self.roots()
        return [name for name in sorted(self.want) if name not in running]

    def stop(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.rspamd is not None:
            self.rspamd.stop()
            out["rspamd_exit"] = self.rspamd.proc.returncode if self.rspamd.proc else None
        if self.clamd is not None:
            self.clamd.stop()
            out["clamd_exit"] = self.clamd.proc.returncode if self.clamd.proc else None
        if self.dns_proc is not None:
            out["dns_exit"] = stop_process(self.dns_proc, timeout=10)
            if self.dns_proc.stdout is not None:
                self.dns_proc.stdout.close()
        return out

    def versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, argv in (("rspamd", ["rspamd", "--version"]), ("clamd", ["clamd", "--version"])):
            if name in self.want:
                try:
                    out[name] = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
                except OSError as e:
                    out[name] = f"? ({e})"
        if "dns" in self.want:
            out["dnslib"] = metadata.version("dnslib")
        out["dkimpy"] = metadata.version("dkimpy")
        return out

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"started": sorted(self.want), "start_s": self.started_in}
        if "dns" in self.want:
            out["dns"] = {"address": self.dns_address, "ttl": self.dns_ttl, "server": "bench/smtp/dnszone.py: "
                          "tests/integration/dnsserver.py's LocalDNS in its own process, UDP replies replayed by "
                          "a front (asyncio/uvloop)", "zone": self.records}
        if self.rspamd is not None:
            out["rspamd"] = {"url": self.rspamd.url, "normal_workers": self.rspamd_workers,
                             "extra_options": RSPAMD_OPTIONS, "config": self.rspamd.config.read_text()}
        if self.clamd is not None:
            out["clamd"] = {"address": self.clamd.unix_address, "config": self.clamd.config.read_text(),
                            "signatures": "one: EICAR (tests/integration/filters.py), not ClamAV's databases"}
        return out
