"""The node table: one typed array per node attribute, indexed by a node's slot number.

Kernels read these arrays directly; no per-node Python object is touched on the filter/score path.
Node objects (as the API server sends them, decoded by orjson) come in through `upsert`; the pod
ledger adjusts the `used_*` arrays and the GPU device masks.
"""

import math
from array import array
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from scheduler.gpu.topology import TopologyError, islands_to_masks, parse_topology_annotation
from scheduler.model.constants import FLAG_PRESENT, FLAG_UNSCHEDULABLE, MAX_GPUS, MAX_ISLANDS
from scheduler.model.names import ANN_GPU_TOPOLOGY, ANN_LOAD, ANN_LOAD_TIME, GPU, LABEL_GPU_PRODUCT, LABEL_POOL
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
    islands: array  # MAX_ISLANDS device masks per slot

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
        for attr, code in self._SPEC.items():
            setattr(self, attr, array(code))
        self.islands = array("Q")
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        for attr, code in self._SPEC.items():
            getattr(self, attr).extend(_zeros(code, extra))
        self.islands.extend(_zeros("Q", extra * MAX_ISLANDS))
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
        self.names[slot] = None
        self.quoted[slot] = None
        self.facts[slot] = None
        self.free_slots.append(slot)
        self.version += 1
        return slot

    def _fill(self, slot: int, name: str, node: dict[str, Any]) -> None:
        meta = node.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        status = node.get("status") or {}
        alloc = status.get("allocatable") or status.get("capacity") or {}
        units = _units(alloc)
        gpus = min(units.pop(GPU, 0), MAX_GPUS)
        self.alloc_cpu[slot] = units.pop("cpu", 0)
        self.alloc_mem[slot] = units.pop("memory", 0)
        self.alloc_pods[slot] = units.pop("pods", 110)
        self.alloc_gpu[slot] = gpus
        self.gpu_mask[slot] = (1 << gpus) - 1
        self.gpu_used[slot] &= self.gpu_mask[slot]
        model = labels.get(LABEL_GPU_PRODUCT)
        self.model[slot] = self.intern_model(model) if gpus and model else -1
        self.pool[slot] = self.intern_pool(str(labels.get(LABEL_POOL) or ""))
        unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
        self.flags[slot] = FLAG_PRESENT | (FLAG_UNSCHEDULABLE if unschedulable else 0)
        self.load[slot], self.load_time[slot] = _load(annotations)
        islands, topo_error = self._set_islands(slot, gpus, annotations.get(ANN_GPU_TOPOLOGY))
        self.facts[slot] = NodeFacts(
            name=name,
            pool=self.pools[self.pool[slot]],
            gpu_model=model if gpus else None,
            islands=islands,
            topology_error=topo_error,
            other_alloc={k: v for k, v in units.items() if k != "ephemeral-storage"},
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
