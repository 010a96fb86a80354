"""Showback: per-team usage as Prometheus gauges, GPU-seconds, and the rows of /debug/teams and of
TeamQuota status."""

import weakref
from datetime import UTC, datetime
from typing import Any

from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState
from scheduler.model.names import GPU
from scheduler.observability.metrics import Metrics
from scheduler.policy.quotas import Team, in_gpu_milli
from scheduler.policy.quotas import format_amount as _fmt

# Resources a TeamQuota's status always reports (the printer columns read them).
ALWAYS_SHOWN = ("cpu", "memory", GPU)


def team_status(state: ClusterState, team: Team, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The TeamQuota status Berth writes back (quantities as strings, like Kubernetes does).
    A condition keeps its lastTransitionTime from `previous` while its status does not change.

    `kubectl get teamquotas` prints from it (the CRD's additionalPrinterColumns), so what a column
    shows is always written: used cpu, memory and GPUs and borrowed GPUs are "0" rather than absent,
    and the Valid condition's reason (Valid, SpecError or Conflict) is the Status column."""
    shown = {r for r, v in team.used.items() if v} | set(ALWAYS_SHOWN) | set(team.limits)
    used = {r: _fmt(r, team.used.get(r, 0)) for r in sorted(shown)}
    borrowed = {r: _fmt(r, state.quotas.borrowed(team, r)) for r in sorted(set(team.limits) | {GPU})}
    overlap = ", ".join(team.conflicts)
    conditions = [
        _condition(
            "Valid",
            team.error is None and not overlap,
            "SpecError" if team.error else "Conflict" if overlap else "Valid",
            team.error
            or (overlap and f"namespaces also claimed by {overlap}: their pods are refused until the overlap is fixed")
            or "spec is valid",
            team.generation,
        )
    ]
    conditions.append(
        _condition(
            "NamespaceConflict",
            bool(team.conflicts),
            "Overlap" if overlap else "NoOverlap",
            f"namespaces also claimed by {overlap}" if overlap else "no other team claims these namespaces",
            team.generation,
        )
    )
    before = {c["type"]: c for c in (previous or {}).get("conditions", [])}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for c in conditions:
        old = before.get(c["type"])
        c["lastTransitionTime"] = old["lastTransitionTime"] if old and old["status"] == c["status"] else now
    status = {
        "used": used,
        "borrowed": borrowed,
        "pods": team.pods,
        "conditions": conditions,
        "observedGeneration": team.generation,
    }
    devices = state.dra.team_devices(team.name)
    if devices:  # DRA: the devices kube-scheduler allocated to the team's ResourceClaims (cluster/dra.py)
        status["devices"] = devices
    return status


def _condition(kind: str, status: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def team_rows(state: ClusterState) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(state.quotas.teams):
        team = state.quotas.teams[name]
        row: dict[str, Any] = {"team": name, "cohort": team.cohort, "pools": sorted(team.pools)}
        row.update(team_status(state, team))
        row["limits"] = {
            r: {"guaranteed": _fmt(r, lim.guaranteed), "max": None if lim.max is None else _fmt(r, lim.max)}
            for r, lim in team.limits.items()
        }
        rows.append(row)
    return rows


def export_team_gauges(state: ClusterState, m: Metrics) -> None:
    for team in state.quotas.teams.values():
        for res in set(team.used) | set(team.limits):
            lim = team.limits.get(res)
            m.team_used.labels(team.name, res).set(_scale(res, team.used.get(res, 0)))
            if lim is not None:
                m.team_guaranteed.labels(team.name, res).set(_scale(res, lim.guaranteed))
                if lim.max is not None:
                    m.team_max.labels(team.name, res).set(_scale(res, lim.max))
                m.team_borrowed.labels(team.name, res).set(_scale(res, state.quotas.borrowed(team, res)))


def _scale(res: str, amount: int) -> float:
    # cpu in cores, GPUs as GPUs (a fraction as a fraction), as Prometheus users expect
    return amount / 1000.0 if res == "cpu" or in_gpu_milli(res) else float(amount)


class GpuHeld:
    """GPUs held by (team, model), kept up to date by the ledger's hook instead of a walk over every pod
    each second (~0.5 ms at 2,600 pods, tens of ms at 150,000, on the event loop the verbs share).

    A pod's team and model are fixed from when it starts holding until it stops, except when teams or
    their namespaces change (the state recounts every pod then): on such a change the totals are walked
    again once. What each pod added is remembered, so a release takes back exactly that."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.totals: dict[tuple[str, str], int] = {}  # GPU milli by (team, model)
        self.held: dict[str, tuple[tuple[str, str], int]] = {}  # pod key -> ((team, model), GPU milli)
        self.membership: tuple[frozenset[str], dict[str, str | None]] | None = None
        self.exported: tuple[Metrics | None, int] = (None, -1)  # the Metrics and quotas.version last exported
        inner = state.ledger.on_team

        def hook(entry: PodEntry, sign: int) -> None:
            inner(entry, sign)
            self._change(entry, sign)

        state.ledger.on_team = hook

    def _change(self, entry: PodEntry, sign: int) -> None:
        if sign < 0:
            was = self.held.pop(entry.key, None)
            if was is not None:
                self._add(was[0], -was[1])
            return
        charged = entry.charged if entry.charged is not None else entry.request.quota_units()
        milli = charged.get(GPU, 0)  # a fraction counts as its fraction
        if milli:
            k = (entry.team or "", entry.model or "")
            self.held[entry.key] = (k, milli)
            self._add(k, milli)

    def _add(self, k: tuple[str, str], gpus: int) -> None:
        left = self.totals.get(k, 0) + gpus
        if left:
            self.totals[k] = left
        else:
            self.totals.pop(k, None)

    def current(self) -> dict[tuple[str, str], int]:
        quotas = self.state.quotas
        membership = (frozenset(quotas.teams), quotas.namespace_teams())
        if membership != self.membership:  # teams re-resolved: walk once
            self.membership = membership
            self.totals, self.held = {}, {}
            for entry in self.state.ledger:
                self._change(entry, 1)
        return self.totals


_HELD: "weakref.WeakKeyDictionary[ClusterState, GpuHeld]" = weakref.WeakKeyDictionary()


def gpus_held(state: ClusterState) -> GpuHeld:
    held = _HELD.get(state)
    if held is None:
        held = _HELD[state] = GpuHeld(state)
    return held


def account_gpu_seconds(state: ClusterState, m: Metrics, elapsed: float) -> None:
    """Add `elapsed` seconds of every GPU held, by team and GPU model (cost showback); a fraction counts as
    its fraction (a pod holding 250 milli of a GPU for 4 s adds 1 GPU-second). The team gauges are written
    again only when the quota book changed (its version) since they were last written."""
    held = gpus_held(state)
    for (team, model), milli in held.current().items():
        m.gpu_seconds.labels(team, model).inc(milli * elapsed / 1000.0)
    if held.exported[0] is not m or held.exported[1] != state.quotas.version:
        export_team_gauges(state, m)
        held.exported = (m, state.quotas.version)


__all__ = ["GPU", "account_gpu_seconds", "export_team_gauges", "team_rows", "team_status"]
