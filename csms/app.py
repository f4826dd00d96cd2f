"""The composition root: builds every component from the settings and runs them.

Nothing is registered at import time; ``Csms(settings)`` owns the database, the OCPP endpoint,
the HTTP API and (with the lifeline) billing, and starts/stops them in order.
"""

from __future__ import annotations

import logging

from aiohttp import web

from api.app import ApiContext, build_app
from csms.commands import CommandService
from csms.db import Database
from csms.metrics import Metrics
from csms.migrate import upgrade
from csms.ocpp.rpc import OCPP16, OCPP201
from csms.ocpp.server import ConnectionRegistry, OcppServer
from csms.ocpp.v16 import V16Handlers
from csms.ocpp.v201 import V201Handlers
from csms.service import ChargingService
from csms.settings import Settings

log = logging.getLogger(__name__)


class Csms:
    """One server process: ``await start()``, then ``ocpp_port`` / ``api_port``; ``await stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.db = Database(settings.database_url, settings.database_echo)
        self.registry = ConnectionRegistry()
        self.service = ChargingService(self.db, self.metrics,
                                       skew_tolerance_s=settings.clock_skew_tolerance)
        self.commands = CommandService(self.registry, self.db, settings.command_timeout)
        routes = {
            OCPP16: V16Handlers(self.service, settings.heartbeat_interval).routes(),
            OCPP201: V201Handlers(self.service, settings.heartbeat_interval).routes(),
        }
        self.ocpp = OcppServer(settings, self.db, self.service, self.metrics, routes, self.registry)
        self.api = build_app(ApiContext(self.db, self.registry, self.commands, self.metrics,
                                        settings.admin_token))
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
        await self.service.disconnect_all()
        await self.service.init_metrics()
        await self.ocpp.start()
        self._runner = web.AppRunner(self.api, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.api_host, self.settings.api_port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.api_port = server.sockets[0].getsockname()[1]
        log.info("HTTP API on http://%s:%s/api/v1", self.settings.api_host, self.api_port)

    async def stop(self) -> None:
        """Stop accepting, close connections, finish writes."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ocpp.stop()
        await self.db.close()
