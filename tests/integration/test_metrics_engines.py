"""/metrics reads the store with SQL of each engine's own (durations, GREATEST/MAX): the same
rows give the same metrics on SQLite and on PostgreSQL, to the byte."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from backends.stores.postgres import PostgresDatabase
from bot import metrics
from bot.store import Store
from tests.integration.store_engines import store_template  # noqa: F401 fixture
from tests.unit.test_metrics import NOW, build_history

pytestmark = pytest.mark.integration

VARYING = "deploybot_store_scrape_duration_seconds"  # wall time of the scrape itself


def metrics_text(store: Store) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.StoreCollector(store))
    text = generate_latest(registry).decode()
    return "\n".join(line for line in text.splitlines() if VARYING not in line)


@pytest.fixture
def postgres_store(postgres_server, store_template):
    name = f"metrics_{uuid.uuid4().hex[:12]}"
    store = Store(PostgresDatabase(postgres_server.create_database(name, template=store_template)),
                  clock=lambda: NOW)
    yield store
    store.close()
    postgres_server.drop_database(name)


def test_the_same_rows_give_the_same_metrics_on_both_engines(tmp_path, postgres_store):
    sqlite_store = Store(tmp_path / "deploybot.db", clock=lambda: NOW)
    try:
        lite = metrics_text(build_history(sqlite_store))
        pg = metrics_text(build_history(postgres_store))
    finally:
        sqlite_store.close()
    assert "deploybot_store_up 1.0" in lite
    assert 'deploybot_deployment_duration_seconds_sum{environment="production",kind="deploy"} ' \
           '350.0' in lite
    assert 'deploybot_gate_wait_seconds_bucket{decision="approved",kind="approval",le="60.0"} ' \
           '1.0' in lite
    assert pg == lite


def test_an_empty_postgresql_store_gives_zero_locks(postgres_store):
    text = metrics_text(postgres_store)
    assert "deploybot_store_up 1.0" in text
    assert 'deploybot_locks_held{kind="manual"} 0.0' in text
