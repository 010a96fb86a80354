"""GPU sharing and MIG through the verbs: filter's reasons name the fraction or the MIG profile that is
short, prioritize prefers the GPU already shared, explain shows the sharing parts."""

from __future__ import annotations

from typing import Any

import orjson

from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.extender.server import Berth
from scheduler.model.podspec import pod_ask
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder
from scheduler.policy.placement import explain
from tests.cluster.test_sharing_ledger import bind, shared_pod
from tests.kernels.test_sharing_kernels import node


def call(state: ClusterState, verb: str, obj: dict[str, Any], names: list[str]) -> Any:
    verbs = Berth(state, Metrics(), Binder(state, None, None)).verbs
    body = orjson.dumps({"Pod": obj, "NodeNames": names})
    return orjson.loads(verbs.filter_body(body) if verb == "filter" else verbs.prioritize_body(body))


def running(obj: dict[str, Any], on: str) -> dict[str, Any]:
    obj["spec"]["nodeName"] = on
    return obj


def test_filter_names_the_fraction_no_gpu_has_free() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", node("full", gpus=1, replicas=4))
    state.apply_node("ADDED", node("room", gpus=1, replicas=4))
    state.apply_node("ADDED", node("ren", gpus=1, replicas=4, renamed=True))
    bind(state, shared_pod("a", gpu=3), "full")
    reply = call(state, "filter", shared_pod("p", gpu=2), ["full", "room", "ren"])
    assert reply["NodeNames"] == ["room"]
    assert reply["FailedNodes"] == {"full": "berth: no GPU on this node has 0.5 free (shared replicas)"}
    assert reply["FailedAndUnresolvableNodes"] == {
        "ren": "berth: node offers its GPUs as nvidia.com/gpu.shared, not the resource the pod asks for"
    }


def test_prioritize_prefers_the_shared_gpu_and_explain_shows_why() -> None:
    state = ClusterState(Config())
    for name in ("idle", "shared"):
        state.apply_node("ADDED", node(name, gpus=2, replicas=10))
    bind(state, shared_pod("a", gpu=5), "shared")
    scores = {h["Host"]: h["Score"] for h in call(state, "prioritize", shared_pod("p", gpu=5), ["idle", "shared"])}
    assert scores["shared"] > scores["idle"]
    rows = {r["node"]: r for r in explain(state, pod_ask(shared_pod("p", gpu=5)))["nodes"]}
    assert rows["shared"]["parts"]["share_fit"] == 10.0 and rows["shared"]["parts"]["gpu_milli"] == 500.0
    assert rows["idle"]["parts"]["gpu_packing"] == 0.0  # never break an idle node for a fraction


def test_mig_profiles_in_use_are_not_offered_again() -> None:
    state = ClusterState(Config())
    mig = node("mig", gpus=0)
    mig["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] = "1"
    state.apply_node("ADDED", mig)
    ask = {"nvidia.com/mig-1g.10gb": 1}
    assert call(state, "filter", shared_pod("p1", **ask), ["mig"])["NodeNames"] == ["mig"]
    state.apply_pod("ADDED", running(shared_pod("p1", **ask), "mig"))
    reply = call(state, "filter", shared_pod("p2", **ask), ["mig"])
    assert reply["FailedNodes"] == {"mig": "berth: not enough free nvidia.com/mig-1g.10gb for the pod (others hold it)"}
    reply = call(state, "filter", shared_pod("p3", **{"nvidia.com/mig-1g.10gb": 2}), ["mig"])
    assert reply["FailedAndUnresolvableNodes"] == {"mig": "berth: node has none or too few of nvidia.com/mig-1g.10gb"}
