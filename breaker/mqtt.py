"""MQTT breakers (aiomqtt): Shelly Gen2+, Tasmota, and a generic topic/payload mapping.

One background task keeps one broker session (reconnecting with exponential backoff), subscribes
to the device's topics and caches what they say; ``read()`` answers from that cache. All three
``preset`` values are filled-in configurations of one generic machinery (:class:`MqttPlan`):

* a **command** topic with on/off payloads (Shelly instead sends an RPC request);
* **state** rules: topic + optional JSON path + the values meaning on / off / tripped;
* **trip** rules: topic + JSON path + values (a JSON list at the path trips when it holds one of
  them; no values: any value present trips). A trip from such a rule latches until a trip rule
  reads clear or, with ``clear_on_on``, until the state reads on again after having read off
  (an "on" still in flight when the trip arrives does not clear it);
* **meter** rules: topic + JSON path + unit for energy (Wh | kWh), power (W | kW), current (A),
  voltage (V). JSON numbers are parsed as Decimal; energy is rounded down to an integer Wh;
* **availability**: topic + online / offline payloads (the device's MQTT last will);
* **poll** requests published right after each (re)connection and every ``poll_interval_s``.

``read()`` is OFFLINE when the broker session is down, the availability topic says offline, no
state arrived since the session began, or the last state is older than ``stale_after_s``.
``close()``/``open()`` publish the command (QoS 1) and raise :class:`DriverUnavailable` when the
broker session is down or the publish fails.

Sources (facts restated, no code copied):

* Shelly Gen2+ API docs, "RPC Protocol", "RPC Channels" (MQTT), "Notifications", "MQTT"
  component, "Switch" component: requests ``{"id", "src", "method", "params"}`` published to
  ``<prefix>/rpc`` are answered on ``<src>/rpc`` with ``{"id", "src", "dst", "result"|"error"}``;
  ``Switch.Set {"id": N, "on": bool}``; ``Switch.GetStatus {"id": N}`` returns the status
  ``{"id", "output", "apower" (W), "voltage" (V), "current" (A), "aenergy": {"total" (Wh)},
  "errors": [...]}`` (errors include ``overtemp``, ``overpower``, ``overvoltage``,
  ``undervoltage``, ``overcurrent``); ``<prefix>/status/switch:N`` carries the whole status
  (generic status update), ``<prefix>/events/rpc`` carries ``NotifyStatus`` whose
  ``params["switch:N"]`` overlays the changed fields; ``<prefix>/online`` is ``true``/``false``.
* Tasmota docs, "MQTT" and "Commands" / "JSON Status Responses": ``cmnd/<topic>/POWER<n>``
  ``ON``/``OFF`` (empty payload queries); answers on ``stat/<topic>/RESULT`` ``{"POWER": "ON"}``
  and ``stat/<topic>/POWER``; ``tele/<topic>/STATE`` ``{"POWER": ...}``;
  ``tele/<topic>/SENSOR`` ``{"ENERGY": {"Total" (kWh), "Power" (W), "Voltage" (V),
  "Current" (A)}}``; ``cmnd/<topic>/Status 8`` -> ``stat/<topic>/STATUS8``
  ``{"StatusSNS": {"ENERGY": {...}}}``; ``tele/<topic>/LWT`` ``Online``/``Offline``. The base
  firmware has no trip state (its power-limit feature reports ``{"MaxPowerReached": ...}`` on
  ``stat/<topic>/WARNING`` and switches off): the ``tasmota`` preset never reads TRIPPED; use
  ``generic`` with a ``trip`` rule for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Annotated, Any, Literal

import aiomqtt
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from breaker.driver import BreakerDriver, BreakerState, DriverUnavailable, Reading, now_utc
from breaker.tasks import cancel_and_wait

log = logging.getLogger(__name__)

JsonScalar = bool | int | float | str
"""A payload value to compare with (strings compare case-insensitively)."""

SHELLY_TRIP_ERRORS = ("overpower", "overtemp", "overvoltage", "undervoltage", "overcurrent")
"""Shelly Switch ``errors`` entries that mean the output was cut by protection."""

_TOPIC_CHARS = "+#"


def _check_topic(value: str) -> str:
    if not value or any(c in value for c in _TOPIC_CHARS) or "\x00" in value:
        raise ValueError("a topic must be non-empty, without wildcards (+ #)")
    return value


def _check_path(value: str | None) -> str | None:
    if value is not None and (not value or any(not part for part in value.split("."))):
        raise ValueError("a JSON path is dotted keys, e.g. ENERGY.Total or aenergy.total")
    return value


Topic = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_check_topic)]
"""An MQTT topic name (no wildcards)."""
JsonPath = Annotated[str | None, AfterValidator(_check_path)]
"""A dotted JSON path (``ENERGY.Total``), or None for the whole payload."""


def _scalars(*values: JsonScalar) -> list[JsonScalar]:
    return list(values)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CommandSpec(_Model):
    """Generic: publish ``on`` / ``off`` to ``topic`` (QoS 1, not retained)."""

    topic: Topic
    on: str = "ON"
    off: str = "OFF"


class StateSpec(_Model):
    """Generic: the relay state on ``topic`` (raw payload, or the value at ``path``)."""

    topic: Topic
    path: JsonPath = None
    on: list[JsonScalar] = Field(default_factory=lambda: _scalars("ON"))
    off: list[JsonScalar] = Field(default_factory=lambda: _scalars("OFF"))
    tripped: list[JsonScalar] = Field(default_factory=list)


class TripSpec(_Model):
    """Generic: a protection indication on ``topic`` (see the module docstring)."""

    topic: Topic
    path: JsonPath = None
    values: list[JsonScalar] | None = None
    clear_on_on: bool = True


class QuantitySpec(_Model):
    """Where one measurement is in the meter document."""

    path: JsonPath = None
    unit: Literal["Wh", "kWh", "W", "kW", "A", "V"]


class MeterSpec(_Model):
    """Generic: measurements published on ``topic`` (any subset)."""

    topic: Topic
    energy: QuantitySpec | None = None
    power: QuantitySpec | None = None
    current: QuantitySpec | None = None
    voltage: QuantitySpec | None = None


    @field_validator("energy")
    @classmethod
    def _energy_unit(cls, v: QuantitySpec | None) -> QuantitySpec | None:
        if v is not None and v.unit not in ("Wh", "kWh"):
            raise ValueError("energy unit must be Wh or kWh")
        return v

    @field_validator("power")
    @classmethod
    def _power_unit(cls, v: QuantitySpec | None) -> QuantitySpec | None:
        if v is not None and v.unit not in ("W", "kW"):
            raise ValueError("power unit must be W or kW")
        return v

    @field_validator("current")
    @classmethod
    def _current_unit(cls, v: QuantitySpec | None) -> QuantitySpec | None:
        if v is not None and v.unit != "A":
            raise ValueError("current unit must be A")
        return v

    @field_validator("voltage")
    @classmethod
    def _voltage_unit(cls, v: QuantitySpec | None) -> QuantitySpec | None:
        if v is not None and v.unit != "V":
            raise ValueError("voltage unit must be V")
        return v


class AvailabilitySpec(_Model):
    """Generic: the device's availability (last will) topic and payloads."""

    topic: Topic
    online: str = "online"
    offline: str = "offline"


class PollSpec(_Model):
    """Generic: a status request to publish (on connect and every ``poll_interval_s``)."""

    topic: Topic
    payload: str = ""


class _MqttBase(_Model):
    type: Literal["mqtt"] = "mqtt"
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = Field(default=None, max_length=256)
    password_env: str | None = Field(default=None, pattern=r"^BREAKER_[A-Z0-9_]{1,64}$")
    """The name of the environment variable holding the broker password (never the password).
    It must start with ``BREAKER_``: an operator's configuration must not be able to send
    the server's other secrets (``STRIPE_API_KEY``, ``CSMS_ADMIN_TOKEN``...) to a broker."""
    tls: bool = False
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    stale_after_s: float = Field(default=60.0, gt=0, le=86400)
    poll_interval_s: float | None = Field(default=20.0, gt=0, le=86400)
    """Seconds between status requests (None: only right after connecting)."""

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str | None) -> str | None:
        if v is not None:
            _check_topic(v)
        return v


class ShellyGen2Settings(_MqttBase):
    """``{"type": "mqtt", "preset": "shelly_gen2", "prefix": ..., "switch_id": 0}``."""

    preset: Literal["shelly_gen2"]
    prefix: Topic
    """The device's MQTT topic prefix (default on the device: its id, e.g.
    ``shellyplus1pm-a8032ab12345``)."""
    switch_id: int = Field(default=0, ge=0, le=255)


class TasmotaSettings(_MqttBase):
    """``{"type": "mqtt", "preset": "tasmota", "topic": ..., "relay": null}``."""

    preset: Literal["tasmota"]
    topic: Topic
    """The device topic (``%topic%``; full topic ``%prefix%/%topic%/`` assumed)."""
    relay: int | None = Field(default=None, ge=1, le=32)
    """None: ``POWER`` (single relay); n: ``POWER<n>``."""


class GenericMqttSettings(_MqttBase):
    """``{"type": "mqtt", "preset": "generic", "command": ..., "state": ..., ...}``."""

    preset: Literal["generic"]
    command: CommandSpec
    state: list[StateSpec] = Field(min_length=1)
    trip: list[TripSpec] = Field(default_factory=list)
    meter: list[MeterSpec] = Field(default_factory=list)
    availability: AvailabilitySpec | None = None
    poll: list[PollSpec] = Field(default_factory=list)

    @field_validator("state", "trip", "meter", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v


MqttSettings = ShellyGen2Settings | TasmotaSettings | GenericMqttSettings


# -- the generic machinery -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShellyRpc:
    """Shelly Gen2 RPC over MQTT: requests to ``<prefix>/rpc``, answers on ``<src>/rpc``."""

    prefix: str
    switch_id: int

    @property
    def request_topic(self) -> str:
        """Where requests are published."""
        return f"{self.prefix}/rpc"

    @property
    def status_topic(self) -> str:
        """The generic status update topic of the switch."""
        return f"{self.prefix}/status/switch:{self.switch_id}"

    @property
    def events_topic(self) -> str:
        """Where NotifyStatus / NotifyEvent arrive."""
        return f"{self.prefix}/events/rpc"

    @property
    def component(self) -> str:
        """The component key in notifications (``switch:N``)."""
        return f"switch:{self.switch_id}"


@dataclass(frozen=True, slots=True)
class MqttPlan:
    """The normalised topic/payload mapping every preset is turned into."""

    command: CommandSpec | None
    state: Sequence[StateSpec]
    trip: Sequence[TripSpec] = ()
    meter: Sequence[MeterSpec] = ()
    availability: AvailabilitySpec | None = None
    poll: Sequence[PollSpec] = ()
    shelly: ShellyRpc | None = None

    def topics(self, extra: Sequence[str] = ()) -> list[str]:
        """Every topic to subscribe to (deduplicated, in order)."""
        out: list[str] = []
        candidates = [s.topic for s in self.state] + [t.topic for t in self.trip]
        candidates += [m.topic for m in self.meter]
        if self.availability:
            candidates.append(self.availability.topic)
        if self.shelly:
            candidates.append(self.shelly.events_topic)
        for t in [*candidates, *extra]:
            if t not in out:
                out.append(t)
        return out


def shelly_plan(prefix: str, switch_id: int = 0) -> MqttPlan:
    """The Shelly Gen2 Switch mapping (commands go by RPC, see :class:`ShellyRpc`)."""
    rpc = ShellyRpc(prefix, switch_id)
    return MqttPlan(
        command=None,
        state=[StateSpec(topic=rpc.status_topic, path="output", on=[True], off=[False])],
        trip=[
            TripSpec(
                topic=rpc.status_topic,
                path="errors",
                values=list(SHELLY_TRIP_ERRORS),
                clear_on_on=False,
            )
        ],
        meter=[
            MeterSpec(
                topic=rpc.status_topic,
                energy=QuantitySpec(path="aenergy.total", unit="Wh"),
                power=QuantitySpec(path="apower", unit="W"),
                current=QuantitySpec(path="current", unit="A"),
                voltage=QuantitySpec(path="voltage", unit="V"),
            )
        ],
        availability=AvailabilitySpec(topic=f"{prefix}/online", online="true", offline="false"),
        shelly=rpc,
    )


def tasmota_plan(topic: str, relay: int | None = None) -> MqttPlan:
    """The Tasmota mapping (default full topic ``%prefix%/%topic%/``)."""
    power = f"POWER{relay}" if relay else "POWER"
    energy = {
        "energy": QuantitySpec(path="ENERGY.Total", unit="kWh"),
        "power": QuantitySpec(path="ENERGY.Power", unit="W"),
        "current": QuantitySpec(path="ENERGY.Current", unit="A"),
        "voltage": QuantitySpec(path="ENERGY.Voltage", unit="V"),
    }
    status8 = {k: QuantitySpec(path=f"StatusSNS.{v.path}", unit=v.unit) for k, v in energy.items()}
    return MqttPlan(
        command=CommandSpec(topic=f"cmnd/{topic}/{power}", on="ON", off="OFF"),
        state=[
            StateSpec(topic=f"stat/{topic}/{power}"),
            StateSpec(topic=f"stat/{topic}/RESULT", path=power),
            StateSpec(topic=f"tele/{topic}/STATE", path=power),
        ],
        meter=[
            MeterSpec(topic=f"tele/{topic}/SENSOR", **energy),
            MeterSpec(topic=f"stat/{topic}/STATUS8", **status8),
        ],
        availability=AvailabilitySpec(
            topic=f"tele/{topic}/LWT", online="Online", offline="Offline"
        ),
        poll=[
            PollSpec(topic=f"cmnd/{topic}/Status", payload="8"),
            PollSpec(topic=f"cmnd/{topic}/{power}", payload=""),
        ],
    )


def plan_for(settings: MqttSettings) -> MqttPlan:
    """The generic mapping for any preset."""
    if isinstance(settings, ShellyGen2Settings):
        return shelly_plan(settings.prefix, settings.switch_id)
    if isinstance(settings, TasmotaSettings):
        return tasmota_plan(settings.topic, settings.relay)
    return MqttPlan(
        command=settings.command,
        state=settings.state,
        trip=settings.trip,
        meter=settings.meter,
        availability=settings.availability,
        poll=settings.poll,
    )


_MISSING = object()


def extract(document: Any, path: str | None) -> Any:
    """The value at dotted ``path`` in ``document`` (the document itself for None); a
    sentinel (never equal to a payload value) when absent. List items by index."""
    if path is None:
        return document
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _same(value: Any, wanted: JsonScalar) -> bool:
    if isinstance(value, bool) or isinstance(wanted, bool):
        if isinstance(value, str) and isinstance(wanted, bool):
            return value.strip().lower() == str(wanted).lower()
        return value is wanted
    if isinstance(value, str) and isinstance(wanted, str):
        return value.strip().lower() == wanted.strip().lower()
    if isinstance(value, int | float | Decimal) and isinstance(wanted, int | float):
        return Decimal(str(value)) == Decimal(str(wanted))
    return False


def _matches(value: Any, wanted: Sequence[JsonScalar]) -> bool:
    return any(_same(value, w) for w in wanted)


def _number(value: Any) -> Decimal | None:
    """A JSON number (parsed as Decimal) or a numeric string as Decimal; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal | int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except ArithmeticError:
            return None
        return d if d.is_finite() else None
    return None


def parse_payload(payload: bytes) -> Any:
    """A payload as JSON (floats as Decimal) when it is JSON, else its text."""
    text = payload.decode("utf-8", errors="replace")
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        return text


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class _Cache:
    relay_on: bool | None = None
    state_tripped: str | None = None
    trip: str | None = None
    state_mono: float | None = None
    state_at: datetime | None = None
    available: bool | None = None
    energy_wh: int | None = None
    power_w: float | None = None
    current_a: float | None = None
    voltage_v: float | None = None
    documents: dict[str, Any] = field(default_factory=dict)


class MqttBreaker(BreakerDriver):
    """A breaker on MQTT (see the module docstring for the presets and the generic mapping).

    Args:
        settings: a validated ``shelly_gen2`` / ``tasmota`` / ``generic`` configuration.
        password: the broker password (read by :func:`breaker.config.build_driver` from the
            environment variable named by ``password_env``), or None.
        clock: monotonic seconds for staleness (default :func:`time.monotonic`).
        connect_wait_s: how long ``connect()`` waits for the first broker session (seconds).
        reconnect_min_s / reconnect_max_s: reconnection backoff bounds (seconds, doubling).
    """

    kind = "mqtt"

    def __init__(
        self,
        settings: MqttSettings,
        *,
        password: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        connect_wait_s: float = 1.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.plan = plan_for(settings)
        self._password = password
        self._clock = clock
        self._connect_wait_s = connect_wait_s
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self.client_id = settings.client_id or f"parkcharge-{uuid.uuid4().hex[:12]}"
        self._rpc_src = self.client_id
        self._rpc_ids = itertools.count(1)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cache = _Cache()
        self.last_rpc_error: str | None = None
        """The last Shelly RPC error answer (text), for diagnostics."""

    # -- BreakerDriver -------------------------------------------------------------------

    async def connect(self) -> None:
        """Start the background session (idempotent) and wait up to ``connect_wait_s`` for
        it. Never raises: a down broker is retried in the background and reads OFFLINE."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"mqtt-breaker-{self.client_id}")
        await self.wait_connected(self._connect_wait_s)

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once a broker session is up (subscribed), False after ``timeout_s`` seconds."""
        if self._connected.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        return self._connected.is_set()

    async def disconnect(self) -> None:
        """Stop the session task. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        self._set_disconnected()

    async def close(self) -> None:
        """Publish "on" (Shelly: RPC ``Switch.Set {"on": true}``).

        Raises:
            DriverUnavailable: no broker session, or the publish failed.
        """
        await self._command(True)

    async def open(self) -> None:
        """Publish "off" (Shelly: RPC ``Switch.Set {"on": false}``).

        Raises:
            DriverUnavailable: no broker session, or the publish failed.
        """
        await self._command(False)

    async def read(self) -> Reading:
        """The cached state and meter (energy Wh, power W, current A, voltage V); OFFLINE with
        a detail when the broker is down, the device is offline, or the status is stale."""
        c = self._cache
        if self._client is None or not self._connected.is_set():
            return Reading(state=BreakerState.OFFLINE, detail="not connected to the MQTT broker")
        if c.available is False:
            return Reading(state=BreakerState.OFFLINE, detail="device offline (last will)")
        if c.state_mono is None or c.relay_on is None and c.state_tripped is None:
            return Reading(state=BreakerState.OFFLINE, detail="no status from the device yet")
        age = self._clock() - c.state_mono
        if age > self.settings.stale_after_s:
            return Reading(
                state=BreakerState.OFFLINE, detail=f"no status for {age:.0f}s (stale)"
            )
        trip = c.state_tripped or c.trip
        if trip is not None:
            state = BreakerState.TRIPPED
        else:
            state = BreakerState.CLOSED if c.relay_on else BreakerState.OPEN
        return Reading(
            state=state,
            energy_wh=c.energy_wh,
            power_w=c.power_w,
            current_a=c.current_a,
            voltage_v=c.voltage_v,
            at=c.state_at or now_utc(),
            detail=trip,
        )

    # -- the session ---------------------------------------------------------------------

    async def _run(self) -> None:
        s = self.settings
        delay = self._reconnect[0]
        tls_context: ssl.SSLContext | None = None
        if s.tls:
            tls_context = await asyncio.to_thread(ssl.create_default_context)
        extra = [f"{self._rpc_src}/rpc"] if self.plan.shelly else []
        while True:
            try:
                client = aiomqtt.Client(
                    s.host,
                    s.port,
                    username=s.username,
                    password=self._password,
                    identifier=self.client_id,
                    keepalive=s.keepalive_s,
                    timeout=10,
                    tls_context=tls_context,
                )
                async with client:
                    for topic in self.plan.topics(extra):
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    self._cache = _Cache()  # a new session needs a fresh status
                    self._connected.set()
                    delay = self._reconnect[0]
                    log.info("mqtt breaker %s: connected to %s:%s", self.client_id, s.host, s.port)
                    poller = asyncio.create_task(self._poll_loop(client))
                    try:
                        async for message in client.messages:
                            try:
                                self._on_message(str(message.topic), message.payload)
                            except Exception:
                                log.exception("mqtt breaker %s: bad message", self.client_id)
                    finally:
                        poller.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await poller
            except aiomqtt.MqttError as exc:
                log.info("mqtt breaker %s: broker session lost: %s", self.client_id, exc)
            finally:
                self._set_disconnected()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect[1])

    def _set_disconnected(self) -> None:
        self._client = None
        self._connected.clear()

    async def _poll_loop(self, client: aiomqtt.Client) -> None:
        interval = self.settings.poll_interval_s
        while True:
            try:
                await self._poll(client)
            except aiomqtt.MqttError as exc:
                log.info("mqtt breaker %s: poll failed: %s", self.client_id, exc)
            if interval is None:
                return
            await asyncio.sleep(interval)

    async def _poll(self, client: aiomqtt.Client) -> None:
        for p in self.plan.poll:
            await client.publish(p.topic, p.payload, qos=1)
        if self.plan.shelly is not None:
            await self._rpc(client, "Switch.GetStatus", {"id": self.plan.shelly.switch_id})

    async def _rpc(self, client: aiomqtt.Client, method: str, params: dict[str, Any]) -> None:
        assert self.plan.shelly is not None
        frame = {"id": next(self._rpc_ids), "src": self._rpc_src, "method": method,
                 "params": params}
        await client.publish(self.plan.shelly.request_topic, json.dumps(frame), qos=1)

    async def _command(self, on: bool) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            raise DriverUnavailable("not connected to the MQTT broker")
        try:
            if self.plan.shelly is not None:
                params = {"id": self.plan.shelly.switch_id, "on": on}
                await self._rpc(client, "Switch.Set", params)
            else:
                assert self.plan.command is not None
                cmd = self.plan.command
                await client.publish(cmd.topic, cmd.on if on else cmd.off, qos=1)
            await self._poll(client)  # a fresh status (and meter) right after the command
        except aiomqtt.MqttError as exc:
            raise DriverUnavailable(f"MQTT publish failed: {exc}") from exc

    # -- incoming ------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        value = parse_payload(payload)
        shelly = self.plan.shelly
        if shelly is not None:
            if topic == f"{self._rpc_src}/rpc":
                self._on_rpc_answer(shelly, value)
                return
            if topic == shelly.events_topic:
                if isinstance(value, dict) and value.get("method") == "NotifyStatus":
                    params = value.get("params")
                    part = params.get(shelly.component) if isinstance(params, dict) else None
                    if isinstance(part, dict):
                        self._overlay(shelly.status_topic, part)
                return
            if topic == shelly.status_topic and isinstance(value, dict):
                self._cache.documents[topic] = value
        self._ingest(topic, value)

    def _on_rpc_answer(self, shelly: ShellyRpc, frame: Any) -> None:
        if not isinstance(frame, dict):
            return
        if "error" in frame:
            self.last_rpc_error = json.dumps(frame["error"], default=str)
            log.warning("shelly %s: RPC error %s", shelly.prefix, self.last_rpc_error)
            return
        result = frame.get("result")
        if isinstance(result, dict) and "output" in result:  # a Switch.GetStatus answer
            self._cache.documents[shelly.status_topic] = result
            self._ingest(shelly.status_topic, result)

    def _overlay(self, topic: str, part: dict[str, Any]) -> None:
        base = self._cache.documents.get(topic)
        merged = _deep_merge(base, part) if isinstance(base, dict) else part
        self._cache.documents[topic] = merged
        self._ingest(topic, merged)

    def _ingest(self, topic: str, value: Any) -> None:
        c, plan = self._cache, self.plan
        if plan.availability is not None and topic == plan.availability.topic:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if _same(text, plan.availability.online):
                c.available = True
            elif _same(text, plan.availability.offline):
                c.available = False
        for rule in plan.state:
            if rule.topic != topic:
                continue
            v = extract(value, rule.path)
            if v is _MISSING:
                continue
            was_on = c.relay_on
            if rule.tripped and _matches(v, rule.tripped):
                c.state_tripped, c.relay_on = str(v), False
            elif _matches(v, rule.on):
                c.state_tripped, c.relay_on = None, True
            elif _matches(v, rule.off):
                c.state_tripped, c.relay_on = None, False
            else:
                continue
            c.state_mono, c.state_at = self._clock(), now_utc()
            if c.relay_on and was_on is False and any(t.clear_on_on for t in plan.trip):
                c.trip = None  # switched on again after the trip (a late "on" does not count)
        for trip in plan.trip:
            if trip.topic != topic:
                continue
            v = extract(value, trip.path)
            if v is _MISSING:
                if trip.path is not None and isinstance(value, dict) and not trip.clear_on_on:
                    c.trip = None  # a full status without the indication: cleared
                continue
            c.trip = self._trip_detail(trip, v)
        for meter in plan.meter:
            if meter.topic != topic:
                continue
            self._meter(meter, value)

    @staticmethod
    def _trip_detail(trip: TripSpec, v: Any) -> str | None:
        if isinstance(v, list):
            hits = [x for x in v if trip.values is None or _matches(x, trip.values)]
            return ", ".join(str(x) for x in hits) or None
        if trip.values is None:
            return None if v in (None, "", False) else str(v)
        return str(v) if _matches(v, trip.values) else None

    def _meter(self, meter: MeterSpec, value: Any) -> None:
        c = self._cache
        if meter.energy is not None:
            n = _number(extract(value, meter.energy.path))
            if n is not None:
                wh = n * 1000 if meter.energy.unit == "kWh" else n
                c.energy_wh = int(wh.to_integral_value(rounding=ROUND_FLOOR))
        if meter.power is not None:
            n = _number(extract(value, meter.power.path))
            if n is not None:
                c.power_w = float(n * 1000 if meter.power.unit == "kW" else n)
        if meter.current is not None:
            n = _number(extract(value, meter.current.path))
            if n is not None:
                c.current_a = float(n)
        if meter.voltage is not None:
            n = _number(extract(value, meter.voltage.path))
            if n is not None:
                c.voltage_v = float(n)
