"""Baseline, watch window and automatic rollback, with in-memory backends and an instant clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bot import config as configuration
from bot.errors import ConfigError
from bot.models import CheckStatus, DeploymentStatus
from bot.errors import MetricsUnavailable
from bot.ports import ProbeResult, Usage
from bot.monitoring_setup import exposition_problem, monitoring_setup
from bot.watch import error_patterns, fingerprint, percentile
from fakes.core import FakeBackend
from tests.unit.test_pipeline import CONFIG, World

WATCHED = {"window": 60, "interval": 1, "baseline_window": 5}


@dataclass
class LoggingBackend(FakeBackend):
    """A FakeBackend whose versions write log lines: `log_lines[version]` per call of logs()."""

    log_lines: dict[str, str] = field(default_factory=dict)
    usage_of: dict[str, Usage] = field(default_factory=dict)

    def logs(self, since):
        return self.log_lines.get(self.running or "", "")


@dataclass
class UsageBackend(LoggingBackend):
    def usage(self):
        return self.usage_of.get(self.running or "")


@dataclass
class BehaviourProbe:
    """Answers by version: latency in ms, smoke status, and health failing after N health probes."""

    backend: FakeBackend
    latency: dict[str, float] = field(default_factory=dict)
    smoke_status: dict[str, int] = field(default_factory=dict)
    health_fails_after: dict[str, int] = field(default_factory=dict)
    health_probes: dict[str, int] = field(default_factory=dict)

    def get(self, url: str, timeout: float) -> ProbeResult:
        v = self.backend.running
        if v is None:
            return ProbeResult(url, None, "", 1.0, "connection refused")
        ms = self.latency.get(v, 10.0)
        if url.endswith("/health/detailed"):
            return ProbeResult(url, 200, '{"status": "ok"}', ms)
        if url.endswith("/health"):
            n = self.health_probes[v] = self.health_probes.get(v, 0) + 1
            if v in self.health_fails_after and n > self.health_fails_after[v]:
                return ProbeResult(url, 503, "down", ms)
            return ProbeResult(url, 200, "ok", ms)
        return ProbeResult(url, self.smoke_status.get(v, 200), "pong", ms)


@dataclass
class FakePrometheus:
    """Query results by what runs: values[version][query expression]; `down` raises."""

    backend: FakeBackend
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    down: bool = False

    def query(self, expression):
        if self.down:
            raise MetricsUnavailable("cannot connect to http://127.0.0.1:9/api/v1/query")
        return self.values.get(self.backend.running or "", {}).get(expression)


def watched_world(tmp_path, backend=None, commands=None, metrics=None, **service):
    web = {**CONFIG["services"]["web"], "watch": WATCHED, **service}
    backend = backend or LoggingBackend()
    backend.running = "v1"
    ran: list = []

    def run(argv, timeout):
        ran.append(argv)
        return (commands or {}).get(backend.running, (0, "ok"))

    w = World(tmp_path, overrides={"services": {"web": web}}, backend=backend,
              probe=BehaviourProbe(backend), run_command=run,
              metrics_for=(lambda s, e: metrics(backend)) if metrics is not None else None)
    w.commands = ran
    return w


def watch_seconds(w) -> float:
    return w.pipeline.clock.monotonic()


def test_a_healthy_version_passes_the_whole_window_and_the_record_shows_baseline_and_after(tmp_path):
    w = watched_world(tmp_path)
    w.probe.latency = {"v1": 12.0, "v2": 14.0}
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    assert watch_seconds(w) >= 5 + 60  # baseline window, then the whole watch window
    record = d.record
    assert "- [x] Error rates nominal" in record and "- [x] Response times nominal" in record
    assert "P95 12 ms → 14 ms, p50 12 ms → 14 ms (×3.0 allowed)" in record
    assert "Error rate 0.0% → 0.0% (baseline + 5.0 pts allowed)" in record
    assert "- [x] Monitoring dashboards green" in record  # no new error lines in the logs


def test_a_version_5x_slower_is_rolled_back_at_once_with_p95_numbers(tmp_path):
    w = watched_world(tmp_path)
    w.probe.latency = {"v1": 120.0, "v2": 600.0}
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert w.backend.running == "v1"
    assert watch_seconds(w) < 5 + 2  # decided in the first round, not at the window's end
    assert "- [ ] Response times nominal — FAILED: rule 'p95 latency' tripped: p95 120 ms → 600 ms (×3.0 allowed" in d.record
    assert "p95 latency" in d.failure
    assert any(k == "alert" and "p95 120 ms → 600 ms" in m for k, m in w.reporter.events)


def test_latency_under_the_floor_never_trips_however_many_times_slower(tmp_path):
    w = watched_world(tmp_path)
    w.probe.latency = {"v1": 2.0, "v2": 20.0}
    assert w.deploy(w.ticket()).status is DeploymentStatus.SUCCEEDED


def test_a_smoke_endpoint_serving_500s_mid_window_is_rolled_back_in_that_round(tmp_path):
    w = watched_world(tmp_path)
    w.probe.smoke_status = {"v2": 500}
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK
    # verification's own smoke test already fails: rolled back before any watch round
    assert "- [ ] Smoke tests passing — FAILED" in d.record and "answered 500" in d.record


def test_health_failing_three_probes_in_a_row_rolls_back_before_the_window_ends(tmp_path):
    w = watched_world(tmp_path, watch={**WATCHED, "rules": {"error_rate_points": None}})
    w.probe.health_fails_after = {"v2": 10}
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert 5 + 8 <= watch_seconds(w) < 5 + 20
    assert "rule 'health check failing' tripped: 3 consecutive failed health probes" in d.record


def test_failed_health_probes_raise_the_error_rate_before_the_health_rule_trips(tmp_path):
    w = watched_world(tmp_path)
    w.probe.health_fails_after = {"v2": 10}
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert "error rate 0.0% → 9.1% (baseline + 5.0 pts allowed; 2 of 22 probes)" in d.record


def test_a_new_error_pattern_in_the_logs_rolls_back_but_known_ones_do_not(tmp_path):
    known = "2026-11-26T11:00:00Z ERROR cache miss storm for key 1234\n"
    backend = LoggingBackend(log_lines={
        "v1": known,
        "v2": known.replace("1234", "99") + "2026-11-26T12:00:01Z ERROR order 77 lost: "
                                            "null reference\n" * 2})
    w = watched_world(tmp_path, backend=backend)
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert "rule 'new log errors' tripped: 2 error line(s) of 1 new pattern(s)" in d.record
    assert "error order # lost: null reference" in d.record


def test_known_error_patterns_with_other_numbers_do_not_count(tmp_path):
    backend = LoggingBackend(log_lines={"v1": "ERROR cache miss storm for key 1\n",
                                        "v2": "ERROR cache miss storm for key 42\n"})
    w = watched_world(tmp_path, backend=backend)
    assert w.deploy(w.ticket()).status is DeploymentStatus.SUCCEEDED


def test_a_failing_integrity_check_rolls_back_and_the_record_quotes_it(tmp_path):
    w = watched_world(tmp_path, commands={"v2": (3, "orders without customer: 17")},
                      integrity_check=["./check-db", "--orders"])
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert w.commands == [["./check-db", "--orders"]]
    assert "integrity check `./check-db --orders` exited 3: orders without customer: 17" in d.record


def test_an_integrity_check_alone_runs_once_with_a_zero_window(tmp_path):
    w = watched_world(tmp_path, integrity_check=["./check-db"],
                      watch={"window": 0})
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    assert w.commands == [["./check-db"]]
    assert "integrity check `./check-db` passed" in d.record


def test_memory_beyond_the_limit_rolls_back(tmp_path):
    backend = UsageBackend(usage_of={"v1": Usage(5.0, 40 * 2**20), "v2": Usage(5.0, 900 * 2**20)})
    w = watched_world(tmp_path, backend=backend,
                      watch={**WATCHED, "rules": {"memory_mb": 256}})
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert "memory 900.0 MiB (limit 256 MiB)" in d.record


def test_prometheus_error_rate_above_baseline_rolls_back(tmp_path):
    q = 'sum(rate(http_requests_total{code=~"5.."}[30s])) / sum(rate(http_requests_total[30s]))'
    w = watched_world(tmp_path, metrics=lambda b: FakePrometheus(b, {"v1": {q: 0.0},
                                                                     "v2": {q: 0.42}}),
                      prometheus={"url": "http://127.0.0.1:9090", "queries": {"error_rate": q}})
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert "error rate 0.0% → 42.0% (baseline + 5.0 pts allowed)" in d.record


def test_unreachable_prometheus_is_inconclusive_not_healthy(tmp_path):
    w = watched_world(tmp_path, metrics=lambda b: FakePrometheus(b, down=True),
                      prometheus={"url": "http://127.0.0.1:9", "queries": {"cpu": "x"}})
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    assert "- [ ] Monitoring dashboards green — not checked: INCONCLUSIVE" in d.record
    assert "Warning: Prometheus cpu: inconclusive (cannot connect" in d.record


def test_unreachable_prometheus_rolls_back_when_inconclusive_fails(tmp_path):
    w = watched_world(tmp_path, metrics=lambda b: FakePrometheus(b, down=True),
                      prometheus={"url": "http://127.0.0.1:9", "queries": {"cpu": "x"}},
                      watch={**WATCHED, "inconclusive_fails": True})
    assert w.deploy(w.ticket()).status is DeploymentStatus.ROLLED_BACK


def test_services_without_a_watch_keep_the_one_shot_verification(tmp_path):
    w = World(tmp_path)
    w.backend.running = "v1"
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    assert w.pipeline.clock.monotonic() == 0  # no baseline, no window: no waiting at all
    assert "- [ ] Error rates nominal — not checked" in d.record


def test_a_first_deployment_has_no_baseline_and_says_so(tmp_path):
    w = watched_world(tmp_path)
    w.backend.running = None
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    assert "nothing answered (first deployment?)" in d.record


def test_log_lines_are_fingerprinted_without_timestamps_numbers_and_ids():
    a = fingerprint("2026-11-26T12:00:01.123Z ERROR job 42 failed (id 3f2a9c1d7e)")
    b = fingerprint("2026-11-26T13:10:59.9Z ERROR job 7 failed (id 0a1b2c3d4e5f)")
    assert a == b == "error job # failed (id #)"
    assert list(error_patterns("INFO fine\nWARN x\nFATAL boom 1\n", r"(?i)fatal")) == ["fatal boom #"]


def test_percentile_is_nearest_rank():
    assert percentile([10, 20, 30, 40], 50) == 20
    assert percentile([10.0] * 19 + [500.0], 95) == 10.0
    assert percentile([], 95) is None


def test_watch_settings_are_validated():
    bad = {**CONFIG, "services": {"web": {**CONFIG["services"]["web"],
                                          "integrity_check": [],
                                          "watch": {"window": -1, "rules": {"log_error_pattern": "("}}}}}
    with pytest.raises(ConfigError) as err:
        configuration.parse(bad)
    text = str(err.value)
    assert "services.web.integrity_check" in text and "services.web.watch.window" in text
    assert "services.web.watch.rules.log_error_pattern" in text
    svc = configuration.parse(CONFIG).service("web", "staging")
    assert svc.watch.window == 0 and svc.watch.rules.health_failures == 3
    assert svc.watch.rules.latency_factor == 3.0 and svc.watch.rules.error_rate_points == 5.0


# -- monitoring setup check -------------------------------------------------------------------

METRICS = ('# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n'
           'http_requests_total{code="200"} 12\nhttp_requests_total{code="500"} 0\nup 1 1700000000\n')


@dataclass
class MetricsProbe:
    answers: dict[str, ProbeResult]

    def get(self, url, timeout):
        return self.answers.get(url) or ProbeResult(url, None, "", 1.0, "connection refused")


def service_with(**extra):
    return configuration.parse({**CONFIG, "services": {"web": {**CONFIG["services"]["web"],
                                                               **extra}}}).service("web", "staging")


def test_prometheus_text_format_is_recognised_and_html_is_not():
    assert exposition_problem(METRICS) is None
    assert "not a metric sample" in exposition_problem("<html>hello</html>")
    assert exposition_problem("# only comments\n") == "no metric samples"


def test_setup_check_warns_about_a_missing_metrics_endpoint_or_fails_when_required():
    health = ProbeResult("http://127.0.0.1:9/health", 200, "ok", 1.0)
    probe = MetricsProbe({health.url: health})
    failures, warnings, fine = monitoring_setup(
        service_with(metrics_url="http://127.0.0.1:9/metrics"), probe)
    assert failures == [] and "connection refused" in warnings[0] and "answers 200" in fine[0]
    failures, warnings, _ = monitoring_setup(
        service_with(metrics_url="http://127.0.0.1:9/metrics", metrics_required=True), probe)
    assert "metrics http://127.0.0.1:9/metrics: answered connection refused" in failures[0]
    probe.answers["http://127.0.0.1:9/metrics"] = ProbeResult("http://127.0.0.1:9/metrics", 200,
                                                              METRICS, 1.0)
    failures, warnings, fine = monitoring_setup(
        service_with(metrics_url="http://127.0.0.1:9/metrics", metrics_required=True), probe)
    assert failures == warnings == [] and "Prometheus text format" in fine[1]


def test_the_infrastructure_check_blocks_a_deploy_when_required_metrics_are_missing(tmp_path):
    w = watched_world(tmp_path, metrics_url="http://127.0.0.1:9/metrics", metrics_required=True)
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.BLOCKED
    row = w.check(d, "infrastructure")
    assert row.status is CheckStatus.FAILED and "metrics http://127.0.0.1:9/metrics" in row.reason


def test_the_infrastructure_check_only_warns_when_metrics_are_optional(tmp_path):
    w = watched_world(tmp_path, metrics_url="http://127.0.0.1:9/metrics")
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    assert "warning: metrics http://127.0.0.1:9/metrics" in w.check(d, "infrastructure").reason


def test_errors_in_too_few_probes_leave_the_error_rate_box_unticked_not_green(tmp_path):
    w = watched_world(tmp_path, watch={"window": 0},
                      integrity_check=["./check-db"])
    w.probe.health_fails_after = {"v2": 1}  # verification's probe passes, the watch's fails
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    assert "- [ ] Error rates nominal — not checked: error rate 0.0% → 50.0%" in d.record
    assert "not judged: 2 probe(s), fewer than 10" in d.record
