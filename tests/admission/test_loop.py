"""The admission loop on a fake API server: all-or-nothing ungating, holds other pods' filter sees,
filter steering, StrictFIFO, timeouts, a new leader completing a half-written gang, bad input."""

from typing import Any

import orjson

from scheduler.admission.loop import AdmissionLoop, pin, ungate_patch
from scheduler.cluster.state import ClusterState
from scheduler.extender.wire import BindingArgs
from scheduler.model.names import ANN_GANG_ADMITTED, ANN_GANG_PLAN, GATE_ADMISSION
from tests.admission.helpers import add_gang, gang_state, member
from tests.conftest import GoWire


class FakeApi:
    """Records writes; applies an ungating patch back to the state as the pending-pods watch would."""

    def __init__(self, state: ClusterState, fail: set[str] | None = None) -> None:
        self.state = state
        self.fail = fail or set()
        self.patches: dict[str, list[dict[str, Any]]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, bytes]:
        if method == "POST" and path.endswith("/events"):
            self.events.append(body)
            return 201, b"{}"
        if method == "PATCH" and "/pods/" in path:
            ns, name = path.split("/namespaces/")[1].split("/pods/")
            key = f"{ns}/{name}"
            if key in self.fail:
                return 500, b'{"message":"boom"}'
            self.patches[key] = body
            return 200, b"{}"
        return 200, b"{}"

    def echo(self, pods: list[dict[str, Any]]) -> None:
        """The watch event of each patched pod: ungated, pinned, with the plan annotations."""
        for p in pods:
            key = f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            ops = self.patches.get(key)
            if not ops:
                continue
            for op in ops[1:]:
                if op["path"] == "/metadata/annotations":
                    p["metadata"]["annotations"] = op["value"]
                elif op["path"] == "/spec/affinity":
                    p["spec"]["affinity"] = op["value"]
                elif op["path"] == "/spec/schedulingGates":
                    p["spec"]["schedulingGates"] = op["value"]
            self.state.apply_pending_pod("MODIFIED", p)


def held_gpus(state: ClusterState) -> int:
    return sum(state.table.used_gpu[s] for s in state.table.slot_of.values())


async def test_two_gangs_on_capacity_for_one_and_a_half() -> None:
    state = gang_state(racks=2, per_rack=6)  # 12 nodes x 8 GPUs: room for 1.5 gangs of 8 x 8
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    a = add_gang(state, "a", 8, created="2026-01-01T00:00:00Z")
    b = add_gang(state, "b", 8, created="2026-01-01T00:00:01Z")
    await loop.tick()
    assert sorted(api.patches) == sorted(f"ml/{p['metadata']['name']}" for p in a), "only gang a is ungated"
    assert held_gpus(state) == 64, "gang a's capacity is held for it"
    gb = state.gangs.gangs["ml/b"]
    assert gb.phase == "Pending" and "fits no node" in gb.reason
    api.echo(a)
    await loop.tick()
    assert len(api.patches) == 8, "gang b still waits: nothing of it written"
    for p in a:  # gang a finishes
        state.apply_pending_pod("DELETED", p)
    assert held_gpus(state) == 0, "deleting the members released their holds"
    await loop.tick()
    assert sorted(k for k in api.patches if k.startswith("ml/b")) == sorted(f"ml/{p['metadata']['name']}" for p in b)


async def test_ungate_patch_pins_and_records() -> None:
    pod = member("a-0", "a", 2)
    ops = ungate_patch(pod, "r0-n1", 1234.5)
    assert ops[0] == {"op": "test", "path": "/metadata/uid", "value": "uid-ml-a-0"}
    by_path = {op["path"]: op["value"] for op in ops[1:]}
    assert by_path["/spec/schedulingGates"] == []
    assert by_path["/metadata/annotations"][ANN_GANG_PLAN] == "r0-n1"
    assert by_path["/metadata/annotations"][ANN_GANG_ADMITTED] == "1234.500"
    terms = by_path["/spec/affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["r0-n1"]}]}
    ]
    existing = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "rack", "operator": "In", "values": ["x"]}]}]
            }
        }
    }
    term = pin(existing, "n")["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] and term["matchFields"][0]["values"] == ["n"], "tightened, not replaced"
    assert (
        existing["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0].get(
            "matchFields"
        )
        is None
    ), "the pod's own object is not changed"


async def test_incomplete_gang_waits_with_reason_and_blocks_nobody() -> None:
    state = gang_state()
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    state.apply_pending_pod("ADDED", member("a-0", "a", 3, created="2026-01-01T00:00:00Z"))
    add_gang(state, "b", 2, created="2026-01-01T00:00:05Z")
    await loop.tick()
    assert state.gangs.gangs["ml/a"].reason == "waiting for members: 1 of 3 exist"
    assert sorted(api.patches) == ["ml/b-0", "ml/b-1"]
    assert loop.view()["gangs"][0]["gang"] == "ml/a"


async def test_strict_fifo_head_blocks_smaller_gangs_behind_it() -> None:
    state = gang_state(racks=1, per_rack=4)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    busy = member("busy", "x", 1, gated=False)
    busy["spec"]["nodeName"] = "r0-n0"
    del busy["metadata"]["annotations"]
    state.apply_pod("ADDED", busy)
    add_gang(state, "big", 4, created="2026-01-01T00:00:00Z")  # needs all 4 nodes: 1 is taken
    add_gang(state, "small", 1, created="2026-01-01T00:00:09Z")
    await loop.tick()
    assert api.patches == {}
    assert "held back for gang ml/big" in state.gangs.gangs["ml/small"].reason


async def test_gangs_that_need_none_of_the_heads_nodes_pass_it() -> None:
    state = gang_state(racks=2, per_rack=2)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    big = add_gang(state, "big", 3, created="2026-01-01T00:00:00Z")  # rack-0 has 2 nodes: waits
    small = add_gang(state, "small", 1, created="2026-01-01T00:00:09Z")
    for p in big:
        p["spec"]["nodeSelector"] = {"rack": "rack-0"}
        state.apply_pending_pod("MODIFIED", p)
    small[0]["spec"]["nodeSelector"] = {"rack": "rack-1"}
    state.apply_pending_pod("MODIFIED", small[0])
    await loop.tick()
    assert list(api.patches) == ["ml/small-0"] and state.plans["ml/small-0"].startswith("r1-")


async def test_filter_steers_members_and_refuses_unadmitted(serve) -> None:  # type: ignore[no-untyped-def]
    state = gang_state(racks=1, per_rack=3)
    go = GoWire(state)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    a = add_gang(state, "a", 2)
    waiting = member("c-0", "c", 2)
    state.apply_pending_pod("ADDED", waiting)
    await loop.tick()
    client = await serve(state)
    names = sorted(state.table.slot_of)
    planned = state.plans["ml/a-0"]
    r = await client.post("/scheduler/filter", data=go.args(orjson.dumps(a[0]), names))
    reply = orjson.loads(await r.read())
    assert reply["NodeNames"] == [planned]
    assert all("planned on node" in v for v in reply["FailedAndUnresolvableNodes"].values())
    r = await client.post("/scheduler/filter", data=go.args(orjson.dumps(waiting), names))
    reply = orjson.loads(await r.read())
    assert reply["NodeNames"] == [] and "not admitted" in next(iter(reply["FailedAndUnresolvableNodes"].values()))
    # bind takes the hold over: the member binds on the capacity held for it
    args = BindingArgs("a-0", "ml", "uid-ml-a-0", planned)
    r = await client.post(
        "/scheduler/bind",
        data=orjson.dumps({"PodName": "a-0", "PodNamespace": "ml", "PodUID": args.uid, "Node": planned}),
    )
    assert orjson.loads(await r.read())["Error"] == ""
    assert "ml/a-0" not in state.gang_holds and state.ledger.get("ml/a-0") is not None


async def test_new_leader_completes_a_half_written_gang_and_holds_what_was_pinned() -> None:
    state = gang_state(racks=1, per_rack=4)
    api = FakeApi(state, fail={"ml/a-2", "ml/a-3"})  # the old leader died after two of four writes
    loop = AdmissionLoop(state, api, lambda: True)
    pods = add_gang(state, "a", 4)
    await loop.tick()
    api.echo(pods)
    first = {k: state.plans.get(k) for k in ("ml/a-0", "ml/a-1")}
    # A new process: fresh state from a list, no holds, no plans in memory.
    fresh = gang_state(racks=1, per_rack=4)
    for p in pods:
        fresh.apply_pending_pod("ADDED", p)
    assert not fresh.gang_holds
    api2 = FakeApi(fresh)
    await AdmissionLoop(fresh, api2, lambda: True).tick()
    assert {k: fresh.plans[k] for k in first} == first, "pinned members keep their nodes"
    assert sorted(api2.patches) == ["ml/a-2", "ml/a-3"], "only the gated ones are written"
    assert len(fresh.gang_holds) == 4 and len(set(fresh.plans.values())) == 4


async def test_holds_expire_after_the_timeout() -> None:
    state = gang_state(racks=1, per_rack=2)
    loop = AdmissionLoop(state, FakeApi(state), lambda: True)
    add_gang(state, "a", 2, extra={"berth.dev/gang-timeout-seconds": "5"})
    await loop.tick()
    assert len(state.gang_holds) == 2
    assert sorted(state.expire_holds(float("inf"))) == ["ml/a-0", "ml/a-1"]
    assert held_gpus(state) == 0 and len(state.ledger) == 0


async def test_bad_input_has_a_reason() -> None:
    state = gang_state(racks=1, per_rack=2)
    loop = AdmissionLoop(state, FakeApi(state), lambda: True)
    add_gang(state, "huge", 2, gpus=16)
    add_gang(state, "nolabel", 2, topology="zone")
    conflict = member("x-0", "x", 1)
    conflict["metadata"]["labels"] = {"scheduling.x-k8s.io/pod-group": "other"}
    state.apply_pending_pod("ADDED", conflict)
    nosize = member("y-0", "y", 1)
    del nosize["metadata"]["annotations"]["berth.dev/gang-size"]
    state.apply_pending_pod("ADDED", nosize)
    await loop.tick()
    g = state.gangs.gangs
    assert g["ml/huge"].phase == "Unschedulable" and "more nvidia.com/gpu than any node" in g["ml/huge"].reason
    assert g["ml/nolabel"].phase == "Unschedulable" and "zone" in g["ml/nolabel"].reason
    assert g["ml/other"].phase == "Invalid" and "two gangs" in g["ml/other"].reason
    assert g["ml/y"].phase == "Invalid" and "gang-size" in g["ml/y"].reason
    assert not state.gang_holds


async def test_queueing_gates_single_pods_through_the_queue() -> None:
    state = gang_state(racks=1, per_rack=1, queueing=True)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    solo = member("solo", "", 1)
    solo["metadata"]["annotations"] = {}
    state.apply_pending_pod("ADDED", solo)
    await loop.tick()
    assert list(api.patches) == ["ml/solo"]
    assert GATE_ADMISSION not in str(api.patches["ml/solo"][-1]["value"])
    gang = state.gangs.gang_of("ml/solo")
    assert gang is not None and (gang.namespace, gang.name) == ("ml", "solo"), "its team is its namespace's"


async def test_planned_node_gone_is_reported_broken_and_its_hold_released() -> None:
    state = gang_state(racks=1, per_rack=2)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    pods = add_gang(state, "a", 2)
    await loop.tick()
    api.echo(pods)
    gone = state.plans["ml/a-0"]
    state.apply_node("DELETED", {"metadata": {"name": gone}})
    await loop.tick()
    gang = state.gangs.gangs["ml/a"]
    assert gang.phase == "Broken" and gone in gang.reason
    assert "ml/a-0" not in state.gang_holds and "ml/a-0" not in state.plans


async def test_a_plan_past_its_timeout_is_released_with_a_reason() -> None:
    state = gang_state(racks=1, per_rack=2)
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    pods = add_gang(state, "a", 2, extra={"berth.dev/gang-timeout-seconds": "30"})
    await loop.tick()
    api.echo(pods)
    for p in pods:  # admitted long ago, never bound
        p["metadata"]["annotations"]["berth.dev/gang-admitted-at"] = "1000.000"
        state.apply_pending_pod("MODIFIED", p)
    await loop.tick()
    gang = state.gangs.gangs["ml/a"]
    assert gang.phase == "TimedOut" and "30 s" in gang.reason
    assert not state.gang_holds and not state.plans and held_gpus(state) == 0
    await loop.tick()
    assert gang.phase == "TimedOut" and gang.reason, "the reason stays"


async def test_a_fresh_process_steers_by_the_plan_on_the_pod_before_its_loop_runs(serve) -> None:  # type: ignore[no-untyped-def]
    """After a restart kube-scheduler may ask before the new leader's loop restored its plans: a refusal then
    would park the member in the unschedulable queue; the plan on the pod answers instead."""
    import time as _time

    state = gang_state(racks=1, per_rack=3)
    pod = member("a-0", "a", 1, gated=False)
    pod["metadata"]["annotations"] |= {ANN_GANG_PLAN: "r0-n2", ANN_GANG_ADMITTED: f"{_time.time():.3f}"}
    state.apply_pending_pod("ADDED", pod)
    client = await serve(state)
    r = await client.post("/scheduler/filter", data=GoWire(state).args(orjson.dumps(pod), sorted(state.table.slot_of)))
    assert orjson.loads(await r.read())["NodeNames"] == ["r0-n2"]
    pod["metadata"]["annotations"][ANN_GANG_ADMITTED] = "1000.000"  # long past its timeout: refused
    state.apply_pending_pod("MODIFIED", pod)
    r = await client.post("/scheduler/filter", data=GoWire(state).args(orjson.dumps(pod), sorted(state.table.slot_of)))
    assert orjson.loads(await r.read())["NodeNames"] == []


async def test_a_gang_of_annotations_tells_its_reason_in_an_event_on_its_first_member_once() -> None:
    state = gang_state()
    api = FakeApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    state.apply_pending_pod("ADDED", member("a-1", "a", 3))
    state.apply_pending_pod("ADDED", member("a-0", "a", 3))
    await loop.tick()
    await loop.tick()
    assert len(api.events) == 1, "the same reason is told once"
    ev = api.events[0]
    assert ev["involvedObject"]["kind"] == "Pod" and ev["involvedObject"]["name"] == "a-0"
    assert ev["message"] == "waiting for members: 2 of 3 exist" and ev["type"] == "Warning"


async def test_queue_metrics_per_team() -> None:
    from prometheus_client import CollectorRegistry

    state = gang_state(racks=1, per_rack=1)
    registry = CollectorRegistry()
    loop = AdmissionLoop(state, FakeApi(state), lambda: True, registry)
    add_gang(state, "a", 1)
    add_gang(state, "b", 2)  # two members x 8 GPUs on one node: waits
    await loop.tick()
    assert registry.get_sample_value("berth_queue_gangs", {"team": ""}) == 1
    assert registry.get_sample_value("berth_gangs_admitted_total", {"team": ""}) == 1
    assert (registry.get_sample_value("berth_queue_wait_seconds", {"team": ""}) or 0) >= 0
