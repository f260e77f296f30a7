"""deploy/monitoring: the Grafana dashboard parses, uses the datasource variable, and every
deploybot_* metric that it or the alert rules query is in a real /metrics answer."""

from __future__ import annotations

from prometheus_client import generate_latest

from bot import metrics
from bot.health import OK, Readiness
from fakes.monitoring import (alert_exprs, dashboard, dashboard_exprs, exposed_names,
                              queried_metrics)
from test_metrics import history, store  # noqa: F401 - fixtures: a constructed history

def test_the_dashboard_has_a_datasource_variable_used_by_every_panel():
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}"
                                    for t in p["targets"]), p["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_every_queried_metric_is_exposed(history):  # noqa: F811 - the fixture
    readiness = Readiness()
    readiness.add("store", lambda: OK)
    text = generate_latest(metrics.registry_for(history, readiness)).decode()
    exposed = exposed_names(text)
    queried = queried_metrics(dashboard_exprs() + alert_exprs())
    assert len(queried) >= 15
    assert queried <= exposed, sorted(queried - exposed)
    # and what matters is on the dashboard
    on_dashboard = queried_metrics(dashboard_exprs())
    for needed in ("deploybot_deployments_total", "deploybot_deployment_duration_seconds_bucket",
                   "deploybot_gate_wait_seconds_bucket", "deploybot_rollbacks_total",
                   "deploybot_checklist_failures_total", "deploybot_tracker_requests_total",
                   "deploybot_slack_api_calls_total", "deploybot_outbox_items",
                   "deploybot_outbox_oldest_age_seconds", "deploybot_locks_held",
                   "deploybot_ready"):
        assert needed in on_dashboard, needed
