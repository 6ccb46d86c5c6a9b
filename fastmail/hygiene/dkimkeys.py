"""The DKIM key store: private keys on disk, `KEY_DIR/<domain>/<selector>.pem`, and signing with them.

Layout: one folder per signing domain (lower case, A-labels, no trailing dot), one PEM PKCS#8 private key
per selector (RFC 6376 §3.1: the selector names the key at `<selector>._domainkey.<domain>`).  Folders are
mode 0700 and files 0600 when this module creates them; a key is written to a temporary file, fsynced, then
linked (or, with `force`, renamed) into place, so a reader never sees half a key and an existing selector
is never overwritten by accident.

`DKIMKeys` is what a running server holds: it reads a domain's keys on first use and again whenever the
key folder or the domain's folder changes (their mtime, checked at most once a `check_interval`), so a key
made by `fastmail dkim keygen` is used without a restart.  A key replaced by editing its file in place (not
by rename, as keygen and `mv` do) is not noticed until the folder changes.

Every key of a domain signs (RFC 8463 §6: a signer SHOULD add an rsa-sha256 signature next to an
ed25519-sha256 one while verifiers catch up); a key file that cannot be used is logged and skipped.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from fastmail import log
from fastmail.hygiene import dkim
from fastmail.store.segments import fsync_dir

KeyType = Literal["ed25519", "rsa"]  # the k= tag of the key record (RFC 6376 §3.6.1, RFC 8463 §4.2)
SIGN_ALGORITHM: dict[KeyType, dkim.Algorithm] = {"ed25519": "ed25519", "rsa": "rsa-sha256"}
KEY_SUFFIX = ".pem"
MAX_RSA_BITS = 4096  # RFC 8301 §3.2: verifiers must handle 1024-4096 bits, so larger keys may not verify
CHECK_INTERVAL = 1.0  # seconds between two looks at a folder's mtime
# A folder changed this recently may change again within the same mtime tick unseen (git's "racy" index
# entries): its listing is not trusted as a cache key and is read again at the next check.
_RACY_NS = 2_000_000_000
# RFC 6376 §3.1: a selector is a sub-domain (RFC 5321 §4.1.2: letters, digits, inner hyphens; dot-separated).
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_SELECTOR_RE = re.compile(rf"(?i){_LABEL}(?:\.{_LABEL})*")


class KeyExists(Exception):
    """keygen without `force` for a selector that already has a key."""


@dataclass(frozen=True, slots=True)
class Key:
    domain: str  # A-labels, lower case: the d= of its signatures
    selector: str  # the s=
    algorithm: KeyType  # as found in the PEM
    private_pem: bytes = field(repr=False)
    path: Path | None = None

    @property
    def sign_algorithm(self) -> dkim.Algorithm:
        """The a= this key signs with (RFC 8463 §3 ed25519-sha256, RFC 6376 §3.3.1 rsa-sha256)."""
        return SIGN_ALGORITHM[self.algorithm]


@dataclass(frozen=True, slots=True)
class KeyProblem:
    """A file in a domain folder that is not a usable key, and why."""

    path: Path
    reason: str


# -- names ---------------------------------------------------------------------------------------------


def normalize_domain(domain: str) -> str:
    """The folder name of a signing domain: lower case, A-labels (IDNA), no trailing dot.  Raises ValueError
    for anything that is not a host name (which also keeps "..", "/" and the like out of paths)."""
    name = domain.strip().rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"not a domain name: {domain!r}") from None
    name = name.lower()
    if len(name) > 253 or not _NAME_RE.fullmatch(name):
        raise ValueError(f"not a domain name: {domain!r}")
    return name


def check_selector(selector: str) -> str:
    """`selector` if it is a valid selector (RFC 6376 §3.1), else ValueError."""
    if not selector.isascii() or not _SELECTOR_RE.fullmatch(selector):
        raise ValueError(f"not a valid selector: {selector!r} (letters, digits, hyphens, dot-separated)")
    return selector


def key_path(key_dir: Path, domain: str, selector: str) -> Path:
    return Path(key_dir) / normalize_domain(domain) / (check_selector(selector) + KEY_SUFFIX)


# -- reading -------------------------------------------------------------------------------------------


def key_type(private_pem: bytes) -> KeyType:
    """The type of a PEM private key; ValueError when it is neither Ed25519 nor RSA of at least 1024 bits."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except TypeError:
        raise ValueError("an encrypted private key (the server cannot ask for a password)") from None
    except ValueError as e:
        reason = str(e).split(". See ")[0]  # cryptography appends a link to its FAQ
        raise ValueError(f"not a PEM private key: {reason}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < dkim.MIN_RSA_BITS:  # RFC 8301 §3.2
            raise ValueError(f"RSA key of {key.key_size} bits, fewer than {dkim.MIN_RSA_BITS}")
        return "rsa"
    raise ValueError("DKIM keys are Ed25519 or RSA")


def load_key(path: Path, domain: str) -> Key:
    """The key in `path` (named `<selector>.pem`) for `domain`; ValueError or OSError when unusable."""
    selector = check_selector(path.name.removesuffix(KEY_SUFFIX))
    pem = path.read_bytes()
    return Key(domain=normalize_domain(domain), selector=selector, algorithm=key_type(pem), private_pem=pem,
               path=path)


def scan_domain(key_dir: Path, domain: str) -> tuple[list[Key], list[KeyProblem]]:
    """Every key of `domain` (RSA first, then by selector) and the files that are not usable keys."""
    folder = Path(key_dir) / normalize_domain(domain)
    keys: list[Key] = []
    problems: list[KeyProblem] = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return [], []
    for name in names:
        if name.startswith(".") or not name.endswith(KEY_SUFFIX):
            continue  # a temporary file of keygen, an editor's backup
        path = folder / name
        try:
            keys.append(load_key(path, domain))
        except (OSError, ValueError) as e:
            problems.append(KeyProblem(path, str(e)))
    keys.sort(key=lambda k: (k.algorithm != "rsa", k.selector))
    return keys, problems


def list_domains(key_dir: Path) -> list[str]:
    """The domain folders of `key_dir`, sorted; folders whose name is not a normalized domain are skipped."""
    try:
        entries = sorted(os.scandir(key_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [e.name for e in entries if e.is_dir() and _NAME_RE.fullmatch(e.name)]


def txt_record(domain: str, selector: str, private_pem: bytes) -> str:
    """The zone-file line that publishes the public half of `private_pem`, as `dkim.keygen` prints it."""
    strings = " ".join(f'"{s}"' for s in dkim.txt_strings(dkim.public_record(private_pem)))
    return f"{check_selector(selector)}._domainkey.{normalize_domain(domain)}. IN TXT {strings}"


# -- writing -------------------------------------------------------------------------------------------


def keygen(key_dir: Path, domain: str, selector: str, algorithm: KeyType, rsa_bits: int = 2048,
           force: bool = False, *, owner: tuple[int, int] | None = None) -> tuple[Path, str]:
    """Make a key for `domain` under `selector` in `key_dir`: (its path, the zone-file TXT line to publish,
    as `dkim.keygen` gives it).  Raises KeyExists when the selector has a key and not `force`, ValueError
    for a bad domain, selector, algorithm or size.  `owner` (uid, gid) is given to the folders and the file
    (the CLI run as root passes the server's user, who must read the key)."""
    domain = normalize_domain(domain)
    path = key_path(key_dir, domain, selector)
    if algorithm not in SIGN_ALGORITHM:
        raise ValueError(f"unknown key type {algorithm!r} (ed25519 or rsa)")
    if algorithm == "rsa" and not dkim.MIN_RSA_BITS <= rsa_bits <= MAX_RSA_BITS:
        raise ValueError(f"RSA keys of {dkim.MIN_RSA_BITS} to {MAX_RSA_BITS} bits (RFC 8301 §3.2)")
    if path.exists() and not force:
        raise KeyExists(f"{path} exists (selector {selector} of {domain}); choose another selector or force")
    pem, record = dkim.keygen(domain, selector, SIGN_ALGORITHM[algorithm], rsa_bits=rsa_bits)
    for folder in (Path(key_dir), path.parent):
        _make_private_dir(folder, owner)
    _write_atomically(path, pem, force, owner)
    return path, record


def _make_private_dir(folder: Path, owner: tuple[int, int] | None) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True)
        folder.chmod(0o700)  # mkdir's mode is masked by the umask
    except FileExistsError:
        pass  # an existing folder keeps the mode the operator gave it
    if owner is not None:
        os.chown(folder, *owner)


def _write_atomically(path: Path, data: bytes, replace: bool, owner: tuple[int, int] | None) -> None:
    """Write `data` to a temporary file beside `path` (0600), fsync it, then move it into place: by
    link(), which fails if `path` exists (no overwrite even when two keygens race), or by rename() when
    `replace`.  The folder is fsynced so the new name survives a crash."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if owner is not None:
            os.chown(tmp, *owner)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyExists(f"{path} exists") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)


# -- the server's view ---------------------------------------------------------------------------------


Stamp = tuple[int, int, int]  # st_dev, st_ino, st_mtime_ns of a folder


def _stamp(folder: Path) -> Stamp | None:
    """What tells that a folder's listing may have changed; None when it is missing or changed so recently
    that it must be read again at the next check regardless (see _RACY_NS)."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    if time.time_ns() - st.st_mtime_ns < _RACY_NS:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


T = TypeVar("T")


@dataclass(slots=True)
class _Cached(Generic[T]):
    value: T
    stamp: Stamp | None
    checked: float


class DKIMKeys:
    """The keys of `key_dir` as a server uses them: `keys_for(domain)`, `sign(message, domain)`.

    The list of domain folders and each domain's keys are cached; a cache entry is checked against its
    folder's mtime at most once every `check_interval` seconds and read again when that changed.  Nothing
    here raises into the caller: unusable keys are logged (once per change of their folder) and skipped.
    """

    def __init__(self, key_dir: Path, *, check_interval: float = CHECK_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key_dir = Path(key_dir)
        self.check_interval = check_interval
        self._clock = clock
        self._domains: _Cached[frozenset[str]] | None = None
        self._keys: dict[str, _Cached[list[Key]]] = {}

    def empty(self) -> bool:
        """No domain has keys (checked like keys_for): lets a caller skip reading the From field."""
        return not self._domain_names(self._clock())

    def keys_for(self, domain: str) -> list[Key]:
        """The keys of `domain` (RSA first, then by selector); [] when it has none or is no domain name."""
        try:
            name = normalize_domain(domain)
        except ValueError:
            return []
        now = self._clock()
        if name not in self._domain_names(now):
            self._keys.pop(name, None)
            return []
        cached = self._keys.get(name)
        if cached is not None and now - cached.checked < self.check_interval:
            return cached.value
        folder = self.key_dir / name
        stamp = _stamp(folder)
        if cached is None or stamp is None or stamp != cached.stamp:
            cached = _Cached(self._load(name), stamp, now)
            self._keys[name] = cached
        cached.checked = now
        return cached.value

    def sign(self, message: bytes, domain: str) -> bytes:
        """The DKIM-Signature fields to prepend to `message`, one for each key of `domain` (b"" when it has
        none).  A key that fails to sign is logged and left out."""
        fields: list[bytes] = []
        for key in self.keys_for(domain):
            try:
                fields.append(dkim.sign(message, domain=key.domain, selector=key.selector,
                                        private_key_pem=key.private_pem, algorithm=key.sign_algorithm))
            except Exception as e:  # noqa: BLE001 - a signing failure must not lose the message
                log.event("dkim_sign_failed", level=logging.ERROR, domain=key.domain, selector=key.selector,
                          error=repr(e))
        return b"".join(fields)

    def _domain_names(self, now: float) -> frozenset[str]:
        cached = self._domains
        if cached is not None and now - cached.checked < self.check_interval:
            return cached.value
        stamp = _stamp(self.key_dir)
        if cached is None or stamp is None or stamp != cached.stamp:
            try:
                names = frozenset(list_domains(self.key_dir))
            except OSError as e:  # e.g. a folder the server's user may not read
                log.event("dkim_keys_unreadable", level=logging.ERROR, path=self.key_dir, error=repr(e))
                names = frozenset()
            cached = _Cached(names, stamp, now)
            self._domains = cached
        cached.checked = now
        return cached.value

    def _load(self, domain: str) -> list[Key]:
        try:
            keys, problems = scan_domain(self.key_dir, domain)
        except OSError as e:  # e.g. a folder the server's user may not read
            log.event("dkim_keys_unreadable", level=logging.ERROR, path=self.key_dir / domain, error=repr(e))
            return []
        for problem in problems:
            log.event("dkim_key_broken", level=logging.ERROR, path=problem.path, reason=problem.reason)
        return keys
