"""Bad input of gangs: each case has a clear phase and reason (the PodGroup condition, an Event), never a
stuck gate without one; and /debug/queue on the main listener."""

from aiohttp.test_utils import TestClient

from scheduler.admission.loop import AdmissionLoop
from scheduler.extender.server import Berth
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder
from tests.admission.helpers import add_gang, gang_state, member
from tests.admission.test_loop import FakeApi
from tests.conftest import BerthServer


async def test_a_gang_larger_than_any_domain_is_unschedulable_and_says_how_large() -> None:
    state = gang_state(racks=2, per_rack=2)  # each rack: 16 GPUs
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    add_gang(state, "wide", 3, topology="rack")  # 24 GPUs in one rack: never
    await loop.tick()
    gang = state.gangs.gangs["ml/wide"]
    assert gang.phase == "Unschedulable" and "asks 24 GPUs but the largest rack domain has 16" in gang.reason
    assert api.events and api.events[0]["reason"] == "Unschedulable" and api.events[0]["type"] == "Warning"
    assert not state.gang_holds


async def test_too_few_members_after_the_timeout_says_so_once() -> None:
    state = gang_state()
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    state.apply_pending_pod("ADDED", member("a-0", "a", 3, extra={"berth.dev/gang-timeout-seconds": "30"}))
    await loop.tick()
    gang = state.gangs.gangs["ml/a"]
    assert gang.reason == "waiting for members: 1 of 3 exist"
    gang.first_seen -= 31  # half a minute later, still one pod
    await loop.tick()
    await loop.tick()
    assert gang.phase == "Pending" and gang.reason.startswith("only 1 of minMember 3 pods exist after 30 s"), (
        gang.reason
    )
    assert [e["message"][:6] for e in api.events] == ["waitin", "only 1"], "one event per reason"
    assert api.patches == {} and all(m.gated for m in gang.members.values())


async def test_members_disagreeing_on_the_size_are_invalid_until_they_agree() -> None:
    state = gang_state()
    loop = AdmissionLoop(state, FakeApi(state), lambda: True)
    state.apply_pending_pod("ADDED", member("a-0", "a", 2))
    state.apply_pending_pod("ADDED", member("a-1", "a", 3))
    await loop.tick()
    gang = state.gangs.gangs["ml/a"]
    assert gang.phase == "Invalid" and "ml/a-0 says 2, ml/a-1 says 3" in gang.reason, gang.reason
    state.apply_pending_pod("DELETED", member("a-1", "a", 3))
    state.apply_pending_pod("ADDED", member("a-1", "a", 2))
    await loop.tick()
    assert gang.phase == "Admitted", gang.reason


async def test_a_topology_key_no_node_has_and_a_pod_in_two_gangs() -> None:
    state = gang_state(racks=1, per_rack=2)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    add_gang(state, "z", 2, topology="topology.kubernetes.io/zone")
    twice = member("x-0", "x", 1)
    twice["metadata"]["labels"] = {"scheduling.x-k8s.io/pod-group": "other"}
    state.apply_pending_pod("ADDED", twice)
    await loop.tick()
    g = state.gangs.gangs
    assert g["ml/z"].phase == "Unschedulable" and "topology.kubernetes.io/zone" in g["ml/z"].reason
    assert g["ml/other"].phase == "Invalid" and "names two gangs" in g["ml/other"].reason
    told = {e["involvedObject"]["name"]: e["message"] for e in api.events}
    assert "topology.kubernetes.io/zone" in told["z-0"] and "two gangs" in told["x-0"], told


async def test_debug_queue_on_the_main_listener_and_in_its_index() -> None:
    state = gang_state(racks=1, per_rack=1)
    berth = Berth(state, Metrics(), Binder(state, None, None))
    client = TestClient(BerthServer(berth))
    await client.start_server()
    try:
        off = await (await client.get("/debug/queue")).json()
        assert off["enabled"] is False and off["gangs"] == []
        loop = AdmissionLoop(state, FakeApi(state), lambda: True)
        berth.debug.queue_view = loop.view
        add_gang(state, "a", 2)
        await loop.tick()
        r = await client.get("/debug/queue")
        body = await r.json()
        assert r.status == 200 and body["enabled"] is True and body["policy"] == "StrictFIFO per cohort"
        assert body["gangs"][0]["gang"] == "ml/a" and "fits no node" in body["gangs"][0]["reason"]
        index = await (await client.get("/")).json()
        assert "GET /debug/queue" in index["endpoints"]
    finally:
        await client.close()
