"""The image: the deploy names the image `make image` builds (berth:<package version>), the kube-scheduler
beside it is the control plane the e2e tests pin, every container's requests fit its limits, and (marker
`image`, run by `make image` or with BERTH_IMAGE_TEST=1) the image builds from Debian's packages and serves
the demo with /readyz 200."""

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.model.quantity import to_decimal

ROOT = Path(__file__).resolve().parents[1]


def package_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def containers() -> dict[str, dict[str, Any]]:
    deployment = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_the_deploy_names_berth_at_the_package_version() -> None:
    assert containers()["berth"]["image"] == f"berth:{package_version()}"


def test_the_containerfile_labels_the_package_version() -> None:
    # scripts/image.sh passes VERSION from pyproject.toml; the default serves a plain `podman build .`.
    text = (ROOT / "Containerfile").read_text()
    default = re.search(r"^ARG VERSION=(\S+)$", text, re.M)
    assert default and default[1] == package_version()
    assert re.search(r"^USER 65532:65532$", text, re.M), "the runtime runs as the deploy's runAsUser"


def test_the_kube_scheduler_is_the_pinned_control_plane() -> None:
    go_mod = (ROOT / "tests" / "e2e" / "k8s" / "go.mod").read_text()
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", go_mod, re.M)
    assert pinned, "tests/e2e/k8s/go.mod pins k8s.io/kubernetes"
    assert containers()["kube-scheduler"]["image"] == f"registry.k8s.io/kube-scheduler:{pinned[1]}"


@pytest.mark.parametrize("name", ["berth", "kube-scheduler"])
def test_requests_fit_the_limits(name: str) -> None:
    resources = containers()[name]["resources"]
    for resource in ("cpu", "memory"):
        request, limit = resources["requests"][resource], resources["limits"][resource]
        assert to_decimal(request) <= to_decimal(limit), f"{name} {resource}: request {request} > limit {limit}"


@pytest.mark.image
@pytest.mark.skipif(os.environ.get("BERTH_IMAGE_TEST") != "1", reason="builds an image: make image")
def test_the_image_builds_from_debian_packages_and_serves_the_demo() -> None:
    run = subprocess.run([str(ROOT / "scripts" / "image.sh")], capture_output=True, text=True, timeout=1800)
    print(run.stderr)
    assert run.returncode == 0, run.stderr[-4000:]
    version = package_version()
    assert re.search(rf"built localhost/berth:{re.escape(version)}: \d+ MB, user 65532:65532", run.stderr)
    assert re.search(r" serve --demo: GET /readyz 200", run.stderr)
