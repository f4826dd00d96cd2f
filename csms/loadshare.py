"""Site load sharing, the pure core: who may draw how much current behind one feeder.

No I/O, no clock: :func:`allocate` takes the site's limit and the demands (running sessions and
sessions waiting to start) and returns per-session currents, who is admitted and who waits.
``csms.load.LoadManager`` feeds it and pushes the result to chargers as charging profiles
(OCPP 1.6 §3.13 Smart Charging, §5.16 SetChargingProfile; OCPP 2.0.1 K01). The flow is drawn
in docs/load-management.md.

The rule (all currents in A per phase, Decimal, results rounded DOWN to 0.1 A):

1. A running **outlet** (a plain socket behind a smart breaker) cannot be throttled: it keeps
   its full rated current (``max_a``).
2. What is left is shared **equally among running chargers** by water-filling: every charger
   gets the same level ``L``, clamped to its own ``[min_a, max_a]``; ``L`` is as high as the
   remainder allows, and the last tenths of an ampere that do not divide evenly go one 0.1 A
   step each to the first chargers (so equal shares differ by at most 0.1 A).
3. **Waiting** demands are considered in queue order: higher ``priority`` first, then first
   come first served (their order in the list). A waiting charger is admitted if every
   running charger, itself included, can still get its ``min_a`` (IEC 61851-1: 6 A is the
   lowest PWM duty cycle a car follows). A waiting outlet is admitted only if its full rated
   current fits in what remains after every running charger gets its minimum. The first one
   that does not fit stops the queue: nobody overtakes it (otherwise a stream of small
   chargers could starve an outlet forever); it and everything behind it stay ``queued``.
4. A waiting demand that could not fit even on an empty site (``min_a`` or an outlet's rated
   current above the limit) is ``rejected`` instead of blocking the queue.
5. If the running demands alone no longer fit (the limit was lowered, e.g. after a measured
   overshoot), running chargers are **paused** (0 A) in reverse priority order, newest
   first, until the others get their minimum; running outlets keep their current (they can
   only be cut by ending their session), so only when running outlets alone exceed the limit
   does the sum exceed it (every charger is then paused and nothing is admitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Literal

STEP = Decimal("0.1")
"""Resolution of every allocation, A."""
ZERO = Decimal(0)
DEFAULT_MIN_A = Decimal(6)
"""IEC 61851-1: the lowest charging current a car follows, A."""

Kind = Literal["charger", "outlet"]


def floor_step(value: Decimal) -> Decimal:
    """``value`` rounded down to 0.1 A."""
    return (value / STEP).to_integral_value(ROUND_FLOOR) * STEP


def ceil_step(value: Decimal) -> Decimal:
    """``value`` rounded up to 0.1 A."""
    return (value / STEP).to_integral_value(ROUND_CEILING) * STEP


@dataclass(frozen=True, slots=True)
class Demand:
    """One session that draws, or wants to draw, current behind the site's feeder.

    ``kind`` charger: throttled by charging profiles between ``min_a`` and ``max_a`` (its
    rating, A). ``kind`` outlet: all or nothing at ``max_a`` (its breaker's rated current, A).
    ``active``: already running (or admitted and starting); else waiting to be admitted.
    ``priority``: higher is admitted first and paused last.
    """

    key: str
    kind: Kind
    max_a: Decimal
    min_a: Decimal = DEFAULT_MIN_A
    priority: int = 0
    active: bool = False


@dataclass(frozen=True, slots=True)
class Allocation:
    """The result of :func:`allocate`: ``amps`` per admitted or running key (A, multiples of
    0.1), newly ``admitted`` keys, ``queued`` keys in queue order, ``rejected`` keys (cannot
    fit even alone), ``paused`` running chargers (0 A)."""

    limit_a: Decimal
    amps: dict[str, Decimal] = field(default_factory=dict)
    admitted: tuple[str, ...] = ()
    queued: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    paused: tuple[str, ...] = ()

    @property
    def total_a(self) -> Decimal:
        """The sum of the allocations, A (never above ``limit_a``)."""
        return sum(self.amps.values(), ZERO)


def _bounds(d: Demand) -> tuple[Decimal, Decimal]:
    """(min, max) of a charger on the 0.1 A grid: min rounded up, max rounded down."""
    hi = floor_step(max(d.max_a, ZERO))
    lo = min(ceil_step(max(d.min_a, ZERO)), hi)
    return lo, hi


def share(available: Decimal, chargers: Sequence[Demand]) -> dict[str, Decimal]:
    """Water-fill ``available`` A among ``chargers`` (rule 2). The caller guarantees that the
    minimums fit (``sum(min_a) <= available``); every result is within ``[min_a, max_a]``."""
    if not chargers:
        return {}
    bounds = {d.key: _bounds(d) for d in chargers}
    budget = floor_step(max(available, ZERO))

    def total(level: int) -> Decimal:
        lv = level * STEP
        return sum((min(max(lv, lo), hi) for lo, hi in bounds.values()), ZERO)

    top = int(max(hi for _, hi in bounds.values()) / STEP)
    low, high = 0, top  # the highest level whose total fits: binary search on 0.1 A steps
    while low < high:
        mid = (low + high + 1) // 2
        if total(mid) <= budget:
            low = mid
        else:
            high = mid - 1
    level = low * STEP
    amps = {k: min(max(level, lo), hi) for k, (lo, hi) in bounds.items()}
    spare = budget - sum(amps.values(), ZERO)
    for d in chargers:  # the remainder, one step each, to chargers sitting at the level
        if spare < STEP:
            break
        lo, hi = bounds[d.key]
        if amps[d.key] == level and level + STEP <= hi and lo <= level:
            amps[d.key] += STEP
            spare -= STEP
    return amps


def _queue_order(waiting: list[tuple[int, Demand]]) -> list[Demand]:
    """Higher priority first, then arrival order."""
    return [d for _, d in sorted(waiting, key=lambda p: (-p[1].priority, p[0]))]


def allocate(limit_a: Decimal, demands: Sequence[Demand]) -> Allocation:
    """Share ``limit_a`` (A per phase) among ``demands`` (see the module docstring).

    ``demands`` are in arrival order (the queue's first-come-first-served order); keys are
    unique. The sum of ``amps`` never exceeds ``limit_a``.
    """
    limit = floor_step(max(limit_a, ZERO))
    indexed = list(enumerate(demands))
    outlets = [d for _, d in indexed if d.active and d.kind == "outlet"]
    chargers = [(i, d) for i, d in indexed if d.active and d.kind == "charger"]
    waiting = _queue_order([(i, d) for i, d in indexed if not d.active])

    reserved = sum((floor_step(d.max_a) for d in outlets), ZERO)
    # rule 5: running chargers that no longer fit are paused, lowest priority / newest first
    paused: list[str] = []
    keep = sorted(chargers, key=lambda p: (-p[1].priority, p[0]))
    while keep and reserved + sum((_bounds(d)[0] for _, d in keep), ZERO) > limit:
        paused.append(keep.pop()[1].key)
    running = [d for _, d in sorted(keep, key=lambda p: p[0])]

    admitted: list[str] = []
    queued: list[str] = []
    rejected: list[str] = []
    minimums = sum((_bounds(d)[0] for d in running), ZERO)
    blocked = False
    for d in waiting:
        need = floor_step(d.max_a) if d.kind == "outlet" else _bounds(d)[0]
        if need > limit or (d.kind == "outlet" and need <= ZERO):
            rejected.append(d.key)
            continue
        if blocked or reserved + minimums + need > limit:
            blocked = True
            queued.append(d.key)
            continue
        admitted.append(d.key)
        if d.kind == "outlet":
            reserved += need
            outlets.append(d)
        else:
            minimums += need
            running.append(d)

    amps = {d.key: floor_step(d.max_a) for d in outlets}
    amps.update(share(limit - reserved, running))
    amps.update({k: ZERO for k in paused})
    return Allocation(limit, amps, tuple(admitted), tuple(queued), tuple(rejected),
                      tuple(paused))
