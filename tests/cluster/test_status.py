"""TeamQuota status: the merge patch Berth sends (only what changed, nulls for what went away) and the
StatusWriter against the fake API server (debounced, retried after a failed write, nothing to write after a
restart when the object already says it)."""

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.cluster.kube import KubeClient
from scheduler.cluster.state import ClusterState
from scheduler.cluster.status import StatusWriter, merge_patch
from scheduler.config import Config
from scheduler.demo import make_node, make_pod
from scheduler.observability.showback import team_status
from tests.fakes.apiserver import TEAMQUOTAS, FakeApiServer, Status, eventually, merge

INTERVAL = 0.02
PATCH_PATH = TEAMQUOTAS + "/train/status"


# -- merge_patch ----------------------------------------------------------------------------------------
def test_keys_that_went_away_are_nulls_at_every_depth() -> None:
    old = {"used": {"cpu": "2", "nvidia.com/gpu": "4"}, "borrowed": {"nvidia.com/gpu": "2"}, "pods": 3}
    new = {"used": {"cpu": "2"}, "borrowed": {}, "pods": 3}
    assert merge_patch(old, new) == {"used": {"nvidia.com/gpu": None}, "borrowed": {"nvidia.com/gpu": None}}


def test_nested_changes_carry_only_the_changed_leaves() -> None:
    old = {"used": {"cpu": "2", "memory": "4Gi"}, "pods": 3, "observedGeneration": 1}
    new = {"used": {"cpu": "3", "memory": "4Gi"}, "pods": 4, "observedGeneration": 1}
    assert merge_patch(old, new) == {"used": {"cpu": "3"}, "pods": 4}


def test_unchanged_is_an_empty_patch() -> None:
    status = {
        "used": {"cpu": "2"},
        "borrowed": {},
        "pods": 1,
        "conditions": [{"type": "Valid", "status": "True"}],
        "observedGeneration": 2,
    }
    assert merge_patch(status, copy.deepcopy(status)) == {}
    assert merge_patch({}, {}) == {}


def test_lists_are_sent_whole_and_new_maps_as_they_are() -> None:
    old = {
        "conditions": [{"type": "Valid", "status": "True"}, {"type": "NamespaceConflict", "status": "False"}],
        "used": "not a map yet",
    }
    new = {
        "conditions": [{"type": "Valid", "status": "False"}, {"type": "NamespaceConflict", "status": "False"}],
        "used": {"cpu": "1"},
        "borrowed": {},
    }
    assert merge_patch(old, new) == {"conditions": new["conditions"], "used": {"cpu": "1"}, "borrowed": {}}


_leaf = st.one_of(st.integers(-3, 3), st.text("ab", max_size=2), st.booleans(), st.lists(st.integers(0, 2), max_size=2))
_json: Any = st.recursive(_leaf, lambda inner: st.dictionaries(st.sampled_from("abc"), inner, max_size=3), max_leaves=8)
_doc = st.dictionaries(st.sampled_from("abcd"), _json, max_size=4)


@given(_doc, _doc)
def test_applying_the_patch_gives_the_new_status_and_an_empty_patch_means_equal(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    patch = merge_patch(old, new)
    assert merge(old, patch) == new  # as the API server applies a merge patch (RFC 7386)
    assert (patch == {}) == (old == new)


# -- StatusWriter against the fake API server -----------------------------------------------------------------
def teamquota(name: str = "train", status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TeamQuota",
        "metadata": {"name": name, "generation": 1},
        "spec": {"namespaces": [name], "resources": {"nvidia.com/gpu": {"guaranteed": 2, "max": 8}}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def synced_state(*teams: dict[str, Any]) -> ClusterState:
    config = Config()
    config.quotas.status_interval_seconds = INTERVAL
    state = ClusterState(config)
    state.apply_node(
        "ADDED",
        make_node(
            "n1",
            "shared",
            64,
            512,
            8,
            "NVIDIA-H100-80GB-HBM3",
            [list(range(8))],
            None,
            "2024-05-01T00:00:00Z",
            "zone-1",
        ),
    )
    for t in teams:
        state.apply_team("ADDED", t)
    state.mark_synced("teamquotas", True)
    return state


def gpu_pod(name: str, gpus: int) -> dict[str, Any]:
    return make_pod("train", name, "n1", "1", "1Gi", gpus)


@pytest.fixture
async def start() -> AsyncIterator[Callable[[StatusWriter], StatusWriter]]:
    tasks: list[asyncio.Task[None]] = []

    def run(writer: StatusWriter) -> StatusWriter:
        tasks.append(asyncio.create_task(writer.run()))
        return writer

    yield run
    for t in tasks:
        t.cancel()
    for t in tasks:
        with pytest.raises(asyncio.CancelledError):
            await t


async def rounds(n: int) -> None:
    await asyncio.sleep(n * INTERVAL)


async def test_the_writer_writes_each_change_once_and_only_what_changed(
    api: FakeApiServer, kube: KubeClient, start: Callable[[StatusWriter], StatusWriter]
) -> None:
    api.put(TEAMQUOTAS, teamquota())
    state = synced_state(teamquota())
    writer = start(StatusWriter(kube, state))
    await eventually(lambda: len(api.calls("patch", PATCH_PATH)) == 1, what="the first status write")

    first = api.calls("patch", PATCH_PATH)[0].json()["status"]
    assert first == writer.written["train"] == api.store[TEAMQUOTAS]["train"]["status"]
    zero = {"cpu": "0", "memory": "0", "nvidia.com/gpu": "0"}  # written as 0, so kubectl's columns are never blank
    assert (first["pods"], first["used"], first["borrowed"], first["observedGeneration"]) == (
        0,
        zero,
        {"nvidia.com/gpu": "0"},
        1,
    )
    await rounds(5)
    assert len(api.calls("patch", PATCH_PATH)) == 1, "nothing changed: nothing written"

    state.apply_pod("ADDED", gpu_pod("p1", 4))  # 2 guaranteed, 4 used: borrowing 2
    await eventually(lambda: len(api.calls("patch", PATCH_PATH)) == 2, what="the second status write")
    second = api.calls("patch", PATCH_PATH)[1].json()["status"]
    assert second == {
        "used": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "4", "nvidia.com/gpu/NVIDIA-H100-80GB-HBM3": "4"},
        "borrowed": {"nvidia.com/gpu": "2"},
        "pods": 1,
    }
    assert api.store[TEAMQUOTAS]["train"]["status"] == team_status(state, state.quotas.teams["train"], first)

    state.apply_pod("DELETED", gpu_pod("p1", 4))
    await eventually(lambda: len(api.calls("patch", PATCH_PATH)) == 3, what="the third status write")
    third = api.calls("patch", PATCH_PATH)[2].json()["status"]
    assert third["borrowed"] == {"nvidia.com/gpu": "0"}, "a team that stops borrowing borrows 0"
    assert api.store[TEAMQUOTAS]["train"]["status"]["borrowed"] == {"nvidia.com/gpu": "0"}


async def test_changes_within_one_interval_are_one_write(
    api: FakeApiServer, kube: KubeClient, start: Callable[[StatusWriter], StatusWriter]
) -> None:
    api.put(TEAMQUOTAS, teamquota())
    state = synced_state(teamquota())
    for i in range(20):
        state.apply_pod("ADDED", gpu_pod(f"p{i}", 0))
    start(StatusWriter(kube, state))
    await eventually(lambda: len(api.calls("patch", PATCH_PATH)) == 1)
    await rounds(5)
    (req,) = api.calls("patch", PATCH_PATH)
    assert req.json()["status"]["pods"] == 20


async def test_nothing_is_written_before_the_state_is_synced(
    api: FakeApiServer, kube: KubeClient, start: Callable[[StatusWriter], StatusWriter]
) -> None:
    api.put(TEAMQUOTAS, teamquota())
    state = synced_state(teamquota())
    state.mark_synced("pods", False)  # usage is not known yet: a status now would be wrong
    start(StatusWriter(kube, state))
    await rounds(8)
    assert api.calls("patch", PATCH_PATH) == []
    state.mark_synced("pods", True)
    await eventually(lambda: len(api.calls("patch", PATCH_PATH)) == 1)


def untimed(obj: Any) -> Any:
    """`obj` without its timestamps (keys ending in Time)."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if not k.endswith("Time")}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


async def test_a_failed_write_is_retried_next_round(
    api: FakeApiServer, kube: KubeClient, start: Callable[[StatusWriter], StatusWriter]
) -> None:
    api.put(TEAMQUOTAS, teamquota())
    api.on("patch", PATCH_PATH, Status(500, "etcd timeout"), Status(429, "slow down"))
    state = synced_state(teamquota())
    writer = start(StatusWriter(kube, state))
    await eventually(lambda: "status" in api.store[TEAMQUOTAS]["train"], what="the status written at last")
    patches = api.calls("patch", PATCH_PATH)
    assert len(patches) == 3
    # The same patch again (nothing was written), but for condition times: rounds under load cross seconds.
    assert untimed(patches[0].json()) == untimed(patches[2].json()), "the retry sends the same patch"
    assert writer.written["train"] == api.store[TEAMQUOTAS]["train"]["status"]


async def test_after_a_restart_a_status_the_object_already_has_is_not_written_again(
    api: FakeApiServer, kube: KubeClient, start: Callable[[StatusWriter], StatusWriter]
) -> None:
    previous = synced_state(teamquota())
    written = team_status(previous, previous.quotas.teams["train"])
    api.put(TEAMQUOTAS, teamquota(status=written))
    state = synced_state(teamquota(status=written))  # the informer hands over the object with its status
    writer = start(StatusWriter(kube, state))
    await eventually(lambda: "train" in writer.written)
    await rounds(3)
    assert api.calls("patch", PATCH_PATH) == []


async def test_a_deleted_team_is_forgotten(api: FakeApiServer, kube: KubeClient) -> None:
    api.put(TEAMQUOTAS, teamquota())
    state = synced_state(teamquota())
    writer = StatusWriter(kube, state)
    await writer.flush()
    assert "train" in writer.written
    state.apply_team("DELETED", teamquota())
    await writer.flush()
    assert writer.written == {}
