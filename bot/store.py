"""All state -- deployments, check results, gates, locks and the audit trail -- in SQLite (the
embedded default) or PostgreSQL, through bot/sqldb.py."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

from bot import liveness
from bot.sqldb import Database, NotFound, SqliteDatabase
from bot.errors import StateError
from bot.models import (
    OPEN_STATUSES,
    TRANSITIONS,
    CheckResult,
    CheckStatus,
    Deployment,
    DeploymentKind,
    DeploymentStatus,
    Gate,
    GateKind,
    GateStatus,
    Lock,
)

if TYPE_CHECKING:  # the migrations' API, imported only when one runs (bot/sqldb.py)
    import sqlite_utils

DEFAULT_PATH = "deploybot.db"



def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# Forward-only migrations. Never edit a released one: append a new function.
def _m1_initial(db: sqlite_utils.Database) -> None:
    db["deployments"].create(
        {
            "id": int, "ticket_id": str, "service": str, "version": str, "environment": str,
            "requested_by": str, "status": str, "kind": str, "dry_run": int,
            "previous_version": str, "method": str, "lock_scope": str, "failure": str,
            "verification": str, "record": str, "record_posted": int, "record_commented": int,
            "thread_ref": str, "request_key": str, "owner_pid": int,
            "created_at": str, "updated_at": str, "finished_at": str,
        },
        pk="id",
        not_null={"ticket_id", "service", "version", "environment", "requested_by", "status"},
        defaults={"dry_run": 0, "record_posted": 0, "record_commented": 0, "failure": "",
                  "verification": "", "record": "", "thread_ref": "", "method": "",
                  "lock_scope": "", "kind": "deploy"},
    )
    db["deployments"].create_index(["request_key"], unique=True)
    db["deployments"].create_index(["service", "environment", "id"])
    db["checks"].create(
        {"deployment_id": int, "name": str, "title": str, "position": int, "status": str,
         "reason": str, "updated_at": str},
        pk=("deployment_id", "name"),
        foreign_keys=[("deployment_id", "deployments", "id")],
    )
    db["gates"].create(
        {"id": int, "deployment_id": int, "kind": str, "prompt": str, "status": str,
         "decided_by": str, "decided_at": str, "reason": str, "created_at": str},
        pk="id",
        foreign_keys=[("deployment_id", "deployments", "id")],
    )
    db["gates"].create_index(["deployment_id"])
    db["locks"].create(
        {"scope": str, "deployment_id": int, "holder": str, "reason": str, "acquired_at": str},
        pk="scope",
    )
    db["events"].create(
        {"id": int, "at": str, "deployment_id": int, "actor": str, "kind": str, "detail": str},
        pk="id",
    )
    db["events"].create_index(["deployment_id"])


def _m2_image_digest(db: sqlite_utils.Database) -> None:
    db["deployments"].add_column("image_digest", str)


def _m3_schedules(db: sqlite_utils.Database) -> None:
    """Scheduled and queued deployments, break-glass reasons, lock TTLs with heartbeats."""
    db["deployments"].add_column("scheduled_for", str)
    db["deployments"].add_column("queued", int, not_null_default=0)
    db["deployments"].add_column("break_glass", str, not_null_default="")
    db["locks"].add_column("expires_at", str)  # NULL: never expires (manual locks)
    db["locks"].add_column("heartbeat_at", str)


def _m4_evidence_and_via(db: sqlite_utils.Database) -> None:
    """What each check relied on (re-checked at rollout) and where each event came from."""
    db["checks"].add_column("evidence", str, not_null_default="")
    db["events"].add_column("via", str, not_null_default="")


def _m5_image_refs(db: sqlite_utils.Database) -> None:
    """The exact bytes before and after each deployment (digest or image id)."""
    db["deployments"].add_column("image_ref", str, not_null_default="")
    db["deployments"].add_column("previous_image_ref", str, not_null_default="")


def _m6_recovery(db: sqlite_utils.Database) -> None:
    """Recovery of interrupted deployments: who owns a deployment (pid + start time, since pids
    are reused), which process is recovering it, and whether it still needs recovering."""
    db["deployments"].add_column("owner_start", str, not_null_default="")
    db["deployments"].add_column("recovery_pid", int)
    db["deployments"].add_column("recovery_start", str, not_null_default="")
    db["deployments"].add_column("recovery_claimed_at", str)
    db["deployments"].add_column("needs_recovery", int, not_null_default=0)
    # Older versions marked a deployment interrupted mid-rollout and did nothing else: the
    # latest one of its service and environment (nothing deployed after it) is still open.
    db.execute(
        "UPDATE deployments SET needs_recovery = 1 WHERE status = 'interrupted' AND dry_run = 0 "
        "AND kind = 'deploy' "
        "AND (failure LIKE 'interrupted while deploying%' OR failure LIKE 'interrupted while "
        "verifying%' OR failure LIKE 'interrupted while rolling_back%') AND NOT EXISTS (SELECT 1 "
        "FROM deployments later WHERE later.service = deployments.service AND later.environment "
        "= deployments.environment AND later.id > deployments.id AND later.dry_run = 0 "
        "AND later.status NOT IN ('blocked', 'rejected', 'cancelled', 'requested', "
        "'awaiting_approval', 'checking'))")


def _m7_outbox(db: sqlite_utils.Database) -> None:
    """What deploybot tells the tracker and Slack, kept until it is delivered (bot/outbox.py)."""
    db["outbox"].create(
        {"id": int, "deployment_id": int, "kind": str, "target": str, "key": str,
         "payload": str, "state": str, "attempts": int, "created_at": str,
         "next_attempt_at": str, "last_error": str, "delivered_at": str, "stuck_at": str,
         "lease_owner": str, "lease_until": str},
        pk="id",
        not_null={"kind", "target", "key", "payload", "state", "created_at", "next_attempt_at"},
        defaults={"attempts": 0, "last_error": "", "state": "pending"},
    )
    db["outbox"].create_index(["key"], unique=True)  # one item per key, however often enqueued
    db["outbox"].create_index(["state", "target", "id"])


def _m8_ticket_times(db: sqlite_utils.Database) -> None:
    """When each ticket was created and became ready for production, for lead time
    (bot/dora.py): the tracker's times when it gives them, and the first time deploybot saw it
    ready (the fallback)."""
    db["ticket_times"].create(
        {"ticket_id": str, "created_at": str, "ready_at": str, "first_seen_ready_at": str,
         "updated_at": str},
        pk="ticket_id")


# From m9 on, migrations are portable SQL statements that both engines run as they are
# (PostgreSQL has its own DDL for m1..m8: backends/stores/postgres.py).
_M9_REPLICAS = [
    # One row per running deploybot process: who it is and when it last said it lives. A
    # process on another machine is alive while its heartbeat is fresh (bot/replicas.py).
    "CREATE TABLE replicas (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, "
    "start_marker TEXT NOT NULL DEFAULT '', version TEXT NOT NULL DEFAULT '', "
    "started_at TEXT NOT NULL, heartbeat_at TEXT NOT NULL)",
    "ALTER TABLE deployments ADD COLUMN owner_replica TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE deployments ADD COLUMN recovery_replica TEXT NOT NULL DEFAULT ''",
    # Claims that exactly one replica wins: opening a deployment's thread, resuming it once
    # its gates are approved.
    "ALTER TABLE deployments ADD COLUMN thread_claimed INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE deployments ADD COLUMN resume_claimed INTEGER NOT NULL DEFAULT 0",
    # Requests already taken (Slack trigger and event ids): a redelivery to any replica is dropped.
    "CREATE TABLE requests_seen (key TEXT PRIMARY KEY, seen_at TEXT NOT NULL)",
]

# A service on several hosts: each host's previous version, bytes and outcome (JSON).
_M10_HOSTS = ["ALTER TABLE deployments ADD COLUMN hosts TEXT NOT NULL DEFAULT ''"]

MIGRATIONS: list[Callable[[sqlite_utils.Database], None] | list[str]] = [
    _m1_initial, _m2_image_digest, _m3_schedules, _m4_evidence_and_via, _m5_image_refs,
    _m6_recovery, _m7_outbox, _m8_ticket_times, _M9_REPLICAS, _M10_HOSTS]
SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """All state. One connection guarded by a lock: front ends call in from worker threads."""

    def __init__(self, where: "str | os.PathLike | Database" = DEFAULT_PATH, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        if isinstance(where, (str, os.PathLike)):  # DEPLOYBOT_DB's forms: handlers/database_url.py
            where = SqliteDatabase(str(where))
        self.db: Database = where
        self.path = where.label  # where the state is, for messages (never a password)
        self._lock = threading.RLock()
        self._depth = 0
        self._tx_thread = 0
        self.now = clock
        # Every text the store keeps passes through this (bot/redact.py sets it at start-up):
        # configured secret values never reach the database.
        self.redact: Callable[[str], str] = lambda text: text
        self._migrate()

    # -- plumbing -----------------------------------------------------------------------------

    def _clean(self, values: dict[str, Any]) -> dict[str, Any]:
        """Every text value through self.redact before it is written."""
        return {k: self.redact(v) if isinstance(v, str) else v for k, v in values.items()}

    @contextmanager
    def transaction(self, *, relaxed: bool = False) -> Iterator[Database]:
        """Other writers (threads, processes, replicas) wait until it ends, so read-check-write
        sequences are atomic (bot/sqldb.py: BEGIN IMMEDIATE / an advisory transaction lock).
        `relaxed`: progress (check results, audit notes) that the next state change makes
        durable; on SQLite it skips its own fsync (SqliteDatabase.begin_relaxed)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.db
                finally:
                    self._depth -= 1
                return
            begin_relaxed = getattr(self.db, "begin_relaxed", None) if relaxed else None
            (begin_relaxed or self.db.begin)()
            self._depth = 1
            self._tx_thread = threading.get_ident()
            try:
                yield self.db
            except BaseException:
                self.db.rollback()
                raise
            else:
                self.db.commit()
            finally:
                self._depth = 0

    def _migrate(self) -> None:
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} has schema version {current}, newer than this deploybot "
                    f"({SCHEMA_VERSION})", hint="upgrade deploybot",
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                db.migrate_step(version, MIGRATIONS[version - 1])
            db["meta"].upsert({"key": "schema_version", "value": str(SCHEMA_VERSION)})

    @property
    def in_transaction(self) -> bool:
        """True inside this thread's `with transaction()`: no network call may happen then."""
        return self._depth > 0 and self._tx_thread == threading.get_ident()

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0])

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def reading(self, timeout: float = 2.0) -> Iterator[Any]:
        """A connection for reads that must not wait long (probes, /metrics): its own, so a
        long transaction of this process cannot hold it up, and every statement is cut off
        after `timeout` seconds. An in-memory store has only its one connection."""
        if self.path == ":memory:":
            if not self._lock.acquire(timeout=timeout):
                raise TimeoutError(f"the store was busy for {timeout:g} s")
            try:
                with self.db.reading(timeout) as conn:
                    yield conn
            finally:
                self._lock.release()
            return
        with self.db.reading(timeout) as conn:
            yield conn

    def ping(self, timeout: float = 2.0) -> int:
        """The schema version, read within `timeout` seconds (readiness probes)."""
        with self.reading(timeout) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise StateError(f"{self.path} has no schema version")
        return int(row[0])

    # -- deployments ---------------------------------------------------------------------------

    @staticmethod
    def _deployment(row: dict[str, Any]) -> Deployment:
        names = {f.name for f in fields(Deployment)}
        data = {k: v for k, v in row.items() if k in names}
        data["status"] = DeploymentStatus(data["status"])
        data["kind"] = DeploymentKind(data["kind"] or "deploy")
        for key in ("dry_run", "record_posted", "record_commented", "queued"):
            data[key] = bool(data[key])
        for key in ("created_at", "updated_at", "finished_at", "scheduled_for"):
            data[key] = _dt(data[key])
        for key in ("failure", "verification", "record", "thread_ref", "method", "lock_scope",
                    "image_digest", "break_glass", "image_ref", "previous_image_ref", "hosts"):
            data[key] = data[key] or ""
        return Deployment(**data)

    def create_deployment(self, *, ticket_id: str, service: str, version: str, environment: str,
                          requested_by: str, kind: DeploymentKind = DeploymentKind.DEPLOY,
                          dry_run: bool = False, lock_scope: str = "", method: str = "",
                          request_key: str | None = None, scheduled_for: datetime | None = None,
                          queued: bool = False, break_glass: str = "",
                          one_at_a_time: bool = False, via: str = "") -> tuple[Deployment, bool]:
        """Returns (deployment, created). A repeated request_key returns the first deployment.

        `one_at_a_time`: refuse (StateError) while the same ticket, service and environment has
        a deployment that is not finished — in the same transaction, so of two simultaneous
        requests exactly one is stored.
        """
        now = _ts(self.now())
        with self.transaction() as db:
            if request_key:
                row = db.execute(
                    "SELECT id FROM deployments WHERE request_key = ?", [request_key]
                ).fetchone()
                if row:
                    return self.deployment(row[0]), False
            if one_at_a_time:
                active = [s.value for s in OPEN_STATUSES]
                row = db.execute(
                    "SELECT id, status FROM deployments WHERE ticket_id = ? AND service = ? AND "
                    "environment = ? AND dry_run = 0 AND kind = ? AND status IN "
                    f"({','.join('?' * len(active))}) ORDER BY id LIMIT 1",
                    [ticket_id, service, environment, kind.value, *active]).fetchone()
                if row:
                    raise StateError(
                        f"{ticket_id} is already being deployed: {service} to {environment} is "
                        f"deployment #{row[0]} ({row[1].replace('_', ' ')})",
                        hint=f"follow #{row[0]} (deploybot show {row[0]}), or cancel it first")
            table = db["deployments"]
            table.insert({
                "ticket_id": ticket_id, "service": service, "version": version,
                "environment": environment, "requested_by": requested_by,
                "status": DeploymentStatus.REQUESTED.value, "kind": kind.value,
                "dry_run": int(dry_run), "lock_scope": lock_scope, "method": method,
                "request_key": request_key, "owner_pid": os.getpid(),
                "owner_start": liveness.my_marker(), "owner_replica": liveness.my_replica(),
                "created_at": now, "updated_at": now, "scheduled_for": _ts(scheduled_for),
                "queued": int(queued), "break_glass": self.redact(break_glass),
            })
            dep_id = table.last_pk
            self._event(dep_id, requested_by, "requested", via=via, detail=
                        f"{kind.value} {service}@{version} to {environment} for {ticket_id}"
                        + (" (dry run)" if dry_run else "")
                        + (f" at {_ts(scheduled_for)}" if scheduled_for else "")
                        + (" (queued)" if queued else "")
                        + (f" (break-glass: {break_glass})" if break_glass else ""))
            return self.deployment(dep_id), True

    def deployment(self, deployment_id: int) -> Deployment:
        try:
            with self._lock:  # every use of the shared connection, reads too, holds the lock
                return self._deployment(self.db["deployments"].get(deployment_id))
        except (NotFound, OverflowError):  # OverflowError: beyond SQLite's
            raise StateError(f"no deployment #{deployment_id}") from None

    def transition(self, deployment_id: int, status: DeploymentStatus, *, actor: str = "deploybot",
                   detail: str = "", via: str = "", **values: Any) -> Deployment:
        """Move a deployment along the state machine; refuses any move the design does not allow."""
        with self.transaction() as db:
            current = self.deployment(deployment_id)
            if status not in TRANSITIONS.get(current.status, frozenset()):
                raise StateError(
                    f"deployment #{deployment_id} is {current.status.value}; "
                    f"it cannot become {status.value}"
                )
            now = _ts(self.now())
            update = self._clean({"status": status.value, "updated_at": now, **values})
            if status.terminal:
                update["finished_at"] = now
            db["deployments"].update(deployment_id, update)
            self._event(deployment_id, actor, status.value, detail, via=via)
            if status.terminal:
                # In the same transaction: nobody ever sees a finished deployment holding a lock.
                self.release_locks_of(deployment_id)
            return self.deployment(deployment_id)

    def update_deployment(self, deployment_id: int, **values: Any) -> Deployment:
        with self.transaction() as db:
            db["deployments"].update(deployment_id,
                                     self._clean({**values, "updated_at": _ts(self.now())}))
            return self.deployment(deployment_id)

    def claim(self, deployment_id: int, field_name: str) -> bool:
        """Set a 0/1 flag once; True only for the caller that flipped it (exactly-once posting)."""
        assert field_name in ("record_posted", "record_commented", "thread_claimed")
        with self.transaction() as db:
            cur = db.execute(
                f"UPDATE deployments SET {field_name} = 1 WHERE id = ? AND {field_name} = 0",
                [deployment_id],
            )
            return cur.rowcount == 1

    def claim_resume(self, deployment_id: int) -> bool:
        """All its gates are approved: True for the one process (of any replica) that goes on
        with it; it becomes the deployment's owner in the same statement."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE deployments SET resume_claimed = 1, owner_pid = ?, owner_start = ?, "
                "owner_replica = ? WHERE id = ? AND status = 'awaiting_approval' "
                "AND resume_claimed = 0",
                [os.getpid(), liveness.my_marker(), liveness.my_replica(), deployment_id]
            ).rowcount == 1

    def first_request(self, key: str, keep: timedelta = timedelta(hours=1)) -> bool:
        """True the first time any replica sees `key` (a Slack trigger or event id); keys older
        than `keep` are forgotten as new ones arrive."""
        now = self.now()
        with self.transaction() as db:
            db.execute("DELETE FROM requests_seen WHERE seen_at < ?", [_ts(now - keep)])
            return db.execute("INSERT INTO requests_seen (key, seen_at) VALUES (?, ?) "
                              "ON CONFLICT (key) DO NOTHING", [key, _ts(now)]).rowcount == 1

    def deployments(self, *, service: str | None = None, environment: str | None = None,
                    statuses: set[DeploymentStatus] | None = None,
                    limit: int = 20) -> list[Deployment]:
        where, args = [], []
        if service:
            where.append("service = ?")
            args.append(service)
        if environment:
            where.append("environment = ?")
            args.append(environment)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(s.value for s in statuses)
        sql = "SELECT * FROM deployments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return [self._deployment(r) for r in self.db.query(sql, args)]

    def known_image(self, service: str, environment: str, version: str) -> str:
        """The bytes `version` was when it last ran here ("" when never recorded)."""
        with self._lock:
            row = self.db.execute(
                "SELECT ref FROM (SELECT image_ref AS ref, id FROM deployments "
                "WHERE service = ? AND environment = ? AND version = ? AND image_ref != '' "
                "AND status IN ('succeeded', 'rolled_back', 'rollback_failed', 'failed') "
                "UNION ALL SELECT previous_image_ref AS ref, id FROM deployments "
                "WHERE service = ? AND environment = ? AND previous_version = ? "
                "AND previous_image_ref != '') AS refs ORDER BY id DESC LIMIT 1",
                [service, environment, version, service, environment, version]).fetchone()
        return row[0] if row else ""

    def last_succeeded(self, service: str, environment: str,
                       before_id: int | None = None) -> Deployment | None:
        """The last deployment that left this service running a version on purpose."""
        sql = ("SELECT * FROM deployments WHERE service = ? AND environment = ? AND dry_run = 0 "
               "AND status = 'succeeded'")
        args: list[Any] = [service, environment]
        if before_id is not None:
            sql += " AND id < ?"
            args.append(before_id)
        sql += " ORDER BY id DESC LIMIT 1"
        with self._lock:
            rows = list(self.db.query(sql, args))
        return self._deployment(rows[0]) if rows else None

    # -- recovery (bot/recovery.py) ---------------------------------------------------------------

    # Waiting for a person (awaiting_approval) or for a time or a lock (scheduled or queued
    # `requested`) is not being driven by a process: those are never orphans.
    # Nor is an approved one before its resume is claimed; once claimed, its driver may die.
    _ORPHAN_SQL = (
        "(status IN ('checking', 'deploying', 'verifying', 'rolling_back') OR (status = "
        "'requested' AND scheduled_for IS NULL AND queued = 0) OR (status = "
        "'awaiting_approval' AND resume_claimed = 1) OR needs_recovery = 1)")

    def recovery_candidates(self, service: str | None = None,
                            environment: str | None = None) -> list[Deployment]:
        """Deployments that may need a recovering process (whether their owner lives is for
        claim_recovery to decide), oldest first. One cheap query when there are none."""
        sql, args = f"SELECT * FROM deployments WHERE {self._ORPHAN_SQL}", []
        if service is not None:
            sql += " AND service = ? AND environment = ?"
            args += [service, environment]
        with self._lock:
            return [self._deployment(r) for r in self.db.query(sql + " ORDER BY id", args)]

    def claim_recovery(self, deployment_id: int,
                       is_alive: Callable[[int | None, str], bool] = liveness.is_alive
                       ) -> Deployment | None:
        """Atomically make this process the one recovering the deployment, or None: its owner
        still runs, another live process holds the claim, or it no longer needs recovering."""
        me, mine, replica = os.getpid(), liveness.my_marker(), liveness.my_replica()
        with self.transaction() as db:
            row = db.execute(
                "SELECT owner_pid, owner_start, owner_replica, recovery_pid, recovery_start, "
                f"recovery_replica, status FROM deployments WHERE id = ? AND {self._ORPHAN_SQL}",
                [deployment_id]).fetchone()
            if row is None:
                return None
            owner_pid, owner_start, owner_rep, claim_pid, claim_start, claim_rep, status = row
            # a finished one marked needs_recovery has no driver any more, whoever owned it
            driven = not DeploymentStatus(status).terminal
            if driven and ((owner_pid, owner_start) == (me, mine) and owner_rep in ("", replica)
                           or self._alive(owner_rep, owner_pid, owner_start, is_alive)):
                return None
            if claim_pid and ((claim_pid, claim_start) == (me, mine)
                              and claim_rep in ("", replica)
                              or self._alive(claim_rep, claim_pid, claim_start, is_alive)):
                return None
            db["deployments"].update(deployment_id, {
                "recovery_pid": me, "recovery_start": mine, "recovery_replica": replica,
                "recovery_claimed_at": _ts(self.now())})
            ended = (f"replica {owner_rep}" if owner_rep and not liveness.on_this_host(owner_rep)
                     else f"process {owner_pid}")
            self._event(deployment_id, "deploybot", "recovery.claimed",
                        f"{'replica ' + replica if owner_rep else f'process {me}'} recovers it "
                        f"({ended} ended)")
            return self.deployment(deployment_id)

    def unrecorded(self, is_alive: Callable[[int | None, str], bool] = liveness.is_alive
                   ) -> list[Deployment]:
        """Finished rollouts whose process died between the final status and the record (the
        record and its deliveries are written in one transaction after the status): the next
        process writes them. Only rows of this version (owner_start set): older rows are
        history, never sent late."""
        with self._lock:
            rows = list(self.db.query(
                "SELECT * FROM deployments WHERE status IN ('succeeded', 'rolled_back', "
                "'rollback_failed', 'failed') AND dry_run = 0 AND record = '' "
                "AND record_posted = 0 AND owner_start != '' ORDER BY id"))
        # neither its owner nor a process recovering it (it writes the record before it lets
        # go of its claim) may still be about to write it
        return [self._deployment(r) for r in rows
                if not any(pid == os.getpid() and rep in ("", liveness.my_replica())
                           or self._alive(rep, pid, start, is_alive)
                           for rep, pid, start in (
                               (r["owner_replica"], r["owner_pid"], r["owner_start"]),
                               (r["recovery_replica"], r["recovery_pid"], r["recovery_start"]))
                           if pid)]

    def release_recovery(self, deployment_id: int, *, needs_recovery: bool | None = None) -> None:
        """The claim ends with the attempt; `needs_recovery` says whether to try again later."""
        values: dict[str, Any] = {"recovery_pid": None, "recovery_start": "",
                                  "recovery_replica": "", "recovery_claimed_at": None}
        if needs_recovery is not None:
            values["needs_recovery"] = int(needs_recovery)
        with self.transaction() as db:
            db["deployments"].update(deployment_id, values)

    def unresolved(self, service: str, environment: str,
                   is_alive: Callable[[int | None, str], bool] = liveness.is_alive
                   ) -> list[Deployment]:
        """Rollouts of this service whose process died and that are not recovered yet (a live
        owner, even a hung one, is not interrupted: its lock expires instead)."""
        with self._lock:
            rows = list(self.db.query(
                "SELECT * FROM deployments WHERE service = ? AND environment = ? AND "
                "(needs_recovery = 1 OR status IN ('deploying', 'verifying', 'rolling_back')) "
                "ORDER BY id", [service, environment]))
        return [self._deployment(r) for r in rows
                if r["needs_recovery"] or not self._alive(r["owner_replica"], r["owner_pid"],
                                                          r["owner_start"], is_alive)]

    def unresolved_failures(self) -> list[tuple[Deployment, bool]]:
        """What `status` must not hide: deployments still marked needs_recovery (a rollback that
        failed while the engine was down: the next process retries it), and a failed rollback
        that is still the last rollout of its service (it needs a person). Each with whether
        a later process retries it."""
        with self._lock:
            return [(self._deployment(r), bool(r["needs_recovery"])) for r in self.db.query(
                "SELECT * FROM deployments d WHERE needs_recovery = 1 OR (status = "
                "'rollback_failed' AND dry_run = 0 AND id = (SELECT MAX(id) FROM deployments e "
                "WHERE e.service = d.service AND e.environment = d.environment AND "
                "e.dry_run = 0 AND e.status IN ('succeeded', 'rolled_back', 'rollback_failed', "
                "'failed', 'interrupted'))) ORDER BY id")]

    def scheduled(self) -> list[Deployment]:
        """Deployments waiting for their time, earliest first."""
        with self._lock:
            return [self._deployment(r) for r in self.db.query(
                "SELECT * FROM deployments WHERE status = 'requested' AND scheduled_for IS NOT NULL "
                "ORDER BY scheduled_for, id")]

    def queue(self, scope: str | None = None) -> list[Deployment]:
        """Deployments waiting for a lock, first come first served (by scope when given)."""
        sql = "SELECT * FROM deployments WHERE status = 'requested' AND queued = 1"
        args: list[Any] = []
        if scope is not None:
            sql += " AND lock_scope = ?"
            args.append(scope)
        with self._lock:
            return [self._deployment(r) for r in self.db.query(sql + " ORDER BY id", args)]

    def adopt(self, deployment_id: int, *, expect: DeploymentStatus | None = None) -> bool:
        """This process now drives the deployment (a gate decision or its time resumes it).
        With `expect`: only while it still has that status -- of two replicas starting the same
        waiting deployment, one adopts it (True), the other leaves it (False)."""
        sql = "UPDATE deployments SET owner_pid = ?, owner_start = ?, owner_replica = ? WHERE id = ?"
        args: list[Any] = [os.getpid(), liveness.my_marker(), liveness.my_replica(), deployment_id]
        if expect is not None:
            sql += " AND status = ?"
            args.append(expect.value)
        with self.transaction() as db:
            return db.execute(sql, args).rowcount == 1

    # -- replicas (bot/replicas.py) ---------------------------------------------------------------

    replica_stale_seconds = 15.0  # no heartbeat for this long: the replica is dead

    def replica_beat(self, replica: str, *, version: str = "") -> None:
        """`replica` lives (first call registers it)."""
        now = _ts(self.now())
        host, pid, marker = liveness.replica_parts(replica)
        with self.transaction() as db:
            if db.execute("UPDATE replicas SET heartbeat_at = ? WHERE id = ?",
                          [now, replica]).rowcount == 0:
                db["replicas"].insert({"id": replica, "host": host, "pid": pid,
                                       "start_marker": marker, "version": version,
                                       "started_at": now, "heartbeat_at": now})

    def replica_gone(self, replica: str) -> None:
        """A clean stop: nobody needs to wait for its heartbeat to go stale."""
        with self.transaction() as db:
            db.execute("DELETE FROM replicas WHERE id = ?", [replica])

    def replicas(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.query("SELECT * FROM replicas ORDER BY started_at, id")
        stale = self.now() - timedelta(seconds=self.replica_stale_seconds)
        for r in rows:
            r["alive"] = _dt(r["heartbeat_at"]) >= stale
        return rows

    def forget_stale_replicas(self, older_than: timedelta = timedelta(hours=1)) -> int:
        """Rows of replicas long dead (every restart is a new replica); their deployments are
        judged dead either way: no row, no heartbeat."""
        with self.transaction() as db:
            return db.execute("DELETE FROM replicas WHERE heartbeat_at < ?",
                              [_ts(self.now() - older_than)]).rowcount

    def _alive(self, replica: str | None, pid: int | None, marker: str | None,
               is_alive: Callable[[int | None, str], bool]) -> bool:
        """Does the process that owns (or recovers) a deployment still run? On this machine the
        process table says it at once; on another, its heartbeat in the replicas table does."""
        if replica and not liveness.on_this_host(replica):
            with self._lock:
                row = self.db.execute("SELECT heartbeat_at FROM replicas WHERE id = ?",
                                      [replica]).fetchone()
            stale = self.now() - timedelta(seconds=self.replica_stale_seconds)
            return row is not None and _dt(row[0]) >= stale
        return is_alive(pid, marker or "")

    # -- checks ---------------------------------------------------------------------------------

    def save_check(self, check: CheckResult) -> CheckResult:
        check.updated_at = self.now()
        with self.transaction(relaxed=True) as db:
            db["checks"].upsert(self._clean({
                "deployment_id": check.deployment_id, "name": check.name, "title": check.title,
                "position": check.position, "status": check.status.value, "reason": check.reason,
                "updated_at": _ts(check.updated_at), "evidence": check.evidence,
            }), pk=("deployment_id", "name"))
            if check.status in (CheckStatus.PASSED, CheckStatus.FAILED, CheckStatus.SKIPPED):
                self._event(check.deployment_id, "deploybot", f"check.{check.status.value}",
                            f"{check.title}: {check.reason}")
        return check

    def checks(self, deployment_id: int) -> list[CheckResult]:
        with self._lock:
            rows = self.db.query(
                "SELECT * FROM checks WHERE deployment_id = ? ORDER BY position", [deployment_id]
            )
            return [CheckResult(deployment_id=r["deployment_id"], name=r["name"], title=r["title"],
                                position=r["position"], status=CheckStatus(r["status"]),
                                reason=r["reason"] or "", updated_at=_dt(r["updated_at"]),
                                evidence=r.get("evidence") or "")
                    for r in rows]

    # -- gates ----------------------------------------------------------------------------------

    @staticmethod
    def _gate(row: dict[str, Any]) -> Gate:
        return Gate(id=row["id"], deployment_id=row["deployment_id"], kind=GateKind(row["kind"]),
                    prompt=row["prompt"] or "", status=GateStatus(row["status"]),
                    decided_by=row["decided_by"], decided_at=_dt(row["decided_at"]),
                    reason=row["reason"] or "", created_at=_dt(row["created_at"]))

    def create_gate(self, deployment_id: int, kind: GateKind, prompt: str) -> Gate:
        with self.transaction() as db:
            gate_id = db["gates"].insert({
                "deployment_id": deployment_id, "kind": kind.value, "prompt": self.redact(prompt),
                "status": GateStatus.PENDING.value, "created_at": _ts(self.now()),
            }).last_pk
            self._event(deployment_id, "deploybot", "gate.requested", kind.value)
            return self.gate(gate_id)

    def gate(self, gate_id: int) -> Gate:
        try:
            with self._lock:
                return self._gate(self.db["gates"].get(gate_id))
        except (NotFound, OverflowError):
            raise StateError(f"no gate #{gate_id}") from None

    def gates(self, deployment_id: int, *, kind: GateKind | None = None) -> list[Gate]:
        sql, args = "SELECT * FROM gates WHERE deployment_id = ?", [deployment_id]
        if kind:
            sql += " AND kind = ?"
            args.append(kind.value)
        with self._lock:
            return [self._gate(r) for r in self.db.query(sql + " ORDER BY id", args)]

    def decide_gate(self, gate_id: int, *, approved: bool, decided_by: str,
                    reason: str = "", via: str = "") -> tuple[Gate, bool]:
        """Returns (gate, decided_now). A gate is decided once; later clicks change nothing."""
        with self.transaction() as db:
            gate = self.gate(gate_id)
            if gate.status is not GateStatus.PENDING:
                return gate, False
            status = GateStatus.APPROVED if approved else GateStatus.REJECTED
            db["gates"].update(gate_id, {"status": status.value, "decided_by": decided_by,
                                         "decided_at": _ts(self.now()),
                                         "reason": self.redact(reason)})
            self._event(gate.deployment_id, decided_by, f"gate.{status.value}",
                        f"{gate.kind.value}{': ' + reason if reason else ''}", via=via)
            return self.gate(gate_id), True

    # -- locks ----------------------------------------------------------------------------------

    @staticmethod
    def _lock_row(row: dict[str, Any]) -> Lock:
        return Lock(scope=row["scope"], deployment_id=row["deployment_id"], holder=row["holder"],
                    reason=row["reason"] or "", acquired_at=_dt(row["acquired_at"]),
                    expires_at=_dt(row.get("expires_at")),
                    heartbeat_at=_dt(row.get("heartbeat_at")))

    def acquire_lock(self, scope: str, *, holder: str, reason: str,
                     deployment_id: int | None = None, ttl: float | None = None,
                     via: str = "") -> tuple[bool, Lock]:
        """Atomic: (True, lock) when taken now or already ours; (False, holder's lock) otherwise.

        `ttl` (seconds): the lock expires unless its deployment heartbeats; an expired lock is
        released here (and said so in the audit trail) and counts as free.
        """
        with self.transaction() as db:
            self._expire_locks(scope)
            lock = self.lock(scope)
            if lock:
                mine = deployment_id is not None and lock.deployment_id == deployment_id
                return mine, lock
            now = self.now()
            db["locks"].insert({"scope": scope, "deployment_id": deployment_id, "holder": holder,
                                "reason": self.redact(reason), "acquired_at": _ts(now),
                                "heartbeat_at": _ts(now) if ttl else None,
                                "expires_at": _ts(now + timedelta(seconds=ttl)) if ttl else None})
            self._event(deployment_id, holder, "lock.acquired", f"{scope}: {reason}", via=via)
            return True, self.lock(scope)

    def heartbeat(self, deployment_id: int, ttl: float) -> int:
        """The running deployment is alive: push its locks' expiry `ttl` seconds ahead. Relaxed:
        a heartbeat lost with the machine only lets the lock expire sooner, as it should."""
        now = self.now()
        with self.transaction(relaxed=True) as db:
            cur = db.execute(
                "UPDATE locks SET heartbeat_at = ?, expires_at = ? "
                "WHERE deployment_id = ? AND expires_at IS NOT NULL",
                [_ts(now), _ts(now + timedelta(seconds=ttl)), deployment_id])
            return cur.rowcount

    def expire_locks(self, scope: str | None = None) -> list[tuple[Lock, str]]:
        """Release every expired lock (or `scope`'s); returns each with what happened, in words."""
        with self.transaction():
            return self._expire_locks(scope)

    def _expire_locks(self, scope: str | None) -> list[tuple[Lock, str]]:
        # A deployment waiting for a person does not heartbeat: its lock waits with it.
        sql = ("SELECT l.* FROM locks l LEFT JOIN deployments d ON d.id = l.deployment_id "
               "WHERE l.expires_at IS NOT NULL AND l.expires_at < ? "
               "AND (d.status IS NULL OR d.status != 'awaiting_approval')")
        args: list[Any] = [_ts(self.now())]
        if scope is not None:
            sql += " AND l.scope = ?"
            args.append(scope)
        said = []
        for row in list(self.db.query(sql, args)):
            lock = self._lock_row(row)
            self.db["locks"].delete(lock.scope)
            who = f"#{lock.deployment_id}" if lock.deployment_id else lock.holder
            text = (f"lock of {who} on {lock.scope} expired at "
                    f"{lock.expires_at:%Y-%m-%d %H:%M:%S UTC} (no heartbeat since "
                    f"{(lock.heartbeat_at or lock.acquired_at):%Y-%m-%d %H:%M:%S UTC}), released")
            self._event(lock.deployment_id, "deploybot", "lock.expired", text)
            said.append((lock, text))
        return said

    def lock(self, scope: str) -> Lock | None:
        with self._lock:
            rows = list(self.db.query("SELECT * FROM locks WHERE scope = ?", [scope]))
        return self._lock_row(rows[0]) if rows else None

    def locks(self) -> list[Lock]:
        with self._lock:
            return [self._lock_row(r) for r in self.db.query("SELECT * FROM locks ORDER BY scope")]

    def release_lock(self, scope: str, *, actor: str, reason: str, via: str = "",
                     expect: Lock | None = None) -> Lock | None:
        """Release `scope`; with `expect`, only if it is still that lock (else None)."""
        with self.transaction() as db:
            lock = self.lock(scope)
            if lock is None:
                return None
            if expect is not None and (lock.deployment_id, lock.holder, lock.acquired_at) != \
                    (expect.deployment_id, expect.holder, expect.acquired_at):
                return None
            db["locks"].delete(scope)
            self._event(lock.deployment_id, actor, "lock.released", f"{scope}: {reason}", via=via)
            return lock

    def release_locks_of(self, deployment_id: int) -> None:
        with self.transaction() as db:
            for row in list(db.query("SELECT scope FROM locks WHERE deployment_id = ?",
                                     [deployment_id])):
                db["locks"].delete(row["scope"])
                self._event(deployment_id, "deploybot", "lock.released", row["scope"])

    # -- audit trail ------------------------------------------------------------------------------

    def _event(self, deployment_id: int | None, actor: str, kind: str, detail: str = "",
               via: str = "") -> None:
        self.db["events"].insert({"at": _ts(self.now()), "deployment_id": deployment_id,
                                  "actor": actor, "kind": kind, "detail": self.redact(detail),
                                  "via": via})

    def record_event(self, deployment_id: int | None, actor: str, kind: str,
                     detail: str = "", via: str = "") -> None:
        with self.transaction(relaxed=True):
            self._event(deployment_id, actor, kind, detail, via=via)

    def events(self, deployment_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            if deployment_id is None:
                return list(self.db.query("SELECT * FROM events ORDER BY id DESC LIMIT ?", [limit]))
            return list(self.db.query("SELECT * FROM events WHERE deployment_id = ? ORDER BY id",
                                      [deployment_id]))

    def audit_trail(self, *, since: datetime | None = None,
                    deployment_id: int | None = None) -> list[dict[str, Any]]:
        """Every event (or one deployment's, or those since a time), oldest first: exports."""
        where, args = [], []
        if since is not None:
            where.append("at >= ?")
            args.append(_ts(since))
        if deployment_id is not None:
            where.append("deployment_id = ?")
            args.append(deployment_id)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            return list(self.db.query(sql + " ORDER BY id", args))

    # -- DORA figures (bot/dora.py) --------------------------------------------------------------

    def note_ticket_ready(self, ticket_id: str, *, created_at: datetime | None,
                          ready_at: datetime | None) -> None:
        """The checklist saw the ticket ready for production: keep the tracker's times (when it
        gives them) and the first time deploybot saw it ready. The first ones stay: a ticket
        sent back and made ready again keeps its first readiness."""
        now = _ts(self.now())
        with self.transaction() as db:
            row = db.execute("SELECT created_at, ready_at, first_seen_ready_at FROM ticket_times "
                             "WHERE ticket_id = ?", [ticket_id]).fetchone()
            old_created, old_ready, first_seen = row if row else (None, None, None)
            db["ticket_times"].upsert({
                "ticket_id": ticket_id, "created_at": old_created or _ts(created_at),
                "ready_at": old_ready or _ts(ready_at),
                "first_seen_ready_at": first_seen or now, "updated_at": now}, pk="ticket_id")

    def dora_rows(self) -> list[dict[str, Any]]:
        """Every real deployment with what bot/dora.py needs: whether it reached the backend
        (it went through `deploying`) and its ticket's times."""
        with self._lock:
            rows = list(self.db.query(
                "SELECT d.id, d.ticket_id, d.service, d.environment, d.kind, d.status, "
                "d.created_at, d.finished_at, EXISTS (SELECT 1 FROM events e WHERE "
                "e.deployment_id = d.id AND e.kind = 'deploying') AS reached_backend, "
                "t.created_at AS ticket_created_at, t.ready_at AS ticket_ready_at, "
                "t.first_seen_ready_at AS ticket_first_seen_ready_at FROM deployments d "
                "LEFT JOIN ticket_times t ON t.ticket_id = d.ticket_id "
                "WHERE d.dry_run = 0 ORDER BY d.id"))
        for r in rows:
            for key in ("created_at", "finished_at", "ticket_created_at", "ticket_ready_at",
                        "ticket_first_seen_ready_at"):
                r[key] = _dt(r[key])
            r["reached_backend"] = bool(r["reached_backend"])
        return rows
