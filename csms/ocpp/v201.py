"""OCPP 2.0.1 charging-station messages translated into :class:`csms.service.ChargingService`
calls. Provisioning for now (B01 BootNotification, G02 Heartbeat, G01 StatusNotification); the
2.0.1 issue adds authorisation and TransactionEvent on the same service."""

from __future__ import annotations

from typing import Any

from csms.ocpp.connection import CallContext, Route
from csms.ocpp.v16 import heartbeat
from csms.service import BootInfo, ChargingService, StatusReport
from csms.timestamps import format_utc, parse_timestamp


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


class V201Handlers:
    """The routes of OCPP 2.0.1, built from the shared service and settings."""

    def __init__(self, service: ChargingService, heartbeat_interval: int) -> None:
        self.service = service
        self.heartbeat_interval = heartbeat_interval

    def routes(self) -> dict[str, Route]:
        """Action name -> route."""
        return {
            "BootNotification": Route(self.boot_notification, tolerant=True),
            "Heartbeat": Route(heartbeat),
            "StatusNotification": Route(self.status_notification, tolerant=True),
        }

    async def boot_notification(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """B01: store the station's identity; Accepted with our heartbeat interval."""
        station = p.get("chargingStation") or {}
        modem = station.get("modem") or {}
        status = await self.service.boot(
            ctx.charge_point_id,
            BootInfo(
                vendor=_str(station.get("vendorName")),
                model=_str(station.get("model")),
                serial_number=_str(station.get("serialNumber")),
                firmware_version=_str(station.get("firmwareVersion")),
                iccid=_str(modem.get("iccid")),
                imsi=_str(modem.get("imsi")),
                reason=_str(p.get("reason")),
            ),
        )
        return {
            "status": status,
            "currentTime": format_utc(ctx.received_at),
            "interval": self.heartbeat_interval,
        }

    async def status_notification(self, ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        """G01: the status of one connector of one EVSE."""
        await self.service.status(
            ctx.charge_point_id,
            StatusReport(
                connector_id=int(p.get("evseId", 0)),
                evse_connector_id=int(p.get("connectorId", 0)),
                status=_str(p.get("connectorStatus")),
                timestamp=parse_timestamp(
                    p.get("timestamp"), ctx.received_at, self.service.skew_tolerance_s
                ),
            ),
        )
        return {}
