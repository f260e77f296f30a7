"""Freeze windows per environment and the break-glass override (two approvers, a reason)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bot import config as configuration
from bot.errors import ConfigError, NotAllowed
from bot.freeze import FreezeWindow, frozen
from bot.models import DeploymentStatus, GateKind, GateStatus
from fakes.schedule import CONFIG, ScheduleWorld

BERLIN = "Europe/Berlin"
WEEKEND = [FreezeWindow(start="fri 16:00", end="mon 08:00", reason="weekend"),
           FreezeWindow(date="2026-12-25")]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.fixture
def world(tmp_path):
    w = ScheduleWorld(tmp_path / "deploybot.db")
    yield w
    w.close()


@pytest.mark.parametrize("at, inside", [
    (utc(2026, 11, 27, 14, 59), False),  # Fri 15:59 Berlin
    (utc(2026, 11, 27, 15, 0), True),  # Fri 16:00 Berlin
    (utc(2026, 11, 29, 12, 0), True),  # Sunday
    (utc(2026, 11, 30, 6, 59), True),  # Mon 07:59 Berlin
    (utc(2026, 11, 30, 7, 0), False),  # Mon 08:00 Berlin
    (utc(2026, 12, 25, 10, 0), True),  # Christmas (a Friday morning)
    (utc(2026, 12, 24, 22, 59), False),  # 23:59 on the 24th in Berlin
    (utc(2026, 12, 24, 23, 0), True),  # midnight in Berlin: the 25th
])
def test_freeze_windows_follow_the_configured_time_zone(at, inside):
    assert (frozen(WEEKEND, at, BERLIN) is not None) is inside


def test_the_reason_says_which_window_and_when_it_ends():
    why = frozen(WEEKEND, utc(2026, 11, 28, 9, 0), BERLIN)
    assert why == ("freeze window fri 16:00 to mon 08:00: weekend "
                   "(until Mon 2026-11-30 08:00 Europe/Berlin)")


def test_bad_freeze_settings_are_refused_with_their_path():
    data = {**CONFIG, "environments": {"production": {"freeze": [
        {"start": "fri 16:00"}, {"start": "friday 25:00", "end": "mon 08:00"},
        {"date": "2026-12-25", "start": "fri 16:00", "end": "mon 08:00"}, {"when": "xmas"},
        {"start": "fri 16:00", "end": "friday 16:00"}]}}}
    with pytest.raises(ConfigError) as err:
        configuration.parse(data)
    text = str(err.value)
    assert "environments.production.freeze.0: a weekly window needs both start and end" in text
    assert "environments.production.freeze.1.start: 'friday 25:00': no such time of day" in text
    assert "environments.production.freeze.2: give either start/end" in text
    assert "environments.production.freeze.3.when: unknown setting" in text
    assert "environments.production.freeze.4: start and end are the same time" in text


def test_a_deploy_inside_a_freeze_is_refused_and_nothing_is_stored(world):
    world.clock.set(utc(2026, 11, 27, 16, 0))
    tid = world.ticket()
    with pytest.raises(NotAllowed, match="production is frozen at Fri 2026-11-27 17:00"):
        world.request(tid, env="production")
    assert world.store.deployments() == []
    # staging has no freeze; a dry run changes nothing and may run
    assert world.request(tid, env="staging").status is DeploymentStatus.REQUESTED
    assert world.request(tid, env="production", dry_run=True).dry_run


def test_scheduling_into_a_freeze_is_refused_at_request_time(world):
    with pytest.raises(NotAllowed, match="frozen at Sat 2026-11-28 10:00"):
        world.request(world.ticket(), env="production", at="2026-11-28T10:00")


def test_a_freeze_that_begins_before_a_scheduled_deploy_runs_blocks_it(world):
    d = world.request(world.ticket(), env="production", at="2026-11-27T15:00")
    world.config.environments["production"].freeze.insert(
        0, FreezeWindow(date="2026-11-27", reason="incident review"))
    world.clock.set(utc(2026, 11, 27, 14, 0))
    world.scheduler.run_due()
    d = world.store.deployment(d.id)
    assert d.status is DeploymentStatus.BLOCKED
    assert "Freeze window: production is in a freeze window 2026-11-27 (all day): incident " \
           "review" in d.failure
    assert world.backend.running == "v1"
    assert world.store.lock("env:production") is None


def test_break_glass_needs_two_different_authorised_approvers_and_then_deploys(world):
    world.clock.set(utc(2026, 11, 28, 9, 0))  # Saturday
    d = world.request(world.ticket(), env="production", user="erin",
                      break_glass="payments are down, hotfix")
    d = world.pipeline.run(d.id)
    assert d.status is DeploymentStatus.AWAITING_APPROVAL
    gates = world.store.gates(d.id)
    assert [g.kind for g in gates] == [GateKind.BREAK_GLASS, GateKind.BREAK_GLASS]
    assert "payments are down, hotfix" in gates[0].prompt
    first, second = gates

    with pytest.raises(NotAllowed, match="requested this deployment"):
        world.pipeline.decide_gate(first.id, decided_by="erin", approved=True)
    with pytest.raises(NotAllowed, match="may not approve"):
        world.pipeline.decide_gate(first.id, decided_by="mallory", approved=True)
    world.pipeline.decide_gate(first.id, decided_by="bob", approved=True)
    with pytest.raises(NotAllowed, match="bob already approved"):
        world.pipeline.decide_gate(second.id, decided_by="bob", approved=True)
    assert world.store.deployment(d.id).status is DeploymentStatus.AWAITING_APPROVAL
    outcome = world.pipeline.decide_gate(second.id, decided_by="dana", approved=True)
    assert outcome.deployment.status is DeploymentStatus.SUCCEEDED
    assert world.backend.running == "v2"
    assert [g.decided_by for g in world.store.gates(d.id)] == ["bob", "dana"]
    assert all(g.status is GateStatus.APPROVED for g in world.store.gates(d.id))
    assert any("break-glass: payments are down, hotfix" in e["detail"]
               for e in world.store.events(d.id))


def test_break_glass_is_refused_where_two_approvers_are_not_configured(world):
    world.config.environments["production"].approvers = ["bob"]
    world.clock.set(utc(2026, 11, 28, 9, 0))
    with pytest.raises(NotAllowed, match="break-glass needs two authorised approvers"):
        world.request(world.ticket(), env="production", break_glass="hotfix")


def test_outside_a_freeze_break_glass_asks_for_nothing_extra(world):
    d = world.request(world.ticket(), env="production", break_glass="just in case")
    d = world.pipeline.run(d.id)
    assert d.status is DeploymentStatus.SUCCEEDED
    assert world.store.gates(d.id) == []


@pytest.mark.parametrize("text", ["25:00", "12:60"])
def test_an_impossible_time_of_day_says_which_are_possible(text):
    from bot.errors import InputError
    from bot.freeze import parse_when

    with pytest.raises(InputError) as err:
        parse_when(text, now=datetime(2026, 11, 29, 4, tzinfo=timezone.utc), tz="UTC")
    assert err.value.message == f"{text!r} is not a time of day"
    assert err.value.hint.startswith("hours 00-23, minutes 00-59: say HH:MM")
