"""The reply builders: Cython and pure-Python twins write the same bytes, and the bytes are JSON."""

import os
from array import array

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.kernels import _python as twin

try:
    from scheduler.kernels import _native as native
except ImportError:  # pragma: no cover - only without a build
    if not os.environ.get("BERTH_NO_EXTENSIONS"):
        raise
    native = None

pytestmark = pytest.mark.skipif(native is None, reason="BERTH_NO_EXTENSIONS set and the kernels are not built")

names = st.lists(st.text(min_size=1, max_size=20), min_size=0, max_size=60)


@settings(max_examples=200, deadline=None)
@given(names=names, data=st.data())
def test_prioritize_json_matches_and_parses(names: list[str], data: st.DataObject) -> None:
    frags = [orjson.dumps(n) for n in names]
    scores = array("q", data.draw(st.lists(st.integers(-5, 20), min_size=len(names), max_size=len(names))))
    out = native.prioritize_json(frags, scores)
    assert out == twin.prioritize_json(frags, scores)
    assert orjson.loads(out) == [{"Host": n, "Score": min(10, max(0, s))} for n, s in zip(names, scores, strict=True)]


@settings(max_examples=200, deadline=None)
@given(names=names, data=st.data())
def test_pick_and_failed_json_match_and_parse(names: list[str], data: st.DataObject) -> None:
    frags = [orjson.dumps(n) for n in names]
    n = len(names)
    verdicts = bytes(data.draw(st.lists(st.sampled_from([0, 2, 5, 7]), min_size=n, max_size=n)))
    assert native.pick_json(frags, verdicts, 0) == twin.pick_json(frags, verdicts, 0)
    picked = orjson.loads(b"[" + native.pick_json(frags, verdicts, 0) + b"]")
    assert picked == [nm for nm, v in zip(names, verdicts, strict=True) if v == 0]
    k = data.draw(st.integers(1, 4))
    ids = array("i", [-1 if v == 0 else data.draw(st.integers(0, k - 1)) for v in verdicts])
    texts = [orjson.dumps(data.draw(st.text(max_size=30))) for _ in range(k)]
    hard = bytes(data.draw(st.lists(st.integers(0, 1), min_size=k, max_size=k)))
    got = native.failed_json(frags, ids, texts, hard)
    assert got == twin.failed_json(frags, ids, texts, hard)
    soft, unres, n_soft, n_unres = got
    soft_map = orjson.loads(b"{" + soft + b"}")
    unres_map = orjson.loads(b"{" + unres + b"}")
    assert n_soft + n_unres == sum(1 for i in ids if i >= 0)
    assert set(soft_map) | set(unres_map) == {nm for nm, i in zip(names, ids, strict=True) if i >= 0}
