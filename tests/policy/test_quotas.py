"""Team quotas: team resolution, admission (guaranteed / borrowing / lendingLimit / max, per GPU model),
placement bytes built from an admission, run-time edits, and property tests of the quota invariants.

Everything goes through the informer paths (ClusterState.apply_node / apply_team / apply_namespace /
apply_pod), so usage is the ledger's usage and quotas are parsed from TeamQuota-shaped dicts.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import make_node, make_pod
from scheduler.model.podspec import GPU, PodAsk, PodRequest, pod_ask
from scheduler.observability.showback import team_status
from scheduler.policy.placement import judge
from scheduler.policy.quotas import MODEL_PREFIX, Limit, QuotaBook, Team

NOW = "2024-05-01T00:00:00Z"
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
L4 = "NVIDIA-L4"
GI = 1 << 30


# -- builders -------------------------------------------------------------------------------------
def cluster(unmatched: str = "shared", shared_pools: list[str] | None = None) -> ClusterState:
    config = Config()
    config.quotas.unmatched_pods = unmatched
    config.quotas.shared_pools = ["shared"] if shared_pools is None else shared_pools
    config.bind.reservation_ttl_seconds = 3600.0  # property tests must never see a reservation expire
    return ClusterState(config)


def gpu_node(name: str, pool: str, model: str = H100, gpus: int = 8) -> dict[str, Any]:
    return make_node(name, pool, 96, 1024, gpus, model, [list(range(gpus))], None, NOW, "zone-1")


def cpu_node(name: str, pool: str = "shared") -> dict[str, Any]:
    return make_node(name, pool, 32, 128, 0, None, None, None, NOW, "zone-1")


def teamquota(
    name: str,
    resources: dict[str, dict[str, Any]] | None = None,
    *,
    cohort: str | None = None,
    pools: list[str] | None = None,
    namespaces: list[str] | None = None,
    selector: dict[str, Any] | None = None,
    models: dict[str, dict[str, int]] | None = None,
    generation: int = 1,
) -> dict[str, Any]:
    """A TeamQuota as the informer hands it over (the shape of deploy/examples/teamquotas.yaml)."""
    spec: dict[str, Any] = {"resources": resources or {}}
    if namespaces is not None or selector is None:
        spec["namespaces"] = [name] if namespaces is None else namespaces
    if selector is not None:
        spec["namespaceSelector"] = selector
    if pools is not None:
        spec["pools"] = pools
    if cohort is not None:
        spec["cohort"] = cohort
    if models is not None:
        spec["gpuModels"] = models
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TeamQuota",
        "metadata": {"name": name, "generation": generation},
        "spec": spec,
    }


def gpus(guaranteed: int | str, max_: int | str | None = None, lending: int | str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"guaranteed": guaranteed}
    if max_ is not None:
        out["max"] = max_
    if lending is not None:
        out["lendingLimit"] = lending
    return {GPU: out}


def run(
    state: ClusterState,
    ns: str,
    name: str,
    node: str,
    gpu: int = 0,
    cpu: str = "1",
    mem: str = "1Gi",
    priority: int = 0,
) -> dict[str, Any]:
    """A running pod (spec.nodeName set), through the informer path: its usage is ledger usage."""
    pod = make_pod(ns, name, node, cpu, mem, gpu, priority=priority)
    state.apply_pod("ADDED", pod)
    return pod


def ask(
    ns: str,
    gpu: int = 0,
    cpu: str = "1",
    mem: str = "1Gi",
    name: str = "new",
    annotations: dict[str, str] | None = None,
) -> PodAsk:
    return pod_ask(make_pod(ns, name, None, cpu, mem, gpu, annotations))


def h100_cluster(nodes: int = 2, **kw: Any) -> ClusterState:
    state = cluster(**kw)
    for i in range(nodes):
        state.apply_node("ADDED", gpu_node(f"h100-{i}", "h100"))
    return state


# -- guaranteed, borrowing, lending, max ------------------------------------------------------------
def test_guaranteed_always_fits_even_while_the_cohort_lent_it_out() -> None:
    state = h100_cluster(3)
    state.apply_team("ADDED", teamquota("a", gpus(8, 16), cohort="c", pools=["h100"]))
    state.apply_team("ADDED", teamquota("b", gpus(8, 16), cohort="c", pools=["h100"]))
    run(state, "b", "b1", "h100-0", 8)
    run(state, "b", "b2", "h100-1", 8)  # b borrows all 8 of a's idle GPUs
    assert state.quotas.teams["b"].used[GPU] == 16_000
    assert state.quotas.borrowed(state.quotas.teams["b"], GPU) == 8_000

    adm = state.quotas.admit(ask("a", 8))
    assert adm.error is None
    assert adm.team == "a" and not adm.borrowing
    # but above guaranteed there is nothing left to borrow
    adm = state.quotas.admit(ask("a", 1))
    assert adm.error is None  # 0 + 1 <= 8
    run(state, "a", "a1", "h100-2", 8)
    assert state.quotas.admit(ask("a", 1)).error == (
        "team a: nvidia.com/gpu 8 used + 1 requested > guaranteed 8, and cohort c has only 0 left to lend"
    )


def test_borrowing_within_cohort_opens_cohort_pools_only_while_borrowing() -> None:
    state = cluster()
    state.apply_node("ADDED", gpu_node("h100-0", "h100"))
    state.apply_node("ADDED", gpu_node("a100-0", "a100", A100))
    state.apply_node("ADDED", cpu_node("cpu-0"))
    state.apply_team("ADDED", teamquota("training", gpus(4, 12), cohort="gpu", pools=["h100"]))
    state.apply_team("ADDED", teamquota("research", gpus(8, 8), cohort="gpu", pools=["a100"]))
    run(state, "training", "t1", "h100-0", 4)

    within = judge(state, ask("training", 0))
    assert not within.admission.borrowing
    assert within.admission.own_pools == frozenset({"h100"})
    assert within.admission.cohort_pools == frozenset({"a100"})
    pools = state.table.pools
    assert within.pool_ok == bytes(1 if p == "h100" else 0 for p in pools) + b"\x00"

    borrow = judge(state, ask("training", 6))
    assert borrow.admission.error is None and borrow.admission.borrowing
    assert borrow.pool_ok == bytes(1 if p == "h100" else 2 if p == "a100" else 0 for p in pools) + b"\x00"

    # 4 used + 8 requested = 12 > guaranteed 4 by 8, and research lends all 8: exactly fits
    assert state.quotas.admit(ask("training", 8)).error is None
    assert state.quotas.admit(ask("training", 9)).error == (
        "team training: nvidia.com/gpu 4 used + 9 requested > max 12"
    )


def test_lending_limit_caps_what_others_may_borrow() -> None:
    state = h100_cluster(2)
    state.apply_team("ADDED", teamquota("a", gpus(4, 16), cohort="c", pools=["h100"]))
    state.apply_team("ADDED", teamquota("b", gpus(8, 8, lending=3), cohort="c", pools=["h100"]))
    run(state, "a", "a1", "h100-0", 4)

    assert state.quotas.admit(ask("a", 3)).error is None
    assert state.quotas.admit(ask("a", 4)).error == (
        "team a: nvidia.com/gpu 4 used + 4 requested > guaranteed 4, and cohort c has only 3 left to lend"
    )
    # b keeps 8 - 3 = 5 to itself: its own use of those does not shrink what it lends
    run(state, "b", "b1", "h100-1", 5)
    assert state.quotas.admit(ask("a", 3)).error is None
    # but once b eats into its lendable part, a can borrow less
    run(state, "b", "b2", "h100-1", 2)
    assert state.quotas.admit(ask("a", 2)).error == (
        "team a: nvidia.com/gpu 4 used + 2 requested > guaranteed 4, and cohort c has only 1 left to lend"
    )
    assert state.quotas.admit(ask("a", 1)).error is None


def test_lending_limit_zero_lends_nothing_and_a_larger_one_lends_at_most_guaranteed() -> None:
    state = h100_cluster(1)
    state.apply_team("ADDED", teamquota("a", gpus(2, 16, lending=0), cohort="c"))
    state.apply_team("ADDED", teamquota("b", gpus(4, 4, lending=0), cohort="c"))
    run(state, "a", "a1", "h100-0", 2)
    assert state.quotas.admit(ask("a", 1)).error == (
        "team a: nvidia.com/gpu 2 used + 1 requested > guaranteed 2, and cohort c has only 0 left to lend"
    )
    assert state.quotas.teams["b"].limits[GPU].lendable == 0
    assert Limit(guaranteed=4, lending=10).lendable == 4


def test_max_caps_with_the_exact_sentence() -> None:
    state = cluster()
    for i in range(8):
        state.apply_node("ADDED", gpu_node(f"a100-{i}", "a100", A100))
    state.apply_team("ADDED", teamquota("ml-research", gpus(32, 64), cohort="gpu-shared", pools=["a100"]))
    state.apply_team("ADDED", teamquota("training", gpus(64, 64), cohort="gpu-shared"))
    for i in range(7):
        run(state, "ml-research", f"job-{i}", f"a100-{i}", 8)
    run(state, "ml-research", "job-7", "a100-7", 6)
    assert state.quotas.teams["ml-research"].used[GPU] == 62_000

    assert state.quotas.admit(ask("ml-research", 2)).error is None
    adm = state.quotas.admit(ask("ml-research", 4))
    assert adm.error == "team ml-research: nvidia.com/gpu 62 used + 4 requested > max 64"
    assert adm.team == "ml-research"
    j = judge(state, ask("ml-research", 4))
    assert set(j.pool_ok) == {0}  # refused everywhere


def test_no_cohort_means_no_borrowing() -> None:
    state = h100_cluster(1)
    state.apply_team("ADDED", teamquota("solo", gpus(4, 8), pools=["h100"]))
    state.apply_team("ADDED", teamquota("idle", gpus(8, 8), cohort="c"))
    run(state, "solo", "s1", "h100-0", 3)
    assert state.quotas.admit(ask("solo", 1)).error is None
    assert state.quotas.admit(ask("solo", 2)).error == (
        "team solo: nvidia.com/gpu 3 used + 2 requested > guaranteed 4, and team solo is in no cohort to borrow from"
    )


def test_unset_max_means_guaranteed_as_the_crd_says() -> None:
    state = h100_cluster(1)
    state.apply_team("ADDED", teamquota("a", gpus(2), cohort="c"))
    state.apply_team("ADDED", teamquota("b", gpus(8, 8), cohort="c"))
    assert state.quotas.teams["a"].limits[GPU].max == 2_000  # milli-GPUs
    assert state.quotas.admit(ask("a", 2)).error is None
    assert state.quotas.admit(ask("a", 3)).error == "team a: nvidia.com/gpu 0 used + 3 requested > max 2"


def test_resources_the_quota_does_not_name_are_not_limited() -> None:
    state = h100_cluster(1)
    state.apply_team("ADDED", teamquota("a", gpus(1, 1)))
    adm = state.quotas.admit(ask("a", 0, cpu="500", mem="4Ti"))
    assert adm.error is None and not adm.borrowing


def test_every_resource_is_checked_and_the_first_refusal_is_the_sentence() -> None:
    state = h100_cluster(1)
    state.apply_team(
        "ADDED", teamquota("a", {GPU: {"guaranteed": 8, "max": 8}, "memory": {"guaranteed": "16Gi", "max": "16Gi"}})
    )
    run(state, "a", "a1", "h100-0", 1, mem="12Gi")
    adm = state.quotas.admit(ask("a", 1, mem="8Gi"))
    assert adm.error == "team a: memory 12Gi used + 8Gi requested > max 16Gi"


# -- quantities -----------------------------------------------------------------------------------
def test_quantities_in_quota_specs_and_pod_requests() -> None:
    state = cluster()
    state.apply_node("ADDED", cpu_node("cpu-0"))
    state.apply_team(
        "ADDED",
        teamquota(
            "q",
            {
                "cpu": {"guaranteed": "500m", "max": "1.5"},
                "memory": {"guaranteed": "64Gi", "max": "64Gi"},
                "example.com/fpga": {"guaranteed": 2, "max": "2"},
            },
            cohort="c",
            pools=["shared"],
        ),
    )
    state.apply_team("ADDED", teamquota("lender", {"cpu": {"guaranteed": "2", "max": "2"}}, cohort="c"))
    lim = state.quotas.teams["q"].limits
    assert (lim["cpu"].guaranteed, lim["cpu"].max) == (500, 1500)
    assert (lim["memory"].guaranteed, lim["memory"].max) == (64 * GI, 64 * GI)
    assert (lim["example.com/fpga"].guaranteed, lim["example.com/fpga"].max) == (2, 2)

    run(state, "q", "p1", "cpu-0", cpu="250m", mem="60Gi")
    team = state.quotas.teams["q"]
    assert team.used["cpu"] == 250 and team.used["memory"] == 60 * GI

    assert state.quotas.admit(ask("q", cpu="250m", mem="1Gi")).borrowing is False  # 500m: exactly guaranteed
    adm = state.quotas.admit(ask("q", cpu="1.25", mem="1Gi"))  # 1500m: borrows 1 core from lender
    assert adm.error is None and adm.borrowing
    assert state.quotas.admit(ask("q", cpu="1.5", mem="1Gi")).error == (
        "team q: cpu 250m used + 1500m requested > max 1500m"
    )
    assert state.quotas.admit(ask("q", cpu="100m", mem="4.5Gi")).error == (
        "team q: memory 60Gi used + 4608Mi requested > max 64Gi"
    )

    fpga = make_pod("q", "fpga", None, "100m", "1Gi", 0)
    fpga["spec"]["containers"][0]["resources"]["limits"] = {"example.com/fpga": "3"}
    assert state.quotas.admit(pod_ask(fpga)).error == "team q: example.com/fpga 0 used + 3 requested > max 2"


def test_unreadable_quota_spec_refuses_the_teams_pods_and_says_so_in_status() -> None:
    state = cluster()
    state.apply_team("ADDED", teamquota("bad", {"cpu": {"guaranteed": "lots"}}))
    team = state.quotas.teams["bad"]
    assert team.error == "resources[cpu]: 'lots' is not a Kubernetes quantity"
    assert state.quotas.admit(ask("bad")).error == (
        "team bad: TeamQuota spec is invalid: resources[cpu]: 'lots' is not a Kubernetes quantity"
    )
    valid = next(c for c in team_status(state, team)["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and valid["reason"] == "SpecError"


# -- per GPU model ----------------------------------------------------------------------------------
def test_per_model_quota_blocks_a_model_and_placement_filters_it_out() -> None:
    state = cluster()
    state.apply_node("ADDED", gpu_node("a100-0", "gpu", A100))
    state.apply_node("ADDED", gpu_node("h100-0", "gpu", H100))
    state.apply_node("ADDED", gpu_node("l4-0", "gpu", L4))
    assert state.table.models == [A100, H100, L4]
    state.apply_team(
        "ADDED",
        teamquota(
            "ml",
            gpus(16, 16),
            pools=["gpu"],
            models={H100: {"guaranteed": 2, "max": 2}, A100: {"guaranteed": 8, "max": 12}},
        ),
    )
    run(state, "ml", "h1", "h100-0", 2)
    run(state, "ml", "a1", "a100-0", 4)
    team = state.quotas.teams["ml"]
    assert (
        team.used[MODEL_PREFIX + H100] == 2_000 and team.used[MODEL_PREFIX + A100] == 4_000 and team.used[GPU] == 6_000
    )

    j = judge(state, ask("ml", 1))
    assert j.admission.error is None
    assert j.admission.blocked_models == {H100: f"team ml: {H100} GPUs 2 used + 1 requested > max 2"}
    assert j.model_ok == b"\x01\x00\x01\x00"  # A100 yes, H100 no, L4 (not named by the quota) yes

    j = judge(state, ask("ml", 5))  # A100: 4 + 5 > guaranteed 8 and no cohort: blocked too
    assert set(j.admission.blocked_models) == {A100, H100}
    assert j.admission.blocked_models[A100] == (
        f"team ml: {A100} GPUs 4 used + 5 requested > guaranteed 8, and team ml is in no cohort to borrow from"
    )
    assert j.model_ok == b"\x00\x00\x01\x00"

    # the pod's own choice of models narrows it further
    j = judge(state, ask("ml", 1, annotations={"berth.dev/gpu-models": H100}))
    assert j.model_ok == b"\x00\x00\x00\x00"
    # a pod without GPUs is never limited by model
    assert judge(state, ask("ml", 0)).model_ok == b""


def test_per_model_quota_borrows_from_the_cohort_and_counts_as_borrowing() -> None:
    state = cluster()
    state.apply_node("ADDED", gpu_node("h100-0", "h100", H100))
    state.apply_team(
        "ADDED", teamquota("a", gpus(8, 8), cohort="c", pools=["h100"], models={H100: {"guaranteed": 1, "max": 4}})
    )
    state.apply_team(
        "ADDED",
        teamquota(
            "b", gpus(0, 0), cohort="c", pools=["b-pool"], models={H100: {"guaranteed": 2, "max": 2, "lendingLimit": 1}}
        ),
    )
    adm = state.quotas.admit(ask("a", 2))
    assert adm.error is None and adm.blocked_models == {} and adm.borrowing
    assert state.quotas.admit(ask("a", 3)).blocked_models == {
        H100: f"team a: {H100} GPUs 0 used + 3 requested > guaranteed 1, and cohort c has only 2 left to lend"
    }


# -- team resolution ------------------------------------------------------------------------------
def test_namespace_claimed_twice_is_a_conflict_on_both_teams() -> None:
    state = h100_cluster(1)
    state.apply_team("ADDED", teamquota("a", gpus(4, 4), namespaces=["a", "shared-ns"]))
    state.apply_team("ADDED", teamquota("b", gpus(4, 4), namespaces=["b", "shared-ns"]))
    qa, qb = state.quotas.teams["a"], state.quotas.teams["b"]
    assert qa.conflicts == ("b",) and qb.conflicts == ("a",)

    adm = state.quotas.admit(ask("shared-ns", 1))
    assert adm.error == "namespace shared-ns is claimed by several TeamQuotas (a, b); fix the overlap"
    assert adm.team is None and set(judge(state, ask("shared-ns", 1)).pool_ok) == {0}
    assert state.quotas.admit(ask("a", 1)).error is None  # the teams' other namespaces still work

    for team, other in ((qa, "b"), (qb, "a")):
        cond = next(c for c in team_status(state, team)["conditions"] if c["type"] == "NamespaceConflict")
        assert cond["status"] == "True" and cond["reason"] == "Overlap"
        assert cond["message"] == f"namespaces also claimed by {other}"

    # fixing the overlap clears the condition on both
    state.apply_team("MODIFIED", teamquota("b", gpus(4, 4), namespaces=["b"], generation=2))
    assert state.quotas.teams["a"].conflicts == () and state.quotas.teams["b"].conflicts == ()
    assert state.quotas.admit(ask("shared-ns", 1)).team == "a"
    cond = next(
        c for c in team_status(state, state.quotas.teams["b"])["conditions"] if c["type"] == "NamespaceConflict"
    )
    assert cond["status"] == "False" and cond["observedGeneration"] == 2


def test_namespace_selector_follows_namespace_labels() -> None:
    state = h100_cluster(1)
    selector = {
        "matchLabels": {"berth.dev/team": "inference"},
        "matchExpressions": [{"key": "environment", "operator": "In", "values": ["prod", "staging"]}],
    }
    state.apply_team("ADDED", teamquota("inference", gpus(8, 8), selector=selector, pools=["h100"]))
    # a pod already running before its namespace is labelled is not the team's yet
    run(state, "serve-prod", "old", "h100-0", 2)
    assert state.quotas.admit(ask("serve-prod")).team is None

    state.apply_namespace(
        "ADDED", {"metadata": {"name": "serve-prod", "labels": {"berth.dev/team": "inference", "environment": "prod"}}}
    )
    state.apply_namespace(
        "ADDED", {"metadata": {"name": "serve-dev", "labels": {"berth.dev/team": "inference", "environment": "dev"}}}
    )
    assert state.quotas.admit(ask("serve-prod")).team == "inference"
    assert state.quotas.admit(ask("serve-dev")).team is None
    assert state.quotas.teams["inference"].used[GPU] == 2_000  # recounted from the ledger

    state.apply_namespace("MODIFIED", {"metadata": {"name": "serve-prod", "labels": {"environment": "prod"}}})
    assert state.quotas.admit(ask("serve-prod")).team is None
    staging = {"berth.dev/team": "inference", "environment": "staging"}
    state.apply_namespace("MODIFIED", {"metadata": {"name": "serve-prod", "labels": staging}})
    assert state.quotas.admit(ask("serve-prod")).team == "inference"
    state.apply_namespace("DELETED", {"metadata": {"name": "serve-prod"}})
    assert state.quotas.admit(ask("serve-prod")).team is None


@pytest.mark.parametrize(
    ("expr", "labels", "matches"),
    [
        ({"key": "tier", "operator": "NotIn", "values": ["batch"]}, {"tier": "web"}, True),
        ({"key": "tier", "operator": "NotIn", "values": ["batch"]}, {"tier": "batch"}, False),
        ({"key": "tier", "operator": "NotIn", "values": ["batch"]}, {}, True),
        ({"key": "tier", "operator": "Exists"}, {"tier": ""}, True),
        ({"key": "tier", "operator": "Exists"}, {}, False),
        ({"key": "tier", "operator": "DoesNotExist"}, {}, True),
        ({"key": "tier", "operator": "DoesNotExist"}, {"tier": "x"}, False),
        ({"key": "tier", "operator": "In", "values": ["web"]}, {}, False),
    ],
)
def test_selector_operators(expr: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    book = QuotaBook()
    book.upsert_team(teamquota("t", selector={"matchExpressions": [expr]}))
    book.set_namespace("ns", labels)
    team, error = book.team_for("ns")
    assert error is None
    assert (team is not None and team.name == "t") is matches


def test_a_namespace_both_listed_and_selected_by_one_team_is_no_conflict() -> None:
    state = cluster()
    state.apply_team("ADDED", teamquota("t", namespaces=["ns"], selector={"matchLabels": {"team": "t"}}))
    state.apply_namespace("ADDED", {"metadata": {"name": "ns", "labels": {"team": "t"}}})
    assert state.quotas.teams["t"].conflicts == ()
    assert state.quotas.admit(ask("ns")).team == "t"


def test_unmatched_pods_shared_policy() -> None:
    state = cluster("shared", ["shared"])
    state.apply_node("ADDED", cpu_node("cpu-0", "shared"))
    state.apply_node("ADDED", gpu_node("h100-0", "h100"))
    # no TeamQuota at all: every pool is open
    j = judge(state, ask("anyone"))
    assert j.admission.error is None and j.admission.own_pools is None
    assert set(j.pool_ok) == {1}
    # once teams exist, pods of no team only get the shared pools
    state.apply_team("ADDED", teamquota("a", gpus(8, 8), pools=["h100"]))
    j = judge(state, ask("anyone"))
    assert j.admission.team is None and j.admission.own_pools == frozenset({"shared"})
    assert j.pool_ok == bytes(1 if p == "shared" else 0 for p in state.table.pools) + b"\x00"


def test_unmatched_pods_reject_policy() -> None:
    state = cluster("reject")
    state.apply_node("ADDED", cpu_node("cpu-0", "shared"))
    assert state.quotas.admit(ask("anyone")).error is None  # no TeamQuota yet: nothing to reject for
    state.apply_team("ADDED", teamquota("a", gpus(8, 8)))
    adm = state.quotas.admit(ask("anyone"))
    assert adm.error == "namespace anyone belongs to no TeamQuota and this cluster rejects pods of no team"
    assert state.quotas.admit(ask("a")).error is None


def test_a_team_without_pools_uses_the_shared_pools() -> None:
    state = cluster("shared", ["shared"])
    state.apply_node("ADDED", cpu_node("cpu-0", "shared"))
    state.apply_node("ADDED", gpu_node("h100-0", "h100"))
    state.apply_team("ADDED", teamquota("nopools", {"cpu": {"guaranteed": "8", "max": "8"}}))
    j = judge(state, ask("nopools"))
    assert j.admission.own_pools == frozenset({"shared"})
    assert j.pool_ok == bytes(1 if p == "shared" else 0 for p in state.table.pools) + b"\x00"


# -- run-time edits ---------------------------------------------------------------------------------
def test_editing_a_teamquota_takes_effect_at_once_and_keeps_usage() -> None:
    state = h100_cluster(2)
    state.apply_team("ADDED", teamquota("a", gpus(4, 4), pools=["h100"]))
    run(state, "a", "a1", "h100-0", 4)
    assert state.quotas.admit(ask("a", 2)).error == "team a: nvidia.com/gpu 4 used + 2 requested > max 4"

    state.apply_team("MODIFIED", teamquota("a", gpus(8, 8), pools=["h100"], generation=2))
    team = state.quotas.teams["a"]
    assert team.generation == 2 and team.used[GPU] == 4_000 and team.pods == 1
    assert state.quotas.admit(ask("a", 2)).error is None

    # shrinking below what it holds: nothing is evicted, but nothing more is admitted, and it shows as borrowed
    state.apply_team("MODIFIED", teamquota("a", gpus(2, 2), pools=["h100"], generation=3))
    assert state.quotas.teams["a"].used[GPU] == 4_000
    assert state.quotas.borrowed(state.quotas.teams["a"], GPU) == 2_000
    assert team_status(state, state.quotas.teams["a"])["borrowed"] == {GPU: "2"}
    assert state.quotas.admit(ask("a", 1)).error == "team a: nvidia.com/gpu 4 used + 1 requested > max 2"
    assert state.quotas.admit(ask("a", 0)).error is None  # a pod without GPUs still fits


def test_joining_a_cohort_at_run_time() -> None:
    state = h100_cluster(2)
    state.apply_team("ADDED", teamquota("a", gpus(4, 8)))
    state.apply_team("ADDED", teamquota("b", gpus(4, 4)))
    run(state, "a", "a1", "h100-0", 4)
    assert state.quotas.admit(ask("a", 2)).error is not None
    state.apply_team("MODIFIED", teamquota("a", gpus(4, 8), cohort="c", generation=2))
    state.apply_team("MODIFIED", teamquota("b", gpus(4, 4), cohort="c", generation=2))
    assert state.quotas.admit(ask("a", 2)).borrowing


def test_deleting_a_teamquota() -> None:
    state = h100_cluster(1, unmatched="reject")
    state.apply_team("ADDED", teamquota("a", gpus(4, 4)))
    state.apply_team("ADDED", teamquota("other", gpus(4, 4)))
    run(state, "a", "a1", "h100-0", 3)
    state.apply_team("DELETED", {"metadata": {"name": "a"}})
    assert "a" not in state.quotas.teams
    assert state.quotas.admit(ask("a")).error == (
        "namespace a belongs to no TeamQuota and this cluster rejects pods of no team"
    )
    assert len(state.ledger) == 1  # the running pod still holds its node's GPUs
    assert state.table.used_gpu[state.table.slot_of["h100-0"]] == 3
    # recreated: usage is counted again from the ledger
    state.apply_team("ADDED", teamquota("a", gpus(4, 4)))
    assert state.quotas.teams["a"].used[GPU] == 3_000
    assert state.quotas.admit(ask("a", 2)).error == "team a: nvidia.com/gpu 3 used + 2 requested > max 4"


def test_usage_follows_pod_lifecycle_and_reservations() -> None:
    state = h100_cluster(1)
    state.apply_team("ADDED", teamquota("a", gpus(4, 4)))
    pod = run(state, "a", "a1", "h100-0", 2)
    state.apply_pod("MODIFIED", pod)  # a repeat event changes nothing
    assert state.quotas.teams["a"].used[GPU] == 2_000 and state.quotas.teams["a"].pods == 1
    pending = make_pod("a", "pending", None, "1", "1Gi", 4)
    state.apply_pod("ADDED", pending)  # pending pods hold nothing
    assert state.quotas.teams["a"].used[GPU] == 2_000

    entry = PodEntry(
        key="a/r1",
        uid="uid-r1",
        node="h100-0",
        request=PodRequest(cpu=1000, memory=GI, gpu=2),
        priority=0,
        team="a",
        borrowing=False,
        gpu_ids=0,
        confirmed=False,
    )
    state.reserve(entry)
    assert state.quotas.teams["a"].used[GPU] == 4_000
    assert state.quotas.admit(ask("a", 1)).error == "team a: nvidia.com/gpu 4 used + 1 requested > max 4"
    state.forget("a/r1")
    assert state.quotas.teams["a"].used[GPU] == 2_000

    pod["status"]["phase"] = "Succeeded"
    state.apply_pod("MODIFIED", pod)
    assert state.quotas.teams["a"].used.get(GPU, 0) == 0 and state.quotas.teams["a"].pods == 0


# -- property tests -------------------------------------------------------------------------------
RESOURCES = (GPU, "cpu")
CPU_STEP = 500  # cpu limits are generated in steps of 500m and written as "<n>m" quantities

# (guaranteed, max - guaranteed or None for unset, lendingLimit or None): small numbers so that requests
# of 0-6 hit every boundary (exactly guaranteed, exactly max, exactly what the cohort lends).
limit_st = st.tuples(
    st.integers(0, 8), st.one_of(st.none(), st.integers(0, 8)), st.one_of(st.none(), st.integers(0, 9))
)
team_st = st.tuples(limit_st, limit_st, st.sampled_from(["c", "c", "c", None]))
op_st = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, 3), st.integers(0, 6), st.sampled_from([0, 250, 500, 1000, 2500])),
    st.tuples(st.just("release"), st.integers(0, 999), st.integers(0, 1), st.just(0)),
)


def _quantity(res: str, n: int) -> Any:
    return f"{n * CPU_STEP}m" if res == "cpu" else n


def _spec(limit: tuple[int, int | None, int | None], res: str) -> dict[str, Any]:
    g, extra, lending = limit
    out: dict[str, Any] = {"guaranteed": _quantity(res, g)}
    if extra is not None:
        out["max"] = _quantity(res, g + extra)
    if lending is not None:
        out["lendingLimit"] = _quantity(res, lending)
    return out


def _members(teams: dict[str, Team], team: Team) -> list[Team]:
    return [t for t in teams.values() if t.cohort == team.cohort] if team.cohort else [team]


def _oracle(teams: dict[str, Team], team: Team, request: dict[str, int]) -> bool:
    """The documented rule, written out independently of QuotaBook._check."""
    for res, amount in request.items():
        lim = team.limits[res]
        after = team.used.get(res, 0) + amount
        cap = lim.guaranteed if lim.max is None else lim.max
        if after > cap:
            return False
        if after <= lim.guaranteed:
            continue
        if team.cohort is None:
            return False
        members = _members(teams, team)
        capacity = shared = 0
        for m in members:
            ml = m.limits[res]
            lends = ml.guaranteed if ml.lending is None else min(ml.lending, ml.guaranteed)
            capacity += lends
            used = after if m is team else m.used.get(res, 0)
            shared += max(0, used - (ml.guaranteed - lends))
        if shared > capacity:
            return False
    return True


def _check_invariants(
    state: ClusterState, tally: dict[str, dict[str, int]], borrowed_now: tuple[str | None, set[str]] = (None, set())
) -> None:
    """`borrowed_now`: the cohort and resources of the admission just made by borrowing, if any."""
    teams = state.quotas.teams
    for team in teams.values():
        for res in RESOURCES:
            used = team.used.get(res, 0)
            assert used == tally[team.name][res], "team usage drifted from what was held"
            lim = team.limits[res]
            assert lim.max is not None and used <= lim.max, f"{team.name} {res} above max"
            borrowed = max(0, used - lim.guaranteed)
            members = _members(teams, team)
            others_lend = sum(m.limits[res].lendable for m in members if m is not team)
            assert borrowed <= others_lend, f"{team.name} borrows {borrowed} {res}, others lend {others_lend}"
    cohorts = {t.cohort for t in teams.values() if t.cohort}
    for cohort in cohorts:
        members = [t for t in teams.values() if t.cohort == cohort]
        for res in RESOURCES:
            borrowers = [t for t in members if t.used.get(res, 0) > t.limits[res].guaranteed]
            lenders = [t for t in members if t not in borrowers]
            assert sum(t.used.get(res, 0) - t.limits[res].guaranteed for t in borrowers) <= sum(
                t.limits[res].lendable for t in lenders
            ), "the cohort lent more than its members offer"
            total = sum(t.used.get(res, 0) for t in members)
            if cohort == borrowed_now[0] and res in borrowed_now[1]:
                # Right after a borrowing admission the cohort holds no more than it guarantees in all.
                # (A lender taking back its own guaranteed share may push the total above that until
                # preemption reclaims the borrowed part: see the reclaim test below.)
                assert total <= sum(t.limits[res].guaranteed for t in members), "borrowed beyond the cohort"
    # guaranteed always fits: any team with headroom below guaranteed gets a pod of that size admitted
    for team in teams.values():
        headroom = {res: team.limits[res].guaranteed - team.used.get(res, 0) for res in RESOURCES}
        request = PodRequest(gpu=max(0, headroom[GPU] // 1000), cpu=max(0, headroom["cpu"]))  # GPUs in milli
        if request.as_dict():
            probe = PodAsk(team.name, "probe", "uid-probe", request, 0, (), 0, "")
            adm = state.quotas.admit(probe)
            assert adm.error is None and not adm.borrowing, f"{team.name} refused within guaranteed: {adm.error}"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(team_st, min_size=2, max_size=4), ops=st.lists(op_st, max_size=30))
def test_quota_invariants_hold_for_random_cohorts(specs: list[Any], ops: list[tuple[str, int, int, int]]) -> None:
    state = cluster()
    names = [f"t{i}" for i in range(len(specs))]
    for i, (gpu_lim, cpu_lim, cohort) in enumerate(specs):
        state.apply_team(
            "ADDED",
            teamquota(
                names[i], {GPU: _spec(gpu_lim, GPU), "cpu": _spec(cpu_lim, "cpu")}, cohort="c" if i < 2 else cohort
            ),
        )
    tally = {n: dict.fromkeys(RESOURCES, 0) for n in names}
    held: list[PodEntry] = []
    _check_invariants(state, tally)
    for step, (kind, a, b, c) in enumerate(ops):
        borrowed_now: tuple[str | None, set[str]] = (None, set())
        if kind == "admit":
            name = names[a % len(names)]
            request = PodRequest(cpu=c, gpu=b)
            probe = PodAsk(name, f"p{step}", f"uid-{step}", request, 0, (), 0, "")
            team = state.quotas.teams[name]
            expected = _oracle(state.quotas.teams, team, request.quota_units())
            within = all(team.used.get(r, 0) + v <= team.limits[r].guaranteed for r, v in request.quota_units().items())
            adm = state.quotas.admit(probe)
            assert (adm.error is None) is expected, adm.error
            if within:
                assert adm.error is None and not adm.borrowing
            if adm.error is None:
                borrowed_now = (
                    team.cohort,
                    {
                        r
                        for r, v in request.quota_units().items()
                        if team.used.get(r, 0) + v > team.limits[r].guaranteed
                    },
                )
                assert adm.borrowing is bool(borrowed_now[1])
                entry = PodEntry(
                    key=f"{name}/p{step}",
                    uid=f"uid-{step}",
                    node="gpu-0",
                    request=request,
                    priority=0,
                    team=adm.team,
                    borrowing=adm.borrowing,
                    gpu_ids=0,
                    confirmed=False,
                )
                state.reserve(entry)
                held.append(entry)
                for r, v in request.quota_units().items():
                    tally[name][r] += v
        elif held:
            entry = held.pop(a % len(held))
            if b:
                state.forget(entry.key)  # the bind failed
            else:
                ns, pod = entry.key.split("/")
                state.apply_pod("DELETED", {"metadata": {"namespace": ns, "name": pod}})
            assert entry.team is not None
            for r, v in entry.request.quota_units().items():
                tally[entry.team][r] -= v
        _check_invariants(state, tally, borrowed_now)


def test_reclaim_may_take_a_cohort_above_its_guaranteed_total_until_preemption() -> None:
    """The one way a cohort's usage exceeds the sum of its guaranteed: a lender takes back its own share
    while another team still holds it borrowed. Admission allows it (guaranteed always fits); preemption
    of the borrower's pods (scheduler.policy.preempt) gives the nodes back."""
    state = h100_cluster(3)
    state.apply_team("ADDED", teamquota("a", gpus(8, 8), cohort="c"))
    state.apply_team("ADDED", teamquota("b", gpus(8, 24), cohort="c"))
    run(state, "b", "b1", "h100-0", 8)
    run(state, "b", "b2", "h100-1", 8)
    assert state.quotas.admit(ask("a", 8)).error is None
    run(state, "a", "a1", "h100-2", 8)
    total = sum(t.used[GPU] for t in state.quotas.teams.values())
    assert total == 24_000 > 16_000
    # and nobody may borrow meanwhile
    assert state.quotas.admit(ask("b", 1)).error == (
        "team b: nvidia.com/gpu 16 used + 1 requested > guaranteed 8, and cohort c has only 0 left to lend"
    )


@settings(max_examples=300, deadline=None)
@given(
    limits=st.lists(st.tuples(limit_st, st.integers(0, 8)), min_size=1, max_size=3),
    cohort=st.booleans(),
    amount=st.integers(1, 8),
)
# t0 keeps 3 of its 4 to itself (lendingLimit 1) and holds none: borrowing 1 of t1's idle GPU costs the
# cohort only 5 - 3 = 2 of its shared capacity, which is what is left.
@example(limits=[((4, 4, 1), 0), ((4, 4, None), 3)], cohort=True, amount=5)
@example(limits=[((4, 4, 1), 0), ((4, 4, None), 4)], cohort=True, amount=5)
def test_one_admission_matches_the_documented_rule(limits: list[Any], cohort: bool, amount: int) -> None:
    """Any usage (held pods can exceed the quota after an edit) and any request: admit follows the rule,
    and a refusal is the sentence with the numbers."""
    state = cluster()
    for i, (lim, used) in enumerate(limits):
        state.apply_team("ADDED", teamquota(f"t{i}", {GPU: _spec(lim, GPU)}, cohort="c" if cohort else None))
        if used:
            state.apply_pod("ADDED", make_pod(f"t{i}", "held", "gpu-0", "0", "0", used))
    team = state.quotas.teams["t0"]
    lim = team.limits[GPU]
    used = team.used.get(GPU, 0)
    adm = state.quotas.admit(PodAsk("t0", "p", "uid-p", PodRequest(gpu=amount), 0, (), 0, ""))
    assert (adm.error is None) is _oracle(state.quotas.teams, team, {GPU: amount * 1000})  # milli-GPUs
    if adm.error is None:
        assert adm.borrowing is (used + amount * 1000 > lim.guaranteed)
    elif used + amount * 1000 > (lim.max if lim.max is not None else lim.guaranteed):
        assert adm.error == f"team t0: nvidia.com/gpu {used // 1000} used + {amount} requested > max {lim.max // 1000}"
    else:
        g = lim.guaranteed // 1000
        assert adm.error.startswith(
            f"team t0: nvidia.com/gpu {used // 1000} used + {amount} requested > guaranteed {g}, and "
        )
