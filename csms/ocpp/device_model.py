"""The device model of OCPP 2.0.1 stations: what NotifyReport says (B07 Get Base Report, B08 Get
Custom Report), stored one row per variable attribute (:class:`csms.models.DeviceVariable`), and
the few questions the CSMS asks of it (does the station display costs, does it declare the
California Pricing customisation).

A report arrives in parts (``seqNo`` 0, 1, ... with ``tbc`` true until the last); each part is
upserted as it comes, so a report cut short still keeps what arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from csms.db import Database
from csms.models import DeviceVariable, utcnow

Key = tuple[str, str, int, int, str, str, str]
"""(component, component instance, evse id, connector id, variable, variable instance,
attribute type)."""


@dataclass(frozen=True, slots=True)
class VariableRef:
    """A variable of a component at station level (``ComponentType`` + ``VariableType``)."""

    component: str
    variable: str
    variable_instance: str = ""
    component_instance: str = ""


CALIFORNIA_PRICING = VariableRef(
    "CustomizationCtrlr", "CustomImplementationEnabled", "org.openchargealliance.costmsg"
)
COST_ENABLED = VariableRef("TariffCostCtrlr", "Enabled", "Cost")
COST_AVAILABLE = VariableRef("TariffCostCtrlr", "Available", "Cost")


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _key(component: dict[str, Any], variable: dict[str, Any], attr_type: Any) -> Key:
    evse = component.get("evse") or {}
    return (
        _s(component.get("name")),
        _s(component.get("instance")),
        int(evse.get("id") or 0),
        int(evse.get("connectorId") or 0),
        _s(variable.get("name")),
        _s(variable.get("instance")),
        _s(attr_type) or "Actual",
    )


class DeviceModelStore:
    """Reads and writes station device models."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def store_report(self, cp_id: str, request_id: int | None,
                           report_data: list[dict[str, Any]]) -> int:
        """B07 / B08: upsert one NotifyReport part; returns the number of attributes stored."""
        rows: dict[Key, dict[str, Any]] = {}
        for item in report_data:
            component = item.get("component") or {}
            variable = item.get("variable") or {}
            for attr in item.get("variableAttribute") or []:
                rows[_key(component, variable, attr.get("type"))] = {
                    "value": attr.get("value"),
                    "mutability": attr.get("mutability"),
                    "persistent": attr.get("persistent"),
                    "constant": attr.get("constant"),
                    "characteristics": item.get("variableCharacteristics"),
                }
        if not rows:
            return 0

        async def unit(s: AsyncSession) -> int:
            existing = {
                (v.component, v.component_instance, v.evse_id, v.connector_id, v.variable,
                 v.variable_instance, v.attribute_type): v
                for v in (await s.execute(select(DeviceVariable).where(
                    col(DeviceVariable.charge_point_id) == cp_id))).scalars()
            }
            now = utcnow()
            for key, values in rows.items():
                row = existing.get(key)
                if row is None:
                    row = DeviceVariable(
                        charge_point_id=cp_id, component=key[0], component_instance=key[1],
                        evse_id=key[2], connector_id=key[3], variable=key[4],
                        variable_instance=key[5], attribute_type=key[6])
                    s.add(row)
                for name, value in values.items():
                    setattr(row, name, value)
                row.request_id = request_id
                row.updated_at = now
            return len(rows)

        return await self.db.write(unit)

    async def values(self, cp_id: str, *refs: VariableRef) -> list[str | None]:
        """B07: the reported Actual values of station-level variables (None: never reported)."""

        async def fn(s: AsyncSession) -> list[str | None]:
            rows = await s.execute(select(DeviceVariable).where(
                col(DeviceVariable.charge_point_id) == cp_id,
                col(DeviceVariable.component).in_({r.component for r in refs}),
                col(DeviceVariable.evse_id) == 0,
                col(DeviceVariable.attribute_type) == "Actual",
            ))
            found = {(v.component, v.component_instance, v.variable, v.variable_instance): v.value
                     for v in rows.scalars()}
            return [found.get((r.component, r.component_instance, r.variable,
                               r.variable_instance)) for r in refs]

        return await self.db.read(fn)

    async def known(self, cp_id: str) -> bool:
        """B02: True once the station reported any part of its device model."""

        async def fn(s: AsyncSession) -> bool:
            found = await s.scalar(select(col(DeviceVariable.id)).where(
                col(DeviceVariable.charge_point_id) == cp_id).limit(1))
            return found is not None

        return await self.db.read(fn)

    async def pricing(self, cp_id: str) -> tuple[bool, bool]:
        """I02: (shows costs, speaks California Pricing). Running costs are sent unless the
        station reported cost display unavailable or disabled (TariffCostCtrlr
        Available/Enabled[Cost] false); the costmsg customData only where it declared the
        customisation (CustomizationCtrlr.CustomImplementationEnabled[costmsg] true)."""
        available, enabled, california = [
            None if v is None else v.strip().lower() == "true"
            for v in await self.values(cp_id, COST_AVAILABLE, COST_ENABLED, CALIFORNIA_PRICING)
        ]
        return available is not False and enabled is not False, california is True
