"""What a person sees with the built kubectl against the real kube-apiserver: `kubectl get teamquotas`
shows 0 rather than blanks, a Status (Valid / Conflict) column, cpu and memory; Berth found the cluster
through $KUBECONFIG (a list, as kubectl reads it) with no --kubeconfig flag."""

import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from kubernetes import client as kclient

from tests.e2e import harness as h
from tests.e2e.objects import create_namespace, pod

COLUMNS = ["NAME", "COHORT", "STATUS", "GPUS USED", "GPU GUARANTEED", "GPU MAX", "BORROWED GPUS", "CPU USED"]
COLUMNS += ["MEMORY USED", "PODS", "AGE"]


def table(text: str) -> dict[str, dict[str, str]]:
    """kubectl's table by its header: each cell is the text under its column's heading (blank stays '')."""
    header, *rows = text.splitlines()
    starts = [header.index(c) for c in COLUMNS]
    assert starts == sorted(starts), header
    cells = {}
    for row in rows:
        values = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        cells[values[0]] = dict(zip(COLUMNS, values, strict=True))
    return cells


@pytest.fixture(scope="module")
def views(
    cp: h.ControlPlane, api: kclient.CoreV1Api, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """Three teams (one idle, two claiming the same namespace) and a Berth found through $KUBECONFIG."""
    suffix = int(time.time())
    idle, left, shared = (f"view-{n}-{suffix}" for n in ("idle", "left", "shared"))
    for ns in (idle, left, shared):
        create_namespace(api, ns)
    teams = {
        idle: {"namespaces": [idle], "resources": {"nvidia.com/gpu": {"guaranteed": 4, "max": 8}}},
        left: {"namespaces": [left, shared]},
        f"{shared}-b": {"namespaces": [shared]},
    }
    cp.apply(
        [
            {"apiVersion": "berth.dev/v1alpha1", "kind": "TeamQuota", "metadata": {"name": n}, "spec": s}
            for n, s in teams.items()
        ]
    )
    # A pod already on a node (no kubelet: bound is as far as it goes) counts in its team's usage.
    api.create_namespaced_pod(idle, pod("busy", "views", cpu="1500m", memory="3Gi", node_name="views-nowhere"))
    home = tmp_path_factory.mktemp("home")
    config = home / "berth.yaml"
    config.write_text(yaml.safe_dump({"quotas": {"status_interval_seconds": 0.5}}))
    port = h.free_port()
    kubeconfig = f"{home / 'missing'}:{cp.berth_kubeconfig}"  # type: ignore[attr-defined]
    argv = ["-m", "scheduler", "serve", "--config", str(config), "--port", str(port)]
    proc = h.Proc(
        f"berth-views-{port}", [sys.executable, *argv], cp.dir, env={"KUBECONFIG": kubeconfig, "HOME": str(home)}
    )
    proc.start()
    try:
        h.wait_ready(f"http://127.0.0.1:{port}", proc)
        yield idle, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
        cp.kubectl("delete", "pod", "-n", idle, "busy", "--force", "--grace-period=0", check=False)
        for name in teams:
            cp.kubectl("delete", "teamquota", name, "--ignore-not-found")
        for ns in (idle, left, shared):
            cp.kubectl("delete", "namespace", ns, "--wait=false")


def test_kubectl_get_teamquotas_shows_zeros_status_cpu_and_memory(cp: h.ControlPlane, views: tuple[str, str]) -> None:
    idle, _ = views
    left, shared_b = idle.replace("idle", "left"), idle.replace("idle", "shared") + "-b"

    def written() -> dict[str, dict[str, str]] | None:
        rows = table(cp.kubectl("get", "teamquotas", idle, left, shared_b).stdout)
        return rows if all(r["STATUS"] for r in rows.values()) and rows[idle]["PODS"] == "1" else None

    rows = h.wait_until(written, 30, "Berth to write the three teams' status")
    print(cp.kubectl("get", "teamquotas", idle, left, shared_b).stdout)  # shown with -s: what a person sees
    assert rows[idle] | {"AGE": ""} == {
        "NAME": idle,
        "COHORT": "",  # no cohort: a spec field, left blank
        "STATUS": "Valid",
        "GPUS USED": "0",
        "GPU GUARANTEED": "4",
        "GPU MAX": "8",
        "BORROWED GPUS": "0",
        "CPU USED": "1500m",
        "MEMORY USED": "3Gi",
        "PODS": "1",
        "AGE": "",
    }
    for team in (left, shared_b):
        assert rows[team]["STATUS"] == "Conflict", rows[team]
        assert (rows[team]["GPUS USED"], rows[team]["CPU USED"], rows[team]["PODS"]) == ("0", "0", "0"), rows[team]
    why = cp.kubectl("get", "teamquota", left, "-o", "jsonpath={.status.conditions[?(@.type=='Valid')].message}")
    assert f"also claimed by {shared_b}" in why.stdout, why.stdout


def test_a_bound_pod_explained_by_name_is_not_counted_against_itself(views: tuple[str, str]) -> None:
    """Berth reads the pod from the API server, finds it bound in its ledger, and judges it without that hold."""
    idle, url = views
    with urllib.request.urlopen(f"{url}/debug/explain?namespace={idle}&pod=busy", timeout=10) as r:
        out = orjson.loads(r.read())
    assert out["boundTo"] == "views-nowhere" and out["team"] == idle and out["quota"] is None


def test_the_conflict_clears_when_the_overlap_is_fixed(cp: h.ControlPlane, views: tuple[str, str]) -> None:
    idle, _ = views
    left, shared_b = idle.replace("idle", "left"), idle.replace("idle", "shared") + "-b"
    cp.kubectl("delete", "teamquota", shared_b)
    h.wait_until(
        lambda: table(cp.kubectl("get", "teamquotas", left).stdout)[left]["STATUS"] == "Valid",
        30,
        "the remaining team to be Valid again",
    )


def test_the_crd_is_the_one_deploy_ships() -> None:
    """The columns above come from deploy/crds (the harness applies that file)."""
    crd = yaml.safe_load((Path(h.ROOT) / "deploy" / "crds" / "berth.dev_teamquotas.yaml").read_text())
    names = [c["name"].upper() for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert ["NAME", *names] == COLUMNS


def test_the_example_teamquotas_pass_the_crds_validation(cp: h.ControlPlane) -> None:
    """What `make cluster` applies: accepted by the real API server (schema and CEL rules)."""
    example = Path(h.ROOT) / "deploy" / "examples" / "teamquotas.yaml"
    out = cp.kubectl("apply", "--dry-run=server", "-f", str(example))
    assert out.stdout.count("(server dry run)") == 4, out.stdout
