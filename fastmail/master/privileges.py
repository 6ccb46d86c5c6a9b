"""Dropping root in a forked process (ARCHITECTURE §1 "Privileges").

The master binds every listener first (ports below 1024 need root), then each child drops to the
configured user *before* its ``worker_main`` runs, so no session code ever runs as root.  The master
itself stays root: on HUP it may have to bind new listeners (a new port below 1024, a new unix socket
path).  It never parses mail or speaks to a client, which is what makes keeping root there acceptable.

Dropping is done so it cannot be undone: supplementary groups replaced (initgroups), then real,
effective and saved gid and uid set (setresgid/setresuid), then checked — a process whose saved uid
is still 0 could switch back — and finally ``PR_SET_NO_NEW_PRIVS`` so that no setuid binary it might
exec can give root back either.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from fastmail.master.errors import BootError

__all__ = [
    "ROOT_WORKERS",
    "Credentials",
    "access_as",
    "drop_privileges",
    "give_tree",
    "lookup_group",
    "lookup_user",
    "prctl",
    "resolve_credentials",
    "workers_run_as_root",
]

log = logging.getLogger("fastmail.master")

_PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class Credentials:
    """Who a child becomes: ``user`` is the passwd name (for initgroups), "" for a bare numeric uid."""

    uid: int
    gid: int
    user: str


def lookup_user(user: str) -> tuple[int, int, str]:
    """(uid, primary gid, passwd name) of a user name or number; a number without a passwd entry is
    (uid, uid, "").  BootError when a name does not exist."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise BootError(f"user {user!r} does not exist") from None
        uid = int(user)
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            return uid, uid, ""
    return pw.pw_uid, pw.pw_gid, pw.pw_name


def lookup_group(group: str) -> int:
    """The gid of a group name or number; BootError when a name does not exist."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise BootError(f"group {group!r} does not exist") from None


def resolve_credentials(user: str, group: str = "") -> Credentials | None:
    """Credentials to drop to, or None when nothing is to be done.

    ``user`` "" means: stay who we are.  ``group`` "" means: the user's primary group.  When the master
    is not root it cannot switch user: if ``user`` is someone else a warning is logged and the server
    runs as the current user (a normal user on high ports must work out of the box).
    """
    if not user:
        if group:
            log.warning('event=privileges_kept reason="group is set but user is empty" group=%s', group)
        return None
    uid, gid, name = lookup_user(user)
    if group:
        gid = lookup_group(group)
    if os.geteuid() != 0:
        if uid != os.geteuid():
            log.warning(
                'event=privileges_kept reason="not running as root" user=%s uid=%d', user, os.geteuid()
            )
        return None
    return Credentials(uid=uid, gid=gid, user=name)


def give_tree(path: str | os.PathLike[str], creds: Credentials) -> int:
    """Make ``path`` and everything under it ``creds``' (uid and gid); returns how many entries changed.

    For the root master's data folder, which the workers' user can write to: the walk goes by directory
    descriptors and never follows a symbolic link (a link planted there changes owner itself, never its
    target), and a file with more than one hard link is left as it is unless it is already the user's (a
    hard link to a file elsewhere would otherwise hand that file over).  Entries that are already right are
    not touched (no ctime change)."""
    uid, gid = creds.uid, creds.gid
    changed = 0

    def own(name: str | os.PathLike[str], dir_fd: int | None) -> None:
        nonlocal changed
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_uid, st.st_gid) == (uid, gid):
            return
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) and st.st_uid != uid:
            log.warning("event=chown_skipped reason=\"hard link\" path=%s", os.path.join(os.fspath(path),
                                                                                       os.fspath(name)))
            return
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        changed += 1

    own(path, None)
    for _root, dirs, files, root_fd in os.fwalk(path, follow_symlinks=False):
        for name in dirs + files:
            own(name, root_fd)
    return changed


ROOT_WORKERS = "running workers as root; set server.user"


def workers_run_as_root(creds: Credentials | None) -> bool:
    """Would the children of a master with these credentials (from resolve_credentials) serve as root?"""
    return os.geteuid() == 0 and (creds is None or creds.uid == 0)


def access_as(creds: Credentials, checks: Sequence[tuple[str | os.PathLike[str], int]]) -> list[bool]:
    """``os.access(path, mode)`` of each check as ``creds`` will see it: in a forked child that drops to them
    for good (so supplementary groups and ACLs count), then exits.  For a root master checking, before it
    starts, what its workers will be able to reach.  BootError when the child cannot tell."""
    if not checks:
        return []
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's work is seen through the pipe
        status = 1
        try:
            os.close(r)
            drop_privileges(creds)
            answer = bytes(os.access(path, mode) for path, mode in checks)
            while answer:
                answer = answer[os.write(w, answer):]
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or len(answer) != len(checks):
        raise BootError(f"a process as uid {creds.uid} gid {creds.gid} could not check file access")
    return [b == 1 for b in answer]


def prctl(option: int, arg: int) -> bool:
    """Best-effort ``prctl(option, arg, 0, 0, 0)``; False where there is no prctl (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the running process's libc: no library search
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _no_new_privs() -> None:
    prctl(_PR_SET_NO_NEW_PRIVS, 1)  # where it fails, the uid checks above still hold


def drop_privileges(creds: Credentials) -> None:
    """Become ``creds`` for good.  Raises BootError when that fails (the child then exits with
    WORKER_BOOT_ERROR and the master stops with that reason)."""
    uid, gid = creds.uid, creds.gid
    try:
        if creds.user:
            os.initgroups(creds.user, gid)
        else:
            os.setgroups([gid])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise BootError(f"cannot drop privileges to uid {uid} gid {gid}: {e.strerror}") from None
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise BootError(f"cannot drop privileges to uid {uid} gid {gid}: ids did not change")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise BootError(f"privileges not dropped: uid {uid} could switch back to root")
    _no_new_privs()
