"""Pure-Python twins of the native reply builders and the NodeNames mapper (ext/_native.pyx): the JSON
fragments of filter and prioritize replies, the grouping of failed nodes by sentence, and the mapping of
a NodeNames array to table slots. The reference, like _python.py (which re-exports these, so the selector
finds every twin in one module); a property test holds both implementations equal."""

from array import array
from typing import Any

import orjson

from scheduler.model.constants import (
    BETTER_FIT,
    CPU,
    GPU,
    MAX_ISLANDS,
    MAX_REASONS,
    MEMORY,
    MODEL,
    OK,
    POOL,
    TOPOLOGY,
    UNKNOWN,
)

# ---- reply builders (twins of the native ones in ext/_native.pyx) ----

_SCORE = [f',"Score":{k}}}'.encode() for k in range(11)]


def prioritize_json(frags: list[bytes], scores: array) -> bytes:
    """HostPriorityList: [{"Host":"n1","Score":7},...] from pre-quoted names."""
    items = (b'{"Host":' + f + _SCORE[min(10, max(0, s))] for f, s in zip(frags, scores, strict=True))
    return b"[" + b",".join(items) + b"]"


def pick_json(frags: list[bytes], verdicts: bytes, want: int) -> bytes:
    """The quoted names whose verdict is `want`, comma-separated (the inside of a JSON array)."""
    return b",".join(f for f, v in zip(frags, verdicts, strict=True) if v == want)


def _too_small(t: Any, s: int, code: int, cpu: int, mem: int, gpu: int) -> int:
    if code == CPU:
        return int(t.alloc_cpu[s] < cpu)
    if code == MEMORY:
        return int(t.alloc_mem[s] < mem)
    if code == GPU:
        return int(t.alloc_gpu[s] < gpu)
    if code == TOPOLOGY:
        base = s * MAX_ISLANDS
        return int(max(t.islands[base + k].bit_count() for k in range(MAX_ISLANDS)) < gpu)
    return 0


def _reason_key(t: Any, s: int, code: int, cpu: int, mem: int, gpu: int) -> int:
    if code == UNKNOWN or s < 0:
        return UNKNOWN << 40
    if code == POOL:
        return (code << 40) | t.pool[s]
    if code == MODEL:
        return (code << 40) | (t.model[s] + 1)
    if code == BETTER_FIT:
        return (code << 40) | (t.gpu_mask[s] & ~t.gpu_used[s]).bit_count()  # the sentence names the free GPUs
    return (code << 40) | _too_small(t, s, code, cpu, mem, gpu)


def reason_ids(
    t: Any,
    slots: array,
    verdicts: bytes,
    cpu: int,
    mem: int,
    gpu: int,
    out: array,
    order: array | None = None,
    tally: array | None = None,
) -> list[tuple[int, int]]:
    """Groups failed nodes by the sentence they get: out[i] indexes the returned list of
    (code, sample slot), numbered as the nodes come; -1 for nodes that passed. `order`: the positions to
    read the node arrays in (the kernel's two passes); the result is the same. `tally` (256 entries):
    each node's verdict counted in it."""
    n = len(slots)
    if tally is not None:
        if len(tally) < 256:
            raise ValueError("tally: fewer than 256 entries")
        for i in range(n):
            tally[verdicts[i]] += 1
    if order is not None and len(order) != n:
        raise ValueError("order: not one position per slot")
    keyed = (
        {i: _reason_key(t, slots[i], verdicts[i], cpu, mem, gpu) for i in order if verdicts[i] != OK} if order else {}
    )
    keys: dict[int, int] = {}
    distinct: list[tuple[int, int]] = []
    for i in range(n):
        code = verdicts[i]
        s = slots[i]
        if code == OK:
            out[i] = -1
            continue
        key = keyed[i] if order else _reason_key(t, s, code, cpu, mem, gpu)
        j = keys.get(key)
        if j is None:
            if len(distinct) < MAX_REASONS:
                j = keys[key] = len(distinct)
                distinct.append((code, s))
            else:
                j = MAX_REASONS - 1  # more distinct sentences than that: the rest share the last one
        out[i] = j
    return distinct


def failed_json(frags: list[bytes], ids: array, texts: list[bytes], hard: bytes) -> tuple[bytes, bytes, int, int]:
    """The insides of FailedNodes and FailedAndUnresolvableNodes for nodes whose ids[i] >= 0, and
    how many nodes each holds."""
    parts: tuple[list[bytes], list[bytes]] = ([], [])
    for f, idx in zip(frags, ids, strict=True):
        if idx >= 0:
            parts[hard[idx]].append(f + b":" + texts[idx])
    return b",".join(parts[0]), b",".join(parts[1]), len(parts[0]), len(parts[1])


def map_names(t: Any, body: bytes, start: int, end: int) -> tuple[array, list[str], list[bytes]] | None:
    """body[start:end] is the inside of a NodeNames array as Go writes it ("a","b", no spaces, no
    escapes): its slots (-1 for names not in the table), names and quoted names, the table's own
    objects where the name is known. None for anything else: the caller takes the general JSON path."""
    inner = body[start:end]
    if b"\\" in inner:
        return None
    try:
        names = orjson.loads(b"[" + inner + b"]")
    except orjson.JSONDecodeError:
        return None
    if any(type(n) is not str for n in names):
        return None
    get = t.slot_of.get
    slots = array("i", [get(n, -1) for n in names])
    frags = [t.quoted[s] if s >= 0 else orjson.dumps(n) for s, n in zip(slots, names, strict=True)]
    if b",".join(frags) != inner:  # whitespace or another spelling: not Go's bytes
        return None
    return slots, [t.names[s] if s >= 0 else n for s, n in zip(slots, names, strict=True)], frags
