"""The end of a deployment: the record (stored, posted, commented on the ticket), the ticket
moved on, blockers said; every message goes through the outbox with the state it tells of."""

from __future__ import annotations

from bot import outbox as outboxing
from bot import record as records
from bot.config import Config
from bot.errors import DeploybotError
from bot.models import (CheckResult, Deployment, DeploymentKind, DeploymentStatus, GateKind,
                        GateStatus, Ticket, VerificationResult)
from bot.run_context import RunContext


def moves_ticket(config: Config, d: Deployment) -> bool:
    """Only a production deploy moves the ticket on; a staging deploy leaves it where it is."""
    env = config.environments[d.environment]
    return env.production or d.environment == "production" or len(config.environments) == 1


def comment(d: Deployment, key: str, what: str, markdown: str,
            flag: str = "") -> outboxing.Message | None:
    """A ticket comment for the outbox; none for a deployment without a ticket."""
    if d.ticket_id == "none":
        return None
    return outboxing.comment(d, key, markdown, what, flag=flag)


class Finishing:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def block(self, d: Deployment, failed: list[CheckResult]) -> Deployment:
        ctx = self.ctx
        summary = "; ".join(f"{c.title}: {c.reason}" for c in failed)
        with ctx.store.transaction():  # the status and what tells about it, or neither
            d = ctx.store.transition(d.id, DeploymentStatus.BLOCKED, failure=summary,
                                     detail=summary)
            note = None if d.dry_run else comment(
                d, outboxing.blockers_key(d.ticket_id, failed), "blocker",
                records.render_blockers(d, failed,
                                        requested_by=ctx.config.canonical(d.requested_by)))
            targets = ctx.outbox.enqueue([ctx.report.blocked_post(d, failed), note,
                                          ctx.report.finished_post(d, "")])
        ctx.report.blocked_direct(d, failed)
        ctx.report.deliver(d, targets)
        ctx.report.finished_direct(d, "")
        return d

    def failed(self, d: Deployment, message: str) -> Deployment:
        d = self.ctx.store.transition(d.id, DeploymentStatus.FAILED, failure=message,
                                      detail=message)
        return self.finish(d, None)

    def _ticket(self, d: Deployment) -> Ticket | None:
        """The ticket the re-check (or checklist) just read, else the record's one read of it;
        the record is written without it if that fails."""
        if d.ticket_id == "none":
            return None
        seen = self.ctx.reads.last_ticket(d.id)
        if seen is not None:
            return seen
        try:
            return self.ctx.tracker.get_ticket(d.ticket_id)
        except DeploybotError:
            return None

    def finish(self, d: Deployment, result: VerificationResult | None,
               post_record: bool = True) -> Deployment:
        ctx = self.ctx
        if not post_record:
            ctx.report.finished(d, "")
            return d
        ticket = self._ticket(d)
        backend = ctx.backend_for(d.service, d.environment)
        svc = ctx.config.service(d.service, d.environment)
        checks = ctx.store.checks(d.id)
        steps = (backend.rollback_steps(d.previous_version)
                 if records.previous_known(d, checks) else [])
        lines = records.rollback_plan(d, steps, str(svc.health.url) if svc.health else None,
                                      ctx.config.channel, checks=checks)
        notes = []
        if d.image_digest:
            notes.append(f"Image built from source: {svc.image}:{d.version} = {d.image_digest}")
        if d.image_ref:
            notes.append(f"Bytes deployed: {svc.image}:{d.version} = {d.image_ref}"
                         + (f" (before: {d.previous_image_ref})" if d.previous_image_ref else ""))
        if d.status is DeploymentStatus.ROLLED_BACK:
            notes.append(f"Rolled back: {d.previous_version or 'nothing'} is running again; "
                         + (f"{d.version} did not pass verification." if result is not None
                            else f"{d.version} never completed its verification."))
        approved = [f"{ctx.config.canonical(g.decided_by)} at {g.decided_at:%Y-%m-%d %H:%M UTC}"
                    for g in ctx.store.gates(d.id)
                    if g.status is GateStatus.APPROVED and g.kind is not GateKind.NOTES_ACK
                    and g.decided_by and g.decided_at]
        text = records.render(d, ticket=ticket, checks=checks,
                              verification=result, rollback_lines=lines, notes=notes,
                              now=ctx.clock.now(), approved_by=approved,
                              deployed_by=ctx.config.canonical(d.requested_by))
        deployed_status = ctx.config.tracker.rules.deployed_status
        with ctx.store.transaction():  # the record and its deliveries are stored together
            if not d.record:
                d = ctx.store.update_deployment(d.id, record=text)
            posted = ctx.store.claim(d.id, "record_posted")
            messages = [ctx.report.finished_post(d, d.record) if posted else None]
            if not d.dry_run and d.ticket_id != "none":
                messages.append(comment(d, f"deploybot-record-{d.id}", "record", d.record,
                                        flag="record_commented"))
                if (d.status is DeploymentStatus.SUCCEEDED and deployed_status
                        and d.kind is DeploymentKind.DEPLOY and moves_ticket(ctx.config, d)):
                    seen = next((c.evidence for c in ctx.store.checks(d.id)
                                 if c.name == "ticket_status"), "")
                    messages.append(outboxing.transition(d, deployed_status, seen))
            targets = ctx.outbox.enqueue(messages)
        if posted:
            ctx.report.finished_direct(d, d.record)
        ctx.report.deliver(d, targets)
        return ctx.store.deployment(d.id)
