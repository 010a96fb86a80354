"""Bind checks the pod's name, namespace and UID together: a PodUID of another pod is refused, reserves
nothing, and leaves that other pod's own bind free to succeed."""

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from scheduler.cluster.state import ClusterState
from scheduler.model.binding import BindConflict, BindingArgs
from scheduler.model.podspec import pod_ask
from scheduler.policy.binder import Binder, BindError
from tests.conftest import GoWire

TRAIN = ("train-llama-7f9c4-0", "ml-research", "3f0e8a52-6d1b-4c8e-9b7a-2d5f1c0e4a91")
WEB = ("web-6d8f7c9b5-tx4qk", "default", "9a7c1e22-4b3d-4f5e-8a6b-1c2d3e4f5a6b")


async def post(client: TestClient, verb: str, body: bytes) -> Any:
    r = await client.post(f"/scheduler/{verb}", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 200
    return orjson.loads(await r.read())


async def survivors(client: TestClient, go: GoWire, which: str) -> list[str]:
    reply = await post(client, "filter", go.args(go.pod(which), go.names()[:80]))
    assert reply["Error"] == "" and reply["NodeNames"], reply
    return list(reply["NodeNames"])


def holds_nothing(state: ClusterState, *pods: tuple[str, str, str]) -> None:
    for name, ns, uid in pods:
        key = f"{ns}/{name}"
        assert key not in state.reservations, f"{key} left a reservation"
        assert state.ledger.get(key) is None, f"{key} is in the ledger"
        assert uid not in state.ledger.by_uid, f"UID {uid} is in the ledger"


async def test_bind_with_another_pods_uid_is_refused_over_http(
    client: TestClient, go: GoWire, demo_state: ClusterState
) -> None:
    web_nodes = await survivors(client, go, "web")
    await survivors(client, go, "training")
    node = web_nodes[0]
    # The training pod's name with the web pod's UID.
    reply = await post(client, "bind", go.binding(TRAIN[0], TRAIN[1], WEB[2], node))
    assert reply["Error"], "a mismatched PodUID must be refused"
    assert WEB[2] in reply["Error"] and f"{WEB[1]}/{WEB[0]}" in reply["Error"], reply
    assert f"{TRAIN[1]}/{TRAIN[0]}" in reply["Error"], reply
    holds_nothing(demo_state, TRAIN, WEB)
    # The web pod's own bind is not refused as "already bound".
    assert await post(client, "bind", go.binding(WEB[0], WEB[1], WEB[2], node)) == {"Error": ""}
    held = demo_state.ledger.get(f"{WEB[1]}/{WEB[0]}")
    assert held is not None and held.uid == WEB[2] and held.node == node
    holds_nothing(demo_state, TRAIN)


async def test_bind_with_matching_uid_still_binds(client: TestClient, go: GoWire, demo_state: ClusterState) -> None:
    node = (await survivors(client, go, "training"))[0]
    assert await post(client, "bind", go.binding(*TRAIN, node)) == {"Error": ""}
    held = demo_state.ledger.get(f"{TRAIN[1]}/{TRAIN[0]}")
    assert held is not None and held.uid == TRAIN[2]


# -- the binder with an API server behind it (fakes for the write and the fetch) ---------------------
class FakeApi:
    def __init__(self, pods: dict[str, dict[str, Any]]) -> None:
        self.pods = pods
        self.writes: list[BindingArgs] = []

    async def write(self, args: BindingArgs, annotations: dict[str, str]) -> str:
        self.writes.append(args)
        return ""

    async def fetch(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(f"{namespace}/{name}")


@pytest.fixture
def api(go: GoWire) -> FakeApi:
    return FakeApi({f"{TRAIN[1]}/{TRAIN[0]}": go.pod_object("training"), f"{WEB[1]}/{WEB[0]}": go.pod_object("web")})


async def test_binder_refuses_uid_seen_for_another_pod(demo_state: ClusterState, go: GoWire, api: FakeApi) -> None:
    binder = Binder(demo_state, api.write, api.fetch)
    demo_state.seen.remember(pod_ask(go.pod_object("web")))  # filter saw the web pod
    node = go.names("shared")[0]
    with pytest.raises(BindError) as err:
        await binder.bind(BindingArgs(TRAIN[0], TRAIN[1], WEB[2], node))
    assert f"{WEB[1]}/{WEB[0]}" in err.value.reason and f"{TRAIN[1]}/{TRAIN[0]}" in err.value.reason
    assert api.writes == [], "nothing may be written for a mismatched bind"
    holds_nothing(demo_state, TRAIN, WEB)
    assert await binder.bind(BindingArgs(WEB[0], WEB[1], WEB[2], node)) == "bound"
    assert [a.uid for a in api.writes] == [WEB[2]]


async def test_binder_refuses_uid_the_api_server_does_not_have(
    demo_state: ClusterState, go: GoWire, api: FakeApi
) -> None:
    """Filter never saw the pod: it is fetched by name, and its UID there must be the PodUID."""
    binder = Binder(demo_state, api.write, api.fetch)
    with pytest.raises(BindError) as err:
        await binder.bind(BindingArgs(TRAIN[0], TRAIN[1], WEB[2], go.names("shared")[0]))
    assert TRAIN[2] in err.value.reason and WEB[2] in err.value.reason
    assert api.writes == []
    holds_nothing(demo_state, TRAIN, WEB)


async def test_binder_checks_uid_before_trusting_a_bound_pod(
    demo_state: ClusterState, go: GoWire, api: FakeApi
) -> None:
    """The pod of that name is already on the node but with another UID: not "already bound"."""
    node = go.names("shared")[0]
    api.pods[f"{TRAIN[1]}/{TRAIN[0]}"]["spec"]["nodeName"] = node
    binder = Binder(demo_state, api.write, api.fetch)
    with pytest.raises(BindError) as err:
        await binder.bind(BindingArgs(TRAIN[0], TRAIN[1], WEB[2], node))
    assert "recreated" in err.value.reason
    holds_nothing(demo_state, TRAIN, WEB)


# -- 409 from the API server: the binder reads the pod and decides ------------------------------------
class ConflictingApi(FakeApi):
    """The Binding write gets 409, as from a real API server when the pod is bound already."""

    async def write(self, args: BindingArgs, annotations: dict[str, str]) -> str:
        self.writes.append(args)
        raise BindConflict("Operation cannot be fulfilled on pods/binding: pod is already assigned to a node")


async def test_a_conflict_on_the_node_asked_for_is_already_bound(demo_state: ClusterState, go: GoWire) -> None:
    """A retry whose first reply was lost: the pod is on this node. Done; the watch confirms the hold."""
    node = go.names("shared")[0]
    api = ConflictingApi({f"{WEB[1]}/{WEB[0]}": go.pod_object("web")})
    binder = Binder(demo_state, api.write, api.fetch)
    demo_state.seen.remember(pod_ask(go.pod_object("web")))
    api.pods[f"{WEB[1]}/{WEB[0]}"]["spec"]["nodeName"] = node  # the API server has it there
    assert await binder.bind(BindingArgs(WEB[0], WEB[1], WEB[2], node)) == "already_bound"
    held = demo_state.ledger.get(f"{WEB[1]}/{WEB[0]}")
    assert held is not None and held.node == node


async def test_a_conflict_elsewhere_releases_and_says_where(demo_state: ClusterState, go: GoWire) -> None:
    node, other = go.names("shared")[:2]
    api = ConflictingApi({f"{WEB[1]}/{WEB[0]}": go.pod_object("web")})
    binder = Binder(demo_state, api.write, api.fetch)
    demo_state.seen.remember(pod_ask(go.pod_object("web")))
    api.pods[f"{WEB[1]}/{WEB[0]}"]["spec"]["nodeName"] = other
    with pytest.raises(BindError) as err:
        await binder.bind(BindingArgs(WEB[0], WEB[1], WEB[2], node))
    assert err.value.result == "conflict" and f"already bound to {other}, not {node}" in err.value.reason
    holds_nothing(demo_state, WEB)


async def test_a_conflict_on_an_unbound_pod_releases_with_the_api_servers_sentence(
    demo_state: ClusterState, go: GoWire
) -> None:
    """409 on a pod bound nowhere (a UID precondition of a recreated pod): refused, nothing held."""
    node = go.names("shared")[0]
    api = ConflictingApi({f"{WEB[1]}/{WEB[0]}": go.pod_object("web")})
    binder = Binder(demo_state, api.write, api.fetch)
    demo_state.seen.remember(pod_ask(go.pod_object("web")))
    with pytest.raises(BindError) as err:
        await binder.bind(BindingArgs(WEB[0], WEB[1], WEB[2], node))
    assert "(409)" in err.value.reason and "already assigned" in err.value.reason
    holds_nothing(demo_state, WEB)


# -- a write that times out: the outcome is unknown, so the hold stays -------------------------------------
class SlowApi(FakeApi):
    """The Binding write times out client-side, as under a loaded API server that still writes it."""

    async def write(self, args: BindingArgs, annotations: dict[str, str]) -> str:
        self.writes.append(args)
        raise TimeoutError


async def test_a_timed_out_write_keeps_its_reservation_until_the_watch_or_expiry(
    demo_state: ClusterState, go: GoWire
) -> None:
    """Releasing on a timeout handed the same GPU to the next pod while the API server had in fact bound
    the first one (seen in `make bench-churn`): the hold stays, unconfirmed, and a retry to another
    node is refused as bound elsewhere."""
    node, other = go.names("shared")[:2]
    api = SlowApi({f"{WEB[1]}/{WEB[0]}": go.pod_object("web")})
    binder = Binder(demo_state, api.write, api.fetch)
    demo_state.seen.remember(pod_ask(go.pod_object("web")))
    with pytest.raises(BindError) as err:
        await binder.bind(BindingArgs(WEB[0], WEB[1], WEB[2], node))
    assert "timed out" in err.value.reason
    key = f"{WEB[1]}/{WEB[0]}"
    held = demo_state.ledger.get(key)
    assert held is not None and held.node == node and not held.confirmed
    assert key in demo_state.reservations
    with pytest.raises(BindError):
        await binder.bind(BindingArgs(WEB[0], WEB[1], WEB[2], other))
    assert demo_state.ledger.get(key) is held


async def test_a_bound_pods_retry_with_another_uid_is_refused(
    client: TestClient, go: GoWire, demo_state: ClusterState
) -> None:
    """The retry shortcut (bound to this node already: done) answered a bind naming another UID as done too:
    a pod of the same name, recreated before the watch said so, was told it was bound and never was."""
    node = (await survivors(client, go, "training"))[0]
    assert await post(client, "bind", go.binding(*TRAIN, node)) == {"Error": ""}
    assert await post(client, "bind", go.binding(*TRAIN, node)) == {"Error": ""}  # the retry: still done
    reply = await post(client, "bind", go.binding(TRAIN[0], TRAIN[1], "00000000-0000-4000-8000-00000000beef", node))
    assert "recreated" in reply["Error"] and TRAIN[2] in reply["Error"], reply
    held = demo_state.ledger.get(f"{TRAIN[1]}/{TRAIN[0]}")
    assert held is not None and held.uid == TRAIN[2] and held.node == node
