"""What a charging station shows the driver about money: tariff text, cost text and the OCA
"OCPP & California Pricing Requirements" price data. Pure functions over :mod:`billing.tariff`;
no I/O, nothing version-specific beyond the field names the messages use.

OCPP 2.0.1 carries these in ``IdTokenInfoType.personalMessage`` (C01 / E01: the tariff of the
driver), ``CostUpdatedRequest`` (I02: running cost), ``TransactionEventResponse.totalCost`` and
``updatedPersonalMessage`` (I03: final cost). The California Pricing customisation adds a
``customData`` object with ``vendorId`` ``org.openchargealliance.costmsg`` where the station
declares it (device model variable ``CustomizationCtrlr.CustomImplementationEnabled``, instance
``org.openchargealliance.costmsg``): ``chargingPrice`` {``kWhPrice``, ``hourPrice``,
``flatFee``}, ``idlePrice`` {``graceMinutes``, ``hourPrice``}, and for a running cost
``timestamp``, ``meterValue`` (Wh) and ``state`` (``Charging`` | ``Idle``). Prices are major
units of the tariff's currency, VAT included.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.currency import to_major
from billing.tariff import Dimension, PriceComponent, Tariff

COSTMSG_VENDOR = "org.openchargealliance.costmsg"
MAX_MESSAGE = 512
"""MessageContentType.content is at most 512 characters (2.0.1)."""

CHARGING_STATE_STATUS = {
    "Charging": "Charging",
    "SuspendedEV": "SuspendedEV",
    "SuspendedEVSE": "SuspendedEVSE",
    "EVConnected": "SuspendedEV",
    "Idle": "Available",
}
"""2.0.1 ``TransactionType.chargingState`` -> the connector status vocabulary the session layer
prices periods with (Charging = CHARGING; SuspendedEV/SuspendedEVSE = PARKING: plugged in, not
charging; Idle = no EV connected, neither)."""


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _with_vat(tariff: Tariff, component: PriceComponent) -> Decimal:
    """The price the driver pays per unit (VAT added unless the tariff includes it)."""
    if tariff.tax_included or component.vat is None:
        return component.price
    return component.price * (1 + component.vat / 100)


def _component(tariff: Tariff, dim: Dimension) -> PriceComponent | None:
    """The headline price of ``dim``: from the first unrestricted element that has one (the
    default price), else from the first element that has one."""
    ordered = sorted(tariff.elements, key=lambda e: e.restrictions is not None)
    return next((c for e in ordered if (c := e.component(dim)) is not None), None)


def money(amount_minor: int, currency: str) -> str:
    """I03: an amount for a driver, ``300 JPY``, ``12.34 EUR``."""
    return f"{_num(to_major(amount_minor, currency))} {currency}"


def tariff_text(tariff: Tariff) -> str:
    """One line for the station's display (C01 personalMessage): the tariff's own
    ``tariff_alt_text`` when it has one, else e.g. ``40 JPY/kWh. Card hold 3000 JPY.``"""
    alt = tariff.extra.get("tariff_alt_text")
    if isinstance(alt, list):
        for entry in alt:
            if isinstance(entry, dict) and isinstance(entry.get("text"), str) and entry["text"]:
                return entry["text"][:MAX_MESSAGE]
    cur = tariff.currency
    parts: list[str] = []
    units = {Dimension.ENERGY: "/kWh", Dimension.TIME: "/h charging",
             Dimension.PARKING_TIME: "/h parking", Dimension.FLAT: " per session"}
    for dim, unit in units.items():
        comp = _component(tariff, dim)
        if comp is None or comp.price == 0:
            continue
        text = f"{_num(_with_vat(tariff, comp))} {cur}{unit}"
        if dim is Dimension.PARKING_TIME and tariff.parking_grace_period:
            text += f" after {tariff.parking_grace_period // 60} min"
        parts.append(text)
    head = ", ".join(parts) if parts else "Free"
    if len(tariff.elements) > 1:
        head += " (time-of-day prices apply)"
    return f"{head}. Card hold {money(tariff.hold_amount, cur)}."[:MAX_MESSAGE]


def cost_text(amount_minor: int, currency: str, energy_wh: int | None) -> str:
    """The final cost line (I03 updatedPersonalMessage): ``Total 300 JPY for 7.50 kWh.``"""
    energy = "" if energy_wh is None else f" for {Decimal(energy_wh) / 1000:.2f} kWh"
    return f"Total {money(amount_minor, currency)}{energy}."


def message(text: str) -> dict[str, Any]:
    """C01 / I03: a 2.0.1 MessageContentType (personalMessage, updatedPersonalMessage)."""
    return {"format": "UTF8", "content": text[:MAX_MESSAGE]}


def _price(tariff: Tariff, dim: Dimension) -> float:
    comp = _component(tariff, dim)
    return 0.0 if comp is None else float(_with_vat(tariff, comp))


def california_prices(tariff: Tariff) -> dict[str, Any]:
    """C01: ``customData`` of an IdTokenInfo with the driver's prices (California Pricing,
    user-specific price)."""
    idle: dict[str, Any] = {"hourPrice": _price(tariff, Dimension.PARKING_TIME)}
    if tariff.parking_grace_period:
        idle["graceMinutes"] = tariff.parking_grace_period // 60
    return {
        "vendorId": COSTMSG_VENDOR,
        "chargingPrice": {
            "kWhPrice": _price(tariff, Dimension.ENERGY),
            "hourPrice": _price(tariff, Dimension.TIME),
            "flatFee": _price(tariff, Dimension.FLAT),
        },
        "idlePrice": idle,
    }


def california_running_cost(tariff: Tariff, at: datetime, meter_wh: int | None,
                            charging: bool) -> dict[str, Any]:
    """I02: ``customData`` of a CostUpdatedRequest (California Pricing, running cost);
    ``meter_wh`` is the station's register reading."""
    data = california_prices(tariff)
    data["timestamp"] = at.isoformat().replace("+00:00", "Z")
    data["state"] = "Charging" if charging else "Idle"
    if meter_wh is not None:
        data["meterValue"] = meter_wh
    return data


def major(amount_minor: int, currency: str) -> float:
    """I02 / I03: a cost for a JSON ``number`` field (``totalCost``), in major units."""
    return float(to_major(amount_minor, currency))
