"""server.health_port: a listener of /healthz, /readyz and /metrics only, beside the verbs' (which can then
stay on 127.0.0.1); and the keys' validation."""

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import trustme

from scheduler.app import _listeners, tls_context
from scheduler.config import Config, ConfigError, load_config
from scheduler.extender.server import Berth
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder
from tests.conftest import GoWire, demo_cluster


async def test_health_listener_serves_health_and_metrics_only(unused_tcp_port_factory: Callable[[], int]) -> None:
    state = demo_cluster(nodes=5)
    srv = state.config.server
    srv.host, srv.port = "127.0.0.1", 0
    srv.health_host, srv.health_port = "127.0.0.1", unused_tcp_port_factory()
    runners = await _listeners(Berth(state, Metrics(), Binder(state, None, None)), state.config, None)
    try:
        assert len(runners) == 2
        verbs, health = (f"http://127.0.0.1:{r.port}" for r in runners)
        assert runners[1].port == srv.health_port
        go = GoWire(state)
        filter_body = go.args(go.pod(), go.names())
        bind_body = go.binding(
            "train-llama-7f9c4-0", "ml-research", "3f0e8a52-6d1b-4c8e-9b7a-2d5f1c0e4a91", go.names()[0]
        )
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz", "/metrics"):
                async with http.get(health + path) as r:
                    assert r.status == 200, path
            async with http.get(health + "/metrics") as r:
                assert "berth_leader 1.0" in await r.text()
            for verb, body in (("filter", filter_body), ("bind", bind_body)):
                async with http.post(f"{health}/scheduler/{verb}", data=body) as r:
                    assert r.status == 404, verb
            async with http.get(health + "/debug/state") as r:
                assert r.status == 404
            # The verbs' listener still serves them all.
            async with http.post(f"{verbs}/scheduler/filter", data=filter_body) as r:
                assert r.status == 200 and (await r.json())["Error"] == ""
            async with http.get(verbs + "/debug/state") as r:
                assert (await r.json())["leaderElection"] == {"enabled": False, "leader": True}
    finally:
        for listener in runners:
            await listener.close()


def test_no_health_listener_by_default() -> None:
    assert Config().server.health_port == 0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "berth.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("server: {health_port: 8888}", "server.health_port: 8888 is already server.port or server.tls_port"),
        ("server: {health_port: 8443}", "server.health_port: 8443 is already server.port or server.tls_port"),
        ("server: {health_port: 70000}", "server.health_port: expected a value from 0 to 65535, got 70000"),
        ("server: {health_host: 1}", "server.health_host: expected str, got 1"),
        ("server: {tls_reload_seconds: -1}", "server.tls_reload_seconds: expected a value from 0 to inf, got -1.0"),
    ],
)
def test_bad_listener_keys(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert str(exc.value) == error


def test_base_deploy_config_splits_the_listeners() -> None:
    """deploy/base: the verbs on loopback, health and metrics on the pod IP."""
    config = load_config(Path(__file__).parent.parent / "deploy" / "base" / "config" / "berth.yaml")
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8888)
    assert (config.server.health_host, config.server.health_port) == ("0.0.0.0", 8889)


async def test_tls_mode_with_health_port_opens_no_plain_port(
    unused_tcp_port_factory: Callable[[], int], tmp_path: Path
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    leaf.cert_chain_pems[0].write_to_path(str(crt))
    leaf.private_key_pem.write_to_path(str(key))
    state = demo_cluster(nodes=5)
    srv = state.config.server
    srv.host, srv.tls_port, srv.port = "127.0.0.1", 0, unused_tcp_port_factory()
    srv.health_host, srv.health_port = "127.0.0.1", unused_tcp_port_factory()
    runners = await _listeners(
        Berth(state, Metrics(), Binder(state, None, None)), state.config, tls_context(str(crt), str(key), None)
    )
    try:
        assert [r.port for r in runners][1:] == [srv.health_port]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{srv.health_port}/readyz") as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"http://127.0.0.1:{srv.port}/healthz")
    finally:
        for listener in runners:
            await listener.close()
