"""Sustained churn on simulated nodes: kube-scheduler alone, with the zero-cost extender, and with Berth.

`make bench-churn` (`python -m loadtests.churn`). On the local control plane (tests/e2e/harness.py) with
KWOK (tests/e2e/k8s/kwok: built and pinned beside the control plane; its stages in stages.yaml) as every
node's kubelet: nodes turn Ready and keep their Leases renewed; a bound pod goes Running, then Succeeded
after the duration it carries (annotation `berth.dev/churn-run-for`), and is then deleted.

The cluster: `--nodes` nodes (every 4th with 8 GPUs in two NVLink islands of 4, written as Berth's
`berth.dev/gpu-topology` annotation; every 5th of those shares its GPUs by time-slicing, 4 replicas each,
offered as `nvidia.com/gpu.shared`), in pools `pool-a`, `pool-b` and `shared`; four teams, each one
namespace and one TeamQuota (cohort `churn`, its own pool and `shared`).

The work: a seeded open-loop arrival process (exponential gaps, `--rate` pods/s) of CPU pods, 1/2/4/8-GPU
pods, fractional pods (one replica of a shared GPU) and gangs (2-4 members of 1-2 GPUs, annotation gangs:
docs/gangs.md), each running a seeded duration. With Berth, admission is on (its webhook over TLS gates
the gangs and Berth admits each whole), so gangs are scheduled all or nothing; alone and with the
zero-cost extender, the same pods are scheduled one by one. For each mode, in turn, with one kube-scheduler
at a time: `--warmup` seconds of arrivals, then `--duration` seconds measured, then the backlog drains.

Per mode: bound pods/s over the measured window, creation -> bound latency from the pods' own timestamps
(creationTimestamp and the PodScheduled condition, 1 s resolution) and as this client saw it (POST ->
watch), the pending backlog each second, CPU ms per bound pod of every process (/proc), Berth's RSS each
second. For Berth at the end (with KWOK paused, so nothing moves): its cache equals a fresh list of the
pods (cpu, memory, pods, GPU indices and shares of every node), no GPU index is held twice, TeamQuota
usage never went above max in the 1 s samples of /debug/teams, and no reservation is left.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import os
import random
import shlex
import signal
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from loadtests.throughput import (
    Api,
    BerthRun,
    machine_facts,
    proc_cpu,
    say,
    start_zero,
    wait_for,
)
from scheduler.cluster import objects
from scheduler.model.names import ANN_GANG, ANN_GANG_PLAN, ANN_GANG_SIZE, ANN_GPU_IDS, ANN_GPU_MILLI
from scheduler.model.quantity import GPU, to_units
from tests.e2e import harness as h

KWOK_DIR = h.K8S_DIR / "kwok"
ANN_RUN_FOR = "berth.dev/churn-run-for"  # read by the KWOK stage churn-pod-succeeded
KWOK_NODE = "kwok.x-k8s.io/node"
SHARED = "nvidia.com/gpu.shared"
TEAMS = ("team-a", "team-b", "team-c", "team-d")
POOLS = ("pool-a", "pool-b", "shared")
SCHEDULERS = {"plain": "plain", "zero": "zerocost-scheduler", "berth": "berth-scheduler"}
MODES = ("plain", "zero", "berth")
REPLICAS = 4  # replicas per shared GPU
PROC_NAMES = ("kube-apiserver", "etcd", "kube-scheduler", "kwok", "berth", "zerocost", "client")


# -- the cluster -----------------------------------------------------------------------------------------
def node_body(i: int) -> bytes:
    """Node i: pool by i % 3; every 4th has 8 GPUs in two islands, every 5th of those shares them."""
    pool = POOLS[i % 3]
    annotations = {KWOK_NODE: "fake"}
    not_ready = [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "KWOK starts it"}]
    if i % 4:
        alloc = {"cpu": "32", "memory": "128Gi", "pods": "110"}
        obj = objects.node(f"cn-{i:05d}", alloc, pool=pool, annotations=annotations, conditions=not_ready)
        return orjson.dumps(obj)
    islands = {"islands": [[0, 1, 2, 3], [4, 5, 6, 7]]}
    alloc = {"cpu": "96", "memory": "1Ti", "pods": "110"}
    labels: dict[str, str] = {}
    model = "NVIDIA-A100-SXM4-80GB"
    if (i // 4) % 5 == 0:
        alloc[SHARED] = str(8 * REPLICAS)
        labels = {"nvidia.com/gpu.count": "8", "nvidia.com/gpu.replicas": str(REPLICAS)}
        labels["nvidia.com/gpu.sharing-strategy"] = "time-slicing"
        labels["nvidia.com/gpu.product"] = model + "-SHARED"
        obj = objects.node(
            f"gn-{i:05d}", alloc, pool=pool, labels=labels, annotations=annotations, conditions=not_ready
        )
        obj["metadata"]["annotations"]["berth.dev/gpu-topology"] = orjson.dumps(islands).decode()
        return orjson.dumps(obj)
    alloc[GPU] = "8"
    obj = objects.node(
        f"gn-{i:05d}",
        alloc,
        pool=pool,
        gpu_model=model,
        topology=islands,
        annotations=annotations,
        conditions=not_ready,
    )
    return orjson.dumps(obj)


def team_quotas(nodes: int) -> list[dict[str, Any]]:
    """One TeamQuota per team: its own pool and `shared`, maxima with room to spare for the default mix
    (the check is that usage never passes max, not that teams wait)."""
    gpus = 8 * (nodes // 4)
    out = []
    for k, team in enumerate(TEAMS):
        pool = POOLS[0] if k < 2 else POOLS[1]
        guaranteed = max(1, gpus // 8)
        out.append(
            {
                "apiVersion": "berth.dev/v1alpha1",
                "kind": "TeamQuota",
                "metadata": {"name": team},
                "spec": {
                    "namespaces": [team],
                    "cohort": "churn",
                    "pools": [pool, "shared"],
                    "resources": {
                        GPU: {"guaranteed": guaranteed, "max": max(1, gpus // 2)},
                        "cpu": {"guaranteed": str(8 * nodes), "max": str(16 * nodes)},
                    },
                },
            }
        )
    return out


# -- the work ---------------------------------------------------------------------------------------------
@dataclass
class Arrival:
    at: float  # seconds after the start of the mode's stream
    bodies: list[tuple[str, bytes]]  # (namespace, pod body): one pod, or a gang's members
    kind: str


def pod_body(
    name: str, ns: str, scheduler: str, run: str, kind: str, cpu: str, mem: str, run_for: int, res: dict[str, str]
) -> tuple[str, bytes]:
    requests = {"cpu": cpu, "memory": mem, **res}
    resources: dict[str, Any] = {"requests": requests}
    if res:
        resources["limits"] = dict(res)  # an extended resource's request must equal its limit
    main = objects.container("main", "registry.k8s.io/pause:3.10", resources)
    spec = {"terminationGracePeriodSeconds": 0, "restartPolicy": "Never"}
    obj = objects.pod(
        name,
        [main],
        scheduler=scheduler,
        labels={"churn-run": run, "churn-kind": kind},
        annotations={ANN_RUN_FOR: f"{run_for}s"},
        spec=spec,
    )
    return ns, orjson.dumps(obj)


def workload(args: argparse.Namespace, mode: str, run: str) -> list[Arrival]:
    """The seeded stream: the same kinds, sizes, durations and times for every mode (names differ)."""
    rng = random.Random(args.seed)
    scheduler = SCHEDULERS[mode]
    end = args.warmup + args.duration
    t, i, out = 0.0, 0, []
    while True:
        t += rng.expovariate(args.rate)
        if t >= end:
            return out
        ns = TEAMS[rng.randrange(len(TEAMS))]
        run_for = rng.randint(args.min_run, args.max_run)
        u = rng.random()
        cpu, mem = rng.choice(("100m", "250m", "500m", "1")), rng.choice(("256Mi", "512Mi", "1Gi", "2Gi"))
        if u < 0.05:  # a gang: 2-4 members of 1-2 GPUs, all or nothing (counted as its members' arrivals)
            size, gpus = rng.randint(2, 4), rng.choice((1, 2))
            gang = f"{mode}-g{i:06d}"
            bodies = []
            for m in range(size):
                ns_, body = pod_body(f"{gang}-{m}", ns, scheduler, run, "gang", cpu, mem, run_for, {GPU: str(gpus)})
                obj = orjson.loads(body)
                obj["metadata"]["annotations"].update({ANN_GANG: gang, ANN_GANG_SIZE: str(size)})
                bodies.append((ns_, orjson.dumps(obj)))
            out.append(Arrival(t, bodies, "gang"))
            i += 1
            continue
        if u < 0.60:
            kind, res = "cpu", {}
        elif u < 0.70:
            kind, res = "fraction", {SHARED: "1"}
        else:
            gpus = rng.choices((1, 2, 4, 8), weights=(12, 8, 6, 4))[0]
            kind, res = f"gpu{gpus}", {GPU: str(gpus)}
        out.append(Arrival(t, [pod_body(f"{mode}-{i:06d}", ns, scheduler, run, kind, cpu, mem, run_for, res)], kind))
        i += 1


# -- what is watched and sampled --------------------------------------------------------------------------
def ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


@dataclass
class Track:
    posted: dict[str, float] = field(default_factory=dict)  # name -> monotonic time its POST was sent
    bound_seen: dict[str, float] = field(default_factory=dict)  # name -> monotonic time the watch saw it bound
    own_latency: dict[str, float] = field(default_factory=dict)  # name -> PodScheduled - creationTimestamp
    kinds: dict[str, str] = field(default_factory=dict)
    finished: int = 0
    failed_posts: int = 0
    late_posts: int = 0  # arrivals sent more than 100 ms after their time (the client fell behind)
    rv: str = ""
    rewatches: int = 0

    def event(self, event: dict[str, Any]) -> None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        if event.get("type") == "ERROR":
            raise RuntimeError(f"pod watch failed: {obj.get('message')}")
        self.rv = meta.get("resourceVersion") or self.rv
        name = meta.get("name", "")
        if event.get("type") == "BOOKMARK" or not name:
            return
        if name not in self.bound_seen and (obj.get("spec") or {}).get("nodeName"):
            self.bound_seen[name] = time.monotonic()
            self.kinds[name] = (meta.get("labels") or {}).get("churn-kind", "")
            created = ts(meta.get("creationTimestamp"))
            for c in (obj.get("status") or {}).get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("status") == "True":
                    scheduled = ts(c.get("lastTransitionTime"))
                    if created is not None and scheduled is not None:
                        self.own_latency[name] = scheduled - created
        if (obj.get("status") or {}).get("phase") == "Succeeded" and event.get("type") == "MODIFIED":
            self.finished += 1


async def watch_pods(api: Api, selector: str, track: Track) -> None:
    """The run's pods, cluster-wide; resumed from the last resourceVersion when the server closes it."""
    while True:
        async for event in api.watch("/api/v1/pods", track.rv, selector):
            track.event(event)
        track.rewatches += 1


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Sample:
    t: float  # seconds since the stream started
    posted: int
    bound: int
    cpu: dict[str, float]
    rss: float | None


@dataclass
class ModeResult:
    mode: str
    arrivals: int = 0
    pods: int = 0
    window: float = 0.0
    bound_in_window: int = 0
    unbound_at_end: int = 0
    own_p50: float | None = None
    own_p99: float | None = None
    seen_p50: float | None = None
    seen_p99: float | None = None
    by_kind: dict[str, tuple[int, float | None]] = field(default_factory=dict)  # kind -> (n, p99 own)
    samples: list[Sample] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    late_posts: int = 0
    failed_posts: int = 0
    finished: int = 0
    checks: dict[str, str] = field(default_factory=dict)
    quota_samples: int = 0
    quota_over: list[str] = field(default_factory=list)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def rate(self) -> float:
        return self.bound_in_window / self.window if self.window else 0.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- Berth's checks -------------------------------------------------------------------------------------
async def quota_sampler(api: Api, berth: BerthRun, res: ModeResult) -> None:
    """Every second: each team's usage against its max (/debug/teams); any excess is recorded."""
    while True:
        await asyncio.sleep(1)
        with contextlib.suppress(Exception):
            rows = (await api.get(f"{berth.url}/debug/teams"))["teams"]
            res.quota_samples += 1
            for row in rows:
                for r, lim in (row.get("limits") or {}).items():
                    used = (row.get("used") or {}).get(r)
                    if lim.get("max") is not None and used is not None and to_units(r, used) > to_units(r, lim["max"]):
                        res.quota_over.append(f"{row['team']} {r} {used} > {lim['max']} at {time.time():.0f}")


def expected_nodes(pods: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """From a fresh list: per node the cpu, memory and pods held by bound, unfinished pods, whole GPU
    indices and shared GPU milli per device; and every GPU index held twice (or a share above 1000)."""
    use: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"cpu": 0, "memory": 0, "pods": 0, "ids": set(), "milli": defaultdict(int)}
    )
    twice: list[str] = []
    for p in pods:
        node = (p.get("spec") or {}).get("nodeName")
        plan = (p["metadata"].get("annotations") or {}).get(ANN_GANG_PLAN)
        if not node and plan:  # a gang member ungated and planned, not bound yet: Berth holds it there
            use[plan]["held"] = True
        if not node or (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        u = use[node]
        u["pods"] += 1
        for c in p["spec"]["containers"]:
            req = (c.get("resources") or {}).get("requests") or {}
            u["cpu"] += to_units("cpu", req.get("cpu", "0"))
            u["memory"] += to_units("memory", req.get("memory", "0"))
        ann = p["metadata"].get("annotations") or {}
        ids = [int(x) for x in ann.get(ANN_GPU_IDS, "").split(",") if x.strip()]
        if ANN_GPU_MILLI in ann:
            for g in ids:
                u["milli"][g] += int(ann[ANN_GPU_MILLI])
                if u["milli"][g] > 1000:
                    twice.append(f"{node} GPU {g} shared above 1000 milli")
        else:
            for g in ids:
                if g in u["ids"]:
                    twice.append(f"{node} GPU {g} held twice")
                u["ids"].add(g)
    return use, twice


def compare_cache(nodes: list[dict[str, Any]], use: dict[str, dict[str, Any]]) -> tuple[list[str], int]:
    """Berth's /debug/nodes against what a fresh list says each node holds; and how many nodes were left
    out because a planned gang member is held there (a hold is Berth's own, not in the list)."""
    diffs, held = [], 0
    for n in nodes:
        u = use.get(n["name"]) or {"cpu": 0, "memory": 0, "pods": 0, "ids": set(), "milli": {}}
        if u.get("held"):
            held += 1
            continue
        alloc, free = n["allocatable"], n["free"]
        for r in ("cpu", "memory", "pods"):
            if alloc[r] - free[r] != u[r]:
                diffs.append(f"{n['name']} {r}: Berth holds {alloc[r] - free[r]}, the list {u[r]}")
        if n.get("gpuSharing", "none") == "none":
            ids = {int(x) for x in (n.get("gpuIdsUsed") or "").split(",") if x.strip()}
            if ids != u["ids"]:
                diffs.append(f"{n['name']} GPUs: Berth {sorted(ids)}, the list {sorted(u['ids'])}")
        else:
            milli = {int(g): m for g, m in (n.get("gpuMilliShared") or {}).items()}
            want = {g: m for g, m in u["milli"].items() if m}
            if milli != want:
                diffs.append(f"{n['name']} GPU shares: Berth {milli}, the list {want}")
    return diffs, held


async def berth_checks(api: Api, berth: BerthRun, kwok: h.Proc, sched: h.Proc, res: ModeResult) -> None:
    """With KWOK and kube-scheduler paused (no pod changes: a backlog left after the drain would keep
    binding), Berth's view against a fresh list of the API server's pods. A check that cannot run is
    reported as such, so the run's measurements are written anyway."""
    paused = [p.popen.pid for p in (kwok, sched) if p.popen is not None]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        await _compare(api, berth, res)
    except (TimeoutError, OSError, ValueError, KeyError) as exc:
        res.checks["cache equals a fresh list"] = f"not checked: {exc}"
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)


async def _compare(api: Api, berth: BerthRun, res: ModeResult) -> None:
    """Berth's nodes (usage, GPU indices and shares) against what the listed pods hold."""
    await asyncio.sleep(2)
    state0: dict[str, Any] = {}

    async def settled() -> bool:  # Berth's pod count unchanged over a second: its watch has caught up
        nonlocal state0
        s = await api.get(f"{berth.url}/debug/state")
        same = s["pods"] == state0.get("pods") and s["informers"] == state0.get("informers")
        state0 = s
        return same

    await wait_for(settled, 60, "Berth's informers to settle", every=1.0)
    pods = await list_all(api, "/api/v1/pods")
    nodes = (await api.get(f"{berth.url}/debug/nodes"))["nodes"]
    use, twice = expected_nodes(pods)
    diffs, held = compare_cache(nodes, use)
    note = f" ({len(nodes) - held} nodes compared; {held} with a gang hold left out)"
    res.checks["cache equals a fresh list"] = (
        f"yes{note}" if not diffs else f"NO{note}: {len(diffs)} differences, e.g. {diffs[:3]}"
    )
    res.checks["no GPU index held twice"] = "yes" if not twice else f"NO: {twice[:3]}"
    res.checks["reservations after the drain"] = str(state0.get("reservations"))


async def list_all(api: Api, path: str) -> list[dict[str, Any]]:
    items, cont = [], ""
    while True:
        params = {"limit": "2000", **({"continue": cont} if cont else {})}
        page = await api.get(path, params)
        items += page["items"]
        cont = page["metadata"].get("continue") or ""
        if not cont:
            return items


# -- one mode ---------------------------------------------------------------------------------------------
async def post_stream(api: Api, arrivals: list[Arrival], track: Track, t0: float) -> None:
    """Open loop: each arrival is sent at its time whatever the server does; `concurrency` POSTs at most
    in flight (an arrival that finds them all busy waits, and counts as late when it goes > 100 ms late)."""
    sem = asyncio.Semaphore(api.concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def send(ns: str, body: bytes, name: str, due: float) -> None:
        async with sem:
            if time.monotonic() - due > 0.1:
                track.late_posts += 1
            track.posted[name] = time.monotonic()
            try:
                await api.request("POST", f"/api/v1/namespaces/{ns}/pods", body)
            except Exception as exc:  # counted, and the stream goes on (open loop)
                track.failed_posts += 1
                track.posted.pop(name, None)
                if track.failed_posts <= 3:
                    say(f"POST failed: {exc}")

    for a in arrivals:
        due = t0 + a.at
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for ns, body in a.bodies:
            name = orjson.loads(body)["metadata"]["name"]
            task = asyncio.create_task(send(ns, body, name, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


async def sample_loop(t0: float, track: Track, pids: dict[str, int], berth_pid: int | None, out: list[Sample]) -> None:
    while True:
        cpu = {}
        for name, pid in pids.items():
            with contextlib.suppress(OSError):
                cpu[name] = proc_cpu(pid)
        rss = None
        if berth_pid is not None:
            with contextlib.suppress(OSError):
                rss = rss_mib(berth_pid)
        out.append(Sample(time.monotonic() - t0, len(track.posted), len(track.bound_seen), cpu, rss))
        await asyncio.sleep(1)


async def warm_up(api: Api, cp: h.ControlPlane, sched: h.Proc, scheduler: str, run: str) -> None:
    ns, body = pod_body(f"warmup-{run}", TEAMS[0], scheduler, "warmup", "cpu", "100m", "256Mi", 1, {})
    await api.request("POST", f"/api/v1/namespaces/{ns}/pods", body)

    async def bound() -> bool:
        if not sched.alive:
            raise RuntimeError(f"{sched.name} exited:\n{sched.tail()}")
        return bool((await api.get(f"/api/v1/namespaces/{ns}/pods/warmup-{run}"))["spec"].get("nodeName"))

    await wait_for(bound, 180, f"{sched.name} to bind a warm-up pod")
    await api.request("DELETE", f"/api/v1/namespaces/{ns}/pods/warmup-{run}", params={"gracePeriodSeconds": "0"})


async def delete_run(api: Api, selector: str, timeout: float = 300) -> None:
    """Delete the run's pods, then wait until they are gone. A collection DELETE of thousands of pods can
    time out in the API server (504) while it goes on deleting: asked again until the deadline."""
    deadline = time.monotonic() + timeout
    for ns in TEAMS:
        while True:
            try:
                await api.request(
                    "DELETE",
                    f"/api/v1/namespaces/{ns}/pods",
                    params={"labelSelector": selector, "gracePeriodSeconds": "0"},
                )
                break
            except RuntimeError as exc:
                if time.monotonic() > deadline:
                    raise
                say(f"delete of {ns}'s pods: {str(exc)[:120]}; asking again")
                await asyncio.sleep(5)

    async def gone() -> bool:
        return not (await api.get("/api/v1/pods", {"labelSelector": selector, "limit": "1"}))["items"]

    await wait_for(gone, timeout, f"the pods of {selector} to go", every=1.0)


async def run_mode(
    cp: h.ControlPlane, api: Api, args: argparse.Namespace, mode: str, kwok: h.Proc, berth_kc: Path
) -> ModeResult:
    res = ModeResult(mode)
    run = f"{mode}-{int(time.time()) % 100000}"
    selector = f"churn-run={run}"
    berth = await start_berth(cp, api, args, berth_kc) if mode == "berth" else None
    zero = await asyncio.to_thread(start_zero, cp, berth_kc) if mode == "zero" else None
    url = berth.url if berth else zero.url if zero else None
    cfg = h.scheduler_config(cp, cp.dir / f"sched-{run}.yaml", url, SCHEDULERS[mode], percentage=args.pct, qps=args.qps)
    sched = h.start_scheduler(cp, f"kube-scheduler-{run}", cfg)
    tasks: list[asyncio.Task[Any]] = []
    try:
        await warm_up(api, cp, sched, SCHEDULERS[mode], run)
        arrivals = workload(args, mode, run)
        res.arrivals = len(arrivals)
        res.pods = sum(len(a.bodies) for a in arrivals)
        track = Track(rv=(await api.get("/api/v1/pods", {"limit": "1"}))["metadata"]["resourceVersion"])
        pids = {"kube-apiserver": cp.apiserver, "etcd": cp.etcd, "kube-scheduler": sched, "kwok": kwok}
        pid_of = {k: p.popen.pid for k, p in pids.items() if p is not None and p.popen is not None}
        if berth and berth.proc.popen:
            pid_of["berth"] = berth.proc.popen.pid
        if zero and zero.proc.popen:
            pid_of["zerocost"] = zero.proc.popen.pid
        pid_of["client"] = os.getpid()
        t0 = time.monotonic()
        tasks.append(asyncio.create_task(watch_pods(api, selector, track)))
        berth_pid = pid_of.get("berth")
        tasks.append(asyncio.create_task(sample_loop(t0, track, pid_of, berth_pid, res.samples)))
        if berth:
            tasks.append(asyncio.create_task(quota_sampler(api, berth, res)))
        say(f"{mode}: {res.pods} pods in {res.arrivals} arrivals over {args.warmup + args.duration:.0f}s")
        await post_stream(api, arrivals, track, t0)
        await drain(track, args.drain, sched, tasks)
        summarise(res, track, t0, args)
        if berth:
            await berth_checks(api, berth, kwok, sched, res)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        sched.stop()
    res.load = os.getloadavg()
    await delete_run(api, selector)
    if berth:
        try:
            await berth.wait_empty(api, timeout=120)
            res.checks["no reservation left, ledger empty after the pods go"] = "yes"
        except (AssertionError, TimeoutError) as exc:
            res.checks["no reservation left, ledger empty after the pods go"] = f"NO: {exc}"
        res.checks["quota never above max (1 s samples)"] = (
            f"yes ({res.quota_samples} samples)" if not res.quota_over else f"NO: {res.quota_over[:3]}"
        )
    for ext in (berth, zero):
        if ext:
            ext.proc.stop()
    say(describe(res))
    return res


async def drain(track: Track, timeout: float, sched: h.Proc, tasks: list[asyncio.Task[Any]]) -> None:
    """After the last arrival: until every posted pod is bound, or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(track.bound_seen) < len(track.posted):
        if not sched.alive:
            raise RuntimeError(f"{sched.name} exited:\n{sched.tail()}")
        for task in tasks:
            if task.done() and task.exception():
                raise task.exception()  # type: ignore[misc]
        await asyncio.sleep(0.5)


def summarise(res: ModeResult, track: Track, t0: float, args: argparse.Namespace) -> None:
    w0, w1 = t0 + args.warmup, t0 + args.warmup + args.duration
    res.window = args.duration
    in_window = [n for n, t in track.bound_seen.items() if w0 <= t < w1]
    res.bound_in_window = len(in_window)
    res.unbound_at_end = len(set(track.posted) - set(track.bound_seen))
    created_in = [n for n, t in track.posted.items() if w0 <= t < w1 and n in track.bound_seen]
    own = [track.own_latency[n] for n in created_in if n in track.own_latency]
    seen = [track.bound_seen[n] - track.posted[n] for n in created_in]
    res.own_p50, res.own_p99 = pct(own, 0.5), pct(own, 0.99)
    res.seen_p50, res.seen_p99 = pct(seen, 0.5), pct(seen, 0.99)
    kinds: dict[str, list[float]] = defaultdict(list)
    for n in created_in:
        if n in track.own_latency:
            kinds[track.kinds.get(n, "")].append(track.own_latency[n])
    res.by_kind = {k: (len(v), pct(v, 0.99)) for k, v in sorted(kinds.items())}
    res.late_posts, res.failed_posts, res.finished = track.late_posts, track.failed_posts, track.finished
    a = _sample_at(res.samples, args.warmup)
    b = _sample_at(res.samples, args.warmup + args.duration)
    if a and b and res.bound_in_window:
        res.cpu_ms = {
            k: 1000 * (b.cpu[k] - a.cpu[k]) / res.bound_in_window for k in PROC_NAMES if k in a.cpu and k in b.cpu
        }


def _sample_at(samples: list[Sample], t: float) -> Sample | None:
    if not samples:
        return None
    i = bisect.bisect_left([s.t for s in samples], t)
    return samples[min(i, len(samples) - 1)]


async def start_berth(cp: h.ControlPlane, api: Api, args: argparse.Namespace, kubeconfig: Path) -> BerthRun:
    """Berth with admission on (gangs; docs/gangs.md): its webhook over TLS, registered with the CA."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = cp.dir / "berth-churn"
    d.mkdir(exist_ok=True)
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "tls.pem"))
    cert.private_key_pem.write_to_path(str(d / "tls.key"))
    webhook_port = h.free_port()
    config = {
        "admission": {
            "enabled": not args.no_admission,
            "webhook_port": webhook_port,
            "webhook_host": "127.0.0.1",
            "webhook_cert": str(d / "tls.pem"),
            "webhook_key": str(d / "tls.key"),
        }
    }
    (d / "berth.yaml").write_text(yaml.safe_dump(config))
    port = h.free_port()
    proc = h.start_berth(cp, kubeconfig, port, name="berth-churn", extra=["--config", str(d / "berth.yaml")])
    run = BerthRun(proc, port)
    await asyncio.to_thread(h.wait_ready, run.url, proc, 300)
    if not args.no_admission:
        cp.apply([webhook_config(webhook_port, ca.cert_pem.bytes())])
    return run


def webhook_config(port: int, ca_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "berth-admission-churn"},
        "webhooks": [
            {
                "name": "admission.berth.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/mutate",
                    "caBundle": base64.b64encode(ca_pem).decode(),
                },
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {"berth.dev/admission": "enabled"}},
                "matchConditions": [
                    {"name": "berth-scheduler", "expression": "object.spec.schedulerName == 'berth-scheduler'"}
                ],
            }
        ],
    }


# -- the whole benchmark ----------------------------------------------------------------------------------
def start_kwok(cp: h.ControlPlane, args: argparse.Namespace) -> h.Proc:
    binary = cp.bin / "kwok"
    if not binary.exists():
        raise RuntimeError(f"kwok not built in {cp.bin}: run `make k8s`")
    return h.Proc(
        "kwok",
        [
            str(binary),
            f"--kubeconfig={cp.admin_kubeconfig}",
            f"--config={KWOK_DIR / 'stages.yaml'}",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE}=fake",
            f"--node-lease-duration-seconds={args.lease_seconds}",
            "--server-address=",
            "--v=WARN",  # INFO writes a line for every patch and Lease renewal
        ],
        cp.dir,
    ).start()


async def setup(cp: h.ControlPlane, api: Api, args: argparse.Namespace) -> h.Proc:
    cp.kubectl("apply", "-f", str(h.ROOT / "deploy" / "crds" / "scheduling.x-k8s.io_podgroups.yaml"))
    for team in TEAMS:
        body = {"metadata": {"name": team, "labels": {"berth.dev/admission": "enabled"}}}
        await api.request("POST", "/api/v1/namespaces", orjson.dumps(body))
    cp.apply(team_quotas(args.nodes))
    t = time.monotonic()
    await api.create_all("/api/v1/nodes", [node_body(i) for i in range(args.nodes)])
    say(f"{args.nodes} nodes created in {time.monotonic() - t:.1f}s")
    kwok = start_kwok(cp, args)

    async def ready() -> bool:
        if not kwok.alive:
            raise RuntimeError(f"kwok exited:\n{kwok.tail()}")
        nodes = await list_all(api, "/api/v1/nodes")
        up = sum(
            1
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        )
        return up == args.nodes

    await wait_for(ready, 600, "KWOK to make every node Ready", every=2.0)
    leases = (await api.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {"limit": "1"}))["items"]
    if not leases:
        raise RuntimeError("KWOK keeps no node Lease")
    say(f"every node Ready after {time.monotonic() - t:.1f}s, with Leases")
    return kwok


async def bench(args: argparse.Namespace) -> list[ModeResult]:
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    cp = h.ControlPlane(workload_api=False).start()  # the alpha gang API slows pod admission
    results: list[ModeResult] = []
    kwok: h.Proc | None = None
    try:
        berth_kc = cp.install_berth_identity()
        async with Api(cp.url, cp.ADMIN_TOKEN, args.concurrency) as api:
            kwok = await setup(cp, api, args)
            for mode in args.modes:
                results.append(await run_mode(cp, api, args, mode, kwok, berth_kc))
    finally:
        if kwok:
            kwok.stop()
        cp.stop()
        if args.keep:
            say(f"logs kept in {cp.dir}")
        else:
            h.cleanup(cp.dir)
    return results


# -- reporting --------------------------------------------------------------------------------------------
def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def describe(r: ModeResult) -> str:
    return (
        f"{r.mode}: {r.rate:.1f} bound pods/s over {r.window:.0f}s; own latency p50 {_f(r.own_p50)} s p99 "
        f"{_f(r.own_p99)} s; seen p50 {_f(r.seen_p50)} s p99 {_f(r.seen_p99)} s; unbound at end "
        f"{r.unbound_at_end}; late posts {r.late_posts}; CPU ms/pod "
        + ", ".join(f"{k} {v:.1f}" for k, v in r.cpu_ms.items())
        + "".join(f"; {k}: {v}" for k, v in r.checks.items())
    )


def summary_table(results: list[ModeResult], args: argparse.Namespace) -> list[str]:
    by = {r.mode: r for r in results}
    rows = [
        "| mode | pods posted | bound pods/s (window) | share of alone | share of zero-cost | p50 s (own) | "
        "p99 s (own) | p50 s (seen) | p99 s (seen) | backlog max | backlog at end of window | unbound after "
        "drain | late POSTs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        backlog = [s.posted - s.bound for s in r.samples]
        end = _sample_at(r.samples, args.warmup + args.duration)
        share = {
            m: f"{r.rate / by[m].rate:.2f}" if m in by and by[m].rate and r.mode == "berth" else "-"
            for m in ("plain", "zero")
        }
        rows.append(
            f"| {r.mode} | {r.pods} | {r.rate:.1f} | {share['plain']} | {share['zero']} | {_f(r.own_p50)} | "
            f"{_f(r.own_p99)} | {_f(r.seen_p50)} | {_f(r.seen_p99)} | {max(backlog, default=0)} | "
            f"{end.posted - end.bound if end else '-'} | {r.unbound_at_end} | {r.late_posts} |"
        )
    return rows


def cpu_table(results: list[ModeResult]) -> list[str]:
    rows = [
        "| mode | " + " | ".join(PROC_NAMES) + " | all |",
        "|---|" + "---:|" * (len(PROC_NAMES) + 1),
    ]
    for r in results:
        cells = " | ".join(_f(r.cpu_ms.get(p), "{:.1f}") for p in PROC_NAMES)
        rows.append(f"| {r.mode} | {cells} | {sum(r.cpu_ms.values()):.1f} |")
    return rows


def series(results: list[ModeResult], every: int) -> list[str]:
    """Backlog (and Berth's RSS) every `every` seconds."""
    rows = []
    for r in results:
        points = [s for s in r.samples if int(s.t) % every == 0]
        seen: set[int] = set()
        uniq = [s for s in points if not (int(s.t) in seen or seen.add(int(s.t)))]  # type: ignore[func-returns-value]
        rows.append(
            f"- {r.mode} backlog (pending pods) every {every} s: " + ", ".join(str(s.posted - s.bound) for s in uniq)
        )
        if any(s.rss is not None for s in uniq):
            rows.append(
                f"- {r.mode} Berth RSS MiB every {every} s: " + ", ".join(f"{s.rss:.0f}" for s in uniq if s.rss)
            )
    return rows


def rss_line(r: ModeResult, args: argparse.Namespace) -> str:
    pts = [(s.t, s.rss) for s in r.samples if s.rss is not None and s.t >= args.warmup]
    pts = [(t, v) for t, v in pts if t <= args.warmup + args.duration]
    if len(pts) < 2:
        return "- Berth RSS: -"
    ts_, vs = [p[0] for p in pts], [p[1] for p in pts]
    slope = statistics.linear_regression(ts_, vs).slope * 60 if len(set(ts_)) > 1 else 0.0
    return (
        f"- Berth RSS over the window: start {vs[0]:.0f} MiB, end {vs[-1]:.0f} MiB, min {min(vs):.0f}, "
        f"max {max(vs):.0f}; least-squares slope {slope:+.2f} MiB/min"
    )


def markdown(results: list[ModeResult], args: argparse.Namespace, argv: list[str]) -> str:
    berth = next((r for r in results if r.mode == "berth"), None)
    lines = [
        "# Sustained churn on KWOK nodes: kube-scheduler alone, with the zero-cost extender, with Berth",
        "",
        f"`{' '.join(shlex.quote(a) for a in ['python', '-m', 'loadtests.churn', *argv])}`",
        "",
        *machine_facts(),
        "- load average at the end of each mode: " + "; ".join(f"{r.mode} {r.load[0]:.1f}" for r in results),
        "",
        f"{args.nodes} KWOK nodes, a quarter with 8 GPUs (two NVLink islands; a fifth of those time-sliced, "
        f"{REPLICAS} replicas); open-loop arrivals at {args.rate} pods/s (seed {args.seed}) for {args.warmup:.0f} s "
        f"of warm-up and {args.duration:.0f} s measured; pods run {args.min_run}-{args.max_run} s; "
        f"percentageOfNodesToScore {args.pct if args.pct is not None else 'default'}; kube-scheduler QPS "
        f"{args.qps}; node Leases of {args.lease_seconds} s. 'own' latency: PodScheduled - creationTimestamp "
        "(the API server's clock, 1 s resolution); 'seen': this client's POST -> its watch seeing the "
        "binding. Backlog: pods posted and not yet bound.",
        "",
        *summary_table(results, args),
        "",
        "CPU ms per pod bound in the window (CPU time of each process over the window / pods bound):",
        "",
        *cpu_table(results),
        "",
        "Creation -> bound p99 (own, s) by kind: "
        + "; ".join(
            f"{r.mode}: " + ", ".join(f"{k} {_f(p99)} (n={n})" for k, (n, p99) in r.by_kind.items()) for r in results
        ),
        "",
        *series(results, 30),
        *([rss_line(berth, args)] if berth else []),
        "",
    ]
    if berth:
        lines += ["Berth's checks:", "", "| check | result |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in berth.checks.items()]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.churn", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=5000, help="KWOK nodes (default 5000)")
    p.add_argument("--rate", type=float, default=130, help="target arrival rate, pods/s (default 130)")
    p.add_argument("--duration", type=float, default=600, help="measured seconds per mode (default 600)")
    p.add_argument("--warmup", type=float, default=60, help="seconds of arrivals before the window (default 60)")
    p.add_argument("--drain", type=float, default=120, help="seconds to wait for the backlog after the stream")
    p.add_argument("--modes", default="plain,zero,berth", help="of plain, zero, berth (default all three)")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--min-run", type=int, default=10, help="shortest pod run, seconds (default 10)")
    p.add_argument("--max-run", type=int, default=50, help="longest pod run, seconds (default 50)")
    p.add_argument("--pct", type=int, default=None, help="percentageOfNodesToScore (default: unset, adaptive)")
    p.add_argument("--qps", type=int, default=2000, help="kube-scheduler client QPS (burst twice that)")
    p.add_argument("--concurrency", type=int, default=64, help="POSTs in flight at most")
    p.add_argument("--lease-seconds", type=int, default=40, help="KWOK node Lease duration (renewed each 1/4)")
    p.add_argument("--no-admission", action="store_true", help="Berth without its admission webhook (no gangs)")
    p.add_argument("--markdown", help="write the tables, the command line and machine facts to this file")
    p.add_argument("--keep", action="store_true", help="keep the control plane's directory (logs)")
    args = p.parse_args(argv)
    args.modes = [m for m in MODES if m in args.modes.split(",")]
    return args


def failures(results: list[ModeResult]) -> list[str]:
    out = [f"{r.mode}: {k}: {v}" for r in results for k, v in r.checks.items() if v.startswith("NO")]
    return out + [f"{r.mode}: {r.unbound_at_end} pods never bound" for r in results if r.unbound_at_end]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    results = asyncio.run(bench(args))
    text = markdown(results, args, argv)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
        say(f"wrote {args.markdown}")
    bad = failures(results)
    for line in bad:
        say(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
