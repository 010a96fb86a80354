"""The connections aiohttp serves (health, metrics, debug) are bounded too: a request that trickles in is
closed at the deadline and their number is capped, on the health port and on the verb port after a
hand-off; a well-behaved keep-alive client is not disturbed. Real sockets against Berth's listeners."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from scheduler.app import Listener, _listen
from scheduler.config import Config
from scheduler.extender.server import Berth
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder
from scheduler.serving.guard import FLOOR
from tests.conftest import demo_cluster

Open = Callable[..., Awaitable[Listener]]
DEADLINE = 0.6


@pytest.fixture
async def open_listener() -> AsyncIterator[Open]:
    opened: list[Listener] = []

    async def start(verbs: bool, **server: Any) -> Listener:
        config = Config()
        config.server.host, config.server.request_timeout_seconds = "127.0.0.1", DEADLINE
        for key, value in server.items():
            setattr(config.server, key, value)
        state = demo_cluster(config)
        listener = await _listen(Berth(state, Metrics(), Binder(state, None, None)), config, 0, None, verbs=verbs)
        opened.append(listener)
        return listener

    yield start
    for listener in opened:
        await listener.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        await asyncio.wait_for(reader.read(), seconds)
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def get(port: int, path: bytes = b"/healthz") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return reply


@pytest.mark.parametrize("verbs", [False, True], ids=["health-port", "verb-port-hand-off"])
async def test_a_trickled_get_is_closed_at_the_deadline(open_listener: Open, verbs: bool) -> None:
    listener = await open_listener(verbs)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # the request line, then the head one byte at a time
    await writer.drain()
    closed = False
    for _ in range(int(4 * DEADLINE / 0.1)):
        writer.write(b"X")
        await asyncio.sleep(0.1)
        if reader.at_eof() or writer.is_closing():
            closed = True
            break
        if await closed_within(reader, 0.001):
            closed = True
            break
    assert closed, "a request trickling in for 4x the deadline was still open"
    writer.close()
    assert (await get(listener.port)).startswith(b"HTTP/1.1 200"), "the listener still serves"


async def test_keep_alive_requests_are_not_cut_by_the_deadline(open_listener: Open) -> None:
    """The deadline runs from a request's first byte to its reply, not over the connection's life."""
    listener = await open_listener(False)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        await asyncio.wait_for(reader.readexactly(2), 5)  # "ok"
        await asyncio.sleep(DEADLINE * 1.5)  # idle between requests, longer than the deadline
    writer.close()


async def test_connections_to_the_health_port_are_capped(open_listener: Open) -> None:
    listener = await open_listener(False, max_connections=1)  # the guard keeps its floor
    held = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(FLOOR)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    assert await closed_within(reader, 2), f"connection {FLOOR + 1} was kept over the cap"
    writer.close()
    for _, w in held[:2]:
        w.close()
    await asyncio.sleep(0.2)
    assert (await get(listener.port)).startswith(b"HTTP/1.1 200"), "a slot freed: served again"
    for _, w in held[2:]:
        w.close()
