"""Pure-Python twins of the filter and score kernels (ext/_native.pyx): the reference implementation.

Both take the node table's arrays and one pod's request, and write one result per requested slot.
Keep the two files in step line for line: a property test checks they agree, and floating point
is computed in the same order in both so scores match exactly.
"""

import math
from array import array
from collections.abc import Iterable
from typing import Any

# The reply builders' twins live in _python_replies.py; re-exported so the selector finds every whole-GPU
# twin in this module, as it finds every native kernel in one.
from scheduler.kernels._python_replies import failed_json as failed_json
from scheduler.kernels._python_replies import map_names as map_names
from scheduler.kernels._python_replies import pick_json as pick_json
from scheduler.kernels._python_replies import prioritize_json as prioritize_json
from scheduler.kernels._python_replies import reason_ids as reason_ids
from scheduler.model.constants import (
    BETTER_FIT,
    CPU,
    D_CPU,
    D_GPUS,
    D_INV_GPUS,
    D_MEM,
    D_WEIGHT,
    DEMAND_BASE,
    DEMAND_BUCKETS,
    DEMAND_FIELDS,
    FLAG_PRESENT,
    FLAG_UNSCHEDULABLE,
    GPU,
    LOAD_MAX_AGE,
    MAX_ISLANDS,
    MAX_NODE_CPU,
    MAX_NODE_GPUS,
    MAX_NODE_MEM,
    MEMORY,
    MODEL,
    MOST_ALLOCATED,
    N_PARAMS,
    NOW,
    OK,
    POD_ANY_MODEL,
    POD_END,
    PODS,
    POOL,
    PROTECT_AT,
    SCARCITY_BASE,
    SCARCITY_MODELS,
    STRAND_EXTRA,
    TOPOLOGY,
    TOPOLOGY_REQUIRED,
    UNKNOWN,
    UNSCHEDULABLE,
    W_AVAIL,
    W_FIT,
    W_FRAG,
    W_LOAD,
    W_MAINT,
    W_PACK,
    W_POOL,
    W_RES,
    W_SCARCE,
    W_TOPO,
)


def filter_nodes(
    t: Any,
    slots: array,
    cpu: int,
    mem: int,
    gpu: int,
    topo: int,
    pool_ok: bytes,
    model_ok: bytes,
    out: bytearray,
    order: array | None = None,
) -> int:
    """Writes a verdict per slot into `out`; returns how many nodes passed. `order`: slot_order(slots), the
    positions to visit (None: 0..n-1); the verdicts are the same (the kernel reads the arrays in table order)."""
    passed = 0
    for i in _visit(order, len(slots)):
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
    """Writes a 0..10 score per slot into `out` (the weighted mean rounded; absent nodes score 0)."""
    if len(params) < N_PARAMS:
        raise ValueError("params: fewer than N_PARAMS values")
    for i in range(len(slots)):
        s = slots[i]
        if s < 0 or not t.flags[s] & FLAG_PRESENT:
            out[i] = 0
            continue
        total, wsum = node_score_parts(t, s, cpu, mem, gpu, pool_ok, pool_avail, params, None)
        out[i] = _final(total, wsum)


def score_raw(
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
    verdicts: bytes = b"",
    order: array | None = None,
) -> None:
    """Writes the unrounded weighted mean (0..10) per slot into the doubles `out`; -1 for absent nodes and,
    when `verdicts` (the filter's, one per slot) is given, for nodes that did not pass. `order`: as
    filter_nodes'."""
    if len(params) < N_PARAMS:
        raise ValueError("params: fewer than N_PARAMS values")
    check = len(verdicts) > 0
    for i in _visit(order, len(slots)):
        s = slots[i]
        if s < 0 or not t.flags[s] & FLAG_PRESENT or (check and verdicts[i] != OK):
            out[i] = -1.0
            continue
        total, wsum = node_score_parts(t, s, cpu, mem, gpu, pool_ok, pool_avail, params, None)
        out[i] = total / wsum if wsum > 0.0 else 0.0


def _visit(order: array | None, n: int) -> Iterable[int]:
    if order is None:
        return range(n)
    if len(order) != n:
        raise ValueError("order: not one position per slot")
    return order


def free_by_model(t: Any, out: array) -> None:
    """Adds each node's free GPUs to out[its model id] (models beyond out are left out)."""
    k = len(out)
    for s in range(len(t.flags)):
        m = t.model[s]
        if 0 <= m < k and t.flags[s] & FLAG_PRESENT:
            out[m] += _free_gpus(t, s).bit_count()


def normalize_scores(raw: array, out: array) -> None:
    """Min-max over the candidates (raw >= 0) onto 0..10, rounded: the best scores 10, the worst 0, all
    equal all 10; absent nodes (raw < 0) 0."""
    lo = hi = -1.0
    for x in raw:
        if x >= 0.0:
            if hi < 0.0 or x > hi:
                hi = x
            if lo < 0.0 or x < lo:
                lo = x
    span = hi - lo
    for i in range(len(raw)):
        x = raw[i]
        if x < 0.0:
            out[i] = 0
        elif span <= 1e-9:
            out[i] = 10
        else:
            v = math.floor(10.0 * (x - lo) / span + 0.5)
            out[i] = 0 if v < 0 else 10 if v > 10 else int(v)


def best_tier(raw: array, verdicts: bytearray, margin: float) -> int:
    """Nodes that passed but score more than `margin` below the best that passed get BETTER_FIT;
    returns how many still pass."""
    hi = -1.0
    for i in range(len(raw)):
        if verdicts[i] == OK and raw[i] > hi:
            hi = raw[i]
    passed = 0
    for i in range(len(raw)):
        if verdicts[i] == OK:
            if raw[i] < hi - margin:
                verdicts[i] = BETTER_FIT
            else:
                passed += 1
    return passed


def pick_raw(raw: array, keep: bytes, want: int) -> array:
    """The raw scores whose `keep` entry is `want`, in order."""
    if len(keep) < len(raw):
        raise ValueError("keep: fewer than raw")
    return array("d", [x for x, k in zip(raw, keep, strict=False) if k == want])


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
        frag = frag_part(t, s, cpu, mem, gpu, params)
        scarce = scarcity_part(t, s, params)
        bf = fit_part(t, s, cpu, mem, gpu, params)
        total += params[W_PACK] * pack + params[W_TOPO] * fit + params[W_FRAG] * frag + params[W_SCARCE] * scarce
        total += params[W_FIT] * bf
        wsum += params[W_PACK] + params[W_TOPO] + params[W_FRAG] + params[W_SCARCE] + params[W_FIT]
        if parts is not None:
            parts["gpu_packing"] = pack
            parts["topology"] = fit
            parts["fragmentation"] = frag
            parts["scarcity"] = scarce
            parts["best_fit"] = bf
    else:
        res = resource_part(t, s, cpu, mem, params[MOST_ALLOCATED] > 0.0)
        # CPU-only work keeps off GPU nodes, so whole GPU nodes stay free for GPU jobs.
        pack = cpu_pod_gpu_part(t, s, cpu, mem, params)
        total += params[W_RES] * res + params[W_PACK] * pack
        wsum += params[W_RES] + params[W_PACK]
        if parts is not None:
            parts["resources"] = res
            parts["gpu_packing"] = pack
    common, weights = common_parts(t, s, pool_ok, pool_avail, params, parts)
    total += common
    wsum += weights
    if gpu > 0 and params[POD_ANY_MODEL] > 0.0:
        # The scarce-model tier, lexicographic over the weighted mean r (0..10): a protected node scores
        # r / 10 (0..1), every other 1 + 0.9 r (1..10), so an unconstrained pod takes a protected model only
        # where nothing else fits. As sums: r' * wsum.
        if protected(t, s, params):
            total = 0.1 * total
            if parts is not None:
                parts["protected"] = 1.0
        else:
            total = wsum + 0.9 * total
            if parts is not None:
                parts["protected"] = 0.0
    return total, wsum


def protected(t: Any, s: int, params: array) -> bool:
    """The node's GPU model is kept for the pods constrained to it: its pressure reaches PROTECT_AT."""
    m = t.model[s]
    if m < 0 or m >= SCARCITY_MODELS:
        return False
    pressure = params[SCARCITY_BASE + m]
    return pressure > 0.0 and pressure >= params[PROTECT_AT]


def common_parts(
    t: Any, s: int, pool_ok: bytes, pool_avail: array, params: array, parts: dict[str, float] | None
) -> tuple[float, float]:
    """Load, pool, pool availability and maintenance: the parts every pod has; (weighted sum, weights)."""
    load = t.load[s]
    if load >= 0.0 and params[NOW] - t.load_time[s] <= params[LOAD_MAX_AGE]:
        lp = 10.0 * (1.0 - load)
    else:
        lp = 5.0  # unknown or stale: neutral
    own = 10.0 if pool_ok[t.pool[s]] == 1 else 0.0
    avail = 10.0 * pool_avail[t.pool[s]]
    mt = maintenance_part(t, s, params)
    if parts is not None:
        parts["load"] = lp
        parts["pool"] = own
        parts["pool_availability"] = avail
        parts["maintenance"] = mt
    weights = params[W_LOAD] + params[W_POOL] + params[W_AVAIL] + params[W_MAINT]
    return params[W_LOAD] * lp + params[W_POOL] * own + params[W_AVAIL] * avail + params[W_MAINT] * mt, weights


def maintenance_part(t: Any, s: int, params: array) -> float:
    """10 unless the node is due for maintenance (names.ANN_MAINTENANCE) before the pod is expected to end;
    a pod that states no end (params[POD_END] 0) is long-running and scores such a node 0."""
    when = t.maint[s]
    if when <= 0.0:
        return 10.0
    if params[POD_END] > 0.0 and params[POD_END] <= when:
        return 10.0
    return 0.0


def fit_part(t: Any, s: int, cpu: int, mem: int, gpu: int, params: array) -> float:
    """Best fit over GPUs, CPU and memory, 0..10: 10 * (1 - the mean of what the node has free after the
    pod, each over the largest GPU node's amount). The fullest, smallest nodes first: the roomy ones stay
    free for the pods only they can hold."""
    g = float(_free_gpus(t, s).bit_count() - gpu)
    c = float(t.alloc_cpu[s] - t.used_cpu[s] - cpu)
    m = float(t.alloc_mem[s] - t.used_mem[s] - mem)
    sg, sc, sm = params[MAX_NODE_GPUS], params[MAX_NODE_CPU], params[MAX_NODE_MEM]
    if g < 0.0 or c < 0.0 or m < 0.0:
        return 0.0
    if sg <= 0.0:
        sg = float(t.alloc_gpu[s]) if t.alloc_gpu[s] > 0 else 1.0
    if sc <= 0.0:
        sc = float(t.alloc_cpu[s]) if t.alloc_cpu[s] > 0 else 1.0
    if sm <= 0.0:
        sm = float(t.alloc_mem[s]) if t.alloc_mem[s] > 0 else 1.0
    v = 10.0 * (1.0 - (g / sg + c / sc + m / sm) / 3.0)
    return 0.0 if v < 0.0 else 10.0 if v > 10.0 else v


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
    if best >= 0:
        fit = 10.0 * (1.0 - (best - gpu) / size)
    elif t.islands[s * MAX_ISLANDS] == 0:
        # No islands declared: the node's GPUs count as one island (best fit by the GPUs left free).
        fit = 10.0 * (1.0 - (nfree - gpu) / cap)
    else:
        fit = 0.0
    return pack, fit


def unusable_gpus(t: Any, s: int, g: int, c: int, m: int, params: array) -> float:
    """Expected free GPUs a recent ask could not use on node `s` with `g` free GPUs, `c` free millicores
    and `m` free bytes: per bucket of the demand histogram (k GPUs per pod, typical CPU and memory per
    GPU, or the node's own ratio when unknown), the free GPUs beyond what whole pods of that bucket could
    take, weighted by the bucket's share of asked GPUs."""
    return unusable_split(t, s, g, c, m, params)[0]


def unusable_split(t: Any, s: int, g: int, c: int, m: int, params: array) -> tuple[float, float]:
    """(unusable_gpus, the part of it GPU counts alone explain): their difference is the GPUs left without
    the CPU or memory to use them."""
    cap = t.alloc_gpu[s]
    if cap <= 0 or g <= 0:
        return 0.0, 0.0
    f = 0.0
    fg = 0.0
    own_c = own_m = -1.0  # the node's own ratios, worked out only when a bucket has no typical value
    for b in range(DEMAND_BUCKETS):
        base = DEMAND_BASE + b * DEMAND_FIELDS
        w = params[base + D_WEIGHT]
        k = params[base + D_GPUS]
        if w <= 0.0 or k < 1.0:
            continue
        # floor(g / k) by a multiplication (exact for the power-of-two buckets; + 1e-9 absorbs the rounding
        # of 1/k otherwise, g <= 64); truncation is floor here, the value is not negative
        n = float(int(float(g) * params[base + D_INV_GPUS] + 1e-9))
        fg += w * (float(g) - k * n)
        if n > 0.0:  # no whole pod of this bucket fits the GPUs: no need to look at CPU and memory
            pc = params[base + D_CPU]
            pm = params[base + D_MEM]
            if pc <= 0.0:
                if own_c < 0.0:
                    own_c = float(t.alloc_cpu[s]) / float(cap)
                pc = own_c
            if pm <= 0.0:
                if own_m < 0.0:
                    own_m = float(t.alloc_mem[s]) / float(cap)
                pm = own_m
            # Divide only where CPU or memory is what limits (rare): then the quotient is below n <= 64,
            # so truncating it is its floor.
            if pc > 0.0 and float(c) < n * k * pc:
                n = float(int(float(c) / (k * pc)))
            if pm > 0.0 and float(m) < n * k * pm:
                n = float(int(float(m) / (k * pm)))
        f += w * (float(g) - k * n)
    return f, fg


def frag_part(t: Any, s: int, cpu: int, mem: int, gpu: int, params: array) -> float:
    """0..10: how little the placement adds to the node's expected unusable GPUs (FGD's gradient over every
    dimension). 10 when it only takes GPUs nobody could use anyway; lower by the GPUs it leaves unusable,
    and STRAND_EXTRA times more by those it leaves without the CPU or memory to use them."""
    nfree = _free_gpus(t, s).bit_count()
    c = t.alloc_cpu[s] - t.used_cpu[s]
    m = t.alloc_mem[s] - t.used_mem[s]
    if nfree < gpu or c < cpu or m < mem:
        return 0.0
    before, before_g = unusable_split(t, s, nfree, c, m, params)
    after, after_g = unusable_split(t, s, nfree - gpu, c - cpu, m - mem, params)
    strand = (after - after_g) - (before - before_g)
    if strand < 0.0:
        strand = 0.0
    kmax = params[DEMAND_BASE + (DEMAND_BUCKETS - 1) * DEMAND_FIELDS + D_GPUS]
    v = 10.0 * (1.0 - (after - before + float(gpu) + float(STRAND_EXTRA) * strand) / (float(gpu) + kmax))
    return 0.0 if v < 0.0 else 10.0 if v > 10.0 else v


def scarcity_part(t: Any, s: int, params: array) -> float:
    """10 * (1 - the constrained pressure on the node's GPU model)."""
    m = t.model[s]
    if m < 0 or m >= SCARCITY_MODELS:
        return 10.0
    return 10.0 * (1.0 - params[SCARCITY_BASE + m])


def cpu_pod_gpu_part(t: Any, s: int, cpu: int, mem: int, params: array) -> float:
    """0..10 for a pod without GPUs: 10 on nodes without GPUs, 0 on GPU nodes whose GPUs are all idle
    (never break an empty GPU node) and where the CPU or memory it takes strands a GPU (leaves one
    without what it needs for a recent ask), else 9 x (1 - free GPUs / twice the node's) x (1 - the GPUs
    it strands, expected) x (1 - half the node's GPUs over the largest GPU node's): fully used GPU nodes,
    then nodes with CPU to spare beyond their free GPUs' needs, small GPU nodes before large ones."""
    cap = t.alloc_gpu[s]
    if cap <= 0:
        return 10.0
    nfree = _free_gpus(t, s).bit_count()
    if nfree >= cap:
        return 0.0
    c = t.alloc_cpu[s] - t.used_cpu[s]
    m = t.alloc_mem[s] - t.used_mem[s]
    if c < cpu or m < mem:
        return 0.0
    added = unusable_gpus(t, s, nfree, c - cpu, m - mem, params) - unusable_gpus(t, s, nfree, c, m, params)
    if added >= 1.0:
        return 0.0  # it would strand a GPU: as bad as breaking an idle node
    # Small GPU nodes first: the CPU of the nodes only large GPU asks can fill stays for those asks.
    big = params[MAX_NODE_GPUS] if params[MAX_NODE_GPUS] >= float(cap) else float(cap)
    return 9.0 * (1.0 - float(nfree) / (2.0 * float(cap))) * (1.0 - added) * (1.0 - 0.5 * float(cap) / big)


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


def slot_order(slots: array, size: int) -> array:
    """The positions 0..n-1 of `slots` sorted by slot, stably, slots -1 (and any outside 0..size-1) first
    (the kernels' counting sort gives the same)."""
    return array("i", sorted(range(len(slots)), key=lambda i: slots[i] + 1 if 0 <= slots[i] < size else 0))
