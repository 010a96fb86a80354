"""The shipped manifests apply to a real kube-apiserver with kubectl's kustomize and server-side apply:
deploy/ (the base) and deploy/overlays/tls, each as a server-side dry run and then for real, and the ClusterRole
in the cluster is the one deploy/base/rbac/berth.yaml declares.

This control plane has no kube-controller-manager and no kubelet, so the Deployment never gets a ReplicaSet or
pods: the test checks the manifests against the API server's schemas, defaulting, field validation and
admission (server-side dry run and apply), not a rollout."""

import json
from typing import Any

import pytest
import yaml

from tests.e2e import harness as h

DEPLOY = h.ROOT / "deploy"
TLS = DEPLOY / "overlays" / "tls"
RBAC = DEPLOY / "base" / "rbac" / "berth.yaml"
MIGRATION = "Warning: failed to migrate kubectl.kubernetes.io/last-applied-configuration for Server-Side Apply"

BASE_OBJECTS = {
    ("Namespace", "berth-system"),
    ("CustomResourceDefinition", "teamquotas.berth.dev"),
    ("ServiceAccount", "berth"),
    ("ServiceAccount", "berth-scheduler"),
    ("Secret", "berth-scheduler-token"),
    ("ClusterRole", "berth"),
    ("ClusterRoleBinding", "berth"),
    ("ClusterRoleBinding", "berth-scheduler"),
    ("ClusterRoleBinding", "berth-scheduler-volume"),
    ("Role", "berth-scheduler-lease"),
    ("RoleBinding", "berth-scheduler-lease"),
    ("Role", "berth-lease"),
    ("RoleBinding", "berth-lease"),
    ("RoleBinding", "berth-scheduler:extension-apiserver-authentication-reader"),
    ("ConfigMap", "berth-config"),
    ("Deployment", "berth"),
    ("PodDisruptionBudget", "berth"),
    ("Service", "berth"),
    ("NetworkPolicy", "berth"),
}


def _apply(cp: h.ControlPlane, path: str, dry_run: bool) -> list[dict[str, Any]]:
    args = ["apply", "-k", path, "--server-side", "-o", "json"]
    if dry_run:
        args.append("--dry-run=server")
    res = cp.kubectl(*args)  # raises with kubectl's stderr on any error
    # The harness created the CRD, namespace and Berth's RBAC with client-side apply; the first server-side
    # apply over them takes over kubectl's last-applied annotation (a dry run only warns that it cannot yet).
    # Nothing else may be said.
    said = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith(MIGRATION)]
    assert not said, res.stderr
    out = json.loads(res.stdout)
    return out["items"] if out.get("kind") == "List" else [out]


def _get(cp: h.ControlPlane, *args: str) -> dict[str, Any] | None:
    res = cp.kubectl("get", *args, "-o", "json", "--ignore-not-found")
    return json.loads(res.stdout) if res.stdout.strip() else None


def _by_key(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def _declared(path: Any, kind: str) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)


def _container(deploy: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _check_listeners(objs: dict[tuple[str, str], dict[str, Any]], tls: bool) -> None:
    """The verbs on 127.0.0.1 (base) or the mTLS port (overlay); the pod IP's plain port and the Service serve
    health and metrics only; the probes use that port."""
    berth_yaml = yaml.safe_load(objs[("ConfigMap", "berth-config")]["data"]["berth.yaml"])["server"]
    assert (berth_yaml["host"], berth_yaml["port"]) == ("127.0.0.1", 8888)
    assert (berth_yaml["health_host"], berth_yaml["health_port"]) == ("0.0.0.0", 8889)
    c = _container(objs[("Deployment", "berth")], "berth")
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8889, "https": 8443}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "health", probe
    ports = {p["port"]: p["targetPort"] for p in objs[("Service", "berth")]["spec"]["ports"]}
    assert ports == ({8889: "health", 8443: "https"} if tls else {8889: "health"}), ports
    assert (c["args"][c["args"].index("--host") + 1] == "0.0.0.0") if tls else "--host" not in c["args"]
    policy = objs[("NetworkPolicy", "berth")]["spec"]["ingress"]
    assert [p["port"] for rule in policy for p in rule["ports"]] == [8443]


def test_base_applies_server_side(cp: h.ControlPlane) -> None:
    existed = _get(cp, "deployment", "berth", "-n", "berth-system") is not None
    dry = _by_key(_apply(cp, str(DEPLOY), dry_run=True))
    assert set(dry) == BASE_OBJECTS, set(dry) ^ BASE_OBJECTS
    _check_listeners(dry, tls=False)
    # Server-side: the API server defaulted the objects it validated.
    assert dry[("Deployment", "berth")]["spec"]["progressDeadlineSeconds"] == 600
    if not existed:
        assert _get(cp, "deployment", "berth", "-n", "berth-system") is None, "a dry run must not create"

    _by_key(_apply(cp, str(DEPLOY), dry_run=False))
    for kind, name in BASE_OBJECTS:
        ns = (
            []
            if kind in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")
            else ["-n", "kube-system" if name.endswith("authentication-reader") else "berth-system"]
        )
        got = _get(cp, kind.lower() if kind != "CustomResourceDefinition" else "crd", name, *ns)
        assert got is not None, f"{kind} {name} not created"
        assert got["metadata"]["labels"].get("app.kubernetes.io/part-of") == "berth", (kind, name)

    # The ClusterRole Berth runs with is exactly the one the manifest declares.
    role = _get(cp, "clusterrole", "berth")
    assert role is not None
    assert role["rules"] == _declared(RBAC, "ClusterRole")["rules"]
    binding = _get(cp, "clusterrolebinding", "berth")
    declared = _declared(RBAC, "ClusterRoleBinding")
    assert binding is not None
    assert binding["roleRef"] == declared["roleRef"] and binding["subjects"] == declared["subjects"]
    deploy = _get(cp, "deployment", "berth", "-n", "berth-system")
    assert deploy is not None and deploy["spec"]["template"]["spec"]["serviceAccountName"] == "berth"


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "for-real"])
def test_tls_overlay_applies_server_side(cp: h.ControlPlane, dry_run: bool) -> None:
    try:
        objs = _by_key(_apply(cp, str(TLS), dry_run=dry_run))
        assert set(objs) == BASE_OBJECTS, set(objs) ^ BASE_OBJECTS
        _check_listeners(objs, tls=True)
        deploy = _get(cp, "deployment", "berth", "-n", "berth-system") if not dry_run else objs[("Deployment", "berth")]
        assert deploy is not None
        args = _container(deploy, "berth")["args"]
        assert args[args.index("--client-ca") + 1] == "/etc/berth-tls/ca.crt", args
        volumes = {v["name"] for v in deploy["spec"]["template"]["spec"]["volumes"]}
        assert {"tls-server", "tls-client", "config"} <= volumes
        sched = yaml.safe_load(objs[("ConfigMap", "berth-config")]["data"]["kube-scheduler-config.yaml"])
        ext = sched["extenders"][0]
        assert ext["enableHTTPS"] is True and ext["urlPrefix"].startswith("https://")
        assert set(ext["tlsConfig"]) == {"caFile", "certFile", "keyFile"}
        assert "berth.yaml" in objs[("ConfigMap", "berth-config")]["data"], "the overlay merges, not replaces"
    finally:
        if not dry_run:  # leave the session's cluster with the base, as other tests expect
            _apply(cp, str(DEPLOY), dry_run=False)
            back = _get(cp, "deployment", "berth", "-n", "berth-system")
            assert back is not None and "--client-ca" not in _container(back, "berth")["args"]
