"""The one cache of pods the verbs have seen (cluster/seen.py): recalled by UID and resourceVersion,
found by UID for bind and by namespace/name for demo explain, bounded in entries."""

import pytest

from scheduler.cluster.seen import SeenPods
from scheduler.demo import make_pod
from scheduler.model.podspec import PodAsk, pod_ask


def ask(name: str, namespace: str = "default") -> PodAsk:
    return pod_ask(make_pod(namespace, name, None, "1", "1Gi", 1))


def test_recall_needs_the_same_uid_and_resource_version() -> None:
    seen, a = SeenPods(), ask("a")
    seen.remember(a, "17")
    assert seen.recall(a.uid, "17") is a
    assert seen.recall(a.uid, "18") is None, "a new resourceVersion is parsed again"
    assert seen.recall(a.uid, "") is None and seen.recall(a.uid, None) is None and seen.recall("", "17") is None
    seen.remember(a, None)  # seen again without a resourceVersion: known for bind, never recalled
    assert seen.recall(a.uid, "17") is None and seen.by_uid(a.uid) is a


def test_by_uid_and_by_name() -> None:
    seen, a, b = SeenPods(), ask("a"), ask("b", "team-x")
    seen.remember(a, "1")
    seen.remember(b, "1", by_name=True)
    assert seen.by_uid(a.uid) is a and seen.by_uid(b.uid) is b and seen.by_uid("nope") is None
    assert seen.by_name("team-x", "b") is b
    assert seen.by_name("default", "a") is None, "indexed by name only when asked"
    nameless = PodAsk(a.namespace, "c", "", a.request, 0, (), 0, "")
    seen.remember(nameless, "1", by_name=True)
    assert len(seen) == 2 and seen.by_name("default", "c") is None, "a pod without a UID is not kept"


def test_bounded_in_entries_with_its_name_index() -> None:
    seen = SeenPods(maxsize=10)
    asks = [ask(f"p{i}") for i in range(100)]
    for a in asks:
        seen.remember(a, "1", by_name=True)
    assert len(seen) == 10 and len(seen._uid_of) <= 20
    assert seen.by_name("default", "p0") is None and seen.by_uid(asks[0].uid) is None
    assert all(seen.by_name("default", a.name) is a for a in asks[-10:])


def test_a_recreated_pod_is_found_by_name_under_its_new_uid() -> None:
    seen, old = SeenPods(), ask("a")
    new = PodAsk(old.namespace, old.name, "uid-new", old.request, 0, (), 0, "")
    seen.remember(old, "1", by_name=True)
    seen.remember(new, "9", by_name=True)
    assert seen.by_name("default", "a") is new and seen.by_uid(old.uid) is old


def test_an_entry_expires_ttl_seconds_after_it_was_last_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("scheduler.cluster.seen.time.monotonic", lambda: clock[0])
    seen, a, b = SeenPods(ttl=600), ask("a"), ask("b")
    seen.remember(a, "1", by_name=True)
    seen.remember(b, "1")
    clock[0] += 500
    seen.remember(a, "1", by_name=True)  # seen again: a fresh 600 s
    clock[0] += 200
    assert seen.by_uid(b.uid) is None and seen.recall(b.uid, "1") is None, "b was last seen 700 s ago"
    assert seen.by_uid(a.uid) is a and seen.recall(a.uid, "1") is a and seen.by_name("default", "a") is a
    assert len(seen) == 1
    clock[0] += 600
    assert seen.by_uid(a.uid) is None and seen.by_name("default", "a") is None and len(seen) == 0


def test_bounded_in_bytes() -> None:
    """A count alone let 50,000 pods of a megabyte of resource names each stay ten minutes (found over HTTP:
    1 MB more RSS per filter). The bytes follow PodAsk.cost; a refresh of the same ask adds none; an ask over
    1/64 of the budget is not kept; expiry gives its bytes back."""
    budget = 64 * 1024
    seen = SeenPods(budget=budget)
    wide = [pod_ask(make_pod("default", f"w{i}", None, "1", "1Gi", 0)) for i in range(80)]
    for i, a in enumerate(wide):
        a.cost = 1000 + i % 20  # each under budget // 64, 80 of them over the budget
        seen.remember(a, "1")
        seen.remember(a, "1")  # the verbs refresh on every call
    assert seen.bytes <= budget and seen.bytes == sum(e[1].cost for e in seen._by_uid.values())
    assert seen.by_uid(wide[-1].uid) is wide[-1] and seen.by_uid(wide[0].uid) is None, "the oldest went"
    huge = ask("huge")
    huge.cost = budget // 64 + 1
    seen.remember(huge, "1")
    assert seen.by_uid(huge.uid) is None
    seen.ttl = -1.0
    assert len(seen) == 0 and seen.bytes == 0


def test_an_asks_cost_counts_its_strings() -> None:
    small = pod_ask(make_pod("default", "a", None, "1", "1Gi", 0))
    pod = make_pod("default", "a", None, "1", "1Gi", 0)
    pod["spec"]["containers"][0]["resources"]["requests"].update({f"example.com/r{i:0200d}": "1" for i in range(50)})
    assert pod_ask(pod).cost > small.cost + 50 * 200
