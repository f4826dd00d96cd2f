"""SimulatedBreaker: exact energy, trips that need a reset, offline, load changes."""

from __future__ import annotations

from fractions import Fraction

import pytest

from breaker.driver import BreakerState, DriverUnavailable
from breaker.simulated import SimulatedBreaker, SimulatorSettings
from tests.breaker.conftest import FakeClock


def make(clock: FakeClock, **settings: float) -> SimulatedBreaker:
    return SimulatedBreaker(SimulatorSettings(**settings), clock=clock)  # type: ignore[arg-type]


async def test_energy_is_exact(clock: FakeClock) -> None:
    brk = make(clock, power_w=3_600_000)
    await brk.close()
    clock.advance(1.0)
    r = await brk.read()
    assert (r.state, r.energy_wh, r.power_w) == (BreakerState.CLOSED, 1000, 3_600_000.0)
    assert brk.energy_exact_wh == 1000


async def test_energy_rounds_down_and_keeps_fractions(clock: FakeClock) -> None:
    brk = make(clock, power_w=1000, start_energy_wh=5)
    await brk.close()
    for _ in range(3):  # 3 x 0.5 s at 1 kW = 5/12 Wh, kept exactly (no float sum)
        clock.advance(0.5)
        await brk.read()
    assert brk.energy_exact_wh == Fraction(5) + Fraction(5, 12)
    assert (await brk.read()).energy_wh == 5  # 5.4166... rounds down
    clock.advance(0.5 * 21)  # 24 x 0.5 s = 12 s at 1 kW = 10/3 Wh
    assert brk.energy_exact_wh == Fraction(5) + Fraction(10, 3)
    assert (await brk.read()).energy_wh == 8


async def test_speed_and_load(clock: FakeClock) -> None:
    brk = make(clock, power_w=3600, speed=60)
    await brk.close()
    clock.advance(10)  # 10 s x 60 = 10 min at 3.6 kW = 600 Wh
    assert (await brk.read()).energy_wh == 600
    brk.set_load(0)
    clock.advance(100)
    r = await brk.read()
    assert (r.energy_wh, r.power_w, r.current_a) == (600, 0.0, 0.0)
    await brk.open()
    brk.set_load(7200)
    clock.advance(100)
    r = await brk.read()
    assert (r.state, r.energy_wh, r.power_w) == (BreakerState.OPEN, 600, 0.0)


async def test_current_and_voltage(clock: FakeClock) -> None:
    brk = make(clock, power_w=2300, voltage_v=230)
    await brk.close()
    r = await brk.read()
    assert (r.voltage_v, r.current_a) == (230, 10.0)
    assert r.at.tzinfo is not None


async def test_trip_needs_a_reset(clock: FakeClock) -> None:
    brk = make(clock, power_w=3600)
    await brk.close()
    clock.advance(1)
    brk.trip("overcurrent")
    clock.advance(100)  # no energy while tripped
    r = await brk.read()
    assert (r.state, r.detail, r.energy_wh, r.power_w) == (
        BreakerState.TRIPPED, "overcurrent", 1, 0
    )
    await brk.close()  # delivered, but a tripped breaker does not close
    assert (await brk.read()).state is BreakerState.TRIPPED
    brk.reset_trip()
    assert (await brk.read()).state is BreakerState.OPEN
    await brk.close()
    assert (await brk.read()).state is BreakerState.CLOSED


async def test_offline(clock: FakeClock) -> None:
    brk = make(clock, power_w=3600)
    await brk.close()
    brk.set_offline(True)
    r = await brk.read()
    assert (r.state, r.energy_wh) == (BreakerState.OFFLINE, None)
    with pytest.raises(DriverUnavailable):
        await brk.open()
    clock.advance(1)  # the meter keeps running while unreachable
    brk.set_offline(False)
    r = await brk.read()
    assert (r.state, r.energy_wh) == (BreakerState.CLOSED, 1)


def test_negative_load_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        make(clock).set_load(-1)
