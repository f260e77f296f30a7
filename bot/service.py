"""One request service for every front end: a request in, an outcome out.

The terminal, Slack and the scheduler hand their requests (bot/requests.py) here and render the
outcome; they do not decide anything themselves. The actor is resolved once per request, for the
environment the request acts in (Slack needs it to know the approver groups), and the
authorization table (bot/authorization.py) is applied once, by the pipeline method the request
maps to. A refusal is an outcome (Refused), the same for every front end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Union

from bot.errors import DeploybotError, InputError, NotAllowed, StateError
from bot.identity import SYSTEM, Actor
from bot.models import CANCELLABLE, Deployment, DeploymentStatus, Gate, GateKind, Lock
from bot.outbox import OutboxItem
from bot.requests import (CancelRequest, DecideRequest, DeployRequest, HistoryRequest,
                          LockRequest, RollbackRequest, ServiceRequest, StartRequest,
                          StatusRequest, UnlockRequest)

# Who asks: an Actor, or the front end's resolver of one for the environment the request acts
# in (None: the request names none that is known).
Identify = Union[Actor, Callable[[Union[str, None]], Actor]]

SCHEDULER = Actor(None, SYSTEM, "scheduler")


# -- outcomes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Requested:
    """A deployment or rollback is stored; the front end drives it (StartRequest) or, when it
    is scheduled, checks it now (RequestService.precheck) and leaves it to the scheduler."""

    deployment: Deployment

    @property
    def scheduled(self) -> bool:
        return self.deployment.scheduled_for is not None


@dataclass(frozen=True)
class Ran:
    """A deployment was driven as far as it goes now: finished, waiting for a gate, or still
    requested behind a held lock (`waiting` says for what)."""

    deployment: Deployment
    waiting: str = ""
    pending: tuple[Gate, ...] = ()

    @property
    def queued(self) -> bool:
        return self.deployment.status is DeploymentStatus.REQUESTED and self.deployment.queued


@dataclass(frozen=True)
class LockLine:
    lock: Lock
    description: str  # who holds it, why, and the exact unlock command


@dataclass(frozen=True)
class ActiveLine:
    deployment: Deployment
    waiting: str  # its time or its queue turn; "" when it is not waiting


@dataclass(frozen=True)
class RunningLine:
    environment: str
    service: str
    version: str | None = None
    detail: str = ""
    running: bool = False  # up, as far as the backend can tell
    error: DeploybotError | None = None  # the backend could not tell


@dataclass(frozen=True)
class StatusView:
    locks: tuple[LockLine, ...]
    active: tuple[ActiveLine, ...]
    running: tuple[RunningLine, ...]
    undelivered: tuple[OutboxItem, ...]
    now: datetime

    @property
    def waiting(self) -> tuple[ActiveLine, ...]:
        return tuple(a for a in self.active if a.waiting)


def unresolved_note(d: Deployment, retried: bool) -> str:
    if not retried:
        return (f"{d.status.value}, needs a person: nothing retries it; `deploybot show {d.id}` "
                f"says what failed, then roll back or deploy by hand")
    return (f"{d.status.value}, not repaired yet: every deploybot command (and the scheduler's "
            f"tick) retries it once the engine answers; `deploybot show {d.id}` has its trail")


@dataclass(frozen=True)
class HistoryRows:
    rows: tuple[Deployment, ...]
    service: str | None = None
    environment: str | None = None


@dataclass(frozen=True)
class Locked:
    lock: Lock
    reason: str


@dataclass(frozen=True)
class Unlocked:
    lock: Lock  # as it was held: holder and reason
    reason: str


@dataclass(frozen=True)
class Cancelled:
    deployment: Deployment


@dataclass(frozen=True)
class Decided:
    """Gates decided (or not: `notes` say why), and where the deployment stands now.
    `gates`: the deployment's gates (all decided) when none was pending; `pending`: what still
    waits after this decision."""

    deployment: Deployment
    approved: bool
    notes: tuple[str, ...] = ()
    already: tuple[Gate, ...] = ()  # decided by someone else meanwhile: nothing changed
    gates: tuple[Gate, ...] = ()
    nothing_pending: bool = False
    pending: tuple[Gate, ...] = ()


@dataclass(frozen=True)
class Refused:
    """Not allowed: the same sentence, with who may act instead, for every front end."""

    error: NotAllowed

    @property
    def message(self) -> str:
        return self.error.message

    @property
    def hint(self) -> str:
        return self.error.hint


Outcome = Union[Requested, Ran, StatusView, HistoryRows, Locked, Unlocked, Cancelled, Decided,
                Refused]


# -- the service ---------------------------------------------------------------------------------

class RequestService:
    """Carries out requests on a pipeline (its public methods only)."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.store = pipeline.store

    def handle(self, request: ServiceRequest, who: Identify, *,
               request_key: str | None = None) -> Outcome:
        """Carry out `request` for `who`. Refused when the table says no; InputError and
        StateError (nothing changed) are raised for the front end to show."""
        try:
            return self._handle(request, who, request_key)
        except NotAllowed as exc:
            return Refused(exc)

    def _handle(self, req: ServiceRequest, who: Identify, request_key: str | None) -> Outcome:
        p = self.pipeline
        if isinstance(req, DeployRequest):
            actor = self._actor(who, req.environment)
            return Requested(p.request_deploy(
                req.ticket, requested_by=actor, target=req.target, environment=req.environment,
                dry_run=req.dry_run, request_key=request_key, at=req.at, queue=req.queue,
                break_glass=req.break_glass))
        if isinstance(req, RollbackRequest):
            actor = self._actor(who, req.environment)
            return Requested(p.request_rollback(
                requested_by=actor, service=req.service, ticket_ref=req.ticket,
                environment=req.environment, to_version=req.to_version,
                request_key=request_key))
        if isinstance(req, StartRequest):
            return self._start(req.deployment_id)
        if isinstance(req, StatusRequest):
            return self.status()
        if isinstance(req, HistoryRequest):
            return HistoryRows(tuple(p.history(req.service, req.environment, req.limit)),
                               req.service, req.environment)
        if isinstance(req, LockRequest):
            lock = p.lock(req.environment, user=self._actor(who, req.environment),
                          reason=req.reason, service=req.service)
            return Locked(lock, req.reason)
        if isinstance(req, UnlockRequest):
            lock = p.unlock(req.environment, user=self._actor(who, req.environment),
                            reason=req.reason, service=req.service)
            return Unlocked(lock, req.reason)
        if isinstance(req, CancelRequest):
            target = self._to_cancel(req)
            return Cancelled(p.cancel(target.id, user=self._actor(who, target.environment),
                                      reason=req.reason))
        if isinstance(req, DecideRequest):
            return self._decide(req, who)
        raise InputError(f"unsupported request {req!r}")

    # -- who ------------------------------------------------------------------------------------

    def _actor(self, who: Identify, environment: str | None) -> Actor:
        if isinstance(who, Actor):
            return who
        env = environment or self.config.default_env
        return who(env if env in self.config.environments else None)

    # -- driving --------------------------------------------------------------------------------

    def _start(self, deployment_id: int) -> Ran:
        """Authorised when it was requested: driving it needs no second decision."""
        d = self.pipeline.run(deployment_id)
        return self._ran(d)

    def _ran(self, d: Deployment) -> Ran:
        from bot.scheduler import waiting_note

        pending = (tuple(self.pipeline.pending_gates(d.id))
                   if d.status is DeploymentStatus.AWAITING_APPROVAL else ())
        return Ran(d, waiting_note(self.pipeline, d), pending)

    def precheck(self, d: Deployment, run: Callable[[Deployment], object] | None = None
                 ) -> Deployment:
        """A scheduled deployment's checklist now, as a dry run (bot/scheduler.precheck)."""
        from bot.scheduler import precheck

        return precheck(self.pipeline, d, run=run)

    # -- what is going on -------------------------------------------------------------------------

    def status(self, *, running: bool = True) -> StatusView:
        """Locks, deployments in progress, what runs where, what the tracker and Slack have not
        been told: `deploybot status`, `/deploy status` and the App Home read this."""
        from bot.scheduler import waiting_note

        p = self.pipeline
        locks = tuple(LockLine(lock, p.describe_lock(lock)) for lock in self.store.locks())
        active = tuple(ActiveLine(d, waiting_note(p, d)) for d in p.active())
        # A failed rollback is not over: say so until it is repaired or a later rollout ran.
        active += tuple(ActiveLine(d, unresolved_note(d, retried))
                        for d, retried in self.store.unresolved_failures() if d.status.terminal)
        return StatusView(locks, active, self._running() if running else (),
                          tuple(p.outbox.undelivered()), self.store.now())

    def _running(self) -> tuple[RunningLine, ...]:
        lines = []
        for name in self.config.services:
            for env in self.config.environments:
                if not self.config.deployable(name, env):
                    continue
                try:
                    state = self.pipeline.backend_for(name, env).status()
                    lines.append(RunningLine(env, name, state.version, state.detail,
                                             state.running))
                except DeploybotError as exc:
                    lines.append(RunningLine(env, name, error=exc))
        return tuple(lines)

    # -- cancel ---------------------------------------------------------------------------------

    def _to_cancel(self, req: CancelRequest) -> Deployment:
        if req.deployment_id is not None:
            return self.store.deployment(req.deployment_id)
        ticket = self.pipeline.tracker.parse_ref(req.ticket or "")
        open_ = [d for d in self.pipeline.active()
                 if d.ticket_id == ticket and d.status in CANCELLABLE]
        if not open_:
            raise StateError(f"no deployment of {ticket} is waiting to be cancelled",
                             hint="a deployment that started deploying is rolled back instead")
        if len(open_) > 1:
            raise InputError(f"{ticket} has {len(open_)} deployments that can be cancelled: "
                             + ", ".join(f"#{d.id} ({d.environment})" for d in open_),
                             hint="say which one: /deploy cancel #ID")
        return open_[0]

    # -- gates ----------------------------------------------------------------------------------

    def may_decide(self, gate: Gate, who: Identify, *, approved: bool) -> Refused | None:
        """Before asking for a rejection's reason: may `who` decide `gate` this way at all?"""
        d = self.store.deployment(gate.deployment_id)
        try:
            self.pipeline.authorise(d, gate, self._actor(who, d.environment), approved=approved)
        except NotAllowed as exc:
            return Refused(exc)
        return None

    def _decide(self, req: DecideRequest, who: Identify) -> Decided:
        p = self.pipeline
        d = self.store.deployment(req.deployment_id)
        pending = p.pending_gates(d.id)
        if req.gate_id:
            pending = [g for g in pending if g.id == req.gate_id]
        if not pending:
            return Decided(d, req.approved, nothing_pending=True,
                           gates=tuple(self.store.gates(d.id)))
        actor = self._actor(who, d.environment)
        notes: list[str] = []
        already: list[Gate] = []
        for gate in pending:
            # Two break-glass gates: approving "all pending" must not count one person twice.
            if gate.kind is GateKind.BREAK_GLASS and any(
                    g.kind is GateKind.BREAK_GLASS and g.decided_by
                    and self.config.same_person(g.decided_by, actor.name)
                    for g in self.store.gates(d.id)):
                notes.append(f"gate #{gate.id}: {actor.name} gave one break-glass approval "
                             "already; the other must come from someone else")
                continue
            outcome = p.decide_gate(gate.id, decided_by=actor, approved=req.approved,
                                    reason=req.reason)
            if not outcome.decided_now:
                already.append(outcome.gate)
            if not req.approved or \
                    outcome.deployment.status is not DeploymentStatus.AWAITING_APPROVAL:
                break
        now = self.store.deployment(d.id)
        return Decided(now, req.approved, tuple(notes), tuple(already),
                       pending=tuple(p.pending_gates(d.id))
                       if now.status is DeploymentStatus.AWAITING_APPROVAL else ())


def scheduler_start(service: RequestService) -> Callable[[Deployment], Outcome]:
    """What the scheduler calls when a deployment's time came or its lock freed."""
    return lambda d: service.handle(StartRequest(d.id), SCHEDULER)

