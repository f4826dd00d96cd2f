"""Drive the server with an independent OCPP implementation: ``tests/interop/charger.mjs``
(npm ``ocpp-rpc`` in strict mode, installed by ``.ci/run`` with ``npm ci``)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

INTEROP = Path(__file__).parent / "interop"


class NodeCharger:
    """A running ``charger.mjs``; ``events`` are its JSON lines, in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, endpoint: str, identity: str, password: str, protocol: str, scenario: str, *extra: str
    ) -> NodeCharger:
        """Start the charger (the test fails clearly if ``npm ci`` was not run)."""
        node = shutil.which("node")
        assert node, "node is not installed (.ci/run installs it)"
        assert (INTEROP / "node_modules" / "ocpp-rpc").is_dir(), (
            "run `npm ci` in tests/interop (.ci/run does)"
        )
        proc = await asyncio.create_subprocess_exec(
            node,
            str(INTEROP / "charger.mjs"),
            "--endpoint",
            endpoint,
            "--identity",
            identity,
            "--password",
            password,
            "--protocol",
            protocol,
            "--scenario",
            scenario,
            "--linger",
            "60",
            *extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "unparsed", "line": line.decode(errors="replace")}
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    async def wait_for(self, name: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        """The first event called ``name`` whose fields include ``match``."""

        def find() -> dict[str, Any] | None:
            for e in self.events:
                if e.get("event") == name and all(e.get(k) == v for k, v in match.items()):
                    return e
            return None

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(
                    lambda: (
                        find() is not None
                        or any(e.get("event") == "done" for e in self.events)
                        and name != "done"
                    )
                )
        found = find()
        assert found is not None, f"no {name} {match}; events: {self.events}"
        return found

    async def send(
        self, action: str, params: dict[str, Any], timeout: float = 30
    ) -> dict[str, Any]:
        """Make the charger send a call (a JSON line on its stdin); return its CALLRESULT
        payload (the test fails on a CALLERROR)."""
        assert self.proc.stdin is not None
        before = len(
            [
                e
                for e in self.events
                if e.get("action") == action and e.get("event") in ("call-result", "call-error")
            ]
        )
        self.proc.stdin.write(json.dumps({"action": action, "params": params}).encode() + b"\n")
        await self.proc.stdin.drain()

        def answered() -> list[dict[str, Any]]:
            return [
                e
                for e in self.events
                if e.get("action") == action and e.get("event") in ("call-result", "call-error")
            ]

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(answered()) > before)
        event = answered()[before]
        assert event["event"] == "call-result", event
        return event["response"]  # type: ignore[no-any-return]

    def of(self, name: str) -> list[dict[str, Any]]:
        """All events called ``name``."""
        return [e for e in self.events if e.get("event") == name]

    async def finish(self) -> dict[str, Any]:
        """Close its stdin (it disconnects) and return the ``done`` event."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        done = await self.wait_for("done")
        await asyncio.wait_for(self.proc.wait(), 10)
        await self._reader
        return done
