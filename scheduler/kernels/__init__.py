"""Kernel selection: the Cython kernels when built, the pure-Python twins otherwise or when
BERTH_NO_EXTENSIONS is set (the aio-libs pattern: yarl's _quoting.py)."""

import contextlib
import importlib
import os
from typing import Any

from scheduler.kernels import _python, _python_shared
from scheduler.kernels._python import choose_devices, node_score_parts
from scheduler.kernels._python_shared import choose_share_device, share_ask, shared_score_parts
from scheduler.model.constants import (
    BETTER_FIT,
    CPU,
    GPU,
    MEMORY,
    MODEL,
    OK,
    OTHER_RESOURCE,
    PODS,
    POOL,
    SHARE_FULL,
    SHARE_RESOURCE,
    TOPOLOGY,
    UNKNOWN,
    UNSCHEDULABLE,
)

NO_EXTENSIONS = bool(os.environ.get("BERTH_NO_EXTENSIONS"))

NATIVE = False
_impl: Any = _python
_shared: Any = _python_shared  # the twins of the sharing kernels live in a module of their own
if not NO_EXTENSIONS:
    # Not built (e.g. a source checkout without `pip install`): the twins still serve.
    with contextlib.suppress(ImportError):
        _impl, NATIVE = importlib.import_module("scheduler.kernels._native"), True
        _shared = _impl

filter_nodes = _impl.filter_nodes
node_verdict = _impl.node_verdict  # one node: what bind checks again
score_nodes = _impl.score_nodes
score_raw = _impl.score_raw  # unrounded, for normalising over the candidates and the best tier
normalize_scores = _impl.normalize_scores
free_by_model = _impl.free_by_model  # the demand histogram's free GPUs per model
best_tier = _impl.best_tier
pick_raw = _impl.pick_raw  # the survivors' raw scores, for the prioritize call after filter
prioritize_json = _impl.prioritize_json
pick_json = _impl.pick_json
reason_ids = _impl.reason_ids
failed_json = _impl.failed_json
map_names = _impl.map_names
slot_order = _impl.slot_order  # the positions of a list of slots in table order (names_cache.py)
# GPU sharing: the fractional path (whole asks on it score and filter as above).
filter_shared = _shared.filter_shared
node_verdict_shared = _shared.node_verdict_shared
score_shared = _shared.score_shared
score_shared_raw = _shared.score_shared_raw

__all__ = [
    "BETTER_FIT",
    "CPU",
    "GPU",
    "MEMORY",
    "MODEL",
    "NATIVE",
    "OK",
    "OTHER_RESOURCE",
    "PODS",
    "POOL",
    "SHARE_FULL",
    "SHARE_RESOURCE",
    "TOPOLOGY",
    "UNKNOWN",
    "UNSCHEDULABLE",
    "best_tier",
    "choose_devices",
    "choose_share_device",
    "failed_json",
    "filter_nodes",
    "filter_shared",
    "free_by_model",
    "map_names",
    "node_score_parts",
    "node_verdict",
    "node_verdict_shared",
    "normalize_scores",
    "pick_json",
    "pick_raw",
    "prioritize_json",
    "reason_ids",
    "score_nodes",
    "score_raw",
    "score_shared",
    "score_shared_raw",
    "share_ask",
    "shared_score_parts",
]
