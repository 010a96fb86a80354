"""`/debug/explain`: per-node verdicts and score parts for a pod, and `berth explain` against it."""

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import make_node, make_pod
from scheduler.extender.server import Berth
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    state = ClusterState(Config())
    now = "2030-01-01T00:00:00Z"
    state.apply_node(
        "ADDED",
        make_node("half", "shared", 32, 128, 8, "NVIDIA-A100-SXM4-80GB", [[0, 1, 2, 3], [4, 5, 6, 7]], None, now, "z1"),
    )
    state.apply_node(
        "ADDED",
        make_node("empty", "shared", 32, 128, 8, "NVIDIA-A100-SXM4-80GB", [[0, 1, 2, 3, 4, 5, 6, 7]], None, now, "z1"),
    )
    state.apply_node("ADDED", make_node("cpu", "shared", 32, 128, 0, None, None, None, now, "z1"))
    state.apply_pod("ADDED", make_pod("default", "held", "half", "1", "1Gi", 2, {"berth.dev/gpu-ids": "0,1"}))
    for kind in ("nodes", "pods"):
        state.mark_synced(kind)
    c = TestClient(TestServer(Berth(state, Metrics(), Binder(state, None, None)).app()))
    await c.start_server()
    yield c
    await c.close()


async def test_explain_shows_verdicts_and_parts(client: TestClient) -> None:
    pod = make_pod("default", "pair", None, "1", "1Gi", 2)
    r = await client.post("/debug/explain", data=orjson.dumps(pod))
    assert r.status == 200
    out = await r.json()
    rows = {row["node"]: row for row in out["nodes"]}
    assert out["request"]["nvidia.com/gpu"] == 2
    assert out["nodes"][0]["node"] == "half", "best node first"
    assert rows["half"]["parts"]["topology"] == 10.0 and rows["half"]["parts"]["gpu_packing"] == 5.0
    assert rows["empty"]["parts"]["gpu_packing"] == 0.0
    assert rows["half"]["score"] > rows["empty"]["score"]
    assert rows["cpu"]["fits"] is False and "nvidia.com/gpu" in rows["cpu"]["reason"]


async def test_explain_by_name_needs_a_pod(client: TestClient) -> None:
    r = await client.get("/debug/explain")
    assert r.status == 400
    r = await client.get("/debug/explain?namespace=default&pod=nope")
    assert r.status == 404
    assert "nope" in (await r.json())["error"]


POD_YAML = b"""\
apiVersion: v1
kind: Pod
metadata:
  name: pair
  namespace: default
  creationTimestamp: "2030-01-01T00:00:00Z"
spec:
  containers:
  - name: main
    image: trainer:1
    resources:
      requests: {cpu: "1", memory: 1Gi, nvidia.com/gpu: "2"}
      limits: {nvidia.com/gpu: "2"}
"""


async def test_explain_accepts_yaml_as_kubectl_prints_it(client: TestClient) -> None:
    as_json = await client.post("/debug/explain", data=orjson.dumps(make_pod("default", "pair", None, "1", "1Gi", 2)))
    as_yaml = await client.post("/debug/explain", data=POD_YAML, headers={"Content-Type": "application/yaml"})
    assert as_yaml.status == 200, await as_yaml.text()
    out, expected = await as_yaml.json(), await as_json.json()
    assert out["request"]["nvidia.com/gpu"] == 2
    assert [r["node"] for r in out["nodes"]] == [r["node"] for r in expected["nodes"]] == ["half", "empty", "cpu"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "neither JSON nor YAML"),  # a YAML flow mapping left open
        (b"key: [unclosed", "neither JSON nor YAML"),
        (b"pod: \x80\x81", "neither JSON nor YAML"),  # not UTF-8
        (b"[1, 2, 3]", "expected a Pod object"),
        (b"just a string", "expected a Pod object"),
        (b"kind: Pod\nmetadata: {name: x}\n", "cannot be judged"),
        (b"metadata: {name: x}\nspec: {containers: 5}\n", "cannot be judged"),
    ],
)
async def test_explain_bad_body_is_400_with_a_reason(client: TestClient, body: bytes, words: str) -> None:
    r = await client.post("/debug/explain", data=body)
    assert r.status == 400, await r.text()
    assert r.headers["Content-Type"].startswith("application/json")
    assert words in (await r.json())["error"]
    assert (await client.post("/debug/explain", data=POD_YAML)).status == 200, "still serves afterwards"


async def test_explain_by_name_in_demo_reads_the_pods_the_verbs_saw(client: TestClient) -> None:
    pod = make_pod("default", "seen", None, "1", "1Gi", 2)
    args = {"Pod": pod, "Nodes": None, "NodeNames": ["half", "empty", "cpu"]}
    assert (await client.get("/debug/explain?namespace=default&pod=seen")).status == 404
    assert (await client.post("/scheduler/filter", data=orjson.dumps(args))).status == 200
    r = await client.get("/debug/explain?namespace=default&pod=seen&nodes=half,cpu")
    assert r.status == 200
    out = await r.json()
    assert out["request"]["nvidia.com/gpu"] == 2 and {row["node"] for row in out["nodes"]} == {"half", "cpu"}


async def test_debug_state_shows_the_informers_it_was_given() -> None:
    """The process hands its informers to the debug view; the state itself knows none."""

    class Feed:
        def __init__(self, resource: str, rv: str, lists: int, events: int) -> None:
            self.resource, self.rv, self.lists, self.events = resource, rv, lists, events

    state = ClusterState(Config())
    feeds = [Feed("nodes", "41", 1, 7), Feed("pods", "48250", 2, 0)]
    berth = Berth(state, Metrics(), Binder(state, None, None), informers=feeds)
    async with TestClient(TestServer(berth.app())) as c:
        out = await (await c.get("/debug/state")).json()
        assert out["informers"] == {
            "nodes": {"resourceVersion": "41", "lists": 1, "events": 7},
            "pods": {"resourceVersion": "48250", "lists": 2, "events": 0},
        }
        feeds[1].events = 3
        assert (await (await c.get("/debug/state")).json())["informers"]["pods"]["events"] == 3
    assert "informers" not in state.summary()


# -- a team at its quota, and a pod that is already bound -------------------------------------------


def team_cluster() -> ClusterState:
    """Team ml owns pool a100 (two 8-GPU nodes) with a max of 8 GPUs, all held by pod ml/big on a1."""
    state = ClusterState(Config())
    now = "2030-01-01T00:00:00Z"
    for name in ("a1", "a2"):
        node = make_node(name, "a100", 96, 1024, 8, "NVIDIA-A100-SXM4-80GB", [list(range(8))], None, now, "z1")
        state.apply_node("ADDED", node)
    state.apply_node("ADDED", make_node("c1", "shared", 32, 128, 0, None, None, None, now, "z1"))
    team = {"namespaces": ["ml"], "pools": ["a100"], "resources": {"nvidia.com/gpu": {"guaranteed": 8, "max": 8}}}
    state.apply_team("ADDED", {"metadata": {"name": "ml", "generation": 1}, "spec": team})
    state.apply_pod("ADDED", make_pod("ml", "big", "a1", "8", "64Gi", 8))
    for kind in ("nodes", "pods", "teamquotas"):
        state.mark_synced(kind)
    return state


def books(state: ClusterState) -> tuple[object, ...]:
    """Everything a hold touches: node arrays, device masks, pool usage, team usage, the ledger."""
    t, team = state.table, state.quotas.teams["ml"]
    pools = len(t.pools)  # the score path grows the pool arrays by a spare entry: compare the real ones
    arrays = (t.used_cpu, t.used_mem, t.used_gpu, t.used_pods, t.gpu_used, state.pools.used[:pools])
    ledger = {e.key: (e.node, e.gpu_ids, e.team, e.model) for e in state.ledger}
    held = (dict(team.used), team.pods, state.quotas.version, ledger)
    return (*(list(a) for a in arrays), list(state.pools.avail[:pools]), *held)


async def test_a_quota_refused_pod_gets_the_quota_sentence_on_every_node() -> None:
    """Not "pool a100 is not open to team ml" for the team's own pool: the quota is why, and filter says so too."""
    state = team_cluster()
    pod = make_pod("ml", "more", None, "1", "1Gi", 4)
    sentence = "berth: team ml: nvidia.com/gpu 8 used + 4 requested > max 8"
    async with TestClient(TestServer(Berth(state, Metrics(), Binder(state, None, None)).app())) as c:
        out = await (await c.post("/debug/explain", data=orjson.dumps(pod))).json()
        args = {"Pod": pod, "Nodes": None, "NodeNames": ["a1", "a2", "c1"]}
        filtered = await (await c.post("/scheduler/filter", data=orjson.dumps(args))).json()
    assert out["quota"] == sentence.removeprefix("berth: ")
    assert [(r["node"], r["fits"], r["reason"], r["unresolvable"]) for r in out["nodes"]] == [
        (n, False, sentence, True) for n in ("a1", "a2", "c1")
    ]
    assert filtered["FailedAndUnresolvableNodes"] == {n: sentence for n in ("a1", "a2", "c1")}


async def test_a_bound_pod_is_not_counted_against_itself() -> None:
    """ml/big holds all 8 GPUs of a1 and all of ml's quota; judged again, it fits where it is (its own
    hold lifted), and the books are exactly as before afterwards."""
    state = team_cluster()
    before = books(state)
    bound = make_pod("ml", "big", "a1", "8", "64Gi", 8)
    async with TestClient(TestServer(Berth(state, Metrics(), Binder(state, None, None)).app())) as c:
        r = await c.post("/debug/explain", data=orjson.dumps(bound))
        assert r.status == 200, await r.text()
        out = await r.json()
        other = await (
            await c.post("/debug/explain", data=orjson.dumps(make_pod("ml", "x", None, "8", "64Gi", 8)))
        ).json()
    rows = {row["node"]: row for row in out["nodes"]}
    assert out["quota"] is None and out["boundTo"] == "a1"
    assert rows["a1"]["fits"] and rows["a2"]["fits"], rows
    assert "not open to team ml" in rows["c1"]["reason"]
    assert books(state) == before, "the hold is back, to the last float"
    assert other["quota"] and other["boundTo"] is None, "another pod still sees ml/big's hold"


async def test_a_recreated_pod_of_the_same_name_is_judged_with_the_old_hold() -> None:
    state = team_cluster()
    newer = make_pod("ml", "big", None, "8", "64Gi", 8)
    newer["metadata"]["uid"] = "a-new-uid"
    async with TestClient(TestServer(Berth(state, Metrics(), Binder(state, None, None)).app())) as c:
        out = await (await c.post("/debug/explain", data=orjson.dumps(newer))).json()
    assert out["boundTo"] is None and out["quota"], "a different uid: not the pod that holds the GPUs"
