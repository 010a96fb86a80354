"""Placement policies for the trace benchmark, over one simple simulated cluster (`SimCluster`).

A policy sees each pod once, in arrival order, and answers a `Placement` (node, GPU indices) or None;
it never changes the cluster: the harness applies the placement (and checks it fits). Each policy is
built per run with the cluster, the sharing mode and a seeded `random.Random` for ties: kube-scheduler
picks at random among the nodes with the highest total score (`selectHost`), and so do these.

- `LeastAllocatedPolicy`: kube-scheduler's NodeResourcesFit with the LeastAllocated strategy, following
  upstream `pkg/scheduler/framework/plugins/noderesources/least_allocated.go` and `resource_allocation.go`:
  per resource `(allocatable - requested) * 100 // allocatable` in integers (0 when over), the weighted
  mean by integer division, weight 1 each for cpu, memory and the GPU resource; an extended resource
  counts only when the pod asks for it (`calculateResourceAllocatableRequest` returns 0, 0 otherwise) and
  only on nodes that have it. The GPU resource is nvidia.com/gpu (whole GPUs) without sharing and GPU milli
  (1000 a GPU) with it, as a GPU-sharing device plugin advertises.
- `BestFitPolicy`: the FGD paper's BestFit baseline, following hkust-adsl/kubernetes-scheduler-simulator
  `pkg/simulator/plugin/best_fit_score.go`: `(1 - (0.5 (cpu_free - cpu_req) / 128000 + 0.5 (gpu_milli_free -
  gpu_milli_req) / 8000)) * 100` truncated to an integer, then min-max normalised over the feasible nodes
  (`NormalizeScore` in `plugin_utils.go`, integer arithmetic).
- `FGDPolicy`: fragmentation gradient descent, following the same simulator's `fgd_score.go` and
  `pkg/utils/frag.go`: a node's fragmentation is the expected GPU milli that a pod drawn from the target
  workload (the "typical pods": the most frequent (cpu, gpu milli, GPUs, model) shapes covering 60 % of the
  GPU pods, `GetTypicalPods` defaults) cannot use there: all the node's free GPU milli when the pod cannot
  run on the node (model, GPUs or CPU), else only the GPUs with less free milli than the pod asks per GPU.
  The score is `int(sigmoid((frag_before - frag_after) / 1000) * 100)`; a fractional pod tries each GPU
  that fits and keeps the first with the best score; whole GPUs are the lowest-index idle ones
  (`AllocateExclusiveGpuId`). Like the simulator, fragmentation counts CPU and GPU, not memory.
- `RandomPolicy`: a feasible node at random.
- `BerthPolicy`: Berth's own code path: a `ClusterState` fed the Node objects through `apply_node`, then per
  pod `placement.judge`, `run_filter`, `run_score` (the kernels Berth serves with: native when built) and
  `Binder.reserve`, which picks the devices and holds the pod in Berth's ledger, as `Binder.bind` does with
  no API server. Ties among Berth's best scores are broken at random too. With sharing, the nodes are
  what a cluster running the NVIDIA device plugin's time-slicing advertises (`shared_node_dict`): 1000
  replicas per GPU (`nvidia.com/gpu.replicas: 1000`, `nvidia.com/gpu: GPUs x 1000`, the product label with
  `-SHARED`), so a replica is one milli of a GPU and the trace's asks map exactly (`shared_pod_dict`): a
  fraction of f milli asks f replicas, k whole GPUs ask 1000 k replicas; Berth books 1000 k replicas of a
  1000-replica GPU as k whole, exclusive GPUs, and f < 1000 replicas as f milli on one shared GPU.

Filter (all baselines): free cpu, memory and pod slots; the GPU model; GPUs: `gpus` GPUs with at least
`gpu_milli` free each (whole GPUs: idle ones). A fractional pod on a non-FGD baseline takes the fitting GPU
with the least free milli (lowest index among equals), as the simulator's `NodeResource.Sub` packs.

To try a new policy: subclass `Policy`, implement `place`, add it to `POLICIES` (or pass it to
`loadtests.trace_bench.run`).
"""

from __future__ import annotations

import random
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from loadtests.trace_workload import MAX_PODS, MILLI, NodeSpec, TracePod, node_dict, pod_dict

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
MAX_GPUS = 8
MAX_SCORE = 100
BESTFIT_MAX_CPU = 128_000  # MaxSpecCpu (milli) of the simulator's open-gpu-share utils
BESTFIT_MAX_GPU = 8_000  # MaxSpecGpu (milli)


@dataclass(frozen=True, slots=True)
class Ask:
    """What a scheduler sees of a pod in one mode: without sharing a fraction is one whole GPU."""

    pod: TracePod
    cpu: int
    mem: int
    gpus: int
    milli: int  # per GPU; 0 for CPU-only
    model_mask: int

    @staticmethod
    def of(pod: TracePod, sharing: bool) -> Ask:
        p = pod if sharing else pod.without_sharing()
        return Ask(pod, p.cpu, p.mem, p.gpus, p.gpu_milli, p.model_mask)


@dataclass(frozen=True, slots=True)
class Placement:
    node: int
    gpu_ids: tuple[int, ...]  # one per GPU asked; a fractional pod's one GPU


class SimCluster:
    """Free resources per node, as numpy arrays (index = NodeSpec.index)."""

    def __init__(self, nodes: list[NodeSpec]) -> None:
        self.nodes = nodes
        n = len(nodes)
        self.alloc_cpu = np.array([x.alloc_cpu for x in nodes], dtype=np.int64)
        self.alloc_mem = np.array([x.alloc_mem for x in nodes], dtype=np.int64)
        self.ngpu = np.array([x.gpus for x in nodes], dtype=np.int64)
        self.model = np.array([x.model_id for x in nodes], dtype=np.int64)
        self.cpu = self.alloc_cpu.copy()  # free
        self.mem = self.alloc_mem.copy()
        self.pods = np.zeros(n, dtype=np.int64)
        # Free milli per GPU; slots past a node's GPUs hold 0 and so never fit anything.
        self.gpu = np.zeros((n, MAX_GPUS), dtype=np.int64)
        for x in nodes:
            self.gpu[x.index, : x.gpus] = MILLI
        self.total_gpus = int(self.ngpu.sum())

    def feasible(self, ask: Ask) -> BoolArray:
        ok = (self.cpu >= ask.cpu) & (self.mem >= ask.mem) & (self.pods < MAX_PODS)
        if ask.gpus:
            ok &= (self.gpu >= ask.milli).sum(axis=1) >= ask.gpus
            if ask.model_mask:
                ok &= (self.model >= 0) & (((ask.model_mask >> np.maximum(self.model, 0)) & 1) == 1)
        return ok

    def fits(self, ask: Ask, p: Placement) -> bool:
        s = p.node
        if self.cpu[s] < ask.cpu or self.mem[s] < ask.mem or self.pods[s] >= MAX_PODS:
            return False
        if len(p.gpu_ids) != ask.gpus or len(set(p.gpu_ids)) != ask.gpus:
            return False
        if ask.model_mask and (self.model[s] < 0 or not ask.model_mask >> int(self.model[s]) & 1):
            return False
        return all(0 <= g < self.ngpu[s] and self.gpu[s, g] >= ask.milli for g in p.gpu_ids)

    def apply(self, ask: Ask, p: Placement) -> None:
        if not self.fits(ask, p):
            raise AssertionError(f"placement {p} of {ask.pod.name} over-commits node {self.nodes[p.node].name}")
        s = p.node
        self.cpu[s] -= ask.cpu
        self.mem[s] -= ask.mem
        self.pods[s] += 1
        for g in p.gpu_ids:
            self.gpu[s, g] -= ask.milli

    def idle_gpus(self, s: int) -> list[int]:
        return [g for g in range(int(self.ngpu[s])) if self.gpu[s, g] == MILLI]

    def used_milli(self) -> int:
        return self.total_gpus * MILLI - int(self.gpu.sum())


def pick_best(rng: random.Random, candidates: IntArray, scores: IntArray) -> int:
    """A node at random among the best-scoring (kube-scheduler's selectHost)."""
    top = candidates[scores == scores.max()]
    return int(top[rng.randrange(len(top))]) if len(top) > 1 else int(top[0])


class Policy:
    name: ClassVar[str] = ""
    supports_sharing: ClassVar[bool] = True

    def __init__(
        self, cluster: SimCluster, sharing: bool, rng: random.Random, workload: list[TracePod] | None = None
    ) -> None:
        self.c = cluster
        self.sharing = sharing
        self.rng = rng

    def place(self, ask: Ask) -> Placement | None:
        raise NotImplementedError

    def devices(self, s: int, ask: Ask) -> tuple[int, ...]:
        """Whole GPUs: the lowest-index idle ones. A fraction: the fitting GPU with the least free milli."""
        if not ask.gpus:
            return ()
        if ask.milli >= MILLI:
            return tuple(self.c.idle_gpus(s)[: ask.gpus])
        row = self.c.gpu[s]
        fit = [g for g in range(int(self.c.ngpu[s])) if row[g] >= ask.milli]
        return (min(fit, key=lambda g: (row[g], g)),)


class RandomPolicy(Policy):
    name = "random"

    def place(self, ask: Ask) -> Placement | None:
        ok = np.flatnonzero(self.c.feasible(ask))
        if not len(ok):
            return None
        s = int(ok[self.rng.randrange(len(ok))])
        return Placement(s, self.devices(s, ask))


def least_allocated_score(alloc: list[int], requested: list[int]) -> int:
    """least_allocated.go's leastResourceScorer, weight 1 each: resources the node lacks are left out."""
    score = weights = 0
    for a, r in zip(alloc, requested, strict=True):
        if a == 0:
            continue
        score += (a - r) * MAX_SCORE // a if r <= a else 0
        weights += 1
    return score // weights if weights else 0


class ScoredPolicy(Policy):
    """A policy that scores every feasible node (`scores`) and takes the best, ties at random."""

    def scores(self, ask: Ask) -> tuple[IntArray, IntArray]:
        raise NotImplementedError

    def place(self, ask: Ask) -> Placement | None:
        ok, score = self.scores(ask)
        if not len(ok):
            return None
        s = pick_best(self.rng, ok, score)
        return Placement(s, self.devices(s, ask))


class LeastAllocatedPolicy(ScoredPolicy):
    name = "least-allocated"

    def scores(self, ask: Ask) -> tuple[IntArray, IntArray]:
        """The feasible nodes and their scores."""
        c = self.c
        ok = np.flatnonzero(c.feasible(ask))
        score = self._part(c.alloc_cpu[ok], c.alloc_cpu[ok] - c.cpu[ok] + ask.cpu)
        score += self._part(c.alloc_mem[ok], c.alloc_mem[ok] - c.mem[ok] + ask.mem)
        weights = 2
        if ask.gpus:  # an extended resource counts only when the pod asks for it
            if self.sharing:
                alloc = c.ngpu[ok] * MILLI
                used = alloc - c.gpu[ok].sum(axis=1)
                score += self._part(alloc, used + ask.gpus * ask.milli)
            else:
                alloc = c.ngpu[ok]
                score += self._part(alloc, alloc - (c.gpu[ok] == MILLI).sum(axis=1) + ask.gpus)
            weights = 3  # feasible nodes for a GPU pod have GPUs, so the resource is never left out
        return ok, score // weights

    @staticmethod
    def _part(alloc: IntArray, requested: IntArray) -> IntArray:
        safe = np.maximum(alloc, 1)
        return np.where(requested <= alloc, (alloc - requested) * MAX_SCORE // safe, 0)


class BestFitPolicy(ScoredPolicy):
    name = "best-fit"

    def scores(self, ask: Ask) -> tuple[IntArray, IntArray]:
        """The feasible nodes and their normalised scores."""
        c = self.c
        ok = np.flatnonzero(c.feasible(ask))
        if not len(ok):
            return ok, ok
        free_gpu = c.gpu[ok].sum(axis=1)
        waste = (
            0.5 * (c.cpu[ok] - ask.cpu) / BESTFIT_MAX_CPU + 0.5 * (free_gpu - ask.gpus * ask.milli) / BESTFIT_MAX_GPU
        )
        raw = ((1.0 - waste) * MAX_SCORE).astype(np.int64)  # Go's int64() truncates toward zero
        return ok, normalize(raw)


def normalize(scores: IntArray) -> IntArray:
    """plugin_utils.go NormalizeScore: min-max onto 0..100 in integers; all equal -> all 0."""
    lo, hi = int(scores.min()), int(scores.max())
    if hi == lo:
        return np.zeros_like(scores)
    return (scores - lo) * MAX_SCORE // (hi - lo)


# --------------------------------------------------------------------------------------------------
# FGD
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypicalPods:
    cpu: IntArray
    milli: IntArray  # per GPU
    gpus: IntArray
    mask: IntArray  # model mask, 0: any
    freq: npt.NDArray[np.float64]
    levels: IntArray  # distinct milli values
    level_of: IntArray  # index into levels per typical pod


def typical_pods(workload: list[TracePod], sharing: bool, popularity: float = 0.60, step: int = 10) -> TypicalPods:
    """frag.go GetTypicalPods (CPU-only pods left out, no GPU weighting): the most frequent shapes, added
    `step` at a time until they cover `popularity` of the GPU pods, frequencies renormalised."""
    shapes: Counter[tuple[int, int, int, int]] = Counter()
    for pod in workload:
        p = pod if sharing else pod.without_sharing()
        if p.gpus:
            shapes[(p.cpu, p.gpu_milli, p.gpus, p.model_mask)] += 1
    total = sum(shapes.values())
    # Decreasing count; equal counts in a fixed order (the simulator sorts by its PodResource.Less).
    ordered = sorted(shapes.items(), key=lambda kv: (-kv[1], kv[0]))
    chosen: list[tuple[tuple[int, int, int, int], int]] = []
    covered = 0
    while covered < popularity * total and len(chosen) < len(ordered):
        for item in ordered[len(chosen) : len(chosen) + step]:
            chosen.append(item)
            covered += item[1]
    keys = [k for k, _ in chosen]
    freq = np.array([n for _, n in chosen], dtype=np.float64)
    milli = np.array([k[1] for k in keys], dtype=np.int64)
    levels = np.unique(milli)
    return TypicalPods(
        np.array([k[0] for k in keys], dtype=np.int64),
        milli,
        np.array([k[2] for k in keys], dtype=np.int64),
        np.array([k[3] for k in keys], dtype=np.int64),
        freq / freq.sum(),
        levels,
        np.searchsorted(levels, milli).astype(np.int64),
    )


def fragmentation(t: TypicalPods, cpu: IntArray, gpu: IntArray, model: IntArray) -> npt.NDArray[np.float64]:
    """frag.go NodeGpuShareFragAmountScore for K node states at once (cpu[K], gpu[K, 8], model[K])."""
    total = gpu.sum(axis=1)
    # Per distinct per-GPU ask: how many GPUs have that much free, and the free milli on the others.
    enough = gpu[:, None, :] >= t.levels[None, :, None]  # K x L x 8
    count = enough.sum(axis=2)[:, t.level_of]  # K x T
    short = np.where(enough, 0, gpu[:, None, :]).sum(axis=2)[:, t.level_of]
    access = (t.mask[None, :] == 0) | (
        (model[:, None] >= 0) & (((t.mask[None, :] >> np.maximum(model, 0)[:, None]) & 1) == 1)
    )
    satisfied = access & (count >= t.gpus[None, :]) & (cpu[:, None] >= t.cpu[None, :])  # Q3
    per = np.where(satisfied, short, total[:, None])
    out: npt.NDArray[np.float64] = per @ t.freq
    return out


def fgd_score(before: npt.NDArray[np.float64], after: npt.NDArray[np.float64]) -> IntArray:
    """fgd_score.go: int64(sigmoid((before - after) / 1000) * MaxNodeScore)."""
    x = (before - after) / 1000.0
    return (MAX_SCORE / (1.0 + np.exp(-x))).astype(np.int64)


class FGDPolicy(Policy):
    name = "fgd"

    def __init__(
        self, cluster: SimCluster, sharing: bool, rng: random.Random, workload: list[TracePod] | None = None
    ) -> None:
        super().__init__(cluster, sharing, rng)
        if not workload:
            raise ValueError("FGD needs the target workload (its typical pods)")
        self.t = typical_pods(workload, sharing)
        c = cluster
        self.frag = fragmentation(self.t, c.cpu, c.gpu, c.model)  # per node, kept current by _refresh
        self._cpu, self._gpu = c.cpu.copy(), c.gpu.copy()

    def _refresh(self) -> None:
        """Recompute the nodes the harness changed since the last call (a policy never changes them)."""
        c = self.c
        changed = np.flatnonzero((self._cpu != c.cpu) | (self._gpu != c.gpu).any(axis=1))
        if len(changed):
            self.frag[changed] = fragmentation(self.t, c.cpu[changed], c.gpu[changed], c.model[changed])
            self._cpu[changed], self._gpu[changed] = c.cpu[changed], c.gpu[changed]

    def place(self, ask: Ask) -> Placement | None:
        self._refresh()
        c = self.c
        ok = np.flatnonzero(c.feasible(ask))
        if not len(ok):
            return None
        cpu_after = c.cpu[ok] - ask.cpu
        gpu = c.gpu[ok]
        before = self.frag[ok]
        if ask.gpus and ask.milli < MILLI:  # a fraction: each GPU that fits is a candidate
            best = np.full(len(ok), -1, dtype=np.int64)
            where = np.zeros(len(ok), dtype=np.int64)
            for g in range(MAX_GPUS):
                can = gpu[:, g] >= ask.milli
                if not can.any():
                    continue
                trial = gpu[can].copy()
                trial[:, g] -= ask.milli
                score = fgd_score(before[can], fragmentation(self.t, cpu_after[can], trial, c.model[ok][can]))
                better = score > best[can]  # strictly: the first GPU among equal scores stays
                idx = np.flatnonzero(can)[better]
                best[idx] = score[better]
                where[idx] = g
            s = pick_best(self.rng, ok, best)
            return Placement(s, (int(where[np.searchsorted(ok, s)]),))
        after_gpu = gpu
        if ask.gpus:  # whole GPUs: the lowest-index idle ones go
            idle = gpu == MILLI
            take = idle & (np.cumsum(idle, axis=1) <= ask.gpus)
            after_gpu = gpu - MILLI * take
        score = fgd_score(before, fragmentation(self.t, cpu_after, after_gpu, c.model[ok]))
        s = pick_best(self.rng, ok, score)
        return Placement(s, self.devices(s, ask))


# --------------------------------------------------------------------------------------------------
# Berth
# --------------------------------------------------------------------------------------------------


SHARE_REPLICAS = 1000  # replicas per GPU on the benchmark's shared nodes: one replica is one milli


def shared_node_dict(node: NodeSpec) -> dict[str, Any]:
    """The Node object with time-slicing replicas, as the device plugin and GFD write it (not renamed)."""
    out = node_dict(node)
    if node.gpus and node.model:
        status, labels = out["status"], out["metadata"]["labels"]
        for key in ("capacity", "allocatable"):
            status[key]["nvidia.com/gpu"] = str(node.gpus * SHARE_REPLICAS)
        labels.update(
            {
                "nvidia.com/gpu.product": f"{node.model}-SHARED",
                "nvidia.com/gpu.replicas": str(SHARE_REPLICAS),
                "nvidia.com/gpu.sharing-strategy": "time-slicing",
            }
        )
    return out


def shared_pod_dict(pod: TracePod) -> dict[str, Any]:
    """The Pod object on shared nodes: its GPU ask in replicas (milli of a GPU)."""
    out = pod_dict(pod)
    if pod.gpus:
        replicas = str(pod.gpus * pod.gpu_milli * SHARE_REPLICAS // MILLI)
        for c in out["spec"]["containers"]:
            for key in ("requests", "limits"):
                if "nvidia.com/gpu" in (c["resources"].get(key) or {}):
                    c["resources"][key]["nvidia.com/gpu"] = replicas
    return out


class BerthPolicy(Policy):
    """Berth's filter, score and reserve; its own ledger holds what it placed."""

    name = "berth"
    supports_sharing = True  # nodes advertise time-slicing replicas (shared_node_dict)

    def __init__(
        self, cluster: SimCluster, sharing: bool, rng: random.Random, workload: list[TracePod] | None = None
    ) -> None:
        super().__init__(cluster, sharing, rng)
        # Imported here: the baselines need none of Berth, and Berth's modules are being reorganised.
        from scheduler.cluster.state import ClusterState
        from scheduler.config import Config
        from scheduler.policy.binder import Binder

        self.state = ClusterState(Config())
        for node in cluster.nodes:
            self.state.apply_node("ADDED", shared_node_dict(node) if sharing else node_dict(node))
        t = self.state.table
        self.names = [n.name for n in cluster.nodes]
        self.slots = array("i", [t.slot_of[n] for n in self.names])
        self.binder = Binder(self.state, None, None)  # no API server: binds are held in memory

    def place(self, ask: Ask) -> Placement | None:
        return self.place_among(ask, list(range(len(self.slots))))

    def choose(self, ask: Ask, ok: list[int], scores: list[int]) -> int:
        """Among the nodes Berth passed (`ok`, with its normalised scores): one of the best, at random."""
        top = max(scores)
        best = [i for i, x in zip(ok, scores, strict=True) if x == top]
        return best[self.rng.randrange(len(best))] if len(best) > 1 else best[0]

    def place_among(self, ask: Ask, nodes: list[int]) -> Placement | None:
        """Berth's filter and prioritize over `nodes` (indices into the cluster's nodes), then `choose`."""
        from scheduler import kernels
        from scheduler.cluster.state import pod_key
        from scheduler.model.binding import BindingArgs
        from scheduler.model.podspec import pod_ask
        from scheduler.policy.placement import judge, run_filter, run_score

        state = self.state
        pod = pod_ask(shared_pod_dict(ask.pod) if self.sharing else pod_dict(ask.pod))
        state.seen.remember(pod)  # what the filter handler records: bind gets only names
        j = judge(state, pod)
        # run_filter is the filter verb's path: it feeds the demand histogram and keeps only the best tier
        # (scoring.filter_best_tier); run_score normalises over the survivors, as prioritize sees them.
        verdicts, passed = run_filter(state, j, array("i", [self.slots[i] for i in nodes]))
        if not passed:
            return None
        ok = [nodes[i] for i, v in enumerate(verdicts) if v == kernels.OK]
        survivors = array("i", [self.slots[i] for i in ok])
        tier = run_score(state, j, survivors, now=0.0)
        at = self.choose(ask, ok, list(tier))
        entry = self.binder.reserve(pod, BindingArgs(pod.name, pod.namespace, pod.uid, self.names[at]))
        state.reservations.pop(pod_key(pod.namespace, pod.name), None)  # as Binder.bind with no writer
        entry.confirmed = True
        gpu_ids = tuple(g for g in range(MAX_GPUS) if entry.gpu_ids >> g & 1)
        return Placement(at, gpu_ids)

    def berth_usage(self, s: int) -> dict[str, Any]:
        """Berth's own view of a node's use (for cross-checks)."""
        t: Any = self.state.table  # its columns are set at run time
        slot = self.slots[s]
        return {
            "cpu": t.used_cpu[slot],
            "memory": t.used_mem[slot],
            "gpu": t.used_gpu[slot],
            "gpu_used_mask": t.gpu_used[slot],
            "gpu_milli": t.device_milli(slot),
        }


class BerthKubePolicy(BerthPolicy):
    """Berth as kube-scheduler's extender with the shipped settings sees the cluster (a stand-in for
    `loadtests.quality_e2e`, seconds instead of minutes; the real run is the number that counts):
    - kube-scheduler's in-tree filters (resources, the model's node affinity) run first; with
      percentageOfNodesToScore unset it stops at the adaptive share of the nodes that pass
      (`numFeasibleNodesToFind`: max(5, 50 - nodes / 125) %, at least 100), starting where the last pod
      stopped (`nextStartNodeIndex`), so Berth sees only that sample;
    - the total per node is Berth's normalised score x weight 5 x 10, plus NodeResourcesFit's
      LeastAllocated and NodeResourcesBalancedAllocation over cpu and memory (0..100 each, weight 1);
      the best total wins, ties at random (`selectHost`).
    `deploy/base/config/berth.yaml`'s cpu_strategy (most_allocated) is used, as shipped."""

    name = "berth-kube"

    def __init__(
        self, cluster: SimCluster, sharing: bool, rng: random.Random, workload: list[TracePod] | None = None
    ) -> None:
        super().__init__(cluster, sharing, rng, workload)
        self.state.config.scoring.cpu_strategy = "most_allocated"
        self.start = 0

    def place(self, ask: Ask) -> Placement | None:
        nodes, self.start = kube_sample(self.c, ask, self.start)
        return self.place_among(ask, nodes) if nodes else None

    def choose(self, ask: Ask, ok: list[int], scores: list[int]) -> int:
        return kube_choose(self.c, self.rng, ask, ok, [x * EXTENDER_WEIGHT * 10 for x in scores])


EXTENDER_WEIGHT = 5  # config/kube-scheduler.yaml's


def kube_sample(c: SimCluster, ask: Ask, start: int) -> tuple[list[int], int]:
    """The nodes kube-scheduler's in-tree filters pass, from `start` on, until the adaptive share is found;
    and where the next pod starts."""
    n = len(c.nodes)
    feasible = np.flatnonzero(c.feasible(ask))
    want = n if n < 100 else max(100, n * max(5, 50 - n // 125) // 100)
    order = np.concatenate([feasible[feasible >= start], feasible[feasible < start]])
    if len(order) > want:
        processed = (int(order[want - 1]) - start) % n + 1
        order = order[:want]
    else:
        processed = n
    return [int(x) for x in order], (start + processed) % n


def kube_choose(c: SimCluster, rng: random.Random, ask: Ask, ok: list[int], extender: list[int]) -> int:
    """The best total of the extender's points and LeastAllocated + BalancedAllocation (cpu, memory)."""
    idx = np.array(ok, dtype=np.int64)
    used_c = c.alloc_cpu[idx] - c.cpu[idx] + ask.cpu
    used_m = c.alloc_mem[idx] - c.mem[idx] + ask.mem
    least = (
        LeastAllocatedPolicy._part(c.alloc_cpu[idx], used_c) + LeastAllocatedPolicy._part(c.alloc_mem[idx], used_m)
    ) // 2
    fc = used_c / np.maximum(c.alloc_cpu[idx], 1)
    fm = used_m / np.maximum(c.alloc_mem[idx], 1)
    balanced = ((1.0 - np.abs(fc - fm) / 2.0) * MAX_SCORE).astype(np.int64)
    return pick_best(rng, idx, np.array(extender, dtype=np.int64) + least + balanced)


class KubeAlonePolicy(Policy):
    """kube-scheduler alone as BerthKubePolicy models it: the same sample, LeastAllocated and
    BalancedAllocation over cpu and memory, ties at random; whole GPUs only (the lowest idle ones)."""

    name = "kube-alone"
    supports_sharing = False

    def __init__(
        self, cluster: SimCluster, sharing: bool, rng: random.Random, workload: list[TracePod] | None = None
    ) -> None:
        super().__init__(cluster, sharing, rng, workload)
        self.start = 0

    def place(self, ask: Ask) -> Placement | None:
        nodes, self.start = kube_sample(self.c, ask, self.start)
        if not nodes:
            return None
        s = kube_choose(self.c, self.rng, ask, nodes, [0] * len(nodes))
        return Placement(s, self.devices(s, ask))


POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (
        RandomPolicy,
        LeastAllocatedPolicy,
        BestFitPolicy,
        FGDPolicy,
        BerthPolicy,
        BerthKubePolicy,
        KubeAlonePolicy,
    )
}
