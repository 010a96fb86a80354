"""The pod ledger: which pods hold what on which node, and the reservations bind makes.

Every change of what a pod holds goes through `PodLedger.hold` / `release`, which adjust the node
table's `used_*` arrays, the GPU device masks, per-pool usage and the team usage together: one
mutation path, run on the event loop only, so the books cannot drift apart.
"""

from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cachetools import TTLCache

from scheduler.cluster.nodetable import NodeTable
from scheduler.kernels import choose_devices, choose_share_device, share_ask
from scheduler.model.constants import GPU_MILLI, MAX_GPUS, TOPOLOGY_NONE
from scheduler.model.podspec import PodRequest


@dataclass(slots=True)
class PodEntry:
    key: str  # namespace/name
    uid: str
    node: str
    request: PodRequest
    priority: int
    team: str | None
    borrowing: bool
    gpu_ids: int  # device mask on the node; 0 when none or not yet placed
    confirmed: bool  # False while only Berth's bind reservation backs it
    since: float = 0.0  # monotonic time it started holding (GPU-seconds showback)
    model: str | None = None  # GPU model of its node when it started holding (per-model quota)
    gpu_milli: int = 0  # a fraction's milli on its one device (gpu_ids); 0: whole GPUs or none
    charged: dict[str, int] | None = None  # what the team's quota was charged (given back on release)

    def held_gpu_milli(self) -> int | None:
        """GPU milli the pod holds on its node; None before it holds devices (quotas: the nominal ask)."""
        if self.gpu_milli:
            return self.gpu_milli
        return self.gpu_ids.bit_count() * GPU_MILLI if self.gpu_ids else None


class Reservations(TTLCache):
    """Unconfirmed binds; an expired reservation is handed back so its resources are released."""

    def __init__(self, ttl: float, on_expire: Callable[[str, PodEntry], None]) -> None:
        super().__init__(maxsize=float("inf"), ttl=ttl)
        self._on_expire = on_expire

    def expire(self, time: float | None = None) -> list[tuple[str, PodEntry]]:
        expired = list(super().expire(time))
        for key, entry in expired:
            self._on_expire(key, entry)
        return expired


class PoolUsage:
    """GPU (or, for CPU-only pools, cpu) allocatable and use per pool: the pool availability score."""

    def __init__(self) -> None:
        self.alloc = array("d")
        self.used = array("d")
        self.avail = array("d")  # free fraction, read by the score kernel

    def ensure(self, pools: int) -> None:
        while len(self.avail) < pools:
            self.alloc.append(0.0)
            self.used.append(0.0)
            self.avail.append(0.0)

    def add(self, pool: int, alloc: float, used: float) -> None:
        self.ensure(pool + 1)
        self.alloc[pool] += alloc
        self.used[pool] += used
        a = self.alloc[pool]
        self.avail[pool] = max(0.0, min(1.0, (a - self.used[pool]) / a)) if a > 0 else 0.0


def pool_measure(table: NodeTable, slot: int) -> tuple[float, bool]:
    """A node's contribution to its pool's capacity: GPUs where it has any, else cores."""
    gpus = table.alloc_gpu[slot]
    return (float(gpus), True) if gpus else (table.alloc_cpu[slot] / 1000.0, False)


class PodLedger:
    def __init__(self, table: NodeTable, pools: PoolUsage, on_team: Callable[[PodEntry, int], None]) -> None:
        self.table = table
        self.pools = pools
        self.on_team = on_team  # the quota book's hook: (entry, +1 | -1)
        self.pods: dict[str, PodEntry] = {}
        self.by_node: dict[str, set[str]] = {}
        self.by_uid: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.pods)

    def __iter__(self) -> Iterator[PodEntry]:
        return iter(self.pods.values())

    def get(self, key: str) -> PodEntry | None:
        return self.pods.get(key)

    def hold(self, entry: PodEntry) -> None:
        """Start accounting `entry` (replacing what the same pod held before)."""
        self.release(entry.key)
        self.pods[entry.key] = entry
        self.by_node.setdefault(entry.node, set()).add(entry.key)
        if entry.uid:
            self.by_uid[entry.uid] = entry.key
        slot = self.table.slot_of.get(entry.node)
        if slot is not None:
            self._apply(slot, entry, 1)
        self.on_team(entry, 1)

    def release(self, key: str) -> PodEntry | None:
        entry = self.pods.pop(key, None)
        if entry is None:
            return None
        keys = self.by_node.get(entry.node)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.by_node[entry.node]
        if self.by_uid.get(entry.uid) == key:
            del self.by_uid[entry.uid]
        slot = self.table.slot_of.get(entry.node)
        if slot is not None:
            self._apply(slot, entry, -1)
        self.on_team(entry, -1)
        return entry

    def _apply(self, slot: int, entry: PodEntry, sign: int) -> None:
        t = self.table
        r = entry.request
        t.changes += 1
        t.used_cpu[slot] += sign * r.cpu
        t.used_mem[slot] += sign * r.memory
        t.used_pods[slot] += sign
        gpus = 0.0
        if r.gpu or r.gpu_shared:
            gpus = self._apply_gpus(slot, entry, sign)
        if r.other:
            used = t.other_used[slot]
            for k, v in r.other.items():
                left = used.get(k, 0) + sign * v
                if left:
                    used[k] = left
                else:
                    used.pop(k, None)
        _, is_gpu = pool_measure(t, slot)
        self.pools.add(t.pool[slot], 0.0, sign * (gpus if is_gpu else r.cpu / 1000.0))

    def _apply_gpus(self, slot: int, entry: PodEntry, sign: int) -> float:
        """Hold or give back the pod's devices; returns the GPUs held (a fraction as a fraction).
        Whole GPUs set device bits; a fraction adds its milli to one device and sets its bit too, so the
        whole-GPU path never sees a shared device as free. No device ever holds more than GPU_MILLI."""
        t = self.table
        r = entry.request
        whole, milli = share_ask(t, slot, r.gpu, r.gpu_shared, r.gpu_fraction)
        if milli > 0:
            return self._apply_fraction(slot, entry, entry.gpu_milli or milli, sign)
        if whole <= 0:
            return 0.0
        if sign > 0:
            entry.gpu_milli = 0
            free = t.free_gpus(slot)
            if not entry.gpu_ids or entry.gpu_ids & ~free:
                # Placed by someone else, or a stale choice: take devices as bind would have.
                entry.gpu_ids = choose_devices(t.islands, slot, free, whole, TOPOLOGY_NONE) or entry.gpu_ids
            t.gpu_used[slot] |= entry.gpu_ids
        else:
            t.gpu_used[slot] &= ~entry.gpu_ids
            if t.shared(slot):
                t.gpu_used[slot] |= self._shared_mask(slot)  # a stale whole choice never frees a fraction's GPU
        t.used_gpu[slot] = (t.gpu_used[slot] & t.gpu_mask[slot]).bit_count()
        return float(whole)

    def _apply_fraction(self, slot: int, entry: PodEntry, milli: int, sign: int) -> float:
        t = self.table
        base = slot * MAX_GPUS
        if sign > 0:
            g = entry.gpu_ids.bit_length() - 1 if entry.gpu_ids.bit_count() == 1 else -1
            if not self._room(slot, g, milli):  # placed by someone else, or a stale choice
                g = choose_share_device(t, slot, milli)
            if g < 0:  # no device has room: the node is over-committed outside Berth; hold no device
                entry.gpu_ids, entry.gpu_milli = 0, 0
                return 0.0
            entry.gpu_ids, entry.gpu_milli = 1 << g, milli
            t.gpu_milli[base + g] += milli
            t.gpu_used[slot] |= 1 << g
        else:
            if not entry.gpu_milli or not entry.gpu_ids:
                return 0.0
            g = entry.gpu_ids.bit_length() - 1
            left = max(0, t.gpu_milli[base + g] - entry.gpu_milli)
            t.gpu_milli[base + g] = left
            if not left:
                t.gpu_used[slot] &= ~(1 << g)
        t.used_gpu[slot] = (t.gpu_used[slot] & t.gpu_mask[slot]).bit_count()
        return milli / GPU_MILLI

    def _room(self, slot: int, g: int, milli: int) -> bool:
        """Device g can take `milli` more: idle, or shared with room (never one a whole pod holds)."""
        t = self.table
        if g < 0 or g >= t.alloc_gpu[slot]:
            return False
        held = t.gpu_milli[slot * MAX_GPUS + g]
        if held == 0:
            return not t.gpu_used[slot] >> g & 1
        return held + milli <= GPU_MILLI

    def _shared_mask(self, slot: int) -> int:
        base = slot * MAX_GPUS
        return sum(1 << g for g in range(self.table.alloc_gpu[slot]) if self.table.gpu_milli[base + g])

    def node_added(self, slot: int) -> None:
        """A node (re)appeared: account the pods already known to run on it."""
        t = self.table
        measure, _ = pool_measure(t, slot)
        self.pools.add(t.pool[slot], measure, 0.0)
        for key in self.by_node.get(t.names[slot] or "", ()):
            self._apply(slot, self.pods[key], 1)

    def node_removing(self, slot: int) -> None:
        t = self.table
        for key in self.by_node.get(t.names[slot] or "", ()):
            self._apply(slot, self.pods[key], -1)
        measure, _ = pool_measure(t, slot)
        self.pools.add(t.pool[slot], -measure, 0.0)
