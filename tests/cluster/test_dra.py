"""DRA (resource.k8s.io/v1): the table of classes, slices, templates and claims, the quota charges of allocated
claims (a shared claim once, per class, per GPU model, in nvidia.com/gpu), the allocation read back into
TeamQuota status, and filter's veto of nodes over quota or short of devices, through the real verbs."""

from __future__ import annotations

import time
from typing import Any

import orjson

from scheduler.cluster.dra import CLASS_KEY_SUFFIX, EXTENDED_CLAIM_ANNOTATION, parse_class
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import make_node, make_pod
from scheduler.extender.server import Berth
from scheduler.model.binding import BindingArgs
from scheduler.model.names import GPU
from scheduler.observability.metrics import Metrics
from scheduler.observability.showback import team_status
from scheduler.policy.binder import Binder
from scheduler.policy.quotas import MODEL_PREFIX
from tests.policy.test_quotas import teamquota

NOW = "2024-05-01T00:00:00Z"
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
DRIVER = "gpu.nvidia.com"
CLASS = "gpu.nvidia.com"
KEY = CLASS + CLASS_KEY_SUFFIX


# -- builders: the shapes of resource.k8s.io/v1 -----------------------------------------------------
def device_class(name: str = CLASS, driver: str = DRIVER, extended: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"selectors": [{"cel": {"expression": f"device.driver == '{driver}'"}}]}
    if extended:
        spec["extendedResourceName"] = extended
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": name}, "spec": spec}


def resource_slice(node: str, n: int, model: str = H100, driver: str = DRIVER) -> dict[str, Any]:
    devices = [{"name": f"gpu-{i}", "attributes": {"productName": {"string": model}}} for i in range(n)]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{driver}"},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def claim(
    ns: str,
    name: str,
    count: int = 1,
    node: str | None = None,
    devices: list[int] | None = None,
    mode: str = "ExactCount",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": CLASS, "allocationMode": mode}
    if mode == "ExactCount":
        exactly["count"] = count
    obj: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}},
    }
    if node is not None:
        results = [{"request": "gpu", "driver": DRIVER, "pool": node, "device": f"gpu-{i}"} for i in devices or []]
        obj["status"] = {"allocation": {"devices": {"results": results}}}
    return obj


def template(ns: str, name: str, count: int) -> dict[str, Any]:
    inner = claim(ns, name, count)["spec"]
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"spec": inner}}


def claim_pod(ns: str, name: str, claim_name: str | None = None, template_name: str | None = None) -> dict[str, Any]:
    pod = make_pod(ns, name, None, "1", "1Gi", 0)
    ref: dict[str, Any] = {"name": "gpus"}
    if claim_name:
        ref["resourceClaimName"] = claim_name
    if template_name:
        ref["resourceClaimTemplateName"] = template_name
    pod["spec"]["resourceClaims"] = [ref]
    return pod


def dra_cluster(models: dict[str, str] | None = None, gpus: int = 4) -> ClusterState:
    """Kubelet-less GPU nodes with no device-plugin capacity: their GPUs are in ResourceSlices only."""
    state = ClusterState(Config())
    state.apply_device_class("ADDED", device_class(extended=GPU))
    for node, model in (models or {"dra-0": H100, "dra-1": A100}).items():
        state.apply_node("ADDED", make_node(node, "shared", 32, 128, 0, None, None, None, NOW, "zone-1"))
        state.apply_resource_slice("ADDED", resource_slice(node, gpus, model))
    return state


def team(state: ClusterState, name: str = "ml", **limits: Any) -> None:
    state.apply_namespace("ADDED", {"metadata": {"name": name, "labels": {}}})
    models = limits.pop("models", None)
    state.apply_team("ADDED", teamquota(name, limits, models=models))


def used(state: ClusterState, name: str = "ml") -> dict[str, int]:
    return {k: v for k, v in state.quotas.teams[name].used.items() if v}


def filter_reply(state: ClusterState, pod: dict[str, Any], names: list[str]) -> dict[str, Any]:
    verbs = Berth(state, Metrics(), Binder(state, None, None)).verbs
    return orjson.loads(verbs.filter_body(orjson.dumps({"Pod": pod, "NodeNames": names})))


# -- the table -----------------------------------------------------------------------------------
def test_a_class_reads_the_driver_from_its_cel_selector_and_its_extended_resource() -> None:
    cls = parse_class(device_class(extended=GPU))
    assert cls.drivers == frozenset({DRIVER}) and cls.extended_resource == GPU
    anything = parse_class({"metadata": {"name": "any"}, "spec": {"selectors": [{"cel": {"expression": "true"}}]}})
    assert anything.drivers is None and anything.extended_resource is None


def test_slices_are_each_nodes_inventory_and_allocations_take_devices_from_it() -> None:
    state = dra_cluster()
    devices, free = state.dra.node_devices("dra-0", CLASS)
    assert [d.name for d in devices] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"] and free == 4
    assert state.dra.node_model("dra-1", CLASS) == A100
    state.apply_resource_claim("ADDED", claim("ml", "c", 2, "dra-0", [1, 3]))
    assert state.dra.node_devices("dra-0", CLASS)[1] == 2
    state.apply_resource_claim("DELETED", claim("ml", "c"))
    assert state.dra.node_devices("dra-0", CLASS)[1] == 4
    state.apply_resource_slice("DELETED", resource_slice("dra-0", 4))
    assert state.dra.node_devices("dra-0", CLASS) == ([], 0)
    assert state.dra.node_devices("dra-1", "no-such-class") == ([], 0)


def test_pod_asks_come_from_unallocated_claims_and_from_templates_until_their_claim_exists() -> None:
    state = dra_cluster()
    state.apply_claim_template("ADDED", template("ml", "two", 2))
    state.apply_resource_claim("ADDED", claim("ml", "named", 3))
    assert [(a.count, a.claim) for a in state.dra.pod_asks(claim_pod("ml", "p", claim_name="named"))] == [
        (3, "ml/named")
    ]
    from_template = claim_pod("ml", "q", template_name="two")
    assert [(a.count, a.claim) for a in state.dra.pod_asks(from_template)] == [(2, None)]
    # The resource-claim controller made the claim and named it in the pod's status: the claim is what counts.
    state.apply_resource_claim("ADDED", claim("ml", "q-gpus-x1", 2, "dra-0", [0, 1]))
    from_template["status"] = {"resourceClaimStatuses": [{"name": "gpus", "resourceClaimName": "q-gpus-x1"}]}
    assert state.dra.pod_asks(from_template) == []  # allocated already: charged, nothing more to ask


# -- quota counting ------------------------------------------------------------------------------
def test_an_allocated_claim_counts_per_class_per_model_and_in_gpus() -> None:
    state = dra_cluster()
    team(state)
    state.apply_resource_claim("ADDED", claim("ml", "c", 2))  # not allocated yet: nothing held
    assert used(state) == {}
    state.apply_resource_claim("MODIFIED", claim("ml", "c", 2, "dra-0", [0, 1]))
    assert used(state) == {KEY: 2, GPU: 2000, MODEL_PREFIX + H100: 2000}
    assert state.quotas.teams["ml"].pods == 0  # a claim is not a pod
    state.apply_resource_claim("MODIFIED", claim("ml", "c", 2))  # deallocated
    assert used(state) == {}


def test_a_claim_shared_by_several_pods_counts_once() -> None:
    state = dra_cluster()
    team(state)
    state.apply_resource_claim("ADDED", claim("ml", "shared", 1, "dra-1", [2]))
    for name in ("a", "b", "c"):
        pod = claim_pod("ml", name, claim_name="shared")
        pod["spec"]["nodeName"] = "dra-1"
        state.apply_pod("ADDED", pod)
    assert used(state)[KEY] == 1 and used(state)[GPU] == 1000 and used(state)[MODEL_PREFIX + A100] == 1000
    assert state.quotas.teams["ml"].pods == 3


def test_charges_follow_team_changes_and_come_back_exactly() -> None:
    state = dra_cluster()
    state.apply_resource_claim("ADDED", claim("ml", "c", 2, "dra-0", [0, 1]))  # before its team exists
    team(state)
    assert used(state)[KEY] == 2
    state.apply_team("DELETED", teamquota("ml"))
    team(state)  # recreated: recounted from the claims, not doubled
    assert used(state) == {KEY: 2, GPU: 2000, MODEL_PREFIX + H100: 2000}
    state.apply_resource_claim("DELETED", claim("ml", "c"))
    assert used(state) == {}


def test_a_slice_seen_after_the_allocation_brings_the_model_in() -> None:
    state = ClusterState(Config())
    state.apply_device_class("ADDED", device_class())
    team(state)
    state.apply_resource_claim("ADDED", claim("ml", "c", 1, "late", [0]))
    assert used(state) == {KEY: 1}  # the device's model is unknown until its slice arrives
    state.apply_resource_slice("ADDED", resource_slice("late", 2, A100))
    assert used(state) == {KEY: 1, GPU: 1000, MODEL_PREFIX + A100: 1000}


def test_the_extended_resource_claim_counts_class_and_model_and_the_pod_counts_its_gpus() -> None:
    state = dra_cluster()
    team(state)
    pod = make_pod("ml", "ext", "dra-0", "1", "1Gi", 2)
    state.apply_pod("ADDED", pod)
    ext = claim("ml", "ext-extended-resources-abc", 2, "dra-0", [0, 1], annotations={EXTENDED_CLAIM_ANNOTATION: "true"})
    state.apply_resource_claim("ADDED", ext)
    assert {k: v for k, v in used(state).items() if k in (KEY, GPU, MODEL_PREFIX + H100)} == {
        KEY: 2,
        GPU: 2000,  # once: from the pod's request, not again from its claim
        MODEL_PREFIX + H100: 2000,
    }


def test_teamquota_status_lists_the_allocated_devices() -> None:
    state = dra_cluster()
    team(state)
    state.apply_resource_claim("ADDED", claim("ml", "c", 2, "dra-0", [0, 3]))
    status = team_status(state, state.quotas.teams["ml"])
    assert status["devices"] == {"ml/c": [f"{DRIVER}/dra-0/gpu-0", f"{DRIVER}/dra-0/gpu-3"]}
    assert status["used"][KEY] == "2" and status["used"][GPU] == "2"
    state.apply_resource_claim("DELETED", claim("ml", "c"))
    assert "devices" not in team_status(state, state.quotas.teams["ml"])


# -- filter ----------------------------------------------------------------------------------------
def test_filter_vetoes_nodes_where_the_claim_would_exceed_the_class_quota() -> None:
    state = dra_cluster()
    team(state, **{KEY: {"guaranteed": 3, "max": 3}})
    state.apply_resource_claim("ADDED", claim("ml", "held", 2, "dra-0", [0, 1]))
    state.apply_resource_claim("ADDED", claim("ml", "new", 2))
    reply = filter_reply(state, claim_pod("ml", "p", claim_name="new"), ["dra-0", "dra-1"])
    assert reply["NodeNames"] == []
    sentence = f"berth: team ml: {KEY} 2 used + 2 requested > max 3"
    assert reply["FailedAndUnresolvableNodes"] == {"dra-0": sentence, "dra-1": sentence}
    state.apply_resource_claim("ADDED", claim("ml", "one", 1))
    assert filter_reply(state, claim_pod("ml", "q", claim_name="one"), ["dra-0", "dra-1"])["NodeNames"] == [
        "dra-0",
        "dra-1",
    ]


def test_filter_vetoes_by_the_model_of_each_nodes_slices() -> None:
    state = dra_cluster()
    team(state, models={A100: {"guaranteed": 0, "max": 0}})
    state.apply_resource_claim("ADDED", claim("ml", "c", 1))
    reply = filter_reply(state, claim_pod("ml", "p", claim_name="c"), ["dra-0", "dra-1"])
    assert reply["NodeNames"] == ["dra-0"]
    assert reply["FailedAndUnresolvableNodes"] == {"dra-1": f"berth: team ml: {A100} GPUs 0 used + 1 requested > max 0"}


def test_filter_counts_the_gpus_of_a_template_before_its_claim_exists() -> None:
    state = dra_cluster()
    team(state, **{GPU: {"guaranteed": 2, "max": 2}})
    state.apply_claim_template("ADDED", template("ml", "three", 3))
    reply = filter_reply(state, claim_pod("ml", "p", template_name="three"), ["dra-0"])
    assert reply["FailedAndUnresolvableNodes"] == {"dra-0": f"berth: team ml: {GPU} 0 used + 3 requested > max 2"}


def test_a_templates_claim_not_in_the_cache_yet_counts_as_the_template() -> None:
    """kube-scheduler's informer saw the claim the controller made (the pod's status names it) before Berth's
    did: the template's asks count until the claim arrives. Counting nothing let a burst over the quota."""
    state = dra_cluster()
    team(state, **{GPU: {"guaranteed": 2, "max": 2}})
    state.apply_claim_template("ADDED", template("ml", "three", 3))
    pod = claim_pod("ml", "p", template_name="three")
    pod["status"] = {"resourceClaimStatuses": [{"name": "gpus", "resourceClaimName": "p-gpus-x1"}]}
    assert [(a.count, a.claim) for a in state.dra.pod_asks(pod)] == [(3, None)]
    assert state.dra.unseen_claims(pod) == []
    reply = filter_reply(state, pod, ["dra-0"])
    assert reply["FailedAndUnresolvableNodes"] == {"dra-0": f"berth: team ml: {GPU} 0 used + 3 requested > max 2"}


def test_a_named_claim_not_in_the_cache_yet_passes_no_node_until_it_arrives() -> None:
    state = dra_cluster()
    team(state, **{GPU: {"guaranteed": 2, "max": 2}})
    pod = claim_pod("ml", "p", claim_name="late")
    assert state.dra.unseen_claims(pod) == ["ml/late"]
    reply = filter_reply(state, pod, ["dra-0", "dra-1"])
    sentence = "berth: ResourceClaim ml/late has not reached Berth's cache yet; the pod is retried"
    assert reply["NodeNames"] == [] and reply["FailedNodes"] == {"dra-0": sentence, "dra-1": sentence}
    state.apply_resource_claim("ADDED", claim("ml", "late", 1))  # its watch event: judged on what it asks
    assert filter_reply(state, pod, ["dra-0", "dra-1"])["NodeNames"] == ["dra-0", "dra-1"]


def test_filter_names_too_few_devices_and_devices_held_by_others() -> None:
    state = dra_cluster(gpus=2)
    state.apply_resource_claim("ADDED", claim("other", "held", 2, "dra-0", [0, 1]))
    state.apply_resource_claim("ADDED", claim("ml", "two", 2))
    reply = filter_reply(state, claim_pod("ml", "p", claim_name="two"), ["dra-0", "dra-1"])
    assert reply["NodeNames"] == ["dra-1"]
    assert reply["FailedNodes"] == {"dra-0": f"berth: only 0 of the node's {CLASS} devices are free, the pod asks 2"}
    state.apply_resource_claim("ADDED", claim("ml", "three", 3))
    reply = filter_reply(state, claim_pod("ml", "q", claim_name="three"), ["dra-1"])
    assert reply["FailedAndUnresolvableNodes"] == {
        "dra-1": f"berth: node's ResourceSlices have 2 devices of class {CLASS}, the pod asks 3"
    }


def test_all_mode_asks_every_device_of_the_node() -> None:
    state = dra_cluster()
    team(state, **{KEY: {"guaranteed": 3, "max": 3}})
    state.apply_resource_claim("ADDED", claim("ml", "all", mode="All"))
    reply = filter_reply(state, claim_pod("ml", "p", claim_name="all"), ["dra-0"])
    assert reply["FailedAndUnresolvableNodes"] == {"dra-0": f"berth: team ml: {KEY} 0 used + 4 requested > max 3"}


def test_a_pod_sharing_an_allocated_claim_asks_nothing_more() -> None:
    state = dra_cluster()
    team(state, **{KEY: {"guaranteed": 1, "max": 1}})
    state.apply_resource_claim("ADDED", claim("ml", "shared", 1, "dra-0", [0]))
    assert filter_reply(state, claim_pod("ml", "p", claim_name="shared"), ["dra-0"])["NodeNames"] == ["dra-0"]


def test_an_extended_resource_pod_is_served_by_dra_where_no_device_plugin_offers_gpus() -> None:
    state = dra_cluster()
    state.apply_node("ADDED", make_node("plugin", "shared", 32, 128, 0, None, None, None, NOW, "zone-1"))
    team(state, models={A100: {"guaranteed": 0, "max": 0}})
    pod = make_pod("ml", "ext", None, "1", "1Gi", 2)
    reply = filter_reply(state, pod, ["dra-0", "dra-1", "plugin"])
    assert reply["NodeNames"] == ["dra-0"]
    assert reply["FailedAndUnresolvableNodes"]["dra-1"] == f"berth: team ml: {A100} GPUs 0 used + 2 requested > max 0"
    # No device plugin and no slices: the kernels' own sentence stands (here the per-model quota's: no model).
    assert reply["FailedAndUnresolvableNodes"]["plugin"] == "berth: GPU model (none) is not in berth.dev/gpu-models ()"
    state.apply_team("MODIFIED", teamquota("ml"))
    reply = filter_reply(state, pod, ["dra-0", "dra-1", "plugin"])
    assert reply["NodeNames"] == ["dra-0", "dra-1"]
    assert reply["FailedAndUnresolvableNodes"] == {
        "plugin": "berth: node has less nvidia.com/gpu in all than the 2 requested"
    }


async def test_bind_accepts_the_dra_node_for_an_extended_resource_pod() -> None:
    state = dra_cluster()
    written: list[tuple[BindingArgs, dict[str, str]]] = []

    async def write(args: BindingArgs, annotations: dict[str, str]) -> None:
        written.append((args, annotations))

    berth = Berth(state, Metrics(), Binder(state, write, None))
    pod = make_pod("ml", "ext", None, "1", "1Gi", 2)
    berth.verbs.filter_body(orjson.dumps({"Pod": pod, "NodeNames": ["dra-0"]}))  # bind learns the pod here
    meta = pod["metadata"]
    body = {"PodName": "ext", "PodNamespace": "ml", "PodUID": meta["uid"], "Node": "dra-0"}
    reply = orjson.loads(await berth.verbs.bind_body(orjson.dumps(body)))
    assert reply == {"Error": ""} and written and written[0][0].node == "dra-0"


# -- assume at bind, confirm by the watch ------------------------------------------------------------
async def bind_pod(state: ClusterState, pod: dict[str, Any], node: str, fail: bool = False) -> dict[str, Any]:
    async def write(args: BindingArgs, annotations: dict[str, str]) -> None:
        if fail:
            raise OSError("API server away")

    berth = Berth(state, Metrics(), Binder(state, write, None))
    berth.verbs.filter_body(orjson.dumps({"Pod": pod, "NodeNames": [node]}))
    meta = pod["metadata"]
    body = {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}
    return dict(orjson.loads(await berth.verbs.bind_body(orjson.dumps(body))))


async def test_bind_charges_the_claims_until_the_watch_shows_their_allocation() -> None:
    state = dra_cluster()
    team(state, **{KEY: {"guaranteed": 3, "max": 3}})
    state.apply_resource_claim("ADDED", claim("ml", "two", 2))
    assert await bind_pod(state, claim_pod("ml", "p", claim_name="two"), "dra-0") == {"Error": ""}
    # kube-scheduler wrote the allocation in PreBind; the watch has not brought it yet: bind's charge counts.
    assert used(state)[KEY] == 2
    state.apply_resource_claim("ADDED", claim("ml", "more", 2))
    reply = filter_reply(state, claim_pod("ml", "q", claim_name="more"), ["dra-1"])
    assert reply["FailedAndUnresolvableNodes"] == {"dra-1": f"berth: team ml: {KEY} 2 used + 2 requested > max 3"}
    state.apply_resource_claim("MODIFIED", claim("ml", "two", 2, "dra-0", [0, 1]))  # the watch confirms
    assert used(state)[KEY] == 2 and not state.dra.assumed  # replaced, not doubled
    state.apply_resource_claim("DELETED", claim("ml", "two"))
    assert KEY not in used(state)


async def test_bind_refuses_a_claim_the_team_can_no_longer_afford_and_a_failed_bind_gives_back() -> None:
    state = dra_cluster()
    team(state, **{KEY: {"guaranteed": 3, "max": 3}})
    state.apply_resource_claim("ADDED", claim("ml", "two", 2))
    state.apply_resource_claim("ADDED", claim("ml", "also", 2))
    berth = Berth(state, Metrics(), Binder(state, None, None))
    assert filter_names(berth, claim_pod("ml", "p", "two"), ["dra-0"]) == ["dra-0"]
    assert filter_names(berth, claim_pod("ml", "q", "also"), ["dra-0"]) == []  # p's claim is held from its filter
    assert await bind_pod(state, claim_pod("ml", "p", claim_name="two"), "dra-0") == {"Error": ""}
    refused = await bind_pod(state, claim_pod("ml", "q", claim_name="also"), "dra-1")
    assert refused["Error"] == f"team ml: {KEY} 2 used + 2 requested > max 3"
    state.apply_pod("DELETED", claim_pod("ml", "p", claim_name="two"))  # the pod went: its assumption goes
    assert KEY not in used(state)
    failed = await bind_pod(state, claim_pod("ml", "q", claim_name="also"), "dra-1", fail=True)
    assert failed["Error"] and KEY not in used(state) and not state.dra.assumed


async def test_an_assumption_the_watch_never_confirms_expires() -> None:
    state = dra_cluster()
    team(state)
    state.apply_resource_claim("ADDED", claim("ml", "two", 2))
    assert await bind_pod(state, claim_pod("ml", "p", claim_name="two"), "dra-0") == {"Error": ""}
    assert used(state)[KEY] == 2
    assert state.dra.expire_assumed(now=time.monotonic() + 3600) == ["ml/p"]
    assert KEY not in used(state)


async def test_the_claim_a_template_made_confirms_by_its_owner() -> None:
    state = dra_cluster()
    team(state)
    state.apply_claim_template("ADDED", template("ml", "one", 1))
    assert await bind_pod(state, claim_pod("ml", "p", template_name="one"), "dra-1") == {"Error": ""}
    assert used(state)[KEY] == 1
    made = claim("ml", "p-gpus-x", 1, "dra-1", [0])
    made["metadata"]["ownerReferences"] = [{"kind": "Pod", "name": "p", "apiVersion": "v1", "uid": "u"}]
    state.apply_resource_claim("ADDED", made)
    assert used(state)[KEY] == 1 and not state.dra.assumed


# -- hold from filter to allocation ----------------------------------------------------------------
def owned_claim(pod: str, name: str, node: str, devices: list[int]) -> dict[str, Any]:
    """The claim the resource-claim controller made from a pod's template, as PreBind allocated it."""
    made = claim("ml", name, len(devices), node, devices)
    made["metadata"]["ownerReferences"] = [{"kind": "Pod", "name": pod, "apiVersion": "v1", "uid": "u"}]
    return made


async def bind_only(berth: Berth, pod: dict[str, Any], node: str) -> dict[str, Any]:
    meta = pod["metadata"]
    body = {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}
    return dict(orjson.loads(await berth.verbs.bind_body(orjson.dumps(body))))


def filter_names(berth: Berth, pod: dict[str, Any], names: list[str]) -> list[str]:
    return list(orjson.loads(berth.verbs.filter_body(orjson.dumps({"Pod": pod, "NodeNames": names})))["NodeNames"])


async def accept(args: BindingArgs, annotations: dict[str, str]) -> str:
    return ""  # the API server took the Binding


async def test_a_claim_pod_filter_passed_holds_its_gpus_until_kube_scheduler_allocates_them() -> None:
    """kube-scheduler allocates a pod's claims in PreBind, after Berth's filter passed the pod and before it calls
    Berth's bind, and a bind refused then leaves them allocated (Unreserve only takes the pod out of reservedFor).
    A GPU pod that bound in that window took the last GPU and the allocation took the team one over its max (the
    DRA e2e burst: 13 of 12). The filter that passes a claim pod holds what its claims take until then."""
    state = dra_cluster()
    state.apply_node("ADDED", make_node("plugin", "shared", 32, 128, 4, H100, None, None, NOW, "zone-1"))
    team(state, **{GPU: {"guaranteed": 2, "max": 2}})
    state.apply_resource_claim("ADDED", claim("ml", "held", 1, "dra-0", [0]))  # 1 of the team's 2 GPUs
    state.apply_claim_template("ADDED", template("ml", "one", 1))
    berth = Berth(state, Metrics(), Binder(state, accept, None))
    t = claim_pod("ml", "t", template_name="one")
    assert filter_names(berth, t, ["dra-0", "dra-1"]) == ["dra-0", "dra-1"]  # room for its one GPU
    assert used(state)[GPU] == 2000  # held from here on
    # While kube-scheduler is in t's PreBind, a GPU pod is filtered and bound: the last GPU is t's already.
    g = make_pod("ml", "g", None, "1", "1Gi", 1)
    assert filter_names(berth, g, ["plugin"]) == []
    assert (await bind_only(berth, g, "plugin"))["Error"] == f"team ml: {GPU} 2 used + 1 requested > max 2"
    # PreBind's allocation reaches the watch: it replaces the hold, and t's bind charges nothing more.
    state.apply_resource_claim("ADDED", owned_claim("t", "t-gpus-x", "dra-1", [0]))
    assert used(state)[GPU] == 2000 and not state.dra.assumed
    assert await bind_only(berth, t, "dra-1") == {"Error": ""}
    assert used(state)[GPU] == 2000 and used(state)[KEY] == 2


async def test_the_filters_hold_is_the_pods_own_when_it_is_judged_again_and_lapses_unused() -> None:
    """kube-scheduler retries a pod (and filters it again) as it likes: its hold is replaced, never added to,
    and never refuses the pod itself; a hold whose pod never binds is given back after the TTL."""
    state = dra_cluster()
    team(state, **{GPU: {"guaranteed": 2, "max": 2}})
    state.apply_resource_claim("ADDED", claim("ml", "held", 1, "dra-0", [0]))
    state.apply_claim_template("ADDED", template("ml", "one", 1))
    berth = Berth(state, Metrics(), Binder(state, accept, None))
    t = claim_pod("ml", "t", template_name="one")
    for _ in range(3):
        assert filter_names(berth, t, ["dra-0", "dra-1"]) == ["dra-0", "dra-1"]
        assert used(state)[GPU] == 2000
    other = claim_pod("ml", "u", template_name="one")
    assert filter_names(berth, other, ["dra-0", "dra-1"]) == []  # t's hold counts against another pod
    assert state.dra.expire_assumed(now=time.monotonic() + 3600) == ["ml/t"]  # t never bound
    assert used(state)[GPU] == 1000
    assert filter_names(berth, other, ["dra-0", "dra-1"]) == ["dra-0", "dra-1"]


async def test_a_bind_refused_after_the_filters_hold_keeps_it_for_the_claims_prebind_allocated() -> None:
    state = dra_cluster()
    team(state, **{GPU: {"guaranteed": 2, "max": 2}})
    state.apply_claim_template("ADDED", template("ml", "one", 1))
    berth = Berth(state, Metrics(), Binder(state, accept, None))
    t = claim_pod("ml", "t", template_name="one")
    assert filter_names(berth, t, ["dra-0", "dra-1"]) == ["dra-0", "dra-1"]
    refused = await bind_only(berth, t, "gone")  # refused after PreBind, for any reason
    assert refused["Error"] == "node gone is not in Berth's cache"
    # kube-scheduler allocated its claim before calling bind: the hold stays until the watch shows it.
    assert used(state)[GPU] == 1000 and state.dra.assumed
    state.apply_resource_claim("ADDED", owned_claim("t", "t-gpus-x", "dra-1", [1]))
    assert used(state)[GPU] == 1000 and not state.dra.assumed


def test_a_pending_pod_deleted_gives_back_its_filters_hold_at_once_with_the_pending_watch() -> None:
    """With the pending pods' watch (admission.enabled), a claim pod deleted before it binds gives back the hold
    its filter left at once, not after the reservation TTL."""
    config = Config()
    config.admission.enabled = True
    state = ClusterState(config)
    state.apply_device_class("ADDED", device_class(extended=GPU))
    state.apply_node("ADDED", make_node("dra-0", "shared", 32, 128, 0, None, None, None, NOW, "zone-1"))
    state.apply_resource_slice("ADDED", resource_slice("dra-0", 4, H100))
    team(state, **{GPU: {"guaranteed": 2, "max": 2}})
    state.apply_claim_template("ADDED", template("ml", "one", 1))
    berth = Berth(state, Metrics(), Binder(state, accept, None))
    t = claim_pod("ml", "t", template_name="one")
    assert filter_names(berth, t, ["dra-0"]) == ["dra-0"] and used(state)[GPU] == 1000  # held
    state.apply_pending_pod("DELETED", t)
    assert not state.dra.assumed and not used(state).get(GPU)
