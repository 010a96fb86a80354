"""Node and Pod objects as plain dicts, shaped as the API server serves them: the one factory.

The embedded demo cluster (`berth serve --demo`) builds its nodes and pods here at run time, so the
factory ships in the package; the benchmarks (loadtests/), the end-to-end tests and the test fakes
import it from here too. It writes the fields Berth reads (allocatable, capacity, the pool and GPU
labels, the GPU topology annotation, container requests and limits, scheduler and node names) in
one place; callers that want a realistic object (kubelet's nodeInfo, images, managedFields...) pass
those extra fields in `metadata`, `spec` and `status`, which are merged over the built ones.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from scheduler.model.names import ANN_GPU_TOPOLOGY, GPU, LABEL_GPU_PRODUCT, LABEL_POOL

SCHEDULER = "berth-scheduler"
READY = {"type": "Ready", "status": "True"}
# Go's json.Marshal writes struct fields in declaration order: pods keep that order (metav1.ObjectMeta,
# v1.PodSpec), so request bodies built from them look byte for byte like kube-scheduler's.
META_ORDER = (
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)
POD_SPEC_ORDER = (
    "volumes",
    "initContainers",
    "containers",
    "ephemeralContainers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "dnsPolicy",
    "nodeSelector",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "nodeName",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "shareProcessNamespace",
    "securityContext",
    "imagePullSecrets",
    "hostname",
    "subdomain",
    "affinity",
    "schedulerName",
    "tolerations",
    "hostAliases",
    "priorityClassName",
    "priority",
    "dnsConfig",
    "readinessGates",
    "runtimeClassName",
    "enableServiceLinks",
    "preemptionPolicy",
    "overhead",
)


def node(
    name: str,
    allocatable: Mapping[str, str],
    *,
    capacity: Mapping[str, str] | None = None,
    pool: str | None = None,
    gpu_model: str | None = None,
    topology: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    conditions: Sequence[Mapping[str, Any]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
    status: Mapping[str, Any] | None = None,
    type_meta: bool = True,
) -> dict[str, Any]:
    """A v1.Node. `allocatable` holds quantity strings (an `nvidia.com/gpu` entry makes it a GPU node);
    `capacity` defaults to a copy of it; `conditions` to Ready alone; no `spec`, no spec key. `gpu_model` adds the GPU
    product and count labels (as NVIDIA's GPU feature discovery writes them); `topology` is the
    `berth.dev/gpu-topology` annotation ({"islands": [[...]], "links": ...}); `type_meta=False` drops
    apiVersion/kind, as an informer hands objects to kube-scheduler."""
    all_labels = {"kubernetes.io/hostname": name, **(labels or {})}
    if pool is not None:
        all_labels[LABEL_POOL] = pool
    if gpu_model and allocatable.get(GPU):
        all_labels[LABEL_GPU_PRODUCT] = gpu_model
    all_annotations = dict(annotations or {})
    if topology is not None:
        all_annotations[ANN_GPU_TOPOLOGY] = orjson.dumps(dict(topology)).decode()
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Node"} if type_meta else {}
    obj["metadata"] = {"name": name, **(metadata or {}), "labels": all_labels, "annotations": all_annotations}
    if spec is not None:
        obj["spec"] = dict(spec)
    obj["status"] = {
        "capacity": dict(capacity if capacity is not None else allocatable),
        "allocatable": dict(allocatable),
        "conditions": [dict(c) for c in (conditions if conditions is not None else [READY])],
        **(status or {}),
    }
    return obj


def go_order(fields: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """`fields` with the keys named in `order` first, in that order; any others after, as they came."""
    rank = {key: i for i, key in enumerate(order)}
    return dict(sorted(fields.items(), key=lambda item: rank.get(item[0], len(rank))))


def resources(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    """The usual requests: CPU and memory requested, GPUs as a limit (Kubernetes copies the limit of
    an extended resource into its request)."""
    out: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}}
    if gpus:
        out["limits"] = {GPU: str(gpus)}
    return out


def container(name: str, image: str, res: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """A container with its `resources` (see `resources()`); `fields` are any other container fields."""
    return {"name": name, "image": image, **fields, "resources": dict(res)}


def pod(
    name: str,
    containers: Sequence[Mapping[str, Any]],
    *,
    namespace: str | None = None,
    node_name: str | None = None,
    scheduler: str = SCHEDULER,
    priority: int | None = None,
    uid: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    phase: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
    status: Mapping[str, Any] | None = None,
    type_meta: bool = True,
) -> dict[str, Any]:
    """A v1.Pod asking `scheduler` to place it; bound when `node_name` is set. Keys left None are left
    out (no namespace: the client's default); `phase` (or `status`) sets the status, none by default."""
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if uid is not None:
        meta["uid"] = uid
    if labels is not None:
        meta["labels"] = dict(labels)
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    meta |= metadata or {}
    body: dict[str, Any] = {"schedulerName": scheduler}
    if priority is not None:
        body["priority"] = priority
    body["containers"] = [dict(c) for c in containers]
    body |= spec or {}
    if node_name is not None:
        body["nodeName"] = node_name
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod"} if type_meta else {}
    obj |= {"metadata": go_order(meta, META_ORDER), "spec": go_order(body, POD_SPEC_ORDER)}
    if phase is not None or status is not None:
        obj["status"] = {**({"phase": phase} if phase is not None else {}), **(status or {})}
    return obj
