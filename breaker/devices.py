"""Device simulators for tests and demos: they play the *hardware*, not the driver.

* :class:`SimulatedShellyDevice` connects to an MQTT broker as a Shelly Gen2+ switch would
  (Shelly Gen2 API docs: "RPC Protocol", "RPC Channels", "Notifications", "MQTT", "Switch"):
  last will ``<prefix>/online`` = ``false`` (retained; ``true`` once connected), answers RPC
  requests from ``<prefix>/rpc`` on ``<src>/rpc`` (``Switch.Set``, ``Switch.Toggle``,
  ``Switch.GetStatus``, ``Shelly.GetStatus``), publishes ``NotifyStatus`` on
  ``<prefix>/events/rpc`` on change and periodically, and (``generic_status=True``) the full
  switch status on ``<prefix>/status/switch:<id>``.
* :class:`SimulatedTasmotaDevice` is a Tasmota plug with an energy monitor (Tasmota docs:
  "MQTT", "Commands", "JSON Status Responses"): LWT ``tele/<topic>/LWT`` ``Online`` /
  ``Offline`` (retained), ``cmnd/<topic>/POWER`` (ON/OFF/TOGGLE/1/0/2, empty = query) answered
  on ``stat/<topic>/RESULT`` and ``stat/<topic>/POWER``, ``cmnd/<topic>/Status 8`` answered on
  ``stat/<topic>/STATUS8``, telemetry ``tele/<topic>/STATE`` and ``tele/<topic>/SENSOR`` every
  ``tele_period_s``.
* :class:`SimulatedModbusDevice` is a Modbus TCP relay + meter on pymodbus's own server
  (``ModbusTcpServer`` with a ``SimDevice`` whose action callback refreshes the registers on
  every request), laid out by default like :mod:`breaker.modbus`'s default register map.

All share a meter: a load in W drawn while the relay is on, a ``speed`` time factor and an exact
:class:`fractions.Fraction` energy register in Wh (published rounded down: Shelly ``aenergy.total``
to 0.001 Wh, Tasmota ``ENERGY.Total`` to 0.001 kWh, Modbus to the register's resolution). A
``clock`` callable (monotonic seconds) can be injected for exact tests.

Trips: Shelly ``trip(kind)`` turns the output off and reports ``errors: [kind]``; the simulated
Shelly refuses to switch on again until :meth:`reset_trip` (a simulator choice, stated here).
Tasmota has no trip state: ``trip()`` does what its power-limit protection does (a
``{"MaxPowerReached": "<W>W"}`` warning on ``stat/<topic>/WARNING``, then relay off). Modbus
``trip()`` sets the tripped discrete input and opens the relay until ``reset_trip()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import aiomqtt
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from breaker.modbus import (
    DEFAULT_CURRENT,
    DEFAULT_ENERGY,
    DEFAULT_POWER,
    DEFAULT_TRIPPED,
    DEFAULT_VOLTAGE,
    BitSpec,
    RegisterSpec,
)
from breaker.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class _Meter:
    """A relay with a metered load: exact Wh while on."""

    def __init__(
        self, power_w: float, voltage_v: float, speed: float, start_energy_wh: int, clock: Clock
    ) -> None:
        self.clock = clock
        self.power_w = Fraction(power_w)
        self.voltage_v = voltage_v
        self.speed = Fraction(speed)
        self.energy = Fraction(start_energy_wh)
        self.on = False
        self._last = Fraction(clock())

    def accrue(self) -> Fraction:
        """Bring the register up to now; returns it (Wh)."""
        now = Fraction(self.clock())
        if self.on and now > self._last:
            self.energy += self.power_w * (now - self._last) * self.speed / 3600
        self._last = now
        return self.energy

    def set_on(self, on: bool) -> None:
        self.accrue()
        self.on = on

    def set_load(self, power_w: float) -> None:
        if power_w < 0:
            raise ValueError("power_w must be >= 0")
        self.accrue()
        self.power_w = Fraction(power_w)

    @property
    def power_now(self) -> float:
        """W drawn now."""
        return float(self.power_w) if self.on else 0.0

    @property
    def current_now(self) -> float:
        """A drawn now."""
        return self.power_now / self.voltage_v


def _thousandths(value: Fraction) -> float:
    """``value`` rounded down to 0.001, as the float a device would print."""
    return float(Decimal(math.floor(value * 1000)) / 1000)


class _Metered:
    """What every simulated device shows a test: its relay and its exact register."""

    meter: _Meter

    @property
    def output(self) -> bool:
        """The relay output."""
        return self.meter.on

    @property
    def energy_wh(self) -> Fraction:
        """The exact register, Wh."""
        return self.meter.accrue()


class _MqttDevice(_Metered):
    """The MQTT session shared by the simulated Shelly and Tasmota."""

    def __init__(self, host: str, port: int, client_id: str, period_s: float) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.period_s = period_s
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.received: list[tuple[str, str]] = []
        """Every (topic, payload) the device received, for assertions."""

    # subclass hooks
    def _will(self) -> aiomqtt.Will:
        raise NotImplementedError

    def _subscriptions(self) -> list[str]:
        raise NotImplementedError

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        raise NotImplementedError

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def _periodic(self, client: aiomqtt.Client) -> None:
        raise NotImplementedError

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        raise NotImplementedError

    async def start(self, timeout_s: float = 5.0) -> None:
        """Connect to the broker (publishing the online state) and serve until stopped.

        Raises:
            TimeoutError: not connected within ``timeout_s`` seconds.
        """
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.create_task(self._run(), name=f"sim-{self.client_id}")
        async with asyncio.timeout(timeout_s):
            while not self._ready.is_set():
                if self._task.done():
                    self._task.result()  # raises the connection error
                    raise ConnectionError("device session ended")
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Publish the offline state (retained) and disconnect cleanly. Idempotent."""
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._goodbye(client)
        await self._cancel()

    async def go_offline(self) -> None:
        """Lose the connection without an MQTT DISCONNECT (like a power cut): the broker
        publishes the device's last will."""
        client = self._client
        if client is not None:
            # aiomqtt has no public "drop"; shut the paho socket down under it
            sock = client._client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        await self._cancel()

    async def _cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        self._client = None
        self._ready.clear()

    async def publish(self, topic: str, payload: Any, *, retain: bool = False) -> None:
        """Publish ``payload`` (dicts as JSON) if connected."""
        client = self._client
        if client is None:
            return
        text = payload if isinstance(payload, str) else json.dumps(payload)
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(topic, text, qos=1, retain=retain)

    async def _run(self) -> None:
        async with aiomqtt.Client(
            self.host, self.port, identifier=self.client_id, will=self._will(), keepalive=10
        ) as client:
            for topic in self._subscriptions():
                await client.subscribe(topic, qos=1)
            self._client = client
            await self._on_connected(client)
            self._ready.set()
            ticker = asyncio.create_task(self._tick(client))
            try:
                async for message in client.messages:
                    topic, raw = str(message.topic), bytes(message.payload or b"")
                    self.received.append((topic, raw.decode(errors="replace")))
                    try:
                        await self._handle(client, topic, raw)
                    except aiomqtt.MqttError:
                        raise
                    except Exception:
                        log.exception("simulated device %s: bad message", self.client_id)
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await ticker

    async def _tick(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self._periodic(client)


@dataclass
class _ShellyState:
    errors: list[str]
    source: str = "init"


class SimulatedShellyDevice(_MqttDevice):
    """A Shelly Gen2+ metered switch on MQTT (see the module docstring).

    Args:
        host, port: the MQTT broker.
        prefix: the device's topic prefix (its id by default on real devices).
        switch_id: the Switch component id.
        power_w: the load while on, W. voltage_v: V. speed: time factor.
        start_energy_wh: the register at start, Wh.
        generic_status: also publish the full status on ``<prefix>/status/switch:<id>``.
        status_interval_s: seconds between periodic status publications.
        clock: monotonic seconds (injectable).
    """

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        *,
        switch_id: int = 0,
        power_w: float = 3680.0,
        voltage_v: float = 230.0,
        speed: float = 1.0,
        start_energy_wh: int = 0,
        generic_status: bool = True,
        status_interval_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(host, port, f"{prefix}-device", status_interval_s)
        self.prefix = prefix
        self.switch_id = switch_id
        self.generic_status = generic_status
        self.meter = _Meter(power_w, voltage_v, speed, start_energy_wh, clock)
        self._state = _ShellyState(errors=[])

    def status(self) -> dict[str, Any]:
        """The Switch status object (``Switch.GetStatus`` result)."""
        total = self.meter.accrue()
        doc: dict[str, Any] = {
            "id": self.switch_id,
            "source": self._state.source,
            "output": self.meter.on,
            "apower": round(self.meter.power_now, 1),
            "voltage": round(self.meter.voltage_v, 1),
            "current": round(self.meter.current_now, 3),
            "aenergy": {"total": _thousandths(total), "by_minute": [0.0, 0.0, 0.0],
                        "minute_ts": int(time.time())},
            "temperature": {"tC": 41.2, "tF": 106.2},
        }
        if self._state.errors:
            doc["errors"] = list(self._state.errors)
        return doc

    async def set_load(self, power_w: float) -> None:
        """Change the load, W, and publish the new status."""
        self.meter.set_load(power_w)
        await self._announce()

    async def trip(self, kind: str = "overpower") -> None:
        """Protection fires: output off, ``errors: [kind]`` until :meth:`reset_trip`."""
        self.meter.set_on(False)
        self._state.errors = [kind]
        self._state.source = kind
        await self._announce({"output": False, "errors": [kind]})

    async def reset_trip(self) -> None:
        """Clear the errors (the output stays off)."""
        self._state.errors = []
        await self._announce({"errors": []})

    # -- MQTT -----------------------------------------------------------------------------

    def _will(self) -> aiomqtt.Will:
        return aiomqtt.Will(f"{self.prefix}/online", "false", qos=1, retain=True)

    def _subscriptions(self) -> list[str]:
        return [f"{self.prefix}/rpc"]

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        await client.publish(f"{self.prefix}/online", "true", qos=1, retain=True)
        await self._announce()

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        await client.publish(f"{self.prefix}/online", "false", qos=1, retain=True)

    async def _periodic(self, client: aiomqtt.Client) -> None:
        s = self.status()
        await self._announce({k: s[k] for k in ("apower", "voltage", "current", "aenergy")})

    async def _announce(self, changed: dict[str, Any] | None = None) -> None:
        full = self.status()
        if self.generic_status:
            await self.publish(f"{self.prefix}/status/switch:{self.switch_id}", full)
        part = {"id": self.switch_id, **(changed if changed is not None else full)}
        await self.publish(f"{self.prefix}/events/rpc", {
            "src": self.client_id, "dst": f"{self.prefix}/events", "method": "NotifyStatus",
            "params": {"ts": round(time.time(), 2), f"switch:{self.switch_id}": part},
        })

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("src"), str):
            return  # no src: no one to answer
        raw_params = frame.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        method = frame.get("method")
        answer: dict[str, Any] = {"id": frame.get("id"), "src": self.client_id,
                                  "dst": frame["src"]}
        changed: dict[str, Any] | None = None
        if method in ("Switch.Set", "Switch.Toggle") and params.get("id") == self.switch_id:
            was_on = self.meter.on
            want = (not was_on) if method == "Switch.Toggle" else bool(params.get("on"))
            if want and self._state.errors:
                want = False  # tripped: must be reset first (simulator choice)
            if want != was_on:
                self.meter.set_on(want)
                self._state.source = "MQTT"
                changed = {"output": want, "source": "MQTT"}
            answer["result"] = {"was_on": was_on}
        elif method == "Switch.GetStatus" and params.get("id") == self.switch_id:
            answer["result"] = self.status()
        elif method == "Shelly.GetStatus":
            answer["result"] = {f"switch:{self.switch_id}": self.status()}
        else:
            answer["error"] = {"code": 404, "message": f"No handler for {method}"}
        await client.publish(f"{frame['src']}/rpc", json.dumps(answer), qos=1)
        if changed is not None:
            await self._announce(changed)


class SimulatedTasmotaDevice(_MqttDevice):
    """A Tasmota plug with energy monitoring on MQTT (see the module docstring).

    Args:
        host, port: the MQTT broker.
        topic: the device topic (``%topic%``).
        relay: None for ``POWER`` (one relay) or n for ``POWER<n>``.
        power_w: the load while on, W. voltage_v: V. speed: time factor.
        start_energy_wh: the register at start, Wh.
        tele_period_s: seconds between ``tele/<topic>/STATE`` + ``SENSOR`` (Tasmota TelePeriod).
        clock: monotonic seconds (injectable).
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        *,
        relay: int | None = None,
        power_w: float = 3680.0,
        voltage_v: float = 230.0,
        speed: float = 1.0,
        start_energy_wh: int = 0,
        tele_period_s: float = 300.0,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(host, port, f"{topic}-device", tele_period_s)
        self.topic = topic
        self.power_key = f"POWER{relay}" if relay else "POWER"
        self.meter = _Meter(power_w, voltage_v, speed, start_energy_wh, clock)

    def energy(self) -> dict[str, Any]:
        """The ``ENERGY`` object (Total kWh to 0.001, Power W, Voltage V, Current A)."""
        wh = self.meter.accrue()
        return {
            "TotalStartTime": "2024-01-01T00:00:00",
            "Total": _thousandths(Fraction(math.floor(wh), 1000)),
            "Yesterday": 0.0,
            "Today": 0.0,
            "Power": round(self.meter.power_now),
            "ApparentPower": round(self.meter.power_now),
            "ReactivePower": 0,
            "Factor": 1.0 if self.meter.on else 0.0,
            "Voltage": round(self.meter.voltage_v),
            "Current": round(self.meter.current_now, 3),
        }

    async def set_load(self, power_w: float) -> None:
        """Change the load, W, and publish telemetry."""
        self.meter.set_load(power_w)
        await self.publish(f"tele/{self.topic}/SENSOR", {"Time": _now(), "ENERGY": self.energy()})

    async def trip(self, kind: str = "overpower") -> None:
        """What Tasmota's power limit does: a ``MaxPowerReached`` warning, then relay off
        (``kind`` is not reported: the firmware only knows the power limit)."""
        watts = round(float(self.meter.power_w))
        await self.publish(f"stat/{self.topic}/WARNING", {"MaxPowerReached": f"{watts}W"})
        await self._set_power(False)

    # -- MQTT -----------------------------------------------------------------------------

    def _will(self) -> aiomqtt.Will:
        return aiomqtt.Will(f"tele/{self.topic}/LWT", "Offline", qos=1, retain=True)

    def _subscriptions(self) -> list[str]:
        return [f"cmnd/{self.topic}/#"]

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        await client.publish(f"tele/{self.topic}/LWT", "Online", qos=1, retain=True)
        await self._periodic(client)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        await client.publish(f"tele/{self.topic}/LWT", "Offline", qos=1, retain=True)

    async def _periodic(self, client: aiomqtt.Client) -> None:
        state = "ON" if self.meter.on else "OFF"
        await self.publish(f"tele/{self.topic}/STATE", {"Time": _now(), self.power_key: state})
        await self.publish(f"tele/{self.topic}/SENSOR", {"Time": _now(), "ENERGY": self.energy()})

    async def _set_power(self, on: bool) -> None:
        self.meter.set_on(on)
        await self._report_power()

    async def _report_power(self) -> None:
        state = "ON" if self.meter.on else "OFF"
        await self.publish(f"stat/{self.topic}/RESULT", {self.power_key: state})
        await self.publish(f"stat/{self.topic}/{self.power_key}", state)

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        command = topic.rsplit("/", 1)[-1].upper()
        arg = payload.decode(errors="replace").strip().upper()
        if command == self.power_key or (command == "POWER1" and self.power_key == "POWER"):
            if arg in ("ON", "1"):
                await self._set_power(True)
            elif arg in ("OFF", "0"):
                await self._set_power(False)
            elif arg in ("TOGGLE", "2"):
                await self._set_power(not self.meter.on)
            else:
                await self._report_power()
        elif command == "STATUS" and arg == "8":
            await self.publish(f"stat/{self.topic}/STATUS8",
                               {"StatusSNS": {"Time": _now(), "ENERGY": self.energy()}})
        else:
            await self.publish(f"stat/{self.topic}/RESULT", {"Command": "Unknown"})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


class SimulatedModbusDevice(_Metered):
    """A Modbus TCP relay + meter served by pymodbus (see the module docstring).

    Args:
        host, port: where to listen.
        relay_coil: the relay coil address. tripped: the tripped bit (None: none).
        energy / power / current / voltage: register specs (None: absent); defaults are
            :mod:`breaker.modbus`'s default map.
        power_w: the load while on, W. voltage_v: V. speed: time factor.
        start_energy_wh: the register at start, Wh.
        clock: monotonic seconds (injectable).

    Any unit id is answered. Addresses 0..255 exist for coils / discrete inputs and 0..63 for
    holding / input registers; others answer "illegal data address".
    """

    BITS = 256
    REGISTERS = 64

    def __init__(
        self,
        host: str,
        port: int,
        *,
        relay_coil: int = 0,
        tripped: BitSpec | None = DEFAULT_TRIPPED,
        energy: RegisterSpec | None = DEFAULT_ENERGY,
        power: RegisterSpec | None = DEFAULT_POWER,
        current: RegisterSpec | None = DEFAULT_CURRENT,
        voltage: RegisterSpec | None = DEFAULT_VOLTAGE,
        power_w: float = 3680.0,
        voltage_v: float = 230.0,
        speed: float = 1.0,
        start_energy_wh: int = 0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.relay_coil = relay_coil
        self.tripped_spec = tripped
        self.registers = {"energy": energy, "power": power, "current": current,
                          "voltage": voltage}
        self.meter = _Meter(power_w, voltage_v, speed, start_energy_wh, clock)
        self.tripped = False
        self._server: ModbusTcpServer | None = None
        self.requests = 0
        """Requests served (for assertions)."""

    def set_load(self, power_w: float) -> None:
        """Change the load drawn while on, W."""
        self.meter.set_load(power_w)

    def trip(self) -> None:
        """Protection fires: relay off, tripped bit set until :meth:`reset_trip`."""
        self.meter.set_on(False)
        self.tripped = True

    def reset_trip(self) -> None:
        """Clear the tripped bit (the relay stays off)."""
        self.tripped = False

    async def start(self) -> None:
        """Listen on ``host:port``.

        Raises:
            RuntimeError: the port could not be bound.
        """
        bits = [SimData(0, count=self.BITS, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=self.REGISTERS, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(
            id=0,
            simdata=(list(bits), list(bits), list(regs), list(regs)),
            use_bit_addressing=True,
            action=self._action,
        )
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        """Stop listening and drop the connections. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        """pymodbus SimDevice action: apply coil writes, refresh the block being accessed."""
        self.requests += 1
        if function_code in (5, 15) and set_values:
            values = list(set_values)
            for i, value in enumerate(values):
                if address + i == self.relay_coil:
                    on = bool(value) and not self.tripped
                    set_values[i] = on  # a tripped relay does not close
                    self.meter.set_on(on)
            return
        self.meter.accrue()
        if function_code in (1, 5, 15):
            _set_bit(registers, start_address, self.relay_coil, self.meter.on)
            if self.tripped_spec is not None and self.tripped_spec.kind == "coil":
                _set_bit(registers, start_address, self.tripped_spec.address,
                         self.tripped == self.tripped_spec.value)
        elif function_code == 2:
            if self.tripped_spec is not None and self.tripped_spec.kind == "discrete_input":
                _set_bit(registers, start_address, self.tripped_spec.address,
                         self.tripped == self.tripped_spec.value)
        else:
            kind = "input" if function_code == 4 else "holding"
            values_now = {
                "energy": Decimal(math.floor(self.meter.energy)),
                "power": _dec(self.meter.power_now),
                "current": _dec(self.meter.current_now),
                "voltage": _dec(self.meter.voltage_v),
            }
            for name, spec in self.registers.items():
                if spec is None or spec.kind != kind:
                    continue
                offset = spec.address - start_address
                if offset >= 0 and offset + spec.words <= len(registers):
                    registers[offset: offset + spec.words] = spec.encode(values_now[name])


def _dec(value: float) -> Decimal:
    return Decimal(repr(value))


def _set_bit(registers: list[int], start_register: int, address: int, value: bool) -> None:
    """Set bit ``address`` in a bit block packed 16 per register, LSB first."""
    index = address // 16 - start_register
    if not 0 <= index < len(registers):
        return
    mask = 1 << (address % 16)
    registers[index] = (registers[index] | mask) if value else (registers[index] & ~mask)
