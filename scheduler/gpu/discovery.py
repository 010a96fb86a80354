"""`berth topology`: read `nvidia-smi topo -m` into the berth.dev/gpu-topology annotation, and print it
or patch it onto a Node.

Only the NVLink islands and the link kind are kept; everything else in the matrix (PCIe distances,
NICs, CPU and NUMA affinity) is deliberately dropped so the annotation stays small and stable across
driver versions. The annotation's codec is scheduler/gpu/topology.py.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scheduler.gpu.topology import Topology, TopologyError, linked_groups
from scheduler.model.constants import MAX_GPUS
from scheduler.model.names import ANN_GPU_TOPOLOGY

_NVIDIA_SMI = ("nvidia-smi", "topo", "-m")
_NVIDIA_SMI_TIMEOUT_S = 60

# CSI sequences (colour, underline, cursor) from output captured on a terminal.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# Multi-word column names would be torn apart by whitespace splitting; fold them into one token first.
_MULTIWORD_COLUMNS = (
    (re.compile(r"\bCPU\s+Affinity\b"), "CPU_AFFINITY"),
    (re.compile(r"\bNUMA\s+Affinity\b"), "NUMA_AFFINITY"),
    (re.compile(r"\bGPU\s+NUMA\s+ID\b"), "GPU_NUMA_ID"),
)
_AFFINITY_COLUMNS = frozenset(name for _, name in _MULTIWORD_COLUMNS)
_GPU_LABEL = re.compile(r"GPU(\d+)")
# SOC is what drivers before ~384 printed for what is now SYS.
_GPU_CELL = re.compile(r"X|NV\d+|PIX|PXB|PHB|NODE|SYS|SOC")


@dataclass(frozen=True)
class _Header:
    gpu_count: int
    link_columns: int  # GPU columns followed by NIC (or unknown) columns
    trailing: tuple[str, ...]  # affinity columns, in printed order


def parse_nvidia_smi_topo(text: str) -> Topology:
    """Parse the matrix printed by `nvidia-smi topo -m`; raise TopologyError if it is not one."""
    if not isinstance(text, str):
        raise TopologyError(f"nvidia-smi topo -m: expected text, got {type(text).__name__}")
    lines = [_ANSI.sub("", line).rstrip("\r") for line in text.split("\n")]
    header_at = _find_header(lines)
    header = _parse_header(lines[header_at])
    links = _gpu_rows(lines[header_at + 1 :], header)
    return Topology(gpu_count=header.gpu_count, islands=_nvlink_islands(links), links=_link_kind(links))


def _tokens(line: str) -> list[str]:
    for pattern, name in _MULTIWORD_COLUMNS:
        line = pattern.sub(name, line)
    return line.split()


def _find_header(lines: Sequence[str]) -> int:
    # Anything before the header (driver warnings, a shell prompt) is noise, so search for it.
    for at, line in enumerate(lines):
        tokens = line.split()
        if tokens and tokens[0] == "GPU0":
            return at
    raise TopologyError(
        "nvidia-smi topo -m: no header row starting with GPU0 found; pass the unmodified output of `nvidia-smi topo -m`"
    )


def _parse_header(line: str) -> _Header:
    columns = _tokens(line)
    gpu_count = 0
    while gpu_count < len(columns) and _GPU_LABEL.fullmatch(columns[gpu_count]):
        if columns[gpu_count] != f"GPU{gpu_count}":
            raise TopologyError(
                f"nvidia-smi topo -m: header column {gpu_count + 1} is {columns[gpu_count]}, expected GPU{gpu_count}"
            )
        gpu_count += 1
    if gpu_count > MAX_GPUS:
        raise TopologyError(f"nvidia-smi topo -m: {gpu_count} GPUs found; at most {MAX_GPUS} are supported")
    link_columns = next((i for i, c in enumerate(columns) if c in _AFFINITY_COLUMNS), len(columns))
    stray = [c for c in columns[gpu_count:] if _GPU_LABEL.fullmatch(c)]
    if stray:
        raise TopologyError(f"nvidia-smi topo -m: header has {stray[0]} after non-GPU columns")
    return _Header(gpu_count, link_columns, tuple(columns[link_columns:]))


_Row = list[str]  # one GPU's link cells: to GPU0, GPU1, ...


def _gpu_rows(lines: Iterable[str], header: _Header) -> list[_Row]:
    rows: dict[int, _Row] = {}
    for line in lines:
        tokens = line.split()
        if not tokens:
            break  # the matrix ends at the first blank line; the legend follows
        label = _GPU_LABEL.fullmatch(tokens[0])
        if label is None:
            continue  # NIC rows
        index = int(label.group(1))
        if index >= header.gpu_count:
            raise TopologyError(f"nvidia-smi topo -m: row {tokens[0]} has no matching header column")
        if index in rows:
            raise TopologyError(f"nvidia-smi topo -m: row {tokens[0]} appears twice")
        rows[index] = _parse_row(tokens, index, header)
    missing = [i for i in range(header.gpu_count) if i not in rows]
    if missing:
        raise TopologyError(f"nvidia-smi topo -m: the matrix has no row for GPU{missing[0]}")
    return [rows[i] for i in range(header.gpu_count)]


def _parse_row(tokens: list[str], index: int, header: _Header) -> _Row:
    cells, rest = tokens[1 : 1 + header.link_columns], tokens[1 + header.link_columns :]
    # nvidia-smi prints N/A rather than leaving a cell blank, so a short row means a lost cell and
    # every value after it would land in the wrong column.
    if len(cells) < header.link_columns or len(rest) != len(header.trailing):
        expected = header.link_columns + len(header.trailing)
        raise TopologyError(
            f"nvidia-smi topo -m: row GPU{index} has {len(tokens) - 1} cells, the header has {expected} columns"
        )
    gpu_cells = cells[: header.gpu_count]
    for peer, cell in enumerate(gpu_cells):
        if not _GPU_CELL.fullmatch(cell):
            raise TopologyError(f"nvidia-smi topo -m: row GPU{index}, column GPU{peer}: unknown link {cell!r}")
        if (cell == "X") != (peer == index):
            raise TopologyError(
                f"nvidia-smi topo -m: row GPU{index}, column GPU{peer}: "
                f"{'X must only appear' if cell == 'X' else 'expected X'} on the diagonal"
            )
    return gpu_cells


def _nv_count(cell: str) -> int:
    return int(cell[2:]) if cell.startswith("NV") else 0


def _nvlink_islands(links: Sequence[Sequence[str]]) -> tuple[tuple[int, ...], ...]:
    # Either direction counts: a lopsided matrix still proves the link exists.
    return linked_groups(len(links), lambda i, j: bool(_nv_count(links[i][j]) or _nv_count(links[j][i])))


def _link_kind(links: Sequence[Sequence[str]]) -> str:
    n = len(links)
    counts = {_nv_count(links[i][j]) for i in range(n) for j in range(n) if i != j}
    if not counts or counts == {0}:
        return "pcie"
    # NVSwitch shows up as a uniform all-to-all NV# matrix. A small uniform direct mesh (a 2-GPU bridge,
    # a 4-GPU NV4 board) is indistinguishable and also reported as nvswitch; for placement that is
    # harmless, since every subset of such a box is equally well connected.
    return "nvswitch" if len(counts) == 1 else "nvlink"


# --------------------------------------------------------------------------------------------------
# `berth topology`


class _UsageError(Exception):
    """Bad input on the command line or from the environment: exit 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        metavar="PATH",
        help="read `nvidia-smi topo -m` output from PATH ('-' for stdin) instead of running nvidia-smi",
    )
    parser.add_argument(
        "--node",
        metavar="NAME",
        help=f"patch the {ANN_GPU_TOPOLOGY} annotation onto this Node instead of printing it",
    )
    parser.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig for --node (default: in-cluster config)")


def run(args: argparse.Namespace) -> int:
    node = getattr(args, "node", None)
    kubeconfig = getattr(args, "kubeconfig", None)
    try:
        if kubeconfig and not node:
            raise _UsageError("--kubeconfig is only used together with --node")
        topo = parse_nvidia_smi_topo(_read_matrix(getattr(args, "file", None)))
    except (_UsageError, TopologyError) as exc:
        return _error(str(exc), 2)
    if not node:
        print(topo.to_annotation())
        return 0
    return _patch_node(node, kubeconfig, topo.to_annotation())


def _error(message: str, code: int) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"berth topology: {first_line}", file=sys.stderr)
    return code


def _read_matrix(path: str | None) -> str:
    if path == "-":
        return sys.stdin.read()
    if path is not None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError as exc:
            raise _UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _run_nvidia_smi()


def _run_nvidia_smi() -> str:
    try:
        done = subprocess.run(_NVIDIA_SMI, capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise _UsageError(
            "nvidia-smi not found on PATH; run this on a GPU node or pass --file with saved `nvidia-smi topo -m` output"
        ) from None
    except subprocess.TimeoutExpired:
        raise _UsageError(f"nvidia-smi topo -m did not finish within {_NVIDIA_SMI_TIMEOUT_S}s") from None
    except OSError as exc:
        raise _UsageError(f"cannot run nvidia-smi: {exc.strerror or exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise _UsageError(
            f"nvidia-smi topo -m exited with status {done.returncode}" + (f": {detail[0]}" if detail else "")
        )
    return done.stdout


def _patch_node(node: str, kubeconfig: str | None, annotation: str) -> int:
    # Imported here: the kubernetes client is slow to import and only --node needs it.
    from kubernetes import client, config
    from urllib3.exceptions import HTTPError

    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        return _error(f"cannot load Kubernetes config ({kubeconfig or 'in-cluster'}): {exc}", 2)
    body = {"metadata": {"annotations": {ANN_GPU_TOPOLOGY: annotation}}}
    try:
        client.CoreV1Api().patch_node(node, body)
    except client.ApiException as exc:
        if exc.status == 404:
            return _error(f"node {node} not found", 2)
        return _error(f"patching node {node} failed: HTTP {exc.status} {exc.reason}", 1)
    except (HTTPError, OSError) as exc:
        return _error(f"patching node {node} failed: {exc}", 1)
    print(f"annotated node {node}: {ANN_GPU_TOPOLOGY}={annotation}")
    return 0


# The agent's fallback (scheduler/agent/run.py) runs the same command and reports the same failures.
NvidiaSmiError = _UsageError
read_nvidia_smi = _run_nvidia_smi
