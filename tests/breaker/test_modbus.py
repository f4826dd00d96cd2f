"""Modbus TCP driver against pymodbus's own server playing the device."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from breaker.config import build_driver
from breaker.control import switch
from breaker.devices import SimulatedModbusDevice
from breaker.driver import BreakerState, DriverUnavailable
from breaker.modbus import BitSpec, ModbusBreaker, RegisterSpec
from tests.breaker.conftest import FakeClock
from tests.breaker.helpers import wait_reading
from tests.mqtt_broker import free_port

SWITCH: dict[str, Any] = {
    "confirm_timeout_s": 2.0, "poll_interval_s": 0.02, "attempts": 2, "backoff_s": 0.05
}
# 3600 W at speed 1000: 1000 Wh per second of the device clock; 15.65 A fits 0.01 A registers
LOAD = {"power_w": 3600.0, "speed": 1000.0}


def driver_for(device: SimulatedModbusDevice, **extra: Any) -> ModbusBreaker:
    config = {"type": "modbus", "host": device.host, "port": device.port, "timeout_s": 1.0,
              **extra}
    driver = build_driver(config)
    assert isinstance(driver, ModbusBreaker)
    return driver


@pytest.fixture
async def device(clock: FakeClock) -> AsyncIterator[SimulatedModbusDevice]:
    dev = SimulatedModbusDevice("127.0.0.1", free_port(), clock=clock, **LOAD)  # type: ignore[arg-type]
    await dev.start()
    yield dev
    await dev.stop()


async def test_close_meter_open(device: SimulatedModbusDevice, clock: FakeClock) -> None:
    driver = driver_for(device)
    await driver.connect()
    try:
        r = await driver.read()
        assert (r.state, r.energy_wh, r.power_w) == (BreakerState.OPEN, 0, 0.0)
        result = await switch(driver, BreakerState.CLOSED, **SWITCH)
        assert result.confirmed and device.output
        clock.advance(1.0)
        r = await driver.read()
        assert (r.state, r.energy_wh) == (BreakerState.CLOSED, 1000)
        assert r.power_w == pytest.approx(3600.0)
        assert r.current_a == pytest.approx(15.65)  # 0.01 A resolution, rounded down
        assert r.voltage_v == pytest.approx(230.0)
        clock.advance(0.0005)  # 0.5 Wh more: the register shows whole Wh
        assert (await driver.read()).energy_wh == 1000
        assert (await switch(driver, BreakerState.OPEN, **SWITCH)).confirmed
        clock.advance(10)
        r = await driver.read()
        assert (r.state, r.energy_wh, r.power_w) == (BreakerState.OPEN, 1000, 0.0)
    finally:
        await driver.disconnect()
        await driver.disconnect()  # idempotent


async def test_trip(device: SimulatedModbusDevice) -> None:
    driver = driver_for(device)
    try:
        assert (await switch(driver, BreakerState.CLOSED, **SWITCH)).confirmed
        device.trip()
        r = await driver.read()
        assert (r.state, r.detail) == (BreakerState.TRIPPED, "tripped bit set")
        result = await switch(driver, BreakerState.CLOSED, **SWITCH)
        assert (result.confirmed, result.attempts) == (False, 1)
        assert result.error == "tripped: tripped bit set"
        assert not device.output  # the write did not close a tripped relay
        device.reset_trip()
        assert (await driver.read()).state is BreakerState.OPEN
    finally:
        await driver.disconnect()


VARIANTS: list[dict[str, Any]] = [
    {   # everything in holding registers, low word first, energy in 10 Wh steps
        "relay_coil": 17,
        "tripped": {"address": 40, "kind": "coil", "value": True},
        "energy": {"address": 10, "kind": "holding", "words": 2, "word_order": "little",
                   "scale": 10},
        "power": {"address": 20, "kind": "holding", "words": 2, "word_order": "little",
                  "signed": True, "scale": "0.01"},
        "current": {"address": 30, "kind": "holding", "scale": "0.1"},
        "voltage": {"address": 31, "kind": "holding", "scale": 1},
    },
    {   # input registers, high word first, energy in 0.1 Wh, no trip bit, no voltage
        "relay_coil": 3,
        "state": {"address": 3, "kind": "coil", "value": True},
        "tripped": None,
        "energy": {"address": 50, "kind": "input", "words": 2, "scale": "0.1"},
        "power": {"address": 0, "kind": "input", "words": 1, "scale": 1},
        "current": {"address": 60, "kind": "input", "words": 1, "scale": "0.001"},
        "voltage": None,
    },
]


@pytest.mark.parametrize("variant", VARIANTS, ids=["holding-little-x10", "input-big-x0.1"])
async def test_register_map_variants(variant: dict[str, Any], clock: FakeClock) -> None:
    def spec(name: str) -> RegisterSpec | None:
        v = variant[name]
        return None if v is None else RegisterSpec(**v)

    tripped = variant["tripped"]
    dev = SimulatedModbusDevice(
        "127.0.0.1", free_port(), clock=clock, relay_coil=variant["relay_coil"],
        tripped=None if tripped is None else BitSpec(**tripped),
        energy=spec("energy"), power=spec("power"), current=spec("current"),
        voltage=spec("voltage"), power_w=3600.0, speed=1.0,
    )
    await dev.start()
    driver = driver_for(dev, **variant)
    try:
        assert (await switch(driver, BreakerState.CLOSED, **SWITCH)).confirmed
        clock.advance(1234.5)  # 3.6 kW for 1234.5 s = 1234.5 Wh
        r = await driver.read()
        if variant["energy"]["scale"] == 10:
            assert r.energy_wh == 1230  # register holds 123 x 10 Wh
            assert r.power_w == pytest.approx(3600.0) and r.voltage_v == pytest.approx(230)
            dev.trip()
            assert (await driver.read()).state is BreakerState.TRIPPED
        else:
            assert r.energy_wh == 1234  # 12345 x 0.1 Wh, rounded down to whole Wh
            assert r.voltage_v is None
            assert r.current_a == pytest.approx(15.652, abs=0.001)
    finally:
        await driver.disconnect()
        await dev.stop()


async def test_unreachable_reads_offline() -> None:
    driver = build_driver({"type": "modbus", "host": "127.0.0.1", "port": free_port(),
                           "timeout_s": 0.5})
    await driver.connect()  # never raises
    r = await driver.read()
    assert r.state is BreakerState.OFFLINE and "cannot connect" in (r.detail or "")
    with pytest.raises(DriverUnavailable):
        await driver.close()
    await driver.disconnect()


async def test_device_restarts(device: SimulatedModbusDevice) -> None:
    driver = driver_for(device)
    try:
        assert (await driver.read()).state is BreakerState.OPEN
        await device.stop()
        r = await wait_reading(driver, lambda r: r.state is BreakerState.OFFLINE)
        assert r.detail
        with pytest.raises(DriverUnavailable):
            await driver.open()
        await device.start()
        await wait_reading(driver, lambda r: r.state is BreakerState.OPEN)
    finally:
        await driver.disconnect()


async def test_exception_response_reads_offline(device: SimulatedModbusDevice) -> None:
    driver = driver_for(device, energy={"address": 100, "words": 2})  # beyond the device's map
    try:
        r = await driver.read()
        assert r.state is BreakerState.OFFLINE and "Modbus exception" in (r.detail or "")
        bad_coil = driver_for(device, relay_coil=1000)
        with pytest.raises(DriverUnavailable, match="Modbus exception"):
            await bad_coil.close()
        await bad_coil.disconnect()
    finally:
        await driver.disconnect()


@pytest.mark.parametrize(
    ("spec", "registers", "value"),
    [
        (RegisterSpec(address=0, words=2), [0x0001, 0x86A0], Decimal(100000)),
        (RegisterSpec(address=0, words=2, word_order="little"), [0x86A0, 0x0001],
         Decimal(100000)),
        (RegisterSpec(address=0, signed=True), [0xFFFF], Decimal(-1)),
        (RegisterSpec(address=0), [0xFFFF], Decimal(65535)),
        (RegisterSpec(address=0, words=2, signed=True, scale=Decimal("0.1")),
         [0xFFFF, 0xFFF6], Decimal("-1.0")),
        (RegisterSpec(address=0, scale=Decimal(10)), [123], Decimal(1230)),
    ],
)
def test_decode_encode(spec: RegisterSpec, registers: list[int], value: Decimal) -> None:
    assert spec.decode(registers) == value
    assert spec.encode(value) == registers
