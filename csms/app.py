"""The composition root: builds every component from the settings and runs them.

Nothing is registered at import time; ``Csms(settings)`` owns the database, billing (Stripe or
the embedded emulator), the paid-session layer, the OCPP endpoint and the HTTP API, and
starts/stops them in order.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api.app import ApiContext, hash_token
from api.main import build_app
from billing.emulator import StripeEmulator, start_emulator
from billing.models import Operation
from billing.payments import BelowMinimum, OverHold, SettlePolicy
from billing.service import Billing
from billing.stripe_edge import StripeEdge
from csms.breakers import BreakerController, BreakerSettings, RelayLink
from csms.commands import CommandService
from csms.db import Database
from csms.load import LoadManager, LoadSettings
from csms.metrics import Metrics
from csms.migrate import upgrade
from csms.models import ApiToken
from csms.ocpp.rpc import OCPP16, OCPP201
from csms.ocpp.server import ConnectionRegistry, OcppServer
from csms.ocpp.v16 import V16Handlers
from csms.ocpp.v201 import V201Handlers
from csms.operations import OperationsService
from csms.service import ChargingService
from csms.sessions import SessionsConfig, SessionService, default_tariff_document
from csms.settings import Settings

log = logging.getLogger(__name__)

EMULATOR_KEY = "sk_test_embedded_emulator"


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
        self.v201 = V201Handlers(
            self.service, settings.heartbeat_interval, self.commands,
            provision_on_boot=settings.ocpp201_provision_on_boot,
            pending_interval=settings.ocpp201_pending_interval,
        )
        routes = {
            OCPP16: V16Handlers(self.service, settings.heartbeat_interval).routes(),
            OCPP201: self.v201.routes(),
        }
        self.operations = OperationsService(self.db, self.commands, self.service, routes)
        self.ocpp = OcppServer(settings, self.db, self.service, self.metrics, routes, self.registry)
        self.emulator: StripeEmulator | None = None
        self.webhook_secret = settings.stripe_webhook_secret or (
            None if settings.stripe_api_key else "whsec_" + secrets.token_hex(16)
        )
        self.stripe: StripeEdge | None = None
        self.billing: Billing | None = None
        self.sessions: SessionService | None = None
        self.breakers: BreakerController | None = None
        self.load: LoadManager | None = None
        self._runner: web.AppRunner | None = None
        self.api_port: int | None = None

    @property
    def ocpp_port(self) -> int | None:
        """The OCPP port actually bound (useful with port 0)."""
        return self.ocpp.port

    async def _start_billing(self) -> None:
        s = self.settings
        api_base = s.stripe_api_base
        if not s.stripe_api_key and api_base is None:
            self.emulator = await start_emulator(data_file=s.stripe_emulator_data)
            api_base = self.emulator.api_base
            print(
                f"csms: no STRIPE_API_KEY: using the embedded Stripe emulator at {api_base}"
                " - NO REAL MONEY MOVES",
                flush=True,
            )
        elif not s.stripe_api_key:
            print(f"csms: Stripe emulator at {api_base} - NO REAL MONEY MOVES", flush=True)
        self.stripe = StripeEdge(
            s.stripe_api_key or EMULATOR_KEY,
            api_base=api_base,
            webhook_secret=self.webhook_secret,
            timeout=s.stripe_timeout,
        )
        over_hold = OverHold.TOPUP if s.topup_policy == "topup" else OverHold.CAPTURE_HOLD_ONLY
        policy = SettlePolicy(BelowMinimum(s.settle_below_minimum), over_hold)
        self.billing = Billing(self.db, self.stripe, policy=policy, on_change=self._payment_changed)
        self.sessions = SessionService(
            self.db,
            self.billing,
            self.commands,
            SessionsConfig(
                default_tariff=default_tariff_document(
                    s.default_tariff_currency,
                    str(s.default_tariff_energy_price),
                    s.default_tariff_hold_amount,
                ),
                hold_reached_policy="continue" if s.topup_policy == "topup" else "stop",
                start_timeout_s=s.session_start_timeout,
            ),
        )
        self.service.hooks = self.sessions
        self.v201.sessions = self.sessions
        self.breakers = BreakerController(
            self.db, self.service, self.metrics,
            BreakerSettings(
                poll_interval_s=s.breaker_poll_interval,
                confirm_timeout_s=s.breaker_confirm_timeout,
                attempts=s.breaker_attempts,
            ),
            ocpp_link=RelayLink(self.registry, self.commands, self.service),
        )
        self.sessions.outlets = self.breakers
        self.load = LoadManager(
            self.db, self.service, self.commands, self.registry, self.breakers, self.metrics,
            LoadSettings(interval_s=s.load_interval, push_timeout_s=s.load_push_timeout),
        )
        self.load.start_queued = self.sessions.start_queued
        self.load.fail_queued = self.sessions.fail_queued
        self.sessions.admission = self.load

    async def _payment_changed(self, view: object) -> None:
        if self.sessions is not None:
            await self.sessions.on_payment_change(view)  # type: ignore[arg-type]

    async def start(self, migrate: bool = True) -> None:
        """Apply migrations, then start the writer, billing, the OCPP endpoint and the API."""
        if migrate:
            await upgrade(self.settings.database_url)
        await self.db.start()
        await self._bootstrap_operator_token()
        await self._start_billing()
        assert self.billing is not None and self.sessions is not None
        await self.service.disconnect_all()
        await self.service.init_metrics()
        await self.ocpp.start()
        self.api = build_app(
            ApiContext(
                self.db, self.registry, self.commands, self.metrics, self.settings.admin_token,
                self.sessions, self.billing, self.breakers, self.operations, self.load,
            )
        )
        self._runner = web.AppRunner(self.api, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.api_host, self.settings.api_port)
        await site.start()
        self.api_port = self._runner.addresses[0][1]
        log.info("HTTP API on http://%s:%s/api/v1", self.settings.api_host, self.api_port)
        if self.emulator is not None and self.webhook_secret:
            await self.emulator.register_webhook(
                f"http://127.0.0.1:{self.api_port}/api/v1/stripe/webhook", self.webhook_secret
            )
        await self._release_billing_leases()
        await self.billing.start()
        await self.sessions.start()
        assert self.breakers is not None
        await self.breakers.start()
        assert self.load is not None
        await self.load.start()

    async def _release_billing_leases(self) -> None:
        """One server process sends Stripe operations: at start, no other sender can hold a
        lease, so operations claimed by a process that died (kill -9) are due again now
        instead of after the lease (they carry their idempotency key, so a resend is safe)."""

        async def unit(s: AsyncSession) -> None:
            await s.execute(
                update(Operation)
                .where(col(Operation.lease_until).is_not(None))
                .values(lease_until=None)
            )

        await self.db.write(unit)

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
        """Stop accepting, close connections, finish writes and Stripe operations."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ocpp.stop()
        if self.load is not None:
            await self.load.close()
        if self.breakers is not None:
            await self.breakers.close()
        if self.sessions is not None:
            await self.sessions.close()
        if self.billing is not None:
            await self.billing.close()
        if self.stripe is not None:
            await self.stripe.close()
            self.stripe = None
        if self.emulator is not None:
            await self.emulator.stop()
            self.emulator = None
        await self.db.close()
