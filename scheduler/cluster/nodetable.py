"""The node table: one typed array per node attribute, indexed by a node's slot number.

Kernels read these arrays directly; no per-node Python object is touched on the filter/score path.
Node objects (as the API server sends them, decoded by orjson) come in through `upsert`; the pod
ledger adjusts the `used_*` arrays and the GPU device masks.
"""

import math
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from scheduler.gpu.topology import TopologyError, islands_to_masks, parse_topology_annotation
from scheduler.model.constants import (
    FLAG_PRESENT,
    FLAG_UNSCHEDULABLE,
    GPU_MILLI,
    MAX_GPUS,
    MAX_ISLANDS,
    SHARE_GPU,
    SHARE_GPU_SHARED,
)
from scheduler.model.names import (
    ANN_GPU_TOPOLOGY,
    ANN_LOAD,
    ANN_LOAD_TIME,
    ANN_MAINTENANCE,
    GPU,
    GPU_SHARED,
    LABEL_GPU_COUNT,
    LABEL_GPU_PRODUCT,
    LABEL_GPU_REPLICAS,
    LABEL_GPU_SHARING,
    LABEL_MAINTENANCE,
    LABEL_POOL,
    SHARED_PRODUCT_SUFFIX,
)
from scheduler.model.quantity import QuantityError, to_units


@dataclass(slots=True)
class NodeFacts:
    """What is kept per node outside the kernel arrays: for /debug, explain and messages only."""

    name: str
    pool: str
    gpu_model: str | None
    islands: list[list[int]]
    topology_error: str | None
    other_alloc: dict[str, int]
    sharing: str = "none"  # GFD's nvidia.com/gpu.sharing-strategy: none | time-slicing | mps
    # The taints kube-scheduler's TaintToleration filter refuses pods on unless they tolerate them:
    # (key, value, effect) with effect NoSchedule or NoExecute; a node whose Ready condition is False or
    # Unknown carries the taint the node lifecycle controller gives it (not-ready / unreachable) here too.
    taints: tuple[tuple[str, str, str], ...] = ()
    ready: bool = True  # False: the node reports Ready False or Unknown (no Ready condition: True)


def _zeros(code: str, n: int) -> array:
    return array(code, bytes(array(code).itemsize * n))


class NodeTable:
    """Struct-of-arrays node store; slots of deleted nodes are reused."""

    # One typed array per attribute (made from _SPEC), declared so type checkers see them.
    alloc_cpu: array
    alloc_mem: array
    alloc_gpu: array
    alloc_pods: array
    used_cpu: array
    used_mem: array
    used_gpu: array
    used_pods: array
    gpu_mask: array  # devices the node has, bit i for GPU i
    gpu_used: array  # devices pods hold
    model: array
    pool: array
    flags: array  # FLAG_* bits
    load: array
    load_time: array
    maint: array  # Unix time maintenance starts (names.ANN_MAINTENANCE / LABEL_MAINTENANCE); 0: none
    islands: array  # MAX_ISLANDS device masks per slot
    replicas: array  # replicas per GPU the device plugin advertises (1: not shared; 0 in free slots)
    share_res: array  # SHARE_GPU / SHARE_GPU_SHARED: the resource name of those replicas
    gpu_milli: array  # MAX_GPUS per slot: milli of each device held by fractions (whole pods: 0)

    _SPEC = {
        "alloc_cpu": "q",
        "alloc_mem": "q",
        "alloc_gpu": "i",
        "alloc_pods": "i",
        "used_cpu": "q",
        "used_mem": "q",
        "used_gpu": "i",
        "used_pods": "i",
        "gpu_mask": "Q",
        "gpu_used": "Q",
        "model": "i",
        "pool": "i",
        "flags": "B",
        "load": "d",
        "load_time": "d",
        "maint": "d",
        "replicas": "i",
        "share_res": "B",
    }

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = 0
        self.size = 0  # slots ever used; kernels never see slots >= size
        self.names: list[str | None] = []
        self.quoted: list[bytes | None] = []  # each name as a JSON string, what replies and map_names use
        self.facts: list[NodeFacts | None] = []
        self.slot_of: dict[str, int] = {}
        self.free_slots: list[int] = []
        self.models: list[str] = []
        self.model_id: dict[str, int] = {}
        self.pools: list[str] = []
        self.pool_id: dict[str, int] = {}
        self.version = 0  # bumped whenever the set of names changes: invalidates NodeNames caches
        # Bumped on every write to a slot's facts or usage (here and by the ledger): what a score computed
        # earlier was computed from (policy/placement.py reuses filter's scores in prioritize while it holds).
        self.changes = 0
        for attr, code in self._SPEC.items():
            setattr(self, attr, array(code))
        self.islands = array("Q")
        self.gpu_milli = array("i")
        self.other_used: list[dict[str, int]] = []  # per slot: extended resources (MIG, ...) pods hold
        self.shared_slots: set[int] = set()  # nodes whose GPUs are shared (replicas > 1 or gpu.shared)
        self.tainted: set[int] = set()  # nodes with NodeFacts.taints (few: the gang planner checks only these)
        # The native kernels' typed views of these arrays, kept between calls (ext/_native.pyx: _views);
        # dropped before the arrays grow, which they would otherwise refuse (BufferError).
        self.kernel_views: object | None = None
        self.kernel_share_views: object | None = None
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        self.kernel_views = self.kernel_share_views = None
        extra = capacity - self.capacity
        for attr, code in self._SPEC.items():
            getattr(self, attr).extend(_zeros(code, extra))
        self.islands.extend(_zeros("Q", extra * MAX_ISLANDS))
        self.gpu_milli.extend(_zeros("i", extra * MAX_GPUS))
        self.other_used.extend({} for _ in range(extra))
        self.names.extend([None] * extra)
        self.quoted.extend([None] * extra)
        self.facts.extend([None] * extra)
        self.capacity = capacity

    def intern_model(self, model: str) -> int:
        if model not in self.model_id:
            self.model_id[model] = len(self.models)
            self.models.append(model)
        return self.model_id[model]

    def intern_pool(self, pool: str) -> int:
        if pool not in self.pool_id:
            self.pool_id[pool] = len(self.pools)
            self.pools.append(pool)
        return self.pool_id[pool]

    def __len__(self) -> int:
        return len(self.slot_of)

    def upsert(self, node: dict[str, Any]) -> int:
        """Store a Node object; returns its slot. Raises ValueError for a node that cannot be read."""
        meta = node.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("Node without metadata.name")
        slot = self.slot_of.get(name)
        if slot is None:
            slot = self._new_slot(name)
        self._fill(slot, name, node)
        return slot

    def _new_slot(self, name: str) -> int:
        if self.free_slots:
            slot = self.free_slots.pop()
        else:
            if self.size == self.capacity:
                self._grow(max(1024, self.capacity * 2))
            slot = self.size
            self.size += 1
        self.slot_of[name] = slot
        self.names[slot] = name
        self.quoted[slot] = orjson.dumps(name)
        self.version += 1
        return slot

    def remove(self, name: str) -> int | None:
        slot = self.slot_of.pop(name, None)
        if slot is None:
            return None
        for attr in self._SPEC:
            getattr(self, attr)[slot] = 0
        base = slot * MAX_ISLANDS
        for i in range(MAX_ISLANDS):
            self.islands[base + i] = 0
        base = slot * MAX_GPUS
        for i in range(MAX_GPUS):
            self.gpu_milli[base + i] = 0
        self.other_used[slot] = {}
        self.shared_slots.discard(slot)
        self.tainted.discard(slot)
        self.names[slot] = None
        self.quoted[slot] = None
        self.facts[slot] = None
        self.free_slots.append(slot)
        self.version += 1
        self.changes += 1
        return slot

    def _fill(self, slot: int, name: str, node: dict[str, Any]) -> None:
        self.changes += 1
        meta = node.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        status = node.get("status") or {}
        alloc = status.get("allocatable") or status.get("capacity") or {}
        units = _units(alloc)
        gpus, replicas, share_res = _gpu_shape(units, labels)
        gpus = min(gpus, MAX_GPUS)
        self.replicas[slot] = replicas
        self.share_res[slot] = share_res
        if replicas > 1 or share_res == SHARE_GPU_SHARED:
            self.shared_slots.add(slot)
        else:
            self.shared_slots.discard(slot)
        self.alloc_cpu[slot] = units.pop("cpu", 0)
        self.alloc_mem[slot] = units.pop("memory", 0)
        self.alloc_pods[slot] = units.pop("pods", 110)
        self.alloc_gpu[slot] = gpus
        self.gpu_mask[slot] = (1 << gpus) - 1
        self.gpu_used[slot] &= self.gpu_mask[slot]
        model = labels.get(LABEL_GPU_PRODUCT)
        if isinstance(model, str) and model.endswith(SHARED_PRODUCT_SUFFIX):
            model = model[: -len(SHARED_PRODUCT_SUFFIX)]  # the same GPUs, shared: one model for quotas
        self.model[slot] = self.intern_model(model) if gpus and model else -1
        self.pool[slot] = self.intern_pool(str(labels.get(LABEL_POOL) or ""))
        unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
        self.flags[slot] = FLAG_PRESENT | (FLAG_UNSCHEDULABLE if unschedulable else 0)
        self.load[slot], self.load_time[slot] = _load(annotations)
        self.maint[slot] = _maintenance(annotations, labels)
        islands, topo_error = self._set_islands(slot, gpus, annotations.get(ANN_GPU_TOPOLOGY))
        ready, taints = _readiness(status), _taints(node.get("spec") or {})
        if ready != "True":
            taints += ((TAINT_NOT_READY if ready == "False" else TAINT_UNREACHABLE, "", "NoSchedule"),)
        if taints:
            self.tainted.add(slot)
        else:
            self.tainted.discard(slot)
        self.facts[slot] = NodeFacts(
            name=name,
            pool=self.pools[self.pool[slot]],
            gpu_model=model if gpus else None,
            islands=islands,
            topology_error=topo_error,
            other_alloc={k: v for k, v in units.items() if k != "ephemeral-storage"},
            sharing=str(labels.get(LABEL_GPU_SHARING) or ("time-slicing" if slot in self.shared_slots else "none")),
            taints=taints,
            ready=ready == "True",
        )

    def _set_islands(self, slot: int, gpus: int, raw: Any) -> tuple[list[list[int]], str | None]:
        """Island masks from the topology annotation; without one, all GPUs form one island
        (what NVSwitch systems are, and the only assumption that never rejects a fitting pod)."""
        error = None
        masks = [(1 << gpus) - 1] if gpus else []
        if raw and gpus:
            try:
                masks = islands_to_masks(parse_topology_annotation(str(raw), gpus))[:MAX_ISLANDS]
            except TopologyError as exc:
                error = str(exc)
        base = slot * MAX_ISLANDS
        for i in range(MAX_ISLANDS):
            self.islands[base + i] = masks[i] if i < len(masks) else 0
        return [[b for b in range(gpus) if m >> b & 1] for m in masks], error

    def island_masks(self, slot: int) -> list[int]:
        base = slot * MAX_ISLANDS
        return [m for m in self.islands[base : base + MAX_ISLANDS] if m]

    def free_gpus(self, slot: int) -> int:
        """The mask of the node's free devices (the kernels' _free_gpus is the same rule)."""
        return self.gpu_mask[slot] & ~self.gpu_used[slot]

    def shared(self, slot: int) -> bool:
        return slot in self.shared_slots

    def max_replicas(self) -> tuple[int, int]:
        """The most replicas per GPU among nodes sharing nvidia.com/gpu, and among gpu.shared nodes."""
        most = [1, 1]
        for s in self.shared_slots:
            k = 1 if self.share_res[s] == SHARE_GPU_SHARED else 0
            most[k] = max(most[k], self.replicas[s])
        return most[0], most[1]

    def device_milli(self, slot: int) -> list[int]:
        """Milli held by fractions on each of the node's devices."""
        base = slot * MAX_GPUS
        return list(self.gpu_milli[base : base + self.alloc_gpu[slot]])

    def free_milli(self, slot: int) -> int:
        """Free GPU capacity in milli: idle devices whole, plus what fractions leave on shared ones."""
        held = self.device_milli(slot)
        return self.free_gpus(slot).bit_count() * GPU_MILLI + sum(GPU_MILLI - m for m in held if m)

    def cordoned(self, slot: int) -> bool:
        return bool(self.flags[slot] & FLAG_UNSCHEDULABLE)

    def free(self, slot: int) -> dict[str, int]:
        return {
            "cpu": self.alloc_cpu[slot] - self.used_cpu[slot],
            "memory": self.alloc_mem[slot] - self.used_mem[slot],
            GPU: self.free_gpus(slot).bit_count(),
            "pods": self.alloc_pods[slot] - self.used_pods[slot],
        }

    def allocatable(self, slot: int) -> dict[str, int]:
        return {
            "cpu": self.alloc_cpu[slot],
            "memory": self.alloc_mem[slot],
            GPU: self.alloc_gpu[slot],
            "pods": self.alloc_pods[slot],
        }


def _gpu_shape(units: dict[str, int], labels: dict[str, Any]) -> tuple[int, int, int]:
    """(physical GPUs, replicas per GPU, SHARE_*) from allocatable and GFD labels; pops the GPU resources.

    - `nvidia.com/gpu.shared` (renameByDefault): its replicas over `nvidia.com/gpu.replicas` GPUs (or
      over `nvidia.com/gpu.count`); `nvidia.com/gpu` beside it is not modelled (Berth reads such a node
      as its shared GPUs).
    - `nvidia.com/gpu` with `nvidia.com/gpu.replicas` > 1: replicas of `nvidia.com/gpu.count` GPUs (else
      allocatable / replicas).
    - otherwise `nvidia.com/gpu` whole, as always (MIG single strategy: each MIG device is one GPU)."""
    whole = units.pop(GPU, 0)
    shared = units.pop(GPU_SHARED, 0)
    count = _int_label(labels, LABEL_GPU_COUNT)
    replicas = _int_label(labels, LABEL_GPU_REPLICAS)
    if shared > 0:
        if replicas < 1:
            replicas = shared // count if count and shared >= count else 1
        return (count or shared // replicas), replicas, SHARE_GPU_SHARED
    if replicas > 1 and whole > 0:
        return (count or whole // replicas), replicas, SHARE_GPU
    return whole, 1, SHARE_GPU


def _int_label(labels: dict[str, Any], key: str) -> int:
    raw = labels.get(key)
    try:
        value = int(str(raw))
    except (TypeError, ValueError):
        return 0
    return value if 0 < value < 1 << 20 else 0


TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
REFUSING_EFFECTS = ("NoSchedule", "NoExecute")  # PreferNoSchedule only lowers a score


def _taints(spec: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """spec.taints that refuse pods (NoSchedule, NoExecute) as (key, value, effect); anything unreadable is skipped."""
    raw = spec.get("taints")
    if not isinstance(raw, list):
        return ()
    out = []
    for t in raw:
        if isinstance(t, dict) and t.get("effect") in REFUSING_EFFECTS and isinstance(t.get("key"), str):
            out.append((t["key"], str(t.get("value") or ""), str(t["effect"])))
    return tuple(out)


def _readiness(status: dict[str, Any]) -> str:
    """The status of the node's Ready condition: "True", "False" or "Unknown"; "True" when it reports none
    (a node without conditions is one the API server has not heard from a kubelet about: tests, demo)."""
    for c in status.get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            value = str(c.get("status"))
            return value if value in ("True", "False") else "Unknown"
    return "True"


def _units(alloc: Any) -> dict[str, int]:
    if not isinstance(alloc, dict):
        raise ValueError("Node status.allocatable must be an object")
    out = {}
    for key, value in alloc.items():
        try:
            out[key] = to_units(key, value)
        except QuantityError as exc:
            raise ValueError(f"Node status.allocatable[{key}]: {exc}") from exc
    return out


def _load(annotations: dict[str, Any]) -> tuple[float, float]:
    """Node load in 0..1 and when it was measured; (-1, 0) when absent or unreadable."""
    try:
        value = float(annotations[ANN_LOAD])
        when = annotations.get(ANN_LOAD_TIME)
        stamp = datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp() if when else 0.0
    except (KeyError, TypeError, ValueError):
        return -1.0, 0.0
    if not math.isfinite(value) or value < 0:
        return -1.0, 0.0
    return min(value, 1.0), stamp


def _maintenance(annotations: dict[str, Any], labels: dict[str, Any]) -> float:
    """When the node's announced maintenance starts (Unix time); 0 when none is announced. An annotation
    that is not an RFC 3339 time ("now", "true", ...) and the label mean as soon as possible (1.0: in the
    past, so every long-running pod is scored down there)."""
    raw = annotations.get(ANN_MAINTENANCE)
    if raw is not None and str(raw).strip():
        try:
            when = datetime.fromisoformat(str(raw).strip().replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(when.timestamp(), 1.0)
        except ValueError:
            return 1.0
    return 1.0 if labels.get(LABEL_MAINTENANCE) not in (None, "", "false") else 0.0
