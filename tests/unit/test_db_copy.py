"""`deploybot db copy` / `db info` between two SQLite files (the PostgreSQL target:
tests/integration/test_db_copy.py)."""

from __future__ import annotations

import sqlite3

import pytest

from bot.store import SCHEMA_VERSION, Store
from fakes.filled_store import fill, fixed_clock
from handlers import cli

TABLES = ("deployments", "checks", "gates", "locks", "events", "outbox", "ticket_times",
          "tickets", "ticket_comments")


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("DEPLOYBOT_CONFIG", "SLACK_BOT_TOKEN", "DEPLOYBOT_DB"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "old.db"
    store = Store(str(path), clock=fixed_clock)
    ids = fill(store)
    store.close()
    return path, ids


def counts(path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def show(capsys, monkeypatch, db, deployment_id: int) -> str:
    monkeypatch.setenv("DEPLOYBOT_DB", str(db))
    capsys.readouterr()
    assert cli.main(["show", str(deployment_id)]) == cli.EXIT_OK
    return capsys.readouterr().out


def test_a_copy_keeps_every_row_and_id(source, tmp_path, capsys, monkeypatch):
    path, ids = source
    target = tmp_path / "new.db"
    assert cli.main(["db", "copy", str(path), f"sqlite:{target}"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert counts(target) == counts(path)
    assert all(n > 0 for n in counts(target).values())
    assert "deployments             3 -> 3" in out and "MISMATCH" not in out
    for deployment_id in ids.values():
        assert show(capsys, monkeypatch, target, deployment_id) == show(
            capsys, monkeypatch, path, deployment_id)
    copied = Store(str(target))
    try:
        created, _ = copied.create_deployment(ticket_id="DEMO-3", service="web", version="v3",
                                              environment="staging", requested_by="alice")
        assert created.id == max(ids.values()) + 1
        assert copied.db.query("SELECT value FROM meta WHERE key = 'local_tracker_schema'")
    finally:
        copied.close()


def test_a_target_with_deployments_is_refused_and_left_alone(source, tmp_path, capsys):
    path, _ = source
    target = tmp_path / "busy.db"
    busy = Store(str(target))
    busy.create_deployment(ticket_id="X-1", service="web", version="v9", environment="staging",
                           requested_by="bob")
    busy.close()
    before = counts_of(target)
    assert cli.main(["db", "copy", str(path), str(target)]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "the target is not empty (deployments: 1 rows" in err
    assert "hint: copy into a new, empty database" in err
    assert counts_of(target) == before


def counts_of(path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in names}


def test_a_missing_source_is_an_error_not_a_new_empty_store(tmp_path, capsys):
    missing = tmp_path / "typo.db"
    assert cli.main(["db", "copy", str(missing), str(tmp_path / "new.db")]) == cli.EXIT_FAILED
    assert f"SOURCE: no store at {missing}" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "new.db").exists()


def test_source_and_target_may_not_be_the_same(source, capsys):
    path, _ = source
    assert cli.main(["db", "copy", str(path), f"sqlite://{path}"]) == cli.EXIT_FAILED
    assert "SOURCE and TARGET are the same store" in capsys.readouterr().err


def test_an_older_source_is_migrated_first(source, tmp_path, capsys):
    path, _ = source
    with sqlite3.connect(path) as conn:  # as an older deploybot left it: no m9
        conn.execute("DROP TABLE replicas")
        conn.execute("ALTER TABLE deployments DROP COLUMN owner_replica")
        conn.execute("ALTER TABLE deployments DROP COLUMN recovery_replica")
        conn.execute("UPDATE meta SET value = '8' WHERE key = 'schema_version'")
    assert cli.main(["db", "copy", str(path), str(tmp_path / "new.db")]) == cli.EXIT_OK
    assert f"(schema version {SCHEMA_VERSION})" in capsys.readouterr().out
    assert counts(tmp_path / "new.db") == counts(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone() == (str(SCHEMA_VERSION),)


def test_info_names_engine_place_version_and_rows(source, capsys, monkeypatch):
    path, _ = source
    monkeypatch.setenv("DEPLOYBOT_DB", f"sqlite:{path}")
    assert cli.main(["db", "info"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    store = Store(str(path))
    version = store.schema_version
    store.close()
    assert out.startswith(f"engine: sqlite\nwhere: {path}\nschema version: {version}\n")
    assert "  deployments             3 rows" in out
    assert "  ticket_comments         2 rows" in out
