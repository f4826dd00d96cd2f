"""Small helpers for the device tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from breaker.driver import BreakerDriver, Reading


async def wait_reading(
    driver: BreakerDriver, cond: Callable[[Reading], bool], timeout_s: float = 5.0
) -> Reading:
    """Poll ``driver.read()`` until ``cond`` holds.

    Raises:
        AssertionError: not within ``timeout_s`` seconds (with the last reading).
    """
    last: Reading | None = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                last = await driver.read()
                if cond(last):
                    return last
                await asyncio.sleep(0.02)
    except TimeoutError:
        message = f"condition not met within {timeout_s}s; last reading {last}"
        raise AssertionError(message) from None
