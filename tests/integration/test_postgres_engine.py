"""The PostgreSQL engine (backends/stores/postgres.py) against a real server: the bot.sqldb
Database contract, the released schema mirrored from SQLite, writers serialized across
connections, reconnection, and no password in any label or message."""

from __future__ import annotations

import threading
import traceback
import uuid

import psycopg
import pytest

from backends.stores.postgres import WRITER_LOCK_KEY, PostgresDatabase, dsn_label, translate
from bot.errors import StateError
from bot.sqldb import SqliteDatabase
from bot.store import Store
from bot.store import MIGRATIONS as SQLITE_MIGRATIONS
from fakes.postgres import PostgresServer, make_base_dir
from fakes.waiting import wait_until

pytestmark = pytest.mark.integration

PASSWORD = "pw-Zq8@x:y/%s"  # characters that DSNs must quote
QUOTED_PASSWORD = "pw-Zq8%40x%3Ay%2F%25s"


@pytest.fixture
def database(postgres_server):
    """A fresh, empty database: its name."""
    name = f"engine_{uuid.uuid4().hex[:10]}"
    postgres_server.create_database(name)
    yield name
    postgres_server.drop_database(name)


@pytest.fixture
def db(postgres_server, database):
    engine = PostgresDatabase(postgres_server.dsn(database))
    yield engine
    engine.close()


def migrated(db) -> None:
    db.begin()
    for version, migration in enumerate(SQLITE_MIGRATIONS, start=1):
        db.migrate_step(version, migration)
    db.commit()


def dsn_with_password(server: PostgresServer, database: str) -> str:
    # The test server trusts loopback: the password is never asked for, only carried along.
    return f"postgresql://postgres:{QUOTED_PASSWORD}@127.0.0.1:{server.port}/{database}"


# -- SQL ------------------------------------------------------------------------------------------

def test_placeholders_and_percent_signs_in_literals_and_parameters(db):
    db.execute("CREATE TABLE t (v TEXT, n INTEGER)")
    db.execute("INSERT INTO t (v, n) VALUES (?, ?)", ["50% off?", 1])
    db.execute("INSERT INTO t (v, n) VALUES ('100% sure?', ?)", [2])
    rows = db.query("SELECT v, n, '?' AS q FROM t WHERE v LIKE '%?' AND n >= ? ORDER BY n", [1])
    assert rows == [{"v": "50% off?", "n": 1, "q": "?"}, {"v": "100% sure?", "n": 2, "q": "?"}]
    assert db.execute("SELECT COUNT(*) FROM t WHERE v LIKE ?", ["%sure%"]).fetchone() == (1,)
    # without parameters the text goes to the server as written
    assert db.execute("SELECT '5%'").fetchone() == ("5%",)
    assert translate("SELECT \"odd?col\", 'it''s ?', ? FROM t") == \
        "SELECT \"odd?col\", 'it''s ?', %s FROM t"


def test_execute_gives_tuples_and_rowcounts_query_gives_dicts_flags_are_integers(db):
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, flag INTEGER)")
    db.execute("INSERT INTO t VALUES (?, ?), (?, ?)", ["a", True, "b", False])
    assert db.execute("SELECT k, flag FROM t ORDER BY k").fetchall() == [("a", 1), ("b", 0)]
    assert db.execute("UPDATE t SET flag = ? WHERE flag = ?", [1, 0]).rowcount == 1
    assert list(db.execute("SELECT k FROM t WHERE k = ?", ["zz"])) == []
    assert db.query("SELECT * FROM t WHERE k = ?", ["a"]) == [{"k": "a", "flag": 1}]
    assert "t" in db.table_names()
    db.execute("INSERT INTO t VALUES (?, ?)", ["nul\x00byte", 0])  # PostgreSQL text has no NUL
    assert db.execute("SELECT k FROM t WHERE k = ?", ["nul\x00byte"]).fetchone() == \
        ("nul\ufffdbyte",)


def test_inserts_return_generated_ids_and_explicit_ids_continue_after_reset(db):
    migrated(db)
    first = db.insert("events", {"at": "2026-01-01T00:00:00+00:00", "actor": "a", "kind": "k",
                                 "detail": ""})
    assert db.insert("events", {"at": "x", "actor": "a", "kind": "k", "detail": ""}) == first + 1
    assert db.insert("events", {"id": 40, "at": "x", "actor": "a", "kind": "k",
                                "detail": ""}) == 40
    db.reset_ids("events")
    assert db.insert("events", {"at": "x", "actor": "a", "kind": "k", "detail": ""}) == 41
    db.reset_ids("gates")  # an empty table: the first generated id stays 1
    assert db.insert("locks", {"scope": "web/prod", "holder": "ann"}) == "web/prod"


def test_table_rows_get_update_upsert_delete_and_integrity_errors(db):
    migrated(db)
    table = db["locks"]
    table.insert({"scope": "s", "holder": "ann", "reason": "r"})
    assert table.get("s")["holder"] == "ann"
    table.update("s", {"holder": "bob"})
    table.upsert({"scope": "s", "holder": "cy", "reason": "again"}, pk="scope")
    table.upsert({"scope": "t", "holder": "dee", "reason": ""}, pk="scope")
    assert [r["holder"] for r in db.query("SELECT holder FROM locks ORDER BY scope")] == \
        ["cy", "dee"]
    with pytest.raises(db.integrity_errors):
        table.insert({"scope": "t", "holder": "eve"})
    table.delete("s")
    with pytest.raises(LookupError):
        table.get("s")


# -- schema ---------------------------------------------------------------------------------------

def sqlite_schema(tmp_path) -> dict:
    lite = SqliteDatabase(str(tmp_path / "schema.db"))
    for version, migration in enumerate(SQLITE_MIGRATIONS, start=1):
        lite.migrate_step(version, migration)
    columns, indexes, foreign = {}, set(), set()
    for table in lite.table_names():
        for _, name, kind, notnull, default, pk in lite.execute(f"PRAGMA table_info({table})"):
            columns[(table, name)] = (kind.lower(), bool(notnull or pk), default, bool(pk))
        for _, index, unique, origin, _ in lite.execute(f"PRAGMA index_list({table})"):
            if origin == "c":  # created by a CREATE INDEX, not for a primary key
                cols = tuple(r[2] for r in lite.execute(f"PRAGMA index_info({index})"))
                indexes.add((table, index, bool(unique), cols))
        for row in lite.execute(f"PRAGMA foreign_key_list({table})"):
            foreign.add((table, row[3], row[2], row[4]))
    lite.close()
    return {"columns": columns, "indexes": indexes, "foreign": foreign}


def postgres_schema(db) -> dict:
    columns = {}
    pks = {(r[0], r[1]) for r in db.execute(
        "SELECT k.table_name, k.column_name FROM information_schema.table_constraints c "
        "JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name "
        "WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = current_schema()")}
    for table, name, kind, nullable, default, identity in db.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity "
            "FROM information_schema.columns WHERE table_schema = current_schema()"):
        family = {"bigint": "integer"}.get(kind, kind)
        default = default.replace("::text", "") if default else None
        assert identity == "NO" or (table, name) in pks
        columns[(table, name)] = (family, nullable == "NO", default, (table, name) in pks)
    indexes = {(r[0], r[1], r[2], tuple(r[3])) for r in db.execute(
        "SELECT t.relname, i.relname, x.indisunique, "
        "ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(n, o) JOIN pg_attribute a "
        "ON a.attrelid = t.oid AND a.attnum = k.n ORDER BY k.o) "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t "
        "ON t.oid = x.indrelid JOIN pg_namespace s ON s.oid = t.relnamespace "
        "WHERE s.nspname = current_schema() AND NOT x.indisprimary")}
    foreign = {tuple(r) for r in db.execute(
        "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, f.attname "
        "FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
        "AND a.attnum = c.conkey[1] JOIN pg_attribute f ON f.attrelid = c.confrelid "
        "AND f.attnum = c.confkey[1] WHERE c.contype = 'f'")}
    return {"columns": columns, "indexes": indexes, "foreign": foreign}


def test_released_schema_versions_mirror_the_sqlite_schema(db, tmp_path):
    migrated(db)
    lite, pg = sqlite_schema(tmp_path), postgres_schema(db)
    assert pg["columns"] == lite["columns"]
    assert pg["indexes"] == lite["indexes"]
    assert pg["foreign"] == lite["foreign"] == {("checks", "deployment_id", "deployments", "id"),
                                                ("gates", "deployment_id", "deployments", "id")}


def test_portable_migrations_run_as_given_and_unknown_engine_steps_are_refused(db):
    db.begin()
    db.migrate_step(9, ["CREATE TABLE replicas (id TEXT PRIMARY KEY, host TEXT)",
                        "ALTER TABLE replicas ADD COLUMN pid INTEGER"])
    db.commit()
    assert db.query("SELECT * FROM replicas") == []
    with pytest.raises(StateError, match="schema version 99 has no PostgreSQL migration"):
        db.migrate_step(99, lambda utils: None)


def test_a_failed_transaction_rolls_back_everything(db):
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    db.begin()
    db.execute("INSERT INTO t VALUES (?)", ["a"])
    with pytest.raises(db.integrity_errors):
        db.execute("INSERT INTO t VALUES (?)", ["a"])
    db.rollback()
    assert db.query("SELECT * FROM t") == []
    db.execute("INSERT INTO t VALUES (?)", ["b"])  # the connection is usable again
    assert db.query("SELECT k FROM t") == [{"k": "b"}]


# -- writers across connections -------------------------------------------------------------------

def test_begin_excludes_a_second_connections_writer_until_commit(postgres_server, database):
    first = PostgresDatabase(postgres_server.dsn(database))
    second = PostgresDatabase(postgres_server.dsn(database))
    watcher = PostgresDatabase(postgres_server.dsn(database))
    first.execute("CREATE TABLE t (v TEXT)")
    seen: list = []

    def second_writer() -> None:
        second.begin()  # waits here while `first` holds the writer lock
        seen.append(second.execute("SELECT COUNT(*) FROM t").fetchone()[0])
        second.execute("INSERT INTO t VALUES ('second')")
        second.commit()

    try:
        first.begin()
        first.execute("INSERT INTO t VALUES ('first')")
        thread = threading.Thread(target=second_writer, daemon=True)
        thread.start()
        wait_until(lambda: watcher.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND ((classid::bigint << 32) | objid::bigint) = ?",
            [WRITER_LOCK_KEY]).fetchone()[0] == 1, 10, "the second writer to wait for the lock")
        assert seen == [] and thread.is_alive()
        first.commit()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert seen == [1]  # it saw the first writer's row once it got the lock
        assert watcher.execute("SELECT COUNT(*) FROM t").fetchone() == (2,)
    finally:
        for engine in (first, second, watcher):
            engine.close()


def test_plain_reads_do_not_wait_for_a_writer(postgres_server, database, db):
    db.execute("CREATE TABLE t (v TEXT)")
    other = PostgresDatabase(postgres_server.dsn(database))
    try:
        db.begin()
        db.execute("INSERT INTO t VALUES ('uncommitted')")
        assert other.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
        db.commit()
        assert other.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)
    finally:
        other.close()


@pytest.mark.realtime
def test_reading_times_out_on_a_statement_held_by_a_lock(postgres_server, database, db):
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES ('x')")
    with db.reading(5) as reader:  # its own connection, placeholders translated
        assert reader.execute("SELECT v FROM t WHERE v = ?", ["x"]).fetchone() == ("x",)
        assert reader.execute("SHOW statement_timeout").fetchone() == ("5s",)
    tuned = PostgresDatabase(postgres_server.dsn(database) + "?options=-c%20work_mem%3D8MB")
    with tuned.reading(2) as reader:  # the DSN's own options stay
        assert reader.execute("SHOW work_mem").fetchone() == ("8MB",)
        assert reader.execute("SHOW statement_timeout").fetchone() == ("2s",)
    tuned.close()
    # a session idle inside a transaction (a hung or cut-off replica) loses it after a minute
    assert db.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("1min",)
    db.begin()
    db.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    try:
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            with db.reading(0.3) as reader:
                reader.execute("SELECT v FROM t").fetchall()
    finally:
        db.rollback()


# -- connection loss and passwords ----------------------------------------------------------------

def test_a_lost_connection_is_reported_then_replaced(postgres_server, database):
    db = PostgresDatabase(dsn_with_password(postgres_server, database))
    killer = PostgresDatabase(postgres_server.dsn(database))
    try:
        db.execute("CREATE TABLE t (v TEXT)")
        pid = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        killer.execute("SELECT pg_terminate_backend(?)", [pid])
        with pytest.raises(StateError) as lost:
            db.execute("SELECT 1")
        assert f"the PostgreSQL store at {db.label} is unreachable" in str(lost.value)
        assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)  # reconnected

        db.begin()
        db.execute("INSERT INTO t VALUES ('lost')")
        pid = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        killer.execute("SELECT pg_terminate_backend(?)", [pid])
        with pytest.raises(StateError, match="unreachable"):
            db.execute("INSERT INTO t VALUES ('after')")
        with pytest.raises(StateError, match="lost during a transaction"):
            db.execute("SELECT 1")  # no silent new connection in the middle of a transaction
        db.rollback()
        assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
    finally:
        db.close()
        killer.close()


def test_reconnects_after_the_server_restarts():
    server = PostgresServer(make_base_dir()).start()
    try:
        server.create_database("restarted")
        db = PostgresDatabase(dsn_with_password(server, "restarted"), connect_timeout=2)
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES (?)", ["before"])
        server.restart()
        with pytest.raises(StateError, match="unreachable") as lost:
            db.execute("SELECT v FROM t")
        assert PASSWORD not in str(lost.value) and QUOTED_PASSWORD not in str(lost.value)
        assert db.query("SELECT v FROM t") == [{"v": "before"}]

        server.stop(remove_data=False)
        with pytest.raises(StateError) as down:
            db.execute("SELECT v FROM t")
        with pytest.raises(StateError) as refused:  # the reconnection fails the same way
            db.execute("SELECT v FROM t")
        for error in (down.value, refused.value):
            assert_no_password(error)
        server.start()
        assert db.query("SELECT v FROM t") == [{"v": "before"}]
        db.close()
    finally:
        server.stop()


def test_a_store_carries_on_after_the_server_restarts():
    server = PostgresServer(make_base_dir()).start()
    try:
        store = Store(PostgresDatabase(server.create_database("store_restart")))
        store.record_event(None, "ann", "before")
        server.restart()
        with pytest.raises(StateError, match="unreachable"):
            store.record_event(None, "ann", "lost")  # lost with its transaction, never half done
        store.record_event(None, "ann", "after")
        assert [e["kind"] for e in store.audit_trail()] == ["before", "after"]
        assert store.ping(2.0) == store.schema_version
        store.close()
    finally:
        server.stop()


def assert_no_password(error: BaseException) -> None:
    text = "".join(traceback.format_exception(error))
    for secret in (PASSWORD, QUOTED_PASSWORD, "Zq8"):
        assert secret not in text, text
    assert "PostgreSQL store at postgresql://postgres@127.0.0.1:" in text


def test_no_password_in_labels_or_connection_errors(postgres_server, free_port):
    dsn = f"postgresql://postgres:{QUOTED_PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    assert dsn_label(dsn).startswith("postgresql://postgres@127.0.0.1:")
    assert dsn_label(dsn).endswith("/nowhere")
    with pytest.raises(StateError) as refused:
        PostgresDatabase(dsn, connect_timeout=2)
    assert_no_password(refused.value)
    assert refused.value.__cause__ is None and refused.value.__context__ is None

    keywords = f"host=127.0.0.1 port={postgres_server.port} user=postgres password={PASSWORD[:6]}x"
    assert "password" not in dsn_label(keywords)
    with pytest.raises(StateError) as missing:  # a database that does not exist
        PostgresDatabase(keywords + " dbname=nope")
    assert PASSWORD[:6] + "x" not in str(missing.value)
    assert 'database "nope" does not exist' in str(missing.value)

    broken = f"postgresql://postgres:{QUOTED_PASSWORD}@127.0.0.1:notaport/x"
    with pytest.raises(StateError, match="address is invalid") as invalid:
        PostgresDatabase(broken + " sslmode")
    text = "".join(traceback.format_exception(invalid.value))
    assert QUOTED_PASSWORD not in text and PASSWORD not in text
