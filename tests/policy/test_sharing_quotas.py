"""Quotas with GPU sharing: GPUs counted in milli, so fractions add up exactly (per model too), under many
concurrent binds reserved before any completes; replicas without a stated fraction charged exactly at
bind; showback's GPU-seconds weighted by the fraction held."""

from __future__ import annotations

import asyncio
from typing import Any

from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.demo import team_quota
from scheduler.model.binding import BindingArgs
from scheduler.model.names import GPU
from scheduler.model.podspec import pod_ask
from scheduler.observability.metrics import Metrics
from scheduler.observability.showback import account_gpu_seconds, team_rows
from scheduler.policy.binder import Binder, BindError
from scheduler.policy.placement import judge
from scheduler.policy.quotas import MODEL_PREFIX
from tests.cluster.test_sharing_ledger import shared_pod
from tests.kernels.test_sharing_kernels import MODELS, node

MODEL_KEY = MODEL_PREFIX + MODELS[0]


def team_state(gpu_max: str, model_max: str | None = None) -> ClusterState:
    state = ClusterState(Config())
    quota = team_quota("ns", ["p"], None, {GPU: {"guaranteed": gpu_max, "max": gpu_max}})
    if model_max is not None:
        quota["spec"]["gpuModels"] = {MODELS[0]: {"guaranteed": model_max, "max": model_max}}
    state.apply_team("ADDED", quota)
    return state


def test_fractions_count_exactly_against_a_fractional_max() -> None:
    state = team_state("1.5")
    state.apply_node("ADDED", node("a", gpus=2, replicas=10, pool="p"))
    binder = Binder(state, None, None)
    for i in range(5):  # 0.3 each: 1.5 exactly after five
        ask = pod_ask(shared_pod(f"p{i}", gpu=3))
        binder.reserve(ask, BindingArgs(ask.name, ask.namespace, ask.uid, "a"))
    team = state.quotas.teams["ns"]
    assert team.used[GPU] == 1500 and team.used[MODEL_KEY] == 1500
    refused = judge(state, pod_ask(shared_pod("p5", gpu=1, fraction="0.1")))
    assert refused.admission.error == "team ns: nvidia.com/gpu 1.5 used + 0.1 requested > max 1.5"
    row = team_rows(state)[0]
    assert row["used"][GPU] == "1.5" and row["limits"][GPU] == {"guaranteed": "1.5", "max": "1.5"}


async def test_quotas_count_fractions_exactly_under_concurrent_binds() -> None:
    """Twenty binds of a quarter GPU against a max of 2 GPUs: all reserve before any write completes, so
    exactly eight get through; once written and confirmed the team holds 2.000 GPUs, and 0 after."""
    state = team_state("2", model_max="1.75")
    state.apply_node("ADDED", node("a", gpus=4, replicas=4, pool="p"))
    state.apply_node("ADDED", node("b", gpus=4, replicas=4, pool="p", model=MODELS[1]))
    gate = asyncio.Event()
    written: list[str] = []

    async def write(args: BindingArgs, annotations: dict[str, str]) -> str:
        await gate.wait()
        written.append(args.name)
        return ""

    binder = Binder(state, write, None)
    pods = [shared_pod(f"q{i}", gpu=1) for i in range(20)]
    for obj in pods:
        state.seen.remember(pod_ask(obj))
    tasks = [asyncio.create_task(binder.bind(BindingArgs(f"q{i}", "ns", f"uid-q{i}", "ab"[i % 2]))) for i in range(20)]
    await asyncio.sleep(0)  # every bind has reserved (or been refused) and waits on its write
    team = state.quotas.teams["ns"]
    assert team.used[GPU] == 2000 and binder.in_flight == 8
    assert team.used[MODEL_KEY] == 1000  # model A: 4 of its quarters made it before the GPU max was hit
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BindError)]
    assert len(refused) == 12 and all(r.result == "quota" for r in refused)
    assert sorted(written) == sorted(f"q{i}" for i, r in enumerate(results) if r == "bound")
    for i, r in enumerate(results):
        if r == "bound":
            obj: dict[str, Any] = pods[i]
            obj["spec"]["nodeName"] = "ab"[i % 2]
            state.apply_pod("MODIFIED", obj)
    assert team.used[GPU] == 2000 and team.pods == 8
    for obj in pods:
        state.apply_pod("DELETED", obj)
    assert team.used[GPU] == 0 and team.used[MODEL_KEY] == 0 and team.pods == 0


def test_replicas_without_a_stated_fraction_are_charged_exactly_at_bind() -> None:
    state = team_state("0.5")
    state.apply_node("ADDED", node("r", gpus=2, replicas=4, pool="p", renamed=True))
    binder = Binder(state, None, None)
    for i in range(2):
        ask = pod_ask(shared_pod(f"s{i}", shared=1))
        assert judge(state, ask).admission.error is None
        binder.reserve(ask, BindingArgs(ask.name, ask.namespace, ask.uid, "r"))
    assert state.quotas.teams["ns"].used[GPU] == 500
    ask = pod_ask(shared_pod("s2", shared=1))
    try:
        binder.reserve(ask, BindingArgs(ask.name, ask.namespace, ask.uid, "r"))
    except BindError as exc:
        assert exc.result == "quota" and "0.5 used + 0.25 requested > max 0.5" in exc.reason
    else:
        raise AssertionError("a third quarter GPU was admitted past max 0.5")


def test_showback_weights_gpu_seconds_by_fraction() -> None:
    state = team_state("8")
    state.apply_node("ADDED", node("a", gpus=2, replicas=4, pool="p"))
    binder = Binder(state, None, None)
    for name, gpu in (("quarter", 1), ("whole", 4)):
        ask = pod_ask(shared_pod(name, gpu=gpu))
        binder.reserve(ask, BindingArgs(ask.name, ask.namespace, ask.uid, "a"))
    m = Metrics()
    account_gpu_seconds(state, m, 4.0)
    value = m.registry.get_sample_value("berth_team_gpu_seconds_total", {"team": "ns", "model": MODELS[0]})
    assert value == 5.0  # (0.25 + 1) GPUs x 4 s
    assert m.registry.get_sample_value("berth_team_used", {"team": "ns", "resource": GPU}) == 1.25
