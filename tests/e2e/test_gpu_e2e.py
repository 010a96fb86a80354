"""GPU placement with the real kube-scheduler: topology and packing decide, not LeastAllocated."""

import time

from kubernetes import client as kclient

from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle
from tests.e2e.objects import create_namespace, create_nodes, node, pod
from tests.e2e.test_live_cluster import _assert_devices_disjoint, wait_bound


def test_gpu_pods_land_where_the_policy_says(
    api: kclient.CoreV1Api, berth: BerthHandle, berth_scheduler: h.Proc, default_scheduler: h.Proc
) -> None:
    ns = create_namespace(api, f"gpu-{int(time.time())}")
    # g-a: two NVLink islands of 4, GPUs 0,1 held. g-b: empty, one island of 8.
    # LeastAllocated prefers the empty g-b for anything; Berth fills g-a's islands and keeps g-b whole.
    create_nodes(
        api,
        [
            node("g-a", "gpu", gpus=8, islands=[[0, 1, 2, 3], [4, 5, 6, 7]]),
            node("g-b", "gpu", gpus=8, islands=[[0, 1, 2, 3, 4, 5, 6, 7]]),
        ],
    )
    api.create_namespaced_pod(
        ns,
        pod(
            "held",
            "gpu",
            gpus=2,
            node_name="g-a",
            scheduler="default-scheduler",
            annotations={"berth.dev/gpu-ids": "0,1"},
        ),
    )
    h.wait_until(lambda: berth.node("g-a")["gpuIdsUsed"] == "0,1", 10, "Berth sees GPUs 0,1 of g-a held")

    api.create_namespaced_pod(ns, pod("default-probe", "gpu", gpus=2, scheduler="default-scheduler"))
    assert wait_bound(api, ns, "default-probe") == "g-b", "LeastAllocated must prefer the empty node"
    api.delete_namespaced_pod("default-probe", ns, grace_period_seconds=0)
    h.wait_until(lambda: berth.node("g-b")["free"]["nvidia.com/gpu"] == 8, 10, "probe released")

    api.create_namespaced_pod(ns, pod("pair", "gpu", gpus=2))
    assert wait_bound(api, ns, "pair") == "g-a"
    assert api.read_namespaced_pod("pair", ns).metadata.annotations["berth.dev/gpu-ids"] == "2,3"

    api.create_namespaced_pod(ns, pod("quad", "gpu", gpus=4, annotations={"berth.dev/topology": "required"}))
    assert wait_bound(api, ns, "quad") == "g-a"
    assert api.read_namespaced_pod("quad", ns).metadata.annotations["berth.dev/gpu-ids"] == "4,5,6,7"

    api.create_namespaced_pod(ns, pod("full", "gpu", gpus=8))
    assert wait_bound(api, ns, "full") == "g-b", "the node kept whole takes the 8-GPU job"
    assert api.read_namespaced_pod("full", ns).metadata.annotations["berth.dev/gpu-ids"] == "0,1,2,3,4,5,6,7"
    _assert_devices_disjoint(api, ns)
