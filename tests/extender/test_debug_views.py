"""The views a person reads by hand: `GET /` lists the endpoints, `/debug/nodes` narrows by pool, team and
count, and the demo (which no watch feeds) does not look stale."""

import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import TEAMS
from scheduler.extender.server import Berth
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder
from tests.conftest import demo_cluster


def served(state: ClusterState, verbs: bool = True) -> TestClient:
    return TestClient(TestServer(Berth(state, Metrics(), Binder(state, None, None)).app(verbs)))


@pytest.mark.parametrize("verbs", [True, False])
async def test_root_lists_exactly_the_routes_served(verbs: bool) -> None:
    state = demo_cluster(nodes=20)
    async with served(state, verbs) as c:
        r = await c.get("/")
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
        out = await r.json()
        routes = {
            f"{route.method} {route.resource.canonical}"
            for route in c.server.app.router.routes()  # type: ignore[attr-defined]
            if route.method not in ("HEAD",) and route.resource is not None and route.resource.canonical != "/"
        }
        routes = {r.replace("* /debug/explain", "GET /debug/explain") for r in routes}
        if verbs:
            routes.add("POST /debug/explain")  # the one route that takes both methods
        assert set(out["endpoints"]) == routes
        assert out["mode"] == "demo cluster" and all(out["endpoints"].values())
        for endpoint in out["endpoints"]:
            method, path = endpoint.split()
            if method == "GET" and path not in ("/debug/explain", "/ui/api/node") and "{" not in path:
                assert (await c.get(path)).status == 200, endpoint


async def test_debug_nodes_by_pool_team_and_limit() -> None:
    state = demo_cluster(nodes=200)
    async with served(state) as c:
        everything = await (await c.get("/debug/nodes")).json()
        assert everything["count"] == everything["returned"] == 200 == len(everything["nodes"])
        a100 = await (await c.get("/debug/nodes?pool=a100")).json()
        assert a100["count"] > 0 and {n["pool"] for n in a100["nodes"]} == {"a100"}
        for team in TEAMS:
            out = await (await c.get(f"/debug/nodes?team={team['name']}")).json()
            assert {n["pool"] for n in out["nodes"]} == set(team["pools"]), team["name"]
            assert out["count"] == sum(1 for n in everything["nodes"] if n["pool"] in team["pools"])
        both = await (await c.get("/debug/nodes?team=ml-research&pool=a100-pcie&limit=3")).json()
        assert both["returned"] == 3 and both["count"] > 3 and {n["pool"] for n in both["nodes"]} == {"a100-pcie"}
        none = await (await c.get("/debug/nodes?team=training&pool=a100")).json()
        assert none == {"count": 0, "returned": 0, "nodes": []}, "a pool the team may not use"
        names = [n["name"] for n in everything["nodes"]]
        assert [n["name"] for n in (await (await c.get("/debug/nodes?limit=5")).json())["nodes"]] == names[:5]
        bad = await c.get("/debug/nodes?limit=many")
        assert bad.status == 400 and "limit" in (await bad.json())["error"]
        ghost = await c.get("/debug/nodes?team=ghosts")
        assert ghost.status == 404 and "ml-research" in (await ghost.json())["error"], "names the teams there are"


async def test_demo_staleness_does_not_grow() -> None:
    state = demo_cluster(nodes=10)
    state.last_event -= 3600  # as if an hour had passed since the demo was generated
    async with served(state) as c:
        summary = await (await c.get("/debug/state")).json()
        metrics = (await (await c.get("/metrics")).read()).decode()
    assert summary["stalenessSeconds"] is None and summary["watched"] is False
    assert "berth_cache_staleness_seconds 0.0" in metrics.splitlines()


def test_a_watched_state_still_goes_stale() -> None:
    state = ClusterState(Config())
    assert state.staleness() == float("inf"), "nothing heard yet"
    state.mark_synced("nodes")
    state.last_event = time.monotonic() - 90
    assert 89 < state.staleness() < 100 and state.summary()["stalenessSeconds"] > 89


async def test_explain_of_an_unknown_pod_says_how_to_send_it() -> None:
    async with served(demo_cluster(nodes=10)) as c:
        r = await c.get("/debug/explain?namespace=ml-research&pod=nope")
        assert r.status == 404
        error = (await r.json())["error"]
    assert "ml-research/nope not found among the pods sent to filter" in error
    assert "POST the Pod to /debug/explain" in error and "berth explain -f pod.yaml" in error
