"""The NodeNames mapper (map_names): native and twin agree on every input, map exactly what a JSON
decoder would, and refuse (None) whatever Go would not have written, so the general path takes it."""

from __future__ import annotations

from types import ModuleType

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.cluster.nodetable import NodeTable
from scheduler.demo import make_node
from scheduler.kernels import _python
from tests.kernels.test_kernels import native_module


@pytest.fixture(params=["python", "native"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return _python if request.param == "python" else native_module()


def table(names: list[str]) -> NodeTable:
    t = NodeTable(capacity=4)  # small: the index must follow the table's growth
    for n in names:
        t.upsert(make_node(n, "shared", 8, 32, 0, None, None, None, "2030-01-01T00:00:00Z", "z"))
    return t


def inner(names: list[str]) -> tuple[bytes, int, int]:
    body = b'{"Pod":{},"Nodes":null,"NodeNames":' + orjson.dumps(names) + b"}"
    start = body.index(b"[") + 1
    return body, start, len(body) - 2


KNOWN = [f"aks-gpu-{i:05d}-vmss{i:06x}" for i in range(40)]


def test_maps_known_and_unknown_names_to_the_tables_objects(impl: ModuleType) -> None:
    t = table(KNOWN)
    asked = [KNOWN[7], "gone-node", KNOWN[0], KNOWN[7], "ünïcode-node"]
    mapped = impl.map_names(t, *inner(asked))
    assert mapped is not None
    slots, names, frags = mapped
    assert list(slots) == [t.slot_of[KNOWN[7]], -1, t.slot_of[KNOWN[0]], t.slot_of[KNOWN[7]], -1]
    assert names == asked and frags == [orjson.dumps(n) for n in asked]
    assert frags[0] is t.quoted[t.slot_of[KNOWN[7]]], "known names reuse the table's quoted bytes"


def test_follows_node_additions_and_removals(impl: ModuleType) -> None:
    t = table(KNOWN[:3])
    assert list(impl.map_names(t, *inner(KNOWN[:6]))[0])[3:] == [-1, -1, -1]
    t = table(KNOWN[:3])
    impl.map_names(t, *inner(KNOWN[:3]))
    for n in KNOWN[3:30]:  # grows the table past its capacity
        t.upsert(make_node(n, "shared", 8, 32, 0, None, None, None, "2030-01-01T00:00:00Z", "z"))
    t.remove(KNOWN[1])
    slots = impl.map_names(t, *inner(KNOWN[:30]))[0]
    assert list(slots) == [t.slot_of.get(n, -1) for n in KNOWN[:30]] and slots[1] == -1


@pytest.mark.parametrize(
    "raw",
    [
        b'"a", "b"',
        b'"a",',
        b',"a"',
        b'"a""b"',
        b'"a\\"b"',
        b'"a\\u0062"',
        b'"a',
        b'1,"a"',
        b'"a\x01"',
        b'"\xff\xfe"',
        b' "a"',
        b"null",
    ],
)
def test_refuses_what_go_would_not_write(impl: ModuleType, raw: bytes) -> None:
    body = b'{"NodeNames":[' + raw + b"]}"
    assert impl.map_names(table(["a", "b"]), body, 14, len(body) - 2) is None


def test_empty_list(impl: ModuleType) -> None:
    slots, names, frags = impl.map_names(table(["a"]), b'{"NodeNames":[]}', 14, 14)
    assert (list(slots), names, frags) == ([], [], [])


@settings(max_examples=300, deadline=None)
@given(
    known=st.lists(st.text(min_size=1, max_size=12), max_size=30, unique=True),
    extra=st.lists(st.text(min_size=0, max_size=12), max_size=10),
    data=st.data(),
)
def test_native_and_twin_agree(known: list[str], extra: list[str], data: st.DataObject) -> None:
    t = table(known)
    asked = data.draw(st.lists(st.sampled_from(known + extra) if known + extra else st.just("x"), max_size=40))
    body, start, end = inner(asked)
    got = native_module().map_names(t, body, start, end)
    assert got == _python.map_names(t, body, start, end)
    if got is not None:  # what a JSON decoder reads, slot by slot
        assert got[1] == asked and list(got[0]) == [t.slot_of.get(n, -1) for n in asked]
    else:
        assert b"\\" in body[start:end], "only escaped names are refused in Go-shaped bodies"
