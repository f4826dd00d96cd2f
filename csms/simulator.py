"""``csms simulate``: OCPP 1.6 chargers built on the mobilityhouse ``ocpp`` library, for demos,
E2E.md and load tests.

Each simulated charger boots, reports its connector Available and then either waits for a
RemoteStartTransaction (``--mode remote``, the app flow) or presents an RFID card
(``--mode rfid``: Authorize, then StartTransaction). While charging it sends MeterValues every
``--meter-interval`` seconds at ``--power-w`` watts until ``--energy-wh`` have been delivered
(the car is full): an RFID session then stops; an app session reports SuspendedEV and waits for
the driver's stop (RemoteStopTransaction) or ``--max-seconds``; then StopTransaction. Simulated
time can run faster than real time (``--speed``), so a 30-minute session takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as LibChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    ChargePointStatus,
    RemoteStartStopStatus,
)
from websockets.asyncio.client import connect

log = logging.getLogger("csms.simulate")


@dataclass
class Profile:
    """How a simulated session charges: constant ``power_w`` (W) until ``energy_wh`` (Wh)."""

    power_w: int = 7400
    energy_wh: int = 7500
    meter_interval_s: float = 60.0
    max_seconds: float = 4 * 3600.0
    speed: float = 60.0
    """Simulated seconds per real second."""


class SimCharger(LibChargePoint):  # type: ignore[misc]
    """One simulated OCPP 1.6 charge point with one connector and an energy register (Wh)."""

    def __init__(self, cp_id: str, ws: Any, profile: Profile, register_wh: int = 1000,
                 stop_when_full: bool = True) -> None:
        super().__init__(cp_id, ws)
        self.stop_when_full = stop_when_full
        self.profile = profile
        self.register_wh = register_wh
        # simulated time runs faster than real time: start the clock in the past by the
        # session's expected length so that no timestamp lies in the future
        expected = min(profile.energy_wh / max(profile.power_w, 1) * 3600, profile.max_seconds)
        self.clock = datetime.now(UTC) - timedelta(seconds=expected + profile.meter_interval_s)
        self.transaction_id: int | None = None
        self.stop_requested = asyncio.Event()
        self.remote_start: asyncio.Queue[str] = asyncio.Queue()
        self.sessions_done = 0

    def now(self) -> str:
        """The simulated clock, ISO 8601 UTC."""
        return self.clock.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    @on(Action.remote_start_transaction)  # type: ignore[misc]
    async def on_remote_start(self, id_tag: str, **_kw: Any) -> call_result.RemoteStartTransaction:
        if self.transaction_id is not None:
            return call_result.RemoteStartTransaction(status=RemoteStartStopStatus.rejected)
        self.remote_start.put_nowait(id_tag)
        return call_result.RemoteStartTransaction(status=RemoteStartStopStatus.accepted)

    @on(Action.remote_stop_transaction)  # type: ignore[misc]
    async def on_remote_stop(self, transaction_id: int, **_kw: Any) -> Any:
        if transaction_id != self.transaction_id:
            return call_result.RemoteStopTransaction(status=RemoteStartStopStatus.rejected)
        self.stop_requested.set()
        return call_result.RemoteStopTransaction(status=RemoteStartStopStatus.accepted)

    @on(Action.get_configuration)  # type: ignore[misc]
    async def on_get_configuration(self, **_kw: Any) -> call_result.GetConfiguration:
        return call_result.GetConfiguration(
            configuration_key=[
                {
                    "key": "MeterValueSampleInterval",
                    "readonly": False,
                    "value": str(int(self.profile.meter_interval_s)),
                }
            ]
        )

    async def status(self, status: ChargePointStatus) -> None:
        """StatusNotification for connector 1."""
        await self.call(
            call.StatusNotification(
                connector_id=1, error_code="NoError", status=status, timestamp=self.now()
            )
        )

    async def boot(self) -> None:
        """BootNotification and an Available connector."""
        await self.call(
            call.BootNotification(charge_point_vendor="ParkCharge", charge_point_model="Simulator")
        )
        await self.status(ChargePointStatus.available)

    async def charge(self, id_tag: str) -> int:
        """One transaction with ``id_tag``; returns the energy delivered (Wh)."""
        p = self.profile
        await self.status(ChargePointStatus.preparing)
        start = await self.call(
            call.StartTransaction(
                connector_id=1, id_tag=id_tag, meter_start=self.register_wh, timestamp=self.now()
            )
        )
        self.transaction_id = start.transaction_id
        if start.id_tag_info["status"] != AuthorizationStatus.accepted:
            # OCPP 1.6 §5.11 / StopTransactionOnInvalidId: end the refused transaction at once
            log.warning("%s: start refused (%s)", self.id, start.id_tag_info["status"])
            await self.call(call.StopTransaction(
                meter_stop=self.register_wh, timestamp=self.now(),
                transaction_id=self.transaction_id, reason="DeAuthorized"))
            self.transaction_id = None
            await self.status(ChargePointStatus.available)
            return 0
        self.stop_requested.clear()
        await self.status(ChargePointStatus.charging)
        meter_start, elapsed, reason = self.register_wh, 0.0, "EVDisconnected"
        while True:
            try:
                await asyncio.wait_for(self.stop_requested.wait(), p.meter_interval_s / p.speed)
                reason = "Remote"
                break
            except TimeoutError:
                pass
            elapsed += p.meter_interval_s
            self.clock += timedelta(seconds=p.meter_interval_s)
            step = p.power_w * p.meter_interval_s / 3600
            self.register_wh = min(self.register_wh + round(step), meter_start + p.energy_wh)
            await self.call(
                call.MeterValues(
                    connector_id=1,
                    transaction_id=self.transaction_id,
                    meter_value=[
                        {
                            "timestamp": self.now(),
                            "sampledValue": [
                                {
                                    "value": str(self.register_wh),
                                    "unit": "Wh",
                                    "measurand": "Energy.Active.Import.Register",
                                    "context": "Sample.Periodic",
                                },
                                {
                                    "value": str(p.power_w),
                                    "unit": "W",
                                    "measurand": "Power.Active.Import",
                                    "context": "Sample.Periodic",
                                },
                            ],
                        }
                    ],
                )
            )
            if elapsed >= p.max_seconds:
                break
            if self.register_wh >= meter_start + p.energy_wh:
                if self.stop_when_full:
                    break
                # the car is full: it stays plugged in until the driver stops the session
                await self.status(ChargePointStatus.suspended_ev)
                try:
                    await asyncio.wait_for(self.stop_requested.wait(),
                                           max(p.max_seconds - elapsed, 0) / p.speed)
                    reason = "Remote"
                except TimeoutError:
                    pass
                break
        await self.status(ChargePointStatus.finishing)
        await self.call(
            call.StopTransaction(
                meter_stop=self.register_wh,
                timestamp=self.now(),
                transaction_id=self.transaction_id,
                reason=reason,
                id_tag=id_tag,
            )
        )
        self.transaction_id = None
        self.sessions_done += 1
        await self.status(ChargePointStatus.available)
        return self.register_wh - meter_start


async def run_charger(
    url: str,
    cp_id: str,
    password: str | None,
    profile: Profile,
    mode: str,
    id_tag: str | None,
    sessions: int,
) -> None:
    """Connect one charger and run ``sessions`` sessions (0 = serve remote starts forever)."""
    headers = {}
    if password:
        token = base64.b64encode(f"{cp_id}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    async with connect(
        f"{url.rstrip('/')}/{cp_id}",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        additional_headers=headers,
        compression=None,
    ) as ws:
        cp = SimCharger(cp_id, ws, profile, stop_when_full=mode == "rfid")
        runner = asyncio.create_task(cp.start())
        try:
            await cp.boot()
            print(f"{cp_id}: booted", flush=True)
            done = 0
            while sessions == 0 or done < sessions:
                if mode == "rfid":
                    assert id_tag is not None
                    auth = await cp.call(call.Authorize(id_tag=id_tag))
                    print(f"{cp_id}: Authorize {id_tag}: {auth.id_tag_info['status']}", flush=True)
                    if auth.id_tag_info["status"] != AuthorizationStatus.accepted:
                        return
                    tag = id_tag
                else:
                    print(f"{cp_id}: waiting for RemoteStartTransaction", flush=True)
                    tag = await cp.remote_start.get()
                energy = await cp.charge(tag)
                print(f"{cp_id}: session done, {energy} Wh delivered", flush=True)
                done += 1
        finally:
            runner.cancel()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``csms simulate`` options."""
    parser.add_argument("--url", default="ws://127.0.0.1:9000/ocpp", help="OCPP endpoint")
    parser.add_argument("--id", default="SIM1", help="charge point id (with --chargers N: prefix)")
    parser.add_argument("--password", default=None, help="Basic auth password (profile 1)")
    parser.add_argument("--chargers", type=int, default=1, help="how many chargers (default 1)")
    parser.add_argument("--mode", choices=["remote", "rfid"], default="remote",
                        help="remote: wait for RemoteStartTransaction (app flow); rfid: "
                             "Authorize --id-tag and start (default remote)")
    parser.add_argument("--id-tag", default=None, help="RFID tag for --mode rfid")
    parser.add_argument("--sessions", type=int, default=1,
                        help="sessions per charger, 0 = forever (default 1)")
    parser.add_argument("--power-w", type=int, default=7400,
                        help="charging power in W (default 7400)")
    parser.add_argument("--energy-wh", type=int, default=7500,
                        help="energy until the car is full, Wh (default 7500)")
    parser.add_argument("--meter-interval", type=float, default=60.0, help="simulated seconds")
    parser.add_argument("--max-seconds", type=float, default=4 * 3600.0)
    parser.add_argument("--speed", type=float, default=60.0, help="simulated s per real s")


async def simulate(args: argparse.Namespace) -> None:
    """Run the chargers described by the parsed ``csms simulate`` options."""
    if args.mode == "rfid" and not args.id_tag:
        raise SystemExit("csms simulate: --mode rfid needs --id-tag")
    profile = Profile(
        args.power_w, args.energy_wh, args.meter_interval, args.max_seconds, args.speed
    )
    ids = (
        [args.id] if args.chargers == 1 else [f"{args.id}-{i}" for i in range(1, args.chargers + 1)]
    )
    await asyncio.gather(
        *(
            run_charger(
                args.url, cp_id, args.password, profile, args.mode, args.id_tag, args.sessions
            )
            for cp_id in ids
        )
    )
