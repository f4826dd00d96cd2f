"""Paid charging sessions: drivers, holds, remote starts, running cost, settlement.

The glue between the OCPP domain (:class:`csms.service.ChargingService`, which calls the hooks
below for every version) and billing (:class:`billing.service.Billing`). The flows are drawn in
E2E.md. In short:

* app: ``start_app_session`` places the hold, then sends RemoteStartTransaction with a one-off
  idTag; the StartTransaction that carries it links the transaction to the session.
* RFID: Authorize of a driver's tag places the hold (``authorize``); the StartTransaction with
  that tag links to it. A StartTransaction for a driver's tag with no hold before it (offline
  start) creates the session and places the hold afterwards; if that fails the transaction is
  stopped remotely.
* while charging: every MeterValues recomputes the running cost; when it reaches the hold the
  session is stopped (unless ``CSMS_HOLD_REACHED_POLICY=continue``).
* end: the stop computes the final cost in the same database transaction that records the
  stop (status ``settling``); billing settles it (capture / cancel / top-up) through its outbox.
  A maintenance loop re-settles every ``settling`` session (settle is idempotent), so a crash
  between the stop and the capture ends in exactly one capture.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from billing.errors import BillingError, NoPaymentMethod, StripeUnavailable
from billing.models import PaymentState
from billing.payments import PaymentView
from billing.service import Billing, HoldOutcome
from billing.tariff import (
    Cost,
    EnergyReading,
    Period,
    PeriodState,
    SessionUsage,
    Tariff,
    compute_cost,
    parse_tariff,
)
from breaker.tasks import cancel_and_wait
from csms.commands import CommandService
from csms.db import Database
from csms.errors import (
    CallFailed,
    Conflict,
    CsmsError,
    InvalidRequest,
    NotConnected,
    NotFound,
    PaymentRequired,
    Unavailable,
)
from csms.metering import EnergyState
from csms.models import (
    ChargePoint,
    ChargingSession,
    Driver,
    DriverTag,
    MeterSample,
    TariffRow,
    Transaction,
    utcnow,
)
from csms.service import AuthResult, canonical_id_tag

log = logging.getLogger(__name__)

WAITING = ("authorizing", "starting", "authorized")
OPEN = (*WAITING, "queued", "charging")
"""``queued``: held, waiting for capacity on its site (``csms.load``); not yet started."""
PARKING_STATUSES = frozenset({"SuspendedEV", "SuspendedEVSE", "Finishing"})
CHARGING_STATUSES = frozenset({"Charging"})
ENERGY_REGISTER = "Energy.Active.Import.Register"


def default_tariff_document(currency: str, energy_price: str, hold_amount: int) -> dict[str, Any]:
    """The ``default`` tariff of a fresh install: one ENERGY price per kWh, step 1 Wh."""
    return {
        "currency": currency,
        "hold_amount": hold_amount,
        "elements": [
            {"price_components": [{"type": "ENERGY", "price": energy_price, "step_size": 1}]}
        ],
    }


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    """Settings of the lifeline (from :class:`csms.settings.Settings`)."""

    default_tariff: dict[str, Any]
    hold_reached_policy: str = "stop"
    """stop: RemoteStop when the running cost reaches the hold; continue: keep charging and
    collect the excess with a top-up charge at the end."""
    start_timeout_s: float = 120.0
    """A session whose charger has not started within this many seconds fails (hold released)."""
    maintenance_interval_s: float = 5.0


class OutletControl(Protocol):
    """Outlets switched by the CSMS itself (breakers, ``csms.breakers``) instead of a charger
    that speaks OCPP: the session layer starts and stops them through this."""

    def handles(self, cp_id: str) -> bool:
        """True if ``cp_id`` is such a site."""
        ...

    def check_ready(self, cp_id: str, connector_id: int) -> None:
        """Raise NotFound / NotConnected / Conflict unless a session can start there."""
        ...

    async def start_outlet(
        self, cp_id: str, connector_id: int, id_tag: str, session_id: int
    ) -> None:
        """Power the outlet and record the transaction start (raises CallFailed)."""
        ...

    async def stop_outlet(self, cp_id: str, ocpp_id: str, reason: str,
                          actor: str | None = None) -> None:
        """Cut the outlet and record the stop with the final reading."""
        ...


class Admission(Protocol):
    """Site load management (``csms.load``): may a session start now, or must it wait for
    capacity? The manager starts a queued session later through
    :meth:`SessionService.start_queued`."""

    async def admit(self, session_id: int, cp_id: str, connector_id: int,
                    on_queued: Callable[[], Awaitable[None]]) -> bool:
        """True: capacity is reserved, start now. False: queued (``on_queued`` was awaited
        before anything could dequeue it). Raises Conflict when it can never fit."""
        ...

    def release(self, session_id: int) -> None:
        """The session will not start (failed, stopped while queued): free its place."""
        ...

    def queue_position(self, session_id: int) -> int | None:
        """1-based place in its site's queue; None when not queued."""
        ...


def _new_remote_tag() -> str:
    """A one-off idTag for a RemoteStartTransaction: ``APP`` + 12 hex digits (15 <= 20 chars,
    OCPP 1.6 CiString20)."""
    return "APP" + secrets.token_hex(6).upper()


class SessionService:
    """Drivers, tariffs and paid sessions; implements :class:`csms.service.SessionHooks`."""

    def __init__(
        self, db: Database, billing: Billing, commands: CommandService, config: SessionsConfig
    ) -> None:
        self.db = db
        self.billing = billing
        self.outlets: OutletControl | None = None
        """Breaker outlets (set by the composition root)."""
        self.admission: Admission | None = None
        """Site load management (set by the composition root)."""
        self.commands = commands
        self.config = config
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        # Which traffic can concern a paid session, so that the hooks skip the database for
        # everything else (operator tags, chargers without paid sessions: the hot path).
        # Entries are added before they matter and removed only when certainly stale; until
        # they are loaded (start), every hook asks the database.
        self._loaded = False
        self._paid_tags: set[str] = set()
        """Drivers' cards and the idTags of open sessions."""
        self._charging_connectors: set[tuple[str, int]] = set()
        """(charge point, connector) of sessions that may be charging."""

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the default tariff if missing; start the maintenance loop."""

        async def unit(s: AsyncSession) -> None:
            if await s.get(TariffRow, "default") is None:
                s.add(TariffRow(id="default", document=self.config.default_tariff))

        await self.db.write(unit)

        async def load(s: AsyncSession) -> None:
            self._paid_tags.update((await s.execute(select(col(DriverTag.id_tag)))).scalars())
            rows = await s.execute(
                select(col(ChargingSession.id_tag), col(ChargingSession.charge_point_id),
                       col(ChargingSession.connector_id))
                .where(col(ChargingSession.status).in_(OPEN))
            )
            for tag, cp_id, connector_id in rows:
                self._paid_tags.add(tag)
                if connector_id is not None:
                    self._charging_connectors.add((cp_id, connector_id))

        await self.db.read(load)
        self._loaded = True
        self._loop_task = asyncio.create_task(self._maintenance_forever(), name="sessions")

    async def close(self) -> None:
        """Stop the maintenance loop and wait for follow-up tasks."""
        if self._loop_task is not None:
            await cancel_and_wait(self._loop_task)
            self._loop_task = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, job: Callable[[], Awaitable[None]], what: str) -> None:
        async def runner() -> None:
            try:
                await job()
            except Exception:
                log.exception("session follow-up failed: %s", what)

        task = asyncio.create_task(runner(), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maintenance_forever(self) -> None:
        while True:
            try:
                await self.maintenance_once()
            except Exception:
                log.exception("session maintenance failed")
            await asyncio.sleep(self.config.maintenance_interval_s)

    async def maintenance_once(self) -> None:
        """Re-settle sessions left ``settling`` (after a crash, or Stripe being down) and fail
        sessions whose charger never started."""
        cutoff = utcnow() - timedelta(seconds=self.config.start_timeout_s)

        async def due(s: AsyncSession) -> tuple[list[int], list[int]]:
            settling = list(
                (
                    await s.execute(
                        select(col(ChargingSession.id)).where(
                            col(ChargingSession.status) == "settling"
                        )
                    )
                ).scalars()
            )
            stale = list(
                (
                    await s.execute(
                        select(col(ChargingSession.id)).where(
                            col(ChargingSession.status).in_(WAITING),
                            col(ChargingSession.created_at) < cutoff,
                            col(ChargingSession.updated_at) < cutoff,  # left a queue lately
                        )
                    )
                ).scalars()
            )
            return [i for i in settling if i is not None], [i for i in stale if i is not None]

        settling, stale = await self.db.read(due)
        for sid in settling:
            await self._settle(sid)
        for sid in stale:
            await self._fail(sid, "the charger did not start the transaction in time")

    # -- drivers ----------------------------------------------------------------------------

    async def signup(self, email: str) -> tuple[Driver, str]:
        """Create a driver and its Stripe customer; returns (driver, customer id).

        Raises:
            Conflict: the e-mail is already registered.
            Unavailable: Stripe did not answer (nothing is kept; try again).
        """
        email = email.strip().lower()
        driver_id = "drv_" + secrets.token_hex(12)

        async def unit(s: AsyncSession) -> Driver:
            exists = await s.scalar(select(col(Driver.id)).where(col(Driver.email) == email))
            if exists is not None:
                raise Conflict("this e-mail is already registered", field="email")
            driver = Driver(id=driver_id, email=email)
            s.add(driver)
            return driver

        driver = await self.db.write(unit)
        try:
            customer_id = await self.billing.ensure_customer(driver_id, email)
        except (StripeUnavailable, BillingError) as exc:

            async def undo(s: AsyncSession) -> None:
                row = await s.get(Driver, driver_id)
                if row is not None:
                    await s.delete(row)

            await self.db.write(undo)
            raise Unavailable(f"payment provider unavailable: {exc}") from None
        return driver, customer_id

    async def link_tag(self, driver_id: str, id_tag: str) -> str:
        """Link an RFID card to a driver; returns the canonical tag.

        Raises:
            InvalidRequest: empty or longer than 20 characters.
            Conflict: the tag belongs to someone else.
        """
        tag = canonical_id_tag(id_tag)
        if tag is None or len(tag) > 20:
            raise InvalidRequest("id_tag must be 1-20 characters", field="id_tag")

        self._paid_tags.add(tag)

        async def unit(s: AsyncSession) -> None:
            row = await s.get(DriverTag, tag)
            if row is not None and row.driver_id != driver_id:
                raise Conflict("this id tag belongs to another driver", field="id_tag")
            if row is None:
                s.add(DriverTag(id_tag=tag, driver_id=driver_id))

        await self.db.write(unit)
        return tag

    # -- tariffs ----------------------------------------------------------------------------

    async def put_tariff(self, tariff_id: str, document: dict[str, Any]) -> Tariff:
        """Validate and store a tariff (OCPI 2.2.1 Tariff + ``hold_amount``).

        Raises:
            InvalidRequest: the document is invalid (``field`` names the path).
        """
        tariff = self.parse(document, tariff_id)

        async def unit(s: AsyncSession) -> None:
            row = await s.get(TariffRow, tariff_id)
            if row is None:
                s.add(TariffRow(id=tariff_id, document=tariff.to_dict()))
            else:
                row.document = tariff.to_dict()
                row.updated_at = utcnow()

        await self.db.write(unit)
        return tariff

    @staticmethod
    def parse(document: dict[str, Any], tariff_id: str | None = None) -> Tariff:
        """Parse a tariff document, mapping errors to :class:`InvalidRequest`."""
        from billing.errors import TariffError

        doc = {k: v for k, v in document.items() if k != "id"}
        if tariff_id is not None:
            doc["id"] = tariff_id
        try:
            return parse_tariff(doc)
        except TariffError as exc:
            raise InvalidRequest(str(exc), field=getattr(exc, "field", None)) from None

    async def tariff_for(self, s: AsyncSession, cp_id: str) -> TariffRow:
        """The tariff assigned to the charge point, else ``default``."""
        cp = await s.get(ChargePoint, cp_id)
        row = None
        if cp is not None and cp.tariff_id:
            row = await s.get(TariffRow, cp.tariff_id)
        if row is None:
            row = await s.get(TariffRow, "default")
        if row is None:
            raise Conflict("no tariff applies to this charge point", field="charge_point_id")
        return row

    async def _new_session(
        self,
        s: AsyncSession,
        driver_id: str,
        cp_id: str,
        origin: str,
        id_tag: str,
        connector_id: int | None = None,
    ) -> ChargingSession:
        """A new session (status authorizing) with a snapshot of the charge point's tariff."""
        self._paid_tags.add(id_tag)
        tariff = await self.tariff_for(s, cp_id)
        doc = tariff.document
        row = ChargingSession(
            driver_id=driver_id,
            charge_point_id=cp_id,
            connector_id=connector_id,
            origin=origin,
            id_tag=id_tag,
            tariff_id=tariff.id,
            tariff=doc,
            currency=str(doc["currency"]),
            hold_amount=int(doc["hold_amount"]),
        )
        s.add(row)
        await s.flush()
        return row

    @staticmethod
    async def _first(s: AsyncSession, *where: Any, newest: bool = False) -> ChargingSession | None:
        """The first session matching ``where`` (the newest with ``newest``)."""
        q = select(ChargingSession).where(*where)
        if newest:
            q = q.order_by(col(ChargingSession.id).desc())
        return (await s.execute(q.limit(1))).scalars().first()

    # -- app sessions -----------------------------------------------------------------------

    async def start_app_session(
        self, driver_id: str, cp_id: str, connector_id: int
    ) -> ChargingSession:
        """Hold, then RemoteStartTransaction (OCPP 1.6 §5.11 / 2.0.1 F01).

        Returns the session: ``starting`` when the charger accepted, ``queued`` when its
        site has no capacity now (``csms.load`` starts it later), ``failed`` (hold released,
        ``failure_reason`` set) when it refused or did not answer.

        Raises:
            NotFound: unknown charge point.  NotConnected: it is offline.
            Conflict: the connector already has an open session.
            PaymentRequired: no card, or the hold was declined (nothing is sent to the charger).
            Unavailable: Stripe did not answer.
        """
        outlet = self.outlets is not None and self.outlets.handles(cp_id)
        if outlet:
            assert self.outlets is not None
            self.outlets.check_ready(cp_id, connector_id)
        elif self.commands.registry.get(cp_id) is None:
            exists = await self.db.read(lambda s: s.get(ChargePoint, cp_id))
            if exists is None:
                raise NotFound(f"unknown charge point {cp_id!r}", field="charge_point_id")
            raise NotConnected(f"charge point {cp_id!r} is not connected")

        async def create(s: AsyncSession) -> ChargingSession:
            busy = await s.scalar(
                select(col(ChargingSession.id))
                .where(
                    col(ChargingSession.charge_point_id) == cp_id,
                    col(ChargingSession.connector_id) == connector_id,
                    col(ChargingSession.status).in_(OPEN),
                )
                .limit(1)
            )
            if busy is not None:
                raise Conflict("this connector already has an open session", field="connector_id")
            return await self._new_session(
                s, driver_id, cp_id, "app", _new_remote_tag(), connector_id
            )

        session = await self.db.write(create)
        assert session.id is not None
        sid = session.id
        await self._hold_or_raise(session)
        await self._set(sid, status="starting")
        if self.admission is not None and not await self._admitted(sid, cp_id, connector_id):
            return await self.get(sid)
        return await self._begin_start(sid, cp_id, connector_id, session.id_tag, outlet)

    async def _admitted(self, sid: int, cp_id: str, connector_id: int) -> bool:
        """Ask site load management; False: the session is now ``queued`` (or failed)."""
        assert self.admission is not None
        try:
            return await self.admission.admit(
                sid, cp_id, connector_id, lambda: self._set(sid, status="queued"))
        except Conflict as exc:
            await self._fail(sid, exc.message)
            return False

    async def start_queued(self, session_id: int) -> None:
        """Capacity freed for a queued session (called by ``csms.load``): start it the normal
        way (RemoteStart or closing the breaker). Stopped meanwhile: nothing happens."""

        async def take(s: AsyncSession) -> ChargingSession | None:
            row = await s.get(ChargingSession, session_id)
            if row is None or row.status != "queued":
                return None
            row.status = "starting"
            row.updated_at = utcnow()
            return row

        row = await self.db.write(take)
        if row is None or row.connector_id is None:
            if self.admission is not None:
                self.admission.release(session_id)
            return
        outlet = self.outlets is not None and self.outlets.handles(row.charge_point_id)
        try:
            if outlet:
                assert self.outlets is not None
                self.outlets.check_ready(row.charge_point_id, row.connector_id)
            await self._begin_start(session_id, row.charge_point_id, row.connector_id,
                                    row.id_tag, outlet)
        except CsmsError as exc:
            await self._fail(session_id, f"could not start after the queue: {exc.message}")

    async def _begin_start(self, sid: int, cp_id: str, connector_id: int, id_tag: str,
                           outlet: bool) -> ChargingSession:
        """Close the breaker, or send RemoteStartTransaction; failed (hold released) when
        that does not work."""
        if outlet:
            assert self.outlets is not None
            try:
                await self.outlets.start_outlet(cp_id, connector_id, id_tag, sid)
            except (CallFailed, Conflict) as exc:
                return await self._fail(sid, f"the breaker did not close: {exc.message}")
            return await self.get(sid)
        try:
            status = await self.commands.remote_start(cp_id, connector_id, id_tag, sid)
        except CallFailed as exc:
            return await self._fail(sid, f"the charger did not accept the start: {exc.message}")
        if status != "Accepted":
            return await self._fail(sid, f"the charger answered RemoteStartTransaction {status}")
        return await self.get(sid)

    async def _hold_or_raise(self, session: ChargingSession) -> None:
        """Place the session's hold; on refusal mark it failed and raise."""
        assert session.id is not None
        try:
            result = await self.billing.place_hold(
                session.id, session.driver_id, session.hold_amount, session.currency
            )
        except NoPaymentMethod:
            await self._set(session.id, status="failed", failure_reason="no card on file")
            raise PaymentRequired("add a card before charging", field="payment_method") from None
        if result.outcome is HoldOutcome.AUTHORISED:
            return
        if result.outcome is HoldOutcome.UNAVAILABLE:
            await self._fail(session.id, "payment provider unavailable")
            raise Unavailable("payment provider unavailable, try again")
        reason = result.message or result.decline_code or result.outcome.value
        await self._set(
            session.id, status="failed", failure_reason=f"hold {result.outcome}: {reason}"
        )
        if result.outcome is HoldOutcome.REQUIRES_ACTION:
            await self.billing.cancel(session.id)
        raise PaymentRequired(
            f"the card was not authorised: {reason}",
            decline_code=result.decline_code,
            stripe_code=result.code,
        )

    async def request_stop(self, session_id: int, driver_id: str | None) -> ChargingSession:
        """Ask the charger to stop (RemoteStopTransaction); the StopTransaction settles.

        Raises:
            NotFound: no such session (or not the driver's).
            Conflict: the session is not charging.
        """
        session = await self.get(session_id, driver_id)
        if session.status in WAITING or session.status == "queued":
            return await self._fail(session_id, "stopped before charging started")
        if session.status != "charging" or session.transaction_pk is None:
            raise Conflict(f"the session is {session.status}", field="status")
        await self._set(session_id, stop_requested_at=utcnow(), stop_reason="driver")
        await self._remote_stop(session)
        return await self.get(session_id)

    async def _remote_stop(self, session: ChargingSession) -> None:
        tx = await self.db.read(lambda s: s.get(Transaction, session.transaction_pk))
        if tx is None or tx.ocpp_id is None:
            return
        if self.outlets is not None and self.outlets.handles(session.charge_point_id):
            await self.outlets.stop_outlet(
                session.charge_point_id, tx.ocpp_id, session.stop_reason or "remote"
            )
            return
        try:
            status = await self.commands.remote_stop(session.charge_point_id, tx.ocpp_id)
            log.info("session %s: RemoteStop %s", session.id, status)
        except (CallFailed, NotConnected) as exc:
            log.warning("session %s: RemoteStop failed: %s", session.id, exc)

    # -- RFID -------------------------------------------------------------------------------

    async def authorize(self, cp_id: str, tag: str) -> AuthResult | None:
        """A driver's RFID card at a charge point: Accepted once a hold is in place; None when
        the tag is not a driver's. (OCPP 1.6 §4.1 Authorize.)"""

        async def find(s: AsyncSession) -> tuple[DriverTag | None, ChargingSession | None]:
            link = await s.get(DriverTag, tag)
            if link is None:
                return None, None
            pending = await self._first(
                s,
                col(ChargingSession.id_tag) == tag,
                col(ChargingSession.charge_point_id) == cp_id,
                col(ChargingSession.status) == "authorized",
            )
            return link, pending

        link, pending = await self.db.read(find)
        if link is None:
            return await self._remote_start_auth(cp_id, tag)
        if pending is not None:
            return AuthResult("Accepted")

        async def create(s: AsyncSession) -> ChargingSession:
            return await self._new_session(s, link.driver_id, cp_id, "rfid", tag)

        try:
            session = await self.db.write(create)
            await self._hold_or_raise(session)
        except (PaymentRequired, Unavailable, Conflict) as exc:
            log.info("%s: RFID %s refused: %s", cp_id, tag, exc.message)
            return AuthResult("Blocked", reason=exc.message)
        assert session.id is not None
        await self._set(session.id, status="authorized")
        return AuthResult("Accepted")

    async def _remote_start_auth(self, cp_id: str, tag: str) -> AuthResult | None:
        """The one-off tag of an app session being started here (a charger that authorises
        remote starts first: 1.6 AuthorizeRemoteTxRequests, 2.0.1 AuthorizeRemoteStart, F01)."""
        starting = await self.open_session(cp_id, tag, ("starting",))
        return None if starting is None else AuthResult("Accepted")

    async def open_session(
        self, cp_id: str, tag: str, statuses: tuple[str, ...] = OPEN
    ) -> ChargingSession | None:
        """The newest session of ``tag`` at ``cp_id`` in one of ``statuses`` (default: open)."""
        return await self.db.read(lambda s: self._first(
            s,
            col(ChargingSession.id_tag) == tag,
            col(ChargingSession.charge_point_id) == cp_id,
            col(ChargingSession.status).in_(statuses),
            newest=True,
        ))

    # -- hooks called by ChargingService ---------------------------------------------------

    async def on_start(self, s: AsyncSession, tx: Transaction, auth: AuthResult) -> AuthResult:
        """In the StartTransaction's unit of work: link the transaction to its session."""
        if tx.id_tag is None or (self._loaded and tx.id_tag not in self._paid_tags):
            return auth
        session = await self._first(
            s,
            col(ChargingSession.id_tag) == tx.id_tag,
            col(ChargingSession.charge_point_id) == tx.charge_point_id,
            col(ChargingSession.status).in_(("starting", "authorized")),
            newest=True,
        )
        if session is None:
            link = await s.get(DriverTag, tx.id_tag)
            if link is None:
                return auth
            # offline start (cached tag): the charger already charges; hold afterwards
            session = await self._new_session(
                s, link.driver_id, tx.charge_point_id, "offline", tx.id_tag
            )
        session.transaction_pk = tx.id
        session.connector_id = tx.connector_id
        if tx.connector_id is not None:
            self._charging_connectors.add((tx.charge_point_id, tx.connector_id))
        session.started_at = _billable_start(session, tx)
        if session.status != "authorizing":
            session.status = "charging"
        session.updated_at = utcnow()
        tx.session_id = session.id
        return AuthResult("Accepted")

    async def after_start(self, tx: Transaction) -> None:
        """After the StartTransaction answer: place the hold of an offline start."""
        if tx.session_id is None:
            return
        session = await self.get(tx.session_id)
        if session.origin == "offline" and session.status == "authorizing":
            self._spawn(lambda: self._offline_hold(session), f"offline-hold-{session.id}")

    async def _offline_hold(self, session: ChargingSession) -> None:
        assert session.id is not None
        try:
            await self._hold_or_raise(session)
        except (PaymentRequired, Unavailable) as exc:
            log.warning(
                "session %s: offline start without a hold (%s): stopping", session.id, exc.message
            )
            if await self._charging_unless_stopped(
                session.id,
                failure_reason=f"no hold: {exc.message}",
                stop_requested_at=utcnow(),
                stop_reason="hold_failed",
            ):
                await self._remote_stop(await self.get(session.id))
            return
        if not await self._charging_unless_stopped(session.id):
            await self._settle(session.id)

    async def _charging_unless_stopped(self, session_id: int, **values: Any) -> bool:
        """The session becomes ``charging`` (with ``values``) in one unit; False when the
        transaction stopped while the hold was being placed (an offline replay: the stop already
        made the session ``settling``, which must not be undone)."""

        async def unit(s: AsyncSession) -> bool:
            row = await s.get(ChargingSession, session_id)
            if row is None or row.status in ("settling", "completed", "payment_failed"):
                return False
            for key, value in {"status": "charging", **values}.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            return True

        return await self.db.write(unit)

    async def on_status(
        self, s: AsyncSession, cp_id: str, connector_id: int, status: str | None, at: datetime
    ) -> None:
        """In the StatusNotification's unit: remember statuses of a running session (for
        TIME / PARKING_TIME)."""
        if status is None or connector_id == 0:
            return
        if self._loaded and (cp_id, connector_id) not in self._charging_connectors:
            return
        session = await self._first(
            s,
            col(ChargingSession.charge_point_id) == cp_id,
            col(ChargingSession.connector_id) == connector_id,
            col(ChargingSession.status) == "charging",
        )
        if session is not None:
            session.status_log = [*session.status_log, [at.isoformat(), status]]

    async def after_meter(self, tx_pk: int, session_id: int, energy_wh: int | None) -> None:
        """After a MeterValues answer: the running cost; stop at the hold."""
        session = await self.get(session_id)
        if session.status != "charging" or session.stop_requested_at is not None:
            return
        cost = await self.running_cost(session)
        if cost.total < session.hold_amount or self.config.hold_reached_policy == "continue":
            return
        log.info(
            "session %s: running cost %s reached the hold %s: stopping",
            session_id,
            cost.total,
            session.hold_amount,
        )
        await self._set(session_id, stop_requested_at=utcnow(), stop_reason="hold_reached")
        self._spawn(lambda: self._remote_stop(session), f"hold-stop-{session_id}")

    async def on_stop(self, s: AsyncSession, tx: Transaction) -> None:
        """In the StopTransaction's unit: the final cost; the session becomes ``settling``."""
        if tx.session_id is None:
            return
        session = await s.get(ChargingSession, tx.session_id)
        if session is None or session.status not in ("charging", "authorizing"):
            return
        session.stopped_at = _billable_stop(tx)
        session.energy_wh = tx.energy_wh
        cost = await self._cost(s, session, tx)
        session.cost = cost_json(cost)
        session.status = "settling"
        session.updated_at = utcnow()

    async def after_stop(self, tx: Transaction) -> None:
        """After the StopTransaction answer: settle through billing."""
        if tx.connector_id is not None:
            self._charging_connectors.discard((tx.charge_point_id, tx.connector_id))
        if tx.session_id is not None:
            sid = tx.session_id
            self._spawn(lambda: self._settle(sid), f"settle-{sid}")

    # -- money ------------------------------------------------------------------------------

    async def running_cost(self, session: ChargingSession) -> Cost:
        """The cost of a charging session so far (from the samples stored up to now)."""
        return await self.db.read(lambda s: self._cost(s, session, None))

    async def _cost(
        self, s: AsyncSession, session: ChargingSession, tx: Transaction | None
    ) -> Cost:
        """The cost so far (``tx`` None: from the samples up to now) or final."""
        tariff = parse_tariff(session.tariff)
        assert session.transaction_pk is not None
        t = tx or await s.get(Transaction, session.transaction_pk)
        assert t is not None
        start = session.started_at or _billable_start(session, t)
        stop = (_billable_stop(t) if tx is not None else None) or utcnow()
        if stop < start:
            stop = start
        state = EnergyState.from_dict(t.meter_state)
        final = t.energy_wh if tx is not None else None
        readings = await self._readings(s, t, state, start, stop, final)
        periods = _periods(session.status_log, start, stop)
        return compute_cost(
            tariff, SessionUsage(start=start, stop=stop, readings=readings, periods=periods)
        )

    async def _readings(
        self,
        s: AsyncSession,
        tx: Transaction,
        state: EnergyState,
        start: datetime,
        stop: datetime,
        final: int | None,
    ) -> list[EnergyReading]:
        """Cumulative Wh since the start at trusted sample times, non-decreasing, ending with
        the settled energy at the stop."""
        from csms.metering import energy_so_far

        total = final if final is not None else energy_so_far(state)
        base = state.baseline_wh
        if base is None:
            base = Decimal(tx.meter_start or 0) if not state.session_relative else Decimal(0)
        rows = (
            await s.execute(
                select(col(MeterSample.timestamp), col(MeterSample.value))
                .where(
                    col(MeterSample.transaction_pk) == tx.id,
                    col(MeterSample.measurand) == ENERGY_REGISTER,
                    col(MeterSample.phase).is_(None),
                    col(MeterSample.timestamp_trusted).is_(True),
                    col(MeterSample.context) != "Transaction.Begin",
                )
                .order_by(col(MeterSample.timestamp))
            )
        ).all()
        readings: list[EnergyReading] = [EnergyReading(start, 0)]
        last = 0
        for at, value in rows:
            if at is None or value is None or not (start < at < stop):
                continue
            wh = int(min(max(Decimal(str(value)) - base, Decimal(last)), Decimal(total)))
            if wh > last:
                readings.append(EnergyReading(at, wh))
                last = wh
        readings.append(EnergyReading(stop, max(total, last)))
        return readings

    async def _settle(self, session_id: int) -> None:
        session = await self.get(session_id)
        if session.status != "settling" or session.cost is None:
            return
        try:
            view = await self.billing.settle(session_id, int(session.cost["amount"]))
        except BillingError as exc:
            log.warning("session %s: settle failed (%s); retrying later", session_id, exc)
            return
        await self.on_payment_change(view)

    async def on_payment_change(self, view: PaymentView) -> None:
        """Billing's ``on_change``: a settled payment completes its session."""
        try:
            sid = int(view.session_id)
        except ValueError:
            return
        if view.state not in (PaymentState.CAPTURED, PaymentState.CANCELED, PaymentState.FAILED):
            return

        async def unit(s: AsyncSession) -> None:
            row = await s.get(ChargingSession, sid)
            if row is None or row.status != "settling" or view.cost is None:
                return
            if view.state is PaymentState.FAILED:
                row.status = "payment_failed"
                row.failure_reason = view.failure_message or view.failure_code
            else:
                row.status = "completed"
            row.updated_at = utcnow()

        await self.db.write(unit)

    async def fail_queued(self, session_id: int, reason: str) -> ChargingSession | None:
        """Fail a session that is still ``queued`` and release its hold (called by
        ``csms.load`` when it can never start on its site: its charge point left the site, or
        the site became too small for it). Returns the failed session; None (nothing done)
        when it is no longer queued (started or stopped meanwhile)."""

        async def take(s: AsyncSession) -> bool:
            row = await s.get(ChargingSession, session_id)
            if row is None or row.status != "queued":
                return False
            row.status, row.failure_reason, row.updated_at = "failed", reason, utcnow()
            return True

        if not await self.db.write(take):
            return None
        return await self._released(session_id, reason)

    async def _fail(self, session_id: int, reason: str) -> ChargingSession:
        """Fail a session that never charged and release its hold."""
        await self._set(session_id, status="failed", failure_reason=reason)
        return await self._released(session_id, reason)

    async def _released(self, session_id: int, reason: str) -> ChargingSession:
        """After a session failed: free its place in the queue and release its hold."""
        if self.admission is not None:
            self.admission.release(session_id)
        try:
            await self.billing.cancel(session_id)
        except BillingError as exc:
            log.warning("session %s: releasing the hold failed: %s", session_id, exc)
        log.info("session %s failed: %s", session_id, reason)
        return await self.get(session_id)

    async def _set(self, session_id: int, **values: Any) -> None:
        async def unit(s: AsyncSession) -> None:
            row = await s.get(ChargingSession, session_id)
            assert row is not None
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = utcnow()

        await self.db.write(unit)

    # -- reading ----------------------------------------------------------------------------

    async def get(self, session_id: int, driver_id: str | None = None) -> ChargingSession:
        """A session; with ``driver_id``, only that driver's (else NotFound)."""
        row = await self.db.read(lambda s: s.get(ChargingSession, session_id))
        if row is None or (driver_id is not None and row.driver_id != driver_id):
            raise NotFound(f"no session {session_id}", field="id")
        return row

    def queue_position(self, session_id: int) -> int | None:
        """1-based place of a queued session in its site's queue (None: not queued)."""
        return None if self.admission is None else self.admission.queue_position(session_id)

    async def list_for(self, driver_id: str | None, limit: int = 100) -> list[ChargingSession]:
        """Sessions, newest first (one driver's, or all for operators)."""
        q = select(ChargingSession).order_by(col(ChargingSession.id).desc()).limit(limit)
        if driver_id is not None:
            q = q.where(col(ChargingSession.driver_id) == driver_id)
        return list((await self.db.read(lambda s: s.execute(q))).scalars())


def _billable_start(session: ChargingSession, tx: Transaction) -> datetime:
    """When billing starts: the charger's start time, but never before the paid session existed
    (a charger clock running late must not add hours of TIME to the bill). An offline start
    predates its session, so there the charger's (trusted) time stands."""
    start = tx.started_at or session.created_at
    if session.origin != "offline":
        start = max(start, session.created_at)
    return start


def _billable_stop(tx: Transaction) -> datetime | None:
    """When billing stops: the charger's stop time, never after we received the stop."""
    if tx.stopped_at is None or tx.stop_received_at is None:
        return tx.stopped_at
    return min(tx.stopped_at, tx.stop_received_at)


def cost_json(cost: Cost) -> dict[str, Any]:
    """The API shape of a cost: amounts in minor units, quantities as decimal strings."""
    return {
        "amount": cost.total,
        "amount_excl_vat": cost.total_excl_vat,
        "currency": cost.currency,
        "energy_wh": int(cost.energy_wh),
        "charging_seconds": int(cost.charging_seconds),
        "parking_seconds": int(cost.parking_seconds),
        "lines": [
            {
                "type": line.type,
                "quantity": str(line.quantity),
                "unit": line.unit,
                "unit_price": str(line.unit_price),
                "vat": None if line.vat is None else str(line.vat),
                "amount": line.amount,
            }
            for line in cost.lines
        ],
    }


def _periods(status_log: list[Any], start: datetime, stop: datetime) -> list[Period]:
    """CHARGING / PARKING periods from a session's connector statuses, clipped to the session
    (Charging -> CHARGING; SuspendedEV, SuspendedEVSE, Finishing -> PARKING). No status at all
    means the whole session counts as charging."""
    points: list[tuple[datetime, str]] = []
    for at_text, status in status_log:
        try:
            at = datetime.fromisoformat(at_text)
        except (TypeError, ValueError):
            continue
        points.append((min(max(at, start), stop), status))
    points.sort(key=lambda p: p[0])
    periods: list[Period] = []
    current_state: PeriodState | None = PeriodState.CHARGING
    current_from = start
    for at, status in points:
        new_state = (
            PeriodState.CHARGING
            if status in CHARGING_STATUSES
            else PeriodState.PARKING
            if status in PARKING_STATUSES
            else None
        )
        if current_state is not None and at > current_from:
            periods.append(Period(current_from, at, current_state))
        current_state, current_from = new_state, at
    if current_state is not None and stop > current_from:
        periods.append(Period(current_from, stop, current_state))
    return periods
