"""The base deployment's listeners, for real: `berth serve` with deploy/base/config/berth.yaml (its hosts as
shipped, only the ports made free) against the real API server. A client that uses this machine's
non-loopback address, as another pod or the node would use the pod IP, cannot reach the verbs (bind
included): the connection is refused. /healthz, /readyz and /metrics answer on that address, and the
verbs still answer on 127.0.0.1, where the pod's kube-scheduler calls them.

With root and `ip netns`, a second test puts the client in its own network namespace behind a veth pair, so
its packets really cross an interface, like a packet from another pod."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle

BASE_CONFIG = h.ROOT / "deploy" / "base" / "config" / "berth.yaml"
BIND = b'{"PodName":"p","PodNamespace":"default","PodUID":"u","Node":"n"}'


def outside_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (what the pod IP is to a pod)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        out = ""
    for addr in out.split():
        if "." in addr and not addr.startswith("127."):
            return addr
    return None


@pytest.fixture(scope="module")
def shipped(cp: h.ControlPlane) -> Iterator[tuple[BerthHandle, int]]:
    config = yaml.safe_load(BASE_CONFIG.read_text())
    assert (config["server"]["host"], config["server"]["health_host"]) == ("127.0.0.1", "0.0.0.0")
    health = h.free_port()
    config["server"]["health_port"] = health  # the hosts stay as shipped; the ports must be free here
    path = cp.dir / "berth-base-listeners.yaml"
    path.write_text(yaml.safe_dump(config))
    handle = BerthHandle(
        cp,
        h.free_port(),
        cp.berth_kubeconfig,  # type: ignore[attr-defined]
        name="berth-base-listeners",
        extra=["--config", str(path)],
    ).start()
    yield handle, health
    handle.stop()


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_verbs_unreachable_on_the_outside_address(shipped: tuple[BerthHandle, int]) -> None:
    berth, health = shipped
    addr = outside_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    # Nothing accepts a connection to the verb port on the outside address: not bind, not any verb.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((addr, berth.port), timeout=5).close()
    with pytest.raises(urllib.error.URLError) as refused:
        post(f"http://{addr}:{berth.port}/scheduler/bind", BIND)
    assert isinstance(refused.value.reason, ConnectionRefusedError), refused.value
    # Health and metrics answer there...
    for path in ("/healthz", "/readyz", "/metrics"):
        assert get(f"http://{addr}:{health}{path}") == 200, path
    with urllib.request.urlopen(f"http://{addr}:{health}/metrics", timeout=5) as r:
        assert "berth_cache_nodes" in r.read().decode()
    # ...but that port has no verb and no /debug.
    assert post(f"http://{addr}:{health}/scheduler/bind", BIND) == 404
    assert get(f"http://{addr}:{health}/debug/state") == 404
    # The pod's own kube-scheduler still reaches every verb on loopback.
    assert post(f"{berth.url}/scheduler/bind", BIND) == 200
    assert berth.get("/debug/state")["leaderElection"]["enabled"] is True


@contextlib.contextmanager
def client_namespace() -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair: (namespace, this side's address)."""
    tag = f"bl{os.getpid() % 100000}"
    ns, here, there = f"{tag}ns", f"{tag}a", f"{tag}b"
    octet = 1 + os.getpid() % 250
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    ip("netns", "add", ns)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", here)
        ip("link", "set", here, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", there)
        ip("-n", ns, "link", "set", there, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_ip
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


PROBE = """
import socket, sys, urllib.request
host, verbs, health = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    socket.create_connection((host, verbs), timeout=5).close()
    print("verbs: connected")
except OSError as exc:
    print("verbs:", type(exc).__name__)
with urllib.request.urlopen(f"http://{host}:{health}/readyz", timeout=5) as r:
    print("health:", r.status)
"""


def test_verbs_unreachable_from_another_network_namespace(shipped: tuple[BerthHandle, int], tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    berth, health = shipped
    try:
        ctx = client_namespace()
        ns, host_ip = ctx.__enter__()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr!r}")
    try:
        script = tmp_path / "probe.py"
        script.write_text(PROBE)
        res = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(script), host_ip, str(berth.port), str(health)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.split("\n")[:2] == ["verbs: ConnectionRefusedError", "health: 200"], res.stdout
    finally:
        ctx.__exit__(None, None, None)
