"""The gang planner: a node for every member now, inside one topology domain when asked.

Reserve and roll back in the ledger: each member is judged (quota, pools, models) and run through
Berth's own filter and score kernels over every node of the candidate domain, the best node is held
for it in the ledger (node resources, GPU devices and team usage, through the one mutation path), so
the next member sees it taken; at the end every trial hold is released again. All of it runs on the
event loop without awaiting: no handler ever sees a trial hold. Members are placed largest first.
"""

from array import array
from dataclasses import dataclass, field
from typing import Any

from scheduler import kernels as K
from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState, pod_key
from scheduler.model.names import GPU
from scheduler.model.podspec import PodAsk, PodRequest
from scheduler.policy.placement import judge, run_filter, run_score

TRIAL = "\x00plan:"  # ledger keys of trial holds: no pod key starts with NUL


@dataclass(slots=True)
class Plan:
    nodes: dict[str, str] = field(default_factory=dict)  # pod key -> node
    gpu_ids: dict[str, int] = field(default_factory=dict)  # pod key -> device mask chosen in the trial
    teams: dict[str, tuple[str | None, bool]] = field(default_factory=dict)  # pod key -> (team, borrowing)
    domain: str = ""  # the topology label's value, "" when none was asked or it was only preferred


@dataclass(slots=True)
class Refusal:
    reason: str
    hopeless: bool = False  # no amount of waiting helps (bad input): the queue does not block on it
    quota: bool = False  # the team's quota refuses: waits without blocking other teams


def summed(asks: list[PodAsk]) -> PodAsk:
    """One ask for the whole gang (what the team's quota must admit at once)."""
    r = PodRequest()
    for a in asks:
        r.cpu += a.request.cpu
        r.memory += a.request.memory
        r.gpu += a.request.gpu
        for k, v in a.request.other.items():
            r.other[k] = r.other.get(k, 0) + v
    first = asks[0]
    return PodAsk(first.namespace, "gang", "", r, first.priority, first.gpu_models, 0, "")


def domains(state: ClusterState, key: str) -> dict[str, array]:
    """Slots per value of node label `key` (nodes without it are in no domain)."""
    out: dict[str, list[int]] = {}
    for name, slot in state.table.slot_of.items():
        value = state.node_labels.get(name, {}).get(key)
        if value is not None:
            out.setdefault(value, []).append(slot)
    return {v: array("i", sorted(s)) for v, s in out.items()}


def all_slots(state: ClusterState) -> array:
    return array("i", sorted(state.table.slot_of.values()))


def plan_gang(
    state: ClusterState,
    asks: list[PodAsk],
    fixed: dict[str, str] | None = None,
    topology: str = "",
    policy: str = "required",
    specs: dict[str, dict[str, Any]] | None = None,
    exclude: frozenset[int] = frozenset(),
) -> Plan | Refusal:
    """A plan for `asks` (members still to place) beside `fixed` (members already pinned to a node, whose
    capacity the caller holds), or why there is none now. `specs` (pod key -> spec): each member is
    planned only on nodes kube-scheduler would let it onto (`eligible`: nodeSelector, required node
    affinity, taints and tolerations, readiness; Berth's kernels check none of those, and a plan on a
    node the pod refuses could never bind).
    `exclude`: slots held back for a gang ahead in the queue (StrictFIFO)."""
    if not asks:
        return Plan(dict(fixed or {}))
    quota = state.quotas.admit(summed(asks))
    if quota.error:
        return Refusal(f"quota: {quota.error}", quota=True)
    hopeless = _hopeless(state, asks)
    if hopeless:
        return Refusal(hopeless, hopeless=True)
    candidates: list[tuple[str, array]] = []
    if topology:
        by_value = domains(state, topology)
        if not by_value:
            return Refusal(f"no node has the topology label {topology}", hopeless=policy == "required")
        pinned = {_domain_of(state, topology, n) for n in (fixed or {}).values()}
        if len(pinned) == 1 and None not in pinned:
            value = next(iter(pinned))
            assert value is not None
            by_value = {value: by_value[value]}
        candidates = sorted(by_value.items(), key=lambda kv: (_free_gpus(state, kv[1]), kv[0]))
        biggest = max(_alloc_gpus(state, s) for _, s in candidates)
        need = sum(a.request.gpu for a in asks)
        if policy == "required" and need > biggest:
            return Refusal(
                f"the gang asks {need} GPUs but the largest {topology} domain has {biggest} in all", hopeless=True
            )
    if not topology or policy == "preferred":
        candidates.append(("", all_slots(state)))
    last = "no node can take the gang's members now"
    for value, slots in candidates:
        if exclude:
            slots = array("i", [s for s in slots if s not in exclude])
        plan = _try(state, asks, slots, specs or {})
        if isinstance(plan, Plan):
            plan.nodes.update(fixed or {})
            plan.domain = value
            return plan
        last = plan
    where = f" inside one {topology} domain" if topology and policy == "required" else ""
    return Refusal(f"{last}{where}")


def _try(state: ClusterState, asks: list[PodAsk], slots: array, specs: dict[str, dict[str, Any]]) -> Plan | str:
    """Place every ask on `slots`, largest first, holding each trial in the ledger; roll back before return."""
    plan = Plan()
    trials: list[str] = []
    try:
        for ask in sorted(asks, key=lambda a: (-a.request.gpu, -a.request.cpu, -a.request.memory, a.name)):
            key = pod_key(ask.namespace, ask.name)
            spec = specs.get(key) or {}
            usable = eligible(state, spec, slots)
            if not usable and slots:
                return f"member {key} can go on no node here: all are closed to it by {why_none(state, spec, slots)}"
            slot, entry = _place(state, ask, usable)
            if entry is None:
                why = f"member {key} fits no node ({len(plan.nodes)} of {len(asks)} placed)"
                if len(usable) < len(slots):
                    closed = len(slots) - len(usable)
                    why += f"; {closed} nodes are closed to it by {why_none(state, spec, slots)}"
                return why
            state.ledger.hold(entry)
            trials.append(entry.key)
            plan.nodes[key] = state.table.names[slot] or ""
            plan.gpu_ids[key] = entry.gpu_ids
            plan.teams[key] = (entry.team, entry.borrowing)
        return plan
    finally:
        for trial in trials:
            state.ledger.release(trial)


def _place(state: ClusterState, ask: PodAsk, slots: array) -> tuple[int, PodEntry | None]:
    j = judge(state, ask)
    if j.admission.error:
        return -1, None
    # record=False: a trial placement is not an ask; the member is counted when kube-scheduler filters it
    verdicts, passed = run_filter(state, j, slots, record=False)
    if not passed:
        return -1, None
    scores = run_score(state, j, slots, scored=j.scored)  # the tier's raw scores for these slots, if it ran
    best, best_score = -1, -1
    for i, slot in enumerate(slots):
        if verdicts[i] == K.OK and scores[i] > best_score:
            best, best_score = slot, scores[i]
    t = state.table
    r = ask.request
    gpu_ids = K.choose_devices(t.islands, best, t.free_gpus(best), r.gpu, ask.topology) if r.gpu else 0
    own = j.admission.own_pools is None or t.pools[t.pool[best]] in j.admission.own_pools
    entry = PodEntry(
        key=TRIAL + pod_key(ask.namespace, ask.name),
        uid="",
        node=t.names[best] or "",
        request=r,
        priority=ask.priority,
        team=j.admission.team,
        borrowing=j.admission.borrowing or not own,
        gpu_ids=gpu_ids,
        confirmed=False,
    )
    return best, entry


def reach(state: ClusterState, specs: list[dict[str, Any]]) -> frozenset[int]:
    """Every slot some member could be placed on (its nodeSelector and affinity allow it)."""
    everything = all_slots(state)
    out: set[int] = set()
    for spec in specs:
        out.update(eligible(state, spec, everything))
    return frozenset(out)


def eligible(state: ClusterState, spec: dict[str, Any], slots: array) -> array:
    """The slots kube-scheduler's node filters would let the pod onto, judged from the node alone:
    nodeSelector and required node affinity (NodeAffinity), NoSchedule/NoExecute taints the pod does not
    tolerate (TaintToleration; a not-Ready node counts as tainted not-ready/unreachable, as the node
    lifecycle controller taints it). Cordoned nodes the kernels refuse themselves."""
    selector = spec.get("nodeSelector") or {}
    affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    terms = (affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    tainted = state.table.tainted
    if not selector and not terms and not tainted:
        return slots
    tolerations = [t for t in spec.get("tolerations") or [] if isinstance(t, dict)]
    names, facts = state.table.names, state.table.facts
    out = array("i")
    for s in slots:
        if s in tainted:
            f = facts[s]
            if f is not None and not all(tolerated(tolerations, taint) for taint in f.taints):
                continue
        if not selector and not terms:
            out.append(s)
            continue
        name = names[s] or ""
        labels = state.node_labels.get(name, {})
        if all(labels.get(k) == v for k, v in selector.items()) and (
            not terms or any(_term(t, labels, name) for t in terms)
        ):
            out.append(s)
    return out


def tolerated(tolerations: list[dict[str, Any]], taint: tuple[str, str, str]) -> bool:
    """Whether one of the pod's tolerations tolerates `taint` (k8s.io/api/core/v1 Toleration.ToleratesTaint)."""
    key, value, effect = taint
    for t in tolerations:
        if t.get("effect") and t.get("effect") != effect:
            continue
        op = t.get("operator") or "Equal"
        tkey = t.get("key") or ""
        if op == "Exists" and (not tkey or tkey == key):
            return True
        if op == "Equal" and tkey == key and str(t.get("value") or "") == value:
            return True
    return False


def why_none(state: ClusterState, spec: dict[str, Any], slots: array) -> str:
    """What closes nodes of `slots` to the member: the first taint it does not tolerate, else its own
    node constraints."""
    tolerations = [t for t in spec.get("tolerations") or [] if isinstance(t, dict)]
    for s in slots:
        f = state.table.facts[s]
        for taint in f.taints if f is not None and s in state.table.tainted else ():
            if not tolerated(tolerations, taint):
                k, v, e = taint
                return f"taints it does not tolerate (e.g. {k}{'=' + v if v else ''}:{e} on {f.name})"
    return "its nodeSelector / required node affinity"


def _term(term: dict[str, Any], labels: dict[str, str], name: str) -> bool:
    if not term.get("matchExpressions") and not term.get("matchFields"):
        return False  # an empty term matches no node (as kube-scheduler reads it)
    fields = {"metadata.name": name}
    return all(_req(r, labels) for r in term.get("matchExpressions") or []) and all(
        _req(r, fields) for r in term.get("matchFields") or []
    )


def _req(r: dict[str, Any], labels: dict[str, str]) -> bool:
    key, op, values = r.get("key"), r.get("operator"), r.get("values") or []
    have = labels.get(str(key))
    if op == "In":
        return have in values
    if op == "NotIn":
        return have not in values
    if op == "Exists":
        return have is not None
    if op == "DoesNotExist":
        return have is None
    if op in ("Gt", "Lt") and have is not None and values:
        try:
            return int(have) > int(values[0]) if op == "Gt" else int(have) < int(values[0])
        except ValueError:
            return False
    return False


def _hopeless(state: ClusterState, asks: list[PodAsk]) -> str:
    """A member larger than any node, even empty: waiting cannot help."""
    t = state.table
    slots = list(t.slot_of.values())
    if not slots:
        return ""  # nodes may not be listed yet
    for res, need, alloc in (
        ("cpu", max(a.request.cpu for a in asks), t.alloc_cpu),
        ("memory", max(a.request.memory for a in asks), t.alloc_mem),
        (GPU, max(a.request.gpu for a in asks), t.alloc_gpu),
    ):
        have = max(alloc[s] for s in slots)
        if need > have:
            return f"a member asks more {res} than any node has in all"
    return ""


def _domain_of(state: ClusterState, key: str, node: str) -> str | None:
    return state.node_labels.get(node, {}).get(key)


def _free_gpus(state: ClusterState, slots: array) -> int:
    t = state.table
    return sum(t.free_gpus(s).bit_count() for s in slots)


def _alloc_gpus(state: ClusterState, slots: array) -> int:
    t = state.table
    return sum(t.alloc_gpu[s] for s in slots)
