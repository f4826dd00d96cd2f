"""The ``csms`` command: ``serve`` (migrate, then run), ``migrate``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from csms.settings import ConfigError, Settings, load_settings


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets.server").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


async def _serve(settings: Settings) -> None:
    from csms.app import Csms

    app = Csms(settings)
    try:
        await app.start()
    except OSError as exc:
        await app.stop()
        raise SystemExit(
            f"csms: cannot listen ({exc.strerror or exc}): check CSMS_OCPP_HOST/CSMS_OCPP_PORT "
            f"({settings.ocpp_port}) and CSMS_API_HOST/CSMS_API_PORT ({settings.api_port})"
        ) from None
    # Everything built so far (modules, schemas, mappers, compiled statements) lives as long as
    # the process: keep it out of the cyclic collector's full collections, which otherwise
    # stop the event loop for 100-200 ms every second or so under load (the p99 latency).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"csms: OCPP on port {app.ocpp_port}, API on port {app.api_port}", flush=True)
    await stop.wait()
    await app.stop()


async def _migrate(settings: Settings) -> None:
    from csms.migrate import upgrade

    await upgrade(settings.database_url)
    print("csms: database is up to date", flush=True)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop's event loop when it is installed (less loop and socket CPU per
    OCPP message: ~10-15 % more messages/s in bench/ocpp_load.py), else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csms`` console script. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="csms", description="OCPP central system")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="apply migrations and run the OCPP endpoint and the HTTP API")
    sub.add_parser("migrate", help="apply database migrations and exit")
    from csms.simulator import add_arguments, simulate

    add_arguments(sub.add_parser("simulate", help="run simulated OCPP 1.6 chargers"))
    args = parser.parse_args(argv)
    if args.command == "simulate":
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(simulate(args))
        return 0
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"csms: bad configuration: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    runner = {"serve": _serve, "migrate": _migrate}[args.command]
    _run(runner(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
