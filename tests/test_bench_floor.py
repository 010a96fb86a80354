"""The benchmark's floor server (loadtests/floor), its framing, and the percentile / excess math of
`berth bench` (loadtests/wrk.py, report.py, procs.py). No timings are asserted."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from loadtests import procs, report, suite, wrk
from loadtests.wrk import WrkResult
from tests.fakes.ports import free_port


def result(p50: float, p99: float, p999: float, rps: float = 1000.0, errors: int = 0) -> WrkResult:
    return WrkResult(p50, p99, rps, 100, errors, p999, p999 * 2)


def test_median_of_runs_takes_each_percentile_s_median() -> None:
    runs = [result(1.0, 5.0, 9.0, 900), result(2.0, 3.0, 30.0, 1100, 1), result(1.5, 4.0, 10.0, 1000)]
    med = wrk.median_result(runs)
    assert (med.p50_ms, med.p99_ms, med.p999_ms, med.rps) == (1.5, 4.0, 10.0, 1000)
    assert (med.requests, med.errors, med.runs, med.max_ms) == (300, 1, 3, 60.0)
    no_tail = wrk.median_result([WrkResult(1.0, 2.0, 10.0, 5)])
    assert math.isnan(no_tail.p999_ms)
    with pytest.raises(ValueError):
        wrk.median_result([])


def test_excess_over_the_floor_and_the_target() -> None:
    ex = report.excess(result(0.5, 0.9, 1.5), result(0.1, 0.2, 0.3))
    assert (ex.p50, ex.p99, ex.p999) == pytest.approx((0.4, 0.7, 1.2))
    assert (ex.p99_ratio, ex.p999_ratio) == pytest.approx((1.75, 3.0))
    assert ex.meets()
    worse = report.excess(result(0.5, 1.5, 1.5), result(0.1, 0.2, 0.3))  # p99 excess 1.3 > 2 x 0.4
    assert not worse.meets() and worse.p99_ratio == pytest.approx(3.25)
    assert not report.excess(result(0.5, 0.9, 2.5), result(0.1, 0.2, 0.3)).meets()  # p99.9 excess 2.2 > 1.6
    assert report.Excess(0.0, 0.1, 0.1).p99_ratio == math.inf


def test_floor_table_pairs_each_case_with_its_floor() -> None:
    case = wrk.Case("filter", "names", 500)
    results = [
        wrk.Measurement("berth", case, 1, result(0.75, 1.25, 2.0)),  # binary fractions: exact
        wrk.Measurement("floor", case, 1, result(0.25, 0.5, 1.0)),
    ]
    lines = report.floor_table(results, "berth", markdown=True).splitlines()
    assert lines[2] == (
        "| filter NodeNames 500 | 1 | 0.750 / 1.250 / 2.000 | 0.250 / 0.500 / 1.000 | 0.500 / 0.750 / 1.000 "
        "| 1.5x / 2.0x | met |"
    )


def test_parse_wrk_reads_the_scripts_own_percentiles() -> None:
    output = """Running 1s test @ http://127.0.0.1:1/scheduler/filter
  Latency Distribution
     50%  100.00us
     75%  110.00us
     90%  120.00us
     99%  300.00us
  1000 requests in 1.00s, 1.00MB read
Requests/sec:   1000.00
LATENCY p50=101 p99=305 p999=1250 max=4000
"""
    r = wrk.parse_wrk(output)
    assert (r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms) == pytest.approx((0.101, 0.305, 1.25, 4.0))
    assert "print_latency(latency)" in wrk.POST_LUA.format(body="/x") and "percentile(99.9)" in wrk.BIND_LUA


def test_steal_and_busy_shares_from_proc_stat_counters() -> None:
    keys = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    before = dict.fromkeys(keys, 0.0) | {"load1": 1.0}
    after = before | {"user": 50.0, "idle": 40.0, "steal": 10.0, "load1": 2.0}
    assert procs.steal_share(before, after) == pytest.approx(0.1)
    assert procs.busy_share(before, after) == pytest.approx(0.6)
    assert procs.steal_share({"load1": 1.0}, after) is None
    note = report.machine_note(before, after)
    assert "1.00 before, 2.00 after" in note and "CPU steal 10.00%" in note


def test_floor_replies_are_framed_like_berth_s() -> None:
    """The same head fields and lengths as verbs_http writes (its Date is as long as the floor's)."""
    from email.utils import formatdate

    body = b'{"NodeNames":["a"]}'
    berth_head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n\r\n" % (
        len(body),
        formatdate(0, usegmt=True).encode(),
    )
    assert len(suite.floor_reply(body)) == len(berth_head) + len(body)
    assert suite.floor_reply(body).endswith(b"\r\n\r\n" + body)


def post(port: int, path: str, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # keep-alive: a second one
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.skipif(not shutil.which("go"), reason="the floor server is built with Go")
def test_floor_server_builds_and_answers_the_stored_bytes(tmp_path: Path) -> None:
    binary, note = procs.floor_binary()
    assert binary is not None, note
    big = b'{"NodeNames":[' + b",".join(b'"node-%d"' % i for i in range(20_000)) + b"]}"  # ~250 KB
    small = suite.floor_reply(b'{"Error":""}')
    manifest = tmp_path / "manifest.txt"
    (tmp_path / "big").write_bytes(suite.floor_reply(big))
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "ok").write_bytes(suite.floor_reply(b"ok"))
    lines = [f"/scheduler/filter 7 {tmp_path / 'big'}", f"/scheduler/filter -1 {tmp_path / 'small'}"]
    manifest.write_text("\n".join([*lines, f"/readyz -1 {tmp_path / 'ok'}"]) + "\n")
    port = free_port()
    proc = subprocess.Popen([str(binary), "-addr", f"127.0.0.1:{port}", "-manifest", str(manifest)])
    try:
        procs.wait_ready(f"http://127.0.0.1:{port}", proc, tmp_path / "none.log", timeout=20)  # type: ignore[arg-type]
        ok = suite.floor_reply(b"ok")
        assert post(port, "/scheduler/filter", b"1234567") == suite.floor_reply(big) + ok, "by path and length"
        assert post(port, "/scheduler/filter", b"12") == small + ok, "any other length"
        assert post(port, "/scheduler/nothing", b"12").startswith(b"HTTP/1.1 404 "), "unknown path"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_pinning_puts_chrt_before_taskset_only_where_permitted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs.os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(procs.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(procs, "realtime_allowed", lambda _prio: True)
    pin, note = procs.make_pinning(0, 1, realtime=10)
    assert pin.server == ["chrt", "-f", "10", "taskset", "-c", "0"]
    assert pin.client == ["chrt", "-f", "10", "taskset", "-c", "1"]
    assert "SCHED_FIFO priority 10" in note
    monkeypatch.setattr(procs, "realtime_allowed", lambda _prio: False)
    pin, note = procs.make_pinning(0, 1, realtime=10)
    assert pin.server == ["taskset", "-c", "0"] and "not permitted" in note
    pin, note = procs.make_pinning(0, 1, realtime=0)
    assert pin.client == ["taskset", "-c", "1"] and "SCHED_FIFO" not in note
