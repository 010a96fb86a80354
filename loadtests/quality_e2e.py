"""`make bench-quality-e2e` (`python -m loadtests.quality_e2e`): GPU placement through the real kube-scheduler.

The trace benchmark (loadtests/trace_bench.py) measures placement in a simulator. This one measures what
users get: the same trace-shaped cluster (loadtests/trace_workload.py, the node and pod mix of the
Alibaba 2023 GPU trace) as kubelet-less Node objects on the local control plane (tests/e2e/harness.py:
etcd + kube-apiserver + kube-scheduler, real binaries), and the same seeded pod stream created **one at a
time**: each pod is bound, or its PodScheduled condition turns False with reason Unschedulable (seen on a
watch, not polled), in which case it is deleted and counted failed, before the next is created. Twice:

  1. kube-scheduler alone (config/kube-scheduler.yaml without its extender), and
  2. kube-scheduler with Berth as its extender, both exactly as shipped: the extender block of
     config/kube-scheduler.yaml (weight, nodeCacheCapable, ...; checked equal to the deployed one) and
     Berth's deploy/base/config/berth.yaml (scoring weights, cpu_strategy). See tests/e2e/shipped.py.

The measures are the simulator's (trace_bench's `Snapshot`, `stranded` and `tables`): allocation ratio at
100 % and 130 % arrived demand, pods and GPUs placed before the first failure, 8-GPU pods placed, GPUs in
use at the first 8-GPU failure, stranded GPUs by cause, CPU-only pods on all-idle GPU nodes; and beside
them what only a real run shows (CPU-only pods on 8-GPU nodes, time per pod, how fast Unschedulable is
seen). A mirror of the cluster (trace_policies' `SimCluster`) is fed every bind: the node from
`spec.nodeName`, the devices from Berth's `berth.dev/gpu-ids` (kube-scheduler alone names no devices: the
lowest idle GPUs, the best-fitting GPU for a fraction, as the simulator's baselines take them).

    python -m loadtests.quality_e2e --scale 0.1               # ~120 nodes, ~1,000 pods per run: minutes
    python -m loadtests.quality_e2e                           # 1,213 nodes, ~10,000 pods per run: long
    python -m loadtests.quality_e2e --sharing on --scale 0.1  # time-slicing replicas (docs/sharing.md)

Model constraints ride on each pod twice, so both schedulers honour them: `berth.dev/gpu-models` (Berth's
own annotation) and a required node affinity on `nvidia.com/gpu.product` (what kube-scheduler alone can
read). percentageOfNodesToScore stays unset as shipped (kube-scheduler's adaptive default: at 1,213 nodes
it stops after ~40 % of the nodes pass its filters; `--percentage 100` to score all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadtests.throughput import Api, wait_for
from loadtests.trace_bench import TARGETS, RunResult, Snapshot, classes, machine, render, spread, stranded, tables
from loadtests.trace_policies import SHARE_REPLICAS, Ask, Placement, SimCluster, shared_node_dict
from loadtests.trace_workload import MILLI, VARIANTS, NodeSpec, Stream, TracePod, arrivals, cluster, node_dict, pod_pool
from scheduler.cluster import objects
from scheduler.model.names import LABEL_GPU_PRODUCT
from tests.e2e import harness as h
from tests.e2e import shipped

ALONE = "kube-scheduler"
WITH_BERTH = "kube-scheduler + berth"
SCHEDULER = "berth-scheduler"  # the shipped profile name; each run has its own kube-scheduler
ANN_GPU_IDS = "berth.dev/gpu-ids"
ANN_GPU_MODELS = "berth.dev/gpu-models"
SHARED_SUFFIX = "-SHARED"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- objects --------------------------------------------------------------------------------------------------
def node_object(node: NodeSpec, sharing: bool) -> dict[str, Any]:
    """The Node the simulator's Berth is fed (trace_workload.node_dict, built by the object factory), as a
    kubelet-less node: with sharing, the device plugin's time-slicing replicas (trace_policies)."""
    out = shared_node_dict(node) if sharing else node_dict(node)
    out["metadata"]["labels"]["berth.dev/bench"] = "quality-e2e"
    return out


def pod_object(pod: TracePod, sharing: bool) -> dict[str, Any]:
    """The pod as both schedulers see it. Without sharing a fraction asks for one whole GPU; with sharing
    GPUs are asked in replicas (one replica is one milli of a GPU, as on the shared nodes)."""
    if pod.gpus:
        gpus = pod.gpus * pod.gpu_milli * SHARE_REPLICAS // MILLI if sharing else pod.gpus
        res = objects.resources(f"{pod.cpu}m", f"{pod.mem}Mi", gpus)
    else:
        res = objects.resources(f"{pod.cpu}m", f"{pod.mem}Mi")
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 0}
    annotations: dict[str, str] = {}
    if pod.models:
        annotations[ANN_GPU_MODELS] = ",".join(pod.models)
        products = sorted({*pod.models, *(m + SHARED_SUFFIX for m in pod.models)})
        term = {"matchExpressions": [{"key": LABEL_GPU_PRODUCT, "operator": "In", "values": products}]}
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    main = objects.container("main", "registry.k8s.io/pause:3.10", res)
    return objects.pod(pod.name, [main], scheduler=SCHEDULER, annotations=annotations, spec=spec)


# -- watching one pod at a time --------------------------------------------------------------------------------
BOUND, UNSCHEDULABLE, DELETED = "bound", "unschedulable", "deleted"


def outcome(event_type: str, obj: dict[str, Any]) -> tuple[str, str] | None:
    """What an event says of a pod: bound, unschedulable (kube-scheduler's PodScheduled=False with reason
    Unschedulable), deleted, or nothing yet. Any other PodScheduled=False reason (SchedulerError: the
    extender failed) is an error of the run, not a placement result."""
    if event_type == "DELETED":
        return DELETED, ""
    if (obj.get("spec") or {}).get("nodeName"):
        return BOUND, obj["spec"]["nodeName"]
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            if c.get("reason") == "Unschedulable":
                return UNSCHEDULABLE, c.get("message", "")
            raise RuntimeError(f"pod {obj['metadata']['name']}: {c.get('reason')}: {c.get('message')}")
    return None


class PodWatch:
    """One watch on the run's namespace; `expect(name, wanted)` is set up before the pod is created (so no
    event can be missed) and resolves with the first event that matches. A watch the API server closes is
    resumed from the last resourceVersion, as an informer does."""

    def __init__(self, api: Api, ns: str, rv: str) -> None:
        self.api, self.ns, self.rv = api, ns, rv
        self.waiting: dict[str, tuple[frozenset[str], asyncio.Future[tuple[str, str, dict[str, Any]]]]] = {}
        self.rewatches = 0

    def expect(self, name: str, wanted: Sequence[str]) -> asyncio.Future[tuple[str, str, dict[str, Any]]]:
        fut: asyncio.Future[tuple[str, str, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self.waiting[name] = (frozenset(wanted), fut)
        return fut

    async def run(self) -> None:
        while True:
            async for event in self.api.watch(f"/api/v1/namespaces/{self.ns}/pods", self.rv):
                self._event(event)
            self.rewatches += 1

    def _event(self, event: dict[str, Any]) -> None:
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            raise RuntimeError(f"watch of {self.ns} failed: {obj.get('message')}")
        meta = obj.get("metadata") or {}
        self.rv = meta.get("resourceVersion") or self.rv
        waiting = self.waiting.get(meta.get("name", ""))
        if waiting is None or event.get("type") == "BOOKMARK":
            return
        wanted, fut = waiting
        try:
            seen = outcome(event["type"], obj)
        except RuntimeError as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if seen and seen[0] in wanted and not fut.done():
            del self.waiting[meta["name"]]
            fut.set_result((seen[0], seen[1], obj))


# -- one run -----------------------------------------------------------------------------------------------------
@dataclass
class E2EResult:
    """trace_bench's RunResult, plus what only a real run shows."""

    run: RunResult
    cpu_only: int = 0
    cpu_only_on_8gpu: int = 0  # CPU-only pods bound to a node with 8 GPUs
    bind_seconds: list[float] = field(default_factory=list)  # create -> seen bound
    unschedulable_seconds: list[float] = field(default_factory=list)  # create -> seen Unschedulable
    mismatches: int = 0  # binds the mirror could not take as given (see `mirror`)
    first_mismatch: str = ""
    wall: float = 0.0


class Mirror:
    """The simulator's cluster, fed what the API server says was bound."""

    def __init__(self, nodes: list[NodeSpec], sharing: bool) -> None:
        self.c = SimCluster(nodes)
        self.slot = {n.name: n.index for n in nodes}
        self.sharing = sharing

    def devices(self, s: int, ask: Ask, ann: str | None) -> tuple[int, ...]:
        """Berth's recorded GPUs; else the simulator baselines' choice (lowest idle; best-fitting GPU)."""
        if not ask.gpus:
            return ()
        if ann:
            return tuple(int(g) for g in ann.split(",") if g.strip())
        row, n = self.c.gpu[s], int(self.c.ngpu[s])
        if ask.milli >= MILLI:
            return tuple(self.c.idle_gpus(s)[: ask.gpus])
        fit = [g for g in range(n) if row[g] >= ask.milli]
        return (min(fit, key=lambda g: (row[g], g)),) if fit else ()

    def apply(self, ask: Ask, node: str, ann: str | None) -> tuple[Placement, str]:
        """Books the bind; returns the placement and, when the mirror disagrees with the scheduler (a
        device Berth named is not free here, or kube-scheduler alone put a shared pod where no single GPU
        has room: it counts replicas per node, not per GPU), why, after booking it as near as it can."""
        s = self.slot[node]
        p = Placement(s, self.devices(s, ask, ann))
        if self.c.fits(ask, p):
            self.c.apply(ask, p)
            return p, ""
        c = self.c
        c.cpu[s] -= ask.cpu
        c.mem[s] -= ask.mem
        c.pods[s] += 1
        need = ask.gpus * ask.milli
        for g in sorted(range(int(c.ngpu[s])), key=lambda g: -c.gpu[s, g]):
            take = min(int(c.gpu[s, g]), need)
            c.gpu[s, g] -= take
            need -= take
        return p, f"{ask.pod.name} on {node} (devices {p.gpu_ids or '-'}): not free in the mirror"


async def place_one(
    api: Api, watch: PodWatch, ns: str, pod: TracePod, sharing: bool, timeout: float
) -> tuple[str, str, dict[str, Any], float]:
    """Create the pod, wait for bound or Unschedulable; an unschedulable pod is deleted (and seen gone)."""
    fut = watch.expect(pod.name, (BOUND, UNSCHEDULABLE))
    t0 = time.monotonic()
    await api.request("POST", f"/api/v1/namespaces/{ns}/pods", orjson.dumps(pod_object(pod, sharing)))
    try:
        what, detail, obj = await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        raise TimeoutError(f"{pod.name}: neither bound nor Unschedulable after {timeout:.0f} s") from None
    took = time.monotonic() - t0
    if what == UNSCHEDULABLE:
        gone = watch.expect(pod.name, (DELETED,))
        await api.request(
            "DELETE", f"/api/v1/namespaces/{ns}/pods/{pod.name}", params={"gracePeriodSeconds": "0"}, ok=(200, 202, 404)
        )
        await asyncio.wait_for(gone, timeout)
    return what, detail, obj, took


async def run_stream(
    api: Api,
    ns: str,
    name: str,
    nodes: list[NodeSpec],
    stream: Stream,
    sharing: bool,
    seed: int,
    args: argparse.Namespace,
) -> E2EResult:
    """trace_bench.run_one, with kube-scheduler placing each pod."""
    mirror = Mirror(nodes, sharing)
    c = mirror.c
    res = E2EResult(RunResult(name, sharing, seed, c.total_gpus, args.variant))
    result = res.run
    rv = (await api.get(f"/api/v1/namespaces/{ns}/pods", {"limit": "1"}))["metadata"]["resourceVersion"]
    watch = PodWatch(api, ns, rv)
    watcher = asyncio.create_task(watch.run())
    cuts = {at: target for target, at in stream.cuts.items()}
    snap, failed, first_failure = Snapshot(), [], False
    t0 = time.monotonic()
    try:
        for i, pod in enumerate(stream.pods):
            if watcher.done():
                watcher.result()  # raises what ended the watch
                raise RuntimeError("the watch ended")
            ask = Ask.of(pod, sharing)
            snap.arrived += 1
            snap.gpu8_arrived += pod.gpus == 8
            what, detail, obj, took = await place_one(api, watch, ns, pod, sharing, args.pod_timeout)
            if what == UNSCHEDULABLE:
                res.unschedulable_seconds.append(took)
                failed.append(ask)
                for cls in classes(pod):
                    snap.failed_by[cls] = snap.failed_by.get(cls, 0) + 1
                if not first_failure:
                    first_failure = True
                    result.before_failure_pods, result.before_failure_gpus = snap.placed, snap.requested
                if pod.gpus == 8 and result.in_use_at_8gpu_failure is None:
                    result.in_use_at_8gpu_failure = snap.occupied / c.total_gpus
            else:
                res.bind_seconds.append(took)
                s = mirror.slot[detail]
                _count(c, ask, s, snap)
                if not ask.gpus:
                    res.cpu_only += 1
                    res.cpu_only_on_8gpu += int(c.ngpu[s]) == 8
                ann = (obj["metadata"].get("annotations") or {}).get(ANN_GPU_IDS)
                _, why = mirror.apply(ask, detail, ann)
                if name == WITH_BERTH and ask.gpus and not ann:  # Berth binds and always names the devices
                    why = why or f"{pod.name} bound without {ANN_GPU_IDS}: not by Berth's bind"
                if why:
                    res.mismatches += 1
                    res.first_mismatch = res.first_mismatch or why
            if i + 1 in cuts:
                result.at[cuts[i + 1]] = _close(c, failed, snap)
            if (i + 1) % args.progress == 0:
                say(
                    f"  {name}: {i + 1}/{len(stream.pods)} pods, {snap.placed} placed, "
                    f"{100 * snap.requested / c.total_gpus:.1f}% GPUs allocated, {time.monotonic() - t0:.0f} s"
                )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
    res.wall = time.monotonic() - t0
    result.seconds = res.wall
    if not first_failure:
        result.before_failure_pods, result.before_failure_gpus = snap.placed, snap.requested
    return res


def _count(c: SimCluster, ask: Ask, s: int, snap: Snapshot) -> None:
    """trace_bench's count of a placed pod (before it is booked)."""
    snap.placed += 1
    snap.requested += ask.pod.gpu_request
    snap.occupied += ask.gpus * ask.milli / MILLI
    snap.gpu8_placed += ask.gpus == 8
    if not ask.gpus and c.ngpu[s] and (c.gpu[s, : c.ngpu[s]] == MILLI).all():
        snap.cpu_only_on_idle += 1


def _close(c: SimCluster, failed: list[Ask], snap: Snapshot) -> Snapshot:
    out = Snapshot(**{**vars(snap), "failed_by": dict(snap.failed_by)})
    stranded(c, failed, out)
    return out


# -- the control plane, the schedulers, Berth --------------------------------------------------------------------
@dataclass
class Plane:
    cp: h.ControlPlane
    api: Api
    berth_kubeconfig: Path


async def create_nodes(plane: Plane, nodes: list[NodeSpec], sharing: bool) -> None:
    api = plane.api
    await api.create_all("/api/v1/nodes", [orjson.dumps(node_object(n, sharing)) for n in nodes])
    probe = await api.get(f"/api/v1/nodes/{nodes[0].name}")
    if not (probe.get("status") or {}).get("allocatable"):
        raise RuntimeError("kube-apiserver dropped the nodes' status on create: no allocatable to schedule on")


async def delete_nodes(plane: Plane) -> None:
    await plane.api.request("DELETE", "/api/v1/nodes", params={"labelSelector": "berth.dev/bench=quality-e2e"})

    async def none_left() -> bool:
        items = (await plane.api.get("/api/v1/nodes", {"labelSelector": "berth.dev/bench=quality-e2e", "limit": "1"}))[
            "items"
        ]
        return not items

    await wait_for(none_left, 120, "the benchmark's nodes to be deleted", every=0.5)


async def start_berth(plane: Plane, run_dir: Path, expect_nodes: int) -> tuple[h.Proc, str]:
    port = h.free_port()
    cfg = shipped.berth_config(run_dir / f"berth-{port}.yaml", port)
    proc = h.start_berth(plane.cp, plane.berth_kubeconfig, port, name=f"berth-{port}", extra=["--config", str(cfg)])
    url = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(h.wait_ready, url, proc, 180)

    async def synced() -> bool:
        return bool((await plane.api.get(f"{url}/debug/state"))["nodes"] == expect_nodes)

    await wait_for(synced, 120, f"Berth to hold {expect_nodes} nodes")
    return proc, url


async def warm_up(api: Api, ns: str, sched: h.Proc) -> None:
    """One small pod through the new kube-scheduler: proves it (and Berth) synced; then it is deleted."""
    body = objects.pod(
        "warm-up",
        [objects.container("main", "registry.k8s.io/pause:3.10", objects.resources("10m", "16Mi"))],
        scheduler=SCHEDULER,
        spec={"terminationGracePeriodSeconds": 0},
    )
    await api.request("POST", f"/api/v1/namespaces/{ns}/pods", orjson.dumps(body))

    async def bound() -> bool:
        if not sched.alive:
            raise RuntimeError(f"{sched.name} exited:\n{sched.tail()}")
        return bool((await api.get(f"/api/v1/namespaces/{ns}/pods/warm-up"))["spec"].get("nodeName"))

    await wait_for(bound, 180, f"{sched.name} to bind a warm-up pod")
    await api.request("DELETE", f"/api/v1/namespaces/{ns}/pods/warm-up", params={"gracePeriodSeconds": "0"})

    async def gone() -> bool:
        return not (await api.get(f"/api/v1/namespaces/{ns}/pods", {"limit": "1"}))["items"]

    await wait_for(gone, 60, "the warm-up pod to go")


async def berth_empty(api: Api, url: str) -> None:
    async def empty() -> bool:
        s = await api.get(f"{url}/debug/state")
        return bool(s["pods"] == 0 and s["reservations"] == 0)

    await wait_for(empty, 60, "Berth's ledger to drop the warm-up pod")


async def one_mode(
    plane: Plane, name: str, nodes: list[NodeSpec], stream: Stream, sharing: bool, seed: int, args: argparse.Namespace
) -> E2EResult:
    """A fresh namespace and kube-scheduler (and Berth, for its run); the stream; then everything deleted."""
    api, cp = plane.api, plane.cp
    tag = f"{'b' if name == WITH_BERTH else 'a'}{seed}{'s' if sharing else 'w'}-{int(time.time()) % 100000}"
    ns = f"quality-{tag}"
    await api.request("POST", "/api/v1/namespaces", orjson.dumps({"metadata": {"name": ns}}))
    berth: h.Proc | None = None
    sched: h.Proc | None = None
    try:
        url = None
        if name == WITH_BERTH:
            berth, url = await start_berth(plane, cp.dir, len(nodes))
        cfg = shipped.scheduler_config(cp, cp.dir / f"sched-{tag}.yaml", SCHEDULER, url, args.percentage)
        sched = h.start_scheduler(cp, f"kube-scheduler-{tag}", cfg)
        await warm_up(api, ns, sched)
        if url:
            await berth_empty(api, url)
        say(f"{name}, seed {seed}, {'sharing' if sharing else 'whole GPUs'}: {len(stream.pods)} pods, one at a time")
        res = await run_stream(api, ns, name, nodes, stream, sharing, seed, args)
    finally:
        if sched:
            sched.stop()
        if berth:
            berth.stop()
    await api.request("DELETE", f"/api/v1/namespaces/{ns}/pods", params={"gracePeriodSeconds": "0"})

    async def empty() -> bool:
        return not (await api.get(f"/api/v1/namespaces/{ns}/pods", {"limit": "1"}))["items"]

    await wait_for(empty, 300, f"the pods of {ns} to be deleted", every=0.5)
    return res


async def bench(args: argparse.Namespace) -> list[E2EResult]:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM: unwind, so the control plane and schedulers are stopped
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    shipped.extender_settings()  # fail early when the shipped configs disagree
    cp = h.ControlPlane(workload_api=False).start()  # the alpha gang API slows pod admission
    out: list[E2EResult] = []
    try:
        kubeconfig = cp.install_berth_identity()
        async with Api(cp.url, cp.ADMIN_TOKEN, args.concurrency) as api:
            plane = Plane(cp, api, kubeconfig)
            for seed in args.seeds:
                nodes = cluster(seed, scale=args.scale)
                pool = pod_pool(seed, args.pods, args.variant)
                stream = arrivals(pool, sum(n.gpus for n in nodes), args.targets, seed)
                for sharing in args.sharing_modes:
                    await create_nodes(plane, nodes, sharing)
                    for name in args.modes:
                        r = await one_mode(plane, name, nodes, stream, sharing, seed, args)
                        out.append(r)
                        say(describe(r))
                    await delete_nodes(plane)
    finally:
        cp.stop()
        if args.keep:
            say(f"logs kept in {cp.dir}")
        else:
            h.cleanup(cp.dir)
    return out


# -- report --------------------------------------------------------------------------------------------------------
def describe(r: E2EResult) -> str:
    x = r.run
    hi = max(x.at) if x.at else None
    alloc = f"{100 * x.at[hi].requested / x.gpus:.1f}% allocated at {hi:.0%}" if hi else "no snapshot"
    return (
        f"{x.policy}, seed {x.seed}: {alloc}; {r.wall:.0f} s ({_ms(r.bind_seconds)} ms per bind, "
        f"{_ms(r.unschedulable_seconds)} ms to Unschedulable); mirror mismatches {r.mismatches}"
    )


def _ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.0f}" if values else "-"


def extra_table(results: list[E2EResult], sharing: bool, modes: Sequence[str]) -> list[str]:
    head = [
        "scheduler",
        "CPU-only pods on 8-GPU nodes",
        "CPU-only pods on all-idle GPU nodes @130%",
        "pods per run",
        "median ms create -> bound",
        "median ms create -> Unschedulable",
        "run seconds",
        "mirror mismatches",
    ]
    body = []
    hi = max(TARGETS)
    for name in modes:
        rs = [r for r in results if r.run.policy == name and r.run.sharing == sharing]
        if not rs:
            continue
        body.append(
            [
                name,
                spread([100 * r.cpu_only_on_8gpu / max(r.cpu_only, 1) for r in rs])
                + " % of "
                + spread([r.cpu_only for r in rs], "{:.0f}"),
                spread([r.run.at[hi].cpu_only_on_idle for r in rs if hi in r.run.at], "{:.0f}"),
                spread([r.run.at[hi].arrived for r in rs if hi in r.run.at], "{:.0f}"),
                spread([1000 * statistics.median(r.bind_seconds) for r in rs if r.bind_seconds], "{:.0f}"),
                spread(
                    [1000 * statistics.median(r.unschedulable_seconds) for r in rs if r.unschedulable_seconds], "{:.0f}"
                ),
                spread([r.wall for r in rs], "{:.0f}"),
                spread([r.mismatches for r in rs], "{:.0f}")
                + (f" (first: {rs[0].first_mismatch})" if rs[0].first_mismatch else ""),
            ]
        )
    return render(head, body)


def report(args: argparse.Namespace, results: list[E2EResult], argv: Sequence[str], wall: float) -> str:
    nodes = cluster(args.seeds[0], scale=args.scale)
    gpus = sum(n.gpus for n in nodes)
    ext = shipped.extender_settings()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    lines = [
        "# GPU placement through the real kube-scheduler: alone vs with Berth (trace-shaped cluster)",
        "",
        f"- command: `{shlex.join(['python', '-m', 'loadtests.quality_e2e', *argv])}`",
        f"- date: {stamp}; machine: {machine()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}; wall time {wall:.0f} s",
        f"- seeds: {', '.join(map(str, args.seeds))}; scale {args.scale} of the trace's node mix: {len(nodes)} "
        f"kubelet-less nodes, {gpus} GPUs; `{args.variant}` pod mix, a pool of {args.pods} pods, shuffled, "
        f"arriving until the GPUs asked reach {' and '.join(f'{t:.0%}' for t in args.targets)} of the "
        "cluster's; each pod bound or Unschedulable (then deleted, counted failed) before the next; no departures",
        f"- kube-scheduler {h.k8s_bin().name} as shipped (config/kube-scheduler.yaml); extender: weight "
        f"{ext.get('weight')}, nodeCacheCapable {ext.get('nodeCacheCapable')}, httpTimeout {ext.get('httpTimeout')}, "
        f"ignorable {ext.get('ignorable')}; percentageOfNodesToScore "
        f"{args.percentage if args.percentage is not None else 'unset (adaptive, as shipped)'}",
        f"- Berth: deploy/base/config/berth.yaml, scoring {orjson.dumps(shipped.berth_scoring()).decode()}; "
        "kube-scheduler alone: the same file without the extender",
        "- measures as in loadtests/trace_bench.py (docs/benchmarks/trace.md); 'stranded': free GPUs on nodes "
        "where some failed GPU pod fits but for its model, else CPU, else memory",
        "",
    ]
    for sharing in args.sharing_modes:
        title = (
            "with GPU sharing (time-slicing replicas)"
            if sharing
            else "without GPU sharing (a fraction holds a whole GPU)"
        )
        lines += [f"## {title}", ""]
        runs = [r.run for r in results]
        lines += tables(runs, args.modes, sharing, args.targets, args.variant)
        lines += ["", *extra_table(results, sharing, args.modes), ""]
        if sharing:
            lines += [
                "kube-scheduler alone counts replicas per node, not per GPU: a pod it binds may have no single "
                "GPU with room (then 'mirror mismatches' counts it, and its replicas are booked across GPUs).",
                "",
            ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.quality_e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="share of the trace's node mix (default 1: 1,213 nodes)")
    p.add_argument("--pods", type=int, help="pods in the pool (default 8150 x scale)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (default 1)")
    p.add_argument("--variant", default="default", choices=VARIANTS, help="pod mix (default: default)")
    p.add_argument("--sharing", choices=["off", "on", "both"], default="off", help="GPU sharing (default off)")
    p.add_argument("--modes", default=f"{ALONE},{WITH_BERTH}", help="which schedulers to run, comma-separated")
    p.add_argument("--percentage", type=int, help="percentageOfNodesToScore (default: unset, as shipped)")
    p.add_argument("--pod-timeout", type=float, default=60, help="seconds one pod may take to bind or fail")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent POSTs when creating nodes")
    p.add_argument("--progress", type=int, default=250, help="a progress line every N pods")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the report as Markdown")
    p.add_argument("--keep", action="store_true", help="keep the control plane's directory (logs)")
    args = p.parse_args(argv)
    if not 0 < args.scale <= 1:
        p.error("--scale: above 0, at most 1")
    args.pods = args.pods or max(100, round(8150 * args.scale))
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.sharing_modes = {"off": [False], "on": [True], "both": [False, True]}[args.sharing]
    args.modes = [m for m in args.modes.split(",") if m]
    if any(m not in (ALONE, WITH_BERTH) for m in args.modes):
        p.error(f"--modes: of {ALONE!r}, {WITH_BERTH!r}")
    args.targets = TARGETS
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.monotonic()
    results = asyncio.run(bench(args))
    text = report(args, results, argv, time.monotonic() - started)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
        say(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
