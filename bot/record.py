"""The deployment record (the design's template) and the rollback plan, rendered as markdown."""

from __future__ import annotations

from datetime import datetime, timezone

from bot.models import (
    CheckResult,
    CheckStatus,
    Deployment,
    DeploymentKind,
    DeploymentStatus,
    Ticket,
    VerificationResult,
    hosts_from_text,
)
from bot.host_rollout import MIXED

OUTCOME_LINE = {
    DeploymentStatus.SUCCEEDED: "Deployed and verified.",
    DeploymentStatus.ROLLED_BACK: "ROLLED BACK automatically after verification failed.",
    DeploymentStatus.ROLLBACK_FAILED: "ROLLBACK FAILED: the service needs a person now.",
    DeploymentStatus.FAILED: "FAILED.",
    DeploymentStatus.INTERRUPTED: "INTERRUPTED: the deploybot process ended mid-way.",
}


def _box(status: CheckStatus | None, label: str, reason: str) -> str:
    if status is CheckStatus.PASSED:
        return f"- [x] {label}"
    why = {
        CheckStatus.FAILED: "FAILED",
        CheckStatus.SKIPPED: "not checked",
        CheckStatus.PENDING: "not run",
        CheckStatus.RUNNING: "not finished",
        None: "not run",
    }[status]
    return f"- [ ] {label} — {why}: {reason}" if reason else f"- [ ] {label} — {why}"


UNDETERMINED = "not determined (the checklist stopped before the rollback plan)"


def previous_known(deployment: Deployment, checks: list[CheckResult]) -> bool:
    """False when the deployment ended before its rollback-plan check read what ran before: an
    empty previous version then means "not looked at", not "first deployment" (whose plan would
    be to take the service down)."""
    if deployment.previous_version or deployment.kind is not DeploymentKind.DEPLOY:
        return True
    return any(c.name == "rollback_plan" and c.status is CheckStatus.PASSED for c in checks)


def rollback_plan(deployment: Deployment, steps: list[str], health_url: str | None,
                  channel: str, checks: list[CheckResult] | None = None) -> list[str]:
    """The three numbered lines of the record's Rollback Plan section. `checks`: the
    deployment's checklist, when it may have stopped before the rollback plan."""
    target = deployment.previous_version
    if checks is not None and not previous_known(deployment, checks):
        return ["nothing to roll back: the checklist stopped before the rollout, nothing was "
                "deployed; `deploybot status` shows what runs",
                f"check `{health_url}` answers 2xx" if health_url
                else "check `deploybot status` shows the service running",
                f"Notify team in {channel}"]
    if target and target.startswith(MIXED):
        cmd = (f"the hosts ran different versions before ({target[len(MIXED):]}): put each "
               "back to its own (the Hosts section)")
    elif target:
        cmd = (f"`deploybot rollback {deployment.service} --to {target} "
               f"--env {deployment.environment}` (Slack: `/rollback {deployment.service} to "
               f"{target} in {deployment.environment}`)")
    else:
        cmd = f"first deployment of {deployment.service}: take it down"
    if steps:
        cmd += "; by hand: " + "; ".join(f"`{s}`" for s in steps)
    if deployment.status is DeploymentStatus.ROLLED_BACK:
        cmd = (f"Already done automatically: {target or 'nothing'} runs again. "
               f"To repeat it: {cmd}")
    verify = (f"check `{health_url}` answers 2xx and reports {target}" if health_url and target
              else f"check `{health_url}` answers 2xx" if health_url
              else f"check `deploybot status` shows {target or 'nothing'} running")
    return [cmd, verify, f"Notify team in {channel}"]


def host_lines(deployment: Deployment) -> list[str]:
    """A service on several hosts: each host with what ran there before and its outcome."""
    outcomes = hosts_from_text(deployment.hosts)
    if not outcomes:
        return []
    return ["", "### Hosts", *[
        f"- {o.host}" + (f" (checked at {o.address})" if o.address else "")
        + f", before: {o.previous or 'nothing'}: {o.outcome}" for o in outcomes]]


def render(deployment: Deployment, *, ticket: Ticket | None, checks: list[CheckResult],
           verification: VerificationResult | None, rollback_lines: list[str],
           notes: list[str], now: datetime | None = None, deployed_by: str | None = None,
           approved_by: list[str] | None = None) -> str:
    """`deployed_by`: the requester by their people: name; `approved_by`: who approved the
    gates ("bob at 2026-11-26 12:00 UTC"), named on the Deployed by line."""
    now = now or datetime.now(timezone.utc)
    who = deployed_by or deployment.requested_by
    if approved_by:
        who += "; approved by " + ", ".join(approved_by)
    by_name = {c.name: c for c in checks}

    def check_box(name: str, label: str) -> str:
        c = by_name.get(name)
        return _box(c.status if c else None, label, c.reason if c else "")

    changes = ticket.title if ticket else deployment.ticket_id
    if deployment.kind is DeploymentKind.ROLLBACK:
        changes = (f"Manual rollback of {deployment.service} from "
                   f"{deployment.previous_version or 'unknown'} to {deployment.version}"
                   f" (ticket: {changes})")
    v = verification
    post = [
        _box(v.health if v else None, "Health checks passing", v.health_reason if v else ""),
        _box(v.smoke if v else None, "Smoke tests passing", v.smoke_reason if v else ""),
        _box(v.error_rate if v else None, "Error rates nominal", v.error_rate_reason if v else ""),
        _box(v.latency if v else None, "Response times nominal", v.latency_reason if v else ""),
        _box(v.monitoring if v else None, "Monitoring dashboards green",
             v.monitoring_reason if v else ""),
    ]
    outcome = OUTCOME_LINE.get(deployment.status, deployment.status.value)
    if deployment.status is DeploymentStatus.ROLLED_BACK and v is None:
        # e.g. recovered after a kill mid-deploy: no verification finished, so none failed.
        outcome = "ROLLED BACK automatically; no verification completed (what failed: below)."
    note_lines = [f"- Outcome: {outcome}"]
    if deployment.failure:
        note_lines.append(f"- What failed: {deployment.failure}")
    note_lines += [f"- {n}" for n in notes]
    if v:
        note_lines += [f"- {n}" for n in v.notes]
    lines = [
        "## Deployment Record",
        f"**Ticket:** #{deployment.ticket_id}",
        f"**Deployed by:** {who}",
        f"**Timestamp:** {now.astimezone(timezone.utc).isoformat(timespec='seconds')}",
        f"**Environment:** {deployment.environment}",
        f"**Version:** {deployment.version}",
        "**Previous Version:** " + (deployment.previous_version or (
            "none (first deployment)" if previous_known(deployment, checks) else UNDETERMINED)),
        "",
        "### Changes Deployed",
        changes,
        "",
        "### Deployment Method",
        deployment.method or "unknown",
        *host_lines(deployment),
        "",
        "### Pre-Deployment Checks",
        check_box("cq_approval", "CQ review confirmed"),
        check_box("qa_pass", "QA pass confirmed"),
        check_box("infrastructure", "Infrastructure health verified"),
        check_box("rollback_plan", "Rollback plan prepared"),
        check_box("dependencies", "Dependencies in place"),
        "",
        "### Post-Deployment Verification",
        *post,
        "",
        "### Rollback Plan",
        "To rollback this deployment:",
        *[f"{i}. {line}" for i, line in enumerate(rollback_lines, 1)],
        "",
        "### Notes",
        *note_lines,
    ]
    return "\n".join(lines) + "\n"


def render_blockers(deployment: Deployment, blockers: list[CheckResult],
                    requested_by: str | None = None) -> str:
    """The comment left on the ticket when the checklist stops a deployment."""
    lines = [
        f"**Deployment blocked:** {deployment.service} {deployment.version} to "
        f"{deployment.environment} (requested by {requested_by or deployment.requested_by}) "
        "was not deployed.",
        "",
    ]
    lines += [f"- [ ] {c.title}: {c.reason}" for c in blockers]
    lines += ["", "Nothing was deployed. Fix the items above and request the deployment again."]
    return "\n".join(lines) + "\n"
