"""Kubernetes quantities ("500m", "64Gi", "1.5", "2e3") as the integers Berth keeps in its tables.

Parsing is delegated to the `kubernetes` package; results are memoised because the same few strings
("100m", "1Gi", "8") repeat across every pod and node.
"""

import math
from decimal import Decimal

from cachetools import LRUCache, cached
from kubernetes.utils.quantity import parse_quantity

GPU = "nvidia.com/gpu"


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


@cached(LRUCache(maxsize=4096))
def _decimal(value: str) -> Decimal:
    try:
        return parse_quantity(value)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity") from exc


def to_decimal(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise QuantityError(f"{value!r} is not a Kubernetes quantity")
    return _decimal(str(value))


def milli(value: object) -> int:
    """CPU in millicores, rounded up as the API server does for sub-millicore values."""
    return math.ceil(to_decimal(value) * 1000)


def whole(value: object) -> int:
    """Memory in bytes, or a count (GPUs, pods), rounded up."""
    return math.ceil(to_decimal(value))


MAX_DIGITS = 20  # 1e20 of anything is out of range whatever the unit


def to_units(resource: str, value: object) -> int:
    """The integer Berth stores for `resource`: millicores for cpu, whole units otherwise.
    Absurd magnitudes ("1e999999") are refused before the integer conversion, which would take minutes."""
    d = to_decimal(value)
    if not d.is_finite() or d.adjusted() >= MAX_DIGITS:
        raise QuantityError(f"{value!r} is out of range")
    return milli(value) if resource == "cpu" else whole(value)


def format_units(resource: str, amount: int) -> str:
    """The inverse of `to_units`, for messages and status: `1500m`, `64Gi`, `8`."""
    if resource == "cpu":
        return str(amount // 1000) if amount % 1000 == 0 else f"{amount}m"
    if resource == "memory" or resource.startswith(("ephemeral-storage", "hugepages-")):
        for suffix, size in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
            if amount and amount % size == 0:
                return f"{amount // size}{suffix}"
    return str(amount)
