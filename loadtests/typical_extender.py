"""A reference "typical Python extender", written the way most scheduler extenders are written.

aiohttp, the stdlib ``json`` module, one dict per node, a loop over the request's node names that
looks each one up in a dict, and a ``json.dumps`` reply. It checks resource fit only (free CPU, memory,
GPUs and pod slots, as Berth's own resource check does), so on that part benchmarks compare
implementations rather than policies; it knows nothing of teams, pools, GPU models or topology, so
it does less per node than Berth, and for a team's pod more nodes fit (the bench's notes give both
counts):

- a node fits when free cpu, memory and GPUs cover the pod's request and one pod slot is free;
- score = least-allocated ((free_cpu - req_cpu) / alloc_cpu + (free_mem - req_mem) / alloc_mem) / 2 * 10,
  rounded down, 0 when the pod does not fit.

It is a baseline, not a strawman: nothing is slowed on purpose (the access log is off, as it would be
in a tuned deployment), and nothing clever (prepared replies, native kernels) is added either.

Run it mirroring a running Berth, or standalone with a generated cluster:

    python loadtests/typical_extender.py --mirror http://127.0.0.1:8888 --port 8890
    python loadtests/typical_extender.py --synthetic 500 --port 8890
"""

from __future__ import annotations

import argparse
import json
import math
import random
import urllib.request
from collections import OrderedDict
from decimal import Decimal
from typing import Any

from aiohttp import web

GPU = "nvidia.com/gpu"
RESOURCES = ("cpu", "memory", GPU)
# Pods seen by filter, so bind can charge what the pod asked for (bind carries only names).
SEEN_PODS_MAX = 50_000

_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}

Nodes = dict[str, dict[str, Any]]
NODES_KEY = web.AppKey("nodes", dict)
BINDINGS_KEY = web.AppKey("bindings", dict)
SEEN_KEY = web.AppKey("seen_pods", OrderedDict)


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a Kubernetes quantity ("500m", "16Gi", "1e3", 2) into a Decimal of base units."""
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return Decimal(text)


def to_units(resource: str, value: str | int | float) -> int:
    """CPU in millicores, everything else in whole units; Kubernetes rounds both up."""
    quantity = parse_quantity(value)
    if resource == "cpu":
        quantity *= 1000
    return math.ceil(quantity)


def container_request(container: dict[str, Any]) -> dict[str, int]:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    out = {}
    for name in RESOURCES:
        # A limit without a request defaults the request to the limit (always so for GPUs).
        value = requests.get(name, limits.get(name))
        out[name] = to_units(name, value) if value is not None else 0
    return out


def pod_request(pod: dict[str, Any]) -> dict[str, int]:
    """Sum of containers, raised to the largest init container, plus the pod overhead."""
    spec = pod.get("spec") or {}
    total = {name: 0 for name in RESOURCES}
    for container in spec.get("containers") or []:
        for name, amount in container_request(container).items():
            total[name] += amount
    for container in spec.get("initContainers") or []:
        for name, amount in container_request(container).items():
            total[name] = max(total[name], amount)
    for name, value in (spec.get("overhead") or {}).items():
        if name in total:
            total[name] += to_units(name, value)
    return total


def misfit_reasons(node: dict[str, Any], want: dict[str, int]) -> list[str]:
    free = node["free"]
    reasons = [f"Insufficient {name}" for name in RESOURCES if free[name] < want[name]]
    if free["pods"] < 1:
        reasons.append("Too many pods")
    return reasons


def score(node: dict[str, Any], want: dict[str, int]) -> int:
    if misfit_reasons(node, want):
        return 0
    alloc, free = node["allocatable"], node["free"]
    cpu = (free["cpu"] - want["cpu"]) / alloc["cpu"] if alloc["cpu"] else 0.0
    memory = (free["memory"] - want["memory"]) / alloc["memory"] if alloc["memory"] else 0.0
    return max(0, min(10, math.floor((cpu + memory) / 2 * 10)))


def remember_pod(app: web.Application, pod: dict[str, Any], want: dict[str, int]) -> None:
    seen = app[SEEN_KEY]
    uid = (pod.get("metadata") or {}).get("uid")
    if uid:
        seen[uid] = want
        if len(seen) > SEEN_PODS_MAX:
            seen.popitem(last=False)


def request_names(args: dict[str, Any]) -> list[str]:
    node_list = args.get("Nodes")
    if node_list is not None:
        return [item["metadata"]["name"] for item in node_list.get("items") or []]
    return args.get("NodeNames") or []


async def handle_filter(request: web.Request) -> web.Response:
    args = await request.json()
    want = pod_request(args["Pod"])
    remember_pod(request.app, args["Pod"], want)
    nodes = request.app[NODES_KEY]
    passed, failed = [], {}
    for name in request_names(args):
        node = nodes.get(name)
        if node is None:
            failed[name] = f"node {name} is not in the extender's cache yet"
            continue
        reasons = misfit_reasons(node, want)
        if reasons:
            failed[name] = ", ".join(reasons)
        else:
            passed.append(name)
    result: dict[str, Any] = {
        "Nodes": None,
        "NodeNames": passed,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": {},
        "Error": "",
    }
    if args.get("Nodes") is not None:
        # Without nodeCacheCapable the scheduler reads the surviving Node objects back.
        keep = set(passed)
        items = [item for item in args["Nodes"]["items"] if item["metadata"]["name"] in keep]
        result["Nodes"] = {"metadata": {}, "items": items}
        result["NodeNames"] = None
    return web.json_response(result)


async def handle_prioritize(request: web.Request) -> web.Response:
    args = await request.json()
    want = pod_request(args["Pod"])
    nodes = request.app[NODES_KEY]
    priorities = []
    for name in request_names(args):
        node = nodes.get(name)
        priorities.append({"Host": name, "Score": score(node, want) if node is not None else 0})
    return web.json_response(priorities)


def bind(app: web.Application, args: dict[str, Any]) -> str:
    """Record the binding; returns an error message, or "" on success."""
    key = (args["PodNamespace"], args["PodName"])
    node_name = args["Node"]
    bound_to = app[BINDINGS_KEY].get(key)
    if bound_to is not None:
        # A retried bind after a lost reply must succeed (kubernetes#96579).
        return "" if bound_to == node_name else f"pod {key[0]}/{key[1]} is already bound to {bound_to}"
    node = app[NODES_KEY].get(node_name)
    if node is None:
        return f"node {node_name} is not in the extender's cache"
    want = app[SEEN_KEY].pop(args.get("PodUID"), None) or {name: 0 for name in RESOURCES}
    reasons = misfit_reasons(node, want)
    if reasons:
        return f"pod {key[0]}/{key[1]} no longer fits on {node_name}: {', '.join(reasons)}"
    for name in RESOURCES:
        node["free"][name] -= want[name]
    node["free"]["pods"] -= 1
    app[BINDINGS_KEY][key] = node_name
    return ""


async def handle_bind(request: web.Request) -> web.Response:
    args = await request.json()
    return web.json_response({"Error": bind(request.app, args)})


async def handle_debug_nodes(request: web.Request) -> web.Response:
    nodes = list(request.app[NODES_KEY].values())
    return web.json_response({"count": len(nodes), "nodes": nodes})


async def handle_readyz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def fetch_mirror(base_url: str) -> Nodes:
    """Copy the node table of a running Berth from its /debug/nodes."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/debug/nodes", timeout=60) as reply:
        payload = json.load(reply)
    return {node["name"]: node for node in payload["nodes"]}


# name, allocatable cpu (m), memory (bytes), GPUs, GPU model, share of the cluster
_SYNTHETIC_POOLS = (
    ("cpu", 63_500, 250 * 2**30, 0, None, 0.6),
    ("a100", 95_000, 1000 * 2**30, 8, "NVIDIA-A100-SXM4-80GB", 0.25),
    ("h100", 190_000, 1900 * 2**30, 8, "NVIDIA-H100-80GB-HBM3", 0.15),
)


def synthetic_nodes(count: int, seed: int = 7) -> Nodes:
    """A seeded cluster of CPU and GPU pools with some capacity already in use."""
    rng = random.Random(seed)
    nodes: Nodes = {}
    for index in range(count):
        pool, cpu, memory, gpus, model, _ = rng.choices(_SYNTHETIC_POOLS, [p[5] for p in _SYNTHETIC_POOLS])[0]
        allocatable = {"cpu": cpu, "memory": memory, GPU: gpus, "pods": 110}
        used = rng.random() * 0.7
        free = {
            "cpu": int(cpu * (1 - used)),
            "memory": int(memory * (1 - used)),
            GPU: gpus - round(gpus * used),
            "pods": 110 - rng.randrange(5, 40),
        }
        name = f"{pool}-node-{index:05d}"
        nodes[name] = {
            "name": name,
            "pool": pool,
            "gpuModel": model,
            "allocatable": allocatable,
            "free": free,
        }
    return nodes


def make_app(nodes: Nodes) -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)  # full NodeLists run to megabytes
    app[NODES_KEY] = nodes
    app[BINDINGS_KEY] = {}
    app[SEEN_KEY] = OrderedDict()
    app.add_routes(
        [
            web.post("/scheduler/filter", handle_filter),
            web.post("/scheduler/prioritize", handle_prioritize),
            web.post("/scheduler/bind", handle_bind),
            web.get("/debug/nodes", handle_debug_nodes),
            web.get("/readyz", handle_readyz),
        ]
    )
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mirror", metavar="URL", help="copy the node table of a running Berth")
    source.add_argument("--synthetic", type=int, metavar="N", help="generate N nodes instead")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8890)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    nodes = fetch_mirror(args.mirror) if args.mirror else synthetic_nodes(args.synthetic)
    print(f"typical extender: {len(nodes)} nodes on http://{args.host}:{args.port}", flush=True)
    web.run_app(make_app(nodes), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
