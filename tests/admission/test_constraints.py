"""The planner plans no member onto a node kube-scheduler would refuse it: NoSchedule/NoExecute taints it
does not tolerate, cordoned and not-Ready nodes, its nodeSelector and required node affinity."""

from array import array
from typing import Any

from scheduler.admission.planner import Plan, Refusal, eligible, plan_gang, tolerated
from scheduler.cluster.objects import node
from scheduler.cluster.state import ClusterState
from scheduler.model.podspec import pod_ask
from tests.admission.helpers import gang_state, member


def set_node(
    state: ClusterState, name: str, rack: str, spec: dict[str, Any] | None = None, ready: str = "True"
) -> None:
    n = node(
        name,
        {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"},
        pool="shared",
        gpu_model="A100",
        labels={"rack": rack},
        conditions=[{"type": "Ready", "status": ready}],
        spec=spec,
    )
    state.apply_node("MODIFIED", n)


def plan_for(state: ClusterState, size: int, spec: dict[str, Any] | None = None, topology: str = "") -> Plan | Refusal:
    pods = [member(f"g-{i}", "g", size) for i in range(size)]
    for p in pods:
        p["spec"].update(spec or {})
    asks = [pod_ask(p) for p in pods]
    specs = {f"ml/{p['metadata']['name']}": p["spec"] for p in pods}
    return plan_gang(state, asks, topology=topology, specs=specs)


TAINT = {"key": "gpu", "value": "reserved", "effect": "NoSchedule"}


def test_taints_the_member_does_not_tolerate_are_avoided() -> None:
    state = gang_state(racks=2, per_rack=2)
    for i in range(2):
        set_node(state, f"r0-n{i}", "rack-0", {"taints": [TAINT]})
    plan = plan_for(state, 2, topology="rack")  # rack-0 sorts first: without the taint check it would win
    assert isinstance(plan, Plan) and set(plan.nodes.values()) == {"r1-n0", "r1-n1"}, plan
    refused = plan_for(state, 3)
    assert isinstance(refused, Refusal) and "gpu=reserved:NoSchedule" in refused.reason, refused
    tolerating = {"tolerations": [{"key": "gpu", "operator": "Equal", "value": "reserved", "effect": "NoSchedule"}]}
    assert isinstance(plan_for(state, 4, tolerating), Plan), "a member that tolerates the taint may go there"


def test_prefer_no_schedule_is_no_refusal_and_no_execute_is() -> None:
    state = gang_state(racks=1, per_rack=2)
    set_node(state, "r0-n0", "rack-0", {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]})
    set_node(state, "r0-n1", "rack-0", {"taints": [{"key": "y", "value": "1", "effect": "NoExecute"}]})
    assert state.table.tainted == {state.table.slot_of["r0-n1"]}
    plan = plan_for(state, 2)
    assert isinstance(plan, Refusal) and "y=1:NoExecute" in plan.reason
    assert isinstance(plan_for(state, 2, {"tolerations": [{"operator": "Exists"}]}), Plan), "Exists tolerates all"


def test_cordoned_and_not_ready_nodes_are_avoided() -> None:
    state = gang_state(racks=1, per_rack=3)
    set_node(state, "r0-n0", "rack-0", {"unschedulable": True})
    set_node(state, "r0-n1", "rack-0", ready="False")
    plan = plan_for(state, 1)
    assert isinstance(plan, Plan) and list(plan.nodes.values()) == ["r0-n2"]
    refused = plan_for(state, 2)
    assert isinstance(refused, Refusal), refused
    set_node(state, "r0-n1", "rack-0", ready="Unknown")
    f = state.table.facts[state.table.slot_of["r0-n1"]]
    assert f is not None and not f.ready and f.taints[0][0] == "node.kubernetes.io/unreachable"
    set_node(state, "r0-n1", "rack-0")  # Ready again: no taint left
    assert state.table.slot_of["r0-n1"] not in state.table.tainted
    assert isinstance(plan_for(state, 2), Plan)


def test_node_selector_and_required_affinity_the_member_carries() -> None:
    state = gang_state(racks=2, per_rack=2)
    plan = plan_for(state, 2, {"nodeSelector": {"rack": "rack-1"}})
    assert isinstance(plan, Plan) and all(n.startswith("r1-") for n in plan.nodes.values())
    affinity = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["rack-1"]}]}
                    ]
                }
            }
        }
    }
    plan = plan_for(state, 2, affinity)
    assert isinstance(plan, Plan) and all(n.startswith("r0-") for n in plan.nodes.values())
    refused = plan_for(state, 1, {"nodeSelector": {"rack": "nowhere"}})
    assert isinstance(refused, Refusal) and "closed to it by its nodeSelector" in refused.reason, refused


def test_toleration_matching_follows_kubernetes() -> None:
    taint = ("gpu", "reserved", "NoSchedule")
    assert tolerated([{"key": "gpu", "operator": "Exists"}], taint)
    assert tolerated([{"key": "gpu", "value": "reserved"}], taint), "operator defaults to Equal"
    assert not tolerated([{"key": "gpu", "value": "other"}], taint)
    assert not tolerated([{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}], taint)
    assert tolerated([{"operator": "Exists", "effect": "NoSchedule"}], taint)
    assert not tolerated([], taint)
    state = gang_state(racks=1, per_rack=1)
    everything = eligible(state, {}, array("i", [0]))
    assert list(everything) == [0], "no taint: the fast path keeps every slot"
