"""DRA devices in filter and bind: a pod's ResourceClaims (and templates, and DRA-backed extended resources)
judged per node against the node's ResourceSlices and the team's quota.

kube-scheduler's DynamicResources plugin chooses the devices and has already filtered out nodes whose slices
cannot satisfy the claims when the extender is called; Berth adds what the plugin does not know: team quotas
per device class (`<class>.deviceclass.resource.k8s.io/devices`), per GPU model (the slice device's
`productName`) and in `nvidia.com/gpu`. A claim already allocated is charged already (cluster/dra.py), so a
pod sharing it asks nothing more.
"""

from array import array
from dataclasses import dataclass, field
from typing import Any

from scheduler import kernels as K
from scheduler.cluster.dra import ALL, Ask, DraTable, class_key
from scheduler.cluster.state import ClusterState, pod_key
from scheduler.model.constants import DRA_DEVICES, DRA_DEVICES_USED, DRA_QUOTA, GPU_MILLI, OTHER_RESOURCE, TOPOLOGY_NONE
from scheduler.model.names import GPU
from scheduler.policy.placement import Judgement
from scheduler.policy.quotas import MODEL_PREFIX


@dataclass(slots=True)
class DraVerdicts:
    """Per node slot, the sentence of a DRA refusal (Reasons reads it) and the codes set in `verdicts`."""

    sentences: dict[int, tuple[str, bool]] = field(default_factory=dict)
    changed: bool = False  # some verdict differs from the kernels' (else their grouped, cached reply serves)

    def sentence(self, slot: int) -> tuple[str, bool]:
        return self.sentences.get(slot, ("berth: the pod's device claims do not fit this node", False))


def involves_dra(state: ClusterState, pod: dict[str, Any], j: Judgement) -> bool:
    """The pod has ResourceClaims, or asks an extended resource a DeviceClass serves (cheap: no classes, no)."""
    dra = state.dra
    if not dra.classes:
        return False
    if (pod.get("spec") or {}).get("resourceClaims"):
        return True
    r = j.ask.request
    return bool((r.gpu and GPU in dra.extended) or any(k in dra.extended for k in r.other))


def _extended(dra: DraTable, state: ClusterState, j: Judgement, slot: int) -> dict[str, int] | None:
    """Device asks (class -> count) of the pod's extended resources the node has no device-plugin capacity
    for and a DeviceClass serves (KEP-5004: kube-scheduler then allocates them by DRA); None if some such
    resource has no class."""
    t, r = state.table, j.ask.request
    facts = t.facts[slot]
    out: dict[str, int] = {}
    asked = ({GPU: r.gpu} if r.gpu and not t.alloc_gpu[slot] else {}) | {
        k: v for k, v in r.other.items() if not (facts.other_alloc.get(k, 0) if facts else 0)
    }
    node = str(t.names[slot])
    for res, n in asked.items():
        cls = dra.class_for_resource(res)
        if cls is None or not dra.node_devices(node, cls)[0]:
            return None  # no class, or none of its devices here: DRA cannot stand in, the kernel's reason stands
        out[cls] = out.get(cls, 0) + n
    return out


# What the kernels say of a node that lacks device-plugin GPUs: DRA may stand in for them (KEP-5004).
_NO_PLUGIN_GPUS = (K.MODEL, K.GPU, K.TOPOLOGY, OTHER_RESOURCE)


def judge_nodes(state: ClusterState, pod: dict[str, Any], j: Judgement, slots: array, verdicts: bytearray) -> int:
    """Judge the nodes that passed (and those the kernels refused only for device-plugin capacity they lack
    and a DeviceClass stands in for) against the pod's DRA asks; sets verdicts, returns how many pass. The
    sentences go to `j.dra` for Reasons."""
    asks = state.dra.pod_asks(pod)
    j.dra = found = DraVerdicts()
    unseen = state.dra.unseen_claims(pod)
    if unseen:
        return _wait_for_claims(unseen, slots, verdicts, found)
    state.dra.remember(f"{j.ask.namespace}/{j.ask.name}", pod)  # for its bind (assume_at_bind)
    sliced = state.dra.by_node
    names = state.table.names
    for i, slot in enumerate(slots):
        code = verdicts[i]
        if slot < 0 or (code != K.OK and code not in _NO_PLUGIN_GPUS) or (not asks and names[slot] not in sliced):
            continue  # (a pod with no claims asks DRA only where slices stand in for device-plugin GPUs)
        ext = _extended(state.dra, state, j, slot)
        if code == K.OK and not asks and not ext:
            continue
        found.changed = True
        if code != K.OK:
            if not ext:
                continue  # short of device-plugin capacity no DeviceClass serves: the kernel's reason stands
            code = verdicts[i] = _without_gpus(state, j, slot)
            if code != K.OK:
                continue  # refused for something else (pool, cpu, memory): that reason stands
        refusal = _node(state, j, str(state.table.names[slot]), asks, ext or {})
        if refusal is not None:
            verdicts[i], found.sentences[slot] = refusal[0], refusal[1:]
    if asks:
        _hold(state, j, asks, slots, verdicts)
    return verdicts.count(K.OK)


def _hold(state: ClusterState, j: Judgement, asks: list[Ask], slots: array, verdicts: bytearray) -> None:
    """The pod passed with claims still to allocate: hold what they take (per key, the most over the nodes that
    passed) until the watch shows their allocation, or the pod's bind replaces the hold with its node's exact
    charge, or bind.reservation_ttl_seconds pass. kube-scheduler allocates the claims in PreBind, after this
    filter and before it calls bind, and a bind refused then leaves them allocated (Unreserve only takes the pod
    out of reservedFor). Unheld, the quota they took could go to pods filtered and bound in between: a burst
    went one GPU over its team's max. The pod's own hold is lifted while it is judged again (verbs, Binder)."""
    dra, names = state.dra, state.table.names
    most: dict[str, int] = {}
    for i, slot in enumerate(slots):
        if verdicts[i] == K.OK and slot >= 0:
            node = str(names[slot])
            for key, n in _charge(dra, node, _wanted(dra, node, asks), gpus=True).items():
                most[key] = max(most.get(key, 0), n)
    if most:
        claims = frozenset(a.claim for a in asks if a.claim is not None)
        pod = pod_key(j.ask.namespace, j.ask.name)
        dra.assume(pod, j.admission.team, most, claims, state.config.bind.reservation_ttl_seconds, filtered=True)


def _wait_for_claims(unseen: list[str], slots: array, verdicts: bytearray, found: DraVerdicts) -> int:
    """A claim the pod names has not reached Berth's cache: what it asks is unknown, so no node passes (counting
    it as nothing let a burst over quota); resolvable, and kube-scheduler retries the pod."""
    sentence = f"berth: ResourceClaim {unseen[0]} has not reached Berth's cache yet; the pod is retried"
    for i, slot in enumerate(slots):
        if verdicts[i] == K.OK:
            verdicts[i] = DRA_DEVICES_USED
            found.sentences[slot] = (sentence, False)
            found.changed = True
    return 0


def _without_gpus(state: ClusterState, j: Judgement, slot: int) -> int:
    """The kernels' verdict on everything but the GPUs (which DRA serves on this node): pool, pods, cpu, memory."""
    r = j.ask.request
    return K.node_verdict(state.table, slot, r.cpu, r.memory, 0, TOPOLOGY_NONE, j.pool_ok, j.model_ok)


def _node(
    state: ClusterState, j: Judgement, node: str, asks: list[Ask], extended: dict[str, int]
) -> tuple[int, str, bool] | None:
    """(code, sentence, unresolvable) refusing the node, or None."""
    dra = state.dra
    wanted = _wanted(dra, node, asks)
    for cls, n in (wanted | {c: wanted.get(c, 0) + n for c, n in extended.items()}).items():
        devices, free = dra.node_devices(node, cls)
        if len(devices) < n:
            have = f"{len(devices)} device{'s' if len(devices) != 1 else ''}"
            return DRA_DEVICES, f"berth: node's ResourceSlices have {have} of class {cls}, the pod asks {n}", True
        if free < n:
            return DRA_DEVICES_USED, f"berth: only {free} of the node's {cls} devices are free, the pod asks {n}", False
    error, _ = state.quotas.check_charge(j.admission.team, _both(dra, node, wanted, extended), None)
    return (DRA_QUOTA, f"berth: {error}", True) if error else None


def _wanted(dra: DraTable, node: str, asks: list[Ask]) -> dict[str, int]:
    """Devices per class the asks take on `node` (allocationMode All: every device of the class there)."""
    wanted: dict[str, int] = {}
    for ask in asks:
        n = ask.count if ask.count != ALL else len(dra.node_devices(node, ask.device_class)[0])
        wanted[ask.device_class] = wanted.get(ask.device_class, 0) + n
    return wanted


def _both(dra: DraTable, node: str, wanted: dict[str, int], extended: dict[str, int]) -> dict[str, int]:
    charge = _charge(dra, node, wanted, gpus=True)
    for key, n in _charge(dra, node, extended, gpus=False).items():
        charge[key] = charge.get(key, 0) + n
    return charge


def _charge(dra: DraTable, node: str, wanted: dict[str, int], gpus: bool) -> dict[str, int]:
    """What allocating `wanted` on `node` would charge: per class, per model and (for claims; an extended
    resource's pod is charged nvidia.com/gpu by its request) in nvidia.com/gpu."""
    out: dict[str, int] = {}
    for cls, n in wanted.items():
        if not n:
            continue
        out[class_key(cls)] = out.get(class_key(cls), 0) + n
        model = dra.node_model(node, cls)
        if model:
            out[MODEL_PREFIX + model] = out.get(MODEL_PREFIX + model, 0) + n * GPU_MILLI
            if gpus:
                out[GPU] = out.get(GPU, 0) + n * GPU_MILLI
    return out


def serves(state: ClusterState, j: Judgement, slot: int, code: int) -> bool:
    """Bind's re-check: the kernels refused the node only for device-plugin capacity it lacks, and a
    DeviceClass serves those resources there (kube-scheduler allocated them by DRA before calling bind)."""
    if code not in _NO_PLUGIN_GPUS or not state.dra.classes:
        return False
    return bool(_extended(state.dra, state, j, slot)) and _without_gpus(state, j, slot) == K.OK


def assume_at_bind(state: ClusterState, j: Judgement, slot: int, key: str) -> str | None:
    """Bind: charge the pod's claims now, as bind charges the pod itself, unless the watch already shows their
    allocation; this takes the place of the filter's hold (_hold, lifted by the caller). kube-scheduler
    allocates in PreBind, just before it calls bind; the watch brings the allocation a moment later, and
    filters of other pods in that moment must count it. Returns the sentence refusing the charge (the team went
    over quota since filter), or None. The watch's allocation replaces what is assumed here (cluster/dra.py:
    _confirm); a bind that fails gives it back (ClusterState.forget)."""
    dra = state.dra
    pod = dra.pending.get(key)
    if pod is None:  # filter saw no DRA ask (or this process did not see the filter: the watch counts it)
        return None
    node = str(state.table.names[slot])
    owned = dra.owned_allocated(key)
    asks = [a for a in (dra.pod_asks(pod) if pod is not None else []) if a.claim is not None or not owned]
    ext = {} if owned else _extended(dra, state, j, slot) or {}
    charge = _both(dra, node, _wanted(dra, node, asks), ext)
    if not charge:
        return None
    error, _ = state.quotas.check_charge(j.admission.team, charge, None)
    if error:
        return error
    claims = frozenset(a.claim for a in asks if a.claim is not None)
    dra.assume(key, j.admission.team, charge, claims, state.config.bind.reservation_ttl_seconds)
    return None
