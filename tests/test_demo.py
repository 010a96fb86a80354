"""The embedded demo cluster: deterministic for a seed, bounded in size, and `make run`'s curl works."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import make_node, make_pod
from tests.conftest import demo_cluster
from tests.fakes import objects as fake
from tests.fakes.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
DEMO_REQUEST = ROOT / "config" / "demo-filter-request.json"
FILTER_KEYS = {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}


def picture(state: ClusterState) -> list[tuple[Any, ...]]:
    """Names, free resources and GPU indices in use, node by node in creation order."""
    t = state.table
    out = []
    for slot in sorted(t.slot_of.values()):
        view = state.node_view(slot)
        out.append(
            (
                view["name"],
                view["pool"],
                view["gpuModel"],
                sorted(view["free"].items()),
                view["gpuIdsUsed"],
                view["load"],
            )
        )
    return out


def test_same_seed_same_cluster() -> None:
    a, b = demo_cluster(nodes=300, seed=11), demo_cluster(nodes=300, seed=11)
    assert picture(a) == picture(b)
    assert sorted((e.key, e.node, e.uid) for e in a.ledger) == sorted((e.key, e.node, e.uid) for e in b.ledger)
    assert len(a.table) == 300 and len(a.ledger) > 0


def test_other_seed_other_cluster() -> None:
    names = [p[0] for p in picture(demo_cluster(nodes=50, seed=1))]
    assert names != [p[0] for p in picture(demo_cluster(nodes=50, seed=2))]


def test_prefix_is_a_mixed_cluster() -> None:
    pools = {p[1] for p in picture(demo_cluster(nodes=20, seed=3))}
    assert {"shared", "a100", "h100", "inference"} <= pools


@pytest.mark.parametrize("nodes", [1, 2])
def test_smallest_clusters(nodes: int) -> None:
    state = demo_cluster(nodes=nodes, seed=42)
    assert len(state.table) == nodes and state.ready


# -- the command line -----------------------------------------------------------------------------
def berth(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("nodes", ["0", "-1", "15001", "100000"])
def test_demo_nodes_out_of_bounds(nodes: str) -> None:
    proc = berth("serve", "--demo", "--demo-nodes", nodes, "--port", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "berth: --demo-nodes must be from 1 to 15000"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(proc: subprocess.Popen[bytes], port: int, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"berth exited with {proc.returncode}: {stderr}")
        try:
            if get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("berth did not become ready")


def serving(*args: str) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "serve", "--demo", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        wait_ready(proc, port)
        yield port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "SIGTERM is a clean shutdown"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="module")
def demo_port() -> Iterator[int]:
    """`python -m scheduler serve --demo`, exactly as `make run` starts it (default size and seed)."""
    yield from serving()


def makefile_curl() -> str:
    """The curl command the Makefile's `run` target tells people to try."""
    makefile = (ROOT / "Makefile").read_text()
    run = re.search(r"^run:.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert run, "the Makefile has a run target"
    for line in run.group(1).splitlines():
        m = re.search(r'@echo "\s*(curl .*)"\s*$', line)
        if m:
            return m.group(1)
    raise AssertionError("the run target prints a curl command")


def test_make_run_curl_gets_a_filter_result(demo_port: int) -> None:
    if not DEMO_REQUEST.exists():
        pytest.skip("config/demo-filter-request.json is not written yet")
    command = makefile_curl()
    assert "$(PORT)" in command and "@config/demo-filter-request.json" in command
    proc = subprocess.run(
        ["bash", "-c", command.replace("$(PORT)", str(demo_port))], cwd=ROOT, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    reply = orjson.loads(proc.stdout)
    assert set(reply) == FILTER_KEYS and reply["Error"] == "" and reply["Nodes"] is None
    request = orjson.loads(DEMO_REQUEST.read_bytes())
    assert reply["NodeNames"] and set(reply["NodeNames"]) <= set(request["NodeNames"])
    judged = set(reply["NodeNames"]) | set(reply["FailedNodes"]) | set(reply["FailedAndUnresolvableNodes"])
    assert judged == set(request["NodeNames"])
    assert not any("cache" in why for why in reply["FailedNodes"].values()), "every node is one Berth knows"


def test_demo_request_names_default_demo_nodes() -> None:
    """The shipped request must name nodes of `--demo` (1000 nodes, seed 42), or every node is unknown."""
    if not DEMO_REQUEST.exists():
        pytest.skip("config/demo-filter-request.json is not written yet")
    request = orjson.loads(DEMO_REQUEST.read_bytes())
    assert list(request) == ["Pod", "Nodes", "NodeNames"] and request["Nodes"] is None
    config = Config()
    state = demo_cluster(config, config.demo.nodes, config.demo.seed)
    assert request["NodeNames"] and set(request["NodeNames"]) <= set(state.table.slot_of)


def test_served_demo_is_the_default_cluster(demo_port: int) -> None:
    status, body = get(f"http://127.0.0.1:{demo_port}/debug/state")
    assert status == 200
    assert orjson.loads(body)["nodes"] == Config().demo.nodes


def test_demo_nodes_lower_bound_serves() -> None:
    for port in serving("--demo-nodes", "1"):
        status, body = get(f"http://127.0.0.1:{port}/debug/state")
        assert status == 200 and orjson.loads(body)["nodes"] == 1


def test_object_factory_builds_what_berth_reads() -> None:
    """A node and a bound pod from the one factory (tests.fakes.objects), applied as an informer would:
    Berth sees the pool, GPU model, islands and the pod's GPU and CPU on that node."""
    state = ClusterState(Config())
    alloc = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "8"}
    node = fake.node(
        "gpu-0",
        alloc,
        pool="a100",
        gpu_model="NVIDIA-A100-SXM4-80GB",
        topology={"islands": [[0, 1, 2, 3], [4, 5, 6, 7]]},
    )
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB" and "spec" not in node
    state.apply_node("ADDED", node)
    main = fake.container("main", "busybox", fake.resources("2", "4Gi", gpus=2))
    state.apply_pod("ADDED", fake.pod("p", [main], namespace="ns", node_name="gpu-0", uid="u-1", phase="Running"))
    view = state.node_view(state.table.slot_of["gpu-0"])
    assert (view["pool"], view["gpuModel"], view["islands"]) == (
        "a100",
        "NVIDIA-A100-SXM4-80GB",
        [[0, 1, 2, 3], [4, 5, 6, 7]],
    )
    assert view["free"]["nvidia.com/gpu"] == 6 and view["free"]["cpu"] == 14_000, view


def test_object_factory_keeps_go_field_order() -> None:
    """Pods come out in Go's struct field order whatever order the caller gave, so bodies built from them
    look like kube-scheduler's json.Marshal."""
    pod = fake.pod(
        "p",
        [],
        namespace="ns",
        node_name="n",
        priority=1,
        uid="u",
        metadata={"generateName": "p-"},
        spec={"tolerations": [], "volumes": []},
        type_meta=False,
    )
    assert list(pod) == ["metadata", "spec"]
    assert list(pod["metadata"]) == ["name", "generateName", "namespace", "uid"]
    assert list(pod["spec"]) == ["volumes", "containers", "nodeName", "schedulerName", "tolerations", "priority"]


def test_demo_objects_come_from_the_factory() -> None:
    node = make_node("n", "a100", 8, 64, 8, "NVIDIA-A100-SXM4-80GB", [[0, 1, 2, 3, 4, 5, 6, 7]], 0.5, "t", "z")
    topology = node["metadata"]["annotations"]["berth.dev/gpu-topology"]
    assert topology == '{"islands":[[0,1,2,3,4,5,6,7]],"links":"nvswitch"}'
    assert node["metadata"]["annotations"]["berth.dev/load"] == "0.50"
    assert node["status"]["allocatable"] == {
        "cpu": "7500m",
        "memory": "63488Mi",
        "pods": "110",
        "ephemeral-storage": "500Gi",
        "nvidia.com/gpu": "8",
    }
    pod = make_pod("ns", "p", None, "1", "1Gi", 1)
    assert pod["status"] == {"phase": "Pending"} and "nodeName" not in pod["spec"]
    assert pod["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"nvidia.com/gpu": "1"},
    }
