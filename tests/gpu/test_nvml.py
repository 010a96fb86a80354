"""NVML discovery against recorded answers (tests/fakes/nvml.py replays tests/fixtures/nvml/*.json, hand-built
from NVML's documented answers: no GPU machine was lent to write them): the islands, the link kind and the
per-GPU facts of a DGX-like NVSwitch box, a 2x4 NVLink box, a PCIe box and a MIG-enabled A100."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from scheduler.agent.run import discover
from scheduler.cluster.objects import node
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.gpu import nvml
from scheduler.gpu.topology import Topology, parse_topology_annotation
from scheduler.model.names import ANN_GPU_TOPOLOGY
from tests.fakes.nvml import FIXTURES, NVML_ERROR_LIBRARY_NOT_FOUND, FakeNVML

EXPECTED = {
    "dgx-a100-nvswitch": Topology(8, ((0, 1, 2, 3, 4, 5, 6, 7),), "nvswitch"),
    "nvlink-2x4": Topology(8, ((0, 1, 2, 3), (4, 5, 6, 7)), "nvlink"),
    "pcie-l4": Topology(4, ((0,), (1,), (2,), (3,)), "pcie"),
    "a100-mig": Topology(1, ((0,),), "pcie"),
}


def test_every_fixture_has_expectations() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_topology_from_nvml(name: str) -> None:
    fake = FakeNVML.fixture(name)
    inv = nvml.discover(fake)  # type: ignore[arg-type]
    assert inv.topology == EXPECTED[name] and inv.source == "nvml"
    assert fake.initialised == 0  # init and shutdown paired
    # The annotation is what Berth's codec reads back, on a node with that many GPUs.
    ann = inv.annotation()
    assert parse_topology_annotation(ann, inv.topology.gpu_count) == EXPECTED[name]
    assert all(inv.uuid_index[g.uuid] == g.index for g in inv.gpus)


def test_the_node_table_reads_the_agents_annotation() -> None:
    inv = nvml.discover(FakeNVML.fixture("nvlink-2x4"))  # type: ignore[arg-type]
    state = ClusterState(Config())
    n = node(
        "n",
        {"cpu": "8", "memory": "8Gi", "pods": "110", "nvidia.com/gpu": "8"},
        annotations={ANN_GPU_TOPOLOGY: inv.annotation()},
    )
    state.apply_node("ADDED", n)
    view = state.node_view(state.table.slot_of["n"])
    assert view["islands"] == [[0, 1, 2, 3], [4, 5, 6, 7]] and view["topologyError"] is None


def test_numa_memory_and_mig() -> None:
    dgx = nvml.discover(FakeNVML.fixture("dgx-a100-nvswitch"))  # type: ignore[arg-type]
    assert [g.numa for g in dgx.gpus] == [3, 3, 1, 1, 7, 7, 5, 5]
    assert {g.memory_mib for g in dgx.gpus} == {81920} and not any(g.mig_enabled for g in dgx.gpus)
    pcie = nvml.discover(FakeNVML.fixture("pcie-l4"))  # type: ignore[arg-type]
    assert [g.numa for g in pcie.gpus] == [None] * 4  # NVML: not supported
    mig = nvml.discover(FakeNVML.fixture("a100-mig"))  # type: ignore[arg-type]
    (gpu,) = mig.gpus
    assert gpu.mig_enabled and sorted(m.profile for m in gpu.mig) == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]
    assert {mig.uuid_index[m.uuid] for m in gpu.mig} == {0}  # a MIG device maps to its parent GPU
    doc = orjson.loads(mig.annotation())
    assert doc["gpus"][0]["mig"] == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"] and doc["numa"] == [0]


def test_a_fenced_nvswitch_fabric_is_nvlink_not_nvswitch() -> None:
    doc = orjson.loads((FIXTURES / "dgx-a100-nvswitch.json").read_bytes())
    doc["p2p_nvlink"] = [p for p in doc["p2p_nvlink"] if (p[0] < 4) == (p[1] < 4)]  # two partitions of 4
    inv = nvml.discover(FakeNVML(doc))  # type: ignore[arg-type]
    assert inv.topology == Topology(8, ((0, 1, 2, 3), (4, 5, 6, 7)), "nvlink")


def test_no_library_falls_back_to_nvidia_smi_and_no_gpus_is_none() -> None:
    def missing() -> FakeNVML:
        return FakeNVML({}, fail_init=NVML_ERROR_LIBRARY_NOT_FOUND)

    with pytest.raises(nvml.NvmlUnavailable):
        nvml.discover(missing())  # type: ignore[arg-type]
    smi = (Path(__file__).parents[1] / "fixtures" / "nvidia-smi" / "nvlink-2x4-a100.txt").read_text()
    inv = discover(missing, lambda: smi)  # type: ignore[arg-type,return-value]
    assert inv is not None and inv.source == "nvidia-smi"
    assert inv.topology.islands == ((0, 1, 2, 3), (4, 5, 6, 7))

    def no_smi() -> str:
        from scheduler.gpu.discovery import NvidiaSmiError

        raise NvidiaSmiError("nvidia-smi not found on PATH")

    assert discover(missing, no_smi) is None  # type: ignore[arg-type,return-value]
