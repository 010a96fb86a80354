"""Dynamic Resource Allocation (resource.k8s.io/v1) as Berth sees it: DeviceClasses, ResourceSlices (the
devices each node offers), ResourceClaimTemplates and ResourceClaims (what pods ask, and what kube-scheduler's
DynamicResources plugin allocated to them), owned by the event loop like the rest of ClusterState.

Berth never chooses DRA devices: kube-scheduler's DynamicResources plugin does, and writes the choice into the
claim's `status.allocation.devices.results` before it calls Berth's bind. Berth reads that result back, counts
it in team quotas (once per claim, however many pods share it) and vetoes nodes where a pod's claims would
take its team over quota (policy/devices.py).

A DeviceClass's CEL selectors are not evaluated: Berth reads the `device.driver == "..."` clauses they carry
(the form every driver's classes use) to know which slices' devices a class covers. Other expressions are
kube-scheduler's to judge; Berth's counts are of what was really allocated.
"""

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

from scheduler.model.constants import GPU_MILLI
from scheduler.model.names import GPU
from scheduler.policy.quotas import MODEL_PREFIX

DRA_PATH = "/apis/resource.k8s.io/v1"
# The quota key of a device class, the name Kubernetes' own ResourceQuota gives DRA devices.
CLASS_KEY_SUFFIX = ".deviceclass.resource.k8s.io/devices"
# The extended resource name every DeviceClass answers to without spec.extendedResourceName (KEP-5004).
IMPLICIT_EXTENDED_PREFIX = "deviceclass.resource.kubernetes.io/"
EXTENDED_CLAIM_ANNOTATION = "resource.kubernetes.io/extended-resource-claim"
PRODUCT_NAME = "productName"
ALL = 0  # Request.count of allocationMode All: every matching device of the node
MAX_SHOWN_CLAIMS = 64  # claims listed per team in TeamQuota status (bounded: status is one object)
MAX_PENDING = 10_000  # pods whose claims filter judged, remembered for their bind (bounded, and for a TTL)

_DRIVER_CLAUSE = re.compile(r"""device\.driver\s*==\s*["']([^"']+)["']""")

DeviceId = tuple[str, str, str]  # (driver, pool, device): how an allocation result names a device
Charge = Callable[[str | None, dict[str, int], int], None]  # (team, units, +1 | -1)


def class_key(device_class: str) -> str:
    return device_class + CLASS_KEY_SUFFIX


@dataclass(frozen=True, slots=True)
class Device:
    driver: str
    pool: str
    name: str
    model: str | None  # the productName attribute (NVIDIA's DRA driver publishes it for each GPU)

    @property
    def id(self) -> DeviceId:
        return (self.driver, self.pool, self.name)


@dataclass(frozen=True, slots=True)
class DeviceClass:
    name: str
    drivers: frozenset[str] | None  # None: its selectors name no driver (any device may match)
    extended_resource: str | None  # spec.extendedResourceName

    def covers(self, device: Device) -> bool:
        return self.drivers is None or device.driver in self.drivers


@dataclass(frozen=True, slots=True)
class Request:
    name: str
    device_class: str
    count: int  # ALL (0) for allocationMode All


@dataclass(slots=True)
class Claim:
    key: str  # namespace/name
    namespace: str
    requests: tuple[Request, ...]
    allocated: tuple[tuple[str, DeviceId], ...] = ()  # (request name, device) of status.allocation
    extended: bool = False  # made by kube-scheduler for a DRA-backed extended resource
    reserved_for: tuple[str, ...] = ()  # names of the pods status.reservedFor lists
    owner: str | None = None  # namespace/name of the pod that owns it (a template's claim, an extended one)


@dataclass(slots=True)
class Held:
    """What one allocated claim is charged to its team (given back exactly on deallocation)."""

    team: str | None
    units: dict[str, int]
    devices: tuple[str, ...]  # "driver/pool/device", what TeamQuota status lists


@dataclass(slots=True)
class Assumed:
    """What filter or bind charged for a pod's claims before the watch shows their allocation (assume, then
    confirm)."""

    team: str | None
    units: dict[str, int]
    claims: frozenset[str]  # the claims it stands for (besides those the pod owns, named once they exist)
    deadline: float  # monotonic; then it is given back (the allocation never came)
    filtered: bool = False  # held by the filter that passed the pod (policy/devices.py: _hold), not by its bind


@dataclass(slots=True)
class SliceEntry:
    node: str | None
    devices: tuple[Device, ...]


@dataclass(frozen=True, slots=True)
class Ask:
    """One device ask of a pod that holds no allocation yet: from a claim not allocated, or a template."""

    device_class: str
    count: int  # ALL (0): every matching device of the node
    claim: str | None  # the claim's key; None for a template whose claim does not exist yet


def _requests(spec: Any) -> tuple[Request, ...]:
    """spec.devices.requests[] of a claim (or a template's spec.spec): `exactly` requests, and of a
    `firstAvailable` list its first subrequest (the one kube-scheduler tries first)."""
    devices = spec.get("devices") if isinstance(spec, dict) else None
    out = []
    for req in (devices or {}).get("requests") or []:
        if not isinstance(req, dict):
            continue
        exact = req.get("exactly")
        if not isinstance(exact, dict):
            first = req.get("firstAvailable") or []
            exact = first[0] if first and isinstance(first[0], dict) else None
        if exact is None or not isinstance(exact.get("deviceClassName"), str):
            continue
        mode = exact.get("allocationMode") or "ExactCount"
        count = ALL if mode == "All" else _count(exact.get("count"))
        out.append(Request(str(req.get("name") or ""), exact["deviceClassName"], count))
    return tuple(out)


def _count(raw: Any) -> int:
    return raw if isinstance(raw, int) and 0 < raw < 1 << 20 else 1  # the API defaults count to 1


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


def _allocation(status: Any) -> tuple[tuple[str, DeviceId], ...]:
    alloc = status.get("allocation") if isinstance(status, dict) else None
    results = ((alloc or {}).get("devices") or {}).get("results") or []
    out = []
    for r in results:
        if isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("driver", "pool", "device")):
            out.append((str(r.get("request") or ""), (r["driver"], r["pool"], r["device"])))
    return tuple(out)


def parse_class(obj: dict[str, Any]) -> DeviceClass:
    spec = obj.get("spec") or {}
    drivers: set[str] = set()
    for sel in spec.get("selectors") or []:
        expr = ((sel or {}).get("cel") or {}).get("expression") if isinstance(sel, dict) else None
        if isinstance(expr, str):
            drivers.update(_DRIVER_CLAUSE.findall(expr))
    ext = spec.get("extendedResourceName")
    name = str((obj.get("metadata") or {}).get("name") or "")
    return DeviceClass(name, frozenset(drivers) or None, ext if isinstance(ext, str) and ext else None)


def parse_slice(obj: dict[str, Any]) -> SliceEntry:
    spec = obj.get("spec") or {}
    driver = str(spec.get("driver") or "")
    pool = str((spec.get("pool") or {}).get("name") or "")
    node = spec.get("nodeName") if isinstance(spec.get("nodeName"), str) else None
    devices = []
    for d in spec.get("devices") or []:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            continue
        model = ((d.get("attributes") or {}).get(PRODUCT_NAME) or {}).get("string")
        devices.append(Device(driver, pool, d["name"], model if isinstance(model, str) and model else None))
    return SliceEntry(node, tuple(devices))


def parse_claim(obj: dict[str, Any]) -> Claim:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    reserved = tuple(str(r.get("name")) for r in status.get("reservedFor") or [] if isinstance(r, dict))
    return Claim(
        key=_key(obj),
        namespace=str(meta.get("namespace") or "default"),
        requests=_requests(obj.get("spec")),
        allocated=_allocation(status),
        extended=(meta.get("annotations") or {}).get(EXTENDED_CLAIM_ANNOTATION) == "true",
        reserved_for=reserved,
        owner=_owner_pod(meta),
    )


def _owner_pod(meta: dict[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("kind") == "Pod" and isinstance(ref.get("name"), str):
            return f"{meta.get('namespace') or 'default'}/{ref['name']}"
    return None


@dataclass
class DraTable:
    """Classes, slices, templates and claims; which devices are allocated; what each claim is charged.
    `team_of(namespace)` and `charge(team, units, sign)` are the quota book's (ClusterState wires them)."""

    team_of: Callable[[str], str | None]
    charge: Charge
    classes: dict[str, DeviceClass] = field(default_factory=dict)
    slices: dict[str, SliceEntry] = field(default_factory=dict)
    templates: dict[str, tuple[Request, ...]] = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)
    held: dict[str, Held] = field(default_factory=dict)  # claim key -> its charge (allocated claims only)
    devices: dict[DeviceId, Device] = field(default_factory=dict)
    node_of: dict[DeviceId, str] = field(default_factory=dict)
    by_node: dict[str, list[Device]] = field(default_factory=dict)
    node_slices: dict[str, set[str]] = field(default_factory=dict)  # node -> names of its slices
    allocated: dict[DeviceId, str] = field(default_factory=dict)  # device -> the claim holding it
    extended: dict[str, str] = field(default_factory=dict)  # extended resource name -> its DeviceClass
    assumed: dict[str, Assumed] = field(default_factory=dict)  # pod key -> what bind charged ahead
    held_owned: dict[str, int] = field(default_factory=dict)  # pod key -> its own claims that are charged
    # What filter saw of a pod's claims (its resourceClaims and their statuses), for its bind: bounded.
    pending: TTLCache = field(default_factory=lambda: TTLCache(maxsize=MAX_PENDING, ttl=300))
    version: int = 0  # bumped on every change (status and caches watch it)

    # -- informer events ---------------------------------------------------------------------------
    def apply_class(self, kind: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        if kind == "DELETED":
            self.classes.pop(name, None)
        else:
            self.classes[name] = parse_class(obj)
        self.extended = {IMPLICIT_EXTENDED_PREFIX + c.name: c.name for c in self.classes.values()}
        self.extended.update({c.extended_resource: c.name for c in self.classes.values() if c.extended_resource})
        self.version += 1

    def apply_slice(self, kind: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        old = self.slices.pop(name, None)
        if kind != "DELETED":
            self.slices[name] = parse_slice(obj)
        new = self.slices.get(name)
        if old is not None and old.node:
            self.node_slices.get(old.node, set()).discard(name)
            if not self.node_slices.get(old.node):
                self.node_slices.pop(old.node, None)
        if new is not None and new.node:
            self.node_slices.setdefault(new.node, set()).add(name)
        nodes = {e.node for e in (old, new) if e is not None and e.node}
        self._index_devices(old, new, nodes)
        # The model of an allocated device may just have become known (or gone): charge its claims again.
        ids = {d.id for e in (old, new) if e is not None for d in e.devices}
        self._recharge({self.allocated[i] for i in ids if i in self.allocated})

    def apply_template(self, kind: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        if kind == "DELETED":
            self.templates.pop(key, None)
        else:
            self.templates[key] = _requests((obj.get("spec") or {}).get("spec"))
        self.version += 1

    def apply_claim(self, kind: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        self._uncharge(key)
        if kind == "DELETED":
            self.claims.pop(key, None)
        else:
            claim = self.claims[key] = parse_claim(obj)
            self._charge(claim)
        self.version += 1

    def _index_devices(self, old: SliceEntry | None, new: SliceEntry | None, nodes: set[str]) -> None:
        for d in old.devices if old else ():
            self.devices.pop(d.id, None)
            self.node_of.pop(d.id, None)
        for d in new.devices if new else ():
            self.devices[d.id] = d
            if new is not None and new.node:
                self.node_of[d.id] = new.node
        for node in nodes:  # a node's slices by name: rebuilding one node never walks every slice
            found = [d for name in self.node_slices.get(node, ()) for d in self.slices[name].devices]
            if found:
                self.by_node[node] = sorted(found, key=lambda d: d.id)
            else:
                self.by_node.pop(node, None)

    # -- quota charges -----------------------------------------------------------------------------
    def _charge(self, claim: Claim) -> None:
        if not claim.allocated:
            return
        self._confirm(claim)
        units: dict[str, int] = {}
        shown = []
        for request, dev_id in claim.allocated:
            self.allocated[dev_id] = claim.key
            shown.append("/".join(dev_id))
            cls = self._class_of(claim, request)
            if cls:
                _add(units, class_key(cls), 1)
            device = self.devices.get(dev_id)
            if device is not None and device.model:
                _add(units, MODEL_PREFIX + device.model, GPU_MILLI)
                if not claim.extended:  # an extended-resource pod counts nvidia.com/gpu itself (its request)
                    _add(units, GPU, GPU_MILLI)
        team = self.team_of(claim.namespace)
        self.held[claim.key] = Held(team, units, tuple(shown))
        if claim.owner:
            self.held_owned[claim.owner] = self.held_owned.get(claim.owner, 0) + 1
        self.charge(team, units, 1)

    def _confirm(self, claim: Claim) -> None:
        """The watch shows an allocation: what bind assumed for the pod that asked it is given back (the
        claim is charged for real now). A pod with several claims is given back at the first; the others
        arrive from the same PreBind."""
        for pod in [p for p, a in self.assumed.items() if claim.key in a.claims or p == claim.owner]:
            self.forget(pod)

    # -- assume at bind ------------------------------------------------------------------------------
    def remember(self, key: str, pod: dict[str, Any]) -> None:
        """Filter judged this pod's claims: keep what its bind needs to charge them (refs and statuses only)."""
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        meta = pod.get("metadata") or {}
        self.pending[key] = {
            "metadata": {"namespace": meta.get("namespace")},
            "spec": {"resourceClaims": spec.get("resourceClaims") or []},
            "status": {"resourceClaimStatuses": status.get("resourceClaimStatuses") or []},
        }

    def assume(
        self,
        pod: str,
        team: str | None,
        units: dict[str, int],
        claims: frozenset[str],
        ttl: float,
        filtered: bool = False,
    ) -> None:
        self.forget(pod)
        self.assumed[pod] = Assumed(team, units, claims, time.monotonic() + ttl, filtered)
        self.charge(team, units, 1)
        self.version += 1

    def lift(self, pod: str) -> Assumed | None:
        """Give back the hold the filter left for `pod` while the pod is judged again (its next filter, its
        bind): its own hold must not count against it. Returns it (for `restore`); None when the pod holds
        none, or holds what its bind assumed (that stays: the bind may still land)."""
        held = self.assumed.get(pod)
        if held is None or not held.filtered:
            return None
        self.forget(pod)
        return held

    def restore(self, pod: str, held: Assumed) -> None:
        """Hold again what `lift` gave back (the bind was refused after PreBind allocated the claims)."""
        if pod not in self.assumed:
            self.assumed[pod] = held
            self.charge(held.team, held.units, 1)
            self.version += 1

    def forget(self, pod: str) -> None:
        """Give back what filter or bind assumed for `pod` (confirmed by the watch, bind failed, pod gone,
        expired)."""
        held = self.assumed.pop(pod, None)
        if held is not None:
            self.charge(held.team, held.units, -1)
            self.version += 1

    def expire_assumed(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        gone = [p for p, a in self.assumed.items() if a.deadline <= now]
        for pod in gone:
            self.forget(pod)
        return gone

    def owned_allocated(self, pod: str) -> bool:
        """Some claim the pod owns (its extended-resource claim, a template's claim) is allocated and charged."""
        return pod in self.held_owned

    def _uncharge(self, key: str) -> None:
        held = self.held.pop(key, None)
        claim = self.claims.get(key)
        if claim is not None:
            for _, dev_id in claim.allocated:
                if self.allocated.get(dev_id) == key:
                    del self.allocated[dev_id]
        if held is not None:
            self.charge(held.team, held.units, -1)
            if claim is not None and claim.owner:
                left = self.held_owned.get(claim.owner, 0) - 1
                if left > 0:
                    self.held_owned[claim.owner] = left
                else:
                    self.held_owned.pop(claim.owner, None)

    def _class_of(self, claim: Claim, request: str) -> str | None:
        """The device class of an allocation result's request ("gpu", or "gpu/a100" for a subrequest)."""
        parent = request.split("/", 1)[0]
        for r in claim.requests:
            if r.name == parent:
                return r.device_class
        return claim.requests[0].device_class if len(claim.requests) == 1 else None

    def _recharge(self, keys: set[str]) -> None:
        for key in keys:
            self._uncharge(key)
            claim = self.claims.get(key)
            if claim is not None:
                self._charge(claim)
        self.version += 1

    def recount(self) -> None:
        """Teams or their namespaces changed (the quota book's usage was reset): charge every claim again."""
        self.held.clear()
        self.held_owned.clear()
        self.allocated.clear()
        for held in self.assumed.values():  # first: charging a claim gives back what was assumed for it
            self.charge(held.team, held.units, 1)
        for claim in self.claims.values():
            self._charge(claim)
        self.version += 1

    # -- what the filter and the views read ----------------------------------------------------------
    def pod_claims(self, pod: dict[str, Any]) -> Iterator[tuple[Claim | None, str | None]]:
        """(claim, template key) for each of spec.resourceClaims: the claim when this cache holds it (named,
        or made from the template and named in status.resourceClaimStatuses), else the template's key. A
        template's claim that exists but has not reached this cache yet (kube-scheduler's informer can be
        ahead of Berth's) is the template's asks: skipping it counted nothing, which lets a burst past quota."""
        for _, claim, template in self._refs(pod):
            if claim is not None or template is not None:
                yield claim, template

    def unseen_claims(self, pod: dict[str, Any]) -> list[str]:
        """Claims the pod names (spec.resourceClaims[].resourceClaimName) that this cache does not hold yet:
        what they ask is unknown until their watch event comes."""
        return [key for key, claim, template in self._refs(pod) if claim is None and template is None]

    def _refs(self, pod: dict[str, Any]) -> Iterator[tuple[str, Claim | None, str | None]]:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        ns = str(meta.get("namespace") or "default")
        made = {
            s.get("name"): s.get("resourceClaimName")
            for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
            if isinstance(s, dict)
        }
        for ref in spec.get("resourceClaims") or []:
            if not isinstance(ref, dict):
                continue
            name = ref.get("resourceClaimName") or made.get(ref.get("name"))
            key = f"{ns}/{name}" if isinstance(name, str) else ""
            template = ref.get("resourceClaimTemplateName")
            if key in self.claims:
                yield key, self.claims[key], None
            elif isinstance(template, str) and not ref.get("resourceClaimName"):
                yield key, None, f"{ns}/{template}"
            elif key:
                yield key, None, None

    def pod_asks(self, pod: dict[str, Any]) -> list[Ask]:
        """The device asks of a pod not allocated yet (an allocated claim is charged already: a pod sharing
        it adds nothing)."""
        asks = []
        for claim, template in self.pod_claims(pod):
            if claim is not None and not claim.allocated:
                asks += [Ask(r.device_class, r.count, claim.key) for r in claim.requests]
            elif template is not None:
                asks += [Ask(r.device_class, r.count, None) for r in self.templates.get(template, ())]
        return asks

    def class_for_resource(self, resource: str) -> str | None:
        """The DeviceClass a pod's extended resource maps to (spec.extendedResourceName, or the implicit
        deviceclass.resource.kubernetes.io/<class> name), as kube-scheduler maps it."""
        return self.extended.get(resource)

    def node_devices(self, node: str, device_class: str) -> tuple[list[Device], int]:
        """The node's devices of a class (what its ResourceSlices publish), and how many are free."""
        cls = self.classes.get(device_class)
        if cls is None:
            return [], 0
        mine = [d for d in self.by_node.get(node, ()) if cls.covers(d)]
        return mine, sum(1 for d in mine if d.id not in self.allocated)

    def node_model(self, node: str, device_class: str | None = None) -> str | None:
        """The GPU model (productName) of the node's devices (of `device_class`, when given)."""
        cls = self.classes.get(device_class or "")
        for d in self.by_node.get(node, ()):
            if d.model and (cls is None or cls.covers(d)):
                return d.model
        return None

    def team_devices(self, team: str) -> dict[str, list[str]]:
        """claim key -> its allocated devices, for the team's TeamQuota status (at most MAX_SHOWN_CLAIMS)."""
        out: dict[str, list[str]] = {}
        for key in sorted(k for k, h in self.held.items() if h.team == team):
            if len(out) >= MAX_SHOWN_CLAIMS:
                break
            out[key] = list(self.held[key].devices[:128])  # the CRD caps a claim's list at 128
        return out

    def node_view(self, node: str) -> dict[str, Any] | None:
        """The node's DRA devices (from its ResourceSlices) and which claim holds each; None without slices."""
        devices = self.by_node.get(node)
        if not devices:
            return None
        return {"/".join(d.id): self.allocated.get(d.id) for d in devices}

    def summary(self) -> dict[str, Any]:
        return {
            "deviceClasses": len(self.classes),
            "resourceSlices": len(self.slices),
            "devices": len(self.devices),
            "claims": len(self.claims),
            "allocatedClaims": len(self.held),
            "allocatedDevices": len(self.allocated),
        }


def _add(units: dict[str, int], key: str, amount: int) -> None:
    units[key] = units.get(key, 0) + amount
