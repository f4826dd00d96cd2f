"""kill -9 of the server between a StopTransaction's arrival and the capture: after the
restart there is exactly one capture of the right amount.

The server runs as a real ``csms serve`` process; Stripe is localstripe in this process behind
a proxy that forwards the capture but holds Stripe's answer back (Stripe acted, we never heard),
so the restarted server must retry with the same idempotency key and get the same answer (the
proxy replays it, as Stripe does), never a second capture.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from billing.emulator import StripeEmulator
from billing.payments import collected_from
from tests.billing.proxy import FaultProxy
from tests.charger import RawCharger, basic_auth
from tests.conftest import ADMIN_TOKEN, CP_PASSWORD, WEBHOOK_SECRET

CAPTURE = r"^/v1/payment_intents/[^/]+/capture$"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A ``csms serve`` process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "csms.cli",
            "serve",
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(60):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, "csms serve exited:\n" + "".join(self.output)
                self.output.append(line)
                if line.startswith("csms: OCPP on port"):
                    break
        self._drain = asyncio.create_task(self._read_rest())

    async def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.output.append(line.decode())

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._drain

    async def terminate(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)
            await self._drain


@pytest.fixture
async def proxy(emulator: StripeEmulator) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(emulator.api_base)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def api(
    http: aiohttp.ClientSession,
    base: str,
    method: str,
    path: str,
    json: Any = None,
    token: str = ADMIN_TOKEN,
) -> tuple[int, Any]:
    async with http.request(
        method, base + path, json=json, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_kill_9_between_stop_and_capture_captures_once(
    database_url: str, emulator: StripeEmulator, proxy: FaultProxy
) -> None:
    ocpp_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSMS_", "STRIPE_"))}
    env.update(
        {
            "CSMS_DATABASE_URL": database_url,
            "CSMS_OCPP_HOST": "127.0.0.1",
            "CSMS_OCPP_PORT": str(ocpp_port),
            "CSMS_API_HOST": "127.0.0.1",
            "CSMS_API_PORT": str(api_port),
            "CSMS_ADMIN_TOKEN": ADMIN_TOKEN,
            "CSMS_STRIPE_API_BASE": proxy.url,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CSMS_STRIPE_TIMEOUT": "2",
            "CSMS_LOG_LEVEL": "WARNING",
        }
    )
    server = Proc(env)
    await server.start()
    base = f"http://127.0.0.1:{api_port}"
    async with aiohttp.ClientSession() as http:
        try:
            status, _ = await api(
                http,
                base,
                "PUT",
                "/api/v1/charge-points/CRASH1",
                {"password": CP_PASSWORD, "security_profile": 1},
            )
            assert status == 201
            status, driver = await api(
                http, base, "POST", "/api/v1/drivers", {"email": "crash@example.com"}
            )
            assert status == 201, driver
            token = driver["token"]
            status, _ = await api(
                http,
                base,
                "POST",
                "/api/v1/drivers/me/payment-methods",
                {"payment_method_id": "pm_card_visa"},
                token=token,
            )
            assert status == 201
            cp = await RawCharger.open(
                f"ws://127.0.0.1:{ocpp_port}/ocpp/CRASH1", headers=basic_auth("CRASH1", CP_PASSWORD)
            )
            cp.answers["RemoteStartTransaction"] = lambda _p: {"status": "Accepted"}
            await cp.result("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
            status, session = await api(
                http,
                base,
                "POST",
                "/api/v1/sessions",
                {"charge_point_id": "CRASH1", "connector_id": 1},
                token=token,
            )
            assert status == 201, session
            tag = cp.received_calls[-1][3]["idTag"]
            tx_id = (
                await cp.result(
                    "StartTransaction",
                    {
                        "connectorId": 1,
                        "idTag": tag,
                        "meterStart": 1000,
                        "timestamp": "2026-11-30T10:00:00Z",
                    },
                )
            )["transactionId"]

            proxy.delay("POST", CAPTURE, seconds=5)  # Stripe captures; the answer is lost
            assert (
                await cp.result(
                    "StopTransaction",
                    {
                        "transactionId": tx_id,
                        "meterStop": 8500,
                        "timestamp": "2026-11-30T11:00:00Z",
                    },
                )
                == {}
            )
            async with asyncio.timeout(20):
                while proxy.count("POST", CAPTURE) == 0:
                    await asyncio.sleep(0.05)
            await server.kill9()
            await cp.close()
            proxy.faults.clear()

            await server.start()
            sid = session["id"]
            async with asyncio.timeout(60):
                while True:
                    status, body = await api(
                        http, base, "GET", f"/api/v1/sessions/{sid}", token=token
                    )
                    if body.get("status") == "completed":
                        break
                    await asyncio.sleep(0.2)
            assert body["cost"]["amount"] == 300
            assert body["payment"]["captured_amount"] == 300
            assert proxy.count("POST", CAPTURE) == 1  # forwarded to Stripe once, ever
            keys = {r.idempotency_key for r in proxy.requests if r.path.endswith("/capture")}
            assert keys == {f"session:{sid}:capture"}
            async with http.get(
                f"{emulator.api_base}/v1/payment_intents/"
                f"{body['payment']['payment_intent_id']}?expand[]=latest_charge",
                headers={"Authorization": "Bearer sk_test_x"},
            ) as resp:
                intent = await resp.json()
            assert collected_from(intent) == 300
        finally:
            await server.terminate()
