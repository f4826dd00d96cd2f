"""The one small interface every breaker driver implements, and what it reports.

A *breaker* here is a smart circuit breaker or relay in front of a plain outlet, with a meter.
The CSMS closes it to start a paid session and opens it at the end (see E2E.md, breaker path).
Drivers know nothing of OCPP sessions, billing or HTTP: they switch a relay and read a meter.

Error tree::

    BreakerError
     +-- DriverUnavailable   the device or its transport cannot be reached (command not sent)
     +-- ConfigError         a driver configuration is invalid (names the key)

Units: energy Wh (integer, the device's lifetime import register), power W, current A,
voltage V. Times are timezone-aware UTC.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class BreakerState(StrEnum):
    """What the breaker's contacts are doing, as read back from the device."""

    CLOSED = "closed"
    """Contacts closed: the outlet is powered."""
    OPEN = "open"
    """Contacts open by command: the outlet is off."""
    TRIPPED = "tripped"
    """Opened by its own protection (overcurrent, overpower, residual current, overtemp...)."""
    OFFLINE = "offline"
    """The device cannot be reached or has not reported within its staleness limit."""


class BreakerError(Exception):
    """Base of the breaker package's errors."""


class DriverUnavailable(BreakerError):
    """The command could not be delivered (broker down, TCP refused, timeout)."""


class ConfigError(BreakerError):
    """A driver configuration is invalid; ``key`` names the offending setting."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def now_utc() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Reading:
    """One read of a breaker: contact state and meter.

    ``energy_wh`` is the lifetime active-import register in Wh (rounded down to an integer), or
    None when the device reports none or is offline. ``power_w`` / ``current_a`` /
    ``voltage_v`` are instantaneous values (floats: measurements, never money). ``at`` is when
    the device's values were last refreshed (for push drivers: when the status arrived).
    ``detail`` carries the device's own words (e.g. Shelly ``errors: ["overpower"]``).
    """

    state: BreakerState
    energy_wh: int | None = None
    power_w: float | None = None
    current_a: float | None = None
    voltage_v: float | None = None
    at: datetime = field(default_factory=now_utc)
    detail: str | None = None


class BreakerDriver(ABC):
    """A relay + meter. Lifecycle ``connect()`` / ``disconnect()``; ``close()`` powers the
    outlet, ``open()`` cuts it, ``read()`` reads state and meter.

    ``close``/``open`` only *send* the command; they do not wait for the contacts to move.
    Confirmation is by reading back (:func:`breaker.control.switch`). ``read`` never raises for
    an unreachable device: it returns ``BreakerState.OFFLINE``.
    """

    kind: str = "abstract"

    @abstractmethod
    async def connect(self) -> None:
        """Open the transport (MQTT session, Modbus TCP socket...). Must not raise when the
        device is down: the driver keeps retrying in the background and reads OFFLINE."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Release the transport. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Send "close the contacts" (power the outlet).

        Raises:
            DriverUnavailable: the command could not be delivered.
        """

    @abstractmethod
    async def open(self) -> None:
        """Send "open the contacts" (cut the outlet).

        Raises:
            DriverUnavailable: the command could not be delivered.
        """

    @abstractmethod
    async def read(self) -> Reading:
        """The current state and meter (OFFLINE when unreachable or stale)."""
