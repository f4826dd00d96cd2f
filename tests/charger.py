"""A raw OCPP-J charger for tests: sends exact frames (as real chargers do, bugs included),
returns the server's reply frames, and answers the server's calls from a handler table."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

Answer = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]


def basic_auth(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic ``Authorization`` header."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class RawCharger:
    """Connect with :meth:`open`; ``call`` returns the reply frame as a list."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.answers: dict[str, Answer] = {}
        self.received_calls: list[list[Any]] = []
        self._replies: dict[str, asyncio.Future[list[Any]]] = {}
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        url: str,
        subprotocols: list[str] | None = None,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RawCharger:
        """Open a websocket to ``url`` (subprotocols default to ``["ocpp1.6"]``; pass ``[]``
        to offer none)."""
        protos = ["ocpp1.6"] if subprotocols is None else subprotocols
        ws = await connect(
            url,
            subprotocols=protos or None,  # type: ignore[arg-type]
            additional_headers=headers,
            ssl=ssl_context,
            compression=None,
            max_size=None,
            open_timeout=10,
        )
        return cls(ws)

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame[0] == 2:
                self.received_calls.append(frame)
                answer = self.answers.get(frame[2])
                payload: Any = answer(frame[3]) if answer else {}
                if asyncio.iscoroutine(payload):
                    payload = await payload
                if isinstance(payload, list):  # a full frame, e.g. a CALLERROR
                    await self.ws.send(json.dumps(payload))
                else:
                    await self.ws.send(json.dumps([3, frame[1], payload]))
            else:
                fut = self._replies.pop(frame[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(frame)

    async def send_frame(self, frame: list[Any] | str, timeout: float = 60) -> list[Any]:
        """Send a frame (list or raw text) and wait for the reply with the same message id
        (for raw text, the id given in ``frame`` or '-1')."""
        if isinstance(frame, str):
            try:
                mid = json.loads(frame)[1]
            except Exception:
                mid = "-1"
            text = frame
        else:
            mid = frame[1]
            text = json.dumps(frame)
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._replies[str(mid)] = fut
        await self.ws.send(text)
        return await asyncio.wait_for(fut, timeout)

    async def call(
        self, action: str, payload: dict[str, Any], message_id: str | None = None
    ) -> list[Any]:
        """Send a CALL; return the reply frame ``[3, id, payload]`` or ``[4, id, code, ...]``."""
        mid = message_id or f"t{next(self._ids)}"
        return await self.send_frame([2, mid, action, payload])

    async def result(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a CALL and assert a CALLRESULT; return its payload."""
        reply = await self.call(action, payload)
        assert reply[0] == 3, reply
        return reply[2]  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the socket and stop reading."""
        await self.ws.close()
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):
            pass
