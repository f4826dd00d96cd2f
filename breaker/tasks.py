"""Task helpers shared by the drivers and the CSMS (plain asyncio, no I/O of its own)."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any], retry_s: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again every ``retry_s`` seconds.

    On Python 3.11 ``asyncio.wait_for`` (used inside aiomqtt) can swallow a cancellation that
    arrives just as its inner future completes (CPython gh-86296, fixed in 3.12); a single
    ``cancel()`` may then leave a session loop running. Exceptions of the task are dropped.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if not task.cancelled():
        task.exception()  # retrieve it: no "exception was never retrieved" warning
