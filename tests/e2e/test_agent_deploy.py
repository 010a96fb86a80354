"""deploy/components/agent renders with kustomize on top of deploy/ (as an overlay uses it), holds what the
agent needs and nothing more, and the real API server accepts every object (a server-side dry run, which
also compiles the admission policy's CEL)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.e2e import harness as h
from tests.e2e.test_helm import CHART, DEPLOY, by_key, kustomize, render


def _overlay(tmp_path: Path) -> Path:
    (tmp_path / "kustomization.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY, tmp_path)],
                "components": [os.path.relpath(DEPLOY / "components" / "agent", tmp_path)],
            }
        )
    )
    return tmp_path


def _one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def test_the_component_renders_the_agent_with_least_privilege(tmp_path: Path) -> None:
    objs = kustomize(_overlay(tmp_path))
    ds = _one(objs, "DaemonSet", "berth-agent")
    spec = ds["spec"]["template"]["spec"]
    assert ds["metadata"]["namespace"] == "berth-node" and spec["serviceAccountName"] == "berth-agent"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (agent,) = spec["containers"]
    assert agent["args"][0] == "agent" and agent["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["pod-resources"] == {
        "name": "pod-resources",
        "mountPath": "/var/lib/kubelet/pod-resources",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["pod-resources"]["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    assert agent["securityContext"]["readOnlyRootFilesystem"] and agent["securityContext"]["capabilities"] == {
        "drop": ["ALL"]
    }
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    role = _one(objs, "ClusterRole", "berth-agent")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    binding = _one(objs, "ClusterRoleBinding", "berth-agent")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "berth-agent", "namespace": "berth-node"}]
    ns = _one(objs, "Namespace", "berth-node")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    policy = _one(objs, "ValidatingAdmissionPolicy", "berth-agent-own-node")
    assert "berth-node:berth-agent" in policy["spec"]["matchConditions"][0]["expression"]
    # Berth's own objects are untouched by the component.
    assert _one(objs, "Namespace", "berth-system")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )


def test_the_api_server_accepts_the_component(cp: h.ControlPlane, tmp_path: Path) -> None:
    component = DEPLOY / "components" / "agent"
    cp.kubectl("apply", "-f", str(component / "namespace.yaml"))
    res = cp.kubectl("apply", "--dry-run=server", "-k", str(component), check=False)
    # A Component is not a Kustomization of its own: render it through the overlay instead.
    if res.returncode != 0:
        rendered = h.ControlPlane.kubectl(cp, "kustomize", str(_overlay(tmp_path))).stdout
        docs = [d for d in rendered.split("\n---\n") if "node-agent" in d]
        res = cp.kubectl("apply", "--dry-run=server", "-f", "-", input="\n---\n".join(docs), check=False)
    assert res.returncode == 0, res.stderr
    assert "daemonset.apps/berth-agent created (server dry run)" in res.stdout


def test_the_chart_renders_the_components_objects(tmp_path: Path) -> None:
    """agent.enabled renders deploy/components/agent's objects (files/agent holds them byte for byte), with
    the chart's image; off by default."""
    component = DEPLOY / "components" / "agent"
    for name in ("namespace.yaml", "rbac.yaml", "daemonset.yaml", "node-restriction.yaml"):
        assert (CHART / "files" / "agent" / name).read_bytes() == (component / name).read_bytes(), name
    agent_objs = [o for o in kustomize(_overlay(tmp_path)) if "node-agent" in str(o["metadata"].get("labels"))]
    chart = by_key(render("--set", "agent.enabled=true", "--set", "image.tag=9.9.9"))
    for key, want in by_key(agent_objs).items():
        got = chart[key]
        if key[0] == "DaemonSet":
            (container,) = got["spec"]["template"]["spec"]["containers"]
            assert container["image"].endswith(":9.9.9")
            container["image"] = "berth:0.1.0"
        assert got == want, key
    assert not [o for o in render() if o["kind"] == "DaemonSet"], "off by default"
