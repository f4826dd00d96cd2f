"""Switching with read-back: send the command, confirm by reading, retry with backoff.

Drivers' ``close()``/``open()`` only deliver a command; :func:`switch` is where the CSMS learns
whether the contacts really moved::

    attempt 1..attempts:
        (attempt > 1: sleep backoff_s * 2 ** (attempt - 2))
        send close()/open()          DriverUnavailable -> note it, next attempt
        poll read() every poll_interval_s until confirm_timeout_s:
            state == want           -> confirmed
            TRIPPED while closing   -> stop: not confirmed, "tripped: <detail>" (no retry:
                                       closing onto a fault again is unsafe; a tripped
                                       breaker is reset by hand)
    not confirmed: the last read and the last error are reported

For ``want=OPEN`` a ``TRIPPED`` read counts as confirmed: the contacts are open (the reading
says why). Pure logic over :class:`~breaker.driver.BreakerDriver`; no I/O of its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from breaker.driver import BreakerDriver, BreakerState, DriverUnavailable, Reading


@dataclass(frozen=True, slots=True)
class SwitchResult:
    """The outcome of :func:`switch`.

    Attributes:
        confirmed: a read showed the wanted state (``TRIPPED`` counts for ``OPEN``).
        attempts: commands tried (1..attempts).
        reading: the last read (None when none was made).
        error: None when confirmed, else the last problem: a DriverUnavailable message,
            ``"not confirmed within Xs"`` or ``"tripped: <detail>"``.
    """

    confirmed: bool
    attempts: int
    reading: Reading | None
    error: str | None


async def switch(
    driver: BreakerDriver,
    want: BreakerState,
    *,
    confirm_timeout_s: float = 5.0,
    poll_interval_s: float = 0.2,
    attempts: int = 3,
    backoff_s: float = 0.5,
) -> SwitchResult:
    """Drive ``driver`` to ``want`` (CLOSED or OPEN) and confirm it by reading back.

    Args:
        driver: the breaker.
        want: ``BreakerState.CLOSED`` (power the outlet) or ``BreakerState.OPEN``.
        confirm_timeout_s: seconds to wait for the read-back after each command.
        poll_interval_s: seconds between reads while waiting.
        attempts: commands to try in total (>= 1).
        backoff_s: seconds before the 2nd attempt, doubling for each further attempt.

    Returns:
        a :class:`SwitchResult` (never raises for device problems).

    Raises:
        ValueError: ``want`` is not CLOSED/OPEN, or a non-positive argument.
    """
    if want not in (BreakerState.CLOSED, BreakerState.OPEN):
        raise ValueError(f"switch() wants CLOSED or OPEN, not {want!s}")
    if attempts < 1 or confirm_timeout_s <= 0 or poll_interval_s <= 0 or backoff_s < 0:
        raise ValueError("attempts >= 1, positive timeout/interval and backoff >= 0 required")
    loop = asyncio.get_running_loop()
    reading: Reading | None = None
    error: str | None = None
    for attempt in range(1, attempts + 1):
        if attempt > 1 and backoff_s > 0:
            await asyncio.sleep(backoff_s * 2 ** (attempt - 2))
        try:
            if want is BreakerState.CLOSED:
                await driver.close()
            else:
                await driver.open()
        except DriverUnavailable as exc:
            error = str(exc) or type(exc).__name__
            reading = await driver.read()
            continue
        deadline = loop.time() + confirm_timeout_s
        while True:
            reading = await driver.read()
            if reading.state is want or (
                want is BreakerState.OPEN and reading.state is BreakerState.TRIPPED
            ):
                return SwitchResult(confirmed=True, attempts=attempt, reading=reading, error=None)
            if want is BreakerState.CLOSED and reading.state is BreakerState.TRIPPED:
                return SwitchResult(
                    confirmed=False,
                    attempts=attempt,
                    reading=reading,
                    error=f"tripped: {reading.detail or 'protection fired'}",
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                error = f"not confirmed within {confirm_timeout_s:g}s"
                break
            await asyncio.sleep(min(poll_interval_s, remaining))
    return SwitchResult(confirmed=False, attempts=attempts, reading=reading, error=error)
