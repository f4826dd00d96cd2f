"""The billing service: customers and cards, holds, settlement, refunds and the outbox worker.

Money moves only through the outbox: a public call writes the payment state change and the
pending :class:`billing.models.Operation` rows in one transaction, then sends them at once
(inline) and leaves whatever could not be sent (Stripe unavailable) to the worker, which retries
with exponential backoff from the persisted ``next_attempt_at`` until each operation is final.
Operations of one session run one at a time, in order, under a per-session lock and a
persisted lease; every one carries its idempotency key (``session:{id}:hold`` ...), and the
capture key is unique per session, so a session is captured at most once whatever is retried.

Lifecycle: ``await billing.start()`` (resumes pending operations left by a previous process),
``await billing.close()``; tests drive the worker with ``await billing.run_pending_once()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.currency import currency as lookup_currency
from billing.errors import (
    CardDeclined,
    NoPaymentMethod,
    PaymentNotFound,
    PaymentStateError,
    StripeRejected,
    StripeUnavailable,
)
from billing.models import (
    BillingCustomer,
    Operation,
    OperationKind,
    OperationStatus,
    Payment,
    PaymentState,
    Refund,
    utcnow,
)
from billing.payments import (
    CustomerView,
    OperationView,
    PaymentView,
    RefundView,
    SettlePolicy,
    UnitOfWork,
    after_hold_resolved,
    begin_settlement,
    collected_from,
    enqueue,
    finalize,
    finish,
    get_payment,
    record_hold_authorised,
    record_hold_failed,
    record_hold_requires_action,
    refunded_total,
    requested_refunds,
    session_key,
    session_operations,
    supersede_pending,
    transition,
)
from billing.stripe_edge import StripeEdge
from billing.webhooks import WebhookProcessor

log = logging.getLogger(__name__)

__all__ = ["Billing", "CardInfo", "HoldOutcome", "HoldResult", "RetryPolicy", "SetupIntentInfo"]

Clock = Callable[[], datetime]
Mutation = Callable[[AsyncSession, Payment | None, datetime], Awaitable[None]]
Unit = Callable[[AsyncSession], Awaitable[PaymentView | None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff of outbox retries.

    Attempt n (1-based) that fails waits ``min(initial_delay * factor**(n-1), max_delay)``
    seconds. ``max_attempts=None`` retries until the operation is final; otherwise the
    operation fails after that many attempts. ``lease`` is how long a claimed operation is
    reserved for its sender (longer than one Stripe call including the client's own retries).
    """

    initial_delay: float = 2.0
    factor: float = 2.0
    max_delay: float = 600.0
    max_attempts: int | None = None
    lease: float = 120.0

    def delay(self, attempts: int) -> timedelta:
        """Wait before the next attempt after ``attempts`` failed ones."""
        seconds = self.initial_delay * self.factor ** max(attempts - 1, 0)
        return timedelta(seconds=min(seconds, self.max_delay))


class HoldOutcome(StrEnum):
    """Result of :meth:`Billing.place_hold`."""

    AUTHORISED = "authorised"            # the hold is in place: start charging
    DECLINED = "declined"                # the card was declined (see decline_code)
    REQUIRES_ACTION = "requires_action"  # the bank wants the customer (3-D Secure)
    UNAVAILABLE = "unavailable"          # Stripe did not answer; the worker keeps trying
    FAILED = "failed"                    # Stripe refused the request for another reason
    CANCELED = "canceled"                # canceled before it was authorised


@dataclass(frozen=True, slots=True)
class HoldResult:
    """What :meth:`Billing.place_hold` found out.

    Attributes:
        outcome: see :class:`HoldOutcome`.
        session_id: our session id.
        amount / currency: the hold asked for, minor units.
        payment_intent_id: Stripe's PaymentIntent, when one exists.
        code / decline_code / message: Stripe's error code, the issuer's decline code and
            the message, for DECLINED / FAILED / UNAVAILABLE.
        client_secret: for REQUIRES_ACTION, hand it to the driver's app (Stripe.js
            ``handleNextAction``); the webhook moves the payment on afterwards.
    """

    outcome: HoldOutcome
    session_id: str
    amount: int
    currency: str
    payment_intent_id: str | None = None
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None
    client_secret: str | None = None


@dataclass(frozen=True, slots=True)
class SetupIntentInfo:
    """A SetupIntent for collecting a card in the driver's app (Stripe.js ``confirmCardSetup``)."""

    setup_intent_id: str
    client_secret: str
    customer_id: str


@dataclass(frozen=True, slots=True)
class CardInfo:
    """The driver's default card after :meth:`Billing.attach_card`."""

    payment_method_id: str
    customer_id: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None


class _RetryLater(Exception):
    def __init__(self, message: str, params: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.params = params


class Billing:
    """Payments of charging sessions through Stripe, with a persisted outbox.

    Args:
        db: a :class:`billing.payments.UnitOfWork` (``csms.db.Database`` fits).
        stripe: the :class:`billing.stripe_edge.StripeEdge` (the caller closes it).
        policy: settlement policies (below minimum: waive | round_up; over hold: topup |
            capture_hold_only).
        retry: outbox backoff.
        clock: returns timezone-aware UTC now (tests pass a fake clock).
        poll_interval: seconds between worker passes when nothing wakes it.
        idempotency_prefix: prepended to every idempotency key; set one per installation if
            several databases share one Stripe account (keys live 24 h at Stripe).
        concurrency: sessions the worker sends for at the same time.
        on_change: awaited with the new :class:`PaymentView` after every change made by the
            worker, an inline send or a webhook (errors are logged, not raised).
    """

    def __init__(self, db: UnitOfWork, stripe: StripeEdge, *,
                 policy: SettlePolicy | None = None, retry: RetryPolicy | None = None,
                 clock: Clock = utcnow, poll_interval: float = 1.0,
                 idempotency_prefix: str = "", concurrency: int = 8,
                 on_change: Callable[[PaymentView], Awaitable[None]] | None = None) -> None:
        self._db = db
        self._stripe = stripe
        self.policy = policy or SettlePolicy()
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.prefix = idempotency_prefix
        self._on_change = on_change
        self._lease = timedelta(seconds=max(
            self.retry.lease, stripe.timeout * (stripe.max_network_retries + 1) + 10))
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._handlers: dict[OperationKind, Callable[[OperationView], Awaitable[Unit]]] = {
            OperationKind.HOLD: self._op_hold,
            OperationKind.CAPTURE: self._op_capture,
            OperationKind.CANCEL: self._op_cancel,
            OperationKind.TOPUP: self._op_extra,
            OperationKind.CHARGE: self._op_extra,
            OperationKind.REFUND: self._op_refund,
            OperationKind.SET_DEFAULT_PM: self._op_set_default_pm,
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the outbox worker (idempotent); it first resumes operations left pending."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run_worker(), name="billing-outbox")

    async def close(self) -> None:
        """Stop the worker after the operation it is sending (pending rows stay pending)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def __aenter__(self) -> Billing:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def wake(self) -> None:
        """Ask the worker for a pass now (e.g. after a webhook enqueued an operation)."""
        self._wake.set()

    async def _run_worker(self) -> None:
        while True:
            try:
                await self.run_pending_once()
            except Exception:  # noqa: BLE001 - the worker must survive a bad pass
                log.exception("billing outbox pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            self._wake.clear()

    async def run_pending_once(self) -> int:
        """Send every due pending operation once (per session in order; up to ``concurrency``
        sessions at a time). Returns how many were sent (finished or rescheduled)."""
        now = self._clock()

        async def due(s: AsyncSession) -> list[tuple[int, str | None]]:
            rows = (await s.execute(select(Operation).where(
                Operation.status == OperationStatus.PENDING.value)  # type: ignore[arg-type]
                .order_by(Operation.id))).scalars()  # type: ignore[arg-type]
            picked: list[tuple[int, str | None]] = []
            seen: set[str] = set()
            for op in rows:
                if op.session_id is not None:
                    if op.session_id in seen:
                        continue
                    seen.add(op.session_id)
                next_at, lease = op.next_attempt_at, op.lease_until
                if next_at is not None and next_at <= now and (lease is None or lease <= now):
                    assert op.id is not None
                    picked.append((op.id, op.session_id))
            return picked

        gate = asyncio.Semaphore(self.concurrency)

        async def run(op_id: int, session_id: str | None) -> int:
            async with gate:
                if session_id is None:
                    return await self._run_one(op_id)
                return await self._run_session(session_id)

        results = await asyncio.gather(*(run(op_id, sid) for op_id, sid in
                                         await self._db.read(due)), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.error("billing outbox: sending failed", exc_info=r)
        return sum(r for r in results if isinstance(r, int))

    # ------------------------------------------------------------------ customers and cards

    async def ensure_customer(self, driver_id: str, email: str | None = None) -> str:
        """The driver's Stripe customer id, creating the customer once.

        The customer is created with the e-mail and ``metadata.driver_id`` under the key
        ``customer:create:{driver_id}`` and its id stored in ``billing_customer``; later calls
        reuse it, so a driver never gets two customers.

        Raises:
            StripeUnavailable, StripeRejected: Stripe did not create it (nothing stored).
        """
        async with self._locked(f"driver:{driver_id}"):
            existing = await self.get_customer(driver_id)
            if existing is not None:
                return existing.stripe_customer_id
            cus = await self._stripe.create_customer(
                email=email, driver_id=driver_id,
                idempotency_key=f"{self.prefix}customer:create:{driver_id}")

            async def unit(s: AsyncSession) -> str:
                row = await s.get(BillingCustomer, driver_id)
                if row is not None:
                    return row.stripe_customer_id
                now = self._clock()
                s.add(BillingCustomer(driver_id=driver_id, email=email,
                                      stripe_customer_id=cus["id"], created_at=now,
                                      updated_at=now))
                return str(cus["id"])

            return await self._db.write(unit)

    async def get_customer(self, driver_id: str) -> CustomerView | None:
        """The stored customer of a driver, or None."""
        async def fn(s: AsyncSession) -> CustomerView | None:
            row = await s.get(BillingCustomer, driver_id)
            return None if row is None else CustomerView.of(row)
        return await self._db.read(fn)

    async def create_setup_intent(self, driver_id: str,
                                  email: str | None = None) -> SetupIntentInfo:
        """Create a SetupIntent (card, off-session use) for the driver's app to collect a card.

        Creates the customer first if needed. Key: ``customer:{driver_id}:setup:{n}`` with n
        counting the driver's SetupIntents. Stripe: https://docs.stripe.com/payments/save-and-reuse

        Raises:
            StripeUnavailable, StripeRejected.
        """
        customer_id = await self.ensure_customer(driver_id, email)

        async def bump(s: AsyncSession) -> int:
            row = await s.get(BillingCustomer, driver_id, with_for_update=True)
            assert row is not None
            row.setup_seq += 1
            row.updated_at = self._clock()
            return row.setup_seq

        seq = await self._db.write(bump)
        si = await self._stripe.create_setup_intent(
            customer_id, idempotency_key=f"{self.prefix}customer:{driver_id}:setup:{seq}",
            metadata={"driver_id": driver_id})
        return SetupIntentInfo(setup_intent_id=si["id"], client_secret=si["client_secret"],
                               customer_id=customer_id)

    async def attach_card(self, driver_id: str, payment_method_id: str) -> CardInfo:
        """Attach a PaymentMethod to the driver's customer and make it the default
        (``invoice_settings.default_payment_method``); holds use the default card.

        Keys: ``customer:{driver_id}:attach:{pm}`` and ``customer:{driver_id}:default:{pm}``.

        Raises:
            NoPaymentMethod: the driver has no customer yet (create a SetupIntent first).
            CardDeclined: the card was refused when attached.
            StripeUnavailable, StripeRejected.
        """
        cust = await self.get_customer(driver_id)
        if cust is None:
            raise NoPaymentMethod(f"driver {driver_id} has no Stripe customer")
        pm = await self._stripe.attach_payment_method(
            payment_method_id, cust.stripe_customer_id,
            idempotency_key=f"{self.prefix}customer:{driver_id}:attach:{payment_method_id}")
        await self._stripe.set_default_payment_method(
            cust.stripe_customer_id, pm["id"],
            idempotency_key=f"{self.prefix}customer:{driver_id}:default:{payment_method_id}")

        async def unit(s: AsyncSession) -> None:
            row = await s.get(BillingCustomer, driver_id)
            assert row is not None
            row.default_payment_method = pm["id"]
            row.updated_at = self._clock()

        await self._db.write(unit)
        card = pm.get("card") or {}
        return CardInfo(payment_method_id=pm["id"], customer_id=cust.stripe_customer_id,
                        brand=card.get("brand"), last4=card.get("last4"),
                        exp_month=card.get("exp_month"), exp_year=card.get("exp_year"))

    # ------------------------------------------------------------------ session payments

    @staticmethod
    def _sid(session_id: str | int) -> str:
        sid = str(session_id)
        if not sid or len(sid) > 200:
            raise PaymentStateError("session id must be 1..200 characters")
        return sid

    async def place_hold(self, session_id: str | int, driver_id: str, amount: int,
                         currency: str) -> HoldResult:
        """Authorise ``amount`` on the driver's default card for a session (manual capture,
        off-session, confirmed at once; key ``session:{id}:hold``).

        Creates the payment record (authorising) and the hold operation in one transaction,
        sends it, and reports what Stripe said. With UNAVAILABLE the record stays authorising
        and the worker keeps trying; :meth:`get_payment` / ``on_change`` tell the outcome.
        Calling again for the same session returns the current outcome without a new hold.
        Stripe: https://docs.stripe.com/payments/place-a-hold-on-a-payment-method

        Args:
            session_id: our session id (opaque; str or int).
            driver_id: the driver whose default card pays.
            amount: hold amount in minor units (the tariff's hold_amount).
            currency: ISO 4217 code.

        Raises:
            NoPaymentMethod: no customer or no default card for the driver.
            UnknownCurrency: not a currency of :data:`billing.currency.CURRENCIES`.
            PaymentStateError: amount below the currency minimum, or the session already has a
                payment with other parameters.
        """
        sid = self._sid(session_id)
        cur = lookup_currency(currency)
        if amount < cur.stripe_minimum:
            raise PaymentStateError(
                f"hold {amount} below the {cur.code} minimum charge {cur.stripe_minimum}")
        cust = await self.get_customer(driver_id)
        if cust is None or not cust.default_payment_method:
            raise NoPaymentMethod(f"driver {driver_id} has no default payment method")
        pm = cust.default_payment_method

        async def unit(s: AsyncSession) -> None:
            now = self._clock()
            p = await get_payment(s, sid, for_update=True)
            if p is not None:
                if (p.driver_id, p.hold_amount, p.currency) != (driver_id, amount, cur.code):
                    raise PaymentStateError(f"session {sid} already has another hold")
                return
            s.add(Payment(session_id=sid, driver_id=driver_id,
                          customer_id=cust.stripe_customer_id, payment_method_id=pm,
                          currency=cur.code, hold_amount=amount,
                          state=PaymentState.AUTHORISING.value, created_at=now, updated_at=now))
            await enqueue(s, kind=OperationKind.HOLD, key=session_key(self.prefix, sid, "hold"),
                          session_id=sid, now=now,
                          params={"amount": amount, "currency": cur.code,
                                  "customer_id": cust.stripe_customer_id,
                                  "payment_method_id": pm, "driver_id": driver_id})

        await self._db.write(unit)
        await self._run_session(sid)
        return await self.hold_result(sid)

    async def hold_result(self, session_id: str | int) -> HoldResult:
        """The hold outcome of a session as it stands now (see :meth:`place_hold`).

        Raises:
            PaymentNotFound: no payment for the session.
        """
        sid = self._sid(session_id)
        view = await self.get_payment(sid)
        if view is None:
            raise PaymentNotFound(sid)
        outcome: HoldOutcome
        extra: dict[str, str | None] = {}
        state = view.state
        if state in (PaymentState.AUTHORISED, PaymentState.CAPTURING, PaymentState.CAPTURED):
            outcome = HoldOutcome.AUTHORISED
        elif state is PaymentState.REQUIRES_ACTION:
            outcome = HoldOutcome.REQUIRES_ACTION
            extra = {"client_secret": view.client_secret}
        elif state is PaymentState.AUTHORISING:
            ops = await self.operations(sid)
            hold = next((o for o in ops if o.kind is OperationKind.HOLD), None)
            outcome = HoldOutcome.UNAVAILABLE
            extra = {"message": hold.last_error if hold else None}
        elif state is PaymentState.CANCELED:
            outcome = HoldOutcome.CANCELED
        else:
            outcome = HoldOutcome.DECLINED if view.outcome == "declined" else HoldOutcome.FAILED
            extra = {"code": view.failure_code, "decline_code": view.decline_code,
                     "message": view.failure_message}
        return HoldResult(outcome, session_id=sid, amount=view.hold_amount,
                          currency=view.currency, payment_intent_id=view.hold_intent_id,
                          **extra)

    async def settle(self, session_id: str | int, cost: int) -> PaymentView:
        """Collect the final cost of a session (minor units, e.g. ``compute_cost(...).total``).

        With the default policies: 0 or below the currency minimum -> cancel the hold (waived);
        <= hold -> capture ``amount_to_capture=cost`` (key ``session:{id}:capture``); > hold ->
        capture the hold and charge the rest off-session (``session:{id}:topup``). A hold found
        canceled (expired) at capture time is replaced by a fresh off-session charge of the
        amount (``session:{id}:charge``). Settling while the hold is still authorising is
        carried out when it resolves. Settling again with the same cost is a no-op.

        Returns:
            The payment after the operations that could be sent now.

        Raises:
            PaymentNotFound: no payment for the session.
            PaymentStateError: a different cost was settled before, or cost < 0.
        """
        sid = self._sid(session_id)
        if cost < 0:
            raise PaymentStateError(f"cost must be >= 0, got {cost}")

        async def unit(s: AsyncSession) -> None:
            now = self._clock()
            p = await get_payment(s, sid, for_update=True)
            if p is None:
                raise PaymentNotFound(sid)
            if p.cost is not None:
                if p.cost != cost:
                    raise PaymentStateError(f"session {sid} was settled with {p.cost}, not {cost}")
                return
            state = PaymentState(p.state)
            if state is PaymentState.AUTHORISED:
                await begin_settlement(s, p, cost, self.prefix, self.policy, now)
                return
            p.cost = cost
            p.updated_at = now
            if state is PaymentState.AUTHORISING:
                return  # settled when the hold resolves
            p.uncollected_amount = cost
            if state is PaymentState.REQUIRES_ACTION:
                p.outcome = "not_authorised"
                p.cancel_requested = True
                await self._enqueue_cancel(s, sid, now)

        return await self._write_and_send(unit, sid)

    async def _enqueue_cancel(self, s: AsyncSession, sid: str, now: datetime) -> None:
        """Queue the release of a session's hold (key ``session:{id}:cancel``)."""
        await enqueue(s, kind=OperationKind.CANCEL, key=session_key(self.prefix, sid, "cancel"),
                      session_id=sid, params={}, now=now)

    async def _write_and_send(self, unit: Callable[[AsyncSession], Awaitable[None]],
                              sid: str) -> PaymentView:
        """Commit ``unit``, send what it queued for the session, return the payment."""
        await self._db.write(unit)
        await self._run_session(sid)
        view = await self.get_payment(sid)
        assert view is not None
        return view

    async def cancel(self, session_id: str | int) -> PaymentView:
        """Release the hold of a session that will not be billed (never started, aborted).

        Key ``session:{id}:cancel``; while the hold is still authorising it is canceled as soon
        as it resolves. A no-op on canceled or failed payments.

        Raises:
            PaymentNotFound: no payment for the session.
            PaymentStateError: the payment is already being settled.
        """
        sid = self._sid(session_id)

        async def unit(s: AsyncSession) -> None:
            now = self._clock()
            p = await get_payment(s, sid, for_update=True)
            if p is None:
                raise PaymentNotFound(sid)
            state = PaymentState(p.state)
            if state in (PaymentState.CANCELED, PaymentState.FAILED):
                return
            if state in (PaymentState.CAPTURING, PaymentState.CAPTURED):
                raise PaymentStateError(f"session {sid} is {state}; refund instead")
            p.cancel_requested = True
            p.outcome = "canceled"
            p.updated_at = now
            if state is not PaymentState.AUTHORISING:
                await self._enqueue_cancel(s, sid, now)

        return await self._write_and_send(unit, sid)

    async def refund(self, session_id: str | int, amount: int | None = None, *,
                     reason: str | None = None,
                     requested_by: str | None = None) -> list[RefundView]:
        """Refund (part of) what a session collected, for operators.

        ``amount=None`` refunds everything not yet refunded. The amount is taken from the hold
        PaymentIntent first, then from the top-up / fallback charge: one refund row and one
        operation (key ``refund:{refund_id}``) per PaymentIntent. Stripe:
        https://docs.stripe.com/refunds

        Returns:
            The refund rows created, after the sends that could be made now.

        Raises:
            PaymentNotFound: no payment for the session.
            PaymentStateError: the payment is not captured, or the amount is <= 0 or more than
                what remains refundable.
        """
        sid = self._sid(session_id)

        async def unit(s: AsyncSession) -> list[int]:
            now = self._clock()
            p = await get_payment(s, sid, for_update=True)
            if p is None:
                raise PaymentNotFound(sid)
            if PaymentState(p.state) is not PaymentState.CAPTURED:
                raise PaymentStateError(f"session {sid} is {p.state}; only captured payments "
                                        "can be refunded")
            asked = await requested_refunds(s, sid)
            sources = [(p.hold_intent_id, p.captured_amount),
                       (p.extra_intent_id, p.extra_collected)]
            available = [(pi, got - asked.get(pi, 0)) for pi, got in sources
                         if pi and got - asked.get(pi, 0) > 0]
            total = sum(a for _, a in available)
            want = total if amount is None else amount
            if want <= 0 or want > total:
                raise PaymentStateError(f"refund {want} not in 1..{total}")
            ids: list[int] = []
            for pi, avail in available:
                part = min(want, avail)
                if part <= 0:
                    break
                row = Refund(session_id=sid, payment_intent_id=pi, amount=part, reason=reason,
                             requested_by=requested_by, created_at=now, updated_at=now)
                s.add(row)
                await s.flush()
                assert row.id is not None
                ids.append(row.id)
                await enqueue(s, kind=OperationKind.REFUND,
                              key=f"{self.prefix}refund:{row.id}", session_id=sid, now=now,
                              params={"refund_id": row.id, "payment_intent_id": pi,
                                      "amount": part})
                want -= part
            return ids

        ids = await self._db.write(unit)
        await self._run_session(sid)

        async def load(s: AsyncSession) -> list[RefundView]:
            rows = (await s.execute(select(Refund).where(
                Refund.id.in_(ids)).order_by(Refund.id))).scalars()  # type: ignore[union-attr,arg-type]
            return [RefundView.of(r) for r in rows]

        return await self._db.read(load)

    async def get_payment(self, session_id: str | int) -> PaymentView | None:
        """The payment record of a session, or None."""
        sid = str(session_id)

        async def fn(s: AsyncSession) -> PaymentView | None:
            p = await get_payment(s, sid)
            return None if p is None else PaymentView.of(p)

        return await self._db.read(fn)

    async def operations(self, session_id: str | int) -> list[OperationView]:
        """The outbox rows of a session in execution order (for review screens and tests)."""
        sid = str(session_id)

        async def fn(s: AsyncSession) -> list[OperationView]:
            return [OperationView.of(o) for o in await session_operations(s, sid)]

        return await self._db.read(fn)

    async def refunds(self, session_id: str | int) -> list[RefundView]:
        """The refund rows of a session."""
        sid = str(session_id)

        async def fn(s: AsyncSession) -> list[RefundView]:
            rows = (await s.execute(select(Refund).where(
                Refund.session_id == sid).order_by(Refund.id))).scalars()  # type: ignore[arg-type]
            return [RefundView.of(r) for r in rows]

        return await self._db.read(fn)

    def webhook_processor(self) -> WebhookProcessor:
        """A :class:`billing.webhooks.WebhookProcessor` wired to this service (clock, key
        prefix, policies, worker wake-up and ``on_change``)."""
        return WebhookProcessor(self._db, self._stripe, clock=self._clock,
                                idempotency_prefix=self.prefix, policy=self.policy,
                                after_commit=self._after_webhook)

    async def _after_webhook(self, changed: list[PaymentView]) -> None:
        self.wake()
        for view in changed:
            await self._notify(view)

    # ------------------------------------------------------------------ outbox machinery

    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        self._lock_users[name] = self._lock_users.get(name, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[name] -= 1
            if not self._lock_users[name]:
                del self._lock_users[name]
                del self._locks[name]

    async def _run_session(self, session_id: str) -> int:
        """Send the due operations of one session in order until one has to wait."""
        sent = 0
        async with self._locked(f"session:{session_id}"):
            while True:
                async def first(s: AsyncSession) -> int | None:
                    ops = await session_operations(s, session_id, OperationStatus.PENDING)
                    return ops[0].id if ops else None

                op_id = await self._db.read(first)
                if op_id is None:
                    return sent
                op = await self._claim(op_id)
                if op is None:
                    return sent
                sent += 1
                if not await self._execute(op):
                    return sent

    async def _run_one(self, op_id: int) -> int:
        async with self._locked(f"op:{op_id}"):
            op = await self._claim(op_id)
            if op is None:
                return 0
            await self._execute(op)
            return 1

    async def _claim(self, op_id: int) -> OperationView | None:
        lease = self._lease

        async def unit(s: AsyncSession) -> OperationView | None:
            now = self._clock()
            row = await s.get(Operation, op_id, with_for_update=True)
            if row is None or row.status != OperationStatus.PENDING.value:
                return None
            next_at, held = row.next_attempt_at, row.lease_until
            if (next_at is not None and next_at > now) or (held is not None and held > now):
                return None
            row.lease_until = now + lease
            row.attempts += 1
            return OperationView.of(row)

        return await self._db.write(unit)

    async def _execute(self, op: OperationView) -> bool:
        """Send one claimed operation and record the outcome. True when it is final."""
        try:
            unit = await self._handlers[op.kind](op)
        except StripeUnavailable as exc:
            await self._reschedule(op, f"stripe unavailable: {exc}")
            return False
        except _RetryLater as exc:
            await self._reschedule(op, str(exc), exc.params)
            return False
        except (StripeRejected, CardDeclined) as exc:
            unit = self._rejected(op, exc)
        except Exception as exc:  # noqa: BLE001 - keep the row; a person reads last_error
            log.exception("billing operation %s (%s) failed", op.id, op.idempotency_key)
            await self._reschedule(op, f"error: {exc!r}")
            return False
        try:
            view = await self._db.write(unit)
        except Exception as exc:  # noqa: BLE001
            log.exception("billing operation %s: recording the result failed", op.id)
            await self._reschedule(op, f"recording failed: {exc!r}")
            return False
        if view is not None:
            await self._notify(view)
        return True

    async def _reschedule(self, op: OperationView, error: str,
                          params: dict[str, Any] | None = None) -> None:
        retry = self.retry

        async def unit(s: AsyncSession) -> PaymentView | None:
            now = self._clock()
            row = await s.get(Operation, op.id)
            if row is None or row.status != OperationStatus.PENDING.value:
                return None
            row.lease_until = None
            row.last_error = error[:2000]
            if params is not None:
                row.params = params
            if retry.max_attempts is None or row.attempts < retry.max_attempts:
                row.next_attempt_at = now + retry.delay(row.attempts)
                return None
            finish(row, OperationStatus.FAILED, now, error=f"gave up: {error}"[:2000])
            p = await get_payment(s, op.session_id) if op.session_id else None
            if p is None:
                return None
            if op.kind is OperationKind.HOLD:
                record_hold_failed(p, now, outcome="gave_up", code=None, decline_code=None,
                                   message=error[:2000])
            else:
                p.failure_message = f"{op.kind} gave up: {error}"[:2000]
                await finalize(s, p, now)
            return PaymentView.of(p)

        view = await self._db.write(unit)
        if view is not None:
            await self._notify(view)

    async def _notify(self, view: PaymentView) -> None:
        if self._on_change is None:
            return
        try:
            await self._on_change(view)
        except Exception:  # noqa: BLE001
            log.exception("billing on_change listener failed")

    def _rejected(self, op: OperationView, exc: StripeRejected | CardDeclined) -> Unit:
        """Stripe refused a request the handler did not expect to fail: the operation fails
        (final) and the payment keeps the reason."""
        async def note(s: AsyncSession, p: Payment | None, now: datetime) -> None:
            if p is not None:
                p.failure_code = exc.code
                p.failure_message = f"{op.kind} refused by Stripe: {exc}"[:2000]

        return self._unit(op, OperationStatus.FAILED,
                          {"error": exc.code, "http_status": exc.http_status}, note)

    def _unit(self, op: OperationView, status: OperationStatus, result: dict[str, Any],
              mutate: Mutation | None = None) -> Unit:
        """A unit that records an operation's outcome, if it is still pending."""
        async def unit(s: AsyncSession) -> PaymentView | None:
            row = await s.get(Operation, op.id, with_for_update=True)
            if row is None or row.status != OperationStatus.PENDING.value:
                return None  # a webhook got there first
            now = self._clock()
            p = await get_payment(s, op.session_id, for_update=True) if op.session_id else None
            finish(row, status, now, result=result)
            if mutate is not None:
                await mutate(s, p, now)
            if p is None:
                return None
            p.updated_at = now
            await finalize(s, p, now)
            return PaymentView.of(p)
        return unit

    async def _payment(self, op: OperationView) -> PaymentView:
        assert op.session_id is not None
        view = await self.get_payment(op.session_id)
        if view is None:
            raise PaymentNotFound(op.session_id)
        return view

    # ------------------------------------------------------------------ operation handlers

    async def _op_hold(self, op: OperationView) -> Unit:
        prm = op.params
        metadata = {"session_id": str(op.session_id), "driver_id": str(prm["driver_id"]),
                    "step": "hold"}
        try:
            if prm.get("payment_intent_id"):  # known from an earlier "processing" answer
                pi = await self._stripe.retrieve_payment_intent(str(prm["payment_intent_id"]))
            else:
                pi = await self._stripe.create_payment_intent(
                    amount=prm["amount"], currency=prm["currency"],
                    customer_id=prm["customer_id"], payment_method_id=prm["payment_method_id"],
                    manual_capture=True, idempotency_key=op.idempotency_key, metadata=metadata)
        except CardDeclined as exc:
            card_error = exc
            intent = exc.payment_intent_id or await self._intent_of_charge(exc.charge_id)

            async def declined(s: AsyncSession, p: Payment | None, now: datetime) -> None:
                assert p is not None
                record_hold_failed(p, now, outcome="declined", code=card_error.code,
                                   decline_code=card_error.decline_code,
                                   message=str(card_error), intent_id=intent)

            return self._unit(op, OperationStatus.DONE,
                              {"declined": exc.code, "decline_code": exc.decline_code,
                               "payment_intent": intent}, declined)
        except StripeRejected as exc:
            refusal = exc

            async def rejected(s: AsyncSession, p: Payment | None, now: datetime) -> None:
                assert p is not None
                record_hold_failed(p, now, outcome="rejected", code=refusal.code,
                                   decline_code=None, message=str(refusal))

            return self._unit(op, OperationStatus.FAILED,
                              {"rejected": exc.code, "http_status": exc.http_status}, rejected)

        status = pi.get("status")
        result = {"payment_intent": pi.get("id"), "status": status}
        if status in ("requires_capture", "requires_action"):
            async def resolved(s: AsyncSession, p: Payment | None, now: datetime) -> None:
                assert p is not None
                if PaymentState(p.state) not in (PaymentState.AUTHORISING,
                                                 PaymentState.REQUIRES_ACTION):
                    return
                if status == "requires_capture":
                    record_hold_authorised(p, pi, now)
                else:
                    record_hold_requires_action(p, pi, now)
                await after_hold_resolved(s, p, self.prefix, self.policy, now)

            return self._unit(op, OperationStatus.DONE, result, resolved)
        if status == "processing":
            raise _RetryLater("hold is processing", {**prm, "payment_intent_id": pi.get("id")})
        error = pi.get("last_payment_error") or {}

        async def not_held(s: AsyncSession, p: Payment | None, now: datetime) -> None:
            assert p is not None
            record_hold_failed(p, now, outcome="declined", code=error.get("code"),
                               decline_code=error.get("decline_code"),
                               message=error.get("message") or f"hold status {status}",
                               intent_id=pi.get("id"))

        return self._unit(op, OperationStatus.DONE, result, not_held)

    async def _intent_of_charge(self, charge_id: str | None) -> str | None:
        """The PaymentIntent of a declined charge (localstripe names only the charge)."""
        if not charge_id:
            return None
        try:
            charge = await self._stripe.retrieve_charge(charge_id)
        except (StripeUnavailable, StripeRejected):
            return None
        pi = charge.get("payment_intent")
        return pi.get("id") if isinstance(pi, dict) else pi

    async def _op_capture(self, op: OperationView) -> Unit:
        view = await self._payment(op)
        amount = int(op.params["amount"])
        fallback_amount = int(op.params.get("fallback_amount", amount))
        pi_id = view.hold_intent_id
        pi: dict[str, Any] = {"status": "canceled"} if pi_id is None else \
            await self._stripe.retrieve_payment_intent(pi_id)
        if pi_id is not None and pi.get("status") == "requires_capture":
            try:
                pi = await self._stripe.capture_payment_intent(
                    pi_id, amount, idempotency_key=op.idempotency_key)
            except StripeRejected:
                pi = await self._stripe.retrieve_payment_intent(pi_id)
        status = pi.get("status")
        if status == "succeeded":
            captured = collected_from(pi)

            async def done(s: AsyncSession, p: Payment | None, now: datetime) -> None:
                assert p is not None
                p.captured_amount = captured
                p.hold_status = "succeeded"

            return self._unit(op, OperationStatus.DONE,
                              {"payment_intent": pi_id, "captured": captured}, done)
        if status == "canceled":
            async def fallback(s: AsyncSession, p: Payment | None, now: datetime) -> None:
                assert p is not None
                sid = p.session_id
                p.hold_status = "canceled"
                p.outcome = "fallback_charge"
                p.extra_kind = OperationKind.CHARGE.value
                p.extra_amount = fallback_amount
                await supersede_pending(s, sid, {OperationKind.TOPUP}, now,
                                        "hold expired: replaced by a fresh charge")
                await enqueue(s, kind=OperationKind.CHARGE,
                              key=session_key(self.prefix, sid, "charge"), session_id=sid,
                              params={"amount": fallback_amount}, now=now)

            return self._unit(op, OperationStatus.SUPERSEDED,
                              {"payment_intent": pi_id, "hold": "canceled",
                               "fallback_amount": fallback_amount}, fallback)

        async def stuck(s: AsyncSession, p: Payment | None, now: datetime) -> None:
            assert p is not None
            p.hold_status = str(status)
            p.failure_message = f"hold not capturable (status {status})"

        return self._unit(op, OperationStatus.FAILED,
                          {"payment_intent": pi_id, "status": status}, stuck)

    async def _op_cancel(self, op: OperationView) -> Unit:
        view = await self._payment(op)
        pi_id = view.hold_intent_id
        if pi_id is None:
            pi: dict[str, Any] = {"status": "canceled"}
        else:
            try:
                pi = await self._stripe.cancel_payment_intent(
                    pi_id, idempotency_key=op.idempotency_key)
            except StripeRejected:
                pi = await self._stripe.retrieve_payment_intent(pi_id)
        status = pi.get("status")
        if status == "canceled":
            async def canceled(s: AsyncSession, p: Payment | None, now: datetime) -> None:
                assert p is not None
                p.hold_status = "canceled"
                p.client_secret = None
                if PaymentState(p.state) in (PaymentState.AUTHORISED,
                                             PaymentState.REQUIRES_ACTION):
                    transition(p, PaymentState.CANCELED, now)

            return self._unit(op, OperationStatus.DONE,
                              {"payment_intent": pi_id, "status": status}, canceled)
        if status == "succeeded":  # captured elsewhere (Dashboard): record what was taken
            captured = collected_from(pi)

            async def taken(s: AsyncSession, p: Payment | None, now: datetime) -> None:
                assert p is not None
                p.hold_status = "succeeded"
                p.captured_amount = captured
                p.failure_message = "hold was captured before it could be canceled"

            return self._unit(op, OperationStatus.FAILED,
                              {"payment_intent": pi_id, "status": status}, taken)

        async def stuck(s: AsyncSession, p: Payment | None, now: datetime) -> None:
            assert p is not None
            p.failure_message = f"hold could not be canceled (status {status})"

        return self._unit(op, OperationStatus.FAILED,
                          {"payment_intent": pi_id, "status": status}, stuck)

    async def _op_extra(self, op: OperationView) -> Unit:
        """Top-up or fallback charge: an automatic-capture PaymentIntent, off-session."""
        view = await self._payment(op)
        kind = op.kind.value
        amount = int(op.params["amount"])
        known = op.params.get("payment_intent_id")
        try:
            if known:
                pi = await self._stripe.retrieve_payment_intent(str(known))
            else:
                assert view.payment_method_id is not None
                pi = await self._stripe.create_payment_intent(
                    amount=amount, currency=view.currency, customer_id=view.customer_id,
                    payment_method_id=view.payment_method_id, manual_capture=False,
                    idempotency_key=op.idempotency_key,
                    metadata={"session_id": view.session_id, "driver_id": view.driver_id,
                              "step": kind})
        except (CardDeclined, StripeRejected) as exc:
            err = exc
            declined = isinstance(err, CardDeclined)
            intent = err.payment_intent_id if isinstance(err, CardDeclined) else None

            async def lost(s: AsyncSession, p: Payment | None, now: datetime) -> None:
                assert p is not None
                p.extra_intent_id = intent or p.extra_intent_id
                p.uncollected_amount += amount
                p.outcome = f"{kind}_declined" if declined else f"{kind}_failed"
                p.failure_code = err.code
                p.decline_code = err.decline_code if isinstance(err, CardDeclined) else None
                p.failure_message = str(err)

            return self._unit(op, OperationStatus.DONE if declined else OperationStatus.FAILED,
                              {"error": exc.code}, lost)
        status = pi.get("status")
        if status == "processing":
            raise _RetryLater(f"{kind} is processing", {**op.params, "payment_intent_id": pi["id"]})
        got = collected_from(pi) if status == "succeeded" else 0
        error = pi.get("last_payment_error") or {}

        async def recorded(s: AsyncSession, p: Payment | None, now: datetime) -> None:
            assert p is not None
            p.extra_intent_id = pi.get("id")
            p.extra_collected = got
            if status != "succeeded":
                p.uncollected_amount += amount
                p.outcome = f"{kind}_{status}"
                p.failure_code = error.get("code")
                p.decline_code = error.get("decline_code")

        return self._unit(op, OperationStatus.DONE,
                          {"payment_intent": pi.get("id"), "status": status, "collected": got},
                          recorded)

    async def _op_refund(self, op: OperationView) -> Unit:
        prm = op.params
        refund_id = int(prm["refund_id"])
        try:
            r = await self._stripe.create_refund(
                str(prm["payment_intent_id"]), int(prm["amount"]),
                idempotency_key=op.idempotency_key,
                metadata={"session_id": str(op.session_id), "refund_id": str(refund_id)})
        except (CardDeclined, StripeRejected) as exc:
            message = str(exc)

            async def failed(s: AsyncSession, p: Payment | None, now: datetime) -> None:
                row = await s.get(Refund, refund_id)
                assert row is not None and p is not None
                row.status = "failed"
                row.failure_message = message
                row.updated_at = now
                p.refunded_amount = await refunded_total(s, p.session_id)

            return self._unit(op, OperationStatus.FAILED, {"error": exc.code}, failed)

        async def done(s: AsyncSession, p: Payment | None, now: datetime) -> None:
            row = await s.get(Refund, refund_id)
            assert row is not None and p is not None
            row.status = str(r.get("status") or "succeeded")
            row.stripe_refund_id = r.get("id")
            row.updated_at = now
            await s.flush()
            p.refunded_amount = await refunded_total(s, p.session_id)

        return self._unit(op, OperationStatus.DONE,
                          {"refund": r.get("id"), "status": r.get("status")}, done)

    async def _op_set_default_pm(self, op: OperationView) -> Unit:
        prm = op.params
        await self._stripe.set_default_payment_method(
            str(prm["customer_id"]), str(prm["payment_method_id"]),
            idempotency_key=op.idempotency_key)
        return self._unit(op, OperationStatus.DONE, {"payment_method": prm["payment_method_id"]})
