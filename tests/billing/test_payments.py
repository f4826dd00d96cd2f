"""Holds, captures, cancels, top-ups, declines and refunds against localstripe (through the
recording proxy, without faults)."""

from __future__ import annotations

import re

import aiohttp
import pytest

from billing.emulator import StripeEmulator
from billing.errors import CardDeclined, NoPaymentMethod, PaymentStateError
from billing.models import OperationKind, OperationStatus, PaymentState
from billing.payments import BelowMinimum, OverHold, PaymentView, SettlePolicy
from billing.service import Billing, HoldOutcome
from billing.stripe_edge import StripeEdge
from csms.db import Database
from tests.billing.conftest import (
    API_KEY,
    RETRY,
    FakeClock,
    add_driver,
    collected,
    create_card,
    emulator_list,
)
from tests.billing.proxy import FaultProxy


async def test_one_customer_per_driver(billing: Billing, proxy: FaultProxy,
                                       emulator: StripeEmulator) -> None:
    first = await billing.ensure_customer("driver-1", "d1@example.com")
    again = await billing.ensure_customer("driver-1", "d1@example.com")
    assert first == again
    customers = await emulator_list(emulator, "customers")
    assert [c["id"] for c in customers] == [first]
    assert customers[0]["email"] == "d1@example.com"
    assert customers[0]["metadata"] == {"driver_id": "driver-1"}
    assert proxy.count("POST", "/v1/customers") == 1


async def test_setup_intent_and_default_card(billing: Billing, stripe_api: StripeEdge) -> None:
    info = await billing.create_setup_intent("driver-2", "d2@example.com")
    assert info.client_secret.startswith(info.setup_intent_id + "_secret_")
    second = await billing.create_setup_intent("driver-2")
    assert second.setup_intent_id != info.setup_intent_id
    assert second.customer_id == info.customer_id

    card = await billing.attach_card("driver-2", "pm_card_visa")
    assert card.last4 == "4242"
    customer = await billing.get_customer("driver-2")
    assert customer is not None and customer.default_payment_method == card.payment_method_id
    async with aiohttp.ClientSession() as http, http.get(
            f"{stripe_api.api_base}/v1/customers/{info.customer_id}",
            headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        body = await resp.json()
    assert body["invoice_settings"]["default_payment_method"] == card.payment_method_id


async def test_hold_then_capture_less(billing: Billing, stripe_api: StripeEdge) -> None:
    """Acceptance: hold ¥3,000 then capture ¥1,234 -> ¥1,234 collected."""
    await add_driver(billing)
    hold = await billing.place_hold("s-1", "driver-1", 3000, "JPY")
    assert hold.outcome is HoldOutcome.AUTHORISED
    assert hold.payment_intent_id
    pi = await stripe_api.retrieve_payment_intent(hold.payment_intent_id)
    assert (pi["status"], pi["amount"], pi["currency"]) == ("requires_capture", 3000, "jpy")
    assert pi["capture_method"] == "manual"
    assert pi["metadata"]["session_id"] == "s-1"

    view = await billing.settle("s-1", 1234)
    assert view.state is PaymentState.CAPTURED
    assert (view.captured_amount, view.collected_amount, view.uncollected_amount) == (1234, 1234, 0)
    pi = await stripe_api.retrieve_payment_intent(hold.payment_intent_id)
    assert pi["status"] == "succeeded"
    assert collected(pi) == 1234

    again = await billing.settle("s-1", 1234)  # a repeated stop changes nothing
    assert again.state is PaymentState.CAPTURED
    with pytest.raises(PaymentStateError):
        await billing.settle("s-1", 999)
    ops = await billing.operations("s-1")
    assert [(o.kind, o.status) for o in ops] == [
        (OperationKind.HOLD, OperationStatus.DONE), (OperationKind.CAPTURE, OperationStatus.DONE)]


async def test_cost_below_minimum_cancels_hold(billing: Billing, stripe_api: StripeEdge) -> None:
    """Acceptance: cost ¥30 (< ¥50 minimum) -> the hold is canceled, nothing collected."""
    await add_driver(billing)
    hold = await billing.place_hold("s-2", "driver-1", 3000, "JPY")
    view = await billing.settle("s-2", 30)
    assert view.state is PaymentState.CANCELED
    assert view.outcome == "waived_below_minimum"
    assert (view.collected_amount, view.uncollected_amount) == (0, 30)
    assert hold.payment_intent_id is not None
    pi = await stripe_api.retrieve_payment_intent(hold.payment_intent_id)
    assert pi["status"] == "canceled"
    assert collected(pi) == 0


async def test_zero_cost_cancels_hold(billing: Billing, stripe_api: StripeEdge) -> None:
    await add_driver(billing)
    hold = await billing.place_hold("s-0", "driver-1", 3000, "JPY")
    view = await billing.settle("s-0", 0)
    assert (view.state, view.outcome) == (PaymentState.CANCELED, "zero_cost")
    assert hold.payment_intent_id is not None
    assert (await stripe_api.retrieve_payment_intent(hold.payment_intent_id))["status"] == \
        "canceled"


async def test_cost_above_hold_tops_up(billing: Billing, stripe_api: StripeEdge,
                                       emulator: StripeEmulator) -> None:
    """Acceptance: cost ¥4,000 on a ¥3,000 hold -> ¥3,000 captured + a ¥1,000 second charge."""
    await add_driver(billing)
    hold = await billing.place_hold("s-3", "driver-1", 3000, "JPY")
    view = await billing.settle("s-3", 4000)
    assert view.state is PaymentState.CAPTURED
    assert view.outcome == "topped_up"
    assert (view.captured_amount, view.extra_collected, view.collected_amount) == (3000, 1000, 4000)
    assert hold.payment_intent_id and view.extra_intent_id
    first = await stripe_api.retrieve_payment_intent(hold.payment_intent_id)
    second = await stripe_api.retrieve_payment_intent(view.extra_intent_id)
    assert collected(first) == 3000
    assert (second["amount"], second["capture_method"], collected(second)) == \
        (1000, "automatic", 1000)
    assert second["metadata"] == {"session_id": "s-3", "driver_id": "driver-1", "step": "topup"}
    intents = await emulator_list(emulator, "payment_intents")
    assert len(intents) == 2


async def test_capture_hold_only_policy(db: Database, edge: StripeEdge, clock: FakeClock,
                                        stripe_api: StripeEdge) -> None:
    b = Billing(db, edge, clock=clock, retry=RETRY,
                policy=SettlePolicy(over_hold=OverHold.CAPTURE_HOLD_ONLY))
    await add_driver(b)
    hold = await b.place_hold("s-4", "driver-1", 3000, "JPY")
    view = await b.settle("s-4", 4000)
    assert (view.state, view.outcome) == (PaymentState.CAPTURED, "capture_hold_only")
    assert (view.collected_amount, view.uncollected_amount, view.extra_intent_id) == \
        (3000, 1000, None)
    assert hold.payment_intent_id is not None
    assert collected(await stripe_api.retrieve_payment_intent(hold.payment_intent_id)) == 3000


async def test_round_up_to_minimum_policy(db: Database, edge: StripeEdge, clock: FakeClock,
                                          stripe_api: StripeEdge) -> None:
    """Field case Q19: a €0.04 session; with ROUND_UP the minimum €0.50 is collected."""
    b = Billing(db, edge, clock=clock, retry=RETRY,
                policy=SettlePolicy(below_minimum=BelowMinimum.ROUND_UP))
    await add_driver(b)
    hold = await b.place_hold("s-5", "driver-1", 2000, "EUR")
    view = await b.settle("s-5", 4)
    assert (view.state, view.outcome, view.collected_amount) == \
        (PaymentState.CAPTURED, "rounded_up_to_minimum", 50)
    assert hold.payment_intent_id is not None
    assert collected(await stripe_api.retrieve_payment_intent(hold.payment_intent_id)) == 50


async def test_topup_remainder_below_minimum_is_written_off(billing: Billing) -> None:
    await add_driver(billing)
    await billing.place_hold("s-6", "driver-1", 3000, "JPY")
    view = await billing.settle("s-6", 3020)
    assert (view.outcome, view.collected_amount, view.uncollected_amount) == \
        ("remainder_below_minimum", 3000, 20)


async def test_declined_card(billing: Billing) -> None:
    """Acceptance: pm_card_chargeCustomerFail attaches, then the hold is declined."""
    await add_driver(billing, "driver-x", "pm_card_chargeCustomerFail")
    hold = await billing.place_hold("s-7", "driver-x", 3000, "JPY")
    assert hold.outcome is HoldOutcome.DECLINED
    assert hold.code == "card_declined"
    # localstripe sends no decline_code; Stripe does (see test_stripe_edge: decline_code parsing)
    assert hold.message == "Your card was declined."
    assert hold.payment_intent_id is not None  # found through the declined charge
    view = await billing.get_payment("s-7")
    assert view is not None and view.state is PaymentState.FAILED
    after = await billing.settle("s-7", 1500)  # the session logic should not have started it
    assert (after.state, after.collected_amount, after.uncollected_amount) == \
        (PaymentState.FAILED, 0, 1500)


async def test_card_declined_at_attach(billing: Billing) -> None:
    await billing.ensure_customer("driver-y", "y@example.com")
    with pytest.raises(CardDeclined) as err:
        await billing.attach_card("driver-y", "pm_card_visa_chargeDeclined")
    assert err.value.code == "card_declined"


async def test_no_card_no_hold(billing: Billing) -> None:
    with pytest.raises(NoPaymentMethod):
        await billing.place_hold("s-8", "nobody", 3000, "JPY")
    await billing.ensure_customer("driver-z", "z@example.com")
    with pytest.raises(NoPaymentMethod):
        await billing.place_hold("s-8", "driver-z", 3000, "JPY")
    await add_driver(billing)
    with pytest.raises(PaymentStateError):
        await billing.place_hold("s-8", "driver-1", 49, "JPY")


async def test_three_d_secure_requires_action(billing: Billing, stripe_api: StripeEdge,
                                              emulator: StripeEmulator) -> None:
    customer = await billing.ensure_customer("driver-3ds", "3ds@example.com")
    pm = await create_card(emulator, "4000002500003155")
    await billing.attach_card("driver-3ds", pm)
    hold = await billing.place_hold("s-9", "driver-3ds", 3000, "JPY")
    assert hold.outcome is HoldOutcome.REQUIRES_ACTION
    assert hold.client_secret and hold.client_secret.startswith(str(hold.payment_intent_id))
    view = await billing.cancel("s-9")
    assert view.state is PaymentState.CANCELED
    assert hold.payment_intent_id is not None
    assert (await stripe_api.retrieve_payment_intent(hold.payment_intent_id))["status"] == \
        "canceled"
    assert customer


async def test_cancel_authorised_hold(billing: Billing, stripe_api: StripeEdge) -> None:
    await add_driver(billing)
    hold = await billing.place_hold("s-10", "driver-1", 3000, "JPY")
    view = await billing.cancel("s-10")
    assert (view.state, view.outcome) == (PaymentState.CANCELED, "canceled")
    assert hold.payment_intent_id is not None
    assert (await stripe_api.retrieve_payment_intent(hold.payment_intent_id))["status"] == \
        "canceled"
    again = await billing.cancel("s-10")
    assert again.state is PaymentState.CANCELED
    assert [o.kind for o in await billing.operations("s-10")] == [
        OperationKind.HOLD, OperationKind.CANCEL]


async def test_expired_hold_falls_back_to_a_fresh_charge(
        billing: Billing, stripe_api: StripeEdge, emulator: StripeEmulator) -> None:
    """A hold canceled by Stripe (expired after ~7 days) before capture: the cost is charged
    afresh off-session, once; the planned top-up is superseded."""
    await add_driver(billing)
    hold = await billing.place_hold("s-11", "driver-1", 3000, "JPY")
    assert hold.payment_intent_id is not None
    await stripe_api.cancel_payment_intent(hold.payment_intent_id,
                                           idempotency_key="test:expire")  # Stripe's expiry
    view = await billing.settle("s-11", 4000)
    assert (view.state, view.outcome) == (PaymentState.CAPTURED, "fallback_charge")
    assert (view.captured_amount, view.extra_kind, view.extra_collected) == (0, "charge", 4000)
    assert view.extra_intent_id is not None
    fresh = await stripe_api.retrieve_payment_intent(view.extra_intent_id)
    assert (fresh["amount"], collected(fresh), fresh["metadata"]["step"]) == (4000, 4000, "charge")
    ops = {o.kind: o.status for o in await billing.operations("s-11")}
    assert ops == {OperationKind.HOLD: OperationStatus.DONE,
                   OperationKind.CAPTURE: OperationStatus.SUPERSEDED,
                   OperationKind.TOPUP: OperationStatus.SUPERSEDED,
                   OperationKind.CHARGE: OperationStatus.DONE}
    assert collected(await stripe_api.retrieve_payment_intent(hold.payment_intent_id)) == 0


async def test_refunds_partial_then_full(billing: Billing, stripe_api: StripeEdge) -> None:
    await add_driver(billing)
    await billing.place_hold("s-12", "driver-1", 3000, "JPY")
    await billing.settle("s-12", 4000)
    with pytest.raises(PaymentStateError):
        await billing.refund("s-12", 4001)
    part = await billing.refund("s-12", 500, reason="slow charger", requested_by="op-1")
    assert [(r.amount, r.status) for r in part] == [(500, "succeeded")]
    assert part[0].stripe_refund_id and part[0].requested_by == "op-1"
    rest = await billing.refund("s-12")  # everything left: 2,500 of the hold + 1,000 top-up
    assert [(r.amount, r.status) for r in rest] == [(2500, "succeeded"), (1000, "succeeded")]
    view = await billing.get_payment("s-12")
    assert view is not None and view.refunded_amount == 4000
    assert view.state is PaymentState.CAPTURED
    with pytest.raises(PaymentStateError):
        await billing.refund("s-12", 1)
    keys = [o.idempotency_key for o in await billing.operations("s-12")
            if o.kind is OperationKind.REFUND]
    assert keys == [f"refund:{r.id}" for r in part + rest]


async def test_refund_needs_captured_payment(billing: Billing) -> None:
    await add_driver(billing)
    await billing.place_hold("s-13", "driver-1", 3000, "JPY")
    with pytest.raises(PaymentStateError):
        await billing.refund("s-13", 100)


async def test_settle_while_hold_is_pending_is_carried_out_later(
        billing: Billing, proxy: FaultProxy, clock: FakeClock) -> None:
    await add_driver(billing)
    await proxy.stop()
    hold = await billing.place_hold(42, "driver-1", 3000, "JPY")  # int session ids work
    assert hold.outcome is HoldOutcome.UNAVAILABLE
    assert hold.message and "stripe unavailable" in hold.message
    view = await billing.settle(42, 1500)
    assert view.state is PaymentState.AUTHORISING and view.cost == 1500
    await proxy.start()
    clock.advance(1)
    await billing.run_pending_once()
    view2 = await billing.get_payment(42)
    assert view2 is not None
    assert (view2.state, view2.collected_amount) == (PaymentState.CAPTURED, 1500)


async def test_idempotency_keys_on_every_write(billing: Billing, proxy: FaultProxy,
                                               emulator: StripeEmulator) -> None:
    """Every write to Stripe carries the key built from our ids and the step."""
    await billing.create_setup_intent("driver-1", "d1@example.com")
    await billing.attach_card("driver-1", "pm_card_visa")
    await billing.place_hold("a", "driver-1", 3000, "JPY")
    await billing.settle("a", 4000)
    await billing.place_hold("b", "driver-1", 3000, "JPY")
    await billing.settle("b", 0)
    await billing.place_hold("c", "driver-1", 3000, "JPY")
    await billing.cancel("c")
    refunds = await billing.refund("a", 3500)
    writes = proxy.writes()
    assert writes and all(w.idempotency_key for w in writes)
    seen = [(w.path, w.idempotency_key) for w in writes]
    expected = [
        (r"/v1/customers", r"customer:create:driver-1"),
        (r"/v1/setup_intents", r"customer:driver-1:setup:1"),
        (r"/v1/payment_methods/pm_card_visa/attach", r"customer:driver-1:attach:pm_card_visa"),
        (r"/v1/customers/cus_\w+", r"customer:driver-1:default:pm_card_visa"),
        (r"/v1/payment_intents", r"session:a:hold"),
        (r"/v1/payment_intents/pi_\w+/capture", r"session:a:capture"),
        (r"/v1/payment_intents", r"session:a:topup"),
        (r"/v1/payment_intents", r"session:b:hold"),
        (r"/v1/payment_intents/pi_\w+/cancel", r"session:b:cancel"),
        (r"/v1/payment_intents", r"session:c:hold"),
        (r"/v1/payment_intents/pi_\w+/cancel", r"session:c:cancel"),
        (r"/v1/refunds", rf"refund:{refunds[0].id}"),
        (r"/v1/refunds", rf"refund:{refunds[1].id}"),
    ]
    assert len(seen) == len(expected), seen
    for (path, key), (path_re, key_re) in zip(seen, expected, strict=True):
        assert re.fullmatch(path_re, path), (path, path_re)
        assert re.fullmatch(key_re, str(key)), (key, key_re)


async def test_on_change_reports_every_state(db: Database, edge: StripeEdge,
                                             clock: FakeClock) -> None:
    seen: list[tuple[str, PaymentState]] = []

    async def on_change(view: PaymentView) -> None:
        seen.append((view.session_id, view.state))

    b = Billing(db, edge, clock=clock, retry=RETRY, on_change=on_change)
    await add_driver(b)
    await b.place_hold("oc", "driver-1", 3000, "JPY")
    await b.settle("oc", 4000)
    assert seen == [("oc", PaymentState.AUTHORISED), ("oc", PaymentState.CAPTURING),
                    ("oc", PaymentState.CAPTURED)]
