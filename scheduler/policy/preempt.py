"""The preempt verb: of the victims kube-scheduler proposes, keep those Berth's quotas allow.

A team below its guaranteed share gets room back from teams that are borrowing, never taking a team
below its own guaranteed share of what the node lacks for the pod (per GPU model too); victims of the
preemptor's own team (and pods of no team) follow pod priority only, as kube-scheduler chose them.
Each candidate node is judged on its own (kube-scheduler preempts on one of them). A node whose
remaining victims no longer make room for the pod is dropped: kube-scheduler must never evict for nothing.
"""

from dataclasses import dataclass

from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState
from scheduler.extender.wire import PreemptionArgs
from scheduler.model.names import GPU
from scheduler.model.podspec import PodAsk
from scheduler.policy.placement import Judgement, judge
from scheduler.policy.quotas import MODEL_PREFIX, above_guarantee, resource_label


@dataclass(slots=True)
class PreemptDecision:
    victims: dict[str, list[str]]
    pdb: dict[str, int]
    refused: dict[str, str]  # victim uid -> why it is spared (for logs and explain)


def process(state: ClusterState, ask: PodAsk, args: PreemptionArgs) -> PreemptDecision:
    j = judge(state, ask)
    decision = PreemptDecision({}, {}, {})
    if j.admission.error:
        return decision  # evicting pods frees no quota for this pod: nothing to do
    needs = {k for k, v in ask.request.as_dict().items() if v > 0}
    for node, uids in args.victims.items():
        if not _eligible(state, j, node):
            # In-tree filters failed there before Berth's filter ran, so kube-scheduler offers nodes
            # this pod may never use (another team's pool, a refused GPU model, a cordon).
            continue
        # kube-scheduler preempts on one of the candidate nodes only: each is judged on its own.
        taken: dict[str, dict[str, int]] = {}  # team -> resource -> already given up on this node
        kept = _keep(state, j.admission.team, _short(state, ask, node) or needs, uids, taken, decision.refused)
        if kept and _makes_room(state, ask, node, kept):
            decision.victims[node] = [e.uid if isinstance(e, PodEntry) else e for e in kept]
            decision.pdb[node] = args.num_pdb_violations.get(node, 0)
    return decision


def _short(state: ClusterState, ask: PodAsk, node: str) -> set[str]:
    """The resources the pod lacks on `node`: only those are reclaimed from other teams. (Every pod needs
    cpu and memory; a team far below its cpu guarantee must still give back the GPUs it borrowed.)
    Extended resources other than GPUs are not tracked per node, so they always count as lacking."""
    t = state.table
    slot = t.slot_of.get(node)
    if slot is None:
        return set()
    r = ask.request
    short = set(r.other)
    if t.alloc_cpu[slot] - t.used_cpu[slot] < r.cpu:
        short.add("cpu")
    if t.alloc_mem[slot] - t.used_mem[slot] < r.memory:
        short.add("memory")
    if t.free_gpus(slot).bit_count() < r.gpu:
        short.add(GPU)
    return short


def _eligible(state: ClusterState, j: Judgement, node: str) -> bool:
    t = state.table
    slot = t.slot_of.get(node)
    if slot is None or t.cordoned(slot) or j.pool_ok[t.pool[slot]] == 0:
        return False
    if j.ask.request.gpu and j.model_ok:
        m = t.model[slot]
        return 0 <= m < len(j.model_ok) and j.model_ok[m] == 1
    return True


def _keep(
    state: ClusterState,
    team: str | None,
    needs: set[str],
    uids: list[str],
    taken: dict[str, dict[str, int]],
    refused: dict[str, str],
) -> list[PodEntry | str]:
    kept: list[PodEntry | str] = []
    entries = []
    for uid in uids:
        key = state.ledger.by_uid.get(uid)
        entry = state.ledger.get(key) if key else None
        if entry is None:
            kept.append(uid)  # a pod Berth does not account (not ours to protect)
        else:
            entries.append(entry)
    for entry in sorted(entries, key=lambda e: e.priority):
        why = _protected(state, team, needs, entry, taken)
        if why:
            refused[entry.uid] = why
            continue
        kept.append(entry)
    return kept


def _protected(
    state: ClusterState, team: str | None, needs: set[str], victim: PodEntry, taken: dict[str, dict[str, int]]
) -> str | None:
    if victim.team is None or victim.team == team:
        return None
    other = state.quotas.teams.get(victim.team)
    if other is None:
        return None
    gone = taken.setdefault(victim.team, {})
    req = dict(victim.charged) if victim.charged is not None else victim.request.quota_units()  # GPUs in milli
    if victim.model and req.get(GPU):  # its GPUs also count against the per-model quota of its node's model
        req[MODEL_PREFIX + victim.model] = req[GPU]
    for res in req:
        if res not in needs and not (res.startswith(MODEL_PREFIX) and GPU in needs):
            continue
        if res not in other.limits:
            continue
        if above_guarantee(other, res, gone.get(res, 0) + req[res]) < 0:
            return f"team {victim.team} would fall below its guaranteed {resource_label(res)}"
    for res, amount in req.items():
        gone[res] = gone.get(res, 0) + amount
    return None


def protected(
    state: ClusterState, team: str | None, needs: set[str], victim: PodEntry, taken: dict[str, dict[str, int]]
) -> str | None:
    """Why `victim` may not be taken for a pod (or a gang) of `team` lacking `needs`, or None (then what it
    gives up is added to `taken`, per team and resource). The rule of this verb, used by the gang
    reclaim too (admission/reclaim.py), so both take victims alike."""
    return _protected(state, team, needs, victim, taken)


def _makes_room(state: ClusterState, ask: PodAsk, node: str, kept: list[PodEntry | str]) -> bool:
    """With the kept victims gone (unknown ones assumed to free nothing), does the pod fit?"""
    t = state.table
    slot = t.slot_of.get(node)
    if slot is None:
        return False
    entries = [e for e in kept if isinstance(e, PodEntry)]
    if len(entries) < len(kept):
        return True  # kube-scheduler chose victims Berth does not track: trust its arithmetic
    r = ask.request
    cpu = t.alloc_cpu[slot] - t.used_cpu[slot] + sum(e.request.cpu for e in entries)
    mem = t.alloc_mem[slot] - t.used_mem[slot] + sum(e.request.memory for e in entries)
    free_gpus = t.free_gpus(slot)
    for e in entries:
        free_gpus |= e.gpu_ids
    return cpu >= r.cpu and mem >= r.memory and free_gpus.bit_count() >= r.gpu
