"""The HTTP API (aiohttp, JSON): operators and, later, drivers and Stripe webhooks.

Every error is JSON ``{"error": {"code", "message", "field"}}``: 4xx for bad input, 5xx without a
traceback. Authentication is ``Authorization: Bearer <token>``; tokens are stored as SHA-256
(they are 256-bit random), the bootstrap operator token comes from ``CSMS_ADMIN_TOKEN``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from billing.service import Billing
from csms.breakers import BreakerController
from csms.commands import CommandService
from csms.db import Database
from csms.errors import (
    CallRejected,
    CallTimeout,
    Conflict,
    ConnectionLost,
    CsmsError,
    DeviceNotConfirmed,
    DeviceUnreachable,
    Forbidden,
    InvalidAnswer,
    InvalidRequest,
    NotFound,
    PaymentRequired,
    Unavailable,
)
from csms.load import LoadManager
from csms.metering import EnergyState, energy_so_far
from csms.metrics import Metrics
from csms.models import (
    ApiToken,
    ChargePoint,
    Connector,
    DeviceVariable,
    IdTag,
    TariffRow,
    Transaction,
)
from csms.ocpp import rpc
from csms.ocpp.server import ConnectionRegistry, hash_password
from csms.operations import OperationsService
from csms.service import canonical_id_tag
from csms.sessions import SessionService
from csms.timestamps import format_utc, parse_timestamp

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ApiContext:
    """What the routes need, built by the composition root."""

    db: Database
    registry: ConnectionRegistry
    commands: CommandService
    metrics: Metrics
    admin_token: str | None
    sessions: SessionService
    billing: Billing
    breakers: BreakerController | None = None
    operations: OperationsService | None = None
    load: LoadManager | None = None


CTX = web.AppKey("ctx", ApiContext)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: role operator | driver; ``subject`` is a driver id."""

    role: str
    subject: str | None = None
    name: str | None = None
    """Who, for audit records: ``admin`` (CSMS_ADMIN_TOKEN) or the token's name."""


PRINCIPAL = web.RequestKey("principal", Principal)


def hash_token(token: str) -> str:
    """SHA-256 hex of an API token."""
    return hashlib.sha256(token.encode()).hexdigest()


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response serialised with orjson (datetimes as ISO 8601)."""
    body = orjson.dumps(data, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    return web.Response(body=body, status=status, content_type="application/json")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_utc(value)
    raise TypeError(type(value).__name__)


def error_response(
    status: int, code: str, message: str, field: str | None = None, **extra: Any
) -> web.Response:
    """The one error shape of the API."""
    body: dict[str, Any] = {"code": code, "message": message, "field": field}
    body.update(extra)
    return json_response({"error": body}, status)


_STATUS: list[tuple[type[CsmsError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidRequest, 400),
    (CallTimeout, 504),
    (DeviceNotConfirmed, 504),
    (DeviceUnreachable, 502),
    (CallRejected, 502),
    (InvalidAnswer, 502),
    (ConnectionLost, 502),
    (Forbidden, 403),
    (Unavailable, 503),
]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map exceptions to JSON errors; log unexpected ones, never send a traceback."""
    try:
        return await handler(request)
    except CallRejected as exc:
        return error_response(502, exc.ocpp_code, exc.description, details=exc.details)
    except PaymentRequired as exc:
        return error_response(
            402,
            exc.code,
            exc.message,
            exc.field,
            decline_code=exc.decline_code,
            stripe_code=exc.stripe_code,
        )
    except CsmsError as exc:
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return error_response(status, exc.code, exc.message, exc.field)
        return error_response(500, exc.code, exc.message, exc.field)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error")


MAX_COMMAND_TIMEOUT = 300.0
"""Longest wait (seconds) an operator may ask for on a command."""

PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/api/v1/openapi.json", "/api/v1/stripe/webhook"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the Bearer token to a :class:`Principal` (401 without a valid one)."""
    if request.path in PUBLIC_PATHS or (
        request.method == "POST" and request.path == "/api/v1/drivers"
    ):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return error_response(401, "unauthenticated", "Bearer token required", "Authorization")
    ctx = request.app[CTX]
    principal: Principal | None = None
    if ctx.admin_token and hmac.compare_digest(token.encode(), ctx.admin_token.encode()):
        principal = Principal("operator", name="admin")
    else:
        digest = hash_token(token)

        async def lookup(s: AsyncSession) -> ApiToken | None:
            return (
                (await s.execute(select(ApiToken).where(col(ApiToken.token_hash) == digest)))
                .scalars()
                .first()
            )

        row = await ctx.db.read(lookup)
        if row is not None:
            principal = Principal(row.role, row.subject, row.name or f"token:{row.id}")
    if principal is None:
        return error_response(401, "unauthenticated", "invalid token", "Authorization")
    request[PRINCIPAL] = principal
    return await handler(request)


def valid_id(value: str, what: str) -> str:
    """An id taken from a path: 1-48 printable characters (OCPP 1.6 chargeBoxIdentity is
    CiString48; control characters, including NUL, are refused).

    Raises:
        InvalidRequest: naming ``id``.
    """
    if not value or len(value) > 48 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidRequest(f"{what} id must be 1-48 printable characters", field="id")
    return value


def require_operator(request: web.Request) -> Principal:
    """The caller, who must be an operator (403 otherwise)."""
    principal: Principal = request[PRINCIPAL]
    if principal.role != "operator":
        raise web.HTTPForbidden(reason="Operator only")
    return principal


async def read_body(request: web.Request, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body; 400 naming the first bad field."""
    try:
        data = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest("body is not valid JSON", field="body") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise InvalidRequest(f"{field}: {err.get('msg')}", field=field) from None


# -- bodies ---------------------------------------------------------------------------------


class ChargePointIn(BaseModel):
    """PUT /api/v1/charge-points/{id}."""

    model_config = ConfigDict(extra="forbid")
    password: str | None = Field(default=None, min_length=16, max_length=40)
    """OCPP 1.6 security whitepaper: AuthorizationKey is 16-40 characters (2.0.1: 16-40)."""
    security_profile: Literal[0, 1, 2, 3] = 1
    tariff_id: str | None = None


class IdTagIn(BaseModel):
    """PUT /api/v1/id-tags/{idTag}."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["Accepted", "Blocked", "Expired"] = "Accepted"
    expiry_date: AwareDatetime | None = None
    parent_id_tag: str | None = Field(default=None, max_length=20)


class TokenIn(BaseModel):
    """POST /api/v1/operator-tokens."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)


# -- routes ---------------------------------------------------------------------------------

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness and database reachability."""
    ctx = request.app[CTX]
    await ctx.db.read(lambda s: s.execute(select(1)))
    return json_response({"status": "ok", "connected_charge_points": len(ctx.registry)})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition format."""
    body = generate_latest(request.app[CTX].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.post("/api/v1/operator-tokens")
async def create_operator_token(request: web.Request) -> web.Response:
    """Create an operator token; it is shown once."""
    require_operator(request)
    body: TokenIn = await read_body(request, TokenIn)
    token = secrets.token_urlsafe(32)

    async def unit(s: AsyncSession) -> None:
        s.add(ApiToken(token_hash=hash_token(token), role="operator", name=body.name))

    await request.app[CTX].db.write(unit)
    return json_response({"token": token, "name": body.name}, 201)


def charge_point_json(
    cp: ChargePoint, connectors: list[Connector], connected: bool
) -> dict[str, Any]:
    """The API shape of a charge point."""
    return {
        "id": cp.id,
        "connected": connected,
        "last_seen": cp.last_seen,
        "ocpp_version": cp.ocpp_version,
        "security_profile": cp.security_profile,
        "vendor": cp.vendor,
        "model": cp.model,
        "serial_number": cp.serial_number,
        "charge_box_serial_number": cp.charge_box_serial_number,
        "firmware_version": cp.firmware_version,
        "tariff_id": cp.tariff_id,
        "kind": cp.kind,
        "connectors": [
            {
                "connector_id": c.connector_id,
                "status": c.status,
                "error_code": c.error_code,
                "raw_error_code": c.raw_error_code,
                "updated_at": c.updated_at,
            }
            for c in sorted(connectors, key=lambda c: c.connector_id)
        ],
    }


@routes.put("/api/v1/charge-points/{id}")
async def put_charge_point(request: web.Request) -> web.Response:
    """Register or update a charge point (password stored as argon2id)."""
    require_operator(request)
    cp_id = valid_id(request.match_info["id"], "charge point")
    body: ChargePointIn = await read_body(request, ChargePointIn)
    if body.security_profile in (1, 2) and not body.password:

        async def has_password(s: AsyncSession) -> bool:
            cp = await s.get(ChargePoint, cp_id)
            return cp is not None and cp.password_hash is not None

        if not await request.app[CTX].db.read(has_password):
            raise InvalidRequest("security profiles 1 and 2 need a password", field="password")
    if body.tariff_id is not None:
        exists = await request.app[CTX].db.read(lambda s: s.get(TariffRow, body.tariff_id))
        if exists is None:
            raise InvalidRequest(f"unknown tariff {body.tariff_id!r}", field="tariff_id")
    password_hash = None
    if body.password:
        password_hash = await asyncio.to_thread(hash_password, body.password)

    async def unit(s: AsyncSession) -> tuple[ChargePoint, bool]:
        cp = await s.get(ChargePoint, cp_id)
        created = cp is None
        if cp is None:
            cp = ChargePoint(id=cp_id)
            s.add(cp)
        elif cp.kind != "ocpp":
            raise Conflict(f"{cp_id!r} is a {cp.kind} site (see /api/v1/breakers)", field="id")
        cp.security_profile = body.security_profile
        if password_hash is not None:
            cp.password_hash = password_hash
        if "tariff_id" in body.model_fields_set:
            cp.tariff_id = body.tariff_id
        return cp, created

    ctx = request.app[CTX]
    cp, created = await ctx.db.write(unit)
    connectors = await ctx.db.read(lambda s: _connectors(s, cp_id))
    return json_response(
        charge_point_json(cp, connectors, ctx.registry.get(cp_id) is not None),
        201 if created else 200,
    )


async def _connectors(s: AsyncSession, cp_id: str | None = None) -> list[Connector]:
    q = select(Connector)
    if cp_id is not None:
        q = q.where(col(Connector.charge_point_id) == cp_id)
    return list((await s.execute(q)).scalars())


@routes.get("/api/v1/charge-points")
async def list_charge_points(request: web.Request) -> web.Response:
    """All charge points with live connection state."""
    require_operator(request)
    ctx = request.app[CTX]

    async def fn(s: AsyncSession) -> tuple[list[ChargePoint], list[Connector]]:
        cps = list((await s.execute(select(ChargePoint).order_by(ChargePoint.id))).scalars())
        return cps, await _connectors(s)

    cps, connectors = await ctx.db.read(fn)
    by_cp: dict[str, list[Connector]] = {}
    for c in connectors:
        by_cp.setdefault(c.charge_point_id, []).append(c)
    return json_response(
        {
            "items": [
                charge_point_json(cp, by_cp.get(cp.id, []), ctx.registry.get(cp.id) is not None)
                for cp in cps
            ]
        }
    )


@routes.get("/api/v1/charge-points/{id}")
async def get_charge_point(request: web.Request) -> web.Response:
    """One charge point."""
    require_operator(request)
    ctx = request.app[CTX]
    cp_id = request.match_info["id"]
    cp = await ctx.db.read(lambda s: s.get(ChargePoint, cp_id))
    if cp is None:
        raise NotFound(f"unknown charge point {cp_id!r}", field="id")
    connectors = await ctx.db.read(lambda s: _connectors(s, cp_id))
    return json_response(charge_point_json(cp, connectors, ctx.registry.get(cp_id) is not None))


@routes.post("/api/v1/charge-points/{id}/commands/{action}")
async def command(request: web.Request) -> web.Response:
    """Send an OCPP call with the body as its payload; answer the charger's payload."""
    require_operator(request)
    try:
        payload = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest("body is not valid JSON", field="body") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("body must be a JSON object (the OCPP payload)", field="body")
    action = request.match_info["action"]
    if rpc.is_charger_initiated(action):
        raise InvalidRequest(f"{action} is sent by chargers, not to them", field="action")
    timeout = request.query.get("timeout")
    try:
        timeout_s = float(timeout) if timeout is not None else None
    except ValueError:
        timeout_s = -1.0
    if timeout_s is not None and not 0 < timeout_s <= MAX_COMMAND_TIMEOUT:
        raise InvalidRequest(
            f"timeout must be a number of seconds in (0, {MAX_COMMAND_TIMEOUT}]", field="timeout"
        )
    result = await request.app[CTX].commands.call(
        request.match_info["id"], action, payload, timeout_s
    )
    return json_response(result)


class PasswordIn(BaseModel):
    """POST /api/v1/charge-points/{id}/password."""

    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=16, max_length=40)


@routes.post("/api/v1/charge-points/{id}/password")
async def rotate_password(request: web.Request) -> web.Response:
    """Give a connected charger a new Basic-auth password (2.0.1 SetVariables
    BasicAuthPassword, 1.6 ChangeConfiguration AuthorizationKey); the stored hash changes only
    when the charger accepts."""
    require_operator(request)
    body: PasswordIn = await read_body(request, PasswordIn)
    status = await request.app[CTX].commands.rotate_password(request.match_info["id"],
                                                              body.password)
    return json_response({"status": status, "updated": status in ("Accepted", "RebootRequired")})


@routes.get("/api/v1/charge-points/{id}/device-model")
async def device_model(request: web.Request) -> web.Response:
    """The OCPP 2.0.1 device model a station reported (NotifyReport after GetBaseReport)."""
    require_operator(request)
    cp_id = request.match_info["id"]
    ctx = request.app[CTX]
    if await ctx.db.read(lambda s: s.get(ChargePoint, cp_id)) is None:
        raise NotFound(f"unknown charge point {cp_id!r}", field="id")
    rows = await ctx.db.read(lambda s: s.execute(
        select(DeviceVariable).where(col(DeviceVariable.charge_point_id) == cp_id)
        .order_by(col(DeviceVariable.component), col(DeviceVariable.variable))))
    return json_response({"items": [
        r.model_dump(exclude={"id", "charge_point_id"}) for r in rows.scalars()]})


def id_tag_json(tag: IdTag) -> dict[str, Any]:
    """The API shape of an operator-managed id tag."""
    return {
        "id_tag": tag.id_tag,
        "status": tag.status,
        "expiry_date": tag.expiry_date,
        "parent_id_tag": tag.parent_id_tag,
    }


@routes.put("/api/v1/id-tags/{idTag}")
async def put_id_tag(request: web.Request) -> web.Response:
    """Create or update an operator-managed id tag (stored upper case)."""
    require_operator(request)
    tag = canonical_id_tag(request.match_info["idTag"])
    if tag is None or len(tag) > 20:
        raise InvalidRequest("idTag must be 1-20 characters (OCPP 1.6 CiString20)", field="idTag")
    body: IdTagIn = await read_body(request, IdTagIn)

    async def unit(s: AsyncSession) -> IdTag:
        row = await s.get(IdTag, tag)
        if row is None:
            row = IdTag(id_tag=tag)
            s.add(row)
        row.status = body.status
        row.expiry_date = body.expiry_date
        row.parent_id_tag = canonical_id_tag(body.parent_id_tag)
        return row

    return json_response(id_tag_json(await request.app[CTX].db.write(unit)))


@routes.get("/api/v1/id-tags")
async def list_id_tags(request: web.Request) -> web.Response:
    """Operator-managed id tags."""
    require_operator(request)
    rows = await request.app[CTX].db.read(lambda s: s.execute(select(IdTag).order_by(IdTag.id_tag)))
    return json_response({"items": [id_tag_json(t) for t in rows.scalars()]})


def transaction_json(tx: Transaction) -> dict[str, Any]:
    """The API shape of a transaction; ``transaction_id`` is the id on the wire; ``energy_wh``
    of an active transaction is the energy so far."""
    wire: Any = tx.ocpp_id
    if wire is not None and wire.lstrip("-").isdigit() and abs(int(wire)) < 2**63:
        wire = int(wire)
    return {
        "id": tx.id,
        "transaction_id": wire,
        "charge_point_id": tx.charge_point_id,
        "connector_id": tx.connector_id,
        "id_tag": tx.id_tag,
        "status": tx.status,
        "meter_start": tx.meter_start,
        "meter_stop": tx.meter_stop,
        "energy_wh": energy_so_far(EnergyState.from_dict(tx.meter_state))
        if tx.status == "active"
        else tx.energy_wh,
        "started_at": tx.started_at,
        "stopped_at": tx.stopped_at,
        "started_at_raw": tx.started_at_raw,
        "stopped_at_raw": tx.stopped_at_raw,
        "start_received_at": tx.start_received_at,
        "stop_received_at": tx.stop_received_at,
        "stop_reason": tx.stop_reason,
        "flags": tx.flags,
    }


@routes.get("/api/v1/transactions")
async def list_transactions(request: web.Request) -> web.Response:
    """Transactions, newest first; filters ``charge_point_id``, ``status``, ``since``
    (ISO 8601, on the start time), ``limit`` (default 100, max 1000)."""
    require_operator(request)
    q = select(Transaction)
    if cp := request.query.get("charge_point_id"):
        q = q.where(col(Transaction.charge_point_id) == cp)
    if status := request.query.get("status"):
        if status not in ("active", "completed", "orphan"):
            raise InvalidRequest("status must be active, completed or orphan", field="status")
        q = q.where(col(Transaction.status) == status)
    if since := request.query.get("since"):
        parsed = parse_timestamp(since, datetime.now().astimezone())
        if parsed.value is None:
            raise InvalidRequest("since must be an ISO 8601 time", field="since")
        q = q.where(col(Transaction.started_at) >= parsed.value)
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
    except ValueError:
        raise InvalidRequest("limit must be an integer", field="limit") from None
    q = q.order_by(col(Transaction.id).desc()).limit(limit)
    rows = await request.app[CTX].db.read(lambda s: s.execute(q))
    return json_response({"items": [transaction_json(t) for t in rows.scalars()]})
