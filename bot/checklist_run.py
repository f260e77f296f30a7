"""The checklist phase: the gates' inputs read once, every check run and stored, the deployment
notes, the lock, the freeze; then blocked, a dry run finished, or gates created and asked."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot import checks as checklist
from bot import freeze as freezing
from bot import locks
from bot.errors import DeploybotError, StateError
from bot.finishing import Finishing
from bot.models import (CheckResult, CheckStatus, Deployment, DeploymentKind, DeploymentStatus,
                        GateKind)
from bot.run_context import RunContext

if TYPE_CHECKING:
    from bot.gating import Gating

log = logging.getLogger("deploybot.pipeline")


def gate_inputs(ctx: RunContext, d: Deployment, *, fresh: bool = True) -> checklist.CheckContext:
    """The one read of the tracker per phase (the checklist, the re-check before the rollout):
    deploybot's own account, the ticket and its comments in the tracker's order.

    The account is asked once per process where every read with a wrong key fails anyway, and
    each time where a wrong key could still read (a public Redmine project): there asking it
    is what proves the credentials. fresh=False (the checklist): the request's read of seconds
    ago when this process has it; fresh (the re-check): what changed since the checklist's read
    (Tracker.changes_since), or a whole read when this process did not run the checklist."""
    ticket, comments, ticket_error, bot = None, [], "", None
    try:
        # unknown trackers: assume a wrong key could still read
        bot = ctx.reads.me(ctx.tracker, fresh=getattr(ctx.tracker, "anonymous_reads", True))
        if fresh:
            checked = ctx.reads.checked_comments(d.id)
            ticket, comments = (ctx.tracker.gate_data(d.ticket_id) if checked is None
                                else ctx.tracker.changes_since(d.ticket_id, checked))
        else:
            ticket, comments = (ctx.reads.for_checklist(d.id)
                                or ctx.tracker.gate_data(d.ticket_id))
            ctx.reads.checked(d.id, comments)
        ctx.reads.seen(d.id, ticket)
    except DeploybotError as exc:
        ticket, comments = None, []
        ticket_error = (f"cannot read {d.ticket_id} on {ctx.tracker.name}: {exc.message}"
                        + (f" ({exc.hint})" if exc.hint else ""))
    return checklist.CheckContext(
        deployment=d, config=ctx.config,
        service=ctx.config.service(d.service, d.environment),
        environment=ctx.config.environments[d.environment], ticket=ticket,
        comments=comments, ticket_error=ticket_error,
        backend_for=lambda name: ctx.backend_for(name, d.environment),
        probe=ctx.probe, identities=ctx.identities, bot_account=bot,
        environ=ctx.environ)


class ChecklistRun:
    def __init__(self, ctx: RunContext, finishing: Finishing, gating: "Gating") -> None:
        self.ctx = ctx
        self.finishing = finishing
        self.gating = gating

    def _say(self, d: Deployment):
        return lambda text: self.ctx.report.step(d, text)

    def may_start(self, d: Deployment) -> bool:
        """A scheduled deployment waits for its time; a queued one for its lock and its turn."""
        ctx = self.ctx
        if d.scheduled_for and ctx.clock.now() < d.scheduled_for:
            return False
        if not d.queued or d.kind is not DeploymentKind.DEPLOY:
            return True
        locks.expire(ctx.store, d.lock_scope, self._say(d))
        lock = ctx.store.lock(d.lock_scope)
        ahead = [q for q in ctx.store.queue(d.lock_scope) if q.id < d.id
                 and not (q.scheduled_for and q.scheduled_for > ctx.clock.now())]
        if (lock is None or lock.deployment_id == d.id) and not ahead:
            return True
        why = locks.describe(lock) if lock else f"#{ahead[0].id} is first in the queue"
        message = f"queued for {d.lock_scope}, position {len(ahead) + 1}: {why}"
        ctx.store.record_event(d.id, "deploybot", "queued", message)
        ctx.report.step(d, message)
        return False

    def _start(self, d: Deployment) -> Deployment | None:
        try:
            d = self.ctx.store.transition(d.id, DeploymentStatus.CHECKING)
        except StateError:
            return None
        self.ctx.report.deployment_started(d)
        return d

    def run(self, d: Deployment) -> Deployment:
        """The checklist of a requested deployment, then as far as it goes without a person."""
        ctx = self.ctx
        started = self._start(d)
        if started is None:  # another process (a second scheduler) started it first
            return ctx.store.deployment(d.id)
        d = started
        items = [(i.name, i.title) for i in checklist.CHECKLIST]
        items += [checklist.NOTES_ITEM, checklist.LOCK_ITEM]
        rows = {name: CheckResult(d.id, name, title, pos)
                for pos, (name, title) in enumerate(items, 1)}
        for row in rows.values():
            ctx.store.save_check(row)
        ctx.report.checklist_updated(d, ctx.store.checks(d.id))

        inputs = gate_inputs(ctx, d, fresh=False)
        for item in checklist.CHECKLIST:
            row = rows[item.name]
            row.status, row.reason = CheckStatus.RUNNING, ""
            ctx.save_check(d, row)
            try:
                outcome = item.run(inputs)
            except Exception as exc:
                log.exception("check %s crashed", item.name)
                outcome = checklist.Outcome.failed(f"could not be checked: {exc}")
            row.status, row.reason, row.evidence = outcome.status, outcome.reason, outcome.evidence
            ctx.save_check(d, row)
        if inputs.previous_version != d.previous_version:
            d = ctx.store.update_deployment(d.id, previous_version=inputs.previous_version)
        if rows["ticket_status"].status is CheckStatus.PASSED and inputs.ticket is not None:
            # lead time (bot/dora.py) starts when the ticket was ready for production
            ctx.store.note_ticket_ready(d.ticket_id, created_at=inputs.ticket.created_at,
                                        ready_at=inputs.ticket.ready_at)
        failed = [r for r in rows.values() if r.status is CheckStatus.FAILED]
        notes = self._notes_row(d, rows, inputs, blocked=bool(failed))

        lock_row = rows[checklist.LOCK_ITEM[0]]
        lock_row.status, lock_row.reason = locks.outcome_for(
            ctx.store, ctx.config, d, take=not failed and not d.dry_run, say=self._say(d))
        ctx.save_check(d, lock_row)
        failed = [r for r in rows.values() if r.status is CheckStatus.FAILED]
        env = ctx.config.environments[d.environment]
        frozen = freezing.frozen(env.freeze, ctx.clock.now(), ctx.config.timezone)
        if frozen and not d.dry_run and not d.break_glass:
            row = CheckResult(d.id, "freeze", "Freeze window", len(rows) + 1, CheckStatus.FAILED,
                              f"{d.environment} is in a {frozen}; break-glass needs a reason "
                              "and two approvers")
            ctx.save_check(d, row)
            failed.append(row)

        if failed:
            return self.finishing.block(d, failed)
        if d.dry_run:
            return self._finish_dry_run(d, inputs.rollback_steps)
        self._create_gates(d, notes, frozen)
        if ctx.store.gates(d.id):
            d = ctx.store.transition(d.id, DeploymentStatus.AWAITING_APPROVAL)
            return self.gating.ask(d)
        return self.gating.go_ahead(d)

    def _notes_row(self, d: Deployment, rows: dict[str, CheckResult],
                   inputs: checklist.CheckContext, *, blocked: bool) -> list:
        """The deployment notes on the ticket, and their checklist row; returns the notes."""
        notes_row = rows[checklist.NOTES_ITEM[0]]
        notes = checklist.deployment_notes(inputs) if inputs.ticket else []
        if blocked:
            notes_row.status, notes_row.reason = CheckStatus.SKIPPED, "not reached: blocked"
        elif not notes:
            notes_row.status = CheckStatus.PASSED
            notes_row.reason = "no deployment notes on the ticket"
        elif d.dry_run:
            notes_row.status = CheckStatus.SKIPPED
            notes_row.reason = f"{len(notes)} note(s) to acknowledge (dry run: not asked)"
        else:
            notes_row.status = CheckStatus.RUNNING
            notes_row.reason = f"{len(notes)} note(s) waiting for acknowledgement"
        self.ctx.save_check(d, notes_row)
        return notes

    def _create_gates(self, d: Deployment, notes: list, frozen: str | None) -> None:
        ctx = self.ctx
        env = ctx.config.environments[d.environment]
        if notes:
            text = "\n\n".join(
                f"*{ctx.identities.person_of(c) or c.author_name or c.author}* "
                f"({c.created_at:%Y-%m-%d %H:%M}):\n{c.body}" for c in notes)
            ctx.store.create_gate(d.id, GateKind.NOTES_ACK,
                                  f"Deployment notes on {d.ticket_id}:\n\n{text}")
        if frozen and d.break_glass:
            for n in (1, 2):
                ctx.store.create_gate(
                    d.id, GateKind.BREAK_GLASS,
                    f"Break glass ({n} of 2, two different approvers): deploy {d.service} "
                    f"{d.version} to {d.environment} inside the {frozen}. "
                    f"Reason given: {d.break_glass}")
        for n in range(env.approvals_required):
            ctx.store.create_gate(
                d.id, GateKind.APPROVAL,
                f"Approve deploying {d.service} {d.version} to {d.environment} for {d.ticket_id}"
                + (f" (approval {n + 1} of {env.approvals_required})"
                   if env.approvals_required > 1 else ""))

    def run_rollback(self, d: Deployment) -> Deployment:
        """A manual rollback's checklist is its lock."""
        ctx = self.ctx
        started = self._start(d)
        if started is None:  # another process (a second scheduler) started it first
            return ctx.store.deployment(d.id)
        d = started
        row = CheckResult(d.id, checklist.LOCK_ITEM[0], checklist.LOCK_ITEM[1], 1)
        row.status, row.reason = locks.outcome_for(ctx.store, ctx.config, d, take=True,
                                                   say=self._say(d))
        ctx.save_check(d, row)
        if row.status is CheckStatus.FAILED:
            return self.finishing.block(d, [row])
        return self.gating.go_ahead(d)

    def _finish_dry_run(self, d: Deployment, rollback_steps: list[str]) -> Deployment:
        ctx = self.ctx
        backend = ctx.backend_for(d.service, d.environment)
        plan = backend.plan(d.version)
        svc = ctx.config.service(d.service, d.environment)
        detailed = ", detailed health" if svc.health and svc.health.detailed_path else ""
        smoke = f", {len(svc.smoke)} smoke test(s)" if svc.smoke else ""
        plan.append(f"verify: health{detailed}{smoke} within {svc.verify.timeout:.0f} s")
        plan.append("on failure roll back: "
                    + ("; ".join(rollback_steps) or "take the new version down"))
        text = "Dry run: every check passed; nothing was changed. Planned steps:\n" + "\n".join(
            f"{i}. {s}" for i, s in enumerate(plan, 1))
        d = ctx.store.transition(d.id, DeploymentStatus.SUCCEEDED, verification=text,
                                 detail="dry run")
        ctx.report.finished(d, text)
        return d
