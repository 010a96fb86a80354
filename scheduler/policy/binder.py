"""Bind: assume first (reserve in the ledgers), then write the Binding; the watch confirms.

The reservation happens synchronously on the event loop before the first await, so concurrent binds
see each other at once: that is what keeps quotas and GPU indices exact. A failed write releases at
once; a timed-out one (outcome unknown) keeps its reservation; a reservation the watch never confirms
expires (state.Reservations).
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.nodetable import NodeFacts
from scheduler.cluster.state import ClusterState, format_gpu_ids, pod_key
from scheduler.kernels import OK, choose_devices, choose_share_device, node_verdict, node_verdict_shared, share_ask
from scheduler.model.binding import BindConflict, BindingArgs
from scheduler.model.names import ANN_BORROWING, ANN_GPU_IDS, ANN_GPU_MILLI, ANN_TEAM, GPU
from scheduler.model.podspec import PodAsk, PodError, pod_ask
from scheduler.policy import devices
from scheduler.policy.placement import Reasons, judge

log = logging.getLogger("berth.bind")

# Writes the Binding (with annotations) to the API server; returns "" or an error sentence.
BindWriter = Callable[[BindingArgs, dict[str, str]], Awaitable[str]]
PodFetcher = Callable[[str, str], Awaitable[dict[str, Any] | None]]


class BindError(Exception):
    """A bind that must fail with this sentence (and a metric result)."""

    def __init__(self, reason: str, result: str = "error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


class Binder:
    def __init__(self, state: ClusterState, write: BindWriter | None, fetch: PodFetcher | None) -> None:
        self.state = state
        self.write = write  # None: demo mode, the binding is recorded in memory only
        self.fetch = fetch
        self.in_flight = 0

    async def bind(self, args: BindingArgs) -> str:
        """Returns the result label for metrics; raises BindError with the reason otherwise."""
        key = pod_key(args.namespace, args.name)
        held = self.state.ledger.get(key)
        if held is not None and args.uid and held.uid and held.uid != args.uid:
            # Another pod of this name holds the entry (deleted and recreated before the watch said so): the
            # retry shortcut below answered this bind as done, and nothing bound the pod it names.
            raise BindError(f"pod {key} has UID {held.uid}, not {args.uid}: it was recreated", "conflict")
        if already_bound(key, held.node if held else None, args.node):
            return "already_bound"  # idempotent: a retried bind whose first reply was lost
        ask, bound = await self._ask(args)
        if bound:  # the API server has it on this node already (our earlier try, before a restart)
            return "already_bound"
        entry = self.reserve(ask, args)
        if self.write is None:
            self.state.reservations.pop(key, None)
            entry.confirmed = True
            return "bound"
        self.in_flight += 1
        try:
            error = await self.write(args, self.annotations(entry))
        except BindConflict as exc:
            return await self._conflict(args, str(exc))
        except TimeoutError:
            # The outcome is unknown: the API server may have written the Binding (it does under load, after
            # the client gave up). Releasing now would hand the same GPUs to the next pod while the watch
            # is about to show this one holding them; so the reservation stays: the watch confirms it,
            # or it expires unconfirmed (ledger.Reservations) and is released then.
            raise BindError(
                f"binding {key} to {args.node} timed out; its outcome is unknown, so {args.node} stays held "
                "until the watch confirms it or the reservation expires"
            ) from None
        except Exception as exc:  # any other failure of the write must release the reservation
            error = f"binding {key} to {args.node} failed: {exc}"
        finally:
            self.in_flight -= 1
        if error:
            self.state.forget(key)
            raise BindError(error)
        return "bound"

    async def _conflict(self, args: BindingArgs, message: str) -> str:
        """409 from the API server: bound already. To this node (a retry whose first reply was lost) it is
        done, and the watch confirms the reservation; elsewhere the reservation is released."""
        key = pod_key(args.namespace, args.name)
        pod = await self.fetch(args.namespace, args.name) if self.fetch is not None else None
        try:
            if already_bound(key, ((pod or {}).get("spec") or {}).get("nodeName"), args.node):
                return "already_bound"
        except BindError:
            self.state.forget(key)
            raise
        self.state.forget(key)
        raise BindError(f"the API server refused the binding of {key} (409): {message}", "conflict")

    async def _ask(self, args: BindingArgs) -> tuple[PodAsk, bool]:
        key = pod_key(args.namespace, args.name)
        ask = self.state.seen.by_uid(args.uid) if args.uid else None
        if ask is None and self.fetch is not None:
            pod = await self.fetch(args.namespace, args.name)
            if pod is None:
                raise BindError(f"pod {key} does not exist")
            uid = (pod.get("metadata") or {}).get("uid")
            if args.uid and uid and uid != args.uid:  # before the node check: the UID must name this pod
                raise BindError(f"pod {key} has UID {uid}, not {args.uid}: it was recreated")
            if already_bound(key, (pod.get("spec") or {}).get("nodeName"), args.node):
                self.state.apply_pod("MODIFIED", pod)
                return _parse(pod), True
            ask = _parse(pod)
        if ask is None:
            raise BindError(f"pod {key} is unknown to Berth: filter was not called for it")
        if (ask.namespace, ask.name) != (args.namespace, args.name):
            # The UID was seen for another pod: binding it under this name would reserve that pod's
            # resources here and refuse its own bind later as "already bound".
            raise BindError(
                f"PodUID {args.uid} is pod {pod_key(ask.namespace, ask.name)}'s, not {key}'s: "
                "the bind names one pod and the UID of another",
                "conflict",
            )
        if args.uid and ask.uid and ask.uid != args.uid:
            raise BindError(f"pod {key} has UID {ask.uid}, not {args.uid}: it was recreated")
        return ask, False

    def reserve(self, ask: PodAsk, args: BindingArgs) -> PodEntry:
        """Check the node and the quota again (other binds may have landed since filter) and hold. The hold
        filter left for the pod's claims is lifted first (it must not count against the pod itself); a refused
        bind puts it back: kube-scheduler allocated the claims in PreBind already, and they stay allocated."""
        dra, key = self.state.dra, pod_key(ask.namespace, ask.name)
        lifted = dra.lift(key) if dra.assumed else None
        try:
            return self._reserve(ask, args)
        except BindError:
            if lifted is not None:
                dra.restore(key, lifted)
            raise

    def _reserve(self, ask: PodAsk, args: BindingArgs) -> PodEntry:
        state = self.state
        t = state.table
        slot = t.slot_of.get(args.node)
        if slot is None:
            raise BindError(f"node {args.node} is not in Berth's cache")
        j = judge(state, ask)
        if j.admission.error:
            raise BindError(j.admission.error, "quota")
        r = ask.request
        sharing = r.sharing or bool(t.shared_slots)
        if sharing:
            code = node_verdict_shared(
                t, slot, r.cpu, r.memory, r.gpu, r.gpu_shared, r.gpu_fraction, ask.topology, j.pool_ok, j.model_ok
            )
        else:
            code = node_verdict(t, slot, r.cpu, r.memory, r.gpu, ask.topology, j.pool_ok, j.model_ok)
        if code != OK and not devices.serves(state, j, slot, code):  # DRA stood in for device-plugin capacity
            raise BindError(
                f"node {args.node} cannot take pod {ask.namespace}/{ask.name} any more: "
                f"{Reasons(state, j).of(code, slot)[0]}",
                "conflict",
            )
        gpu_ids, gpu_milli = self._devices(ask, slot, sharing)
        own = j.admission.own_pools is None or t.pools[t.pool[slot]] in j.admission.own_pools
        entry = PodEntry(
            key=pod_key(ask.namespace, ask.name),
            uid=ask.uid,
            node=args.node,
            request=r,
            priority=ask.priority,
            team=j.admission.team,
            borrowing=j.admission.borrowing or not own,
            gpu_ids=gpu_ids,
            confirmed=False,
            gpu_milli=gpu_milli,
        )
        self._exact_quota(entry, t.facts[slot])
        dra_error = devices.assume_at_bind(state, j, slot, entry.key)  # the pod's claims, counted like the pod
        if dra_error:
            raise BindError(dra_error, "quota")
        state.reserve(entry)
        return entry

    def _devices(self, ask: PodAsk, slot: int, sharing: bool) -> tuple[int, int]:
        """(device mask, milli): whole GPUs by best-fit island; a fraction on one device by best fit."""
        t, r = self.state.table, ask.request
        if not sharing:
            return (choose_devices(t.islands, slot, t.free_gpus(slot), r.gpu, ask.topology) if r.gpu else 0), 0
        whole, milli = share_ask(t, slot, r.gpu, r.gpu_shared, r.gpu_fraction)
        if milli > 0:
            g = choose_share_device(t, slot, milli)
            return (1 << g, milli) if g >= 0 else (0, 0)
        if whole > 0:
            return choose_devices(t.islands, slot, t.free_gpus(slot), whole, ask.topology), 0
        return 0, 0

    def _exact_quota(self, entry: PodEntry, facts: NodeFacts | None) -> None:
        """Admission charged the least the pod can hold; on its node it holds an exact amount. When that is
        more (replicas on a node with fewer replicas per GPU, or whole GPUs), check it now: reserve runs
        synchronously, so concurrent binds count each other's fractions exactly."""
        r = entry.request
        exact = entry.held_gpu_milli() or 0
        if exact <= r.nominal_gpu_milli(self.state.quotas.replicas):
            return
        error, borrowing = self.state.quotas.check_charge(entry.team, {GPU: exact}, facts.gpu_model if facts else None)
        if error:
            raise BindError(error, "quota")
        entry.borrowing = entry.borrowing or borrowing

    @staticmethod
    def annotations(entry: PodEntry) -> dict[str, str]:
        out = {}
        if entry.team:
            out[ANN_TEAM] = entry.team
            out[ANN_BORROWING] = "true" if entry.borrowing else "false"
        if entry.gpu_ids:
            out[ANN_GPU_IDS] = format_gpu_ids(entry.gpu_ids)
        if entry.gpu_milli:
            out[ANN_GPU_MILLI] = str(entry.gpu_milli)
        return out


def already_bound(key: str, bound_to: str | None, node: str) -> bool:
    """True when the pod is bound to `node` already (a retried bind: answered as done); BindError when
    it is bound to another node. `bound_to`: where the ledger or the API server has it, if anywhere."""
    if not bound_to:
        return False
    if bound_to != node:
        raise BindError(f"pod {key} is already bound to {bound_to}, not {node}", "conflict")
    return True


def _parse(pod: dict[str, Any]) -> PodAsk:
    try:
        return pod_ask(pod)
    except PodError as exc:
        raise BindError(f"pod cannot be judged: {exc}") from exc
