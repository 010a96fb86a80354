"""`make bench-ui`: the dashboard at scale, in the same headless Chromium the browser tests use.

Serves `berth serve --demo --demo-nodes N` and measures
- page weight: the bytes of index.html, app.js and app.css as served;
- JSON per refresh: the map with its layout (first load), a refresh without it, an unchanged refresh
  (a 304), after a change, and the teams and queue views; raw and gzip (what the browser is sent);
- the server's cost of a refresh: building the map view and its fingerprint, in-process, same cluster;
- render time in Chromium: from navigation to the first drawn map, then the layout-and-draw and the
  draw alone (the page's own performance.now()), and a team filter's redraw.

A benchmark, not a test: numbers, no thresholds. `--markdown FILE` writes the table there too.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from loadtests.browser import chromium, missing

REPO = Path(__file__).resolve().parent.parent


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@contextmanager
def served(nodes: int, port: int) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "serve", "--demo", "--demo-nodes", str(nodes), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"berth exited with {proc.returncode}")
            try:
                if fetch(url + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("berth did not become ready in 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def weights(url: str) -> list[tuple[str, int, int]]:
    """(what, raw bytes, bytes on the wire) of the page's files and of each JSON view."""
    rows = []
    for path in ("/ui", "/ui/app.js", "/ui/app.css"):
        _, body, _ = fetch(url + path)
        rows.append((f"page `{path}`", len(body), len(body)))  # served as is
    gz = {"Accept-Encoding": "gzip"}
    _, first, h = fetch(url + "/ui/api/map", gz)
    raw = gzip.decompress(first) if h.get("Content-Encoding") == "gzip" else first
    key = orjson.loads(raw)["layoutKey"]
    rows.append(("map, first load (with layout)", len(raw), len(first)))
    _, light, h2 = fetch(url + f"/ui/api/map?layout={key}", gz)
    rows.append(("map refresh (layout cached)", len(gzip.decompress(light)), len(light)))
    status, body, _ = fetch(url + f"/ui/api/map?layout={key}", {**gz, "If-None-Match": h2["ETag"]})
    rows.append((f"map refresh, nothing changed ({status})", len(body), len(body)))
    for path in ("/ui/api/teams", "/ui/api/queue", "/debug/nodes"):
        _, body, _ = fetch(url + path)
        rows.append((f"`{path}`" + (" (for comparison)" if path == "/debug/nodes" else ""), len(body), len(body)))
    return rows


def server_cost(nodes: int, repeat: int = 10) -> dict[str, float]:
    """Milliseconds (median) of the server's part of a refresh, in-process on a demo cluster of `nodes`:
    the fingerprint every poll computes, and the map view built afresh and by the dashboard's kept
    MapBuilder after one pod was bound (what a refresh of a cluster where a pod moved costs)."""
    from scheduler.cluster.state import ClusterState
    from scheduler.config import Config
    from scheduler.demo import make_pod, populate
    from scheduler.ui.views import MapBuilder, map_fingerprint

    state = ClusterState(Config())
    populate(state, nodes, 42)
    kept = MapBuilder(state)
    kept.view(True)
    names = sorted(state.table.slot_of)
    cases = {
        "fingerprint (every poll)": lambda: map_fingerprint(state),
        "map view built afresh, with layout (first load)": lambda: orjson.dumps(MapBuilder(state).view(True)),
        "map view built afresh, no layout": lambda: orjson.dumps(MapBuilder(state).view(False)),
        "map view by the kept builder, one pod bound since (a refresh)": lambda: orjson.dumps(kept.view(False)),
    }
    out: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(repeat):
        state.apply_pod("ADDED", make_pod("training", f"bench-{r}", names[r * 7 % len(names)], "1", "1Gi", 0))
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in out.items()}


def render(url: str, repeat: int) -> dict[str, Any]:
    with chromium(viewport=(1600, 1000)) as ctx:
        page = ctx.new_page()
        t0 = time.perf_counter()
        page.goto(url + "/ui")
        page.wait_for_function("() => window.berth && berth.renders > 0", timeout=120_000)
        first = (time.perf_counter() - t0) * 1000
        drawn = page.evaluate("berth.drawn")
        relayout = [page.evaluate("berth.redraw(true)") for _ in range(repeat)]
        draw = [page.evaluate("berth.redraw(false)") for _ in range(repeat)]
        page.select_option("#team-filter", "training")
        page.wait_for_function("() => document.getElementById('map').dataset.filter === 'training'")
        filtered = [page.evaluate("berth.redraw(true)") for _ in range(repeat)]
        ua = page.evaluate("navigator.userAgent")
    return {
        "first": first,
        "drawn": drawn,
        "relayout": relayout,
        "draw": draw,
        "filtered": filtered,
        "browser": ua.split(") ")[-1],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=7500)
    ap.add_argument("--port", type=int, default=18931)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    why = missing()
    if why:
        print(f"bench-ui: {why}", file=sys.stderr)
        return 2
    cost = server_cost(args.nodes, args.repeat)
    with served(args.nodes, args.port) as url:
        sizes = weights(url)
        r = render(url, args.repeat)
    load = os.getloadavg()
    lines = [
        f"# The dashboard at {args.nodes:,} nodes — `make bench-ui`",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {r['browser']} headless (Debian's), load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end (the machine was shared: read times as such).",
        "",
        "| what | bytes | on the wire (gzip) |",
        "|---|---:|---:|",
        *(f"| {what} | {raw:,} | {wire:,} |" for what, raw, wire in sizes),
        "",
        f"| render in Chromium ({args.repeat} runs each, median / max ms) | ms |",
        "|---|---:|",
        f"| navigation to the first drawn map ({r['drawn']:,} tiles drawn; one run) | {r['first']:.0f} |",
        f"| lay out and draw every node | {_ms(r['relayout'])} |",
        f"| draw only (a refresh: the layout is kept) | {_ms(r['draw'])} |",
        f"| lay out and draw with the team filter `training` | {_ms(r['filtered'])} |",
        "",
        f"| server, per refresh (in-process, median of {args.repeat}) | ms |",
        "|---|---:|",
        *(f"| {k} | {v:.2f} |" for k, v in cost.items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} / {max(xs):.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
