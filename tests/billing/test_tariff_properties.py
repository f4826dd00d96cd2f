"""Properties of compute_cost (hypothesis): never negative, never less when the session grows,
step sizes honoured, energy split correctly across a price change."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.tariff import (
    EnergyReading,
    Period,
    PeriodState,
    SessionUsage,
    Tariff,
    compute_cost,
    parse_tariff,
)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
ZONE = "Asia/Tokyo"
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
DIMS = ("ENERGY", "TIME", "PARKING_TIME")

prices = st.decimals(min_value=0, max_value=200, places=2)
steps = st.sampled_from([1, 15, 60, 300, 500, 900, 1000])
hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 30]))


@st.composite
def restrictions(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    r: dict[str, Any] = {}
    start, end = draw(hhmm), draw(hhmm)
    if start != end:
        r["start_time"], r["end_time"] = start, end
    if draw(st.booleans()):
        r["day_of_week"] = draw(st.lists(st.sampled_from(
            ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]),
            min_size=1, max_size=7, unique=True))
    if draw(st.booleans()):
        r["min_duration"] = draw(st.integers(0, 7200))
    return r or None


@st.composite
def tariffs(draw: st.DrawFn, *, unit_steps: bool = False, single: bool = False,
            limits: bool = True, fallback: bool = False) -> Tariff:
    """Any tariff (up to 3 elements with restrictions) with one VAT rate, or with
    ``single=True`` one unrestricted element (any steps), or with ``unit_steps=True`` every
    step_size 1. ``fallback=True`` appends an unrestricted element pricing every dimension
    that the others price (the "default" element OCPI 2.2.1 advises)."""
    vat = draw(st.none() | st.sampled_from([0, 8, 10, 21]))
    n = 1 if single else draw(st.integers(1, 3))
    elements = []
    for _ in range(n):
        kinds = draw(st.lists(st.sampled_from([*DIMS, "FLAT"]), min_size=1, max_size=4,
                              unique=True))
        comps = []
        for kind in kinds:
            c: dict[str, Any] = {"type": kind, "price": str(draw(prices)),
                                 "step_size": 1 if unit_steps else draw(steps)}
            if vat is not None:
                c["vat"] = vat
            comps.append(c)
        element: dict[str, Any] = {"price_components": comps}
        if not single:
            r = draw(restrictions())
            if r:
                element["restrictions"] = r
        elements.append(element)
    if fallback:
        used = {c["type"] for e in elements for c in e["price_components"]}
        comps = []
        for kind in sorted(used):
            c = {"type": kind, "price": str(draw(prices)),
                 "step_size": 1 if unit_steps else draw(steps)}
            if vat is not None:
                c["vat"] = vat
            comps.append(c)
        elements.append({"price_components": comps})
    doc: dict[str, Any] = {"currency": draw(st.sampled_from(["JPY", "EUR"])),
                           "hold_amount": 5000, "time_zone": ZONE,
                           "tax_included": draw(st.booleans()),
                           "parking_grace_period": draw(st.sampled_from([0, 300, 900])),
                           "elements": elements}
    if limits and draw(st.booleans()):
        doc["min_price"] = str(draw(st.decimals(min_value=0, max_value=50, places=2)))
    if limits and draw(st.booleans()):
        doc["max_price"] = str(draw(st.decimals(min_value=50, max_value=5000, places=2)))
    return parse_tariff(doc)


@st.composite
def sessions(draw: st.DrawFn) -> SessionUsage:
    """A session with whole-second times, integer Wh readings and CHARGING/PARKING periods
    (possibly with uncovered gaps)."""
    start = T0 + timedelta(seconds=draw(st.integers(0, 14 * 86400)))
    length = draw(st.integers(0, 14 * 3600))
    stop = start + timedelta(seconds=length)
    offsets = sorted(draw(st.lists(st.integers(0, length), max_size=6)))
    increments = draw(st.lists(st.integers(0, 20000), min_size=len(offsets),
                               max_size=len(offsets)))
    total, readings = 0, []
    for offset, inc in zip(offsets, increments, strict=True):
        total += inc
        readings.append(EnergyReading(start + timedelta(seconds=offset), total))
    cuts = sorted(set(draw(st.lists(st.integers(0, length), max_size=5))) | {0, length})
    periods = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        state = draw(st.sampled_from([PeriodState.CHARGING, PeriodState.PARKING, None]))
        if state is not None:
            periods.append(Period(start + timedelta(seconds=a), start + timedelta(seconds=b),
                                  state))
    return SessionUsage(start, stop, readings, periods)


@st.composite
def extensions(draw: st.DrawFn, base: SessionUsage) -> SessionUsage:
    """The same session going on longer: more time, maybe more energy and another period."""
    extra = draw(st.integers(1, 4 * 3600))
    stop = base.stop + timedelta(seconds=extra)
    last = base.readings[-1].wh if base.readings else 0
    readings = list(base.readings)
    if draw(st.booleans()):
        at = base.stop + timedelta(seconds=draw(st.integers(1, extra)))
        readings.append(EnergyReading(at, int(last) + draw(st.integers(0, 20000))))
    periods = list(base.periods)
    state = draw(st.sampled_from([PeriodState.CHARGING, PeriodState.PARKING, None]))
    if not base.periods:  # an empty list means "all CHARGING": keep that meaning
        periods = [Period(base.start, base.stop, PeriodState.CHARGING)]
    if state is not None:
        periods.append(Period(base.stop, stop, state))
    return SessionUsage(base.start, stop, readings, periods)


@st.composite
def more_energy(draw: st.DrawFn, base: SessionUsage) -> SessionUsage:
    """The same times, with ``delta`` Wh more delivered in one interval between readings."""
    if not base.readings:
        return replace(base, readings=[EnergyReading(base.stop, draw(st.integers(1, 5000)))])
    i = draw(st.integers(0, len(base.readings) - 1))
    delta = draw(st.integers(1, 5000))
    readings = [r if j < i else EnergyReading(r.at, int(r.wh) + delta)
                for j, r in enumerate(base.readings)]
    return replace(base, readings=readings)


@SETTINGS
@given(tariffs(), sessions())
def test_never_negative(tariff: Tariff, usage: SessionUsage) -> None:
    cost = compute_cost(tariff, usage)
    assert cost.total >= 0 and cost.total_excl_vat >= 0
    assert cost.total >= cost.total_excl_vat
    assert all(li.amount_incl_vat >= 0 for li in cost.lines if li.type != "MAX_PRICE")


@SETTINGS
@given(st.data(), tariffs(unit_steps=True, fallback=True), sessions())
def test_longer_session_never_costs_less_unit_steps(data: st.DataObject, tariff: Tariff,
                                                    usage: SessionUsage) -> None:
    """Elements with restrictions (night, weekdays, durations) before a default element,
    step_size 1. (Without a default element a dimension can stop being priced mid-session;
    OCPI then rounds the part before the gap on its own, and with prices that fall after the
    gap the rounded-up rest can shrink: see the tariff module docstring.)"""
    longer = data.draw(extensions(usage))
    assert compute_cost(tariff, longer).total >= compute_cost(tariff, usage).total
    bigger = data.draw(more_energy(usage))
    assert compute_cost(tariff, bigger).total >= compute_cost(tariff, usage).total


@SETTINGS
@given(st.data(), tariffs(single=True), sessions())
def test_longer_session_never_costs_less_any_steps(data: st.DataObject, tariff: Tariff,
                                                   usage: SessionUsage) -> None:
    """One unrestricted element, any step sizes, grace period, min/max price."""
    longer = data.draw(extensions(usage))
    assert compute_cost(tariff, longer).total >= compute_cost(tariff, usage).total
    bigger = data.draw(more_energy(usage))
    assert compute_cost(tariff, bigger).total >= compute_cost(tariff, usage).total


def _measured(usage: SessionUsage, tariff: Tariff) -> dict[str, Fraction]:
    """Independent measure of what was used: energy, charging and billable parking seconds."""
    energy = Fraction(int(usage.readings[-1].wh)) if usage.readings else Fraction(0)
    periods = usage.periods or [Period(usage.start, usage.stop, PeriodState.CHARGING)]
    charging = sum(((p.end - p.start).total_seconds() for p in periods
                    if p.state is PeriodState.CHARGING), 0.0)
    parking = sum(((p.end - p.start).total_seconds() for p in periods
                   if p.state is PeriodState.PARKING), 0.0)
    return {"ENERGY": energy, "TIME": Fraction(int(charging)),
            "PARKING_TIME": Fraction(max(0, int(parking) - tariff.parking_grace_period))}


@SETTINGS
@given(tariffs(single=True, limits=False), sessions())
def test_step_sizes_are_honoured(tariff: Tariff, usage: SessionUsage) -> None:
    """Each dimension is billed in whole steps, rounded up by less than one step."""
    cost = compute_cost(tariff, usage)
    used = _measured(usage, tariff)
    element = tariff.elements[0]
    for dim in DIMS:
        comp = element.component(dim)  # type: ignore[arg-type]
        billed = [li for li in cost.lines if li.type == dim]
        if comp is None or used[dim] == 0:
            assert not billed
            continue
        (line,) = billed
        assert Fraction(line.measured) == used[dim]
        assert Fraction(line.billed) % comp.step_size == 0
        assert 0 <= Fraction(line.billed) - used[dim] < comp.step_size


@SETTINGS
@given(st.sampled_from([1, 100, 500, 1000]), sessions())
def test_step_size_spans_a_price_change(step: int, usage: SessionUsage) -> None:
    """Day and night prices with the same step: the energy of the whole session is billed in
    whole steps (not each part), by less than one step more than used."""
    tariff = parse_tariff({"currency": "JPY", "hold_amount": 3000, "time_zone": ZONE,
                           "elements": [
        {"price_components": [{"type": "ENERGY", "price": 25, "step_size": step}],
         "restrictions": {"start_time": "22:00", "end_time": "06:00"}},
        {"price_components": [{"type": "ENERGY", "price": 40, "step_size": step}]}]})
    cost = compute_cost(tariff, usage)
    used = _measured(usage, tariff)["ENERGY"]
    # line quantities are shown with 34 significant digits: the day/night parts of a whole
    # step can be repeating fractions, so compare their sum to the nearest whole step
    billed = sum((Fraction(li.billed) for li in cost.lines), Fraction(0))
    whole = round(billed / step) * step
    assert abs(billed - whole) < Fraction(1, 10**25)
    assert 0 <= whole - used < step


def _night_seconds(start: datetime, stop: datetime, zone: ZoneInfo) -> Fraction:
    """Seconds of [start, stop) inside 22:00-06:00 local time, counted day by day."""
    total = Fraction(0)
    day = start.astimezone(zone).date() - timedelta(days=1)
    while datetime.combine(day, datetime.min.time(), zone) < stop:
        night_start = datetime.combine(day, datetime.strptime("22:00", "%H:%M").time(), zone)
        night_end = datetime.combine(day + timedelta(days=1),
                                     datetime.strptime("06:00", "%H:%M").time(), zone)
        lo, hi = max(start, night_start), min(stop, night_end)
        if hi > lo:
            total += Fraction(int((hi - lo).total_seconds()))
        day += timedelta(days=1)
    return total


@SETTINGS
@given(st.integers(0, 14 * 86400), st.integers(1, 36 * 3600), st.integers(0, 100000),
       st.decimals(min_value=0, max_value=100, places=2),
       st.decimals(min_value=0, max_value=100, places=2))
def test_energy_splits_across_a_price_change(offset: int, length: int, wh: int,
                                             night: Decimal, day: Decimal) -> None:
    """Constant power: the night part of the energy is the night part of the time, priced at
    the night price; the total is rounded once."""
    tariff = parse_tariff({"currency": "EUR", "hold_amount": 5000, "time_zone": ZONE,
                           "elements": [
        {"price_components": [{"type": "ENERGY", "price": str(night), "step_size": 1}],
         "restrictions": {"start_time": "22:00", "end_time": "06:00"}},
        {"price_components": [{"type": "ENERGY", "price": str(day), "step_size": 1}]}]})
    start = T0 + timedelta(seconds=offset)
    stop = start + timedelta(seconds=length)
    cost = compute_cost(tariff, SessionUsage(start, stop, [EnergyReading(stop, wh)]))
    night_wh = Fraction(wh) * _night_seconds(start, stop, ZoneInfo(ZONE)) / length
    by_element = {li.element: Fraction(li.measured) for li in cost.lines}
    assert abs(by_element.get(0, Fraction(0)) - night_wh) < Fraction(1, 10**20)
    assert abs(by_element.get(1, Fraction(0)) - (wh - night_wh)) < Fraction(1, 10**20)
    exact = (Fraction(night) * night_wh + Fraction(day) * (wh - night_wh)) / 1000
    expected = (Decimal(exact.numerator) / Decimal(exact.denominator) * 100).quantize(
        Decimal(1), rounding=ROUND_HALF_UP)
    assert cost.total == int(expected)
