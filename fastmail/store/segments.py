"""Message blobs: immutable byte ranges in append-only segment files.

Each process appends to its own segment file (named by a random 63-bit id, created O_EXCL and made durable
by an fsync of the directory), so writers never share a file.  A batch of messages is written with one
write() and made durable with one fdatasync(): that is the data half of group commit.  The file is kept
zero-filled (allocated, written, synced) a few MiB ahead of its end: a batch then overwrites blocks that
already exist, so its fdatasync flushes only data — no journal commit for a new size or new extents (on
ext4 here: ~0.2 ms instead of ~0.5 ms, see bench/README.md).  A process's zeros beyond its end are cut
off when it closes its segment.  A blob is located by
(segment id, offset, length); the LMDB index holds that location and a reference count.  When the count
drops to zero the range is released with FALLOC_FL_PUNCH_HOLE, so disk space comes back without copying;
a segment file with nothing live left is unlinked by `fsck`/compaction.

Crash safety: bytes appended but never referenced by a committed LMDB record are garbage, never visible.
A torn append can only affect the tail of a segment that no committed record references.

A full disk (ENOSPC, EDQUOT): a batch that cannot be written is cut off again (the file truncated back to
where the batch began) and the segment stays in use, so a full disk costs no file per attempt and the next
batch, once space is back, simply appends there.  Any other write or sync error abandons the segment: its
tail is unknown (after a failed fdatasync the page cache cannot be trusted), fsck reclaims it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
import threading
from pathlib import Path

SEGMENT_LIMIT = 256 * 1024 * 1024
RUNWAY = 4 * 1024 * 1024  # zero-filled bytes kept ahead of a segment's end
_ZEROS = bytes(1024 * 1024)
LOCATION = struct.Struct(">QQQ")  # segment id, offset, length
FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk (or the data directory's filesystem quota)


def is_full(exc: BaseException) -> bool:
    """The error says the disk (or its quota) is full: the message may be retried once space is back."""
    return isinstance(exc, OSError) and exc.errno in FULL

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Segments:
    """Appends batches to this process's segment; reads and releases ranges of any segment."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd = -1
        self._seg = 0
        self._size = 0
        self._end = 0  # bytes of the file that exist (written zeros or data): _size <= _end
        self._pid = 0
        self._read_fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def path(self, seg: int) -> Path:
        return self.dir / f"{seg:016x}.seg"

    def _open_new(self) -> None:
        self._close_own()
        while True:
            seg = int.from_bytes(os.urandom(8), "big") >> 1
            try:
                fd = os.open(self.path(seg), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            except FileExistsError:
                continue
            # Ours while we hold this lock (fsck leaves a locked segment alone).  fsck may have taken the
            # lock of the new, empty file first and unlinked it as dead: then take another.
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink:
                break
            os.close(fd)
        self._fd, self._seg, self._size, self._end, self._pid = fd, seg, 0, 0, os.getpid()
        try:
            self._extend()
        except OSError:  # a nearly full disk: append without runway rather than refuse the batch
            pass
        fsync_dir(self.dir)

    def _extend(self) -> None:
        """Zero-fill the file up to RUNWAY past its used end and make that durable (size and extents)."""
        target = min(self._size + RUNWAY, max(SEGMENT_LIMIT, self._size))
        while self._end < target:
            self._end += os.pwrite(self._fd, _ZEROS[:target - self._end], self._end)
        os.fdatasync(self._fd)

    def _close_own(self) -> None:
        """Close this process's segment, cutting off the zeros past its used end."""
        if self._fd < 0:
            return
        if self._pid == os.getpid() and self._end > self._size:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
        os.close(self._fd)
        self._fd = -1

    def append_batch(self, bodies: list[bytes]) -> list[bytes]:
        """Append and fdatasync; return the packed location of each body, in order."""
        total = sum(len(b) for b in bodies)
        if self._fd < 0 or self._pid != os.getpid() or self._size + total > SEGMENT_LIMIT and self._size:
            self._open_new()
        start = self._size
        data = bodies[0] if len(bodies) == 1 else b"".join(bodies)
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.pwrite(self._fd, view[written:], start + written)
        except OSError as e:
            if is_full(e) and self._cut(start):
                raise  # the segment is as before the batch: the next one appends at `start` again
            self._abandon(start)
            raise
        try:
            os.fdatasync(self._fd)
        except OSError:
            self._abandon(start)  # after a failed sync the tail is unknown: never append after it again
            raise
        self._size += total
        self._end = max(self._end, self._size)
        if self._end - self._size < RUNWAY // 4:
            try:
                self._extend()
            except OSError:  # e.g. a full disk: the batch is durable; the next one appends without runway
                pass
        locations = []
        offset = start
        for body in bodies:
            locations.append(LOCATION.pack(self._seg, offset, len(body)))
            offset += len(body)
        return locations

    def _cut(self, start: int) -> bool:
        """A batch at `start` could not be written: cut the file back to its size before the batch (the
        blocks the batch added past the zero-filled runway are freed); False if that failed."""
        try:
            os.ftruncate(self._fd, max(self._end, start))
        except OSError:
            return False
        return True

    def _abandon(self, start: int) -> None:
        try:
            os.ftruncate(self._fd, start)  # give back what the failed batch wrote; fsck would otherwise
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1

    def discard(self, locations: list[bytes]) -> None:
        """Appended ranges that will never be referenced (their LMDB transaction was not committed): when
        they are this segment's last batch, the next batch is written over them; else they are punched."""
        if not locations:
            return
        ranges = [LOCATION.unpack(loc) for loc in locations]
        seg, start, _ = ranges[0]
        end = max(o + n for _, o, n in ranges)
        if self._fd >= 0 and self._pid == os.getpid() and all(s == seg == self._seg for s, _, _ in ranges) \
                and end == self._size:
            self._size = min(start, *(o for _, o, _ in ranges))
            return
        for loc in locations:
            try:
                self.release(loc)
            except OSError:
                pass  # fsck reclaims it

    def _reader(self, seg: int) -> int:
        fd = self._read_fds.get(seg)
        if fd is None:
            with self._lock:
                fd = self._read_fds.get(seg)
                if fd is None:
                    if len(self._read_fds) > 64:
                        for old in list(self._read_fds.values()):
                            os.close(old)
                        self._read_fds.clear()
                    fd = os.open(self.path(seg), os.O_RDONLY | os.O_CLOEXEC)
                    self._read_fds[seg] = fd
        return fd

    def read(self, location: bytes) -> bytes:
        seg, offset, length = LOCATION.unpack(location)
        data = os.pread(self._reader(seg), length, offset)
        if len(data) != length:
            raise OSError(f"segment {seg:016x} is short at {offset}+{length}")
        return data

    def release(self, location: bytes) -> None:
        """Give the range's disk blocks back (punch a hole); the file keeps its size and offsets."""
        seg, offset, length = LOCATION.unpack(location)
        try:
            fd = os.open(self.path(seg), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
                err = ctypes.get_errno()
                if err not in (95,):  # EOPNOTSUPP: the filesystem cannot punch; compaction reclaims later
                    raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def release_all(self, locations: list[bytes]) -> None:
        """release() each range, adjacent ones of a segment joined into one: messages stored one after the
        other (one batch) then free whole blocks where they meet too, instead of leaving a zeroed block."""
        ranges = sorted(LOCATION.unpack(loc) for loc in locations)
        merged: list[list[int]] = []
        for seg, off, length in ranges:
            if merged and merged[-1][0] == seg and merged[-1][1] + merged[-1][2] == off:
                merged[-1][2] += length
            else:
                merged.append([seg, off, length])
        for seg, off, length in merged:
            self.release(LOCATION.pack(seg, off, length))

    def close(self) -> None:
        self._close_own()
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
