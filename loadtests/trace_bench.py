"""`python -m loadtests.trace_bench`: GPU placement quality on the shape of a production GPU cluster.

The cluster and pods follow the published statistics of the Alibaba 2023 GPU trace used by the FGD paper
(Weng et al., USENIX ATC'23); see loadtests/trace_workload.py. The method is the paper's: shuffle the pods,
let them arrive until the GPUs they request reach 100 % and then 130 % of the cluster's, nothing departs,
a pod that fits nowhere stays failed. Every policy of loadtests/trace_policies.py runs on the same seeded
stream, with and without GPU sharing, over several seeds; the report gives the median and range over seeds.
(The paper at 130 %, with sharing: Random 87.5 %, DotProd 90.8 %, GpuClustering 91.9 %, GpuPacking 92.0 %,
BestFit 93.1 %, FGD 95.4 % GPU allocation ratio.)

    python -m loadtests.trace_bench                       # 1,213 nodes, 5 seeds, every policy, both modes
    python -m loadtests.trace_bench --policies berth --sharing off --seeds 1   # iterate on Berth's policy
    python -m loadtests.trace_bench --quick               # a small smoke run

The 512-node arrive-and-depart benchmark of Berth against LeastAllocated stays `python -m loadtests.quality`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtests.trace_policies import MAX_GPUS, POLICIES, Ask, Placement, Policy, SimCluster
from loadtests.trace_workload import (
    MILLI,
    VARIANTS,
    NodeSpec,
    Stream,
    TracePod,
    arrivals,
    cluster,
    load_openb,
    pod_pool,
)

TARGETS = (1.0, 1.3)
CLASSES = ("CPU-only", "fraction", "1 GPU", "2 GPUs", "4 GPUs", "8 GPUs", "model-constrained")
ORDER = ("random", "least-allocated", "best-fit", "fgd", "berth")


@dataclass
class Snapshot:
    """The cluster when the arrived requests reach one target."""

    arrived: int = 0
    placed: int = 0
    requested: float = 0.0  # GPUs asked by placed pods, fractions as fractions
    occupied: float = 0.0  # GPUs held (a fraction run whole holds one)
    gpu8_arrived: int = 0
    gpu8_placed: int = 0
    cpu_only_on_idle: int = 0  # CPU-only pods placed on a GPU node whose GPUs were all idle
    free: float = 0.0  # free GPU milli / 1000
    no_multi: float = 0.0  # free GPUs on nodes with fewer than 2 idle GPUs: no 2/4/8-GPU ask fits there
    by_model: float = 0.0  # free GPUs on nodes where a failed pod fits but for its GPU model
    by_cpu: float = 0.0  # ... else where one fits but for CPU
    by_memory: float = 0.0  # ... else where one fits but for memory
    failed_by: dict[str, int] = field(default_factory=dict)  # failed pods by class (CLASSES)


@dataclass
class RunResult:
    policy: str
    sharing: bool
    seed: int
    gpus: int
    variant: str = "default"
    at: dict[float, Snapshot] = field(default_factory=dict)
    before_failure_pods: int = 0  # pods placed before the first pod that fitted nowhere
    before_failure_gpus: float = 0.0
    in_use_at_8gpu_failure: float | None = None  # share of GPUs held when an 8-GPU pod first failed
    seconds: float = 0.0


def stranded(c: SimCluster, failed: list[Ask], snap: Snapshot) -> None:
    """Free GPUs no multi-GPU ask could use, and free GPUs a failed pod was kept from by one cause
    (attributed in the order model, CPU, memory)."""
    free = c.gpu.sum(axis=1)
    idle = (c.gpu == MILLI).sum(axis=1)
    snap.free = float(free.sum()) / MILLI
    snap.no_multi = float(free[(c.ngpu > 0) & (idle < 2)].sum()) / MILLI
    k = np.flatnonzero(free > 0)
    shapes = sorted({(a.cpu, a.mem, a.gpus, a.milli, a.model_mask) for a in failed if a.gpus})
    if not len(k) or not shapes:
        return
    f = np.array(shapes, dtype=np.int64)
    fcpu, fmem, fgpus, fmilli, fmask = f.T
    gpu_fit = (c.gpu[k][:, None, :] >= fmilli[None, :, None]).sum(axis=2) >= fgpus[None, :]
    gpu_fit &= (c.pods[k] < 110)[:, None]
    cpu_fit = c.cpu[k][:, None] >= fcpu[None, :]
    mem_fit = c.mem[k][:, None] >= fmem[None, :]
    model = c.model[k][:, None]
    model_fit = (fmask[None, :] == 0) | ((model >= 0) & (((fmask[None, :] >> np.maximum(model, 0)) & 1) == 1))
    by_model = (gpu_fit & cpu_fit & mem_fit & ~model_fit).any(axis=1)
    by_cpu = (gpu_fit & mem_fit & model_fit & ~cpu_fit).any(axis=1) & ~by_model
    by_mem = (gpu_fit & cpu_fit & model_fit & ~mem_fit).any(axis=1) & ~by_model & ~by_cpu
    snap.by_model = float(free[k][by_model].sum()) / MILLI
    snap.by_cpu = float(free[k][by_cpu].sum()) / MILLI
    snap.by_memory = float(free[k][by_mem].sum()) / MILLI


def run_one(
    kind: type[Policy], nodes: list[NodeSpec], stream: Stream, pool: list[TracePod], sharing: bool, seed: int
) -> RunResult:
    """One policy over one stream; deterministic for a seed."""
    c = SimCluster(nodes)
    policy = kind(c, sharing, random.Random(seed * 1009 + ORDER.index(kind.name) if kind.name in ORDER else seed), pool)
    result = RunResult(kind.name, sharing, seed, c.total_gpus)
    cuts = sorted(stream.cuts.items(), key=lambda kv: kv[1])
    snap = Snapshot()
    failed: list[Ask] = []
    first_failure = False
    started = time.perf_counter()
    for i, pod in enumerate(stream.pods):
        ask = Ask.of(pod, sharing)
        snap.arrived += 1
        snap.gpu8_arrived += pod.gpus == 8
        p = policy.place(ask)
        if p is None:
            failed.append(ask)
            for cls in classes(pod):
                snap.failed_by[cls] = snap.failed_by.get(cls, 0) + 1
            if not first_failure:
                first_failure = True
                result.before_failure_pods, result.before_failure_gpus = snap.placed, snap.requested
            if pod.gpus == 8 and result.in_use_at_8gpu_failure is None:
                result.in_use_at_8gpu_failure = snap.occupied / c.total_gpus
        else:
            _count(c, ask, p, snap)
            c.apply(ask, p)  # raises if the placement over-commits the node
        for target, at in cuts:
            if at == i + 1:
                result.at[target] = _close(c, failed, snap)
    result.seconds = time.perf_counter() - started
    if not first_failure:
        result.before_failure_pods, result.before_failure_gpus = snap.placed, snap.requested
    _check_berth(policy, c)
    return result


def classes(pod: TracePod) -> list[str]:
    out = [
        "CPU-only"
        if not pod.gpus
        else "fraction"
        if pod.fractional
        else "1 GPU"
        if pod.gpus == 1
        else f"{pod.gpus} GPUs"
    ]
    return [*out, "model-constrained"] if pod.models else out


def _count(c: SimCluster, ask: Ask, p: Placement, snap: Snapshot) -> None:
    snap.placed += 1
    snap.requested += ask.pod.gpu_request
    snap.occupied += ask.gpus * ask.milli / MILLI
    snap.gpu8_placed += ask.gpus == 8
    if not ask.gpus and c.ngpu[p.node] and (c.gpu[p.node, : c.ngpu[p.node]] == MILLI).all():
        snap.cpu_only_on_idle += 1


def _close(c: SimCluster, failed: list[Ask], snap: Snapshot) -> Snapshot:
    out = Snapshot(**{**vars(snap), "failed_by": dict(snap.failed_by)})
    stranded(c, failed, out)
    return out


def _check_berth(policy: Policy, c: SimCluster) -> None:
    """Berth's own ledger must hold what the simulated cluster holds: the two accountings agree."""
    usage = getattr(policy, "berth_usage", None)
    if usage is None:
        return
    for s in range(len(c.nodes)):
        u = usage(s)
        held = [g for g in range(MAX_GPUS) if u["gpu_used_mask"] >> g & 1]
        expect = [g for g in range(int(c.ngpu[s])) if c.gpu[s, g] < MILLI]
        if (
            u["cpu"] != c.alloc_cpu[s] - c.cpu[s]
            or u["memory"] != (c.alloc_mem[s] - c.mem[s]) * 2**20
            or held != expect
        ):
            raise AssertionError(f"Berth's ledger and the simulated cluster differ on {c.nodes[s].name}")


def run(
    seeds: Sequence[int],
    policies: Sequence[str],
    sharing_modes: Sequence[bool],
    variant: str = "default",
    pods: int = 8150,
    cpu_nodes: int = 0,
    scale: float = 1.0,
    targets: tuple[float, ...] = TARGETS,
    progress: bool = False,
    kinds: dict[str, type[Policy]] | None = None,
    trace: tuple[Path, Path] | None = None,
) -> list[RunResult]:
    """Every policy over the same seeded streams. `trace`: (nodes CSV, pods CSV) in the openb format
    instead of the generator; the seed then orders the nodes, the arrivals and the ties."""
    kinds = kinds or POLICIES
    out = []
    for seed in seeds:
        if trace:
            nodes, pool = load_openb(trace[0], trace[1], seed)
        else:
            nodes, pool = cluster(seed, cpu_nodes, scale=scale), pod_pool(seed, pods, variant)
        stream = arrivals(pool, sum(n.gpus for n in nodes), targets, seed)
        for sharing in sharing_modes:
            for name in policies:
                kind = kinds[name]
                if sharing and not kind.supports_sharing:
                    continue
                r = run_one(kind, nodes, stream, pool, sharing, seed)
                r.variant = variant
                out.append(r)
                if progress:
                    print(
                        f"{variant} seed {seed} {'sharing' if sharing else 'whole GPUs'} {name}: "
                        f"{100 * r.at[max(targets)].requested / r.gpus:.1f}% allocated at "
                        f"{max(targets):.0%}, {r.seconds:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    return out


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """Median and range over seeds."""
    if not values:
        return "n/a"
    med = fmt.format(statistics.median(values))
    if len(values) == 1 or min(values) == max(values):
        return med
    return f"{med} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def tables(
    results: list[RunResult],
    policies: Sequence[str],
    sharing: bool,
    targets: tuple[float, ...],
    variant: str = "default",
) -> list[str]:
    hi, lo = max(targets), min(targets)
    lines: list[str] = []
    head1 = [
        "policy",
        f"GPU alloc. ratio @{lo:.0%}",
        f"@{hi:.0%}",
        f"GPUs held @{hi:.0%}",
        f"failed pods @{hi:.0%}",
        "pods placed before 1st failure",
        "GPUs placed before 1st failure",
        f"8-GPU pods placed @{hi:.0%}",
        "GPUs in use at 1st 8-GPU failure",
    ]
    head2 = [
        "policy",
        f"free GPUs @{hi:.0%}",
        "on nodes with < 2 idle GPUs (no 2/4/8-GPU fit)",
        "stranded by GPU model",
        "stranded by CPU",
        "stranded by memory",
        f"CPU-only pods on all-idle GPU nodes @{hi:.0%}",
        "seconds per run",
    ]
    head3 = ["policy", *(f"failed @{hi:.0%}: {c}" for c in CLASSES)]
    body1: list[list[str]] = []
    body2: list[list[str]] = []
    body3: list[list[str]] = []
    for name in policies:
        rs = [r for r in results if r.policy == name and r.sharing == sharing and r.variant == variant]
        if not rs:
            for head, body in ((head1, body1), (head2, body2), (head3, body3)):
                body.append([name] + ["n/a"] * (len(head) - 1))
            continue
        g = rs[0].gpus
        a_hi = [r.at[hi] for r in rs]
        body1.append(
            [
                name,
                spread([100 * r.at[lo].requested / r.gpus for r in rs]) + " %",
                spread([100 * s.requested / g for s in a_hi]) + " %",
                spread([100 * s.occupied / g for s in a_hi]) + " %",
                spread([s.arrived - s.placed for s in a_hi], "{:.0f}"),
                spread([r.before_failure_pods for r in rs], "{:.0f}"),
                spread([r.before_failure_gpus for r in rs], "{:.0f}"),
                spread([s.gpu8_placed for s in a_hi], "{:.0f}")
                + f" of {spread([s.gpu8_arrived for s in a_hi], '{:.0f}')}",
                _pct_or(
                    [100 * r.in_use_at_8gpu_failure for r in rs if r.in_use_at_8gpu_failure is not None],
                    "no 8-GPU pod failed",
                ),
            ]
        )
        body2.append(
            [
                name,
                spread([s.free for s in a_hi]),
                spread([s.no_multi for s in a_hi]),
                spread([s.by_model for s in a_hi]),
                spread([s.by_cpu for s in a_hi]),
                spread([s.by_memory for s in a_hi]),
                spread([s.cpu_only_on_idle for s in a_hi], "{:.0f}"),
                spread([r.seconds for r in rs]),
            ]
        )
        body3.append([name, *(spread([s.failed_by.get(c, 0) for s in a_hi], "{:.0f}") for c in CLASSES)])
    return [*lines, *render(head1, body1), "", *render(head2, body2), "", *render(head3, body3)]


def _pct_or(values: list[float], none: str) -> str:
    return spread(values) + " %" if values else none


def render(headers: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
        *("| " + " | ".join(row) + " |" for row in body),
    ]


def machine() -> str:
    from scheduler import kernels

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or "unknown",
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor() or "unknown"
    )
    return (
        f"nproc {os.cpu_count()}, {cpu}; Python {platform.python_version()}, numpy {np.__version__}; "
        f"Berth kernels: {'native (Cython)' if kernels.NATIVE else 'pure-Python twins'}"
    )


def report(args: argparse.Namespace, results: list[RunResult], argv: Sequence[str], wall: float) -> str:
    if args.trace:
        nodes, pool = load_openb(args.trace[0], args.trace[1], args.seeds[0])
        source = f"the trace files {args.trace[0]} and {args.trace[1]} ({len(pool)} pods)"
    else:
        nodes = cluster(args.seeds[0], args.cpu_nodes, scale=args.scale)
        source = f"{' and '.join(f'`{v}`' for v in args.variants)} mix, a pool of {args.pods} pods"
    gpus = sum(n.gpus for n in nodes)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# GPU placement on the shape of the Alibaba 2023 GPU trace (FGD paper): Berth vs the baselines",
        "",
        f"- command: `{shlex.join(['python', '-m', 'loadtests.trace_bench', *argv])}`",
        f"- date: {stamp}; machine: {machine()}; wall time {wall:.0f} s",
        f"- seeds: {', '.join(map(str, args.seeds))} (each seed: node order, pod pool, arrival order, ties)",
        f"- cluster: {len(nodes)} nodes, {gpus} GPUs ({sum(1 for n in nodes if not n.gpus)} CPU-only nodes); "
        f"workload: {source}, shuffled, arriving until the GPUs they request "
        f"reach {' and '.join(f'{t:.0%}' for t in args.targets)} of the cluster's; no departures; a pod that "
        "fits nowhere stays failed (see loadtests/trace_workload.py for the mix)",
        "- GPU allocation ratio: GPUs requested by placed pods / cluster GPUs, fractions counted as fractions "
        "(without sharing a fractional pod holds a whole GPU: 'GPUs held' counts that)",
        "- stranded: free GPU capacity (milli / 1000) on nodes where some failed GPU pod fits but for its model; "
        "else but for CPU; else but for memory (each node counted once, in that order)",
        "- every cell: median over seeds (min to max); ties broken at random as kube-scheduler does; all nodes "
        "scored (percentageOfNodesToScore 100)",
        "- paper (130 %, with sharing): Random 87.5 %, BestFit 93.1 %, FGD 95.4 %",
        "",
    ]
    for variant in ["trace"] if args.trace else args.variants:
        for sharing in args.sharing_modes:
            title = (
                "with GPU sharing (fractions share a GPU)"
                if sharing
                else "without GPU sharing (a fraction holds a whole GPU)"
            )
            lines += [f"## `{variant}` mix, {title}", ""]
            if sharing and not POLICIES["berth"].supports_sharing:
                lines += ["Berth has no GPU sharing yet: its rows are n/a.", ""]
            lines += [*tables(results, args.policies, sharing, args.targets, variant), ""]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.trace_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds 1..N (default 5)")
    p.add_argument("--seed-list", help="comma-separated seeds, instead of --seeds")
    p.add_argument("--policies", default=",".join(ORDER), help=f"comma-separated, of {', '.join(POLICIES)}")
    p.add_argument(
        "--sharing", choices=["both", "off", "on"], default="both", help="GPU sharing modes to run (default both)"
    )
    p.add_argument(
        "--variant",
        default="default",
        help=f"pod mix, or several comma-separated, of {', '.join(VARIANTS)} (default: default)",
    )
    p.add_argument("--pods", type=int, default=8150, help="pods in the pool (default 8150)")
    p.add_argument("--cpu-nodes", type=int, default=0, help="CPU-only nodes added to the cluster (default 0)")
    p.add_argument("--trace-nodes", type=Path, metavar="CSV", help="openb node list instead of the generator")
    p.add_argument("--trace-pods", type=Path, metavar="CSV", help="openb pod list instead of the generator")
    p.add_argument("--quick", action="store_true", help="a smoke run: a tenth of the cluster, 800 pods, 2 seeds")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the report as Markdown")
    args = p.parse_args(argv)
    args.scale = 1.0
    if args.quick:
        args.scale, args.pods = 0.1, min(args.pods, 800)
        args.seeds = min(args.seeds, 2)
    args.seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(1, args.seeds + 1))
    args.policies = [x for x in args.policies.split(",") if x]
    unknown = [x for x in args.policies if x not in POLICIES]
    if unknown:
        p.error(f"unknown policies: {', '.join(unknown)}")
    args.sharing_modes = {"both": [False, True], "off": [False], "on": [True]}[args.sharing]
    args.targets = TARGETS
    args.variants = [v for v in args.variant.split(",") if v]
    if any(v not in VARIANTS for v in args.variants):
        p.error(f"--variant: of {', '.join(VARIANTS)}")
    if bool(args.trace_nodes) != bool(args.trace_pods):
        p.error("--trace-nodes and --trace-pods go together")
    args.trace = (args.trace_nodes, args.trace_pods) if args.trace_nodes else None
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.perf_counter()
    results: list[RunResult] = []
    for variant in ["trace"] if args.trace else args.variants:
        results += run(
            args.seeds,
            args.policies,
            args.sharing_modes,
            variant if not args.trace else "default",
            args.pods,
            args.cpu_nodes,
            args.scale,
            args.targets,
            progress=True,
            trace=args.trace,
        )
        if args.trace:
            for r in results:
                r.variant = "trace"
    text = report(args, results, argv, time.perf_counter() - started)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
