"""Smoke tests of the load-testing kit: the typical extender under locust, and bench's request bodies."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import yaml

from loadtests import objects, wrk
from loadtests.report import render
from loadtests.suite import build_bodies
from tests.fakes.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
LOADTESTS = ROOT / "loadtests"


def load_typical() -> ModuleType:
    spec = importlib.util.spec_from_file_location("typical_extender", LOADTESTS / "typical_extender.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited early"
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{url} not ready after {timeout} s")


@contextlib.contextmanager
def serving(argv: list[str], port: int) -> Iterator[str]:
    """Run a server on `port` until the block ends; yields its URL once /readyz answers."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def typical_extender() -> Iterator[str]:
    port = free_port()
    with serving(
        [sys.executable, str(LOADTESTS / "typical_extender.py"), "--synthetic", "600", "--port", str(port)], port
    ) as url:
        yield url


@pytest.fixture
def berth_demo() -> Iterator[str]:
    """`berth serve --demo`, the server the README's locust command targets."""
    port = free_port()
    with serving(
        [sys.executable, "-m", "scheduler", "serve", "--demo", "--demo-nodes", "2000", "--port", str(port)], port
    ) as url:
        yield url


def test_locust_scenario_runs_clean_against_berth(berth_demo: str, tmp_path: Path) -> None:
    rows = run_locust(berth_demo, tmp_path)
    # Unteamed "sandbox" pods fit nowhere in the demo: filters that leave no node are their own row.
    empty = rows["filter (no node fits)"]["num_requests"]
    assert 0 < empty < rows["filter"]["num_requests"], rows.keys()


def test_locust_sends_pods_of_every_demo_team() -> None:
    """Read in a process of its own: importing locust monkey-patches this one (gevent)."""
    from scheduler.demo import TEAMS

    code = "import sys, json; sys.path.insert(0, 'loadtests'); import locustfile as l; "
    code += "print(json.dumps([l.NAMESPACES, l.__doc__]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    namespaces, doc = orjson.loads(out.stdout.splitlines()[-1])
    assert {ns for ns, weight in namespaces if weight > 0} == {t["name"] for t in TEAMS} | {"sandbox"}
    assert "make bench" in doc, "the docstring points to the server's own latency"


def test_locust_scenario_runs_clean_against_typical_extender(typical_extender: str, tmp_path: Path) -> None:
    run_locust(typical_extender, tmp_path)


def run_locust(host: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """A short bounded headless run; every verb is exercised and nothing fails."""
    locust = Path(sys.executable).parent / "locust"
    argv = [
        str(locust),
        "-f",
        str(LOADTESTS / "locustfile.py"),
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "3s",
        "--only-summary",
        "--exit-code-on-error",
        "1",
        "--host",
        host,
        # The JSON file is written from the final stats at shutdown; the CSV only every second while the
        # run lasts, so on a busy machine it could miss a 3 s run's requests altogether.
        "--json-file",
        str(tmp_path / "run"),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {entry["name"]: entry for entry in orjson.loads((tmp_path / "run.json").read_bytes())}
    for verb in ("filter", "prioritize", "bind"):
        assert verb in rows and rows[verb]["num_requests"] > 0, rows.keys()
    assert sum(entry["num_failures"] for entry in rows.values()) == 0
    return rows


def sample_nodes(count: int) -> list[dict]:
    return list(load_typical().synthetic_nodes(count).values())


def test_bench_bodies_look_like_kube_scheduler_requests(tmp_path: Path) -> None:
    infos = sample_nodes(40)
    cases = [wrk.Case("filter", "names", 30), wrk.Case("filter", "nodelist", 20), wrk.Case("bind")]
    pod = objects.make_pod("llm-finetune-7b-x2k9q-0")
    bodies = build_bodies(infos, cases, tmp_path, pod, seed=1)

    raw = bodies.files[("names", 30)].read_bytes()
    args = orjson.loads(raw)
    assert list(args) == ["Pod", "Nodes", "NodeNames"]  # Go's field order and names
    assert b'"Nodes":null' in raw
    assert len(orjson.dumps(args["Pod"])) > 2048
    assert len(args["NodeNames"]) == 30 and set(args["NodeNames"]) <= {i["name"] for i in infos}
    assert args["Pod"]["status"]["phase"] == "Pending" and len(args["Pod"]["spec"]["containers"]) == 2

    listed = orjson.loads(bodies.files[("nodelist", 20)].read_bytes())
    assert listed["NodeNames"] is None and len(listed["Nodes"]["items"]) == 20
    node = listed["Nodes"]["items"][0]
    assert 3000 <= len(orjson.dumps(node)) <= 10_000
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == node["metadata"]["name"]
    assert len(node["status"]["images"]) == 10


def test_typical_extender_request_and_score_follow_the_contract() -> None:
    typical = load_typical()
    pod = objects.make_pod("job-0", gpus=2, cpu="1500m", memory="1Gi")
    pod["spec"]["initContainers"] = [{"resources": {"requests": {"cpu": "4"}}}]
    pod["spec"]["overhead"] = {"cpu": "100m", "memory": "64Mi"}
    want = typical.pod_request(pod)
    # trainer 1500m + sidecar 50m < init 4000m; memory 1Gi + 64Mi + overhead 64Mi; GPUs from limits.
    assert want == {"cpu": 4100, "memory": 2**30 + 128 * 2**20, "nvidia.com/gpu": 2}
    node = {
        "allocatable": {"cpu": 10_000, "memory": 10 * 2**30, "nvidia.com/gpu": 8, "pods": 110},
        "free": {"cpu": 8_000, "memory": 6 * 2**30, "nvidia.com/gpu": 2, "pods": 1},
    }
    want = {"cpu": 1_000, "memory": 2**30, "nvidia.com/gpu": 2}
    assert typical.score(node, want) == 6  # ((7000/10000) + (5/10)) / 2 * 10 = 6.0
    node["free"]["pods"] = 0
    assert typical.misfit_reasons(node, want) == ["Too many pods"] and typical.score(node, want) == 0


@pytest.mark.parametrize(
    ("text", "p50", "p99", "rps"),
    [("655.00us", 0.655, 2.5, 1517.3), ("1.10ms", 1.1, 2.5, 1517.3), ("1.20s", 1200.0, 2.5, 1517.3)],
)
def test_parse_wrk(text: str, p50: float, p99: float, rps: float) -> None:
    output = f"""Running 1s test @ http://127.0.0.1:1/scheduler/filter
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   651.79us  113.72us   2.87ms   91.82%
    Req/Sec     1.52k    35.11     1.57k    80.00%
  Latency Distribution
     50%  {text}
     75%  700.00us
     90%  800.00us
     99%    2.50ms
  1517 requests in 1.00s, 10.41MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   {rps}
Transfer/sec:     10.37MB
BIND ok=1514 rejected=3
"""
    result = wrk.parse_wrk(output)
    assert (result.p50_ms, result.p99_ms, result.rps, result.requests) == (pytest.approx(p50), p99, rps, 1517)
    assert result.errors == 3


def test_render_plain_and_markdown() -> None:
    rows = [["filter", "1.5"], ["bind", "12.25"]]
    assert render(["case", "ms"], rows, markdown=True) == "| case | ms |\n|---|---|\n| filter | 1.5 |\n| bind | 12.25 |"
    assert render(["case", "ms"], rows, markdown=False).splitlines() == [
        "case       ms",
        "------  -----",
        "filter    1.5",
        "bind    12.25",
    ]


def test_berth_bench_outside_a_checkout_exits_2(tmp_path: Path) -> None:
    """An installed Berth has no loadtests/ next to its package: `berth bench` says where to run it."""
    shutil.copytree(ROOT / "scheduler", tmp_path / "scheduler")  # a package with no checkout around it
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler", "bench", "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "source checkout" in proc.stderr and "make bench" in proc.stderr
    # Every other command still works there.
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler", "explain", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "--namespace" in proc.stdout, proc.stderr


def test_berth_script_finds_the_bench_of_its_checkout(tmp_path: Path) -> None:
    """The `berth` script does not put the checkout on sys.path; the bench is found next to the package."""
    berth = Path(sys.executable).parent / "berth"
    proc = subprocess.run(
        [str(berth), "bench", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: berth bench") and "--quick" in proc.stdout


def load_cluster_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("berth_cluster_script", ROOT / "scripts" / "cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_cluster_takes_ports_and_removes_its_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = load_cluster_script()
    args = cluster.parse_args(["--port", "9001", "--api-port", "9002", "--etcd-port", "9003"])
    seen: dict[str, Any] = {}

    def fake_serve(args: Any, cp: Any) -> int:
        seen.update(dir=cp.dir, ports=(args.port, cp.api_port, cp.etcd_port), peer=cp.peer_port)
        (cp.dir / "berth.log").write_text("...")
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the handler raises out of here
        time.sleep(5)
        raise AssertionError("SIGINT did not stop the cluster")

    monkeypatch.setattr(cluster, "serve", fake_serve)
    monkeypatch.setattr(cluster.h.ControlPlane, "stop", lambda self: None)
    saved = {sig: signal.getsignal(sig) for sig in cluster.STOP_SIGNALS}
    try:
        assert cluster.main(["--port", "9001", "--api-port", "9002", "--etcd-port", "9003"]) == 0
    finally:  # main() installs its own handlers
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert seen["ports"] == (9001, 9002, 9003) and seen["peer"] > 0 and args.etcd_peer_port is None
    assert not seen["dir"].exists(), "the temporary directory must go on exit"


def test_make_cluster_says_how_to_delete_pods_without_kubelets() -> None:
    cluster = load_cluster_script()
    cp = cluster.h.ControlPlane(Path("/nonexistent"))
    text = cluster.banner(cp, 8888, 36)
    assert "--force --grace-period=0" in text and "http://127.0.0.1:8888" in text


def test_the_example_teamquotas_fit_the_pools_make_cluster_and_the_demo_create() -> None:
    """deploy/examples/teamquotas.yaml (which `make cluster` applies), scripts/cluster.py's nodes and the
    demo cluster name the same pools, GPU models and teams; every team claims a namespace make cluster makes."""
    from scheduler.demo import SHAPES, TEAMS
    from scheduler.policy.quotas import QuotaBook

    cluster = load_cluster_script()
    teams = cluster.example_teams()
    nodes = cluster.cluster_nodes()
    labels = [n["metadata"]["labels"] for n in nodes]
    pools = {lab["berth.dev/pool"] for lab in labels}
    models = {lab["nvidia.com/gpu.product"] for lab in labels if "nvidia.com/gpu.product" in lab}
    assert pools == {shape[0] for shape in SHAPES}, "make cluster and the demo have the same pools"
    assert models == {shape[5] for shape in SHAPES if shape[5]}
    assert {t["metadata"]["name"] for t in teams} == {t["name"] for t in TEAMS}, "and the same teams"
    for team in teams:
        assert set(team["spec"]["pools"]) <= pools, team["metadata"]["name"]
        assert set(team["spec"].get("gpuModels") or {}) <= models, team["metadata"]["name"]
    book = QuotaBook()
    for team in teams:
        book.upsert_team(team)
    for ns in cluster.example_namespaces(teams):
        book.set_namespace(ns["metadata"]["name"], ns["metadata"]["labels"])
    claimed = {team for team in book.namespace_teams().values() if team}
    assert claimed == set(book.teams) and not any(t.conflicts for t in book.teams.values())
    pod = yaml.safe_load(cluster.EXAMPLE_POD)
    assert book.namespace_teams()[pod["metadata"]["namespace"]] == "ml-research", "the banner's pod has a team"
    assert "teamquotas" in cluster.banner(cluster.h.ControlPlane(Path("/nonexistent")), 8888, len(nodes))
