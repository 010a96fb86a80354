"""GPU interconnect topology: parse `nvidia-smi topo -m`, encode and validate the node annotation.

The scheduler only needs two partitions of a node's GPUs: NVLink islands (GPUs that can talk over
NVLink, directly or through peers) and NUMA domains. Everything else in the matrix (PCIe distances,
NICs) is deliberately dropped so the annotation stays small and stable across driver versions.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

ANNOTATION = "berth.dev/gpu-topology"
# Masks are 64-bit integers, so a node can describe at most 64 GPUs.
MAX_GPUS = 64
LINK_KINDS = ("nvswitch", "nvlink", "pcie")

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
_NOT_AVAILABLE = frozenset({"N/A", "NA", "-"})


class TopologyError(ValueError):
    """The input cannot be turned into a Topology; the message says what to fix."""


@dataclass(frozen=True)
class Topology:
    gpu_count: int
    islands: tuple[tuple[int, ...], ...]
    numa: tuple[tuple[int, ...], ...]
    links: str

    def to_annotation(self) -> str:
        doc = {"islands": self.islands, "numa": self.numa, "links": self.links}
        return orjson.dumps(doc).decode()


# --------------------------------------------------------------------------------------------------
# nvidia-smi topo -m


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
    rows = _gpu_rows(lines[header_at + 1 :], header)
    links = [row[0] for row in rows]
    trailing = [row[1] for row in rows]
    return Topology(
        gpu_count=header.gpu_count,
        islands=_nvlink_islands(links),
        numa=_numa_domains(trailing, header.gpu_count),
        links=_link_kind(links),
    )


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
        "nvidia-smi topo -m: no header row starting with GPU0 found; "
        "pass the unmodified output of `nvidia-smi topo -m`"
    )


def _parse_header(line: str) -> _Header:
    columns = _tokens(line)
    gpu_count = 0
    while gpu_count < len(columns) and _GPU_LABEL.fullmatch(columns[gpu_count]):
        if columns[gpu_count] != f"GPU{gpu_count}":
            raise TopologyError(
                f"nvidia-smi topo -m: header column {gpu_count + 1} is {columns[gpu_count]}, "
                f"expected GPU{gpu_count}"
            )
        gpu_count += 1
    if gpu_count > MAX_GPUS:
        raise TopologyError(f"nvidia-smi topo -m: {gpu_count} GPUs found; at most {MAX_GPUS} are supported")
    link_columns = next((i for i, c in enumerate(columns) if c in _AFFINITY_COLUMNS), len(columns))
    stray = [c for c in columns[gpu_count:] if _GPU_LABEL.fullmatch(c)]
    if stray:
        raise TopologyError(f"nvidia-smi topo -m: header has {stray[0]} after non-GPU columns")
    return _Header(gpu_count, link_columns, tuple(columns[link_columns:]))


_Row = tuple[list[str], dict[str, str]]


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
            f"nvidia-smi topo -m: row GPU{index} has {len(tokens) - 1} cells, "
            f"the header has {expected} columns"
        )
    gpu_cells = cells[: header.gpu_count]
    for peer, cell in enumerate(gpu_cells):
        if not _GPU_CELL.fullmatch(cell):
            raise TopologyError(
                f"nvidia-smi topo -m: row GPU{index}, column GPU{peer}: unknown link {cell!r}"
            )
        if (cell == "X") != (peer == index):
            raise TopologyError(
                f"nvidia-smi topo -m: row GPU{index}, column GPU{peer}: "
                f"{'X must only appear' if cell == 'X' else 'expected X'} on the diagonal"
            )
    return gpu_cells, dict(zip(header.trailing, rest, strict=True))


def _nv_count(cell: str) -> int:
    return int(cell[2:]) if cell.startswith("NV") else 0


def _nvlink_islands(links: Sequence[Sequence[str]]) -> tuple[tuple[int, ...], ...]:
    # Connected components rather than cliques: on a DGX-1 hybrid cube-mesh not every pair is
    # linked, yet NCCL routes through peers, so all eight GPUs form one NVLink domain.
    n = len(links)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(n):
            # Either direction counts: a lopsided matrix still proves the link exists.
            if _nv_count(links[i][j]):
                parent[root(i)] = root(j)
    return _group_by(range(n), [root(i) for i in range(n)])


def _link_kind(links: Sequence[Sequence[str]]) -> str:
    n = len(links)
    counts = {_nv_count(links[i][j]) for i in range(n) for j in range(n) if i != j}
    if not counts or counts == {0}:
        return "pcie"
    # NVSwitch shows up as a uniform all-to-all NV# matrix. A small uniform direct mesh (a 2-GPU bridge,
    # a 4-GPU NV4 board) is indistinguishable and also reported as nvswitch; for placement that is
    # harmless, since every subset of such a box is equally well connected.
    return "nvswitch" if len(counts) == 1 else "nvlink"


def _numa_domains(trailing: Sequence[dict[str, str]], gpu_count: int) -> tuple[tuple[int, ...], ...]:
    for column in ("NUMA_AFFINITY", "CPU_AFFINITY"):
        values = [row.get(column) for row in trailing]
        if all(v is not None and v not in _NOT_AVAILABLE for v in values):
            return _group_by(range(gpu_count), values)
    return (tuple(range(gpu_count)),) if gpu_count else ()


def _group_by(indices: Iterable[int], keys: Sequence[object]) -> tuple[tuple[int, ...], ...]:
    groups: dict[object, list[int]] = {}
    for i in indices:
        groups.setdefault(keys[i], []).append(i)
    return _canonical(groups.values())


def _canonical(groups: Iterable[Iterable[int]]) -> tuple[tuple[int, ...], ...]:
    # One spelling per partition, so annotations compare equal and diffs on the Node stay quiet.
    return tuple(sorted(tuple(sorted(g)) for g in groups))


# --------------------------------------------------------------------------------------------------
# berth.dev/gpu-topology annotation


def parse_topology_annotation(value: str, gpu_count: int | None = None) -> Topology:
    """Validate the annotation; `gpu_count` (the node's GPU count, if known) bounds the indices."""
    _check_gpu_count(gpu_count)
    doc = _decode(value)
    if doc.get("islands") is None:
        raise _fail(f'missing "islands"; list the NVLink islands, e.g. {_EXAMPLE}')
    islands = _index_groups(doc["islands"], "islands", "islands", gpu_count)
    numa = None if doc.get("numa") is None else _index_groups(doc["numa"], "numa", "NUMA domains", gpu_count)
    count = gpu_count if gpu_count is not None else _implied_count(islands, numa or [])
    # GPUs the annotation does not mention get a group of their own: no NVLink or shared NUMA node
    # is assumed that the annotation did not claim.
    islands = _fill_singletons(islands, count)
    if numa is None:
        numa = [list(range(count))] if count else []
    numa = _fill_singletons(numa, count)
    links = _links(doc, islands)
    return Topology(count, _canonical(islands), _canonical(numa), links)


def _fail(message: str) -> TopologyError:
    return TopologyError(f"{ANNOTATION}: {message}")


def _check_gpu_count(gpu_count: int | None) -> None:
    if gpu_count is None:
        return
    if not isinstance(gpu_count, int) or isinstance(gpu_count, bool) or gpu_count < 0:
        raise _fail(f"the node GPU count must be a non-negative integer, got {gpu_count!r}")
    if gpu_count > MAX_GPUS:
        raise _fail(f"the node has {gpu_count} GPUs; at most {MAX_GPUS} are supported")


def _decode(value: str) -> dict[str, object]:
    if not isinstance(value, str | bytes):
        raise _fail(f"expected a JSON string, got {type(value).__name__}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"not valid JSON ({exc}); expected e.g. {_EXAMPLE}") from None
    if not isinstance(doc, dict):
        raise _fail(f"expected a JSON object like {_EXAMPLE}, got {_json_type(doc)}")
    return doc


_EXAMPLE = '{"islands": [[0,1,2,3],[4,5,6,7]], "numa": [[0,1,2,3],[4,5,6,7]], "links": "nvlink"}'


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _index_groups(raw: object, key: str, noun: str, gpu_count: int | None) -> list[list[int]]:
    if not isinstance(raw, list):
        raise _fail(f'"{key}" must be a list of lists of GPU indices, got {_json_type(raw)}')
    seen: set[int] = set()
    groups = [_index_group(group, f"{key}[{n}]", gpu_count) for n, group in enumerate(raw)]
    for group in groups:
        for index in group:
            if index in seen:
                raise _fail(f"GPU index {index} is listed in two {noun}")
            seen.add(index)
    return groups


def _index_group(group: object, where: str, gpu_count: int | None) -> list[int]:
    if not isinstance(group, list):
        raise _fail(f"{where} must be a list of GPU indices, got {_json_type(group)}")
    if not group:
        raise _fail(f"{where} is empty; remove it or list at least one GPU index")
    for index in group:
        _check_index(index, where, gpu_count)
    duplicate = next((i for n, i in enumerate(group) if i in group[:n]), None)
    if duplicate is not None:
        raise _fail(f"GPU index {duplicate} appears twice in {where}")
    return group


def _check_index(index: object, where: str, gpu_count: int | None) -> None:
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise _fail(f"{where} contains {_describe(index)}, which is not a GPU index (0, 1, 2, ...)")
    if index >= MAX_GPUS:
        raise _fail(f"GPU index {index} in {where} is too large; at most {MAX_GPUS} GPUs (0-{MAX_GPUS - 1})")
    if gpu_count is not None and index >= gpu_count:
        valid = f"indices 0-{gpu_count - 1}" if gpu_count else "no valid indices"
        raise _fail(f"GPU index {index} in {where} does not exist; the node has {gpu_count} GPUs ({valid})")


def _describe(value: object) -> str:
    # Scalars verbatim (truncated), containers by kind: echoing a huge or deeply nested value helps nobody.
    if isinstance(value, bool | int | float | str) or value is None:
        text = orjson.dumps(value).decode()
        return text if len(text) <= 40 else text[:37] + "..."
    return _json_type(value)


def _implied_count(*partitions: Sequence[Sequence[int]]) -> int:
    return max((i + 1 for groups in partitions for g in groups for i in g), default=0)


def _fill_singletons(groups: list[list[int]], count: int) -> list[list[int]]:
    covered = {i for g in groups for i in g}
    return groups + [[i] for i in range(count) if i not in covered]


def _links(doc: dict[str, object], islands: Sequence[Sequence[int]]) -> str:
    linked = any(len(g) > 1 for g in islands)
    links = doc.get("links")
    if links is None:
        return "nvlink" if linked else "pcie"
    if links not in LINK_KINDS:
        raise _fail(f'"links" must be one of {", ".join(LINK_KINDS)}, got {_describe(links)}')
    if links == "pcie" and linked:
        raise _fail(
            '"links" is "pcie" but an island has more than one GPU; use "nvlink" or split the islands'
        )
    if links != "pcie" and not linked:
        raise _fail(
            f'"links" is "{links}" but every island has one GPU; use "pcie" or list the NVLink islands'
        )
    if links == "nvswitch" and len(islands) > 1:
        raise _fail('"links" is "nvswitch" but there are several islands; use "nvlink" or merge the islands')
    return str(links)


def islands_to_masks(topo: Topology) -> list[int]:
    """One bitmask per NVLink island, bit i set for GPU i."""
    return [_mask(g) for g in topo.islands]


def numa_to_masks(topo: Topology) -> list[int]:
    """One bitmask per NUMA domain, bit i set for GPU i."""
    return [_mask(g) for g in topo.numa]


def _mask(indices: Iterable[int]) -> int:
    mask = 0
    for i in indices:
        mask |= 1 << i
    return mask


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
        help=f"patch the {ANNOTATION} annotation onto this Node instead of printing it",
    )
    parser.add_argument(
        "--kubeconfig", metavar="PATH", help="kubeconfig for --node (default: in-cluster config)"
    )


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
        done = subprocess.run(
            _NVIDIA_SMI, capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise _UsageError(
            "nvidia-smi not found on PATH; run this on a GPU node or pass --file with saved "
            "`nvidia-smi topo -m` output"
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
    body = {"metadata": {"annotations": {ANNOTATION: annotation}}}
    try:
        client.CoreV1Api().patch_node(node, body)
    except client.ApiException as exc:
        if exc.status == 404:
            return _error(f"node {node} not found", 2)
        return _error(f"patching node {node} failed: HTTP {exc.status} {exc.reason}", 1)
    except (HTTPError, OSError) as exc:
        return _error(f"patching node {node} failed: {exc}", 1)
    print(f"annotated node {node}: {ANNOTATION}={annotation}")
    return 0
