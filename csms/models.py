"""Database tables of the OCPP side (SQLModel on SQLAlchemy 2).

One transaction model serves OCPP 1.6 and 2.0.1: ``Transaction.ocpp_id`` is the id on the wire
(1.6: the integer we issued, as text; 2.0.1: the station's string), ``Transaction.id`` is ours.
Times are timezone-aware UTC; energy is Wh; current A; power W; voltage V.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from billing.sqltypes import UtcDateTime


def utcnow() -> datetime:
    """The server's clock, timezone-aware UTC."""
    return datetime.now(UTC)


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable))


class ChargePoint(SQLModel, table=True):
    """A registered charge point / charging station, keyed by its decoded identity."""

    __tablename__ = "charge_point"

    id: str = Field(primary_key=True, max_length=255)
    password_hash: str | None = Field(default=None, sa_column=Column(Text))
    security_profile: int = 1
    ocpp_version: str | None = None
    vendor: str | None = Field(default=None, sa_column=Column(Text))
    model: str | None = Field(default=None, sa_column=Column(Text))
    serial_number: str | None = Field(default=None, sa_column=Column(Text))
    charge_box_serial_number: str | None = Field(default=None, sa_column=Column(Text))
    firmware_version: str | None = Field(default=None, sa_column=Column(Text))
    iccid: str | None = Field(default=None, sa_column=Column(Text))
    imsi: str | None = Field(default=None, sa_column=Column(Text))
    meter_type: str | None = Field(default=None, sa_column=Column(Text))
    meter_serial_number: str | None = Field(default=None, sa_column=Column(Text))
    boot_reason: str | None = None
    last_boot_at: datetime | None = _ts()
    connected: bool = False
    last_seen: datetime | None = _ts()
    session_relative_meter: bool | None = None
    """Learned: in-transaction MeterValues count from 0 instead of the lifetime register."""
    firmware_status: str | None = None
    diagnostics_status: str | None = None
    tariff_id: str | None = None
    kind: str = Field(default="ocpp", max_length=16)
    """ocpp (a charger that connects over OCPP) | breaker (a breaker site whose outlets are its
    connectors, driven by ``csms.breakers``; it never connects over OCPP itself)."""
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class Connector(SQLModel, table=True):
    """Status of one connector (1.6 connectorId; 2.0.1 EVSE id + connector id)."""

    __tablename__ = "connector"

    charge_point_id: str = Field(primary_key=True, foreign_key="charge_point.id", max_length=255)
    connector_id: int = Field(primary_key=True)
    """1.6 connectorId (0 = the charge point); for 2.0.1 the EVSE id."""
    evse_connector_id: int | None = None
    status: str | None = None
    error_code: str | None = None
    raw_error_code: str | None = None
    info: str | None = Field(default=None, sa_column=Column(Text))
    vendor_id: str | None = Field(default=None, sa_column=Column(Text))
    vendor_error_code: str | None = Field(default=None, sa_column=Column(Text))
    status_timestamp: datetime | None = _ts()
    status_timestamp_raw: str | None = None
    updated_at: datetime | None = _ts()


class IdTag(SQLModel, table=True):
    """Operator-managed idTag (staff, fleets): authorised without payment. Canonical upper case."""

    __tablename__ = "id_tag"

    id_tag: str = Field(primary_key=True, max_length=255)
    status: str = "Accepted"
    expiry_date: datetime | None = _ts()
    parent_id_tag: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class Transaction(SQLModel, table=True):
    """A charging transaction; ``id`` is issued by the database and is the 1.6 transactionId."""

    __tablename__ = "transaction"
    __table_args__ = (
        Index("ix_transaction_cp_ocpp", "charge_point_id", "ocpp_id"),
        Index("ix_transaction_status", "status"),
        Index("ix_transaction_start", "charge_point_id", "connector_id", "started_at_raw"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    ocpp_id: str | None = Field(default=None, max_length=64)
    charge_point_id: str = Field(foreign_key="charge_point.id", max_length=255)
    connector_id: int | None = None
    id_tag: str | None = None
    id_tag_raw: str | None = Field(default=None, sa_column=Column(Text))
    status: str = "active"
    """active | completed | orphan (stopped without a known start)."""
    meter_start: int | None = Field(default=None, sa_column=Column(BigInteger))
    meter_stop: int | None = Field(default=None, sa_column=Column(BigInteger))
    energy_wh: int | None = Field(default=None, sa_column=Column(BigInteger))
    session_id: int | None = None
    """The paid charging session this transaction belongs to, if any."""
    meter_state: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    """csms.metering.EnergyState as a dict: baseline, readings seen, session-relative flag."""
    started_at: datetime | None = _ts()
    started_at_raw: str | None = None
    start_received_at: datetime | None = _ts()
    stopped_at: datetime | None = _ts()
    stopped_at_raw: str | None = None
    stop_received_at: datetime | None = _ts()
    stop_reason: str | None = None
    flags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    """Review flags: meter_invalid, orphan, placeholder_id, stop_conflict, untrusted_time."""
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class MeterSample(SQLModel, table=True):
    """One normalised sampled value (OCPP 1.6 SampledValue / 2.0.1 SampledValueType)."""

    __tablename__ = "meter_sample"
    __table_args__ = (Index("ix_meter_sample_tx", "transaction_pk"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    connector_id: int | None = None
    transaction_pk: int | None = None
    measurand: str
    phase: str | None = None
    location: str | None = None
    context: str
    unit: str
    """Normalised unit: Wh, varh, W, var, VA, A, V, s, Percent, Celsius, Hertz..."""
    value: float | None = None
    """In ``unit``; None for a 1.6 SignedData sample (the signed block is in ``signed_data``)."""
    raw_value: str | None = None
    raw_unit: str | None = None
    signed_data: str | None = Field(default=None, sa_column=Column(Text))
    timestamp: datetime | None = _ts()
    timestamp_raw: str | None = None
    timestamp_trusted: bool = True
    received_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class OcppEvent(SQLModel, table=True):
    """Things kept for review: duplicate or unknown stops, conflicts, schema deviations,
    statuses."""

    __tablename__ = "ocpp_event"
    __table_args__ = (Index("ix_ocpp_event_cp_kind", "charge_point_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    kind: str
    """e.g. stop_duplicate, stop_unknown, stop_conflict, schema_warning, firmware_status,
    diagnostics_status, data_transfer."""
    transaction_pk: int | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class Command(SQLModel, table=True):
    """A CSMS-initiated call and its outcome (sent | answered | error | timeout |
    connection_lost | invalid_answer: a strict call's answer failed its schema)."""

    __tablename__ = "command"

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    action: str
    message_id: str
    request: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    response: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    status: str = "sent"
    error_code: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    answered_at: datetime | None = _ts()


class ApiToken(SQLModel, table=True):
    """An API bearer token, stored as its SHA-256 (tokens are 256-bit random)."""

    __tablename__ = "api_token"
    __table_args__ = (UniqueConstraint("token_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64)
    role: str = "operator"
    """operator | driver"""
    subject: str | None = None
    """The driver id for a driver token."""
    name: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class Driver(SQLModel, table=True):
    """A driver who pays by card; ``id`` is opaque (``drv_`` + 24 hex digits)."""

    __tablename__ = "driver"

    id: str = Field(primary_key=True, max_length=40)
    email: str = Field(sa_column=Column(Text, nullable=False, unique=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class DriverTag(SQLModel, table=True):
    """An RFID card (idTag, canonical upper case) linked to a driver."""

    __tablename__ = "driver_tag"

    id_tag: str = Field(primary_key=True, max_length=255)
    driver_id: str = Field(foreign_key="driver.id", max_length=40, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class TariffRow(SQLModel, table=True):
    """An operator's tariff: the OCPI 2.2.1 Tariff document plus ``hold_amount``."""

    __tablename__ = "tariff"

    id: str = Field(primary_key=True, max_length=64)
    document: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class ChargingSession(SQLModel, table=True):
    """A paid charging session: a driver, a hold, a transaction, a cost, a capture.

    ``status``: authorizing -> [queued (site at capacity) ->] starting (app) | authorized (RFID)
    -> charging -> settling ->
    completed; or failed (hold refused, charger refused, never started). ``id`` is the id in
    every Stripe idempotency key (``session:{id}:capture``).
    """

    __tablename__ = "charging_session"
    __table_args__ = (
        Index("ix_session_tag_status", "id_tag", "status"),
        Index("ix_session_cp_connector_status", "charge_point_id", "connector_id", "status"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    driver_id: str = Field(foreign_key="driver.id", max_length=40, index=True)
    charge_point_id: str = Field(max_length=255)
    connector_id: int | None = None
    origin: str = "app"
    """app (API + RemoteStart) | rfid (Authorize) | offline (StartTransaction without hold)."""
    id_tag: str = Field(max_length=255)
    status: str = "authorizing"
    tariff_id: str
    tariff: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    """Snapshot of the tariff document at the start (prices never change mid-session)."""
    currency: str
    hold_amount: int
    transaction_pk: int | None = Field(default=None, index=True)
    energy_wh: int | None = Field(default=None, sa_column=Column(BigInteger))
    cost: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    """{"amount", "currency", "lines": [...]} once known (minor units)."""
    status_log: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    """[[ISO time, connector status], ...] while the transaction runs (parking time)."""
    failure_reason: str | None = Field(default=None, sa_column=Column(Text))
    stop_requested_at: datetime | None = _ts()
    stop_reason: str | None = None
    started_at: datetime | None = _ts()
    stopped_at: datetime | None = _ts()
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class DeviceVariable(SQLModel, table=True):
    """One variable attribute of an OCPP 2.0.1 station's device model, as the station reported
    it in NotifyReport (B07 GetBaseReport / B08 GetCustomReport). ``evse_id`` / ``connector_id``
    0 and empty instances mean "not given"."""

    __tablename__ = "device_variable"
    __table_args__ = (
        UniqueConstraint(
            "charge_point_id", "component", "component_instance", "evse_id", "connector_id",
            "variable", "variable_instance", "attribute_type", name="uq_device_variable",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    component: str = Field(max_length=50)
    component_instance: str = Field(default="", max_length=50)
    evse_id: int = 0
    connector_id: int = 0
    variable: str = Field(max_length=50)
    variable_instance: str = Field(default="", max_length=50)
    attribute_type: str = Field(default="Actual", max_length=16)
    value: str | None = Field(default=None, sa_column=Column(Text))
    mutability: str | None = None
    persistent: bool | None = None
    constant: bool | None = None
    characteristics: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    """VariableCharacteristicsType as reported (unit, dataType, limits, valuesList...)."""
    request_id: int | None = None
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class TransactionEventRecord(SQLModel, table=True):
    """An OCPP 2.0.1 TransactionEventRequest as received, with what was done with it
    (E01-E07: seqNo, offline replays). ``outcome``: applied | replay (same seqNo again) |
    conflict (same seqNo, other eventType) | late (arrived after the Ended) | failed."""

    __tablename__ = "transaction_event"
    __table_args__ = (Index("ix_transaction_event_cp_tx", "charge_point_id", "transaction_id"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_point_id: str = Field(max_length=255)
    transaction_id: str = Field(max_length=64)
    """The station's transactionId (``Transaction.ocpp_id``)."""
    transaction_pk: int | None = None
    seq_no: int
    event_type: str
    trigger_reason: str | None = None
    offline: bool = False
    timestamp_raw: str | None = None
    message_id: str | None = None
    outcome: str = "applied"
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """The request exactly as received (signed meter data included)."""
    received_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class Breaker(SQLModel, table=True):
    """A smart circuit breaker in front of plain outlets (issue 6). Its id is also the id of a
    ``ChargePoint`` row of kind ``breaker``; its outlets are that charge point's connectors
    (1..``outlets``), so sessions, tariffs and receipts work as for OCPP connectors.

    ``driver`` is the driver configuration (``breaker.config.build_driver``); secrets are named
    by environment variable (``password_env``), never stored. The live columns hold the last
    read: ``state`` closed | open | tripped | offline, ``energy_wh`` (lifetime register, Wh),
    ``power_w`` (W), ``current_a`` (A), ``voltage_v`` (V).
    """

    __tablename__ = "breaker"

    id: str = Field(primary_key=True, foreign_key="charge_point.id", max_length=255)
    driver: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    rated_current_a: int = 16
    phases: int = 1
    outlets: int = 1
    car_full_power_w: int = 100
    """Below this power for ``car_full_minutes`` the car is full and the session ends."""
    car_full_minutes: float = 10.0
    offline_grace_s: float = 60.0
    """An active session on a breaker offline (or unreadable) this long ends on its last good
    reading."""
    state: str = "offline"
    energy_wh: int | None = Field(default=None, sa_column=Column(BigInteger))
    power_w: float | None = None
    current_a: float | None = None
    voltage_v: float | None = None
    read_at: datetime | None = _ts()
    last_good_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))


class BreakerAudit(SQLModel, table=True):
    """Every close/open of a breaker: who (``actor``: ``operator:<token name>`` or
    ``session:<id>``), when, why, whether forced, and how it ended (``outcome``: confirmed |
    unconfirmed | unavailable)."""

    __tablename__ = "breaker_audit"
    __table_args__ = (Index("ix_breaker_audit_breaker", "breaker_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    breaker_id: str = Field(max_length=255)
    action: str
    """close | open"""
    actor: str = Field(max_length=255)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    forced: bool = False
    session_id: int | None = None
    outcome: str = "pending"
    attempts: int = 0
    state_after: str | None = None
    detail: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime()))
    finished_at: datetime | None = _ts()
