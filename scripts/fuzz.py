#!/usr/bin/env python3
"""Fuzz Berth's four extender verbs with bodies kube-scheduler would never send.

    .venv/bin/python scripts/fuzz.py --count 100000

Starts `python -m scheduler serve --demo` on a free port (with a small `server.max_body_bytes`, so bodies
near the limit stay cheap), sends `--count` hypothesis-generated bodies from several concurrent keep-alive
connections: random JSON values, valid payloads with fields replaced by random types or odd quantities,
payloads truncated at random byte offsets, random bytes, deeply nested arrays, strings padded to just under
and over the limit, invalid UTF-8. Every reply must be 2xx or 4xx with a Content-Length body of the right
shape. Afterwards a valid filter must get, byte for byte, the reply it got before the fuzzing.

Prints totals by status code; exits 1 on any 5xx, a malformed reply, a dropped connection, a server that
died, or a changed answer. tests/test_fuzz.py runs a bounded version of the same fuzzer in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/fuzz.py`: the shared test fakes come from the checkout
    sys.path.insert(0, str(ROOT))

from tests.fakes.ports import free_port  # noqa: E402

GO_FIXTURES = ROOT / "tests" / "fixtures" / "go"
VERBS = ("filter", "prioritize", "bind", "preempt")
FILTER_KEYS = {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
TRAINING_UID = "3f0e8a52-6d1b-4c8e-9b7a-2d5f1c0e4a91"
ODD_QUANTITIES = [
    "abc",
    "",
    "1e1000000",
    "NaN",
    "Infinity",
    "-1",
    "-0.5",
    "1E",
    "9" * 40,
    "0.0000001m",
    "1Zi",
    "1.5.5",
    "--1",
    "Gi",
    "1e-1000000",
    "9223372036854775807",
    "1e18",
    " 1",
    "1 ",
    "0x10",
    "\uff11",
]
BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe2\x82", b"\x80"]
Send = Callable[[str, bytes], Awaitable["Reply"]]
MAX_PROBLEMS = 50  # then stop: enough to diagnose, and a hung server would otherwise take hours


# -- valid payloads --------------------------------------------------------------------------------------
def go_node(name: str) -> dict[str, Any]:
    raw = (GO_FIXTURES / "node.json").read_bytes().strip()
    return orjson.loads(
        raw.replace(b"__NODE__", name.encode()).replace(b"__UID__", b"u-" + name.encode()).replace(b"__POOL__", b"a100")
    )


@dataclass
class Templates:
    """Valid payloads per verb, built around the recorded Go-shaped Pod and the server's node names."""

    names: list[str]
    by_verb: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pod = orjson.loads((GO_FIXTURES / "pod-training.json").read_bytes())
        names = self.names
        args = [
            {"Pod": pod, "Nodes": None, "NodeNames": names[:20]},
            {
                "Pod": pod,
                "Nodes": {"metadata": {"resourceVersion": "48250"}, "items": [go_node(n) for n in names[:3]]},
                "NodeNames": None,
            },
        ]
        self.by_verb = {
            "filter": args,
            "prioritize": args,
            "bind": [
                {
                    "PodName": "train-llama-7f9c4-0",
                    "PodNamespace": "ml-research",
                    "PodUID": TRAINING_UID,
                    "Node": self.bind_node,
                }
            ],
            "preempt": [
                {
                    "Pod": pod,
                    "NodeNameToVictims": None,
                    "NodeNameToMetaVictims": {
                        n: {"Pods": [{"UID": f"uid-ml-research-running-{i}"}], "NumPDBViolations": 0}
                        for i, n in enumerate(names[:3])
                    },
                }
            ],
        }

    @property
    def bind_node(self) -> str:
        """The one node fuzzed binds can land on; the correctness check leaves it out."""
        return self.names[1]

    def check_request(self) -> bytes:
        """A valid filter whose answer fuzzing cannot change: a small no-team pod, nodes binds cannot reach."""
        pod = orjson.loads((GO_FIXTURES / "pod-web.json").read_bytes())
        names = [n for n in self.names[:100] if n != self.bind_node]
        return orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})


# -- strategies ------------------------------------------------------------------------------------------
def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False)
        | st.text(max_size=40)
        | st.sampled_from(ODD_QUANTITIES)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
        max_leaves=20,
    )


# built once: hypothesis strategies are costly to construct and validate, cheap to draw from
JSON_VALUES = json_values()
QUANTITIES = st.sampled_from(ODD_QUANTITIES) | st.from_regex(
    r"[+-]?[0-9]{0,6}(\.[0-9]{0,4})?([eE][+-]?[0-9]{1,7})?(m|k|M|G|T|E|Ki|Mi|Gi|Ei|u|n)?", fullmatch=True
)
OPS = st.sampled_from(["replace", "replace", "delete", "recase", "quantity"])


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, (*prefix, i))


def parent(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        obj = obj[key]
    return obj


QUANTITY_PATH = re.compile(r"^(cpu|memory|nvidia\.com/gpu|pods|ephemeral-storage|example\.com/.*)$")


_PATHS: dict[int, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]] = {}


def template_paths(template: dict[str, Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every path into a template, and those that hold a quantity (computed once per template)."""
    if id(template) not in _PATHS:
        every = list(paths(template))
        _PATHS[id(template)] = every, [p for p in every if isinstance(p[-1], str) and QUANTITY_PATH.match(p[-1])]
    return _PATHS[id(template)]


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any]) -> bytes:
    """The valid payload with one to three fields replaced, deleted, re-cased or given odd quantities."""
    obj = orjson.loads(orjson.dumps(template))  # a deep copy, faster than copy.deepcopy
    every, quantities = template_paths(template)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(OPS)
        choices = quantities if op == "quantity" and quantities else every
        path = choices[draw(st.integers(0, len(choices) - 1))]
        try:
            holder, key = parent(obj, path), path[-1]
            holder[key]  # an earlier mutation may have removed or replaced it
        except (KeyError, IndexError, TypeError):
            continue
        if op == "delete":
            del holder[key]
        elif op == "recase" and isinstance(key, str):
            holder[draw(st.sampled_from([key.lower(), key.upper(), key.swapcase()]))] = holder.pop(key)
        elif op == "quantity":
            holder[key] = draw(QUANTITIES)
        else:
            holder[key] = draw(JSON_VALUES)
    return orjson.dumps(obj)


@st.composite
def truncated(draw: st.DrawFn, body: bytes) -> bytes:
    return body[: draw(st.integers(0, len(body) - 1))]


@st.composite
def nested(draw: st.DrawFn, limit: int) -> bytes:
    depth = draw(st.integers(1, limit // 2 + 64))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"Pod":', b"}")]))
    inner = opener * depth + b"1" + closer * draw(st.sampled_from([depth, 0, depth // 2]))
    return draw(
        st.sampled_from(
            [
                inner,
                b'{"Pod":{"metadata":{},"spec":' + inner + b'},"NodeNames":["n"]}',
                b'{"Pod":{},"NodeNames":' + inner + b"}",
            ]
        )
    )


@st.composite
def near_limit(draw: st.DrawFn, template: dict[str, Any], limit: int) -> bytes:
    """A valid payload padded to just under or just over the body limit (a huge annotation or pod name)."""
    obj = orjson.loads(orjson.dumps(template))
    holder: dict[str, Any] = obj["Pod"]["metadata"].setdefault("annotations", {}) if "Pod" in obj else obj
    key = "example.com/blob" if "Pod" in obj else "PodName"
    char, width = draw(st.sampled_from([("x", 1), ("\u00e9", 2), ("\u2603", 3), ('"', 2), ("\\", 2), ("\n", 2)]))
    holder[key] = ""
    base = len(orjson.dumps(obj))
    target = limit + draw(st.integers(-64, 64))
    holder[key] = char * max(0, (target - base) // width)
    return orjson.dumps(obj)


@st.composite
def bad_utf8(draw: st.DrawFn, body: bytes) -> bytes:
    spots = [m.end() for m in re.finditer(rb'":"', body)] or [len(body) // 2]
    at = draw(st.sampled_from(spots))
    return body[:at] + draw(st.sampled_from(BAD_UTF8)) + body[at:]


def verb_bodies(templates: Templates, verb: str, limit: int) -> st.SearchStrategy[bytes]:
    valid = [orjson.dumps(t) for t in templates.by_verb[verb]]
    pick_t = st.sampled_from(templates.by_verb[verb])
    pick_b = st.sampled_from(valid)
    return st.one_of(
        pick_b,
        pick_t.flatmap(mutated),
        pick_t.flatmap(mutated),
        pick_t.flatmap(mutated),
        pick_b.flatmap(truncated),
        JSON_VALUES.map(orjson.dumps),
        st.binary(max_size=1024),
        nested(limit),
        pick_t.flatmap(lambda t: near_limit(t, limit)),
        pick_b.flatmap(bad_utf8),
    )


def bodies(templates: Templates, limit: int) -> st.SearchStrategy[tuple[str, bytes]]:
    per_verb = {v: verb_bodies(templates, v, limit) for v in VERBS}
    return st.sampled_from(VERBS).flatmap(lambda v: st.tuples(st.just(v), per_verb[v]))


# -- replies ---------------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def reply_problem(verb: str, reply: Reply) -> str | None:
    """What is wrong with a reply, or None: 2xx/4xx only, Content-Length bodies, the verb's shape."""
    if reply.status >= 500 or reply.status < 200:
        return f"status {reply.status}: {reply.body[:300]!r}"
    if "chunked" in reply.headers.get("Transfer-Encoding", "").lower() or "Content-Length" not in reply.headers:
        return f"not a Content-Length reply: {reply.headers}"
    try:
        data = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return f"reply is not JSON: {reply.body[:300]!r}"
    if reply.status >= 400:
        ok = isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]
    elif verb == "filter":
        ok = isinstance(data, dict) and set(data) == FILTER_KEYS and isinstance(data["Error"], str)
    elif verb == "prioritize":
        ok = isinstance(data, list) and all(
            isinstance(e, dict) and set(e) == {"Host", "Score"} and type(e["Score"]) is int and 0 <= e["Score"] <= 10
            for e in data
        )
    elif verb == "bind":
        ok = isinstance(data, dict) and set(data) == {"Error"} and isinstance(data["Error"], str)
    else:
        ok = (
            isinstance(data, dict)
            and set(data) == {"NodeNameToMetaVictims"}
            and isinstance(data["NodeNameToMetaVictims"], dict)
        )
    return None if ok else f"{verb} {reply.status} reply of the wrong shape: {reply.body[:300]!r}"


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, verb: str, reply: Reply | None, error: str | None = None) -> None:
        if reply is None:
            self.statuses["connection error"] += 1
            self.problems.append(f"{verb}: {error}")
            return
        self.statuses[str(reply.status)] += 1
        problem = reply_problem(verb, reply)
        if problem:
            self.problems.append(problem)


# -- the live run ----------------------------------------------------------------------------------------
def generate(
    templates: Templates, limit: int, count: int, out: queue.Queue[tuple[str, bytes] | None], batch: int = 16
) -> None:
    """Hypothesis draws `count` bodies into `out` (run in a thread), then None. Each example is a batch of
    bodies: the engine's per-example bookkeeping costs more than drawing one body."""
    left = count

    @settings(
        max_examples=-(-count // batch),
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(bodies(templates, limit), min_size=batch, max_size=batch, unique_by=lambda item: item[1]))
    def draw(items: list[tuple[str, bytes]]) -> None:
        nonlocal left
        for item in items[:left]:
            out.put(item)
        left -= min(left, len(items))

    try:
        draw()
    finally:
        out.put(None)


@contextlib.contextmanager
def berth_server(port: int, limit: int) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m scheduler serve --demo` with a small body limit; SIGTERM (then kill) on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "fuzz.yaml"
        config.write_text(f"server:\n  max_body_bytes: {limit}\nlog_level: error\n")
        log = Path(tmp) / "stderr"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "serve", "--demo", "--port", str(port), "--config", str(config)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                yield proc
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        tail = log.read_bytes()[-4000:]
        if tail.strip():
            print(f"--- berth's stderr (last 4 kB) ---\n{tail.decode(errors='replace')}")


async def fuzz_live(base: str, count: int, concurrency: int, limit: int, proc: subprocess.Popen[bytes]) -> int:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        await wait_ready(session, base, proc)
        async with session.get(f"{base}/debug/nodes") as r:
            names = [n["name"] for n in (await r.json())["nodes"]]
        templates = Templates(names)

        async def send(verb: str, body: bytes) -> Reply:
            async with session.post(
                f"{base}/scheduler/{verb}", data=body, headers={"Content-Type": "application/json"}
            ) as r:
                return Reply(r.status, dict(r.headers), await r.read())

        before = await send("filter", templates.check_request())
        assert before.status == 200 and not reply_problem("filter", before), before
        tally = Tally()
        started = time.perf_counter()
        await pump(templates, limit, count, concurrency, send, tally)
        elapsed = time.perf_counter() - started
        after = await send("filter", templates.check_request())
    alive = proc.poll() is None
    report(tally, count, elapsed, concurrency, limit)
    same = after.body == before.body and after.status == 200
    print(
        f"valid filter afterwards: {'same reply as before' if same else 'DIFFERENT reply'}; "
        f"server {'alive' if alive else f'DIED with {proc.returncode}'}"
    )
    return 0 if same and alive and not tally.problems and not any(s.startswith("5") for s in tally.statuses) else 1


async def wait_ready(session: Any, base: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"berth exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError):
            async with session.get(f"{base}/readyz") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise SystemExit("berth did not become ready within 60 s")


async def pump(templates: Templates, limit: int, count: int, concurrency: int, send: Send, tally: Tally) -> None:
    import aiohttp

    generated: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=4096)
    threading.Thread(target=generate, args=(templates, limit, count, generated), daemon=True).start()
    work: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=concurrency * 8)

    async def feed() -> None:
        while True:
            items = [await asyncio.to_thread(generated.get)]
            while items[-1] is not None and len(items) < 256:
                try:
                    items.append(generated.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item is None:
                    for _ in range(concurrency):
                        await work.put(None)
                    return
                await work.put(item)

    async def worker() -> None:
        while len(tally.problems) < MAX_PROBLEMS and (item := await work.get()) is not None:
            verb, body = item
            try:
                tally.add(verb, await send(verb, body))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                tally.add(verb, None, f"{type(exc).__name__}: {exc} (body of {len(body)} bytes)")
            done = sum(tally.statuses.values())
            if done % 10_000 == 0:
                print(f"  {done:,} sent", flush=True)

    feeder = asyncio.create_task(feed())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if not feeder.done():  # stopped early: too many problems (a server that hangs would take forever)
        print(f"stopped after {MAX_PROBLEMS} problems")
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


def report(tally: Tally, count: int, elapsed: float, concurrency: int, limit: int) -> None:
    total = sum(tally.statuses.values())
    print(
        f"\n{total:,} bodies in {elapsed:.1f} s ({total / elapsed:,.0f}/s), {concurrency} connections, "
        f"body limit {limit:,} bytes"
    )
    for status, n in sorted(tally.statuses.items()):
        print(f"  {status:>16}: {n:>8,}")
    for problem in tally.problems[:20]:
        print(f"PROBLEM: {problem}")
    if len(tally.problems) > 20:
        print(f"... and {len(tally.problems) - 20} more problems")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=10_000, help="bodies to send (default 10,000)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent keep-alive connections (default 8)")
    p.add_argument(
        "--max-body", type=int, default=256 << 10, help="server.max_body_bytes for the run (default 256 KiB)"
    )
    args = p.parse_args(argv)
    port = free_port()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with berth_server(port, args.max_body) as proc:
        code = asyncio.run(fuzz_live(f"http://127.0.0.1:{port}", args.count, args.concurrency, args.max_body, proc))
    if proc.returncode not in (0, None):
        print(f"berth exited with {proc.returncode} on SIGTERM")
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
