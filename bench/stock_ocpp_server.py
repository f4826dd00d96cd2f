"""A minimal OCPP 1.6 central system on the stock ``ocpp`` library (reference for the benchmark).

Built the way the library's README does it: one ``ocpp.v16.ChargePoint`` per websocket with
``@on`` handlers for the actions of the benchmark mix, the library's default validation (request
and response checked with jsonschema in the default thread pool), no database, no metrics.

    .venv/bin/python bench/stock_ocpp_server.py --port 0   # prints "stock: OCPP on port N"

Used by ``bench/ocpp_load.py --compare-stock`` to reproduce the "stock ``ocpp`` stack" number of
the performance budget. Not part of the product.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
from datetime import UTC, datetime
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

_tx_ids = itertools.count(1)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class StockChargePoint(ChargePoint):
    """Answers the actions of the benchmark mix; keeps nothing."""

    @on(Action.boot_notification)
    async def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str,
                                   **kwargs: Any) -> call_result.BootNotification:
        return call_result.BootNotification(current_time=_now(), interval=300,
                                            status=RegistrationStatus.accepted)

    @on(Action.heartbeat)
    async def on_heartbeat(self) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=_now())

    @on(Action.status_notification)
    async def on_status_notification(self, connector_id: int, error_code: str, status: str,
                                     **kwargs: Any) -> call_result.StatusNotification:
        return call_result.StatusNotification()

    @on(Action.authorize)
    async def on_authorize(self, id_tag: str) -> call_result.Authorize:
        return call_result.Authorize(id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted))

    @on(Action.start_transaction)
    async def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int,
                                   timestamp: str, **kwargs: Any) -> call_result.StartTransaction:
        return call_result.StartTransaction(
            transaction_id=next(_tx_ids),
            id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted),
        )

    @on(Action.meter_values)
    async def on_meter_values(self, connector_id: int, meter_value: list[Any],
                              **kwargs: Any) -> call_result.MeterValues:
        return call_result.MeterValues()

    @on(Action.stop_transaction)
    async def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int,
                                  **kwargs: Any) -> call_result.StopTransaction:
        return call_result.StopTransaction(
            id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted)
        )


async def _handle(ws: ServerConnection) -> None:
    cp_id = ws.request.path.rstrip("/").rsplit("/", 1)[-1] if ws.request else "?"
    try:
        await StockChargePoint(cp_id, ws).start()
    except ConnectionClosed:
        pass


async def _main(host: str, port: int) -> None:
    async with serve(_handle, host, port, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                     compression=None) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"stock: OCPP on port {bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
