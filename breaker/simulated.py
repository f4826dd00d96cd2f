"""An in-process breaker for development, demos and tests (no hardware, no network).

``SimulatedBreaker`` behaves like a metered smart breaker: closing it powers a load of
``power_w`` W at ``voltage_v`` V, and its lifetime import register accrues
``power_w * elapsed_s * speed / 3600`` Wh. The register is an exact
:class:`fractions.Fraction` of Wh (no float drift); reads report it rounded down to an integer.

Trips behave like a real breaker's protection: :meth:`SimulatedBreaker.trip` opens the
contacts and the breaker reads ``TRIPPED`` until :meth:`SimulatedBreaker.reset_trip` (the
"reset by hand"). A ``close()`` sent while tripped is accepted (delivered) but the contacts do
not move: the breaker keeps reading ``TRIPPED``.

Configuration (``{"type": "simulator", ...}``, see :class:`SimulatorSettings`): ``power_w``
(W, default 3680 = 16 A x 230 V), ``voltage_v`` (V, default 230), ``speed`` (time factor,
default 1.0), ``start_energy_wh`` (Wh, default 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from breaker.driver import BreakerDriver, BreakerState, DriverUnavailable, Reading, now_utc

Clock = Callable[[], float]
"""A monotonic clock in seconds (default :func:`time.monotonic`); injectable for exact tests."""


class SimulatorSettings(BaseModel):
    """``{"type": "simulator"}`` configuration. Units: W, V, Wh; ``speed`` is a time factor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["simulator"] = "simulator"
    power_w: float = Field(default=3680.0, ge=0, le=1_000_000_000)
    """The load drawn while closed, W."""
    voltage_v: float = Field(default=230.0, gt=0, le=100_000)
    """The supply voltage, V (current = power / voltage)."""
    speed: float = Field(default=1.0, gt=0, le=1_000_000)
    """Time factor: energy accrues ``power_w * elapsed_s * speed / 3600`` Wh."""
    start_energy_wh: int = Field(default=0, ge=0)
    """The lifetime register at start, Wh."""
    car_battery_wh: int | None = Field(default=None, ge=1, le=1_000_000_000)
    """A simulated car behind the outlet: after drawing this many Wh during one closed
    period its battery is full and the load drops to 0 W (demos of the car-full stop)."""
    stuck: bool = False
    """Commands are accepted but the contacts never move (tests of unconfirmed switching)."""


def _exact(value: float) -> Fraction:
    """A float as an exact fraction (finite values only)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return Fraction(value)


class SimulatedBreaker(BreakerDriver):
    """A metered breaker simulated in memory. See the module docstring for the behaviour.

    Args:
        settings: the configuration (defaults: 3680 W at 230 V, speed 1, register 0 Wh).
        clock: monotonic seconds (default :func:`time.monotonic`); pass a controllable
            callable for exact energy tests.
        wall_clock: the timestamp source for readings (default: timezone-aware UTC now).
    """

    kind = "simulator"

    def __init__(
        self,
        settings: SimulatorSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.settings = settings or SimulatorSettings()
        self._clock = clock
        self._wall_clock = wall_clock
        self._power_w = _exact(self.settings.power_w)
        self._voltage_v = self.settings.voltage_v
        self._speed = _exact(self.settings.speed)
        self._energy_wh = Fraction(self.settings.start_energy_wh)
        self._relay_on = False
        self._trip: str | None = None
        self._offline = False
        self._stuck = self.settings.stuck
        self._battery_wh = (
            None if self.settings.car_battery_wh is None else Fraction(self.settings.car_battery_wh)
        )
        self._last = clock()

    # -- what a test or demo drives -------------------------------------------------------

    def trip(self, detail: str = "overcurrent") -> None:
        """The protection fires: contacts open, reads ``TRIPPED`` with ``detail`` until
        :meth:`reset_trip`."""
        self._accrue()
        self._relay_on = False
        self._trip = detail

    def reset_trip(self) -> None:
        """Reset by hand after a trip: the contacts stay open (reads ``OPEN``)."""
        self._accrue()
        self._trip = None

    def set_offline(self, offline: bool) -> None:
        """Make the device unreachable (reads ``OFFLINE``; commands raise
        :class:`DriverUnavailable`) or reachable again. The meter keeps running meanwhile."""
        self._accrue()
        self._offline = offline

    def set_stuck(self, stuck: bool) -> None:
        """Make the contacts ignore commands (they are still accepted) or obey again."""
        self._accrue()
        self._stuck = stuck

    def reboot(self) -> None:
        """The device restarts (or is swapped): its register counts from 0 again and the
        relay comes back open, as a Shelly does by default after a power cycle."""
        self._accrue()
        self._energy_wh = Fraction(0)
        self._relay_on = False

    def set_load(self, power_w: float) -> None:
        """Change the load drawn while closed, W (e.g. 0 when the car is full)."""
        if power_w < 0:
            raise ValueError("power_w must be >= 0")
        self._accrue()
        self._power_w = _exact(power_w)

    @property
    def energy_exact_wh(self) -> Fraction:
        """The exact register, Wh (reads round it down)."""
        self._accrue()
        return self._energy_wh

    # -- BreakerDriver -------------------------------------------------------------------

    async def connect(self) -> None:
        """Nothing to open (in-process)."""

    async def disconnect(self) -> None:
        """Nothing to release. Idempotent."""

    async def close(self) -> None:
        """Close the contacts (no effect while tripped).

        Raises:
            DriverUnavailable: the simulated device is offline.
        """
        self._command(True)

    async def open(self) -> None:
        """Open the contacts.

        Raises:
            DriverUnavailable: the simulated device is offline.
        """
        self._command(False)

    async def read(self) -> Reading:
        """State and meter: energy Wh (floor of the exact register), power W, current A,
        voltage V. ``OFFLINE`` (no values) while :meth:`set_offline` is in force."""
        self._accrue()
        at = self._wall_clock()
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        if self._offline:
            return Reading(state=BreakerState.OFFLINE, at=at, detail="simulated device offline")
        if self._trip is not None:
            state = BreakerState.TRIPPED
        else:
            state = BreakerState.CLOSED if self._relay_on else BreakerState.OPEN
        full = self._battery_wh is not None and self._battery_wh <= 0
        power = float(self._power_w) if self._relay_on and not full else 0.0
        return Reading(
            state=state,
            energy_wh=math.floor(self._energy_wh),
            power_w=power,
            current_a=power / self._voltage_v,
            voltage_v=self._voltage_v,
            at=at,
            detail=self._trip,
        )

    # -- internals -----------------------------------------------------------------------

    def _command(self, on: bool) -> None:
        self._accrue()
        if self._offline:
            raise DriverUnavailable("simulated device offline")
        if on and self._trip is not None:
            return  # a tripped breaker must be reset by hand before it closes
        if self._stuck:
            return
        if on and not self._relay_on and self.settings.car_battery_wh is not None:
            self._battery_wh = Fraction(self.settings.car_battery_wh)  # a new car plugged in
        self._relay_on = on

    def _accrue(self) -> None:
        now = self._clock()
        elapsed = _exact(now) - _exact(self._last)
        self._last = now
        if self._relay_on and elapsed > 0:
            delta = self._power_w * elapsed * self._speed / 3600
            if self._battery_wh is not None:
                delta = min(delta, self._battery_wh)
                self._battery_wh -= delta
            self._energy_wh += delta
