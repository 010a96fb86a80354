"""The extender wire format: kube-scheduler's ExtenderArgs and friends in, their replies out.

Field names are Capitalized (the upstream types have no JSON tags) and Go's decoder matches them
case-insensitively, so we accept any case. A request kube-scheduler would never send gets a WireError
(a 4xx naming the field); a pod that cannot be judged is the caller's business (the Error field).
"""

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from scheduler.model.binding import BindingArgs

if TYPE_CHECKING:  # the cache calls the parser below: it imports this module, not the other way round
    from scheduler.extender.names_cache import NodeNamesCache, _Known

# kube-scheduler's largest supported cluster is 5,000 nodes (15,000 in its scalability tests): a list past
# this bound is no real cluster, and mapping a million names would hold the one event loop for seconds.
MAX_NAMES = 100_000
# Preemption candidates are at most the cluster's nodes; victims per node at most its pods (kubelet's
# maxPods defaults to 110; kube-scheduler sends 10% of the nodes, at least 100, as candidates). Past these the
# request is refused: 1000 nodes x 1000 victims held the loop 2.7 s; 100,000 victims take ~0.6 s.
MAX_PREEMPT_CANDIDATES = 15_000
MAX_PREEMPT_VICTIMS = 100_000
# Kubernetes names: a pod's and a node's are DNS subdomains of at most 253 characters, a namespace a label
# of at most 63, a UID 36. A bind naming anything longer is no real object (and went whole into the log).
MAX_NAME = 253


class WireError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _field(obj: dict[str, Any], name: str) -> Any:
    if name in obj:
        return obj[name]
    lower = name.lower()
    for key, value in obj.items():
        if key.lower() == lower:
            return value
    return None


def loads_object(body: bytes, what: str) -> dict[str, Any]:
    if not body:
        raise WireError(400, f"empty request body; expected {what} as JSON")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError(400, f"request body must be a JSON object ({what}), got {type(data).__name__}")
    return data


@dataclass(slots=True)
class ExtenderArgs:
    pod: dict[str, Any]
    names: list[str]
    slots: array  # int32 slot per name, -1 where the node is not in the table
    nodes: list[dict[str, Any]] | None  # full Node objects (nodeCacheCapable: false), else None
    frags: list[bytes]  # each name JSON-quoted, ready to be copied into a reply
    known: "_Known | None" = None  # the NodeNames cache entry these names came from (names_cache.py)

    def all_names_json(self) -> bytes:
        """The inside of a NodeNames array holding every requested name (joined once per list)."""
        if self.known is not None:
            if self.known.joined is None:
                self.known.joined = b",".join(self.frags)
            return self.known.joined
        return b",".join(self.frags)


def too_many_names(n: int) -> WireError:
    return WireError(
        413,
        f"ExtenderArgs: {n} node names; Berth serves at most {MAX_NAMES} node names "
        "(kube-scheduler's largest supported clusters have 5,000-15,000 nodes)",
    )


def pod_of(data: dict[str, Any]) -> dict[str, Any]:
    pod = _field(data, "Pod")
    if not isinstance(pod, dict):
        raise WireError(400, "ExtenderArgs.Pod: expected a Pod object")
    return pod


def parse_extender_args(data: dict[str, Any], cache: "NodeNamesCache") -> ExtenderArgs:
    pod = pod_of(data)
    raw_names = _field(data, "NodeNames")
    raw_nodes = _field(data, "Nodes")
    if raw_names is not None:
        if not isinstance(raw_names, list):
            raise WireError(400, "ExtenderArgs.NodeNames: expected a list of node names or null")
        if len(raw_names) > MAX_NAMES:
            raise too_many_names(len(raw_names))
        for i, n in enumerate(raw_names):
            if not isinstance(n, str):
                raise WireError(400, f"ExtenderArgs.NodeNames[{i}]: expected a string")
        return ExtenderArgs(pod, raw_names, cache.slots_for(raw_names), None, quoted(raw_names))
    if raw_nodes is None:
        return ExtenderArgs(pod, [], array("i"), None, [])
    if not isinstance(raw_nodes, dict):
        raise WireError(400, "ExtenderArgs.Nodes: expected a NodeList object or null")
    items = raw_nodes.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise WireError(400, "ExtenderArgs.Nodes.items: expected a list of Node objects")
    if len(items) > MAX_NAMES:
        raise too_many_names(len(items))
    names = []
    for i, node in enumerate(items):
        meta = node.get("metadata") if isinstance(node, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str):
            raise WireError(400, f"ExtenderArgs.Nodes.items[{i}]: expected a Node with metadata.name")
        names.append(name)
    return ExtenderArgs(pod, names, cache.slots_for(names), items, quoted(names))


def quoted(names: list[str]) -> list[bytes]:
    return [orjson.dumps(n) for n in names]


def filter_reply(
    args: ExtenderArgs, passed: bytes | None, failed: bytes, unresolvable: bytes, passed_index: list[int] | None = None
) -> bytes:
    """ExtenderFilterResult from JSON fragments: `passed` is the inside of the NodeNames array (None:
    every node passed), `failed` / `unresolvable` the insides of the two maps. With full Nodes in, the
    survivors go back as Nodes (the scheduler ignores NodeNames then), chosen by `passed_index`."""
    if args.nodes is not None:
        items = args.nodes if passed_index is None else [args.nodes[i] for i in passed_index]
        head = [b'{"Nodes":', orjson.dumps({"metadata": {}, "items": items}), b',"NodeNames":null']
    else:
        head = [b'{"Nodes":null,"NodeNames":[', args.all_names_json() if passed is None else passed, b"]"]
    # One join, one copy: chained `+` would copy a 400 KB reply once per piece.
    return b"".join(
        [*head, b',"FailedNodes":{', failed, b'},"FailedAndUnresolvableNodes":{', unresolvable, b'},"Error":""}']
    )


def error_filter_reply(error: str) -> bytes:
    return orjson.dumps(
        {"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": error}
    )


def parse_binding_args(body: bytes) -> BindingArgs:
    data = loads_object(body, "ExtenderBindingArgs")
    values = []
    for field in ("PodName", "PodNamespace", "PodUID", "Node"):
        v = _field(data, field)
        if not isinstance(v, str) or (not v and field != "PodUID"):
            raise WireError(400, f"ExtenderBindingArgs.{field}: expected a non-empty string")
        if len(v) > MAX_NAME:
            raise WireError(
                400, f"ExtenderBindingArgs.{field}: {len(v)} characters; Kubernetes names have at most {MAX_NAME}"
            )
        values.append(v)
    return BindingArgs(*values)


def binding_reply(error: str = "") -> bytes:
    return orjson.dumps({"Error": error})


@dataclass(slots=True)
class PreemptionArgs:
    pod: dict[str, Any]
    victims: dict[str, list[str]]  # node -> victim pod UIDs
    num_pdb_violations: dict[str, int]


def parse_preemption_args(body: bytes) -> PreemptionArgs:
    # Decoding a million victims alone takes most of a second: Go's MetaPod objects are counted first.
    if len(body) > 12 * MAX_PREEMPT_VICTIMS:
        _count_victims(body.count(b'{"UID":'))
    data = loads_object(body, "ExtenderPreemptionArgs")
    pod = _field(data, "Pod")
    if not isinstance(pod, dict):
        raise WireError(400, "ExtenderPreemptionArgs.Pod: expected a Pod object")
    victims: dict[str, list[str]] = {}
    pdb: dict[str, int] = {}
    total = 0
    meta = _field(data, "NodeNameToMetaVictims")
    plain = _field(data, "NodeNameToVictims")
    for given in (meta, plain):
        if isinstance(given, dict) and len(given) > MAX_PREEMPT_CANDIDATES:
            raise WireError(
                413,
                f"ExtenderPreemptionArgs: {len(given)} candidate nodes; Berth serves at most "
                f"{MAX_PREEMPT_CANDIDATES} candidate nodes",
            )
    if meta is not None:
        if not isinstance(meta, dict):
            raise WireError(400, "ExtenderPreemptionArgs.NodeNameToMetaVictims: expected an object")
        for node, mv in meta.items():
            uids, n = _meta_victims(mv, f"NodeNameToMetaVictims[{node}]")
            victims[node], pdb[node] = uids, n
            total = _count_victims(total + len(uids))
    elif plain is not None:
        if not isinstance(plain, dict):
            raise WireError(400, "ExtenderPreemptionArgs.NodeNameToVictims: expected an object")
        for node, v in plain.items():
            pods = _field(v, "Pods") if isinstance(v, dict) else None
            if not isinstance(pods, list) or not all(isinstance(p, dict) for p in pods):
                raise WireError(400, f"ExtenderPreemptionArgs.NodeNameToVictims[{node}].Pods: expected Pod objects")
            metas = [{} if p.get("metadata") is None else p["metadata"] for p in pods]
            if not all(isinstance(m, dict) for m in metas):
                raise WireError(400, f"ExtenderPreemptionArgs.NodeNameToVictims[{node}].Pods: metadata must be objects")
            # a UID is a string (null: none); str() made a number or an object a UID of its own
            uids = ["" if m.get("uid") is None else m["uid"] for m in metas]
            if not all(isinstance(u, str) for u in uids):
                raise WireError(
                    400, f"ExtenderPreemptionArgs.NodeNameToVictims[{node}].Pods: metadata.uid must be strings"
                )
            total = _count_victims(total + len(pods))
            victims[node] = list(dict.fromkeys(uids))
            n = _field(v, "NumPDBViolations")
            if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
                raise WireError(
                    400, f"ExtenderPreemptionArgs.NodeNameToVictims[{node}].NumPDBViolations: expected an integer"
                )
            pdb[node] = n or 0
    return PreemptionArgs(pod, victims, pdb)


def _count_victims(total: int) -> int:
    """Refused as soon as the victims counted so far pass the bound, before the rest are read."""
    if total > MAX_PREEMPT_VICTIMS:
        raise WireError(
            413,
            f"ExtenderPreemptionArgs: more than {MAX_PREEMPT_VICTIMS} victims in all; "
            f"Berth serves at most {MAX_PREEMPT_VICTIMS} victims",
        )
    return total


def _meta_victims(mv: Any, where: str) -> tuple[list[str], int]:
    if not isinstance(mv, dict):
        raise WireError(400, f"ExtenderPreemptionArgs.{where}: expected a MetaVictims object")
    pods = _field(mv, "Pods")
    if pods is None:  # null, as Go writes an empty slice; `or []` also let `{}` and `""` through as no victims
        pods = []
    if not isinstance(pods, list):
        raise WireError(400, f"ExtenderPreemptionArgs.{where}.Pods: expected a list")
    _count_victims(len(pods))
    uids = []
    for p in pods:
        uid = _field(p, "UID") if isinstance(p, dict) else None
        if not isinstance(uid, str):
            raise WireError(400, f"ExtenderPreemptionArgs.{where}.Pods: each needs a string UID")
        uids.append(uid)
    n = _field(mv, "NumPDBViolations")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
        raise WireError(400, f"ExtenderPreemptionArgs.{where}.NumPDBViolations: expected an integer")
    return uids, n or 0


def preemption_reply(victims: dict[str, list[str]], pdb: dict[str, int]) -> bytes:
    return orjson.dumps(
        {
            "NodeNameToMetaVictims": {
                node: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": pdb.get(node, 0)}
                for node, uids in victims.items()
            }
        }
    )
