"""Site load management (issue 7): share a feeder's current among the sessions behind it.

A site (``csms.load_models.Site``) is a feeder with a rated current, a number of phases and a
safety margin; its members are OCPP chargers and breaker sites (plain outlets). The manager
keeps, per site, the sessions that run or are starting, and a queue of sessions waiting for
capacity; :func:`csms.loadshare.allocate` decides the currents, this module measures and
pushes (drawn in docs/load-management.md):

* admission (:meth:`LoadManager.admit`, asked by ``SessionService.start_app_session`` after
  the hold): the session is admitted when it fits (capacity reserved, shares of the others
  lowered first), else it is ``queued``; when capacity frees, :meth:`SessionService.start_queued`
  starts it the normal way.
* a queued session that can never start on its site fails (``fail_queued``:
  ``SessionService.fail_queued``, which releases its hold): its charge point was removed from
  the site (a PUT with fewer members; also found at start for sessions left queued outside any
  site), or the site no longer fits it even when empty (an outlet rated above a lowered limit).
* a transaction starts or stops on a member (``ChargingService.start_listeners`` /
  ``stop_listeners``), or a session leaves (failed, stopped while queued): a pass runs at once.
* measured current: ``Current.Import`` of member chargers' MeterValues (``service.watchers``)
  and the last reading of **every** member breaker that reads closed, with or without a session
  (an operator's forced close draws too). When the total passes the limit, the limit used for
  sharing is lowered by the excess (``trim_a``) at once; the trim is given back by halves once
  the measured total plus half the trim fits again.
* pushes (only where a charger's limit changed by 0.1 A or more; every decrease is answered
  before any increase is sent, so the sum of what chargers may draw never exceeds the limit):
  a running transaction gets a **TxProfile** with its transactionId (OCPP 1.6 §5.16
  SetChargingProfile, §3.13.2; 2.0.1 K01 with ``evseId``); a charger whose admitted session
  has not started yet gets a **ChargePointMaxProfile** (1.6) / **ChargingStationMaxProfile**
  (2.0.1) on connector / EVSE 0 with its share, so that it starts limited; once its
  transaction has its TxProfile that cap is lifted to the charger's rating.

Units: A (per phase), seconds. Outlets cannot be throttled: they count at their breaker's rated
current while running and are admitted only when that whole current fits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from breaker.driver import BreakerState
from breaker.ocpp_relay import charging_profile_request
from csms.breakers import BreakerController
from csms.commands import CommandService
from csms.db import Database
from csms.errors import Conflict, CsmsError, InvalidRequest, NotFound
from csms.load_models import Site, SiteMember
from csms.loadshare import STEP, ZERO, Allocation, Demand, Kind, allocate, floor_step
from csms.metering import Sample
from csms.metrics import Metrics
from csms.models import ChargePoint, ChargingSession, Transaction, utcnow
from csms.ocpp import rpc
from csms.ocpp.server import ConnectionRegistry
from csms.service import ChargingService, StartRequest, StartResult, StopResult
from csms.timestamps import format_utc

log = logging.getLogger(__name__)

TX_PROFILE_ID = 91_000
"""Profile id of the TxProfile on connector/EVSE ``n``: ``TX_PROFILE_ID + n`` (a range of our
own, so operator profiles are not replaced)."""
MAX_PROFILE_ID = 90_999
"""Profile id of the ChargePointMaxProfile / ChargingStationMaxProfile."""
TX_STACK_LEVEL = 1
MAX_STACK_LEVEL = 0
DEBOUNCE_S = 0.05
"""A pass triggered by an event waits this long (seconds), so that a burst of starts is one
pass."""
TX_SETTLE_S = 0.25
"""A new transaction gets its TxProfile this long (seconds) after its start was stored: the
charger must have the StartTransaction answer (its transactionId) first, or it rejects a
profile naming it. Until then an admitted charger is held by its start cap."""


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """Timing of load management (from :class:`csms.settings.Settings`), seconds."""

    interval_s: float = 1.0
    push_timeout_s: float = 5.0


@dataclass(slots=True)
class _Member:
    cp_id: str
    priority: int
    max_a: Decimal
    """The charger's rating, A (a breaker's rated current is read from the controller)."""


@dataclass(slots=True)
class _Entry:
    """A session behind the feeder: running (``tx_pk`` set), starting, or queued."""

    key: str
    cp_id: str
    connector_id: int
    kind: Kind
    session_id: int | None
    tx_pk: int | None = None
    ocpp_id: str | None = None
    measured_a: Decimal | None = None
    measured_at: float = 0.0
    lowered_to: Decimal | None = None
    """The last decrease the charger accepted, A, and when (monotonic seconds): a sample
    older than that is known to be stale for control (it is still reported as measured)."""
    lowered_at: float = 0.0
    tx_at: float = 0.0
    """When the transaction start was stored (monotonic seconds)."""
    since: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _SiteState:
    site: Site
    members: dict[str, _Member]
    running: dict[str, _Entry] = field(default_factory=dict)
    """Running and starting sessions, in arrival order."""
    queue: list[_Entry] = field(default_factory=list)
    """Queued sessions, in arrival order (allocate orders them by priority)."""
    trim_a: Decimal = ZERO
    measured_a: Decimal = ZERO
    allocation: Allocation | None = None
    tx_pushed: dict[str, Decimal] = field(default_factory=dict)
    """Last TxProfile limit accepted per running key, A."""
    max_pushed: dict[str, Decimal] = field(default_factory=dict)
    """Last charge-point-wide limit accepted per charger, A."""

    @property
    def limit_a(self) -> Decimal:
        """Rated current less the safety margin, A (rounded down to 0.1 A)."""
        return site_limit(self.site.rated_current_a, self.site.safety_margin_pct)


def site_limit(rated_current_a: float, safety_margin_pct: float) -> Decimal:
    """A site's limit: ``rated_current_a`` (A) less ``safety_margin_pct`` (%), rounded down to
    0.1 A."""
    rated = Decimal(str(rated_current_a))
    margin = Decimal(str(safety_margin_pct)) / 100
    return floor_step(rated * (1 - margin))


def _key(cp_id: str, connector_id: int) -> str:
    return f"{cp_id}#{connector_id}"


def _current(samples: list[Sample]) -> Decimal | None:
    """Current.Import of one MeterValues, A: the unphased value, else the highest phase."""
    total: Decimal | None = None
    phased: Decimal | None = None
    for x in samples:
        if x.measurand != "Current.Import" or x.unit != "A" or x.value is None:
            continue
        if x.phase is None:
            total = Decimal(x.value)
        else:
            phased = max(phased or ZERO, Decimal(x.value))
    return total if total is not None else phased


def _num(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


class LoadManager:
    """Every load-managed site: admission, queue, measurement, profile pushes.

    Implements the session layer's ``Admission`` (``admit``, ``release``,
    ``queue_position``).
    """

    def __init__(
        self,
        db: Database,
        service: ChargingService,
        commands: CommandService,
        registry: ConnectionRegistry,
        breakers: BreakerController | None,
        metrics: Metrics,
        settings: LoadSettings | None = None,
    ) -> None:
        self.db = db
        self.service = service
        self.commands = commands
        self.registry = registry
        self.breakers = breakers
        self.metrics = metrics
        self.settings = settings or LoadSettings()
        self.start_queued: Callable[[int], Awaitable[None]] | None = None
        """Starts a session that left the queue (``SessionService.start_queued``)."""
        self.fail_queued: Callable[[int, str], Awaitable[object]] | None = None
        """Fails a queued session that can never start here and releases its hold
        (``SessionService.fail_queued``: only while it is still queued)."""
        self._sites: dict[str, _SiteState] = {}
        self._site_of: dict[str, str] = {}
        """Member charge point -> site id."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every site with its running, starting and queued sessions; follow
        transactions and meter values; start the periodic pass."""
        ids = await self.db.read(
            lambda s: s.execute(select(col(Site.id)).order_by(col(Site.id))))
        doomed: list[tuple[int, str]] = []
        for site_id in list(ids.scalars()):
            await self._load(site_id)
            doomed += self._drop_impossible(self._sites[site_id])
        await self._fail_sessions(doomed + await self._stranded())
        self.service.start_listeners.append(self._on_start)
        self.service.stop_listeners.append(self._on_stop)
        self._task = asyncio.create_task(self._run(), name="load-manager")

    async def close(self) -> None:
        """Stop the passes (profiles already pushed stay on the chargers)."""
        if self._on_start in self.service.start_listeners:
            self.service.start_listeners.remove(self._on_start)
        if self._on_stop in self.service.stop_listeners:
            self.service.stop_listeners.remove(self._on_stop)
        for cp_id in list(self._site_of):
            self._unwatch(cp_id)
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    def _spawn(self, job: Awaitable[None], what: str) -> None:
        async def runner() -> None:
            try:
                await job
            except Exception:
                log.exception("load management: %s failed", what)

        task = asyncio.create_task(runner(), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- site model -------------------------------------------------------------------------

    async def put_site(self, site_id: str, values: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a site (``values``: rated_current_a, phases, safety_margin_pct,
        min_current_a, members [{charge_point_id, priority, max_current_a}]; A, %).

        Queued sessions that can never start after the change fail and their holds are
        released before this returns: those of charge points no longer in any site, and those
        the site cannot fit even when empty (see :meth:`_drop_impossible`).

        Raises:
            InvalidRequest: a member is not a registered charge point (``field`` names it);
                ``min_current_a`` is above the site's limit; a member charger's
                ``max_current_a`` is below ``min_current_a`` (``members.N.max_current_a``).
            Conflict: a member belongs to another site.
        """
        members: list[dict[str, Any]] = values["members"]
        limit = site_limit(values["rated_current_a"], values["safety_margin_pct"])
        min_a = Decimal(str(values["min_current_a"]))
        if min_a > limit:
            raise InvalidRequest(
                f"min_current_a {min_a} A is above the site's limit {limit} A (rated current "
                "less the safety margin): no charger could ever start", field="min_current_a")
        for i, m in enumerate(members):
            max_a = Decimal(str(m["max_current_a"]))
            if self._kind(m["charge_point_id"]) == "charger" and max_a < min_a:
                raise InvalidRequest(
                    f"max_current_a {max_a} A is below the site's min_current_a {min_a} A",
                    field=f"members.{i}.max_current_a")

        async def unit(s: AsyncSession) -> None:
            seen: set[str] = set()
            for i, m in enumerate(members):
                cp_id = m["charge_point_id"]
                if cp_id in seen:
                    raise InvalidRequest(f"{cp_id!r} is listed twice",
                                         field=f"members.{i}.charge_point_id")
                seen.add(cp_id)
                if await s.get(ChargePoint, cp_id) is None:
                    raise InvalidRequest(f"unknown charge point {cp_id!r}",
                                         field=f"members.{i}.charge_point_id")
                other = await s.get(SiteMember, cp_id)
                if other is not None and other.site_id != site_id:
                    raise Conflict(f"{cp_id!r} belongs to site {other.site_id!r}",
                                   field=f"members.{i}.charge_point_id")
            row = await s.get(Site, site_id)
            if row is None:
                row = Site(id=site_id)
                s.add(row)
            for name in ("rated_current_a", "phases", "safety_margin_pct", "min_current_a"):
                setattr(row, name, values[name])
            row.updated_at = utcnow()
            await s.execute(delete(SiteMember).where(col(SiteMember.site_id) == site_id))
            await s.flush()
            for m in members:
                s.add(SiteMember(site_id=site_id, charge_point_id=m["charge_point_id"],
                                 priority=m["priority"], max_current_a=m["max_current_a"]))

        await self.db.write(unit)
        async with self._lock:
            await self._load(site_id)
            doomed = self._drop_impossible(self._sites[site_id])
        await self._fail_sessions(doomed + await self._stranded())
        self._wake.set()
        return self.site_json(site_id)

    async def _stranded(self) -> list[tuple[int, str]]:
        """Queued sessions whose charge point is in no site (removed while they waited, or
        left so by an older version): (session id, failure reason)."""
        rows = await self.db.read(lambda s: s.execute(
            select(col(ChargingSession.id), col(ChargingSession.charge_point_id)).where(
                col(ChargingSession.status) == "queued",
                col(ChargingSession.charge_point_id).not_in(
                    select(col(SiteMember.charge_point_id))))))
        return [(sid, f"charge point {cp_id!r} was removed from its site while the session "
                      "was queued") for sid, cp_id in rows if sid is not None]

    def _drop_impossible(self, st: _SiteState) -> list[tuple[int, str]]:
        """Take out of the queue the sessions that cannot fit on this site even when it is
        empty (an outlet rated above the limit, a charger's minimum above it): (session id,
        failure reason). Judged on the limit without the trim (a trim is temporary)."""
        out: list[tuple[int, str]] = []
        for e in list(st.queue):
            if self._impossible(st, e):
                st.queue.remove(e)
                if e.session_id is not None:
                    out.append((e.session_id, self._too_big(st, e)))
        if out:
            self._export(st)
        return out

    def _impossible(self, st: _SiteState, e: _Entry) -> bool:
        """True if ``e`` could not start on this site even with nothing else running."""
        d = self._demand(st, e, active=False)
        return d.key in allocate(st.limit_a, [d]).rejected

    @staticmethod
    def _too_big(st: _SiteState, e: _Entry) -> str:
        return (f"this {e.kind} needs more current than site {st.site.id!r} can give "
                f"({st.limit_a} A)")

    async def _fail_sessions(self, doomed: list[tuple[int, str]]) -> None:
        """Fail queued sessions (their holds are released); one failure does not stop the
        others."""
        for session_id, reason in doomed:
            if self.fail_queued is None:
                log.warning("session %s cannot start (%s) but nobody can fail it", session_id,
                            reason)
                continue
            try:
                await self.fail_queued(session_id, reason)
            except Exception:
                log.exception("failing queued session %s failed", session_id)

    async def _load(self, site_id: str) -> None:
        """(Re)build a site's state from the database: members, running transactions,
        starting and queued sessions. What was pushed before is kept."""

        async def fn(s: AsyncSession) -> tuple[Site | None, list[SiteMember], list[Transaction],
                                               list[ChargingSession]]:
            site = await s.get(Site, site_id)
            members = list((await s.execute(
                select(SiteMember).where(col(SiteMember.site_id) == site_id))).scalars())
            ids = [m.charge_point_id for m in members]
            txs = list((await s.execute(
                select(Transaction).where(col(Transaction.charge_point_id).in_(ids),
                                          col(Transaction.status) == "active")
                .order_by(col(Transaction.id)))).scalars())
            sessions = list((await s.execute(
                select(ChargingSession).where(
                    col(ChargingSession.charge_point_id).in_(ids),
                    col(ChargingSession.status).in_(("starting", "queued")),
                    col(ChargingSession.transaction_pk).is_(None))
                .order_by(col(ChargingSession.id)))).scalars())
            return site, members, txs, sessions

        site, members, txs, sessions = await self.db.read(fn)
        old = self._sites.pop(site_id, None)
        for cp_id, sid in list(self._site_of.items()):
            if sid == site_id:
                del self._site_of[cp_id]
                self._unwatch(cp_id)
        if site is None:
            return
        st = _SiteState(site, {m.charge_point_id: _Member(
            m.charge_point_id, m.priority, Decimal(str(m.max_current_a))) for m in members})
        if old is not None:
            st.tx_pushed, st.max_pushed, st.trim_a = old.tx_pushed, old.max_pushed, old.trim_a
        for tx in txs:
            if tx.id is None:
                continue
            conn = tx.connector_id or 1
            st.running[_key(tx.charge_point_id, conn)] = _Entry(
                _key(tx.charge_point_id, conn), tx.charge_point_id, conn,
                self._kind(tx.charge_point_id), tx.session_id, tx.id, tx.ocpp_id)
        for row in sessions:
            conn = row.connector_id or 1
            entry = _Entry(_key(row.charge_point_id, conn), row.charge_point_id, conn,
                           self._kind(row.charge_point_id), row.id)
            if row.status == "queued":
                st.queue.append(entry)
            else:
                st.running.setdefault(entry.key, entry)
        self._sites[site_id] = st
        for cp_id in st.members:
            self._site_of[cp_id] = site_id
            if self._kind(cp_id) == "charger":
                self.service.watchers.setdefault(cp_id, {})[self] = partial(self._observe, cp_id)
        self.metrics.site_limit.labels(site_id).set(float(st.limit_a))

    def _unwatch(self, cp_id: str) -> None:
        watchers = self.service.watchers.get(cp_id)
        if watchers is not None:
            watchers.pop(self, None)
            if not watchers:
                del self.service.watchers[cp_id]

    def _kind(self, cp_id: str) -> Kind:
        return "outlet" if self.breakers is not None and self.breakers.handles(cp_id) \
            else "charger"

    def _state(self, site_id: str) -> _SiteState:
        st = self._sites.get(site_id)
        if st is None:
            raise NotFound(f"unknown site {site_id!r}", field="id")
        return st

    def site_json(self, site_id: str) -> dict[str, Any]:
        """The API shape of a site's configuration. Raises NotFound."""
        st = self._state(site_id)
        s = st.site
        return {
            "id": s.id,
            "rated_current_a": s.rated_current_a,
            "phases": s.phases,
            "safety_margin_pct": s.safety_margin_pct,
            "min_current_a": s.min_current_a,
            "limit_a": float(st.limit_a),
            "members": [
                {"charge_point_id": m.cp_id, "priority": m.priority,
                 "max_current_a": float(m.max_a), "kind": self._kind(m.cp_id)}
                for m in sorted(st.members.values(), key=lambda m: m.cp_id)
            ],
            "created_at": s.created_at,
            "updated_at": s.updated_at,
        }

    def allocation_json(self, site_id: str) -> dict[str, Any]:
        """The API shape of a site's live state: limit, measured total, each running or
        starting session's allocation and measurement, member breakers that read closed
        without a session (``unmanaged``: e.g. a forced close; counted in ``measured_a``, not
        allocated), the queue. Currents A. Raises NotFound."""
        st = self._state(site_id)
        alloc = st.allocation
        amps = alloc.amps if alloc is not None else {}
        paused = set(alloc.paused) if alloc is not None else set()
        return {
            "site_id": site_id,
            "limit_a": float(st.limit_a),
            "trim_a": float(st.trim_a),
            "effective_limit_a": float(st.limit_a - st.trim_a),
            "measured_a": float(st.measured_a),
            "allocated_a": float(sum(amps.values(), ZERO)),
            "members": [
                {
                    "charge_point_id": e.cp_id,
                    "connector_id": e.connector_id,
                    "kind": e.kind,
                    "session_id": e.session_id,
                    "transaction_pk": e.tx_pk,
                    "state": "running" if e.tx_pk is not None else "starting",
                    "allocated_a": _num(amps.get(e.key)),
                    "measured_a": _num(self._measured(st, e)),
                    "paused": e.key in paused,
                }
                for e in st.running.values()
            ],
            "unmanaged": [
                {"charge_point_id": cp_id, "kind": "outlet", "measured_a": float(amps)}
                for cp_id, amps in self._unmanaged(st)
            ],
            "queue": [
                {"position": n, "session_id": e.session_id, "charge_point_id": e.cp_id,
                 "connector_id": e.connector_id, "kind": e.kind}
                for n, e in enumerate(self._queue_order(st), 1)
            ],
            "at": format_utc(utcnow()),
        }

    # -- Admission (asked by the session layer) --------------------------------------------

    async def admit(self, session_id: int, cp_id: str, connector_id: int,
                    on_queued: Callable[[], Awaitable[None]]) -> bool:
        """May this session start now? True: capacity reserved (other chargers' shares were
        lowered first; a charger has its start cap). False: queued, and ``on_queued`` was
        awaited before anything could take it out of the queue.

        Raises:
            Conflict: it can never fit on this site, even empty (an outlet rated above the
                limit; judged without the trim, which is temporary).
        """
        site_id = self._site_of.get(cp_id)
        if site_id is None:
            return True
        async with self._lock:
            st = self._sites[site_id]
            key = _key(cp_id, connector_id)
            entry = _Entry(key, cp_id, connector_id, self._kind(cp_id), session_id)
            if self._impossible(st, entry):
                raise Conflict(self._too_big(st, entry), field="connector_id")
            st.queue.append(entry)
            await self._pass(st, fresh=key)
            if key in st.running:
                return True
            await on_queued()
            self._export(st)
            log.info("site %s: session %s queued at position %s", site_id, session_id,
                     self.queue_position(session_id))
            return False

    def release(self, session_id: int) -> None:
        """The session will not start or run any more: drop it from its site; a pass follows
        (which may admit the next queued session)."""
        for st in self._sites.values():
            st.queue = [e for e in st.queue if e.session_id != session_id]
            for key, e in list(st.running.items()):
                if e.session_id == session_id and e.tx_pk is None:
                    del st.running[key]
            self._export(st)
        self._wake.set()

    def queue_position(self, session_id: int) -> int | None:
        """1-based place in its site's queue (priority first, then arrival), or None."""
        for st in self._sites.values():
            for n, e in enumerate(self._queue_order(st), 1):
                if e.session_id == session_id:
                    return n
        return None

    @staticmethod
    def _queue_order(st: _SiteState) -> list[_Entry]:
        def prio(e: _Entry) -> int:
            m = st.members.get(e.cp_id)
            return m.priority if m is not None else 0

        return [e for _, e in sorted(enumerate(st.queue), key=lambda p: (-prio(p[1]), p[0]))]

    # -- events from the OCPP domain -------------------------------------------------------

    async def _on_start(self, cp_id: str, req: StartRequest, result: StartResult) -> None:
        """A transaction started (stored, before the charger's answer): it runs now."""
        site_id = self._site_of.get(cp_id)
        if site_id is None:
            return
        st = self._sites[site_id]
        conn = req.connector_id or 1
        key = _key(cp_id, conn)
        entry = st.running.get(key)
        session_id = result.transaction.session_id if result.transaction is not None else None
        if entry is None:  # not admitted by us (RFID at the charger, offline start)
            entry = st.running[key] = _Entry(key, cp_id, conn, self._kind(cp_id), session_id)
        entry.tx_pk, entry.ocpp_id = result.transaction_pk, result.ocpp_id
        entry.session_id = entry.session_id or session_id
        entry.tx_at = time.monotonic()
        st.tx_pushed.pop(key, None)
        asyncio.get_running_loop().call_later(TX_SETTLE_S + 0.01, self._wake.set)

    async def _on_stop(self, cp_id: str, result: StopResult) -> None:
        """A transaction was finalised: its capacity is free."""
        site_id = self._site_of.get(cp_id)
        if site_id is None or result.transaction_pk is None:
            return
        st = self._sites[site_id]
        for key, e in list(st.running.items()):
            if e.tx_pk == result.transaction_pk:
                del st.running[key]
                st.tx_pushed.pop(key, None)
        self._wake.set()

    def _observe(self, cp_id: str, connector_id: int | None, status: str | None,
                 samples: list[Sample] | None) -> None:
        """A member charger's MeterValues (a ``service.watchers`` callback, synchronous)."""
        if not samples:
            return
        current = _current(samples)
        site_id = self._site_of.get(cp_id)
        if current is None or site_id is None:
            return
        st = self._sites[site_id]
        entry = st.running.get(_key(cp_id, connector_id or 1))
        if entry is None:
            return
        entry.measured_a, entry.measured_at = current, time.monotonic()
        if self._measure(st, control=True) > st.limit_a:
            self._wake.set()  # overshoot: react now, not at the next tick

    # -- the pass ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.settings.interval_s):
                    await self._wake.wait()
                await asyncio.sleep(DEBOUNCE_S)
            except TimeoutError:
                pass
            self._wake.clear()
            for site_id in list(self._sites):
                try:
                    await self.rebalance(site_id)
                except Exception:
                    log.exception("site %s: load management pass failed", site_id)

    async def rebalance(self, site_id: str) -> Allocation:
        """One pass over a site: measure, correct the limit, allocate, push, start whoever
        left the queue."""
        async with self._lock:
            return await self._pass(self._state(site_id))

    def _breaker_current(self, cp_id: str) -> Decimal | None:
        """A breaker's last measured current, A, when it reads closed (else None)."""
        live = self.breakers._live.get(cp_id) if self.breakers is not None else None
        r = live.reading if live is not None else None
        if r is None or r.state is not BreakerState.CLOSED or r.current_a is None:
            return None
        return Decimal(str(round(r.current_a, 3)))

    def _measured(self, st: _SiteState, e: _Entry) -> Decimal | None:
        if e.kind == "charger":
            return e.measured_a
        return self._breaker_current(e.cp_id)

    def _unmanaged(self, st: _SiteState) -> list[tuple[str, Decimal]]:
        """Member breakers that read closed and draw without a running or starting session
        here (an operator's forced close): (charge point, A)."""
        busy = {e.cp_id for e in st.running.values()}
        out = []
        for cp_id in sorted(st.members):
            if cp_id in busy or self._kind(cp_id) != "outlet":
                continue
            amps = self._breaker_current(cp_id)
            if amps is not None:
                out.append((cp_id, amps))
        return out

    def _measure(self, st: _SiteState, control: bool = False) -> Decimal:
        """The measured total, A: last Current.Import of running chargers plus the current
        of every member breaker that reads closed, with or without a session (a forced close
        draws too). ``control``: a charger's sample taken before it accepted a lower limit
        counts at most that limit (it is known to be stale; the next sample, one metering
        interval later, shows whether the charger followed)."""
        total = ZERO
        for e in st.running.values():
            if e.kind != "charger":
                continue
            value = e.measured_a or ZERO
            if control and e.lowered_to is not None and e.measured_at < e.lowered_at:
                value = min(value, e.lowered_to)
            total += value
        for cp_id in st.members:
            if self._kind(cp_id) == "outlet":
                total += self._breaker_current(cp_id) or ZERO
        return total

    def _demand(self, st: _SiteState, e: _Entry, active: bool) -> Demand:
        m = st.members.get(e.cp_id)
        prio = m.priority if m is not None else 0
        if e.kind == "outlet":
            live = self.breakers._live.get(e.cp_id) if self.breakers is not None else None
            rated = Decimal(live.row.rated_current_a) if live is not None else Decimal(16)
            return Demand(e.key, "outlet", rated, rated, prio, active)
        max_a = m.max_a if m is not None else Decimal(32)
        return Demand(e.key, "charger", max_a, Decimal(str(st.site.min_current_a)), prio,
                      active)

    def _demands(self, st: _SiteState) -> list[Demand]:
        return [*(self._demand(st, e, True) for e in st.running.values()),
                *(self._demand(st, e, False) for e in st.queue)]

    async def _pass(self, st: _SiteState, fresh: str | None = None) -> Allocation:
        """Measure, trim, allocate, push; queued sessions that fit move to ``running``
        (``fresh``: the one being admitted right now, whose start the caller makes); queued
        sessions that can no longer fit even on the empty site (its breaker's rating was
        raised, say) fail."""
        doomed = self._drop_impossible(st)
        if doomed:
            self._spawn(self._fail_sessions(doomed), "fail-queued")
        st.measured_a = self._measure(st)
        measured = self._measure(st, control=True)
        limit = st.limit_a
        if measured > limit:
            st.trim_a = min(limit, st.trim_a + measured - limit)
            log.warning("site %s: measured %s A over the limit %s A: trimming %s A",
                        st.site.id, measured, limit, st.trim_a)
        elif st.trim_a > 0 and measured + st.trim_a / 2 <= limit:
            st.trim_a = floor_step(st.trim_a / 2)
        alloc = allocate(limit - st.trim_a, self._demands(st))
        st.allocation = alloc
        leaving = [e for e in st.queue if e.key in alloc.admitted]
        for e in leaving:
            st.queue.remove(e)
            e.since = time.monotonic()
            st.running[e.key] = e
        await self._push(st, alloc)
        for e in leaving:
            if e.key != fresh and e.session_id is not None and self.start_queued is not None:
                log.info("site %s: session %s leaves the queue", st.site.id, e.session_id)
                self._spawn(self.start_queued(e.session_id), f"start-queued-{e.session_id}")
        self._export(st)
        return alloc

    def _export(self, st: _SiteState) -> None:
        sid = st.site.id
        self.metrics.site_limit.labels(sid).set(float(st.limit_a))
        self.metrics.site_measured.labels(sid).set(float(st.measured_a))
        self.metrics.site_queue.labels(sid).set(len(st.queue))

    # -- pushing profiles -------------------------------------------------------------------

    async def _push(self, st: _SiteState, alloc: Allocation) -> None:
        """Send what changed: decreases first (all answered), then increases."""
        down: list[Callable[[], Awaitable[bool]]] = []
        up: list[Callable[[], Awaitable[bool]]] = []
        for e in st.running.values():
            if e.kind != "charger" or e.tx_pk is None:
                continue
            amps = alloc.amps.get(e.key, ZERO)
            old = st.tx_pushed.get(e.key)
            if old is not None and abs(old - amps) < STEP:
                continue
            if old is None and time.monotonic() - e.tx_at < TX_SETTLE_S:
                continue  # the charger may not know its transactionId yet
            job = partial(self._push_tx, st, e, amps)
            (up if old is not None and amps > old else down).append(job)
        for cp_id, member in st.members.items():
            if self._kind(cp_id) != "charger":
                continue
            running = [e for e in st.running.values() if e.cp_id == cp_id]
            if any(e.tx_pk is None or e.key not in st.tx_pushed for e in running):
                # a start is coming, or a transaction has no TxProfile yet: the whole charger
                # is held at its share by the charge-point-wide cap
                want = sum((alloc.amps.get(e.key, ZERO) for e in running), ZERO)
            elif cp_id in st.max_pushed:
                want = member.max_a  # every transaction has its TxProfile: lift the cap
            else:
                continue
            old = st.max_pushed.get(cp_id)
            if old is not None and abs(old - want) < STEP:
                continue
            job = partial(self._push_max, st, cp_id, want)  # no cap yet: a decrease
            (up if old is not None and want > old else down).append(job)
        done = await asyncio.gather(*(job() for job in down))
        if not all(done):
            log.warning("site %s: a decrease was not accepted: increases wait for the next "
                        "pass", st.site.id)
            return
        await asyncio.gather(*(job() for job in up))

    async def _send(self, cp_id: str, payload: dict[str, Any]) -> bool:
        if self.registry.get(cp_id) is None:
            return False
        try:
            answer = await self.commands.call(cp_id, "SetChargingProfile", payload,
                                              self.settings.push_timeout_s)
        except CsmsError as exc:
            log.warning("%s: SetChargingProfile failed: %s", cp_id, exc)
            return False
        if answer.get("status") != "Accepted":
            log.warning("%s: SetChargingProfile %s", cp_id, answer.get("status"))
            return False
        return True

    def _version(self, cp_id: str) -> str:
        """The charger's OCPP version as the payload builder names it ("1.6" / "2.0.1")."""
        conn = self.registry.get(cp_id)
        return "2.0.1" if conn is not None and conn.version == rpc.OCPP201 else "1.6"

    async def _push_tx(self, st: _SiteState, e: _Entry, amps: Decimal) -> bool:
        """TxProfile for a running transaction (1.6 §5.16 / 2.0.1 K01)."""
        payload = charging_profile_request(
            self._version(e.cp_id), e.connector_id, amps,
            profile_id=TX_PROFILE_ID + e.connector_id, purpose="TxProfile",
            stack_level=TX_STACK_LEVEL, kind="Relative", transaction_id=e.ocpp_id or "0",
            number_phases=st.site.phases, schedule_id=1,
        )
        if not await self._send(e.cp_id, payload):
            return False
        if st.running.get(e.key) is e:
            old = st.tx_pushed.get(e.key)
            st.tx_pushed[e.key] = amps
            if old is None or amps < old:
                e.lowered_to, e.lowered_at = amps, time.monotonic()
        return True

    async def _push_max(self, st: _SiteState, cp_id: str, amps: Decimal) -> bool:
        """ChargePointMaxProfile (1.6) / ChargingStationMaxProfile (2.0.1) on connector 0."""
        version = self._version(cp_id)
        payload = charging_profile_request(
            version, 0, amps, profile_id=MAX_PROFILE_ID,
            purpose="ChargePointMaxProfile" if version == "1.6" else "ChargingStationMaxProfile",
            stack_level=MAX_STACK_LEVEL, number_phases=st.site.phases, schedule_id=1,
        )
        if not await self._send(cp_id, payload):
            return False
        st.max_pushed[cp_id] = amps
        return True
