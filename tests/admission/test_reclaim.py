"""Preemption for a whole gang: a gang whose team is within its guarantee reclaims what other teams of its
cohort borrow, evicting enough for the whole gang or nothing, by the preempt verb's victim rule."""

from typing import Any

from scheduler.admission.loop import AdmissionLoop
from scheduler.admission.reclaim import reclaim
from scheduler.cluster.objects import container, pod, resources
from scheduler.cluster.state import ClusterState
from scheduler.model.names import LABEL_POD_GROUP
from scheduler.model.podspec import pod_ask
from tests.admission.helpers import add_gang, gang_state
from tests.admission.test_loop import FakeApi


class EvictingApi(FakeApi):
    """FakeApi that also takes Evictions (recorded; `refuse`: answered 429 as a PodDisruptionBudget would)."""

    def __init__(self, state: ClusterState, refuse: set[str] | None = None) -> None:
        super().__init__(state)
        self.refuse = refuse or set()
        self.evicted: list[str] = []

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, bytes]:
        if method == "POST" and path.endswith("/eviction"):
            ns, name = path.split("/namespaces/")[1].removesuffix("/eviction").split("/pods/")
            assert body["kind"] == "Eviction" and body["metadata"] == {"name": name, "namespace": ns}
            if f"{ns}/{name}" in self.refuse:
                return 429, b'{"message":"Cannot evict pod as it would violate the pod\'s disruption budget."}'
            self.evicted.append(f"{ns}/{name}")
            return 201, b"{}"
        return await super().request(method, path, body, **kw)


def team(name: str, ns: str, guaranteed: int, max_: int = 64, cohort: str = "c") -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TeamQuota",
        "metadata": {"name": name, "generation": 1},
        "spec": {
            "namespaces": [ns],
            "pools": ["shared"],
            "cohort": cohort,
            "resources": {"nvidia.com/gpu": {"guaranteed": guaranteed, "max": max_}},
        },
    }


def running(
    state: ClusterState, name: str, ns: str, node: str, gpus: int = 8, priority: int = 0, **meta: Any
) -> dict[str, Any]:
    p = pod(
        name,
        [container("main", "pause", resources("1", "1Gi", gpus))],
        namespace=ns,
        uid=f"uid-{ns}-{name}",
        node_name=node,
        priority=priority,
        **meta,
    )
    state.apply_pod("ADDED", p)
    return p


def borrowed_cluster() -> ClusterState:
    """4 nodes x 8 GPUs; teams a (namespace ml) and b (namespace other) each guaranteed 16 in cohort c;
    team b runs on all 32 GPUs: 16 of them borrowed from a."""
    state = gang_state(racks=2, per_rack=2)
    state.apply_team("ADDED", team("a", "ml", 16))
    state.apply_team("ADDED", team("b", "other", 16))
    for i, n in enumerate(sorted(state.table.slot_of)):
        running(state, f"b-{i}", "other", n)
    return state


def gpu_used(state: ClusterState) -> list[int]:
    return [state.table.used_gpu[s] for s in sorted(state.table.slot_of.values())]


async def test_a_gang_within_its_guarantee_evicts_borrowers_for_the_whole_gang_then_is_admitted() -> None:
    state = borrowed_cluster()
    api = EvictingApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    pods = add_gang(state, "g", 2)  # 2 x 8 GPUs: within team a's 16 guaranteed
    await loop.tick()
    gang = state.gangs.gangs["ml/g"]
    assert gang.phase == "Reclaiming" and "team b" in gang.reason and "cohort c" in gang.reason, gang.reason
    assert len(api.evicted) == 2 and all(k.startswith("other/") for k in api.evicted), api.evicted
    assert api.patches == {}, "nothing ungated before the victims are gone"
    victims = [e for e in api.events if e["reason"] == "Preempted"]
    assert sorted(e["involvedObject"]["name"] for e in victims) == sorted(k.split("/")[1] for k in api.evicted)
    assert "gang ml/g" in victims[0]["message"]
    assert any(e["reason"] == "Reclaiming" for e in api.events), "the gang says it too"
    await loop.tick()
    assert len(api.evicted) == 2 and api.patches == {}, "waits for its victims: evicts no more"
    assert loop.view()["gangs"][0]["evicting"] == sorted(api.evicted)
    for key in api.evicted:  # the watch: the evicted pods are gone
        ns, name = key.split("/")
        state.apply_pod("DELETED", {"metadata": {"name": name, "namespace": ns}, "spec": {}})
    await loop.tick()
    assert sorted(api.patches) == sorted(f"ml/{p['metadata']['name']}" for p in pods)
    assert gang.phase == "Admitted"


async def test_victims_never_take_a_team_below_its_guarantee_and_never_room_for_part_of_a_gang() -> None:
    state = borrowed_cluster()
    api = EvictingApi(state)
    loop = AdmissionLoop(state, api, lambda: True)
    before = gpu_used(state)
    add_gang(state, "g", 3)  # 24 GPUs > a's 16 guaranteed: the gang would borrow; reclaim owes it nothing
    await loop.tick()
    assert api.evicted == [] and state.gangs.gangs["ml/g"].phase == "Pending"
    assert gpu_used(state) == before, "the trial releases were all held again"
    # Within the guarantee, but b may give up only 16: a gang of 2 x 8 whose pods each need a whole node
    # of 8 more than b can give is refused without evicting anyone.
    state2 = borrowed_cluster()
    state2.apply_team("MODIFIED", team("b", "other", 24))  # b borrows only 8 now
    api2 = EvictingApi(state2)
    add_gang(state2, "g", 2)
    await AdmissionLoop(state2, api2, lambda: True).tick()
    assert api2.evicted == [], "one victim would place one member only: nobody is evicted"


async def test_own_team_higher_priority_and_no_cohort_are_never_victims() -> None:
    state = gang_state(racks=1, per_rack=2)
    state.apply_team("ADDED", team("a", "ml", 16))
    state.apply_team("ADDED", team("b", "other", 0))
    running(state, "mine", "ml", "r0-n0")  # the gang's own team: never a victim of reclaim
    running(state, "vip", "other", "r0-n1", priority=1000)  # b borrows, but outranks the gang
    api = EvictingApi(state)
    add_gang(state, "g", 1)
    await AdmissionLoop(state, api, lambda: True).tick()
    assert api.evicted == []
    # the same borrower at the gang's priority is taken
    state.apply_pod("DELETED", {"metadata": {"name": "vip", "namespace": "other"}, "spec": {}})
    running(state, "low", "other", "r0-n1")
    await AdmissionLoop(state, api, lambda: True).tick()
    assert api.evicted == ["other/low"]


async def test_a_gang_member_is_evicted_with_its_whole_gang_or_not_at_all() -> None:
    state = gang_state(racks=1, per_rack=4)
    state.apply_team("ADDED", team("a", "ml", 16))
    state.apply_team("ADDED", team("b", "other", 0))
    for i in range(2):  # b's running gang of 2 on r0-n0 and r0-n1, single pods of b on n2, n3
        running(state, f"bg-{i}", "other", f"r0-n{i}", labels={LABEL_POD_GROUP: "bg"})
    running(state, "b-2", "other", "r0-n2")
    running(state, "b-3", "other", "r0-n3", priority=-1)
    ask = [pod_ask(m) for m in add_gang(state, "g", 1)]  # needs one node: the lowest-priority pod goes
    r = reclaim(state, ask, 0, "ml/g")
    assert r is not None and [e.key for e in r.victims] == ["other/b-3"]
    state.apply_pod("DELETED", {"metadata": {"name": "b-3", "namespace": "other"}, "spec": {}})
    state.apply_pod("DELETED", {"metadata": {"name": "b-2", "namespace": "other"}, "spec": {}})
    running(state, "b-2", "other", "r0-n2", priority=100)  # now only b's gang is of low enough priority
    running(state, "b-3", "other", "r0-n3", priority=100)
    r = reclaim(state, ask, 0, "ml/g")
    assert r is not None and sorted(e.key for e in r.victims) == ["other/bg-0", "other/bg-1"], "never half a gang"


async def test_an_eviction_a_disruption_budget_refuses_is_told() -> None:
    state = borrowed_cluster()
    api = EvictingApi(state, refuse={"other/b-0", "other/b-1", "other/b-2", "other/b-3"})
    loop = AdmissionLoop(state, api, lambda: True)
    pods = add_gang(state, "g", 1)
    await loop.tick()
    gang = state.gangs.gangs["ml/g"]
    assert gang.phase == "Reclaiming" and "refused" in gang.reason and "disruption budget" in gang.reason
    assert api.patches == {} and "ml/g" in loop.evicting
    for p in pods:  # the gang is deleted while it waits: nothing of it is kept
        state.apply_pending_pod("DELETED", p)
    await loop.tick()
    assert loop.evicting == {}


async def test_reclaim_off_evicts_nothing() -> None:
    state = borrowed_cluster()
    state.config.admission.reclaim = False
    api = EvictingApi(state)
    add_gang(state, "g", 2)
    await AdmissionLoop(state, api, lambda: True).tick()
    assert api.evicted == [] and state.gangs.gangs["ml/g"].phase == "Pending"
