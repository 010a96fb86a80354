"""The admission loop (leader only): ungate a gang when all its members exist, its team's quota admits
the whole gang and the planner finds a node for every member now; nothing is ungated otherwise.

On admission, before the first await: every member's capacity is held in the ledger (so other pods'
filter sees it taken) and its planned node is recorded in `state.plans` (filter steers the member
there). Then one JSON patch per member removes the gate, pins the member to its node with required
node affinity (allowed while the pod is gated, in the same write) and records the plan on the pod
(`berth.dev/gang-plan`, `berth.dev/gang-admitted-at`), so a new leader rebuilds plans and holds from
a list: a gang half-ungated by a leader that died is completed around its pinned members, never left
partial by Berth; holds live in memory only, so none survives a restart.

The queue: gangs in order of priority, then creation time. Policy StrictFIFO per cohort (the team's
cohort, else the team) on the nodes the head could use: a gang that waits for capacity holds back,
from every gang after it in its cohort, each node one of its members could be placed on (its
nodeSelector and affinity allow it), so what frees up there goes to it and a stream of small gangs
cannot starve a large one; later gangs that need none of those nodes still pass. Gangs waiting for
members, for their own quota, or that can never fit (bad input) hold back nothing. Pods that are not
gated (queueing off) are not held back.
"""

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from scheduler.admission.planner import Plan, Refusal, plan_gang, reach
from scheduler.admission.reclaim import Reclaim, reclaim
from scheduler.cluster.gangs import Gang, Member
from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState
from scheduler.model.names import (
    ANN_GANG_ADMITTED,
    ANN_GANG_PLAN,
    GATE_ADMISSION,
    PODGROUP_GROUP,
    PODGROUP_VERSION,
    WORKLOAD_GROUP,
    WORKLOAD_VERSION,
)
from scheduler.model.podspec import PodError, pod_ask

log = logging.getLogger("berth.admission")


class Client(Protocol):
    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, bytes]: ...


def pin(affinity: dict[str, Any] | None, node: str) -> dict[str, Any]:
    """`affinity` tightened to `node`: a matchFields requirement ANDed into every required term (or the
    only term): the one change the API server allows on a gated pod's node affinity."""
    out = copy.deepcopy(affinity) if isinstance(affinity, dict) else {}
    na = out.setdefault("nodeAffinity", {})
    req = na.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    field = {"key": "metadata.name", "operator": "In", "values": [node]}
    terms = req.get("nodeSelectorTerms") or []
    if not terms:
        na["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [{"matchFields": [field]}]}
    else:
        for term in terms:
            term.setdefault("matchFields", []).append(field)
    return out


def ungate_patch(pod: dict[str, Any], node: str, admitted_at: float) -> list[dict[str, Any]]:
    """Remove the gate, pin to `node` and record the plan, in one write. A pod that was never gated (the
    webhook was down: failurePolicy Ignore) only gets the record: its affinity can no longer change, and
    filter's steering alone keeps it to its plan."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    gates = spec.get("schedulingGates") or []
    annotations = dict(meta.get("annotations") or {})
    annotations[ANN_GANG_PLAN] = node
    annotations[ANN_GANG_ADMITTED] = f"{admitted_at:.3f}"
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/uid", "value": meta.get("uid")},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ]
    if any(g.get("name") == GATE_ADMISSION for g in gates):
        ops.append({"op": "add", "path": "/spec/affinity", "value": pin(spec.get("affinity"), node)})
        rest = [g for g in gates if g.get("name") != GATE_ADMISSION]
        ops.append({"op": "replace", "path": "/spec/schedulingGates", "value": rest})
    return ops


class AdmissionLoop:
    def __init__(
        self,
        state: ClusterState,
        client: Client | None,
        is_leader: Callable[[], bool],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.state = state
        self.client = client
        self.is_leader = is_leader
        self.cfg = state.config.admission
        self.written: dict[str, tuple[Any, ...]] = {}  # gang key -> the status last written
        # gang key -> (pod keys it evicted, monotonic deadline): while any is still held, it waits for them
        self.evicting: dict[str, tuple[frozenset[str], float]] = {}
        self.admitted = 0
        r = registry if registry is not None else CollectorRegistry()
        self.m_queue = Gauge("berth_queue_gangs", "Gangs waiting for admission, by team.", ["team"], registry=r)
        self.m_wait = Gauge(
            "berth_queue_wait_seconds", "Longest wait of a gang still in the queue, by team.", ["team"], registry=r
        )
        self.m_admitted = Counter("berth_gangs_admitted_total", "Gangs admitted, by team.", ["team"], registry=r)
        self.m_latency = Gauge(
            "berth_gang_admission_seconds", "Wait of the last admitted gang, from first seen to ungated.", registry=r
        )
        self.m_evicted = Counter(
            "berth_gang_reclaim_evictions_total",
            "Pods evicted to reclaim borrowed quota for a gang, by the team that borrowed.",
            ["team"],
            registry=r,
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval_seconds)
            if not (self.is_leader() and self.state.ready):
                continue
            try:
                await self.tick()
            except Exception:
                log.exception("admission loop failed")

    def ordered(self) -> list[Gang]:
        return sorted(self.state.gangs.gangs.values(), key=lambda g: (-g.priority, g.created, g.key))

    def _timeout(self, gang: Gang) -> float:
        return gang.timeout or self.cfg.schedule_timeout_seconds

    def _cohort(self, gang: Gang) -> str:
        team, _ = self.state.quotas.team_for(gang.namespace)
        return (team.cohort or team.name) if team else ""

    async def tick(self) -> None:
        self.state.expire_holds(time.monotonic())
        # cohort -> (the first gang that waits for capacity, the slots held back for the waiting ones)
        blocked: dict[str, tuple[str, frozenset[int]]] = {}
        for gang in self.ordered():
            if gang.key not in self.state.gangs.gangs:
                continue  # deleted while an earlier gang was being written
            cohort = self._cohort(gang)
            outcome = self.consider(gang, blocked.get(cohort))
            admitted = 0
            while isinstance(outcome, Plan) and admitted <= len(gang.members):
                await self.admit(gang, outcome)
                admitted += 1
                if not gang.basic or gang.key not in self.state.gangs.gangs:
                    break
                outcome = self.consider(gang, blocked.get(cohort))  # a basic group: its next member
            if isinstance(outcome, Reclaim) or outcome == "capacity":
                if isinstance(outcome, Reclaim):
                    await self.evict(gang, outcome)
                head, held = blocked.get(cohort, (gang.key, frozenset()))
                specs = [m.pod.get("spec") or {} for m in self._unplanned(gang)]
                blocked[cohort] = (head, held | reach(self.state, specs))
        for key in [k for k in self.evicting if k not in self.state.gangs.gangs]:
            del self.evicting[key]  # the gang is gone: bounded memory
        self.gauges()
        await self.write_status()

    # -- deciding --------------------------------------------------------------------------------
    def _set(self, gang: Gang, phase: str, reason: str) -> None:
        if (gang.phase, gang.reason) != (phase, reason):
            log.info("gang %s: %s (%s)", gang.key, phase, reason or "-")
        gang.phase, gang.reason = phase, reason

    def consider(self, gang: Gang, behind: tuple[str, frozenset[int]] | None) -> Plan | Reclaim | str:
        """A plan to admit now, victims to evict for it, or what the gang waits for ("capacity" when it
        blocks its cohort)."""
        if gang.conflicts or gang.errors:
            self._set(gang, "Invalid", next(iter({**gang.conflicts, **gang.errors}.values())))
            return "invalid"
        disagree = self.state.gangs.disagreement(gang)
        if disagree:
            self._set(gang, "Invalid", disagree)
            return "invalid"
        if gang.source == "podgroup" and gang.podgroup is None:
            self._set(gang, "Pending", f"PodGroup {gang.name} does not exist (yet)")
            return "members"
        if gang.source == "workload" and gang.upstream is None:
            self._set(gang, "Pending", f"PodGroup {gang.name} ({WORKLOAD_GROUP}) does not exist (yet)")
            return "members"
        pinned = self._pinned(gang)
        if pinned is None:
            return "broken"
        gated = self._unplanned(gang)
        if not gated:
            if len(gang.bound) >= gang.min_member:
                self._set(gang, "Running", "")
            elif gang.phase not in ("TimedOut", "Broken"):
                self._set(gang, "Admitted", gang.reason if gang.phase == "Admitted" else "")
            return "admitted"
        if gang.size() < gang.min_member:
            if time.monotonic() - gang.first_seen > self._timeout(gang):  # since Berth first saw a member
                why = (
                    f"only {gang.size()} of minMember {gang.min_member} pods exist after {self._timeout(gang):.0f} s "
                    "(scheduleTimeoutSeconds): create the missing pods or lower minMember"
                )
            else:
                why = f"waiting for members: {gang.size()} of {gang.min_member} exist"
            self._set(gang, "Pending", why)
            return "members"
        try:
            asks = [pod_ask(m.pod) for m in gated]
        except PodError as exc:
            self._set(gang, "Invalid", f"a member cannot be judged: {exc}")
            return "invalid"
        if gang.basic:  # basic policy: each member on its own, oldest first (tick admits them one by one)
            order = sorted(range(len(gated)), key=lambda i: (gated[i].created, gated[i].key))
            gated, asks = [gated[i] for i in order[:1]], [asks[i] for i in order[:1]]
        specs = {m.key: m.pod.get("spec") or {} for m in gated}
        held = behind[1] if behind else frozenset()
        result = plan_gang(self.state, asks, pinned, gang.topology, gang.policy, specs, held)
        if isinstance(result, Refusal):
            if not result.hopeless and not result.quota and self.cfg.reclaim:
                waiting = self._evicted_left(gang)
                if waiting:  # the reason evict() gave stays: one event, not one per pod gone
                    if gang.phase != "Reclaiming":
                        self._set(gang, "Reclaiming", f"waiting for {waiting} evicted pods to go")
                    return "capacity"
                victims = reclaim(
                    self.state, asks, gang.priority, gang.key, pinned, gang.topology, gang.policy, specs, held
                )
                if victims is not None:
                    return victims
            why = result.reason
            if held and not result.hopeless and not result.quota:
                why += f"; nodes are held back for gang {behind[0] if behind else ''} ahead in the queue (StrictFIFO)"
            self._set(gang, "Unschedulable" if result.hopeless else "Pending", why)
            return "hopeless" if result.hopeless else "quota" if result.quota else "capacity"
        self.evicting.pop(gang.key, None)
        return result

    def _evicted_left(self, gang: Gang) -> int:
        """How many of the pods evicted for `gang` are still held (0 once gone or past the wait)."""
        keys, deadline = self.evicting.get(gang.key, (frozenset(), 0.0))
        left = sum(1 for k in keys if self.state.ledger.get(k) is not None)
        if not left or time.monotonic() > deadline:
            self.evicting.pop(gang.key, None)
            return 0
        return left

    def _unplanned(self, gang: Gang) -> list[Member]:
        """Members still to place: gated ones, and ungated ones with no plan (never gated: webhook down)."""
        return [m for m in gang.members.values() if m.gated or (not m.plan and m.key not in self.state.plans)]

    def _pinned(self, gang: Gang) -> dict[str, str] | None:
        """Ungated members not bound yet, by their recorded plan (a previous leader's, or ours): their hold
        and steering are restored while the plan is within its timeout. None: the gang is broken."""
        pinned: dict[str, str] = {}
        now_wall, now = time.time(), time.monotonic()
        for m in gang.members.values():
            if m.gated or not m.plan:
                continue
            if m.plan not in self.state.table.slot_of:
                self._set(gang, "Broken", f"planned node {m.plan} of {m.key} is gone; recreate the gang's pods")
                self.state.plans.pop(m.key, None)
                self.state.release_hold(m.key)
                return None
            left = m.admitted_at + self._timeout(gang) - now_wall
            if left <= 0:
                if m.key in self.state.plans or gang.phase != "TimedOut":
                    self._set(gang, "TimedOut", f"not all members bound within {self._timeout(gang):.0f} s")
                self.state.plans.pop(m.key, None)
                self.state.release_hold(m.key)
                continue
            pinned[m.key] = m.plan
            if m.key not in self.state.plans:
                self.state.plans[m.key] = m.plan
                self._hold(m, m.plan, now + left)
        return pinned

    def _hold(self, m: Member, node: str, deadline: float, plan: Plan | None = None) -> None:
        if self.state.ledger.get(m.key) is not None:
            return
        try:
            ask = pod_ask(m.pod)
        except PodError:
            return
        team, borrowing = plan.teams.get(m.key, (None, False)) if plan else (None, False)
        if plan is None:
            adm = self.state.quotas.admit(ask)
            team, borrowing = adm.team, adm.borrowing
        entry = PodEntry(
            key=m.key,
            uid=m.uid,
            node=node,
            request=ask.request,
            priority=ask.priority,
            team=team,
            borrowing=borrowing,
            gpu_ids=plan.gpu_ids.get(m.key, 0) if plan else 0,
            confirmed=False,
        )
        self.state.hold_planned(entry, deadline)

    # -- admitting -------------------------------------------------------------------------------
    async def admit(self, gang: Gang, plan: Plan) -> None:
        now_wall, now = time.time(), time.monotonic()
        gated = [m for m in self._unplanned(gang) if m.key in plan.nodes]
        deadline = now + self._timeout(gang)
        for m in gated:  # hold first, on the loop, before any await: filter sees the capacity taken
            self.state.plans[m.key] = plan.nodes[m.key]
            self._hold(m, plan.nodes[m.key], deadline, plan)
        self._set(gang, "Admitted", f"plan: {len(plan.nodes)} members" + (f" in {plan.domain}" if plan.domain else ""))
        team, _ = self.state.quotas.team_for(gang.namespace)
        self.m_admitted.labels(team.name if team else "").inc()
        self.m_latency.set(now - gang.first_seen)
        self.admitted += 1
        results = await asyncio.gather(*(self._ungate(m, plan.nodes[m.key], now_wall) for m in gated))
        for m, ok in zip(gated, results, strict=True):
            if ok:
                m.gated, m.plan, m.admitted_at = False, plan.nodes[m.key], now_wall
            else:  # the next tick completes the gang around the members that were written
                self.state.plans.pop(m.key, None)
                self.state.release_hold(m.key)

    # -- reclaiming ------------------------------------------------------------------------------
    async def evict(self, gang: Gang, r: Reclaim) -> None:
        """Evict the victims (the Eviction API: PodDisruptionBudgets are honoured), tell the gang and each
        victim why; the gang is admitted by a later tick once they are gone."""
        teams = ", ".join(r.teams)
        why = (
            f"reclaiming: evicting {len(r.victims)} pods of team {teams} borrowing in cohort {r.cohort}: team "
            f"{r.team} is within its guaranteed quota and the whole gang fits once they are gone"
        )
        self._set(gang, "Reclaiming", why)
        self.evicting[gang.key] = (
            frozenset(e.key for e in r.victims),
            time.monotonic() + self.cfg.reclaim_wait_seconds,
        )
        results = await asyncio.gather(*(self._evict_one(gang, r, e) for e in r.victims))
        refused = [msg for msg in results if msg]
        if refused:
            self._set(gang, "Reclaiming", f"{why}; {len(refused)} evictions refused: {refused[0]}")

    async def _evict_one(self, gang: Gang, r: Reclaim, e: PodEntry) -> str:
        """Evict one victim; "" on success (or already gone), else why not."""
        if self.client is None or not self.is_leader():
            return "this replica no longer leads"
        ns, name = e.key.split("/", 1)
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
            "deleteOptions": {"preconditions": {"uid": e.uid}} if e.uid else {},
        }
        path = f"/api/v1/namespaces/{quote(ns)}/pods/{quote(name)}/eviction"
        try:
            status, raw = await self.client.request("POST", path, body)
        except Exception as exc:
            log.warning("evicting %s for gang %s failed: %s", e.key, gang.key, exc)
            return f"{e.key}: {exc}"
        if status == 404:
            return ""
        if status not in (200, 201):
            msg = _message(raw)
            log.warning("evicting %s for gang %s refused (%s): %s", e.key, gang.key, status, msg)
            return f"{e.key}: {status} {msg}"
        log.info("evicted %s (team %s) for gang %s", e.key, e.team, gang.key)
        self.m_evicted.labels(e.team or "").inc()
        involved = {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns, "uid": e.uid}
        message = (
            f"evicted by Berth for gang {gang.key}: team {r.team} reclaims its guaranteed quota from team "
            f"{e.team}, which borrows it in cohort {r.cohort}"
        )
        await self._post_event(ns, involved, "Preempted", message, "Warning")
        return ""

    async def _ungate(self, m: Member, node: str, admitted_at: float) -> bool:
        if self.client is None:
            return True
        ns, name = m.key.split("/", 1)
        path = f"/api/v1/namespaces/{quote(ns)}/pods/{quote(name)}"
        try:
            status, raw = await self.client.request(
                "PATCH", path, ungate_patch(m.pod, node, admitted_at), content_type="application/json-patch+json"
            )
        except Exception as exc:  # aiohttp's errors are not OSErrors; any failure leaves the member gated
            log.warning("ungating %s failed: %s", m.key, exc)
            return False
        if status not in (200, 201):
            log.warning("ungating %s refused (%s): %s", m.key, status, raw[:300])
            return False
        return True

    # -- telling ---------------------------------------------------------------------------------
    def gauges(self) -> None:
        waiting: dict[str, list[float]] = {}
        now = time.monotonic()
        for gang in self.state.gangs.gangs.values():
            if any(m.gated for m in gang.members.values()):
                team, _ = self.state.quotas.team_for(gang.namespace)
                waiting.setdefault(team.name if team else "", []).append(now - gang.first_seen)
        self.m_queue.clear()
        self.m_wait.clear()
        for team_name, waits in waiting.items():
            self.m_queue.labels(team_name).set(len(waits))
            self.m_wait.labels(team_name).set(max(waits))

    def view(self) -> dict[str, Any]:
        """GET /debug/queue: every gang in queue order, where it stands and why."""
        rows = []
        for pos, gang in enumerate(self.ordered()):
            rows.append(
                {
                    "position": pos,
                    "gang": gang.key,
                    "source": gang.source,
                    "phase": gang.phase,
                    "reason": gang.reason,
                    "priority": gang.priority,
                    "minMember": gang.min_member,
                    "members": gang.size(),
                    "gated": sum(1 for m in gang.members.values() if m.gated),
                    "bound": len(gang.bound),
                    "topology": gang.topology,
                    "plan": {k: self.state.plans[k] for k in gang.members if k in self.state.plans},
                    "evicting": sorted(k for k in self.evicting.get(gang.key, ((), 0))[0] if self.state.ledger.get(k)),
                    "waitSeconds": round(time.monotonic() - gang.first_seen, 3),
                }
            )
        return {
            "policy": "StrictFIFO per cohort",
            "gangs": rows,
            "holds": len(self.state.gang_holds),
            "admitted": self.admitted,
        }

    async def write_status(self) -> None:
        if self.client is None:
            return
        for key in [k for k in self.written if k not in self.state.gangs.gangs]:
            del self.written[key]  # the gang is gone

        for gang in list(self.state.gangs.gangs.values()):
            admitted = sum(1 for m in gang.members.values() if not m.gated) + len(gang.bound)
            now = (gang.phase, gang.reason, gang.size(), admitted)
            last = self.written.get(gang.key)
            if last == now or (gang.podgroup is None and last is not None and last[:2] == now[:2]):
                continue  # a gang of annotations has no status to write: only a new reason is news
            self.written[gang.key] = now
            if gang.podgroup is not None:
                await self._status(gang, admitted)
            if gang.reason and (last is None or last[:2] != now[:2]):
                await self._event(gang)

    async def _status(self, gang: Gang, admitted: int) -> None:
        assert self.client is not None
        ns, name = gang.namespace, gang.name
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        waiting = gang.phase not in ("Admitted", "Running")
        status = {
            "phase": gang.phase,
            "members": gang.size(),
            "admitted": admitted,
            "running": len(gang.bound),
            "reason": gang.reason,
            "conditions": [
                {
                    "type": "Admitted",
                    "status": "False" if waiting else "True",
                    "reason": gang.phase,
                    "message": gang.reason,
                    "lastTransitionTime": stamp,
                }
            ],
        }
        path = f"/apis/{PODGROUP_GROUP}/{PODGROUP_VERSION}/namespaces/{quote(ns)}/podgroups/{quote(name)}/status"
        merge = "application/merge-patch+json"
        await self._quiet(self.client.request("PATCH", path, {"status": status}, content_type=merge))

    def _involved(self, gang: Gang) -> dict[str, Any] | None:
        """The PodGroup, or for a gang of annotations its first member (kubectl describe pod shows it)."""
        if gang.upstream is not None:
            return {
                "apiVersion": f"{WORKLOAD_GROUP}/{WORKLOAD_VERSION}",
                "kind": "PodGroup",
                "name": gang.name,
                "namespace": gang.namespace,
                "uid": (gang.upstream.get("metadata") or {}).get("uid"),
            }
        if gang.podgroup is not None:
            meta = gang.podgroup.get("metadata") or {}
            return {
                "apiVersion": f"{PODGROUP_GROUP}/{PODGROUP_VERSION}",
                "kind": "PodGroup",
                "name": gang.name,
                "namespace": gang.namespace,
                "uid": meta.get("uid"),
            }
        uids = {k: m.uid for k, m in gang.members.items()} or gang.bad_uids  # a gang of bad pods only: tell them
        if not uids:
            return None
        first = min(uids)
        name = first.split("/", 1)[1]
        return {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": gang.namespace, "uid": uids[first]}

    async def _event(self, gang: Gang) -> None:
        involved = self._involved(gang)
        if involved is None:
            return
        kind = "Normal" if gang.phase in ("Admitted", "Running") else "Warning"
        await self._post_event(gang.namespace, involved, gang.phase, gang.reason, kind)

    async def _post_event(self, ns: str, involved: dict[str, Any], reason: str, message: str, kind: str) -> None:
        if self.client is None:
            return
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{involved['name']}.", "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1000],
            "type": kind,
            "source": {"component": "berth-admission"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._quiet(self.client.request("POST", f"/api/v1/namespaces/{quote(ns)}/events", body))

    @staticmethod
    async def _quiet(call: Awaitable[tuple[int, bytes]]) -> None:
        try:
            status, raw = await call
            if status >= 300:
                log.debug("status/event write refused (%s): %s", status, orjson.loads(raw).get("message", ""))
        except Exception as exc:  # status and events are information: never fail the loop for them
            log.debug("status/event write failed: %s", exc)


def _message(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode(errors="replace")
    return str(body.get("message", "")) if isinstance(body, dict) else ""
