"""The preempt verb: of kube-scheduler's proposed victims, Berth keeps those its quotas allow.

A small demo-like cluster (three H100 nodes, one A100 node) with two teams in one cohort, built through
the informer paths. kube-scheduler's candidates are alternatives (it preempts on one node only), and it
proposes only pods of lower priority than the preemptor.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import make_node, make_pod
from scheduler.extender.wire import PreemptionArgs, parse_preemption_args, preemption_reply
from scheduler.model.podspec import GPU, PodAsk, pod_ask
from scheduler.policy.preempt import process

NOW = "2024-05-01T00:00:00Z"
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"


def uid(ns: str, name: str) -> str:
    return f"uid-{ns}-{name}"  # as scheduler.demo.make_pod spells them


def teamquota(
    name: str, pools: list[str], resources: dict[str, Any], models: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"namespaces": [name], "pools": pools, "cohort": "gpu", "resources": resources}
    if models:
        spec["gpuModels"] = models
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TeamQuota",
        "metadata": {"name": name, "generation": 1},
        "spec": spec,
    }


def demo_cluster(
    research_models: dict[str, Any] | None = None, research_gpus: dict[str, Any] | None = None
) -> ClusterState:
    """training owns the H100 pool, research the A100 pool; both guarantee 8 GPUs and may borrow to 24."""
    state = ClusterState(Config())
    for i in range(3):
        state.apply_node(
            "ADDED", make_node(f"h100-{i}", "h100", 96, 1024, 8, H100, [list(range(8))], None, NOW, "zone-1")
        )
    state.apply_node("ADDED", make_node("a100-0", "a100", 96, 1024, 8, A100, [list(range(8))], None, NOW, "zone-1"))
    state.apply_team("ADDED", teamquota("training", ["h100"], {GPU: {"guaranteed": 8, "max": 24}}))
    state.apply_team(
        "ADDED", teamquota("research", ["a100"], research_gpus or {GPU: {"guaranteed": 8, "max": 24}}, research_models)
    )
    return state


def run(state: ClusterState, ns: str, name: str, node: str, gpus: int, priority: int = 0) -> None:
    state.apply_pod("ADDED", make_pod(ns, name, node, "1", "4Gi", gpus, priority=priority))


def urgent(gpus: int = 4, ns: str = "training") -> PodAsk:
    return pod_ask(make_pod(ns, "urgent", None, "1", "4Gi", gpus, priority=1000))


def args(victims: dict[str, list[str]], pdb: dict[str, int] | None = None) -> PreemptionArgs:
    """ExtenderPreemptionArgs as kube-scheduler sends them (nodeCacheCapable: NodeNameToMetaVictims)."""
    body = {
        "Pod": make_pod("training", "urgent", None, "1", "4Gi", 4, priority=1000),
        "NodeNameToMetaVictims": {
            node: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": (pdb or {}).get(node, 0)}
            for node, uids in victims.items()
        },
    }
    return parse_preemption_args(orjson.dumps(body))


def test_victims_of_a_borrowing_team_are_kept_lowest_priority_first() -> None:
    state = demo_cluster()
    run(state, "research", "own", "a100-0", 8)
    run(state, "research", "mid", "h100-0", 2, priority=5)
    run(state, "research", "low", "h100-0", 2, priority=1)
    run(state, "training", "t1", "h100-0", 4, priority=2000)
    assert state.quotas.borrowed(state.quotas.teams["research"], GPU) == 4_000  # milli-GPUs

    d = process(state, urgent(4), args({"h100-0": [uid("research", "mid"), uid("research", "low")]}))
    assert d.victims == {"h100-0": [uid("research", "low"), uid("research", "mid")]}
    assert d.refused == {}
    assert d.pdb == {"h100-0": 0}


def test_a_victim_whose_removal_takes_its_team_below_guaranteed_is_refused() -> None:
    state = demo_cluster()
    run(state, "research", "own", "a100-0", 6)
    run(state, "research", "a", "h100-0", 2, priority=1)
    run(state, "research", "b", "h100-0", 2, priority=2)
    run(state, "training", "t1", "h100-0", 2, priority=2000)  # h100-0: 6 of 8 used, 2 free
    assert state.quotas.teams["research"].used[GPU] == 10_000  # borrowing 2

    d = process(state, urgent(4), args({"h100-0": [uid("research", "a"), uid("research", "b")]}))
    # a: 10 - 2 = 8, still guaranteed; b would take research to 6 < 8
    assert d.victims == {"h100-0": [uid("research", "a")]}
    assert d.refused == {uid("research", "b"): "team research would fall below its guaranteed nvidia.com/gpu"}


def test_a_node_whose_kept_victims_no_longer_make_room_is_dropped() -> None:
    state = demo_cluster()
    run(state, "research", "own", "a100-0", 6)
    run(state, "research", "a", "h100-0", 2, priority=1)
    run(state, "research", "b", "h100-0", 2, priority=2)
    run(state, "training", "t1", "h100-0", 4, priority=2000)  # h100-0 full: both victims are needed

    d = process(state, urgent(4), args({"h100-0": [uid("research", "a"), uid("research", "b")]}))
    assert d.victims == {} and d.pdb == {}
    assert set(d.refused) == {uid("research", "b")}


def test_a_team_at_or_below_guaranteed_loses_nothing_to_another_team() -> None:
    state = demo_cluster()
    run(state, "research", "a", "h100-0", 4, priority=1)
    run(state, "research", "b", "h100-0", 4, priority=1)
    d = process(state, urgent(4), args({"h100-0": [uid("research", "a")]}))
    assert d.victims == {}
    assert d.refused == {uid("research", "a"): "team research would fall below its guaranteed nvidia.com/gpu"}


def test_victims_of_the_preemptors_own_team_follow_priority() -> None:
    state = demo_cluster()
    run(state, "training", "low", "h100-0", 8, priority=1)  # training holds 8 = its guaranteed
    d = process(state, urgent(4), args({"h100-0": [uid("training", "low")]}))
    assert d.victims == {"h100-0": [uid("training", "low")]}  # even though training drops to 0 by it


def test_victims_of_no_team_are_kept() -> None:
    state = demo_cluster()
    run(state, "scratch", "job", "h100-1", 8, priority=0)
    assert state.quotas.team_for("scratch") == (None, None)
    d = process(state, urgent(4), args({"h100-1": [uid("scratch", "job")]}))
    assert d.victims == {"h100-1": [uid("scratch", "job")]}


def test_candidate_nodes_are_alternatives_not_a_sum() -> None:
    """kube-scheduler preempts on one of the nodes it proposes: each node is judged on its own."""
    state = demo_cluster()
    run(state, "research", "own", "a100-0", 6)
    run(state, "research", "a", "h100-0", 2, priority=1)
    run(state, "research", "c", "h100-1", 2, priority=1)
    run(state, "scratch", "s0", "h100-0", 4, priority=2000)
    run(state, "scratch", "s1", "h100-1", 4, priority=2000)  # each node: 2 free, 2 more from its victim
    assert state.quotas.teams["research"].used[GPU] == 10_000

    d = process(state, urgent(4), args({"h100-0": [uid("research", "a")], "h100-1": [uid("research", "c")]}))
    assert d.victims == {"h100-0": [uid("research", "a")], "h100-1": [uid("research", "c")]}
    assert d.refused == {}


def test_per_model_guaranteed_is_protected_too() -> None:
    models = {H100: {"guaranteed": 2, "max": 8}}
    state = demo_cluster(research_models=models, research_gpus={GPU: {"guaranteed": 0, "max": 24}})
    run(state, "research", "h", "h100-0", 2, priority=1)
    run(state, "scratch", "s0", "h100-0", 4, priority=2000)
    assert state.quotas.teams["research"].used[f"{GPU}/{H100}"] == 2_000  # milli-GPUs
    d = process(state, urgent(4), args({"h100-0": [uid("research", "h")]}))
    assert d.victims == {}
    assert d.refused == {uid("research", "h"): f"team research would fall below its guaranteed {H100} GPUs"}

    run(state, "research", "h2", "h100-1", 2, priority=1)  # now 4 H100s, 2 above the guaranteed 2
    d = process(state, urgent(4), args({"h100-0": [uid("research", "h")]}))
    assert d.victims == {"h100-0": [uid("research", "h")]}


def test_only_what_the_node_lacks_is_reclaimed() -> None:
    """Every pod needs cpu and memory: a team far below its cpu guarantee still gives back borrowed GPUs."""
    research = {
        GPU: {"guaranteed": 8, "max": 24},
        "cpu": {"guaranteed": "64", "max": "96"},
        "memory": {"guaranteed": "512Gi", "max": "1Ti"},
    }
    state = demo_cluster(research_gpus=research)
    run(state, "research", "own", "a100-0", 8)
    run(state, "research", "burst", "h100-0", 4, priority=1)
    run(state, "scratch", "s0", "h100-0", 4, priority=2000)
    team = state.quotas.teams["research"]
    assert team.used["cpu"] == 2000 < team.limits["cpu"].guaranteed  # borrowing GPUs only
    d = process(state, urgent(4), args({"h100-0": [uid("research", "burst")]}))
    assert d.victims == {"h100-0": [uid("research", "burst")]}

    # but where the node lacks cpu, research's cpu guarantee is protected
    state.apply_pod("ADDED", make_pod("research", "cpu-job", "h100-2", "60", "64Gi", 0, priority=1))
    big = pod_ask(make_pod("training", "cpu-hungry", None, "40", "4Gi", 0, priority=1000))
    d = process(state, big, args({"h100-2": [uid("research", "cpu-job")]}))
    assert d.victims == {}
    assert d.refused == {uid("research", "cpu-job"): "team research would fall below its guaranteed cpu"}


def test_unknown_uids_pass_through() -> None:
    state = demo_cluster()
    run(state, "research", "a", "h100-0", 4, priority=1)  # research is not borrowing: protected
    d = process(
        state,
        urgent(4),
        args(
            {
                "h100-1": ["uid-not-ours"],
                "h100-0": ["uid-also-not-ours", uid("research", "a")],
            }
        ),
    )
    # kube-scheduler's arithmetic is trusted for pods Berth does not account
    assert d.victims == {"h100-1": ["uid-not-ours"], "h100-0": ["uid-also-not-ours"]}
    assert set(d.refused) == {uid("research", "a")}


def test_no_node_without_victims_and_no_node_berth_does_not_know() -> None:
    state = demo_cluster()
    run(state, "scratch", "job", "h100-1", 8)
    d = process(state, urgent(4), args({"h100-0": [], "gone-node": [uid("scratch", "job")]}))
    assert d.victims == {}


def test_a_preemptor_refused_by_quota_gets_no_victims() -> None:
    state = demo_cluster()
    run(state, "training", "big", "h100-0", 8)
    run(state, "training", "big2", "h100-1", 8)
    run(state, "training", "big3", "h100-2", 6)
    run(state, "scratch", "job", "h100-2", 2)
    d = process(state, urgent(4), args({"h100-2": [uid("scratch", "job")]}))  # 22 + 4 > max 24
    assert d.victims == {} and d.refused == {}


def test_reply_shape() -> None:
    state = demo_cluster()
    run(state, "research", "own", "a100-0", 8)
    run(state, "research", "low", "h100-0", 4, priority=1)
    run(state, "training", "t0", "h100-0", 4, priority=2000)
    run(state, "scratch", "job", "h100-1", 8)
    d = process(
        state,
        urgent(4),
        args({"h100-0": [uid("research", "low")], "h100-1": [uid("scratch", "job")]}, pdb={"h100-0": 1}),
    )
    reply = orjson.loads(preemption_reply(d.victims, d.pdb))
    assert reply == {
        "NodeNameToMetaVictims": {
            "h100-0": {"Pods": [{"UID": uid("research", "low")}], "NumPDBViolations": 1},
            "h100-1": {"Pods": [{"UID": uid("scratch", "job")}], "NumPDBViolations": 0},
        }
    }


def test_full_victim_pods_are_understood_too() -> None:
    """nodeCacheCapable: false sends whole Pods (NodeNameToVictims); Berth answers with UIDs all the same."""
    state = demo_cluster()
    run(state, "scratch", "job", "h100-1", 8)
    victim = make_pod("scratch", "job", "h100-1", "1", "4Gi", 8)
    body = {
        "Pod": make_pod("training", "urgent", None, "1", "4Gi", 4, priority=1000),
        "NodeNameToVictims": {"h100-1": {"Pods": [victim], "NumPDBViolations": 2}},
    }
    d = process(state, urgent(4), parse_preemption_args(orjson.dumps(body)))
    assert orjson.loads(preemption_reply(d.victims, d.pdb)) == {
        "NodeNameToMetaVictims": {"h100-1": {"Pods": [{"UID": uid("scratch", "job")}], "NumPDBViolations": 2}}
    }


pod_st = st.tuples(st.sampled_from(["a", "b", "scratch"]), st.integers(0, 2), st.integers(1, 4), st.integers(0, 5))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ga=st.integers(0, 8),
    gb=st.integers(0, 8),
    pods=st.lists(pod_st, max_size=12),
    preemptor=st.sampled_from(["a", "b", "scratch"]),
    want=st.integers(1, 8),
    picks=st.lists(st.booleans(), min_size=12, max_size=12),
    unknown=st.booleans(),
)
def test_preempt_invariants(
    ga: int, gb: int, pods: list[tuple[str, int, int, int]], preemptor: str, want: int, picks: list[bool], unknown: bool
) -> None:
    state = ClusterState(Config())
    for i in range(3):
        state.apply_node(
            "ADDED", make_node(f"h100-{i}", "h100", 96, 1024, 8, H100, [list(range(8))], None, NOW, "zone-1")
        )
    for name, g in (("a", ga), ("b", gb)):
        state.apply_team("ADDED", teamquota(name, ["h100"], {GPU: {"guaranteed": g, "max": 24}}))
    free = [8, 8, 8]
    on_node: dict[str, list[str]] = {}
    for i, (ns, n, g, prio) in enumerate(pods):
        if free[n] >= g:
            free[n] -= g
            run(state, ns, f"p{i}", f"h100-{n}", g, priority=prio)
            if picks[i]:
                on_node.setdefault(f"h100-{n}", []).append(uid(ns, f"p{i}"))
    if unknown:
        on_node.setdefault("h100-0", []).append("uid-not-ours")
    before = {t.name: dict(t.used) for t in state.quotas.teams.values()}
    ask = urgent(want, preemptor)
    d = process(state, ask, args(on_node))

    assert {t.name: t.used for t in state.quotas.teams.values()} == before  # judging evicts nothing
    if state.quotas.admit(ask).error:
        assert d.victims == {}
    mine = state.quotas.team_for(preemptor)[0]
    for node, uids in d.victims.items():
        assert uids and set(uids) <= set(on_node[node])
        entries = [state.ledger.get(state.ledger.by_uid[u]) for u in uids if u in state.ledger.by_uid]
        prios = [e.priority for e in entries if e is not None]
        assert prios == sorted(prios)
        slot = state.table.slot_of[node]
        short_gpu = state.table.free_gpus(slot).bit_count() < want
        for team in state.quotas.teams.values():
            if mine is not None and team.name == mine.name:
                continue
            given_up = sum(e.request.gpu for e in entries if e is not None and e.team == team.name)
            if given_up and short_gpu:
                assert team.used[GPU] - given_up >= team.limits[GPU].guaranteed
        if len(entries) == len(uids):  # all accounted: the freed GPUs make room
            freed = sum(e.request.gpu for e in entries if e is not None)
            assert state.table.free_gpus(slot).bit_count() + freed >= want
