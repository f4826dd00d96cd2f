"""The Stripe edge: error translation (Stripe's documented error bodies), real connection
failures and emulator answers."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import stripe

from billing.emulator import StripeEmulator
from billing.errors import (
    CardDeclined,
    StripeRejected,
    StripeUnavailable,
    WebhookPayloadError,
    WebhookSignatureError,
)
from billing.stripe_edge import StripeEdge, translate_error

# https://docs.stripe.com/api/errors - the body of a declined off-session PaymentIntent
CARD_ERROR_BODY: dict[str, Any] = {"error": {
    "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
    "message": "Your card has insufficient funds.", "charge": "ch_123",
    "payment_intent": {"id": "pi_123", "object": "payment_intent",
                       "status": "requires_payment_method"}}}


def test_card_error_keeps_stripe_decline_code() -> None:
    exc = stripe.CardError(CARD_ERROR_BODY["error"]["message"], None, "card_declined",
                           http_status=402, json_body=CARD_ERROR_BODY)
    err = translate_error(exc)
    assert isinstance(err, CardDeclined)
    assert (err.code, err.decline_code, err.payment_intent_id, err.charge_id, err.http_status) \
        == ("card_declined", "insufficient_funds", "pi_123", "ch_123", 402)
    assert str(err) == "Your card has insufficient funds."


@pytest.mark.parametrize(("exc", "kind"), [
    (stripe.APIConnectionError("connection refused"), StripeUnavailable),
    (stripe.APIError("oops", http_status=500), StripeUnavailable),
    (stripe.APIError("bad gateway", http_status=502), StripeUnavailable),
    (stripe.RateLimitError("slow down", http_status=429), StripeUnavailable),
    (stripe.AuthenticationError("bad key", http_status=401), StripeUnavailable),
    (stripe.InvalidRequestError("no such payment_intent", "id", "resource_missing",
                                http_status=404), StripeRejected),
    (stripe.IdempotencyError("keys reused", http_status=400), StripeRejected),
])
def test_error_kinds(exc: stripe.StripeError, kind: type[Exception]) -> None:
    assert isinstance(translate_error(exc), kind)


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with StripeEdge("sk_test_x", api_base=f"http://127.0.0.1:{port}", timeout=1,
                          max_network_retries=0) as edge:
        with pytest.raises(StripeUnavailable):
            await edge.retrieve_payment_intent("pi_nope")


async def test_emulator_answers(stripe_api: StripeEdge, emulator: StripeEmulator) -> None:
    with pytest.raises(StripeRejected) as err:
        await stripe_api.retrieve_payment_intent("pi_nope")
    assert err.value.http_status == 404
    async with StripeEdge("not-a-secret-key", api_base=emulator.api_base, timeout=2,
                          max_network_retries=0) as bad:
        with pytest.raises(StripeUnavailable) as unauth:  # fix the key, then retry
            await bad.retrieve_payment_intent("pi_nope")
        assert unauth.value.http_status == 401


def test_construct_event_needs_secret_and_header() -> None:
    edge = StripeEdge("sk_test_x")
    with pytest.raises(WebhookSignatureError):
        edge.construct_event(b"{}", "t=1,v1=00")  # no secret configured
    edge = StripeEdge("sk_test_x", webhook_secret="whsec_x")
    with pytest.raises(WebhookSignatureError):
        edge.construct_event(b"{}", None)
    with pytest.raises(WebhookPayloadError):
        edge.construct_event(b"\xff\xfe", "t=1,v1=00")
    assert edge.is_test_mode
    assert not StripeEdge("sk_live_x").is_test_mode
