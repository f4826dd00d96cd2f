"""Currencies we can bill in: ISO 4217 exponents and Stripe's minimum charge amounts.

Money is an ``int`` in the currency's minor unit everywhere in billing (JPY has exponent 0, so
¥1,234 is ``1234``; EUR has exponent 2, so €12.34 is ``1234``). The minor unit is also the unit
of Stripe's ``amount`` fields for every currency listed here. Currencies whose Stripe unit differs
from ISO 4217 (ISK and UGX are sent as two-decimal amounts divisible by 100; BHD, JOD, KWD, OMR,
TND are three-decimal with a last digit of 0) are deliberately absent: adding one needs its own
rule first.

Sources:
    * ISO 4217 minor units (exponents): the ISO 4217 list, "Minor unit" column.
    * Minimum charge amounts: Stripe, "Supported currencies - Minimum and maximum charge amounts",
      https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts . Stripe also requires
      the amount to be worth at least the minimum of the account's settlement currency after
      conversion; these numbers hold when charge and settlement currency are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from billing.errors import BillingError


@dataclass(frozen=True, slots=True)
class Currency:
    """One billable currency.

    Attributes:
        code: ISO 4217 alphabetic code, upper case (``JPY``).
        exponent: ISO 4217 minor unit digits (``0`` for JPY, ``2`` for EUR).
        stripe_minimum: Stripe's minimum charge, in minor units (``50`` = ¥50 or €0.50).
    """

    code: str
    exponent: int
    stripe_minimum: int


def _table(*rows: tuple[str, int, int]) -> dict[str, Currency]:
    return {code: Currency(code, exponent, minimum) for code, exponent, minimum in rows}


CURRENCIES: dict[str, Currency] = _table(
    # code, ISO exponent, Stripe minimum (minor units)
    ("AED", 2, 200),    # 2.00 د.إ
    ("AUD", 2, 50),     # $0.50
    ("BGN", 2, 100),    # лв1.00
    ("BRL", 2, 50),     # R$0.50
    ("CAD", 2, 50),     # $0.50
    ("CHF", 2, 50),     # 0.50 Fr
    ("CZK", 2, 1500),   # 15.00 Kč
    ("DKK", 2, 250),    # 2.50 kr.
    ("EUR", 2, 50),     # €0.50
    ("GBP", 2, 30),     # £0.30
    ("HKD", 2, 400),    # $4.00
    ("HUF", 2, 17500),  # 175.00 Ft (charged as a two-decimal currency)
    ("INR", 2, 50),     # ₹0.50
    ("JPY", 0, 50),     # ¥50
    ("MXN", 2, 1000),   # $10
    ("MYR", 2, 200),    # RM 2
    ("NOK", 2, 300),    # 3.00 kr.
    ("NZD", 2, 50),     # $0.50
    ("PLN", 2, 200),    # 2.00 zł
    ("RON", 2, 200),    # lei2.00
    ("SEK", 2, 300),    # 3.00 kr.
    ("SGD", 2, 50),     # $0.50
    ("USD", 2, 50),     # $0.50
)


class UnknownCurrency(BillingError, ValueError):
    """The currency code is not in :data:`CURRENCIES`."""


def currency(code: str) -> Currency:
    """Look up a currency by ISO 4217 code (any case).

    Raises:
        UnknownCurrency: the code is not one we can bill in.
    """
    found = CURRENCIES.get(code.upper()) if isinstance(code, str) else None
    if found is None:
        raise UnknownCurrency(f"unsupported currency {code!r}; known: {', '.join(CURRENCIES)}")
    return found


def minimum_charge(code: str) -> int:
    """Stripe's minimum charge for ``code`` in minor units (JPY -> 50, EUR -> 50, GBP -> 30)."""
    return currency(code).stripe_minimum


def to_minor(amount: Decimal, code: str) -> int:
    """Round a major-unit ``Decimal`` to integer minor units, ROUND_HALF_UP at the exponent.

    ``to_minor(Decimal("12.345"), "EUR") == 1235``; ``to_minor(Decimal("1234.5"), "JPY") == 1235``.
    Half-up rounds away from zero on ties, for negative amounts too.
    """
    scaled = amount.scaleb(currency(code).exponent)
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def to_major(minor: int, code: str) -> Decimal:
    """Integer minor units to an exact major-unit ``Decimal`` (1234 EUR -> ``Decimal("12.34")``)."""
    return Decimal(minor).scaleb(-currency(code).exponent)
