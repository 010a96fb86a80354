"""Shared fixtures: a seeded demo cluster, Berth's app behind an aiohttp test client, and request bodies
byte-shaped like kube-scheduler's `json.Marshal` of the extender/v1 types (tests/fixtures/go/).

The e2e suite has its own conftest under tests/e2e/; nothing here is named like its fixtures.
"""

import asyncio
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import BaseTestServer, TestClient
from aiohttp.web_runner import BaseRunner
from yarl import URL

from scheduler.app import Listener, _listen
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import populate
from scheduler.extender.server import Berth
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder

GO_FIXTURES = Path(__file__).parent / "fixtures" / "go"
DEMO_NODES = 200
DEMO_SEED = 7

Serve = Callable[[ClusterState], Awaitable[TestClient]]


def demo_cluster(config: Config | None = None, nodes: int = DEMO_NODES, seed: int = DEMO_SEED) -> ClusterState:
    state = ClusterState(config or Config())
    populate(state, nodes, seed)
    return state


class GoWire:
    """Request bodies as Go writes them: no spaces, struct field order, `null` for nil. The Pods and the
    Node are recorded objects; node names come from the demo cluster so the bodies never go stale."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.node_template = self.raw("node.json")

    @staticmethod
    def raw(name: str) -> bytes:
        return (GO_FIXTURES / name).read_bytes().strip()

    def pod(self, which: str = "training") -> bytes:
        return self.raw(f"pod-{which}.json")

    def pod_object(self, which: str = "training") -> dict[str, Any]:
        return orjson.loads(self.pod(which))

    def names(self, pool: str | None = None) -> list[str]:
        """Node names in the order the demo cluster created them, optionally of one pool."""
        t = self.state.table
        slots = sorted(t.slot_of.values())
        return [t.names[s] for s in slots if pool is None or (t.facts[s] and t.facts[s].pool == pool)]

    def node(self, name: str) -> bytes:
        slot = self.state.table.slot_of.get(name)
        facts = self.state.table.facts[slot] if slot is not None else None
        pool = facts.pool if facts else "unknown"
        uid = f"{zlib.crc32(name.encode()):08x}-0000-4000-8000-000000000000"
        return (
            self.node_template.replace(b"__NODE__", name.encode())
            .replace(b"__UID__", uid.encode())
            .replace(b"__POOL__", pool.encode())
        )

    def node_list(self, names: list[str]) -> bytes:
        return b'{"metadata":{"resourceVersion":"48250"},"items":[' + b",".join(map(self.node, names)) + b"]}"

    def args(self, pod: bytes, names: list[str], cache_capable: bool = True) -> bytes:
        """ExtenderArgs{Pod, Nodes, NodeNames}: NodeNames with nodeCacheCapable, a full NodeList without."""
        if cache_capable:
            return b'{"Pod":' + pod + b',"Nodes":null,"NodeNames":' + orjson.dumps(names) + b"}"
        return b'{"Pod":' + pod + b',"Nodes":' + self.node_list(names) + b',"NodeNames":null}'

    @staticmethod
    def binding(name: str, namespace: str, uid: str, node: str) -> bytes:
        return orjson.dumps({"PodName": name, "PodNamespace": namespace, "PodUID": uid, "Node": node})

    @staticmethod
    def preemption(pod: bytes, victims: dict[str, list[str]], pdb: int = 0) -> bytes:
        meta = {n: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": pdb} for n, uids in victims.items()}
        return b'{"Pod":' + pod + b',"NodeNameToVictims":null,"NodeNameToMetaVictims":' + orjson.dumps(meta) + b"}"


@pytest.fixture
def demo_state() -> ClusterState:
    return demo_cluster()


@pytest.fixture
def go(demo_state: ClusterState) -> GoWire:
    return GoWire(demo_state)


class BerthServer(BaseTestServer):
    """Berth's own listener, as `berth serve` opens it (verb POSTs on the hot-path connection handler,
    everything else handed to aiohttp), on an ephemeral loopback port, for aiohttp's TestClient."""

    def __init__(self, berth: Berth) -> None:
        super().__init__()
        self.berth = berth
        self.listener: Listener | None = None

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        raise NotImplementedError("start_server opens Berth's listener itself")

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self.berth.state.config.server.host = "127.0.0.1"
        self.listener = await _listen(self.berth, self.berth.state.config, 0, None, verbs=True)
        self.runner, self.port, self.scheme = self.listener.runner, self.listener.port, "http"
        self._root = URL(f"http://127.0.0.1:{self.port}")

    async def close(self) -> None:
        if self.listener is not None and not self.closed:
            await self.listener.close()
            self._root, self.port, self._closed = None, None, True


def berth_client(state: ClusterState) -> TestClient:
    return TestClient(BerthServer(Berth(state, Metrics(), Binder(state, None, None))))


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start Berth (demo binder: binds recorded in memory) for a state; closed after the test."""
    clients: list[TestClient] = []

    async def start(state: ClusterState) -> TestClient:
        client = berth_client(state)
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for c in clients:
        await c.close()


@pytest.fixture
async def client(serve: Serve, demo_state: ClusterState) -> TestClient:
    return await serve(demo_state)
