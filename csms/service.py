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

import json
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import orjson
from sqlalchemy import String, bindparam, cast, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import instance_dict, set_committed_value
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlalchemy.orm.util import identity_key
from sqlmodel import col

from csms.db import Batch, Database, Statement
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
        return self._result(tag.status, tag.expiry_date, tag.parent_id_tag)

    async def authorize_direct(self, batch: Batch, charge_point_id: str, id_tag: str
                               ) -> AuthResult:
        """:meth:`authorize` inside the writer's batch, without the ORM (same answer)."""
        row = await batch.fetchone(_SELECT_TAG, {"tag": id_tag})
        if row is None:
            return AuthResult("Invalid", reason="unknown id tag")
        return self._result(*row)

    @staticmethod
    def _result(status: str, expiry_date: datetime | None, parent: str | None) -> AuthResult:
        if status == "Accepted" and expiry_date is not None and expiry_date <= utcnow():
            status = "Expired"
        return AuthResult(status, expiry_date, parent)


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


# -- direct statements of the hot path (csms.db.Statement) ----------------------------------

_TX = Transaction.__table__  # type: ignore[attr-defined]
_MS = MeterSample.__table__  # type: ignore[attr-defined]
_CP = ChargePoint.__table__  # type: ignore[attr-defined]
_CONN = Connector.__table__  # type: ignore[attr-defined]
_TAG = IdTag.__table__  # type: ignore[attr-defined]


def _json_text(value: Any) -> str | None:
    """JSON column value as text: orjson (10x json.dumps), json.dumps for what orjson refuses
    (integers beyond 64 bits)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


_JSON = {"meter_state": _json_text, "flags": _json_text}
_TX_COLUMNS = tuple(c.key for c in _TX.c)
_TX_INSERT_COLUMNS = tuple(k for k in _TX_COLUMNS if k != "id")
_SAMPLE_COLUMNS = tuple(c.key for c in _MS.c if c.key != "id")
_STOP_COLUMNS = ("meter_state", "meter_stop", "energy_wh", "stopped_at", "stopped_at_raw",
                 "stop_received_at", "stop_reason", "status", "flags")
_CONNECTOR_COLUMNS = ("charge_point_id", "connector_id", "evse_connector_id", "status",
                      "error_code", "raw_error_code", "info", "vendor_id", "vendor_error_code",
                      "updated_at")
_CONNECTOR_TIME_COLUMNS = ("status_timestamp", "status_timestamp_raw")


def _by_pk(table: Any, *columns: str) -> Any:
    return (
        update(table)
        .where(table.c.id == bindparam("pk"))
        .values({c: bindparam(c) for c in columns})
    )


_SELECT_TAG = Statement(
    select(_TAG.c.status, _TAG.c.expiry_date, _TAG.c.parent_id_tag).where(
        _TAG.c.id_tag == bindparam("tag")
    ),
    "select id_tag",
)
_SELECT_TX = Statement(
    select(*_TX.c)
    .where(
        _TX.c.charge_point_id == bindparam("cp"),
        _TX.c.ocpp_id == bindparam("ocpp_id"),
        _TX.c.status != "orphan",
    )
    .order_by(_TX.c.id.desc())
    .limit(1),
    "select transaction",
)
_SELECT_DUPLICATE_START = Statement(
    select(_TX.c.id, _TX.c.ocpp_id, _TX.c.session_id)
    .where(
        _TX.c.charge_point_id == bindparam("cp"),
        _TX.c.connector_id.is_not_distinct_from(bindparam("connector_id")),
        _TX.c.started_at_raw.is_not_distinct_from(bindparam("started_at_raw")),
        _TX.c.meter_start.is_not_distinct_from(bindparam("meter_start")),
        _TX.c.status != "orphan",
    )
    .limit(1),
    "select duplicate start",
)
_SELECT_DUPLICATE_START_ID = Statement(
    select(_TX.c.id, _TX.c.ocpp_id, _TX.c.session_id)
    .where(
        _TX.c.charge_point_id == bindparam("cp"),
        _TX.c.ocpp_id == bindparam("ocpp_id"),
        _TX.c.status != "orphan",
    )
    .limit(1),
    "select duplicate start by id",
)


def _insert_start(own_id: bool) -> Callable[[str], Any]:
    """A transaction start, inserted unless it is a replay of one already stored (the
    duplicate check of :meth:`ChargingService.start_transaction` in the same statement: one
    round trip). RETURNING the new id and ``ocpp_id``; no row for a replay.

    ``own_id`` (OCPP 1.6): ``ocpp_id`` is the new id as text. PostgreSQL draws the id from the
    sequence inside the INSERT; elsewhere ``ocpp_id`` comes back NULL and a (deferred) UPDATE
    sets it. A replay is the same charge point, connector, raw start time and meterStart
    (1.6) or the same charge point and ``ocpp_id`` (2.0.1), among non-orphans.
    """

    def make(dialect: str) -> Any:
        p = {c: bindparam(c, type_=_TX.c[c].type) for c in _TX_INSERT_COLUMNS}
        c = _TX.c
        if own_id:
            replay = [
                c.charge_point_id == p["charge_point_id"],
                c.connector_id.is_not_distinct_from(p["connector_id"]),
                c.started_at_raw.is_not_distinct_from(p["started_at_raw"]),
                c.meter_start.is_not_distinct_from(p["meter_start"]),
                c.status != "orphan",
            ]
        else:
            replay = [
                c.charge_point_id == p["charge_point_id"],
                c.ocpp_id == p["ocpp_id"],
                c.status != "orphan",
            ]
        is_new = ~exists().where(*replay)
        if own_id and dialect == "postgresql":
            columns = [k for k in _TX_INSERT_COLUMNS if k != "ocpp_id"]
            new = (
                select(func.nextval(func.pg_get_serial_sequence(_TX.name, "id")).label("id"))
                .where(is_new)
                .subquery("new")
            )
            values = select(new.c.id, cast(new.c.id, String), *(p[k] for k in columns))
            names = ["id", "ocpp_id", *columns]
        else:
            values = select(*(p[k] for k in _TX_INSERT_COLUMNS)).where(is_new)
            names = list(_TX_INSERT_COLUMNS)
        return insert(_TX).from_select(names, values).returning(c.id, c.ocpp_id)

    return make


_INSERT_START = Statement(_insert_start(False), "insert transaction start", _JSON)
_INSERT_START_OWN_ID = Statement(_insert_start(True), "insert transaction start (1.6)", _JSON)
_SET_OCPP_ID = Statement(_by_pk(_TX, "ocpp_id"), "update transaction ocpp_id")
_SET_METER_STATE = Statement(_by_pk(_TX, "meter_state"), "update transaction meter_state", _JSON)
_SET_STOPPED = Statement(_by_pk(_TX, *_STOP_COLUMNS), "update transaction stop", _JSON)
_INSERT_SAMPLES = Statement(
    insert(_MS).values({c: bindparam(c) for c in _SAMPLE_COLUMNS}), "insert meter_sample"
)
_SELECT_RELATIVE = Statement(
    select(_CP.c.session_relative_meter).where(_CP.c.id == bindparam("cp")),
    "select charge_point session_relative_meter",
)
_SET_RELATIVE = Statement(
    update(_CP)
    .where(
        _CP.c.id == bindparam("cp"),
        _CP.c.session_relative_meter.is_distinct_from(bindparam("value")),
    )
    .values(session_relative_meter=bindparam("new_value")),
    "update charge_point session_relative_meter",
)
_SET_LAST_SEEN = Statement(
    update(_CP).where(_CP.c.id == bindparam("cp")).values(last_seen=bindparam("last_seen")),
    "update charge_point last_seen",
)
_SET_CONNECTED = Statement(
    update(_CP)
    .where(_CP.c.id == bindparam("cp"))
    .values(connected=bindparam("connected"), last_seen=bindparam("last_seen"),
            ocpp_version=bindparam("ocpp_version")),
    "update charge_point connected",
)
_SET_DISCONNECTED = Statement(
    update(_CP)
    .where(_CP.c.id == bindparam("cp"))
    .values(connected=bindparam("connected"), last_seen=bindparam("last_seen")),
    "update charge_point disconnected",
)


def _upsert_connector(with_time: bool) -> Statement:
    columns = _CONNECTOR_COLUMNS + (_CONNECTOR_TIME_COLUMNS if with_time else ())

    def make(dialect: str) -> Any:
        stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(_CONN).values(
            {c: bindparam(c) for c in columns}
        )
        return stmt.on_conflict_do_update(
            index_elements=[_CONN.c.charge_point_id, _CONN.c.connector_id],
            set_={c: stmt.excluded[c] for c in columns[2:]},
        )

    return Statement(make, "upsert connector" + (" with time" if with_time else ""))


_UPSERT_CONNECTOR = _upsert_connector(False)
_UPSERT_CONNECTOR_TIMED = _upsert_connector(True)

_TX_MANAGER = manager_of_class(Transaction)
_UNKNOWN: Any = object()
MAX_CACHED_TRANSACTIONS = 100_000


@dataclass(slots=True)
class _Active:
    """An active transaction as stored (every column) and its parsed energy state."""

    row: dict[str, Any]
    state: EnergyState


def _sample_rows(
    cp_id: str, connector_id: int | None, tx_pk: int | None, samples: list[Sample],
    received: datetime,
) -> list[dict[str, Any]]:
    """``meter_sample`` rows for normalised samples received at ``received``."""
    return [
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


def _sync_session(b: Batch, row: dict[str, Any], columns: tuple[str, ...]) -> None:
    """If the batch's session holds this transaction (an ORM unit loaded it), it sees what a
    direct statement just wrote."""
    identity_map = b.session.sync_session.identity_map
    if len(identity_map):
        obj = identity_map.get(identity_key(Transaction, row["id"]))
        if obj is not None:
            for c in columns:
                set_committed_value(obj, c, row[c])


def _blank(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


MAX_EVENT_DETAIL = 64 * 1024
"""Largest event detail stored as sent (bytes of JSON)."""


def _bounded(detail: dict[str, Any]) -> dict[str, Any]:
    """``detail`` itself when small, else its first ``MAX_EVENT_DETAIL`` bytes of JSON as text
    with ``truncated: true`` and the original size."""
    text = orjson.dumps(detail, default=str)
    if len(text) <= MAX_EVENT_DETAIL:
        return detail
    return {"truncated": True, "size": len(text),
            "head": text[:MAX_EVENT_DETAIL].decode(errors="replace")}


class ChargingService:
    """Boot, status, authorisation, transactions and meter values of every charge point.

    The hot messages (StatusNotification, StartTransaction, MeterValues, StopTransaction) are
    direct units of work (:meth:`csms.db.Database.write_batch`): a few precompiled statements
    each, writes deferred into the group commit's shared ``executemany``. This process is the
    only writer, so active transactions (every column plus the parsed
    :class:`~csms.metering.EnergyState`) and each charge point's learned
    ``session_relative_meter`` are kept in memory: a MeterValues does not read its transaction
    back, and writes only its samples and the new ``meter_state`` (so the energy so far is
    durable: a restart mid-transaction reloads it). Whatever a batch changed in memory is
    forgotten if the batch rolls back (reloaded from the database on next use). Rare cases
    (unknown or repeated stops, placeholder ids, orphans) take the ORM path.
    """

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
        self._active: dict[tuple[str, str], _Active] = {}
        self._relative: dict[str, bool | None] = {}
        self.lifetime_registers: set[str] = set()
        """Charge points whose energy readings are always the lifetime register (breaker
        sites): never learned to be session-relative from a session that began at 0 Wh."""
        self.watchers: dict[
            str, dict[object, Callable[[int | None, str | None, list[Sample] | None], None]]]
        self.watchers = {}
        """Charge points whose statuses and meter values other components follow (an OCPP
        relay that is a breaker's driver, the site load manager): ``watchers[cp][owner]`` is
        called with (connector id, status, samples) after the message is stored; one entry
        per owner, so watching again replaces instead of adding."""
        self.start_listeners: list[
            Callable[[str, StartRequest, StartResult], Awaitable[None]]] = []
        """Called with (charge point, request, result) after a new transaction start is stored
        and before the charger is answered (``csms.operations`` marks a reservation Used)."""
        self.stop_listeners: list[Callable[[str, StopResult], Awaitable[None]]] = []
        """Called with (charge point, result) after a transaction was finalised and stored
        (outcome completed), after the session hooks (``csms.load`` frees the capacity)."""
        # Other code (hooks, 2.0.1 event log, ORM paths) writes transactions and charge points
        # through the ORM: forget what we keep of those rows (reloaded on next use).
        db.watch(Transaction, self._transactions_written)
        db.watch(ChargePoint, self._charge_points_written)

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
        self._relative.pop(cp_id, None)  # re-read once per connection

        async def unit(b: Batch) -> None:
            params: dict[str, Any] = {"cp": cp_id, "connected": connected,
                                      "last_seen": utcnow()}
            if connected:
                params["ocpp_version"] = version
            await b.defer(_SET_CONNECTED if connected else _SET_DISCONNECTED, params)

        await self.db.write_batch(unit)

    async def flush_last_seen(self, seen: dict[str, datetime]) -> None:
        """Write the last-seen times gathered since the previous flush (one commit, one
        ``executemany``)."""

        async def unit(b: Batch) -> None:
            await b.defer_many(
                _SET_LAST_SEEN, [{"cp": cp_id, "last_seen": when} for cp_id, when in seen.items()]
            )

        if seen:
            await self.db.write_batch(unit)

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
        """Store a connector's status (idempotent): one upsert, deferred into the batch."""

        async def unit(b: Batch) -> None:
            updated_at = utcnow()
            params: dict[str, Any] = {
                "charge_point_id": cp_id,
                "connector_id": report.connector_id,
                "evse_connector_id": report.evse_connector_id,
                "status": report.status,
                "error_code": report.error_code,
                "raw_error_code": report.raw_error_code,
                "info": report.info,
                "vendor_id": report.vendor_id,
                "vendor_error_code": report.vendor_error_code,
                "updated_at": updated_at,
            }
            if report.timestamp is not None:
                params["status_timestamp"] = report.timestamp.value
                params["status_timestamp_raw"] = report.timestamp.raw
                await b.defer(_UPSERT_CONNECTOR_TIMED, params)
            else:
                await b.defer(_UPSERT_CONNECTOR, params)
            if self.hooks is not None:
                at = effective_time(report.timestamp, updated_at) \
                    if report.timestamp is not None else updated_at
                await self.hooks.on_status(
                    await b.orm(), cp_id, report.connector_id, report.status, at
                )

        await self.db.write_batch(unit)
        if self.watchers and (watchers := self.watchers.get(cp_id)):
            for watcher in tuple(watchers.values()):
                watcher(report.connector_id, report.status, None)

    async def record_event(
        self, cp_id: str, kind: str, detail: dict[str, Any], transaction_pk: int | None = None
    ) -> None:
        """Keep an event for operators (firmware/diagnostics status, data transfer, anomalies).
        A detail larger than ``MAX_EVENT_DETAIL`` bytes of JSON is kept truncated (a charger must
        not fill the disk with DataTransfer payloads)."""
        detail = _bounded(detail)

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

    async def _authorize_in(self, b: Batch, cp_id: str, tag: str) -> AuthResult:
        """The authorizer inside the writer's batch (direct when it can)."""
        direct = getattr(self.authorizer, "authorize_direct", None)
        if direct is not None:
            return await direct(b, cp_id, tag)  # type: ignore[no-any-return]
        return await self.authorizer.authorize(await b.orm(), cp_id, tag)

    # -- transactions ---------------------------------------------------------------------

    async def start_transaction(self, cp_id: str, req: StartRequest) -> StartResult:
        """Record a transaction start; a replayed start returns the same transaction."""
        tag = canonical_id_tag(req.id_tag_raw)

        async def unit(b: Batch) -> StartResult:
            auth = await self._authorize_in(b, cp_id, tag) if tag else AuthResult("Invalid")
            hint = await self._relative_hint(b, cp_id)
            received = utcnow()
            started_at = effective_time(req.timestamp, received)
            state = new_state(req.meter_start, started_at, hint)
            if req.samples:
                state = observe(state, req.samples)
            row: dict[str, Any] = {
                "ocpp_id": req.ocpp_id,
                "charge_point_id": cp_id,
                "connector_id": req.connector_id,
                "id_tag": tag,
                "id_tag_raw": None if req.id_tag_raw is None else str(req.id_tag_raw),
                "status": "active",
                "meter_start": req.meter_start,
                "meter_stop": None,
                "energy_wh": None,
                "session_id": None,
                "meter_state": state.to_dict(),
                "started_at": started_at,
                "started_at_raw": req.timestamp.raw,
                "start_received_at": received,
                "stopped_at": None,
                "stopped_at_raw": None,
                "stop_received_at": None,
                "stop_reason": None,
                "flags": self._start_flags(req, auth),
                "created_at": received,
            }
            inserted = await b.fetchone(
                _INSERT_START if req.ocpp_id is not None else _INSERT_START_OWN_ID, row
            )
            if inserted is None:  # a replay: answer with the stored transaction
                if req.ocpp_id is None:
                    existing = await b.fetchone(_SELECT_DUPLICATE_START, {
                        "cp": cp_id, "connector_id": req.connector_id,
                        "started_at_raw": req.timestamp.raw, "meter_start": req.meter_start})
                else:
                    existing = await b.fetchone(_SELECT_DUPLICATE_START_ID,
                                                {"cp": cp_id, "ocpp_id": req.ocpp_id})
                assert existing is not None
                pk, ocpp_id, session_id = existing
                if session_id is not None:
                    auth = AuthResult("Accepted")
                return StartResult(pk, ocpp_id or str(pk), auth, True)
            pk = row["id"] = int(inserted[0])
            row["ocpp_id"] = inserted[1]
            if row["ocpp_id"] is None:  # 1.6: our id is the transactionId
                row["ocpp_id"] = str(pk)
                await b.defer(_SET_OCPP_ID, {"pk": pk, "ocpp_id": row["ocpp_id"]})
            key = (cp_id, str(row["ocpp_id"]))
            self._remember(key, _Active(row, state))
            b.on_rollback(partial(self._forget, key))
            tx: Transaction | None = None
            if self.hooks is not None:
                s = await b.orm()
                tx = self._tx_object(s, row)
                auth = await self.hooks.on_start(s, tx, auth)
                flags = self._start_flags(req, auth)
                if flags != tx.flags:
                    tx.flags = flags  # the session writes it (with whatever the hook changed)
                row["flags"] = tx.flags
                row["session_id"] = tx.session_id
            if req.samples:
                await b.defer_many(
                    _INSERT_SAMPLES,
                    _sample_rows(cp_id, req.connector_id, pk, req.samples, received),
                )
            return StartResult(pk, str(row["ocpp_id"]), auth, transaction=tx)

        result = await self.db.write_batch(unit)
        if not result.duplicate:
            self.metrics.active_transactions.inc()
            if self.hooks is not None and result.transaction is not None:
                await self.hooks.after_start(result.transaction)
            for listener in self.start_listeners:
                await listener(cp_id, req, result)
        return result

    @staticmethod
    def _start_flags(req: StartRequest, auth: AuthResult) -> list[str]:
        flags = [] if req.timestamp.trusted else ["untrusted_time"]
        if auth.status != "Accepted":
            flags.append(f"auth_{auth.status.lower()}")
        return flags

    async def meter_values(
        self, cp_id: str, connector_id: int | None, ocpp_id: str | None, samples: list[Sample]
    ) -> int | None:
        """Store samples; with a known transaction, update its energy. Returns the transaction's
        energy so far (Wh) or None."""
        return await self.record_meter_values(cp_id, connector_id, ocpp_id, samples, True)

    async def record_meter_values(
        self,
        cp_id: str,
        connector_id: int | None,
        ocpp_id: str | None,
        samples: list[Sample],
        want_energy: bool = False,
    ) -> int | None:
        """:meth:`meter_values`; the energy so far (~12 us of Decimal arithmetic) is computed
        only with ``want_energy`` or when a paid session needs it, else None is returned."""
        if not samples:
            return None

        async def unit(b: Batch) -> tuple[int | None, int | None, int | None]:
            received = utcnow()
            tx_pk, active = (
                await self._lookup(b, cp_id, ocpp_id) if ocpp_id is not None else (None, None)
            )
            result: tuple[int | None, int | None, int | None] = (None, None, None)
            if active is not None:
                state = observe(active.state, samples)
                meter_state = active.row["meter_state"] = state.to_dict()
                await self._learn_relative(b, cp_id, state)
                await b.defer(_SET_METER_STATE, {"pk": tx_pk, "meter_state": meter_state})
                _sync_session(b, active.row, ("meter_state",))
                session_id = active.row["session_id"]
                wanted = want_energy or (session_id is not None and self.hooks is not None)
                result = (energy_so_far(state) if wanted else None, tx_pk, session_id)
            await b.defer_many(
                _INSERT_SAMPLES, _sample_rows(cp_id, connector_id, tx_pk, samples, received)
            )
            return result

        energy, tx_pk, session_id = await self.db.write_batch(unit)
        if self.watchers and (watchers := self.watchers.get(cp_id)):
            for watcher in tuple(watchers.values()):
                watcher(connector_id, None, samples)
        if session_id is not None and tx_pk is not None and self.hooks is not None:
            await self.hooks.after_meter(tx_pk, session_id, energy)
        return energy

    async def stop_transaction(self, cp_id: str, req: StopRequest) -> StopResult:
        """Finalise a transaction (idempotent); unknown ids become orphans for review."""

        async def unit(b: Batch) -> tuple[StopResult, Transaction | None]:
            received = utcnow()
            active = None
            if req.ocpp_id is not None:
                _pk, active = await self._lookup(b, cp_id, req.ocpp_id)
            if active is None:  # unknown, repeated or placeholder: the ORM path
                return await self._stop_other(b, cp_id, req, received)
            key = (cp_id, req.ocpp_id or "")
            b.on_rollback(partial(self._forget, key))
            self._active.pop(key, None)
            row, state = active.row, active.state
            flags: list[str] = []
            if req.samples:
                state = observe(state, req.samples)
                await b.defer_many(_INSERT_SAMPLES, _sample_rows(
                    cp_id, row["connector_id"], row["id"], req.samples, received))
            stopped_at = effective_time(req.timestamp, received)
            energy = settle_energy(state, req.meter_stop, stopped_at=stopped_at)
            await self._learn_relative(b, cp_id, state)
            if row["started_at"] is not None and stopped_at < row["started_at"]:
                stopped_at = received
                flags.append("stop_before_start")
            if not req.timestamp.trusted:
                flags.append("untrusted_time")
            row.update(
                meter_state=state.to_dict(),
                meter_stop=req.meter_stop,
                energy_wh=energy.energy_wh,
                stopped_at=stopped_at,
                stopped_at_raw=req.timestamp.raw,
                stop_received_at=received,
                stop_reason=req.reason,
                status="completed",
                flags=sorted(set(row["flags"]) | set(flags) | set(energy.flags)),
            )
            await b.defer(_SET_STOPPED, {"pk": row["id"], **{c: row[c] for c in _STOP_COLUMNS}})
            tx: Transaction | None = None
            if self.hooks is not None:
                s = await b.orm()
                tx = self._tx_object(s, row)
                await self.hooks.on_stop(s, tx)
            else:
                _sync_session(b, row, _STOP_COLUMNS)
            return StopResult("completed", row["id"], energy.energy_wh), tx

        result, tx = await self.db.write_batch(unit)
        if result.outcome == "completed":
            self.metrics.active_transactions.dec()
            self.metrics.energy_delivered.inc(max(result.energy_wh or 0, 0))
            if self.hooks is not None and tx is not None:
                await self.hooks.after_stop(tx)
            for stopped in self.stop_listeners:
                await stopped(cp_id, result)
        return result

    async def _stop_other(
        self, b: Batch, cp_id: str, req: StopRequest, received: datetime
    ) -> tuple[StopResult, Transaction | None]:
        """A stop whose id is not an active transaction: repeated, placeholder or unknown."""
        s = await b.orm()
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
        # an active transaction found by its placeholder id: no longer active after this
        key = (cp_id, tx.ocpp_id or "")
        self._active.pop(key, None)
        b.on_rollback(partial(self._forget, key))
        state = EnergyState.from_dict(tx.meter_state)
        if req.samples:
            state = observe(state, req.samples)
            await self._insert_samples(s, cp_id, tx.connector_id, tx.id, req.samples)
        stopped_at = effective_time(req.timestamp, received)
        energy = settle_energy(state, req.meter_stop, stopped_at=stopped_at)
        await self._learn_relative(b, cp_id, state)
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
            await self.hooks.on_stop(await b.orm(), tx)
        return StopResult("completed", tx.id, energy.energy_wh), tx

    # -- in-memory state ------------------------------------------------------------------

    async def _lookup(
        self, b: Batch, cp_id: str, ocpp_id: str
    ) -> tuple[int | None, _Active | None]:
        """The newest non-orphan transaction ``ocpp_id`` of ``cp_id``: (its pk, its cache entry
        if it is active) from memory, else from the database; (None, None) if unknown."""
        await b.sync()  # ORM changes of other units first (they may invalidate the cache)
        key = (cp_id, ocpp_id)
        active = self._active.get(key)
        if active is None:
            found = await b.fetchone(_SELECT_TX, {"cp": cp_id, "ocpp_id": ocpp_id})
            if found is None:
                return None, None
            row = dict(zip(_TX_COLUMNS, found, strict=True))
            if row["status"] != "active":
                return row["id"], None
            active = _Active(row, EnergyState.from_dict(row["meter_state"]))
            self._remember(key, active)
        b.on_rollback(partial(self._forget, key))
        return active.row["id"], active

    def _transactions_written(self, written: list[Any] | None) -> None:
        if written is None:
            self._active.clear()
            return
        for tx in written:
            self._active.pop((tx.charge_point_id, tx.ocpp_id or ""), None)
            if tx.ocpp_id is None and tx.id is not None:  # a 1.6 start before its ocpp_id
                self._active.pop((tx.charge_point_id, str(tx.id)), None)

    def _charge_points_written(self, written: list[Any] | None) -> None:
        if written is None:
            self._relative.clear()
            return
        for cp in written:
            self._relative.pop(cp.id, None)

    def _remember(self, key: tuple[str, str], active: _Active) -> None:
        self._active.pop(key, None)
        self._active[key] = active
        if len(self._active) > MAX_CACHED_TRANSACTIONS:  # oldest first; reloaded on use
            del self._active[next(iter(self._active))]

    def _forget(self, key: tuple[str, str]) -> None:
        self._active.pop(key, None)

    def _forget_relative(self, cp_id: str) -> None:
        self._relative.pop(cp_id, None)

    async def _relative_hint(self, b: Batch, cp_id: str) -> bool | None:
        """The charge point's learned ``session_relative_meter`` (None if unknown)."""
        if cp_id in self.lifetime_registers:
            return False
        await b.sync()
        known = self._relative.get(cp_id, _UNKNOWN)
        if known is _UNKNOWN:
            row = await b.fetchone(_SELECT_RELATIVE, {"cp": cp_id})
            known = self._relative[cp_id] = None if row is None else row[0]
            b.on_rollback(partial(self._forget_relative, cp_id))
        return known  # type: ignore[no-any-return]

    async def _learn_relative(self, b: Batch, cp_id: str, state: EnergyState) -> None:
        """Store what a transaction taught about the charge point's register (only a change
        is written)."""
        value = state.session_relative
        if value is None or cp_id in self.lifetime_registers:
            return
        await b.sync()
        if self._relative.get(cp_id, _UNKNOWN) is value:
            return
        await b.defer(_SET_RELATIVE, {"cp": cp_id, "value": value, "new_value": value})
        self._relative[cp_id] = value
        b.on_rollback(partial(self._forget_relative, cp_id))

    @staticmethod
    def _tx_object(s: AsyncSession, row: dict[str, Any]) -> Transaction:
        """The persistent ``Transaction`` of ``row`` in the batch's session (for the hooks),
        without a SELECT: attribute changes a hook makes are written by the session."""
        sync = s.sync_session
        existing = sync.identity_map.get(identity_key(Transaction, row["id"]))
        if existing is not None:
            for k, v in row.items():
                set_committed_value(existing, k, v)
            return existing  # type: ignore[no-any-return]
        tx: Transaction = _TX_MANAGER.new_instance()
        instance_dict(tx).update(row)
        make_transient_to_detached(tx)
        sync.add(tx)
        return tx

    # -- ORM helpers (rare paths) ---------------------------------------------------------

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

    async def _insert_samples(
        self,
        s: AsyncSession,
        cp_id: str,
        connector_id: int | None,
        tx_pk: int | None,
        samples: list[Sample],
    ) -> None:
        rows = _sample_rows(cp_id, connector_id, tx_pk, samples, utcnow())
        await s.execute(insert(MeterSample.__table__), rows)  # type: ignore[attr-defined]
