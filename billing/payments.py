"""Payment records, the outbox and reconciliation: functions of an ``AsyncSession``, DB only.

Everything here runs inside a unit of work (one database transaction) handed to
:meth:`UnitOfWork.write`; nothing here talks to the network. A state change and the outbox rows
it needs are written in the same transaction, so an operation can never be lost or sent twice
by us: :class:`billing.service.Billing` sends the pending rows afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.currency import minimum_charge
from billing.errors import PaymentStateError
from billing.models import (
    TRANSITIONS,
    BillingCustomer,
    Operation,
    OperationKind,
    OperationStatus,
    Payment,
    PaymentState,
    Refund,
)

T = TypeVar("T")


class UnitOfWork(Protocol):
    """What billing needs from the database; ``csms.db.Database`` satisfies it structurally.

    ``write`` runs ``unit`` in one transaction and returns its result once committed (units do
    no network I/O and may be re-run alone after a failed batch); ``read`` runs ``fn`` on its
    own session without writing.
    """

    async def write(self, unit: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``unit`` in a transaction; return its result after the commit."""
        ...

    async def read(self, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run a read-only ``fn`` on its own session."""
        ...


# --------------------------------------------------------------------------- policies


class BelowMinimum(StrEnum):
    """What to do with a cost above 0 but below Stripe's minimum charge for the currency."""

    WAIVE = "waive"          # cancel the hold, collect nothing (default)
    ROUND_UP = "round_up"    # collect the minimum charge instead


class OverHold(StrEnum):
    """What to do when the cost exceeds the hold."""

    TOPUP = "topup"                          # capture the hold + charge the rest (default)
    CAPTURE_HOLD_ONLY = "capture_hold_only"  # capture the hold, write the rest off


@dataclass(frozen=True, slots=True)
class SettlePolicy:
    """Settlement policies (operator settings)."""

    below_minimum: BelowMinimum = BelowMinimum.WAIVE
    over_hold: OverHold = OverHold.TOPUP


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a final cost will be collected (minor units).

    Attributes:
        charge_amount: what we will try to collect in total.
        capture: amount to capture from the hold; None = cancel the hold.
        extra: amount of the second (top-up) PaymentIntent; 0 = none.
        uncollected: part of the cost we will not collect.
        outcome: zero_cost | waived_below_minimum | rounded_up_to_minimum | captured |
            topped_up | remainder_below_minimum | capture_hold_only.
    """

    charge_amount: int
    capture: int | None
    extra: int
    uncollected: int
    outcome: str


def plan_settlement(cost: int, hold: int, currency: str, policy: SettlePolicy) -> Settlement:
    """Decide captures, cancel and top-up for a final ``cost`` against a ``hold`` (pure).

    Rules: 0 -> cancel the hold. Below Stripe's minimum -> cancel (WAIVE) or collect the minimum
    (ROUND_UP). <= hold -> capture ``amount_to_capture=cost``. > hold -> capture the hold and
    charge the rest off-session (TOPUP; a rest below the minimum is written off) or capture the
    hold only (CAPTURE_HOLD_ONLY).

    Raises:
        PaymentStateError: negative cost.
    """
    if cost < 0:
        raise PaymentStateError(f"cost must be >= 0, got {cost}")
    minimum = minimum_charge(currency)
    outcome = "captured"
    amount = cost
    if cost == 0:
        return Settlement(0, None, 0, 0, "zero_cost")
    if cost < minimum:
        if policy.below_minimum is BelowMinimum.WAIVE:
            return Settlement(0, None, 0, cost, "waived_below_minimum")
        amount, outcome = minimum, "rounded_up_to_minimum"
    if amount <= hold:
        return Settlement(amount, amount, 0, 0, outcome)
    rest = amount - hold
    if policy.over_hold is OverHold.CAPTURE_HOLD_ONLY:
        return Settlement(hold, hold, 0, rest, "capture_hold_only")
    if rest < minimum:
        return Settlement(hold, hold, 0, rest, "remainder_below_minimum")
    return Settlement(amount, hold, rest, 0, "topped_up")


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True, slots=True)
class PaymentView:
    """A read-only copy of a :class:`billing.models.Payment` row (amounts in minor units)."""

    session_id: str
    driver_id: str
    customer_id: str
    payment_method_id: str | None
    currency: str
    state: PaymentState
    hold_amount: int
    hold_intent_id: str | None
    hold_status: str | None
    client_secret: str | None
    cost: int | None
    charge_amount: int | None
    captured_amount: int
    extra_kind: str | None
    extra_intent_id: str | None
    extra_amount: int | None
    extra_collected: int
    collected_amount: int
    uncollected_amount: int
    refunded_amount: int
    outcome: str | None
    decline_code: str | None
    failure_code: str | None
    failure_message: str | None
    cancel_requested: bool
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def of(cls, row: Payment) -> PaymentView:
        """Copy a row."""
        values = {f.name: getattr(row, f.name) for f in fields(cls)}
        values["state"] = PaymentState(row.state)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class OperationView:
    """A read-only copy of an outbox row."""

    id: int
    session_id: str | None
    kind: OperationKind
    idempotency_key: str
    params: dict[str, Any]
    status: OperationStatus
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime | None
    last_error: str | None
    result: dict[str, Any] | None

    @classmethod
    def of(cls, row: Operation) -> OperationView:
        """Copy a row."""
        assert row.id is not None
        return cls(id=row.id, session_id=row.session_id, kind=OperationKind(row.kind),
                   idempotency_key=row.idempotency_key, params=dict(row.params),
                   status=OperationStatus(row.status), attempts=row.attempts,
                   next_attempt_at=row.next_attempt_at, lease_until=row.lease_until,
                   last_error=row.last_error, result=row.result)


@dataclass(frozen=True, slots=True)
class RefundView:
    """A read-only copy of a refund row."""

    id: int
    session_id: str
    payment_intent_id: str
    amount: int
    status: str
    stripe_refund_id: str | None
    reason: str | None
    requested_by: str | None
    failure_message: str | None

    @classmethod
    def of(cls, row: Refund) -> RefundView:
        """Copy a row."""
        assert row.id is not None
        return cls(id=row.id, session_id=row.session_id,
                   payment_intent_id=row.payment_intent_id, amount=row.amount,
                   status=row.status, stripe_refund_id=row.stripe_refund_id, reason=row.reason,
                   requested_by=row.requested_by, failure_message=row.failure_message)


@dataclass(frozen=True, slots=True)
class CustomerView:
    """A read-only copy of a billing_customer row."""

    driver_id: str
    email: str | None
    stripe_customer_id: str
    default_payment_method: str | None

    @classmethod
    def of(cls, row: BillingCustomer) -> CustomerView:
        """Copy a row."""
        return cls(driver_id=row.driver_id, email=row.email,
                   stripe_customer_id=row.stripe_customer_id,
                   default_payment_method=row.default_payment_method)


# --------------------------------------------------------------------------- rows


async def get_payment(s: AsyncSession, session_id: str, *,
                      for_update: bool = False) -> Payment | None:
    """The payment row of a session (locked FOR UPDATE on PostgreSQL when asked)."""
    stmt = select(Payment).where(Payment.session_id == session_id)  # type: ignore[arg-type]
    if for_update:
        stmt = stmt.with_for_update()
    return (await s.execute(stmt)).scalar_one_or_none()


async def payment_by_intent(s: AsyncSession, intent_id: str) -> Payment | None:
    """The payment whose hold or extra PaymentIntent is ``intent_id``."""
    stmt = select(Payment).where(
        (Payment.hold_intent_id == intent_id)  # type: ignore[arg-type]
        | (Payment.extra_intent_id == intent_id))  # type: ignore[arg-type]
    return (await s.execute(stmt)).scalars().first()


async def get_operation(s: AsyncSession, op_id: int) -> Operation | None:
    """An outbox row by id."""
    return await s.get(Operation, op_id)


async def session_operations(s: AsyncSession, session_id: str,
                             status: OperationStatus | None = None) -> list[Operation]:
    """Outbox rows of a session in id (= execution) order."""
    stmt = select(Operation).where(Operation.session_id == session_id)  # type: ignore[arg-type]
    if status is not None:
        stmt = stmt.where(Operation.status == status.value)  # type: ignore[arg-type]
    return list((await s.execute(stmt.order_by(Operation.id))).scalars())  # type: ignore[arg-type]


def transition(p: Payment, new: PaymentState, now: datetime) -> None:
    """Move a payment to ``new`` (no-op when already there).

    Raises:
        PaymentStateError: the change is not in :data:`billing.models.TRANSITIONS`.
    """
    old = PaymentState(p.state)
    if old is new:
        return
    if new not in TRANSITIONS[old]:
        raise PaymentStateError(f"payment {p.session_id}: {old} -> {new} is not allowed")
    p.state = new.value
    p.updated_at = now


async def enqueue(s: AsyncSession, *, kind: OperationKind, key: str, session_id: str | None,
                  params: dict[str, Any], now: datetime) -> Operation:
    """Record a Stripe write as pending (due now). The idempotency key is unique: enqueuing the
    same key again returns the existing row and changes nothing."""
    existing = (await s.execute(select(Operation).where(
        Operation.idempotency_key == key))).scalar_one_or_none()  # type: ignore[arg-type]
    if existing is not None:
        return existing
    op = Operation(session_id=session_id, kind=kind.value, idempotency_key=key, params=params,
                   status=OperationStatus.PENDING.value, next_attempt_at=now, created_at=now)
    s.add(op)
    await s.flush()
    return op


def finish(op: Operation, status: OperationStatus, now: datetime,
           result: dict[str, Any] | None = None, error: str | None = None) -> None:
    """Mark an outbox row final."""
    op.status = status.value
    op.finished_at = now
    op.lease_until = None
    if result is not None:
        op.result = result
    if error is not None:
        op.last_error = error


# --------------------------------------------------------------------------- state changes


def session_key(prefix: str, session_id: str, step: str) -> str:
    """Idempotency key of a session step: ``{prefix}session:{id}:{step}``."""
    return f"{prefix}session:{session_id}:{step}"


async def after_hold_resolved(s: AsyncSession, p: Payment, prefix: str, policy: SettlePolicy,
                              now: datetime) -> None:
    """Continue a payment whose hold just got authorised or needs action: a cancel or a
    settle asked for while the hold was pending is carried out now."""
    if p.cancel_requested:
        await enqueue(s, kind=OperationKind.CANCEL, key=session_key(prefix, p.session_id, "cancel"),
                      session_id=p.session_id, params={}, now=now)
    elif p.cost is not None and PaymentState(p.state) is PaymentState.AUTHORISED:
        await begin_settlement(s, p, p.cost, prefix, policy, now)


async def begin_settlement(s: AsyncSession, p: Payment, cost: int, prefix: str,
                           policy: SettlePolicy, now: datetime) -> None:
    """Plan the collection of ``cost`` (:func:`plan_settlement`) and enqueue its operations in
    order: capture (or cancel), then top-up. authorised -> capturing."""
    plan = plan_settlement(cost, p.hold_amount, p.currency, policy)
    p.cost = cost
    p.charge_amount = plan.charge_amount
    p.uncollected_amount = plan.uncollected
    p.outcome = plan.outcome
    transition(p, PaymentState.CAPTURING, now)
    sid = p.session_id
    if plan.capture is None:
        await enqueue(s, kind=OperationKind.CANCEL, key=session_key(prefix, sid, "cancel"),
                      session_id=sid, params={}, now=now)
        return
    await enqueue(s, kind=OperationKind.CAPTURE, key=session_key(prefix, sid, "capture"),
                  session_id=sid, params={"amount": plan.capture,
                                          "fallback_amount": plan.charge_amount}, now=now)
    if plan.extra:
        p.extra_kind = OperationKind.TOPUP.value
        p.extra_amount = plan.extra
        await enqueue(s, kind=OperationKind.TOPUP, key=session_key(prefix, sid, "topup"),
                      session_id=sid, params={"amount": plan.extra}, now=now)


def record_hold_authorised(p: Payment, pi: dict[str, Any], now: datetime) -> None:
    """The hold PaymentIntent is ``requires_capture``: authorising/requires_action -> authorised."""
    p.hold_intent_id = pi.get("id") or p.hold_intent_id
    p.hold_status = "requires_capture"
    p.client_secret = None
    capturable = pi.get("amount_capturable")
    if isinstance(capturable, int) and capturable > 0:
        p.hold_amount = capturable
    transition(p, PaymentState.AUTHORISED, now)


def record_hold_requires_action(p: Payment, pi: dict[str, Any], now: datetime) -> None:
    """The bank asks for the customer (3-D Secure): authorising -> requires_action."""
    p.hold_intent_id = pi.get("id") or p.hold_intent_id
    p.hold_status = "requires_action"
    p.client_secret = pi.get("client_secret")
    transition(p, PaymentState.REQUIRES_ACTION, now)


def record_hold_failed(p: Payment, now: datetime, *, outcome: str, code: str | None,
                       decline_code: str | None, message: str | None,
                       intent_id: str | None = None) -> None:
    """The hold was declined or refused: -> failed; the cost (if known) stays uncollected."""
    if intent_id:
        p.hold_intent_id = intent_id
    p.outcome = outcome
    p.failure_code = code
    p.decline_code = decline_code
    p.failure_message = message
    p.client_secret = None
    if p.cost:
        p.uncollected_amount = p.cost
    transition(p, PaymentState.FAILED, now)


def collected_from(pi: dict[str, Any]) -> int:
    """Minor units collected by a PaymentIntent.

    ``amount_received`` on Stripe. localstripe has no ``amount_received``: there it is the
    captured charge's ``amount - amount_refunded`` (it books the released part of a partial
    capture as a refund) - read right after the capture, before any operator refund.
    """
    received = pi.get("amount_received")
    if isinstance(received, int):
        return received
    charge = pi.get("latest_charge")
    if isinstance(charge, dict) and charge.get("captured") and charge.get("status") == "succeeded":
        captured = charge.get("amount_captured")
        if isinstance(captured, int):
            return captured
        return int(charge.get("amount") or 0) - int(charge.get("amount_refunded") or 0)
    return 0


async def finalize(s: AsyncSession, p: Payment, now: datetime) -> None:
    """Close a capturing payment once no operation of its session is pending.

    captured when anything was collected; canceled when the hold was released on purpose
    (zero or waived cost); failed otherwise.
    """
    if PaymentState(p.state) is not PaymentState.CAPTURING:
        return
    if await session_operations(s, p.session_id, OperationStatus.PENDING):
        return
    p.collected_amount = p.captured_amount + p.extra_collected
    if p.collected_amount > 0:
        transition(p, PaymentState.CAPTURED, now)
    elif p.outcome in ("zero_cost", "waived_below_minimum") and p.hold_status == "canceled":
        transition(p, PaymentState.CANCELED, now)
    else:
        p.uncollected_amount = p.cost or 0
        transition(p, PaymentState.FAILED, now)


async def supersede_pending(s: AsyncSession, session_id: str, kinds: set[OperationKind],
                            now: datetime, reason: str) -> None:
    """Mark pending operations of these kinds as superseded (they will not be sent)."""
    for op in await session_operations(s, session_id, OperationStatus.PENDING):
        if OperationKind(op.kind) in kinds:
            finish(op, OperationStatus.SUPERSEDED, now, error=reason)


async def refunded_total(s: AsyncSession, session_id: str) -> int:
    """Refunds of a session that Stripe accepted (succeeded or pending), minor units."""
    rows = (await s.execute(select(Refund).where(
        Refund.session_id == session_id))).scalars()  # type: ignore[arg-type]
    return sum(r.amount for r in rows if r.status in ("succeeded", "pending"))


async def requested_refunds(s: AsyncSession, session_id: str) -> dict[str, int]:
    """Refunds asked for per PaymentIntent (not failed), minor units."""
    rows = (await s.execute(select(Refund).where(
        Refund.session_id == session_id))).scalars()  # type: ignore[arg-type]
    out: dict[str, int] = {}
    for r in rows:
        if r.status != "failed":
            out[r.payment_intent_id] = out.get(r.payment_intent_id, 0) + r.amount
    return out
