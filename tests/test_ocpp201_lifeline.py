"""The lifeline over OCPP 2.0.1, end to end: a driver signs up, saves a card and pays; Stripe is
localstripe; the station is ocpp-rpc in strict mode speaking ``ocpp2.0.1`` (every frame in
both directions checked against its own copy of the OCA schemas)."""

from __future__ import annotations

import asyncio
from typing import Any

from billing.emulator import StripeEmulator
from tests.conftest import CP_PASSWORD, Server
from tests.interop import NodeCharger
from tests.test_lifeline import collected, new_driver, stripe_get, wait_status

T0 = "2026-11-30T10:00:00Z"
T30 = "2026-11-30T10:30:00Z"
T60 = "2026-11-30T11:00:00Z"
COSTMSG = "org.openchargealliance.costmsg"


def meter(context: str, wh: float, ts: str) -> list[dict[str, Any]]:
    """A 2.0.1 meterValue list with one energy register reading."""
    return [{"timestamp": ts, "sampledValue": [{
        "value": wh, "context": context, "measurand": "Energy.Active.Import.Register",
        "unitOfMeasure": {"unit": "Wh"}}]}]


def event(event_type: str, seq: int, trigger: str, tx_id: str, ts: str,
          info: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A TransactionEventRequest."""
    return {"eventType": event_type, "timestamp": ts, "triggerReason": trigger, "seqNo": seq,
            "transactionInfo": {"transactionId": tx_id, **(info or {})}, **extra}


async def strict_station(server: Server, cp_id: str) -> NodeCharger:
    """Register ``cp_id`` and connect ocpp-rpc (strict, 2.0.1); it boots and waits."""
    await server.register(cp_id)
    charger = await NodeCharger.start(server.ocpp_url, cp_id, CP_PASSWORD, "ocpp2.0.1",
                                      "connect-only")
    await charger.wait_for("scenario-complete")
    return charger


async def finish_clean(charger: NodeCharger) -> None:
    """Disconnect; no frame in either direction broke a schema."""
    done = await charger.finish()
    assert charger.of("strict-failure") == [] and charger.of("bad-message") == []
    assert done["strictFailures"] == 0 and done["badMessages"] == 0, charger.events


async def test_app_flow_201_with_ocpp_rpc_strict(server: Server,
                                                 emulator: StripeEmulator) -> None:
    """hold ¥3,000 -> RequestStartTransaction (remoteStartId = session) -> Authorize of the
    one-off Central token -> TransactionEvent Started (1,000 Wh) -> Updated (4,000 Wh; CostUpdated
    ¥120 with California Pricing data, declared in the device model) -> stop through the API ->
    RequestStopTransaction -> Ended (8,500 Wh) -> totalCost 300 -> capture ¥300."""
    charger = await strict_station(server, "LOT201A")
    await server.api("POST", "/api/v1/charge-points/LOT201A/commands/GetBaseReport",
                     {"requestId": 1, "reportBase": "FullInventory"}, expect=200)
    async with asyncio.timeout(10):
        while len([e for e in charger.of("call-result") if e["action"] == "NotifyReport"]) < 2:
            await asyncio.sleep(0.05)
    driver = await new_driver(server, "ann201@example.com")
    token = driver["token"]
    await charger.send("StatusNotification", {"timestamp": T0, "connectorStatus": "Available",
                                              "evseId": 1, "connectorId": 1})
    _, session = await server.api("POST", "/api/v1/sessions",
                                  {"charge_point_id": "LOT201A", "connector_id": 1},
                                  token=token, expect=201)
    assert session["status"] == "starting" and session["payment"]["authorized_amount"] == 3000
    remote = await charger.wait_for("incoming-call", action="RequestStartTransaction")
    id_token = remote["params"]["idToken"]
    assert id_token["type"] == "Central" and id_token["idToken"].startswith("APP")
    assert remote["params"]["remoteStartId"] == session["id"]
    assert remote["params"]["evseId"] == 1
    auth = await charger.send("Authorize", {"idToken": id_token})  # AuthorizeRemoteStart
    assert auth["idTokenInfo"]["status"] == "Accepted"

    started = await charger.send("TransactionEvent", event(
        "Started", 0, "RemoteStart", "TX-A1", T0,
        {"chargingState": "EVConnected", "remoteStartId": session["id"]},
        idToken=id_token, evse={"id": 1, "connectorId": 1},
        meterValue=meter("Transaction.Begin", 1000, T0)))
    info = started["idTokenInfo"]
    assert info["status"] == "Accepted"
    assert info["personalMessage"] == {"format": "UTF8",
                                       "content": "40 JPY/kWh. Card hold 3000 JPY."}
    assert info["customData"]["vendorId"] == COSTMSG
    assert info["customData"]["chargingPrice"]["kWhPrice"] == 40.0
    updated = await charger.send("TransactionEvent", event(
        "Updated", 1, "ChargingStateChanged", "TX-A1", T30, {"chargingState": "Charging"},
        meterValue=meter("Sample.Periodic", 4000, T30)))
    assert updated == {}
    running = await wait_status(server, session["id"], token, "charging")
    assert running["energy_wh"] == 3000 and running["cost"]["amount"] == 120
    cost = await charger.wait_for("incoming-call", action="CostUpdated")
    assert cost["params"]["totalCost"] == 120 and cost["params"]["transactionId"] == "TX-A1"
    custom = cost["params"]["customData"]
    assert (custom["vendorId"], custom["state"], custom["meterValue"]) == (COSTMSG, "Charging",
                                                                           4000)

    await server.api("POST", f"/api/v1/sessions/{session['id']}/stop", token=token, expect=202)
    stop_call = await charger.wait_for("incoming-call", action="RequestStopTransaction")
    assert stop_call["params"] == {"transactionId": "TX-A1"}
    ended = await charger.send("TransactionEvent", event(
        "Ended", 2, "RemoteStop", "TX-A1", T60,
        {"chargingState": "EVConnected", "stoppedReason": "Remote"},
        meterValue=meter("Transaction.End", 8500, T60)))
    assert ended["totalCost"] == 300
    assert ended["updatedPersonalMessage"]["content"] == "Total 300 JPY for 7.50 kWh."
    done = await wait_status(server, session["id"], token, "completed")
    assert done["energy_wh"] == 7500 and done["cost"]["amount"] == 300
    assert done["payment"]["status"] == "captured" and done["payment"]["captured_amount"] == 300
    intent = await stripe_get(emulator, f"payment_intents/{done['payment']['payment_intent_id']}")
    assert intent["status"] == "succeeded"
    assert await collected(emulator, intent["id"]) == 300
    _, txs = await server.api("GET", "/api/v1/transactions?charge_point_id=LOT201A", expect=200)
    assert [(t["transaction_id"], t["status"], t["stop_reason"]) for t in txs["items"]] == [
        ("TX-A1", "completed", "Remote")]
    await finish_clean(charger)


async def test_rfid_flow_201_with_ocpp_rpc_strict(server: Server,
                                                  emulator: StripeEmulator) -> None:
    """Authorize (ISO14443) places the hold before Accepted and shows the tariff; the
    TransactionEvents with that idToken link to it; Ended answers totalCost; ¥300 captured."""
    driver = await new_driver(server, "rfid201@example.com")
    await server.api("POST", "/api/v1/drivers/me/id-tags", {"id_tag": "04a1b2c3"},
                     token=driver["token"], expect=201)
    nocard = await new_driver(server, "nocard201@example.com", card=None)
    await server.api("POST", "/api/v1/drivers/me/id-tags", {"id_tag": "NOCARD1"},
                     token=nocard["token"], expect=201)
    charger = await strict_station(server, "LOT201B")

    async def authorize(token: str) -> dict[str, Any]:
        reply = await charger.send("Authorize", {"idToken": {"idToken": token,
                                                             "type": "ISO14443"}})
        return reply["idTokenInfo"]  # type: ignore[no-any-return]

    assert (await authorize("UNKNOWN9"))["status"] == "Invalid"
    assert (await authorize("NOCARD1"))["status"] == "Blocked"
    accepted = await authorize("04:A1:B2:C3")
    assert accepted["status"] == "Accepted"
    assert accepted["personalMessage"]["content"] == "40 JPY/kWh. Card hold 3000 JPY."
    assert "customData" not in accepted  # California Pricing not declared by this station
    id_token = {"idToken": "04A1B2C3", "type": "ISO14443"}
    started = await charger.send("TransactionEvent", event(
        "Started", 0, "Authorized", "TX-B1", T0, {"chargingState": "Charging"},
        idToken=id_token, evse={"id": 1, "connectorId": 1},
        meterValue=meter("Transaction.Begin", 1000, T0)))
    assert started["idTokenInfo"]["status"] == "Accepted"
    await charger.send("TransactionEvent", event(
        "Updated", 1, "MeterValuePeriodic", "TX-B1", T30,
        meterValue=meter("Sample.Periodic", 5000, T30)))
    ended = await charger.send("TransactionEvent", event(
        "Ended", 2, "StopAuthorized", "TX-B1", T60, {"stoppedReason": "Local"},
        idToken=id_token, meterValue=meter("Transaction.End", 8500, T60)))
    assert ended["totalCost"] == 300 and ended["idTokenInfo"]["status"] == "Accepted"
    _, mine = await server.api("GET", "/api/v1/drivers/me/sessions", token=driver["token"],
                               expect=200)
    assert [s["origin"] for s in mine["items"]] == ["rfid"]
    done = await wait_status(server, mine["items"][0]["id"], driver["token"], "completed")
    assert done["payment"]["captured_amount"] == 300 and done["energy_wh"] == 7500
    intent = await stripe_get(emulator, f"payment_intents/{done['payment']['payment_intent_id']}")
    assert await collected(emulator, intent["id"]) == 300
    costs = [e for e in charger.of("incoming-call") if e["action"] == "CostUpdated"]
    assert [c["params"]["totalCost"] for c in costs] == [160]
    await finish_clean(charger)
