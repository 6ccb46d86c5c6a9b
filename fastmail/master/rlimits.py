"""The master's file-descriptor limit, raised at start.

Every session holds a socket, and a busy IMAP server holds thousands of idle ones per worker; Linux starts
most processes with a soft RLIMIT_NOFILE of 1024 whatever the hard limit allows.  So the master raises its
soft limit to the hard one before it forks (the children inherit it), and logs what it got (event=nofile):
raising the hard limit itself needs CAP_SYS_RESOURCE, which is the service manager's job (deploy/
fastmail.service: LimitNOFILE=65536).  Each worker then caps its connections below what it got
(server.max_connections, fastmail.server.session.connection_cap), so accept() does not meet EMFILE.
"""

from __future__ import annotations

import resource


def _nr_open() -> int:
    """The kernel's ceiling for any RLIMIT_NOFILE (fs.nr_open), for a hard limit of 'unlimited'."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_nofile() -> dict[str, int | str]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the fields of the event=nofile line."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _nr_open() if hard == resource.RLIM_INFINITY else hard
    out: dict[str, int | str] = {"was": soft, "hard": hard if hard != resource.RLIM_INFINITY else "unlimited"}
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError) as e:
            out["error"] = repr(e)
    out["soft"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return out
