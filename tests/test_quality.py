"""The placement-quality benchmark: deterministic for a seed, metrics within their ranges. Who wins is
measured by `make bench-quality`, not asserted here."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from loadtests import quality
from loadtests.quality import SIZES, Result

NODES, EVENTS = 64, 400


@pytest.fixture(scope="module")
def results() -> list[Result]:
    return quality.run(NODES, EVENTS, seed=7)


def test_deterministic_for_a_seed(results: list[Result]) -> None:
    assert quality.run(NODES, EVENTS, seed=7) == results
    assert quality.run(NODES, EVENTS, seed=8) != results


def test_same_workload_for_both_policies(results: list[Result]) -> None:
    berth, base = results
    assert (berth.policy, base.policy) == ("berth", "least-allocated")
    assert berth.arrived == base.arrived  # placement differs, what arrives does not
    assert sum(berth.arrived.values()) == EVENTS - int(EVENTS * quality.WARMUP)


def test_metrics_within_ranges(results: list[Result]) -> None:
    for r in results:
        assert r.gpus == NODES * quality.GPUS
        for size in SIZES:
            assert 0 <= r.first_try[size] <= r.placed[size] <= r.arrived[size]
            assert 0 <= r.in_island[size] <= r.placed[size]
        assert r.in_island[1] == 0  # single-GPU pods are not counted as multi-GPU
        assert 0.0 <= r.stranded <= r.gpus - r.busy + 1e-9  # stranded GPUs are free GPUs
        assert 0.0 < r.busy <= r.gpus
        for share in (
            r.placed_share(),
            r.placed_share((8,)),
            r.placed_share((8,), first_try=True),
            r.island_share(),
            r.island_share((8,)),
        ):
            assert 0.0 <= share <= 1.0


def test_workload_shape() -> None:
    jobs = quality.workload(3, NODES, 2000, 0.9)
    assert [j.index for j in jobs] == list(range(2000))
    assert all(a.arrival < b.arrival for a, b in itertools.pairwise(jobs))
    share = {size: sum(j.gpus == size for j in jobs) / len(jobs) for size in SIZES}
    for size, expected in quality.MIX:
        assert abs(share[size] - expected) < 0.05


def test_cluster_shape() -> None:
    nodes = quality.cluster(6)
    annotations = [n["metadata"]["annotations"]["berth.dev/gpu-topology"] for n in nodes]
    assert sum('"nvswitch"' in a for a in annotations) == 3
    assert sum('"nvlink"' in a for a in annotations) == 3


def test_least_allocated_is_kube_arithmetic() -> None:
    policy = quality.LeastAllocatedPolicy(quality.cluster(2))
    t = policy.state.table
    s = t.slot_of["gpu-0000"]
    ask = quality.job_ask(quality.Job(0, 0.0, 1.0, 2))
    # cpu (95500 - 20000) * 100 // 95500 = 79, memory (1022 - 200) * 100 // 1022 = 80, gpu 6 * 100 // 8 = 75
    assert quality.least_allocated(t, s, ask.request) == (79 + 80 + 75) // 3
    assert quality.lowest_free(0b1011_0100, 3) == 0b0011_0100


def test_markdown_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "quality.md"
    assert quality.main(["--nodes", "16", "--events", "200", "--seed", "5", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "--seed 5" in text and "- date: " in text and "seed 5" in text
    assert "| 8-GPU pods placed (higher is better) |" in text
    assert "8 nodes with two 4-GPU NVLink islands, 8 with one 8-GPU NVSwitch island" in text
    printed = capsys.readouterr().out
    assert "least-allocated" in printed and "stranded" in printed
