"""tests/fakes/nvml.py as a module, for a `berth agent` process: `--nvml-module tests.fakes.nvml_replay` with
BERTH_NVML_FIXTURE naming a fixture of tests/fixtures/nvml (e.g. nvlink-2x4) replays that machine."""

import os
from typing import Any

from tests.fakes.nvml import FakeNVML

_MACHINE = FakeNVML.fixture(os.environ.get("BERTH_NVML_FIXTURE", "nvlink-2x4"))


def __getattr__(name: str) -> Any:
    return getattr(_MACHINE, name)
