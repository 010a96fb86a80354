"""Kubernetes objects for the end-to-end tests: kubelet-less nodes with GPU labels, and pods."""

from typing import Any

import orjson
from kubernetes import client as kclient

BERTH = "berth-scheduler"


def node(name: str, group: str, cpu: str = "32", memory: str = "128Gi", gpus: int = 0,
         model: str = "NVIDIA-A100-SXM4-80GB", pool: str = "shared", islands: list[list[int]] | None = None,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    lab = {"kubernetes.io/hostname": name, "e2e-group": group, "berth.dev/pool": pool, **(labels or {})}
    ann: dict[str, str] = {}
    alloc = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
        lab.update({"nvidia.com/gpu.product": model, "nvidia.com/gpu.count": str(gpus)})
        if islands:
            ann["berth.dev/gpu-topology"] = orjson.dumps({"islands": islands}).decode()
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": lab, "annotations": ann},
            "status": {"capacity": alloc, "allocatable": alloc,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "e2e node without kubelet"}]}}


def pod(name: str, group: str, gpus: int = 0, cpu: str = "1", memory: str = "1Gi", scheduler: str = BERTH,
        node_name: str | None = None, annotations: dict[str, str] | None = None, priority: int | None = None,
        priority_class: str | None = None, grace_period: int = 0) -> dict[str, Any]:
    res: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}}
    if gpus:
        res["limits"] = {"nvidia.com/gpu": str(gpus)}
    spec: dict[str, Any] = {"schedulerName": scheduler, "nodeSelector": {"e2e-group": group},
                            "terminationGracePeriodSeconds": grace_period,
                            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": res}]}
    if node_name:
        spec["nodeName"] = node_name
    if priority_class:
        spec["priorityClassName"] = priority_class
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


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
