"""Money as integers: an amount in a currency's minor unit (cents for EUR, yen for JPY, fils for KWD).

``revenue`` (and ``mrr``) travel as Avro doubles, and sums of doubles drift: 0.1 + 0.2 is not 0.3. So an
amount becomes an integer of minor units once, with the currency's minor unit from ISO 4217 (the
``iso4217`` package ships ISO's own table, dated in its version), and everything after that stores and
adds integers. The double is read through its shortest decimal form (``repr``: 19.99 is "19.99", not
19.989999999999998436805981327779591083526611328125) and rounded half to even to the minor unit, so an
amount with more decimals than the currency has (10.005 EUR) becomes whole minor units (1000 cents).

:func:`to_minor` is the one conversion: validation calls it to reject what it cannot convert (the error
names the field), and the cores call it on the events that passed, so every amount kept is its result.
"""
from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from typing import Optional

from iso4217 import Currency

# The largest amount of minor units kept: doubles hold every integer up to 2**53 exactly, so a gauge
# (a double) still shows every sum of a few such amounts to the minor unit.
MAX_MINOR = 2**53 - 1


class MoneyError(ValueError):
    """An amount that is not money: the message names the field and what is wrong."""


@lru_cache(maxsize=None)
def minor_unit(currency: str) -> Optional[int]:
    """Decimal places of the currency's minor unit per ISO 4217 (EUR 2, JPY 0, KWD 3), or None when the code
    is not an ISO 4217 currency with a minor unit (unknown codes, and units such as XAU gold or XDR)."""
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isupper():
        return None
    try:
        return Currency(currency).exponent
    except ValueError:
        return None


def to_minor(amount: object, currency: object, field: str = "revenue") -> int:
    """``amount`` of ``currency`` as an integer of its minor units; MoneyError naming ``field`` (or
    ``currency``) if it can't be: missing, not a finite number, negative, above MAX_MINOR, or an unknown
    currency code."""
    if currency is None or currency == "":
        raise MoneyError(f"currency is missing: {field} needs an ISO 4217 currency code")
    exponent = minor_unit(currency)  # type: ignore[arg-type]
    if exponent is None:
        shown = str(currency)[:16]
        raise MoneyError(f"currency {shown!r} is not an ISO 4217 currency code with a minor unit (e.g. EUR, USD, JPY)")
    if amount is None:
        raise MoneyError(f"{field} is missing")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount):
        raise MoneyError(f"{field} {amount!r} is not a finite number")
    if amount < 0:
        raise MoneyError(f"{field} {amount!r} is negative")
    minor = int(Decimal(repr(amount)).scaleb(exponent).to_integral_value(ROUND_HALF_EVEN))
    if minor > MAX_MINOR:
        raise MoneyError(f"{field} {amount!r} {currency} is above {MAX_MINOR} minor units")
    return minor


def from_minor(minor: int, currency: str) -> float:
    """Minor units back as an amount of the currency (a double: exact below 2**53 minor units, rounded once)."""
    return minor / 10 ** (minor_unit(currency) or 0)
