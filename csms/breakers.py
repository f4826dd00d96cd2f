"""Breaker outlets as charge points: switching, metering and ending paid sessions (issue 6).

A breaker site is a ``ChargePoint`` of kind ``breaker`` whose connectors are its outlets, plus
a ``Breaker`` row (driver configuration, rating, live readings). This module is the third
translator next to the OCPP 1.6 and 2.0.1 handlers: it turns breaker reads into the same
domain events (:meth:`ChargingService.start_transaction`, ``record_meter_values``,
``stop_transaction``), so the session, tariff and Stripe path is the one chargers use. The flow
is drawn in E2E.md ("The breaker path").

* start (:meth:`BreakerController.start_outlet`, called by the session layer after the hold):
  read the register, close, confirm by reading back (retries), then record the transaction
  start with the register read before closing as ``meterStart``. Not confirmed: open again
  (safety), raise :class:`DeviceNotConfirmed`: the session fails and its hold is released.
* while active, every poll: meter values are stored (the running cost and the hold check run
  in the session hook); power below the car-full threshold for N minutes ends the session
  (``car_full``); a trip ends it on the reading (``tripped``); an open found without a command
  ends it (``opened``); offline longer than the grace period ends it on the last good reading
  and time (``offline``).
* stop (:meth:`stop_outlet`): open, confirm, final read, record the stop (final cost and
  session ``settling`` in the same commit). Unconfirmed: the stop is still recorded on the last
  good reading and the open is retried by the poll (a breaker found closed with no session and
  no forced close is opened).

One breaker has one relay and one meter, so at most one session runs on a breaker at a time,
whatever its number of outlets. Units: Wh, W, A, V, seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from breaker.config import build_driver, validate_config
from breaker.control import SwitchResult, switch
from breaker.driver import BreakerDriver, BreakerState, ConfigError, Reading
from breaker.ocpp_relay import OcppLink, RelaySnapshot
from breaker.tasks import cancel_and_wait
from csms.commands import CommandService
from csms.db import Database
from csms.errors import (
    Conflict,
    DeviceNotConfirmed,
    DeviceUnreachable,
    InvalidRequest,
    NotConnected,
    NotFound,
)
from csms.metering import Sample
from csms.metrics import Metrics
from csms.models import (
    Breaker,
    BreakerAudit,
    ChargePoint,
    ChargingSession,
    Connector,
    MeterSample,
    Transaction,
    utcnow,
)
from csms.ocpp.server import ConnectionRegistry
from csms.service import ChargingService, StartRequest, StopRequest
from csms.timestamps import ParsedTime, format_utc

log = logging.getLogger(__name__)

ENERGY_REGISTER = "Energy.Active.Import.Register"
SETTLE = timedelta(seconds=0.3)


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Timing of breaker control (from :class:`csms.settings.Settings`), seconds."""

    poll_interval_s: float = 1.0
    confirm_timeout_s: float = 5.0
    attempts: int = 3
    backoff_s: float = 0.5
    persist_every_s: float = 5.0
    """Live readings are written to the ``breaker`` row on a state change or this often."""


@dataclass(slots=True)
class _Outlet:
    """The active session on a breaker, as the poll needs it."""

    tx_pk: int
    ocpp_id: str
    connector_id: int
    id_tag: str | None
    session_id: int | None
    last_energy_wh: int | None
    last_good_at: datetime
    low_power_since: datetime | None = None
    offline_since: datetime | None = None


@dataclass(slots=True)
class _Live:
    """One configured breaker at run time."""

    row: Breaker
    driver: BreakerDriver | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reading: Reading | None = None
    active: _Outlet | None = None
    forced_closed: bool = False
    task: asyncio.Task[None] | None = None
    persisted_at: datetime | None = None
    persisted_state: str | None = None
    error: str | None = None
    switches: int = 0
    """Incremented by every close/open: a poll whose read predates a switch is stale."""
    unexpected: tuple[BreakerState, datetime] | None = None
    """A state that calls for action (open/tripped during a session, closed without one) and
    when it was first read: acted on only when the next poll, at least ``SETTLE`` later,
    still reads it (push drivers can deliver an older status after a newer one)."""


def _now_time(at: datetime) -> ParsedTime:
    """A server-side timestamp as the domain's :class:`ParsedTime` (trusted)."""
    return ParsedTime(value=at, raw=format_utc(at), trusted=True, assumed_utc=False)


def _samples(reading: Reading, context: str) -> list[Sample]:
    """A breaker reading as normalised meter samples (Wh, W, A, V)."""
    at = _now_time(reading.at)
    out: list[Sample] = []
    for measurand, unit, value in (
        (ENERGY_REGISTER, "Wh", reading.energy_wh),
        ("Power.Active.Import", "W", reading.power_w),
        ("Current.Import", "A", reading.current_a),
        ("Voltage", "V", reading.voltage_v),
    ):
        if value is None:
            continue
        number = Decimal(value) if isinstance(value, int) else Decimal(str(round(value, 3)))
        out.append(Sample(
            measurand=measurand, phase=None, location="Outlet", context=context, unit=unit,
            value=number, raw_value=str(value), raw_unit=unit, format="Raw",
            signed_data=None, timestamp=at,
        ))
    return out


def final_energy(act: _Outlet, reading: Reading | None) -> int | None:
    """The register to stop on: the reading's, unless the breaker cannot be read or its
    register went below the last good reading (a device that rebooted or was replaced counts
    from 0 again; the energy delivered is what the last good reading showed)."""
    if reading is None or reading.state is BreakerState.OFFLINE or reading.energy_wh is None:
        return act.last_energy_wh
    if act.last_energy_wh is not None and reading.energy_wh < act.last_energy_wh:
        return act.last_energy_wh
    return reading.energy_wh


def breaker_json(live: _Live) -> dict[str, Any]:
    """The API shape of a breaker: configuration, live state and readings, active session."""
    row, r = live.row, live.reading
    return {
        "id": row.id,
        "driver": row.driver,
        "rated_current_a": row.rated_current_a,
        "phases": row.phases,
        "outlets": row.outlets,
        "car_full_power_w": row.car_full_power_w,
        "car_full_minutes": row.car_full_minutes,
        "offline_grace_s": row.offline_grace_s,
        "state": (r.state.value if r is not None else row.state),
        "energy_wh": r.energy_wh if r is not None else row.energy_wh,
        "power_w": r.power_w if r is not None else row.power_w,
        "current_a": r.current_a if r is not None else row.current_a,
        "voltage_v": r.voltage_v if r is not None else row.voltage_v,
        "read_at": r.at if r is not None else row.read_at,
        "detail": r.detail if r is not None else None,
        "last_error": live.error,
        "forced_closed": live.forced_closed,
        "active_session_id": live.active.session_id if live.active else None,
        "active_transaction_id": live.active.tx_pk if live.active else None,
        "active_connector_id": live.active.connector_id if live.active else None,
    }


def audit_json(a: BreakerAudit) -> dict[str, Any]:
    """The API shape of one audit record."""
    return {
        "id": a.id,
        "breaker_id": a.breaker_id,
        "action": a.action,
        "actor": a.actor,
        "reason": a.reason,
        "forced": a.forced,
        "session_id": a.session_id,
        "outcome": a.outcome,
        "attempts": a.attempts,
        "state_after": a.state_after,
        "detail": a.detail,
        "created_at": a.created_at,
        "finished_at": a.finished_at,
    }


class RelayLink:
    """What an OCPP relay breaker driver (``breaker.ocpp_relay``) needs from the CSMS: is the
    relay connected, its last connector status and meter values, and CSMS-initiated calls
    through the shared command service. Implements ``breaker.ocpp_relay.OcppLink``."""

    def __init__(
        self, registry: ConnectionRegistry, commands: CommandService, service: ChargingService
    ) -> None:
        self.registry = registry
        self.commands = commands
        self.service = service
        self._snapshots: dict[tuple[str, int], RelaySnapshot] = {}

    def watch(self, cp_id: str) -> None:
        """Follow ``cp_id``'s StatusNotification and MeterValues from now on."""
        self.service.watchers.setdefault(cp_id, {})[self] = partial(self._observe, cp_id)

    async def seed(self, db: Database, cp_id: str) -> None:
        """Start from the statuses already stored (a relay connected before it was
        configured as a breaker's driver)."""

        async def fn(s: AsyncSession) -> list[Connector]:
            return list((await s.execute(
                select(Connector).where(col(Connector.charge_point_id) == cp_id)
            )).scalars())

        for c in await db.read(fn):
            key = (cp_id, c.connector_id)
            if key not in self._snapshots and c.status is not None:
                self._snapshots[key] = RelaySnapshot(
                    status=c.status, energy_wh=None, power_w=None, current_a=None,
                    voltage_v=None, at=c.updated_at,
                )

    def connected(self, cp_id: str) -> bool:
        """True while the relay has an open websocket."""
        return self.registry.get(cp_id) is not None

    def snapshot(self, cp_id: str, connector_id: int) -> RelaySnapshot | None:
        """The relay connector's last status and readings (None before the first)."""
        return self._snapshots.get((cp_id, connector_id))

    async def call(self, cp_id: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A CSMS-initiated call (raises :class:`csms.errors.CsmsError` subclasses)."""
        return await self.commands.call(cp_id, action, payload)

    def _observe(self, cp_id: str, connector_id: int | None, status: str | None,
                 samples: list[Sample] | None) -> None:
        key = (cp_id, connector_id or 0)
        old = self._snapshots.get(key) or RelaySnapshot(
            status=None, energy_wh=None, power_w=None, current_a=None, voltage_v=None, at=None
        )
        values: dict[str, Any] = {}
        if status is not None:
            values["status"] = status
        for sample in samples or ():
            if sample.value is None or sample.phase is not None:
                continue
            if sample.measurand == ENERGY_REGISTER and sample.unit == "Wh":
                values["energy_wh"] = int(sample.value)
            elif sample.measurand == "Power.Active.Import" and sample.unit == "W":
                values["power_w"] = float(sample.value)
            elif sample.measurand == "Current.Import" and sample.unit == "A":
                values["current_a"] = float(sample.value)
            elif sample.measurand == "Voltage" and sample.unit == "V":
                values["voltage_v"] = float(sample.value)
        values["at"] = utcnow()
        self._snapshots[key] = replace(old, **values)


class BreakerController:
    """All breakers of the site: drivers, polls, sessions on outlets, operator switching.

    Implements the session layer's ``OutletControl`` (``handles``, ``check_ready``,
    ``start_outlet``, ``stop_outlet``).
    """

    def __init__(
        self,
        db: Database,
        service: ChargingService,
        metrics: Metrics,
        settings: BreakerSettings,
        *,
        environ: Mapping[str, str] | None = None,
        ocpp_link: OcppLink | None = None,
    ) -> None:
        self.db = db
        self.service = service
        self.metrics = metrics
        self.settings = settings
        self.environ = environ
        self.ocpp_link = ocpp_link
        self._live: dict[str, _Live] = {}
        self._closing = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every breaker, connect its driver, resume active sessions, start the polls."""

        async def load(s: AsyncSession) -> list[Breaker]:
            return list((await s.execute(select(Breaker).order_by(col(Breaker.id)))).scalars())

        for row in await self.db.read(load):
            live = _Live(row, self._build(row))
            self._live[row.id] = live
            self.service.lifetime_registers.add(row.id)
            await self._resume(live)
            await self._activate(live)

    async def close(self) -> None:
        """Stop the polls and disconnect the drivers (sessions stay active in the database)."""
        self._closing = True
        for live in self._live.values():
            await self._deactivate(live)

    def _build(self, row: Breaker) -> BreakerDriver | None:
        relay = row.driver.get("charge_point_id") if row.driver.get("type") == "ocpp" else None
        if relay is not None and isinstance(self.ocpp_link, RelayLink):
            self.ocpp_link.watch(str(relay))
        try:
            return build_driver(row.driver, environ=self.environ, ocpp_link=self.ocpp_link)
        except ConfigError as exc:
            log.error("breaker %s: bad driver configuration (%s): %s", row.id, exc.key, exc)
            return None

    async def _activate(self, live: _Live) -> None:
        relay = live.row.driver.get("charge_point_id")
        if live.row.driver.get("type") == "ocpp" and isinstance(self.ocpp_link, RelayLink):
            await self.ocpp_link.seed(self.db, str(relay))
        if live.driver is None:
            live.error = "bad driver configuration"
        else:
            try:
                await live.driver.connect()
            except Exception as exc:  # a driver must not raise here; be safe anyway
                live.error = f"connect failed: {exc}"
                log.warning("breaker %s: connect failed: %s", live.row.id, exc)
        live.task = asyncio.create_task(self._poll_forever(live), name=f"breaker-{live.row.id}")

    async def _deactivate(self, live: _Live) -> None:
        if live.task is not None:
            await cancel_and_wait(live.task)
            live.task = None
        if live.driver is not None:
            try:
                await live.driver.disconnect()
            except Exception as exc:
                log.warning("breaker %s: disconnect failed: %s", live.row.id, exc)

    async def _resume(self, live: _Live) -> None:
        """After a restart: the active transaction on this breaker (if any), with its last
        stored energy reading; a forced close still in force."""
        bid = live.row.id

        async def fn(s: AsyncSession) -> tuple[Transaction | None, Any, BreakerAudit | None]:
            tx = (await s.execute(
                select(Transaction)
                .where(col(Transaction.charge_point_id) == bid,
                       col(Transaction.status) == "active")
                .order_by(col(Transaction.id).desc()).limit(1)
            )).scalars().first()
            last = None
            if tx is not None:
                last = (await s.execute(
                    select(func.max(col(MeterSample.value)), func.max(col(MeterSample.timestamp)))
                    .where(col(MeterSample.transaction_pk) == tx.id,
                           col(MeterSample.measurand) == ENERGY_REGISTER)
                )).first()
            audit = (await s.execute(
                select(BreakerAudit)
                .where(col(BreakerAudit.breaker_id) == bid)
                .order_by(col(BreakerAudit.id).desc()).limit(1)
            )).scalars().first()
            return tx, last, audit

        tx, last, audit = await self.db.read(fn)
        if audit is not None and audit.action == "close" and audit.forced:
            live.forced_closed = True
        if tx is None or tx.id is None or tx.ocpp_id is None:
            return
        energy = tx.meter_start
        at = tx.started_at or utcnow()
        if last is not None and last[0] is not None:
            energy = int(last[0])
            at = last[1] or at
        live.active = _Outlet(
            tx.id, tx.ocpp_id, tx.connector_id or 1, tx.id_tag, tx.session_id, energy, at
        )
        log.info("breaker %s: resumed transaction %s", bid, tx.id)

    # -- site model -------------------------------------------------------------------------

    async def put(self, breaker_id: str, values: dict[str, Any]) -> dict[str, Any]:
        """Create or update a breaker site (``values``: driver, rated_current_a, phases,
        outlets, tariff_id, car_full_power_w, car_full_minutes, offline_grace_s).

        Raises:
            InvalidRequest: the driver configuration is invalid (``field`` names the key).
            Conflict: the id belongs to an OCPP charge point, or a session is active on it.
        """
        try:
            driver = validate_config(values["driver"])
            build_driver(driver, environ=self.environ, ocpp_link=self.ocpp_link)
        except ConfigError as exc:
            raise InvalidRequest(f"{exc.key}: {exc}", field=exc.key) from None
        old = self._live.get(breaker_id)
        if old is None:
            return await self._put(breaker_id, values, driver, None)
        async with old.lock:  # not while a session starts, stops or the poll acts
            if old.active is not None:
                raise Conflict("a session is active on this breaker", field="id")
            return await self._put(breaker_id, values, driver, old)

    async def _put(self, breaker_id: str, values: dict[str, Any], driver: dict[str, Any],
                   old: _Live | None) -> dict[str, Any]:
        async def unit(s: AsyncSession) -> Breaker:
            cp = await s.get(ChargePoint, breaker_id)
            if cp is None:
                cp = ChargePoint(id=breaker_id, kind="breaker", security_profile=1)
                s.add(cp)
            elif cp.kind != "breaker":
                raise Conflict(f"{breaker_id!r} is an OCPP charge point", field="id")
            cp.tariff_id = values.get("tariff_id")
            for n in range(1, int(values["outlets"]) + 1):
                if await s.get(Connector, (breaker_id, n)) is None:
                    s.add(Connector(charge_point_id=breaker_id, connector_id=n,
                                    status="Available", updated_at=utcnow()))
            row = await s.get(Breaker, breaker_id)
            if row is None:
                row = Breaker(id=breaker_id, driver=driver)
                s.add(row)
            row.driver = driver
            for key in ("rated_current_a", "phases", "outlets", "car_full_power_w",
                        "car_full_minutes", "offline_grace_s"):
                setattr(row, key, values[key])
            row.updated_at = utcnow()
            await s.flush()
            return row

        row = await self.db.write(unit)
        if old is not None:
            await self._deactivate(old)
        live = _Live(row, self._build(row))
        self._live[breaker_id] = live
        self.service.lifetime_registers.add(breaker_id)
        await self._resume(live)
        await self._activate(live)
        return breaker_json(live)

    def get(self, breaker_id: str) -> dict[str, Any]:
        """One breaker's API shape. Raises NotFound."""
        return breaker_json(self._get(breaker_id))

    def list_all(self) -> list[dict[str, Any]]:
        """Every breaker's API shape, by id."""
        return [breaker_json(self._live[k]) for k in sorted(self._live)]

    @asynccontextmanager
    async def _locked(self, breaker_id: str) -> AsyncIterator[_Live]:
        """The breaker's run-time state with its lock held; if a PUT replaced it while we
        waited for the lock, the new one (never act on a disconnected driver)."""
        while True:
            live = self._get(breaker_id)
            async with live.lock:
                if self._live.get(breaker_id) is live:
                    yield live
                    return

    def _get(self, breaker_id: str) -> _Live:
        live = self._live.get(breaker_id)
        if live is None:
            raise NotFound(f"unknown breaker {breaker_id!r}", field="id")
        return live

    async def audit(self, breaker_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The breaker's audit records, newest first."""
        self._get(breaker_id)

        async def fn(s: AsyncSession) -> list[BreakerAudit]:
            return list((await s.execute(
                select(BreakerAudit).where(col(BreakerAudit.breaker_id) == breaker_id)
                .order_by(col(BreakerAudit.id).desc()).limit(limit)
            )).scalars())

        return [audit_json(a) for a in await self.db.read(fn)]

    # -- OutletControl (called by the session layer) ---------------------------------------

    def handles(self, cp_id: str) -> bool:
        """True if ``cp_id`` is a breaker site."""
        return cp_id in self._live

    def check_ready(self, cp_id: str, connector_id: int) -> None:
        """Raise unless a session can start on this outlet now.

        Raises:
            NotFound: no such outlet.  NotConnected: the breaker is offline or unreadable.
            Conflict: it is tripped, or a session is already running on the breaker.
        """
        live = self._get(cp_id)
        if not 1 <= connector_id <= live.row.outlets:
            raise NotFound(f"breaker {cp_id!r} has no outlet {connector_id}",
                           field="connector_id")
        state = live.reading.state if live.reading is not None else BreakerState.OFFLINE
        if state is BreakerState.OFFLINE:
            raise NotConnected(f"breaker {cp_id!r} is offline")
        if state is BreakerState.TRIPPED:
            raise Conflict(f"breaker {cp_id!r} is tripped; it must be reset on site",
                           field="charge_point_id")
        if live.active is not None:
            raise Conflict("a session is already running on this breaker", field="connector_id")

    async def start_outlet(
        self, cp_id: str, connector_id: int, id_tag: str, session_id: int
    ) -> None:
        """Close the breaker for a paid session and record the transaction start.

        Raises:
            DeviceNotConfirmed: the close was not read back after the retries (opened again).
            DeviceUnreachable: the breaker could not be read or commanded.
            Conflict: another session runs on the breaker.
        """
        async with self._locked(cp_id) as live:
            if live.active is not None:
                raise Conflict("a session is already running on this breaker")
            before = await self._read(live)
            if before.state in (BreakerState.OFFLINE, BreakerState.TRIPPED):
                raise DeviceUnreachable(f"breaker is {before.state.value}: {before.detail or ''}")
            result = await self._switch(
                live, BreakerState.CLOSED, f"session:{session_id}", "session start",
                session_id=session_id,
            )
            if not result.confirmed:
                await self._switch(live, BreakerState.OPEN, "system",
                                   "close not confirmed: open for safety", session_id=session_id)
                raise DeviceNotConfirmed(f"the breaker did not confirm closed: {result.error}")
            reading = result.reading or before
            meter_start = before.energy_wh if before.energy_wh is not None else reading.energy_wh
            at = utcnow()
            started = await self.service.start_transaction(cp_id, StartRequest(
                connector_id=connector_id, id_tag_raw=id_tag, meter_start=meter_start,
                timestamp=_now_time(at),
            ))
            live.forced_closed = False
            live.active = _Outlet(
                started.transaction_pk, started.ocpp_id, connector_id, id_tag,
                session_id, meter_start, at,
            )
        await self._set_connector(cp_id, connector_id, "Charging")

    async def stop_outlet(self, cp_id: str, ocpp_id: str, reason: str,
                          actor: str | None = None, note: str | None = None) -> None:
        """Open the breaker and record the stop with the final reading (the last good one if
        the breaker cannot be read). ``reason`` is the session's stop reason (driver,
        hold_reached, operator...); ``note`` is the audit record's reason (default ``reason``).
        A stop of a transaction that is no longer active does nothing."""
        async with self._locked(cp_id) as live:
            act = live.active
            if act is None or act.ocpp_id != ocpp_id:
                return
            result = await self._switch(
                live, BreakerState.OPEN, actor or f"session:{act.session_id}", note or reason,
                session_id=act.session_id,
            )
            final = await self._final_read(live, result)
            good = final is not None and final.state is not BreakerState.OFFLINE
            at = utcnow() if good else act.last_good_at
            await self._end(live, final_energy(act, final), at, "Remote", reason)

    # -- operator ---------------------------------------------------------------------------

    async def operator_switch(
        self, breaker_id: str, action: str, actor: str, reason: str, force: bool = False
    ) -> dict[str, Any]:
        """An operator's close/open (``action``), audited. Opening a breaker with a session
        ends that session (billed up to the open). Closing one with no paid session is
        refused unless ``force``.

        Returns the audit record.

        Raises:
            Conflict: close without a paid session and without ``force``.
            DeviceNotConfirmed: not read back after the retries (504).
            DeviceUnreachable: the command could not be delivered (502).
        """
        live = self._get(breaker_id)
        if action == "open" and live.active is not None:
            act = live.active
            await self.mark_stop(act.session_id, "operator")
            await self.stop_outlet(breaker_id, act.ocpp_id, "operator", actor=actor, note=reason)
            audit = (await self.audit(breaker_id, 1))[0]
            self._raise_unless_confirmed(audit)
            return audit
        async with self._locked(breaker_id) as live:
            if action == "close":
                if live.active is None and not force:
                    raise Conflict(
                        "no paid session is active on this breaker's outlets; "
                        "set force to close it anyway", field="force",
                    )
                want = BreakerState.CLOSED
            else:
                want = BreakerState.OPEN
            session_id = live.active.session_id if live.active else None
            await self._switch(live, want, actor, reason, forced=force and action == "close",
                               session_id=session_id)
            if want is BreakerState.CLOSED:
                live.forced_closed = live.active is None
            else:
                live.forced_closed = False
        audit = (await self.audit(breaker_id, 1))[0]
        self._raise_unless_confirmed(audit)
        return audit

    @staticmethod
    def _raise_unless_confirmed(audit: dict[str, Any]) -> None:
        if audit["outcome"] == "unavailable":
            raise DeviceUnreachable(f"audit {audit['id']}: {audit['detail']}")
        if audit["outcome"] != "confirmed":
            raise DeviceNotConfirmed(f"audit {audit['id']}: {audit['detail']}")

    # -- the poll ---------------------------------------------------------------------------

    async def _poll_forever(self, live: _Live) -> None:
        while True:
            try:
                await self.poll_once(live.row.id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("breaker %s: poll failed", live.row.id)
            await asyncio.sleep(self.settings.poll_interval_s)

    async def poll_once(self, breaker_id: str) -> None:
        """Read one breaker and act on what it shows (see the module docstring)."""
        live = self._get(breaker_id)
        switches = live.switches
        reading = await self._read(live)
        await self._persist(live, reading)
        async with live.lock:
            if live.switches != switches:
                live.unexpected = None
                return  # a close/open ran meanwhile: this read is stale; the next one is not
            act = live.active
            now = utcnow()
            if act is None:
                if reading.state is not BreakerState.CLOSED or live.forced_closed:
                    live.unexpected = None
                elif self._settled(live, reading.state, now):
                    log.warning("breaker %s: closed without a session: opening", breaker_id)
                    await self._switch(live, BreakerState.OPEN, "system",
                                       "closed without a paid session")
                return
            if reading.state is BreakerState.CLOSED:
                live.unexpected = None
                act.offline_since = None
                if reading.energy_wh is not None and (
                    act.last_energy_wh is None or reading.energy_wh >= act.last_energy_wh
                ):
                    act.last_energy_wh = reading.energy_wh
                    act.last_good_at = reading.at
                samples = _samples(reading, "Sample.Periodic")
                if samples:
                    await self.service.record_meter_values(
                        breaker_id, act.connector_id, act.ocpp_id, samples
                    )
                if await self._car_full(live, act, reading, now):
                    await self.mark_stop(act.session_id, "car_full")
                    await self._open_and_end(live, act, "CarFull", "car_full")
            elif reading.state in (BreakerState.TRIPPED, BreakerState.OPEN):
                if not self._settled(live, reading.state, now):
                    return
                reason = "tripped" if reading.state is BreakerState.TRIPPED else "opened"
                await self.mark_stop(act.session_id, reason)
                await self._end(live, final_energy(act, reading), now, reason.capitalize(),
                                reason)
            else:  # OFFLINE
                live.unexpected = None
                act.offline_since = act.offline_since or now
                if now - act.offline_since >= timedelta(seconds=live.row.offline_grace_s):
                    await self.mark_stop(act.session_id, "offline")
                    await self._end(live, act.last_energy_wh, act.last_good_at, "Offline",
                                    "offline")

    @staticmethod
    def _settled(live: _Live, state: BreakerState, now: datetime) -> bool:
        """True when ``state`` was also read by an earlier poll at least SETTLE ago."""
        if live.unexpected is None or live.unexpected[0] is not state:
            live.unexpected = (state, now)
            return False
        if now - live.unexpected[1] < SETTLE:
            return False
        live.unexpected = None
        return True

    async def _car_full(self, live: _Live, act: _Outlet, reading: Reading,
                        now: datetime) -> bool:
        if reading.power_w is None or reading.power_w >= live.row.car_full_power_w:
            act.low_power_since = None
            return False
        act.low_power_since = act.low_power_since or now
        return now - act.low_power_since >= timedelta(minutes=live.row.car_full_minutes)

    async def _open_and_end(self, live: _Live, act: _Outlet, tx_reason: str,
                            reason: str) -> None:
        result = await self._switch(live, BreakerState.OPEN, f"session:{act.session_id}",
                                    reason, session_id=act.session_id)
        final = await self._final_read(live, result)
        await self._end(live, final_energy(act, final), utcnow(), tx_reason, reason)

    async def _final_read(self, live: _Live, result: SwitchResult) -> Reading | None:
        """After an open: one more read a moment later, so that a push driver's fresh status
        (requested with the command) is the final reading, not the cached one."""
        if not result.confirmed or live.driver is None:
            return result.reading
        await asyncio.sleep(min(1.0, self.settings.poll_interval_s))
        reading = await self._read(live)
        return reading if reading.state is BreakerState.OPEN else result.reading

    async def _end(self, live: _Live, meter_stop: int | None, at: datetime,
                   tx_reason: str, reason: str) -> None:
        """Record the stop of the active transaction (final cost in the same commit)."""
        act = live.active
        assert act is not None
        log.info("breaker %s: session %s ends (%s) at %s Wh", live.row.id, act.session_id,
                 reason, meter_stop)
        await self.service.stop_transaction(live.row.id, StopRequest(
            ocpp_id=act.ocpp_id, id_tag_raw=act.id_tag, meter_stop=meter_stop,
            timestamp=_now_time(at), reason=tx_reason,
        ))
        live.active = None
        await self._set_connector(live.row.id, act.connector_id, "Available")

    async def mark_stop(self, session_id: int | None, reason: str) -> None:
        """Record why a session ends, unless a reason is already recorded."""
        if session_id is None:
            return

        async def unit(s: AsyncSession) -> None:
            row = await s.get(ChargingSession, session_id)
            if row is not None and row.stop_reason is None:
                row.stop_reason = reason
                row.stop_requested_at = utcnow()
                row.updated_at = utcnow()

        await self.db.write(unit)

    # -- driver access ----------------------------------------------------------------------

    async def _read(self, live: _Live) -> Reading:
        if live.driver is None:
            reading = Reading(BreakerState.OFFLINE, detail="bad driver configuration")
        else:
            try:
                reading = await live.driver.read()
            except Exception as exc:  # read() must not raise; count it if it does
                reading = Reading(BreakerState.OFFLINE, detail=f"read failed: {exc}")
        previous = live.reading
        live.reading = reading
        if reading.state is BreakerState.OFFLINE and (
            previous is None or previous.state is not BreakerState.OFFLINE
        ):
            self.metrics.breaker_errors.labels(live.row.id, "offline").inc()
        self._export(live.row.id, reading)
        return reading

    def _export(self, bid: str, reading: Reading) -> None:
        for state in BreakerState:
            self.metrics.breaker_state.labels(bid, state.value).set(
                1 if reading.state is state else 0
            )
        if reading.power_w is not None:
            self.metrics.breaker_power.labels(bid).set(reading.power_w)
        if reading.energy_wh is not None:
            self.metrics.breaker_energy.labels(bid).set(reading.energy_wh)
        if reading.current_a is not None:
            self.metrics.breaker_current.labels(bid).set(reading.current_a)

    async def _switch(
        self, live: _Live, want: BreakerState, actor: str, reason: str, *,
        forced: bool = False, session_id: int | None = None,
    ) -> SwitchResult:
        """Switch with read-back and retries, audited before and after."""
        bid = live.row.id
        action = "close" if want is BreakerState.CLOSED else "open"

        audit_id = (await self.db.add(BreakerAudit(
            breaker_id=bid, action=action, actor=actor[:255], reason=reason, forced=forced,
            session_id=session_id,
        ))).id
        live.switches += 1
        if live.driver is None:
            result = SwitchResult(confirmed=False, attempts=0, reading=None,
                                  error="bad driver configuration")
        else:
            result = await switch(
                live.driver, want,
                confirm_timeout_s=self.settings.confirm_timeout_s,
                poll_interval_s=min(0.2, self.settings.poll_interval_s),
                attempts=self.settings.attempts,
                backoff_s=self.settings.backoff_s,
            )
        if result.reading is not None:
            live.reading = result.reading
            self._export(bid, result.reading)
        undelivered = not result.confirmed and (
            result.reading is None or result.reading.state is BreakerState.OFFLINE
        )
        outcome = "confirmed" if result.confirmed else (
            "unavailable" if undelivered else "unconfirmed")
        if outcome != "confirmed":
            self.metrics.breaker_errors.labels(bid, outcome).inc()
            live.error = f"{action} {outcome}: {result.error}"
            log.warning("breaker %s: %s %s after %s attempt(s): %s", bid, action, outcome,
                        result.attempts, result.error)

        async def finish(s: AsyncSession) -> None:
            a = await s.get(BreakerAudit, audit_id)
            assert a is not None
            a.outcome = outcome
            a.attempts = result.attempts
            a.state_after = result.reading.state.value if result.reading else None
            a.detail = result.error
            a.finished_at = utcnow()

        await self.db.write(finish)
        return result

    async def _persist(self, live: _Live, reading: Reading) -> None:
        """Write the live readings to the breaker row on a state change or every few s."""
        now = utcnow()
        if (
            live.persisted_state == reading.state.value
            and live.persisted_at is not None
            and now - live.persisted_at < timedelta(seconds=self.settings.persist_every_s)
        ):
            return
        live.persisted_at, live.persisted_state = now, reading.state.value
        bid = live.row.id

        async def unit(s: AsyncSession) -> None:
            row = await s.get(Breaker, bid)
            if row is None:
                return
            row.state = reading.state.value
            row.read_at = reading.at
            if reading.state is not BreakerState.OFFLINE:
                row.energy_wh = reading.energy_wh
                row.power_w = reading.power_w
                row.current_a = reading.current_a
                row.voltage_v = reading.voltage_v
                row.last_good_at = reading.at
            row.last_error = live.error

        await self.db.write(unit)

    async def _set_connector(self, cp_id: str, connector_id: int, status: str) -> None:
        async def unit(s: AsyncSession) -> None:
            c = await s.get(Connector, (cp_id, connector_id))
            if c is not None:
                c.status = status
                c.updated_at = utcnow()

        await self.db.write(unit)
