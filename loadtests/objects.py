"""Realistic Kubernetes objects for the benchmarks, as an informer hands them to kube-scheduler (no
managedFields, no TypeMeta), and the ExtenderArgs bodies kube-scheduler sends with them.

Every node and pod is built by the one factory, `scheduler.cluster.objects`; what is added here is the
realism a benchmark needs on top: env, mounts, volumes, affinity and tolerations on a pod (a few KB),
kubelet's addresses, nodeInfo and images on a node (~5 KB).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from scheduler.cluster import objects

GPU = "nvidia.com/gpu"
BIND_NAMESPACE = "bench-binds"  # unteamed: the bench's binds must not touch any team's quota

_CREATED = "2025-11-27T14:03:11Z"


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _env(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": key, "value": value} for key, value in pairs.items()]


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def _main_container(job: str, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    limits: dict[str, str] = {"memory": memory}
    if gpus:
        limits[GPU] = str(gpus)
    plain = {
        "NCCL_DEBUG": "WARN",
        "NCCL_IB_DISABLE": "0",
        "OMP_NUM_THREADS": "8",
        "PYTHONUNBUFFERED": "1",
        "HF_HOME": "/cache/huggingface",
        "WANDB_PROJECT": job,
        "MASTER_PORT": "29500",
    }
    env = [*_env(plain), _field_env("POD_NAME", "metadata.name"), _field_env("POD_IP", "status.podIP")]
    return {
        "name": "trainer",
        "image": "registry.example.com/ml/trainer:2025.11.3-cuda12.4",
        "command": ["torchrun"],
        "args": ["--nproc-per-node", str(max(gpus, 1)), "train.py", "--config", "/etc/job/config.yaml"],
        "ports": [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
        "env": env,
        "resources": {"limits": limits, "requests": {"cpu": cpu, "memory": memory, **limits}},
        "volumeMounts": [
            {"name": "config", "readOnly": True, "mountPath": "/etc/job"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "datasets", "readOnly": True, "mountPath": "/data"},
            {
                "name": "kube-api-access-7q2xk",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            },
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def _sidecar_container() -> dict[str, Any]:
    return {
        "name": "log-shipper",
        "image": "registry.example.com/infra/fluent-bit:3.1.9",
        "args": ["--config=/fluent-bit/etc/fluent-bit.yaml"],
        "env": [_field_env("NODE_NAME", "spec.nodeName"), _field_env("POD_NAMESPACE", "metadata.namespace")],
        "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}},
        "volumeMounts": [
            {
                "name": "kube-api-access-7q2xk",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def _volumes(job: str) -> list[dict[str, Any]]:
    token = {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
    ca = {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
    namespace = {
        "downwardAPI": {
            "items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]
        }
    }
    return [
        {"name": "config", "configMap": {"name": f"{job}-config", "defaultMode": 420}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        {"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets-ro", "readOnly": True}},
        {
            "name": "kube-api-access-7q2xk",
            "projected": {"sources": [token, ca, namespace], "defaultMode": 420},
        },
    ]


def _affinity(job: str, gpus: int) -> dict[str, Any]:
    affinity: dict[str, Any] = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 50,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"batch.kubernetes.io/job-name": job}},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }
    if gpus:
        affinity["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "nvidia.com/gpu.product",
                                "operator": "In",
                                "values": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"],
                            }
                        ]
                    }
                ]
            }
        }
    return affinity


def make_pod(
    name: str,
    namespace: str = "ml-research",
    *,
    gpus: int = 1,
    cpu: str = "8",
    memory: str = "32Gi",
    seed: int = 0,
) -> dict[str, Any]:
    """A pending Job pod as an informer sees it: two containers, env, mounts, tolerations, affinity."""
    rng = random.Random(f"{seed}/{namespace}/{name}")
    job = name.rsplit("-", 1)[0]
    job_uid = _uid(rng)
    tolerations = [
        {
            "key": "node.kubernetes.io/not-ready",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300,
        },
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300,
        },
    ]
    if gpus:
        tolerations.append({"key": GPU, "operator": "Exists", "effect": "NoSchedule"})
    uid = _uid(rng)
    metadata = {
        "generateName": f"{job}-",
        "resourceVersion": str(rng.randrange(10**7, 10**9)),
        "creationTimestamp": _CREATED,
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": job,
                "uid": job_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "finalizers": ["batch.kubernetes.io/job-tracking"],
    }
    labels = {
        "app.kubernetes.io/name": "trainer",
        "app.kubernetes.io/instance": job,
        "app.kubernetes.io/part-of": "ml-platform",
        "app.kubernetes.io/managed-by": "kubeflow",
        "batch.kubernetes.io/controller-uid": job_uid,
        "batch.kubernetes.io/job-name": job,
        "controller-uid": job_uid,
        "job-name": job,
    }
    annotations = {
        "kubectl.kubernetes.io/default-container": "trainer",
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
        "batch.kubernetes.io/job-completion-index": "0",
    }
    spec = {
        "volumes": _volumes(job),
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "trainer",
        "serviceAccount": "trainer",
        "securityContext": {"fsGroup": 1000},
        "affinity": _affinity(job, gpus),
        "tolerations": tolerations,
        "priorityClassName": "batch-normal",
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    status = {
        "qosClass": "Burstable",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": "2025-11-27T14:03:12Z",
                "reason": "Unschedulable",
                "message": "0/7500 nodes are available: 7500 Insufficient nvidia.com/gpu. "
                "preemption: 0/7500 nodes are available: 7500 No preemption victims found.",
            }
        ],
    }
    containers = [_main_container(job, cpu, memory, gpus), _sidecar_container()]
    return objects.pod(name, containers, namespace=namespace, uid=uid, labels=labels, annotations=annotations,
                       priority=1000, phase="Pending", metadata=metadata, spec=spec, status=status,
                       type_meta=False)  # fmt: skip


def cpu_quantity(millicores: int) -> str:
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def memory_quantity(num_bytes: int) -> str:
    return f"{num_bytes // 1024}Ki" if num_bytes % 1024 == 0 else str(num_bytes)


def _resource_list(amounts: dict[str, int]) -> dict[str, str]:
    out = {
        "cpu": cpu_quantity(amounts["cpu"]),
        "ephemeral-storage": "471782702Ki",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": memory_quantity(amounts["memory"]),
        "pods": str(amounts["pods"]),
    }
    if amounts.get(GPU):
        out[GPU] = str(amounts[GPU])
    return out


def _images(rng: random.Random) -> list[dict[str, Any]]:
    repos = (
        "ml/trainer",
        "ml/inference-server",
        "infra/fluent-bit",
        "infra/node-exporter",
        "nvidia/dcgm-exporter",
        "nvidia/k8s-device-plugin",
        "kube-proxy",
        "calico/node",
        "pause",
        "data/spark-executor",
    )
    images = []
    for repo in repos:
        digest = "".join(rng.choices("0123456789abcdef", k=64))
        tag = f"v{rng.randrange(1, 4)}.{rng.randrange(0, 30)}.{rng.randrange(0, 10)}"
        images.append(
            {
                "names": [
                    f"registry.example.com/{repo}@sha256:{digest}",
                    f"registry.example.com/{repo}:{tag}",
                ],
                "sizeBytes": rng.randrange(700_000, 9_000_000_000),
            }
        )
    return images


def _conditions() -> list[dict[str, Any]]:
    rows = (
        ("NetworkUnavailable", "False", "CalicoIsUp", "Calico is running on this node"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    )
    return [
        {
            "type": kind,
            "status": status,
            "lastHeartbeatTime": "2025-11-28T08:59:41Z",
            "lastTransitionTime": "2025-10-02T11:20:05Z",
            "reason": reason,
            "message": message,
        }
        for kind, status, reason, message in rows
    ]


def make_node(info: dict[str, Any], index: int) -> dict[str, Any]:
    """A realistic v1.Node (~5 KB) for one entry of /debug/nodes."""
    rng = random.Random(f"node/{info['name']}")
    name, zone = info["name"], f"us-east-1{'abc'[index % 3]}"
    alloc = info["allocatable"]
    capacity = {**alloc, "cpu": (alloc["cpu"] // 1000 + 1) * 1000, "memory": alloc["memory"] + 4 * 2**30}
    labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "p4d.24xlarge" if info.get("gpuModel") else "m6i.16xlarge",
        "topology.kubernetes.io/region": "us-east-1",
        "topology.kubernetes.io/zone": zone,
    }
    taints = []
    if info.get("gpuModel"):
        labels |= {"nvidia.com/cuda.driver.major": "550", "nvidia.com/gpu.present": "true"}
        taints.append({"key": GPU, "value": "present", "effect": "NoSchedule"})
    ip = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
    metadata = {
        "uid": _uid(rng),
        "resourceVersion": str(rng.randrange(10**7, 10**9)),
        "creationTimestamp": "2025-10-02T11:18:44Z",
    }
    annotations = {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "projectcalico.org/IPv4Address": f"{ip}/20",
        "csi.volume.kubernetes.io/nodeid": f'{{"ebs.csi.aws.com":"i-{rng.getrandbits(64):016x}"}}',
    }
    spec = {
        "podCIDR": f"100.{index % 256}.0.0/24",
        "podCIDRs": [f"100.{index % 256}.0.0/24"],
        "providerID": f"aws:///{zone}/i-{rng.getrandbits(64):016x}",
        **({"taints": taints} if taints else {}),
    }
    status = {
        "addresses": [
            {"type": "InternalIP", "address": ip},
            {"type": "Hostname", "address": name},
            {"type": "InternalDNS", "address": f"ip-{ip.replace('.', '-')}.ec2.internal"},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": f"{rng.getrandbits(128):032x}",
            "systemUUID": _uid(rng).upper(),
            "bootID": _uid(rng),
            "kernelVersion": "6.1.112-124.190.amzn2023.x86_64",
            "osImage": "Amazon Linux 2023.6.20241010",
            "containerRuntimeVersion": "containerd://1.7.22",
            "kubeletVersion": "v1.31.2-eks-94953ac",
            "kubeProxyVersion": "v1.31.2-eks-94953ac",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "images": _images(rng),
    }
    return objects.node(name, _resource_list(alloc), capacity=_resource_list(capacity),
                        pool=str(info.get("pool") or "default"), gpu_model=info.get("gpuModel"), labels=labels,
                        annotations=annotations, conditions=_conditions(), metadata=metadata, spec=spec,
                        status=status, type_meta=False)  # fmt: skip


def tiny_pod(name: str, uid: str) -> dict[str, Any]:
    """A pod that asks for almost nothing, so binds in a loop only use up pod slots.

    Kept minimal: it only seeds the server's memory of pods (its filter is not measured), and a small
    body seeds faster than the binds consume.
    """
    pause = objects.container("pause", "registry.k8s.io/pause:3.10", {"requests": {"cpu": "10m", "memory": "16Mi"}})
    return objects.pod(name, [pause], namespace=BIND_NAMESPACE, uid=uid, labels={"app": "bench-bind"},
                       phase="Pending", type_meta=False)  # fmt: skip


def names_body(pod: dict[str, Any], names: Sequence[str]) -> bytes:
    """ExtenderArgs as kube-scheduler marshals it with nodeCacheCapable: true."""
    return orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": list(names)})


def nodelist_body(pod: dict[str, Any], nodes: Sequence[dict[str, Any]]) -> bytes:
    """ExtenderArgs with nodeCacheCapable: false: the full NodeList, `NodeNames` unset."""
    return orjson.dumps({"Pod": pod, "Nodes": {"metadata": {}, "items": list(nodes)}, "NodeNames": None})
