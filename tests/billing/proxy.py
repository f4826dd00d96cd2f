"""A recording, fault-injecting HTTP proxy between the Stripe client and localstripe.

* records every request (method, path, Idempotency-Key, body) and whether it reached upstream;
* injects faults on matching requests: answer an HTTP status without forwarding, or forward and
  then hold the answer back longer than the client waits (a timeout after Stripe acted);
* replays the first answer to a repeated Idempotency-Key, as Stripe does
  (https://docs.stripe.com/api/idempotent_requests) - localstripe itself ignores the header;
* can be stopped and started again on the same port (connection refused in between).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import aiohttp
from aiohttp import web

_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Recorded:
    """One request seen by the proxy."""

    method: str
    path: str
    idempotency_key: str | None
    body: bytes
    forwarded: bool = False
    replayed: bool = False
    status: int | None = None


@dataclass
class Fault:
    """A fault for the next ``times`` requests matching ``method`` and ``path`` (a regex)."""

    method: str
    path: re.Pattern[str]
    status: int | None = None
    """Answer this status without forwarding."""
    delay: float | None = None
    """Forward, then wait this long before answering."""
    times: int = 1


class FaultProxy:
    """See the module docstring. ``url`` is the base address to give the Stripe client."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._cache: dict[str, tuple[int, bytes, str]] = {}
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on the previous port after a stop)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        if self._http is None:
            self._http = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Stop listening: clients now get connection refused."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        """Stop and close the upstream client."""
        await self.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def fail(self, method: str, path: str, *, status: int = 500, times: int = 1) -> None:
        """Answer ``status`` to the next ``times`` matching requests, without forwarding."""
        self.faults.append(Fault(method, re.compile(path), status=status, times=times))

    def delay(self, method: str, path: str, *, seconds: float, times: int = 1) -> None:
        """Forward the next matching requests, then answer only after ``seconds``."""
        self.faults.append(Fault(method, re.compile(path), delay=seconds, times=times))

    def writes(self) -> list[Recorded]:
        """Recorded POST and DELETE requests."""
        return [r for r in self.requests if r.method in ("POST", "DELETE")]

    def count(self, method: str, path: str, *, forwarded: bool = True) -> int:
        """How many matching requests were (forwarded and) seen."""
        pattern = re.compile(path)
        return sum(1 for r in self.requests if r.method == method and pattern.fullmatch(r.path)
                   and (r.forwarded or not forwarded))

    def _fault_for(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and fault.path.fullmatch(path):
                fault.times -= 1
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key = request.headers.get("Idempotency-Key")
        rec = Recorded(request.method, request.path, key, body)
        self.requests.append(rec)
        fault = self._fault_for(request.method, request.path)
        if fault is not None and fault.status is not None:
            rec.status = fault.status
            return web.json_response(
                {"error": {"type": "api_error", "message": "injected by the test proxy"}},
                status=fault.status)
        if key and request.method == "POST" and key in self._cache:
            status, data, ctype = self._cache[key]
            rec.replayed, rec.status = True, status
            return web.Response(status=status, body=data, content_type=ctype)
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._http.request(request.method, self.upstream + request.path_qs,
                                      headers=headers, data=body) as up:
            data = await up.read()
            status = up.status
            ctype = up.content_type
        rec.forwarded, rec.status = True, status
        if key and request.method == "POST" and status < 500:
            self._cache[key] = (status, data, ctype)
        if fault is not None and fault.delay is not None:
            await asyncio.sleep(fault.delay)
        return web.Response(status=status, body=data, content_type=ctype)
