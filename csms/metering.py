"""Meter values from OCPP 1.6 and 2.0.1 in one shape, and robust energy for one transaction.

Pure code: no I/O, no clock (every time comes in as an argument), nothing raises on charger input.

Part 1 - normalisation (:func:`normalise_meter_values`)
    Input is the ``meterValue`` list of a ``MeterValues`` request, the ``transactionData`` list
    of a 1.6 ``StopTransaction.req``, or the ``meterValue`` list of a 2.0.1
    ``TransactionEventRequest``, exactly as decoded from the JSON frame (camelCase dicts; the
    snake_case keys produced by the ``ocpp`` library are accepted too). Output is one flat list of
    :class:`Sample` plus human-readable warnings for everything that was tolerated or dropped.

    Sources: OCPP 1.6 §7.33 MeterValue, §7.43 SampledValue (defaults: context
    ``Sample.Periodic``, format ``Raw``, measurand ``Energy.Active.Import.Register``, location
    ``Outlet``, unit ``Wh`` for energy), §7.30 Location, §7.31 Measurand, §7.34 Phase,
    §7.35 ReadingContext, §7.45 UnitOfMeasure, §7.49 ValueFormat; OCPP 2.0.1 Part 2
    ``MeterValueType``, ``SampledValueType`` (``value`` is a JSON number), ``UnitOfMeasureType``
    (``unit`` default ``Wh``, ``multiplier`` = power of ten, default 0), ``SignedMeterValueType``,
    Part 2 Appendices "Standardized Units of Measure" (``Hz``, ``Deg``, ``dB``...).
    Field cases Q10 (value ``""``), Q11 (unit ``Hz``).

Part 2 - energy of a transaction (:class:`EnergyState`, :func:`observe`, :func:`settle_energy`)
    OCPP 1.6 §7.31: "the actual quantity of energy ... is the register value in question minus
    the register value recorded/reported at the start of the transaction". Real chargers make
    this hard (field cases Q03, Q04 and offline starts): ``meterStart`` is lifetime while
    MeterValues are session-relative, ``meterStop`` is -1 or below ``meterStart``, the
    Transaction.Begin value is repeated in every MeterValues, the register resets, or a station
    that started offline reports a start register of 0 next to a lifetime register of 900 kWh.

    Only ``Energy.Active.Import.Register`` samples in ``Wh`` with a numeric value count. They are
    kept per *series* ``(phase, location)``, so a Transaction.Begin value and a Sample.Periodic
    value in the same ``sampledValue`` list never overwrite each other; the unphased series at
    the best location (Outlet > Inlet > Cable > Body > Upstream > EV > other) is used, else the
    sum of the per-phase series L1+L2+L3 (flag ``phase_sum``).

    Plausibility rule. An energy ``E`` over a known interval ``[t0, t1]`` is plausible when
    ``E <= min(max_session_wh, max_power_w * (t1 - t0 + 300 s) / 3600 h + 100 Wh)``; with an
    unknown end (no trusted timestamp, no start time) only ``E <= max_session_wh`` is checked.
    Defaults: ``max_power_w`` = 1,000,000 W (1 MW), ``max_session_wh`` = 500,000 Wh (500 kWh);
    both are per-transaction settings of :func:`new_state`. ``t0`` is the transaction start time
    given to :func:`new_state` (never a sample's time: Transaction.Begin often carries the time of
    the MeterValues it is repeated in).

    Baseline choice (first that fits wins; "fits" = the first-segment readings end at or above
    it, the energy before the first reading is plausible over ``[started_at, first reading]``
    and the whole session is plausible over ``[started_at, last reading]``):

    1. the first Transaction.Begin value of the series;
    2. 0, if the charge point is known to report session-relative values (hint);
    3. ``meterStart``;
    4. 0, if the readings are below ``meterStart`` (learned session-relative, Q03);
    5. the first reading itself (flag ``baseline_from_samples``).

    A rejected candidate adds ``baseline_implausible``. So ``meterStart`` 0 with a first reading of
    900,000 Wh five minutes later (1 MW allows ~166 kWh) falls through to the first reading.
    If even the first reading does not fit, the samples are not used (``samples_implausible``).

    Register resets: a reading newer than the last one that is at most half of it and plausible
    as energy counted from 0 since the last reading starts a new segment from 0; the segments are
    added (flag ``register_reset``). Other decreases are ignored (``register_decrease``).
    Readings older than the last one (a replayed ``transactionData``, a late queue) are ignored.

    Settlement (:func:`settle_energy`): ``meterStop - meterStart`` if ``meterStop >= 0``, not below
    the start and plausible over ``[started_at, stopped_at]``. If the samples rejected
    ``meterStart`` as implausible (offline start), the baseline found in the samples replaces it.
    Otherwise the sample-based energy is used (``source='samples'``), else 0 (``source='none'``).
    The result is integer Wh (``ROUND_HALF_UP``), never negative.

Flags (:attr:`EnergyResult.flags`), all meant for review, none blocks billing:
    ``meter_invalid`` (meterStop unusable: negative, below start, implausible, or no energy data),
    ``meter_stop_missing``, ``meter_stop_below_start``, ``meter_implausible``,
    ``meter_start_missing``, ``meter_start_invalid``, ``meter_stop_below_samples``,
    ``session_relative``, ``baseline_from_samples``, ``baseline_implausible``,
    ``samples_implausible``, ``register_reset``, ``register_decrease``, ``register_negative``,
    ``phase_sum``, ``no_energy_data``, ``too_many_series``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from csms.timestamps import ParsedTime, parse_timestamp

__all__ = [
    "DEFAULT_MAX_POWER_W",
    "DEFAULT_MAX_SESSION_WH",
    "EAIR",
    "EnergyResult",
    "EnergyState",
    "Reading",
    "Sample",
    "Series",
    "default_unit",
    "energy_so_far",
    "new_state",
    "normalise_meter_values",
    "observe",
    "observe_meter_values",
    "settle_energy",
]

EAIR = "Energy.Active.Import.Register"
"""The billing measurand and the default one (1.6 §7.43, 2.0.1 ``SampledValueType``)."""

DEFAULT_MAX_POWER_W = 1_000_000
"""Plausibility: no connector delivers more than 1 MW."""

DEFAULT_MAX_SESSION_WH = 500_000
"""Plausibility: no single session delivers more than 500 kWh (largest car batteries ~200 kWh)."""

TIME_SLACK_S = 300
"""Added to every elapsed time in the plausibility rule (clock skew, sampling granularity)."""

ENERGY_SLACK_WH = Decimal(100)
"""Added to every plausible energy bound (meter resolution, rounding)."""

MAX_WARNINGS = 100
MAX_SERIES = 16
MAX_RESETS = 64
_MAX_NUMBER_CHARS = 64
_MAX_ABS = Decimal(10) ** 15
_MAX_MULTIPLIER = 12

# --------------------------------------------------------------------------------------------
# Vocabulary (1.6 §7.30/7.31/7.34/7.35/7.49, 2.0.1 enums). Lookups are case-insensitive; unknown
# spellings are kept as sent (stripped) with a warning.

_MEASURANDS = (
    "Current.Export", "Current.Import", "Current.Offered",
    "Energy.Active.Export.Register", EAIR,
    "Energy.Reactive.Export.Register", "Energy.Reactive.Import.Register",
    "Energy.Active.Export.Interval", "Energy.Active.Import.Interval", "Energy.Active.Net",
    "Energy.Reactive.Export.Interval", "Energy.Reactive.Import.Interval", "Energy.Reactive.Net",
    "Energy.Apparent.Net", "Energy.Apparent.Import", "Energy.Apparent.Export",
    "Frequency", "Power.Active.Export", "Power.Active.Import", "Power.Factor", "Power.Offered",
    "Power.Reactive.Export", "Power.Reactive.Import", "RPM", "SoC", "Temperature", "Voltage",
)  # fmt: skip
_CONTEXTS = (
    "Interruption.Begin", "Interruption.End", "Other", "Sample.Clock", "Sample.Periodic",
    "Transaction.Begin", "Transaction.End", "Trigger",
)  # fmt: skip
_LOCATIONS = ("Body", "Cable", "EV", "Inlet", "Outlet", "Upstream")
_PHASES = ("L1", "L2", "L3", "N", "L1-N", "L2-N", "L3-N", "L1-L2", "L2-L3", "L3-L1")
_FORMATS = ("Raw", "SignedData")

_ONE = Decimal(1)
_K = Decimal(1000)
_M = Decimal(1_000_000)

# Unit as sent -> (normalised unit, factor). 1.6 §7.45 UnitOfMeasure + 1.6 errata "Hertz"
# + 2.0.1 Standardized Units of Measure + common vendor spellings.
_UNITS: dict[str, tuple[str, Decimal]] = {
    "Wh": ("Wh", _ONE), "kWh": ("Wh", _K), "MWh": ("Wh", _M),
    "varh": ("varh", _ONE), "kvarh": ("varh", _K), "Mvarh": ("varh", _M),
    "VAh": ("VAh", _ONE), "kVAh": ("VAh", _K), "MVAh": ("VAh", _M),
    "W": ("W", _ONE), "kW": ("W", _K), "MW": ("W", _M),
    "var": ("var", _ONE), "kvar": ("var", _K), "Mvar": ("var", _M),
    "VA": ("VA", _ONE), "kVA": ("VA", _K), "MVA": ("VA", _M),
    "A": ("A", _ONE), "mA": ("A", Decimal("0.001")), "kA": ("A", _K),
    "V": ("V", _ONE), "kV": ("V", _K), "mV": ("V", Decimal("0.001")),
    "Celsius": ("Celsius", _ONE), "Celcius": ("Celsius", _ONE), "C": ("Celsius", _ONE),
    "°C": ("Celsius", _ONE), "degC": ("Celsius", _ONE),
    "Fahrenheit": ("Fahrenheit", _ONE), "F": ("Fahrenheit", _ONE), "°F": ("Fahrenheit", _ONE),
    "K": ("K", _ONE), "Kelvin": ("K", _ONE),
    "Percent": ("Percent", _ONE), "%": ("Percent", _ONE),
    "Hertz": ("Hertz", _ONE), "Hz": ("Hertz", _ONE),
    "s": ("s", _ONE), "min": ("s", Decimal(60)), "h": ("s", Decimal(3600)),
    "ASU": ("ASU", _ONE), "B": ("B", _ONE), "dB": ("dB", _ONE), "dBm": ("dBm", _ONE),
    "Deg": ("Deg", _ONE), "lx": ("lx", _ONE), "m": ("m", _ONE), "ms2": ("ms2", _ONE),
    "N": ("N", _ONE), "Ohm": ("Ohm", _ONE), "kPa": ("kPa", _ONE), "RH": ("RH", _ONE),
    "RPM": ("RPM", _ONE),
}  # fmt: skip


def _fold(names: Iterable[str]) -> dict[str, str]:
    return {n.casefold(): n for n in names}


_MEASURAND_BY_FOLD = _fold(_MEASURANDS)
_CONTEXT_BY_FOLD = _fold(_CONTEXTS)
_LOCATION_BY_FOLD = _fold(_LOCATIONS)
_PHASE_BY_FOLD = _fold(_PHASES)
_FORMAT_BY_FOLD = _fold(_FORMATS)
_UNIT_BY_FOLD: dict[str, tuple[str, Decimal]] = {k.casefold(): v for k, v in _UNITS.items()}


def default_unit(measurand: str) -> str:
    """Normalised unit assumed when a sampled value carries none ('' = dimensionless/unknown).

    1.6 §7.43 only defines ``Wh`` for energy measurands; the others follow the quantity.
    """
    if measurand.startswith("Energy."):
        if measurand.startswith("Energy.Reactive."):
            return "varh"
        if measurand.startswith("Energy.Apparent."):
            return "VAh"
        return "Wh"
    if measurand.startswith("Power."):
        if measurand.startswith("Power.Reactive."):
            return "var"
        if measurand.startswith("Power.Apparent"):
            return "VA"
        if measurand == "Power.Factor":
            return ""
        return "W"
    if measurand.startswith("Current."):
        return "A"
    return {
        "Voltage": "V",
        "Frequency": "Hertz",
        "Temperature": "Celsius",
        "SoC": "Percent",
        "RPM": "RPM",
    }.get(measurand, "")


# --------------------------------------------------------------------------------------------
# Part 1: normalisation


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled value, version-independent (1.6 ``SampledValue`` / 2.0.1 ``SampledValueType``).

    Attributes:
        measurand: e.g. ``'Energy.Active.Import.Register'`` (the default when absent).
        phase: ``'L1'``, ``'L2-N'``... or ``None`` (an overall value).
        location: ``'Outlet'`` (default), ``'Inlet'``, ``'EV'``...
        context: ``'Sample.Periodic'`` (default), ``'Transaction.Begin'``, ``'Trigger'``...
        unit: normalised unit: ``Wh``, ``varh``, ``VAh``, ``W``, ``var``, ``VA``, ``A``, ``V``,
            ``s``, ``Percent``, ``Celsius``, ``Fahrenheit``, ``K``, ``Hertz``, the 2.0.1
            standardized units as sent (``dB``, ``Deg``...), an unknown unit of a non-energy
            measurand as sent, or ``''`` (dimensionless, e.g. ``Power.Factor``).
        value: the value in ``unit`` (kWh x 1000 -> Wh, 2.0.1 ``multiplier`` applied), finite.
            ``None`` only for a 1.6 ``format='SignedData'`` value: its ``value`` is a signed
            (hex/OCMF) block, never read as a number even if it looks like one; the block is in
            ``signed_data``.
        raw_value: the value as sent (``str()``/``repr()`` of a JSON number).
        raw_unit: the unit string as sent (1.6 ``unit`` / 2.0.1 ``unitOfMeasure.unit``), or None.
        format: ``'Raw'`` or ``'SignedData'`` (2.0.1: ``SignedData`` when ``signedMeterValue``
            is present).
        signed_data: 1.6 SignedData ``value``, or the 2.0.1 ``signedMeterValue`` object as a
            compact JSON string with its keys as received; ``None`` for raw values.
        timestamp: the parsed ``MeterValue.timestamp`` shared by all values of one meter value.
    """

    measurand: str
    phase: str | None
    location: str
    context: str
    unit: str
    value: Decimal | None
    raw_value: str
    raw_unit: str | None
    format: str
    signed_data: str | None
    timestamp: ParsedTime


class _Warnings:
    """Bounded list of warnings (a garbage frame must not produce a megabyte of text)."""

    __slots__ = ("dropped", "items")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.items) < MAX_WARNINGS:
            self.items.append(text)
        else:
            self.dropped += 1

    def result(self) -> list[str]:
        if self.dropped:
            return [*self.items, f"... and {self.dropped} more warnings"]
        return self.items


def _text(value: object, limit: int = 200) -> str:
    """``str()`` that never raises, for raw values and warnings."""
    if isinstance(value, float):
        return repr(value)
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        return "<unprintable>"
    return text if len(text) <= limit else text[:limit] + "..."


def _get(d: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = d.get(camel)
    return d.get(snake) if value is None else value


def _enum_opt(
    value: object, table: dict[str, str], what: str, where: str, w: _Warnings, *, keep: bool = True
) -> str | None:
    """Canonical spelling of an enum field; None if absent/empty/not a string; if unknown, the
    stripped text (``keep``) or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        w.add(f"{where}: {what} {_text(value)!r} is not a string, ignored")
        return None
    text = value.strip()
    if not text:
        return None
    canonical = table.get(text.casefold())
    if canonical is None:
        if keep:
            w.add(f"{where}: unknown {what} {_text(text)!r} kept as sent")
            return text
        w.add(f"{where}: unknown {what} {_text(text)!r} ignored")
    return canonical


def _enum(
    value: object, table: dict[str, str], default: str, what: str, where: str, w: _Warnings
) -> str:
    """Like :func:`_enum_opt` with the spec default for absent/empty values."""
    found = _enum_opt(value, table, what, where, w)
    return default if found is None else found


def _number(value: object) -> Decimal | None:
    """A finite Decimal from a JSON string/number, or None (``''``, garbage, bool, NaN, huge)."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int):
            number = Decimal(value)
        elif isinstance(value, float):
            number = Decimal(repr(value))
        elif isinstance(value, str):
            text = value.strip()
            if not text or len(text) > _MAX_NUMBER_CHARS:
                return None
            number = Decimal(text)
        else:
            return None
    except (InvalidOperation, ValueError, OverflowError):
        return None
    if not number.is_finite() or abs(number) > _MAX_ABS:
        return None
    return number


def _multiplier(value: object) -> int | None:
    """2.0.1 ``UnitOfMeasureType.multiplier``: an int (a numeric string is tolerated)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        m = value
    elif isinstance(value, float) and value.is_integer():
        m = int(value)
    elif isinstance(value, str):
        try:
            m = int(value.strip())
        except ValueError:
            return None
    else:
        return None
    return m if -_MAX_MULTIPLIER <= m <= _MAX_MULTIPLIER else None


def _signed_text(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return _text(value, limit=100_000)


def _normalise_one(
    sv: object, ts: ParsedTime, where: str, w: _Warnings
) -> Sample | None:
    if not isinstance(sv, Mapping):
        w.add(f"{where}: not an object ({type(sv).__name__}), skipped")
        return None
    measurand = _enum(sv.get("measurand"), _MEASURAND_BY_FOLD, EAIR, "measurand", where, w)
    phase = _enum_opt(sv.get("phase"), _PHASE_BY_FOLD, "phase", where, w)
    location = _enum(sv.get("location"), _LOCATION_BY_FOLD, "Outlet", "location", where, w)
    context = _enum(sv.get("context"), _CONTEXT_BY_FOLD, "Sample.Periodic", "context", where, w)
    fmt = _enum_opt(sv.get("format"), _FORMAT_BY_FOLD, "format", where, w, keep=False) or "Raw"
    smv = _get(sv, "signedMeterValue", "signed_meter_value")
    signed: str | None = None
    if smv is not None:
        fmt = "SignedData"
        signed = _signed_text(smv)

    if "value" not in sv:
        w.add(f"{where}: {measurand} has no value, no sample")
        return None
    raw = sv["value"]
    raw_value = _text(raw, limit=100_000)
    is_energy = measurand.startswith("Energy.")

    # Unit: 2.0.1 unitOfMeasure {unit, multiplier} or 1.6 unit.
    multiplier = 0
    uom = _get(sv, "unitOfMeasure", "unit_of_measure")
    if uom is not None:
        if isinstance(uom, Mapping):
            raw_unit_obj = uom.get("unit")
            m = _multiplier(uom.get("multiplier"))
            if m is None:
                w.add(
                    f"{where}: {measurand} multiplier {_text(uom.get('multiplier'))!r} "
                    "is not a small integer, no sample"
                )
                return None
            multiplier = m
        else:
            w.add(f"{where}: unitOfMeasure is not an object, ignored")
            raw_unit_obj = sv.get("unit")
    else:
        raw_unit_obj = sv.get("unit")
    raw_unit = None if raw_unit_obj is None else _text(raw_unit_obj)
    unit_text = raw_unit.strip() if isinstance(raw_unit_obj, str) and raw_unit else ""
    if raw_unit_obj is not None and not isinstance(raw_unit_obj, str):
        w.add(f"{where}: unit {raw_unit!r} is not a string, ignored")
    expected = default_unit(measurand)
    factor = _ONE
    if not unit_text:
        unit = expected
    else:
        known = _UNIT_BY_FOLD.get(unit_text.casefold())
        if known is None:
            unit = unit_text
            if is_energy and fmt != "SignedData":
                w.add(f"{where}: {measurand} unit {unit_text!r} cannot be converted, no sample")
                return None
            w.add(f"{where}: unknown unit {unit_text!r} for {measurand} kept as sent")
        else:
            unit, factor = known
            if is_energy and unit != expected and fmt != "SignedData":
                w.add(
                    f"{where}: {measurand} in {unit_text!r} is not {expected}, no sample"
                )
                return None

    # Value. 1.6 SignedData: the value is a signed block, never a number.
    value: Decimal | None
    if fmt == "SignedData" and smv is None:
        if not isinstance(raw, str) or not raw.strip():
            w.add(f"{where}: {measurand} SignedData value is empty or not a string, no sample")
            return None
        signed = raw
        value = None
    else:
        number = _number(raw)
        if number is None:
            if isinstance(raw, str) and not raw.strip():
                w.add(f"{where}: {measurand} value is empty, no sample")
            else:
                w.add(f"{where}: {measurand} value {_text(raw, 40)!r} is not a number, no sample")
            return None
        try:
            value = (number * factor).scaleb(multiplier)
        except (InvalidOperation, OverflowError):
            value = None
        if value is None or not value.is_finite() or abs(value) > _MAX_ABS:
            w.add(f"{where}: {measurand} value {raw_value[:40]!r} out of range, no sample")
            return None

    return Sample(
        measurand=measurand,
        phase=phase,
        location=location,
        context=context,
        unit=unit,
        value=value,
        raw_value=raw_value,
        raw_unit=raw_unit,
        format=fmt,
        signed_data=signed,
        timestamp=ts,
    )


def normalise_meter_values(
    meter_values: object, received_at: datetime, skew_tolerance_s: int = 600
) -> tuple[list[Sample], list[str]]:
    """Flatten a ``meterValue`` / ``transactionData`` list into :class:`Sample` objects.

    Args:
        meter_values: list of ``{"timestamp": str, "sampledValue": [ {...}, ... ]}`` as received
            (1.6 values are strings; 2.0.1 values are numbers with ``unitOfMeasure``). ``None`` is
            an absent optional field (no samples, no warning). Anything may be garbage.
        received_at: server receive time of the frame (for timestamp trust, see
            :func:`csms.timestamps.parse_timestamp`).
        skew_tolerance_s: how far ahead of ``received_at`` a charger time may be and be trusted.

    Returns:
        ``(samples, warnings)``: samples in frame order; warnings are one line per tolerated or
        dropped item, naming its position (``meterValue[0].sampledValue[2]: ...``), capped at
        :data:`MAX_WARNINGS` lines. Never raises.

    What is dropped (with a warning): non-object entries, missing or empty (``""``, Q10) or
    non-numeric values (never read as 0), energy samples whose unit is unknown or not an energy
    unit, bad 2.0.1 multipliers, values beyond 1e15. ``Hz`` becomes ``Hertz`` (Q11); unknown
    units of other measurands are kept as sent.
    """
    w = _Warnings()
    samples: list[Sample] = []
    if meter_values is None:
        return samples, []
    try:
        if isinstance(meter_values, Mapping):
            w.add("meterValue is a single object, not a list: read as a list of one")
            meter_values = [meter_values]
        if not isinstance(meter_values, list | tuple):
            w.add(f"meterValue is {type(meter_values).__name__}, not a list: no samples")
            return samples, w.result()
        for i, mv in enumerate(meter_values):
            where = f"meterValue[{i}]"
            if not isinstance(mv, Mapping):
                w.add(f"{where}: not an object ({type(mv).__name__}), skipped")
                continue
            ts = parse_timestamp(mv.get("timestamp"), received_at, skew_tolerance_s)
            if ts.value is None:
                w.add(f"{where}: timestamp {ts.raw!r} missing or unparseable")
            elif not ts.trusted:
                w.add(f"{where}: timestamp {ts.raw!r} not trusted (clock unset or ahead)")
            elif ts.assumed_utc:
                w.add(f"{where}: timestamp {ts.raw!r} has no zone, UTC assumed")
            svs = _get(mv, "sampledValue", "sampled_value")
            if isinstance(svs, Mapping):
                w.add(f"{where}: sampledValue is a single object, read as a list of one")
                svs = [svs]
            if not isinstance(svs, list | tuple):
                w.add(f"{where}: sampledValue missing or not a list, skipped")
                continue
            for j, sv in enumerate(svs):
                sample = _normalise_one(sv, ts, f"{where}.sampledValue[{j}]", w)
                if sample is not None:
                    samples.append(sample)
    except Exception as exc:  # last line of defence: charger input must never raise
        w.add(f"meterValue could not be read completely ({type(exc).__name__}: {exc})")
    return samples, w.result()


# --------------------------------------------------------------------------------------------
# Part 2: energy of one transaction


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _dt_from(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        return None


def _dec_from(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        d = Decimal(value)
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _positive(value: object, default: int) -> int:
    number = _int_or_none(value)
    return number if number is not None and number > 0 else default


@dataclass(slots=True)
class Reading:
    """One register reading: ``wh`` (Wh), charger time ``at`` (UTC, may be untrusted)."""

    wh: Decimal
    at: datetime | None
    trusted: bool

    @property
    def trusted_at(self) -> datetime | None:
        """``at`` if the charger clock was trusted for it, else None."""
        return self.at if self.trusted else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "wh": str(self.wh),
            "at": None if self.at is None else self.at.isoformat(),
            "trusted": self.trusted,
        }

    @classmethod
    def from_dict(cls, data: object) -> Reading | None:
        if not isinstance(data, Mapping):
            return None
        wh = _dec_from(data.get("wh"))
        if wh is None:
            return None
        return cls(wh=wh, at=_dt_from(data.get("at")), trusted=data.get("trusted") is True)


@dataclass(slots=True)
class Series:
    """Register readings of one ``(phase, location)`` within a transaction.

    ``begin``: first Transaction.Begin reading (kept once). ``first``/``last``: first and latest
    current readings (Sample.Periodic, Sample.Clock, Transaction.End, Trigger, Other,
    Interruption.*). ``ends``: last value of each segment closed by a register reset; after a reset
    the register counts from 0.
    """

    phase: str | None
    location: str
    begin: Reading | None = None
    first: Reading | None = None
    last: Reading | None = None
    ends: list[Decimal] = field(default_factory=list)
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "location": self.location,
            "begin": None if self.begin is None else self.begin.to_dict(),
            "first": None if self.first is None else self.first.to_dict(),
            "last": None if self.last is None else self.last.to_dict(),
            "ends": [str(e) for e in self.ends],
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: object) -> Series | None:
        if not isinstance(data, Mapping):
            return None
        phase = data.get("phase")
        location = data.get("location")
        ends_raw = data.get("ends")
        ends: list[Decimal] = []
        if isinstance(ends_raw, list):
            ends = [d for d in map(_dec_from, ends_raw) if d is not None]
        first = Reading.from_dict(data.get("first"))
        last = Reading.from_dict(data.get("last"))
        if (first is None) != (last is None):
            first = last = first or last
        return cls(
            phase=phase if isinstance(phase, str) else None,
            location=location if isinstance(location, str) else "Outlet",
            begin=Reading.from_dict(data.get("begin")),
            first=first,
            last=last,
            ends=ends,
            count=_int_or_none(data.get("count")) or 0,
        )


def _series_key(phase: str | None, location: str) -> str:
    return f"{phase or ''}@{location}"


@dataclass(slots=True)
class EnergyState:
    """What we know about the energy of one transaction; persisted as JSON (:meth:`to_dict`).

    Attributes:
        meter_start: Wh, 1.6 ``StartTransaction.req.meterStart`` (or a 2.0.1 start register);
            ``None`` if unknown or negative.
        started_at: transaction start (UTC): the trusted charger time, else the server receive
            time (:func:`csms.timestamps.effective_time`). ``None`` if unknown.
        session_relative_hint: what the charge point is known to do (learned from earlier
            transactions), ``None`` if unknown.
        session_relative: learned in this transaction: True if the register restarts at 0 per
            session (Q03 Grizzl-E, Q04 THOR 11A/S), False if it is a lifetime register, None if
            not known yet. Persist it per charge point and pass it back as the hint.
        max_power_w / max_session_wh: plausibility limits (see the module docstring).
        series: per ``(phase, location)`` readings, keyed ``'<phase>@<location>'``.
        notes: flags raised while observing (``register_reset``, ``register_decrease``,
            ``register_negative``, ``meter_start_invalid``, ``too_many_series``).
    """

    meter_start: int | None
    started_at: datetime | None
    session_relative_hint: bool | None = None
    session_relative: bool | None = None
    max_power_w: int = DEFAULT_MAX_POWER_W
    max_session_wh: int = DEFAULT_MAX_SESSION_WH
    series: dict[str, Series] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def note(self, flag: str) -> None:
        if flag not in self.notes:
            self.notes.append(flag)

    def preferred_series(self) -> Series | None:
        """The unphased series at the best location with readings, else any best-ranked one."""
        ranked = sorted(
            (s for s in self.series.values() if s.last is not None or s.begin is not None),
            key=lambda s: (_location_rank(s.location), s.phase is not None, s.phase or ""),
        )
        return ranked[0] if ranked else None

    @property
    def baseline_wh(self) -> Decimal | None:
        """First Transaction.Begin value of the preferred series (Wh), if any."""
        s = self.preferred_series()
        return None if s is None or s.begin is None else s.begin.wh

    @property
    def last_wh(self) -> Decimal | None:
        """Latest register reading of the preferred series (Wh)."""
        s = self.preferred_series()
        return None if s is None or s.last is None else s.last.wh

    @property
    def last_at(self) -> datetime | None:
        """Charger time of :attr:`last_wh` (UTC, possibly untrusted)."""
        s = self.preferred_series()
        return None if s is None or s.last is None else s.last.at

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (Decimals as strings, datetimes as ISO 8601)."""
        return {
            "v": 1,
            "meter_start": self.meter_start,
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "session_relative_hint": self.session_relative_hint,
            "session_relative": self.session_relative,
            "max_power_w": self.max_power_w,
            "max_session_wh": self.max_session_wh,
            "series": {k: s.to_dict() for k, s in self.series.items()},
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EnergyState:
        """Inverse of :meth:`to_dict`; tolerant of missing or damaged keys (``{}`` -> empty)."""
        if not isinstance(data, Mapping):
            data = {}

        def opt_bool(v: object) -> bool | None:
            return v if isinstance(v, bool) else None

        series: dict[str, Series] = {}
        raw_series = data.get("series")
        if isinstance(raw_series, Mapping):
            for s in (Series.from_dict(v) for v in raw_series.values()):
                if s is not None:
                    series[_series_key(s.phase, s.location)] = s
        meter_start = _int_or_none(data.get("meter_start"))
        notes = data.get("notes")
        return cls(
            meter_start=meter_start if meter_start is None or meter_start >= 0 else None,
            started_at=_dt_from(data.get("started_at")),
            session_relative_hint=opt_bool(data.get("session_relative_hint")),
            session_relative=opt_bool(data.get("session_relative")),
            max_power_w=_positive(data.get("max_power_w"), DEFAULT_MAX_POWER_W),
            max_session_wh=_positive(data.get("max_session_wh"), DEFAULT_MAX_SESSION_WH),
            series=series,
            notes=[n for n in notes if isinstance(n, str)] if isinstance(notes, list) else [],
        )


@dataclass(frozen=True, slots=True)
class EnergyResult:
    """Energy to bill for a transaction.

    Attributes:
        energy_wh: integer Wh, >= 0.
        source: ``'meter_stop'`` (meterStop minus the start register), ``'samples'`` (register
            readings) or ``'none'`` (nothing usable: 0 Wh).
        flags: review flags, see the module docstring.
    """

    energy_wh: int
    source: str
    flags: tuple[str, ...]


def new_state(
    meter_start: int | None,
    started_at: datetime | None,
    session_relative_hint: bool | None = None,
    *,
    max_power_w: int = DEFAULT_MAX_POWER_W,
    max_session_wh: int = DEFAULT_MAX_SESSION_WH,
) -> EnergyState:
    """State for a new transaction.

    Args:
        meter_start: Wh from 1.6 ``StartTransaction.req.meterStart`` (None for 2.0.1 or unknown;
            negative values such as -1 are read as unknown and noted ``meter_start_invalid``).
        started_at: transaction start, UTC (naive is read as UTC); use the effective time.
        session_relative_hint: learned per charge point (:attr:`EnergyState.session_relative`).
        max_power_w: plausibility limit, e.g. the connector's rated power (default 1 MW).
        max_session_wh: plausibility limit for one session (default 500 kWh).
    """
    state = EnergyState(
        meter_start=None,
        started_at=_utc(started_at),
        session_relative_hint=session_relative_hint,
        max_power_w=_positive(max_power_w, DEFAULT_MAX_POWER_W),
        max_session_wh=_positive(max_session_wh, DEFAULT_MAX_SESSION_WH),
    )
    ms = _int_or_none(meter_start)
    if ms is not None and ms >= 0:
        state.meter_start = ms
    elif meter_start is not None:
        state.note("meter_start_invalid")
    return state


_LOCATION_RANK = {"Outlet": 0, "Inlet": 1, "Cable": 2, "Body": 3, "Upstream": 4, "EV": 5}


def _location_rank(location: str) -> int:
    return _LOCATION_RANK.get(location, 6)


def _allowed(state: EnergyState, t0: datetime | None, t1: datetime | None) -> Decimal:
    """Largest plausible energy (Wh) between ``t0`` and ``t1`` (see module docstring)."""
    cap = Decimal(state.max_session_wh)
    if t0 is None or t1 is None:
        return cap
    seconds = max((t1 - t0).total_seconds(), 0.0) + TIME_SLACK_S
    bound = Decimal(state.max_power_w) * Decimal(repr(seconds)) / Decimal(3600) + ENERGY_SLACK_WH
    return min(cap, bound)


def _add_reading(state: EnergyState, ser: Series, r: Reading) -> None:
    ser.count += 1
    last = ser.last
    if last is None:
        ser.first = ser.last = r
        return
    if r.at is not None and last.at is not None:
        if r.at < last.at:
            return  # older than what we have: a replayed transactionData or a late queue
        if r.at == last.at:
            if r.wh > last.wh:
                ser.last = r
            return
    if r.wh >= last.wh:
        ser.last = r
        return
    # The register went down.
    if (
        r.wh * 2 <= last.wh
        and r.wh <= _allowed(state, last.trusted_at, r.trusted_at)
        and len(ser.ends) < MAX_RESETS
    ):
        ser.ends.append(last.wh)
        ser.last = r
        state.note("register_reset")
    else:
        state.note("register_decrease")


def observe(state: EnergyState, samples: Iterable[Sample]) -> EnergyState:
    """Feed normalised samples into ``state`` (updated in place and returned).

    Only ``Energy.Active.Import.Register`` samples in ``Wh`` with a numeric, non-negative value
    are used; everything else is ignored. Transaction.Begin sets the series baseline once; every
    other context is a current reading. Also updates :attr:`EnergyState.session_relative`.
    """
    for s in samples:
        if not isinstance(s, Sample) or s.measurand != EAIR or s.unit != "Wh" or s.value is None:
            continue
        if s.value < 0:
            state.note("register_negative")
            continue
        key = _series_key(s.phase, s.location)
        ser = state.series.get(key)
        if ser is None:
            if len(state.series) >= MAX_SERIES:
                state.note("too_many_series")
                continue
            ser = state.series[key] = Series(phase=s.phase, location=s.location)
        reading = Reading(wh=s.value, at=s.timestamp.value, trusted=s.timestamp.trusted)
        if s.context == "Transaction.Begin":
            if ser.begin is None:
                ser.begin = reading
            continue
        _add_reading(state, ser, reading)
    estimate = _samples_estimate(state)
    if estimate is not None and estimate.session_relative is not None:
        state.session_relative = estimate.session_relative
    return state


def observe_meter_values(
    state: EnergyState,
    meter_values: object,
    received_at: datetime,
    skew_tolerance_s: int = 600,
) -> tuple[list[Sample], list[str]]:
    """Normalise a ``meterValue`` / ``transactionData`` list and :func:`observe` it.

    Convenience for MeterValues, StopTransaction ``transactionData`` and TransactionEvent. The
    state is updated in place; returns what :func:`normalise_meter_values` returns (to store).
    """
    samples, warnings = normalise_meter_values(meter_values, received_at, skew_tolerance_s)
    observe(state, samples)
    return samples, warnings


@dataclass(frozen=True, slots=True)
class _Estimate:
    energy: Decimal
    baseline: Decimal | None
    source: str  # begin | zero | meter_start | first_sample | phase_sum
    flags: tuple[str, ...]
    meter_start_rejected: bool
    session_relative: bool | None


def _series_estimate(state: EnergyState, ser: Series, whole: bool) -> _Estimate | None:
    """Energy of one series; ``whole`` = the unphased series (meterStart and hint apply)."""
    first, last = ser.first, ser.last
    if first is None or last is None:
        return None
    seg0_end = ser.ends[0] if ser.ends else last.wh
    tail = sum(ser.ends[1:], Decimal(0)) + (last.wh if ser.ends else Decimal(0))
    ms = state.meter_start if whole else None
    hint = state.session_relative_hint if whole else None
    evidence = ms is not None and ms > 0 and seg0_end < ms

    candidates: list[tuple[str, Decimal]] = []
    if ser.begin is not None:
        candidates.append(("begin", ser.begin.wh))
    if hint is True:
        candidates.append(("zero", Decimal(0)))
    if ms is not None:
        candidates.append(("meter_start", Decimal(ms)))
    if evidence and hint is not True:
        candidates.append(("zero", Decimal(0)))
    candidates.append(("first_sample", first.wh))

    allowed_first = _allowed(state, state.started_at, first.trusted_at)
    allowed_total = _allowed(state, state.started_at, last.trusted_at)
    flags: list[str] = []
    ms_rejected = False
    zero_rejected = False
    chosen: tuple[str, Decimal, Decimal] | None = None
    for source, base in candidates:
        if seg0_end < base:
            continue  # readings below this baseline: another frame of reference
        total = seg0_end - base + tail
        if first.wh - base <= allowed_first and total <= allowed_total:
            chosen = (source, base, total)
            break
        if source != "first_sample" and "baseline_implausible" not in flags:
            flags.append("baseline_implausible")
        ms_rejected = ms_rejected or source == "meter_start"
        zero_rejected = zero_rejected or base == 0
    if chosen is None:
        return None
    source, base, total = chosen

    if source == "zero" or (source in ("begin", "meter_start") and base == 0):
        relative: bool | None = True
    elif source in ("begin", "meter_start"):
        relative = False
    else:
        relative = False if zero_rejected else None
    if source == "first_sample":
        flags.append("baseline_from_samples")
    if relative and whole:
        flags.append("session_relative")
    return _Estimate(
        energy=max(total, Decimal(0)),
        baseline=base,
        source=source,
        flags=tuple(flags),
        meter_start_rejected=ms_rejected,
        session_relative=relative if whole else None,
    )


_LINE = {"L1": "L1", "L2": "L2", "L3": "L3", "L1-N": "L1", "L2-N": "L2", "L3-N": "L3"}


def _samples_estimate(state: EnergyState) -> _Estimate | None:
    """Energy from the register readings alone, or None (no readings / implausible)."""
    by_location: dict[str, list[Series]] = {}
    for ser in state.series.values():
        if ser.last is not None:
            by_location.setdefault(ser.location, []).append(ser)
    if not by_location:
        return None
    group = by_location[min(by_location, key=_location_rank)]
    for ser in group:
        if ser.phase is None:
            return _series_estimate(state, ser, whole=True)
    per_line: dict[str, Series] = {}
    for ser in sorted(group, key=lambda s: len(s.phase or "")):  # 'L1' before 'L1-N'
        line = _LINE.get(ser.phase or "")
        if line is not None and line not in per_line:
            per_line[line] = ser
    if not per_line:
        return None
    total = Decimal(0)
    flags: list[str] = ["phase_sum"]
    for ser in per_line.values():
        est = _series_estimate(state, ser, whole=False)
        if est is None:
            return None
        total += est.energy
        flags.extend(f for f in est.flags if f not in flags)
    if total > Decimal(state.max_session_wh):
        return None
    return _Estimate(total, None, "phase_sum", tuple(flags), False, None)


def _to_wh(value: Decimal) -> int:
    return max(0, int(value.quantize(_ONE, rounding=ROUND_HALF_UP)))


def energy_so_far(state: EnergyState) -> int:
    """Wh delivered so far according to the register readings (for a running cost); >= 0.

    0 while no usable reading has arrived.
    """
    est = _samples_estimate(state)
    return 0 if est is None else _to_wh(est.energy)


def settle_energy(
    state: EnergyState, meter_stop: int | None, *, stopped_at: datetime | None = None
) -> EnergyResult:
    """Final energy of the transaction (integer Wh, never negative, never raises).

    Args:
        state: everything observed, including StopTransaction ``transactionData`` /
            TransactionEvent ``Ended`` meter values (observe them first).
        meter_stop: Wh from 1.6 ``StopTransaction.req.meterStop``; ``None`` if absent (always
            for 2.0.1, where ``meter_stop_missing`` is then expected and harmless).
        stopped_at: stop time (UTC) for the plausibility check of ``meterStop - meterStart``;
            without it only ``max_session_wh`` is checked.
    """
    flags: list[str] = list(state.notes)

    def flag(name: str) -> None:
        if name not in flags:
            flags.append(name)

    est = _samples_estimate(state)
    if est is not None:
        for f in est.flags:
            flag(f)
    elif any(s.last is not None for s in state.series.values()):
        flag("samples_implausible")

    stop = _int_or_none(meter_stop)
    from_stop: Decimal | None = None
    if stop is None:
        flag("meter_stop_missing")
    elif stop < 0:
        flag("meter_invalid")
    else:
        base: Decimal | None = None
        if state.meter_start is not None and not (est is not None and est.meter_start_rejected):
            base = Decimal(state.meter_start)
        elif est is not None and est.source in ("begin", "first_sample", "meter_start"):
            base = est.baseline  # offline start: the register frame the samples established
        elif state.meter_start is None:
            flag("meter_start_missing")
        if base is not None:
            if stop < base:
                flag("meter_stop_below_start")
                flag("meter_invalid")
            else:
                energy = Decimal(stop) - base
                end = _utc(stopped_at)
                if energy <= _allowed(state, state.started_at, end):
                    from_stop = energy
                else:
                    flag("meter_implausible")
                    flag("meter_invalid")

    if from_stop is not None:
        if est is not None and est.energy > from_stop + ENERGY_SLACK_WH:
            flag("meter_stop_below_samples")
        return EnergyResult(_to_wh(from_stop), "meter_stop", tuple(flags))
    if est is not None:
        return EnergyResult(_to_wh(est.energy), "samples", tuple(flags))
    flag("no_energy_data")
    flag("meter_invalid")
    return EnergyResult(0, "none", tuple(flags))
