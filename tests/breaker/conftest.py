"""Fixtures for the breaker drivers' tests: a real mosquitto broker and a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

from tests.mqtt_broker import Broker, start_mosquitto


@pytest.fixture(autouse=True)
def no_blocking_in_breaker() -> Iterator[None]:
    """Fail a test if code of the breaker package makes a blocking call on the event loop."""
    with blockbuster_ctx("breaker"):
        yield


class FakeClock:
    """A monotonic clock (seconds) that moves only when told: exact energy tests."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fresh controllable clock."""
    return FakeClock()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own (to stop and restart it)."""
    broker = start_mosquitto(tmp_path / "mosquitto")
    try:
        yield broker
    finally:
        broker.stop()
