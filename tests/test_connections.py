"""The OCPP endpoint over real sockets: identities, subprotocols, security profiles 1-3,
replacement of a connection, connection state."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidMessage, InvalidStatus

from tests.certs import Pki
from tests.charger import RawCharger, basic_auth
from tests.conftest import CP_PASSWORD, Server

BOOT = {"chargePointVendor": "ExampleVendor", "chargePointModel": "Wallbox X"}


async def refused(url: str, **kwargs: Any) -> int:
    """The HTTP status with which the handshake was refused."""
    with pytest.raises(InvalidStatus) as info:
        await RawCharger.open(url, **kwargs)
    return int(info.value.response.status_code)


async def test_basic_auth_profile_1(server: Server) -> None:
    await server.register("CP1")
    url = f"{server.ocpp_url}/CP1"
    assert await refused(url) == 401  # no credentials
    assert await refused(url, headers=basic_auth("CP1", "wrong-password-123456")) == 401
    assert await refused(url, headers=basic_auth("CP2", CP_PASSWORD)) == 401  # other username
    assert await refused(f"{server.ocpp_url}/NOPE", headers=basic_auth("NOPE", CP_PASSWORD)) == 404
    cp = await RawCharger.open(url, headers=basic_auth("CP1", CP_PASSWORD))
    assert cp.ws.subprotocol == "ocpp1.6"
    reply = await cp.result("BootNotification", BOOT)
    assert reply["status"] == "Accepted"
    assert reply["currentTime"].endswith("Z")
    assert reply["interval"] == 300
    await cp.close()


async def test_percent_encoded_identity_is_decoded_once(server: Server) -> None:
    """Field case Q12: /ocpp/Test%20Wallbox%7C01 is the charge point 'Test Wallbox|01'; '+'
    stays '+'; %2520 is decoded once only."""
    await server.register("Test Wallbox|01")
    await server.register("A+B")
    cp = await RawCharger.open(
        f"{server.ocpp_url}/Test%20Wallbox%7C01", headers=basic_auth("Test Wallbox|01", CP_PASSWORD)
    )
    assert (await cp.result("BootNotification", BOOT))["status"] == "Accepted"
    await cp.close()
    cp = await RawCharger.open(f"{server.ocpp_url}/A+B", headers=basic_auth("A+B", CP_PASSWORD))
    await cp.close()
    assert (
        await refused(
            f"{server.ocpp_url}/Test%2520Wallbox%257C01",
            headers=basic_auth("Test%20Wallbox%7C01", CP_PASSWORD),
        )
        == 404
    )
    _, body = await server.api("GET", "/api/v1/charge-points/Test%20Wallbox%7C01", expect=200)
    assert body["vendor"] == "ExampleVendor"


async def test_no_subprotocol_is_served_as_16_and_root_path_uses_basic_auth(server: Server) -> None:
    """Field case Q13: a Grizzl-E offers no subprotocol and may connect on '/'."""
    await server.register("GRIZZ")
    root = server.ocpp_url.removesuffix("/ocpp")
    cp = await RawCharger.open(
        f"{root}/", subprotocols=[], headers=basic_auth("GRIZZ", CP_PASSWORD)
    )
    assert cp.ws.subprotocol is None  # never echo one the client did not offer
    reply = await cp.result(
        "BootNotification", {"chargePointVendor": "ExampleVendor", "chargePointModel": "Smart-40"}
    )
    assert reply["status"] == "Accepted"
    await cp.close()
    assert await refused(f"{root}/", subprotocols=[]) == 404  # no identity at all
    _, body = await server.api("GET", "/api/v1/charge-points/GRIZZ", expect=200)
    assert body["ocpp_version"] == "ocpp1.6"


async def test_unsupported_subprotocol_is_refused_clearly(server: Server) -> None:
    await server.register("CP1")
    assert (
        await refused(
            f"{server.ocpp_url}/CP1",
            subprotocols=["ocpp1.2"],
            headers=basic_auth("CP1", CP_PASSWORD),
        )
        == 400
    )


async def test_bad_paths_are_refused(server: Server) -> None:
    root = server.ocpp_url.removesuffix("/ocpp")
    assert await refused(f"{root}/a/b/c") == 400
    assert await refused(f"{server.ocpp_url}/{'x' * 49}") == 400


async def test_second_connection_replaces_first(server: Server) -> None:
    """Field case Q14: the new authenticated connection wins; the old socket is closed; the
    old one's cleanup does not unregister the new one; transactions survive the swap."""
    await server.register("CP-TEST-14")
    url = f"{server.ocpp_url}/CP-TEST-14"
    auth = basic_auth("CP-TEST-14", CP_PASSWORD)
    first = await RawCharger.open(url, headers=auth)
    await first.result("BootNotification", BOOT)
    await server.api("PUT", "/api/v1/id-tags/TAG14", {"status": "Accepted"}, expect=200)
    start = await first.result(
        "StartTransaction",
        {
            "connectorId": 1,
            "idTag": "TAG14",
            "meterStart": 100,
            "timestamp": "2026-01-01T10:00:00Z",
        },
    )
    second = await RawCharger.open(url, headers=auth)
    await asyncio.wait_for(first.ws.wait_closed(), 5)
    assert first.ws.close_code == 1001
    assert (await second.result("Heartbeat", {}))["currentTime"].endswith("Z")
    await asyncio.sleep(0.1)
    _, body = await server.api("GET", "/api/v1/charge-points/CP-TEST-14", expect=200)
    assert body["connected"] is True
    await second.result(
        "StopTransaction",
        {
            "transactionId": start["transactionId"],
            "meterStop": 600,
            "timestamp": "2026-01-01T11:00:00Z",
        },
    )
    _, txs = await server.api("GET", "/api/v1/transactions?charge_point_id=CP-TEST-14", expect=200)
    assert [(t["status"], t["energy_wh"]) for t in txs["items"]] == [("completed", 500)]
    await second.close()
    await asyncio.sleep(0.2)
    _, body = await server.api("GET", "/api/v1/charge-points/CP-TEST-14", expect=200)
    assert body["connected"] is False
    assert body["last_seen"] is not None


async def test_unknown_ids_refused_unless_auto_register(server_factory: Any) -> None:
    strict: Server = await server_factory()
    assert await refused(f"{strict.ocpp_url}/NEW1") == 404
    await strict.app.stop()
    lenient: Server = await server_factory(auto_register=True)
    cp = await RawCharger.open(f"{lenient.ocpp_url}/NEW1")
    assert (await cp.result("BootNotification", BOOT))["status"] == "Accepted"
    await cp.close()
    _, body = await lenient.api("GET", "/api/v1/charge-points/NEW1", expect=200)
    assert body["security_profile"] == 0


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path)


async def test_profile_2_tls_and_basic(server_factory: Any, pki: Pki) -> None:
    srv: Server = await server_factory(
        tls_cert_file=pki.folder / "server.crt", tls_key_file=pki.folder / "server.key"
    )
    await srv.register("SP2", profile=2)
    url = f"{srv.ocpp_url}/SP2"
    assert url.startswith("wss://")
    ctx = pki.client_context()
    assert await refused(url, ssl_context=ctx) == 401
    assert await refused(url, ssl_context=ctx, headers=basic_auth("SP2", "x" * 20)) == 401
    cp = await RawCharger.open(url, ssl_context=ctx, headers=basic_auth("SP2", CP_PASSWORD))
    assert (await cp.result("BootNotification", BOOT))["status"] == "Accepted"
    await cp.close()
    # a client that does not trust our CA cannot even connect
    with pytest.raises(ssl.SSLCertVerificationError):
        await RawCharger.open(
            url, ssl_context=ssl.create_default_context(), headers=basic_auth("SP2", CP_PASSWORD)
        )


async def test_profile_2_needs_tls(server: Server) -> None:
    await server.register("SP2", profile=2)
    assert await refused(f"{server.ocpp_url}/SP2", headers=basic_auth("SP2", CP_PASSWORD)) == 403


async def test_profile_3_client_certificate(server_factory: Any, pki: Pki, tmp_path: Path) -> None:
    srv: Server = await server_factory(
        tls_cert_file=pki.folder / "server.crt",
        tls_key_file=pki.folder / "server.key",
        tls_ca_file=pki.ca_file,
    )
    await srv.register("SP3", password=None, profile=3)
    pki.issue("sp3", "SP3")
    pki.issue("other", "OTHER")
    url = f"{srv.ocpp_url}/SP3"
    assert await refused(url, ssl_context=pki.client_context()) == 401  # no certificate
    assert await refused(url, ssl_context=pki.client_context("other")) == 403  # CN mismatch
    (tmp_path / "rogue").mkdir()
    rogue = Pki.create(tmp_path / "rogue")
    rogue.issue("sp3", "SP3")  # right CN, signed by a CA we do not trust
    rogue_ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    rogue_ctx.load_cert_chain(str(rogue.folder / "sp3.crt"), str(rogue.folder / "sp3.key"))
    with pytest.raises((ssl.SSLError, InvalidMessage, OSError)):
        c = await RawCharger.open(url, ssl_context=rogue_ctx)
        await c.result("Heartbeat", {})
    cp = await RawCharger.open(url, ssl_context=pki.client_context("sp3"))
    assert (await cp.result("BootNotification", BOOT))["status"] == "Accepted"
    await cp.close()


async def test_password_guessing_is_throttled_per_charge_point(server: Server) -> None:
    """After 5 failed logins in a minute, new passwords are refused (429) without argon2 work;
    a charger whose password was verified before still gets in; other ids are unaffected."""
    await server.register("GUESS1")
    await server.register("OTHER1")
    url = f"{server.ocpp_url}/GUESS1"
    cp = await RawCharger.open(url, headers=basic_auth("GUESS1", CP_PASSWORD))
    await cp.close()
    statuses = [await refused(url, headers=basic_auth("GUESS1", f"wrong-password-{i:04d}"))
                for i in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    cp = await RawCharger.open(url, headers=basic_auth("GUESS1", CP_PASSWORD))  # known: cached
    await cp.close()
    other = await RawCharger.open(f"{server.ocpp_url}/OTHER1",
                                  headers=basic_auth("OTHER1", CP_PASSWORD))
    await other.close()
