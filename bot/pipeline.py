"""The deployment state machine: checklist, gates, deploy, verify, roll back, record."""

from __future__ import annotations

import hashlib
import functools
import logging
import os
import re
import time
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Mapping

from bot import checks as checklist
from bot.childenv import allowed_environ
from bot import freeze as freezing
from bot import outbox as outboxing
from bot.authorization import Action, Authorization
from bot.identity import Actor, TrackerIdentities
from bot import locks, logcontext
from bot import record as records
from bot import watch as watching
from bot.config import Config
from bot.errors import BackendError, DeploybotError, InputError, NotAllowed, StateError, TrackerError
from bot.models import (
    CANCELLABLE,
    CheckResult,
    CheckStatus,
    Comment,
    Deployment,
    DeploymentKind,
    DeploymentStatus,
    Gate,
    GateKind,
    GateStatus,
    Lock,
    Ticket,
    VerificationResult,
)
from bot.ports import (Approver, DeployBackend, HttpProbe, ImageBuilder, MetricsSource, Reporter,
                       Tracker)
from bot.outbox import Outbox
from bot.store import Store
from bot.clock import Clock, SystemClock
from bot.verify import verify, wait_healthy

log = logging.getLogger("deploybot.pipeline")
# Log lines inside these methods carry the deployment's id and ticket (bot/logcontext.py).
_by_id = logcontext.around(
    lambda self, deployment_id, *_, **__: self.store.deployment(deployment_id))

# Docker's tag grammar: what a version may be, so it is safe in every backend and record.
VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
TARGET_RE = re.compile(r"^(?P<service>[a-z0-9][a-z0-9_-]{0,62})@(?P<version>.+)$")
ACTIVE = {DeploymentStatus.REQUESTED, DeploymentStatus.CHECKING,
          DeploymentStatus.AWAITING_APPROVAL, DeploymentStatus.DEPLOYING,
          DeploymentStatus.VERIFYING, DeploymentStatus.ROLLING_BACK}


class StopRequest:
    """A request to stop, from a signal handler: read between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.why = ""
        self.rollout_started = False  # from here on a stop completes or rolls back

    def set(self, why: str) -> None:
        self.why = self.why or why
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


@dataclass
class GateOutcome:
    gate: Gate
    deployment: Deployment
    decided_now: bool  # False: it was already decided (by gate.decided_by); nothing changed


def _log_line(event: str, args: tuple) -> str:
    """What a service's log says about a deployment's progress (the id and ticket are added
    by the log context)."""
    if not args or not isinstance(args[0], Deployment):
        return ""
    d, what = args[0], f"{args[0].kind.value} {args[0].service}@{args[0].version} to " \
                         f"{args[0].environment}"
    if event == "deployment_started":
        return f"{what}: started" + (" (dry run)" if d.dry_run else "")
    if event in ("step", "alert"):
        return f"{what}: {args[1]}"
    if event == "blocked":
        return f"{what}: blocked by " + ", ".join(c.title for c in args[1])
    if event == "gate_requested":
        return f"{what}: waiting for gate #{args[1].id} ({args[1].kind.value})"
    if event == "finished":
        return f"{what}: {d.status.value}" + (f" ({d.failure})" if d.failure else "")
    return ""


def validate_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise InputError(f"{version!r} is not a valid version",
                         hint="use an image tag: letters, digits, '_', '.', '-', at most 128")
    return version


def parse_target(text: str) -> tuple[str, str]:
    m = TARGET_RE.match(text.strip())
    if not m:
        raise InputError(f"{text!r} is not service@version", hint="for example web@v2.1.0")
    return m.group("service"), validate_version(m.group("version"))


class Pipeline:
    def __init__(self, *, config: Config, store: Store, tracker: Tracker,
                 backend_for: Callable[[str, str], DeployBackend], reporter: Reporter,
                 approver: Approver, probe: HttpProbe, clock: Clock | None = None,
                 environ: Mapping[str, str] | None = None,
                 image_builder: ImageBuilder | None = None, durable_posts: bool = False) -> None:
        """`durable_posts`: the reporter's alert/blocked/finished go through the outbox (Slack);
        otherwise it is told directly (the terminal)."""
        self.image_builder = image_builder
        self.config = config
        self.store = store
        self.tracker = tracker
        self.backend_for = backend_for
        self.reporter = reporter
        self.approver = approver
        self.probe = probe
        self.clock = clock or SystemClock()
        self.environ = os.environ if environ is None else environ
        self.identities = TrackerIdentities(config, tracker)
        self.auth = Authorization(config)
        self.outbox = Outbox(store, tracker, config.outbox,
                             poster=reporter if durable_posts else None,
                             monotonic=getattr(self.clock, "monotonic", None) or time.monotonic)
        # Set by a front end on SIGTERM/Ctrl-C: the current step finishes, then the deployment
        # completes or rolls back (see _deploy); never left deploying or verifying.
        self.stop = StopRequest()

    def actor(self, who: Actor | str) -> Actor:
        """Front ends pass an Actor they established; a plain name is trusted (tests, core)."""
        return Actor.named(self.config, who)

    # -- input validation -----------------------------------------------------------------------

    def environment(self, name: str | None) -> str:
        env = name or self.config.default_env
        if env not in self.config.environments:
            raise InputError(f"unknown environment {env!r}",
                             hint=f"known: {', '.join(self.config.environments)}")
        return env

    def service_name(self, name: str, environment: str) -> str:
        if name not in self.config.services:
            raise InputError(f"unknown service {name!r}",
                             hint=f"known: {', '.join(self.config.services)}")
        if not self.config.deployable(name, environment):
            raise InputError(f"{name} is not deployed to {environment}")
        return name

    def _ticket_and_comments(self, ticket_id: str) -> tuple[Ticket, list[Comment]]:
        """The ticket and its comments, in the tracker's own order (never re-sorted here)."""
        return self.tracker.gate_data(ticket_id)

    def check_version_allowed(self, version: str, environment: str) -> None:
        """Production refuses tags that name whatever was pushed last (`latest`, `main`, …)."""
        env = self.config.environments[environment]
        policy = env.versions
        allow = policy.allow_mutable if policy.allow_mutable is not None else not env.production
        if allow:
            return
        mutable = version.casefold() in {t.casefold() for t in policy.mutable_tags} or bool(
            policy.mutable_pattern and re.search(policy.mutable_pattern, version))
        if mutable:
            raise InputError(
                f"{version!r} is a mutable tag: it names whatever was pushed last, so "
                f"{environment} would not get a known build",
                hint=f"deploy an immutable version (v1.4.2, a commit sha); or set "
                     f"environments.{environment}.versions.allow_mutable: true")

    # -- requests -------------------------------------------------------------------------------

    def request_deploy(self, ticket_ref: str, *, requested_by: Actor | str,
                       target: str | None = None,
                       environment: str | None = None, dry_run: bool = False,
                       request_key: str | None = None, at: str | None = None,
                       queue: bool = False, break_glass: str = "") -> Deployment:
        """Validate a deploy request and store it. InputError changes nothing.

        `at`: not before this time (bot/scheduler.py starts it); `queue`: wait for a held lock
        instead of being blocked; `break_glass`: the reason for deploying inside a freeze window.
        """
        actor = self.actor(requested_by)
        ticket_id = self.tracker.parse_ref(ticket_ref)
        env = self.environment(environment)
        if not dry_run:
            self.auth.require(Action.DEPLOY, actor, env)
        if target:
            service, version = parse_target(target)
            self.service_name(service, env)
        scheduled_for = (freezing.parse_when(at, now=self.clock.now(), tz=self.config.timezone)
                         if at else None)
        if not dry_run:
            self._refuse_if_frozen(env, scheduled_for or self.clock.now(), break_glass)
        try:
            # A ticket that does not exist (or a tracker that refuses us) changes nothing.
            ticket, comments = self._ticket_and_comments(ticket_id)
        except TrackerError as exc:
            raise InputError(f"cannot read {ticket_id}: {exc.message}", hint=exc.hint) from None
        if not target:
            found = checklist.version_from_ticket(ticket, comments, self.config.tracker.rules)
            if not found:
                raise InputError(
                    f"{ticket_id} does not say what to deploy",
                    hint="add a comment 'deploy: SERVICE@VERSION' or give SERVICE@VERSION")
            if len({f for f in found}) > 1:
                listed = ", ".join(f"{s}@{v}" for s, v in found)
                raise InputError(f"{ticket_id} names more than one deployment: {listed}",
                                 hint="say which one: deploy TICKET SERVICE@VERSION")
            service, version = found[0]
            validate_version(version)
        self.service_name(service, env)
        self.check_version_allowed(version, env)
        backend = self.backend_for(service, env)
        deployment, _ = self.store.create_deployment(
            ticket_id=ticket_id, service=service, version=version, environment=env,
            requested_by=actor.name, dry_run=dry_run, method=backend.method,
            lock_scope=self.config.lock_scope(service, env), request_key=request_key,
            scheduled_for=scheduled_for, queued=queue and not dry_run,
            break_glass=break_glass.strip(), one_at_a_time=not dry_run, via=actor.audit())
        return deployment

    def _refuse_if_frozen(self, env: str, at: datetime, break_glass: str) -> None:
        why = freezing.frozen(self.config.environments[env].freeze, at, self.config.timezone)
        if why is None:
            return
        when = freezing.local(at, self.config.timezone)
        if not break_glass.strip():
            raise NotAllowed(f"{env} is frozen at {when}: {why}",
                             hint="deploy after the window, or break glass with a reason "
                                  "(--break-glass REASON); two approvers must then approve")
        env_cfg = self.config.environments[env]
        if len(env_cfg.approvers) < 2 and not env_cfg.approver_groups:
            raise NotAllowed(f"{env} is frozen at {when}: {why}; break-glass needs two "
                             f"authorised approvers but {env} names "
                             f"{len(env_cfg.approvers)}", hint=f"add approvers to "
                             f"environments.{env}.approvers")

    def _may_start(self, d: Deployment) -> bool:
        """A scheduled deployment waits for its time; a queued one for its lock and its turn."""
        if d.scheduled_for and self.clock.now() < d.scheduled_for:
            return False
        if not d.queued or d.kind is not DeploymentKind.DEPLOY:
            return True
        locks.expire(self.store, d.lock_scope, lambda text: self._tell("step", d, text))
        lock = self.store.lock(d.lock_scope)
        ahead = [q for q in self.store.queue(d.lock_scope) if q.id < d.id
                 and not (q.scheduled_for and q.scheduled_for > self.clock.now())]
        if (lock is None or lock.deployment_id == d.id) and not ahead:
            return True
        why = self.describe_lock(lock) if lock else f"#{ahead[0].id} is first in the queue"
        message = f"queued for {d.lock_scope}, position {len(ahead) + 1}: {why}"
        self.store.record_event(d.id, "deploybot", "queued", message)
        self._tell("step", d, message)
        return False

    def queue_position(self, d: Deployment) -> int | None:
        """1 for the next deployment to take the lock; None when it is not queued."""
        if not d.queued or d.status is not DeploymentStatus.REQUESTED:
            return None
        waiting = [q.id for q in self.store.queue(d.lock_scope)]
        return waiting.index(d.id) + 1 if d.id in waiting else None

    def request_rollback(self, *, requested_by: Actor | str, service: str | None = None,
                         ticket_ref: str | None = None, environment: str | None = None,
                         to_version: str | None = None,
                         request_key: str | None = None) -> Deployment:
        """A manual rollback: back to `to_version` or to what ran before the current version."""
        actor = self.actor(requested_by)
        env = self.environment(environment) if environment or not ticket_ref else None
        if ticket_ref:
            ticket_id = self.tracker.parse_ref(ticket_ref)
            done = [d for d in self.store.deployments(limit=500, statuses={DeploymentStatus.SUCCEEDED})
                    if d.ticket_id == ticket_id and not d.dry_run
                    and (env is None or d.environment == env)
                    and (service is None or d.service == service)]
            if not done:
                raise InputError(f"no successful deployment of {ticket_id} to roll back")
            last = done[0]
            service, env = last.service, last.environment
        assert env is not None
        if not service:
            raise InputError("say which service (or ticket) to roll back")
        self.service_name(service, env)
        self.auth.require(Action.ROLLBACK, actor, env)
        backend = self.backend_for(service, env)
        current = backend.current_version()
        if to_version:
            target = validate_version(to_version)
        else:
            target = self._previous_from_history(service, env, current)
            if target is None:
                raise InputError(
                    f"no previous version of {service} in {env} is known "
                    f"(running: {current or 'nothing'})",
                    hint="give the version: rollback SERVICE --to VERSION")
        if target == current:
            raise InputError(f"{service} in {env} already runs {target}")
        related = self.store.last_succeeded(service, env)
        deployment, _ = self.store.create_deployment(
            ticket_id=related.ticket_id if related else "none", service=service, version=target,
            environment=env, requested_by=actor.name, kind=DeploymentKind.ROLLBACK,
            method=backend.method, lock_scope=self.config.lock_scope(service, env),
            request_key=request_key, via=actor.audit())
        self.store.update_deployment(deployment.id, previous_version=current)
        return self.store.deployment(deployment.id)

    def _previous_from_history(self, service: str, env: str, current: str | None) -> str | None:
        """The newest version known to have run well here that is not `current`: succeeded
        deployments and what ran before any rollout (interrupted, failed or rolled back ones
        included), so it survives any interruption, kept container or not."""
        good: list[str] = []
        touched = {DeploymentStatus.SUCCEEDED, DeploymentStatus.ROLLED_BACK,
                   DeploymentStatus.ROLLBACK_FAILED, DeploymentStatus.INTERRUPTED,
                   DeploymentStatus.FAILED}
        for d in self.store.deployments(service=service, environment=env, statuses=touched,
                                        limit=200):
            if d.dry_run:
                continue
            if d.status is DeploymentStatus.SUCCEEDED:
                good.append(d.version)
            if d.kind is DeploymentKind.DEPLOY and d.previous_version:
                good.append(d.previous_version)
        return next((v for v in good if v != current), None)

    # -- driving --------------------------------------------------------------------------------

    @_by_id
    def run(self, deployment_id: int) -> Deployment:
        """Drive a deployment as far as it can go without waiting for a person."""
        d = self.store.deployment(deployment_id)
        try:
            if d.status is DeploymentStatus.REQUESTED:
                if not self._may_start(d):
                    return d
                if d.kind is DeploymentKind.ROLLBACK:
                    return self._check_rollback(d)
                return self._check(d)
            if d.status is DeploymentStatus.AWAITING_APPROVAL:
                return self._ask_gates(d)
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
        self._tell("alert", d, f"deployment #{d.id} stopped: {message}")
        if rollout:
            from bot.recovery import recover

            recover(self, service=d.service, environment=d.environment)
            return self.store.deployment(d.id)
        return self._finish(d, None, post_record=d.status is not DeploymentStatus.FAILED
                            or bool(d.previous_version))

    DURABLE_EVENTS = ("alert", "blocked", "finished")

    def _tell(self, event: str, *args) -> None:
        """Reporters must not break a deployment: their errors are logged, not raised. With
        durable posts, alert/blocked/finished are stored in the outbox and delivered from it."""
        line = _log_line(event, args)
        if line:
            log.info("%s", line)  # INFO: a terminal shows these through its reporter already
        message = self._post(event, *args)
        if message is not None:
            try:
                self._deliver(args[0], self.outbox.enqueue([message]))
            except Exception:
                log.exception("storing the %s post failed", event)
            return
        try:
            getattr(self.reporter, event)(*args)
        except Exception:
            log.exception("reporter failed on %s", event)

    def _save_check(self, d: Deployment, check: CheckResult) -> None:
        self.store.save_check(check)
        self._tell("checklist_updated", d, self.store.checks(d.id))

    def _check(self, d: Deployment) -> Deployment:
        try:
            d = self.store.transition(d.id, DeploymentStatus.CHECKING)
        except StateError:  # another process (a second scheduler) started it first
            return self.store.deployment(d.id)
        self._tell("deployment_started", d)
        items = [(i.name, i.title) for i in checklist.CHECKLIST]
        items += [checklist.NOTES_ITEM, checklist.LOCK_ITEM]
        rows = {name: CheckResult(d.id, name, title, pos)
                for pos, (name, title) in enumerate(items, 1)}
        for row in rows.values():
            self.store.save_check(row)
        self._tell("checklist_updated", d, self.store.checks(d.id))

        ctx = self._gate_context(d)

        for item in checklist.CHECKLIST:
            row = rows[item.name]
            row.status, row.reason = CheckStatus.RUNNING, ""
            self._save_check(d, row)
            try:
                outcome = item.run(ctx)
            except Exception as exc:
                log.exception("check %s crashed", item.name)
                outcome = checklist.Outcome.failed(f"could not be checked: {exc}")
            row.status, row.reason, row.evidence = outcome.status, outcome.reason, outcome.evidence
            self._save_check(d, row)
        if ctx.previous_version != d.previous_version:
            d = self.store.update_deployment(d.id, previous_version=ctx.previous_version)
        if rows["ticket_status"].status is CheckStatus.PASSED and ctx.ticket is not None:
            # lead time (bot/dora.py) starts when the ticket was ready for production
            self.store.note_ticket_ready(d.ticket_id, created_at=ctx.ticket.created_at,
                                         ready_at=ctx.ticket.ready_at)
        failed = [r for r in rows.values() if r.status is CheckStatus.FAILED]

        notes_row = rows[checklist.NOTES_ITEM[0]]
        notes = checklist.deployment_notes(ctx) if ctx.ticket else []
        if failed:
            notes_row.status, notes_row.reason = CheckStatus.SKIPPED, "not reached: blocked"
        elif not notes:
            notes_row.status, notes_row.reason = CheckStatus.PASSED, "no deployment notes on the ticket"
        elif d.dry_run:
            notes_row.status = CheckStatus.SKIPPED
            notes_row.reason = f"{len(notes)} note(s) to acknowledge (dry run: not asked)"
        else:
            notes_row.status = CheckStatus.RUNNING
            notes_row.reason = f"{len(notes)} note(s) waiting for acknowledgement"
        self._save_check(d, notes_row)

        lock_row = rows[checklist.LOCK_ITEM[0]]
        lock_row.status, lock_row.reason = self._lock_outcome(d, take=not failed and not d.dry_run)
        self._save_check(d, lock_row)
        failed = [r for r in rows.values() if r.status is CheckStatus.FAILED]
        env = self.config.environments[d.environment]
        frozen = freezing.frozen(env.freeze, self.clock.now(), self.config.timezone)
        if frozen and not d.dry_run and not d.break_glass:
            row = CheckResult(d.id, "freeze", "Freeze window", len(rows) + 1, CheckStatus.FAILED,
                              f"{d.environment} is in a {frozen}; break-glass needs a reason "
                              "and two approvers")
            self._save_check(d, row)
            failed.append(row)

        if failed:
            return self._block(d, failed)
        if d.dry_run:
            return self._finish_dry_run(d, ctx.rollback_steps)
        if notes:
            text = "\n\n".join(
                f"*{self.identities.person_of(c) or c.author_name or c.author}* "
                f"({c.created_at:%Y-%m-%d %H:%M}):\n{c.body}" for c in notes)
            self.store.create_gate(d.id, GateKind.NOTES_ACK,
                                   f"Deployment notes on {d.ticket_id}:\n\n{text}")
        if frozen and d.break_glass:
            for n in (1, 2):
                self.store.create_gate(
                    d.id, GateKind.BREAK_GLASS,
                    f"Break glass ({n} of 2, two different approvers): deploy {d.service} "
                    f"{d.version} to {d.environment} inside the {frozen}. "
                    f"Reason given: {d.break_glass}")
        for n in range(env.approvals_required):
            self.store.create_gate(
                d.id, GateKind.APPROVAL,
                f"Approve deploying {d.service} {d.version} to {d.environment} for {d.ticket_id}"
                + (f" (approval {n + 1} of {env.approvals_required})"
                   if env.approvals_required > 1 else ""))
        if self.store.gates(d.id):
            d = self.store.transition(d.id, DeploymentStatus.AWAITING_APPROVAL)
            return self._ask_gates(d)
        return self._deploy_alive(d)

    def _gate_context(self, d: Deployment) -> checklist.CheckContext:
        """Read what the gates are decided on: deploybot's own account (which also proves its
        credentials: a wrong key fails here even where anonymous reads would work), the ticket
        and its comments."""
        ticket, comments, ticket_error, bot = None, [], "", None
        try:
            bot = self.tracker.current_account()
            ticket, comments = self._ticket_and_comments(d.ticket_id)
        except DeploybotError as exc:
            ticket, comments = None, []
            ticket_error = (f"cannot read {d.ticket_id} on {self.tracker.name}: {exc.message}"
                            + (f" ({exc.hint})" if exc.hint else ""))
        return checklist.CheckContext(
            deployment=d, config=self.config,
            service=self.config.service(d.service, d.environment),
            environment=self.config.environments[d.environment], ticket=ticket,
            comments=comments, ticket_error=ticket_error,
            backend_for=lambda name: self.backend_for(name, d.environment),
            probe=self.probe, identities=self.identities, bot_account=bot,
            environ=self.environ)

    def _lock_outcome(self, d: Deployment, *, take: bool) -> tuple[CheckStatus, str]:
        return locks.outcome_for(self.store, self.config, d, take=take,
                                 say=lambda text: self._tell("step", d, text))

    def describe_lock(self, lock: Lock) -> str:
        return locks.describe(lock)

    def _block(self, d: Deployment, failed: list[CheckResult]) -> Deployment:
        summary = "; ".join(f"{c.title}: {c.reason}" for c in failed)
        with self.store.transaction():  # the status and what tells about it, or neither
            d = self.store.transition(d.id, DeploymentStatus.BLOCKED, failure=summary,
                                      detail=summary)
            comment = None if d.dry_run else self._comment(
                d, outboxing.blockers_key(d.ticket_id, failed), "blocker",
                records.render_blockers(d, failed,
                                        requested_by=self.config.canonical(d.requested_by)))
            targets = self.outbox.enqueue([self._post("blocked", d, failed), comment,
                                           self._post("finished", d, "")])
        self._direct("blocked", d, failed)
        self._deliver(d, targets)
        self._direct("finished", d, "")
        return d

    def _finish_dry_run(self, d: Deployment, rollback_steps: list[str]) -> Deployment:
        backend = self.backend_for(d.service, d.environment)
        plan = backend.plan(d.version)
        svc = self.config.service(d.service, d.environment)
        plan.append(f"verify: health{', detailed health' if svc.health and svc.health.detailed_path else ''}"
                    f"{f', {len(svc.smoke)} smoke test(s)' if svc.smoke else ''} "
                    f"within {svc.verify.timeout:.0f} s")
        plan.append("on failure roll back: " + ("; ".join(rollback_steps) or "take the new version down"))
        text = "Dry run: every check passed; nothing was changed. Planned steps:\n" + "\n".join(
            f"{i}. {s}" for i, s in enumerate(plan, 1))
        d = self.store.transition(d.id, DeploymentStatus.SUCCEEDED, verification=text,
                                  detail="dry run")
        self._tell("finished", d, text)
        return d

    # -- gates ----------------------------------------------------------------------------------

    def _ask_gates(self, d: Deployment) -> Deployment:
        for gate in self.store.gates(d.id):
            if gate.status is not GateStatus.PENDING:
                continue
            self._tell("gate_requested", d, gate)
            decision = self.approver.request(d, gate)
            if decision is None:
                continue
            try:
                outcome = self.decide_gate(gate.id, decided_by=decision.decided_by,
                                           approved=decision.approved, reason=decision.reason,
                                           resume=False)
            except NotAllowed as exc:
                self._tell("step", d, f"{decision.decided_by} may not decide this gate: {exc}")
                continue
            if outcome.gate.status is GateStatus.REJECTED:
                return self.store.deployment(d.id)
        return self._resume_if_approved(d.id)

    def authorise(self, d: Deployment, gate: Gate, who: Actor | str, *,
                  approved: bool = True) -> None:
        """NotAllowed unless `who` may decide `gate` this way (the README's table)."""
        actor = self.actor(who)
        subject = f"deployment #{d.id} ({d.service} {d.version} to {d.environment})"
        if not approved:
            action = Action.REJECT
        elif gate.kind is GateKind.NOTES_ACK:
            action = Action.ACK_NOTES
        elif gate.kind is GateKind.BREAK_GLASS:
            action = Action.BREAK_GLASS
        else:
            action = Action.APPROVE
        self.auth.require(action, actor, d.environment, requester=d.requested_by,
                          subject=subject)
        if approved and gate.kind is not GateKind.NOTES_ACK:
            for other in self.store.gates(d.id, kind=gate.kind):
                if other.id != gate.id and other.status is GateStatus.APPROVED and \
                        self.config.same_person(other.decided_by, actor.name):
                    raise NotAllowed(f"{actor.name} already approved deployment #{d.id}.",
                                     hint="Each approval must come from a different person.")

    @logcontext.around(lambda self, gate_id, **_: self.store.deployment(
        self.store.gate(gate_id).deployment_id))
    def decide_gate(self, gate_id: int, *, decided_by: Actor | str, approved: bool,
                    reason: str = "", resume: bool = True) -> GateOutcome:
        """A person decided a gate. Authorised once; repeated clicks change nothing."""
        actor = self.actor(decided_by)
        gate = self.store.gate(gate_id)
        d = self.store.deployment(gate.deployment_id)
        if gate.status is not GateStatus.PENDING:
            return GateOutcome(gate, d, decided_now=False)
        if d.status is not DeploymentStatus.AWAITING_APPROVAL:
            raise StateError(f"deployment #{d.id} is {d.status.value}; there is nothing to decide")
        self.authorise(d, gate, actor, approved=approved)
        if not approved and not reason.strip():
            raise InputError("a rejection needs a reason")
        gate, decided_now = self.store.decide_gate(gate_id, approved=approved,
                                                   decided_by=actor.name, reason=reason,
                                                   via=actor.audit())
        if not decided_now:
            return GateOutcome(gate, self.store.deployment(d.id), decided_now=False)
        self._tell("gate_decided", d, gate)
        decided_by = actor.name
        if gate.kind is GateKind.NOTES_ACK and approved:
            for row in self.store.checks(d.id):
                if row.name == checklist.NOTES_ITEM[0]:
                    row.status, row.reason = CheckStatus.PASSED, f"acknowledged by {decided_by}"
                    self._save_check(d, row)
        if not approved:
            text = f"{gate.kind.value.replace('_', ' ')} rejected by {decided_by}: {reason}"
            try:
                with self.store.transaction():  # rejected, and the ticket told, or neither
                    d = self.store.transition(d.id, DeploymentStatus.REJECTED, actor=decided_by,
                                              failure=text, detail=text, via=actor.audit())
                    targets = self.outbox.enqueue([
                        self._comment(d, f"deploybot-rejected-{d.id}", "rejection",
                                      f"**Deployment rejected:** {d.service} {d.version} to "
                                      f"{d.environment}: {text}\n"),
                        self._post("finished", d, "")])
            except StateError:
                return GateOutcome(gate, self.store.deployment(d.id), decided_now=True)
            self._deliver(d, targets)
            self._direct("finished", d, "")
            return GateOutcome(gate, d, decided_now=True)
        if resume:
            d = self.run_guarded(lambda: self._resume_if_approved(d.id), d.id)
        return GateOutcome(gate, self.store.deployment(d.id), decided_now=True)

    @logcontext.around(lambda self, fn, deployment_id: self.store.deployment(deployment_id))
    def run_guarded(self, fn: Callable[[], Deployment], deployment_id: int) -> Deployment:
        try:
            return fn()
        except Exception as exc:
            log.exception("deployment #%s failed unexpectedly", deployment_id)
            return self._fail_unexpectedly(deployment_id, exc)

    def _resume_if_approved(self, deployment_id: int) -> Deployment:
        d = self.store.deployment(deployment_id)
        gates = self.store.gates(d.id)
        if d.status is not DeploymentStatus.AWAITING_APPROVAL or \
                any(g.status is not GateStatus.APPROVED for g in gates):
            return d
        # Two gates approved at once (two threads, two replicas): one goes on.
        if not self.store.claim_resume(d.id):
            return self.store.deployment(d.id)
        return self._deploy_alive(d)

    def _deploy_alive(self, d: Deployment) -> Deployment:
        """Re-check, then deploy while a heartbeat keeps the lock from expiring."""
        changed = self._recheck(d)
        if changed is not None:
            return self._block(d, [changed])
        with locks.Heartbeat(self.store, d.id, self.config.environments[d.environment].lock_ttl):
            return self._deploy(d)

    RECHECK_ITEM = ("rollout_recheck", "Still true when the rollout starts")
    RECHECKED = ("cq_approval", "qa_pass", "ticket_status")

    def _recheck(self, d: Deployment) -> CheckResult | None:
        """Right before the backend touches anything: re-read the ticket, re-evaluate CQ, QA and
        status, re-check the freeze and that this deployment still holds its lock. Gates,
        notes, schedules and queues let time pass; whatever changed meanwhile blocks, saying
        what changed. Returns the failed row, or None when everything still holds."""
        rows = {c.name: c for c in self.store.checks(d.id)}
        row = CheckResult(d.id, *self.RECHECK_ITEM, position=len(rows) + 1,
                          status=CheckStatus.RUNNING)
        self._save_check(d, row)
        changes, held = [], []
        if d.kind is DeploymentKind.DEPLOY:
            ctx = self._gate_context(d)
            items = {i.name: i for i in checklist.CHECKLIST}
            for name in self.RECHECKED:
                before = rows.get(name)
                try:
                    now = items[name].run(ctx)
                except Exception as exc:  # a crash here must block, not deploy
                    log.exception("re-check %s crashed", name)
                    now = checklist.Outcome.failed(f"could not be checked: {exc}")
                title = items[name].title
                if now.status is not CheckStatus.PASSED:
                    changes.append(f"{title}: {now.reason}")
                elif before is not None and before.evidence and \
                        not self._evidence_holds(name, before.evidence, now, ctx):
                    changes.append(f"{title}: what the checklist relied on changed "
                                   f"({self._evidence_change(name, before, now)})")
                else:
                    held.append(title)
            env = self.config.environments[d.environment]
            frozen = freezing.frozen(env.freeze, self.clock.now(), self.config.timezone)
            if frozen and not d.break_glass:
                changes.append(f"Freeze window: {d.environment} is now in a {frozen}")
        status, reason = self._lock_outcome(d, take=True)
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
        self._save_check(d, row)
        return row if changes else None

    @staticmethod
    def _evidence_holds(name: str, evidence: str, now: checklist.Outcome,
                        ctx: checklist.CheckContext) -> bool:
        if name == "ticket_status":
            return now.evidence.casefold() == evidence.casefold()
        # the approval the checklist counted is still there, unedited (a newer one may exist too)
        return any(checklist.comment_digest(c) == evidence for c in ctx.comments)

    @staticmethod
    def _evidence_change(name: str, before: CheckResult, now: checklist.Outcome) -> str:
        if name == "ticket_status":
            return f"status was {before.evidence!r}, is {now.evidence!r}"
        comment_id = before.evidence.split(":", 1)[0]
        return f"the comment it counted (#{comment_id}) was edited or deleted; now {now.reason}"

    def pending_gates(self, deployment_id: int) -> list[Gate]:
        return [g for g in self.store.gates(deployment_id) if g.status is GateStatus.PENDING]

    # -- execution --------------------------------------------------------------------------------

    def _step(self, d: Deployment) -> Callable[[str], None]:
        ttl = self.config.environments[d.environment].lock_ttl

        def step(message: str) -> None:
            self.store.heartbeat(d.id, ttl)
            self.store.record_event(d.id, "deploybot", "step", message)
            self._tell("step", d, message)
        return step

    def _unresolved(self, d: Deployment) -> list[Deployment]:
        """Interrupted rollouts of the same service and environment that are not resolved:
        their kept container (or recorded version) may still be what a rollback needs."""
        return [u for u in self.store.unresolved(d.service, d.environment) if u.id != d.id]

    def _deploy(self, d: Deployment) -> Deployment:
        if self.stop:
            return self._failed(d, f"stopped ({self.stop.why}) before the rollout; nothing "
                                   "was changed")
        if self._unresolved(d):
            from bot.recovery import recover

            recover(self, service=d.service, environment=d.environment)
            waiting = self._unresolved(d)
            if waiting:
                u = waiting[0]
                return self._failed(d, f"deployment #{u.id} ({u.service} {u.version}, "
                                       f"{u.status.value.replace('_', ' ')}) was interrupted and "
                                       "is not recovered yet (its process still runs, or the "
                                       "engine does not answer); nothing was changed: deploy "
                                       "again once it is (deploybot show "
                                       f"{u.id})")
        self.stop.rollout_started = True
        try:
            # Only one caller wins this transition: a double approval cannot deploy twice.
            d = self.store.transition(d.id, DeploymentStatus.DEPLOYING)
        except StateError:
            return self.store.deployment(d.id)
        backend = self.backend_for(d.service, d.environment)
        step = self._step(d)
        previous = d.previous_version
        try:
            now_running = backend.current_version()
            if now_running != previous:
                step(f"note: {now_running or 'nothing'} runs now, not {previous or 'nothing'} "
                     "as at check time; rolling back would return to what runs now")
                previous = now_running
                d = self.store.update_deployment(d.id, previous_version=previous)
            # The bytes that run now: what an automatic rollback restores, whatever the tag
            # names by then.
            d = self.store.update_deployment(d.id,
                                             previous_image_ref=self._running_image(backend, step))
            # A manual rollback puts back the bytes that version was, not what its tag names now.
            pin = (self.store.known_image(d.service, d.environment, d.version) or None
                   if d.kind is DeploymentKind.ROLLBACK else None)
            svc = self.config.service(d.service, d.environment)
            if svc.build and d.kind is DeploymentKind.DEPLOY:
                if self.image_builder is None:
                    raise BackendError(f"{d.service} is built from source but no image builder "
                                       "is configured")
                digest = self.image_builder.build(svc.image, d.version, svc.build, step)
                d = self.store.update_deployment(d.id, image_digest=digest)
            backend.prepare(d.version, step, image=pin)
        except BackendError as exc:
            return self._failed(d, f"could not prepare {d.version}: {exc}; "
                                   f"{previous or 'nothing'} is still running, nothing changed")
        baseline = self._baseline(d, backend, step)
        try:
            backend.deploy(d.version, ticket_id=d.ticket_id, on_step=step, image=pin)
        except BackendError as exc:
            return self._failed(d, f"deploying {d.version} failed: {exc}")
        d = self.store.transition(d.id, DeploymentStatus.VERIFYING,
                                  image_ref=self._running_image(backend, step))
        svc = self.config.service(d.service, d.environment)
        result = verify(svc, backend, self.probe, self.clock, step,
                        stop=lambda: self.stop.why if self.stop else "")
        if baseline is not None and not result.failed:
            self._watch(d, backend, baseline, result, step)
        summary = "; ".join(f"{k}: {v}" for k, v in (("health", result.health_reason),
                                                     ("smoke", result.smoke_reason)))
        if not result.failed:
            try:
                backend.finalize(step)
            except BackendError as exc:
                result.notes.append(f"could not clean up after the deploy: {exc}")
            d = self.store.transition(d.id, DeploymentStatus.SUCCEEDED, verification=summary)
            return self._finish(d, result)
        reasons = "; ".join(result.failure_reasons)
        if d.kind is DeploymentKind.ROLLBACK:
            # A manual rollback that fails verification is not rolled back again: people decide.
            d = self.store.transition(d.id, DeploymentStatus.FAILED, verification=summary,
                                      failure=f"rollback to {d.version} failed verification: {reasons}")
            self._tell("alert", d, f"manual rollback of {d.service} in {d.environment} to "
                                   f"{d.version} failed verification: {reasons}")
            return self._finish(d, result)
        return self._roll_back(d, backend, result, summary, reasons)

    # The watch window (bot/watch.py): wiring sets these; None keeps the sources off.
    metrics_for: Callable[[str, str], MetricsSource | None] | None = None
    run_command: watching.CommandRunner | None = None  # None: integrity checks, child env

    def _watcher(self, d: Deployment, backend: DeployBackend) -> watching.Watcher:
        svc = self.config.service(d.service, d.environment)
        metrics = self.metrics_for(d.service, d.environment) if self.metrics_for else None
        run = self.run_command or functools.partial(
            watching.run_command, env=allowed_environ(self.environ, self.config.child_env))
        return watching.Watcher(svc, backend, self.probe, self.clock, metrics, run)

    def _baseline(self, d: Deployment, backend: DeployBackend,
                  step: Callable[[str], None]) -> watching.Baseline | None:
        """Sample what runs now, before the deploy, when the service has a watch configured."""
        if d.kind is not DeploymentKind.DEPLOY or \
                not watching.watch_enabled(self.config.service(d.service, d.environment)):
            return None
        return self._watcher(d, backend).baseline(step)

    def _watch(self, d: Deployment, backend: DeployBackend,
               baseline: watching.Baseline, result: VerificationResult,
               step: Callable[[str], None]) -> None:
        """Measure the new version for the window; a tripped rule fails `result` at once."""
        svc = self.config.service(d.service, d.environment)
        report = self._watcher(d, backend).watch(baseline, step)
        watching.apply(result, baseline, report, svc)

    def _roll_back(self, d: Deployment, backend: DeployBackend, result: VerificationResult,
                   summary: str, reasons: str) -> Deployment:
        previous = d.previous_version
        d = self.store.transition(d.id, DeploymentStatus.ROLLING_BACK, verification=summary,
                                  failure=f"verification failed ({reasons})")
        self._tell("alert", d, f"automatic rollback of {d.service} {d.version} in "
                               f"{d.environment} to {previous or 'nothing'}: {reasons}")
        step = self._step(d)
        try:
            backend.rollback(previous, step, image=d.previous_image_ref or None)
            if previous:
                svc = self.config.service(d.service, d.environment)
                status, why = wait_healthy(svc, backend, self.probe, self.clock,
                                           svc.verify.timeout, svc.verify.interval)
                if status is CheckStatus.FAILED:
                    raise BackendError(f"{previous} is back but not healthy: {why}")
                result.notes.append(f"after rollback {previous} is healthy: {why}")
        except BackendError as exc:
            from bot.recovery import engine_unreachable

            down = engine_unreachable(backend)
            d = self.store.transition(
                d.id, DeploymentStatus.ROLLBACK_FAILED, needs_recovery=int(down),
                failure=f"verification failed ({reasons}); the rollback to "
                        f"{previous or 'nothing'} failed too: {exc}"
                        + ("; retried when the engine answers again" if down else ""))
            self._tell("alert", d, f"ROLLBACK FAILED for {d.service} in {d.environment}: {exc}. "
                                   + ("deploybot retries when the engine answers again."
                                      if down else "The service needs a person now."))
            return self._finish(d, result)
        d = self.store.transition(
            d.id, DeploymentStatus.ROLLED_BACK,
            failure=f"verification failed ({reasons}); rolled back to {previous or 'nothing'}")
        return self._finish(d, result)

    @staticmethod
    def _running_image(backend: DeployBackend, step: Callable[[str], None]) -> str:
        """The bytes running now; not knowing them is said, never a reason to stop (a manual
        rollback in an emergency must not fail because pods disagree about their image)."""
        try:
            return backend.running_image() or ""
        except BackendError as exc:
            step(f"note: cannot tell which image bytes run ({exc.message}); a rollback would "
                 "go back by tag")
            return ""

    def _failed(self, d: Deployment, message: str) -> Deployment:
        d = self.store.transition(d.id, DeploymentStatus.FAILED, failure=message, detail=message)
        return self._finish(d, None)

    # -- manual rollback --------------------------------------------------------------------------

    def _check_rollback(self, d: Deployment) -> Deployment:
        try:
            d = self.store.transition(d.id, DeploymentStatus.CHECKING)
        except StateError:  # another process (a second scheduler) started it first
            return self.store.deployment(d.id)
        self._tell("deployment_started", d)
        row = CheckResult(d.id, checklist.LOCK_ITEM[0], checklist.LOCK_ITEM[1], 1)
        row.status, row.reason = self._lock_outcome(d, take=True)
        self._save_check(d, row)
        if row.status is CheckStatus.FAILED:
            return self._block(d, [row])
        return self._deploy_alive(d)

    # -- the outbox (bot/outbox.py) -----------------------------------------------------------

    def _comment(self, d: Deployment, key: str, what: str, markdown: str,
                 flag: str = "") -> outboxing.Message | None:
        if d.ticket_id == "none":
            return None
        return outboxing.comment(d, key, markdown, what, flag=flag)

    def _comment_once(self, d: Deployment, what: str, markdown: str) -> None:
        """One comment per deployment and `what`, stored on its own and delivered now (where no
        state change is stored with it)."""
        self._deliver(d, self.outbox.enqueue(
            [self._comment(d, f"deploybot-{what}-{d.id}", what, markdown)]))

    def _post(self, event: str, *args) -> outboxing.Message | None:
        """The outbox item for a durable reporter's alert/blocked/finished (None: tell it
        directly). One item per deployment and event; alerts per distinct text."""
        if self.outbox.poster is None or event not in self.DURABLE_EVENTS:
            return None
        d = args[0]
        if event == "alert":
            digest = hashlib.sha256(args[1].encode()).hexdigest()[:12]
            return outboxing.post(d, event, f"deploybot-alert-{d.id}-{digest}", message=args[1])
        if event == "blocked":
            return outboxing.post(d, event, f"deploybot-post-blocked-{d.id}", blockers=[
                {"name": c.name, "title": c.title, "reason": c.reason} for c in args[1]])
        return outboxing.post(d, event, f"deploybot-post-finished-{d.id}", record=args[1])

    def _direct(self, event: str, *args) -> None:
        """Tell a reporter that is not durable (the terminal) now; a durable one got an item."""
        if self.outbox.poster is None:
            self._tell(event, *args)

    def _deliver(self, d: Deployment, targets: list[str]) -> None:
        """Deliver what was just stored, now; what fails stays in the outbox and is said."""
        if not targets:
            return
        done = self.outbox.deliver(targets=targets)
        for item, error in done.retrying:
            if item.kind != outboxing.POST and item.deployment_id == d.id:
                self._tell("step", d, f"{outboxing.describe(item)} not delivered yet: {error}; "
                                      "kept in the outbox and retried (deploybot status)")
        for text in done.said:
            self._tell("step", d, text)

    # -- the record -------------------------------------------------------------------------------

    def _finish(self, d: Deployment, result: VerificationResult | None,
                post_record: bool = True) -> Deployment:
        if not post_record:
            self._tell("finished", d, "")
            return d
        ticket = None
        try:
            ticket = self.tracker.get_ticket(d.ticket_id) if d.ticket_id != "none" else None
        except DeploybotError:
            pass
        backend = self.backend_for(d.service, d.environment)
        svc = self.config.service(d.service, d.environment)
        rollback_target = d.previous_version
        steps = backend.rollback_steps(rollback_target)
        lines = records.rollback_plan(d, steps, str(svc.health.url) if svc.health else None,
                                      self.config.channel)
        notes = []
        if d.image_digest:
            notes.append(f"Image built from source: {svc.image}:{d.version} = {d.image_digest}")
        if d.image_ref:
            notes.append(f"Bytes deployed: {svc.image}:{d.version} = {d.image_ref}"
                         + (f" (before: {d.previous_image_ref})" if d.previous_image_ref else ""))
        if d.status is DeploymentStatus.ROLLED_BACK:
            notes.append(f"Rolled back: {d.previous_version or 'nothing'} is running again; "
                         f"{d.version} did not pass verification.")
        approved = [f"{self.config.canonical(g.decided_by)} at {g.decided_at:%Y-%m-%d %H:%M UTC}"
                    for g in self.store.gates(d.id)
                    if g.status is GateStatus.APPROVED and g.kind is not GateKind.NOTES_ACK
                    and g.decided_by and g.decided_at]
        text = records.render(d, ticket=ticket, checks=self.store.checks(d.id),
                              verification=result, rollback_lines=lines, notes=notes,
                              now=self.clock.now(), approved_by=approved,
                              deployed_by=self.config.canonical(d.requested_by))
        deployed_status = self.config.tracker.rules.deployed_status
        with self.store.transaction():  # the record and its deliveries are stored together
            if not d.record:
                d = self.store.update_deployment(d.id, record=text)
            posted = self.store.claim(d.id, "record_posted")
            messages = [self._post("finished", d, d.record) if posted else None]
            if not d.dry_run and d.ticket_id != "none":
                messages.append(self._comment(d, f"deploybot-record-{d.id}", "record", d.record,
                                              flag="record_commented"))
                if (d.status is DeploymentStatus.SUCCEEDED and deployed_status
                        and d.kind is DeploymentKind.DEPLOY and moves_ticket(self.config, d)):
                    seen = next((c.evidence for c in self.store.checks(d.id)
                                 if c.name == "ticket_status"), "")
                    messages.append(outboxing.transition(d, deployed_status, seen))
            targets = self.outbox.enqueue(messages)
        if posted:
            self._direct("finished", d, d.record)
        self._deliver(d, targets)
        return self.store.deployment(d.id)

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
        self._tell("finished", d, "")
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


def moves_ticket(config: Config, d: Deployment) -> bool:
    """Only a production deploy moves the ticket on; a staging deploy leaves it where it is."""
    env = config.environments[d.environment]
    return env.production or d.environment == "production" or len(config.environments) == 1
