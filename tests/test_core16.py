"""OCPP 1.6 Core profile over a real websocket: charger-initiated messages, CALLERROR codes,
persistence, the operator API's view of it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.charger import RawCharger, basic_auth
from tests.conftest import CP_PASSWORD, Server

BOOT = {
    "chargePointVendor": "ExampleVendor",
    "chargePointModel": "Wallbox X",
    "chargePointSerialNumber": "SN-1",
    "firmwareVersion": "1.2.3",
}


async def connect(server: Server, cp_id: str = "CP1") -> RawCharger:
    await server.register(cp_id)
    cp = await RawCharger.open(f"{server.ocpp_url}/{cp_id}", headers=basic_auth(cp_id, CP_PASSWORD))
    await cp.result("BootNotification", BOOT)
    return cp


async def test_core_flow_is_persisted_and_visible(server: Server) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/tag1", {"status": "Accepted"}, expect=200)
    await server.api("PUT", "/api/v1/id-tags/BLOCKED1", {"status": "Blocked"}, expect=200)
    await server.api(
        "PUT",
        "/api/v1/id-tags/OLD1",
        {"status": "Accepted", "expiry_date": "2020-01-01T00:00:00Z", "parent_id_tag": "FLEET"},
        expect=200,
    )
    assert "currentTime" in await cp.result("Heartbeat", {})
    assert (
        await cp.result(
            "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
        )
        == {}
    )
    assert (await cp.result("Authorize", {"idTag": "TAG1"}))["idTagInfo"] == {"status": "Accepted"}
    assert (await cp.result("Authorize", {"idTag": "BLOCKED1"}))["idTagInfo"]["status"] == "Blocked"
    assert (await cp.result("Authorize", {"idTag": "NOBODY"}))["idTagInfo"]["status"] == "Invalid"
    old = (await cp.result("Authorize", {"idTag": "OLD1"}))["idTagInfo"]
    assert old == {
        "status": "Expired",
        "expiryDate": "2020-01-01T00:00:00.000Z",
        "parentIdTag": "FLEET",
    }
    start = await cp.result(
        "StartTransaction",
        {
            "connectorId": 1,
            "idTag": "tag1",
            "meterStart": 1000,
            "timestamp": "2026-03-01T10:00:00Z",
        },
    )
    tx_id = start["transactionId"]
    assert isinstance(tx_id, int) and tx_id > 0
    assert start["idTagInfo"]["status"] == "Accepted"
    assert (
        await cp.result(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": tx_id,
                "meterValue": [
                    {
                        "timestamp": "2026-03-01T10:30:00Z",
                        "sampledValue": [
                            {
                                "value": "4.5",
                                "unit": "kWh",
                                "measurand": "Energy.Active.Import.Register",
                            },
                            {"value": "7.2", "unit": "kW", "measurand": "Power.Active.Import"},
                        ],
                    }
                ],
            },
        )
        == {}
    )
    _, active = await server.api("GET", "/api/v1/transactions?status=active", expect=200)
    assert [t["transaction_id"] for t in active["items"]] == [tx_id]
    assert await cp.result(
        "StopTransaction",
        {
            "transactionId": tx_id,
            "meterStop": 8500,
            "timestamp": "2026-03-01T11:00:00Z",
            "idTag": "TAG1",
            "reason": "Local",
        },
    ) == {"idTagInfo": {"status": "Accepted"}}
    _, txs = await server.api("GET", "/api/v1/transactions?charge_point_id=CP1", expect=200)
    tx = txs["items"][0]
    assert tx["transaction_id"] == tx_id
    assert tx["status"] == "completed"
    assert (tx["meter_start"], tx["meter_stop"], tx["energy_wh"]) == (1000, 8500, 7500)
    assert tx["started_at"] == "2026-03-01T10:00:00.000Z"
    assert tx["stopped_at"] == "2026-03-01T11:00:00.000Z"
    assert tx["stop_received_at"] is not None
    assert tx["id_tag"] == "TAG1"
    _, body = await server.api("GET", "/api/v1/charge-points/CP1", expect=200)
    assert body["connected"] is True
    assert (body["vendor"], body["model"], body["serial_number"], body["firmware_version"]) == (
        "ExampleVendor",
        "Wallbox X",
        "SN-1",
        "1.2.3",
    )
    assert body["connectors"] == [
        {
            "connector_id": 1,
            "status": "Available",
            "error_code": "NoError",
            "raw_error_code": "NoError",
            "updated_at": body["connectors"][0]["updated_at"],
        }
    ]
    _, since = await server.api(
        "GET", "/api/v1/transactions?since=2026-03-02T00:00:00Z", expect=200
    )
    assert since["items"] == []
    await cp.close()


async def test_transaction_ids_come_from_the_database(server: Server) -> None:
    cp = await connect(server)
    ids = []
    for minute in range(3):
        start = await cp.result(
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": "X",
                "meterStart": 0,
                "timestamp": f"2026-03-01T10:0{minute}:00Z",
            },
        )
        ids.append(start["transactionId"])
    assert ids == sorted(set(ids)) and ids[1] == ids[0] + 1
    # a replayed StartTransaction (charger lost our answer) gets the same id, no new transaction
    again = await cp.result(
        "StartTransaction",
        {"connectorId": 1, "idTag": "X", "meterStart": 0, "timestamp": "2026-03-01T10:00:00Z"},
    )
    assert again["transactionId"] == ids[0]
    _, txs = await server.api("GET", "/api/v1/transactions", expect=200)
    assert len(txs["items"]) == 3
    await cp.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ([2, "m1", "Authorize", {}], "OccurenceConstraintViolation"),
        ([2, "m2", "Authorize", {"idTag": 5}], "TypeConstraintViolation"),
        ([2, "m3", "Authorize", {"idTag": "X" * 21}], "PropertyConstraintViolation"),
        ([2, "m4", "Authorize", {"idTag": "A", "extra": 1}], "FormationViolation"),
        ([2, "m5", "Authorize", []], "FormationViolation"),
        ([2, "m6", "FlyToTheMoon", {}], "NotImplemented"),
        ([2, "m7", "GetConfiguration", {}], "NotSupported"),
        ([9, "m8", "Heartbeat", {}], "FormationViolation"),
    ],
)
async def test_callerror_codes_use_16_spelling(server: Server, frame: list[Any], code: str) -> None:
    cp = await connect(server)
    reply = await cp.send_frame(frame)
    assert reply[0] == 4 and reply[1] == frame[1]
    assert reply[2] == code
    assert "properties" not in json.dumps(reply[4])  # no schema echoed
    assert len(json.dumps(reply)) < 400
    await cp.close()


async def test_unparseable_frame_gets_callerror_and_connection_survives(server: Server) -> None:
    cp = await connect(server)
    reply = await cp.send_frame("this is not json")
    assert reply[:3] == [4, "-1", "FormationViolation"]
    assert "currentTime" in await cp.result("Heartbeat", {})
    await cp.close()


async def test_stop_transaction_with_megabytes_of_transaction_data(server: Server) -> None:
    """The default frame limit admits a real StopTransaction with several MiB of
    transactionData (websockets' own default is 1 MiB)."""
    cp = await connect(server)
    start = await cp.result(
        "StartTransaction",
        {"connectorId": 1, "idTag": "X", "meterStart": 0, "timestamp": "2026-03-01T10:00:00Z"},
    )
    data = [
        {
            "timestamp": f"2026-03-01T10:{i // 600 % 60:02d}:{i // 10 % 60:02d}Z",
            "sampledValue": [
                {
                    "value": str(i),
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "Wh",
                    "context": "Sample.Periodic",
                },
                {"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
            ],
        }
        for i in range(20000)
    ]
    payload = {
        "transactionId": start["transactionId"],
        "meterStop": 19999,
        "timestamp": "2026-03-01T11:00:00Z",
        "transactionData": data,
    }
    assert len(json.dumps(payload)) > 3 * 1024 * 1024
    assert await cp.result("StopTransaction", payload) == {}
    _, txs = await server.api("GET", "/api/v1/transactions", expect=200)
    assert txs["items"][0]["energy_wh"] == 19999
    await cp.close()


async def test_firmware_diagnostics_and_data_transfer(server: Server) -> None:
    cp = await connect(server)
    assert await cp.result("FirmwareStatusNotification", {"status": "Installed"}) == {}
    assert await cp.result("DiagnosticsStatusNotification", {"status": "Uploaded"}) == {}
    reply = await cp.result("DataTransfer", {"vendorId": "com.example", "data": "x"})
    assert reply == {"status": "UnknownVendorId"}
    await cp.close()


async def test_metrics_and_health(server: Server) -> None:
    cp = await connect(server)
    await cp.result("Heartbeat", {})
    async with server.http.get(server.api_url + "/metrics") as resp:
        text = await resp.text()
    assert "csms_connected_charge_points 1.0" in text
    assert 'csms_ocpp_messages_total{action="Heartbeat",direction="in",result="ok"} 1.0' in text
    assert "csms_ocpp_handle_seconds_bucket" in text
    status, body = await server.api("GET", "/healthz", token=None)
    assert status == 200 and body["status"] == "ok"
    await cp.close()


async def test_action_names_are_never_paths(server: Server) -> None:
    """An action name from the wire is looked up among the schema files, never opened as a
    path (found by a fresh user: '/tmp/x' and '../../v201/schemas/...' used to be read)."""
    cp = await connect(server)
    for action in ("/etc/passwd", "../../v201/schemas/BootNotificationRequest", "..", ""):
        reply = await cp.send_frame([2, "p1", action, {}])
        assert reply[:3] == [4, "p1", "NotImplemented"] or reply[2] == "FormationViolation"
    await cp.close()


async def test_absurd_numbers_get_a_callerror_not_internal_error(server: Server) -> None:
    """Found by a fresh user: nan, 1e400 and 2^70 used to raise inside the handler."""
    cp = await connect(server)
    for value in ("nan", "1e400", 2**70):
        reply = await cp.call(
            "StatusNotification",
            {"connectorId": value, "errorCode": "NoError", "status": "Available"},
        )
        assert reply[0] == 4 and reply[2] in (
            "TypeConstraintViolation",
            "PropertyConstraintViolation",
        ), reply
        reply = await cp.call(
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": "X",
                "meterStart": value,
                "timestamp": "2026-01-01T00:00:00Z",
            },
        )
        assert reply[0] == 3 or reply[2] != "InternalError", reply
    big = {"vendorId": "v", "data": "x" * (2 * 1024 * 1024)}
    assert (await cp.call("DataTransfer", big))[0] == 3
    from sqlalchemy import select

    from csms.models import OcppEvent

    rows = await server.app.db.read(
        lambda s: s.execute(select(OcppEvent).where(OcppEvent.kind == "data_transfer"))
    )  # type: ignore[arg-type]
    [event] = rows.scalars()
    assert event.detail["truncated"] is True and len(event.detail["head"]) <= 64 * 1024
    await cp.close()
