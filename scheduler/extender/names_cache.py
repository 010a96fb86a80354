"""The NodeNames cache: kube-scheduler sends the same NodeNames again and again, so the names, their table
slots and their quoted reply fragments are remembered by the raw bytes of the array (wire.py parses the
rest of the request)."""

from array import array
from dataclasses import dataclass
from itertools import compress
from typing import Any

import orjson

from scheduler import kernels as K
from scheduler.cluster.nodetable import NodeTable
from scheduler.extender.wire import MAX_NAMES, ExtenderArgs, loads_object, parse_extender_args, pod_of, too_many_names
from scheduler.policy.placement import Scored

# What the NodeNames cache may hold. An entry costs about four times its bytes (the array's bytes, the joined
# names, the last partial reply and its parts) plus ~200 bytes a name (its str, its quoted fragment, list
# slots; the slot and table-order arrays add 8 more), as measured (docs/hardening.md): 5,000 names are
# ~1.8 MB, 15,000 ~5.4 MB, so eight of kube-scheduler's largest lists fit. An entry over a quarter of the
# budget is not kept: it would push the others out, and no real cluster sends one.
NAMES_CACHE_BYTES = 64 << 20
NAME_COST = 200


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
    scored: Scored | None = None  # the last filter's raw scores for exactly these names (prioritize reuses them)
    cost: int = 0
    order: array | None = None  # kernels.slot_order(slots), made when first asked (visit_order)


def _cost(tail: int, names: int) -> int:
    return 4 * tail + NAME_COST * names


# verdict -> 1 where a node passed (verdict 0, kernels.OK), else 0: selectors for itertools.compress
_PASSED = bytes([1] + [0] * 255)


# Lists at least this long are visited in table order by the kernels (visit_order): below it the nodes are
# too few to share cache lines, and the sort (O(names + table size)) costs about what it saves.
ORDER_FROM = 1024


def visit_order(args: ExtenderArgs, table: NodeTable) -> array | None:
    """The positions of args' slots in table order (kernels.slot_order), for the kernels to read the node
    arrays front to back; made once per cached list of names. None for short lists and Node objects."""
    if len(args.slots) < ORDER_FROM:
        return None
    known = args.known
    if known is None:
        return K.slot_order(args.slots, table.size)
    if known.order is None:
        known.order = K.slot_order(known.slots, table.size)
    return known.order


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
        self._survivors: tuple[bytes, ExtenderArgs, bytearray, Scored | None] | None = None
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
                    k.slots, k.version, k.order = self.slots_for(k.names), self.table.version, None
                return k
        return self._survivors_of(body, at)

    def offer_survivors(
        self, parent: ExtenderArgs, picked: bytes, verdicts: bytearray, scored: Scored | None = None
    ) -> None:
        """kube-scheduler sends prioritize exactly the NodeNames filter returned, in that order
        (extender.go builds the feasible list from the reply): remember the last filter's survivors so
        the prioritize call that follows finds its names already mapped, and filter's raw scores for
        them (`scored`, over the parent's names). Materialized only on a hit."""
        if parent.nodes is None and _cost(len(picked), len(parent.names)) <= self.max_entry:
            self._survivors = (picked, parent, verdicts.translate(_PASSED), scored)

    def _survivors_of(self, body: bytes, at: int) -> _Known | None:
        if self._survivors is None:
            return None
        picked, parent, selectors, scored = self._survivors
        start = at + len(self.MARK)
        if len(body) - start != len(picked) + 2 or not body.startswith(picked, start):
            return None
        self._survivors = None
        names = list(compress(parent.names, selectors))
        slots = array("i", compress(parent.slots, selectors))
        if parent.known is None or parent.known.version != self.table.version:
            slots = self.slots_for(names)
        known = _Known(body[at:], self.table.version, names, slots, list(compress(parent.frags, selectors)))
        if scored is not None:
            known.scored = Scored(scored.key, scored.at, K.pick_raw(scored.raw, selectors, 1))
        return self._remember(known)

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
                return ExtenderArgs(pod_of(head), known.names, known.slots, None, known.frags, known)
            # A new list (kube-scheduler's NodeNames order varies call to call): mapped in place. Past
            # 4 bytes a name the list may be over the bound: counted first (Go writes `","` between names).
            start, end = idx + len(self.MARK), len(body) - 2
            if end - start > 4 * MAX_NAMES and (n := body.count(b'","', start, end) + 1) > MAX_NAMES:
                raise too_many_names(n)
            mapped = K.map_names(self.table, body, start, end)
            if mapped is not None:
                slots, names, frags = mapped
                known = self._remember(_Known(body[idx:], self.table.version, names, slots, frags))
                return ExtenderArgs(pod_of(head), names, slots, None, frags, known)
        args = parse_extender_args(loads_object(body, "ExtenderArgs"), self)
        if args.nodes is None and cacheable and self._only_names(body, idx):
            args.known = self._remember(_Known(body[idx:], self.table.version, args.names, args.slots, args.frags))
        return args

    def _only_names(self, body: bytes, idx: int) -> bool:
        """The bytes after the mark are one array and the closing brace, nothing else: only then may they key
        an entry. A tail that went on (`["a"],"Pod":{..}}`) was remembered whole, and the next request with
        that tail and another head took its Pod from the head, not the later key that JSON (and Go) keeps.
        Reached only off the fast path (escaped names, another head): decoding the array again is its cost."""
        try:
            return isinstance(orjson.loads(memoryview(body)[idx + len(self.MARK) - 1 : -1]), list)
        except orjson.JSONDecodeError:
            return False
