"""Crash safety under load (issue #8): SIGKILL each process kind in turn while the server is under load, then
check that nothing accepted was lost, doubled or changed, and that no client saw a wrong answer.

    python -m bench.crash [--kills 20] [--seed N] [--smtp-clients 3] [--imap-clients 20] [--pause 1,4]
                          [--workers 2] [--no-smtp-source] [--keep DIR]

The load, the faults and the checks are tests/integration/crashload.py (the CI-sized run is
tests/integration/test_crash_load.py, 6 kills): SMTP senders whose every 250 is kept with the bytes sent,
IMAP clients (SELECT, FETCH, STORE, APPEND) judging every answer, the delivery process sending every remote
recipient to a sink; the master, a worker, the delivery process SIGKILLed in turn at random moments of a
seeded RNG (the seed is printed and recorded: `--seed` runs the same schedule again).  Here `smtp-source`
(Postfix's) adds background load in addition — 4 sessions to carol@example.org, restarted whenever a kill
ends it; its messages are counted, not verified (it knows no Message-IDs).

Prints one line per kill and a summary, writes bench/results/crash-YYYYMMDD-HHMMSS.json; exit status 1 when
a message was lost, doubled or changed, a client saw a wrong answer, or fsck found a problem.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.smtp.report import git_info, machine_info

RESULTS = Path(__file__).resolve().parent / "results"


class SmtpSource:
    """`smtp-source` to carol@example.org in a loop (a kill ends a run; the next starts when it did)."""

    def __init__(self, sessions: int = 4, size: int = 4096) -> None:
        self.sessions, self.size = sessions, size
        self.done = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = self.failed = 0
        self.thread: threading.Thread | None = None

    def start(self, srv: Any) -> None:
        self.srv = srv
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.is_set():
            self.proc = subprocess.Popen(
                ["smtp-source", "-s", str(self.sessions), "-m", "2000", "-l", str(self.size), "-f", "bg@remote.test",
                 "-t", "carol@example.org", f"127.0.0.1:{self.srv.ports['smtp']}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                code = self.proc.wait(600)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
            self.runs += 1
            self.failed += code != 0
            self.done.wait(0.2)

    def stop(self) -> dict[str, Any]:
        self.done.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # our own child, by its pid
        if self.thread is not None:
            self.thread.join(30)
        return {"runs": self.runs, "ended_by_a_kill_or_error": self.failed}


def main(argv: list[str] | None = None) -> int:
    from tests.integration import crashload

    p = argparse.ArgumentParser(prog="python -m bench.crash", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs in all, master/worker/delivery in turn")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (0: a new one, printed)")
    p.add_argument("--smtp-clients", type=int, default=3)
    p.add_argument("--imap-clients", type=int, default=20)
    p.add_argument("--pause", default="1,4", help="seconds between a recovery and the next kill: LO,HI")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-smtp-source", action="store_true", help="no smtp-source background load")
    p.add_argument("--keep", default="", help="run in this directory and keep it (default: a temp dir, removed)")
    args = p.parse_args(argv)
    import random

    seed = args.seed or random.SystemRandom().randrange(1, 1 << 32)
    lo, hi = (float(x) for x in args.pause.split(","))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fastmail-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    background = None if args.no_smtp_source or not shutil.which("smtp-source") else SmtpSource()
    print(f"bench.crash: {args.kills} kills, seed {seed}, {args.smtp_clients} SMTP senders, {args.imap_clients} IMAP "
          f"clients, {args.workers} workers, smtp-source {'on' if background else 'off'}; data in {work}", flush=True)
    try:
        res = crashload.run(work, args.kills, seed, smtp_clients=args.smtp_clients, imap_clients=args.imap_clients,
                            pause=(lo, hi), workers=args.workers, background=background,
                            log=lambda s: print(s, flush=True))
        if background is not None:
            res["background_stored"] = len(crashload.stored(work / "data", "carol@example.org"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res.update(machine=machine_info(Path(tempfile.gettempdir())), git=git_info(), python=sys.version.split()[0],
               command=" ".join(["python -m bench.crash", *(argv if argv is not None else sys.argv[1:])]))
    failures = [what for what, bad in (
        ("wrong answers", res["wrong_answer_count"]), ("lost", res["lost_count"]),
        ("duplicates", res["duplicate_count"]), ("changed/unexpected stored", res["bad_stored_count"]),
        ("fsck problems", len(res["fsck"].get("problems", [1]))), ("outbound missing", res["outbound_missing_count"]),
        ("queue not drained", not res["queue_drained"]), ("kills short", len(res["kills"]) != args.kills),
        ("fsck --repair left something", res["fsck_after_repair"].get("notes", [1]) or
         res["fsck_after_repair"].get("problems", [1]))) if bad]
    res["failures"] = failures
    c = res["counts"]
    rows = [
        ("kills (master/worker/delivery)", f"{len(res['kills'])} ({res['kills_by_kind']})"),
        ("load time", f"{res['load_s']} s"),
        ("SMTP messages accepted (250) / sent", f"{c.get('smtp_accepted', 0)} / {res['sent'] - res['accepted_append']}"
         f" (sent without 250 and stored anyway: {res['unacknowledged_present']})"),
        ("IMAP APPENDs accepted", res["accepted_append"]),
        ("IMAP FETCH bodies checked / STOREs", f"{c.get('imap_fetch_body', 0)} / {c.get('imap_store', 0)}"),
        ("connection resets seen (SMTP/IMAP), SMTP 421", f"{c.get('smtp_reset', 0)}/{c.get('imap_reset', 0)}, "
         f"{c.get('smtp_421', 0)}"),
        ("outbound recipients accepted / delivered / duplicates",
         f"{res['outbound_accepted']} / {res['outbound_delivered']} / {res['outbound_duplicates']}"),
        ("smtp-source background: runs, messages stored",
         f"{res.get('background', {}).get('runs', '-')}, {res.get('background_stored', '-')}"),
        ("lost / duplicated / changed", f"{res['lost_count']} / {res['duplicate_count']} / {res['bad_stored_count']}"),
        ("wrong answers", res["wrong_answer_count"]),
        ("fsck", f"exit {res['fsck_exit']}, problems {len(res['fsck'].get('problems', []))}, "
                 f"notes {sorted({n['kind'] for n in res['fsck'].get('notes', [])})}; after --repair: "
                 f"{'clean' if res['fsck_after_repair'].get('clean') and not res['fsck_after_repair'].get('notes') else res['fsck_after_repair']}"),
        ("master kill: children gone / restarted (s, max)",
         f"{max((k['children_exit_s'] for k in res['kills'] if 'children_exit_s' in k), default=0)} / "
         f"{max((k['recovered_s'] for k in res['kills'] if k['kind'] == 'master'), default=0)}"),
        ("worker, delivery kill: replaced (s, max)",
         f"{max((k['recovered_s'] for k in res['kills'] if k['kind'] != 'master'), default=0)}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print("RESULT:", "FAIL " + ", ".join(failures) if failures else "OK (messages lost: 0)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("crash-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
