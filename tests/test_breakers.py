"""Breaker outlets end to end (issue 6): a real server, real database, localstripe, and the
built-in simulated breaker driven through the operator API. The MQTT (mosquitto) and Modbus
(pymodbus server) paths are in tests/test_breakers_devices.py."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from billing.emulator import StripeEmulator
from breaker.simulated import SimulatedBreaker
from tests.charger import RawCharger, basic_auth
from tests.conftest import CP_PASSWORD, Server
from tests.test_lifeline import collected, new_driver, stripe_get, wait_status

FAST = {
    "breaker_poll_interval": 0.1,
    "breaker_confirm_timeout": 1.0,
    "breaker_attempts": 2,
}


async def fast_server(server_factory: Any, **extra: Any) -> Server:
    srv: Server = await server_factory(**{**FAST, **extra})
    return srv


async def put_breaker(server: Server, bid: str, driver: dict[str, Any], **extra: Any) -> Any:
    body = {"driver": driver, "rated_current_a": 16, "phases": 1, **extra}
    _, data = await server.api("PUT", f"/api/v1/breakers/{bid}", body, expect=200)
    return data


async def put_tariff(server: Server, tariff_id: str, kind: str, price: str,
                     hold: int) -> None:
    """One price component (ENERGY per kWh / TIME per hour, 1 unit steps) in JPY."""
    await server.api("PUT", f"/api/v1/tariffs/{tariff_id}", {
        "currency": "JPY", "hold_amount": hold,
        "elements": [{"price_components": [{"type": kind, "price": price, "step_size": 1}]}],
    }, expect=201)


def sim(server: Server, bid: str) -> SimulatedBreaker:
    """The simulated device behind breaker ``bid`` (the test plays the hardware)."""
    assert server.app.breakers is not None
    driver = server.app.breakers._live[bid].driver
    assert isinstance(driver, SimulatedBreaker)
    return driver


async def wait_breaker(server: Server, bid: str, cond: Any, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            _, data = await server.api("GET", f"/api/v1/breakers/{bid}", expect=200)
            if cond(data):
                return data
            await asyncio.sleep(0.05)


async def start_session(server: Server, token: str, bid: str, expect: int = 201) -> Any:
    _, session = await server.api(
        "POST", "/api/v1/sessions", {"charge_point_id": bid, "connector_id": 1},
        token=token, expect=expect,
    )
    return session


async def test_session_on_a_breaker_outlet_holds_closes_meters_opens_captures(
    server_factory: Any, emulator: StripeEmulator
) -> None:
    """hold ¥3,000 -> close (confirmed) -> energy rises -> stop -> open -> capture of exactly
    the energy read at the open, at ¥40/kWh."""
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-1", {"type": "simulator", "power_w": 3_600_000})
    await wait_breaker(server, "BRK-1", lambda b: b["state"] == "open")
    driver = await new_driver(server, "ann@example.com")
    token = driver["token"]
    session = await start_session(server, token, "BRK-1")
    assert session["status"] == "charging", session
    assert session["payment"]["authorized_amount"] == 3000
    closed = await wait_breaker(server, "BRK-1", lambda b: b["state"] == "closed")
    assert closed["active_session_id"] == session["id"]
    running = await wait_breaker(server, "BRK-1", lambda b: (b["energy_wh"] or 0) >= 2000)
    assert running["power_w"] == 3_600_000
    sim(server, "BRK-1").set_load(0)  # the car stops drawing: the register is now fixed
    await asyncio.sleep(0.3)
    register = (await server.app.breakers._live["BRK-1"].driver.read()).energy_wh  # type: ignore[union-attr]
    assert register is not None and register >= 2000

    await server.api("POST", f"/api/v1/sessions/{session['id']}/stop", token=token, expect=202)
    done = await wait_status(server, session["id"], token, "completed")
    opened = await wait_breaker(server, "BRK-1", lambda b: b["state"] == "open")
    assert opened["active_session_id"] is None
    assert done["energy_wh"] == register  # meterStart was 0 on a fresh simulator
    expected = (register * 40 + 500) // 1000
    assert done["cost"]["amount"] == expected
    assert done["payment"]["captured_amount"] == expected
    assert await collected(emulator, done["payment"]["payment_intent_id"]) == expected
    assert done["stop_reason"] == "driver"

    _, audit = await server.api("GET", "/api/v1/breakers/BRK-1/audit", expect=200)
    actions = [(a["action"], a["outcome"]) for a in reversed(audit["items"])]
    assert actions == [("close", "confirmed"), ("open", "confirmed")]
    assert audit["items"][-1]["actor"] == f"session:{session['id']}"
    _, cp = await server.api("GET", "/api/v1/charge-points/BRK-1", expect=200)
    assert cp["kind"] == "breaker" and cp["connectors"][0]["connector_id"] == 1


async def test_trip_mid_session_ends_it_and_bills_what_was_delivered(
    server_factory: Any, emulator: StripeEmulator
) -> None:
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-T", {"type": "simulator", "power_w": 3_600_000})
    await wait_breaker(server, "BRK-T", lambda b: b["state"] == "open")
    token = (await new_driver(server, "trip@example.com"))["token"]
    session = await start_session(server, token, "BRK-T")
    await wait_breaker(server, "BRK-T", lambda b: (b["energy_wh"] or 0) >= 1500)
    device = sim(server, "BRK-T")
    device.trip("overcurrent")
    register = (await device.read()).energy_wh
    assert register is not None
    done = await wait_status(server, session["id"], token, "completed")
    assert done["stop_reason"] == "tripped"
    assert done["energy_wh"] == register
    expected = (register * 40 + 500) // 1000
    assert done["payment"]["captured_amount"] == expected
    assert await collected(emulator, done["payment"]["payment_intent_id"]) == expected
    tripped = await wait_breaker(server, "BRK-T", lambda b: b["state"] == "tripped")
    assert tripped["active_session_id"] is None
    # a tripped breaker takes no new session until it is reset on site
    status, body = await server.api(
        "POST", "/api/v1/sessions", {"charge_point_id": "BRK-T", "connector_id": 1},
        token=token,
    )
    assert status == 409 and "tripped" in body["error"]["message"]


async def test_operator_close_open_audited_forced_and_refused_for_drivers(
    server_factory: Any,
) -> None:
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-O", {"type": "simulator", "power_w": 1000})
    await wait_breaker(server, "BRK-O", lambda b: b["state"] == "open")
    token = (await new_driver(server, "dan@example.com", card=None))["token"]
    for action in ("close", "open"):
        status, body = await server.api(
            "POST", f"/api/v1/breakers/BRK-O/{action}", {"reason": "x"}, token=token
        )
        assert status == 403, body
    status, _ = await server.api("GET", "/api/v1/breakers", token=token)
    assert status == 403

    status, body = await server.api("POST", "/api/v1/breakers/BRK-O/close",
                                    {"reason": "test the socket"})
    assert status == 409 and body["error"]["field"] == "force"
    status, body = await server.api("POST", "/api/v1/breakers/BRK-O/close", {})
    assert status == 400 and body["error"]["field"] == "reason"

    _, audit = await server.api(
        "POST", "/api/v1/breakers/BRK-O/close",
        {"reason": "electrician testing the socket", "force": True}, expect=200,
    )
    assert audit["outcome"] == "confirmed" and audit["forced"] is True
    assert audit["actor"] == "operator:admin" and audit["state_after"] == "closed"
    # a forced close is left alone by the poll (it is not a session-less accident)
    await asyncio.sleep(0.5)
    _, data = await server.api("GET", "/api/v1/breakers/BRK-O", expect=200)
    assert data["state"] == "closed" and data["forced_closed"] is True

    _, audit = await server.api(
        "POST", "/api/v1/breakers/BRK-O/open", {"reason": "done"}, expect=200
    )
    assert audit["outcome"] == "confirmed" and audit["state_after"] == "open"
    _, items = await server.api("GET", "/api/v1/breakers/BRK-O/audit", expect=200)
    assert [(a["action"], a["reason"]) for a in items["items"]] == [
        ("open", "done"), ("close", "electrician testing the socket")]
    assert all(a["created_at"] and a["finished_at"] for a in items["items"])


async def test_breaker_closed_without_a_session_is_opened(server_factory: Any) -> None:
    """Someone closed it on site (or a crash left it closed): no paid session, no forced
    close -> the CSMS opens it and says so in the audit."""
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-S", {"type": "simulator", "power_w": 1000})
    await wait_breaker(server, "BRK-S", lambda b: b["state"] == "open")
    device = sim(server, "BRK-S")
    await device.close()
    async with asyncio.timeout(10):
        while True:
            _, audit = await server.api("GET", "/api/v1/breakers/BRK-S/audit", expect=200)
            if audit["items"] and audit["items"][0]["outcome"] == "confirmed":
                break
            await asyncio.sleep(0.05)
    assert (await device.read()).state.value == "open"
    assert audit["items"][0]["actor"] == "system"
    assert audit["items"][0]["action"] == "open"


async def test_car_full_ends_the_session(server_factory: Any, emulator: StripeEmulator) -> None:
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-F", {"type": "simulator", "power_w": 3_600_000},
                      car_full_power_w=50, car_full_minutes=0.01)
    await wait_breaker(server, "BRK-F", lambda b: b["state"] == "open")
    token = (await new_driver(server, "full@example.com"))["token"]
    session = await start_session(server, token, "BRK-F")
    await wait_breaker(server, "BRK-F", lambda b: (b["energy_wh"] or 0) >= 1000)
    sim(server, "BRK-F").set_load(20)  # below 50 W: the battery is full
    done = await wait_status(server, session["id"], token, "completed")
    assert done["stop_reason"] == "car_full"
    assert done["energy_wh"] >= 1000
    await wait_breaker(server, "BRK-F", lambda b: b["state"] == "open")


async def test_offline_breaker_ends_on_the_last_good_reading(
    server_factory: Any, emulator: StripeEmulator
) -> None:
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-X", {"type": "simulator", "power_w": 3_600_000},
                      offline_grace_s=0.5)
    await wait_breaker(server, "BRK-X", lambda b: b["state"] == "open")
    token = (await new_driver(server, "off@example.com"))["token"]
    session = await start_session(server, token, "BRK-X")
    await wait_breaker(server, "BRK-X", lambda b: (b["energy_wh"] or 0) >= 2000)
    device = sim(server, "BRK-X")
    device.set_load(0)
    last_good = await wait_breaker(server, "BRK-X", lambda b: b["power_w"] == 0)
    device.set_offline(True)
    done = await wait_status(server, session["id"], token, "completed")
    assert done["stop_reason"] == "offline"
    assert done["energy_wh"] == last_good["energy_wh"]
    assert done["payment"]["captured_amount"] == (last_good["energy_wh"] * 40 + 500) // 1000


async def test_hold_reached_opens_the_breaker(server_factory: Any) -> None:
    server = await fast_server(server_factory)
    await put_tariff(server, "small", "ENERGY", "40", 100)
    await put_breaker(server, "BRK-H", {"type": "simulator", "power_w": 3_600_000},
                      tariff_id="small")
    await wait_breaker(server, "BRK-H", lambda b: b["state"] == "open")
    token = (await new_driver(server, "hold@example.com"))["token"]
    session = await start_session(server, token, "BRK-H")
    assert session["payment"]["authorized_amount"] == 100
    done = await wait_status(server, session["id"], token, "completed", timeout=20)
    assert done["stop_reason"] == "hold_reached"
    assert done["payment"]["captured_amount"] == 100  # never more than authorised
    await wait_breaker(server, "BRK-H", lambda b: b["state"] == "open")


async def test_time_tariff_on_an_outlet(server_factory: Any) -> None:
    """Plain outlets are mostly sold by time: ¥360,000/h in 1 s steps is ¥100 per started
    second; the bill is whole seconds x ¥100, from the close to the open."""
    server = await fast_server(server_factory)
    await put_tariff(server, "hourly", "TIME", "360000", 3000)
    await put_breaker(server, "BRK-TIME", {"type": "simulator", "power_w": 2000},
                      tariff_id="hourly")
    await wait_breaker(server, "BRK-TIME", lambda b: b["state"] == "open")
    token = (await new_driver(server, "time@example.com"))["token"]
    session = await start_session(server, token, "BRK-TIME")
    await asyncio.sleep(1.5)
    await server.api("POST", f"/api/v1/sessions/{session['id']}/stop", token=token, expect=202)
    done = await wait_status(server, session["id"], token, "completed")
    line = done["cost"]["lines"][0]
    assert line["type"] == "TIME"
    billed_seconds = Decimal(line["quantity"]) * 3600
    assert billed_seconds == billed_seconds.to_integral_value() and 2 <= billed_seconds <= 10
    assert done["cost"]["amount"] == int(billed_seconds) * 100
    assert done["payment"]["captured_amount"] == done["cost"]["amount"]


async def test_close_not_confirmed_fails_the_session_and_releases_the_hold(
    server_factory: Any, emulator: StripeEmulator
) -> None:
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-N", {"type": "simulator", "power_w": 1000})
    await wait_breaker(server, "BRK-N", lambda b: b["state"] == "open")
    sim(server, "BRK-N").set_stuck(True)  # commands are accepted but the contacts never move
    token = (await new_driver(server, "stuck@example.com"))["token"]
    session = await start_session(server, token, "BRK-N")
    assert session["status"] == "failed"
    assert "did not confirm closed" in session["failure_reason"]
    intent = await stripe_get(
        emulator, f"payment_intents/{session['payment']['payment_intent_id']}")
    assert intent["status"] == "canceled"
    _, audit = await server.api("GET", "/api/v1/breakers/BRK-N/audit", expect=200)
    close = [a for a in audit["items"] if a["action"] == "close"][0]
    assert close["outcome"] == "unconfirmed" and close["attempts"] == 2
    async with server.http.get(f"{server.api_url}/metrics") as resp:
        text = await resp.text()
    assert 'csms_breaker_driver_errors_total{breaker="BRK-N",kind="unconfirmed"} 1.0' in text


async def test_restart_mid_session_keeps_metering_and_bills_once(
    server_factory: Any, emulator: StripeEmulator
) -> None:
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-R", {"type": "simulator", "power_w": 0})
    await wait_breaker(server, "BRK-R", lambda b: b["state"] == "open")
    token = (await new_driver(server, "restart@example.com"))["token"]
    session = await start_session(server, token, "BRK-R")
    # the simulator lives in the process: after the restart a new one starts open, so the
    # session ends as "opened" on the reading it finds - and is billed exactly once
    await server.restart()
    done = await wait_status(server, session["id"], token, "completed")
    assert done["stop_reason"] == "opened"
    assert done["energy_wh"] == 0 and done["payment"]["status"] == "canceled"


async def test_breaker_ids_cannot_connect_over_ocpp_and_metrics_show_breakers(
    server_factory: Any,
) -> None:
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-M", {"type": "simulator", "power_w": 1000})
    await wait_breaker(server, "BRK-M", lambda b: b["state"] == "open")
    with pytest.raises(InvalidStatus) as info:
        await RawCharger.open(
            f"{server.ocpp_url}/BRK-M", headers=basic_auth("BRK-M", CP_PASSWORD)
        )
    assert info.value.response.status_code == 404
    async with server.http.get(f"{server.api_url}/metrics") as resp:
        text = await resp.text()
    assert 'csms_breaker_state{breaker="BRK-M",state="open"} 1.0' in text
    assert 'csms_breaker_power_watts{breaker="BRK-M"}' in text


async def test_bad_breaker_configuration_names_the_field(server_factory: Any) -> None:
    server = await fast_server(server_factory)
    status, body = await server.api(
        "PUT", "/api/v1/breakers/B", {"driver": {"type": "modbus", "host": "x", "port": "no"}}
    )
    assert status == 400 and body["error"]["field"].startswith("driver.")
    status, body = await server.api(
        "PUT", "/api/v1/breakers/B", {"driver": {"type": "simulator"}, "phases": 2}
    )
    assert status == 400 and body["error"]["field"] == "phases"
    await server.register("CP-OCPP")
    status, body = await server.api(
        "PUT", "/api/v1/breakers/CP-OCPP", {"driver": {"type": "simulator"}}
    )
    assert status == 409


async def test_ocpp_relay_breaker_switched_by_change_availability(
    server_factory: Any, emulator: StripeEmulator
) -> None:
    """A relay that connects over OCPP 1.6 as its own charge point: closed by
    ChangeAvailability Operative, opened by Inoperative, metered from its MeterValues."""
    server = await fast_server(server_factory)
    await server.register("RELAY-1")
    relay = await RawCharger.open(
        f"{server.ocpp_url}/RELAY-1", headers=basic_auth("RELAY-1", CP_PASSWORD)
    )
    register = {"wh": 10_000}
    background: set[asyncio.Task[Any]] = set()

    async def report(status: str) -> None:
        await relay.result("StatusNotification",
                           {"connectorId": 1, "errorCode": "NoError", "status": status})

    def change_availability(p: dict[str, Any]) -> dict[str, Any]:
        status = "Available" if p["type"] == "Operative" else "Unavailable"
        task = asyncio.create_task(report(status))
        background.add(task)
        task.add_done_callback(background.discard)
        return {"status": "Accepted"}

    relay.answers["ChangeAvailability"] = change_availability
    await relay.result("BootNotification", {"chargePointVendor": "Relay", "chargePointModel": "R1"})
    await report("Unavailable")

    async def meter() -> None:  # the relay's periodic MeterValues, outside any transaction
        await relay.result("MeterValues", {"connectorId": 1, "meterValue": [{
            "timestamp": "2026-11-30T10:00:00Z",
            "sampledValue": [{"value": str(register["wh"]), "unit": "Wh",
                              "measurand": "Energy.Active.Import.Register"}]}]})

    await meter()
    await put_breaker(server, "BRK-RELAY", {"type": "ocpp", "charge_point_id": "RELAY-1"})
    await wait_breaker(server, "BRK-RELAY", lambda b: b["state"] == "open")
    await meter()  # configured after the relay connected: the next MeterValues is seen
    await wait_breaker(server, "BRK-RELAY", lambda b: b["energy_wh"] == 10_000)
    token = (await new_driver(server, "relay@example.com"))["token"]
    session = await start_session(server, token, "BRK-RELAY")
    assert session["status"] == "charging", session
    calls = [c for c in relay.received_calls if c[2] == "ChangeAvailability"]
    assert calls[-1][3] == {"connectorId": 1, "type": "Operative"}
    register["wh"] += 2500
    await meter()
    await wait_breaker(server, "BRK-RELAY", lambda b: b["energy_wh"] == 12_500)
    await server.api("POST", f"/api/v1/sessions/{session['id']}/stop", token=token, expect=202)
    done = await wait_status(server, session["id"], token, "completed")
    assert done["energy_wh"] == 2500 and done["payment"]["captured_amount"] == 100
    calls = [c for c in relay.received_calls if c[2] == "ChangeAvailability"]
    assert calls[-1][3] == {"connectorId": 1, "type": "Inoperative"}
    await relay.close()


async def test_second_session_on_a_breaker_is_metered_from_its_own_start(
    server_factory: Any, emulator: StripeEmulator
) -> None:
    """The first session starts at register 0 Wh; the second must not be read as counting
    from 0 (a learned 'session-relative' register would bill it the whole lifetime register
    and stop it at once at the hold)."""
    server = await fast_server(server_factory)
    await put_tariff(server, "t200", "ENERGY", "40", 200)
    await put_breaker(server, "BRK-2", {"type": "simulator", "power_w": 3_600_000},
                      tariff_id="t200")
    await wait_breaker(server, "BRK-2", lambda b: b["state"] == "open")
    token = (await new_driver(server, "twice@example.com"))["token"]
    first = await start_session(server, token, "BRK-2")
    await wait_breaker(server, "BRK-2", lambda b: (b["energy_wh"] or 0) >= 4000)
    await server.api("POST", f"/api/v1/sessions/{first['id']}/stop", token=token, expect=202)
    done = await wait_status(server, first["id"], token, "completed")
    assert done["stop_reason"] in ("driver", "hold_reached")
    device = sim(server, "BRK-2")
    device.set_load(100_000)  # slow: 100 kW, ~28 Wh/s
    second = await start_session(server, token, "BRK-2")
    await asyncio.sleep(1.0)
    _, running = await server.api("GET", f"/api/v1/sessions/{second['id']}", token=token,
                                  expect=200)
    assert running["status"] == "charging", running
    assert running["energy_wh"] is not None and running["energy_wh"] < 200
    await server.api("POST", f"/api/v1/sessions/{second['id']}/stop", token=token, expect=202)
    done2 = await wait_status(server, second["id"], token, "completed")
    assert done2["stop_reason"] == "driver" and done2["energy_wh"] < 500


async def test_a_device_that_reboots_mid_session_is_billed_its_last_good_reading(
    server_factory: Any, emulator: StripeEmulator
) -> None:
    server = await fast_server(server_factory)
    await put_breaker(server, "BRK-B", {"type": "simulator", "power_w": 3_600_000})
    await wait_breaker(server, "BRK-B", lambda b: b["state"] == "open")
    token = (await new_driver(server, "reboot@example.com"))["token"]
    session = await start_session(server, token, "BRK-B")
    device = sim(server, "BRK-B")
    await wait_breaker(server, "BRK-B", lambda b: (b["energy_wh"] or 0) >= 2000)
    device.set_load(0)
    last_good = await wait_breaker(server, "BRK-B", lambda b: b["power_w"] == 0)
    device.reboot()  # register back to 0, relay open
    done = await wait_status(server, session["id"], token, "completed")
    assert done["stop_reason"] == "opened"
    assert done["energy_wh"] == last_good["energy_wh"]
    expected = (last_good["energy_wh"] * 40 + 500) // 1000
    assert done["payment"]["captured_amount"] == expected
    assert await collected(emulator, done["payment"]["payment_intent_id"]) == expected


async def test_breaker_api_refuses_bad_ids_types_and_changes_during_a_session(
    server_factory: Any,
) -> None:
    server = await fast_server(server_factory)
    for bad in ("%00nul", "%0Anl", "x" * 49):
        status, body = await server.api("PUT", f"/api/v1/breakers/{bad}",
                                        {"driver": {"type": "simulator"}})
        assert status == 400 and body["error"]["field"] == "id", (bad, body)
    status, body = await server.api(
        "PUT", "/api/v1/breakers/B1", {"driver": {"type": "simulator"}, "outlets": True})
    assert status == 400 and body["error"]["field"] == "outlets"
    await put_breaker(server, "B1", {"type": "simulator", "power_w": 1000})
    status, body = await server.api("POST", "/api/v1/breakers/B1/close",
                                    {"reason": "x", "force": "yes"})
    assert status == 400 and body["error"]["field"] == "force"
    status, body = await server.api("POST", "/api/v1/breakers/B1/open", {"reason": "a\u0000b"})
    assert status == 400 and body["error"]["field"] == "reason"
    status, body = await server.api("PUT", "/api/v1/charge-points/B1",
                                    {"password": "a-secret-of-16-chars+", "security_profile": 1})
    assert status == 409, body
    # an operator's open of a running session keeps the operator's reason in the audit
    await wait_breaker(server, "B1", lambda b: b["state"] == "open")
    token = (await new_driver(server, "b1@example.com"))["token"]
    await start_session(server, token, "B1")
    status, body = await server.api("PUT", "/api/v1/breakers/B1",
                                    {"driver": {"type": "simulator", "power_w": 5}})
    assert status == 409, body
    _, audit = await server.api("POST", "/api/v1/breakers/B1/open",
                                {"reason": "socket damaged"}, expect=200)
    assert audit["reason"] == "socket damaged" and audit["actor"] == "operator:admin"
