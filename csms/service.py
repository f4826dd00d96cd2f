"""The charging domain: one path for OCPP 1.6 and 2.0.1.

Version handlers (``csms.ocpp.v16`` ...) translate frames into the calls below; nothing here
knows a frame's shape. Every state change is one unit of work on the group-commit writer, so it
is durable before the handler answers the charger.

Transactions (``csms.models.Transaction``) move ``active -> completed``; a stop for a transaction
we never saw start creates an ``orphan`` (kept for review, never billed for energy). Stops are
idempotent on (charge point, transaction id): the first one finalises, later copies are recorded
as ``stop_duplicate`` (or ``stop_conflict`` when they differ) and change nothing.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from csms.db import Database
from csms.metering import EnergyState, Sample, energy_so_far, new_state, observe, settle_energy
from csms.metrics import Metrics
from csms.models import ChargePoint, Connector, IdTag, MeterSample, OcppEvent, Transaction, utcnow
from csms.timestamps import ParsedTime, effective_time

log = logging.getLogger(__name__)

PLACEHOLDER_IDS = frozenset({"-1", "0"})


def canonical_id_tag(raw: object) -> str | None:
    """The canonical form of an idTag / idToken: control characters and surrounding whitespace
    removed, upper case (OCPP CiString comparisons are case-insensitive, OCPP 1.6 §7.x).
    ``None`` for a missing or empty tag."""
    if raw is None:
        return None
    text = "".join(ch for ch in str(raw) if unicodedata.category(ch)[0] != "C").strip()
    return text.upper() or None


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Authorisation of an id tag (OCPP 1.6 IdTagInfo / 2.0.1 IdTokenInfo).

    ``status``: Accepted | Blocked | Expired | Invalid | ConcurrentTx.
    """

    status: str
    expiry_date: datetime | None = None
    parent_id_tag: str | None = None
    reason: str | None = None


class Authorizer(Protocol):
    """Decides whether an id tag may charge. The lifeline adds drivers' paid tags."""

    async def authorize(
        self, session: AsyncSession, charge_point_id: str, id_tag: str
    ) -> AuthResult:
        """Authorise the canonical ``id_tag`` at ``charge_point_id``."""
        ...


class OperatorTagAuthorizer:
    """Operator-managed tags (staff, fleets): Accepted / Blocked / Expired by status and
    ``expiry_date``; unknown tags are Invalid."""

    async def authorize(
        self, session: AsyncSession, charge_point_id: str, id_tag: str
    ) -> AuthResult:
        tag = await session.get(IdTag, id_tag)
        if tag is None:
            return AuthResult("Invalid", reason="unknown id tag")
        status = tag.status
        if status == "Accepted" and tag.expiry_date is not None and tag.expiry_date <= utcnow():
            status = "Expired"
        return AuthResult(status, tag.expiry_date, tag.parent_id_tag)


@dataclass(slots=True)
class BootInfo:
    """What a charge point says about itself at boot (strings as sent; '' means unknown)."""

    vendor: str | None = None
    model: str | None = None
    serial_number: str | None = None
    charge_box_serial_number: str | None = None
    firmware_version: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    meter_type: str | None = None
    meter_serial_number: str | None = None
    reason: str | None = None


@dataclass(slots=True)
class StatusReport:
    """A connector status (1.6 StatusNotification; 2.0.1 StatusNotification per EVSE)."""

    connector_id: int
    status: str | None
    error_code: str | None = None
    raw_error_code: str | None = None
    info: str | None = None
    vendor_id: str | None = None
    vendor_error_code: str | None = None
    timestamp: ParsedTime | None = None
    evse_connector_id: int | None = None


@dataclass(slots=True)
class StartRequest:
    """A transaction start. ``ocpp_id`` is None for 1.6 (we issue the id)."""

    connector_id: int | None
    id_tag_raw: str | None
    meter_start: int | None
    timestamp: ParsedTime
    ocpp_id: str | None = None
    reservation_id: int | None = None
    samples: list[Sample] = field(default_factory=list)


@dataclass(slots=True)
class StartResult:
    """The transaction and the authorisation of its tag."""

    transaction_pk: int
    ocpp_id: str
    auth: AuthResult
    duplicate: bool = False
    transaction: Transaction | None = None


@dataclass(slots=True)
class StopRequest:
    """A transaction stop (1.6 StopTransaction; 2.0.1 TransactionEvent Ended)."""

    ocpp_id: str | None
    id_tag_raw: str | None
    meter_stop: int | None
    timestamp: ParsedTime
    reason: str | None = None
    samples: list[Sample] = field(default_factory=list)
    message_id: str | None = None


@dataclass(slots=True)
class StopResult:
    """What the stop did: ``outcome`` is completed | duplicate | conflict | orphan."""

    outcome: str
    transaction_pk: int | None
    energy_wh: int | None


class SessionHooks(Protocol):
    """What the paid-session layer (``csms.sessions``) adds to the OCPP domain. The ``on_*``
    hooks run inside the message's unit of work (database only); ``after_*`` and ``authorize``
    run outside it, before or after the answer."""

    async def authorize(self, cp_id: str, tag: str) -> AuthResult | None:
        """A tag that is not an operator tag: a driver's card (may place a hold)."""
        ...

    async def on_start(self, s: AsyncSession, tx: Transaction, auth: AuthResult) -> AuthResult:
        """Link a new transaction to its session; returns the authorisation to answer."""
        ...

    async def after_start(self, tx: Transaction) -> None:
        """After the StartTransaction is stored."""
        ...

    async def on_status(self, s: AsyncSession, cp_id: str, connector_id: int,
                        status: str | None, at: datetime) -> None:
        """A connector status change."""
        ...

    async def after_meter(self, tx_pk: int, session_id: int, energy_wh: int | None) -> None:
        """After meter values of a transaction with a session are stored."""
        ...

    async def on_stop(self, s: AsyncSession, tx: Transaction) -> None:
        """A transaction was finalised (in the stop's unit of work)."""
        ...

    async def after_stop(self, tx: Transaction) -> None:
        """After the stop is stored."""
        ...


def _blank(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


class ChargingService:
    """Boot, status, authorisation, transactions and meter values of every charge point."""

    def __init__(
        self,
        db: Database,
        metrics: Metrics,
        authorizer: Authorizer | None = None,
        skew_tolerance_s: int = 600,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.authorizer: Authorizer = authorizer or OperatorTagAuthorizer()
        self.skew_tolerance_s = skew_tolerance_s
        self.hooks: SessionHooks | None = None

    async def init_metrics(self) -> None:
        """Set gauges from the database (at start)."""

        async def count(s: AsyncSession) -> int:
            return int(
                await s.scalar(
                    select(func.count())
                    .select_from(Transaction)
                    .where(col(Transaction.status) == "active")
                )
                or 0
            )

        self.metrics.active_transactions.set(await self.db.read(count))

    # -- connection state -----------------------------------------------------------------

    async def mark_connected(self, cp_id: str, version: str, connected: bool) -> None:
        """Record that ``cp_id`` connected (with ``version``) or disconnected."""

        async def unit(s: AsyncSession) -> None:
            values: dict[str, Any] = {"connected": connected, "last_seen": utcnow()}
            if connected:
                values["ocpp_version"] = version
            await s.execute(
                update(ChargePoint).where(col(ChargePoint.id) == cp_id).values(**values)
            )

        await self.db.write(unit)

    async def flush_last_seen(self, seen: dict[str, datetime]) -> None:
        """Write the last-seen times gathered since the previous flush (one commit)."""

        async def unit(s: AsyncSession) -> None:
            for cp_id, when in seen.items():
                await s.execute(
                    update(ChargePoint).where(col(ChargePoint.id) == cp_id).values(last_seen=when)
                )

        if seen:
            await self.db.write(unit)

    async def disconnect_all(self) -> None:
        """At start: no charge point is connected yet."""

        async def unit(s: AsyncSession) -> None:
            await s.execute(
                update(ChargePoint)
                .where(col(ChargePoint.connected).is_(True))
                .values(connected=False)
            )

        await self.db.write(unit)

    # -- provisioning ---------------------------------------------------------------------

    async def boot(self, cp_id: str, info: BootInfo) -> str:
        """Store the boot information; returns the registration status (Accepted)."""

        async def unit(s: AsyncSession) -> str:
            cp = await s.get(ChargePoint, cp_id)
            if cp is None:
                return "Rejected"
            for name in (
                "vendor",
                "model",
                "serial_number",
                "charge_box_serial_number",
                "firmware_version",
                "iccid",
                "imsi",
                "meter_type",
                "meter_serial_number",
            ):
                setattr(cp, name, _blank(getattr(info, name)))
            cp.boot_reason = info.reason
            cp.last_boot_at = utcnow()
            cp.last_seen = cp.last_boot_at
            return "Accepted"

        return await self.db.write(unit)

    async def status(self, cp_id: str, report: StatusReport) -> None:
        """Store a connector's status (idempotent)."""

        async def unit(s: AsyncSession) -> None:
            row = await s.get(Connector, (cp_id, report.connector_id))
            if row is None:
                row = Connector(charge_point_id=cp_id, connector_id=report.connector_id)
                s.add(row)
            row.status = report.status
            row.error_code = report.error_code
            row.raw_error_code = report.raw_error_code
            row.info = report.info
            row.vendor_id = report.vendor_id
            row.vendor_error_code = report.vendor_error_code
            row.evse_connector_id = report.evse_connector_id
            if report.timestamp is not None:
                row.status_timestamp = report.timestamp.value
                row.status_timestamp_raw = report.timestamp.raw
            row.updated_at = utcnow()
            if self.hooks is not None:
                at = effective_time(report.timestamp, row.updated_at) \
                    if report.timestamp is not None else row.updated_at
                await self.hooks.on_status(s, cp_id, report.connector_id, report.status, at)

        await self.db.write(unit)

    async def record_event(
        self, cp_id: str, kind: str, detail: dict[str, Any], transaction_pk: int | None = None
    ) -> None:
        """Keep an event for operators (firmware/diagnostics status, data transfer, anomalies)."""

        async def unit(s: AsyncSession) -> None:
            s.add(
                OcppEvent(
                    charge_point_id=cp_id, kind=kind, detail=detail, transaction_pk=transaction_pk
                )
            )
            if kind in ("firmware_status", "diagnostics_status"):
                column = kind
                await s.execute(
                    update(ChargePoint)
                    .where(col(ChargePoint.id) == cp_id)
                    .values({column: detail.get("status")})
                )

        await self.db.write(unit)

    # -- authorisation --------------------------------------------------------------------

    async def authorize(self, cp_id: str, id_tag_raw: object) -> AuthResult:
        """Authorise an id tag (canonicalised first)."""
        tag = canonical_id_tag(id_tag_raw)
        if tag is None:
            return AuthResult("Invalid", reason="empty id tag")

        async def fn(s: AsyncSession) -> AuthResult:
            return await self.authorizer.authorize(s, cp_id, tag)

        result = await self.db.read(fn)
        if result.status == "Invalid" and self.hooks is not None:
            result = await self.hooks.authorize(cp_id, tag) or result
        if result.status != "Accepted":
            log.info(
                "%s: id tag %s not accepted: %s (%s)", cp_id, tag, result.status, result.reason
            )
        return result

    # -- transactions ---------------------------------------------------------------------

    async def start_transaction(self, cp_id: str, req: StartRequest) -> StartResult:
        """Record a transaction start; a replayed start returns the same transaction."""
        tag = canonical_id_tag(req.id_tag_raw)

        async def unit(s: AsyncSession) -> StartResult:
            auth = (
                (await self.authorizer.authorize(s, cp_id, tag)) if tag else AuthResult("Invalid")
            )
            dup_q = select(Transaction).where(
                col(Transaction.charge_point_id) == cp_id,
                col(Transaction.connector_id) == req.connector_id,
                col(Transaction.started_at_raw) == req.timestamp.raw,
                col(Transaction.meter_start) == req.meter_start,
                col(Transaction.status) != "orphan",
            )
            if req.ocpp_id is not None:
                dup_q = select(Transaction).where(
                    col(Transaction.charge_point_id) == cp_id,
                    col(Transaction.ocpp_id) == req.ocpp_id,
                    col(Transaction.status) != "orphan",
                )
            existing = (await s.execute(dup_q.limit(1))).scalars().first()
            if existing is not None and existing.id is not None:
                if existing.session_id is not None:
                    auth = AuthResult("Accepted")
                return StartResult(existing.id, existing.ocpp_id or str(existing.id), auth, True)
            cp = await s.get(ChargePoint, cp_id)
            received = utcnow()
            state = new_state(
                req.meter_start,
                effective_time(req.timestamp, received),
                cp.session_relative_meter if cp is not None else None,
            )
            if req.samples:
                state = observe(state, req.samples)
            tx = Transaction(
                charge_point_id=cp_id,
                connector_id=req.connector_id,
                ocpp_id=req.ocpp_id,
                id_tag=tag,
                id_tag_raw=None if req.id_tag_raw is None else str(req.id_tag_raw),
                meter_start=req.meter_start,
                started_at=effective_time(req.timestamp, received),
                started_at_raw=req.timestamp.raw,
                start_received_at=received,
                meter_state=state.to_dict(),
            )
            s.add(tx)
            await s.flush()
            assert tx.id is not None
            if tx.ocpp_id is None:
                tx.ocpp_id = str(tx.id)
            if self.hooks is not None:
                auth = await self.hooks.on_start(s, tx, auth)
            flags = [] if req.timestamp.trusted else ["untrusted_time"]
            if auth.status != "Accepted":
                flags.append(f"auth_{auth.status.lower()}")
            tx.flags = flags

            if req.samples:
                await self._insert_samples(s, cp_id, req.connector_id, tx.id, req.samples)
            return StartResult(tx.id, tx.ocpp_id, auth, transaction=tx)

        result = await self.db.write(unit)
        if not result.duplicate:
            self.metrics.active_transactions.inc()
            if self.hooks is not None and result.transaction is not None:
                await self.hooks.after_start(result.transaction)
        return result

    async def meter_values(
        self, cp_id: str, connector_id: int | None, ocpp_id: str | None, samples: list[Sample]
    ) -> int | None:
        """Store samples; with a known transaction, update its energy. Returns the transaction's
        energy so far (Wh) or None."""
        if not samples:
            return None

        async def unit(s: AsyncSession) -> tuple[int | None, int | None, int | None]:
            tx = await self._find_tx(s, cp_id, ocpp_id) if ocpp_id is not None else None
            tx_pk = tx.id if tx is not None else None
            if tx is not None and tx.status == "active":
                state = observe(EnergyState.from_dict(tx.meter_state), samples)
                tx.meter_state = state.to_dict()
                await self._learn_session_relative(s, cp_id, state)
            await self._insert_samples(s, cp_id, connector_id, tx_pk, samples)
            if tx is not None and tx.status == "active":
                energy = energy_so_far(EnergyState.from_dict(tx.meter_state))
                return energy, tx.id, tx.session_id
            return None, None, None

        energy, tx_pk, session_id = await self.db.write(unit)
        if session_id is not None and tx_pk is not None and self.hooks is not None:
            await self.hooks.after_meter(tx_pk, session_id, energy)
        return energy

    async def stop_transaction(self, cp_id: str, req: StopRequest) -> StopResult:
        """Finalise a transaction (idempotent); unknown ids become orphans for review."""

        async def unit(s: AsyncSession) -> tuple[StopResult, Transaction | None]:
            received = utcnow()
            tx = await self._find_tx(s, cp_id, req.ocpp_id) if req.ocpp_id is not None else None
            flags: list[str] = []
            if tx is None and (
                req.ocpp_id is None or req.ocpp_id in PLACEHOLDER_IDS or req.ocpp_id.startswith("-")
            ):
                tx = await self._match_placeholder(s, cp_id, req)
                if tx is not None:
                    flags.append("placeholder_id")
            if tx is None:
                return await self._orphan(s, cp_id, req, received), None
            if tx.status != "active":
                same = tx.meter_stop == req.meter_stop and tx.stopped_at_raw == req.timestamp.raw
                kind = "stop_duplicate" if same else "stop_conflict"
                s.add(
                    OcppEvent(
                        charge_point_id=cp_id,
                        kind=kind,
                        transaction_pk=tx.id,
                        detail={
                            "ocpp_id": req.ocpp_id,
                            "meter_stop": req.meter_stop,
                            "timestamp": req.timestamp.raw,
                            "reason": req.reason,
                            "message_id": req.message_id,
                        },
                    )
                )
                if not same and "stop_conflict" not in tx.flags:
                    tx.flags = [*tx.flags, "stop_conflict"]
                return StopResult("duplicate" if same else "conflict", tx.id, tx.energy_wh), None
            state = EnergyState.from_dict(tx.meter_state)
            if req.samples:
                state = observe(state, req.samples)
                await self._insert_samples(s, cp_id, tx.connector_id, tx.id, req.samples)
            stopped_at = effective_time(req.timestamp, received)
            energy = settle_energy(state, req.meter_stop, stopped_at=stopped_at)
            await self._learn_session_relative(s, cp_id, state)
            if tx.started_at is not None and stopped_at < tx.started_at:
                stopped_at = received
                flags.append("stop_before_start")
            if not req.timestamp.trusted:
                flags.append("untrusted_time")
            tx.meter_state = state.to_dict()
            tx.meter_stop = req.meter_stop
            tx.energy_wh = energy.energy_wh
            tx.stopped_at = stopped_at
            tx.stopped_at_raw = req.timestamp.raw
            tx.stop_received_at = received
            tx.stop_reason = req.reason
            tx.status = "completed"
            tx.flags = sorted(set(tx.flags) | set(flags) | set(energy.flags))
            if self.hooks is not None:
                await self.hooks.on_stop(s, tx)
            return StopResult("completed", tx.id, energy.energy_wh), tx

        result, tx = await self.db.write(unit)
        if result.outcome == "completed" and tx is not None:
            self.metrics.active_transactions.dec()
            self.metrics.energy_delivered.inc(max(result.energy_wh or 0, 0))
            if self.hooks is not None:
                await self.hooks.after_stop(tx)
        return result

    async def _find_tx(self, s: AsyncSession, cp_id: str, ocpp_id: str) -> Transaction | None:
        rows = (
            (
                await s.execute(
                    select(Transaction)
                    .where(
                        col(Transaction.charge_point_id) == cp_id,
                        col(Transaction.ocpp_id) == ocpp_id,
                        col(Transaction.status) != "orphan",
                    )
                    .order_by(col(Transaction.id).desc())
                    .limit(1)
                )
            )
            .scalars()
            .first()
        )
        return rows

    async def _match_placeholder(
        self, s: AsyncSession, cp_id: str, req: StopRequest
    ) -> Transaction | None:
        """A stop with id -1/0: the single active transaction of the charge point (with the
        same id tag when one is given), else None."""
        q = select(Transaction).where(
            col(Transaction.charge_point_id) == cp_id, col(Transaction.status) == "active"
        )
        tag = canonical_id_tag(req.id_tag_raw)
        if tag is not None:
            q = q.where(col(Transaction.id_tag) == tag)
        rows = list((await s.execute(q.limit(2))).scalars())
        return rows[0] if len(rows) == 1 else None

    async def _orphan(
        self, s: AsyncSession, cp_id: str, req: StopRequest, received: datetime
    ) -> StopResult:
        existing = (
            (
                await s.execute(
                    select(Transaction)
                    .where(
                        col(Transaction.charge_point_id) == cp_id,
                        col(Transaction.ocpp_id) == req.ocpp_id,
                        col(Transaction.status) == "orphan",
                    )
                    .limit(1)
                )
            )
            .scalars()
            .first()
        )
        detail = {
            "ocpp_id": req.ocpp_id,
            "meter_stop": req.meter_stop,
            "timestamp": req.timestamp.raw,
            "reason": req.reason,
            "id_tag": req.id_tag_raw,
            "message_id": req.message_id,
        }
        if existing is not None:
            s.add(
                OcppEvent(
                    charge_point_id=cp_id,
                    kind="stop_duplicate",
                    transaction_pk=existing.id,
                    detail=detail,
                )
            )
            return StopResult("duplicate", existing.id, None)
        flags = ["orphan", "review"]
        if req.ocpp_id in PLACEHOLDER_IDS or (req.ocpp_id or "").startswith("-"):
            flags.append("placeholder_id")
        tx = Transaction(
            charge_point_id=cp_id,
            ocpp_id=req.ocpp_id,
            status="orphan",
            id_tag=canonical_id_tag(req.id_tag_raw),
            id_tag_raw=None if req.id_tag_raw is None else str(req.id_tag_raw),
            meter_stop=req.meter_stop,
            energy_wh=None,
            stopped_at=effective_time(req.timestamp, received),
            stopped_at_raw=req.timestamp.raw,
            stop_received_at=received,
            stop_reason=req.reason,
            flags=flags,
        )
        s.add(tx)
        await s.flush()
        s.add(
            OcppEvent(
                charge_point_id=cp_id, kind="stop_unknown", transaction_pk=tx.id, detail=detail
            )
        )
        if req.samples:
            await self._insert_samples(s, cp_id, None, tx.id, req.samples)
        log.warning(
            "%s: StopTransaction for unknown transaction %s kept as orphan %s",
            cp_id,
            req.ocpp_id,
            tx.id,
        )
        return StopResult("orphan", tx.id, None)

    async def _learn_session_relative(
        self, s: AsyncSession, cp_id: str, state: EnergyState
    ) -> None:
        if state.session_relative is not None:
            await s.execute(
                update(ChargePoint)
                .where(
                    col(ChargePoint.id) == cp_id,
                    col(ChargePoint.session_relative_meter).is_distinct_from(
                        state.session_relative
                    ),
                )
                .values(session_relative_meter=state.session_relative)
            )

    async def _insert_samples(
        self,
        s: AsyncSession,
        cp_id: str,
        connector_id: int | None,
        tx_pk: int | None,
        samples: list[Sample],
    ) -> None:
        received = utcnow()
        rows = [
            {
                "charge_point_id": cp_id,
                "connector_id": connector_id,
                "transaction_pk": tx_pk,
                "measurand": x.measurand,
                "phase": x.phase,
                "location": x.location,
                "context": x.context,
                "unit": x.unit,
                "value": None if x.value is None else float(x.value),
                "raw_value": x.raw_value,
                "raw_unit": x.raw_unit,
                "signed_data": x.signed_data,
                "timestamp": x.timestamp.value,
                "timestamp_raw": x.timestamp.raw,
                "timestamp_trusted": x.timestamp.trusted,
                "received_at": received,
            }
            for x in samples
        ]
        await s.execute(insert(MeterSample.__table__), rows)  # type: ignore[attr-defined]
