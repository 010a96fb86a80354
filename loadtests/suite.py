"""One server's suite in `berth bench`: start the server, build the request bodies, run every case.

Servers: `berth` (native kernels), `berth-pure` (BERTH_NO_EXTENSIONS=1, the pure-Python twins) and
`typical` (loadtests/typical_extender.py mirroring a fresh Berth's demo cluster, or `--synthetic N`).

With `berth`, the floor (loadtests/floor: a compiled server answering each case with the bytes Berth
replied) runs in the same suite on the same core: per case and connection count, Berth and the floor
alternate run by run (Berth stopped with SIGSTOP while the floor is measured), and Berth's
/debug/stalls is read after each of its runs.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from loadtests.objects import BIND_NAMESPACE, make_node, make_pod, names_body, nodelist_body, tiny_pod
from loadtests.procs import Pinning, berth_argv, http_bytes, http_json, paused, running, server_env
from loadtests.wrk import (
    BIND_LUA,
    POST_LUA,
    SEED_CAP,
    SEED_LUA,
    Case,
    Measurement,
    WrkResult,
    median_result,
    parse_wrk,
    run_wrk,
)
from tests.fakes.ports import free_port

FLOOR = "floor"
FLOOR_DATE = b"Tue, 01 Dec 2026 00:00:00 GMT"  # a Date of the same length as Berth's


def floor_reply(body: bytes, status: bytes = b"200 OK") -> bytes:
    """A whole HTTP response framed as verbs_http frames Berth's, around `body`."""
    head = b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n\r\n"
    return head % (status, len(body), FLOOR_DATE) + body


@contextmanager
def start_floor(binary: Path, pin: Pinning, workdir: Path, replies: dict[tuple[str, int], bytes]) -> Iterator[str]:
    """The floor server answering (path, body length) with the stored reply body; -1 matches any length."""
    folder = workdir / "floor"
    folder.mkdir(exist_ok=True)
    lines = []
    for i, ((path, length), body) in enumerate(sorted(replies.items())):
        file = folder / f"reply-{i}.http"
        file.write_bytes(floor_reply(body))
        lines.append(f"{path} {length} {file}")
    readyz = folder / "readyz.http"
    readyz.write_bytes(floor_reply(b"ok"))
    lines.append(f"/readyz -1 {readyz}")
    manifest = folder / "manifest.txt"
    manifest.write_text("\n".join(lines) + "\n")
    port = free_port()
    argv = [*pin.server, str(binary), "-addr", f"127.0.0.1:{port}", "-manifest", str(manifest)]
    with running(argv, {"GOMAXPROCS": "1", "PATH": "/usr/bin:/bin"}, port, workdir, FLOOR) as base:
        yield base


@dataclass
class Stalls:
    """/debug/stalls of Berth after each of its runs of one case."""

    runs: list[dict[str, Any]]


def read_stalls(base: str, reset_only: bool = False) -> dict[str, Any] | None:
    try:
        data = http_json(base + "/debug/stalls?reset=1")
    except OSError:
        return None  # a server without the view (an older Berth): no attribution
    return None if reset_only else data


@dataclass
class Runner:
    """Measures one case on Berth and, when there is one, on the floor: alternating, run by run."""

    base: str
    floor: str | None
    args: argparse.Namespace
    stalls: dict[tuple[Case, int], Stalls]

    def measure(self, case: Case, conns: int, once: Any) -> dict[str, WrkResult]:
        """`once(base, seconds)` runs wrk once and returns its parsed result; warm-up first, then
        args.repeat runs each, Berth's /debug/stalls read (and reset) after each of its runs."""
        once(self.base, self.args.warmup)
        if self.floor:
            with paused(self.base):
                once(self.floor, self.args.warmup)
        mine: list[WrkResult] = []
        floor: list[WrkResult] = []
        snapshots = []
        for _ in range(self.args.repeat):
            read_stalls(self.base, reset_only=True)
            mine.append(once(self.base, self.args.duration))
            snapshot = read_stalls(self.base)
            if snapshot is not None:
                snapshots.append(snapshot)
            if self.floor:
                with paused(self.base):
                    floor.append(once(self.floor, self.args.duration))
        self.stalls[(case, conns)] = Stalls(snapshots)
        out = {"": median_result(mine)}
        if floor:
            out[FLOOR] = median_result(floor)
        return out


@contextmanager
def start_server(name: str, args: argparse.Namespace, pin: Pinning, workdir: Path) -> Iterator[str]:
    port = free_port()
    if name in ("berth", "berth-pure"):
        with running(
            berth_argv(pin, port, args.demo_nodes), server_env(name == "berth-pure"), port, workdir, name
        ) as base:
            yield base
        return
    typical = [*pin.server, sys.executable, str(args.typical_script), "--port", str(port)]
    if args.synthetic:
        with running([*typical, "--synthetic", str(args.synthetic)], server_env(False), port, workdir, name) as base:
            yield base
        return
    # Mirror a fresh Berth's demo cluster, then stop that Berth so it takes no CPU during the run.
    mirror_port = free_port()
    with ExitStack() as stack:
        with running(
            berth_argv(pin, mirror_port, args.demo_nodes),
            server_env(False),
            mirror_port,
            workdir,
            "typical-mirror-source",
        ) as source:
            base = stack.enter_context(running([*typical, "--mirror", source], server_env(False), port, workdir, name))
        yield base


# --------------------------------------------------------------------------------------------------
# One server's suite
# --------------------------------------------------------------------------------------------------


def plan_cases(quick: bool) -> list[Case]:
    sizes = (500,) if quick else (500, 5000, 7500)
    cases = [Case(verb, "names", n) for n in sizes for verb in ("filter", "prioritize")]
    if not quick:
        cases += [Case(verb, "nodelist", 500) for verb in ("filter", "prioritize")]
    return [*cases, Case("bind")]


def check_reply(case: Case, reply: Any, sent: int) -> str:
    """Validate one reply's shape before timing; returns a short note for the table."""
    if case.verb == "prioritize":
        if not isinstance(reply, list) or len(reply) != sent:
            raise ValueError(f"prioritize: expected a list of {sent}, got {str(reply)[:200]}")
        scores = [entry["Score"] for entry in reply]
        return f"scores {min(scores)}..{max(scores)}" if scores else ""
    if reply.get("Error"):
        raise ValueError(f"filter: Error {reply['Error']!r}")
    kept = len(reply["Nodes"]["items"]) if case.mode == "nodelist" else len(reply["NodeNames"] or [])
    return f"{kept}/{sent} fit"


@dataclass
class Bodies:
    """Request bodies written to files, keyed by (mode, node count)."""

    files: dict[tuple[str, int], Path]
    sizes: dict[tuple[str, int], int]


def build_bodies(
    node_infos: Sequence[dict[str, Any]],
    cases: Sequence[Case],
    workdir: Path,
    pod: dict[str, Any],
    seed: int,
) -> Bodies:
    order = list(node_infos)
    random.Random(seed).shuffle(order)  # same sample for every server: the names are the same
    files, sizes = {}, {}
    for case in cases:
        key = (case.mode, case.nodes)
        if case.verb == "bind" or key in files or case.nodes > len(order):
            continue
        chosen = order[: case.nodes]
        if case.mode == "names":
            body = names_body(pod, [info["name"] for info in chosen])
        else:
            body = nodelist_body(pod, [make_node(info, i) for i, info in enumerate(chosen)])
        files[key] = workdir / f"body-{case.mode}-{case.nodes}.json"
        files[key].write_bytes(body)
        sizes[key] = len(body)
    return Bodies(files, sizes)


def measure_post(runner: Runner, case: Case, body: Path, pin: Pinning) -> list[Measurement]:
    args = runner.args
    path = f"/scheduler/{case.verb}"
    sent = case.nodes
    try:
        note = check_reply(case, http_json(runner.base + path, body.read_bytes()), sent)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return [Measurement("", case, conns, None, f"bad reply: {exc}") for conns in args.conns]
    script = body.with_suffix(".lua")
    script.write_text(POST_LUA.format(body=body))
    out = []
    for conns in args.conns:

        def once(base: str, seconds: int, conns: int = conns) -> WrkResult:
            return parse_wrk(run_wrk(pin, base + path, script, conns, seconds))

        for server, result in runner.measure(case, conns, once).items():
            out.append(Measurement(server, case, conns, result, note))
    return out


def capture_replies(
    base: str, cases: Sequence[Case], bodies: Bodies, names: Sequence[str]
) -> dict[tuple[str, int], bytes]:
    """Berth's reply bytes for every case, keyed as the floor looks them up: (path, request length)."""
    replies: dict[tuple[str, int], bytes] = {}
    for case in cases:
        body = bodies.files.get((case.mode, case.nodes))
        if case.verb != "bind" and body is not None:
            raw = body.read_bytes()
            replies[(f"/scheduler/{case.verb}", len(raw))] = http_bytes(f"{base}/scheduler/{case.verb}", raw)
    targets = bind_targets(base, names)
    if targets:  # one real bind: a seeded pod bound to a node that takes it
        prefix, uid_prefix = _run_ids()
        pod = tiny_pod(f"{prefix}-capture", f"{uid_prefix}{0:012d}")
        replies[("/scheduler/filter", -1)] = http_bytes(f"{base}/scheduler/filter", names_body(pod, targets[:1]))
        bind = orjson.dumps(
            {
                "PodName": f"{prefix}-capture",
                "PodNamespace": BIND_NAMESPACE,
                "PodUID": pod["metadata"]["uid"],
                "Node": targets[0],
            }
        )
        replies[("/scheduler/bind", -1)] = http_bytes(f"{base}/scheduler/bind", bind)
    return replies


def free_pod_slots(base: str) -> int:
    return sum(info["free"]["pods"] for info in http_json(base + "/debug/nodes")["nodes"])


def bind_pod_template() -> str:
    """A seed filter body (Lua format) with holes for the pod's name, its UID and its one node, in order."""
    body = names_body(tiny_pod("@NAME@", "@UID@"), ["@NODE@"]).decode().replace("%", "%%")
    assert body.index("@NAME@") < body.index("@UID@") < body.index("@NODE@")
    return body.replace("@NAME@", "%s").replace("@UID@", "%s").replace("@NODE@", "%s")


def bind_targets(base: str, names: Sequence[str]) -> list[str]:
    """The nodes that take the tiny bind pod, as the server itself judges it."""
    probe = tiny_pod("bench-bind-probe", str(uuid.uuid4()))
    return list(http_json(f"{base}/scheduler/filter", names_body(probe, names)).get("NodeNames") or [])


def _run_ids() -> tuple[str, str]:
    run_id = uuid.uuid4().hex
    return f"bench-{run_id[:10]}", f"{run_id[:8]}-{run_id[8:12]}-4{run_id[13:16]}-8{run_id[17:20]}-"


def bind_once(base: str, pin: Pinning, scripts: tuple[Path, Path], conns: int, seconds: int) -> tuple[str, int]:
    """Seed fresh pods, then bind them for `seconds`; returns wrk's output of the bind run and the seed."""
    seed_script, bind_script = scripts
    prefix, uid_prefix = _run_ids()
    # Seeding is slower than binding (a filter parses a pod): give it longer, up to SEED_CAP pods.
    seed_args = [prefix, uid_prefix, str(SEED_CAP)]
    seed_out = run_wrk(pin, f"{base}/scheduler/filter", seed_script, 8, 2 * seconds + 1, seed_args)
    found = re.search(r"^SEED seeded=(\d+)", seed_out, re.MULTILINE)
    # The last request of each connection may still have been in flight when wrk stopped.
    seeded = max(int(found.group(1)) - 8, 1) if found else 1
    out = run_wrk(pin, f"{base}/scheduler/bind", bind_script, conns, seconds, [prefix, uid_prefix, str(seeded)])
    return out, seeded


def measure_bind(runner: Runner, names: Sequence[str], pin: Pinning, workdir: Path) -> list[Measurement]:
    args, base = runner.args, runner.base
    targets = bind_targets(base, names)
    if not targets:
        return [Measurement("", Case("bind"), c, None, "no node takes the tiny bind pod") for c in args.conns]
    quoted = ",".join(f'"{name}"' for name in targets)
    scripts = (workdir / "seed.lua", workdir / "bind.lua")
    scripts[0].write_text(SEED_LUA.format(nodes=quoted, template=bind_pod_template()))
    scripts[1].write_text(BIND_LUA.format(nodes=quoted, namespace=BIND_NAMESPACE))
    out = []
    for conns in args.conns:
        free = free_pod_slots(base)
        outputs: list[str] = []
        seeds: list[int] = []

        def once(
            at: str, seconds: int, conns: int = conns, outputs: list[str] = outputs, seeds: list[int] = seeds
        ) -> WrkResult:
            if at != base:  # the floor: nothing to seed, every bind answers the stored reply
                prefix, uid_prefix = _run_ids()
                url = f"{at}/scheduler/bind"
                return parse_wrk(run_wrk(pin, url, scripts[1], conns, seconds, [prefix, uid_prefix, str(SEED_CAP)]))
            output, seeded = bind_once(base, pin, scripts, conns, seconds)
            outputs.append(output)
            seeds.append(seeded)
            return parse_wrk(output)

        results = runner.measure(Case("bind"), conns, once)
        output, seeded = outputs[-1], min(seeds[1:] or seeds)
        repeats = sum(
            int(m.group(1)) for o in outputs[1:] for m in [re.search(r"^BIND .* repeats=(\d+)", o, re.MULTILINE)] if m
        )
        note = f"{len(targets)} nodes, {seeded:,}+ pods seeded per run, {free:,} pod slots free"
        if repeats:
            note += f", {repeats:,} re-binds"
        first = re.search(r"^BIND first rejection: (.*)$", output, re.MULTILINE)
        if first:
            note += f"; first rejection: {first.group(1)[:160]}"
        for server, result in results.items():
            out.append(Measurement(server, Case("bind"), conns, result, note if not server else "stored reply"))
    return out


def run_suite(
    name: str,
    args: argparse.Namespace,
    pin: Pinning,
    workdir: Path,
    stalls: dict[tuple[Case, int], Stalls] | None = None,
) -> list[Measurement]:
    """One server's cases (with `berth` and args.floor_bin, the floor's too, as server "floor"); Berth's
    /debug/stalls readings go into `stalls` by (case, connections)."""
    cases = plan_cases(args.quick)
    results: list[Measurement] = []
    readings: dict[tuple[Case, int], Stalls] = {} if stalls is None else stalls
    with start_server(name, args, pin, workdir) as base, ExitStack() as stack:
        infos = http_json(base + "/debug/nodes")["nodes"]
        names = [i["name"] for i in infos]
        bodies = build_bodies(infos, cases, workdir, make_pod(args.pod_name, gpus=args.pod_gpus), args.seed)
        floor = None
        if name == "berth" and getattr(args, "floor_bin", None):
            floor = stack.enter_context(
                start_floor(args.floor_bin, pin, workdir, capture_replies(base, cases, bodies, names))
            )
        runner = Runner(base, floor, args, readings if name == "berth" else {})
        for case in cases:
            print(f"  {name}: {case.label} ...", file=sys.stderr, flush=True)
            body = bodies.files.get((case.mode, case.nodes))
            if case.verb == "bind":
                found = measure_bind(runner, names, pin, workdir)
            elif body is None:
                found = [Measurement("", case, c, None, f"server has only {len(infos)} nodes") for c in args.conns]
            else:
                found = measure_post(runner, case, body, pin)
            for m in found:
                m.server = m.server or name
            results += found
    return results
