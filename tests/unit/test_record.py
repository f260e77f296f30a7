"""The deployment record follows the design's template and ticks only what was checked."""

from __future__ import annotations

from datetime import datetime, timezone

from bot import record
from bot.models import (CheckResult, CheckStatus, Deployment, DeploymentStatus, Ticket,
                        VerificationResult)

TEMPLATE_HEADINGS = [
    "## Deployment Record", "**Ticket:** #", "**Deployed by:** ", "**Timestamp:** ",
    "**Environment:** ", "**Version:** ", "**Previous Version:** ", "### Changes Deployed",
    "### Deployment Method", "### Pre-Deployment Checks", "- [x] CQ review confirmed",
    "QA pass confirmed", "Infrastructure health verified", "Rollback plan prepared",
    "Dependencies in place", "### Post-Deployment Verification", "Health checks passing",
    "Smoke tests passing", "Error rates nominal", "Response times nominal",
    "Monitoring dashboards green", "### Rollback Plan", "To rollback this deployment:", "1. ",
    "2. ", "3. Notify team in #standup", "### Notes",
]


def render(status=DeploymentStatus.SUCCEEDED, failed_check=None):
    d = Deployment(id=7, ticket_id="DEMO-3", service="web", version="v2", environment="staging",
                   requested_by="alice", status=status, previous_version="v1",
                   method="Direct Container")
    checks = [CheckResult(7, n, n, i, CheckStatus.PASSED, "ok") for i, n in enumerate(
        ["cq_approval", "qa_pass", "ticket_status", "infrastructure", "dependencies",
         "rollback_plan"])]
    if failed_check:
        checks[1].status, checks[1].reason = CheckStatus.FAILED, failed_check
    v = VerificationResult(health=CheckStatus.PASSED, health_reason="200",
                           smoke=CheckStatus.FAILED, smoke_reason="/api/ping answered 500")
    lines = record.rollback_plan(d, ["docker rm -f web-staging"], "http://h/health", "#standup")
    return record.render(d, ticket=Ticket("DEMO-3", "Ship v2", "Deployed"), checks=checks,
                         verification=v, rollback_lines=lines, notes=[],
                         now=datetime(2026, 11, 26, 12, tzinfo=timezone.utc))


def test_record_has_every_line_of_the_template_in_order():
    text = render()
    pos = 0
    for heading in TEMPLATE_HEADINGS:
        found = text.find(heading, pos)
        assert found >= 0, f"{heading!r} missing or out of order"
        pos = found


def test_only_checked_boxes_are_ticked_and_failures_say_why():
    text = render(failed_check="no QA PASS comment")
    assert "- [ ] QA pass confirmed — FAILED: no QA PASS comment" in text
    assert "- [x] Health checks passing" in text
    assert "- [ ] Smoke tests passing — FAILED: /api/ping answered 500" in text
    assert "- [ ] Error rates nominal — not checked" in text
    assert "**Timestamp:** 2026-11-26T12:00:00+00:00" in text


def test_rollback_plan_gives_the_exact_command():
    text = render()
    assert "1. `deploybot rollback web --to v1 --env staging`" in text
    assert "`docker rm -f web-staging`" in text


def _interrupted_while_checking(rollback_plan_status):
    d = Deployment(id=12, ticket_id="DEMO-5", service="web", version="v3",
                   environment="staging", requested_by="alice",
                   status=DeploymentStatus.INTERRUPTED, method="Direct Container")
    checks = [CheckResult(12, "cq_approval", "CQ", 0, CheckStatus.PASSED, "ok"),
              CheckResult(12, "infrastructure", "Infra", 1, CheckStatus.RUNNING, ""),
              CheckResult(12, "rollback_plan", "Plan", 2, rollback_plan_status, "")]
    lines = record.rollback_plan(d, [], "http://h/health", "#standup", checks=checks)
    return record.render(d, ticket=None, checks=checks, verification=None,
                         rollback_lines=lines, notes=[])


def test_a_deployment_stopped_before_its_rollback_plan_check_is_not_called_a_first_deployment():
    # Killed while checking, with v1 running: "first deployment: take it down" would tell a
    # person to remove the version that serves.
    text = _interrupted_while_checking(CheckStatus.PENDING)
    assert "first deployment" not in text
    assert "take it down" not in text and "docker rm" not in text
    assert "**Previous Version:** not determined" in text
    assert "1. nothing to roll back: the checklist stopped before the rollout" in text


def test_a_first_deployment_seen_by_the_rollback_plan_check_is_still_called_one():
    text = _interrupted_while_checking(CheckStatus.PASSED)
    assert "**Previous Version:** none (first deployment)" in text
    assert "1. first deployment of web: take it down" in text
