from __future__ import annotations

import argparse
import io
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.gpu.discovery import add_arguments, parse_nvidia_smi_topo, run
from scheduler.gpu.topology import Topology, TopologyError, islands_to_masks, parse_topology_annotation
from scheduler.model.names import ANN_GPU_TOPOLOGY as ANNOTATION

FIXTURES = Path(__file__).parents[1] / "fixtures" / "nvidia-smi"

QUADS = ((0, 1, 2, 3), (4, 5, 6, 7))
ALL8 = ((0, 1, 2, 3, 4, 5, 6, 7),)
SINGLE8 = tuple((i,) for i in range(8))

# fixture -> expected Topology, spelled out by hand rather than derived from the parser.
EXPECTED: dict[str, Topology] = {
    # 4x T4 on a dual-socket 1U, driver 470: GPU0/1 share a PCIe switch (PIX) on socket 0, GPU2/3 hang
    # off socket 1's host bridge (PHB), SYS across sockets. NUMA Affinity 0,0,1,1.
    "pcie-4x-t4.txt": Topology(4, ((0,), (1,), (2,), (3,)), "pcie"),
    # 4x V100 SXM2 (AWS p3.8xlarge): one quad of the DGX-1 mesh, NV1/NV2 mix, all pairs linked but not
    # equally, hence "nvlink". A VM, so NUMA Affinity is N/A.
    "nvlink-4x-v100-sxm2.txt": Topology(4, ((0, 1, 2, 3),), "nvlink"),
    # DGX-1 V100 hybrid cube-mesh, driver 418 (no NUMA Affinity column).
    # Each quad is fully linked and every GPU has one link into the other quad (0-4 NV2, 1-5 NV2,
    # 2-6 NV1, 3-7 NV1), so GPU0 and GPU5 are not directly linked yet all eight GPUs form one connected
    # NVLink component. NCCL rings/trees span all eight over NVLink, which is why islands are connected
    # components rather than cliques.
    "dgx1-v100.txt": Topology(8, ALL8, "nvlink"),
    # DGX-1 P100, driver 375: same cube-mesh with NV1 only, SOC instead of SYS, columns separated by
    # runs of spaces (as pasted into a forum post) rather than tabs.
    "dgx1-p100-soc.txt": Topology(8, ALL8, "nvlink"),
    # DGX A100: six NVSwitches, NV12 between every pair. EPYC 7742 in NPS4 puts each GPU pair on its
    # own NUMA node (3, 1, 7, 5); ten mlx5 NIC columns and NIC rows are ignored.
    "dgx-a100.txt": Topology(8, ALL8, "nvswitch"),
    # HGX H100 8-GPU, driver 535: NV18 all-to-all, NIC0..NIC9 columns plus "NIC Legend", and the
    # extra "GPU NUMA ID" column (N/A).
    "hgx-h100.txt": Topology(8, ALL8, "nvswitch"),
    # 8x L40S PCIe-only, two sockets: PIX within a switch pair, NODE across switches, SYS across sockets.
    "pcie-8x-l40s-2numa.txt": Topology(8, SINGLE8, "pcie"),
    # Two HGX A100 4-GPU baseboards: NV4 full mesh within a board, SYS between them, so islands split.
    "nvlink-2x4-a100.txt": Topology(8, QUADS, "nvlink"),
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_every_fixture_has_expectations() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.txt")) == sorted(EXPECTED)


# --------------------------------------------------------------------------------------------------
# nvidia-smi topo -m


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses(name: str) -> None:
    assert parse_nvidia_smi_topo(fixture(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_round_trips_through_annotation(name: str) -> None:
    topo = parse_nvidia_smi_topo(fixture(name))
    assert parse_topology_annotation(topo.to_annotation(), topo.gpu_count) == topo
    assert parse_topology_annotation(topo.to_annotation(), None) == topo


def test_to_annotation_is_compact_json() -> None:
    topo = parse_nvidia_smi_topo(fixture("nvlink-2x4-a100.txt"))
    assert topo.to_annotation() == ('{"islands":[[0,1,2,3],[4,5,6,7]],"links":"nvlink"}')


def test_codec_imports_neither_subprocess_nor_kubernetes() -> None:
    """The node table imports the codec: it must not drag in what only `berth topology` needs."""
    code = (
        "import sys; import scheduler.gpu.topology; "
        "print(sorted(m for m in ('subprocess', 'kubernetes', 'scheduler.gpu.discovery') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_topology_is_frozen() -> None:
    topo = EXPECTED["dgx-a100.txt"]
    with pytest.raises(AttributeError):
        topo.links = "pcie"  # type: ignore[misc]


def test_ansi_escapes_are_ignored() -> None:
    text = fixture("hgx-h100.txt")
    lines = text.splitlines()
    lines[0] = "\x1b[4m" + lines[0] + "\x1b[0m"
    lines = [re.sub(r"^(GPU\d+)", "\x1b[1m\\1\x1b[0m", line) for line in lines]
    lines = [line.replace("NV18", "\x1b[32mNV18\x1b[0m") for line in lines]
    assert parse_nvidia_smi_topo("\n".join(lines)) == EXPECTED["hgx-h100.txt"]


@pytest.mark.parametrize("name", ["dgx-a100.txt", "hgx-h100.txt", "pcie-4x-t4.txt"])
def test_single_spaces_crlf_and_preamble(name: str) -> None:
    # Copied out of a browser or a Windows terminal: tabs collapsed, CRLF, a prompt line on top.
    squashed = "\r\n".join(" ".join(line.split()) for line in fixture(name).splitlines())
    assert parse_nvidia_smi_topo("$ nvidia-smi topo -m\r\n" + squashed) == EXPECTED[name]


def test_single_gpu() -> None:
    text = "\tGPU0\tCPU Affinity\tNUMA Affinity\nGPU0\t X \t0-7\t0\n\nLegend:\n\n  X    = Self\n"
    assert parse_nvidia_smi_topo(text) == Topology(1, ((0,),), "pcie")


def test_no_affinity_columns() -> None:
    text = "\tGPU0\tGPU1\nGPU0\t X \tNV2\nGPU1\tNV2\t X \n"
    assert parse_nvidia_smi_topo(text) == Topology(2, ((0, 1),), "nvswitch")


def test_all_affinity_unavailable() -> None:
    text = "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\nGPU0\t X \tPHB\tN/A\tN/A\nGPU1\tPHB\t X \tN/A\tN/A\n"
    assert parse_nvidia_smi_topo(text) == Topology(2, ((0,), (1,)), "pcie")


def test_affinity_columns_are_read_past_not_kept() -> None:
    # NUMA and CPU affinity only shape the row (a short row is an error); the annotation drops them.
    text = "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\nGPU0\t X \tSYS\t0-7\t0\nGPU1\tSYS\t X \t0-7\t1\n"
    assert parse_nvidia_smi_topo(text) == Topology(2, ((0,), (1,)), "pcie")
    with pytest.raises(TopologyError, match="row GPU1 has 3 cells"):
        parse_nvidia_smi_topo(text.replace("\t0-7\t1", "\t1"))


def _matrix(n: int) -> str:
    header = "\t" + "\t".join(f"GPU{i}" for i in range(n))
    rows = ["\t".join([f"GPU{i}", *(" X " if i == j else "SYS" for j in range(n))]) for i in range(n)]
    return "\n".join([header, *rows]) + "\n"


def test_sixty_four_gpus_is_the_limit() -> None:
    assert parse_nvidia_smi_topo(_matrix(64)).gpu_count == 64
    with pytest.raises(TopologyError, match="65 GPUs found; at most 64"):
        parse_nvidia_smi_topo(_matrix(65))


DGX1 = "dgx1-v100.txt"


def _edit(name: str, old: str, new: str, count: int = 1) -> str:
    text = fixture(name)
    assert old in text
    return text.replace(old, new, count)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no header row starting with GPU0"),
        ("Failed to initialize NVML: Driver/library version mismatch\n", "no header row starting with GPU0"),
        (
            _edit(DGX1, "GPU3\tNV2\tNV1\tNV2\t X \tSYS\tSYS\tSYS\tNV1\tPHB\tSYS\tPIX\tSYS\t0-19,40-59\n", ""),
            "no row for GPU3",
        ),
        (
            _edit(DGX1, "GPU2\tNV1\tNV2\t X \tNV2", "GPU2\tNV1\tNV2\t X \tQPI"),
            "row GPU2, column GPU3: unknown link 'QPI'",
        ),
        (
            _edit(DGX1, "GPU5\tSYS\tNV2\tSYS\tSYS\tNV1\t X ", "GPU5\tSYS\tNV2\tSYS\tSYS\tNV1\tNV1"),
            "row GPU5, column GPU5: expected X on the diagonal",
        ),
        (
            _edit(DGX1, "GPU1\tNV1\t X \tNV2", "GPU1\t X \t X \tNV2"),
            "row GPU1, column GPU0: X must only appear",
        ),
        (_edit(DGX1, "\t20-39,60-79\nGPU5", "\nGPU5"), "row GPU4 has 12 cells, the header has 13 columns"),
        (_edit(DGX1, "\t0-19,40-59\nGPU1", "\t0-19,40-59\tN/A\nGPU1"), "row GPU0 has 14 cells"),
        (_edit(DGX1, "\tGPU2\tGPU3", "\tGPU3\tGPU2"), "header column 3 is GPU3, expected GPU2"),
        (_edit(DGX1, "mlx5_0\tmlx5_2", "mlx5_0\tGPU8"), "header has GPU8 after non-GPU columns"),
        (_edit(DGX1, "GPU7\tSYS", "GPU8\tSYS"), "row GPU8 has no matching header column"),
        (_edit(DGX1, "GPU6\tSYS\tSYS\tNV1", "GPU5\tSYS\tSYS\tNV1"), "row GPU5 appears twice"),
    ],
)
def test_bad_matrix(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=re.escape(message)):
        parse_nvidia_smi_topo(text)


def test_non_text_is_rejected() -> None:
    with pytest.raises(TopologyError, match="expected text"):
        parse_nvidia_smi_topo(b"GPU0")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# annotation


def test_annotation_defaults() -> None:
    # No links: inferred from the islands.
    assert parse_topology_annotation('{"islands": [[0,1],[2,3]]}', 4) == Topology(4, ((0, 1), (2, 3)), "nvlink")
    assert parse_topology_annotation('{"islands": [[0],[1]]}', None) == Topology(2, ((0,), (1,)), "pcie")


def test_annotation_is_canonicalised_and_gaps_filled() -> None:
    topo = parse_topology_annotation('{"islands": [[7,6],[1,0]], "x-extra": 1}', 8)
    assert topo.islands == ((0, 1), (2,), (3,), (4,), (5,), (6, 7))
    # Without a node count, the highest index listed decides.
    assert parse_topology_annotation('{"islands": [[5]]}').gpu_count == 6


def test_annotation_empty_node() -> None:
    assert parse_topology_annotation('{"islands": []}', 0) == Topology(0, (), "pcie")


def test_annotation_accepts_bytes() -> None:
    assert parse_topology_annotation(b'{"islands": [[0,1]]}', 2).links == "nvlink"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "gpu_count", "message"),
    [
        ('{"islands": [[8,9],[9]]}', 10, f"{ANNOTATION}: GPU index 9 is listed in two islands"),
        ('{"islands": [[0,1],[1,2]]}', None, "GPU index 1 is listed in two islands"),
        (
            '{"islands": [[0,9]]}',
            8,
            "GPU index 9 in islands[0] does not exist; the node has 8 GPUs (indices 0-7)",
        ),
        ('{"islands": [[0]]}', 0, "GPU index 0 in islands[0] does not exist; the node has 0 GPUs"),
        ('{"islands": [[64]]}', None, "GPU index 64 in islands[0] is too large; at most 64 GPUs"),
        ('{"islands": [[0,-1]]}', None, "islands[0] contains -1, which is not a GPU index"),
        ('{"islands": [[true]]}', None, "islands[0] contains true, which is not a GPU index"),
        ('{"islands": [[1.0]]}', None, "islands[0] contains 1.0, which is not a GPU index"),
        ('{"islands": [["0"]]}', None, 'islands[0] contains "0", which is not a GPU index'),
        ('{"islands": [[[0]]]}', None, "islands[0] contains a list, which is not a GPU index"),
        ('{"islands": [[0], 1]}', None, "islands[1] must be a list of GPU indices, got a number"),
        ('{"islands": [[0], []]}', None, "islands[1] is empty"),
        ('{"islands": [[1,2,1]]}', None, "GPU index 1 appears twice in islands[0]"),
        ('{"islands": "0-3"}', None, '"islands" must be a list of lists of GPU indices, got a string'),
        ('{"numa": [[0]]}', None, 'missing "islands"'),
        ("islands=0,1", None, "not valid JSON"),
        ("", None, "not valid JSON"),
        ("[[0,1]]", None, "expected a JSON object"),
        (
            '{"islands": [[0,1]], "links": "NVLink"}',
            None,
            '"links" must be one of nvswitch, nvlink, pcie, got "NVLink"',
        ),
        ('{"islands": [[0,1]], "links": 3}', None, '"links" must be one of nvswitch, nvlink, pcie, got 3'),
        (
            '{"islands": [[0,1]], "links": "pcie"}',
            None,
            '"links" is "pcie" but an island has more than one GPU',
        ),
        (
            '{"islands": [[0],[1]], "links": "nvlink"}',
            None,
            '"links" is "nvlink" but every island has one GPU',
        ),
        (
            '{"islands": [[0,1],[2,3]], "links": "nvswitch"}',
            None,
            '"links" is "nvswitch" but there are several',
        ),
        ('{"islands": [[0,1]]}', 65, "the node has 65 GPUs; at most 64 are supported"),
        ('{"islands": [[0,1]]}', -1, "the node GPU count must be a non-negative integer, got -1"),
    ],
)
def test_bad_annotation(value: str, gpu_count: int | None, message: str) -> None:
    with pytest.raises(TopologyError, match=re.escape(message)):
        parse_topology_annotation(value, gpu_count)


@pytest.mark.parametrize("numa", ["[[0,1],[1]]", "[[0],[8]]", '{"0": [0]}', '"x"', "[[0,1]]"])
def test_numa_of_older_annotations_is_ignored(numa: str) -> None:
    """Annotations written before NUMA was dropped still place by their islands, whatever "numa" says."""
    topo = parse_topology_annotation(f'{{"islands": [[0,1],[2,3]], "numa": {numa}}}', 4)
    assert topo == Topology(4, ((0, 1), (2, 3)), "nvlink")
    assert "numa" not in orjson.loads(topo.to_annotation())


def test_bad_annotation_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_topology_annotation("{", None)


# --------------------------------------------------------------------------------------------------
# masks


@pytest.mark.parametrize(
    ("name", "islands"),
    [
        ("pcie-4x-t4.txt", [0b1, 0b10, 0b100, 0b1000]),
        ("dgx-a100.txt", [0xFF]),
        ("nvlink-2x4-a100.txt", [0x0F, 0xF0]),
        ("dgx1-v100.txt", [0xFF]),
    ],
)
def test_masks(name: str, islands: list[int]) -> None:
    topo = parse_nvidia_smi_topo(fixture(name))
    assert islands_to_masks(topo) == islands


def test_mask_uses_all_64_bits() -> None:
    topo = parse_topology_annotation('{"islands": [[62, 63]]}', 64)
    assert islands_to_masks(topo)[-1] == (1 << 62) | (1 << 63) == 0xC000_0000_0000_0000
    assert all(0 <= m < 1 << 64 for m in islands_to_masks(topo))


# --------------------------------------------------------------------------------------------------
# fuzzing: only TopologyError may escape, and anything accepted is a partition


def _or(masks: list[int]) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


def _assert_partitions(topo: Topology) -> None:
    full = (1 << topo.gpu_count) - 1
    masks = islands_to_masks(topo)
    assert all(masks)
    assert sum(m.bit_count() for m in masks) == topo.gpu_count  # disjoint ...
    assert _or(masks) == full  # ... and covering
    assert topo.links in ("nvswitch", "nvlink", "pcie")
    assert parse_topology_annotation(topo.to_annotation(), topo.gpu_count) == topo


def _check_if_accepted(parse: Callable[..., Topology], *args: object) -> Topology | None:
    # The try covers only the parse, so a TopologyError from the round trip inside the checks fails.
    try:
        topo = parse(*args)
    except TopologyError:
        return None
    _assert_partitions(topo)
    return topo


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TOKENS = ["X", " X ", "NV2", "NV", "NVx", "SYS", "SOC", "GPU0", "GPU3", "GPU99", "N/A", "", "\t", "\n",
           "\x1b[1m", "CPU Affinity", "-1", "\u00a0", "\x00"]  # fmt: skip


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_matrix_random_text(text: str) -> None:
    _check_if_accepted(parse_nvidia_smi_topo, text)


@FUZZ
@given(st.sampled_from(sorted(EXPECTED)), st.data())
def test_fuzz_matrix_mutated_fixture(name: str, data: st.DataObject) -> None:
    parts = re.split(r"(\s+)", fixture(name))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(parts) - 1))
        parts[at] = data.draw(st.sampled_from(_TOKENS) | st.text(max_size=4))
    _check_if_accepted(parse_nvidia_smi_topo, "".join(parts))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=16,
)
_GROUPS = st.lists(st.lists(st.integers(-2, 70), max_size=6), max_size=6) | _JSON
_ANNOTATIONS = st.fixed_dictionaries(
    {},
    optional={
        "islands": _GROUPS,
        "numa": _GROUPS,
        "links": st.sampled_from(["nvswitch", "nvlink", "pcie"]) | _JSON,
    },
)


@FUZZ
@given(st.text(max_size=200) | _JSON.map(lambda v: orjson.dumps(v).decode()), st.none() | st.integers(-1, 70))
def test_fuzz_annotation_random_json(value: str, gpu_count: int | None) -> None:
    _check_if_accepted(parse_topology_annotation, value, gpu_count)


@FUZZ
@given(_ANNOTATIONS, st.none() | st.integers(-1, 70))
def test_fuzz_annotation_shaped_json(doc: dict[str, object], gpu_count: int | None) -> None:
    topo = _check_if_accepted(parse_topology_annotation, orjson.dumps(doc).decode(), gpu_count)
    if topo is not None and gpu_count is not None:
        assert topo.gpu_count == gpu_count


# --------------------------------------------------------------------------------------------------
# CLI


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="berth topology")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_file_prints_annotation(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args("--file", str(FIXTURES / "dgx-a100.txt"))) == 0
    out, err = capsys.readouterr()
    assert out == EXPECTED["dgx-a100.txt"].to_annotation() + "\n"
    assert err == ""


def test_cli_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(fixture("pcie-4x-t4.txt")))
    assert run(_args("--file", "-")) == 0
    expected = {"islands": [[0], [1], [2], [3]], "links": "pcie"}
    assert orjson.loads(capsys.readouterr().out) == expected


def test_cli_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    assert run(_args("--file", str(missing))) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert f"cannot read {missing}: No such file or directory" in err


def test_cli_garbage_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "topo.txt"
    path.write_text("hello\n")
    assert run(_args("--file", str(path))) == 2
    _, err = capsys.readouterr()
    assert err.startswith("berth topology: nvidia-smi topo -m: no header row") and err.count("\n") == 1


def test_cli_without_nvidia_smi(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert run(_args()) == 2
    assert "nvidia-smi not found on PATH" in capsys.readouterr().err


def _fake_nvidia_smi(tmp_path: Path, body: str) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as a fake nvidia-smi")
def test_cli_runs_nvidia_smi(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_nvidia_smi(tmp_path, f'[ "$1 $2" = "topo -m" ] || exit 3\ncat "{FIXTURES / "hgx-h100.txt"}"')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")
    assert run(_args()) == 0
    assert capsys.readouterr().out == EXPECTED["hgx-h100.txt"].to_annotation() + "\n"


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as a fake nvidia-smi")
def test_cli_nvidia_smi_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")
    assert run(_args()) == 2
    err = capsys.readouterr().err
    assert "exited with status 9: NVIDIA-SMI has failed" in err and err.count("\n") == 1


def test_cli_kubeconfig_needs_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args("--file", str(FIXTURES / "dgx-a100.txt"), "--kubeconfig", "/x")) == 2
    assert "--kubeconfig is only used together with --node" in capsys.readouterr().err


class _FakeCoreV1:
    calls: list[tuple[str, object]]
    loaded: list[str]
    error: Exception | None = None

    def __init__(self) -> None:
        pass

    def patch_node(self, name: str, body: object) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((name, body))


@pytest.fixture
def fake_kube(monkeypatch: pytest.MonkeyPatch) -> type[_FakeCoreV1]:
    from kubernetes import client, config

    loaded: list[str] = []
    fake = type("FakeCoreV1", (_FakeCoreV1,), {"calls": [], "loaded": loaded})
    monkeypatch.setattr(config, "load_kube_config", lambda config_file=None: loaded.append(config_file))
    monkeypatch.setattr(config, "load_incluster_config", lambda: loaded.append("in-cluster"))
    monkeypatch.setattr(client, "CoreV1Api", fake)
    return fake


def test_cli_patches_node(capsys: pytest.CaptureFixture[str], fake_kube: type[_FakeCoreV1]) -> None:
    rc = run(_args("--file", str(FIXTURES / "dgx1-v100.txt"), "--node", "gpu-7", "--kubeconfig", "/kc"))
    assert rc == 0
    annotation = EXPECTED["dgx1-v100.txt"].to_annotation()
    assert fake_kube.calls == [("gpu-7", {"metadata": {"annotations": {ANNOTATION: annotation}}})]
    assert fake_kube.loaded == ["/kc"]
    assert "gpu-7" in capsys.readouterr().out


def test_cli_patches_node_in_cluster(fake_kube: type[_FakeCoreV1]) -> None:
    assert run(_args("--file", str(FIXTURES / "pcie-4x-t4.txt"), "--node", "n1")) == 0
    assert fake_kube.loaded == ["in-cluster"]


def test_cli_node_not_found(capsys: pytest.CaptureFixture[str], fake_kube: type[_FakeCoreV1]) -> None:
    from kubernetes.client import ApiException

    fake_kube.error = ApiException(status=404, reason="Not Found")
    assert run(_args("--file", str(FIXTURES / "pcie-4x-t4.txt"), "--node", "ghost")) == 2
    assert capsys.readouterr().err == "berth topology: node ghost not found\n"


def test_cli_bad_kubeconfig(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    assert run(_args("--file", str(FIXTURES / "pcie-4x-t4.txt"), "--node", "n1", "--kubeconfig", str(kubeconfig))) == 2
    err = capsys.readouterr().err
    assert err.startswith("berth topology: cannot load Kubernetes config") and err.count("\n") == 1


def test_linked_groups_are_connected_components_not_cliques() -> None:
    """A chain 0-1-2 is one island though 0 and 2 share no link (the DGX-1 cube-mesh case); 3 stands alone."""
    from scheduler.gpu.topology import linked_groups

    links = {(0, 1), (1, 2)}
    assert linked_groups(4, lambda i, j: (i, j) in links) == ((0, 1, 2), (3,))
    assert linked_groups(0, lambda i, j: True) == ()
