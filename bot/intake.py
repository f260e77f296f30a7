"""Requests taken in: a deploy or a rollback validated (ticket, environment, service, version,
freeze, authorization) and stored as a `requested` deployment. InputError/NotAllowed change
nothing. The Pipeline (bot/pipeline.py) drives what is stored here."""

from __future__ import annotations

import re
from datetime import datetime

from bot import checks as checklist
from bot import freeze as freezing
from bot.authorization import Action
from bot.errors import InputError, NotAllowed, TrackerError
from bot.identity import Actor
from bot.models import Deployment, DeploymentKind, DeploymentStatus
from bot.run_context import RunContext

# Docker's tag grammar: what a version may be, so it is safe in every backend and record.
VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
TARGET_RE = re.compile(r"^(?P<service>[a-z0-9][a-z0-9_-]{0,62})@(?P<version>.+)$")


def shown(text: str, limit: int = 60) -> str:
    """User input as an error message quotes it: a pasted log line is not echoed whole."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def validate_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise InputError(f"{shown(version)} is not a valid version",
                         hint="use an image tag: letters, digits, '_', '.', '-', at most 128")
    return version


def parse_target(text: str) -> tuple[str, str]:
    m = TARGET_RE.match(text.strip())
    if not m and TARGET_RE.match(text.strip().lower()):
        service, _, version = text.strip().partition("@")
        raise InputError(f"{text!r} is not service@version: service names are lower case "
                         f"({service.lower()}@{version})")
    if not m:
        raise InputError(f"{shown(text)} is not service@version", hint="for example web@v2.1.0")
    return m.group("service"), validate_version(m.group("version"))


class Intake:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def environment(self, name: str | None) -> str:
        env = name or self.ctx.config.default_env
        if env not in self.ctx.config.environments:
            raise InputError(f"unknown environment {env!r}",
                             hint=f"known: {', '.join(self.ctx.config.environments)}")
        return env

    def service_name(self, name: str, environment: str) -> str:
        if name not in self.ctx.config.services:
            raise InputError(f"unknown service {name!r}",
                             hint=f"known: {', '.join(self.ctx.config.services)}")
        if not self.ctx.config.deployable(name, environment):
            raise InputError(f"{name} is not deployed to {environment}")
        return name

    def check_version_allowed(self, version: str, environment: str) -> None:
        """Production refuses tags that name whatever was pushed last (`latest`, `main`, …)."""
        env = self.ctx.config.environments[environment]
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
        actor = Actor.named(self.ctx.config, requested_by)
        ticket_id = self.ctx.tracker.parse_ref(ticket_ref)
        env = self.environment(environment)
        if not dry_run:
            self.ctx.auth.require(Action.DEPLOY, actor, env)
        if target:
            service, version = parse_target(target)
            self.service_name(service, env)
        tz = self.ctx.config.timezone
        scheduled_for = freezing.parse_when(at, now=self.ctx.clock.now(), tz=tz) if at else None
        if not dry_run:
            self.refuse_if_frozen(env, scheduled_for or self.ctx.clock.now(), break_glass)
        try:
            # A ticket that does not exist (or a tracker that refuses us) changes nothing.
            ticket, comments = self.ctx.tracker.gate_data(ticket_id)
        except TrackerError as exc:
            raise InputError(f"cannot read {ticket_id}: {exc.message}", hint=exc.hint) from None
        if not target:
            found = checklist.version_from_ticket(ticket, comments, self.ctx.config.tracker.rules)
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
        backend = self.ctx.backend_for(service, env)
        deployment, created = self.ctx.store.create_deployment(
            ticket_id=ticket_id, service=service, version=version, environment=env,
            requested_by=actor.name, dry_run=dry_run, method=backend.method,
            lock_scope=self.ctx.config.lock_scope(service, env), request_key=request_key,
            scheduled_for=scheduled_for, queued=queue and not dry_run,
            break_glass=break_glass.strip(), one_at_a_time=not dry_run, via=actor.audit())
        if created:  # the checklist's read, when it runs in this process
            self.ctx.reads.requested(deployment.id, ticket, comments)
        return deployment

    def refuse_if_frozen(self, env: str, at: datetime, break_glass: str) -> None:
        config = self.ctx.config
        why = freezing.frozen(config.environments[env].freeze, at, config.timezone)
        if why is None:
            return
        when = freezing.local(at, self.ctx.config.timezone)
        if not break_glass.strip():
            raise NotAllowed(f"{env} is frozen at {when}: {why}",
                             hint="deploy after the window, or break glass with a reason "
                                  "(--break-glass REASON); two approvers must then approve")
        env_cfg = self.ctx.config.environments[env]
        if len(env_cfg.approvers) < 2 and not env_cfg.approver_groups:
            raise NotAllowed(f"{env} is frozen at {when}: {why}; break-glass needs two "
                             f"authorised approvers but {env} names "
                             f"{len(env_cfg.approvers)}", hint=f"add approvers to "
                             f"environments.{env}.approvers")

    def request_rollback(self, *, requested_by: Actor | str, service: str | None = None,
                         ticket_ref: str | None = None, environment: str | None = None,
                         to_version: str | None = None,
                         request_key: str | None = None) -> Deployment:
        """A manual rollback: back to `to_version` or to what ran before the current version."""
        actor = Actor.named(self.ctx.config, requested_by)
        env = self.environment(environment) if environment or not ticket_ref else None
        if ticket_ref:
            ticket_id = self.ctx.tracker.parse_ref(ticket_ref)
            succeeded = {DeploymentStatus.SUCCEEDED}
            done = [d for d in self.ctx.store.deployments(limit=500, statuses=succeeded)
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
        self.ctx.auth.require(Action.ROLLBACK, actor, env)
        backend = self.ctx.backend_for(service, env)
        current = backend.current_version()
        if to_version:
            target = validate_version(to_version)
            known = self.ran_here(service, env)
            if target not in known and target != current:
                # Otherwise a rollback would ship a version no checklist or approval ever let
                # into this environment.
                raise InputError(
                    f"{target} never ran {service} in {env}: a rollback goes back to a version "
                    f"that ran here ({', '.join(dict.fromkeys(known)) or 'none recorded'})",
                    hint=f"to ship {target} there, deploy it with its ticket: deploybot deploy "
                         f"TICKET {service}@{target} --env {env}")
        elif ticket_ref:
            if current != last.version:
                # Undoing a ticket whose version no longer runs would put back whatever ran
                # before the current one -- another ticket's version, or this very one.
                raise InputError(
                    f"{ticket_id} put {last.version} on {service} in {env}, which no longer runs "
                    f"there ({current or 'nothing'} does): there is nothing of {ticket_id} "
                    f"to undo", hint=f"to put a given version back: rollback {service} --to "
                                     f"VERSION --env {env}")
            target = last.previous_version or self.previous_from_history(service, env, current)
            if target is None:
                raise InputError(f"no version of {service} in {env} before {ticket_id} is known",
                                 hint="give the version: rollback SERVICE --to VERSION")
        else:
            target = self.previous_from_history(service, env, current)
            if target is None:
                raise InputError(
                    f"no previous version of {service} in {env} is known "
                    f"(running: {current or 'nothing'})",
                    hint="give the version: rollback SERVICE --to VERSION")
        if target == current:
            raise InputError(f"{service} in {env} already runs {target}")
        related = self.ctx.store.last_succeeded(service, env)
        deployment, _ = self.ctx.store.create_deployment(
            ticket_id=related.ticket_id if related else "none", service=service, version=target,
            environment=env, requested_by=actor.name, kind=DeploymentKind.ROLLBACK,
            method=backend.method, lock_scope=self.ctx.config.lock_scope(service, env),
            request_key=request_key, via=actor.audit())
        self.ctx.store.update_deployment(deployment.id, previous_version=current)
        return self.ctx.store.deployment(deployment.id)

    def previous_from_history(self, service: str, env: str, current: str | None) -> str | None:
        """The newest version known to have run well here that is not `current`: succeeded
        deployments and what ran before any rollout (interrupted, failed or rolled back ones
        included), so it survives any interruption, kept container or not."""
        return next((v for v in self.ran_here(service, env, limit=200) if v != current), None)

    def ran_here(self, service: str, env: str, limit: int = 10000) -> list[str]:
        """The versions known to have run well here, newest first (repeats kept)."""
        good: list[str] = []
        touched = {DeploymentStatus.SUCCEEDED, DeploymentStatus.ROLLED_BACK,
                   DeploymentStatus.ROLLBACK_FAILED, DeploymentStatus.INTERRUPTED,
                   DeploymentStatus.FAILED}
        for d in self.ctx.store.deployments(service=service, environment=env, statuses=touched,
                                            limit=limit):
            if d.dry_run:
                continue
            if d.status is DeploymentStatus.SUCCEEDED:
                good.append(d.version)
            if d.kind is DeploymentKind.DEPLOY and d.previous_version:
                good.append(d.previous_version)
        return good

