"""Prioritize right after filter normalises the raw scores filter computed for the best tier instead of
scoring the nodes again (policy/placement.Scored): the scores must be the ones a fresh computation
gives, and anything the scores read that changes in between must make prioritize score again."""

from array import array
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState
from scheduler.model.podspec import pod_ask
from scheduler.policy import placement
from tests.conftest import GoWire
from tests.extender.test_wire import call, filter_call


@pytest.fixture
def scored(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many nodes raw_scores computed, call by call (filter's tier and prioritize both go through it)."""
    calls: list[int] = []
    real = placement.raw_scores

    def counting(state: ClusterState, j: placement.Judgement, slots: array, *a: Any, **k: Any) -> array:
        calls.append(len(slots))
        return real(state, j, slots, *a, **k)

    monkeypatch.setattr(placement, "raw_scores", counting)
    return calls


def fresh(state: ClusterState, go: GoWire, names: list[str]) -> list[int]:
    j = placement.judge(state, pod_ask(go.pod_object()))
    slots = array("i", [state.table.slot_of[n] for n in names])
    return list(placement.run_score(state, j, slots))


async def prioritize(client: TestClient, go: GoWire, names: list[str]) -> list[int]:
    status, reply = await call(client, "prioritize", go.args(go.pod(), names, True))
    assert status == 200 and [e["Host"] for e in reply] == names
    return [e["Score"] for e in reply]


async def test_prioritize_after_filter_reuses_its_scores(
    client: TestClient, go: GoWire, demo_state: ClusterState, scored: list[int]
) -> None:
    names = go.names()[:200]
    survivors = await filter_call(client, go, names, True)
    assert scored, "filter scored the nodes that fit, for the best tier"
    assert len(survivors) > 1, "the case needs a choice for prioritize to make"
    scored.clear()
    got = await prioritize(client, go, survivors)
    assert scored == [], "prioritize of filter's survivors scored nothing again"
    assert got == fresh(demo_state, go, survivors)
    assert max(got) == 10


async def test_a_change_in_between_scores_again(
    client: TestClient, go: GoWire, demo_state: ClusterState, scored: list[int]
) -> None:
    names = go.names()[:200]
    survivors = await filter_call(client, go, names, True)
    ask = pod_ask(go.pod_object("web"))
    key = f"{ask.namespace}/{ask.name}"
    entry = PodEntry(key, ask.uid, survivors[0], ask.request, ask.priority, None, False, 0, True)
    demo_state.ledger.hold(entry)  # another pod lands on a survivor between filter and prioritize
    scored.clear()
    got = await prioritize(client, go, survivors)
    assert scored == [len(survivors)], "the table changed: prioritize scored the survivors again"
    assert got == fresh(demo_state, go, survivors)


async def test_other_names_are_scored_only_where_the_pod_fits(
    client: TestClient, go: GoWire, demo_state: ClusterState
) -> None:
    """A list filter did not return (prioritize without filter, or nodes gone full since): nodes the pod
    does not fit score 0, and the rest are normalised among themselves."""
    names = go.names()[:200]
    got = await prioritize(client, go, names)
    j = placement.judge(demo_state, pod_ask(go.pod_object()))
    slots = array("i", [demo_state.table.slot_of[n] for n in names])
    verdicts, passed = placement.run_filter(demo_state, j, slots, record=False, tier=False)
    assert 1 < passed < len(names)
    assert all(s == 0 for s, v in zip(got, verdicts, strict=True) if v)
    assert max(s for s, v in zip(got, verdicts, strict=True) if not v) == 10
