"""The outbox table (migration m7): what waits to be told, and which deliverer holds it.

A deliverer claims one item at a time with a lease (owner + lease_until) inside BEGIN
IMMEDIATE (or PostgreSQL's advisory transaction lock), so two processes never hold the same item; an item whose deliverer died is claimable
again when its lease ends. Only the oldest undelivered item of a target (`ticket:ID`,
`thread:DEPLOYMENT`, ...) can be claimed: a failing head holds back the rest of its target only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from bot.store import Store

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
ERROR_CHARS = 500  # a last error is for people; a whole HTML error page is not


def iso(value: datetime) -> str:
    # One fixed width, so the stored texts compare in time order inside SQL.
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class OutboxItem:
    id: int
    deployment_id: int | None
    kind: str
    target: str
    key: str
    payload: dict[str, Any]
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_error: str
    delivered_at: datetime | None
    stuck_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "OutboxItem":
        return cls(id=row["id"], deployment_id=row["deployment_id"], kind=row["kind"],
                   target=row["target"], key=row["key"], payload=json.loads(row["payload"]),
                   state=row["state"], attempts=row["attempts"] or 0,
                   created_at=_dt(row["created_at"]),
                   next_attempt_at=_dt(row["next_attempt_at"]),
                   last_error=row["last_error"] or "", delivered_at=_dt(row["delivered_at"]),
                   stuck_at=_dt(row["stuck_at"]))


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v, redact) for k, v in value.items()}
    return value


class OutboxTable:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _one(self, item_id: int) -> OutboxItem:
        return OutboxItem.from_row(self.store.db["outbox"].get(item_id))

    def add(self, *, deployment_id: int | None, kind: str, target: str, key: str,
            payload: dict[str, Any]) -> bool:
        """Store one item (joins the caller's transaction); False when `key` is stored already."""
        now = iso(self.store.now())
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT INTO outbox (deployment_id, kind, target, key, payload, state, "
                "attempts, created_at, next_attempt_at, last_error) "
                "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, '') ON CONFLICT (key) DO NOTHING",
                [deployment_id, kind, target, key,
                 json.dumps(_redacted(payload, self.store.redact)), PENDING, now, now])
            return cur.rowcount == 1

    def claim(self, owner: str, lease_seconds: float, kinds: Iterable[str], *,
              targets: Iterable[str] | None = None,
              skip_targets: Iterable[str] = ()) -> OutboxItem | None:
        """The oldest due item that heads its target, leased to `owner`; None when none is due."""
        kinds = list(kinds)
        if not kinds:
            return None
        now = self.store.now()
        sql = ("SELECT o.id FROM outbox o WHERE o.state = ? AND o.next_attempt_at <= ? "
               "AND (o.lease_until IS NULL OR o.lease_until < ?) "
               f"AND o.kind IN ({','.join('?' * len(kinds))}) "
               "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.target = o.target "
               "AND p.state = ? AND p.id < o.id)")
        args: list[Any] = [PENDING, iso(now), iso(now), *kinds, PENDING]
        if targets is not None:
            targets = list(targets)
            if not targets:
                return None
            sql += f" AND o.target IN ({','.join('?' * len(targets))})"
            args += targets
        skip = list(skip_targets)
        if skip:
            sql += f" AND o.target NOT IN ({','.join('?' * len(skip))})"
            args += skip
        with self.store.transaction() as db:
            row = db.execute(sql + " ORDER BY o.id LIMIT 1", args).fetchone()
            if row is None:
                return None
            db.execute("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                       [owner, iso(now + timedelta(seconds=lease_seconds)), row[0]])
            return self._one(row[0])

    def _finish(self, item: OutboxItem, owner: str, values: dict[str, Any]) -> bool:
        sets = ", ".join(f"{k} = ?" for k in values)
        cur = self.store.db.execute(
            f"UPDATE outbox SET {sets}, lease_owner = NULL, lease_until = NULL "
            "WHERE id = ? AND lease_owner = ? AND state = ?",
            [*values.values(), item.id, owner, PENDING])
        return cur.rowcount == 1

    def delivered(self, item: OutboxItem, owner: str, detail: str,
                  then: Callable[[], None] | None = None) -> bool:
        """Mark it delivered (and run `then`) in one transaction; False when the lease was lost."""
        values = {"state": DELIVERED, "delivered_at": iso(self.store.now())}
        return self._settle(item, owner, values, "outbox.delivered", detail, then)

    def retry(self, item: OutboxItem, owner: str, error: str, at: datetime,
              detail: str | None) -> bool:
        """Failed for now: try again at `at`. `detail`: the audit line (None: say nothing)."""
        with self.store.transaction():
            done = self._finish(item, owner, {"attempts": item.attempts + 1,
                                              "next_attempt_at": iso(at),
                                              "last_error": self._error(error)})
            if done and detail is not None:
                self.store.record_event(item.deployment_id, "deploybot", "outbox.retrying", detail)
            return done

    def failed(self, item: OutboxItem, owner: str, error: str, detail: str,
               then: Callable[[], None] | None = None) -> bool:
        return self._settle(item, owner, {"state": FAILED, "last_error": self._error(error)},
                            "outbox.failed", detail, then)

    def _settle(self, item: OutboxItem, owner: str, values: dict, kind: str, detail: str,
                then: Callable[[], None] | None) -> bool:
        """End an attempt for good (and run `then`) in one transaction; False when the lease
        was lost. The store redacts the audit line."""
        with self.store.transaction():
            done = self._finish(item, owner, {**values, "attempts": item.attempts + 1})
            if done:
                if then is not None:
                    then()
                self.store.record_event(item.deployment_id, "deploybot", kind, detail)
            return done

    def _error(self, error: str) -> str:
        text = self.store.redact(" ".join(error.split()))
        return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 1] + "…"

    def mark_stuck(self, item: OutboxItem, detail: str) -> bool:
        """Once per item: True for the caller that marked it (it raises the one alert)."""
        with self.store.transaction() as db:
            cur = db.execute("UPDATE outbox SET stuck_at = ? WHERE id = ? AND stuck_at IS NULL "
                             "AND state = ?", [iso(self.store.now()), item.id, PENDING])
            if cur.rowcount == 1:
                self.store.record_event(item.deployment_id, "deploybot", "outbox.stuck",
                                        self.store.redact(detail))
            return cur.rowcount == 1

    def stuck(self, created_before: datetime, exclude_key_prefix: str) -> list[OutboxItem]:
        with self.store._lock:
            rows = list(self.store.db.query(
                "SELECT * FROM outbox WHERE state = ? AND stuck_at IS NULL AND created_at < ? "
                "AND key NOT LIKE ? ORDER BY id",
                [PENDING, iso(created_before), exclude_key_prefix + "%"]))
        return [OutboxItem.from_row(r) for r in rows]

    def items(self, states: Iterable[str] = (PENDING, FAILED),
              deployment_id: int | None = None) -> list[OutboxItem]:
        states = list(states)
        sql = f"SELECT * FROM outbox WHERE state IN ({','.join('?' * len(states))})"
        args: list[Any] = list(states)
        if deployment_id is not None:
            sql += " AND deployment_id = ?"
            args.append(deployment_id)
        with self.store._lock:
            return [OutboxItem.from_row(r) for r in self.store.db.query(sql + " ORDER BY id",
                                                                         args)]

    def by_key(self, key: str) -> OutboxItem | None:
        with self.store._lock:
            rows = list(self.store.db.query("SELECT * FROM outbox WHERE key = ?", [key]))
        return OutboxItem.from_row(rows[0]) if rows else None
