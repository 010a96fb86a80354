"""Kubernetes quantities ("500m", "64Gi", "1.5", "2e3") as the integers Berth keeps in its tables.

Parsing is delegated to the `kubernetes` package; results are memoised because the same few strings
("100m", "1Gi", "8") repeat across every pod and node (the informer applies 150,000 pods at start-up
with a handful of distinct strings; Decimal arithmetic per value was ~0.9 s).
"""

import math
import re
from decimal import Decimal

from cachetools import LRUCache
from kubernetes.utils.quantity import parse_quantity

from scheduler.model.names import GPU

MAX_DIGITS = 20  # 1e20 of anything is out of range whatever the unit
# Kubernetes' quantity grammar (apimachinery resource.Quantity): a signed decimal number, then at most one
# suffix: binary SI, decimal SI, or an exponent. ASCII digits only. The `kubernetes` package's parser is
# laxer (Python's Decimal): it read "1_000" as 1000, Arabic-Indic and full-width digits as numbers, and
# "1K", "1e3m" and "1e3Ki" (no suffix Go knows) as quantities, so pods Go would refuse were judged.
_QUANTITY = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?")


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


class QuantityRangeError(QuantityError):
    """A quantity far beyond anything a node has ("1e999999"): refused before it becomes an integer."""


def to_decimal(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise QuantityError(f"{value!r} is not a Kubernetes quantity")
    text = str(value).strip()  # Go's UnmarshalJSON trims the space around a quantity too
    if _QUANTITY.fullmatch(text) is None:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity")
    try:
        return parse_quantity(text)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity") from exc


def milli(value: object) -> int:
    """CPU in millicores, rounded up as the API server does for sub-millicore values."""
    return math.ceil(to_decimal(value) * 1000)


def whole(value: object) -> int:
    """Memory in bytes, or a count (GPUs, pods), rounded up."""
    return math.ceil(to_decimal(value))


# (is cpu, quantity string) -> units: the one memo of quantity parsing, of strings up to MEMO_LONGEST characters.
MEMO_LONGEST = 64
_UNITS: LRUCache[tuple[bool, str], int] = LRUCache(maxsize=8192)


def to_units(resource: str, value: object) -> int:
    """The integer Berth stores for `resource`: millicores for cpu, whole units otherwise.
    Absurd magnitudes ("1e999999") are refused before the integer conversion, which would take minutes."""
    cpu = resource == "cpu"
    # Real quantities are a few characters; a long one ("0.000...1", a megabyte of zeros) is read but not kept:
    # 8,192 of them held a megabyte each.
    key = (cpu, value) if type(value) is str and len(value) <= MEMO_LONGEST else None
    if key is not None:
        hit = _UNITS.get(key)
        if hit is not None:
            return hit
    d = to_decimal(value)
    if not d.is_finite():
        raise QuantityError(f"{value!r} is out of range")
    if d.adjusted() >= MAX_DIGITS:
        raise QuantityRangeError(f"{value!r} is out of range")
    amount = math.ceil(d * 1000) if cpu else math.ceil(d)
    if key is not None:
        _UNITS[key] = amount
    return amount


def format_units(resource: str, amount: int) -> str:
    """The inverse of `to_units`, for messages and status: `1500m`, `64Gi`, `8`."""
    if resource == "cpu":
        return str(amount // 1000) if amount % 1000 == 0 else f"{amount}m"
    if resource == "memory" or resource.startswith(("ephemeral-storage", "hugepages-")):
        for suffix, size in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
            if amount and amount % size == 0:
                return f"{amount // size}{suffix}"
    return str(amount)


__all__ = [
    "GPU",
    "MAX_DIGITS",
    "QuantityError",
    "QuantityRangeError",
    "format_units",
    "milli",
    "to_decimal",
    "to_units",
    "whole",
]
