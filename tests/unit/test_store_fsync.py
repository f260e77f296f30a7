"""Progress notes (check results, audit events) skip their own fsync; state changes keep theirs
and make the notes before them durable too (bot/sqldb.py SqliteDatabase.begin_relaxed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.models import CheckResult, CheckStatus, DeploymentStatus
from bot.store import Store

FULL, NORMAL = 2, 1


class SyncSpy:
    """The connection's synchronous setting at every COMMIT the store runs."""

    def __init__(self, store: Store) -> None:
        self.seen: list[int] = []
        db = store.db
        commit = db.commit

        def spying_commit() -> None:
            self.seen.append(db.conn.execute("PRAGMA synchronous").fetchone()[0])
            commit()

        db.commit = spying_commit


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(str(tmp_path / "deploybot.db"))
    yield s
    s.close()


def _deployment(store: Store):
    d, _ = store.create_deployment(ticket_id="DEMO-1", service="web", version="v2",
                                   environment="staging", requested_by="alice")
    return d


def test_check_results_and_events_commit_without_fsync_then_the_setting_is_full_again(
        store: Store, tmp_path: Path) -> None:
    d = _deployment(store)
    spy = SyncSpy(store)
    store.save_check(CheckResult(deployment_id=d.id, name="qa", title="QA PASS", position=1,
                                 status=CheckStatus.PASSED, reason="by bob"))
    store.record_event(d.id, "deploybot", "step", "starting web")
    store.heartbeat(d.id, 60)
    assert spy.seen == [NORMAL, NORMAL, NORMAL]
    assert store.db.conn.execute("PRAGMA synchronous").fetchone()[0] == FULL
    # committed all the same: another connection reads them
    other = sqlite3.connect(tmp_path / "deploybot.db")
    assert other.execute("SELECT count(*) FROM checks").fetchone()[0] == 1
    assert other.execute("SELECT count(*) FROM events WHERE kind = 'step'").fetchone()[0] == 1
    other.close()


def test_state_changes_keep_their_fsync(store: Store) -> None:
    d = _deployment(store)
    spy = SyncSpy(store)
    store.transition(d.id, DeploymentStatus.CHECKING)
    store.acquire_lock("env:staging", holder=f"deployment:{d.id}", reason="deploy")
    assert spy.seen and set(spy.seen) == {FULL}


def test_a_relaxed_transaction_that_fails_leaves_the_setting_full(store: Store) -> None:
    d = _deployment(store)
    with pytest.raises(RuntimeError):
        with store.transaction(relaxed=True):
            store.record_event(d.id, "deploybot", "step", "never kept")
            raise RuntimeError("boom")
    assert store.db.conn.execute("PRAGMA synchronous").fetchone()[0] == FULL
    assert not [e for e in store.events(d.id) if e["detail"] == "never kept"]
