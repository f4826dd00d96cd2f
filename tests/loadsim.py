"""A profile-obeying OCPP 1.6 charger for load-management tests, on :class:`RawCharger`.

It accepts RemoteStartTransaction and sends StartTransaction; the car behind it draws
``min(max_a, ChargePointMaxProfile limit, TxProfile limit)`` A the moment a profile is
accepted (OCPP 1.6 §3.13: the lowest applicable limit wins); every ``interval_s`` it sends
MeterValues with Current.Import (A) and Energy.Active.Import.Register (Wh, at ``voltage_v``
with time running ``speed`` times faster, so that seconds of test are kWh of billing);
RemoteStopTransaction ends the transaction with StopTransaction on the exact register.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from tests.charger import RawCharger, basic_auth


def now_text() -> str:
    """OCPP timestamp of now (UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LoadSimCharger:
    """One connector (1), one car. ``draw_a`` is what it draws now (A)."""

    def __init__(self, cp: RawCharger, cp_id: str, max_a: float = 32.0,
                 voltage_v: float = 230.0, interval_s: float = 0.2, speed: float = 600.0) -> None:
        self.cp = cp
        self.cp_id = cp_id
        self.max_a = max_a
        self.voltage_v = voltage_v
        self.interval_s = interval_s
        self.speed = speed
        self.cp_max_a: float | None = None
        self.tx_limit_a: float | None = None
        self.tx_id: int | None = None
        self.energy_wh = 0.0
        self.profiles: list[dict[str, Any]] = []
        """Every SetChargingProfile received (the payload)."""
        self.stopped: list[int] = []
        self._last = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._meter: asyncio.Task[None] | None = None
        cp.answers["RemoteStartTransaction"] = self._remote_start
        cp.answers["RemoteStopTransaction"] = self._remote_stop
        cp.answers["SetChargingProfile"] = self._set_profile
        cp.answers["ClearChargingProfile"] = lambda _p: {"status": "Accepted"}

    @classmethod
    async def connect(cls, ocpp_url: str, cp_id: str, password: str,
                      **kwargs: Any) -> LoadSimCharger:
        """Open the websocket and boot."""
        cp = await RawCharger.open(f"{ocpp_url}/{cp_id}", headers=basic_auth(cp_id, password))
        sim = cls(cp, cp_id, **kwargs)
        await cp.result("BootNotification", {"chargePointVendor": "Sim", "chargePointModel": "LM"})
        await cp.result("StatusNotification",
                        {"connectorId": 1, "errorCode": "NoError", "status": "Available"})
        return sim

    @property
    def draw_a(self) -> float:
        """The current the car draws now, A."""
        if self.tx_id is None:
            return 0.0
        limits = [self.max_a, *(x for x in (self.cp_max_a, self.tx_limit_a) if x is not None)]
        return min(limits)

    def _accrue(self) -> None:
        now = time.monotonic()
        self.energy_wh += self.draw_a * self.voltage_v * (now - self._last) * self.speed / 3600
        self._last = now

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the CSMS's calls -----------------------------------------------------------------

    def _remote_start(self, p: dict[str, Any]) -> dict[str, Any]:
        if self.tx_id is not None:
            return {"status": "Rejected"}
        self._spawn(self._start(str(p["idTag"])))
        return {"status": "Accepted"}

    def _remote_stop(self, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("transactionId") != self.tx_id:
            return {"status": "Rejected"}
        self._spawn(self._stop())
        return {"status": "Accepted"}

    def _set_profile(self, p: dict[str, Any]) -> dict[str, Any]:
        self.profiles.append(p)
        profile = p["csChargingProfiles"]
        limit = float(profile["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"])
        purpose = profile["chargingProfilePurpose"]
        self._accrue()
        if purpose == "ChargePointMaxProfile" and p["connectorId"] == 0:
            self.cp_max_a = limit
        elif purpose == "TxProfile":
            if self.tx_id is None or profile.get("transactionId") not in (None, self.tx_id):
                return {"status": "Rejected"}
            self.tx_limit_a = limit
        return {"status": "Accepted"}

    # -- the charger's own messages ---------------------------------------------------------

    async def _start(self, tag: str) -> None:
        await asyncio.sleep(0.01)  # after the RemoteStart answer
        self._accrue()
        reply = await self.cp.result("StartTransaction", {
            "connectorId": 1, "idTag": tag, "meterStart": int(self.energy_wh),
            "timestamp": now_text()})
        self.tx_id = int(reply["transactionId"])
        self.tx_limit_a = None
        self._last = time.monotonic()
        self._meter = asyncio.create_task(self._metering())

    async def _metering(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._accrue()
            if self.tx_id is None:
                return
            await self.cp.result("MeterValues", {
                "connectorId": 1, "transactionId": self.tx_id,
                "meterValue": [{"timestamp": now_text(), "sampledValue": [
                    {"value": str(int(self.energy_wh)), "unit": "Wh",
                     "measurand": "Energy.Active.Import.Register", "context": "Sample.Periodic"},
                    {"value": f"{self.draw_a:.1f}", "unit": "A", "measurand": "Current.Import",
                     "context": "Sample.Periodic"},
                ]}]})

    async def _stop(self) -> None:
        await asyncio.sleep(0.01)
        if self._meter is not None:
            self._meter.cancel()
            await asyncio.gather(self._meter, return_exceptions=True)
        self._accrue()
        tx_id, self.tx_id = self.tx_id, None
        assert tx_id is not None
        await self.cp.result("StopTransaction", {
            "transactionId": tx_id, "meterStop": int(self.energy_wh), "timestamp": now_text(),
            "reason": "Remote"})
        self.stopped.append(tx_id)

    async def close(self) -> None:
        """Stop metering and close the socket."""
        for task in [*self._tasks, *([self._meter] if self._meter else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cp.close()
