"""Pure-Python twins of the filter and score kernels (ext/_native.pyx): the reference implementation.

Both take the node table's arrays and one pod's request, and write one result per requested slot.
Keep the two files in step line for line: a property test checks they agree, and floating point
is computed in the same order in both so scores match exactly.
"""

import math
from array import array
from typing import Any

import orjson

from scheduler.model.constants import (
    CPU,
    FLAG_PRESENT,
    FLAG_UNSCHEDULABLE,
    GPU,
    GPU_MILLI,
    LOAD_MAX_AGE,
    MAX_GPUS,
    MAX_ISLANDS,
    MAX_REASONS,
    MEMORY,
    MODEL,
    MOST_ALLOCATED,
    NOW,
    OK,
    PODS,
    POOL,
    SHARE_FULL,
    SHARE_GPU_SHARED,
    SHARE_RESOURCE,
    TOPOLOGY,
    TOPOLOGY_NONE,
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


# ---- GPU sharing: the fractional path (filter_shared / score_shared), beside the whole-GPU one ----
# A pod asks `gpu` of nvidia.com/gpu and `shared` of nvidia.com/gpu.shared, optionally with a stated
# fraction (milli). Per node that becomes whole GPUs or a fraction of one (share_ask); whole asks and
# pods without GPUs take exactly the whole-GPU path above, so only fractions see new rules.


def share_ask(t: Any, s: int, gpu: int, shared: int, fraction: int) -> tuple[int, int]:
    """(whole GPUs, milli of one GPU) the pod holds on node `s`; whole -1: the node does not offer the
    resource asked. k replicas of a GPU with R replicas are k/R of it: whole GPUs when k is a multiple
    of R (or above R: rounded up), else ceil(1000 k / R) milli, or the stated fraction when larger."""
    r = t.replicas[s]
    if r < 1:
        r = 1
    if t.share_res[s] == SHARE_GPU_SHARED:
        k = shared
        other = gpu
    else:
        k = gpu
        other = shared
    if other > 0:
        return -1, 0
    if k <= 0:
        return 0, 0
    if r == 1:
        return k, 0
    if k >= r:
        return (k + r - 1) // r, 0
    m = (k * GPU_MILLI + r - 1) // r
    if fraction > m:
        m = fraction
    if m >= GPU_MILLI:
        return 1, 0
    return 0, m


def best_share(t: Any, s: int, m: int) -> tuple[int, int]:
    """Best fit for a fraction of `m` milli: the partly shared device with the least room that still
    holds it (lowest index among equals), else the lowest idle device; (device, milli held before) or
    (-1, 0). A device a whole-GPU pod holds is never shared."""
    base = s * MAX_GPUS
    n = t.alloc_gpu[s]
    best = -1
    held = 0
    for g in range(n):
        u = t.gpu_milli[base + g]
        if u > 0 and u + m <= GPU_MILLI and u > held:
            best = g
            held = u
    if best >= 0:
        return best, held
    free = _free_gpus(t, s)
    if free:
        return (free & -free).bit_length() - 1, 0
    return -1, 0


def filter_shared(
    t: Any,
    slots: array,
    cpu: int,
    mem: int,
    gpu: int,
    shared: int,
    fraction: int,
    topo: int,
    pool_ok: bytes,
    model_ok: bytes,
    out: bytearray,
) -> int:
    """filter_nodes for a pod that may hold a fraction, or any pod on a cluster with shared nodes."""
    passed = 0
    for i in range(len(slots)):
        v = _verdict_shared(t, slots[i], cpu, mem, gpu, shared, fraction, topo, pool_ok, model_ok)
        out[i] = v
        if v == OK:
            passed += 1
    return passed


def node_verdict_shared(
    t: Any, s: int, cpu: int, mem: int, gpu: int, shared: int, fraction: int, topo: int, pool_ok: bytes, model_ok: bytes
) -> int:
    if s >= len(t.flags):
        return UNKNOWN
    return _verdict_shared(t, s, cpu, mem, gpu, shared, fraction, topo, pool_ok, model_ok)


def _verdict_shared(
    t: Any, s: int, cpu: int, mem: int, gpu: int, shared: int, fraction: int, topo: int, pool_ok: bytes, model_ok: bytes
) -> int:
    if s < 0 or not t.flags[s] & FLAG_PRESENT:
        return UNKNOWN
    whole, m = share_ask(t, s, gpu, shared, fraction)
    if m == 0 and whole >= 0:
        return _verdict(t, s, cpu, mem, whole, topo, pool_ok, model_ok)
    if t.flags[s] & FLAG_UNSCHEDULABLE:
        return UNSCHEDULABLE
    if pool_ok[t.pool[s]] == 0:
        return POOL
    if len(model_ok) > 0:
        md = t.model[s]
        if md < 0 or md >= len(model_ok) or model_ok[md] == 0:
            return MODEL
    if t.used_pods[s] + 1 > t.alloc_pods[s]:
        return PODS
    if t.used_cpu[s] + cpu > t.alloc_cpu[s]:
        return CPU
    if t.used_mem[s] + mem > t.alloc_mem[s]:
        return MEMORY
    if whole < 0:
        return SHARE_RESOURCE
    if best_share(t, s, m)[0] < 0:
        return SHARE_FULL
    return OK


def share_parts(t: Any, s: int, m: int) -> tuple[float, float]:
    """(packing, share fit), each 0..10, for a fraction of `m` milli on node `s`. Share fit: how full the
    chosen GPU is after (10: the fraction fills a shared GPU; m/100 when it opens an idle one). Packing:
    the node's GPU milli in use after, over its capacity, but 0 on an idle node (never break one)."""
    g, held = best_share(t, s, m)
    cap = t.alloc_gpu[s]
    if g < 0 or cap <= 0:
        return 0.0, 0.0
    base = s * MAX_GPUS
    used = 0
    nshared = 0
    for k in range(cap):
        u = t.gpu_milli[base + k]
        if u > 0:
            used += u
            nshared += 1
    used += ((t.gpu_used[s] & t.gpu_mask[s]).bit_count() - nshared) * GPU_MILLI
    fit = float(10 * (held + m)) / float(GPU_MILLI)
    pack = 0.0 if used == 0 else float(10 * (used + m)) / float(cap * GPU_MILLI)
    return pack, fit


def score_shared(
    t: Any,
    slots: array,
    cpu: int,
    mem: int,
    gpu: int,
    shared: int,
    fraction: int,
    topo: int,
    pool_ok: bytes,
    pool_avail: array,
    params: array,
    out: array,
) -> None:
    """score_nodes for the shared path: whole asks and pods without GPUs score as score_nodes does."""
    for i in range(len(slots)):
        s = slots[i]
        if s < 0 or not t.flags[s] & FLAG_PRESENT:
            out[i] = 0
            continue
        total, wsum = shared_score_parts(t, s, cpu, mem, gpu, shared, fraction, pool_ok, pool_avail, params, None)
        out[i] = _final(total, wsum)


def shared_score_parts(
    t: Any,
    s: int,
    cpu: int,
    mem: int,
    gpu: int,
    shared: int,
    fraction: int,
    pool_ok: bytes,
    pool_avail: array,
    params: array,
    parts: dict[str, float] | None,
) -> tuple[float, float]:
    """node_score_parts for the shared path; a fraction's parts are gpu_packing and share_fit (weighted
    as gpu_packing and topology), then load, pool and pool_availability as for every pod."""
    whole, m = share_ask(t, s, gpu, shared, fraction)
    if m == 0 and whole >= 0:
        return node_score_parts(t, s, cpu, mem, whole, pool_ok, pool_avail, params, parts)
    if whole < 0:
        return 0.0, 0.0
    pack, fit = share_parts(t, s, m)
    total = params[W_PACK] * pack + params[W_TOPO] * fit
    wsum = params[W_PACK] + params[W_TOPO]
    if parts is not None:
        parts["gpu_packing"] = pack
        parts["share_fit"] = fit
        parts["gpu_milli"] = float(m)
    load = t.load[s]
    if load >= 0.0 and params[NOW] - t.load_time[s] <= params[LOAD_MAX_AGE]:
        lp = 10.0 * (1.0 - load)
    else:
        lp = 5.0
    own = 10.0 if pool_ok[t.pool[s]] == 1 else 0.0
    avail = 10.0 * pool_avail[t.pool[s]]
    total += params[W_LOAD] * lp + params[W_POOL] * own + params[W_AVAIL] * avail
    wsum += params[W_LOAD] + params[W_POOL] + params[W_AVAIL]
    if parts is not None:
        parts["load"] = lp
        parts["pool"] = own
        parts["pool_availability"] = avail
    return total, wsum


def choose_share_device(t: Any, s: int, m: int) -> int:
    """The device a fraction gets at bind: a partly shared one by best fit, else an idle GPU of the
    best-fit island (as a 1-GPU pod would get), so whole islands stay free. -1 when none fits."""
    g, held = best_share(t, s, m)
    if g < 0 or held > 0:
        return g
    mask = choose_devices(t.islands, s, _free_gpus(t, s), 1, TOPOLOGY_NONE)
    return (mask & -mask).bit_length() - 1 if mask else g


# ---- reply builders (twins of the native ones in ext/_native.pyx) ----

_SCORE = [f',"Score":{k}}}'.encode() for k in range(11)]


def prioritize_json(frags: list[bytes], scores: array) -> bytes:
    """HostPriorityList: [{"Host":"n1","Score":7},...] from pre-quoted names."""
    items = (b'{"Host":' + f + _SCORE[min(10, max(0, s))] for f, s in zip(frags, scores, strict=True))
    return b"[" + b",".join(items) + b"]"


def pick_json(frags: list[bytes], verdicts: bytes, want: int) -> bytes:
    """The quoted names whose verdict is `want`, comma-separated (the inside of a JSON array)."""
    return b",".join(f for f, v in zip(frags, verdicts, strict=True) if v == want)


def _too_small(t: Any, s: int, code: int, cpu: int, mem: int, gpu: int) -> int:
    if code == CPU:
        return int(t.alloc_cpu[s] < cpu)
    if code == MEMORY:
        return int(t.alloc_mem[s] < mem)
    if code == GPU:
        return int(t.alloc_gpu[s] < gpu)
    if code == TOPOLOGY:
        base = s * MAX_ISLANDS
        return int(max(t.islands[base + k].bit_count() for k in range(MAX_ISLANDS)) < gpu)
    return 0


def reason_ids(
    t: Any, slots: array, verdicts: bytes, cpu: int, mem: int, gpu: int, out: array
) -> list[tuple[int, int]]:
    """Groups failed nodes by the sentence they get: out[i] indexes the returned list of
    (code, sample slot); -1 for nodes that passed."""
    keys: dict[int, int] = {}
    distinct: list[tuple[int, int]] = []
    for i in range(len(slots)):
        code = verdicts[i]
        s = slots[i]
        if code == OK:
            out[i] = -1
            continue
        if code == UNKNOWN or s < 0:
            key = UNKNOWN << 40
        elif code == POOL:
            key = (code << 40) | t.pool[s]
        elif code == MODEL:
            key = (code << 40) | (t.model[s] + 1)
        else:
            key = (code << 40) | _too_small(t, s, code, cpu, mem, gpu)
        j = keys.get(key)
        if j is None:
            if len(distinct) < MAX_REASONS:
                j = keys[key] = len(distinct)
                distinct.append((code, s))
            else:
                j = MAX_REASONS - 1  # more distinct sentences than that: the rest share the last one
        out[i] = j
    return distinct


def failed_json(frags: list[bytes], ids: array, texts: list[bytes], hard: bytes) -> tuple[bytes, bytes, int, int]:
    """The insides of FailedNodes and FailedAndUnresolvableNodes for nodes whose ids[i] >= 0, and
    how many nodes each holds."""
    parts: tuple[list[bytes], list[bytes]] = ([], [])
    for f, idx in zip(frags, ids, strict=True):
        if idx >= 0:
            parts[hard[idx]].append(f + b":" + texts[idx])
    return b",".join(parts[0]), b",".join(parts[1]), len(parts[0]), len(parts[1])


def map_names(t: Any, body: bytes, start: int, end: int) -> tuple[array, list[str], list[bytes]] | None:
    """body[start:end] is the inside of a NodeNames array as Go writes it ("a","b", no spaces, no
    escapes): its slots (-1 for names not in the table), names and quoted names, the table's own
    objects where the name is known. None for anything else: the caller takes the general JSON path."""
    inner = body[start:end]
    if b"\\" in inner:
        return None
    try:
        names = orjson.loads(b"[" + inner + b"]")
    except orjson.JSONDecodeError:
        return None
    if any(type(n) is not str for n in names):
        return None
    get = t.slot_of.get
    slots = array("i", [get(n, -1) for n in names])
    frags = [t.quoted[s] if s >= 0 else orjson.dumps(n) for s, n in zip(slots, names, strict=True)]
    if b",".join(frags) != inner:  # whitespace or another spelling: not Go's bytes
        return None
    return slots, [t.names[s] if s >= 0 else n for s, n in zip(slots, names, strict=True)], frags
