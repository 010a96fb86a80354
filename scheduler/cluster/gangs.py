"""The gang table: which pods belong to which gang, and the PodGroups that say how large each must be.

Fed by ClusterState (pending pods of Berth's scheduler, bound pods, PodGroups); read by the admission
loop (scheduler/admission/). Pure bookkeeping: no API calls, no placement. Membership comes from the
scheduler-plugins label `scheduling.x-k8s.io/pod-group` (with a PodGroup giving minMember) or from
Berth's annotations (`berth.dev/gang` + `berth.dev/gang-size`); a pod naming two different gangs is a
conflict, kept aside with its reason.
"""

import time
from dataclasses import dataclass, field
from typing import Any

from scheduler.model.names import (
    ANN_GANG,
    ANN_GANG_ADMITTED,
    ANN_GANG_PLAN,
    ANN_GANG_SIZE,
    ANN_GANG_TIMEOUT,
    ANN_GANG_TOPOLOGY,
    ANN_GANG_TOPOLOGY_POLICY,
    GATE_ADMISSION,
    LABEL_POD_GROUP,
)

POLICIES = ("required", "preferred")
SINGLE = "pod:"  # gang keys of single pods queued by `queueing: true` (a gang of one)


@dataclass(slots=True)
class Membership:
    """What one pod says about its gang."""

    gang: str  # namespace/name, "" for a pod of no gang
    source: str  # "workload" (spec.schedulingGroup) | "podgroup" | "annotation" | ""
    size: int = 0  # berth.dev/gang-size (annotation gangs)
    topology: str = ""
    policy: str = "required"
    timeout: float = 0.0
    error: str = ""


def scheduling_group(spec: dict[str, Any] | None) -> str:
    """The upstream PodGroup (scheduling.k8s.io) a pod names in spec.schedulingGroup.podGroupName, or ""."""
    group = (spec or {}).get("schedulingGroup")
    name = group.get("podGroupName") if isinstance(group, dict) else None
    return name if isinstance(name, str) else ""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def membership(meta: dict[str, Any], spec: dict[str, Any] | None = None) -> Membership:
    """The gang a pod names (labels and annotations as the API server has them; with `spec`, also the
    upstream spec.schedulingGroup)."""
    # Maps of strings as the API server has them; the webhook's callers may send anything: a value of another
    # kind names no gang (an unhashable one was a 500 from /mutate, as were annotations not an object).
    labels = meta.get("labels") or {}
    ann = meta.get("annotations") or {}
    labels, ann = (m if isinstance(m, dict) else {} for m in (labels, ann))
    ns = str(meta.get("namespace") or "default")
    by_label = _text(labels.get(LABEL_POD_GROUP))
    by_ann = _text(ann.get(ANN_GANG))
    by_spec = scheduling_group(spec)
    if not by_label and not by_ann and not by_spec:
        return Membership("", "")
    named = by_spec or by_label or by_ann
    m = Membership(f"{ns}/{named}", "workload" if by_spec else "podgroup" if by_label else "annotation")
    said = [
        f"{k}={v}" for k, v in (("spec.schedulingGroup", by_spec), (LABEL_POD_GROUP, by_label), (ANN_GANG, by_ann)) if v
    ]
    if len({v for v in (by_spec, by_label, by_ann) if v}) > 1:
        m.error = f"the pod names two gangs: {' and '.join(said)}"
        return m
    m.topology = str(ann.get(ANN_GANG_TOPOLOGY) or "")
    m.policy = str(ann.get(ANN_GANG_TOPOLOGY_POLICY) or "required")
    if m.policy not in POLICIES:
        m.error = f"{ANN_GANG_TOPOLOGY_POLICY} must be required or preferred, not {m.policy!r}"
    raw_size = ann.get(ANN_GANG_SIZE)
    if raw_size is not None:
        try:
            m.size = int(str(raw_size))
            if m.size < 1:
                raise ValueError
        except ValueError:
            m.error = f"{ANN_GANG_SIZE} must be a positive integer, not {raw_size!r}"
    elif m.source == "annotation":
        m.error = f"{ANN_GANG} needs {ANN_GANG_SIZE} (how many pods the gang has)"
    raw_timeout = ann.get(ANN_GANG_TIMEOUT)
    if raw_timeout is not None:
        try:
            m.timeout = float(str(raw_timeout))
        except ValueError:
            m.error = f"{ANN_GANG_TIMEOUT} must be a number of seconds, not {raw_timeout!r}"
    return m


def gated(spec: dict[str, Any]) -> bool:
    return any(isinstance(g, dict) and g.get("name") == GATE_ADMISSION for g in spec.get("schedulingGates") or [])


@dataclass(slots=True)
class Member:
    key: str  # namespace/name
    uid: str
    pod: dict[str, Any]  # the pending Pod as last seen (its spec is needed to write the plan)
    gated: bool
    created: str  # creationTimestamp (RFC 3339 sorts as text)
    plan: str  # berth.dev/gang-plan: the node written at ungating, "" before
    admitted_at: float  # berth.dev/gang-admitted-at, 0 before


@dataclass(slots=True)
class Gang:
    key: str  # namespace/name
    source: str  # workload | podgroup | annotation | pod (a single pod queued by `queueing: true`)
    min_member: int = 0  # 0: unknown (PodGroup not seen yet)
    topology: str = ""
    policy: str = "required"
    timeout: float = 0.0  # 0: the configured default
    podgroup: dict[str, Any] | None = None
    members: dict[str, Member] = field(default_factory=dict)  # pending (unbound) members
    bound: set[str] = field(default_factory=set)  # members bound to a node
    conflicts: dict[str, str] = field(default_factory=dict)  # pod key -> why it is not counted
    errors: dict[str, str] = field(default_factory=dict)  # pod key -> a bad annotation
    sizes: dict[str, int] = field(default_factory=dict)  # pod key -> its berth.dev/gang-size (annotation gangs)
    bad_uids: dict[str, str] = field(default_factory=dict)  # pod key -> uid of the pods in conflicts and errors
    upstream: dict[str, Any] | None = None  # the scheduling.k8s.io PodGroup (source "workload")
    basic: bool = False  # an upstream PodGroup of basic policy: members are admitted one by one
    # What the admission loop decided last (read by /debug/queue, metrics and the PodGroup status).
    phase: str = "Pending"
    reason: str = ""
    first_seen: float = 0.0  # monotonic: wait time
    priority: int = 0

    @property
    def namespace(self) -> str:
        return self.key.removeprefix(SINGLE).split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.key.removeprefix(SINGLE).split("/", 1)[1]

    @property
    def created(self) -> str:
        stamps = [m.created for m in self.members.values()]
        if self.podgroup is not None:
            stamps.append(str((self.podgroup.get("metadata") or {}).get("creationTimestamp") or ""))
        return min(stamps) if stamps else ""

    def size(self) -> int:
        return len(self.members) + len(self.bound)


def pod_key_of(meta: dict[str, Any]) -> str:
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


class GangTable:
    def __init__(self, queueing: bool = False) -> None:
        self.queueing = queueing
        self.gangs: dict[str, Gang] = {}
        self.of_pod: dict[str, str] = {}  # pod key -> gang key, for pending and bound members

    def _gang(self, key: str, source: str) -> Gang:
        gang = self.gangs.get(key)
        if gang is None:
            gang = self.gangs[key] = Gang(key, source, first_seen=time.monotonic())
        return gang

    # -- pods ------------------------------------------------------------------------------------
    def pending_pod(self, kind: str, pod: dict[str, Any]) -> None:
        """A pod of Berth's scheduler without a node (the pending-pods informer)."""
        meta = pod.get("metadata") or {}
        key = pod_key_of(meta)
        if kind == "DELETED":
            self._drop_pending(key)
            return
        spec = pod.get("spec") or {}
        if spec.get("nodeName"):
            self._drop_pending(key)
            return
        m = membership(meta, spec)
        is_gated = gated(spec)
        if not m.gang:
            if not (self.queueing and is_gated):
                self._drop_pending(key)
                return
            m = Membership(f"{SINGLE}{key}", "pod", size=1)
        self._drop_pending(key, keep=m.gang)
        gang = self._gang(m.gang, m.source)
        if m.error:
            (gang.conflicts if "two gangs" in m.error else gang.errors)[key] = m.error
            gang.bad_uids[key] = str(meta.get("uid") or "")
            self.of_pod[key] = m.gang
            return
        gang.conflicts.pop(key, None)
        gang.errors.pop(key, None)
        gang.bad_uids.pop(key, None)
        ann = meta.get("annotations") or {}
        try:
            admitted = float(ann.get(ANN_GANG_ADMITTED) or 0)
        except ValueError:
            admitted = 0.0
        gang.members[key] = Member(
            key,
            str(meta.get("uid") or ""),
            pod,
            is_gated,
            str(meta.get("creationTimestamp") or ""),
            str(ann.get(ANN_GANG_PLAN) or ""),
            admitted,
        )
        gang.priority = max(gang.priority, int(spec.get("priority") or 0))
        self.of_pod[key] = m.gang
        if m.source == "annotation" and m.size:
            gang.sizes[key] = m.size
        if m.source == "annotation" or (m.source == "podgroup" and gang.podgroup is None):
            gang.min_member = m.size or gang.min_member
            gang.topology = m.topology or gang.topology
            gang.policy = m.policy if m.topology else gang.policy
            gang.timeout = m.timeout or gang.timeout

    def bound_pod(self, kind: str, pod: dict[str, Any]) -> None:
        """A pod that holds a node (the bound-pods informer): counted as a member that runs."""
        meta = pod.get("metadata") or {}
        key = pod_key_of(meta)
        gone = kind == "DELETED" or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        m = membership(meta, pod.get("spec") or {})
        gang_key = m.gang or self.of_pod.get(key, "")
        if not gang_key:
            return
        gang = self.gangs.get(gang_key)
        if gone:
            if gang is not None:
                gang.bound.discard(key)
                gang.members.pop(key, None)
                gang.sizes.pop(key, None)
                self._forget(gang)
            if self.of_pod.get(key) == gang_key:
                del self.of_pod[key]
            return
        if m.error:
            return
        gang = gang or self._gang(gang_key, m.source)
        gang.members.pop(key, None)
        gang.bound.add(key)
        self.of_pod[key] = gang_key

    def _drop_pending(self, key: str, keep: str = "") -> None:
        old = self.of_pod.get(key)
        if old is None or old == keep:
            return
        gang = self.gangs.get(old)
        if gang is not None and key not in gang.bound:
            gang.members.pop(key, None)
            gang.sizes.pop(key, None)
            gang.conflicts.pop(key, None)
            gang.errors.pop(key, None)
            gang.bad_uids.pop(key, None)
            del self.of_pod[key]
            self._forget(gang)

    def _forget(self, gang: Gang) -> None:
        if (
            not gang.members
            and not gang.bound
            and not gang.conflicts
            and not gang.errors
            and gang.podgroup is None
            and gang.upstream is None
        ):
            self.gangs.pop(gang.key, None)

    # -- PodGroups -------------------------------------------------------------------------------
    def podgroup(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = pod_key_of(meta)
        if kind == "DELETED":
            gang = self.gangs.get(key)
            if gang is not None:
                gang.podgroup = None
                gang.min_member = 0
                self._forget(gang)
            return
        gang = self._gang(key, "podgroup")
        gang.source = "podgroup"
        gang.podgroup = obj
        spec = obj.get("spec") or {}
        ann = meta.get("annotations") or {}
        try:
            gang.min_member = max(1, int(spec.get("minMember") or 1))
        except (TypeError, ValueError):
            gang.min_member = 1
        try:
            gang.timeout = float(spec.get("scheduleTimeoutSeconds") or 0)
        except (TypeError, ValueError):
            gang.timeout = 0.0
        gang.topology = str(ann.get(ANN_GANG_TOPOLOGY) or gang.topology)
        policy = str(ann.get(ANN_GANG_TOPOLOGY_POLICY) or gang.policy)
        gang.policy = policy if policy in POLICIES else "required"

    def workload_podgroup(self, kind: str, obj: dict[str, Any]) -> None:
        """An upstream PodGroup (scheduling.k8s.io/v1alpha2): gang policy gives minCount; basic policy makes
        each member its own unit (still queued, never held for the others); schedulingConstraints.topology's
        first key is a required topology domain; spec.priority orders the queue."""
        meta = obj.get("metadata") or {}
        key = pod_key_of(meta)
        if kind == "DELETED":
            gang = self.gangs.get(key)
            if gang is not None:
                gang.upstream = None
                gang.min_member = 0
                self._forget(gang)
            return
        gang = self._gang(key, "workload")
        gang.source, gang.upstream = "workload", obj
        spec = obj.get("spec") or {}
        policy = spec.get("schedulingPolicy") or {}
        gang.basic = "gang" not in policy
        try:
            gang.min_member = 1 if gang.basic else max(1, int((policy.get("gang") or {}).get("minCount") or 1))
        except (TypeError, ValueError):
            gang.min_member = 1
        topology = (spec.get("schedulingConstraints") or {}).get("topology") or []
        first = topology[0] if isinstance(topology, list) and topology and isinstance(topology[0], dict) else {}
        gang.topology, gang.policy = str(first.get("key") or ""), "required"
        priority = spec.get("priority")
        if isinstance(priority, int):  # the API server validates it as an int32
            gang.priority = max(gang.priority, priority)

    def disagreement(self, gang: Gang) -> str:
        """Members of one gang of annotations naming different sizes: which says what, "" when they agree."""
        if len(set(gang.sizes.values())) < 2:
            return ""
        by_size: dict[int, str] = {}
        for key, size in sorted(gang.sizes.items()):
            by_size.setdefault(size, key)
        said = ", ".join(f"{key} says {size}" for size, key in sorted(by_size.items()))
        return f"the members disagree on {ANN_GANG_SIZE} ({said}): give every member the same size"

    def gang_of(self, pod_key: str) -> Gang | None:
        gang_key = self.of_pod.get(pod_key)
        return self.gangs.get(gang_key) if gang_key else None
