"""The embedded Stripe emulator: loopback only, free or given port, data file or memory."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import localstripe.resources
import pytest

from billing.emulator import start_emulator
from billing.errors import StripeRejected
from billing.stripe_edge import StripeEdge


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_given_port_data_file_and_restart(tmp_path: Path) -> None:
    original_dump = localstripe.resources.Store.dump_to_disk
    port = free_port()
    data = tmp_path / "stripe" / "emulator.pickle"
    emu = await start_emulator(port=port, data_file=data, flush_interval=0.05)
    assert emu.api_base == f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(RuntimeError):  # localstripe has one store per process
            await start_emulator()
        async with StripeEdge("sk_test_x", api_base=emu.api_base, timeout=5) as edge:
            customer = await edge.create_customer(email="a@example.com", driver_id="d",
                                                  idempotency_key="k")
    finally:
        await emu.stop()
    assert data.exists()
    assert localstripe.resources.Store.dump_to_disk is original_dump  # patches undone
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(emu.api_base):
            pass

    again = await start_emulator(data_file=data)  # same objects after a restart
    try:
        async with StripeEdge("sk_test_x", api_base=again.api_base, timeout=5) as edge:
            cus = await edge.set_default_payment_method(customer["id"], "pm_card_visa",
                                                        idempotency_key="k2")
            assert cus["id"] == customer["id"]
    finally:
        await again.stop()

    fresh = await start_emulator()  # no data file: starts empty
    try:
        async with StripeEdge("sk_test_x", api_base=fresh.api_base, timeout=5) as edge:
            with pytest.raises(StripeRejected):
                await edge.set_default_payment_method(customer["id"], "pm_card_visa",
                                                      idempotency_key="k3")
    finally:
        await fresh.stop()


async def test_register_webhook_validates(tmp_path: Path) -> None:
    emu = await start_emulator()
    try:
        await emu.register_webhook("http://127.0.0.1:9/hook", "whsec_x")
        with pytest.raises(aiohttp.ClientResponseError):
            await emu.register_webhook("not-a-url", "whsec_x")
    finally:
        await emu.stop()
