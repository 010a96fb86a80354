"""A short churn through Berth on KWOK nodes (loadtests/churn.py, `make bench-churn` in miniature): gangs
admitted by the webhook, whole and fractional GPUs, pods that run and finish. It asserts the facts the
benchmark checks at its end, never a rate or a latency: every pod bound, Berth's cache equal to a fresh
list, no GPU index held twice, quota never above max, no reservation left.

It took 69 s on the loaded 2-core machine (over the minute `make test` may spend on it), so it runs only with
BERTH_E2E_CHURN=1 (`BERTH_E2E_CHURN=1 .venv/bin/python -m pytest -m e2e tests/e2e/test_churn_smoke.py`)."""

import asyncio
import os

import pytest

from loadtests import churn
from tests.e2e import harness as h

pytestmark = [
    pytest.mark.skipif(not (h.k8s_bin() / "kwok").exists(), reason="kwok not built: run `make k8s`"),
    pytest.mark.skipif(os.environ.get("BERTH_E2E_CHURN") != "1", reason="over a minute: BERTH_E2E_CHURN=1 runs it"),
]


def test_a_short_churn_through_berth_leaves_every_check_true() -> None:
    args = churn.parse_args(
        ["--nodes", "40", "--rate", "6", "--warmup", "2", "--duration", "6", "--drain", "60", "--modes", "berth"]
    )
    args.min_run, args.max_run = 2, 6  # pods finish inside the run: Succeeded and deleted under Berth's watch
    (result,) = asyncio.run(churn.bench(args))
    assert result.pods > 0 and result.unbound_at_end == 0
    assert churn.failures([result]) == []
    for check in (
        "cache equals a fresh list",
        "no GPU index held twice",
        "no reservation left, ledger empty after the pods go",
        "quota never above max (1 s samples)",
    ):
        assert result.checks[check].startswith("yes"), (check, result.checks[check])
    assert result.finished > 0  # KWOK ran pods to Succeeded while they were watched
