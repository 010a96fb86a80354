"""Processes for `berth bench`: CPU pinning (taskset), starting a server and waiting for /readyz, JSON over
HTTP. The server and wrk each get one core, so they do not fight over the same one."""

from __future__ import annotations

import os
import shutil
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


@dataclass
class Pinning:
    server: list[str] = field(default_factory=list)  # argv prefix, e.g. ["taskset", "-c", "0"]
    client: list[str] = field(default_factory=list)


def make_pinning(server_cpu: int, client_cpu: int) -> tuple[Pinning, str]:
    cpus = os.sched_getaffinity(0)
    if not shutil.which("taskset") or len(cpus) < 2 or {server_cpu, client_cpu} - cpus:
        return Pinning(), "not pinned (needs taskset and two usable cores)"
    pin = Pinning(["taskset", "-c", str(server_cpu)], ["taskset", "-c", str(client_cpu)])
    return pin, f"server on core {server_cpu}, wrk on core {client_cpu} (taskset)"


def http_json(url: str, body: bytes | None = None, timeout: float = 30) -> Any:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return orjson.loads(reply.read())


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def running(argv: list[str], env: dict[str, str], port: int, workdir: Path, tag: str) -> Iterator[str]:
    """Start one server, wait for /readyz, yield its base URL, and stop it afterwards."""
    log = workdir / f"{tag}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def berth_argv(pin: Pinning, port: int, demo_nodes: int) -> list[str]:
    return [
        *pin.server,
        sys.executable,
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
