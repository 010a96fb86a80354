"""`berth bench`: wire-level latency and throughput of Berth against a typical Python extender.

Each server under test runs pinned to one core, wrk runs on another, and the request bodies are
shaped like kube-scheduler's: `json.Marshal(ExtenderArgs)` with a realistic few-KB Pod, Go's
Capitalized field names and `"Nodes":null` (nodeCacheCapable), or a full NodeList of realistic Nodes.

Servers: `berth` (native kernels), `berth-pure` (BERTH_NO_EXTENSIONS=1, the pure-Python twins) and
`typical` (loadtests/typical_extender.py mirroring a fresh Berth's demo cluster, or `--synthetic N`).

    python -m loadtests.bench                        # everything, ~5 minutes on 2 cores
    python -m loadtests.bench --quick                # smoke run: 500 nodes, 1 s per case
    python -m loadtests.bench --servers typical --synthetic 7500 --markdown bench.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
TYPICAL_SCRIPT = REPO / "loadtests" / "typical_extender.py"
SERVERS = ("berth", "berth-pure", "typical")
GPU = "nvidia.com/gpu"
BIND_NAMESPACE = "bench-binds"  # unteamed: the bench's binds must not touch any team's quota

# --------------------------------------------------------------------------------------------------
# Realistic Kubernetes objects (what an informer hands kube-scheduler: no managedFields, no TypeMeta)
# --------------------------------------------------------------------------------------------------

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
            "items": [
                {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
            ]
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
    metadata = {
        "name": name,
        "generateName": f"{job}-",
        "namespace": namespace,
        "uid": _uid(rng),
        "resourceVersion": str(rng.randrange(10**7, 10**9)),
        "creationTimestamp": _CREATED,
        "labels": {
            "app.kubernetes.io/name": "trainer",
            "app.kubernetes.io/instance": job,
            "app.kubernetes.io/part-of": "ml-platform",
            "app.kubernetes.io/managed-by": "kubeflow",
            "batch.kubernetes.io/controller-uid": job_uid,
            "batch.kubernetes.io/job-name": job,
            "controller-uid": job_uid,
            "job-name": job,
        },
        "annotations": {
            "kubectl.kubernetes.io/default-container": "trainer",
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9090",
            "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
            "batch.kubernetes.io/job-completion-index": "0",
        },
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
    spec = {
        "volumes": _volumes(job),
        "containers": [_main_container(job, cpu, memory, gpus), _sidecar_container()],
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "trainer",
        "serviceAccount": "trainer",
        "securityContext": {"fsGroup": 1000},
        "affinity": _affinity(job, gpus),
        "schedulerName": "berth-scheduler",
        "tolerations": tolerations,
        "priorityClassName": "batch-normal",
        "priority": 1000,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    status = {
        "phase": "Pending",
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
    return {"metadata": metadata, "spec": spec, "status": status}


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
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "p4d.24xlarge" if info.get("gpuModel") else "m6i.16xlarge",
        "topology.kubernetes.io/region": "us-east-1",
        "topology.kubernetes.io/zone": zone,
        "berth.dev/pool": str(info.get("pool") or "default"),
    }
    taints = []
    if info.get("gpuModel"):
        labels |= {
            "nvidia.com/gpu.product": info["gpuModel"],
            "nvidia.com/gpu.count": str(alloc.get(GPU, 0)),
            "nvidia.com/cuda.driver.major": "550",
            "nvidia.com/gpu.present": "true",
        }
        taints.append({"key": GPU, "value": "present", "effect": "NoSchedule"})
    ip = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
    return {
        "metadata": {
            "name": name,
            "uid": _uid(rng),
            "resourceVersion": str(rng.randrange(10**7, 10**9)),
            "creationTimestamp": "2025-10-02T11:18:44Z",
            "labels": labels,
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "projectcalico.org/IPv4Address": f"{ip}/20",
                "csi.volume.kubernetes.io/nodeid": f'{{"ebs.csi.aws.com":"i-{rng.getrandbits(64):016x}"}}',
            },
        },
        "spec": {
            "podCIDR": f"100.{index % 256}.0.0/24",
            "podCIDRs": [f"100.{index % 256}.0.0/24"],
            "providerID": f"aws:///{zone}/i-{rng.getrandbits(64):016x}",
            **({"taints": taints} if taints else {}),
        },
        "status": {
            "capacity": _resource_list(capacity),
            "allocatable": _resource_list(alloc),
            "conditions": _conditions(),
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
        },
    }


def names_body(pod: dict[str, Any], names: Sequence[str]) -> bytes:
    """ExtenderArgs as kube-scheduler marshals it with nodeCacheCapable: true."""
    return orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": list(names)})


def nodelist_body(pod: dict[str, Any], nodes: Sequence[dict[str, Any]]) -> bytes:
    """ExtenderArgs with nodeCacheCapable: false: the full NodeList, `NodeNames` unset."""
    return orjson.dumps({"Pod": pod, "Nodes": {"metadata": {}, "items": list(nodes)}, "NodeNames": None})


# --------------------------------------------------------------------------------------------------
# Cases and the wrk side
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    verb: str  # filter | prioritize | bind
    mode: str = "names"  # names | nodelist
    nodes: int = 0

    @property
    def label(self) -> str:
        if self.verb == "bind":
            return "bind"
        return f"{self.verb} {'NodeNames' if self.mode == 'names' else 'NodeList'} {self.nodes}"


@dataclass
class WrkResult:
    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    errors: int = 0  # non-2xx replies, socket errors and (bind) replies with a non-empty Error


@dataclass
class Measurement:
    server: str
    case: Case
    conns: int
    result: WrkResult | None
    note: str = ""


POST_LUA = """
-- POST one prepared ExtenderArgs body, as kube-scheduler's Go client would send it.
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept-Encoding"] = "gzip"
wrk.headers["User-Agent"] = "Go-http-client/1.1"
"""

# Binds need pods the server has seen: bind carries only names, so Berth learns a pod's request from
# filter (in demo mode an unseen pod is refused). A seed run files tiny pods through filter, each
# against the one node it will be bound to; the bind run then binds them in the same order.
_LUA_COMMON = """
local nodes = {{{nodes}}}
local threads = {{}}
local headers = {{["Content-Type"] = "application/json", ["User-Agent"] = "Go-http-client/1.1"}}
counter, ok, rejected, repeats = 0, 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  prefix, uid_prefix, limit = args[1], args[2], tonumber(args[3])
  -- wrk calls request() once to check the script before it sends anything: that call makes pod 0
  counter = -1
end

function node_of(i)
  return nodes[(i - 1) % #nodes + 1]
end

function total(name)
  local sum = 0
  for _, t in ipairs(threads) do sum = sum + t:get(name) end
  return sum
end
"""

SEED_LUA = (
    _LUA_COMMON
    + """
-- Filter pods 1..limit (then idle on /readyz): each becomes known to the server.
local template = [==[{template}]==]

function request()
  if counter >= limit then return wrk.format("GET", "/readyz") end
  counter = counter + 1
  local name = string.format("%s-%d", prefix, counter)
  local uid = string.format("%s%012d", uid_prefix, counter)
  local body = string.format(template, name, uid, node_of(counter))
  return wrk.format("POST", "/scheduler/filter", headers, body)
end

function response(status, hdrs, body)
  if status == 200 and string.find(body, "NodeNames", 1, true) then ok = ok + 1 end
end

function done(summary, latency, requests)
  io.write(string.format("SEED seeded=%d\\n", total("ok")))
end
"""
)

BIND_LUA = (
    _LUA_COMMON
    + """
-- Bind the seeded pods in order, each to its node; past `limit` start over (an idempotent re-bind).
function request()
  counter = counter + 1
  if counter > limit then repeats = repeats + 1 end
  local i = (counter - 1) % limit + 1
  local body = string.format(
    '{{"PodName":"%s-%d","PodNamespace":"{namespace}","PodUID":"%s%012d","Node":"%s"}}',
    prefix, i, uid_prefix, i, node_of(i))
  return wrk.format("POST", "/scheduler/bind", headers, body)
end

function response(status, hdrs, body)
  if status == 200 and string.find(body, '"Error"%s*:%s*""') then
    ok = ok + 1
  else
    rejected = rejected + 1
    first_rejection = first_rejection or (status .. " " .. string.sub(body, 1, 300))
  end
end

function done(summary, latency, requests)
  local line = "BIND ok=%d rejected=%d repeats=%d\\n"
  io.write(string.format(line, total("ok"), total("rejected"), total("repeats")))
  for _, t in ipairs(threads) do
    local first = t:get("first_rejection")
    if first then io.write("BIND first rejection: " .. string.gsub(first, "\\n", " ") .. "\\n") end
  end
end
"""
)
SEED_CAP = 45_000  # Berth remembers the last 50,000 pods seen in filter


_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Read p50/p99, requests/s and error counts from `wrk --latency` output."""
    percentiles = {
        p: _ms(n, u)
        for p, n, u in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    }
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in ", output, re.MULTILINE)
    if "50" not in percentiles or "99" not in percentiles or not rps or not total:
        raise ValueError(f"unexpected wrk output:\n{output}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sockets:
        errors += sum(int(g) for g in sockets.groups())
    rejected = re.search(r"^BIND ok=\d+ rejected=(\d+)", output, re.MULTILINE)
    if rejected:
        # A rejected bind is also a 200 reply: count it once, not twice.
        errors = max(errors, int(rejected.group(1)))
    return WrkResult(percentiles["50"], percentiles["99"], float(rps.group(1)), int(total.group(1)), errors)


@dataclass
class Pinning:
    server: list[str] = field(default_factory=list)  # argv prefix, e.g. ["taskset", "-c", "0"]
    client: list[str] = field(default_factory=list)


def make_pinning(server_cpu: int, client_cpu: int) -> tuple[Pinning, str]:
    cpus = os.sched_getaffinity(0)
    if not shutil.which("taskset") or len(cpus) < 2 or {server_cpu, client_cpu} - cpus:
        return Pinning(), "not pinned (needs taskset and two usable cores)"
    pin = Pinning(["taskset", "-c", str(server_cpu)], ["taskset", "-c", str(client_cpu)])
    return pin, f"server on core {server_cpu}, wrk on core {client_cpu} (taskset)"


def run_wrk(
    pin: Pinning, url: str, script: Path, conns: int, seconds: int, script_args: Sequence[str] = ()
) -> str:
    argv = [
        *pin.client,
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    if script_args:
        argv += ["--", *script_args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc.stdout


# --------------------------------------------------------------------------------------------------
# Servers under test
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, body: bytes | None = None, timeout: float = 30) -> Any:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return orjson.loads(reply.read())


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def running(argv: list[str], env: dict[str, str], port: int, workdir: Path, tag: str) -> Iterator[str]:
    """Start one server, wait for /readyz, yield its base URL, and stop it afterwards."""
    log = workdir / f"{tag}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def berth_argv(pin: Pinning, port: int, demo_nodes: int) -> list[str]:
    return [
        *pin.server,
        sys.executable,
        "-m",
        "scheduler",
        "serve",
        "--demo",
        "--demo-nodes",
        str(demo_nodes),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def server_env(pure: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BERTH_NO_EXTENSIONS", None)
    if pure:
        env["BERTH_NO_EXTENSIONS"] = "1"
    return env


@contextmanager
def start_server(name: str, args: argparse.Namespace, pin: Pinning, workdir: Path) -> Iterator[str]:
    port = free_port()
    if name in ("berth", "berth-pure"):
        with running(
            berth_argv(pin, port, args.demo_nodes), server_env(name == "berth-pure"), port, workdir, name
        ) as base:
            yield base
        return
    typical = [*pin.server, sys.executable, str(args.typical_script), "--port", str(port)]
    if args.synthetic:
        with running(
            [*typical, "--synthetic", str(args.synthetic)], server_env(False), port, workdir, name
        ) as base:
            yield base
        return
    # Mirror a fresh Berth's demo cluster, then stop that Berth so it takes no CPU during the run.
    mirror_port = free_port()
    with ExitStack() as stack:
        with running(
            berth_argv(pin, mirror_port, args.demo_nodes),
            server_env(False),
            mirror_port,
            workdir,
            "typical-mirror-source",
        ) as source:
            base = stack.enter_context(
                running([*typical, "--mirror", source], server_env(False), port, workdir, name)
            )
        yield base


# --------------------------------------------------------------------------------------------------
# One server's suite
# --------------------------------------------------------------------------------------------------


def plan_cases(quick: bool) -> list[Case]:
    sizes = (500,) if quick else (500, 5000, 7500)
    cases = [Case(verb, "names", n) for n in sizes for verb in ("filter", "prioritize")]
    if not quick:
        cases += [Case(verb, "nodelist", 500) for verb in ("filter", "prioritize")]
    return [*cases, Case("bind")]


def check_reply(case: Case, reply: Any, sent: int) -> str:
    """Validate one reply's shape before timing; returns a short note for the table."""
    if case.verb == "prioritize":
        if not isinstance(reply, list) or len(reply) != sent:
            raise ValueError(f"prioritize: expected a list of {sent}, got {str(reply)[:200]}")
        scores = [entry["Score"] for entry in reply]
        return f"scores {min(scores)}..{max(scores)}" if scores else ""
    if reply.get("Error"):
        raise ValueError(f"filter: Error {reply['Error']!r}")
    kept = len(reply["Nodes"]["items"]) if case.mode == "nodelist" else len(reply["NodeNames"] or [])
    return f"{kept}/{sent} fit"


@dataclass
class Bodies:
    """Request bodies written to files, keyed by (mode, node count)."""

    files: dict[tuple[str, int], Path]
    sizes: dict[tuple[str, int], int]


def build_bodies(
    node_infos: Sequence[dict[str, Any]],
    cases: Sequence[Case],
    workdir: Path,
    pod: dict[str, Any],
    seed: int,
) -> Bodies:
    order = list(node_infos)
    random.Random(seed).shuffle(order)  # same sample for every server: the names are the same
    files, sizes = {}, {}
    for case in cases:
        key = (case.mode, case.nodes)
        if case.verb == "bind" or key in files or case.nodes > len(order):
            continue
        chosen = order[: case.nodes]
        if case.mode == "names":
            body = names_body(pod, [info["name"] for info in chosen])
        else:
            body = nodelist_body(pod, [make_node(info, i) for i, info in enumerate(chosen)])
        files[key] = workdir / f"body-{case.mode}-{case.nodes}.json"
        files[key].write_bytes(body)
        sizes[key] = len(body)
    return Bodies(files, sizes)


def measure_post(
    base: str, case: Case, body: Path, args: argparse.Namespace, pin: Pinning
) -> list[Measurement]:
    url = f"{base}/scheduler/{case.verb}"
    sent = case.nodes
    try:
        note = check_reply(case, http_json(url, body.read_bytes()), sent)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return [Measurement("", case, conns, None, f"bad reply: {exc}") for conns in args.conns]
    script = body.with_suffix(".lua")
    script.write_text(POST_LUA.format(body=body))
    out = []
    for conns in args.conns:
        run_wrk(pin, url, script, conns, args.warmup)
        out.append(
            Measurement("", case, conns, parse_wrk(run_wrk(pin, url, script, conns, args.duration)), note)
        )
    return out


def free_pod_slots(base: str) -> int:
    return sum(info["free"]["pods"] for info in http_json(base + "/debug/nodes")["nodes"])


def tiny_pod(name: str, uid: str) -> dict[str, Any]:
    """A pod that asks for almost nothing, so binds in a loop only use up pod slots.

    Kept minimal: it only seeds the server's memory of pods (its filter is not measured), and a small
    body seeds faster than the binds consume.
    """
    container = {"name": "pause", "image": "registry.k8s.io/pause:3.10",
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}  # fmt: skip
    return {
        "metadata": {"name": name, "namespace": BIND_NAMESPACE, "uid": uid, "labels": {"app": "bench-bind"}},
        "spec": {"containers": [container], "schedulerName": "berth-scheduler"},
        "status": {"phase": "Pending"},
    }


def bind_pod_template() -> str:
    """A seed filter body (Lua format) with holes for the pod's name, its UID and its one node, in order."""
    body = names_body(tiny_pod("@NAME@", "@UID@"), ["@NODE@"]).decode().replace("%", "%%")
    assert body.index("@NAME@") < body.index("@UID@") < body.index("@NODE@")
    return body.replace("@NAME@", "%s").replace("@UID@", "%s").replace("@NODE@", "%s")


def bind_targets(base: str, names: Sequence[str]) -> list[str]:
    """The nodes that take the tiny bind pod, as the server itself judges it."""
    probe = tiny_pod("bench-bind-probe", str(uuid.uuid4()))
    return list(http_json(f"{base}/scheduler/filter", names_body(probe, names)).get("NodeNames") or [])


def _run_ids() -> tuple[str, str]:
    run_id = uuid.uuid4().hex
    return f"bench-{run_id[:10]}", f"{run_id[:8]}-{run_id[8:12]}-4{run_id[13:16]}-8{run_id[17:20]}-"


def bind_once(
    base: str, pin: Pinning, scripts: tuple[Path, Path], conns: int, seconds: int
) -> tuple[str, int]:
    """Seed fresh pods, then bind them for `seconds`; returns wrk's output of the bind run and the seed."""
    seed_script, bind_script = scripts
    prefix, uid_prefix = _run_ids()
    # Seeding is slower than binding (a filter parses a pod): give it longer, up to SEED_CAP pods.
    seed_args = [prefix, uid_prefix, str(SEED_CAP)]
    seed_out = run_wrk(pin, f"{base}/scheduler/filter", seed_script, 8, 2 * seconds + 1, seed_args)
    found = re.search(r"^SEED seeded=(\d+)", seed_out, re.MULTILINE)
    # The last request of each connection may still have been in flight when wrk stopped.
    seeded = max(int(found.group(1)) - 8, 1) if found else 1
    out = run_wrk(
        pin, f"{base}/scheduler/bind", bind_script, conns, seconds, [prefix, uid_prefix, str(seeded)]
    )
    return out, seeded


def measure_bind(
    base: str, names: Sequence[str], args: argparse.Namespace, pin: Pinning, workdir: Path
) -> list[Measurement]:
    targets = bind_targets(base, names)
    if not targets:
        return [Measurement("", Case("bind"), c, None, "no node takes the tiny bind pod") for c in args.conns]
    quoted = ",".join(f'"{name}"' for name in targets)
    scripts = (workdir / "seed.lua", workdir / "bind.lua")
    scripts[0].write_text(SEED_LUA.format(nodes=quoted, template=bind_pod_template()))
    scripts[1].write_text(BIND_LUA.format(nodes=quoted, namespace=BIND_NAMESPACE))
    out = []
    for conns in args.conns:
        free = free_pod_slots(base)
        bind_once(base, pin, scripts, conns, args.warmup)
        output, seeded = bind_once(base, pin, scripts, conns, args.duration)
        result = parse_wrk(output)
        repeats = re.search(r"^BIND .* repeats=(\d+)", output, re.MULTILINE)
        note = f"{len(targets)} nodes, {seeded:,} pods seeded, {free:,} pod slots free"
        if repeats and int(repeats.group(1)):
            note += f", {int(repeats.group(1)):,} re-binds"
        first = re.search(r"^BIND first rejection: (.*)$", output, re.MULTILINE)
        if first:
            note += f"; first rejection: {first.group(1)[:160]}"
        out.append(Measurement("", Case("bind"), conns, result, note))
    return out


def run_suite(name: str, args: argparse.Namespace, pin: Pinning, workdir: Path) -> list[Measurement]:
    cases = plan_cases(args.quick)
    results: list[Measurement] = []
    with start_server(name, args, pin, workdir) as base:
        infos = http_json(base + "/debug/nodes")["nodes"]
        bodies = build_bodies(infos, cases, workdir, make_pod(args.pod_name, gpus=args.pod_gpus), args.seed)
        for case in cases:
            print(f"  {name}: {case.label} ...", file=sys.stderr, flush=True)
            body = bodies.files.get((case.mode, case.nodes))
            if case.verb == "bind":
                found = measure_bind(base, [i["name"] for i in infos], args, pin, workdir)
            elif body is None:
                found = [
                    Measurement("", case, c, None, f"server has only {len(infos)} nodes") for c in args.conns
                ]
            else:
                found = measure_post(base, case, body, args, pin)
            for m in found:
                m.server = name
            results += found
    return results


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(
        [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    )


def server_table(measurements: Sequence[Measurement], markdown: bool) -> str:
    rows = []
    for m in measurements:
        r = m.result
        cells = [f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.rps:,.0f}", str(r.errors)] if r else ["-"] * 4
        rows.append([m.case.label, str(m.conns), *cells, m.note])
    return render(["case", "conns", "p50 ms", "p99 ms", "req/s", "errors", "note"], rows, markdown)


def ratio_table(base: str, others: Sequence[str], results: Sequence[Measurement], markdown: bool) -> str:
    """How many times better `base` is: latency other/base, throughput base/other."""
    index = {(m.server, m.case, m.conns): m.result for m in results}
    headers = ["case", "conns"]
    for other in others:
        headers += [f"p50 {other}/{base}", f"p99 {other}/{base}", f"req/s {base}/{other}"]
    rows = []
    for m in results:
        if m.server != base:
            continue
        row = [m.case.label, str(m.conns)]
        for other in others:
            mine, theirs = m.result, index.get((other, m.case, m.conns))
            if mine and theirs and mine.p50_ms and mine.p99_ms and theirs.rps:
                row += [
                    f"{theirs.p50_ms / mine.p50_ms:.1f}x",
                    f"{theirs.p99_ms / mine.p99_ms:.1f}x",
                    f"{mine.rps / theirs.rps:.1f}x",
                ]
            else:
                row += ["-"] * 3
        rows.append(row)
    return render(headers, rows, markdown)


def report(results: Sequence[Measurement], servers: Sequence[str], markdown: bool) -> str:
    heading = (lambda text: f"## {text}") if markdown else (lambda text: f"== {text} ==")
    parts = []
    for name in servers:
        parts += [heading(name), server_table([m for m in results if m.server == name], markdown)]
    base = next((s for s in ("berth", "berth-pure") if s in servers), None)
    others = [s for s in servers if s != base]
    if base and others:
        parts += [
            heading(f"ratios ({base} vs {', '.join(others)}; above 1x means {base} is better)"),
            ratio_table(base, others, results, markdown),
        ]
    return "\n\n".join(parts) + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    argv = list(sys.argv)
    head = (
        ["python", "-m", "loadtests.bench"] if argv and argv[0].endswith("bench.py") else [Path(argv[0]).name]
    )
    return shlex.join(head + argv[1:])


def environment_notes(
    args: argparse.Namespace, pinning_note: str, bodies: dict[str, int], load_before: float
) -> list[str]:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    wrk_version = wrk.split("[")[0].strip()
    # Anything else running on these 2 cores skews the numbers: say how busy the machine was.
    load = f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    return [
        f"date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"command: `{command_line()}`",
        f"nproc: {os.cpu_count()}; CPU: {cpu_model()}; Python {platform.python_version()}; {wrk_version}",
        f"pinning: {pinning_note}; wrk -t1, {args.warmup} s warm-up then {args.duration} s per case; {load}",
        "bodies: " + ", ".join(f"{k} {v / 1024:,.0f} KiB" for k, v in bodies.items()),
        f"pod: {args.pod_gpus} GPU(s) + 8 CPU + 32Gi, two containers; filter notes give how many nodes fit",
        f"bind: pods in the unteamed namespace {BIND_NAMESPACE} asking 10m CPU + 16Mi, each first seeded "
        "through filter against its one node (the server learns a pod's request from filter), then bound "
        "in order, round-robin over the nodes that take it. Binds in a loop use up pod slots: compare with "
        "the free slots noted; rejected binds count as errors; past the seeded pods, re-binds (idempotent) "
        "are noted.",
    ]


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, from {', '.join(SERVERS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: NodeNames of 500, 1 s per case")
    parser.add_argument("--duration", type=int, default=3, help="seconds per measured case (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each case (default 1)")
    parser.add_argument("--conns", default="1,8", help="connection counts (default 1,8)")
    parser.add_argument("--demo-nodes", type=int, default=7500, help="Berth demo cluster size (default 7500)")
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="typical extender generates N nodes instead of mirroring a Berth",
    )
    parser.add_argument("--typical-script", type=Path, default=TYPICAL_SCRIPT, help=argparse.SUPPRESS)
    parser.add_argument("--pod-gpus", type=int, default=1, help="GPUs the benchmark pod asks for (default 1)")
    parser.add_argument("--pod-name", default="llm-finetune-7b-x2k9q-0", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help="seed of the node sample")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown")


def normalise(args: argparse.Namespace) -> argparse.Namespace:
    args.servers = [s.strip() for s in str(args.servers).split(",") if s.strip()]
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(sorted(unknown))}")
    args.conns = [int(c) for c in str(args.conns).split(",")]
    if args.quick:
        args.duration, args.warmup = 1, 1
        # NodeNames of 500; a cluster of 2,000 keeps a few seconds of binds from using up its pod slots.
        args.demo_nodes = min(args.demo_nodes, 2000)
        args.synthetic = args.synthetic and min(args.synthetic, 2000)
    return args


def run(args: argparse.Namespace) -> int:
    args = normalise(args)
    if not shutil.which("wrk"):
        print("berth bench needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    if "typical" in args.servers and not args.typical_script.is_file():
        print(f"typical extender not found at {args.typical_script} (run from a checkout)", file=sys.stderr)
        return 2
    pin, pin_note = make_pinning(args.server_cpu, args.client_cpu)
    load_before = os.getloadavg()[0]
    results: list[Measurement] = []
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        workdir = Path(tmp)
        for name in args.servers:
            print(f"bench: {name}", file=sys.stderr, flush=True)
            try:
                results += run_suite(name, args, pin, workdir)
            except RuntimeError as exc:
                print(f"bench: {name} failed: {exc}", file=sys.stderr)
                return 1
        sizes = {p.stem.removeprefix("body-"): p.stat().st_size for p in sorted(workdir.glob("body-*.json"))}
    notes = environment_notes(args, pin_note, sizes, load_before)
    print(report(results, args.servers, markdown=False))
    print("\n".join(notes))
    if args.markdown:
        text = (
            "# berth bench\n\n"
            + "\n".join(f"- {n}" for n in notes)
            + "\n\n"
            + report(results, args.servers, True)
        )
        args.markdown.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berth bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
