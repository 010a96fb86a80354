"""The dashboard's JSON views and routes (scheduler/ui/), against the seeded demo cluster, through the
aiohttp app Berth serves. The browser tests (test_browser.py) drive the page itself."""

from collections import Counter

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from scheduler.admission.loop import AdmissionLoop
from scheduler.cluster.objects import container, node, pod, resources
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import TEAMS, make_pod
from scheduler.extender.server import Berth
from scheduler.model.binding import BindingArgs
from scheduler.model.podspec import pod_ask
from scheduler.observability.metrics import Metrics
from scheduler.observability.showback import team_rows
from scheduler.policy.binder import Binder
from scheduler.ui.views import CORDONED, FRAGMENTED, STRANDED, TEAM_CODES, GpuHours, map_view, queue_view
from tests.admission.helpers import add_gang, gang_state
from tests.cluster.test_sharing_ledger import shared_pod
from tests.conftest import demo_cluster
from tests.kernels.test_sharing_kernels import node as sharing_node


def served(state: ClusterState) -> TestClient:
    return TestClient(TestServer(Berth(state, Metrics(), Binder(state, None, None)).app()))


def held_by_team(state: ClusterState) -> Counter[str]:
    """Whole GPUs each team holds, counted from the ledger (not from the view)."""
    out: Counter[str] = Counter()
    for e in state.ledger:
        if e.gpu_ids and not e.gpu_milli:
            out[e.team or "-"] += e.gpu_ids.bit_count()
    return out


def test_map_has_every_node_and_each_gpu_by_team() -> None:
    state = demo_cluster(nodes=300)
    out = map_view(state)
    assert out["count"] == 300 == len(out["cells"]) == len(out["layout"]["names"])
    assert set(out["layout"]["names"]) == set(state.table.slot_of)
    seen: Counter[str] = Counter()
    for i, name in enumerate(out["layout"]["names"]):
        slot = state.table.slot_of[name]
        assert len(out["cells"][i]) == state.table.alloc_gpu[slot] == out["layout"]["gpus"][i]
        for ch in out["cells"][i]:
            if ch in TEAM_CODES:
                seen[out["teams"][TEAM_CODES.index(ch)]] += 1
    assert seen == held_by_team(state) and sum(seen.values()) > 0
    assert out["stats"]["gpus"] == sum(state.table.alloc_gpu[s] for s in state.table.slot_of.values())
    free = sum(state.table.free_gpus(s).bit_count() for s in state.table.slot_of.values())
    assert out["stats"]["free"] == free


def test_map_groups_by_pool_and_model() -> None:
    state = demo_cluster(nodes=200)
    lay = map_view(state)["layout"]
    keys = list(zip(lay["pool"], lay["model"], strict=True))
    groups = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    assert len(groups) == len(set(groups)), "each pool and model is one run of tiles"
    shapes = {tuple(map(tuple, lay["shapes"][s])) for s in lay["islands"]}
    assert ((0, 1, 2, 3), (4, 5, 6, 7)) in shapes, "the a100-pcie islands"


def test_stranded_fragmented_and_cordoned_nodes() -> None:
    state = ClusterState(Config())
    alloc = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "8"}
    for name in ("full-cpu", "half", "idle", "cordoned"):
        obj = node(name, alloc, pool="p", gpu_model="A100")
        if name == "cordoned":
            obj["spec"] = {"unschedulable": True}
        state.apply_node("ADDED", obj)
    hog = pod("hog", [container("m", "x", resources("16", "1Gi", 1))], namespace="a", node_name="full-cpu", uid="u1")
    half = pod("h", [container("m", "x", resources("1", "1Gi", 4))], namespace="a", node_name="half", uid="u2")
    state.apply_pod("ADDED", hog)
    state.apply_pod("ADDED", half)
    out = map_view(state)
    flags = dict(zip(out["layout"]["names"], out["flags"], strict=True))
    assert flags["full-cpu"] & STRANDED, "7 free GPUs and no CPU left"
    assert flags["half"] == FRAGMENTED
    assert flags["idle"] == 0
    assert flags["cordoned"] & CORDONED and flags["cordoned"] & STRANDED
    assert out["stats"]["stranded"] == 7 + 8 and out["stats"]["fragmented"] == 4 and out["stats"]["idleNodes"] == 1


def test_shared_gpus_show_their_fractions() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", sharing_node("n", gpus=2, replicas=4))
    for name in ("s1", "s2"):
        ask = pod_ask(shared_pod(name, gpu=1))  # one replica of four: a quarter of a GPU
        Binder(state, None, None).reserve(ask, BindingArgs(ask.name, ask.namespace, ask.uid, "n"))
    out = map_view(state)
    (cells,) = out["cells"]
    assert sorted(cells) == [".", "~"]
    g = str(cells.index("~"))
    assert out["shared"] == {"0": {g: [[None, 250, "ns/s1"], [None, 250, "ns/s2"]]}}
    assert out["stats"]["shared"] == 1 and out["stats"]["free"] == 1


async def test_map_is_cached_until_the_cluster_changes() -> None:
    state = demo_cluster(nodes=100)
    async with served(state) as c:
        r = await c.get("/ui/api/map")
        assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
        first = await r.json()
        key, etag = first["layoutKey"], r.headers["ETag"]
        again = await c.get("/ui/api/map", headers={"If-None-Match": etag})
        assert again.status == 304
        light = await c.get(f"/ui/api/map?layout={key}")
        body = await light.json()
        assert "layout" not in body and body["cells"] == first["cells"]
        free = next(n for i, n in enumerate(first["layout"]["names"]) if first["cells"][i].count(".") >= 2)
        state.apply_pod("ADDED", make_pod("training", "new", free, "1", "1Gi", 2))
        changed = await c.get(f"/ui/api/map?layout={key}", headers={"If-None-Match": light.headers["ETag"]})
        assert changed.status == 200
        i = first["layout"]["names"].index(free)
        after = (await changed.json())["cells"][i]
        code = TEAM_CODES[first["teams"].index("training")]
        assert after.count(code) == first["cells"][i].count(code) + 2


async def test_node_view_lists_its_pods_and_refuses_bad_input() -> None:
    state = demo_cluster(nodes=100)
    busy = next(n for n, keys in state.ledger.by_node.items() if keys)
    async with served(state) as c:
        out = await (await c.get(f"/ui/api/node?name={busy}")).json()
        assert out["node"]["name"] == busy
        assert {p["pod"] for p in out["pods"]} == state.ledger.by_node[busy]
        r = await c.get("/ui/api/node")
        assert r.status == 400 and "name" in (await r.json())["error"]
        r = await c.get("/ui/api/node?name=nope")
        assert r.status == 404 and "nope" in (await r.json())["error"]


async def test_teams_match_the_quota_book() -> None:
    state = demo_cluster(nodes=200)
    async with served(state) as c:
        out = await (await c.get("/ui/api/teams?window=3600")).json()
        assert [t["team"] for t in out["teams"]] == sorted(t["name"] for t in TEAMS)
        rows = {r["team"]: r for r in team_rows(state)}
        for t in out["teams"]:
            assert t["cohort"] == rows[t["team"]]["cohort"]
            for res in t["resources"]:
                lim = rows[t["team"]]["limits"].get(res["resource"])
                if lim is not None:
                    assert res["guaranteed"] == float(lim["guaranteed"])
        training = next(t for t in out["teams"] if t["team"] == "training")
        gpu = next(r for r in training["resources"] if r["resource"] == "nvidia.com/gpu")
        assert gpu["used"] == held_by_team(state)["training"] and gpu["unit"] == "GPUs"
        for bad in ("x", "0", "-5", "99999999"):
            r = await c.get(f"/ui/api/teams?window={bad}")
            assert r.status == 400 and "window" in (await r.json())["error"]


def test_gpu_hours_integrate_what_is_held() -> None:
    state = demo_cluster(nodes=100)
    hours = GpuHours()
    held = held_by_team(state)
    t0 = 1_800_000_000.0
    hours.sample(state, t0)
    hours.sample(state, t0 + 1800)  # half an hour later
    got = hours.total(3600, now=t0 + 1800)
    assert got["training"] == pytest.approx(held["training"] * 0.5)
    assert hours.total(60, now=t0 + 7200) == {}, "nothing held in a window after the samples"


async def test_queue_lists_waiting_pods_with_a_reason_until_bound() -> None:
    state = demo_cluster(nodes=100)
    waiting = make_pod("training", "waits", None, "1", "1Gi", 1)
    fat = make_pod("training", "fat", None, "1", "1Gi", 64)
    async with served(state) as c:
        for p in (waiting, fat):
            body = orjson.dumps({"Pod": p, "Nodes": None, "NodeNames": list(state.table.slot_of)})
            assert (await c.post("/scheduler/filter", data=body)).status == 200
        out = await (await c.get("/ui/api/queue")).json()
        rows = {r["pod"]: r for r in out["waiting"]}
        assert set(rows) == {"training/waits", "training/fat"}
        assert rows["training/waits"]["fits"] > 0 and rows["training/waits"]["team"] == "training"
        assert rows["training/fat"]["fits"] == 0 and "nvidia.com/gpu" in rows["training/fat"]["reason"]
        node_name = next(iter(state.table.slot_of))
        state.apply_pod("ADDED", make_pod("training", "waits", node_name, "1", "1Gi", 0))
        out = await (await c.get("/ui/api/queue")).json()
        assert [r["pod"] for r in out["waiting"]] == ["training/fat"]


async def test_queue_orders_gangs_as_the_admission_loop_does() -> None:
    state = gang_state()
    add_gang(state, "late", 2, created="2026-01-01T00:00:09Z")
    add_gang(state, "early", 2, created="2026-01-01T00:00:01Z")
    loop = AdmissionLoop(state, None, lambda: True)
    await loop.tick()
    view = queue_view(state, {})
    assert [g["gang"] for g in view["gangs"]] == [g["gang"] for g in loop.view()["gangs"]] == ["ml/early", "ml/late"]
    for mine, theirs in zip(view["gangs"], loop.view()["gangs"], strict=True):
        assert (mine["phase"], mine["reason"], mine["plan"]) == (theirs["phase"], theirs["reason"], theirs["plan"])
    assert view["admission"] is True


async def test_root_sends_browsers_to_the_dashboard_and_tools_to_the_list() -> None:
    state = demo_cluster(nodes=20)
    async with served(state) as c:
        r = await c.get("/", headers={"Accept": "text/html,application/xhtml+xml"}, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/ui"
        for headers in ({}, {"Accept": "application/json"}):
            r = await c.get("/", headers=headers)
            assert r.status == 200 and "GET /ui" in (await r.json())["endpoints"]
        assert (await (await c.get("/debug")).json())["endpoints"] == (await (await c.get("/")).json())["endpoints"]


async def test_page_files_are_served_with_a_strict_policy() -> None:
    state = demo_cluster(nodes=20)
    async with served(state) as c:
        for path, kind in (("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")):
            r = await c.get(path)
            assert r.status == 200 and r.headers["Content-Type"].startswith(kind), path
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        page = await (await c.get("/ui")).text()
        assert '<canvas id="map">' in page and "/ui/app.js" in page
        r = await c.get("/ui/secrets.txt")
        assert r.status == 404 and "app.js" in (await r.json())["error"]
        r = await c.get("/ui/..%2Fapp.py")
        assert r.status == 404


async def test_dashboard_is_not_on_the_health_only_port() -> None:
    """With TLS the plain port serves health and metrics only; the dashboard needs the verbs' port
    (and its client certificate), like /debug."""
    state = demo_cluster(nodes=20)
    berth = Berth(state, Metrics(), Binder(state, None, None))
    async with TestClient(TestServer(berth.app(verbs=False))) as c:
        assert (await c.get("/ui")).status == 404
        assert (await c.get("/ui/api/map")).status == 404
        r = await c.get("/", headers={"Accept": "text/html"}, allow_redirects=False)
        assert r.status == 200 and "GET /ui" not in (await r.json())["endpoints"]


async def test_served_through_berths_own_listener(serve) -> None:  # type: ignore[no-untyped-def]
    """The verbs' port (verbs_http.py hands anything but a verb POST to aiohttp) serves the dashboard."""
    state = demo_cluster(nodes=50)
    c = await serve(state)
    page = await c.get("/ui")
    assert page.status == 200 and "<canvas" in await page.text()
    r = await c.get("/ui/api/map")
    assert r.status == 200 and (await r.json())["count"] == 50
    again = await c.get("/ui/api/map", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status == 304
