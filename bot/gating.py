"""Gates: asking people, deciding (authorised once), resuming when every gate is approved,
and the re-check right before the rollout of what the gates were decided on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from bot import checks as checklist
from bot import freeze as freezing
from bot import locks
from bot.authorization import Action
from bot.checklist_run import gate_inputs
from bot.errors import InputError, NotAllowed, StateError
from bot.finishing import Finishing, comment
from bot.identity import Actor
from bot.models import (CheckResult, CheckStatus, Deployment, DeploymentKind, DeploymentStatus,
                        Gate, GateKind, GateStatus)
from bot.ports import Approver
from bot.rollout import Rollout
from bot.run_context import RunContext

log = logging.getLogger("deploybot.pipeline")

RECHECK_ITEM = ("rollout_recheck", "Still true when the rollout starts")
RECHECKED = ("cq_approval", "qa_pass", "ticket_status")

# Runs `fn` for a deployment; an unexpected error fails the deployment instead of escaping.
Guard = Callable[[Callable[[], Deployment], int], Deployment]


@dataclass
class GateOutcome:
    gate: Gate
    deployment: Deployment
    decided_now: bool  # False: it was already decided (by gate.decided_by); nothing changed


def evidence_holds(name: str, evidence: str, now: checklist.Outcome,
                   ctx: checklist.CheckContext) -> bool:
    """What the checklist relied on for `name` is still so."""
    if name == "ticket_status":
        return now.evidence.casefold() == evidence.casefold()
    # the approval the checklist counted is still there, unedited (a newer one may exist too)
    return any(checklist.comment_digest(c) == evidence for c in ctx.comments)


def evidence_change(name: str, before: CheckResult, now: checklist.Outcome) -> str:
    if name == "ticket_status":
        return f"status was {before.evidence!r}, is {now.evidence!r}"
    comment_id = before.evidence.split(":", 1)[0]
    return f"the comment it counted (#{comment_id}) was edited or deleted; now {now.reason}"


class Gating:
    def __init__(self, ctx: RunContext, finishing: Finishing, rollout: Rollout, *,
                 approver: Approver, guard: Guard) -> None:
        self.ctx = ctx
        self.finishing = finishing
        self.rollout = rollout
        self.approver = approver
        self.guard = guard

    def pending(self, deployment_id: int) -> list[Gate]:
        return [g for g in self.ctx.store.gates(deployment_id) if g.status is GateStatus.PENDING]

    def ask(self, d: Deployment) -> Deployment:
        for gate in self.ctx.store.gates(d.id):
            if gate.status is not GateStatus.PENDING:
                continue
            self.ctx.report.gate_requested(d, gate)
            decision = self.approver.request(d, gate)
            if decision is None:
                continue
            try:
                outcome = self.decide(gate.id, decided_by=decision.decided_by,
                                      approved=decision.approved, reason=decision.reason,
                                      resume=False)
            except NotAllowed as exc:
                self.ctx.report.step(d, f"{decision.decided_by} may not decide this gate: {exc}")
                continue
            if outcome.gate.status is GateStatus.REJECTED:
                return self.ctx.store.deployment(d.id)
        return self.resume_if_approved(d.id)

    def authorise(self, d: Deployment, gate: Gate, who: Actor | str, *,
                  approved: bool = True) -> None:
        """NotAllowed unless `who` may decide `gate` this way (the README's table)."""
        config, store = self.ctx.config, self.ctx.store
        actor = Actor.named(config, who)
        subject = f"deployment #{d.id} ({d.service} {d.version} to {d.environment})"
        if not approved:
            action = Action.REJECT
        elif gate.kind is GateKind.NOTES_ACK:
            action = Action.ACK_NOTES
        elif gate.kind is GateKind.BREAK_GLASS:
            action = Action.BREAK_GLASS
        else:
            action = Action.APPROVE
        self.ctx.auth.require(action, actor, d.environment, requester=d.requested_by,
                              subject=subject)
        if approved and gate.kind is not GateKind.NOTES_ACK:
            for other in store.gates(d.id, kind=gate.kind):
                if other.id != gate.id and other.status is GateStatus.APPROVED and \
                        config.same_person(other.decided_by, actor.name):
                    raise NotAllowed(f"{actor.name} already approved deployment #{d.id}.",
                                     hint="Each approval must come from a different person.")

    def decide(self, gate_id: int, *, decided_by: Actor | str, approved: bool,
               reason: str = "", resume: bool = True) -> GateOutcome:
        """A person decided a gate. Authorised once; repeated clicks change nothing."""
        ctx = self.ctx
        actor = Actor.named(ctx.config, decided_by)
        gate = ctx.store.gate(gate_id)
        d = ctx.store.deployment(gate.deployment_id)
        if gate.status is not GateStatus.PENDING:
            return GateOutcome(gate, d, decided_now=False)
        if d.status is not DeploymentStatus.AWAITING_APPROVAL:
            raise StateError(f"deployment #{d.id} is {d.status.value}; there is nothing to decide")
        self.authorise(d, gate, actor, approved=approved)
        if not approved and not reason.strip():
            raise InputError("a rejection needs a reason")
        gate, decided_now = ctx.store.decide_gate(gate_id, approved=approved,
                                                  decided_by=actor.name, reason=reason,
                                                  via=actor.audit())
        if not decided_now:
            return GateOutcome(gate, ctx.store.deployment(d.id), decided_now=False)
        ctx.report.gate_decided(d, gate)
        if gate.kind is GateKind.NOTES_ACK and approved:
            for row in ctx.store.checks(d.id):
                if row.name == checklist.NOTES_ITEM[0]:
                    row.status, row.reason = CheckStatus.PASSED, f"acknowledged by {actor.name}"
                    ctx.save_check(d, row)
        if not approved:
            return self._reject(d, gate, actor, reason)
        if resume:
            d = self.guard(lambda: self.resume_if_approved(d.id), d.id)
        return GateOutcome(gate, ctx.store.deployment(d.id), decided_now=True)

    def _reject(self, d: Deployment, gate: Gate, actor: Actor, reason: str) -> GateOutcome:
        ctx = self.ctx
        text = f"{gate.kind.value.replace('_', ' ')} rejected by {actor.name}: {reason}"
        try:
            with ctx.store.transaction():  # rejected, and the ticket told, or neither
                d = ctx.store.transition(d.id, DeploymentStatus.REJECTED, actor=actor.name,
                                         failure=text, detail=text, via=actor.audit())
                targets = ctx.outbox.enqueue([
                    comment(d, f"deploybot-rejected-{d.id}", "rejection",
                            f"**Deployment rejected:** {d.service} {d.version} to "
                            f"{d.environment}: {text}\n"),
                    ctx.report.finished_post(d, "")])
        except StateError:
            return GateOutcome(gate, ctx.store.deployment(d.id), decided_now=True)
        ctx.report.deliver(d, targets)
        ctx.report.finished_direct(d, "")
        return GateOutcome(gate, d, decided_now=True)

    def resume_if_approved(self, deployment_id: int) -> Deployment:
        store = self.ctx.store
        d = store.deployment(deployment_id)
        gates = store.gates(d.id)
        if d.status is not DeploymentStatus.AWAITING_APPROVAL or \
                any(g.status is not GateStatus.APPROVED for g in gates):
            return d
        # Two gates approved at once (two threads, two replicas): one goes on.
        if not store.claim_resume(d.id):
            return store.deployment(d.id)
        return self.go_ahead(d)

    def go_ahead(self, d: Deployment) -> Deployment:
        """Re-check, then roll out while a heartbeat keeps the lock from expiring."""
        changed = self.recheck(d)
        if changed is not None:
            return self.finishing.block(d, [changed])
        with locks.Heartbeat(self.ctx.store, d.id,
                             self.ctx.config.environments[d.environment].lock_ttl):
            return self.rollout.deploy(d)

    def recheck(self, d: Deployment) -> CheckResult | None:
        """Right before the backend touches anything: re-read the ticket, re-evaluate CQ, QA and
        status, re-check the freeze and that this deployment still holds its lock. Gates,
        notes, schedules and queues let time pass; whatever changed meanwhile blocks, saying
        what changed. Returns the failed row, or None when everything still holds."""
        ctx = self.ctx
        rows = {c.name: c for c in ctx.store.checks(d.id)}
        row = CheckResult(d.id, *RECHECK_ITEM, position=len(rows) + 1,
                          status=CheckStatus.RUNNING)
        ctx.save_check(d, row)
        changes, held = [], []
        if d.kind is DeploymentKind.DEPLOY:
            inputs = gate_inputs(ctx, d)
            items = {i.name: i for i in checklist.CHECKLIST}
            for name in RECHECKED:
                before = rows.get(name)
                try:
                    now = items[name].run(inputs)
                except Exception as exc:  # a crash here must block, not deploy
                    log.exception("re-check %s crashed", name)
                    now = checklist.Outcome.failed(f"could not be checked: {exc}")
                title = items[name].title
                if now.status is not CheckStatus.PASSED:
                    changes.append(f"{title}: {now.reason}")
                elif before is not None and before.evidence and \
                        not evidence_holds(name, before.evidence, now, inputs):
                    changes.append(f"{title}: what the checklist relied on changed "
                                   f"({evidence_change(name, before, now)})")
                else:
                    held.append(title)
            env = ctx.config.environments[d.environment]
            frozen = freezing.frozen(env.freeze, ctx.clock.now(), ctx.config.timezone)
            if frozen and not d.break_glass:
                changes.append(f"Freeze window: {d.environment} is now in a {frozen}")
        status, reason = locks.outcome_for(ctx.store, ctx.config, d, take=True,
                                           say=lambda text: ctx.report.step(d, text))
        if status is CheckStatus.FAILED:
            changes.append(f"Lock: {reason}")
        else:
            held.append("lock held")
        if changes:
            row.status = CheckStatus.FAILED
            row.reason = "changed since the checklist: " + "; ".join(changes)
        else:
            row.status = CheckStatus.PASSED
            row.reason = ("re-read just now: " + ", ".join(held)) if held else "lock held"
        ctx.save_check(d, row)
        return row if changes else None
