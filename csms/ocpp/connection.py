"""One charger's websocket: the receive loop, dispatch to handlers, and CSMS-initiated calls.

The receive loop handles each CALL inline (no task and no thread per message): parse, validate
with the compiled schema, run the handler (which persists through the group-commit writer),
answer. CALLRESULT / CALLERROR frames resolve the future of the matching CSMS-initiated call.
Handlers must never await a call to the same charger (that would wait on this very loop); they
schedule follow-ups with :meth:`OcppConnection.after_reply`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from csms.errors import CallRejected, CallTimeout, ConnectionLost
from csms.metrics import Metrics
from csms.models import utcnow
from csms.ocpp import rpc
from csms.ocpp.rpc import Call, CallError, CallResult, OcppError

log = logging.getLogger(__name__)


class WebSocket(Protocol):
    """What we need of a websocket connection (websockets' ``ServerConnection`` has it)."""

    async def recv(self) -> str | bytes: ...
    async def send(self, message: str) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@dataclass(slots=True)
class CallContext:
    """What a handler knows about the call it answers."""

    charge_point_id: str
    version: str
    message_id: str
    action: str
    received_at: datetime
    connection: OcppConnection
    warnings: list[str] = field(default_factory=list)


Handler = Callable[[CallContext, dict[str, Any]], Awaitable[dict[str, Any]]]

_KNOWN_ACTIONS = rpc.action_names()

# Labelled children of the per-message metrics, per Metrics object (``labels()`` costs ~1 us).
_CHILDREN: weakref.WeakKeyDictionary[Metrics, dict[tuple[str, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def _count_and_time(metrics: Metrics, action: str, outcome: str, seconds: float) -> None:
    """``messages{action,in,outcome}`` += 1 and ``handle_seconds{action}`` observes."""
    children = _CHILDREN.get(metrics)
    if children is None:
        children = _CHILDREN[metrics] = {}
    if action not in _KNOWN_ACTIONS:
        action = "unknown"  # labels come from chargers: only OCPP action names become labels
    counter = children.get((action, outcome))
    histogram = children.get((action,))
    if counter is None or histogram is None:
        counter = metrics.messages.labels(action, "in", outcome)
        histogram = metrics.handle_seconds.labels(action)
        if len(children) < 1000:  # actions come from chargers: keep the cache bounded
            children[(action, outcome)] = counter
            children[(action,)] = histogram
    counter.inc()
    histogram.observe(seconds)


@dataclass(frozen=True, slots=True)
class Route:
    """A handler for one action. ``tolerant``: a schema deviation is logged and counted, and the
    handler still runs (for messages that carry billing data or must never be refused)."""

    handler: Handler
    tolerant: bool = False


class OcppConnection:
    """An open, authenticated OCPP connection of ``charge_point_id`` speaking ``version``."""

    def __init__(
        self,
        ws: WebSocket,
        charge_point_id: str,
        version: str,
        routes: dict[str, Route],
        metrics: Metrics,
        generation: int,
        on_seen: Callable[[str], None] | None = None,
    ) -> None:
        self.ws = ws
        self.charge_point_id = charge_point_id
        self.version = version
        self.routes = routes
        self.metrics = metrics
        self.generation = generation
        self._on_seen = on_seen
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], str]] = {}
        self._after: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    # -- charger-initiated ----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the socket closes. Never raises on bad frames."""
        try:
            while True:
                raw = await self.ws.recv()
                if self._on_seen is not None:
                    self._on_seen(self.charge_point_id)
                await self._handle_raw(raw)
        finally:
            self.closed = True
            self._fail_pending(ConnectionLost("the connection closed before the answer"))

    async def _handle_raw(self, raw: str | bytes) -> None:
        try:
            frame = rpc.parse_frame(raw)
        except OcppError as exc:
            mid = str(exc.details.pop("messageId", "-1"))
            log.warning("%s: bad frame (%s): %.200r", self.charge_point_id, exc.code, raw)
            self.metrics.messages.labels("?", "in", rpc.wire_code(exc.code, self.version)).inc()
            await self.ws.send(rpc.dump_error(mid, exc, self.version))
            return
        if isinstance(frame, Call):
            await self._handle_call(frame)
        else:
            self._resolve(frame)

    async def _handle_call(self, call: Call) -> None:
        started = time.perf_counter()
        route = self.routes.get(call.action)
        try:
            if route is None:
                if rpc.has_schema(self.version, call.action):
                    raise OcppError("NotSupported", f"{call.action} is not supported")
                raise OcppError("NotImplemented", f"unknown action {call.action!r}")
            ctx = CallContext(
                self.charge_point_id, self.version, call.message_id, call.action, utcnow(), self
            )
            try:
                rpc.validate(self.version, call.action, call.payload)
            except OcppError as exc:
                if not route.tolerant:
                    raise
                ctx.warnings.append(f"{exc.code}: {exc.description}")
                self.metrics.schema_warnings.labels(call.action).inc()
                log.warning(
                    "%s: %s accepted despite %s: %s",
                    self.charge_point_id,
                    call.action,
                    exc.code,
                    exc.description,
                )
            result = await route.handler(ctx, call.payload)
            reply = rpc.dump_result(call.message_id, result)
            outcome = "ok"
        except OcppError as exc:
            reply = rpc.dump_error(call.message_id, exc, self.version)
            outcome = rpc.wire_code(exc.code, self.version)
        except Exception:
            log.exception("%s: handler for %s failed", self.charge_point_id, call.action)
            reply = rpc.dump_error(
                call.message_id, OcppError("InternalError", "internal error"), self.version
            )
            outcome = "InternalError"
        await self.ws.send(reply)
        _count_and_time(self.metrics, call.action, outcome, time.perf_counter() - started)
        if self._after:
            jobs, self._after = self._after, []
            for job in jobs:
                self._spawn(job)

    def after_reply(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` in a task once the current answer has been sent."""
        self._after.append(job)

    def _spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        async def runner() -> None:
            try:
                await job()
            except Exception:
                log.exception("%s: follow-up failed", self.charge_point_id)

        task = asyncio.create_task(runner())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- CSMS-initiated -------------------------------------------------------------------

    async def call(self, action: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a CALL and return the CALLRESULT payload.

        Raises:
            CallTimeout: no answer within ``timeout`` seconds.
            CallRejected: the charger answered a CALLERROR.
            ConnectionLost: the socket closed first.
        """
        if self.closed:
            raise ConnectionLost("the connection is closed")
        message_id = str(uuid.uuid4())
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = (fut, action)
        started = time.perf_counter()
        outcome = "ok"
        try:
            await self.ws.send(rpc.dump_call(message_id, action, payload))
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            outcome = "timeout"
            raise CallTimeout(f"no answer to {action} within {timeout:g} s") from None
        except CallRejected as exc:
            outcome = exc.ocpp_code
            raise
        except ConnectionLost:
            outcome = "connection_lost"
            raise
        except Exception as exc:  # the socket failed while sending
            outcome = "connection_lost"
            raise ConnectionLost(f"send failed: {exc}") from None
        finally:
            self._pending.pop(message_id, None)
            self.metrics.messages.labels(action, "out", outcome).inc()
            self.metrics.call_seconds.labels(action).observe(time.perf_counter() - started)

    def _resolve(self, frame: CallResult | CallError) -> None:
        entry = self._pending.get(frame.message_id)
        if entry is None:
            log.warning("%s: answer to unknown message %s", self.charge_point_id, frame.message_id)
            return
        fut, _action = entry
        if fut.done():
            return
        if isinstance(frame, CallResult):
            fut.set_result(frame.payload)
        else:
            fut.set_exception(CallRejected(frame.code, frame.description, frame.details))

    def _fail_pending(self, exc: Exception) -> None:
        for fut, _action in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket; pending calls fail with :class:`ConnectionLost`."""
        self.closed = True
        self._fail_pending(ConnectionLost(reason or "connection closed"))
        await self.ws.close(code, reason)
