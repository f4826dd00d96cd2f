"""Tariff parsing and session prices, checked against values computed by hand (JPY and EUR),
including the worked step_size examples of OCPI 2.2.1 (mod_tariffs, PriceComponent notes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing.currency import minimum_charge, to_major, to_minor
from billing.errors import TariffError, UsageError
from billing.tariff import (
    Cost,
    EnergyReading,
    Period,
    PeriodState,
    SessionUsage,
    Tariff,
    compute_cost,
    parse_tariff,
)

TOKYO = ZoneInfo("Asia/Tokyo")
CHARGING, PARKING = PeriodState.CHARGING, PeriodState.PARKING


def jst(h: int, m: int = 0, s: int = 0, day: int = 2) -> datetime:
    """2026-03-{day} h:m:s in Tokyo (2026-03-02 is a Monday)."""
    return datetime(2026, 3, day, h, m, s, tzinfo=TOKYO)


def utc(h: int, m: int = 0, s: int = 0, day: int = 2) -> datetime:
    return datetime(2026, 3, day, h, m, s, tzinfo=UTC)


def tariff(**doc: Any) -> Tariff:
    base: dict[str, Any] = {"currency": "JPY", "hold_amount": 3000, "time_zone": "Asia/Tokyo"}
    base.update(doc)
    return parse_tariff(base)


def energy(*price_components: dict[str, Any], restrictions: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    element: dict[str, Any] = {"price_components": list(price_components)}
    if restrictions is not None:
        element["restrictions"] = restrictions
    return element


def comp(kind: str, price: Any, step: int = 1, vat: Any = None) -> dict[str, Any]:
    c = {"type": kind, "price": price, "step_size": step}
    if vat is not None:
        c["vat"] = vat
    return c


def lines(cost: Cost) -> list[tuple[str, int | None, Decimal, int]]:
    return [(li.type, li.element, li.billed, li.amount) for li in cost.lines]


# ------------------------------------------------------------------------------ JPY


def test_energy_with_vat_rounds_once_half_up() -> None:
    """12,345 Wh at ¥30/kWh + 10% VAT: 370.35 excl, 407.385 incl -> ¥407 (¥370 excl)."""
    t = tariff(elements=[energy(comp("ENERGY", 30, vat=10))])
    cost = compute_cost(t, SessionUsage(jst(10), jst(11), [EnergyReading(jst(11), 12345)]))
    assert (cost.total, cost.total_excl_vat, cost.vat) == (407, 370, 37)
    assert cost.lines[0].amount_incl_vat == Decimal("407.385")
    assert cost.lines[0].quantity == Decimal("12.345") and cost.lines[0].unit == "kWh"
    assert cost.energy_wh == Decimal("12345")


def test_energy_step_size_rounds_up_to_whole_steps() -> None:
    """1,201 Wh with step_size 500 Wh is billed as 1,500 Wh: ¥45 at ¥30/kWh."""
    t = tariff(elements=[energy(comp("ENERGY", 30, step=500))])
    cost = compute_cost(t, SessionUsage(jst(10), jst(11), [EnergyReading(jst(11), 1201)]))
    assert lines(cost) == [("ENERGY", 0, Decimal("1500"), 45)]
    assert cost.lines[0].measured == Decimal("1201")
    assert cost.total == 45
    exact = compute_cost(t, SessionUsage(jst(10), jst(11), [EnergyReading(jst(11), 1500)]))
    assert exact.total == 45  # an exact multiple is not rounded further


def test_time_step_size() -> None:
    """61 min charging at ¥600/h, step 300 s -> 65 min billed = ¥650."""
    t = tariff(elements=[energy(comp("TIME", 600, step=300))])
    cost = compute_cost(t, SessionUsage(jst(10), jst(11, 1)))
    assert lines(cost) == [("TIME", 0, Decimal("3900"), 650)]
    assert cost.charging_seconds == Decimal(3660)


def test_parking_after_the_grace_period() -> None:
    """Charge 10:00-11:00 (10 kWh at ¥30), then plugged in 25 min: 10 min free, 15 min at
    ¥1,200/h (step 60 s) = ¥300. Total ¥600."""
    t = tariff(parking_grace_period=600, elements=[
        energy(comp("ENERGY", 30), comp("PARKING_TIME", 1200, step=60))])
    usage = SessionUsage(jst(10), jst(11, 25), [EnergyReading(jst(11), 10000)],
                         [Period(jst(10), jst(11), CHARGING),
                          Period(jst(11), jst(11, 25), PARKING)])
    cost = compute_cost(t, usage)
    assert lines(cost) == [("ENERGY", 0, Decimal("10000"), 300),
                           ("PARKING_TIME", 0, Decimal("900"), 300)]
    assert cost.total == 600
    assert cost.parking_seconds == Decimal(1500)
    within = SessionUsage(jst(10), jst(11, 9), [EnergyReading(jst(11), 10000)],
                          [Period(jst(10), jst(11), CHARGING),
                           Period(jst(11), jst(11, 9), PARKING)])
    assert compute_cost(t, within).total == 300  # 9 min parked: inside the grace period


def test_parking_grace_is_per_session_not_per_period() -> None:
    """Two 8-minute parking periods with a 10-minute grace: 6 minutes are billed."""
    t = tariff(parking_grace_period=600, elements=[energy(comp("PARKING_TIME", 600, step=60))])
    usage = SessionUsage(jst(10), jst(10, 46), periods=[
        Period(jst(10), jst(10, 15), CHARGING), Period(jst(10, 15), jst(10, 23), PARKING),
        Period(jst(10, 23), jst(10, 38), CHARGING), Period(jst(10, 38), jst(10, 46), PARKING)])
    assert lines(compute_cost(t, usage)) == [("PARKING_TIME", 0, Decimal("360"), 60)]


def test_night_price_splits_energy_by_delivery_time() -> None:
    """Day ¥40/kWh, night (22:00-06:00 Tokyo) ¥25/kWh. 21:30-22:30 with 1 kWh by 21:45 and
    10 kWh at 22:30: the curve is at 4,000 Wh at 22:00 (1,000 + 9,000 x 15/45), so 4 kWh day
    (¥160) + 6 kWh night (¥150) = ¥310."""
    t = tariff(elements=[
        energy(comp("ENERGY", 25), restrictions={"start_time": "22:00", "end_time": "06:00"}),
        energy(comp("ENERGY", 40))])
    usage = SessionUsage(jst(21, 30), jst(22, 30), [EnergyReading(jst(21, 45), 1000),
                                                    EnergyReading(jst(22, 30), 10000)])
    cost = compute_cost(t, usage)
    assert lines(cost) == [("ENERGY", 0, Decimal("6000"), 150), ("ENERGY", 1, Decimal("4000"), 160)]
    assert cost.lines[0].restrictions == {"start_time": "22:00", "end_time": "06:00"}
    assert cost.lines[1].restrictions is None
    assert cost.total == 310
    # the same session given in UTC gives the same answer (13:30 JST = 12:30 UTC + 9 h)
    usage_utc = SessionUsage(utc(12, 30), utc(13, 30), [EnergyReading(utc(12, 45), 1000),
                                                        EnergyReading(utc(13, 30), 10000)])
    assert compute_cost(t, usage_utc) == cost


def test_night_price_overnight_and_weekend() -> None:
    """A Friday 23:00 -> Saturday 07:00 session, 1 kWh per hour: 7 h night (¥25), 1 h on a
    Saturday morning at the weekend price (¥35) - the weekend element is listed first."""
    t = tariff(elements=[
        energy(comp("ENERGY", 35), restrictions={"day_of_week": ["SATURDAY", "SUNDAY"],
                                                 "start_time": "06:00"}),
        energy(comp("ENERGY", 25), restrictions={"start_time": "22:00", "end_time": "06:00"}),
        energy(comp("ENERGY", 40))])
    start, stop = jst(23, day=6), jst(7, day=7)
    cost = compute_cost(t, SessionUsage(start, stop, [EnergyReading(stop, 8000)]))
    assert lines(cost) == [("ENERGY", 0, Decimal("1000"), 35), ("ENERGY", 1, Decimal("7000"), 175)]
    assert cost.total == 210


def test_flat_fee_and_min_price() -> None:
    """¥100 per session + ¥30/kWh, minimum ¥500 (excl. VAT), 10% VAT: 1 kWh costs 130 excl.,
    raised to 500 excl. = ¥550 incl."""
    t = tariff(min_price=500, elements=[
        energy(comp("FLAT", 100, vat=10), comp("ENERGY", 30, vat=10))])
    cost = compute_cost(t, SessionUsage(jst(10), jst(10, 30), [EnergyReading(jst(10, 30), 1000)]))
    assert [li.type for li in cost.lines] == ["FLAT", "ENERGY", "MIN_PRICE"]
    assert (cost.total, cost.total_excl_vat) == (550, 500)
    assert cost.lines[-1].amount == 407  # 550 - 143


def test_max_price_caps_the_total() -> None:
    """100 kWh at ¥30 = ¥3,000, capped at ¥2,000."""
    t = tariff(max_price={"excl_vat": 2000}, elements=[energy(comp("ENERGY", 30))])
    cost = compute_cost(t, SessionUsage(jst(10), jst(18), [EnergyReading(jst(18), 100000)]))
    assert cost.total == 2000
    assert cost.lines[-1].type == "MAX_PRICE" and cost.lines[-1].amount == -1000


def test_zero_session_costs_only_the_flat_fee() -> None:
    t = tariff(elements=[energy(comp("FLAT", 100), comp("ENERGY", 30), comp("TIME", 600))])
    assert compute_cost(t, SessionUsage(jst(10), jst(10))).total == 100
    no_flat = tariff(elements=[energy(comp("ENERGY", 30))])
    cost = compute_cost(no_flat, SessionUsage(jst(10), jst(12)))
    assert (cost.total, cost.lines) == (0, ())


# ------------------------------------------------------------------------------ EUR


def eur(**doc: Any) -> Tariff:
    return tariff(currency="EUR", hold_amount=5000, time_zone="Europe/Amsterdam", **doc)


def ams(h: int, m: int = 0) -> datetime:
    return datetime(2026, 3, 2, h, m, tzinfo=ZoneInfo("Europe/Amsterdam"))


@pytest.mark.parametrize(("step", "billed", "total"), [
    (1, 116, 3),      # 115.2 Wh -> 116 Wh x 0.25 = 0.029 -> €0.03
    (25, 125, 3),     # -> 125 Wh = 0.03125 -> €0.03
    (500, 500, 13),   # -> 500 Wh = 0.125 -> €0.13 (half up)
])
def test_ocpi_energy_step_examples(step: int, billed: int, total: int) -> None:
    """OCPI 2.2.1 PriceComponent note: 115.2 Wh at €0.25/kWh with step 1 / 25 / 500 Wh."""
    t = eur(elements=[energy(comp("ENERGY", "0.25", step=step))])
    cost = compute_cost(t, SessionUsage(ams(10), ams(11),
                                        [EnergyReading(ams(11), Decimal("115.2"))]))
    assert lines(cost) == [("ENERGY", 0, Decimal(billed), total)]
    assert cost.total == total


OCPI_STEP_TARIFF = [  # OCPI 2.2.1 examples/tariff_14_step_size.json
    energy(comp("TIME", "1.20", step=1800), restrictions={"end_time": "17:00"}),
    energy(comp("TIME", "2.40", step=900), restrictions={"start_time": "17:00"}),
    energy(comp("PARKING_TIME", "1.00", step=900), restrictions={"end_time": "20:00"}),
]


def test_ocpi_step_switching_elements_example_2() -> None:
    """16:35-17:10 charging: 25 min at 1.20/h + (10 min rounded to make 45 min in total with
    the last element's 15-min step = 20 min) at 2.40/h = 0.50 + 0.80 = €1.30."""
    t = eur(elements=OCPI_STEP_TARIFF)
    cost = compute_cost(t, SessionUsage(ams(16, 35), ams(17, 10)))
    assert lines(cost) == [("TIME", 0, Decimal(1500), 50), ("TIME", 1, Decimal(1200), 80)]
    assert cost.total == 130


def test_ocpi_step_switching_to_free_parking() -> None:
    """19:55-20:05 charging, then 2 min parked after 20:00 when parking is free: 15 min of
    charging at 2.40/h = €0.60."""
    t = eur(elements=OCPI_STEP_TARIFF)
    usage = SessionUsage(ams(19, 55), ams(20, 7), periods=[
        Period(ams(19, 55), ams(20, 5), CHARGING), Period(ams(20, 5), ams(20, 7), PARKING)])
    cost = compute_cost(t, usage)
    assert lines(cost) == [("TIME", 1, Decimal(900), 60)]


def test_ocpi_step_example_1_bills_parking_separately() -> None:
    """OCPI example #1 (16:55, 10 min charging, 2 min parking): the spec lets the TIME
    rounding absorb the parking (€0.50); we bill parking on its own: 0.10 + 0.40 + 15 min
    parking at 1.00/h = €0.75 (documented deviation)."""
    t = eur(elements=OCPI_STEP_TARIFF)
    usage = SessionUsage(ams(16, 55), ams(17, 7), periods=[
        Period(ams(16, 55), ams(17, 5), CHARGING), Period(ams(17, 5), ams(17, 7), PARKING)])
    cost = compute_cost(t, usage)
    assert lines(cost) == [("TIME", 0, Decimal(300), 10), ("TIME", 1, Decimal(600), 40),
                           ("PARKING_TIME", 2, Decimal(900), 25)]
    assert cost.total == 75


def test_ocpi_last_step_rule_can_make_a_longer_session_cheaper() -> None:
    """Pinned consequence of the OCPI rule (step_size of the last element, rest at its price):
    a coarse day step followed by a cheaper night makes 100 Wh more energy cost less."""
    t = eur(elements=[
        energy(comp("ENERGY", "0.20", step=1000), restrictions={"start_time": "22:00",
                                                                "end_time": "06:00"}),
        energy(comp("ENERGY", "0.40", step=1000))])
    before = compute_cost(t, SessionUsage(ams(21, 50), ams(22), [EnergyReading(ams(22), 100)]))
    after = compute_cost(t, SessionUsage(ams(21, 50), ams(22, 1), [
        EnergyReading(ams(22), 100), EnergyReading(ams(22, 1), 101)]))
    assert (before.total, after.total) == (40, 22)  # 1 kWh day vs 0.1 day + 0.9 night


def test_tax_included_prices() -> None:
    """Prices incl. 20% VAT: 10 kWh at €0.30 = €3.00 incl., €2.50 excl."""
    t = eur(tax_included=True, elements=[energy(comp("ENERGY", "0.30", vat=20))])
    cost = compute_cost(t, SessionUsage(ams(10), ams(11), [EnergyReading(ams(11), 10000)]))
    assert (cost.total, cost.total_excl_vat, cost.vat) == (300, 250, 50)


def test_min_price_on_both_bases() -> None:
    """OCPI Price limit {excl 1.00, incl 1.30}, 21% VAT: 0.5 kWh at €0.30 (0.15 / 0.1815) is
    raised to the larger of 1.00 x 1.21 = 1.21 and 1.30 incl. = €1.30 (€1.07 excl.)."""
    t = eur(min_price={"excl_vat": "1.00", "incl_vat": "1.30"},
            elements=[energy(comp("ENERGY", "0.30", vat=21))])
    cost = compute_cost(t, SessionUsage(ams(10), ams(11), [EnergyReading(ams(11), 500)]))
    assert (cost.total, cost.total_excl_vat) == (130, 107)


def test_field_case_q19_tiny_session_is_below_the_minimum_charge() -> None:
    """140 Wh at €0.30/kWh = €0.042 -> 4 cents, under Stripe's €0.50 minimum (settle policy)."""
    t = eur(elements=[energy(comp("ENERGY", "0.30"))])
    cost = compute_cost(t, SessionUsage(ams(9), ams(9, 3), [EnergyReading(ams(9, 3), 140)]))
    assert cost.total == 4 < minimum_charge("EUR")


def test_dst_change_keeps_night_hours_right() -> None:
    """Europe/Amsterdam springs forward on 2026-03-29 02:00 -> 03:00: a night window
    01:00-04:00 then lasts 2 real hours. 00:00-05:00 local at 1 kWh/h (4 real hours):
    2 kWh at night (¥10/kWh = ¥20) and 2 kWh by day (¥50/kWh = ¥100)."""
    t = tariff(time_zone="Europe/Amsterdam", elements=[
        energy(comp("ENERGY", 10), restrictions={"start_time": "01:00", "end_time": "04:00"}),
        energy(comp("ENERGY", 50))])
    zone = ZoneInfo("Europe/Amsterdam")
    start = datetime(2026, 3, 29, 0, 0, tzinfo=zone)
    stop = datetime(2026, 3, 29, 5, 0, tzinfo=zone)
    assert stop - start == timedelta(hours=5)  # wall clock; real time is 4 hours
    cost = compute_cost(t, SessionUsage(start, stop, [EnergyReading(stop, 4000)]))
    assert lines(cost) == [("ENERGY", 0, Decimal(2000), 20), ("ENERGY", 1, Decimal(2000), 100)]


# ------------------------------------------------------------------------------ parsing


def test_round_trip_to_dict() -> None:
    doc = {"id": "t-1", "country_code": "JP", "party_id": "PKC", "currency": "JPY",
           "time_zone": "Asia/Tokyo", "tax_included": False, "hold_amount": 3000,
           "parking_grace_period": 600, "min_price": {"excl_vat": 100},
           "max_price": {"excl_vat": 5000, "incl_vat": 5500},
           "elements": [energy(comp("ENERGY", 0.1, vat=10), comp("FLAT", 100)),
                        energy(comp("TIME", "12.3456", step=60),
                               restrictions={"start_time": "22:00", "end_time": "06:00",
                                             "day_of_week": ["MONDAY"],
                                             "start_date": "2026-01-01",
                                             "end_date": "2027-01-01", "min_duration": 60,
                                             "max_duration": 7200})]}
    t = parse_tariff(doc)
    assert t.elements[0].price_components[0].price == Decimal("0.1")  # float read via repr
    out = t.to_dict()
    assert parse_tariff(out) == t
    assert out["elements"][0]["price_components"][0]["price"] == 0.1
    assert out["country_code"] == "JP"


@pytest.mark.parametrize(("change", "field"), [
    ({"currency": "XXX"}, "currency"),
    ({"hold_amount": None}, "hold_amount"),
    ({"hold_amount": 49}, "hold_amount"),
    ({"time_zone": "Mars/Olympus"}, "time_zone"),
    ({"elements": []}, "elements"),
    ({"elements": [energy(comp("ENERGY", -1))]}, "elements[0].price_components[0].price"),
    ({"elements": [energy(comp("ENERGY", "abc"))]}, "elements[0].price_components[0].price"),
    ({"elements": [energy(comp("ENERGY", 1, step=0))]},
     "elements[0].price_components[0].step_size"),
    ({"elements": [energy({"type": "ENERGY", "price": 1})]},
     "elements[0].price_components[0].step_size"),
    ({"elements": [energy(comp("POWER", 1))]}, "elements[0].price_components[0].type"),
    ({"elements": [energy(comp("ENERGY", 1, vat=150))]}, "elements[0].price_components[0].vat"),
    ({"elements": [energy(comp("ENERGY", 1)), energy(comp("TIME", 1),
                                                     restrictions={"start_time": "25:00"})]},
     "elements[1].restrictions.start_time"),
    ({"elements": [energy(comp("ENERGY", 1), restrictions={"min_kwh": 5})]},
     "elements[0].restrictions.min_kwh"),
    ({"elements": [energy(comp("ENERGY", 1), restrictions={"day_of_week": ["FUNDAY"]})]},
     "elements[0].restrictions.day_of_week[0]"),
    ({"min_price": 10, "max_price": 5}, "min_price.excl_vat"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_tariffs_name_the_field(change: dict[str, Any], field: str) -> None:
    doc: dict[str, Any] = {"currency": "JPY", "hold_amount": 3000,
                           "elements": [energy(comp("ENERGY", 30))]}
    doc.update(change)
    with pytest.raises(TariffError) as err:
        parse_tariff(doc)
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_usage_errors() -> None:
    t = tariff(elements=[energy(comp("ENERGY", 30))])
    naive = datetime(2026, 3, 2, 10)
    with pytest.raises(UsageError):
        compute_cost(t, SessionUsage(naive, naive))
    with pytest.raises(UsageError):
        compute_cost(t, SessionUsage(jst(11), jst(10)))
    with pytest.raises(UsageError):
        compute_cost(t, SessionUsage(jst(10), jst(12), [EnergyReading(jst(11), 500),
                                                        EnergyReading(jst(12), 400)]))
    with pytest.raises(UsageError):
        compute_cost(t, SessionUsage(jst(10), jst(12), [EnergyReading(jst(13), 500)]))
    with pytest.raises(UsageError):
        compute_cost(t, SessionUsage(jst(10), jst(12), [EnergyReading(jst(12), 1.5)]))  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        compute_cost(t, SessionUsage(jst(10), jst(12), periods=[
            Period(jst(10), jst(11), CHARGING), Period(jst(10, 30), jst(12), PARKING)]))
    with pytest.raises(UsageError):  # a charger clock in 1970 (field case Q06)
        compute_cost(t, SessionUsage(datetime(1970, 1, 1, tzinfo=UTC), jst(12)))


def test_currency_helpers() -> None:
    assert to_minor(Decimal("12.345"), "EUR") == 1235
    assert to_minor(Decimal("1234.5"), "JPY") == 1235
    assert to_minor(Decimal("-0.005"), "EUR") == -1
    assert to_major(1234, "EUR") == Decimal("12.34")
    assert (minimum_charge("JPY"), minimum_charge("usd"), minimum_charge("GBP")) == (50, 50, 30)


@pytest.mark.parametrize(("field", "value"), [
    ("price", "1e30"), ("price", "1e400"), ("price", "9" * 60), ("price", "0.0000001"),
    ("step_size", 2**70),
])
def test_absurd_numbers_are_refused_with_the_field(field: str, value: Any) -> None:
    """A bound on every number keeps a typo from storing a tariff that cannot be priced."""
    component: dict[str, Any] = {"type": "ENERGY", "price": 40, "step_size": 1}
    component[field] = value
    with pytest.raises(TariffError) as info:
        tariff(elements=[energy(component)])
    assert info.value.field == f"elements[0].price_components[0].{field}"


def test_hold_amount_is_at_most_stripes_largest_amount() -> None:
    with pytest.raises(TariffError) as info:
        tariff(hold_amount=10**12, elements=[energy(comp("ENERGY", 40))])
    assert info.value.field == "hold_amount"
    assert tariff(hold_amount=99_999_999, elements=[energy(comp("ENERGY", 40))]).hold_amount \
        == 99_999_999
