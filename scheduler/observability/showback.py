"""Showback: per-team usage as Prometheus gauges, GPU-seconds, and the rows of /debug/teams and of
TeamQuota status."""

from datetime import UTC, datetime
from typing import Any

from scheduler.cluster.state import ClusterState
from scheduler.model.names import GPU
from scheduler.observability.metrics import Metrics
from scheduler.policy.quotas import Team, in_gpu_milli
from scheduler.policy.quotas import format_amount as _fmt


def team_status(state: ClusterState, team: Team, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The TeamQuota status Berth writes back (quantities as strings, like Kubernetes does).
    A condition keeps its lastTransitionTime from `previous` while its status does not change."""
    used = {r: _fmt(r, v) for r, v in sorted(team.used.items()) if v}
    borrowed = {
        r: _fmt(r, state.quotas.borrowed(team, r)) for r in sorted(team.limits) if state.quotas.borrowed(team, r) > 0
    }
    conditions = [
        _condition(
            "Valid",
            team.error is None,
            "SpecError" if team.error else "Valid",
            team.error or "spec is valid",
            team.generation,
        )
    ]
    overlap = ", ".join(team.conflicts)
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
    return {
        "used": used,
        "borrowed": borrowed,
        "pods": team.pods,
        "conditions": conditions,
        "observedGeneration": team.generation,
    }


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


def account_gpu_seconds(state: ClusterState, m: Metrics, elapsed: float) -> None:
    """Add `elapsed` seconds of every GPU held, by team and GPU model (cost showback); a fraction counts
    as its fraction (a pod holding 250 milli of a GPU for 4 s adds 1 GPU-second)."""
    totals: dict[tuple[str, str], int] = {}  # GPU milli
    for entry in state.ledger:
        charged = entry.charged if entry.charged is not None else entry.request.quota_units()
        milli = charged.get(GPU, 0)
        if milli:
            k = (entry.team or "", entry.model or "")
            totals[k] = totals.get(k, 0) + milli
    for (team, model), milli in totals.items():
        m.gpu_seconds.labels(team, model).inc(milli * elapsed / 1000.0)
    export_team_gauges(state, m)


__all__ = ["GPU", "account_gpu_seconds", "export_team_gauges", "team_rows", "team_status"]
