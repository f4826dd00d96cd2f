"""Operator routes for breakers (issue 6): site model, live state, audited close/open.

Every route is for operators only (a driver's token gets 403). Outlets of a breaker are the
connectors of the charge point with the breaker's id, so drivers start sessions on them with
the usual ``POST /api/v1/sessions``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from api.app import CTX, json_response, read_body, require_operator, valid_id
from csms.breakers import BreakerController
from csms.errors import InvalidRequest, NotFound, Unavailable
from csms.models import TariffRow

routes = web.RouteTableDef()

PRINTABLE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$"
"""Text without control characters (tabs and newlines allowed): PostgreSQL refuses NUL."""


class BreakerIn(BaseModel):
    """PUT /api/v1/breakers/{id}: a breaker site. ``driver`` is a driver configuration
    (docs/breakers.md); currents A, power W, times minutes / seconds as named."""

    model_config = ConfigDict(extra="forbid", strict=True)
    driver: dict[str, Any]
    rated_current_a: int = Field(default=16, ge=1, le=6300)
    phases: int = Field(default=1, ge=1, le=3)
    outlets: int = Field(default=1, ge=1, le=16)
    tariff_id: str | None = Field(default=None, max_length=64)
    car_full_power_w: int = Field(default=100, ge=0, le=1_000_000)
    car_full_minutes: float = Field(default=10.0, gt=0, le=1440)
    offline_grace_s: float = Field(default=60.0, ge=0, le=86400)


class SwitchIn(BaseModel):
    """POST /api/v1/breakers/{id}/close | /open: why (kept in the audit record); ``force``
    closes a breaker with no paid session on its outlets."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str = Field(min_length=1, max_length=500, pattern=PRINTABLE)
    """Printable text (tabs and newlines allowed)."""
    force: bool = False


def _controller(request: web.Request) -> BreakerController:
    ctx = request.app[CTX]
    if ctx.breakers is None:
        raise Unavailable("breakers are not running")
    return ctx.breakers


@routes.put("/api/v1/breakers/{id}")
async def put_breaker(request: web.Request) -> web.Response:
    """Create or update a breaker site; returns it with its live state."""
    require_operator(request)
    breaker_id = valid_id(request.match_info["id"], "breaker")
    body: BreakerIn = await read_body(request, BreakerIn)
    if body.phases == 2:
        raise InvalidRequest("phases: 1 or 3", field="phases")
    if body.tariff_id is not None:
        ctx = request.app[CTX]
        tariff_id = body.tariff_id
        if await ctx.db.read(lambda s: s.get(TariffRow, tariff_id)) is None:
            raise NotFound(f"unknown tariff {tariff_id!r}", field="tariff_id")
    data = await _controller(request).put(breaker_id, body.model_dump())
    return json_response(data)


@routes.get("/api/v1/breakers")
async def list_breakers(request: web.Request) -> web.Response:
    """Every breaker with its live state and last readings."""
    require_operator(request)
    return json_response({"items": _controller(request).list_all()})


@routes.get("/api/v1/breakers/{id}")
async def get_breaker(request: web.Request) -> web.Response:
    """One breaker with its live state and last readings."""
    require_operator(request)
    return json_response(_controller(request).get(request.match_info["id"]))


async def _switch(request: web.Request, action: str) -> web.Response:
    principal = require_operator(request)
    body: SwitchIn = await read_body(request, SwitchIn)
    audit = await _controller(request).operator_switch(
        request.match_info["id"], action, f"operator:{principal.name or 'unknown'}",
        body.reason, force=body.force,
    )
    return json_response(audit)


@routes.post("/api/v1/breakers/{id}/close")
async def close_breaker(request: web.Request) -> web.Response:
    """Close (power the outlets): refused (409) with no paid session unless ``force``."""
    return await _switch(request, "close")


@routes.post("/api/v1/breakers/{id}/open")
async def open_breaker(request: web.Request) -> web.Response:
    """Open (cut the outlets); an active session ends, billed up to the open."""
    return await _switch(request, "open")


@routes.get("/api/v1/breakers/{id}/audit")
async def breaker_audit(request: web.Request) -> web.Response:
    """Audit records of the breaker, newest first."""
    require_operator(request)
    return json_response({"items": await _controller(request).audit(request.match_info["id"])})
