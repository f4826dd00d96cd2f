"""Stripe answering 500, timing out after acting, or refusing connections, during a hold and
during a capture: the outbox retries from the persisted schedule and the end state is exactly
one capture of the right amount."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from billing.emulator import StripeEmulator
from billing.models import OperationKind, OperationStatus, PaymentState
from billing.payments import OperationView
from billing.service import Billing, HoldOutcome, RetryPolicy
from billing.stripe_edge import StripeEdge
from csms.db import Database
from tests.billing.conftest import (
    RETRY,
    FakeClock,
    add_driver,
    collected,
    emulator_list,
    make_db,
    make_edge,
)
from tests.billing.proxy import FaultProxy

CREATE = r"/v1/payment_intents"
CAPTURE = r"/v1/payment_intents/pi_\w+/capture"


async def _one_capture(billing: Billing, proxy: FaultProxy, stripe_api: StripeEdge,
                       emulator: StripeEmulator, session: str, amount: int) -> None:
    """The session is captured for ``amount``, by exactly one capture that reached Stripe, on
    exactly one PaymentIntent."""
    view = await billing.get_payment(session)
    assert view is not None
    assert (view.state, view.captured_amount, view.collected_amount) == \
        (PaymentState.CAPTURED, amount, amount)
    assert proxy.count("POST", CAPTURE) == 1
    intents = [pi for pi in await emulator_list(emulator, "payment_intents")
               if pi["metadata"].get("session_id") == session]
    assert len(intents) == 1
    assert intents[0]["id"] == view.hold_intent_id
    assert collected(await stripe_api.retrieve_payment_intent(intents[0]["id"])) == amount
    captures = [o for o in await billing.operations(session) if o.kind is OperationKind.CAPTURE]
    assert [(o.status, o.idempotency_key) for o in captures] == \
        [(OperationStatus.DONE, f"session:{session}:capture")]


async def _hold_op(billing: Billing, session: str) -> OperationView:
    ops = await billing.operations(session)
    return next(o for o in ops if o.kind is OperationKind.HOLD)


@pytest.mark.parametrize("fault", ["status_500", "timeout", "refused"])
async def test_hold_fault_then_retry(fault: str, billing: Billing, proxy: FaultProxy,
                                     clock: FakeClock, stripe_api: StripeEdge,
                                     emulator: StripeEmulator) -> None:
    await add_driver(billing)
    if fault == "status_500":
        proxy.fail("POST", CREATE, status=500)
    elif fault == "timeout":
        proxy.delay("POST", CREATE, seconds=1.5)  # Stripe creates it; we never hear back
    else:
        await proxy.stop()

    hold = await billing.place_hold("h", "driver-1", 3000, "JPY")
    assert hold.outcome is HoldOutcome.UNAVAILABLE
    op = await _hold_op(billing, "h")
    assert op.status is OperationStatus.PENDING
    assert op.attempts == 1
    assert op.next_attempt_at == clock.now + timedelta(seconds=1)

    if fault == "refused":
        await proxy.start()
    assert await billing.run_pending_once() == 0  # not due yet: the schedule is persisted
    clock.advance(1)
    assert await billing.run_pending_once() == 1
    result = await billing.hold_result("h")
    assert result.outcome is HoldOutcome.AUTHORISED
    if fault == "timeout":  # the retry got Stripe's first answer back (same key)
        replays = [r for r in proxy.requests if r.replayed]
        assert [r.idempotency_key for r in replays] == ["session:h:hold"]

    await billing.settle("h", 1234)
    await _one_capture(billing, proxy, stripe_api, emulator, "h", 1234)


@pytest.mark.parametrize("fault", ["status_500", "timeout", "refused"])
async def test_capture_fault_then_retry(fault: str, billing: Billing, proxy: FaultProxy,
                                        clock: FakeClock, stripe_api: StripeEdge,
                                        emulator: StripeEmulator) -> None:
    await add_driver(billing)
    hold = await billing.place_hold("c", "driver-1", 3000, "JPY")
    assert hold.outcome is HoldOutcome.AUTHORISED
    if fault == "status_500":
        proxy.fail("POST", CAPTURE, status=500, times=2)
    elif fault == "timeout":
        proxy.delay("POST", CAPTURE, seconds=1.5)  # captured at Stripe; the answer is lost
    else:
        await proxy.stop()

    view = await billing.settle("c", 1234)
    assert view.state is PaymentState.CAPTURING
    capture = next(o for o in await billing.operations("c") if o.kind is OperationKind.CAPTURE)
    assert capture.status is OperationStatus.PENDING and capture.last_error

    if fault == "refused":
        await proxy.start()
    clock.advance(1)
    await billing.run_pending_once()
    if fault == "status_500":  # second 500: backoff doubles
        capture = next(o for o in await billing.operations("c")
                       if o.kind is OperationKind.CAPTURE)
        assert capture.attempts == 2
        assert capture.next_attempt_at == clock.now + timedelta(seconds=2)
        clock.advance(2)
        await billing.run_pending_once()
    await billing.settle("c", 1234)  # a repeated stop while retrying changes nothing
    await _one_capture(billing, proxy, stripe_api, emulator, "c", 1234)


async def test_topup_fault_then_retry(billing: Billing, proxy: FaultProxy, clock: FakeClock,
                                      emulator: StripeEmulator) -> None:
    await add_driver(billing)
    await billing.place_hold("t", "driver-1", 3000, "JPY")
    proxy.delay("POST", CREATE, seconds=1.5)  # the top-up is charged; the answer is lost
    view = await billing.settle("t", 4000)
    assert (view.state, view.captured_amount) == (PaymentState.CAPTURING, 3000)
    clock.advance(1)
    await billing.run_pending_once()
    view2 = await billing.get_payment("t")
    assert view2 is not None
    assert (view2.state, view2.collected_amount) == (PaymentState.CAPTURED, 4000)
    topups = [pi for pi in await emulator_list(emulator, "payment_intents")
              if pi["metadata"].get("step") == "topup"]
    assert len(topups) == 1 and topups[0]["id"] == view2.extra_intent_id


async def test_backoff_is_exponential_and_capped(db: Database, edge: StripeEdge,
                                                 clock: FakeClock, proxy: FaultProxy) -> None:
    b = Billing(db, edge, clock=clock,
                retry=RetryPolicy(initial_delay=1, factor=2, max_delay=5, lease=30))
    await add_driver(b)
    await proxy.stop()
    await b.place_hold("b", "driver-1", 3000, "JPY")
    delays = []
    for _ in range(5):
        op = await _hold_op(b, "b")
        delays.append((op.next_attempt_at - clock.now).total_seconds())
        clock.now = op.next_attempt_at
        assert await b.run_pending_once() == 1
    assert delays == [1, 2, 4, 5, 5]


async def test_gives_up_after_max_attempts(db: Database, edge: StripeEdge, clock: FakeClock,
                                           proxy: FaultProxy) -> None:
    b = Billing(db, edge, clock=clock,
                retry=RetryPolicy(initial_delay=1, max_attempts=2, lease=30))
    await add_driver(b)
    await proxy.stop()
    assert (await b.place_hold("g", "driver-1", 3000, "JPY")).outcome is HoldOutcome.UNAVAILABLE
    clock.advance(1)
    await b.run_pending_once()
    result = await b.hold_result("g")
    assert result.outcome is HoldOutcome.FAILED
    op = await _hold_op(b, "g")
    assert op.status is OperationStatus.FAILED
    assert op.last_error is not None and op.last_error.startswith("gave up")


async def test_restart_resumes_pending_operations(tmp_path: Path, proxy: FaultProxy,
                                                  clock: FakeClock, stripe_api: StripeEdge,
                                                  emulator: StripeEmulator) -> None:
    """A process stops with a hold and a capture unsent; the next one sends them from the
    persisted outbox (start() runs the worker)."""
    path = tmp_path / "restart.db"
    db1 = await make_db(path)
    edge1 = make_edge(proxy.url)
    b1 = Billing(db1, edge1, clock=clock, retry=RETRY)
    await add_driver(b1)
    await proxy.stop()
    assert (await b1.place_hold("r", "driver-1", 3000, "JPY")).outcome is \
        HoldOutcome.UNAVAILABLE
    await b1.settle("r", 2500)
    await b1.close()
    await edge1.close()
    await db1.close()

    await proxy.start()
    clock.advance(1)
    db2 = Database(f"sqlite+aiosqlite:///{path}")
    await db2.start()
    edge2 = make_edge(proxy.url)
    b2 = Billing(db2, edge2, clock=clock, retry=RETRY, poll_interval=0.05)
    try:
        await b2.start()
        for _ in range(100):
            view = await b2.get_payment("r")
            if view is not None and view.state is PaymentState.CAPTURED:
                break
            await asyncio.sleep(0.05)
        await _one_capture(b2, proxy, stripe_api, emulator, "r", 2500)
    finally:
        await b2.close()
        await edge2.close()
        await db2.close()


async def test_a_leased_operation_is_not_sent_twice(tmp_path: Path, billing: Billing,
                                                    db: Database, proxy: FaultProxy,
                                                    clock: FakeClock, stripe_api: StripeEdge,
                                                    emulator: StripeEmulator) -> None:
    """While one worker waits for Stripe, another worker (another process on the same
    database) leaves the operation alone."""
    await add_driver(billing)
    await billing.place_hold("l", "driver-1", 3000, "JPY")
    proxy.delay("POST", CAPTURE, seconds=0.5)
    other_edge = make_edge(proxy.url)
    other = Billing(db, other_edge, clock=clock, retry=RETRY)
    try:
        settling = asyncio.create_task(billing.settle("l", 1234))
        await asyncio.sleep(0.2)  # the capture is in flight
        assert await other.run_pending_once() == 0
        await settling
        assert await other.run_pending_once() == 0
    finally:
        await other_edge.close()
    await _one_capture(billing, proxy, stripe_api, emulator, "l", 1234)


async def test_concurrent_settles_capture_once(billing: Billing, proxy: FaultProxy,
                                               stripe_api: StripeEdge,
                                               emulator: StripeEmulator) -> None:
    await add_driver(billing)
    await billing.place_hold("x", "driver-1", 3000, "JPY")
    views = await asyncio.gather(billing.settle("x", 1234), billing.settle("x", 1234),
                                 billing.run_pending_once(), billing.settle("x", 1234))
    assert views[0].state is PaymentState.CAPTURED  # type: ignore[union-attr]
    await _one_capture(billing, proxy, stripe_api, emulator, "x", 1234)
