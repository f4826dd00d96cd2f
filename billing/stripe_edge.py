"""The Stripe edge: the official ``stripe`` package's ``StripeClient``, async, with our errors.

Every write takes an ``idempotency_key`` (required keyword) built by the caller from our ids and
the step (``session:{id}:capture``); Stripe answers a repeated key with the first answer
(https://docs.stripe.com/api/idempotent_requests). Answers come back as plain ``dict`` (the
JSON object Stripe sent). Errors are translated once, here, into :mod:`billing.errors`:

==========================================  =====================================================
Stripe error                                raised here
==========================================  =====================================================
``CardError`` (HTTP 402)                    :class:`CardDeclined` (code, decline_code, PI id)
``APIConnectionError`` (network, timeout)   :class:`StripeUnavailable`
``APIError`` / HTTP 5xx, ``RateLimitError``  :class:`StripeUnavailable`
``AuthenticationError``, ``PermissionError``  :class:`StripeUnavailable` (fix the key, then retry)
``InvalidRequestError``, ``IdempotencyError``  :class:`StripeRejected` (code, http_status)
==========================================  =====================================================

Source: Stripe API reference "Errors" (https://docs.stripe.com/api/errors) and "Error handling"
(https://docs.stripe.com/error-handling).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

import stripe

from billing.errors import (
    CardDeclined,
    StripeRejected,
    StripeUnavailable,
    WebhookPayloadError,
    WebhookSignatureError,
)

log = logging.getLogger(__name__)

__all__ = ["StripeEdge", "translate_error"]


def translate_error(exc: stripe.StripeError) -> Exception:
    """Map a ``stripe`` exception to the billing error tree (see the module table)."""
    status = exc.http_status
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    assert isinstance(err, dict)
    message = str(err.get("message") or exc.user_message or type(exc).__name__)
    code = exc.code or err.get("code")
    if isinstance(exc, stripe.CardError):
        pi = err.get("payment_intent")
        pi_id = pi.get("id") if isinstance(pi, dict) else pi if isinstance(pi, str) else None
        return CardDeclined(message, code=code, decline_code=err.get("decline_code"),
                            payment_intent_id=pi_id, charge_id=err.get("charge"),
                            http_status=status)
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError
                  | stripe.AuthenticationError | stripe.PermissionError):
        return StripeUnavailable(message, code=code, http_status=status)
    if isinstance(exc, stripe.IdempotencyError | stripe.InvalidRequestError):
        return StripeRejected(message, code=code, http_status=status)
    if status is None or status >= 500 or status in (408, 409, 429):
        return StripeUnavailable(message, code=code, http_status=status)
    return StripeRejected(message, code=code, http_status=status)


class StripeEdge:
    """Async access to Stripe (or an emulator) for the billing service.

    Args:
        api_key: secret key (``sk_test_...``, ``sk_live_...``; any ``sk_...`` for the emulator).
        api_base: API address, e.g. ``http://127.0.0.1:8420`` for localstripe
            (``CSMS_STRIPE_API_BASE``); None = Stripe itself.
        webhook_secret: the endpoint's signing secret (``STRIPE_WEBHOOK_SECRET``, ``whsec_...``).
        timeout: seconds per HTTP request (connect + read).
        max_network_retries: the stripe client's own immediate retries (same idempotency key) on
            network errors, 409 and 5xx before an error reaches us; the outbox retries later.
        webhook_tolerance: maximum age in seconds of a webhook signature timestamp.

    The HTTP client (``stripe.HTTPXClient``) is created on first use in a worker thread (it
    reads the CA bundle, and stripe reads its telemetry id file) and closed by :meth:`close`.
    """

    def __init__(self, api_key: str, *, api_base: str | None = None,
                 webhook_secret: str | None = None, timeout: float = 30.0,
                 max_network_retries: int = 2, webhook_tolerance: int = 300) -> None:
        if not api_key:
            raise ValueError("api_key is required")
        self.api_base = api_base.rstrip("/") if api_base else None
        self.webhook_secret = webhook_secret
        self.timeout = timeout
        self.max_network_retries = max_network_retries
        self.webhook_tolerance = webhook_tolerance
        self._api_key = api_key
        self._http: stripe.HTTPXClient | None = None
        self._client: stripe.StripeClient | None = None
        self._lock = asyncio.Lock()

    @property
    def is_test_mode(self) -> bool:
        """False only for a live key (``sk_live_`` / ``rk_live_``)."""
        return "_live_" not in self._api_key

    async def _get(self) -> stripe.StripeClient:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    http = await asyncio.to_thread(self._make_http_client)
                    addresses: dict[str, str] = {}
                    if self.api_base:
                        addresses = {"api": self.api_base}
                    self._client = stripe.StripeClient(
                        self._api_key, base_addresses=addresses,  # type: ignore[arg-type]
                        http_client=http, max_network_retries=self.max_network_retries)
                    self._http = http
        return self._client

    def _make_http_client(self) -> stripe.HTTPXClient:
        """Runs in a worker thread: the client reads the CA bundle, and stripe's first request
        reads (or writes) its telemetry id file under ~/.config/stripe; both are done here."""
        http = stripe.HTTPXClient(timeout=self.timeout)
        try:
            from stripe._telemetry_id import get_telemetry_id
        except ImportError:  # a stripe version without the file cache
            return http
        if stripe.enable_telemetry:
            get_telemetry_id()
        return http

    async def close(self) -> None:
        """Close the HTTP client (idempotent)."""
        if self._http is not None:
            await self._http.close_async()
        self._http = None
        self._client = None

    async def __aenter__(self) -> StripeEdge:
        await self._get()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @staticmethod
    async def _call(call: Awaitable[Any]) -> dict[str, Any]:
        try:
            obj = await call
        except stripe.StripeError as exc:
            raise translate_error(exc) from exc
        return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)

    # ---------------------------------------------------------------- customers and cards

    async def create_customer(self, *, email: str | None, driver_id: str,
                              idempotency_key: str) -> dict[str, Any]:
        """POST /v1/customers with the e-mail and ``metadata.driver_id``. Returns the Customer."""
        client = await self._get()
        params: Any = {"metadata": {"driver_id": driver_id}}
        if email:
            params["email"] = email
        return await self._call(client.v1.customers.create_async(
            params=params, options={"idempotency_key": idempotency_key}))

    async def set_default_payment_method(self, customer_id: str, payment_method_id: str, *,
                                         idempotency_key: str) -> dict[str, Any]:
        """Set a customer's ``invoice_settings.default_payment_method`` (POST /v1/customers/:id)."""
        client = await self._get()
        return await self._call(client.v1.customers.update_async(
            customer_id,
            params={"invoice_settings": {"default_payment_method": payment_method_id}},
            options={"idempotency_key": idempotency_key}))

    async def create_setup_intent(self, customer_id: str, *, idempotency_key: str,
                                  metadata: dict[str, str]) -> dict[str, Any]:
        """POST /v1/setup_intents (card, usage=off_session). Returns the SetupIntent."""
        client = await self._get()
        params: Any = {"customer": customer_id, "usage": "off_session",
                       "payment_method_types": ["card"], "metadata": metadata}
        return await self._call(client.v1.setup_intents.create_async(
            params=params,
            options={"idempotency_key": idempotency_key}))

    async def attach_payment_method(self, payment_method_id: str, customer_id: str, *,
                                    idempotency_key: str) -> dict[str, Any]:
        """POST /v1/payment_methods/:id/attach. Raises CardDeclined when the card is refused."""
        client = await self._get()
        return await self._call(client.v1.payment_methods.attach_async(
            payment_method_id, params={"customer": customer_id},
            options={"idempotency_key": idempotency_key}))

    # ---------------------------------------------------------------- payment intents

    async def create_payment_intent(self, *, amount: int, currency: str, customer_id: str,
                                    payment_method_id: str, manual_capture: bool,
                                    idempotency_key: str,
                                    metadata: dict[str, str]) -> dict[str, Any]:
        """Create and confirm an off-session card PaymentIntent (POST /v1/payment_intents).

        ``manual_capture=True`` places a hold (status ``requires_capture``); otherwise the
        amount is charged at once (``succeeded``). ``requires_action`` means the bank wants the
        customer (3-D Secure). Raises CardDeclined on a decline (Stripe:
        https://docs.stripe.com/payments/place-a-hold-on-a-payment-method ,
        https://docs.stripe.com/payments/save-and-reuse#charge-saved-payment-method).
        """
        client = await self._get()
        params: Any = {"amount": amount, "currency": currency.lower(), "customer": customer_id,
                       "payment_method": payment_method_id, "payment_method_types": ["card"],
                       "capture_method": "manual" if manual_capture else "automatic",
                       "confirm": True, "off_session": True, "metadata": metadata}
        return await self._call(client.v1.payment_intents.create_async(
            params=params,
            options={"idempotency_key": idempotency_key}))

    async def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        """GET /v1/payment_intents/:id."""
        client = await self._get()
        return await self._call(client.v1.payment_intents.retrieve_async(payment_intent_id))

    async def capture_payment_intent(self, payment_intent_id: str, amount_to_capture: int, *,
                                     idempotency_key: str) -> dict[str, Any]:
        """POST /v1/payment_intents/:id/capture with ``amount_to_capture`` (<= the hold)."""
        client = await self._get()
        return await self._call(client.v1.payment_intents.capture_async(
            payment_intent_id, params={"amount_to_capture": amount_to_capture},
            options={"idempotency_key": idempotency_key}))

    async def cancel_payment_intent(self, payment_intent_id: str, *,
                                    idempotency_key: str) -> dict[str, Any]:
        """POST /v1/payment_intents/:id/cancel (releases a hold)."""
        client = await self._get()
        return await self._call(client.v1.payment_intents.cancel_async(
            payment_intent_id, options={"idempotency_key": idempotency_key}))

    async def create_refund(self, payment_intent_id: str, amount: int, *,
                            idempotency_key: str, metadata: dict[str, str]) -> dict[str, Any]:
        """POST /v1/refunds for ``amount`` minor units of a PaymentIntent. Returns the Refund."""
        client = await self._get()
        return await self._call(client.v1.refunds.create_async(
            params={"payment_intent": payment_intent_id, "amount": amount,
                    "metadata": metadata},
            options={"idempotency_key": idempotency_key}))

    async def retrieve_charge(self, charge_id: str) -> dict[str, Any]:
        """GET /v1/charges/:id."""
        client = await self._get()
        return await self._call(client.v1.charges.retrieve_async(charge_id))

    # ---------------------------------------------------------------- webhooks

    def construct_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Verify a webhook delivery with ``stripe.Webhook.construct_event`` and the secret.

        Args:
            payload: the raw request body, byte for byte.
            signature: the ``Stripe-Signature`` header.

        Returns:
            The event as a plain dict (``id``, ``type``, ``data.object``...).

        Raises:
            WebhookSignatureError: no secret configured, header missing, malformed, too old or
                not matching (https://docs.stripe.com/webhooks#verify-events).
            WebhookPayloadError: the signed body is not a JSON event object.
        """
        if not self.webhook_secret:
            raise WebhookSignatureError("no webhook secret configured")
        if not signature:
            raise WebhookSignatureError("missing Stripe-Signature header")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookPayloadError("body is not UTF-8") from None
        try:
            stripe.Webhook.construct_event(text, signature, self.webhook_secret,
                                           tolerance=self.webhook_tolerance,
                                           api_key=self._api_key)
        except stripe.SignatureVerificationError as exc:
            raise WebhookSignatureError(exc.user_message or "signature mismatch") from None
        except ValueError:
            raise WebhookPayloadError("body is not JSON") from None
        event = json.loads(text)
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) \
                or not isinstance(event.get("type"), str):
            raise WebhookPayloadError("body is not a Stripe event (id, type)")
        return event
