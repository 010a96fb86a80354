"""Pure-Python twins of the GPU-sharing kernels (ext/_native.pyx): filter and score for pods that may hold a
fraction of a GPU, on nodes that share theirs. The reference, like _python.py, whose whole-GPU rules it
reuses (the dependency runs one way: this module imports that one); a property test holds both
implementations equal."""

from array import array
from typing import Any

from scheduler.kernels._python import (
    _final,
    _free_gpus,
    _verdict,
    _visit,
    choose_devices,
    common_parts,
    node_score_parts,
)
from scheduler.model.constants import (
    CPU,
    FLAG_PRESENT,
    FLAG_UNSCHEDULABLE,
    GPU_MILLI,
    MAX_GPUS,
    MEMORY,
    MODEL,
    N_PARAMS,
    OK,
    PODS,
    POOL,
    SHARE_FULL,
    SHARE_GPU_SHARED,
    SHARE_RESOURCE,
    TOPOLOGY_NONE,
    UNKNOWN,
    UNSCHEDULABLE,
    W_PACK,
    W_SHARE,
)

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
    order: array | None = None,
) -> int:
    """filter_nodes for a pod that may hold a fraction, or any pod on a cluster with shared nodes."""
    passed = 0
    for i in _visit(order, len(slots)):
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


def score_shared_raw(
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
    verdicts: bytes = b"",
    order: array | None = None,
) -> None:
    """score_raw for the shared path: the unrounded weighted mean per slot into the doubles `out`; -1 for
    absent nodes and, when `verdicts` is given, for nodes that did not pass. Whole asks and pods without
    GPUs score as score_raw does. `order`: as filter_nodes'."""
    if len(params) < N_PARAMS:
        raise ValueError("params: fewer than N_PARAMS values")
    check = len(verdicts) > 0
    for i in _visit(order, len(slots)):
        s = slots[i]
        if s < 0 or not t.flags[s] & FLAG_PRESENT or (check and verdicts[i] != OK):
            out[i] = -1.0
            continue
        total, wsum = shared_score_parts(t, s, cpu, mem, gpu, shared, fraction, pool_ok, pool_avail, params, None)
        out[i] = total / wsum if wsum > 0.0 else 0.0


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
    """node_score_parts for the shared path; a fraction's parts are gpu_packing and share_fit (weights
    gpu_packing and share_fit), then load, pool, pool_availability and maintenance as for every pod."""
    whole, m = share_ask(t, s, gpu, shared, fraction)
    if m == 0 and whole >= 0:
        return node_score_parts(t, s, cpu, mem, whole, pool_ok, pool_avail, params, parts)
    if whole < 0:
        return 0.0, 0.0
    pack, fit = share_parts(t, s, m)
    total = params[W_PACK] * pack + params[W_SHARE] * fit
    wsum = params[W_PACK] + params[W_SHARE]
    if parts is not None:
        parts["gpu_packing"] = pack
        parts["share_fit"] = fit
        parts["gpu_milli"] = float(m)
    common, weights = common_parts(t, s, pool_ok, pool_avail, params, parts)
    return total + common, wsum + weights


def choose_share_device(t: Any, s: int, m: int) -> int:
    """The device a fraction gets at bind: a partly shared one by best fit, else an idle GPU of the
    best-fit island (as a 1-GPU pod would get), so whole islands stay free. -1 when none fits."""
    g, held = best_share(t, s, m)
    if g < 0 or held > 0:
        return g
    mask = choose_devices(t.islands, s, _free_gpus(t, s), 1, TOPOLOGY_NONE)
    return (mask & -mask).bit_length() - 1 if mask else g
