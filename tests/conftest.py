"""Shared fixtures: a real database (SQLite file and PostgreSQL 15, both), a real server on
loopback ports, and HTTP helpers.

Every test that takes ``csms`` runs twice: on SQLite and on a throwaway PostgreSQL cluster
(``tests/pg.py``). Each test gets a fresh database copied from a template that Alembic migrated
once per run, so migrations are exercised and tests stay fast.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alembic import command

from billing.emulator import StripeEmulator, start_emulator
from csms.app import Csms
from csms.migrate import alembic_config
from csms.settings import Settings, load_settings
from tests.mqtt_broker import Broker, start_mosquitto
from tests.pg import PgCluster, start_postgres


def migrate_sync(url: str) -> None:
    """Alembic upgrade to head in a worker thread (Alembic's env runs its own event loop, and
    fixtures may be set up while the test's loop runs)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(command.upgrade, alembic_config(url), "head").result()


ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
WEBHOOK_SECRET = "whsec_test_lifeline"
CP_PASSWORD = "correct-horse-battery-staple"


# -- databases ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per run."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate_sync(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """One PostgreSQL cluster per run, with a database ``csms_template`` migrated to head."""
    cluster = start_postgres(tmp_path_factory.mktemp("pg"))
    try:
        url = cluster.create_database("csms_template")
        migrate_sync(url)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, migrated database for one test: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "csms.db"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    name = "t_" + uuid.uuid4().hex[:16]
    url = await cluster.acreate_database(name, template="csms_template")
    yield url
    await cluster.adrop_database(name)


# -- the server -----------------------------------------------------------------------------


def test_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a server on free loopback ports with short timeouts."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "ocpp_host": "127.0.0.1",
        "ocpp_port": 0,
        "api_host": "127.0.0.1",
        "api_port": 0,
        "admin_token": ADMIN_TOKEN,
        "command_timeout": 5.0,
        "last_seen_flush_interval": 0.2,
        "stripe_emulator_data": None,
        "stripe_timeout": 5.0,
    }
    values.update(overrides)
    return load_settings({}, **values)


@dataclass
class Server:
    """A running server and helpers to talk to its API."""

    app: Csms
    http: aiohttp.ClientSession

    @property
    def ocpp_url(self) -> str:
        """``ws[s]://127.0.0.1:PORT/ocpp``: append ``/{id}``."""
        scheme = "wss" if self.app.settings.tls_enabled else "ws"
        return f"{scheme}://127.0.0.1:{self.app.ocpp_port}/ocpp"

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.app.api_port}"

    async def api(
        self,
        method: str,
        path: str,
        json: Any = None,
        token: str | None = ADMIN_TOKEN,
        expect: int | None = None,
    ) -> tuple[int, Any]:
        """Call the API; returns (status, parsed JSON body). With ``expect``, assert the status."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, self.api_url + path, json=json, headers=headers
        ) as resp:
            body = await resp.json(content_type=None) if resp.content_length != 0 else None
            if expect is not None:
                assert resp.status == expect, (resp.status, body)
            return resp.status, body

    async def register(
        self, cp_id: str, password: str | None = CP_PASSWORD, profile: int = 1
    ) -> None:
        """Register a charge point through the operator API."""
        from urllib.parse import quote

        body: dict[str, Any] = {"security_profile": profile}
        if password is not None:
            body["password"] = password
        status, resp = await self.api("PUT", f"/api/v1/charge-points/{quote(cp_id, safe='')}", body)
        assert status in (200, 201), resp

    async def backdate_sessions(self, when: str) -> None:
        """Pretend every paid session was created at ``when`` (ISO 8601): lets a test replay a
        charger's recorded timeline, which billing never lets start before its session."""
        from datetime import datetime

        from sqlalchemy import update

        from csms.models import ChargingSession

        at = datetime.fromisoformat(when.replace("Z", "+00:00"))

        async def unit(s: Any) -> None:
            await s.execute(update(ChargingSession).values(created_at=at))

        await self.app.db.write(unit)

    async def restart(self) -> None:
        """Stop the server and start a new one on the same database and ports."""
        settings = self.app.settings
        ports = {"ocpp_port": self.app.ocpp_port, "api_port": self.app.api_port}
        await self.app.stop()
        self.app = Csms(load_settings({}, **{**settings.model_dump(), **ports}))
        await self.app.start(migrate=False)


@pytest.fixture
async def emulator() -> AsyncIterator[StripeEmulator]:
    """localstripe in this process on a free loopback port, empty."""
    emu = await start_emulator()
    await emu.reset()
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def server_factory(database_url: str, emulator: StripeEmulator) -> AsyncIterator[Any]:
    """Start servers with extra settings: ``await server_factory(auto_register=True)``.
    Stripe is the test's emulator (it outlives server restarts); its webhooks are delivered
    to the server."""
    started: list[Server] = []
    http = aiohttp.ClientSession()

    async def start(**overrides: Any) -> Server:
        values = {"stripe_api_base": emulator.api_base, "stripe_webhook_secret": WEBHOOK_SECRET}
        values.update(overrides)
        app = Csms(test_settings(database_url, **values))
        await app.start(migrate=False)
        srv = Server(app, http)
        started.append(srv)
        await emulator.register_webhook(f"{srv.api_url}/api/v1/stripe/webhook", WEBHOOK_SECRET)
        return srv

    try:
        yield start
    finally:
        for srv in started:
            await srv.app.stop()
        await http.close()


@pytest.fixture
async def server(server_factory: Any) -> Server:
    """A server with default test settings."""
    srv: Server = await server_factory()
    return srv


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real mosquitto MQTT broker for the run on a free loopback port (tests use distinct
    topics)."""
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield broker
    finally:
        broker.stop()


def pytest_report_header(config: pytest.Config) -> str:
    return f"CSMS tests (PostgreSQL binaries: {os.environ.get('CSMS_PG_BIN', 'auto')})"
