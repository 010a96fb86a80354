"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against `berth serve --demo`
with 1,000 nodes: the map draws every node, a team filter leaves only that team's GPUs, a pod bound
through the verbs shows on the open page within 2 s, explain lists the reasons, and the teams and
queue views fill in. Screenshots go to test-artifacts/ui/ (BERTH_TEST_ARTIFACTS moves it)."""

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtests.browser import chromium, missing
from scheduler.demo import make_pod
from scheduler.ui.views import TEAM_CODES
from tests.test_demo import ROOT, get, serving

# Predicates are functions, never expression strings: the page's CSP forbids eval, which Playwright would need.
pytestmark = [pytest.mark.ui, pytest.mark.skipif(missing() is not None, reason=missing() or "")]
NODES = 1000
ARTIFACTS = Path(os.environ.get("BERTH_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "ui"
# What app.js paints each team with (its PALETTE), to find them among the canvas' pixels.
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#e15759", "#76b7b2"]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    for port in serving("--demo-nodes", str(NODES)):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as ctx:
        yield ctx


@pytest.fixture
def page(browser: Any, url: str) -> Iterator[Any]:
    p = browser.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    p.close()
    assert not errors, f"the page threw: {errors}"


def api(url: str, path: str) -> Any:
    status, body = get(url + path)
    assert status == 200, (path, body)
    return orjson.loads(body)


def post(url: str, path: str, body: Any) -> Any:
    import urllib.request

    req = urllib.request.Request(url + path, data=orjson.dumps(body), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return orjson.loads(r.read())


def open_map(page: Any, url: str, path: str = "/ui") -> None:
    page.goto(url + path)
    page.wait_for_function("() => window.berth && berth.renders > 0 && berth.layout !== null", timeout=30_000)


def team_cells(m: dict[str, Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for row in m["cells"]:
        for ch in row:
            if ch in TEAM_CODES[: len(m["teams"])]:
                out[m["teams"][TEAM_CODES.index(ch)]] += 1
    return out


def pixels_of(page: Any, colors: list[str]) -> list[int]:
    """How many canvas pixels are exactly each colour."""
    return page.evaluate(
        """(colors) => {
            const c = document.getElementById('map');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const want = colors.map(h => [1, 3, 5].map(k => parseInt(h.slice(k, k + 2), 16)));
            const n = want.map(() => 0);
            for (let p = 0; p < d.length; p += 4)
                want.forEach((w, k) => { if (d[p] === w[0] && d[p + 1] === w[1] && d[p + 2] === w[2]) n[k]++; });
            return n;
        }""",
        colors,
    )


def test_the_map_draws_every_node(page: Any, url: str) -> None:
    open_map(page, url, "/")  # a browser at / is sent to the dashboard
    assert page.url == url + "/ui"
    nodes = api(url, "/debug/state")["nodes"]
    assert nodes == NODES
    assert page.evaluate("berth.drawn") == nodes
    assert page.get_attribute("#map", "data-drawn-tiles") == str(nodes)
    m = api(url, "/ui/api/map")
    assert page.evaluate("berth.drawnCells") == dict(team_cells(m))
    painted = pixels_of(page, PALETTE[: len(m["teams"])])
    held = team_cells(m)
    for team, n in zip(m["teams"], painted, strict=False):
        assert (n > 0) == (held[team] > 0), f"{team}: {held[team]} GPUs held, {n} pixels of its colour"
    page.screenshot(path=str(ARTIFACTS / "map.png"))


def test_a_team_filter_shows_only_its_gpus(page: Any, url: str) -> None:
    open_map(page, url)
    m = api(url, "/ui/api/map")
    team = "training"
    k = m["teams"].index(team)
    page.select_option("#team-filter", team)
    page.wait_for_function("(t) => document.getElementById('map').dataset.filter === t", arg=team)
    assert page.evaluate("berth.drawnCells") == {team: team_cells(m)[team]}
    pools = set(m["teamPools"][team])
    code = TEAM_CODES[k]
    expect = sum(
        1
        for i, _ in enumerate(m["layout"]["names"])
        if m["pools"][m["layout"]["pool"][i]] in pools or code in m["cells"][i]
    )
    assert page.evaluate("berth.drawn") == expect < NODES
    painted = pixels_of(page, PALETTE[: len(m["teams"])])
    assert painted[k] > 0
    assert all(n == 0 for j, n in enumerate(painted) if j != k), f"other teams' colours on the canvas: {painted}"
    page.screenshot(path=str(ARTIFACTS / "map-filter-training.png"))


def test_a_bound_pod_appears_within_two_seconds(page: Any, url: str) -> None:
    open_map(page, url)
    m = api(url, "/ui/api/map")
    team = "training"
    code = TEAM_CODES[m["teams"].index(team)]
    names = m["layout"]["names"]
    i = next(
        i for i, n in enumerate(names) if m["pools"][m["layout"]["pool"][i]] == "h100" and m["cells"][i].count(".") >= 2
    )
    node = names[i]
    before = page.evaluate("(n) => berth.nodeCells(n)", node).count(code)
    pod = make_pod(team, "ui-bound", None, "1", "4Gi", 2)
    reply = post(url, "/scheduler/filter", {"Pod": pod, "Nodes": None, "NodeNames": [node]})
    assert reply["NodeNames"] == [node], reply
    meta = pod["metadata"]
    bound = post(
        url,
        "/scheduler/bind",
        {"PodName": meta["name"], "PodNamespace": team, "PodUID": meta["uid"], "Node": node},
    )
    assert bound == {"Error": ""}
    t0 = time.monotonic()
    page.wait_for_function(
        "([n, c, k]) => berth.nodeCells(n).split(c).length - 1 === k",
        arg=[node, code, before + 2],
        timeout=2_000,
    )
    print(f"bound pod on the page after {time.monotonic() - t0:.2f} s")
    # Hover names the node; a click lists its pods, the new one among them.
    box = page.locator("#map").bounding_box()
    x, y = page.evaluate("(i) => [berth.tiles.x[i] + 4, berth.tiles.y[i] + 4]", i)
    page.locator("#map").scroll_into_view_if_needed()
    page.evaluate("([x, y]) => document.getElementById('map-scroll').scrollTo(0, Math.max(0, y - 100))", [x, y])
    box = page.locator("#map").bounding_box()
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_function("(n) => document.getElementById('tooltip').textContent.startsWith(n)", arg=node)
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_function(
        "(p) => [...document.querySelectorAll('#node-pods tbody td')].some(td => td.textContent === p)",
        arg=f"{team}/ui-bound",
    )
    assert page.text_content("#node-name") == node
    page.screenshot(path=str(ARTIFACTS / "map-node.png"))


def test_explain_lists_the_reasons(page: Any, url: str) -> None:
    names = api(url, "/ui/api/map")["layout"]["names"]
    pod = make_pod("ml-research", "ui-explain", None, "2", "8Gi", 2)
    post(url, "/scheduler/filter", {"Pod": pod, "Nodes": None, "NodeNames": names})
    page.goto(url + "/ui#explain?namespace=ml-research&pod=ui-explain")
    page.wait_for_function("() => document.querySelectorAll('#explain-table tbody tr').length > 0", timeout=30_000)
    want = api(url, "/debug/explain?namespace=ml-research&pod=ui-explain")
    rows = page.eval_on_selector_all(
        "#explain-table tbody tr[data-node]",
        "rs => rs.map(r => [r.dataset.node, r.className, r.lastElementChild.textContent])",
    )
    shown = want["nodes"][: len(rows)]
    assert len(rows) == min(500, len(want["nodes"]))
    assert [r[0] for r in rows] == [n["node"] for n in shown]
    reasons = {n["reason"] for n in shown if not n["fits"]}
    assert len(reasons) >= 2 and {r[2] for r in rows if r[1] == "nofit"} == reasons
    winner = next(n["node"] for n in want["nodes"] if n["fits"])
    assert [r[0] for r in rows if r[1] == "winner"] == [winner]
    page.click("#explain-table th:text-is('node')")  # sortable: by node name
    first = sorted(n["node"] for n in want["nodes"])[0]
    page.wait_for_function("(n) => document.querySelector('#explain-table tbody tr').dataset.node === n", arg=first)
    page.screenshot(path=str(ARTIFACTS / "explain.png"))


def test_teams_and_queue(page: Any, url: str) -> None:
    teams = api(url, "/ui/api/teams")["teams"]
    page.goto(url + "/ui#teams")
    page.wait_for_function("(n) => document.querySelectorAll('.team').length === n", arg=len(teams), timeout=30_000)
    for t in teams:
        card = page.locator(f".team[data-team='{t['team']}']")
        assert card.locator(".bar-row").count() == len(t["resources"]) > 0
        limited = [r for r in t["resources"] if r["guaranteed"] is not None or r["max"] is not None]
        assert card.locator(".bar").count() == len(limited), "a bar for each resource with a quota"
    cohorts = page.eval_on_selector_all(".cohort > h2", "hs => hs.map(h => h.textContent)")
    assert "cohort gpu-shared" in cohorts
    page.screenshot(path=str(ARTIFACTS / "teams.png"))
    pod = make_pod("inference", "ui-waits", None, "1", "1Gi", 64)  # more GPUs than any node has
    post(url, "/scheduler/filter", {"Pod": pod, "Nodes": None, "NodeNames": api(url, "/ui/api/map")["layout"]["names"]})
    page.goto(url + "/ui#queue")
    page.wait_for_function(
        "(p) => [...document.querySelectorAll('#waiting tbody tr')].some(r => r.cells[0].textContent === p)",
        arg="inference/ui-waits",
        timeout=30_000,
    )
    row = page.locator("#waiting tbody tr", has_text="inference/ui-waits")
    assert "nvidia.com/gpu" in row.locator("td").nth(5).text_content()
    page.screenshot(path=str(ARTIFACTS / "queue.png"))
