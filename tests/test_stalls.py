"""The stall recorder behind GET /debug/stalls (scheduler/observability/stalls.py), the collector kept out
of verb calls, and housekeeping's incremental GPU totals. No timing assertions beyond "a 100 ms block
is seen as more than 50 ms"."""

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest

from scheduler.app import Listener, _listen
from scheduler.cluster.ledger import PodEntry
from scheduler.config import Config
from scheduler.extender.server import Berth
from scheduler.model.podspec import PodRequest
from scheduler.observability import stalls as S
from scheduler.observability.metrics import Metrics
from scheduler.observability.showback import account_gpu_seconds, gpus_held
from scheduler.policy.binder import Binder
from tests.conftest import GoWire, demo_cluster
from tests.extender.test_verbs_http import read_reply, request


@pytest.fixture
def recorder() -> Iterator[S.StallRecorder]:
    rec = S.StallRecorder()
    yield rec
    rec.uninstall()


def test_a_collection_is_counted_by_generation_and_where_it_ran(recorder: S.StallRecorder) -> None:
    recorder.install(probe_every=0)  # the collector's hook only: no loop needed
    gc.collect()
    snap = recorder.snapshot()
    assert snap["gc"]["collections"]["gen2"] == 1 and snap["gc"]["inCall"] == 0
    recorder.in_call = True
    gc.collect(0)
    recorder.in_call = False
    with recorder.housekeeping_run():
        gc.collect(1)
    snap = recorder.snapshot()
    assert snap["gc"]["collections"] == {"gen0": 1, "gen1": 1, "gen2": 1}
    assert snap["gc"]["inCall"] == 1 and snap["gc"]["explicit"] == 1
    assert snap["housekeeping"]["runs"] == 1
    recorder.uninstall()
    gc.collect()
    assert recorder.snapshot()["gc"]["collections"]["gen2"] == 1, "uninstalled: no longer counted"


async def test_a_blocking_sleep_shows_up_as_loop_lag(recorder: S.StallRecorder) -> None:
    recorder.install(asyncio.get_running_loop(), probe_every=0.005)
    await asyncio.sleep(0.03)
    time.sleep(0.1)  # holds the loop: the probe fires ~100 ms late
    await asyncio.sleep(0.03)
    lag = recorder.snapshot()["loopLag"]
    assert lag["over2ms"] >= 1 and lag["ms"]["max"] > 50
    assert any(kind == "lag" and end - start > 0.05 for start, end, kind in recorder.events)


async def test_installed_again_the_probe_moves_to_the_new_loop(recorder: S.StallRecorder) -> None:
    other = asyncio.new_event_loop()  # an earlier server's loop, since closed
    recorder.install(other, probe_every=0.005)
    other.close()
    recorder.install(asyncio.get_running_loop(), probe_every=0.005)
    await asyncio.sleep(0.1)
    assert recorder.snapshot()["loopLag"]["probes"] >= 2


def test_a_slow_call_is_kept_with_what_overlapped_it(recorder: S.StallRecorder) -> None:
    for i in range(30):  # fast calls, 1 ms apart: 0.1 ms each
        t = 10.0 + i * 1e-3
        recorder.call("filter", t, t + 1e-5, t + 9e-5, t + 1e-4, 100)
    # housekeeping held the loop for 5 ms while the next request waited, then a 0.1 ms call
    recorder.events.append((10.031, 10.036, "housekeeping"))
    recorder.call("filter", 10.036, 10.0361, 10.0362, 10.0363, 300_000)
    snap = recorder.snapshot()
    assert snap["calls"] == 31
    top = snap["slowest"][0]
    assert top["replyBytes"] == 300_000 and top["gapMs"] == pytest.approx(6.9, abs=0.01)
    assert top["overlapMs"]["housekeeping"] == pytest.approx(5.0, abs=0.01)
    assert top["overlapMs"]["gc"] == 0.0
    assert snap["phasesMs"]["handler"]["p50"] == pytest.approx(0.08, abs=1e-6)
    assert len(snap["slowest"]) == S.SLOWEST
    recorder.reset()
    assert recorder.snapshot()["calls"] == 0 and recorder.snapshot()["slowest"] == []


def test_percentiles_are_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 1001)]  # 1..1000 ms
    p = S.percentiles(values)
    assert (p["p50"], p["p99"], p["p99.9"], p["max"]) == pytest.approx((500, 990, 999, 1000))
    assert S.percentiles([])["p99"] == 0.0


def test_the_ring_keeps_the_most_recent_samples() -> None:
    ring = S._Ring(3)
    for v in range(5):
        ring.add(float(v))
    assert sorted(ring.data) == [2.0, 3.0, 4.0]


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    config = Config()
    config.server.host = "127.0.0.1"
    state = demo_cluster(config)
    opened = await _listen(Berth(state, Metrics(), Binder(state, None, None)), config, 0, None, verbs=True)
    yield opened
    await opened.close()


async def test_verb_calls_run_with_the_collector_off_and_are_recorded(listener: Listener) -> None:
    verbs = listener.verbs
    assert verbs is not None
    rec = verbs.stalls = S.StallRecorder()
    seen: list[bool] = []
    real = verbs.berth.filter_body

    def spying(raw: bytes) -> bytes:
        seen.append(gc.isenabled())
        return real(raw)

    verbs.berth.filter_body = spying  # type: ignore[method-assign]
    go = GoWire(verbs.berth.state)
    body = go.args(go.pod(), go.names()[:30])
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    for _ in range(2):
        writer.write(request("/scheduler/filter", body))
        status, _, reply = await read_reply(reader)
        assert status == 200
    writer.close()
    assert seen == [False, False] and gc.isenabled(), "off during the call, back on after it"
    snap = rec.snapshot()
    assert snap["calls"] == 2 and snap["slowest"][0]["replyBytes"] == len(reply)
    # the view itself, through aiohttp on the same port
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"GET /debug/stalls?reset=1 HTTP/1.1\r\nHost: berth\r\n\r\n")
    status, _, raw = await read_reply(reader)
    writer.close()
    data = orjson.loads(raw)
    assert status == 200 and {"calls", "phasesMs", "gc", "housekeeping", "loopLag", "slowest"} <= set(data)


def scan(state) -> dict[tuple[str, str], int]:  # type: ignore[no-untyped-def]
    """What account_gpu_seconds walked every pod for, each second, before GpuHeld: GPU milli charged."""
    totals: dict[tuple[str, str], int] = {}
    for entry in state.ledger:
        charged = entry.charged if entry.charged is not None else entry.request.quota_units()
        if charged.get("nvidia.com/gpu", 0):
            k = (entry.team or "", entry.model or "")
            totals[k] = totals.get(k, 0) + charged["nvidia.com/gpu"]
    return totals


def test_gpu_totals_follow_holds_releases_and_team_changes() -> None:
    state = demo_cluster(Config(), nodes=60)
    held = gpus_held(state)
    assert held.current() == scan(state) and scan(state), "the demo holds GPUs"
    some = [e for e in state.ledger if e.request.gpu][:5]
    for entry in some[:3]:
        state.ledger.release(entry.key)
    assert held.current() == scan(state)
    node = some[0].node
    extra = PodEntry("newns/extra", "uid-extra", node, PodRequest(cpu=1000, memory=1, gpu=1), 0, None, False, 0, True)
    state.ledger.hold(extra)
    state.ledger.hold(extra)  # held again: replaces, not adds
    assert held.current() == scan(state)
    assert ("", extra.model or "") in held.current(), "no team claims its namespace yet"
    # A team now claims the namespace: the state re-resolves every pod's team, the totals follow.
    state.apply_team("ADDED", {"metadata": {"name": "newteam"}, "spec": {"namespaces": ["newns"]}})
    assert extra.team == "newteam"
    assert held.current() == scan(state) and ("newteam", extra.model or "") in held.current()
    m = Metrics()
    account_gpu_seconds(state, m, 1.0)
    assert held.exported == (m, state.quotas.version)
