"""TeamQuota status as `kubectl get teamquotas` prints it: the fields its columns read are always there."""

from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import make_pod
from scheduler.observability.showback import team_status


def teamquota(name: str, namespaces: list[str], resources: dict[str, dict[str, object]]) -> dict[str, object]:
    return {"metadata": {"name": name, "generation": 2}, "spec": {"namespaces": namespaces, "resources": resources}}


def valid(status: dict[str, object]) -> dict[str, str]:
    return next(c for c in status["conditions"] if c["type"] == "Valid")  # type: ignore[attr-defined,index]


def test_an_idle_team_reports_zeros_not_blanks() -> None:
    state = ClusterState(Config())
    state.apply_team("ADDED", teamquota("idle", ["idle"], {"example.com/fpga": {"guaranteed": 2}}))
    status = team_status(state, state.quotas.teams["idle"])
    assert status["used"] == {"cpu": "0", "example.com/fpga": "0", "memory": "0", "nvidia.com/gpu": "0"}
    assert status["borrowed"] == {"example.com/fpga": "0", "nvidia.com/gpu": "0"}
    assert status["pods"] == 0
    assert valid(status)["reason"] == "Valid" and valid(status)["status"] == "True"


def test_usage_is_written_as_kubernetes_quantities() -> None:
    state = ClusterState(Config())
    state.apply_team("ADDED", teamquota("busy", ["busy"], {"cpu": {"guaranteed": "4"}}))
    state.apply_pod("ADDED", make_pod("busy", "p", "some-node", "1500m", "3Gi", 0))
    status = team_status(state, state.quotas.teams["busy"])
    assert status["used"] == {"cpu": "1500m", "memory": "3Gi", "nvidia.com/gpu": "0"}
    assert status["pods"] == 1


def test_teams_whose_namespaces_overlap_are_both_visibly_not_valid() -> None:
    state = ClusterState(Config())
    state.apply_team("ADDED", teamquota("a", ["shared-ns", "a"], {}))
    state.apply_team("ADDED", teamquota("b", ["shared-ns"], {}))
    for name, other in (("a", "b"), ("b", "a")):
        status = team_status(state, state.quotas.teams[name])
        cond = valid(status)
        assert (cond["status"], cond["reason"]) == ("False", "Conflict"), cond
        assert f"also claimed by {other}" in cond["message"]
        overlap = next(c for c in status["conditions"] if c["type"] == "NamespaceConflict")  # type: ignore[attr-defined]
        assert overlap["status"] == "True"
    state.apply_team("DELETED", teamquota("b", ["shared-ns"], {}))
    assert valid(team_status(state, state.quotas.teams["a"]))["reason"] == "Valid", "fixed overlap: valid again"
