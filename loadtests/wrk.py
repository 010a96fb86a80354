"""The wrk side of `berth bench`: what one case measures, the Lua scripts wrk runs, and reading its output.

Each case is one verb with one body shape; wrk (one thread, `--latency`) posts a prepared body, or
(bind) seeds tiny pods through filter and then binds them in order, counting rejections in Lua.
"""

from __future__ import annotations

import math
import re
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests.procs import Pinning


@dataclass(frozen=True)
class Case:
    verb: str  # filter | prioritize | bind
    mode: str = "names"  # names | nodelist
    nodes: int = 0

    @property
    def label(self) -> str:
        if self.verb == "bind":
            return "bind"
        return f"{self.verb} {'NodeNames' if self.mode == 'names' else 'NodeList'} {self.nodes}"


@dataclass
class WrkResult:
    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    errors: int = 0  # non-2xx replies, socket errors and (bind) replies with a non-empty Error
    p999_ms: float = math.nan  # from the scripts' done() (LATENCY_LUA); nan when wrk did not print it
    max_ms: float = math.nan
    runs: int = 1  # repetitions this result is the median of


def median_result(runs: Sequence[WrkResult]) -> WrkResult:
    """One case over several repetitions: each percentile and the rate is the median of the runs' values
    (a run disturbed by the shared machine moves it less than a mean would); requests and errors add up."""
    if not runs:
        raise ValueError("no runs")

    def med(values: Sequence[float]) -> float:
        kept = [v for v in values if not math.isnan(v)]
        return statistics.median(kept) if kept else math.nan

    return WrkResult(
        med([r.p50_ms for r in runs]),
        med([r.p99_ms for r in runs]),
        med([r.rps for r in runs]),
        sum(r.requests for r in runs),
        sum(r.errors for r in runs),
        med([r.p999_ms for r in runs]),
        max((r.max_ms for r in runs if not math.isnan(r.max_ms)), default=math.nan),
        len(runs),
    )


@dataclass
class Measurement:
    server: str
    case: Case
    conns: int
    result: WrkResult | None
    note: str = ""


# wrk's own --latency table stops at p99: every script's done() also prints p50 / p99 / p99.9 / max (us).
LATENCY_LUA = """
function print_latency(latency)
  io.write(string.format("LATENCY p50=%d p99=%d p999=%d max=%d\\n", latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""

POST_LUA = (
    LATENCY_LUA.replace("{", "{{").replace("}", "}}")
    + """
-- POST one prepared ExtenderArgs body, as kube-scheduler's Go client would send it.
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept-Encoding"] = "gzip"
wrk.headers["User-Agent"] = "Go-http-client/1.1"

function done(summary, latency, requests)
  print_latency(latency)
end
"""
)

# Binds need pods the server has seen: bind carries only names, so Berth learns a pod's request from
# filter (in demo mode an unseen pod is refused). A seed run files tiny pods through filter, each
# against the one node it will be bound to; the bind run then binds them in the same order.
_LUA_COMMON = (
    LATENCY_LUA.replace("{", "{{").replace("}", "}}")
    + """
local nodes = {{{nodes}}}
local threads = {{}}
local headers = {{["Content-Type"] = "application/json", ["User-Agent"] = "Go-http-client/1.1"}}
counter, ok, rejected, repeats = 0, 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  prefix, uid_prefix, limit = args[1], args[2], tonumber(args[3])
  -- wrk calls request() once to check the script before it sends anything: that call makes pod 0
  counter = -1
end

function node_of(i)
  return nodes[(i - 1) % #nodes + 1]
end

function total(name)
  local sum = 0
  for _, t in ipairs(threads) do sum = sum + t:get(name) end
  return sum
end
"""
)

SEED_LUA = (
    _LUA_COMMON
    + """
-- Filter pods 1..limit (then idle on /readyz): each becomes known to the server.
local template = [==[{template}]==]

function request()
  if counter >= limit then return wrk.format("GET", "/readyz") end
  counter = counter + 1
  local name = string.format("%s-%d", prefix, counter)
  local uid = string.format("%s%012d", uid_prefix, counter)
  local body = string.format(template, name, uid, node_of(counter))
  return wrk.format("POST", "/scheduler/filter", headers, body)
end

function response(status, hdrs, body)
  if status == 200 and string.find(body, "NodeNames", 1, true) then ok = ok + 1 end
end

function done(summary, latency, requests)
  io.write(string.format("SEED seeded=%d\\n", total("ok")))
end
"""
)

BIND_LUA = (
    _LUA_COMMON
    + """
-- Bind the seeded pods in order, each to its node; past `limit` start over (an idempotent re-bind).
function request()
  counter = counter + 1
  if counter > limit then repeats = repeats + 1 end
  local i = (counter - 1) % limit + 1
  local body = string.format(
    '{{"PodName":"%s-%d","PodNamespace":"{namespace}","PodUID":"%s%012d","Node":"%s"}}',
    prefix, i, uid_prefix, i, node_of(i))
  return wrk.format("POST", "/scheduler/bind", headers, body)
end

function response(status, hdrs, body)
  if status == 200 and string.find(body, '"Error"%s*:%s*""') then
    ok = ok + 1
  else
    rejected = rejected + 1
    first_rejection = first_rejection or (status .. " " .. string.sub(body, 1, 300))
  end
end

function done(summary, latency, requests)
  local line = "BIND ok=%d rejected=%d repeats=%d\\n"
  io.write(string.format(line, total("ok"), total("rejected"), total("repeats")))
  print_latency(latency)
  for _, t in ipairs(threads) do
    local first = t:get("first_rejection")
    if first then io.write("BIND first rejection: " .. string.gsub(first, "\\n", " ") .. "\\n") end
  end
end
"""
)
SEED_CAP = 45_000  # Berth remembers the last 50,000 pods seen in filter


_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Read p50/p99, requests/s and error counts from `wrk --latency` output."""
    percentiles = {
        p: _ms(n, u)
        for p, n, u in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    }
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in ", output, re.MULTILINE)
    if "50" not in percentiles or "99" not in percentiles or not rps or not total:
        raise ValueError(f"unexpected wrk output:\n{output}")
    p999 = top = math.nan
    lua = re.search(r"^LATENCY p50=(\d+) p99=(\d+) p999=(\d+) max=(\d+)", output, re.MULTILINE)
    if lua:  # microseconds, from the same histogram: finer than the table's rounded figures
        percentiles["50"], percentiles["99"], p999, top = (int(g) / 1e3 for g in lua.groups())
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sockets:
        errors += sum(int(g) for g in sockets.groups())
    rejected = re.search(r"^BIND ok=\d+ rejected=(\d+)", output, re.MULTILINE)
    if rejected:
        # A rejected bind is also a 200 reply: count it once, not twice.
        errors = max(errors, int(rejected.group(1)))
    rps_value, requests = float(rps.group(1)), int(total.group(1))
    return WrkResult(percentiles["50"], percentiles["99"], rps_value, requests, errors, p999, top)


def run_wrk(pin: Pinning, url: str, script: Path, conns: int, seconds: int, script_args: Sequence[str] = ()) -> str:
    argv = [
        *pin.client,
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    if script_args:
        argv += ["--", *script_args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc.stdout
