"""Scheduling traffic against `berth serve --demo`: each simulated pod goes filter -> prioritize -> bind.

    locust -f loadtests/locustfile.py --headless -u 20 -r 10 -t 20s --host http://127.0.0.1:8888

Pods are CPU-only or ask for 1/2/4/8 GPUs, in the namespace of every demo team (scheduler/demo.py:
a team's namespace is its name) or an unteamed one. Filter gets a random sample of 500 of the server's
node names (fetched once from /debug/nodes), prioritize the survivors, bind the best. Requests are
named by verb, so locust's table reads per verb.

**What the latencies are.** Locust's times are measured in the client: a Python process (gevent,
FastHttpUser) that here shares the machine's cores with the server, so they include the client's own
time to build, send and parse each request and its wait for a core. They show that the whole loop
works under concurrency, not how fast Berth answers: for the server's latency use `make bench`
(wrk, server and client pinned to cores of their own; docs/BENCHMARKS.md).

A filter with no surviving node is a valid answer (the cluster is full for that pod, or its team may
not use the sampled nodes): success, and also counted under "filter (no node fits)", so the table
shows how many pods went nowhere. Unteamed pods ("sandbox") fit nowhere in the demo: with TeamQuotas
present they may use only quotas.shared_pools, which the demo leaves empty. Failures are HTTP errors,
replies missing their fields or breaking the protocol (names that were not sent, scores outside
0..10) and a filter `Error`. A bind rejected with an `Error` (another simulated user took the room
first: these users race, a real scheduler does not) is counted under "bind (rejected)" instead of
failing the run.
"""

from __future__ import annotations

import random
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from locust import FastHttpUser, events, task

try:
    from loadtests.objects import make_pod
except ImportError:  # run from a checkout without Berth installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests.objects import make_pod

SAMPLE = 500
HEADERS = {"Content-Type": "application/json"}
# (label, GPUs, cpu, memory, weight)
PROFILES = (
    ("cpu", 0, "2", "8Gi", 45),
    ("gpu1", 1, "8", "48Gi", 20),
    ("gpu2", 2, "16", "96Gi", 14),
    ("gpu4", 4, "32", "192Gi", 12),
    ("gpu8", 8, "64", "400Gi", 9),
)
# (namespace, weight): every demo team's namespace (scheduler/demo.py TEAMS; tests/test_loadtests.py keeps
# the two equal: importing the package here would pull aiohttp in before locust's gevent patches ssl),
# GPU teams more often; "sandbox" belongs to no team.
NAMESPACES = (("ml-research", 25), ("training", 25), ("inference", 25), ("data-eng", 15), ("sandbox", 10))
NO_NODE = "filter (no node fits)"

node_names: list[str] = []


def fetch_node_names(host: str) -> list[str]:
    with urllib.request.urlopen(host.rstrip("/") + "/debug/nodes", timeout=30) as reply:
        return [node["name"] for node in orjson.loads(reply.read())["nodes"]]


@events.test_start.add_listener
def load_node_names(environment: Any, **_kwargs: Any) -> None:
    # Once per process, before users start: every user samples from the same real names.
    if environment.host and not node_names:
        node_names.extend(fetch_node_names(environment.host))


def random_pod() -> dict[str, Any]:
    label, gpus, cpu, memory, _ = random.choices(PROFILES, [p[-1] for p in PROFILES])[0]
    namespace = random.choices([n for n, _ in NAMESPACES], [w for _, w in NAMESPACES])[0]
    name = f"{label}-{uuid.uuid4().hex[:10]}-0"
    return make_pod(name, namespace, gpus=gpus, cpu=cpu, memory=memory)


def filter_survivors(reply: Any, sent: set[str]) -> list[str] | str:
    """The surviving names, or why the reply is malformed."""
    if not isinstance(reply, dict) or not {"NodeNames", "FailedNodes", "Error"} <= reply.keys():
        return "reply lacks NodeNames/FailedNodes/Error"
    if reply["Error"]:
        return f"Error: {reply['Error']}"
    survivors = reply["NodeNames"] or []
    if not isinstance(survivors, list) or not set(survivors) <= sent:
        return "NodeNames is not a subset of the names sent"
    return survivors


def best_host(reply: Any, sent: set[str]) -> str | None:
    """The highest-scoring host, or None when the reply breaks the protocol."""
    if not isinstance(reply, list) or not reply:
        return None
    try:
        if any(e["Host"] not in sent or not 0 <= e["Score"] <= 10 for e in reply):
            return None
    except (KeyError, TypeError):
        return None
    return max(reply, key=lambda entry: entry["Score"])["Host"]


class SchedulerUser(FastHttpUser):
    """One simulated scheduling loop: filter, prioritize, bind, like kube-scheduler with the extender."""

    def on_start(self) -> None:
        if not node_names:  # a worker whose test_start ran without a host
            node_names.extend(fetch_node_names(self.host))

    def post(self, verb: str, body: dict[str, Any]) -> Any:
        """POST one verb, named by the verb; the caller judges the reply inside the returned context."""
        return self.client.post(
            f"/scheduler/{verb}", data=orjson.dumps(body), headers=HEADERS, name=verb, catch_response=True
        )

    @task
    def schedule_one_pod(self) -> None:
        pod = random_pod()
        names = random.sample(node_names, min(SAMPLE, len(node_names)))
        survivors = self.filter(pod, names)
        if not survivors:
            return
        host = survivors[0] if len(survivors) == 1 else self.prioritize(pod, survivors)
        if host:
            self.bind(pod, host)

    def filter(self, pod: dict[str, Any], names: list[str]) -> list[str]:
        started = time.perf_counter()
        with self.post("filter", {"Pod": pod, "Nodes": None, "NodeNames": names}) as response:
            reply = decode(response)
            if reply is None:
                return []
            result = filter_survivors(reply, set(names))
            if isinstance(result, str):
                response.failure(result)
                return []
            response.success()  # no survivor is a valid answer too, counted as its own outcome as well
            if not result:
                self.record(NO_NODE, (time.perf_counter() - started) * 1000, "")
            return result

    def prioritize(self, pod: dict[str, Any], survivors: list[str]) -> str | None:
        # Upstream skips prioritize when one node survives; with several it asks about all of them.
        with self.post("prioritize", {"Pod": pod, "Nodes": None, "NodeNames": survivors}) as response:
            reply = decode(response)
            if reply is None:
                return None
            host = best_host(reply, set(survivors))
            if host is None:
                response.failure("reply is not a list of {Host, Score 0..10} for the names sent")
                return None
            response.success()
            return host

    def bind(self, pod: dict[str, Any], host: str) -> None:
        meta = pod["metadata"]
        body = {
            "PodName": meta["name"],
            "PodNamespace": meta["namespace"],
            "PodUID": meta["uid"],
            "Node": host,
        }
        started = time.perf_counter()
        with self.post("bind", body) as response:
            reply = decode(response)
            if reply is None:
                return
            if not isinstance(reply, dict) or "Error" not in reply:
                response.failure("reply lacks Error")
            elif reply["Error"]:
                self.record("bind (rejected)", (time.perf_counter() - started) * 1000, reply["Error"])
                response.success()
            else:
                response.success()

    def record(self, name: str, response_time: float, reason: str) -> None:
        """An outcome of its own row in locust's table (a subset of the verb's requests, not a failure)."""
        self.environment.events.request.fire(
            request_type="POST",
            name=name,
            response_time=response_time,
            response_length=len(reason),
            exception=None,
            context={},
        )


def decode(response: Any) -> Any:
    """The JSON reply; None, with the request marked failed, for an HTTP error or a body that is not JSON."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        response.failure("reply is not JSON")
        return None
