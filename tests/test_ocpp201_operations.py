"""OCPP 2.0.1 operator operations with stored results over a real websocket: reservations
(H01-H04), local list (D01/D02), smart charging (K01, K08, K09, K10), firmware and logs (L01,
N01), certificates (M03-M05), security events (A04), variable monitoring (N04). The station is
``Station201``: every CSMS call it receives is checked against the 2.0.1 request schema."""

from __future__ import annotations

from typing import Any

from csms.models import OcppEvent
from tests.conftest import Server
from tests.test_ocpp201 import BOOT, Station201, events
from tests.test_ocpp201_lifeline import event
from tests.test_tc16_operations import at, connect, root_certificate

CP = "/api/v1/charge-points/S1"


async def station(server: Server) -> Station201:
    st = await Station201.connect(server, "S1")
    assert (await st.result("BootNotification", BOOT))["status"] == "Accepted"
    return st


def profile201(pid: int, purpose: str, level: int = 0) -> dict[str, Any]:
    return {"id": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "A", "startSchedule": at(0),
                                  "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}]}


async def reservation(server: Server, rid: int) -> dict[str, Any]:
    _, body = await server.api("GET", f"{CP}/reservations", expect=200)
    return next(r for r in body["items"] if r["id"] == rid)  # type: ignore[no-any-return]


async def test_h01_h02_h03_reservations(server: Server) -> None:
    st = await station(server)
    await server.api("PUT", "/api/v1/id-tags/RES1", {}, expect=200)
    st.answers["ReserveNow"] = lambda _p: {"status": "Accepted"}
    _, used = await server.api("POST", f"{CP}/reservations", {
        "connector_id": 1, "id_tag": "RES1", "expiry_date": at(3600)}, expect=201)
    request = st.calls("ReserveNow")[0]
    assert (request["id"], request["evseId"], request["idToken"]["idToken"]) == (
        used["id"], 1, "RES1")
    started = await st.result("TransactionEvent", event(
        "Started", 0, "Authorized", "TX-R1", at(0), evse={"id": 1, "connectorId": 1},
        idToken={"idToken": "RES1", "type": "ISO14443"}, reservationId=used["id"]))
    assert started["idTokenInfo"]["status"] == "Accepted"
    row = await reservation(server, used["id"])
    assert row["status"] == "Used" and row["transaction_pk"] is not None
    # H02 cancel; H04 the station reports an expiry
    _, cancelled = await server.api("POST", f"{CP}/reservations", {
        "connector_id": 0, "id_tag": "RES1", "expiry_date": at(3600)}, expect=201)
    assert "evseId" not in st.calls("ReserveNow")[1]
    st.answers["CancelReservation"] = lambda _p: {"status": "Accepted"}
    _, body = await server.api("POST", f"{CP}/reservations/{cancelled['id']}/cancel",
                               expect=200)
    assert body["reservation"]["status"] == "Cancelled"
    _, expiring = await server.api("POST", f"{CP}/reservations", {
        "connector_id": 2, "id_tag": "RES1", "expiry_date": at(3600)}, expect=201)
    await st.result("ReservationStatusUpdate", {"reservationId": expiring["id"],
                                                "reservationUpdateStatus": "Expired"})
    assert (await reservation(server, expiring["id"]))["status"] == "Expired"
    await st.close()


async def test_d01_d02_local_list(server: Server) -> None:
    st = await station(server)
    await server.api("PUT", "/api/v1/id-tags/STAFF1", {"expiry_date": "2099-01-01T00:00:00Z",
                                                       "parent_id_tag": "OPS"}, expect=200)
    st.answers["SendLocalList"] = lambda _p: {"status": "Accepted"}
    _, body = await server.api("POST", f"{CP}/local-list", {"update_type": "Full"}, expect=200)
    request = st.calls("SendLocalList")[0]
    assert (request["versionNumber"], request["updateType"]) == (1, "Full")
    assert request["localAuthorizationList"] == [{
        "idToken": {"idToken": "STAFF1", "type": "ISO14443"},
        "idTokenInfo": {"status": "Accepted", "cacheExpiryDateTime": "2099-01-01T00:00:00.000Z",
                        "groupIdToken": {"idToken": "OPS", "type": "Central"}}}]
    assert body["version"] == 1 and [e["id_tag"] for e in body["entries"]] == ["STAFF1"]
    await server.api("POST", f"{CP}/local-list", {"update_type": "Differential",
                                                  "tags": ["STAFF1"]}, expect=200)
    assert st.calls("SendLocalList")[1]["versionNumber"] == 2
    st.answers["GetLocalListVersion"] = lambda _p: {"versionNumber": 2}
    _, version = await server.api("POST", f"{CP}/local-list/version", expect=200)
    assert version == {"reported_version": 2}
    await st.close()


async def test_k01_k08_k09_k10_charging_profiles(server: Server) -> None:
    st = await station(server)
    st.answers["SetChargingProfile"] = lambda _p: {"status": "Accepted"}
    for pid, purpose, evse in ((1, "ChargingStationMaxProfile", 0), (2, "TxDefaultProfile", 1)):
        _, row = await server.api("POST", f"{CP}/charging-profiles", {
            "connector_id": evse, "profile": profile201(pid, purpose)}, expect=201)
        assert row["status"] == "Accepted"
    assert st.calls("SetChargingProfile")[1]["evseId"] == 1
    st.answers["ClearChargingProfile"] = lambda _p: {"status": "Accepted"}
    _, cleared = await server.api("DELETE", f"{CP}/charging-profiles?profile_id=1", expect=200)
    assert cleared == {"status": "Accepted", "cleared": 1}
    assert st.calls("ClearChargingProfile") == [{"chargingProfileId": 1}]
    schedule = {"status": "Accepted", "schedule": {
        "evseId": 1, "duration": 600, "scheduleStart": at(0), "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}}
    st.answers["GetCompositeSchedule"] = lambda _p: schedule
    _, body = await server.api("GET", f"{CP}/composite-schedule?connector_id=1&duration=600",
                               expect=200)
    assert body == schedule and st.calls("GetCompositeSchedule") == [
        {"evseId": 1, "duration": 600}]
    # K09: the station reports what it holds (one we never sent)
    st.answers["GetChargingProfiles"] = lambda _p: {"status": "Accepted"}
    _, job = await server.api("POST", f"{CP}/charging-profiles/report", {
        "criteria": {"chargingProfilePurpose": "TxDefaultProfile"}}, expect=201)
    assert st.calls("GetChargingProfiles")[0]["requestId"] == job["request_id"]
    await st.result("ReportChargingProfiles", {
        "requestId": job["request_id"], "chargingLimitSource": "CSO", "evseId": 2,
        "chargingProfile": [profile201(7, "TxDefaultProfile", level=3)]})
    _, stored = await server.api("GET", f"{CP}/charging-profiles", expect=200)
    assert [(p["profile_id"], p["status"]) for p in stored["items"]] == [
        (2, "Accepted"), (7, "Reported")]
    _, jobs = await server.api("GET", f"{CP}/jobs?kind=charging_profiles", expect=200)
    assert jobs["items"][0]["finished"] is True
    await st.close()


async def test_l01_firmware_and_n01_logs(server: Server) -> None:
    st = await station(server)
    st.answers["UpdateFirmware"] = lambda _p: {"status": "Accepted"}
    _, first = await server.api("POST", f"{CP}/firmware", {
        "location": "https://fw.example.com/a.bin", "retrieve_date": at(0),
        "signing_certificate": root_certificate(), "signature": "c2ln"}, expect=201)
    assert st.calls("UpdateFirmware")[0]["requestId"] == first["request_id"]
    await st.result("FirmwareStatusNotification", {"status": "Downloading",
                                                   "requestId": first["request_id"]})
    st.answers["UpdateFirmware"] = lambda _p: {"status": "AcceptedCanceled"}
    _, second = await server.api("POST", f"{CP}/firmware", {
        "location": "https://fw.example.com/b.bin", "retrieve_date": at(0)}, expect=201)
    for status in ("Downloading", "Downloaded", "SignatureVerified", "Installing", "Installed"):
        await st.result("FirmwareStatusNotification", {"status": status,
                                                       "requestId": second["request_id"]})
    _, jobs = await server.api("GET", f"{CP}/jobs?kind=firmware", expect=200)
    by_id = {j["id"]: j for j in jobs["items"]}
    assert (by_id[first["id"]]["status"], by_id[first["id"]]["finished"]) == ("Cancelled", True)
    assert (by_id[second["id"]]["status"], by_id[second["id"]]["finished"]) == (
        "Installed", True)
    st.answers["GetLog"] = lambda _p: {"status": "Accepted", "filename": "d.log"}
    _, diag = await server.api("POST", f"{CP}/diagnostics", {"location": "ftp://x/"},
                               expect=201)
    assert st.calls("GetLog")[0]["logType"] == "DiagnosticsLog" and diag["kind"] == "log"
    await st.result("LogStatusNotification", {"status": "Uploading",
                                              "requestId": diag["request_id"]})
    await st.result("LogStatusNotification", {"status": "UploadFailure",
                                              "requestId": diag["request_id"]})
    _, logs = await server.api("GET", f"{CP}/jobs?kind=log", expect=200)
    assert (logs["items"][0]["status"], logs["items"][0]["finished"]) == ("UploadFailure", True)
    assert len(await events(server, "S1", "diagnostics_status")) == 2  # still recorded
    await st.close()


async def test_m03_m04_m05_certificates(server: Server) -> None:
    st = await station(server)
    st.answers["InstallCertificate"] = lambda _p: {"status": "Accepted"}
    _, ours = await server.api("POST", f"{CP}/certificates", {
        "certificate_type": "CSMSRootCertificate", "certificate": root_certificate()},
        expect=201)
    assert ours["status"] == "Installed"
    theirs = {"hashAlgorithm": "SHA256", "issuerNameHash": "ab" * 32,
              "issuerKeyHash": "cd" * 32, "serialNumber": "1f"}
    st.answers["GetInstalledCertificateIds"] = lambda _p: {
        "status": "Accepted", "certificateHashDataChain": [
            {"certificateType": "V2GRootCertificate", "certificateHashData": theirs}]}
    _, listed = await server.api("POST", f"{CP}/certificates/query", {}, expect=200)
    assert st.calls("GetInstalledCertificateIds") == [{}]
    assert {(c["certificate_type"], c["status"], c["source"]) for c in listed["items"]} == {
        ("CSMSRootCertificate", "Missing", "operator"),
        ("V2GRootCertificate", "Installed", "reported")}
    reported = next(c for c in listed["items"] if c["source"] == "reported")
    st.answers["DeleteCertificate"] = lambda _p: {"status": "Accepted"}
    _, deleted = await server.api("DELETE", f"{CP}/certificates/{reported['id']}", expect=200)
    assert deleted["certificate"]["status"] == "Deleted"
    assert st.calls("DeleteCertificate") == [{"certificateHashData": theirs}]
    await st.close()


async def test_a04_security_events_and_n04_variable_monitoring(server: Server) -> None:
    st = await station(server)
    await st.result("SecurityEventNotification", {"type": "TamperDetectionActivated",
                                                  "timestamp": at(0)})
    _, body = await server.api("GET", f"{CP}/security-events", expect=200)
    assert [e["type"] for e in body["items"]] == ["TamperDetectionActivated"]
    assert len(await events(server, "S1", "security_event")) == 1  # the event log too
    st.answers["SetVariableMonitoring"] = lambda p: {"setMonitoringResult": [
        {"id": 11, "status": "Accepted", "type": p["setMonitoringData"][0]["type"],
         "severity": 5, "component": {"name": "EVSE"}, "variable": {"name": "Power"}},
        {"status": "UnknownVariable", "type": "Delta", "severity": 8,
         "component": {"name": "EVSE"}, "variable": {"name": "Nope"}}]}
    _, monitors = await server.api("POST", f"{CP}/monitors", {"monitors": [
        {"component": "EVSE", "variable": "Power", "evse_id": 1, "type": "UpperThreshold",
         "value": 22000, "severity": 5},
        {"component": "EVSE", "variable": "Nope", "type": "Delta", "value": 1, "severity": 8}]},
        expect=201)
    assert [(m["monitor_id"], m["status"]) for m in monitors["items"]] == [
        (11, "Accepted"), (None, "UnknownVariable")]
    assert st.calls("SetVariableMonitoring")[0]["setMonitoringData"][0]["component"] == {
        "name": "EVSE", "evse": {"id": 1}}
    await st.result("NotifyMonitoringReport", {"requestId": 1, "seqNo": 0,
                                               "generatedAt": at(0)})
    kept: list[OcppEvent] = await events(server, "S1", "monitoring_report")
    assert len(kept) == 1
    _, stored = await server.api("GET", f"{CP}/monitors", expect=200)
    assert len(stored["items"]) == 2
    await st.close()


async def test_201_only_operations_are_refused_on_16(server: Server) -> None:
    cp = await connect(server, "CP1")
    for path, body in (("charging-profiles/report", {}), ("monitors", {"monitors": [
            {"component": "EVSE", "variable": "Power", "type": "Delta", "value": 1,
             "severity": 1}]})):
        status, err = await server.api("POST", f"/api/v1/charge-points/CP1/{path}", body)
        assert status == 400 and "2.0.1" in err["error"]["message"], path
    assert cp.received_calls == []
    await cp.close()
