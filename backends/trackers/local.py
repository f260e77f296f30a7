"""The embedded tracker: tickets, comments and statuses in deploybot's own store (SQLite or
PostgreSQL).

There is no user registry: a comment's author is the login as typed (`--author`), and that
login is both the account id and the name. Comments come in rowid order (creation order).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Mapping

from bot.errors import InputError, TrackerError
from bot.models import Account, Comment, Ticket
from bot.store import Store


TICKET_RE = re.compile(r"^(?P<project>[A-Z][A-Z0-9_]{0,19})-(?P<number>[1-9][0-9]{0,8})$")
PROJECT_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,19}$")
SCHEMA_KEY = "local_tracker_schema"
LOGIN_RE = re.compile(r"[A-Za-z0-9._@-]+")
BOT = Account("deploybot", "deploybot", "deploybot")  # who the local tracker's own comments are by
STATUSES = ["Open", "In Progress", "In Review", "QA", "Ready for Production", "Deployed", "Closed"]


def _migrate(store: Store) -> None:
    with store.transaction() as db:
        row = db.execute("SELECT value FROM meta WHERE key = ?", [SCHEMA_KEY]).fetchone()
        if row and int(row[0]) >= 1:
            return
        db.execute("CREATE TABLE tickets (id TEXT PRIMARY KEY, project TEXT, number INTEGER, "
                   "title TEXT, status TEXT, description TEXT, fields TEXT, labels TEXT, "
                   "created_at TEXT)")
        db.execute(f"CREATE TABLE ticket_comments (id {db.id_column}, ticket_id TEXT "
                   "REFERENCES tickets(id), author TEXT, body TEXT, key TEXT, created_at TEXT)")
        db.execute("CREATE INDEX idx_ticket_comments_ticket_id_id ON ticket_comments "
                   "(ticket_id, id)")
        db["meta"].upsert({"key": SCHEMA_KEY, "value": "1"}, pk="key")


class LocalTracker:
    name = "local"

    def __init__(self, store: Store) -> None:
        self.store = store
        _migrate(store)

    def parse_ref(self, text: str) -> str:
        ref = text.strip().lstrip("#").upper()
        if not TICKET_RE.match(ref):
            raise InputError(f"{text!r} is not a ticket id", hint="like DEMO-42")
        return ref

    def _row(self, ticket_id: str) -> dict:
        rows = list(self.store.db.query("SELECT * FROM tickets WHERE id = ?", [ticket_id]))
        if not rows:
            raise TrackerError(f"local tracker: ticket {ticket_id} does not exist",
                               hint="create it with `deploybot ticket create`")
        return rows[0]

    def get_ticket(self, ticket_id: str) -> Ticket:
        ticket_id = self.parse_ref(ticket_id)  # what a person typed, as the other trackers take it
        with self.store.transaction():
            row = self._row(ticket_id)
        return Ticket(id=row["id"], title=row["title"], status=row["status"],
                      url=f"local:{row['id']}", labels=json.loads(row["labels"] or "[]"),
                      description=row["description"] or "",
                      fields=json.loads(row["fields"] or "{}"),
                      created_at=datetime.fromisoformat(row["created_at"]))

    def comments(self, ticket_id: str) -> list[Comment]:
        ticket_id = self.parse_ref(ticket_id)
        with self.store.transaction() as db:
            self._row(ticket_id)
            rows = list(db.query("SELECT * FROM ticket_comments WHERE ticket_id = ? ORDER BY id",
                                 [ticket_id]))
        return [Comment(id=str(r["id"]), author=r["author"], author_name=r["author"],
                        body=r["body"], created_at=datetime.fromisoformat(r["created_at"]))
                for r in rows]

    def gate_data(self, ticket_id: str) -> tuple[Ticket, list[Comment]]:
        return self.get_ticket(ticket_id), self.comments(ticket_id)

    def changes_since(self, ticket_id: str, seen: list[Comment]) -> tuple[Ticket, list[Comment]]:
        return self.gate_data(ticket_id)  # one local query: nothing to save

    def add_comment(self, ticket_id: str, markdown: str, *, key: str = "",
                    author: str = "deploybot") -> str:
        ticket_id = self.parse_ref(ticket_id)
        with self.store.transaction() as db:
            self._row(ticket_id)
            if key:
                existing = db.execute(
                    "SELECT id FROM ticket_comments WHERE ticket_id = ? AND key = ?",
                    [ticket_id, key]).fetchone()
                if existing:
                    return str(existing[0])
            return str(db["ticket_comments"].insert({
                "ticket_id": ticket_id, "author": author, "body": self.store.redact(markdown),
                "key": key or None,
                "created_at": self.store.now().astimezone(timezone.utc).isoformat(),
            }).last_pk)

    def transition(self, ticket_id: str, status: str, *, only_from: str = "") -> str:
        canonical = next((s for s in STATUSES if s.casefold() == status.strip().casefold()), None)
        if canonical is None:
            raise TrackerError(f"local tracker: {status!r} is not a status",
                               hint=f"statuses: {', '.join(STATUSES)}")
        # here, not at the top: base.py loads the HTTP trackers' httpx, which `status` never needs
        from backends.trackers.base import stays

        ticket_id = self.parse_ref(ticket_id)
        with self.store.transaction() as db:  # the check and the move together
            before = self._row(ticket_id)["status"]
            if not stays(before, canonical, only_from):
                db["tickets"].update(ticket_id, {"status": canonical})
        return before

    def add_labels(self, ticket_id: str, labels: list[str]) -> None:
        ticket_id = self.parse_ref(ticket_id)
        with self.store.transaction() as db:
            current = json.loads(self._row(ticket_id)["labels"] or "[]")
            merged = current + [label for label in labels if label not in current]
            db["tickets"].update(ticket_id, {"labels": json.dumps(merged)})

    def check_credentials(self) -> None:
        return None  # no credentials: the tracker is deploybot's own database

    def current_account(self) -> Account:
        return BOT

    def resolve_account(self, ref: str) -> Account:
        login = (ref or "").strip()
        if not LOGIN_RE.fullmatch(login):
            raise TrackerError(f"local tracker: {ref!r} in people: is not a login",
                               hint="use letters, digits and . _ @ - only, as typed with --author")
        return Account(login, login, login)

    def create_ticket(self, title: str, *, project: str = "DEMO", status: str = "Open",
                      description: str = "", fields: Mapping[str, str] | None = None,
                      ticket_id: str | None = None) -> str:
        if not title.strip():
            raise InputError("a ticket needs a title")
        if ticket_id:
            ticket_id = self.parse_ref(ticket_id)
            m = TICKET_RE.match(ticket_id)
            assert m
            project, number = m.group("project"), int(m.group("number"))
        elif not PROJECT_RE.match(project):
            raise InputError(f"{project!r} is not a project key", hint="upper case, like DEMO")
        canonical = next((s for s in STATUSES if s.casefold() == status.casefold()), None)
        if canonical is None:
            raise InputError(f"{status!r} is not a status", hint=f"statuses: {', '.join(STATUSES)}")
        with self.store.transaction() as db:
            if ticket_id is None:
                row = db.execute("SELECT MAX(number) FROM tickets WHERE project = ?",
                                 [project]).fetchone()
                number = (row[0] or 0) + 1
                ticket_id = f"{project}-{number}"
            elif db.execute("SELECT 1 FROM tickets WHERE id = ?", [ticket_id]).fetchone():
                raise InputError(f"{ticket_id} already exists")
            db["tickets"].insert({
                "id": ticket_id, "project": project, "number": number,
                "title": self.store.redact(title.strip()), "status": canonical,
                "description": self.store.redact(description),
                "fields": self.store.redact(json.dumps(dict(fields or {}))),
                "labels": "[]", "created_at": self.store.now().isoformat(),
            })
        return ticket_id


def build(settings: Mapping, environ: Mapping[str, str], *, store: Store) -> LocalTracker:
    return LocalTracker(store)
