"""The `berth` command line as a person meets it: `--version`, finding the cluster as kubectl does, and
`berth explain` against a running demo (summary, --json, -f, TLS client options, a closed pipe)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import trustme
import yaml

from scheduler.cluster.kube import ClusterConfigError, load_configuration
from scheduler.explain_cli import summary
from tests.fakes.ports import free_port

BERTH = [sys.executable, "-m", "scheduler"]
NO_CLUSTER = {"PATH": os.environ.get("PATH", ""), "BERTH_NO_EXTENSIONS": os.environ.get("BERTH_NO_EXTENSIONS", "")}


def berth(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BERTH, *args], capture_output=True, text=True, timeout=60, env=env, input=stdin, check=False
    )


def test_version_is_the_package_version() -> None:
    out = berth("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"berth {version('berth')}"


# -- finding the cluster ---------------------------------------------------------------------------


def kubeconfig(path: Path, server: str | None = None, context: bool = True, user: bool = True) -> Path:
    """A kubeconfig holding any of: a cluster at `server`, a user, and a current context naming both."""
    doc: dict[str, object] = {"apiVersion": "v1", "kind": "Config"}
    if server:
        doc["clusters"] = [{"name": "c", "cluster": {"server": server}}]
    if user:
        doc["users"] = [{"name": "u", "user": {"token": "t0ken"}}]
    if context:
        doc["contexts"] = [{"name": "x", "context": {"cluster": "c", "user": "u"}}]
        doc["current-context"] = "x"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_kubeconfig_is_a_list_merged_in_order(tmp_path: Path) -> None:
    """$KUBECONFIG as kubectl reads it: several files, missing ones skipped, merged into one config."""
    a = kubeconfig(tmp_path / "a", server=None, context=True, user=True)
    b = kubeconfig(tmp_path / "b", server="http://127.0.0.1:6443", context=False, user=False)
    env = {"KUBECONFIG": os.pathsep.join([str(tmp_path / "missing"), str(a), str(b)]), "HOME": str(tmp_path)}
    cfg = load_configuration(None, env)
    assert cfg.host == "http://127.0.0.1:6443"
    assert list(cfg.api_key.values()) == ["Bearer t0ken"], "the user from the first file"


def test_home_kubeconfig_when_kubeconfig_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    kubeconfig(tmp_path / ".kube" / "config", server="http://127.0.0.1:7443")
    assert load_configuration(None, {"HOME": str(tmp_path)}).host == "http://127.0.0.1:7443"


def test_nothing_found_names_every_path_tried(tmp_path: Path) -> None:
    env = {"KUBECONFIG": f"{tmp_path}/one{os.pathsep}{tmp_path}/two"}  # and no KUBERNETES_SERVICE_HOST
    with pytest.raises(ClusterConfigError) as exc:
        load_configuration(None, env)
    message = str(exc.value)
    assert f"{tmp_path}/one" in message and f"{tmp_path}/two" in message and "$KUBECONFIG" in message
    assert "in-cluster" in message and "--kubeconfig" in message


def test_a_broken_kubeconfig_is_named(tmp_path: Path) -> None:
    bad = kubeconfig(tmp_path / "bad", server="http://127.0.0.1:1", context=False)
    with pytest.raises(ClusterConfigError, match=str(bad)):
        load_configuration(str(bad))
    with pytest.raises(ClusterConfigError, match="no such file"):
        load_configuration(str(tmp_path / "absent"))


def test_serve_without_a_cluster_says_where_it_looked(tmp_path: Path) -> None:
    out = berth("serve", "--port", str(free_port()), env={**NO_CLUSTER, "HOME": str(tmp_path)})
    assert out.returncode == 2
    assert "berth: cannot find the cluster" in out.stderr
    assert f"{tmp_path}/.kube/config" in out.stderr and "in-cluster" in out.stderr
    assert "Traceback" not in out.stderr


# -- berth explain ----------------------------------------------------------------------------------

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "trainer", "namespace": "ml-research", "uid": "u-trainer"},
    "spec": {
        "schedulerName": "berth-scheduler",
        "containers": [
            {
                "name": "main",
                "image": "trainer:1",
                "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"nvidia.com/gpu": "2"}},
            }
        ],
    },
}


def start(argv: list[str], url: str, context: object = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1, context=context) as r:  # type: ignore[arg-type]
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{url} not ready")


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """A demo big enough that `--json` overflows a pipe's buffer (the closed-pipe test needs that)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([*BERTH, "serve", "--demo", "--demo-nodes", "600", "--port", str(port)], url)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def pod_file(tmp_path: Path) -> Path:
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(POD))
    return path


def test_explain_file_prints_a_summary_first(demo: str, pod_file: Path) -> None:
    out = berth("explain", "--url", demo, "-f", str(pod_file))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("pod ml-research/trainer  team ml-research")
    assert lines[1].startswith("winner: aks-a100"), lines[:3]  # ml-research's own pools are a100, a100-pcie
    assert lines[2] == "top 5:"
    top = lines[3:8]
    assert all("score" in line and "gpu_packing=" in line and "topology=" in line for line in top), top
    why = lines.index(next(line for line in lines if line.startswith("why the other")))
    counts = [int(line.split()[0]) for line in lines[why + 1 :]]
    assert counts == sorted(counts, reverse=True) and counts, "reasons grouped, most common first"
    assert any("is not open to team ml-research" in line for line in lines[why + 1 :])
    fitting = int(lines[1].split(";")[1].split()[0])
    assert fitting + sum(counts) == 600, "every node is either a fit or counted under a reason"


def test_explain_json_is_the_whole_document(demo: str, pod_file: Path) -> None:
    out = berth("explain", "--url", demo, "-f", "-", "--json", stdin=pod_file.read_text())
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["pod"] == "ml-research/trainer" and len(doc["nodes"]) == 600
    assert set(doc) >= {"request", "team", "borrowing", "quota", "weights", "nodes", "boundTo"}


def test_explain_by_name_of_a_pod_never_seen_says_how_to_send_it(demo: str) -> None:
    out = berth("explain", "--url", demo, "-n", "ml-research", "ghost")
    assert out.returncode == 2
    assert "ml-research/ghost not found" in out.stderr
    assert f"berth explain --url {demo} -f pod.yaml" in out.stderr
    assert "kubectl get pod -n ml-research ghost -o yaml | berth explain" in out.stderr


def test_explain_by_name_after_filter_saw_it(demo: str) -> None:
    pod = {**POD, "metadata": {**POD["metadata"], "name": "seen", "uid": "u-seen"}}  # type: ignore[dict-item]
    body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": []}).encode()
    req = urllib.request.Request(demo + "/scheduler/filter", data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()
    out = berth("explain", "--url", demo, "-n", "ml-research", "seen", "--nodes", "nope-1,nope-2")
    assert out.returncode == 0, out.stderr
    assert "winner: none; no node of 2 fits" in out.stdout
    assert "     2  berth: node is not in Berth's cache yet" in out.stdout


def test_explain_exits_quietly_on_a_closed_pipe(demo: str, pod_file: Path) -> None:
    cmd = f"set -o pipefail; {' '.join(BERTH)} explain --url {demo} -f {pod_file} --json | head -1"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout == "{\n"
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_explain_usage_errors(demo: str, pod_file: Path) -> None:
    both = berth("explain", "--url", demo, "-f", str(pod_file), "trainer")
    assert both.returncode == 2 and "not both" in both.stderr
    half = berth("explain", "--url", demo, "-f", str(pod_file), "--cert", "c.pem")
    assert half.returncode == 2 and "--cert and --key go together" in half.stderr
    down = berth("explain", "--url", f"http://127.0.0.1:{free_port()}", "-f", str(pod_file))
    assert down.returncode == 2 and "cannot reach" in down.stderr and "Traceback" not in down.stderr


def test_explain_over_mtls(tmp_path: Path, pod_file: Path) -> None:
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("explain-client")
    files = {name: tmp_path / name for name in ("ca.pem", "tls.crt", "tls.key", "client.crt", "client.key")}
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    server.cert_chain_pems[0].write_to_path(str(files["tls.crt"]))
    server.private_key_pem.write_to_path(str(files["tls.key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client.crt"]))
    client.private_key_pem.write_to_path(str(files["client.key"]))
    port, tls_port = free_port(), free_port()
    argv = [*BERTH, "serve", "--demo", "--demo-nodes", "40", "--port", str(port), "--tls-port", str(tls_port)]
    argv += ["--tls-cert", str(files["tls.crt"]), "--tls-key", str(files["tls.key"])]
    argv += ["--client-ca", str(files["ca.pem"])]
    proc = start(argv, f"http://127.0.0.1:{port}")  # the plain port serves health only
    url = f"https://127.0.0.1:{tls_port}"
    try:
        ok = berth(
            "explain", "--url", url, "-f", str(pod_file), "--cacert", str(files["ca.pem"]),
            "--cert", str(files["client.crt"]), "--key", str(files["client.key"]),
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("pod ml-research/trainer")
        no_cert = berth("explain", "--url", url, "-f", str(pod_file), "--cacert", str(files["ca.pem"]))
        assert no_cert.returncode == 2 and "cannot reach" in no_cert.stderr
        untrusted = berth("explain", "--url", url, "-f", str(pod_file))
        assert untrusted.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_summary_of_a_quota_refusal_shows_the_quota_sentence_once() -> None:
    doc = {
        "pod": "t/p",
        "request": {"cpu": 1500, "memory": 3 * 2**30, "nvidia.com/gpu": 4},
        "team": "t",
        "borrowing": False,
        "quota": "team t: nvidia.com/gpu 8 used + 4 requested > max 8",
        "boundTo": None,
        "nodes": [
            {"node": f"n{i}", "fits": False, "reason": "berth: team t: nvidia.com/gpu 8 used + 4 requested > max 8"}
            for i in range(3)
        ],
    }

    out = io.StringIO()
    summary(doc, out)
    assert out.getvalue().splitlines() == [
        "pod t/p  team t  request cpu=1500m, memory=3Gi, nvidia.com/gpu=4",
        "quota: team t: nvidia.com/gpu 8 used + 4 requested > max 8",
        "winner: none; no node of 3 fits",
        "why the other 3 do not fit:",
        "       3  berth: team t: nvidia.com/gpu 8 used + 4 requested > max 8",
    ]


def test_the_readme_explain_command_works_on_the_demo(demo: str) -> None:
    """README's "The demo cluster": the heredoc pod it sends, and its claim that a pod of no team fits nowhere."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("berth explain -f - <<'EOF'\n") + len("berth explain -f - <<'EOF'\n")
    pod = readme[start : readme.index("\nEOF\n", start)]
    out = berth("explain", "--url", demo, "-f", "-", stdin=pod)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith("winner: aks-a100"), out.stdout[:500]
    nobody = berth(
        "explain", "--url", demo, "-f", "-", stdin=pod.replace("namespace: ml-research", "namespace: default")
    )
    assert "winner: none" in nobody.stdout and "pods of no team" in nobody.stdout, nobody.stdout[:500]
