"""Logging renders JSON with the bound correlation id; settings read SLUICE_* variables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pymongo.uri_parser import parse_uri

from sluice.common.settings import Settings, is_loopback

SCRIPT = """
from sluice.common.log import configure_logging, get_logger, bind_correlation_id
import logging
configure_logging(level="info", fmt="json", service="registry")
bind_correlation_id("abc123")
get_logger("t").info("deployment_ready", endpoint="e1", deployment="blue")
get_logger("t").debug("hidden")
logging.getLogger("grpc").warning("from stdlib")
"""


@pytest.mark.integration  # starts a process
def test_json_logs_carry_service_and_correlation_id() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["event"] == "deployment_ready"
    assert first["correlation_id"] == "abc123"
    assert first["service"] == "registry"
    assert first["level"] == "info"
    assert {"endpoint": "e1", "deployment": "blue"}.items() <= first.items()
    assert lines[1]["event"] == "from stdlib"
    assert lines[1]["correlation_id"] == "abc123"


def test_settings_read_prefixed_and_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_STATE_DIR", "/tmp/x")
    monkeypatch.setenv("SLUICE_ENVOY__HTTP_PORT", "9090")
    monkeypatch.setenv("SLUICE_PORTS__REGISTRY", "6000")
    monkeypatch.setenv("SLUICE_MONGODB_URI", "mongodb://db:27017")
    s = Settings()
    assert s.state_dir == Path("/tmp/x")
    assert s.envoy.http_port == 9090
    assert s.ports.registry == 6000
    assert s.mongodb_uri == "mongodb://db:27017"
    assert s.logs_dir == Path("/tmp/x/logs")


def test_a_nats_password_file_joins_the_url_as_its_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """compose and Kubernetes: a service's NATS password is a secret file, never in the URL
    of its manifest; without a user it is refused rather than ignored."""
    (tmp_path / "password").write_text("s3cret\n")
    monkeypatch.setenv("SLUICE_NATS_URL", "nats://nats:4222")
    monkeypatch.setenv("SLUICE_NATS_PASSWORD_FILE", str(tmp_path / "password"))
    with pytest.raises(ValueError, match="needs SLUICE_NATS_USER"):
        Settings()
    monkeypatch.setenv("SLUICE_NATS_USER", "registry")
    settings = Settings()
    assert settings.nats_url == "nats://registry:s3cret@nats:4222"
    assert settings.model_copy().nats_url == settings.nats_url


def test_a_mongodb_password_joins_the_uri_as_the_platforms_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compose and Kubernetes: SLUICE_MONGODB_PASSWORD (a Secret's value), percent-encoded."""
    monkeypatch.setenv("SLUICE_MONGODB_URI", "mongodb://mongo:27017/?replicaSet=rs0")
    monkeypatch.setenv("SLUICE_MONGODB_PASSWORD", "p@ss/w:rd%+")
    settings = Settings()
    assert settings.mongodb_uri is not None and settings.mongodb_password is None
    parsed = parse_uri(settings.mongodb_uri)
    assert (parsed["username"], parsed["password"]) == ("sluice", "p@ss/w:rd%+")
    assert parsed["nodelist"] == [("mongo", 27017)]
    assert parsed["options"]["replicaSet"] == "rs0"
    assert parsed["options"]["authSource"] == "admin"
    assert settings.model_copy().mongodb_uri == settings.mongodb_uri
    # A URI with its own user (the local platform's services get one) is kept as it is.
    monkeypatch.setenv("SLUICE_MONGODB_URI", "mongodb://other:pw@mongo:27017/")
    assert Settings().mongodb_uri == "mongodb://other:pw@mongo:27017/"
    monkeypatch.delenv("SLUICE_MONGODB_URI")
    with pytest.raises(ValueError, match="SLUICE_MONGODB_PASSWORD needs SLUICE_MONGODB_URI"):
        Settings()


def test_settings_reject_a_bad_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_ENVOY__HTTP_PORT", "eighty")
    with pytest.raises(ValueError, match="http_port"):
        Settings()


def test_readable_log_unfolds_tracebacks_and_keeps_other_lines() -> None:
    from sluice.common.log import readable_log

    entry = {
        "event": "init_failed",
        "level": "error",
        "timestamp": "2026-01-01T00:00:00Z",
        "service": "inference",
        "exception": 'Traceback (most recent call last):\n  File "score.py", line 2\n'
        "SyntaxError: invalid syntax",
    }
    text = readable_log(json.dumps(entry) + "\nplain stderr line\n[1, 2]")
    assert text.splitlines() == [
        "2026-01-01T00:00:00Z error init_failed service=inference",
        "Traceback (most recent call last):",
        '  File "score.py", line 2',
        "SyntaxError: invalid syntax",
        "plain stderr line",
        "[1, 2]",
    ]


ANY = "0.0.0.0"  # noqa: S104 - a host under test, nothing binds


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        (ANY, False),
        ("::", False),
        ("10.1.2.3", False),
        ("envoy", False),
    ],
)
def test_only_loopback_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
