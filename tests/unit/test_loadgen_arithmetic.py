"""The zero-downtime benchmark's arithmetic (benchmarks/loadgen.py): percentiles, the longest
outage, the restore time. The load itself is exercised by running the benchmark."""

import pytest

from benchmarks.loadgen import (Load, Sample, answered_by, failure_kinds, longest_outage,
                                percentile, restore_time, summarize)

PERIOD = 0.02  # 50 requests a second


def ok(sent: float, latency: float = 0.005, body: str = "v1") -> Sample:
    return Sample(sent, latency, 200, body)


def failed(sent: float, status: int | None = None) -> Sample:
    return Sample(sent, None if status is None else 0.001, status, "")


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0  # one value is every percentile


def test_p99_of_a_few_values_is_the_slowest():
    assert percentile([0.01] * 50 + [0.9], 99) == 0.9  # 51 values: rank ceil(50.49) = 51


def test_percentile_of_nothing_is_none_and_q_is_checked():
    assert percentile([], 99) is None
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_no_failure_is_no_outage():
    assert longest_outage([ok(i * PERIOD) for i in range(10)], PERIOD) == 0.0


def test_outage_runs_from_the_first_failure_to_the_next_success():
    samples = [ok(0.00), failed(0.02), failed(0.04), failed(0.06), ok(0.08),
               failed(0.10), ok(0.12)]
    assert longest_outage(samples, PERIOD) == pytest.approx(0.06)


def test_one_failure_counts_one_period():
    assert longest_outage([ok(0.0), failed(0.02, 502), ok(0.04)], PERIOD) == pytest.approx(0.02)


def test_outage_until_the_end_counts_one_period_after_the_last_send():
    samples = [ok(0.0), failed(0.02), failed(0.04)]
    assert longest_outage(samples, PERIOD) == pytest.approx(0.04)


def test_outage_follows_send_order_not_answer_order():
    # a slow success sent before the failures does not cut them in two
    samples = [failed(0.04), ok(0.0, latency=0.5), failed(0.02), ok(0.06)]
    assert longest_outage(samples, PERIOD) == pytest.approx(0.04)


def test_summary_counts_non_2xx_and_silence_as_failed_and_times_only_2xx():
    samples = [ok(0.0, 0.010), ok(0.02, 0.030), failed(0.04, 503), failed(0.06), ok(0.08, 0.020)]
    s = summarize(samples, PERIOD)
    assert (s.sent, s.failed) == (5, 2)
    assert (s.p50, s.p99) == (0.020, 0.030)
    assert s.longest_outage == pytest.approx(0.04)


def test_restore_is_the_first_answer_of_the_previous_version_after_the_decision():
    samples = [ok(0.00, 0.01, "v1"),  # before the decision: does not count
               ok(1.00, 0.01, "v2"), failed(1.02), ok(1.04, 0.03, "v1"), ok(1.06, 0.005, "v1")]
    # 1.04 + 0.03 = 1.07 and 1.06 + 0.005 = 1.065: the earliest answer wins
    assert restore_time(samples, 1.01, "v1") == pytest.approx(0.055)


def test_restore_never_seen_is_none():
    assert restore_time([ok(1.0, 0.01, "v2")], 0.5, "v1") is None


def test_answered_by_counts_2xx_bodies_of_one_version():
    samples = [ok(0.0, body="v1\n"), ok(0.02, body="bad"), Sample(0.04, 0.01, 500, "v1")]
    assert answered_by(samples, "v1") == 1
    assert answered_by(samples, "bad") == 1


def test_load_goes_to_loopback_only():
    with pytest.raises(ValueError):
        Load("http://example.com/version")
    with pytest.raises(ValueError):
        Load("http://127.0.0.1:1/version", rps=0)


def test_failure_kinds_name_the_status_or_the_error():
    samples = [ok(0.0), Sample(0.02, None, error="ConnectError"), Sample(0.04, 0.001, 503, ""),
               Sample(0.06, None, error="ConnectError"), Sample(0.08, None)]
    assert failure_kinds(samples) == {"ConnectError": 2, "HTTP 503": 1, "no answer": 1}
