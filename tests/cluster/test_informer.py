"""The informer against a fake API server (tests/fakes/apiserver.py), through the real KubeClient: relists on
410 Gone (on a watch and on a continue token), bookmarks, deletes missed while not watching, broken watches,
retries with backoff, and the newline split of the watch stream. Assertions are on ClusterState: nodes in
state.table, pods in state.ledger, teams in state.quotas."""

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from scheduler.cluster import informer as informer_mod
from scheduler.cluster.informer import Informer, Lines, object_key
from scheduler.cluster.kube import KubeClient
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import make_node, make_pod
from tests.fakes.apiserver import (
    NODES,
    PODS,
    TEAMQUOTAS,
    Abort,
    FakeApiServer,
    Hold,
    Request,
    Status,
    Watch,
    added,
    bookmark,
    deleted,
    eventually,
    gone,
    line,
    modified,
)

NOW = "2024-05-01T00:00:00Z"


def node(name: str, cpu: int = 32) -> dict[str, Any]:
    return make_node(name, "shared", cpu, 128, 0, None, None, None, NOW, "zone-1")


def pod(name: str, node_name: str = "n1", cpu: str = "1", ns: str = "a") -> dict[str, Any]:
    return make_pod(ns, name, node_name, cpu, "1Gi", 0)


def team(name: str, gpus: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TeamQuota",
        "metadata": {"name": name, "generation": 1},
        "spec": {"namespaces": [name], "resources": {"nvidia.com/gpu": {"guaranteed": gpus}}},
    }


# -- what the state holds, comparable between two states --------------------------------------------
def nodes_of(state: ClusterState) -> dict[str, Any]:
    return {name: state.node_view(slot) for name, slot in state.table.slot_of.items()}


def pods_of(state: ClusterState) -> dict[str, Any]:
    return {e.key: (e.node, e.request.as_dict(), e.uid) for e in state.ledger}


def teams_of(state: ClusterState) -> dict[str, Any]:
    return {name: (t.limits, t.namespaces) for name, t in state.quotas.teams.items()}


def fresh(
    api: FakeApiServer, path: str, apply: Callable[[ClusterState], Callable[[str, dict[str, Any]], None]]
) -> ClusterState:
    """A state fed once from what the fake serves now: what a new Berth process would list."""
    state = ClusterState(Config())
    for obj in api.objects(path):
        apply(state)("ADDED", obj)
    return state


class Recorder:
    """An apply function that remembers what the informer handed over (to count losses and duplicates)."""

    def __init__(self, apply: Callable[[str, dict[str, Any]], None]) -> None:
        self.apply = apply
        self.seen: list[tuple[str, str]] = []

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        self.seen.append((kind, object_key(obj)))
        self.apply(kind, obj)


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def state() -> ClusterState:
    return ClusterState(Config())


@pytest.fixture
async def start() -> AsyncIterator[Callable[[Informer], Informer]]:
    """Run informers in the background; they are cancelled (and awaited) after the test."""
    tasks: list[asyncio.Task[None]] = []

    def run(inf: Informer) -> Informer:
        inf.retry_delay = 0.01  # small backoff: tests wait for retries, not for seconds
        tasks.append(asyncio.create_task(inf.run()))
        return inf

    yield run
    for t in tasks:
        t.cancel()
    for t in tasks:
        with pytest.raises(asyncio.CancelledError):
            await t


def then(action: Callable[[FakeApiServer], None], reply: Any = None) -> Callable[[FakeApiServer, Request], Any]:
    """A scripted reply that first changes the store behind the watchers' backs."""

    def act(srv: FakeApiServer, _: Request) -> Any:
        action(srv)
        return reply

    return act


def default(_: FakeApiServer, __: Request) -> None:
    """A scripted reply that answers as the fake does by default (to skip requests in a script)."""


# -- 410 Gone --------------------------------------------------------------------------------------
async def test_a_410_on_the_watch_relists_and_the_state_equals_a_fresh_list(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    for name in ("n1", "n2", "n3"):
        api.put(NODES, node(name))

    def missed(srv: FakeApiServer) -> None:  # changes no watch delivers: only the relist can see them
        srv.remove(NODES, "n2")
        srv.put(NODES, node("n3", cpu=64))
        srv.put(NODES, node("n4"))

    api.on("watch", NODES, then(missed, Watch([modified(node("n1", cpu=16)), gone()])))
    inf = start(Informer(kube, state, "nodes", NODES, state.apply_node))
    await eventually(lambda: len(api.calls("watch", NODES)) == 2, what="the watch after the relist")

    assert inf.lists == 2
    assert nodes_of(state) == nodes_of(fresh(api, NODES, lambda s: s.apply_node))
    assert sorted(nodes_of(state)) == ["n1", "n3", "n4"]
    assert state.node_view(state.table.slot_of["n1"])["allocatable"]["cpu"] == 15500  # the watched change
    second_list_rv = api.calls("watch", NODES)[1].query["resourceVersion"]
    assert second_list_rv == str(api.rv), "the new watch starts from the new list's resourceVersion"
    assert state.ready


async def test_an_http_410_to_the_watch_request_relists_too(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    api.put(NODES, node("n1"))
    api.on("watch", NODES, then(lambda s: s.remove(NODES, "n1"), Status(410, "too old resource version")))
    inf = start(Informer(kube, state, "nodes", NODES, state.apply_node))
    await eventually(lambda: len(api.calls("watch", NODES)) == 2)
    assert inf.lists == 2
    assert nodes_of(state) == {}


async def test_a_410_on_a_continue_token_restarts_the_list_and_keeps_no_object_of_the_aborted_pages(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    state.apply_node("ADDED", node("n1"))
    for i in range(1, 6):
        api.put(PODS, pod(f"p{i}"))
    # The second page's token expired (compaction), and p1, already applied from page one, was deleted.
    api.on(
        "page", PODS, then(lambda s: s.remove(PODS, "a/p1"), Status(410, "the provided continue parameter is too old"))
    )
    inf = start(Informer(kube, state, "pods", PODS, state.apply_pod, page_size=2))
    await eventually(lambda: len(api.calls("watch", PODS)) == 1, what="the watch after the list")

    assert [r.verb for r in api.requests] == ["list", "page", "list", "page", "watch"]
    assert all(r.query["limit"] == "2" for r in api.requests[:-1])
    assert inf.lists == 1
    assert sorted(pods_of(state)) == ["a/p2", "a/p3", "a/p4", "a/p5"], "p1 came from an aborted list: gone"
    assert pods_of(state) == pods_of(fresh(api, PODS, lambda s: s.apply_pod))
    assert state.table.free(state.table.slot_of["n1"])["cpu"] == 31500 - 4 * 1000
    assert inf.known == {"a/p2", "a/p3", "a/p4", "a/p5"}


async def test_a_list_that_fails_half_way_forgets_nothing_it_applied(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    """Page one is applied, page two fails (500); by the retry n1 was deleted: the retry must remove it."""
    for name in ("n1", "n2", "n3"):
        api.put(NODES, node(name))
    api.on("page", NODES, then(lambda s: s.remove(NODES, "n1"), Status(500, "etcd timeout")))
    inf = start(Informer(kube, state, "nodes", NODES, state.apply_node, page_size=2))
    await eventually(lambda: len(api.calls("watch", NODES)) == 1)
    assert inf.lists == 1
    assert sorted(nodes_of(state)) == ["n2", "n3"]


# -- bookmarks, deletes, broken watches ---------------------------------------------------------------
async def test_bookmarks_advance_the_resource_version_without_events(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    api.put(NODES, node("n1"))
    api.on("watch", NODES, Watch([bookmark(), bookmark()]))  # then the stream ends (the watch timed out)
    apply = Recorder(state.apply_node)
    inf = start(Informer(kube, state, "nodes", NODES, apply))
    await eventually(lambda: len(api.calls("watch", NODES)) == 2)

    first, second = api.calls("watch", NODES)
    assert first.query["allowWatchBookmarks"] == "true"
    last_bookmark = api.sent[NODES][-1]["object"]["metadata"]["resourceVersion"]
    assert int(last_bookmark) > int(first.query["resourceVersion"])
    assert second.query["resourceVersion"] == last_bookmark == inf.rv
    assert apply.seen == [("ADDED", "n1")]  # the list's; bookmarks apply nothing
    assert inf.events == 0 and inf.lists == 1


async def test_a_team_deleted_during_a_relist_is_removed_from_the_state(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    for name in ("t1", "t2", "t3"):
        api.put(TEAMQUOTAS, team(name))
    # First list: three pages of one. The watch expires; t2 is deleted between the relist's first and
    # second page (so the relist never sees it and no watch says so).
    api.on("watch", TEAMQUOTAS, Watch([modified(team("t3", gpus=8)), gone()]))
    api.on("page", TEAMQUOTAS, default, default, then(lambda s: s.remove(TEAMQUOTAS, "t2")))
    inf = start(Informer(kube, state, "teamquotas", TEAMQUOTAS, state.apply_team, page_size=1, optional=True))
    await eventually(lambda: len(api.calls("watch", TEAMQUOTAS)) == 2)

    assert inf.lists == 2
    assert sorted(state.quotas.teams) == ["t1", "t3"]
    assert teams_of(state) == teams_of(fresh(api, TEAMQUOTAS, lambda s: s.apply_team))
    assert state.quotas.teams["t3"].limits["nvidia.com/gpu"].guaranteed == 8_000  # milli-GPUs


async def test_a_watch_that_ends_on_a_truncated_line_rewatches_from_the_last_event_without_loss_or_duplicates(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    api.put(NODES, node("n1"))
    api.on(
        "watch",
        NODES,
        Watch([modified(node("n1", cpu=16)), added(node("n2")), line(modified(node("n2", cpu=8)))[:40]]),
        Watch([modified(node("n2", cpu=8)), deleted(node("n1")), Hold()]),
    )
    apply = Recorder(state.apply_node)
    inf = start(Informer(kube, state, "nodes", NODES, apply))
    await eventually(lambda: inf.events == 4, what="four watch events")

    second = api.calls("watch", NODES)[1]
    assert second.query["resourceVersion"] == api.sent[NODES][1]["object"]["metadata"]["resourceVersion"]
    assert apply.seen == [("ADDED", "n1"), ("MODIFIED", "n1"), ("ADDED", "n2"), ("MODIFIED", "n2"), ("DELETED", "n1")]
    assert inf.lists == 1
    assert nodes_of(state) == nodes_of(fresh(api, NODES, lambda s: s.apply_node))
    assert state.node_view(state.table.slot_of["n2"])["allocatable"]["cpu"] == 7500


async def test_a_broken_connection_mid_line_recovers_by_relisting(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    """The connection drops inside an event (no end of the chunked body): the informer backs off and relists
    (a lost watch is a relist), and nothing it missed meanwhile is lost."""
    api.put(NODES, node("n1"))
    api.on("watch", NODES, Watch([added(node("n2")), line(added(node("n3")))[:30], Abort()]))
    inf = start(Informer(kube, state, "nodes", NODES, state.apply_node))
    await eventually(lambda: len(api.calls("watch", NODES)) == 2)
    assert inf.lists == 2
    assert sorted(nodes_of(state)) == ["n1", "n2"]  # n3's event never arrived whole: not applied
    assert nodes_of(state) == nodes_of(fresh(api, NODES, lambda s: s.apply_node))


async def test_an_error_event_other_than_410_retries_with_a_relist(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    api.put(NODES, node("n1"))
    api.on(
        "watch",
        NODES,
        Watch([{"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "internal error"}}]),
    )
    inf = start(Informer(kube, state, "nodes", NODES, state.apply_node))
    await eventually(lambda: len(api.calls("watch", NODES)) == 2)
    assert inf.lists == 2 and sorted(nodes_of(state)) == ["n1"]


async def test_an_object_larger_than_aiohttps_line_limit_and_many_events_in_one_chunk(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    big = node("big")
    big["metadata"]["annotations"]["example.com/images"] = "x" * 300_000  # 300 KB: past aiohttp's 64 KiB lines
    many = b"".join(line(added(node(f"m{i}"))) for i in range(200))  # one write: one chunk
    api.on("watch", NODES, Watch([added(big), many, Hold()]))
    inf = start(Informer(kube, state, "nodes", NODES, state.apply_node))
    await eventually(lambda: inf.events == 201, what="201 watch events")
    assert len(state.table) == 201 and "big" in state.table.slot_of


async def test_a_missing_crd_counts_as_synced_with_nothing_in_it(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    api.on("list", TEAMQUOTAS, Status(404, "the server could not find the requested resource"))
    start(Informer(kube, state, "teamquotas", TEAMQUOTAS, state.apply_team, optional=True))
    await eventually(lambda: state.synced.get("teamquotas") is True)
    assert state.ready and not state.quotas.teams
    assert api.calls("watch", TEAMQUOTAS) == []


# -- retries ---------------------------------------------------------------------------------------
async def test_an_unavailable_api_server_is_retried_until_it_answers(
    api: FakeApiServer, kube: KubeClient, state: ClusterState, start: Callable[[Informer], Informer]
) -> None:
    api.put(NODES, node("n1"))
    api.on("list", NODES, Status(503, "starting"), Status(500, "etcd timeout"))
    inf = start(Informer(kube, state, "nodes", NODES, state.apply_node))
    await eventually(lambda: len(api.calls("watch", NODES)) == 1)
    assert len(api.calls("list", NODES)) == 3
    assert inf.lists == 1 and sorted(nodes_of(state)) == ["n1"]


async def test_backoff_is_jittered_doubles_and_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(informer_mod.asyncio, "sleep", sleep)
    random.seed(5)
    delays = [0.2]
    for _ in range(12):
        delays.append(await informer_mod._backoff(delays[-1]))
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6]
    assert max(delays) == 30.0 and delays[-1] == 30.0
    for asked, got in zip(delays, slept, strict=False):
        assert 0.5 * asked <= got < 1.5 * asked
    assert len(set(slept)) == len(slept), "jittered: no two replicas (no two retries) wait the same"


# -- the line split ----------------------------------------------------------------------------------
def feed_all(chunks: list[bytes]) -> list[bytes]:
    lines = Lines()
    return [ln for chunk in chunks for ln in lines.feed(chunk)]


def test_lines_come_out_whole_wherever_the_chunks_cut_them() -> None:
    events = [orjson.dumps({"type": "ADDED", "n": i, "pad": "y" * (i * 7)}) for i in range(6)]
    stream = b"\n".join(events) + b"\n"
    for a, b in itertools.combinations(range(1, len(stream)), 2):
        assert feed_all([stream[:a], stream[a:b], stream[b:]]) == events
    assert feed_all([bytes([c]) for c in stream]) == events


def test_lines_keep_the_unfinished_tail_and_blank_lines() -> None:
    lines = Lines()
    assert lines.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert lines.feed(b":2") == []
    assert lines.feed(b"}\n\n") == [b'{"b":2}', b""]
    assert lines.feed(b"") == []
    assert lines.feed(b'{"c":3}') == []  # a stream that ends here drops the partial line
