"""Settings: declared once, validated with 'FILE: key: reason', documented from the same table."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastmail import config
from fastmail.config import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "f.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_dev_server():
    cfg = config.load()
    assert cfg.server_demo is True
    assert [(s.name, s.address) for s in cfg.listeners] == [
        ("smtp", ("127.0.0.1", 2525)), ("submission", ("127.0.0.1", 2587)),
        ("submissions", ("127.0.0.1", 2465)), ("lmtp", ("127.0.0.1", 2424)),
        ("imap", ("127.0.0.1", 1143)), ("imaps", ("127.0.0.1", 1993)),
        ("pop3", ("127.0.0.1", 1110)), ("pop3s", ("127.0.0.1", 1995))]
    assert cfg.smtp_max_recipients == 100 and cfg.workers >= 1


def test_file_values_and_relative_data_dir(tmp_path):
    p = _write(tmp_path, '[server]\ndata_dir = "d"\nworkers = 3\n[listen]\nlmtp = ["[::1]:24", "unix:/tmp/x.sock"]\n')
    cfg = config.load(p)
    assert cfg.data_dir == (tmp_path / "d").resolve() and cfg.workers == 3 and cfg.server_demo is False
    assert [s.address for s in cfg.listeners if s.name.startswith("lmtp")] == [("::1", 24), "/tmp/x.sock"]


@pytest.mark.parametrize("text, key, reason", [
    ("[smtp]\nmax_recipients = 5\n", "smtp.max_recipients", "must be at least 100"),
    ("[smtp]\nmax_line_length = 100\n", "smtp.max_line_length", "must be at least 512"),
    ("[smtp]\nbare_lf = \"maybe\"\n", "smtp.bare_lf", "must be one of normalize, reject"),
    ("[server]\nworkers = \"two\"\n", "server.workers", "must be of type int"),
    ("[server]\nworkers = 0\n", "server.workers", "must be > 0"),
    ("[server]\nworkers = true\n", "server.workers", "must be an integer"),
    ("[server]\ncolour = 1\n", "server.colour", "unknown setting"),
    ("[listen]\nsmtp = [\"nowhere\"]\n", "listen.smtp", "expected HOST:PORT"),
    ("[listen]\nsmtp = [\"example.org:25\"]\n", "listen.smtp", "host must be an IP address"),
    ("[listen]\nsmtp = [\"127.0.0.1:70000\"]\n", "listen.smtp", "port out of range"),
    ("[smtp]\ntrusted_networks = [\"10.0.0.0/33\"]\n", "smtp.trusted_networks", "10.0.0.0/33"),
])
def test_bad_values_name_file_key_and_reason(tmp_path, text, key, reason):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(e.value).startswith(f"{p}: {key}: ") and reason in str(e.value)


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="TOML syntax"):
        config.load(_write(tmp_path, "[server\n"))
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


def test_docs_match_settings():
    doc = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    assert doc == config.describe(), "regenerate docs/config.md from fastmail.config.describe()"
