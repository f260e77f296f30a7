"""Lock TTLs with heartbeats, and the queue of deployments waiting for a lock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.models import DeploymentStatus
from fakes.schedule import START, ScheduleWorld

SCOPE = "env:staging"  # staging: lock_ttl 600 s


@pytest.fixture
def world(tmp_path):
    w = ScheduleWorld(tmp_path / "deploybot.db")
    yield w
    w.close()


def hung_deployment(world):
    """A deployment that took the lock and then stopped heartbeating (its process hangs)."""
    d = world.request(world.ticket(), target="web@v9")
    world.store.transition(d.id, DeploymentStatus.CHECKING)
    world.store.transition(d.id, DeploymentStatus.DEPLOYING)
    ok, _ = world.store.acquire_lock(SCOPE, holder="alice", reason="deploying web v9",
                                     deployment_id=d.id, ttl=600)
    assert ok
    return d


def test_an_expired_lock_is_released_and_said_so(world):
    hung = hung_deployment(world)
    world.clock.advance(minutes=11)
    d = world.pipeline.run(world.request(world.ticket()).id)
    assert d.status is DeploymentStatus.SUCCEEDED
    said = (f"lock of #{hung.id} on env:staging expired at 2026-11-26 12:10:00 UTC "
            "(no heartbeat since 2026-11-26 12:00:00 UTC), released")
    assert ("step", said) in world.reporter.events
    assert any(e["kind"] == "lock.expired" and e["detail"] == said
               for e in world.store.events(hung.id))


def test_a_heartbeat_keeps_the_lock(world):
    hung = hung_deployment(world)
    world.clock.advance(minutes=8)
    assert world.store.heartbeat(hung.id, 600) == 1
    world.clock.advance(minutes=8)
    d = world.pipeline.run(world.request(world.ticket()).id)
    assert d.status is DeploymentStatus.BLOCKED
    assert f"env:staging is held by alice since 2026-11-26 12:00 UTC (deployment #{hung.id}" \
        in d.failure


def test_manual_locks_and_locks_of_deployments_waiting_for_approval_do_not_expire(world):
    world.pipeline.lock("staging", user="bob", reason="db migration")
    world.clock.advance(days=3)
    d = world.pipeline.run(world.request(world.ticket()).id)
    assert d.status is DeploymentStatus.BLOCKED and "a manual lock" in d.failure
    world.pipeline.unlock("staging", user="bob", reason="done")

    world.config.environments["staging"].approvals_required = 1
    world.config.environments["staging"].approvers = ["bob"]
    waiting = world.pipeline.run(world.request(world.ticket()).id)
    assert waiting.status is DeploymentStatus.AWAITING_APPROVAL
    world.clock.advance(hours=2)
    assert world.store.expire_locks() == []
    assert world.store.lock(SCOPE).deployment_id == waiting.id


def test_the_running_deployment_heartbeats_between_steps(world):
    backend = world.backend
    real_deploy = backend.deploy

    def slow_deploy(version, *, ticket_id, on_step, image=None):
        for minute in (5, 10, 15, 20):
            world.clock.advance(minutes=5)
            on_step(f"still rolling out ({minute} min)")
        seen.append(world.store.lock(SCOPE))
        real_deploy(version, ticket_id=ticket_id, on_step=on_step)

    seen = []
    backend.deploy = slow_deploy
    d = world.pipeline.run(world.request(world.ticket()).id)
    assert d.status is DeploymentStatus.SUCCEEDED
    lock = seen[0]
    assert lock.deployment_id == d.id  # 20 minutes in, with a 10 minute TTL: still held
    assert lock.heartbeat_at == START + timedelta(minutes=20)
    assert lock.expires_at == START + timedelta(minutes=30)
    assert world.store.lock(SCOPE) is None  # released at the end


def test_waiting_deployments_queue_with_a_visible_position_and_start_in_turn(world):
    world.pipeline.lock("staging", user="bob", reason="db migration")
    first = world.pipeline.run(world.request(world.ticket(), queue=True).id)
    second = world.pipeline.run(world.request(world.ticket(), target="web@v3", queue=True).id)
    assert first.status is DeploymentStatus.REQUESTED and second.status is DeploymentStatus.REQUESTED
    assert world.pipeline.queue_position(first) == 1
    assert world.pipeline.queue_position(second) == 2
    assert ("step", "queued for env:staging, position 2: env:staging is held by bob since "
                    "2026-11-26 12:00 UTC (a manual lock: db migration); to lift it: "
                    "deploybot unlock staging --reason REASON") in world.reporter.events
    # Without --queue the old behaviour: blocked, with who holds the lock.
    blocked = world.pipeline.run(world.request(world.ticket()).id)
    assert blocked.status is DeploymentStatus.BLOCKED and "held by bob" in blocked.failure

    world.scheduler.tick()
    assert world.store.deployment(first.id).status is DeploymentStatus.REQUESTED  # still locked
    world.pipeline.unlock("staging", user="bob", reason="done")
    said = world.scheduler.tick()
    assert f"deployment #{first.id} left the queue for env:staging" in said
    assert world.store.deployment(first.id).status is DeploymentStatus.SUCCEEDED
    assert world.pipeline.queue_position(world.store.deployment(second.id)) == 1
    world.scheduler.tick()
    assert world.store.deployment(second.id).status is DeploymentStatus.SUCCEEDED
    assert world.backend.running == "v3"


def test_an_expired_lock_lets_the_queue_move_and_the_holder_is_told(world):
    hung = hung_deployment(world)
    queued = world.pipeline.run(world.request(world.ticket(), queue=True).id)
    assert queued.status is DeploymentStatus.REQUESTED
    world.clock.advance(minutes=10, seconds=1)
    said = world.scheduler.tick()
    assert said[0].startswith(f"lock of #{hung.id} on env:staging expired")
    assert ("alert", said[0]) in world.reporter.events
    assert world.store.deployment(queued.id).status is DeploymentStatus.SUCCEEDED


def test_queued_deployments_survive_a_restart(tmp_path):
    first = ScheduleWorld(tmp_path / "deploybot.db")
    first.pipeline.lock("staging", user="bob", reason="db migration")
    queued = first.pipeline.run(first.request(first.ticket(), queue=True).id)
    first.close()
    second = ScheduleWorld(tmp_path / "deploybot.db", first.clock)
    try:
        assert second.store.recovery_candidates() == []  # waiting is not orphaned
        second.pipeline.unlock("staging", user="bob", reason="done")
        second.scheduler.tick()
        assert second.store.deployment(queued.id).status is DeploymentStatus.SUCCEEDED
    finally:
        second.close()


def test_the_queue_waits_for_a_deployment_that_is_still_running_its_checks(world):
    queued = world.request(world.ticket(), queue=True)
    checking = world.request(world.ticket(), target="web@v3")
    world.store.transition(checking.id, DeploymentStatus.CHECKING)  # checks run, lock not yet
    assert world.scheduler.drain_queue() == []
    assert world.store.deployment(queued.id).status is DeploymentStatus.REQUESTED
