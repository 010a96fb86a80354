"""Kubernetes objects for the end-to-end tests: kubelet-less nodes with GPU labels, and pods, built by the
one factory (`scheduler.cluster.objects`), and thin helpers that create and delete them through the
kubernetes client."""

from typing import Any

from kubernetes import client as kclient

from scheduler.cluster import objects
from scheduler.cluster.objects import READY, SCHEDULER
from scheduler.model.quantity import GPU

BERTH = SCHEDULER


def node(
    name: str,
    group: str,
    cpu: str = "32",
    memory: str = "128Gi",
    gpus: int = 0,
    model: str = "NVIDIA-A100-SXM4-80GB",
    pool: str = "shared",
    islands: list[list[int]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A kubelet-less node in e2e group `group` (pods of the group select it by the e2e-group label)."""
    alloc = {"cpu": cpu, "memory": memory, "pods": "110", **({GPU: str(gpus)} if gpus else {})}
    ready = {**READY, "reason": "KubeletReady", "message": "e2e node without kubelet"}
    return objects.node(
        name,
        alloc,
        pool=pool,
        gpu_model=model,
        labels={"e2e-group": group, **(labels or {})},
        topology={"islands": islands} if gpus and islands else None,
        conditions=[ready],
    )


def pod(
    name: str,
    group: str,
    gpus: int = 0,
    cpu: str = "1",
    memory: str = "1Gi",
    scheduler: str = BERTH,
    node_name: str | None = None,
    annotations: dict[str, str] | None = None,
    priority: int | None = None,
    priority_class: str | None = None,
    grace_period: int = 0,
) -> dict[str, Any]:
    """A pause pod of e2e group `group`, in the client's namespace."""
    main = objects.container("main", "registry.k8s.io/pause:3.10", objects.resources(cpu, memory, gpus))
    spec: dict[str, Any] = {"nodeSelector": {"e2e-group": group}, "terminationGracePeriodSeconds": grace_period}
    if priority_class:
        spec["priorityClassName"] = priority_class
    return objects.pod(
        name, [main], scheduler=scheduler, node_name=node_name or None, annotations=annotations or {}, spec=spec
    )


def create_nodes(api: kclient.CoreV1Api, nodes: list[dict[str, Any]]) -> None:
    for n in nodes:
        created = api.create_node(n)
        if not (created.status and created.status.allocatable):  # status is dropped on create: set it
            api.patch_node_status(n["metadata"]["name"], {"status": n["status"]})


def delete_nodes(api: kclient.CoreV1Api, group: str) -> None:
    for n in api.list_node(label_selector=f"e2e-group={group}").items:
        api.delete_node(n.metadata.name)


def create_namespace(api: kclient.CoreV1Api, name: str, labels: dict[str, str] | None = None) -> str:
    api.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
    return name


def delete_pod(api: kclient.CoreV1Api, namespace: str, name: str) -> None:
    api.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
