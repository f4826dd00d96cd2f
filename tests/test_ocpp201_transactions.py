"""OCPP 2.0.1 TransactionEvents that arrive as real stations send them: replayed, out of order,
with seqNo gaps, after an offline period, authorised late, started remotely without an idToken;
and what they cost (I02 CostUpdated, I03 totalCost). Every answer is schema-checked
(:class:`tests.test_ocpp201.Station201`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from csms.models import MeterSample, Transaction, TransactionEventRecord
from tests.conftest import Server
from tests.test_lifeline import new_driver, wait_status
from tests.test_ocpp201 import Station201, events
from tests.test_ocpp201_lifeline import T0, T30, T60, event, meter

EVSE = {"id": 1, "connectorId": 1}
SMALL_HOLD = {
    "currency": "JPY", "hold_amount": 100,
    "elements": [{"price_components": [{"type": "ENERGY", "price": 40, "step_size": 1}]}],
}


async def tx_row(server: Server, cp_id: str, tx_id: str) -> Transaction:
    """The transaction of a station-issued id."""
    row = await server.app.db.read(lambda s: s.execute(select(Transaction).where(
        col(Transaction.charge_point_id) == cp_id, col(Transaction.ocpp_id) == tx_id)))
    found = row.scalars().first()
    assert found is not None
    return found


async def sample_count(server: Server, tx_pk: int | None) -> int:
    """Meter samples stored for a transaction."""
    return int(await server.app.db.read(lambda s: s.scalar(
        select(func.count()).select_from(MeterSample).where(
            col(MeterSample.transaction_pk) == tx_pk))) or 0)


async def outcomes(server: Server, cp_id: str, tx_id: str) -> list[tuple[int, str, str]]:
    """(seqNo, eventType, outcome) of every TransactionEvent kept, in arrival order."""
    rows = await server.app.db.read(lambda s: s.execute(select(TransactionEventRecord).where(
        col(TransactionEventRecord.charge_point_id) == cp_id,
        col(TransactionEventRecord.transaction_id) == tx_id,
    ).order_by(col(TransactionEventRecord.id))))
    return [(r.seq_no, r.event_type, r.outcome) for r in rows.scalars()]


async def card_driver(server: Server, email: str, tag: str, card: str = "pm_card_visa"
                      ) -> dict[str, Any]:
    """A driver with a saved card and a linked RFID tag."""
    driver = await new_driver(server, email, card=card)
    await server.api("POST", "/api/v1/drivers/me/id-tags", {"id_tag": tag},
                     token=driver["token"], expect=201)
    return driver


async def only_session(server: Server, driver: dict[str, Any]) -> dict[str, Any]:
    """The driver's single session."""
    _, mine = await server.api("GET", "/api/v1/drivers/me/sessions", token=driver["token"],
                               expect=200)
    [session] = mine["items"]
    return session  # type: ignore[no-any-return]


async def test_replayed_ended_and_late_updated_change_nothing(server: Server) -> None:
    """A replayed Ended gets the same totalCost and changes nothing (one capture); an Updated
    that arrives after the Ended changes nothing; the seqNo gap it left is recorded."""
    driver = await card_driver(server, "replay@example.com", "CARDR1")
    cp = await Station201.connect(server, "E-REPLAY")
    token = {"idToken": "CARDR1", "type": "ISO14443"}
    assert (await cp.result("Authorize", {"idToken": token}))["idTokenInfo"]["status"] \
        == "Accepted"
    started = event("Started", 0, "Authorized", "R1", T0, idToken=token, evse=EVSE,
                    meterValue=meter("Transaction.Begin", 1000, T0))
    await cp.result("TransactionEvent", started)
    await cp.result("TransactionEvent", event("Updated", 1, "MeterValuePeriodic", "R1", T30,
                                              meterValue=meter("Sample.Periodic", 4000, T30)))
    ended = event("Ended", 3, "StopAuthorized", "R1", T60, {"stoppedReason": "Local"},
                  idToken=token, meterValue=meter("Transaction.End", 8500, T60))
    first = await cp.result("TransactionEvent", ended)
    assert first["totalCost"] == 300 and first["idTokenInfo"]["status"] == "Accepted"
    before = await tx_row(server, "E-REPLAY", "R1")
    samples = await sample_count(server, before.id)
    assert (before.status, before.energy_wh) == ("completed", 7500)

    again = await cp.result("TransactionEvent", ended)  # offline replay: same seqNo 3
    assert again == first
    late = await cp.result("TransactionEvent", event(
        "Updated", 2, "MeterValuePeriodic", "R1", "2026-11-30T10:45:00Z",
        meterValue=meter("Sample.Periodic", 6000, "2026-11-30T10:45:00Z")))
    assert late == {}
    assert (await cp.result("TransactionEvent", started))["idTokenInfo"]["status"] == "Accepted"
    after = await tx_row(server, "E-REPLAY", "R1")
    assert (after.status, after.energy_wh, after.meter_state, after.stopped_at) == (
        before.status, before.energy_wh, before.meter_state, before.stopped_at)
    assert await sample_count(server, after.id) == samples
    done = await wait_status(server, (await only_session(server, driver))["id"],
                             driver["token"], "completed")
    assert done["payment"]["captured_amount"] == 300 and done["cost"]["amount"] == 300

    assert await outcomes(server, "E-REPLAY", "R1") == [
        (0, "Started", "applied"), (1, "Updated", "applied"), (3, "Ended", "applied"),
        (3, "Ended", "replay"), (2, "Updated", "late"), (0, "Started", "replay")]
    [gap] = await events(server, "E-REPLAY", "tx_seq_gap")
    assert gap.detail["missing"] == [2] and gap.transaction_pk == after.id
    assert "seq_gap" in after.flags
    assert [e.detail["seq_no"] for e in await events(server, "E-REPLAY", "tx_event_late")] == [2]
    async with server.http.get(f"{server.api_url}/metrics") as resp:
        text = await resp.text()
    assert "csms_ocpp201_seqno_gaps_total 1.0" in text
    assert 'csms_ocpp201_transaction_events_total{event_type="Ended",outcome="replay"} 1.0' \
        in text
    await cp.close()


async def test_out_of_order_updated_before_the_end_only_adds_its_samples(server: Server) -> None:
    """seqNo 2 before seqNo 1: the gap is recorded when 2 arrives; 1 is still applied (its
    samples kept), and the older reading does not move the energy."""
    await server.api("PUT", "/api/v1/id-tags/FLEET7", {"status": "Accepted"}, expect=200)
    cp = await Station201.connect(server, "E-ORDER")
    token = {"idToken": "FLEET7", "type": "KeyCode"}
    await cp.result("TransactionEvent", event("Started", 0, "Authorized", "O1", T0,
                                              idToken=token, evse=EVSE,
                                              meterValue=meter("Transaction.Begin", 1000, T0)))
    await cp.result("TransactionEvent", event(
        "Updated", 2, "MeterValuePeriodic", "O1", "2026-11-30T10:40:00Z",
        meterValue=meter("Sample.Periodic", 5000, "2026-11-30T10:40:00Z")))
    await cp.result("TransactionEvent", event(
        "Updated", 1, "MeterValuePeriodic", "O1", "2026-11-30T10:20:00Z",
        meterValue=meter("Sample.Periodic", 3000, "2026-11-30T10:20:00Z")))
    _, txs = await server.api("GET", "/api/v1/transactions?charge_point_id=E-ORDER", expect=200)
    assert txs["items"][0]["energy_wh"] == 4000
    ended = await cp.result("TransactionEvent", event(
        "Ended", 3, "EVDeparted", "O1", T60, {"stoppedReason": "EVDisconnected"},
        meterValue=meter("Transaction.End", 8500, T60)))
    assert ended == {"totalCost": 0.0}  # an operator tag: free
    row = await tx_row(server, "E-ORDER", "O1")
    assert (row.energy_wh, row.stop_reason) == (7500, "EVDisconnected")
    assert await sample_count(server, row.id) == 4
    assert [o for _, _, o in await outcomes(server, "E-ORDER", "O1")] == ["applied"] * 4
    [gap] = await events(server, "E-ORDER", "tx_seq_gap")
    assert gap.detail["missing"] == [1]
    await cp.close()


async def test_offline_start_with_an_odd_begin_reading_is_billed_for_the_session(
    server: Server,
) -> None:
    """E11/E12: a station that started offline with a driver's card reports Transaction.Begin 0
    next to a lifetime register of 900,000 Wh; it is billed for the 7,500 Wh it delivered
    (¥300), not for its whole register, and the hold is placed after the start."""
    driver = await card_driver(server, "odd@example.com", "OFF201")
    cp = await Station201.connect(server, "E-OFFLINE")
    token = {"idToken": "OFF201", "type": "ISO14443"}
    started = await cp.result("TransactionEvent", event(
        "Started", 0, "Authorized", "OFF-1", T0, {"chargingState": "Charging"}, offline=True,
        idToken=token, evse=EVSE, meterValue=meter("Transaction.Begin", 0, T0)))
    assert started["idTokenInfo"]["status"] == "Accepted"
    session = await wait_status(server, (await only_session(server, driver))["id"],
                                driver["token"], "charging")
    assert session["origin"] == "offline" and session["payment"]["authorized_amount"] == 3000
    await cp.result("TransactionEvent", event(
        "Updated", 1, "MeterValuePeriodic", "OFF-1", "2026-11-30T10:05:00Z", offline=True,
        meterValue=meter("Sample.Periodic", 900_000, "2026-11-30T10:05:00Z")))
    ended = await cp.result("TransactionEvent", event(
        "Ended", 2, "EVDeparted", "OFF-1", T60, {"stoppedReason": "EVDisconnected"},
        offline=True, meterValue=meter("Transaction.End", 907_500, T60)))
    assert ended["totalCost"] == 300
    done = await wait_status(server, session["id"], driver["token"], "completed")
    assert done["energy_wh"] == 7500 and done["payment"]["captured_amount"] == 300
    row = await tx_row(server, "E-OFFLINE", "OFF-1")
    assert row.energy_wh == 7500
    assert {"offline", "baseline_implausible", "baseline_from_samples"} <= set(row.flags)
    await cp.close()


async def test_ended_before_started_is_settled_once(server: Server) -> None:
    """An Ended for a transaction we never saw starts and ends it (billed from its own
    Transaction.Begin / Transaction.End readings, not kept as an orphan); the Started that
    arrives afterwards changes nothing."""
    await server.api("PUT", "/api/v1/id-tags/FLEET8", {"status": "Accepted"}, expect=200)
    cp = await Station201.connect(server, "E-FIRST")
    token = {"idToken": "FLEET8", "type": "ISO14443"}
    ended = await cp.result("TransactionEvent", event(
        "Ended", 2, "StopAuthorized", "F1", T60, {"stoppedReason": "Local"}, idToken=token,
        evse=EVSE, meterValue=[*meter("Transaction.Begin", 1000, T0),
                               *meter("Transaction.End", 8500, T60)]))
    assert ended["totalCost"] == 0.0 and ended["idTokenInfo"]["status"] == "Accepted"
    row = await tx_row(server, "E-FIRST", "F1")
    assert (row.status, row.energy_wh, row.id_tag) == ("completed", 7500, "FLEET8")
    assert row.started_at is not None and row.started_at.isoformat() == "2026-11-30T10:00:00+00:00"
    assert "implicit_start" in row.flags
    await cp.result("TransactionEvent", event("Started", 0, "Authorized", "F1", T0,
                                              idToken=token, evse=EVSE,
                                              meterValue=meter("Transaction.Begin", 1000, T0)))
    again = await tx_row(server, "E-FIRST", "F1")
    assert (again.status, again.energy_wh, again.meter_state) == (
        "completed", 7500, row.meter_state)
    assert [o for _, _, o in await outcomes(server, "E-FIRST", "F1")] == ["applied", "late"]
    _, txs = await server.api("GET", "/api/v1/transactions?charge_point_id=E-FIRST", expect=200)
    assert len(txs["items"]) == 1
    await cp.close()


async def test_late_authorization_links_the_driver(server: Server) -> None:
    """E02/E03 (cable first): Started without an idToken; the card is presented later
    (Authorize places the hold, Updated with triggerReason Authorized carries the idToken); the
    transaction joins the driver's session; CostUpdated follows the meter; Ended costs ¥300."""
    driver = await card_driver(server, "late@example.com", "LATE01")
    cp = await Station201.connect(server, "E-LATE")
    await cp.result("TransactionEvent", event(
        "Started", 0, "CablePluggedIn", "L1", T0, {"chargingState": "EVConnected"}, evse=EVSE,
        meterValue=meter("Transaction.Begin", 2000, T0)))
    token = {"idToken": "LATE01", "type": "ISO14443"}
    auth = await cp.result("Authorize", {"idToken": token})
    assert auth["idTokenInfo"]["status"] == "Accepted"
    linked = await cp.result("TransactionEvent", event(
        "Updated", 1, "Authorized", "L1", "2026-11-30T10:01:00Z", {"chargingState": "Charging"},
        idToken=token))
    assert linked["idTokenInfo"]["status"] == "Accepted"
    assert linked["idTokenInfo"]["personalMessage"]["content"].startswith("40 JPY/kWh")
    session = await only_session(server, driver)
    assert (session["origin"], session["status"]) == ("rfid", "charging")
    await cp.result("TransactionEvent", event(
        "Updated", 2, "MeterValuePeriodic", "L1", T30,
        meterValue=meter("Sample.Periodic", 6000, T30)))
    cost = await cp.wait_call("CostUpdated")
    assert cost == {"totalCost": 160, "transactionId": "L1"}  # 4,000 Wh; no California Pricing
    ended = await cp.result("TransactionEvent", event(
        "Ended", 3, "EVDeparted", "L1", T60, {"stoppedReason": "EVDisconnected"},
        meterValue=meter("Transaction.End", 9500, T60)))
    assert ended["totalCost"] == 300
    done = await wait_status(server, session["id"], driver["token"], "completed")
    assert done["payment"]["captured_amount"] == 300
    row = await tx_row(server, "E-LATE", "L1")
    assert "late_authorization" in row.flags and "auth_invalid" not in row.flags
    assert row.id_tag == "LATE01"
    await cp.close()


async def test_remote_start_id_links_the_app_session(server: Server) -> None:
    """F01/F02: a station that starts without repeating the idToken is linked to the app session
    by remoteStartId; the hold reached stops it with RequestStopTransaction."""
    await server.register("E-REMOTE")
    await server.api("PUT", "/api/v1/tariffs/E-REMOTE", SMALL_HOLD, expect=201)
    await server.api("PUT", "/api/v1/charge-points/E-REMOTE",
                     {"tariff_id": "E-REMOTE", "security_profile": 1}, expect=200)
    cp = await Station201.connect(server, "E-REMOTE", register=False)
    driver = await new_driver(server, "remote@example.com")
    _, session = await server.api("POST", "/api/v1/sessions",
                                  {"charge_point_id": "E-REMOTE", "connector_id": 1},
                                  token=driver["token"], expect=201)
    request = await cp.wait_call("RequestStartTransaction")
    assert request["remoteStartId"] == session["id"]
    started = await cp.result("TransactionEvent", event(
        "Started", 0, "RemoteStart", "RS-1", T0,
        {"remoteStartId": session["id"], "chargingState": "Charging"}, evse=EVSE,
        meterValue=meter("Transaction.Begin", 0, T0)))
    assert started == {}  # no idToken in the request: no idTokenInfo
    running = await wait_status(server, session["id"], driver["token"], "charging")
    assert running["energy_wh"] == 0
    await cp.result("TransactionEvent", event("Updated", 1, "MeterValuePeriodic", "RS-1", T30,
                                              meterValue=meter("Sample.Periodic", 3000, T30)))
    stop = await cp.wait_call("RequestStopTransaction")  # ¥120 >= the ¥100 hold
    assert stop == {"transactionId": "RS-1"}
    ended = await cp.result("TransactionEvent", event(
        "Ended", 2, "RemoteStop", "RS-1", T60, {"stoppedReason": "Remote"},
        meterValue=meter("Transaction.End", 3000, T60)))
    assert ended["totalCost"] == 120
    done = await wait_status(server, session["id"], driver["token"], "completed")
    assert done["stop_reason"] == "hold_reached" and done["payment"]["captured_amount"] == 100
    await cp.close()


async def test_charging_state_prices_parking(server: Server) -> None:
    """chargingState SuspendedEV is parking (PARKING_TIME), as 1.6 connector statuses are."""
    await server.register("E-PARK")
    await server.api("PUT", "/api/v1/tariffs/E-PARK", {
        "currency": "JPY", "hold_amount": 3000, "elements": [{"price_components": [
            {"type": "ENERGY", "price": 40, "step_size": 1},
            {"type": "PARKING_TIME", "price": 600, "step_size": 60}]}]}, expect=201)
    await server.api("PUT", "/api/v1/charge-points/E-PARK",
                     {"tariff_id": "E-PARK", "security_profile": 1}, expect=200)
    driver = await card_driver(server, "park201@example.com", "PARK01")
    cp = await Station201.connect(server, "E-PARK", register=False)
    token = {"idToken": "PARK01", "type": "ISO14443"}
    await cp.result("Authorize", {"idToken": token})
    await server.backdate_sessions(T0)  # the recorded timeline below is in the past
    await cp.result("TransactionEvent", event(
        "Started", 0, "Authorized", "P1", T0, {"chargingState": "Charging"}, idToken=token,
        evse=EVSE, meterValue=meter("Transaction.Begin", 1000, T0)))
    await cp.result("TransactionEvent", event(
        "Updated", 1, "ChargingStateChanged", "P1", T30, {"chargingState": "SuspendedEV"},
        meterValue=meter("Sample.Periodic", 6000, T30)))
    ended = await cp.result("TransactionEvent", event(
        "Ended", 2, "EVDeparted", "P1", T60, {"stoppedReason": "EVDisconnected"},
        meterValue=meter("Transaction.End", 6000, T60)))
    # 5,000 Wh x ¥40 = ¥200; parked 30 min x ¥600/h = ¥300
    assert ended["totalCost"] == 500
    done = await wait_status(server, (await only_session(server, driver))["id"],
                             driver["token"], "completed")
    lines = {line["type"]: line["amount"] for line in done["cost"]["lines"]}
    assert lines == {"ENERGY": 200, "PARKING_TIME": 300}
    await cp.close()


async def test_no_cost_updates_where_the_station_does_not_show_costs(server: Server) -> None:
    """I02 only where the station shows costs: its device model says TariffCostCtrlr
    Enabled[Cost] false, so no CostUpdated is sent."""
    driver = await card_driver(server, "nocost@example.com", "NOCOST1")
    cp = await Station201.connect(server, "E-NOCOST")
    await cp.result("NotifyReport", {"requestId": 1, "generatedAt": T0, "seqNo": 0, "reportData": [{
        "component": {"name": "TariffCostCtrlr"}, "variable": {"name": "Enabled",
                                                               "instance": "Cost"},
        "variableAttribute": [{"value": "false"}]}]})
    token = {"idToken": "NOCOST1", "type": "ISO14443"}
    await cp.result("Authorize", {"idToken": token})
    await cp.result("TransactionEvent", event("Started", 0, "Authorized", "N1", T0,
                                              idToken=token, evse=EVSE,
                                              meterValue=meter("Transaction.Begin", 0, T0)))
    await cp.result("TransactionEvent", event("Updated", 1, "MeterValuePeriodic", "N1", T30,
                                              meterValue=meter("Sample.Periodic", 2000, T30)))
    await asyncio.sleep(0.3)
    assert cp.calls("CostUpdated") == []
    assert (await only_session(server, driver))["cost"]["amount"] == 80
    await cp.close()


async def test_malformed_transaction_events(server: Server) -> None:
    """Without a transactionId there is nothing to key on: CALLERROR. Other deviations in a
    TransactionEvent (an unknown triggerReason, a missing seqNo) are tolerated and billed."""
    await server.api("PUT", "/api/v1/id-tags/FLEET9", {"status": "Accepted"}, expect=200)
    cp = await Station201.connect(server, "E-BAD")
    reply = await cp.call("TransactionEvent", {"eventType": "Started", "timestamp": T0,
                                               "triggerReason": "Authorized", "seqNo": 0,
                                               "transactionInfo": {}})
    assert reply[0] == 4 and reply[2] == "OccurrenceConstraintViolation"
    odd = event("Started", 0, "SomethingNew", "B1", T0, idToken={"idToken": "FLEET9",
                "type": "ISO14443"}, evse=EVSE, meterValue=meter("Transaction.Begin", 10, T0))
    del odd["seqNo"]
    reply = await cp.call("TransactionEvent", odd)
    assert reply[0] == 3 and reply[2]["idTokenInfo"]["status"] == "Accepted"
    cp.errors.clear()  # our own requests broke the schema on purpose
    await cp.result("TransactionEvent", event("Ended", 1, "StopAuthorized", "B1", T60,
                                              meterValue=meter("Transaction.End", 1010, T60)))
    row = await tx_row(server, "E-BAD", "B1")
    assert (row.status, row.energy_wh) == ("completed", 1000)
    assert await events(server, "E-BAD", "tx_seq_gap") == []  # no seqNo, no gap to judge
    await cp.close()


async def test_signed_meter_data_is_kept_as_received(server: Server) -> None:
    """A signedMeterValue stays with its sample (as sent), and every TransactionEvent is kept
    exactly as received."""
    await server.api("PUT", "/api/v1/id-tags/EICHRECHT", {"status": "Accepted"}, expect=200)
    cp = await Station201.connect(server, "E-SIGNED")
    signed = {"signedMeterData": "AP;0;3;ALCV3ABBBISHMA2RYEGAZE3HV5YQBQRQAEHAR2MN;BIHEIWSQ...",
              "signingMethod": "ECDSA-secp256r1-SHA256", "encodingMethod": "EDL",
              "publicKey": "3059301306072A8648CE3D020106082A8648CE3D03010703420004"}
    begin = meter("Transaction.Begin", 1000, T0)
    begin[0]["sampledValue"][0]["signedMeterValue"] = signed
    request = event("Started", 0, "Authorized", "S1", T0, evse=EVSE, meterValue=begin,
                    idToken={"idToken": "EICHRECHT", "type": "eMAID"})
    await cp.result("TransactionEvent", request)
    row = await tx_row(server, "E-SIGNED", "S1")
    stored = await server.app.db.read(lambda s: s.execute(select(MeterSample).where(
        col(MeterSample.transaction_pk) == row.id)))
    [sample] = stored.scalars()
    assert sample.value == 1000 and sample.signed_data is not None
    assert json.loads(sample.signed_data) == signed
    kept = await server.app.db.read(lambda s: s.execute(select(TransactionEventRecord).where(
        col(TransactionEventRecord.transaction_id) == "S1")))
    [payload] = [r.payload for r in kept.scalars()]
    assert payload == request  # kept exactly as received: no schema defaults filled in
    await cp.close()


async def test_offline_replay_burst_settles_once(server: Server) -> None:
    """E11/E12: after an offline period the station replays Started and Ended back to back; the
    hold of the offline start is still being placed when the Ended settles the session. The
    session must still be captured, once."""
    driver = await card_driver(server, "burst@example.com", "BURST1")
    cp = await Station201.connect(server, "E-BURST")
    token = {"idToken": "BURST1", "type": "ISO14443"}
    _, ended = await asyncio.gather(
        cp.result("TransactionEvent", event(
            "Started", 0, "Authorized", "X1", T0, offline=True, idToken=token, evse=EVSE,
            meterValue=meter("Transaction.Begin", 1000, T0))),
        cp.result("TransactionEvent", event(
            "Ended", 1, "EVDeparted", "X1", T60, {"stoppedReason": "EVDisconnected"},
            offline=True, meterValue=meter("Transaction.End", 8500, T60))))
    assert ended["totalCost"] == 300
    session = await only_session(server, driver)
    done = await wait_status(server, session["id"], driver["token"], "completed")
    assert done["origin"] == "offline" and done["payment"]["captured_amount"] == 300
    await cp.close()
