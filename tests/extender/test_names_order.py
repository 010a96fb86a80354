"""Long lists of names are visited by the kernels in table order (names_cache.visit_order): the order is made
once per cached list, remade when the table's names change, and the replies are byte for byte what the
names' own order gives."""

import random

import pytest

from loadtests.objects import make_pod, names_body
from scheduler.extender import names_cache
from scheduler.extender.names_cache import ORDER_FROM, visit_order
from scheduler.extender.server import Berth
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder
from tests.conftest import demo_cluster
from tests.e2e.objects import node


def _berth(nodes: int) -> Berth:
    state = demo_cluster(nodes=nodes)
    return Berth(state, Metrics(), Binder(state, None, None))


def _shuffled(berth: Berth, n: int, seed: int = 3) -> list[str]:
    names = [name for name in berth.state.table.names if name]
    random.Random(seed).shuffle(names)
    return names[:n]


def test_order_is_kept_with_the_cached_list_and_remade_when_names_change() -> None:
    berth = _berth(1_600)
    v, table = berth.verbs, berth.state.table
    body = names_body(make_pod("p-0", gpus=1), _shuffled(berth, 1_500))
    args = v.names.parse(body)
    order = visit_order(args, table)
    assert order is not None
    assert [args.slots[i] for i in order] == sorted(args.slots)
    again = v.names.parse(body)
    assert again.known is args.known and visit_order(again, table) is order  # made once
    berth.state.apply_node("ADDED", node("late-node", "order", gpus=8))  # new names: slots looked up again
    after = v.names.parse(body)
    remade = visit_order(after, table)
    assert remade is not order and remade is not None
    assert [after.slots[i] for i in remade] == sorted(after.slots)
    short = v.names.parse(names_body(make_pod("p-1", gpus=1), _shuffled(berth, ORDER_FROM - 1)))
    assert visit_order(short, table) is None


@pytest.mark.parametrize("gpus", [0, 1, 8])
def test_replies_are_the_same_in_either_order(monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
    names = None
    replies = []
    for order_from in (ORDER_FROM, 10**9):  # table order, then the names' own order
        monkeypatch.setattr(names_cache, "ORDER_FROM", order_from)
        berth = _berth(2_500)  # each its own state: the demand histogram sees the same asks
        names = names or _shuffled(berth, 2_400)
        pod = make_pod(f"p-{gpus}", gpus=gpus)
        filtered = berth.verbs.filter_body(names_body(pod, names))
        scored = berth.verbs.prioritize_body(names_body(pod, names))  # every name: scored by the kernels again
        replies.append((filtered, scored))
    assert replies[0] == replies[1]
    assert b'"FailedNodes":{"' in replies[0][0] or gpus == 0  # some nodes fail a GPU pod: both parts compared
