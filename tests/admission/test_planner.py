"""The planner: a node for every member or none; never over-commits a node, a GPU, a quota or a domain;
the native kernels and the twins make the same plans; trial holds never outlive the call."""

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import kernels as K
from scheduler.admission.planner import Plan, Refusal, plan_gang
from scheduler.kernels import _python
from scheduler.model.podspec import pod_ask
from tests.admission.helpers import gang_state, member


def asks(gang: str, size: int, gpus: int, ns: str = "ml") -> list:
    return [pod_ask(member(f"{gang}-{i}", gang, size, gpus, ns=ns)) for i in range(size)]


def check_no_overcommit(state, plan: Plan, gang_asks: list) -> None:
    t = state.table
    by_key = {f"{a.namespace}/{a.name}": a for a in gang_asks}
    gpu_on: Counter[str] = Counter()
    masks: dict[str, int] = {}
    for key, node in plan.nodes.items():
        gpu_on[node] += by_key[key].request.gpu
        mask = plan.gpu_ids[key]
        assert mask.bit_count() == by_key[key].request.gpu
        assert not (masks.get(node, 0) & mask), "two members given the same GPU"
        masks[node] = masks.get(node, 0) | mask
    for node, used in gpu_on.items():
        slot = t.slot_of[node]
        assert masks[node] & t.gpu_used[slot] == 0, "a planned GPU is already used"
        assert used <= t.free_gpus(slot).bit_count(), f"{node} over-committed"


def test_whole_gang_or_nothing_and_no_trial_left() -> None:
    state = gang_state(racks=2, per_rack=4)
    before = (list(state.table.used_gpu), len(state.ledger))
    plan = plan_gang(state, asks("a", 8, 8))
    assert isinstance(plan, Plan) and len(set(plan.nodes.values())) == 8
    assert (list(state.table.used_gpu), len(state.ledger)) == before, "trial holds must be rolled back"
    refused = plan_gang(state, asks("b", 9, 8))
    assert isinstance(refused, Refusal) and "fits no node" in refused.reason


def test_required_topology_stays_in_one_rack_and_refuses_when_none_holds_it() -> None:
    state = gang_state(racks=2, per_rack=4)
    plan = plan_gang(state, asks("a", 4, 8), topology="rack")
    assert isinstance(plan, Plan)
    assert len({state.node_labels[n]["rack"] for n in plan.nodes.values()}) == 1
    too_big = plan_gang(state, asks("b", 5, 8), topology="rack")
    assert isinstance(too_big, Refusal) and too_big.hopeless and "largest rack domain" in too_big.reason
    spread = plan_gang(state, asks("c", 5, 8), topology="rack", policy="preferred")
    assert isinstance(spread, Plan), "preferred falls back to all nodes"
    unknown = plan_gang(state, asks("d", 2, 8), topology="no-such-label")
    assert isinstance(unknown, Refusal) and unknown.hopeless and "no-such-label" in unknown.reason


def test_quota_admits_the_summed_gang_or_refuses_it() -> None:
    state = gang_state(racks=1, per_rack=4)
    state.apply_team(
        "ADDED",
        {
            "metadata": {"name": "ml"},
            "spec": {"namespaces": ["ml"], "resources": {"nvidia.com/gpu": {"guaranteed": 16, "max": 16}}},
        },
    )
    assert isinstance(plan_gang(state, asks("a", 2, 8)), Plan)
    refused = plan_gang(state, asks("b", 3, 8))
    assert isinstance(refused, Refusal) and refused.quota and "team ml" in refused.reason


@pytest.fixture(params=["native", "twin"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "twin":
        for name in ("filter_nodes", "score_nodes", "node_verdict"):
            monkeypatch.setattr(K, name, getattr(_python, name))
    elif not K.NATIVE:
        pytest.skip("native kernels not built")
    return str(request.param)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    used=st.lists(st.integers(0, 8), min_size=8, max_size=8),
    size=st.integers(1, 10),
    gpus=st.integers(0, 8),
    topology=st.sampled_from(["", "rack"]),
)
def test_property_never_overcommits(kernels: str, used: list[int], size: int, gpus: int, topology: str) -> None:
    state = gang_state(racks=2, per_rack=4)
    t = state.table
    for slot, n in zip(sorted(t.slot_of.values()), used, strict=True):
        t.gpu_used[slot] = (1 << n) - 1
        t.used_gpu[slot] = n
    gang_asks = asks("g", size, gpus)
    result = plan_gang(state, gang_asks, topology=topology)
    free = sum(8 - n for n in used)
    if isinstance(result, Plan):
        assert len(result.nodes) == size
        check_no_overcommit(state, result, gang_asks)
        if topology:
            assert len({state.node_labels[n]["rack"] for n in result.nodes.values()}) == 1
    elif any(8 - n >= size * gpus for n in used):  # equal members: greedy never misses a whole-node fit
        pytest.fail(f"a gang that fits on one node was refused: {result}")
    assert size * gpus <= free or isinstance(result, Refusal)


@settings(max_examples=40, deadline=None)
@given(used=st.lists(st.integers(0, 8), min_size=8, max_size=8), size=st.integers(1, 8), gpus=st.integers(1, 8))
def test_property_native_and_twin_make_the_same_plan(used: list[int], size: int, gpus: int) -> None:
    if not K.NATIVE:
        pytest.skip("native kernels not built")
    plans = []
    for impl in (K._impl, _python):
        state = gang_state(racks=2, per_rack=4)
        t = state.table
        for slot, n in zip(sorted(t.slot_of.values()), used, strict=True):
            t.gpu_used[slot] = (1 << n) - 1
            t.used_gpu[slot] = n
        saved = (K.filter_nodes, K.score_nodes)
        K.filter_nodes, K.score_nodes = impl.filter_nodes, impl.score_nodes
        try:
            result = plan_gang(state, asks("g", size, gpus))
        finally:
            K.filter_nodes, K.score_nodes = saved
        plans.append(result.nodes if isinstance(result, Plan) else result.reason)
    assert plans[0] == plans[1]


def test_members_are_planned_only_where_their_node_selector_and_affinity_allow() -> None:
    state = gang_state(racks=2, per_rack=4)
    gang_asks = asks("a", 3, 8)
    spec = {
        "nodeSelector": {"rack": "rack-1"},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [{"key": "rack", "operator": "Exists"}],
                            "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["r1-n0"]}],
                        }
                    ]
                }
            }
        },
    }
    specs = {f"ml/a-{i}": spec for i in range(3)}
    plan = plan_gang(state, gang_asks, specs=specs)
    assert isinstance(plan, Plan) and sorted(plan.nodes.values()) == ["r1-n1", "r1-n2", "r1-n3"]
    refused = plan_gang(state, asks("b", 4, 8), specs={f"ml/b-{i}": spec for i in range(4)})
    assert isinstance(refused, Refusal)
