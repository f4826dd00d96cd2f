"""Fixtures for the billing tests: localstripe in-process, a fault proxy in front of it, a real
SQLite database through ``csms.db.Database``, and a fake clock for the outbox backoff."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from blockbuster import blockbuster_ctx
from sqlmodel import SQLModel

from billing import models as _billing_tables  # noqa: F401  (registers the tables)
from billing.emulator import StripeEmulator
from billing.service import Billing, RetryPolicy
from billing.stripe_edge import StripeEdge
from csms.db import Database
from tests.billing.proxy import FaultProxy
from tests.pg import PgCluster, start_postgres

API_KEY = "sk_test_emulator"
WEBHOOK_SECRET = "whsec_test_secret"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """stripe's HTTPXClient posts form data with ``data=``, which httpx deprecates."""
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.filterwarnings(
                "ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning"))


@pytest.fixture(autouse=True)
def no_blocking_in_billing() -> Iterator[None]:
    """Fail a test if billing code makes a blocking call on the event loop.

    One allowance outside billing: asyncpg looks at ~/.pgpass and ~/.postgresql on the loop
    when csms.db's engine opens a new pool connection (PostgreSQL runs only).
    """
    with blockbuster_ctx("billing") as bb:
        for function in bb.functions.values():
            function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_arguments")
        yield


@dataclass
class FakeClock:
    """A clock the test moves by hand (the outbox backoff reads it)."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 2, 3, 0, tzinfo=UTC))


@pytest.fixture
async def proxy(emulator: StripeEmulator) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(emulator.api_base)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def make_db(where: Path | str) -> Database:
    """A started Database on a SQLite file (a Path) or a URL, with every table created."""
    db = Database(f"sqlite+aiosqlite:///{where}" if isinstance(where, Path) else where)
    async with db.engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    await db.start()
    return db


@pytest.fixture(scope="session")
def billing_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for the billing tests."""
    cluster = start_postgres(tmp_path_factory.mktemp("billing-pg"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh database with the billing tables: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        database = await make_db(tmp_path / "billing.db")
        try:
            yield database
        finally:
            await database.close()
        return
    cluster: PgCluster = request.getfixturevalue("billing_pg")
    name = "billing_" + uuid.uuid4().hex[:12]
    database = await make_db(await cluster.acreate_database(name))
    try:
        yield database
    finally:
        await database.close()
        await cluster.adrop_database(name)


def make_edge(api_base: str) -> StripeEdge:
    """A Stripe edge with short timeouts and no client-side retries (the outbox retries)."""
    return StripeEdge(API_KEY, api_base=api_base, webhook_secret=WEBHOOK_SECRET, timeout=1.0,
                      max_network_retries=0)


@pytest.fixture
async def edge(proxy: FaultProxy) -> AsyncIterator[StripeEdge]:
    e = make_edge(proxy.url)
    try:
        yield e
    finally:
        await e.close()


@pytest.fixture
async def stripe_api(emulator: StripeEmulator) -> AsyncIterator[StripeEdge]:
    """A direct client to the emulator, for set-up and checks (not through the proxy)."""
    e = StripeEdge(API_KEY, api_base=emulator.api_base, timeout=5.0, max_network_retries=0)
    try:
        yield e
    finally:
        await e.close()


RETRY = RetryPolicy(initial_delay=1.0, factor=2.0, max_delay=60.0, lease=30.0)


@pytest.fixture
async def billing(db: Database, edge: StripeEdge, clock: FakeClock) -> AsyncIterator[Billing]:
    b = Billing(db, edge, clock=clock, retry=RETRY)
    try:
        yield b
    finally:
        await b.close()


async def add_driver(b: Billing, driver_id: str = "driver-1",
                     payment_method: str = "pm_card_visa") -> str:
    """A driver with a Stripe customer and a default card; returns the customer id."""
    customer = await b.ensure_customer(driver_id, f"{driver_id}@example.com")
    await b.attach_card(driver_id, payment_method)
    return customer


async def emulator_list(emulator: StripeEmulator, what: str) -> list[dict[str, Any]]:
    """All objects of a kind in localstripe (``payment_intents``, ``customers``...)."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{emulator.api_base}/v1/{what}", params={"limit": "100"},
            headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        resp.raise_for_status()
        body = await resp.json()
    return list(body["data"])


def collected(pi: dict[str, Any]) -> int:
    """Money collected by a PaymentIntent, read from Stripe's answer: ``amount_received`` on
    Stripe; on localstripe the captured charge's ``amount - amount_refunded`` (it books the
    released part of a partial capture as a refund)."""
    if isinstance(pi.get("amount_received"), int):
        return int(pi["amount_received"])
    charge = pi["latest_charge"]
    if not charge or not charge["captured"] or charge["status"] != "succeeded":
        return 0
    return int(charge["amount"]) - int(charge["amount_refunded"])


async def create_card(emulator: StripeEmulator, number: str) -> str:
    """A card PaymentMethod with a given test number, made directly in the emulator."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{emulator.api_base}/v1/payment_methods",
            headers={"Authorization": f"Bearer {API_KEY}"},
            data={"type": "card", "card[number]": number, "card[exp_month]": "12",
                  "card[exp_year]": "2030", "card[cvc]": "123"}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    return str(body["id"])
