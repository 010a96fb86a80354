"""A seeded workload on the shape of the Alibaba 2023 GPU cluster trace (the "openb" trace of Weng et al.,
"Beware of Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX
ATC'23), built from its published statistics only: no trace file is read, so nothing is tuned to one.

Nodes (`cluster`): 1,213 GPU nodes, 6,211 GPUs (the paper: 6,212), heterogeneous. The counts per node type
are fixed (the shape is the point); the seed only orders the nodes and names them:

    GPUs  model     nodes  cores  GiB    share of GPU nodes
    8     V100M32   234    96     768    584 in all (48 %, "about 45 %"; three 8-GPU types)
    8     V100M16   204    64     512
    8     G3        146    128    1024
    4     A10       170    64     256    14 %
    2     T4        240    96     384    400 in all (33 %, "about a third": T4 and P100)
    2     P100      160    64     256
    1     P100      59     64     256    5 %

so CPU and memory per GPU differ by type (8 to 48 cores per GPU). `cpu_nodes` adds CPU-only nodes (64
cores, 256 GiB); the default is none, as in the paper's GPU cluster.

Pods (`pod_pool`): ~8,150 pods; 13.3 % CPU-only, 37.8 % a fraction of one GPU (gpu_milli < 1000),
48 % exactly one GPU, 0.9 % 2, 4 or 8 GPUs (`variant="multi-gpu-heavy"`: 11 %, taken from the 1-GPU
share). A third of GPU pods constrain the GPU model (mostly one model, some two), only to models whose
nodes can hold them. CPU and memory are drawn per GPU from wide, discrete menus (discrete as in the trace,
where a few shapes repeat), with some 8-GPU pods at 120 cores.

Arrivals (`arrivals`): the paper's method: shuffle the pods and let them arrive until the GPUs requested
reach a share of the cluster's GPUs (fractions count as fractions); past one pass over the pool, a new
shuffled copy follows (the paper's workload inflation). Pods never depart.

`node_dict` and `pod_dict` give the Kubernetes objects (via `scheduler.demo.make_node` / `make_pod`) that
Berth's real code path parses.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from scheduler.demo import make_node, make_pod

MILLI = 1000
MAX_PODS = 110  # make_node's "pods" allocatable
NAMESPACE = "trace"  # of no team: Berth's quotas admit every pod, so only placement differs

# Models, in a fixed order: a pod's model constraint is a bit mask over this list. A trace file may name
# more; `model_id` appends them.
MODELS = ["V100M32", "V100M16", "G3", "A10", "T4", "P100"]
GPU_MEMORY_MIB = {"V100M32": 32768, "V100M16": 16384, "G3": 81920, "A10": 24576, "T4": 15360, "P100": 16384}


def model_id(model: str) -> int:
    if model not in MODELS:
        MODELS.append(model)
    return MODELS.index(model)


@dataclass(frozen=True, slots=True)
class NodeType:
    gpus: int
    model: str | None
    nodes: int
    cpu: int  # cores
    mem_gi: int
    islands: tuple[tuple[int, ...], ...] | None = None  # NVLink islands, for Berth's topology score


NODE_TYPES: tuple[NodeType, ...] = (
    NodeType(8, "V100M32", 234, 96, 768, ((0, 1, 2, 3), (4, 5, 6, 7))),  # hybrid cube mesh, as two islands
    NodeType(8, "V100M16", 204, 64, 512, ((0, 1, 2, 3), (4, 5, 6, 7))),
    NodeType(8, "G3", 146, 128, 1024, (tuple(range(8)),)),  # NVSwitch
    NodeType(4, "A10", 170, 64, 256),
    NodeType(2, "T4", 240, 96, 384),
    NodeType(2, "P100", 160, 64, 256),
    NodeType(1, "P100", 59, 64, 256),
)
CPU_NODE = NodeType(0, None, 0, 64, 256)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    index: int
    name: str
    gpus: int
    model: str | None
    cpu: int  # cores, nominal
    mem_gi: int
    islands: tuple[tuple[int, ...], ...] | None
    exact_cpu: int | None = None  # millicores, from a trace file: allocatable as given
    exact_mem: int | None = None  # MiB

    # Allocatable as make_node writes it (cores * 1000 - 500 m, GiB * 1024 - 2048 Mi) unless a trace file
    # gives it: the baselines' simulated cluster and Berth's ClusterState then hold the same capacities.
    @property
    def alloc_cpu(self) -> int:  # millicores
        return self.exact_cpu if self.exact_cpu is not None else self.cpu * 1000 - 500

    @property
    def alloc_mem(self) -> int:  # MiB
        return self.exact_mem if self.exact_mem is not None else self.mem_gi * 1024 - 2048

    @property
    def model_id(self) -> int:
        return model_id(self.model) if self.model else -1


@dataclass(frozen=True, slots=True)
class TracePod:
    index: int  # unique in an arrival stream
    name: str
    cpu: int  # millicores
    mem: int  # MiB
    gpus: int  # GPUs asked (1 for a fractional pod)
    gpu_milli: int  # per GPU: 1000 for whole GPUs, < 1000 for a fraction of one, 0 for CPU-only
    models: tuple[str, ...]  # acceptable GPU models; empty: any

    @property
    def fractional(self) -> bool:
        return 0 < self.gpu_milli < MILLI

    @property
    def gpu_request(self) -> float:
        """GPUs asked, fractions as fractions (the paper's allocation ratio counts them so)."""
        return self.gpus * self.gpu_milli / MILLI

    @property
    def model_mask(self) -> int:
        mask = 0
        for m in self.models:
            mask |= 1 << model_id(m)
        return mask

    def without_sharing(self) -> TracePod:
        """A fractional pod run as one whole GPU, as a scheduler without GPU sharing must."""
        return replace(self, gpu_milli=MILLI) if self.fractional else self


def cluster(
    seed: int, cpu_nodes: int = 0, types: tuple[NodeType, ...] = NODE_TYPES, scale: float = 1.0
) -> list[NodeSpec]:
    """The node mix, in a seeded order; `scale` < 1 keeps each type's share (for quick runs)."""
    rng = random.Random(seed)
    shapes: list[NodeType] = []
    for t in types:
        shapes += [t] * max(1, round(t.nodes * scale))
    shapes += [CPU_NODE] * cpu_nodes
    rng.shuffle(shapes)
    out = []
    for i, t in enumerate(shapes):
        kind = f"{t.gpus}x{t.model}".lower() if t.model else "cpu"
        out.append(NodeSpec(i, f"node-{i:04d}-{kind}", t.gpus, t.model, t.cpu, t.mem_gi, t.islands))
    return out


# --------------------------------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------------------------------

# (GPUs, gpu_milli marker, share); gpu_milli -1: a fraction, drawn from FRACTIONS.
MIXES: dict[str, tuple[tuple[int, int, float], ...]] = {
    "default": (
        (0, 0, 0.133),
        (1, -1, 0.378),
        (1, MILLI, 0.480),
        (2, MILLI, 0.004),
        (4, MILLI, 0.003),
        (8, MILLI, 0.002),
    ),
    "multi-gpu-heavy": (
        (0, 0, 0.133),
        (1, -1, 0.378),
        (1, MILLI, 0.379),
        (2, MILLI, 0.045),
        (4, MILLI, 0.035),
        (8, MILLI, 0.030),
    ),
}
VARIANTS = tuple(MIXES)
FRACTIONS = (
    (50, 0.04),
    (100, 0.08),
    (200, 0.10),
    (250, 0.10),
    (300, 0.08),
    (400, 0.06),
    (500, 0.30),
    (600, 0.06),
    (700, 0.06),
    (800, 0.06),
    (900, 0.06),
)
CONSTRAINED = 1 / 3  # of GPU pods
# Weights of the model a constrained pod names (inference on T4 is the common case in the trace).
MODEL_WEIGHTS = {"T4": 0.40, "V100M32": 0.18, "V100M16": 0.15, "G3": 0.10, "A10": 0.10, "P100": 0.07}
PAIRS = (("V100M16", "V100M32"), ("T4", "P100"), ("A10", "T4"))  # two-model constraints, 10 % of constrained
CPU_ONLY_CORES = ((1, 0.20), (2, 0.25), (4, 0.25), (8, 0.15), (16, 0.10), (32, 0.05))
FRACTION_CORES = ((1, 0.15), (2, 0.25), (4, 0.30), (6, 0.10), (8, 0.12), (12, 0.05), (16, 0.03))
CORES_PER_GPU = ((2, 0.10), (4, 0.25), (6, 0.15), (8, 0.25), (12, 0.15), (16, 0.10))  # 1, 2 and 4 GPUs
CORES_PER_GPU_8 = ((4, 0.30), (8, 0.35), (12, 0.20), (15, 0.15))  # 8 GPUs: up to 120 cores
GI_PER_CORE = ((2, 0.30), (4, 0.40), (8, 0.25), (16, 0.05))


def _pick(rng: random.Random, menu: tuple[tuple[int, float], ...]) -> int:
    return rng.choices([v for v, _ in menu], [w for _, w in menu])[0]


def _models_for(rng: random.Random, gpus: int, types: tuple[NodeType, ...]) -> tuple[str, ...]:
    """A model constraint that some node type can satisfy for this many GPUs."""
    able = {t.model for t in types if t.model and t.gpus >= gpus}
    if rng.random() < 0.10:
        pairs = [p for p in PAIRS if any(m in able for m in p)]
        if pairs:
            return tuple(sorted(rng.choice(pairs), key=MODELS.index))
    names = [m for m in MODEL_WEIGHTS if m in able]
    return (rng.choices(names, [MODEL_WEIGHTS[m] for m in names])[0],)


def _fit_cap(gpus: int, models: tuple[str, ...], types: tuple[NodeType, ...]) -> tuple[int, int]:
    """The largest (millicores, MiB) some node that can take the pod has: a pod no node could ever hold
    would only measure the generator."""
    able = [t for t in types if t.gpus >= gpus and (not models or t.model in models)] if gpus else list(types)
    return (max(t.cpu * 1000 - 500 for t in able), max(t.mem_gi * 1024 - 2048 for t in able))


def pod_pool(
    seed: int, pods: int = 8150, variant: str = "default", types: tuple[NodeType, ...] = NODE_TYPES
) -> list[TracePod]:
    """`pods` pods drawn from the mix of `variant`."""
    rng = random.Random(seed * 7919 + 17)
    mix = MIXES[variant]
    out = []
    for i in range(pods):
        gpus, milli, _ = rng.choices(mix, [w for *_, w in mix])[0]
        if gpus == 0:
            cores = _pick(rng, CPU_ONLY_CORES)
        elif milli < 0:
            milli = _pick(rng, FRACTIONS)
            cores = _pick(rng, FRACTION_CORES)
        else:
            cores = gpus * _pick(rng, CORES_PER_GPU_8 if gpus == 8 else CORES_PER_GPU)
        models = _models_for(rng, gpus, types) if gpus and rng.random() < CONSTRAINED else ()
        mem_gi = cores * _pick(rng, GI_PER_CORE)
        cap_cpu, cap_mem = _fit_cap(gpus, models, types)
        cpu, mem = min(cores * 1000, cap_cpu), min(mem_gi * 1024, cap_mem)
        out.append(TracePod(i, f"pod-{i:05d}", cpu, mem, gpus, milli, models))
    return out


@dataclass(frozen=True, slots=True)
class Stream:
    pods: list[TracePod]  # in arrival order
    cuts: dict[float, int]  # target share of cluster GPUs -> pods arrived when the requests reach it


def arrivals(pool: list[TracePod], cluster_gpus: int, targets: tuple[float, ...], seed: int) -> Stream:
    """Shuffle, then arrive until the GPUs requested reach each target share of `cluster_gpus`.
    A target past the pool's total draws further shuffled copies (names stay unique)."""
    rng = random.Random(seed * 104729 + 3)
    goal = max(targets) * cluster_gpus
    out: list[TracePod] = []
    cuts: dict[float, int] = {}
    asked = 0.0
    rounds = 0
    pending = sorted(targets)
    while pending:
        order = list(pool)
        rng.shuffle(order)
        for pod in order:
            out.append(replace(pod, index=len(out), name=f"{pod.name}-{rounds}" if rounds else pod.name))
            asked += pod.gpu_request
            while pending and asked >= pending[0] * cluster_gpus:
                cuts[pending.pop(0)] = len(out)
            if asked >= goal and not pending:
                break
        rounds += 1
        if rounds > 100 and not any(p.gpu_request for p in pool):
            raise ValueError("the pool asks for no GPUs")
    return Stream(out, cuts)


def mix_shares(pods: list[TracePod]) -> dict[str, float]:
    """Shares of the pod classes the trace's statistics name."""
    n = len(pods) or 1
    gpu = [p for p in pods if p.gpus]
    return {
        "cpu_only": sum(1 for p in pods if not p.gpus) / n,
        "fractional": sum(1 for p in pods if p.fractional) / n,
        "one_gpu": sum(1 for p in pods if p.gpus == 1 and p.gpu_milli == MILLI) / n,
        "multi_gpu": sum(1 for p in pods if p.gpus > 1) / n,
        "model_constrained_of_gpu_pods": sum(1 for p in gpu if p.models) / (len(gpu) or 1),
    }


# --------------------------------------------------------------------------------------------------
# A trace file instead of the generator
# --------------------------------------------------------------------------------------------------


def _int(text: str | None) -> int:
    """A CSV number as an integer: "8000", "8000.0" and an empty cell (0) alike."""
    return int(float(text)) if text and text.strip() else 0


def load_openb(nodes_csv: Path, pods_csv: Path, seed: int) -> tuple[list[NodeSpec], list[TracePod]]:
    """The Alibaba "openb" CSVs (nodes: sn, cpu_milli, memory_mib, gpu, model; pods: name, cpu_milli,
    memory_mib, num_gpu, gpu_milli (per GPU), gpu_spec (models joined by '|')), nodes in a seeded order."""
    with nodes_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)
    nodes = []
    for i, r in enumerate(rows):
        gpus, model = _int(r["gpu"]), (r.get("model") or "").strip() or None
        cpu, mem = _int(r["cpu_milli"]), _int(r["memory_mib"])
        nodes.append(
            NodeSpec(
                i,
                f"node-{i:04d}-{(r.get('sn') or '').lower()[:20] or 'x'}",
                gpus if model else 0,
                model if gpus else None,
                -(-cpu // 1000),
                -(-mem // 1024),
                None,
                cpu,
                mem,
            )
        )
    with pods_csv.open(newline="") as f:
        pods = []
        for i, r in enumerate(csv.DictReader(f)):
            gpus = _int(r["num_gpu"])
            milli = min(_int(r["gpu_milli"]), MILLI) if gpus else 0
            milli = milli if milli > 0 or not gpus else MILLI  # GPUs asked with no share given: whole ones
            models = tuple(sorted({m for m in (r.get("gpu_spec") or "").split("|") if m}, key=model_id))
            pods.append(
                TracePod(
                    i,
                    f"pod-{i:05d}",
                    _int(r["cpu_milli"]),
                    _int(r["memory_mib"]),
                    gpus,
                    milli if gpus == 1 else MILLI if gpus else 0,
                    models if gpus else (),
                )
            )
    return nodes, pods


# --------------------------------------------------------------------------------------------------
# Kubernetes objects for Berth
# --------------------------------------------------------------------------------------------------


def node_dict(node: NodeSpec) -> dict[str, Any]:
    """The Node object. make_node only knows the demo's GPU models (it looks up their memory), so the node
    is made without GPUs and given them here with the same fields make_node writes."""
    out = make_node(node.name, "trace", node.cpu, node.mem_gi, 0, None, None, None, "", "zone-1")
    status, labels = out["status"], out["metadata"]["labels"]
    for key in ("capacity", "allocatable"):
        status[key].update({"cpu": f"{node.alloc_cpu}m", "memory": f"{node.alloc_mem}Mi"})
    if node.gpus and node.model:
        for key in ("capacity", "allocatable"):
            status[key]["nvidia.com/gpu"] = str(node.gpus)
        labels.update(
            {
                "nvidia.com/gpu.product": node.model,
                "nvidia.com/gpu.count": str(node.gpus),
                "nvidia.com/gpu.memory": str(GPU_MEMORY_MIB.get(node.model, 16384)),
                "nvidia.com/mig.strategy": "none",
            }
        )
        if node.islands:
            links = "nvswitch" if len(node.islands) == 1 else "nvlink"
            out["metadata"]["annotations"]["berth.dev/gpu-topology"] = orjson.dumps(
                {"islands": [list(i) for i in node.islands], "links": links}
            ).decode()
    return out


def pod_dict(pod: TracePod) -> dict[str, Any]:
    """The Pod object Berth sees. Berth has no GPU sharing: a fractional pod asks for one whole GPU."""
    annotations = {"berth.dev/gpu-models": ",".join(pod.models)} if pod.models else None
    return make_pod(NAMESPACE, pod.name, None, f"{pod.cpu}m", f"{pod.mem}Mi", pod.gpus, annotations)
