"""Kernel selection: the Cython kernels when built, the pure-Python twins otherwise or when
BERTH_NO_EXTENSIONS is set (the aio-libs pattern: yarl's _quoting.py)."""

import os

from scheduler.kernels import _python
from scheduler.kernels._python import (
    CPU,
    GPU,
    MEMORY,
    MODEL,
    OK,
    PODS,
    POOL,
    TOPOLOGY,
    UNKNOWN,
    UNSCHEDULABLE,
    choose_devices,
    node_score_parts,
)

NO_EXTENSIONS = bool(os.environ.get("BERTH_NO_EXTENSIONS"))

if NO_EXTENSIONS:
    filter_nodes = _python.filter_nodes
    score_nodes = _python.score_nodes
    NATIVE = False
else:
    try:
        from scheduler.kernels._native import filter_nodes, score_nodes

        NATIVE = True
    except ImportError:  # not built (e.g. a source checkout without `pip install`): the twins still serve
        filter_nodes = _python.filter_nodes
        score_nodes = _python.score_nodes
        NATIVE = False

__all__ = [
    "CPU", "GPU", "MEMORY", "MODEL", "NATIVE", "OK", "PODS", "POOL", "TOPOLOGY", "UNKNOWN",
    "UNSCHEDULABLE", "choose_devices", "filter_nodes", "node_score_parts", "score_nodes",
]
