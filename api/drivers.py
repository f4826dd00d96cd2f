"""Driver and paid-session routes, tariffs, the Stripe webhook and receipts.

Drivers authenticate with the token they got at sign-up (``Authorization: Bearer``) and only
ever see their own sessions (another driver's is a 404). Operators see everything. Amounts are
integers in the currency's minor unit (JPY: yen).
"""

from __future__ import annotations

import html
import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api.app import (
    CTX,
    PRINCIPAL,
    ApiContext,
    Principal,
    hash_token,
    json_response,
    read_body,
    require_operator,
)
from billing.errors import BillingError, NoPaymentMethod, StripeError
from billing.payments import PaymentView
from billing.tariff import Cost
from csms.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable
from csms.models import ApiToken, ChargingSession, Driver, DriverTag, TariffRow
from csms.sessions import cost_json

routes = web.RouteTableDef()


# -- bodies -----------------------------------------------------------------------------------


class SignupIn(BaseModel):
    """POST /api/v1/drivers."""

    model_config = ConfigDict(extra="forbid")
    email: str = Field(
        min_length=3,
        max_length=254,
        pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$",
    )


class PaymentMethodIn(BaseModel):
    """POST /api/v1/drivers/me/payment-methods."""

    model_config = ConfigDict(extra="forbid")
    payment_method_id: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_]+$")


class IdTagLinkIn(BaseModel):
    """POST /api/v1/drivers/me/id-tags."""

    model_config = ConfigDict(extra="forbid")
    id_tag: str = Field(min_length=1, max_length=20)


class SessionIn(BaseModel):
    """POST /api/v1/sessions."""

    model_config = ConfigDict(extra="forbid")
    charge_point_id: str = Field(min_length=1, max_length=48)
    connector_id: StrictInt = Field(ge=1, le=99)


class RefundIn(BaseModel):
    """POST /api/v1/sessions/{id}/refund; no amount = the whole collected amount."""

    model_config = ConfigDict(extra="forbid")
    amount: StrictInt | None = Field(default=None, ge=1, le=99_999_999)
    reason: str | None = Field(default=None, max_length=200)


class TariffIn(BaseModel):
    """PUT /api/v1/tariffs/{id}: an OCPI 2.2.1 Tariff (validated by billing.tariff) plus
    ``hold_amount`` in minor units."""

    model_config = ConfigDict(extra="allow")
    currency: str = Field(min_length=3, max_length=3)
    hold_amount: StrictInt = Field(ge=1, le=99_999_999)
    elements: list[dict[str, Any]] = Field(min_length=1)


# -- helpers ----------------------------------------------------------------------------------


def ctx_of(request: web.Request) -> ApiContext:
    """The API context."""
    return request.app[CTX]


def driver_of(request: web.Request) -> str:
    """The calling driver's id (403 for operators on driver-only routes)."""
    principal: Principal = request[PRINCIPAL]
    if principal.role != "driver" or principal.subject is None:
        raise Forbidden("drivers only: sign up at POST /api/v1/drivers")
    return principal.subject


def viewer(request: web.Request) -> str | None:
    """None for operators (see everything), else the driver id."""
    principal: Principal = request[PRINCIPAL]
    return None if principal.role == "operator" else principal.subject


def session_id_of(request: web.Request) -> int:
    """The ``{id}`` of a session path."""
    try:
        value = int(request.match_info["id"])
    except ValueError:
        raise NotFound("no such session", field="id") from None
    if not 0 < value < 2**63:
        raise NotFound("no such session", field="id")
    return value


def payment_json(view: PaymentView | None) -> dict[str, Any] | None:
    """The API shape of a session's payment (minor units)."""
    if view is None:
        return None
    authorised = (
        view.hold_amount
        if view.hold_intent_id and view.hold_status not in (None, "requires_payment_method")
        else 0
    )
    return {
        "status": view.state.value,
        "outcome": view.outcome,
        "currency": view.currency,
        "authorized_amount": authorised,
        "captured_amount": view.captured_amount,
        "extra_amount": view.extra_collected,
        "collected_amount": view.collected_amount,
        "refunded_amount": view.refunded_amount,
        "payment_intent_id": view.hold_intent_id,
        "extra_payment_intent_id": view.extra_intent_id,
        "decline_code": view.decline_code,
    }


async def session_json(ctx: ApiContext, row: ChargingSession) -> dict[str, Any]:
    """The API shape of a session; a charging session shows its running energy and cost."""
    assert row.id is not None
    cost = row.cost
    energy = row.energy_wh
    if row.status == "charging" and row.transaction_pk is not None:
        running: Cost = await ctx.sessions.running_cost(row)
        cost = cost_json(running)
        energy = cost["energy_wh"]
    return {
        "id": row.id,
        "status": row.status,
        "origin": row.origin,
        "charge_point_id": row.charge_point_id,
        "connector_id": row.connector_id,
        "tariff_id": row.tariff_id,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "stopped_at": row.stopped_at,
        "energy_wh": energy,
        "cost": cost,
        "hold_amount": row.hold_amount,
        "currency": row.currency,
        "payment": payment_json(await ctx.billing.get_payment(row.id)),
        "failure_reason": row.failure_reason,
        "stop_reason": row.stop_reason,
        "queue_position": ctx.sessions.queue_position(row.id) if row.status == "queued" else None,
    }


# -- drivers ----------------------------------------------------------------------------------


@routes.post("/api/v1/drivers")
async def signup(request: web.Request) -> web.Response:
    """Sign up: a driver, its Stripe customer and a Bearer token (shown once)."""
    body: SignupIn = await read_body(request, SignupIn)
    ctx = ctx_of(request)
    driver, customer_id = await ctx.sessions.signup(body.email)
    token = secrets.token_urlsafe(32)

    async def unit(s: AsyncSession) -> None:
        s.add(ApiToken(token_hash=hash_token(token), role="driver", subject=driver.id))

    await ctx.db.write(unit)
    return json_response(
        {"id": driver.id, "email": driver.email, "token": token, "stripe_customer_id": customer_id},
        201,
    )


@routes.get("/api/v1/drivers/me")
async def me(request: web.Request) -> web.Response:
    """The calling driver, its card and RFID tags."""
    driver_id = driver_of(request)
    ctx = ctx_of(request)

    async def fn(s: AsyncSession) -> tuple[Driver | None, list[str]]:
        tags = (
            await s.execute(
                select(col(DriverTag.id_tag)).where(col(DriverTag.driver_id) == driver_id)
            )
        ).scalars()
        return await s.get(Driver, driver_id), list(tags)

    driver, tags = await ctx.db.read(fn)
    if driver is None:
        raise NotFound("driver not found")
    customer = await ctx.billing.get_customer(driver_id)
    return json_response(
        {
            "id": driver.id,
            "email": driver.email,
            "id_tags": tags,
            "stripe_customer_id": customer.stripe_customer_id if customer else None,
            "default_payment_method": customer.default_payment_method if customer else None,
        }
    )


@routes.post("/api/v1/drivers/me/setup-intents")
async def setup_intent(request: web.Request) -> web.Response:
    """A SetupIntent for the app to collect a card (Stripe.js confirmCardSetup)."""
    driver_id = driver_of(request)
    try:
        info = await ctx_of(request).billing.create_setup_intent(driver_id)
    except StripeError as exc:
        raise Unavailable(f"payment provider: {exc}") from None
    return json_response(
        {
            "client_secret": info.client_secret,
            "setup_intent_id": info.setup_intent_id,
            "customer_id": info.customer_id,
        },
        201,
    )


@routes.post("/api/v1/drivers/me/payment-methods")
async def attach_card(request: web.Request) -> web.Response:
    """Attach a PaymentMethod and make it the default card."""
    driver_id = driver_of(request)
    body: PaymentMethodIn = await read_body(request, PaymentMethodIn)
    try:
        card = await ctx_of(request).billing.attach_card(driver_id, body.payment_method_id)
    except StripeError as exc:
        status = getattr(exc, "http_status", None)
        if isinstance(status, int) and 400 <= status < 500:
            raise InvalidRequest(f"card refused: {exc}", field="payment_method_id") from None
        raise Unavailable(f"payment provider: {exc}") from None
    except BillingError as exc:
        raise InvalidRequest(str(exc), field="payment_method_id") from None
    return json_response(
        {
            "payment_method_id": card.payment_method_id,
            "brand": card.brand,
            "last4": card.last4,
            "exp_month": card.exp_month,
            "exp_year": card.exp_year,
        },
        201,
    )


@routes.post("/api/v1/drivers/me/id-tags")
async def link_id_tag(request: web.Request) -> web.Response:
    """Link an RFID card (idTag) to the calling driver."""
    driver_id = driver_of(request)
    body: IdTagLinkIn = await read_body(request, IdTagLinkIn)
    tag = await ctx_of(request).sessions.link_tag(driver_id, body.id_tag)
    return json_response({"id_tag": tag}, 201)


@routes.get("/api/v1/drivers/me/sessions")
async def my_sessions(request: web.Request) -> web.Response:
    """The calling driver's sessions, newest first."""
    driver_id = driver_of(request)
    ctx = ctx_of(request)
    rows = await ctx.sessions.list_for(driver_id)
    return json_response({"items": [await session_json(ctx, r) for r in rows]})


# -- sessions ---------------------------------------------------------------------------------


@routes.post("/api/v1/sessions")
async def start_session(request: web.Request) -> web.Response:
    """Start a paid session: hold, then RemoteStartTransaction. 402 when the card is declined
    (nothing is sent to the charger)."""
    driver_id = driver_of(request)
    body: SessionIn = await read_body(request, SessionIn)
    ctx = ctx_of(request)
    try:
        row = await ctx.sessions.start_app_session(
            driver_id, body.charge_point_id, body.connector_id
        )
    except NoPaymentMethod:
        raise Conflict("add a card first", field="payment_method") from None
    return json_response(await session_json(ctx, row), 201)


@routes.get("/api/v1/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    """All sessions (operators)."""
    require_operator(request)
    ctx = ctx_of(request)
    rows = await ctx.sessions.list_for(None)
    return json_response({"items": [await session_json(ctx, r) for r in rows]})


@routes.get("/api/v1/sessions/{id}")
async def get_session(request: web.Request) -> web.Response:
    """One session (a driver's own only)."""
    ctx = ctx_of(request)
    row = await ctx.sessions.get(session_id_of(request), viewer(request))
    return json_response(await session_json(ctx, row))


@routes.post("/api/v1/sessions/{id}/stop")
async def stop_session(request: web.Request) -> web.Response:
    """Ask the charger to stop (RemoteStopTransaction); 202, settled at StopTransaction."""
    ctx = ctx_of(request)
    row = await ctx.sessions.request_stop(session_id_of(request), viewer(request))
    return json_response(await session_json(ctx, row), 202)


@routes.post("/api/v1/sessions/{id}/refund")
async def refund_session(request: web.Request) -> web.Response:
    """Refund all or part of what a session collected (operators)."""
    require_operator(request)
    ctx = ctx_of(request)
    row = await ctx.sessions.get(session_id_of(request))
    body: RefundIn = await read_body(request, RefundIn)
    assert row.id is not None
    try:
        await ctx.billing.refund(row.id, body.amount, reason=body.reason)
    except BillingError as exc:
        raise Conflict(str(exc), field="amount") from None
    return json_response(await session_json(ctx, row), 202)


async def receipt_json(ctx: ApiContext, row: ChargingSession) -> dict[str, Any]:
    """The receipt of a session: tariff, energy, times, line items, amounts, Stripe ids."""
    assert row.id is not None
    view = await ctx.billing.get_payment(row.id)
    cost = row.cost or {}
    duration = (
        (row.stopped_at - row.started_at).total_seconds()
        if row.stopped_at and row.started_at
        else None
    )
    waived = view is not None and view.outcome in ("zero_cost", "waived_below_minimum")
    return {
        "session_id": row.id,
        "status": row.status,
        "charge_point_id": row.charge_point_id,
        "connector_id": row.connector_id,
        "tariff": {"id": row.tariff_id, **row.tariff},
        "started_at": row.started_at,
        "stopped_at": row.stopped_at,
        "duration_seconds": duration,
        "stop_reason": row.stop_reason,
        "energy_wh": row.energy_wh,
        "currency": row.currency,
        "lines": cost.get("lines", []),
        "total": cost.get("amount"),
        "waived": waived,
        "outcome": view.outcome if view else None,
        "charged": {
            "hold_amount": row.hold_amount,
            "captured_amount": view.captured_amount if view else 0,
            "extra_amount": view.extra_collected if view else 0,
            "collected_amount": view.collected_amount if view else 0,
            "refunded_amount": view.refunded_amount if view else 0,
        },
        "stripe": {
            "customer_id": view.customer_id if view else None,
            "payment_intent_id": view.hold_intent_id if view else None,
            "extra_payment_intent_id": view.extra_intent_id if view else None,
        },
    }


def _money(amount: int | None, currency: str) -> str:
    from billing.currency import to_major

    if amount is None:
        return "-"
    major: Decimal = to_major(amount, currency)
    return f"{major} {currency}"


@routes.get("/api/v1/sessions/{id}/receipt")
async def receipt(request: web.Request) -> web.Response:
    """The receipt as JSON, or printable HTML with ``?format=html``."""
    ctx = ctx_of(request)
    row = await ctx.sessions.get(session_id_of(request), viewer(request))
    data = await receipt_json(ctx, row)
    if request.query.get("format") != "html":
        return json_response(data)
    cur = row.currency
    lines = "".join(
        f"<tr><td>{html.escape(str(li['type']))}</td><td>{html.escape(str(li['quantity']))} "
        f"{html.escape(str(li['unit']))}</td><td>{html.escape(str(li['unit_price']))}</td>"
        f"<td>{_money(li['amount'], cur)}</td></tr>"
        for li in data["lines"]
    )

    def when(value: datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"

    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Receipt {row.id}</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}td,th{{padding:.2em .6em}}
table{{border-collapse:collapse}}tr{{border-bottom:1px solid #ccc}}</style></head><body>
<h1>Charging receipt #{row.id}</h1>
<p>Charger {html.escape(row.charge_point_id)}, connector {row.connector_id}<br>
{when(row.started_at)} &ndash; {when(row.stopped_at)}<br>Energy: {row.energy_wh or 0} Wh</p>
<table><tr><th>Item</th><th>Quantity</th><th>Unit price</th><th>Amount</th></tr>{lines}</table>
<p><b>Total: {_money(data["total"], cur)}</b>{
        " (waived: below the minimum charge)" if data["waived"] else ""
    }<br>Charged to your card:
 {_money(data["charged"]["collected_amount"], cur)}</p>
<p><small>Payment {html.escape(str(data["stripe"]["payment_intent_id"]))}</small></p>
</body></html>"""
    return web.Response(text=page, content_type="text/html")


# -- tariffs ----------------------------------------------------------------------------------


@routes.put("/api/v1/tariffs/{id}")
async def put_tariff(request: web.Request) -> web.Response:
    """Create or replace a tariff (OCPI 2.2.1 Tariff + hold_amount); ``default`` applies where
    a charge point has none assigned."""
    require_operator(request)
    tariff_id = request.match_info["id"]
    if not tariff_id or len(tariff_id) > 64 or not tariff_id.isprintable():
        raise InvalidRequest("tariff id must be 1-64 printable characters", field="id")
    body: TariffIn = await read_body(request, TariffIn)
    ctx = ctx_of(request)
    existed = await ctx.db.read(lambda s: s.get(TariffRow, tariff_id)) is not None
    tariff = await ctx.sessions.put_tariff(tariff_id, body.model_dump())
    return json_response({"id": tariff_id, **tariff.to_dict()}, 200 if existed else 201)


@routes.get("/api/v1/tariffs")
async def list_tariffs(request: web.Request) -> web.Response:
    """All tariffs."""
    rows = await ctx_of(request).db.read(
        lambda s: s.execute(select(TariffRow).order_by(col(TariffRow.id)))
    )
    return json_response({"items": [{"id": r.id, **r.document} for r in rows.scalars()]})


@routes.get("/api/v1/tariffs/{id}")
async def get_tariff(request: web.Request) -> web.Response:
    """One tariff."""
    row = await ctx_of(request).db.read(lambda s: s.get(TariffRow, request.match_info["id"]))
    if row is None:
        raise NotFound("no such tariff", field="id")
    return json_response({"id": row.id, **row.document})
