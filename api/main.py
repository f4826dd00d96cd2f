"""Builds the aiohttp application from its route tables (operator, driver, Stripe webhook,
OpenAPI)."""

from __future__ import annotations

from aiohttp import web

from api import app as operator_api
from api import breakers, drivers, operations, sites
from api.app import CTX, ApiContext, auth_middleware, errors_middleware, json_response
from api.openapi import openapi_document
from api.stripe_webhook import STRIPE_WEBHOOK_PATH, make_stripe_webhook_handler


def build_app(ctx: ApiContext) -> web.Application:
    """The whole HTTP API of one server."""
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=1024 * 1024
    )
    app[CTX] = ctx
    app.add_routes(operator_api.routes)
    app.add_routes(drivers.routes)
    app.add_routes(breakers.routes)
    app.add_routes(operations.routes)
    app.add_routes(sites.routes)
    app.router.add_post(
        STRIPE_WEBHOOK_PATH, make_stripe_webhook_handler(ctx.billing.webhook_processor())
    )

    async def openapi(_request: web.Request) -> web.Response:
        return json_response(openapi_document())

    app.router.add_get("/api/v1/openapi.json", openapi)
    return app
