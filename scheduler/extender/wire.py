"""The extender wire format: kube-scheduler's ExtenderArgs and friends in, their replies out.

Field names are Capitalized (the upstream types have no JSON tags) and Go's decoder matches them
case-insensitively, so we accept any case. A request kube-scheduler would never send gets a WireError
(a 4xx naming the field); a pod that cannot be judged is the caller's business (the Error field).
"""

from array import array
from dataclasses import dataclass
from itertools import compress
from typing import Any

import orjson

from scheduler import kernels as K
from scheduler.cluster.nodetable import NodeTable
from scheduler.model.binding import BindingArgs

# kube-scheduler's largest supported cluster is 5,000 nodes (15,000 in its scalability tests): a list past
# this bound is no real cluster, and mapping a million names would hold the one event loop for seconds.
MAX_NAMES = 100_000
# Preemption candidates are at most the cluster's nodes; victims per node at most its pods (kubelet's
# maxPods defaults to 110; kube-scheduler sends 10% of the nodes, at least 100, as candidates). Past these the
# request is refused: 1000 nodes x 1000 victims held the loop 2.7 s; 100,000 victims take ~0.6 s.
MAX_PREEMPT_CANDIDATES = 15_000
MAX_PREEMPT_VICTIMS = 100_000
# What the NodeNames cache may hold. An entry costs about four times its bytes (the array's bytes, the joined
# names, the last partial reply and its parts) plus ~200 bytes a name (its str, its quoted fragment, list
# slots), as measured (docs/hardening.md): 5,000 names are ~1.8 MB, 15,000 ~5.4 MB, so eight of
# kube-scheduler's largest lists fit. An entry over a quarter of the budget is not kept: it would push the
# others out, and no real cluster sends one.
NAMES_CACHE_BYTES = 64 << 20
NAME_COST = 200


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
    known: "_Known | None" = None  # the cache entry these names came from

    def all_names_json(self) -> bytes:
        """The inside of a NodeNames array holding every requested name (joined once per list)."""
        if self.known is not None:
            if self.known.joined is None:
                self.known.joined = b",".join(self.frags)
            return self.known.joined
        return b",".join(self.frags)


@dataclass(slots=True)
class _Known:
    tail: bytes
    version: int
    names: list[str]
    slots: array
    frags: list[bytes]
    joined: bytes | None = None
    # The last partial filter reply written for these names:
    # (ids, texts, hard, the passing names' JSON, reply, failed count, unresolvable count).
    partial: tuple[array, list[bytes], bytes, bytes, bytes, int, int] | None = None
    cost: int = 0


def _cost(tail: int, names: int) -> int:
    return 4 * tail + NAME_COST * names


def _too_many(n: int) -> WireError:
    return WireError(
        413,
        f"ExtenderArgs: {n} node names; Berth serves at most {MAX_NAMES} node names "
        "(kube-scheduler's largest supported clusters have 5,000-15,000 nodes)",
    )


# verdict -> 1 where a node passed (verdict 0, kernels.OK), else 0: selectors for itertools.compress
_PASSED = bytes([1] + [0] * 255)


class NodeNamesCache:
    """kube-scheduler sends the same NodeNames again and again: remember the names, their slots and
    their quoted reply fragments by the raw bytes of the array, so a repeat skips decoding thousands
    of names and looking them up. Hand-written because the key is a slice of the body that no JSON
    library exposes; entries are compared by length, then memcmp (cheaper than hashing the slice)."""

    MARK = b',"NodeNames":['

    def __init__(self, table: NodeTable, size: int = 8, budget: int = NAMES_CACHE_BYTES) -> None:
        self.table = table
        self.size = size
        self.budget = budget
        self.max_entry = budget // 4
        self.bytes = 0  # the estimated cost of the entries kept (see NAMES_CACHE_BYTES)
        self._known: list[_Known] = []
        self._last_head: tuple[bytes, dict[str, Any] | None] = (b"", None)
        self._survivors: tuple[bytes, ExtenderArgs, bytearray] | None = None
        self.hits = 0

    def slots_for(self, names: list[str]) -> array:
        get = self.table.slot_of.get
        return array("i", [get(n, -1) for n in names])

    def _lookup(self, body: bytes, at: int) -> _Known | None:
        size = len(body) - at
        for i, k in enumerate(self._known):
            if len(k.tail) == size and body.startswith(k.tail, at):  # memcmp in place, no copy of the tail
                if i:
                    self._known.insert(0, self._known.pop(i))
                if k.version != self.table.version:
                    k.slots, k.version = self.slots_for(k.names), self.table.version
                return k
        return self._survivors_of(body, at)

    def offer_survivors(self, parent: ExtenderArgs, picked: bytes, verdicts: bytearray) -> None:
        """kube-scheduler sends prioritize exactly the NodeNames filter returned, in that order
        (extender.go builds the feasible list from the reply): remember the last filter's survivors so
        the prioritize call that follows finds its names already mapped. Materialized only on a hit."""
        if parent.nodes is None and _cost(len(picked), len(parent.names)) <= self.max_entry:
            self._survivors = (picked, parent, verdicts.translate(_PASSED))

    def _survivors_of(self, body: bytes, at: int) -> _Known | None:
        if self._survivors is None:
            return None
        picked, parent, selectors = self._survivors
        start = at + len(self.MARK)
        if len(body) - start != len(picked) + 2 or not body.startswith(picked, start):
            return None
        self._survivors = None
        names = list(compress(parent.names, selectors))
        slots = array("i", compress(parent.slots, selectors))
        if parent.known is None or parent.known.version != self.table.version:
            slots = self.slots_for(names)
        return self._remember(
            _Known(body[at:], self.table.version, names, slots, list(compress(parent.frags, selectors)))
        )

    def _remember(self, known: _Known) -> _Known:
        """Kept in front (most recent first) unless too large; the oldest go while over count or bytes."""
        known.cost = _cost(len(known.tail), len(known.names))
        if known.cost > self.max_entry:
            return known
        kept = self._known
        kept.insert(0, known)
        self.bytes += known.cost
        while len(kept) > self.size or self.bytes > self.budget:
            self.bytes -= kept.pop().cost
        return known

    def _head(self, body: bytes, idx: int) -> dict[str, Any] | None:
        """The request before NodeNames, decoded, when it is as Go writes it ({"Pod":..,"Nodes":null});
        filter and then prioritize send the same pod's bytes, so the last one is kept (read only, never
        changed by its users)."""
        last_bytes, last = self._last_head
        if len(last_bytes) == idx and body.startswith(last_bytes):
            return last
        head_bytes = body[:idx]
        try:
            head = orjson.loads(head_bytes + b"}")
        except orjson.JSONDecodeError:
            return None
        if not (isinstance(head, dict) and head.keys() <= {"Pod", "Nodes"} and head.get("Nodes") is None):
            return None
        if idx <= self.max_entry:  # a Pod is a few KB; a huge one is not kept past its request
            self._last_head = (head_bytes, head)
        return head

    def parse(self, body: bytes) -> ExtenderArgs:
        # Searched from the front: the Pod comes first and is a few KB, the names are up to 300 KB. A quote
        # inside a JSON string is escaped, so the mark cannot sit in one; if a Pod ever held it as a key,
        # the head below would not parse and the request would take the full path.
        idx = body.find(self.MARK)
        cacheable = idx > 0 and body.endswith(b"]}")
        head = self._head(body, idx) if cacheable else None
        if head is not None:
            known = self._lookup(body, idx)
            if known is not None:
                self.hits += 1
                return ExtenderArgs(_pod(head), known.names, known.slots, None, known.frags, known)
            # A new list (kube-scheduler's NodeNames order varies call to call): mapped in place. Past
            # 4 bytes a name the list may be over the bound: counted first (Go writes `","` between names).
            start, end = idx + len(self.MARK), len(body) - 2
            if end - start > 4 * MAX_NAMES and (n := body.count(b'","', start, end) + 1) > MAX_NAMES:
                raise _too_many(n)
            mapped = K.map_names(self.table, body, start, end)
            if mapped is not None:
                slots, names, frags = mapped
                known = self._remember(_Known(body[idx:], self.table.version, names, slots, frags))
                return ExtenderArgs(_pod(head), names, slots, None, frags, known)
        args = parse_extender_args(loads_object(body, "ExtenderArgs"), self)
        if args.nodes is None and cacheable:
            args.known = self._remember(_Known(body[idx:], self.table.version, args.names, args.slots, args.frags))
        return args


def _pod(data: dict[str, Any]) -> dict[str, Any]:
    pod = _field(data, "Pod")
    if not isinstance(pod, dict):
        raise WireError(400, "ExtenderArgs.Pod: expected a Pod object")
    return pod


def parse_extender_args(data: dict[str, Any], cache: NodeNamesCache) -> ExtenderArgs:
    pod = _pod(data)
    raw_names = _field(data, "NodeNames")
    raw_nodes = _field(data, "Nodes")
    if raw_names is not None:
        if not isinstance(raw_names, list):
            raise WireError(400, "ExtenderArgs.NodeNames: expected a list of node names or null")
        if len(raw_names) > MAX_NAMES:
            raise _too_many(len(raw_names))
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
        raise _too_many(len(items))
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
            if not all(isinstance(p.get("metadata") or {}, dict) for p in pods):
                raise WireError(400, f"ExtenderPreemptionArgs.NodeNameToVictims[{node}].Pods: metadata must be objects")
            total = _count_victims(total + len(pods))
            victims[node] = list(dict.fromkeys(str((p.get("metadata") or {}).get("uid") or "") for p in pods))
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
    pods = _field(mv, "Pods") or []
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
