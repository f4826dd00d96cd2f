"""switch(): command, read-back, retries with backoff, timeouts, trips."""

from __future__ import annotations

from typing import Any

import pytest

from breaker.control import SwitchResult, switch
from breaker.driver import BreakerDriver, BreakerState, DriverUnavailable, Reading
from breaker.simulated import SimulatedBreaker

FAST: dict[str, Any] = {"confirm_timeout_s": 0.2, "poll_interval_s": 0.01, "backoff_s": 0.01}


class FlakyDevice(BreakerDriver):
    """A test double of a *device*: refuses the first ``refuse`` commands, ignores the next
    ``ignore`` ones (delivered but the contacts do not move), then obeys."""

    def __init__(self, refuse: int = 0, ignore: int = 0) -> None:
        self.refuse, self.ignore = refuse, ignore
        self.state = BreakerState.OPEN
        self.commands = 0

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def _command(self, state: BreakerState) -> None:
        self.commands += 1
        if self.refuse:
            self.refuse -= 1
            raise DriverUnavailable("connection refused")
        if self.ignore:
            self.ignore -= 1
            return
        self.state = state

    async def close(self) -> None:
        await self._command(BreakerState.CLOSED)

    async def open(self) -> None:
        await self._command(BreakerState.OPEN)

    async def read(self) -> Reading:
        return Reading(state=self.state, energy_wh=42)


async def test_confirmed_first_time() -> None:
    brk = SimulatedBreaker()
    result = await switch(brk, BreakerState.CLOSED, **FAST)
    assert result.confirmed and result.attempts == 1 and result.error is None
    assert result.reading is not None and result.reading.state is BreakerState.CLOSED
    result = await switch(brk, BreakerState.OPEN, **FAST)
    assert result.confirmed and result.reading and result.reading.state is BreakerState.OPEN


async def test_retries_after_driver_unavailable() -> None:
    dev = FlakyDevice(refuse=2)
    result = await switch(dev, BreakerState.CLOSED, attempts=3, **FAST)
    assert (result.confirmed, result.attempts, dev.commands) == (True, 3, 3)


async def test_retries_after_no_confirmation() -> None:
    dev = FlakyDevice(ignore=1)
    result = await switch(dev, BreakerState.CLOSED, attempts=2, **FAST)
    assert (result.confirmed, result.attempts, dev.commands) == (True, 2, 2)


async def test_gives_up_with_the_last_error() -> None:
    dev = FlakyDevice(ignore=5)
    result = await switch(dev, BreakerState.CLOSED, attempts=3, **FAST)
    assert isinstance(result, SwitchResult)
    assert (result.confirmed, result.attempts, result.error) == (
        False, 3, "not confirmed within 0.2s"
    )
    assert result.reading is not None and result.reading.state is BreakerState.OPEN
    assert dev.commands == 3
    dev = FlakyDevice(refuse=5)
    result = await switch(dev, BreakerState.OPEN, attempts=2, **FAST)
    assert (result.confirmed, result.attempts, result.error) == (False, 2, "connection refused")
    assert result.reading is not None  # the last read is reported even when undelivered


async def test_offline_device_is_not_confirmed() -> None:
    brk = SimulatedBreaker()
    brk.set_offline(True)
    result = await switch(brk, BreakerState.CLOSED, attempts=2, **FAST)
    assert not result.confirmed and result.error == "simulated device offline"
    assert result.reading is not None and result.reading.state is BreakerState.OFFLINE


async def test_trip_while_closing_stops_at_once() -> None:
    brk = SimulatedBreaker()
    brk.trip("overpower")
    result = await switch(brk, BreakerState.CLOSED, attempts=3, **FAST)
    assert (result.confirmed, result.attempts, result.error) == (False, 1, "tripped: overpower")
    # opening a tripped breaker: the contacts are open, that is confirmed
    result = await switch(brk, BreakerState.OPEN, **FAST)
    assert result.confirmed and result.reading and result.reading.state is BreakerState.TRIPPED


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        await switch(SimulatedBreaker(), BreakerState.TRIPPED)
    with pytest.raises(ValueError):
        await switch(SimulatedBreaker(), BreakerState.OPEN, attempts=0)
