"""Nothing is lost across a restart of the server in the middle of a transaction."""

from __future__ import annotations

from tests.charger import RawCharger, basic_auth
from tests.conftest import CP_PASSWORD, Server


async def test_restart_mid_transaction_loses_nothing(server: Server) -> None:
    await server.register("CP1")
    url = f"{server.ocpp_url}/CP1"
    auth = basic_auth("CP1", CP_PASSWORD)
    cp = await RawCharger.open(url, headers=auth)
    await cp.result("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
    tx_id = (
        await cp.result(
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": "TAG1",
                "meterStart": 1000,
                "timestamp": "2026-03-01T10:00:00Z",
            },
        )
    )["transactionId"]
    await cp.result(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx_id,
            "meterValue": [
                {"timestamp": "2026-03-01T10:30:00Z", "sampledValue": [{"value": "5000"}]}
            ],
        },
    )
    await server.restart()
    await cp.ws.wait_closed()
    cp = await RawCharger.open(url, headers=auth)
    await cp.result("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
    _, active = await server.api("GET", "/api/v1/transactions?status=active", expect=200)
    assert [(t["transaction_id"], t["energy_wh"]) for t in active["items"]] == [(tx_id, 4000)]
    assert (
        await cp.result(
            "StopTransaction",
            {"transactionId": tx_id, "meterStop": 8500, "timestamp": "2026-03-01T11:00:00Z"},
        )
        == {}
    )
    _, txs = await server.api("GET", "/api/v1/transactions", expect=200)
    assert [(t["status"], t["energy_wh"]) for t in txs["items"]] == [("completed", 7500)]
    await cp.close()
