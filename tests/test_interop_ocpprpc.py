"""Interoperability with ocpp-rpc (npm) in strict mode: it validates every frame in both
directions against its own copy of the OCA schemas."""

from __future__ import annotations

from tests.conftest import CP_PASSWORD, Server
from tests.interop import NodeCharger


async def test_ocpp_rpc_strict_16_core_and_commands(server: Server) -> None:
    await server.register("RPC1")
    await server.api("PUT", "/api/v1/id-tags/TAG1", {"status": "Accepted"}, expect=200)
    charger = await NodeCharger.start(server.ocpp_url, "RPC1", CP_PASSWORD, "ocpp1.6", "core16")
    await charger.wait_for("scenario-complete")
    results = {e["action"]: e["response"] for e in charger.of("call-result")}
    assert list(results) == [
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "Authorize",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ]
    assert results["BootNotification"]["status"] == "Accepted"
    assert results["Authorize"]["idTagInfo"]["status"] == "Accepted"
    tx_id = results["StartTransaction"]["transactionId"]

    _, body = await server.api(
        "POST",
        "/api/v1/charge-points/RPC1/commands/RemoteStartTransaction",
        {"connectorId": 1, "idTag": "TAG1"},
        expect=200,
    )
    assert body == {"status": "Accepted"}
    _, body = await server.api(
        "POST",
        "/api/v1/charge-points/RPC1/commands/GetConfiguration",
        {"key": ["HeartbeatInterval"]},
        expect=200,
    )
    assert body["configurationKey"][0]["key"] == "HeartbeatInterval"
    incoming = [e["action"] for e in charger.of("incoming-call")]
    assert incoming == ["RemoteStartTransaction", "GetConfiguration"]

    done = await charger.finish()
    assert charger.of("strict-failure") == [] and charger.of("bad-message") == []
    assert done["ok"] is True, charger.events
    _, txs = await server.api("GET", "/api/v1/transactions?charge_point_id=RPC1", expect=200)
    assert [(t["transaction_id"], t["status"], t["energy_wh"]) for t in txs["items"]] == [
        (tx_id, "completed", 7500)
    ]
