"""kube-scheduler's four extender verbs, each bytes in, bytes out (a WireError for bad input).

Both front ends call these: the hot-path connection handler (verbs_http.py) and the aiohttp routes
(http_app.py). This is the hot path: metric children are bound once, a pod's ask is remembered by
UID and resourceVersion (cluster/seen.py), and a partial filter reply is reused while the failures
repeat on the same names (names_cache.NodeNamesCache keeps it with the names).
"""

import logging
import time
from array import array
from typing import Any

import orjson

from scheduler import kernels as K
from scheduler.cluster.gangs import Gang
from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState, pod_key
from scheduler.extender.errors import ErrorReplies
from scheduler.extender.names_cache import NodeNamesCache, visit_order
from scheduler.extender.wire import (
    ExtenderArgs,
    WireError,
    binding_reply,
    error_filter_reply,
    filter_reply,
    parse_binding_args,
    parse_preemption_args,
    preemption_reply,
)
from scheduler.model.constants import OTHER_RESOURCE, OTHER_RESOURCE_USED
from scheduler.model.podspec import PodAsk, PodError, pod_ask
from scheduler.observability.metrics import Metrics
from scheduler.policy import devices, preempt
from scheduler.policy.binder import Binder, BindError
from scheduler.policy.devices import involves_dra
from scheduler.policy.placement import REASON_NAMES, Judgement, Reasons, judge, reusable, run_filter, run_score

log = logging.getLogger("berth.server")
UNKNOWN_NODE = "berth: node is not in Berth's cache yet"
VERBS = ("filter", "prioritize", "bind", "preempt")
_TALLY = bytes(8 * 256)  # reason_ids' count per verdict code, zeroed


class Verbs:
    """The verbs and what they keep between calls. `errors` words their failures; its three replies are
    bound here too, so the connection handler finds verbs and error replies on one object."""

    def __init__(
        self, state: ClusterState, metrics: Metrics, binder: Binder, errors: ErrorReplies, by_name: bool = False
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.binder = binder
        self.seen = state.seen
        self.by_name = by_name  # index pods seen by namespace/name: explain's only source without an API server
        self.names = NodeNamesCache(state.table)
        self.refused, self.too_large, self.failed = errors.refused, errors.too_large, errors.failed
        self.timers = {v: metrics.duration.labels(v) for v in VERBS}
        # Counter children bound once: labels() takes a lock and a dict lookup on every call.
        self._rejected = {code: metrics.rejections.labels(label) for code, label in REASON_NAMES.items()}
        self._judged = {r: metrics.filter_nodes.labels(r) for r in ("passed", "failed", "unresolvable")}
        metrics.kernels_native.set(1 if K.NATIVE else 0)
        self.accepting = True  # False once shutdown begins: binds are refused (503)
        # Gangs (scheduler/admission/): the two dicts themselves, never rebound, so a pod of no gang pays
        # one truth test of an empty dict (admission off) or one lookup (gangs known).
        self._gang_pods = state.gangs.of_pod
        self._gang_holds = state.gang_holds

    def _ask(self, args_pod: dict[str, Any]) -> PodAsk:
        meta = args_pod.get("metadata")
        uid, version = (meta.get("uid"), meta.get("resourceVersion")) if isinstance(meta, dict) else (None, None)
        seen = self.seen
        ask = seen.recall(uid, version)
        if ask is None:
            ask = pod_ask(args_pod)
        seen.remember(ask, version, self.by_name)
        return ask

    # -- verbs ---------------------------------------------------------------------------------
    def filter_body(self, raw: bytes) -> bytes:
        args = self.names.parse(raw)
        try:
            ask = self._ask(args.pod)
        except PodError as exc:
            self.metrics.errors.labels("filter", "pod").inc()
            return error_filter_reply(f"berth: pod cannot be judged: {exc}")
        steered = self._steer(args, ask) if self._gang_pods else None  # gangs: off unless enabled
        body = self._filter(args, ask) if steered is None else steered
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "filter %s/%s over %d nodes: %s",
                ask.namespace,
                ask.name,
                len(args.names),
                body[:300],
                extra={"pod": f"{ask.namespace}/{ask.name}", "verb": "filter"},
            )
        return body

    def _filter(self, args: ExtenderArgs, ask: PodAsk) -> bytes:
        state, m = self.state, self.metrics
        if state.dra.assumed:  # judged again: the hold its last filter left for its claims must not count
            state.dra.lift(pod_key(ask.namespace, ask.name))  # against it (policy/devices.py: _hold)
        j = judge(state, ask)
        n = len(args.names)
        if j.admission.error:
            self._judged["unresolvable"].inc(n)
            m.rejections.labels("quota").inc(n)
            sentence = orjson.dumps(f"berth: {j.admission.error}")
            return filter_reply(args, b"", b"", b",".join(f + b":" + sentence for f in args.frags), [])
        dra = involves_dra(state, args.pod, j)
        order = visit_order(args, state.table)  # made once: an uncached list's is not kept between the kernels
        verdicts, passed = run_filter(state, j, args.slots, tier=not dra, order=order)
        if ask.request.other:
            passed = self._other_resources(args, ask, verdicts)
        if dra:  # ResourceClaims or DRA-backed extended resources: slices and device quotas (policy/devices.py)
            passed = devices.judge_nodes(state, args.pod, j, args.slots, verdicts)
        if passed == n:
            self._judged["passed"].inc(n)
            if args.known is not None:  # prioritize will send these same names
                args.known.scored = j.scored
            return filter_reply(args, None, b"", b"")
        if dra and j.dra.changed:
            return self._worded_reply(args, j, verdicts, passed)
        return self._partial_reply(args, j, verdicts, passed, order)

    def _worded_reply(self, args: ExtenderArgs, j: Judgement, verdicts: bytearray, passed: int) -> bytes:
        """Some nodes failed, with DRA sentences that differ per node (a model's quota): each node worded on its
        own, off the kernels' grouping and the reply cache (DRA pods are few; their claims change each call)."""
        reasons = Reasons(self.state, j)
        parts: tuple[list[bytes], list[bytes]] = ([], [])
        for i, code in enumerate(verdicts):
            if code == K.OK:
                continue
            slot = args.slots[i]
            text, hard = reasons.of(code, slot) if code != K.UNKNOWN and slot >= 0 else (UNKNOWN_NODE, False)
            parts[int(hard)].append(args.frags[i] + b":" + orjson.dumps(text))
            self.metrics.rejections.labels(REASON_NAMES.get(code, "other")).inc()
        index = [i for i, v in enumerate(verdicts) if v == K.OK] if args.nodes is not None else None
        picked = K.pick_json(args.frags, verdicts, K.OK)
        self._judged["passed"].inc(passed)
        self._judged["failed"].inc(len(parts[0]))
        self._judged["unresolvable"].inc(len(parts[1]))
        return filter_reply(args, picked, b",".join(parts[0]), b",".join(parts[1]), index)

    def _steer(self, args: ExtenderArgs, ask: PodAsk) -> bytes | None:
        """A gang member goes to its planned node only (the admission loop holds the capacity there); a
        member of a gang not admitted yet goes nowhere, with the gang's reason. None: not a gang's pod."""
        key = f"{ask.namespace}/{ask.name}"
        node = self.state.plans.get(key)
        if node is None:
            gang = self.state.gangs.gang_of(key)
            if gang is None or key in gang.bound:
                return None
            node = self._recorded_plan(key, gang)
            if node is None:
                return self._refuse(args, gang)
        why = orjson.dumps(f"berth: gang member {key} is planned on node {node}")
        index = [i for i, name in enumerate(args.names) if name == node]
        failed = b",".join(f + b":" + why for i, f in enumerate(args.frags) if args.names[i] != node)
        return filter_reply(args, b",".join(args.frags[i] for i in index), b"", failed, index)

    @staticmethod
    def _refuse(args: ExtenderArgs, gang: Gang) -> bytes:
        """Every node, unresolvable (preemption cannot admit a gang), with the reason the gang waits."""
        why = orjson.dumps(f"berth: gang {gang.key} is not admitted: {gang.reason or gang.phase}")
        return filter_reply(args, b"", b"", b",".join(f + b":" + why for f in args.frags), [])

    def _recorded_plan(self, key: str, gang: Gang) -> str | None:
        """The plan written on an ungated member (berth.dev/gang-plan), within its timeout: what a process
        that has not restored its plans yet (a restart, a standby before it leads) steers by. A refusal
        there would park the member in kube-scheduler's unschedulable queue for minutes."""
        m = gang.members.get(key)
        if m is None or m.gated or not m.plan or gang.phase in ("Broken", "TimedOut"):
            return None
        timeout = gang.timeout or self.state.config.admission.schedule_timeout_seconds
        return m.plan if time.time() < m.admitted_at + timeout else None

    def _other_resources(self, args: ExtenderArgs, ask: PodAsk, verdicts: bytearray) -> int:
        """Extended resources other than GPUs (MIG profiles such as nvidia.com/mig-1g.10gb, ...) are
        rarer: checked here, off the kernel path, against allocatable less what the ledger's pods hold."""
        t = self.state.table
        for i, s in enumerate(args.slots):
            if verdicts[i] == K.OK:
                facts = t.facts[s]
                have = facts.other_alloc if facts else {}
                used = t.other_used[s] if s >= 0 else {}
                if any(have.get(k, 0) < v for k, v in ask.request.other.items()):
                    verdicts[i] = OTHER_RESOURCE
                elif any(have.get(k, 0) - used.get(k, 0) < v for k, v in ask.request.other.items()):
                    verdicts[i] = OTHER_RESOURCE_USED  # its own sentence: preemption may free it
        return verdicts.count(K.OK)

    def _partial_reply(
        self, args: ExtenderArgs, j: Judgement, verdicts: bytearray, passed: int, order: array | None
    ) -> bytes:
        """Some nodes failed: group them by sentence (kernel), word each group once, write the maps."""
        r = j.ask.request
        ids = array("i", bytes(4 * len(verdicts)))
        t = self.state.table
        tally = array("q", _TALLY)
        groups = K.reason_ids(t, args.slots, verdicts, r.cpu, r.memory, r.gpu, ids, order, tally)
        reasons = Reasons(self.state, j)
        worded = [reasons.of(code, slot) if code != K.UNKNOWN else (UNKNOWN_NODE, False) for code, slot in groups]
        texts = [orjson.dumps(text) for text, _ in worded]
        hard = bytes(int(h) for _, h in worded)
        # Consecutive pods of one team see the same failures on the same names (the nodes outside the
        # team's pools above all). ids[i] is -1 exactly where a node passed, so equal ids, sentences and
        # hard flags on the same names make the same reply: reuse the last one written.
        known = args.known
        last = known.partial if known is not None else None
        if last is not None and last[0] == ids and last[1] == texts and last[2] == hard:
            picked, reply, n_failed, n_unres = last[3:]
        else:
            failed, unres, n_failed, n_unres = K.failed_json(args.frags, ids, texts, hard)
            index = [i for i, v in enumerate(verdicts) if v == K.OK] if args.nodes is not None else None
            picked = K.pick_json(args.frags, verdicts, K.OK)
            reply = filter_reply(args, picked, failed, unres, index)
            if known is not None:
                known.partial = (ids, texts, hard, picked, reply, n_failed, n_unres)
        self.names.offer_survivors(args, picked, verdicts, j.scored)
        for code in {code for code, _ in groups}:
            self._rejected[code].inc(tally[code])
        judged = self._judged
        judged["passed"].inc(passed)
        judged["failed"].inc(n_failed)
        judged["unresolvable"].inc(n_unres)
        return reply

    def _hand_over(self, namespace: str, name: str) -> tuple[PodEntry, float] | None:
        """A planned gang member binds: its hold becomes the binder's own reservation (bind checks the node
        and the quota again, which the hold would otherwise fill)."""
        key = f"{namespace}/{name}"
        deadline = self.state.gang_holds.get(key)
        entry = self.state.ledger.get(key)
        if deadline is None or entry is None:
            return None
        self.state.release_hold(key)
        return entry, deadline

    def _take_back(self, entry: PodEntry, deadline: float) -> None:
        if entry.key in self.state.plans and self.state.ledger.get(entry.key) is None:
            self.state.hold_planned(entry, deadline)

    def prioritize_body(self, raw: bytes) -> bytes:
        args = self.names.parse(raw)
        try:
            ask = self._ask(args.pod)
        except PodError:  # prioritize has no error field; a pod that cannot be judged gets no preference
            self.metrics.errors.labels("prioritize", "pod").inc()
            scores = array("q", bytes(8 * len(args.names)))
        else:
            known = args.known
            scored = known.scored if known is not None else None
            j = judge(self.state, ask)
            # filter's scores, when they hold, need no kernel and so no order
            order = None if reusable(self.state, j, scored, len(args.slots)) else visit_order(args, self.state.table)
            scores = run_score(self.state, j, args.slots, scored=scored, order=order)
            if log.isEnabledFor(logging.DEBUG) and len(scores):
                best = max(range(len(scores)), key=scores.__getitem__)
                log.debug(
                    "prioritize %s/%s: best %s (%d of 10) among %d",
                    ask.namespace,
                    ask.name,
                    args.names[best],
                    scores[best],
                    len(scores),
                    extra={"pod": f"{ask.namespace}/{ask.name}", "node": args.names[best], "verb": "prioritize"},
                )
        return K.prioritize_json(args.frags, scores)

    async def bind_body(self, raw: bytes) -> bytes:
        if not self.accepting:
            raise WireError(503, "Berth is shutting down; retry against the new leader")
        args = parse_binding_args(raw)
        handed = self._hand_over(args.namespace, args.name) if self._gang_holds else None
        try:
            result = await self.binder.bind(args)
        except BindError as exc:
            if handed is not None:
                self._take_back(*handed)
            self.metrics.binds.labels(exc.result).inc()
            log.info(
                "bind %s/%s -> %s refused: %s",
                args.namespace,
                args.name,
                args.node,
                exc.reason,
                extra={"pod": f"{args.namespace}/{args.name}", "node": args.node},
            )
            return binding_reply(exc.reason)
        self.metrics.binds.labels(result).inc()
        log.debug(
            "bound %s/%s -> %s (%s)",
            args.namespace,
            args.name,
            args.node,
            result,
            extra={"pod": f"{args.namespace}/{args.name}", "node": args.node},
        )
        return binding_reply()

    def preempt_body(self, raw: bytes) -> bytes:
        args = parse_preemption_args(raw)
        try:
            ask = self._ask(args.pod)
        except PodError as exc:
            raise WireError(400, f"ExtenderPreemptionArgs.Pod cannot be judged: {exc}") from None
        decision = preempt.process(self.state, ask, args)
        log.info(
            "preempt for %s/%s: %d candidate nodes, %d kept; spared: %s",
            ask.namespace,
            ask.name,
            len(args.victims),
            len(decision.victims),
            "; ".join(sorted(set(decision.refused.values()))) or "none",
            extra={"pod": f"{ask.namespace}/{ask.name}", "verb": "preempt"},
        )
        for uids in decision.victims.values():
            for uid in uids:
                key = self.state.ledger.by_uid.get(uid)
                entry = self.state.ledger.get(key) if key else None
                self.metrics.victims.labels(entry.team if entry and entry.team else "").inc()
        return preemption_reply(decision.victims, decision.pdb)
