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
from dataclasses import dataclass

from fastmail.master.errors import BootError

__all__ = ["Credentials", "drop_privileges", "prctl", "resolve_credentials"]

log = logging.getLogger("fastmail.master")

_PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class Credentials:
    """Who a child becomes: ``user`` is the passwd name (for initgroups), "" for a bare numeric uid."""

    uid: int
    gid: int
    user: str


def _lookup_user(user: str) -> tuple[int, int, str]:
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


def _lookup_group(group: str) -> int:
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
    uid, gid, name = _lookup_user(user)
    if group:
        gid = _lookup_group(group)
    if os.geteuid() != 0:
        if uid != os.geteuid():
            log.warning(
                'event=privileges_kept reason="not running as root" user=%s uid=%d', user, os.geteuid()
            )
        return None
    return Credentials(uid=uid, gid=gid, user=name)


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
