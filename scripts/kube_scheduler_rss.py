#!/usr/bin/env python3
"""RSS of kube-scheduler (the one beside Berth in deploy/base) against the local control plane, at growing
cluster sizes, for the sizing table in deploy/README.md.

For each size the cluster is grown to that many nodes and pods (pods bound through spec.nodeName, as a
running cluster's are; loadtests/scale.py's objects), then a fresh kube-scheduler (profile berth-scheduler,
no extender) starts, lists and watches everything, and its VmRSS and VmHWM (the peak) are read once its
RSS has stopped growing.

    .venv/bin/python scripts/kube_scheduler_rss.py --sizes 1000x20000,7500x150000
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.scale import (  # noqa: E402
    NAMESPACES,
    dumps_all,
    namespace_object,
    node_object,
    pod_object,
    vm_status,
)
from loadtests.throughput import Api  # noqa: E402
from tests.e2e import harness as h  # noqa: E402


async def grow(api: Api, nodes: tuple[int, int], pods: tuple[int, int], total_nodes: int) -> None:
    await api.create_all("/api/v1/nodes", dumps_all(node_object(i) for i in range(*nodes)))
    for start in range(pods[0], pods[1], 10_000):
        posts = []
        for i in range(start, min(start + 10_000, pods[1])):
            p = pod_object(i, total_nodes, server_fields=False)
            posts.append((f"/api/v1/namespaces/{p['metadata']['namespace']}/pods", orjson.dumps(p)))
        await api.post_all(posts)


def settled_rss(pid: int, timeout: float) -> dict[str, float]:
    """VmRSS once it grew by less than 1 MB over 5 s (the informers have listed and settled)."""
    deadline, last = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        time.sleep(5)
        now = vm_status(pid)
        if now["VmRSS"] - last < 1:
            return now
        last = now["VmRSS"]
    return vm_status(pid)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000x20000,7500x150000", help="NODESxPODS,... in growing order")
    args = parser.parse_args()
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    cp = h.ControlPlane().start()
    try:
        last_nodes = last_pods = 0
        async with Api(cp.url, cp.ADMIN_TOKEN, 64) as api:
            await api.create_all("/api/v1/namespaces", dumps_all(namespace_object(k) for k in range(NAMESPACES)))
            print("| nodes | pods | kube-scheduler VmRSS | VmHWM (peak) | sync |")
            print("| ---: | ---: | ---: | ---: | ---: |")
            for nodes, pods in sizes:
                await grow(api, (last_nodes, nodes), (last_pods, pods), nodes)
                last_nodes, last_pods = nodes, pods
                config = h.scheduler_config(cp, cp.dir / f"sched-{nodes}.yaml", None, "berth-scheduler")
                t0 = time.monotonic()
                sched = h.start_scheduler(cp, f"kube-scheduler-{nodes}", config)
                assert sched.popen is not None
                rss = settled_rss(sched.popen.pid, 300)
                took = time.monotonic() - t0
                sched.stop()
                print(f"| {nodes:,} | {pods:,} | {rss['VmRSS']:.0f} MB | {rss['VmHWM']:.0f} MB | {took:.0f} s |")
    finally:
        cp.stop()
        h.cleanup(cp.dir)


if __name__ == "__main__":
    asyncio.run(main())
