"""ClusterState: everything Berth knows, owned by the event loop.

Informer events (or the demo generator) come in through `apply_*`; handlers read it without awaiting
in between, so there are no locks and no torn reads. Everything here can be rebuilt from a list of
the API server: decisions that must survive a restart are written on the pod as annotations.
"""

import logging
import time
from typing import Any

from scheduler.cluster.dra import DraTable
from scheduler.cluster.gangs import GangTable
from scheduler.cluster.ledger import PodEntry, PodLedger, PoolUsage, Reservations
from scheduler.cluster.nodetable import NodeTable
from scheduler.cluster.seen import SeenPods
from scheduler.cluster.truth import DeviceTruth, Mismatch
from scheduler.config import Config
from scheduler.model.constants import GPU_MILLI, MAX_GPUS
from scheduler.model.names import ANN_BORROWING, ANN_GPU_IDS, ANN_GPU_MILLI, ANN_TEAM, GPU
from scheduler.model.podspec import PodError, gpu_fraction, pod_request
from scheduler.policy.quotas import QuotaBook

log = logging.getLogger("berth.state")

TERMINAL_PHASES = ("Succeeded", "Failed")


def pod_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def parse_gpu_ids(raw: Any) -> int:
    """Device mask from the berth.dev/gpu-ids annotation ("0,1,5"); 0 when absent or unreadable."""
    if not raw or not isinstance(raw, str):
        return 0
    mask = 0
    for part in raw.split(","):
        part = part.strip()
        if part.isdigit() and int(part) < MAX_GPUS:
            mask |= 1 << int(part)
    return mask


def parse_gpu_milli(raw: Any) -> int:
    """A fraction's milli from the berth.dev/gpu-milli annotation ("250"); 0 when absent or unreadable."""
    if not isinstance(raw, str) or not raw.strip().isdigit():
        return 0
    milli = int(raw.strip())
    return milli if 0 < milli < GPU_MILLI else 0


def format_gpu_ids(mask: int) -> str:
    return ",".join(str(i) for i in range(MAX_GPUS) if mask >> i & 1)


class ClusterState:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.table = NodeTable()
        self.pools = PoolUsage()
        self.quotas = QuotaBook(config.quotas.unmatched_pods, config.quotas.shared_pools)
        self.ledger = PodLedger(self.table, self.pools, self._team_hook)
        self.reservations = Reservations(config.bind.reservation_ttl_seconds, self._expired)
        # Pods seen by the verbs, so bind (which gets only names) knows what they ask for.
        self.seen = SeenPods()
        self.synced: dict[str, bool] = {}
        self.last_event = 0.0  # monotonic time of the last informer event or bookmark
        # False when no watch feeds the state (the demo): then nothing can go stale and staleness is 0.
        self.watched = True
        self.last_sync = 0.0  # wall time the last full list finished
        self.started = time.monotonic()
        self.expired_reservations = 0
        # Gangs (scheduler/admission/, off unless config.admission.enabled): membership, node labels for
        # topology domains, the admission loop's plans (pod key -> node: filter steers the pod there) and
        # the capacity held for planned members until they bind (pod key -> monotonic deadline).
        self.gangs_on = config.admission.enabled
        self.gangs = GangTable(config.admission.queueing)
        self.node_labels: dict[str, dict[str, str]] = {}
        self.plans: dict[str, str] = {}
        self.gang_holds: dict[str, float] = {}
        # What `berth agent` says each pod really holds (cluster/truth.py): preferred over Berth's plan.
        self.truth = DeviceTruth()
        # Dynamic Resource Allocation (resource.k8s.io/v1): classes, slices, claims; allocated claims are
        # charged to their namespace's team once each (cluster/dra.py).
        self.dra = DraTable(self._team_name, self.quotas.account_units)

    # -- readiness -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return bool(self.synced) and all(self.synced.values())

    def mark_synced(self, resource: str, synced: bool = True) -> None:
        self.synced[resource] = synced
        if synced:
            self.last_sync = time.time()
        self.touch()

    def touch(self) -> None:
        self.last_event = time.monotonic()

    def staleness(self) -> float:
        """Seconds since the last watch event or bookmark (inf before the first); 0 with no watch."""
        if not self.watched:
            return 0.0
        return time.monotonic() - self.last_event if self.last_event else float("inf")

    # -- nodes ---------------------------------------------------------------------------------
    def apply_node(self, kind: str, node: dict[str, Any]) -> None:
        name = (node.get("metadata") or {}).get("name")
        if not isinstance(name, str):
            return
        slot = self.table.slot_of.get(name)
        if slot is not None:
            self.ledger.node_removing(slot)
        if self.gangs_on:
            self._node_labels(kind, name, node)
        if kind == "DELETED":
            self.table.remove(name)
            self.truth.forget(name)
            self.quotas.replicas = self.table.max_replicas()
            return
        try:
            slot = self.table.upsert(node)
        except ValueError as exc:
            log.warning("node %s ignored: %s", name, exc)
            self.table.remove(name)
            return
        finally:
            self.quotas.replicas = self.table.max_replicas()
        self.pools.ensure(len(self.table.pools))
        self.ledger.node_added(slot)
        if self.truth.node_report(name, node):
            self._correct_node(name)

    # -- pods ----------------------------------------------------------------------------------
    def apply_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        key = pod_key(str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if self.gangs_on:
            self._gang_pod(kind, key, pod, node, phase)
        if kind == "DELETED" or phase in TERMINAL_PHASES:
            self.reservations.pop(key, None)
            self.ledger.release(key)
            self.dra.forget(key)
            return
        if not node:
            return  # pending: holds nothing (a reservation of ours, if any, stays until confirmed or expired)
        entry = self._entry_from_pod(key, meta, spec, node)
        if entry is None:
            return
        held = self.ledger.get(key)
        self.reservations.pop(key, None)
        corrected = self._prefer_truth(entry, held)
        if (
            held is not None
            and held.node == node
            and held.request == entry.request
            and (held.gpu_ids == entry.gpu_ids or not entry.gpu_ids)
        ):
            held.confirmed = True  # our reservation (or an earlier event) already accounts it
            held.uid = entry.uid or held.uid
            return
        self.ledger.hold(entry)
        if corrected:
            self._correct_node(node)  # other pods' plans may sit on the GPUs this one really holds

    def _entry_from_pod(self, key: str, meta: dict[str, Any], spec: dict[str, Any], node: str) -> PodEntry | None:
        annotations = meta.get("annotations") or {}
        try:
            request = pod_request(spec)
        except PodError as exc:
            log.warning("pod %s on %s: cannot read its requests (%s); counting none", key, node, exc)
            return None
        try:
            request.gpu_fraction = gpu_fraction(annotations)
        except PodError:
            request.gpu_fraction = 0  # running already: hold what its replicas say
        team = annotations.get(ANN_TEAM)
        if not team:
            resolved, _ = self.quotas.team_for(key.split("/", 1)[0])
            team = resolved.name if resolved else None
        return PodEntry(
            key=key,
            uid=str(meta.get("uid") or ""),
            node=node,
            request=request,
            priority=int(spec.get("priority") or 0),
            team=team,
            borrowing=annotations.get(ANN_BORROWING) == "true",
            gpu_ids=parse_gpu_ids(annotations.get(ANN_GPU_IDS)),
            gpu_milli=parse_gpu_milli(annotations.get(ANN_GPU_MILLI)),
            confirmed=True,
            since=time.monotonic(),
        )

    # -- device truth (cluster/truth.py) ---------------------------------------------------------
    def _truth_for(self, entry: PodEntry) -> int | None:
        """The device mask the node reports for this pod, where the ledger can use it."""
        truth = self.truth.reported(entry.node, entry.key)
        if truth is None or not (entry.request.gpu or entry.request.gpu_shared):
            return None
        if entry.gpu_milli and truth.bit_count() != 1:
            return None  # a fraction lives on one GPU; anything else is not a report about it
        return truth

    def _prefer_truth(self, entry: PodEntry, held: PodEntry | None) -> bool:
        """Take the reported devices over the plan; True (and counted) when they differ from what was held."""
        truth = self._truth_for(entry)
        if truth is None:
            return False
        before = held.gpu_ids if held is not None and held.node == entry.node else entry.gpu_ids
        entry.gpu_ids = truth
        if before and before != truth:
            self.truth.record(Mismatch(entry.key, entry.uid or (held.uid if held else ""), entry.node, before, truth))
            return True
        return False

    def _correct_node(self, name: str) -> None:
        """The node's report changed: every pod whose devices differ takes the reported ones. Its GPU pods
        are released and held again, reported ones first, so a plan that sat on really-held GPUs is moved
        off them and the free GPUs and islands are those the node really has free."""
        entries = [self.ledger.pods[k] for k in sorted(self.ledger.by_node.get(name, ()))]
        wrong = [(e, t) for e in entries if (t := self._truth_for(e)) is not None and t != e.gpu_ids]
        if not wrong:
            return
        devices = [e for e in entries if e.request.gpu or e.request.gpu_shared]
        for e in devices:
            self.ledger.release(e.key)
        for e, truth in wrong:
            if e.gpu_ids:
                self.truth.record(Mismatch(e.key, e.uid, name, e.gpu_ids, truth))
            e.gpu_ids = truth
        for e in sorted(devices, key=lambda e: self._truth_for(e) is None):
            self.ledger.hold(e)

    # -- Dynamic Resource Allocation (cluster/dra.py) ---------------------------------------------
    def _team_name(self, namespace: str) -> str | None:
        team, _ = self.quotas.team_for(namespace)
        return team.name if team else None

    def apply_device_class(self, kind: str, obj: dict[str, Any]) -> None:
        self.dra.apply_class(kind, obj)

    def apply_resource_slice(self, kind: str, obj: dict[str, Any]) -> None:
        self.dra.apply_slice(kind, obj)

    def apply_claim_template(self, kind: str, obj: dict[str, Any]) -> None:
        self.dra.apply_template(kind, obj)

    def apply_resource_claim(self, kind: str, obj: dict[str, Any]) -> None:
        self.dra.apply_claim(kind, obj)

    # -- teams ---------------------------------------------------------------------------------
    def apply_team(self, kind: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str):
            return
        before = self._membership()
        if kind == "DELETED":
            self.quotas.remove_team(name)
        else:
            self.quotas.upsert_team(obj)
        if self._membership() != before:
            self._recount_teams()

    def apply_namespace(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if isinstance(name, str):
            before = self._membership()
            self.quotas.set_namespace(name, None if kind == "DELETED" else dict(meta.get("labels") or {}))
            if self._membership() != before:
                self._recount_teams()

    def _membership(self) -> tuple[frozenset[str], dict[str, str | None]]:
        """The teams and which namespace belongs to which: all that team usage depends on. The recount walks
        every pod (~200 ms at 150,000), so events that change neither (a TeamQuota status write coming back
        through the watch, a namespace of no team) skip it; upsert_team keeps a team's usage."""
        return frozenset(self.quotas.teams), self.quotas.namespace_teams()

    def _recount_teams(self) -> None:
        """Team usage from the ledger, after teams or their namespaces changed."""
        for team in self.quotas.teams.values():
            team.used, team.pods = {}, 0
        for entry in self.ledger:
            if entry.team not in self.quotas.teams:
                resolved, _ = self.quotas.team_for(entry.key.split("/", 1)[0])
                entry.team = resolved.name if resolved else entry.team
            self._team_hook(entry, 1)
        self.dra.recount()

    def _team_hook(self, entry: PodEntry, sign: int) -> None:
        if sign > 0:  # remember the model: the node may be gone when the pod releases
            slot = self.table.slot_of.get(entry.node)
            facts = self.table.facts[slot] if slot is not None else None
            # No device-plugin GPUs there: a GPU ask was served by DRA, whose claim counts the model.
            entry.model = facts.gpu_model if facts and slot is not None and self.table.alloc_gpu[slot] else None
            entry.charged = entry.request.quota_units(entry.held_gpu_milli())  # fractions as fractions
        charged = entry.charged if entry.charged is not None else entry.request.quota_units()
        self.quotas.account(entry.team, charged, entry.model, sign)

    # -- reservations (bind) ---------------------------------------------------------------------
    def reserve(self, entry: PodEntry) -> None:
        entry.confirmed = False
        entry.since = time.monotonic()
        self.ledger.hold(entry)
        self.reservations[entry.key] = entry

    def forget(self, key: str) -> None:
        """A bind failed: give back what its reservation held."""
        if self.reservations.pop(key, None) is not None:
            self.ledger.release(key)
        self.dra.forget(key)  # what bind assumed for its claims

    def _expired(self, key: str, entry: PodEntry) -> None:
        held = self.ledger.get(key)
        if held is entry and not held.confirmed:
            log.warning("reservation of %s on %s expired unconfirmed; released", key, entry.node)
            self.ledger.release(key)
            self.expired_reservations += 1

    # -- gangs (scheduler/admission/) -------------------------------------------------------------
    def _node_labels(self, kind: str, name: str, node: dict[str, Any]) -> None:
        if kind == "DELETED":
            self.node_labels.pop(name, None)
        else:
            labels = (node.get("metadata") or {}).get("labels") or {}
            self.node_labels[name] = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}

    def _gang_pod(self, kind: str, key: str, pod: dict[str, Any], node: str | None, phase: Any) -> None:
        """A bound pod's event: count it in its gang; the plan and the hold of a member end when it binds."""
        if kind == "DELETED" or phase in TERMINAL_PHASES or node:
            self.plans.pop(key, None)
            self.gang_holds.pop(key, None)
            self.gangs.bound_pod(kind, pod)

    def apply_pending_pod(self, kind: str, pod: dict[str, Any]) -> None:
        """The pending pods of Berth's scheduler (gang members, queued pods)."""
        self.gangs.pending_pod(kind, pod)
        if kind == "DELETED":
            meta = pod.get("metadata") or {}
            key = pod_key(str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
            spec = pod.get("spec") or {}
            if not spec.get("nodeName"):  # deleted while pending (a bound pod leaves this watch as DELETED too)
                self.release_hold(key)
                self.plans.pop(key, None)
                self.dra.forget(key)  # the hold its filter left for its claims (policy/devices.py: _hold)

    def apply_podgroup(self, kind: str, obj: dict[str, Any]) -> None:
        self.gangs.podgroup(kind, obj)

    def apply_workload_podgroup(self, kind: str, obj: dict[str, Any]) -> None:
        self.gangs.workload_podgroup(kind, obj)

    def hold_planned(self, entry: PodEntry, deadline: float) -> None:
        """Hold a planned member's capacity (node, GPUs, team quota) until it binds or `deadline`."""
        entry.confirmed = False
        entry.since = time.monotonic()
        self.ledger.hold(entry)
        self.gang_holds[entry.key] = deadline

    def release_hold(self, key: str) -> None:
        if self.gang_holds.pop(key, None) is not None:
            held = self.ledger.get(key)
            if held is not None and not held.confirmed:
                self.ledger.release(key)

    def expire_holds(self, now: float) -> list[str]:
        gone = [k for k, deadline in self.gang_holds.items() if deadline <= now]
        for key in gone:
            self.release_hold(key)
        return gone

    # -- views -----------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {
            "nodes": len(self.table),
            "pods": len(self.ledger),
            "teams": len(self.quotas.teams),
            "reservations": len(self.reservations),
            "expiredReservations": self.expired_reservations,
            "ready": self.ready,
            "synced": dict(self.synced),
            "lastSync": self.last_sync,
            "stalenessSeconds": None if self.last_event == 0 or not self.watched else round(self.staleness(), 3),
            "watched": self.watched,
            "gpuModels": list(self.table.models),
            "pools": list(self.table.pools),
            "gpuAssignment": self.truth.view(),
            "dra": self.dra.summary(),
        }

    def node_view(self, slot: int) -> dict[str, Any]:
        t = self.table
        facts = t.facts[slot]
        return {
            "name": t.names[slot],
            "pool": facts.pool if facts else "",
            "gpuModel": facts.gpu_model if facts else None,
            "allocatable": t.allocatable(slot),
            "free": t.free(slot),
            "gpuIdsUsed": format_gpu_ids(t.gpu_used[slot]),
            "gpuMilliFree": t.free_milli(slot),
            "gpuMilliShared": {str(g): m for g, m in enumerate(t.device_milli(slot)) if m},
            "gpuReplicas": t.replicas[slot],
            "gpuSharing": facts.sharing if facts else "none",
            "islands": facts.islands if facts else [],
            "topologyError": facts.topology_error if facts else None,
            "load": t.load[slot] if t.load[slot] >= 0 else None,
            "unschedulable": t.cordoned(slot),
            "draDevices": self.dra.node_view(t.names[slot] or ""),
            "ready": facts.ready if facts else True,
            "taints": [f"{k}{'=' + v if v else ''}:{e}" for k, v, e in facts.taints] if facts else [],
        }


__all__ = ["GPU", "ClusterState", "format_gpu_ids", "parse_gpu_ids", "parse_gpu_milli", "pod_key"]
