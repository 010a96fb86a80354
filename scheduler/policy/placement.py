"""Filter and prioritize for one pod: quota admission, then the kernels over the requested nodes,
then reasons a person can act on. Runs on the event loop without awaiting."""

import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from scheduler import kernels as K
from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState, pod_key
from scheduler.config import Config
from scheduler.model.constants import (
    BETTER_FIT,
    DRA_DEVICES,
    DRA_DEVICES_USED,
    DRA_QUOTA,
    LOAD_MAX_AGE,
    MOST_ALLOCATED,
    N_PARAMS,
    NOW,
    OTHER_RESOURCE,
    OTHER_RESOURCE_USED,
    POD_ANY_MODEL,
    POD_END,
    SHARE_GPU_SHARED,
    WEIGHT_INDEX,
    WEIGHT_NAMES,
)
from scheduler.model.names import ANN_GPU_MODELS, ANN_TOPOLOGY_POLICY, GPU, GPU_SHARED
from scheduler.model.podspec import PodAsk
from scheduler.model.quantity import format_units
from scheduler.policy.demand import Demand, demand_of
from scheduler.policy.quotas import Admission

REASON_NAMES = {
    DRA_DEVICES: "dra_devices",
    DRA_DEVICES_USED: "dra_devices_in_use",
    DRA_QUOTA: "dra_quota",
    OTHER_RESOURCE: "extended_resource",
    OTHER_RESOURCE_USED: "extended_resource_in_use",
    K.UNKNOWN: "node_unknown",
    K.UNSCHEDULABLE: "node_not_ready",
    K.POOL: "pool",
    K.MODEL: "gpu_model",
    K.PODS: "too_many_pods",
    K.CPU: "insufficient_cpu",
    K.MEMORY: "insufficient_memory",
    K.GPU: "insufficient_gpu",
    K.TOPOLOGY: "topology",
    K.SHARE_FULL: "insufficient_gpu_share",
    K.SHARE_RESOURCE: "gpu_share_resource",
    BETTER_FIT: "better_fit",
}


@dataclass(slots=True)
class Judgement:
    """Everything the kernels need for one pod, built once per call."""

    ask: PodAsk
    admission: Admission
    pool_ok: bytes  # per pool id: 0 refused, 1 own (or open), 2 cohort pool while borrowing
    model_ok: bytes  # per GPU model id (empty: any model)
    dra: Any = None  # policy/devices.DraVerdicts once the pod's DRA asks were judged (its per-node sentences)
    scored: "Scored | None" = None  # the raw scores run_filter computed for the best tier, if it did


# How long filter's raw scores may stand in for prioritize's. kube-scheduler calls prioritize right after
# filter (microseconds to a few milliseconds); the key below catches every change of what the scores read
# except the clock, which only the load part's freshness and the maintenance part read, in seconds.
REUSE_SECONDS = 1.0


@dataclass(slots=True)
class Scored:
    """Raw scores that filter computed (for the best tier), one per name of the list it judged: the
    prioritize call that follows sends exactly filter's survivors, so it normalises these instead of
    scoring the nodes again (the score is filter's largest cost, docs/BENCHMARKS.md). Valid while the
    key holds: the same pod, and nothing the kernels read changed."""

    key: tuple[Any, ...]
    at: float
    raw: array


def score_key(state: ClusterState, j: Judgement) -> tuple[Any, ...]:
    """What a pod's raw scores are computed from, besides the clock: the pod, the table's facts and usage
    (NodeTable.changes, bumped by every write), the slots' names, the demand histogram, the quota book, the
    open pools and models, the scoring configuration."""
    t = state.table
    return (
        j.ask,
        t.changes,
        t.version,
        demand_of(state).recorded,
        state.quotas.version,
        j.pool_ok,
        j.model_ok,
        id(state.config.scoring),
    )


def reusable(state: ClusterState, j: Judgement, scored: "Scored | None", n: int) -> array | None:
    """`scored`'s raw scores when they still hold for this pod and these `n` names, else None."""
    if scored is None or len(scored.raw) != n or time.monotonic() - scored.at > REUSE_SECONDS:
        return None
    return scored.raw if scored.key == score_key(state, j) else None


def judge(state: ClusterState, ask: PodAsk) -> Judgement:
    admission = state.quotas.admit(ask)
    pools = state.table.pools
    if admission.error:
        pool_ok = bytes(len(pools) + 1)
    elif admission.own_pools is None:
        pool_ok = b"\x01" * (len(pools) + 1)
    else:
        own, cohort = admission.own_pools, admission.cohort_pools if admission.borrowing else frozenset()
        pool_ok = bytes(1 if p in own else 2 if p in cohort else 0 for p in pools) + b"\x00"
    return Judgement(ask, admission, pool_ok, _model_ok(state, ask, admission))


def _model_ok(state: ClusterState, ask: PodAsk, admission: Admission) -> bytes:
    if (ask.request.gpu <= 0 and ask.request.gpu_shared <= 0) or (not ask.gpu_models and not admission.blocked_models):
        return b""
    wanted = set(ask.gpu_models)
    return (
        bytes(1 if (not wanted or m in wanted) and m not in admission.blocked_models else 0 for m in state.table.models)
        + b"\x00"
    )  # never empty once asked: empty means "any model" to the kernels


def sharing(state: ClusterState, j: Judgement) -> bool:
    """The GPU-sharing kernels judge the pod: it may hold a fraction, or some node shares its GPUs.
    They give the same verdicts and scores as the whole-GPU kernels wherever no fraction is involved."""
    return j.ask.request.sharing or bool(state.table.shared_slots)


def run_filter(
    state: ClusterState,
    j: Judgement,
    slots: array,
    record: bool = True,
    tier: bool = True,
    order: array | None = None,
) -> tuple[bytearray, int]:
    """The filter kernel's verdicts, then (scoring.filter_best_tier) only the best tier passes. `record`:
    count the pod in the demand histogram (the filter verb does; explain does not). `tier=False` for pods
    judged again after this (DRA claims, policy/devices.py): a tier made first could keep only nodes that
    the later check refuses, failing the pod where other nodes fit. `order`: the slots' positions in table
    order (kernels.slot_order), for the kernels to read the node arrays front to back; the same results."""
    if record:
        demand_of(state).record(j.ask, state.quotas.replicas, state.table.model_id)
    out = bytearray(len(slots))
    r = j.ask.request
    if sharing(state, j):
        t, topo = state.table, j.ask.topology
        passed = K.filter_shared(
            t, slots, r.cpu, r.memory, r.gpu, r.gpu_shared, r.gpu_fraction, topo, j.pool_ok, j.model_ok, out, order
        )
    else:
        t, topo = state.table, j.ask.topology
        passed = K.filter_nodes(t, slots, r.cpu, r.memory, r.gpu, topo, j.pool_ok, j.model_ok, out, order)
    sc = state.config.scoring
    # Pods with other extended resources are checked after this (verbs._other_resources): a tier made
    # before that check could keep only nodes that then fail it, so they get no tier.
    if tier and sc.filter_best_tier and passed > 1 and not r.other:
        raw = raw_scores(state, j, slots, verdicts=out, order=order)
        j.scored = Scored(score_key(state, j), time.monotonic(), raw)
        passed = K.best_tier(raw, out, sc.best_tier_margin)
    return out, passed


def score_params(config: Config, now: float | None = None, state: ClusterState | None = None) -> array:
    """The params array of the score kernels, by the indices in scheduler.model.constants; with `state`,
    its demand histogram too. Filter and prioritize of one pod see the same histogram: the array is
    built once for it and kept (only the clock changes)."""
    sc = config.scoring
    if state is not None:
        d = demand_of(state)
        t = state.table
        key = (
            d.recorded,
            t.version,
            t.size,
            len(t.models),
            tuple([getattr(sc.weights, n) for n in WEIGHT_NAMES]),
            sc.cpu_strategy,
            sc.load_max_age_seconds,
        )
        if d.cached is not None and d.cached[0] == key:
            p = d.cached[1]
            p[NOW] = time.time() if now is None else now
            return p
        p = _build_params(config, now, state)
        d.cached = (key, p)
        return p
    return _build_params(config, now, None)


def pod_params(state: ClusterState, j: Judgement, now: float | None) -> array:
    """score_params for this pod: the shared array with the pod's own entries (when it is expected to end)."""
    p = score_params(state.config, now, state)
    runtime = j.ask.runtime
    p[POD_END] = p[NOW] + runtime if runtime > 0 else 0.0
    # The scarce-model tier applies to pods that accept any model (docs/scoring.md), never to one that
    # named the model.
    p[POD_ANY_MODEL] = 1.0 if not j.ask.gpu_models and demand_of(state).protects else 0.0
    return p


def _build_params(config: Config, now: float | None, state: ClusterState | None) -> array:
    p = array("d", bytes(8 * N_PARAMS))
    for i, name in zip(WEIGHT_INDEX, WEIGHT_NAMES, strict=True):
        p[i] = getattr(config.scoring.weights, name)
    p[MOST_ALLOCATED] = 1.0 if config.scoring.cpu_strategy == "most_allocated" else 0.0
    p[NOW] = time.time() if now is None else now
    p[LOAD_MAX_AGE] = config.scoring.load_max_age_seconds
    # Without a state: the histogram's prior (every bucket alike, no model under pressure).
    (demand_of(state) if state is not None else Demand()).fill(p, state.table if state is not None else None)
    return p


def raw_scores(
    state: ClusterState,
    j: Judgement,
    slots: array,
    now: float | None = None,
    verdicts: bytes | bytearray = b"",
    order: array | None = None,
) -> array:
    """The unrounded weighted mean per slot (0..10; -1 for nodes not in the table, and for nodes whose
    `verdicts` entry is not OK when given). `order`: as run_filter's."""
    out = array("d", bytes(8 * len(slots)))
    r = j.ask.request
    state.pools.ensure(len(state.table.pools) + 1)
    if sharing(state, j):
        t, topo, p = state.table, j.ask.topology, pod_params(state, j, now)
        a = (r.gpu, r.gpu_shared, r.gpu_fraction)
        K.score_shared_raw(t, slots, r.cpu, r.memory, *a, topo, j.pool_ok, state.pools.avail, p, out, verdicts, order)
        return out
    K.score_raw(
        state.table,
        slots,
        r.cpu,
        r.memory,
        r.gpu,
        j.ask.topology,
        j.pool_ok,
        state.pools.avail,
        pod_params(state, j, now),
        out,
        verdicts,
        order,
    )
    return out


def run_score(
    state: ClusterState,
    j: Judgement,
    slots: array,
    now: float | None = None,
    scored: Scored | None = None,
    order: array | None = None,
) -> array:
    """0..10 per slot, normalised over the nodes the pod fits: the best scores 10 and the worst 0, so
    Berth's preference stands apart from kube-scheduler's own scores (docs/scoring.md); 0 where it does
    not fit (kube-scheduler sends prioritize only nodes filter passed, so that is a node whose capacity
    went since). `scored`: filter's raw scores for these slots, used while they hold (`reusable`). `order`: as
    run_filter's."""
    out = array("q", bytes(8 * len(slots)))
    raw = reusable(state, j, scored, len(slots)) if now is None else None
    if raw is None:
        verdicts, _ = run_filter(state, j, slots, record=False, tier=False, order=order)
        raw = raw_scores(state, j, slots, now, verdicts=verdicts, order=order)
    K.normalize_scores(raw, out)
    return out


class Reasons:
    """One sentence per verdict, the same for every node it applies to: kube-scheduler counts equal
    reasons in the pod's FailedScheduling event ("12 Insufficient ..."), so equal sentences read best."""

    def __init__(self, state: ClusterState, j: Judgement) -> None:
        self.state = state
        self.j = j
        self._cache: dict[tuple[int, int], tuple[str, bool]] = {}

    def of(self, code: int, slot: int) -> tuple[str, bool]:
        """(reason, unresolvable) for a node that failed with `code`."""
        if code in (DRA_DEVICES, DRA_DEVICES_USED, DRA_QUOTA) and self.j.dra is not None:
            return self.j.dra.sentence(slot)  # worded per node by policy/devices.py
        t = self.state.table
        extra = t.pool[slot] if code == K.POOL else t.model[slot] if code == K.MODEL else -1
        if code in (K.CPU, K.MEMORY, K.GPU, K.PODS, K.TOPOLOGY):
            extra = int(self._too_small(code, slot))
        elif code == BETTER_FIT:
            extra = t.free_gpus(slot).bit_count()  # the sentence names them (reason_ids groups by it too)
        elif code == K.SHARE_FULL:
            extra = K.share_ask(t, slot, *self._gpu_asks())[1]  # the sentence names the fraction
        key = (code, extra)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._sentence(code, slot)
        return hit

    def _too_small(self, code: int, slot: int) -> bool:
        """Even empty, the node could not hold the pod: preemption cannot help there."""
        t, r = self.state.table, self.j.ask.request
        if code == K.CPU:
            return t.alloc_cpu[slot] < r.cpu
        if code == K.MEMORY:
            return t.alloc_mem[slot] < r.memory
        if code == K.GPU:
            return t.alloc_gpu[slot] < r.gpu
        if code == K.TOPOLOGY:
            return max((m.bit_count() for m in t.island_masks(slot)), default=0) < r.gpu
        return False

    def _better_fit(self, slot: int) -> str:
        """A node outside the best tier: it fits, so the sentence says what placing the pod there would cost."""
        t = self.state.table
        free = t.free_gpus(slot).bit_count()
        whole, milli = (
            K.share_ask(t, slot, *self._gpu_asks()) if self.state.table.shared(slot) else (self.j.ask.request.gpu, 0)
        )
        # Short on purpose: a GPU pod's filter fails most of its nodes with this, and kube-scheduler decodes
        # every one of them in every cycle (berth explain words each score part).
        if whole <= 0 and milli <= 0:
            what = f"takes room beside {free} idle GPUs" if free else "scores lower"
        elif milli > 0:
            what = "a fuller shared GPU holds the fraction"
        else:
            left = max(free - whole, 0)
            what = f"leaves {left} GPU{'s' if left != 1 else ''} free"
        return f"berth: fits, but {what}; a better fit exists"

    def _gpu_asks(self) -> tuple[int, int, int]:
        r = self.j.ask.request
        return r.gpu, r.gpu_shared, r.gpu_fraction

    def _sentence(self, code: int, slot: int) -> tuple[str, bool]:
        t, ask, adm = self.state.table, self.j.ask, self.j.admission
        r = ask.request
        small = self._too_small(code, slot)
        if code == K.UNKNOWN:
            return "berth: node is not in Berth's cache yet", False
        if code == K.UNSCHEDULABLE:
            return "berth: node is cordoned", True
        if code == K.POOL:
            pool = t.pools[t.pool[slot]] or "(no pool label)"
            owner = f"team {adm.team}" if adm.team else "pods of no team"
            return f"berth: pool {pool} is not open to {owner}", True
        if code == K.MODEL:
            model = t.models[t.model[slot]] if t.model[slot] >= 0 else None
            if model in adm.blocked_models:
                return f"berth: {adm.blocked_models[model]}", True
            wanted = ", ".join(ask.gpu_models)
            return f"berth: GPU model {model or '(none)'} is not in {ANN_GPU_MODELS} ({wanted})", True
        if code == K.PODS:
            return "berth: node already runs its maximum number of pods", False
        if code == OTHER_RESOURCE_USED:
            return f"berth: not enough free {', '.join(sorted(r.other))} for the pod (others hold it)", False
        if code == BETTER_FIT:
            return self._better_fit(slot), False
        if code == OTHER_RESOURCE:
            return f"berth: node has none or too few of {', '.join(sorted(r.other))}", True
        if code == K.SHARE_FULL:
            milli = K.share_ask(t, slot, *self._gpu_asks())[1]
            return f"berth: no GPU on this node has {milli / 1000:g} free (shared replicas)", False
        if code == K.SHARE_RESOURCE:
            offered = GPU_SHARED if t.share_res[slot] == SHARE_GPU_SHARED else GPU
            return f"berth: node offers its GPUs as {offered}, not the resource the pod asks for", True
        if code == K.TOPOLOGY:
            policy = f"{ANN_TOPOLOGY_POLICY}: required"
            if small:
                return f"berth: no NVLink island on this node has {r.gpu} GPUs ({policy})", True
            return f"berth: no NVLink island has {r.gpu} free GPUs ({policy})", False
        resource = {K.CPU: "cpu", K.MEMORY: "memory", K.GPU: GPU}[code]
        amount = {K.CPU: r.cpu, K.MEMORY: r.memory, K.GPU: r.gpu}[code]
        if small:
            return f"berth: node has less {resource} in all than the {format_units(resource, amount)} requested", True
        return f"berth: not enough free {resource} for the {format_units(resource, amount)} requested", False


def explain(state: ClusterState, ask: PodAsk, names: list[str] | None = None) -> dict[str, Any]:
    """Per-node verdict and score parts (computed by the twin, the reference), best nodes first.
    A pod Berth already accounts (bound, or reserved by a bind) is judged as if it were not there
    yet, so it is not counted against itself: its hold is lifted for the call and put back, exactly,
    before returning (synchronously, so no other handler sees the state without it)."""
    entry = state.ledger.get(pod_key(ask.namespace, ask.name))
    if entry is None or (ask.uid and entry.uid and ask.uid != entry.uid):
        return _explain(state, ask, names, None)
    with _without(state, entry):
        return _explain(state, ask, names, entry.node)


@contextmanager
def _without(state: ClusterState, entry: PodEntry) -> Iterator[None]:
    """Lift `entry`'s hold, then hold it again. Pool usage is a float sum, so it is restored from a
    snapshot rather than recomputed; the quota book's version is put back too (nothing changed)."""
    slot = state.table.slot_of.get(entry.node)
    pool = state.table.pool[slot] if slot is not None else -1
    saved = (state.pools.used[pool], state.pools.avail[pool]) if 0 <= pool < len(state.pools.used) else None
    version, gpu_ids = state.quotas.version, entry.gpu_ids
    state.ledger.release(entry.key)
    try:
        yield
    finally:
        entry.gpu_ids = gpu_ids
        state.ledger.hold(entry)
        if saved is not None:
            state.pools.used[pool], state.pools.avail[pool] = saved
        state.quotas.version = version


def _explain(state: ClusterState, ask: PodAsk, names: list[str] | None, bound_to: str | None) -> dict[str, Any]:
    j = judge(state, ask)
    t = state.table
    names = names if names is not None else [n for n in t.names if n]
    slots = array("i", [t.slot_of.get(n, -1) for n in names])
    verdicts, _ = run_filter(state, j, slots, record=False)
    raw = raw_scores(state, j, slots)
    fits = [v in (K.OK, BETTER_FIT) for v in verdicts]
    for i, ok in enumerate(fits):
        if not ok:
            raw[i] = -1.0  # normalised over the nodes that fit, as prioritize sees them
    scores = array("q", bytes(8 * len(slots)))
    K.normalize_scores(raw, scores)
    reasons = Reasons(state, j)
    params = pod_params(state, j, None)
    state.pools.ensure(len(t.pools) + 1)
    adm = j.admission
    # Refused by quota, the pod fits nowhere for that one reason: filter words every node so, and so does
    # explain (the kernels, given no open pool, would blame each node's pool instead).
    refused = (f"berth: {adm.error}", True) if adm.error else None
    rows = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {"node": name, "fits": fits[i] and refused is None}
        if row["fits"]:
            parts: dict[str, float] = {}
            r = ask.request
            if sharing(state, j):
                a = (r.gpu, r.gpu_shared, r.gpu_fraction)
                K.shared_score_parts(t, slots[i], r.cpu, r.memory, *a, j.pool_ok, state.pools.avail, params, parts)
            else:
                K.node_score_parts(t, slots[i], r.cpu, r.memory, r.gpu, j.pool_ok, state.pools.avail, params, parts)
            row["score"] = scores[i]
            row["raw"] = round(raw[i], 3)
            row["parts"] = {k: round(v, 3) for k, v in parts.items()}
            if verdicts[i] == BETTER_FIT:
                row["reason"] = reasons.of(BETTER_FIT, slots[i])[0]
        else:
            reason, unresolvable = refused or (
                reasons.of(verdicts[i], slots[i])
                if slots[i] >= 0
                else ("berth: node is not in Berth's cache yet", False)
            )
            row["reason"] = reason
            row["unresolvable"] = unresolvable
        rows.append(row)
    rows.sort(key=lambda r: (not r["fits"], -r.get("score", 0), r["node"]))
    return {
        "pod": f"{ask.namespace}/{ask.name}",
        "request": ask.request.as_dict(),
        "team": adm.team,
        "borrowing": adm.borrowing,
        "quota": adm.error,
        "boundTo": bound_to,
        "weights": {name: params[i] for i, name in zip(WEIGHT_INDEX, WEIGHT_NAMES, strict=True)},
        "demand": demand_of(state).snapshot(),
        "nodes": rows,
    }
