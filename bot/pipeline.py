"""The deployment pipeline's facade: requests in, deployments driven through the phases
(bot/checklist_run.py, bot/gating.py, bot/rollout.py, bot/finishing.py), people's other
requests (cancel, lock, unlock). Front ends talk to this class only."""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping

from bot import locks, logcontext
from bot import watch as watching
from bot.authorization import Action, Authorization
from bot.checklist_run import ChecklistRun
from bot.clock import Clock, SystemClock
from bot.config import Config
from bot.errors import InputError, StateError
from bot.finishing import Finishing
from bot.gating import GateOutcome, Gating
from bot.identity import Actor, TrackerIdentities
# parse_target, validate_version: handlers/commands.py imports them from here
from bot.intake import Intake, parse_target, validate_version  # noqa: F401
from bot.models import CANCELLABLE, Deployment, DeploymentKind, DeploymentStatus, Gate, Lock
from bot.outbox import Outbox
from bot.ports import (Approver, DeployBackend, HttpProbe, ImageBuilder, MetricsSource, Reporter,
                       Tracker)
from bot.redact import Redactor
from bot.reporting import SafeReporter
from bot.rollout import Rollout, StopRequest
from bot.run_context import RunContext
from bot.store import Store

log = logging.getLogger("deploybot.pipeline")
# Log lines inside these methods carry the deployment's id and ticket (bot/logcontext.py).
_by_id = logcontext.around(
    lambda self, deployment_id, *_, **__: self.store.deployment(deployment_id))

ACTIVE = {DeploymentStatus.REQUESTED, DeploymentStatus.CHECKING,
          DeploymentStatus.AWAITING_APPROVAL, DeploymentStatus.DEPLOYING,
          DeploymentStatus.VERIFYING, DeploymentStatus.ROLLING_BACK}


class Pipeline:
    def __init__(self, *, config: Config, store: Store, tracker: Tracker,
                 backend_for: Callable[[str, str], DeployBackend], reporter: Reporter,
                 approver: Approver, probe: HttpProbe, clock: Clock | None = None,
                 environ: Mapping[str, str] | None = None,
                 image_builder: ImageBuilder | None = None, durable_posts: bool = False,
                 metrics_for: Callable[[str, str], MetricsSource | None] | None = None,
                 run_command: watching.CommandRunner | None = None,
                 redact: Redactor | None = None) -> None:
        """`durable_posts`: the reporter's alert/blocked/finished go through the outbox (Slack);
        otherwise it is told directly (the terminal). `metrics_for` (service, environment):
        the watch window's metrics source, None keeps metrics off; `run_command`: how watch
        integrity checks run (None: with the child environment). `redact`: what the front
        end's own posts are redacted with (bot/redact.py)."""
        self.image_builder = image_builder
        self.reporter = reporter
        self.approver = approver
        self.redact = redact
        clock = clock or SystemClock()
        outbox = Outbox(store, tracker, config.outbox,
                        poster=reporter if durable_posts else None, monotonic=clock.monotonic)
        # Every event the phases tell goes through here: typed, and a failing reporter is
        # logged, never breaks a deployment.
        self.report = SafeReporter(reporter, outbox)
        # Set by a front end on SIGTERM/Ctrl-C: the current step finishes, then the deployment
        # completes or rolls back (bot/rollout.py); never left deploying or verifying.
        self.stop = StopRequest()
        # The one copy of what the phases share; the facade's attributes below read it.
        self.context = RunContext(
            config=config, store=store, tracker=tracker, backend_for=backend_for,
            report=self.report, outbox=outbox, probe=probe, clock=clock,
            environ=os.environ if environ is None else environ,
            identities=TrackerIdentities(config, tracker), auth=Authorization(config))
        self.finishing = Finishing(self.context)
        self.rollout = Rollout(self.context, self.finishing, stop=self.stop,
                               recover=self._recover, image_builder=image_builder,
                               metrics_for=metrics_for, run_command=run_command)
        self.gating = Gating(self.context, self.finishing, self.rollout, approver=approver,
                             guard=self.run_guarded)
        self.checklist = ChecklistRun(self.context, self.finishing, self.gating)
        self.intake = Intake(self.context)

    config = property(lambda self: self.context.config)
    store = property(lambda self: self.context.store)
    tracker = property(lambda self: self.context.tracker)
    backend_for = property(lambda self: self.context.backend_for)
    probe = property(lambda self: self.context.probe)
    clock = property(lambda self: self.context.clock)
    environ = property(lambda self: self.context.environ)
    identities = property(lambda self: self.context.identities)
    auth = property(lambda self: self.context.auth)
    outbox = property(lambda self: self.context.outbox)

    def _recover(self, service: str, environment: str) -> None:
        from bot.recovery import recover

        recover(self, service=service, environment=environment)

    def actor(self, who: Actor | str) -> Actor:
        """Front ends pass an Actor they established; a plain name is trusted (tests, core)."""
        return Actor.named(self.config, who)

    # -- input validation and requests (bot/intake.py) ------------------------------------------

    def environment(self, name: str | None) -> str:
        return self.intake.environment(name)

    def service_name(self, name: str, environment: str) -> str:
        return self.intake.service_name(name, environment)

    def check_version_allowed(self, version: str, environment: str) -> None:
        """Production refuses tags that name whatever was pushed last (`latest`, `main`, …)."""
        self.intake.check_version_allowed(version, environment)

    def request_deploy(self, ticket_ref: str, *, requested_by: Actor | str,
                       target: str | None = None,
                       environment: str | None = None, dry_run: bool = False,
                       request_key: str | None = None, at: str | None = None,
                       queue: bool = False, break_glass: str = "") -> Deployment:
        """Stored as `requested` once valid (bot/intake.py Intake.request_deploy)."""
        return self.intake.request_deploy(
            ticket_ref, requested_by=requested_by, target=target, environment=environment,
            dry_run=dry_run, request_key=request_key, at=at, queue=queue,
            break_glass=break_glass)

    def request_rollback(self, *, requested_by: Actor | str, service: str | None = None,
                         ticket_ref: str | None = None, environment: str | None = None,
                         to_version: str | None = None,
                         request_key: str | None = None) -> Deployment:
        """A manual rollback: back to `to_version` or to what ran before the current version."""
        return self.intake.request_rollback(
            requested_by=requested_by, service=service, ticket_ref=ticket_ref,
            environment=environment, to_version=to_version, request_key=request_key)

    def queue_position(self, d: Deployment) -> int | None:
        """1 for the next deployment to take the lock; None when it is not queued."""
        if not d.queued or d.status is not DeploymentStatus.REQUESTED:
            return None
        waiting = [q.id for q in self.store.queue(d.lock_scope)]
        return waiting.index(d.id) + 1 if d.id in waiting else None

    # -- driving --------------------------------------------------------------------------------

    @_by_id
    def run(self, deployment_id: int) -> Deployment:
        """Drive a deployment as far as it can go without waiting for a person."""
        d = self.store.deployment(deployment_id)
        try:
            if d.status is DeploymentStatus.REQUESTED:
                if not self.checklist.may_start(d):
                    return d
                if d.kind is DeploymentKind.ROLLBACK:
                    return self.checklist.run_rollback(d)
                return self.checklist.run(d)
            if d.status is DeploymentStatus.AWAITING_APPROVAL:
                return self.gating.ask(d)
            return d
        except Exception as exc:  # never leave a deployment half-way without saying why
            log.exception("deployment #%s failed unexpectedly", deployment_id)
            return self._fail_unexpectedly(deployment_id, exc)

    def _fail_unexpectedly(self, deployment_id: int, exc: Exception) -> Deployment:
        d = self.store.deployment(deployment_id)
        if d.status.terminal:
            return d
        # A manual rollback is never rolled back to what it replaced: people decide.
        rollout = d.kind is DeploymentKind.DEPLOY and d.status in (
            DeploymentStatus.DEPLOYING, DeploymentStatus.VERIFYING, DeploymentStatus.ROLLING_BACK)
        target = (DeploymentStatus.INTERRUPTED if rollout or d.status is DeploymentStatus.VERIFYING
                  else DeploymentStatus.ROLLBACK_FAILED
                  if d.status is DeploymentStatus.ROLLING_BACK else DeploymentStatus.FAILED)
        message = f"internal error while {d.status.value}: {exc}"
        if rollout:
            message += "; deploybot rolls it back"
        elif d.status in (DeploymentStatus.DEPLOYING, DeploymentStatus.VERIFYING):
            message += "; check the service by hand"
        # needs_recovery: bot/recovery.py rolls it back (now, and again while the engine is down)
        d = self.store.transition(d.id, target, failure=message, detail=message,
                                  needs_recovery=int(rollout))
        self.report.alert(d, f"deployment #{d.id} stopped: {message}")
        if rollout:
            self._recover(d.service, d.environment)
            return self.store.deployment(d.id)
        record = d.status is not DeploymentStatus.FAILED or bool(d.previous_version)
        return self.finishing.finish(d, None, post_record=record)

    def describe_lock(self, lock: Lock) -> str:
        return locks.describe(lock)

    def authorise(self, d: Deployment, gate: Gate, who: Actor | str, *,
                  approved: bool = True) -> None:
        """NotAllowed unless `who` may decide `gate` this way (the README's table)."""
        self.gating.authorise(d, gate, who, approved=approved)

    @logcontext.around(lambda self, gate_id, **_: self.store.deployment(
        self.store.gate(gate_id).deployment_id))
    def decide_gate(self, gate_id: int, *, decided_by: Actor | str, approved: bool,
                    reason: str = "", resume: bool = True) -> GateOutcome:
        """A person decided a gate. Authorised once; repeated clicks change nothing."""
        return self.gating.decide(gate_id, decided_by=decided_by, approved=approved,
                                  reason=reason, resume=resume)

    @logcontext.around(lambda self, fn, deployment_id: self.store.deployment(deployment_id))
    def run_guarded(self, fn: Callable[[], Deployment], deployment_id: int) -> Deployment:
        try:
            return fn()
        except Exception as exc:
            log.exception("deployment #%s failed unexpectedly", deployment_id)
            return self._fail_unexpectedly(deployment_id, exc)

    def pending_gates(self, deployment_id: int) -> list[Gate]:
        return self.gating.pending(deployment_id)

    # -- people's other requests --------------------------------------------------------------------

    @_by_id
    def cancel(self, deployment_id: int, *, user: Actor | str, reason: str = "") -> Deployment:
        actor = self.actor(user)
        d = self.store.deployment(deployment_id)
        if d.status not in CANCELLABLE:
            raise StateError(f"deployment #{d.id} is {d.status.value} and cannot be cancelled",
                             hint="roll it back instead" if d.status in
                             (DeploymentStatus.DEPLOYING, DeploymentStatus.VERIFYING,
                              DeploymentStatus.SUCCEEDED) else "")
        self.auth.require(Action.CANCEL, actor, d.environment, requester=d.requested_by,
                          subject=f"deployment #{d.id} ({d.service} {d.version} to "
                                  f"{d.environment}, requested by "
                                  f"{self.config.canonical(d.requested_by)})")
        text = f"cancelled by {actor.name}" + (f": {reason}" if reason else "")
        d = self.store.transition(d.id, DeploymentStatus.CANCELLED, actor=actor.name,
                                  failure=text, detail=text, via=actor.audit())
        self.report.finished(d, "")
        return d

    def _scope(self, environment: str, service: str | None) -> tuple[str, str]:
        env = self.environment(environment)
        scope = f"env:{env}" if not service else f"service:{env}:{self.service_name(service, env)}"
        return env, scope

    def lock(self, environment: str, *, user: Actor | str, reason: str,
             service: str | None = None) -> Lock:
        actor = self.actor(user)
        env, scope = self._scope(environment, service)
        if not reason.strip():
            raise InputError("a lock needs a reason")
        self.auth.require(Action.LOCK, actor, env, subject=scope)
        ok, lock = self.store.acquire_lock(scope, holder=actor.name, reason=reason,
                                           via=actor.audit())
        if not ok:
            raise StateError(self.describe_lock(lock))
        return lock

    def unlock(self, environment: str, *, user: Actor | str, reason: str,
               service: str | None = None) -> Lock:
        """Lift a manual lock (its owner, approvers, admins) or break a deployment's lock
        (approvers, admins). A deployment whose lock was broken re-takes it before its rollout,
        or is blocked if someone else holds it by then."""
        actor = self.actor(user)
        env, scope = self._scope(environment, service)
        if not reason.strip():
            raise InputError("unlocking needs a reason (it is kept in the audit trail)")
        lock = self.store.lock(scope)
        if lock is None:
            raise StateError(f"{scope} is not locked")
        holder = self.store.deployment(lock.deployment_id) if lock.deployment_id else None
        if holder is not None and holder.status in ACTIVE:
            self.auth.require(Action.BREAK_LOCK, actor, env,
                              subject=f"the lock of running deployment #{holder.id} on {scope}")
        elif holder is None:
            self.auth.require(Action.UNLOCK, actor, env, requester=lock.holder,
                              subject=f"the manual lock on {scope} ({lock.reason})")
        released = self.store.release_lock(scope, actor=actor.name, reason=reason,
                                           via=actor.audit(), expect=lock)
        if released is None:
            raise StateError(f"{scope} changed hands meanwhile; look again (deploybot status)")
        return released

    def active(self) -> list[Deployment]:
        return self.store.deployments(statuses=ACTIVE, limit=100)

    def history(self, service: str | None = None, environment: str | None = None,
                limit: int = 20) -> list[Deployment]:
        if service and service not in self.config.services:
            raise InputError(f"unknown service {service!r}",
                             hint=f"known: {', '.join(self.config.services)}")
        return self.store.deployments(service=service, environment=environment, limit=limit)

