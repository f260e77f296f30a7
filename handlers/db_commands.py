"""`deploybot db info` and `deploybot db copy SOURCE TARGET`: moving a store to PostgreSQL.

The copy goes into an EMPTY target only (fail closed: two histories are never merged), in one
transaction on the target, ids kept -- deployment #7 stays #7 in Slack threads, tickets and
the audit trail -- then each generated-id sequence moves past the copied ids and the row
counts of both sides are compared table by table.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bot.errors import StateError
from bot.redact import slack_redactor
from handlers import database_url
from handlers.database_url import DB_ENV, Location
from handlers.lazy import Lazy

if TYPE_CHECKING:
    from bot.store import Store

# `deploybot --help` builds this parser: the store's modules load when a db command runs.
stores = Lazy("bot.store")
sqldb = Lazy("bot.sqldb")

# Parents before children (foreign keys); tables not named here follow in name order.
COPY_ORDER = ("deployments", "checks", "gates", "locks", "events", "outbox", "ticket_times",
              "replicas", "tickets", "ticket_comments")
# Rows the target's own migrations write (schema versions): never copied.
OWN_META_KEYS = ("schema_version", "local_tracker_schema")
LOCAL_TRACKER_TABLES = ("tickets", "ticket_comments")


@dataclass
class CopyResult:
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # table -> (source, target)

    @property
    def mismatches(self) -> dict[str, tuple[int, int]]:
        return {t: c for t, c in self.counts.items() if c[0] != c[1]}


def add_parser(sub) -> None:
    db = sub.add_parser("db", help="the store's database: where it is, copying it elsewhere")
    dsub = db.add_subparsers(dest="db_cmd", required=True, metavar="ACTION")
    info = dsub.add_parser("info", help="engine, where, schema version, rows per table")
    info.add_argument("where", nargs="?", metavar="STORE",
                      help=f"a path, sqlite:..., postgresql://... (default: ${DB_ENV})")
    cp = dsub.add_parser(
        "copy", help="copy every table into an empty store (e.g. SQLite to PostgreSQL)",
        description="Copies the store SOURCE (migrated first if older) into the empty store "
                    "TARGET of the same schema, ids kept, in one transaction; then checks the "
                    "row counts per table. Stop every deploybot using SOURCE first.")
    cp.add_argument("source", metavar="SOURCE", help="a SQLite path (or any store form)")
    cp.add_argument("target", metavar="TARGET", help="postgresql://USER:PASSWORD@HOST/DB, or a "
                    "path for a SQLite copy")
    db.set_defaults(func=cmd_db)


def cmd_db(ctx, args: argparse.Namespace) -> int:
    named = [args.where] if args.db_cmd == "info" and args.where else (
        [args.source, args.target] if args.db_cmd == "copy" else [])
    # Passwords typed on the command line are secrets too, in whatever is printed or logged.
    ctx.redact = slack_redactor(os.environ, named)
    if args.db_cmd == "info":
        return cmd_info(args.where or os.environ.get(DB_ENV))
    return cmd_copy(args.source, args.target)


def open_location(location: Location) -> Store:
    return stores.Store(database_url.store_target(location))


def _tables(store: Store) -> list[str]:
    names = [t for t in store.db.table_names() if t != "meta" and not t.startswith("sqlite_")]
    return sorted(names, key=lambda t: (COPY_ORDER.index(t) if t in COPY_ORDER
                                        else len(COPY_ORDER), t))


def _count(store: Store, table: str) -> int:
    return int(store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def cmd_info(where: str | None) -> int:
    location = database_url.parse(where)
    if location.engine == database_url.SQLITE and not Path(location.where).exists():
        raise StateError(f"no store at {location.label}", hint=f"set {DB_ENV} or name the store")
    store = open_location(location)
    try:
        print(f"engine: {location.engine}")
        print(f"where: {location.label}")
        print(f"schema version: {store.schema_version}")
        for table in _tables(store):
            print(f"  {table:<16} {_count(store, table):>8} rows")
    finally:
        store.close()
    return 0


def _with_local_tracker(source: Store, target: Store) -> None:
    """The embedded tracker's tables exist only where it ran: create them on the target too."""
    if set(LOCAL_TRACKER_TABLES) & set(source.db.table_names()):
        from backends.trackers.local import LocalTracker

        LocalTracker(source)  # its own migration brings an older source up to date
        LocalTracker(target)


def copy_store(source: Store, target: Store) -> CopyResult:
    """Every row of every table of `source` into the empty `target`, ids kept."""
    if source.schema_version != target.schema_version:
        raise StateError(f"schema versions differ: source {source.schema_version}, target "
                         f"{target.schema_version}", hint="run the same deploybot on both")
    tables = _tables(source)
    present = set(target.db.table_names())
    busy = {t: n for t in tables if t in present and (n := _count(target, t))}
    if busy:
        raise StateError(
            "the target is not empty (" + ", ".join(f"{t}: {n} rows" for t, n in busy.items())
            + "): a copy never merges two histories",
            hint="copy into a new, empty database (e.g. `createdb deploybot`) before any "
                 "deploybot runs on it (a running one writes heartbeats and events)")
    _with_local_tracker(source, target)
    missing = sorted(set(tables) - set(target.db.table_names()))
    if missing:
        raise StateError(f"the target has no table {', '.join(missing)}",
                         hint="both sides must run the same deploybot version")
    with target.transaction() as db:
        for row in source.db.query("SELECT key, value FROM meta"):
            if row["key"] not in OWN_META_KEYS:
                db.execute("DELETE FROM meta WHERE key = ?", [row["key"]])
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                           [row["key"], row["value"]])
        for table in tables:
            try:
                for row in source.db.query(f"SELECT * FROM {table}"):
                    cols = list(row)
                    db.execute(f"INSERT INTO {table} ({', '.join(cols)}) "
                               f"VALUES ({', '.join('?' * len(cols))})", list(row.values()))
            except target.db.integrity_errors as exc:  # rolled back: the target stays empty
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise StateError(f"copying {table} failed, nothing was copied: {reason}",
                                 hint="is a deploybot running on the target? stop it, and copy "
                                      "into a new, empty database") from None
        if target.db.dialect != "sqlite":  # SQLite continues after MAX(id) by itself
            for table in tables:
                if table in sqldb.GENERATED_IDS:
                    target.db.reset_ids(table)
    return CopyResult({t: (_count(source, t), _count(target, t)) for t in tables})


def _same(a: Location, b: Location) -> bool:
    if a.engine == b.engine == database_url.SQLITE:
        return Path(a.where).resolve() == Path(b.where).resolve()
    return a == b


def cmd_copy(source_text: str, target_text: str) -> int:
    source_at = database_url.parse(source_text, name="SOURCE")
    target_at = database_url.parse(target_text, name="TARGET")
    if _same(source_at, target_at):
        raise StateError("SOURCE and TARGET are the same store")
    if source_at.engine == database_url.SQLITE and not Path(source_at.where).is_file():
        raise StateError(f"SOURCE: no store at {source_at.label}",
                         hint="name the SQLite file deploybot used (its DEPLOYBOT_DB)")
    source = open_location(source_at)
    try:
        target = open_location(target_at)
        try:
            print(f"copying {source_at.label} (schema version {source.schema_version}) "
                  f"to {target_at.label}", flush=True)
            result = copy_store(source, target)
        finally:
            target.close()
    finally:
        source.close()
    for table, (there, here) in result.counts.items():
        mark = "" if there == here else "   MISMATCH"
        print(f"  {table:<16} {there:>8} -> {here:<8}{mark}".rstrip())
    if result.mismatches:
        print("error: the row counts differ: " + ", ".join(
            f"{t} {a} in the source, {b} in the target" for t, (a, b) in
            result.mismatches.items()), file=sys.stderr)
        return 1
    print(f"copied: {sum(a for a, _ in result.counts.values())} rows; point {DB_ENV} at the "
          "target to use it")
    return 0
