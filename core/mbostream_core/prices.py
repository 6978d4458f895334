"""Price room: int64 fixed-point prices (1e-9) and their decimal strings, used only at the edges."""

from __future__ import annotations

from typing import Final

from mbostream_core.records import UNDEF_PRICE

PRICE_SCALE: Final = 1_000_000_000
PRICE_DECIMALS: Final = 9


def format_price(price: int) -> str | None:
    """Formats a 1e-9 fixed-point price with all nine decimals (``65400000000`` → ``"65.400000000"``).

    Returns None for UNDEF_PRICE. Integer arithmetic only: no float ever touches a price.
    """
    if price == UNDEF_PRICE:
        return None
    sign = "-" if price < 0 else ""
    whole, frac = divmod(abs(price), PRICE_SCALE)
    return f"{sign}{whole}.{frac:09d}"


def parse_price(text: str) -> int:
    """Parses a decimal string into a 1e-9 fixed-point price, exactly (at most nine decimals)."""
    s = text.strip()
    negative = s.startswith("-")
    if negative or s.startswith("+"):
        s = s[1:]
    whole, _, frac = s.partition(".")
    if not whole.isdigit() and not (whole == "" and frac.isdigit()):
        raise ValueError(f"not a decimal price: {text!r}")
    if frac and not frac.isdigit():
        raise ValueError(f"not a decimal price: {text!r}")
    if len(frac) > PRICE_DECIMALS:
        raise ValueError(f"more than {PRICE_DECIMALS} decimals: {text!r}")
    value = int(whole or "0") * PRICE_SCALE + int(frac.ljust(PRICE_DECIMALS, "0") or "0")
    return -value if negative else value
