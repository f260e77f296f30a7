"""Leadership over the PostgreSQL store (backends/stores/pg_leader.py through
handlers/wiring.leadership_for, which connects with PostgresDatabase.dsn): one leader at a time,
handed over when the leader resigns or its session dies."""

from __future__ import annotations

import uuid

import pytest

from backends.stores.postgres import PostgresDatabase
from bot.store import Store
from handlers.wiring import leadership_for

pytestmark = pytest.mark.integration


def test_one_leader_at_a_time_and_hand_over(postgres_server):
    name = f"leader_{uuid.uuid4().hex[:10]}"
    dsn = postgres_server.create_database(name)
    stores = [Store(PostgresDatabase(dsn)) for _ in range(3)]
    electors = [leadership_for(store) for store in stores]
    try:
        assert [e.try_lead() for e in electors] == [True, False, False]
        assert electors[0].try_lead() is True  # still the leader on the next poll
        electors[0].resign()
        assert [e.try_lead() for e in electors[1:]] == [True, False]
        # the leader's session dies (the process was killed): the lock goes with it
        killed = stores[0].db.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_database d "
            "ON d.oid = l.database WHERE l.locktype = 'advisory' AND l.granted "
            "AND d.datname = ?", [name]).fetchall()
        assert killed == [(True,)]
        assert electors[2].try_lead() is True
        assert electors[1].try_lead() is False  # it finds out on its next poll
    finally:
        for elector, store in zip(electors, stores):
            elector.resign()
            store.close()
        postgres_server.drop_database(name)
