"""Device truth: the ledger prefers what the node agent reports (berth.dev/gpu-assigned) over Berth's own
plan (berth.dev/gpu-ids), counts each mismatch once, and places right after one."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from scheduler.cluster.objects import container, node, pod, resources
from scheduler.cluster.state import ClusterState, format_gpu_ids
from scheduler.cluster.truth import MismatchEvents
from scheduler.config import Config
from scheduler.extender.debug import refresh_gauges
from scheduler.gpu.assignments import AssignmentError, build, parse
from scheduler.kernels import choose_devices
from scheduler.model.constants import TOPOLOGY_REQUIRED
from scheduler.model.names import ANN_GPU_ASSIGNED, ANN_GPU_IDS
from scheduler.observability.metrics import Metrics

ISLANDS = {"islands": [[0, 1, 2, 3], [4, 5, 6, 7]], "links": "nvlink"}


def gpu_node(report: dict[str, list[int]] | None = None) -> dict[str, Any]:
    annotations = {ANN_GPU_ASSIGNED: build(report).to_annotation()} if report is not None else {}
    return node(
        "n1",
        {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"},
        topology=ISLANDS,
        annotations=annotations,
    )


def gpu_pod(name: str, gpus: int, planned: str) -> dict[str, Any]:
    return pod(
        name,
        [container("main", "img", resources("1", "1Gi", gpus))],
        namespace="ns",
        node_name="n1",
        uid=f"uid-{name}",
        annotations={ANN_GPU_IDS: planned},
        phase="Running",
    )


def held(state: ClusterState, name: str) -> str:
    entry = state.ledger.get(f"ns/{name}")
    assert entry is not None
    return format_gpu_ids(entry.gpu_ids)


def used(state: ClusterState) -> str:
    return format_gpu_ids(state.table.gpu_used[state.table.slot_of["n1"]])


def test_codec_round_trips_and_refuses_bad_input() -> None:
    a = build({"ns/a": [1, 0], "ns/b": []}, {"ns/c": ["gpu.nvidia.com/n1/gpu-0"]})
    assert a.to_annotation() == '{"pods":{"ns/a":"0,1"},"dra":{"ns/c":["gpu.nvidia.com/n1/gpu-0"]}}'
    assert parse(a.to_annotation()) == a and a.mask("ns/a") == 0b11 and a.mask("ns/b") is None
    for bad in ("[1]", "{", '{"pods": {"ns/a": "0,x"}}', '{"pods": {"ns/a": "99"}}', '{"pods": {"ns/a": [0]}}', 7):
        with pytest.raises(AssignmentError):
            parse(bad)


def test_a_report_corrects_the_plan_and_is_counted_once() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", gpu_node())
    state.apply_pod("ADDED", gpu_pod("a", 2, "0,1"))
    assert held(state, "a") == "0,1"
    state.apply_node("MODIFIED", gpu_node({"ns/a": [4, 5]}))
    assert held(state, "a") == "4,5" and used(state) == "4,5"
    assert state.truth.mismatches == 1
    # The pod's own events still carry the plan: the report keeps winning, and nothing is counted again.
    state.apply_pod("MODIFIED", gpu_pod("a", 2, "0,1"))
    state.apply_node("MODIFIED", gpu_node({"ns/a": [4, 5]}))
    assert held(state, "a") == "4,5" and state.truth.mismatches == 1
    metrics = Metrics()
    refresh_gauges(state, metrics)
    refresh_gauges(state, metrics)
    assert metrics.gpu_mismatches._value.get() == 1
    assert state.summary()["gpuAssignment"]["recent"] == [
        {"pod": "ns/a", "node": "n1", "planned": "0,1", "reported": "4,5"}
    ]


def test_a_matching_report_is_no_mismatch() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", gpu_node({"ns/a": [0, 1]}))
    state.apply_pod("ADDED", gpu_pod("a", 2, "0,1"))
    state.apply_node("MODIFIED", gpu_node({"ns/a": [0, 1], "ns/gone": [7]}))  # a pod the ledger no longer has
    assert held(state, "a") == "0,1" and state.truth.mismatches == 0


def test_a_swap_between_two_pods_lands_exactly() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", gpu_node())
    state.apply_pod("ADDED", gpu_pod("a", 1, "0"))
    state.apply_pod("ADDED", gpu_pod("b", 1, "1"))
    state.apply_node("MODIFIED", gpu_node({"ns/a": [1], "ns/b": [0]}))
    assert (held(state, "a"), held(state, "b"), used(state)) == ("1", "0", "0,1")
    assert state.truth.mismatches == 2


def test_an_unreported_plan_on_really_held_gpus_moves_off_them() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", gpu_node())
    state.apply_pod("ADDED", gpu_pod("a", 2, "0,1"))
    state.apply_pod("ADDED", gpu_pod("b", 2, "4,5"))  # not reported yet (its containers not started)
    state.apply_node("MODIFIED", gpu_node({"ns/a": [4, 5]}))
    assert held(state, "a") == "4,5"
    assert held(state, "b") not in ("4,5", "") and len(held(state, "b").split(",")) == 2
    assert state.table.used_gpu[state.table.slot_of["n1"]] == 4


def test_placement_after_a_mismatch_uses_the_islands_really_free() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", gpu_node())
    state.apply_pod("ADDED", gpu_pod("a", 2, "4,5"))
    slot = state.table.slot_of["n1"]
    # By the plan island 0-3 is free; the node says the pod sits on 0 and 1, so only island 4-7 is.
    assert choose_devices(state.table.islands, slot, state.table.free_gpus(slot), 4, TOPOLOGY_REQUIRED) == 0x0F
    state.apply_node("MODIFIED", gpu_node({"ns/a": [0, 1]}))
    assert choose_devices(state.table.islands, slot, state.table.free_gpus(slot), 4, TOPOLOGY_REQUIRED) == 0xF0


def test_a_restart_rebuilds_from_the_report_and_a_bad_report_falls_back_to_the_plan() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", gpu_node({"ns/a": [6]}))
    state.apply_pod("ADDED", gpu_pod("a", 1, "2"))
    assert held(state, "a") == "6" and state.truth.mismatches == 1
    broken = gpu_node()
    broken["metadata"]["annotations"][ANN_GPU_ASSIGNED] = "{not json"
    state.apply_node("MODIFIED", broken)
    assert "n1" in state.truth.errors and held(state, "a") == "6"  # kept: no report is not a report of "2"
    state.apply_pod("MODIFIED", gpu_pod("a", 1, "2"))
    assert held(state, "a") == "2"
    state.apply_node("DELETED", broken)
    assert "n1" not in state.truth.errors


class _Client:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        self.sent.append((method, path, body))
        return 201, orjson.dumps({})


async def test_the_leader_writes_one_event_per_mismatch_and_the_standby_none() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", gpu_node())
    state.apply_pod("ADDED", gpu_pod("a", 1, "0"))
    state.apply_node("MODIFIED", gpu_node({"ns/a": [3]}))
    client = _Client()
    leading = False
    events = MismatchEvents(client, state.truth, lambda: leading, every=0.0)
    task = asyncio.create_task(events.run())
    await asyncio.sleep(0.01)
    assert client.sent == [] and not state.truth.pending  # the standby drops its queue
    state.apply_node("MODIFIED", gpu_node({"ns/a": [2]}))
    leading = True
    for _ in range(100):
        await asyncio.sleep(0.01)
        if client.sent:
            break
    task.cancel()
    method, path, body = client.sent[0]
    assert (method, path, len(client.sent)) == ("POST", "/api/v1/namespaces/ns/events", 1)
    assert body["involvedObject"]["uid"] == "uid-a" and body["reason"] == "GPUAssignmentMismatch"
    assert "reports GPUs 2" in body["message"] and "planned 3" in body["message"]
