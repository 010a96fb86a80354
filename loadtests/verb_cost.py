"""`python -m loadtests.verb_cost`: what one filter or prioritize call costs inside Berth, without HTTP.

`berth bench` times the verbs over sockets against a floor, where one call's work is a fraction of what the
client sees and run-to-run noise on a small VM is as large as a change. This times `Verbs.filter_body` /
`prioritize_body` in one process, on the bench's demo cluster (7,500 nodes), its pod and a shuffle of its
names, the cyclic collector frozen and off. `--other TREE` compares another checkout (its own build, e.g. a
`git worktree` of the commit before a change): the two trees run in turns, one process each, `--turns`
times, so both see the same machine; the medians of each turn are printed side by side. A benchmark, not a
test.

    python -m loadtests.verb_cost --names 5000
    python -m loadtests.verb_cost --names 500,5000,7500 --other /tmp/before --turns 4
    python -m loadtests.verb_cost --verb prioritize --distinct   # a new pod (UID) every call
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script for another tree (_in): its checkout comes first on the path
    sys.path[0] = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or sys.path[0]

REPO = Path(__file__).resolve().parents[1]


def measure(verb: str, names: int, calls: int, distinct: bool) -> float:
    """Median microseconds of one call, in this process."""
    from loadtests.objects import make_pod, names_body
    from scheduler.cluster.state import ClusterState
    from scheduler.config import Config
    from scheduler.demo import populate
    from scheduler.extender.errors import ErrorReplies
    from scheduler.extender.verbs import Verbs
    from scheduler.observability.metrics import Metrics
    from scheduler.policy.binder import Binder

    config = Config()
    state = ClusterState(config)
    populate(state, 7500, config.demo.seed)  # `berth bench`'s server: serve --demo --demo-nodes 7500
    metrics = Metrics()
    # Binder is never reached: filter and prioritize do not bind.
    verbs = Verbs(state, metrics, Binder.__new__(Binder), ErrorReplies(metrics, state.config.server))
    order = list(state.table.slot_of)
    random.Random(1).shuffle(order)
    count = calls + 50 if distinct else 1
    bodies = [names_body(make_pod(f"llm-finetune-7b-x2k9q-{i}", gpus=1), order[:names]) for i in range(count)]
    call = verbs.filter_body if verb == "filter" else verbs.prioritize_body
    for i in range(50):
        call(bodies[i % count])
    gc.freeze()
    gc.disable()
    took = []
    for i in range(calls):
        body = bodies[(50 + i) % count]
        start = time.perf_counter_ns()
        call(body)
        took.append(time.perf_counter_ns() - start)
    took.sort()
    return took[len(took) // 2] / 1e3


def _in(tree: Path, verb: str, names: int, calls: int, distinct: bool) -> float:
    python = tree / ".venv" / "bin" / "python"
    # This file, run as a script: the other tree may predate it; its imports resolve in that tree (PYTHONPATH).
    argv = [str(python if python.exists() else sys.executable), str(Path(__file__).resolve()), "--one"]
    argv += ["--verb", verb, "--names", str(names), "--calls", str(calls)] + (["--distinct"] if distinct else [])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=True, timeout=600)
    return float(out.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.verb_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--verb", choices=("filter", "prioritize"), default="filter")
    p.add_argument("--names", default="500,5000,7500", help="NodeNames sizes, comma-separated")
    p.add_argument("--calls", type=int, default=600, help="timed calls per turn (600)")
    p.add_argument("--turns", type=int, default=3, help="turns per tree (3)")
    p.add_argument("--distinct", action="store_true", help="a pod of its own (UID, name) every call")
    p.add_argument("--other", type=Path, help="another checkout to compare, in turns with this one")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one measurement, in this process
    args = p.parse_args(argv)
    sizes = [int(n) for n in args.names.split(",")]
    if args.one:
        print(f"{measure(args.verb, sizes[0], args.calls, args.distinct):.1f}")
        return 0
    trees = [REPO, *([args.other.resolve()] if args.other else [])]
    print(f"{args.verb}, median us per call ({args.calls} calls a turn{', a new pod each' if args.distinct else ''})")
    for n in sizes:
        got: dict[Path, list[float]] = {t: [] for t in trees}
        for _ in range(args.turns):
            for t in trees:
                got[t].append(_in(t, args.verb, n, args.calls, args.distinct))
        cells = [f"{t.name or t}: " + " / ".join(f"{x:.0f}" for x in got[t]) for t in trees]
        print(f"  {n:>6} names  " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
