"""DEPLOYBOT_DB: which engine holds the store, and where.

A file path (as always), `sqlite:///ABSOLUTE/PATH` or `sqlite:RELATIVE/PATH` mean SQLite;
`postgresql://...` / `postgres://...` mean PostgreSQL. Any other `scheme://` is refused: it used
to become a file named after the scheme, a store nobody else would ever see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bot.errors import ConfigError
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engines load when a store opens, not when a parser is built
    from bot.sqldb import Database

DB_ENV = "DEPLOYBOT_DB"
DEFAULT = "deploybot.db"
SQLITE, POSTGRESQL = "sqlite", "postgresql"
ACCEPTED = ("a file path, sqlite:///ABSOLUTE/PATH, sqlite:RELATIVE/PATH, "
            "or postgresql://USER:PASSWORD@HOST:PORT/DBNAME")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<slashes>//)?")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class Location:
    engine: str   # SQLITE | POSTGRESQL
    where: str    # the SQLite path, or the DSN -- with its password: print `label`, never this

    @property
    def label(self) -> str:
        if self.engine == SQLITE:
            return self.where
        # the engine's own label, so every message names the store the same way
        from backends.stores.postgres import dsn_label

        return dsn_label(self.where)


def parse(text: str | None, *, name: str = DB_ENV) -> Location:
    """The store's location from DEPLOYBOT_DB's forms (ConfigError for anything else).
    Unset means ./deploybot.db; set but empty is refused (an env file or Secret whose value
    was never filled in must not quietly become a new, empty store)."""
    if text is None:
        text = DEFAULT
    if not text.strip():
        raise ConfigError(f"{name} is set but empty", hint=f"{name} is {ACCEPTED}")
    m = _SCHEME.match(text)
    scheme = m.group("scheme").lower() if m else ""
    if scheme in _POSTGRES_SCHEMES:
        if not m.group("slashes"):
            raise ConfigError(f"{name}: {safe_dsn(text)} is not a PostgreSQL URL",
                              hint=f"{name} is {ACCEPTED}")
        return Location(POSTGRESQL, text)
    if scheme == "sqlite":
        rest = text[m.end("scheme") + 1:]
        if rest.startswith("///"):
            path = rest[2:]
        elif rest.startswith("//"):
            raise ConfigError(f"{name}: {text} has a host part; SQLite is a local file",
                              hint=f"{name} is {ACCEPTED}")
        else:
            path = rest
        if not path:
            raise ConfigError(f"{name}: {text} names no file", hint=f"{name} is {ACCEPTED}")
        return Location(SQLITE, path)
    if m and m.group("slashes"):
        raise ConfigError(f"{name}: {safe_dsn(text)} is not a store deploybot knows "
                          f"({scheme}://)", hint=f"{name} is {ACCEPTED}")
    return Location(SQLITE, text)


def safe_dsn(dsn: str) -> str:
    """The DSN without its password (in the user part and in `?password=`)."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.split(':', 1)[0]}@{host}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                           if k != "password"])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return f"{dsn.split(':', 1)[0]}://(unreadable DSN)"


def open_database(location: Location, *, connect_timeout: float = 5.0) -> Database:
    """The engine for `location`; an unreachable PostgreSQL is a StateError (exit 1)."""
    if location.engine == SQLITE:
        from bot.sqldb import SqliteDatabase
        return SqliteDatabase(location.where)
    from backends.stores.postgres import PostgresDatabase

    # Its own errors name the store by its label and say what to check (never the password).
    return PostgresDatabase(location.where, connect_timeout=connect_timeout)


def store_target(location: Location) -> "str | Database":
    """What `Store(...)` opens: the SQLite path as it is, or the PostgreSQL engine."""
    return location.where if location.engine == SQLITE else open_database(location)
