"""The embedded demo cluster: deterministic (seeded) nodes, pods and TeamQuotas, fed through the same
`apply_*` paths the informers use, so `berth serve --demo` exercises the real parsers and ledgers.
Nodes and pods come from the one object factory, `scheduler.cluster.objects`."""

import random
from datetime import UTC, datetime
from typing import Any

from scheduler.cluster import objects
from scheduler.cluster.state import ClusterState
from scheduler.model.quantity import GPU

# (pool, share of nodes, cpu, memory Gi, gpus, model, islands)
SHAPES: list[tuple[str, float, int, int, int, str | None, list[list[int]] | None]] = [
    ("shared", 0.40, 32, 128, 0, None, None),
    ("a100", 0.20, 96, 1024, 8, "NVIDIA-A100-SXM4-80GB", [[0, 1, 2, 3, 4, 5, 6, 7]]),
    ("a100-pcie", 0.10, 64, 512, 8, "NVIDIA-A100-PCIE-40GB", [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ("h100", 0.15, 192, 2048, 8, "NVIDIA-H100-80GB-HBM3", [[0, 1, 2, 3, 4, 5, 6, 7]]),
    ("inference", 0.15, 48, 192, 8, "NVIDIA-L4", [[i] for i in range(8)]),
]
GPU_MEMORY = {
    "NVIDIA-A100-SXM4-80GB": 81920,
    "NVIDIA-A100-PCIE-40GB": 40960,
    "NVIDIA-H100-80GB-HBM3": 81559,
    "NVIDIA-L4": 23034,
}

TEAMS: list[dict[str, Any]] = [
    {"name": "ml-research", "pools": ["a100", "a100-pcie"], "cohort": "gpu-shared", "gpu": (0.8, 1.3)},
    {"name": "training", "pools": ["h100"], "cohort": "gpu-shared", "gpu": (0.9, 1.2)},
    {"name": "inference", "pools": ["inference"], "cohort": "gpu-shared", "gpu": (0.9, 1.1)},
    {"name": "data-eng", "pools": ["shared"], "cohort": None, "gpu": None},
]


def node_name(rng: random.Random, pool: str, i: int) -> str:
    """AKS-style node names: realistic length and shape for benchmarks."""
    return f"aks-{pool}-{rng.randrange(10**7, 10**8)}-vmss{i:06x}"


def make_node(
    name: str,
    pool: str,
    cpu: int,
    mem_gi: int,
    gpus: int,
    model: str | None,
    islands: list[list[int]] | None,
    load: float | None,
    now: str,
    zone: str,
) -> dict[str, Any]:
    """A demo node: allocatable a little under capacity's round numbers, GPU feature-discovery labels,
    Berth's topology annotation and (when `load` is set) a load reading taken at `now`."""
    labels = {
        "kubernetes.io/os": "linux",
        "topology.kubernetes.io/zone": zone,
        "node.kubernetes.io/instance-type": f"{pool}-standard",
    }
    annotations: dict[str, str] = {}
    alloc = {
        "cpu": f"{cpu * 1000 - 500}m",
        "memory": f"{mem_gi * 1024 - 2048}Mi",
        "pods": "110",
        "ephemeral-storage": "500Gi",
    }
    topology = None
    if gpus and model:
        alloc[GPU] = str(gpus)
        labels |= {"nvidia.com/gpu.memory": str(GPU_MEMORY[model]), "nvidia.com/mig.strategy": "none"}
        if islands:
            links = "nvswitch" if len(islands) == 1 else "nvlink" if len(islands[0]) > 1 else "pcie"
            topology = {"islands": islands, "links": links}
    if load is not None:
        annotations["berth.dev/load"] = f"{load:.2f}"
        annotations["berth.dev/load-time"] = now
    return objects.node(
        name,
        alloc,
        pool=pool,
        gpu_model=model if gpus else None,
        topology=topology,
        labels=labels,
        annotations=annotations,
        spec={},
    )


def make_pod(
    namespace: str,
    name: str,
    node: str | None,
    cpu: str,
    mem: str,
    gpus: int,
    annotations: dict[str, str] | None = None,
    priority: int = 0,
) -> dict[str, Any]:
    """A demo pod asking for berth-scheduler: Running on `node`, or Pending without one."""
    main = objects.container("main", "busybox", objects.resources(cpu, mem, gpus))
    return objects.pod(
        name,
        [main],
        namespace=namespace,
        node_name=node or None,
        priority=priority,
        uid=f"uid-{namespace}-{name}",
        annotations=annotations or {},
        phase="Running" if node else "Pending",
    )


def team_quota(name: str, pools: list[str], cohort: str | None, resources: dict[str, dict[str, str]]) -> dict[str, Any]:
    spec: dict[str, Any] = {"namespaces": [name], "pools": pools, "resources": resources}
    if cohort:
        spec["cohort"] = cohort
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TeamQuota",
        "metadata": {"name": name, "generation": 1},
        "spec": spec,
    }


def populate(state: ClusterState, nodes: int, seed: int) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    gpus_by_pool: dict[str, int] = {}
    placed: list[tuple[str, str, int]] = []
    for i in range(nodes):
        pool, _, cpu, mem, gpus, model, islands = _shape_for(i, nodes)
        name = node_name(rng, pool, i)
        load = round(rng.random(), 2) if rng.random() < 0.5 else None
        state.apply_node("ADDED", make_node(name, pool, cpu, mem, gpus, model, islands, load, now, f"zone-{i % 3 + 1}"))
        gpus_by_pool[pool] = gpus_by_pool.get(pool, 0) + gpus
        placed.append((name, pool, gpus))
    for team in TEAMS:
        state.apply_team("ADDED", _team(team, gpus_by_pool, nodes))
    _prebind(state, rng, placed)
    for kind in ("nodes", "pods", "teamquotas"):
        state.mark_synced(kind)
    state.watched = False  # generated once, never watched: its picture cannot go stale


def _shape_for(i: int, nodes: int) -> tuple[str, float, int, int, int, str | None, list[list[int]] | None]:
    """Shapes interleaved by share, so any prefix of the node list is a mixed cluster."""
    x = (i * 0.6180339887) % 1.0
    acc = 0.0
    for shape in SHAPES:
        acc += shape[1]
        if x < acc:
            return shape
    return SHAPES[-1]


def _team(team: dict[str, Any], gpus_by_pool: dict[str, int], nodes: int) -> dict[str, Any]:
    if team["gpu"] is None:
        cores = max(8, int(nodes * 0.4 * 31 * 0.9))
        resources = {"cpu": {"guaranteed": str(cores), "max": str(cores)}}
    else:
        own = sum(gpus_by_pool.get(p, 0) for p in team["pools"])
        g, m = team["gpu"]
        resources = {"nvidia.com/gpu": {"guaranteed": str(int(own * g)), "max": str(int(own * m))}}
    return team_quota(team["name"], team["pools"], team["cohort"], resources)


def _prebind(state: ClusterState, rng: random.Random, placed: list[tuple[str, str, int]]) -> None:
    """Some nodes already partly used, by pods of their pool's team."""
    owner = {p: t["name"] for t in TEAMS for p in t["pools"]}
    for n, (node, pool, gpus) in enumerate(placed):
        if rng.random() >= 0.35:
            continue
        ns = owner.get(pool, "default")
        take = rng.choice([1, 2, 4]) if gpus else 0
        pod = make_pod(ns, f"running-{n}", node, f"{rng.choice([1, 2, 4, 8])}", f"{rng.choice([4, 16, 32])}Gi", take)
        state.apply_pod("ADDED", pod)
