"""The operator operations against chargers that answer badly, and their API validation, over
real websockets: a CALLRESULT that does not match the OCPP schema is a 502 naming the field and
nothing is stored from it (csms.operations, ``CommandService.call(strict=True)``); the generic
command route still shows whatever the charger sent. Reservations, jobs and security events
refuse bad input with a 400 (or a 409) naming what is wrong."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from csms.models import Command
from tests.conftest import Server
from tests.test_ocpp201 import BOOT, Station201
from tests.test_tc16_operations import CP, at, connect, profile16, reservation, root_certificate


async def commands(server: Server, action: str) -> list[Command]:
    rows = await server.app.db.read(lambda s: s.execute(
        select(Command).where(Command.action == action).order_by(Command.id)))
    return list(rows.scalars())


async def bad_answer(server: Server, method: str, path: str, body: Any, field: str) -> None:
    """The operation answers 502 invalid_answer naming ``field``."""
    status, err = await server.api(method, path, body)
    assert status == 502, err
    assert (err["error"]["code"], err["error"]["field"]) == ("invalid_answer", field), err
    assert "does not match the OCPP schema" in err["error"]["message"]


async def test_malformed_answers_are_502s_naming_the_field_and_nothing_is_stored(
    server: Server,
) -> None:
    """The tester's five answers (1.6): each is a 502 naming the field instead of a 500 or a
    stored "{'x': 1}" / "5" / "None"; the raw answer is kept in the command row."""
    cp = await connect(server)
    cp.answers["GetLocalListVersion"] = lambda _p: {"listVersion": "x"}
    await bad_answer(server, "POST", f"{CP}/local-list/version", None, "listVersion")
    _, stored = await server.api("GET", f"{CP}/local-list", expect=200)
    assert stored["reported_version"] is None

    cp.answers["GetInstalledCertificateIds"] = lambda _p: {
        "status": "Accepted", "certificateHashData": "zz"}
    await bad_answer(server, "POST", f"{CP}/certificates/query",
                     {"certificate_types": ["CentralSystemRootCertificate"]},
                     "certificateHashData")

    cp.answers["ReserveNow"] = lambda _p: {"status": {"x": 1}}
    await bad_answer(server, "POST", f"{CP}/reservations",
                     {"connector_id": 1, "id_tag": "T1", "expiry_date": at(3600)}, "status")
    _, rows = await server.api("GET", f"{CP}/reservations", expect=200)
    assert [r["status"] for r in rows["items"]] == ["Failed"]  # as after a timeout

    cp.answers["SetChargingProfile"] = lambda _p: {"status": 5}
    await bad_answer(server, "POST", f"{CP}/charging-profiles",
                     {"connector_id": 1, "profile": profile16(1, "TxDefaultProfile")}, "status")
    _, profiles = await server.api("GET", f"{CP}/charging-profiles?all=true", expect=200)
    assert profiles["items"] == []

    cp.answers["InstallCertificate"] = lambda _p: {"status": None}
    await bad_answer(server, "POST", f"{CP}/certificates", {
        "certificate_type": "CentralSystemRootCertificate", "certificate": root_certificate()},
        "status")
    cp.answers["InstallCertificate"] = lambda _p: {}  # a missing status names it too
    await bad_answer(server, "POST", f"{CP}/certificates", {
        "certificate_type": "CentralSystemRootCertificate", "certificate": root_certificate()},
        "status")
    _, certs = await server.api("GET", f"{CP}/certificates", expect=200)
    assert certs["items"] == []

    cp.answers["UpdateFirmware"] = lambda _p: {"status": "Accepted"}  # .conf has no fields
    status, err = await server.api("POST", f"{CP}/firmware", {
        "location": "https://fw.example.com/v2.bin", "retrieve_date": at(0)})
    assert (status, err["error"]["code"]) == (502, "invalid_answer")
    _, jobs = await server.api("GET", f"{CP}/jobs", expect=200)
    job = jobs["items"][0]
    assert (job["status"], job["response"], job["finished"]) == ("Failed", None, True)
    assert "does not match the OCPP schema" in job["history"][-1]["error"]

    row = (await commands(server, "ReserveNow"))[0]
    assert (row.status, row.response) == ("invalid_answer", {"status": {"x": 1}})
    await cp.close()


async def test_the_generic_command_route_stays_tolerant(server: Server) -> None:
    """``POST .../commands/{Action}`` shows the operator whatever the charger answered."""
    cp = await connect(server)
    cp.answers["GetLocalListVersion"] = lambda _p: {"listVersion": "x"}
    _, body = await server.api("POST", f"{CP}/commands/GetLocalListVersion", {}, expect=200)
    assert body == {"listVersion": "x"}
    assert (await commands(server, "GetLocalListVersion"))[0].status == "answered"
    await cp.close()


async def test_a_201_certificate_chain_with_bad_hash_data_is_a_502(server: Server) -> None:
    st = await Station201.connect(server, "S1")
    await st.result("BootNotification", BOOT)
    st.answers["GetInstalledCertificateIds"] = lambda _p: {
        "status": "Accepted", "certificateHashDataChain": [
            {"certificateType": "V2GRootCertificate", "certificateHashData": "zz"}]}
    await bad_answer(server, "POST", "/api/v1/charge-points/S1/certificates/query", {},
                     "certificateHashDataChain[0].certificateHashData")
    _, certs = await server.api("GET", "/api/v1/charge-points/S1/certificates", expect=200)
    assert certs["items"] == []
    await st.close()


async def test_reservation_input_is_checked(server: Server) -> None:
    """expiry_date in the past, connector beyond the charger's (or above 99), strings for
    numbers: 400 naming the field, nothing sent."""
    cp = await connect(server)
    for n in (1, 2):
        await cp.result("StatusNotification", {"connectorId": n, "errorCode": "NoError",
                                               "status": "Available"})
    cp.answers["ReserveNow"] = lambda _p: {"status": "Accepted"}
    for body, field in (
        ({"connector_id": 1, "id_tag": "T1", "expiry_date": at(-60)}, "expiry_date"),
        ({"connector_id": 3, "id_tag": "T1", "expiry_date": at(60)}, "connector_id"),
        ({"connector_id": 100, "id_tag": "T1", "expiry_date": at(60)}, "connector_id"),
        ({"connector_id": -1, "id_tag": "T1", "expiry_date": at(60)}, "connector_id"),
        ({"connector_id": "1", "id_tag": "T1", "expiry_date": at(60)}, "connector_id"),
        ({"connector_id": 1, "id_tag": "T1", "expiry_date": 1900000000}, "expiry_date"),
    ):
        status, err = await server.api("POST", f"{CP}/reservations", body)
        assert (status, err["error"]["field"]) == (400, field), body
    assert [c for c in cp.received_calls if c[2] == "ReserveNow"] == []
    _, row = await server.api("POST", f"{CP}/reservations", {
        "connector_id": 2, "id_tag": "T1", "expiry_date": at(60)}, expect=201)
    assert row["status"] == "Accepted"
    await cp.close()


async def test_only_an_open_reservation_can_be_cancelled(server: Server) -> None:
    """Cancelling a cancelled, used or expired reservation is a 409 (nothing sent); one whose
    ReserveNow got no valid answer may still be cancelled (the charger may hold it)."""
    cp = await connect(server)
    cp.answers["ReserveNow"] = lambda _p: {"status": "Accepted"}
    cp.answers["CancelReservation"] = lambda _p: {"status": "Accepted"}

    async def reserve(expiry: float = 3600) -> int:
        _, row = await server.api("POST", f"{CP}/reservations", {
            "connector_id": 1, "id_tag": "T1", "expiry_date": at(expiry)}, expect=201)
        return int(row["id"])

    async def cancel(rid: int) -> tuple[int, Any]:
        return await server.api("POST", f"{CP}/reservations/{rid}/cancel")

    cancelled = await reserve()
    assert (await cancel(cancelled))[0] == 200
    used = await reserve()
    await cp.result("StartTransaction", {"connectorId": 1, "idTag": "T1", "meterStart": 0,
                                         "timestamp": at(0), "reservationId": used})
    expired = await reserve(expiry=0.3)
    await asyncio.sleep(0.4)
    sent_before = len([c for c in cp.received_calls if c[2] == "CancelReservation"])
    for rid, state in ((cancelled, "Cancelled"), (used, "Used"), (expired, "Expired")):
        status, err = await cancel(rid)
        assert (status, err["error"]["code"], err["error"]["field"]) == (
            409, "conflict", "status"), (rid, err)
        assert state in err["error"]["message"]
        assert (await reservation(server, rid))["status"] == state
    assert len([c for c in cp.received_calls if c[2] == "CancelReservation"]) == sent_before
    cp.answers["ReserveNow"] = lambda _p: {"status": 7}
    status, _ = await server.api("POST", f"{CP}/reservations", {
        "connector_id": 1, "id_tag": "T2", "expiry_date": at(3600)})
    assert status == 502
    _, rows = await server.api("GET", f"{CP}/reservations", expect=200)
    failed = rows["items"][0]
    assert failed["status"] == "Failed"
    status, body = await cancel(failed["id"])
    assert (status, body["reservation"]["status"]) == (200, "Cancelled")
    await cp.close()


async def test_jobs_get_finished_at_and_queries_are_checked(server: Server) -> None:
    """A job gets ``finished_at`` when a terminal status arrives (null before); an unknown
    ``kind`` or a bad ``limit`` is a 400 naming the query parameter; bodies are strict."""
    cp = await connect(server)
    cp.answers["UpdateFirmware"] = lambda _p: {}
    _, job = await server.api("POST", f"{CP}/firmware", {
        "location": "https://fw.example.com/v2.bin", "retrieve_date": at(0)}, expect=201)
    assert (job["finished"], job["finished_at"]) == (False, None)
    await cp.result("FirmwareStatusNotification", {"status": "Downloading"})
    _, jobs = await server.api("GET", f"{CP}/jobs?kind=firmware", expect=200)
    assert (jobs["items"][0]["finished"], jobs["items"][0]["finished_at"]) == (False, None)
    await cp.result("FirmwareStatusNotification", {"status": "Installed"})
    _, jobs = await server.api("GET", f"{CP}/jobs?kind=firmware", expect=200)
    done = jobs["items"][0]
    assert done["finished"] is True and done["finished_at"] is not None
    assert done["finished_at"] == done["history"][-1]["at"]

    for path, field in ((f"{CP}/jobs?kind=zzz", "kind"),
                        (f"{CP}/jobs?kinds=firmware", "kinds"),
                        (f"{CP}/security-events?limit=abc", "limit"),
                        (f"{CP}/security-events?limit=0", "limit")):
        status, err = await server.api("GET", path)
        assert (status, err["error"]["field"]) == (400, field), path
    for n in range(3):
        await cp.result("SecurityEventNotification", {"type": f"Event{n}", "timestamp": at(0)})
    _, events = await server.api("GET", f"{CP}/security-events?limit=2", expect=200)
    assert [e["type"] for e in events["items"]] == ["Event2", "Event1"]

    for path, body, field in (
        (f"{CP}/firmware", {"location": "x", "retrieve_date": at(0), "retries": "2"},
         "retries"),
        (f"{CP}/charging-profiles", {"connector_id": "1", "profile": {}}, "connector_id"),
        (f"{CP}/monitors", {"monitors": [{"component": "EVSE", "variable": "Power",
                                          "type": "Delta", "value": "1", "severity": 1}]},
         "monitors.0.value"),
    ):
        status, err = await server.api("POST", path, body)
        assert (status, err["error"]["field"]) == (400, field), body
    await cp.close()
