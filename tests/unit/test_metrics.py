"""/metrics: the store collector on a constructed history (known counts and buckets), the API
call counters, and the text format."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backends.trackers.http import Http
from bot import metrics
from bot.health import Flag, Readiness
from bot.store import Store

T0 = datetime(2031, 3, 4, 10, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=2)


def iso(dt: datetime) -> str:
    return dt.isoformat()


def samples(registry) -> dict[tuple, float]:
    """{(sample name, sorted labels...): value} from the text format, as Prometheus reads it."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def deployment(store: Store, *, env="production", service="web", status="succeeded",
               kind="deploy", dry_run=0, seconds: float | None = 60, scheduled_for=None,
               failure="") -> int:
    finished = iso(T0 + timedelta(seconds=seconds)) if seconds is not None else None
    return store.db["deployments"].insert({
        "ticket_id": "DEMO-1", "service": service, "version": "v2", "environment": env,
        "requested_by": "alice", "status": status, "kind": kind, "dry_run": dry_run,
        "failure": failure, "created_at": iso(T0), "updated_at": iso(T0),
        "finished_at": finished, "scheduled_for": scheduled_for}).last_pk


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "deploybot.db", clock=lambda: NOW)
    yield store
    store.close()


@pytest.fixture
def history(store):
    return build_history(store)


def build_history(store):
    """3 production web deploys (25 s, 45 s, 700 s), one failed staging deploy, a dry run,
    an automatic rollback that worked and one that failed, a manual rollback, a crash-recovery
    rollback; an open deployment; gates; checks; outbox; locks."""
    d1 = deployment(store, seconds=25)
    deployment(store, seconds=45)
    deployment(store, seconds=700, scheduled_for=iso(T0 + timedelta(seconds=600)))  # 100 s run
    d4 = deployment(store, env="staging", status="failed", seconds=5)
    deployment(store, env="staging", dry_run=1, seconds=3)
    deployment(store, status="rolled_back", failure="verification failed (health: 500)")
    deployment(store, status="rollback_failed", failure="verification failed (smoke)")
    deployment(store, status="succeeded", kind="rollback", seconds=30)
    deployment(store, status="rolled_back", failure="interrupted while deploying")
    deployment(store, env="staging", status="awaiting_approval", seconds=None)
    deployment(store, env="staging", status="blocked", seconds=1)
    for deployment_id, name, status in ((d1, "cq", "passed"), (d4, "qa", "failed"),
                                        (d4, "cq", "failed"), (d1, "qa", "failed")):
        store.db["checks"].insert({"deployment_id": deployment_id, "name": name, "title": name,
                                   "position": 0, "status": status, "reason": ""})
    for kind, status, wait in (("approval", "approved", 45), ("approval", "approved", 4000),
                               ("approval", "rejected", 10), ("notes_ack", "pending", None)):
        store.db["gates"].insert({
            "deployment_id": d1, "kind": kind, "prompt": "?", "status": status,
            "created_at": iso(T0), "decided_by": "bob" if wait else None,
            "decided_at": iso(T0 + timedelta(seconds=wait)) if wait else None})
    for n, (kind, state, age) in enumerate((("comment", "pending", 600), ("comment", "pending",
                                                                         30),
                                            ("comment", "failed", 3600), ("post", "delivered",
                                                                         9000))):
        at = iso(NOW - timedelta(seconds=age))
        store.db["outbox"].insert({"deployment_id": d1, "kind": kind, "target": f"ticket:{n}",
                                   "key": f"k{n}", "payload": "{}", "state": state,
                                   "created_at": at, "next_attempt_at": at})
    store.db["locks"].insert({"scope": "production", "deployment_id": d1, "holder": "deploybot",
                              "reason": "deploying", "acquired_at": iso(NOW - timedelta(
                                  seconds=90))})
    store.db["locks"].insert({"scope": "staging", "deployment_id": None, "holder": "carol",
                              "reason": "release freeze", "acquired_at": iso(T0)})
    return store


def test_deployments_by_environment_service_kind_outcome(history):
    got = samples(metrics.registry_for(history))
    key = ("deploybot_deployments_total", ("dry_run", "false"), ("environment", "production"),
           ("kind", "deploy"), ("outcome", "succeeded"), ("service", "web"))
    assert got[key] == 3
    assert got[("deploybot_deployments_total", ("dry_run", "false"), ("environment", "staging"),
                ("kind", "deploy"), ("outcome", "failed"), ("service", "web"))] == 1
    assert got[("deploybot_deployments_total", ("dry_run", "true"), ("environment", "staging"),
                ("kind", "deploy"), ("outcome", "succeeded"), ("service", "web"))] == 1
    assert got[("deploybot_deployments_total", ("dry_run", "false"), ("environment", "staging"),
                ("kind", "deploy"), ("outcome", "rollback_failed"), ("service", "web"))] == 0, \
        "every outcome starts at 0, so the first failure is an increase"
    assert got[("deploybot_deployments_open", ("environment", "staging"),
                ("status", "awaiting_approval"))] == 1
    assert got[("deploybot_store_up",)] == 1


def test_a_deployment_awaiting_recovery_is_open_so_no_counter_ever_goes_down(store):
    """Recovery may move an interrupted deployment on to rolled_back: counted only once final."""
    d = deployment(store, status="interrupted", failure="interrupted while deploying")
    store.db["deployments"].update(d, {"needs_recovery": 1})
    outcome = ("deploybot_deployments_total", ("dry_run", "false"), ("environment", "production"),
               ("kind", "deploy"), ("outcome", "interrupted"), ("service", "web"))
    waiting = ("deploybot_deployments_open", ("environment", "production"),
               ("status", "awaiting_recovery"))
    got = samples(metrics.registry_for(store))
    assert got[waiting] == 1 and got.get(outcome, 0) == 0
    store.db["deployments"].update(d, {"needs_recovery": 0, "status": "rolled_back"})
    got = samples(metrics.registry_for(store))
    assert waiting not in got and got[outcome] == 0
    assert got[outcome[:4] + (("outcome", "rolled_back"), ("service", "web"))] == 1


def test_duration_histogram_buckets(history):
    got = samples(metrics.registry_for(history))

    def bucket(le: str) -> float:
        return got[("deploybot_deployment_duration_seconds_bucket", ("environment", "production"),
                    ("kind", "deploy"), ("le", le))]
    # production deploys that rolled out: 25, 45, 100 (scheduled: from its time), and three
    # rollbacks of 60 s each (two automatic, one by recovery)
    assert bucket("10.0") == 0
    assert bucket("30.0") == 1
    assert bucket("60.0") == 5
    assert bucket("120.0") == 6
    assert bucket("+Inf") == 6
    assert got[("deploybot_deployment_duration_seconds_sum", ("environment", "production"),
                ("kind", "deploy"))] == pytest.approx(25 + 45 + 100 + 3 * 60, abs=0.01)
    assert got[("deploybot_deployment_duration_seconds_count", ("environment", "staging"),
                ("kind", "deploy"))] == 1, "the dry run and the blocked one did not roll out"


def test_gate_wait_histogram(history):
    got = samples(metrics.registry_for(history))
    approved = [("deploybot_gate_wait_seconds_bucket", ("decision", "approved"),
                 ("kind", "approval"), ("le", le)) for le in ("30.0", "60.0", "3600.0", "14400.0")]
    assert [got[k] for k in approved] == [0, 1, 1, 2]
    assert got[("deploybot_gate_wait_seconds_count", ("decision", "rejected"),
                ("kind", "approval"))] == 1
    assert got[("deploybot_gates_pending", ("kind", "notes_ack"))] == 1


def test_rollbacks_by_reason_and_checklist_failures_by_item(history):
    got = samples(metrics.registry_for(history))

    def rollbacks(reason: str, outcome: str) -> float:
        return got.get(("deploybot_rollbacks_total", ("environment", "production"),
                        ("outcome", outcome), ("reason", reason), ("service", "web")), 0)
    assert rollbacks("verification_failed", "rolled_back") == 1
    assert rollbacks("verification_failed", "rollback_failed") == 1
    assert rollbacks("manual", "succeeded") == 1
    assert rollbacks("interrupted", "rolled_back") == 1
    assert got[("deploybot_checklist_failures_total", ("check", "qa"),
                ("environment", "staging"))] == 1
    assert got[("deploybot_checklist_failures_total", ("check", "qa"),
                ("environment", "production"))] == 1
    assert ("deploybot_checklist_failures_total", ("check", "cq"),
            ("environment", "production")) not in got, "a passed check is no failure"


def test_outbox_backlog_and_locks(history):
    got = samples(metrics.registry_for(history))
    assert got[("deploybot_outbox_items", ("kind", "comment"), ("state", "pending"))] == 2
    assert got[("deploybot_outbox_items", ("kind", "comment"), ("state", "failed"))] == 1
    assert ("deploybot_outbox_items", ("kind", "post"), ("state", "delivered")) not in got
    assert got[("deploybot_outbox_oldest_age_seconds", ("kind", "comment"),
                ("state", "pending"))] == pytest.approx(600)
    assert got[("deploybot_locks_held", ("kind", "deployment"))] == 1
    assert got[("deploybot_locks_held", ("kind", "manual"))] == 1
    assert got[("deploybot_lock_held_seconds", ("kind", "deployment"),
                ("scope", "production"))] == pytest.approx(90)


def test_an_empty_store_gives_zero_locks_and_no_samples_elsewhere(store):
    got = samples(metrics.registry_for(store))
    assert got[("deploybot_locks_held", ("kind", "manual"))] == 0
    assert not [k for k in got if k[0].startswith("deploybot_deployments_total")]


def test_a_store_that_cannot_be_read_still_answers_with_store_up_0(tmp_path):
    store = Store(tmp_path / "deploybot.db")
    store.close()
    (tmp_path / "deploybot.db").unlink()
    got = samples(metrics.registry_for(store))
    assert got[("deploybot_store_up",)] == 0


def test_readiness_in_metrics():
    slack = Flag("not connected")
    readiness = Readiness()
    readiness.add("slack", slack)
    store = Store(":memory:")
    registry = metrics.registry_for(store, readiness)
    assert samples(registry)[("deploybot_ready",)] == 0
    slack.set()
    got = samples(registry)
    assert got[("deploybot_ready",)] == 1
    assert got[("deploybot_readiness_check", ("check", "slack"))] == 1


def test_tracker_requests_are_counted_and_timed_by_outcome():
    answers = iter([httpx.Response(503), httpx.Response(200, json={"ok": 1})])
    http = Http(tracker="jira-obs-test", url="http://127.0.0.1:9", headers={},
                settings={"retries": 2, "backoff": 0}, sleep=lambda s: None)
    http.client = httpx.Client(base_url="http://127.0.0.1:9",
                               transport=httpx.MockTransport(lambda request: next(answers)))
    assert http.json("GET", "/issue/1") == {"ok": 1}
    got = samples(metrics.API_CALLS)
    assert got[("deploybot_tracker_requests_total", ("method", "GET"), ("outcome", "http_5xx"),
                ("tracker", "jira-obs-test"))] == 1
    assert got[("deploybot_tracker_requests_total", ("method", "GET"), ("outcome", "ok"),
                ("tracker", "jira-obs-test"))] == 1
    assert got[("deploybot_tracker_request_duration_seconds_count", ("method", "GET"),
                ("tracker", "jira-obs-test"))] == 2


def test_slack_api_calls_are_counted_by_method_and_outcome():
    from slack_sdk.errors import SlackApiError

    from fakes.slack_api import FakeSlack
    from handlers.slack_app import web_client

    def count(outcome: str) -> float:
        return samples(metrics.API_CALLS).get(
            ("deploybot_slack_api_calls_total", ("method", "auth.test"), ("outcome", outcome)), 0)
    ok, refused = count("ok"), count("invalid_auth")
    with FakeSlack() as slack:
        assert web_client("xoxb-test", slack.api_url).auth_test()["ok"]
        with pytest.raises(SlackApiError):
            web_client("xoxb-wrong", slack.api_url).auth_test()
    assert (count("ok"), count("invalid_auth")) == (ok + 1, refused + 1)
