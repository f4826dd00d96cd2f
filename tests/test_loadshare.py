"""The load-sharing rule (csms.loadshare), pure: no sockets, no database."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from csms.loadshare import STEP, Demand, allocate, share

D = Decimal


def charger(key: str, max_a: str = "32", active: bool = True, priority: int = 0,
            min_a: str = "6") -> Demand:
    return Demand(key, "charger", D(max_a), D(min_a), priority, active)


def outlet(key: str, rated: str = "16", active: bool = True, priority: int = 0) -> Demand:
    return Demand(key, "outlet", D(rated), D(rated), priority, active)


def test_equal_share_among_running_chargers() -> None:
    a = allocate(D(100), [charger(f"c{i}") for i in range(10)])
    assert set(a.amps.values()) == {D(10)}
    assert a.total_a == D(100)


def test_running_outlets_keep_their_rated_current_and_chargers_share_the_rest() -> None:
    a = allocate(D(100), [outlet("o1"), outlet("o2"), *(charger(f"c{i}") for i in range(4))])
    assert a.amps["o1"] == a.amps["o2"] == D(16)
    assert [a.amps[f"c{i}"] for i in range(4)] == [D(17)] * 4


def test_water_filling_gives_a_low_rated_charger_its_max_and_the_rest_to_others() -> None:
    a = allocate(D(40), [charger("small", max_a="10"), charger("a"), charger("b")])
    assert a.amps == {"small": D(10), "a": D(15), "b": D(15)}


def test_chargers_never_get_more_than_their_max_even_with_spare_capacity() -> None:
    a = allocate(D(100), [charger("a", max_a="16"), charger("b", max_a="32")])
    assert a.amps == {"a": D(16), "b": D(32)}


def test_remainder_goes_in_tenths_to_the_first_chargers() -> None:
    a = allocate(D(10), [charger("a", min_a="1"), charger("b", min_a="1"),
                         charger("c", min_a="1")])
    assert a.amps == {"a": D("3.4"), "b": D("3.3"), "c": D("3.3")}
    assert a.total_a == D(10)


def test_results_are_rounded_down_to_a_tenth() -> None:
    a = allocate(D("20.07"), [charger("a"), charger("b")])
    assert a.amps == {"a": D("10.0"), "b": D("10.0")}
    assert allocate(D("19.99"), [charger("a")]).amps == {"a": D("19.9")}


def test_waiting_charger_admitted_while_every_charger_keeps_its_minimum() -> None:
    demands = [charger(f"c{i}") for i in range(16)] + [charger("new", active=False)]
    a = allocate(D(100), demands)  # 17 x 6 A = 102 A > 100 A
    assert a.queued == ("new",) and a.admitted == ()
    a = allocate(D(102), demands)
    assert a.admitted == ("new",) and a.amps["new"] == D(6)


def test_waiting_outlet_needs_its_full_rated_current_after_the_chargers_minimums() -> None:
    chargers = [charger(f"c{i}") for i in range(10)]  # minimums 60 A
    a = allocate(D(100), [*chargers, outlet("o1"), outlet("o2"), outlet("o3", active=False)])
    assert a.queued == ("o3",)  # 60 + 32 + 16 = 108 > 100
    assert all(a.amps[f"c{i}"] == D("6.8") for i in range(10))
    a = allocate(D(100), [*chargers[:8], outlet("o1"), outlet("o2"), outlet("o3", active=False)])
    assert a.admitted == ("o3",)  # 48 + 48 = 96
    assert a.amps["o3"] == D(16) and a.total_a <= D(100)


def test_queue_is_first_come_first_served_and_nobody_overtakes_the_head() -> None:
    demands = [charger(f"c{i}") for i in range(15)]  # 90 A of minimums on 100 A
    a = allocate(D(100), [*demands, outlet("o1", active=False), charger("late", active=False)])
    assert a.queued == ("o1", "late")  # the charger would fit (96 A) but waits behind o1
    assert a.admitted == ()


def test_priority_goes_first_in_the_queue() -> None:
    demands = [charger(f"c{i}") for i in range(15)]
    a = allocate(D(100), [*demands, outlet("o1", active=False),
                          charger("vip", active=False, priority=5)])
    assert a.admitted == ("vip",) and a.queued == ("o1",)


def test_an_outlet_bigger_than_the_site_is_rejected_not_queued() -> None:
    a = allocate(D(20), [outlet("big", rated="32", active=False), charger("c", active=False)])
    assert a.rejected == ("big",)
    assert a.admitted == ("c",) and a.amps["c"] == D(20)


def test_lowered_limit_pauses_newest_lowest_priority_chargers() -> None:
    demands = [charger("old", priority=1), charger("mid"), charger("new"), outlet("o")]
    a = allocate(D(30), demands)  # 16 A outlet + 3 x 6 A = 34 A > 30 A
    assert a.paused == ("new",)
    assert a.amps == {"o": D(16), "old": D(7), "mid": D(7), "new": D(0)}


def test_no_demands_and_zero_limit() -> None:
    assert allocate(D(100), []).amps == {}
    a = allocate(D(0), [charger("a", active=False)])
    assert a.rejected == ("a",) and a.amps == {}


def test_share_with_nothing_available_gives_minimums_clamped() -> None:
    assert share(D(0), [charger("a", min_a="0")]) == {"a": D(0)}


amps = st.decimals(min_value=D(0), max_value=D(80), places=1)
demand_st = st.builds(
    lambda kind, max_a, min_a, prio, active: Demand(
        "", kind, max_a, min(min_a, max_a) if kind == "charger" else max_a, prio, active),
    st.sampled_from(["charger", "charger", "outlet"]),
    st.decimals(min_value=D(1), max_value=D(63), places=2),
    st.decimals(min_value=D(0), max_value=D(10), places=2),
    st.integers(0, 2),
    st.booleans(),
)


def _floor(x: Decimal) -> Decimal:
    return (x * 10).to_integral_value(rounding="ROUND_FLOOR") / 10


def _ceil(x: Decimal) -> Decimal:
    return (x * 10).to_integral_value(rounding="ROUND_CEILING") / 10


def _keyed(ds: list[Demand]) -> list[Demand]:
    return [Demand(f"k{i}", d.kind, d.max_a, d.min_a, d.priority, d.active)
            for i, d in enumerate(ds)]


@settings(max_examples=400, deadline=None)
@given(limit=st.decimals(min_value=D(0), max_value=D(400), places=2),
       demands=st.lists(demand_st, max_size=25).map(_keyed))
def test_properties(limit: Decimal, demands: list[Demand]) -> None:
    a = allocate(limit, demands)
    by_key = {d.key: d for d in demands}
    # the sum never exceeds the limit (unless running outlets alone do: they cannot be
    # throttled, and then every charger is paused), every value is on the 0.1 A grid
    running_outlets = sum((_floor(d.max_a) for d in demands if d.active and d.kind == "outlet"),
                          D(0))
    if running_outlets <= limit:
        assert a.total_a <= limit
    else:
        assert a.total_a == running_outlets and not a.admitted
    assert all(v >= 0 and v % STEP == 0 for v in a.amps.values())
    # every waiting demand is exactly one of admitted / queued / rejected
    waiting = {d.key for d in demands if not d.active}
    assert set(a.admitted) | set(a.queued) | set(a.rejected) == waiting
    assert len(a.admitted) + len(a.queued) + len(a.rejected) == len(waiting)
    # running outlets keep their rated current, admitted ones get it
    for d in demands:
        if d.kind == "outlet" and (d.active or d.key in a.admitted):
            assert a.amps[d.key] == _floor(d.max_a)
    # chargers stay within [min, max] unless paused; nobody exceeds max; the ones strictly
    # inside their bounds share equally (they differ by at most 0.1 A)
    inside = []
    for k, v in a.amps.items():
        d = by_key[k]
        assert v <= d.max_a
        if d.kind == "charger" and k not in a.paused:
            hi = _floor(d.max_a)
            lo = min(_ceil(d.min_a), hi)
            assert lo <= v <= hi
            if lo < v < hi:
                inside.append(v)
    if inside:
        assert max(inside) - min(inside) <= STEP
    # a queued head really does not fit
    if a.queued:
        head = by_key[a.queued[0]]
        charger_min = sum(
            (min(_ceil(by_key[k].min_a), _floor(by_key[k].max_a))
             for k in a.amps if by_key[k].kind == "charger" and k not in a.paused),
            D(0))
        outlets = sum((v for k, v in a.amps.items() if by_key[k].kind == "outlet"), D(0))
        need = _floor(head.max_a) if head.kind == "outlet" else \
            min(_ceil(head.min_a), _floor(head.max_a))
        assert outlets + charger_min + need > a.limit_a


@settings(max_examples=300, deadline=None)
@given(limit=st.decimals(min_value=D(0), max_value=D(300), places=1),
       maxes=st.lists(st.decimals(min_value=D(6), max_value=D(63), places=1), min_size=1,
                      max_size=20))
def test_equal_shares_differ_by_at_most_a_tenth(limit: Decimal, maxes: list[Decimal]) -> None:
    """Running chargers only: the ones not held at their own max get equal shares (±0.1 A),
    one held at its max is not above their level, and no capacity is left unused."""
    demands = [Demand(f"k{i}", "charger", m, D(6), 0, True) for i, m in enumerate(maxes)]
    a = allocate(limit, demands)
    assert a.total_a <= limit
    live = {k: (v, demands[int(k[1:])].max_a) for k, v in a.amps.items() if k not in a.paused}
    if not live:
        return
    free = [v for v, hi in live.values() if 6 < v < hi]
    if free:
        assert max(free) - min(free) <= STEP
    for v, hi in live.values():
        assert 6 <= v <= hi
        if v == hi and free:  # held at its own max: no more than the others' level
            assert v <= max(free) + STEP
    if not a.paused:  # no capacity wasted beyond rounding: all at max, or the limit used
        all_max = all(v == hi for v, hi in live.values())
        assert all_max or limit - a.total_a < STEP
