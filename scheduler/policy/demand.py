"""The recent distribution of GPU asks: a decayed histogram the fragmentation and scarcity score parts read.

Fed once per pod by the filter verb (`record`, O(1): a pod's uid is remembered in a bounded LRU so
kube-scheduler's retries of a pending pod do not count it again). Every record weighs `1/d` times the one
before (d = 0.5 ** (1 / HALF_LIFE_ASKS)), which is an exponential decay of the old asks without touching
them; the scale is folded back into the sums before it overflows.

What the kernels get (`fill`, into the score params at the indices of scheduler/model/constants.py):
- per bucket of GPUs per pod (1, 2, 4, 8: a pod asking k GPUs falls in the smallest bucket >= k), split in
  two by CPU per GPU (asks at or below the bucket's running mean, and above it: the large asks that only
  roomy nodes can hold are a shape of their own, not averaged away): the share of recently asked GPUs in
  each, and the typical millicores and memory per GPU its pods ask;
- per GPU model: the constrained pressure, (share of asked GPUs constrained to the model) / (share of the
  cluster's free GPUs of that model), capped at 1; a pod that accepts several models spreads its GPUs over
  them. A model at PROTECT_PRESSURE or more is protected: pods of any model keep off it while another fits
  (the kernels' scarce-model tier, docs/scoring.md). A model asked beyond its share of the cluster is
  protected only while its free GPUs are within its reserve (RESERVE times the GPUs its constrained pods
  asked in the recent window); above it, its pressure is written just below PROTECT_PRESSURE.
Before any ask is seen the buckets weigh the same and the typical CPU and memory are 0 (the kernels use
the node's own ratio), and no model is under pressure.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Container
from typing import Any

from scheduler import kernels
from scheduler.model.constants import (
    DEMAND_BASE,
    DEMAND_BUCKETS,
    DEMAND_FIELDS,
    GPU_MILLI,
    MAX_NODE_CPU,
    MAX_NODE_GPUS,
    MAX_NODE_MEM,
    PROTECT_AT,
    SCARCITY_BASE,
    SCARCITY_MODELS,
)
from scheduler.model.podspec import PodAsk

BUCKETS = (1, 2, 4, 8)  # GPUs per pod; each makes two of the DEMAND_BUCKETS (low and high CPU per GPU)
HALF_LIFE_ASKS = 2000  # GPU asks after which an ask counts half
# A model is protected (kept from pods that accept any model while another model fits) when the pods
# constrained to it ask at least this share of what its share of the cluster's GPUs would get: at that
# rate the constrained pods alone take half its GPUs by the time the cluster is full.
PROTECT_PRESSURE = 0.5
# A model whose constrained pods ask more than its share of the cluster (their share of the recent GPU
# asks above the model's share of the cluster's GPUs) is filled by them whatever the other pods do, so
# holding all of it for them from the start only sends every other pod to the other models sooner (their
# whole 8-GPU nodes break earlier and the large pods that come late fail). Such a model is protected only
# while its free GPUs are within a reserve sized to its own pods' need: RESERVE times the GPUs they asked
# of it in the recent window (the decayed count, about the last HALF_LIFE_ASKS / ln 2 asks). A model asked
# for less than its share is protected by the pressure alone: spent early, it would fail its pods while
# the cluster is half empty.
RESERVE = 1.0
_BELOW_PROTECT = 0.999 * PROTECT_PRESSURE  # the pressure of a model above its reserve: not protected
FREE_RECOUNT = 16  # asks between recounts of the free GPUs per model
REMEMBERED_UIDS = 8192
_GROWTH = 0.5 ** (-1.0 / HALF_LIFE_ASKS)
_RESCALE_AT = 1e100


def whole_gpus(ask: PodAsk, replicas: tuple[int, int] = (1, 1)) -> int:
    """Whole GPUs the pod asks for: replicas of shared GPUs count as the GPUs they make up (`replicas`: the
    most replicas per GPU of nvidia.com/gpu and of nvidia.com/gpu.shared, as NodeTable.max_replicas); a
    fraction of one GPU is no whole-GPU ask (0): it shares a GPU and the buckets are whole GPUs."""
    r = ask.request
    if not r.gpu_shared and replicas[0] <= 1 and not r.gpu_fraction:
        return r.gpu
    milli = r.nominal_gpu_milli(replicas)
    return milli // GPU_MILLI if milli % GPU_MILLI == 0 else 0


def bucket_of(gpus: int) -> int:
    for b, k in enumerate(BUCKETS):
        if gpus <= k:
            return b
    return len(BUCKETS) - 1


class Demand:
    def __init__(self) -> None:
        self.scale = 1.0
        self.gpus = [0.0] * DEMAND_BUCKETS  # decayed GPUs asked, per bucket
        self.cpu = [0.0] * DEMAND_BUCKETS  # decayed millicores asked, per bucket
        self.mem = [0.0] * DEMAND_BUCKETS  # decayed bytes asked, per bucket
        self.constrained: dict[str, float] = {}  # decayed GPUs constrained to a model
        self.total = 0.0  # decayed GPUs asked
        self._uids: OrderedDict[str, None] = OrderedDict()
        self._supply_key: tuple[int, int, int] | None = None
        self._supply: dict[str, int] = {}
        self._free: list[int] = []  # free GPUs per model id (free_by_model)
        self._free_key: tuple[int, int, int] | None = None
        self._free_at = -FREE_RECOUNT
        self._largest = (0.0, 0.0, 0.0)  # the largest GPU node's GPUs, millicores, bytes (best fit's scale)
        self.recorded = 0  # asks counted so far: what a cached params array was built from
        self.cached: tuple[object, array] | None = None  # (key, params) of policy.placement.score_params
        self.protects = False  # some model is protected in the params `fill` wrote last

    def record(self, ask: PodAsk, replicas: tuple[int, int] = (1, 1), models: Container[str] | None = None) -> None:
        """`models`: the GPU models the cluster has (NodeTable.model_id). Demand constrained to any other is
        not kept: no node could take it, the scarcity part reads only the cluster's models, and a pod's
        annotation may name any number of them (each a key kept for the process's life). None: all kept."""
        gpus = whole_gpus(ask, replicas)
        if gpus <= 0:
            return
        if ask.uid:
            if ask.uid in self._uids:
                return
            self._uids[ask.uid] = None
            if len(self._uids) > REMEMBERED_UIDS:
                self._uids.popitem(last=False)
        self.recorded += 1
        self.scale *= _GROWTH
        if self.scale > _RESCALE_AT:
            self._rescale()
        w = self.scale
        k = bucket_of(gpus)
        lo, hi = 2 * k, 2 * k + 1
        both = self.gpus[lo] + self.gpus[hi]
        mean = (self.cpu[lo] + self.cpu[hi]) / both if both > 0.0 else 0.0
        b = hi if both > 0.0 and ask.request.cpu > mean * gpus else lo
        self.gpus[b] += w * gpus
        self.cpu[b] += w * ask.request.cpu
        self.mem[b] += w * ask.request.memory
        self.total += w * gpus
        if ask.gpu_models:
            share = w * gpus / len(ask.gpu_models)
            for m in ask.gpu_models:
                if models is None or m in models:
                    self.constrained[m] = self.constrained.get(m, 0.0) + share

    def _rescale(self) -> None:
        f = 1.0 / self.scale
        self.gpus = [x * f for x in self.gpus]
        self.cpu = [x * f for x in self.cpu]
        self.mem = [x * f for x in self.mem]
        self.constrained = {m: x * f for m, x in self.constrained.items()}
        self.total *= f
        self.scale = 1.0

    def fill(self, params: array, table: Any) -> None:
        """Write the histogram and the per-model pressure into the score params."""
        rows: list[float] = []
        total = self.total
        for b in range(DEMAND_BUCKETS):
            k = BUCKETS[b // 2]
            g = self.gpus[b]
            if total > 0.0:
                cpu, mem = (self.cpu[b] / g, self.mem[b] / g) if g > 0.0 else (0.0, 0.0)
                rows += (float(k), g / total, cpu, mem, 1.0 / k)
            else:
                rows += (float(k), 1.0 / DEMAND_BUCKETS, 0.0, 0.0, 1.0 / k)
        params[DEMAND_BASE : DEMAND_BASE + DEMAND_BUCKETS * DEMAND_FIELDS] = array("d", rows)
        supply = self.supply(table) if table is not None else {}  # also best fit's scale, self._largest
        pressure = self._pressure(table, supply) if self.constrained and total > 0.0 else [0.0] * SCARCITY_MODELS
        params[SCARCITY_BASE : SCARCITY_BASE + SCARCITY_MODELS] = array("d", pressure)
        params[PROTECT_AT] = PROTECT_PRESSURE
        self.protects = any(x > 0.0 and x >= PROTECT_PRESSURE for x in pressure)
        params[MAX_NODE_GPUS], params[MAX_NODE_CPU], params[MAX_NODE_MEM] = self._largest

    def _pressure(self, table: Any, supply: dict[str, int]) -> list[float]:
        """Per model id: the constrained pressure against the model's free GPUs, held just below
        PROTECT_PRESSURE for a model asked beyond its share of the cluster while it is above its reserve."""
        pressure = [0.0] * SCARCITY_MODELS
        total = self.total
        free = self.free_by_model(table)
        all_free = sum(free)
        cluster = sum(supply.values()) or 1
        for i, model in enumerate(table.models[:SCARCITY_MODELS]):
            want = self.constrained.get(model, 0.0)
            if want <= 0.0:
                continue
            have = free[i] if i < len(free) else 0
            # No free GPU of the model left: whatever frees up there is the constrained pods' first.
            pressure[i] = 1.0 if have <= 0 else min(1.0, (want / total) / (have / all_free))
            if want / total > supply.get(model, 0) / cluster and have > RESERVE * want / self.scale:
                # Asked beyond its share, with more free GPUs than its reserve: the surplus is open to all.
                pressure[i] = min(pressure[i], _BELOW_PROTECT)
        return pressure

    def free_by_model(self, table: Any) -> list[int]:
        """Free GPUs per model id, recounted every FREE_RECOUNT asks (it moves slowly) and when the nodes
        change: O(nodes) in the kernels (a few microseconds at 1,213 nodes), so not on every pod."""
        key = _nodes_key(table)
        if key != self._free_key or self.recorded - self._free_at >= FREE_RECOUNT:
            out = array("q", bytes(8 * len(table.models)))
            kernels.free_by_model(table, out)
            self._free, self._free_key, self._free_at = list(out), key, self.recorded
        return self._free

    def supply(self, table: Any) -> dict[str, int]:
        """GPUs per model, recounted when the table's names or models change (not on every call)."""
        key = _nodes_key(table)
        if key != self._supply_key:
            out: dict[str, int] = {}
            g = c = m_ = 0
            for s in range(table.size):
                m = table.model[s]
                if m >= 0 and table.names[s]:
                    out[table.models[m]] = out.get(table.models[m], 0) + table.alloc_gpu[s]
                if table.alloc_gpu[s] > 0 and table.names[s]:
                    g, c, m_ = max(g, table.alloc_gpu[s]), max(c, table.alloc_cpu[s]), max(m_, table.alloc_mem[s])
            self._supply, self._supply_key = out, key
            self._largest = (float(g), float(c), float(m_))
        return self._supply

    def snapshot(self) -> dict[str, Any]:
        """What explain shows."""
        total = self.total or 1.0
        return {
            "gpu_share_by_bucket": {
                f"{BUCKETS[b // 2]} GPUs, {'high' if b % 2 else 'low'} CPU": round(self.gpus[b] / total, 4)
                if self.total
                else None
                for b in range(DEMAND_BUCKETS)
            },
            "constrained_share_by_model": {m: round(x / total, 4) for m, x in sorted(self.constrained.items())},
            "protect_at_pressure": PROTECT_PRESSURE,
            "reserve_gpus_by_model": {m: round(x / self.scale, 1) for m, x in sorted(self.constrained.items())},
        }


def demand_of(state: Any) -> Demand:
    """The state's histogram, made on first use (ClusterState does not know about policy)."""
    d: Demand | None = getattr(state, "_berth_demand", None)
    if d is None:
        d = Demand()
        state._berth_demand = d
    return d


def _nodes_key(table: Any) -> tuple[int, int, int]:
    """What the per-model counts are counted from: the set of names, the models, the slots in use."""
    return (table.version, len(table.models), table.size)
