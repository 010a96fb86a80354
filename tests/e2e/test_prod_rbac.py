"""Berth runs as its own ServiceAccount with exactly the shipped ClusterRole (deploy/base/rbac/berth.yaml), and
that role is least privilege: the real API server refuses (403) every write outside it, while the writes Berth
needs (the pods/binding subresource, teamquotas/status) go through."""

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.rest import ApiException

from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle
from tests.e2e.objects import BERTH, create_namespace, create_nodes, delete_nodes, node, pod
from tests.e2e.prod_helpers import GPU_IDS, wait_all_bound

BERTH_USER = "system:serviceaccount:berth-system:berth"
GROUP = "prod-rbac"
NOBODY = "prod-rbac-no-scheduler"  # a schedulerName no scheduler serves: pods stay pending unless bound by hand


@pytest.fixture(scope="module")
def berth_kubeconfig(cp: h.ControlPlane) -> Path:
    return cp.berth_kubeconfig  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="module")
def as_berth(berth_kubeconfig: Path) -> kclient.ApiClient:
    return kconfig.new_client_from_config(str(berth_kubeconfig))


@pytest.fixture(scope="module")
def ns(api: kclient.CoreV1Api) -> Iterator[str]:
    name = create_namespace(api, f"prod-rbac-{int(time.time())}")
    create_nodes(api, [node("rbac-a", GROUP, gpus=8)])
    yield name
    for p in api.list_namespaced_pod(name).items:
        api.delete_namespaced_pod(p.metadata.name, name, grace_period_seconds=0)
    delete_nodes(api, GROUP)


def test_berth_authenticates_as_its_service_account(
    cp: h.ControlPlane,
    api: kclient.CoreV1Api,
    berth: BerthHandle,
    berth_scheduler: h.Proc,
    berth_kubeconfig: Path,
    ns: str,
) -> None:
    # The running Berth is given this kubeconfig...
    assert berth.proc is not None
    args = berth.proc.args
    assert Path(args[args.index("--kubeconfig") + 1]) == berth_kubeconfig
    # ...and the API server maps its token to the ServiceAccount (SelfSubjectReview), not to an admin.
    who = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=berth_kubeconfig).stdout)
    info = who["status"]["userInfo"]
    assert info["username"] == BERTH_USER, info
    assert "system:serviceaccounts:berth-system" in info["groups"], info
    assert "system:masters" not in info["groups"], info

    # With that identity alone Berth listed the cluster (it is ready) and binds pods.
    def berth_binds() -> float:  # "already_bound": a retry after a first write that timed out (loaded machine)
        return sum(berth.metric("berth_binds_total", result=r) for r in ("bound", "already_bound"))

    binds = berth_binds()
    api.create_namespaced_pod(ns, pod("through-berth", GROUP, gpus=1, scheduler=BERTH))
    assert wait_all_bound(api, ns, ["through-berth"], timeout=60) == {"through-berth": "rbac-a"}
    # The watch can show the pod bound before Berth has read the API server's reply and counted it.
    h.wait_until(lambda: berth_binds() > binds, 15, "Berth to count its bind")
    assert GPU_IDS in api.read_namespaced_pod("through-berth", ns).metadata.annotations


def _refused(call: Callable[[], Any]) -> ApiException:
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == 403, f"expected 403 Forbidden, got {refused.value.status}: {refused.value.body}"
    assert BERTH_USER in refused.value.body
    return refused.value


def test_writes_outside_the_role_are_forbidden(api: kclient.CoreV1Api, as_berth: kclient.ApiClient, ns: str) -> None:
    core = kclient.CoreV1Api(as_berth)
    api.create_namespaced_pod(ns, pod("victim", GROUP, scheduler=NOBODY))
    _refused(lambda: core.delete_namespaced_pod("victim", ns, grace_period_seconds=0))
    assert api.read_namespaced_pod("victim", ns).metadata.deletion_timestamp is None
    _refused(lambda: core.create_namespaced_pod(ns, pod("smuggled", GROUP, scheduler=NOBODY)))
    _refused(lambda: core.create_namespaced_secret(ns, {"metadata": {"name": "stolen"}, "stringData": {"k": "v"}}))
    _refused(lambda: core.list_namespaced_secret(ns))
    _refused(lambda: core.patch_node("rbac-a", {"metadata": {"labels": {"pwned": "yes"}}}))
    assert "pwned" not in (api.read_node("rbac-a").metadata.labels or {})
    _refused(lambda: core.patch_node_status("rbac-a", {"status": {"capacity": {"nvidia.com/gpu": "64"}}}))
    _refused(lambda: core.delete_namespace(ns))
    custom = kclient.CustomObjectsApi(as_berth)
    _refused(
        lambda: custom.create_cluster_custom_object(
            "berth.dev",
            "v1alpha1",
            "teamquotas",
            {
                "apiVersion": "berth.dev/v1alpha1",
                "kind": "TeamQuota",
                "metadata": {"name": "prod-rbac-smuggled"},
                "spec": {"namespaces": [ns]},
            },
        )
    )
    rbac = kclient.RbacAuthorizationV1Api(as_berth)
    _refused(
        lambda: rbac.patch_cluster_role("berth", {"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})
    )


def test_writes_berth_needs_are_allowed(
    cp: h.ControlPlane,
    api: kclient.CoreV1Api,
    custom: kclient.CustomObjectsApi,
    as_berth: kclient.ApiClient,
    berth_kubeconfig: Path,
    ns: str,
) -> None:
    def can_i(*args: str) -> bool:
        res = cp.kubectl("auth", "can-i", *args, check=False, kubeconfig=berth_kubeconfig)
        return res.stdout.strip() == "yes"

    assert can_i("create", "pods", "--subresource=binding", "-n", ns)  # "pods/binding" would mean the pod "binding"
    assert can_i("patch", "teamquotas.berth.dev", "--subresource=status")
    assert not can_i("update", "teamquotas.berth.dev", "--subresource=status")  # a merge patch is all it sends
    assert can_i("patch", "pods", "-n", ns)  # the admission loop removes a gang's gates (docs/gangs.md)
    assert can_i("create", "events", "-n", ns)  # why a gang waits (docs/gangs.md)
    assert not can_i("create", "events.events.k8s.io", "-n", ns)
    assert can_i("watch", "pods", "--all-namespaces")
    assert not can_i("patch", "teamquotas.berth.dev")  # the spec belongs to the cluster admin
    assert not can_i("delete", "pods", "-n", ns)
    assert can_i("create", "pods", "--subresource=eviction", "-n", ns)  # gang reclaim (docs/gangs.md)
    assert not can_i("create", "secrets", "-n", ns)
    assert not can_i("patch", "nodes")

    # And for real: a Binding written with Berth's token binds the pod...
    api.create_namespaced_pod(ns, pod("bound-by-hand", GROUP, scheduler=NOBODY))
    kclient.CoreV1Api(as_berth).create_namespaced_pod_binding(
        "bound-by-hand",
        ns,
        {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "bound-by-hand"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "rbac-a"},
        },
        _preload_content=False,
    )  # the client cannot decode the Status the API server returns
    assert api.read_namespaced_pod("bound-by-hand", ns).spec.node_name == "rbac-a"

    # ...and a status merge patch on a TeamQuota goes through, while its spec stays closed.
    name = "prod-rbac-team"
    custom.create_cluster_custom_object(
        "berth.dev",
        "v1alpha1",
        "teamquotas",
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "TeamQuota",
            "metadata": {"name": name},
            "spec": {"namespaces": [ns], "pools": ["prod-rbac"]},
        },
    )
    try:
        mine = kclient.CustomObjectsApi(as_berth)
        mine.patch_cluster_custom_object_status(
            "berth.dev", "v1alpha1", "teamquotas", name, {"status": {"observedGeneration": 1}}
        )
        _refused(
            lambda: mine.patch_cluster_custom_object(
                "berth.dev", "v1alpha1", "teamquotas", name, {"spec": {"cohort": "stolen"}}
            )
        )
        got = custom.get_cluster_custom_object("berth.dev", "v1alpha1", "teamquotas", name)
        assert "cohort" not in got["spec"]
    finally:
        custom.delete_cluster_custom_object("berth.dev", "v1alpha1", "teamquotas", name)


def test_lease_rights_cover_berths_own_lease_only(cp: h.ControlPlane, berth_kubeconfig: Path) -> None:
    """Leader election (Role berth-lease): get and update of berth-system/berth and nothing else; create
    cannot be limited by name, so it is allowed in berth-system alone."""

    def can_i(*args: str) -> bool:
        res = cp.kubectl("auth", "can-i", *args, check=False, kubeconfig=berth_kubeconfig)
        return res.stdout.strip() == "yes"

    for verb in ("get", "update"):
        assert can_i(verb, "leases.coordination.k8s.io/berth", "-n", "berth-system"), verb
        assert not can_i(verb, "leases.coordination.k8s.io/berth-scheduler", "-n", "berth-system"), verb
        assert not can_i(verb, "leases.coordination.k8s.io/berth", "-n", "kube-system"), verb
    assert can_i("create", "leases.coordination.k8s.io", "-n", "berth-system")
    assert not can_i("create", "leases.coordination.k8s.io", "-n", "kube-system")
    assert not can_i("delete", "leases.coordination.k8s.io/berth", "-n", "berth-system")
    assert not can_i("list", "leases.coordination.k8s.io", "-n", "berth-system")
