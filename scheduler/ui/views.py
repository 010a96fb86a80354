"""The dashboard's JSON views, built from ClusterState and nothing else (read-only).

Each is made for a page that polls it: columns instead of one object per node, one character per GPU,
and a fingerprint of what the view depends on so an unchanged picture costs a hash, not a rebuild.
"""

import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from scheduler import kernels as K
from scheduler.cluster.state import ClusterState, pod_key
from scheduler.model.constants import FLAG_UNSCHEDULABLE, GPU_MILLI, MAX_GPUS
from scheduler.model.names import GPU
from scheduler.observability.showback import gpus_held
from scheduler.policy.placement import Reasons, judge, run_filter
from scheduler.policy.quotas import MODEL_PREFIX, in_gpu_milli

# One character per GPU in the map: a team (its index in "teams"), or one of these.
TEAM_CODES = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FREE, NO_TEAM, SHARED, UNKNOWN, MANY = ".", "-", "~", "#", "+"
# Node flags in the map.
CORDONED, STRANDED, FRAGMENTED = 1, 2, 4
# A node whose free GPUs no pod can use: its CPU, memory or pod slots are (nearly) gone.
STRANDED_CPU_MILLI = 1000
STRANDED_MEMORY = 4 << 30
# What the map's "stats" count: nodes without GPUs, with GPUs, GPUs, free GPUs, wholly idle GPU nodes,
# shared GPUs, free GPUs stranded, free GPUs on partly used nodes (fragmented).
STATS = ("cpuNodes", "gpuNodes", "gpus", "free", "idleNodes", "shared", "stranded", "fragmented")
QUEUE_ROWS = 200  # waiting pods listed
QUEUE_REASONS = 20  # of them, with a reason (each runs the filter kernel over every node)


def map_fingerprint(state: ClusterState) -> int:
    """A hash of everything the map shows: devices held, fractions, flags, pod counts, CPU use, teams."""
    t = state.table
    return hash(
        (
            t.version,
            len(t.pools),
            len(t.models),
            state.quotas.version,
            len(state.ledger),
            bytes(t.gpu_used),
            bytes(t.gpu_milli),
            bytes(t.flags),
            bytes(t.used_pods),
            bytes(t.used_cpu),
            bytes(t.pool),
            bytes(t.model),
        )
    )


def _order(state: ClusterState) -> list[int]:
    """Slots grouped by pool and GPU model (GPU nodes first), then by name: the map's tile order."""
    t = state.table
    slots = list(t.slot_of.values())
    return sorted(
        slots,
        key=lambda s: (
            t.alloc_gpu[s] == 0,
            t.pools[t.pool[s]] if t.pool[s] < len(t.pools) else "",
            t.models[t.model[s]] if t.alloc_gpu[s] and t.model[s] < len(t.models) else "",
            t.names[s] or "",
        ),
    )


def map_layout(state: ClusterState, slots: list[int]) -> dict[str, Any]:
    """What changes only when nodes come or go: names, pool, model, GPU count, NVLink islands."""
    t = state.table
    shapes: dict[str, int] = {}
    shape_of = []
    for s in slots:
        facts = t.facts[s]
        key = "|".join(",".join(map(str, island)) for island in (facts.islands if facts else []))
        shape_of.append(shapes.setdefault(key, len(shapes)))
    return {
        "names": [t.names[s] for s in slots],
        "pool": [t.pool[s] for s in slots],
        "model": [t.model[s] if t.alloc_gpu[s] else -1 for s in slots],
        "gpus": [t.alloc_gpu[s] for s in slots],
        "islands": shape_of,
        "shapes": [[[int(g) for g in i.split(",")] for i in k.split("|")] if k else [] for k in shapes],
    }


class MapBuilder:
    """Builds the map view; between builds it keeps the tile order (until nodes come or go) and each
    busy GPU node's row (until its devices, its pods or the teams change), so a refresh of a cluster
    where little moved costs a pass over the arrays, not a walk over every pod."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._order: tuple[int, list[int]] = (-1, [])  # (layout key, slots)
        self._rows: dict[int, tuple[Any, str, dict[str, list[list[Any]]]]] = {}  # slot -> (signature, row, shares)
        self._teams: list[str] = []

    def layout_key(self) -> int:
        t = self.state.table
        return hash((t.version, len(t.pools), len(t.models), bytes(t.pool), bytes(t.model), bytes(t.alloc_gpu)))

    def order(self) -> list[int]:
        key = self.layout_key()
        if self._order[0] != key:
            self._order = (key, _order(self.state))
            self._rows.clear()
        return self._order[1]

    def view(self, with_layout: bool = True) -> dict[str, Any]:
        """The GPU map: per node (in layout order) one character per GPU, CPU use in percent, flags, and
        the fractions of shared GPUs; `stats` sums free, fragmented and stranded GPUs."""
        state, t = self.state, self.state.table
        slots = self.order()
        teams = sorted(state.quotas.teams)
        if teams != self._teams:
            self._teams = teams
            self._rows.clear()
        code = {name: TEAM_CODES[i] if i < len(TEAM_CODES) else MANY for i, name in enumerate(teams)}
        used_cpu, alloc_cpu, gpus, gpu_used = t.used_cpu, t.alloc_cpu, t.alloc_gpu, t.gpu_used
        cells, flags = [], []
        shared: dict[str, dict[str, list[list[Any]]]] = {}
        counts = [0] * 8  # the keys of STATS, in order
        for i, s in enumerate(slots):
            n = min(gpus[s], MAX_GPUS)
            cordoned = CORDONED if t.flags[s] & FLAG_UNSCHEDULABLE else 0
            if n <= 0:
                cells.append("")
                flags.append(cordoned)
                counts[0] += 1
                continue
            if gpu_used[s] == 0:
                row, fractions, free = FREE * n, None, n
            else:
                row, fractions = self._row(s, n, code)
                free = row.count(FREE)
                if fractions:
                    shared[str(i)] = fractions
                counts[5] += row.count(SHARED)
            node_flags = _flags(t, s, free, n - free, cordoned)
            cells.append(row)
            flags.append(node_flags)
            counts[1] += 1
            counts[2] += n
            counts[3] += free
            if node_flags & STRANDED:
                counts[6] += free
            elif node_flags & FRAGMENTED:
                counts[7] += free
            elif free == n:
                counts[4] += 1
        stats = dict(zip(STATS, counts, strict=True))
        out: dict[str, Any] = {
            "teams": teams,
            "teamPools": {n: sorted(state.quotas.pools_of(state.quotas.teams[n])) for n in teams},
            "pools": list(t.pools),
            "models": list(t.models),
            "count": len(slots),
            "cells": cells,
            "cpu": [round(100 * used_cpu[s] / alloc_cpu[s]) if alloc_cpu[s] > 0 else 0 for s in slots],
            "flags": flags,
            "shared": shared,
            "stats": stats,
        }
        if with_layout:
            out["layout"] = map_layout(state, slots)
        return out

    def _row(self, s: int, n: int, code: dict[str, str]) -> tuple[str, dict[str, list[list[Any]]]]:
        t = self.state.table
        keys = self.state.ledger.by_node.get(t.names[s] or "", ())
        base = s * MAX_GPUS
        signature = (t.gpu_used[s], bytes(t.gpu_milli[base : base + n]), hash(frozenset(keys)))
        cached = self._rows.get(s)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        row, fractions = _cells(self.state, s, n, keys, code)
        self._rows[s] = (signature, row, fractions)
        return row, fractions


def map_view(state: ClusterState, with_layout: bool = True) -> dict[str, Any]:
    """The GPU map, built afresh (the dashboard keeps a MapBuilder between refreshes)."""
    return MapBuilder(state).view(with_layout)


def _cells(
    state: ClusterState, s: int, n: int, keys: Any, code: dict[str, str]
) -> tuple[str, dict[str, list[list[Any]]]]:
    """One character per device of slot `s`, and who holds how much of each shared device."""
    t = state.table
    row = [FREE] * n
    fractions: dict[str, list[list[Any]]] = {}
    used = t.gpu_used[s]
    for g in range(n):
        if used >> g & 1:
            row[g] = UNKNOWN  # held, by a pod this replica does not account (yet)
    for key in sorted(keys):
        entry = state.ledger.pods[key]
        mask = entry.gpu_ids
        if not mask:
            continue
        c = code.get(entry.team or "", NO_TEAM)
        for g in range(n):
            if not mask >> g & 1:
                continue
            if entry.gpu_milli:
                row[g] = SHARED
                fractions.setdefault(str(g), []).append([entry.team, entry.gpu_milli, key])
            elif row[g] != SHARED:
                row[g] = c
    base = s * MAX_GPUS
    for g in range(n):
        if t.gpu_milli[base + g] and row[g] != SHARED:
            row[g] = SHARED  # fractions held by pods this replica sees only as milli
    return "".join(row), fractions


def _flags(t: Any, s: int, free: int, used: int, flags: int) -> int:
    """`flags` (CORDONED or 0) with STRANDED or FRAGMENTED for a GPU node with free GPUs."""
    if free:
        short = (
            t.alloc_cpu[s] - t.used_cpu[s] < STRANDED_CPU_MILLI
            or t.alloc_mem[s] - t.used_mem[s] < STRANDED_MEMORY
            or t.alloc_pods[s] - t.used_pods[s] <= 0
        )
        if short or flags & CORDONED:
            flags |= STRANDED
        elif used:
            flags |= FRAGMENTED  # free GPUs on a partly used node: no whole-node job fits there
    return flags


def node_pods(state: ClusterState, name: str) -> dict[str, Any] | None:
    """One node for the map's click: what it has and the pods that hold it."""
    slot = state.table.slot_of.get(name)
    if slot is None:
        return None
    now = time.monotonic()
    pods = []
    for key in sorted(state.ledger.by_node.get(name, ())):
        e = state.ledger.pods[key]
        pods.append(
            {
                "pod": key,
                "team": e.team,
                "gpus": [g for g in range(MAX_GPUS) if e.gpu_ids >> g & 1],
                "gpuMilli": e.gpu_milli or None,
                "cpu": e.request.cpu / 1000,
                "memoryGi": round(e.request.memory / (1 << 30), 2),
                "priority": e.priority,
                "borrowing": e.borrowing,
                "confirmed": e.confirmed,
                "heldSeconds": round(now - e.since, 1) if e.since else None,
            }
        )
    return {"node": state.node_view(slot), "pods": pods}


# -- teams -----------------------------------------------------------------------------------------
def _scaled(res: str, amount: int) -> float:
    if res == "cpu" or in_gpu_milli(res):
        return round(amount / 1000.0, 3)
    if res == "memory":
        return round(amount / (1 << 30), 2)
    return float(amount)


def _unit(res: str) -> str:
    return "cores" if res == "cpu" else "GiB" if res == "memory" else "GPUs" if in_gpu_milli(res) else ""


def teams_view(state: ClusterState, hours: "GpuHours", window: float) -> dict[str, Any]:
    """Per team and resource (and GPU model): guaranteed, max, used and borrowed, as numbers for bars;
    GPU-hours held within the last `window` seconds (of what this process has seen)."""
    quotas = state.quotas
    in_window = hours.total(window)
    rows = []
    for name in sorted(quotas.teams):
        team = quotas.teams[name]
        shown = sorted(set(team.limits) | {r for r, v in team.used.items() if v})
        resources = []
        for res in shown:
            lim = team.limits.get(res)
            resources.append(
                {
                    "resource": res,
                    "model": res.removeprefix(MODEL_PREFIX) if res.startswith(MODEL_PREFIX) else None,
                    "unit": _unit(res),
                    "guaranteed": _scaled(res, lim.guaranteed) if lim else None,
                    "max": _scaled(res, lim.max) if lim and lim.max is not None else None,
                    "used": _scaled(res, team.used.get(res, 0)),
                    "borrowed": _scaled(res, quotas.borrowed(team, res)) if lim else 0.0,
                }
            )
        rows.append(
            {
                "team": name,
                "cohort": team.cohort,
                "pools": sorted(quotas.pools_of(team)),
                "pods": team.pods,
                "error": team.error,
                "resources": resources,
                "gpuHours": round(in_window.get(name, 0.0), 4),
            }
        )
    return {"teams": rows, "window": window, "observedSeconds": round(hours.observed(window), 1)}


@dataclass
class GpuHours:
    """GPU-hours held by each team, in one-minute buckets, sampled from the showback's running totals
    (observability/showback.gpus_held). Bounded: a week of buckets. In memory, since this process
    started; Prometheus' berth_gpu_seconds_total is the durable record."""

    bucket_seconds: float = 60.0
    buckets: deque[tuple[float, dict[str, float]]] = field(default_factory=lambda: deque(maxlen=7 * 24 * 60))
    last: float = 0.0
    started: float = field(default_factory=time.time)

    def sample(self, state: ClusterState, now: float | None = None) -> None:
        now = time.time() if now is None else now
        elapsed, self.last = (now - self.last if self.last else 0.0), now
        start = now - now % self.bucket_seconds
        if not self.buckets or self.buckets[-1][0] != start:
            self.buckets.append((start, {}))
        bucket = self.buckets[-1][1]
        for (team, _model), milli in gpus_held(state).current().items():
            bucket[team] = bucket.get(team, 0.0) + milli / GPU_MILLI * elapsed / 3600.0

    def total(self, window: float, now: float | None = None) -> dict[str, float]:
        since = (time.time() if now is None else now) - window
        out: dict[str, float] = {}
        for start, bucket in reversed(self.buckets):
            if start + self.bucket_seconds <= since:
                break
            for team, h in bucket.items():
                out[team] = out.get(team, 0.0) + h
        return out

    def observed(self, window: float) -> float:
        """How much of the window this process has seen."""
        return min(window, time.time() - self.started)


# -- the queue -------------------------------------------------------------------------------------
def queue_view(state: ClusterState, first_seen: dict[str, float]) -> dict[str, Any]:
    """Gangs in the admission loop's order (admission/loop.AdmissionLoop.ordered: priority, then age),
    with their plans; then the pending pods the verbs have seen and Berth has not bound, highest
    priority and longest waiting first, the first ones with why they wait. `first_seen` (UID ->
    monotonic time the dashboard first saw it waiting) is the caller's, pruned here to those waiting."""
    now = time.monotonic()
    gangs = sorted(state.gangs.gangs.values(), key=lambda g: (-g.priority, g.created, g.key))
    rows = [
        {
            "position": pos,
            "gang": g.key,
            "source": g.source,
            "phase": g.phase,
            "reason": g.reason,
            "priority": g.priority,
            "minMember": g.min_member,
            "members": g.size(),
            "bound": len(g.bound),
            "topology": g.topology,
            "plan": {k: state.plans[k] for k in g.members if k in state.plans},
            "waitSeconds": round(now - g.first_seen, 1) if g.first_seen else None,
        }
        for pos, g in enumerate(gangs)
    ]
    waiting = []
    for ask, seen in state.seen.recent():
        if state.ledger.get(pod_key(ask.namespace, ask.name)) is None:
            waiting.append((ask, seen, first_seen.setdefault(ask.uid, min(seen, now))))
    alive = {ask.uid for ask, _, _ in waiting}
    for uid in [u for u in first_seen if u not in alive]:
        del first_seen[uid]
    waiting.sort(key=lambda w: (-w[0].priority, w[2]))
    pods = []
    for i, (ask, seen, since) in enumerate(waiting[:QUEUE_ROWS]):
        row: dict[str, Any] = {
            "pod": pod_key(ask.namespace, ask.name),
            "namespace": ask.namespace,
            "name": ask.name,
            "priority": ask.priority,
            "gpus": ask.request.gpu or (ask.request.gpu_fraction / GPU_MILLI if ask.request.gpu_fraction else 0),
            "cpu": ask.request.cpu / 1000,
            "waitSeconds": round(now - since, 1),
            "lastSeenSeconds": round(now - seen, 1),
        }
        if i < QUEUE_REASONS:
            row.update(why_waiting(state, ask))
        pods.append(row)
    return {
        "admission": state.gangs_on,
        "policy": "StrictFIFO per cohort",
        "gangs": rows,
        "holds": len(state.gang_holds),
        "plans": len(state.plans),
        "waiting": pods,
        "waitingCount": len(waiting),
    }


def why_waiting(state: ClusterState, ask: Any) -> dict[str, Any]:
    """The team, how many nodes fit now, and the sentence for the commonest rejection (placement's)."""
    j = judge(state, ask)
    if j.admission.error:
        return {"team": j.admission.team, "fits": 0, "reason": f"berth: {j.admission.error}"}
    t = state.table
    slots = array("i", sorted(t.slot_of.values()))
    # A view: it writes nothing (no demand-histogram record), and counts every node that fits (no tier).
    verdicts, passed = run_filter(state, j, slots, record=False, tier=False)
    if passed:
        return {"team": j.admission.team, "fits": passed, "reason": f"fits {passed} nodes: waiting for kube-scheduler"}
    codes = Counter(v for v in verdicts if v != K.OK)
    if not codes:
        return {"team": j.admission.team, "fits": 0, "reason": "no nodes"}
    # The nodes of pools the pod may not use say least: name what stops it where it may go, if anything.
    near = Counter({c: n for c, n in codes.items() if c != K.POOL}) or codes
    code, count = near.most_common(1)[0]
    example = slots[verdicts.index(code)]
    reason, _ = Reasons(state, j).of(code, example)
    return {"team": j.admission.team, "fits": 0, "reason": f"{count} nodes: {reason}"}


__all__ = ["GPU", "GpuHours", "MapBuilder", "map_fingerprint", "map_view", "node_pods", "queue_view", "teams_view"]
