"""Requests kube-scheduler would never send: each is a 4xx naming what is wrong, never a 500, and the
server answers a valid filter exactly as before afterwards."""

import asyncio
import gzip
import logging
import socket
import struct

import orjson
import pytest
from aiohttp.test_utils import TestClient

from scheduler.config import Config
from scheduler.extender.debug import YAML_LIMIT
from scheduler.extender.http_framing import OVERFLOW
from scheduler.extender.wire import MAX_NAME
from scheduler.observability.logs import ERROR_LIMIT, EXTRA_LIMIT, MSG_LIMIT, JsonLines
from scheduler.serving.guard import FLOOR
from tests.conftest import GoWire, Serve, demo_cluster

LIMIT = 16 * 1024


@pytest.fixture
async def small(serve: Serve) -> TestClient:
    """Berth with a small body limit (server.max_body_bytes)."""
    config = Config()
    config.server.max_body_bytes = LIMIT
    return await serve(demo_cluster(config))


async def post(client: TestClient, path: str, body: bytes) -> tuple[int, str]:
    r = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    text = await r.text()
    assert "Content-Length" in r.headers
    return r.status, text


async def still_serves(client: TestClient, go: GoWire, expected: bytes | None = None) -> bytes:
    """A valid filter gets a valid reply; with `expected`, byte for byte the reply it got before."""
    r = await client.post("/scheduler/filter", data=go.args(go.pod(), go.names()[:40], True))
    body = await r.read()
    assert r.status == 200
    reply = orjson.loads(body)
    assert reply["Error"] == "" and reply["NodeNames"]
    if expected is not None:
        assert body == expected
    return body


def pod_args(go: GoWire, **replace: object) -> bytes:
    args: dict[str, object] = {"Pod": go.pod_object(), "Nodes": None, "NodeNames": go.names()[:3]}
    args.update(replace)
    return orjson.dumps({k: v for k, v in args.items() if v is not DROP})


DROP = object()
MALFORMED = [b"", b"{", b'{"Pod":', b"nul", b'{"Pod":{}}x', b"\xff\xfe{}", b'{"Pod":{"a":1,}}', b"[" * 5000]


@pytest.mark.parametrize("verb", ["filter", "prioritize", "bind", "preempt"])
@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
async def test_malformed_json_is_400(client: TestClient, go: GoWire, verb: str, body: bytes) -> None:
    before = await still_serves(client, go)
    status, text = await post(client, f"/scheduler/{verb}", body)
    assert status == 400
    error = orjson.loads(text)["error"]
    assert "not valid JSON" in error or (body == b"" and "empty request body" in error), error
    await still_serves(client, go, before)


def wrong_shapes(go: GoWire) -> list[tuple[str, bytes, str]]:
    """(verb, body, what the error must name)"""
    pod = go.pod_object()
    bind = {"PodName": "p", "PodNamespace": "default", "PodUID": "u", "Node": go.names()[0]}
    out = []
    for verb in ("filter", "prioritize"):
        out += [
            (verb, b"[]", "ExtenderArgs"),
            (verb, b'"Pod"', "ExtenderArgs"),
            (verb, pod_args(go, Pod=DROP), "ExtenderArgs.Pod"),
            (verb, pod_args(go, Pod=[pod]), "ExtenderArgs.Pod"),
            (verb, pod_args(go, Pod="pod"), "ExtenderArgs.Pod"),
            (verb, pod_args(go, NodeNames="node-a"), "ExtenderArgs.NodeNames"),
            (verb, pod_args(go, NodeNames={"node-a": 1}), "ExtenderArgs.NodeNames"),
            (verb, pod_args(go, NodeNames=["node-a", 7]), "ExtenderArgs.NodeNames[1]"),
            (verb, pod_args(go, NodeNames=[None]), "ExtenderArgs.NodeNames[0]"),
            (verb, pod_args(go, NodeNames=None, Nodes={"items": {"a": 1}}), "ExtenderArgs.Nodes.items"),
            (verb, pod_args(go, NodeNames=None, Nodes={"items": {}}), "ExtenderArgs.Nodes.items"),
            (verb, pod_args(go, NodeNames=None, Nodes={"items": "node"}), "ExtenderArgs.Nodes.items"),
            (verb, pod_args(go, NodeNames=None, Nodes={"items": [{"metadata": {}}]}), "ExtenderArgs.Nodes.items[0]"),
            (verb, pod_args(go, NodeNames=None, Nodes=["node"]), "ExtenderArgs.Nodes"),
        ]
    for field in bind:
        where = f"ExtenderBindingArgs.{field}"
        out.append(("bind", orjson.dumps({k: v for k, v in bind.items() if k != field}), where))
        out += [("bind", orjson.dumps({**bind, field: bad}), where) for bad in (5, None, ["p"])]
    node = go.names()[0]
    meta = "ExtenderPreemptionArgs.NodeNameToMetaVictims"
    victims = "ExtenderPreemptionArgs.NodeNameToVictims"
    for bad, where in [
        ({"Pod": "x", "NodeNameToMetaVictims": {}}, "ExtenderPreemptionArgs.Pod"),
        ({"NodeNameToMetaVictims": {}}, "ExtenderPreemptionArgs.Pod"),
        ({"Pod": pod, "NodeNameToMetaVictims": []}, meta),
        ({"Pod": pod, "NodeNameToMetaVictims": {node: []}}, f"{meta}[{node}]"),
        ({"Pod": pod, "NodeNameToMetaVictims": {node: {"Pods": {"UID": "u"}}}}, f"{meta}[{node}].Pods"),
        ({"Pod": pod, "NodeNameToMetaVictims": {node: {"Pods": ["u"]}}}, f"{meta}[{node}].Pods"),
        # empty, but not a list: `or []` took these as no victims (a 200 naming none)
        ({"Pod": pod, "NodeNameToMetaVictims": {node: {"Pods": {}}}}, f"{meta}[{node}].Pods"),
        ({"Pod": pod, "NodeNameToMetaVictims": {node: {"Pods": ""}}}, f"{meta}[{node}].Pods"),
        ({"Pod": pod, "NodeNameToMetaVictims": {node: {"Pods": [{"UID": 5}]}}}, f"{meta}[{node}].Pods"),
        (
            {"Pod": pod, "NodeNameToMetaVictims": {node: {"Pods": [], "NumPDBViolations": "1"}}},
            f"{meta}[{node}].NumPDBViolations",
        ),
        (
            {"Pod": pod, "NodeNameToMetaVictims": {node: {"Pods": [], "NumPDBViolations": True}}},
            f"{meta}[{node}].NumPDBViolations",
        ),
        ({"Pod": pod, "NodeNameToVictims": "x"}, victims),
        ({"Pod": pod, "NodeNameToVictims": {node: {"Pods": [1]}}}, f"{victims}[{node}].Pods"),
        ({"Pod": pod, "NodeNameToVictims": {node: {"Pods": [{"metadata": "x"}]}}}, f"{victims}[{node}].Pods"),
        ({"Pod": pod, "NodeNameToVictims": {node: {"Pods": [{"metadata": []}]}}}, f"{victims}[{node}].Pods"),
        ({"Pod": pod, "NodeNameToVictims": {node: {"Pods": [{"metadata": {"uid": 5}}]}}}, f"{victims}[{node}].Pods"),
        ({"Pod": pod, "NodeNameToVictims": {node: {"Pods": [{"metadata": {"uid": {}}}]}}}, f"{victims}[{node}].Pods"),
        (
            {"Pod": pod, "NodeNameToVictims": {node: {"Pods": [], "NumPDBViolations": True}}},
            f"{victims}[{node}].NumPDBViolations",
        ),
    ]:
        out.append(("preempt", orjson.dumps(bad), where))
    return out


async def test_wrong_shape_is_400_naming_the_field(client: TestClient, go: GoWire) -> None:
    before = await still_serves(client, go)
    for verb, body, field in wrong_shapes(go):
        status, text = await post(client, f"/scheduler/{verb}", body)
        assert status == 400, (verb, body[:200], text)
        assert field in orjson.loads(text)["error"], (verb, body[:200], text)
    await still_serves(client, go, before)


@pytest.mark.parametrize("verb", ["filter", "prioritize", "bind", "preempt"])
async def test_body_over_the_limit_is_413(small: TestClient, go: GoWire, verb: str) -> None:
    before = await still_serves(small, go)
    body = go.args(go.pod(), go.names()[:200], False)
    assert len(body) > LIMIT
    status, text = await post(small, f"/scheduler/{verb}", body)
    assert status == 413
    assert "max_body_bytes" in orjson.loads(text)["error"]
    await still_serves(small, go, before)


async def test_body_at_the_limit_is_served(small: TestClient, go: GoWire) -> None:
    body = go.args(go.pod(), go.names()[:5], True)
    padded = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(padded) == LIMIT
    status, _ = await post(small, "/scheduler/filter", padded)
    assert status == 200
    status, _ = await post(small, "/scheduler/filter", padded[:-1] + b" }")
    assert status == 413


@pytest.mark.parametrize("verb", ["filter", "prioritize", "bind", "preempt"])
async def test_wrong_method_is_405(client: TestClient, go: GoWire, verb: str) -> None:
    before = await still_serves(client, go)
    for method in ("GET", "PUT", "DELETE"):
        r = await client.request(method, f"/scheduler/{verb}")
        assert r.status == 405
        assert "POST" in orjson.loads(await r.read())["error"]
    await still_serves(client, go, before)


@pytest.mark.parametrize("path", ["/scheduler/filterx", "/scheduler", "/filter", "/scheduler/filter/", "/debug/x"])
async def test_unknown_path_is_404(client: TestClient, go: GoWire, path: str) -> None:
    before = await still_serves(client, go)
    status, text = await post(client, path, go.args(go.pod(), go.names()[:3], True))
    assert status == 404 and orjson.loads(text)["error"]
    await still_serves(client, go, before)


async def test_a_verb_posted_to_the_root_is_405_naming_get(client: TestClient, go: GoWire) -> None:
    """GET / lists the endpoints; a POST there is the wrong method, answered in JSON like the rest."""
    before = await still_serves(client, go)
    status, text = await post(client, "/", go.args(go.pod(), go.names()[:3], True))
    assert status == 405 and "GET" in orjson.loads(text)["error"]
    await still_serves(client, go, before)


# -- HTTP itself, over raw sockets (an adversarial pass over the listener) ---------------------------------
async def exchange(client: TestClient, data: bytes, half_close: bool = False) -> list[tuple[int, bytes]]:
    """Send `data` on a new connection (then shut our sending side, with `half_close`) and read until the
    server closes: the (status, body) of each reply, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(data)
    if half_close:
        writer.write_eof()
    raw, out = b"", []
    while True:
        more = await asyncio.wait_for(reader.read(65536), 10)
        if not more:
            break
        raw += more
        while (end := raw.find(b"\r\n\r\n")) >= 0:
            lines = raw[:end].decode("latin-1").split("\r\n")
            assert lines[0][:9] in ("HTTP/1.1 ", "HTTP/1.0 "), lines[0]
            fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
            length = int(fields.get("content-length", "0"))
            if len(raw) < end + 4 + length:
                break
            out.append((int(lines[0].split()[1]), raw[end + 4 : end + 4 + length]))
            raw = raw[end + 4 + length :]
    writer.close()
    assert not raw, raw[:200]
    return out


def raw_post(path: str, body: bytes, headers: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


def error_of(body: bytes) -> str:
    error = orjson.loads(body)["error"]
    assert isinstance(error, str) and error
    return error


async def test_a_half_closed_connection_still_gets_its_replies(client: TestClient, go: GoWire) -> None:
    """A request, then the caller shuts its sending side (`nc -N`, some clients): each request sent is
    answered, then the connection closes. A bind's reply (awaited) and everything aiohttp serves were lost."""
    before = await still_serves(client, go)
    filter_body = go.args(go.pod(), go.names()[:40], True)
    bind = go.binding("nobody", "default", "u-1", go.names()[0])
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for data, statuses in [
        (raw_post("/scheduler/filter", filter_body), [200]),
        (raw_post("/scheduler/bind", bind), [200]),
        (raw_post("/scheduler/bind", bind) + raw_post("/scheduler/filter", filter_body), [200, 200]),
        (get, [200]),
        (get.replace(b"1.1", b"1.0"), [200]),
        (b"GET /debug/state HTTP/1.1\r\nHost: x\r\n\r\n", [200]),
        (get + b"GET /debug/state HTTP/1.1\r\nHost: x\r\n\r\n" + get, [200, 200, 200]),  # pipelined to aiohttp
    ]:
        replies = await exchange(client, data, half_close=True)
        assert [status for status, _ in replies] == statuses, (data[:60], replies)
    assert (
        "unknown to Berth"
        in orjson.loads((await exchange(client, raw_post("/scheduler/bind", bind), True))[0][1])["Error"]
    )
    await still_serves(client, go, before)


async def test_a_request_cut_short_by_a_half_close_is_400(client: TestClient, go: GoWire) -> None:
    before = await still_serves(client, go)
    body = go.args(go.pod(), go.names()[:40], True)
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for data, statuses in [
        (raw_post("/scheduler/filter", body)[:-10], [400]),  # the body cut short
        (b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Le", [400]),  # the head
        (b"POST /scheduler/fil", [400]),  # the request line
        (get[:-2], [400]),  # a head aiohttp would have served
        (get + raw_post("/debug/explain", go.pod())[:-10], [200, 400]),  # a body aiohttp reads (it held it)
        (get + raw_post("/scheduler/filter", body)[:-10], [200, 400]),
    ]:
        replies = await exchange(client, data, half_close=True)
        assert [status for status, _ in replies] == statuses, (data[:60], replies)
        assert "half-closed before the request was complete" in error_of(replies[-1][1])
    assert await exchange(client, b"", half_close=True) == []  # nothing sent, nothing owed
    await still_serves(client, go, before)


MALFORMED_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"FOO /scheduler/filter HTTP/1.1\r\nHost: x\r\n\r\n",
    b"post /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /healthz\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /debug/explain HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /debug/explain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST https://[::1/healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED_HTTP, ids=range(len(MALFORMED_HTTP)))
async def test_malformed_http_to_aiohttp_is_a_json_400_and_no_traceback(
    client: TestClient, go: GoWire, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answered these in text/plain and logged each at error level with a traceback (any client
    could fill the log with what reads as crashes): a JSON error now, as every other refusal, and no trace."""
    before = await still_serves(client, go)
    replies = await exchange(client, raw)
    assert [status for status, _ in replies] == [400], replies
    assert error_of(replies[0][1])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.records
    await still_serves(client, go, before)


@pytest.mark.parametrize("path", [b"/scheduler/filter", b"/healthz", b"/debug/state"])
@pytest.mark.parametrize("line", [b"POST %s HTTP/2.0", b"GET %s HTTP/1.2", b"GET %s", b"PRI * HTTP/2.0"])
async def test_request_lines_not_http11_or_http10_are_400(
    client: TestClient, go: GoWire, path: bytes, line: bytes
) -> None:
    """llhttp served a verb sent as HTTP/2.0; aiohttp answered `HTTP/2.0 405 ...` and, to a line with no
    version, `HTTP/0.9 200 ...` with headers: status lines an HTTP/1.1 client cannot read."""
    before = await still_serves(client, go)
    data = (line % path if b"%s" in line else line) + b"\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    replies = await exchange(client, data)  # exchange() asserts each status line is HTTP/1.1 or HTTP/1.0
    assert [status for status, _ in replies] == [400], replies
    assert "HTTP/1.1" in error_of(replies[0][1])
    await still_serves(client, go, before)


async def test_empty_lines_before_the_request_line_are_ignored(client: TestClient, go: GoWire) -> None:
    """RFC 9112 2.2: a server ignores CRLFs before a request line; the first-line check took the empty line
    for the request line and refused it."""
    before = await still_serves(client, go)
    body = go.args(go.pod(), go.names()[:40], True)
    for crlfs in (b"\r\n", b"\r\n" * 50_000):
        replies = await exchange(client, crlfs + raw_post("/scheduler/filter", body, "Connection: close\r\n"))
        assert [status for status, _ in replies] == [200], replies
        replies = await exchange(client, crlfs + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert replies == [(200, b"ok")]
    await still_serves(client, go, before)


async def test_a_gzip_body_is_read_as_sent_not_inflated(client: TestClient, go: GoWire) -> None:
    """aiohttp inflated Content-Encoding: gzip up to max_body_bytes: 250 KB of gzip held 250 MB per request.
    Nothing calling Berth compresses; a compressed body is read as the bytes sent, on both paths."""
    before = await still_serves(client, go)
    body = gzip.compress(go.args(go.pod(), go.names()[:40], True))
    verb = raw_post("/scheduler/filter", body, "Content-Encoding: gzip\r\nConnection: close\r\n")
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for data, expected in [(verb, [400]), (get + verb, [200, 400])]:  # the hot path, then aiohttp's
        replies = await exchange(client, data)
        assert [status for status, _ in replies] == expected, replies
        assert "not valid JSON" in error_of(replies[-1][1])
    bomb = gzip.compress(b'{"Pod":"' + b"a" * (8 << 20) + b'"}')
    replies = await exchange(
        client, get + raw_post("/debug/explain", bomb, "Content-Encoding: gzip\r\nConnection: close\r\n")
    )
    assert [status for status, _ in replies] == [200, 400], replies
    assert "neither JSON nor YAML" in error_of(replies[-1][1])
    await still_serves(client, go, before)


async def small_server(serve: Serve, **server: float) -> TestClient:
    config = Config()
    for key, value in server.items():
        setattr(config.server, key, value)
    return await serve(demo_cluster(config))


async def test_a_flood_of_silent_connections_does_not_shut_out_health_checks(serve: Serve, go: GoWire) -> None:
    """Past server.max_connections, OVERFLOW connections wait for their first line; past those, every new
    connection was closed unanswered, health checks included. The oldest waiting one now gives way, with a 503."""
    client = await small_server(serve, max_connections=2)
    flood = [await asyncio.open_connection("127.0.0.1", client.port) for _ in range(2 + OVERFLOW + 3)]
    await asyncio.sleep(0.1)
    assert await exchange(client, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == [(200, b"ok")]
    for reader, _ in flood[2:6]:  # the oldest over the cap: each answered before its close
        reply = await asyncio.wait_for(reader.read(), 5)
        assert reply.startswith(b"HTTP/1.1 503 ") and b"server.max_connections" in reply, reply
    for _, writer in flood:
        writer.close()


async def test_kept_alive_clients_at_the_guard_cap_give_way_to_new_ones(serve: Serve) -> None:
    """As many kept-alive clients as the cap of aiohttp's connections, each served once, shut every later
    health check out (closed unanswered) until aiohttp's keep-alive expired: the longest idle now closes."""
    client = await small_server(serve, max_connections=4)  # the guard keeps its floor of FLOOR
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    held = []
    for _ in range(FLOOR):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(get)
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200 ")
        held.append((reader, writer))
    assert await exchange(client, get.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")) == [(200, b"ok")]
    assert await asyncio.wait_for(held[0][0].read(), 5) == b""  # the longest idle gave way
    for reader, writer in held[1:]:  # the others still served
        writer.write(get)
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200 ")
        writer.close()
    guard = client.server.listener.verbs.guard  # type: ignore[attr-defined]
    busy = [await asyncio.open_connection("127.0.0.1", client.port) for _ in range(FLOOR)]
    for _, writer in busy:  # each mid-request: none can give way, so a newcomer is refused, and answered
        writer.write(get[:-4])
    while sum(bool(c.waiting_since) for c in guard.open) < FLOOR:  # handed to aiohttp, each
        await asyncio.sleep(0.01)
    assert await exchange(client, get) == [
        (503, b'{"error":"too many connections for health, metrics and debug; retry"}')
    ]
    for _, writer in busy:
        writer.close()


async def test_a_request_trickling_to_aiohttp_gets_408_at_the_deadline(serve: Serve) -> None:
    """aiohttp's connections were closed at the deadline unanswered; the verb connections got a 408."""
    client = await small_server(serve, request_timeout_seconds=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"POST /debug/explain HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    reply = await asyncio.wait_for(reader.read(), 5)
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert "did not arrive within 0.5 s" in error_of(reply.partition(b"\r\n\r\n")[2])
    writer.close()


@pytest.mark.parametrize("path", ["/debug/explain", "/scheduler/filter"])
async def test_a_caller_leaving_mid_body_logs_no_traceback(
    client: TestClient, go: GoWire, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp logged each caller that left before sending its whole body as a 500 with a traceback, at error
    level: any client could fill the log with what reads as crashes. A debug line now."""
    caplog.set_level(logging.DEBUG, logger="berth.server")
    before = await still_serves(client, go)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # aiohttp serves the connection from here
    await asyncio.wait_for(reader.readuntil(b"ok"), 5)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n".encode())
    await asyncio.wait_for(reader.readuntil(b"100 Continue\r\n\r\n"), 5)  # its handler has begun
    writer.write(b"{")
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # gone, mid-body: a reset

    def handled() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno >= logging.ERROR or "left before its reply" in r.message]

    for _ in range(500):  # until aiohttp has handled the loss (a bounded wait, not a timing threshold)
        if handled():
            break
        await asyncio.sleep(0.01)
    assert [r.levelname for r in handled()] == ["DEBUG"], [(r.levelname, r.message) for r in caplog.records]
    await still_serves(client, go, before)


async def test_a_bind_naming_no_real_object_is_400_naming_the_field(client: TestClient, go: GoWire) -> None:
    """Kubernetes names have at most 253 characters: a 5 MB PodName was served (and logged whole)."""
    before = await still_serves(client, go)
    bind = {"PodName": "p", "PodNamespace": "default", "PodUID": "u", "Node": go.names()[0]}
    for field in bind:
        status, text = await post(client, "/scheduler/bind", orjson.dumps({**bind, field: "x" * MAX_NAME}))
        assert status == 200, (field, text)  # as long as a name can be: served (refused in Error: no such pod)
        status, text = await post(client, "/scheduler/bind", orjson.dumps({**bind, field: "x" * (MAX_NAME + 1)}))
        assert status == 400 and f"ExtenderBindingArgs.{field}" in error_of(text.encode()), (field, text)
    await still_serves(client, go, before)


async def test_log_lines_stay_bounded_whatever_a_request_names(
    client: TestClient, go: GoWire, caplog: pytest.LogCaptureFixture
) -> None:
    """Records quote what a request named (pod names, nodes, reasons): a preempt for a pod named with 5 MB
    logged 10 MB. Each line's parts are bounded."""
    caplog.set_level(logging.DEBUG)
    pod = go.pod_object()
    pod["metadata"]["name"] = "x" * (5 << 20)  # no pod's name (refused since: at most 253), still logged bounded
    huge_node = "n" * (5 << 20)
    for verb, body, expected in [
        ("preempt", {"Pod": pod, "NodeNameToMetaVictims": {go.names()[0]: {"Pods": [{"UID": "u"}]}}}, 400),
        ("preempt", {"Pod": go.pod_object(), "NodeNameToMetaVictims": {huge_node: {"Pods": [{"UID": "u"}]}}}, 200),
        ("filter", {"Pod": pod, "NodeNames": go.names()[:3]}, 200),
        ("filter", {"Pod": go.pod_object(), "NodeNames": [huge_node]}, 200),
        ("prioritize", {"Pod": pod, "NodeNames": go.names()[:3]}, 200),
    ]:
        status, _ = await post(client, f"/scheduler/{verb}", orjson.dumps(body))
        assert status == expected, verb
    assert caplog.records
    limit = MSG_LIMIT + 10 * EXTRA_LIMIT + ERROR_LIMIT
    assert max(len(JsonLines().format(r)) for r in caplog.records) < limit
    await still_serves(client, go)


LAUGHS = (
    b"a: &a [xxxxxxxx, xxxxxxxx, xxxxxxxx, xxxxxxxx, xxxxxxxx, xxxxxxxx, xxxxxxxx, xxxxxxxx, xxxxxxxx]\n"
    + b"".join(b"%c: &%c [%s]\n" % (c, c, b", ".join([b"*%c" % (c - 1)] * 9)) for c in b"bcdefghi")
)


async def test_explain_yaml_is_plain_data_of_a_bounded_size(client: TestClient, go: GoWire) -> None:
    """POST /debug/explain's YAML: an int of 5,000 digits and keys that are not strings were 500s; nine
    lines of aliases expanded to gigabytes in the error naming the value; a megabyte of YAML held the event
    loop the verbs share for seconds. JSON, of any size under max_body_bytes, is served as before."""
    before = await still_serves(client, go)
    spec = b"spec: {containers: [{name: c, resources: {requests: {cpu: '1'}}}]}\n"
    for body, status, reason in [
        (LAUGHS + b"metadata: {name: x, annotations: {berth.dev/topology: *i}}\n" + spec, 400, "aliases"),
        (b"metadata: {name: x}\nspec: {priority: " + b"9" * 5000 + b", containers: []}\n", 400, "4300 digits"),
        (b"metadata: {name: !!binary aGVsbG8=}\n" + spec, 400, "not JSON serializable"),
        (b"metadata: {name: x, labels: {a: " + b"b" * YAML_LIMIT + b"}}\n" + spec, 413, "at most"),
    ]:
        status_got, text = await post(client, "/debug/explain", body)
        assert status_got == status and reason in error_of(text.encode()), (body[:80], status_got, text[:300])
    status, text = await post(client, "/debug/explain", b"metadata: {name: x, labels: {1: 2}}\n" + spec)
    assert status == 200 and orjson.loads(text)["pod"] == "default/x", text[:300]
    pod = go.pod_object()
    pod["metadata"]["annotations"]["padding"] = "p" * (2 * YAML_LIMIT)
    status, text = await post(client, "/debug/explain", orjson.dumps(pod))
    assert status == 200, text[:300]
    await still_serves(client, go, before)


@pytest.mark.parametrize("expect", ["", "Expect: 100-continue\r\n"])
async def test_a_body_announced_over_the_limit_is_413_before_it_is_read_on_aiohttp_too(
    small: TestClient, go: GoWire, expect: str
) -> None:
    """The hot path refuses a Content-Length over max_body_bytes at once; aiohttp read the body up to the limit
    first, and answered `Expect: 100-continue` with 100 Continue: a client had to send it all to learn."""
    before = await still_serves(small, go)
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for path in ("/scheduler/filter", "/debug/explain"):
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{expect}Content-Length: {LIMIT + 1}\r\n\r\n".encode()
        replies = [r for r in await exchange(small, get + head, half_close=True) if r[0] != 100]
        assert [status for status, _ in replies] == [200, 413], (path, replies)
        assert "max_body_bytes" in error_of(replies[1][1])
    await still_serves(small, go, before)


async def test_an_expectation_other_than_100_continue_is_417_on_both_paths(client: TestClient, go: GoWire) -> None:
    """RFC 9110 10.1.1: a server that cannot meet an Expect answers 417. The verb path served `Expect: 200-ok`
    as if it were not there (Go's net/http and aiohttp answer 417); now both paths refuse it, before the body."""
    before = await still_serves(client, go)
    body = go.args(go.pod(), go.names()[:3], True)
    for path in ("/scheduler/filter", "/debug/explain"):
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: {len(body)}\r\n\r\n"
        replies = await exchange(client, head.encode() + body, half_close=True)
        assert replies and replies[0][0] == 417, (path, replies)
    await still_serves(client, go, before)


async def test_http11_without_one_host_field_is_400_on_both_paths(client: TestClient, go: GoWire) -> None:
    """RFC 9112 3.2: an HTTP/1.1 request without Host, or any request with two, is a 400. aiohttp (the other
    paths) and Go's net/http answer so; the verb path served both. HTTP/1.0 may leave Host out."""
    before = await still_serves(client, go)
    bodies = {"/scheduler/filter": go.args(go.pod(), go.names()[:3], True), "/debug/explain": go.pod()}
    for path, body in bodies.items():
        for hosts, version, status in (("", "1.1", 400), ("Host: a\r\nHost: b\r\n", "1.1", 400), ("", "1.0", 200)):
            head = f"POST {path} HTTP/{version}\r\n{hosts}Content-Length: {len(body)}\r\n\r\n"
            replies = await exchange(client, head.encode() + body, half_close=True)
            assert replies and replies[0][0] == status, (path, hosts, version, replies)
            if status == 400:
                assert "Host" in error_of(replies[0][1]), replies
    await still_serves(client, go, before)


async def test_a_first_byte_that_cannot_begin_a_request_is_400_at_once(client: TestClient, go: GoWire) -> None:
    """A TLS ClientHello (a caller set for https) or other binary has no line end: the verb port held it
    until the head's deadline (10 s, then a 408). A request line begins with a method token, so the first
    byte decides: 400 at once, naming TLS for a handshake record."""
    before = await still_serves(client, go)
    hello = bytes.fromhex("160301020001") + b"\x00" * 64  # a TLS record header, then a ClientHello's start
    for data, words in ((hello, "TLS"), (b"\r\n\x00\x01binary", "request line"), (b"{json}", "request line")):
        replies = await asyncio.wait_for(exchange(client, data), 2)
        assert len(replies) == 1 and replies[0][0] == 400, (data, replies)
        assert words in error_of(replies[0][1]), replies
    await still_serves(client, go, before)


async def test_no_reply_names_the_software_version(client: TestClient, go: GoWire) -> None:
    """aiohttp's replies carried `Server: Python/3.11 aiohttp/3.x`, its refusals of unparsable requests too:
    a list of which published flaws to try. Every reply aiohttp writes now says `Server: berth`."""
    r = await client.get("/healthz")
    assert r.status == 200 and r.headers["Server"] == "berth"
    r = await client.get("/no-such-path")
    assert r.status == 404 and r.headers["Server"] == "berth"
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Field\r\n\r\n")  # aiohttp's parser refuses it
    head = (await asyncio.wait_for(reader.read(), 10)).split(b"\r\n\r\n", 1)[0]
    writer.close()
    assert head.startswith(b"HTTP/1.0 400") and b"\r\nServer: berth" in head, head
    assert b"aiohttp" not in head and b"Python" not in head


async def test_error_counts_name_no_path_a_caller_made_up(client: TestClient) -> None:
    """berth_errors_total's verb label was the last segment of any path: each made-up path with an oversized
    Content-Length (the health port takes them unauthenticated) added a series for the process's life.
    Now the label is a verb, explain, http or other."""
    for i in range(20):
        head = f"POST /made-up-{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"
        replies = await exchange(client, head.encode(), half_close=True)
        assert replies and replies[0][0] == 413, replies
    r = await client.get("/metrics")
    series = [line for line in (await r.text()).splitlines() if line.startswith("berth_errors_total{")]
    assert series and not any("made-up" in line for line in series), series
    assert 'berth_errors_total{kind="too_large",verb="other"} 20.0' in series, series


async def test_bodies_still_arriving_are_bounded_over_all_connections(small: TestClient, go: GoWire) -> None:
    """Each body is bounded by server.max_body_bytes; a thousand connections trickling one each could hold a
    thousand times it. Together they are held to twice the limit: the one that would pass it gets a 503, the
    others are served when their bodies complete, and what they held is given back."""
    verbs = small.server.listener.verbs  # type: ignore[attr-defined]
    body = go.args(go.pod(), go.names()[:40], True)
    assert len(body) < LIMIT
    padded = body[:-1] + b" " * (LIMIT - 1 - len(body)) + b"}"  # valid JSON of LIMIT - 1 bytes
    head = b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(padded)
    part = 3 * LIMIT // 4
    held = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
        writer.write(head + padded[:part])
        held.append((reader, writer))
    while verbs.receiving < 2 * part:
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
    writer.write(head + padded[:part])  # 3 x 0.75 of the limit: over twice it
    reply = await asyncio.wait_for(reader.read(), 5)
    assert reply.startswith(b"HTTP/1.1 503 ") and b"server busy: request bodies still arriving" in reply, reply
    writer.close()
    assert verbs.receiving == 2 * part  # the refused body's share given back at once, not after its linger
    for reader, writer in held:
        writer.write(padded[part:])
        status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 200 "), status
        writer.close()
    assert verbs.receiving == 0
    await still_serves(small, go)


async def test_requests_arriving_to_aiohttp_are_bounded_over_all_connections(small: TestClient, go: GoWire) -> None:
    """The verb connections' bodies are held to twice the limit together; aiohttp's connections (the debug
    views, explain, a verb from a client whose first request was not one) were each bounded by the limit
    alone, so its cap of connections times 256 MB could be held. Now they are held to twice it too."""
    guard = small.server.listener.verbs.guard  # type: ignore[attr-defined]
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body = orjson.dumps(go.pod_object())
    padded = body[:-1] + b" " * (LIMIT - 1 - len(body)) + b"}"  # a valid pod of LIMIT - 1 bytes
    head = b"POST /debug/explain HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(padded)
    part = 3 * LIMIT // 4
    held = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
        writer.write(get)  # aiohttp serves the connection from here
        assert await _one_reply(reader) == 200
        writer.write(head + padded[:part])
        held.append((reader, writer))
    sent = len(head) + part  # heads count too: all of it is what aiohttp holds
    while guard.receiving < 2 * sent:  # a bounded wait: each step is a loop turn of the server
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
    writer.write(get)
    assert await _one_reply(reader) == 200
    writer.write(head + padded[:part])  # 3 x 0.75 of the limit: over twice it
    reply = await asyncio.wait_for(reader.read(), 5)
    assert reply.startswith(b"HTTP/1.1 503 ") and b"server busy: requests still arriving" in reply, reply
    writer.close()
    assert guard.receiving == 2 * sent and guard.busy == 1  # the refused one's share given back at once
    for reader, writer in held:
        writer.write(padded[part:])
        status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 200 "), status
        writer.close()
    assert guard.receiving == 0  # given back as each reply began
    await still_serves(small, go)


async def _one_reply(reader: asyncio.StreamReader) -> int:
    """Read one reply with a Content-Length; its status."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return int(head.split(b" ")[1])


async def test_a_names_tail_that_goes_on_is_not_a_cache_key(client: TestClient, go: GoWire) -> None:
    """A request whose NodeNames array is followed by more keys (`["a"],"Pod":{..}}`) was remembered by those
    bytes whole; the next request ending in them took its Pod from its own head, not from the later key that
    JSON (and Go) keeps. Each must be answered as the same JSON with a space after it (never the fast path)."""
    names = orjson.dumps(go.names()[:2])
    tail = b',"NodeNames":' + names + b',"Pod":{},"More":[]}'  # ends in `]}` as a Go-shaped request does
    for head in (
        b'{"Pod":' + go.pod() + b',"Nodes":null',
        b'{"Pod":[],"Nodes":null',
        b'{"Pod":' + go.pod("web") + b',"Nodes":null',
    ):
        for verb in ("prioritize", "filter"):
            fast = await post(client, f"/scheduler/{verb}", head + tail)
            full = await post(client, f"/scheduler/{verb}", head + tail + b" ")
            assert fast == full, (verb, head[:40], fast, full)
    await still_serves(client, go)
