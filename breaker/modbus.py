"""Modbus TCP breakers (pymodbus ``AsyncModbusTcpClient``).

A relay coil is written (function 05, Write Single Coil) to close (1) / open (0) and read back
(function 01, or a separate state coil / discrete input, function 02); an optional tripped bit
(coil or discrete input) says the protection fired; meter registers (holding, function 03, or
input, function 04) hold energy, power, current and voltage.

Default register map (shared with :class:`breaker.devices.SimulatedModbusDevice`)::

    coil 0             relay: 1 = closed (write and read back)
    discrete input 0   tripped: 1 = tripped
    input 0..1         energy, Wh, unsigned 32 bit, high word first (big)      scale 1
    input 2..3         power, 0.1 W, signed 32 bit, high word first            scale 0.1
    input 4            current, 0.01 A, unsigned 16 bit                        scale 0.01
    input 5            voltage, 0.1 V, unsigned 16 bit                         scale 0.1

Every register spec takes ``address``, ``kind`` (``holding`` | ``input``), ``words`` (1 | 2),
``word_order`` (``big``: high word first | ``little``), ``signed`` and ``scale`` (a decimal
multiplier from the raw integer to Wh / W / A / V, e.g. ``"0.1"`` or ``10``). Energy is computed
in Decimal and rounded down to an integer Wh. Set a register or the tripped bit to ``null`` when
the device has none.

Unreachable, timeout or a Modbus exception response: ``read()`` returns OFFLINE (the detail
says which) and ``close()``/``open()`` raise :class:`DriverUnavailable`. Requests on one
connection are serialised.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from breaker.driver import BreakerDriver, BreakerState, DriverUnavailable, Reading

log = logging.getLogger(__name__)


class RegisterSpec(BaseModel):
    """Where one measurement lives and how to decode it (raw integer x ``scale``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: int = Field(ge=0, le=65535)
    kind: Literal["holding", "input"] = "input"
    words: Literal[1, 2] = 1
    word_order: Literal["big", "little"] = "big"
    signed: bool = False
    scale: Decimal = Decimal(1)

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_from_text(cls, value: Any) -> Any:
        # a JSON float like 0.1 is taken by its shortest decimal text, never its binary value
        if isinstance(value, float):
            return Decimal(repr(value))
        return value

    @field_validator("scale")
    @classmethod
    def _positive(cls, value: Decimal) -> Decimal:
        if not value.is_finite() or value <= 0:
            raise ValueError("scale must be a positive number")
        return value

    def decode(self, registers: list[int]) -> Decimal:
        """The scaled value of ``registers`` (``words`` 16-bit registers as read)."""
        if len(registers) < self.words:
            raise ValueError(f"expected {self.words} registers, got {len(registers)}")
        regs = [r & 0xFFFF for r in registers[: self.words]]
        if self.words == 2 and self.word_order == "little":
            regs.reverse()
        raw = 0
        for reg in regs:
            raw = (raw << 16) | reg
        bits = 16 * self.words
        if self.signed and raw >= 1 << (bits - 1):
            raw -= 1 << bits
        return Decimal(raw) * self.scale

    def encode(self, value: Decimal) -> list[int]:
        """The registers holding ``value`` (rounded down to the register's resolution)."""
        raw = int((value / self.scale).to_integral_value(rounding=ROUND_FLOOR))
        bits = 16 * self.words
        if raw < 0:
            raw += 1 << bits
        raw &= (1 << bits) - 1
        regs = [(raw >> 16) & 0xFFFF, raw & 0xFFFF] if self.words == 2 else [raw]
        if self.words == 2 and self.word_order == "little":
            regs.reverse()
        return regs


class BitSpec(BaseModel):
    """A coil or discrete input (``value`` = the bit meaning "closed" / "tripped")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: int = Field(ge=0, le=65535)
    kind: Literal["coil", "discrete_input"] = "discrete_input"
    value: bool = True


DEFAULT_ENERGY = RegisterSpec(address=0, kind="input", words=2)
DEFAULT_POWER = RegisterSpec(address=2, kind="input", words=2, signed=True, scale=Decimal("0.1"))
DEFAULT_CURRENT = RegisterSpec(address=4, kind="input", words=1, scale=Decimal("0.01"))
DEFAULT_VOLTAGE = RegisterSpec(address=5, kind="input", words=1, scale=Decimal("0.1"))
DEFAULT_TRIPPED = BitSpec(address=0, kind="discrete_input", value=True)


class ModbusSettings(BaseModel):
    """``{"type": "modbus", ...}`` configuration. Seconds for timeouts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["modbus"] = "modbus"
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    """The Modbus unit (slave / device) id."""
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    relay_coil: int = Field(default=0, ge=0, le=65535)
    """The coil written to switch: 1 closes, 0 opens."""
    state: BitSpec | None = None
    """Where the contact state is read (None: read the relay coil back)."""
    tripped: BitSpec | None = DEFAULT_TRIPPED
    energy: RegisterSpec | None = DEFAULT_ENERGY
    power: RegisterSpec | None = DEFAULT_POWER
    current: RegisterSpec | None = DEFAULT_CURRENT
    voltage: RegisterSpec | None = DEFAULT_VOLTAGE


class _Offline(Exception):
    """Internal: the device could not be read (message = the reading's detail)."""


class ModbusBreaker(BreakerDriver):
    """A relay + meter on Modbus TCP. See the module docstring for the register map.

    Args:
        settings: the configuration.
    """

    kind = "modbus"

    def __init__(self, settings: ModbusSettings) -> None:
        self.settings = settings
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Try once to open the TCP connection; failures are retried on the next request.
        Never raises."""
        async with self._lock:
            try:
                await self._ensure()
            except _Offline as exc:
                log.info("modbus %s:%s: %s", self.settings.host, self.settings.port, exc)

    async def disconnect(self) -> None:
        """Close the TCP connection. Idempotent."""
        async with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def close(self) -> None:
        """Write 1 to the relay coil.

        Raises:
            DriverUnavailable: unreachable, timeout or Modbus exception response.
        """
        await self._write_relay(True)

    async def open(self) -> None:
        """Write 0 to the relay coil.

        Raises:
            DriverUnavailable: unreachable, timeout or Modbus exception response.
        """
        await self._write_relay(False)

    async def read(self) -> Reading:
        """Relay state, tripped bit and meter registers; OFFLINE (with detail) on any failure."""
        s = self.settings
        async with self._lock:
            try:
                client = await self._ensure()
                state_bit = s.state or BitSpec(address=s.relay_coil, kind="coil", value=True)
                closed = await self._bit(client, state_bit)
                tripped = s.tripped is not None and await self._bit(client, s.tripped)
                values: dict[str, Decimal | None] = {}
                for name in ("energy", "power", "current", "voltage"):
                    spec: RegisterSpec | None = getattr(s, name)
                    values[name] = None if spec is None else await self._register(client, spec)
            except _Offline as exc:
                return Reading(state=BreakerState.OFFLINE, detail=str(exc))
        if tripped:
            state = BreakerState.TRIPPED
        else:
            state = BreakerState.CLOSED if closed else BreakerState.OPEN
        energy = values["energy"]
        return Reading(
            state=state,
            energy_wh=None if energy is None else int(energy.to_integral_value(ROUND_FLOOR)),
            power_w=_float(values["power"]),
            current_a=_float(values["current"]),
            voltage_v=_float(values["voltage"]),
            detail="tripped bit set" if tripped else None,
        )

    # -- internals -----------------------------------------------------------------------

    async def _ensure(self) -> AsyncModbusTcpClient:
        s = self.settings
        if self._client is None:
            self._client = AsyncModbusTcpClient(
                s.host, port=s.port, timeout=s.timeout_s, retries=0, reconnect_delay=0
            )
        if not self._client.connected:
            try:
                async with asyncio.timeout(s.timeout_s + 1):
                    ok = await self._client.connect()
            except (TimeoutError, OSError, ModbusException) as exc:
                ok = False
                log.debug("modbus connect failed: %r", exc)
            if not ok:
                raise _Offline(f"cannot connect to {s.host}:{s.port}")
        return self._client

    async def _call(self, what: str, request: Any) -> Any:
        """Await one pymodbus request; failures become :class:`_Offline`."""
        try:
            async with asyncio.timeout(self.settings.timeout_s + 1):
                response = await request
        except (TimeoutError, OSError, ModbusException) as exc:
            if self._client is not None:
                self._client.close()  # a half-open connection: start afresh next time
            raise _Offline(f"{what}: {type(exc).__name__}: {exc}") from exc
        if response.isError():
            raise _Offline(f"{what}: Modbus exception {getattr(response, 'exception_code', '?')}")
        return response

    async def _bit(self, client: AsyncModbusTcpClient, spec: BitSpec) -> bool:
        unit = self.settings.unit_id
        if spec.kind == "coil":
            rr = await self._call(
                f"read coil {spec.address}",
                client.read_coils(spec.address, count=1, device_id=unit),
            )
        else:
            rr = await self._call(
                f"read discrete input {spec.address}",
                client.read_discrete_inputs(spec.address, count=1, device_id=unit),
            )
        return bool(rr.bits[0]) == spec.value

    async def _register(self, client: AsyncModbusTcpClient, spec: RegisterSpec) -> Decimal:
        unit = self.settings.unit_id
        if spec.kind == "holding":
            rr = await self._call(
                f"read holding {spec.address}",
                client.read_holding_registers(spec.address, count=spec.words, device_id=unit),
            )
        else:
            rr = await self._call(
                f"read input {spec.address}",
                client.read_input_registers(spec.address, count=spec.words, device_id=unit),
            )
        return spec.decode(list(rr.registers))

    async def _write_relay(self, on: bool) -> None:
        s = self.settings
        async with self._lock:
            try:
                client = await self._ensure()
                await self._call(
                    f"write coil {s.relay_coil}",
                    client.write_coil(s.relay_coil, on, device_id=s.unit_id),
                )
            except _Offline as exc:
                raise DriverUnavailable(str(exc)) from exc


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)
