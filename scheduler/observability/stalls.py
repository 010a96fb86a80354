"""What the event loop did around slow verb calls: the data behind GET /debug/stalls.

kube-scheduler calls filter and prioritize one at a time, so a call that waits behind anything else on
the loop is a slow call. This records, cheaply enough to stay on in production (a few clock reads per
call, one timer every 10 ms):

- every verb call's phases: `gap` (from the previous reply written to this request's first byte read:
  the client's turn, or the loop busy elsewhere), `read` (first byte to the whole body), `handler`,
  `write` (handing the reply to the socket);
- what blocks the loop: cyclic-GC pauses (`gc.callbacks`; whether inside a verb call or in
  housekeeping's explicit collections), housekeeping runs, and loop lag (a periodic timer's lateness,
  which catches any other callback that held the loop);
- time the loop's thread was runnable but not running (`/proc/thread-self/schedstat`, read by the
  probe): other processes, or the hypervisor, had the core. That part of a stall is the machine's.
- the slowest calls (by gap + read + handler + write) with what overlapped their window.

One recorder per process (`RECORDER`): the collector's callbacks are process-wide anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import os
import resource
import time
from array import array
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CAPACITY = 16384  # calls kept for the percentiles (a ring: the most recent ones)
EVENTS = 4096  # blocking intervals kept for the overlap of the slowest calls
SLOWEST = 10
PROBE_EVERY = 0.01  # seconds between loop-lag probes
LAG_EVENT = 0.002  # lateness above which a probe counts as a stall interval (timers are ~1 ms coarse)
PHASES = ("gap", "read", "handler", "write", "cycle")
KINDS = ("gc", "gc-explicit", "housekeeping", "lag", "runqueue")
RUNQUEUE_EVENT = 0.0002  # runqueue wait between two probes above which it is kept as an interval
SCHEDSTAT = "/proc/thread-self/schedstat"  # ns on CPU, ns waiting on a runqueue, timeslices

clock = time.monotonic  # the same clock as the verb connections' timestamps


def percentiles(values: Any, points: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float]:
    """Nearest-rank percentiles (the value at or below which p % of the samples lie) and the max, in ms."""
    ordered = sorted(values)
    out: dict[str, float] = {}
    for p in points:
        if ordered:
            rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
            out[f"p{p:g}"] = ordered[int(rank) - 1] * 1e3
        else:
            out[f"p{p:g}"] = 0.0
    out["max"] = ordered[-1] * 1e3 if ordered else 0.0
    return out


class _Ring:
    """A fixed number of float samples, overwritten oldest first."""

    def __init__(self, size: int) -> None:
        self.data = array("d")
        self.size, self.next = size, 0

    def add(self, value: float) -> None:
        if len(self.data) < self.size:
            self.data.append(value)
        else:
            self.data[self.next] = value
            self.next = (self.next + 1) % self.size

    def clear(self) -> None:
        self.data, self.next = array("d"), 0


class StallRecorder:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._probe: asyncio.TimerHandle | None = None
        self._probe_loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._gc_started = 0.0
        self._in_span = 0  # inside housekeeping: a collection there is an explicit one
        self.in_call = False  # a verb handler or its reply write is running
        self.installed = False
        self._schedstat: int | None = None  # an open descriptor of SCHEDSTAT (the loop's thread)
        self._waited = 0.0  # runqueue seconds at the last probe
        self.reset()

    # -- counters ------------------------------------------------------------------------------
    def reset(self) -> None:
        self.since = clock()
        self.phases = {p: _Ring(self.capacity) for p in PHASES}
        self.calls = 0
        self.last_written = 0.0
        self.events: deque[tuple[float, float, str]] = deque(maxlen=EVENTS)  # (start, end, kind)
        self.gc_count = [0, 0, 0]
        self.gc_pauses = _Ring(self.capacity)
        self.gc_total = 0.0
        self.gc_in_call = 0
        self.gc_explicit = 0
        self.housekeeping = _Ring(self.capacity)
        self.housekeeping_own = _Ring(self.capacity)  # less the time its thread waited for a CPU
        self.housekeeping_total = 0.0
        self.lag = _Ring(self.capacity)
        self.lag_events = 0
        self.runqueue_total = 0.0
        self.runqueue_events = 0
        self._usage = resource.getrusage(resource.RUSAGE_SELF)
        self._slowest: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap on the cycle

    # -- installing ----------------------------------------------------------------------------
    def install(self, loop: asyncio.AbstractEventLoop | None = None, probe_every: float = PROBE_EVERY) -> None:
        """Hook the collector and start the loop-lag probe on `loop` (the running one by default)."""
        if not self.installed:
            gc.callbacks.append(self._on_gc)
            self.installed = True
        loop = loop or (asyncio.get_running_loop() if probe_every > 0 else None)
        if (
            loop is not None and probe_every > 0 and self._probe_loop is not loop
        ):  # a new loop (tests serve several): probe there
            self.uninstall_probe()
            self._probe_loop = loop
            with contextlib.suppress(OSError):  # not Linux, or no schedstats: no runqueue figures
                self._schedstat = os.open(SCHEDSTAT, os.O_RDONLY)
                self._waited = self._runqueue()
            self._arm(loop, probe_every)

    def uninstall(self) -> None:
        if self.installed:
            gc.callbacks.remove(self._on_gc)
            self.installed = False
        self.uninstall_probe()

    def uninstall_probe(self) -> None:
        self._probe_loop = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None

    def _runqueue(self) -> float:
        """Seconds the loop's thread has waited on a runqueue (runnable, not running) since it began."""
        assert self._schedstat is not None
        return int(os.pread(self._schedstat, 128, 0).split()[1]) / 1e9

    def _arm(self, loop: asyncio.AbstractEventLoop, every: float) -> None:
        self._due = clock() + every
        self._probe = loop.call_later(every, self._tick, loop, every)

    def _tick(self, loop: asyncio.AbstractEventLoop, every: float) -> None:
        now = clock()
        late = max(0.0, now - self._due)
        self.lag.add(late)
        if late > LAG_EVENT:
            self.lag_events += 1
            self.events.append((self._due, now, "lag"))
        if self._schedstat is not None:
            waited = self._runqueue()
            delta, self._waited = waited - self._waited, waited
            self.runqueue_total += delta
            if delta > RUNQUEUE_EVENT:  # when inside the probe interval is not known: placed at its end
                self.runqueue_events += 1
                self.events.append((now - delta, now, "runqueue"))
        self._arm(loop, every)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = clock()
            return
        now = clock()
        pause = now - self._gc_started
        self.gc_count[min(int(info.get("generation", 0)), 2)] += 1
        self.gc_pauses.add(pause)
        self.gc_total += pause
        kind = "gc"
        if self._in_span:
            kind = "gc-explicit"
            self.gc_explicit += 1
        elif self.in_call:
            self.gc_in_call += 1
        self.events.append((self._gc_started, now, kind))

    # -- what the process reports --------------------------------------------------------------
    @contextmanager
    def housekeeping_run(self) -> Iterator[None]:
        """Time a housekeeping run, and what of it was its own (not waiting for a CPU)."""
        start = clock()
        waited = self._runqueue() if self._schedstat is not None else 0.0
        self._in_span += 1
        try:
            yield
        finally:
            self._in_span -= 1
            end = clock()
            preempted = self._runqueue() - waited if self._schedstat is not None else 0.0
            self.housekeeping.add(end - start)
            self.housekeeping_own.add(max(0.0, end - start - preempted))
            self.housekeeping_total += end - start
            self.events.append((start, end, "housekeeping"))

    def call(self, verb: str, received: float, started: float, answered: float, written: float, size: int) -> None:
        """One verb call: its first byte read, handler start, reply built, reply handed to the socket."""
        previous = self.last_written
        self.last_written = written
        gap = received - previous if previous and previous < received else 0.0
        read, handler, write = started - received, answered - started, written - answered
        cycle = gap + read + handler + write
        ph = self.phases
        ph["gap"].add(gap)
        ph["read"].add(read)
        ph["handler"].add(handler)
        ph["write"].add(write)
        ph["cycle"].add(cycle)
        self.calls += 1
        heap = self._slowest
        if len(heap) < SLOWEST or cycle > heap[0][0]:
            window = (written - cycle, written)
            entry = {
                "verb": verb,
                "ageSeconds": written,  # made relative when read
                "cycleMs": cycle * 1e3,
                "gapMs": gap * 1e3,
                "readMs": read * 1e3,
                "handlerMs": handler * 1e3,
                "writeMs": write * 1e3,
                "replyBytes": size,
                "window": window,
            }
            item = (cycle, self.calls, entry)
            if len(heap) < SLOWEST:
                heapq.heappush(heap, item)
            else:
                heapq.heapreplace(heap, item)

    def overlap(self, start: float, end: float) -> dict[str, float]:
        """Milliseconds of each kind of blocking interval inside [start, end]."""
        out = dict.fromkeys(KINDS, 0.0)
        for a, b, kind in self.events:
            if b > start and a < end:
                out[kind] += (min(b, end) - max(a, start)) * 1e3
        return out

    def snapshot(self) -> dict[str, Any]:
        now = clock()
        slowest = []
        for _, _, entry in sorted(self._slowest, reverse=True):
            row = {k: v for k, v in entry.items() if k != "window"}
            row["ageSeconds"] = round(now - entry["ageSeconds"], 3)
            row["overlapMs"] = self.overlap(*entry["window"])
            slowest.append(row)
        return {
            "seconds": round(now - self.since, 3),
            "calls": self.calls,
            "phasesMs": {p: percentiles(r.data) for p, r in self.phases.items()},
            "gc": {
                "collections": {f"gen{i}": n for i, n in enumerate(self.gc_count)},
                "pauseMs": {**percentiles(self.gc_pauses.data), "total": self.gc_total * 1e3},
                "inCall": self.gc_in_call,
                "explicit": self.gc_explicit,
                "thresholds": list(gc.get_threshold()),
                "enabled": gc.isenabled(),
            },
            "housekeeping": {
                "runs": len(self.housekeeping.data),
                "ms": {**percentiles(self.housekeeping.data), "total": self.housekeeping_total * 1e3},
                "ownMs": percentiles(self.housekeeping_own.data),
            },
            "loopLag": {
                "probes": len(self.lag.data),
                "ms": percentiles(self.lag.data),
                "over2ms": self.lag_events,
            },
            "runqueue": {
                "totalMs": self.runqueue_total * 1e3,
                "over0.2ms": self.runqueue_events,
                "involuntarySwitches": resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - self._usage.ru_nivcsw,
            },
            "slowest": slowest,
        }


RECORDER = StallRecorder()
