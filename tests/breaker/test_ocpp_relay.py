"""OcppRelayBreaker: payloads valid against the ocpp package's schemas, answers, read-back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest

from breaker.driver import BreakerState, DriverUnavailable
from breaker.ocpp_relay import (
    OcppLink,
    OcppRelayBreaker,
    OcppRelaySettings,
    RelaySnapshot,
    availability_payload,
    profile_payload,
)

SCHEMAS = Path(ocpp.__file__).parent


def schema(version: str, action: str) -> dict[str, Any]:
    if version == "1.6":
        path = SCHEMAS / "v16" / "schemas" / f"{action}.json"
    else:
        path = SCHEMAS / "v201" / "schemas" / f"{action}Request.json"
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8-sig"),
                                        parse_float=Decimal)
    return loaded


def validate(version: str, action: str, payload: dict[str, Any]) -> None:
    """Validate like the ocpp library: schema and payload numbers as Decimal (so that
    ``multipleOf: 0.1`` holds for 12.7), plus format checks."""
    s = schema(version, action)
    cls = jsonschema.validators.validator_for(s)
    as_sent = json.loads(json.dumps(payload), parse_float=Decimal)
    cls(s, format_checker=cls.FORMAT_CHECKER).validate(as_sent)


@dataclass
class FakeLink:
    """The CSMS side, scripted."""

    up: bool = True
    status: str | None = "Available"
    answer: dict[str, Any] = field(default_factory=lambda: {"status": "Accepted"})
    fail: Exception | None = None
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def connected(self, cp_id: str) -> bool:
        return self.up

    def snapshot(self, cp_id: str, connector_id: int) -> RelaySnapshot | None:
        if self.status is None:
            return None
        return RelaySnapshot(status=self.status, energy_wh=1234, power_w=3680.0, current_a=16.0,
                             voltage_v=230.0, at=datetime(2025, 1, 1, tzinfo=UTC))

    async def call(self, cp_id: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((cp_id, action, payload))
        if self.fail is not None:
            raise self.fail
        return self.answer


def relay(link: FakeLink, **settings: Any) -> OcppRelayBreaker:
    typed: OcppLink = link
    return OcppRelayBreaker(OcppRelaySettings(charge_point_id="RELAY-1", **settings), typed)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("operative", [True, False])
def test_availability_payload_is_valid(version: str, operative: bool) -> None:
    payload = availability_payload(version, 2, operative)
    validate(version, "ChangeAvailability", payload)
    key = "type" if version == "1.6" else "operationalStatus"
    assert payload[key] == ("Operative" if operative else "Inoperative")
    if version == "2.0.1":
        assert payload["evse"] == {"id": 2}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("limit", [Decimal(0), Decimal(16), Decimal("12.7")])
def test_profile_payload_is_valid(version: str, limit: Decimal) -> None:
    payload = profile_payload(version, 1, limit, stack_level=3, profile_id=7,
                              start=datetime(2025, 1, 1, tzinfo=UTC))
    validate(version, "SetChargingProfile", payload)
    if version == "1.6":
        profile = payload["csChargingProfiles"]
        sched = profile["chargingSchedule"]
        assert profile["chargingProfileId"] == 7
    else:
        profile = payload["chargingProfile"]
        sched = profile["chargingSchedule"][0]
        assert profile["id"] == 7
    assert profile["stackLevel"] == 3 and profile["chargingProfilePurpose"] == "TxDefaultProfile"
    assert sched["chargingRateUnit"] == "A"
    assert sched["startSchedule"] == "2025-01-01T00:00:00Z"
    assert sched["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": float(limit)}]


def test_invalid_payload_is_caught_by_the_check() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate("1.6", "ChangeAvailability", {"connectorId": 1, "type": "Off"})


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_availability_method(version: str) -> None:
    link = FakeLink()
    brk = relay(link, ocpp_version=version)
    await brk.close()
    await brk.open()
    assert [c[1] for c in link.calls] == ["ChangeAvailability"] * 2
    for _, action, payload in link.calls:
        validate(version, action, payload)
    r = await brk.read()
    assert (r.state, r.energy_wh, r.power_w, r.voltage_v) == (
        BreakerState.CLOSED, 1234, 3680.0, 230.0)
    link.status = "Unavailable"
    assert (await brk.read()).state is BreakerState.OPEN
    link.status = "Faulted"
    assert (await brk.read()).state is BreakerState.TRIPPED


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_profile_method(version: str) -> None:
    link = FakeLink(status="SuspendedEVSE" if version == "1.6" else "Occupied")
    brk = relay(link, ocpp_version=version, method="profile", limit_a="32", stack_level=2)
    assert (await brk.read()).state is BreakerState.CLOSED  # no limit sent yet
    await brk.open()
    assert (await brk.read()).state is BreakerState.OPEN
    await brk.close()
    assert (await brk.read()).state is BreakerState.CLOSED
    for _, action, payload in link.calls:
        assert action == "SetChargingProfile"
        validate(version, action, payload)
    limits = [json.dumps(c[2]) for c in link.calls]
    assert '"limit": 0.0' in limits[0] and '"limit": 32.0' in limits[1]
    link.status = "Faulted"
    assert (await brk.read()).state is BreakerState.TRIPPED
    # a rejected profile does not change the believed limit
    link.status, link.answer = "Available", {"status": "Rejected"}
    with pytest.raises(DriverUnavailable, match="Rejected"):
        await brk.open()
    assert (await brk.read()).state is BreakerState.CLOSED


async def test_failures_are_driver_unavailable() -> None:
    link = FakeLink(answer={"status": "Rejected"})
    brk = relay(link)
    with pytest.raises(DriverUnavailable, match="Rejected"):
        await brk.close()
    link.answer = {"status": "Scheduled"}
    await brk.close()  # delivered; the read-back decides
    link.fail = TimeoutError("no answer")
    with pytest.raises(DriverUnavailable, match="no answer"):
        await brk.open()
    link.up = False
    calls = len(link.calls)
    with pytest.raises(DriverUnavailable, match="not connected"):
        await brk.open()
    assert len(link.calls) == calls
    r = await brk.read()
    assert (r.state, r.energy_wh) == (BreakerState.OFFLINE, None)
    link.up, link.status = True, None
    assert (await brk.read()).state is BreakerState.OFFLINE


def test_limit_resolution() -> None:
    with pytest.raises(ValueError):
        OcppRelaySettings(charge_point_id="X", limit_a=Decimal("16.05"))
