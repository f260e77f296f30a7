"""Scheduled deployments: `at 22:00`, the checklist now and at the time, restarts, missed jobs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.errors import InputError
from bot.models import DeploymentStatus
from bot.scheduler import precheck
from fakes.schedule import START, ManualClock, ScheduleWorld


@pytest.fixture
def world(tmp_path):
    w = ScheduleWorld(tmp_path / "deploybot.db")
    yield w
    w.close()


def test_at_22_means_the_next_22_in_the_configured_zone(world):
    d = world.request(world.ticket(), at="22:00")
    # 12:00 UTC is 13:00 in Berlin; the next 22:00 Berlin is 21:00 UTC the same day.
    assert d.scheduled_for == datetime(2026, 11, 26, 21, 0, tzinfo=timezone.utc)
    assert d.status is DeploymentStatus.REQUESTED
    world.clock.advance(hours=10)  # 22:00 UTC = 23:00 Berlin: "22:00" is tomorrow's now
    later = world.request(world.ticket(), at="22:00")
    assert later.scheduled_for == datetime(2026, 11, 27, 21, 0, tzinfo=timezone.utc)


def test_a_time_in_the_past_is_refused_and_nothing_is_stored(world):
    tid = world.ticket()
    with pytest.raises(InputError, match="in the past"):
        world.request(tid, at="2026-11-26T09:00")
    with pytest.raises(InputError, match="not a time"):
        world.request(tid, at="tonight")
    assert world.store.deployments() == []


def test_scheduled_deploy_is_checked_now_and_runs_at_its_time_with_the_real_pipeline(world):
    d = world.request(world.ticket(), at="2026-11-26T20:00")
    dry = precheck(world.pipeline, d)
    assert dry.dry_run and dry.status is DeploymentStatus.SUCCEEDED
    assert any("checklist now" in e["detail"] and "passed" in e["detail"]
               for e in world.store.events(d.id))
    # Running it early does nothing: it waits for its time.
    assert world.pipeline.run(d.id).status is DeploymentStatus.REQUESTED
    world.scheduler.run_due()
    assert world.store.deployment(d.id).status is DeploymentStatus.REQUESTED
    assert world.backend.running == "v1"

    world.clock.set(datetime(2026, 11, 26, 19, 0, 5, tzinfo=timezone.utc))  # 20:00:05 Berlin
    said = world.scheduler.run_due()
    assert said and f"#{d.id} started" in said[0]
    d = world.store.deployment(d.id)
    assert d.status is DeploymentStatus.SUCCEEDED
    assert world.backend.running == "v2"
    assert {c.name for c in world.store.checks(d.id)} >= {"cq_approval", "qa_pass", "lock"}


def test_checklist_failing_at_execution_time_blocks_the_scheduled_deploy(world):
    tid = world.ticket()
    d = world.request(tid, at="20:00")
    world.tracker.transition(tid, "In Review")
    world.clock.advance(hours=7)
    world.scheduler.run_due()
    d = world.store.deployment(d.id)
    assert d.status is DeploymentStatus.BLOCKED
    assert "In Review" in d.failure
    assert world.backend.running == "v1"


def test_a_scheduled_deploy_can_be_cancelled_before_its_time(world):
    d = world.request(world.ticket(), at="20:00")
    world.pipeline.cancel(d.id, user="alice", reason="not tonight")
    world.clock.advance(hours=8)
    world.scheduler.run_due()
    assert world.store.deployment(d.id).status is DeploymentStatus.CANCELLED
    assert world.backend.running == "v1"


def test_a_restart_keeps_scheduled_jobs_and_runs_them(tmp_path):
    clock = ManualClock()
    first = ScheduleWorld(tmp_path / "deploybot.db", clock)
    d = first.request(first.ticket(), at="20:00")
    first.scheduler.start()
    assert f"deploy-{d.id}" in first.scheduler.jobs()
    first.close()

    second = ScheduleWorld(tmp_path / "deploybot.db", clock)
    second.backend = first.backend
    # A new process must not take the waiting row for an orphan of the old one.
    assert second.store.recovery_candidates() == []
    said = second.scheduler.start()
    try:
        assert f"deploy-{d.id}" in second.scheduler.jobs()
        assert any(f"#{d.id} scheduled for Thu 2026-11-26 20:00 Europe/Berlin" in s for s in said)
        clock.advance(hours=7, minutes=1)
        second.scheduler.tick()
        assert second.store.deployment(d.id).status is DeploymentStatus.SUCCEEDED
        assert first.backend.running == "v2"
    finally:
        second.close()


def test_a_job_missed_while_down_runs_within_the_grace_period(tmp_path):
    clock = ManualClock()
    first = ScheduleWorld(tmp_path / "deploybot.db", clock)
    d = first.request(first.ticket(), at="20:00")
    first.close()
    clock.set(datetime(2026, 11, 26, 19, 10, tzinfo=timezone.utc))  # 10 min late, grace 15
    second = ScheduleWorld(tmp_path / "deploybot.db", clock)
    try:
        second.scheduler.start()
        assert second.store.deployment(d.id).status is DeploymentStatus.SUCCEEDED
    finally:
        second.close()


def test_a_job_missed_beyond_the_grace_period_is_marked_missed_and_said_so(tmp_path):
    clock = ManualClock()
    first = ScheduleWorld(tmp_path / "deploybot.db", clock)
    d = first.request(first.ticket(), at="20:00")
    first.close()
    clock.set(datetime(2026, 11, 27, 7, 0, tzinfo=timezone.utc))
    second = ScheduleWorld(tmp_path / "deploybot.db", clock)
    try:
        said = second.scheduler.start()
        d = second.store.deployment(d.id)
        assert d.status is DeploymentStatus.FAILED
        assert d.failure.startswith("missed: scheduled for Thu 2026-11-26 20:00 Europe/Berlin")
        assert any("missed" in s for s in said)
        assert ("alert", f"deployment #{d.id} {d.failure}") in second.reporter.events
        assert second.backend.running == "v1"
    finally:
        second.close()


@pytest.mark.realtime
def test_apscheduler_fires_a_scheduled_deploy_in_real_time(tmp_path):
    """The real BackgroundScheduler, real clock: a job one second ahead runs by itself."""
    from bot.clock import SystemClock

    class RealClock(SystemClock):
        def sleep(self, seconds: float) -> None:  # verification waits stay short
            pass

    world = ScheduleWorld(tmp_path / "deploybot.db", RealClock())
    try:
        at = (datetime.now(timezone.utc) + timedelta(seconds=1.5)).isoformat()
        d = world.request(world.ticket(), at=at)
        world.scheduler.start()
        world.scheduler.add(d)
        import time
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and \
                not world.store.deployment(d.id).status.terminal:
            time.sleep(0.1)
        assert world.store.deployment(d.id).status is DeploymentStatus.SUCCEEDED
    finally:
        world.close()


def test_health_summary_lists_every_service_per_environment(world):
    world.pipeline.lock("production", user="bob", reason="db migration")
    posted = []
    world.scheduler.summary = posted.append
    text = world.scheduler.post_health_summary()
    assert posted == [text]
    assert "staging:\n  web: ok v1 running" in text
    assert "production:\n  web: ok v1 running\n  locked: env:production is held by bob" in text
    assert "staging:\n  web: ok v1 running\nproduction" in text
    assert START.strftime("%Y-%m-%d") in text


def test_two_schedulers_start_a_due_deployment_once(tmp_path):
    """`deploybot run` and `deploybot scheduler` may both be up: one wins, the other steps back."""
    clock = ManualClock()
    one = ScheduleWorld(tmp_path / "deploybot.db", clock)
    two = ScheduleWorld(tmp_path / "deploybot.db", clock)
    two.backend = one.backend
    try:
        d = one.request(one.ticket(), at="20:00")
        clock.advance(hours=7, minutes=1)
        stale = one.store.deployment(d.id)  # `one` read it as requested ...
        two.scheduler.tick()  # ... and `two` started (and finished) it meanwhile
        assert one.pipeline.checklist.run(stale).status is DeploymentStatus.SUCCEEDED
        assert one.store.deployment(d.id).failure == ""
        assert one.backend.calls.count("deploy v2") == 1
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("start", [datetime(2019, 3, 1, 12, tzinfo=timezone.utc),
                                   datetime(2041, 7, 4, 12, tzinfo=timezone.utc)])
def test_the_alarm_is_set_from_the_injected_clock_whatever_todays_date(tmp_path, start):
    """APScheduler reads the system clock; it is only told how long to wait, never "when"."""
    clock = ManualClock(start)
    world = ScheduleWorld(tmp_path / "deploybot.db", clock)
    try:
        d = world.request(world.ticket(), at=(start + timedelta(hours=3)).isoformat())
        before = datetime.now(timezone.utc)
        world.scheduler.start()
        job = world.scheduler.aps.get_job(f"deploy-{d.id}")
        assert job is not None
        wait = (job.next_run_time - before).total_seconds()
        assert 3 * 3600 - 60 < wait < 3 * 3600 + 60
        assert world.store.deployment(d.id).status is DeploymentStatus.REQUESTED
    finally:
        world.close()


def test_an_alarm_that_rings_after_the_grace_period_marks_the_deployment_missed(world):
    d = world.request(world.ticket(), at="20:00")
    world.clock.advance(hours=9)  # the machine slept through it: 21:00 UTC, an hour late
    world.scheduler.execute(d.id)
    d = world.store.deployment(d.id)
    assert d.status is DeploymentStatus.FAILED and d.failure.startswith("missed:")
    assert world.backend.running == "v1"
