"""How fast this disk makes data durable: the bound on any server that syncs per message.

    python -m bench.fsync_rate [--dir DIR] [--seconds S]

In a scratch folder under DIR (default: the system temp dir), each test runs for S seconds (at most 100,000
operations) and reports operations per second and the median latency:

- file+fsync: create a file, write 4 KiB, fsync, close (a queue file or a Maildir file);
- maildir: the same in tmp/, then rename into new/ and fsync new/ (what bench/peers/aiosmtpd_maildir does);
- append+fdatasync xB (B = 1, 16, 64): B appends of 4 KiB to one file, then one fdatasync (a segment under
  group commit: B messages per sync);
- lmdb commit: one synced LMDB write transaction (sync + metasync, as fastmail's store opens it) putting
  one 200-byte record.  A fastmail batch costs one fdatasync of its segment plus one such commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BLOCK = os.urandom(4096)


def _timed(op: Callable[[int], None], seconds: float, max_ops: int) -> dict[str, float]:
    lat: list[float] = []
    t0 = time.perf_counter()
    end = t0 + seconds
    i = 0
    while i < max_ops:
        s = time.perf_counter()
        if s >= end:
            break
        op(i)
        lat.append(time.perf_counter() - s)
        i += 1
    wall = time.perf_counter() - t0
    return {"ops": i, "ops_per_s": round(i / wall, 1), "median_ms": round(statistics.median(lat) * 1000, 3)}


def measure(directory: Path | None = None, seconds: float = 2.0, max_ops: int = 100_000) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="fsync-rate-", dir=directory))
    out: dict[str, Any] = {"dir": str(scratch.parent), "seconds_per_test": seconds, "block": len(BLOCK)}
    try:
        files = scratch / "files"
        files.mkdir()

        def file_fsync(i: int) -> None:
            fd = os.open(files / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, BLOCK)
            os.fsync(fd)
            os.close(fd)

        out["file+fsync"] = _timed(file_fsync, seconds, max_ops)

        tmp, new = scratch / "md" / "tmp", scratch / "md" / "new"
        tmp.mkdir(parents=True)
        new.mkdir()
        new_fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)

        def maildir(i: int) -> None:
            fd = os.open(tmp / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, BLOCK)
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp / str(i), new / str(i))
            os.fsync(new_fd)

        try:
            out["maildir"] = _timed(maildir, seconds, max_ops)
        finally:
            os.close(new_fd)

        for batch in (1, 16, 64):
            fd = os.open(scratch / f"segment-{batch}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

            def append(_: int, fd: int = fd, batch: int = batch) -> None:
                for _ in range(batch):
                    os.write(fd, BLOCK)
                os.fdatasync(fd)

            try:
                r = _timed(append, seconds, max(1, max_ops // batch))
            finally:
                os.close(fd)
            out[f"append+fdatasync x{batch}"] = {**r, "syncs_per_s": r["ops_per_s"],
                                                  "appends_per_s": round(r["ops_per_s"] * batch, 1)}
        try:
            import lmdb
        except ImportError:
            out["lmdb commit"] = {"error": "py-lmdb not installed"}
        else:
            env = lmdb.open(str(scratch / "lmdb"), map_size=1 << 28, sync=True, metasync=True)
            value = os.urandom(200)

            def commit(i: int) -> None:
                with env.begin(write=True) as txn:
                    txn.put(i.to_bytes(8, "big"), value)

            try:
                out["lmdb commit"] = _timed(commit, seconds, max_ops)
            finally:
                env.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def format_rates(r: dict[str, Any]) -> str:
    parts = []
    for key, v in r.items():
        if isinstance(v, dict) and "ops_per_s" in v:
            if "appends_per_s" in v:
                parts.append(f"{key}: {v['syncs_per_s']:,.0f} syncs/s = {v['appends_per_s']:,.0f} appends/s")
            else:
                parts.append(f"{key}: {v['ops_per_s']:,.0f}/s ({v['median_ms']:.2f} ms)")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fsync_rate", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=None, help="a folder on the file system to measure")
    p.add_argument("--seconds", type=float, default=2.0, help="per test (default 2)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    r = measure(args.dir, args.seconds)
    print(json.dumps(r, indent=2) if args.json else f"fsync rate in {r['dir']}: {format_rates(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
