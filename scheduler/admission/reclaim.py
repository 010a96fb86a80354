"""Preemption for a whole gang: reclaim borrowed quota where the quota code already reclaims.

A gang whose team is within its guaranteed share (the whole gang's summed ask borrows nothing) and that
waits for capacity, while other teams of its cohort borrow, gets pods of those teams evicted: enough for
a plan of the whole gang, or none at all (never room for part of it). The victims are chosen by the rule
of the preempt verb (`policy/preempt.protected`): a victim's team never falls below its own guaranteed
share of what the gang lacks; pods of the gang's own team and of no team are never taken. Beyond that:
only bound pods of priority not above the gang's, lowest priority first, then the newest (the least work
lost); a victim that is a member of a gang is taken with all of that gang's bound members or not at all.

Reclaim ignores nothing else of the plan: the plan is made by `plan_gang` itself with the victims
released from the ledger on trial (and held again before returning, without awaiting), then pruned to
the victims whose nodes the plan uses and to those the plan cannot do without.
"""

from dataclasses import dataclass, field
from typing import Any

from scheduler.admission.planner import Plan, plan_gang, reach, summed
from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState
from scheduler.model.names import GPU
from scheduler.model.podspec import PodAsk
from scheduler.policy.preempt import protected
from scheduler.policy.quotas import Team, above_guarantee

MAX_UNITS = 512  # victim units tried per gang and tick: bounds the planning work on a cluster of borrowers


@dataclass(slots=True)
class Reclaim:
    victims: list[PodEntry]
    plan: Plan  # the plan the victims make room for (it is made again once they are gone)
    team: str
    cohort: str
    teams: list[str] = field(default_factory=list)  # the borrowing teams the victims belong to


def reclaim(
    state: ClusterState,
    asks: list[PodAsk],
    priority: int,
    own_gang: str,
    fixed: dict[str, str] | None = None,
    topology: str = "",
    policy: str = "required",
    specs: dict[str, dict[str, Any]] | None = None,
    exclude: frozenset[int] = frozenset(),
) -> Reclaim | None:
    """The victims whose eviction lets the whole gang (`asks`, beside `fixed`) be planned, or None."""
    if not asks:
        return None
    team, _ = state.quotas.team_for(asks[0].namespace)
    if team is None or not team.cohort:
        return None
    whole = summed(asks)
    admission = state.quotas.admit(whole)
    if admission.error or admission.borrowing:
        return None  # the gang would borrow itself: nothing of others' is owed to it
    cohort = {t.name for t in state.quotas.members(team) if t is not team and _borrows(t)}
    if not cohort:
        return None  # nobody borrows: nothing to reclaim (and no walk over the ledger every tick)
    where = reach(state, list((specs or {}).values()) or [{}]) - exclude
    units = _units(state, cohort, priority, own_gang, where)
    if not units:
        return None
    needs = _lacking(state, whole, where)
    taken: dict[str, dict[str, int]] = {}
    chosen: list[list[PodEntry]] = []
    freed_gpus = 0
    free_gpus = sum(state.table.free_gpus(s).bit_count() for s in where)
    for unit in units[:MAX_UNITS]:
        before = {k: dict(v) for k, v in taken.items()}
        if any(protected(state, team.name, needs, e, taken) for e in unit):
            taken = before
            continue
        chosen.append(unit)
        freed_gpus += sum(e.gpu_ids.bit_count() for e in unit)
        if free_gpus + freed_gpus < whole.request.gpu:
            continue  # not enough GPUs freed yet: no plan can exist, do not run the planner for it
        plan = _trial(state, chosen, asks, fixed, topology, policy, specs, exclude)
        if plan is not None:
            chosen, plan = _prune(state, chosen, plan, asks, fixed, topology, policy, specs, exclude)
            victims = [e for u in chosen for e in u]
            teams = sorted({e.team for e in victims if e.team})
            return Reclaim(victims, plan, team.name, team.cohort, teams)
    return None


def _borrows(team: Team) -> bool:
    return any(above_guarantee(team, res) > 0 for res in team.limits)


def _units(
    state: ClusterState, cohort: set[str], priority: int, own_gang: str, where: frozenset[int]
) -> list[list[PodEntry]]:
    """Candidate victims in the order they are taken: single pods, or all bound members of a gang."""
    slot_of = state.table.slot_of
    by_gang: dict[str, list[PodEntry]] = {}
    units: list[list[PodEntry]] = []
    for e in state.ledger:
        if not e.confirmed or e.team not in cohort or e.key in state.gang_holds:
            continue
        gang = state.gangs.gang_of(e.key) if state.gangs_on else None
        if gang is not None and gang.key != own_gang:
            by_gang.setdefault(gang.key, []).append(e)
        elif slot_of.get(e.node, -1) in where:
            units.append([e])
    for members in by_gang.values():
        if any(slot_of.get(e.node, -1) in where for e in members):
            units.append(members)
    units = [u for u in units if max(e.priority for e in u) <= priority]
    units.sort(key=lambda u: (max(e.priority for e in u), -max(e.since for e in u), u[0].key))
    return units


def _lacking(state: ClusterState, whole: PodAsk, where: frozenset[int]) -> set[str]:
    """The resources the gang lacks on the nodes it may use (only those are reclaimed, as the preempt verb
    reclaims what the node lacks); every resource it asks when none is short overall (fragmentation)."""
    t, r = state.table, whole.request
    asked = set(r.quota_units())
    short = set(r.other)
    if sum(t.alloc_cpu[s] - t.used_cpu[s] for s in where) < r.cpu:
        short.add("cpu")
    if sum(t.alloc_mem[s] - t.used_mem[s] for s in where) < r.memory:
        short.add("memory")
    if sum(t.free_gpus(s).bit_count() for s in where) < r.gpu:
        short.add(GPU)
    return short or asked


def _trial(
    state: ClusterState,
    chosen: list[list[PodEntry]],
    asks: list[PodAsk],
    fixed: dict[str, str] | None,
    topology: str,
    policy: str,
    specs: dict[str, dict[str, Any]] | None,
    exclude: frozenset[int],
) -> Plan | None:
    """plan_gang with the chosen victims released from the ledger; they are held again before returning."""
    released: list[PodEntry] = []
    try:
        for unit in chosen:
            for e in unit:
                if state.ledger.release(e.key) is not None:
                    released.append(e)
        plan = plan_gang(state, asks, fixed, topology, policy, specs, exclude)
        return plan if isinstance(plan, Plan) else None
    finally:
        for e in reversed(released):
            state.ledger.hold(e)


def _prune(
    state: ClusterState,
    chosen: list[list[PodEntry]],
    plan: Plan,
    asks: list[PodAsk],
    fixed: dict[str, str] | None,
    topology: str,
    policy: str,
    specs: dict[str, dict[str, Any]] | None,
    exclude: frozenset[int],
) -> tuple[list[list[PodEntry]], Plan]:
    """Fewer victims for the same gang: first only those on nodes the plan uses, then without each unit
    the plan can do without (the last taken, of the highest priority, tried first)."""
    used = set(plan.nodes.values())
    on_plan = [u for u in chosen if any(e.node in used for e in u)]
    if len(on_plan) < len(chosen):
        again = _trial(state, on_plan, asks, fixed, topology, policy, specs, exclude)
        if again is not None:
            chosen, plan = on_plan, again
    for unit in list(reversed(chosen)):
        if len(chosen) == 1:
            break
        fewer = [u for u in chosen if u is not unit]
        again = _trial(state, fewer, asks, fixed, topology, policy, specs, exclude)
        if again is not None:
            chosen, plan = fewer, again
    return chosen, plan
