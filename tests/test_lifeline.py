"""The lifeline, end to end over real sockets: a driver signs up, saves a card, charges and
pays; Stripe is localstripe; the charger is ocpp-rpc in strict mode (or a raw OCPP-J client
where the test needs to misbehave)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from billing.emulator import StripeEmulator
from billing.payments import collected_from
from tests.charger import RawCharger, basic_auth
from tests.conftest import CP_PASSWORD, Server
from tests.interop import NodeCharger


async def stripe_get(emulator: StripeEmulator, path: str) -> dict[str, Any]:
    """GET an object from the emulator's API."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{emulator.api_base}/v1/{path}", headers={"Authorization": "Bearer sk_test_x"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]


async def collected(emulator: StripeEmulator, intent_id: str) -> int:
    """Money collected on a PaymentIntent, as localstripe shows it: captured charges' amount
    minus amount_refunded (a partial capture refunds the rest of the hold)."""
    intent = await stripe_get(emulator, f"payment_intents/{intent_id}?expand[]=latest_charge")
    return collected_from(intent)


async def new_driver(
    server: Server, email: str, card: str | None = "pm_card_visa"
) -> dict[str, Any]:
    _, driver = await server.api(
        "POST", "/api/v1/drivers", {"email": email}, token=None, expect=201
    )
    assert driver["stripe_customer_id"].startswith("cus_")
    if card is not None:
        _, secret = await server.api(
            "POST", "/api/v1/drivers/me/setup-intents", token=driver["token"], expect=201
        )
        assert secret["client_secret"]
        await server.api(
            "POST",
            "/api/v1/drivers/me/payment-methods",
            {"payment_method_id": card},
            token=driver["token"],
            expect=201,
        )
    return driver


async def wait_status(
    server: Server, session_id: int, token: str, status: str, timeout: float = 15
) -> dict[str, Any]:
    """Poll the session until it reaches ``status``."""
    body: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            _, body = await server.api(
                "GET", f"/api/v1/sessions/{session_id}", token=token, expect=200
            )
            if body["status"] == status:
                return body
            await asyncio.sleep(0.05)


def energy_mv(tx_id: int, wh: int, ts: str) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "transactionId": tx_id,
        "meterValue": [
            {
                "timestamp": ts,
                "sampledValue": [
                    {
                        "value": str(wh),
                        "unit": "Wh",
                        "context": "Sample.Periodic",
                        "measurand": "Energy.Active.Import.Register",
                    }
                ],
            }
        ],
    }


async def test_app_flow_with_ocpp_rpc_strict(server: Server, emulator: StripeEmulator) -> None:
    """sign-up, card, start -> hold ¥3,000 -> RemoteStart -> StartTransaction (1,000 Wh) ->
    MeterValues -> stop through the API -> StopTransaction (8,500 Wh) at ¥40/kWh -> ¥300."""
    await server.register("LOT1")
    driver = await new_driver(server, "ann@example.com")
    token = driver["token"]
    charger = await NodeCharger.start(
        server.ocpp_url, "LOT1", CP_PASSWORD, "ocpp1.6", "connect-only"
    )
    await charger.wait_for("scenario-complete")
    await charger.send(
        "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"}
    )
    _, session = await server.api(
        "POST",
        "/api/v1/sessions",
        {"charge_point_id": "LOT1", "connector_id": 1},
        token=token,
        expect=201,
    )
    assert session["status"] == "starting"
    assert session["payment"]["authorized_amount"] == 3000
    intent = await stripe_get(
        emulator, f"payment_intents/{session['payment']['payment_intent_id']}"
    )
    assert (intent["amount"], intent["currency"], intent["status"]) == (
        3000,
        "jpy",
        "requires_capture",
    )
    remote = await charger.wait_for("incoming-call", action="RemoteStartTransaction")
    tag = remote["params"]["idTag"]
    assert len(tag) <= 20 and remote["params"]["connectorId"] == 1
    start = await charger.send(
        "StartTransaction",
        {"connectorId": 1, "idTag": tag, "meterStart": 1000, "timestamp": "2026-11-30T10:00:00Z"},
    )
    assert start["idTagInfo"]["status"] == "Accepted"
    tx_id = start["transactionId"]
    await charger.send(
        "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
    )
    await charger.send("MeterValues", energy_mv(tx_id, 4000, "2026-11-30T10:30:00Z"))
    running = await wait_status(server, session["id"], token, "charging")
    assert running["energy_wh"] == 3000 and running["cost"]["amount"] == 120

    await server.api("POST", f"/api/v1/sessions/{session['id']}/stop", token=token, expect=202)
    stop_call = await charger.wait_for("incoming-call", action="RemoteStopTransaction")
    assert stop_call["params"] == {"transactionId": tx_id}
    await charger.send(
        "StopTransaction",
        {
            "transactionId": tx_id,
            "meterStop": 8500,
            "timestamp": "2026-11-30T11:00:00Z",
            "reason": "Remote",
            "transactionData": [
                {
                    "timestamp": "2026-11-30T11:00:00Z",
                    "sampledValue": [
                        {
                            "value": "8500",
                            "unit": "Wh",
                            "context": "Transaction.End",
                            "measurand": "Energy.Active.Import.Register",
                        }
                    ],
                }
            ],
        },
    )
    done = await wait_status(server, session["id"], token, "completed")
    assert done["energy_wh"] == 7500
    assert done["cost"]["amount"] == 300 and done["cost"]["currency"] == "JPY"
    assert done["payment"]["status"] == "captured"
    assert done["payment"]["captured_amount"] == 300
    intent = await stripe_get(emulator, f"payment_intents/{done['payment']['payment_intent_id']}")
    assert intent["status"] == "succeeded"
    assert await collected(emulator, intent["id"]) == 300

    _, receipt = await server.api(
        "GET", f"/api/v1/sessions/{session['id']}/receipt", token=token, expect=200
    )
    assert receipt["total"] == 300 and receipt["energy_wh"] == 7500
    assert receipt["charged"]["captured_amount"] == 300 and receipt["waived"] is False
    assert receipt["lines"][0]["type"] == "ENERGY" and receipt["lines"][0]["amount"] == 300
    assert receipt["stripe"]["payment_intent_id"] == intent["id"]
    assert receipt["tariff"]["id"] == "default"
    async with server.http.get(
        f"{server.api_url}/api/v1/sessions/{session['id']}/receipt?format=html",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200 and "Total: 300 JPY" in await resp.text()
    _, mine = await server.api("GET", "/api/v1/drivers/me/sessions", token=token, expect=200)
    assert [s["id"] for s in mine["items"]] == [session["id"]]

    other = await new_driver(server, "bob@example.com", card=None)
    status, _ = await server.api("GET", f"/api/v1/sessions/{session['id']}", token=other["token"])
    assert status == 404
    status, _ = await server.api(
        "GET", f"/api/v1/sessions/{session['id']}/receipt", token=other["token"]
    )
    assert status == 404
    finished = await charger.finish()
    assert charger.of("strict-failure") == [] and charger.of("bad-message") == []
    assert finished["strictFailures"] == 0


async def test_rfid_flow_with_ocpp_rpc_strict(server: Server, emulator: StripeEmulator) -> None:
    await server.register("LOT2")
    driver = await new_driver(server, "rfid@example.com")
    await server.api(
        "POST",
        "/api/v1/drivers/me/id-tags",
        {"id_tag": "04a1b2c3"},
        token=driver["token"],
        expect=201,
    )
    nocard = await new_driver(server, "nocard@example.com", card=None)
    await server.api(
        "POST",
        "/api/v1/drivers/me/id-tags",
        {"id_tag": "NOCARD1"},
        token=nocard["token"],
        expect=201,
    )
    charger = await NodeCharger.start(
        server.ocpp_url, "LOT2", CP_PASSWORD, "ocpp1.6", "connect-only"
    )
    await charger.wait_for("scenario-complete")
    assert (await charger.send("Authorize", {"idTag": "UNKNOWN9"}))["idTagInfo"][
        "status"
    ] == "Invalid"
    assert (await charger.send("Authorize", {"idTag": "NOCARD1"}))["idTagInfo"][
        "status"
    ] == "Blocked"
    auth = await charger.send("Authorize", {"idTag": "04A1B2C3"})
    assert auth["idTagInfo"]["status"] == "Accepted"
    start = await charger.send(
        "StartTransaction",
        {
            "connectorId": 1,
            "idTag": "04A1B2C3",
            "meterStart": 1000,
            "timestamp": "2026-11-30T10:00:00Z",
        },
    )
    assert start["idTagInfo"]["status"] == "Accepted"
    tx_id = start["transactionId"]
    await charger.send("MeterValues", energy_mv(tx_id, 5000, "2026-11-30T10:30:00Z"))
    await charger.send(
        "StopTransaction",
        {
            "transactionId": tx_id,
            "meterStop": 8500,
            "timestamp": "2026-11-30T11:00:00Z",
            "idTag": "04A1B2C3",
            "reason": "Local",
        },
    )
    _, mine = await server.api(
        "GET", "/api/v1/drivers/me/sessions", token=driver["token"], expect=200
    )
    assert [(s["origin"], s["status"]) for s in mine["items"]] in (
        [("rfid", "settling")],
        [("rfid", "completed")],
    )
    done = await wait_status(server, mine["items"][0]["id"], driver["token"], "completed")
    assert done["payment"]["captured_amount"] == 300 and done["energy_wh"] == 7500
    await charger.finish()
    assert charger.of("strict-failure") == [] and charger.of("bad-message") == []


SMALL_HOLD = {
    "currency": "JPY",
    "hold_amount": 100,
    "elements": [{"price_components": [{"type": "ENERGY", "price": 40, "step_size": 1}]}],
}


async def connect(server: Server, cp_id: str, tariff: dict[str, Any] | None = None) -> RawCharger:
    """Register and boot a charger that accepts remote starts and stops; with ``tariff``, it
    gets its own tariff (id = the charge point id)."""
    await server.register(cp_id)
    if tariff is not None:
        await server.api("PUT", f"/api/v1/tariffs/{cp_id}", tariff, expect=201)
        await server.api(
            "PUT",
            f"/api/v1/charge-points/{cp_id}",
            {"tariff_id": cp_id, "security_profile": 1},
            expect=200,
        )
    cp = await RawCharger.open(f"{server.ocpp_url}/{cp_id}", headers=basic_auth(cp_id, CP_PASSWORD))
    cp.answers["RemoteStartTransaction"] = lambda _p: {"status": "Accepted"}
    cp.answers["RemoteStopTransaction"] = lambda _p: {"status": "Accepted"}
    await cp.result("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
    return cp


async def start_via_app(
    server: Server,
    cp: RawCharger,
    token: str,
    cp_id: str,
    meter_start: int = 1000,
    created_at: str | None = None,
) -> tuple[int, int]:
    """POST /sessions, then the charger starts the transaction; returns (session, tx id).
    With ``created_at`` the session is backdated first (the charger's times are recorded)."""
    _, session = await server.api(
        "POST",
        "/api/v1/sessions",
        {"charge_point_id": cp_id, "connector_id": 1},
        token=token,
        expect=201,
    )
    tag = cp.received_calls[-1][3]["idTag"]
    if created_at is not None:
        await server.backdate_sessions(created_at)  # the charger's timeline is in the past
    start = await cp.result(
        "StartTransaction",
        {
            "connectorId": 1,
            "idTag": tag,
            "meterStart": meter_start,
            "timestamp": "2026-11-30T10:00:00Z",
        },
    )
    return session["id"], start["transactionId"]


async def test_declined_card_is_402_and_nothing_is_sent(server: Server) -> None:
    cp = await connect(server, "LOT3")
    driver = await new_driver(server, "declined@example.com", card="pm_card_chargeCustomerFail")
    status, body = await server.api(
        "POST",
        "/api/v1/sessions",
        {"charge_point_id": "LOT3", "connector_id": 1},
        token=driver["token"],
    )
    assert status == 402, body
    assert body["error"]["code"] == "payment_declined"
    assert body["error"]["stripe_code"] == "card_declined", body
    assert cp.received_calls == []
    _, mine = await server.api(
        "GET", "/api/v1/drivers/me/sessions", token=driver["token"], expect=200
    )
    assert mine["items"][0]["status"] == "failed"
    no_card = await new_driver(server, "nocard2@example.com", card=None)
    status, body = await server.api(
        "POST",
        "/api/v1/sessions",
        {"charge_point_id": "LOT3", "connector_id": 1},
        token=no_card["token"],
    )
    assert status == 402 and body["error"]["field"] == "payment_method"
    await cp.close()


async def test_charger_refusing_the_start_releases_the_hold(
    server: Server, emulator: StripeEmulator
) -> None:
    cp = await connect(server, "LOT4")
    cp.answers["RemoteStartTransaction"] = lambda _p: {"status": "Rejected"}
    driver = await new_driver(server, "rej@example.com")
    _, body = await server.api(
        "POST",
        "/api/v1/sessions",
        {"charge_point_id": "LOT4", "connector_id": 1},
        token=driver["token"],
        expect=201,
    )
    assert body["status"] == "failed" and "Rejected" in body["failure_reason"]
    intent = await stripe_get(emulator, f"payment_intents/{body['payment']['payment_intent_id']}")
    assert intent["status"] == "canceled"
    await cp.close()


async def test_tiny_session_cancels_the_hold_and_receipt_says_waived(
    server: Server, emulator: StripeEmulator
) -> None:
    cp = await connect(server, "LOT5")
    driver = await new_driver(server, "tiny@example.com")
    sid, tx_id = await start_via_app(server, cp, driver["token"], "LOT5")
    await cp.result(
        "StopTransaction",
        {"transactionId": tx_id, "meterStop": 1020, "timestamp": "2026-11-30T10:05:00Z"},
    )
    done = await wait_status(server, sid, driver["token"], "completed")
    assert done["energy_wh"] == 20 and done["cost"]["amount"] == 1  # ¥0.8 -> ¥1, below ¥50
    assert done["payment"]["status"] == "canceled"
    assert done["payment"]["captured_amount"] == 0
    intent = await stripe_get(emulator, f"payment_intents/{done['payment']['payment_intent_id']}")
    assert intent["status"] == "canceled"
    assert await collected(emulator, intent["id"]) == 0
    _, receipt = await server.api(
        "GET", f"/api/v1/sessions/{sid}/receipt", token=driver["token"], expect=200
    )
    assert receipt["waived"] is True and receipt["charged"]["collected_amount"] == 0
    await cp.close()


async def test_running_cost_reaching_the_hold_stops_the_session(server: Server) -> None:
    cp = await connect(server, "LOT6", tariff=SMALL_HOLD)
    driver = await new_driver(server, "cap@example.com")
    sid, tx_id = await start_via_app(server, cp, driver["token"], "LOT6")
    await cp.result("MeterValues", energy_mv(tx_id, 2000, "2026-11-30T10:10:00Z"))  # ¥40
    await asyncio.sleep(0.3)
    assert [c[2] for c in cp.received_calls] == ["RemoteStartTransaction"]
    await cp.result("MeterValues", energy_mv(tx_id, 3600, "2026-11-30T10:20:00Z"))  # ¥104
    async with asyncio.timeout(5):
        while [c[2] for c in cp.received_calls][-1] != "RemoteStopTransaction":
            await asyncio.sleep(0.05)
    assert cp.received_calls[-1][3] == {"transactionId": tx_id}
    await cp.result(
        "StopTransaction",
        {
            "transactionId": tx_id,
            "meterStop": 3650,
            "timestamp": "2026-11-30T10:21:00Z",
            "reason": "Remote",
        },
    )
    done = await wait_status(server, sid, driver["token"], "completed")
    assert done["stop_reason"] == "hold_reached"
    assert done["cost"]["amount"] == 106  # 2,650 Wh at ¥40/kWh
    assert done["payment"]["captured_amount"] == 100  # never more than authorised
    assert done["payment"]["extra_amount"] == 0
    await cp.close()


async def test_topup_policy_keeps_charging_and_charges_the_rest(server_factory: Any) -> None:
    server: Server = await server_factory(topup_policy="topup")
    cp = await connect(server, "LOT9", tariff=SMALL_HOLD)
    driver = await new_driver(server, "topup@example.com")
    sid, tx_id = await start_via_app(server, cp, driver["token"], "LOT9")
    await cp.result("MeterValues", energy_mv(tx_id, 4000, "2026-11-30T10:20:00Z"))  # ¥120
    await asyncio.sleep(0.3)
    assert [c[2] for c in cp.received_calls] == ["RemoteStartTransaction"]  # no stop
    await cp.result(
        "StopTransaction",
        {"transactionId": tx_id, "meterStop": 5000, "timestamp": "2026-11-30T10:30:00Z"},
    )
    done = await wait_status(server, sid, driver["token"], "completed")
    assert done["cost"]["amount"] == 160
    assert (done["payment"]["captured_amount"], done["payment"]["extra_amount"]) == (100, 60)
    await cp.close()


async def test_same_stop_twice_captures_once(server: Server, emulator: StripeEmulator) -> None:
    cp = await connect(server, "LOT7")
    driver = await new_driver(server, "twice@example.com")
    sid, tx_id = await start_via_app(server, cp, driver["token"], "LOT7")
    stop = {"transactionId": tx_id, "meterStop": 8500, "timestamp": "2026-11-30T11:00:00Z"}
    assert (await cp.call("StopTransaction", stop, message_id="stop-a"))[0] == 3
    assert (await cp.call("StopTransaction", stop, message_id="stop-b"))[0] == 3
    done = await wait_status(server, sid, driver["token"], "completed")
    assert done["payment"]["captured_amount"] == 300
    intent = await stripe_get(
        emulator, f"payment_intents/{done['payment']['payment_intent_id']}?expand[]=latest_charge"
    )
    charge = intent["latest_charge"]
    assert (charge["amount"], charge["amount_refunded"], charge["captured"]) == (3000, 2700, True)
    await cp.close()


async def test_offline_start_places_the_hold_after(server: Server) -> None:
    """A StartTransaction with a driver's tag and no Authorize before it (offline start)."""
    cp = await connect(server, "LOT8")
    ok = await new_driver(server, "offline@example.com")
    await server.api(
        "POST", "/api/v1/drivers/me/id-tags", {"id_tag": "OFF1"}, token=ok["token"], expect=201
    )
    start = await cp.result(
        "StartTransaction",
        {"connectorId": 1, "idTag": "OFF1", "meterStart": 0, "timestamp": "2026-11-30T10:00:00Z"},
    )
    assert start["idTagInfo"]["status"] == "Accepted"
    _, mine = await server.api("GET", "/api/v1/drivers/me/sessions", token=ok["token"], expect=200)
    session = await wait_status(server, mine["items"][0]["id"], ok["token"], "charging")
    assert session["origin"] == "offline" and session["payment"]["authorized_amount"] == 3000

    bad = await new_driver(server, "offbad@example.com", card="pm_card_chargeCustomerFail")
    await server.api(
        "POST", "/api/v1/drivers/me/id-tags", {"id_tag": "OFF2"}, token=bad["token"], expect=201
    )
    start2 = await cp.result(
        "StartTransaction",
        {"connectorId": 2, "idTag": "OFF2", "meterStart": 0, "timestamp": "2026-11-30T10:05:00Z"},
    )
    async with asyncio.timeout(10):
        while not any(c[2] == "RemoteStopTransaction" for c in cp.received_calls):
            await asyncio.sleep(0.05)
    stop = next(c for c in cp.received_calls if c[2] == "RemoteStopTransaction")
    assert stop[3] == {"transactionId": start2["transactionId"]}
    _, bad_sessions = await server.api(
        "GET", "/api/v1/drivers/me/sessions", token=bad["token"], expect=200
    )
    assert bad_sessions["items"][0]["stop_reason"] == "hold_failed"
    assert "no hold" in bad_sessions["items"][0]["failure_reason"]
    await cp.close()


async def test_parking_after_the_grace_period_is_priced_from_status_notifications(
    server: Server,
) -> None:
    """SuspendedEV while plugged in (the car is full) is PARKING_TIME, after the grace period."""
    cp = await connect(
        server,
        "LOT10",
        tariff={
            "currency": "JPY",
            "hold_amount": 3000,
            "parking_grace_period": 600,
            "elements": [
                {
                    "price_components": [
                        {"type": "ENERGY", "price": 40, "step_size": 1},
                        {"type": "PARKING_TIME", "price": 600, "step_size": 60},
                    ]
                }
            ],
        },
    )
    driver = await new_driver(server, "park@example.com")
    sid, tx_id = await start_via_app(
        server, cp, driver["token"], "LOT10", created_at="2026-11-30T09:59:00Z"
    )

    async def status(value: str, ts: str) -> None:
        await cp.result(
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": value, "timestamp": ts},
        )

    await status("Charging", "2026-11-30T10:00:00Z")
    await cp.result("MeterValues", energy_mv(tx_id, 6000, "2026-11-30T10:50:00Z"))
    await status("SuspendedEV", "2026-11-30T11:00:00Z")  # full; parks for 30 minutes
    await cp.result(
        "StopTransaction",
        {"transactionId": tx_id, "meterStop": 6000, "timestamp": "2026-11-30T11:30:00Z"},
    )
    done = await wait_status(server, sid, driver["token"], "completed")
    lines = {line["type"]: line["amount"] for line in done["cost"]["lines"]}
    # 5,000 Wh x ¥40/kWh = ¥200; 30 min parked - 10 min grace = 20 min x ¥600/h = ¥200
    assert lines == {"ENERGY": 200, "PARKING_TIME": 200}
    assert done["cost"]["parking_seconds"] == 1800
    assert done["payment"]["captured_amount"] == 400
    await cp.close()


async def test_a_charger_clock_running_late_does_not_inflate_the_bill(server: Server) -> None:
    """The charger says the transaction started 5 h before the driver even asked: TIME is
    billed from the session's creation, never from the charger's claim."""
    cp = await connect(
        server,
        "LOT11",
        tariff={
            "currency": "JPY",
            "hold_amount": 3000,
            "elements": [{"price_components": [{"type": "TIME", "price": 300, "step_size": 60}]}],
        },
    )
    driver = await new_driver(server, "clock@example.com")
    _, session = await server.api(
        "POST",
        "/api/v1/sessions",
        {"charge_point_id": "LOT11", "connector_id": 1},
        token=driver["token"],
        expect=201,
    )
    tag = cp.received_calls[-1][3]["idTag"]
    now = datetime.now(UTC)
    start = await cp.result(
        "StartTransaction",
        {
            "connectorId": 1,
            "idTag": tag,
            "meterStart": 0,
            "timestamp": (now - timedelta(hours=5)).isoformat(),
        },
    )
    await cp.result(
        "StopTransaction",
        {"transactionId": start["transactionId"], "meterStop": 1000, "timestamp": now.isoformat()},
    )
    done = await wait_status(server, session["id"], driver["token"], "completed")
    assert done["cost"]["charging_seconds"] < 60
    assert done["cost"]["amount"] <= 5  # at most one 60 s step of ¥300/h
    await cp.close()
