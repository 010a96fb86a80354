"""Berth's configuration file (YAML; every key documented in config/berth.example.yaml).

Validation names the key and what was expected, so a bad file fails at start with one clear line.
"""

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

DEFAULT_MAX_BODY = 256 * 1024 * 1024  # a 15,000-node full NodeList of real Node objects is ~100-150 MB


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8888
    tls_port: int = 8443  # with --tls-cert: the verbs move here; `port` keeps only health and metrics
    max_body_bytes: int = DEFAULT_MAX_BODY
    keepalive_timeout: float = 120.0  # above Go's 90 s idle timeout, so kube-scheduler never sends on a dead conn
    shutdown_grace_seconds: float = 10.0
    # -- listeners beside the verbs' (harden-bind) --
    # A listener for /healthz, /readyz and /metrics only, so the verbs can stay on 127.0.0.1 while the
    # kubelet's probes and Prometheus reach the pod IP. 0: none (plain mode: the verb listener serves
    # them too; TLS mode: `port` does). Set, it also replaces `port`'s listener in TLS mode.
    health_host: str = "0.0.0.0"
    health_port: int = 0
    # With --tls-cert: how often to look for a rotated certificate (cert-manager); 0 never.
    tls_reload_seconds: float = 5.0
    # From a request's first byte to its complete body; past it the verb connection gets 408 and is closed
    # (kube-scheduler's own extender timeout is 5 s: a request this slow is one nobody waits for).
    request_timeout_seconds: float = 30.0
    # Concurrent verb connections; past it a verb request gets 503 (health checks are still served).
    # kube-scheduler uses one or two; the cap keeps Berth well below the file-descriptor limit.
    max_connections: int = 1024


@dataclass(slots=True)
class Weights:
    gpu_packing: float = 4.0
    topology: float = 1.0
    load: float = 1.0
    pool: float = 2.0
    pool_availability: float = 1.0
    resources: float = 1.0
    fragmentation: float = 3.0
    scarcity: float = 1.0
    best_fit: float = 8.0
    maintenance: float = 3.0
    share_fit: float = 3.0


@dataclass(slots=True)
class ScoringConfig:
    cpu_strategy: str = "least_allocated"
    weights: Weights = field(default_factory=Weights)
    load_max_age_seconds: float = 300.0
    # Filter passes only the nodes within best_tier_margin (on the 0..10 scale) of the best candidate;
    # the rest fail with "a better fit exists" (not unresolvable), so kube-scheduler's own scores and
    # random tie-breaks cannot undo Berth's choice (docs/scoring.md).
    filter_best_tier: bool = True
    best_tier_margin: float = 0.1


@dataclass(slots=True)
class QuotaConfig:
    unmatched_pods: str = "shared"
    shared_pools: list[str] = field(default_factory=lambda: ["shared"])
    status_interval_seconds: float = 2.0


@dataclass(slots=True)
class BindConfig:
    reservation_ttl_seconds: float = 30.0
    timeout_seconds: float = 10.0


@dataclass(slots=True)
class LeaderElectionConfig:
    """One writer per fact: only the holder of this Lease writes TeamQuota status and counts GPU-seconds."""

    enabled: bool = True  # live mode only; the demo cluster has no API server and always writes
    lease_name: str = "berth"
    lease_namespace: str = ""  # "": the pod's namespace ($POD_NAMESPACE), else berth-system
    identity: str = ""  # "": $POD_NAME (else the hostname) and a random suffix, unique per process
    lease_duration_seconds: int = 15  # the Lease's leaseDurationSeconds: a standby waits this long
    renew_deadline_seconds: float = 10.0  # a leader that has not renewed for this long stops writing
    retry_period_seconds: float = 2.0


@dataclass(slots=True)
class AdmissionConfig:
    """Gangs and the queue (scheduler/admission/, docs/gangs.md). Off by default: nothing is gated, no
    extra informer runs and the verbs behave as before."""

    enabled: bool = False  # the admission loop (leader only), the gang informers and filter's steering
    queueing: bool = False  # gate every pod of scheduler_name, not only gang members: single pods queue too
    scheduler_name: str = "berth-scheduler"  # the pods the webhook gates and the loop admits
    webhook_port: int = 0  # the TLS listener of /mutate and /debug/queue; 0: none
    webhook_host: str = "0.0.0.0"
    webhook_cert: str = ""  # PEM certificate and key of the webhook listener (required with webhook_port)
    webhook_key: str = ""
    interval_seconds: float = 0.5  # how often the loop looks at the queue
    schedule_timeout_seconds: float = 300.0  # a plan not all bound by then is released (PodGroup's own wins)
    # Preemption for a whole gang (admission/reclaim.py): evict pods of teams borrowing in the cohort of a
    # gang whose team is within its guarantee, enough for the whole gang; then wait up to
    # reclaim_wait_seconds for them to go before choosing again.
    reclaim: bool = True
    reclaim_wait_seconds: float = 120.0


@dataclass(slots=True)
class DemoConfig:
    nodes: int = 1000
    seed: int = 42


@dataclass(slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    bind: BindConfig = field(default_factory=BindConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    leader_election: LeaderElectionConfig = field(default_factory=LeaderElectionConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    log_level: str = "info"


_CHOICES = {
    "scoring.cpu_strategy": ("least_allocated", "most_allocated"),
    "quotas.unmatched_pods": ("shared", "reject"),
    "log_level": ("debug", "info", "warning", "error"),
}
_RANGES = {
    "server.port": (0, 65535),
    "server.tls_port": (0, 65535),
    "server.max_body_bytes": (1024, 1 << 34),
    "server.request_timeout_seconds": (0.1, 3600.0),
    "server.max_connections": (1, 1_000_000),
    "demo.nodes": (1, 15000),
    "scoring.best_tier_margin": (0.0, 10.0),
    # harden-bind: listeners and leader election
    "server.health_port": (0, 65535),
    "leader_election.lease_duration_seconds": (1, 3600),
    "leader_election.renew_deadline_seconds": (0.001, 3600),
    "leader_election.retry_period_seconds": (0.001, 3600),
    "admission.webhook_port": (0, 65535),
    "admission.interval_seconds": (0.01, 60),
    "admission.schedule_timeout_seconds": (1, 86400),
    "admission.reclaim_wait_seconds": (1, 86400),
}


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'the file'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (expected one of {', '.join(sorted(known))})")
    values = {
        name: _value(hints[name], data[name], f"{path}.{name}" if path else name) for name in known if name in data
    }
    return cls(**values)


def _value(kind: Any, raw: Any, path: str) -> Any:
    if isinstance(kind, type) and is_dataclass(kind):
        return _build(kind, raw, path)
    if get_origin(kind) is list:
        (item,) = get_args(kind)
        if not isinstance(raw, list):
            raise ConfigError(f"{path}: expected a list, got {raw!r}")
        return [_value(item, v, f"{path}[{i}]") for i, v in enumerate(raw)]
    ok = isinstance(raw, kind) and (kind is bool or not isinstance(raw, bool))
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        try:
            raw, ok = float(raw), True
        except OverflowError:
            raise ConfigError(f"{path}: expected float, got an integer too large for one") from None
    if not ok:
        raise ConfigError(f"{path}: expected {kind.__name__}, got {raw!r}")
    if path in _CHOICES and raw not in _CHOICES[path]:
        raise ConfigError(f"{path}: expected one of {', '.join(_CHOICES[path])}, got {raw!r}")
    if kind in (int, float):
        lo, hi = _RANGES.get(path, (0, float("inf")))
        if not lo <= raw <= hi:
            raise ConfigError(f"{path}: expected a value from {lo} to {hi}, got {raw!r}")
    return raw


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. an integer past Python's digit limit
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from exc
    return _check(_build(Config, data if data is not None else {}, ""))


def _check(config: Config) -> Config:
    """Rules between keys (harden-bind: listeners and leader election)."""
    server, le = config.server, config.leader_election
    if server.health_port and server.health_port in (server.port, server.tls_port):
        raise ConfigError(f"server.health_port: {server.health_port} is already server.port or server.tls_port")
    if not le.retry_period_seconds < le.renew_deadline_seconds < le.lease_duration_seconds:
        raise ConfigError(
            "leader_election: expected retry_period_seconds < renew_deadline_seconds < "
            f"lease_duration_seconds, got {le.retry_period_seconds}, {le.renew_deadline_seconds}, "
            f"{le.lease_duration_seconds}"
        )
    adm = config.admission
    if adm.webhook_port and not (adm.webhook_cert and adm.webhook_key):
        raise ConfigError("admission.webhook_port: the webhook is TLS only; set webhook_cert and webhook_key")
    return config


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's message spans several lines; the error must fit on one."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())
