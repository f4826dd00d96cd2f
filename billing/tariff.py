"""Tariffs shaped on OCPI 2.2.1 and the price of one charging session. Pure: no I/O, no clock.

A tariff document is the OCPI 2.2.1 *Tariff* object (module ``tariffs``, section 11.3.1 "Tariff
Object", 11.4 data types) with a few additions of ours, marked (*)::

    {
      "id": "night-saver",                    # optional, kept as is (also country_code, ...)
      "currency": "JPY",                      # ISO 4217, must be in billing.currency.CURRENCIES
      "time_zone": "Asia/Tokyo",              # (*) IANA zone for start_time/end_time/day_of_week
                                              #     (OCPI takes it from Location.time_zone)
      "tax_included": false,                  # (*) prices include VAT (OCPI 2.3.0 name)
      "hold_amount": 3000,                    # (*) card authorisation, integer minor units
      "parking_grace_period": 600,            # (*) first N seconds of PARKING_TIME are free
      "min_price": {"excl_vat": 100, "incl_vat": 110},   # OCPI Price, or a bare number
      "max_price": 5000,
      "elements": [
        {"price_components": [{"type": "ENERGY", "price": 30, "vat": 10, "step_size": 1}],
         "restrictions": {"start_time": "22:00", "end_time": "06:00"}},
        {"price_components": [{"type": "ENERGY", "price": 45, "vat": 10, "step_size": 1},
                              {"type": "PARKING_TIME", "price": 600, "step_size": 300}]}
      ]
    }

Units (OCPI 11.4.5 TariffDimensionType): ENERGY price per kWh, step_size in Wh; TIME (charging)
and PARKING_TIME (plugged in, not charging) price per hour, step_size in seconds; FLAT per session.
Prices are major units of the currency (``30`` = ¥30, ``0.25`` = €0.25), excluding VAT unless
``tax_included``; ``vat`` is a percentage (absent = no VAT, different from 0).

How :func:`compute_cost` prices a session (OCPI 2.2.1 section 11.3.1 and 11.4.4):

* The session is cut into segments at every instant where something may change: period starts
  and ends, local midnights, each element's start_time/end_time (both DST folds), start/end
  dates and min/max_duration instants. Within a segment nothing changes.
* Per dimension, the first element in list order whose restrictions match and that has a
  component of that dimension prices the segment; no match = that dimension is free there.
* Energy of a segment is the cumulative-energy curve's rise over it; the curve interpolates
  linearly between readings (so energy splits across a price change by when it was delivered)
  and stays flat after the last reading.
* step_size (OCPI 11.4.4 note): a dimension's quantity is billed in whole steps, rounding up, with
  the step_size of the *last* element used, and the rounded-up rest is billed at that element's
  price; the rounding happens at the end of the session, or earlier when the dimension switches
  to "no element" (e.g. parking becomes free at 20:00). Consequence of the spec, pinned by a test:
  when a later element is cheaper and has a coarse step, a longer session can cost less.
  Deviation: we never let TIME rounding absorb PARKING_TIME (the spec's example #1 does).
* Monotonicity: more time or more energy never costs less when one element prices each
  dimension (any step sizes), or when every step_size is 1 and an unrestricted "default"
  element follows the restricted ones (as OCPI advises). Outside that, the last-step rule above
  can make a longer session cost a little less (property tests check both cases).
* FLAT is billed once, from the first segment in which an element with FLAT matches.
* min_price / max_price apply to the total both excl. and incl. VAT (OCPI 11.3.1 notes); an
  adjustment line keeps the session's VAT ratio.

Arithmetic: prices are ``Decimal``; quantities (Wh, seconds) and all sums are exact rationals
(``fractions.Fraction`` built from the Decimals), so interpolation and step rounding are exact.
There is ONE rounding step, at the end: the totals are rounded to the currency exponent with
ROUND_HALF_UP. Line ``amount`` values are each rounded the same way for display only and may
differ from ``total`` by a few minor units in sum.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing.currency import CURRENCIES, currency
from billing.errors import TariffError, UsageError

__all__ = [
    "MAX_SESSION",
    "Cost",
    "DayOfWeek",
    "Dimension",
    "EnergyReading",
    "LineItem",
    "Period",
    "PeriodState",
    "PriceComponent",
    "PriceLimit",
    "Restrictions",
    "SessionUsage",
    "Tariff",
    "TariffElement",
    "compute_cost",
    "parse_tariff",
]

MAX_SESSION = timedelta(days=90)
"""Longer sessions are refused (a 1970 charger clock must not become a 56-year parking fee)."""

_DISPLAY = Context(prec=34)
_TIME_RE = re.compile(r"^([0-1][0-9]|2[0-3]):[0-5][0-9]$")
_DATE_RE = re.compile(r"^([12][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")
_US = timedelta(microseconds=1)


class Dimension(StrEnum):
    """OCPI 2.2.1 TariffDimensionType (11.4.5)."""

    ENERGY = "ENERGY"
    FLAT = "FLAT"
    PARKING_TIME = "PARKING_TIME"
    TIME = "TIME"


class DayOfWeek(StrEnum):
    """OCPI 2.2.1 DayOfWeek (11.4.1), in ``datetime.weekday()`` order."""

    MONDAY = "MONDAY"
    TUESDAY = "TUESDAY"
    WEDNESDAY = "WEDNESDAY"
    THURSDAY = "THURSDAY"
    FRIDAY = "FRIDAY"
    SATURDAY = "SATURDAY"
    SUNDAY = "SUNDAY"


_WEEKDAYS = list(DayOfWeek)
_UNIT = {Dimension.ENERGY: "kWh", Dimension.TIME: "h", Dimension.PARKING_TIME: "h",
         Dimension.FLAT: "session"}
_PER_UNIT = {Dimension.ENERGY: 1000, Dimension.TIME: 3600, Dimension.PARKING_TIME: 3600,
             Dimension.FLAT: 1}
"""Base units (Wh, s) per priced unit (kWh, h)."""


@dataclass(frozen=True, slots=True)
class PriceComponent:
    """OCPI 2.2.1 PriceComponent (11.4.2).

    Attributes:
        type: the dimension priced.
        price: major units per kWh / hour / session; excl. VAT unless the tariff is tax_included.
        vat: VAT percentage, ``None`` when no VAT applies.
        step_size: billing block in Wh (ENERGY) or seconds (TIME, PARKING_TIME); ignored for FLAT.
    """

    type: Dimension
    price: Decimal
    vat: Decimal | None = None
    step_size: int = 1


@dataclass(frozen=True, slots=True)
class Restrictions:
    """The supported part of OCPI 2.2.1 TariffRestrictions (11.4.6), in the tariff's local time.

    ``start_time`` is inclusive and ``end_time`` exclusive; ``end_time < start_time`` wraps past
    midnight (22:00-06:00 is a night). ``end_date`` is exclusive. ``min_duration`` /
    ``max_duration`` are seconds since the session start (inclusive / exclusive). Each local
    instant is tested on its own: with ``day_of_week=[MONDAY]`` and 22:00-06:00, Tuesday 02:00
    does not match. min/max kWh, current and power and reservations are not supported.
    """

    start_time: time | None = None
    end_time: time | None = None
    start_date: date | None = None
    end_date: date | None = None
    day_of_week: tuple[DayOfWeek, ...] = ()
    min_duration: int | None = None
    max_duration: int | None = None

    def matches(self, local: datetime, elapsed: timedelta) -> bool:
        """True when an instant (local wall time, time since session start) is inside."""
        if self.day_of_week and _WEEKDAYS[local.weekday()] not in self.day_of_week:
            return False
        day = local.date()
        if self.start_date is not None and day < self.start_date:
            return False
        if self.end_date is not None and day >= self.end_date:
            return False
        wall = local.time().replace(tzinfo=None, fold=0)
        s, e = self.start_time, self.end_time
        if s is not None and e is not None:
            inside = s <= wall < e if s < e else (wall >= s or wall < e)
            if not inside:
                return False
        elif (s is not None and wall < s) or (e is not None and wall >= e):
            return False
        if self.min_duration is not None and elapsed < timedelta(seconds=self.min_duration):
            return False
        return not (self.max_duration is not None
                    and elapsed >= timedelta(seconds=self.max_duration))

    def to_dict(self) -> dict[str, Any]:
        """The OCPI-shaped dict (only the fields that are set)."""
        out: dict[str, Any] = {}
        if self.start_time is not None:
            out["start_time"] = self.start_time.strftime("%H:%M")
        if self.end_time is not None:
            out["end_time"] = self.end_time.strftime("%H:%M")
        if self.start_date is not None:
            out["start_date"] = self.start_date.isoformat()
        if self.end_date is not None:
            out["end_date"] = self.end_date.isoformat()
        if self.day_of_week:
            out["day_of_week"] = [d.value for d in self.day_of_week]
        if self.min_duration is not None:
            out["min_duration"] = self.min_duration
        if self.max_duration is not None:
            out["max_duration"] = self.max_duration
        return out


@dataclass(frozen=True, slots=True)
class TariffElement:
    """OCPI 2.2.1 TariffElement (11.4.4): price components and optional restrictions."""

    price_components: tuple[PriceComponent, ...]
    restrictions: Restrictions | None = None

    def component(self, dim: Dimension) -> PriceComponent | None:
        """The first component of dimension ``dim``, if any."""
        return next((c for c in self.price_components if c.type == dim), None)


@dataclass(frozen=True, slots=True)
class PriceLimit:
    """OCPI 2.2.1 Price class (16.4) used for min_price / max_price, in major units."""

    excl_vat: Decimal | None = None
    incl_vat: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Tariff:
    """A parsed tariff; build it with :func:`parse_tariff`, write it with :meth:`to_dict`.

    Attributes:
        currency: ISO 4217 code, upper case.
        elements: tariff elements in priority order.
        hold_amount: card authorisation placed before charging, integer minor units.
        time_zone: IANA zone name for local-time restrictions.
        tax_included: component prices include VAT (else excl. VAT, as OCPI 2.2.1).
        min_price / max_price: session price limits.
        parking_grace_period: seconds of PARKING_TIME per session that are free.
        id: the tariff id, if given.
        extra: other OCPI Tariff fields (country_code, party_id, tariff_alt_text, ...), kept as is.
    """

    currency: str
    elements: tuple[TariffElement, ...]
    hold_amount: int
    time_zone: str = "UTC"
    tax_included: bool = False
    min_price: PriceLimit | None = None
    max_price: PriceLimit | None = None
    parking_grace_period: int = 0
    id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def zone(self) -> ZoneInfo:
        """The tariff's time zone."""
        return ZoneInfo(self.time_zone)

    def to_dict(self) -> dict[str, Any]:
        """The OCPI-shaped dict; :func:`parse_tariff` reads it back to an equal Tariff.

        Decimals are written as JSON numbers when that is exact (``0.25``), else as strings.
        """
        out: dict[str, Any] = dict(self.extra)
        if self.id is not None:
            out["id"] = self.id
        out["currency"] = self.currency
        out["time_zone"] = self.time_zone
        out["tax_included"] = self.tax_included
        out["hold_amount"] = self.hold_amount
        if self.parking_grace_period:
            out["parking_grace_period"] = self.parking_grace_period
        for name, limit in (("min_price", self.min_price), ("max_price", self.max_price)):
            if limit is not None:
                d: dict[str, Any] = {}
                if limit.excl_vat is not None:
                    d["excl_vat"] = _num(limit.excl_vat)
                if limit.incl_vat is not None:
                    d["incl_vat"] = _num(limit.incl_vat)
                out[name] = d
        elements = []
        for el in self.elements:
            comps = []
            for c in el.price_components:
                cd: dict[str, Any] = {"type": c.type.value, "price": _num(c.price)}
                if c.vat is not None:
                    cd["vat"] = _num(c.vat)
                cd["step_size"] = c.step_size
                comps.append(cd)
            ed: dict[str, Any] = {"price_components": comps}
            if el.restrictions is not None:
                ed["restrictions"] = el.restrictions.to_dict()
            elements.append(ed)
        out["elements"] = elements
        return out


def _num(value: Decimal) -> int | float | str:
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    return as_float if Decimal(repr(as_float)) == value else str(value)


# --------------------------------------------------------------------------- parsing

_OCPI_PASSTHROUGH = {"country_code", "party_id", "type", "tariff_alt_text", "tariff_alt_url",
                     "start_date_time", "end_date_time", "energy_mix", "last_updated"}
_TARIFF_KEYS = {"id", "currency", "time_zone", "timezone", "tax_included", "hold_amount",
                "parking_grace_period", "min_price", "max_price", "elements"}
_UNSUPPORTED_RESTRICTIONS = {"min_kwh", "max_kwh", "min_current", "max_current", "min_power",
                             "max_power", "reservation"}
_RESTRICTION_KEYS = {"start_time", "end_time", "start_date", "end_date", "day_of_week",
                     "min_duration", "max_duration"}
_COMPONENT_KEYS = {"type", "price", "vat", "step_size"}


def parse_tariff(doc: Mapping[str, Any]) -> Tariff:
    """Validate an OCPI-shaped tariff dict (see the module docstring) into a :class:`Tariff`.

    Numbers may be JSON ints, floats (read through their shortest repr, so ``0.1`` is exactly
    ``Decimal("0.1")``), decimal strings or ``Decimal``.

    Raises:
        TariffError: the first invalid field; ``.field`` is its dotted path.
    """
    if not isinstance(doc, Mapping):
        raise TariffError("tariff", "must be an object")
    unknown = set(doc) - _TARIFF_KEYS - _OCPI_PASSTHROUGH
    if unknown:
        raise TariffError(sorted(unknown)[0], "unknown field")

    code = doc.get("currency")
    if not isinstance(code, str) or code.upper() not in CURRENCIES:
        raise TariffError("currency", f"must be one of {', '.join(CURRENCIES)}")
    code = code.upper()

    if "time_zone" in doc and "timezone" in doc and doc["time_zone"] != doc["timezone"]:
        raise TariffError("time_zone", "time_zone and timezone disagree")
    tz_name = doc.get("time_zone", doc.get("timezone", "UTC"))
    if not isinstance(tz_name, str):
        raise TariffError("time_zone", "must be an IANA time zone name")
    try:
        ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TariffError("time_zone", f"unknown time zone {tz_name!r}") from None

    tax_included = doc.get("tax_included", False)
    if not isinstance(tax_included, bool):
        raise TariffError("tax_included", "must be true or false")

    hold = doc.get("hold_amount")
    if hold is None:
        raise TariffError("hold_amount", "required (integer minor units)")
    hold_amount = _int(hold, "hold_amount", minimum=1)
    if hold_amount > MAX_STRIPE_AMOUNT:
        raise TariffError("hold_amount", f"must be at most {MAX_STRIPE_AMOUNT} (Stripe's "
                                         "largest amount, 8 digits in minor units)")
    if hold_amount < currency(code).stripe_minimum:
        raise TariffError("hold_amount", f"below the {code} minimum charge "
                          f"{currency(code).stripe_minimum} (minor units)")

    grace = _int(doc.get("parking_grace_period", 0), "parking_grace_period", minimum=0)

    min_price = _limit(doc.get("min_price"), "min_price", tax_included)
    max_price = _limit(doc.get("max_price"), "max_price", tax_included)
    if min_price is not None and max_price is not None:
        for basis in ("excl_vat", "incl_vat"):
            lo, hi = getattr(min_price, basis), getattr(max_price, basis)
            if lo is not None and hi is not None and lo > hi:
                raise TariffError(f"min_price.{basis}", "greater than max_price")

    raw_elements = doc.get("elements")
    if not isinstance(raw_elements, list) or not raw_elements:
        raise TariffError("elements", "must be a non-empty list")
    elements = tuple(_element(e, f"elements[{i}]") for i, e in enumerate(raw_elements))

    tariff_id = doc.get("id")
    if tariff_id is not None and not isinstance(tariff_id, str):
        raise TariffError("id", "must be a string")
    extra = {k: doc[k] for k in doc if k in _OCPI_PASSTHROUGH}
    return Tariff(currency=code, elements=elements, hold_amount=hold_amount, time_zone=tz_name,
                  tax_included=tax_included, min_price=min_price, max_price=max_price,
                  parking_grace_period=grace, id=tariff_id, extra=extra)


MAX_NUMBER = Decimal(1_000_000)
"""Largest price, limit or VAT accepted (major units): a bound that keeps arithmetic sane."""
MAX_DIGITS = 6
"""Most decimals accepted in a price."""
MAX_STRIPE_AMOUNT = 99_999_999
"""Stripe's largest charge amount: 8 digits in minor units (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts)."""


def _decimal(value: Any, where: str, *, minimum: Decimal | None = Decimal(0)) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise TariffError(where, "must be a number")
    try:
        if isinstance(value, Decimal):
            result = value
        elif isinstance(value, int):
            result = Decimal(value)
        elif isinstance(value, float):
            result = Decimal(repr(value))
        elif isinstance(value, str):
            result = Decimal(value.strip())
        else:
            raise TariffError(where, "must be a number")
    except InvalidOperation:
        raise TariffError(where, "must be a number") from None
    if not result.is_finite():
        raise TariffError(where, "must be a finite number")
    exponent = result.as_tuple().exponent
    if abs(result) > MAX_NUMBER or (isinstance(exponent, int) and exponent < -MAX_DIGITS
                                    and result != result.quantize(Decimal(1).scaleb(-MAX_DIGITS))):
        raise TariffError(where, f"must be at most {MAX_NUMBER} with at most {MAX_DIGITS} decimals")
    if minimum is not None and result < minimum:
        raise TariffError(where, f"must be >= {minimum}")
    return result


def _int(value: Any, where: str, *, minimum: int, maximum: int = 10**9) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TariffError(where, "must be an integer")
    if value < minimum:
        raise TariffError(where, f"must be >= {minimum}")
    if value > maximum:
        raise TariffError(where, f"must be <= {maximum}")
    return value


def _limit(value: Any, where: str, tax_included: bool) -> PriceLimit | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = set(value) - {"excl_vat", "incl_vat"}
        if unknown:
            raise TariffError(f"{where}.{sorted(unknown)[0]}", "unknown field")
        excl = value.get("excl_vat")
        incl = value.get("incl_vat")
        if excl is None and incl is None:
            raise TariffError(where, "needs excl_vat and/or incl_vat")
        return PriceLimit(
            excl_vat=None if excl is None else _decimal(excl, f"{where}.excl_vat"),
            incl_vat=None if incl is None else _decimal(incl, f"{where}.incl_vat"))
    amount = _decimal(value, where)
    return PriceLimit(incl_vat=amount) if tax_included else PriceLimit(excl_vat=amount)


def _element(raw: Any, where: str) -> TariffElement:
    if not isinstance(raw, Mapping):
        raise TariffError(where, "must be an object")
    unknown = set(raw) - {"price_components", "restrictions"}
    if unknown:
        raise TariffError(f"{where}.{sorted(unknown)[0]}", "unknown field")
    comps = raw.get("price_components")
    if not isinstance(comps, list) or not comps:
        raise TariffError(f"{where}.price_components", "must be a non-empty list")
    components = tuple(_component(c, f"{where}.price_components[{i}]")
                       for i, c in enumerate(comps))
    restrictions = None
    if raw.get("restrictions") is not None:
        restrictions = _restrictions(raw["restrictions"], f"{where}.restrictions")
    return TariffElement(price_components=components, restrictions=restrictions)


def _component(raw: Any, where: str) -> PriceComponent:
    if not isinstance(raw, Mapping):
        raise TariffError(where, "must be an object")
    unknown = set(raw) - _COMPONENT_KEYS
    if unknown:
        raise TariffError(f"{where}.{sorted(unknown)[0]}", "unknown field")
    try:
        dim = Dimension(str(raw.get("type")))
    except ValueError:
        raise TariffError(f"{where}.type", f"must be one of {', '.join(Dimension)}") from None
    price = _decimal(raw.get("price"), f"{where}.price")
    vat = None
    if raw.get("vat") is not None:
        vat = _decimal(raw["vat"], f"{where}.vat")
        if vat > 100:
            raise TariffError(f"{where}.vat", "must be a percentage <= 100")
    if "step_size" not in raw:
        raise TariffError(f"{where}.step_size", "required (OCPI: Wh for ENERGY, s for time)")
    step = _int(raw["step_size"], f"{where}.step_size", minimum=1)
    return PriceComponent(type=dim, price=price, vat=vat, step_size=step)


def _restrictions(raw: Any, where: str) -> Restrictions:
    if not isinstance(raw, Mapping):
        raise TariffError(where, "must be an object")
    for key in raw:
        if key in _UNSUPPORTED_RESTRICTIONS:
            raise TariffError(f"{where}.{key}", "restriction not supported")
        if key not in _RESTRICTION_KEYS:
            raise TariffError(f"{where}.{key}", "unknown field")

    def hhmm(key: str) -> time | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not _TIME_RE.match(value):
            raise TariffError(f"{where}.{key}", "must be HH:MM (00:00-23:59)")
        return time(int(value[:2]), int(value[3:]))

    def ymd(key: str) -> date | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not _DATE_RE.match(value):
            raise TariffError(f"{where}.{key}", "must be YYYY-MM-DD")
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise TariffError(f"{where}.{key}", "not a calendar date") from None

    start_time, end_time = hhmm("start_time"), hhmm("end_time")
    if start_time is not None and start_time == end_time:
        raise TariffError(f"{where}.end_time", "equals start_time (empty or ambiguous window)")
    start_date, end_date = ymd("start_date"), ymd("end_date")
    if start_date is not None and end_date is not None and end_date <= start_date:
        raise TariffError(f"{where}.end_date", "must be after start_date")
    days_raw = raw.get("day_of_week") or []
    if not isinstance(days_raw, list):
        raise TariffError(f"{where}.day_of_week", "must be a list")
    days = []
    for i, d in enumerate(days_raw):
        try:
            days.append(DayOfWeek(d))
        except ValueError:
            raise TariffError(f"{where}.day_of_week[{i}]",
                              f"must be one of {', '.join(DayOfWeek)}") from None
    min_d = raw.get("min_duration")
    max_d = raw.get("max_duration")
    return Restrictions(
        start_time=start_time, end_time=end_time, start_date=start_date, end_date=end_date,
        day_of_week=tuple(days),
        min_duration=None if min_d is None else _int(min_d, f"{where}.min_duration", minimum=0),
        max_duration=None if max_d is None else _int(max_d, f"{where}.max_duration", minimum=0))


# --------------------------------------------------------------------------- session input


class PeriodState(StrEnum):
    """What the car did during a period: CHARGING (TIME) or PARKING (PARKING_TIME).

    Map OCPI/OCPP statuses: Charging -> CHARGING; SuspendedEV, SuspendedEVSE, Finishing
    (plugged in, no energy flowing) -> PARKING.
    """

    CHARGING = "CHARGING"
    PARKING = "PARKING"


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """Cumulative energy delivered since the session start, in Wh (int or Decimal, no float)."""

    at: datetime
    wh: int | Decimal


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open interval [start, end) in one state; times timezone-aware."""

    start: datetime
    end: datetime
    state: PeriodState


@dataclass(frozen=True, slots=True)
class SessionUsage:
    """What a session consumed, built from normalised meter samples and status periods.

    Attributes:
        start / stop: session start and stop, timezone-aware (UTC recommended).
        readings: cumulative Wh since ``start`` at given instants, within [start, stop]; the
            caller adds the closing reading (meterStop - meterStart) at ``stop``. Non-decreasing.
        periods: non-overlapping CHARGING/PARKING periods, clipped to [start, stop]; uncovered
            time is neither. Empty means the whole session was CHARGING.

    Raises (from :func:`compute_cost`):
        UsageError: naive datetimes, stop before start, longer than MAX_SESSION, readings out of
            the session or decreasing, overlapping periods.
    """

    start: datetime
    stop: datetime
    readings: Sequence[EnergyReading] = ()
    periods: Sequence[Period] = ()


# --------------------------------------------------------------------------- output


@dataclass(frozen=True, slots=True)
class LineItem:
    """One priced line of a session.

    Attributes:
        type: ``ENERGY``, ``TIME``, ``PARKING_TIME``, ``FLAT``, or ``MIN_PRICE`` / ``MAX_PRICE``
            for the adjustment to the tariff's price limits.
        element: index in ``tariff.elements`` of the element that applied (None for limits).
        restrictions: that element's restrictions as an OCPI dict (None: unrestricted).
        quantity: billed quantity in ``unit`` (kWh, h or session), after step rounding.
        unit: ``kWh``, ``h`` or ``session``.
        measured: the quantity actually used, in base units (Wh or s; 1 for FLAT).
        billed: the billed quantity in base units (Wh or s), a whole number of steps overall.
        unit_price: the component price as written in the tariff (major units).
        vat: VAT percentage or None.
        amount_excl_vat / amount_incl_vat: exact line amounts in major units (display precision).
        amount: ``amount_incl_vat`` in minor units, ROUND_HALF_UP; for display only.
    """

    type: str
    element: int | None
    restrictions: dict[str, Any] | None
    quantity: Decimal
    unit: str
    measured: Decimal
    billed: Decimal
    unit_price: Decimal
    vat: Decimal | None
    amount_excl_vat: Decimal
    amount_incl_vat: Decimal
    amount: int


@dataclass(frozen=True, slots=True)
class Cost:
    """The price of one session.

    Attributes:
        currency: ISO 4217 code.
        lines: line items in dimension order.
        total: what the driver pays, incl. VAT, integer minor units (the amount to capture).
        total_excl_vat: total excl. VAT, integer minor units.
        energy_wh / charging_seconds / parking_seconds: measured usage (exact).
    """

    currency: str
    lines: tuple[LineItem, ...]
    total: int
    total_excl_vat: int
    energy_wh: Decimal
    charging_seconds: Decimal
    parking_seconds: Decimal

    @property
    def vat(self) -> int:
        """VAT in minor units (``total - total_excl_vat``)."""
        return self.total - self.total_excl_vat


# --------------------------------------------------------------------------- computation


def _aware(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise UsageError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def _wh(value: int | Decimal, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise UsageError(f"{what} must be int or Decimal Wh (no float)")
    if isinstance(value, Decimal) and not value.is_finite():
        raise UsageError(f"{what} must be finite")
    result = Fraction(value)
    if result < 0:
        raise UsageError(f"{what} must be >= 0")
    return result


class _EnergyCurve:
    """Cumulative energy E(t) in Wh: linear between readings, 0 at start, flat after the last."""

    def __init__(self, start: datetime, stop: datetime, readings: Sequence[EnergyReading]):
        points: list[tuple[datetime, Fraction]] = [(start, Fraction(0))]
        ordered = sorted(((_aware(r.at, "reading time"), _wh(r.wh, "reading wh"))
                          for r in readings), key=lambda p: p[0])
        for at, wh in ordered:
            if at < start or at > stop:
                raise UsageError(f"reading at {at.isoformat()} is outside the session")
            if wh < points[-1][1]:
                raise UsageError(f"reading at {at.isoformat()} decreases ({wh} Wh)")
            if at == points[-1][0]:
                points[-1] = (at, wh)  # same instant: keep the larger (later) value
            else:
                points.append((at, wh))
        self._points = points
        self._times = [t for t, _ in points]

    @property
    def total(self) -> Fraction:
        return self._points[-1][1]

    def at(self, t: datetime) -> Fraction:
        pts = self._points
        if t <= pts[0][0]:
            return Fraction(0)
        i = bisect_left(self._times, t)
        if i >= len(pts):
            return pts[-1][1]
        (t0, e0), (t1, e1) = pts[i - 1], pts[i]
        return e0 + (e1 - e0) * Fraction((t - t0) // _US, (t1 - t0) // _US)


def _boundaries(tariff: Tariff, start: datetime, stop: datetime) -> list[datetime]:
    zone = tariff.zone
    cuts: set[datetime] = set()
    first = start.astimezone(zone).date() - timedelta(days=1)
    last = stop.astimezone(zone).date() + timedelta(days=1)
    wall_times: set[time] = {time(0, 0)}
    dates: set[date] = set()
    for el in tariff.elements:
        r = el.restrictions
        if r is None:
            continue
        wall_times.update(t for t in (r.start_time, r.end_time) if t is not None)
        dates.update(d for d in (r.start_date, r.end_date) if d is not None)
        for seconds in (r.min_duration, r.max_duration):
            if seconds is not None:
                cuts.add(start + timedelta(seconds=seconds))
    day = first
    while day <= last:
        for wall in wall_times:
            for fold in (0, 1):
                cuts.add(datetime.combine(day, wall, tzinfo=zone).replace(fold=fold)
                         .astimezone(UTC))
        day += timedelta(days=1)
    for d in dates:
        for fold in (0, 1):
            cuts.add(datetime.combine(d, time(0, 0), tzinfo=zone).replace(fold=fold)
                     .astimezone(UTC))
    return [c for c in cuts if start < c < stop]


@dataclass
class _Run:
    """Consecutive segments in which one dimension is priced (OCPI step_size scope)."""

    measured: dict[int, Fraction] = field(default_factory=dict)
    last_used: int | None = None

    def add(self, element: int, quantity: Fraction) -> None:
        self.measured[element] = self.measured.get(element, Fraction(0)) + quantity
        if quantity > 0:
            self.last_used = element


@dataclass
class _Line:
    dim: Dimension
    element: int
    measured: Fraction = Fraction(0)
    billed: Fraction = Fraction(0)


def _close_run(run: _Run | None, dim: Dimension, tariff: Tariff,
               lines: dict[tuple[Dimension, int], _Line]) -> None:
    if run is None or run.last_used is None:
        return
    total = sum(run.measured.values(), Fraction(0))
    comp = tariff.elements[run.last_used].component(dim)
    assert comp is not None
    step = comp.step_size
    billed_total = math.ceil(total / step) * step
    extra = billed_total - total
    for element, q in run.measured.items():
        line = lines.setdefault((dim, element), _Line(dim, element))
        line.measured += q
        line.billed += q + (extra if element == run.last_used else 0)


def _dec(value: Fraction) -> Decimal:
    return _DISPLAY.divide(Decimal(value.numerator), Decimal(value.denominator))


def _minor(value: Fraction, code: str) -> int:
    """Exact ROUND_HALF_UP of a major-unit rational to minor units."""
    scaled = value * 10 ** currency(code).exponent
    half_up = math.floor(abs(scaled) + Fraction(1, 2))
    return half_up if scaled >= 0 else -half_up


def compute_cost(tariff: Tariff, usage: SessionUsage) -> Cost:
    """Price one session with a tariff (see the module docstring for the rules).

    Args:
        tariff: the tariff accepted at session start.
        usage: start/stop, cumulative energy readings, CHARGING/PARKING periods.

    Returns:
        The line items and the totals in integer minor units (``Cost.total`` incl. VAT is the
        amount to collect). Never negative.

    Raises:
        UsageError: the usage is inconsistent (see :class:`SessionUsage`).
    """
    start = _aware(usage.start, "start")
    stop = _aware(usage.stop, "stop")
    if stop < start:
        raise UsageError("stop is before start")
    if stop - start > MAX_SESSION:
        raise UsageError(f"session longer than {MAX_SESSION.days} days; check the charger clock")
    curve = _EnergyCurve(start, stop, usage.readings)

    periods: list[tuple[datetime, datetime, PeriodState]] = []
    raw_periods = usage.periods or [Period(start, stop, PeriodState.CHARGING)]
    for p in raw_periods:
        ps, pe = max(_aware(p.start, "period start"), start), min(_aware(p.end, "period end"), stop)
        if pe > ps:
            periods.append((ps, pe, PeriodState(p.state)))
    periods.sort(key=lambda p: p[0])
    for (_, e0, _), (s1, _, _) in zip(periods, periods[1:], strict=False):
        if s1 < e0:
            raise UsageError(f"periods overlap at {s1.isoformat()}")

    cuts = {start, stop}
    cuts.update(_boundaries(tariff, start, stop))
    for ps, pe, _ in periods:
        cuts.update((ps, pe))
    edges = sorted(cuts)

    def state_at(t: datetime) -> PeriodState | None:
        for ps, pe, st in periods:
            if ps <= t < pe:
                return st
        return None

    def active(dim: Dimension, t: datetime) -> int | None:
        local = t.astimezone(tariff.zone)
        for i, el in enumerate(tariff.elements):
            if el.component(dim) is not None and (
                    el.restrictions is None or el.restrictions.matches(local, t - start)):
                return i
        return None

    lines: dict[tuple[Dimension, int], _Line] = {}
    runs: dict[Dimension, _Run | None] = dict.fromkeys(
        (Dimension.ENERGY, Dimension.TIME, Dimension.PARKING_TIME))
    grace_left = Fraction(tariff.parking_grace_period)
    flat_element = None
    energy = charging = parking = Fraction(0)

    segments = list(zip(edges, edges[1:], strict=False)) or [(start, start)]
    for a, b in segments:
        if flat_element is None:
            flat_element = active(Dimension.FLAT, a)
        seconds = Fraction((b - a) // _US, 1_000_000)
        state = state_at(a)
        # a zero-length session (start == stop) is one empty segment that carries its energy
        e = curve.total if b == a else curve.at(b) - curve.at(a)
        energy += e
        quantities = {Dimension.ENERGY: e, Dimension.TIME: Fraction(0),
                      Dimension.PARKING_TIME: Fraction(0)}
        if state is PeriodState.CHARGING:
            charging += seconds
            quantities[Dimension.TIME] = seconds
        elif state is PeriodState.PARKING:
            parking += seconds
            free = min(grace_left, seconds)
            grace_left -= free
            quantities[Dimension.PARKING_TIME] = seconds - free
        for dim, q in quantities.items():
            element = active(dim, a)
            if element is None:
                _close_run(runs[dim], dim, tariff, lines)
                runs[dim] = None
                continue
            run = runs[dim]
            if run is None:
                run = runs[dim] = _Run()
            run.add(element, q)
    for dim, run in runs.items():
        _close_run(run, dim, tariff, lines)

    out: list[LineItem] = []
    excl_total = incl_total = Fraction(0)
    code = tariff.currency

    def add_line(dim: Dimension, element: int, measured: Fraction, billed: Fraction) -> None:
        nonlocal excl_total, incl_total
        comp = tariff.elements[element].component(dim)
        assert comp is not None
        gross = Fraction(comp.price) * billed / _PER_UNIT[dim]
        ratio = 1 + Fraction(comp.vat or 0) / 100
        excl, incl = (gross / ratio, gross) if tariff.tax_included else (gross, gross * ratio)
        excl_total += excl
        incl_total += incl
        r = tariff.elements[element].restrictions
        out.append(LineItem(
            type=dim.value, element=element, restrictions=None if r is None else r.to_dict(),
            quantity=_dec(billed / _PER_UNIT[dim]), unit=_UNIT[dim], measured=_dec(measured),
            billed=_dec(billed), unit_price=comp.price, vat=comp.vat,
            amount_excl_vat=_dec(excl), amount_incl_vat=_dec(incl), amount=_minor(incl, code)))

    if flat_element is not None:
        add_line(Dimension.FLAT, flat_element, Fraction(1), Fraction(1))
    order = [Dimension.ENERGY, Dimension.TIME, Dimension.PARKING_TIME]
    for key in sorted(lines, key=lambda k: (order.index(k[0]), k[1])):
        line = lines[key]
        if line.billed > 0:
            add_line(line.dim, line.element, line.measured, line.billed)

    excl_total, incl_total = _apply_limits(tariff, excl_total, incl_total, out)
    return Cost(currency=code, lines=tuple(out), total=_minor(incl_total, code),
                total_excl_vat=_minor(excl_total, code), energy_wh=_dec(energy),
                charging_seconds=_dec(charging), parking_seconds=_dec(parking))


def _apply_limits(tariff: Tariff, excl: Fraction, incl: Fraction,
                  out: list[LineItem]) -> tuple[Fraction, Fraction]:
    """Apply min_price then max_price on both bases, keeping the session's VAT ratio."""
    if tariff.min_price is None and tariff.max_price is None:
        return excl, incl
    if excl > 0:
        ratio = incl / excl
    else:
        vat = next((c.vat for el in tariff.elements for c in el.price_components
                    if c.vat is not None), Decimal(0))
        ratio = 1 + Fraction(vat) / 100
    for name, limit in (("MIN_PRICE", tariff.min_price), ("MAX_PRICE", tariff.max_price)):
        if limit is None:
            continue
        bounds = []
        if limit.excl_vat is not None:
            bounds.append(Fraction(limit.excl_vat) * ratio)
        if limit.incl_vat is not None:
            bounds.append(Fraction(limit.incl_vat))
        target = max([incl, *bounds]) if name == "MIN_PRICE" else min([incl, *bounds])
        if target == incl:
            continue
        delta_incl, delta_excl = target - incl, target / ratio - excl
        incl, excl = target, target / ratio
        out.append(LineItem(
            type=name, element=None, restrictions=None, quantity=Decimal(1), unit="session",
            measured=Decimal(1), billed=Decimal(1),
            unit_price=_dec(Fraction(limit.excl_vat if limit.excl_vat is not None
                                     else limit.incl_vat or 0)),
            vat=None, amount_excl_vat=_dec(delta_excl), amount_incl_vat=_dec(delta_incl),
            amount=_minor(delta_incl, tariff.currency)))
    return excl, incl
