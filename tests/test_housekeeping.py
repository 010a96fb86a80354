"""Housekeeping's GC policy: a cycle made before a freeze is collected, never frozen for good."""

import asyncio
import contextlib
import gc
import weakref

from scheduler.app import FREEZE_ABOVE, housekeeping, tune_gc
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.observability.metrics import Metrics


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


async def test_cycles_are_collected_before_each_freeze() -> None:
    """Not only the first freeze after the initial sync: every later one (30 s apart in production)."""
    state = ClusterState(Config())
    state.mark_synced("nodes")
    gc.disable()  # as under low traffic: the young generation never reaches its threshold on its own
    task = asyncio.create_task(housekeeping(state, Metrics(), every=0.01, freeze_every=0.0))
    try:
        while not gc.get_freeze_count():  # the first freeze, after the initial sync
            await asyncio.sleep(0.01)
        frozen = gc.get_freeze_count()
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
        alive = weakref.ref(a)
        del a, b
        for _ in range(200):
            await asyncio.sleep(0.01)
            if gc.get_freeze_count() > frozen:
                break
        assert gc.get_freeze_count() > frozen, "housekeeping did not freeze again"
        assert alive() is None, "a cycle made before the freeze was frozen instead of collected"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
        gc.enable()


async def test_a_burst_of_survivors_freezes_before_the_timer() -> None:
    """Many objects surviving young collections (a bind storm) bring the freeze forward, so the full
    collection before it scans thousands of objects, not the hundreds of thousands of 30 s."""
    state = ClusterState(Config())
    state.mark_synced("nodes")
    thresholds = gc.get_threshold()
    tune_gc()  # as in production: young collections come from housekeeping, not every 700 allocations
    task = asyncio.create_task(housekeeping(state, Metrics(), every=0.01, freeze_every=3600.0))
    kept: list[list[int]] = []
    try:
        while not gc.get_freeze_count():  # the first freeze, after the initial sync
            await asyncio.sleep(0.01)
        frozen = gc.get_freeze_count()
        for _ in range(300):
            kept.extend([i] for i in range(FREEZE_ABOVE // 20))  # survivors, as a ledger's entries are
            await asyncio.sleep(0.01)
            if gc.get_freeze_count() > frozen:
                break
        assert gc.get_freeze_count() > frozen, "no freeze although the timer is an hour away"
        assert len(kept) < 300 * (FREEZE_ABOVE // 20), "froze only after the loop ran out"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
        gc.set_threshold(*thresholds)
