"""Billing tables (SQLModel on the global ``SQLModel.metadata``; portable to SQLite and PostgreSQL).

Money columns are integers in the currency's minor unit (``BigInteger``). Times are
:class:`billing.sqltypes.UtcDateTime` (``DateTime(timezone=True)``, timezone-aware UTC on
SQLite too). JSON columns use ``sqlalchemy.JSON``.

* ``billing_customer``       one Stripe customer per driver (never two), default card.
* ``billing_payment``        one payment record per charging session: the state machine.
* ``billing_operation``      the outbox: every Stripe write, recorded before it is sent.
* ``billing_refund``         operator refunds, one row per PaymentIntent refunded.
* ``billing_webhook_event``  raw Stripe events, stored by id before they are processed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, Text
from sqlmodel import Field, SQLModel

from billing.sqltypes import UtcDateTime


def utcnow() -> datetime:
    """The default clock: timezone-aware UTC."""
    return datetime.now(UTC)


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable,
                                                index=index))


def _money(default: int | None = 0) -> Any:
    return Field(default=default, sa_column=Column(BigInteger, nullable=default is None))


def _pk() -> Any:
    return Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True))


class PaymentState(StrEnum):
    """States of :class:`Payment` (see docs/billing.md for the diagram).

    authorising -> authorised -> capturing -> captured | canceled | failed; a hold that needs
    3-D Secure waits in requires_action. captured, canceled and failed are final.
    """

    AUTHORISING = "authorising"
    REQUIRES_ACTION = "requires_action"
    AUTHORISED = "authorised"
    CAPTURING = "capturing"
    CAPTURED = "captured"
    CANCELED = "canceled"
    FAILED = "failed"


FINAL_STATES = frozenset({PaymentState.CAPTURED, PaymentState.CANCELED, PaymentState.FAILED})

TRANSITIONS: dict[PaymentState, frozenset[PaymentState]] = {
    PaymentState.AUTHORISING: frozenset({PaymentState.AUTHORISED, PaymentState.REQUIRES_ACTION,
                                         PaymentState.FAILED, PaymentState.CANCELED}),
    PaymentState.REQUIRES_ACTION: frozenset({PaymentState.AUTHORISED, PaymentState.FAILED,
                                             PaymentState.CANCELED}),
    PaymentState.AUTHORISED: frozenset({PaymentState.CAPTURING, PaymentState.CANCELED,
                                        PaymentState.FAILED}),
    PaymentState.CAPTURING: frozenset({PaymentState.CAPTURED, PaymentState.CANCELED,
                                       PaymentState.FAILED}),
    PaymentState.CAPTURED: frozenset(),
    PaymentState.CANCELED: frozenset(),
    PaymentState.FAILED: frozenset(),
}
"""Allowed state changes; anything else is a bug (``billing.payments.transition`` raises)."""


class OperationKind(StrEnum):
    """Kinds of outbox operations (Stripe writes)."""

    HOLD = "hold"                  # create+confirm a manual-capture PaymentIntent, off-session
    CAPTURE = "capture"            # capture (part of) the hold
    CANCEL = "cancel"              # cancel the hold (release the authorisation)
    TOPUP = "topup"                # second, automatic-capture PaymentIntent for cost - hold
    CHARGE = "charge"              # fresh automatic-capture PaymentIntent (expired hold)
    REFUND = "refund"              # refund (part of) a PaymentIntent
    SET_DEFAULT_PM = "set_default_pm"  # customer.invoice_settings.default_payment_method


class OperationStatus(StrEnum):
    """Outbox row status: pending until final (done / failed / superseded)."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class BillingCustomer(SQLModel, table=True):
    """The Stripe customer of one driver; the row is the guard against a second customer."""

    __tablename__ = "billing_customer"

    driver_id: str = Field(primary_key=True, max_length=255)
    email: str | None = Field(default=None, sa_column=Column(Text))
    stripe_customer_id: str = Field(max_length=255, unique=True)
    default_payment_method: str | None = Field(default=None, max_length=255)
    setup_seq: int = 0
    """Number of SetupIntents created; part of their idempotency keys."""
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime | None = _ts()


class Payment(SQLModel, table=True):
    """The payment record of one charging session (our session id is opaque text).

    Amounts are integer minor units of ``currency``.
    """

    __tablename__ = "billing_payment"
    __table_args__ = (Index("ix_billing_payment_state", "state"),)

    session_id: str = Field(primary_key=True, max_length=255)
    driver_id: str = Field(max_length=255, index=True)
    customer_id: str = Field(max_length=255)
    payment_method_id: str | None = Field(default=None, max_length=255)
    currency: str = Field(max_length=3)
    """ISO 4217, upper case."""
    state: str = PaymentState.AUTHORISING.value
    hold_amount: int = _money()
    """The authorisation asked for."""
    hold_intent_id: str | None = Field(default=None, max_length=255, index=True)
    hold_status: str | None = None
    """Last PaymentIntent status seen (requires_capture, canceled, succeeded...)."""
    client_secret: str | None = Field(default=None, sa_column=Column(Text))
    """Set while the hold requires_action: the driver's app completes 3-D Secure with it."""
    cost: int | None = _money(None)
    """The final session cost handed to settle()."""
    charge_amount: int | None = _money(None)
    """What we decided to collect after the policies (minimum charge, over-hold)."""
    captured_amount: int = _money()
    """Captured from the hold."""
    extra_kind: str | None = None
    """topup | charge: a second PaymentIntent, when one is needed."""
    extra_intent_id: str | None = Field(default=None, max_length=255, index=True)
    extra_amount: int | None = _money(None)
    extra_collected: int = _money()
    collected_amount: int = _money()
    """captured_amount + extra_collected."""
    uncollected_amount: int = _money()
    """Part of the cost not collected: waived below minimum, over hold, or declined top-up."""
    refunded_amount: int = _money()
    outcome: str | None = None
    """How it ended or why: zero_cost, waived_below_minimum, rounded_up_to_minimum, captured,
    topped_up, capture_hold_only, remainder_below_minimum, fallback_charge, declined, ..."""
    decline_code: str | None = None
    failure_code: str | None = None
    failure_message: str | None = Field(default=None, sa_column=Column(Text))
    cancel_requested: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime | None = _ts()


class Operation(SQLModel, table=True):
    """Outbox: one Stripe write, written (pending) in the same transaction as the state change.

    The worker sends it when ``next_attempt_at`` has come, with ``idempotency_key``, until it is
    final; a retry waits ``RetryPolicy.delay(attempts)`` (exponential backoff, persisted here).
    Operations of one session run one at a time in ``id`` order.
    """

    __tablename__ = "billing_operation"
    __table_args__ = (Index("ix_billing_operation_due", "status", "next_attempt_at"),)

    id: int | None = _pk()
    session_id: str | None = Field(default=None, max_length=255, index=True)
    kind: str
    idempotency_key: str = Field(max_length=255, unique=True)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = OperationStatus.PENDING.value
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column=Column(
        UtcDateTime(), nullable=False))
    lease_until: datetime | None = _ts()
    """While set in the future, a worker is sending this operation."""
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    finished_at: datetime | None = _ts()


class Refund(SQLModel, table=True):
    """A refund of (part of) one PaymentIntent of a session, asked for by an operator."""

    __tablename__ = "billing_refund"

    id: int | None = _pk()
    session_id: str = Field(max_length=255, index=True)
    payment_intent_id: str = Field(max_length=255)
    amount: int = _money()
    status: str = "pending"
    """pending | succeeded | failed (Stripe refund status, or ours while unsent)."""
    stripe_refund_id: str | None = Field(default=None, max_length=255, index=True)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    requested_by: str | None = None
    failure_message: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime | None = _ts()


class WebhookEvent(SQLModel, table=True):
    """A Stripe event as received (raw body), stored by its id before it is processed."""

    __tablename__ = "billing_webhook_event"

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=255)
    livemode: bool = False
    api_version: str | None = None
    raw: str = Field(sa_column=Column(Text, nullable=False))
    status: str = "received"
    """received | processed | error."""
    result: str | None = None
    """What processing did: applied | ignored | unknown_payment ..."""
    error: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    received_at: datetime = Field(default_factory=utcnow,
                                  sa_column=Column(UtcDateTime()))
    processed_at: datetime | None = _ts()
