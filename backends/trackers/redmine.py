"""Redmine (REST, JSON): journals with notes are the comments, statuses resolved by name.

Redmine quirks handled here: journals come in one response (no paging); a transition the workflow
forbids is answered 204 and silently ignored, so every transition is re-read; an invalid API key
on a public project reads as anonymous, so credentials are checked with /users/current.json.
The record is posted as markdown: the instance must use the common_mark text formatting.
"""

from __future__ import annotations

import re
from typing import Any, Mapping
from urllib.parse import urlsplit

from bot.errors import InputError, TrackerError
from bot.models import Comment, Ticket

from backends.trackers import markup
from backends.trackers.base import HttpTracker, RawComment, sort_oldest_first
from backends.trackers.http import Http, base_url, parse_time, secret

_REF = re.compile(r"#?(\d+)")


class Redmine(HttpTracker):
    name = "Redmine"

    def __init__(self, http: Http, url: str, project: str = "") -> None:
        super().__init__(http)
        self.url = url
        self.project = project
        self._statuses: dict[str, tuple[int, str]] | None = None

    def parse_ref(self, text: str) -> str:
        value = (text or "").strip()
        if value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            m = re.search(r"/issues/(\d+)/?$", parts.path)
            if not m or parts.netloc != urlsplit(self.url).netloc:
                raise InputError(f"{value!r} is not an issue URL of this Redmine ({self.url})",
                                 hint=f"use {self.url}/issues/NUMBER or just the number")
            return m.group(1)
        m = _REF.fullmatch(value)
        if not m:
            raise InputError(f"{value!r} is not a Redmine issue id", hint="use the number, e.g. 42 or #42")
        return m.group(1)

    def _issue(self, tid: str, journals: bool) -> dict:
        params = {"include": "journals"} if journals else {}
        data = self.http.json("GET", f"/issues/{tid}.json", params=params, ticket=f"#{tid}",
                              what="read the issue")
        return data["issue"]

    def _ticket(self, issue: dict) -> Ticket:
        return Ticket(
            id=str(issue["id"]),
            title=issue.get("subject", ""),
            status=issue["status"]["name"],
            url=f"{self.url}/issues/{issue['id']}",
            labels=[],  # Redmine has no labels
            description=issue.get("description") or "",
            fields={k: str(issue[k]["name"]) for k in ("tracker", "priority", "project")
                    if isinstance(issue.get(k), dict)},
        )

    def get_ticket(self, ticket_id: str) -> Ticket:
        return self._ticket(self._issue(self.parse_ref(ticket_id), journals=False))

    def gate_data(self, ticket_id: str) -> tuple[Ticket, list[Comment]]:
        issue = self._issue(self.parse_ref(ticket_id), journals=True)  # one call carries both
        return self._ticket(issue), [r.comment for r in self._journals(issue)]

    def _read_comments(self, ticket_id: str) -> list[RawComment]:
        return self._journals(self._issue(ticket_id, journals=True))

    @staticmethod
    def _journals(issue: dict) -> list[RawComment]:
        raws = []
        for j in issue.get("journals") or []:
            notes = j.get("notes") or ""
            if not notes.strip():
                continue  # a field change without a note is not a comment
            user = j.get("user") or {}
            raws.append(RawComment(
                Comment(id=str(j["id"]), author=str(user.get("id", "")),
                        author_name=user.get("name", ""), body=markup.strip_markers(notes),
                        created_at=parse_time(j["created_on"])),
                markup.markers(notes),
            ))
        return sort_oldest_first(raws)

    def _post_comment(self, ticket_id: str, markdown: str, key: str) -> None:
        self.http.request("PUT", f"/issues/{ticket_id}.json",
                          json={"issue": {"notes": markup.with_marker(markdown, key)}},
                          ticket=f"#{ticket_id}", idempotent=False, what="add a note")

    def _status_ids(self) -> dict[str, tuple[int, str]]:
        if self._statuses is None:
            data = self.http.json("GET", "/issue_statuses.json", what="list issue statuses")
            self._statuses = {s["name"].casefold(): (s["id"], s["name"]) for s in data["issue_statuses"]}
        return self._statuses

    def transition(self, ticket_id: str, status: str) -> None:
        tid = self.parse_ref(ticket_id)
        statuses = self._status_ids()
        if status.casefold() not in statuses:
            names = ", ".join(repr(name) for _, name in statuses.values())
            raise TrackerError(f"Redmine has no issue status {status!r} (ticket #{tid})",
                               hint=f"use one of {names} or create it in Administration » Issue statuses")
        before = self.get_ticket(tid).status
        if before.casefold() == status.casefold():
            return
        self.http.request("PUT", f"/issues/{tid}.json",
                          json={"issue": {"status_id": statuses[status.casefold()][0]}},
                          ticket=f"#{tid}", what=f"set the status to {status!r}")
        # Redmine answers 204 even when the workflow ignored the change.
        self._moved_or_fail(
            tid, status, before,
            hint=f"the workflow does not let the API user's role move {before!r} -> {status!r}: "
                 "allow it in Administration » Workflow, or move the issue by hand",
        )

    def add_labels(self, ticket_id: str, labels: list[str]) -> None:
        raise TrackerError(f"Redmine has no labels (ticket #{self.parse_ref(ticket_id)})",
                           hint="remove tracker labels from the configuration for Redmine")

    def check_credentials(self) -> None:
        data = self.http.json("GET", "/users/current.json", what="check the API key")
        if not (data or {}).get("user", {}).get("id"):
            raise TrackerError("Redmine did not recognise deploybot's API key",
                               hint=f"check the key in environment variable {self.http.token_env}")
        if self.project:
            self.http.json("GET", f"/projects/{self.project}.json", what=f"read project {self.project!r}")


def build(settings: Mapping[str, Any], environ: Mapping[str, str]) -> Redmine:
    url = base_url(settings, "Redmine")
    key = secret(settings, environ, "Redmine")
    http = Http(tracker="Redmine", url=url, headers={"X-Redmine-API-Key": key},
                settings=settings, secret_values=(key,))
    return Redmine(http, url, str(settings.get("project", "")))
