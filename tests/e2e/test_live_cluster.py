"""Berth against a real kube-apiserver and the real kube-scheduler (issue: live cluster)."""

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as kclient

from scheduler.model.quantity import milli, whole
from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle
from tests.e2e.objects import create_namespace, create_nodes, delete_pod, node, pod


def wait_bound(api: kclient.CoreV1Api, ns: str, name: str, timeout: float = 60) -> str:
    return h.wait_until(lambda: api.read_namespaced_pod(name, ns).spec.node_name, timeout, f"pod {ns}/{name} bound")


def events_for(api: kclient.CoreV1Api, ns: str, name: str) -> list[str]:
    evs = api.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [f"{e.reason}: {e.message}" for e in evs]


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    return h.wait_until(check, timeout, what, every=0.02)


@pytest.fixture(scope="module")
def ns(api: kclient.CoreV1Api) -> str:
    return create_namespace(api, f"live-{int(time.time())}")


def test_berth_binds_to_the_node_it_prefers_and_default_pods_never_reach_it(
    api: kclient.CoreV1Api, berth: BerthHandle, berth_scheduler: h.Proc, default_scheduler: h.Proc, ns: str
) -> None:
    # p-b already runs a 4-GPU pod: kube-scheduler's LeastAllocated prefers the empty p-a; Berth packs
    # GPUs and keeps p-a whole for an 8-GPU job, so it prefers p-b.
    create_nodes(api, [node("p-a", "prefer", gpus=8), node("p-b", "prefer", gpus=8)])
    api.create_namespaced_pod(
        ns, pod("already-there", "prefer", gpus=4, cpu="8", node_name="p-b", scheduler="default-scheduler")
    )
    poll(lambda: berth.node("p-b")["free"]["nvidia.com/gpu"] == 4, 10, "Berth sees p-b half used")

    filters_before = berth.metric("berth_request_duration_seconds_count", verb="filter")
    api.create_namespaced_pod(ns, pod("default-probe", "prefer", gpus=1, scheduler="default-scheduler"))
    assert wait_bound(api, ns, "default-probe") == "p-a", "the cluster must make the default choice differ"
    assert berth.metric("berth_request_duration_seconds_count", verb="filter") == filters_before
    assert berth.metric("berth_request_duration_seconds_count", verb="bind") == 0
    delete_pod(api, ns, "default-probe")
    poll(lambda: berth.node("p-a")["free"]["nvidia.com/gpu"] == 8, 10, "probe released")

    api.create_namespaced_pod(ns, pod("packed", "prefer", gpus=1))
    assert wait_bound(api, ns, "packed") == "p-b"
    assert berth.metric("berth_binds_total", result="bound") >= 1
    got = api.read_namespaced_pod("packed", ns).metadata.annotations
    held = berth.node("p-b")["gpuIdsUsed"].split(",")
    assert got["berth.dev/gpu-ids"] in held and len(held) == 5
    assert berth.metric("berth_request_duration_seconds_count", verb="filter") > filters_before


def test_a_pod_berth_rejects_shows_berths_reason(
    api: kclient.CoreV1Api, berth: BerthHandle, berth_scheduler: h.Proc, ns: str
) -> None:
    # In-tree fit passes (8 GPUs free) but no NVLink island holds 5: only Berth can say why.
    create_nodes(api, [node("r-a", "reject", gpus=8, islands=[[0, 1, 2, 3], [4, 5, 6, 7]])])
    api.create_namespaced_pod(ns, pod("too-wide", "reject", gpus=5, annotations={"berth.dev/topology": "required"}))
    msgs = poll(
        lambda: [m for m in events_for(api, ns, "too-wide") if m.startswith("FailedScheduling")],
        30,
        "FailedScheduling event",
    )
    assert any("no NVLink island on this node has 5 GPUs" in m for m in msgs), msgs
    assert api.read_namespaced_pod("too-wide", ns).spec.node_name is None


def test_delete_frees_resources_within_a_second(
    api: kclient.CoreV1Api, berth: BerthHandle, berth_scheduler: h.Proc, ns: str
) -> None:
    create_nodes(api, [node("d-a", "delete", gpus=8)])
    api.create_namespaced_pod(ns, pod("first", "delete", gpus=8))
    assert wait_bound(api, ns, "first") == "d-a"
    poll(lambda: berth.node("d-a")["free"]["nvidia.com/gpu"] == 0, 10, "Berth accounts the first pod")
    t0 = time.monotonic()
    delete_pod(api, ns, "first")
    poll(lambda: berth.node("d-a")["free"]["nvidia.com/gpu"] == 8, 1.0, "free GPUs back in Berth's cache")
    print(f"cache freed {(time.monotonic() - t0) * 1000:.0f} ms after the delete")

    # A pod that only fits once another is deleted gets scheduled.
    api.create_namespaced_pod(ns, pod("blocker", "delete", gpus=8))
    assert wait_bound(api, ns, "blocker") == "d-a"
    api.create_namespaced_pod(ns, pod("waiting", "delete", gpus=8))
    msgs = poll(
        lambda: [m for m in events_for(api, ns, "waiting") if m.startswith("FailedScheduling")],
        30,
        "the waiting pod to be refused first",
    )
    assert api.read_namespaced_pod("waiting", ns).spec.node_name is None, msgs
    delete_pod(api, ns, "blocker")
    assert wait_bound(api, ns, "waiting") == "d-a"


def _api_view(api: kclient.CoreV1Api, group: str) -> dict[str, dict[str, int]]:
    """Free cpu/memory/GPUs per node of a group, from a fresh list of the API server."""
    nodes = {n.metadata.name: n for n in api.list_node(label_selector=f"e2e-group={group}").items}
    free = {
        name: {
            "cpu": milli(n.status.allocatable["cpu"]),
            "memory": whole(n.status.allocatable["memory"]),
            "nvidia.com/gpu": whole(n.status.allocatable.get("nvidia.com/gpu", "0")),
        }
        for name, n in nodes.items()
    }
    for p in api.list_pod_for_all_namespaces().items:
        if p.spec.node_name in free and p.status.phase not in ("Succeeded", "Failed"):
            for c in p.spec.containers:
                req = {**(c.resources.limits or {}), **(c.resources.requests or {})}
                f = free[p.spec.node_name]
                f["cpu"] -= milli(req.get("cpu", "0"))
                f["memory"] -= whole(req.get("memory", "0"))
                f["nvidia.com/gpu"] -= whole(req.get("nvidia.com/gpu", "0"))
    return free


def _berth_view(berth: BerthHandle, names: list[str]) -> dict[str, dict[str, int]]:
    nodes = {n["name"]: n["free"] for n in berth.get("/debug/nodes")["nodes"]}
    return {n: {k: nodes[n][k] for k in ("cpu", "memory", "nvidia.com/gpu")} for n in names}


def _assert_devices_disjoint(api: kclient.CoreV1Api, ns: str) -> None:
    seen: dict[tuple[str, str], str] = {}
    for p in api.list_namespaced_pod(ns).items:
        ids = (p.metadata.annotations or {}).get("berth.dev/gpu-ids")
        if p.spec.node_name and ids:
            for i in ids.split(","):
                key = (p.spec.node_name, i)
                assert key not in seen, f"GPU {i} of {p.spec.node_name} held by {seen[key]} and {p.metadata.name}"
                seen[key] = p.metadata.name


def test_killing_berth_mid_run_loses_no_pod(
    api: kclient.CoreV1Api, berth: BerthHandle, berth_scheduler: h.Proc, ns: str
) -> None:
    create_nodes(api, [node(f"k-{i}", "restart", gpus=8) for i in range(4)])
    names = [f"burst-{i}" for i in range(20)]  # 30 GPUs of the 32
    for i, name in enumerate(names):
        api.create_namespaced_pod(ns, pod(name, "restart", gpus=1 + i % 2, cpu="500m"))
        if i == 8:
            berth.kill()
            time.sleep(1)
            berth.start()
    for name in names:
        wait_bound(api, ns, name, timeout=120)
    _assert_devices_disjoint(api, ns)
    group = [f"k-{i}" for i in range(4)]
    poll(lambda: _berth_view(berth, group) == _api_view(api, "restart"), 10, "Berth's cache matches the API")


def test_watch_broken_by_apiserver_restart_is_recovered(
    cp: h.ControlPlane, api: kclient.CoreV1Api, berth: BerthHandle, berth_scheduler: h.Proc, ns: str
) -> None:
    create_nodes(api, [node("w-a", "watch", gpus=8), node("w-b", "watch", gpus=8)])
    api.create_namespaced_pod(ns, pod("before", "watch", gpus=2))
    wait_bound(api, ns, "before")
    lists_before = berth.get("/debug/state")["informers"]["pods"]["lists"]
    cp.restart_apiserver()
    api.create_namespaced_pod(ns, pod("after", "watch", gpus=3))
    delete_pod(api, ns, "before")
    wait_bound(api, ns, "after", timeout=90)
    state = berth.get("/debug/state")
    print("informers after restart:", state["informers"])
    poll(lambda: _berth_view(berth, ["w-a", "w-b"]) == _api_view(api, "watch"), 30, "cache matches a fresh list")
    assert state["informers"]["pods"]["lists"] > lists_before, "the broken watch is recovered by a relist"
