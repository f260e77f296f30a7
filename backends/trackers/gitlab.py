"""GitLab Issues (REST v4). The status is a scoped label (default prefix "status::", e.g.
`status::Ready for Production`); notes are the comments, system notes ("changed the label...")
are skipped; pages come from `X-Total-Pages` (or `Link` when GitLab omits the total).

Identities: a note's author is the user's numeric id (usernames can be changed); the name, a
display name anyone can edit, is shown. A `people:` entry is a username
(GET /api/v4/users?username=, exact) or a numeric id (GET /api/v4/users/{id}).
"""

from __future__ import annotations

import re
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

from bot.errors import InputError, TrackerError
from bot.models import Account, Comment, Ticket

from backends.trackers import markup
from backends.trackers.base import (HttpTracker, RawComment, json_or_none, only_status, refused_transition,
                                    sort_oldest_first, stays)
from backends.trackers.http import Http, base_url, parse_time, secret

_PROJECT = r"[\w.-]+(?:/[\w.-]+)+"
PAGE = 100  # GitLab's maximum per_page
_USERNAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}")


class GitLab(HttpTracker):
    name = "GitLab"

    def __init__(self, http: Http, *, url: str, project: str, status_prefix: str = "status::",
                 statuses: list[str] | None = None) -> None:
        super().__init__(http)
        self.url = url
        self.project = project
        self.prefix = status_prefix
        self.statuses = statuses or []

    def parse_ref(self, text: str) -> str:
        value = (text or "").strip()
        if value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            m = re.fullmatch(rf"/({_PROJECT})/-/(?:issues|work_items)/([0-9]+)/?", parts.path)
            if parts.netloc != urlsplit(self.url).netloc or not m:
                raise InputError(f"{value!r} is not a GitLab issue URL on {self.url}",
                                 hint="use GROUP/PROJECT#42, #42 or the issue URL")
            return f"{m.group(1)}#{m.group(2)}"
        if m := re.fullmatch(rf"({_PROJECT})#([0-9]+)", value):
            return f"{m.group(1)}#{m.group(2)}"
        if (m := re.fullmatch(r"#?([0-9]+)", value)) and self.project:
            return f"{self.project}#{m.group(1)}"
        raise InputError(f"{value!r} is not a GitLab issue reference",
                         hint=f"use #42 or {self.project or 'GROUP/PROJECT'}#42")

    @staticmethod
    def _path(tid: str) -> str:
        project, iid = tid.rsplit("#", 1)
        return f"/api/v4/projects/{quote(project, safe='')}/issues/{iid}"

    def _status(self, issue: dict) -> str:
        for name in issue.get("labels") or []:
            if name.casefold().startswith(self.prefix.casefold()):
                return name[len(self.prefix):].strip()
        return issue.get("state", "")  # opened / closed

    def _issue(self, tid: str) -> dict:
        return self.http.json("GET", self._path(tid), ticket=tid, what="read the issue")

    def get_ticket(self, ticket_id: str) -> Ticket:
        tid = self.parse_ref(ticket_id)
        return self._ticket(tid, self._issue(tid))

    def _ticket(self, tid: str, issue: dict) -> Ticket:
        return Ticket(id=tid, title=issue.get("title", ""), status=self._status(issue),
                      url=issue.get("web_url", ""), labels=list(issue.get("labels") or []),
                      description=issue.get("description") or "", fields={"state": issue.get("state", "")},
                      created_at=parse_time(issue["created_at"]) if issue.get("created_at") else None)

    def _page(self, tid: str, page: int):
        return self.http.request("GET", f"{self._path(tid)}/notes", ticket=tid, what="read comments",
                                 params={"per_page": PAGE, "page": page, "sort": "asc",
                                         "order_by": "created_at"})

    def _read_comments(self, ticket_id: str) -> list[RawComment]:
        return self._pages_from(ticket_id, 1)

    def _comments_after(self, ticket_id: str, offset: int) -> list[RawComment]:
        """The newest page, newest first (system notes would push the offset's page later): it
        reaches back to the whole read's newest unless a page of notes came since, which the
        caller checks."""
        resp = self.http.request("GET", f"{self._path(ticket_id)}/notes", ticket=ticket_id,
                                 what="read the newest comments",
                                 params={"per_page": PAGE, "page": 1, "sort": "desc", "order_by": "created_at"})
        return [self._raw(note) for note in resp.json() if not note.get("system")]

    def _pages_from(self, ticket_id: str, start: int) -> list[RawComment]:
        first = self._page(ticket_id, start)
        responses = [first]
        total_pages = first.headers.get("x-total-pages")
        if total_pages:
            responses += self.http.parallel(
                *[lambda p=p: self._page(ticket_id, p) for p in range(start + 1, int(total_pages) + 1)])
        else:  # GitLab omits totals on very large collections: follow X-Next-Page
            nxt = first.headers.get("x-next-page")
            while nxt:
                page = self._page(ticket_id, int(nxt))
                responses.append(page)
                nxt = page.headers.get("x-next-page")
        raws, seen = [], set()
        for resp in responses:
            for note in resp.json():
                if note.get("system") or note["id"] in seen:
                    continue
                seen.add(note["id"])
                raws.append(self._raw(note))
        return sort_oldest_first(raws)

    @staticmethod
    def _raw(note: dict) -> RawComment:
        author = note.get("author") or {}
        body = note.get("body") or ""
        return RawComment(
            Comment(id=str(note["id"]), author=str(author.get("id", "")),
                    author_name=author.get("name", ""), body=markup.strip_markers(body),
                    created_at=parse_time(note["created_at"])),
            markup.markers(body),
        )

    def changes_since(self, ticket_id: str, seen: list[Comment]) -> tuple[Ticket, list[Comment]]:
        """The issue and the notes by last update, newest first, down to the newest creation
        time among `seen` (a time GitLab itself wrote, so no clock skew); the issue's
        `user_notes_count` proves none of `seen` was deleted. Anything less sure: a whole read."""
        tid = self.parse_ref(ticket_id)
        if not seen:
            return self.gate_data(tid)
        since = max(c.created_at for c in seen)
        issue, first = self.http.parallel(lambda: self._issue(tid), lambda: self._recent(tid, 1))
        now = {c.id: c for c in seen}
        page, resp = 1, first
        while True:
            notes = resp.json()
            for note in notes:
                if not note.get("system"):
                    now[str(note["id"])] = self._raw(note).comment
            older = any(parse_time(n["updated_at"]) < since for n in notes)
            if older or not notes or not resp.headers.get("x-next-page"):
                break
            page += 1
            resp = self._recent(tid, page)
        if len(now) != issue.get("user_notes_count"):  # one was deleted (or came in meanwhile)
            return self.gate_data(tid)
        return self._ticket(tid, issue), [raw.comment for raw in sort_oldest_first(
            [RawComment(c) for c in now.values()])]

    def _recent(self, tid: str, page: int):
        return self.http.request("GET", f"{self._path(tid)}/notes", ticket=tid, what="read comments",
                                 params={"per_page": PAGE, "page": page, "sort": "desc",
                                         "order_by": "updated_at"})

    def _post_comment(self, ticket_id: str, markdown: str, key: str) -> None:
        self.http.request("POST", f"{self._path(ticket_id)}/notes", ticket=ticket_id, idempotent=False,
                          what="add a comment", json={"body": markup.with_marker(markdown, key)})

    def transition(self, ticket_id: str, status: str, *, only_from: str = "") -> str:
        tid = self.parse_ref(ticket_id)
        issue = self._issue(tid)
        before = self._status(issue)
        if stays(before, status, only_from):
            return before
        if self.statuses and status.casefold() not in {s.casefold() for s in self.statuses}:
            raise refused_transition(self.name, tid, before, status, self.statuses,
                                     fix="add it to tracker.statuses or use one of those")
        old = [n for n in issue.get("labels") or [] if n.casefold().startswith(self.prefix.casefold())]
        # Scoped labels replace each other on Premium; remove explicitly so Free tier works too.
        answers: list[Any] = []
        self._settle_status(tid, status, before, lambda: answers.append(self.http.request(
            "PUT", self._path(tid), ticket=tid, write=True, what=f"set the status to {status!r}",
            json={"add_labels": f"{self.prefix}{status}", "remove_labels": ",".join(old)})))
        if not self._answer_shows(answers, status):  # else the answer proves it: no re-read
            self._moved_or_fail(tid, status, before, hint="another actor changed the labels at the same time; retry")
        return before

    def _answer_shows(self, answers: list[Any], status: str) -> bool:
        """Whether the PUT answered with the issue, `status` its only status label."""
        issue = json_or_none(answers[-1]) if answers else None
        return (isinstance(issue, dict) and isinstance(issue.get("labels"), list)
                and only_status([str(n) for n in issue["labels"]], self.prefix, status))

    def add_labels(self, ticket_id: str, labels: list[str]) -> None:
        tid = self.parse_ref(ticket_id)
        self.http.request("PUT", self._path(tid), ticket=tid, what="add labels", write=True,
                          json={"add_labels": ",".join(labels)})

    # -- identities --------------------------------------------------------------------------

    forbidden_whoami = ("the account may be blocked, or the token lacks the read_user (or api) "
                        "scope")

    @staticmethod
    def _account(user: dict) -> Account:
        login = str(user.get("username") or "")
        return Account(id=str(user.get("id") or ""), login=login, name=str(user.get("name") or login))

    def current_account(self) -> Account:
        me = self._whoami("GET", "/api/v4/user") or {}
        if not me.get("id"):
            raise self.credentials_error(None)
        return self._account(me)

    def _resolve(self, ref: str) -> Account:
        hint = "write the person's GitLab username, or their numeric user id, in people:"
        if re.fullmatch(r"[0-9]+", ref):
            resp = self.http.request("GET", f"/api/v4/users/{ref}", accept=(404,),
                                     what=f"look up GitLab user {ref}")
            user = None if resp.status_code == 404 else resp.json()
            if not user or str(user.get("id")) != ref:
                raise self.unknown_account(ref, fix=hint)
            return self._account(user)
        name = ref.removeprefix("@")
        if not _USERNAME.fullmatch(name):
            raise TrackerError(f"{ref!r} in people: is not a GitLab username or user id "
                               "(display names are never matched)", hint=hint)
        users = self.http.json("GET", "/api/v4/users", params={"username": name},
                               what=f"look up GitLab user {name!r}") or []
        match = [u for u in users if str(u.get("username", "")).casefold() == name.casefold()]
        if len(match) != 1 or not match[0].get("id"):
            raise self.unknown_account(ref, fix=hint)
        return self._account(match[0])

    def _check_access(self) -> None:
        if self.project:
            try:
                self.http.json("GET", f"/api/v4/projects/{quote(self.project, safe='')}",
                               what=f"read project {self.project}")
            except TrackerError as exc:
                raise TrackerError(f"GitLab: cannot read project {self.project}: {exc.message}",
                                   hint=f"check tracker.project and that the token in "
                                        f"{self.http.token_env} has the api scope on it") from None


def build(settings: Mapping[str, Any], environ: Mapping[str, str], **seams: Any) -> GitLab:
    url = base_url(settings, "GitLab", default="https://gitlab.com")
    token = secret(settings, environ, "GitLab")
    http = Http(tracker="GitLab", url=url, headers={"PRIVATE-TOKEN": token}, settings=settings,
                secret_values=(token,), **seams)
    return GitLab(http, url=url, project=str(settings.get("project", "")),
                  status_prefix=str(settings.get("status_prefix", "status::")),
                  statuses=list(settings.get("statuses") or []))
