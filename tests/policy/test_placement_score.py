"""Placement over a real ClusterState: the demand histogram, the best-tier filter and its switch, explain."""

from __future__ import annotations

from array import array
from typing import Any

import pytest

from loadtests.trace_workload import NodeSpec, TracePod, node_dict, pod_dict
from scheduler import kernels as K
from scheduler.cluster.state import ClusterState
from scheduler.config import Config, ConfigError, load_config
from scheduler.model import constants as C
from scheduler.model.podspec import pod_ask
from scheduler.policy.demand import Demand, demand_of
from scheduler.policy.placement import Reasons, explain, judge, run_filter, run_score, score_params


def state_with(*nodes: NodeSpec, best_tier: bool = True) -> ClusterState:
    config = Config()
    config.scoring.filter_best_tier = best_tier
    state = ClusterState(config)
    for n in nodes:
        state.apply_node("ADDED", node_dict(n))
    return state


def spec(i: int, gpus: int, model: str | None = "V100M32", cpu: int = 96, mem: int = 768) -> NodeSpec:
    return NodeSpec(i, f"n{i}", gpus, model if gpus else None, cpu, mem, None)


def ask(i: int, gpus: int, cpu: int = 4000, models: tuple[str, ...] = ()) -> object:
    return pod_ask(pod_dict(TracePod(i, f"p{i}", cpu, 8192, gpus, 1000 if gpus else 0, models)))


def slots(state: ClusterState) -> array:
    return array("i", [state.table.slot_of[n] for n in state.table.names if n])


def test_demand_counts_each_pod_once_and_fills_shares() -> None:
    state = state_with(spec(0, 8), spec(1, 2, "T4"))
    d = demand_of(state)
    one, eight = ask(1, 1, models=("T4",)), ask(2, 8, cpu=64_000)
    for a in (one, one, eight):  # a retried pod is not counted again
        d.record(a)
    p = score_params(state.config, 0.0, state)
    weights = [p[C.DEMAND_BASE + b * C.DEMAND_FIELDS + C.D_WEIGHT] for b in range(C.DEMAND_BUCKETS)]
    # buckets: (1 GPU low, high CPU), (2 ...), (4 ...), (8 ...); the first ask of a bucket counts as low
    assert weights[0] == pytest.approx(1 / 9, rel=1e-3) and weights[6] == pytest.approx(8 / 9, rel=1e-3)
    assert sum(weights) == pytest.approx(1.0)
    assert p[C.DEMAND_BASE + 6 * C.DEMAND_FIELDS + C.D_CPU] == pytest.approx(8000, rel=1e-3)  # per GPU
    # T4: 1/9 of asked GPUs constrained to it, 2/10 of the supply: pressure 0.556; V100M32 none
    t4 = state.table.models.index("T4")
    assert p[C.SCARCITY_BASE + t4] == pytest.approx((1 / 9) / (2 / 10), rel=1e-3)
    assert p[C.SCARCITY_BASE + state.table.models.index("V100M32")] == 0.0
    big = ask(3, 8, cpu=120_000)  # above the 8-GPU bucket's mean: the high half
    d.record(big)
    p = score_params(state.config, 0.0, state)
    assert p[C.DEMAND_BASE + 7 * C.DEMAND_FIELDS + C.D_CPU] == pytest.approx(15_000, rel=1e-3)


def test_empty_histogram_is_a_uniform_prior() -> None:
    p = array("d", bytes(8 * C.N_PARAMS))
    Demand().fill(p, None)
    assert [p[C.DEMAND_BASE + b * C.DEMAND_FIELDS + C.D_WEIGHT] for b in range(8)] == [1 / 8] * 8


def test_cpu_pod_filter_keeps_off_idle_gpu_nodes_and_says_why() -> None:
    state = state_with(spec(0, 8), spec(1, 8), spec(2, 0))
    j = judge(state, ask(1, 0))
    verdicts, passed = run_filter(state, j, slots(state))
    assert passed == 1 and list(verdicts) == [K.BETTER_FIT, K.BETTER_FIT, K.OK]
    sentence, unresolvable = Reasons(state, j).of(K.BETTER_FIT, 0)
    assert "a better fit exists" in sentence and not unresolvable  # preemption semantics unchanged
    off = state_with(spec(0, 8), spec(1, 8), spec(2, 0), best_tier=False)
    assert run_filter(off, judge(off, ask(1, 0)), slots(off))[1] == 3


def test_scores_are_normalised_over_the_candidates() -> None:
    state = state_with(spec(0, 8), spec(1, 0))
    scores = run_score(state, judge(state, ask(1, 0)), slots(state))
    assert list(scores) == [0, 10]


def test_unconstrained_gpu_pod_keeps_off_a_contested_model() -> None:
    state = state_with(spec(0, 2, "T4"), spec(1, 2, "V100M32"))
    for i in range(50):
        demand_of(state).record(ask(100 + i, 1, models=("T4",)))
    j = judge(state, ask(1, 1))
    verdicts, _ = run_filter(state, j, slots(state))
    assert list(verdicts) == [K.BETTER_FIT, K.OK]
    out = explain(state, ask(1, 1))
    rows = {r["node"]: r for r in out["nodes"]}
    assert rows["n0"]["parts"]["scarcity"] == 0.0 and rows["n1"]["parts"]["scarcity"] == 10.0
    assert set(rows["n1"]["parts"]) >= {"gpu_packing", "topology", "fragmentation", "scarcity", "load", "pool"}
    assert "better fit" in rows["n0"]["reason"] and rows["n0"]["fits"]


def test_best_tier_margin_is_validated(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "c.yaml"
    path.write_text("scoring:\n  best_tier_margin: 11\n")
    with pytest.raises(ConfigError, match="best_tier_margin"):
        load_config(path)
    path.write_text("scoring:\n  filter_best_tier: false\n")
    assert load_config(path).scoring.filter_best_tier is False


def test_expected_runtime_from_the_annotation_or_the_deadline() -> None:
    from scheduler.model.podspec import PodError, expected_runtime

    assert expected_runtime({"berth.dev/expected-runtime": "3600"}, {}) == 3600.0
    assert expected_runtime({"berth.dev/expected-runtime": "1h30m"}, {}) == 5400.0
    assert expected_runtime({}, {"activeDeadlineSeconds": 120}) == 120.0
    assert expected_runtime({}, {}) == 0.0  # long-running
    for bad in ("soon", "5x", "0", "h"):
        with pytest.raises(PodError, match="expected-runtime"):
            expected_runtime({"berth.dev/expected-runtime": bad}, {})


def test_maintenance_keeps_long_running_pods_off_and_short_ones_may_stay() -> None:
    import time

    state = state_with(spec(0, 8), spec(1, 8))
    due = node_dict(spec(0, 8))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    due["metadata"]["annotations"]["berth.dev/maintenance"] = when
    state.apply_node("MODIFIED", due)
    long_pod = ask(1, 1)
    verdicts, passed = run_filter(state, judge(state, long_pod), slots(state))
    assert passed == 1 and list(verdicts) == [K.BETTER_FIT, K.OK]
    rows = {r["node"]: r for r in explain(state, long_pod)["nodes"]}
    assert rows["n0"]["parts"]["maintenance"] == 0.0 and rows["n1"]["parts"]["maintenance"] == 10.0
    short = pod_dict(TracePod(2, "p2", 4000, 8192, 1, 1000, ()))
    short["metadata"].setdefault("annotations", {})["berth.dev/expected-runtime"] = "10m"
    rows = {r["node"]: r for r in explain(state, pod_ask(short))["nodes"]}
    assert rows["n0"]["parts"]["maintenance"] == 10.0


def test_demand_counts_replicas_as_whole_gpus_and_leaves_fractions_out() -> None:
    from scheduler.model.podspec import PodAsk, PodRequest
    from scheduler.policy.demand import whole_gpus

    def one(gpu: int, fraction: int = 0) -> PodAsk:
        return PodAsk("ns", "p", "", PodRequest(gpu=gpu, gpu_fraction=fraction), 0, (), 0, "")

    assert whole_gpus(one(2)) == 2
    assert whole_gpus(one(2000), (1000, 1)) == 2  # 1000 replicas per GPU: two whole GPUs
    assert whole_gpus(one(500), (1000, 1)) == 0  # half a GPU: shares one
    assert whole_gpus(one(1, 250), (4, 1)) == 0


def test_better_fit_sentence_names_the_free_gpus_and_is_not_unresolvable() -> None:
    state = state_with(spec(0, 8), spec(1, 2, "T4"))
    j = judge(state, ask(1, 1))
    verdicts, passed = run_filter(state, j, slots(state))
    assert passed == 1 and list(verdicts) == [K.BETTER_FIT, K.OK]  # the 2-GPU node: an 8-GPU node stays whole
    sentence, unresolvable = Reasons(state, j).of(K.BETTER_FIT, 0)
    assert sentence == "berth: fits, but leaves 7 GPUs free; a better fit exists"
    assert not unresolvable
    # No node fits: nothing is cut, every failure is the real one (preemption sees what it saw before).
    big = judge(state, ask(2, 8, cpu=500_000))
    verdicts, passed = run_filter(state, big, slots(state))
    assert passed == 0 and K.BETTER_FIT not in verdicts


def hold(state: ClusterState, pod: object, node: str) -> None:
    """Bind `pod` to `node` in Berth's books, as the bind verb does without an API server."""
    from scheduler.cluster.state import pod_key
    from scheduler.model.binding import BindingArgs
    from scheduler.policy.binder import Binder

    a: Any = pod
    state.seen.remember(a)
    entry = Binder(state, None, None).reserve(a, BindingArgs(a.name, a.namespace, a.uid, node))
    state.reservations.pop(pod_key(a.namespace, a.name), None)
    entry.confirmed = True


def test_a_protected_model_is_left_to_the_pods_that_name_it() -> None:
    # n0: a 1-GPU T4 node, the exact fit best fit loves; n1: an 8-GPU V100 node with one GPU in use. The
    # pods seen ask for T4 more than its share of the free GPUs (pressure 1): a pod of any model takes n1
    # while it fits, a pod that names T4 still gets n0.
    state = state_with(spec(0, 1, "T4", cpu=64, mem=256), spec(1, 8, "V100M32"))
    hold(state, ask(900, 1), "n1")
    for i in range(20):
        demand_of(state).record(ask(100 + i, 1, models=("T4",)))
    any_model = ask(1, 1)
    verdicts, passed = run_filter(state, judge(state, any_model), slots(state))
    assert passed == 1 and list(verdicts) == [K.BETTER_FIT, K.OK]
    rows = {r["node"]: r for r in explain(state, any_model)["nodes"]}
    assert rows["n0"]["parts"]["protected"] == 1.0 and rows["n1"]["parts"]["protected"] == 0.0
    assert rows["n0"]["raw"] < 1.0 <= rows["n1"]["raw"]
    t4 = ask(2, 1, models=("T4",))
    verdicts, passed = run_filter(state, judge(state, t4), slots(state))
    assert passed == 1 and verdicts[0] == K.OK
    assert "protected" not in {k for r in explain(state, t4)["nodes"] if r["fits"] for k in r["parts"]}


def test_pressure_is_against_the_free_gpus_of_a_model() -> None:
    # V100M32 and T4 have 8 GPUs each; pods constrained to T4 ask a quarter of the GPUs seen: pressure
    # 0.25 / 0.5 = 0.5 on an empty cluster. With 6 of the 8 T4 GPUs held, T4 has 2 of the 10 free: 1.
    from scheduler.policy import demand as D

    state = state_with(spec(0, 8, "T4"), spec(1, 8, "V100M32"))
    d = demand_of(state)
    for i in range(30):
        d.record(ask(100 + i, 1, models=("T4",) if i % 4 == 0 else ()))
    t4 = state.table.models.index("T4")
    share = d.constrained["T4"] / d.total
    p = score_params(state.config, 0.0, state)
    assert p[C.SCARCITY_BASE + t4] == pytest.approx(min(1.0, share / 0.5))
    for i in range(6):
        hold(state, ask(200 + i, 1, models=("T4",)), "n0")
    for i in range(D.FREE_RECOUNT):  # the free GPUs are recounted every FREE_RECOUNT asks
        d.record(ask(300 + i, 1))
    p = score_params(state.config, 0.0, state)
    share = d.constrained["T4"] / d.total
    assert p[C.SCARCITY_BASE + t4] == pytest.approx(min(1.0, share / (2 / 10)))


def test_a_model_asked_beyond_its_share_is_protected_only_within_its_reserve() -> None:
    # T4 has 8 of the 40 GPUs (a fifth) and the pods seen ask half their GPUs of it: beyond its share.
    # With 8 T4 GPUs free against ~6 asked of it recently, the surplus is open (pressure just below the
    # threshold, not protected); with 3 of them held (5 free, within the reserve) it is protected again.
    # V100M16 is asked for less than its share: the pressure alone protects it.
    from scheduler.policy import demand as D

    state = state_with(spec(0, 8, "T4"), spec(1, 8, "V100M32"), spec(2, 8, "V100M32"), spec(3, 8, "V100M16"))
    d = demand_of(state)
    for i in range(12):
        d.record(ask(100 + i, 1, models=("T4",) if i % 2 == 0 else ("V100M16",) if i == 1 else ()))
    t4, m16 = state.table.models.index("T4"), state.table.models.index("V100M16")
    p = score_params(state.config, 0.0, state)
    assert p[C.SCARCITY_BASE + t4] == pytest.approx(D._BELOW_PROTECT)
    assert p[C.SCARCITY_BASE + m16] == pytest.approx((d.constrained["V100M16"] / d.total) / (8 / 32))
    for i in range(3):
        hold(state, ask(200 + i, 1, models=("T4",)), "n0")
    for i in range(D.FREE_RECOUNT):  # the free GPUs are recounted every FREE_RECOUNT asks
        d.record(ask(300 + i, 1, models=("T4",) if i % 2 == 0 else ()))
    p = score_params(state.config, 0.0, state)
    assert p[C.SCARCITY_BASE + t4] == 1.0 and d.protects
    assert 0.0 < d.snapshot()["reserve_gpus_by_model"]["T4"] < 15.0


def test_a_gpu_pod_does_not_leave_free_gpus_without_cpu_with_the_default_weights() -> None:
    # e2e case (c) on a ClusterState: both nodes 4 of 8 GPUs free; starved has 15.5 cores (all free), roomy
    # 43.5 of 255.5 and 422 GiB of 1,022. Best fit prefers starved (less left free); the pod's 12 cores would
    # leave starved 3.5 cores for 3 GPUs that pods of 4 cores a GPU need: filter passes roomy only.
    state = state_with(spec(0, 8, cpu=16, mem=256), spec(1, 8, cpu=256, mem=1024), spec(2, 8, cpu=33, mem=80))
    for k in range(4):
        hold(state, ask(500 + k, 1, cpu=0), "n0")
        hold(state, pod_ask(pod_dict(TracePod(510 + k, f"p{510 + k}", 53_000, 150 * 1024, 1, 1000, ()))), "n1")
    for k in range(8):  # the demand seen: 1-GPU pods of 4 cores, on a node they fill
        feed = ask(600 + k, 1, cpu=4000)
        demand_of(state).record(feed)
        hold(state, feed, "n2")
    probe = ask(1, 1, cpu=12_000)
    verdicts, passed = run_filter(state, judge(state, probe), slots(state))
    assert passed == 1 and list(verdicts)[:2] == [K.BETTER_FIT, K.OK]
    rows = {r["node"]: r for r in explain(state, probe)["nodes"]}
    assert rows["n0"]["parts"]["best_fit"] > rows["n1"]["parts"]["best_fit"]
    assert rows["n0"]["parts"]["fragmentation"] < 3.0 < 8.0 < rows["n1"]["parts"]["fragmentation"]


def test_a_cpu_pod_goes_where_it_strands_no_gpu() -> None:
    # tight: 6 of 8 GPUs used and 8.5 cores left, enough for its 2 free GPUs at 4 cores each; roomy: 4 of 8
    # used, 80 cores left. A CPU-only pod of 6 cores fits both; on tight it strands a GPU: it goes to roomy
    # although tight has fewer free GPUs.
    state = state_with(spec(0, 8, cpu=64, mem=512), spec(1, 8, cpu=128, mem=1024))
    for k in range(6):
        hold(state, ask(700 + k, 1, cpu=9_250), "n0")
    for k in range(4):
        hold(state, ask(710 + k, 1, cpu=11_875), "n1")
    for k in range(8):
        demand_of(state).record(ask(800 + k, 1, cpu=4000))
    probe = ask(1, 0, cpu=6000)
    verdicts, passed = run_filter(state, judge(state, probe), slots(state))
    assert passed == 1 and list(verdicts) == [K.BETTER_FIT, K.OK]
    rows = {r["node"]: r for r in explain(state, probe)["nodes"]}
    assert rows["n0"]["parts"]["gpu_packing"] == 0.0 and rows["n1"]["parts"]["gpu_packing"] > 0.0


def test_demand_keeps_only_models_the_cluster_has() -> None:
    """A pod's berth.dev/gpu-models may name any number of models; each was a key of the demand histogram
    for the process's life, so filter calls naming made-up models grew it without bound. The filter path
    keeps the cluster's models only (no node could take the rest), with the same share for those."""
    state = state_with(spec(0, 2, "T4"), spec(1, 2, "V100M32"))
    made_up = tuple(f"X{k}" for k in range(500))
    for i in range(20):
        run_filter(state, judge(state, ask(100 + i, 2, models=("T4", *made_up[i * 25 : (i + 1) * 25]))), slots(state))
    d = demand_of(state)
    assert set(d.constrained) == {"T4"}
    free = Demand()  # without the cluster's models (the default), every named model is kept
    free.record(ask(1, 2, models=("T4", "X0")))
    assert set(free.constrained) == {"T4", "X0"} and free.constrained["T4"] == free.constrained["X0"]
    assert d.constrained["T4"] > 0
