"""Pods the verbs have seen: one bounded cache, three lookups.

kube-scheduler sends a pending pod to filter, prioritize and preempt whole, but bind names it only.
What the verbs learnt from the whole pod is kept here, by UID, and read back:

- by the verbs themselves, by UID and resourceVersion: the spec of one resourceVersion never changes,
  so a pod sent again (prioritize after filter, each retry) is not parsed again;
- by the binder, by UID: what the pod asks for, which bind's arguments do not say;
- by `/debug/explain` without an API server (demo), by namespace/name.

It lives in `cluster`, owned by ClusterState, because it is state: the extender writes it and the
binder (`policy`) reads it, and both rooms sit above `cluster`, so neither imports the other and the
binder needs no extra wiring (the placement simulator binds with no extender at all).
"""

import time
from collections import OrderedDict

from scheduler.model.podspec import PodAsk

SEEN_PODS = 50_000  # entries; ~10 minutes of pending pods at kube-scheduler's pace
SEEN_TTL = 600.0  # seconds since a verb last saw the pod
# ... and at most this many bytes, by PodAsk.cost (an estimate: ~0.6 KB for a pod of a few resources, so the
# entry count binds first for real pods). A count alone let 50,000 pods of a megabyte of resource names each
# stay for ten minutes. A pod over 1/64 of it (1 MiB) is not kept: no real pod comes near.
SEEN_BYTES = 64 << 20


class SeenPods:
    """By UID: (resourceVersion or None, ask, when last seen), least recently seen first. Hand-rolled on
    an OrderedDict rather than cachetools.TTLCache: a lookup and a refresh on every verb call cost
    ~4.5 µs with TTLCache, a few hundred ns here. An entry expires `ttl` seconds after a verb last saw
    the pod; the cache holds at most `maxsize` entries, dropping the least recently seen.

    The namespace/name index holds UIDs only and is kept for demo explain alone; it is checked against
    the cache on every read and rebuilt from it when it outgrows twice its size, so it is bounded by
    the cache's size too. A pod without a UID is not remembered (kube-scheduler always sends one; bind
    could not tell such a pod from a recreated one)."""

    def __init__(self, maxsize: int = SEEN_PODS, ttl: float = SEEN_TTL, budget: int = SEEN_BYTES) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self.budget = budget
        self.largest = budget >> 6  # an ask costing more is not kept
        self.bytes = 0  # the PodAsk.cost of the entries kept
        self._by_uid: OrderedDict[str, tuple[str | None, PodAsk, float]] = OrderedDict()
        self._uid_of: dict[str, str] = {}  # "namespace/name" -> UID
        self._index_limit = 2 * maxsize

    def __len__(self) -> int:
        self._expire(time.monotonic())
        return len(self._by_uid)

    def recall(self, uid: object, version: object) -> PodAsk | None:
        """The ask parsed for this UID at this resourceVersion, if both are non-empty strings."""
        if not (isinstance(uid, str) and isinstance(version, str) and uid and version):
            return None
        entry = self._by_uid.get(uid)
        if entry is None or entry[0] != version or entry[2] < time.monotonic() - self.ttl:
            return None
        return entry[1]

    def remember(self, ask: PodAsk, version: object = None, by_name: bool = False) -> None:
        """Keep (or refresh) `ask`; `version` makes it recallable; `by_name` indexes it for explain."""
        uid = ask.uid
        if not uid or ask.cost > self.largest:
            return
        now = time.monotonic()
        entries = self._by_uid
        old = entries.get(uid)
        entries[uid] = (version if isinstance(version, str) and version else None, ask, now)
        entries.move_to_end(uid)
        if old is None or old[1] is not ask:  # a refresh of the same ask (most calls) changes no bytes
            self.bytes += ask.cost - (old[1].cost if old is not None else 0)
            while len(entries) > self.maxsize or self.bytes > self.budget:
                self.bytes -= entries.popitem(last=False)[1][1].cost
        self._expire(now)
        if by_name:
            self._uid_of[f"{ask.namespace}/{ask.name}"] = uid
            if len(self._uid_of) > self._index_limit:
                self._prune_index()

    def by_uid(self, uid: str) -> PodAsk | None:
        entry = self._by_uid.get(uid)
        return entry[1] if entry is not None and entry[2] >= time.monotonic() - self.ttl else None

    def by_name(self, namespace: str, name: str) -> PodAsk | None:
        uid = self._uid_of.get(f"{namespace}/{name}")
        ask = self.by_uid(uid) if uid is not None else None
        return ask if ask is not None and ask.namespace == namespace and ask.name == name else None

    def recent(self) -> list[tuple[PodAsk, float]]:
        """Every live entry as (ask, monotonic time a verb last saw it), least recently seen first:
        read by the dashboard's queue (scheduler/ui/); a copy, so the caller may take its time."""
        self._expire(time.monotonic())
        return [(ask, seen) for _, ask, seen in self._by_uid.values()]

    def _expire(self, now: float) -> None:
        entries, oldest = self._by_uid, now - self.ttl
        while entries:
            uid, entry = next(iter(entries.items()))
            if entry[2] >= oldest:
                return
            del entries[uid]
            self.bytes -= entry[1].cost

    def _prune_index(self) -> None:
        self._uid_of = {f"{ask.namespace}/{ask.name}": uid for uid, (_, ask, _) in self._by_uid.items()}
