"""The hot-path connection handler (scheduler/verbs_http.py) over real sockets: HTTP/1.1 framing as Go's
client and other callers use it, hand-off of anything else to aiohttp, and bad HTTP as a 4xx."""

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from scheduler.app import Listener, _listen
from scheduler.config import Config
from scheduler.extender.http_framing import verb_of
from scheduler.extender.server import Berth
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder
from tests.conftest import GoWire, demo_cluster

LIMIT = 64 * 1024


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    config = Config()
    config.server.host, config.server.max_body_bytes = "127.0.0.1", LIMIT
    state = demo_cluster(config)
    opened = await _listen(Berth(state, Metrics(), Binder(state, None, None)), config, 0, None, verbs=True)
    yield opened
    await opened.close()


def request(path: str, body: bytes = b"", method: str = "POST", headers: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body


async def connect(listener: Listener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", listener.port)


def filter_args(listener: Listener, n: int = 30) -> bytes:
    go = GoWire(listener.verbs.berth.state)  # type: ignore[union-attr]
    return go.args(go.pod(), go.names()[:n])


def test_request_line_decides_the_handler() -> None:
    assert verb_of(b"POST /scheduler/filter HTTP/1.1") == b"filter"
    assert verb_of(b"POST /scheduler/bind HTTP/1.1") == b"bind"
    assert verb_of(b"GET /scheduler/filter HTTP/1.1") is None
    assert verb_of(b"POST /scheduler/filterx HTTP/1.1") is None
    assert verb_of(b"GET /healthz HTTP/1.1") is None


async def test_verb_reply_equals_the_verbs_own_bytes(listener: Listener) -> None:
    body = filter_args(listener)
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/filter", body))
    status, headers, reply = await read_reply(reader)
    assert status == 200 and headers["content-type"] == "application/json" and "date" in headers
    assert reply == listener.verbs.berth.filter_body(body)  # type: ignore[union-attr]
    assert len(listener.verbs.connections) == 1, "served by the hot-path handler"  # type: ignore[union-attr]
    writer.close()


async def test_requests_split_into_small_pieces_and_pipelined(listener: Listener) -> None:
    body = filter_args(listener)
    reader, writer = await connect(listener)
    raw = request("/scheduler/filter", body) + request("/scheduler/prioritize", body)
    for i in range(0, len(raw), 97):  # the request line itself arrives in pieces
        writer.write(raw[i : i + 97])
        await writer.drain()
        await asyncio.sleep(0)
    first, second = await read_reply(reader), await read_reply(reader)
    assert first[0] == second[0] == 200
    assert orjson.loads(first[2])["Error"] == ""
    assert {h["Host"] for h in orjson.loads(second[2])} <= set(orjson.loads(body)["NodeNames"])
    writer.close()


async def test_other_paths_are_handed_to_aiohttp_first_or_later(listener: Listener) -> None:
    reader, writer = await connect(listener)
    writer.write(request("/healthz", method="GET"))
    status, _, reply = await read_reply(reader)
    assert (status, reply) == (200, b"ok") and not listener.verbs.connections  # type: ignore[union-attr]
    writer.close()
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/filter", filter_args(listener)))
    assert (await read_reply(reader))[0] == 200
    writer.write(request("/debug/state", method="GET"))  # same connection, after a verb
    status, _, reply = await read_reply(reader)
    assert status == 200 and orjson.loads(reply)["nodeNamesCacheHits"] >= 0
    writer.write(request("/scheduler/filter", method="GET"))
    status, _, reply = await read_reply(reader)
    assert status == 405 and "use POST" in orjson.loads(reply)["error"]
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /scheduler/filter HTTP/1.1\r\nContent-Length: zz\r\n\r\n",
        b"POST /scheduler/filter HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\n\x00bad: header\r\n\r\n",
    ],
)
async def test_malformed_http_is_400_and_the_server_keeps_serving(listener: Listener, raw: bytes) -> None:
    reader, writer = await connect(listener)
    writer.write(raw)
    status, headers, reply = await read_reply(reader)
    assert status == 400 and "malformed HTTP request" in orjson.loads(reply)["error"]
    assert headers.get("connection") == "close" and await reader.read() == b""
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/filter", filter_args(listener)))
    assert (await read_reply(reader))[0] == 200
    writer.close()


async def test_oversized_bodies_are_413_by_header_or_by_chunks(listener: Listener) -> None:
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/filter", b"x" * (LIMIT + 1)))
    status, _, reply = await read_reply(reader)
    assert status == 413 and f"the limit is {LIMIT} bytes" in orjson.loads(reply)["error"]
    reader, writer = await connect(listener)
    chunk = b"x" * 40_000
    writer.write(
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2
        + b"0\r\n\r\n"
    )
    status, _, reply = await read_reply(reader)
    assert status == 413 and "80000 bytes" in orjson.loads(reply)["error"]
    writer.close()


async def test_chunked_body_and_expect_continue(listener: Listener) -> None:
    body = filter_args(listener)
    reader, writer = await connect(listener)
    writer.write(
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    half = len(body) // 2
    writer.write(b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:]))
    status, _, reply = await read_reply(reader)
    assert status == 200 and reply == listener.verbs.berth.filter_body(body)  # type: ignore[union-attr]
    writer.close()


async def test_bad_json_bind_and_connection_close(listener: Listener) -> None:
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/bind", b"{nope"))
    status, _, reply = await read_reply(reader)
    assert status == 400 and "not valid JSON" in orjson.loads(reply)["error"]
    names = GoWire(listener.verbs.berth.state).names()  # type: ignore[union-attr]
    writer.write(
        request("/scheduler/bind", GoWire.binding("p", "default", "uid-p", names[0]), headers="Connection: close\r\n")
    )
    status, headers, reply = await read_reply(reader)
    assert status == 200 and "Error" in orjson.loads(reply) and headers["connection"] == "close"
    assert await reader.read() == b""


async def test_requests_behind_a_bind_are_answered_after_it_in_order(listener: Listener) -> None:
    names = GoWire(listener.verbs.berth.state).names()  # type: ignore[union-attr]
    reader, writer = await connect(listener)
    writer.write(
        request("/scheduler/bind", GoWire.binding("q", "default", "uid-q", names[0]))
        + request("/scheduler/filter", filter_args(listener))
    )
    first, second = await read_reply(reader), await read_reply(reader)
    assert set(orjson.loads(first[2])) == {"Error"}, "the bind's reply comes first"
    assert orjson.loads(second[2])["NodeNames"] is not None, "then the filter queued behind it"
    writer.close()


async def test_an_endless_request_target_is_400_not_memory(listener: Listener) -> None:
    reader, writer = await connect(listener)
    writer.write(request("/scheduler/filter", filter_args(listener)))
    assert (await read_reply(reader))[0] == 200
    writer.write(b"POST /scheduler/filter" + b"x" * 20_000)
    status, headers, reply = await read_reply(reader)
    assert status == 400 and "request target longer than 8192 bytes" in orjson.loads(reply)["error"]
    assert headers["connection"] == "close"
    writer.close()
