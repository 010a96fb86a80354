"""`berth`: serve the extender, run the node agent, explain a placement, read GPU topology, run the benchmark."""

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from scheduler import explain_cli
from scheduler.config import ConfigError, load_config
from scheduler.gpu import discovery


def _version() -> str:
    """The installed package's version (pyproject.toml); a bare checkout on sys.path has none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("berth")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="berth", description="Berth: a kube-scheduler extender.")
    p.add_argument("--version", action="version", version=f"berth {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve filter/prioritize/bind/preempt for kube-scheduler")
    s.add_argument("--config", help="YAML config file (see config/berth.example.yaml)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default 8888)")
    s.add_argument(
        "--kubeconfig",
        help="kubeconfig of the cluster (default, as kubectl: $KUBECONFIG, else ~/.kube/config, else in-cluster)",
    )
    s.add_argument("--demo", action="store_true", help="serve an embedded, seeded demo cluster; no API server")
    s.add_argument("--demo-nodes", type=int, help="demo cluster size (default 1000, at most 15000)")
    s.add_argument("--tls-port", type=int, help="with --tls-cert: port of the HTTPS verbs (default 8443)")
    s.add_argument("--tls-cert", help="serve the verbs over HTTPS with this certificate (PEM)")
    s.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    s.add_argument("--client-ca", help="require client certificates signed by this CA (mTLS)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    t = sub.add_parser("topology", help="read `nvidia-smi topo -m` into the berth.dev/gpu-topology annotation")
    discovery.add_arguments(t)
    a = sub.add_parser("agent", help="the node agent: publish GPU topology and what each pod really holds")
    _agent_arguments(a)
    e = sub.add_parser("explain", help="why a pod goes where it goes: per-node verdicts and score parts")
    explain_cli.add_arguments(e)
    # Listed for --help only: main() hands `berth bench ...` to loadtests/ before parsing (see _bench).
    sub.add_parser(
        "bench",
        add_help=False,
        help="latency and throughput of Berth's verbs, from a source checkout (see docs/BENCHMARKS.md)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "topology":
        return discovery.run(args)
    if args.command == "explain":
        return explain_cli.run(args)
    if args.command == "agent":
        return _agent(args)
    return _serve(args)


def _bench(argv: list[str]) -> int:
    """`berth bench`: the benchmark lives in loadtests/, which the wheel does not ship, so it is imported
    (and its options parsed) only here: every other command works without it."""
    try:
        from loadtests import bench
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("loadtests", "tests"):  # the source-tree-only packages
            raise
        # The `berth` script does not put the checkout on sys.path: find it next to this package.
        checkout = Path(__file__).resolve().parents[1]
        if not (checkout / "loadtests" / "bench.py").is_file():
            print(
                "berth bench: the benchmarks are not installed with Berth; run them from a source checkout: "
                "`make bench` (or `python -m loadtests.bench`)",
                file=sys.stderr,
            )
            return 2
        sys.path.insert(0, str(checkout))
        from loadtests import bench
    return bench.main(argv)


def _agent_arguments(a: argparse.ArgumentParser) -> None:
    import os

    a.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME"),
        help="this node's name (default: $NODE_NAME, from the downward API's spec.nodeName)",
    )
    a.add_argument(
        "--socket", default="/var/lib/kubelet/pod-resources/kubelet.sock", help="kubelet PodResources socket"
    )
    a.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
    a.add_argument("--host", default="127.0.0.1", help="address of /healthz and /metrics (default 127.0.0.1)")
    a.add_argument("--port", type=int, default=9402, help="port of /healthz and /metrics (default 9402)")
    a.add_argument("--poll-seconds", type=float, default=5.0, help="how often the kubelet is read (default 5)")
    a.add_argument("--topology-seconds", type=float, default=300.0, help="how often the GPUs are read (default 300)")
    a.add_argument("--min-write-seconds", type=float, default=5.0, help="at most one write per annotation per this")
    a.add_argument(
        "--nvml-module",
        default="pynvml",
        help="module with pynvml's functions (default pynvml, nvidia-ml-py); tests pass a replaying stand-in",
    )
    a.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")


def _agent(args: argparse.Namespace) -> int:
    from scheduler.agent.run import AgentConfig, serve
    from scheduler.cluster.kube import ClusterConfigError
    from scheduler.observability import logs

    if not args.node:
        print("berth agent: no node name: pass --node or set NODE_NAME (downward API spec.nodeName)", file=sys.stderr)
        return 2
    if min(args.poll_seconds, args.topology_seconds) <= 0 or args.min_write_seconds < 0:
        print("berth agent: intervals must be positive", file=sys.stderr)
        return 2
    logs.setup(args.log_level)
    config = AgentConfig(
        node=args.node,
        socket=args.socket,
        poll_seconds=args.poll_seconds,
        topology_seconds=args.topology_seconds,
        min_write_seconds=args.min_write_seconds,
        host=args.host,
        port=args.port,
        nvml_module=args.nvml_module,
    )
    try:
        return asyncio.run(serve(config, args.kubeconfig))
    except ClusterConfigError as exc:
        print(f"berth agent: cannot find the cluster: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"berth: bad config: {exc}", file=sys.stderr)
        return 2
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    if args.tls_port is not None:
        config.server.tls_port = args.tls_port
    if args.demo_nodes is not None:
        if not 1 <= args.demo_nodes <= 15000:
            print("berth: --demo-nodes must be from 1 to 15000", file=sys.stderr)
            return 2
        config.demo.nodes = args.demo_nodes
    if args.log_level:
        config.log_level = args.log_level
    if bool(args.tls_cert) != bool(args.tls_key) or (args.client_ca and not args.tls_cert):
        print("berth: --tls-cert and --tls-key go together; --client-ca needs them", file=sys.stderr)
        return 2
    from scheduler import app
    from scheduler.observability import logs

    logs.setup(config.log_level)
    try:
        return _event_loop_runner()(
            app.serve(
                config, demo=args.demo, kubeconfig=args.kubeconfig, tls=(args.tls_cert, args.tls_key, args.client_ca)
            )
        )
    except app.StartupError as exc:
        print(f"berth: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop when installed (measured in docs/BENCHMARKS.md); BERTH_NO_UVLOOP=1 keeps asyncio's loop."""
    import os

    if not os.environ.get("BERTH_NO_UVLOOP"):
        try:
            import uvloop

            return uvloop.run
        except ImportError:
            pass
    return asyncio.run
