"""Webhooks through the real aiohttp route: signature check, store-then-process, once per event
id, reconciliation; and localstripe delivering to a loopback server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.stripe_webhook import STRIPE_WEBHOOK_PATH, make_stripe_webhook_handler
from billing.emulator import StripeEmulator
from billing.models import OperationKind, OperationStatus, PaymentState, WebhookEvent
from billing.service import Billing, HoldOutcome
from billing.stripe_edge import StripeEdge
from csms.db import Database
from tests.billing.conftest import API_KEY, WEBHOOK_SECRET, FakeClock, add_driver, create_card
from tests.billing.proxy import FaultProxy


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """Stripe's scheme: ``t=<unix>,v1=hex(hmac_sha256(secret, "<t>.<payload>"))``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(event_id: str, event_type: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": event_type,
                       "created": int(time.time()), "livemode": False,
                       "api_version": "2024-06-20", "data": {"object": obj}}).encode()


@pytest.fixture
async def client(billing: Billing) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    app.router.add_post(STRIPE_WEBHOOK_PATH, make_stripe_webhook_handler(
        billing.webhook_processor()))
    async with TestClient(TestServer(app)) as c:
        yield c


async def post(client: TestClient[web.Request, web.Application], body: bytes,
               signature: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    resp = await client.post(STRIPE_WEBHOOK_PATH, data=body, headers=headers)
    return resp.status, await resp.json()


async def stored_events(db: Database) -> list[WebhookEvent]:
    async def fn(s: AsyncSession) -> list[WebhookEvent]:
        return list((await s.execute(select(WebhookEvent))).scalars())
    return await db.read(fn)


async def test_bad_signature_is_refused(client: TestClient[web.Request, web.Application],
                                        db: Database) -> None:
    body = event("evt_bad", "payment_intent.succeeded", {"id": "pi_x", "object": "payment_intent"})
    status, answer = await post(client, body, sign(body, secret="whsec_wrong"))
    assert status == 400
    assert answer["error"]["code"] == "bad_signature"
    assert answer["error"]["field"] == "Stripe-Signature"
    assert answer["error"]["message"]
    status, answer = await post(client, body, None)
    assert (status, answer["error"]["code"]) == (400, "bad_signature")
    status, answer = await post(client, body, "t=1,v1=deadbeef")
    assert (status, answer["error"]["code"]) == (400, "bad_signature")
    old = sign(body, timestamp=int(time.time()) - 3600)  # replayed an hour later
    status, answer = await post(client, body, old)
    assert (status, answer["error"]["code"]) == (400, "bad_signature")
    tampered = body.replace(b"pi_x", b"pi_y")
    status, answer = await post(client, tampered, sign(body))
    assert (status, answer["error"]["code"]) == (400, "bad_signature")
    assert await stored_events(db) == []


async def test_bad_payload_is_refused(client: TestClient[web.Request, web.Application]) -> None:
    body = b'{"not": "an event"}'
    status, answer = await post(client, body, sign(body))
    assert (status, answer["error"]["code"], answer["error"]["field"]) == \
        (400, "bad_payload", "body")


async def test_same_event_twice_changes_state_once(
        billing: Billing, client: TestClient[web.Request, web.Application],
        stripe_api: StripeEdge, emulator: StripeEmulator, db: Database,
        clock: FakeClock) -> None:
    """3-D Secure: the hold waits in requires_action; the driver authenticates; Stripe's
    payment_intent.amount_capturable_updated authorises it - once, however often delivered."""
    await billing.ensure_customer("driver-3ds", "3ds@example.com")
    await billing.attach_card("driver-3ds", await create_card(emulator, "4000002500003155"))
    hold = await billing.place_hold("w1", "driver-3ds", 3000, "JPY")
    assert hold.outcome is HoldOutcome.REQUIRES_ACTION
    await billing.settle("w1", 1800)  # the session ended before the driver authenticated...
    view = await billing.get_payment("w1")
    assert view is not None and view.state is PaymentState.CANCELED  # ...so it is released

    hold2 = await billing.place_hold("w2", "driver-3ds", 3000, "JPY")
    assert hold2.outcome is HoldOutcome.REQUIRES_ACTION and hold2.client_secret
    async with aiohttp.ClientSession() as http, http.post(  # the driver passes 3-D Secure
            f"{emulator.api_base}/v1/payment_intents/{hold2.payment_intent_id}/_authenticate",
            data={"client_secret": hold2.client_secret, "success": "true"},
            headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        assert resp.status == 200
    assert hold2.payment_intent_id is not None
    pi = await stripe_api.retrieve_payment_intent(hold2.payment_intent_id)
    assert pi["status"] == "requires_capture"
    body = event("evt_capturable_1", "payment_intent.amount_capturable_updated", pi)

    clock.advance(5)
    status, answer = await post(client, body, sign(body))
    assert status == 200, answer
    assert answer == {"received": True, "event_id": "evt_capturable_1",
                      "type": "payment_intent.amount_capturable_updated",
                      "status": "processed", "result": "applied"}
    first = await billing.get_payment("w2")
    assert first is not None and first.state is PaymentState.AUTHORISED
    assert (await billing.hold_result("w2")).outcome is HoldOutcome.AUTHORISED

    clock.advance(5)
    status, answer = await post(client, body, sign(body))
    assert (status, answer["status"], answer["result"]) == (200, "already_processed", "applied")
    second = await billing.get_payment("w2")
    assert second == first  # nothing changed, not even updated_at
    rows = await stored_events(db)
    assert [(r.id, r.status, r.attempts, r.raw) for r in rows] == \
        [("evt_capturable_1", "processed", 1, body.decode())]

    done = await billing.settle("w2", 1800)
    assert (done.state, done.collected_amount) == (PaymentState.CAPTURED, 1800)


async def test_payment_failed_event_records_the_decline_code(
        billing: Billing, client: TestClient[web.Request, web.Application], proxy: FaultProxy,
        clock: FakeClock) -> None:
    """The hold's answer was lost (Stripe unavailable); Stripe's payment_intent.payment_failed
    (Stripe's shape, with last_payment_error.decline_code) settles it; the retry is not sent."""
    await add_driver(billing)
    await proxy.stop()
    assert (await billing.place_hold("f", "driver-1", 3000, "JPY")).outcome is \
        HoldOutcome.UNAVAILABLE
    pi = {"id": "pi_declined_1", "object": "payment_intent", "status": "requires_payment_method",
          "amount": 3000, "currency": "jpy", "metadata": {"session_id": "f", "step": "hold"},
          "last_payment_error": {"type": "card_error", "code": "card_declined",
                                 "decline_code": "insufficient_funds",
                                 "message": "Your card has insufficient funds."}}
    body = event("evt_failed_1", "payment_intent.payment_failed", pi)
    status, answer = await post(client, body, sign(body))
    assert (status, answer["result"]) == (200, "applied")
    result = await billing.hold_result("f")
    assert (result.outcome, result.code, result.decline_code, result.payment_intent_id) == \
        (HoldOutcome.DECLINED, "card_declined", "insufficient_funds", "pi_declined_1")
    await proxy.start()
    clock.advance(10)
    assert await billing.run_pending_once() == 0
    assert proxy.count("POST", r"/v1/payment_intents") == 0


async def test_canceled_event_for_an_expired_hold(
        billing: Billing, client: TestClient[web.Request, web.Application],
        stripe_api: StripeEdge) -> None:
    await add_driver(billing)
    hold = await billing.place_hold("e", "driver-1", 3000, "JPY")
    assert hold.payment_intent_id is not None
    pi = await stripe_api.cancel_payment_intent(hold.payment_intent_id, idempotency_key="t:x")
    body = event("evt_canceled_1", "payment_intent.canceled", pi)
    status, answer = await post(client, body, sign(body))
    assert (status, answer["result"]) == (200, "applied")
    view = await billing.get_payment("e")
    assert view is not None
    assert (view.state, view.hold_status) == (PaymentState.AUTHORISED, "canceled")
    settled = await billing.settle("e", 1500)  # charged afresh
    assert (settled.state, settled.outcome, settled.collected_amount) == \
        (PaymentState.CAPTURED, "fallback_charge", 1500)


async def test_charge_refunded_event_adds_outside_refunds(
        billing: Billing, client: TestClient[web.Request, web.Application]) -> None:
    await add_driver(billing)
    hold = await billing.place_hold("rf", "driver-1", 3000, "JPY")
    await billing.settle("rf", 2000)
    charge = {"id": "ch_1", "object": "charge", "payment_intent": hold.payment_intent_id,
              "amount": 3000, "amount_captured": 2000, "amount_refunded": 300,
              "refunds": {"object": "list", "data": [
                  {"id": "re_dashboard_1", "object": "refund", "amount": 300,
                   "status": "succeeded"}]}}
    body = event("evt_refunded_1", "charge.refunded", charge)
    status, answer = await post(client, body, sign(body))
    assert (status, answer["result"]) == (200, "applied")
    refunds = await billing.refunds("rf")
    assert [(r.amount, r.stripe_refund_id, r.requested_by) for r in refunds] == \
        [(300, "re_dashboard_1", "stripe")]
    view = await billing.get_payment("rf")
    assert view is not None and view.refunded_amount == 300
    more = await billing.refund("rf")  # the rest of what was collected
    assert [r.amount for r in more] == [1700]


async def test_setup_intent_succeeded_sets_the_default_card(
        billing: Billing, client: TestClient[web.Request, web.Application],
        proxy: FaultProxy, stripe_api: StripeEdge, clock: FakeClock) -> None:
    info = await billing.create_setup_intent("driver-s", "s@example.com")
    si = {"id": info.setup_intent_id, "object": "setup_intent", "status": "succeeded",
          "customer": info.customer_id, "payment_method": "pm_card_visa"}
    body = event("evt_setup_1", "setup_intent.succeeded", si)
    status, answer = await post(client, body, sign(body))
    assert (status, answer["result"]) == (200, "applied")
    customer = await billing.get_customer("driver-s")
    assert customer is not None and customer.default_payment_method == "pm_card_visa"
    await billing.run_pending_once()
    sent = [r for r in proxy.writes()
            if r.idempotency_key == "customer:driver-s:default:pm_card_visa"]
    assert len(sent) == 1 and sent[0].status == 200


async def test_processing_error_keeps_the_raw_event(
        billing: Billing, client: TestClient[web.Request, web.Application],
        db: Database) -> None:
    await add_driver(billing)
    hold = await billing.place_hold("pe", "driver-1", 3000, "JPY")
    broken = {"id": hold.payment_intent_id, "object": "payment_intent", "status": "succeeded",
              "latest_charge": {"captured": True, "status": "succeeded", "amount": "three"}}
    body = event("evt_broken_1", "payment_intent.succeeded", broken)
    status, answer = await post(client, body, sign(body))
    assert (status, answer["error"]["code"]) == (500, "processing_failed")
    rows = await stored_events(db)
    assert [(r.id, r.status, r.raw) for r in rows] == [("evt_broken_1", "error", body.decode())]
    assert rows[0].error and "ValueError" in rows[0].error
    view = await billing.get_payment("pe")
    assert view is not None and view.state is PaymentState.AUTHORISED


async def test_unhandled_event_types_are_stored_and_ignored(
        client: TestClient[web.Request, web.Application], db: Database) -> None:
    body = event("evt_customer_1", "customer.created", {"id": "cus_1", "object": "customer"})
    status, answer = await post(client, body, sign(body))
    assert (status, answer["status"], answer["result"]) == (200, "processed", "ignored")

    async def count(s: AsyncSession) -> int:
        return int((await s.execute(select(func.count()).select_from(WebhookEvent))).scalar_one())
    assert await db.read(count) == 1


async def test_localstripe_delivery_reconciles_a_lost_capture_answer(
        billing: Billing, emulator: StripeEmulator, proxy: FaultProxy, db: Database) -> None:
    """localstripe signs and POSTs payment_intent.succeeded to our route on a loopback server;
    the capture whose answer was lost (timeout) is closed by it, and not sent again."""
    app = web.Application()
    app.router.add_post(STRIPE_WEBHOOK_PATH, make_stripe_webhook_handler(
        billing.webhook_processor()))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        await add_driver(billing)
        await emulator.register_webhook(f"http://127.0.0.1:{port}{STRIPE_WEBHOOK_PATH}",
                                        WEBHOOK_SECRET, events=["payment_intent.succeeded"])
        await billing.place_hold("lw", "driver-1", 3000, "JPY")
        proxy.delay("POST", r"/v1/payment_intents/pi_\w+/capture", seconds=1.5)
        view = await billing.settle("lw", 1234)
        assert view.state is PaymentState.CAPTURING
        view2 = view
        for _ in range(60):  # localstripe waits 1 s before delivering
            found = await billing.get_payment("lw")
            assert found is not None
            view2 = found
            if view2.state is PaymentState.CAPTURED:
                break
            await asyncio.sleep(0.1)
        assert (view2.state, view2.captured_amount) == (PaymentState.CAPTURED, 1234)
        capture = next(o for o in await billing.operations("lw")
                       if o.kind is OperationKind.CAPTURE)
        assert capture.status is OperationStatus.DONE and capture.result is not None
        assert capture.result.get("via") == "webhook"
        assert await billing.run_pending_once() == 0
        assert proxy.count("POST", r"/v1/payment_intents/pi_\w+/capture") == 1
        rows = await stored_events(db)
        assert [(r.type, r.status, r.result) for r in rows] == \
            [("payment_intent.succeeded", "processed", "applied")]
    finally:
        await runner.cleanup()
