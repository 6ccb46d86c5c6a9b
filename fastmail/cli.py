"""The `fastmail` command: everything an operator does (ARCHITECTURE §6).

Exit codes: 0 done, 1 failed (the reason on stderr as "fastmail: error: ..."), 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import sys
import time
from typing import Any

import orjson

from fastmail import config as configmod
from fastmail.config import Config, ConfigError

DEMO_DOMAIN = "fastmail.test"
DEMO_USER = f"demo@{DEMO_DOMAIN}"


class CLIError(Exception):
    pass


def _load(args: argparse.Namespace, serve: bool = False) -> Config:
    """The configuration; ``serve``: with every check that `serve` and `check-config` both run (the values
    together, users, files, certificates: fastmail.config.load)."""
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["server.data_dir"] = args.data_dir
    if getattr(args, "workers", None):
        overrides["server.workers"] = args.workers
    return configmod.load(args.config, overrides, serve=serve)


def _store(args: argparse.Namespace) -> Any:
    from fastmail.store.store import Store

    cfg = _load(args)
    return Store(cfg.data_dir, map_size=cfg.server_map_size_mb * 1024 * 1024)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif text:
        print(text)


# -- serve ---------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from functools import partial

    from fastmail import log, metrics
    from fastmail.delivery.runner import delivery_main, delivery_prepare
    from fastmail.master.arbiter import Arbiter
    from fastmail.metrics.exporter import metrics_main, metrics_prepare
    from fastmail.server.worker import worker_main, worker_prepare
    from fastmail.tlsfiles import TLSLoadError

    cfg = _load(args, serve=True)  # every problem of the file listed, before anything is bound
    log.setup(args.log_level)
    for w in cfg.warnings:
        log.event(w.event, level=logging.WARNING, key=w.key, reason=w.reason, **w.fields)
    bootstrap(cfg)

    def reload() -> Config:  # start and HUP: the same checks; on a problem the master keeps the running config
        new = _load(args, serve=True)
        for w in new.warnings:
            log.event(w.event, level=logging.WARNING, key=w.key, reason=w.reason, **w.fields)
        # The certificate and key are read here, once per (re)load, and the children forked with this config
        # inherit the context: a worker respawned after a failed reload never reads the (broken) files again.
        try:
            new.server_tls()
        except TLSLoadError as e:
            raise ConfigError(f"{new.source}: {'tls.cert' if new.tls_cert else 'server.data_dir'}: {e}") from None
        try:  # the smarthost password likewise (the delivery processes inherit it)
            new.relay_password()
        except OSError as e:
            raise ConfigError(f"{new.source}: delivery.relayhost_password_file: {e.strerror}: {e.filename}") from None
        return new

    data_dir = cfg.data_dir  # the metrics files stay where the master started them (a HUP does not move them)
    return Arbiter(reload, worker_main, extra_kinds={"delivery": delivery_main, "metrics": metrics_main},
                   prepare={"worker": worker_prepare, "delivery": delivery_prepare, "metrics": metrics_prepare},
                   on_exit=partial(metrics.process_dead, data_dir)).run()


def bootstrap(cfg: Config) -> None:
    """First-start work done before any worker exists: data folder, self-signed certificate, demo account;
    then, started as root with server.user, everything in the data folder is given to that user (last, so
    what this start made is included).

    The store is opened in a short-lived child process, so the master never holds an LMDB environment.
    """
    from fastmail.master.errors import BootError
    from fastmail.tlsfiles import ensure_self_signed

    data = cfg.data_dir
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{cfg.source}: server.data_dir: cannot make {data}: {e.strerror}") from None
    from fastmail import metrics

    try:
        metrics.reset_dir(data)  # this run's counters start from zero (fastmail.metrics)
    except OSError as e:
        raise ConfigError(f"{cfg.source}: server.data_dir: cannot make {metrics.directory(data)}: {e.strerror}") from None
    if not cfg.tls_cert:
        cert, key = cfg.tls_files
        try:
            made = ensure_self_signed(cert, key, cfg.hostname)
        except OSError as e:
            raise ConfigError(f"{cfg.source}: tls.cert: cannot make a self-signed certificate in {cert.parent}: "
                              f"{e.strerror}") from None
        if made:
            from fastmail import log

            log.event("tls_self_signed", cert=cert, key=key, hostname=cfg.hostname)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: open the store, make the demo account, report, exit
        os.close(r)
        code = 0
        try:
            message = _bootstrap_store(cfg)
        except Exception as e:  # noqa: BLE001 - reported to the operator verbatim
            message, code = f"store cannot open at {data}: {e}", 1
        os.write(w, message.encode())
        os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise BootError(message or "store bootstrap failed")
    # Only now, after the store child made index/ and segments/ (on a first start) and the demo account's
    # file, is everything there: all of it goes to the workers' user, who writes segments after the drop.
    if os.geteuid() == 0 and cfg.user:
        from fastmail.master.privileges import give_tree, resolve_credentials

        creds = resolve_credentials(cfg.user, cfg.group)
        if creds is not None:
            try:
                give_tree(data, creds)
            except OSError as e:
                raise BootError(f"cannot give {data} to {cfg.user}: {e.filename}: {e.strerror}") from None
    if message:
        print(message, file=sys.stderr, flush=True)


def _bootstrap_store(cfg: Config) -> str:
    from fastmail.auth import hash_password
    from fastmail.store.store import Store

    store = Store(cfg.data_dir, map_size=cfg.server_map_size_mb * 1024 * 1024)
    try:
        if not cfg.server_demo:
            return ""
        creds = cfg.data_dir / "demo-credentials.txt"
        if store.get_user(DEMO_USER) is None and DEMO_DOMAIN not in store.list_domains():
            password = secrets.token_urlsafe(12)
            store.add_domain(DEMO_DOMAIN)
            store.add_user(DEMO_USER, hash_password(password))
            fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"user: {DEMO_USER}\npassword: {password}\n")
            return _banner(cfg, f"password: {password}")
        return _banner(cfg, f"password: see {creds}")
    finally:
        store.close()


def _banner(cfg: Config, password_line: str) -> str:
    from fastmail.master.listeners import format_address

    listen = ", ".join(f"{spec.name} {format_address(spec.address)}" for spec in cfg.listeners)
    return (
        "fastmail: demo domain and user ready\n"
        f"  user: {DEMO_USER}\n  {password_line}\n  data: {cfg.data_dir}\n  listeners: {listen}\n"
        f"  try: swaks --server 127.0.0.1:2525 --to {DEMO_USER}"
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.list:
        sys.stdout.write(configmod.describe())
        return 0
    from fastmail.master.privileges import ROOT_WORKERS, resolve_credentials, workers_run_as_root

    cfg = _load(args, serve=True)  # exactly what `serve` checks, at start and on HUP
    for w in cfg.warnings:
        print(f"{cfg.source}: {w.key}: warning: {w.reason}", file=sys.stderr)
    if workers_run_as_root(resolve_credentials(cfg.user, cfg.group)):
        print(f"{cfg.source}: server.user: warning: {ROOT_WORKERS}", file=sys.stderr)
    print(f"{cfg.source}: OK ({len(cfg.listeners)} listeners, {cfg.workers} workers, data in {cfg.data_dir})")
    return 0


# -- accounts ------------------------------------------------------------------------------------------


def cmd_domain(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.action == "add":
        store.add_domain(args.domain)
        print(f"domain {args.domain} added")
    elif args.action == "del":
        store.del_domain(args.domain)
        print(f"domain {args.domain} deleted")
    else:
        domains = store.list_domains()
        _print(args, domains, "\n".join(domains))
    return 0


def _read_password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated?)."""
    if getattr(args, "password_stdin", False):
        pw = sys.stdin.readline().rstrip("\r\n")
        if not pw:
            raise CLIError("empty password on stdin")
        return pw, False
    if getattr(args, "password", None):
        return args.password, False
    if sys.stdin.isatty():
        pw = getpass.getpass("password: ")
        if pw != getpass.getpass("again: "):
            raise CLIError("passwords differ")
        if not pw:
            raise CLIError("empty password")
        return pw, False
    return secrets.token_urlsafe(12), True


def cmd_user(args: argparse.Namespace) -> int:
    from fastmail.auth import hash_password

    store = _store(args)
    if args.action == "add":
        pw, generated = _read_password(args)
        uid = store.add_user(args.address, hash_password(pw), quota=args.quota)
        print(f"user {args.address} added (id {uid})" + (f", password: {pw}" if generated else ""))
    elif args.action == "passwd":
        pw, generated = _read_password(args)
        store.set_password(args.address, hash_password(pw))
        print(f"password of {args.address} changed" + (f" to: {pw}" if generated else ""))
    elif args.action == "quota":
        store.set_quota(args.address, args.bytes)
        print(f"quota of {args.address} set to {args.bytes or 'unlimited'}")
    elif args.action == "del":
        store.del_user(args.address)
        print(f"user {args.address} deleted")
    elif args.action == "move":  # docs/scaling.md: only the routing moves; the mail moves with export/import
        nodes = _load(args).cluster_nodes
        if args.node not in nodes:
            raise CLIError(f"no node {args.node} in cluster.nodes" + (f" ({', '.join(sorted(nodes))})" if nodes else ""))
        store.set_node(args.address, args.node)
        print(f"user {args.address} is on node {args.node}")
    else:
        users = store.list_users()
        for u in users:
            u["node"] = u.get("node") or ""
        text = "\n".join(
            f"{u['address']}\tid={u['id']}\tmessages={u['messages']}\tused={u['used_bytes']}\tquota={u['quota'] or '-'}"
            + (f"\tnode={u['node']}" if u["node"] else "")
            for u in users
        )
        _print(args, users, text)
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.action == "add":
        store.add_alias(args.address, args.targets)
        print(f"alias {args.address} -> {', '.join(args.targets)}")
    elif args.action == "del":
        store.del_alias(args.address)
        print(f"alias {args.address} deleted")
    else:
        aliases = store.list_aliases()
        _print(args, aliases, "\n".join(f"{a}\t{', '.join(t)}" for a, t in aliases.items()))
    return 0


# -- queue and mailboxes -------------------------------------------------------------------------------


def _rcpt_text(r: dict[str, Any]) -> str:
    """A queue recipient in `queue list`: address(state), with the last reply when it is not delivered yet
    (why it waits: e.g. a cluster node that is down, docs/scaling.md)."""
    reply = r.get("reply") if r["state"] in ("deferred", "failed") else None
    return f"{r['to']}({r['state']}: {reply})" if reply else f"{r['to']}({r['state']})"


def cmd_queue(args: argparse.Namespace) -> int:
    from fastmail.delivery import queue as Q
    from fastmail.delivery import wake

    store = _store(args)
    if args.action == "list":
        entries = store.queue_list()
        for e in entries:
            e["state"] = Q.summary_state(e)
        if args.state:
            entries = [e for e in entries if e["state"] == args.state]
        if args.min_age:
            entries = [e for e in entries if time.time() - e["arrived"] >= args.min_age]
        if args.domain:
            want = args.domain.lower()
            entries = [e for e in entries if any(Q.domain_of(r["to"]) == want for r in e["rcpts"])]
        text = "\n".join(
            f"{e['id']}\t{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e['arrived']))}\t{e['size']}\t"
            f"{e['state']}\t<{e['sender']}>\t" + ", ".join(_rcpt_text(r) for r in e["rcpts"])
            for e in entries
        )
        _print(args, entries, text or "queue is empty")
    elif args.action == "show":
        entry = store.queue_get(args.id)
        if entry is None:
            raise CLIError(f"no queue entry {args.id}")
        if args.raw:
            sys.stdout.buffer.write(store.read_blob(bytes.fromhex(entry["id"])))
        else:
            entry["state"] = Q.summary_state(entry)
            _print(args, entry, orjson.dumps(entry, option=orjson.OPT_INDENT_2).decode())
    elif args.action == "delete":
        store.queue_delete(args.id)
        _print(args, {"id": args.id, "deleted": True}, f"queue entry {args.id} deleted")
    elif getattr(args, "all", False):
        if args.id:
            raise CLIError("give a queue id or --all, not both")
        cfg = _load(args)
        want = args.domain.lower() if args.domain else None
        match = None if want is None else (
            lambda rec: any(Q.domain_of(r["to"]) == want for r in rec["rcpts"]))
        bulk = Q.hold_all if args.action == "hold" else Q.release_all
        # each committed chunk wakes the delivery processes: the first released entries go at once
        n = bulk(store, match, on_commit=lambda _n: wake.notify(cfg.data_dir, cfg.delivery_processes))
        done = "held" if args.action == "hold" else "released"
        where = f" with a recipient in {want}" if want else ""
        _print(args, {"action": args.action, "count": n, "domain": want}, f"{n} queue entries{where} {done}")
    else:
        if not args.id:
            raise CLIError("a queue id is needed" + (" (or --all)" if args.action in ("hold", "release") else ""))
        if getattr(args, "domain", None):
            raise CLIError("--domain goes with --all")
        fn = {"retry": Q.retry_now, "hold": Q.hold, "release": Q.release, "bounce": Q.bounce}[args.action]
        entry = fn(store, args.id)
        cfg = _load(args)
        wake.notify(cfg.data_dir, cfg.delivery_processes)
        done = {"retry": "due now", "hold": "held", "release": "released", "bounce": "bounced"}[args.action]
        _print(args, entry, f"queue entry {args.id} {done}")
    return 0


def _user_id(store: Any, address: str) -> int:
    rec = store.get_user(address)
    if rec is None:
        raise CLIError(f"no user {address}")
    return int(rec["id"])


def cmd_mailbox(args: argparse.Namespace) -> int:
    store = _store(args)
    boxes = store.list_mailboxes(_user_id(store, args.user))
    text = "\n".join(
        f"{b['name']}\t{b['special'] or '-'}\texists={b['exists']}\tunseen={b['unseen']}\tuidnext={b['uidnext']}"
        f"\tuidvalidity={b['uidvalidity']}\tsize={b['size']}"
        for b in boxes
    )
    _print(args, boxes, text)
    return 0


def cmd_message(args: argparse.Namespace) -> int:
    store = _store(args)
    uid_ = _user_id(store, args.user)
    mid = store.mailbox_id(uid_, args.mailbox)
    if mid is None:
        raise CLIError(f"no mailbox {args.mailbox} for {args.user}")
    if args.action == "list":
        msgs = store.list_messages(mid)
        for m in msgs:
            m["blob"] = m["blob"].hex()
        _print(args, msgs, "\n".join(f"{m['uid']}\t{m['size']}\t{' '.join(m['flags'])}" for m in msgs))
        return 0
    raw = store.read_message(mid, args.uid)
    if raw is None:
        raise CLIError(f"no message {args.uid} in {args.mailbox}")
    sys.stdout.buffer.write(raw)
    sys.stdout.buffer.flush()
    return 0


# -- DKIM keys -----------------------------------------------------------------------------------------


def default_selector(algorithm: str, now: float | None = None) -> str:
    """`ed<yyyymm>` or `rsa<yyyymm>` (UTC): one selector per key type and month, so the two keys of dual
    signing never collide and a rotation next month gets a fresh name."""
    prefix = "ed" if algorithm == "ed25519" else "rsa"
    return prefix + time.strftime("%Y%m", time.gmtime(now))


def _key_owner(cfg: Config) -> tuple[int, int] | None:
    """Who must own key files: the server's user when we are root and one is configured (the workers run
    as that user and read the keys), else nobody in particular."""
    if os.geteuid() != 0 or not cfg.user:
        return None
    from fastmail.master.privileges import resolve_credentials

    creds = resolve_credentials(cfg.user, cfg.group)
    return (creds.uid, creds.gid) if creds is not None else None


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from fastmail.hygiene import dkimkeys

    cfg = _load(args)
    if args.bits is not None and args.algorithm != "rsa":
        raise CLIError("--bits is for rsa keys")
    selector = args.selector or default_selector(args.algorithm)
    try:
        path, record = dkimkeys.keygen(cfg.dkim_keys, args.domain, selector, args.algorithm,
                                       rsa_bits=args.bits or 2048, force=args.force, owner=_key_owner(cfg))
    except dkimkeys.KeyExists:
        raise CLIError(f"domain {args.domain} already has a key with selector {selector}; choose another "
                       "--selector, or --force to replace it (its published record must change too)") from None
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    data = {"domain": dkimkeys.normalize_domain(args.domain), "selector": selector, "algorithm": args.algorithm,
            "path": str(path), "record": record}
    text = (f"{args.algorithm} key {selector} of {data['domain']} written to {path}\n"
            f"publish this TXT record, then mail from {data['domain']} is signed with it:\n{record}")
    _print(args, data, text)
    return 0


def cmd_dkim_list(args: argparse.Namespace) -> int:
    from fastmail.hygiene import dkimkeys

    cfg = _load(args)
    try:
        domains = [dkimkeys.normalize_domain(args.domain)] if args.domain else dkimkeys.list_domains(cfg.dkim_keys)
        rows: list[dict[str, Any]] = []
        for domain in domains:
            keys, problems = dkimkeys.scan_domain(cfg.dkim_keys, domain)
            rows += [{"domain": k.domain, "selector": k.selector, "algorithm": k.algorithm, "path": str(k.path),
                      "error": None} for k in keys]
            rows += [{"domain": domain, "selector": p.path.name.removesuffix(dkimkeys.KEY_SUFFIX),
                      "algorithm": None, "path": str(p.path), "error": p.reason} for p in problems]
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    text = "\n".join(f"{r['domain']}\t{r['selector']}\t{r['algorithm'] or 'unusable: ' + r['error']}\t{r['path']}"
                     for r in rows)
    _print(args, rows, text or f"no DKIM keys in {cfg.dkim_keys}")
    return 0


def cmd_dkim_show(args: argparse.Namespace) -> int:
    from fastmail.hygiene import dkimkeys

    cfg = _load(args)
    try:
        path = dkimkeys.key_path(cfg.dkim_keys, args.domain, args.selector)
        key = dkimkeys.load_key(path, args.domain)
        record = dkimkeys.txt_record(key.domain, key.selector, key.private_pem)
    except FileNotFoundError:
        raise CLIError(f"no DKIM key {args.selector} for {args.domain} (looked for {path})") from None
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    data = {"domain": key.domain, "selector": key.selector, "algorithm": key.algorithm, "path": str(path),
            "record": record}
    _print(args, data, record)
    return 0


# -- fsck ----------------------------------------------------------------------------------------------


def cmd_fsck(args: argparse.Namespace) -> int:
    """Check the index against the message segments (docs/fsck.md); with --repair, fix what was found.
    Safe while the server runs.  Exit 0: clean; 1: problems were found (repaired or not, as reported)."""
    from fastmail.store import fsck

    store = _store(args)
    try:
        report = fsck.repair(store) if args.repair else fsck.check(store)
    finally:
        store.close()
    lines = [f.text() for f in report.problems] + [f"note: {f.text()}" for f in report.notes]
    left = sum(1 for f in report.problems if not f.repaired)
    if report.clean:
        lines.append("clean")
    elif args.repair:
        lines.append(f"{len(report.problems)} problem(s) found, {len(report.problems) - left} repaired"
                     + (f", {left} left" if left else ""))
    else:
        lines.append(f"{len(report.problems)} problem(s) found; `fastmail fsck --repair` fixes them")
    _print(args, report.as_dict(), "\n".join(lines))
    return 0 if report.clean else 1


# -- migration (docs/operations.md, "Moving from Dovecot") ---------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    """Import a Dovecot Maildir++ tree or an mbox file into a user's folders (fastmail.migrate); safe while
    the server runs, and again: what an earlier run imported is skipped."""
    from pathlib import Path

    from fastmail import migrate

    owner = _key_owner(_load(args))  # run as root: the segment file it writes goes to server.user
    store = _store(args)
    try:
        if args.format == "maildir":
            report = migrate.import_maildir(store, args.user, Path(args.path), args.folder, owner)
        else:
            report = migrate.import_mbox(store, args.user, Path(args.path), args.folder, args.unescape, owner)
    except migrate.MigrateError as e:
        raise CLIError(str(e)) from None
    finally:
        store.close()
    _print(args, report.as_dict(), report.text())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a user's folders as a Maildir++ tree that Dovecot reads (fastmail.migrate)."""
    from pathlib import Path

    from fastmail import migrate

    store = _store(args)
    try:
        report = migrate.export_maildir(store, args.user, Path(args.path))
    except migrate.MigrateError as e:
        raise CLIError(str(e)) from None
    finally:
        store.close()
    d = report.as_dict()
    text = "\n".join([f"{f.name}\t{f.imported} message(s)\t{f.bytes} bytes\t{f.source}" for f in report.folders]
                     + [f"warning: {w}" for w in report.warnings]
                     + [f"{report.user}: {d['imported']} message(s) exported to {args.path}"])
    _print(args, d, text)
    return 0 if not any(f.vanished for f in report.folders) else 1


# -- argument parsing ----------------------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-c", "--config", default=default, metavar="FILE",
                        help="TOML config file (default: the embedded dev settings)")
    parser.add_argument("--data-dir", default=default, help="override server.data_dir")


def build_parser() -> argparse.ArgumentParser:
    # -c FILE and --data-dir go before or after the subcommand (`fastmail -c F dkim keygen D` as well as
    # `fastmail dkim keygen D -c F`): the main parser sets them (default None), and each subcommand's copy
    # sets them only when given (SUPPRESS), so it never overwrites a value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    jsonp = argparse.ArgumentParser(add_help=False)
    jsonp.add_argument("--json", action="store_true", help="machine-readable output")

    p = argparse.ArgumentParser(prog="fastmail", description="fastmail mail server")
    _common_options(p, None)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", parents=[common], help="run the server (master + workers)")
    s.add_argument("-w", "--workers", type=int, help="override server.workers")
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("check-config", parents=[common], help="validate the configuration and exit")
    s.add_argument("--list", action="store_true", help="print every setting with its default and meaning")
    s.set_defaults(func=cmd_check_config)

    d = sub.add_parser("domain", parents=[common], help="local domains").add_subparsers(dest="action", required=True)
    for action in ("add", "del"):
        x = d.add_parser(action, parents=[common])
        x.add_argument("domain")
        x.set_defaults(func=cmd_domain)
    d.add_parser("list", parents=[common, jsonp]).set_defaults(func=cmd_domain)

    u = sub.add_parser("user", parents=[common], help="users (mailboxes)").add_subparsers(dest="action", required=True)
    for action in ("add", "passwd"):
        x = u.add_parser(action, parents=[common])
        x.add_argument("address")
        x.add_argument("--password", help="the password (visible in ps; prefer --password-stdin)")
        x.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        if action == "add":
            x.add_argument("--quota", type=int, default=0, help="quota in bytes (0: none)")
        x.set_defaults(func=cmd_user)
    x = u.add_parser("quota", parents=[common])
    x.add_argument("address")
    x.add_argument("bytes", type=int, help="quota in bytes (0: none)")
    x.set_defaults(func=cmd_user)
    x = u.add_parser("del", parents=[common])
    x.add_argument("address")
    x.set_defaults(func=cmd_user)
    x = u.add_parser("move", parents=[common], help="place the user's mailbox on a cluster node (docs/scaling.md)")
    x.add_argument("address")
    x.add_argument("node", help="a name in cluster.nodes")
    x.set_defaults(func=cmd_user)
    u.add_parser("list", parents=[common, jsonp]).set_defaults(func=cmd_user)

    a = sub.add_parser("alias", parents=[common], help="aliases: address or @domain -> targets").add_subparsers(dest="action", required=True)
    x = a.add_parser("add", parents=[common])
    x.add_argument("address", help="alias address, or @domain for a catch-all")
    x.add_argument("targets", nargs="+", help="local or external addresses")
    x.set_defaults(func=cmd_alias)
    x = a.add_parser("del", parents=[common])
    x.add_argument("address")
    x.set_defaults(func=cmd_alias)
    a.add_parser("list", parents=[common, jsonp]).set_defaults(func=cmd_alias)

    q = sub.add_parser("queue", parents=[common], help="the outbound queue").add_subparsers(dest="action", required=True)
    x = q.add_parser("list", parents=[common, jsonp])
    x.add_argument("--state", choices=["queued", "deferred", "failed", "held"], help="only entries in this state")
    x.add_argument("--domain", help="only entries with a recipient in this domain")
    x.add_argument("--min-age", type=float, default=0, metavar="SECONDS", help="only entries queued at least this long")
    x.set_defaults(func=cmd_queue)
    x = q.add_parser("show", parents=[common, jsonp])
    x.add_argument("id")
    x.add_argument("--raw", action="store_true", help="print the message itself")
    x.set_defaults(func=cmd_queue)
    for action, what in (("delete", "remove the entry without a bounce"), ("retry", "attempt delivery now"),
                         ("hold", "stop attempts until released"), ("release", "end a hold; attempt now"),
                         ("bounce", "fail every pending recipient now and send the bounce")):
        x = q.add_parser(action, parents=[common, jsonp], help=what)
        if action in ("hold", "release"):
            x.add_argument("id", nargs="?")
            x.add_argument("--all", action="store_true", help=f"{action} every entry (or those of --domain)")
            x.add_argument("--domain", help="with --all: only entries with a recipient in this domain")
        else:
            x.add_argument("id")
        x.set_defaults(func=cmd_queue)

    m = sub.add_parser("mailbox", parents=[common], help="mailboxes of a user").add_subparsers(dest="action", required=True)
    x = m.add_parser("list", parents=[common, jsonp])
    x.add_argument("user")
    x.set_defaults(func=cmd_mailbox)

    g = sub.add_parser("message", parents=[common], help="messages in a mailbox").add_subparsers(dest="action", required=True)
    x = g.add_parser("list", parents=[common, jsonp])
    x.add_argument("user")
    x.add_argument("mailbox")
    x.set_defaults(func=cmd_message)
    x = g.add_parser("show", parents=[common])
    x.add_argument("user")
    x.add_argument("mailbox")
    x.add_argument("uid", type=int)
    x.set_defaults(func=cmd_message)

    k = sub.add_parser("dkim", parents=[common], help="DKIM signing keys").add_subparsers(dest="action", required=True)
    x = k.add_parser("keygen", parents=[common, jsonp], help="make a key and print the DNS record to publish")
    x.add_argument("domain")
    x.add_argument("--selector", help="the key's selector (default: ed<yyyymm> or rsa<yyyymm>, UTC)")
    x.add_argument("--algorithm", choices=["ed25519", "rsa"], default="ed25519", help="key type (default ed25519)")
    x.add_argument("--bits", type=int, help="RSA key size (default 2048; 1024-4096)")
    x.add_argument("--force", action="store_true", help="replace the key of an existing selector")
    x.set_defaults(func=cmd_dkim_keygen)
    x = k.add_parser("list", parents=[common, jsonp], help="the keys in dkim.key_dir")
    x.add_argument("domain", nargs="?")
    x.set_defaults(func=cmd_dkim_list)
    x = k.add_parser("show", parents=[common, jsonp], help="print a key's DNS record again")
    x.add_argument("domain")
    x.add_argument("selector")
    x.set_defaults(func=cmd_dkim_show)

    x = sub.add_parser("fsck", parents=[common, jsonp],
                       help="check the index against the message files (exit 1 when problems were found)")
    x.add_argument("--repair", action="store_true", help="fix what is found (safe while the server runs)")
    x.set_defaults(func=cmd_fsck)

    i = sub.add_parser("import", parents=[common], help="import mail from Dovecot (Maildir, mbox)").add_subparsers(dest="format", required=True)
    x = i.add_parser("maildir", parents=[common, jsonp], help="a Maildir++ tree: INBOX and its .Sub.Folder folders")
    x.add_argument("user")
    x.add_argument("path", help="the Maildir (with cur/, new/, tmp/)")
    x.add_argument("--folder", help="import into this folder (subfolders below it) instead of INBOX")
    x.set_defaults(func=cmd_import)
    x = i.add_parser("mbox", parents=[common, jsonp], help="an mbox file into one folder")
    x.add_argument("user")
    x.add_argument("path", help="the mbox file")
    x.add_argument("--folder", default="INBOX", help="the folder to import into (default INBOX; made if missing)")
    x.add_argument("--unescape", choices=["mboxrd", "mboxo", "none"], default="mboxrd",
                   help="'>From ' lines: mboxrd takes one '>' off ^>+From (default), mboxo off ^>From only")
    x.set_defaults(func=cmd_import)
    e = sub.add_parser("export", parents=[common], help="export mail for Dovecot").add_subparsers(dest="format", required=True)
    x = e.add_parser("maildir", parents=[common, jsonp], help="every folder of the user as a Maildir++ tree")
    x.add_argument("user")
    x.add_argument("path", help="a new or empty directory")
    x.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    from fastmail.master.errors import BootError
    from fastmail.store.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        for line in e.errors:  # every problem, one "FILE: key: reason" line each
            print(f"fastmail: error: {line}", file=sys.stderr)
        return 1
    except (CLIError, StoreError, BootError) as e:
        print(f"fastmail: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
