"""Reports of the load tests: plain or Markdown tables, and the notes that say on what machine and how
a benchmark ran. `render()` is shared by `berth bench` and `loadtests.quality`."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtests.objects import BIND_NAMESPACE
from loadtests.wrk import Measurement


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    """A table: Markdown, or plain text with the first column left-aligned and the others right-aligned."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def server_table(measurements: Sequence[Measurement], markdown: bool) -> str:
    rows = []
    for m in measurements:
        r = m.result
        cells = [f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.rps:,.0f}", str(r.errors)] if r else ["-"] * 4
        rows.append([m.case.label, str(m.conns), *cells, m.note])
    return render(["case", "conns", "p50 ms", "p99 ms", "req/s", "errors", "note"], rows, markdown)


def ratio_table(base: str, others: Sequence[str], results: Sequence[Measurement], markdown: bool) -> str:
    """How many times better `base` is: latency other/base, throughput base/other."""
    index = {(m.server, m.case, m.conns): m.result for m in results}
    headers = ["case", "conns"]
    for other in others:
        headers += [f"p50 {other}/{base}", f"p99 {other}/{base}", f"req/s {base}/{other}"]
    rows = []
    for m in results:
        if m.server != base:
            continue
        row = [m.case.label, str(m.conns)]
        for other in others:
            mine, theirs = m.result, index.get((other, m.case, m.conns))
            if mine and theirs and mine.p50_ms and mine.p99_ms and theirs.rps:
                row += [
                    f"{theirs.p50_ms / mine.p50_ms:.1f}x",
                    f"{theirs.p99_ms / mine.p99_ms:.1f}x",
                    f"{mine.rps / theirs.rps:.1f}x",
                ]
            else:
                row += ["-"] * 3
        rows.append(row)
    return render(headers, rows, markdown)


def report(results: Sequence[Measurement], servers: Sequence[str], markdown: bool) -> str:
    heading = (lambda text: f"## {text}") if markdown else (lambda text: f"== {text} ==")
    parts = []
    for name in servers:
        parts += [heading(name), server_table([m for m in results if m.server == name], markdown)]
    base = next((s for s in ("berth", "berth-pure") if s in servers), None)
    others = [s for s in servers if s != base]
    if base and others:
        parts += [
            heading(f"ratios ({base} vs {', '.join(others)}; above 1x means {base} is better)"),
            ratio_table(base, others, results, markdown),
        ]
    return "\n\n".join(parts) + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    argv = list(sys.argv)
    head = ["python", "-m", "loadtests.bench"] if argv and argv[0].endswith("bench.py") else [Path(argv[0]).name]
    return shlex.join(head + argv[1:])


def environment_notes(
    args: argparse.Namespace, pinning_note: str, bodies: dict[str, int], load_before: float
) -> list[str]:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    wrk_version = wrk.split("[")[0].strip()
    # Anything else running on these 2 cores skews the numbers: say how busy the machine was.
    load = f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    return [
        f"date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"command: `{command_line()}`",
        f"nproc: {os.cpu_count()}; CPU: {cpu_model()}; Python {platform.python_version()}; {wrk_version}",
        f"pinning: {pinning_note}; wrk -t1, {args.warmup} s warm-up then {args.duration} s per case; {load}",
        "bodies: " + ", ".join(f"{k} {v / 1024:,.0f} KiB" for k, v in bodies.items()),
        f"pod: {args.pod_gpus} GPU(s) + 8 CPU + 32Gi, two containers; filter notes give how many nodes fit",
        f"bind: pods in the unteamed namespace {BIND_NAMESPACE} asking 10m CPU + 16Mi, each first seeded "
        "through filter against its one node (the server learns a pod's request from filter), then bound "
        "in order, round-robin over the nodes that take it. Binds in a loop use up pod slots: compare with "
        "the free slots noted; rejected binds count as errors; past the seeded pods, re-binds (idempotent) "
        "are noted.",
    ]
