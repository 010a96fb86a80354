"""Reports of the load tests: plain or Markdown tables, and the notes that say on what machine and how
a benchmark ran. `render()` is shared by `berth bench` and `loadtests.quality`."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.objects import BIND_NAMESPACE
from loadtests.wrk import Case, Measurement, WrkResult


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    """A table: Markdown, or plain text with the first column left-aligned and the others right-aligned."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def server_table(measurements: Sequence[Measurement], markdown: bool) -> str:
    rows = []
    for m in measurements:
        r = m.result
        cells = (
            [_ms(r.p50_ms), _ms(r.p99_ms), _ms(r.p999_ms), f"{r.rps:,.0f}", str(r.errors), str(r.runs)]
            if r
            else ["-"] * 6
        )
        rows.append([m.case.label, str(m.conns), *cells, m.note])
    return render(["case", "conns", "p50 ms", "p99 ms", "p99.9 ms", "req/s", "errors", "runs", "note"], rows, markdown)


@dataclass(frozen=True)
class Excess:
    """Berth's latency over the floor's at each percentile, ms, and the tail's ratios to the median's."""

    p50: float
    p99: float
    p999: float

    @property
    def p99_ratio(self) -> float:
        return _ratio(self.p99, self.p50)

    @property
    def p999_ratio(self) -> float:
        return _ratio(self.p999, self.p50)

    def meets(self, p99_times: float = 2.0, p999_times: float = 4.0) -> bool:
        """The issue's target: p99 excess <= 2x the p50 excess, p99.9 excess <= 4x."""
        return self.p99 <= p99_times * max(self.p50, 0.0) and self.p999 <= p999_times * max(self.p50, 0.0)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf if a > 0 else 0.0


def excess(mine: WrkResult, floor: WrkResult) -> Excess:
    return Excess(mine.p50_ms - floor.p50_ms, mine.p99_ms - floor.p99_ms, mine.p999_ms - floor.p999_ms)


def floor_table(results: Sequence[Measurement], base: str, markdown: bool) -> str:
    """Berth and the floor side by side with the excess at each percentile (ms)."""
    floors = {(m.case, m.conns): m.result for m in results if m.server == "floor"}
    rows = []
    for m in results:
        theirs = floors.get((m.case, m.conns))
        if m.server != base or m.result is None or theirs is None:
            continue
        mine, ex = m.result, excess(m.result, theirs)
        rows.append(
            [
                m.case.label,
                str(m.conns),
                f"{_ms(mine.p50_ms)} / {_ms(mine.p99_ms)} / {_ms(mine.p999_ms)}",
                f"{_ms(theirs.p50_ms)} / {_ms(theirs.p99_ms)} / {_ms(theirs.p999_ms)}",
                f"{_ms(ex.p50)} / {_ms(ex.p99)} / {_ms(ex.p999)}",
                f"{ex.p99_ratio:.1f}x / {ex.p999_ratio:.1f}x",
                ("met" if ex.meets() else "not met") if m.conns == 1 else "",
            ]
        )
    headers = ["case", "conns", f"{base} p50 / p99 / p99.9", "floor p50 / p99 / p99.9", "excess p50 / p99 / p99.9"]
    return render([*headers, "excess p99, p99.9 / p50", "target (<= 2x, 4x)"], rows, markdown)


def _merged(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-run /debug/stalls readings of one case, summed (counts, totals) or the median run (percentiles)."""

    def median_of(path: Sequence[str]) -> float:
        values = []
        for run in runs:
            x: Any = run
            for key in path:
                x = x[key]
            values.append(float(x))
        values.sort()
        return values[len(values) // 2] if values else 0.0

    def total(path: Sequence[str]) -> float:
        return sum(float(_get(run, path)) for run in runs)

    def top(path: Sequence[str]) -> float:
        return max((float(_get(run, path)) for run in runs), default=0.0)

    slowest = sorted((c for run in runs for c in run["slowest"]), key=lambda c: -c["cycleMs"])
    gc = ["gc", "collections"]
    return {
        "calls": total(["calls"]),
        "handler": (
            median_of(["phasesMs", "handler", "p50"]),
            median_of(["phasesMs", "handler", "p99"]),
            top(["phasesMs", "handler", "max"]),
        ),
        "write": (
            median_of(["phasesMs", "write", "p50"]),
            median_of(["phasesMs", "write", "p99"]),
            top(["phasesMs", "write", "max"]),
        ),
        "read": (
            median_of(["phasesMs", "read", "p50"]),
            median_of(["phasesMs", "read", "p99"]),
            top(["phasesMs", "read", "max"]),
        ),
        "gcs": total([*gc, "gen0"]) + total([*gc, "gen1"]) + total([*gc, "gen2"]),
        "gcInCall": total(["gc", "inCall"]),
        "gcExplicit": total(["gc", "explicit"]),
        "hkOwnMax": max((float(run["housekeeping"].get("ownMs", {}).get("max", 0.0)) for run in runs), default=0.0),
        "gcMax": top(["gc", "pauseMs", "max"]),
        "hkRuns": total(["housekeeping", "runs"]),
        "hkMax": top(["housekeeping", "ms", "max"]),
        "lagOver": total(["loopLag", "over2ms"]),
        "lagMax": top(["loopLag", "ms", "max"]),
        "runqueue": sum(float(run.get("runqueue", {}).get("totalMs", 0.0)) for run in runs),
        "seconds": total(["seconds"]),
        "slowest": slowest[:3],
    }


def _get(data: Mapping[str, Any], path: Sequence[str]) -> Any:
    x: Any = data
    for key in path:
        x = x[key]
    return x


def _slow_note(call: Mapping[str, Any]) -> str:
    over = {k: v for k, v in call["overlapMs"].items() if v >= 0.05}
    parts = [f"{call['cycleMs']:.2f} ms: gap {call['gapMs']:.2f}, read {call['readMs']:.2f}, "
             f"handler {call['handlerMs']:.2f}, write {call['writeMs']:.2f}"]  # fmt: skip
    if over:
        parts.append("overlapped by " + ", ".join(f"{k} {v:.2f}" for k, v in over.items()))
    return "; ".join(parts)


def attribution_table(stalls: Mapping[tuple[Case, int], Any], markdown: bool) -> str:
    """Inside Berth, per case: its phases (median run's p50 / p99, worst max), what blocked the loop
    during the runs, and the slowest call with what overlapped it."""
    rows = []
    for (case, conns), reading in stalls.items():
        if not reading.runs:
            continue
        m = _merged(reading.runs)
        handler, write, read = m["handler"], m["write"], m["read"]
        slowest = m["slowest"][0] if m["slowest"] else None
        rows.append(
            [
                case.label,
                str(conns),
                f"{m['calls']:,.0f}",
                f"{read[0]:.3f} / {read[1]:.3f} / {read[2]:.2f}",
                f"{handler[0]:.3f} / {handler[1]:.3f} / {handler[2]:.2f}",
                f"{write[0]:.3f} / {write[1]:.3f} / {write[2]:.2f}",
                f"{m['gcs']:.0f} ({m['gcInCall']:.0f} in a call, {m['gcExplicit']:.0f} by housekeeping), "
                f"max {m['gcMax']:.2f}",
                f"{m['hkRuns']:.0f}, max {m['hkMax']:.2f} (own {m['hkOwnMax']:.2f})",
                f"{m['lagOver']:.0f}, max {m['lagMax']:.2f}",
                f"{m['runqueue']:.1f} ({m['runqueue'] / max(m['seconds'] * 1e3, 1e-9):.1%})",
                _slow_note(slowest) if slowest else "",
            ]
        )
    headers = ["case", "conns", "calls", "read p50 / p99 / max", "handler p50 / p99 / max", "write p50 / p99 / max"]
    headers += ["GC pauses", "housekeeping runs", "loop lag > 2 ms", "waited for a CPU", "slowest call (ms)"]
    return render(headers, rows, markdown)


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


def report(
    results: Sequence[Measurement],
    servers: Sequence[str],
    markdown: bool,
    stalls: Mapping[tuple[Case, int], Any] | None = None,
) -> str:
    heading = (lambda text: f"## {text}") if markdown else (lambda text: f"== {text} ==")
    parts = []
    shown = [*servers, *(["floor"] if any(m.server == "floor" for m in results) else [])]
    for name in shown:
        parts += [heading(name), server_table([m for m in results if m.server == name], markdown)]
    if "floor" in shown:
        parts += [
            heading("berth over the floor (ms; the floor answers the same bytes from a compiled server, same core)"),
            floor_table(results, "berth", markdown),
        ]
    if stalls and any(reading.runs for reading in stalls.values()):
        parts += [
            heading("attribution inside berth (/debug/stalls, ms; GC, housekeeping and lag counts over all runs)"),
            attribution_table(stalls, markdown),
        ]
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
    if argv and argv[0].endswith("bench.py"):
        head = ["python", "-m", "loadtests.bench"]
    elif argv and argv[0].endswith("__main__.py"):  # `python -m scheduler bench` (make bench)
        head = ["python", "-m", Path(argv[0]).parent.name]
    else:
        head = [Path(argv[0]).name]
    return shlex.join(head + argv[1:])


def machine_note(before: Mapping[str, float], after: Mapping[str, float]) -> str:
    """Load average, CPU steal and how busy the machine was over the run (from /proc/stat)."""
    from loadtests.procs import busy_share, steal_share

    note = f"load average (1 min) {before['load1']:.2f} before, {after['load1']:.2f} after"
    steal, busy = steal_share(dict(before), dict(after)), busy_share(dict(before), dict(after))
    if steal is not None and busy is not None:
        note += f"; CPU steal {steal:.2%} and all cores {busy:.0%} busy over the run (/proc/stat)"
    return note


def environment_notes(
    args: argparse.Namespace,
    pinning_note: str,
    bodies: dict[str, int],
    before: Mapping[str, float],
    after: Mapping[str, float] | None = None,
) -> list[str]:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    wrk_version = wrk.split("[")[0].strip()
    # Anything else running on these 2 cores skews the numbers: say how busy the machine was.
    from loadtests.procs import machine_state

    load = machine_note(before, after or machine_state())
    repeat = getattr(args, "repeat", 1)
    return [
        f"date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"command: `{command_line()}`",
        f"nproc: {os.cpu_count()}; CPU: {cpu_model()}; Python {platform.python_version()}; {wrk_version}",
        f"pinning: {pinning_note}; wrk -t1, {args.warmup} s warm-up then {repeat} run(s) of {args.duration} s "
        f"per case (the median run's percentiles shown); {load}",
        f"floor: {getattr(args, 'floor_note', 'not run')}",
        "bodies: " + ", ".join(f"{k} {v / 1024:,.0f} KiB" for k, v in bodies.items()),
        f"pod: {args.pod_gpus} GPU(s) + 8 CPU + 32Gi, two containers; filter notes give how many nodes fit",
        f"bind: pods in the unteamed namespace {BIND_NAMESPACE} asking 10m CPU + 16Mi, each first seeded "
        "through filter against its one node (the server learns a pod's request from filter), then bound "
        "in order, round-robin over the nodes that take it. Binds in a loop use up pod slots: compare with "
        "the free slots noted; rejected binds count as errors; past the seeded pods, re-binds (idempotent) "
        "are noted.",
    ]
