"""Time-driven work: scheduled deployments, the lock queue, lock heartbeats, health summaries.

The store is the truth: a scheduled deployment is a `requested` row with `scheduled_for`, a
queued one a `requested` row with `queued`. APScheduler (3.x, in memory) only wakes us up: at
start every stored schedule gets its job back, and a periodic tick re-reads the store, so rows
written by another process (`deploybot deploy … --at`) are found too.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

from bot import freeze as freezing
from bot import logcontext
from bot.errors import StateError
from bot.models import Deployment, DeploymentStatus
from bot.store import Store

log = logging.getLogger("deploybot.scheduler")


def precheck(pipeline, d: Deployment,
             run: Callable[[Deployment], object] | None = None) -> Deployment:
    """The checklist at request time for a scheduled deployment: a dry run of the same request.

    The dry run is a deployment row of its own (so its checklist is kept and shown); the
    scheduled row's audit trail says how it went. `run` lets a front end open its thread first.
    """
    dry, _ = pipeline.store.create_deployment(
        ticket_id=d.ticket_id, service=d.service, version=d.version, environment=d.environment,
        requested_by=d.requested_by, dry_run=True, method=d.method, lock_scope=d.lock_scope,
        request_key=f"precheck:{d.id}")
    if run is not None:
        run(dry)
    else:
        pipeline.run(dry.id)
    dry = pipeline.store.deployment(dry.id)
    when = freezing.local(d.scheduled_for, pipeline.config.timezone) if d.scheduled_for else "now"
    outcome = ("passed" if dry.status is DeploymentStatus.SUCCEEDED
               else f"{dry.status.value}: {dry.failure}")
    pipeline.store.record_event(d.id, "deploybot", "precheck",
                                f"checklist now (dry run #{dry.id}) {outcome}; "
                                f"it runs again at {when}")
    return dry


class DeployScheduler:
    """Starts due deployments, drains lock queues, releases expired locks, posts health."""

    def __init__(self, pipeline, *, start: Callable[[Deployment], object] | None = None,
                 tick_seconds: float = 5.0,
                 summary: Callable[[str], None] | None = None) -> None:
        self.pipeline = pipeline
        self.store: Store = pipeline.store
        self.config = pipeline.config
        self.clock = pipeline.clock
        if start is None:  # as every front end: through the request service
            from bot.service import RequestService, scheduler_start

            start = scheduler_start(RequestService(pipeline))
        self.start_deployment = start
        self.summary = summary
        self.tick_seconds = tick_seconds
        self.grace = timedelta(minutes=self.config.schedule_grace_minutes)
        # APScheduler is only an alarm clock: it never decides whether a job is late (no misfire
        # grace of its own); execute() judges that with the injected clock. Imported here: a
        # deployment's Heartbeat and `status` use this module without it (start-up, issue 13).
        from apscheduler.schedulers.background import BackgroundScheduler

        self.aps = BackgroundScheduler(timezone=timezone.utc, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self._busy: set[int] = set()
        self._busy_lock = threading.Lock()
        # Several replicas: only the leader does the periodic work (bot/leadership.py).
        self.is_leader: Callable[[], bool] = lambda: True
        self._housekept: datetime | None = None

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> list[str]:
        """Re-register every stored schedule (missed ones run within the grace or are marked
        missed), then start the periodic jobs. Returns what happened, for the log.
        Interrupted deployments are recovered first: before anything else deploys. A replica
        that is not the leader only starts its alarm clock: the leader does the rest."""
        from apscheduler.triggers.interval import IntervalTrigger

        said = self.recover() + self.reregister() if self.is_leader() else []
        self.aps.add_job(self.tick, IntervalTrigger(seconds=self.tick_seconds), id="tick",
                         replace_existing=True)
        if self.config.health_summary:
            self.aps.add_job(self.post_health_summary,
                             IntervalTrigger(minutes=self.config.health_summary.every_minutes),
                             id="health-summary", replace_existing=True)
        self.aps.start()
        return said

    def shutdown(self) -> None:
        if self.aps.running:
            log.info("stopping the scheduler")
            for line in logcontext.waiting_for(self.store):
                log.info("%s", line)
            self.aps.shutdown(wait=True)
            log.info("the scheduler stopped")

    @property
    def running(self) -> bool:
        """Started and not shut down (readiness)."""
        return bool(self.aps.running)

    def jobs(self) -> list[str]:
        return sorted(j.id for j in self.aps.get_jobs())

    # -- scheduled deployments ------------------------------------------------------------------

    def add(self, d: Deployment) -> None:
        """A job that starts `d` at its time (the tick would find it too, a little later).

        "When" comes from the injected clock; APScheduler, which reads the system clock, is
        only told how long to wait from now, so the two cannot disagree about the date.
        """
        from apscheduler.triggers.date import DateTrigger

        if d.scheduled_for is None:
            return
        delay = max(0.0, (d.scheduled_for - self.clock.now()).total_seconds())
        wake = datetime.now(timezone.utc) + timedelta(seconds=delay)
        self.aps.add_job(self.execute, DateTrigger(run_date=wake), args=[d.id],
                         id=f"deploy-{d.id}", replace_existing=True)

    def reregister(self) -> list[str]:
        said = []
        now = self.clock.now()
        for d in self.store.scheduled():
            if d.scheduled_for > now:
                self.add(d)
                said.append(f"deployment #{d.id} scheduled for "
                            f"{freezing.local(d.scheduled_for, self.config.timezone)}")
        said += self.run_due()
        return said

    def run_due(self) -> list[str]:
        """Start every scheduled deployment whose time has come; mark missed ones."""
        said = []
        now = self.clock.now()
        for d in self.store.scheduled():
            if d.scheduled_for > now or d.queued:
                continue  # a queued one waits for its lock: drain_queue starts it
            if now - d.scheduled_for > self.grace:
                said.append(self._missed(d, now))
                continue
            self.execute(d.id)
            said.append(f"deployment #{d.id} started (scheduled for "
                        f"{freezing.local(d.scheduled_for, self.config.timezone)})")
        return said

    def _missed(self, d: Deployment, now: datetime) -> str:
        tz = self.config.timezone
        text = (f"missed: scheduled for {freezing.local(d.scheduled_for, tz)} but deploybot was "
                f"not running until {freezing.local(now, tz)} (more than "
                f"{self.grace.total_seconds() / 60:.0f} min late); nothing was deployed, "
                "request it again")
        try:
            d = self.store.transition(d.id, DeploymentStatus.FAILED, failure=text, detail=text)
        except StateError:
            return f"deployment #{d.id}: {self.store.deployment(d.id).status.value}"
        self.pipeline.report.alert(d, f"deployment #{d.id} {text}")
        self.pipeline.report.finished(d, "")
        return f"deployment #{d.id} {text}"

    def execute(self, deployment_id: int) -> None:
        """Run one waiting deployment, once, however many jobs and ticks ask for it."""
        with self._busy_lock:
            if deployment_id in self._busy:
                return
            self._busy.add(deployment_id)
        try:
            if not self.is_leader():
                return  # the leader's tick starts it
            d = self.store.deployment(deployment_id)
            if d.status is not DeploymentStatus.REQUESTED:
                return
            now = self.clock.now()
            if d.scheduled_for and d.scheduled_for > now:
                return  # an early wake-up (clock skew); the tick tries again
            if d.scheduled_for and not d.queued and now - d.scheduled_for > self.grace:
                self._missed(d, now)  # a late wake-up (the machine slept): too late to run
                return
            if self.store.adopt(d.id, expect=DeploymentStatus.REQUESTED):  # this process drives it
                self.start_deployment(d)
        except Exception:
            log.exception("scheduled start of #%s failed", deployment_id)
        finally:
            with self._busy_lock:
                self._busy.discard(deployment_id)

    # -- interrupted deployments ------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Recover orphans and retry unresolved ones (the engine may be back): bot/recovery.py."""
        from bot.recovery import recover

        return [f"deployment #{d.id} recovered: {d.status.value}"
                + (f" ({d.failure})" if d.failure else "")
                for d in recover(self.pipeline)]

    # -- the lock queue ---------------------------------------------------------------------------

    def release_expired_locks(self) -> list[str]:
        said = []
        for lock, text in self.store.expire_locks():
            said.append(text)
            if lock.deployment_id:
                holder = self.store.deployment(lock.deployment_id)
                self.pipeline.report.alert(holder, text)
            else:
                log.warning("%s", text)
        return said

    def drain_queue(self) -> list[str]:
        """Start the first waiting deployment of every scope whose lock is free."""
        said = []
        now = self.clock.now()
        first: dict[str, Deployment] = {}
        for d in self.store.queue():
            if d.scheduled_for and d.scheduled_for > now:
                continue
            first.setdefault(d.lock_scope, d)
        # A deployment still running its checks takes the lock at their end: wait for it.
        checking = {c.lock_scope for c in self.store.deployments(
            statuses={DeploymentStatus.CHECKING}, limit=1000)}
        for scope, d in first.items():
            if self.store.lock(scope) is None and scope not in checking:
                self.execute(d.id)
                said.append(f"deployment #{d.id} left the queue for {scope}")
        return said

    def deliver_outbox(self) -> list[str]:
        """What the tracker and Slack have not been told yet (bot/outbox.py), and the alert
        for what has waited too long."""
        done = self.pipeline.outbox.deliver()
        return done.said + self.pipeline.outbox.check_stuck()

    def tick(self) -> list[str]:
        """The periodic job: interrupted deployments, expired locks, due schedules, queues,
        the outbox, long-dead replicas. Never raises. Only the leader's does anything."""
        said: list[str] = []
        if not self.is_leader():
            return said
        # Deployments first: a slow tracker must not hold back a recovery or a scheduled start.
        for step in (self.recover, self.release_expired_locks, self.run_due, self.drain_queue,
                     self.deliver_outbox, self.housekeeping):
            try:
                said += step()
            except Exception:
                log.exception("scheduler step %s failed", step.__name__)
        return said

    HOUSEKEEPING_EVERY = timedelta(hours=1)

    def housekeeping(self) -> list[str]:
        """Rows of long-dead replicas go: hourly, not with every tick."""
        now = self.clock.now()
        if self._housekept is None or now - self._housekept >= self.HOUSEKEEPING_EVERY:
            self._housekept = now
            self.store.forget_stale_replicas()
        return []

    # -- health summary ---------------------------------------------------------------------------

    def health_summary(self) -> str:
        from bot.service import RequestService

        view = RequestService(self.pipeline).status()  # what `status` shows, by environment
        lines = [f"Health summary ({freezing.local(self.clock.now(), self.config.timezone)})"]
        for env in self.config.environments:
            lines.append(f"{env}:")
            for r in (r for r in view.running if r.environment == env):
                if r.error is not None:
                    lines.append(f"  {r.service}: ? {r.error.message}")
                else:
                    mark = "ok" if r.running else "DOWN"
                    lines.append(f"  {r.service}: {mark} {r.version or '-'} {r.detail}".rstrip())
            for line in view.locks:
                scope = line.lock.scope
                if scope == f"env:{env}" or scope.startswith(f"service:{env}:"):
                    lines.append(f"  locked: {line.description}")
        return "\n".join(lines)

    def post_health_summary(self) -> str:
        if not self.is_leader():
            return ""  # one summary per period, from the leader
        text = self.health_summary()
        post = self.summary or getattr(self.pipeline.reporter, "summary", None)
        if post is None:
            log.info("%s", text)
        else:
            try:
                post(text)
            except Exception:
                log.exception("posting the health summary failed")
        return text

    # -- foreground (`deploybot scheduler`) ---------------------------------------------------------

    def run_forever(self, stop: threading.Event, on_line: Callable[[str], None] = print) -> None:
        for line in self.start():
            on_line(line)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            self.shutdown()


def waiting_note(pipeline, d: Deployment) -> str:
    """What a waiting deployment waits for, for `status` lines: its time or its queue turn."""
    if d.status is not DeploymentStatus.REQUESTED:
        return ""
    notes = []
    if d.scheduled_for and d.scheduled_for > pipeline.clock.now():
        notes.append(f"scheduled for {freezing.local(d.scheduled_for, pipeline.config.timezone)}")
    position = pipeline.queue_position(d)
    if position is not None:
        notes.append(f"queued for {d.lock_scope}, position {position}")
    return "; ".join(notes)
