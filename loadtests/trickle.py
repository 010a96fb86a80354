"""What the verb connections' bounds cost and give back (docs/hardening.md), against `berth serve --demo`.

    python -m loadtests.trickle trickle [--conns 500]   a good client's filter p50/p99, idle and with
                                                        N connections trickling a body one byte a second,
                                                        and when the deadline closes the tricklers
    python -m loadtests.trickle closed [--conns 1000]   RSS before and after N closed connections (with a
                                                        gc.freeze from housekeeping in between)
    python -m loadtests.trickle names                   RSS after eight distinct maximal NodeNames bodies
                                  [--bodies 8 --names 100000 --pad 80]

127.0.0.1 only; every loop is bounded in count and time. Measurements, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
POD = (ROOT / "tests" / "fixtures" / "go" / "pod-training.json").read_bytes().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m scheduler serve --demo` on a free loopback port, with the given server.* keys."""

    def __init__(self, **server: Any) -> None:
        self.port = free_port()
        keys = {"host": "127.0.0.1", "port": self.port, **server}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
            config.write("server:\n" + "".join(f"  {k}: {v}\n" for k, v in keys.items()))
        self._config = Path(config.name)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "serve", "--demo", "--config", str(self._config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    async def wait_ready(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                status, _ = await get(self.port, "/healthz")
                if status == 200:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError("berth serve did not start")

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.kill()
        self._config.unlink(missing_ok=True)


def request(path: str, body: bytes = b"", method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode().split("\r\n")
    length = next(int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request(path, method="GET"))
        return await reply(reader)
    finally:
        writer.close()


async def node_names(port: int) -> list[str]:
    _, body = await get(port, "/debug/nodes")
    return [n["name"] for n in orjson.loads(body)["nodes"]]


def args(names: list[str]) -> bytes:
    return b'{"Pod":' + POD + b',"Nodes":null,"NodeNames":' + orjson.dumps(names) + b"}"


async def filter_latencies(port: int, body: bytes, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    raw = request("/scheduler/filter", body)
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(raw)
        status, _ = await reply(reader)
        out.append((time.perf_counter() - t0) * 1000)
        assert status == 200, status
    writer.close()
    return out


def summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms over {len(ms)} filters"


async def trickler(port: int, closed_at: list[float], t0: float, seconds: float) -> None:
    """A body announced at 100 KB, sent one byte a second; notes when the server closes the connection."""
    with contextlib.suppress(OSError):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = await asyncio.wait_for(reader.read(65536), 1.0)
            except TimeoutError:
                writer.write(b" ")
                continue
            if data == b"" or data.startswith(b"HTTP/1.1 408"):
                closed_at.append(time.monotonic() - t0)
                break
        writer.close()


async def run_trickle(conns: int, timeout: float) -> None:
    server = Server(request_timeout_seconds=timeout)
    try:
        await server.wait_ready()
        body = args((await node_names(server.port))[:1000])
        await filter_latencies(server.port, body, 200)  # warm-up
        idle = await filter_latencies(server.port, body, 1000)
        print(f"idle:                 {summary(idle)}; RSS {server.rss_mb():.0f} MB")
        closed: list[float] = []
        t0 = time.monotonic()
        tasks = [asyncio.create_task(trickler(server.port, closed, t0, timeout + 15)) for _ in range(conns)]
        await asyncio.sleep(1.5)
        busy = await filter_latencies(server.port, body, 1000)
        print(f"{conns} trickling:        {summary(busy)}; RSS {server.rss_mb():.0f} MB")
        await asyncio.gather(*tasks)
        if closed:
            print(
                f"tricklers closed by the server: {len(closed)} of {conns}, {min(closed):.1f}-{max(closed):.1f} s "
                f"after they began (server.request_timeout_seconds = {timeout:g})"
            )
        else:
            print(f"tricklers closed by the server: 0 of {conns} within {timeout + 15:g} s")
    finally:
        server.stop()


async def run_closed(conns: int) -> None:
    server = Server()
    try:
        await server.wait_ready()
        body = args((await node_names(server.port))[:1000])
        await filter_latencies(server.port, body, 200)
        await asyncio.sleep(2)
        base = server.rss_mb()
        t0 = time.monotonic()
        for i in range(conns):  # spread over > 30 s, so housekeeping's gc.freeze runs in between
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request("/scheduler/filter", body + b" " * (i % 7)))
            status, _ = await reply(reader)
            assert status == 200
            writer.close()
            await asyncio.sleep(max(0.0, (i + 1) * 35 / conns - (time.monotonic() - t0)))
        await asyncio.sleep(3)
        print(
            f"RSS: {base:.0f} MB before, {server.rss_mb():.0f} MB after {conns} closed connections "
            f"({len(body) // 1024} KB filter bodies, {time.monotonic() - t0:.0f} s)"
        )
    finally:
        server.stop()


async def run_names(bodies: int, count: int, pad: int) -> None:
    server = Server(max_body_bytes=16 << 20)
    try:
        await server.wait_ready()
        await asyncio.sleep(2)
        base = server.rss_mb()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        size, after = 0, []
        for i in range(bodies):  # distinct lists, by default of 100,000 (the bound) 100-byte names: ~10 MB each
            body = args([f"node-{i:02d}-{j:07d}-" + "x" * pad for j in range(count)])
            size = len(body)
            writer.write(request("/scheduler/filter", body))
            status, _ = await reply(reader)
            assert status == 200, status
            after.append(f"{server.rss_mb():.0f}")
        del body
        await asyncio.sleep(2)
        print(
            f"RSS: {base:.0f} MB before, {server.rss_mb():.0f} MB after {bodies} distinct NodeNames bodies of "
            f"{size / 1e6:.1f} MB ({count:,} names each), connection kept open; after each: {', '.join(after)} MB"
        )
        writer.close()
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("trickle", "closed", "names"))
    parser.add_argument("--conns", type=int, default=None, help="trickle: 500; closed: 1000 (at most 2000)")
    parser.add_argument("--bodies", type=int, default=8, help="names: distinct lists sent (at most 32)")
    parser.add_argument("--names", type=int, default=100_000, help="names: names a list (at most 100,000)")
    parser.add_argument("--pad", type=int, default=80, help="names: bytes added to each name (at most 200)")
    parser.add_argument("--timeout", type=float, default=10.0, help="trickle: server.request_timeout_seconds")
    a = parser.parse_args()
    if a.mode == "trickle":
        asyncio.run(run_trickle(min(a.conns or 500, 2000), a.timeout))
    elif a.mode == "closed":
        asyncio.run(run_closed(min(a.conns or 1000, 2000)))
    else:
        asyncio.run(run_names(min(a.bodies, 32), min(a.names, 100_000), min(a.pad, 200)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
