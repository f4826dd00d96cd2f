"""The acceptance flows against Stripe itself, in test mode. Run only when STRIPE_API_KEY is a
test key (``sk_test_...``); skipped otherwise (and here: no network)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from billing.models import PaymentState
from billing.service import Billing, HoldOutcome, RetryPolicy
from billing.stripe_edge import StripeEdge
from tests.billing.conftest import FakeClock, make_db

KEY = os.environ.get("STRIPE_API_KEY", "")
pytestmark = pytest.mark.skipif(not KEY.startswith("sk_test_"),
                                reason="needs STRIPE_API_KEY=sk_test_... (Stripe test mode)")


@pytest.fixture
async def live(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[Billing, StripeEdge]]:
    db = await make_db(tmp_path / "real.db")
    edge = StripeEdge(KEY, timeout=20, max_network_retries=2)
    # a fresh key prefix per run: Stripe remembers idempotency keys for 24 hours
    b = Billing(db, edge, clock=clock, retry=RetryPolicy(initial_delay=1),
                idempotency_prefix=f"csms-test-{uuid.uuid4().hex[:12]}:")
    try:
        yield b, edge
    finally:
        await b.close()
        await edge.close()
        await db.close()


async def test_real_hold_capture_topup_cancel_decline_refund(
        live: tuple[Billing, StripeEdge]) -> None:
    b, edge = live
    await b.ensure_customer("real-driver", "real-driver@example.com")
    await b.attach_card("real-driver", "pm_card_visa")

    hold = await b.place_hold("real-1", "real-driver", 3000, "JPY")
    assert hold.outcome is HoldOutcome.AUTHORISED
    view = await b.settle("real-1", 1234)
    assert (view.state, view.collected_amount) == (PaymentState.CAPTURED, 1234)
    assert hold.payment_intent_id is not None
    pi = await edge.retrieve_payment_intent(hold.payment_intent_id)
    assert pi["amount_received"] == 1234

    await b.place_hold("real-2", "real-driver", 3000, "JPY")
    assert (await b.settle("real-2", 30)).state is PaymentState.CANCELED

    await b.place_hold("real-3", "real-driver", 3000, "JPY")
    topped = await b.settle("real-3", 4000)
    assert (topped.captured_amount, topped.extra_collected) == (3000, 1000)
    refunds = await b.refund("real-3", 3500)
    assert sum(r.amount for r in refunds) == 3500

    await b.ensure_customer("real-decline", "real-decline@example.com")
    await b.attach_card("real-decline", "pm_card_chargeCustomerFail")
    declined = await b.place_hold("real-4", "real-decline", 3000, "JPY")
    assert declined.outcome is HoldOutcome.DECLINED
    assert declined.code == "card_declined" and declined.decline_code
