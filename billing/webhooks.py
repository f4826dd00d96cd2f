"""Stripe webhooks: verify, store the raw event, then reconcile payment records, once per id.

Flow of :meth:`WebhookProcessor.process` (store-then-process, as dj-stripe does):

1. ``stripe.Webhook.construct_event`` with the endpoint secret checks the ``Stripe-Signature``
   header (https://docs.stripe.com/webhooks#verify-events); a bad one raises
   :class:`billing.errors.WebhookSignatureError` (the route answers 400) and stores nothing.
2. Transaction 1 stores the raw body under the event id (``billing_webhook_event``) unless it is
   there already. A row already ``processed`` ends here: "already_processed", nothing changes.
3. Transaction 2 re-reads the row (FOR UPDATE), reconciles the payment record and marks the row
   processed - atomically, so an event id changes state at most once, even when two deliveries
   race. If reconciling raises, transaction 2 is rolled back, the row is marked ``error`` (the
   raw event stays) and the error propagates (the route answers 500; Stripe delivers again).

Events reconciled (Stripe "Types of events", https://docs.stripe.com/api/events/types):
``payment_intent.amount_capturable_updated`` (hold authorised, e.g. after 3-D Secure),
``payment_intent.succeeded`` (captured / charged), ``payment_intent.payment_failed``,
``payment_intent.canceled`` (released or expired hold), ``charge.refunded``,
``setup_intent.succeeded`` (new card -> default payment method). Others are stored and marked
processed with result "ignored". An outbox operation that the event shows as done is closed,
so the worker does not send it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import (
    BillingCustomer,
    OperationKind,
    OperationStatus,
    Payment,
    PaymentState,
    Refund,
    WebhookEvent,
    utcnow,
)
from billing.payments import (
    PaymentView,
    SettlePolicy,
    UnitOfWork,
    after_hold_resolved,
    collected_from,
    enqueue,
    finalize,
    finish,
    get_payment,
    payment_by_intent,
    record_hold_authorised,
    record_hold_failed,
    refunded_total,
    session_operations,
    transition,
)
from billing.stripe_edge import StripeEdge

__all__ = ["HANDLED_EVENTS", "WebhookProcessor", "WebhookResult"]

HANDLED_EVENTS = frozenset({
    "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled",
    "payment_intent.amount_capturable_updated", "charge.refunded", "setup_intent.succeeded"})


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What happened to one delivery.

    Attributes:
        event_id / type: the Stripe event.
        status: ``processed`` (first time) or ``already_processed`` (a replay; nothing changed).
        result: ``applied``, ``no_change``, ``ignored`` (type not handled), ``unknown_payment``,
            ``unknown_customer``.
    """

    event_id: str
    type: str
    status: str
    result: str | None


class WebhookProcessor:
    """Processes Stripe webhook deliveries for the billing records.

    Args:
        db: the unit of work.
        stripe: the edge holding the webhook secret (``construct_event``).
        clock: timezone-aware UTC now.
        idempotency_prefix: as :class:`billing.service.Billing` (for operations it enqueues).
        policy: settlement policies, used when a hold authorised by webhook has a cost waiting.
        after_commit: awaited with the payments changed by an event (after the commit), e.g.
            to wake the outbox worker; ``Billing.webhook_processor()`` wires it.
    """

    def __init__(self, db: UnitOfWork, stripe: StripeEdge, *,
                 clock: Callable[[], datetime] = utcnow, idempotency_prefix: str = "",
                 policy: SettlePolicy | None = None,
                 after_commit: Callable[[list[PaymentView]], Awaitable[None]] | None = None
                 ) -> None:
        self._db = db
        self._stripe = stripe
        self._clock = clock
        self._prefix = idempotency_prefix
        self._policy = policy or SettlePolicy()
        self._after_commit = after_commit

    async def process(self, payload: bytes, signature: str | None) -> WebhookResult:
        """Verify, store and reconcile one delivery.

        Args:
            payload: the raw request body, unchanged.
            signature: the ``Stripe-Signature`` header value.

        Raises:
            WebhookSignatureError: bad or missing signature (nothing stored).
            WebhookPayloadError: not a JSON Stripe event.
            Exception: reconciling failed; the raw event is kept with status ``error``.
        """
        event = self._stripe.construct_event(payload, signature)
        raw = payload.decode("utf-8")
        event_id, event_type = str(event["id"]), str(event["type"])

        async def store(s: AsyncSession) -> str:
            row = await s.get(WebhookEvent, event_id)
            if row is not None:
                return row.status
            created = event.get("api_version")
            s.add(WebhookEvent(id=event_id, type=event_type, livemode=bool(event.get("livemode")),
                               api_version=created if isinstance(created, str) else None,
                               raw=raw, status="received", received_at=self._clock()))
            return "received"

        if await self._db.write(store) == "processed":
            return await self._already(event_id, event_type)

        async def process(s: AsyncSession) -> tuple[str, str | None, list[PaymentView]]:
            row = await s.get(WebhookEvent, event_id, with_for_update=True)
            assert row is not None
            if row.status == "processed":
                return "already_processed", row.result, []
            now = self._clock()
            result, changed = await self._reconcile(s, event, now)
            row.status = "processed"
            row.result = result
            row.error = None
            row.attempts += 1
            row.processed_at = now
            await s.flush()
            return "processed", result, [PaymentView.of(p) for p in changed]

        try:
            status, result, changed = await self._db.write(process)
        except Exception as exc:
            message = repr(exc)[:2000]

            async def mark_error(s: AsyncSession) -> None:
                row = await s.get(WebhookEvent, event_id)
                if row is not None and row.status != "processed":
                    row.status = "error"
                    row.error = message
                    row.attempts += 1

            await self._db.write(mark_error)
            raise
        if result == "applied" and self._after_commit is not None:
            await self._after_commit(changed)
        return WebhookResult(event_id, event_type, status, result)

    async def _already(self, event_id: str, event_type: str) -> WebhookResult:
        async def fn(s: AsyncSession) -> str | None:
            row = await s.get(WebhookEvent, event_id)
            return None if row is None else row.result
        return WebhookResult(event_id, event_type, "already_processed", await self._db.read(fn))

    # ------------------------------------------------------------------ reconciliation

    async def _reconcile(self, s: AsyncSession, event: dict[str, Any],
                         now: datetime) -> tuple[str, list[Payment]]:
        event_type = event["type"]
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if event_type not in HANDLED_EVENTS or not isinstance(obj, dict):
            return "ignored", []
        if event_type == "setup_intent.succeeded":
            return await self._setup_intent_succeeded(s, obj, now), []
        if event_type == "charge.refunded":
            return await self._charge_refunded(s, obj, now)
        found = await self._payment_for_intent(s, obj)
        if found is None:
            return "unknown_payment", []
        p, role = found
        handler = {
            "payment_intent.amount_capturable_updated": self._capturable,
            "payment_intent.succeeded": self._succeeded,
            "payment_intent.payment_failed": self._failed,
            "payment_intent.canceled": self._canceled,
        }[event_type]
        changed = await handler(s, p, role, obj, now)
        if changed:
            p.updated_at = now
            await finalize(s, p, now)
            return "applied", [p]
        return "no_change", []

    async def _payment_for_intent(self, s: AsyncSession,
                                  pi: dict[str, Any]) -> tuple[Payment, str] | None:
        """The payment and role ("hold" or "extra") of a PaymentIntent, by id, else by the
        metadata we set (the event may arrive before our own call has returned)."""
        intent_id = pi.get("id")
        if isinstance(intent_id, str):
            p = await payment_by_intent(s, intent_id)
            if p is not None:
                return p, "hold" if p.hold_intent_id == intent_id else "extra"
        meta = pi.get("metadata") or {}
        sid, step = meta.get("session_id"), meta.get("step")
        if not isinstance(sid, str):
            return None
        p = await get_payment(s, sid, for_update=True)
        if p is None:
            return None
        if step == "hold" and p.hold_intent_id in (None, intent_id):
            p.hold_intent_id = intent_id
            return p, "hold"
        if step in ("topup", "charge") and p.extra_intent_id in (None, intent_id):
            p.extra_intent_id = intent_id
            return p, "extra"
        return None

    async def _close_pending(self, s: AsyncSession, p: Payment, kinds: set[OperationKind],
                             now: datetime, result: dict[str, Any]) -> bool:
        closed = False
        for op in await session_operations(s, p.session_id, OperationStatus.PENDING):
            if OperationKind(op.kind) in kinds:
                finish(op, OperationStatus.DONE, now, result={**result, "via": "webhook"})
                closed = True
        return closed

    async def _capturable(self, s: AsyncSession, p: Payment, role: str, pi: dict[str, Any],
                          now: datetime) -> bool:
        state = PaymentState(p.state)
        if role != "hold" or pi.get("status") != "requires_capture" or state not in (
                PaymentState.AUTHORISING, PaymentState.REQUIRES_ACTION):
            return False
        await self._close_pending(s, p, {OperationKind.HOLD}, now,
                                  {"payment_intent": pi.get("id"), "status": "requires_capture"})
        record_hold_authorised(p, pi, now)
        await after_hold_resolved(s, p, self._prefix, self._policy, now)
        return True

    async def _succeeded(self, s: AsyncSession, p: Payment, role: str, pi: dict[str, Any],
                         now: datetime) -> bool:
        got = collected_from(pi)
        if role == "hold":
            if p.hold_status == "succeeded" and p.captured_amount == got:
                return False
            p.hold_status = "succeeded"
            p.captured_amount = got
            await self._close_pending(s, p, {OperationKind.CAPTURE}, now,
                                      {"payment_intent": pi.get("id"), "captured": got})
            return True
        if p.extra_collected == got:
            return False
        p.extra_collected = got
        await self._close_pending(s, p, {OperationKind.TOPUP, OperationKind.CHARGE}, now,
                                  {"payment_intent": pi.get("id"), "collected": got})
        return True

    async def _failed(self, s: AsyncSession, p: Payment, role: str, pi: dict[str, Any],
                      now: datetime) -> bool:
        error = pi.get("last_payment_error") or {}
        state = PaymentState(p.state)
        if role == "hold":
            if state not in (PaymentState.AUTHORISING, PaymentState.REQUIRES_ACTION):
                return False
            await self._close_pending(s, p, {OperationKind.HOLD}, now,
                                      {"payment_intent": pi.get("id"), "declined": True})
            record_hold_failed(p, now, outcome="declined", code=error.get("code"),
                               decline_code=error.get("decline_code"),
                               message=error.get("message"), intent_id=pi.get("id"))
            return True
        amount = p.extra_amount or 0
        if not await self._close_pending(s, p, {OperationKind.TOPUP, OperationKind.CHARGE}, now,
                                         {"payment_intent": pi.get("id"), "declined": True}):
            return False
        p.uncollected_amount += amount
        p.outcome = f"{p.extra_kind}_declined"
        p.failure_code = error.get("code")
        p.decline_code = error.get("decline_code")
        p.failure_message = error.get("message")
        return True

    async def _canceled(self, s: AsyncSession, p: Payment, role: str, pi: dict[str, Any],
                        now: datetime) -> bool:
        if role != "hold" or p.hold_status == "canceled":
            return False
        p.hold_status = "canceled"
        p.client_secret = None
        await self._close_pending(s, p, {OperationKind.CANCEL}, now,
                                  {"payment_intent": pi.get("id"), "status": "canceled"})
        state = PaymentState(p.state)
        if state is PaymentState.AUTHORISING:
            await self._close_pending(s, p, {OperationKind.HOLD}, now,
                                      {"payment_intent": pi.get("id"), "status": "canceled"})
        if state in (PaymentState.AUTHORISING, PaymentState.AUTHORISED,
                     PaymentState.REQUIRES_ACTION):
            if p.cancel_requested:
                transition(p, PaymentState.CANCELED, now)
            elif state is not PaymentState.AUTHORISED:
                record_hold_failed(p, now, outcome="hold_canceled", code=None,
                                   decline_code=None, message="hold canceled at Stripe")
            # an authorised hold that expired stays authorised: settle() charges afresh
        return True

    async def _charge_refunded(self, s: AsyncSession, charge: dict[str, Any],
                               now: datetime) -> tuple[str, list[Payment]]:
        pi = charge.get("payment_intent")
        intent_id = pi.get("id") if isinstance(pi, dict) else pi
        p = await payment_by_intent(s, intent_id) if isinstance(intent_id, str) else None
        if p is None or not isinstance(intent_id, str):
            return "unknown_payment", []
        refunds = (charge.get("refunds") or {}).get("data") or []
        changed = False
        for r in refunds:
            if not isinstance(r, dict) or not isinstance(r.get("id"), str):
                continue
            row = (await s.execute(select(Refund).where(
                Refund.stripe_refund_id == r["id"]))).scalar_one_or_none()  # type: ignore[arg-type]
            status = str(r.get("status") or "succeeded")
            if row is None:
                s.add(Refund(session_id=p.session_id, payment_intent_id=intent_id,
                             amount=int(r.get("amount") or 0), status=status,
                             stripe_refund_id=r["id"], requested_by="stripe",
                             reason="refunded outside the CSMS", created_at=now, updated_at=now))
                changed = True
            elif row.status != status:
                row.status = status
                row.updated_at = now
                changed = True
        if not changed:
            return "no_change", []
        await s.flush()
        p.refunded_amount = await refunded_total(s, p.session_id)
        p.updated_at = now
        return "applied", [p]

    async def _setup_intent_succeeded(self, s: AsyncSession, si: dict[str, Any],
                                      now: datetime) -> str:
        customer, pm = si.get("customer"), si.get("payment_method")
        customer_id = customer.get("id") if isinstance(customer, dict) else customer
        pm_id = pm.get("id") if isinstance(pm, dict) else pm
        if not isinstance(customer_id, str) or not isinstance(pm_id, str):
            return "no_change"
        row = (await s.execute(select(BillingCustomer).where(
            BillingCustomer.stripe_customer_id == customer_id))  # type: ignore[arg-type]
        ).scalar_one_or_none()
        if row is None:
            return "unknown_customer"
        if row.default_payment_method == pm_id:
            return "no_change"
        row.default_payment_method = pm_id
        row.updated_at = now
        await enqueue(s, kind=OperationKind.SET_DEFAULT_PM,
                      key=f"{self._prefix}customer:{row.driver_id}:default:{pm_id}",
                      session_id=None, now=now,
                      params={"customer_id": customer_id, "payment_method_id": pm_id,
                              "driver_id": row.driver_id})
        return "applied"
