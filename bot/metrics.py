"""Prometheus metrics (`/metrics`).

What the store knows is read from the store at scrape time (StoreCollector): right across
restarts and across processes sharing the database, and nothing to keep in step. Each scrape is
a handful of grouped queries on a connection of its own with a timeout. What only this process
sees -- tracker and Slack API calls -- are in-process counters and histograms (API_CALLS).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily, Metric)
from prometheus_client.registry import Collector

from bot.models import OPEN_STATUSES, TERMINAL_STATUSES

log = logging.getLogger("deploybot.metrics")

SCRAPE_TIMEOUT = 5.0  # seconds for all store queries of one scrape
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
GATE_WAIT_BUCKETS = (30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)
API_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# The process's own API calls: one registry per process, joined into every /metrics answer.
API_CALLS = CollectorRegistry(auto_describe=True)
TRACKER_REQUESTS = Counter(
    "deploybot_tracker_requests_total", "HTTP requests to the tracker (each retry counts), by "
    "outcome: ok, http_4xx, http_5xx, rate_limited, timeout, connect_error",
    ["tracker", "method", "outcome"], registry=API_CALLS)
TRACKER_LATENCY = Histogram(
    "deploybot_tracker_request_duration_seconds", "Time to the tracker's answer (or failure)",
    ["tracker", "method"], buckets=API_BUCKETS, registry=API_CALLS)
SLACK_CALLS = Counter(
    "deploybot_slack_api_calls_total", "Slack Web API calls by method and outcome: ok, "
    "Slack's error code (ratelimited, channel_not_found, ...) or the exception's type",
    ["method", "outcome"], registry=API_CALLS)
SLACK_LATENCY = Histogram(
    "deploybot_slack_api_call_duration_seconds", "Time to Slack's answer (or failure)",
    ["method"], buckets=API_BUCKETS, registry=API_CALLS)

TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)
OPEN = frozenset(s.value for s in OPEN_STATUSES)
# Final statuses of a deployment that started rolling out (durations are of these).
ROLLED_OUT = frozenset({"succeeded", "failed", "rolled_back", "rollback_failed", "interrupted"})
AWAITING_RECOVERY = "awaiting_recovery"  # deploybot_deployments_open's status for those rows
# (kind, status) of rollbacks that happened: automatic ones end rolled_back/rollback_failed.
ROLLBACKS = frozenset({("deploy", "rolled_back"), ("deploy", "rollback_failed"),
                       ("rollback", "succeeded"), ("rollback", "failed"),
                       ("rollback", "rollback_failed"), ("rollback", "interrupted")})


def _seconds(end: str, start: str, dialect: str) -> str:
    """Seconds between two stored ISO timestamps (texts). SQLite's julianday is a float of days,
    off by some 50 us: rounded to milliseconds, whole-second spans come out exact, as on
    PostgreSQL, so bucket bounds and sums agree on both engines."""
    if dialect == "postgresql":
        return f"EXTRACT(EPOCH FROM (({end})::timestamptz - ({start})::timestamptz))::float8"
    return f"ROUND((julianday({end}) - julianday({start})) * 86400.0, 3)"


def _later(a: str, b: str, dialect: str) -> str:
    return f"{'GREATEST' if dialect == 'postgresql' else 'MAX'}({a}, {b})"


def _cumulative(bounds: Iterable[float], counts) -> list[tuple[str, float]]:
    """[(le, count)...] from per-bound SUMs (already cumulative: v <= b) and the total."""
    bounds = list(bounds)
    return [(str(float(b)), counts[i] or 0) for i, b in enumerate(bounds)] + \
        [("+Inf", counts[len(bounds)] or 0)]


def _buckets_sql(value: str, bounds: Iterable[float]) -> str:
    return ", ".join(f"SUM(CASE WHEN {value} <= {b} THEN 1 ELSE 0 END)" for b in bounds)


class StoreCollector(Collector):
    """Everything the store knows, read at scrape time. `store` is a bot.store.Store."""

    def __init__(self, store, *, now: Callable[[], datetime] | None = None,
                 timeout: float = SCRAPE_TIMEOUT) -> None:
        self.store = store
        self.now = now or store.now
        self.timeout = timeout
        # the SQL of durations differs between the engines (bot/sqldb.py)
        self.dialect = store.db.dialect

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            with self.store.reading(self.timeout) as conn:
                metrics = list(self._read(conn))
            up = 1.0
        except Exception as exc:  # /metrics still answers; deploybot_store_up says it failed
            log.warning("metrics: reading the store failed: %s: %s", type(exc).__name__, exc)
            metrics, up = [], 0.0
        yield from metrics
        yield GaugeMetricFamily("deploybot_store_up",
                                "1 when the last scrape read the store, else 0", value=up)
        yield GaugeMetricFamily("deploybot_store_scrape_duration_seconds",
                                "Time the store queries of this scrape took",
                                value=time.perf_counter() - started)

    # -- the queries ------------------------------------------------------------------------------

    def _read(self, conn) -> Iterator[Metric]:
        q = conn.execute
        yield from self._deployments(q)
        yield self._histogram(
            q, "deploybot_gate_wait_seconds",
            "From a gate's question to its answer, by gate kind and decision",
            _seconds("g.decided_at", "g.created_at", self.dialect),
            "FROM gates g WHERE g.decided_at IS NOT NULL AND g.status != 'pending'",
            ["kind", "decision"], "g.kind AS kind, g.status AS decision", GATE_WAIT_BUCKETS)

        pending = GaugeMetricFamily("deploybot_gates_pending", "Gates waiting for a person",
                                    labels=["kind"])
        for kind, count in q("SELECT kind, COUNT(*) FROM gates WHERE status = 'pending' "
                             "GROUP BY 1 ORDER BY 1"):
            pending.add_metric([kind], count)
        yield pending

        failures = CounterMetricFamily(
            "deploybot_checklist_failures", "Checklist items that failed, by environment and "
            "item (dry runs included: they are the checklist too)", labels=["environment", "check"])
        for env, name, count in q(
                "SELECT d.environment, c.name, COUNT(*) FROM checks c JOIN deployments d "
                "ON d.id = c.deployment_id WHERE c.status = 'failed' GROUP BY 1, 2 ORDER BY 1, 2"):
            failures.add_metric([env, name], count)
        yield failures

        yield from self._outbox(q)
        yield from self._locks(q)

    def _deployments(self, q) -> Iterator[Metric]:
        """Counts, open ones, durations and rollbacks: one pass over the deployments table
        (its rows can be wide, with records), each duration computed once."""
        bounds = DURATION_BUCKETS
        # from the request, or from its scheduled time when it waited for one
        started = _later("created_at", "COALESCE(scheduled_for, created_at)", self.dialect)
        rows = q(
            # A row still marked needs_recovery is not final yet (recovery may move an
            # interrupted deployment on to rolled_back): open, so that no counter goes down.
            "WITH d AS MATERIALIZED (SELECT environment, service, kind, CASE WHEN "
            f"needs_recovery != 0 THEN '{AWAITING_RECOVERY}' ELSE status END AS status, dry_run, "
            "CASE WHEN kind = 'rollback' THEN 'manual' WHEN failure LIKE 'verification failed%' "
            "THEN 'verification_failed' ELSE 'interrupted' END AS reason, "
            f"{_seconds('finished_at', started, self.dialect)}"
            " AS v FROM deployments) "
            f"SELECT environment, service, kind, status, dry_run, reason, COUNT(*), COUNT(v), "
            f"{_buckets_sql('v', bounds)}, COALESCE(SUM(v), 0.0) "
            "FROM d GROUP BY 1, 2, 3, 4, 5, 6").fetchall()
        counts: dict[tuple[str, ...], dict[str, int]] = {}
        open_: dict[tuple[str, str], int] = {}
        rollbacks: dict[tuple[str, ...], int] = {}
        durations: dict[tuple[str, str], list[float]] = {}
        for env, service, kind, status, dry, reason, count, timed, *buckets in rows:
            kind = kind or "deploy"
            outcomes = counts.setdefault((env, service, kind, "true" if dry else "false"), {})
            outcomes[status] = outcomes.get(status, 0) + count
            if status in OPEN or status == AWAITING_RECOVERY:
                open_[env, status] = open_.get((env, status), 0) + count
            if not dry and (kind, status) in ROLLBACKS:
                key = (env, service, reason, status)
                rollbacks[key] = rollbacks.get(key, 0) + count
            if not dry and status in ROLLED_OUT and timed:
                acc = durations.setdefault((env, kind), [0.0] * (len(bounds) + 2))
                for i, n in enumerate([*buckets[:-1], timed, buckets[-1]]):
                    acc[i] += n or 0

        family = CounterMetricFamily(
            "deploybot_deployments", "Finished deployments (and manual rollbacks) by "
            "environment, service, kind, outcome (the final status) and dry_run",
            labels=["environment", "service", "kind", "outcome", "dry_run"])
        # Every outcome of a known series from 0 on: a series that first appears at 1 is no
        # increase() to Prometheus, and the first failure would never alert.
        for (env, service, kind, dry), outcomes in sorted(counts.items()):
            for status in sorted(TERMINAL):
                family.add_metric([env, service, kind, status, dry], outcomes.get(status, 0))
        yield family

        gauge = GaugeMetricFamily("deploybot_deployments_open",
                                  "Deployments not finished yet, by environment and status "
                                  f"({AWAITING_RECOVERY}: its process died, recovery pending)",
                                  labels=["environment", "status"])
        for key, count in sorted(open_.items()):
            gauge.add_metric(list(key), count)
        yield gauge

        histogram = HistogramMetricFamily(
            "deploybot_deployment_duration_seconds",
            "From start (request, or its scheduled time) to the end, of real deployments that "
            "rolled out, by environment and kind", labels=["environment", "kind"])
        for key, acc in sorted(durations.items()):
            histogram.add_metric(list(key), _cumulative(bounds, acc[:-1]), sum_value=acc[-1])
        yield histogram

        family = CounterMetricFamily(
            "deploybot_rollbacks", "Rollbacks by reason (verification_failed: automatic, after "
            "a failed verification or watch; interrupted: by recovery after a crash; manual: "
            "requested by a person) and outcome (the final status)",
            labels=["environment", "service", "reason", "outcome"])
        for key, count in sorted(rollbacks.items()):
            family.add_metric(list(key), count)
        yield family

    def _histogram(self, q, name: str, documentation: str, value: str, from_where: str,
                   labels: list[str], group: str, bounds: tuple[float, ...]) -> Metric:
        family = HistogramMetricFamily(name, documentation, labels=labels)
        rows = q(f"WITH t AS MATERIALIZED (SELECT {group}, {value} AS v {from_where}) "
                 f"SELECT {', '.join(labels)}, {_buckets_sql('v', bounds)}, COUNT(*), "
                 "COALESCE(SUM(v), 0.0) "
                 f"FROM t GROUP BY {', '.join(labels)} ORDER BY {', '.join(labels)}")
        for row in rows:
            keys, counts = row[:len(labels)], row[len(labels):]
            family.add_metric([str(k) for k in keys], _cumulative(bounds, counts[:-1]),
                              sum_value=counts[-1] or 0.0)
        return family

    def _outbox(self, q) -> Iterator[Metric]:
        now = self.now()
        backlog = GaugeMetricFamily(
            "deploybot_outbox_items", "Undelivered messages to the tracker and Slack by kind "
            "and state (pending: still tried; failed: given up, a person must look)",
            labels=["kind", "state"])
        oldest = GaugeMetricFamily(
            "deploybot_outbox_oldest_age_seconds",
            "Age of the oldest undelivered message, by kind and state", labels=["kind", "state"])
        for kind, state, count, first in q(
                "SELECT kind, state, COUNT(*), MIN(created_at) FROM outbox WHERE state != "
                "'delivered' GROUP BY 1, 2 ORDER BY 1, 2"):
            backlog.add_metric([kind, state], count)
            oldest.add_metric([kind, state], max(0.0, (now - datetime.fromisoformat(first))
                                                 .total_seconds()))
        yield backlog
        yield oldest

    def _locks(self, q) -> Iterator[Metric]:
        now = self.now()
        held = GaugeMetricFamily(
            "deploybot_locks_held", "Locks held, by kind (deployment: taken by a running "
            "deployment; manual: `lock ENV`)", labels=["kind"])
        age = GaugeMetricFamily("deploybot_lock_held_seconds", "How long each lock has been "
                                "held", labels=["scope", "kind"])
        counts = {"deployment": 0, "manual": 0}
        for scope, deployment_id, acquired in q(
                "SELECT scope, deployment_id, acquired_at FROM locks ORDER BY scope LIMIT 1000"):
            kind = "deployment" if deployment_id else "manual"
            counts[kind] += 1
            since = datetime.fromisoformat(acquired) if acquired else now
            age.add_metric([scope, kind], max(0.0, (now - since).total_seconds()))
        for kind, count in counts.items():
            held.add_metric([kind], count)
        yield held
        yield age


class ReadinessCollector(Collector):
    """deploybot_ready and one deploybot_readiness_check per check: what /readyz says."""

    def __init__(self, readiness) -> None:
        self.readiness = readiness

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        ready, checks = self.readiness.report()
        yield GaugeMetricFamily("deploybot_ready", "1 when /readyz answers 200", value=int(ready))
        per_check = GaugeMetricFamily("deploybot_readiness_check",
                                      "1 when this readiness check is ok", labels=["check"])
        for name, answer in checks.items():
            per_check.add_metric([name], int(answer == "ok"))
        yield per_check


class LeaderCollector(Collector):
    """deploybot_leader: 1 on the replica that does the periodic work (bot/leadership.py)."""

    def __init__(self, is_leader: Callable[[], bool]) -> None:
        self.is_leader = is_leader

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("deploybot_leader", "1 on the replica that runs schedules, "
                                "recovery, the outbox and health summaries", value=int(
                                    bool(self.is_leader())))


class BuildInfo(Collector):
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from importlib import metadata

        try:
            version = metadata.version("deploybot")
        except metadata.PackageNotFoundError:
            version = "unknown"
        info = InfoMetricFamily("deploybot_build", "The running deploybot")
        info.add_metric([], {"version": version})
        yield info


def registry_for(store, readiness=None, is_leader=None) -> CollectorRegistry:
    """What one `deploybot run` (or `scheduler`) serves on /metrics."""
    registry = CollectorRegistry(auto_describe=False)
    if is_leader is not None:
        registry.register(LeaderCollector(is_leader))
    registry.register(StoreCollector(store))
    registry.register(_Joined(API_CALLS))
    if readiness is not None:
        registry.register(ReadinessCollector(readiness))
    registry.register(BuildInfo())
    return registry


class _Joined(Collector):
    """Another registry's metrics, inside this one (the process-wide API_CALLS)."""

    def __init__(self, other: CollectorRegistry) -> None:
        self.other = other

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return self.other.collect()
