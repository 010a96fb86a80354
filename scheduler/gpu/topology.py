"""GPU interconnect topology: the berth.dev/gpu-topology node annotation, its codec and validation.

The scheduler needs one partition of a node's GPUs: NVLink islands (GPUs that can talk over NVLink,
directly or through peers). Reading `nvidia-smi topo -m` into it is scheduler/gpu/discovery.py's job;
this module is what the node table imports, so it needs neither subprocess nor the kubernetes client.

NUMA domains are not read: placement has no rule that uses them (docs/scoring.md). Annotations
written by earlier versions carry a "numa" key; it is accepted and ignored, like any other extra key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from scheduler.model.constants import MAX_GPUS
from scheduler.model.names import ANN_GPU_TOPOLOGY

LINK_KINDS = ("nvswitch", "nvlink", "pcie")


class TopologyError(ValueError):
    """The input cannot be turned into a Topology; the message says what to fix."""


@dataclass(frozen=True)
class Topology:
    gpu_count: int
    islands: tuple[tuple[int, ...], ...]
    links: str

    def to_annotation(self) -> str:
        doc = {"islands": self.islands, "links": self.links}
        return orjson.dumps(doc).decode()


def canonical_groups(groups: Iterable[Iterable[int]]) -> tuple[tuple[int, ...], ...]:
    """One spelling per partition, so annotations compare equal and diffs on the Node stay quiet."""
    return tuple(sorted(tuple(sorted(g)) for g in groups))


def linked_groups(n: int, linked: Callable[[int, int], bool]) -> tuple[tuple[int, ...], ...]:
    """The NVLink islands of `n` GPUs, `linked(i, j)` (i < j) saying whether two are joined: connected
    components rather than cliques. On a DGX-1 hybrid cube-mesh not every pair is linked, yet NCCL routes
    through peers, so all eight GPUs form one NVLink domain. The one rule for nvidia-smi's matrix and NVML."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if linked(i, j):
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return canonical_groups(groups.values())


# --------------------------------------------------------------------------------------------------
# berth.dev/gpu-topology annotation


def parse_topology_annotation(value: str, gpu_count: int | None = None) -> Topology:
    """Validate the annotation; `gpu_count` (the node's GPU count, if known) bounds the indices."""
    _check_gpu_count(gpu_count)
    doc = _decode(value)
    if doc.get("islands") is None:
        raise _fail(f'missing "islands"; list the NVLink islands, e.g. {_EXAMPLE}')
    islands = _index_groups(doc["islands"], "islands", "islands", gpu_count)
    count = gpu_count if gpu_count is not None else _implied_count(islands)
    # GPUs the annotation does not mention get an island of their own: no NVLink is assumed that the
    # annotation did not claim.
    islands = _fill_singletons(islands, count)
    links = _links(doc, islands)
    return Topology(count, canonical_groups(islands), links)


def _fail(message: str) -> TopologyError:
    return TopologyError(f"{ANN_GPU_TOPOLOGY}: {message}")


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


_EXAMPLE = '{"islands": [[0,1,2,3],[4,5,6,7]], "links": "nvlink"}'


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
        raise _fail('"links" is "pcie" but an island has more than one GPU; use "nvlink" or split the islands')
    if links != "pcie" and not linked:
        raise _fail(f'"links" is "{links}" but every island has one GPU; use "pcie" or list the NVLink islands')
    if links == "nvswitch" and len(islands) > 1:
        raise _fail('"links" is "nvswitch" but there are several islands; use "nvlink" or merge the islands')
    return str(links)


def islands_to_masks(topo: Topology) -> list[int]:
    """One bitmask per NVLink island, bit i set for GPU i."""
    return [_mask(g) for g in topo.islands]


def _mask(indices: Iterable[int]) -> int:
    mask = 0
    for i in indices:
        mask |= 1 << i
    return mask
