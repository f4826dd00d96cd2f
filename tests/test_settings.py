"""Settings are validated once at start; a bad value names the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from csms.settings import ConfigError, load_settings


def test_defaults() -> None:
    s = load_settings({})
    assert (s.ocpp_port, s.api_port) == (9000, 8080)
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.ocpp_max_frame_bytes >= 8 * 1024 * 1024  # admits multi-MiB StopTransactions
    assert s.auto_register is False


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"CSMS_OCPP_PORT": "ninety"}, "CSMS_OCPP_PORT"),
        ({"CSMS_API_PORT": "70000"}, "CSMS_API_PORT"),
        ({"CSMS_DATABASE_URL": "mysql://x"}, "CSMS_DATABASE_URL"),
        ({"CSMS_TLS_CERT_FILE": "/nonexistent.pem"}, "CSMS_TLS_CERT_FILE"),
        ({"CSMS_HEARTBEAT_INTERVAL": "0"}, "CSMS_HEARTBEAT_INTERVAL"),
        ({"CSMS_AUTO_REGISTER": "perhaps"}, "CSMS_AUTO_REGISTER"),
        ({"CSMS_OCPP_PORTT": "1"}, "CSMS_OCPP_PORTT"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith(name + ":")


def test_toml_file_and_environment_precedence(tmp_path: Path) -> None:
    path = tmp_path / "csms.toml"
    path.write_text("ocpp_port = 9100\napi_port = 8100\nheartbeat_interval = 60\n")
    s = load_settings({"CSMS_CONFIG_FILE": str(path), "CSMS_API_PORT": "8200"})
    assert (s.ocpp_port, s.api_port, s.heartbeat_interval) == (9100, 8200, 60)
    path.write_text("ocpp_port = [")
    with pytest.raises(ConfigError, match="^CSMS_CONFIG_FILE:"):
        load_settings({"CSMS_CONFIG_FILE": str(path)})


def test_serve_refuses_to_start_with_a_bad_setting() -> None:
    env = {**os.environ, "CSMS_OCPP_PORT": "abc"}
    proc = subprocess.run(
        [sys.executable, "-m", "csms.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "CSMS_OCPP_PORT" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_migrate_command_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    env = {**os.environ, "CSMS_DATABASE_URL": url}
    proc = subprocess.run(
        [sys.executable, "-m", "csms.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    import sqlite3

    tables = {
        r[0]
        for r in sqlite3.connect(tmp_path / "fresh.db").execute(
            "select name from sqlite_master where type='table'"
        )
    }
    assert {"charge_point", "transaction", "meter_sample", "alembic_version"} <= tables
