"""The composition root: builds every component from the settings and runs them.

Nothing is registered at import time; ``Csms(settings)`` owns the database, the OCPP endpoint,
the HTTP API and (with the lifeline) billing, and starts/stops them in order.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api.app import ApiContext, build_app, hash_token
from csms.commands import CommandService
from csms.db import Database
from csms.metrics import Metrics
from csms.migrate import upgrade
from csms.models import ApiToken
from csms.ocpp.rpc import OCPP16, OCPP201
from csms.ocpp.server import ConnectionRegistry, OcppServer
from csms.ocpp.v16 import V16Handlers
from csms.ocpp.v201 import V201Handlers
from csms.service import ChargingService
from csms.settings import Settings

log = logging.getLogger(__name__)


class Csms:
    """One server process: ``await start()``, then ``ocpp_port`` / ``api_port``;
    ``await stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.db = Database(settings.database_url, settings.database_echo)
        self.registry = ConnectionRegistry()
        self.service = ChargingService(
            self.db, self.metrics, skew_tolerance_s=settings.clock_skew_tolerance
        )
        self.commands = CommandService(self.registry, self.db, settings.command_timeout)
        routes = {
            OCPP16: V16Handlers(self.service, settings.heartbeat_interval).routes(),
            OCPP201: V201Handlers(self.service, settings.heartbeat_interval).routes(),
        }
        self.ocpp = OcppServer(settings, self.db, self.service, self.metrics, routes, self.registry)
        self.api = build_app(
            ApiContext(self.db, self.registry, self.commands, self.metrics, settings.admin_token)
        )
        self._runner: web.AppRunner | None = None
        self.api_port: int | None = None

    @property
    def ocpp_port(self) -> int | None:
        """The OCPP port actually bound (useful with port 0)."""
        return self.ocpp.port

    async def start(self, migrate: bool = True) -> None:
        """Apply migrations, then start the writer, the OCPP endpoint and the API."""
        if migrate:
            await upgrade(self.settings.database_url)
        await self.db.start()
        await self._bootstrap_operator_token()
        await self.service.disconnect_all()
        await self.service.init_metrics()
        await self.ocpp.start()
        self._runner = web.AppRunner(self.api, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.api_host, self.settings.api_port)
        await site.start()
        self.api_port = self._runner.addresses[0][1]
        log.info("HTTP API on http://%s:%s/api/v1", self.settings.api_host, self.api_port)

    async def _bootstrap_operator_token(self) -> None:
        """A fresh install without ``CSMS_ADMIN_TOKEN`` and without operator tokens gets one,
        printed once (only its hash is stored), so the API is usable out of the box."""
        if self.settings.admin_token:
            return

        async def unit(s: AsyncSession) -> str | None:
            exists = await s.scalar(
                select(col(ApiToken.id)).where(col(ApiToken.role) == "operator").limit(1)
            )
            if exists is not None:
                return None
            token = secrets.token_urlsafe(32)
            s.add(ApiToken(token_hash=hash_token(token), role="operator", name="bootstrap"))
            return token

        token = await self.db.write(unit)
        if token is not None:
            print(f"csms: bootstrap operator token (shown once, keep it): {token}", flush=True)

    async def stop(self) -> None:
        """Stop accepting, close connections, finish writes."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ocpp.stop()
        await self.db.close()
