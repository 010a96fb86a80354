"""Graceful shutdown: stop accepting binds, let in-flight binds finish, release what is unconfirmed."""

import asyncio

import orjson

from scheduler.app import _listen, _shutdown
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import make_node, make_pod
from scheduler.extender.server import Berth
from scheduler.model.binding import BindingArgs
from scheduler.model.podspec import pod_ask
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder


async def test_shutdown_finishes_in_flight_binds_and_releases_reservations() -> None:
    state = ClusterState(Config())
    state.apply_node(
        "ADDED", make_node("n1", "shared", 32, 128, 8, "NVIDIA-A100-SXM4-80GB", None, None, "2030-01-01T00:00:00Z", "z")
    )
    release = asyncio.Event()
    written: list[str] = []

    async def slow_write(args: BindingArgs, annotations: dict[str, str]) -> str:
        await release.wait()
        written.append(args.name)
        return ""

    binder = Binder(state, slow_write, None)
    berth = Berth(state, Metrics(), binder)
    ask = pod_ask(make_pod("default", "a", None, "1", "1Gi", 2))
    state.seen.remember(ask)  # what filter remembers for bind
    bind_a = asyncio.create_task(binder.bind(BindingArgs("a", "default", "uid-default-a", "n1")))
    await asyncio.sleep(0.01)
    assert binder.in_flight == 1 and state.table.free(0)["nvidia.com/gpu"] == 6

    state.config.server.host = "127.0.0.1"
    listener = await _listen(berth, state.config, 0, None, verbs=True)
    # An idle kube-scheduler connection on the hot-path handler: shutdown must close it, not hang on it.
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    body = orjson.dumps({"Pod": make_pod("default", "b", None, "1", "1Gi", 1), "Nodes": None, "NodeNames": ["n1"]})
    writer.write(b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    stopping = asyncio.create_task(_shutdown(berth, [listener], [], grace=5.0))
    await asyncio.sleep(0.05)
    assert not berth.verbs.accepting and not stopping.done(), "shutdown waits for the in-flight bind"
    release.set()
    assert await bind_a == "bound"
    await stopping
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert b"n1" in await reader.readexactly(length)
    assert await asyncio.wait_for(reader.read(), 2) == b"", "the idle connection is closed at shutdown"
    writer.close()
    assert written == ["a"]
    # The bind wrote its Binding, but no watch event confirmed it before exit: nothing stays reserved.
    assert len(state.reservations) == 0
    assert state.table.free(0)["nvidia.com/gpu"] == 8


async def test_plain_listener_reports_its_bound_port_and_serves_health_only() -> None:
    """The health-and-metrics port of TLS mode, opened on port 0: Listener.port is the port it got."""
    state = ClusterState(Config())
    state.config.server.host = "127.0.0.1"
    listener = await _listen(Berth(state, Metrics(), Binder(state, None, None)), state.config, 0, None, verbs=False)
    try:
        assert listener.port > 0 and listener.verbs is None
        for path, status in ((b"/healthz", b"200"), (b"/scheduler/filter", b"404"), (b"/debug/state", b"404")):
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
            assert (await reader.read()).startswith(b"HTTP/1.1 " + status), path
            writer.close()
    finally:
        await listener.close()
