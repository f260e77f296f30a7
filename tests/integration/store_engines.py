"""The store on each engine for the contract tests: `engine_store` is parametrized over SQLite (a
file in tmp_path) and PostgreSQL (a fresh database per test, copied from a migrated template)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from backends.stores.postgres import PostgresDatabase
from bot.store import Store
from fakes.schedule import ManualClock

TEMPLATE = "deploybot_store_template"


@dataclass
class EngineStore:
    """One database, and as many Stores on it as a test wants (each its own connection)."""

    engine: str
    opener: Callable[[], Store]
    clock: ManualClock = field(default_factory=ManualClock)
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        store = self.opener()
        store.now = self.clock.now
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(scope="session")
def store_template(postgres_server):
    """A PostgreSQL database with the store's whole schema: CREATE DATABASE ... TEMPLATE copies
    it in a fraction of the time the migrations take."""
    # its own name per module that imports this fixture (each import is a fixture of its own)
    name = f"{TEMPLATE}_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    Store(PostgresDatabase(postgres_server.dsn(name))).close()  # no connection may stay
    yield name
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_store(request, tmp_path: Path):
    """An EngineStore; `.open()` gives a Store on the test's own database (its clock: `.clock`)."""
    if request.param == "sqlite":
        path = tmp_path / "deploybot.db"
        world = EngineStore("sqlite", lambda: Store(path))
        yield world
        world.close_all()
        return
    server = request.getfixturevalue("postgres_server")
    template = request.getfixturevalue("store_template")
    name = f"store_{uuid.uuid4().hex[:12]}"
    dsn = server.create_database(name, template=template)
    world = EngineStore("postgresql", lambda: Store(PostgresDatabase(dsn)))
    yield world
    world.close_all()
    server.drop_database(name)
