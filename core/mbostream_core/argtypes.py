"""Numbers room: how every number mbostream accepts is checked, and the argparse types made from it.

A :class:`Range` is one documented range. The same object checks a number whatever it comes from:
a command-line flag (:meth:`Range.argtype`), an ``MBOSTREAM_*`` variable (the settings loader,
:mod:`mbostream.config`, which defines the server's ranges) or an RPC field (the ReplayService and
MarketDataService handlers). NaN and the infinities are never inside a range.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


def _number(value: float) -> str:
    """``100000``, ``0.01``, ``4294967295``: a range end, exactly."""
    if float(value).is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(float(value))


@dataclass(frozen=True, kw_only=True)
class Range:
    """A closed range ``low..high`` of finite numbers, and optionally 0 with a special meaning.

    Attributes
    ----------
    low, high
        The inclusive ends.
    integer
        Only whole numbers (an int setting or field).
    zero
        What 0 means when it is allowed below ``low`` (e.g. ``"every replay step"``); None when it
        is not.
    unit
        Shown after the range (``"records/s"``, ``"ms"``).
    """

    low: float
    high: float
    integer: bool = False
    zero: str | None = None
    unit: str = ""

    def describe(self) -> str:
        """The range as the docs, ``--help`` and every error message say it."""
        text = f"{_number(self.low)} to {_number(self.high)}"
        if self.unit:
            text += f" {self.unit}"
        if self.zero is not None:
            text += f", or 0 ({self.zero})"
        return text

    def check(self, value: float) -> float:
        """Returns ``value`` when it is inside the range; raises ValueError saying the range otherwise."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number from {self.describe()}, got {value!r}")
        whole = isinstance(value, int) or (math.isfinite(value) and value.is_integer())
        finite = isinstance(value, int) or math.isfinite(value)
        inside = finite and (self.low <= value <= self.high or (self.zero is not None and value == 0))
        if not inside or (self.integer and not whole):
            kind = "a whole number" if self.integer else "a finite number"
            raise ValueError(f"must be {kind} from {self.describe()}, got {value!r}")
        return value

    def argtype(self, text: str) -> float:
        """An argparse ``type``: the text parsed and checked, or an ArgumentTypeError saying the range."""
        try:
            value: float = int(text) if self.integer else float(text)
        except ValueError:
            kind = "a whole number" if self.integer else "a number"
            raise argparse.ArgumentTypeError(f"must be {kind} from {self.describe()}, got {text!r}") from None
        try:
            return self.check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


def _at_least(text: str, low: float, *, integer: bool, strict: bool = False) -> float:
    """Parses a finite number >= ``low`` (> ``low`` with ``strict``), for flags without a set maximum."""
    try:
        value: float = int(text) if integer else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a {'whole ' if integer else ''}number, got {text!r}") from None
    if not math.isfinite(value) or value < low or (strict and value == low):
        bound = f"{'>' if strict else '>='} {_number(low)}"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return int(_at_least(text, 0, integer=True))


def positive_int(text: str) -> int:
    """An integer > 0."""
    return int(_at_least(text, 1, integer=True))


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _at_least(text, 0, integer=False, strict=True)


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _at_least(text, 0, integer=False)
