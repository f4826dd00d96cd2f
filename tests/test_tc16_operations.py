"""OCPP 1.6 compliance test cases for a Central System (OCTT 1.6 test case document, the
``TC_xxx_CSMS`` cases) for the operator-side operations with stored results: reservations,
local list, firmware / diagnostics, smart charging, the security extension. Each test drives a
real 1.6 websocket charger and the operator API; docs/ocpp.md lists the coverage."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from csms.models import ChargePoint, Driver, DriverTag
from tests.charger import RawCharger, basic_auth
from tests.conftest import CP_PASSWORD, Server

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
CP = "/api/v1/charge-points/CP1"


async def connect(server: Server, cp_id: str = "CP1") -> RawCharger:
    """A registered, booted 1.6 charger."""
    await server.register(cp_id)
    cp = await RawCharger.open(f"{server.ocpp_url}/{cp_id}", headers=basic_auth(cp_id, CP_PASSWORD))
    await cp.result("BootNotification", BOOT)
    return cp


def at(seconds: float) -> str:
    """UTC ISO 8601 ``seconds`` from now."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return when.isoformat().replace("+00:00", "Z")


def sent(cp: RawCharger, action: str) -> list[dict[str, Any]]:
    """Payloads of the CSMS's calls of ``action``."""
    return [c[3] for c in cp.received_calls if c[2] == action]


async def start(cp: RawCharger, connector: int, tag: str, reservation: int | None = None
                ) -> int:
    payload: dict[str, Any] = {"connectorId": connector, "idTag": tag, "meterStart": 0,
                               "timestamp": at(0)}
    if reservation is not None:
        payload["reservationId"] = reservation
    return int((await cp.result("StartTransaction", payload))["transactionId"])


async def reservation(server: Server, rid: int) -> dict[str, Any]:
    _, body = await server.api("GET", f"{CP}/reservations", expect=200)
    return next(r for r in body["items"] if r["id"] == rid)


async def reserve(server: Server, cp: RawCharger, connector: int, tag: str,
                  answer: str = "Accepted", expiry: float = 3600, **extra: Any
                  ) -> dict[str, Any]:
    cp.answers["ReserveNow"] = lambda _p: {"status": answer}
    _, row = await server.api("POST", f"{CP}/reservations", {
        "connector_id": connector, "id_tag": tag, "expiry_date": at(expiry), **extra},
        expect=201)
    return row  # type: ignore[no-any-return]


# -- reservations -------------------------------------------------------------------------


async def test_tc_046_reservation_of_a_connector_transaction(server: Server) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/RES1", {}, expect=200)
    row = await reserve(server, cp, 1, "res1")
    request = sent(cp, "ReserveNow")[0]
    assert request["connectorId"] == 1 and request["idTag"] == "RES1"
    assert request["reservationId"] == row["id"] and row["status"] == "Accepted"
    await cp.result("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                           "status": "Reserved"})
    tx = await start(cp, 1, "RES1", reservation=row["id"])
    used = await reservation(server, row["id"])
    assert used["status"] == "Used" and used["transaction_pk"] == tx
    await cp.close()


async def test_tc_047_reservation_of_a_connector_expire(server: Server) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/RES1", {}, expect=200)
    row = await reserve(server, cp, 1, "RES1", expiry=0.4)
    assert (await reservation(server, row["id"]))["status"] == "Accepted"
    await asyncio.sleep(0.5)
    await cp.result("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                           "status": "Available"})
    await start(cp, 1, "RES1")  # too late: the reservation is not used by it
    assert (await reservation(server, row["id"]))["status"] == "Expired"
    await cp.close()


async def test_tc_048_reservation_of_a_connector_faulted_occupied_unavailable_rejected(
    server: Server,
) -> None:
    """TC_048_1 Faulted, TC_048_2 Occupied, TC_048_3 Unavailable (after ChangeAvailability
    Inoperative), TC_048_4 Rejected: the refusal is stored and never becomes Used."""
    cp = await connect(server)
    cp.answers["ChangeAvailability"] = lambda _p: {"status": "Accepted"}
    await server.api("POST", f"{CP}/commands/ChangeAvailability",
                     {"connectorId": 1, "type": "Inoperative"}, expect=200)
    for answer in ("Faulted", "Occupied", "Unavailable", "Rejected"):
        row = await reserve(server, cp, 1, "T1", answer=answer)
        assert row["status"] == answer
    await start(cp, 1, "T1")
    _, body = await server.api("GET", f"{CP}/reservations", expect=200)
    assert sorted(r["status"] for r in body["items"]) == [
        "Faulted", "Occupied", "Rejected", "Unavailable"]
    await cp.close()


async def test_tc_049_reservation_of_a_charge_point_transaction(server: Server) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/RES1", {}, expect=200)
    row = await reserve(server, cp, 0, "RES1")
    assert sent(cp, "ReserveNow")[0]["connectorId"] == 0
    await start(cp, 2, "OTHER")  # another tag does not use it
    assert (await reservation(server, row["id"]))["status"] == "Accepted"
    tx = await start(cp, 2, "RES1")  # no reservationId sent: matched by tag, any connector
    used = await reservation(server, row["id"])
    assert (used["status"], used["transaction_pk"]) == ("Used", tx)
    await cp.close()


async def test_tc_051_cancel_reservation(server: Server) -> None:
    cp = await connect(server)
    row = await reserve(server, cp, 1, "T1")
    cp.answers["CancelReservation"] = lambda _p: {"status": "Accepted"}
    _, body = await server.api("POST", f"{CP}/reservations/{row['id']}/cancel", expect=200)
    assert body["status"] == "Accepted" and body["reservation"]["status"] == "Cancelled"
    assert sent(cp, "CancelReservation") == [{"reservationId": row["id"]}]
    await start(cp, 1, "T1", reservation=row["id"])
    assert (await reservation(server, row["id"]))["status"] == "Cancelled"
    await cp.close()


async def test_tc_052_cancel_reservation_rejected(server: Server) -> None:
    cp = await connect(server)
    row = await reserve(server, cp, 1, "T1")
    cp.answers["CancelReservation"] = lambda _p: {"status": "Rejected"}
    _, body = await server.api("POST", f"{CP}/reservations/{row['id']}/cancel", expect=200)
    assert body["status"] == "Rejected" and body["reservation"]["status"] == "Accepted"
    status, _ = await server.api("POST", f"{CP}/reservations/999999/cancel")
    assert status == 404
    await cp.close()


async def test_tc_053_use_a_reserved_connector_with_parent_id_tag(server: Server) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/CARD-A", {"parent_id_tag": "FLEET"}, expect=200)
    await server.api("PUT", "/api/v1/id-tags/CARD-B", {"parent_id_tag": "FLEET"}, expect=200)
    row = await reserve(server, cp, 1, "CARD-A")
    assert sent(cp, "ReserveNow")[0]["parentIdTag"] == "FLEET"  # the tag's group, sent
    tx = await start(cp, 1, "CARD-B")  # another card of the same parent
    used = await reservation(server, row["id"])
    assert (used["status"], used["transaction_pk"]) == ("Used", tx)
    await cp.close()


# -- local authorisation list -------------------------------------------------------------


async def add_driver_tag(server: Server, tag: str) -> None:
    async def unit(s: Any) -> None:
        s.add(Driver(id="drv_" + "0" * 24, email="d@example.com"))
        await s.flush()
        s.add(DriverTag(id_tag=tag, driver_id="drv_" + "0" * 24))

    await server.app.db.write(unit)


async def test_tc_042_2_get_local_list_version_empty(server: Server) -> None:
    cp = await connect(server)
    cp.answers["GetLocalListVersion"] = lambda _p: {"listVersion": 0}
    _, body = await server.api("POST", f"{CP}/local-list/version", expect=200)
    assert body == {"reported_version": 0}
    _, stored = await server.api("GET", f"{CP}/local-list", expect=200)
    assert stored["reported_version"] == 0 and stored["entries"] == []
    await cp.close()


async def test_tc_043_4_send_local_authorization_list_full(server: Server) -> None:
    cp = await connect(server)
    await add_driver_tag(server, "DRIVERCARD")
    await server.api("PUT", "/api/v1/id-tags/STAFF1", {"parent_id_tag": "OPS"}, expect=200)
    await server.api("PUT", "/api/v1/id-tags/GONE1", {"status": "Blocked"}, expect=200)
    cp.answers["SendLocalList"] = lambda _p: {"status": "Accepted"}
    _, body = await server.api("POST", f"{CP}/local-list", {"update_type": "Full"}, expect=200)
    request = sent(cp, "SendLocalList")[0]
    assert request["updateType"] == "Full" and request["listVersion"] == 1
    assert request["localAuthorizationList"] == [
        {"idTag": "DRIVERCARD", "idTagInfo": {"status": "Accepted"}},
        {"idTag": "GONE1", "idTagInfo": {"status": "Blocked"}},
        {"idTag": "STAFF1", "idTagInfo": {"status": "Accepted", "parentIdTag": "OPS"}},
    ]
    assert body["status"] == "Accepted" and body["version"] == 1
    assert [(e["id_tag"], e["source"]) for e in body["entries"]] == [
        ("DRIVERCARD", "driver"), ("GONE1", "operator"), ("STAFF1", "operator")]
    await cp.close()


async def test_tc_043_5_send_local_authorization_list_differential(server: Server) -> None:
    cp = await connect(server)
    await server.api("PUT", "/api/v1/id-tags/STAFF1", {}, expect=200)
    cp.answers["SendLocalList"] = lambda _p: {"status": "Accepted"}
    await server.api("POST", f"{CP}/local-list", {"update_type": "Full"}, expect=200)
    cp.answers["GetLocalListVersion"] = lambda _p: {"listVersion": 1}
    await server.api("POST", f"{CP}/local-list/version", expect=200)
    await server.api("PUT", "/api/v1/id-tags/NEW1", {}, expect=200)
    _, body = await server.api("POST", f"{CP}/local-list", {
        "update_type": "Differential", "tags": ["new1", "STAFF1-LOST"]}, expect=200)
    request = sent(cp, "SendLocalList")[1]
    assert request["updateType"] == "Differential" and request["listVersion"] == 2
    assert request["localAuthorizationList"] == [
        {"idTag": "NEW1", "idTagInfo": {"status": "Accepted"}}, {"idTag": "STAFF1-LOST"}]
    assert body["version"] == 2 and [e["id_tag"] for e in body["entries"]] == ["NEW1", "STAFF1"]
    # a refused list changes nothing stored, and the next version is still higher
    cp.answers["SendLocalList"] = lambda _p: {"status": "VersionMismatch"}
    _, body = await server.api("POST", f"{CP}/local-list", {"update_type": "Full",
                                                            "tags": ["NEW1"]}, expect=200)
    assert (body["status"], body["version"], len(body["entries"])) == ("VersionMismatch", 2, 2)
    assert sent(cp, "SendLocalList")[2]["listVersion"] == 3
    status, err = await server.api("POST", f"{CP}/local-list", {"update_type": "Differential"})
    assert (status, err["error"]["field"]) == (400, "tags")
    await cp.close()


# -- firmware management ------------------------------------------------------------------


async def firmware_run(server: Server, cp: RawCharger, statuses: list[str]) -> dict[str, Any]:
    cp.answers["UpdateFirmware"] = lambda _p: {}
    _, job = await server.api("POST", f"{CP}/firmware", {
        "location": "https://fw.example.com/v2.bin", "retrieve_date": at(0), "retries": 2},
        expect=201)
    assert sent(cp, "UpdateFirmware")[-1]["location"] == "https://fw.example.com/v2.bin"
    assert job["kind"] == "firmware" and job["status"] == "Accepted"
    for status in statuses:
        await cp.result("FirmwareStatusNotification", {"status": status})
    _, jobs = await server.api("GET", f"{CP}/jobs?kind=firmware", expect=200)
    return jobs["items"][0]  # type: ignore[no-any-return]


async def test_tc_044_1_firmware_update_download_and_install(server: Server) -> None:
    cp = await connect(server)
    job = await firmware_run(server, cp, ["Downloading", "Downloaded", "Installing",
                                          "Installed"])
    assert [h["status"] for h in job["history"]] == [
        "Accepted", "Downloading", "Downloaded", "Installing", "Installed"]
    assert job["finished"] is True and job["status"] == "Installed"
    row = await server.app.db.read(lambda s: s.get(ChargePoint, "CP1"))
    assert row is not None and row.firmware_status == "Installed"  # still kept on the CP
    await cp.close()


async def test_tc_044_2_firmware_update_download_failed(server: Server) -> None:
    cp = await connect(server)
    job = await firmware_run(server, cp, ["Downloading", "DownloadFailed"])
    assert (job["status"], job["finished"]) == ("DownloadFailed", True)
    await cp.close()


async def test_tc_044_3_firmware_update_installation_failed(server: Server) -> None:
    cp = await connect(server)
    job = await firmware_run(server, cp, ["Downloading", "Downloaded", "Installing"])
    assert (job["status"], job["finished"]) == ("Installing", False)
    await cp.close()
    cp = await connect(server)  # it reboots
    await cp.result("FirmwareStatusNotification", {"status": "InstallationFailed"})
    _, jobs = await server.api("GET", f"{CP}/jobs", expect=200)
    assert (jobs["items"][0]["status"], jobs["items"][0]["finished"]) == (
        "InstallationFailed", True)
    await cp.close()


async def diagnostics_run(server: Server, cp: RawCharger, statuses: list[str]
                          ) -> dict[str, Any]:
    cp.answers["GetDiagnostics"] = lambda _p: {"fileName": "diag.zip"}
    _, job = await server.api("POST", f"{CP}/diagnostics",
                              {"location": "ftp://logs.example.com/"}, expect=201)
    assert sent(cp, "GetDiagnostics") == [{"location": "ftp://logs.example.com/"}]
    assert job["response"] == {"fileName": "diag.zip"}
    for status in statuses:
        await cp.result("DiagnosticsStatusNotification", {"status": status})
    _, jobs = await server.api("GET", f"{CP}/jobs?kind=diagnostics", expect=200)
    return jobs["items"][0]  # type: ignore[no-any-return]


async def test_tc_045_1_get_diagnostics(server: Server) -> None:
    cp = await connect(server)
    job = await diagnostics_run(server, cp, ["Uploading", "Uploaded"])
    assert [h["status"] for h in job["history"]] == ["Accepted", "Uploading", "Uploaded"]
    assert job["finished"] is True
    await cp.close()


async def test_tc_045_2_get_diagnostics_upload_failed(server: Server) -> None:
    cp = await connect(server)
    job = await diagnostics_run(server, cp, ["Uploading", "UploadFailed"])
    assert (job["status"], job["finished"]) == ("UploadFailed", True)
    await cp.close()


# -- smart charging -----------------------------------------------------------------------


def profile16(pid: int, purpose: str, level: int = 0, tx: int | None = None,
              limit: float = 16.0) -> dict[str, Any]:
    p: dict[str, Any] = {
        "chargingProfileId": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": at(0),
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}
    if tx is not None:
        p["transactionId"] = tx
    return p


async def test_tc_056_central_smart_charging_tx_default_profile(server: Server) -> None:
    cp = await connect(server)
    cp.answers["SetChargingProfile"] = lambda _p: {"status": "Accepted"}
    _, row = await server.api("POST", f"{CP}/charging-profiles", {
        "connector_id": 0, "profile": profile16(1, "TxDefaultProfile")}, expect=201)
    assert sent(cp, "SetChargingProfile")[0]["connectorId"] == 0
    assert (row["status"], row["purpose"], row["profile_id"]) == (
        "Accepted", "TxDefaultProfile", 1)
    # the same purpose and stack level replaces it (1.6 §3.13.2)
    await server.api("POST", f"{CP}/charging-profiles", {
        "connector_id": 0, "profile": profile16(2, "TxDefaultProfile", limit=10)}, expect=201)
    _, body = await server.api("GET", f"{CP}/charging-profiles", expect=200)
    assert [p["profile_id"] for p in body["items"]] == [2]
    status, err = await server.api("POST", f"{CP}/charging-profiles", {
        "connector_id": 0, "profile": {"chargingProfileId": 3}})
    assert status == 400 and err["error"]["code"] == "invalid_request"
    await cp.close()


async def test_tc_057_central_smart_charging_tx_profile(server: Server) -> None:
    cp = await connect(server)
    tx = await start(cp, 1, "T1")
    cp.answers["SetChargingProfile"] = lambda _p: {"status": "Accepted"}
    _, row = await server.api("POST", f"{CP}/charging-profiles", {
        "connector_id": 1, "profile": profile16(5, "TxProfile", tx=tx)}, expect=201)
    assert row["transaction_id"] == str(tx)
    cp.answers["SetChargingProfile"] = lambda _p: {"status": "Rejected"}
    _, rejected = await server.api("POST", f"{CP}/charging-profiles", {
        "connector_id": 1, "profile": profile16(6, "TxProfile", tx=tx + 100)}, expect=201)
    assert rejected["status"] == "Rejected"
    _, body = await server.api("GET", f"{CP}/charging-profiles", expect=200)
    assert [p["profile_id"] for p in body["items"]] == [5]
    await cp.close()


async def test_tc_059_remote_start_transaction_with_charging_profile(server: Server) -> None:
    cp = await connect(server)
    cp.answers["RemoteStartTransaction"] = lambda _p: {"status": "Accepted"}
    profile = profile16(9, "TxProfile", level=1)
    _, body = await server.api("POST", f"{CP}/charging-profiles/remote-start", {
        "connector_id": 1, "id_tag": "T1", "profile": profile}, expect=200)
    assert body == {"status": "Accepted"}
    assert sent(cp, "RemoteStartTransaction")[0]["chargingProfile"] == profile
    _, stored = await server.api("GET", f"{CP}/charging-profiles", expect=200)
    assert [(p["profile_id"], p["source"]) for p in stored["items"]] == [(9, "remote_start")]
    await cp.close()


async def test_tc_066_get_composite_schedule(server: Server) -> None:
    cp = await connect(server)
    schedule = {"status": "Accepted", "connectorId": 1, "scheduleStart": at(0),
                "chargingSchedule": {"chargingRateUnit": "A", "duration": 300,
                                     "chargingSchedulePeriod": [{"startPeriod": 0,
                                                                 "limit": 6.0}]}}
    cp.answers["GetCompositeSchedule"] = lambda _p: schedule
    _, body = await server.api(
        "GET", f"{CP}/composite-schedule?connector_id=1&duration=300&unit=A", expect=200)
    assert body == schedule
    assert sent(cp, "GetCompositeSchedule") == [
        {"connectorId": 1, "duration": 300, "chargingRateUnit": "A"}]
    status, err = await server.api("GET", f"{CP}/composite-schedule?connector_id=1")
    assert (status, err["error"]["field"]) == (400, "duration")
    await cp.close()


async def test_tc_067_clear_charging_profile(server: Server) -> None:
    cp = await connect(server)
    cp.answers["SetChargingProfile"] = lambda _p: {"status": "Accepted"}
    for pid, purpose, connector in ((1, "ChargePointMaxProfile", 0),
                                    (2, "TxDefaultProfile", 1), (3, "TxDefaultProfile", 2)):
        await server.api("POST", f"{CP}/charging-profiles", {
            "connector_id": connector, "profile": profile16(pid, purpose)}, expect=201)
    cp.answers["ClearChargingProfile"] = lambda _p: {"status": "Accepted"}
    _, body = await server.api("DELETE", f"{CP}/charging-profiles?profile_id=1", expect=200)
    assert body == {"status": "Accepted", "cleared": 1}
    _, body = await server.api(
        "DELETE", f"{CP}/charging-profiles?connector_id=1&purpose=TxDefaultProfile", expect=200)
    assert body["cleared"] == 1
    cp.answers["ClearChargingProfile"] = lambda _p: {"status": "Unknown"}
    _, body = await server.api("DELETE", f"{CP}/charging-profiles?stack_level=7", expect=200)
    assert body == {"status": "Unknown", "cleared": 0}
    cp.answers["ClearChargingProfile"] = lambda _p: {"status": "Accepted"}
    _, body = await server.api("DELETE", f"{CP}/charging-profiles", expect=200)
    assert body["cleared"] == 1
    assert sent(cp, "ClearChargingProfile") == [
        {"id": 1}, {"connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile"},
        {"stackLevel": 7}, {}]
    _, stored = await server.api("GET", f"{CP}/charging-profiles", expect=200)
    assert stored["items"] == []
    _, every = await server.api("GET", f"{CP}/charging-profiles?all=true", expect=200)
    assert len(every["items"]) == 3 and all(p["cleared_at"] for p in every["items"])
    await cp.close()


# -- security extension (OCPP 1.6 security whitepaper) ------------------------------------


def root_certificate(cn: str = "Test Root") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_tc_075_1_install_a_certificate_manufacturer_root_certificate(
    server: Server,
) -> None:
    cp = await connect(server)
    pem = root_certificate()
    cp.answers["InstallCertificate"] = lambda _p: {"status": "Accepted"}
    _, row = await server.api("POST", f"{CP}/certificates", {
        "certificate_type": "ManufacturerRootCertificate", "certificate": pem}, expect=201)
    assert row["status"] == "Installed" and len(row["issuer_name_hash"]) == 64
    assert sent(cp, "InstallCertificate") == [
        {"certificateType": "ManufacturerRootCertificate", "certificate": pem}]
    ours = {k: row[k] for k in ("issuer_name_hash", "issuer_key_hash", "serial_number")}
    cp.answers["GetInstalledCertificateIds"] = lambda _p: {"status": "Accepted",
                                                           "certificateHashData": [{
        "hashAlgorithm": "SHA256", "issuerNameHash": ours["issuer_name_hash"],
        "issuerKeyHash": ours["issuer_key_hash"], "serialNumber": ours["serial_number"]}]}
    _, body = await server.api("POST", f"{CP}/certificates/query", {
        "certificate_types": ["ManufacturerRootCertificate"]}, expect=200)
    assert [(c["id"], c["status"]) for c in body["items"]] == [(row["id"], "Installed")]
    assert sent(cp, "GetInstalledCertificateIds") == [
        {"certificateType": "ManufacturerRootCertificate"}]
    await cp.close()


async def test_tc_076_delete_a_specific_certificate_from_the_charge_point(
    server: Server,
) -> None:
    cp = await connect(server)
    cp.answers["InstallCertificate"] = lambda _p: {"status": "Accepted"}
    _, row = await server.api("POST", f"{CP}/certificates", {
        "certificate_type": "CentralSystemRootCertificate", "certificate": root_certificate()},
        expect=201)
    cp.answers["DeleteCertificate"] = lambda _p: {"status": "Accepted"}
    _, body = await server.api("DELETE", f"{CP}/certificates/{row['id']}", expect=200)
    assert body["status"] == "Accepted" and body["certificate"]["status"] == "Deleted"
    assert sent(cp, "DeleteCertificate")[0]["certificateHashData"]["serialNumber"] == \
        row["serial_number"]
    cp.answers["GetInstalledCertificateIds"] = lambda _p: {"status": "NotFound"}
    _, listed = await server.api("POST", f"{CP}/certificates/query", {
        "certificate_types": ["CentralSystemRootCertificate"]}, expect=200)
    assert listed == {"status": "NotFound", "items": []}
    await cp.close()


async def test_tc_078_invalid_central_system_certificate_security_event(
    server: Server,
) -> None:
    cp = await connect(server)
    cp.answers["InstallCertificate"] = lambda _p: {"status": "Rejected"}
    _, row = await server.api("POST", f"{CP}/certificates", {
        "certificate_type": "CentralSystemRootCertificate", "certificate": root_certificate()},
        expect=201)
    assert row["status"] == "Rejected"
    assert await cp.result("SecurityEventNotification", {
        "type": "InvalidCentralSystemCertificate", "timestamp": "2026-11-30T10:00:00Z",
        "techInfo": "signature"}) == {}
    _, events = await server.api("GET", f"{CP}/security-events", expect=200)
    assert [(e["type"], e["tech_info"], e["timestamp"]) for e in events["items"]] == [
        ("InvalidCentralSystemCertificate", "signature", "2026-11-30T10:00:00.000Z")]
    await cp.close()


async def test_tc_079_get_security_log(server: Server) -> None:
    cp = await connect(server)
    cp.answers["GetLog"] = lambda _p: {"status": "Accepted", "filename": "security.log"}
    _, job = await server.api("POST", f"{CP}/logs", {
        "log_type": "SecurityLog", "location": "https://logs.example.com/up"}, expect=201)
    request = sent(cp, "GetLog")[0]
    assert request == {"logType": "SecurityLog", "requestId": job["request_id"],
                       "log": {"remoteLocation": "https://logs.example.com/up"}}
    for status in ("Uploading", "Uploaded"):
        await cp.result("LogStatusNotification", {"status": status,
                                                  "requestId": job["request_id"]})
    _, jobs = await server.api("GET", f"{CP}/jobs?kind=log", expect=200)
    assert [h["status"] for h in jobs["items"][0]["history"]] == [
        "Accepted", "Uploading", "Uploaded"]
    assert jobs["items"][0]["finished"] is True
    await cp.close()


async def signed_firmware(server: Server, cp: RawCharger, statuses: list[str]
                          ) -> dict[str, Any]:
    cp.answers["SignedUpdateFirmware"] = lambda _p: {"status": "Accepted"}
    _, job = await server.api("POST", f"{CP}/firmware", {
        "location": "https://fw.example.com/v3.bin", "retrieve_date": at(0),
        "signing_certificate": root_certificate(), "signature": "c2lnbmF0dXJl"}, expect=201)
    request = sent(cp, "SignedUpdateFirmware")[0]
    assert request["requestId"] == job["request_id"] and job["kind"] == "signed_firmware"
    assert request["firmware"]["signature"] == "c2lnbmF0dXJl"
    for status in statuses:
        await cp.result("SignedFirmwareStatusNotification",
                        {"status": status, "requestId": job["request_id"]})
    _, jobs = await server.api("GET", f"{CP}/jobs?kind=signed_firmware", expect=200)
    return jobs["items"][0]  # type: ignore[no-any-return]


async def test_tc_080_secure_firmware_update(server: Server) -> None:
    cp = await connect(server)
    job = await signed_firmware(server, cp, ["Downloading", "Downloaded",
                                             "SignatureVerified", "Installing", "Installed"])
    assert (job["status"], job["finished"], len(job["history"])) == ("Installed", True, 6)
    await cp.close()


async def test_tc_081_secure_firmware_update_invalid_signature(server: Server) -> None:
    cp = await connect(server)
    job = await signed_firmware(server, cp, ["Downloading", "Downloaded", "InvalidSignature"])
    assert (job["status"], job["finished"]) == ("InvalidSignature", True)
    await cp.result("SecurityEventNotification", {"type": "InvalidFirmwareSignature",
                                                  "timestamp": at(0)})
    _, events = await server.api("GET", f"{CP}/security-events", expect=200)
    assert events["items"][0]["type"] == "InvalidFirmwareSignature"
    status, err = await server.api("POST", f"{CP}/firmware", {
        "location": "x", "retrieve_date": at(0), "signature": "only-a-signature"})
    assert (status, err["error"]["field"]) == (400, "signature")
    await cp.close()


async def test_operations_need_an_operator_and_a_connected_charger(server: Server) -> None:
    await server.register("CP1")
    status, body = await server.api("POST", f"{CP}/reservations", {
        "connector_id": 1, "id_tag": "T", "expiry_date": at(60)})
    assert (status, body["error"]["code"]) == (409, "not_connected")
    _, reservations = await server.api("GET", f"{CP}/reservations", expect=200)
    assert reservations["items"] == []  # nothing stored for a call never sent
    status, _ = await server.api("GET", "/api/v1/charge-points/NOPE/jobs")
    assert status == 404
    status, body = await server.api("POST", f"{CP}/reservations", {
        "connector_id": 1, "id_tag": "T", "expiry_date": "2030-01-01T00:00:00"})
    assert (status, body["error"]["field"]) == (400, "expiry_date")
    _, driver = await server.api("POST", "/api/v1/drivers", {"email": "x@example.com"},
                                 token=None, expect=201)
    status, _ = await server.api("GET", f"{CP}/reservations", token=driver["token"])
    assert status == 403
