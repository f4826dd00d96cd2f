"""An embedded Stripe emulator: localstripe, in-process, on the loopback interface. No real money.

Used by the tests and by ``csms serve`` when no ``STRIPE_API_KEY`` is set. localstripe keeps its
objects in one module-level store, so one emulator runs per process at a time.

What we change around localstripe (it is run from Python rather than its CLI, which binds every
interface and pickles its store to a fixed file in the system temp folder on every write):

* a fresh ``aiohttp`` application with localstripe's middlewares and routes (its own module-level
  app can only ever run on one event loop), served on ``host`` (127.0.0.1) and a free or given
  port;
* ``localstripe.resources.Store.dump_to_disk`` does nothing, or marks the store dirty for a
  background task that writes ``data_file`` in a worker thread (never on the event loop);
* webhook deliveries are kept as tasks we cancel on :meth:`StripeEmulator.stop`, and are not
  started when no webhook endpoint is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["StripeEmulator", "register_webhook", "start_emulator"]

_running: StripeEmulator | None = None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def register_webhook(api_base: str, url: str, secret: str, *, webhook_id: str = "csms",
                           events: list[str] | None = None) -> None:
    """Ask a localstripe at ``api_base`` to deliver events to ``url``, signed with ``secret``.

    ``POST /_config/webhooks/{webhook_id}`` with form fields url, secret (and events[]).

    Raises:
        aiohttp.ClientResponseError: the emulator refused (bad url / secret).
    """
    form: list[tuple[str, str]] = [("url", url), ("secret", secret)]
    for event in events or []:
        form.append(("events[]", event))
    async with aiohttp.ClientSession() as http, http.post(
            f"{api_base.rstrip('/')}/_config/webhooks/{webhook_id}", data=form) as resp:
        resp.raise_for_status()


class StripeEmulator:
    """A running in-process localstripe. Create it with :func:`start_emulator`.

    Attributes:
        host / port: where it listens.
        api_base: ``http://host:port``, the value for ``StripeEdge(api_base=...)``.
        data_file: where the store is saved, or None (kept in memory only).
    """

    def __init__(self, host: str, port: int, runner: web.AppRunner, data_file: Path | None,
                 flush_interval: float, restore: dict[str, Any]) -> None:
        self.host = host
        self.port = port
        self.data_file = data_file
        self._runner = runner
        self._flush_interval = flush_interval
        self._restore = restore
        self._dirty = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None

    @property
    def api_base(self) -> str:
        """The API address (``http://127.0.0.1:PORT``)."""
        return f"http://{self.host}:{self.port}"

    async def reset(self) -> None:
        """Delete every object (``DELETE /_config/data``)."""
        async with aiohttp.ClientSession() as http, http.delete(
                f"{self.api_base}/_config/data") as resp:
            resp.raise_for_status()

    async def register_webhook(self, url: str, secret: str, *, webhook_id: str = "csms",
                               events: list[str] | None = None) -> None:
        """Deliver events to ``url`` signed with ``secret`` (see :func:`register_webhook`)."""
        await register_webhook(self.api_base, url, secret, webhook_id=webhook_id, events=events)

    async def stop(self) -> None:
        """Stop serving, cancel pending webhook deliveries, save the store (if a data file is
        set) and undo the patches. Idempotent."""
        global _running
        if _running is not self:
            return
        await self._runner.cleanup()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._writing is not None:
            await self._writing
            self._writing = None
        await self._flush()
        import localstripe.resources as resources

        for name, value in self._restore.items():
            target = resources.Store if name == "dump_to_disk" else resources
            setattr(target, name, value)
        _running = None

    def _mark_dirty(self) -> None:
        self._dirty = True

    def _schedule_webhook(self, event: Any) -> None:
        import localstripe.webhooks as ls_webhooks

        if not ls_webhooks._webhooks:
            return
        task = asyncio.ensure_future(ls_webhooks._send_webhook(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        if self.data_file is None or not self._dirty:
            return
        from localstripe.resources import store

        if self._writing is not None:  # one write at a time, in order
            await asyncio.shield(self._writing)
        self._dirty = False
        data = pickle.dumps(dict(store), protocol=pickle.HIGHEST_PROTOCOL)
        self._writing = asyncio.ensure_future(
            asyncio.to_thread(_write_atomic, self.data_file, data))
        try:
            await asyncio.shield(self._writing)  # a cancelled flusher lets the write finish
        except Exception:
            self._dirty = True
            raise
        finally:
            if self._writing.done():
                self._writing = None

    async def _run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            await self._flush()


def _build_app() -> web.Application:
    with warnings.catch_warnings():  # its import registers plain-function handlers
        warnings.simplefilter("ignore", DeprecationWarning)
        from localstripe import server

    app = web.Application(middlewares=[server.error_middleware, server.auth_middleware,
                                       server.save_store_middleware])
    app.on_response_prepare.append(server.add_cors_headers)
    for route in server.app.router.routes():
        app.router.add_route(route.method, route.resource.canonical, _as_async(route.handler))
    return app


def _as_async(handler: Any) -> Any:
    """localstripe has plain-function handlers, which aiohttp deprecates: wrap them."""
    if inspect.iscoroutinefunction(handler):
        return handler

    async def run(request: web.Request) -> web.StreamResponse:
        return handler(request)  # type: ignore[no-any-return]

    return run


async def start_emulator(*, host: str = "127.0.0.1", port: int = 0,
                         data_file: str | Path | None = None,
                         flush_interval: float = 0.5) -> StripeEmulator:
    """Start localstripe in this process.

    Args:
        host: interface to listen on (keep the loopback: the emulator has no real auth).
        port: TCP port, 0 for a free one (read it back from ``.port`` / ``.api_base``).
        data_file: file to keep the emulator's objects across restarts (loaded at start if it
            exists, written in a worker thread at most every ``flush_interval`` seconds and at
            stop); None keeps them in memory and starts empty.

    Raises:
        RuntimeError: an emulator is already running in this process.
        OSError: the port is taken.
    """
    global _running
    if _running is not None:
        raise RuntimeError(f"a Stripe emulator already runs at {_running.api_base}")
    import localstripe.resources as resources

    path = Path(data_file) if data_file is not None else None
    loaded: dict[str, Any] = {}
    if path is not None and await asyncio.to_thread(path.exists):
        loaded = pickle.loads(await asyncio.to_thread(path.read_bytes))  # noqa: S301 - our file
    dict.clear(resources.store)
    dict.update(resources.store, loaded)

    restore = {"dump_to_disk": resources.Store.dump_to_disk,
               "schedule_webhook": resources.schedule_webhook}
    runner = web.AppRunner(_build_app(), access_log=None)
    emulator = StripeEmulator(host, port, runner, path, flush_interval, restore)

    def dump(_store: Any) -> None:
        emulator._mark_dirty()

    resources.Store.dump_to_disk = dump
    resources.schedule_webhook = emulator._schedule_webhook
    _running = emulator
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await emulator.stop()
        raise
    emulator.port = runner.addresses[0][1]
    if path is not None:
        emulator._flusher = asyncio.create_task(emulator._run_flusher(),
                                                name="stripe-emulator-flush")
    return emulator
