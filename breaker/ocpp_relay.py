"""A breaker that is itself an OCPP charge point (a "relay charger"): switched with OCPP calls.

The driver does not know the CSMS: it is given an :class:`OcppLink` (connection test, the
connector's last status and meter values, CSMS-initiated calls). Two ways to switch:

``method="availability"``
    ChangeAvailability ``Operative`` closes, ``Inoperative`` opens. OCPP 1.6 payload
    ``{"connectorId": N, "type": ...}``; OCPP 2.0.1 ``{"operationalStatus": ...,
    "evse": {"id": N}}``. Read-back: connector status ``Unavailable`` -> OPEN, ``Faulted`` ->
    TRIPPED, any other status -> CLOSED.
``method="profile"``
    SetChargingProfile, purpose ``TxDefaultProfile``, one period from 0 s with a current
    limit (A): ``0`` opens, ``limit_a`` (the outlet's rating) closes. 1.6 payload
    ``{"connectorId": N, "csChargingProfiles": {chargingProfileId, stackLevel,
    chargingProfilePurpose, chargingProfileKind: "Absolute", chargingSchedule:
    {startSchedule, chargingRateUnit: "A", chargingSchedulePeriod: [{startPeriod: 0,
    limit}]}}}``; 2.0.1 ``{"evseId": N, "chargingProfile": {id, stackLevel, ...,
    chargingSchedule: [{id, startSchedule, chargingRateUnit: "A", chargingSchedulePeriod:
    [...]}]}}``. Read-back: ``Faulted`` -> TRIPPED, else the last accepted limit (0 -> OPEN,
    otherwise CLOSED; before any command: ``Unavailable`` -> OPEN, else CLOSED).

Answers ``Rejected`` / ``NotSupported`` (or a failed call) raise :class:`DriverUnavailable`;
``Scheduled`` counts as delivered (the read-back decides). Shapes are those of the OCA JSON
schemas shipped with the ``ocpp`` package (1.6 ``ChangeAvailability.json``,
``SetChargingProfile.json``; 2.0.1 ``ChangeAvailabilityRequest.json``,
``SetChargingProfileRequest.json``). Units: Wh, W, A, V.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from breaker.driver import BreakerDriver, BreakerState, DriverUnavailable, Reading, now_utc


@dataclass(frozen=True, slots=True)
class RelaySnapshot:
    """What the CSMS last heard from the relay's connector.

    Attributes:
        status: the last OCPP connector status (1.6 ``ChargePointStatus`` / 2.0.1
            ``ConnectorStatusEnumType`` value, e.g. ``"Available"``, ``"Faulted"``), or None.
        energy_wh: ``Energy.Active.Import.Register`` in Wh, or None.
        power_w: ``Power.Active.Import``, W. current_a: ``Current.Import``, A.
        voltage_v: ``Voltage``, V.
        at: when the last of these arrived (timezone-aware UTC), or None.
    """

    status: str | None
    energy_wh: int | None
    power_w: float | None
    current_a: float | None
    voltage_v: float | None
    at: datetime | None


class OcppLink(Protocol):
    """What the driver needs from the CSMS (implemented there; injected here)."""

    def connected(self, cp_id: str) -> bool:
        """True while the charge point has an open websocket."""
        ...

    def snapshot(self, cp_id: str, connector_id: int) -> RelaySnapshot | None:
        """The connector's last status and meter values (None before any)."""
        ...

    async def call(self, cp_id: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a CSMS-initiated call (OCPP field names); returns the CALLRESULT payload.
        Raises any Exception when the call fails (timeout, CALLERROR, not connected)."""
        ...


class OcppRelaySettings(BaseModel):
    """``{"type": "ocpp", ...}`` configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ocpp"] = "ocpp"
    charge_point_id: str = Field(min_length=1, max_length=48)
    """The relay's OCPP identity."""
    connector_id: int = Field(default=1, ge=1, le=1000)
    """1.6 connector id; 2.0.1 EVSE id."""
    ocpp_version: Literal["1.6", "2.0.1"] = "1.6"
    method: Literal["availability", "profile"] = "availability"
    limit_a: Decimal = Field(default=Decimal(16), gt=0, le=10_000)
    """``profile``: the closing limit, A (the outlet rating; a multiple of 0.1 A)."""
    stack_level: int = Field(default=0, ge=0, le=1000)
    """``profile``: the profile's stackLevel."""
    profile_id: int = Field(default=1, ge=1)
    """``profile``: chargingProfileId (1.6) / id (2.0.1); re-sent profiles replace it."""

    @field_validator("limit_a")
    @classmethod
    def _tenth_of_amp(cls, value: Decimal) -> Decimal:
        if value % Decimal("0.1") != 0:
            raise ValueError("limit_a must be a multiple of 0.1 A (OCPP limit resolution)")
        return value


def availability_payload(version: str, connector_id: int, operative: bool) -> dict[str, Any]:
    """The ChangeAvailability request for ``version`` ("1.6" or "2.0.1")."""
    status = "Operative" if operative else "Inoperative"
    if version == "1.6":
        return {"connectorId": connector_id, "type": status}
    return {"operationalStatus": status, "evse": {"id": connector_id}}


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def charging_profile_request(
    version: str,
    evse_id: int,
    limit_a: Decimal,
    *,
    profile_id: int,
    purpose: str,
    stack_level: int = 0,
    kind: str = "Absolute",
    start: datetime | None = None,
    transaction_id: str | None = None,
    number_phases: int | None = None,
    schedule_id: int | None = None,
) -> dict[str, Any]:
    """A SetChargingProfile request with one period of ``limit_a`` A from 0 s: OCPP 1.6 §5.16
    (``version`` "1.6": connectorId + csChargingProfiles) or 2.0.1 K01 ("2.0.1": evseId +
    chargingProfile with a list of schedules). ``kind`` Absolute starts at ``start`` (default
    now, UTC); Relative has no start. ``transaction_id`` makes it a TxProfile's transaction
    (an integer in 1.6); ``schedule_id`` is the 2.0.1 schedule id (default ``profile_id``)."""
    period: dict[str, Any] = {"startPeriod": 0, "limit": float(limit_a)}
    if number_phases is not None:
        period["numberPhases"] = number_phases
    schedule: dict[str, Any] = {"chargingRateUnit": "A", "chargingSchedulePeriod": [period]}
    if kind == "Absolute":
        schedule["startSchedule"] = _iso(start or now_utc())
    profile: dict[str, Any] = {
        "stackLevel": stack_level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
    }
    if version == "1.6":
        if transaction_id is not None:
            profile["transactionId"] = int(transaction_id)
        return {
            "connectorId": evse_id,
            "csChargingProfiles": {
                "chargingProfileId": profile_id, **profile, "chargingSchedule": schedule
            },
        }
    if transaction_id is not None:
        profile["transactionId"] = transaction_id
    sid = profile_id if schedule_id is None else schedule_id
    return {
        "evseId": evse_id,
        "chargingProfile": {
            "id": profile_id, **profile, "chargingSchedule": [{"id": sid, **schedule}]
        },
    }


def profile_payload(
    version: str,
    connector_id: int,
    limit_a: Decimal,
    *,
    stack_level: int = 0,
    profile_id: int = 1,
    start: datetime | None = None,
) -> dict[str, Any]:
    """The relay's SetChargingProfile request: a TxDefaultProfile limiting the connector (1.6)
    / EVSE (2.0.1) to ``limit_a`` A from ``start`` (default now, UTC) on."""
    return charging_profile_request(
        version, connector_id, limit_a, profile_id=profile_id, purpose="TxDefaultProfile",
        stack_level=stack_level, start=start,
    )


_ACCEPTED = {"Accepted", "Scheduled"}


class OcppRelayBreaker(BreakerDriver):
    """A charge point used as a breaker, through an injected :class:`OcppLink`.

    Args:
        settings: the configuration (see the module docstring).
        link: the CSMS side.
    """

    kind = "ocpp"

    def __init__(self, settings: OcppRelaySettings, link: OcppLink) -> None:
        self.settings = settings
        self.link = link
        self._limit_a: Decimal | None = None

    async def connect(self) -> None:
        """Nothing to open: the relay connects to the CSMS by itself."""

    async def disconnect(self) -> None:
        """Nothing to release. Idempotent."""

    async def close(self) -> None:
        """Operative / the rated limit.

        Raises:
            DriverUnavailable: not connected, the call failed, or the answer was Rejected.
        """
        await self._switch(True)

    async def open(self) -> None:
        """Inoperative / a 0 A limit.

        Raises:
            DriverUnavailable: not connected, the call failed, or the answer was Rejected.
        """
        await self._switch(False)

    async def read(self) -> Reading:
        """State from the connector status (and, for ``profile``, the last accepted limit);
        meter from the last MeterValues. OFFLINE when not connected or no status yet."""
        s = self.settings
        if not self.link.connected(s.charge_point_id):
            return Reading(state=BreakerState.OFFLINE, detail="relay not connected")
        snap = self.link.snapshot(s.charge_point_id, s.connector_id)
        if snap is None or snap.status is None:
            return Reading(state=BreakerState.OFFLINE, detail="no status from the relay yet")
        if snap.status == "Faulted":
            state = BreakerState.TRIPPED
        elif s.method == "availability" or self._limit_a is None:
            state = BreakerState.OPEN if snap.status == "Unavailable" else BreakerState.CLOSED
        else:
            state = BreakerState.OPEN if self._limit_a == 0 else BreakerState.CLOSED
        return Reading(
            state=state,
            energy_wh=snap.energy_wh,
            power_w=snap.power_w,
            current_a=snap.current_a,
            voltage_v=snap.voltage_v,
            at=snap.at or now_utc(),
            detail=f"status {snap.status}",
        )

    def request(self, on: bool) -> tuple[str, dict[str, Any]]:
        """The (action, payload) that closes (``on``) or opens the relay."""
        s = self.settings
        if s.method == "availability":
            return "ChangeAvailability", availability_payload(s.ocpp_version, s.connector_id, on)
        return "SetChargingProfile", profile_payload(
            s.ocpp_version,
            s.connector_id,
            s.limit_a if on else Decimal(0),
            stack_level=s.stack_level,
            profile_id=s.profile_id,
        )

    async def _switch(self, on: bool) -> None:
        s = self.settings
        if not self.link.connected(s.charge_point_id):
            raise DriverUnavailable(f"relay {s.charge_point_id} not connected")
        action, payload = self.request(on)
        try:
            answer = await self.link.call(s.charge_point_id, action, payload)
        except Exception as exc:
            raise DriverUnavailable(f"{action} failed: {exc}") from exc
        status = answer.get("status") if isinstance(answer, dict) else None
        if status not in _ACCEPTED:
            raise DriverUnavailable(f"{action} answered {status!r}")
        if s.method == "profile":
            self._limit_a = s.limit_a if on else Decimal(0)
