"""The extender wire protocol, checked field by field with request bodies shaped like kube-scheduler's
(tests/fixtures/go/), in both nodeCacheCapable modes and for all four verbs."""

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState
from tests.conftest import GoWire

FILTER_KEYS = {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
GO_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "gzip", "User-Agent": "Go-http-client/1.1"}
UNKNOWN = "aks-gone-00000000-vmss0fffff"
MODES = pytest.mark.parametrize("cache_capable", [True, False], ids=["nodeCacheCapable", "fullNodes"])
TRAINING_UID = "3f0e8a52-6d1b-4c8e-9b7a-2d5f1c0e4a91"


async def call(client: TestClient, verb: str, body: bytes) -> tuple[int, Any]:
    """POST like Go does; every reply must carry a Content-Length and never be chunked."""
    r = await client.post(f"/scheduler/{verb}", data=body, headers=GO_HEADERS)
    raw = await r.read()
    assert "chunked" not in r.headers.get("Transfer-Encoding", "").lower()
    assert "Content-Length" in r.headers, r.headers
    if "Content-Encoding" not in r.headers:
        assert int(r.headers["Content-Length"]) == len(raw)
    return r.status, orjson.loads(raw)


def str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def check_filter_result(reply: Any, names: list[str], cache_capable: bool, sent: list[Any] | None = None) -> list[str]:
    """Every field's name and JSON type; returns the surviving node names."""
    assert isinstance(reply, dict) and set(reply) == FILTER_KEYS
    assert str_map(reply["FailedNodes"]) and str_map(reply["FailedAndUnresolvableNodes"])
    assert isinstance(reply["Error"], str)
    if reply["Error"]:  # kube-scheduler fails the call on Error and reads nothing else
        assert reply["Nodes"] is None or reply["NodeNames"] is None
        return []
    if cache_capable:
        assert reply["Nodes"] is None
        survivors = reply["NodeNames"]
        assert isinstance(survivors, list) and all(isinstance(n, str) for n in survivors)
    else:
        assert reply["NodeNames"] is None
        assert isinstance(reply["Nodes"], dict) and isinstance(reply["Nodes"]["items"], list)
        items = reply["Nodes"]["items"]
        survivors = [n["metadata"]["name"] for n in items]
        if sent is not None:  # survivors go back as the very Node objects kube-scheduler sent
            by_name = {n["metadata"]["name"]: n for n in sent}
            assert all(n == by_name[n["metadata"]["name"]] for n in items)
    assert set(survivors) <= set(names) and len(set(survivors)) == len(survivors)
    failed, unres = set(reply["FailedNodes"]), set(reply["FailedAndUnresolvableNodes"])
    assert not failed & unres and not (failed | unres) & set(survivors), "every node is accounted for once"
    assert set(survivors) | failed | unres == set(names)
    return survivors


def mixed_names(go: GoWire, n: int = 40) -> list[str]:
    return [*go.names()[:n], UNKNOWN]


async def filter_call(
    client: TestClient, go: GoWire, names: list[str], cache_capable: bool, pod: bytes | None = None
) -> list[str]:
    body = go.args(pod or go.pod(), names, cache_capable)
    status, reply = await call(client, "filter", body)
    assert status == 200
    sent = None if cache_capable else orjson.loads(body)["Nodes"]["items"]
    survivors = check_filter_result(reply, names, cache_capable, sent)
    assert reply["Error"] == ""
    return survivors


# -- filter ----------------------------------------------------------------------------------------
@MODES
async def test_filter_reply_fields(client: TestClient, go: GoWire, cache_capable: bool) -> None:
    names = mixed_names(go)
    survivors = await filter_call(client, go, names, cache_capable)
    assert survivors, "a 2-GPU ml-research pod fits some A100 node of the demo cluster"
    assert survivors == [n for n in names if n in survivors], "survivors keep the order they were sent in"


@MODES
async def test_unknown_node_is_a_failed_node_not_an_error(client: TestClient, go: GoWire, cache_capable: bool) -> None:
    names = mixed_names(go, 5)
    status, reply = await call(client, "filter", go.args(go.pod(), names, cache_capable))
    assert status == 200 and reply["Error"] == ""
    assert reply["FailedNodes"][UNKNOWN].strip(), "the reason is for a person to read"
    assert UNKNOWN not in reply["FailedAndUnresolvableNodes"]


@MODES
async def test_pod_that_cannot_be_judged_gets_error(client: TestClient, go: GoWire, cache_capable: bool) -> None:
    pod = go.pod().replace(b'"requests":{"cpu":"8"', b'"requests":{"cpu":"abc"')
    assert pod != go.pod()
    names = go.names()[:5]
    status, reply = await call(client, "filter", go.args(pod, names, cache_capable))
    assert status == 200
    check_filter_result(reply, names, cache_capable)
    assert reply["Error"] and "abc" in reply["Error"]


async def test_cpu_pod_passes_only_shared_pool(client: TestClient, go: GoWire) -> None:
    names = go.names()[:30]
    survivors = await filter_call(client, go, names, True, go.pod("web"))
    shared = set(go.names("shared"))
    assert survivors and set(survivors) <= shared


async def test_extended_resource_no_node_has(client: TestClient, go: GoWire) -> None:
    pod = go.pod().replace(b'"requests":{"cpu":"8"', b'"requests":{"example.com/fpga":"1","cpu":"8"')
    names = go.names()[:10]
    status, reply = await call(client, "filter", go.args(pod, names, True))
    assert status == 200 and reply["Error"] == "" and reply["NodeNames"] == []
    check_filter_result(reply, names, True)
    assert any("example.com/fpga" in why for why in reply["FailedAndUnresolvableNodes"].values())


async def test_repeated_node_names_give_the_same_reply(client: TestClient, go: GoWire) -> None:
    """kube-scheduler resends the same NodeNames: the cached path must answer exactly like the first."""
    body = go.args(go.pod(), mixed_names(go), True)
    first = await call(client, "filter", body)
    again = await call(client, "filter", body)
    other_pod = await call(client, "filter", go.args(go.pod("web"), mixed_names(go), True))
    assert first == again
    assert other_pod[1]["NodeNames"] != first[1]["NodeNames"]


async def test_lower_case_keys_are_accepted(client: TestClient, go: GoWire) -> None:
    names = mixed_names(go, 10)
    upper = await call(client, "filter", go.args(go.pod(), names, True))
    lower_body = b'{"pod":' + go.pod() + b',"nodes":null,"nodenames":' + orjson.dumps(names) + b"}"
    assert await call(client, "filter", lower_body) == upper
    status, scores = await call(client, "prioritize", lower_body)
    assert status == 200 and [s["Host"] for s in scores] == names


# -- prioritize ------------------------------------------------------------------------------------
@MODES
async def test_prioritize_is_a_bare_array(client: TestClient, go: GoWire, cache_capable: bool) -> None:
    names = mixed_names(go)
    status, reply = await call(client, "prioritize", go.args(go.pod(), names, cache_capable))
    assert status == 200 and isinstance(reply, list) and len(reply) == len(names)
    for entry, name in zip(reply, names, strict=True):
        assert set(entry) == {"Host", "Score"}
        assert entry["Host"] == name
        assert type(entry["Score"]) is int and 0 <= entry["Score"] <= 10
    assert any(e["Score"] > 0 for e in reply)


# -- bind ------------------------------------------------------------------------------------------
@MODES
async def test_filter_prioritize_bind_cycle(
    client: TestClient, go: GoWire, demo_state: ClusterState, cache_capable: bool
) -> None:
    names = go.names()[:60]
    survivors = await filter_call(client, go, names, cache_capable)
    assert survivors  # the best tier (docs/scoring.md) may leave one
    status, scores = await call(client, "prioritize", go.args(go.pod(), survivors, cache_capable))
    assert status == 200
    best = max(scores, key=lambda s: s["Score"])["Host"]
    body = go.binding("train-llama-7f9c4-0", "ml-research", TRAINING_UID, best)
    assert await call(client, "bind", body) == (200, {"Error": ""})
    held = demo_state.ledger.get("ml-research/train-llama-7f9c4-0")
    assert held is not None and held.node == best and held.request.gpu == 2
    # a retried bind (its first reply lost) succeeds; a bind elsewhere names where the pod is
    assert await call(client, "bind", body) == (200, {"Error": ""})
    other = next(n for n in names if n != best)
    status, reply = await call(client, "bind", go.binding("train-llama-7f9c4-0", "ml-research", TRAINING_UID, other))
    assert status == 200 and set(reply) == {"Error"}
    assert best in reply["Error"]


async def test_bind_of_pod_never_filtered_fails_with_reason(client: TestClient, go: GoWire) -> None:
    status, reply = await call(client, "bind", go.binding("ghost", "default", "no-such-uid", go.names()[0]))
    assert status == 200 and set(reply) == {"Error"} and "ghost" in reply["Error"]


async def test_lower_case_binding_keys(client: TestClient, go: GoWire) -> None:
    node = (await filter_call(client, go, go.names()[:40], True))[0]
    body = orjson.dumps(
        {"podname": "train-llama-7f9c4-0", "podnamespace": "ml-research", "poduid": TRAINING_UID, "node": node}
    )
    assert await call(client, "bind", body) == (200, {"Error": ""})


# -- preempt ---------------------------------------------------------------------------------------
def victims_on_gpu_nodes(state: ClusterState, team: str = "ml-research", nodes: int = 3) -> dict[str, list[PodEntry]]:
    out: dict[str, list[PodEntry]] = {}
    for entry in state.ledger:
        if entry.team == team and entry.request.gpu and (entry.node in out or len(out) < nodes):
            out.setdefault(entry.node, []).append(entry)
    assert out, "the demo cluster runs some ml-research pods"
    return out


def full_victim(go: GoWire, entry: PodEntry) -> dict[str, Any]:
    pod = go.pod_object("web")
    ns, name = entry.key.split("/", 1)
    pod["metadata"].update({"name": name, "namespace": ns, "uid": entry.uid})
    pod["spec"]["nodeName"] = entry.node
    pod["status"]["phase"] = "Running"
    return pod


def preemption_body(go: GoWire, victims: dict[str, list[PodEntry]], cache_capable: bool) -> bytes:
    if cache_capable:
        return go.preemption(go.pod(), {n: [e.uid for e in es] for n, es in victims.items()})
    full = {n: {"Pods": [full_victim(go, e) for e in es], "NumPDBViolations": 0} for n, es in victims.items()}
    return b'{"Pod":' + go.pod() + b',"NodeNameToVictims":' + orjson.dumps(full) + b',"NodeNameToMetaVictims":null}'


@MODES
async def test_preempt_reply_is_meta_victims(
    client: TestClient, go: GoWire, demo_state: ClusterState, cache_capable: bool
) -> None:
    victims = victims_on_gpu_nodes(demo_state)
    status, reply = await call(client, "preempt", preemption_body(go, victims, cache_capable))
    assert status == 200 and isinstance(reply, dict) and set(reply) == {"NodeNameToMetaVictims"}
    meta = reply["NodeNameToMetaVictims"]
    assert isinstance(meta, dict) and meta, "victims of the preemptor's own team are allowed"
    for node, mv in meta.items():
        assert node in victims
        assert set(mv) == {"Pods", "NumPDBViolations"}
        assert type(mv["NumPDBViolations"]) is int
        assert isinstance(mv["Pods"], list) and mv["Pods"], "a node with no victims must not be returned"
        for p in mv["Pods"]:
            assert set(p) == {"UID"} and isinstance(p["UID"], str)
        assert {p["UID"] for p in mv["Pods"]} <= {e.uid for e in victims[node]}


async def test_preempt_lower_case_keys(client: TestClient, go: GoWire, demo_state: ClusterState) -> None:
    victims = victims_on_gpu_nodes(demo_state, nodes=1)
    upper = await call(client, "preempt", preemption_body(go, victims, True))
    meta = {n: {"pods": [{"uid": e.uid} for e in es], "numpdbviolations": 0} for n, es in victims.items()}
    lower = b'{"pod":' + go.pod() + b',"nodenametovictims":null,"nodenametometavictims":' + orjson.dumps(meta) + b"}"
    assert await call(client, "preempt", lower) == upper


# -- the recorded payloads themselves ----------------------------------------------------------------
def test_fixtures_are_go_shaped(go: GoWire) -> None:
    for name in ("pod-training.json", "pod-web.json", "node.json"):
        raw = go.raw(name)
        assert b"&" not in raw and b"<" not in raw, "Go escapes &, < and > in strings"
        # compact, and in the order it was written: re-encoding the decoded object gives the same bytes
        again = orjson.dumps(orjson.loads(raw))
        assert again.replace(b"&", b"\\u0026").replace(b"<", b"\\u003c").replace(b">", b"\\u003e") == raw
    pod = go.pod_object()
    assert list(pod) == ["metadata", "spec", "status"]  # informer objects carry no TypeMeta
    spec = pod["spec"]
    assert spec["initContainers"][1]["restartPolicy"] == "Always" and spec["overhead"]
    assert pod["status"]["conditions"][0]["lastProbeTime"] is None


def test_repeated_node_names_track_every_state_change(go: GoWire, demo_state: ClusterState) -> None:
    """The same NodeNames bytes again (the names cache and the failed-maps cache both hit) get exactly
    the reply a fresh server gives for the cluster as it is now."""
    from scheduler.demo import make_pod
    from scheduler.extender.server import Berth
    from scheduler.observability.metrics import Metrics
    from scheduler.policy.binder import Binder

    def fresh_reply(body: bytes) -> bytes:
        return Berth(demo_state, Metrics(), Binder(demo_state, None, None)).verbs.filter_body(body)

    berth = Berth(demo_state, Metrics(), Binder(demo_state, None, None)).verbs
    body = go.args(go.pod(), go.names())
    first = berth.filter_body(body)
    assert berth.filter_body(body) == first == fresh_reply(body)
    fits = orjson.loads(first)["NodeNames"]
    failed_before = orjson.loads(first)["FailedNodes"] | orjson.loads(first)["FailedAndUnresolvableNodes"]
    assert fits and failed_before
    # Fill one node that fitted: it now fails (a new failed entry); the map must not be the cached one.
    slot = demo_state.table.slot_of[fits[0]]
    free = demo_state.table.free(slot)
    demo_state.apply_pod(
        "ADDED",
        make_pod("default", "filler", fits[0], f"{free['cpu']}m", str(free["memory"]), free.get("nvidia.com/gpu", 0)),
    )
    second = berth.filter_body(body)
    assert second == fresh_reply(body) != first
    reply = orjson.loads(second)
    assert fits[0] not in reply["NodeNames"] and fits[0] in reply["FailedNodes"]
    assert berth.names.hits >= 2


def test_prioritize_after_filter_finds_the_survivors_mapped(go: GoWire, demo_state: ClusterState) -> None:
    """kube-scheduler sends prioritize the NodeNames filter returned, in order: that list is already
    mapped (a names-cache hit), and the scores equal a fresh server's."""
    from scheduler.extender.server import Berth
    from scheduler.observability.metrics import Metrics
    from scheduler.policy.binder import Binder

    berth = Berth(demo_state, Metrics(), Binder(demo_state, None, None)).verbs
    reply = orjson.loads(berth.filter_body(go.args(go.pod(), go.names())))
    survivors = reply["NodeNames"]
    assert survivors and reply["FailedNodes"] | reply["FailedAndUnresolvableNodes"], "a partial reply"
    hits = berth.names.hits
    body = go.args(go.pod(), survivors)
    scores = berth.prioritize_body(body)
    assert berth.names.hits == hits + 1
    fresh = Berth(demo_state, Metrics(), Binder(demo_state, None, None)).verbs
    assert scores == fresh.prioritize_body(body)
    assert [h["Host"] for h in orjson.loads(scores)] == survivors
    # A list that differs by one name is not taken for the survivors.
    other = go.args(go.pod(), survivors[:-1])
    assert berth.prioritize_body(other) == fresh.prioritize_body(other)
