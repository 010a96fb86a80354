"""Team quotas: which team a pod belongs to, whether its quota admits it, and where it may go.

Semantics (Kueue-like; docs/quotas.md has worked examples): a team always fits up to `guaranteed`;
above it, it borrows what its cohort lends, up to `max`; it places on its own pools, and on the pools
of its cohort only when borrowing. Usage counts bound pods and bind reservations alike, so concurrent
binds see each other's reservations at once.
"""

from dataclasses import dataclass, field
from typing import Any

from scheduler.model.constants import GPU_MILLI
from scheduler.model.names import GPU
from scheduler.model.podspec import PodAsk
from scheduler.model.quantity import QuantityError, format_units, to_units

MODEL_PREFIX = GPU + "/"  # usage key of one GPU model: "nvidia.com/gpu/NVIDIA-H100-80GB-HBM3"


def in_gpu_milli(res: str) -> bool:
    """GPUs (nvidia.com/gpu and per-model keys) are counted in milli, so fractions add up exactly."""
    return res == GPU or res.startswith(MODEL_PREFIX)


class QuotaSpecError(ValueError):
    """A TeamQuota whose spec cannot be read; reported as a status condition."""


@dataclass(slots=True)
class Limit:
    guaranteed: int = 0
    max: int | None = None  # None (only when built by hand): no cap besides what the cohort lends
    lending: int | None = None  # None: all of the unused guaranteed share may be lent

    @property
    def lendable(self) -> int:
        return self.guaranteed if self.lending is None else min(self.lending, self.guaranteed)

    @property
    def unlent(self) -> int:
        """The part of `guaranteed` the team keeps for itself (never lent to its cohort)."""
        return self.guaranteed - self.lendable


@dataclass(slots=True)
class Team:
    name: str
    namespaces: frozenset[str] = frozenset()
    selector: dict[str, Any] | None = None
    pools: frozenset[str] = frozenset()
    cohort: str | None = None
    limits: dict[str, Limit] = field(default_factory=dict)  # resource or MODEL_PREFIX+model -> limit
    generation: int = 0
    used: dict[str, int] = field(default_factory=dict)
    pods: int = 0
    conflicts: tuple[str, ...] = ()  # other teams claiming one of our namespaces
    error: str | None = None
    status: dict[str, Any] | None = None  # status as last read from the API server (for merge patches)


@dataclass(slots=True)
class Admission:
    """The quota verdict for one pod: where it may go, or the one sentence that says why not."""

    team: str | None
    borrowing: bool
    own_pools: frozenset[str] | None  # None: every pool
    cohort_pools: frozenset[str]
    blocked_models: dict[str, str]  # GPU model -> why the team's per-model quota refuses it
    error: str | None = None


def _limit(name: str, raw: Any) -> Limit:
    if not isinstance(raw, dict):
        raise QuotaSpecError(f"resources[{name}] must be an object")
    unit = "cpu" if in_gpu_milli(name) else name  # "cpu" parses any quantity into thousandths
    try:
        vals = {k: to_units(unit, raw[k]) for k in ("guaranteed", "max", "lendingLimit") if raw.get(k) is not None}
    except QuantityError as exc:
        raise QuotaSpecError(f"resources[{name}]: {exc}") from exc
    guaranteed = vals.get("guaranteed", 0)
    # The CRD: "max: Unset means guaranteed (no borrowing)".
    return Limit(guaranteed=guaranteed, max=vals.get("max", guaranteed), lending=vals.get("lendingLimit"))


def parse_team(obj: dict[str, Any]) -> Team:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    team = Team(
        name=str(meta.get("name") or ""),
        generation=int(meta.get("generation") or 0),
        status=obj.get("status") if isinstance(obj.get("status"), dict) else None,
    )
    try:
        team.namespaces = frozenset(str(n) for n in spec.get("namespaces") or [])
        team.selector = spec.get("namespaceSelector")
        team.pools = frozenset(str(p) for p in spec.get("pools") or [])
        team.cohort = spec.get("cohort") or None
        for name, raw in (spec.get("resources") or {}).items():
            team.limits[name] = _limit(name, raw)
        for model, raw in (spec.get("gpuModels") or {}).items():
            team.limits[MODEL_PREFIX + model] = _limit(MODEL_PREFIX + model, raw)
    except (QuotaSpecError, AttributeError, TypeError) as exc:
        team.error = str(exc)
    return team


def _selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and present and labels[key] in values):
            return False
        if (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


class QuotaBook:
    """All teams, their usage, and pod admission."""

    def __init__(self, unmatched_policy: str = "shared", shared_pools: list[str] | None = None) -> None:
        self.teams: dict[str, Team] = {}
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.unmatched_policy = unmatched_policy
        self.shared_pools = frozenset(shared_pools or [])
        self._team_of_ns: dict[str, str | None] = {}
        self.version = 0  # bumped on every change of teams or usage: status writer watches it
        # The most replicas per GPU among nodes sharing nvidia.com/gpu, and among nodes offering
        # nvidia.com/gpu.shared (ClusterState keeps it): what a GPU ask may cost at least (admission).
        self.replicas = (1, 1)

    # -- objects from the informers ------------------------------------------------------------
    def upsert_team(self, obj: dict[str, Any]) -> Team:
        team = parse_team(obj)
        old = self.teams.get(team.name)
        if old is not None:
            team.used, team.pods = old.used, old.pods
        self.teams[team.name] = team
        self._reindex()
        return team

    def remove_team(self, name: str) -> None:
        if self.teams.pop(name, None) is not None:
            self._reindex()

    def set_namespace(self, name: str, labels: dict[str, str] | None) -> None:
        if labels is None:
            self.namespace_labels.pop(name, None)
        else:
            self.namespace_labels[name] = labels
        self._reindex()

    def _reindex(self) -> None:
        """Recompute namespace -> team and flag overlapping claims on both teams."""
        claims: dict[str, list[str]] = {}
        for team in self.teams.values():
            for ns in self._namespaces_of(team):
                claims.setdefault(ns, []).append(team.name)
        conflicts: dict[str, set[str]] = {name: set() for name in self.teams}
        self._team_of_ns = {}
        for ns, names in claims.items():
            if len(names) > 1:
                for n in names:
                    conflicts[n].update(x for x in names if x != n)
            self._team_of_ns[ns] = sorted(names)[0] if len(names) == 1 else None
        for name, team in self.teams.items():
            team.conflicts = tuple(sorted(conflicts[name]))
        self.version += 1

    def _namespaces_of(self, team: Team) -> set[str]:
        names = set(team.namespaces)
        if team.selector:
            names.update(ns for ns, labels in self.namespace_labels.items() if _selector_matches(team.selector, labels))
        return names

    def namespace_teams(self) -> dict[str, str | None]:
        """A copy of namespace -> team name (None where several teams claim the namespace)."""
        return dict(self._team_of_ns)

    def team_for(self, namespace: str) -> tuple[Team | None, str | None]:
        """The pod's team, or an error when teams overlap on its namespace."""
        if namespace in self._team_of_ns:
            name = self._team_of_ns[namespace]
            if name is None:
                claimants = sorted(t.name for t in self.teams.values() if namespace in self._namespaces_of(t))
                return None, (
                    f"namespace {namespace} is claimed by several TeamQuotas ({', '.join(claimants)}); fix the overlap"
                )
            return self.teams[name], None
        return None, None

    # -- usage ---------------------------------------------------------------------------------
    def account(self, team_name: str | None, request: dict[str, int], model: str | None, sign: int) -> None:
        team = self.teams.get(team_name or "")
        if team is None:
            return
        for res, amount in request.items():
            team.used[res] = team.used.get(res, 0) + sign * amount
        if model and request.get(GPU):
            key = MODEL_PREFIX + model
            team.used[key] = team.used.get(key, 0) + sign * request[GPU]
        team.pods += sign
        self.version += 1

    def account_units(self, team_name: str | None, units: dict[str, int], sign: int) -> None:
        """Usage that is not a pod's (an allocated ResourceClaim's devices, cluster/dra.py): no pod count."""
        team = self.teams.get(team_name or "")
        if team is None:
            return
        for res, amount in units.items():
            team.used[res] = team.used.get(res, 0) + sign * amount
        self.version += 1

    def members(self, team: Team) -> list[Team]:
        """The teams that share quota with `team` (itself included)."""
        if not team.cohort:
            return [team]
        return [t for t in self.teams.values() if t.cohort == team.cohort]

    def borrowed(self, team: Team, res: str) -> int:
        return max(0, above_guarantee(team, res))

    # -- admission -----------------------------------------------------------------------------
    def admit(self, ask: PodAsk) -> Admission:
        team, error = self.team_for(ask.namespace)
        if error:
            return Admission(None, False, frozenset(), frozenset(), {}, error)
        if team is None:
            if self.unmatched_policy == "reject" and self.teams:
                return Admission(
                    None,
                    False,
                    frozenset(),
                    frozenset(),
                    {},
                    f"namespace {ask.namespace} belongs to no TeamQuota and this cluster rejects pods of no team",
                )
            pools = self.shared_pools if self.teams else None
            return Admission(None, False, pools, frozenset(), {})
        if team.error:
            return Admission(
                team.name,
                False,
                frozenset(),
                frozenset(),
                {},
                f"team {team.name}: TeamQuota spec is invalid: {team.error}",
            )
        request = ask.request.quota_units(replicas=self.replicas)
        borrowing = False
        for res, amount in request.items():
            verdict = self._check(team, res, amount)
            if verdict is None:
                continue
            if isinstance(verdict, str):
                return Admission(team.name, False, frozenset(), frozenset(), {}, verdict)
            borrowing = True
        blocked, model_borrow = self._models(team, ask)
        own = self.pools_of(team)
        cohort_pools = frozenset(p for t in self.members(team) if t is not team for p in self.pools_of(t))
        return Admission(team.name, borrowing or model_borrow, own, cohort_pools - own, blocked)

    def pools_of(self, team: Team) -> frozenset[str]:
        """The CRD: "pools ... Empty means the shared pools"."""
        return team.pools or self.shared_pools

    def _check(self, team: Team, res: str, amount: int) -> str | bool | None:
        """None: within guaranteed; True: admitted by borrowing; a sentence: refused."""
        lim = team.limits.get(res)
        used = team.used.get(res, 0)
        if lim is None:
            return None
        after = used + amount
        if lim.max is not None and after > lim.max:
            return (
                f"team {team.name}: {resource_label(res)} {format_amount(res, used)} used + "
                f"{format_amount(res, amount)} requested > max {format_amount(res, lim.max)}"
            )
        if after <= lim.guaranteed:
            return None
        reserve = lim.unlent
        delta = max(0, after - reserve) - max(0, used - reserve)
        free = self.cohort_free(team, res)
        if delta > free:
            why = (
                f"cohort {team.cohort} has only {format_amount(res, free)} left to lend"
                if team.cohort
                else f"team {team.name} is in no cohort to borrow from"
            )
            return (
                f"team {team.name}: {resource_label(res)} {format_amount(res, used)} used + "
                f"{format_amount(res, amount)} requested > guaranteed {format_amount(res, lim.guaranteed)}, "
                f"and {why}"
            )
        return True

    def cohort_free(self, team: Team, res: str) -> int:
        """The cohort's shared capacity of `res` not yet used: each member puts in its lendable part
        of `guaranteed` and uses the shared capacity with whatever it holds beyond its unlent part."""
        cap = 0
        use = 0
        for t in self.members(team):
            lim = t.limits.get(res)
            if lim is None:
                continue
            cap += lim.lendable
            use += max(0, t.used.get(res, 0) - lim.unlent)
        return max(0, cap - use)

    def _models(self, team: Team, ask: PodAsk) -> tuple[dict[str, str], bool]:
        """GPU models the per-model quotas refuse (model -> the sentence why), and whether a model that
        is admitted would be borrowed. Models the quota does not name are not limited."""
        blocked: dict[str, str] = {}
        borrow = False
        milli = ask.request.nominal_gpu_milli(self.replicas)
        if milli <= 0:
            return blocked, borrow
        for key in team.limits:
            if not key.startswith(MODEL_PREFIX):
                continue
            verdict = self._check(team, key, milli)
            if isinstance(verdict, str):
                blocked[key[len(MODEL_PREFIX) :]] = verdict
            elif verdict is True:
                borrow = True
        return blocked, borrow

    def check_charge(self, team_name: str | None, charge: dict[str, int], model: str | None) -> tuple[str | None, bool]:
        """(the sentence refusing `charge`, or None; whether it borrows) for an amount known once the node
        is (a fraction's exact GPU milli)."""
        team = self.teams.get(team_name or "")
        if team is None:
            return None, False
        keys = dict(charge)
        if model and GPU in charge:
            keys[MODEL_PREFIX + model] = charge[GPU]
        borrowing = False
        for res, amount in keys.items():
            verdict = self._check(team, res, amount)
            if isinstance(verdict, str):
                return verdict, False
            borrowing = borrowing or verdict is True
        return None, borrowing


def above_guarantee(team: Team, res: str, giving_up: int = 0) -> int:
    """How much of `res` the team uses beyond its guaranteed share once it gives up `giving_up`;
    negative when below it (what preemption must never take a team to)."""
    lim = team.limits.get(res)
    return team.used.get(res, 0) - giving_up - (lim.guaranteed if lim else 0)


def resource_label(res: str) -> str:
    """A usage key as a person reads it: "cpu", or "NVIDIA-H100-80GB-HBM3 GPUs" for a per-model key."""
    return res[len(MODEL_PREFIX) :] + " GPUs" if res.startswith(MODEL_PREFIX) else res


def format_amount(res: str, amount: int) -> str:
    """An amount of a usage key as Kubernetes writes quantities; GPUs (milli) as "4" or "2.5"."""
    if in_gpu_milli(res):
        whole, milli = divmod(amount, GPU_MILLI)
        return str(whole) if not milli else f"{amount / GPU_MILLI:.3f}".rstrip("0")
    return format_units(res, amount)
