"""`deploybot db copy` from SQLite into the real test PostgreSQL, and the local tracker on
PostgreSQL (`deploybot ticket create` + a dry-run deploy of a local ticket)."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
import yaml

from backends.stores.postgres import PostgresDatabase
from bot.store import Store
from fakes.filled_store import fill, fixed_clock
from handlers import cli

pytestmark = pytest.mark.integration

TABLES = ("deployments", "checks", "gates", "locks", "events", "outbox", "ticket_times",
          "tickets", "ticket_comments")


@pytest.fixture
def pg_dsn(postgres_server):
    name = f"copy_{uuid.uuid4().hex[:10]}"
    dsn = postgres_server.create_database(name)
    yield dsn
    postgres_server.drop_database(name)


@pytest.fixture
def quiet_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("DEPLOYBOT_CONFIG", "SLACK_BOT_TOKEN", "DEPLOYBOT_DB", "DEPLOYBOT_USER"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def show(capsys, monkeypatch, where: str, deployment_id: int) -> str:
    monkeypatch.setenv("DEPLOYBOT_DB", where)
    capsys.readouterr()
    assert cli.main(["show", str(deployment_id)]) == cli.EXIT_OK
    return capsys.readouterr().out


def test_copy_from_sqlite_into_postgresql(quiet_env, pg_dsn, capsys, monkeypatch):
    source = quiet_env / "deploybot.db"
    store = Store(str(source), clock=fixed_clock)
    ids = fill(store)
    store.close()

    assert cli.main(["db", "copy", str(source), pg_dsn]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "ticket_comments         2 -> 2" in out

    with sqlite3.connect(source) as conn:
        expected = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    copied = Store(PostgresDatabase(pg_dsn))
    try:
        assert {t: copied.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in TABLES} == expected
        # the identity sequences continue after the copied ids
        created, _ = copied.create_deployment(ticket_id="DEMO-3", service="web", version="v3",
                                              environment="staging", requested_by="alice")
        assert created.id == max(ids.values()) + 1
        gate = copied.create_gate(created.id, copied.gates(ids["waiting"])[0].kind, "again")
        assert gate.id == 3
    finally:
        copied.close()
    for deployment_id in ids.values():
        assert show(capsys, monkeypatch, pg_dsn, deployment_id) == show(
            capsys, monkeypatch, str(source), deployment_id)

    # a second copy into the same target is refused: it already has deployments
    assert cli.main(["db", "copy", str(source), pg_dsn]) == cli.EXIT_FAILED
    assert "the target is not empty (deployments: 4 rows" in capsys.readouterr().err

    monkeypatch.setenv("DEPLOYBOT_DB", pg_dsn)
    assert cli.main(["db", "info"]) == cli.EXIT_OK
    info = capsys.readouterr().out
    assert info.startswith("engine: postgresql\nwhere: postgresql://postgres@127.0.0.1:")
    assert "  deployments             4 rows" in info


def test_the_local_tracker_on_postgresql(quiet_env, pg_dsn, capsys, monkeypatch):
    config = quiet_env / "deploybot.yaml"
    config.write_text(yaml.safe_dump({
        "tracker": {"kind": "local"}, "default_environment": "staging",
        "environments": {"staging": {"approvals_required": 0}},
        "services": {"web": {"image": "demo-web"}},
        "people": {"alice": {"tracker": "alice"}}, "terminal": {"trust_as": True}}))
    monkeypatch.setenv("DEPLOYBOT_CONFIG", str(config))
    monkeypatch.setenv("DEPLOYBOT_DB", pg_dsn)
    monkeypatch.setenv("DEPLOYBOT_USER", "alice")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{quiet_env}/no-engine.sock")  # never a real one

    assert cli.main(["ticket", "create", "Ship web v2", "--status", "Ready for Production",
                     "--field", "deploy=web@v2"]) == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == "DEMO-1"
    assert cli.main(["ticket", "comment", "DEMO-1", "QA PASS"]) == cli.EXIT_OK
    assert cli.main(["ticket", "create", "Second"]) == cli.EXIT_OK
    assert capsys.readouterr().out.strip().endswith("DEMO-2")
    assert cli.main(["ticket", "show", "DEMO-1"]) == cli.EXIT_OK
    shown = capsys.readouterr().out
    assert "Ship web v2" in shown and "QA PASS" in shown

    code = cli.main(["deploy", "DEMO-1", "web@v2", "--dry-run"])
    out = capsys.readouterr()
    # blocked (no CQ approval, no engine), after reading the ticket and its comment
    assert code == cli.EXIT_FAILED, out.out + out.err
    assert "BLOCKED: deployment #1 stopped; nothing was deployed." in out.out
    store = Store(PostgresDatabase(pg_dsn))
    try:
        (dry,) = store.deployments(service="web")
        assert dry.dry_run and dry.ticket_id == "DEMO-1" and dry.version == "v2"
        assert dry.status.value == "blocked"
        checks = {c.name: c.status.value for c in store.checks(dry.id)}
        assert checks["qa_pass"] == "passed" and checks["cq_approval"] == "failed"
        assert checks["ticket_status"] == "passed"
    finally:
        store.close()
