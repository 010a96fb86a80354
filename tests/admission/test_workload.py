"""The upstream gang API (scheduling.k8s.io/v1alpha2, alpha in 1.36): PodGroups with a gang or basic
policy, pods naming theirs in spec.schedulingGroup.podGroupName."""

import base64
from typing import Any

import orjson

from scheduler.admission.loop import AdmissionLoop
from scheduler.admission.webhook import review
from scheduler.cluster.gangs import membership
from scheduler.cluster.state import ClusterState
from scheduler.model.names import GATE_ADMISSION
from tests.admission.helpers import gang_state, member
from tests.admission.test_loop import FakeApi


def upstream_group(name: str, min_count: int | None, topology: str = "", ns: str = "ml") -> dict[str, Any]:
    spec: dict[str, Any] = {"schedulingPolicy": {"gang": {"minCount": min_count}} if min_count else {"basic": {}}}
    if topology:
        spec["schedulingConstraints"] = {"topology": [{"key": topology}]}
    return {
        "apiVersion": "scheduling.k8s.io/v1alpha2",
        "kind": "PodGroup",
        "metadata": {"name": name, "namespace": ns, "uid": f"pg-{name}"},
        "spec": spec,
    }


def grouped(name: str, group: str, gpus: int = 8) -> dict[str, Any]:
    p = member(name, "", 1, gpus)
    p["metadata"]["annotations"] = {}
    p["spec"]["schedulingGroup"] = {"podGroupName": group}
    return p


def add(state: ClusterState, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for p in pods:
        state.apply_pending_pod("ADDED", p)
    return pods


def test_membership_and_the_webhook_read_spec_scheduling_group() -> None:
    p = grouped("w-0", "train")
    m = membership(p["metadata"], p["spec"])
    assert (m.gang, m.source, m.error) == ("ml/train", "workload", "")
    p["metadata"]["labels"] = {"scheduling.x-k8s.io/pod-group": "other"}
    assert "two gangs" in membership(p["metadata"], p["spec"]).error
    fresh = grouped("w-1", "train")
    fresh["spec"].pop("schedulingGates")
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"kind": "Pod"}, "namespace": "ml", "object": fresh},
    }
    out = orjson.loads(review(orjson.dumps(body), "berth-scheduler", False))["response"]
    assert GATE_ADMISSION in base64.b64decode(out["patch"]).decode()


async def test_a_gang_policy_podgroup_waits_for_its_object_then_admits_in_one_domain() -> None:
    state = gang_state(racks=2, per_rack=2)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    pods = add(state, [grouped(f"w-{i}", "train") for i in range(2)])
    await loop.tick()
    gang = state.gangs.gangs["ml/train"]
    assert gang.phase == "Pending" and "scheduling.k8s.io" in gang.reason and api.patches == {}
    state.apply_workload_podgroup("ADDED", upstream_group("train", 3, topology="rack"))
    await loop.tick()
    assert gang.reason == "waiting for members: 2 of 3 exist" and api.patches == {}
    ev = api.events[-1]
    assert (
        ev["involvedObject"]["apiVersion"] == "scheduling.k8s.io/v1alpha2" and ev["involvedObject"]["uid"] == "pg-train"
    )
    state.apply_workload_podgroup("MODIFIED", upstream_group("train", 2, topology="rack"))
    await loop.tick()
    assert sorted(api.patches) == ["ml/w-0", "ml/w-1"]
    racks = {state.node_labels[state.plans[f"ml/{p['metadata']['name']}"]]["rack"] for p in pods}
    assert len(racks) == 1 and gang.topology == "rack"


async def test_a_basic_policy_podgroup_admits_its_members_one_by_one() -> None:
    state = gang_state(racks=1, per_rack=2)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    state.apply_workload_podgroup("ADDED", upstream_group("serve", None))
    add(state, [grouped(f"s-{i}", "serve") for i in range(3)])  # room for two of three
    await loop.tick()
    assert len(api.patches) == 2, "each member on its own: two fit, they are not held back for the third"
    gang = state.gangs.gangs["ml/serve"]
    assert gang.basic and "fits no node" in gang.reason


async def test_deleting_the_podgroup_holds_its_members_again() -> None:
    state = gang_state(racks=1, per_rack=2)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    state.apply_workload_podgroup("ADDED", upstream_group("g", 2))
    state.apply_workload_podgroup("DELETED", upstream_group("g", 2))
    add(state, [grouped(f"g-{i}", "g") for i in range(2)])
    await loop.tick()
    assert api.patches == {} and "does not exist" in state.gangs.gangs["ml/g"].reason
