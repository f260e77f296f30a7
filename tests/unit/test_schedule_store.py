"""Store migration 3: a database from before schedules opens, keeps its rows and its locks."""

from __future__ import annotations

import sqlite3

import sqlite_utils

from bot import store as store_module
from bot.models import DeploymentStatus
from bot.store import SCHEMA_VERSION, Store


def test_a_version_2_database_is_migrated_forward_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(sqlite3.connect(path))
    db["meta"].create({"key": str, "value": str}, pk="key")
    for migration in store_module.MIGRATIONS[:2]:
        migration(db)
    db["meta"].insert({"key": "schema_version", "value": "2"})
    db["deployments"].insert({"id": 1, "ticket_id": "DEMO-1", "service": "web", "version": "v1",
                              "environment": "staging", "requested_by": "alice",
                              "status": "requested", "created_at": "2026-11-26T12:00:00+00:00"})
    db["locks"].insert({"scope": "env:staging", "deployment_id": None, "holder": "bob",
                        "reason": "migration", "acquired_at": "2026-11-26T12:00:00+00:00"})
    db.conn.close()

    store = Store(path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        d = store.deployment(1)
        assert d.status is DeploymentStatus.REQUESTED
        assert (d.scheduled_for, d.queued, d.break_glass) == (None, False, "")
        lock = store.lock("env:staging")
        assert lock.holder == "bob" and lock.expires_at is None  # old locks never expire
        assert store.expire_locks() == []
    finally:
        store.close()
