"""The mobilityhouse ``ocpp`` library's own charge point client against our server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from ocpp.routing import on
from ocpp.v16 import ChargePoint as LibChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, RegistrationStatus, RemoteStartStopStatus
from websockets.asyncio.client import connect

from tests.charger import basic_auth
from tests.conftest import CP_PASSWORD, Server


class Charger(LibChargePoint):
    """Accepts remote starts."""

    @on(Action.remote_start_transaction)
    async def on_remote_start(
        self, id_tag: str, **_kw: object
    ) -> call_result.RemoteStartTransaction:
        return call_result.RemoteStartTransaction(status=RemoteStartStopStatus.accepted)


async def test_ocpp_library_charger_runs_a_transaction(server: Server) -> None:
    await server.register("LIB1")
    await server.api("PUT", "/api/v1/id-tags/TAG9", {"status": "Accepted"}, expect=200)
    async with connect(
        f"{server.ocpp_url}/LIB1",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        additional_headers=basic_auth("LIB1", CP_PASSWORD),
    ) as ws:
        cp = Charger("LIB1", ws)
        task = asyncio.create_task(cp.start())
        boot = await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        assert boot.status == RegistrationStatus.accepted
        now = datetime.now(UTC).isoformat()
        start = await cp.call(
            call.StartTransaction(connector_id=1, id_tag="TAG9", meter_start=10, timestamp=now)
        )
        assert start.id_tag_info["status"] == "Accepted"
        await cp.call(
            call.StopTransaction(
                meter_stop=1010, timestamp=now, transaction_id=start.transaction_id
            )
        )
        _, body = await server.api(
            "POST",
            "/api/v1/charge-points/LIB1/commands/RemoteStartTransaction",
            {"connectorId": 1, "idTag": "TAG9"},
            expect=200,
        )
        assert body == {"status": "Accepted"}
        task.cancel()
    _, txs = await server.api("GET", "/api/v1/transactions?charge_point_id=LIB1", expect=200)
    assert [(t["status"], t["energy_wh"]) for t in txs["items"]] == [("completed", 1000)]
