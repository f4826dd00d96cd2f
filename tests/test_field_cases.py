"""The 12 real-world charger behaviours of ``tests/data/field-cases.json`` (a copy of
``../shared/field-cases/cases.json``), each replayed frame by frame over a real websocket,
checking the reply and what was stored.

Transaction ids in the recorded frames (6301, 9801, ...) are the ids the charger got from the
CSMS that recorded them; our database issues its own, so frames are rewritten through a map
from the recorded id to ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlmodel import col

from csms.models import ChargePoint, Connector, MeterSample, OcppEvent, Transaction
from tests.charger import RawCharger, basic_auth
from tests.conftest import CP_PASSWORD, Server

CASES = {
    c["id"].split("-")[0]: c
    for c in json.loads((Path(__file__).parent / "data" / "field-cases.json").read_text())
}


def frames(case: str) -> list[list[Any]]:
    return [list(f) for f in CASES[case]["frames"]]


def rewrite(frame: list[Any], ids: dict[int, int]) -> list[Any]:
    payload = dict(frame[3])
    if payload.get("transactionId") in ids:
        payload["transactionId"] = ids[payload["transactionId"]]
    return [frame[0], frame[1], frame[2], payload]


async def connect(server: Server, cp_id: str, **kwargs: Any) -> RawCharger:
    await server.register(cp_id)
    return await RawCharger.open(
        f"{server.ocpp_url}/{cp_id}", headers=basic_auth(cp_id, CP_PASSWORD), **kwargs
    )


async def start(cp: RawCharger, tag: str, meter_start: int, ts: str, connector: int = 1) -> int:
    reply = await cp.result(
        "StartTransaction",
        {"connectorId": connector, "idTag": tag, "meterStart": meter_start, "timestamp": ts},
    )
    return int(reply["transactionId"])


async def rows(server: Server, query: Any) -> list[Any]:
    return list((await server.app.db.read(lambda s: s.execute(query))).scalars())


async def tx(server: Server, pk: int) -> Transaction:
    found = await server.app.db.read(lambda s: s.get(Transaction, pk))
    assert found is not None
    return found


async def test_q03_start_stop_vs_metervalues_inconsistent(server: Server) -> None:
    cp = await connect(server, "GRIZZLE")
    await server.api("PUT", "/api/v1/id-tags/TAG0301", {"status": "Accepted"}, expect=200)
    f = frames("Q03")
    reply = await cp.send_frame(f[0])
    assert reply[0] == 3 and reply[2]["idTagInfo"] == {"status": "Accepted"}
    ids = {6301: reply[2]["transactionId"]}
    # two more transactions so that 6302 / 6303 are known ones with bad meterStop values
    ids[6302] = await start(cp, "TAG0302", 5000, "2026-08-28T08:30:00Z", connector=2)
    ids[6303] = await start(cp, "TAG0303", 5000, "2026-08-28T09:30:00Z", connector=3)
    for frame in f[1:]:
        assert (await cp.send_frame(rewrite(frame, ids)))[:3:2] == [3, {}]
    first = await tx(server, ids[6301])
    assert (first.status, first.energy_wh) == ("completed", 113)
    assert "session_relative" in first.flags or first.meter_state.get("session_relative")
    minus_one = await tx(server, ids[6302])
    assert minus_one.status == "completed" and minus_one.energy_wh == 0
    assert "meter_invalid" in minus_one.flags
    below = await tx(server, ids[6303])
    assert below.energy_wh == 0 and "meter_invalid" in below.flags
    cp_row = await server.app.db.read(lambda s: s.get(ChargePoint, "GRIZZLE"))
    assert cp_row is not None and cp_row.session_relative_meter is True
    await cp.close()


async def test_q04_mixed_contexts_in_one_metervalues(server: Server) -> None:
    cp = await connect(server, "THOR22")
    f = frames("Q04")
    ids = {
        7401: await start(cp, "T", 114900, "2026-01-05T04:50:00Z"),
        7402: await start(cp, "T", 0, "2025-01-03T15:20:00Z", connector=2),
    }
    for frame in f:
        reply = await cp.send_frame(rewrite(frame, ids))
        assert reply[0] == 3 and reply[2] == {}
    _, body = await server.api("GET", "/api/v1/transactions?status=active", expect=200)
    so_far = {t["id"]: t["energy_wh"] for t in body["items"]}
    assert so_far == {ids[7401]: 5550, ids[7402]: 37}
    samples = await rows(
        server, select(MeterSample).where(col(MeterSample.transaction_pk) == ids[7401])
    )
    assert len(samples) == 3  # both register entries and the current are kept
    assert {s.timestamp.isoformat() for s in samples} == {"2026-01-05T04:58:38+00:00"}
    assert {s.context for s in samples} == {"Sample.Periodic", "Transaction.Begin"}
    await cp.close()


async def test_q06_timestamps_1970_naive_or_local(server: Server) -> None:
    cp = await connect(server, "MICRO")
    f = frames("Q06")
    ids = {8601: await start(cp, "T", 0, "2026-01-01T00:00:00Z")}
    for frame in f:
        reply = await cp.send_frame(rewrite(frame, ids))
        assert reply[0] == 3 and reply[2] == {}, reply
    sample = (
        await rows(server, select(MeterSample).where(col(MeterSample.transaction_pk) == ids[8601]))
    )[0]
    assert sample.timestamp_trusted is False and sample.timestamp_raw == "1970-01-01T00:00:23Z"
    connectors = {
        c.connector_id: c
        for c in await rows(
            server, select(Connector).where(col(Connector.charge_point_id) == "MICRO")
        )
    }
    assert connectors[2].status_timestamp is not None
    assert connectors[2].status_timestamp.isoformat() == "2024-04-26T12:35:02+00:00"
    assert connectors[2].status_timestamp_raw == "2024-04-26T14:35:02+02"
    assert connectors[1].status == "Available" and connectors[1].vendor_id == "ExampleVendor"
    # a transaction with a 1970 start is timed from when we received it, not from 1970
    late = await start(cp, "T", 0, "1970-01-01T00:00:05Z", connector=3)
    row = await tx(server, late)
    assert row.started_at is not None and row.started_at.year >= 2026
    assert "untrusted_time" in row.flags
    await cp.close()


async def test_q07_stoptransaction_unknown_or_placeholder_id(server: Server) -> None:
    cp = await connect(server, "TARRAGON")
    open_pk = await start(cp, "TAG0701", 1000, "2024-02-26T09:00:00Z")
    replies = [await cp.send_frame(frame) for frame in frames("Q07")]
    assert [r[0] for r in replies] == [3, 3, 3]
    assert replies[0][2] == {"idTagInfo": {"status": "Accepted"}}
    assert replies[1][2] == {} and replies[2][2] == {}
    matched = await tx(server, open_pk)  # -1 with TAG0701: the single open session
    assert (matched.status, matched.energy_wh) == ("completed", 650)
    assert "placeholder_id" in matched.flags
    orphans = await rows(server, select(Transaction).where(col(Transaction.status) == "orphan"))
    assert sorted(o.ocpp_id or "" for o in orphans) == ["0", "1718000999"]
    assert all(o.energy_wh is None and "review" in o.flags for o in orphans)
    # the same unknown stop again: acknowledged, not a second orphan
    assert (await cp.send_frame(frames("Q07")[1]))[0] == 3
    assert (
        len(await rows(server, select(Transaction).where(col(Transaction.status) == "orphan"))) == 2
    )
    await cp.close()


async def test_q08_duplicate_or_stale_stoptransaction(server: Server) -> None:
    cp = await connect(server, "EVEREST")
    ids = {9801: await start(cp, "T", 30000, "2026-08-18T16:00:00Z")}
    replies = [await cp.send_frame(rewrite(frame, ids)) for frame in frames("Q08")]
    assert [r[2] for r in replies] == [{}, {}, {}]
    row = await tx(server, ids[9801])
    assert (row.status, row.energy_wh, row.stop_reason) == ("completed", 5220, "EVDisconnected")
    samples = await rows(
        server, select(MeterSample).where(col(MeterSample.transaction_pk) == row.id)
    )
    assert len(samples) == 1  # transactionData not re-inserted
    events = await rows(server, select(OcppEvent).where(col(OcppEvent.transaction_pk) == row.id))
    assert [e.kind for e in events] == ["stop_duplicate", "stop_duplicate"]
    # a copy that differs is a conflict: the first stop stays
    await cp.result(
        "StopTransaction",
        {"transactionId": ids[9801], "meterStop": 99999, "timestamp": "2026-08-18T18:00:00Z"},
    )
    row = await tx(server, ids[9801])
    assert row.energy_wh == 5220 and "stop_conflict" in row.flags
    await cp.close()


async def test_q09_idtag_corrupted_overlong_or_case(server: Server) -> None:
    cp = await connect(server, "OCULAR")
    await server.api("PUT", "/api/v1/id-tags/04A1B2C3D4E5F6", {"status": "Accepted"}, expect=200)
    ids = {
        1786700001: await start(cp, "REMOTETAG00000000001", 0, "2026-08-14T10:00:00Z"),
        1762770002: await start(cp, "X", 250000, "2025-11-10T10:00:00Z", connector=2),
    }
    replies = [await cp.send_frame(rewrite(frame, ids)) for frame in frames("Q09")]
    assert [r[:1] + [r[2]] for r in replies] == [[3, {"idTagInfo": {"status": "Accepted"}}]] * 3
    first = await tx(server, ids[1786700001])
    assert (first.status, first.energy_wh) == ("completed", 1388)
    second = await tx(server, ids[1762770002])
    assert (second.status, second.energy_wh) == ("completed", 390)
    await cp.close()


async def test_q10_vendor_fields_too_long_empty_or_wrong_type(server: Server) -> None:
    cp = await connect(server, "EVLINK")
    f = frames("Q10")
    first = await cp.send_frame(f[0])
    assert first[0] == 3 and first[2]["status"] == "Accepted"
    assert first[2]["currentTime"].endswith("Z")
    stored = await server.app.db.read(lambda s: s.get(ChargePoint, "EVLINK"))
    assert stored is not None
    assert stored.serial_number == "3NTESTSERIAL00000000000026"
    assert stored.charge_box_serial_number == "EVBTESTBOX0000000000000000000033X"
    second = await cp.send_frame(f[1])
    assert second[0] == 3 and second[2]["status"] == "Accepted"
    stored = await server.app.db.read(lambda s: s.get(ChargePoint, "EVLINK"))
    assert stored is not None and stored.vendor is None
    assert stored.model == "EXAMPLE-MODEL-NAME-2300"
    # f[2] (gc-1003) is a CALLRESULT to our GetConfiguration: see test_commands.py
    reply = await cp.send_frame(f[3])
    assert reply[0] == 3 and reply[2] == {}
    assert (
        await rows(server, select(MeterSample).where(col(MeterSample.charge_point_id) == "EVLINK"))
        == []
    )
    await cp.close()


async def test_q11_enum_values_outside_schema(server: Server) -> None:
    cp = await connect(server, "HALO")
    ids = {11101: await start(cp, "T", 10000, "2025-03-12T12:00:00Z")}
    replies = [await cp.send_frame(rewrite(frame, ids)) for frame in frames("Q11")]
    assert [r[0] for r in replies] == [3, 3, 3] and all(r[2] == {} for r in replies)
    samples = await rows(
        server, select(MeterSample).where(col(MeterSample.transaction_pk) == ids[11101])
    )
    assert {(s.measurand, s.unit) for s in samples} >= {
        ("Energy.Active.Import.Register", "Wh"),
        ("Frequency", "Hertz"),
    }
    row = await tx(server, ids[11101])
    assert row.energy_wh == 980
    conn = await server.app.db.read(lambda s: s.get(Connector, ("HALO", 0)))
    assert conn is not None
    assert (conn.status, conn.error_code, conn.raw_error_code) == ("Faulted", "OtherError", "Error")
    async with server.http.get(server.api_url + "/metrics") as resp:
        assert 'csms_ocpp_schema_warnings_total{action="MeterValues"} 1.0' in await resp.text()
    await cp.close()


async def test_q12_charge_point_id_percent_encoded(server: Server) -> None:
    await server.register("Test Wallbox|01")
    cp = await RawCharger.open(
        f"{server.ocpp_url}/Test%20Wallbox%7C01", headers=basic_auth("Test Wallbox|01", CP_PASSWORD)
    )
    reply = await cp.send_frame(frames("Q12")[0])
    assert reply[0] == 3 and reply[2]["status"] == "Accepted"
    stored = await server.app.db.read(lambda s: s.get(ChargePoint, "Test Wallbox|01"))
    assert stored is not None and stored.model == "Wallbox X" and stored.connected
    await cp.close()


async def test_q13_no_subprotocol_and_root_path(server: Server) -> None:
    await server.register("GRIZZ13")
    root = server.ocpp_url.removesuffix("/ocpp")
    cp = await RawCharger.open(
        root + "/", subprotocols=[], headers=basic_auth("GRIZZ13", CP_PASSWORD)
    )
    assert cp.ws.subprotocol is None
    reply = await cp.send_frame(frames("Q13")[0])
    assert reply[0] == 3 and reply[2]["status"] == "Accepted"
    await cp.close()


async def test_q14_same_id_second_connection(server: Server) -> None:
    await server.register("CP-TEST-14")
    url = f"{server.ocpp_url}/CP-TEST-14"
    auth = basic_auth("CP-TEST-14", CP_PASSWORD)
    probe = await RawCharger.open(url, headers=auth)  # the ~3 s ocpp1.6 probe
    real = await RawCharger.open(url, subprotocols=["ocpp2.0.1"], headers=auth)
    assert real.ws.subprotocol == "ocpp2.0.1"
    f = frames("Q14")
    boot = await real.send_frame(f[0])
    assert boot[0] == 3 and boot[2]["status"] == "Accepted" and boot[2]["interval"] == 300
    assert boot[2]["currentTime"].endswith("Z")
    beat = await real.send_frame(f[1])
    assert beat[0] == 3 and beat[2]["currentTime"].endswith("Z")
    await probe.close()  # the old socket's cleanup must not unregister the new one
    stored = await server.app.db.read(lambda s: s.get(ChargePoint, "CP-TEST-14"))
    assert stored is not None and stored.ocpp_version == "ocpp2.0.1" and stored.model == "A022KP1"
    _, body = await server.api("GET", "/api/v1/charge-points/CP-TEST-14", expect=200)
    assert body["connected"] is True
    await real.close()


async def test_q19_short_session_energy(server: Server) -> None:
    cp = await connect(server, "SHORT")
    f = frames("Q19")
    first = await cp.send_frame(f[0])
    ids = {19001: first[2]["transactionId"]}
    assert (await cp.send_frame(rewrite(f[1], ids)))[2] == {}
    assert (await cp.send_frame(rewrite(f[2], ids)))[2] == {}  # unknown id -> orphan, acknowledged
    row = await tx(server, ids[19001])
    assert (row.status, row.energy_wh) == ("completed", 140)
    await cp.close()
