"""Numbers in human units: bytes as KiB/MiB/GiB, times in ms (seconds past 10 s), rates in tok/s,
three significant digits, thousands separated, never an exponent."""

from __future__ import annotations

import math


def sig(v: float, digits: int = 3) -> str:
    """`digits` significant digits, no exponent: 0.000412, 17.7, 245, 1,660, 33,816,576."""
    if v is None or not math.isfinite(v):
        return "-"
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{decimals}f}"


def size(n: float) -> str:
    """Bytes in binary units: 512 B, 1.00 KiB, 281 MiB, 4.50 GiB."""
    if n is None or not math.isfinite(n):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{sig(n)} {unit}"
        n /= 1024
    return str(n)


def ms(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{sig(v / 1e3)} s" if abs(v) >= 1e4 else f"{sig(v)} ms"


def tok_s(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{sig(v)} tok/s"


def count(v: float) -> str:
    """Parameter counts and the like: 8.72 M, 2.7 G."""
    if v is None or not math.isfinite(v):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{sig(v / scale)} {unit}"
    return sig(v)


def ratio(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{sig(v)}x"


def percent(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{sig(100 * v)}%"


# The schema's unit (bench.show.columns) -> how a value of that unit is written.
BY_UNIT = {"B": size, "ms": ms, "tokens/s": tok_s, "parameters": count, "FLOP": count,
           "fraction": percent, "s": lambda v: "-" if not math.isfinite(v) else f"{sig(v)} s"}


def value(column: str, v) -> str:
    """A results.csv cell in its column's unit; text as it is."""
    from bench.show import columns

    if isinstance(v, str) or v is None:
        return v or "-"
    if isinstance(v, bool):
        return str(v)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    unit = columns.UNITS.get(column)
    if unit in BY_UNIT:
        return BY_UNIT[unit](v)
    if not math.isfinite(v):
        return "-"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else sig(v)
