"""Operator routes for site load management (issue 7): a feeder's rating and members, and
its live allocation. Operators only (a driver's token gets 403); currents A, margin %.
docs/load-management.md draws the flow."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from api.app import CTX, json_response, read_body, require_operator
from csms.errors import InvalidRequest, Unavailable
from csms.load import LoadManager

routes = web.RouteTableDef()


BODY = ConfigDict(extra="forbid", strict=True)
"""Strict bodies: ``"16"`` is not a number and ``"yes"`` not a boolean (400 naming the field);
integers are accepted where a float is expected."""


class MemberIn(BaseModel):
    """A charge point behind the feeder (an OCPP charger or a breaker site)."""

    model_config = BODY
    charge_point_id: str = Field(min_length=1, max_length=255)
    priority: int = Field(default=0, ge=-100, le=100)
    """Higher is admitted first and paused last."""
    max_current_a: float = Field(default=32.0, ge=6, le=630)
    """The charger's rating, A (a breaker's own rated current applies to its outlets); at
    least the site's ``min_current_a`` for a charger (400 otherwise)."""


class SiteIn(BaseModel):
    """PUT /api/v1/sites/{id}: the feeder and who is behind it (members replace the old
    list)."""

    model_config = BODY
    rated_current_a: float = Field(gt=0, le=6300)
    phases: int = Field(default=1, ge=1, le=3)
    safety_margin_pct: float = Field(default=10.0, ge=0, lt=100)
    min_current_a: float = Field(default=6.0, ge=0, le=80)
    """The lowest current a charger is given while charging (IEC 61851-1: 6 A); at most the
    site's limit (rated less the margin) and at most every member charger's
    ``max_current_a`` (400 otherwise)."""
    members: list[MemberIn] = Field(default_factory=list, max_length=1000)


def _manager(request: web.Request) -> LoadManager:
    ctx = request.app[CTX]
    if ctx.load is None:
        raise Unavailable("load management is not running")
    return ctx.load


def _site_id(request: web.Request) -> str:
    site_id = request.match_info["id"]
    if not 1 <= len(site_id) <= 64 or any(ord(c) < 32 for c in site_id):
        raise InvalidRequest("site id must be 1-64 printable characters", field="id")
    return site_id


@routes.put("/api/v1/sites/{id}")
async def put_site(request: web.Request) -> web.Response:
    """Create or replace a site; returns it. 400 names the bad field, 409 when a member
    belongs to another site. Queued sessions of members it removes (or that can no longer
    fit) fail and their holds are released (docs/load-management.md)."""
    require_operator(request)
    site_id = _site_id(request)
    body: SiteIn = await read_body(request, SiteIn)
    if body.phases == 2:
        raise InvalidRequest("phases: 1 or 3", field="phases")
    data = await _manager(request).put_site(site_id, body.model_dump())
    return json_response(data)


@routes.get("/api/v1/sites/{id}")
async def get_site(request: web.Request) -> web.Response:
    """A site's configuration and members."""
    require_operator(request)
    return json_response(_manager(request).site_json(_site_id(request)))


@routes.get("/api/v1/sites/{id}/allocation")
async def site_allocation(request: web.Request) -> web.Response:
    """The live state: limit, measured total, each session's allocation, the queue."""
    require_operator(request)
    return json_response(_manager(request).allocation_json(_site_id(request)))
