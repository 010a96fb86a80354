"""Processes for `berth bench`: CPU pinning (taskset, and chrt for SCHED_FIFO), starting a server and
waiting for /readyz, JSON over HTTP. The server and wrk each get one core, so they do not fight over the
same one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
FLOOR_BUILD = REPO / "loadtests" / "floor" / "build.sh"


@dataclass
class Pinning:
    server: list[str] = field(default_factory=list)  # argv prefix, e.g. ["taskset", "-c", "0"]
    client: list[str] = field(default_factory=list)


def make_pinning(server_cpu: int, client_cpu: int, realtime: int = 0) -> tuple[Pinning, str]:
    """Each side on a core of its own; with `realtime` > 0 also SCHED_FIFO at that priority (chrt), so the
    other processes of a busy machine wait for the server and the client instead of the reverse. Both
    sides only ever run a request's worth of work before blocking on the socket, and the kernel's RT
    throttling (sched_rt_runtime_us) keeps 5 % of each second for everything else, so nothing starves."""
    cpus = os.sched_getaffinity(0)
    if not shutil.which("taskset") or len(cpus) < 2 or {server_cpu, client_cpu} - cpus:
        return Pinning(), "not pinned (needs taskset and two usable cores)"
    prefix: list[str] = []
    note = f"server on core {server_cpu}, wrk on core {client_cpu} (taskset)"
    if realtime > 0:
        if realtime_allowed(realtime):
            prefix = ["chrt", "-f", str(realtime)]
            note += f", both SCHED_FIFO priority {realtime} (chrt)"
        else:
            note += "; SCHED_FIFO not permitted here (needs chrt and CAP_SYS_NICE): normal priority"
    server = [*prefix, "taskset", "-c", str(server_cpu)]
    return Pinning(server, [*prefix, "taskset", "-c", str(client_cpu)]), note


def realtime_allowed(priority: int) -> bool:
    if not shutil.which("chrt"):
        return False
    return subprocess.run(["chrt", "-f", str(priority), "true"], capture_output=True, check=False).returncode == 0


def http_json(url: str, body: bytes | None = None, timeout: float = 30) -> Any:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return orjson.loads(reply.read())


def http_bytes(url: str, body: bytes) -> bytes:
    """POST `body`; the reply's body, bytes as they came."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return bytes(reply.read())


def wait_ready(
    base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120, path: str = "/readyz"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + path, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def running(
    argv: list[str], env: dict[str, str], port: int, workdir: Path, tag: str, ready: str = "/readyz"
) -> Iterator[str]:
    """Start one server, wait for `ready` to answer 200, yield its base URL, and stop it afterwards."""
    log = workdir / f"{tag}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=berth_tree())
    base = f"http://127.0.0.1:{port}"
    PROCESSES[base] = proc
    try:
        wait_ready(base, proc, log, path=ready)
        yield base
    finally:
        PROCESSES.pop(base, None)
        proc.send_signal(signal.SIGCONT)  # if it was paused (paused())
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PROCESSES: dict[str, subprocess.Popen[bytes]] = {}  # base URL -> the server running there


@contextmanager
def paused(base: str) -> Iterator[None]:
    """SIGSTOP the server at `base` while another one is measured on its core: a stopped Berth's
    housekeeping and timers cannot disturb the floor. It resumes (SIGCONT) afterwards."""
    proc = PROCESSES[base]
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)  # let the timers that came due while stopped fire before the next reading


def floor_binary() -> tuple[Path | None, str]:
    """Build (or reuse) the floor server; (None, why) without Go."""
    if not shutil.which("go"):
        return None, "no floor: needs Go (https://go.dev/dl/) to build loadtests/floor"
    proc = subprocess.run([str(FLOOR_BUILD)], capture_output=True, text=True, timeout=300, check=False)
    path = Path(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else None
    if path is None or not path.is_file():
        return None, f"no floor: {FLOOR_BUILD.name} failed: {proc.stderr.strip()[-500:]}"
    return path, f"floor: {path}"


def machine_state() -> dict[str, float]:
    """The 1-minute load average and /proc/stat's CPU counters (jiffies), to compare before and after."""
    out = {"load1": os.getloadavg()[0]}
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return out
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    out.update({name: float(v) for name, v in zip(names, fields[1:], strict=False)})
    return out


def steal_share(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Stolen CPU time (a hypervisor running someone else on these cores) as a share of all CPU time."""
    keys = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    if not all(k in before and k in after for k in keys):
        return None
    total = sum(after[k] - before[k] for k in keys)
    return (after["steal"] - before["steal"]) / total if total > 0 else 0.0


def busy_share(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Non-idle CPU time as a share of all CPU time between two readings."""
    keys = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    if not all(k in before and k in after for k in keys):
        return None
    total = sum(after[k] - before[k] for k in keys)
    idle = after["idle"] - before["idle"] + after["iowait"] - before["iowait"]
    return 1 - idle / total if total > 0 else 0.0


def berth_tree() -> Path:
    """The checkout whose Berth is measured: this one, or BERTH_BENCH_TREE (another revision's checkout with its
    own `make install`), so two revisions are measured side by side by one harness with one floor."""
    return Path(os.environ.get("BERTH_BENCH_TREE") or REPO)


def berth_argv(pin: Pinning, port: int, demo_nodes: int) -> list[str]:
    tree = berth_tree()
    python = str(tree / ".venv" / "bin" / "python") if tree != REPO else sys.executable
    return [
        *pin.server,
        python,
        "-m",
        "scheduler",
        "serve",
        "--demo",
        "--demo-nodes",
        str(demo_nodes),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def server_env(pure: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BERTH_NO_EXTENSIONS", None)
    if pure:
        env["BERTH_NO_EXTENSIONS"] = "1"
    return env


ZEROCOST_BUILD = REPO / "loadtests" / "zerocost" / "build.sh"


def zerocost_binary() -> Path:
    """Build (or reuse) the zero-cost extender (loadtests/zerocost, Go standard library only)."""
    if not shutil.which("go"):
        raise RuntimeError("the zero-cost extender needs Go (https://go.dev/dl/) to build loadtests/zerocost")
    proc = subprocess.run([str(ZEROCOST_BUILD)], capture_output=True, text=True, timeout=300, check=False)
    path = Path(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else None
    if path is None or not path.is_file():
        raise RuntimeError(f"{ZEROCOST_BUILD} failed: {proc.stderr.strip()[-500:]}")
    return path
