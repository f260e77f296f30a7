"""`deploybot db copy` / `db info` between two SQLite files (the PostgreSQL target:
tests/integration/test_db_copy.py)."""

from __future__ import annotations

import re
import socket
import sqlite3
from types import SimpleNamespace

import pytest

from bot.errors import StateError
from bot import store as store_module
from bot.store import SCHEMA_VERSION, Store
from fakes.filled_store import fill, fixed_clock
from handlers import cli, db_commands

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
    assert "hint: copy into a new, empty database (e.g. `createdb deploybot`) before any " \
        "deploybot runs on it" in err
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


@pytest.mark.parametrize("same", ["sqlite://{path}", "old.db", "./sub/../old.db"])
def test_source_and_target_may_not_be_the_same(source, capsys, same):
    path, _ = source  # the working directory is the file's folder
    (path.parent / "sub").mkdir()
    assert cli.main(["db", "copy", str(path), same.format(path=path)]) == cli.EXIT_FAILED
    assert "SOURCE and TARGET are the same store" in capsys.readouterr().err


def test_an_older_source_is_migrated_first(tmp_path, capsys, monkeypatch):
    path = tmp_path / "v8.db"
    with monkeypatch.context() as older:  # as deploybot with schema version 8 left it
        older.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:8])
        older.setattr(store_module, "SCHEMA_VERSION", 8)
        Store(str(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO deployments (ticket_id, service, version, environment, "
                     "requested_by, status, created_at, updated_at) VALUES ('OLD-1', 'web', "
                     "'v1', 'staging', 'alice', 'succeeded', '2026-01-01T00:00:00+00:00', "
                     "'2026-01-01T00:00:00+00:00')")
    assert cli.main(["db", "copy", str(path), str(tmp_path / "new.db")]) == cli.EXIT_OK
    assert f"(schema version {SCHEMA_VERSION})" in capsys.readouterr().out
    copied = Store(str(tmp_path / "new.db"))
    try:
        assert copied.deployment(1).ticket_id == "OLD-1"
    finally:
        copied.close()
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


def test_a_count_that_differs_after_the_copy_fails_naming_it(source, tmp_path, capsys):
    """A target that loses rows (here a trigger eats every copied event) is caught by the
    verification, not reported as copied."""
    path, _ = source
    target = tmp_path / "lossy.db"
    Store(str(target)).close()
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TRIGGER eat AFTER INSERT ON events "
                     "BEGIN DELETE FROM events WHERE id = NEW.id; END")
    events = counts(path)["events"]
    assert cli.main(["db", "copy", str(path), str(target)]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert re.search(rf"^  events +{events} -> 0 +MISMATCH$", captured.out, re.M)
    assert f"the row counts differ: events {events} in the source, 0 in the target" in \
        captured.err
    assert "copied:" not in captured.out


def test_a_row_the_target_refuses_rolls_the_whole_copy_back(source, tmp_path, capsys):
    path, _ = source
    target = tmp_path / "strict.db"
    Store(str(target)).close()
    with sqlite3.connect(target) as conn:  # a constraint one of the source's rows breaks
        conn.execute("CREATE TRIGGER no_dry BEFORE INSERT ON deployments WHEN NEW.dry_run = 1 "
                     "BEGIN SELECT RAISE(ABORT, 'no dry runs here'); END")
    assert cli.main(["db", "copy", str(path), str(target)]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "error: copying deployments failed, nothing was copied: no dry runs here" in err
    assert all(n == 0 for t, n in counts_of(target).items() if t != "meta")


def test_a_password_on_the_command_line_is_never_printed(source, capsys):
    path, _ = source
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = "Cmd-line-Pa55word"
    assert cli.main(["db", "copy", str(path),
                     f"postgresql://bot:{secret}@127.0.0.1:{port}/deploybot"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert f"the PostgreSQL store at postgresql://bot@127.0.0.1:{port}/deploybot is " \
           "unreachable" in err
    assert secret not in err
    # whatever else the command prints or logs passes a redactor that knows the password
    ctx = SimpleNamespace(redact=None)
    args = SimpleNamespace(db_cmd="copy", source=str(path),
                           target=f"postgresql://bot:{secret}@127.0.0.1:{port}/deploybot")
    with pytest.raises(StateError):
        db_commands.cmd_db(ctx, args)
    assert ctx.redact(f"psql said {secret}") == "psql said [redacted]"
