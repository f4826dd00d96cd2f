"""OCPP 2.0.1 over real sockets: provisioning (B01-B03, B07), authorisation (C01), device model,
events, CSMS-initiated commands through the operator API, password rotation (A01) and security
profiles. Every frame the CSMS sends is checked against the 2.0.1 JSON schemas shipped with the
``ocpp`` package (jsonschema, independent of the server's own compiled validators)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from sqlalchemy import delete, select
from sqlmodel import col
from websockets.exceptions import InvalidStatus

from billing.tariff import parse_tariff
from csms.models import ChargePoint, Command, Connector, DeviceVariable, OcppEvent
from csms.ocpp.pricing import (
    california_prices,
    california_running_cost,
    cost_text,
    major,
    tariff_text,
)
from tests.certs import Pki
from tests.charger import Answer, RawCharger, basic_auth
from tests.conftest import CP_PASSWORD, Server
from tests.interop import NodeCharger

SCHEMAS = Path(ocpp.__file__).parent / "v201" / "schemas"
BOOT = {"reason": "PowerUp", "chargingStation": {"vendorName": "V", "model": "M"}}
NOW = "2026-11-30T10:00:00Z"


@cache
def _validator(name: str) -> Any:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


def schema_errors(name: str, payload: Any) -> list[str]:
    """Violations of the 2.0.1 schema ``name`` (e.g. ``AuthorizeResponse``)."""
    return [f"{name}: {e.json_path}: {e.message}" for e in _validator(name).iter_errors(payload)]


class _CheckedAnswers(dict[str, Answer]):
    """Answers to the CSMS's calls; every incoming call is checked against its request schema
    first (unknown actions are answered ``{}`` and fail their response check)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__()
        self.errors = errors

    def get(self, action: str, default: Any = None) -> Answer:  # type: ignore[override]
        inner = super().get(action)

        def answer(payload: dict[str, Any]) -> Any:
            self.errors.extend(schema_errors(f"{action}Request", payload))
            return inner(payload) if inner is not None else {}

        return answer


class Station201(RawCharger):
    """A raw OCPP 2.0.1 station whose every received frame is schema-checked: the CSMS's
    CALLRESULTs against ``{action}Response``, its CALLs against ``{action}Request``.
    ``errors`` must stay empty (:meth:`close` asserts it)."""

    errors: list[str]

    @classmethod
    async def connect(
        cls, server: Server, cp_id: str, register: bool = True, password: str = CP_PASSWORD
    ) -> Station201:
        """Register (optionally) and open a 2.0.1 connection with Basic auth."""
        if register:
            await server.register(cp_id)
        station = await cls.open(
            f"{server.ocpp_url}/{cp_id}",
            subprotocols=["ocpp2.0.1"],
            headers=basic_auth(cp_id, password),
        )
        assert station.ws.subprotocol == "ocpp2.0.1"
        return station

    @classmethod
    async def open(cls, *args: Any, **kwargs: Any) -> Station201:
        station: Station201 = await super().open(*args, **kwargs)  # type: ignore[assignment]
        station.errors = []
        answers = _CheckedAnswers(station.errors)
        answers["RequestStartTransaction"] = lambda _p: {"status": "Accepted"}
        answers["RequestStopTransaction"] = lambda _p: {"status": "Accepted"}
        answers["CostUpdated"] = lambda _p: {}
        station.answers = answers
        return station

    async def call(
        self, action: str, payload: dict[str, Any], message_id: str | None = None
    ) -> list[Any]:
        """Send a CALL (itself checked, to keep the tests honest); check the reply."""
        self.errors.extend(schema_errors(f"{action}Request", payload))
        reply = await super().call(action, payload, message_id)
        if reply[0] == 3:
            self.errors.extend(schema_errors(f"{action}Response", reply[2]))
        return reply

    def calls(self, action: str) -> list[dict[str, Any]]:
        """Payloads of the CSMS's calls of ``action``, in order."""
        return [c[3] for c in self.received_calls if c[2] == action]

    async def wait_call(self, action: str, count: int = 1, timeout: float = 10) -> dict[str, Any]:
        """The ``count``-th call of ``action`` from the CSMS, once it came."""
        async with asyncio.timeout(timeout):
            while len(self.calls(action)) < count:
                await asyncio.sleep(0.02)
        return self.calls(action)[count - 1]

    async def close(self) -> None:
        """Close, then fail on any schema violation seen."""
        await super().close()
        assert self.errors == [], self.errors


async def events(server: Server, cp_id: str, kind: str) -> list[OcppEvent]:
    """The operator events of ``kind`` of a charge point, oldest first."""
    rows = await server.app.db.read(
        lambda s: s.execute(
            select(OcppEvent)
            .where(col(OcppEvent.charge_point_id) == cp_id, col(OcppEvent.kind) == kind)
            .order_by(col(OcppEvent.id))
        )
    )
    return list(rows.scalars())


async def device_model(server: Server, cp_id: str) -> dict[str, str | None]:
    """``component/variable[instance]`` -> Actual value of a station's stored device model."""
    rows = await server.app.db.read(
        lambda s: s.execute(
            select(DeviceVariable).where(
                col(DeviceVariable.charge_point_id) == cp_id,
                col(DeviceVariable.attribute_type) == "Actual",
            )
        )
    )
    return {
        f"{v.component}/{v.variable}"
        + (f"[{v.variable_instance}]" if v.variable_instance else ""): v.value
        for v in rows.scalars()
    }


# -- provisioning -----------------------------------------------------------------------------


async def test_boot_accepted_rejected_and_heartbeat(server: Server) -> None:
    """B01 Accepted with our interval; B03 Rejected (with a retry interval) for a station the
    CSMS no longer knows; G02 Heartbeat; G01 StatusNotification per EVSE and connector."""
    cp = await Station201.connect(server, "B01")
    boot = await cp.result("BootNotification", BOOT)
    assert (boot["status"], boot["interval"]) == ("Accepted", 300)
    assert boot["currentTime"].endswith("Z")
    assert (await cp.result("Heartbeat", {}))["currentTime"].endswith("Z")
    await cp.result(
        "StatusNotification",
        {"timestamp": NOW, "connectorStatus": "Occupied", "evseId": 2, "connectorId": 1},
    )
    _, body = await server.api("GET", "/api/v1/charge-points/B01", expect=200)
    assert body["ocpp_version"] == "ocpp2.0.1" and body["vendor"] == "V"
    assert [(c["connector_id"], c["status"]) for c in body["connectors"]] == [(2, "Occupied")]

    async def forget(s: Any) -> None:
        await s.execute(delete(Connector).where(col(Connector.charge_point_id) == "B01"))
        await s.execute(delete(ChargePoint).where(col(ChargePoint.id) == "B01"))

    await server.app.db.write(forget)
    rejected = await cp.result("BootNotification", BOOT)
    assert (rejected["status"], rejected["interval"]) == ("Rejected", 300)
    await cp.close()


async def test_boot_pending_until_the_device_model_is_reported(server_factory: Any) -> None:
    """B02 with B07: a station we know nothing about is Pending while it reports its device
    model; the next boot is Accepted. A station that refuses the report is accepted anyway."""
    server: Server = await server_factory(ocpp201_provision_on_boot=True)
    charger = await NodeCharger.start(
        server.ocpp_url, "B02", CP_PASSWORD, "ocpp2.0.1", "connect-only"
    )
    await server.register("B02")
    await charger.wait_for("scenario-complete")
    boots = [e["response"] for e in charger.of("call-result") if e["action"] == "BootNotification"]
    assert [b["status"] for b in boots] == ["Pending", "Accepted"]
    assert boots[0]["interval"] == 10 and boots[1]["interval"] == 300
    report = await charger.wait_for("incoming-call", action="GetBaseReport")
    assert report["params"]["reportBase"] == "FullInventory"
    notified = [e for e in charger.of("call-result") if e["action"] == "NotifyReport"]
    assert [n["request"]["tbc"] for n in notified] == [True, False]
    stored = await device_model(server, "B02")
    assert stored["OCPPCommCtrlr/HeartbeatInterval"] == "300"
    costmsg = "CustomizationCtrlr/CustomImplementationEnabled[org.openchargealliance.costmsg]"
    assert stored[costmsg] == "true"
    assert stored["SecurityCtrlr/BasicAuthPassword"] is None  # write-only: no value reported
    done = await charger.finish()
    assert done["strictFailures"] == 0 and done["badMessages"] == 0

    cp = await Station201.connect(server, "B02X")
    cp.answers["GetBaseReport"] = lambda _p: {"status": "NotSupported"}
    assert (await cp.result("BootNotification", BOOT))["status"] == "Pending"
    await cp.wait_call("GetBaseReport")
    await asyncio.sleep(0.1)
    assert (await cp.result("BootNotification", BOOT))["status"] == "Accepted"
    await cp.close()


# -- authorisation ----------------------------------------------------------------------------


async def test_authorize_id_token_types(server: Server) -> None:
    """C01: every idToken type maps onto the same tags as 1.6 idTags: hex UIDs lose their
    separators, others are compared as sent (case-insensitive); NoAuthorization is nobody."""
    await server.api("PUT", "/api/v1/id-tags/04A1B2C3D4E5F6", {"status": "Accepted"}, expect=200)
    await server.api(
        "PUT",
        "/api/v1/id-tags/NLTNMC00122045K",
        {"status": "Accepted", "expiry_date": "2030-01-01T00:00:00Z", "parent_id_tag": "FLEET1"},
        expect=200,
    )
    await server.api("PUT", "/api/v1/id-tags/BLOCKED1", {"status": "Blocked"}, expect=200)
    await server.api(
        "PUT",
        "/api/v1/id-tags/OLD1",
        {"status": "Accepted", "expiry_date": "2020-01-01T00:00:00Z"},
        expect=200,
    )
    cp = await Station201.connect(server, "C01")

    async def status(token: str, kind: str) -> dict[str, Any]:
        reply = await cp.result("Authorize", {"idToken": {"idToken": token, "type": kind}})
        return reply["idTokenInfo"]  # type: ignore[no-any-return]

    assert (await status("04:a1:b2:c3:d4:e5:f6", "ISO14443"))["status"] == "Accepted"
    assert (await status("04a1b2c3d4e5f6", "ISO15693"))["status"] == "Accepted"
    emaid = await status("nltnmc00122045k", "eMAID")
    assert emaid["status"] == "Accepted"
    assert emaid["cacheExpiryDateTime"] == "2030-01-01T00:00:00.000Z"
    assert emaid["groupIdToken"] == {"idToken": "FLEET1", "type": "Central"}
    assert (await status("BLOCKED1", "KeyCode"))["status"] == "Blocked"
    assert (await status("OLD1", "Local"))["status"] == "Expired"
    assert (await status("UNKNOWN", "ISO14443"))["status"] == "Invalid"
    assert (await status("", "NoAuthorization"))["status"] == "Invalid"
    assert (await status("APPDEADBEEF01", "Central"))["status"] == "Invalid"
    assert "personalMessage" not in emaid  # operator tags are not billed
    await cp.close()


# -- events and device model ------------------------------------------------------------------


async def test_events_are_kept(server: Server) -> None:
    """N07 NotifyEvent, A04 SecurityEventNotification, N01 LogStatusNotification, L01
    FirmwareStatusNotification, P01 DataTransfer, B07 NotifyReport, J01 MeterValues."""
    cp = await Station201.connect(server, "N01")
    await cp.result(
        "NotifyEvent",
        {
            "generatedAt": NOW,
            "seqNo": 0,
            "eventData": [
                {
                    "eventId": 1,
                    "timestamp": NOW,
                    "trigger": "Alerting",
                    "actualValue": "true",
                    "eventNotificationType": "HardWiredNotification",
                    "component": {"name": "EVSE", "evse": {"id": 1}},
                    "variable": {"name": "Problem"},
                }
            ],
        },
    )
    await cp.result("SecurityEventNotification", {"type": "FirmwareUpdated", "timestamp": NOW})
    await cp.result("LogStatusNotification", {"status": "Uploaded", "requestId": 7})
    await cp.result("FirmwareStatusNotification", {"status": "Installed", "requestId": 3})
    assert await cp.result(
        "DataTransfer", {"vendorId": "com.example", "messageId": "x", "data": {"a": 1}}
    ) == {"status": "UnknownVendorId"}
    await cp.result(
        "NotifyReport",
        {
            "requestId": 5,
            "generatedAt": NOW,
            "seqNo": 0,
            "tbc": False,
            "reportData": [
                {
                    "component": {"name": "TariffCostCtrlr"},
                    "variable": {"name": "Enabled", "instance": "Cost"},
                    "variableAttribute": [
                        {"type": "Actual", "value": "false"},
                        {"type": "Target", "value": "true"},
                    ],
                    "variableCharacteristics": {"dataType": "boolean", "supportsMonitoring": False},
                }
            ],
        },
    )
    await cp.result(
        "MeterValues",
        {
            "evseId": 1,
            "meterValue": [
                {
                    "timestamp": NOW,
                    "sampledValue": [
                        {"value": 230.5, "measurand": "Voltage", "unitOfMeasure": {"unit": "V"}}
                    ],
                }
            ],
        },
    )
    for kind in (
        "notify_event",
        "security_event",
        "diagnostics_status",
        "firmware_status",
        "data_transfer",
        "notify_report",
    ):
        assert len(await events(server, "N01", kind)) == 1, kind
    assert (await events(server, "N01", "notify_report"))[0].detail["requestId"] == 5
    cp_row = await server.app.db.read(lambda s: s.get(ChargePoint, "N01"))
    assert cp_row is not None and cp_row.firmware_status == "Installed"
    assert cp_row.diagnostics_status == "Uploaded"  # N01 is the 2.0.1 diagnostics upload
    assert (await device_model(server, "N01"))["TariffCostCtrlr/Enabled[Cost]"] == "false"
    assert await server.app.v201.device_model.pricing("N01") == (False, False)
    async with server.http.get(f"{server.api_url}/metrics") as resp:
        text = await resp.text()
    assert "csms_ocpp201_security_events_total 1.0" in text
    await cp.close()


# -- CSMS-initiated, through the operator API --------------------------------------------------


async def test_ocpp_rpc_strict_201_core_and_commands(server: Server) -> None:
    """ocpp-rpc in strict mode: Boot, Heartbeat, Status, Authorize, TransactionEvent Started /
    Updated / Ended (free: operator tag, totalCost 0.00); then every CSMS-initiated command of
    the issue through ``POST /api/v1/charge-points/{id}/commands/{action}``."""
    await server.register("RPC201")
    await server.api("PUT", "/api/v1/id-tags/TAG1", {"status": "Accepted"}, expect=200)
    charger = await NodeCharger.start(
        server.ocpp_url, "RPC201", CP_PASSWORD, "ocpp2.0.1", "core201"
    )
    await charger.wait_for("scenario-complete")
    results = [(e["action"], e["response"]) for e in charger.of("call-result")]
    assert [a for a, _ in results] == [
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "Authorize",
        "StatusNotification",
        "TransactionEvent",
        "TransactionEvent",
        "TransactionEvent",
    ]
    answers = dict(results[:5])
    assert answers["Authorize"]["idTokenInfo"]["status"] == "Accepted"
    started, updated, ended = (r for a, r in results if a == "TransactionEvent")
    assert started == {"idTokenInfo": {"status": "Accepted"}}
    assert updated == {}
    assert ended["totalCost"] == 0.0 and ended["idTokenInfo"]["status"] == "Accepted"
    _, txs = await server.api("GET", "/api/v1/transactions?charge_point_id=RPC201", expect=200)
    [tx] = txs["items"]
    assert (tx["status"], tx["energy_wh"], tx["id_tag"]) == ("completed", 7500, "TAG1")
    assert tx["transaction_id"].startswith("RPC201-") and tx["stop_reason"] == "Local"

    async def command(action: str, payload: dict[str, Any]) -> dict[str, Any]:
        _, body = await server.api(
            "POST", f"/api/v1/charge-points/RPC201/commands/{action}", payload, expect=200
        )
        return body  # type: ignore[no-any-return]

    got = await command(
        "GetVariables",
        {
            "getVariableData": [
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
                {"component": {"name": "Nope"}, "variable": {"name": "Nothing"}},
            ]
        },
    )
    assert [r["attributeStatus"] for r in got["getVariableResult"]] == [
        "Accepted",
        "UnknownVariable",
    ]
    assert got["getVariableResult"][0]["attributeValue"] == "300"
    set_ = await command(
        "SetVariables",
        {
            "setVariableData": [
                {
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "HeartbeatInterval"},
                    "attributeValue": "120",
                }
            ]
        },
    )
    assert set_["setVariableResult"][0]["attributeStatus"] == "Accepted"
    assert await command("GetBaseReport", {"requestId": 42, "reportBase": "FullInventory"}) == {
        "status": "Accepted"
    }
    assert await command("Reset", {"type": "OnIdle"}) == {"status": "Accepted"}
    assert await command(
        "ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}}
    ) == {"status": "Accepted"}
    assert await command("UnlockConnector", {"evseId": 1, "connectorId": 1}) == {
        "status": "Unlocked"
    }
    assert await command(
        "TriggerMessage",
        {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 1}},
    ) == {"status": "Accepted"}
    assert await command("ClearCache", {}) == {"status": "Accepted"}
    assert await command("GetTransactionStatus", {"transactionId": tx["transaction_id"]}) == {
        "messagesInQueue": False,
        "ongoingIndicator": False,
    }
    assert await command(
        "RequestStartTransaction",
        {"idToken": {"idToken": "TAG1", "type": "ISO14443"}, "remoteStartId": 9, "evseId": 1},
    ) == {"status": "Accepted"}
    assert await command("RequestStopTransaction", {"transactionId": "T-1"}) == {
        "status": "Accepted"
    }
    status, body = await server.api(
        "POST",
        "/api/v1/charge-points/RPC201/commands/GetVariables",
        {"getVariableData": [{"component": {}}]},
    )
    assert status == 400 and body["error"]["field"]
    status, body = await server.api(
        "POST", "/api/v1/charge-points/RPC201/commands/RemoteStartTransaction", {"idTag": "X"}
    )
    assert status == 400  # a 1.6 action on a 2.0.1 connection

    async with asyncio.timeout(10):
        while len([e for e in charger.of("call-result") if e["action"] == "NotifyReport"]) < 2:
            await asyncio.sleep(0.05)
    stored = await device_model(server, "RPC201")
    assert stored["OCPPCommCtrlr/HeartbeatInterval"] == "120"  # the value after SetVariables
    assert stored["TariffCostCtrlr/Enabled[Cost]"] == "true"
    incoming = [e["action"] for e in charger.of("incoming-call")]
    assert incoming == [
        "GetVariables",
        "SetVariables",
        "GetBaseReport",
        "Reset",
        "ChangeAvailability",
        "UnlockConnector",
        "TriggerMessage",
        "ClearCache",
        "GetTransactionStatus",
        "RequestStartTransaction",
        "RequestStopTransaction",
    ]
    done = await charger.finish()
    assert charger.of("strict-failure") == [] and charger.of("bad-message") == []
    assert done["ok"] is True, charger.events


# -- security ---------------------------------------------------------------------------------


async def refused(url: str, **kwargs: Any) -> int:
    """The HTTP status with which the handshake was refused."""
    with pytest.raises(InvalidStatus) as info:
        await RawCharger.open(url, **kwargs)
    return int(info.value.response.status_code)


async def test_password_rotation_201(server: Server) -> None:
    """A01: SetVariables SecurityCtrlr.BasicAuthPassword; the stored hash changes only once the
    station accepted; the password is not recorded; the generic command path refuses it."""
    await server.register("A01")
    charger = await NodeCharger.start(
        server.ocpp_url, "A01", CP_PASSWORD, "ocpp2.0.1", "connect-only"
    )
    await charger.wait_for("scenario-complete")
    new_password = "rotated-password-0123456789"
    status, body = await server.api(
        "POST",
        "/api/v1/charge-points/A01/commands/SetVariables",
        {
            "setVariableData": [
                {
                    "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "BasicAuthPassword"},
                    "attributeValue": new_password,
                }
            ]
        },
    )
    assert status == 400 and "rotation" in body["error"]["message"]
    assert (
        await server.api(
            "POST", "/api/v1/charge-points/A01/password", {"password": new_password}, expect=200
        )
    )[1]["status"] == "Accepted"
    call = await charger.wait_for("incoming-call", action="SetVariables")
    assert call["params"]["setVariableData"][0]["attributeValue"] == new_password
    assert call["response"]["setVariableResult"][0]["attributeStatus"] == "Accepted"
    await charger.finish()
    recorded = await server.app.db.read(
        lambda s: s.execute(
            select(Command).where(
                col(Command.charge_point_id) == "A01", col(Command.action) == "SetVariables"
            )
        )
    )
    assert [c.request for c in recorded.scalars()] == [{"redacted": True}]
    url = f"{server.ocpp_url}/A01"
    assert (
        await refused(url, subprotocols=["ocpp2.0.1"], headers=basic_auth("A01", CP_PASSWORD))
        == 401
    )
    cp = await Station201.open(
        url, subprotocols=["ocpp2.0.1"], headers=basic_auth("A01", new_password)
    )
    assert (await cp.result("BootNotification", BOOT))["status"] == "Accepted"
    cp.answers["SetVariables"] = lambda p: {
        "setVariableResult": [
            {
                "attributeStatus": "Rejected",
                "component": p["setVariableData"][0]["component"],
                "variable": p["setVariableData"][0]["variable"],
            }
        ]
    }
    assert (
        await server.api(
            "POST", "/api/v1/charge-points/A01/password", {"password": "x" * 20}, expect=200
        )
    )[1]["status"] == "Rejected"
    await cp.close()
    cp = await Station201.open(
        url, subprotocols=["ocpp2.0.1"], headers=basic_auth("A01", new_password)
    )  # still the old one
    await cp.close()


async def test_password_rotation_16(server: Server) -> None:
    """1.6 Security Whitepaper: ChangeConfiguration AuthorizationKey, same rule."""
    await server.register("A16")
    url = f"{server.ocpp_url}/A16"
    cp = await RawCharger.open(url, headers=basic_auth("A16", CP_PASSWORD))
    cp.answers["ChangeConfiguration"] = lambda _p: {"status": "Rejected"}
    assert (
        await server.api(
            "POST", "/api/v1/charge-points/A16/password", {"password": "y" * 24}, expect=200
        )
    )[1]["status"] == "Rejected"
    cp.answers["ChangeConfiguration"] = lambda _p: {"status": "Accepted"}
    assert (
        await server.api(
            "POST", "/api/v1/charge-points/A16/password", {"password": "z" * 24}, expect=200
        )
    )[1]["status"] == "Accepted"
    assert cp.received_calls[-1][3] == {"key": "AuthorizationKey", "value": "z" * 24}
    await cp.close()
    assert await refused(url, headers=basic_auth("A16", "y" * 24)) == 401
    cp = await RawCharger.open(url, headers=basic_auth("A16", "z" * 24))
    status, body = await server.api(
        "POST",
        "/api/v1/charge-points/A16/commands/ChangeConfiguration",
        {"key": "authorizationKey", "value": "w" * 24},
    )
    assert status == 400 and body["error"]["field"] == "action"
    await cp.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path)


async def test_security_profiles_2_and_3_speak_201(server_factory: Any, pki: Pki) -> None:
    """Security profiles are the endpoint's, the same for both versions (A00)."""
    srv: Server = await server_factory(
        tls_cert_file=pki.folder / "server.crt",
        tls_key_file=pki.folder / "server.key",
        tls_ca_file=pki.ca_file,
    )
    await srv.register("SP2", profile=2)
    await srv.register("SP3", password=None, profile=3)
    pki.issue("sp3", "SP3")
    base = srv.ocpp_url
    assert (
        await refused(f"{base}/SP2", subprotocols=["ocpp2.0.1"], ssl_context=pki.client_context())
        == 401
    )
    sp2 = await Station201.open(
        f"{base}/SP2",
        subprotocols=["ocpp2.0.1"],
        ssl_context=pki.client_context(),
        headers=basic_auth("SP2", CP_PASSWORD),
    )
    sp3 = await Station201.open(
        f"{base}/SP3", subprotocols=["ocpp2.0.1"], ssl_context=pki.client_context("sp3")
    )
    for station in (sp2, sp3):
        assert station.ws.subprotocol == "ocpp2.0.1"
        assert (await station.result("BootNotification", BOOT))["status"] == "Accepted"
        await station.close()
    assert (
        await refused(f"{base}/SP3", subprotocols=["ocpp2.0.1"], ssl_context=pki.client_context())
        == 401
    )


# -- driver-facing prices (pure) --------------------------------------------------------------


def test_tariff_and_cost_texts() -> None:
    """C01 personalMessage, I03 updatedPersonalMessage, California Pricing data (VAT added
    where the tariff excludes it; the tariff's own alt text wins)."""
    tariff = parse_tariff(
        {
            "currency": "EUR",
            "hold_amount": 5000,
            "parking_grace_period": 900,
            "elements": [
                {
                    "price_components": [
                        {"type": "ENERGY", "price": "0.30", "vat": 20, "step_size": 1}
                    ],
                    "restrictions": {"start_time": "22:00", "end_time": "06:00"},
                },
                {
                    "price_components": [
                        {"type": "ENERGY", "price": "0.40", "vat": 20, "step_size": 1},
                        {"type": "PARKING_TIME", "price": 6, "vat": 20, "step_size": 1},
                        {"type": "FLAT", "price": "0.50", "vat": 20, "step_size": 1},
                    ]
                },
            ],
        }
    )
    assert tariff_text(tariff) == (
        "0.48 EUR/kWh, 7.2 EUR/h parking after 15 min, 0.6 EUR per session "
        "(time-of-day prices apply). Card hold 50 EUR."
    )
    assert california_prices(tariff) == {
        "vendorId": "org.openchargealliance.costmsg",
        "chargingPrice": {"kWhPrice": 0.48, "hourPrice": 0.0, "flatFee": 0.6},
        "idlePrice": {"hourPrice": 7.2, "graceMinutes": 15},
    }
    alt = parse_tariff(
        {
            "currency": "JPY",
            "hold_amount": 100,
            "tariff_alt_text": [{"language": "ja", "text": "40円/kWh"}],
            "elements": [{"price_components": [{"type": "ENERGY", "price": 40, "step_size": 1}]}],
        }
    )
    assert tariff_text(alt) == "40円/kWh"
    assert cost_text(1234, "EUR", 7512) == "Total 12.34 EUR for 7.51 kWh."
    assert major(1234, "EUR") == 12.34 and major(300, "JPY") == 300
    assert (
        schema_errors(
            "CostUpdatedRequest",
            {
                "totalCost": major(1234, "EUR"),
                "transactionId": "T",
                "customData": california_running_cost(
                    tariff, datetime(2026, 11, 30, tzinfo=UTC), 907_500, charging=True
                ),
            },
        )
        == []
    )


async def test_device_model_is_readable_on_the_api(server: Server) -> None:
    """B07/B08: what NotifyReport says is stored and shown to operators."""
    cp = await Station201.connect(server, "DM1")
    await cp.result("NotifyReport", {"requestId": 7, "generatedAt": "2026-11-30T10:00:00Z",
                                     "seqNo": 0, "reportData": [{
                                         "component": {"name": "TariffCostCtrlr"},
                                         "variable": {"name": "Enabled", "instance": "Cost"},
                                         "variableAttribute": [{"value": "true"}]}]})
    _, body = await server.api("GET", "/api/v1/charge-points/DM1/device-model", expect=200)
    assert [(v["component"], v["variable"], v["variable_instance"], v["value"])
            for v in body["items"]] == [("TariffCostCtrlr", "Enabled", "Cost", "true")]
    status, _ = await server.api("GET", "/api/v1/charge-points/NOPE/device-model")
    assert status == 404
    await cp.close()


async def test_malformed_201_fields_get_an_answer_not_internal_error(server: Server) -> None:
    """Found by a fresh user: evseId 2^70 / "abc" and a non-object chargingStation."""
    await server.register("BAD201")
    cp = await RawCharger.open(f"{server.ocpp_url}/BAD201", subprotocols=["ocpp2.0.1"],
                               headers=basic_auth("BAD201", CP_PASSWORD))
    for evse in (2**70, "abc", None, [1]):
        reply = await cp.call("StatusNotification", {
            "timestamp": "2026-11-30T10:00:00Z", "connectorStatus": "Available",
            "evseId": evse, "connectorId": 1})
        assert reply[0] == 3 or reply[2] != "InternalError", reply
    reply = await cp.call("BootNotification", {"reason": "PowerUp", "chargingStation": "x"})
    assert reply[0] == 3 or reply[2] != "InternalError", reply
    await cp.close()
