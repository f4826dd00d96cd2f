"""OCPP 1.6 compliance test cases for a Central System (OCTT 1.6, ``TC_xxx_CSMS``) of the Core
and Remote Trigger profiles: boot, charging sessions, remote start/stop, reset, unlock,
configuration, availability, authorisation, cache, data transfer, trigger messages. Each test
drives a real 1.6 websocket; CSMS-initiated calls go through the generic operator route
``POST /api/v1/charge-points/{id}/commands/{Action}``, which stores each call (``command``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import col

from csms.models import Command, Connector
from tests.charger import RawCharger
from tests.conftest import Server
from tests.test_tc16_operations import CP, at, connect, sent, start


async def command(server: Server, cp: RawCharger, action: str, payload: dict[str, Any],
                  answer: dict[str, Any]) -> dict[str, Any]:
    """Send ``action`` through the operator API with the charger answering ``answer``; the
    call arrives unchanged and the answer comes back (and is stored)."""
    cp.answers[action] = lambda _p: answer
    _, body = await server.api("POST", f"{CP}/commands/{action}", payload, expect=200)
    assert body == answer and sent(cp, action)[-1] == payload
    rows = await server.app.db.read(lambda s: s.execute(select(Command).where(
        col(Command.action) == action).order_by(col(Command.id).desc()).limit(1)))
    stored = rows.scalars().one()
    assert (stored.status, stored.response) == ("answered", answer)
    return body  # type: ignore[no-any-return]


async def status(cp: RawCharger, connector: int, state: str) -> None:
    assert await cp.result("StatusNotification", {
        "connectorId": connector, "errorCode": "NoError", "status": state}) == {}


async def transaction(server: Server, tx: int) -> dict[str, Any]:
    _, body = await server.api("GET", "/api/v1/transactions?charge_point_id=CP1", expect=200)
    return next(t for t in body["items"] if t["transaction_id"] == tx)  # type: ignore[no-any-return]


async def stop(cp: RawCharger, tx: int, tag: str | None = "T1", meter: int = 5000) -> None:
    payload: dict[str, Any] = {"transactionId": tx, "meterStop": meter, "timestamp": at(0)}
    if tag is not None:
        payload["idTag"] = tag
    await cp.result("StopTransaction", payload)


async def test_tc_001_cold_boot_charge_point(server: Server) -> None:
    await server.register("CP1")
    cp = await connect(server)
    boot = await cp.result("BootNotification", {"chargePointVendor": "V",
                                                "chargePointModel": "M"})
    interval = server.app.settings.heartbeat_interval
    assert (boot["status"], boot["interval"]) == ("Accepted", interval)
    for connector in (0, 1):
        await status(cp, connector, "Available")
    assert "currentTime" in await cp.result("Heartbeat", {})
    rows = await server.app.db.read(lambda s: s.execute(select(Connector)))
    assert {(c.connector_id, c.status) for c in rows.scalars()} == {
        (0, "Available"), (1, "Available")}
    await cp.close()


async def test_tc_003_regular_charging_session_plugin_first(server: Server) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/T1", {}, expect=200)
    await status(cp, 1, "Preparing")
    assert (await cp.result("Authorize", {"idTag": "T1"}))["idTagInfo"]["status"] == "Accepted"
    tx = await start(cp, 1, "T1")
    await status(cp, 1, "Charging")
    await stop(cp, tx)
    await status(cp, 1, "Finishing")
    row = await transaction(server, tx)
    assert (row["status"], row["energy_wh"]) == ("completed", 5000)
    await cp.close()


async def test_tc_004_1_regular_charging_session_identification_first(server: Server) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/T1", {}, expect=200)
    assert (await cp.result("Authorize", {"idTag": "T1"}))["idTagInfo"]["status"] == "Accepted"
    await status(cp, 1, "Preparing")
    tx = await start(cp, 1, "T1")
    await stop(cp, tx, meter=1200)
    assert (await transaction(server, tx))["energy_wh"] == 1200
    await cp.close()


async def test_tc_010_remote_start_charging_session_cable_plugged_in_first(
    server: Server,
) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/T1", {}, expect=200)
    await status(cp, 1, "Preparing")
    await command(server, cp, "RemoteStartTransaction", {"connectorId": 1, "idTag": "T1"},
                  {"status": "Accepted"})
    tx = await start(cp, 1, "T1")
    assert (await transaction(server, tx))["status"] == "active"
    await cp.close()


async def test_tc_011_1_remote_start_charging_session_remote_start_first(
    server: Server,
) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/T1", {}, expect=200)
    await command(server, cp, "RemoteStartTransaction", {"connectorId": 1, "idTag": "T1"},
                  {"status": "Accepted"})
    await status(cp, 1, "Preparing")
    tx = await start(cp, 1, "T1")
    await status(cp, 1, "Charging")
    assert (await transaction(server, tx))["id_tag"] == "T1"
    await cp.close()


async def test_tc_012_remote_stop_charging_session(server: Server) -> None:
    cp = await connect(server)
    tx = await start(cp, 1, "T1")
    await command(server, cp, "RemoteStopTransaction", {"transactionId": tx},
                  {"status": "Accepted"})
    await stop(cp, tx)
    assert (await transaction(server, tx))["status"] == "completed"
    await cp.close()


async def test_tc_013_hard_reset_without_transaction(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "Reset", {"type": "Hard"}, {"status": "Accepted"})
    await cp.close()
    cp = await connect(server)  # it reboots and registers again
    await status(cp, 0, "Available")
    await cp.close()


async def test_tc_014_soft_reset_without_transaction(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "Reset", {"type": "Soft"}, {"status": "Accepted"})
    await cp.close()


async def test_tc_015_hard_reset_with_transaction(server: Server) -> None:
    cp = await connect(server)
    tx = await start(cp, 1, "T1")
    await command(server, cp, "Reset", {"type": "Hard"}, {"status": "Accepted"})
    await cp.result("StopTransaction", {"transactionId": tx, "meterStop": 300,
                                        "timestamp": at(0), "reason": "HardReset"})
    row = await transaction(server, tx)
    assert (row["status"], row["stop_reason"]) == ("completed", "HardReset")
    await cp.close()


async def test_tc_017_1_unlock_connector_no_charging_session_running_not_fixed_cable(
    server: Server,
) -> None:
    cp = await connect(server)
    await command(server, cp, "UnlockConnector", {"connectorId": 1}, {"status": "Unlocked"})
    await cp.close()


async def test_tc_019_1_retrieve_all_configuration_keys(server: Server) -> None:
    cp = await connect(server)
    keys = {"configurationKey": [
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
        {"key": "SupportedFeatureProfiles", "readonly": True,
         "value": "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,"
                  "RemoteTrigger"}]}
    await command(server, cp, "GetConfiguration", {}, keys)
    await command(server, cp, "GetConfiguration", {"key": ["Nope"]},
                  {"configurationKey": [], "unknownKey": ["Nope"]})
    await cp.close()


async def test_tc_021_change_set_configuration(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "ChangeConfiguration",
                  {"key": "MeterValueSampleInterval", "value": "60"}, {"status": "Accepted"})
    await cp.close()


async def test_tc_023_start_charging_session_authorize_invalid_expired_blocked(
    server: Server,
) -> None:
    """TC_023_1 Invalid, TC_023_2 Expired, TC_023_3 Blocked."""
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/OLD", {"expiry_date": "2020-01-01T00:00:00Z"},
                     expect=200)
    await server.api("PUT", "/api/v1/id-tags/BAD", {"status": "Blocked"}, expect=200)
    for tag, expected in (("NOBODY", "Invalid"), ("OLD", "Expired"), ("BAD", "Blocked")):
        info = (await cp.result("Authorize", {"idTag": tag}))["idTagInfo"]
        assert info["status"] == expected, tag
    await cp.close()


async def test_tc_026_remote_start_charging_session_rejected(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "RemoteStartTransaction", {"connectorId": 1, "idTag": "T1"},
                  {"status": "Rejected"})
    await cp.close()


async def test_tc_028_remote_stop_transaction_rejected(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "RemoteStopTransaction", {"transactionId": 487249487},
                  {"status": "Rejected"})
    await cp.close()


async def test_tc_030_unlock_connector_unlock_failure(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "UnlockConnector", {"connectorId": 1}, {"status": "UnlockFailed"})
    await cp.close()


async def test_tc_031_unlock_connector_unknown_connector(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "UnlockConnector", {"connectorId": 9}, {"status": "NotSupported"})
    await cp.close()


async def test_tc_040_1_configuration_keys_not_supported(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "ChangeConfiguration", {"key": "Testing", "value": "true"},
                  {"status": "NotSupported"})
    await cp.close()


async def test_tc_040_2_configuration_keys_invalid_value(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "ChangeConfiguration",
                  {"key": "MeterValueSampleInterval", "value": "-1"}, {"status": "Rejected"})
    await cp.close()


async def test_change_availability_inoperative_operative_and_scheduled(server: Server) -> None:
    """ChangeAvailability (1.6 §5.2): Accepted, Rejected, and Scheduled while a transaction
    runs (the connector reports Unavailable only after the stop)."""
    cp = await connect(server)
    await command(server, cp, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"},
                  {"status": "Accepted"})
    await status(cp, 1, "Unavailable")
    await command(server, cp, "ChangeAvailability", {"connectorId": 0, "type": "Operative"},
                  {"status": "Rejected"})
    tx = await start(cp, 2, "T1")
    await command(server, cp, "ChangeAvailability", {"connectorId": 2, "type": "Inoperative"},
                  {"status": "Scheduled"})
    await stop(cp, tx)
    await status(cp, 2, "Unavailable")
    rows = await server.app.db.read(lambda s: s.execute(select(Connector)))
    assert {c.connector_id: c.status for c in rows.scalars()} == {1: "Unavailable",
                                                                   2: "Unavailable"}
    await cp.close()


async def test_tc_054_trigger_message(server: Server) -> None:
    """TriggerMessage (Remote Trigger §5.17) and the triggered message; the 1.6 security
    ExtendedTriggerMessage the same way."""
    cp = await connect(server)
    await command(server, cp, "TriggerMessage",
                  {"requestedMessage": "StatusNotification", "connectorId": 1},
                  {"status": "Accepted"})
    await status(cp, 1, "Available")
    await command(server, cp, "TriggerMessage", {"requestedMessage": "Heartbeat"},
                  {"status": "Accepted"})
    assert "currentTime" in await cp.result("Heartbeat", {})
    await command(server, cp, "ExtendedTriggerMessage",
                  {"requestedMessage": "FirmwareStatusNotification"}, {"status": "Accepted"})
    await cp.result("FirmwareStatusNotification", {"status": "Idle"})
    _, jobs = await server.api("GET", f"{CP}/jobs", expect=200)
    assert jobs["items"] == []  # an Idle nobody asked for is no job
    await cp.close()


async def test_tc_055_trigger_message_rejected(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "TriggerMessage", {"requestedMessage": "MeterValues",
                                                 "connectorId": 1}, {"status": "Rejected"})
    await command(server, cp, "ExtendedTriggerMessage",
                  {"requestedMessage": "SignChargePointCertificate"}, {"status": "NotImplemented"})
    await cp.close()


async def test_tc_061_clear_authorization_data_in_authorization_cache(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "ClearCache", {}, {"status": "Accepted"})
    await cp.close()


async def test_tc_062_data_transfer_to_a_charge_point(server: Server) -> None:
    cp = await connect(server)
    await command(server, cp, "DataTransfer", {"vendorId": "com.example", "messageId": "ping",
                                               "data": "x"},
                  {"status": "Accepted", "data": "pong"})
    await command(server, cp, "DataTransfer", {"vendorId": "com.unknown"},
                  {"status": "UnknownVendorId"})
    await cp.close()


async def test_tc_064_data_transfer_to_a_central_system(server: Server) -> None:
    cp = await connect(server)
    answer = await cp.result("DataTransfer", {"vendorId": "com.example", "data": "hello"})
    assert answer["status"] in ("Rejected", "UnknownMessageId", "UnknownVendorId")
    await cp.close()
