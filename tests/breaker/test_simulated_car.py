"""The simulator's car battery and stuck contacts (used by E2E.md and the breaker tests)."""

from __future__ import annotations

from breaker.driver import BreakerState
from breaker.simulated import SimulatedBreaker, SimulatorSettings
from tests.breaker.conftest import FakeClock


async def test_car_battery_stops_the_load_at_exactly_its_capacity(clock: FakeClock) -> None:
    b = SimulatedBreaker(
        SimulatorSettings(power_w=3_600_000, car_battery_wh=7500), clock=clock
    )
    await b.close()
    clock.advance(5)  # 5,000 Wh
    r = await b.read()
    assert (r.energy_wh, r.power_w) == (5000, 3_600_000)
    clock.advance(5)  # would be 10,000 Wh: the battery takes 7,500
    r = await b.read()
    assert (r.energy_wh, r.power_w, r.state) == (7500, 0.0, BreakerState.CLOSED)
    await b.open()
    await b.close()  # another car: a full battery again
    clock.advance(1)
    assert (await b.read()).energy_wh == 8500


async def test_stuck_contacts_ignore_commands(clock: FakeClock) -> None:
    b = SimulatedBreaker(SimulatorSettings(stuck=True), clock=clock)
    await b.close()
    assert (await b.read()).state is BreakerState.OPEN
    b.set_stuck(False)
    await b.close()
    assert (await b.read()).state is BreakerState.CLOSED
