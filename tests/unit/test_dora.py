"""DORA figures (bot/dora.py) on a constructed history whose answers are worked out by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot import dora
from bot.errors import InputError

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
SINCE = NOW - timedelta(days=7)  # 2026-11-21 12:00
H = 3600


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=timezone.utc)


def row(id_: int, service: str, status: str, finished: datetime | None, *, kind: str = "deploy",
        env: str = "production", created: datetime | None = None, reached: bool = True,
        ticket: str = "none", t_created=None, t_ready=None, t_seen=None) -> dict:
    return {"id": id_, "ticket_id": ticket, "service": service, "environment": env,
            "kind": kind, "status": status, "created_at": created or finished or NOW,
            "finished_at": finished, "reached_backend": reached, "ticket_created_at": t_created,
            "ticket_ready_at": t_ready, "ticket_first_seen_ready_at": t_seen}


HISTORY = [
    # before the window: counted nowhere
    row(1, "web", "succeeded", at(20, 12), ticket="W-0", t_created=at(19)),
    # W-1: ready (tracker) 06:00, deployed 10:00 -> 4 h; created two days before -> 48 h
    row(2, "web", "succeeded", at(22, 10), ticket="W-1", t_created=at(20, 10),
        t_ready=at(22, 6), t_seen=at(22, 9)),
    # W-2 fails verification and is rolled back; fixed at 16:00 -> restored after 6 h
    row(3, "web", "rolled_back", at(23, 10), ticket="W-2", t_created=at(22, 10),
        t_seen=at(23, 8)),
    # W-2's first successful deploy: 8 h after deploybot first saw it ready, 30 h after creation
    row(4, "web", "succeeded", at(23, 16), ticket="W-2", t_created=at(22, 10),
        t_seen=at(23, 8)),
    # blocked by the checklist: never reached the backend
    row(5, "web", "blocked", at(24), reached=False, ticket="W-3"),
    # 1 h after ready, 24 h after creation; rolled back by hand at 14:00, done 14:30
    row(6, "api", "succeeded", at(25, 12), ticket="A-1", t_created=at(24, 12),
        t_ready=at(25, 11)),
    row(7, "api", "succeeded", at(25, 14, 30), kind="rollback", created=at(25, 14)),
    # A-2 fails and nothing has fixed it yet
    row(8, "api", "failed", at(27, 12), ticket="A-2", t_created=at(26)),
    # staging, and a deployment still running
    row(9, "web", "succeeded", at(26), env="staging", ticket="W-3"),
    row(10, "web", "deploying", None, ticket="W-4"),
]


def test_production_figures_match_the_hand_computed_ones():
    fig = dora.compute(HISTORY, now=NOW, since=SINCE, environments=["production"])
    assert fig.deployments == 3  # 2, 4, 6 (7 is a manual rollback)
    assert fig.per_day == pytest.approx(3 / 7) and fig.per_week == pytest.approx(3)
    assert (fig.changes, fig.failed) == (5, 3)  # 2, 3, 4, 6, 8; failed 3, 6, 8
    assert fig.failures == {"rolled_back": 1, "rolled back by hand": 1, "failed": 1}
    assert fig.failure_rate == pytest.approx(0.6)
    assert (fig.restore.count, fig.not_restored) == (2, 1)
    assert fig.restore.median == (6 * H + 0.5 * H) / 2
    ready = fig.ready_to_deployed
    assert (ready.count, ready.median, ready.p90) == (3, 4 * H, 8 * H)
    assert (fig.ready_from_tracker, fig.ready_first_seen) == (2, 1)
    created = fig.created_to_deployed
    assert (created.count, created.median, created.p90) == (3, 30 * H, 48 * H)
    assert fig.without_ticket_times == 0


def test_filter_by_service():
    fig = dora.compute(HISTORY, now=NOW, since=SINCE, environments=["production"],
                       service="web")
    assert fig.deployments == 2 and (fig.changes, fig.failed) == (3, 1)
    assert fig.restore.median == 6 * H and fig.not_restored == 0
    assert (fig.ready_to_deployed.median, fig.ready_to_deployed.p90) == (6 * H, 8 * H)


def test_filter_by_environment_and_missing_ticket_times():
    fig = dora.compute(HISTORY, now=NOW, since=SINCE, environments=["staging"])
    assert fig.deployments == 1 and (fig.changes, fig.failed, fig.failure_rate) == (1, 0, 0.0)
    assert fig.without_ticket_times == 1 and fig.ready_to_deployed.count == 0


def test_every_environment_when_none_is_named():
    fig = dora.compute(HISTORY, now=NOW, since=SINCE)
    assert fig.deployments == 4 and fig.changes == 6


def test_an_empty_window_has_no_figures_rather_than_zeros():
    fig = dora.compute(HISTORY, now=NOW, since=NOW - timedelta(hours=1))
    assert (fig.deployments, fig.changes, fig.per_day) == (0, 0, 0)
    assert fig.failure_rate is None and fig.restore.median is None
    assert fig.ready_to_deployed.median is None and fig.ready_to_deployed.p90 is None
    data = dora.as_dict(fig)
    assert data["change_failure_rate"]["rate"] is None
    assert "n/a" in "\n".join(dora.as_lines(fig))


def test_a_single_deploy():
    fig = dora.compute([HISTORY[1]], now=NOW, since=SINCE)
    assert fig.deployments == 1 and fig.failure_rate == 0
    assert (fig.ready_to_deployed.median, fig.ready_to_deployed.p90) == (4 * H, 4 * H)
    assert fig.restore.count == 0 and fig.not_restored == 0


def test_a_late_manual_rollback_or_one_after_the_next_deploy_is_not_blamed():
    late = [row(1, "web", "succeeded", at(22)),
            row(2, "web", "succeeded", at(23, 0, 1), kind="rollback", created=at(23, 0, 1))]
    assert dora.compute(late, now=NOW, since=SINCE).failed == 0
    after_next = [row(1, "web", "succeeded", at(22)), row(2, "web", "succeeded", at(22, 1)),
                  row(3, "web", "succeeded", at(22, 2), kind="rollback", created=at(22, 2))]
    fig = dora.compute(after_next, now=NOW, since=SINCE)
    assert fig.failures == {"rolled back by hand": 1} and fig.changes == 2
    assert fig.restore.median == 0  # the rollback of #2 both failed it and restored it


def test_a_failed_rollback_is_restored_by_the_next_success_only():
    rows = [row(1, "web", "rollback_failed", at(22)),
            row(2, "web", "failed", at(22, 1), reached=False),
            row(3, "web", "succeeded", at(22, 3), kind="rollback", created=at(22, 2))]
    fig = dora.compute(rows, now=NOW, since=SINCE)
    assert fig.failures == {"rollback_failed": 1} and fig.restore.median == 3 * H


def test_the_json_form_names_every_figure():
    data = dora.as_dict(dora.compute(HISTORY, now=NOW, since=SINCE,
                                     environments=["production"]))
    assert data["window"] == {"since": "2026-11-21T12:00:00Z", "until": "2026-11-28T12:00:00Z",
                              "days": 7.0}
    assert data["deployment_frequency"]["deployments"] == 3
    assert data["lead_time"]["ready_to_deployed"] == {
        "changes": 3, "median_seconds": 4 * H, "p90_seconds": 8 * H, "ready_from_tracker": 2,
        "ready_first_seen_by_deploybot": 1}
    assert data["change_failure_rate"]["rate"] == 0.6
    assert data["time_to_restore"] == {"failures": 3, "restored": 2, "not_restored": 1,
                                       "median_seconds": 3.25 * H}
    text = "\n".join(dora.as_lines(dora.compute(HISTORY, now=NOW, since=SINCE,
                                                environments=["production"])))
    assert "median 4h, p90 8h over 3 change(s)" in text and "60% (3 of 5" in text
    assert "first seen ready by deploybot for 1" in text


@pytest.mark.parametrize("text, expected", [
    ("7d", NOW - timedelta(days=7)), ("12h", NOW - timedelta(hours=12)),
    ("2w", NOW - timedelta(weeks=2)), ("2026-11-01", datetime(2026, 11, 1, tzinfo=timezone.utc)),
    ("2026-11-01T08:00+01:00", datetime(2026, 11, 1, 7, tzinfo=timezone.utc)),
    ("2026-11-01T08:00", datetime(2026, 11, 1, 8, tzinfo=timezone.utc))])
def test_since_accepts_spans_and_iso_dates(text, expected):
    assert dora.parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["7x", "0d", "", "d", "-3d", "tomorrow", "2026-13-01",
                                  "2026-11-29", "9999999d", "999999w"])
def test_since_refuses_anything_else(text):
    with pytest.raises(InputError):
        dora.parse_since(text, NOW)


def test_the_store_keeps_first_readiness_and_knows_what_reached_the_backend():
    from bot.models import DeploymentStatus as S
    from bot.store import Store

    clock = [at(22, 9)]
    store = Store(":memory:", clock=lambda: clock[0])
    store.note_ticket_ready("W-1", created_at=at(20), ready_at=None)
    clock[0] = at(23, 9)  # sent back, ready again: the first times stay
    store.note_ticket_ready("W-1", created_at=at(21), ready_at=at(23, 8))
    shipped, _ = store.create_deployment(ticket_id="W-1", service="web", version="v2",
                                         environment="production", requested_by="alice")
    for status in (S.CHECKING, S.DEPLOYING, S.VERIFYING, S.SUCCEEDED):
        store.transition(shipped.id, status)
    blocked, _ = store.create_deployment(ticket_id="W-2", service="web", version="v3",
                                         environment="production", requested_by="alice")
    store.transition(blocked.id, S.CHECKING)
    store.transition(blocked.id, S.BLOCKED)
    store.create_deployment(ticket_id="W-1", service="web", version="v2",
                            environment="production", requested_by="alice", dry_run=True)
    first, second = store.dora_rows()  # the dry run is not there
    assert (first["id"], first["reached_backend"], first["status"]) == (shipped.id, True,
                                                                       "succeeded")
    assert (first["ticket_created_at"], first["ticket_ready_at"],
            first["ticket_first_seen_ready_at"]) == (at(20), at(23, 8), at(22, 9))
    assert (second["id"], second["reached_backend"], second["ticket_created_at"]) == (
        blocked.id, False, None)
    assert first["finished_at"] == at(23, 9)
