"""``POST /api/v1/stripe/webhook``: Stripe event deliveries, handed to the billing processor.

Answers (JSON):

* 200 ``{"received": true, "event_id": ..., "type": ..., "status": "processed" |
  "already_processed", "result": ...}``
* 400 ``{"error": {"code": "bad_signature", "message": ..., "field": "Stripe-Signature"}}`` for
  a missing or wrong signature, ``bad_payload`` / ``body`` for a body that is not an event;
* 500 ``{"error": {"code": "processing_failed", ...}}`` when reconciling failed (the raw event
  is kept; Stripe delivers it again).

The body is read raw (the signature covers the exact bytes). Register the handler with
``app.router.add_post(STRIPE_WEBHOOK_PATH, make_stripe_webhook_handler(processor))``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from billing.errors import WebhookError
from billing.webhooks import WebhookResult

log = logging.getLogger(__name__)

STRIPE_WEBHOOK_PATH = "/api/v1/stripe/webhook"


class WebhookProcessorLike(Protocol):
    """What the route needs: :class:`billing.webhooks.WebhookProcessor` fits."""

    async def process(self, payload: bytes, signature: str | None) -> WebhookResult:
        """Verify, store and reconcile one delivery."""
        ...


def make_stripe_webhook_handler(
    processor: WebhookProcessorLike,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Build the aiohttp handler for Stripe webhook deliveries (see the module docstring)."""

    async def stripe_webhook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            result = await processor.process(body, request.headers.get("Stripe-Signature"))
        except WebhookError as exc:
            return web.json_response(
                {"error": {"code": exc.code, "message": str(exc), "field": exc.field}}, status=400
            )
        except Exception:  # noqa: BLE001 - answer 500 so Stripe retries; the event is stored
            log.exception("stripe webhook processing failed")
            return web.json_response(
                {
                    "error": {
                        "code": "processing_failed",
                        "message": "the event was stored but could not be processed",
                    }
                },
                status=500,
            )
        return web.json_response(
            {
                "received": True,
                "event_id": result.event_id,
                "type": result.type,
                "status": result.status,
                "result": result.result,
            }
        )

    return stripe_webhook
