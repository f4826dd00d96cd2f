"""OCPP 1.6J charger-initiated messages (Core profile, chapters 4-6), translated into
:class:`csms.service.ChargingService` calls. One small handler per action; no session logic here.

Messages that carry billing data or that a charger must never see refused (BootNotification,
StatusNotification, StartTransaction, StopTransaction, MeterValues) are ``tolerant``: a schema
deviation (over-long serials, unit 'Hz', errorCode 'Error', a 22-character echoed idTag) is
counted and logged, and whatever can be kept is kept.
"""

from __future__ import annotations

import math
from typing import Any

from csms.metering import normalise_meter_values
from csms.ocpp.connection import CallContext, Handler, Route
from csms.ocpp.rpc import OcppError
from csms.service import (
    AuthResult,
    BootInfo,
    ChargingService,
    StartRequest,
    StatusReport,
    StopRequest,
)
from csms.timestamps import format_utc, parse_timestamp

ERROR_CODES = frozenset(
    {
        "ConnectorLockFailure",
        "EVCommunicationError",
        "GroundFailure",
        "HighTemperature",
        "InternalError",
        "LocalListConflict",
        "NoError",
        "OtherError",
        "OverCurrentFailure",
        "PowerMeterFailure",
        "PowerSwitchFailure",
        "ReaderFailure",
        "ResetFailure",
        "UnderVoltage",
        "OverVoltage",
        "WeakSignal",
    }
)


def id_tag_info(auth: AuthResult) -> dict[str, Any]:
    """OCPP 1.6 §7.29 IdTagInfo from an :class:`AuthResult`."""
    info: dict[str, Any] = {"status": auth.status}
    if auth.expiry_date is not None:
        info["expiryDate"] = format_utc(auth.expiry_date)
    if auth.parent_id_tag:
        info["parentIdTag"] = auth.parent_id_tag[:20]
    return info


def _int(payload: dict[str, Any], key: str, required: bool = True) -> int | None:
    """An integer field, tolerating numeric strings and whole floats.

    Raises:
        OcppError: missing when required, not a number, or out of range (connector and
            reservation ids are 32-bit, meter readings 64-bit).
    """
    value = payload.get(key)
    if value is None:
        if required:
            raise OcppError("OccurrenceConstraintViolation", f"{key} is required", {"field": key})
        return None
    if isinstance(value, bool):
        raise OcppError("TypeConstraintViolation", f"{key} must be an integer", {"field": key})
    number: int | None
    if isinstance(value, int):
        number = value
    else:
        try:
            as_float = float(str(value).strip())
            number = int(as_float) if math.isfinite(as_float) else None
        except (ValueError, OverflowError):
            number = None
        if number is None:
            if required:
                raise OcppError(
                    "TypeConstraintViolation", f"{key} must be an integer", {"field": key}
                )
            return None
    limit = 2**31 if key in ("connectorId", "reservationId") else 2**63
    if not -limit <= number < limit:
        raise OcppError("PropertyConstraintViolation", f"{key} is out of range", {"field": key})
    return number


def _wire_id(payload: dict[str, Any]) -> str:
    """The transactionId of a stop as text: the integer when it is one (5, "5", 5.0), else the
    raw value (kept for review, never refused)."""
    try:
        return str(_int(payload, "transactionId"))
    except OcppError:
        return str(payload.get("transactionId"))


def text_or_none(value: Any) -> str | None:
    """``str(value)``, or None for a missing field."""
    return None if value is None else str(value)


def recorder(service: ChargingService, kind: str, answer: dict[str, Any] | None = None) -> Handler:
    """A handler (both versions) that keeps the message as an operator event of ``kind`` and
    answers ``answer`` (default ``{}``)."""

    async def handler(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        await service.record_event(ctx.charge_point_id, kind, dict(p))
        return dict(answer or {})

    return handler


async def heartbeat(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
    """OCPP 1.6 §4.6 / 2.0.1 G02: the server time in UTC."""
    return {"currentTime": format_utc(ctx.received_at)}


class V16Handlers:
    """The routes of OCPP 1.6J, built from the shared service and settings."""

    def __init__(self, service: ChargingService, heartbeat_interval: int) -> None:
        self.service = service
        self.heartbeat_interval = heartbeat_interval

    def routes(self) -> dict[str, Route]:
        """Action name -> route."""
        return {
            "BootNotification": Route(self.boot_notification, tolerant=True),
            "Heartbeat": Route(heartbeat),
            "StatusNotification": Route(self.status_notification, tolerant=True),
            "Authorize": Route(self.authorize),
            "StartTransaction": Route(self.start_transaction, tolerant=True),
            "StopTransaction": Route(self.stop_transaction, tolerant=True),
            "MeterValues": Route(self.meter_values, tolerant=True),
            # OCPP 1.6 §4.3 (no vendor extension: UnknownVendorId), §4.4, §4.5: recorded
            "DataTransfer": Route(
                recorder(self.service, "data_transfer", {"status": "UnknownVendorId"})
            ),
            "DiagnosticsStatusNotification": Route(recorder(self.service, "diagnostics_status")),
            "FirmwareStatusNotification": Route(recorder(self.service, "firmware_status")),
        }

    async def boot_notification(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """OCPP 1.6 §4.2: store the station's identity; Accepted with our heartbeat interval."""
        info = BootInfo(
            vendor=text_or_none(p.get("chargePointVendor")),
            model=text_or_none(p.get("chargePointModel")),
            serial_number=text_or_none(p.get("chargePointSerialNumber")),
            charge_box_serial_number=text_or_none(p.get("chargeBoxSerialNumber")),
            firmware_version=text_or_none(p.get("firmwareVersion")),
            iccid=text_or_none(p.get("iccid")),
            imsi=text_or_none(p.get("imsi")),
            meter_type=text_or_none(p.get("meterType")),
            meter_serial_number=text_or_none(p.get("meterSerialNumber")),
        )
        status = await self.service.boot(ctx.charge_point_id, info)
        return {
            "status": status,
            "currentTime": format_utc(ctx.received_at),
            "interval": self.heartbeat_interval,
        }

    async def status_notification(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """OCPP 1.6 §4.9: store the connector status; unknown error codes become OtherError
        (raw text kept)."""
        connector_id = _int(p, "connectorId")
        assert connector_id is not None
        raw_error = text_or_none(p.get("errorCode"))
        await self.service.status(
            ctx.charge_point_id,
            StatusReport(
                connector_id=connector_id,
                status=text_or_none(p.get("status")),
                error_code=raw_error if raw_error in ERROR_CODES else "OtherError",
                raw_error_code=raw_error,
                info=text_or_none(p.get("info")),
                vendor_id=text_or_none(p.get("vendorId")),
                vendor_error_code=text_or_none(p.get("vendorErrorCode")),
                timestamp=parse_timestamp(
                    p.get("timestamp"), ctx.received_at, self.service.skew_tolerance_s
                )
                if "timestamp" in p
                else None,
            ),
        )
        return {}

    async def authorize(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """OCPP 1.6 §4.1."""
        return {
            "idTagInfo": id_tag_info(
                await self.service.authorize(ctx.charge_point_id, p.get("idTag"))
            )
        }

    async def start_transaction(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """OCPP 1.6 §4.8: the transactionId is issued by our database."""
        result = await self.service.start_transaction(
            ctx.charge_point_id,
            StartRequest(
                connector_id=_int(p, "connectorId"),
                id_tag_raw=text_or_none(p.get("idTag")),
                meter_start=_int(p, "meterStart", required=False),
                timestamp=parse_timestamp(
                    p.get("timestamp"), ctx.received_at, self.service.skew_tolerance_s
                ),
                reservation_id=_int(p, "reservationId", required=False),
            ),
        )
        return {"transactionId": result.transaction_pk, "idTagInfo": id_tag_info(result.auth)}

    async def stop_transaction(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """OCPP 1.6 §4.10: always acknowledged (an unknown or repeated stop is recorded, never
        refused: a refused stop blocks the charger's queue)."""
        samples, _warnings = normalise_meter_values(
            p.get("transactionData") or [], ctx.received_at, self.service.skew_tolerance_s
        )
        tx_id = p.get("transactionId")
        await self.service.stop_transaction(
            ctx.charge_point_id,
            StopRequest(
                # any id is acknowledged (an unknown or absurd one becomes an orphan for review)
                ocpp_id=None if tx_id is None else _wire_id(p),
                id_tag_raw=text_or_none(p.get("idTag")),
                meter_stop=_int(p, "meterStop", required=False),
                timestamp=parse_timestamp(
                    p.get("timestamp"), ctx.received_at, self.service.skew_tolerance_s
                ),
                reason=text_or_none(p.get("reason")),
                samples=samples,
                message_id=ctx.message_id,
            ),
        )
        return {"idTagInfo": {"status": "Accepted"}} if p.get("idTag") is not None else {}

    async def meter_values(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """OCPP 1.6 §4.7: every sampled value kept, normalised to Wh/W/A/V/s/%."""
        samples, _warnings = normalise_meter_values(
            p.get("meterValue") or [], ctx.received_at, self.service.skew_tolerance_s
        )
        tx_id = _int(p, "transactionId", required=False)
        await self.service.record_meter_values(  # the answer needs no energy
            ctx.charge_point_id,
            _int(p, "connectorId", required=False),
            None if tx_id is None else str(tx_id),
            samples,
        )
        return {}
