"""One source for the numbers the kernels share with Python: scheduler/model/constants.py. The Cython
kernel compiles them from the .pxi setup.py generates, the twin imports them; all three must agree."""

import importlib
import os
import re
import runpy
from pathlib import Path

import pytest

import scheduler.kernels as kernels
from scheduler.config import Config
from scheduler.kernels import _python
from scheduler.model import constants as C
from scheduler.model import podspec
from scheduler.policy.placement import REASON_NAMES, score_params

ROOT = Path(__file__).resolve().parents[2]
SHARED = {k: v for k, v in vars(C).items() if k.isupper() and type(v) is int}


def test_constants_file_runs_on_its_own() -> None:
    """setup.py executes the file without the package (before it is installed): no imports allowed."""
    ran = runpy.run_path(str(ROOT / "scheduler" / "model" / "constants.py"))
    assert {k: v for k, v in ran.items() if k in SHARED} == SHARED
    assert not re.search(r"^\s*(import|from)\s", (ROOT / "scheduler" / "model" / "constants.py").read_text(), re.M)


def test_native_module_compiled_the_same_values() -> None:
    try:
        native = importlib.import_module("scheduler.kernels._native")
    except ImportError:
        if os.environ.get("BERTH_NO_EXTENSIONS"):
            pytest.skip("the Cython kernels are not built and BERTH_NO_EXTENSIONS is set")
        raise
    assert native.CONSTANTS == SHARED


def test_twin_and_selector_use_the_same_values() -> None:
    used = {k: getattr(_python, k) for k in SHARED if hasattr(_python, k)}
    assert used == {k: SHARED[k] for k in used}
    assert {"OK", "UNKNOWN", "FLAG_PRESENT", "MAX_ISLANDS", "W_PACK", "TOPOLOGY_REQUIRED"} <= set(used)
    for name in (
        "OK",
        "UNSCHEDULABLE",
        "POOL",
        "MODEL",
        "PODS",
        "CPU",
        "MEMORY",
        "GPU",
        "TOPOLOGY",
        "UNKNOWN",
        "OTHER_RESOURCE",
    ):
        assert getattr(kernels, name) == SHARED[name]


def test_verdicts_are_distinct_bytes_and_all_have_a_metric_label() -> None:
    verdicts = [
        C.OK,
        C.UNSCHEDULABLE,
        C.POOL,
        C.MODEL,
        C.PODS,
        C.CPU,
        C.MEMORY,
        C.GPU,
        C.TOPOLOGY,
        C.BETTER_FIT,
        C.OTHER_RESOURCE,
        C.OTHER_RESOURCE_USED,
        C.SHARE_FULL,
        C.SHARE_RESOURCE,
        C.DRA_DEVICES,
        C.DRA_DEVICES_USED,
        C.DRA_QUOTA,
        C.UNKNOWN,
    ]
    assert len(set(verdicts)) == len(verdicts) and all(0 <= v < 256 for v in verdicts)  # the kernels write bytes
    assert set(REASON_NAMES) == set(verdicts) - {C.OK}


def test_score_params_follow_the_indices() -> None:
    assert C.WEIGHT_INDEX == (
        C.W_PACK,
        C.W_TOPO,
        C.W_LOAD,
        C.W_POOL,
        C.W_AVAIL,
        C.W_RES,
        C.W_FRAG,
        C.W_SCARCE,
        C.W_FIT,
        C.W_MAINT,
        C.W_SHARE,
    )
    assert len(C.WEIGHT_INDEX) == len(C.WEIGHT_NAMES) == len(set(C.WEIGHT_INDEX))
    config = Config()
    p = score_params(config, now=123.0)
    assert len(p) == C.N_PARAMS
    assert p[C.NOW] == 123.0
    assert p[C.LOAD_MAX_AGE] == config.scoring.load_max_age_seconds
    assert p[C.W_TOPO] == config.scoring.weights.topology
    assert p[C.W_RES] == config.scoring.weights.resources
    assert p[C.W_FRAG] == config.scoring.weights.fragmentation
    assert p[C.W_SCARCE] == config.scoring.weights.scarcity
    assert p[C.MOST_ALLOCATED] == (1.0 if config.scoring.cpu_strategy == "most_allocated" else 0.0)


def test_topology_modes_and_request_bounds() -> None:
    assert podspec.TOPOLOGY_MODES == {
        "none": C.TOPOLOGY_NONE,
        "preferred": C.TOPOLOGY_PREFERRED,
        "required": C.TOPOLOGY_REQUIRED,
    }
    assert C.MAX_GPU_REQUEST > C.MAX_GPUS  # what a pod may ask is bounded apart from what a node has
    assert 2 * C.MAX_UNITS - 1 < 1 << 63  # a node's use plus one request stays in int64


def test_generated_pxi_is_gitignored_and_makefile_rebuilds_on_change() -> None:
    assert "ext/_constants.pxi" in (ROOT / ".gitignore").read_text().split()
    stamp = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("STAMP :="))
    assert "scheduler/model/constants.py" in stamp
