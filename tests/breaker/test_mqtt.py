"""MQTT drivers against a real mosquitto with simulated Shelly / Tasmota devices."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from breaker.config import build_driver, parse_config
from breaker.control import switch
from breaker.devices import SimulatedShellyDevice, SimulatedTasmotaDevice
from breaker.driver import BreakerState, DriverUnavailable
from breaker.mqtt import MqttBreaker, MqttSettings, extract, parse_payload
from tests.breaker.conftest import FakeClock
from tests.breaker.helpers import wait_reading
from tests.mqtt_broker import Broker

_ids = itertools.count(1)
SWITCH: dict[str, Any] = {
    "confirm_timeout_s": 3.0, "poll_interval_s": 0.02, "attempts": 2, "backoff_s": 0.05
}
FAST = {"poll_interval_s": 0.1, "stale_after_s": 30}
LOAD_W = 3_600_000  # 1000 Wh per second of the device clock


def generic_tasmota(topic: str) -> dict[str, Any]:
    """A Tasmota plug described with the generic mapping, plus its power-limit warning as a
    trip indication."""
    return {
        "preset": "generic",
        "command": {"topic": f"cmnd/{topic}/POWER", "on": "ON", "off": "OFF"},
        "state": [{"topic": f"stat/{topic}/RESULT", "path": "POWER"},
                  {"topic": f"tele/{topic}/STATE", "path": "POWER"}],
        "trip": {"topic": f"stat/{topic}/WARNING", "path": "MaxPowerReached"},
        "meter": {"topic": f"stat/{topic}/STATUS8",
                  "energy": {"path": "StatusSNS.ENERGY.Total", "unit": "kWh"},
                  "power": {"path": "StatusSNS.ENERGY.Power", "unit": "W"},
                  "current": {"path": "StatusSNS.ENERGY.Current", "unit": "A"},
                  "voltage": {"path": "StatusSNS.ENERGY.Voltage", "unit": "V"}},
        "availability": {"topic": f"tele/{topic}/LWT", "online": "Online", "offline": "Offline"},
        "poll": [{"topic": f"cmnd/{topic}/Status", "payload": "8"},
                 {"topic": f"cmnd/{topic}/POWER", "payload": ""}],
    }


@dataclass
class Rig:
    kind: str
    device: SimulatedShellyDevice | SimulatedTasmotaDevice
    driver: MqttBreaker
    clock: FakeClock


async def make_rig(kind: str, broker: Broker, **driver_extra: Any) -> Rig:
    clock = FakeClock()
    n = next(_ids)
    device: SimulatedShellyDevice | SimulatedTasmotaDevice
    config: dict[str, Any] = {"type": "mqtt", "host": broker.host, "port": broker.port, **FAST}
    if kind.startswith("shelly"):
        prefix = f"shellyplus1pm-{n:04d}"
        device = SimulatedShellyDevice(broker.host, broker.port, prefix, power_w=LOAD_W,
                                       clock=clock, generic_status=(kind == "shelly_gen2"))
        config |= {"preset": "shelly_gen2", "prefix": prefix}
    elif kind == "tasmota":
        topic = f"tasmota_{n:04d}"
        device = SimulatedTasmotaDevice(broker.host, broker.port, topic, power_w=LOAD_W,
                                        clock=clock)
        config |= {"preset": "tasmota", "topic": topic}
    else:
        topic = f"plug_{n:04d}"
        device = SimulatedTasmotaDevice(broker.host, broker.port, topic, power_w=LOAD_W,
                                        clock=clock)
        config |= generic_tasmota(topic)
    config |= driver_extra
    settings: Any = parse_config(config)
    driver = MqttBreaker(settings, reconnect_min_s=0.1, reconnect_max_s=0.5)
    await device.start()
    await driver.connect()
    return Rig(kind, device, driver, clock)


KINDS = ["shelly_gen2", "shelly_notify_only", "tasmota", "generic"]


@pytest.fixture(params=KINDS)
async def rig(request: pytest.FixtureRequest, mosquitto: Broker) -> AsyncIterator[Rig]:
    r = await make_rig(request.param, mosquitto)
    yield r
    await r.driver.disconnect()
    await r.device.stop()


async def test_close_meter_open(rig: Rig) -> None:
    first = await wait_reading(rig.driver, lambda r: r.state is not BreakerState.OFFLINE)
    assert (first.state, first.energy_wh) == (BreakerState.OPEN, 0)
    result = await switch(rig.driver, BreakerState.CLOSED, **SWITCH)
    assert result.confirmed, result.error
    assert rig.device.output is True
    rig.clock.advance(1.0)  # 1 s at 3.6 MW = 1000 Wh exactly
    r = await wait_reading(rig.driver, lambda r: r.energy_wh == 1000)
    assert r.state is BreakerState.CLOSED
    assert r.power_w == pytest.approx(LOAD_W)
    assert r.voltage_v == pytest.approx(230)
    assert r.current_a == pytest.approx(LOAD_W / 230, rel=1e-3)
    result = await switch(rig.driver, BreakerState.OPEN, **SWITCH)
    assert result.confirmed, result.error
    rig.clock.advance(5.0)
    r = await wait_reading(rig.driver, lambda r: r.power_w == 0)
    assert (r.state, r.energy_wh) == (BreakerState.OPEN, 1000)
    assert r.at.tzinfo is not None


async def test_trip(rig: Rig) -> None:
    await wait_reading(rig.driver, lambda r: r.state is BreakerState.OPEN)
    assert (await switch(rig.driver, BreakerState.CLOSED, **SWITCH)).confirmed
    await rig.device.trip("overpower")
    if rig.kind == "tasmota":
        # the base firmware has no trip state: the preset sees the relay off
        r = await wait_reading(rig.driver, lambda r: r.state is BreakerState.OPEN)
        assert r.detail is None
        return
    r = await wait_reading(rig.driver, lambda r: r.state is BreakerState.TRIPPED)
    expected = "overpower" if rig.kind.startswith("shelly") else f"{LOAD_W}W"
    assert r.detail == expected
    result = await switch(rig.driver, BreakerState.CLOSED, **SWITCH)
    if rig.kind.startswith("shelly"):  # the simulated Shelly stays off until reset
        assert (result.confirmed, result.error) == (False, "tripped: overpower")
        assert isinstance(rig.device, SimulatedShellyDevice)
        await rig.device.reset_trip()
        await wait_reading(rig.driver, lambda r: r.state is BreakerState.OPEN)
        assert (await switch(rig.driver, BreakerState.CLOSED, **SWITCH)).confirmed
    else:
        # generic: a warning-type trip stays until the relay reports on again
        assert (result.confirmed, result.error) == (False, f"tripped: {LOAD_W}W")
        await rig.driver.close()
        await wait_reading(rig.driver, lambda r: r.state is BreakerState.CLOSED)


async def test_device_offline_by_last_will(rig: Rig) -> None:
    await wait_reading(rig.driver, lambda r: r.state is BreakerState.OPEN)
    await rig.device.go_offline()
    r = await wait_reading(rig.driver, lambda r: r.state is BreakerState.OFFLINE)
    assert r.detail == "device offline (last will)"
    assert r.energy_wh is None
    await rig.device.start()  # back: online again, a fresh status
    await wait_reading(rig.driver, lambda r: r.state is BreakerState.OPEN)


@pytest.mark.parametrize("kind", ["shelly_gen2", "tasmota"])
async def test_broker_down(kind: str, own_mosquitto: Broker) -> None:
    rig = await make_rig(kind, own_mosquitto)
    try:
        await wait_reading(rig.driver, lambda r: r.state is BreakerState.OPEN)
        own_mosquitto.stop()
        r = await wait_reading(rig.driver, lambda r: r.state is BreakerState.OFFLINE)
        assert r.detail == "not connected to the MQTT broker"
        with pytest.raises(DriverUnavailable):
            await rig.driver.close()
        result = await switch(rig.driver, BreakerState.CLOSED, confirm_timeout_s=0.1,
                              poll_interval_s=0.02, attempts=2, backoff_s=0.01)
        assert not result.confirmed and result.error == "not connected to the MQTT broker"
        own_mosquitto.start()  # the driver reconnects by itself (backoff), the device too
        await rig.device.stop()
        await rig.device.start()
        assert await rig.driver.wait_connected(10)
        await wait_reading(rig.driver, lambda r: r.state is BreakerState.OPEN)
        assert (await switch(rig.driver, BreakerState.CLOSED, **SWITCH)).confirmed
    finally:
        await rig.driver.disconnect()
        await rig.device.stop()


async def test_connect_never_raises_without_broker() -> None:
    from tests.mqtt_broker import free_port

    driver = build_driver({"type": "mqtt", "preset": "tasmota", "host": "127.0.0.1",
                           "port": free_port(), "topic": "nobody"})
    assert isinstance(driver, MqttBreaker)
    await driver.connect()
    r = await driver.read()
    assert (r.state, r.detail) == (BreakerState.OFFLINE, "not connected to the MQTT broker")
    with pytest.raises(DriverUnavailable):
        await driver.open()
    await driver.disconnect()
    await driver.disconnect()  # idempotent


async def test_stale_status_reads_offline(mosquitto: Broker) -> None:
    """No poll, and a device that says nothing more: after stale_after_s the reading is
    OFFLINE (the driver's clock is controlled)."""
    rig = await make_rig("tasmota", mosquitto, poll_interval_s=None, stale_after_s=60)
    driver_clock = FakeClock()
    rig.driver._clock = driver_clock
    try:
        await rig.driver.disconnect()
        await rig.driver.connect()  # the single poll after connecting gives a status
        await wait_reading(rig.driver, lambda r: r.state is BreakerState.OPEN)
        driver_clock.advance(59)
        assert (await rig.driver.read()).state is BreakerState.OPEN
        driver_clock.advance(2)
        r = await rig.driver.read()
        assert r.state is BreakerState.OFFLINE and "stale" in (r.detail or "")
    finally:
        await rig.driver.disconnect()
        await rig.device.stop()


async def test_shelly_rpc_frames(mosquitto: Broker) -> None:
    rig = await make_rig("shelly_gen2", mosquitto, client_id="csms-test-1")
    try:
        await wait_reading(rig.driver, lambda r: r.state is BreakerState.OPEN)
        await rig.driver.close()
        await wait_reading(rig.driver, lambda r: r.state is BreakerState.CLOSED)
        frames = [parse_payload(p.encode()) for t, p in rig.device.received
                  if t.endswith("/rpc")]
        sets = [f for f in frames if f["method"] == "Switch.Set"]
        assert sets and sets[-1]["params"] == {"id": 0, "on": True}
        assert sets[-1]["src"] == "csms-test-1" and isinstance(sets[-1]["id"], int)
        assert any(f["method"] == "Switch.GetStatus" for f in frames)
    finally:
        await rig.driver.disconnect()
        await rig.device.stop()


def test_generic_helpers() -> None:
    doc = parse_payload(b'{"ENERGY": {"Total": 1.2345, "list": [1, {"a": 2}]}}')
    assert str(extract(doc, "ENERGY.Total")) == "1.2345"  # Decimal, not a float
    assert extract(doc, "ENERGY.list.1.a") == 2
    assert parse_payload(b"ON") == "ON"
    settings: MqttSettings = parse_config({"type": "mqtt", "preset": "tasmota", "host": "h",
                                           "topic": "t", "relay": 2})  # type: ignore[assignment]
    driver = MqttBreaker(settings)
    assert driver.plan.command is not None and driver.plan.command.topic == "cmnd/t/POWER2"
    # energy from kWh in Decimal, rounded down: 1.2345 kWh = 1234 Wh
    driver._meter(driver.plan.meter[0], parse_payload(b'{"ENERGY": {"Total": 1.2349}}'))
    assert driver._cache.energy_wh == 1234
