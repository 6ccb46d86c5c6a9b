"""The TLS context of the workers: loaded once per configuration (by the master, inherited through fork),
and boot errors that say which file failed and why."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from fastmail import config
from fastmail.master.errors import BootError
from fastmail.master.worker import SHM_SIZE, WorkerContext
from fastmail.server import worker
from fastmail.tlsfiles import TLSLoadError, ensure_self_signed


def _cfg(tmp_path: Path, tls: str = "") -> config.Config:
    p = tmp_path / "f.toml"
    p.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nhostname = "mx.example.org"\n{tls}')
    return config.load(p)  # not serve=True: these are the failures that the start's checks did not see


def _prepare(cfg: config.Config) -> worker.Services:
    ctx = WorkerContext(index=0, generation=1, sockets={}, config=cfg, kind="worker", _shm=mmap.mmap(-1, SHM_SIZE))
    services = worker.worker_prepare(ctx)
    services.store.close()
    return services


def _pair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    ensure_self_signed(cert, key, "mx.example.org")
    return cert, key


@pytest.mark.parametrize("broken, reason", [
    ("garbage", "{cert}: no PEM certificate in it"),
    ("missing", "{cert} does not exist"),
    ("other key", "does not match tls.cert: {key} is not the key of {cert}"),
])
def test_a_configured_certificate_that_cannot_load_is_named_with_the_reason(tmp_path, broken, reason):
    cert, key = _pair(tmp_path, "a")
    if broken == "garbage":
        cert.write_text("not a certificate\n")
    elif broken == "missing":
        cert.unlink()
    else:
        key = _pair(tmp_path, "b")[1]
    cfg = _cfg(tmp_path, f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    with pytest.raises(BootError) as e:
        _prepare(cfg)
    assert str(e.value).startswith("TLS certificate or key cannot be loaded: ")
    assert reason.format(cert=cert, key=key) in str(e.value)
    assert "implicit TLS needs a certificate" not in str(e.value)


def test_the_context_is_loaded_once_per_configuration(tmp_path):
    cert, key = _pair(tmp_path, "a")
    cfg = _cfg(tmp_path, f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    loaded = cfg.server_tls()
    assert loaded is not None
    cert.write_text("broken after the load\n")
    assert _prepare(cfg).tls_context is loaded  # what a child forked with this config gets
    with pytest.raises(TLSLoadError, match="no PEM certificate"):  # a new load (a reload) sees the broken file
        _cfg(tmp_path, f'[tls]\ncert = "{cert}"\nkey = "{key}"\n').server_tls()


def test_implicit_tls_without_any_certificate(tmp_path):
    cfg = _cfg(tmp_path)  # no tls.cert, and the self-signed one was never made
    services = _prepare(cfg)
    assert services.tls_context is None
    with pytest.raises(BootError, match=r"listener submissions: implicit TLS needs a certificate, and there is none: "
                                        r"tls.cert is not set and the self-signed one \(.*/data/tls/cert.pem\)"):
        worker.implicit_tls_context(services, "submissions")
