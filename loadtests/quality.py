"""`python -m loadtests.quality`: how well Berth places GPU pods, against kube-scheduler's default.

A seeded stream of 1/2/4/8-GPU pods arrives (Poisson) and departs (exponential lifetimes) on a cluster of
8-GPU nodes, half with two 4-GPU NVLink islands and half with one 8-GPU NVSwitch island. The same stream
is replayed twice in one run:

- **berth**: Berth's own path: `placement.judge`, `run_filter`, `run_score` (the kernels Berth serves
  with) and `Binder.bind`, which picks the devices;
- **least-allocated**: kube-scheduler's default scoring, NodeResourcesFit LeastAllocated over cpu, memory
  and nvidia.com/gpu (weight 1 each, its integer arithmetic), with devices taken lowest free index first
  as the NVIDIA device plugin does without topology awareness.

Both take the highest-scoring feasible node (ties: the lowest node name). A pod that fits nowhere is
tried again a few times as pods leave, the same for both, then counted as unplaced.

    python -m loadtests.quality                          # 512 nodes, 50,000 arrivals: ~20 s with the native kernels
    python -m loadtests.quality --nodes 64 --events 500  # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import heapq
import random
import shlex
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.report import render
from scheduler import kernels
from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState, pod_key
from scheduler.config import Config
from scheduler.demo import make_node, make_pod
from scheduler.kernels._python import lowest_bits
from scheduler.model.binding import BindingArgs
from scheduler.model.constants import TOPOLOGY_NONE
from scheduler.model.podspec import PodAsk, PodRequest, pod_ask
from scheduler.policy.binder import Binder
from scheduler.policy.placement import judge, run_filter, run_score

GPUS = 8
MODEL = "NVIDIA-A100-SXM4-80GB"
NVLINK_2X4 = [[0, 1, 2, 3], [4, 5, 6, 7]]
NVSWITCH_8 = [list(range(GPUS))]
NODE_CPU, NODE_MEM_GI = 96, 1024
# Per GPU asked: 10 cores and 100 GiB, so GPUs always run out before a node's CPU or memory.
CPU_PER_GPU, MEM_GI_PER_GPU = 10, 100
MIX: tuple[tuple[int, float], ...] = ((1, 0.40), (2, 0.25), (4, 0.20), (8, 0.15))
SIZES = tuple(size for size, _ in MIX)
NAMESPACE = "quality"  # of no team: quotas admit every pod, so only placement differs
RETRIES = 3  # tries after the first, RETRY_DELAY mean lifetimes apart
RETRY_DELAY = 0.1
WARMUP = 0.2  # share of arrivals before measuring starts: the cluster fills up from empty first
DEPART, TRY = 0, 1  # event kinds; at equal times departures go first, so a freed node is seen at once
POLICIES = ("berth", "least-allocated")


# --------------------------------------------------------------------------------------------------
# Cluster and workload
# --------------------------------------------------------------------------------------------------


def cluster(nodes: int) -> list[dict[str, Any]]:
    """Even nodes: two 4-GPU NVLink islands; odd nodes: one 8-GPU NVSwitch island."""
    return [
        make_node(
            f"gpu-{i:04d}",
            "gpu",
            NODE_CPU,
            NODE_MEM_GI,
            GPUS,
            MODEL,
            NVLINK_2X4 if i % 2 == 0 else NVSWITCH_8,
            None,
            "",
            f"zone-{i % 3 + 1}",
        )
        for i in range(nodes)
    ]


@dataclass(frozen=True, slots=True)
class Job:
    index: int
    arrival: float  # in mean lifetimes
    lifetime: float  # counted from placement
    gpus: int


def workload(seed: int, nodes: int, events: int, load: float) -> list[Job]:
    """`events` arrivals offering `load` of the cluster's GPUs on average (Little's law)."""
    rng = random.Random(seed)
    mean_gpus = sum(size * share for size, share in MIX)
    rate = load * nodes * GPUS / mean_gpus  # arrivals per mean lifetime
    weights = [share for _, share in MIX]
    jobs, now = [], 0.0
    for i in range(events):
        now += rng.expovariate(rate)
        jobs.append(Job(i, now, rng.expovariate(1.0), rng.choices(SIZES, weights)[0]))
    return jobs


def job_ask(job: Job) -> PodAsk:
    """The pod as kube-scheduler would send it; multi-GPU pods prefer (never require) one island."""
    annotations = {"berth.dev/topology": "preferred"} if job.gpus > 1 else None
    pod = make_pod(
        NAMESPACE,
        f"job-{job.index:06d}",
        None,
        str(CPU_PER_GPU * job.gpus),
        f"{MEM_GI_PER_GPU * job.gpus}Gi",
        job.gpus,
        annotations,
    )
    return pod_ask(pod)


# --------------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------------


class Policy:
    """A ClusterState fed with the nodes through the informer path, and nodes in name order."""

    name = ""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.state = ClusterState(Config())
        for node in nodes:
            self.state.apply_node("ADDED", node)
        t = self.state.table
        self.names = sorted(t.slot_of)
        self.slots = array("i", [t.slot_of[n] for n in self.names])

    async def place(self, ask: PodAsk) -> int | None:
        """Bind the pod; its node's slot, or None when no node fits."""
        raise NotImplementedError

    def release(self, ask: PodAsk) -> None:
        self.state.apply_pod("DELETED", {"metadata": {"namespace": ask.namespace, "name": ask.name}})


def first_best(verdicts: bytearray, scores: Sequence[int]) -> int:
    """The highest score among feasible nodes, the first (lowest name) among equals; -1 if none."""
    top, at = -1, -1
    for i, v in enumerate(verdicts):
        if v == kernels.OK and scores[i] > top:
            top, at = scores[i], i
    return at


class BerthPolicy(Policy):
    name = "berth"

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        super().__init__(nodes)
        self.binder = Binder(self.state, None, None)  # no API server: binds are recorded in memory

    async def place(self, ask: PodAsk) -> int | None:
        state = self.state
        state.seen.remember(ask)  # what the filter handler records: bind gets only names
        j = judge(state, ask)
        verdicts, passed = run_filter(state, j, self.slots)
        if not passed:
            return None
        # As kube-scheduler does: prioritize is sent only the nodes filter passed (scores are normalised
        # over the candidates), so nodes that failed score nothing here.
        ok = array("i", [s if v == kernels.OK else -1 for s, v in zip(self.slots, verdicts, strict=True)])
        at = first_best(verdicts, run_score(state, j, ok, now=0.0))
        await self.binder.bind(BindingArgs(ask.name, ask.namespace, ask.uid, self.names[at]))
        return self.slots[at]


def least_allocated(t: Any, s: int, r: PodRequest) -> int:
    """NodeResourcesFit LeastAllocated (pkg/scheduler/framework/plugins/noderesources/least_allocated.go):
    per resource (alloc - requested) * 100 // alloc, then the weighted mean, all in integers."""
    score = weights = 0
    for alloc, requested in (
        (t.alloc_cpu[s], t.used_cpu[s] + r.cpu),
        (t.alloc_mem[s], t.used_mem[s] + r.memory),
        (t.alloc_gpu[s], t.used_gpu[s] + r.gpu),
    ):
        if alloc == 0:
            continue  # a resource the node lacks is left out of the mean, as kube-scheduler does
        score += (alloc - requested) * 100 // alloc if requested <= alloc else 0
        weights += 1
    return score // weights if weights else 0


def lowest_free(free: int, n: int) -> int:
    """The device plugin's choice without topology: the `n` lowest free indices."""
    return lowest_bits(free, n)


class LeastAllocatedPolicy(Policy):
    name = "least-allocated"

    async def place(self, ask: PodAsk) -> int | None:
        t = self.state.table
        r = ask.request
        out = bytearray(len(self.slots))
        # With no quotas and no topology requirement the filter kernel is exactly NodeResourcesFit's
        # Filter (pods, cpu, memory, GPUs): reuse it for speed.
        if not kernels.filter_nodes(
            t, self.slots, r.cpu, r.memory, r.gpu, TOPOLOGY_NONE, b"\x01" * (len(t.pools) + 1), b"", out
        ):
            return None
        scores = [least_allocated(t, s, r) if v == kernels.OK else 0 for s, v in zip(self.slots, out, strict=True)]
        at = first_best(out, scores)
        s = self.slots[at]
        devices = lowest_free(t.free_gpus(s), r.gpu)
        self.state.ledger.hold(
            PodEntry(
                key=pod_key(ask.namespace, ask.name),
                uid=ask.uid,
                node=self.names[at],
                request=r,
                priority=0,
                team=None,
                borrowing=False,
                gpu_ids=devices,
                confirmed=True,
            )
        )
        return s


# --------------------------------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    policy: str
    gpus: int  # in the cluster
    arrived: dict[int, int]  # pods that arrived in the measured window, by GPU count
    placed: dict[int, int]  # ... of which placed (at any try)
    first_try: dict[int, int]  # ... placed at their first try
    in_island: dict[int, int]  # ... placed with all their devices inside one NVLink island
    stranded: float  # time-average of free GPUs on partly used nodes
    busy: float  # time-average of GPUs in use
    seconds: float = field(default=0.0, compare=False)  # wall time: not part of the (deterministic) result

    def placed_share(self, sizes: Sequence[int] = SIZES, first_try: bool = False) -> float:
        arrived = sum(self.arrived[s] for s in sizes)
        placed = self.first_try if first_try else self.placed
        return sum(placed[s] for s in sizes) / arrived if arrived else 0.0

    def island_share(self, sizes: Sequence[int] = (2, 4, 8)) -> float:
        placed = sum(self.placed[s] for s in sizes)
        return sum(self.in_island[s] for s in sizes) / placed if placed else 0.0


class Meter:
    """Per-size counts of the pods that arrive in the window [start, end], and GPU-time integrals over it."""

    def __init__(self, table: Any, start: float, end: float) -> None:
        self.t = table
        self.start, self.end = start, end
        self.counts = {k: dict.fromkeys(SIZES, 0) for k in ("arrived", "placed", "first_try", "in_island")}
        self.stranded = self.busy = 0  # at the current time
        self.stranded_time = self.busy_time = 0.0
        self.last = 0.0

    def advance(self, now: float) -> None:
        lo, hi = max(self.last, self.start), min(now, self.end)
        if hi > lo:
            self.stranded_time += self.stranded * (hi - lo)
            self.busy_time += self.busy * (hi - lo)
        self.last = now

    def stranded_on(self, s: int) -> int:
        """Free GPUs of a partly used node: no 8-GPU pod can use them until the node empties."""
        used = self.t.used_gpu[s]
        return self.t.alloc_gpu[s] - used if used else 0

    def change(self, s: int, before_stranded: int, before_used: int) -> None:
        self.stranded += self.stranded_on(s) - before_stranded
        self.busy += self.t.used_gpu[s] - before_used

    def count(self, kind: str, gpus: int) -> None:
        self.counts[kind][gpus] += 1

    def in_one_island(self, s: int, devices: int) -> bool:
        return any(devices & ~island == 0 for island in self.t.island_masks(s))

    def result(self, policy: str) -> Result:
        span = self.end - self.start
        return Result(
            policy,
            sum(self.t.alloc_gpu[s] for s in self.t.slot_of.values()),
            **self.counts,
            stranded=self.stranded_time / span if span > 0 else 0.0,
            busy=self.busy_time / span if span > 0 else 0.0,
        )


async def replay(policy: Policy, jobs: list[Job], asks: list[PodAsk]) -> Result:
    """Arrivals, retries and departures in time order (departures first at equal times)."""
    t = policy.state.table
    meter = Meter(t, jobs[int(len(jobs) * WARMUP)].arrival, jobs[-1].arrival)
    events = [(job.arrival, TRY, job.index, 0) for job in jobs]  # (time, kind, job, tries before)
    heapq.heapify(events)
    placed_on: dict[int, int] = {}
    tries_left = len(jobs)
    while events and tries_left:  # once nothing waits to be placed, departures change no result
        now, kind, index, tries = heapq.heappop(events)
        meter.advance(now)
        job, ask = jobs[index], asks[index]
        measured = job.arrival >= meter.start
        if kind == DEPART:
            s = placed_on.pop(index)
            before = meter.stranded_on(s), t.used_gpu[s]
            policy.release(ask)
            meter.change(s, *before)
            continue
        tries_left -= 1
        if measured and tries == 0:
            meter.count("arrived", job.gpus)
        s = await _place(policy, ask, meter)
        if s is not None:
            placed_on[index] = s
            heapq.heappush(events, (now + job.lifetime, DEPART, index, 0))
            if measured:
                _count_placed(meter, policy, ask, job, s, tries)
        elif tries < RETRIES:
            heapq.heappush(events, (now + RETRY_DELAY, TRY, index, tries + 1))
            tries_left += 1
    return meter.result(policy.name)


async def _place(policy: Policy, ask: PodAsk, meter: Meter) -> int | None:
    # The node is not known before placing: measure every node's share of what changes afterwards.
    s = await policy.place(ask)
    if s is not None:
        t = policy.state.table
        used_before = t.used_gpu[s] - ask.request.gpu
        free_before = t.alloc_gpu[s] - used_before
        meter.change(s, free_before if used_before else 0, used_before)
    return s


def _count_placed(meter: Meter, policy: Policy, ask: PodAsk, job: Job, s: int, tries: int) -> None:
    meter.count("placed", job.gpus)
    if tries == 0:
        meter.count("first_try", job.gpus)
    entry = policy.state.ledger.get(pod_key(ask.namespace, ask.name))
    if job.gpus > 1 and entry is not None and meter.in_one_island(s, entry.gpu_ids):
        meter.count("in_island", job.gpus)


def run(
    nodes: int = 512, events: int = 50_000, seed: int = 1, load: float = 0.9, policies: Sequence[str] = POLICIES
) -> list[Result]:
    """Replay one seeded workload through each policy; deterministic for a seed."""
    jobs = workload(seed, nodes, events, load)
    asks = [job_ask(job) for job in jobs]
    shape = cluster(nodes)
    kinds = {"berth": BerthPolicy, "least-allocated": LeastAllocatedPolicy}
    results = []
    for name in policies:
        policy = kinds[name](shape)
        started = time.perf_counter()
        result = asyncio.run(replay(policy, jobs, asks))
        result.seconds = time.perf_counter() - started
        results.append(result)
    return results


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else ("1.00" if a == b else "inf")


def rows(berth: Result, base: Result) -> list[list[str]]:
    """(metric, berth, baseline, berth / baseline) for the three metrics, then context."""
    out = []

    def add(label: str, a: float, b: float, fmt: Any = _pct) -> None:
        out.append([label, fmt(a), fmt(b), _ratio(a, b)])

    add("8-GPU pods placed (higher is better)", berth.placed_share((8,)), base.placed_share((8,)))
    gpus = berth.gpus

    def stranded(x: float) -> str:
        return f"{x:.1f} ({_pct(x / gpus)} of GPUs)"

    add("GPUs stranded on partly used nodes, time average (lower is better)", berth.stranded, base.stranded, stranded)
    add("multi-GPU pods inside one NVLink island (higher is better)", berth.island_share(), base.island_share())
    for size in (2, 4, 8):
        add(f"- {size}-GPU pods inside one island", berth.island_share((size,)), base.island_share((size,)))
    add("8-GPU pods placed at first try", berth.placed_share((8,), True), base.placed_share((8,), True))
    add("all pods placed", berth.placed_share(), base.placed_share())
    add("GPUs busy, time average", berth.busy / gpus, base.busy / gpus)
    return out


def describe(args: argparse.Namespace, results: list[Result]) -> list[str]:
    nvlink = (args.nodes + 1) // 2
    mix = ", ".join(f"{int(share * 100)}% {size}-GPU" for size, share in MIX)
    timing = ", ".join(f"{r.policy} {r.seconds:.1f} s" for r in results)
    return [
        f"cluster: {args.nodes} nodes x {GPUS} GPUs ({args.nodes * GPUS} GPUs): {nvlink} nodes with two 4-GPU "
        f"NVLink islands, {args.nodes - nvlink} with one 8-GPU NVSwitch island",
        f"workload: {args.events} pod arrivals (Poisson), exponential lifetimes, {mix}; offered load "
        f"{_pct(args.load)} of the GPUs; {CPU_PER_GPU} cores and {MEM_GI_PER_GPU} GiB per GPU; multi-GPU pods "
        "ask berth.dev/topology: preferred",
        f"a pod that fits nowhere is tried {RETRIES} more times, {RETRY_DELAY} mean lifetimes apart; the first "
        f"{_pct(WARMUP)} of arrivals fill the cluster and are not measured",
        "stranded GPUs: free GPUs on nodes with at least one GPU in use (no 8-GPU pod can use them), "
        "averaged over time",
        "baseline: kube-scheduler NodeResourcesFit LeastAllocated over cpu, memory, nvidia.com/gpu (weight 1 "
        "each), devices lowest free index first; both policies take the best-scoring node, ties to the "
        "lowest name",
        f"kernels: {'native (Cython)' if kernels.NATIVE else 'pure-Python twins'}; seed {args.seed}; "
        f"wall time: {timing}",
    ]


def report(args: argparse.Namespace, results: list[Result], markdown: bool) -> str:
    by = {r.policy: r for r in results}
    table = render(
        ["metric", "berth", "least-allocated", "berth / least-allocated"],
        rows(by["berth"], by["least-allocated"]),
        markdown,
    )
    notes = describe(args, results)
    if markdown:
        return "\n".join(["# berth placement quality", "", *(f"- {n}" for n in notes), "", table, ""])
    return "\n".join([table, "", *notes])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=512, help="8-GPU nodes (default 512)")
    parser.add_argument("--events", type=int, default=50_000, help="pod arrivals to replay (default 50000)")
    parser.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    # 0.9 keeps Berth's cluster ~90% busy: full enough that fragmentation decides who gets placed.
    parser.add_argument(
        "--load", type=float, default=0.9, help="offered GPU load as a share of the cluster's GPUs (default 0.9)"
    )
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the report as Markdown")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.quality", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.events < 10 or not 0 < args.load <= 2:
        parser.error("need --nodes >= 2, --events >= 10 and 0 < --load <= 2")
    results = run(args.nodes, args.events, args.seed, args.load)
    print(report(args, results, markdown=False))
    if args.markdown:
        command = shlex.join(["python", "-m", "loadtests.quality", *(sys.argv[1:] if argv is None else argv)])
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        text = report(args, results, markdown=True)
        text = text.replace("\n\n", f"\n\n- command: `{command}`\n- date: {stamp}\n", 1)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
