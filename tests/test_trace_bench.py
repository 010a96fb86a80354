"""The trace benchmark: its generator matches the stated mix, its policies never over-commit, LeastAllocated
and FGD score as their sources say (hand-worked examples), and the CLI runs end to end."""

import random
from pathlib import Path

import numpy as np
import pytest

from loadtests import trace_bench, trace_workload
from loadtests.trace_policies import (
    POLICIES,
    Ask,
    BerthPolicy,
    BestFitPolicy,
    FGDPolicy,
    LeastAllocatedPolicy,
    Placement,
    SimCluster,
    least_allocated_score,
    shared_node_dict,
)
from loadtests.trace_workload import (
    NodeSpec,
    TracePod,
    arrivals,
    cluster,
    mix_shares,
    pod_pool,
)


def test_node_mix_matches_the_trace_statistics() -> None:
    nodes = cluster(seed=3)
    assert len(nodes) == 1213
    assert abs(sum(n.gpus for n in nodes) - 6212) <= 5
    share = {g: sum(1 for n in nodes if n.gpus == g) / len(nodes) for g in (1, 2, 4, 8)}
    assert 0.43 <= share[8] <= 0.50
    assert abs(share[2] - 1 / 3) < 0.02
    assert {n.model for n in nodes if n.gpus == 2} == {"T4", "P100"}
    assert len({n.model for n in nodes if n.gpus == 8}) in (2, 3)
    assert all(64 <= n.cpu <= 128 and 256 <= n.mem_gi <= 1024 for n in nodes)
    assert len({n.cpu / n.gpus for n in nodes}) > 3  # CPU per GPU differs by node type
    assert sum(1 for n in cluster(seed=3, cpu_nodes=10) if n.gpus == 0) == 10


@pytest.mark.parametrize(("variant", "multi"), [("default", 0.009), ("multi-gpu-heavy", 0.11)])
def test_pod_mix_matches_the_trace_statistics(variant: str, multi: float) -> None:
    pods = pod_pool(seed=5, variant=variant)
    assert len(pods) == 8150
    s = mix_shares(pods)
    assert abs(s["cpu_only"] - 0.13) < 0.015
    assert abs(s["fractional"] - 0.38) < 0.02
    assert abs(s["multi_gpu"] - multi) < max(0.004, multi * 0.15)
    assert abs(s["one_gpu"] - (1 - 0.13 - 0.38 - multi)) < 0.02
    assert abs(s["model_constrained_of_gpu_pods"] - 1 / 3) < 0.03
    assert all(0 < p.gpu_milli < 1000 for p in pods if p.fractional)
    assert {p.gpus for p in pods} == {0, 1, 2, 4, 8}
    eight = [p for p in pods if p.gpus == 8]
    assert max(p.cpu for p in eight) >= 100_000  # some 8-GPU pods ask ~120 cores
    per_gpu = {p.cpu // p.gpus for p in pods if p.gpus and not p.fractional}
    assert min(per_gpu) <= 2000 and max(per_gpu) >= 12_000  # CPU per GPU varies widely


def test_arrivals_stop_when_requests_reach_each_target() -> None:
    pool = pod_pool(seed=2, pods=500)
    gpus = 400
    stream = arrivals(pool, gpus, (1.0, 1.3), seed=2)
    for target, cut in stream.cuts.items():
        asked = sum(p.gpu_request for p in stream.pods[:cut])
        assert asked >= target * gpus > asked - stream.pods[cut - 1].gpu_request
    assert len({p.name for p in stream.pods}) == len(stream.pods)  # copies past one pass keep unique names
    assert stream.cuts[1.3] == len(stream.pods)


@pytest.mark.parametrize("sharing", [False, True])
def test_no_policy_over_commits_a_node(sharing: bool) -> None:
    nodes = cluster(seed=1, scale=0.05)
    pool = pod_pool(seed=1, pods=300)
    stream = arrivals(pool, sum(n.gpus for n in nodes), (1.0, 1.3), seed=1)
    for name, kind in POLICIES.items():
        if sharing and not kind.supports_sharing:
            continue
        c = SimCluster(nodes)
        policy = kind(c, sharing, random.Random(1), pool)
        placed = 0
        for pod in stream.pods:
            ask = Ask.of(pod, sharing)
            p = policy.place(ask)
            if p is not None:
                assert c.fits(ask, p), (name, pod)
                c.apply(ask, p)
                placed += 1
        assert placed > len(stream.pods) // 2, name
        assert (c.cpu >= 0).all() and (c.mem >= 0).all() and (c.pods <= 110).all(), name
        assert ((c.gpu >= 0) & (c.gpu <= 1000)).all(), name
        used_cpu = sum(Ask.of(p, sharing).cpu for p in stream.pods) - int(c.cpu.sum())
        assert used_cpu > 0


def test_berth_ledger_agrees_with_the_simulated_cluster() -> None:
    nodes = cluster(seed=2, scale=0.05)
    pool = pod_pool(seed=2, pods=200)
    stream = arrivals(pool, sum(n.gpus for n in nodes), (1.0, 1.3), seed=2)
    result = trace_bench.run_one(POLICIES["berth"], nodes, stream, pool, sharing=False, seed=2)  # checks at the end
    assert result.at[1.3].placed > 0


def _node(i: int, gpus: int, cores: int, mem_gi: int) -> NodeSpec:
    return NodeSpec(i, f"n{i}", gpus, "T4" if gpus else None, cores, mem_gi, None)  # cpu: cores * 1000 - 500 m


def _pod(cpu: int, mem: int, gpus: int, milli: int) -> TracePod:
    return TracePod(0, "p", cpu, mem, gpus, milli, ())


def test_least_allocated_matches_the_upstream_formula_by_hand() -> None:
    # Upstream: per resource (allocatable - requested) * 100 // allocatable, then the mean (integer division).
    # Node: 15500m cpu, 63488 MiB, 8 GPUs; already holds 4000m, 16384 MiB, 2 GPUs; pod 2000m, 8192 MiB, 1 GPU:
    # cpu (15500 - 6000) * 100 // 15500 = 61, memory (63488 - 24576) * 100 // 63488 = 61, gpu 5 * 100 // 8 = 62,
    # mean 184 // 3 = 61. A CPU-only pod of the same cpu and memory leaves nvidia.com/gpu out: (61 + 61) // 2.
    assert least_allocated_score([15500, 63488, 8], [6000, 24576, 3]) == 61
    nodes = [NodeSpec(0, "a", 8, "T4", 16, 64, None), NodeSpec(1, "b", 8, "T4", 16, 64, None)]
    c = SimCluster(nodes)
    c.apply(Ask.of(_pod(4000, 16384, 2, 1000), False), Placement(0, (0, 1)))
    policy = LeastAllocatedPolicy(c, False, random.Random(0))
    ok, scores = policy.scores(Ask.of(_pod(2000, 8192, 1, 1000), False))
    # Empty node b: cpu 13500 * 100 // 15500 = 87, memory 55296 * 100 // 63488 = 87, gpu 700 // 8 = 87.
    assert list(ok) == [0, 1] and list(scores) == [61, 87]
    ok, scores = policy.scores(Ask.of(_pod(2000, 8192, 0, 0), False))
    assert list(scores) == [61, 87]
    assert policy.place(Ask.of(_pod(2000, 8192, 1, 1000), False)) == Placement(1, (0,))


def test_fgd_prefers_the_node_that_keeps_the_target_workload_placeable() -> None:
    # Target workload: 1-GPU pods with 3 cores. Two 2-GPU nodes, both idle; a has 7500m free, b 5500m.
    # The pod (1 GPU, 4 cores) on a leaves 1 GPU + 3500m: a typical pod still fits, fragmentation 0 -> 0,
    # score int(sigmoid(0) * 100) = 50. On b it leaves 1500m: the last GPU (1000 milli) is fragment,
    # score int(sigmoid(-1) * 100) = 26. FGD takes a. BestFit takes b: raw int((1 - (0.5 * 3500 / 128000 +
    # 0.5 * 1000 / 8000)) * 100) = 92 for a, 93 for b, normalised to 0 and 100.
    workload = [_pod(3000, 1024, 1, 1000)] * 10
    nodes = [_node(0, 2, 8, 64), _node(1, 2, 6, 64)]
    ask = Ask.of(_pod(4000, 1024, 1, 1000), False)
    fgd = FGDPolicy(SimCluster(nodes), False, random.Random(0), workload)
    assert fgd.place(ask) == Placement(0, (0,))
    best_fit = BestFitPolicy(SimCluster(nodes), False, random.Random(0))
    assert best_fit.place(ask) == Placement(1, (0,))


def test_fgd_picks_the_gpu_within_a_node_as_the_paper_does() -> None:
    # Target workload: 0.5-GPU pods, 1 core. One node, GPU 0 idle, GPU 1 with 600 milli free. A 0.5-GPU pod
    # on GPU 1 leaves [1000, 100]: 100 milli can hold no typical pod, fragmentation 0 -> 100, score 47;
    # on GPU 0 it leaves [500, 600]: both fit one, fragmentation stays 0, score 50: GPU 0.
    workload = [_pod(1000, 1024, 1, 500)] * 10
    c = SimCluster([_node(0, 2, 16, 64)])
    c.apply(Ask.of(_pod(1000, 1024, 1, 400), True), Placement(0, (1,)))
    fgd = FGDPolicy(c, True, random.Random(0), workload)
    assert fgd.place(Ask.of(_pod(1000, 1024, 1, 500), True)) == Placement(0, (0,))
    # A non-FGD baseline packs the fraction onto the fullest GPU that fits.
    assert BestFitPolicy(c, True, random.Random(0)).place(Ask.of(_pod(1000, 1024, 1, 500), True)) == Placement(0, (1,))


def test_berth_shares_gpus_through_time_slicing_replicas() -> None:
    """BerthPolicy's nodes advertise 1000 replicas per GPU, its pods replicas as milli: a fraction goes to
    the GPU already shared (best fit), a whole GPU to an idle one, and Berth's ledger holds the milli."""
    c = SimCluster([_node(0, 2, 16, 64)])
    berth = BerthPolicy(c, True, random.Random(0))
    placed = []
    for k, milli in enumerate((400, 500, 1000)):
        ask = Ask.of(TracePod(k, f"s{k}", 1000, 1024, 1, milli, ()), True)
        p = berth.place(ask)
        assert p is not None
        c.apply(ask, p)
        placed.append(p.gpu_ids)
    assert placed[1] == placed[0] and placed[2] != placed[0]
    assert sorted(berth.berth_usage(0)["gpu_milli"]) == [0, 900]  # the whole GPU is no fraction
    node = shared_node_dict(c.nodes[0])
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2000"
    assert node["metadata"]["labels"]["nvidia.com/gpu.replicas"] == "1000"


def test_quick_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "trace.md"
    assert trace_bench.main(["--quick", "--seeds", "1", "--markdown", str(out)]) == 0
    text = out.read_text()
    for name in trace_bench.ORDER:  # the default set; berth-kube and kube-alone run when asked for
        assert f"| {name} |" in text
    assert "n/a" not in text  # Berth shares GPUs too
    berth = [line for line in text.splitlines() if line.startswith("| berth |")]
    assert len(berth) == 6 and "%" in berth[3]  # its rows with sharing have numbers
    assert "python -m loadtests.trace_bench --quick" in text
    rows = [line for line in text.splitlines() if line.startswith("| fgd |")]
    assert len(rows) == 6 and "%" in rows[0]  # three tables per sharing mode
    assert np.isfinite(float(rows[0].split("|")[2].split()[0]))


def test_openb_trace_files_load_and_run(tmp_path: Path) -> None:
    nodes_csv, pods_csv = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    nodes_csv.write_text(
        "sn,cpu_milli,memory_mib,gpu,model\nn0,96000,786432,8,V100M32\nn1,64000,262144,2,T4\nn2,32000,131072,0,\n"
    )
    pods_csv.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
        "deletion_time,scheduled_time\n"
        "a,12000,16384,1,1000,,LS,Running,0,1,0\nb,6000,12288,1,460,T4,LS,Running,0,1,0\n"
        "c,4000,8192,0,0,,BE,Running,0,1,0\nd,64000,65536,8,1000,V100M16|V100M32,LS,Running,0,1,0\n"
        "e,2000.0,4096.0,1.0,,,LS,Running,0,1,0\n"  # as pandas writes a file: floats, an empty cell
    )
    nodes, pods = trace_workload.load_openb(nodes_csv, pods_csv, seed=1)
    by_sn = {n.name.rsplit("-", 1)[-1]: n for n in nodes}
    assert by_sn["n0"].alloc_cpu == 96000 and by_sn["n0"].alloc_mem == 786432 and by_sn["n0"].gpus == 8
    assert by_sn["n2"].gpus == 0 and by_sn["n2"].model is None
    assert [(p.gpus, p.gpu_milli, p.models) for p in pods] == [
        (1, 1000, ()),
        (1, 460, ("T4",)),
        (0, 0, ()),
        (8, 1000, ("V100M32", "V100M16")),
        (1, 1000, ()),  # one GPU with no share given: a whole one
    ]
    assert (
        trace_bench.main(
            [
                "--trace-nodes",
                str(nodes_csv),
                "--trace-pods",
                str(pods_csv),
                "--seeds",
                "1",
                "--markdown",
                str(tmp_path / "t.md"),
            ]
        )
        == 0
    )
    assert "| berth |" in (tmp_path / "t.md").read_text()


def test_the_kube_scheduler_stand_ins_run(tmp_path: Path) -> None:
    # berth-kube / kube-alone: kube-scheduler's sample and in-tree scores around Berth (trace_policies.py).
    out = tmp_path / "kube.md"
    argv = ["--quick", "--seeds", "1", "--policies", "berth-kube,kube-alone", "--sharing", "off", "--markdown"]
    assert trace_bench.main([*argv, str(out)]) == 0
    text = out.read_text()
    assert "| berth-kube |" in text and "| kube-alone |" in text
