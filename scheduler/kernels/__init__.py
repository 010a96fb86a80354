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

_twins = (_python.filter_nodes, _python.score_nodes, _python.prioritize_json, _python.pick_json,
          _python.reason_ids, _python.failed_json, _python.map_names)
NATIVE = False
if NO_EXTENSIONS:
    filter_nodes, score_nodes, prioritize_json, pick_json, reason_ids, failed_json, map_names = _twins
else:
    try:
        from scheduler.kernels._native import (
            failed_json,
            filter_nodes,
            map_names,
            pick_json,
            prioritize_json,
            reason_ids,
            score_nodes,
        )

        NATIVE = True
    except ImportError:  # not built (e.g. a source checkout without `pip install`): the twins still serve
        filter_nodes, score_nodes, prioritize_json, pick_json, reason_ids, failed_json, map_names = _twins

__all__ = [
    "CPU", "GPU", "MEMORY", "MODEL", "NATIVE", "OK", "PODS", "POOL", "TOPOLOGY", "UNKNOWN",
    "UNSCHEDULABLE", "choose_devices", "failed_json", "filter_nodes", "map_names", "node_score_parts", "pick_json",
    "prioritize_json", "reason_ids", "score_nodes",
]
