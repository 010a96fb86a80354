"""`python -m loadtests.decision_time`: how long Berth takes to decide one pod on the trace-shaped cluster.

The cluster is loadtests/trace_workload.py's 1,213 GPU nodes; pods of its mix are placed through Berth's own
path (placement.judge, run_filter, run_score, Binder.reserve) until the GPUs they ask reach `--fill` of the
cluster's, then every further pod of the stream is timed: `run_filter` (the filter kernel, the demand
histogram, the best tier) plus `run_score` over the nodes filter passed (what prioritize is sent), and the
same two through the kernels alone. A benchmark, not a test: the numbers depend on the machine and its load.

    python -m loadtests.decision_time                 # native kernels when built
    python -m loadtests.decision_time --sharing       # nodes with time-slicing replicas, fractions share
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from array import array

from loadtests.trace_policies import Ask, BerthPolicy, SimCluster
from loadtests.trace_workload import arrivals, cluster, pod_pool


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.decision_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fill", type=float, default=0.5, help="share of cluster GPUs asked before timing (0.5)")
    p.add_argument("--pods", type=int, default=2000, help="pods timed (2000)")
    p.add_argument("--variant", default="default")
    p.add_argument("--sharing", action="store_true")
    args = p.parse_args(argv)

    from scheduler import kernels
    from scheduler.model.podspec import pod_ask
    from scheduler.policy.placement import judge, pod_params, run_filter, run_score

    nodes = cluster(args.seed)
    stream = arrivals(
        pod_pool(args.seed, variant=args.variant), sum(n.gpus for n in nodes), (args.fill, 1.3), args.seed
    )
    sim = SimCluster(nodes)
    berth = BerthPolicy(sim, args.sharing, random.Random(args.seed), None)
    warm = stream.cuts[args.fill]
    for pod in stream.pods[:warm]:
        ask = Ask.of(pod, args.sharing)
        placed = berth.place(ask)
        if placed is not None:
            sim.apply(ask, placed)
    state = berth.state
    from loadtests.trace_policies import pod_dict, shared_pod_dict

    decide: list[float] = []
    kernel: list[float] = []
    t = state.table
    for pod in stream.pods[warm : warm + args.pods]:
        obj = shared_pod_dict(pod) if args.sharing else pod_dict(pod)
        ask = pod_ask(obj)
        started = time.perf_counter()
        j = judge(state, ask)
        verdicts, passed = run_filter(state, j, berth.slots)
        if passed:
            survivors = array("i", [s for s, v in zip(berth.slots, verdicts, strict=True) if v == kernels.OK])
            run_score(state, j, survivors)
        decide.append(time.perf_counter() - started)
        # The kernels alone: filter, the best tier's raw scores and cut, then prioritize's scores.
        r, params, avail = ask.request, pod_params(state, j, None), state.pools.avail
        a = (r.gpu, r.gpu_shared, r.gpu_fraction, ask.topology)
        out, raw = bytearray(len(berth.slots)), array("d", bytes(8 * len(berth.slots)))
        started = time.perf_counter()
        kernels.filter_shared(t, berth.slots, r.cpu, r.memory, *a, j.pool_ok, j.model_ok, out) if args.sharing else (
            kernels.filter_nodes(t, berth.slots, r.cpu, r.memory, r.gpu, ask.topology, j.pool_ok, j.model_ok, out)
        )
        if args.sharing:
            kernels.score_shared_raw(t, berth.slots, r.cpu, r.memory, *a, j.pool_ok, avail, params, raw, bytes(out))
        else:
            kernels.score_raw(t, berth.slots, r.cpu, r.memory, r.gpu, ask.topology, j.pool_ok, avail, params, raw, out)
        kernels.best_tier(raw, out, state.config.scoring.best_tier_margin)
        kernels.normalize_scores(raw, array("q", bytes(8 * len(raw))))
        kernel.append(time.perf_counter() - started)
    for what, values in (("judge + run_filter + run_score", decide), ("the kernels alone", kernel)):
        us = [1e6 * x for x in values]
        print(
            f"decision time ({what}), {len(nodes)} nodes, "
            f"{'native' if kernels.NATIVE else 'twin'} kernels, sharing {'on' if args.sharing else 'off'}, "
            f"cluster {args.fill:.0%} asked, {len(us)} pods: p50 {statistics.median(us):.0f} us, "
            f"p90 {percentile(us, 0.9):.0f} us, p99 {percentile(us, 0.99):.0f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
