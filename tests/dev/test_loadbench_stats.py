"""The control-plane bench's statistics and /proc readings compute what they
claim (no timing is asserted: figures belong to docs/BENCHMARKS.md)."""

from __future__ import annotations

import math
import os
import statistics

import pytest

from ourvidz_dev import loadbench as lb


def test_percentile_interpolates_between_ranks_like_numpy():
    values = list(range(1, 101))  # 1..100, shuffled order must not matter
    shuffled = values[::2] + values[1::2]
    assert lb.percentile(shuffled, 50) == 50.5
    assert lb.percentile(shuffled, 99) == pytest.approx(99.01)
    assert lb.percentile(shuffled, 0) == 1 and lb.percentile(shuffled, 100) == 100
    # the same rule as statistics.quantiles(method="inclusive")
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert lb.percentile(values, 99) == pytest.approx(cuts[98])
    assert lb.percentile([3.0, 1.0], 25) == 1.5
    assert lb.percentile([7.0], 99) == 7.0
    assert math.isnan(lb.percentile([], 50))
    with pytest.raises(ValueError):
        lb.percentile([1.0], 101)


def test_summary_leaves_out_what_was_not_measured():
    s = lb.Summary.of([0.3, math.nan, 0.1, 0.2])
    assert (s.n, s.p50, s.max) == (3, 0.2, 0.3)
    assert s.p99 == pytest.approx(0.298)
    empty = lb.Summary.of([math.nan])
    assert empty.n == 0 and math.isnan(empty.p50) and math.isnan(empty.max)


def test_rates_spans_and_times():
    assert lb.rate(500, 40.0) == 12.5
    assert math.isnan(lb.rate(5, 0.0))
    assert lb.span([3.0, 1.0, 2.0], [4.0, 9.0]) == 8.0
    earlier = lb.parse_time("2026-11-21T10:00:00Z")
    assert lb.parse_time("2026-11-21T10:00:01.250Z") - earlier == pytest.approx(1.25)
    assert lb.parse_time("2026-11-21T11:00:00+01:00") == earlier
    assert lb.ms(0.0425) == "42" and lb.ms(math.nan) == "–"


def test_latency_lines_of_a_trace():
    t = lb.Trace(user=0, posted=10.0, accepted=10.02, running=10.1, completed=10.3, filed=10.35)
    t.record(
        {
            "state": "completed",
            "created_at": "2026-11-21T10:00:00Z",
            "started_at": "2026-11-21T10:00:00.050Z",
            "completed_at": "2026-11-21T10:00:00.200Z",
        }
    )
    t.seen_running(10.2)  # a later sighting (a replayed event) changes nothing
    t.seen_running(10.08)  # an earlier one wins
    lines = {k: v.p50 for k, v in lb.latencies([t]).items()}
    assert lines["POST /v1/jobs answered"] == pytest.approx(0.02)
    assert lines["submit → start (server: created_at → started_at)"] == pytest.approx(0.05)
    assert lines["submit → `running` event (client)"] == pytest.approx(0.08)
    assert lines["start → completed (server: the worker's StartJob → CompleteJob)"] == (
        pytest.approx(0.15)
    )
    assert lines["submit → completed (server)"] == pytest.approx(0.2)
    assert lines["submit → `completed` event (client)"] == pytest.approx(0.3)
    assert lines["`completed` → filed in the workspace (client)"] == pytest.approx(0.05)
    assert t.state == "completed"


def test_proc_readings():
    status = "Name:\tpython\nVmPeak:\t  9000 kB\nVmRSS:\t  1234 kB\n"
    assert lb.parse_status_kib(status, "VmRSS") == 1234 * 1024
    assert lb.parse_status_kib(status, "Pss") is None
    me = os.getpid()
    rss, pss = lb.rss_bytes(me), lb.pss_bytes(me)
    assert rss and pss and 0 < pss <= rss * 1.01
    assert lb.cpu_seconds(me) > 0
    assert lb.rss_bytes(2**22 + 12345) is None  # no such process
    parent = lb.children(os.getppid())
    assert me in parent
    probe = lb.Probe("me", lambda: me)
    assert probe.pids() == [me] and probe.memory() > 0
    assert lb.Probe("gone", lambda: None).memory() is None
    used = lb.cpu_used({"a": 1.0, "b": None}, {"a": 1.5, "b": 2.0})
    assert used == {"a": 0.5, "b": 2.0}


def test_report_tables():
    results = lb.Results(machine="a machine")
    results.latency["phase"] = lb.latencies([])
    results.lines.append(("jobs/s", "12.5"))
    results.memory = {
        "idle": {"jobs": 80 * lb.MIB, "sdxl-1": None},
        "queued": {"jobs": 81 * lb.MIB},
    }
    results.cpu = {"load": {"jobs": 1.5}}
    text = lb.report(results)
    assert "| jobs/s | 12.5 |" in text
    assert "| jobs | 80 | 81 |" in text and "| sdxl-1 | – | – |" in text
    assert "| jobs | 1.5 |" in text
    assert "| POST /v1/jobs answered | 0 | – | – | – |" in text
