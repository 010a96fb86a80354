"""One server's suite in `berth bench`: start the server, build the request bodies, run every case.

Servers: `berth` (native kernels), `berth-pure` (BERTH_NO_EXTENSIONS=1, the pure-Python twins) and
`typical` (loadtests/typical_extender.py mirroring a fresh Berth's demo cluster, or `--synthetic N`).
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

from loadtests.objects import BIND_NAMESPACE, make_node, make_pod, names_body, nodelist_body, tiny_pod
from loadtests.procs import Pinning, berth_argv, http_json, running, server_env
from loadtests.wrk import BIND_LUA, POST_LUA, SEED_CAP, SEED_LUA, Case, Measurement, parse_wrk, run_wrk
from tests.fakes.ports import free_port


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


def measure_post(base: str, case: Case, body: Path, args: argparse.Namespace, pin: Pinning) -> list[Measurement]:
    url = f"{base}/scheduler/{case.verb}"
    sent = case.nodes
    try:
        note = check_reply(case, http_json(url, body.read_bytes()), sent)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return [Measurement("", case, conns, None, f"bad reply: {exc}") for conns in args.conns]
    script = body.with_suffix(".lua")
    script.write_text(POST_LUA.format(body=body))
    out = []
    for conns in args.conns:
        run_wrk(pin, url, script, conns, args.warmup)
        out.append(Measurement("", case, conns, parse_wrk(run_wrk(pin, url, script, conns, args.duration)), note))
    return out


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


def measure_bind(
    base: str, names: Sequence[str], args: argparse.Namespace, pin: Pinning, workdir: Path
) -> list[Measurement]:
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
        bind_once(base, pin, scripts, conns, args.warmup)
        output, seeded = bind_once(base, pin, scripts, conns, args.duration)
        result = parse_wrk(output)
        repeats = re.search(r"^BIND .* repeats=(\d+)", output, re.MULTILINE)
        note = f"{len(targets)} nodes, {seeded:,} pods seeded, {free:,} pod slots free"
        if repeats and int(repeats.group(1)):
            note += f", {int(repeats.group(1)):,} re-binds"
        first = re.search(r"^BIND first rejection: (.*)$", output, re.MULTILINE)
        if first:
            note += f"; first rejection: {first.group(1)[:160]}"
        out.append(Measurement("", Case("bind"), conns, result, note))
    return out


def run_suite(name: str, args: argparse.Namespace, pin: Pinning, workdir: Path) -> list[Measurement]:
    cases = plan_cases(args.quick)
    results: list[Measurement] = []
    with start_server(name, args, pin, workdir) as base:
        infos = http_json(base + "/debug/nodes")["nodes"]
        bodies = build_bodies(infos, cases, workdir, make_pod(args.pod_name, gpus=args.pod_gpus), args.seed)
        for case in cases:
            print(f"  {name}: {case.label} ...", file=sys.stderr, flush=True)
            body = bodies.files.get((case.mode, case.nodes))
            if case.verb == "bind":
                found = measure_bind(base, [i["name"] for i in infos], args, pin, workdir)
            elif body is None:
                found = [Measurement("", case, c, None, f"server has only {len(infos)} nodes") for c in args.conns]
            else:
                found = measure_post(base, case, body, args, pin)
            for m in found:
                m.server = name
            results += found
    return results
