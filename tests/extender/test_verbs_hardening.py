"""Hardening of the hot-path connection handler (scheduler/extender/verbs_http.py) and the NodeNames cache,
over real sockets against Berth's real listener: memory given back, deadlines, size and count limits, and
HTTP/1.1 framing as RFC 9112 / 9110 require. Each test is one defect an adversarial pass found."""

import asyncio
import contextlib
import gc
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from scheduler.app import Listener, _listen
from scheduler.config import Config
from scheduler.extender import verbs_http
from scheduler.extender.names_cache import NodeNamesCache
from scheduler.extender.server import Berth
from scheduler.extender.verb_server import VerbServer
from scheduler.extender.verbs_http import VerbConnection
from scheduler.extender.wire import MAX_NAMES, MAX_PREEMPT_CANDIDATES
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder
from tests.conftest import GoWire, demo_cluster
from tests.extender.test_verbs_http import read_reply, request

LIMIT = 64 * 1024
Open = Callable[..., Awaitable[Listener]]


@pytest.fixture
async def open_listener() -> AsyncIterator[Open]:
    """Berth's listener with a small body limit and short deadlines; keyword arguments set server.* keys."""
    opened: list[Listener] = []

    async def start(**server: Any) -> Listener:
        config = Config()
        config.server.host, config.server.max_body_bytes = "127.0.0.1", LIMIT
        config.server.request_timeout_seconds = 0.6
        for key, value in server.items():
            setattr(config.server, key, value)
        state = demo_cluster(config)
        listener = await _listen(Berth(state, Metrics(), Binder(state, None, None)), config, 0, None, verbs=True)
        opened.append(listener)
        return listener

    yield start
    for listener in opened:
        await listener.close()


@pytest.fixture
async def listener(open_listener: Open) -> Listener:
    return await open_listener()


def berth_of(listener: Listener) -> Berth:
    assert listener.verbs is not None
    return listener.verbs.berth


def filter_args(listener: Listener, n: int = 30) -> bytes:
    go = GoWire(berth_of(listener).state)
    return go.args(go.pod(), go.names()[:n])


async def connect(listener: Listener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", listener.port)


async def closed_by_server(reader: asyncio.StreamReader, within: float = 3.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def the_connection(listener: Listener) -> VerbConnection:
    assert listener.verbs is not None
    (conn,) = listener.verbs.connections
    return conn


def bytes_held(obj: object, depth: int = 3) -> int:
    """Bytes in bytes/bytearray objects reachable from `obj`'s attributes (lists, tuples, deques walked)."""
    seen: set[int] = set()

    def walk(o: object, d: int) -> int:
        if id(o) in seen or d < 0:
            return 0
        seen.add(id(o))
        if isinstance(o, (bytes, bytearray)):
            return len(o)
        if isinstance(o, (list, tuple, deque)):
            return sum(walk(x, d - 1) for x in o)
        return 0

    return sum(walk(v, depth) for v in vars(obj).values())


# -- memory given back ---------------------------------------------------------------------------


async def test_closed_connections_are_freed_by_refcounting_alone(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Housekeeping freezes the heap: a connection that needs the cyclic collector is never freed."""
    made: list[weakref.ref[VerbConnection]] = []
    real = VerbServer.__call__

    def tracked(self: VerbServer) -> VerbConnection:
        conn = real(self)
        made.append(weakref.ref(conn))
        return conn

    monkeypatch.setattr(VerbServer, "__call__", tracked)
    body = filter_args(listener)
    gc.collect()
    gc.disable()
    try:
        for i in range(40):
            reader, writer = await connect(listener)
            if i % 4 == 3:  # handed to aiohttp after its first request
                writer.write(request("/healthz", method="GET"))
            else:
                writer.write(request("/scheduler/filter", body))
            assert (await read_reply(reader))[0] == 200
            writer.close()
            await writer.wait_closed()
        for _ in range(50):
            await asyncio.sleep(0.01)
            if not listener.verbs.connections:  # type: ignore[union-attr]
                break
        await asyncio.sleep(0.05)
        alive = [r for r in made if r() is not None]
        assert len(made) == 40 and not alive, f"{len(alive)} of 40 closed connections still alive"
    finally:
        gc.enable()


async def test_names_cache_is_bounded_in_bytes(open_listener: Open) -> None:
    listener = await open_listener(max_body_bytes=8 << 20)
    berth = berth_of(listener)
    budget = 2_000_000
    berth.names = NodeNamesCache(berth.state.table, budget=budget)
    go = GoWire(berth.state)
    reader, writer = await connect(listener)
    for i in range(8):  # each list well past a fraction of the budget: none is kept
        names = [f"node-{i}-{j:06d}-" + "x" * 40 for j in range(20_000)]
        writer.write(request("/scheduler/filter", go.args(go.pod(), names)))
        assert (await read_reply(reader))[0] == 200
        assert berth.names.bytes <= budget
    assert berth.names.bytes == 0, "an entry larger than a fraction of the budget is not cached"
    for i in range(40):  # many small lists: cached until the budget, the oldest dropped first
        names = [f"n{i}-{j}" for j in range(1_500)]
        writer.write(request("/scheduler/filter", go.args(go.pod(), names)))
        assert (await read_reply(reader))[0] == 200
        assert berth.names.bytes <= budget
    assert berth.names.bytes > budget // 2
    hits = berth.names.hits
    writer.write(request("/scheduler/filter", go.args(go.pod(), [f"n39-{j}" for j in range(1_500)])))
    assert (await read_reply(reader))[0] == 200 and berth.names.hits == hits + 1, "a normal list still hits"
    writer.close()


async def test_an_idle_kept_alive_connection_holds_no_body(listener: Listener) -> None:
    body = filter_args(listener, 150)
    assert len(body) > 8_000
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/filter", body))
    assert (await read_reply(reader))[0] == 200
    await asyncio.sleep(0.05)
    assert bytes_held(the_connection(listener)) < 1024, "the last body is released once its reply is written"
    writer.close()


async def test_a_body_is_held_once_while_it_arrives(listener: Listener) -> None:
    body = filter_args(listener, 150)
    raw = request("/scheduler/filter", body)
    reader, writer = await connect(listener)
    half = len(raw) - len(body) // 2
    for i in range(0, half, 4096):
        writer.write(raw[i : min(i + 4096, half)])
        await writer.drain()
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.05)
    held = bytes_held(the_connection(listener))
    assert held <= 1.25 * half, f"{held} bytes held for {half} received"
    writer.write(raw[half:])
    assert (await read_reply(reader))[0] == 200
    writer.close()


# -- time and count limits -----------------------------------------------------------------------


async def test_a_trickled_body_gets_408_at_the_request_deadline(listener: Listener) -> None:
    body = filter_args(listener)
    raw = request("/scheduler/filter", body)
    head_end = raw.index(b"\r\n\r\n") + 4
    reader, writer = await connect(listener)
    writer.write(raw[:head_end])
    t0 = time.monotonic()
    status = None
    for b in body:  # one byte every 50 ms: the connection is never idle, the request never completes
        writer.write(bytes([b]))
        await asyncio.sleep(0.05)
        if reader.at_eof() or len(reader._buffer):  # type: ignore[attr-defined]
            break
        if time.monotonic() - t0 > 5:
            break
    status, headers, reply = await read_reply(reader)
    assert status == 408 and "request_timeout_seconds" in orjson.loads(reply)["error"]
    assert headers["connection"] == "close" and await closed_by_server(reader)
    assert time.monotonic() - t0 < 3


async def test_a_trickled_head_gets_408_at_the_deadline(listener: Listener) -> None:
    raw = request("/scheduler/filter", filter_args(listener))
    reader, writer = await connect(listener)
    t0 = time.monotonic()
    for b in raw[:200]:  # the request line itself, then headers, one byte every 50 ms
        writer.write(bytes([b]))
        await asyncio.sleep(0.05)
        if len(reader._buffer) or reader.at_eof():  # type: ignore[attr-defined]
            break
    status, _, _ = await read_reply(reader)
    assert status == 408 and time.monotonic() - t0 < 3 and await closed_by_server(reader)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n",
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n"
        b"Expect: 100-continue\r\n\r\n",
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n"
        b"fffff",  # a chunk size split across writes
    ],
)
async def test_a_body_announced_over_the_limit_is_413_at_once(listener: Listener, head: bytes) -> None:
    reader, writer = await connect(listener)
    for piece in head.split(b"fffff"):
        writer.write(piece + (b"fffff" if piece is not head.split(b"fffff")[-1] else b""))
        await asyncio.sleep(0.02)
    if head.endswith(b"fffff"):
        writer.write(b"fffffffffff\r\n")
    writer.write(b"x" * 1000)
    status, headers, reply = await read_reply(reader)  # not a 100 Continue, not waiting for 2^64 bytes
    assert status == 413 and f"the limit is {LIMIT} bytes" in orjson.loads(reply)["error"]
    assert headers["connection"] == "close" and await closed_by_server(reader)


async def test_a_chunked_body_past_the_limit_is_refused_as_it_arrives(listener: Listener) -> None:
    reader, writer = await connect(listener)
    writer.write(b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (4096, b"y" * 4096)
    with contextlib.suppress(ConnectionError):
        for _ in range(LIMIT // 4096 + 2):
            writer.write(chunk)
            await writer.drain()
    status, _, reply = await read_reply(reader)  # no final 0-chunk sent: refused before the end
    assert status == 413 and "at least" in orjson.loads(reply)["error"] and await closed_by_server(reader)


async def test_a_large_request_head_is_431_and_not_buffered(listener: Listener) -> None:
    reader, writer = await connect(listener)
    writer.write(b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < 4 << 20 and not len(reader._buffer):  # type: ignore[attr-defined]
            writer.write(b"a" * 1024)
            await writer.drain()
            sent += 1024
            if sent % (64 * 1024) == 0:
                await asyncio.sleep(0.01)
    status, headers, reply = await read_reply(reader)
    assert status == 431 and "65536" in orjson.loads(reply)["error"] and sent < 1 << 20
    assert headers["connection"] == "close"


async def test_too_many_header_fields_is_431(listener: Listener) -> None:
    reader, writer = await connect(listener)
    fields = "".join(f"X-F{i}: v\r\n" for i in range(101))
    writer.write(request("/scheduler/filter", filter_args(listener), headers=fields))
    status, _, reply = await read_reply(reader)
    assert status == 431 and "100 header fields" in orjson.loads(reply)["error"]
    reader, writer = await connect(listener)
    fields = "".join(f"X-F{i}: v\r\n" for i in range(90))  # under both limits: served
    writer.write(request("/scheduler/filter", filter_args(listener), headers=fields))
    assert (await read_reply(reader))[0] == 200
    writer.close()


async def test_over_the_connection_cap_verbs_get_503_and_health_checks_still_answer(open_listener: Open) -> None:
    listener = await open_listener(max_connections=4)
    body = filter_args(listener)
    held = []
    for _ in range(4):
        reader, writer = await connect(listener)
        writer.write(request("/scheduler/filter", body))
        assert (await read_reply(reader))[0] == 200
        held.append(writer)
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/filter", body))
    status, headers, reply = await read_reply(reader)
    assert status == 503 and "server.max_connections" in orjson.loads(reply)["error"]
    assert headers["connection"] == "close" and await closed_by_server(reader)
    reader, writer = await connect(listener)
    writer.write(request("/healthz", method="GET"))
    assert (await read_reply(reader))[:3:2] == (200, b"ok")
    writer.close()
    reader, writer = await connect(listener)  # over the cap and silent: the head's deadline closes it
    assert (await asyncio.wait_for(reader.read(), 3)).startswith(b"HTTP/1.1 408 ")
    for w in held:
        w.close()


async def test_more_node_names_than_the_bound_is_413_naming_it(open_listener: Open) -> None:
    listener = await open_listener(max_body_bytes=8 << 20)
    go = GoWire(berth_of(listener).state)
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/filter", go.args(go.pod(), [f"n{j}" for j in range(MAX_NAMES + 1)])))
    status, _, reply = await read_reply(reader)
    assert status == 413 and f"{MAX_NAMES} node names" in orjson.loads(reply)["error"]
    spaced = b'{"Pod":' + go.pod() + b', "NodeNames": ' + orjson.dumps([f"n{j}" for j in range(MAX_NAMES + 1)]) + b"}"
    writer.write(request("/scheduler/prioritize", spaced))  # not Go's shape: the full decoder's path
    status, _, reply = await read_reply(reader)
    assert status == 413 and f"{MAX_NAMES} node names" in orjson.loads(reply)["error"]
    writer.write(request("/scheduler/filter", go.args(go.pod(), go.names()[:10])))
    assert (await read_reply(reader))[0] == 200
    writer.close()


async def test_a_preemption_past_its_bounds_is_413_naming_them(open_listener: Open) -> None:
    listener = await open_listener(max_body_bytes=32 << 20)
    go = GoWire(berth_of(listener).state)
    reader, writer = await connect(listener)
    many_nodes = {f"n{i}": ["u"] for i in range(MAX_PREEMPT_CANDIDATES + 1)}
    writer.write(request("/scheduler/preempt", go.preemption(go.pod(), many_nodes)))
    status, _, reply = await read_reply(reader)
    assert status == 413 and f"{MAX_PREEMPT_CANDIDATES} candidate nodes" in orjson.loads(reply)["error"]
    deep = {f"n{i}": [f"u{i}-{j}" for j in range(1000)] for i in range(1000)}
    writer.write(request("/scheduler/preempt", go.preemption(go.pod(), deep)))
    status, _, reply = await read_reply(reader)
    assert status == 413 and "victims" in orjson.loads(reply)["error"]
    writer.close()


# -- framing -------------------------------------------------------------------------------------


async def test_http10_with_transfer_encoding_closes_after_the_reply(listener: Listener) -> None:
    body = filter_args(listener)
    reader, writer = await connect(listener)
    writer.write(
        b"POST /scheduler/filter HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    status, headers, _ = await read_reply(reader)
    assert status == 200 and headers.get("connection") == "close" and await closed_by_server(reader)


async def test_an_upgrade_request_gets_exactly_one_reply(listener: Listener) -> None:
    reader, writer = await connect(listener)
    writer.write(
        request("/scheduler/filter", filter_args(listener), headers="Connection: Upgrade\r\nUpgrade: websocket\r\n")
    )
    status, _, reply = await read_reply(reader)
    assert status == 400 and "upgrade" in orjson.loads(reply)["error"]
    assert await asyncio.wait_for(reader.read(), 3) == b"", "one reply, then the connection closes"


async def test_bare_lf_line_endings_are_answered_at_once(listener: Listener) -> None:
    reader, writer = await connect(listener)
    writer.write(b"POST /scheduler/filter HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}")
    status, _, _ = await read_reply(reader)
    assert status == 400 and await closed_by_server(reader)


@pytest.mark.parametrize(
    ("coding", "status"),
    [
        (b"identity, chunked", 501),
        (b"gzip, chunked", 501),
        (b"chunked, chunked", 400),
    ],
)
async def test_transfer_codings_other_than_chunked_are_refused(listener: Listener, coding: bytes, status: int) -> None:
    reader, writer = await connect(listener)
    writer.write(
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    got, headers, reply = await read_reply(reader)
    assert got == status and "Transfer-Encoding" in orjson.loads(reply)["error"]
    assert headers["connection"] == "close" and await closed_by_server(reader)


async def slow_binds(listener: Listener, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    berth = berth_of(listener)
    real = berth.bind_body

    async def slow(raw: bytes) -> bytes:
        await asyncio.sleep(seconds)
        return await real(raw)

    monkeypatch.setattr(berth, "bind_body", slow)


async def test_a_request_to_another_path_behind_a_bind_is_answered_after_it(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    await slow_binds(listener, monkeypatch, 0.3)
    names = GoWire(berth_of(listener).state).names()
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/bind", GoWire.binding("b", "default", "uid-b", names[0])))
    await asyncio.sleep(0.05)
    writer.write(request("/debug/state", method="GET"))
    await asyncio.sleep(0.05)
    writer.write(request("/scheduler/filter", filter_args(listener)))
    first, second, third = (await read_reply(reader), await read_reply(reader), await read_reply(reader))
    assert set(orjson.loads(first[2])) == {"Error"}, "the bind's reply first"
    assert "nodeNamesCacheHits" in orjson.loads(second[2]), "then the GET"
    assert orjson.loads(third[2])["Error"] == "", "then the filter"
    writer.close()


async def test_the_queue_behind_a_bind_is_bounded_and_replies_stay_in_order(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    await slow_binds(listener, monkeypatch, 0.5)
    names = GoWire(berth_of(listener).state).names()
    body = filter_args(listener, 5)
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/bind", GoWire.binding("c", "default", "uid-c", names[0])))
    n = 2000
    writer.write(b"".join(request("/scheduler/filter", body) for _ in range(n)))
    await asyncio.sleep(0.3)
    conn = the_connection(listener)
    one_read = 256 * 1024 // len(request("/scheduler/filter", body)) + 1  # parsed past the bound at most
    assert len(conn._queue) <= verbs_http.QUEUE_COUNT + one_read, f"{len(conn._queue)} requests queued behind a bind"
    assert set(orjson.loads((await read_reply(reader))[2])) == {"Error"}
    for _ in range(n):
        reply = orjson.loads((await read_reply(reader))[2])
        # a filter's success: no error (a reply that fails some nodes, the best tier's, may leave the key out)
        assert reply.get("Error", "") == "" and ("NodeNames" in reply or "Nodes" in reply)
    writer.close()
