"""Berth's configuration file: every error names the key and what was expected, on one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "berth.example.yaml"


def write(tmp_path: Path, text: str | bytes, name: str = "berth.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown keys, with the keys that would have been right
        ("servr: {}\n", ["servr", "unknown key", "server"]),
        ("server:\n  prot: 80\n", ["server.prot", "unknown key", "port"]),
        ("scoring:\n  weights:\n    gpu: 1\n", ["scoring.weights.gpu", "unknown key", "gpu_packing"]),
        # wrong types
        ("server:\n  port: '8080'\n", ["server.port", "expected int", "'8080'"]),
        ("server:\n  port: true\n", ["server.port", "expected int"]),
        ("server:\n  port: 80.5\n", ["server.port", "expected int"]),
        ("server:\n  host: 8080\n", ["server.host", "expected str"]),
        ("bind:\n  timeout_seconds: soon\n", ["bind.timeout_seconds", "expected float", "'soon'"]),
        ("scoring:\n  load_max_age_seconds: " + "9" * 400 + "\n", ["scoring.load_max_age_seconds", "expected float"]),
        ("quotas:\n  shared_pools: shared\n", ["quotas.shared_pools", "expected a list"]),
        ("quotas:\n  shared_pools: [shared, 7]\n", ["quotas.shared_pools[1]", "expected str"]),
        ("server: 8080\n", ["server", "expected a mapping", "int"]),
        ("- server\n", ["expected a mapping", "list"]),
        ("just words\n", ["expected a mapping", "str"]),
        # bad choices
        (
            "scoring:\n  cpu_strategy: binpack\n",
            ["scoring.cpu_strategy", "least_allocated, most_allocated", "'binpack'"],
        ),
        ("quotas:\n  unmatched_pods: deny\n", ["quotas.unmatched_pods", "shared, reject"]),
        ("log_level: verbose\n", ["log_level", "debug, info, warning, error"]),
        # out of range
        ("server:\n  port: 70000\n", ["server.port", "from 0 to 65535", "70000"]),
        ("server:\n  tls_port: -1\n", ["server.tls_port", "from 0 to 65535"]),
        ("server:\n  max_body_bytes: 100\n", ["server.max_body_bytes", "from 1024"]),
        ("demo:\n  nodes: 0\n", ["demo.nodes", "from 1 to 15000"]),
        ("demo:\n  nodes: 20000\n", ["demo.nodes", "from 1 to 15000"]),
        ("bind:\n  reservation_ttl_seconds: -5\n", ["bind.reservation_ttl_seconds", "from 0"]),
        ("scoring:\n  weights:\n    load: -1\n", ["scoring.weights.load", "from 0"]),
        ("server:\n  keepalive_timeout: .nan\n", ["server.keepalive_timeout", "from 0"]),
        ("server:\n  request_timeout_seconds: 0\n", ["server.request_timeout_seconds", "from 0.1 to 3600"]),
        ("server:\n  request_timeout_seconds: fast\n", ["server.request_timeout_seconds", "expected float"]),
        ("server:\n  max_connections: 0\n", ["server.max_connections", "from 1 to 1000000"]),
        ("server:\n  max_connections: 1.5\n", ["server.max_connections", "expected int"]),
        # not YAML at all
        ("server: [\n", ["not valid YAML", "line 2"]),
        ("server:\n  port: 1\n\tport: 2\n", ["not valid YAML", "line 3", "'\\t'"]),
        (b"\xff\xfeserver: {}\n", ["not UTF-8"]),
    ],
)
def test_errors_name_the_key_and_expectation(tmp_path: Path, text: str | bytes, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read \(No such file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_values_load(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "server:\n  port: 9000\n  keepalive_timeout: 100\n"
            "quotas:\n  shared_pools: [a, b]\nscoring:\n  cpu_strategy: most_allocated\n",
        )
    )
    assert config.server.port == 9000 and config.server.host == "127.0.0.1"
    assert config.server.keepalive_timeout == 100.0 and isinstance(config.server.keepalive_timeout, float)
    assert config.quotas.shared_pools == ["a", "b"] and config.scoring.cpu_strategy == "most_allocated"


def test_server_limits_load(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "server:\n  request_timeout_seconds: 5\n  max_connections: 64\n"))
    assert config.server.request_timeout_seconds == 5.0 and isinstance(config.server.request_timeout_seconds, float)
    assert config.server.max_connections == 64
    assert (Config().server.request_timeout_seconds, Config().server.max_connections) == (30.0, 1024)


@pytest.mark.parametrize("text", ["", "# nothing\n", "{}\n"])
def test_empty_file_is_the_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == Config()
    assert load_config(None) == Config()


def test_example_config_loads_cleanly() -> None:
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE.relative_to(ROOT)} is not written yet")
    # the file says "the values shown are the defaults": hold it to that
    assert load_config(EXAMPLE) == Config()


@pytest.mark.parametrize("text", ["server:\n  prot: 80\n", "server: [\n", None])
def test_serve_with_bad_config_exits_2_with_one_line(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "absent.yaml" if text is None else write(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler", "serve", "--demo", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("berth: bad config: ")
    assert proc.stdout == ""


def test_admission_webhook_needs_its_certificate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"admission\.webhook_port.*webhook_cert"):
        load_config(write(tmp_path, "admission:\n  webhook_port: 9443\n"))
    assert load_config(write(tmp_path, "admission:\n  enabled: true\n")).admission.enabled
