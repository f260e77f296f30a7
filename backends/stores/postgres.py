"""The PostgreSQL store engine (psycopg 3): bot.sqldb.Database for DEPLOYBOT_DB=postgresql://...

Several deploybot replicas share one database. Writers are serialized like SQLite's BEGIN
IMMEDIATE: every write transaction first takes one transaction-level advisory lock, so the
store's read-check-write sequences stay atomic across replicas. Outside transactions the
connection autocommits. A lost connection is reported as a StateError naming the store (never
its password) and is replaced by a new one at the next operation outside a transaction.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator, Sequence
from urllib.parse import quote

import psycopg
from psycopg import conninfo

from backends.stores.pg_schema import MIGRATIONS
from bot.errors import StateError
from bot.sqldb import GENERATED_IDS, PRIMARY_KEYS, Table

# pg_advisory_xact_lock key of the store's writers: one fixed 64-bit number ("deploybot-store"
# in ASCII, truncated), the same in every replica. Other advisory locks must use other keys.
WRITER_LOCK_KEY = 0x6465706C6F79626F
# Dead peers (a replica's host gone without a FIN) are noticed within about a minute, on both
# ends: libpq's keepalives here, the server's for our sessions through SESSION_OPTIONS.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}
# The store never waits inside a transaction (no network calls there): a session idle in one
# for a minute is a replica that hangs or is cut off, and it must not hold the writer lock.
SESSION_OPTIONS = ("-c idle_in_transaction_session_timeout=60000 -c tcp_keepalives_idle=30 "
                   "-c tcp_keepalives_interval=10 -c tcp_keepalives_count=3")
UNREACHABLE_HINT = ("check that the PostgreSQL server is running and reachable, and the "
                    "DEPLOYBOT_DB address; deploybot reconnects by itself at the next operation")


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """`?` placeholders to psycopg's `%s`, a literal `%` to `%%`. Question marks inside quoted
    literals and identifiers stay what they are."""
    out: list[str] = []
    quote_char = ""
    for ch in sql:
        if quote_char:
            if ch == quote_char:
                quote_char = ""
        elif ch in "'\"":
            quote_char = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append("%%" if ch == "%" else ch)
    return "".join(out)


def _param(value: Any) -> Any:
    # Flags are INTEGER columns (as on SQLite): a Python bool would be sent as boolean.
    if isinstance(value, bool):
        return int(value)
    # PostgreSQL text cannot hold NUL, SQLite's can: an error text or a chat message carrying
    # one must still be stored (and the audit event with it), so it becomes U+FFFD.
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _params(params: Sequence[Any]) -> list[Any]:
    return [_param(p) for p in params]


class _Secrets:
    """What must never appear in a message: the DSN's password (as written and URL-quoted)."""

    def __init__(self, dsn: str) -> None:
        self.words: list[str] = []
        password = ""
        try:
            password = conninfo.conninfo_to_dict(dsn).get("password") or ""
        except psycopg.ProgrammingError:
            match = re.search(r"://[^:/@]*:([^@]*)@", dsn)
            password = match.group(1) if match else ""
        for word in (password, quote(password, safe=""), quote(password)):
            if word and word not in self.words:
                self.words.append(word)

    def __call__(self, text: str) -> str:
        for word in self.words:
            text = text.replace(word, "***")
        return text


def dsn_label(dsn: str) -> str:
    """`postgresql://user@host:port/dbname`: where the store is, without any password."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(an invalid address)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


class PostgresReader:
    """What `PostgresDatabase.reading()` yields: `?` statements on a connection of its own."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        if params:
            return self.conn.execute(translate(sql), _params(params))
        return self.conn.execute(sql)


class PostgresDatabase:
    """One autocommit connection to a PostgreSQL database; the store's lock serializes its use."""

    dialect = "postgresql"
    id_column = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    integrity_errors = (psycopg.errors.IntegrityError,)

    def __init__(self, dsn: str, *, connect_timeout: float = 5.0) -> None:
        # With its password, for connections of their own (leadership): never show it, show
        # `label`.
        self.dsn = dsn
        self._secret = _Secrets(dsn)
        self.label = dsn_label(dsn)
        self.connect_timeout = connect_timeout
        try:  # the DSN's own server options stay beside ours
            own = conninfo.conninfo_to_dict(dsn).get("options") or ""
        except psycopg.ProgrammingError:
            own = ""  # _connect below says what is wrong with the DSN
        self._options = f"{own} {SESSION_OPTIONS}".strip()
        self._in_transaction = False
        self._conn: psycopg.Connection | None = None
        self._conn = self._connect()

    # -- connections --------------------------------------------------------------------------

    def _connect(self, timeout: float | None = None, options: str = "") -> psycopg.Connection:
        seconds = self.connect_timeout if timeout is None else timeout
        try:
            # libpq takes whole seconds, at least 2.
            return psycopg.connect(self.dsn, autocommit=True,
                                   connect_timeout=max(2, math.ceil(seconds)),
                                   application_name="deploybot", **KEEPALIVES,
                                   options=f"{self._options} {options}".strip())
        except psycopg.ProgrammingError as exc:  # the DSN itself does not parse
            problem = self._secret(str(exc).strip())
            invalid = True
        except psycopg.Error as exc:
            problem = self._secret(str(exc).strip()) or type(exc).__name__
            invalid = False
        # Raised outside the except block: the psycopg error (it may quote the DSN) is not
        # chained into tracebacks.
        if invalid:
            raise StateError(f"the PostgreSQL store address is invalid: {problem}",
                             hint="DEPLOYBOT_DB=postgresql://USER@HOST:PORT/DBNAME (the "
                                  "password is best given in PGPASSWORD or ~/.pgpass)")
        raise self._unreachable(problem)

    def _unreachable(self, problem: str) -> StateError:
        return StateError(f"the PostgreSQL store at {self.label} is unreachable: {problem}",
                          hint=UNREACHABLE_HINT)

    @property
    def conn(self) -> psycopg.Connection:
        """The live connection; a new one when the last was lost, except inside a transaction
        (that transaction is gone: the caller must roll back)."""
        if self._conn is None or self._conn.closed:
            if self._in_transaction:
                raise self._unreachable("the connection was lost during a transaction")
            self._conn = self._connect()
        return self._conn

    def _run(self, sql: str, params: Sequence[Any]) -> psycopg.Cursor:
        conn = self.conn
        try:
            if params:
                return conn.execute(translate(sql), _params(params))
            return conn.execute(sql)
        except psycopg.OperationalError as exc:
            if not conn.broken and not conn.closed:
                raise  # a statement's own failure (cancelled, lock timeout ...), not the link
            problem = self._secret(str(exc).strip()) or type(exc).__name__
        self._drop()
        raise self._unreachable(problem)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass  # already broken: nothing left to close cleanly

    # -- bot.sqldb.Database -------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        return self._run(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._run(sql, params)
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def insert(self, table: str, values: dict[str, Any]) -> Any:
        cols = list(values)
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        pk = PRIMARY_KEYS.get(table, ("id",))
        if table in GENERATED_IDS and values.get("id") is None:
            return self._run(sql + " RETURNING id", list(values.values())).fetchone()[0]
        self._run(sql, list(values.values()))
        return values[pk[0]] if len(pk) == 1 else tuple(values[c] for c in pk)

    def __getitem__(self, table: str) -> Table:
        return Table(self, table)

    def table_names(self) -> list[str]:
        return [r[0] for r in self._run(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name", ())]

    def begin(self) -> None:
        # READ COMMITTED: every statement after the lock sees what the previous writer committed.
        self._run("BEGIN ISOLATION LEVEL READ COMMITTED", ())
        self._in_transaction = True
        try:
            self._run(f"SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})", ())
        except BaseException:
            self.rollback()
            raise

    def commit(self) -> None:
        try:
            self._run("COMMIT", ())
        finally:
            self._in_transaction = False

    def rollback(self) -> None:
        self._in_transaction = False
        if self._conn is None or self._conn.closed:
            return  # the transaction went with the connection
        try:
            self._conn.execute("ROLLBACK")
        except psycopg.OperationalError:
            self._drop()

    def migrate_step(self, version: int, migration: Any) -> None:
        if isinstance(migration, (list, tuple)):
            statements = migration
        elif version in MIGRATIONS:
            statements = MIGRATIONS[version]
        else:
            raise StateError(f"schema version {version} has no PostgreSQL migration",
                             hint="write its migration as a list of portable SQL statements")
        for statement in statements:
            self._run(statement, ())

    def reset_ids(self, table: str) -> None:
        """After inserts with explicit ids (`deploybot db copy`): the identity continues after
        the largest id, so the next generated one does not collide."""
        self._run(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                  f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}", ())

    @contextmanager
    def reading(self, timeout: float) -> Iterator[PostgresReader]:
        limit = f"-c statement_timeout={max(1, int(timeout * 1000))}"
        conn = self._connect(timeout, options=limit)
        try:
            yield PostgresReader(conn)
        finally:
            conn.close()

    def close(self) -> None:
        self._drop()
