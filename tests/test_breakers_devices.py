"""Issue 6 acceptance with real device protocols: a driver session on an outlet behind a
Shelly-style relay on a real mosquitto broker, a Tasmota plug on the same broker, and a Modbus
TCP breaker served by pymodbus's own server: hold -> close -> meter rises -> stop -> open ->
capture of the right amount; a trip on the MQTT relay mid-session ends it, billed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing.emulator import StripeEmulator
from breaker.devices import SimulatedModbusDevice, SimulatedShellyDevice, SimulatedTasmotaDevice
from tests.mqtt_broker import Broker
from tests.test_breakers import FAST, put_breaker, start_session, wait_breaker
from tests.test_lifeline import collected, new_driver, wait_status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def shelly(mosquitto: Broker, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    prefix = f"shellyplus1pm-{request.node.name[-12:].strip('[]')}-{free_port()}"
    device = SimulatedShellyDevice(
        mosquitto.host, mosquitto.port, prefix, power_w=3_600_000, status_interval_s=0.2
    )
    await device.start()
    try:
        yield device
    finally:
        await device.stop()


async def run_session(
    server: Any, emulator: StripeEmulator, bid: str, driver_cfg: dict[str, Any],
    set_load: Any, register: Any,
) -> dict[str, Any]:
    """Register the breaker, charge >= 2 kWh, freeze the load, stop; return the session."""
    await put_breaker(server, bid, driver_cfg)
    await wait_breaker(server, bid, lambda b: b["state"] == "open")
    token = (await new_driver(server, f"{bid.lower()}@example.com"))["token"]
    session = await start_session(server, token, bid)
    assert session["status"] == "charging", session
    await wait_breaker(server, bid, lambda b: b["state"] == "closed")
    await wait_breaker(server, bid, lambda b: (b["energy_wh"] or 0) >= 2000, timeout=20)
    await set_load(0)
    frozen = int(register())
    await wait_breaker(server, bid, lambda b: b["energy_wh"] == frozen, timeout=10)
    await server.api("POST", f"/api/v1/sessions/{session['id']}/stop", token=token, expect=202)
    done = await wait_status(server, session["id"], token, "completed", timeout=20)
    await wait_breaker(server, bid, lambda b: b["state"] == "open")
    assert done["energy_wh"] == frozen  # the register started at 0
    expected = (frozen * 40 + 500) // 1000
    assert done["cost"]["amount"] == expected
    assert done["payment"]["captured_amount"] == expected
    assert await collected(emulator, done["payment"]["payment_intent_id"]) == expected
    _, audit = await server.api("GET", f"/api/v1/breakers/{bid}/audit", expect=200)
    assert [(a["action"], a["outcome"]) for a in reversed(audit["items"])] == [
        ("close", "confirmed"), ("open", "confirmed")]
    return done  # type: ignore[no-any-return]


async def test_shelly_gen2_relay_on_mosquitto(
    server_factory: Any, emulator: StripeEmulator, mosquitto: Broker, shelly: Any
) -> None:
    server = await server_factory(**FAST)
    cfg = {"type": "mqtt", "preset": "shelly_gen2", "host": mosquitto.host, "port": mosquitto.port,
           "prefix": shelly.prefix, "poll_interval_s": 1}
    await run_session(server, emulator, "SHELLY-1", cfg, shelly.set_load,
                      lambda: shelly.energy_wh)
    assert shelly.output is False


async def test_tasmota_plug_on_mosquitto(
    server_factory: Any, emulator: StripeEmulator, mosquitto: Broker
) -> None:
    topic = f"tasmota_{free_port()}"
    device = SimulatedTasmotaDevice(mosquitto.host, mosquitto.port, topic, power_w=3_600_000,
                                    tele_period_s=0.2)
    await device.start()
    try:
        server = await server_factory(**FAST)
        cfg = {"type": "mqtt", "preset": "tasmota", "host": mosquitto.host, "port": mosquitto.port,
               "topic": topic, "poll_interval_s": 1}
        await run_session(server, emulator, "TASMOTA-1", cfg, device.set_load,
                          lambda: device.energy_wh)
        assert device.output is False
    finally:
        await device.stop()


async def test_modbus_breaker_on_pymodbus_server(
    server_factory: Any, emulator: StripeEmulator
) -> None:
    port = free_port()
    device = SimulatedModbusDevice("127.0.0.1", port, power_w=3_600_000)
    await device.start()

    async def set_load(w: float) -> None:
        device.set_load(w)

    try:
        server = await server_factory(**FAST)
        cfg = {"type": "modbus", "host": "127.0.0.1", "port": port, "timeout_s": 1}
        await run_session(server, emulator, "MODBUS-1", cfg, set_load,
                          lambda: device.energy_wh)
        assert device.output is False
    finally:
        await device.stop()


async def test_shelly_trip_mid_session_ends_it_and_bills_delivered_energy(
    server_factory: Any, emulator: StripeEmulator, mosquitto: Broker, shelly: Any
) -> None:
    server = await server_factory(**FAST)
    cfg = {"type": "mqtt", "preset": "shelly_gen2", "host": mosquitto.host, "port": mosquitto.port,
           "prefix": shelly.prefix, "poll_interval_s": 1}
    await put_breaker(server, "SHELLY-T", cfg)
    await wait_breaker(server, "SHELLY-T", lambda b: b["state"] == "open")
    token = (await new_driver(server, "trip-mqtt@example.com"))["token"]
    session = await start_session(server, token, "SHELLY-T")
    assert session["status"] == "charging", session
    await wait_breaker(server, "SHELLY-T", lambda b: (b["energy_wh"] or 0) >= 2000, timeout=20)
    await shelly.trip("overpower")
    delivered = int(shelly.energy_wh)
    done = await wait_status(server, session["id"], token, "completed", timeout=20)
    assert done["stop_reason"] == "tripped"
    assert done["energy_wh"] == delivered
    expected = (delivered * 40 + 500) // 1000
    assert done["payment"]["captured_amount"] == expected
    assert await collected(emulator, done["payment"]["payment_intent_id"]) == expected
    data = await wait_breaker(server, "SHELLY-T", lambda b: b["state"] == "tripped")
    assert "overpower" in (data["detail"] or "")


async def test_restart_mid_session_resumes_metering_and_bills_the_whole_session(
    server_factory: Any, emulator: StripeEmulator, mosquitto: Broker, shelly: Any
) -> None:
    """The server stops while the relay stays closed and the car keeps drawing: after the
    restart the session is resumed from the database and the energy drawn meanwhile is billed
    too, once."""
    server = await server_factory(**FAST)
    cfg = {"type": "mqtt", "preset": "shelly_gen2", "host": mosquitto.host,
           "port": mosquitto.port, "prefix": shelly.prefix, "poll_interval_s": 1}
    await put_breaker(server, "SHELLY-R", cfg)
    await wait_breaker(server, "SHELLY-R", lambda b: b["state"] == "open")
    token = (await new_driver(server, "restart-mqtt@example.com"))["token"]
    session = await start_session(server, token, "SHELLY-R")
    await wait_breaker(server, "SHELLY-R", lambda b: (b["energy_wh"] or 0) >= 1000, timeout=20)
    await server.restart()
    await wait_breaker(server, "SHELLY-R", lambda b: (b["energy_wh"] or 0) >= 3000, timeout=20)
    data = await wait_breaker(server, "SHELLY-R", lambda b: b["state"] == "closed")
    assert data["active_session_id"] == session["id"]
    await shelly.set_load(0)
    frozen = int(shelly.energy_wh)
    await wait_breaker(server, "SHELLY-R", lambda b: b["energy_wh"] == frozen, timeout=10)
    await server.api("POST", f"/api/v1/sessions/{session['id']}/stop", token=token, expect=202)
    done = await wait_status(server, session["id"], token, "completed", timeout=20)
    assert done["energy_wh"] == frozen
    expected = (frozen * 40 + 500) // 1000
    assert done["payment"]["captured_amount"] == expected
    assert await collected(emulator, done["payment"]["payment_intent_id"]) == expected
    assert shelly.output is False


async def test_tasmota_final_reading_is_fresh_not_the_cached_telemetry(
    server_factory: Any, emulator: StripeEmulator, mosquitto: Broker
) -> None:
    """A Tasmota plug reports its meter only every TelePeriod (here 300 s): the stop must
    still bill the register as it stands after the open (the driver asks for Status 8 with
    the command), not the last telemetry."""
    topic = f"tasmota_{free_port()}"
    device = SimulatedTasmotaDevice(mosquitto.host, mosquitto.port, topic, power_w=3_600_000,
                                    tele_period_s=300)
    await device.start()
    try:
        server = await server_factory(**FAST)
        cfg = {"type": "mqtt", "preset": "tasmota", "host": mosquitto.host,
               "port": mosquitto.port, "topic": topic, "poll_interval_s": 300}
        await put_breaker(server, "TAS-F", cfg)
        await wait_breaker(server, "TAS-F", lambda b: b["state"] == "open")
        token = (await new_driver(server, "tas-fresh@example.com"))["token"]
        session = await start_session(server, token, "TAS-F")
        assert session["status"] == "charging", session
        await asyncio.sleep(2.5)  # ~2.5 kWh drawn, no telemetry meanwhile
        await server.api("POST", f"/api/v1/sessions/{session['id']}/stop", token=token,
                         expect=202)
        done = await wait_status(server, session["id"], token, "completed", timeout=20)
        assert device.output is False
        assert done["energy_wh"] == int(device.energy_wh) >= 2000
    finally:
        await device.stop()
