"""A real control plane on loopback: etcd, kube-apiserver, kube-scheduler(s) and Berth as processes.

Used by the end-to-end fixtures, `make cluster` and `make bench-e2e`. Binaries come from
tests/e2e/k8s/build.sh (BERTH_K8S_BIN); nothing here is mocked.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "tests" / "e2e" / "k8s"


def k8s_bin() -> Path:
    env = os.environ.get("BERTH_K8S_BIN")
    if env:
        return Path(env)
    version = next(
        line.split()[1]
        for line in (K8S_DIR / "go.mod").read_text().splitlines()
        if line.strip().startswith("k8s.io/kubernetes v")
    )
    return Path.home() / ".cache" / "berth" / f"k8s-{version}"


def wait_until(check: Any, timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the thing we wait for may fail until it is up
            last = exc
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


class Proc:
    """A child process with its output in a log file, stopped (and reaped) on exit."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> "Proc":
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = 15, timeout: float = 10) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait(5)
        self.popen = None

    def kill(self) -> None:
        self.stop(sig=9)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# The upstream gang API (alpha in 1.36: Workload and PodGroup, pods' spec.schedulingGroup), on in the tests
# unless BERTH_E2E_WORKLOAD_API=0: with it the API server admits pods measurably slower (the 1,000-node gang
# benchmark, loaded 2-core machine: p50 11 s with it, 3.2 s without), so the benchmarks in loadtests/ start
# their control planes with workload_api=False.
WORKLOAD_API = os.environ.get("BERTH_E2E_WORKLOAD_API", "1") != "0"
WORKLOAD_API_FLAGS = [
    "--feature-gates=GenericWorkload=true,TopologyAwareWorkloadScheduling=true",
    "--runtime-config=scheduling.k8s.io/v1alpha2=true",
]


class ControlPlane:
    """etcd + kube-apiserver, with an admin token and kubeconfigs for other identities."""

    ADMIN_TOKEN = "berth-e2e-admin-token"

    def __init__(
        self, workdir: Path | None = None, apiserver_flags: list[str] | None = None, workload_api: bool = WORKLOAD_API
    ) -> None:
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="berth-e2e-"))
        self.workload_api_flags = WORKLOAD_API_FLAGS if workload_api else []
        # Extra kube-apiserver flags, after the defaults (a repeated flag's last value wins), e.g. a short
        # --etcd-compaction-interval for a test of expired watches.
        self.apiserver_flags = list(apiserver_flags or [])
        self.bin = k8s_bin()
        self.etcd_port = free_port()
        self.peer_port = free_port()
        self.api_port = free_port()
        self.etcd: Proc | None = None
        self.apiserver: Proc | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def start(self) -> "ControlPlane":
        missing = [b for b in ("etcd", "kube-apiserver", "kube-scheduler", "kubectl") if not (self.bin / b).exists()]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not built in {self.bin}: run `make k8s`")
        (self.dir / "certs").mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "genrsa", "-out", str(self.dir / "sa.key"), "2048"], check=True, capture_output=True)
        (self.dir / "tokens.csv").write_text(f'{self.ADMIN_TOKEN},admin,admin,"system:masters"\n')
        self.start_etcd()
        self.start_apiserver()
        self.write_kubeconfig(self.admin_kubeconfig, self.ADMIN_TOKEN)
        return self

    def start_etcd(self) -> None:
        e = f"http://127.0.0.1:{self.etcd_port}"
        p = f"http://127.0.0.1:{self.peer_port}"
        self.etcd = Proc(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=e2e",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={e}",
                f"--advertise-client-urls={e}",
                f"--listen-peer-urls={p}",
                f"--initial-advertise-peer-urls={p}",
                f"--initial-cluster=e2e={p}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.dir,
        ).start()

    def start_apiserver(self) -> None:
        d = self.dir
        self.apiserver = Proc(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--cert-dir={d / 'certs'}",
                f"--service-account-key-file={d / 'sa.key'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                "--watch-cache=true",
                "--max-requests-inflight=2000",
                "--max-mutating-requests-inflight=1000",
                *self.workload_api_flags,
                *self.apiserver_flags,
            ],
            d,
        ).start()
        wait_until(self._ready, 90, "kube-apiserver /readyz", every=0.3)

    def _ready(self) -> bool:
        if self.apiserver is None or not self.apiserver.alive:
            raise RuntimeError("kube-apiserver exited:\n" + (self.apiserver.tail() if self.apiserver else ""))
        return self.get("/readyz") == b"ok"

    def restart_apiserver(self) -> None:
        assert self.apiserver is not None
        self.apiserver.stop()
        self.start_apiserver()

    def get(self, path: str, token: str | None = None) -> bytes:
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token or self.ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.read()

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    def write_kubeconfig(self, path: Path, token: str) -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "u"}}],
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / "kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {res.stderr or res.stdout}")
        return res

    def apply(self, objects: list[dict[str, Any]] | str) -> None:
        text = objects if isinstance(objects, str) else "\n---\n".join(json.dumps(o) for o in objects)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)

    def install_berth_identity(self) -> Path:
        """CRD, namespace and Berth's own RBAC from deploy/, then a ServiceAccount token (TokenRequest API)
        for Berth's identity: Berth runs with exactly the shipped ClusterRole, not as admin."""
        self.kubectl("apply", "-f", str(ROOT / "deploy" / "crds" / "berth.dev_teamquotas.yaml"))
        self.kubectl("apply", "-f", str(ROOT / "deploy" / "base" / "namespace.yaml"))
        self.kubectl("apply", "-f", str(ROOT / "deploy" / "base" / "rbac" / "berth.yaml"))
        wait_until(lambda: self.kubectl("get", "teamquotas", check=False).returncode == 0, 30, "TeamQuota CRD")
        token = self.kubectl("create", "token", "berth", "-n", "berth-system", "--duration=24h").stdout.strip()
        return self.write_kubeconfig(self.dir / "berth.kubeconfig", token)

    def stop(self) -> None:
        for p in (self.apiserver, self.etcd):
            if p is not None:
                p.stop()


def scheduler_config(
    cp: ControlPlane,
    path: Path,
    berth_url: str | None,
    scheduler_name: str,
    node_cache_capable: bool = True,
    percentage: int | None = None,
    qps: int = 500,
    leader_elect: bool = False,
    lock: str = "berth-scheduler",
    tls: dict[str, str] | None = None,
) -> Path:
    """A KubeSchedulerConfiguration: one profile; with berth_url, Berth as its extender. With tls (the
    extender's tlsConfig: caFile, certFile, keyFile, ...) the extender is called with enableHTTPS."""
    cfg: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(cp.admin_kubeconfig), "qps": qps, "burst": qps * 2},
        "leaderElection": {
            "leaderElect": leader_elect,
            "resourceName": lock,
            "resourceNamespace": "kube-system",
            "leaseDuration": "4s",
            "renewDeadline": "3s",
            "retryPeriod": "1s",
        },
        "profiles": [{"schedulerName": scheduler_name}],
    }
    if percentage is not None:
        cfg["percentageOfNodesToScore"] = percentage
    if berth_url:
        cfg["extenders"] = [
            {
                "urlPrefix": f"{berth_url}/scheduler",
                "filterVerb": "filter",
                "prioritizeVerb": "prioritize",
                "bindVerb": "bind",
                "preemptVerb": "preempt",
                "weight": 5,
                "nodeCacheCapable": node_cache_capable,
                "httpTimeout": "5s",
            }
        ]
        if tls:
            cfg["extenders"][0].update({"enableHTTPS": True, "tlsConfig": dict(tls)})
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_scheduler(cp: ControlPlane, name: str, config: Path, flags: list[str] | None = None) -> Proc:
    cmd = [str(cp.bin / "kube-scheduler"), f"--config={config}", "--secure-port=0", "-v=2", *(flags or [])]
    return Proc(name, cmd, cp.dir).start()


def start_berth(
    cp: ControlPlane,
    kubeconfig: Path,
    port: int,
    name: str = "berth",
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    proc = Proc(
        name,
        [
            sys.executable,
            "-m",
            "scheduler",
            "serve",
            "--kubeconfig",
            str(kubeconfig),
            "--port",
            str(port),
            *(extra or []),
        ],
        cp.dir,
        env=env,
    ).start()
    return proc


def wait_ready(url: str, proc: Proc, timeout: float = 60) -> None:
    def ready() -> bool:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return r.status == 200

    wait_until(ready, timeout, f"{proc.name} ready", every=0.2)


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def start_controller_manager(cp: ControlPlane, controllers: list[str], name: str = "kube-controller-manager") -> Proc:
    """kube-controller-manager (tests/e2e/k8s/build.sh builds it) running only `controllers`, with the admin
    kubeconfig as the harness gives kube-scheduler; no serving port, no election (one per test module)."""
    binary = cp.bin / "kube-controller-manager"
    if not binary.exists():
        raise RuntimeError(f"kube-controller-manager not built in {cp.bin}: run `make k8s`")
    return Proc(
        name,
        [
            str(binary),
            f"--kubeconfig={cp.admin_kubeconfig}",
            f"--controllers={','.join(controllers)}",
            "--leader-elect=false",
            "--secure-port=0",
            "-v=2",
        ],
        cp.dir,
    ).start()
