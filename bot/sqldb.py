"""The SQL database under the store: one small interface, two engines.

The store (bot/store.py) speaks portable SQL with `?` placeholders through `Database`: SQLite
(embedded, the default, below) or PostgreSQL (backends/stores/postgres.py, chosen at start-up
from DEPLOYBOT_DB). Writers are serialized by the engine -- SQLite's BEGIN IMMEDIATE,
PostgreSQL's transaction-level advisory lock -- so every read-check-write sequence in the store is
atomic across processes and replicas, not just across threads.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from bot.errors import ConfigError


# Primary keys of the store's tables: `db[table].get/update/delete` address rows by them.
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "meta": ("key",), "deployments": ("id",), "checks": ("deployment_id", "name"),
    "gates": ("id",), "locks": ("scope",), "events": ("id",), "outbox": ("id",),
    "ticket_times": ("ticket_id",), "replicas": ("id",), "tickets": ("id",),
    "ticket_comments": ("id",),
}
# Tables whose `id` the database assigns (INTEGER PRIMARY KEY / identity column).
GENERATED_IDS = frozenset({"deployments", "gates", "events", "outbox", "ticket_comments"})


class NotFound(LookupError):
    """`db[table].get(pk)` found no row."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> tuple | None: ...

    def fetchall(self) -> list[tuple]: ...

    def __iter__(self) -> Iterator[tuple]: ...


class Reader(Protocol):
    """What `Database.reading()` yields: statements with `?` placeholders, cut off in time."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


class Table:
    """The few row operations the store needs, in portable SQL (the sqlite-utils subset the
    store used to call, so both engines behave the same)."""

    def __init__(self, db: "Database", name: str) -> None:
        self.db, self.name = db, name
        self.pk = PRIMARY_KEYS.get(name, ("id",))
        self.last_pk: Any = None

    def _where(self, key: Any) -> tuple[str, list[Any]]:
        values = list(key) if isinstance(key, (tuple, list)) else [key]
        if len(values) != len(self.pk):
            raise ValueError(f"{self.name}: key {key!r} does not match {self.pk}")
        return " AND ".join(f"{c} = ?" for c in self.pk), values

    def insert(self, values: Mapping[str, Any]) -> "Table":
        self.last_pk = self.db.insert(self.name, dict(values))
        return self

    def get(self, key: Any) -> dict[str, Any]:
        where, args = self._where(key)
        rows = self.db.query(f"SELECT * FROM {self.name} WHERE {where}", args)
        if not rows:
            raise NotFound(f"{self.name}: no row {key!r}")
        return rows[0]

    def update(self, key: Any, values: Mapping[str, Any]) -> "Table":
        if values:
            where, args = self._where(key)
            sets = ", ".join(f"{c} = ?" for c in values)
            self.db.execute(f"UPDATE {self.name} SET {sets} WHERE {where}",
                            [*values.values(), *args])
        return self

    def upsert(self, values: Mapping[str, Any], pk: Any = None) -> "Table":
        cols = list(values)
        keys = self.pk
        rest = [c for c in cols if c not in keys]
        action = ("DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in rest)
                  if rest else "DO NOTHING")
        self.db.execute(
            f"INSERT INTO {self.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(keys)}) {action}", list(values.values()))
        return self

    def delete(self, key: Any) -> "Table":
        where, args = self._where(key)
        self.db.execute(f"DELETE FROM {self.name} WHERE {where}", args)
        return self


class Database(Protocol):
    """One connection's worth of SQL. Callers (the store) serialize its use with their own lock."""

    dialect: str            # "sqlite" | "postgresql"
    label: str              # where it is, safe for messages (a DSN without its password)
    id_column: str          # DDL of a generated integer primary key column
    integrity_errors: tuple[type[BaseException], ...]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def insert(self, table: str, values: dict[str, Any]) -> Any:
        """Insert one row; returns its primary key (the generated id where there is one)."""

    def __getitem__(self, table: str) -> Table: ...

    def table_names(self) -> list[str]: ...

    def begin(self) -> None:
        """Start a write transaction that excludes every other writer until commit/rollback."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def migrate_step(self, version: int, migration: Any) -> None:
        """Bring the schema to `version` (inside the caller's transaction). `migration` is the
        store's step: a list of portable SQL statements, or an SQLite-only function that the
        PostgreSQL engine replaces with its own DDL for that version."""

    def reading(self, timeout: float) -> Any:
        """Context manager: a Reader on a connection of its own, each statement cut off after
        `timeout` seconds (probes, /metrics must not wait behind a long transaction)."""

    def close(self) -> None: ...


# -- SQLite -------------------------------------------------------------------------------------

class SqliteDatabase:
    """The embedded default: one SQLite file (WAL) or ":memory:"."""

    dialect = "sqlite"
    id_column = "INTEGER PRIMARY KEY"
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str) -> None:
        self.path = path
        self.label = path
        if path != ":memory:" and not Path(path).parent.is_dir():
            # A mistyped path would otherwise be a new empty store: no locks, no history.
            raise ConfigError(f"the store's folder {Path(path).parent} does not exist",
                              hint=f"create it first, or name the right file (DEPLOYBOT_DB={path})")
        self.conn = sqlite3.connect(path, check_same_thread=False, timeout=30,
                                    isolation_level=None)
        self._utils = None
        self._relaxed = False
        if path != ":memory:" and self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.conn.execute("PRAGMA journal_mode=wal")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA busy_timeout = 30000")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, list(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, list(params))
        names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def insert(self, table: str, values: dict[str, Any]) -> Any:
        cols = list(values)
        cur = self.conn.execute(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            list(values.values()))
        pk = PRIMARY_KEYS.get(table, ("id",))
        if table in GENERATED_IDS and values.get("id") is None:
            return cur.lastrowid
        return values[pk[0]] if len(pk) == 1 else tuple(values[c] for c in pk)

    def __getitem__(self, table: str) -> Table:
        return Table(self, table)

    def table_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def begin_relaxed(self) -> None:
        """A write that survives the process dying but may be lost with the machine (power
        loss, OS crash): WAL without its fsync (synchronous=NORMAL). The next ordinary commit's
        fsync covers it, so a state change is never lost while a progress note after it is
        kept; the file stays consistent either way. A deployment writes some 70 transactions,
        each fsync costing milliseconds (benchmarks/docker_deploy.py)."""
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self._relaxed = True
        try:
            self.begin()
        except BaseException:
            self._sync_again()
            raise

    def _sync_again(self) -> None:
        if getattr(self, "_relaxed", False):
            self._relaxed = False
            self.conn.execute("PRAGMA synchronous = FULL")

    def commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        finally:
            self._sync_again()

    def rollback(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        finally:
            self._sync_again()

    def migrate_step(self, version: int, migration: Any) -> None:
        if isinstance(migration, (list, tuple)):
            for statement in migration:
                self.conn.execute(statement)
        else:
            migration(self.utils)

    @property
    def utils(self) -> Any:
        """sqlite-utils runs the released SQLite migrations (m1..m8), written against its API;
        imported only when one runs: reads and writes do not need it (start-up, issue 13)."""
        if self._utils is None:
            import sqlite_utils

            self._utils = sqlite_utils.Database(self.conn)
        return self._utils

    @contextmanager
    def reading(self, timeout: float) -> Iterator[sqlite3.Connection]:
        if self.path == ":memory:":  # one connection only: the caller's lock guards it
            yield self.conn
            return
        # mode=rw: a missing file is an error, not a new empty database.
        uri = Path(self.path).resolve().as_uri() + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
        deadline = time.monotonic() + timeout
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        self.conn.close()


Opener = Callable[[str], Database]
