"""OCPP 2.0.1 charging-station messages translated into :class:`csms.service.ChargingService`
calls: the same domain path as OCPP 1.6 (one transaction model, one session and billing layer).
One small handler per action; the use-case id of the 2.0.1 specification is in each docstring.

What is 2.0.1-specific lives in small companions: :mod:`csms.ocpp.txlog` (TransactionEvent
seqNo, replays, late events), :mod:`csms.ocpp.device_model` (NotifyReport), and
:mod:`csms.ocpp.pricing` (tariff and cost texts, California Pricing data).

TransactionEvent (E01-E07) maps onto the service like this:

* Started -> ``start_transaction`` with the station's ``transactionId`` as ``ocpp_id`` and the
  idToken as the tag (or, without an idToken, the one-off tag of the app session whose id is the
  ``remoteStartId``, F01/F02). Its meter values (Transaction.Begin) go in as samples;
  ``meter_start`` stays None: the energy comes from the register readings
  (:func:`csms.metering.settle_energy`), which keeps an offline start with an odd Begin reading
  from being billed for the station's lifetime register.
* Updated -> ``meter_values``; an idToken on a transaction that had none (E02/E03, authorised
  after the cable was plugged in) links it to its driver then; ``chargingState`` feeds the
  session's charging / parking periods.
* Ended -> ``stop_transaction`` (``meter_stop`` None, stoppedReason as reason); the answer
  carries ``totalCost`` (I03: the final cost in major units, 0.00 when free).
* The first event seen for an unknown transaction starts it, whatever its type, so an Ended
  that overtook its Started (or a lost Started) is billed instead of kept as an orphan.

Messages that carry billing data or must never be refused (BootNotification,
StatusNotification, TransactionEvent, MeterValues) are ``tolerant`` routes, as in 1.6.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from billing.tariff import Cost, parse_tariff
from csms.errors import CallFailed, NotConnected, NotFound
from csms.metering import EnergyState, Sample, normalise_meter_values
from csms.models import ChargingSession, Transaction, utcnow
from csms.ocpp.connection import CallContext, Route
from csms.ocpp.device_model import DeviceModelStore
from csms.ocpp.pricing import (
    CHARGING_STATE_STATUS,
    california_prices,
    california_running_cost,
    cost_text,
    major,
    message,
    tariff_text,
)
from csms.ocpp.rpc import OcppError
from csms.ocpp.txlog import EventIn, TransactionEventLog, Verdict
from csms.ocpp.v16 import heartbeat, recorder, text_or_none
from csms.service import (
    AuthResult,
    BootInfo,
    ChargingService,
    StartRequest,
    StatusReport,
    StopRequest,
    canonical_id_tag,
)
from csms.timestamps import ParsedTime, effective_time, format_utc, parse_timestamp

if TYPE_CHECKING:
    from csms.commands import CommandService

log = logging.getLogger(__name__)

EVENT_TYPES = frozenset({"Started", "Updated", "Ended"})
HEX_TOKEN_TYPES = frozenset({"ISO14443", "ISO15693", "MacAddress"})
"""idToken types that are hex identifiers: separators (``:``, ``-``, blanks) are dropped."""
MAX_PENDING_BOOTS = 3


class Sessions(Protocol):
    """What the handlers read of the paid-session layer (:class:`csms.sessions.SessionService`)."""

    async def get(self, session_id: int, driver_id: str | None = None) -> ChargingSession:
        """A session (NotFound if unknown)."""
        ...

    async def open_session(self, cp_id: str, tag: str, statuses: tuple[str, ...] = ...
                           ) -> ChargingSession | None:
        """The newest open session of a tag at a charge point."""
        ...

    async def running_cost(self, session: ChargingSession) -> Cost:
        """The cost so far of a charging session."""
        ...


def token_tag(token: dict[str, Any] | None) -> str | None:
    """C01: the canonical id tag of an ``IdTokenType``, matched against operator tags and
    drivers' cards like a 1.6 idTag. ISO14443 / ISO15693 UIDs and MAC addresses lose their
    separators; eMAID, KeyCode, Local and Central (our one-off app tokens) are kept as sent;
    NoAuthorization has no tag (None: nobody to bill, so it is not authorised)."""
    if not isinstance(token, dict) or token.get("type") == "NoAuthorization":
        return None
    raw = "" if token.get("idToken") is None else str(token["idToken"])
    if token.get("type") in HEX_TOKEN_TYPES:
        raw = raw.replace(":", "").replace("-", "").replace(" ", "")
    return canonical_id_tag(raw)


def _object(value: Any) -> dict[str, Any]:
    """A nested object field, or {} when a station sent something else (tolerant routes)."""
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    """A 32-bit integer field (ids, seqNo) tolerating numeric text; None when it is not one."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, int):
        try:
            value = int(float(str(value)))
        except (TypeError, ValueError, OverflowError):
            return None
    return value if -(2**31) <= value < 2**31 else None


def _begin_time(ts: ParsedTime, samples: list[Sample]) -> ParsedTime:
    """The start of a transaction first seen in an Updated/Ended event: its earliest trusted
    sample time (an Ended carries the Transaction.Begin reading), else the event time."""
    earliest = ts
    for sample in samples:
        at = sample.timestamp
        if at.trusted and at.value is not None and (
            earliest.value is None or at.value < earliest.value
        ):
            earliest = at
    return earliest


class V201Handlers:
    """The routes of OCPP 2.0.1, built from the shared service and settings.

    ``commands`` sends CSMS-initiated calls (CostUpdated, GetBaseReport); ``sessions`` is set by
    the composition root once billing runs (tariff texts, running costs, remote-start links).
    ``provision_on_boot``: answer a station whose device model we do not know yet ``Pending``
    and ask for its base report (B02), at most ``MAX_PENDING_BOOTS`` times.
    """

    def __init__(
        self,
        service: ChargingService,
        heartbeat_interval: int,
        commands: CommandService | None = None,
        *,
        provision_on_boot: bool = False,
        pending_interval: int = 10,
    ) -> None:
        self.service = service
        self.heartbeat_interval = heartbeat_interval
        self.commands = commands
        self.sessions: Sessions | None = None
        self.provision_on_boot = provision_on_boot
        self.pending_interval = pending_interval
        self.device_model = DeviceModelStore(service.db)
        self.events = TransactionEventLog(service.db)
        self._pending_boots: dict[str, int] = {}
        self._request_ids = itertools.count(1)
        r = service.metrics.registry
        self.tx_events = Counter(
            "csms_ocpp201_transaction_events_total",
            "OCPP 2.0.1 TransactionEvents by eventType and outcome (applied, replay, conflict, "
            "late, failed)", ["event_type", "outcome"], registry=r)
        self.seq_gaps = Counter(
            "csms_ocpp201_seqno_gaps_total", "TransactionEvent seqNo gaps seen", registry=r)
        self.security_events = Counter(
            "csms_ocpp201_security_events_total", "SecurityEventNotifications received",
            registry=r)
        self.cost_updates = Counter(
            "csms_ocpp201_cost_updates_total", "CostUpdated calls by result", ["result"],
            registry=r)

    def routes(self) -> dict[str, Route]:
        """Action name -> route."""
        return {
            "BootNotification": Route(self.boot_notification, tolerant=True),
            "Heartbeat": Route(heartbeat),
            "StatusNotification": Route(self.status_notification, tolerant=True),
            "Authorize": Route(self.authorize),
            "TransactionEvent": Route(self.transaction_event, tolerant=True),
            "MeterValues": Route(self.meter_values, tolerant=True),
            "NotifyReport": Route(self.notify_report),
            "NotifyEvent": Route(recorder(self.service, "notify_event")),  # N07
            "SecurityEventNotification": Route(self.security_event),
            "LogStatusNotification": Route(recorder(self.service, "diagnostics_status")),  # N01
            "FirmwareStatusNotification": Route(recorder(self.service, "firmware_status")),  # L01
            "DataTransfer": Route(
                recorder(self.service, "data_transfer", {"status": "UnknownVendorId"})
            ),
        }

    # -- provisioning ---------------------------------------------------------------------

    async def boot_notification(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """B01 (Accepted), B02 (Pending: provisioning first), B03 (Rejected: unknown station);
        every answer carries the interval to heartbeat or to retry in."""
        station = _object(p.get("chargingStation"))
        modem = _object(station.get("modem"))
        cp_id = ctx.charge_point_id
        status = await self.service.boot(
            cp_id,
            BootInfo(
                vendor=text_or_none(station.get("vendorName")),
                model=text_or_none(station.get("model")),
                serial_number=text_or_none(station.get("serialNumber")),
                firmware_version=text_or_none(station.get("firmwareVersion")),
                iccid=text_or_none(modem.get("iccid")),
                imsi=text_or_none(modem.get("imsi")),
                reason=text_or_none(p.get("reason")),
            ),
        )
        interval = self.heartbeat_interval
        if status == "Accepted" and await self._needs_provisioning(cp_id):
            status, interval = "Pending", self.pending_interval
            ctx.connection.after_reply(lambda: self._request_base_report(cp_id))
        return {"status": status, "currentTime": format_utc(ctx.received_at),
                "interval": interval}

    async def _needs_provisioning(self, cp_id: str) -> bool:
        if not self.provision_on_boot or self.commands is None:
            return False
        if await self.device_model.known(cp_id):
            self._pending_boots.pop(cp_id, None)
            return False
        count = self._pending_boots.get(cp_id, 0)
        if count >= MAX_PENDING_BOOTS:
            return False
        self._pending_boots[cp_id] = count + 1
        return True

    async def _request_base_report(self, cp_id: str) -> None:
        """B07 during B02: ask a Pending station for its full device model."""
        assert self.commands is not None
        payload = {"requestId": next(self._request_ids), "reportBase": "FullInventory"}
        try:
            result = await self.commands.call(cp_id, "GetBaseReport", payload)
        except (CallFailed, NotConnected) as exc:
            result = {"status": f"failed: {exc.message}"}
        if result.get("status") != "Accepted":
            log.info("%s: no base report (%s): accepting at the next boot", cp_id, result)
            self._pending_boots[cp_id] = MAX_PENDING_BOOTS

    async def status_notification(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """G01: the status of one connector of one EVSE."""
        await self.service.status(
            ctx.charge_point_id,
            StatusReport(
                connector_id=_int(p.get("evseId")) or 0,
                evse_connector_id=_int(p.get("connectorId")) or 0,
                status=text_or_none(p.get("connectorStatus")),
                timestamp=parse_timestamp(
                    p.get("timestamp"), ctx.received_at, self.service.skew_tolerance_s
                ),
            ),
        )
        return {}

    async def notify_report(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """B07 / B08: store the device model the station reports (GetBaseReport,
        GetCustomReport), part by part."""
        cp_id = ctx.charge_point_id
        stored = await self.device_model.store_report(
            cp_id, _int(p.get("requestId")), list(p.get("reportData") or []))
        if not p.get("tbc"):
            await self.service.record_event(cp_id, "notify_report", {
                "requestId": p.get("requestId"), "seqNo": p.get("seqNo"),
                "generatedAt": p.get("generatedAt"), "attributes_in_last_part": stored})
        return {}

    async def security_event(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """A04: a security event of the station, kept for operators and counted."""
        self.security_events.inc()
        log.info("%s: security event %s", ctx.charge_point_id, p.get("type"))
        await self.service.record_event(ctx.charge_point_id, "security_event", dict(p))
        return {}

    # -- authorisation --------------------------------------------------------------------

    async def authorize(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """C01 (any idToken type), C05 (Central), C07 (eMAID, certificates not checked):
        an operator tag, or a driver's card (the hold is placed before Accepted)."""
        cp_id = ctx.charge_point_id
        tag = token_tag(p.get("idToken"))
        auth = await self.service.authorize(cp_id, tag)
        session = None
        if tag is not None and auth.status == "Accepted" and self.sessions is not None:
            session = await self.sessions.open_session(cp_id, tag)
        return {"idTokenInfo": await self._token_info(cp_id, auth, session)}

    async def _token_info(self, cp_id: str, auth: AuthResult,
                          session: ChargingSession | None) -> dict[str, Any]:
        """IdTokenInfoType: status, cache expiry, group, and for a paid session the tariff text
        (personalMessage) and, where the station declared it, California Pricing data."""
        info: dict[str, Any] = {"status": auth.status}
        if auth.expiry_date is not None:
            info["cacheExpiryDateTime"] = format_utc(auth.expiry_date)
        if auth.parent_id_tag:
            info["groupIdToken"] = {"idToken": auth.parent_id_tag[:36], "type": "Central"}
        if session is not None and auth.status == "Accepted":
            tariff = parse_tariff(session.tariff)
            info["personalMessage"] = message(tariff_text(tariff))
            if (await self.device_model.pricing(cp_id))[1]:
                info["customData"] = california_prices(tariff)
        return info

    # -- transactions ---------------------------------------------------------------------

    async def meter_values(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """J01: meter values outside a transaction (per EVSE), kept normalised."""
        samples, _warnings = normalise_meter_values(
            p.get("meterValue") or [], ctx.received_at, self.service.skew_tolerance_s)
        await self.service.meter_values(ctx.charge_point_id, _int(p.get("evseId")), None, samples)
        return {}

    async def transaction_event(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """E01-E07 (start, update, stop; offline E11/E12 replays), F01/F02 (remote start
        linked by remoteStartId), I02/I03 (running cost, totalCost). See the module docstring
        and :mod:`csms.ocpp.txlog` for the order rules."""
        cp_id = ctx.charge_point_id
        info = p.get("transactionInfo") or {}
        if info.get("transactionId") in (None, ""):
            raise OcppError("OccurrenceConstraintViolation",
                            "transactionInfo.transactionId is required",
                            {"field": "transactionInfo.transactionId"})
        seq = _int(p.get("seqNo"))
        ev = EventIn(
            transaction_id=str(info["transactionId"])[:64],
            seq_no=-1 if seq is None else seq,
            event_type=str(p.get("eventType")),
            trigger_reason=text_or_none(p.get("triggerReason")),
            offline=p.get("offline") is True,
            timestamp_raw=text_or_none(p.get("timestamp")),
            message_id=ctx.message_id,
            payload=dict(p),
        )
        verdict = await self.events.judge(cp_id, ev)
        tx = await self._find(cp_id, ev.transaction_id)
        tag = token_tag(p.get("idToken"))
        auth: AuthResult | None = None
        flags: tuple[str, ...] = ()
        try:
            if verdict.outcome == "applied":
                tx, auth, flags = await self._apply(ctx, ev, p, tx, tag)
        except Exception:
            self.tx_events.labels(self._kind(ev), "failed").inc()
            await self.events.record(cp_id, ev, verdict, tx.id if tx else None, "failed")
            raise
        await self.events.record(cp_id, ev, verdict, tx.id if tx else None, extra_flags=flags)
        self.tx_events.labels(self._kind(ev), verdict.outcome).inc()
        if verdict.missing:
            self.seq_gaps.inc()
            log.warning("%s: transaction %s seqNo gap, missing %s", cp_id, ev.transaction_id,
                        list(verdict.missing))
        return await self._tx_answer(ctx, ev, verdict, tx, p.get("idToken"), tag, auth)

    @staticmethod
    def _kind(ev: EventIn) -> str:
        return ev.event_type if ev.event_type in EVENT_TYPES else "other"

    async def _apply(
        self, ctx: CallContext, ev: EventIn, p: dict[str, Any], tx: Transaction | None,
        tag: str | None,
    ) -> tuple[Transaction | None, AuthResult | None, tuple[str, ...]]:
        """Hand one new event to the charging service; returns the transaction (None if it
        could not be found), the authorisation to answer, and flags for the transaction."""
        cp_id, skew = ctx.charge_point_id, self.service.skew_tolerance_s
        info = p.get("transactionInfo") or {}
        evse = p.get("evse") or {}
        evse_id = _int(evse.get("id"))
        ts = parse_timestamp(p.get("timestamp"), ctx.received_at, skew)
        samples, _warnings = normalise_meter_values(p.get("meterValue") or [], ctx.received_at,
                                                     skew)
        auth: AuthResult | None = None
        flags: tuple[str, ...] = ()
        if tx is None:
            started = ev.event_type == "Started"
            start_tag = tag or await self._remote_start_tag(cp_id, _int(info.get("remoteStartId")))
            result = await self.service.start_transaction(cp_id, StartRequest(
                connector_id=evse_id,
                id_tag_raw=start_tag,
                meter_start=None,
                timestamp=ts if started else _begin_time(ts, samples),
                ocpp_id=ev.transaction_id,
                reservation_id=_int(p.get("reservationId")),
                samples=samples if started else [],
            ))
            auth = result.auth
            if started:
                samples = []
            else:
                flags = ("implicit_start",)
                log.warning("%s: %s for unknown transaction %s: started from it", cp_id,
                            ev.event_type, ev.transaction_id)
            tx = await self._find(cp_id, ev.transaction_id)
        elif tag is not None and tx.id_tag is None:
            auth = await self._late_authorization(cp_id, tx, tag, p.get("idToken"))
            tx = await self._find(cp_id, ev.transaction_id)
        if tx is None:
            return None, auth, flags
        state = CHARGING_STATE_STATUS.get(str(info.get("chargingState")))
        if state is not None and tx.session_id is not None:
            await self._charging_state(cp_id, evse_id or tx.connector_id, state, ts, ctx)
        if ev.event_type == "Ended":
            await self.service.stop_transaction(cp_id, StopRequest(
                ocpp_id=ev.transaction_id,
                id_tag_raw=tag,
                meter_stop=None,
                timestamp=ts,
                reason=text_or_none(info.get("stoppedReason")) or "Local",
                samples=samples,
                message_id=ctx.message_id,
            ))
            return await self._find(cp_id, ev.transaction_id), auth, flags
        if samples:
            await self.service.meter_values(cp_id, evse_id or tx.connector_id,
                                            ev.transaction_id, samples)
            if tx.session_id is not None:
                # priced now, from what this event committed; sent once the answer is out
                payload = await self._running_cost_payload(cp_id, ev, tx.session_id)
                if payload is not None:
                    ctx.connection.after_reply(lambda: self._send_cost_updated(cp_id, payload))
        return tx, auth, flags

    async def _find(self, cp_id: str, ocpp_id: str) -> Transaction | None:
        """The (non-orphan) transaction with this station-issued id."""

        async def fn(s: AsyncSession) -> Transaction | None:
            return (await s.execute(select(Transaction).where(
                col(Transaction.charge_point_id) == cp_id,
                col(Transaction.ocpp_id) == ocpp_id,
                col(Transaction.status) != "orphan",
            ).order_by(col(Transaction.id).desc()).limit(1))).scalars().first()

        return await self.service.db.read(fn)

    async def _remote_start_tag(self, cp_id: str, remote_start_id: int | None) -> str | None:
        """F01/F02: the one-off tag of the app session whose id is ``remoteStartId`` (a station
        may start before it repeats the idToken)."""
        if remote_start_id is None or self.sessions is None:
            return None
        try:
            session = await self.sessions.get(remote_start_id)
        except NotFound:
            return None
        if session.charge_point_id != cp_id or session.status != "starting":
            return None
        return session.id_tag

    async def _late_authorization(self, cp_id: str, tx: Transaction, tag: str,
                                  token: Any) -> AuthResult | None:
        """E02/E03: a transaction started without an idToken (cable first) gets its driver
        when the idToken arrives in a later event: the tag is set and the session hooks link it
        (hold, offline start) as they do at a start."""
        hooks = self.service.hooks

        async def unit(s: AsyncSession) -> tuple[AuthResult | None, Transaction | None]:
            row = await s.get(Transaction, tx.id)
            if row is None or row.id_tag is not None:
                return None, None
            row.id_tag = tag
            row.id_tag_raw = text_or_none((token or {}).get("idToken"))
            auth = await self.service.authorizer.authorize(s, cp_id, tag)
            if hooks is not None:
                auth = await hooks.on_start(s, row, auth)
            kept = {f for f in row.flags if not f.startswith("auth_")}
            if auth.status != "Accepted":
                kept.add(f"auth_{auth.status.lower()}")
            row.flags = sorted(kept | {"late_authorization"})
            return auth, row

        auth, row = await self.service.db.write(unit)
        if hooks is not None and row is not None:
            await hooks.after_start(row)
        return auth

    async def _charging_state(self, cp_id: str, connector_id: int | None, status: str,
                              ts: ParsedTime, ctx: CallContext) -> None:
        """E01/E02 chargingState: the session's charging and parking periods, as connector
        statuses do for 1.6 (the connector row keeps the 2.0.1 StatusNotification status)."""
        hooks = self.service.hooks
        if hooks is None or connector_id is None:
            return
        at = effective_time(ts, ctx.received_at)
        await self.service.db.write(lambda s: hooks.on_status(s, cp_id, connector_id, status, at))

    async def _tx_answer(
        self, ctx: CallContext, ev: EventIn, verdict: Verdict, tx: Transaction | None,
        token: Any, tag: str | None, auth: AuthResult | None,
    ) -> dict[str, Any]:
        """TransactionEventResponse: idTokenInfo when an idToken came (E01), totalCost and
        the final cost text when the transaction has ended (I03)."""
        cp_id = ctx.charge_point_id
        answer: dict[str, Any] = {}
        ended = ev.event_type == "Ended" and tx is not None and tx.status == "completed"
        session = None
        if (token is not None or ended) and tx is not None and tx.session_id is not None \
                and self.sessions is not None:
            session = await self.sessions.get(tx.session_id)
        if token is not None:
            if auth is None:
                auth = await self._current_auth(cp_id, tx, tag)
            answer["idTokenInfo"] = await self._token_info(cp_id, auth, session)
        if ended and tx is not None:
            if tx.session_id is None:
                answer["totalCost"] = 0.0
            elif session is not None and session.cost is not None:
                amount, currency = int(session.cost["amount"]), str(session.cost["currency"])
                answer["totalCost"] = major(amount, currency)
                answer["updatedPersonalMessage"] = message(
                    cost_text(amount, currency, session.energy_wh))
        return answer

    async def _current_auth(self, cp_id: str, tx: Transaction | None,
                            tag: str | None) -> AuthResult:
        """The status of an idToken repeated in a later event (no new hold is placed)."""
        if tag is None:
            return AuthResult("Invalid", reason="no id token")
        if tx is not None and tx.session_id is not None and tx.id_tag == tag:
            return AuthResult("Accepted")
        authorizer = self.service.authorizer
        return await self.service.db.read(lambda s: authorizer.authorize(s, cp_id, tag))

    async def _running_cost_payload(self, cp_id: str, ev: EventIn, session_id: int
                                    ) -> dict[str, Any] | None:
        """I02: the CostUpdated payload with the running cost (and California Pricing data where
        declared); None where the station reported that it does not show costs."""
        if self.commands is None or self.sessions is None:
            return None
        shows, california = await self.device_model.pricing(cp_id)
        if not shows:
            return None
        session = await self.sessions.get(session_id)
        if session.status != "charging":
            return None
        cost = await self.sessions.running_cost(session)
        payload: dict[str, Any] = {"totalCost": major(cost.total, cost.currency),
                                   "transactionId": ev.transaction_id}
        if california:
            tx = await self._find(cp_id, ev.transaction_id)
            register = EnergyState.from_dict(tx.meter_state).last_wh if tx else None
            payload["customData"] = california_running_cost(
                parse_tariff(session.tariff), utcnow(),
                None if register is None else int(register), charging=True)
        return payload

    async def _send_cost_updated(self, cp_id: str, payload: dict[str, Any]) -> None:
        """Send a CostUpdated (I02); a charger that does not take it is only counted."""
        assert self.commands is not None
        try:
            await self.commands.call(cp_id, "CostUpdated", payload)
            self.cost_updates.labels("ok").inc()
        except (CallFailed, NotConnected) as exc:
            self.cost_updates.labels(exc.code).inc()
            log.info("%s: CostUpdated not delivered: %s", cp_id, exc.message)
