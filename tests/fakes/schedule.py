"""A controllable clock and a pipeline world for the scheduling tests (schedules, freezes, locks)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from backends.trackers.local import LocalTracker
from bot import config as configuration
from bot.pipeline import Pipeline
from bot.scheduler import DeployScheduler
from bot.store import Store
from fakes.core import FakeBackend, FakeProbe, RecordingReporter, ScriptedApprover

# Thursday 26 November 2026, 12:00 UTC.
START = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


class ManualClock:
    """Time moves when a test says so (or when the pipeline sleeps in a bounded wait)."""

    def __init__(self, at: datetime = START) -> None:
        self.at = at
        self.t = 0.0

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.advance(seconds=seconds)

    def monotonic(self) -> float:
        return self.t

    def advance(self, **delta: float) -> datetime:
        step = timedelta(**delta)
        self.at += step
        self.t += step.total_seconds()
        return self.at

    def set(self, at: datetime) -> None:
        self.advance(seconds=(at - self.at).total_seconds())


CONFIG = {
    "timezone": "Europe/Berlin",
    "tracker": {"kind": "local", "rules": {
        "cq_approval": {"pattern": r"(?im)^\s*CQ\s*approved\b", "authors": ["bob", "dana"]},
        "qa_pass": {"pattern": r"(?im)^\s*QA\s*PASS\b", "authors": ["carol"]},
    }},
    "environments": {
        "staging": {"lock_ttl": 600},
        "production": {"production": True, "approvers": ["bob", "dana", "erin"],
                       "freeze": [{"start": "fri 16:00", "end": "mon 08:00",
                                   "reason": "weekend"},
                                  {"date": "2026-12-25", "reason": "Christmas"}]},
    },
    "services": {"web": {"image": "demo-web",
                         "health": {"url": "http://127.0.0.1:9/health"},
                         "verify": {"timeout": 2, "interval": 1}}},
    # each person's account on the (local) tracker is their login
    "people": {n: {"tracker": n} for n in ("alice", "bob", "carol", "dana", "erin")},
}


class ScheduleWorld:
    def __init__(self, db_path, clock: ManualClock | None = None, overrides=None) -> None:
        self.db_path = db_path
        self.clock = clock or ManualClock()
        self.config = configuration.parse({**CONFIG, **(overrides or {})})
        self.backend = FakeBackend(running="v1")
        self.probe = FakeProbe(self.backend)
        self.reporter = RecordingReporter()
        self.open()

    def open(self) -> None:
        """(Re)open the store and build a pipeline and scheduler on it, like a process start."""
        self.store = Store(self.db_path, clock=self.clock.now)
        self.tracker = LocalTracker(self.store)
        self.approver = ScriptedApprover()
        self.pipeline = Pipeline(config=self.config, store=self.store, tracker=self.tracker,
                                 backend_for=lambda s, e: self.backend, reporter=self.reporter,
                                 approver=self.approver, probe=self.probe, clock=self.clock)
        self.scheduler = DeployScheduler(self.pipeline, tick_seconds=3600)

    def close(self) -> None:
        self.scheduler.shutdown()
        self.store.close()

    def ticket(self) -> str:
        tid = self.tracker.create_ticket("Ship it", status="Ready for Production")
        self.tracker.add_comment(tid, "CQ approved", author="bob")
        self.tracker.add_comment(tid, "QA PASS", author="carol")
        return tid

    def request(self, tid: str, target: str = "web@v2", env: str = "staging",
                user: str = "alice", **kw):
        return self.pipeline.request_deploy(tid, requested_by=user, target=target,
                                            environment=env, **kw)
