"""Operator-side OCPP operations with stored results, the same for OCPP 1.6 and 2.0.1.

Each method picks the message of the charger's version, sends it through
:meth:`csms.commands.CommandService.call` (schema check, ``command`` row, typed errors) and
stores what the operation leaves behind (:mod:`csms.operations_models`). The charger-initiated
messages that update those records (firmware / diagnostics / log status notifications, security
events, ReportChargingProfiles, ReservationStatusUpdate) are added to the version route tables
by :meth:`OperationsService.install`; a route that already existed keeps its behaviour (its
event is still recorded) and our record is written first. Every write is committed before the
charger is answered.

==================================  ==============================  ==========================
operation                           OCPP 1.6                        OCPP 2.0.1
==================================  ==============================  ==========================
reserve_now / cancel_reservation    ReserveNow §5.13 / §5.1         ReserveNow H01 / H02
send_local_list                     SendLocalList §5.15             SendLocalList D01
get_local_list_version              GetLocalListVersion §5.10       GetLocalListVersion D02
set_charging_profile                SetChargingProfile §5.16        SetChargingProfile K01
clear_charging_profile              ClearChargingProfile §5.5       ClearChargingProfile K10
get_composite_schedule              GetCompositeSchedule §5.7       GetCompositeSchedule K08
get_charging_profiles               (none)                          GetChargingProfiles K09
update_firmware                     UpdateFirmware §5.19 or         UpdateFirmware L01
                                    SignedUpdateFirmware (whitep.)
get_diagnostics                     GetDiagnostics §5.9             GetLog DiagnosticsLog N01
get_log                             GetLog (whitepaper)             GetLog N01
install / get ids / delete cert.    whitepaper §3 (same names)      M05 / M03 / M04
set_variable_monitoring             (none)                          SetVariableMonitoring N04
==================================  ==============================  ==========================

Reservations become Used when a transaction starts with their reservationId, or by their idTag
(or a tag with their parentIdTag) on their connector or any connector for a charger-wide one
(1.6 §3.10, 2.0.1 H03); Expired once past their expiry date (decided when read, and stored).

Every call here asks for a strict answer (``CommandService.call(..., strict=True)``): an answer
that does not match the OCPP schema raises :class:`csms.errors.InvalidAnswer` (HTTP 502 naming
the field) and **nothing is stored from it**: a record made before the call (reservation, local
list version, job) ends as after a timeout (``Failed``; a job's history says why), and records
made from the answer (profiles, certificates, reported list version) are not written. The raw
answer stays in the ``command`` row (status ``invalid_answer``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from csms.commands import CommandService
from csms.db import Database
from csms.errors import CallFailed, Conflict, InvalidRequest, NotConnected, NotFound
from csms.models import ChargePoint, Connector, DriverTag, IdTag, utcnow
from csms.ocpp import rpc
from csms.ocpp.connection import CallContext, Handler, Route
from csms.operations_models import (
    ChargingProfileRecord,
    FirmwareJob,
    InstalledCertificate,
    LocalListEntry,
    LocalListVersion,
    Reservation,
    SecurityEvent,
    VariableMonitor,
)
from csms.service import ChargingService, StartRequest, StartResult, canonical_id_tag
from csms.timestamps import format_utc, parse_timestamp

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({
    # firmware (1.6 §7.25, whitepaper, 2.0.1 FirmwareStatusEnumType)
    "Installed", "InstallationFailed", "DownloadFailed", "InvalidSignature",
    "InstallVerificationFailed",
    # diagnostics / logs (1.6 §7.24, UploadLogStatusEnumType)
    "Uploaded", "UploadFailed", "UploadFailure", "BadMessage", "NotSupportedOperation",
    "PermissionDenied",
    # answers that end a job at once
    "Rejected", "InvalidCertificate", "RevokedCertificate", "Failed", "Cancelled",
})
"""A job in one of these statuses is finished."""

OPEN_RESERVATION = "Accepted"
_OPEN = frozenset({OPEN_RESERVATION})
CANCELLABLE = frozenset({OPEN_RESERVATION, "Requested", "Failed"})
"""Reservations a CancelReservation is sent for: Accepted, and those whose ReserveNow got no
(valid) answer, which the charger may hold. Used, Cancelled, Expired and refused ones are a
409."""
MAX_CONNECTOR_ID = 99
"""Highest connector / EVSE id an operation may name (the sessions API uses the same bound)."""
JobKind = Literal["firmware", "signed_firmware", "diagnostics", "log", "charging_profiles"]
JOB_KINDS: tuple[str, ...] = get_args(JobKind)
MAX_ID_TAG_16 = 20
"""OCPP 1.6 idTag is CiString20Type (2.0.1 idToken: 36)."""

Listener = Callable[[str, StartRequest, StartResult], Awaitable[None]]


def certificate_hash_data(pem: str) -> dict[str, str] | None:
    """OCPP CertificateHashDataType (SHA256, hex) of a self-signed (root) PEM certificate:
    issuerNameHash = SHA-256 of the DER issuer name, issuerKeyHash = SHA-256 of the issuer's
    public key bits, serialNumber in hex without leading zeros (2.0.1 M04, 1.6 whitepaper §3).
    None when it cannot be computed (not PEM, issuer key unknown, ``cryptography`` missing):
    the hash data is then learnt from GetInstalledCertificateIds."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
    except ImportError:  # pragma: no cover - an optional dependency
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    if cert.issuer != cert.subject:
        return None
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key_bits = key.public_bytes(serialization.Encoding.X962,
                                    serialization.PublicFormat.UncompressedPoint)
    elif isinstance(key, rsa.RSAPublicKey):
        key_bits = key.public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.PKCS1)
    else:
        return None
    return {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(cert.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(key_bits).hexdigest(),
        "serialNumber": format(cert.serial_number, "x"),
    }


def _profile_key(profile: dict[str, Any]) -> tuple[int, str, int, str | None]:
    """(id, purpose, stackLevel, transactionId) of a 1.6 csChargingProfiles or a 2.0.1
    chargingProfile."""
    pid = profile.get("chargingProfileId", profile.get("id"))
    tx = profile.get("transactionId")
    return (int(pid) if isinstance(pid, int) else 0, str(profile.get("chargingProfilePurpose")),
            int(profile.get("stackLevel") or 0), None if tx is None else str(tx))


def _history(job: FirmwareJob, status: str, source: str, **extra: Any) -> None:
    """Append a status to a job (a new list, so the JSON column is written). A terminal status
    finishes the job (``finished_at`` set when it becomes finished); any other reopens it."""
    now = utcnow()
    entry = {"status": status, "at": format_utc(now), "source": source}
    entry.update({k: v for k, v in extra.items() if v is not None})
    job.history = [*job.history, entry]
    job.status = status
    finished = status in TERMINAL_STATUSES
    if not finished:
        job.finished_at = None
    elif not job.finished or job.finished_at is None:
        job.finished_at = now
    job.finished = finished
    job.updated_at = now


class OperationsService:
    """Typed operator operations with stored results (see the module docstring).

    ``service`` (the charging domain) is needed only for the charger-initiated side: it is
    where transaction starts are announced (reservation use) and events recorded.
    """

    def __init__(
        self,
        db: Database,
        commands: CommandService,
        service: ChargingService | None = None,
        routes: dict[str, dict[str, Route]] | None = None,
    ) -> None:
        self.db = db
        self.commands = commands
        self.service = service
        self._no_open_reservation: set[str] = set()
        """Charge points known to have no open (Accepted, unexpired) reservation: a transaction
        start there needs no reservation lookup. Kept on the writer (serialised with every
        reservation write): added by a start's lookup that found none at the charger, removed
        by any write that makes a reservation open. A fresh process knows none."""
        if service is not None:
            service.start_listeners.append(self.on_transaction_started)
        if routes is not None:
            self.install(routes)

    # -- plumbing -------------------------------------------------------------------------

    async def version(self, cp_id: str) -> str:
        """The OCPP version of a connected charger.

        Raises:
            NotFound: unknown charge point. NotConnected: not connected.
        """
        conn = self.commands.registry.get(cp_id)
        if conn is None:
            await self.require_charge_point(cp_id)
            raise NotConnected(f"charge point {cp_id!r} is not connected")
        return conn.version

    async def require_charge_point(self, cp_id: str) -> None:
        """Raises NotFound for an unknown charge point."""
        if await self.db.read(lambda s: s.get(ChargePoint, cp_id)) is None:
            raise NotFound(f"unknown charge point {cp_id!r}", field="id")

    async def _call(self, cp_id: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``commands.call`` asking for a strict answer (see the module docstring).

        Raises:
            InvalidAnswer: the answer fails the OCPP schema (``field`` names the field).
            and everything :meth:`csms.commands.CommandService.call` raises.
        """
        return await self.commands.call(cp_id, action, payload, strict=True)

    # -- reservations (1.6 §5.13 / §5.1; 2.0.1 H01-H04) -----------------------------------

    async def reserve_now(
        self, cp_id: str, connector_id: int, id_tag: str, expiry_date: datetime,
        parent_id_tag: str | None = None,
    ) -> Reservation:
        """Reserve ``connector_id`` (0 = any connector) for ``id_tag`` until ``expiry_date``.
        Without ``parent_id_tag`` the operator tag's parent (if any) is sent, so any tag of the
        same group may use it (TC_053). Returns the stored reservation; its ``status`` is the
        charger's answer (Accepted, Faulted, Occupied, Rejected, Unavailable), or Failed when
        there was no valid answer.

        Raises:
            InvalidRequest: ``expiry_date`` is not in the future; ``connector_id`` is above
                :data:`MAX_CONNECTOR_ID` or above the highest connector the charger reported
                (StatusNotification); ``id_tag`` is empty.
            NotFound / NotConnected: see :meth:`version`.
            CallFailed (InvalidAnswer, CallTimeout, ...): the reservation is stored Failed.
        """
        if expiry_date <= utcnow():
            raise InvalidRequest("expiry_date must be in the future", field="expiry_date")
        if not 0 <= connector_id <= MAX_CONNECTOR_ID:
            raise InvalidRequest(f"connector_id must be 0-{MAX_CONNECTOR_ID}",
                                 field="connector_id")
        version = await self.version(cp_id)
        highest = await self.db.read(lambda s: s.scalar(
            select(func.max(col(Connector.connector_id))).where(
                col(Connector.charge_point_id) == cp_id, col(Connector.connector_id) > 0)))
        if highest is not None and connector_id > highest:
            raise InvalidRequest(f"charge point {cp_id!r} has reported connectors 1-{highest} "
                                 "(0 reserves any)", field="connector_id")
        tag = canonical_id_tag(id_tag)
        if tag is None:
            raise InvalidRequest("id_tag is empty", field="id_tag")
        if parent_id_tag is None:
            known = await self.db.read(lambda s: s.get(IdTag, tag))
            parent_id_tag = known.parent_id_tag if known is not None else None
        parent = canonical_id_tag(parent_id_tag)

        rid = (await self.db.add(Reservation(
            charge_point_id=cp_id, connector_id=connector_id, id_tag=tag, parent_id_tag=parent,
            expiry_date=expiry_date,
        ))).id
        assert rid is not None
        if version == rpc.OCPP201:
            payload: dict[str, Any] = {"id": rid, "expiryDateTime": format_utc(expiry_date),
                                       "idToken": {"idToken": tag, "type": "ISO14443"}}
            if connector_id:
                payload["evseId"] = connector_id
            if parent:
                payload["groupIdToken"] = {"idToken": parent, "type": "Central"}
        else:
            payload = {"connectorId": connector_id, "expiryDate": format_utc(expiry_date),
                       "idTag": tag, "reservationId": rid}
            if parent:
                payload["parentIdTag"] = parent
        status = "Failed"
        try:
            answer = await self._call(cp_id, "ReserveNow", payload)
            status = str(answer.get("status"))
        except InvalidRequest:
            await self.db.write(lambda s: s.execute(delete(Reservation).where(
                col(Reservation.id) == rid)))
            raise
        finally:
            await self._set_reservation(rid, status)
        return await self._reservation(rid)

    async def cancel_reservation(self, cp_id: str, reservation_id: int) -> tuple[str, Reservation]:
        """CancelReservation; Accepted -> the reservation is Cancelled. Returns the charger's
        answer and the reservation.

        Raises:
            NotFound: no such reservation at this charger.
            Conflict: it is not open (Used, Cancelled, Expired - an Accepted one past its
                expiry date is stored Expired now - or refused by the charger); nothing is
                sent. See :data:`CANCELLABLE`.
            CallFailed: as :meth:`csms.commands.CommandService.call` (strict answer).
        """
        row = await self.db.read(lambda s: s.get(Reservation, reservation_id))
        if row is None or row.charge_point_id != cp_id:
            raise NotFound(f"unknown reservation {reservation_id}", field="reservation_id")
        state = row.status
        if state == OPEN_RESERVATION and row.expiry_date <= utcnow():
            await self._set_reservation(reservation_id, "Expired", only_from=_OPEN)
            state = "Expired"
        if state not in CANCELLABLE:
            raise Conflict(f"reservation {reservation_id} is {state}: there is nothing to "
                           "cancel", field="status")
        answer = await self._call(cp_id, "CancelReservation", {"reservationId": reservation_id})
        status = str(answer.get("status"))
        if status == "Accepted":
            await self._set_reservation(reservation_id, "Cancelled", only_from=CANCELLABLE)
        return status, await self._reservation(reservation_id)

    async def reservations(self, cp_id: str) -> list[Reservation]:
        """A charger's reservations, newest first; open ones past their expiry date are
        Expired (stored now)."""
        await self.require_charge_point(cp_id)

        async def unit(s: AsyncSession) -> list[Reservation]:
            now = utcnow()
            await s.execute(update(Reservation).where(
                col(Reservation.charge_point_id) == cp_id,
                col(Reservation.status) == OPEN_RESERVATION,
                col(Reservation.expiry_date) <= now,
            ).values(status="Expired", updated_at=now))
            rows = await s.execute(select(Reservation).where(
                col(Reservation.charge_point_id) == cp_id).order_by(col(Reservation.id).desc()))
            return list(rows.scalars())

        return await self.db.write(unit)

    async def _set_reservation(self, rid: int, status: str,
                               only_from: frozenset[str] | None = None,
                               transaction_pk: int | None = None) -> None:
        """Store a reservation's status (only when its status is in ``only_from``, if given)."""
        async def unit(s: AsyncSession) -> None:
            row = await s.get(Reservation, rid)
            if row is None or (only_from is not None and row.status not in only_from):
                return
            if status == OPEN_RESERVATION:
                self._no_open_reservation.discard(row.charge_point_id)
            row.status = status
            row.updated_at = utcnow()
            if transaction_pk is not None:
                row.transaction_pk = transaction_pk

        await self.db.write(unit)

    async def _reservation(self, rid: int) -> Reservation:
        row = await self.db.read(lambda s: s.get(Reservation, rid))
        assert row is not None
        return row

    async def on_transaction_started(self, cp_id: str, req: StartRequest,
                                     result: StartResult) -> None:
        """A new transaction start (both versions): the reservation it uses becomes Used (by
        its reservationId; else the open reservation of its idTag, or of its parent, on its
        connector or a charger-wide one). Runs before the charger is answered."""
        if cp_id in self._no_open_reservation:
            return  # nothing to mark: no lookup, no second group commit before the answer
        tag = canonical_id_tag(req.id_tag_raw)
        parent = result.auth.parent_id_tag

        async def unit(s: AsyncSession) -> int | None:
            now = utcnow()
            any_open = (await s.execute(select(col(Reservation.id)).where(
                col(Reservation.charge_point_id) == cp_id,
                col(Reservation.status) == OPEN_RESERVATION,
                col(Reservation.expiry_date) > now,
            ).limit(1))).first()
            if any_open is None:
                self._no_open_reservation.add(cp_id)
                return None
            q = select(Reservation).where(
                col(Reservation.charge_point_id) == cp_id,
                col(Reservation.status) == OPEN_RESERVATION,
                col(Reservation.expiry_date) > now,
            )
            if req.reservation_id is not None:
                q = q.where(col(Reservation.id) == req.reservation_id)
            else:
                if tag is None:
                    return None
                who = [col(Reservation.id_tag) == tag, col(Reservation.parent_id_tag) == tag]
                if parent:
                    who.append(col(Reservation.parent_id_tag) == canonical_id_tag(parent))
                q = q.where(or_(*who), or_(col(Reservation.connector_id) == 0,
                                           col(Reservation.connector_id) == req.connector_id))
            row = (await s.execute(q.order_by(col(Reservation.id)).limit(1))).scalars().first()
            if row is None:
                return None
            row.status = "Used"
            row.transaction_pk = result.transaction_pk
            row.updated_at = now
            return row.id

        used = await self.db.write(unit)
        if used is not None:
            log.info("%s: reservation %s used by transaction %s", cp_id, used,
                     result.transaction_pk)

    # -- local authorisation list (1.6 §5.15 / §5.10; 2.0.1 D01 / D02) --------------------

    async def send_local_list(
        self, cp_id: str, update_type: str, tags: list[str] | None = None
    ) -> tuple[str, LocalListVersion]:
        """SendLocalList built from operator tags (IdTag: status, expiry, parent) and drivers'
        cards (DriverTag: Accepted). ``Full`` without ``tags``: every tag; with ``tags``: only
        those. ``Differential`` needs ``tags``: each known tag is added/updated, an unknown one
        is sent without its info (removed from the charger's list). The version number is one
        above the highest sent to this charger. The stored list changes only when the charger
        answers Accepted. Returns (the charger's status, the stored version row)."""
        version = await self.version(cp_id)
        if update_type not in ("Full", "Differential"):
            raise InvalidRequest("update_type must be Full or Differential", field="update_type")
        if update_type == "Differential" and not tags:
            raise InvalidRequest("a Differential update names its tags", field="tags")
        wanted = None if tags is None else {t for t in map(canonical_id_tag, tags) if t}
        entries = await self.db.read(lambda s: self._tag_infos(s, wanted))
        removed = sorted((wanted or set()) - set(entries))
        limit = MAX_ID_TAG_16 if version == rpc.OCPP16 else 36
        too_long = [t for t in [*entries, *removed] if len(t) > limit]
        if too_long:
            raise InvalidRequest(f"id tags longer than {limit} characters: {too_long[:3]}",
                                 field="tags")

        async def reserve_version(s: AsyncSession) -> int:
            row = await s.get(LocalListVersion, cp_id)
            if row is None:
                row = LocalListVersion(charge_point_id=cp_id)
                s.add(row)
            row.last_sent_version = max(row.last_sent_version, row.version,
                                        row.reported_version or 0) + 1
            row.last_update_type = update_type
            row.updated_at = utcnow()
            return row.last_sent_version

        number = await self.db.write(reserve_version)
        items: list[dict[str, Any]] = []
        for tag, e in sorted(entries.items()):
            items.append(self._list_item(version, tag, e))
        for tag in removed:
            items.append({"idTag": tag} if version == rpc.OCPP16
                         else {"idToken": {"idToken": tag, "type": "ISO14443"}})
        if version == rpc.OCPP201:
            payload: dict[str, Any] = {"versionNumber": number, "updateType": update_type}
            if items:
                payload["localAuthorizationList"] = items
        else:
            payload = {"listVersion": number, "updateType": update_type,
                       "localAuthorizationList": items}
        status = "Failed"
        try:
            answer = await self._call(cp_id, "SendLocalList", payload)
            status = str(answer.get("status"))
        finally:
            accepted = status == "Accepted"

            async def store(s: AsyncSession) -> LocalListVersion:
                row = await s.get(LocalListVersion, cp_id)
                assert row is not None
                row.last_status = status
                row.updated_at = utcnow()
                if not accepted:
                    return row
                row.version = number
                if update_type == "Full":
                    await s.execute(delete(LocalListEntry).where(
                        col(LocalListEntry.charge_point_id) == cp_id))
                    await s.flush()
                for tag in removed:
                    old = await s.get(LocalListEntry, (cp_id, tag))
                    if old is not None:
                        await s.delete(old)
                for tag, e in entries.items():
                    entry = await s.get(LocalListEntry, (cp_id, tag))
                    if entry is None:
                        entry = LocalListEntry(charge_point_id=cp_id, id_tag=tag)
                        s.add(entry)
                    entry.status, entry.expiry_date = e["status"], e["expiry_date"]
                    entry.parent_id_tag, entry.source = e["parent"], e["source"]
                    entry.version = number
                return row

            stored = await self.db.write(store)
        return status, stored

    @staticmethod
    async def _tag_infos(s: AsyncSession, wanted: set[str] | None) -> dict[str, dict[str, Any]]:
        """Known tags (operator tags win over drivers' cards): tag -> status, expiry, parent,
        source; only ``wanted`` ones when given."""
        out: dict[str, dict[str, Any]] = {}
        q_driver = select(DriverTag)
        q_tag = select(IdTag)
        if wanted is not None:
            q_driver = q_driver.where(col(DriverTag.id_tag).in_(wanted))
            q_tag = q_tag.where(col(IdTag.id_tag).in_(wanted))
        for d in (await s.execute(q_driver)).scalars():
            out[d.id_tag] = {"status": "Accepted", "expiry_date": None, "parent": None,
                             "source": "driver"}
        for t in (await s.execute(q_tag)).scalars():
            status = t.status
            if status == "Accepted" and t.expiry_date is not None and t.expiry_date <= utcnow():
                status = "Expired"
            out[t.id_tag] = {"status": status, "expiry_date": t.expiry_date,
                             "parent": t.parent_id_tag, "source": "operator"}
        return out

    @staticmethod
    def _list_item(version: str, tag: str, e: dict[str, Any]) -> dict[str, Any]:
        if version == rpc.OCPP201:
            info: dict[str, Any] = {"status": e["status"]}
            if e["expiry_date"] is not None:
                info["cacheExpiryDateTime"] = format_utc(e["expiry_date"])
            if e["parent"]:
                info["groupIdToken"] = {"idToken": e["parent"], "type": "Central"}
            return {"idToken": {"idToken": tag, "type": "ISO14443"}, "idTokenInfo": info}
        info = {"status": e["status"]}
        if e["expiry_date"] is not None:
            info["expiryDate"] = format_utc(e["expiry_date"])
        if e["parent"]:
            info["parentIdTag"] = e["parent"][:MAX_ID_TAG_16]
        return {"idTag": tag, "idTagInfo": info}

    async def get_local_list_version(self, cp_id: str) -> int:
        """GetLocalListVersion: the charger's list version (stored as ``reported_version``;
        -1 / 0 mean not enabled / empty, 1.6 §5.10)."""
        version = await self.version(cp_id)
        answer = await self._call(cp_id, "GetLocalListVersion", {})
        number = int(answer.get("versionNumber" if version == rpc.OCPP201 else "listVersion", 0))

        async def store(s: AsyncSession) -> None:
            row = await s.get(LocalListVersion, cp_id)
            if row is None:
                row = LocalListVersion(charge_point_id=cp_id)
                s.add(row)
            row.reported_version, row.reported_at = number, utcnow()

        await self.db.write(store)
        return number

    async def local_list(self, cp_id: str) -> tuple[LocalListVersion | None,
                                                    list[LocalListEntry]]:
        """The stored list of a charger and its version row (None before any list)."""
        await self.require_charge_point(cp_id)

        async def fn(s: AsyncSession) -> tuple[LocalListVersion | None, list[LocalListEntry]]:
            rows = await s.execute(select(LocalListEntry).where(
                col(LocalListEntry.charge_point_id) == cp_id).order_by(
                col(LocalListEntry.id_tag)))
            return await s.get(LocalListVersion, cp_id), list(rows.scalars())

        return await self.db.read(fn)

    # -- smart charging (1.6 §5.16 / §5.5 / §5.7; 2.0.1 K01 / K10 / K08 / K09) -------------

    async def set_charging_profile(self, cp_id: str, connector_id: int,
                                   profile: dict[str, Any], source: str = "operator"
                                   ) -> ChargingProfileRecord:
        """SetChargingProfile with ``profile`` in the charger's version's shape (1.6
        csChargingProfiles, 2.0.1 chargingProfile; a bad one is a 400 naming the field).
        Accepted: it replaces an installed profile with the same id, or the same purpose and
        stack level on the same connector (1.6 §3.13.2, 2.0.1 K01.FR.05)."""
        version = await self.version(cp_id)
        if version == rpc.OCPP201:
            payload = {"evseId": connector_id, "chargingProfile": profile}
        else:
            payload = {"connectorId": connector_id, "csChargingProfiles": profile}
        answer = await self._call(cp_id, "SetChargingProfile", payload)
        status = str(answer.get("status"))
        return await self._store_profile(cp_id, connector_id, profile, status, source)

    async def _store_profile(self, cp_id: str, connector_id: int, profile: dict[str, Any],
                             status: str, source: str) -> ChargingProfileRecord:
        pid, purpose, level, tx = _profile_key(profile)

        async def unit(s: AsyncSession) -> ChargingProfileRecord:
            now = utcnow()
            if status in ("Accepted", "Reported"):
                await s.execute(update(ChargingProfileRecord).where(
                    col(ChargingProfileRecord.charge_point_id) == cp_id,
                    col(ChargingProfileRecord.cleared_at).is_(None),
                    or_(col(ChargingProfileRecord.profile_id) == pid,
                        (col(ChargingProfileRecord.connector_id) == connector_id)
                        & (col(ChargingProfileRecord.purpose) == purpose)
                        & (col(ChargingProfileRecord.stack_level) == level)),
                ).values(cleared_at=now, updated_at=now))
            row = ChargingProfileRecord(
                charge_point_id=cp_id, profile_id=pid, connector_id=connector_id,
                purpose=purpose, stack_level=level, transaction_id=tx, profile=profile,
                status=status, source=source,
                cleared_at=None if status in ("Accepted", "Reported") else now)
            s.add(row)
            await s.flush()
            return row

        return await self.db.write(unit)

    async def remote_start_with_profile(self, cp_id: str, connector_id: int, id_tag: str,
                                        profile: dict[str, Any]) -> str:
        """1.6 RemoteStartTransaction with a TxProfile (§5.11, TC_059) / 2.0.1
        RequestStartTransaction with chargingProfile (F01); Accepted -> the profile is stored
        as installed (source remote_start). Returns the charger's status."""
        version = await self.version(cp_id)
        if version == rpc.OCPP201:
            payload: dict[str, Any] = {"evseId": connector_id, "remoteStartId": 0,
                                       "idToken": {"idToken": id_tag, "type": "ISO14443"},
                                       "chargingProfile": profile}
            action = "RequestStartTransaction"
        else:
            payload = {"connectorId": connector_id, "idTag": id_tag, "chargingProfile": profile}
            action = "RemoteStartTransaction"
        status = str((await self._call(cp_id, action, payload)).get("status"))
        if status == "Accepted":
            await self._store_profile(cp_id, connector_id, profile, "Accepted", "remote_start")
        return status

    async def clear_charging_profile(
        self, cp_id: str, profile_id: int | None = None, connector_id: int | None = None,
        purpose: str | None = None, stack_level: int | None = None,
    ) -> tuple[str, int]:
        """ClearChargingProfile by id and/or criteria (none: every profile). Accepted: the
        matching stored profiles are cleared. Returns (the charger's status, how many stored
        profiles were cleared)."""
        version = await self.version(cp_id)
        if version == rpc.OCPP201:
            payload: dict[str, Any] = {}
            if profile_id is not None:
                payload["chargingProfileId"] = profile_id
            criteria = {k: v for k, v in (("evseId", connector_id),
                                          ("chargingProfilePurpose", purpose),
                                          ("stackLevel", stack_level)) if v is not None}
            if criteria:
                payload["chargingProfileCriteria"] = criteria
        else:
            payload = {k: v for k, v in (("id", profile_id), ("connectorId", connector_id),
                                         ("chargingProfilePurpose", purpose),
                                         ("stackLevel", stack_level)) if v is not None}
        status = str((await self._call(cp_id, "ClearChargingProfile", payload))
                     .get("status"))
        if status != "Accepted":
            return status, 0

        async def unit(s: AsyncSession) -> int:
            now = utcnow()
            q = select(ChargingProfileRecord).where(
                col(ChargingProfileRecord.charge_point_id) == cp_id,
                col(ChargingProfileRecord.cleared_at).is_(None))
            if profile_id is not None:
                q = q.where(col(ChargingProfileRecord.profile_id) == profile_id)
            if connector_id is not None:
                q = q.where(col(ChargingProfileRecord.connector_id) == connector_id)
            if purpose is not None:
                q = q.where(col(ChargingProfileRecord.purpose) == purpose)
            if stack_level is not None:
                q = q.where(col(ChargingProfileRecord.stack_level) == stack_level)
            rows = list((await s.execute(q)).scalars())
            for row in rows:
                row.cleared_at = row.updated_at = now
            return len(rows)

        return status, await self.db.write(unit)

    async def charging_profiles(self, cp_id: str, include_cleared: bool = False
                                ) -> list[ChargingProfileRecord]:
        """Stored profiles of a charger (installed ones only unless ``include_cleared``)."""
        await self.require_charge_point(cp_id)
        q = select(ChargingProfileRecord).where(
            col(ChargingProfileRecord.charge_point_id) == cp_id)
        if not include_cleared:
            q = q.where(col(ChargingProfileRecord.cleared_at).is_(None),
                        col(ChargingProfileRecord.status).in_(("Accepted", "Reported")))
        rows = await self.db.read(lambda s: s.execute(q.order_by(col(ChargingProfileRecord.id))))
        return list(rows.scalars())

    async def get_composite_schedule(self, cp_id: str, connector_id: int, duration: int,
                                     unit: str | None = None) -> dict[str, Any]:
        """GetCompositeSchedule for ``duration`` seconds; returns the charger's answer (kept in
        the ``command`` row)."""
        version = await self.version(cp_id)
        key = "evseId" if version == rpc.OCPP201 else "connectorId"
        payload: dict[str, Any] = {key: connector_id, "duration": duration}
        if unit is not None:
            payload["chargingRateUnit"] = unit
        return await self._call(cp_id, "GetCompositeSchedule", payload)

    async def get_charging_profiles(self, cp_id: str, criteria: dict[str, Any],
                                    evse_id: int | None = None) -> FirmwareJob:
        """2.0.1 GetChargingProfiles (K09): the station answers Accepted / NoProfiles, then
        reports them with ReportChargingProfiles (stored as profiles, status Reported, and in
        the job's history). ``criteria`` is a ChargingProfileCriterionType."""
        if await self.version(cp_id) != rpc.OCPP201:
            raise InvalidRequest("GetChargingProfiles is an OCPP 2.0.1 message", field="id")

        def payload(request_id: int) -> dict[str, Any]:
            p: dict[str, Any] = {"requestId": request_id, "chargingProfile": criteria}
            if evse_id is not None:
                p["evseId"] = evse_id
            return p

        return await self._job(cp_id, "charging_profiles", "GetChargingProfiles", payload)

    # -- firmware, diagnostics, logs (1.6 §5.19 / §5.9, whitepaper; 2.0.1 L01 / N01) ------

    async def update_firmware(
        self, cp_id: str, location: str, retrieve_date: datetime,
        install_date: datetime | None = None, retries: int | None = None,
        retry_interval: int | None = None, signing_certificate: str | None = None,
        signature: str | None = None,
    ) -> FirmwareJob:
        """1.6 UpdateFirmware (§5.19), or SignedUpdateFirmware when a signing certificate is
        given (whitepaper, both certificate and signature needed); 2.0.1 UpdateFirmware (L01).
        The job follows the FirmwareStatusNotifications."""
        version = await self.version(cp_id)
        signed = signing_certificate is not None or signature is not None
        if signed and version == rpc.OCPP16 and not (signing_certificate and signature):
            raise InvalidRequest("a signed update needs signing_certificate and signature",
                                 field="signature")
        extra = {k: v for k, v in (("retries", retries), ("retryInterval", retry_interval))
                 if v is not None}
        if version == rpc.OCPP16 and not signed:
            plain = {"location": location, "retrieveDate": format_utc(retrieve_date), **extra}
            return await self._job(cp_id, "firmware", "UpdateFirmware", lambda _rid: plain)
        firmware: dict[str, Any] = {"location": location,
                                    "retrieveDateTime": format_utc(retrieve_date)}
        if install_date is not None:
            firmware["installDateTime"] = format_utc(install_date)
        if signing_certificate is not None:
            firmware["signingCertificate"] = signing_certificate
        if signature is not None:
            firmware["signature"] = signature
        action = "UpdateFirmware" if version == rpc.OCPP201 else "SignedUpdateFirmware"
        kind = "firmware" if version == rpc.OCPP201 else "signed_firmware"
        return await self._job(cp_id, kind, action,
                               lambda rid: {"requestId": rid, "firmware": firmware, **extra})

    async def get_diagnostics(
        self, cp_id: str, location: str, start_time: datetime | None = None,
        stop_time: datetime | None = None, retries: int | None = None,
        retry_interval: int | None = None,
    ) -> FirmwareJob:
        """1.6 GetDiagnostics (§5.9; the job follows DiagnosticsStatusNotifications); on 2.0.1
        the same as :meth:`get_log` with DiagnosticsLog (N01)."""
        if await self.version(cp_id) == rpc.OCPP201:
            return await self.get_log(cp_id, "DiagnosticsLog", location, start_time, stop_time,
                                      retries, retry_interval)
        payload: dict[str, Any] = {"location": location}
        for key, value in (("startTime", start_time), ("stopTime", stop_time)):
            if value is not None:
                payload[key] = format_utc(value)
        for key, number in (("retries", retries), ("retryInterval", retry_interval)):
            if number is not None:
                payload[key] = number
        return await self._job(cp_id, "diagnostics", "GetDiagnostics", lambda _rid: payload)

    async def get_log(
        self, cp_id: str, log_type: str, location: str, oldest: datetime | None = None,
        latest: datetime | None = None, retries: int | None = None,
        retry_interval: int | None = None,
    ) -> FirmwareJob:
        """GetLog (1.6 whitepaper; 2.0.1 N01): DiagnosticsLog or SecurityLog uploaded to
        ``location``; the job follows LogStatusNotifications (matched by requestId)."""
        await self.version(cp_id)
        log_params: dict[str, Any] = {"remoteLocation": location}
        for key, value in (("oldestTimestamp", oldest), ("latestTimestamp", latest)):
            if value is not None:
                log_params[key] = format_utc(value)
        extra = {k: v for k, v in (("retries", retries), ("retryInterval", retry_interval))
                 if v is not None}
        return await self._job(cp_id, "log", "GetLog", lambda rid: {
            "logType": log_type, "requestId": rid, "log": log_params, **extra})

    async def _job(self, cp_id: str, kind: str, action: str,
                   payload: Callable[[int], dict[str, Any]]) -> FirmwareJob:
        """Create a job (its id is the requestId), send ``payload(id)``, store the answer."""

        async def create(s: AsyncSession) -> int:
            job = FirmwareJob(charge_point_id=cp_id, kind=kind, action=action)
            s.add(job)
            await s.flush()
            assert job.id is not None
            job.request_id = job.id
            job.request = payload(job.id)
            return job.id

        job_id = await self.db.write(create)
        job = await self.db.read(lambda s: s.get(FirmwareJob, job_id))
        assert job is not None
        answer: dict[str, Any] | None = None
        status = "Failed"
        error: str | None = None
        try:
            answer = await self._call(cp_id, action, job.request)
            # 1.6 UpdateFirmware.conf is empty, GetDiagnostics.conf has only a fileName
            status = str(answer.get("status", "Accepted"))
        except InvalidRequest:
            await self.db.write(lambda s: s.execute(delete(FirmwareJob).where(
                col(FirmwareJob.id) == job_id)))
            raise
        except (CallFailed, Conflict) as exc:
            error = exc.message
            raise
        finally:
            async def store(s: AsyncSession) -> FirmwareJob | None:
                row = await s.get(FirmwareJob, job_id)
                if row is None:
                    return None
                row.response = answer
                _history(row, status, "answer", error=error)
                if status == "AcceptedCanceled":  # 2.0.1 L01.FR.24 / N01: the older one stops
                    row.finished = False
                    older = await s.execute(select(FirmwareJob).where(
                        col(FirmwareJob.charge_point_id) == cp_id,
                        col(FirmwareJob.kind) == kind, col(FirmwareJob.id) != job_id,
                        col(FirmwareJob.finished).is_(False)))
                    for other in older.scalars():
                        _history(other, "Cancelled", "answer", by=job_id)
                return row

            stored = await self.db.write(store)
        assert stored is not None
        return stored

    async def jobs(self, cp_id: str, kind: str | None = None) -> list[FirmwareJob]:
        """A charger's jobs, newest first (``kind``: one of :data:`JOB_KINDS`).

        Raises:
            NotFound: unknown charge point. InvalidRequest: unknown ``kind``.
        """
        if kind is not None and kind not in JOB_KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(JOB_KINDS)}", field="kind")
        await self.require_charge_point(cp_id)
        q = select(FirmwareJob).where(col(FirmwareJob.charge_point_id) == cp_id)
        if kind is not None:
            q = q.where(col(FirmwareJob.kind) == kind)
        rows = await self.db.read(lambda s: s.execute(q.order_by(col(FirmwareJob.id).desc())))
        return list(rows.scalars())

    async def job_notified(self, cp_id: str, kinds: tuple[str, ...], status: str,
                           request_id: int | None, detail: dict[str, Any]) -> int | None:
        """A status notification of a job: by requestId when the message has one, else the
        newest unfinished job of ``kinds`` (else the newest). A notification nobody asked for
        (e.g. a triggered Idle) is only kept when it is not Idle: as a job of its own.
        Returns the job id."""

        async def unit(s: AsyncSession) -> int | None:
            base = select(FirmwareJob).where(col(FirmwareJob.charge_point_id) == cp_id,
                                             col(FirmwareJob.kind).in_(kinds))
            job = None
            if request_id is not None:
                job = (await s.execute(base.where(col(FirmwareJob.request_id) == request_id)
                                       .limit(1))).scalars().first()
            else:
                for q in (base.where(col(FirmwareJob.finished).is_(False)), base):
                    job = (await s.execute(q.order_by(col(FirmwareJob.id).desc()).limit(1))
                           ).scalars().first()
                    if job is not None:
                        break
            if job is None:
                if status == "Idle":
                    return None
                job = FirmwareJob(charge_point_id=cp_id, kind=kinds[0], action="(charger)",
                                  request_id=request_id)
                s.add(job)
            _history(job, status, "notification", **detail)
            await s.flush()
            return job.id

        return await self.db.write(unit)

    # -- certificates (1.6 whitepaper §3; 2.0.1 M03-M05) -----------------------------------

    async def install_certificate(self, cp_id: str, certificate_type: str,
                                  certificate: str) -> InstalledCertificate:
        """InstallCertificate (1.6: CentralSystemRootCertificate | ManufacturerRootCertificate;
        2.0.1: CSMSRootCertificate, ManufacturerRootCertificate, V2GRootCertificate,
        MORootCertificate). Stored with its hash data; status Installed when Accepted, else the
        charger's answer (Rejected, Failed)."""
        await self.version(cp_id)
        answer = await self._call(cp_id, "InstallCertificate", {
            "certificateType": certificate_type, "certificate": certificate})
        status = str(answer.get("status"))
        hashes = certificate_hash_data(certificate) or {}

        async def unit(s: AsyncSession) -> InstalledCertificate:
            row = InstalledCertificate(
                charge_point_id=cp_id, certificate_type=certificate_type,
                certificate=certificate, hash_algorithm=hashes.get("hashAlgorithm"),
                issuer_name_hash=hashes.get("issuerNameHash"),
                issuer_key_hash=hashes.get("issuerKeyHash"),
                serial_number=hashes.get("serialNumber"),
                status="Installed" if status == "Accepted" else status)
            s.add(row)
            await s.flush()
            return row

        return await self.db.write(unit)

    async def get_installed_certificate_ids(self, cp_id: str, certificate_types: list[str]
                                            ) -> tuple[str, list[InstalledCertificate]]:
        """GetInstalledCertificateIds (1.6: one type per call, so one call per type; 2.0.1:
        all types in one call, none = every type). Reported certificates are stored (matched
        by hash data); ours of a queried type that the charger no longer lists become Missing.
        Returns (the charger's last status, the charger's stored certificates)."""
        version = await self.version(cp_id)
        reported: list[tuple[str, dict[str, Any]]] = []
        status = "Accepted"
        if version == rpc.OCPP201:
            payload: dict[str, Any] = {}
            if certificate_types:
                payload["certificateType"] = certificate_types
            answer = await self._call(cp_id, "GetInstalledCertificateIds", payload)
            status = str(answer.get("status"))
            for chain in answer.get("certificateHashDataChain") or []:
                reported.append((str(chain.get("certificateType")),
                                 chain.get("certificateHashData") or {}))
        else:
            if not certificate_types:
                certificate_types = ["CentralSystemRootCertificate", "ManufacturerRootCertificate"]
            for ctype in certificate_types:
                answer = await self._call(cp_id, "GetInstalledCertificateIds",
                                          {"certificateType": ctype})
                status = str(answer.get("status"))
                reported.extend((ctype, h) for h in answer.get("certificateHashData") or [])

        async def unit(s: AsyncSession) -> list[InstalledCertificate]:
            now = utcnow()
            rows = list((await s.execute(select(InstalledCertificate).where(
                col(InstalledCertificate.charge_point_id) == cp_id))).scalars())
            seen: set[int] = set()
            for ctype, h in reported:
                match = next((r for r in rows if r.serial_number == h.get("serialNumber")
                              and r.issuer_name_hash == h.get("issuerNameHash")
                              and r.status != "Deleted"), None)
                if match is None:
                    match = InstalledCertificate(
                        charge_point_id=cp_id, certificate_type=ctype, source="reported",
                        hash_algorithm=h.get("hashAlgorithm"),
                        issuer_name_hash=h.get("issuerNameHash"),
                        issuer_key_hash=h.get("issuerKeyHash"),
                        serial_number=h.get("serialNumber"), status="Installed")
                    s.add(match)
                    await s.flush()
                    rows.append(match)
                match.status, match.updated_at = "Installed", now
                assert match.id is not None
                seen.add(match.id)
            queried = set(certificate_types) or {r.certificate_type for r in rows}
            for r in rows:
                if (r.id not in seen and r.status == "Installed"
                        and r.certificate_type in queried):
                    r.status, r.updated_at = "Missing", now
            return [r for r in rows if r.status not in ("Deleted",)]

        return status, await self.db.write(unit)

    async def delete_certificate(self, cp_id: str, certificate_id: int
                                 ) -> tuple[str, InstalledCertificate]:
        """DeleteCertificate by the stored hash data. Accepted -> Deleted; NotFound -> Missing;
        Failed -> unchanged. Returns (the charger's status, the record).

        Raises:
            NotFound: no such certificate record. Conflict: its hash data is not known (ask
                the charger for its certificate ids first).
        """
        row = await self.db.read(lambda s: s.get(InstalledCertificate, certificate_id))
        if row is None or row.charge_point_id != cp_id:
            raise NotFound(f"unknown certificate {certificate_id}", field="certificate_id")
        if not (row.issuer_name_hash and row.issuer_key_hash and row.serial_number):
            raise Conflict("the certificate's hash data is not known: query the charger's "
                           "certificate ids first")
        await self.version(cp_id)
        answer = await self._call(cp_id, "DeleteCertificate", {"certificateHashData": {
            "hashAlgorithm": row.hash_algorithm or "SHA256",
            "issuerNameHash": row.issuer_name_hash, "issuerKeyHash": row.issuer_key_hash,
            "serialNumber": row.serial_number}})
        status = str(answer.get("status"))
        new = {"Accepted": "Deleted", "NotFound": "Missing"}.get(status)

        async def unit(s: AsyncSession) -> InstalledCertificate:
            r = await s.get(InstalledCertificate, certificate_id)
            assert r is not None
            if new is not None:
                r.status, r.updated_at = new, utcnow()
            return r

        return status, await self.db.write(unit)

    async def certificates(self, cp_id: str) -> list[InstalledCertificate]:
        """Stored certificate records of a charger (every status), oldest first."""
        await self.require_charge_point(cp_id)
        rows = await self.db.read(lambda s: s.execute(select(InstalledCertificate).where(
            col(InstalledCertificate.charge_point_id) == cp_id).order_by(
            col(InstalledCertificate.id))))
        return list(rows.scalars())

    # -- security events, monitoring ------------------------------------------------------

    async def security_events(self, cp_id: str, limit: int = 100) -> list[SecurityEvent]:
        """A charger's security events, newest first, at most ``limit`` (1-1000).

        Raises:
            NotFound: unknown charge point. InvalidRequest: ``limit`` out of range.
        """
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be 1-1000", field="limit")
        await self.require_charge_point(cp_id)
        rows = await self.db.read(lambda s: s.execute(select(SecurityEvent).where(
            col(SecurityEvent.charge_point_id) == cp_id).order_by(
            col(SecurityEvent.id).desc()).limit(limit)))
        return list(rows.scalars())

    async def set_variable_monitoring(self, cp_id: str, monitors: list[dict[str, Any]]
                                      ) -> list[VariableMonitor]:
        """2.0.1 SetVariableMonitoring (N04): ``monitors`` are SetMonitoringDataType entries;
        each is stored with the station's result status and monitor id."""
        if await self.version(cp_id) != rpc.OCPP201:
            raise InvalidRequest("SetVariableMonitoring is an OCPP 2.0.1 message", field="id")
        answer = await self._call(cp_id, "SetVariableMonitoring",
                                  {"setMonitoringData": monitors})
        results = list(answer.get("setMonitoringResult") or [])

        async def unit(s: AsyncSession) -> list[VariableMonitor]:
            out = []
            for i, m in enumerate(monitors):
                r = results[i] if i < len(results) else {}
                row = VariableMonitor(
                    charge_point_id=cp_id, monitor_id=r.get("id"),
                    component=str(m["component"]["name"])[:50],
                    variable=str(m["variable"]["name"])[:50],
                    evse_id=(m["component"].get("evse") or {}).get("id"),
                    type=str(m["type"]), value=float(m["value"]), severity=int(m["severity"]),
                    status=str(r.get("status", "Unknown")))
                s.add(row)
                out.append(row)
            await s.flush()
            return out

        return await self.db.write(unit)

    async def monitors(self, cp_id: str) -> list[VariableMonitor]:
        """Stored monitors of a station."""
        await self.require_charge_point(cp_id)
        rows = await self.db.read(lambda s: s.execute(select(VariableMonitor).where(
            col(VariableMonitor.charge_point_id) == cp_id).order_by(col(VariableMonitor.id))))
        return list(rows.scalars())

    # -- charger-initiated messages -------------------------------------------------------

    def install(self, routes: dict[str, dict[str, Route]]) -> None:
        """Add our handlers to the route tables of both versions (an existing route still runs,
        after ours, and its answer is sent)."""
        v16, v201 = routes.get(rpc.OCPP16), routes.get(rpc.OCPP201)
        if v16 is not None:
            self._chain(v16, "FirmwareStatusNotification", self._firmware_status(("firmware",)))
            self._chain(v16, "DiagnosticsStatusNotification",
                        self._job_status(("diagnostics",)))
            self._chain(v16, "SignedFirmwareStatusNotification",
                        self._firmware_status(("signed_firmware",)))
            self._chain(v16, "LogStatusNotification", self._job_status(("log",)))
            self._chain(v16, "SecurityEventNotification", self._security_event)
        if v201 is not None:
            self._chain(v201, "FirmwareStatusNotification", self._firmware_status(("firmware",)))
            self._chain(v201, "LogStatusNotification", self._job_status(("log",)))
            self._chain(v201, "SecurityEventNotification", self._security_event)
            self._chain(v201, "ReportChargingProfiles", self._report_charging_profiles)
            self._chain(v201, "ReservationStatusUpdate", self._reservation_status_update)
            self._chain(v201, "NotifyMonitoringReport", self._monitoring_report)

    @staticmethod
    def _chain(table: dict[str, Route], action: str, store: Handler) -> None:
        existing = table.get(action)

        async def handler(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
            answer = await store(ctx, p)
            return await existing.handler(ctx, p) if existing is not None else answer

        table[action] = Route(handler, tolerant=existing.tolerant if existing else False)

    def _firmware_status(self, kinds: tuple[str, ...]) -> Handler:
        """1.6 FirmwareStatusNotification §4.5 (no requestId) / SignedFirmwareStatusNotification
        (whitepaper) / 2.0.1 FirmwareStatusNotification L01 (requestId optional)."""
        return self._job_status(kinds)

    def _job_status(self, kinds: tuple[str, ...]) -> Handler:
        async def handler(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
            rid = p.get("requestId")
            await self.job_notified(ctx.charge_point_id, kinds, str(p.get("status")),
                                    rid if isinstance(rid, int) else None,
                                    {"message": ctx.action})
            return {}

        return handler

    async def _security_event(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """SecurityEventNotification (1.6 whitepaper §2.6, 2.0.1 A04)."""
        skew = self.service.skew_tolerance_s if self.service is not None else 600
        ts = parse_timestamp(p.get("timestamp"), ctx.received_at, skew)
        cp_id = ctx.charge_point_id

        async def unit(s: AsyncSession) -> None:
            s.add(SecurityEvent(
                charge_point_id=cp_id, type=str(p.get("type"))[:64], timestamp=ts.value,
                timestamp_raw=None if ts.raw is None else str(ts.raw)[:64],
                tech_info=None if p.get("techInfo") is None else str(p["techInfo"])))

        await self.db.write(unit)
        return {}

    async def _report_charging_profiles(self, ctx: CallContext, p: dict[str, Any]
                                        ) -> dict[str, Any]:
        """2.0.1 ReportChargingProfiles (K09): each profile stored as Reported; the request's
        job records the part (``tbc`` false ends it)."""
        cp_id = ctx.charge_point_id
        evse = p.get("evseId")
        profiles = [x for x in p.get("chargingProfile") or [] if isinstance(x, dict)]
        for profile in profiles:
            await self._store_profile(cp_id, evse if isinstance(evse, int) else 0, profile,
                                      "Reported", "reported")
        rid = p.get("requestId")
        await self.job_notified(
            cp_id, ("charging_profiles",), "Reported" if p.get("tbc") else "Uploaded",
            rid if isinstance(rid, int) else None,
            {"evse_id": evse, "profiles": len(profiles),
             "limit_source": p.get("chargingLimitSource")})
        return {}

    async def _reservation_status_update(self, ctx: CallContext, p: dict[str, Any]
                                         ) -> dict[str, Any]:
        """2.0.1 ReservationStatusUpdate (H01.FR.x): Expired -> Expired, Removed -> Cancelled
        (an open reservation only; a used one stays Used)."""
        rid = p.get("reservationId")
        new = {"Expired": "Expired", "Removed": "Cancelled"}.get(
            str(p.get("reservationUpdateStatus")))
        if isinstance(rid, int) and new is not None:
            row = await self.db.read(lambda s: s.get(Reservation, rid))
            if row is not None and row.charge_point_id == ctx.charge_point_id:
                await self._set_reservation(rid, new, only_from=_OPEN)
        return {}

    async def _monitoring_report(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """2.0.1 NotifyMonitoringReport (N02): kept as an operator event."""
        if self.service is not None:
            await self.service.record_event(ctx.charge_point_id, "monitoring_report", dict(p))
        return {}


def records_json(rows: Iterable[Any], exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """API shape of stored rows (every column but ``exclude``)."""
    return [r.model_dump(exclude=exclude or set()) for r in rows]
