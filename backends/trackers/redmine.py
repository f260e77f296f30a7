"""Redmine (REST, JSON): journals with notes are the comments, statuses resolved by name.

Redmine quirks handled here: journals come in one response (no paging); a transition the workflow
forbids is answered 204 and silently ignored, so every transition is re-read; an invalid API key
on a public project reads as anonymous, so credentials are checked with /users/current.json.
Text formatting: Redmine renders notes in the instance's setting (Administration » Settings »
General » Text formatting), and no REST API exposes it, so it is configured: `tracker.markup:
textile` (Redmine's default, also when unset) or `common_mark`. On a textile Redmine the record
is converted to textile and notes are read back through textile_to_text; the post-once marker
(an HTML comment) is hidden by both formatters.

Identities: a comment's author is the journal's user id (Redmine's stable identity; the name is
first/last name, which every user may edit). A `people:` entry is a numeric user id
(GET /users/ID.json) or a login: GET /users.json?name= when deploybot's key is an
administrator's (the filter is a substring match over login, names and mail, so only the exact
login is taken), else the project's members are read one by one (/users/ID.json shows the login
to anyone who may see that user).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Mapping
from urllib.parse import urlsplit

from bot.errors import ConfigError, InputError, TrackerError
from bot.models import Account, Comment, Ticket

from backends.trackers import markup
from backends.trackers.base import HttpTracker, RawComment, sort_oldest_first, stays
from backends.trackers.http import Http, base_url, parse_time, secret

_REF = re.compile(r"#?([0-9]+)")
_LOGIN = re.compile(r"[A-Za-z0-9_\-@.]{1,60}")  # Redmine's own login format (User model)
PAGE = 100  # Redmine's maximum `limit`
RESOLVE_HINT = ("in people:, give the numeric Redmine user id (shown in the profile URL "
                "/users/ID) or the exact login")


class Redmine(HttpTracker):
    name = "Redmine"
    anonymous_reads = True  # a public project answers a wrong key's reads as anonymous

    def __init__(self, http: Http, url: str, project: str = "", markup: str | None = None) -> None:
        super().__init__(http)
        self.url = url
        self.project = project
        self.markup_configured = markup is not None
        self.markup = markup or "textile"  # Redmine's default text formatting
        self._statuses: dict[str, tuple[int, str]] | None = None
        self._members: dict[str, Account] = {}  # user id -> account, from the membership sweep
        self._not_admin = False  # GET /users.json answered 403 once: do not ask again

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
            created_at=parse_time(issue["created_on"]) if issue.get("created_on") else None,
            ready_at=self._entered_status(issue),
        )

    @staticmethod
    def _entered_status(issue: dict) -> datetime | None:
        """When the issue last moved into its current status: the journals (read with the
        comments) record each status change; None without them."""
        current = str((issue.get("status") or {}).get("id", ""))
        moves = [j["created_on"] for j in issue.get("journals") or []
                 if any(d.get("property") == "attr" and d.get("name") == "status_id"
                        and str(d.get("new_value")) == current for d in j.get("details") or [])]
        return parse_time(max(moves, key=parse_time)) if current and moves else None

    def get_ticket(self, ticket_id: str) -> Ticket:
        return self._ticket(self._issue(self.parse_ref(ticket_id), journals=False))

    def gate_data(self, ticket_id: str) -> tuple[Ticket, list[Comment]]:
        issue = self._issue(self.parse_ref(ticket_id), journals=True)  # one call carries both
        return self._ticket(issue), [r.comment for r in self._journals(issue)]

    def _read_comments(self, ticket_id: str) -> list[RawComment]:
        return self._journals(self._issue(ticket_id, journals=True))

    def _journals(self, issue: dict) -> list[RawComment]:
        raws = []
        for j in issue.get("journals") or []:
            notes = j.get("notes") or ""
            if not notes.strip():
                continue  # a field change without a note is not a comment
            user = j.get("user") or {}
            raws.append(RawComment(
                Comment(id=str(j["id"]), author=str(user.get("id", "")),
                        author_name=user.get("name", ""), body=self._text(markup.strip_markers(notes)),
                        created_at=parse_time(j["created_on"])),
                markup.markers(notes),
            ))
        return sort_oldest_first(raws)

    def _text(self, notes: str) -> str:
        return markup.textile_to_text(notes) if self.markup == "textile" else notes

    def _post_comment(self, ticket_id: str, markdown: str, key: str) -> None:
        body = markup.markdown_to_textile(markdown) if self.markup == "textile" else markdown
        self.http.request("PUT", f"/issues/{ticket_id}.json",
                          json={"issue": {"notes": markup.with_marker(body, key)}},
                          ticket=f"#{ticket_id}", idempotent=False, what="add a note")

    def _status_ids(self) -> dict[str, tuple[int, str]]:
        if self._statuses is None:
            data = self.http.json("GET", "/issue_statuses.json", what="list issue statuses")
            self._statuses = {s["name"].casefold(): (s["id"], s["name"]) for s in data["issue_statuses"]}
        return self._statuses

    def transition(self, ticket_id: str, status: str, *, only_from: str = "") -> str:
        tid = self.parse_ref(ticket_id)
        statuses = self._status_ids()
        if status.casefold() not in statuses:
            names = ", ".join(repr(name) for _, name in statuses.values())
            raise TrackerError(f"Redmine has no issue status {status!r} (ticket #{tid})",
                               hint=f"use one of {names} or create it in Administration » Issue statuses")
        before = self.get_ticket(tid).status
        if stays(before, status, only_from):
            return before
        self._settle_status(tid, status, before, lambda: self.http.request(
            "PUT", f"/issues/{tid}.json", json={"issue": {"status_id": statuses[status.casefold()][0]}},
            ticket=f"#{tid}", write=True, what=f"set the status to {status!r}"))
        # Redmine answers 204 even when the workflow ignored the change.
        self._moved_or_fail(
            tid, status, before,
            hint=f"the workflow does not let the API user's role move {before!r} -> {status!r}: "
                 "allow it in Administration » Workflow, or move the issue by hand",
        )
        return before

    def add_labels(self, ticket_id: str, labels: list[str]) -> None:
        raise TrackerError(f"Redmine has no labels (ticket #{self.parse_ref(ticket_id)})",
                           hint="remove tracker labels from the configuration for Redmine")

    # -- identities --------------------------------------------------------------------------

    forbidden_whoami = ("the REST API may be disabled (Administration » Settings » API) or the "
                        "account locked")

    def current_account(self) -> Account:
        # An invalid key on a public project reads as anonymous everywhere else; here it is a 401.
        user = (self._whoami("GET", "/users/current.json") or {}).get("user") or {}
        if not user.get("id"):
            raise self.credentials_error(None)
        return _account(user)

    def _check_access(self) -> None:
        if self.project:
            self.http.json("GET", f"/projects/{self.project}.json", what=f"read project {self.project!r}")

    def _user(self, uid: str) -> dict | None:
        """GET /users/ID.json; None when Redmine has no such user or deploybot may not see it."""
        resp = self.http.request("GET", f"/users/{uid}.json", accept=(404,), what=f"read Redmine user {uid}")
        return None if resp.status_code == 404 else (resp.json().get("user") or None)

    def _resolve(self, ref: str) -> Account:
        if re.fullmatch(r"[0-9]+", ref):
            user = self._user(ref)
            if user is None:
                raise self.unknown_account(ref, fix="Redmine has no user with that id (or deploybot's "
                                                    f"key may not see it); {RESOLVE_HINT}")
            return _account(user)
        if not _LOGIN.fullmatch(ref):
            raise TrackerError(f"{ref!r} in people: is not a Redmine login or user id "
                               "(display names are never matched)", hint=RESOLVE_HINT)
        found = self._login_as_admin(ref)
        if found is not None:
            return found
        if not self.project:
            raise TrackerError(
                f"Redmine: cannot look up login {ref!r}: deploybot's API key is not an "
                "administrator's (GET /users.json answered 403) and no tracker.project is set "
                "whose members could be searched", hint=RESOLVE_HINT)
        found = self._login_among_members(ref)
        if found is None:
            raise TrackerError(f"Redmine has no user with login {ref!r} among the members of "
                               f"project {self.project!r}", hint=RESOLVE_HINT)
        return found

    def _login_as_admin(self, login: str) -> Account | None:
        """Exact login match from GET /users.json?name= (admin only). None on 403 (not admin);
        TrackerError when Redmine answered and no user has exactly that login."""
        want = login.casefold()  # Redmine logins are unique case-insensitively
        if self._not_admin:
            return None

        def page(offset: int):
            return self.http.request("GET", "/users.json", accept=(403,), what=f"look up login {login!r}",
                                     params={"name": login, "limit": PAGE, "offset": offset})

        first = page(0)
        if first.status_code == 403:
            self._not_admin = True
            return None
        pages = [first.json()]
        total, size = int(pages[0].get("total_count") or 0), int(pages[0].get("limit") or PAGE) or PAGE
        if total > size:
            pages += [r.json() for r in self.http.parallel(
                *[lambda o=o: page(o) for o in range(size, total, size)])]
        for data in pages:
            for user in data.get("users") or []:
                if str(user.get("login", "")).casefold() == want:  # never a first/last name or mail hit
                    return _account(user)
        raise TrackerError(f"Redmine has no active user with login {login!r}", hint=RESOLVE_HINT)

    def _login_among_members(self, login: str) -> Account | None:
        """Read the project's user members (all pages, groups skipped), then each member's
        /users/ID.json until the login matches exactly; every member read is remembered."""
        want = login.casefold()
        for account in self._members.values():
            if account.login.casefold() == want:
                return account

        def page(offset: int) -> dict:
            return self.http.json("GET", f"/projects/{self.project}/memberships.json",
                                  params={"limit": PAGE, "offset": offset},
                                  what=f"list the members of project {self.project!r}")

        first = page(0)
        pages = [first]
        total, size = int(first.get("total_count") or 0), int(first.get("limit") or PAGE) or PAGE
        if total > size:
            pages += self.http.parallel(*[lambda o=o: page(o) for o in range(size, total, size)])
        ids: list[str] = []
        for data in pages:
            for membership in data.get("memberships") or []:
                user = membership.get("user")  # a group membership has "group" instead
                if user and user.get("id") is not None and str(user["id"]) not in ids:
                    ids.append(str(user["id"]))
        todo = [uid for uid in ids if uid not in self._members]
        for start in range(0, len(todo), 8):  # a few at a time, stopping once found
            batch = todo[start:start + 8]
            users = self.http.parallel(*[lambda uid=uid: self._user(uid) for uid in batch])
            for user in users:
                if user is not None:
                    account = _account(user)
                    self._members[account.id] = account
            for account in self._members.values():
                if account.login.casefold() == want:
                    return account
        return None


def _account(user: dict) -> Account:
    name = " ".join(str(user[k]) for k in ("firstname", "lastname") if user.get(k))
    return Account(id=str(user["id"]), login=str(user.get("login") or ""), name=name or str(user.get("name") or ""))


def build(settings: Mapping[str, Any], environ: Mapping[str, str], **seams: Any) -> Redmine:
    url = base_url(settings, "Redmine")
    key = secret(settings, environ, "Redmine")
    http = Http(tracker="Redmine", url=url, headers={"X-Redmine-API-Key": key},
                settings=settings, secret_values=(key,), **seams)
    chosen = settings.get("markup")
    if chosen not in (None, "textile", "common_mark"):
        raise ConfigError(f"Redmine: tracker.markup must be textile or common_mark, got {chosen!r}",
                          hint="use the text formatting set in Redmine's Administration » Settings » General")
    return Redmine(http, url, str(settings.get("project", "")), markup=chosen)
