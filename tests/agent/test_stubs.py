"""The checked-in PodResources stubs are what grpcio-tools makes of the checked-in proto (`make
podresources-stubs`), and the proto below its provenance header is k8s.io/kubelet's, where the Go module
cache has it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
V1 = "scheduler/agent/podresources/v1"
KUBELET = Path.home() / "go" / "pkg" / "mod" / "k8s.io" / "kubelet@v0.36.3" / "pkg" / "apis" / "podresources" / "v1"


def test_the_stubs_are_regenerated_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    monkeypatch.chdir(ROOT)
    out = str(tmp_path)
    args = ["protoc", "-I", ".", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main([*args, f"{V1}/api.proto"]) == 0
    for name in ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"):
        assert (tmp_path / V1 / name).read_bytes() == (ROOT / V1 / name).read_bytes(), name


def test_the_proto_is_the_kubelets() -> None:
    if not (KUBELET / "api.proto").exists():
        pytest.skip("k8s.io/kubelet@v0.36.3 is not in the Go module cache")
    ours = (ROOT / V1 / "api.proto").read_text()
    assert ours.endswith((KUBELET / "api.proto").read_text())
