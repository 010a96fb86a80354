"""Pure-Python twins of the filter and score kernels (ext/_native.pyx): the reference implementation.

Both take the node table's arrays and one pod's request, and write one result per requested slot.
Keep the two files in step line for line: a property test checks they agree, and floating point
is computed in the same order in both so scores match exactly.
"""

import math
from array import array
from typing import Any

# The reply builders' twins live in _python_replies.py; re-exported so the selector finds every whole-GPU
# twin in this module, as it finds every native kernel in one.
from scheduler.kernels._python_replies import failed_json as failed_json
from scheduler.kernels._python_replies import map_names as map_names
from scheduler.kernels._python_replies import pick_json as pick_json
from scheduler.kernels._python_replies import prioritize_json as prioritize_json
from scheduler.kernels._python_replies import reason_ids as reason_ids
from scheduler.model.constants import (
    CPU,
    FLAG_PRESENT,
    FLAG_UNSCHEDULABLE,
    GPU,
    LOAD_MAX_AGE,
    MAX_ISLANDS,
    MEMORY,
    MODEL,
    MOST_ALLOCATED,
    NOW,
    OK,
    PODS,
    POOL,
    TOPOLOGY,
    TOPOLOGY_REQUIRED,
    UNKNOWN,
    UNSCHEDULABLE,
    W_AVAIL,
    W_LOAD,
    W_PACK,
    W_POOL,
    W_RES,
    W_TOPO,
)


def filter_nodes(
    t: Any, slots: array, cpu: int, mem: int, gpu: int, topo: int, pool_ok: bytes, model_ok: bytes, out: bytearray
) -> int:
    """Writes a verdict per slot into `out`; returns how many nodes passed."""
    passed = 0
    for i in range(len(slots)):
        v = _verdict(t, slots[i], cpu, mem, gpu, topo, pool_ok, model_ok)
        out[i] = v
        if v == OK:
            passed += 1
    return passed


def node_verdict(t: Any, s: int, cpu: int, mem: int, gpu: int, topo: int, pool_ok: bytes, model_ok: bytes) -> int:
    """One node's verdict (bind checks the chosen node again); UNKNOWN for a slot outside the table."""
    if s >= len(t.flags):
        return UNKNOWN
    return _verdict(t, s, cpu, mem, gpu, topo, pool_ok, model_ok)


def _free_gpus(t: Any, s: int) -> int:
    """The node's free devices (native: _free_gpus; Python: NodeTable.free_gpus)."""
    return t.gpu_mask[s] & ~t.gpu_used[s]


def _verdict(t: Any, s: int, cpu: int, mem: int, gpu: int, topo: int, pool_ok: bytes, model_ok: bytes) -> int:
    if s < 0 or not t.flags[s] & FLAG_PRESENT:
        return UNKNOWN
    if t.flags[s] & FLAG_UNSCHEDULABLE:
        return UNSCHEDULABLE
    if pool_ok[t.pool[s]] == 0:
        return POOL
    if gpu > 0 and len(model_ok) > 0:
        m = t.model[s]
        if m < 0 or m >= len(model_ok) or model_ok[m] == 0:
            return MODEL
    if t.used_pods[s] + 1 > t.alloc_pods[s]:
        return PODS
    if t.used_cpu[s] + cpu > t.alloc_cpu[s]:
        return CPU
    if t.used_mem[s] + mem > t.alloc_mem[s]:
        return MEMORY
    if gpu > 0:
        free = _free_gpus(t, s)
        if free.bit_count() < gpu:
            return GPU
        if topo == TOPOLOGY_REQUIRED and best_island(t.islands, s, free, gpu)[0] < 0:
            return TOPOLOGY
    return OK


def best_island(islands: array, s: int, free: int, gpu: int) -> tuple[int, int]:
    """Best fit: the island with the fewest free GPUs that still holds `gpu`; (free, size) or (-1, 0)."""
    best = -1
    size = 0
    base = s * MAX_ISLANDS
    for k in range(MAX_ISLANDS):
        isl = islands[base + k]
        if isl == 0:
            continue
        c = (isl & free).bit_count()
        if c >= gpu and (best < 0 or c < best):
            best = c
            size = isl.bit_count()
    return best, size


def score_nodes(
    t: Any,
    slots: array,
    cpu: int,
    mem: int,
    gpu: int,
    topo: int,
    pool_ok: bytes,
    pool_avail: array,
    params: array,
    out: array,
) -> None:
    """Writes a 0..10 score per slot into `out` (nodes that do not fit score 0)."""
    for i in range(len(slots)):
        s = slots[i]
        if s < 0 or not t.flags[s] & FLAG_PRESENT:
            out[i] = 0
            continue
        total, wsum = node_score_parts(t, s, cpu, mem, gpu, pool_ok, pool_avail, params, None)
        out[i] = _final(total, wsum)


def _final(total: float, wsum: float) -> int:
    if wsum <= 0.0:
        return 0
    v = math.floor(total / wsum + 0.5)
    return 0 if v < 0 else 10 if v > 10 else int(v)


def node_score_parts(
    t: Any,
    s: int,
    cpu: int,
    mem: int,
    gpu: int,
    pool_ok: bytes,
    pool_avail: array,
    params: array,
    parts: dict[str, float] | None,
) -> tuple[float, float]:
    """Weighted sum and weight total for one node; fills `parts` (0..10 each) when given."""
    total = 0.0
    wsum = 0.0
    if gpu > 0:
        pack, fit = gpu_parts(t, s, gpu)
        total += params[W_PACK] * pack + params[W_TOPO] * fit
        wsum += params[W_PACK] + params[W_TOPO]
        if parts is not None:
            parts["gpu_packing"] = pack
            parts["topology"] = fit
    else:
        res = resource_part(t, s, cpu, mem, params[MOST_ALLOCATED] > 0.0)
        # CPU-only work keeps off GPU nodes, so whole GPU nodes stay free for GPU jobs.
        pack = 10.0 if t.alloc_gpu[s] == 0 else 0.0
        total += params[W_RES] * res + params[W_PACK] * pack
        wsum += params[W_RES] + params[W_PACK]
        if parts is not None:
            parts["resources"] = res
            parts["gpu_packing"] = pack
    load = t.load[s]
    if load >= 0.0 and params[NOW] - t.load_time[s] <= params[LOAD_MAX_AGE]:
        lp = 10.0 * (1.0 - load)
    else:
        lp = 5.0  # unknown or stale: neutral
    own = 10.0 if pool_ok[t.pool[s]] == 1 else 0.0
    avail = 10.0 * pool_avail[t.pool[s]]
    total += params[W_LOAD] * lp + params[W_POOL] * own + params[W_AVAIL] * avail
    wsum += params[W_LOAD] + params[W_POOL] + params[W_AVAIL]
    if parts is not None:
        parts["load"] = lp
        parts["pool"] = own
        parts["pool_availability"] = avail
    return total, wsum


def gpu_parts(t: Any, s: int, gpu: int) -> tuple[float, float]:
    """(packing, topology fit), each 0..10, for placing `gpu` GPUs on node `s`."""
    free = _free_gpus(t, s)
    nfree = free.bit_count()
    cap = t.alloc_gpu[s]
    if nfree < gpu or cap <= 0:
        return 0.0, 0.0
    if nfree == cap and gpu < cap:
        pack = 0.0  # never break an empty node while a partly used one can take the pod
    else:
        pack = (10 * (cap - nfree + gpu)) / cap
    best, size = best_island(t.islands, s, free, gpu)
    fit = 10.0 * (1.0 - (best - gpu) / size) if best >= 0 else 0.0
    return pack, fit


def resource_part(t: Any, s: int, cpu: int, mem: int, most: bool) -> float:
    """kube-scheduler's LeastAllocated / MostAllocated over cpu and memory, 0..10."""
    ac = t.alloc_cpu[s]
    am = t.alloc_mem[s]
    if ac <= 0 or am <= 0:
        return 0.0
    uc = t.used_cpu[s] + cpu
    um = t.used_mem[s] + mem
    if uc > ac or um > am:
        return 0.0
    # float() each operand as C's <double> casts do: int / int in Python divides exactly and rounds
    # once, which differs from C beyond 2**53 (nodes with ~1 PiB of memory) and can flip a score.
    if most:
        return (float(10 * uc) / float(ac) + float(10 * um) / float(am)) / 2.0
    return (float(10 * (ac - uc)) / float(ac) + float(10 * (am - um)) / float(am)) / 2.0


def choose_devices(islands: array, s: int, free: int, gpu: int, topo: int) -> int:
    """The device mask a pod gets at bind: the lowest free GPUs of the best-fit island; failing that
    (topology not required), GPUs from the islands with the fewest free GPUs first, so the largest
    free islands stay whole. 0 when it cannot be done. Runs once per bind, so only this twin exists."""
    if free.bit_count() < gpu or gpu <= 0:
        return 0
    best, _ = best_island(islands, s, free, gpu)
    base = s * MAX_ISLANDS
    masks = [islands[base + k] for k in range(MAX_ISLANDS) if islands[base + k]]
    if best >= 0:
        isl = next(m for m in masks if (m & free).bit_count() == best)
        return lowest_bits(isl & free, gpu)
    if topo == TOPOLOGY_REQUIRED:
        return 0
    chosen = 0
    for m in sorted(masks, key=lambda m: ((m & free).bit_count(), m)):
        chosen |= lowest_bits(m & free & ~chosen, gpu - chosen.bit_count())
        if chosen.bit_count() == gpu:
            return chosen
    rest = free & ~chosen  # GPUs in no island
    return chosen | lowest_bits(rest, gpu - chosen.bit_count())


def lowest_bits(mask: int, n: int) -> int:
    """The `n` lowest set bits of `mask` (the lowest free device indices)."""
    out = 0
    while n > 0 and mask:
        bit = mask & -mask
        out |= bit
        mask ^= bit
        n -= 1
    return out
