"""The Helm chart deploy/helm/berth: `helm lint`, `helm template` against `kubectl kustomize` of the shipped
manifests, values.schema.json, and install / upgrade / uninstall on a real kube-apiserver.

helm is built from the Go module proxy with the control plane (tests/e2e/k8s/build.sh, pinned in
tests/e2e/k8s/helm/go.mod). The control plane has no kube-controller-manager and no kubelet, so the Deployment
never gets pods: the bar for install is that the API server accepts every object by server-side apply and holds
it, not a rollout; beyond that, the pair runs here as processes with the chart's ServiceAccounts and ConfigMap
and binds a pod through Berth.

How the rendered chart is compared with kustomize's output (_normalize): objects are matched by (kind,
namespace, name) and then compared whole, after removing only what says who installed an object rather than
what runs:
- Helm's own labels (helm.sh/chart, app.kubernetes.io/managed-by, /instance, /version);
- the pod template's checksum/config annotation (the chart rolls the pods when the ConfigMap changes; kustomize
  leaves that to `kubectl rollout restart`);
- the ConfigMap's files are compared as parsed YAML, since the chart writes them from values (no comments,
  another key order);
- lists of named entries (containers, volumes, volumeMounts, ports, env) are compared by name: their order carries
  no meaning, and kustomize's strategic-merge patches (overlays/tls) put the overlay's entries first;
- app.kubernetes.io/part-of: the base's `labels:` puts it on the base's objects only, not on what the monitoring
  component adds; the chart puts it on every object (the comparison adds it to the component's objects);
- the Namespace: the chart installs into the release namespace, which must exist before Helm stores the release
  there, so it is applied from deploy/base/namespace.yaml first (as deploy/README.md says) and is not the chart's.
"""

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest
import yaml

from scheduler import config as berth_config
from scheduler.config import load_config
from tests.e2e import harness as h
from tests.e2e import objects as e2e

CHART = h.ROOT / "deploy" / "helm" / "berth"
DEPLOY = h.ROOT / "deploy"
NS = "berth-system"
HELM_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
)
EXAMPLE_TEAMS = [d for d in yaml.safe_load_all((DEPLOY / "examples" / "teamquotas.yaml").read_text()) if d]
Key = tuple[str, str, str]


def _helm_bin() -> Path:
    path = h.k8s_bin() / "helm"
    if not path.exists():
        raise RuntimeError(f"helm not built in {path.parent}: run `make k8s`")
    return path


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Helm's cache, config and data stay out of the home directory; the kubeconfig is the test's.
    home = Path(os.environ.get("BERTH_HELM_HOME", "/tmp/berth-helm-home"))
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(kubeconfig or "/nonexistent"),
    }
    res = subprocess.run([str(_helm_bin()), *args], capture_output=True, text=True, timeout=180, env=env)
    if check and res.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({res.returncode}): {res.stderr or res.stdout}")
    return res


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(*args: str) -> list[dict[str, Any]]:
    return _docs(helm("template", "berth", str(CHART), "-n", NS, "--include-crds", *args).stdout)


def kustomize(path: Path) -> list[dict[str, Any]]:
    res = subprocess.run(
        [str(h.k8s_bin() / "kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=True
    )
    return _docs(res.stdout)


def key(obj: dict[str, Any]) -> Key:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _by_name(value: Any) -> Any:
    """Lists whose entries all carry a name, as a mapping by name, all the way down."""
    if isinstance(value, dict):
        return {k: _by_name(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and "name" in v for v in value):
            return {v["name"]: _by_name(v) for v in value}
        return [_by_name(v) for v in value]
    return value


def _normalize(obj: dict[str, Any]) -> dict[str, Any]:
    """What the module docstring lists, and nothing else."""
    obj = json.loads(json.dumps(obj))
    if obj["kind"] in ("Deployment", "Service"):
        obj["spec"] = _by_name(obj["spec"])
    labels = obj["metadata"].get("labels", {})
    for label in HELM_LABELS:
        labels.pop(label, None)
    if obj["kind"] == "Deployment":
        obj["spec"]["template"]["metadata"]["annotations"].pop("checksum/config", None)
    if obj["kind"] == "ConfigMap":
        obj["data"] = {k: yaml.safe_load(v) for k, v in obj["data"].items()}
    return obj


def by_key(objs: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {key(o): _normalize(o) for o in objs}


def _compare(chart: list[dict[str, Any]], kust: list[dict[str, Any]], part_of: bool = False) -> None:
    """part_of: add app.kubernetes.io/part-of where kustomize left it off (objects of a component)."""
    if part_of:
        for obj in kust:
            obj["metadata"].setdefault("labels", {}).setdefault("app.kubernetes.io/part-of", "berth")
    want = {k: v for k, v in by_key(kust).items() if k[0] != "Namespace"}
    got = by_key(chart)
    assert set(got) == set(want), f"only in chart: {set(got) - set(want)}; only in kustomize: {set(want) - set(got)}"
    for k in want:
        assert got[k] == want[k], k


def _config(objs: list[dict[str, Any]], name: str) -> Any:
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "berth-config")
    return cm["data"][name]


# -- lint, render, schema: no cluster ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "tls.enabled=true", "--set", "serviceMonitor.enabled=true"]],
    ids=["defaults", "tls+monitoring"],
)
def test_lint_is_clean(values: list[str]) -> None:
    res = helm("lint", "--strict", str(CHART), "-n", NS, *values)
    assert "1 chart(s) linted, 0 chart(s) failed" in res.stdout, res.stdout
    assert "[WARNING]" not in res.stdout and "[ERROR]" not in res.stdout, res.stdout


def test_defaults_render_what_kustomize_renders() -> None:
    chart, kust = render(), kustomize(DEPLOY)
    _compare(chart, kust)
    assert not [o for o in chart if o["kind"] == "Namespace"], "the release namespace is not the chart's"
    # Not normalized away: the image, the one the kustomize base names (the package version as the tag).
    deploy = next(o for o in chart if o["kind"] == "Deployment")
    berth = next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "berth")
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert berth["image"].endswith(f":{version}"), berth["image"]
    pyproject = (h.ROOT / "pyproject.toml").read_text()
    assert f'\nversion = "{version}"\n' in pyproject, "Chart.yaml appVersion must be the package version"


def test_tls_renders_what_the_tls_overlay_renders() -> None:
    _compare(render("--set", "tls.enabled=true"), kustomize(DEPLOY / "overlays" / "tls"))


def test_service_monitor_renders_what_the_monitoring_component_adds(tmp_path: Path) -> None:
    # An overlay of one's own, as deploy/components/monitoring/kustomization.yaml says to write it.
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, tmp_path)],
        "components": [os.path.relpath(DEPLOY / "components" / "monitoring", tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    chart = render("--set", "serviceMonitor.enabled=true")
    _compare(chart, kustomize(tmp_path), part_of=True)
    assert ("ServiceMonitor", NS, "berth") in by_key(chart)
    assert not [o for o in render() if o["kind"] == "ServiceMonitor"], "off by default"


def test_crds_and_rules_are_the_ones_in_deploy() -> None:
    """The chart's crds/ holds every CRD deploy/crds/kustomization.yaml lists, byte for byte, and its ClusterRole's
    rules come from deploy/base/rbac/berth.yaml (files/rbac-berth.yaml): one source for both installs."""
    rbac = DEPLOY / "base" / "rbac" / "berth.yaml"
    assert (CHART / "files" / "rbac-berth.yaml").read_bytes() == rbac.read_bytes()
    listed = yaml.safe_load((DEPLOY / "crds" / "kustomization.yaml").read_text())["resources"]
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(listed)
    for name in listed:
        assert (CHART / "crds" / name).read_bytes() == (DEPLOY / "crds" / name).read_bytes(), name


def test_values_reach_berth_yaml_and_the_scheduler(tmp_path: Path) -> None:
    objs = render(
        "--set",
        "replicas=3",
        "--set",
        "scheduler.extender.weight=9",
        "--set",
        "config.scoring.weights.gpu_packing=7",
        "--set",
        "config.scoring.cpu_strategy=least_allocated",
        "--set",
        "resources.limits.memory=3Gi",
    )
    # berth.yaml as Berth itself loads it (every key checked).
    path = tmp_path / "berth.yaml"
    path.write_text(_config(objs, "berth.yaml"))
    cfg = load_config(path)
    assert cfg.scoring.weights.gpu_packing == 7 and cfg.scoring.cpu_strategy == "least_allocated"
    assert (cfg.server.host, cfg.server.port, cfg.server.health_port) == ("127.0.0.1", 8888, 8889)
    sched = yaml.safe_load(_config(objs, "kube-scheduler-config.yaml"))
    assert sched["extenders"][0]["weight"] == 9
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    assert deploy["spec"]["replicas"] == 3
    berth = next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "berth")
    assert berth["resources"]["limits"]["memory"] == "3Gi"
    # The defaults load too.
    path.write_text(_config(render(), "berth.yaml"))
    assert load_config(path).scoring.cpu_strategy == "most_allocated"


def test_config_change_rolls_the_pods() -> None:
    def checksum(*args: str) -> str:
        deploy = next(o for o in render(*args) if o["kind"] == "Deployment")
        return str(deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum("--set", "replicas=3")
    assert checksum() != checksum("--set", "config.scoring.weights.load=2")


def test_teams_become_teamquotas(tmp_path: Path) -> None:
    values = tmp_path / "teams.yaml"
    values.write_text(
        yaml.safe_dump({"teams": [{"name": t["metadata"]["name"], "spec": t["spec"]} for t in EXAMPLE_TEAMS]})
    )
    got = {o["metadata"]["name"]: o for o in render("-f", str(values)) if o["kind"] == "TeamQuota"}
    assert {n: o["spec"] for n, o in got.items()} == {t["metadata"]["name"]: t["spec"] for t in EXAMPLE_TEAMS}
    assert all(o["apiVersion"] == "berth.dev/v1alpha1" for o in got.values())
    assert not [o for o in render() if o["kind"] == "TeamQuota"], "no teams by default"


def test_cert_manager_certificates() -> None:
    objs = render(
        "--set",
        "tls.enabled=true",
        "--set",
        "tls.certManager.enabled=true",
        "--set",
        "tls.certManager.issuerRef.name=berth-ca",
    )
    certs = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Certificate"}
    assert set(certs) == {"berth-server", "berth-client"}
    assert certs["berth-server"]["secretName"] == "berth-tls" and "127.0.0.1" in certs["berth-server"]["ipAddresses"]
    assert certs["berth-client"]["secretName"] == "berth-tls-client"
    assert certs["berth-client"]["commonName"] == "berth-scheduler"
    assert {c["issuerRef"]["name"] for c in certs.values()} == {"berth-ca"}
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    client = volumes["tls-client"]["secret"]
    assert client["secretName"] == "berth-tls-client"
    # cert-manager writes tls.crt/tls.key; the scheduler's config reads client.crt/client.key.
    assert {i["key"]: i["path"] for i in client["items"]} == {
        "ca.crt": "ca.crt",
        "tls.crt": "client.crt",
        "tls.key": "client.key",
    }
    assert not [o for o in render("--set", "tls.enabled=true") if o["kind"] == "Certificate"], "existing Secret: none"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "replicas=0"], "at '/replicas': minimum"),
        (["--set", "replica=3"], "additional properties 'replica' not allowed"),  # a typo is refused, not ignored
        (["--set", "scheduler.extender.weight=0"], "at '/scheduler/extender/weight': minimum"),
        (["--set-string", "scheduler.extender.weight=5"], "at '/scheduler/extender/weight': got string"),
        (["--set", "config.scoring.cpu_strategy=packed"], "at '/config/scoring/cpu_strategy'"),
        (["--set", "config.scoring.weights.gpu_packing=-1"], "at '/config/scoring/weights/gpu_packing'"),
        (
            ["--set", "tls.enabled=true", "--set", "tls.certManager.enabled=true"],
            "at '/tls/certManager/issuerRef/name'",
        ),
        (
            ["--set", "tls.certManager.enabled=true", "--set", "tls.certManager.issuerRef.name=ca"],
            "tls.certManager.enabled needs tls.enabled: true",
        ),
        (["--set-json", 'teams=[{"name":"Bad_Name","spec":{"namespaces":["a"]}}]'], "at '/teams/0/name'"),
        (["--set-json", 'teams=[{"name":"a","spec":{"cohort":"c"}}]'], "missing property 'namespaceSelector'"),
        (["--set", "config.scoring.weight.load=2"], "additional properties 'weight' not allowed"),
        (["--set", "config.server.health_port=0"], "at '/config/server/health_port': minimum"),
        (["--set-string", "agent.enabled=true"], "at '/agent/enabled': got string"),
        (["--set", "serviceMonitor.interval=often"], "at '/serviceMonitor/interval'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_bad_values_are_refused(args: list[str], says: str) -> None:
    res = helm("template", "berth", str(CHART), "-n", NS, *args, check=False)
    assert res.returncode != 0, res.stdout[:500]
    assert "Error:" in res.stderr, res.stderr
    assert says in res.stderr[res.stderr.index("Error:") :], res.stderr


def _key_schema(kind: Any, path: str) -> dict[str, Any]:
    """One berth.yaml key as scheduler/config.py reads it: its type, choices and range."""
    if isinstance(kind, type) and is_dataclass(kind):
        hints = get_type_hints(kind)
        props = {f.name: _key_schema(hints[f.name], f"{path}.{f.name}" if path else f.name) for f in fields(kind)}
        return {"type": "object", "additionalProperties": False, "properties": props}
    if get_origin(kind) is list:
        (item,) = get_args(kind)
        return {"type": "array", "items": {**_key_schema(item, path), **({"minLength": 1} if item is str else {})}}
    out: dict[str, Any] = {"type": {int: "integer", float: "number", str: "string", bool: "boolean"}[kind]}
    if path in berth_config._CHOICES:
        out = {"enum": list(berth_config._CHOICES[path])}
    if kind in (int, float):
        lo, hi = berth_config._RANGES.get(path, (0, float("inf")))
        out["minimum"] = lo
        if hi != float("inf"):
            out["maximum"] = hi
    return out


def config_schema() -> dict[str, Any]:
    """values.schema.json's `config`: berth.yaml's keys, and the chart's needs on top (the ports it wires)."""
    schema = _key_schema(berth_config.Config, "")
    schema["description"] = "berth.yaml as Berth reads it (scheduler/config.py); Berth checks it again at start."
    schema["required"] = ["server"]
    server = schema["properties"]["server"]
    server["required"] = ["host", "port", "health_host", "health_port"]
    for port in ("port", "tls_port", "health_port"):  # Berth's 0 means "no listener"; the chart needs each one
        server["properties"][port]["minimum"] = 1
    return schema


SCHEMA = CHART / "values.schema.json"
REGENERATE = ".venv/bin/python -m tests.e2e.test_helm"


def test_schema_knows_every_berth_yaml_key() -> None:
    """values.schema.json's config section is berth.yaml's keys, types, choices and ranges (scheduler/config.py),
    so a typo in values fails the install instead of the pod's start, and a key Berth gains is one the chart
    accepts."""
    got = json.loads(SCHEMA.read_text())["properties"]["config"]
    assert got == config_schema(), f"values.schema.json's config is not scheduler/config.py's: run {REGENERATE}"


def _write_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    schema["properties"]["config"] = config_schema()
    SCHEMA.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")


# -- install, upgrade, uninstall on the local kube-apiserver -----------------------------------------------------


@pytest.fixture(scope="module")
def plane() -> Iterator[h.ControlPlane]:
    """A control plane of its own: the session's already holds deploy/'s objects, applied by kubectl, which Helm
    rightly refuses to adopt, and uninstalling would take from the other tests what they run on."""
    cp = h.ControlPlane().start()
    yield cp
    cp.stop()
    h.cleanup(cp.dir)


def _get(cp: h.ControlPlane, obj: dict[str, Any]) -> dict[str, Any] | None:
    group = obj["apiVersion"].rpartition("/")[0]
    resource = obj["kind"].lower() + (f".{group}" if group else "")
    _, ns, name = key(obj)
    ns_args = ["-n", ns] if ns else []
    res = cp.kubectl("get", resource, name, *ns_args, "-o", "json", "--ignore-not-found", "--show-managed-fields")
    return json.loads(res.stdout) if res.stdout.strip() else None


def _manifest(cp: h.ControlPlane) -> list[dict[str, Any]]:
    return _docs(helm("get", "manifest", "berth", "-n", NS, kubeconfig=cp.admin_kubeconfig).stdout)


def _applied_by_helm(live: dict[str, Any]) -> bool:
    return any(m.get("operation") == "Apply" and m.get("manager") == "helm" for m in live["metadata"]["managedFields"])


def test_install_upgrade_uninstall(plane: h.ControlPlane, tmp_path: Path) -> None:
    kc = plane.admin_kubeconfig
    plane.kubectl("apply", "--server-side", "-f", str(DEPLOY / "base" / "namespace.yaml"))
    teams = [{"name": t["metadata"]["name"], "spec": t["spec"]} for t in EXAMPLE_TEAMS]
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({"teams": teams}))
    helm("install", "berth", str(CHART), "-n", NS, "--server-side=true", "-f", str(first), kubeconfig=kc)

    # Every object of the release is there, written by server-side apply; the CRD from crds/ too.
    installed = _manifest(plane)
    assert {key(o) for o in installed} >= {k for k in by_key(render()) if k[0] != "CustomResourceDefinition"}
    for obj in installed:
        live = _get(plane, obj)
        assert live is not None, f"{key(obj)} not created"
        assert _applied_by_helm(live), (key(obj), live["metadata"]["managedFields"])
        assert live["metadata"]["labels"]["app.kubernetes.io/part-of"] == "berth", key(obj)
    crd = json.loads(plane.kubectl("get", "crd", "teamquotas.berth.dev", "-o", "json").stdout)
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    assert {key(o)[2] for o in installed if o["kind"] == "TeamQuota"} == {t["name"] for t in teams}
    deploy = next(o for o in installed if o["kind"] == "Deployment")
    before = _get(plane, deploy)
    assert before is not None and before["spec"]["replicas"] == 2
    assert before["spec"]["progressDeadlineSeconds"] == 600, "defaulted by the API server"

    # Upgrade: more replicas, another extender weight, TLS on, one team fewer.
    second = tmp_path / "second.yaml"
    second.write_text(
        yaml.safe_dump(
            {"replicas": 3, "scheduler": {"extender": {"weight": 7}}, "tls": {"enabled": True}, "teams": teams[:2]}
        )
    )
    helm("upgrade", "berth", str(CHART), "-n", NS, "--server-side=true", "-f", str(second), kubeconfig=kc)
    after = _get(plane, deploy)
    assert after is not None and after["spec"]["replicas"] == 3
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    old_sum = before["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert after["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != old_sum
    cm = json.loads(plane.kubectl("get", "configmap", "berth-config", "-n", NS, "-o", "json").stdout)
    ext = yaml.safe_load(cm["data"]["kube-scheduler-config.yaml"])["extenders"][0]
    assert ext["weight"] == 7 and ext["urlPrefix"] == "https://127.0.0.1:8443/scheduler"
    svc = json.loads(plane.kubectl("get", "service", "berth", "-n", NS, "-o", "json").stdout)
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"health": 8889, "https": 8443}
    dropped = next(o for o in installed if o["kind"] == "TeamQuota" and key(o)[2] == teams[2]["name"])
    assert _get(plane, dropped) is None, "a team removed from values is removed from the cluster"
    status = json.loads(helm("status", "berth", "-n", NS, "-o", "json", kubeconfig=kc).stdout)
    assert (status["version"], status["info"]["status"]) == (2, "deployed")

    # Uninstall: every object of the release is gone; the CRD stays (Helm never deletes crds/), and so does
    # the namespace, which was not the chart's.
    upgraded = _manifest(plane)
    helm("uninstall", "berth", "-n", NS, "--wait", kubeconfig=kc)
    left = [key(o) for o in upgraded if _get(plane, o) is not None]
    assert not left, left
    assert helm("list", "-n", NS, "-q", kubeconfig=kc).stdout.strip() == ""
    assert plane.kubectl("get", "crd", "teamquotas.berth.dev", check=False).returncode == 0
    assert plane.kubectl("get", "namespace", NS, check=False).returncode == 0


def _holder(cp: h.ControlPlane, lease: str) -> str:
    res = cp.kubectl("get", "lease", lease, "-n", NS, "-o", "json", check=False)
    return str(json.loads(res.stdout)["spec"].get("holderIdentity", "")) if res.returncode == 0 else ""


def _identity(cp: h.ControlPlane, account: str, where: Path) -> Path:
    """A kubeconfig with a token of the chart's ServiceAccount: what the pod mounts at the in-cluster path."""
    token = cp.kubectl("create", "token", account, "-n", NS, "--duration=1h").stdout.strip()
    return cp.write_kubeconfig(where / f"{account}.kubeconfig", token)


def test_the_pair_runs_on_what_the_chart_installed(plane: h.ControlPlane, tmp_path: Path) -> None:
    """Without kubelets the Deployment has no pods, so the pair runs here as processes, each with the chart's
    ServiceAccount and ConfigMap: Berth becomes ready and takes its Lease, kube-scheduler takes its own, and a
    pod of berth-scheduler is bound through Berth. The only changes are the ones a pod makes implicitly: free
    ports (set as values) and a kubeconfig where the pod has its in-cluster token."""
    plane.kubectl("apply", "--server-side", "-f", str(DEPLOY / "base" / "namespace.yaml"))
    port, health = h.free_port(), h.free_port()
    ports = ["--set", f"config.server.port={port}", "--set", f"config.server.health_port={health}"]
    helm("install", "berth", str(CHART), "-n", NS, *ports, kubeconfig=plane.admin_kubeconfig)
    procs: list[h.Proc] = []
    try:
        data = json.loads(plane.kubectl("get", "configmap", "berth-config", "-n", NS, "-o", "json").stdout)["data"]
        (tmp_path / "berth.yaml").write_text(data["berth.yaml"])
        sched = yaml.safe_load(data["kube-scheduler-config.yaml"])
        assert sched["extenders"][0]["urlPrefix"] == f"http://127.0.0.1:{port}/scheduler"
        sched["clientConnection"]["kubeconfig"] = str(_identity(plane, "berth-scheduler", tmp_path))
        (tmp_path / "kube-scheduler.yaml").write_text(yaml.safe_dump(sched))

        env = {"POD_NAME": "berth-helm-0", "POD_NAMESPACE": NS}
        extra = ["--config", str(tmp_path / "berth.yaml")]
        berth = h.start_berth(plane, _identity(plane, "berth", tmp_path), port, "berth-helm", extra, env=env)
        procs.append(berth)
        h.wait_ready(f"http://127.0.0.1:{health}", berth)
        h.wait_until(lambda: _holder(plane, "berth").startswith("berth-helm-0"), 30, "Berth's Lease")
        procs.append(h.start_scheduler(plane, "kube-scheduler-helm", tmp_path / "kube-scheduler.yaml"))
        h.wait_until(lambda: _holder(plane, "berth-scheduler"), 60, "kube-scheduler's Lease")

        # Unmatched pods run in the shared pool (config.quotas.shared_pools: cpu-general).
        plane.apply([e2e.node("helm-n1", "helm", pool="cpu-general")])
        plane.kubectl("create", "-n", "default", "-f", "-", input=json.dumps(e2e.pod("helm-p1", "helm")))

        def bound() -> str:
            got = json.loads(plane.kubectl("get", "pod", "helm-p1", "-n", "default", "-o", "json").stdout)
            return str(got["spec"].get("nodeName", ""))

        assert h.wait_until(bound, 60, "helm-p1 bound") == "helm-n1"
    finally:
        for proc in procs:
            proc.stop()
        plane.kubectl("delete", "pod", "helm-p1", "-n", "default", "--force", "--grace-period=0", check=False)
        plane.kubectl("delete", "node", "helm-n1", check=False)
        helm("uninstall", "berth", "-n", NS, "--wait", kubeconfig=plane.admin_kubeconfig)


if __name__ == "__main__":  # regenerate values.schema.json's config section from scheduler/config.py
    _write_schema()
