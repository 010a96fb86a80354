"""`berth bench`: wire-level latency and throughput of Berth against a typical Python extender.

Each server under test runs pinned to one core, wrk runs on another, and the request bodies are
shaped like kube-scheduler's: `json.Marshal(ExtenderArgs)` with a realistic few-KB Pod, Go's
Capitalized field names and `"Nodes":null` (nodeCacheCapable), or a full NodeList of realistic Nodes.

Servers: `berth` (native kernels), `berth-pure` (BERTH_NO_EXTENSIONS=1, the pure-Python twins) and
`typical` (loadtests/typical_extender.py mirroring a fresh Berth's demo cluster, or `--synthetic N`).

    python -m loadtests.bench                        # everything, ~5 minutes on 2 cores
    python -m loadtests.bench --quick                # smoke run: 500 nodes, 1 s per case
    python -m loadtests.bench --servers typical --synthetic 7500 --markdown bench.md

This module is the command line; `suite` runs one server's cases, `wrk` drives wrk, `procs` starts
and pins the processes, `report` writes the tables and `objects` builds the request bodies.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from loadtests.procs import REPO, floor_binary, machine_state, make_pinning
from loadtests.report import environment_notes, report
from loadtests.suite import Stalls, run_suite
from loadtests.wrk import Case, Measurement

TYPICAL_SCRIPT = REPO / "loadtests" / "typical_extender.py"
SERVERS = ("berth", "berth-pure", "typical")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, from {', '.join(SERVERS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: NodeNames of 500, 1 s per case")
    parser.add_argument("--duration", type=int, default=3, help="seconds per measured case (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each case (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case, median shown (default 3)")
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the compiled floor server (run with berth)"
    )
    parser.add_argument("--conns", default="1,8", help="connection counts (default 1,8)")
    parser.add_argument("--demo-nodes", type=int, default=7500, help="Berth demo cluster size (default 7500)")
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="typical extender generates N nodes instead of mirroring a Berth",
    )
    parser.add_argument("--typical-script", type=Path, default=TYPICAL_SCRIPT, help=argparse.SUPPRESS)
    parser.add_argument("--pod-gpus", type=int, default=1, help="GPUs the benchmark pod asks for (default 1)")
    parser.add_argument("--pod-name", default="llm-finetune-7b-x2k9q-0", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help="seed of the node sample")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument(
        "--realtime",
        type=int,
        default=0,
        metavar="PRIO",
        help="run every server and wrk SCHED_FIFO at PRIO where permitted (default 0: normal priority). On a "
        "busy machine it keeps other processes from preempting them, but on Linux 6.18 here Berth then still "
        "lost ~50 ms slices to them about once a second (the floor, busy less of each second, did not): "
        "use it for clean medians under load, not for the tail",
    )
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown")


def normalise(args: argparse.Namespace) -> argparse.Namespace:
    args.servers = [s.strip() for s in str(args.servers).split(",") if s.strip()]
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(sorted(unknown))}")
    args.conns = [int(c) for c in str(args.conns).split(",")]
    args.repeat = max(1, args.repeat)
    if args.quick:
        args.duration, args.warmup, args.repeat = 1, 1, min(args.repeat, 2)
        # NodeNames of 500; a cluster of 2,000 keeps a few seconds of binds from using up its pod slots.
        args.demo_nodes = min(args.demo_nodes, 2000)
        args.synthetic = args.synthetic and min(args.synthetic, 2000)
    return args


def run(args: argparse.Namespace) -> int:
    args = normalise(args)
    if not shutil.which("wrk"):
        print("berth bench needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    if "typical" in args.servers and not args.typical_script.is_file():
        print(f"typical extender not found at {args.typical_script} (run from a checkout)", file=sys.stderr)
        return 2
    pin, pin_note = make_pinning(args.server_cpu, args.client_cpu, args.realtime)
    args.floor_bin, args.floor_note = None, "not run (--no-floor, or berth not among the servers)"
    if args.floor and "berth" in args.servers:
        args.floor_bin, args.floor_note = floor_binary()
        if args.floor_bin:
            args.floor_note = (
                f"loadtests/floor ({args.floor_bin}), Berth's reply bytes per case, same core, alternating "
                "run by run with Berth (stopped while the floor runs)"
            )
        print(f"bench: {args.floor_note}", file=sys.stderr, flush=True)
    before = machine_state()
    results: list[Measurement] = []
    stalls: dict[tuple[Case, int], Stalls] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        workdir = Path(tmp)
        for name in args.servers:
            print(f"bench: {name}", file=sys.stderr, flush=True)
            try:
                results += run_suite(name, args, pin, workdir, stalls)
            except RuntimeError as exc:
                print(f"bench: {name} failed: {exc}", file=sys.stderr)
                return 1
        sizes = {p.stem.removeprefix("body-"): p.stat().st_size for p in sorted(workdir.glob("body-*.json"))}
    notes = environment_notes(args, pin_note, sizes, before, machine_state())
    print(report(results, args.servers, False, stalls))
    print("\n".join(notes))
    if args.markdown:
        body = report(results, args.servers, True, stalls)
        args.markdown.write_text("# berth bench\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n" + body)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berth bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
