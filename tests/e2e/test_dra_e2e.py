"""DRA end to end on the real kube-apiserver, kube-scheduler (its DynamicResources plugin allocates) and
kube-controller-manager (its resource-claim controller makes claims from templates): a hand-made DeviceClass
and ResourceSlices publish the GPUs of kubelet-less nodes (no kubelet: pods do not run, but binding and
allocation happen), Berth counts the allocated devices in the TeamQuota, refuses a pod whose claim would take
its team over quota with its own sentence, and keeps one exact ledger in a cluster where some nodes offer
device-plugin GPUs and others DRA GPUs (compared with a fresh list of the API server after a burst)."""

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from scheduler.cluster.dra import CLASS_KEY_SUFFIX
from scheduler.model.quantity import milli, whole
from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle
from tests.e2e.objects import create_namespace, create_nodes, node, pod
from tests.e2e.prod_helpers import assert_cache_matches
from tests.e2e.test_live_cluster import events_for, wait_bound

DRIVER = CLASS = "gpu.e2e.berth.dev"
KEY = CLASS + CLASS_KEY_SUFFIX
A100, H100 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"
DRA_NODES = {"dra-0": A100, "dra-1": H100}
DP_NODES = ("dp-0", "dp-1")
GPUS = 4
TEAM = "dra-team"
GROUP, PLUGIN_GROUP = "dra-slices", "dra-plugin"
RESOURCE = ("resource.k8s.io", "v1")


@pytest.fixture(scope="module")
def custom(cp: h.ControlPlane) -> kclient.CustomObjectsApi:
    return kclient.CustomObjectsApi(kconfig.new_client_from_config(str(cp.admin_kubeconfig)))


def device_class() -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": CLASS},
        "spec": {
            "selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}],
            "extendedResourceName": "nvidia.com/gpu",  # KEP-5004 (DRAExtendedResource, beta and on in 1.36)
        },
    }


def resource_slice(node_name: str, model: str) -> dict[str, Any]:
    devices = [{"name": f"gpu-{i}", "attributes": {"productName": {"string": model}}} for i in range(GPUS)]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node_name}-{DRIVER}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node_name,
            "pool": {"name": node_name, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def claim_spec(count: int) -> dict[str, Any]:
    exactly = {"deviceClassName": CLASS, "allocationMode": "ExactCount", "count": count}
    return {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}


def team_quota(ns: str, class_max: int) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TeamQuota",
        "metadata": {"name": TEAM},
        "spec": {
            "namespaces": [ns],
            "resources": {
                KEY: {"guaranteed": class_max, "max": class_max},
                "nvidia.com/gpu": {"guaranteed": 12, "max": 12},
            },
        },
    }


def dra_pod(name: str, group: str = GROUP, claim: str | None = None, template: str | None = None) -> dict[str, Any]:
    obj = pod(name, group)
    ref: dict[str, Any] = {"name": "gpus"}
    ref |= {"resourceClaimName": claim} if claim else {"resourceClaimTemplateName": template}
    obj["spec"]["resourceClaims"] = [ref]
    obj["spec"]["containers"][0]["resources"]["claims"] = [{"name": "gpus"}]
    return obj


@pytest.fixture(scope="module")
def cluster(cp: h.ControlPlane, api: kclient.CoreV1Api, custom: kclient.CustomObjectsApi) -> Iterator[dict[str, Any]]:
    """Two kubelet-less nodes whose GPUs are in ResourceSlices only, two with device-plugin GPUs, a team."""
    kcm = h.start_controller_manager(cp, ["resourceclaim-controller", "garbage-collector-controller"])
    ns = create_namespace(api, f"dra-{int(time.time())}")
    create_nodes(api, [node(n, GROUP, model=m, labels={"e2e-dra": "mixed"}) for n, m in DRA_NODES.items()])
    plugin = [node(n, PLUGIN_GROUP, gpus=GPUS, model=A100, labels={"e2e-dra": "mixed"}) for n in DP_NODES]
    create_nodes(api, plugin)
    custom.create_cluster_custom_object(*RESOURCE, "deviceclasses", device_class())
    for n, model in DRA_NODES.items():
        custom.create_cluster_custom_object(*RESOURCE, "resourceslices", resource_slice(n, model))
    custom.create_cluster_custom_object("berth.dev", "v1alpha1", "teamquotas", team_quota(ns, 5))
    yield {"ns": ns, "kcm": kcm}
    # Teardown tolerates objects already gone: the controllers delete a pod's own claims after it.
    gone = contextlib.suppress(kclient.ApiException)
    for p in api.list_namespaced_pod(ns).items:
        with gone:
            api.delete_namespaced_pod(p.metadata.name, ns, grace_period_seconds=0)
    for c in claims(custom, ns):
        with gone:
            custom.delete_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", c["metadata"]["name"])
    with gone:
        custom.delete_cluster_custom_object("berth.dev", "v1alpha1", "teamquotas", TEAM)
    for n in DRA_NODES:
        with gone:
            custom.delete_cluster_custom_object(*RESOURCE, "resourceslices", f"{n}-{DRIVER}")
    with gone:
        custom.delete_cluster_custom_object(*RESOURCE, "deviceclasses", CLASS)
    for n in [*DRA_NODES, *DP_NODES]:
        with gone:
            api.delete_node(n)
    kcm.stop()


def claims(custom: kclient.CustomObjectsApi, ns: str) -> list[dict[str, Any]]:
    return list(custom.list_namespaced_custom_object(*RESOURCE, ns, "resourceclaims")["items"])


def allocated(c: dict[str, Any]) -> list[dict[str, str]]:
    return list((((c.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or [])


def team_status(cp: h.ControlPlane) -> dict[str, Any]:
    out = cp.kubectl("get", "teamquota", TEAM, "-o", "json").stdout
    return dict(json.loads(out).get("status") or {})


def berth_team(berth: BerthHandle) -> dict[str, Any]:
    return next(r for r in berth.get("/debug/teams")["teams"] if r["team"] == TEAM)


def test_claims_are_allocated_on_a_node_berth_allowed_and_counted_in_the_teamquota(
    cp: h.ControlPlane,
    api: kclient.CoreV1Api,
    custom: kclient.CustomObjectsApi,
    berth: BerthHandle,
    berth_scheduler: h.Proc,
    cluster: dict[str, Any],
) -> None:
    ns = cluster["ns"]
    h.wait_until(lambda: berth.get("/debug/state")["dra"]["devices"] == 2 * GPUS, 30, "Berth sees the slices")
    h.wait_until(lambda: berth.get("/debug/state")["teams"] >= 1, 30, "Berth sees the TeamQuota")
    # A pod with a ResourceClaim of two GPUs.
    custom.create_namespaced_custom_object(
        *RESOURCE, ns, "resourceclaims", {"metadata": {"name": "two"}, "spec": claim_spec(2)}
    )
    api.create_namespaced_pod(ns, dra_pod("claimed", claim="two"))
    on = wait_bound(api, ns, "claimed")
    assert on in DRA_NODES  # the only nodes whose slices hold devices of the class
    two = custom.get_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", "two")
    assert {r["pool"] for r in allocated(two)} == {on} and len(allocated(two)) == 2
    # A pod whose claim comes from a template (kube-controller-manager's resource-claim controller makes it).
    template = {"metadata": {"name": "one"}, "spec": {"spec": claim_spec(1)}}
    custom.create_namespaced_custom_object(*RESOURCE, ns, "resourceclaimtemplates", template)
    api.create_namespaced_pod(ns, dra_pod("templated", template="one"))
    assert wait_bound(api, ns, "templated") in DRA_NODES
    made = next(c for c in claims(custom, ns) if c["metadata"]["name"] != "two")
    assert len(allocated(made)) == 1
    # Berth read the allocations back: the TeamQuota status (what `kubectl get tq` prints) shows the devices.
    want = {
        f"{ns}/{c['metadata']['name']}": [f"{r['driver']}/{r['pool']}/{r['device']}" for r in allocated(c)]
        for c in claims(custom, ns)
    }
    status = h.wait_until(lambda: (s := team_status(cp)).get("devices") == want and s, 30, "devices in status")
    assert status["used"][KEY] == "3" and status["used"]["nvidia.com/gpu"] == "3"
    models = [DRA_NODES[r["pool"]] for c in claims(custom, ns) for r in allocated(c)]
    for model in set(models):
        assert berth_team(berth)["used"][f"nvidia.com/gpu/{model}"] == str(models.count(model))
    header, row = cp.kubectl("get", "tq", TEAM).stdout.splitlines()[:2]
    at = header.index("GPUS USED")  # the column counts the DRA GPUs
    assert row[at:].split()[0] == "3", f"{header}\n{row}"


def test_a_claim_over_the_teams_quota_is_refused_with_berths_reason(
    cp: h.ControlPlane,
    api: kclient.CoreV1Api,
    custom: kclient.CustomObjectsApi,
    berth: BerthHandle,
    berth_scheduler: h.Proc,
    cluster: dict[str, Any],
) -> None:
    ns = cluster["ns"]
    h.wait_until(lambda: team_status(cp).get("used", {}).get(KEY) == "3", 30, "3 devices counted")
    custom.create_namespaced_custom_object(
        *RESOURCE, ns, "resourceclaims", {"metadata": {"name": "big"}, "spec": claim_spec(3)}
    )
    api.create_namespaced_pod(ns, dra_pod("over", claim="big"))
    sentence = f"berth: team {TEAM}: {KEY} 3 used + 3 requested > max 5"
    msgs = h.wait_until(
        lambda: [m for m in events_for(api, ns, "over") if sentence in m], 60, "the refusal with Berth's reason"
    )
    assert msgs[0].startswith("FailedScheduling"), msgs
    assert api.read_namespaced_pod("over", ns).spec.node_name is None
    big = custom.get_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", "big")
    assert not allocated(big)  # kube-scheduler allocates only for a node that passed every filter
    api.delete_namespaced_pod("over", ns, grace_period_seconds=0)
    custom.delete_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", "big")


def test_a_mixed_cluster_keeps_one_exact_ledger_after_a_burst(
    cp: h.ControlPlane,
    api: kclient.CoreV1Api,
    custom: kclient.CustomObjectsApi,
    berth: BerthHandle,
    berth_scheduler: h.Proc,
    cluster: dict[str, Any],
) -> None:
    """nvidia.com/gpu pods land on device-plugin nodes or, through the DeviceClass's extendedResourceName, on
    DRA nodes (kube-scheduler picks), beside claim pods; the team's GPU max (12) refuses some. Afterwards Berth's
    team usage, per-node DRA devices and device-plugin nodes equal what a fresh list of the API server says."""
    ns = cluster["ns"]
    cp.apply([team_quota(ns, 16)])  # the class quota out of the way: the GPU quota is the one that binds
    h.wait_until(lambda: berth_team(berth)["limits"][KEY]["max"] == "16", 30, "the new class quota")
    gpu_pods = [pod(f"gpu-{i}", GROUP, gpus=1) for i in range(10)]  # 0-3: DRA nodes only; 4-9: any node
    claim_pods = [dra_pod(f"tmpl-{i}", template="one") for i in range(2)]
    for p in gpu_pods[4:]:
        p["spec"]["nodeSelector"] = {"e2e-dra": "mixed"}
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda p: api.create_namespaced_pod(ns, p), gpu_pods + claim_pods))
    names = [p["metadata"]["name"] for p in gpu_pods + claim_pods]

    def settled() -> bool:  # every pod bound, or refused (by Berth, or by kube-scheduler: no device left)
        return all(
            api.read_namespaced_pod(n, ns).spec.node_name
            or any(m.startswith("FailedScheduling") for m in events_for(api, ns, n))
            for n in names
        )

    h.wait_until(settled, 120, "the burst settles")
    _wait_equal(berth, api, custom, ns)
    assert_cache_matches(berth, api, PLUGIN_GROUP)
    ledger = _api_ledger(api, custom, ns)
    assert ledger["used"]["nvidia.com/gpu"] <= 12 * 1000, ledger  # the GPU quota held, over both kinds of GPU
    served = [
        p.metadata.name
        for p in api.list_namespaced_pod(ns).items
        if p.spec.node_name in DRA_NODES and p.metadata.name.startswith("gpu-")
    ]
    assert served, f"no nvidia.com/gpu pod was served by DRA: {ledger}"


def _wait_equal(berth: BerthHandle, api: kclient.CoreV1Api, custom: kclient.CustomObjectsApi, ns: str) -> bool:
    deadline = time.monotonic() + 30
    while True:
        got, want = _berth_ledger(berth, ns), _api_ledger(api, custom, ns)
        if got == want:
            return True
        if time.monotonic() > deadline:
            raise AssertionError(f"Berth's ledger differs from a fresh list:\nberth: {got}\napi:   {want}")
        time.sleep(0.3)


def _berth_ledger(berth: BerthHandle, ns: str) -> dict[str, Any]:
    row = berth_team(berth)
    used = {k: _units(k, v) for k, v in row["used"].items() if _units(k, v)}
    nodes = {n["name"]: n for n in berth.get("/debug/nodes")["nodes"]}
    devices = {n: {d: c for d, c in (nodes[n]["draDevices"] or {}).items() if c} for n in DRA_NODES}
    free = {n: (nodes[n]["free"]["cpu"], nodes[n]["free"]["memory"]) for n in DRA_NODES}
    return {"used": used, "pods": row["pods"], "devices": devices, "free": free}


def _api_ledger(api: kclient.CoreV1Api, custom: kclient.CustomObjectsApi, ns: str) -> dict[str, Any]:
    """The same facts from a fresh list: bound pods' requests, and each allocated claim's devices once."""
    used: dict[str, int] = {}
    pods = 0
    free = {n: [32000, 128 << 30] for n in DRA_NODES}
    for p in api.list_namespaced_pod(ns).items:
        if not p.spec.node_name:
            continue
        pods += 1
        for c in p.spec.containers:
            req = {**(c.resources.limits or {}), **(c.resources.requests or {})}
            _add(used, "cpu", milli(req.get("cpu", "0")))
            _add(used, "memory", whole(req.get("memory", "0")))
            gpus = whole(req.get("nvidia.com/gpu", "0")) * 1000
            _add(used, "nvidia.com/gpu", gpus)
            if gpus and p.spec.node_name in DP_NODES:
                _add(used, f"nvidia.com/gpu/{A100}", gpus)
            if p.spec.node_name in free:
                free[p.spec.node_name][0] -= milli(req.get("cpu", "0"))
                free[p.spec.node_name][1] -= whole(req.get("memory", "0"))
    devices: dict[str, dict[str, str]] = {n: {} for n in DRA_NODES}
    for c in claims(custom, ns):
        extended = (c["metadata"].get("annotations") or {}).get("resource.kubernetes.io/extended-resource-claim")
        for r in allocated(c):
            devices[r["pool"]][f"{r['driver']}/{r['pool']}/{r['device']}"] = f"{ns}/{c['metadata']['name']}"
            _add(used, KEY, 1)
            _add(used, f"nvidia.com/gpu/{DRA_NODES[r['pool']]}", 1000)
            if extended != "true":
                _add(used, "nvidia.com/gpu", 1000)
    return {
        "used": {k: v for k, v in used.items() if v},
        "pods": pods,
        "devices": devices,
        "free": {n: tuple(v) for n, v in free.items()},
    }


def _units(key: str, value: str) -> int:
    if key == "cpu":
        return milli(value)
    if key.startswith("nvidia.com/gpu"):
        return round(float(value) * 1000)
    return whole(value)


def _add(into: dict[str, int], key: str, amount: int) -> None:
    into[key] = into.get(key, 0) + amount
